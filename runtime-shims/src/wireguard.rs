//! WireGuard in userspace: boringtun's device (the WireGuard protocol over a TUN device,
//! its own worker threads), configured through the cross-platform UAPI text protocol
//! over a socket pair — no `/var/run/wireguard` socket, so several network namespaces on
//! one host each hold their own `flannel-wg`. Used where the kernel has no WireGuard; the
//! protocol on the wire is the same, so either kind of peer talks to the other.

use crate::links::{Entry, WgKey, WgSpec};
use boringtun::device::{DeviceConfig, DeviceHandle};
use boringtun::x25519::{PublicKey, StaticSecret};
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

/// The device's worker threads.
const THREADS: usize = 2;
/// A configuration exchange that takes longer than this has failed.
const UAPI_TIMEOUT_MS: u64 = 2_000;

struct Device {
    /// Dropping it stops the device's threads and removes the TUN device.
    _handle: DeviceHandle,
    uapi: UnixStream,
    public: WgKey,
    port: u16,
}

/// This process's userspace WireGuard devices, by name.
#[derive(Default)]
pub struct Userspace {
    devices: Mutex<BTreeMap<String, Device>>,
}

fn hex(k: &[u8; 32]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The private key in `path` (base64, as `wg genkey` writes it), made there on first use
/// (mode 0600, written atomically); and its public key.
pub fn load_or_make_key(path: &str) -> io::Result<(StaticSecret, WgKey)> {
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let fresh = WgKey(rand::random());
            crate::files::write_atomic_blocking(
                Path::new(path),
                format!("{fresh}\n").as_bytes(),
                0o600,
            )?;
            fresh.to_string()
        }
        Err(e) => return Err(e),
    };
    let key: WgKey = text
        .trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {e}")))?;
    let secret = StaticSecret::from(key.0);
    let public = WgKey(PublicKey::from(&secret).to_bytes());
    Ok((secret, public))
}

/// One UAPI exchange: `set=1` with `body`, or `get=1`; the reply's lines before `errno`.
fn uapi(sock: &UnixStream, op: &str, body: &str) -> io::Result<Vec<String>> {
    sock.set_read_timeout(Some(Duration::from_millis(UAPI_TIMEOUT_MS)))?;
    let mut w = sock;
    // `set` ends with an empty line; boringtun reads no more after `get=1`, and a
    // stray empty line would be taken for the next command.
    match op {
        "get" => writeln!(w, "get=1")?,
        _ => write!(w, "{op}=1\n{body}\n")?,
    }
    let mut lines = vec![];
    let mut r = BufReader::new(sock);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::other(
                "the WireGuard device closed its configuration socket",
            ));
        }
        let line = line.trim_end().to_string();
        if let Some(code) = line.strip_prefix("errno=") {
            // The reply ends with an empty line after errno.
            let mut end = String::new();
            let _ = r.read_line(&mut end);
            return match code {
                "0" => Ok(lines),
                _ => Err(io::Error::other(format!(
                    "WireGuard device refused {op}: errno {code}"
                ))),
            };
        }
        lines.push(line);
    }
}

impl Userspace {
    /// Makes the device `spec` names, or re-asserts its key and port; its public key.
    pub fn ensure(&self, spec: &WgSpec) -> io::Result<WgKey> {
        let (secret, public) = load_or_make_key(&spec.key_file)?;
        let mut devs = self.devices.lock().expect("wireguard devices lock");
        let same = devs
            .get(&spec.name)
            .is_some_and(|d| d.public == public && d.port == spec.port);
        if !same {
            devs.remove(&spec.name);
            let (ours, theirs) = UnixStream::pair()?;
            let cfg = DeviceConfig {
                n_threads: THREADS,
                use_connected_socket: true,
                use_multi_queue: false,
                uapi_fd: theirs.into_raw_fd(),
            };
            let handle = DeviceHandle::new(&spec.name, cfg).map_err(|e| {
                io::Error::other(format!("making WireGuard device {}: {e:?}", spec.name))
            })?;
            let body = format!(
                "private_key={}\nlisten_port={}\n",
                hex(&secret.to_bytes()),
                spec.port
            );
            uapi(&ours, "set", &body)?;
            let dev = Device {
                _handle: handle,
                uapi: ours,
                public,
                port: spec.port,
            };
            devs.insert(spec.name.clone(), dev);
        }
        Ok(public)
    }

    pub fn has(&self, dev: &str) -> bool {
        self.devices
            .lock()
            .expect("wireguard devices lock")
            .contains_key(dev)
    }

    /// Adds or updates a peer (its allowed IPs replaced), or removes it.
    pub fn peer(&self, e: &Entry, add: bool) -> io::Result<()> {
        let Entry::WgPeer {
            dev,
            key,
            endpoint,
            port,
            allowed,
            len,
            psk,
        } = e
        else {
            return Err(io::Error::other("not a WireGuard peer"));
        };
        let devs = self.devices.lock().expect("wireguard devices lock");
        let Some(d) = devs.get(dev) else {
            return match add {
                true => Err(io::Error::other(format!("no WireGuard device {dev}"))),
                false => Ok(()),
            };
        };
        let peer = format!("public_key={}\n", hex(&key.0));
        if !add {
            return uapi(&d.uapi, "set", &format!("{peer}remove=true\n")).map(drop);
        }
        let have = parse_peers(dev, &uapi(&d.uapi, "get", "")?);
        if have.contains(e) {
            return Ok(());
        }
        // boringtun's device cannot modify a peer (it panics, taking its thread with it):
        // one that is there with other settings is removed first, in its own exchange.
        let same_key = |x: &Entry| matches!(x, Entry::WgPeer { key: k, .. } if k == key);
        if have.iter().any(same_key) {
            uapi(&d.uapi, "set", &format!("{peer}remove=true\n"))?;
        }
        let mut body = format!(
            "{peer}endpoint={endpoint}:{port}\nreplace_allowed_ips=true\nallowed_ip={allowed}/{len}\n"
        );
        if let Some(p) = psk {
            body += &format!("preshared_key={}\n", hex(&p.0));
        }
        uapi(&d.uapi, "set", &body).map(drop)
    }

