//! Carrying out one step of a unit: a container operation, a store operation or a host
//! process, through the seams. What a step did comes back as a lifecycle [`Event`].

use super::exec_line::{DockerOp, KvOp, Op, RunSpec};
use super::lifecycle::{Event, Stage, Step, StepResult};
use super::supervisor::Reach;
use crate::client::{ClientError, KvClient, SetOpts};
use crate::kv::Precondition;
use crate::net::docker::{Join, UnitNetwork};
use flotilla_shims::containers::{
    ContainerError, ContainerInfo, ContainerSpec, Containers, PortSpec,
};
use flotilla_shims::process::{ProcSpec, Processes};
use flotilla_shims::Files;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Labels on every container the agent creates.
pub const LABEL_MACHINE: &str = "flotilla.machine";
pub const LABEL_UNIT: &str = "flotilla.unit";
pub const LABEL_HASH: &str = "flotilla.hash";
/// `main` on a unit's `ExecStart` container (the one to adopt after a restart).
pub const LABEL_ROLE: &str = "flotilla.role";
/// `docker stop`'s default grace period.
pub const STOP_TIMEOUT_S: u32 = 10;

/// What a step needs to know beyond the step itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Ctx {
    pub unit: String,
    pub hash: String,
    pub machine: String,
    pub env: BTreeMap<String, String>,
    /// `--container-name-prefix`.
    pub prefix: String,
    /// `--publish-ip`: every published port binds here.
    pub publish_ip: Option<String>,
    pub allow_host_commands: bool,
}

#[derive(Clone)]
pub struct Seams {
    pub kv: Arc<dyn KvClient>,
    pub containers: Arc<dyn Containers>,
    pub procs: Arc<dyn Processes>,
    pub files: Arc<dyn Files>,
    /// What a container that names no network joins.
    pub network: UnitNetwork,
}

/// How a step ended, for the agent to record and feed to the lifecycle.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done(StepResult),
    /// The main step started a long-running container (its name and id).
    MainContainer {
        name: String,
        id: String,
        reach: Reach,
    },
    /// The main step started a host process (its handle).
    MainProcess {
        handle: u64,
    },
}

impl Outcome {
    pub fn event(&self, id: u64) -> Event {
        match self {
            Outcome::Done(result) => Event::StepDone {
                id,
                result: result.clone(),
            },
            _ => Event::MainStarted { id },
        }
    }
}

/// A failed step: what went wrong, and whether the container runtime was to blame
/// (decided by the error's kind, never by its text).
struct Failed {
    detail: String,
    runtime: bool,
}

impl From<ContainerError> for Failed {
    fn from(e: ContainerError) -> Self {
        Self {
            runtime: matches!(e, ContainerError::Unavailable(_)),
            detail: e.to_string(),
        }
    }
}

impl From<String> for Failed {
    fn from(detail: String) -> Self {
        Self {
            detail,
            runtime: false,
        }
    }
}

fn done(r: Result<String, Failed>) -> Outcome {
    Outcome::Done(match r {
        Ok(detail) => StepResult::Ok(detail),
        Err(Failed {
            detail,
            runtime: true,
        }) => StepResult::RuntimeDown(detail),
        Err(Failed { detail, .. }) => StepResult::Failed(detail),
    })
}

/// A container name as the agent's machine sees it: the prefix keeps several machines
/// on one engine apart.
pub fn container_name(ctx: &Ctx, name: &str) -> String {
    format!("{}{name}", ctx.prefix)
}

/// Docker's names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]`: a unit name made to fit, for a
/// `docker run` without `--name`.
pub fn default_name(unit: &str) -> String {
    let s: String = unit
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("flotilla-{s}")
}

pub async fn run_step(s: &Seams, ctx: &Ctx, stage: Stage, step: &Step) -> Outcome {
    let main = stage == Stage::Main;
    match &step.op {
        Op::Docker(DockerOp::Run(r)) => docker_run(s, ctx, r, main).await,
        Op::Docker(d) => done(docker(s, ctx, d).await),
        Op::Kv(k) => done(kv(&*s.kv, k).await.map_err(Failed::from)),
        Op::Host(argv) => host(s, ctx, argv, main).await,
    }
}

