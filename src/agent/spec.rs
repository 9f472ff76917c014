//! From a unit's options to what its lifecycle needs: the Exec lines (specifiers
//! expanded, environment applied, parsed to operations), timeouts, restart policy, and
//! the units it depends on on this machine. Pure: the environment files come in read.

use super::exec_line::{parse_op, split_exec, split_words};
use super::lifecycle::{Restart, Spec, Step, DEFAULT_RESTART_MS, DEFAULT_TIMEOUT_MS};
use crate::unitfile::file::{values, UnitOption};
use crate::unitfile::name::{expand_exec, Host, NameInfo};
use std::collections::BTreeMap;

/// `After=`, `Requires=`, `BindsTo=` on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deps {
    pub after: Vec<String>,
    pub requires: Vec<String>,
    pub binds_to: Vec<String>,
}

impl Deps {
    /// Units that must be active before this one starts.
    pub fn before_start(&self) -> impl Iterator<Item = &String> {
        self.after
            .iter()
            .chain(&self.requires)
            .chain(&self.binds_to)
    }

    /// Units whose going down takes this one down.
    pub fn bound(&self) -> impl Iterator<Item = &String> {
        self.requires.iter().chain(&self.binds_to)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub spec: Spec,
    pub deps: Deps,
    pub env: BTreeMap<String, String>,
}

/// `EnvironmentFile=` paths of `unit`, specifiers expanded (as systemd does: a machine's
/// own file can be `/etc/env.%m`), and whether each may be missing (`-` prefix).
pub fn env_files(unit: &str, options: &[UnitOption], host: &Host) -> Vec<(String, bool)> {
    let name = NameInfo::new(unit);
    values(options, "Service", "EnvironmentFile")
        .into_iter()
        .map(|v| match v.strip_prefix('-') {
            Some(p) => (expand_exec(p.trim(), &name, host), true),
            None => (expand_exec(v.trim(), &name, host), false),
        })
        .collect()
}

/// A systemd time span: seconds, or `5min 20s`, `500ms`; `infinity` and `0` are `None`
/// (no bound).
pub fn timespan_ms(v: &str) -> Result<Option<u64>, String> {
    let v = v.trim();
    if v == "infinity" {
        return Ok(None);
    }
    let ms = match v.parse::<f64>() {
        Ok(s) if s >= 0.0 => (s * 1000.0) as u64,
        _ => humantime::parse_duration(v)
            .map_err(|_| format!("{v:?} is not a time span"))?
            .as_millis() as u64,
    };
    Ok((ms > 0).then_some(ms))
}

/// `KEY=VALUE` lines; `#`/`;` comments and blank lines skipped; quotes around a value
/// removed.
pub fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
                .unwrap_or(v);
            out.insert(k.trim().to_string(), v.to_string());
        }
    }
    out
}

/// Builds the lifecycle's view of `unit`. `files` holds each `EnvironmentFile=`'s text
/// (`None`: missing). An error names the option and what is wrong.
pub fn prepare(
    unit: &str,
    options: &[UnitOption],
    files: &BTreeMap<String, Option<String>>,
    host: &Host,
) -> Result<Prepared, String> {
    let name = NameInfo::new(unit);
    let expand = |v: &str| expand_exec(v, &name, host);
    let env = environment(unit, options, files, host, &expand)?;
    let steps = |key: &str| exec_steps(options, key, &env, &expand);
    let mut main = steps("ExecStart")?;
    if main.len() > 1 {
        return Err("ExecStart: a service has one ExecStart= line".into());
    }
    let t = timing(options)?;
    let dep = |key: &str| -> Vec<String> {
        values(options, "Unit", key)
            .iter()
            .flat_map(|v| v.split_whitespace().map(&expand).collect::<Vec<_>>())
            .collect()
    };
    Ok(Prepared {
        spec: Spec {
            pre: steps("ExecStartPre")?,
            main: main.pop(),
            post: steps("ExecStartPost")?,
            stop: steps("ExecStop")?,
            stop_post: steps("ExecStopPost")?,
            timeout_start_ms: t.timeout_start_ms,
            timeout_stop_ms: t.timeout_stop_ms,
            restart: t.restart,
            restart_ms: t.restart_ms,
        },
        deps: Deps {
            after: dep("After"),
            requires: dep("Requires"),
            binds_to: dep("BindsTo"),
        },
        env,
    })
}

