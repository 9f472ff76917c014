//! SkyDNS's records in the store: a name's labels reversed under `/skydns`
//! (`rails.production.skydns.local` → `/skydns/local/skydns/production/rails`), each
//! leaf a JSON service record; A, SRV, TXT and CNAME answers from them — pure.

use super::mirror::{Leaf, Mirror};
use flotilla_shims::dns::{Data, QType, Record};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr};

pub const ROOT: &str = "/skydns";
/// SkyDNS's TTL for a record that names none.
pub const DEFAULT_TTL_S: u32 = 3600;
const DEFAULT_PRIORITY: u16 = 10;

/// A SkyDNS service record (`{"host":"10.0.0.5","port":8080,...}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Service {
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default)]
    pub priority: Option<u16>,
    #[serde(default)]
    pub weight: Option<u16>,
    #[serde(default)]
    pub ttl: Option<u32>,
    #[serde(default)]
    pub text: String,
    #[serde(default, rename = "targetstrip")]
    pub target_strip: usize,
}

/// The store key a name's records sit under.
pub fn path_of(name: &str) -> String {
    let mut p = String::from(ROOT);
    for label in name.rsplit('.').filter(|l| !l.is_empty()) {
        p.push('/');
        p.push_str(label);
    }
    p
}

/// The name a key stands for (`/skydns/local/skydns/a/1` → `1.a.skydns.local`).
pub fn name_of(key: &str) -> String {
    let rest = key.strip_prefix(ROOT).unwrap_or(key);
    let labels: Vec<&str> = rest.split('/').filter(|l| !l.is_empty()).collect();
    labels.into_iter().rev().collect::<Vec<_>>().join(".")
}

/// Does the leaf at `key` sit at or under the name whose reversed labels are `want`
/// (`*` and `any` match any one label)?
fn matches(want: &[&str], key: &str) -> bool {
    let rest = key.strip_prefix(ROOT).unwrap_or(key);
    let mut have = rest.split('/').filter(|l| !l.is_empty());
    want.iter().all(|w| match have.next() {
        Some(h) => *w == "*" || *w == "any" || *w == h,
        None => false,
    })
}

/// The live records at or under `name`, with their keys.
pub fn records<'a>(m: &'a Mirror, name: &str, now_ms: u64) -> Vec<(&'a str, Service, u32)> {
    let want: Vec<&str> = name.rsplit('.').filter(|l| !l.is_empty()).collect();
    let wild = want.iter().any(|w| *w == "*" || *w == "any");
    let path = path_of(name);
    let leaves: Box<dyn Iterator<Item = (&String, &Leaf)>> = if wild {
        Box::new(m.under(&format!("{ROOT}/")))
    } else {
        let exact = m.leaves.get_key_value(&path);
        Box::new(exact.into_iter().chain(m.under(&format!("{path}/"))))
    };
    let mut out = vec![];
    for (key, leaf) in leaves {
        if !matches(&want, key) {
            continue;
        }
        let Ok(svc) = serde_json::from_str::<Service>(&leaf.value) else {
            continue;
        };
        let key_ttl = leaf.ttl_s(now_ms).unwrap_or(u32::MAX);
        let ttl = svc.ttl.unwrap_or(DEFAULT_TTL_S).min(key_ttl);
        out.push((key.as_str(), svc, ttl));
    }
    out
}

/// The target an SRV record names for a record at `key`: its own name (less
/// `targetstrip` labels) when `host` is an address.
fn srv_target(key: &str, svc: &Service) -> String {
    let name = name_of(key);
    name.split('.')
        .skip(svc.target_strip)
        .collect::<Vec<_>>()
        .join(".")
}

/// Answers `qtype` for `qname` from `recs`: (answers, additional).
pub fn answer(
    qname: &str,
    qtype: QType,
    recs: &[(&str, Service, u32)],
) -> (Vec<Record>, Vec<Record>) {
    let (mut answers, mut additional) = (vec![], vec![]);
    for (key, svc, ttl) in recs {
        let rec = |data| Record {
            name: qname.to_string(),
            ttl_s: *ttl,
            data,
        };
        let ip = svc.host.parse::<IpAddr>().ok();
        match (qtype, ip) {
            (QType::A | QType::Any, Some(IpAddr::V4(v4))) => answers.push(rec(Data::A(v4))),
            (QType::Aaaa | QType::Any, Some(IpAddr::V6(v6))) => answers.push(rec(Data::Aaaa(v6))),
            (QType::A | QType::Aaaa | QType::Any, None) if !svc.host.is_empty() => {
                answers.push(rec(Data::Cname(svc.host.trim_end_matches('.').to_string())))
            }
            (QType::Srv, _) => {
                let target = match ip {
                    Some(_) => srv_target(key, svc),
                    None => svc.host.trim_end_matches('.').to_string(),
                };
                if let Some(IpAddr::V4(v4)) = ip {
                    additional.push(address(&target, *ttl, v4));
                }
                answers.push(rec(Data::Srv {
                    priority: svc.priority.unwrap_or(DEFAULT_PRIORITY),
                    weight: svc.weight.unwrap_or(DEFAULT_PRIORITY),
                    port: svc.port,
                    target,
                }));
            }
            (QType::Txt, _) if !svc.text.is_empty() => {
                answers.push(rec(Data::Txt(svc.text.clone())))
            }
            _ => {}
        }
    }
    (answers, additional)
}

