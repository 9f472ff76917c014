//! Where the scheduler's state lives in the replicated store (as fleet kept its state in
//! etcd), and its JSON records. Everything sits under the hidden prefix `/_flotilla`, so a
//! plain `etcdctl ls /` does not show it.
//!
//! | key | written by | what |
//! | --- | --- | --- |
//! | `units/<unit>` | API | [`UnitRecord`]: options and desired state |
//! | `schedule/<machine>/<unit>` | engine | [`Entry`]: a placement (one prefix per machine, so an agent watches only its own) |
//! | `machines/<id>` (TTL) | each machine | [`MachineRecord`]: presence, IP, configured metadata |
//! | `metadata/<id>/<key>` | API (`PATCH /machines`) | [`DynMeta`]: dynamic metadata, overriding the configured |
//! | `states/<unit>/<machine>` (TTL) | agents | [`UnitState`]: what systemd would say |
//! | `engine` | engine | [`Lease`]: who schedules; its index fences every engine commit |

use super::place::{Desired, Entry, Machine, Schedule, Unit};
use super::require::Requirements;
use crate::kv::NodeView;
use crate::unitfile::file::{hash, UnitOption};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const ROOT: &str = "/_flotilla";
pub const UNITS: &str = "/_flotilla/units";
pub const SCHEDULE: &str = "/_flotilla/schedule";
pub const MACHINES: &str = "/_flotilla/machines";
pub const METADATA: &str = "/_flotilla/metadata";
pub const STATES: &str = "/_flotilla/states";
pub const LEASE: &str = "/_flotilla/engine";

pub fn unit_key(unit: &str) -> String {
    format!("{UNITS}/{unit}")
}

pub fn schedule_dir(machine: &str) -> String {
    format!("{SCHEDULE}/{machine}")
}

pub fn schedule_key(machine: &str, unit: &str) -> String {
    format!("{SCHEDULE}/{machine}/{unit}")
}

pub fn machine_key(machine: &str) -> String {
    format!("{MACHINES}/{machine}")
}

pub fn state_key(unit: &str, machine: &str) -> String {
    format!("{STATES}/{unit}/{machine}")
}

/// A unit as the API stores it: the user's intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitRecord {
    pub name: String,
    pub options: Vec<UnitOption>,
    pub desired_state: Desired,
}

/// A machine's presence record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineRecord {
    pub id: String,
    #[serde(
        default,
        rename = "primaryIP",
        skip_serializing_if = "String::is_empty"
    )]
    pub primary_ip: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Where its agent serves unit journals (not part of fleet's machine entity).
    #[serde(default, rename = "agentURL", skip_serializing_if = "String::is_empty")]
    pub agent_url: String,
    /// The TTL its agent renews this key with, seconds (flotilla's, for "last renewal").
    #[serde(default, rename = "agentTTL", skip_serializing_if = "is_zero")]
    pub agent_ttl_s: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A dynamic metadata item: a value, or a tombstone hiding a configured one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DynMeta {
    Value(String),
    Removed,
}

/// A unit's state on one machine, as its agent publishes it (fleet's `UnitState`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitState {
    pub name: String,
    pub hash: String,
    #[serde(rename = "machineID")]
    pub machine_id: String,
    pub systemd_load_state: String,
    pub systemd_active_state: String,
    pub systemd_sub_state: String,
    /// The main container's address on the cluster network, if it has one (not part of
    /// fleet's state entity; DNS answers the unit's name with it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// The host ports the main container publishes (SRV records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// The engine's lease: the member scheduling and the Raft term it took over in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub member: String,
    pub term: u64,
}

/// A stored unit, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUnit {
    pub record: UnitRecord,
    pub hash: String,
    pub modified_index: u64,
}

impl StoredUnit {
    pub fn parse(value: &str, modified_index: u64) -> Option<Self> {
        let record: UnitRecord = serde_json::from_str(value).ok()?;
        Some(Self {
            hash: hash(&record.options),
            record,
            modified_index,
        })
    }

    /// The unit as placement sees it.
    pub fn placement(&self) -> Unit {
        let name = &self.record.name;
        Unit {
            name: name.clone(),
            req: Requirements::of(name, &self.record.options),
            desired: self.record.desired_state,
            hash: self.hash.clone(),
            template: crate::unitfile::name::NameInfo::new(name).is_template(),
        }
    }
}

