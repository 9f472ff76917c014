//! Placement as a pure function: a table of fleet's cases, then properties over random
//! clusters (no decision breaks a constraint; everything that can be placed is; a second
//! pass over the result decides nothing).

use flotilla::sched::place::{plan, Decision, Desired, Entry, Machine, Plan, Schedule, Unit};
use flotilla::sched::require::Requirements;
use flotilla::unitfile::file::parse;
use flotilla::unitfile::glob::matches;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn unit(name: &str, xfleet: &str) -> Unit {
    unit_in(name, xfleet, Desired::Launched)
}

fn unit_in(name: &str, xfleet: &str, desired: Desired) -> Unit {
    let text = format!("[Service]\nExecStart=/bin/true\n[X-Fleet]\n{xfleet}\n");
    let opts = parse(&text).expect("test unit parses");
    Unit {
        name: name.into(),
        req: Requirements::of(name, &opts),
        desired,
        hash: "h".into(),
        template: name.contains("@."),
    }
}

fn machines(spec: &[(&str, &str)]) -> BTreeMap<String, Machine> {
    spec.iter()
        .map(|(id, meta)| {
            let metadata = meta
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (
                id.to_string(),
                Machine {
                    id: id.to_string(),
                    metadata,
                },
            )
        })
        .collect()
}

fn units(list: Vec<Unit>) -> BTreeMap<String, Unit> {
    list.into_iter().map(|u| (u.name.clone(), u)).collect()
}

/// The schedule after applying `plan` to `schedule`.
fn apply(schedule: &Schedule, p: &Plan) -> Schedule {
    let mut s = schedule.clone();
    for d in &p.decisions {
        match d {
            Decision::Schedule {
                unit,
                machine,
                entry,
            }
            | Decision::Update {
                unit,
                machine,
                entry,
            } => {
                s.entry(unit.clone())
                    .or_default()
                    .insert(machine.clone(), entry.clone());
            }
            Decision::Unschedule { unit, machine, .. } => {
                let on = s.get_mut(unit).expect("unschedules what is scheduled");
                assert!(
                    on.remove(machine).is_some(),
                    "unscheduled {unit} from {machine}, where it was not"
                );
                if on.is_empty() {
                    s.remove(unit);
                }
            }
        }
    }
    s
}

fn run(ms: &BTreeMap<String, Machine>, us: &BTreeMap<String, Unit>, s: &Schedule) -> Schedule {
    apply(s, &plan(ms, us, s))
}

