//! Placement as a pure function: `(machines, units, current schedule) -> decisions`.
//!
//! One pass, as fleet's engine makes it (`../shared/reference/fleet-semantics.md` c.5),
//! but deterministic (units by name, machines by id) and with one rule for global and
//! plain units alike:
//! 1. existing placements that can no longer stand fall (unit gone or inactive, machine
//!    gone, a constraint broken), repeated until none falls, so a follower falls with its
//!    `MachineOf` peer;
//! 2. global units go onto every eligible machine they are not on yet;
//! 3. every unscheduled unit that wants to run goes to the least-loaded machine (fewest
//!    units, ties to the lowest id) that accepts it, repeated until nothing more fits, so
//!    `MachineOf` chains resolve in one pass;
//! 4. placements whose desired state or unit hash changed are updated in place.
//!
//! Nothing correctly placed ever moves (no rebalancing), so a new leader running the same
//! pass over the same store decides nothing. Decisions come out in an order in which
//! every prefix leaves a valid schedule: unschedules (followers before their peers), then
//! schedules (peers before followers), then updates — the engine may commit them in
//! several transactions.

use super::replace::Replaces;
use super::require::short_id;
use std::collections::{BTreeMap, BTreeSet};

pub use super::model::{Desired, Entry, Machine, Schedule, Unit};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Schedule {
        unit: String,
        machine: String,
        entry: Entry,
    },
    Update {
        unit: String,
        machine: String,
        entry: Entry,
    },
    Unschedule {
        unit: String,
        machine: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// Units that want to run and fit nowhere (see [`explain`] for why).
    pub unplaced: Vec<String>,
}

/// Planted bugs, for the simulator to prove its checkers find them. Never set in
/// production.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Place units as if no `Conflicts` were declared.
    pub ignore_conflicts: bool,
    /// (The engine's.) A new leader's engine takes every plain unit off its machine in
    /// its first pass, and places them afresh in the next: correctly placed units
    /// restart.
    pub forget_schedule_on_takeover: bool,
}

/// The pass's working view: who is where, and each machine's load.
struct State<'a> {
    bugs: Bugs,
    units: &'a BTreeMap<String, Unit>,
    replaces: Replaces<'a>,
    machines: &'a BTreeMap<String, Machine>,
    /// Machine → the units on it (a handful each: a vector beats a set here).
    on: BTreeMap<&'a str, Vec<&'a Unit>>,
    at: BTreeMap<&'a str, BTreeSet<&'a str>>,
    by_load: BTreeSet<(usize, &'a str)>,
    /// Machines whose set changed since their units were last checked: a refusal on a
    /// machine depends on that machine's units alone, so only these need checking.
    dirty: BTreeSet<&'a str>,
}

impl<'a> State<'a> {
    fn new(units: &'a BTreeMap<String, Unit>, machines: &'a BTreeMap<String, Machine>) -> Self {
        Self {
            bugs: Bugs::default(),
            units,
            replaces: Replaces::new(units),
            machines,
            on: machines.keys().map(|m| (m.as_str(), Vec::new())).collect(),
            at: BTreeMap::new(),
            by_load: machines.keys().map(|m| (0, m.as_str())).collect(),
            dirty: BTreeSet::new(),
        }
    }

    fn load(&self, m: &str) -> usize {
        self.on.get(m).map_or(0, Vec::len)
    }

    fn add(&mut self, u: &'a Unit, m: &'a str) {
        let load = self.load(m);
        self.by_load.remove(&(load, m));
        self.by_load.insert((load + 1, m));
        self.on.get_mut(m).expect("live machine").push(u);
        self.at.entry(&u.name).or_default().insert(m);
        self.dirty.insert(m);
    }

    /// [`State::add`] without the load index, which the caller rebuilds once afterwards
    /// (taking in a large schedule entry by entry would re-sort it every time).
    fn admit(&mut self, u: &'a Unit, m: &'a str) {
        self.on.get_mut(m).expect("live machine").push(u);
        self.at.entry(&u.name).or_default().insert(m);
        self.dirty.insert(m);
    }

    fn remove(&mut self, u: &str, m: &'a str) {
        let load = self.load(m);
        self.by_load.remove(&(load, m));
        self.by_load.insert((load - 1, m));
        self.on
            .get_mut(m)
            .expect("live machine")
            .retain(|x| x.name != u);
        if let Some(s) = self.at.get_mut(u) {
            s.remove(m);
            if s.is_empty() {
                self.at.remove(u);
            }
        }
        self.dirty.insert(m);
    }

    /// Placements on machines that changed since they were last checked.
    fn dirty_pairs(&self) -> Vec<(&'a Unit, &'a str)> {
        self.dirty
            .iter()
            .flat_map(|m| self.on[m].iter().map(move |u| (*u, *m)))
            .collect()
    }