async fn docker(s: &Seams, ctx: &Ctx, op: &DockerOp) -> Result<String, Failed> {
    let c = &s.containers;
    let each = |names: &[String]| {
        names
            .iter()
            .map(|n| container_name(ctx, n))
            .collect::<Vec<_>>()
    };
    match op {
        DockerOp::Pull { image } => match c.pull(image).await {
            Ok(()) => Ok(format!("pulled {image}")),
            // Air-gapped machines: a local image will do.
            Err(e) => match c.image_present(image).await {
                Ok(true) => Ok(format!("warning: {e}; using the local image")),
                _ => Err(e.into()),
            },
        },
        DockerOp::Kill { names, signal } => {
            for n in each(names) {
                c.kill(&n, signal).await?;
            }
            Ok(String::new())
        }
        DockerOp::Rm { names, force } => {
            for n in each(names) {
                c.remove(&n, *force).await?;
            }
            Ok(String::new())
        }
        DockerOp::Stop { names, timeout_s } => {
            for n in each(names) {
                c.stop(&n, timeout_s.unwrap_or(STOP_TIMEOUT_S)).await?;
            }
            Ok(String::new())
        }
        DockerOp::Start { names } => {
            for n in each(names) {
                c.start(&n).await?;
            }
            Ok(String::new())
        }
        DockerOp::Restart { names, timeout_s } => {
            for n in each(names) {
                c.stop(&n, timeout_s.unwrap_or(STOP_TIMEOUT_S)).await?;
                c.start(&n).await?;
            }
            Ok(String::new())
        }
        DockerOp::Run(_) => unreachable!("handled by docker_run"),
    }
}

/// `docker run`: create (pulling the image if it is missing, as docker does) and start.
async fn docker_run(s: &Seams, ctx: &Ctx, r: &RunSpec, main: bool) -> Outcome {
    let spec = match container_spec(s, ctx, r, main).await {
        Ok(spec) => spec,
        Err(e) => return done(Err(e)),
    };
    let name = spec.name.clone();
    let c = &s.containers;
    let id = match c.create(spec.clone()).await {
        Err(ContainerError::ImageNotFound(_)) => match c.pull(&r.image).await {
            Ok(()) => c.create(spec).await,
            Err(e) => {
                let runtime = matches!(e, ContainerError::Unavailable(_));
                let detail = format!("image {} is not here and {e}", r.image);
                return done(Err(Failed { detail, runtime }));
            }
        },
        other => other,
    };
    let id = match id {
        Ok(id) => id,
        Err(e) => return done(Err(e.into())),
    };
    if let Err(e) = c.start(&name).await {
        return done(Err(e.into()));
    }
    if main && !r.detach {
        // Where DNS will send callers; a failed look leaves it unknown, not the unit down.
        let reach = match c.inspect(&name).await {
            Ok(info) => reach_of(&info, &s.network),
            Err(_) => Reach::default(),
        };
        Outcome::MainContainer { name, id, reach }
    } else {
        done(Ok(format!("started container {name}")))
    }
}

