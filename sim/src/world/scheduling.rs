//! The scheduling workload and its checks: unit operations through members, schedules
//! that keep fleet's invariants, running containers that keep `Conflicts`, units on two
//! machines no longer than the lease allows, machines fenced before their keys expire,
//! and the schedule converging after the heal.

use super::*;

/// Every live replica's committed schedule must keep the scheduler's invariants.
pub(super) fn sample_schedules(w: &World) {
    for (i, slot) in w.slots.iter().enumerate() {
        let Some(h) = slot.handle() else { continue };
        let schedule = {
            let m = h.shared.machine();
            let dir = m.store.get(registry::SCHEDULE, true).ok().map(|e| e.node);
            registry::schedule(dir.as_ref())
        };
        if let Err(e) = crate::sched_check::check(&schedule) {
            w.violation(format!("schedule on n{i}: {e}"));
        }
    }
}

/// Applies one unit operation through a live member's in-process client (as the fleet
/// API would), moving on to the next member while there is no answer (no leader yet, a
/// member down), for a bounded time.
pub(super) async fn unit_op(w: Arc<World>, op: UnitOp) {
    madsim::time::sleep(Duration::from_millis(op.at_ms)).await;
    for attempt in 0..30 {
        let n = (op.node + attempt) % w.s.nodes;
        let slot = &w.slots[n];
        let outcome = match slot.handle() {
            Some(h) => {
                let kv = InProc::new(h, Arc::new(slot.clock.clone()));
                let r = apply_unit_op(&kv, &op, w.s.stack).await;
                w.trace(format!(
                    "unit op {} {:?} on n{n}: {r:?}",
                    op.unit, op.action
                ));
                r
            }
            None => Err(ClientError::Unavailable("down".into())),
        };
        if !matches!(outcome, Err(ClientError::Unavailable(_))) {
            return;
        }
        madsim::time::sleep(Duration::from_millis(200)).await;
    }
}

pub(super) async fn apply_unit_op(
    kv: &InProc,
    op: &UnitOp,
    stack: bool,
) -> Result<(), ClientError> {
    let key = registry::unit_key(&op.unit);
    match &op.action {
        UnitAction::Submit { xfleet, desired } => {
            let mut options: Vec<UnitOption> = crate::scenario::unit_options(&op.unit, stack)
                .iter()
                .filter(|(sec, ..)| sec != "X-Fleet")
                .map(|(sec, k, v)| UnitOption::new(sec, k, v))
                .collect();
            options.extend(
                xfleet
                    .iter()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| UnitOption::new("X-Fleet", k, v)),
            );
            let rec = UnitRecord {
                name: op.unit.clone(),
                options,
                desired_state: Desired::parse(desired).unwrap_or(Desired::Launched),
            };
            let v = serde_json::to_string(&rec).expect("record");
            kv.set(&key, &v, SetOpts::default()).await.map(|_| ())
        }
        UnitAction::SetState { desired } => {
            let Some(g) = kv.get(&key, false, false).await? else {
                return Ok(());
            };
            let Some(mut rec) = g
                .node
                .value
                .as_deref()
                .and_then(|v| serde_json::from_str::<UnitRecord>(v).ok())
            else {
                return Ok(());
            };
            rec.desired_state = Desired::parse(desired).unwrap_or(Desired::Launched);
            let v = serde_json::to_string(&rec).expect("record");
            let opts = SetOpts {
                prev: Precondition {
                    index: g.node.modified_index,
                    ..Default::default()
                },
                ..Default::default()
            };
            kv.set(&key, &v, opts).await.map(|_| ())
        }
        UnitAction::Destroy => kv
            .delete(&key, false, Precondition::default())
            .await
            .map(|_| ()),
    }
}

