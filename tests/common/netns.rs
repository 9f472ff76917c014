//! Test machines with a network of their own: a bridge in the host's namespace, and per
//! machine a network namespace joined to it by a veth pair. Processes enter a machine
//! with `nsenter --net=/var/run/netns/NAME` (not `ip netns exec`, which remounts /sys
//! and hides the cgroups). Everything made here is removed on drop, a failed test's
//! included, and names carry the test process's id so runs never share them; a
//! leftover of a killed run under the same names is removed before use.

use std::process::Command;

/// Runs `ip ARGS`, panicking with its words when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2's ip must be installed");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip ARGS`, its failure ignored (removing what may not exist).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).output();
}

/// The lease a flannel subnet file names: (`10.x.y.0/24`, its first address `10.x.y.1`).
/// `None` while the file is not there (the machine has no lease yet).
pub fn lease_in(path: &std::path::Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))?;
    let (gw, len) = v.split_once('/')?;
    Some((
        format!("{}.0/{len}", gw.rsplit_once('.')?.0),
        gw.to_string(),
    ))
}

/// A per-process tag for names (interface names have at most 15 characters).
pub fn tag() -> String {
    format!("{:x}", std::process::id() % 0xffff)
}

/// A bridge on the host with an address: the test network's underlay.
pub struct Bridge {
    pub name: String,
    /// The bridge's own address, without its prefix length.
    pub addr: String,
    forwarding: bool,
}

impl Bridge {
    /// `cidr` is the bridge's address with its prefix, such as `10.77.1.1/24`.
    pub fn new(name: &str, cidr: &str) -> Self {
        ip_quiet(&["link", "del", name]);
        ip(&["link", "add", name, "type", "bridge"]);
        ip(&["addr", "add", cidr, "dev", name]);
        ip(&["link", "set", name, "up"]);
        let addr = cidr.split('/').next().unwrap_or(cidr).to_string();
        Self {
            name: name.to_string(),
            addr,
            forwarding: false,
        }
    }

    /// Lets packets between the machines on this bridge through the host's FORWARD
    /// chain: Docker's engine sets its policy to DROP and `br_netfilter` sends bridged
    /// frames through it, so machine-to-machine packets that are not for the bridge's
    /// own address (a routed container subnet) would be dropped. Removed on drop.
    pub fn allow_forwarding(&mut self) {
        let rule = [
            "FORWARD", "-i", &self.name, "-o", &self.name, "-j", "ACCEPT",
        ];
        let out = Command::new("iptables")
            .arg("-I")
            .args(rule)
            .output()
            .expect("iptables must be installed (scripts/test-all installs it)");
        assert!(
            out.status.success(),
            "iptables -I {}: {out:?}",
            rule.join(" ")
        );
        self.forwarding = true;
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if self.forwarding {
            let rule = [
                "FORWARD", "-i", &self.name, "-o", &self.name, "-j", "ACCEPT",
            ];
            let _ = Command::new("iptables").arg("-D").args(rule).output();
        }
        ip_quiet(&["link", "del", &self.name]);
    }
}

/// A machine: a network namespace on the bridge, with one address.
pub struct Netns {
    pub name: String,
    /// The host's end of the veth pair: down, the machine is cut off.
    pub host_end: String,
    pub addr: String,
}

