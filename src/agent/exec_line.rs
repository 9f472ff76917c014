//! Exec lines, interpreted rather than shelled out: a systemd `Exec*=` value becomes an
//! argv (systemd's quoting, escapes and `$VAR`/`${VAR}` expansion), and the argv an
//! operation — a container operation for `docker …`, a store operation for `etcdctl …`,
//! anything else a host command. Pure: tested as tables.

use std::collections::BTreeMap;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct ExecError(pub String);

fn fail<T>(m: impl Into<String>) -> Result<T, ExecError> {
    Err(ExecError(m.into()))
}

/// One `Exec*=` line after splitting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecLine {
    /// `-` prefix: a failure is logged and ignored.
    pub ignore_failure: bool,
    pub argv: Vec<String>,
}

/// Splits an Exec line as systemd does: prefixes (`-`, `@`, `:`, `+`, `!`), words
/// separated by blanks, single and double quotes, C escapes, `\` + newline as a blank;
/// then `${VAR}` inside a word is replaced by the value, and a word that is exactly
/// `$VAR` becomes the value split into words (unless `:` turned expansion off).
pub fn split_exec(line: &str, env: &BTreeMap<String, String>) -> Result<ExecLine, ExecError> {
    let mut rest = line.trim_start();
    let (mut ignore_failure, mut argv0_override, mut expand) = (false, false, true);
    while let Some(c) = rest.chars().next() {
        match c {
            '-' => ignore_failure = true,
            '@' => argv0_override = true,
            ':' => expand = false,
            '+' | '!' => {}
            _ => break,
        }
        rest = &rest[1..];
    }
    // A continuation (`\` and a newline, kept by the unit parser) is a blank.
    let words = split_words(&rest.replace("\\\n", " "))?;
    let mut argv = vec![];
    for w in words {
        if !expand {
            argv.push(w);
        } else if let Some(name) = whole_var(&w) {
            // `$VAR` alone: the value's words.
            argv.extend(
                env.get(name)
                    .map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
                    .unwrap_or_default(),
            );
        } else {
            argv.push(expand_braced(&w, env));
        }
    }
    if argv0_override {
        // `@cmd argv0 args…`: systemd runs cmd with argv[0] set; the name is all we use.
        if argv.len() < 2 {
            return fail("'@' prefix needs a command and its argv[0]");
        }
        argv.remove(1);
    }
    if argv.is_empty() {
        return fail("empty command line");
    }
    Ok(ExecLine {
        ignore_failure,
        argv,
    })
}

