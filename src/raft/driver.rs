//! The Ready loop: one task per node that owns the `RawNode`, the disk and the state
//! machine's write side.
//!
//! Each turn: wait for a tick, peer messages or client inputs (draining many at once:
//! group commit), then handle one Ready — send what may go before persistence, install a
//! snapshot, append entries and hard state to the disk, start **one sync**, apply the
//! committed entries (already durable here) while it runs, forward to the leader any
//! proposal that arrives meanwhile (a follower forwards its proposals itself, always),
//! then send what needed persistence, advance, apply the rest. Nothing is acknowledged
//! before the sync that made it durable; a failed sync ends the loop with a fatal error.
//! Disk snapshots are cloned here and written by the disk in the background.

use super::apply::Applier;
use super::boot::{write_snapshot_head, write_snapshot_record};
use super::follower_snapshot::BackgroundSnapshots;
use super::forward::Forwarder;
use super::handle::{Input, Outcome, ProposeError, Reply, Shared};
use super::machine::{Machine, Member};
use super::storage::LogStore;
use super::{META_HARD_STATE, META_SNAPSHOT};
use crate::kv::Command;
use bytes::Bytes;
use flotilla_shims::{Blob, BoxFuture, Clock, Disk, DiskError, PeerNet, Producer, Spawn};
use protobuf::Message as _;
use raft::prelude::*;
use raft::{RawNode, SnapshotStatus, StateRole};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;

/// While a snapshot is out to a follower, memory keeps up to this many times
/// `catchup_entries` of log after it.
const FOLLOWER_SNAPSHOT_HOLD: u64 = 8;

/// How often the leader looks for lapsed TTLs (etcd's SYNC interval).
pub const EXPIRE_CHECK_MS: u64 = 500;

/// Tuning, in the units the names say.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    pub tick_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Take a snapshot after this many applied entries at the least.
    pub snapshot_entries: u64,
    /// ...and once the log written since the last snapshot is at least this percentage
    /// of that snapshot's size (0: no such condition). A full snapshot costs time in
    /// proportion to the store, so with a fixed count alone the snapshot work per write
    /// grows with the store; tied to the snapshot's size it stays constant (Redis
    /// rewrites its append-only file by the same rule). Replay at restart is bounded
    /// the same way: by a multiple of the snapshot's own size.
    pub snapshot_log_percent: u64,
    /// Entries kept behind a snapshot for followers that are only a little behind.
    pub catchup_entries: u64,
    /// Inputs drained into one Ready at most.
    pub batch_inputs_max: usize,
    /// Proposals awaiting their apply at most; more are refused.
    pub pending_max: usize,
    /// Planted bug for the simulator's teeth test: never sync, so acknowledged writes
    /// live only in the pending layer and a crash loses them.
    pub bug_skip_sync: bool,
    /// Planted bug for the acknowledged-write check's teeth: a write is answered as done
    /// as soon as it is proposed, before any quorum has it.
    pub bug_ack_on_propose: bool,
    /// Planted bug for the replica-digest check's teeth: a replica applying a TTL write
    /// that another member proposed drops its TTL, so replicas disagree at one index.
    pub bug_drop_foreign_ttls: bool,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 1,
            snapshot_entries: 10_000,
            snapshot_log_percent: 100,
            catchup_entries: 5_000,
            batch_inputs_max: 4096,
            pending_max: 100_000,
            bug_skip_sync: false,
            bug_ack_on_propose: false,
            bug_drop_foreign_ttls: false,
        }
    }
}

/// Why a node stopped: it must restart from what is durable.
#[derive(Debug, Error)]
pub enum Fatal {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("replicated entry {index} is unreadable: {why}")]
    BadEntry { index: u64, why: String },
    #[error("received snapshot is unreadable: {0}")]
    BadSnapshot(String),
}

/// What a normal entry carries: who proposed it (for the reply and deduplication) and
/// the request.
#[derive(Serialize, Deserialize)]
pub struct Proposal {
    pub origin: u64,
    pub seq: u64,
    pub req: Request,
}