/// A container's address on the cluster network (when it joined it) and its published
/// host ports.
pub fn reach_of(info: &ContainerInfo, network: &UnitNetwork) -> Reach {
    let address = match network.join() {
        Join::Network(n) => info.addresses.get(&n).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    let mut ports = info.published.clone();
    ports.sort_unstable();
    ports.dedup();
    Reach { address, ports }
}

/// The network `docker run` names, else the cluster network once it exists.
fn network_for(s: &Seams, r: &RunSpec) -> Result<Option<String>, Failed> {
    match (&r.network, s.network.join()) {
        (Some(named), _) => Ok(Some(named.clone())),
        (None, Join::Default) => Ok(None),
        (None, Join::Network(n)) => Ok(Some(n)),
        // Not the unit's fault: retried as an engine outage is, until the lease is taken.
        (None, Join::NotYet) => Err(Failed {
            detail: "the cluster network has no Docker network yet (no subnet lease)".into(),
            runtime: true,
        }),
    }
}

async fn container_spec(
    s: &Seams,
    ctx: &Ctx,
    r: &RunSpec,
    main: bool,
) -> Result<ContainerSpec, Failed> {
    let network = network_for(s, r)?;
    let mut env = vec![];
    for path in &r.env_files {
        let text = s
            .files
            .read(path)
            .await
            .map_err(|e| format!("--env-file {path}: {e}"))?
            .ok_or_else(|| format!("--env-file {path}: no such file"))?;
        env.extend(super::spec::parse_env_file(&String::from_utf8_lossy(&text)));
    }
    for (k, v) in &r.env {
        // `-e K` takes K from the environment docker would have run in: the unit's.
        match v.clone().or_else(|| ctx.env.get(k).cloned()) {
            Some(v) => env.push((k.clone(), v)),
            None => continue,
        }
    }
    let mut labels: BTreeMap<String, String> = r.labels.iter().cloned().collect();
    labels.insert(LABEL_MACHINE.into(), ctx.machine.clone());
    labels.insert(LABEL_UNIT.into(), ctx.unit.clone());
    labels.insert(LABEL_HASH.into(), ctx.hash.clone());
    labels.insert(LABEL_ROLE.into(), if main { "main" } else { "step" }.into());
    let name = r.name.clone().unwrap_or_else(|| default_name(&ctx.unit));
    // Docker refuses resolvers for a container in another's network namespace.
    let own_net = network
        .as_deref()
        .is_none_or(|n| !(n == "host" || n == "none" || n.starts_with("container:")));
    Ok(ContainerSpec {
        dns: if own_net {
            s.network.dns_servers()
        } else {
            vec![]
        },
        name: container_name(ctx, &name),
        image: r.image.clone(),
        cmd: r.cmd.clone(),
        entrypoint: r.entrypoint.clone().map(|e| vec![e]),
        env,
        ports: r
            .publish
            .iter()
            .map(|p| PortSpec {
                host_ip: ctx
                    .publish_ip
                    .clone()
                    .or_else(|| p.ip.clone())
                    .unwrap_or_default(),
                host_port: p.host_port,
                container_port: p.container_port,
                proto: p.proto.clone(),
            })
            .collect(),
        volumes: r.volumes.clone(),
        network,
        workdir: r.workdir.clone(),
        user: r.user.clone(),
        hostname: r.hostname.clone(),
        memory_bytes: r.memory_bytes,
        nano_cpus: r.nano_cpus,
        restart: r.restart.clone(),
        privileged: r.privileged,
        labels,
        auto_remove: r.rm,
    })
}

async fn kv(kv: &dyn KvClient, op: &KvOp) -> Result<String, String> {
    let prev = |exist, value: &Option<String>, index: &Option<u64>| Precondition {
        exist,
        value: value.clone().unwrap_or_default(),
        index: index.unwrap_or(0),
    };
    let err = |e: ClientError| e.to_string();
    match op {
        KvOp::Set {
            key,
            value,
            ttl_s,
            exist,
            prev_value,
            prev_index,
        } => {
            let opts = SetOpts {
                ttl_s: *ttl_s,
                prev: prev(*exist, prev_value, prev_index),
                ..Default::default()
            };
            kv.set(key, value, opts).await.map_err(err)?;
            Ok(format!("{key} = {value}"))
        }
        KvOp::Dir { key, ttl_s, exist } => {
            let opts = SetOpts {
                ttl_s: *ttl_s,
                dir: true,
                prev: prev(*exist, &None, &None),
                ..Default::default()
            };
            kv.set(key, "", opts).await.map_err(err)?;
            Ok(format!("{key}/"))
        }
        KvOp::Rm {
            key,
            recursive,
            prev_value,
            prev_index,
            ..
        } => {
            kv.delete(key, *recursive, prev(None, prev_value, prev_index))
                .await
                .map_err(err)?;
            Ok(format!("removed {key}"))
        }
        KvOp::Rmdir { key } => {
            kv.delete(key, true, Precondition::default())
                .await
                .map_err(err)?;
            Ok(format!("removed {key}/"))
        }
        KvOp::Get { key } | KvOp::Ls { key, .. } => match kv.get(key, false, false).await {
            Ok(Some(g)) => Ok(g.node.value.unwrap_or_default()),
            Ok(None) => Err(format!("Error:  100: Key not found ({key})")),
            Err(e) => Err(err(e)),
        },
    }
}

async fn host(s: &Seams, ctx: &Ctx, argv: &[String], main: bool) -> Outcome {
    if !ctx.allow_host_commands {
        return done(Err(Failed::from(format!(
            "{} is a host command: host commands run only on a node started with --allow-host-commands",
            argv.first().cloned().unwrap_or_default()
        ))));
    }
    let spec = ProcSpec {
        argv: argv.to_vec(),
        env: ctx
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    let handle = match s.procs.spawn(spec).await {
        Ok(h) => h,
        Err(e) => return done(Err(e.to_string().into())),
    };
    if main {
        return Outcome::MainProcess { handle };
    }
    match s.procs.wait(handle).await {
        Ok(0) => done(Ok(String::new())),
        Ok(code) => {
            let last = s.procs.output(handle).pop().unwrap_or_default();
            done(Err(Failed::from(format!(
                "exit code {code}{}",
                if last.is_empty() {
                    String::new()
                } else {
                    format!(": {last}")
                }
            ))))
        }
        Err(e) => done(Err(e.to_string().into())),
    }
}
