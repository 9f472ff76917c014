//! The cluster network with Docker, per backend (host-gw, vxlan, wireguard), on machines that have
//! networks and Docker Engines of their own: three network namespaces on a bridge, each running its own `dockerd` and
//! `flotilla agent --network`, one member on the bridge's address. The seed's
//! apache@.service, as written, runs on each machine and its container gets a cluster
//! address from that machine's lease (the agent's Docker network); a sidekick beside it
//! announces that address; the seed's upstream template renders the three; a client
//! container on another machine fetches the page from each, and pings it.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod common;

use common::netns::{tag, Bridge, Dockerd, Netns};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGES: &[&str] = &["coreos/apache", "jpweb/nginx-presence", "flotilla/busybox"];

/// The seed's sidekick pattern, in the app's network: it announces the app's cluster
/// address (the presence image's own address, and port 80).
fn presence(member: &str) -> String {
    format!(
        "[Unit]
Description=Announce apache@%i in /services/sweetapp
BindsTo=apache@%i.service
After=apache@%i.service

[Service]
ExecStartPre=-/usr/bin/docker rm -f sweetapp-presence-%i
ExecStart=/usr/bin/docker run --rm --name sweetapp-presence-%i --net container:apache1 -e ETCD_ENDPOINT={member} -e PRESENCE_KEY=/services/sweetapp/%i -e PRESENCE_PORT=80 -e PRESENCE_TTL=20 -e PRESENCE_INTERVAL=2 jpweb/nginx-presence
ExecStop=/usr/bin/docker stop sweetapp-presence-%i

[X-Fleet]
MachineOf=apache@%i.service
"
    )
}

