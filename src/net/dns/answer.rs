//! What a node's DNS answers, from what it mirrors of the store — pure. Order of
//! ownership: records under `/skydns` (any name), then flotilla's own names under the
//! cluster's domain — a unit's running instances (`apache.<domain>` every instance,
//! `apache@2.<domain>` one; SRV with their published ports) and machines
//! (`<id>.machine.<domain>`) — and anything else under the domain does not exist.
//! Other names are forwarded.

use super::mirror::Mirror;
use super::skydns;
use crate::sched::registry::{self, MachineRecord, UnitState};
use flotilla_shims::dns::{Data, QType, Question, Record, Reply};
use std::net::Ipv4Addr;

/// TTL of the names flotilla makes from unit states: short, because the state behind
/// them changes when a container stops, not on a timer.
pub const UNIT_TTL_S: u32 = 5;
/// The label under the domain that machines' names sit in.
pub const MACHINE_LABEL: &str = "machine";

/// The store's keys a node answers from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub skydns: Mirror,
    pub states: Mirror,
    pub machines: Mirror,
}

impl Default for View {
    fn default() -> Self {
        Self {
            skydns: Mirror::new(skydns::ROOT),
            states: Mirror::new(registry::STATES),
            machines: Mirror::new(registry::MACHINES),
        }
    }
}

/// A unit instance that runs now, as its state and its machine's key say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// `apache@1` (the unit's name without `.service`).
    pub stem: String,
    pub machine: String,
    pub address: Ipv4Addr,
    pub ports: Vec<u16>,
}

impl View {
    fn machine(&self, id: &str) -> Option<MachineRecord> {
        let leaf = self.machines.leaves.get(&registry::machine_key(id))?;
        serde_json::from_str(&leaf.value).ok()
    }

    /// Every instance reported `active/running` by a machine whose key is here; its
    /// address is its container's on the cluster network, else its machine's.
    pub fn running(&self) -> Vec<Running> {
        let mut out = vec![];
        for (key, leaf) in self.states.under(&format!("{}/", registry::STATES)) {
            let Ok(st) = serde_json::from_str::<UnitState>(&leaf.value) else {
                continue;
            };
            if st.systemd_active_state != "active" || st.systemd_sub_state != "running" {
                continue;
            }
            let Some(m) = self.machine(&st.machine_id) else {
                continue;
            };
            let addr = st.address.parse().or_else(|_| m.primary_ip.parse());
            let (Ok(address), Some(stem)) = (addr, key.rsplit('/').nth(1)) else {
                continue;
            };
            out.push(Running {
                stem: stem.trim_end_matches(".service").to_ascii_lowercase(),
                machine: st.machine_id,
                address,
                ports: st.ports,
            });
        }
        out
    }
}

/// Does `name` sit under `domain`? Its labels before the domain, if so.
fn under_domain<'a>(name: &'a str, domain: &str) -> Option<&'a str> {
    if name == domain {
        return Some("");
    }
    name.strip_suffix(domain)?.strip_suffix('.')
}

pub fn answer(view: &View, domain: &str, now_ms: u64, q: &Question) -> Reply {
    let recs = skydns::records(&view.skydns, &q.name, now_ms);
    if !recs.is_empty() {
        let (answers, additional) = skydns::answer(&q.name, q.qtype, &recs);
        return Reply::Answer {
            answers,
            additional,
        };
    }
    let Some(head) = under_domain(&q.name, domain) else {
        return Reply::Forward;
    };
    if head.is_empty() {
        return empty();
    }
    match head.rsplit_once('.') {
        Some((id, MACHINE_LABEL)) => machine(view, q, id),
        _ => unit(
            view,
            domain,
            q,
            head.trim_start_matches('_').trim_end_matches("._tcp"),
        ),
    }
}

fn empty() -> Reply {
    Reply::Answer {
        answers: vec![],
        additional: vec![],
    }
}