    fn any_refusal(&self) -> bool {
        self.dirty_pairs()
            .into_iter()
            .any(|(u, m)| self.refusal(u, &self.machines[m]).is_some())
    }

    /// Why `u` cannot run on `m` beside what is there now (itself excepted), if it cannot.
    fn refusal(&self, u: &Unit, m: &Machine) -> Option<String> {
        let here: &[&Unit] = self.on.get(m.id.as_str()).map_or(&[], Vec::as_slice);
        if !u.req.machine_id_ok(&m.id) {
            let want = u.req.machine_id.as_deref().unwrap_or_default();
            return Some(format!("MachineID={want}"));
        }
        if !u.req.metadata_ok(&m.metadata) {
            return Some("MachineMetadata".into());
        }
        let has = |n: &str| here.iter().any(|x| x.name == n);
        // A unit is never its own peer: fleet could not place one that named itself.
        if let Some(p) = u.req.peers.iter().find(|p| **p == u.name || !has(p)) {
            return Some(format!("MachineOf={p} (not there)"));
        }
        // fleet's validation refuses this pair; a stored one must not make passes flap.
        if let Some(p) = u.req.peers.iter().find(|p| {
            u.req
                .replaces
                .iter()
                .any(|r| crate::unitfile::glob::matches(r, p))
        }) {
            return Some(format!(
                "unresolvable requirements: peer {p:?} matches Replaces"
            ));
        }
        for o in here.iter().filter(|o| o.name != u.name) {
            if !self.bugs.ignore_conflicts && u.req.conflicts_with(&u.name, &o.name, &o.req) {
                return Some(format!("Conflicts with {}", o.name));
            }
            if self.replaces.replaces(o, u) {
                return Some(format!("replaced by {}", o.name));
            }
        }
        None
    }

    /// The least-loaded machine (ties to the lowest id) that accepts `u`.
    fn best_machine(&self, u: &Unit) -> Option<&'a str> {
        let accepts = |m: &&'a str| self.refusal(u, &self.machines[*m]).is_none();
        if let Some(want) = &u.req.machine_id {
            // At most a few machines can match: look them up instead of walking by load.
            let mut c: Vec<&'a str> = self
                .machines
                .keys()
                .map(String::as_str)
                .filter(|m| m == want || short_id(m) == want)
                .collect();
            c.sort_by_key(|m| (self.load(m), *m));
            return c.into_iter().find(accepts);
        }
        if let Some(peer) = u.req.peers.first() {
            let mut c: Vec<&'a str> = self
                .at
                .get(peer.as_str())
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default();
            c.sort_by_key(|m| (self.load(m), *m));
            return c.into_iter().find(accepts);
        }
        self.by_load.iter().map(|(_, m)| *m).find(accepts)
    }
}

/// One scheduling pass. `machines` are the live ones; `units` every stored unit.
pub fn plan(
    machines: &BTreeMap<String, Machine>,
    units: &BTreeMap<String, Unit>,
    schedule: &Schedule,
) -> Plan {
    plan_with(machines, units, schedule, Bugs::default())
}

/// [`plan`], with planted bugs (the simulator's teeth).
pub fn plan_with(
    machines: &BTreeMap<String, Machine>,
    units: &BTreeMap<String, Unit>,
    schedule: &Schedule,
    bugs: Bugs,
) -> Plan {
    let mut st = State::new(units, machines);
    st.bugs = bugs;
    let mut reasons = admit_existing(&mut st, schedule);
    // A unit placed beside one that replaces it falls in the next round and is placed
    // elsewhere; each round can only narrow where it may go, so this ends.
    for _ in 0..=units.len() {
        fall_until_stable(&mut st, &mut reasons);
        // A global unit may follow a plain one placed after it: go round while either
        // placed something.
        let placed = place_globals(&mut st) | place_pending(&mut st);
        if !placed && !st.any_refusal() {
            break;
        }
    }
    fall_until_stable(&mut st, &mut reasons);
    let unplaced = units
        .values()
        .filter(|u| wants_to_run(u) && !u.req.global && !st.at.contains_key(u.name.as_str()))
        .map(|u| u.name.clone())
        .collect();
    Plan {
        decisions: diff(&st, schedule, reasons),
        unplaced,
    }
}

fn wants_to_run(u: &Unit) -> bool {
    u.desired != Desired::Inactive && !u.template
}

fn entry(u: &Unit) -> Entry {
    Entry {
        desired: u.desired,
        hash: u.hash.clone(),
    }
}

