//! The checks over a whole run: replicas identical at equal indexes, liveness after
//! the heal, linearizability, local reads that invent nothing, acknowledged writes kept.

use super::*;

/// Samples every live replica's (applied index, state digest): equal indexes must have
/// equal digests.
pub(super) fn sample_digests(w: &World) {
    for (i, slot) in w.slots.iter().enumerate() {
        let Some(h) = slot.handle() else { continue };
        // A replica still at the index it was last sampled at (same incarnation) has
        // nothing new to say, and the digest is most of the checker's cost.
        let life = *slot.crashes.lock().expect("slot lock");
        let applied = h.shared.machine().applied;
        {
            let mut last = slot.digested.lock().expect("slot lock");
            if *last == Some((life, applied)) {
                continue;
            }
            *last = Some((life, applied));
        }
        let (applied, digest) = {
            let m = h.shared.machine();
            (m.applied, quick_digest(&m))
        };
        let mut seen = w.digests.lock().expect("digest lock");
        match seen.get(&applied) {
            Some((d, j)) if *d != digest => {
                let msg = format!("replicas diverge at applied index {applied}: n{j} has {d:016x}, n{i} has {digest:016x}");
                drop(seen);
                w.violation(msg);
            }
            Some(_) => {}
            None => {
                seen.insert(applied, (digest, i));
            }
        }
    }
}

/// The replica's state as bytes (its snapshot encoding), hashed eight bytes at a time:
/// the checker compares replicas within one run, so it needs no stable format, and
/// `Machine::digest` (JSON) was most of the simulator's time.
pub(super) fn quick_digest(m: &flotilla::raft::machine::Machine) -> u64 {
    let mut bytes = Vec::with_capacity(64 * 1024);
    m.encode_to(&mut bytes).expect("machine encodes");
    let mut h: u64 = 0;
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    h ^ bytes.len() as u64
}

/// After the heal: a write must commit, and every replica that is up must reach the same
/// applied index and state digest, within [`LIVENESS_BOUND`].
pub(super) async fn liveness(w: &Arc<World>) {
    let deadline = elapsed() + LIVENESS_BOUND;
    let probe = CLIENT_BASE + 999;
    let mut k = 0usize;
    let committed = loop {
        if elapsed() > deadline {
            break false;
        }
        let node = k % w.s.nodes;
        k += 1;
        let op = Op::Set {
            value: format!("probe.{k}"),
            ttl: false,
        };
        if observe(w, probe, node, "/probe", op).await == Outcome::Ok(None) {
            break true;
        }
    };
    if !committed {
        return w.violation("liveness: no write committed within the bound after healing".into());
    }
    loop {
        let states: Vec<(usize, u64, u64)> = w
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !matches!(s.life(), Life::Refused(_)))
            .map(|(i, s)| match s.handle() {
                Some(h) => {
                    let m = h.shared.machine();
                    (i, m.applied, m.digest())
                }
                None => (i, 0, 0),
            })
            .collect();
        let first = states[0];
        if first.1 > 0 && states.iter().all(|s| (s.1, s.2) == (first.1, first.2)) {
            w.trace(format!("converged at {} digest {:016x}", first.1, first.2));
            return;
        }
        if elapsed() > deadline {
            return w.violation(format!(
                "liveness: replicas did not converge after healing: {states:?}"
            ));
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) fn check(w: &World) {
    let records = w.history.lock().expect("history lock").records.clone();
    match linearizability::check(&records) {
        Verdict::Linearizable => {}
        Verdict::Violation(e) => w.violation(format!("linearizability: {e}")),
        Verdict::Undecided(e) => {
            w.trace(format!("undecided {e}"));
            let why = format!("linearizability undecided: {e}");
            w.undecided.lock().expect("undecided lock").push(why);
        }
    }
    if let Err(e) = check_local_reads(&records) {
        w.violation(e);
    }
    if let Err(e) = check_acknowledged(&records) {
        w.violation(e);
    }
}

/// Local (non-quorum) reads may be stale but never invent a value.
pub(super) fn check_local_reads(records: &[Record]) -> Result<(), String> {
    // (key, value) → earliest invocation of a write of that value.
    let mut writes: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for w in records {
        if let Op::Set { value, .. } | Op::Cas { value, .. } = &w.op {
            let t = writes
                .entry((w.key.as_str(), value.as_str()))
                .or_insert(u64::MAX);
            *t = (*t).min(w.invoke_ns);
        }
    }
    for r in records.iter().filter(|r| r.op == Op::Get { quorum: false }) {
        if let Outcome::Ok(Some(v)) = &r.outcome {
            let written = writes
                .get(&(r.key.as_str(), v.as_str()))
                .is_some_and(|t| *t <= r.complete_ns.unwrap_or(u64::MAX));
            if !written {
                return Err(format!(
                    "local read of {} returned {v:?}, which nobody wrote",
                    r.key
                ));
            }
        }
    }
    Ok(())
}

/// The last acknowledged write to a key, when no other write could follow it, is what
/// the final read returns.
pub(super) fn check_acknowledged(records: &[Record]) -> Result<(), String> {
    let mut by_key: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_key.entry(r.key.as_str()).or_default().push(r);
    }
    for (key, of_key) in by_key {
        let Some(fin) = of_key
            .iter()
            .rev()
            .find(|r| r.op == Op::Get { quorum: true } && r.outcome != Outcome::Unknown)
        else {
            continue;
        };
        let writes: Vec<&&Record> = of_key
            .iter()
            .filter(|r| {
                r.op.is_write() && r.outcome != Outcome::Failed && r.invoke_ns < fin.invoke_ns
            })
            .collect();
        let Some(last) = writes
            .iter()
            .filter(|r| r.outcome == Outcome::Ok(None))
            .max_by_key(|r| r.invoke_ns)
        else {
            continue;
        };
        let isolated = writes.iter().all(|o| {
            std::ptr::eq(**o, **last)
                || o.complete_ns.is_some_and(|t| t < last.invoke_ns)
                    && o.outcome != Outcome::Unknown
        });
        if !isolated {
            continue;
        }
        let want = match &last.op {
            Op::Set { value, ttl: false } | Op::Cas { value, .. } => Some(value.clone()),
            Op::Set { ttl: true, .. } => continue,
            _ => None,
        };
        if fin.outcome != Outcome::Ok(want.clone()) {
            return Err(format!(
                "acknowledged write lost: {key} was last set to {want:?} (acknowledged at {} ns) but the final read returned {:?}",
                last.complete_ns.unwrap_or(0),
                fin.outcome
            ));
        }
    }
    Ok(())
}
