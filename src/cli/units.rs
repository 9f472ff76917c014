//! `flotilla units`: fleetctl's verbs, output and exit codes, over fleet's API v1.
//!
//! One difference on purpose: `start` (and `load`) of a unit that cannot be placed does
//! not wait in silence. It prints why (which constraint refuses which machine) and, if
//! the unit stays unplaceable, gives up with a non-zero exit.

use super::kv::PlainError;
use super::table::Table;
use super::Exit;
use crate::api::fleet::UnitJson;
use crate::client::endpoints::{segment, Endpoints};
use crate::client::fleet::FleetClient;
use crate::sched::place::Desired;
use crate::sched::require::validate as validate_options;
use crate::unitfile::file::{hash, parse, serialize, UnitOption};
use crate::unitfile::name::{validate as validate_name, NameInfo};
use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct UnitsArgs {
    /// fleet API endpoints (a flotilla member's client URL), comma-separated.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:2379",
        env = "FLEETCTL_ENDPOINT"
    )]
    endpoint: String,
    #[command(flatten)]
    tls: super::tls::ClientTlsArgs,
    /// Seconds to wait for each API request.
    #[arg(
        long,
        global = true,
        default_value_t = 3.0,
        env = "FLEETCTL_REQUEST_TIMEOUT"
    )]
    request_timeout: f64,
    /// Do not wait for units to reach their state.
    #[arg(long, global = true)]
    no_block: bool,
    /// Wait at most this many attempts (of about 2 s each); 0 waits as long as the unit
    /// is on its way (an unplaceable unit still gives up after 10 attempts).
    #[arg(long, global = true, default_value_t = 0)]
    block_attempts: u32,
    #[command(subcommand)]
    cmd: UnitsCmd,
}

#[derive(Args, Debug, Clone, Default)]
struct ListOpts {
    /// Do not shorten ids and hashes.
    #[arg(long, short = 'l')]
    full: bool,
    /// Do not print the header line.
    #[arg(long)]
    no_legend: bool,
    /// Columns to show, comma-separated.
    #[arg(long)]
    fields: Option<String>,
}

