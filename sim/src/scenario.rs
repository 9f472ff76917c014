//! A run is a pure function of its scenario: the seed, the cluster shape, the workload
//! and an explicit fault schedule. Scenarios are generated from a seed ("swarm" testing:
//! each seed enables a random subset of fault kinds at random rates), written into
//! failure-seed files, replayed, and shrunk by deleting schedule events.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Kill the node; keep `keep_permille`/1000 of its unsynced writes; restart after `down_ms`.
    Crash {
        node: usize,
        keep_permille: u32,
        down_ms: u64,
    },
    /// Freeze the node's tasks for `ms`.
    Pause { node: usize, ms: u64 },
    /// Cut `side` off from the other nodes (both ways) for `ms`.
    Partition { side: Vec<usize>, ms: u64 },
    /// Drop messages from `from` to `to` only, for `ms`.
    OneWay { from: usize, to: usize, ms: u64 },
    /// Cut and restore the link between `a` and `b` `times` times, `period_ms` apart.
    Flap {
        a: usize,
        b: usize,
        period_ms: u64,
        times: u32,
    },
    /// Move the node's wall clock by `delta_ms`.
    ClockJump { node: usize, delta_ms: i64 },
    /// The node's next sync fails (fatal: it restarts from what is durable).
    SyncFail { node: usize },
    /// Crash the node and flip a bit in one of its durable records: it must refuse to start.
    Corrupt { node: usize, pick: u64 },
    /// Cut a client off from a node for `ms`.
    ClientCut { client: usize, node: usize, ms: u64 },
    /// A running container on the node's engine dies (or is OOM-killed).
    ContainerDeath { node: usize, pick: u64, oom: bool },
    /// The node's container engine restarts: every container exits; back after `ms`.
    EngineRestart { node: usize, ms: u64 },
    /// Whichever node leads when this fires crashes (as [`Fault::Crash`]).
    LeaderKill { keep_permille: u32, down_ms: u64 },
    /// A slow machine: every message to or from the node takes `extra_ms` longer, for `ms`.
    Slow { node: usize, extra_ms: u64, ms: u64 },
    /// Whichever live machine runs the most containers when this fires is cut off from
    /// every other node (as [`Fault::Partition`] of it alone) for `ms`; with
    /// `outbound_only`, only what it sends is lost (it still hears the others).
    IsolateBusiest {
        ms: u64,
        #[serde(default)]
        outbound_only: bool,
    },
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Crash { .. } => "crash",
            Fault::Pause { .. } => "pause",
            Fault::Partition { .. } => "partition",
            Fault::OneWay { .. } => "one_way",
            Fault::Flap { .. } => "flap",
            Fault::ClockJump { .. } => "clock_jump",
            Fault::SyncFail { .. } => "sync_fail",
            Fault::Corrupt { .. } => "corrupt",
            Fault::ClientCut { .. } => "client_cut",
            Fault::ContainerDeath { .. } => "container_death",
            Fault::EngineRestart { .. } => "engine_restart",
            Fault::LeaderKill { .. } => "leader_kill",
            Fault::Slow { .. } => "slow",
            Fault::IsolateBusiest { .. } => "isolate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub fault: Fault,
}