/// `$NAME` as a whole word (systemd's word-splitting form).
fn whole_var(w: &str) -> Option<&str> {
    let n = w.strip_prefix('$')?;
    (!n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')).then_some(n)
}

/// `${NAME}` anywhere in a word becomes the value (unset: empty); `$$` a `$`.
fn expand_braced(w: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(w.len());
    let mut rest = w;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('$') {
            out.push('$');
            rest = a;
        } else if let Some((name, tail)) = after.strip_prefix('{').and_then(|a| a.split_once('}')) {
            out.push_str(env.get(name).map(String::as_str).unwrap_or(""));
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Words with quotes removed and escapes resolved. (systemd expands variables after
/// this, so a quoted `"$VAR"` is split like a bare one.)
pub(crate) fn split_words(s: &str) -> Result<Vec<String>, ExecError> {
    let mut words = vec![];
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(words);
        }
        let mut w = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            match c {
                '\\' => match chars.next() {
                    Some(e) => w.push(unescape(e)),
                    None => return fail("command line ends in a lone backslash"),
                },
                '\'' | '"' => loop {
                    match chars.next() {
                        None => return fail(format!("unterminated {c} quote")),
                        Some(q) if q == c => break,
                        Some('\\') if c == '"' => match chars.next() {
                            Some(e) => w.push(unescape(e)),
                            None => return fail("unterminated \" quote"),
                        },
                        Some(x) => w.push(x),
                    }
                },
                c => w.push(c),
            }
        }
        words.push(w);
    }
}

fn unescape(e: char) -> char {
    match e {
        'n' => '\n',
        't' => '\t',
        'r' => '\r',
        'a' => '\x07',
        'b' => '\x08',
        'f' => '\x0c',
        'v' => '\x0b',
        other => other,
    }
}

/// What an Exec line does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Docker(DockerOp),
    Kv(KvOp),
    /// Any other command: a host process (only with `--allow-host-commands`).
    Host(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerOp {
    Run(Box<RunSpec>),
    Pull {
        image: String,
    },
    Kill {
        names: Vec<String>,
        signal: String,
    },
    Rm {
        names: Vec<String>,
        force: bool,
    },
    Stop {
        names: Vec<String>,
        timeout_s: Option<u32>,
    },
    Start {
        names: Vec<String>,
    },
    Restart {
        names: Vec<String>,
        timeout_s: Option<u32>,
    },
}

/// A published port: `[ip:][host:]container[/proto]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub ip: Option<String>,
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub proto: String,
}

/// `docker run`'s options, as the agent understands them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSpec {
    pub name: Option<String>,
    pub image: String,
    pub cmd: Vec<String>,
    pub entrypoint: Option<String>,
    /// `-e K=V`, or `-e K` (the value from the unit's environment).
    pub env: Vec<(String, Option<String>)>,
    pub env_files: Vec<String>,
    pub publish: Vec<Publish>,
    pub volumes: Vec<String>,
    pub network: Option<String>,
    pub labels: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub restart: Option<String>,
    pub privileged: bool,
    pub rm: bool,
    pub detach: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    /// `set`, `mk` (`exist: Some(false)`), `update` (`Some(true)`), with compare options.
    Set {
        key: String,
        value: String,
        ttl_s: Option<u64>,
        exist: Option<bool>,
        prev_value: Option<String>,
        prev_index: Option<u64>,
    },
    /// `mkdir` (`exist: Some(false)`), `setdir` (`None`), `updatedir` (`Some(true)`).
    Dir {
        key: String,
        ttl_s: Option<u64>,
        exist: Option<bool>,
    },
    Rm {
        key: String,
        dir: bool,
        recursive: bool,
        prev_value: Option<String>,
        prev_index: Option<u64>,
    },
    Rmdir {
        key: String,
    },
    Get {
        key: String,
    },
    Ls {
        key: String,
        recursive: bool,
    },
}

/// The program an argv names (`/usr/bin/docker` → `docker`).
fn program(argv0: &str) -> &str {
    argv0.rsplit('/').next().unwrap_or(argv0)
}

/// What `argv` does.
pub fn parse_op(argv: &[String]) -> Result<Op, ExecError> {
    let Some(first) = argv.first() else {
        return fail("empty command line");
    };
    match program(first) {
        "docker" => docker(&argv[1..]).map(Op::Docker),
        "etcdctl" => etcdctl(&argv[1..]).map(Op::Kv),
        _ => Ok(Op::Host(argv.to_vec())),
    }
}

/// An argument cursor: `--flag value`, `--flag=value`, `-f value`, `-fvalue`.
struct Args<'a> {
    args: &'a [String],
    i: usize,
}

impl<'a> Args<'a> {
    fn value(&mut self, flag: &str, inline: Option<&'a str>) -> Result<&'a str, ExecError> {
        if let Some(v) = inline {
            return Ok(v);
        }
        self.i += 1;
        match self.args.get(self.i) {
            Some(v) => Ok(v),
            None => fail(format!("flag {flag} needs a value")),
        }
    }
}

/// Splits `--name=v` into (`--name`, `Some("v")`); `-pVALUE` (a short flag with its
/// value attached) into (`-p`, `Some("VALUE")`) when `-p` takes a value.
fn split_flag<'a>(arg: &'a str, short_with_value: &str) -> (&'a str, Option<&'a str>) {
    if arg.starts_with("--") {
        return match arg.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (arg, None),
        };
    }
    if arg.len() > 2 && short_with_value.contains(&arg[1..2]) {
        let v = arg[2..].strip_prefix('=').unwrap_or(&arg[2..]);
        return (&arg[..2], Some(v));
    }
    (arg, None)
}

