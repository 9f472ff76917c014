//! A unit's lifecycle on its machine: a pure state machine with systemd's semantics for a
//! `Type=simple` service. Events go in ([`Event`]), commands come out ([`Cmd`]); the agent
//! carries the commands out and feeds their results back. Time comes in as `now_ms`.
//!
//! Start: `ExecStartPre…` → `ExecStart` (the main process: a container, or a host
//! process) → `ExecStartPost…` → active. Stop (asked for, or the main process ended):
//! `ExecStop…` (only if the start got as far as the main process), then the main process
//! is asked to stop and killed after `TimeoutStopSec`, then `ExecStopPost…`. A `-` prefix
//! makes a step's failure harmless. `TimeoutStartSec` bounds the start (0: no bound).
//! `Restart=on-failure|always` starts it again after `RestartSec`, at most
//! `START_LIMIT_BURST` starts per `START_LIMIT_INTERVAL_MS` (systemd's start limit), then
//! the unit stays failed.

use super::exec_line::Op;
use std::collections::VecDeque;

/// systemd's defaults.
pub const START_LIMIT_BURST: usize = 5;
pub const START_LIMIT_INTERVAL_MS: u64 = 10_000;
/// Why a unit failed. The agent treats the kinds apart: its own failures stay failed,
/// the others are retried once their cause can have passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A step failed, the main process exited badly, the start timed out.
    Unit(String),
    /// A step failed because the container runtime was unavailable: not the unit's doing.
    Runtime(String),
    /// Restarts came too quickly (systemd's `start-limit-hit`): allowed after the interval.
    StartLimit,
    /// The unit's file cannot be run (a bad Exec line, a missing environment file).
    Broken(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unit(why) | Failure::Runtime(why) | Failure::Broken(why) => f.write_str(why),
            Failure::StartLimit => f.write_str("start-limit-hit"),
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepResult {
    Ok(String),
    Failed(String),
    /// Failed because the container runtime did not answer.
    RuntimeDown(String),
}
pub const DEFAULT_RESTART_MS: u64 = 100;
pub const DEFAULT_TIMEOUT_MS: u64 = 90_000;
/// Journal lines kept per unit.
pub const JOURNAL_LINES_MAX: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    No,
    OnFailure,
    Always,
}

/// One `Exec*=` line, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub ignore_failure: bool,
    pub op: Op,
    /// The line as written, for the journal.
    pub line: String,
}

/// What the lifecycle needs of a unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub pre: Vec<Step>,
    pub main: Option<Step>,
    pub post: Vec<Step>,
    pub stop: Vec<Step>,
    pub stop_post: Vec<Step>,
    /// `None`: no bound (`TimeoutStartSec=0`).
    pub timeout_start_ms: Option<u64>,
    pub timeout_stop_ms: u64,
    pub restart: Restart,
    pub restart_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Pre,
    Main,
    Post,
    Stop,
    StopPost,
}

/// A step to run; its result comes back as [`Event::StepDone`] with the same `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    Exec {
        id: u64,
        stage: Stage,
        step: Step,
    },
    /// Ask the main process to end (SIGTERM; `docker stop`), killing it after `timeout_ms`.
    StopMain {
        timeout_ms: u64,
    },
    /// End the main process now (SIGKILL; `docker kill`).
    KillMain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Bring the unit up (desired state `launched`).
    Start,
    /// Bring it down (desired `loaded` or `inactive`, or a unit it binds to stopped).
    Stop,
    /// Bring it down at once: the machine lost its lease.
    Fence,
    StepDone {
        id: u64,
        result: StepResult,
    },
    /// The main step's process (container) is running; it stays the main process.
    MainStarted {
        id: u64,
    },
    MainExited {
        code: i64,
        oom_killed: bool,
    },
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Dead,
    Failed(Failure),
    Starting {
        stage: Stage,
        idx: usize,
    },
    Running,
    Stopping {
        stage: Stage,
        idx: usize,
    },
    /// ExecStop done; waiting for the main process to end (killed at `kill_at_ms`).
    Draining {
        kill_at_ms: u64,
        killed: bool,
    },
    AutoRestart {
        at_ms: u64,
    },
}