impl Proposal {
    /// The entry encoding: bincode (compact, and several times cheaper than JSON on the
    /// write path, where every member decodes every entry).
    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("proposal serializes")
    }

    pub fn decode(data: &[u8]) -> Result<Self, bincode::Error> {
        super::machine::decode_bounded(data)
    }
}

/// A replicated request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// A write to the KV store.
    Kv(Command),
    /// A member announces its name and client URLs (as etcd members publish theirs).
    Publish {
        id: u64,
        name: String,
        client_urls: Vec<String>,
    },
    /// `PUT /v2/members/ID`: a member's new peer URLs.
    UpdatePeers { id: u64, peer_urls: Vec<String> },
}

/// What a conf-change entry carries in its context.
#[derive(Serialize, Deserialize)]
pub struct ConfContext {
    pub origin: u64,
    pub seq: u64,
    pub member: Member,
}

/// The driver's [`Forwarder`], borrowing only the fields it needs — a macro, not a
/// method, so that it can be built while the sync in flight borrows the disk.
macro_rules! forwarder {
    ($d:expr) => {
        Forwarder {
            id: $d.id,
            raw: &$d.raw,
            net: &*$d.net,
            shared: &$d.shared,
            pending: &mut $d.pending,
            next_seq: &mut $d.next_seq,
            pending_max: $d.cfg.pending_max,
        }
    };
}

pub struct Driver {
    id: u64,
    raw: RawNode<LogStore>,
    disk: Box<dyn Disk>,
    net: Arc<dyn PeerNet>,
    clock: Arc<dyn Clock>,
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<Input>,
    peer_in: mpsc::Receiver<Bytes>,
    cfg: RaftConfig,
    pending: BTreeMap<u64, Reply>,
    reads: BTreeMap<u64, Reply>,
    read_waits: Vec<(u64, Reply)>,
    next_seq: u64,
    /// Inputs taken in and not yet routed: drained ones, and those that arrived while a
    /// sync was in flight and could not be forwarded then.
    stash: Vec<Input>,
    last_snap_index: u64,
    /// The snapshot being written in the background, if any.
    snap_job: Option<SnapJob>,
    /// Size of the last snapshot taken or installed here.
    snap_bytes_last: usize,
    /// Bytes of log entries written since the last snapshot began.
    log_bytes_since_snap: u64,
    /// The applied index at which the next snapshot fell due, while it waits its turn.
    snap_due_at: Option<u64>,
    next_expire_try: Duration,
}

/// A snapshot cloned on the loop, being encoded and made durable off it.
struct SnapJob {
    index: u64,
    compact_to: u64,
    /// Time the event loop spent starting it.
    loop_us: u64,
    started: Duration,
    write: BoxFuture<'static, Result<Blob, DiskError>>,
}

enum Wake {
    Tick,
    Stash,
    Snapshot(Result<Blob, DiskError>),
    Peer(Option<Bytes>),
    Input(Option<Input>),
}

pub struct DriverParts {
    pub id: u64,
    pub log: LogStore,
    pub disk: Box<dyn Disk>,
    pub net: Arc<dyn PeerNet>,
    pub clock: Arc<dyn Clock>,
    /// Runs the encoding of snapshots for lagging followers.
    pub spawn: Arc<dyn Spawn>,
    pub shared: Arc<Shared>,
    pub inbox: mpsc::Receiver<Input>,
    pub peer_in: mpsc::Receiver<Bytes>,
    pub cfg: RaftConfig,
    /// Where request sequence numbers start: random per incarnation, so a restarted
    /// node never mistakes an old entry for its own new request.
    pub seq_start: u64,
}