    /// The device's peers as entries (none when there is no such device).
    pub fn peers(&self, dev: &str) -> io::Result<Vec<Entry>> {
        let devs = self.devices.lock().expect("wireguard devices lock");
        let Some(d) = devs.get(dev) else {
            return Ok(vec![]);
        };
        Ok(parse_peers(dev, &uapi(&d.uapi, "get", "")?))
    }
}

/// A peer read so far: key, endpoint, allowed IPs, preshared key.
type Partial = (
    WgKey,
    Option<SocketAddr>,
    Option<(Ipv4Addr, u8)>,
    Option<WgKey>,
);

/// `get=1`'s lines as peers: each starts at `public_key=`.
fn parse_peers(dev: &str, lines: &[String]) -> Vec<Entry> {
    let mut out = vec![];
    let mut cur: Option<Partial> = None;
    let flush = |cur: &mut Option<Partial>, out: &mut Vec<Entry>| {
        if let Some((key, Some(SocketAddr::V4(ep)), Some((allowed, len)), psk)) = cur.take() {
            out.push(Entry::WgPeer {
                dev: dev.to_string(),
                key,
                endpoint: *ep.ip(),
                port: ep.port(),
                allowed,
                len,
                psk,
            });
        }
    };
    for l in lines {
        let Some((k, v)) = l.split_once('=') else {
            continue;
        };
        match k {
            "public_key" => {
                flush(&mut cur, &mut out);
                cur = unhex(v).map(|b| (WgKey(b), None, None, None));
            }
            "endpoint" => {
                if let Some(c) = cur.as_mut() {
                    c.1 = v.parse().ok();
                }
            }
            "allowed_ip" => {
                let ip = v
                    .split_once('/')
                    .and_then(|(a, l)| Some((a.parse().ok()?, l.parse().ok()?)));
                if let (Some(c), Some(ip)) = (cur.as_mut(), ip) {
                    c.2 = Some(ip);
                }
            }
            "preshared_key" => {
                let k = unhex(v).filter(|b| b.iter().any(|x| *x != 0)).map(WgKey);
                if let Some(c) = cur.as_mut() {
                    c.3 = k;
                }
            }
            _ => {}
        }
    }
    flush(&mut cur, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/flannel-wg.key").display().to_string();
        let (_, public) = load_or_make_key(&path).unwrap();
        let (_, again) = load_or_make_key(&path).unwrap();
        assert_eq!(public, again);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, "not a key").unwrap();
        let Err(e) = load_or_make_key(&path) else {
            panic!("a bad key file is refused")
        };
        assert!(e.to_string().contains("not a WireGuard key"), "{e}");
    }

    /// A real device (root, /dev/net/tun): a peer added twice is one peer, and a peer
    /// whose settings change is replaced — boringtun panics on a plain modify.
    #[test]
    fn a_device_takes_peers_again_and_changed() {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("flwgt{}", std::process::id() % 100_000);
        let spec = WgSpec {
            name: name.clone(),
            port: 0,
            key_file: dir.path().join("wgkey").display().to_string(),
            mtu: 1420,
            addr: None,
        };
        let wg = Userspace::default();
        let public = wg
            .ensure(&spec)
            .expect("a userspace WireGuard device (root, /dev/net/tun)");
        assert_eq!(wg.ensure(&spec).unwrap(), public, "made once");
        let peer = |endpoint: [u8; 4]| Entry::WgPeer {
            dev: name.clone(),
            key: WgKey([9; 32]),
            endpoint: endpoint.into(),
            port: 51820,
            allowed: [10, 1, 2, 0].into(),
            len: 24,
            psk: None,
        };
        wg.peer(&peer([192, 168, 0, 2]), true).unwrap();
        wg.peer(&peer([192, 168, 0, 2]), true).unwrap();
        assert_eq!(wg.peers(&name).unwrap(), [peer([192, 168, 0, 2])]);
        wg.peer(&peer([192, 168, 0, 3]), true).unwrap();
        assert_eq!(wg.peers(&name).unwrap(), [peer([192, 168, 0, 3])]);
        wg.peer(&peer([192, 168, 0, 3]), false).unwrap();
        assert!(wg.peers(&name).unwrap().is_empty());
    }

    #[test]
    fn uapi_peers_parse() {
        let k = [7u8; 32];
        let lines: Vec<String> = [
            "own_public_key=00".to_string(),
            "listen_port=51820".into(),
            format!("public_key={}", hex(&k)),
            format!("preshared_key={}", hex(&[0u8; 32])),
            "endpoint=192.168.0.2:51820".into(),
            "allowed_ip=10.1.2.0/24".into(),
            "last_handshake_time_sec=0".into(),
        ]
        .into();
        assert_eq!(
            parse_peers("flannel-wg", &lines),
            [Entry::WgPeer {
                dev: "flannel-wg".into(),
                key: WgKey(k),
                endpoint: [192, 168, 0, 2].into(),
                port: 51820,
                allowed: [10, 1, 2, 0].into(),
                len: 24,
                psk: None,
            }]
        );
    }
}