fn where_is(s: &Schedule, unit: &str) -> Vec<String> {
    s.get(unit)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn entry() -> Entry {
    Entry {
        desired: Desired::Launched,
        hash: "h".into(),
    }
}

#[test]
fn least_loaded_wins_ties_to_the_lowest_id_and_round_robins() {
    let ms = machines(&[("m2", ""), ("m1", ""), ("m3", "")]);
    let us = units((0..5).map(|i| unit(&format!("u{i}.service"), "")).collect());
    let s = run(&ms, &us, &Schedule::new());
    let got: Vec<String> = (0..5)
        .map(|i| where_is(&s, &format!("u{i}.service"))[0].clone())
        .collect();
    assert_eq!(got, ["m1", "m2", "m3", "m1", "m2"]);
}

#[test]
fn conflicts_spread_instances_and_leave_the_extra_unplaced() {
    let ms = machines(&[("a", ""), ("b", ""), ("c", "")]);
    let us = units(
        (1..=4)
            .map(|i| unit(&format!("apache@{i}.service"), "Conflicts=%p@*.service"))
            .collect(),
    );
    let p = plan(&ms, &us, &Schedule::new());
    let s = apply(&Schedule::new(), &p);
    let mut used: Vec<String> = (1..=3)
        .map(|i| where_is(&s, &format!("apache@{i}.service"))[0].clone())
        .collect();
    used.sort();
    assert_eq!(used, ["a", "b", "c"]);
    assert_eq!(p.unplaced, vec!["apache@4.service"]);
    let why = flotilla::sched::place::explain(&ms, &us, &s, "apache@4.service");
    assert!(why.contains("Conflicts with apache@"), "{why}");
    assert!(why.contains("3 machine(s)"), "{why}");
}

#[test]
fn conflicts_hold_from_the_side_that_does_not_declare_them() {
    let ms = machines(&[("a", "")]);
    let us = units(vec![
        unit("x.service", ""),
        unit("y.service", "Conflicts=x.service"),
    ]);
    let s = run(&ms, &us, &Schedule::new());
    assert_eq!(where_is(&s, "x.service"), ["a"]);
    assert!(where_is(&s, "y.service").is_empty());
}

#[test]
fn machine_of_follows_its_peer_and_chains_resolve_in_one_pass() {
    let ms = machines(&[("a", ""), ("b", ""), ("c", "")]);
    let us = units(vec![
        unit("app.service", "MachineID=c"),
        unit("side.service", "MachineOf=app.service"),
        unit("side2.service", "MachineOf=side.service"),
        unit("orphan.service", "MachineOf=missing.service"),
    ]);
    let p = plan(&ms, &us, &Schedule::new());
    let s = apply(&Schedule::new(), &p);
    assert_eq!(where_is(&s, "side.service"), ["c"]);
    assert_eq!(where_is(&s, "side2.service"), ["c"]);
    assert_eq!(p.unplaced, vec!["orphan.service"]);
    // The peer going inactive takes the followers off too, followers first.
    let mut us2 = us.clone();
    us2.get_mut("app.service").unwrap().desired = Desired::Inactive;
    let p = plan(&ms, &us2, &s);
    let order: Vec<&str> = p
        .decisions
        .iter()
        .map(|d| match d {
            Decision::Unschedule { unit, .. } => unit.as_str(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(order, ["side2.service", "side.service", "app.service"]);
}

#[test]
fn machine_metadata_ands_keys_and_ors_values() {
    let ms = machines(&[
        ("a", "region=us,disk=hdd"),
        ("b", "region=eu,disk=ssd"),
        ("c", "region=us,disk=ssd"),
    ]);
    let us = units(vec![
        unit(
            "db.service",
            "MachineMetadata=disk=ssd\nMachineMetadata=region=us",
        ),
        unit(
            "web.service",
            "MachineMetadata=region=ap\nMachineMetadata=region=eu",
        ),
        unit("none.service", "MachineMetadata=region=mars"),
    ]);
    let p = plan(&ms, &us, &Schedule::new());
    let s = apply(&Schedule::new(), &p);
    assert_eq!(where_is(&s, "db.service"), ["c"]);
    assert_eq!(where_is(&s, "web.service"), ["b"]);
    assert_eq!(p.unplaced, vec!["none.service"]);
}

#[test]
fn machine_id_accepts_the_short_id() {
    let ms = machines(&[("0123456789abcdef", ""), ("fedcba9876543210", "")]);
    let us = units(vec![unit("pin.service", "MachineID=fedcba98")]);
    let s = run(&ms, &us, &Schedule::new());
    assert_eq!(where_is(&s, "pin.service"), ["fedcba9876543210"]);
}

#[test]
fn global_units_go_everywhere_eligible_and_respect_conflicts() {
    let ms = machines(&[("a", "role=web"), ("b", "role=web"), ("c", "role=db")]);
    let us = units(vec![
        unit("log.service", "Global=true"),
        unit("web.service", "Global=true\nMachineMetadata=role=web"),
        unit("solo.service", "MachineID=b\nConflicts=web.service"),
    ]);
    let s = run(&ms, &us, &Schedule::new());
    assert_eq!(where_is(&s, "log.service"), ["a", "b", "c"]);
    assert_eq!(where_is(&s, "web.service"), ["a", "b"]);
    assert!(
        where_is(&s, "solo.service").is_empty(),
        "conflicts with the global unit on b"
    );
}

#[test]
fn templates_and_inactive_units_never_run() {
    let ms = machines(&[("a", "")]);
    let us = units(vec![
        unit("t@.service", ""),
        unit_in("off.service", "", Desired::Inactive),
        unit_in("loaded.service", "", Desired::Loaded),
    ]);
    let p = plan(&ms, &us, &Schedule::new());
    let s = apply(&Schedule::new(), &p);
    assert!(where_is(&s, "t@.service").is_empty());
    assert!(where_is(&s, "off.service").is_empty());
    assert_eq!(where_is(&s, "loaded.service"), ["a"]);
    assert!(
        p.unplaced.is_empty(),
        "templates and inactive units are not waiting"
    );
}

#[test]
fn a_lost_machine_moves_only_its_units_and_a_joining_one_gets_nothing_back() {
    let ms = machines(&[("a", ""), ("b", ""), ("c", "")]);
    let us = units((0..6).map(|i| unit(&format!("u{i}.service"), "")).collect());
    let s1 = run(&ms, &us, &Schedule::new());
    let lost = machines(&[("a", ""), ("c", "")]);
    let p = plan(&lost, &us, &s1);
    let s2 = apply(&s1, &p);
    for u in us.keys() {
        let before = &where_is(&s1, u)[0];
        let after = &where_is(&s2, u)[0];
        if before != "b" {
            assert_eq!(before, after, "{u} moved though its machine lived");
        } else {
            assert_ne!(after, "b");
        }
    }
    // b returns: nothing moves back.
    let p = plan(&ms, &us, &s2);
    assert!(p.decisions.is_empty(), "{:?}", p.decisions);
}

#[test]
fn updates_in_place_when_the_desired_state_or_hash_changes() {
    let ms = machines(&[("a", "")]);
    let mut us = units(vec![unit("u.service", "")]);
    let s = run(&ms, &us, &Schedule::new());
    us.get_mut("u.service").unwrap().desired = Desired::Loaded;
    let p = plan(&ms, &us, &s);
    assert_eq!(
        p.decisions,
        vec![Decision::Update {
            unit: "u.service".into(),
            machine: "a".into(),
            entry: Entry {
                desired: Desired::Loaded,
                hash: "h".into()
            }
        }]
    );
}

#[test]
fn replaces_moves_the_replaced_unit_away_in_one_pass() {
    let ms = machines(&[("a", ""), ("b", "")]);
    let mut schedule = Schedule::new();
    schedule
        .entry("old.service".into())
        .or_default()
        .insert("a".into(), entry());
    schedule
        .entry("filler.service".into())
        .or_default()
        .insert("b".into(), entry());
    let us = units(vec![
        unit("old.service", ""),
        unit("filler.service", ""),
        unit("new.service", "Replaces=old.service"),
    ]);
    // new goes to the least loaded machine (a, by id); old must leave a for b.
    let s = run(&ms, &us, &schedule);
    let s = run(&ms, &us, &s);
    assert_ne!(where_is(&s, "new.service"), where_is(&s, "old.service"));
    // One machine: the replaced unit waits unscheduled rather than flapping.
    let one = machines(&[("a", "")]);
    let s = run(&one, &us, &Schedule::new());
    let s = run(&one, &us, &s);
    assert!(plan(&one, &us, &s).decisions.is_empty(), "must converge");
}

#[test]
fn a_unit_on_two_machines_is_cut_back_to_one() {
    let ms = machines(&[("a", ""), ("b", "")]);
    let us = units(vec![unit("u.service", "")]);
    let mut s = Schedule::new();
    s.entry("u.service".into())
        .or_default()
        .insert("a".into(), entry());
    s.entry("u.service".into())
        .or_default()
        .insert("b".into(), entry());
    let s = run(&ms, &us, &s);
    assert_eq!(where_is(&s, "u.service"), ["a"]);
}

// ---- properties ----

const IDS: [&str; 5] = ["m0", "m1", "m2", "m3", "m4"];

fn arb_unit(i: usize) -> impl Strategy<Value = (String, String, Desired)> {
    let name = if i.is_multiple_of(3) {
        format!("app@{i}.service")
    } else {
        format!("u{i}.service")
    };
    let opt = prop_oneof![
        3 => Just(String::new()),
        1 => prop::sample::select(IDS.to_vec()).prop_map(|m| format!("MachineID={m}")),
        1 => prop::sample::select(vec!["zone=a", "zone=b", "disk=ssd"]).prop_map(|kv| format!("MachineMetadata={kv}")),
        2 => Just("Conflicts=app@*.service".to_string()),
        1 => (0..12usize).prop_map(|j| format!("MachineOf=u{j}.service")),
        1 => (0..12usize).prop_map(|j| format!("Conflicts=u{j}*")),
        1 => Just("Global=true".to_string()),
        1 => (0..12usize).prop_map(|j| format!("Replaces=u{j}.service")),
    ];
    let desired = prop_oneof![
        1 => Just(Desired::Inactive),
        1 => Just(Desired::Loaded),
        3 => Just(Desired::Launched),
    ];
    (Just(name), prop::collection::vec(opt, 0..3), desired)
        .prop_map(|(n, opts, d)| (n, opts.join("\n"), d))
}

fn arb_world(
) -> impl Strategy<Value = (BTreeMap<String, Machine>, BTreeMap<String, Unit>, Schedule)> {
    let ms = prop::collection::vec(
        (
            prop::sample::select(IDS.to_vec()),
            prop::sample::select(vec!["", "zone=a", "zone=b,disk=ssd"]),
        ),
        0..5,
    );
    let us = (0..12usize).map(arb_unit).collect::<Vec<_>>();
    let sched = prop::collection::vec((0..12usize, prop::sample::select(IDS.to_vec())), 0..8);
    (ms, us, sched).prop_map(|(ms, us, sched)| {
        let ms = machines(&ms);
        let us: BTreeMap<String, Unit> = us
            .into_iter()
            .map(|(n, x, d)| (n.clone(), unit_in(&n, &x, d)))
            .collect();
        let names: Vec<String> = us.keys().cloned().collect();
        let mut s = Schedule::new();
        for (u, m) in sched {
            s.entry(names[u % names.len()].clone())
                .or_default()
                .insert(m.to_string(), entry());
        }
        (ms, us, s)
    })
}

/// `a` replaces `b`: its pattern matches `b`, and evicting `b` cannot come back round to
/// evicting `a` — no chain leads from `b` to `a` of units replacing the next or being
/// followed (`MachineOf`) by it (fleet ignores a circular pair; a longer ring would flap
/// the same way).
fn replaces(us: &BTreeMap<String, Unit>, a: &str, b: &str) -> bool {
    let direct = |x: &str, y: &str| x != y && us[x].req.replaces.iter().any(|p| matches(p, y));
    if !direct(a, b) {
        return false;
    }
    let evicts =
        |x: &str, y: &str| direct(x, y) || (x != y && us[y].req.peers.iter().any(|p| p == x));
    let mut reached = vec![b];
    let mut i = 0;
    while i < reached.len() {
        for y in us.keys().map(String::as_str) {
            if evicts(reached[i], y) && !reached.contains(&y) {
                reached.push(y);
            }
        }
        i += 1;
    }
    !reached.contains(&a)
}

/// Every constraint holds in `s`; returns the first broken one.
fn violations(
    ms: &BTreeMap<String, Machine>,
    us: &BTreeMap<String, Unit>,
    s: &Schedule,
) -> Option<String> {
    let mut on: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (u, at) in s {
        let unit = us.get(u)?;
        if unit.desired == Desired::Inactive || unit.template {
            return Some(format!("{u} is scheduled but must not run"));
        }
        // fleet refuses to submit a unit whose peer matches its own Replaces; one stored
        // anyway never runs, even where the peer replaces it back.
        let peer_replaced = |p: &String| unit.req.replaces.iter().any(|r| matches(r, p));
        if unit.req.peers.iter().any(peer_replaced) {
            return Some(format!("{u} is placed but replaces its own MachineOf peer"));
        }
        if !unit.req.global && at.len() > 1 {
            return Some(format!("{u} on {} machines", at.len()));
        }
        for m in at.keys() {
            let Some(mach) = ms.get(m) else {
                return Some(format!("{u} on dead machine {m}"));
            };
            if !unit.req.machine_id_ok(m) || !unit.req.metadata_ok(&mach.metadata) {
                return Some(format!("{u} on {m} against MachineID/metadata"));
            }
            on.entry(m.as_str()).or_default().push(u.as_str());
        }
    }
    for (m, here) in &on {
        for a in here {
            let ua = &us[*a];
            for p in &ua.req.peers {
                // A unit is never its own peer (fleet: it cannot be placed).
                if p == a || !here.contains(&p.as_str()) {
                    return Some(format!("{a} on {m} without its peer {p}"));
                }
            }
            for b in here {
                if a != b && ua.req.conflicts_with(a, b, &us[*b].req) {
                    return Some(format!("{a} and {b} conflict on {m}"));
                }
                if a != b && replaces(us, a, b) {
                    return Some(format!("{a} replaces {b} but both are on {m}"));
                }
            }
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn plans_are_valid_maximal_and_stable((ms, us, s0) in arb_world()) {
        let p = plan(&ms, &us, &s0);
        let s1 = apply(&s0, &p);
        prop_assert_eq!(violations(&ms, &us, &s1), None);
        // Every prefix of the decisions leaves a valid schedule, given a valid start.
        if violations(&ms, &us, &s0).is_none() {
            for k in 0..p.decisions.len() {
                let part = Plan { decisions: p.decisions[..k].to_vec(), unplaced: vec![] };
                let mid = apply(&s0, &part);
                prop_assert_eq!(violations(&ms, &us, &mid), None, "after {} decisions", k);
            }
        }
        // Maximal: nothing waiting could go anywhere, and global units are on every
        // machine that would take them.
        for u in us.values().filter(|u| u.desired != Desired::Inactive && !u.template) {
            let at: Vec<String> = where_is(&s1, &u.name);
            for m in ms.keys().filter(|m| !at.contains(m)) {
                if !u.req.global && !at.is_empty() {
                    continue;
                }
                let mut with = s1.clone();
                with.entry(u.name.clone()).or_default().insert(m.clone(), entry());
                prop_assert!(
                    violations(&ms, &us, &with).is_some(),
                    "{} could run on {} but was left off", u.name, m
                );
            }
        }
        // Stable: a second pass (a new leader reading the same store) decides nothing.
        let again = plan(&ms, &us, &s1);
        prop_assert!(again.decisions.is_empty(), "second pass decided {:?}", again.decisions);
    }
}

/// What runs after one pass over `us` on a single machine (by name), which a second
/// pass must leave as it is.
fn settled_on_one_machine(us: &BTreeMap<String, Unit>) -> Vec<String> {
    let one = machines(&[("m0", "")]);
    let s = run(&one, us, &Schedule::new());
    assert!(plan(&one, us, &s).decisions.is_empty(), "must converge");
    s.into_iter()
        .filter(|(_, at)| at.contains_key("m0"))
        .map(|(u, _)| u)
        .collect()
}

#[test]
fn a_unit_that_would_replace_its_own_peer_chain_runs_beside_it_instead_of_flapping() {
    // new follows mid, mid follows old, and new replaces old: evicting old would take mid
    // (and so new) away with it. That is a ring, ignored like fleet's circular pair.
    let us = units(vec![
        unit("old.service", ""),
        unit("mid.service", "MachineOf=old.service"),
        unit("new.service", "MachineOf=mid.service\nReplaces=old.service"),
    ]);
    assert_eq!(
        settled_on_one_machine(&us),
        ["mid.service", "new.service", "old.service"]
    );
}

#[test]
fn a_ring_closed_through_machine_of_is_ignored_too() {
    // app replaces u5 replaces u2 replaces u1, and app follows u1: whichever ran, a
    // waiting one evicted it (a proptest seed went round {app, u1} → {u5} → {u2}). v
    // replaces u1 from outside the ring, so u1 (and app with it) waits.
    let mut us = units(vec![
        unit("app.service", "MachineOf=u1.service\nReplaces=u5.service"),
        unit("u1.service", ""),
        unit("u2.service", "Replaces=u1.service"),
        unit("u5.service", "Replaces=u2.service"),
    ]);
    assert_eq!(
        settled_on_one_machine(&us),
        ["app.service", "u1.service", "u2.service", "u5.service"]
    );
    us.extend(units(vec![unit("v.service", "Replaces=u1.service")]));
    assert_eq!(
        settled_on_one_machine(&us),
        ["u2.service", "u5.service", "v.service"]
    );
}

#[test]
fn a_ring_of_replaces_is_ignored_like_fleets_circular_pair() {
    // a replaces b replaces c replaces a: whichever ran, a waiting one would evict it.
    // d replaces a from outside the ring, so a waits; b and c run together.
    let us = units(vec![
        unit("a.service", "Replaces=b.service"),
        unit("b.service", "Replaces=c.service"),
        unit("c.service", "Replaces=a.service"),
        unit("d.service", "Replaces=a.service"),
    ]);
    assert_eq!(
        settled_on_one_machine(&us),
        ["b.service", "c.service", "d.service"]
    );
}