fn machine(view: &View, q: &Question, id: &str) -> Reply {
    let Some(ip) = view.machine(id).and_then(|m| m.primary_ip.parse().ok()) else {
        return Reply::NxDomain;
    };
    let answers = match q.qtype {
        QType::A | QType::Any => vec![skydns::address(&q.name, UNIT_TTL_S, ip)],
        _ => vec![],
    };
    Reply::Answer {
        answers,
        additional: vec![],
    }
}

/// `stem` names one instance (`apache@2`, `web`) or every instance of a template
/// (`apache`).
fn unit(view: &View, domain: &str, q: &Question, stem: &str) -> Reply {
    let all = view.running();
    let chosen: Vec<&Running> = all
        .iter()
        .filter(|r| r.stem == stem || r.stem.split_once('@').is_some_and(|(t, _)| t == stem))
        .collect();
    if chosen.is_empty() {
        return Reply::NxDomain;
    }
    let (mut answers, mut additional) = (vec![], vec![]);
    for r in chosen {
        match q.qtype {
            QType::A | QType::Any => answers.push(skydns::address(&q.name, UNIT_TTL_S, r.address)),
            QType::Srv => {
                let target = format!("{}.{MACHINE_LABEL}.{domain}", r.machine);
                for port in &r.ports {
                    answers.push(Record {
                        name: q.name.clone(),
                        ttl_s: UNIT_TTL_S,
                        data: Data::Srv {
                            priority: 10,
                            weight: 10,
                            port: *port,
                            target: target.clone(),
                        },
                    });
                }
                if let Some(ip) = view
                    .machine(&r.machine)
                    .and_then(|m| m.primary_ip.parse().ok())
                {
                    if !r.ports.is_empty() {
                        additional.push(skydns::address(&target, UNIT_TTL_S, ip));
                    }
                }
            }
            _ => {}
        }
    }
    additional.dedup();
    Reply::Answer {
        answers,
        additional,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dns::mirror::Leaf;

    const D: &str = "flotilla.local";

    fn put(m: &mut Mirror, key: &str, value: String, expire_ms: Option<u64>) {
        m.leaves.insert(key.into(), Leaf { value, expire_ms });
    }

    fn state(unit: &str, machine: &str, sub: &str, address: &str, ports: Vec<u16>) -> String {
        let st = UnitState {
            name: unit.into(),
            hash: "h".into(),
            machine_id: machine.into(),
            systemd_load_state: "loaded".into(),
            systemd_active_state: if sub == "running" {
                "active"
            } else {
                "inactive"
            }
            .into(),
            systemd_sub_state: sub.into(),
            address: address.into(),
            ports,
        };
        serde_json::to_string(&st).unwrap()
    }

    fn view() -> View {
        let mut v = View::default();
        // m3's key has expired: the store removed it.
        for (id, ip, exp) in [
            ("m1", "192.168.0.1", None),
            ("m2", "192.168.0.2", Some(1_000)),
        ] {
            let rec = MachineRecord {
                id: id.into(),
                primary_ip: ip.into(),
                ..Default::default()
            };
            put(
                &mut v.machines,
                &registry::machine_key(id),
                serde_json::to_string(&rec).unwrap(),
                exp,
            );
        }
        let s = &mut v.states;
        put(
            s,
            &registry::state_key("apache@1.service", "m1"),
            state("apache@1.service", "m1", "running", "10.1.5.2", vec![8081]),
            None,
        );
        put(
            s,
            &registry::state_key("apache@2.service", "m2"),
            state("apache@2.service", "m2", "running", "10.1.9.2", vec![8081]),
            None,
        );
        // Stopped, and on a machine whose key has expired: neither answers.
        put(
            s,
            &registry::state_key("apache@3.service", "m1"),
            state("apache@3.service", "m1", "dead", "10.1.5.3", vec![]),
            None,
        );
        put(
            s,
            &registry::state_key("apache@4.service", "m3"),
            state("apache@4.service", "m3", "running", "10.1.7.2", vec![]),
            None,
        );
        // A host process: no container address, so its machine's.
        put(
            s,
            &registry::state_key("web.service", "m2"),
            state("web.service", "m2", "running", "", vec![]),
            None,
        );
        v
    }

    fn ask(v: &View, name: &str, qtype: QType) -> Reply {
        answer(
            v,
            D,
            2_000,
            &Question {
                name: name.into(),
                qtype,
            },
        )
    }

    fn addrs(r: &Reply) -> Vec<String> {
        match r {
            Reply::Answer { answers, .. } => {
                answers.iter().map(|a| format!("{:?}", a.data)).collect()
            }
            other => vec![format!("{other:?}")],
        }
    }

    #[test]
    fn a_template_names_its_running_instances_and_an_instance_itself() {
        let v = view();
        assert_eq!(
            addrs(&ask(&v, "apache.flotilla.local", QType::A)),
            ["A(10.1.5.2)", "A(10.1.9.2)"]
        );
        assert_eq!(
            addrs(&ask(&v, "apache@2.flotilla.local", QType::A)),
            ["A(10.1.9.2)"]
        );
        assert_eq!(
            ask(&v, "apache@3.flotilla.local", QType::A),
            Reply::NxDomain
        );
        assert_eq!(
            ask(&v, "apache@4.flotilla.local", QType::A),
            Reply::NxDomain
        );
        assert_eq!(
            addrs(&ask(&v, "web.flotilla.local", QType::A)),
            ["A(192.168.0.2)"]
        );
    }

    #[test]
    fn srv_gives_published_ports_on_their_machines() {
        let v = view();
        let Reply::Answer {
            answers,
            additional,
        } = ask(&v, "_apache._tcp.flotilla.local", QType::Srv)
        else {
            panic!("no answer");
        };
        let targets: Vec<String> = answers.iter().map(|a| format!("{:?}", a.data)).collect();
        assert_eq!(targets.len(), 2);
        assert!(
            targets[0].contains("port: 8081") && targets[0].contains("m1.machine.flotilla.local")
        );
        assert_eq!(
            additional[1],
            skydns::address(
                "m2.machine.flotilla.local",
                UNIT_TTL_S,
                "192.168.0.2".parse().unwrap()
            )
        );
    }

    #[test]
    fn machines_by_id_and_what_is_not_ours() {
        let v = view();
        assert_eq!(
            addrs(&ask(&v, "m1.machine.flotilla.local", QType::A)),
            ["A(192.168.0.1)"]
        );
        assert_eq!(
            ask(&v, "m3.machine.flotilla.local", QType::A),
            Reply::NxDomain
        );
        assert_eq!(ask(&v, "nope.flotilla.local", QType::A), Reply::NxDomain);
        assert_eq!(
            addrs(&ask(&v, "flotilla.local", QType::A)),
            Vec::<String>::new()
        );
        assert_eq!(ask(&v, "example.com", QType::A), Reply::Forward);
        assert_eq!(ask(&v, "xflotilla.local", QType::A), Reply::Forward);
    }

    #[test]
    fn skydns_records_answer_before_flotillas_names() {
        let mut v = view();
        put(
            &mut v.skydns,
            "/skydns/local/flotilla/apache",
            r#"{"host":"10.9.9.9"}"#.into(),
            None,
        );
        put(
            &mut v.skydns,
            "/skydns/com/example/www",
            r#"{"host":"10.8.8.8"}"#.into(),
            None,
        );
        assert_eq!(
            addrs(&ask(&v, "apache.flotilla.local", QType::A)),
            ["A(10.9.9.9)"]
        );
        assert_eq!(
            addrs(&ask(&v, "www.example.com", QType::A)),
            ["A(10.8.8.8)"]
        );
    }
}