/// systemd's three state columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub load: &'static str,
    pub active: &'static str,
    pub sub: &'static str,
}

pub struct Unit {
    spec: Spec,
    phase: Phase,
    /// The step we wait for.
    waiting: Option<u64>,
    next_id: u64,
    main_alive: bool,
    /// The start got as far as the main process (ExecStop runs only then).
    main_started: bool,
    want_running: bool,
    /// How the current run ends: `None` so far, `Some(Err(why))` on a failure.
    result: Option<Result<(), Failure>>,
    start_deadline_ms: Option<u64>,
    /// A start arrived while a stop sequence ran.
    pending_start: bool,
    /// Could not be loaded: never starts.
    broken: bool,
    starts: VecDeque<u64>,
    journal: VecDeque<String>,
}

impl Unit {
    pub fn new(spec: Spec) -> Self {
        Self {
            spec,
            phase: Phase::Dead,
            waiting: None,
            next_id: 1,
            main_alive: false,
            main_started: false,
            want_running: false,
            result: None,
            start_deadline_ms: None,
            pending_start: false,
            broken: false,
            starts: VecDeque::new(),
            journal: VecDeque::new(),
        }
    }

    /// A unit whose file cannot be run (a bad Exec line, a missing environment file):
    /// failed from the start, with the reason; starting it changes nothing.
    pub fn broken(why: String) -> Self {
        let mut u = Self::new(Spec {
            pre: vec![],
            main: None,
            post: vec![],
            stop: vec![],
            stop_post: vec![],
            timeout_start_ms: None,
            timeout_stop_ms: 0,
            restart: Restart::No,
            restart_ms: 0,
        });
        u.log(format!("cannot load: {why}"));
        u.phase = Phase::Failed(Failure::Broken(why));
        u.broken = true;
        u
    }

    /// A unit found running at start (its container adopted): active, no steps re-run.
    pub fn adopted(spec: Spec) -> Self {
        let mut u = Self::new(spec);
        u.phase = Phase::Running;
        u.main_alive = true;
        u.main_started = true;
        u.want_running = true;
        u.log("adopted its running main process");
        u
    }

    pub fn reported(&self) -> Reported {
        let (active, sub) = match &self.phase {
            Phase::Dead => ("inactive", "dead"),
            Phase::Failed(_) => ("failed", "failed"),
            Phase::Starting {
                stage: Stage::Pre, ..
            } => ("activating", "start-pre"),
            Phase::Starting {
                stage: Stage::Post, ..
            } => ("activating", "start-post"),
            Phase::Starting { .. } => ("activating", "start"),
            Phase::Running => ("active", "running"),
            Phase::Stopping {
                stage: Stage::StopPost,
                ..
            } => ("deactivating", "stop-post"),
            Phase::Stopping { .. } => ("deactivating", "stop"),
            Phase::Draining { killed: false, .. } => ("deactivating", "stop-sigterm"),
            Phase::Draining { killed: true, .. } => ("deactivating", "final-sigkill"),
            Phase::AutoRestart { .. } => ("activating", "auto-restart"),
        };
        Reported {
            load: "loaded",
            active,
            sub,
        }
    }

    pub fn is_active(&self) -> bool {
        self.phase == Phase::Running
    }

    /// Down for good (dead or failed): nothing running, nothing pending.
    pub fn is_down(&self) -> bool {
        matches!(self.phase, Phase::Dead | Phase::Failed(_))
    }

    pub fn failure(&self) -> Option<&Failure> {
        match &self.phase {
            Phase::Failed(why) => Some(why),
            _ => None,
        }
    }

    pub fn journal(&self) -> impl Iterator<Item = &String> {
        self.journal.iter()
    }