impl Netns {
    /// `cidr`: the machine's address with its prefix (`10.77.1.2/24`); its default
    /// route goes through the bridge's address.
    pub fn new(name: &str, bridge: &Bridge, cidr: &str) -> Self {
        let host_end = format!("{name}h");
        let inner = format!("{name}n");
        ip_quiet(&["netns", "del", name]);
        ip_quiet(&["link", "del", &host_end]);
        ip(&["netns", "add", name]);
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", name]);
        ip(&["link", "set", &host_end, "master", &bridge.name]);
        ip(&["link", "set", &host_end, "up"]);
        ip(&["-n", name, "addr", "add", cidr, "dev", &inner]);
        ip(&["-n", name, "link", "set", &inner, "up"]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ip(&["-n", name, "route", "add", "default", "via", &bridge.addr]);
        Self {
            name: name.to_string(),
            host_end,
            addr: cidr.split('/').next().unwrap_or(cidr).to_string(),
        }
    }

    /// A bridge `cbr0` holding `gw_cidr` (a lease's first address), as Docker's would
    /// with `--bip`: made again if it is there.
    pub fn hold_address(&self, gw_cidr: &str) {
        let n = &self.name;
        ip_quiet(&["-n", n, "link", "del", "cbr0"]);
        ip(&["-n", n, "link", "add", "cbr0", "type", "bridge"]);
        ip(&["-n", n, "addr", "add", gw_cidr, "dev", "cbr0"]);
        ip(&["-n", n, "link", "set", "cbr0", "up"]);
    }

    /// `program` to be run inside this machine's network namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        c
    }

    /// Cuts the machine's link: nothing reaches it and nothing leaves it (its processes,
    /// its Docker socket and the host's engine are untouched).
    pub fn cut(&self) {
        ip(&["link", "set", &self.host_end, "down"]);
    }

    pub fn heal(&self) {
        ip(&["link", "set", &self.host_end, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip_quiet(&["netns", "del", &self.name]);
        ip_quiet(&["link", "del", &self.host_end]);
    }
}

/// A Docker Engine of a machine's own, in its network namespace: its own data root, exec
/// root, pid file, socket and containerd namespace (the host's containerd is shared).
/// Stopped on drop (its containers with it) and its directories removed.
pub struct Dockerd {
    pub sock: String,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl Dockerd {
    /// Starts it in `ns`, under `dir`, and loads `images` from the host's engine.
    pub fn start(ns: &Netns, dir: &std::path::Path, images: &[&str]) -> Self {
        let dir = dir.join(format!("docker-{}", ns.name));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("daemon.json"), "{}").unwrap();
        let sock = format!("unix://{}", dir.join("docker.sock").display());
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let d = |p: &str| dir.join(p).display().to_string();
        let child = ns
            .command("dockerd")
            .args(["--data-root", &d("data"), "--exec-root", &d("exec")])
            .args([
                "--pidfile",
                &d("docker.pid"),
                "--config-file",
                &d("daemon.json"),
            ])
            .args(["-H", &sock, "--bridge=none"])
            .args(["--containerd-namespace", &format!("fl-{}", ns.name)])
            .args([
                "--containerd-plugins-namespace",
                &format!("fl-{}-p", ns.name),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd starts");
        let me = Self {
            sock,
            dir,
            child: Some(child),
        };
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !me.docker(&["info"]).status.success() {
            assert!(
                std::time::Instant::now() < end,
                "dockerd in {}: {}",
                ns.name,
                me.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        me.load(images);
        me
    }

    fn load(&self, images: &[&str]) {
        let save = Command::new("docker")
            .arg("save")
            .args(images)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("docker save");
        let mut save = save;
        let out = Command::new("docker")
            .args(["-H", &self.sock, "load"])
            .stdin(save.stdout.take().expect("docker save's output"))
            .output()
            .expect("docker load");
        assert!(save.wait().is_ok_and(|s| s.success()), "docker save failed");
        assert!(out.status.success(), "docker load: {out:?}");
    }

    /// `docker ARGS` against this engine.
    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .args(["-H", &self.sock])
            .args(args)
            .output()
            .expect("the docker CLI runs")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: dockerd stops its containers before it exits.
            let _ = Command::new("kill").arg(c.id().to_string()).output();
            let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while std::time::Instant::now() < end {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Overlay mounts of a killed daemon would keep the directory busy.
        let _ = Command::new("umount")
            .args(["-R", "-l"])
            .arg(self.dir.join("data"))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
