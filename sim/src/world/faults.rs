//! Faults: injecting each kind the schedule names, disk corruption, restarting nodes
//! whose driver stopped, and the heal that ends them all.

use super::*;

pub(super) async fn inject(w: Arc<World>, ev: Event) {
    let f = ev.fault;
    w.count(f.kind());
    w.trace(format!("fault {f:?}"));
    match f {
        Fault::IsolateBusiest { ms, outbound_only } => {
            let busiest = running(&w)
                .into_iter()
                .max_by_key(|(i, units)| (units.len(), std::cmp::Reverse(*i)));
            if let Some((node, _)) = busiest {
                w.trace(format!("isolate: m{node} outbound_only={outbound_only}"));
                if outbound_only {
                    return cut_outbound(&w, node, ms).await;
                }
                let cut = Fault::Partition {
                    side: vec![node],
                    ms,
                };
                Box::pin(inject(
                    w,
                    Event {
                        at_ms: 0,
                        fault: cut,
                    },
                ))
                .await;
            }
        }
        Fault::LeaderKill {
            keep_permille,
            down_ms,
        } => {
            let leader = (0..w.s.nodes).find(|i| {
                w.slots[*i]
                    .handle()
                    .is_some_and(|h| h.shared.status().is_leader)
            });
            if let Some(node) = leader {
                w.trace(format!("leader kill: n{node}"));
                let crash = Fault::Crash {
                    node,
                    keep_permille,
                    down_ms,
                };
                Box::pin(inject(
                    w,
                    Event {
                        at_ms: 0,
                        fault: crash,
                    },
                ))
                .await;
            }
        }
        Fault::Slow { node, extra_ms, ms } => {
            w.fabric.set_slow(node as u64, extra_ms);
            madsim::time::sleep(Duration::from_millis(ms)).await;
            if !w.healed.load(Ordering::Relaxed) {
                w.fabric.set_slow(node as u64, 0);
            }
        }
        Fault::Crash {
            node,
            keep_permille,
            down_ms,
        } => {
            if matches!(w.slots[node].life(), Life::Refused(_)) {
                return;
            }
            let n = w.crash(node, keep_permille);
            w.machine_down(node);
            madsim::time::sleep(Duration::from_millis(down_ms)).await;
            if *w.slots[node].crashes.lock().expect("slot lock") == n {
                w.slots[node].docker.set_daemon(true);
                w.restart(node);
            }
        }
        Fault::ContainerDeath { node, pick, oom } => w.slots[node].docker.kill_some(pick, oom),
        Fault::EngineRestart { node, ms } => {
            w.slots[node].docker.set_daemon(false);
            madsim::time::sleep(Duration::from_millis(ms)).await;
            w.slots[node].docker.set_daemon(true);
        }
        Fault::Pause { node, ms } => {
            *w.slots[node].paused.lock().expect("slot lock") += 1;
            w.slots[node].unsteady();
            w.rt.pause(w.node_id(node));
            madsim::time::sleep(Duration::from_millis(ms)).await;
            let mut p = w.slots[node].paused.lock().expect("slot lock");
            *p -= 1;
            w.slots[node].unsteady();
            // Overlapping pauses: the node runs again when the last one ends.
            if *p == 0 {
                w.rt.resume(w.node_id(node));
            }
        }
        Fault::Partition { side, ms } => {
            let others: Vec<usize> = (0..w.machines()).filter(|i| !side.contains(i)).collect();
            for a in &side {
                for b in &others {
                    w.cut_both(*a, *b, true);
                }
            }
            madsim::time::sleep(Duration::from_millis(ms)).await;
            for a in &side {
                for b in &others {
                    w.cut_both(*a, *b, false);
                }
            }
        }
        Fault::OneWay { from, to, ms } => {
            w.fabric.cut(from as u64, to as u64);
            madsim::time::sleep(Duration::from_millis(ms)).await;
            w.fabric.restore(from as u64, to as u64);
        }
        Fault::Flap {
            a,
            b,
            period_ms,
            times,
        } => {
            for _ in 0..times {
                // A flap still going when the heal comes must not cut the link again.
                if w.healed.load(Ordering::Relaxed) {
                    break;
                }
                w.cut_both(a, b, true);
                madsim::time::sleep(Duration::from_millis(period_ms)).await;
                w.cut_both(a, b, false);
                madsim::time::sleep(Duration::from_millis(period_ms)).await;
            }
        }
        Fault::ClockJump { node, delta_ms } => {
            w.slots[node]
                .clock
                .skew_ms
                .fetch_add(delta_ms, Ordering::Relaxed);
        }
        Fault::SyncFail { node } => w.slots[node].disk.fail_next_sync(),
        Fault::Corrupt { node, pick } => corrupt(&w, node, pick).await,
        Fault::ClientCut { client, node, ms } => {
            let c = CLIENT_BASE + client as u64;
            w.fabric.cut(c, node as u64);
            w.fabric.cut(node as u64, c);
            madsim::time::sleep(Duration::from_millis(ms)).await;
            w.fabric.restore(c, node as u64);
            w.fabric.restore(node as u64, c);
        }
    }
}

