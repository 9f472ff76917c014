//! Certificates made here (rcgen) and members on https URLs, for the TLS tests.

use super::{free_port, NodeProc};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};

/// A certificate authority whose certificate is written to `dir/<name>-ca.pem`.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    pub path: PathBuf,
}

pub fn make_ca(dir: &Path, name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    let path = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&path, cert.pem()).unwrap();
    Ca { cert, key, path }
}

/// A certificate for 127.0.0.1 signed by `ca`, written as `dir/<name>.pem` (and `.der`)
/// and `dir/<name>-key.pem`; `expired` makes one that ran out in 2021.
pub fn leaf(dir: &Path, ca: &Ca, name: &str, expired: bool) -> (PathBuf, PathBuf) {
    let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    if expired {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.der")), cert.der()).unwrap();
    (c, k)
}

pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Members on https URLs; each member's flags come from `tls_of(i)`.
pub fn tls_cluster(dir: &Path, n: usize, tls_of: impl Fn(usize) -> Vec<String>) -> Vec<NodeProc> {
    let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
    let cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("n{i}=https://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    ports
        .iter()
        .enumerate()
        .map(|(i, (c, p))| {
            let mut extra = vec!["--no-agent".to_string()];
            extra.extend(tls_of(i));
            NodeProc {
                name: format!("n{i}"),
                client_url: format!("https://127.0.0.1:{c}"),
                peer_url: format!("https://127.0.0.1:{p}"),
                data_dir: dir.join(format!("n{i}")),
                log_path: dir.join(format!("n{i}.log")),
                extra,
                cluster: cluster.clone(),
                child: None,
            }
        })
        .collect()
}

/// The full set of a member's TLS flags: its certificate for both listeners, clients and
/// peers required to show one signed by `ca`.
pub fn member_flags(ca: &Path, cert: &Path, key: &Path) -> Vec<String> {
    [
        ("--cert-file", cert),
        ("--key-file", key),
        ("--trusted-ca-file", ca),
        ("--peer-cert-file", cert),
        ("--peer-key-file", key),
        ("--peer-trusted-ca-file", ca),
    ]
    .iter()
    .map(|(f, p)| format!("{f}={}", s(p)))
    .chain([
        "--client-cert-auth".into(),
        "--peer-client-cert-auth".into(),
    ])
    .collect()
}