fn docker(args: &[String]) -> Result<DockerOp, ExecError> {
    let Some(sub) = args.first() else {
        return fail("docker: no command given");
    };
    if sub.starts_with('-') {
        return fail(format!("docker: unsupported global flag {sub}"));
    }
    let rest = &args[1..];
    match sub.as_str() {
        "run" => docker_run(rest).map(|r| DockerOp::Run(Box::new(r))),
        "pull" => {
            let (flags, names) = simple_flags("docker pull", rest, &["-q", "--quiet"], &[])?;
            drop(flags);
            match names.as_slice() {
                [image] => Ok(DockerOp::Pull { image: image.clone() }),
                _ => fail("docker pull: exactly one image"),
            }
        }
        "kill" => {
            let (flags, names) = simple_flags("docker kill", rest, &[], &["-s", "--signal"])?;
            let signal = flags.get("-s").or(flags.get("--signal")).cloned().unwrap_or_else(|| "KILL".into());
            need_names("docker kill", &names)?;
            Ok(DockerOp::Kill { names, signal })
        }
        "rm" => {
            let (flags, names) = simple_flags("docker rm", rest, &["-f", "--force", "-v", "--volumes"], &[])?;
            need_names("docker rm", &names)?;
            let force = flags.contains_key("-f") || flags.contains_key("--force");
            Ok(DockerOp::Rm { names, force })
        }
        "stop" | "restart" => {
            let what = format!("docker {sub}");
            let (flags, names) = simple_flags(&what, rest, &[], &["-t", "--time"])?;
            need_names(&what, &names)?;
            let timeout_s = match flags.get("-t").or(flags.get("--time")) {
                Some(t) => Some(t.parse::<u32>().map_err(|_| ExecError(format!("{what}: bad -t {t:?}")))?),
                None => None,
            };
            Ok(if sub == "stop" {
                DockerOp::Stop { names, timeout_s }
            } else {
                DockerOp::Restart { names, timeout_s }
            })
        }
        "start" => {
            let (_, names) = simple_flags("docker start", rest, &["-a", "--attach", "-i", "--interactive"], &[])?;
            need_names("docker start", &names)?;
            Ok(DockerOp::Start { names })
        }
        other => fail(format!("docker {other}: not a command flotilla interprets (run, pull, kill, rm, stop, start, restart)")),
    }
}

fn need_names(what: &str, names: &[String]) -> Result<(), ExecError> {
    if names.is_empty() {
        return fail(format!("{what}: needs at least one container"));
    }
    Ok(())
}

/// Flags from `bools` and `valued` (anything else starting with `-` is an error), and the
/// positional arguments.
fn simple_flags(
    what: &str,
    args: &[String],
    bools: &[&str],
    valued: &[&str],
) -> Result<(BTreeMap<String, String>, Vec<String>), ExecError> {
    let shorts: String = valued
        .iter()
        .filter(|f| f.len() == 2)
        .map(|f| &f[1..])
        .collect();
    let mut a = Args { args, i: 0 };
    let (mut flags, mut pos) = (BTreeMap::new(), vec![]);
    while a.i < args.len() {
        let arg = &args[a.i];
        if arg.starts_with('-') && arg.len() > 1 {
            let (f, inline) = split_flag(arg, &shorts);
            if bools.contains(&f) {
                flags.insert(f.to_string(), String::new());
            } else if valued.contains(&f) {
                let v = a.value(f, inline)?;
                flags.insert(f.to_string(), v.to_string());
            } else {
                return fail(format!("{what}: unknown flag {f}"));
            }
        } else {
            pos.push(arg.clone());
        }
        a.i += 1;
    }
    Ok((flags, pos))
}

