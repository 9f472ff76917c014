//! Booting the world's nodes: each member's configuration, starting (and restarting)
//! a node from its disk, crashes, and the links between nodes.

use super::*;

pub(super) fn node_config(s: &Scenario, i: usize) -> NodeConfig {
    let initial_cluster = (0..s.nodes)
        .map(|j| (format!("n{j}"), format!("http://10.0.0.{}:2380", j + 1)))
        .collect();
    NodeConfig {
        name: format!("n{i}"),
        peer_urls: vec![format!("http://10.0.0.{}:2380", i + 1)],
        client_urls: vec![format!("http://10.0.0.{}:2379", i + 1)],
        initial_cluster,
        cluster_state: ClusterState::New,
        raft: RaftConfig {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 1,
            // Chaos runs snapshot often to exercise it; the benchmark uses production values.
            snapshot_entries: if s.bench { 10_000 } else { 100 },
            catchup_entries: if s.bench { 5_000 } else { 20 },
            bug_skip_sync: s.bug_skip_sync,
            bug_drop_foreign_ttls: s.bug_drop_foreign_ttls,
            bug_ack_on_propose: s.bug_ack_on_propose,
            ..RaftConfig::default()
        },
        request_timeout_ms: 1_200,
        value_bytes_max: 1 << 20,
        inbox_inputs_max: 4096,
        cors: Default::default(),
        ui: Default::default(),
        engine: EngineConfig {
            reconcile_ms: 500,
            bugs: Bugs {
                ignore_conflicts: s.bug_ignore_conflicts,
                forget_schedule_on_takeover: s.bug_reshuffle_on_takeover,
            },
            ..Default::default()
        },
        agent: s.sched.as_ref().map(|l| AgentConfig {
            reconcile_ms: 1_000,
            bugs: AgentBugs {
                no_fencing: s.bug_no_fencing,
                fence_late: s.bug_fence_late,
            },
            ..AgentConfig::new(MachineConfig {
                id: format!("m{i}"),
                public_ip: format!("10.0.0.{}", i + 1),
                metadata: [(
                    "zone".to_string(),
                    if i.is_multiple_of(2) { "a" } else { "b" }.to_string(),
                )]
                .into(),
                ttl_s: l.agent_ttl_s,
                agent_url: String::new(),
            })
        }),
        render: s.render.then(|| {
            let mut rc = flotilla::render::runner::RenderConfig::new(crate::render::CONFDIR);
            rc.debounce_ms = 50;
            rc.retry_ms = 200;
            rc.write.cmd_timeout_ms = 5_000;
            rc.write.bug_skip_sync = s.bug_render_skip_sync;
            rc.out = Arc::new(|_| {});
            rc
        }),
    }
}

pub(super) async fn boot(w: Arc<World>, i: usize) {
    let slot = w.slots[i].clone();
    slot.set_life(Life::Booting);
    let clock = Arc::new(slot.clock.clone());
    let env = Env {
        clock: clock.clone(),
        spawn: Arc::new(SimSpawn),
        seed: madsim::rand::thread_rng().gen(),
        agent: w.s.sched.as_ref().map(|_| RunSeams {
            containers: Arc::new(slot.docker.clone()),
            procs: Arc::new(slot.procs.clone()),
            files: Arc::new(slot.files.clone()),
            network: flotilla::net::docker::UnitNetwork::off(),
        }),
        render: slot
            .render
            .as_ref()
            .map(|f| flotilla::render::commit::WriteSeams {
                files: Arc::new(f.clone()),
                procs: Arc::new(RenderProcs::new(f.clone())),
                clock: clock.clone(),
                host: Arc::new(flotilla_shims::host::FixedHost::default()),
            }),
    };
    let latency = Duration::from_millis(w.s.sync_latency_ms);
    let disk = slot.disk.open(Some((clock as Arc<dyn Clock>, latency)));
    let (tx, rx) = mpsc::channel(8192);
    w.fabric.register(i as u64, tx);
    let net = Arc::new(SimNet {
        endpoint: i as u64,
        fabric: w.fabric.clone(),
        peers: Mutex::new(Default::default()),
    });
    let cfg = node_config(&w.s, i);
    match flotilla::node::start(&cfg, &env, Box::new(disk), net, rx).await {
        Err(e) => slot.set_life(Life::Refused(e.to_string())),
        Ok(started) => {
            *slot.handle.lock().expect("slot lock") = Some(started.handle.clone());
            *slot.agent.lock().expect("slot lock") = started.agent.clone();
            *slot.api.lock().expect("slot lock") = Some(started.handler.clone());
            slot.set_life(Life::Up);
            let r = match started.renderer {
                None => started.driver.run().await.map_err(|e| e.to_string()),
                Some(renderer) => tokio::select! {
                    r = started.driver.run() => r.map_err(|e| e.to_string()),
                    e = renderer.run_watch() => Err(format!("renderer: {e}")),
                },
            };
            *slot.handle.lock().expect("slot lock") = None;
            match r {
                Ok(()) => slot.set_life(Life::Down),
                Err(e) => slot.set_life(Life::Fatal(e.to_string())),
            }
        }
    }
}