pub fn address(name: &str, ttl_s: u32, ip: Ipv4Addr) -> Record {
    Record {
        name: name.to_string(),
        ttl_s,
        data: Data::A(ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(recs: &[(&str, &str, Option<u64>)]) -> Mirror {
        let mut m = Mirror::new(ROOT);
        for (k, v, e) in recs {
            let leaf = Leaf {
                value: v.to_string(),
                expire_ms: *e,
            };
            m.leaves.insert(k.to_string(), leaf);
        }
        m
    }

    #[test]
    fn names_and_keys_are_each_others_reverse() {
        assert_eq!(
            path_of("rails.production.east.skydns.local"),
            "/skydns/local/skydns/east/production/rails"
        );
        assert_eq!(
            name_of("/skydns/local/skydns/east/production/rails/1"),
            "1.rails.production.east.skydns.local"
        );
    }

    #[test]
    fn a_name_answers_its_whole_subtree_and_wildcards_match_one_label() {
        let m = mirror(&[
            (
                "/skydns/local/skydns/east/production/rails/1",
                r#"{"host":"10.0.0.1","port":80}"#,
                None,
            ),
            (
                "/skydns/local/skydns/west/production/rails/2",
                r#"{"host":"10.0.0.2","port":80}"#,
                None,
            ),
            (
                "/skydns/local/skydns/west/staging/rails",
                r#"{"host":"10.0.0.3"}"#,
                None,
            ),
            (
                "/skydns/local/skydns/west/production/railsx",
                r#"{"host":"10.0.0.9"}"#,
                None,
            ),
        ]);
        let ips = |name: &str| -> Vec<String> {
            let recs = records(&m, name, 0);
            let (a, _) = answer(name, QType::A, &recs);
            a.iter().map(|r| format!("{:?}", r.data)).collect()
        };
        assert_eq!(ips("rails.production.east.skydns.local"), ["A(10.0.0.1)"]);
        assert_eq!(ips("production.west.skydns.local").len(), 2);
        assert_eq!(
            ips("rails.production.*.skydns.local"),
            ["A(10.0.0.1)", "A(10.0.0.2)"]
        );
        assert_eq!(
            ips("rails.any.west.skydns.local"),
            ["A(10.0.0.2)", "A(10.0.0.3)"]
        );
        assert!(ips("nothing.skydns.local").is_empty());
    }

    #[test]
    fn the_ttl_is_the_smaller_of_the_records_and_the_keys() {
        let m = mirror(&[
            (
                "/skydns/local/a/1",
                r#"{"host":"10.0.0.1","ttl":30}"#,
                Some(10_500),
            ),
            (
                "/skydns/local/a/2",
                r#"{"host":"10.0.0.2","ttl":30}"#,
                Some(100_000),
            ),
            ("/skydns/local/a/3", r#"{"host":"10.0.0.3"}"#, Some(5_000)),
        ]);
        let ttls: Vec<u32> = records(&m, "a.local", 5_000).iter().map(|r| r.2).collect();
        assert_eq!(ttls, [6, 30, 1], "the third is due to expire");
    }

    #[test]
    fn srv_names_the_record_with_its_address_beside_and_a_host_name_is_a_cname() {
        let m = mirror(&[
            (
                "/skydns/local/db/1",
                r#"{"host":"10.0.0.1","port":5432,"priority":20,"weight":5}"#,
                None,
            ),
            (
                "/skydns/local/db/2",
                r#"{"host":"db2.example.com","port":5433}"#,
                None,
            ),
            ("/skydns/local/db/3", "not json", None),
        ]);
        let recs = records(&m, "db.local", 0);
        let (srv, extra) = answer("db.local", QType::Srv, &recs);
        assert_eq!(
            srv.iter().map(|r| r.data.clone()).collect::<Vec<_>>(),
            [
                Data::Srv {
                    priority: 20,
                    weight: 5,
                    port: 5432,
                    target: "1.db.local".into()
                },
                Data::Srv {
                    priority: 10,
                    weight: 10,
                    port: 5433,
                    target: "db2.example.com".into()
                },
            ]
        );
        assert_eq!(
            extra,
            [address(
                "1.db.local",
                DEFAULT_TTL_S,
                Ipv4Addr::new(10, 0, 0, 1)
            )]
        );
        let (a, _) = answer("db.local", QType::A, &recs);
        assert_eq!(a[1].data, Data::Cname("db2.example.com".into()));
    }
}