    /// When the unit next needs a [`Event::Tick`], if it waits on time.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        match &self.phase {
            Phase::Draining { kill_at_ms, .. } => Some(*kill_at_ms),
            Phase::AutoRestart { at_ms } => Some(*at_ms),
            Phase::Starting { .. } => self.start_deadline_ms,
            _ => None,
        }
    }

    /// A line from outside the state machine (the main container's last output).
    pub fn note(&mut self, line: impl Into<String>) {
        self.log(line);
    }

    fn log(&mut self, line: impl Into<String>) {
        if self.journal.len() == JOURNAL_LINES_MAX {
            self.journal.pop_front();
        }
        self.journal.push_back(line.into());
    }

    pub fn handle(&mut self, ev: Event, now_ms: u64) -> Vec<Cmd> {
        let mut out = vec![];
        match ev {
            Event::Start => {
                self.want_running = true;
                match self.phase {
                    Phase::Dead | Phase::Failed(_) => self.begin(now_ms, &mut out),
                    Phase::Stopping { .. } | Phase::Draining { .. } => self.pending_start = true,
                    _ => {}
                }
            }
            Event::Stop | Event::Fence => {
                let fence = ev == Event::Fence;
                self.want_running = false;
                self.pending_start = false;
                match self.phase {
                    Phase::Running => {
                        self.result.get_or_insert(Ok(()));
                        self.stop_sequence(now_ms, &mut out);
                    }
                    Phase::AutoRestart { .. } => self.finish(now_ms, &mut out),
                    // Mid-start: the running step ends first, then the stop follows.
                    _ => {}
                }
                if fence {
                    self.fence(now_ms, &mut out);
                }
            }
            Event::StepDone { id, result } if self.waiting == Some(id) => {
                self.waiting = None;
                self.step_done(result, now_ms, &mut out);
            }
            Event::StepDone { .. } => {}
            Event::MainStarted { id } if self.waiting == Some(id) => {
                self.waiting = None;
                self.main_alive = true;
                self.main_started = true;
                self.log("main process started");
                self.after_step(now_ms, &mut out);
            }
            Event::MainStarted { .. } => {}
            Event::MainExited { code, oom_killed } => {
                self.main_exited(code, oom_killed, now_ms, &mut out)
            }
            Event::Tick => self.tick(now_ms, &mut out),
        }
        out
    }

    /// The machine lost its lease: the main process is killed now, never given a grace
    /// period (a unit without ExecStop would otherwise get `TimeoutStopSec`, 90 s by
    /// default, past the moment its machine's key expires).
    fn fence(&mut self, now_ms: u64, out: &mut Vec<Cmd>) {
        if !self.main_alive {
            return;
        }
        out.retain(|c| !matches!(c, Cmd::StopMain { .. }));
        self.log("lease lost: killing the main process");
        match self.phase {
            Phase::Draining { killed: true, .. } => {}
            Phase::Draining { killed: false, .. } => self.kill(now_ms, out),
            _ => out.push(Cmd::KillMain),
        }
    }

    /// Starts a run, unless the start limit is hit.
    fn begin(&mut self, now_ms: u64, out: &mut Vec<Cmd>) {
        if self.broken {
            return;
        }
        while self
            .starts
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= START_LIMIT_INTERVAL_MS)
        {
            self.starts.pop_front();
        }
        if self.starts.len() >= START_LIMIT_BURST {
            self.log("start request repeated too quickly, refusing to start");
            self.phase = Phase::Failed(Failure::StartLimit);
            return;
        }
        self.starts.push_back(now_ms);
        self.result = None;
        self.main_started = false;
        self.start_deadline_ms = self.spec.timeout_start_ms.map(|t| now_ms + t);
        self.log("starting");
        self.phase = Phase::Starting {
            stage: Stage::Pre,
            idx: 0,
        };
        self.run_current(now_ms, out);
    }

    /// Issues the current phase's step, or moves past stages that have none.
    fn run_current(&mut self, now_ms: u64, out: &mut Vec<Cmd>) {
        loop {
            let (stage, idx) = match self.phase {
                Phase::Starting { stage, idx } | Phase::Stopping { stage, idx } => (stage, idx),
                _ => return,
            };
            let step = match stage {
                Stage::Pre => self.spec.pre.get(idx),
                Stage::Main => self.spec.main.as_ref().filter(|_| idx == 0),
                Stage::Post => self.spec.post.get(idx),
                Stage::Stop => self.spec.stop.get(idx),
                Stage::StopPost => self.spec.stop_post.get(idx),
            }
            .cloned();
            if let Some(step) = step {
                let id = self.next_id;
                self.next_id += 1;
                self.waiting = Some(id);
                out.push(Cmd::Exec { id, stage, step });
                return;
            }
            match self.advance(stage, now_ms, out) {
                true => continue,
                false => return,
            }
        }
    }

    /// Moves to the stage after `stage` (its steps all done); `true` if there is a step
    /// phase to run next.
    fn advance(&mut self, stage: Stage, now_ms: u64, out: &mut Vec<Cmd>) -> bool {
        match stage {
            Stage::Pre => {
                if self.spec.main.is_none() {
                    self.result = Some(Err(Failure::Unit("no ExecStart".into())));
                    self.stop_sequence(now_ms, out);
                    return false;
                }
                self.phase = Phase::Starting {
                    stage: Stage::Main,
                    idx: 0,
                };
                true
            }
            Stage::Main => {
                self.phase = Phase::Starting {
                    stage: Stage::Post,
                    idx: 0,
                };
                true
            }
            Stage::Post => {
                self.start_deadline_ms = None;
                if !self.want_running || !self.main_alive {
                    // Asked to stop meanwhile, or the main process already ended.
                    self.result.get_or_insert(Ok(()));
                    self.stop_sequence(now_ms, out);
                    return false;
                }
                self.log("started");
                self.phase = Phase::Running;
                false
            }
            Stage::Stop => {
                if self.main_alive {
                    self.phase = Phase::Draining {
                        kill_at_ms: now_ms + self.spec.timeout_stop_ms,
                        killed: false,
                    };
                    out.push(Cmd::StopMain {
                        timeout_ms: self.spec.timeout_stop_ms,
                    });
                    return false;
                }
                self.phase = Phase::Stopping {
                    stage: Stage::StopPost,
                    idx: 0,
                };
                true
            }
            Stage::StopPost => {
                self.finish(now_ms, out);
                false
            }
        }
    }

    fn step_done(&mut self, result: StepResult, now_ms: u64, out: &mut Vec<Cmd>) {
        let (ok, detail, runtime) = match result {
            StepResult::Ok(d) => (true, d, false),
            StepResult::Failed(d) => (false, d, false),
            StepResult::RuntimeDown(d) => (false, d, true),
        };
        let (stage, idx) = match self.phase {
            Phase::Starting { stage, idx } | Phase::Stopping { stage, idx } => (stage, idx),
            _ => return,
        };
        let step = match stage {
            Stage::Pre => self.spec.pre.get(idx),
            Stage::Main => self.spec.main.as_ref(),
            Stage::Post => self.spec.post.get(idx),
            Stage::Stop => self.spec.stop.get(idx),
            Stage::StopPost => self.spec.stop_post.get(idx),
        };
        let (line, ignore) = step
            .map(|s| (s.line.clone(), s.ignore_failure))
            .unwrap_or_default();
        let verdict = if ok {
            "ok"
        } else if ignore {
            "failed (ignored)"
        } else {
            "failed"
        };
        self.log(format!(
            "{line}: {verdict}{}",
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        ));
        let starting = matches!(self.phase, Phase::Starting { .. });
        if !ok && !ignore && starting {
            let why = format!("{line}: {detail}");
            self.result = Some(Err(if runtime {
                Failure::Runtime(why)
            } else {
                Failure::Unit(why)
            }));
            self.stop_sequence(now_ms, out);
            return;
        }
        if stage == Stage::Main && ok && !self.main_alive {
            // The main step ran to completion (`docker run -d`, a finished command): the
            // main process has already exited, cleanly.
            self.main_started = true;
        }
        self.after_step(now_ms, out);
    }

    /// Moves to the next step of the current stage (or, starting, to the stop sequence
    /// when a stop was asked for meanwhile).
    fn after_step(&mut self, now_ms: u64, out: &mut Vec<Cmd>) {
        match self.phase {
            Phase::Starting { stage, .. } if !self.want_running && stage != Stage::Post => {
                self.result.get_or_insert(Ok(()));
                self.stop_sequence(now_ms, out);
            }
            Phase::Starting { stage, idx } => {
                self.phase = Phase::Starting {
                    stage,
                    idx: idx + 1,
                };
                self.run_current(now_ms, out);
            }
            Phase::Stopping { stage, idx } => {
                self.phase = Phase::Stopping {
                    stage,
                    idx: idx + 1,
                };
                self.run_current(now_ms, out);
            }
            _ => {}
        }
    }

    /// ExecStop (if the start reached the main process), then drain, then ExecStopPost.
    fn stop_sequence(&mut self, now_ms: u64, out: &mut Vec<Cmd>) {
        self.start_deadline_ms = None;
        let stage = if self.main_started {
            Stage::Stop
        } else {
            Stage::StopPost
        };
        self.phase = Phase::Stopping { stage, idx: 0 };
        self.run_current(now_ms, out);
    }

    fn main_exited(&mut self, code: i64, oom: bool, now_ms: u64, out: &mut Vec<Cmd>) {
        if !self.main_alive {
            return;
        }
        self.main_alive = false;
        let how = if oom {
            "oom-killed".to_string()
        } else {
            format!("exit code {code}")
        };
        self.log(format!("main process ended: {how}"));
        match self.phase {
            Phase::Running => {
                // Nobody asked it to stop: an exit other than 0 is a failure.
                self.result = Some(if code == 0 && !oom {
                    Ok(())
                } else {
                    Err(Failure::Unit(how))
                });
                self.stop_sequence(now_ms, out);
            }
            Phase::Starting { .. } => {
                self.result = Some(if code == 0 && !oom {
                    Ok(())
                } else {
                    Err(Failure::Unit(how))
                });
            }
            Phase::Draining { .. } => {
                self.phase = Phase::Stopping {
                    stage: Stage::StopPost,
                    idx: 0,
                };
                self.run_current(now_ms, out);
            }
            _ => {}
        }
    }

    fn tick(&mut self, now_ms: u64, out: &mut Vec<Cmd>) {
        match self.phase {
            Phase::Starting { .. } if self.start_deadline_ms.is_some_and(|d| now_ms >= d) => {
                self.log("start timed out");
                self.result = Some(Err(Failure::Unit("start timed out".into())));
                self.waiting = None;
                if self.main_alive {
                    self.phase = Phase::Draining {
                        kill_at_ms: now_ms,
                        killed: false,
                    };
                    self.kill(now_ms, out);
                } else {
                    self.stop_sequence(now_ms, out);
                }
            }
            Phase::Draining {
                kill_at_ms,
                killed: false,
            } if now_ms >= kill_at_ms => {
                self.log("stop timed out: killing the main process");
                self.kill(now_ms, out);
            }
            Phase::AutoRestart { at_ms } if now_ms >= at_ms => {
                self.log("restarting");
                self.begin(now_ms, out);
            }
            _ => {}
        }
    }

    fn kill(&mut self, now_ms: u64, out: &mut Vec<Cmd>) {
        // After SIGKILL the exit is certain; wait for it a while, then go on regardless.
        self.phase = Phase::Draining {
            kill_at_ms: now_ms + self.spec.timeout_stop_ms,
            killed: true,
        };
        out.push(Cmd::KillMain);
    }

    /// The run is over: dead, failed, or waiting to restart.
    fn finish(&mut self, now_ms: u64, out: &mut Vec<Cmd>) {
        let result = self.result.take().unwrap_or(Ok(()));
        let restart = self.want_running
            && matches!(
                (self.spec.restart, &result),
                (Restart::Always, _) | (Restart::OnFailure, Err(_))
            );
        if restart {
            self.phase = Phase::AutoRestart {
                at_ms: now_ms + self.spec.restart_ms,
            };
            self.log(format!("scheduled restart in {} ms", self.spec.restart_ms));
            return;
        }
        self.phase = match result {
            Ok(()) => {
                self.log("stopped");
                Phase::Dead
            }
            Err(why) => {
                self.log(format!("failed: {why}"));
                Phase::Failed(why)
            }
        };
        // A start asked for while the stop sequence ran (a restart) begins now.
        if std::mem::take(&mut self.pending_start) {
            self.begin(now_ms, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::exec_line::{parse_op, split_exec};

    fn step(line: &str) -> Step {
        let l = split_exec(line, &Default::default()).unwrap();
        Step {
            ignore_failure: l.ignore_failure,
            op: parse_op(&l.argv).unwrap(),
            line: line.trim_start_matches('-').to_string(),
        }
    }

    /// The seed's apache unit.
    fn apache(restart: Restart) -> Spec {
        Spec {
            pre: vec![
                step("-/usr/bin/docker kill apache1"),
                step("-/usr/bin/docker rm apache1"),
                step("/usr/bin/docker pull coreos/apache"),
            ],
            main: Some(step("/usr/bin/docker run --name apache1 -p 8081:80 coreos/apache /usr/sbin/httpd -D FOREGROUND")),
            post: vec![step("/usr/bin/etcdctl set /domains/example.com/10.10.10.123:8081 run")],
            stop: vec![step("/usr/bin/docker stop apache1")],
            stop_post: vec![step("/usr/bin/etcdctl rm /domains/example.com/10.10.10.123:8081")],
            timeout_start_ms: None,
            timeout_stop_ms: 10_000,
            restart,
            restart_ms: 500,
        }
    }

    /// The one Exec command in `cmds`: (id, stage, line).
    fn exec(cmds: &[Cmd]) -> (u64, Stage, String) {
        match cmds {
            [Cmd::Exec { id, stage, step }] => (*id, *stage, step.line.clone()),
            other => panic!("expected one Exec, got {other:?}"),
        }
    }

    fn done(u: &mut Unit, id: u64, ok: bool, now: u64) -> Vec<Cmd> {
        let result = if ok {
            StepResult::Ok(String::new())
        } else {
            StepResult::Failed(String::new())
        };
        u.handle(Event::StepDone { id, result }, now)
    }

    /// Starts the apache unit up to active; returns the unit.
    fn started(restart: Restart) -> Unit {
        let mut u = Unit::new(apache(restart));
        let (id, st, line) = exec(&u.handle(Event::Start, 0));
        assert_eq!(
            (st, line.as_str()),
            (Stage::Pre, "/usr/bin/docker kill apache1")
        );
        assert_eq!(u.reported().sub, "start-pre");
        // The container does not exist: `-` makes that harmless.
        let (id, _, line) = exec(&done(&mut u, id, false, 1));
        assert_eq!(line, "/usr/bin/docker rm apache1");
        let (id, _, line) = exec(&done(&mut u, id, false, 2));
        assert_eq!(line, "/usr/bin/docker pull coreos/apache");
        let (id, st, _) = exec(&done(&mut u, id, true, 3));
        assert_eq!(st, Stage::Main);
        assert_eq!(u.reported().sub, "start");
        let (id, st, line) = exec(&u.handle(Event::MainStarted { id }, 4));
        assert_eq!(
            (st, line.as_str()),
            (
                Stage::Post,
                "/usr/bin/etcdctl set /domains/example.com/10.10.10.123:8081 run"
            )
        );
        assert!(done(&mut u, id, true, 5).is_empty());
        assert_eq!(
            u.reported(),
            Reported {
                load: "loaded",
                active: "active",
                sub: "running"
            }
        );
        u
    }

    #[test]
    fn the_seed_unit_starts_and_stops_in_systemds_order() {
        let mut u = started(Restart::No);
        let (id, st, line) = exec(&u.handle(Event::Stop, 10));
        assert_eq!(
            (st, line.as_str()),
            (Stage::Stop, "/usr/bin/docker stop apache1")
        );
        assert_eq!(u.reported().active, "deactivating");
        // docker stop returns once the container is down; its exit is reported too.
        assert!(u
            .handle(
                Event::MainExited {
                    code: 143,
                    oom_killed: false
                },
                11
            )
            .is_empty());
        let (id2, st, line) = exec(&done(&mut u, id, true, 12));
        assert_eq!(
            (st, line.as_str()),
            (
                Stage::StopPost,
                "/usr/bin/etcdctl rm /domains/example.com/10.10.10.123:8081"
            )
        );
        assert!(done(&mut u, id2, true, 13).is_empty());
        assert_eq!(
            u.reported().sub,
            "dead",
            "a requested stop is clean whatever the exit code"
        );
    }

    #[test]
    fn a_failing_pre_step_without_dash_fails_the_unit() {
        let mut u = Unit::new(apache(Restart::No));
        let (id, ..) = exec(&u.handle(Event::Start, 0));
        let (id, ..) = exec(&done(&mut u, id, true, 0));
        let (id, _, line) = exec(&done(&mut u, id, true, 0));
        assert_eq!(line, "/usr/bin/docker pull coreos/apache");
        // The pull fails: no ExecStop (the main process never started), ExecStopPost runs.
        let (id, st, _) = exec(&done(&mut u, id, false, 0));
        assert_eq!(st, Stage::StopPost);
        assert!(done(&mut u, id, true, 0).is_empty());
        assert_eq!(u.reported().active, "failed");
        assert!(matches!(u.failure(), Some(Failure::Unit(why)) if why.contains("pull")));
    }

    #[test]
    fn a_container_killed_behind_our_back_fails_or_restarts() {
        let mut u = started(Restart::No);
        let (id, st, _) = exec(&u.handle(
            Event::MainExited {
                code: 137,
                oom_killed: false,
            },
            20,
        ));
        assert_eq!(
            st,
            Stage::Stop,
            "ExecStop runs after an unexpected exit too"
        );
        let (id, st, _) = exec(&done(&mut u, id, true, 21));
        assert_eq!(st, Stage::StopPost);
        assert!(done(&mut u, id, true, 22).is_empty());
        assert_eq!(u.reported().active, "failed");

        let mut u = started(Restart::Always);
        let (id, ..) = exec(&u.handle(
            Event::MainExited {
                code: 0,
                oom_killed: true,
            },
            20,
        ));
        let (id, ..) = exec(&done(&mut u, id, true, 21));
        assert!(done(&mut u, id, true, 22).is_empty());
        assert_eq!(u.reported().sub, "auto-restart");
        assert_eq!(u.next_deadline_ms(), Some(522));
        assert!(
            u.handle(Event::Tick, 500).is_empty(),
            "not before RestartSec"
        );
        let (_, st, line) = exec(&u.handle(Event::Tick, 522));
        assert_eq!(
            (st, line.as_str()),
            (Stage::Pre, "/usr/bin/docker kill apache1")
        );
    }

    #[test]
    fn restarts_are_bounded_by_the_start_limit() {
        let mut u = Unit::new(Spec {
            pre: vec![],
            main: Some(step("/bin/false")),
            post: vec![],
            stop: vec![],
            stop_post: vec![],
            timeout_start_ms: None,
            timeout_stop_ms: 1_000,
            restart: Restart::Always,
            restart_ms: 100,
        });
        let mut now = 0;
        let mut cmds = u.handle(Event::Start, now);
        let mut runs = 0;
        while let [Cmd::Exec { id, .. }] = cmds.as_slice() {
            runs += 1;
            // The command runs and exits at once (exit 1).
            let id = *id;
            u.handle(Event::MainStarted { id }, now);
            u.handle(
                Event::MainExited {
                    code: 1,
                    oom_killed: false,
                },
                now,
            );
            now += 100;
            cmds = u.handle(Event::Tick, now);
        }
        assert_eq!(runs, START_LIMIT_BURST);
        assert_eq!(u.failure(), Some(&Failure::StartLimit));
    }

    #[test]
    fn a_stop_that_times_out_kills_the_main_process() {
        let mut u = started(Restart::No);
        let (id, ..) = exec(&u.handle(Event::Stop, 100));
        // ExecStop returned but the container is still up.
        assert_eq!(
            done(&mut u, id, true, 101),
            vec![Cmd::StopMain { timeout_ms: 10_000 }]
        );
        assert_eq!(u.reported().sub, "stop-sigterm");
        assert!(u.handle(Event::Tick, 5_000).is_empty());
        assert_eq!(u.handle(Event::Tick, 10_101), vec![Cmd::KillMain]);
        assert_eq!(u.reported().sub, "final-sigkill");
        let (_, st, _) = exec(&u.handle(
            Event::MainExited {
                code: 137,
                oom_killed: false,
            },
            10_102,
        ));
        assert_eq!(st, Stage::StopPost);
    }

    #[test]
    fn a_start_timeout_fails_the_start() {
        let mut spec = apache(Restart::No);
        spec.timeout_start_ms = Some(1_000);
        let mut u = Unit::new(spec);
        let (_id, ..) = exec(&u.handle(Event::Start, 0));
        // The first pre step hangs.
        let (_, st, _) = exec(&u.handle(Event::Tick, 1_000));
        assert_eq!(st, Stage::StopPost);
        assert!(u.journal().any(|l| l.contains("start timed out")));
    }

    #[test]
    fn fencing_kills_at_once() {
        let mut u = started(Restart::Always);
        let cmds = u.handle(Event::Fence, 50);
        assert!(cmds.contains(&Cmd::KillMain), "{cmds:?}");
        assert!(matches!(
            cmds.first(),
            Some(Cmd::Exec {
                stage: Stage::Stop,
                ..
            })
        ));
    }

    #[test]
    fn fencing_a_unit_without_exec_stop_kills_it_with_no_grace_period() {
        let mut spec = apache(Restart::Always);
        spec.stop.clear();
        let mut u = Unit::new(spec);
        let (id, ..) = exec(&u.handle(Event::Start, 0));
        let (id, ..) = exec(&done(&mut u, id, true, 1));
        let (id, ..) = exec(&done(&mut u, id, true, 2));
        let (id, st, _) = exec(&done(&mut u, id, true, 3));
        assert_eq!(st, Stage::Main);
        let (id, ..) = exec(&u.handle(Event::MainStarted { id }, 4));
        assert!(done(&mut u, id, true, 5).is_empty());
        assert!(u.is_active());
        assert_eq!(u.handle(Event::Fence, 50), [Cmd::KillMain]);
        assert_eq!(u.reported().sub, "final-sigkill");
        // Already killed: a second fence sends nothing more.
        assert!(u.handle(Event::Fence, 60).is_empty());
    }

    #[test]
    fn fencing_a_unit_draining_after_a_stop_kills_it_at_once() {
        let mut spec = apache(Restart::No);
        spec.stop.clear();
        let mut u = Unit::new(spec);
        let (id, ..) = exec(&u.handle(Event::Start, 0));
        let (id, ..) = exec(&done(&mut u, id, true, 1));
        let (id, ..) = exec(&done(&mut u, id, true, 2));
        let (id, ..) = exec(&done(&mut u, id, true, 3));
        let (id, ..) = exec(&u.handle(Event::MainStarted { id }, 4));
        done(&mut u, id, true, 5);
        assert_eq!(
            u.handle(Event::Stop, 10),
            [Cmd::StopMain { timeout_ms: 10_000 }]
        );
        assert_eq!(u.handle(Event::Fence, 20), [Cmd::KillMain]);
    }

    #[test]
    fn a_stop_during_start_waits_for_the_running_step_then_stops() {
        let mut u = Unit::new(apache(Restart::No));
        let (id, ..) = exec(&u.handle(Event::Start, 0));
        assert!(u.handle(Event::Stop, 1).is_empty());
        // The kill step ends; nothing started yet, so only ExecStopPost runs.
        let (id, st, _) = exec(&done(&mut u, id, true, 2));
        assert_eq!(st, Stage::StopPost);
        assert!(done(&mut u, id, true, 3).is_empty());
        assert_eq!(u.reported().sub, "dead");
    }

    #[test]
    fn adopted_units_are_active_without_running_a_step() {
        let mut u = Unit::adopted(apache(Restart::No));
        assert!(u.is_active());
        assert!(u.handle(Event::Start, 0).is_empty());
    }
}
