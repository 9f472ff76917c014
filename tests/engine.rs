//! The scheduling engine on an in-process member, passes driven by hand: a deposed
//! engine commits nothing once another has taken the lease; a machine's agent, watching
//! its own schedule prefix, is not woken by other machines' placements; a machine's key
//! expiring wakes the engine, which places its units again without waiting to reconcile.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::inproc::one_member;
use flotilla::client::{inproc::InProc, KvClient, SetOpts};
use flotilla::sched::engine::{Engine, EngineConfig};
use flotilla::sched::place::Desired;
use flotilla::sched::registry::{self, MachineRecord, UnitRecord};
use flotilla::unitfile::file::UnitOption;
use flotilla_shims::TokioSpawn;
use std::sync::Arc;
use std::time::Duration;

async fn machine(kv: &InProc, id: &str) {
    let rec = MachineRecord {
        id: id.into(),
        ..Default::default()
    };
    let v = serde_json::to_string(&rec).unwrap();
    kv.set(&registry::machine_key(id), &v, SetOpts::default())
        .await
        .unwrap();
}

async fn unit(kv: &InProc, name: &str, xfleet: &str) {
    let mut options = vec![UnitOption::new("Service", "ExecStart", "/bin/true")];
    if let Some((k, v)) = xfleet.split_once('=') {
        options.push(UnitOption::new("X-Fleet", k, v));
    }
    let rec = UnitRecord {
        name: name.into(),
        options,
        desired_state: Desired::Launched,
    };
    let v = serde_json::to_string(&rec).unwrap();
    kv.set(&registry::unit_key(name), &v, SetOpts::default())
        .await
        .unwrap();
}

async fn placed_on(kv: &InProc, machine: &str, unit: &str) -> bool {
    kv.get(&registry::schedule_key(machine, unit), false, false)
        .await
        .unwrap()
        .is_some()
}

fn engine(kv: &InProc, member: &str) -> Engine {
    let cfg = EngineConfig {
        member: member.into(),
        ..Default::default()
    };
    Engine::new(kv.clone(), kv.clock.clone(), Arc::new(TokioSpawn), cfg)
}

#[tokio::test]
async fn a_deposed_engine_commits_nothing() {
    let kv = one_member().await;
    machine(&kv, "m1").await;
    let mut old = engine(&kv, "old");
    let mut new = engine(&kv, "new");

    unit(&kv, "u1.service", "").await;
    let r = old.pass().await.unwrap();
    assert_eq!(r.committed, 1, "{r:?}");
    assert!(placed_on(&kv, "m1", "u1.service").await);

    // Another engine takes the lease (as a new leader would) and schedules.
    unit(&kv, "u2.service", "").await;
    let r = new.pass().await.unwrap();
    assert_eq!(r.committed, 1, "{r:?}");

    // The old one still believes it holds the lease; its commit is refused by the fence.
    unit(&kv, "u3.service", "").await;
    let r = old.pass().await.unwrap();
    assert_eq!(r.committed, 0, "a deposed engine committed: {r:?}");
    assert!(!placed_on(&kv, "m1", "u3.service").await);
    // The lease holder places it.
    let r = new.pass().await.unwrap();
    assert_eq!(r.committed, 1, "{r:?}");
    assert!(placed_on(&kv, "m1", "u3.service").await);
    // And a pass over a settled store decides nothing.
    assert_eq!(new.pass().await.unwrap().committed, 0);
}

#[tokio::test]
async fn an_agent_is_woken_only_by_its_own_machines_placements() {
    let kv = one_member().await;
    machine(&kv, "m1").await;
    machine(&kv, "m2").await;
    let mut e = engine(&kv, "e");
    unit(&kv, "a.service", "MachineID=m2").await;
    e.pass().await.unwrap();
    assert!(placed_on(&kv, "m2", "a.service").await);

    // From here, only m1 gets placements.
    let since = kv.index() + 1;
    for i in 0..20 {
        unit(&kv, &format!("b{i}.service"), "MachineID=m1").await;
    }
    let r = e.pass().await.unwrap();
    assert_eq!(r.committed, 20);
    // m1's agent watch fires at once; m2's sees nothing of it.
    let m1 = kv.watch(&registry::schedule_dir("m1"), true, since);
    let ev = tokio::time::timeout(Duration::from_secs(1), m1)
        .await
        .expect("m1 is woken")
        .unwrap();
    assert!(ev.node.key.starts_with(&registry::schedule_dir("m1")));
    let m2 = kv.watch(&registry::schedule_dir("m2"), true, since);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), m2)
            .await
            .is_err(),
        "m2's agent was woken by m1's placements"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_whose_key_expires_has_its_units_placed_again_at_once() {
    let kv = one_member().await;
    // m1's key lives 2 s unless renewed (no agent renews it here).
    let rec = serde_json::to_string(&MachineRecord {
        id: "m1".into(),
        ..Default::default()
    })
    .unwrap();
    let ttl = SetOpts {
        ttl_s: Some(2),
        ..Default::default()
    };
    kv.set(&registry::machine_key("m1"), &rec, ttl)
        .await
        .unwrap();
    // A reconcile interval far past the test: only a wake-up can move the unit.
    let cfg = EngineConfig {
        member: "e".into(),
        reconcile_ms: 600_000,
        ..Default::default()
    };
    let e = Engine::new(kv.clone(), kv.clock.clone(), Arc::new(TokioSpawn), cfg);
    let run = tokio::spawn(e.run());
    unit(&kv, "u.service", "").await;
    let t0 = std::time::Instant::now();
    while !placed_on(&kv, "m1", "u.service").await {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "u never placed on m1"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    machine(&kv, "m2").await;
    // m1's key expires about 2 s after it was written; the expiry must wake the engine.
    let t0 = std::time::Instant::now();
    while !placed_on(&kv, "m2", "u.service").await {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "u not placed again 20 s after its machine's key was set to expire in 2 s \
             (the next reconcile is 600 s away)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!placed_on(&kv, "m1", "u.service").await);
    run.abort();
}