/// After healing: within `bound`, the leader's next pass would decide nothing
/// (every placeable unit is placed, none on a dead machine), and every launched unit runs
/// exactly where the schedule says.
pub(super) async fn sched_liveness(w: &Arc<World>, bound: Duration) {
    let deadline = elapsed() + bound;
    let mut last = String::new();
    while elapsed() <= deadline {
        let leader = w
            .slots
            .iter()
            .filter_map(|s| s.handle())
            .find(|h| h.shared.status().is_leader);
        if let Some(h) = leader {
            let (units, machines, schedule) = {
                let m = h.shared.machine();
                let dir = |k: &str| m.store.get(k, true).ok().map(|e| e.node);
                let units: BTreeMap<String, flotilla::sched::place::Unit> = dir(registry::UNITS)
                    .iter()
                    .flat_map(|n| n.nodes.iter().flatten())
                    .filter_map(|n| StoredUnit::parse(n.value.as_deref()?, n.modified_index))
                    .map(|u| (u.record.name.clone(), u.placement()))
                    .collect();
                let machines: BTreeMap<String, flotilla::sched::place::Machine> =
                    registry::machines(
                        dir(registry::MACHINES).as_ref(),
                        dir(registry::METADATA).as_ref(),
                    )
                    .into_iter()
                    .map(|(k, v)| (k, v.placement()))
                    .collect();
                (
                    units,
                    machines,
                    registry::schedule(dir(registry::SCHEDULE).as_ref()),
                )
            };
            let plan = flotilla::sched::place::plan(&machines, &units, &schedule);
            let off = misplaced(w, &units, &schedule);
            if plan.decisions.is_empty() && off.is_none() {
                w.trace(format!(
                    "schedule converged: {} units, {} unplaced",
                    units.len(),
                    plan.unplaced.len()
                ));
                return;
            }
            last = match plan.decisions.first() {
                Some(d) => format!("{d:?}"),
                None => off.unwrap_or_default(),
            };
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    w.violation(format!(
        "scheduler liveness: the schedule did not converge within {bound:?} after healing; still to do: {last}"
    ));
}

/// The unit's state and last journal lines on machine `i`, as its agent has them.
pub(super) fn agent_says(w: &World, i: usize, unit: &str) -> String {
    let Some(a) = w.machine_agent(i) else {
        return "(no agent)".into();
    };
    let r = a.view.units.lock().expect("view lock").get(unit).cloned();
    match r {
        None => "(not loaded)".into(),
        Some(r) => {
            let tail: Vec<&String> = r.journal.iter().rev().take(12).collect();
            format!("{}/{}; {tail:?}", r.reported.active, r.reported.sub)
        }
    }
}

/// A launched unit not running where the schedule says (or running where it does not),
/// on a machine that is up.
pub(super) fn misplaced(
    w: &World,
    units: &BTreeMap<String, flotilla::sched::place::Unit>,
    schedule: &flotilla::sched::place::Schedule,
) -> Option<String> {
    let by_machine = running(w);
    let launched = |u: &str| units.get(u).is_some_and(|x| x.desired == Desired::Launched);
    for (u, on) in schedule {
        // A unit bound to another (`BindsTo=`, the stack's sidekicks) runs only while
        // that one is launched too, as systemd and fleet would leave it.
        let opts = crate::scenario::unit_options(u, w.s.stack);
        let mut bound_to = opts
            .iter()
            .filter(|(sec, k, _)| sec == "Unit" && k == "BindsTo");
        let launched = launched(u) && bound_to.all(|(_, _, target)| launched(target));
        for m in on.keys() {
            let Some(i) = m.strip_prefix('m').and_then(|i| i.parse::<usize>().ok()) else {
                continue;
            };
            let here = by_machine.get(&i).is_some_and(|rs| rs.contains(u));
            if launched && by_machine.contains_key(&i) && !here {
                return Some(format!(
                    "{u} is scheduled on {m} but does not run there; its agent says: {}",
                    agent_says(w, i, u)
                ));
            }
        }
    }
    for (i, rs) in &by_machine {
        for u in rs {
            let scheduled_here = schedule
                .get(u)
                .is_some_and(|on| on.contains_key(&format!("m{i}")));
            if !(scheduled_here && launched(u)) {
                return Some(format!("{u} runs on m{i}, where it is not scheduled to"));
            }
        }
    }
    None
}

/// The machine keys the most advanced replica held at the last sample.
#[derive(Default)]
pub(super) struct Leases {
    applied: u64,
    present: std::collections::BTreeSet<String>,
}

/// The machines whose keys the most advanced live replica holds, and its applied index.
pub(super) fn machine_keys(w: &World) -> Option<(u64, std::collections::BTreeSet<String>)> {
    let h = w
        .slots
        .iter()
        .filter_map(|s| s.handle())
        .max_by_key(|h| h.shared.machine().applied)?;
    let m = h.shared.machine();
    let ids = match m.store.get(registry::MACHINES, true) {
        Ok(ev) => ev.node.nodes.unwrap_or_default(),
        Err(_) => vec![],
    };
    let prefix = format!("{}/", registry::MACHINES);
    let ids = ids.iter().filter_map(|n| n.key.strip_prefix(&prefix));
    Some((m.applied, ids.map(String::from).collect()))
}

/// The README's promise: an agent that cannot renew its machine's key stops its units
/// at two thirds of the TTL, so they are down before the key expires. When a machine's
/// key leaves the store while the machine has run all along (up, never paused, for the
/// whole lease), it must run no unit — while clocks agree well within the TTL.
pub(super) fn sample_leases(w: &World, seen: &mut Leases) {
    let Some((applied, present)) = machine_keys(w) else {
        return;
    };
    // A replica behind the last one sampled has nothing new to say.
    if applied < seen.applied {
        return;
    }
    let gone: Vec<String> = seen.present.difference(&present).cloned().collect();
    *seen = Leases { applied, present };
    let ttl_ms = w.s.sched.as_ref().map_or(2, |l| l.agent_ttl_s) * 1000;
    // A key is stamped on one member's wall clock and expired on the leader's: clocks
    // that disagree by more than the fencing margin (the last third of the TTL) expire
    // it before any agent could fence, and the promise is void. Then this says nothing.
    let skew_ms = w.skew_seen_ms.load(Ordering::Relaxed);
    if 2 * skew_ms + SAMPLE_MS >= ttl_ms / 3 {
        return;
    }
    let lease_ms = ttl_ms + 2 * SAMPLE_MS;
    let now = elapsed().as_millis() as u64;
    for id in gone {
        let Some(i) = id.strip_prefix('m').and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        if i >= w.machines() {
            continue;
        }
        let steady = w.machine_live(i) && now.saturating_sub(w.steady_since_ms(i)) >= lease_ms;
        let units = w.docker(i).running_units();
        if steady && !units.is_empty() {
            w.violation(format!(
                "{id}'s key expired while it still ran {units:?}, up all along: its agent \
                 must stop them at two thirds of the {ttl_ms} ms lease, before the key expires"
            ));
        }
    }
}

/// How long a plain unit may run on two live machines at once: about what fencing leaves
/// (a paused machine cannot fence until it runs again).
pub fn lease_bound(ttl_s: u64) -> Duration {
    Duration::from_millis(ttl_s * 750)
}

/// Containers running on live machines (nodes that are up and not paused), by machine.
pub(super) fn running(w: &World) -> BTreeMap<usize, Vec<String>> {
    (0..w.machines())
        .filter(|i| w.machine_live(*i))
        .map(|i| (i, w.docker(i).running_units()))
        .collect()
}

/// Running containers never break a `Conflicts` rule on a machine, and a plain unit runs
/// on two live machines for no longer than the lease bound.
pub(super) fn sample_running(w: &World, doubled: &mut BTreeMap<String, Duration>) {
    let now = elapsed();
    let by_machine = running(w);
    let mut where_: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (m, units) in &by_machine {
        if *m >= w.s.nodes && !units.is_empty() {
            // Evidence that agent-only machines run units, not only register.
            w.count("agent-only-running");
        }
        for (a, ua) in units.iter().enumerate() {
            where_.entry(ua.as_str()).or_default().push(*m);
            let ra = crate::sched_check::requirements(ua);
            for ub in units.iter().skip(a + 1) {
                if ra.conflicts_with(ua, ub, &crate::sched_check::requirements(ub)) {
                    w.violation(format!(
                        "running containers of {ua} and {ub} conflict on n{m}"
                    ));
                }
            }
        }
    }
    let ttl = w.s.sched.as_ref().map_or(2, |l| l.agent_ttl_s);
    // Leases are wall-clock TTLs: clocks that disagree stretch them by the disagreement.
    let bound = lease_bound(ttl) + Duration::from_millis(2 * w.max_skew_ms());
    let mut still = BTreeMap::new();
    for (u, ms) in where_ {
        if crate::sched_check::requirements(u).global || ms.len() < 2 {
            continue;
        }
        let since = doubled.get(u).copied().unwrap_or(now);
        if now.saturating_sub(since) > bound {
            w.violation(format!(
                "{u} has run on machines {ms:?} at once for {:?} (the lease bound is {bound:?})",
                now - since,
            ));
        }
        still.insert(u.to_string(), since);
    }
    *doubled = still;
}