impl Driver {
    pub fn new(p: DriverParts) -> Result<Self, Fatal> {
        let applied = p.log.snap_index();
        let config = Config {
            id: p.id,
            election_tick: p.cfg.election_ticks,
            heartbeat_tick: p.cfg.heartbeat_ticks,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        config.validate()?;
        let mut log = p.log;
        log.set_source(Arc::new(BackgroundSnapshots::new(
            p.shared.clone(),
            p.spawn.clone(),
        )));
        let raw = RawNode::new(&config, log, &super::logger::logger(p.id))?;
        let last_snap_index = applied;
        Ok(Self {
            id: p.id,
            raw,
            disk: p.disk,
            net: p.net,
            clock: p.clock,
            shared: p.shared,
            inbox: p.inbox,
            peer_in: p.peer_in,
            cfg: p.cfg,
            pending: BTreeMap::new(),
            reads: BTreeMap::new(),
            read_waits: Vec::new(),
            next_seq: p.seq_start,
            stash: Vec::new(),
            last_snap_index,
            snap_job: None,
            snap_bytes_last: 0,
            log_bytes_since_snap: 0,
            snap_due_at: None,
            next_expire_try: Duration::ZERO,
        })
    }

    /// Runs until every handle is dropped (`Ok`) or the node must stop (`Err`).
    pub async fn run(mut self) -> Result<(), Fatal> {
        let tick_every = Duration::from_millis(self.cfg.tick_ms);
        let mut tick = self.clock.sleep(tick_every);
        loop {
            let snap_done = std::future::poll_fn(|cx| match &mut self.snap_job {
                Some(job) => job.write.as_mut().poll(cx),
                None => Poll::Pending,
            });
            let wake = tokio::select! {
                biased;
                _ = &mut tick => Wake::Tick,
                r = snap_done => Wake::Snapshot(r),
                m = self.peer_in.recv() => Wake::Peer(m),
                i = self.inbox.recv() => Wake::Input(i),
                // Inputs that arrived during the last sync: go on at once (after a due
                // tick, so a steady load never starves heartbeats and elections).
                _ = std::future::ready(()), if !self.stash.is_empty() => Wake::Stash,
            };
            match wake {
                Wake::Tick => {
                    tick = self.clock.sleep(tick_every);
                    self.on_tick();
                }
                Wake::Peer(Some(frame)) => self.on_peer(frame),
                Wake::Input(Some(input)) => self.stash.push(input),
                Wake::Peer(None) | Wake::Input(None) => return Ok(()),
                Wake::Stash => {}
                Wake::Snapshot(r) => self.finish_snapshot(r).await?,
            }
            // Group commit: whatever woke us, take everything already waiting — peer
            // messages and client proposals alike — into this one Ready and its one sync.
            // (Draining only the branch that fired would let a steady stream of peer
            // messages starve proposals and turn every turn into an fsync.)
            self.drain();
            self.route_inputs();
            self.on_ready().await?;
        }
    }

    fn drain(&mut self) {
        for _ in 0..self.cfg.batch_inputs_max {
            let mut idle = true;
            if let Ok(f) = self.peer_in.try_recv() {
                self.on_peer(f);
                idle = false;
            }
            if let Ok(i) = self.inbox.try_recv() {
                self.stash.push(i);
                idle = false;
            }
            if idle {
                break;
            }
        }
    }

    /// On a follower, client proposals go straight to the leader (see [`Forwarder`]):
    /// raft-rs would hold its own forwarded copy until this member's next sync, since a
    /// follower's messages all wait for persistence. Everything else goes through raft-rs.
    fn route_inputs(&mut self) {
        let inputs = std::mem::take(&mut self.stash);
        for input in forwarder!(self).forward(inputs) {
            self.on_input(input);
        }
    }

    fn on_tick(&mut self) {
        self.raw.tick();
        self.pending.retain(|_, r| !r.is_closed());
        self.reads.retain(|_, r| !r.is_closed());
        self.read_waits.retain(|(_, r)| !r.is_closed());
        self.maybe_expire();
    }

    /// The leader turns lapsed TTLs into an `Expire` entry stamped with its own time.
    fn maybe_expire(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            return;
        }
        // Checked at etcd's SYNC cadence, not every tick.
        let now = self.clock.now_mono();
        if now < self.next_expire_try {
            return;
        }
        self.next_expire_try = now + Duration::from_millis(EXPIRE_CHECK_MS);
        let wall = self.clock.now_wall_ms();
        let due = {
            let m = self.shared.machine();
            m.store.next_expiry_ms().is_some_and(|t| t <= wall)
        };
        if due {
            let p = Proposal {
                origin: 0,
                seq: 0,
                req: Request::Kv(Command::Expire { now_ms: wall }),
            };
            let data = p.encode();
            if let Err(e) = self.raw.propose(vec![], data) {
                tracing::debug!(error = %e, "expire proposal dropped");
            }
        }
    }