/// Global units onto every machine that takes them; `true` if any was placed.
fn place_globals(st: &mut State) -> bool {
    let units = st.units;
    let mut placed = false;
    for u in units.values().filter(|u| u.req.global && wants_to_run(u)) {
        for m in st.machines.values() {
            let there = st
                .at
                .get(u.name.as_str())
                .is_some_and(|s| s.contains(m.id.as_str()));
            if !there && st.refusal(u, m).is_none() {
                st.add(u, &m.id);
                placed = true;
            }
        }
    }
    placed
}

/// Unscheduled plain units onto their best machines, until nothing more fits (a
/// follower fits once its peer is placed); `true` if any was placed.
fn place_pending(st: &mut State) -> bool {
    let units = st.units;
    let mut pending: Vec<&Unit> = units
        .values()
        .filter(|u| !u.req.global && wants_to_run(u) && !st.at.contains_key(u.name.as_str()))
        .collect();
    let start = pending.len();
    let classes = Classes::new(units);
    loop {
        let before = pending.len();
        // Placing a unit only ever adds refusals (load, conflicts), except for followers:
        // a class refused everywhere stays refused for the rest of this round.
        let mut refused: BTreeSet<String> = BTreeSet::new();
        pending.retain(|u| {
            let class = classes.of(u);
            if class.as_ref().is_some_and(|c| refused.contains(c)) {
                return true;
            }
            match st.best_machine(u) {
                Some(m) => {
                    st.add(u, m);
                    false
                }
                None => {
                    refused.extend(class);
                    true
                }
            }
        });
        if pending.len() == before {
            return pending.len() < start;
        }
    }
}

/// Units that placement cannot tell apart: the same constraints, and the same patterns
/// of other units matching their names. When one of them fits nowhere, none does — so
/// the thousand instances of a template that has run out of machines cost one search,
/// not a thousand.
struct Classes<'a> {
    /// Every distinct Conflicts/Replaces pattern, when there are few enough to test each
    /// name against.
    patterns: Vec<&'a str>,
}

impl<'a> Classes<'a> {
    const PATTERNS_MAX: usize = 64;

    fn new(units: &'a BTreeMap<String, Unit>) -> Self {
        let all: BTreeSet<&str> = units
            .values()
            .flat_map(|u| u.req.conflicts.iter().chain(&u.req.replaces))
            .map(String::as_str)
            .collect();
        Self {
            patterns: if all.len() <= Self::PATTERNS_MAX {
                all.into_iter().collect()
            } else {
                vec![]
            },
        }
    }

    /// The unit's class, or `None` when it must be searched for on its own (a follower,
    /// or too many patterns to compare names cheaply).
    fn of(&self, u: &Unit) -> Option<String> {
        let r = &u.req;
        let has_patterns = !r.conflicts.is_empty() || !r.replaces.is_empty();
        if !r.peers.is_empty() || (self.patterns.is_empty() && has_patterns) {
            return None;
        }
        let hits: Vec<usize> = (0..self.patterns.len())
            .filter(|i| crate::unitfile::glob::matches(self.patterns[*i], &u.name))
            .collect();
        Some(format!(
            "{:?}|{:?}|{:?}|{:?}|{hits:?}",
            r.machine_id, r.metadata, r.conflicts, r.replaces
        ))
    }
}

/// The decisions that turn `schedule` into the pass's result, in an order whose every
/// prefix is a valid schedule: unschedules (followers before peers), schedules (peers
/// before followers), updates.
fn diff(st: &State, schedule: &Schedule, mut reasons: Reasons) -> Vec<Decision> {
    let depth = depths(st.units);
    let d = |u: &str| depth.get(u).copied().unwrap_or(0);
    let kept = |u: &str, m: &str| st.at.get(u).is_some_and(|s| s.contains(m));
    let mut unschedules = vec![];
    let mut updates = vec![];
    for (u, on) in schedule {
        for (m, e) in on {
            if !kept(u, m) {
                let reason = reasons
                    .remove(&(u.clone(), m.clone()))
                    .unwrap_or_else(|| "moved".into());
                unschedules.push((d(u), u.clone(), m.clone(), reason));
            } else if *e != entry(&st.units[u]) {
                updates.push(Decision::Update {
                    unit: u.clone(),
                    machine: m.clone(),
                    entry: entry(&st.units[u]),
                });
            }
        }
    }
    let mut schedules = vec![];
    for (u, on) in &st.at {
        for m in on {
            if !schedule.get(*u).is_some_and(|s| s.contains_key(*m)) {
                schedules.push((d(u), u.to_string(), m.to_string()));
            }
        }
    }
    unschedules.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| (&a.1, &a.2).cmp(&(&b.1, &b.2))));
    schedules.sort();
    let mut out: Vec<Decision> = unschedules
        .into_iter()
        .map(|(_, unit, machine, reason)| Decision::Unschedule {
            unit,
            machine,
            reason,
        })
        .collect();
    out.extend(
        schedules
            .into_iter()
            .map(|(_, unit, machine)| Decision::Schedule {
                entry: entry(&st.units[&unit]),
                unit,
                machine,
            }),
    );
    out.extend(updates);
    out
}

