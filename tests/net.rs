//! The container network on machines that have networks of their own: network
//! namespaces on a bridge, each running `flotilla agent --network`, one member on the
//! bridge's address (host-gw) or in a namespace of its own with `--network --no-agent`
//! (vxlan). Each backend is shown carrying packets between the subnets the
//! machines leased (a bridge holds each lease's first address, as Docker's
//! bridge would with `--bip=$FLANNEL_SUBNET`).
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::netns::{lease_in, tag, Bridge, Netns};
use common::*;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LEASE_TTL: &str = "4s";
/// A payload sent between subnets, looked for on the underlay.
const CANARY: &str = "FLOTILLA-PLAINTEXT-CANARY";

struct Machine {
    ns: Netns,
    dir: PathBuf,
    member: String,
    child: Option<Child>,
    /// Flags beyond the network's own.
    extra: Vec<String>,
}

impl Machine {
    fn subnet_file(&self) -> PathBuf {
        self.dir.join(format!("{}.env", self.ns.name))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.ns.name))).unwrap_or_default()
    }

    fn start(&mut self) {
        let name = &self.ns.name;
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let mut cmd = self.ns.command(env!("CARGO_BIN_EXE_flotilla"));
        cmd.args(["agent", "--network"])
            .arg(format!("--endpoints={}", self.member))
            .arg(format!("--listen=http://{}:2391", self.ns.addr))
            .arg(format!("--machine-id={name}"))
            .arg(format!("--data-dir={}", self.dir.join(name).display()))
            .arg(format!("--subnet-file={}", self.subnet_file().display()))
            .arg(format!("--subnet-lease-ttl={LEASE_TTL}"))
            .arg("--agent-ttl=5s")
            // These machines share the host's Docker Engine: no Docker network of their own
            // (tests/net_docker.rs gives each machine an engine and one).
            .arg("--docker-network=none")
            .args(&self.extra)
            .env("FLOTILLA_LOG", "info,flotilla::net=debug")
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("flotilla agent starts"));
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The lease the subnet file names (`FLANNEL_SUBNET=10.x.y.1/24` → `10.x.y.0/24`).
    fn subnet(&self) -> Option<(String, String)> {
        lease_in(&self.subnet_file())
    }

    fn routes(&self) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.ns.name, "route"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Five UDP datagrams carrying [`CANARY`] from this machine's `from` to `to`.
    fn send_canary(&self, from: &str, to: &str) {
        let py = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{from}',0))\nfor _ in range(5): s.sendto(b'{CANARY}',('{to}',9999))"
        );
        let out = self
            .ns
            .command("python3")
            .args(["-c", &py])
            .output()
            .unwrap();
        assert!(out.status.success(), "sending the canary: {out:?}");
    }

    fn ping(&self, from: &str, to: &str) -> bool {
        let out = self
            .ns
            .command("busybox")
            .args(["ping", "-c", "1", "-W", "2", "-I", from, to])
            .output()
            .expect("busybox runs");
        out.status.success()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The member, when it is a machine on the network itself (`flotilla node --network
/// --no-agent` in a namespace of its own, as a load balancer's machine would run).
struct MemberMachine {
    child: Child,
    ns: Netns,
    subnet_file: PathBuf,
}

impl Drop for MemberMachine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `flotilla node --network --no-agent` inside `ns`: the cluster's one member, which
/// serves the store the network's config goes into and takes a lease from it too.
fn start_member_on_network(cl: &mut Cluster, ns: Netns) -> MemberMachine {
    let url = format!("http://{}:{}", ns.addr, free_port());
    cl.nodes[0].client_url = url.clone();
    let node = &cl.nodes[0];
    let subnet_file = cl.dir.path().join("member.env");
    let log = std::fs::File::create(&node.log_path).unwrap();
    let child = ns
        .command(env!("CARGO_BIN_EXE_flotilla"))
        .args(["node", &format!("--name={}", node.name)])
        .arg(format!("--data-dir={}", node.data_dir.display()))
        .arg(format!("--listen-client-urls={url}"))
        .arg(format!("--listen-peer-urls={}", node.peer_url))
        .arg(format!("--initial-cluster={}", node.cluster))
        .args([
            "--heartbeat-interval=50",
            "--election-timeout=500",
            "--no-agent",
        ])
        .args(["--network", "--docker-network=none"])
        .arg(format!("--subnet-file={}", subnet_file.display()))
        .arg(format!("--subnet-lease-ttl={LEASE_TTL}"))
        .env("FLOTILLA_LOG", "info,flotilla::net=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("flotilla node starts");
    MemberMachine {
        child,
        ns,
        subnet_file,
    }
}

struct World {
    member_machine: Option<MemberMachine>,
    bridge: Bridge,
    cl: Cluster,
    member: String,
    machines: Vec<Machine>,
}

impl World {
    async fn new(letter: char, backend: &str, net: &str, member_on_network: bool) -> Self {
        let t = tag();
        let octet = 1 + std::process::id() % 250;
        let under = match letter {
            'h' => 81,
            'w' => 85,
            'm' => 88,
            _ => 82,
        };
        let mut bridge = Bridge::new(
            &format!("fln{letter}{t}"),
            &format!("10.{under}.{octet}.1/24"),
        );
        bridge.allow_forwarding();
        let mut cl = Cluster::new(1, &[]);
        let mut member_machine = None;
        let member = if member_on_network {
            let ns = Netns::new(
                &format!("fl{letter}m{t}"),
                &bridge,
                &format!("10.{under}.{octet}.9/24"),
            );
            member_machine = Some(start_member_on_network(&mut cl, ns));
            cl.nodes[0].client_url.clone()
        } else {
            let member = format!("http://{}:{}", bridge.addr, free_port());
            cl.nodes[0].client_url = member.clone();
            cl.nodes[0].start();
            member
        };
        let c = client();
        wait_healthy(&c, &member).await;
        let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args([
                "net",
                &format!("--endpoints={member}"),
                "init",
                net,
                "--backend",
                backend,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "net init: {out:?}");
        let dir = cl.dir.path().to_path_buf();
        let machines = (0..3)
            .map(|i| {
                let name = format!("fl{letter}{i}{t}");
                let ns = Netns::new(&name, &bridge, &format!("10.{under}.{octet}.{}/24", 10 + i));
                Machine {
                    ns,
                    dir: dir.clone(),
                    member: member.clone(),
                    child: None,
                    extra: vec![],
                }
            })
            .collect();
        Self {
            member_machine,
            bridge,
            cl,
            member,
            machines,
        }
    }

    fn logs(&self) -> String {
        let mut s = self.cl.logs();
        for m in &self.machines {
            s += &format!("\n--- {}:\n{}\n{}", m.ns.name, m.log(), m.routes());
        }
        s
    }

    fn eventually(&self, what: &str, within: Duration, ok: impl Fn() -> bool) {
        let end = Instant::now() + within;
        while !ok() {
            assert!(
                Instant::now() < end,
                "{what}: not within {within:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every machine leased, distinct subnets, each with every other's route.
    fn all_routed(&self) -> Vec<(String, String)> {
        self.eventually("every machine leased", Duration::from_secs(20), || {
            self.machines.iter().all(|m| m.subnet().is_some())
        });
        let subnets: Vec<(String, String)> =
            self.machines.iter().map(|m| m.subnet().unwrap()).collect();
        let distinct: std::collections::BTreeSet<&String> = subnets.iter().map(|s| &s.0).collect();
        assert_eq!(
            distinct.len(),
            3,
            "three machines started at once share a subnet: {subnets:?}"
        );
        self.eventually(
            "every machine routes to the others",
            Duration::from_secs(10),
            || {
                self.machines.iter().enumerate().all(|(i, m)| {
                    let r = m.routes();
                    subnets
                        .iter()
                        .enumerate()
                        .all(|(j, s)| i == j || r.contains(&s.0))
                })
            },
        );
        subnets
    }

    fn pings_across(&self, subnets: &[(String, String)]) {
        for (i, m) in self.machines.iter().enumerate() {
            let len = subnets[i].0.split('/').nth(1).unwrap();
            m.ns.hold_address(&format!("{}/{len}", subnets[i].1));
        }
        for (i, m) in self.machines.iter().enumerate() {
            for (j, s) in subnets.iter().enumerate() {
                if i != j {
                    assert!(
                        m.ping(&subnets[i].1, &s.1),
                        "{} ({}) cannot reach {} on {}\n{}",
                        m.ns.name,
                        subnets[i].1,
                        s.1,
                        self.machines[j].ns.name,
                        self.logs()
                    );
                }
            }
        }
    }

    /// What crosses the underlay bridge (UDP, as a pcap file's bytes) while `send` runs.
    fn capture(&self, send: impl Fn()) -> Vec<u8> {
        let file = self
            .cl
            .dir
            .path()
            .join(format!("{}.pcap", self.bridge.name));
        let mut dump = Command::new("tcpdump")
            .args(["-i", &self.bridge.name, "-U", "-n", "-w"])
            .arg(&file)
            .arg("udp")
            .stderr(Stdio::null())
            .spawn()
            .expect("tcpdump runs");
        std::thread::sleep(Duration::from_millis(1500));
        send();
        std::thread::sleep(Duration::from_millis(1500));
        // SIGINT would flush as well; -U already wrote each packet as it came.
        let _ = dump.kill();
        let _ = dump.wait();
        std::fs::read(&file).unwrap_or_default()
    }

    /// c dies: once its lease expires, a and b drop their routes to it. It comes back
    /// with the same subnet (its subnet file), routed to, and packets flow again.
    fn third_dies_and_comes_back(&mut self, subnets: &[(String, String)]) {
        self.machines[2].kill9();
        let dead = subnets[2].0.clone();
        self.eventually(
            "the dead machine's routes leave",
            Duration::from_secs(15),
            || {
                self.machines[..2]
                    .iter()
                    .all(|m| !m.routes().contains(&dead))
            },
        );
        self.machines[2].start();
        let again = self.all_routed();
        assert_eq!(again[2].0, dead, "a restarted machine keeps its subnet");
        self.pings_across(&again);
    }

    fn leases_listed(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["net", &format!("--endpoints={}", self.member), "leases"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_gw_routes_between_machines_frees_a_dead_ones_subnet_and_gives_it_back() {
    let mut w = World::new('h', "host-gw", "10.201.0.0/16", false).await;
    for m in &mut w.machines {
        m.start();
    }
    let subnets = w.all_routed();
    w.pings_across(&subnets);
    let listed = w.leases_listed();
    for (s, _) in &subnets {
        assert!(listed.contains(s.as_str()), "{s} missing from\n{listed}");
    }
    assert!(listed.contains("host-gw"), "{listed}");
    // host-gw carries packets as they are: the payload is on the underlay.
    let cap = w.capture(|| w.machines[0].send_canary(&subnets[0].1, &subnets[1].1));
    assert!(
        contains(&cap, CANARY.as_bytes()),
        "host-gw shows the payload"
    );

    w.third_dies_and_comes_back(&subnets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_carries_packets_routes_a_member_on_the_network_and_repairs_a_deleted_route() {
    let mut w = World::new('v', "vxlan", "10.202.0.0/16", true).await;
    for m in &mut w.machines {
        m.start();
    }
    let subnets = w.all_routed();
    for m in &w.machines {
        let r = m.routes();
        assert!(r.contains("dev flannel.1") && r.contains("onlink"), "{r}");
    }
    let listed = w.leases_listed();
    assert!(listed.contains("vxlan"), "{listed}");
    w.pings_across(&subnets);
    // The member is a machine on the network too (--network --no-agent, started before
    // the config existed): a fourth subnet, and routes both ways.
    let mm = w
        .member_machine
        .as_ref()
        .expect("the member runs in a namespace here");
    w.eventually("the member leased", Duration::from_secs(20), || {
        lease_in(&mm.subnet_file).is_some()
    });
    let (ms, _) = lease_in(&mm.subnet_file).unwrap();
    assert!(
        subnets.iter().all(|s| s.0 != ms),
        "{ms} is shared: {subnets:?}"
    );
    let member_routes = || {
        let out = Command::new("ip")
            .args(["-n", &mm.ns.name, "route"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    w.eventually(
        "the member and the machines route to each other",
        Duration::from_secs(15),
        || {
            let r = member_routes();
            subnets.iter().all(|s| r.contains(&s.0))
                && w.machines.iter().all(|m| m.routes().contains(&ms))
        },
    );
    // Someone deletes a's route to b: the repair pass puts it back.
    let a = &w.machines[0];
    let b_subnet = subnets[1].0.clone();
    common::netns::ip(&["-n", &a.ns.name, "route", "del", &b_subnet]);
    assert!(!a.routes().contains(&b_subnet));
    w.eventually("the deleted route is back", Duration::from_secs(15), || {
        w.machines[0].routes().contains(&b_subnet)
    });
    w.pings_across(&subnets);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wireguard_carries_packets_encrypted_and_a_restarted_machine_keeps_subnet_and_key() {
    let mut w = World::new('w', "wireguard", "10.205.0.0/16", false).await;
    for m in &mut w.machines {
        m.start();
    }
    let subnets = w.all_routed();
    for m in &w.machines {
        let r = m.routes();
        assert!(r.contains("dev flannel-wg"), "{r}");
    }
    let listed = w.leases_listed();
    assert!(listed.contains("wireguard"), "{listed}");
    w.pings_across(&subnets);
    // The same datagrams host-gw shows in the clear cross the underlay encrypted: WireGuard's
    // port carries them, the payload is nowhere.
    let cap = w.capture(|| w.machines[0].send_canary(&subnets[0].1, &subnets[1].1));
    assert!(
        !contains(&cap, CANARY.as_bytes()),
        "the payload crossed in the clear"
    );
    assert!(
        cap.len() > 24 + 5 * 80,
        "nothing crossed the underlay: {} bytes",
        cap.len()
    );
    let member = w.member.clone();
    let public_key = |subnet: &str| {
        let key = subnet.replace('/', "-");
        let url = format!("{member}/v2/keys/coreos.com/network/subnets/{key}");
        let out = Command::new("curl").args(["-s", &url]).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let lease: serde_json::Value =
            serde_json::from_str(v["node"]["value"].as_str().unwrap()).unwrap();
        lease["BackendData"]["PublicKey"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let before = public_key(&subnets[2].0);
    let keys: std::collections::BTreeSet<String> =
        subnets.iter().map(|s| public_key(&s.0)).collect();
    assert_eq!(keys.len(), 3, "each machine its own key: {keys:?}");

    // c dies and comes back: the same subnet and the same key (kept in its data dir).
    w.third_dies_and_comes_back(&subnets);
    assert_eq!(public_key(&subnets[2].0), before, "and its key");
}

/// The source address a UDP datagram from `from` (in machine `m`) to `to` arrives with,
/// as a receiver bound to `to` in `at` (a machine, or the host for `None`) sees it.
fn arrives_from(m: &Machine, from: &str, at: Option<&Machine>, to: &str) -> String {
    let py = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{to}',9998))\ns.settimeout(5)\nprint(s.recvfrom(100)[1][0])"
    );
    let mut recv = match at {
        Some(a) => a.ns.command("python3"),
        None => Command::new("python3"),
    };
    let recv = recv
        .args(["-c", &py])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let send = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{from}',0))\ns.sendto(b'x',('{to}',9998))"
    );
    let out =
        m.ns.command("python3")
            .args(["-c", &send])
            .output()
            .unwrap();
    assert!(out.status.success(), "{out:?}");
    let got = recv.wait_with_output().unwrap();
    String::from_utf8_lossy(&got.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_masq_hides_the_network_behind_the_host_only_for_traffic_leaving_it() {
    let mut w = World::new('m', "host-gw", "10.206.0.0/16", false).await;
    for m in &mut w.machines {
        m.extra.push("--ip-masq".into());
        m.start();
    }
    let subnets = w.all_routed();
    for (i, m) in w.machines.iter().enumerate() {
        let len = subnets[i].0.split('/').nth(1).unwrap();
        m.ns.hold_address(&format!("{}/{len}", subnets[i].1));
    }
    let a = &w.machines[0];
    w.eventually("the masquerade rules", Duration::from_secs(10), || {
        let t =
            a.ns.command("iptables")
                .args(["-t", "nat", "-S"])
                .output()
                .unwrap();
        String::from_utf8_lossy(&t.stdout).contains("MASQUERADE")
    });
    // Leaving the network (to the underlay's own address): the host's address.
    let out = arrives_from(a, &subnets[0].1, None, &w.bridge.addr);
    assert_eq!(out, a.ns.addr, "traffic leaving the network is masqueraded");
    // Within it (to another machine's subnet): its own cluster address.
    let within = arrives_from(a, &subnets[0].1, Some(&w.machines[1]), &subnets[1].1);
    assert_eq!(
        within, subnets[0].1,
        "traffic within the network keeps its source"
    );
    // The subnet file says so, for a dockerd started from it.
    let env = std::fs::read_to_string(a.subnet_file()).unwrap();
    assert!(env.contains("FLANNEL_IPMASQ=true"), "{env}");
    // Stopped (SIGTERM, as docker stop and systemd do), it takes its chains with it.
    let nat = |m: &Machine| {
        let t =
            m.ns.command("iptables")
                .args(["-t", "nat", "-S"])
                .output()
                .unwrap();
        String::from_utf8_lossy(&t.stdout).into_owned()
    };
    let pid = w.machines[0].child.as_ref().unwrap().id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = w.machines[0].child.as_mut().unwrap().wait().unwrap();
    assert!(status.success(), "a stop is a clean exit: {status:?}");
    let left = nat(&w.machines[0]);
    assert!(
        !left.contains("FLOTILLA") && !left.contains("MASQUERADE"),
        "{left}"
    );
    assert!(
        nat(&w.machines[1]).contains("MASQUERADE"),
        "the others keep theirs"
    );
}