/// `EnvironmentFile=`s (in order), then `Environment=` on top.
fn environment(
    unit: &str,
    options: &[UnitOption],
    files: &BTreeMap<String, Option<String>>,
    host: &Host,
    expand: &dyn Fn(&str) -> String,
) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for (path, optional) in env_files(unit, options, host) {
        match files.get(&path).cloned().flatten() {
            Some(text) => env.extend(parse_env_file(&text)),
            None if optional => {}
            None => return Err(format!("EnvironmentFile={path}: no such file")),
        }
    }
    for v in values(options, "Service", "Environment") {
        let words = split_words(&expand(v)).map_err(|e| format!("Environment={v}: {e}"))?;
        for w in words {
            let (k, val) = w
                .split_once('=')
                .ok_or_else(|| format!("Environment={v}: {w:?} is not KEY=VALUE"))?;
            env.insert(k.to_string(), val.to_string());
        }
    }
    Ok(env)
}

/// The `key=` lines of `[Service]`, each expanded, split and parsed into a step.
fn exec_steps(
    options: &[UnitOption],
    key: &str,
    env: &BTreeMap<String, String>,
    expand: &dyn Fn(&str) -> String,
) -> Result<Vec<Step>, String> {
    values(options, "Service", key)
        .into_iter()
        .map(|v| {
            let line = expand(v);
            let l = split_exec(&line, env).map_err(|e| format!("{key}={v}: {e}"))?;
            let op = parse_op(&l.argv).map_err(|e| format!("{key}={v}: {e}"))?;
            Ok(Step {
                ignore_failure: l.ignore_failure,
                op,
                line: line
                    .trim_start_matches(['-', '@', ':', '+', '!'])
                    .to_string(),
            })
        })
        .collect()
}

/// A service's timeouts and restart policy.
struct Timing {
    timeout_start_ms: Option<u64>,
    timeout_stop_ms: u64,
    restart: Restart,
    restart_ms: u64,
}