impl World {
    pub(super) fn node_id(&self, i: usize) -> madsim::task::NodeId {
        self.nodes.lock().expect("nodes lock")[i].id()
    }

    /// The largest clock jump in force on any node.
    pub(super) fn max_skew_ms(&self) -> u64 {
        self.slots
            .iter()
            .map(|s| s.clock.skew_ms.load(Ordering::Relaxed).unsigned_abs())
            .max()
            .unwrap_or(0)
    }

    pub(super) fn now_ns(&self) -> u64 {
        elapsed().as_nanos() as u64
    }

    pub(super) fn trace(&self, line: String) {
        let t = self.now_ns();
        self.trace
            .lock()
            .expect("trace lock")
            .record(&format!("{t} {line}"));
    }

    pub(super) fn violation(&self, v: String) {
        self.trace(format!("violation {v}"));
        self.violations.lock().expect("violations lock").push(v);
    }

    pub(super) fn count(&self, kind: &str) {
        *self
            .faults
            .lock()
            .expect("faults lock")
            .entry(kind.to_string())
            .or_default() += 1;
    }

    /// Kills node `i`, keeping `keep_permille` of its unsynced writes. Returns the crash number.
    pub(super) fn crash(&self, i: usize, keep_permille: u32) -> u64 {
        let slot = &self.slots[i];
        self.rt.kill(self.node_id(i));
        *slot.handle.lock().expect("slot lock") = None;
        *slot.api.lock().expect("slot lock") = None;
        self.fabric.unregister(i as u64);
        let pending = slot.disk.pending_len();
        let keep = pending * keep_permille as usize / 1000;
        slot.disk.crash(keep);
        slot.set_life(Life::Down);
        self.trace(format!("crash n{i} kept {keep}/{pending}"));
        let mut c = slot.crashes.lock().expect("slot lock");
        *c += 1;
        *c
    }

    /// The whole machine goes down with its node: its containers and processes, and its
    /// files lose what was never synced.
    pub(super) fn machine_down(&self, i: usize) {
        let slot = &self.slots[i];
        slot.docker.set_daemon(false);
        slot.procs.kill_all();
        match &slot.render {
            Some(watched) => watched.power_loss(),
            None => {
                slot.files.power_loss();
            }
        }
    }

    pub(super) fn restart(&self, i: usize) {
        if matches!(self.slots[i].life(), Life::Refused(_)) {
            return;
        }
        self.trace(format!("restart n{i}"));
        self.rt.restart(self.node_id(i));
    }

    /// Cuts (or restores) both ways between machines `a` and `b`.
    pub(super) fn cut_both(&self, a: usize, b: usize, on: bool) {
        let (a, b) = (self.endpoint(a), self.endpoint(b));
        if on {
            self.fabric.cut(a, b);
            self.fabric.cut(b, a);
        } else {
            self.fabric.restore(a, b);
            self.fabric.restore(b, a);
        }
    }
}