#[derive(Subcommand, Debug)]
enum UnitsCmd {
    /// Upload unit files (desired state inactive).
    Submit {
        units: Vec<String>,
        #[arg(long)]
        replace: bool,
    },
    /// Submit and place units on machines (desired state loaded).
    Load {
        units: Vec<String>,
        #[arg(long)]
        replace: bool,
    },
    /// Submit, place and start units (desired state launched).
    Start {
        units: Vec<String>,
        #[arg(long)]
        replace: bool,
    },
    /// Stop units (desired state loaded).
    Stop { units: Vec<String> },
    /// Stop and take units off their machines (desired state inactive).
    Unload { units: Vec<String> },
    /// Remove units from the cluster.
    Destroy { units: Vec<String> },
    /// Restart launched units.
    Restart { units: Vec<String> },
    /// Print a unit's file as the cluster holds it.
    Cat { unit: String },
    /// Where a unit is and what its machine reports.
    Status { units: Vec<String> },
    /// What the unit's machine recorded: each step's result, state changes, and the
    /// main container's latest output.
    Journal {
        unit: String,
        /// Lines to show.
        #[arg(short = 'n', long = "lines", default_value_t = 10)]
        lines: usize,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Units' states as their machines report them.
    ListUnits(ListOpts),
    /// Units in the cluster, their desired and current states and targets.
    ListUnitFiles(ListOpts),
    /// Machines in the cluster.
    ListMachines(ListOpts),
}

/// The machines' public IPs by id.
async fn machine_ips(c: &FleetClient) -> Result<BTreeMap<String, String>> {
    Ok(c.machines()
        .await?
        .into_iter()
        .map(|m| (m.id, m.primary_ip))
        .collect())
}

/// fleetctl's name mangling: the file's base name, `.service` added unless it names a
/// unit type fleetctl knows.
pub fn unit_name(arg: &str) -> String {
    let base = Path::new(arg)
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_else(|| arg.to_string());
    const KNOWN: &[&str] = &[
        ".service",
        ".socket",
        ".timer",
        ".path",
        ".device",
        ".mount",
        ".automount",
    ];
    if KNOWN.iter().any(|k| base.ends_with(k)) {
        base
    } else {
        format!("{base}.service")
    }
}

/// `<id8>...` (or the whole id) and `/<ip>` when known: fleetctl's machine legend.
fn legend(id: &str, ip: &str, full: bool) -> String {
    let id = if full {
        id.to_string()
    } else {
        format!("{}...", id.chars().take(8).collect::<String>())
    };
    if ip.is_empty() {
        id
    } else {
        format!("{id}/{ip}")
    }
}

pub fn run(a: UnitsArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(exec(a))
}

async fn exec(a: UnitsArgs) -> Result<()> {
    if !(a.request_timeout > 0.0 && a.request_timeout < 3600.0) {
        bail!("--request-timeout must be between 0 and 3600 seconds");
    }
    let endpoints = Endpoints::parse("--endpoint", &a.endpoint).map_err(anyhow::Error::msg)?;
    let c = FleetClient::new(endpoints, Duration::from_secs_f64(a.request_timeout));
    a.tls.install(c.endpoints().urls())?;
    let wait = Wait {
        block: !a.no_block,
        attempts: a.block_attempts,
    };
    match a.cmd {
        UnitsCmd::Submit { units, replace } => {
            for u in &units {
                let name = submit(&c, u, replace, Desired::Inactive).await?;
                println!("Unit {name} inactive");
            }
            Ok(())
        }
        UnitsCmd::Load { units, replace } => {
            activate(&c, &units, replace, Desired::Loaded, wait).await
        }
        UnitsCmd::Start { units, replace } => {
            activate(&c, &units, replace, Desired::Launched, wait).await
        }
        UnitsCmd::Stop { units } => stop(&c, &units, wait).await,
        UnitsCmd::Unload { units } => unload(&c, &units, wait).await,
        UnitsCmd::Destroy { units } => destroy(&c, &units).await,
        UnitsCmd::Restart { units } => restart(&c, &units, wait).await,
        UnitsCmd::Cat { unit } => {
            let name = unit_name(&unit);
            let Some(u) = c.unit(&name).await? else {
                bail!("Unit {name} not found");
            };
            print!("{}", serialize(&u.options));
            Ok(())
        }
        UnitsCmd::Status { units } => status(&c, &units).await,
        UnitsCmd::Journal {
            unit,
            lines,
            follow,
        } => journal(&c, &unit_name(&unit), lines, follow).await,
        UnitsCmd::ListUnits(o) => list_units(&c, &o).await,
        UnitsCmd::ListUnitFiles(o) => list_unit_files(&c, &o).await,
        UnitsCmd::ListMachines(o) => list_machines(&c, &o).await,
    }
}

/// The options for `arg`: its local file; for an instance without one, the template's
/// options from the cluster, else a local template file beside it.
async fn local_options(c: &FleetClient, arg: &str, name: &str) -> Result<Vec<UnitOption>> {
    if let Some(o) = read_unit_file(Path::new(arg)).await? {
        return Ok(o);
    }
    let info = NameInfo::new(name);
    if let Some(t) = info.template() {
        if let Some(tu) = c.unit(&t).await? {
            return Ok(tu.options);
        }
        let beside = Path::new(arg).with_file_name(&t);
        if let Some(o) = read_unit_file(&beside).await? {
            return Ok(o);
        }
    }
    bail!("unable to find unit file {arg} (or a template for it)")
}

/// A local unit file's options; `None` if there is no such file.
async fn read_unit_file(p: &Path) -> Result<Option<Vec<UnitOption>>> {
    use flotilla_shims::Files;
    let Some(bytes) = flotilla_shims::files::RealFiles
        .read(&p.display().to_string())
        .await
        .map_err(|e| anyhow!("{}: {e}", p.display()))?
    else {
        return Ok(None);
    };
    let text = String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", p.display()))?;
    let opts = parse(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?;
    Ok(Some(opts))
}

/// Creates the unit if the cluster lacks it (with `desired`), warns if the cluster's
/// differs from the local file. Returns the unit's name.
async fn submit(c: &FleetClient, arg: &str, replace: bool, desired: Desired) -> Result<String> {
    let name = unit_name(arg);
    validate_name(&name).map_err(|e| anyhow!("{name}: {e}"))?;
    let existing = c.unit(&name).await?;
    let local = match (&existing, Path::new(arg).exists()) {
        (Some(_), false) => return Ok(name),
        _ => local_options(c, arg, &name).await?,
    };
    validate_options(&local).map_err(|e| anyhow!("{name}: {e}"))?;
    if let Some(u) = &existing {
        if hash(&u.options) == hash(&local) {
            return Ok(name);
        }
        if !replace {
            eprintln!(
                "WARNING: Unit {name} in registry differs from local unit file {arg}. Add --replace to override."
            );
            return Ok(name);
        }
    }
    c.create(&name, desired, &local).await?;
    Ok(name)
}

#[derive(Clone, Copy)]
struct Wait {
    block: bool,
    attempts: u32,
}

/// Polls in a fleetctl attempt (about 2 s of 250 ms polls).
const POLLS_PER_ATTEMPT: u32 = 8;
/// With `--block-attempts=0`, an unplaceable unit gives up after this many attempts.
const UNPLACEABLE_ATTEMPTS_MAX: u32 = 10;

/// `load` / `start`: submit, set the desired state, wait for it.
async fn activate(
    c: &FleetClient,
    args: &[String],
    replace: bool,
    desired: Desired,
    w: Wait,
) -> Result<()> {
    if args.is_empty() {
        eprintln!("No units given");
        return Ok(());
    }
    let verb = if desired == Desired::Launched {
        "start"
    } else {
        "load"
    };
    for arg in args {
        let name = unit_name(arg);
        if NameInfo::new(&name).is_template() {
            let example = name.replacen("@.", "@1.", 1);
            bail!("Unit {name} is a template: {verb} an instance of it (such as {example})");
        }
    }
    let mut waiting = vec![];
    for arg in args {
        let name = submit(c, arg, replace, desired).await?;
        let u = c
            .unit(&name)
            .await?
            .ok_or_else(|| anyhow!("Unit {name} vanished after submit"))?;
        if u.desired_state != desired.as_str() {
            c.set_state(&name, desired).await?;
        }
        let global = u.machine_id.is_empty() && u.current_state.is_empty();
        if global {
            println!("Triggered global unit {name} {verb}");
        } else if !w.block {
            println!("Triggered unit {name} {verb}");
        } else {
            waiting.push(name);
        }
    }
    let mut failed = false;
    for name in waiting {
        match wait_for(c, &name, desired.as_str(), w.attempts).await? {
            Ok(line) => println!("{line}"),
            Err(why) => {
                eprintln!("{why}");
                failed = true;
            }
        }
    }
    if failed {
        return Err(Exit(1).into());
    }
    Ok(())
}

/// Waits until `name`'s current state is `want`. `Ok(Err(msg))` when it gives up.
async fn wait_for(
    c: &FleetClient,
    name: &str,
    want: &str,
    attempts: u32,
) -> Result<Result<String, String>> {
    let mut w = Waiting::default();
    loop {
        if let Some(done) = w.poll(c, name, want, attempts).await? {
            return Ok(done);
        }
        flotilla_shims::Clock::sleep(
            &flotilla_shims::TokioClock::new(),
            Duration::from_millis(250),
        )
        .await;
    }
}

/// What a wait has seen so far.
#[derive(Default)]
struct Waiting {
    /// The last placement refusal printed.
    said: String,
    failed_polls: u32,
    unplaced_polls: u32,
    polls: u32,
}

impl Waiting {
    /// One look: `Some` when the wait is over (done, or given up with why).
    async fn poll(
        &mut self,
        c: &FleetClient,
        name: &str,
        want: &str,
        attempts: u32,
    ) -> Result<Option<Result<String, String>>> {
        let u = c.unit(name).await?;
        let cur = u
            .as_ref()
            .map(|u| u.current_state.clone())
            .unwrap_or_default();
        let machine = u.as_ref().map(|u| u.machine_id.clone()).unwrap_or_default();
        // `launched` is done once the machine reports the unit active (fleetctl waits
        // for an active systemd state too); a failure ends the wait at once.
        let state = if want != "inactive" && !machine.is_empty() {
            unit_state(c, name, &machine).await?
        } else {
            None
        };
        // A failed state just after the start was asked for may be the last run's: only
        // one that stays failed for a second is this start's.
        self.failed_polls = match state.as_deref() {
            Some("failed") => self.failed_polls + 1,
            _ => 0,
        };
        if self.failed_polls >= 4 {
            let why =
                format!("Unit {name} failed on {machine}: see `flotilla units journal {name}`");
            return Ok(Some(Err(why)));
        }
        // Stopped means all the way down: ExecStop and ExecStopPost done.
        let active = match want {
            "launched" => state.as_deref() == Some("active"),
            "loaded" => matches!(state.as_deref(), None | Some("inactive" | "failed")),
            _ => true,
        };
        if want == "inactive" && u.is_none() {
            return Ok(Some(Ok(String::new())));
        }
        if cur == want && active {
            if want == "inactive" {
                return Ok(Some(Ok(String::new())));
            }
            let ip = machine_ips(c)
                .await?
                .get(&machine)
                .cloned()
                .unwrap_or_default();
            let legend = legend(&machine, &ip, false);
            return Ok(Some(Ok(format!("Unit {name} {want} on {legend}"))));
        }
        self.placement(c, name, want, &machine, attempts).await
    }

    /// Counts the polls, says why an unplaced unit waits, and gives up in time.
    async fn placement(
        &mut self,
        c: &FleetClient,
        name: &str,
        want: &str,
        machine: &str,
        attempts: u32,
    ) -> Result<Option<Result<String, String>>> {
        if machine.is_empty() && want != "inactive" {
            self.unplaced_polls += 1;
            let why = placement_reason(c, name).await.unwrap_or_default();
            if !why.is_empty() && why != self.said {
                eprintln!("Unit {name} is not placed: {why}");
                self.said = why.clone();
            }
            if attempts == 0 && self.unplaced_polls >= UNPLACEABLE_ATTEMPTS_MAX * POLLS_PER_ATTEMPT
            {
                return Ok(Some(Err(format!(
                    "Unit {name} cannot be placed (gave up after {UNPLACEABLE_ATTEMPTS_MAX} attempts): {why}"
                ))));
            }
        } else {
            self.unplaced_polls = 0;
        }
        self.polls += 1;
        if attempts > 0 && self.polls >= attempts * POLLS_PER_ATTEMPT {
            let mut msg = format!("timed out waiting for unit {name} to report state {want}");
            if machine.is_empty() && !self.said.is_empty() {
                msg.push_str(&format!(": not placed: {}", self.said));
            }
            return Ok(Some(Err(msg)));
        }
        Ok(None)
    }
}

/// The unit's systemd active state on `machine`, as its agent reports it.
async fn unit_state(c: &FleetClient, name: &str, machine: &str) -> Result<Option<String>> {
    let st = c.state_on(name, machine).await?;
    Ok(st.map(|st| st.systemd_active_state))
}

async fn placement_reason(c: &FleetClient, name: &str) -> Result<String> {
    let p = c.placement(name).await?;
    Ok(p.map(|p| p.reason).unwrap_or_default())
}

/// The named units that exist, with their records.
async fn existing(c: &FleetClient, args: &[String]) -> Result<Vec<(String, UnitJson)>> {
    let mut out = vec![];
    for a in args {
        let name = unit_name(a);
        if let Some(u) = c.unit(&name).await? {
            out.push((name, u));
        }
    }
    Ok(out)
}

async fn stop(c: &FleetClient, args: &[String], w: Wait) -> Result<()> {
    let units = existing(c, args).await?;
    if units.is_empty() {
        eprintln!("Units not found in registry");
        return Ok(());
    }
    let mut stopped = vec![];
    for (name, u) in &units {
        let global = u.current_state.is_empty();
        if !global && u.current_state == "inactive" {
            let why = format!("Unable to stop unit {name} in state inactive");
            return Err(PlainError(why).into());
        }
        if u.desired_state == "loaded" {
            continue;
        }
        c.set_state(name, Desired::Loaded).await?;
        stopped.push(name.clone());
    }
    finish(c, &stopped, "loaded", w, "stopped").await
}

async fn unload(c: &FleetClient, args: &[String], w: Wait) -> Result<()> {
    let units = existing(c, args).await?;
    let mut changed = vec![];
    for (name, u) in &units {
        if u.desired_state != "inactive" {
            c.set_state(name, Desired::Inactive).await?;
            changed.push(name.clone());
        }
    }
    finish(c, &changed, "inactive", w, "unloaded").await
}

/// Waits for `names` to reach `want` (unless not blocking), then reports them.
async fn finish(c: &FleetClient, names: &[String], want: &str, w: Wait, done: &str) -> Result<()> {
    if !w.block {
        for n in names {
            println!(
                "Triggered unit {n} {}",
                if done == "stopped" { "stop" } else { "unload" }
            );
        }
        return Ok(());
    }
    for n in names {
        if let Err(why) = wait_for(c, n, want, w.attempts).await? {
            return Err(PlainError(why).into());
        }
    }
    if !names.is_empty() {
        eprintln!("Successfully {done} units [{}].", names.join(" "));
    }
    Ok(())
}

async fn destroy(c: &FleetClient, args: &[String]) -> Result<()> {
    for (name, _) in existing(c, args).await? {
        c.destroy(&name).await?;
        println!("Destroyed {name}");
    }
    Ok(())
}

async fn restart(c: &FleetClient, args: &[String], w: Wait) -> Result<()> {
    for (name, u) in existing(c, args).await? {
        match u.desired_state.as_str() {
            "launched" => {
                c.set_state(&name, Desired::Loaded).await?;
                if w.block {
                    if let Err(why) = wait_for(c, &name, "loaded", w.attempts).await? {
                        return Err(PlainError(why).into());
                    }
                }
            }
            "loaded" => {}
            other => {
                eprintln!("Unable to restart unit {name} in state {other}");
                continue;
            }
        }
        activate(c, std::slice::from_ref(&name), false, Desired::Launched, w).await?;
    }
    Ok(())
}

async fn status(c: &FleetClient, args: &[String]) -> Result<()> {
    let machines = machine_ips(c).await?;
    for a in args {
        let name = unit_name(a);
        let Some(u) = c.unit(&name).await? else {
            return Err(PlainError(format!("Unit {name} does not exist.")).into());
        };
        if u.desired_state == "inactive" {
            let why = format!("Unit {name} does not appear to be loaded.");
            return Err(PlainError(why).into());
        }
        let rows = c.states(&format!("unitName={}", segment(&name))).await?;
        println!("● {name} - {}", description(&u.options));
        if rows.is_empty() {
            let why = placement_reason(c, &name).await.unwrap_or_default();
            println!(
                "   Loaded: not loaded{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({why})")
                }
            );
        }
        for st in rows {
            let m = &st.machine_id;
            let ip = machines.get(m).cloned().unwrap_or_default();
            println!("   Loaded: {} ({})", st.systemd_load_state, st.hash);
            println!(
                "   Active: {} ({})",
                st.systemd_active_state, st.systemd_sub_state
            );
            println!("  Machine: {}", legend(m, &ip, true));
        }
    }
    Ok(())
}

