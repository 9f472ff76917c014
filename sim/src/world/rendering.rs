//! The renderer's checks after the heal: every live node's destination converges to
//! the template over the final keys.

use super::*;

/// After the heal: values the check refuses are replaced (through a client, so the
/// history has them), then within [`LIVENESS_BOUND`] every live node's destination must
/// be the template over the final KV state.
pub(super) async fn render_convergence(w: &Arc<World>) {
    let fixer = CLIENT_BASE + 997;
    for (key, value) in store_keys(w) {
        if crate::render::refused(&format!("{key}={value}")).is_some() {
            for attempt in 0..w.s.nodes * 3 {
                let op = Op::Set {
                    value: "clean".into(),
                    ttl: false,
                };
                if let Outcome::Ok(_) = observe(w, fixer, attempt % w.s.nodes, &key, op).await {
                    break;
                }
            }
        }
    }
    let deadline = elapsed() + LIVENESS_BOUND;
    loop {
        let want = crate::render::expected(&store_keys(w));
        let wrong: Vec<String> = (0..w.s.nodes)
            .filter(|i| w.slots[*i].life() == Life::Up)
            .filter_map(|i| {
                let got = w.slots[i].render.as_ref()?.dest();
                (got.as_deref() != Some(want.as_str())).then(|| format!("n{i} has {got:?}"))
            })
            .collect();
        if wrong.is_empty() {
            w.trace(format!("rendered {} bytes everywhere", want.len()));
            break;
        }
        if elapsed() > deadline {
            w.violation(format!(
                "render convergence: destinations differ from the final state {want:?}: {}",
                wrong.join("; ")
            ));
            break;
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What each renderer did wrong along the way, and how much it did.
pub(super) fn drain_render_logs(w: &World) {
    for (i, slot) in w.slots.iter().enumerate() {
        let Some(files) = &slot.render else { continue };
        let log = std::mem::take(&mut *files.log.lock().expect("render log"));
        for _ in 0..log.reloads {
            w.count("render-reload");
        }
        for _ in 0..log.checks_refused {
            w.count("render-check-refused");
        }
        for v in log.violations {
            w.violation(format!("renderer n{i}: {v}"));
        }
    }
}

/// The KV clients' keys and values, from a node that is up (the replicas converged).
pub(super) fn store_keys(w: &World) -> BTreeMap<String, String> {
    let Some((h, slot)) = w.slots.iter().find_map(|s| s.handle().map(|h| (h, s))) else {
        return BTreeMap::new();
    };
    let kv = InProc::new(h, Arc::new(slot.clock.clone()));
    let root = kv.read(|s| s.get("/", true));
    let mut out = BTreeMap::new();
    for n in root.ok().and_then(|e| e.node.nodes).unwrap_or_default() {
        if let (Some(v), false) = (n.value, n.dir) {
            out.insert(n.key, v);
        }
    }
    out
}
