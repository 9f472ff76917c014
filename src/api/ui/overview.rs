//! `GET /flotilla/v1/overview`: the cluster at a glance, for the dashboard's first page.
//!
//! Each member reports its own Raft state (`?local=1`); the member answering asks the
//! others with a short timeout, so a member that does not answer is shown as down from
//! where the operator stands. Units and machines come from this member's replica.

use super::history::{History, SAMPLE_EVERY_MS};
use crate::api::fleet::{snapshot, Snapshot};
use crate::api::{Api, Reply};
use crate::sched::registry;
use bytes::Bytes;
use http::{Request, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a member may take to report its state before it is shown unreachable.
pub const MEMBER_TIMEOUT_MS: u64 = 1_000;
/// At most this many problems are listed (the rest are counted).
pub const PROBLEMS_MAX: usize = 50;

/// Takes a sample every [`SAMPLE_EVERY_MS`] for as long as the node runs. It runs on the
/// node's event loop, so it must stay cheap: it counts states, it parses no unit (the
/// full snapshot with 1,000 units held the loop long enough to double unit start-up
/// latency in `scripts/bench-scale`).
pub async fn sample_forever(api: Arc<Api>, history: Arc<Mutex<History>>) {
    loop {
        let applied = api.raft.shared.machine().applied;
        let units = sampled_states(&api);
        let now = api.clock.now_wall_ms();
        history
            .lock()
            .expect("history lock")
            .record(now, applied, units);
        api.clock
            .sleep(Duration::from_millis(SAMPLE_EVERY_MS))
            .await;
    }
}

/// Units by the active state their live machine reports, and `unreported` for the
/// rest (not placed, starting, or inactive): a count, without parsing any unit.
fn sampled_states(api: &Api) -> BTreeMap<String, u64> {
    let (units, states, machines) = {
        let m = api.raft.shared.machine();
        let dir = |k: &str| m.store.get(k, k == registry::STATES).ok().map(|e| e.node);
        (
            dir(registry::UNITS),
            dir(registry::STATES),
            dir(registry::MACHINES),
        )
    };
    let total = units
        .as_ref()
        .and_then(|u| u.nodes.as_ref())
        .map_or(0, Vec::len) as u64;
    let alive: std::collections::BTreeSet<&str> = machines
        .iter()
        .flat_map(|d| d.nodes.iter().flatten())
        .map(|n| n.key.rsplit('/').next().unwrap_or_default())
        .collect();
    let mut out = BTreeMap::new();
    let mut reported = 0;
    for (_, by_machine) in registry::states(states.as_ref()) {
        if let Some(st) = by_machine
            .values()
            .find(|s| alive.contains(s.machine_id.as_str()))
        {
            *out.entry(st.systemd_active_state.clone()).or_insert(0) += 1;
            reported += 1;
        }
    }
    if total > reported {
        out.insert("unreported".into(), total - reported);
    }
    out
}

/// What each unit is doing, by the state its machine reports.
pub fn units_by_state(snap: &Snapshot) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (name, u) in &snap.units {
        let what = if u.placement().req.global {
            "global"
        } else {
            match snap.machine_of(name) {
                Some(m) => match snap.states.get(name).and_then(|s| s.get(m)) {
                    Some(st) => st.systemd_active_state.as_str(),
                    None => "starting",
                },
                None if u.record.desired_state.as_str() == "inactive" => "inactive",
                None => "unplaced",
            }
        };
        *out.entry(what.to_string()).or_insert(0) += 1;
    }
    out
}

impl Api {
    /// This member's own Raft view.
    fn local_status(&self) -> Value {
        let st = self.raft.shared.status().clone();
        let m = self.raft.shared.machine();
        json!({
            "id": format!("{:x}", st.id),
            "name": m.members.get(&st.id).map(|x| x.name.clone()).unwrap_or_default(),
            "leader": format!("{:x}", st.leader),
            "isLeader": st.is_leader,
            "term": st.term,
            "commit": st.commit,
            "applied": m.applied,
            "etcdIndex": m.store.index(),
        })
    }