async fn journal(c: &FleetClient, name: &str, n: usize, follow: bool) -> Result<()> {
    let mut last: Option<String> = None;
    loop {
        let lines = c.journal(name, n).await?.lines;
        // Print what follows the last line already shown (all of it the first time).
        let from = last
            .as_ref()
            .and_then(|l| lines.iter().rposition(|x| x == l).map(|i| i + 1))
            .unwrap_or(0);
        for l in &lines[from..] {
            println!("{l}");
        }
        if let Some(l) = lines.last() {
            last = Some(l.clone());
        }
        if !follow {
            return Ok(());
        }
        flotilla_shims::Clock::sleep(&flotilla_shims::TokioClock::new(), Duration::from_secs(1))
            .await;
    }
}

fn description(opts: &[UnitOption]) -> String {
    let d = crate::unitfile::file::description(opts);
    if d.is_empty() {
        "-".into()
    } else {
        d.to_string()
    }
}

/// The columns to print: `--fields` (each must be known) or the defaults.
fn columns<'a>(o: &ListOpts, known: &[&'a str], default: &[&'a str]) -> Result<Vec<&'a str>> {
    let Some(f) = &o.fields else {
        return Ok(default.to_vec());
    };
    let mut out = vec![];
    for x in f.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        match known.iter().find(|k| **k == x) {
            Some(k) => out.push(*k),
            None => bail!("Invalid key in output field: {x}"),
        }
    }
    if out.is_empty() {
        bail!("No fields provided");
    }
    Ok(out)
}

