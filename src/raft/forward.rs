//! A follower sending client proposals to the leader itself.
//!
//! raft-rs forwards a follower's proposal too, but a follower's messages all wait for
//! its next sync, and raft-rs may not be stepped at all while a Ready's sync is in flight.
//! So the follower sends the very message raft-rs would — a local (term 0) `MsgPropose`
//! carrying the entries — itself, at once: when the loop takes inputs in, and while its
//! sync is in flight. Whatever it cannot forward (no known leader, or it is the leader)
//! goes back to the loop and through raft-rs.

use super::driver::Proposal;
use super::handle::{Input, ProposeError, Reply, Shared};
use super::storage::LogStore;
use bytes::Bytes;
use flotilla_shims::PeerNet;
use protobuf::{Message as _, RepeatedField};
use raft::prelude::*;
use raft::{RawNode, StateRole, INVALID_ID};
use std::collections::BTreeMap;

pub struct Forwarder<'a> {
    pub id: u64,
    pub raw: &'a RawNode<LogStore>,
    pub net: &'a dyn PeerNet,
    pub shared: &'a Shared,
    pub pending: &'a mut BTreeMap<u64, Reply>,
    pub next_seq: &'a mut u64,
    pub pending_max: usize,
}

impl Forwarder<'_> {
    /// Sends every proposal among `inputs` to the leader in one message; returns the
    /// inputs left for the loop (all of them when this member is not a follower with a
    /// known leader).
    pub fn forward(&mut self, inputs: Vec<Input>) -> Vec<Input> {
        let leader = self.raw.raft.leader_id;
        if self.raw.raft.state != StateRole::Follower || leader == INVALID_ID || leader == self.id {
            return inputs;
        }
        let mut entries = vec![];
        let mut rest = vec![];
        for input in inputs {
            let Input::Propose { req, reply } = input else {
                rest.push(input);
                continue;
            };
            if self.pending.len() >= self.pending_max {
                let _ = reply.send(Err(ProposeError::Busy));
                continue;
            }
            *self.next_seq = self.next_seq.wrapping_add(1);
            let seq = *self.next_seq;
            let p = Proposal {
                origin: self.id,
                seq,
                req,
            };
            entries.push(Entry {
                data: p.encode().into(),
                ..Default::default()
            });
            self.pending.insert(seq, reply);
            self.shared.metrics.proposals.inc();
        }
        if !entries.is_empty() {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgPropose);
            m.to = leader;
            m.from = self.id;
            m.set_entries(RepeatedField::from_vec(entries));
            match m.write_to_bytes() {
                Ok(b) => self.net.send(leader, Bytes::from(b)),
                Err(e) => tracing::error!(error = %e, "proposal does not encode"),
            }
        }
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{Command, Precondition};
    use crate::raft::driver::Request;
    use crate::raft::machine::Machine;
    use std::sync::Mutex;
    use tokio::sync::oneshot;

    #[derive(Default)]
    struct Sent(Mutex<Vec<(u64, Bytes)>>);

    impl PeerNet for Sent {
        fn send(&self, to: u64, frame: Bytes) {
            self.0.lock().unwrap().push((to, frame));
        }
        fn set_peer(&self, _: u64, _: &str) {}
        fn remove_peer(&self, _: u64) {}
    }

    /// Member 2 of {1, 2, 3}; with `leader`, it has heard member 1's heartbeat.
    fn member_two(leader: bool) -> RawNode<LogStore> {
        let cs = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        let log = LogStore::new(HardState::default(), cs, Snapshot::default(), vec![]);
        let cfg = raft::Config {
            id: 2,
            ..Default::default()
        };
        let mut raw = RawNode::new(&cfg, log, &crate::raft::logger::logger(2)).unwrap();
        if leader {
            let mut hb = Message::default();
            hb.set_msg_type(MessageType::MsgHeartbeat);
            (hb.from, hb.to, hb.term) = (1, 2, 1);
            raw.step(hb).unwrap();
        }
        raw
    }

    fn propose(
        key: &str,
    ) -> (
        Input,
        oneshot::Receiver<Result<crate::raft::Outcome, ProposeError>>,
    ) {
        let (reply, rx) = oneshot::channel();
        let req = Request::Kv(Command::Put {
            key: key.into(),
            value: "v".into(),
            dir: false,
            expire_ms: None,
            refresh: false,
            prev: Precondition::default(),
        });
        (Input::Propose { req, reply }, rx)
    }

    fn forward(raw: &RawNode<LogStore>, net: &Sent, inputs: Vec<Input>) -> (Vec<Input>, usize) {
        let shared = Shared::new(Machine::new(), 2);
        let mut pending = BTreeMap::new();
        let mut next_seq = 100;
        let rest = Forwarder {
            id: 2,
            raw,
            net,
            shared: &shared,
            pending: &mut pending,
            next_seq: &mut next_seq,
            pending_max: 10,
        }
        .forward(inputs);
        let seqs: Vec<u64> = pending.keys().copied().collect();
        assert_eq!(
            seqs,
            (101..=next_seq).collect::<Vec<_>>(),
            "one seq per proposal"
        );
        (rest, pending.len())
    }

    #[test]
    fn a_follower_sends_its_proposals_to_the_leader_in_one_message() {
        let raw = member_two(true);
        let net = Sent::default();
        let (a, _ra) = propose("/a");
        let (b, _rb) = propose("/b");
        let (read_reply, _rr) = oneshot::channel();
        let inputs = vec![a, Input::ReadIndex { reply: read_reply }, b];
        let (rest, pending) = forward(&raw, &net, inputs);
        assert!(matches!(rest.as_slice(), [Input::ReadIndex { .. }]));
        assert_eq!(pending, 2);
        let sent = net.0.lock().unwrap();
        assert_eq!(sent.len(), 1);
        let (to, frame) = &sent[0];
        let m = Message::parse_from_bytes(frame).unwrap();
        assert_eq!((*to, m.to, m.from, m.term), (1, 1, 2, 0));
        assert_eq!(m.get_msg_type(), MessageType::MsgPropose);
        let seqs: Vec<(u64, u64)> = m
            .get_entries()
            .iter()
            .map(|e| {
                let p = Proposal::decode(&e.data).unwrap();
                (p.origin, p.seq)
            })
            .collect();
        assert_eq!(seqs, vec![(2, 101), (2, 102)]);
    }

    #[test]
    fn without_a_known_leader_everything_goes_back_to_the_loop() {
        let raw = member_two(false);
        let net = Sent::default();
        let (a, _ra) = propose("/a");
        let (rest, pending) = forward(&raw, &net, vec![a]);
        assert_eq!((rest.len(), pending), (1, 0));
        assert!(net.0.lock().unwrap().is_empty());
    }
}