    fn on_peer(&mut self, frame: Bytes) {
        // Entry payloads stay slices of the received frame (no copy per entry).
        match Message::parse_from_carllerche_bytes(&frame) {
            Ok(m) => {
                self.count_received(&m);
                if let Err(e) = self.raw.step(m) {
                    tracing::debug!(error = %e, "peer message refused");
                }
            }
            Err(e) => tracing::warn!(error = %e, "undecodable peer message dropped"),
        }
    }

    fn count_received(&self, m: &Message) {
        let mut st = self.shared.raft_stats();
        match m.get_msg_type() {
            MessageType::MsgAppend => st.recv_append += 1,
            MessageType::MsgAppendResponse => {
                let f = st.followers.entry(m.from).or_default();
                if m.reject {
                    f.fail += 1;
                } else {
                    f.success += 1;
                }
            }
            MessageType::MsgHeartbeatResponse => {
                let now = self.clock.now_mono();
                let f = st.followers.entry(m.from).or_default();
                if let Some(sent) = f.heartbeat_sent.take() {
                    f.record_rtt(now.saturating_sub(sent).as_secs_f64());
                }
            }
            _ => {}
        }
    }

    fn take_seq(&mut self) -> u64 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Propose { req: cmd, reply } => {
                if self.pending.len() >= self.cfg.pending_max {
                    let _ = reply.send(Err(ProposeError::Busy));
                    return;
                }
                let seq = self.take_seq();
                let p = Proposal {
                    origin: self.id,
                    seq,
                    req: cmd,
                };
                let data = p.encode();
                match self.raw.propose(vec![], data) {
                    Ok(()) if self.cfg.bug_ack_on_propose => {
                        let done = Outcome {
                            result: Ok(None),
                            raft_index: 0,
                            raft_term: 0,
                        };
                        let _ = reply.send(Ok(done));
                    }
                    Ok(()) => {
                        self.shared.metrics.proposals.inc();
                        self.pending.insert(seq, reply);
                    }
                    Err(_) => {
                        self.shared.metrics.proposals_failed.inc();
                        let _ = reply.send(Err(ProposeError::NoLeader));
                    }
                }
            }
            Input::ReadIndex { reply } => {
                let seq = self.take_seq();
                self.raw.read_index(seq.to_be_bytes().to_vec());
                self.reads.insert(seq, reply);
            }
            Input::ConfChange { cc, member, reply } => {
                let seq = self.take_seq();
                let ctx = ConfContext {
                    origin: self.id,
                    seq,
                    member,
                };
                let ctx = serde_json::to_vec(&ctx).expect("context serializes");
                match self.raw.propose_conf_change(ctx, cc) {
                    Ok(()) => {
                        self.pending.insert(seq, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ProposeError::Rejected(e.to_string())));
                    }
                }
            }
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let now = self.clock.now_mono();
        {
            let mut st = self.shared.raft_stats();
            for m in &msgs {
                match m.get_msg_type() {
                    MessageType::MsgAppend => st.send_append += 1,
                    MessageType::MsgHeartbeat => {
                        st.followers.entry(m.to).or_default().heartbeat_sent = Some(now)
                    }
                    _ => {}
                }
            }
        }
        for m in msgs {
            let to = m.to;
            let is_snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            match m.write_to_bytes() {
                Ok(b) => self.net.send(to, Bytes::from(b)),
                Err(e) => tracing::error!(error = %e, "raft message does not encode"),
            }
            if is_snapshot {
                // Fire-and-forget transport: let the follower's reply (or its absence)
                // drive the next attempt instead of pausing the follower forever.
                self.raw.report_snapshot(to, SnapshotStatus::Finish);
            }
        }
    }

    async fn on_ready(&mut self) -> Result<(), Fatal> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        self.send(rd.take_messages());
        let mut wrote = false;
        if !rd.snapshot().is_empty() {
            self.install_snapshot(rd.snapshot().clone())?;
            wrote = true;
        }
        let read_states = rd.take_read_states();
        let committed = rd.take_committed_entries();
        if !rd.entries().is_empty() {
            self.persist_entries(rd.entries())?;
            wrote = true;
        }
        if let Some(hs) = rd.hs() {
            // Written every time; synced only when raft needs it (a commit-index-only
            // change may be lost in a crash and is relearned from the leader), as etcd.
            let bytes = hs.write_to_bytes().expect("hard state encodes");
            self.disk.meta_put(META_HARD_STATE, &bytes)?;
            self.raw.mut_store().set_hard_state(hs.clone());
        }
        if (wrote || rd.must_sync()) && !self.cfg.bug_skip_sync {
            // raft-rs hands out only entries already persisted here (and committed by a
            // quorum), so they are applied — and their clients answered — while this
            // Ready's own sync is in flight, not after it (as raft-rs's examples and etcd
            // do). The first poll puts the sync on the disk; then apply; then forward
            // what arrives until the sync completes.
            let sync = sync_disk(&mut *self.disk, &*self.clock, &self.shared);
            tokio::pin!(sync);
            let first = std::future::poll_fn(|cx| Poll::Ready(sync.as_mut().poll(cx))).await;
            let mut applier = Applier {
                id: self.id,
                raw: &mut self.raw,
                shared: &self.shared,
                pending: &mut self.pending,
                net: &*self.net,
                bug_drop_foreign_ttls: self.cfg.bug_drop_foreign_ttls,
            };
            applier.apply(committed)?;
            let synced = match first {
                Poll::Ready(r) => r,
                Poll::Pending => loop {
                    tokio::select! {
                        biased;
                        r = &mut sync => break r,
                        Some(input) = self.inbox.recv(),
                            if self.stash.len() < self.cfg.batch_inputs_max =>
                        {
                            let mut inputs = vec![input];
                            while inputs.len() < self.cfg.batch_inputs_max {
                                match self.inbox.try_recv() {
                                    Ok(i) => inputs.push(i),
                                    Err(_) => break,
                                }
                            }
                            let rest = forwarder!(self).forward(inputs);
                            self.stash.extend(rest);
                        }
                    }
                },
            };
            synced?;
        } else {
            self.applier().apply(committed)?;
        }
        self.send(rd.take_persisted_messages());
        let mut light = self.raw.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        self.send(light.take_messages());
        self.applier().apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.on_read_states(read_states);
        self.release_reads();
        self.maybe_snapshot()?;
        self.publish_status();
        Ok(())
    }

    async fn sync(&mut self) -> Result<(), Fatal> {
        sync_disk(&mut *self.disk, &*self.clock, &self.shared).await
    }

    fn applier(&mut self) -> Applier<'_> {
        Applier {
            id: self.id,
            raw: &mut self.raw,
            shared: &self.shared,
            pending: &mut self.pending,
            net: &*self.net,
            bug_drop_foreign_ttls: self.cfg.bug_drop_foreign_ttls,
        }
    }

    fn persist_entries(&mut self, entries: &[Entry]) -> Result<(), Fatal> {
        if let Some(from) = self.raw.mut_store().append(entries) {
            self.disk.log_truncate_from(from)?;
        }
        let mut buf = Vec::new();
        for e in entries {
            buf.clear();
            e.write_to_vec(&mut buf).expect("entry encodes");
            self.disk.log_put(e.index, &buf)?;
            self.log_bytes_since_snap += buf.len() as u64;
        }
        Ok(())
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), Fatal> {
        let machine: Machine =
            Machine::decode(snap.get_data()).map_err(|e| Fatal::BadSnapshot(e.to_string()))?;
        let index = snap.get_metadata().index;
        assert_eq!(machine.applied, index, "snapshot state matches its index");
        self.disk.log_truncate_from(0)?;
        self.disk.meta_put_stream(META_SNAPSHOT, &mut |w| {
            write_snapshot_record(w, snap.get_metadata(), &mut |w| {
                w.write_all(snap.get_data())
            })
        })?;
        self.sync_peers(&machine);
        *self.shared.machine() = machine;
        // Waiters (watches, a member waiting for its publish) look again.
        self.shared.notify_events();
        self.shared.watchers.wake_everyone();
        self.snap_bytes_last = snap.get_data().len();
        self.log_bytes_since_snap = 0;
        self.raw.mut_store().apply_snapshot(snap);
        self.last_snap_index = index;
        tracing::info!(index, "installed snapshot from leader");
        Ok(())
    }

    fn sync_peers(&self, machine: &Machine) {
        for m in machine.members.values().filter(|m| m.id != self.id) {
            if let Some(addr) = m.peer_urls.first().and_then(|u| peer_addr(u)) {
                self.net.set_peer(m.id, &addr);
            }
        }
    }

    fn on_read_states(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let Ok(seq) = <[u8; 8]>::try_from(rs.request_ctx.as_slice()) else {
                continue;
            };
            if let Some(reply) = self.reads.remove(&u64::from_be_bytes(seq)) {
                self.read_waits.push((rs.index, reply));
            }
        }
    }

    fn release_reads(&mut self) {
        if self.read_waits.is_empty() {
            return;
        }
        let applied = self.shared.machine().applied;
        let (ready, wait): (Vec<_>, Vec<_>) =
            self.read_waits.drain(..).partition(|(i, _)| *i <= applied);
        self.read_waits = wait;
        for (i, reply) in ready {
            let _ = reply.send(Ok(Outcome {
                result: Ok(None),
                raft_index: i,
                raft_term: self.raw.raft.term,
            }));
        }
    }

    /// Memory keeps `catchup_entries` applied entries for followers; older ones are
    /// dropped in steps (the state machine answers for them: see [`LogStore`]).
    fn compact_memory(&mut self, applied: u64) {
        let mut through = applied.saturating_sub(self.cfg.catchup_entries);
        // A follower being sent a snapshot goes on from the entries after it, once it has
        // installed it (a large one takes a while): keep them, up to a bound, or it falls
        // behind the log again and is sent another.
        if let Some(snap) = self.raw.store().follower_snapshot_index() {
            let floor = applied.saturating_sub(
                self.cfg
                    .catchup_entries
                    .saturating_mul(FOLLOWER_SNAPSHOT_HOLD),
            );
            through = through.min(snap.max(floor));
        }
        let step = (self.cfg.catchup_entries / 4).max(1);
        if through >= self.raw.store().first() + step {
            self.raw.mut_store().compact_through(through);
        }
    }

    /// Every `snapshot_entries` applied entries the state goes to disk and the disk's log
    /// is compacted, bounding restart time and disk use. Only a clone of the state is
    /// taken here: it is encoded, written and synced in the background while the loop
    /// goes on, and [`Driver::finish_snapshot`] puts it in effect.
    fn maybe_snapshot(&mut self) -> Result<(), Fatal> {
        let applied = self.shared.machine().applied;
        self.compact_memory(applied);
        let log_due =
            (self.snap_bytes_last as u64).saturating_mul(self.cfg.snapshot_log_percent) / 100;
        if self.snap_job.is_some()
            || applied < self.last_snap_index + self.cfg.snapshot_entries
            || self.log_bytes_since_snap < log_due
        {
            return Ok(());
        }
        let due_at = *self.snap_due_at.get_or_insert(applied);
        if !self.snapshot_turn(applied, due_at) {
            return Ok(());
        }
        self.snap_due_at = None;
        let mut meta = SnapshotMetadata {
            index: applied,
            term: raft::Storage::term(self.raw.store(), applied)?,
            ..Default::default()
        };
        meta.set_conf_state(self.raw.store().conf_state().clone());
        let started = self.clock.now_mono();
        // A clone costs about nothing (the tree is persistent, see `kv::node`): encoding
        // and writing it happen off the loop, which goes on applying meanwhile.
        let machine = self.shared.machine().clone();
        let produce: Producer = Box::new(move |w: &mut dyn std::io::Write| {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, w);
            write_snapshot_head(&mut w, &meta)?;
            machine.encode_to(&mut w)?;
            w.flush()
        });
        self.log_bytes_since_snap = 0;
        let write = self.disk.blob_write(META_SNAPSHOT, produce);
        self.snap_job = Some(SnapJob {
            index: applied,
            compact_to: applied.saturating_sub(self.cfg.catchup_entries) + 1,
            loop_us: self.clock.now_mono().saturating_sub(started).as_micros() as u64,
            started,
            write,
        });
        Ok(())
    }

    /// Members fall due for a snapshot at about the same index, and writing one takes a
    /// core and the disk for a while: so they take turns, in windows of entries by rank
    /// among the voters, and members sharing a machine (or a disk) do not all slow down
    /// at once. A member waits at most two rounds of windows (its own could be skipped
    /// by a large batch of entries).
    fn snapshot_turn(&self, applied: u64, due_at: u64) -> bool {
        let voters = &self.raw.store().conf_state().voters;
        let n = voters.len().max(1) as u64;
        let rank = voters.iter().filter(|v| **v < self.id).count() as u64;
        let window = (self.cfg.snapshot_entries / 20).max(1);
        (applied / window) % n == rank % n || applied >= due_at + 2 * n * window
    }

    /// The background snapshot write is done: the snapshot replaces the last one and the
    /// disk's log is compacted behind it — unless the leader's snapshot, newer, was
    /// installed meanwhile.
    async fn finish_snapshot(&mut self, written: Result<Blob, DiskError>) -> Result<(), Fatal> {
        let job = self
            .snap_job
            .take()
            .expect("a snapshot write was in flight");
        let blob = written?;
        if job.index <= self.last_snap_index {
            self.disk.blob_discard(blob);
            return Ok(());
        }
        let bytes = blob.len_bytes();
        self.snap_bytes_last = bytes as usize;
        self.disk.blob_commit(blob)?;
        self.disk.log_truncate_before(job.compact_to)?;
        self.sync().await?;
        self.shared.metrics.snapshots.inc();
        self.last_snap_index = job.index;
        tracing::info!(
            index = job.index,
            compact_to = job.compact_to,
            bytes,
            loop_us = job.loop_us,
            total_ms = self
                .clock
                .now_mono()
                .saturating_sub(job.started)
                .as_millis() as u64,
            "snapshot taken, disk log compacted"
        );
        Ok(())
    }

    fn publish_status(&self) {
        let r = &self.raw.raft;
        let m = &self.shared.metrics;
        m.term.set(r.term as i64);
        m.is_leader.set(i64::from(r.state == StateRole::Leader));
        let mut st = self.shared.status();
        if st.leader != r.leader_id {
            m.leader_changes.inc();
            self.shared.raft_stats().leader_since_wall_ms = self.clock.now_wall_ms();
        }
        st.leader = r.leader_id;
        st.term = r.term;
        st.is_leader = r.state == StateRole::Leader;
        st.commit = r.raft_log.committed;
    }
}

/// Makes every earlier write durable, timing it for `/metrics`.
async fn sync_disk(disk: &mut dyn Disk, clock: &dyn Clock, shared: &Shared) -> Result<(), Fatal> {
    let t0 = clock.now_mono();
    disk.sync().await?;
    let m = &shared.metrics;
    m.syncs.inc();
    m.sync_seconds
        .observe(clock.now_mono().saturating_sub(t0).as_secs_f64());
    Ok(())
}

/// `http://host:port[/...]` → `host:port`.
pub fn peer_addr(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let hostport = rest.split('/').next()?;
    (!hostport.is_empty()).then(|| hostport.to_string())
}