/// `docker run [OPTIONS] IMAGE [COMMAND] [ARG...]`: options stop at the image.
fn docker_run(args: &[String]) -> Result<RunSpec, ExecError> {
    const SHORT_VALUED: &str = "pevlwuhm";
    let mut r = RunSpec::default();
    let mut a = Args { args, i: 0 };
    while a.i < args.len() {
        let arg = &args[a.i];
        if !arg.starts_with('-') || arg == "-" {
            r.image = arg.clone();
            r.cmd = args[a.i + 1..].to_vec();
            return Ok(r);
        }
        if arg == "--" {
            a.i += 1;
            continue;
        }
        // Combined short booleans: -it, -di, -dit.
        if !arg.starts_with("--") && arg.len() > 2 && arg[1..].chars().all(|c| "dit".contains(c)) {
            r.detach |= arg.contains('d');
            a.i += 1;
            continue;
        }
        let (f, inline) = split_flag(arg, SHORT_VALUED);
        run_flag(&mut r, &mut a, f, inline)?;
        a.i += 1;
    }
    fail("docker run: no image given")
}

/// One `docker run` option (`f`, its value inline or next) into `r`.
fn run_flag<'a>(
    r: &mut RunSpec,
    a: &mut Args<'a>,
    f: &str,
    inline: Option<&'a str>,
) -> Result<(), ExecError> {
    match f {
        "--name" => r.name = Some(a.value(f, inline)?.to_string()),
        "-p" | "--publish" => r.publish.push(publish(a.value(f, inline)?)?),
        "-e" | "--env" => {
            let v = a.value(f, inline)?;
            r.env.push(match v.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (v.to_string(), None),
            });
        }
        "--env-file" => r.env_files.push(a.value(f, inline)?.to_string()),
        "--rm" => r.rm = true,
        "-d" | "--detach" => r.detach = true,
        "-i" | "--interactive" | "-t" | "--tty" => {}
        "-v" | "--volume" => r.volumes.push(a.value(f, inline)?.to_string()),
        "--net" | "--network" => r.network = Some(a.value(f, inline)?.to_string()),
        "-l" | "--label" => {
            let v = a.value(f, inline)?;
            let (k, v) = v.split_once('=').unwrap_or((v, ""));
            r.labels.push((k.to_string(), v.to_string()));
        }
        "--entrypoint" => r.entrypoint = Some(a.value(f, inline)?.to_string()),
        "-w" | "--workdir" => r.workdir = Some(a.value(f, inline)?.to_string()),
        "-u" | "--user" => r.user = Some(a.value(f, inline)?.to_string()),
        "-h" | "--hostname" => r.hostname = Some(a.value(f, inline)?.to_string()),
        "-m" | "--memory" => r.memory_bytes = Some(bytes(a.value(f, inline)?)?),
        "--cpus" => {
            let v = a.value(f, inline)?;
            let cpus: f64 = v
                .parse()
                .map_err(|_| ExecError(format!("docker run: bad --cpus {v:?}")))?;
            if !(cpus > 0.0 && cpus <= 1024.0) {
                return fail(format!("docker run: bad --cpus {v:?}"));
            }
            r.nano_cpus = Some((cpus * 1e9) as i64);
        }
        "--restart" => {
            let v = a.value(f, inline)?;
            let kind = v.split(':').next().unwrap_or("");
            if !["no", "always", "on-failure", "unless-stopped"].contains(&kind) {
                return fail(format!("docker run: bad --restart {v:?}"));
            }
            r.restart = Some(v.to_string());
        }
        "--privileged" => r.privileged = true,
        other => return fail(format!("docker run: unknown flag {other}")),
    }
    Ok(())
}