fn print_table(o: &ListOpts, cols: &[&str], rows: Vec<Vec<String>>) {
    let mut t = Table::new();
    if !o.no_legend {
        t.row(cols.iter().map(|c| c.to_uppercase()).collect());
    }
    for r in rows {
        t.row(r);
    }
    print!("{}", t.render());
}

fn short_hash(h: &str, full: bool) -> String {
    if full {
        h.to_string()
    } else {
        h.chars().take(7).collect()
    }
}

async fn list_units(c: &FleetClient, o: &ListOpts) -> Result<()> {
    let cols = columns(
        o,
        &["unit", "load", "active", "sub", "machine", "hash"],
        &["unit", "machine", "active", "sub"],
    )?;
    let machines = machine_ips(c).await?;
    let rows = c
        .states("")
        .await?
        .iter()
        .map(|st| {
            let m = &st.machine_id;
            let ip = machines.get(m).cloned().unwrap_or_default();
            cols.iter()
                .map(|col| match *col {
                    "unit" => st.name.clone(),
                    "load" => st.systemd_load_state.clone(),
                    "active" => st.systemd_active_state.clone(),
                    "sub" => st.systemd_sub_state.clone(),
                    "machine" => legend(m, &ip, o.full),
                    _ => short_hash(&st.hash, o.full),
                })
                .collect()
        })
        .collect();
    print_table(o, &cols, rows);
    Ok(())
}