/// The seed's upstream template.
const UPSTREAM: &str = "upstream sweetapp_pool {
    {{ range getvs \"/services/sweetapp/*\" }}
        server {{ . }};
    {{ end }}
}
";

/// One machine. Fields drop in order: the agent, then the engine, then the namespace.
struct Machine {
    agent: Option<Child>,
    docker: Dockerd,
    ns: Netns,
    dir: PathBuf,
}

impl Machine {
    fn start_agent(&mut self, member: &str) {
        let name = &self.ns.name;
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let mut cmd = self.ns.command(env!("CARGO_BIN_EXE_flotilla"));
        cmd.args(["agent", "--network"])
            .arg(format!("--endpoints={member}"))
            .arg(format!("--listen=http://{}:2391", self.ns.addr))
            .arg(format!("--machine-id={name}"))
            .arg(format!("--public-ip={}", self.ns.addr))
            .arg(format!("--data-dir={}", self.dir.join(name).display()))
            .arg(format!("--subnet-file={}", self.subnet_file().display()))
            .arg(format!("--docker-host={}", self.docker.sock))
            .arg("--agent-ttl=10s")
            .arg("--dns-addr=0.0.0.0:53")
            .env("FLOTILLA_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        self.agent = Some(cmd.spawn().expect("flotilla agent starts"));
    }

    fn subnet_file(&self) -> PathBuf {
        self.dir.join(format!("{}.env", self.ns.name))
    }

    /// Routes and packet-filter rules, for failure messages.
    fn tables(&self) -> String {
        let run = |prog: &str, args: &[&str]| {
            let out = self.ns.command(prog).args(args).output().unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        format!(
            "--- {} routes:\n{}--- filter:\n{}--- nat:\n{}",
            self.ns.name,
            run("ip", &["route"]),
            run("iptables", &["-S"]),
            run("iptables", &["-t", "nat", "-S"])
        )
    }

    fn log(&self) -> String {
        let agent = std::fs::read_to_string(self.dir.join(format!("{}.log", self.ns.name)));
        format!(
            "--- {} agent:\n{}\n--- its dockerd (tail):\n{}",
            self.ns.name,
            agent.unwrap_or_default(),
            tail(&self.docker.log(), 15)
        )
    }

    /// `FLANNEL_SUBNET=10.x.y.1/24` → `10.x.y.` (the lease's /24 prefix).
    fn lease_prefix(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.subnet_file()).ok()?;
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))?;
        let gw = v.split('/').next()?;
        Some(gw.rsplit_once('.')?.0.to_string() + ".")
    }

    /// The cluster address of container `name`, if it runs on the cluster network.
    fn address_of(&self, name: &str) -> Option<String> {
        let f = "{{with index .NetworkSettings.Networks \"flotilla\"}}{{.IPAddress}}{{end}}";
        let out = self.docker.docker(&["inspect", "-f", f, name]);
        let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !ip.is_empty()).then_some(ip)
    }

    /// Runs a throwaway client container on the cluster network.
    fn client(&self, cmd: &[&str]) -> std::process::Output {
        let mut args = vec!["run", "--rm", "--network", "flotilla", "flotilla/busybox"];
        args.extend(cmd);
        self.docker.docker(&args)
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A shell line that fetches `/` from `host:port` (busybox-static's wget crashes in a
/// container without the libraries glibc's resolver loads; nc needs none).
fn http_get(host_port: &str) -> String {
    let (host, port) = host_port.rsplit_once(':').unwrap();
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {host} {port}")
}

fn flotilla(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(args)
        .output()
        .unwrap()
}

fn eventually(
    what: &str,
    within: Duration,
    logs: impl Fn() -> String,
    mut ok: impl FnMut() -> bool,
) {
    let end = Instant::now() + within;
    while !ok() {
        assert!(
            Instant::now() < end,
            "{what}: not within {within:?}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn write_units(dir: &Path, member: &str) -> (PathBuf, PathBuf) {
    let apache = dir.join("apache@.service");
    let sidekick = dir.join("sweetapp-presence@.service");
    std::fs::write(&apache, APACHE).unwrap();
    std::fs::write(&sidekick, presence(member)).unwrap();
    (apache, sidekick)
}

/// confd's layout for the seed's template, rendered once against `member` (or why not).
fn render_upstream(dir: &Path, member: &str) -> String {
    let confdir = dir.join("confd");
    std::fs::create_dir_all(confdir.join("conf.d")).unwrap();
    std::fs::create_dir_all(confdir.join("templates")).unwrap();
    std::fs::write(confdir.join("templates/upstream.tmpl"), UPSTREAM).unwrap();
    let dest = dir.join("upstream.conf");
    let toml = format!(
        "[template]\nsrc = \"upstream.tmpl\"\ndest = \"{}\"\nkeys = [\"/services/sweetapp\"]\n",
        dest.display()
    );
    std::fs::write(confdir.join("conf.d/upstream.toml"), toml).unwrap();
    let out = flotilla(&[
        "confd",
        "--onetime",
        &format!("--confdir={}", confdir.display()),
        &format!("--node={member}"),
    ]);
    // Before the first announcement the keys are not there: confd refuses to render.
    if !out.status.success() {
        return String::from_utf8_lossy(&out.stderr).into_owned();
    }
    std::fs::read_to_string(dest).unwrap()
}

/// `server a.b.c.d:80;` lines of a rendered upstream.
fn servers(upstream: &str) -> Vec<String> {
    upstream
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .map(|s| s.trim_end_matches(';').to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_host_gw_the_seeds_units_get_cluster_addresses_and_reach_each_other() {
    seeds_units_across_machines('h', "host-gw", 203).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_vxlan_the_seeds_units_get_cluster_addresses_and_reach_each_other() {
    seeds_units_across_machines('v', "vxlan", 204).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_wireguard_the_seeds_units_get_cluster_addresses_and_reach_each_other() {
    seeds_units_across_machines('w', "wireguard", 205).await;
}

/// The network `10.<net>.0.0/16` on `backend`; `letter` keeps the tests' names apart.
async fn seeds_units_across_machines(letter: char, backend: &str, net: u8) {
    ensure_images();
    let t = format!("{letter}{}", tag());
    let cidr = format!("10.{net}.0.0/16");
    let under = match letter {
        'h' => 83,
        'w' => 86,
        _ => 84,
    };
    let octet = 1 + std::process::id() % 250;
    let mut bridge = Bridge::new(&format!("fld{t}"), &format!("10.{under}.{octet}.1/24"));
    bridge.allow_forwarding();
    let mut cl = Cluster::new(1, &[]);
    let member = format!("http://{}:{}", bridge.addr, free_port());
    cl.nodes[0].client_url = member.clone();
    cl.nodes[0].start();
    wait_healthy(&client(), &member).await;
    let ep = format!("--endpoints={member}");
    let out = flotilla(&["net", &ep, "init", &cidr, "--backend", backend]);
    assert!(out.status.success(), "net init: {out:?}");
    let dir = cl.dir.path().to_path_buf();
    let mut machines: Vec<Machine> = (0..3)
        .map(|i| {
            let ns = Netns::new(
                &format!("fld{i}{t}"),
                &bridge,
                &format!("10.{under}.{octet}.{}/24", 10 + i),
            );
            let docker = Dockerd::start(&ns, &dir, IMAGES);
            Machine {
                agent: None,
                docker,
                ns,
                dir: dir.clone(),
            }
        })
        .collect();
    for m in &mut machines {
        m.start_agent(&member);
    }
    let logs = || {
        let mut s = cl.logs();
        for m in &machines {
            s += &m.log();
        }
        s
    };

    // The seed's unit and its sidekick, three instances: one per machine (Conflicts).
    let (apache, sidekick) = write_units(&dir, &member);
    let fleet = format!("--endpoint={member}");
    let mut args = vec!["units".to_string(), fleet.clone(), "submit".into()];
    args.extend([apache.display().to_string(), sidekick.display().to_string()]);
    let out = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "submit: {out:?}");
    let instances = [
        "apache@1.service",
        "apache@2.service",
        "apache@3.service",
        "sweetapp-presence@1.service",
        "sweetapp-presence@2.service",
        "sweetapp-presence@3.service",
    ];
    let mut start = vec!["units", &fleet, "start", "--no-block"];
    start.extend(instances);
    let out = flotilla(&start);
    assert!(out.status.success(), "start: {out:?}\n{}", logs());

    // Each machine's apache1 runs on the cluster network, inside that machine's lease.
    eventually(
        "apache1 on every machine's lease",
        Duration::from_secs(90),
        logs,
        || {
            machines
                .iter()
                .all(|m| match (m.lease_prefix(), m.address_of("apache1")) {
                    (Some(lease), Some(ip)) => ip.starts_with(&lease),
                    _ => false,
                })
        },
    );
    let addrs: Vec<String> = machines
        .iter()
        .map(|m| m.address_of("apache1").unwrap())
        .collect();

    // The sidekicks announce them; the seed's template lists them.
    let mut upstream = String::new();
    eventually(
        "the upstream lists three cluster addresses",
        Duration::from_secs(60),
        logs,
        || {
            upstream = render_upstream(&dir, &member);
            let mut got = servers(&upstream);
            got.sort();
            let mut want: Vec<String> = addrs.iter().map(|a| format!("{a}:80")).collect();
            want.sort();
            got == want
        },
    );

    // Names: in each machine's apache container (its resolver is the node it runs on,
    // through the network's gateway) the template's name lists the three cluster
    // addresses, and an instance's name one of them.
    let lookup = |m: &Machine, name: &str| {
        let out = m.docker.docker(&["exec", "apache1", "nslookup", name]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dns_logs = || {
        let m = &machines[0];
        let dns = m
            .docker
            .docker(&["inspect", "-f", "{{.HostConfig.Dns}}", "apache1"]);
        let states = Command::new("curl")
            .args([
                "-s",
                &format!("{member}/v2/keys/_flotilla/states?recursive=true"),
            ])
            .output()
            .unwrap();
        format!(
            "nslookup in {}: {}\nits --dns: {}\nstates: {}\n{}",
            m.ns.name,
            lookup(m, "apache.flotilla.local"),
            String::from_utf8_lossy(&dns.stdout),
            String::from_utf8_lossy(&states.stdout),
            logs()
        )
    };
    eventually(
        "apache.flotilla.local resolves in every container",
        Duration::from_secs(60),
        dns_logs,
        || {
            machines.iter().all(|m| {
                addrs
                    .iter()
                    .all(|a| lookup(m, "apache.flotilla.local").contains(a.as_str()))
            })
        },
    );
    let one = lookup(&machines[0], "apache@2.flotilla.local");
    let named: Vec<&String> = addrs.iter().filter(|a| one.contains(a.as_str())).collect();
    assert_eq!(named.len(), 1, "apache@2 is one instance: {one}");
    let machine = lookup(
        &machines[2],
        &format!("{}.machine.flotilla.local", machines[1].ns.name),
    );
    assert!(
        machine.contains(&machines[1].ns.addr),
        "a machine by id: {machine}"
    );

    // Cluster traffic keeps its source: flotilla's nat chain sits above the masquerade
    // Docker put at the head of POSTROUTING when it made the network (the repair pass
    // moves it back), and forwarding into the network is accepted.
    eventually(
        "the filter rules in place",
        Duration::from_secs(25),
        logs,
        || {
            machines.iter().all(|m| {
                let t = m.tables();
                let nat_first = t
                    .lines()
                    .find(|l| l.starts_with("-A POSTROUTING"))
                    .is_some_and(|l| l == "-A POSTROUTING -j FLOTILLA-POSTRTG");
                nat_first && t.contains(&format!("-A FLOTILLA-FWD -d {cidr} -j ACCEPT"))
            })
        },
    );

    // From each machine, a client container reaches the others' pages and pings them.
    for (i, m) in machines.iter().enumerate() {
        for server in servers(&upstream) {
            let ip = server.trim_end_matches(":80");
            if addrs[i] == ip {
                continue;
            }
            let page = m.client(&["sh", "-c", &http_get(&server)]);
            assert!(
                String::from_utf8_lossy(&page.stdout).contains("It works!"),
                "{} cannot fetch http://{server}/: {page:?}\n{}\n{}",
                m.ns.name,
                logs(),
                machines.iter().map(Machine::tables).collect::<String>()
            );
            let ping = m.client(&["ping", "-c", "1", "-W", "3", ip]);
            assert!(
                ping.status.success(),
                "{} cannot ping {ip}: {ping:?}",
                m.ns.name
            );
        }
    }

    // -p still publishes: the seed's port 8081 on each machine's own address.
    for m in &machines {
        let page = machines[0].client(&["sh", "-c", &http_get(&format!("{}:8081", m.ns.addr))]);
        assert!(
            String::from_utf8_lossy(&page.stdout).contains("It works!"),
            "{}:8081 is not published: {page:?}",
            m.ns.addr
        );
    }
}

/// The node image (`scripts/build-image`: the binary, its libraries and iptables) runs the
/// network in a container with host networking, `NET_ADMIN` and the TUN device: on two
/// machines, each a netns with its own engine, `flotilla agent --network` on wireguard
/// takes a lease, routes to the other through `flannel-wg`, sets the packet-filter rules
/// (iptables inside the image), and the two subnets reach each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_image_runs_the_network_with_host_networking_and_net_admin() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(format!("{root}/scripts/build-image"))
        .env("FLOTILLA", env!("CARGO_BIN_EXE_flotilla"))
        .output()
        .expect("scripts/build-image");
    assert!(out.status.success(), "scripts/build-image: {out:?}");
    let t = format!("i{}", tag());
    let octet = 1 + std::process::id() % 250;
    let mut bridge = Bridge::new(&format!("fld{t}"), &format!("10.87.{octet}.1/24"));
    bridge.allow_forwarding();
    let mut cl = Cluster::new(1, &[]);
    let member = format!("http://{}:{}", bridge.addr, free_port());
    cl.nodes[0].client_url = member.clone();
    cl.nodes[0].start();
    wait_healthy(&client(), &member).await;
    let out = flotilla(&[
        "net",
        &format!("--endpoints={member}"),
        "init",
        "10.207.0.0/16",
        "--backend",
        "wireguard",
    ]);
    assert!(out.status.success(), "net init: {out:?}");
    let dir = cl.dir.path().to_path_buf();
    let machines: Vec<(Netns, Dockerd)> = (0..2)
        .map(|i| {
            let ns = Netns::new(
                &format!("fld{i}{t}"),
                &bridge,
                &format!("10.87.{octet}.{}/24", 10 + i),
            );
            let docker = Dockerd::start(&ns, &dir, &["flotilla:local"]);
            (ns, docker)
        })
        .collect();
    let data = |ns: &Netns| dir.join(format!("data-{}", ns.name));
    for (ns, docker) in &machines {
        let d = data(ns);
        std::fs::create_dir_all(&d).unwrap();
        let vol = format!("{}:/data", d.display());
        let out = docker.docker(&[
            "run",
            "-d",
            "--name",
            "flotilla",
            "--network",
            "host",
            "--cap-add",
            "NET_ADMIN",
            "--device",
            "/dev/net/tun",
            "-v",
            &vol,
            "flotilla:local",
            "agent",
            "--network",
            &format!("--endpoints={member}"),
            &format!("--listen=http://{}:2391", ns.addr),
            &format!("--machine-id={}", ns.name),
            &format!("--public-ip={}", ns.addr),
            "--data-dir=/data",
            "--subnet-file=/data/subnet.env",
            "--docker-network=none",
        ]);
        assert!(out.status.success(), "docker run: {out:?}");
    }
    let logs = || {
        machines
            .iter()
            .map(|(ns, docker)| {
                let l = docker.docker(&["logs", "flotilla"]);
                format!(
                    "--- {}:\n{}{}",
                    ns.name,
                    String::from_utf8_lossy(&l.stdout),
                    String::from_utf8_lossy(&l.stderr)
                )
            })
            .collect::<String>()
    };
    let lease = |ns: &Netns| common::netns::lease_in(&data(ns).join("subnet.env"));
    let run = |ns: &Netns, prog: &str, args: &[&str]| {
        let out = ns.command(prog).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually(
        "both machines leased and routed",
        Duration::from_secs(30),
        logs,
        || {
            let (Some(a), Some(b)) = (lease(&machines[0].0), lease(&machines[1].0)) else {
                return false;
            };
            run(&machines[0].0, "ip", &["route"]).contains(&format!("{} via", b.0))
                && run(&machines[1].0, "ip", &["route"]).contains(&format!("{} via", a.0))
        },
    );
    for (ns, _) in &machines {
        let r = run(ns, "ip", &["route"]);
        assert!(r.contains("dev flannel-wg"), "{r}");
        let rules = run(ns, "iptables", &["-S"]);
        assert!(
            rules.contains("-A FLOTILLA-FWD -d 10.207.0.0/16 -j ACCEPT"),
            "iptables in the image set the rules: {rules}"
        );
    }
    let (a, b) = (
        lease(&machines[0].0).unwrap(),
        lease(&machines[1].0).unwrap(),
    );
    for ((ns, _), (net, gw)) in machines.iter().zip([&a, &b]) {
        let len = net.split('/').nth(1).unwrap();
        ns.hold_address(&format!("{gw}/{len}"));
    }
    let ping = machines[0]
        .0
        .command("busybox")
        .args(["ping", "-c", "1", "-W", "3", "-I", &a.1, &b.1])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "{} cannot reach {} through the image's network: {ping:?}\n{}",
        a.1,
        b.1,
        logs()
    );
}
