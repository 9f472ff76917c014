//! Per-key linearizability: Wing & Gong's search with Lowe's memoisation (as in
//! porcupine), over a register model with etcd's compare-and-swap, compare-and-delete,
//! delete, and TTL writes that may vanish at any moment after they take effect.
//!
//! Operations whose outcome is unknown never return: they may be linearized anywhere
//! after their invocation, or not at all.

use crate::history::{Op, Outcome, Record};
use std::collections::{BTreeMap, HashSet};

/// The register: the value and whether it carries a TTL (and so may expire).
type State = Option<(String, bool)>;

/// Steps the model; `None` if the outcome is impossible from `s`.
fn step_exact(s: &State, op: &Op, out: &Outcome) -> Option<State> {
    let cur = s.as_ref().map(|(v, _)| v.as_str());
    match (op, out) {
        (Op::Get { .. }, Outcome::Ok(v)) => (v.as_deref() == cur).then(|| s.clone()),
        (Op::Get { .. }, Outcome::Unknown) => Some(s.clone()),
        (Op::Set { value, ttl }, Outcome::Ok(_) | Outcome::Unknown) => {
            Some(Some((value.clone(), *ttl)))
        }
        (Op::Cas { prev, value }, Outcome::Ok(_)) => {
            (cur == Some(prev)).then(|| Some((value.clone(), false)))
        }
        (Op::Cas { prev, value }, Outcome::Unknown) => Some(if cur == Some(prev) {
            Some((value.clone(), false))
        } else {
            s.clone()
        }),
        (Op::Cad { prev }, Outcome::Ok(_)) => (cur == Some(prev)).then_some(None),
        (Op::Cad { prev }, Outcome::Unknown) => {
            Some(if cur == Some(prev) { None } else { s.clone() })
        }
        (Op::Cas { prev, .. } | Op::Cad { prev }, Outcome::CompareFailed) => {
            (cur.is_some() && cur != Some(prev)).then(|| s.clone())
        }
        (Op::Delete, Outcome::Ok(_)) => cur.is_some().then_some(None),
        (Op::Delete, Outcome::Unknown) => Some(None),
        (_, Outcome::NotFound) => cur.is_none().then_some(None),
        _ => None,
    }
}

/// A TTL'd value may have expired just before `op` took effect.
fn step(s: &State, op: &Op, out: &Outcome) -> Option<State> {
    step_exact(s, op, out).or_else(|| match s {
        Some((_, true)) => step_exact(&None, op, out),
        _ => None,
    })
}

struct Entry {
    op: usize,
    is_call: bool,
}