async fn list_unit_files(c: &FleetClient, o: &ListOpts) -> Result<()> {
    let cols = columns(
        o,
        &[
            "unit", "hash", "dstate", "state", "target", "tmachine", "global", "desc",
        ],
        &["unit", "hash", "dstate", "state", "target"],
    )?;
    if cols.contains(&"tmachine") {
        eprintln!("WARNING: tmachine field is deprecated. Please use target instead.");
    }
    let machines = machine_ips(c).await?;
    let rows = c
        .units()
        .await?
        .iter()
        .map(|u| {
            let opts = &u.options;
            let global = crate::sched::require::Requirements::of(&u.name, opts).global;
            let m = u.machine_id.clone();
            let target = if global {
                "global".to_string()
            } else if m.is_empty() {
                "-".to_string()
            } else {
                legend(
                    &m,
                    machines.get(&m).map(String::as_str).unwrap_or(""),
                    o.full,
                )
            };
            let state = u.current_state.clone();
            cols.iter()
                .map(|col| match *col {
                    "unit" => u.name.clone(),
                    "hash" => short_hash(&hash(opts), o.full),
                    "dstate" => u.desired_state.clone(),
                    "state" if global || state.is_empty() => "-".into(),
                    "state" => state.clone(),
                    "target" | "tmachine" => target.clone(),
                    "global" => global.to_string(),
                    _ => description(opts),
                })
                .collect()
        })
        .collect();
    print_table(o, &cols, rows);
    Ok(())
}