    pub(in crate::api) async fn overview(&self, req: &Request<Bytes>) -> Reply {
        let local = form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .any(|(k, _)| k == "local");
        if local {
            return self.bare_json(StatusCode::OK, self.local_status());
        }
        let auth = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let members = self.members_status(auth).await;
        let snap = snapshot(self);
        let mut problems = member_problems(&members);
        problems.extend(self.unit_problems(&snap));
        problems.extend(self.machine_problems());
        let total = problems.len();
        problems.truncate(PROBLEMS_MAX);
        let history = self.ui_history.lock().expect("history lock").samples();
        let body = json!({
            "self": format!("{:x}", self.raft.shared.status().id),
            "members": members,
            "machines": snap.machines.len(),
            "units": units_by_state(&snap),
            "history": history,
            "sampleEveryMs": SAMPLE_EVERY_MS,
            "problems": problems,
            "problemsTotal": total,
        });
        self.bare_json(StatusCode::OK, body)
    }

    /// Every member as it reports itself, or unreachable.
    async fn members_status(&self, auth: Option<&str>) -> Vec<Value> {
        let me = self.raft.shared.status().id;
        let members: Vec<(u64, String, Vec<String>)> = {
            let m = self.raft.shared.machine();
            m.members
                .values()
                .map(|x| (x.id, x.name.clone(), x.client_urls.clone()))
                .collect()
        };
        let asks = members.iter().map(|(id, _, urls)| async move {
            if *id == me {
                return Some(self.local_status());
            }
            let url = urls.first()?;
            let target = format!("{}/flotilla/v1/overview?local=1", url.trim_end_matches('/'));
            let timeout = Duration::from_millis(MEMBER_TIMEOUT_MS);
            let r = flotilla_shims::http::request_as("GET", &target, None, auth, timeout).await;
            r.ok()
                .filter(|r| r.status == 200)
                .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
        });
        let answers = futures_util::future::join_all(asks).await;
        members
            .into_iter()
            .zip(answers)
            .map(|((id, name, urls), answer)| {
                let mut v = answer.unwrap_or_else(|| json!({}));
                v["id"] = json!(format!("{id:x}"));
                v["name"] = json!(name);
                v["clientURLs"] = json!(urls);
                v["reachable"] = json!(v.get("term").is_some());
                v
            })
            .collect()
    }

    fn unit_problems(&self, snap: &Snapshot) -> Vec<Value> {
        let mut out = vec![];
        for (name, u) in &snap.units {
            // Each explanation is a placement pass: at most as many as are shown.
            if out.len() >= PROBLEMS_MAX {
                break;
            }
            if u.placement().req.global {
                continue;
            }
            match snap.machine_of(name) {
                None if u.record.desired_state.as_str() != "inactive" => {
                    let why = snap.explain(name);
                    if !why.is_empty() {
                        out.push(problem("unplaceable", name, &why));
                    }
                }
                Some(m) => {
                    let st = snap.states.get(name).and_then(|s| s.get(m));
                    if st.is_some_and(|s| s.systemd_active_state == "failed") {
                        out.push(problem("failed", name, &format!("failed on machine {m}")));
                    }
                }
                None => {}
            }
        }
        out
    }

    /// Machines whose presence key has not been renewed for half its TTL (an agent
    /// renews every third): they are on their way to being declared dead.
    fn machine_problems(&self) -> Vec<Value> {
        let now = self.clock.now_wall_ms();
        let m = self.raft.shared.machine();
        let Ok(dir) = m.store.get(registry::MACHINES, true) else {
            return vec![];
        };
        let mut out = vec![];
        for n in dir.node.nodes.iter().flatten() {
            let rec = n
                .value
                .as_deref()
                .and_then(|v| serde_json::from_str::<registry::MachineRecord>(v).ok());
            let (Some(rec), Some(exp)) = (rec, n.expire_ms) else {
                continue;
            };
            let left_ms = exp.saturating_sub(now);
            if rec.agent_ttl_s > 0 && left_ms < rec.agent_ttl_s * 1000 / 2 {
                let text = format!(
                    "has not renewed its presence for {:.1} s (TTL {} s)",
                    (rec.agent_ttl_s * 1000 - left_ms) as f64 / 1000.0,
                    rec.agent_ttl_s
                );
                out.push(problem("machine-silent", &rec.id, &text));
            }
        }
        out
    }
}

fn member_problems(members: &[Value]) -> Vec<Value> {
    let mut out = vec![];
    for m in members {
        let name = m["name"].as_str().unwrap_or_default();
        if m["reachable"] != json!(true) {
            out.push(problem("member-down", name, "does not answer"));
        } else if m["leader"] == json!("0") {
            out.push(problem("no-leader", name, "knows no leader"));
        }
    }
    out
}

fn problem(kind: &str, subject: &str, text: &str) -> Value {
    json!({"kind": kind, "subject": subject, "text": text})
}