/// A live machine as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineView {
    pub id: String,
    #[serde(rename = "primaryIP", skip_serializing_if = "String::is_empty")]
    pub primary_ip: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl MachineView {
    pub fn placement(&self) -> Machine {
        Machine {
            id: self.id.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

/// The last path segment of a key.
pub fn base(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

fn children(n: &NodeView) -> &[NodeView] {
    n.nodes.as_deref().unwrap_or(&[])
}

/// Each live machine's agent URL (where it serves journals).
pub fn agent_urls(machines_dir: Option<&NodeView>) -> BTreeMap<String, String> {
    machines_dir
        .map(children)
        .unwrap_or_default()
        .iter()
        .filter_map(|n| {
            let rec: MachineRecord = serde_json::from_str(n.value.as_deref()?).ok()?;
            (!rec.agent_url.is_empty()).then(|| (base(&n.key).to_string(), rec.agent_url))
        })
        .collect()
}

/// Live machines, with dynamic metadata laid over what each configured.
pub fn machines(
    machines_dir: Option<&NodeView>,
    metadata_dir: Option<&NodeView>,
) -> BTreeMap<String, MachineView> {
    let mut dynamic: BTreeMap<&str, BTreeMap<&str, DynMeta>> = BTreeMap::new();
    for m in metadata_dir.map(children).unwrap_or_default() {
        for item in children(m) {
            let parsed = item
                .value
                .as_deref()
                .and_then(|v| serde_json::from_str(v).ok());
            if let Some(d) = parsed {
                dynamic
                    .entry(base(&m.key))
                    .or_default()
                    .insert(base(&item.key), d);
            }
        }
    }
    let mut out = BTreeMap::new();
    for n in machines_dir.map(children).unwrap_or_default() {
        let Some(rec) = n
            .value
            .as_deref()
            .and_then(|v| serde_json::from_str::<MachineRecord>(v).ok())
        else {
            continue;
        };
        let id = base(&n.key).to_string();
        let mut metadata = rec.metadata;
        for (k, d) in dynamic.get(id.as_str()).into_iter().flatten() {
            match d {
                DynMeta::Value(v) => metadata.insert(k.to_string(), v.clone()),
                DynMeta::Removed => metadata.remove(*k),
            };
        }
        out.insert(
            id.clone(),
            MachineView {
                id,
                primary_ip: rec.primary_ip,
                metadata,
            },
        );
    }
    out
}

/// The schedule from the `schedule/` tree. Entries that do not parse are kept with a
/// hash no unit has, so the engine rewrites them.
pub fn schedule(schedule_dir: Option<&NodeView>) -> Schedule {
    let mut out: Schedule = BTreeMap::new();
    for m in schedule_dir.map(children).unwrap_or_default() {
        for e in children(m) {
            let entry = e
                .value
                .as_deref()
                .and_then(|v| serde_json::from_str::<Entry>(v).ok())
                .unwrap_or(Entry {
                    desired: Desired::Inactive,
                    hash: String::new(),
                });
            out.entry(base(&e.key).to_string())
                .or_default()
                .insert(base(&m.key).to_string(), entry);
        }
    }
    out
}

/// Published unit states: unit → machine → state.
pub fn states(states_dir: Option<&NodeView>) -> BTreeMap<String, BTreeMap<String, UnitState>> {
    let mut out: BTreeMap<String, BTreeMap<String, UnitState>> = BTreeMap::new();
    for u in states_dir.map(children).unwrap_or_default() {
        for s in children(u) {
            if let Some(st) = s
                .value
                .as_deref()
                .and_then(|v| serde_json::from_str::<UnitState>(v).ok())
            {
                out.entry(base(&u.key).to_string())
                    .or_default()
                    .insert(base(&s.key).to_string(), st);
            }
        }
    }
    out
}

/// The child of `root` named `name`, if `root` lists it.
pub fn child<'a>(root: &'a NodeView, name: &str) -> Option<&'a NodeView> {
    children(root).iter().find(|n| base(&n.key) == name)
}