/// Checks one key's operations. Returns `Ok(())` or a description of the failure.
pub fn check_key(ops: &[&Record]) -> Result<(), String> {
    let n = ops.len();
    // Events: calls at invocation, returns at completion; a call sorts before a return
    // at the same instant (they are concurrent).
    let mut events: Vec<(u64, u8, usize)> = vec![];
    for (i, r) in ops.iter().enumerate() {
        events.push((r.invoke_ns, 0, i));
        if r.outcome != Outcome::Unknown {
            let t = r.complete_ns.expect("known outcomes have completion times");
            events.push((t, 1, i));
        }
    }
    events.sort();
    let entries: Vec<Entry> = events
        .iter()
        .map(|(_, k, i)| Entry {
            op: *i,
            is_call: *k == 0,
        })
        .collect();
    let m = entries.len();
    // Doubly linked list over entries; index m is the head sentinel.
    let mut next: Vec<usize> = (1..=m).chain([0]).collect();
    let mut prev: Vec<usize> = std::iter::once(m).chain(0..m).collect();
    next[m] = if m == 0 { m } else { 0 };
    prev[m] = m;
    if m > 0 {
        next[m - 1] = m;
    }
    let mut ret_of = vec![usize::MAX; n];
    for (e, ent) in entries.iter().enumerate() {
        if !ent.is_call {
            ret_of[ent.op] = e;
        }
    }
    let finite = ops.iter().filter(|r| r.outcome != Outcome::Unknown).count();
    let mut done_finite = 0;
    // Bitset of linearized operations; the memo holds (bitset, state) pairs already
    // explored. Membership only — its iteration order never matters.
    let mut linearized = vec![0u64; n.div_ceil(64)];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    // (call entry, state before it, the pass it was taken in).
    let mut stack: Vec<(usize, State, Pass)> = vec![];
    let mut state: State = None;
    let mut cur = next[m];
    let mut pass = Pass::Answered;
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let (p, x) = (prev[e], next[e]);
        next[p] = x;
        prev[x] = p;
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
        let (p, x) = (prev[e], next[e]);
        next[p] = e;
        prev[x] = e;
    };
    let mut steps: u64 = 0;
    // The deepest partial linearization seen, for the failure report.
    let mut best: (usize, Vec<u64>) = (0, linearized.clone());
    loop {
        if done_finite == finite {
            return Ok(());
        }
        steps += 1;
        if steps > 20_000_000 {
            let unanswered = ops.len() - finite;
            return Err(format!(
                "search exceeded its step bound on key {} ({n} operations, {unanswered} \
                 unanswered): history too concurrent to decide",
                ops[0].key
            ));
        }
        if cur != m && entries[cur].is_call {
            let i = entries[cur].op;
            let answered = ops[i].outcome != Outcome::Unknown;
            if answered != (pass == Pass::Answered) {
                cur = next[cur];
                continue;
            }
            if let Some(ns) = step(&state, &ops[i].op, &ops[i].outcome) {
                linearized[i / 64] |= 1 << (i % 64);
                if cache.insert((linearized.clone(), ns.clone())) {
                    stack.push((cur, state.clone(), pass));
                    if stack.len() > best.0 {
                        best = (stack.len(), linearized.clone());
                    }
                    state = ns;
                    unlink(&mut next, &mut prev, cur);
                    if ret_of[i] != usize::MAX {
                        unlink(&mut next, &mut prev, ret_of[i]);
                        done_finite += 1;
                    }
                    cur = next[m];
                    pass = Pass::Answered;
                    continue;
                }
                linearized[i / 64] &= !(1 << (i % 64));
            }
            cur = next[cur];
            continue;
        }
        // A return (or the end) reached with its call not linearized: try the unanswered
        // candidates, then backtrack.
        if pass == Pass::Answered {
            pass = Pass::Unanswered;
            cur = next[m];
            continue;
        }
        let Some((call, old, taken_in)) = stack.pop() else {
            return Err(describe(ops, &best.1));
        };
        let i = entries[call].op;
        linearized[i / 64] &= !(1 << (i % 64));
        state = old;
        if ret_of[i] != usize::MAX {
            relink(&mut next, &mut prev, ret_of[i]);
            done_finite -= 1;
        }
        relink(&mut next, &mut prev, call);
        cur = next[call];
        pass = taken_in;
    }
}

/// Which candidates a scan of the minimal calls considers. Answered operations are tried
/// before unanswered writes: an unanswered write may stay pending for the rest of its
/// key's history, and linearizing each one as soon as it is a candidate makes every later
/// read that missed it backtrack over all subsets of them. Taken only when nothing
/// answered can go next, they cost nothing when they never happened. The order changes
/// how fast the search ends, never what it decides: every candidate is still tried.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    Answered,
    Unanswered,
}

/// The operations around the first one (by invocation) that no linearization of the
/// deepest explored prefix could place.
fn describe(ops: &[&Record], lin: &[u64]) -> String {
    let placed = |i: usize| lin[i / 64] & (1 << (i % 64)) != 0;
    let mut order: Vec<usize> = (0..ops.len()).collect();
    order.sort_by_key(|i| ops[*i].invoke_ns);
    let stuck = order
        .iter()
        .position(|i| !placed(*i) && ops[*i].outcome != Outcome::Unknown)
        .unwrap_or(0);
    let from = stuck.saturating_sub(25);
    let lines: Vec<String> = order[from..(stuck + 10).min(order.len())]
        .iter()
        .map(|i| {
            let r = ops[*i];
            format!(
                "{} [{:>12} .. {:>12}] client {} via node {}: {:?} -> {:?}",
                if *i == order[stuck] {
                    "=>"
                } else if placed(*i) {
                    "  "
                } else {
                    " ?"
                },
                r.invoke_ns,
                r.complete_ns
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "?".into()),
                r.client,
                r.node,
                r.op,
                r.outcome
            )
        })
        .collect();
    format!(
        "no linearization exists for key {} (=> marks the first operation that cannot be placed; ? not placed):\n{}",
        ops[0].key,
        lines.join("\n")
    )
}