/// How deep each unit sits in `MachineOf` chains (0: follows nobody); cycles count once.
fn depths(units: &BTreeMap<String, Unit>) -> BTreeMap<&str, usize> {
    fn walk<'a>(
        u: &'a str,
        units: &'a BTreeMap<String, Unit>,
        memo: &mut BTreeMap<&'a str, usize>,
        on_path: &mut Vec<&'a str>,
    ) -> usize {
        if let Some(d) = memo.get(u) {
            return *d;
        }
        if on_path.contains(&u) {
            return 0;
        }
        on_path.push(u);
        let d = units.get(u).map_or(0, |x| {
            x.req
                .peers
                .iter()
                .map(|p| 1 + walk(p, units, memo, on_path))
                .max()
                .unwrap_or(0)
        });
        on_path.pop();
        memo.insert(u, d);
        d
    }
    let mut memo = BTreeMap::new();
    for u in units.keys() {
        walk(u, units, &mut memo, &mut vec![]);
    }
    memo
}

/// Why each existing placement was taken away, for the log.
type Reasons = BTreeMap<(String, String), String>;

/// Takes in the existing schedule, refusing entries that cannot stand whatever else is
/// there: unit gone, inactive or a template, machine gone, a plain unit on a second machine.
fn admit_existing<'a>(st: &mut State<'a>, schedule: &'a Schedule) -> Reasons {
    let mut out = Reasons::new();
    for (u, on) in schedule {
        for m in on.keys() {
            let why = match st.units.get(u) {
                None => Some("unit destroyed".to_string()),
                Some(x) if x.template => Some("templates do not run".into()),
                Some(x) if x.desired == Desired::Inactive => Some("target state inactive".into()),
                Some(_) if !st.machines.contains_key(m) => {
                    Some(format!("target Machine({m}) went away"))
                }
                Some(x) if !x.req.global && st.at.contains_key(u.as_str()) => {
                    Some("scheduled on another machine already".into())
                }
                Some(_) => None,
            };
            match why {
                Some(reason) => {
                    out.insert((u.clone(), m.clone()), reason);
                }
                None => st.admit(&st.units[u], m),
            }
        }
    }
    st.by_load = st.on.iter().map(|(m, us)| (us.len(), *m)).collect();
    out
}

/// Unschedules placements whose constraints broke, until none does. Candidates are
/// re-checked just before they fall: a fall can resolve another's conflict.
fn fall_until_stable(st: &mut State, reasons: &mut Reasons) {
    loop {
        let candidates: Vec<(&Unit, &str)> = st
            .dirty_pairs()
            .into_iter()
            .filter(|(u, m)| st.refusal(u, &st.machines[*m]).is_some())
            .collect();
        st.dirty.clear();
        if candidates.is_empty() {
            return;
        }
        for (u, m) in candidates {
            if let Some(why) = st.refusal(u, &st.machines[m]) {
                st.remove(&u.name, m);
                reasons
                    .entry((u.name.clone(), m.to_string()))
                    .or_insert_with(|| format!("cannot run on {} any more: {why}", short_id(m)));
            }
        }
    }
}

/// Why `unit` is not placed, for a user waiting on `start`: each machine's refusal.
/// Empty when a machine would take it (the scheduler has not placed it yet).
pub fn explain(
    machines: &BTreeMap<String, Machine>,
    units: &BTreeMap<String, Unit>,
    schedule: &Schedule,
    unit: &str,
) -> String {
    let Some(u) = units.get(unit) else {
        return format!("unit {unit} does not exist");
    };
    if u.template {
        return format!("{unit} is a template: start an instance of it");
    }
    if u.desired == Desired::Inactive {
        return format!("{unit} is inactive");
    }
    if machines.is_empty() {
        return "no machines are registered".into();
    }
    let mut st = State::new(units, machines);
    admit_existing(&mut st, schedule);
    let mut lines = vec![];
    for m in machines.values() {
        let here = st.at.get(unit).is_some_and(|s| s.contains(m.id.as_str()));
        if here {
            continue;
        }
        match st.refusal(u, m) {
            Some(why) => lines.push(format!("{}: {why}", short_id(&m.id))),
            // Some machine takes it: the scheduler has not got to it yet.
            None => return String::new(),
        }
    }
    format!(
        "{unit} cannot be placed on any of {} machine(s): {}",
        machines.len(),
        lines.join("; ")
    )
}