async fn list_machines(c: &FleetClient, o: &ListOpts) -> Result<()> {
    let cols = columns(
        o,
        &["machine", "ip", "metadata"],
        &["machine", "ip", "metadata"],
    )?;
    let rows = c
        .machines()
        .await?
        .iter()
        .map(|m| {
            let meta = &m.metadata;
            let meta = if meta.is_empty() {
                "-".to_string()
            } else {
                meta.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let ip = m.primary_ip.clone();
            cols.iter()
                .map(|col| match *col {
                    "machine" => legend(&m.id, "", o.full),
                    "ip" if ip.is_empty() => "-".into(),
                    "ip" => ip.clone(),
                    _ => meta.clone(),
                })
                .collect()
        })
        .collect();
    print_table(o, &cols, rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_mangled_as_fleetctl_does() {
        assert_eq!(unit_name("/tmp/x/apache@.service"), "apache@.service");
        assert_eq!(unit_name("foo"), "foo.service");
        assert_eq!(unit_name("foo.link"), "foo.link.service");
        assert_eq!(unit_name("a.socket"), "a.socket");
    }

    #[test]
    fn machine_legends() {
        assert_eq!(
            legend("0123456789", "10.0.0.1", false),
            "01234567.../10.0.0.1"
        );
        assert_eq!(legend("abc", "", false), "abc...");
        assert_eq!(legend("abc", "1.2.3.4", true), "abc/1.2.3.4");
    }
}