/// `TimeoutSec=` (both), `TimeoutStartSec=`, `TimeoutStopSec=`, `Restart=`,
/// `RestartSec=`: the last of each counts, as in systemd.
fn timing(options: &[UnitOption]) -> Result<Timing, String> {
    let last = |key: &str| {
        values(options, "Service", key)
            .last()
            .map(|v| v.to_string())
    };
    let time = |key: &str| -> Result<Option<Option<u64>>, String> {
        last(key)
            .map(|v| timespan_ms(&v).map_err(|e| format!("{key}: {e}")))
            .transpose()
    };
    let both = time("TimeoutSec")?;
    let timeout_start_ms = time("TimeoutStartSec")?
        .or(both)
        .unwrap_or(Some(DEFAULT_TIMEOUT_MS));
    // `infinity` (no bound) as a deadline that never comes, without overflowing `now + t`.
    let timeout_stop_ms = time("TimeoutStopSec")?
        .or(both)
        .unwrap_or(Some(DEFAULT_TIMEOUT_MS))
        .unwrap_or(u64::MAX / 4);
    let restart = match last("Restart").as_deref() {
        None | Some("no") => Restart::No,
        Some("on-failure" | "on-abnormal" | "on-abort" | "on-watchdog") => Restart::OnFailure,
        Some("always") => Restart::Always,
        Some(other) => {
            return Err(format!(
                "Restart={other}: expected no, on-failure or always"
            ))
        }
    };
    let restart_ms = time("RestartSec")?.map_or(DEFAULT_RESTART_MS, |t| t.unwrap_or(0));
    Ok(Timing {
        timeout_start_ms,
        timeout_stop_ms,
        restart,
        restart_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::exec_line::{DockerOp, Op};
    use crate::unitfile::file::parse;

    const PRESENCE: &str = "[Unit]
BindsTo=nginx-1.0.0@%i.service

[Service]
EnvironmentFile=/etc/environment
ExecStartPre=-/usr/bin/docker kill nginx-presence-%i
ExecStartPre=-/usr/bin/docker rm nginx-presence-%i
ExecStart=/usr/bin/docker run --rm --name nginx-presence-%i -e AWS_ACCESS_KEY=foo -e AWS_SECRET_KEY=bar -e AWS_REGION=us-east-1 -e ELB_NAME=coreos-appname -e PROXY_HOST=10.10.11.11 -e PROXY_PORT=3128 jpweb/nginx-presence
ExecStop=/usr/bin/docker stop nginx-presence-%i

[X-Fleet]
MachineOf=nginx-1.0.0-secure@%i.service
";

    fn host() -> Host {
        Host {
            hostname: "h".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
        }
    }

    #[test]
    fn the_seed_presence_sidekick() {
        let opts = parse(PRESENCE).unwrap();
        assert_eq!(
            env_files("nginx-presence@7.service", &opts, &host()),
            vec![("/etc/environment".to_string(), false)]
        );
        let per_machine = parse("[Service]\nEnvironmentFile=-/run/env.%m.%i\n").unwrap();
        assert_eq!(
            env_files("a@3.service", &per_machine, &host()),
            vec![("/run/env.m.3".to_string(), true)]
        );
        let files = [(
            "/etc/environment".to_string(),
            Some("COREOS_PUBLIC_IPV4=10.0.0.5\n".to_string()),
        )]
        .into();
        let p = prepare("nginx-presence@7.service", &opts, &files, &host()).unwrap();
        assert_eq!(p.deps.binds_to, ["nginx-1.0.0@7.service"]);
        assert_eq!(p.env["COREOS_PUBLIC_IPV4"], "10.0.0.5");
        assert_eq!(p.spec.pre[0].line, "/usr/bin/docker kill nginx-presence-7");
        assert!(p.spec.pre[0].ignore_failure);
        let Some(Op::Docker(DockerOp::Run(r))) = p.spec.main.as_ref().map(|s| s.op.clone()) else {
            panic!("main is a docker run");
        };
        assert!(r.rm);
        assert_eq!(r.name.as_deref(), Some("nginx-presence-7"));
        assert_eq!(r.image, "jpweb/nginx-presence");
        // The file must exist (no `-`).
        let e = prepare("nginx-presence@7.service", &opts, &BTreeMap::new(), &host()).unwrap_err();
        assert!(e.contains("EnvironmentFile=/etc/environment"), "{e}");
    }

    #[test]
    fn environment_timeouts_and_restart() {
        let text = "[Service]\nEnvironment=\"A=x y\" B=2\nEnvironmentFile=-/missing\nExecStart=/bin/echo ${A} $B %n\nTimeoutStartSec=0\nTimeoutStopSec=5min 20s\nRestart=always\nRestartSec=3\n";
        let p = prepare(
            "e.service",
            &parse(text).unwrap(),
            &BTreeMap::new(),
            &host(),
        )
        .unwrap();
        let Some(Op::Host(argv)) = p.spec.main.map(|s| s.op) else {
            panic!()
        };
        assert_eq!(argv, ["/bin/echo", "x y", "2", "e.service"]);
        assert_eq!(p.spec.timeout_start_ms, None);
        assert_eq!(p.spec.timeout_stop_ms, 320_000);
        assert_eq!(
            (p.spec.restart, p.spec.restart_ms),
            (Restart::Always, 3_000)
        );
    }

    #[test]
    fn bad_lines_are_named() {
        let bad = |t: &str| {
            prepare("x.service", &parse(t).unwrap(), &BTreeMap::new(), &host()).unwrap_err()
        };
        assert!(bad("[Service]\nExecStart=docker run --frob img\n")
            .contains("ExecStart=docker run --frob img: docker run: unknown flag --frob"));
        assert!(bad("[Service]\nExecStart=a\nExecStart=b\n").contains("one ExecStart"));
        assert!(bad("[Service]\nExecStart=a\nRestart=sometimes\n").contains("Restart=sometimes"));
        assert!(bad("[Service]\nExecStart=a\nTimeoutStopSec=soon\n").contains("TimeoutStopSec"));
    }

    #[test]
    fn env_files_parse_like_systemd() {
        let e = parse_env_file("# c\nA=1\n  B = \"two words\"\nexport C='3'\n\nnonsense\n");
        assert_eq!(e.len(), 3);
        assert_eq!(
            (e["A"].as_str(), e["B"].as_str(), e["C"].as_str()),
            ("1", "two words", "3")
        );
    }
}