/// Message-level faults for the whole fault phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Net {
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    pub loss_permille: u32,
    pub dup_permille: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    pub seed: u64,
    pub nodes: usize,
    pub clients: usize,
    pub keys: usize,
    /// Operations per client at most.
    pub ops_per_client: usize,
    pub fault_phase_ms: u64,
    pub heal_ms: u64,
    pub sync_latency_ms: u64,
    pub net: Net,
    pub schedule: Vec<Event>,
    /// Planted bug (test-only): never sync the Raft log.
    #[serde(default)]
    pub bug_skip_sync: bool,
    /// Throughput mode (`chaos bench`): clients only set unique keys, back to back.
    #[serde(default)]
    pub bench: bool,
    /// Scheduling workload (`chaos run --scenario sched`): members are machines too, and
    /// these unit operations run against the cluster while the faults do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sched: Option<SchedLoad>,
    /// Planted bug (test-only): the scheduler ignores `Conflicts`.
    #[serde(default)]
    pub bug_ignore_conflicts: bool,
    /// Planted bug (test-only): agents do not stop their units when their lease is lost.
    #[serde(default)]
    pub bug_no_fencing: bool,
    /// Planted bug (test-only): agents stop their units only at one and a half TTLs
    /// without a renewal, after their machine's key expired.
    #[serde(default)]
    pub bug_fence_late: bool,
    /// Planted bug (test-only): writes are answered as done once proposed, before they
    /// are committed.
    #[serde(default)]
    pub bug_ack_on_propose: bool,
    /// Planted bug (test-only): a replica drops the TTL of a write another member
    /// proposed, so replicas disagree at the same index.
    #[serde(default)]
    pub bug_drop_foreign_ttls: bool,
    /// Planted bug (test-only): a new leader's engine re-places units as if none were
    /// placed, moving correctly placed ones.
    #[serde(default)]
    pub bug_reshuffle_on_takeover: bool,
    /// Renderer workload (`chaos run --scenario render`): every node runs confd over the
    /// KV clients' keys, and its destinations are checked.
    #[serde(default)]
    pub render: bool,
    /// The whole stack (`chaos run --scenario stack`): the scheduling workload's sidekicks
    /// are presence containers keeping `/services/app/<instance>` TTL keys, and every
    /// node's renderer turns them into an upstream file.
    #[serde(default)]
    pub stack: bool,
    /// Planted bug (test-only): the renderer renames its stage file into place unsynced.
    #[serde(default)]
    pub bug_render_skip_sync: bool,
    /// Planted bug (test-only): presence containers write their keys without a TTL.
    #[serde(default)]
    pub bug_presence_no_ttl: bool,
    /// Machines that are not members (`flotilla agent`), reaching the cluster over HTTP.
    #[serde(default)]
    pub agents: usize,
    /// Machines on the cluster network (`chaos run --scenario net`): each runs the
    /// network manager; one dies for good, one dies and returns after its lease expired.
    #[serde(default)]
    pub net_machines: usize,
    /// Planted bug (test-only): a new lease is written without `prevExist=false`.
    #[serde(default)]
    pub bug_lease_no_prev_exist: bool,
    /// Planted bug (test-only): a peer's expired lease leaves its routes in place.
    #[serde(default)]
    pub bug_routes_kept_on_expiry: bool,
    /// Planted bug (test-only): a renewal gives up the lease for a new subnet.
    #[serde(default)]
    pub bug_renew_moves_subnet: bool,
}

