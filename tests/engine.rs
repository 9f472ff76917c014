//! The scheduling engine on an in-process member, passes driven by hand: a deposed
//! engine commits nothing once another has taken the lease; a machine's agent, watching
//! its own schedule prefix, is not woken by other machines' placements.
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
