//! The whole stack in one world: the sidekicks' presence containers keep their TTL keys
//! (as the seed's `jpweb/nginx-presence` does over HTTP to its machine's member), and the
//! checks that tie the layers together after the heal:
//!
//! - every running sidekick's key exists and names its machine, and no other key does;
//! - every live node's rendered upstream lists exactly those instances;
//! - the leader's machine dies: its instances' keys are gone within their TTL (plus an
//!   election), the schedule and the upstream converge again, and nothing that was
//!   correctly placed and running on another machine was restarted.

use super::scheduling::{agent_says, machine_keys, running, sched_liveness};
use super::{Life, World, LIVENESS_BOUND};
use crate::docker::Presence;
use crate::env::elapsed;
use crate::scenario::PRESENCE_TTL_S;
use flotilla::client::{inproc::InProc, ClientError, KvClient, SetOpts};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How often a presence container writes its key (the real image: every 45 s for a 60 s
/// TTL; here 1 s for 3 s).
const PRESENCE_PERIOD: Duration = Duration::from_millis(1_000);
/// The directory the presence keys live in (made once at the start, as an operator would,
/// so the renderer has something to render before the first instance announces itself).
const APP_DIR: &str = "/services/app";
/// A dead machine's keys must be gone within their TTL plus this (a new leader to expire
/// them, an expiry pass).
const EXPIRY_SLACK: Duration = Duration::from_secs(5);

/// Every live machine's presence containers write their keys, each write on its own task
/// (a member that does not answer delays only its own containers).
pub(super) async fn presence_keeper(w: Arc<World>) {
    make_app_dir(&w).await;
    loop {
        madsim::time::sleep(PRESENCE_PERIOD).await;
        for i in 0..w.s.nodes {
            let slot = &w.slots[i];
            if slot.life() != Life::Up {
                continue;
            }
            let Some(h) = slot.handle() else { continue };
            let kv: Arc<dyn KvClient> = Arc::new(InProc::new(h, Arc::new(slot.clock.clone())));
            keep_presences(&w, i, &slot.docker, kv);
        }
        // An agent-only machine's containers write over HTTP, as its agent does.
        for (j, m) in w.agents.iter().enumerate() {
            keep_presences(&w, w.s.nodes + j, &m.docker, m.kv.clone());
        }
    }
}

/// Machine `i`'s presence containers each write their key through `kv`, on its own task.
fn keep_presences(
    w: &Arc<World>,
    i: usize,
    docker: &crate::docker::SimDocker,
    kv: Arc<dyn KvClient>,
) {
    for p in docker.presences() {
        let ttl_s = if w.s.bug_presence_no_ttl {
            None
        } else {
            p.ttl_s
        };
        let (w2, kv) = (w.clone(), kv.clone());
        madsim::task::spawn(async move {
            let opts = SetOpts {
                ttl_s,
                ..Default::default()
            };
            if let Err(e) = kv.set(&p.key, &p.value, opts).await {
                w2.trace(format!("presence {} on m{i}: {e}", p.key));
            }
        });
    }
}

async fn make_app_dir(w: &Arc<World>) {
    for attempt in 0..200 {
        let slot = &w.slots[attempt % w.s.nodes];
        if let Some(h) = slot.handle() {
            let kv = InProc::new(h, Arc::new(slot.clock.clone()));
            let opts = SetOpts {
                dir: true,
                ..Default::default()
            };
            match kv.set(APP_DIR, "", opts).await {
                Err(ClientError::Unavailable(_)) => {}
                r => {
                    w.trace(format!("mkdir {APP_DIR}: {r:?}"));
                    return;
                }
            }
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the running presence containers of live machines announce, by key.
fn announced(w: &World) -> BTreeMap<String, (usize, Presence)> {
    let mut out = BTreeMap::new();
    for i in running(w).keys() {
        for p in w.docker(*i).presences() {
            out.insert(p.key.clone(), (*i, p));
        }
    }
    out
}

/// The presence keys in the leader's store (`None` while there is no leader).
fn app_keys(w: &World) -> Option<BTreeMap<String, String>> {
    let h = w
        .slots
        .iter()
        .filter_map(|s| s.handle())
        .find(|h| h.shared.status().is_leader)?;
    let m = h.shared.machine();
    let dir = m.store.get(APP_DIR, false).ok().and_then(|e| e.node.nodes);
    let keys = dir
        .unwrap_or_default()
        .into_iter()
        .filter(|n| !n.dir)
        .map(|n| (n.key, n.value.unwrap_or_default()))
        .collect();
    Some(keys)
}

/// A sidekick runs only beside its running app (`BindsTo` and `MachineOf`).
fn unbound_sidekick(w: &World) -> Option<String> {
    for (i, units) in running(w) {
        for u in units.iter().filter(|u| u.starts_with("side@")) {
            let app = u.replacen("side@", "app@", 1);
            if !units.contains(&app) {
                return Some(format!("{u} runs on m{i} without {app}"));
            }
        }
    }
    None
}

/// Within the liveness bound: the keys are exactly what the live sidekicks announce, and
/// every live node's upstream lists exactly them. False (with a violation) if not.
pub(super) async fn converged(w: &Arc<World>) -> bool {
    let deadline = elapsed() + LIVENESS_BOUND;
    loop {
        let said = announced(w);
        let keys = app_keys(w).unwrap_or_default();
        let want = crate::render::stack_expected(&keys.values().cloned().collect::<Vec<_>>());
        let mut wrong = vec![];
        for (k, (i, p)) in &said {
            // The agent expanded `%m` to the sidekick's own machine.
            if p.value != format!("m{i}:80") {
                wrong.push(format!("{} on m{i} announces {:?}", p.unit, p.value));
            }
            if keys.get(k) != Some(&p.value) {
                wrong.push(format!(
                    "{} runs on m{i} but {k} is {:?}",
                    p.unit,
                    keys.get(k)
                ));
            }
        }
        for (k, v) in &keys {
            if !said.contains_key(k) {
                wrong.push(format!(
                    "{k}={v} is in the store but no sidekick announces it"
                ));
            }
        }
        for i in (0..w.s.nodes).filter(|i| w.slots[*i].life() == Life::Up) {
            let got = w.slots[i].render.as_ref().and_then(|f| f.dest());
            if got.as_deref() != Some(want.as_str()) {
                wrong.push(format!("n{i}'s upstream is {got:?}, not {want:?}"));
            }
        }
        wrong.extend(unbound_sidekick(w));
        wrong.extend(dns_disagrees(w).await);
        if wrong.is_empty() {
            w.trace(format!(
                "stack converged: {} instances announced",
                keys.len()
            ));
            return true;
        }
        if elapsed() > deadline {
            w.violation(format!(
                "stack convergence: not within {LIVENESS_BOUND:?} after healing: {}",
                wrong.join("; ")
            ));
            return false;
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fabric endpoint of the DNS machine (agent-only machines are 500..900, network machines
/// 900 and up).
const DNS_ENDPOINT: u64 = 980;

/// Starts a machine that only answers DNS: `flotilla::net::dns` mirroring the store over
/// the HTTP client, as `flotilla agent --dns-addr` does.
pub(super) fn start_dns(w: &Arc<World>) {
    let kv = super::agents::fabric_kv(&Arc::downgrade(w), DNS_ENDPOINT, 0, w.s.nodes);
    let dns = Arc::new(flotilla::net::dns::Dns::new(
        Arc::new(crate::env::SimClock::default()),
        flotilla::net::dns::DEFAULT_DOMAIN,
    ));
    let _ = w.dns.set(dns.clone());
    w.rt.create_node()
        .name("dns")
        .init(move || {
            let (dns, kv) = (dns.clone(), kv.clone());
            async move {
                flotilla::net::dns::follow(&dns, kv, &crate::env::SimSpawn);
                std::future::pending::<()>().await
            }
        })
        .build();
}

type Named = std::collections::BTreeSet<(String, String)>;

fn named(v: &flotilla::net::dns::answer::View) -> Named {
    v.running()
        .into_iter()
        .map(|r| (r.stem, r.machine))
        .collect()
}

/// What the store says runs, read now (for a DNS disagreement's message).
async fn store_named(w: &Arc<World>) -> Option<Named> {
    let kv = super::agents::fabric_kv(&Arc::downgrade(w), DNS_ENDPOINT + 1, 0, w.s.nodes);
    let mut v = flotilla::net::dns::answer::View::default();
    let states = kv
        .get(flotilla::sched::registry::STATES, true, true)
        .await
        .ok()?;
    let machines = kv
        .get(flotilla::sched::registry::MACHINES, true, true)
        .await
        .ok()?;
    v.states.load(states.map(|g| g.node).as_ref());
    v.machines.load(machines.map(|g| g.node).as_ref());
    Some(named(&v))
}

/// The units that run on live machines, as their containers say.
fn runs(w: &World) -> Named {
    running(w)
        .into_iter()
        .flat_map(|(i, units)| {
            units.into_iter().map(move |u| {
                let stem = u.trim_end_matches(".service").to_ascii_lowercase();
                (stem, format!("m{i}"))
            })
        })
        .collect()
}

fn live_only(w: &World, named: Named) -> Named {
    let live = |m: &str| {
        m.strip_prefix('m')
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| w.machine_live(i))
    };
    named.into_iter().filter(|(_, m)| live(m)).collect()
}

/// Whether DNS names exactly what the store's states say runs on live machines (a
/// machine that is down keeps its names until its key expires: the machine-key check's
/// bound). `None`: agreed, or no DNS in this world.
async fn dns_disagrees(w: &Arc<World>) -> Option<String> {
    let dns = w.dns.get()?;
    let store = live_only(w, store_named(w).await?);
    let named = live_only(w, named(&dns.view()));
    if named == store {
        // The states themselves may lag what runs (an open finding, counted).
        if store != runs(w) {
            w.count("stale-unit-states");
        }
        return None;
    }
    Some(format!(
        "DNS names {:?} that the store's states do not; they say {:?} that DNS does not name",
        named.difference(&store).collect::<Vec<_>>(),
        store.difference(&named).collect::<Vec<_>>()
    ))
}

/// Kills the leader's machine once everything has converged. Its instances' keys must go
/// within their TTL, the rest must converge again, and no container on another machine
/// may have been restarted by the change of leader.
pub(super) async fn leader_change_probe(w: &Arc<World>) {
    let Some(leader) = (0..w.s.nodes).find(|i| {
        w.slots[*i]
            .handle()
            .is_some_and(|h| h.shared.status().is_leader)
    }) else {
        return w.violation("stack probe: no leader after convergence".into());
    };
    // A member that refused its corrupt disk stays down: the probe needs a majority
    // without the leader.
    let up = (0..w.s.nodes)
        .filter(|i| w.slots[*i].life() == Life::Up)
        .count();
    if up - 1 <= w.s.nodes / 2 {
        return w.trace(format!("stack probe skipped: {up} members up"));
    }
    let before: BTreeMap<usize, BTreeMap<String, String>> = running(w)
        .keys()
        .filter(|i| **i != leader)
        .map(|i| (*i, w.docker(*i).running_ids()))
        .collect();
    let gone: Vec<String> = announced(w)
        .into_iter()
        .filter(|(_, (i, _))| *i == leader)
        .map(|(k, _)| k)
        .collect();
    w.trace(format!("stack probe: killing leader n{leader}"));
    w.count("stack-probe");
    w.crash(leader, 1000);
    w.machine_down(leader);
    let killed = elapsed();
    presences_go(w, &gone, leader, killed).await;
    let Some(ttl) = machine_key_goes(w, leader, killed).await else {
        return;
    };
    sched_liveness(w, LIVENESS_BOUND + ttl).await;
    converged(w).await;
    not_restarted(w, before);
}

/// The dead leader's instances' presence keys go within their TTL.
async fn presences_go(w: &Arc<World>, gone: &[String], leader: usize, killed: Duration) {
    // Expiry runs on the leader's wall clock: clocks that disagree stretch a TTL.
    let bound = Duration::from_secs(PRESENCE_TTL_S)
        + EXPIRY_SLACK
        + Duration::from_millis(2 * w.max_skew_ms());
    loop {
        let left: Vec<&String> = match app_keys(w) {
            Some(keys) => gone.iter().filter(|k| keys.contains_key(*k)).collect(),
            None => gone.iter().collect(),
        };
        if left.is_empty() {
            w.trace(format!(
                "stack probe: the dead machine's keys went in {:?}",
                elapsed() - killed
            ));
            break;
        }
        if elapsed() - killed > bound {
            w.violation(format!(
                "presence keys {left:?} outlived their machine n{leader} by more than {bound:?} (TTL {PRESENCE_TTL_S} s)"
            ));
            break;
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The dead machine's units move once its key expires: waits for that (the agent TTL;
/// `None` after a violation), so the passes of the new leader that place them are the
/// ones judged.
async fn machine_key_goes(w: &Arc<World>, leader: usize, killed: Duration) -> Option<Duration> {
    let ttl = Duration::from_secs(w.s.sched.as_ref().map_or(0, |l| l.agent_ttl_s));
    let dead = format!("m{leader}");
    let expiry_bound = ttl + EXPIRY_SLACK + Duration::from_millis(2 * w.max_skew_ms());
    while machine_keys(w).is_some_and(|(_, ids)| ids.contains(&dead)) {
        if elapsed() - killed > expiry_bound {
            w.violation(format!(
                "stack probe: the dead machine {dead}'s key outlived it by more than {expiry_bound:?}"
            ));
            return None;
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    Some(ttl)
}

/// No container on a machine that stayed up was restarted by the change of leader.
fn not_restarted(w: &Arc<World>, before: BTreeMap<usize, BTreeMap<String, String>>) {
    for (i, ids) in before {
        let now = w.docker(i).running_ids();
        for (u, id) in ids {
            if now.get(&u) != Some(&id) {
                w.violation(format!(
                    "the leader change restarted {u} on m{i} (container {id}, now {:?}); its agent says: {}",
                    now.get(&u),
                    agent_says(w, i, &u)
                ));
            }
        }
    }
}