/// Timed operations on units (each through a member's in-process client, as the fleet API
/// does), and the machines' TTL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedLoad {
    pub agent_ttl_s: u64,
    pub ops: Vec<UnitOp>,
    /// Failure rates of every machine's container engine, per thousand operations.
    #[serde(default)]
    pub pull_fail_permille: u32,
    #[serde(default)]
    pub start_fail_permille: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitOp {
    pub at_ms: u64,
    pub node: usize,
    pub unit: String,
    pub action: UnitAction,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UnitAction {
    /// Create (or replace) the unit with these `[X-Fleet]` lines, in this desired state.
    Submit {
        xfleet: Vec<String>,
        desired: String,
    },
    SetState {
        desired: String,
    },
    Destroy,
}

/// The fixed `[X-Fleet]` section of each unit name the workload uses: a name always
/// means the same constraints, so a checker can judge any replica's schedule.
pub fn xfleet_of(unit: &str) -> Vec<String> {
    if unit.starts_with("app@") {
        vec!["Conflicts=app@*.service".into()]
    } else if let Some(i) = unit
        .strip_prefix("side@")
        .and_then(|r| r.strip_suffix(".service"))
    {
        vec![format!("MachineOf=app@{i}.service")]
    } else if unit == "log.service" {
        vec!["Global=true".into()]
    } else if unit == "zone-a.service" {
        vec!["MachineMetadata=zone=a".into()]
    } else if unit == "solo.service" {
        vec!["Conflicts=p*.service".into()]
    } else {
        vec![]
    }
}

/// The units of a scheduling workload: an app and its sidekick per machine and one
/// more, a global unit, and units with metadata, single-machine and peer constraints.
fn unit_names(nodes: usize) -> Vec<String> {
    let mut names: Vec<String> = vec![];
    for i in 1..=nodes + 1 {
        names.push(format!("app@{i}.service"));
        names.push(format!("side@{i}.service"));
    }
    names.extend(
        [
            "log.service",
            "zone-a.service",
            "solo.service",
            "p1.service",
            "p2.service",
            "p3.service",
        ]
        .map(String::from),
    );
    names
}

impl SchedLoad {
    /// Units submitted early, then desired-state changes, destroys and re-submits, and
    /// scaling of the app instances, all through the fault phase.
    pub fn generate(rng: &mut impl Rng, nodes: usize, fault_phase_ms: u64) -> Self {
        let names = unit_names(nodes);
        let mut ops = vec![];
        let desired = |rng: &mut dyn rand::RngCore| -> String {
            match rng.next_u32() % 5 {
                0 => "inactive",
                1 => "loaded",
                _ => "launched",
            }
            .into()
        };
        for (k, unit) in names.iter().enumerate() {
            ops.push(UnitOp {
                at_ms: 300 + 50 * k as u64,
                node: rng.gen_range(0..nodes),
                unit: unit.clone(),
                action: UnitAction::Submit {
                    xfleet: xfleet_of(unit),
                    desired: "launched".into(),
                },
            });
        }
        for _ in 0..rng.gen_range(10..40) {
            let unit = names[rng.gen_range(0..names.len())].clone();
            let action = match rng.gen_range(0..10) {
                0..=5 => UnitAction::SetState {
                    desired: desired(rng),
                },
                6..=7 => UnitAction::Destroy,
                _ => UnitAction::Submit {
                    xfleet: xfleet_of(&unit),
                    desired: desired(rng),
                },
            };
            ops.push(UnitOp {
                at_ms: rng.gen_range(2_000..fault_phase_ms),
                node: rng.gen_range(0..nodes),
                unit,
                action,
            });
        }
        ops.sort_by_key(|o| o.at_ms);
        let rate = |rng: &mut dyn rand::RngCore| {
            if rng.next_u32().is_multiple_of(2) {
                rng.next_u32() % 200
            } else {
                0
            }
        };
        Self {
            agent_ttl_s: 2,
            ops,
            pull_fail_permille: rate(rng),
            start_fail_permille: rate(rng),
        }
    }

    /// Container faults through the fault phase: deaths, OOM kills, engine restarts.
    pub fn engine_faults(rng: &mut impl Rng, nodes: usize, fault_phase_ms: u64) -> Vec<Event> {
        let mut out = vec![];
        for _ in 0..rng.gen_range(0..6) {
            out.push(Event {
                at_ms: rng.gen_range(2_000..fault_phase_ms - 2_000),
                fault: Fault::ContainerDeath {
                    node: rng.gen_range(0..nodes),
                    pick: rng.gen(),
                    oom: rng.gen_bool(0.3),
                },
            });
        }
        for _ in 0..rng.gen_range(0..3) {
            out.push(Event {
                at_ms: rng.gen_range(2_000..fault_phase_ms - 2_000),
                fault: Fault::EngineRestart {
                    node: rng.gen_range(0..nodes),
                    ms: rng.gen_range(100..3_000),
                },
            });
        }
        out
    }
}

/// The image that keeps a presence key while it runs (as `scripts/build-test-images`'
/// does on real Docker); the simulated engine runs it as such.
pub const PRESENCE_IMAGE: &str = "jpweb/nginx-presence";

/// How long a presence key lives without a refresh, in the stack scenario.
pub const PRESENCE_TTL_S: u64 = 3;

/// A sidekick of the stack scenario: bound to its app, beside it, a presence container
/// announcing `/services/app/<i>` = `<machine>:80` with a TTL (the seed's
/// `nginx-presence@.service`, with the key and value it should have been given).
fn presence_sidekick(i: &str) -> Vec<(String, String, String)> {
    let c = format!("side-{i}");
    let image = PRESENCE_IMAGE;
    [
        ("Unit", "BindsTo", format!("app@{i}.service")),
        ("Unit", "After", format!("app@{i}.service")),
        (
            "Service",
            "ExecStartPre",
            format!("-/usr/bin/docker rm -f {c}"),
        ),
        (
            "Service",
            "ExecStartPre",
            format!("/usr/bin/docker pull {image}"),
        ),
        (
            "Service",
            "ExecStart",
            format!(
                "/usr/bin/docker run --name {c} -e PRESENCE_KEY=/services/app/{i} \
                 -e PRESENCE_VALUE=%m:80 -e PRESENCE_TTL={PRESENCE_TTL_S} {image}"
            ),
        ),
        ("Service", "ExecStop", format!("/usr/bin/docker stop {c}")),
        (
            "Service",
            "ExecStopPost",
            format!("-/usr/bin/etcdctl rm /services/app/{i}"),
        ),
        ("Service", "Restart", "always".into()),
        ("Service", "RestartSec", "1".into()),
    ]
    .into_iter()
    .map(|(s, k, v)| (s.to_string(), k.to_string(), v))
    .collect()
}

/// A unit's file in the workload: a container (pulled first), restarted when it ends,
/// and its `[X-Fleet]` lines. In the stack scenario the sidekicks announce their apps.
pub fn unit_options(unit: &str, stack: bool) -> Vec<(String, String, String)> {
    let stem = unit.trim_end_matches(".service");
    let container = stem.replace('@', "-");
    let sidekick = stem.strip_prefix("side@").filter(|_| stack);
    let mut o: Vec<(String, String, String)> = if let Some(i) = sidekick {
        presence_sidekick(i)
    } else {
        [
            (
                "ExecStartPre",
                format!("-/usr/bin/docker rm -f {container}"),
            ),
            (
                "ExecStartPre",
                "/usr/bin/docker pull flotilla/busybox".to_string(),
            ),
            (
                "ExecStart",
                format!("/usr/bin/docker run --name {container} flotilla/busybox"),
            ),
            ("ExecStop", format!("/usr/bin/docker stop {container}")),
            ("Restart", "always".to_string()),
            ("RestartSec", "2".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| ("Service".to_string(), k.to_string(), v))
        .collect()
    };
    for l in xfleet_of(unit) {
        if let Some((k, v)) = l.split_once('=') {
            o.push(("X-Fleet".into(), k.into(), v.into()));
        }
    }
    o
}

/// The stack's own faults on top of the others: leader kills and slow machines (each kind
/// on or off per seed, as the swarm draws the rest).
fn stack_faults(rng: &mut impl Rng, nodes: usize, fault_phase_ms: u64) -> Vec<Event> {
    let mut out = vec![];
    let at = |rng: &mut dyn rand::RngCore| 1_000 + rng.next_u64() % (fault_phase_ms - 3_000);
    if rng.gen_bool(0.6) {
        for _ in 0..rng.gen_range(1..=3) {
            let fault = Fault::LeaderKill {
                keep_permille: rng.gen_range(0..=1000),
                down_ms: rng.gen_range(100..4_000),
            };
            out.push(Event {
                at_ms: at(rng),
                fault,
            });
        }
    }
    // A machine cut off, once its units run, for longer than the stack's lease (12 s):
    // its key expires before the heal (at 20 s), its units are placed elsewhere, and its
    // agent must have stopped them first.
    if rng.gen_bool(0.7) {
        // One cut in four is one-way: the machine hears the cluster but cannot answer,
        // so its renewals fail while it still sees a leader.
        let fault = Fault::IsolateBusiest {
            ms: rng.gen_range(13_500..15_000),
            outbound_only: rng.gen_bool(0.25),
        };
        out.push(Event {
            at_ms: rng.gen_range(4_000..5_500),
            fault,
        });
    }
    if rng.gen_bool(0.6) {
        for _ in 0..rng.gen_range(1..=3) {
            let fault = Fault::Slow {
                node: rng.gen_range(0..nodes),
                extra_ms: rng.gen_range(20..300),
                ms: rng.gen_range(500..5_000),
            };
            out.push(Event {
                at_ms: at(rng),
                fault,
            });
        }
    }
    out
}

/// Which fault kinds a campaign may draw from.
pub const ALL_FAULTS: &[&str] = &[
    "crash",
    "pause",
    "partition",
    "one_way",
    "flap",
    "clock_jump",
    "sync_fail",
    "corrupt",
    "client_cut",
];

/// Draws each enabled kind's faults (one to four each) through the fault phase.
fn draw_faults(
    rng: &mut impl Rng,
    enabled: &[&str],
    nodes: usize,
    clients: usize,
    fault_phase_ms: u64,
) -> Vec<Event> {
    let mut schedule = vec![];
    let mut corrupted = false;
    for kind in enabled {
        for _ in 0..rng.gen_range(1..=4) {
            let at_ms = rng.gen_range(500..fault_phase_ms - 2_000);
            let node = rng.gen_range(0..nodes);
            let other = (node + 1 + rng.gen_range(0..nodes - 1)) % nodes;
            if let Some(fault) =
                draw_fault(rng, kind, (node, other), (nodes, clients), &mut corrupted)
            {
                schedule.push(Event { at_ms, fault });
            }
        }
    }
    schedule
}

/// One fault of `kind` on `node` (and `other`, for the kinds between two); at most one
/// corruption per seed.
/// `nodes`, `clients`: the cluster's sizes.
fn draw_fault(
    rng: &mut impl Rng,
    kind: &str,
    (node, other): (usize, usize),
    (nodes, clients): (usize, usize),
    corrupted: &mut bool,
) -> Option<Fault> {
    let fault = match kind {
        "crash" => Fault::Crash {
            node,
            keep_permille: rng.gen_range(0..=1000),
            down_ms: rng.gen_range(100..4_000),
        },
        "pause" => Fault::Pause {
            node,
            ms: rng.gen_range(100..3_000),
        },
        "partition" => {
            let extra = usize::from(rng.gen_bool(0.2));
            let minority = rng.gen_range(1..=(nodes - 1) / 2 + extra);
            let mut side: Vec<usize> = (0..nodes).collect();
            for i in (1..side.len()).rev() {
                side.swap(i, rng.gen_range(0..=i));
            }
            side.truncate(minority.min(nodes - 1));
            side.sort_unstable();
            Fault::Partition {
                side,
                ms: rng.gen_range(200..5_000),
            }
        }
        "one_way" => Fault::OneWay {
            from: node,
            to: other,
            ms: rng.gen_range(200..5_000),
        },
        "flap" => Fault::Flap {
            a: node,
            b: other,
            period_ms: rng.gen_range(50..500),
            times: rng.gen_range(2..10),
        },
        "clock_jump" => Fault::ClockJump {
            node,
            delta_ms: rng.gen_range(-5_000..5_000),
        },
        "sync_fail" => Fault::SyncFail { node },
        "corrupt" if !*corrupted => {
            *corrupted = true;
            Fault::Corrupt {
                node,
                pick: rng.gen(),
            }
        }
        "client_cut" => Fault::ClientCut {
            client: rng.gen_range(0..clients),
            node,
            ms: rng.gen_range(200..5_000),
        },
        _ => return None,
    };
    Some(fault)
}

impl Scenario {
    /// The scenario of `seed`, drawing faults only from `allowed` kinds.
    pub fn generate(seed: u64, nodes: usize, allowed: &[&str]) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_f107_111a);
        let fault_phase_ms = 20_000;
        // Swarm: each kind on or off per seed, with its own rate.
        let enabled: Vec<&str> = allowed
            .iter()
            .copied()
            .filter(|_| rng.gen_bool(0.6))
            .collect();
        let clients = 3 + rng.gen_range(0..3);
        let mut schedule = draw_faults(&mut rng, &enabled, nodes, clients, fault_phase_ms);
        schedule.sort_by_key(|e| e.at_ms);
        let lossy = enabled.contains(&"partition") || rng.gen_bool(0.5);
        Self {
            seed,
            nodes,
            clients,
            keys: 2 + rng.gen_range(0..3),
            ops_per_client: 400,
            fault_phase_ms,
            heal_ms: 5_000,
            sync_latency_ms: rng.gen_range(0..5),
            net: Net {
                latency_min_ms: 1,
                latency_max_ms: 1 + rng.gen_range(0..20),
                loss_permille: if lossy { rng.gen_range(0..50) } else { 0 },
                dup_permille: if rng.gen_bool(0.5) {
                    rng.gen_range(0..50)
                } else {
                    0
                },
            },
            schedule,
            bug_skip_sync: false,
            bench: false,
            sched: None,
            bug_ignore_conflicts: false,
            bug_no_fencing: false,
            bug_fence_late: false,
            bug_ack_on_propose: false,
            bug_drop_foreign_ttls: false,
            bug_reshuffle_on_takeover: false,
            render: false,
            stack: false,
            bug_render_skip_sync: false,
            bug_presence_no_ttl: false,
            agents: 0,
            net_machines: 0,
            bug_lease_no_prev_exist: false,
            bug_routes_kept_on_expiry: false,
            bug_renew_moves_subnet: false,
        }
    }

    /// [`Scenario::generate`] with machines on the cluster network beside the KV workload.
    pub fn generate_net(seed: u64, nodes: usize, allowed: &[&str]) -> Self {
        let mut s = Self::generate(seed, nodes, allowed);
        s.net_machines = 6;
        s
    }

    /// [`Scenario::generate`] with the scheduling workload on top (its own random stream,
    /// so the faults of a seed are the same in both scenarios).
    pub fn generate_sched(seed: u64, nodes: usize, allowed: &[&str]) -> Self {
        let mut s = Self::generate(seed, nodes, allowed);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5c4e_d01e);
        s.sched = Some(SchedLoad::generate(&mut rng, nodes, s.fault_phase_ms));
        s.schedule
            .extend(SchedLoad::engine_faults(&mut rng, nodes, s.fault_phase_ms));
        s.schedule.sort_by_key(|e| e.at_ms);
        s
    }

    /// The whole stack: [`Scenario::generate_sched`]'s units and faults, a renderer on
    /// every node, sidekicks that announce their apps; every operation on an app instance
    /// is applied to its sidekick too, as `fleetctl start app@1 side@1` would.
    pub fn generate_stack(seed: u64, nodes: usize, allowed: &[&str]) -> Self {
        // A member that refuses its corrupt disk stays down for good: a three-member stack
        // would have no majority left for the leader-kill probe. Corruption is the KV
        // scenarios' business.
        let allowed: Vec<&str> = allowed
            .iter()
            .copied()
            .filter(|k| *k != "corrupt")
            .collect();
        let mut s = Self::generate_sched(seed, nodes, &allowed);
        s.render = true;
        s.stack = true;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x57ac_c0de);
        s.schedule
            .extend(stack_faults(&mut rng, nodes, s.fault_phase_ms));
        // Some machines are not members: they run units through the HTTP client path.
        s.agents = rng.gen_range(0..=2);
        s.schedule.sort_by_key(|e| e.at_ms);
        if let Some(load) = s.sched.as_mut() {
            // An agent renews every third of the TTL and fences at two thirds, so a
            // change of leader (an election: 1-3 s) must fit in a third of it: no machine
            // may lose its lease to one.
            load.agent_ttl_s = 12;
            let paired: Vec<UnitOp> = load
                .ops
                .iter()
                .filter(|o| o.at_ms >= 2_000)
                .filter_map(|o| {
                    let i = o.unit.strip_prefix("app@")?;
                    let unit = format!("side@{i}");
                    let action = match &o.action {
                        UnitAction::Submit { desired, .. } => UnitAction::Submit {
                            xfleet: xfleet_of(&unit),
                            desired: desired.clone(),
                        },
                        a => a.clone(),
                    };
                    Some(UnitOp {
                        at_ms: o.at_ms + 1,
                        node: o.node,
                        unit,
                        action,
                    })
                })
                .collect();
            load.ops.extend(paired);
            load.ops.sort_by_key(|o| o.at_ms);
        }
        s
    }

    /// The fixed throughput scenario: no faults, `clients` writers, a disk whose sync
    /// takes `sync_ms`, a network with `rtt_ms` round trips.
    pub fn bench(nodes: usize, clients: usize, sync_ms: u64, rtt_ms: u64, seconds: u64) -> Self {
        let one_way = (rtt_ms / 2).max(1);
        Self {
            seed: 0,
            nodes,
            clients,
            keys: 1,
            ops_per_client: usize::MAX,
            fault_phase_ms: seconds * 1000,
            heal_ms: 0,
            sync_latency_ms: sync_ms,
            net: Net {
                latency_min_ms: one_way,
                latency_max_ms: one_way,
                loss_permille: 0,
                dup_permille: 0,
            },
            schedule: vec![],
            bug_skip_sync: false,
            bench: true,
            sched: None,
            bug_ignore_conflicts: false,
            bug_no_fencing: false,
            bug_fence_late: false,
            bug_ack_on_propose: false,
            bug_drop_foreign_ttls: false,
            bug_reshuffle_on_takeover: false,
            render: false,
            stack: false,
            bug_render_skip_sync: false,
            bug_presence_no_ttl: false,
            agents: 0,
            net_machines: 0,
            bug_lease_no_prev_exist: false,
            bug_routes_kept_on_expiry: false,
            bug_renew_moves_subnet: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_a_function_of_the_seed() {
        assert_eq!(
            Scenario::generate(7, 5, ALL_FAULTS),
            Scenario::generate(7, 5, ALL_FAULTS)
        );
        assert_ne!(
            Scenario::generate(7, 5, ALL_FAULTS),
            Scenario::generate(8, 5, ALL_FAULTS)
        );
        let s = Scenario::generate(7, 3, &["crash"]);
        assert!(s.schedule.iter().all(|e| e.fault.kind() == "crash"));
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Scenario>(&json).unwrap(), s);
    }

    #[test]
    fn at_most_one_node_is_corrupted() {
        for seed in 0..200 {
            let s = Scenario::generate(seed, 3, ALL_FAULTS);
            assert!(
                s.schedule
                    .iter()
                    .filter(|e| e.fault.kind() == "corrupt")
                    .count()
                    <= 1
            );
        }
    }
}