/// `[ip:][hostPort:]containerPort[/proto]`.
fn publish(v: &str) -> Result<Publish, ExecError> {
    let bad = || ExecError(format!("docker run: bad --publish {v:?}"));
    let (spec, proto) = match v.rsplit_once('/') {
        Some((s, p)) if p == "tcp" || p == "udp" || p == "sctp" => (s, p.to_string()),
        Some(_) => return Err(bad()),
        None => (v, "tcp".to_string()),
    };
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let port = |s: &str| s.parse::<u16>().map_err(|_| bad());
    let (ip, host, container) = match parts.as_slice() {
        [c] => (None, None, port(c)?),
        [c, h] => (None, Some(port(h)?), port(c)?),
        [c, h, ip] => (
            Some(ip.trim_start_matches('[').trim_end_matches(']').to_string()),
            if h.is_empty() { None } else { Some(port(h)?) },
            port(c)?,
        ),
        _ => return Err(bad()),
    };
    Ok(Publish {
        ip,
        host_port: host,
        container_port: container,
        proto,
    })
}

/// Docker's memory sizes: a number with an optional b/k/m/g suffix.
fn bytes(v: &str) -> Result<i64, ExecError> {
    let bad = || ExecError(format!("docker run: bad --memory {v:?}"));
    let lower = v.to_ascii_lowercase();
    let (num, mult) = match lower.trim_end_matches('b').chars().last() {
        Some('k') => (&lower[..lower.find('k').ok_or_else(bad)?], 1i64 << 10),
        Some('m') => (&lower[..lower.find('m').ok_or_else(bad)?], 1 << 20),
        Some('g') => (&lower[..lower.find('g').ok_or_else(bad)?], 1 << 30),
        _ => (lower.trim_end_matches('b'), 1),
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    if n.is_nan() || n <= 0.0 {
        return Err(bad());
    }
    Ok((n * mult as f64) as i64)
}

/// etcdctl (v2) commands on the store. Global flags that name endpoints are accepted
/// and ignored: the unit's machine reaches its own cluster.
/// etcdctl's own global flags (endpoints, TLS, output) are accepted and ignored: the agent
/// reaches the cluster it runs in. Returns where the command starts.
fn skip_global_flags(args: &[String]) -> Result<usize, ExecError> {
    const GLOBAL_VALUED: &[&str] = &[
        "--endpoints",
        "--endpoint",
        "--peers",
        "-C",
        "--timeout",
        "--total-timeout",
        "-o",
        "--output",
        "--ca-file",
        "--cert-file",
        "--key-file",
        "--username",
        "-u",
        "--discovery-srv",
        "-D",
    ];
    const GLOBAL_BOOL: &[&str] = &[
        "--debug",
        "--no-sync",
        "--insecure-skip-tls-verify",
        "--insecure-discovery",
    ];
    let mut i = 0;
    while i < args.len() && args[i].starts_with('-') {
        let (f, inline) = split_flag(&args[i], "CoDu");
        if GLOBAL_VALUED.contains(&f) {
            if inline.is_none() {
                i += 1;
            }
        } else if !GLOBAL_BOOL.contains(&f) {
            return fail(format!("etcdctl: unknown global flag {f}"));
        }
        i += 1;
    }
    Ok(i)
}

/// One etcdctl command's flags and positional arguments, read.
struct EtcdctlArgs {
    what: String,
    flags: BTreeMap<String, String>,
    pos: Vec<String>,
}

impl EtcdctlArgs {
    fn read(cmd: &str, rest: &[String]) -> Result<Self, ExecError> {
        const VALUED: &[&str] = &[
            "--ttl",
            "--swap-with-value",
            "--swap-with-index",
            "--with-value",
            "--with-index",
        ];
        const BOOLS: &[&str] = &[
            "--dir",
            "--recursive",
            "-r",
            "--sort",
            "-p",
            "--quorum",
            "-q",
        ];
        let what = format!("etcdctl {cmd}");
        let (flags, pos) = simple_flags(&what, rest, BOOLS, VALUED)?;
        Ok(EtcdctlArgs { what, flags, pos })
    }

    fn num(&self, k: &str) -> Result<Option<u64>, ExecError> {
        let parse = |v: &String| {
            v.parse::<u64>()
                .map_err(|_| ExecError(format!("{}: {k} {v:?} is not a number", self.what)))
        };
        self.flags.get(k).map(parse).transpose()
    }

    fn has(&self, k: &str) -> bool {
        self.flags.contains_key(k)
    }

    fn value(&self, k: &str) -> Option<String> {
        self.flags.get(k).cloned()
    }

    /// Refuses a flag this command does not take.
    fn allow(&self, ok: &[&str]) -> Result<(), ExecError> {
        match self.flags.keys().find(|k| !ok.contains(&k.as_str())) {
            Some(k) => fail(format!("{}: flag {k} does not apply", self.what)),
            None => Ok(()),
        }
    }

    fn key(&self) -> Result<String, ExecError> {
        match self.pos.as_slice() {
            [k] => Ok(k.clone()),
            _ => fail(format!("{}: expected KEY", self.what)),
        }
    }

    fn key_value(&self) -> Result<(String, String), ExecError> {
        match self.pos.as_slice() {
            [k, v] => Ok((k.clone(), v.clone())),
            _ => fail(format!("{}: expected KEY VALUE", self.what)),
        }
    }
}

fn etcdctl(args: &[String]) -> Result<KvOp, ExecError> {
    let i = skip_global_flags(args)?;
    let Some(cmd) = args.get(i) else {
        return fail("etcdctl: no command given");
    };
    etcdctl_op(cmd, &EtcdctlArgs::read(cmd, &args[i + 1..])?)
}

/// `mk`/`mkdir` create only, `update`/`updatedir` replace only, the rest either.
fn exist_rule(cmd: &str) -> Option<bool> {
    match cmd {
        "mk" | "mkdir" => Some(false),
        "update" | "updatedir" => Some(true),
        _ => None,
    }
}

fn etcdctl_op(cmd: &str, a: &EtcdctlArgs) -> Result<KvOp, ExecError> {
    let recursive = a.has("--recursive") || a.has("-r");
    Ok(match cmd {
        "set" | "mk" | "update" => {
            a.allow(&["--ttl", "--swap-with-value", "--swap-with-index"])?;
            let (key, value) = a.key_value()?;
            KvOp::Set {
                key,
                value,
                ttl_s: a.num("--ttl")?,
                exist: exist_rule(cmd),
                prev_value: a.value("--swap-with-value"),
                prev_index: a.num("--swap-with-index")?,
            }
        }
        "mkdir" | "setdir" | "updatedir" => {
            a.allow(&["--ttl"])?;
            KvOp::Dir { key: a.key()?, ttl_s: a.num("--ttl")?, exist: exist_rule(cmd) }
        }
        "rm" => {
            a.allow(&["--dir", "--recursive", "-r", "--with-value", "--with-index"])?;
            KvOp::Rm {
                key: a.key()?,
                dir: a.has("--dir"),
                recursive,
                prev_value: a.value("--with-value"),
                prev_index: a.num("--with-index")?,
            }
        }
        "rmdir" => {
            a.allow(&[])?;
            KvOp::Rmdir { key: a.key()? }
        }
        "get" => {
            a.allow(&["--quorum", "-q"])?;
            KvOp::Get { key: a.key()? }
        }
        "ls" => {
            a.allow(&["--recursive", "-r", "--sort", "-p", "--quorum", "-q"])?;
            let key = a.pos.first().cloned().unwrap_or_else(|| "/".into());
            KvOp::Ls { key, recursive }
        }
        other => return fail(format!("etcdctl {other}: not a command flotilla interprets (set, mk, update, rm, mkdir, rmdir, setdir, updatedir, get, ls)")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [
            ("A".to_string(), "x y".to_string()),
            ("B".to_string(), "one".to_string()),
        ]
        .into()
    }

    fn split(l: &str) -> Vec<String> {
        split_exec(l, &env()).unwrap().argv
    }

    #[test]
    fn splits_like_systemd() {
        assert_eq!(
            split("/bin/echo a  'b c' \"d \\\"e\\\"\""),
            ["/bin/echo", "a", "b c", "d \"e\""]
        );
        assert_eq!(
            split("echo $A ${A} x${B}y $$HOME"),
            ["echo", "x", "y", "x y", "xoney", "$HOME"]
        );
        assert_eq!(split("echo \"$A\" $UNSET end"), ["echo", "x", "y", "end"]);
        let l = split_exec("-/usr/bin/docker kill apache1", &env()).unwrap();
        assert!(l.ignore_failure);
        assert_eq!(l.argv, ["/usr/bin/docker", "kill", "apache1"]);
        let l = split_exec(":echo $A", &env()).unwrap();
        assert_eq!(l.argv, ["echo", "$A"]);
        assert_eq!(split("@/bin/sh mysh -c true"), ["/bin/sh", "-c", "true"]);
        assert_eq!(split("a \\\n b"), ["a", "b"]);
        assert!(split_exec("echo 'open", &env()).is_err());
        assert!(split_exec("-", &env()).is_err());
    }

    fn op(l: &str) -> Result<Op, ExecError> {
        parse_op(&split(l))
    }

    #[test]
    fn the_seed_apache_unit_lines() {
        assert_eq!(
            op("/usr/bin/docker kill apache1").unwrap(),
            Op::Docker(DockerOp::Kill {
                names: vec!["apache1".into()],
                signal: "KILL".into()
            })
        );
        assert_eq!(
            op("/usr/bin/docker rm apache1").unwrap(),
            Op::Docker(DockerOp::Rm {
                names: vec!["apache1".into()],
                force: false
            })
        );
        assert_eq!(
            op("/usr/bin/docker pull coreos/apache").unwrap(),
            Op::Docker(DockerOp::Pull {
                image: "coreos/apache".into()
            })
        );
        let Op::Docker(DockerOp::Run(r)) = op("/usr/bin/docker run --name apache1 -p 8081:80 coreos/apache /usr/sbin/httpd -D FOREGROUND").unwrap() else {
            panic!("run")
        };
        assert_eq!(r.name.as_deref(), Some("apache1"));
        assert_eq!(r.image, "coreos/apache");
        assert_eq!(r.cmd, ["/usr/sbin/httpd", "-D", "FOREGROUND"]);
        assert_eq!(
            r.publish,
            vec![Publish {
                ip: None,
                host_port: Some(8081),
                container_port: 80,
                proto: "tcp".into()
            }]
        );
        assert_eq!(
            op("/usr/bin/etcdctl set /domains/example.com/10.10.10.123:8081 run").unwrap(),
            Op::Kv(KvOp::Set {
                key: "/domains/example.com/10.10.10.123:8081".into(),
                value: "run".into(),
                ttl_s: None,
                exist: None,
                prev_value: None,
                prev_index: None
            })
        );
        assert_eq!(
            op("/usr/bin/docker stop apache1").unwrap(),
            Op::Docker(DockerOp::Stop {
                names: vec!["apache1".into()],
                timeout_s: None
            })
        );
        assert_eq!(
            op("/usr/bin/etcdctl rm /domains/example.com/10.10.10.123:8081").unwrap(),
            Op::Kv(KvOp::Rm {
                key: "/domains/example.com/10.10.10.123:8081".into(),
                dir: false,
                recursive: false,
                prev_value: None,
                prev_index: None
            })
        );
    }

    #[test]
    fn docker_run_flags() {
        let Op::Docker(DockerOp::Run(r)) = op("docker run --rm -d --name=web -p 127.0.0.2:8081:80/udp -p8443:443 -p 9000 -e A=1 -e B --env-file /e -v /a:/b:ro --net host -l k=v --entrypoint /bin/sh -w /srv -u 1000 -h box -m 512m --cpus 1.5 --restart on-failure:3 --privileged -it img:1 -c 'echo hi'").unwrap() else {
            panic!("run")
        };
        assert!(r.rm && r.detach && r.privileged);
        assert_eq!(r.name.as_deref(), Some("web"));
        assert_eq!(
            r.publish[0],
            Publish {
                ip: Some("127.0.0.2".into()),
                host_port: Some(8081),
                container_port: 80,
                proto: "udp".into()
            }
        );
        assert_eq!(r.publish[1].host_port, Some(8443));
        assert_eq!(
            r.publish[2],
            Publish {
                ip: None,
                host_port: None,
                container_port: 9000,
                proto: "tcp".into()
            }
        );
        assert_eq!(
            r.env,
            vec![("A".into(), Some("1".into())), ("B".into(), None)]
        );
        assert_eq!(r.env_files, ["/e"]);
        assert_eq!(r.volumes, ["/a:/b:ro"]);
        assert_eq!(r.network.as_deref(), Some("host"));
        assert_eq!(r.labels, vec![("k".into(), "v".into())]);
        assert_eq!(
            (
                r.entrypoint.as_deref(),
                r.workdir.as_deref(),
                r.user.as_deref(),
                r.hostname.as_deref()
            ),
            (Some("/bin/sh"), Some("/srv"), Some("1000"), Some("box"))
        );
        assert_eq!(r.memory_bytes, Some(512 << 20));
        assert_eq!(r.nano_cpus, Some(1_500_000_000));
        assert_eq!(r.restart.as_deref(), Some("on-failure:3"));
        assert_eq!(
            (r.image.as_str(), r.cmd.clone()),
            ("img:1", vec!["-c".to_string(), "echo hi".into()])
        );
    }

    #[test]
    fn errors_name_what_is_wrong() {
        for (line, want) in [
            ("docker run --bogus x img", "unknown flag --bogus"),
            ("docker run --name", "--name needs a value"),
            ("docker run -p 80:eighty img", "bad --publish"),
            ("docker run -m lots img", "bad --memory"),
            ("docker run", "no image"),
            ("docker exec c ls", "not a command flotilla interprets"),
            ("docker -H tcp://x ps", "unsupported global flag -H"),
            ("docker rm", "at least one container"),
            ("docker stop -t soon c", "bad -t"),
            ("etcdctl frob /k", "not a command flotilla interprets"),
            ("etcdctl set /k", "expected KEY VALUE"),
            ("etcdctl set /k v --ttl x", "--ttl \"x\" is not a number"),
            ("etcdctl rm /k --ttl 5", "does not apply"),
            ("etcdctl --bogus set /k v", "unknown global flag --bogus"),
        ] {
            let e = op(line).unwrap_err();
            assert!(e.0.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn etcdctl_commands() {
        assert_eq!(
            op("etcdctl --endpoints http://x:2379 set /services/website/apache@1 '{\"host\":\"h\"}' --ttl 60").unwrap(),
            Op::Kv(KvOp::Set { key: "/services/website/apache@1".into(), value: "{\"host\":\"h\"}".into(), ttl_s: Some(60), exist: None, prev_value: None, prev_index: None })
        );
        assert!(matches!(
            op("etcdctl mk /a b").unwrap(),
            Op::Kv(KvOp::Set {
                exist: Some(false),
                ..
            })
        ));
        assert!(matches!(
            op("etcdctl update /a b --swap-with-index 7").unwrap(),
            Op::Kv(KvOp::Set {
                exist: Some(true),
                prev_index: Some(7),
                ..
            })
        ));
        assert_eq!(
            op("etcdctl mkdir /d --ttl 5").unwrap(),
            Op::Kv(KvOp::Dir {
                key: "/d".into(),
                ttl_s: Some(5),
                exist: Some(false)
            })
        );
        assert_eq!(
            op("etcdctl rmdir /d").unwrap(),
            Op::Kv(KvOp::Rmdir { key: "/d".into() })
        );
        assert!(matches!(
            op("etcdctl rm -r /d").unwrap(),
            Op::Kv(KvOp::Rm {
                recursive: true,
                ..
            })
        ));
        assert_eq!(
            op("/bin/sh -c true").unwrap(),
            Op::Host(vec!["/bin/sh".into(), "-c".into(), "true".into()])
        );
    }
}