/// Checks every key; local reads are excluded (they may be stale, as in etcd v2).
pub fn check(records: &[Record]) -> Result<(), String> {
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        // Local reads may be stale; reads with no answer constrain nothing.
        if matches!(r.op, Op::Get { quorum: false })
            || r.outcome == Outcome::Failed
            || (matches!(r.op, Op::Get { .. }) && r.outcome == Outcome::Unknown)
        {
            continue;
        }
        by_key.entry(&r.key).or_default().push(r);
    }
    for ops in by_key.values() {
        check_key(ops)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, op: Op, t0: u64, t1: Option<u64>, outcome: Outcome) -> Record {
        Record {
            client: 0,
            node: 0,
            key: key.into(),
            op,
            invoke_ns: t0,
            complete_ns: t1,
            outcome,
        }
    }

    fn set(v: &str, t0: u64, t1: u64) -> Record {
        rec(
            "k",
            Op::Set {
                value: v.into(),
                ttl: false,
            },
            t0,
            Some(t1),
            Outcome::Ok(None),
        )
    }

    fn get(v: Option<&str>, t0: u64, t1: u64) -> Record {
        rec(
            "k",
            Op::Get { quorum: true },
            t0,
            Some(t1),
            Outcome::Ok(v.map(String::from)),
        )
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            set("a", 0, 1),
            get(Some("a"), 2, 3),
            set("b", 4, 5),
            get(Some("b"), 6, 7),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn stale_quorum_read_is_caught() {
        let h = vec![set("a", 0, 1), set("b", 2, 3), get(Some("a"), 4, 5)];
        let err = check(&h).unwrap_err();
        assert!(err.contains("no linearization"), "{err}");
    }

    #[test]
    fn concurrent_operations_may_reorder() {
        let h = vec![set("a", 0, 10), set("b", 1, 9), get(Some("a"), 11, 12)];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn lost_acknowledged_write_is_caught() {
        let h = vec![set("a", 0, 1), get(None, 5, 6)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn unknown_write_may_or_may_not_happen() {
        let lost = rec(
            "k",
            Op::Set {
                value: "x".into(),
                ttl: false,
            },
            0,
            None,
            Outcome::Unknown,
        );
        assert!(check(&[lost.clone(), get(Some("x"), 5, 6)]).is_ok());
        assert!(check(&[lost, get(None, 5, 6)]).is_ok());
    }

    #[test]
    fn a_read_that_missed_many_unanswered_writes_is_decided_at_once() {
        let pending = |n: u64| -> Vec<Record> {
            (0..n)
                .map(|i| {
                    let op = Op::Set {
                        value: format!("u{i}"),
                        ttl: false,
                    };
                    rec("k", op, i, None, Outcome::Unknown)
                })
                .collect()
        };
        // Trying the 40 pending writes first would mean 2^40 subsets before the read.
        let mut h = pending(40);
        h.extend([get(None, 50, 51), get(Some("u7"), 60, 61)]);
        assert!(check(&h).is_ok());
        // Each unanswered write happens at most once: u7, u3, u7 again cannot be. (Proving
        // that walks every subset, so fewer of them here.)
        let mut h = pending(8);
        h.extend([
            get(None, 50, 51),
            get(Some("u7"), 60, 61),
            get(Some("u3"), 70, 71),
            get(Some("u7"), 80, 81),
        ]);
        let err = check(&h).unwrap_err();
        assert!(err.contains("no linearization"), "{err}");
    }

    #[test]
    fn cas_semantics() {
        let cas_ok = rec(
            "k",
            Op::Cas {
                prev: "a".into(),
                value: "b".into(),
            },
            2,
            Some(3),
            Outcome::Ok(None),
        );
        let cas_bad = rec(
            "k",
            Op::Cas {
                prev: "z".into(),
                value: "c".into(),
            },
            4,
            Some(5),
            Outcome::CompareFailed,
        );
        assert!(check(&[
            set("a", 0, 1),
            cas_ok.clone(),
            cas_bad,
            get(Some("b"), 6, 7)
        ])
        .is_ok());
        let wrong = rec(
            "k",
            Op::Cas {
                prev: "z".into(),
                value: "c".into(),
            },
            2,
            Some(3),
            Outcome::Ok(None),
        );
        assert!(check(&[set("a", 0, 1), wrong]).is_err());
    }

    #[test]
    fn ttl_value_may_expire_but_not_come_back() {
        let ttl = rec(
            "k",
            Op::Set {
                value: "t".into(),
                ttl: true,
            },
            0,
            Some(1),
            Outcome::Ok(None),
        );
        assert!(check(&[ttl.clone(), get(None, 5, 6)]).is_ok());
        assert!(check(&[ttl, get(None, 5, 6), get(Some("t"), 7, 8)]).is_err());
    }
}