/// Crashes a node, flips a bit in one of its durable records, restarts it, and requires
/// that it refuses to start, naming the damage.
/// Everything `node` sends to every other machine is lost for `ms`; it still hears them.
async fn cut_outbound(w: &Arc<World>, node: usize, ms: u64) {
    let me = w.endpoint(node);
    let others: Vec<u64> = (0..w.machines())
        .filter(|i| *i != node)
        .map(|i| w.endpoint(i))
        .collect();
    for o in &others {
        w.fabric.cut(me, *o);
    }
    madsim::time::sleep(Duration::from_millis(ms)).await;
    for o in &others {
        w.fabric.restore(me, *o);
    }
}

pub(super) async fn corrupt(w: &Arc<World>, node: usize, pick: u64) {
    if matches!(w.slots[node].life(), Life::Refused(_)) {
        return;
    }
    w.crash(node, 1000);
    let Some(name) = w.slots[node].disk.corrupt(pick) else {
        return;
    };
    *w.slots[node].corrupted.lock().expect("slot lock") = Some(name.clone());
    w.restart(node);
    madsim::time::sleep(Duration::from_millis(200)).await;
    match w.slots[node].life() {
        Life::Refused(msg) if msg.contains(&name) && msg.contains("checksum") => {
            w.trace(format!("n{node} refused corrupt {name}"));
        }
        other => w.violation(format!(
            "n{node}: corrupted {name} was not refused at start (state {other:?})"
        )),
    }
}

/// Restarts nodes whose driver stopped on a fatal error (a failed sync): they come back
/// from what is durable, never carrying on.
pub(super) async fn supervise(w: Arc<World>) {
    loop {
        madsim::time::sleep(Duration::from_millis(100)).await;
        for i in 0..w.s.nodes {
            if let Life::Fatal(why) = w.slots[i].life() {
                w.trace(format!("n{i} stopped: {why}"));
                let n = w.crash(i, 0);
                let w2 = w.clone();
                madsim::task::spawn(async move {
                    madsim::time::sleep(Duration::from_millis(300)).await;
                    if *w2.slots[i].crashes.lock().expect("slot lock") == n {
                        w2.restart(i);
                    }
                });
            }
        }
    }
}

/// Ends every fault: links restored, message faults off, paused nodes resumed, downed
/// nodes restarted (a node that refused a corrupt disk stays down).
pub(super) async fn heal(w: &Arc<World>) {
    w.trace("heal".into());
    w.healed.store(true, Ordering::Relaxed);
    w.fabric.heal();
    w.fabric.set_net(Net {
        latency_min_ms: 1,
        latency_max_ms: 5,
        loss_permille: 0,
        dup_permille: 0,
    });
    for i in 0..w.s.nodes {
        // The stack's presence keys are TTLs stamped by the member that took the write and
        // expired on the leader's clock (as etcd v2 does): they only mean something while
        // clocks agree within the TTL, so the heal steps every clock back into agreement.
        if w.s.stack {
            w.slots[i].clock.skew_ms.store(0, Ordering::Relaxed);
        }
        w.rt.resume(w.node_id(i));
        w.slots[i].unsteady();
        w.slots[i].docker.set_faults(DockerFaults::default());
        w.slots[i].docker.set_daemon(true);
        if matches!(w.slots[i].life(), Life::Down | Life::Fatal(_)) {
            w.restart(i);
        }
    }
}
