//! fleet's API v1 (`/fleet/v1`, and the legacy `/v1-alpha`) on the client port: units,
//! their states, machines. Status codes, messages and JSON shapes are fleet's
//! (`../shared/reference/fleet-semantics.md` b), except where fleet had a bug: an unknown
//! `desiredState`, or a template created launched, is a 400 here, and a replaced unit's
//! options are validated.
//!
//! Reads come from the local replica (as etcd's default GET); writes are compare-and-swap
//! on the unit's record, retried a bounded number of times when they race.

use super::{Api, Reply};
use crate::client::{inproc::InProc, ClientError, KvClient, SetOpts};
use crate::kv::{NodeView, Precondition};
use crate::sched::place::{self, Desired};
use crate::sched::registry::{self, DynMeta, MachineView, StoredUnit, UnitRecord, UnitState};
use crate::sched::require::validate as validate_options;
use crate::unitfile::file::{hash, UnitOption};
use crate::unitfile::name::{validate as validate_name, NameInfo};
use base64::Engine as _;
use bytes::Bytes;
use flotilla_shims::http::full;
use http::{HeaderValue, Method, Request, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Items per page, fleet's `token_limit`.
pub const TOKEN_LIMIT: u16 = 100;
/// A PUT racing other writers to the same unit retries this many times.
const CAS_ATTEMPTS_MAX: usize = 8;
pub const SERVER: &str = "fleetd/0.13.0 (flotilla)";

/// A unit as the API shows it (Go's field order, empty fields omitted).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UnitJson {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current_state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub desired_state: String,
    #[serde(
        default,
        rename = "machineID",
        skip_serializing_if = "String::is_empty"
    )]
    pub machine_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<UnitOption>,
}

/// A unit state as the API shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateJson {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    #[serde(
        default,
        rename = "machineID",
        skip_serializing_if = "String::is_empty"
    )]
    pub machine_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub systemd_active_state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub systemd_load_state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub systemd_sub_state: String,
}

/// One page of a collection: `units`, `machines` or `states`, and the next page's token.
#[derive(Debug, Clone, Deserialize)]
pub struct PageJson<T> {
    #[serde(
        default = "Vec::new",
        alias = "units",
        alias = "machines",
        alias = "states"
    )]
    pub items: Vec<T>,
    #[serde(default, rename = "nextPageToken")]
    pub next_page_token: String,
}

/// flotilla's `GET /flotilla/v1/placement/<unit>`: where a unit is (`machineID`), or
/// why it is nowhere (`reason`), or that it waits for the engine's next pass (`pending`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlacementJson {
    pub name: String,
    #[serde(
        default,
        rename = "machineID",
        skip_serializing_if = "String::is_empty"
    )]
    pub machine_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

/// A unit's journal on its machine (`GET /flotilla/v1/journal/<unit>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JournalJson {
    pub name: String,
    #[serde(rename = "machineID")]
    pub machine_id: String,
    pub lines: Vec<String>,
}

/// fleet's error body: `{"error":{"code":N,"message":"…"}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorJson {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: u16,
    #[serde(default)]
    pub message: String,
}

impl ErrorJson {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            error: ErrorBody {
                code,
                message: message.into(),
            },
        }
    }
}

impl From<&UnitState> for StateJson {
    fn from(s: &UnitState) -> Self {
        Self {
            hash: s.hash.clone(),
            machine_id: s.machine_id.clone(),
            name: s.name.clone(),
            systemd_active_state: s.systemd_active_state.clone(),
            systemd_load_state: s.systemd_load_state.clone(),
            systemd_sub_state: s.systemd_sub_state.clone(),
        }
    }
}

/// The registry as one request reads it from the local replica.
pub struct Snapshot {
    pub units: BTreeMap<String, StoredUnit>,
    pub machines: BTreeMap<String, MachineView>,
    pub schedule: place::Schedule,
    pub states: BTreeMap<String, BTreeMap<String, UnitState>>,
}

impl Snapshot {
    /// Where a plain unit is placed.
    pub fn machine_of(&self, unit: &str) -> Option<&str> {
        self.schedule
            .get(unit)
            .and_then(|m| m.keys().next())
            .map(String::as_str)
    }

    /// fleet's derived view of a unit: `currentState` is `inactive` unless its machine has
    /// published a state for it (`loaded`), `launched` when that state says so.
    pub fn unit_json(&self, u: &StoredUnit, list: bool) -> UnitJson {
        let r = &u.record;
        let global = u.placement().req.global;
        let mut j = UnitJson {
            desired_state: r.desired_state.as_str().into(),
            name: r.name.clone(),
            options: r.options.clone(),
            ..Default::default()
        };
        if global {
            // fleet's quirk, kept: the list says inactive, a single GET says nothing.
            if list {
                j.current_state = "inactive".into();
            }
            return j;
        }
        j.current_state = "inactive".into();
        if let Some(m) = self.machine_of(&r.name) {
            j.machine_id = m.to_string();
            if let Some(st) = self.states.get(&r.name).and_then(|s| s.get(m)) {
                j.current_state = if launched(st) { "launched" } else { "loaded" }.into();
            }
        }
        j
    }

    /// The placement view, for explaining why a unit waits.
    pub fn explain(&self, unit: &str) -> String {
        let units = self
            .units
            .iter()
            .map(|(k, u)| (k.clone(), u.placement()))
            .collect();
        let machines = self
            .machines
            .iter()
            .map(|(k, m)| (k.clone(), m.placement()))
            .collect();
        place::explain(&machines, &units, &self.schedule, unit)
    }
}

/// An agent reports a unit it started as active (or on its way there).
fn launched(st: &UnitState) -> bool {
    matches!(
        st.systemd_active_state.as_str(),
        "active" | "activating" | "reloading"
    )
}

fn get_dir(api: &Api, key: &str) -> Option<NodeView> {
    api.raft
        .shared
        .machine()
        .store
        .get(key, true)
        .ok()
        .map(|e| e.node)
}

/// Reads the registry from the local replica.
pub fn snapshot(api: &Api) -> Snapshot {
    let units_dir = get_dir(api, registry::UNITS);
    let units = units_dir
        .iter()
        .flat_map(|n| n.nodes.iter().flatten())
        .filter_map(|n| {
            let u = StoredUnit::parse(n.value.as_deref()?, n.modified_index)?;
            Some((u.record.name.clone(), u))
        })
        .collect();
    let machines = registry::machines(
        get_dir(api, registry::MACHINES).as_ref(),
        get_dir(api, registry::METADATA).as_ref(),
    );
    // Only live machines report: a dead machine's states outlive its key (they are
    // refreshed rarely) but are not shown.
    let mut states = registry::states(get_dir(api, registry::STATES).as_ref());
    for by_machine in states.values_mut() {
        by_machine.retain(|m, _| machines.contains_key(m));
    }
    states.retain(|_, by_machine| !by_machine.is_empty());
    Snapshot {
        units,
        machines,
        schedule: registry::schedule(get_dir(api, registry::SCHEDULE).as_ref()),
        states,
    }
}

/// fleet's page token: URL-safe base64 (padded) of `u16 limit, u16 page`, little-endian.
pub fn encode_token(page: u16) -> String {
    let mut b = TOKEN_LIMIT.to_le_bytes().to_vec();
    b.extend_from_slice(&page.to_le_bytes());
    base64::engine::general_purpose::URL_SAFE.encode(b)
}

fn page_from_query(query: Option<&str>) -> Result<u16, String> {
    let values: Vec<String> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "nextPageToken")
        .map(|(_, v)| v.into_owned())
        .collect();
    let v = match values.as_slice() {
        [] => return Ok(1),
        [v] => v,
        _ => return Err("too many values for page token".into()),
    };
    let raw = base64::engine::general_purpose::URL_SAFE
        .decode(v)
        .map_err(|e| format!("illegal base64 data: {e}"))?;
    if raw.len() < 4 {
        return Err("unexpected EOF".into());
    }
    let limit = u16::from_le_bytes([raw[0], raw[1]]);
    let page = u16::from_le_bytes([raw[2], raw[3]]);
    if limit != TOKEN_LIMIT {
        return Err(format!("token limit must be {TOKEN_LIMIT}"));
    }
    if page == 0 {
        return Err("token page must be greater than zero".into());
    }
    Ok(page)
}

/// Items of page `page` and the next page's token: fleet gives one whenever the page
/// starts inside the collection and does not reach past its end.
fn paginate<T: Clone>(all: &[T], page: u16) -> (Vec<T>, String) {
    let limit = TOKEN_LIMIT as usize;
    let start = (page as usize - 1) * limit;
    let stop = page as usize * limit;
    if start >= all.len() {
        return (vec![], String::new());
    }
    if stop > all.len() {
        (all[start..].to_vec(), String::new())
    } else {
        (
            all[start..stop].to_vec(),
            encode_token(page.saturating_add(1)),
        )
    }
}

impl Api {
    /// `rest` is the path after the `/fleet/v1` (or `/v1-alpha`) prefix.
    pub(super) async fn fleet(&self, req: &Request<Bytes>, rest: &str) -> Reply {
        let mut r = self.fleet_route(req, rest).await;
        r.headers_mut()
            .insert(http::header::SERVER, HeaderValue::from_static(SERVER));
        r
    }

    async fn fleet_route(&self, req: &Request<Bytes>, rest: &str) -> Reply {
        if !self.fleet_access(req, rest) {
            return fleet_error(
                StatusCode::UNAUTHORIZED,
                "the request requires user authentication: the caller's roles do not reach this resource",
            );
        }
        let m = req.method();
        let q = req.uri().query();
        let item = |base: &str| -> Option<String> {
            let it = rest.strip_prefix(base)?.strip_prefix('/')?;
            (!it.is_empty() && !it.contains('/')).then(|| it.to_string())
        };
        match rest {
            "" => return fleet_error(StatusCode::METHOD_NOT_ALLOWED, ""),
            "/discovery" if m == Method::GET => return discovery(),
            // fleet's discovery handler answers 400, not 405, with its own words.
            "/discovery" => {
                return fleet_error(
                    StatusCode::BAD_REQUEST,
                    "only HTTP GET supported against this resource",
                )
            }
            "/units" | "/state" if m != Method::GET => {
                return fleet_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "only GET supported against this resource",
                )
            }
            "/units" => return self.list_units(q),
            "/state" => return self.list_states(q),
            "/machines" => {
                return match *m {
                    Method::GET => self.list_machines(q),
                    Method::PATCH => self.patch_machines(req.body()).await,
                    _ => fleet_error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "only GET and PATCH supported against this resource",
                    ),
                }
            }
            _ => {}
        }
        if let Some(name) = item("/units") {
            return match *m {
                Method::GET => self.get_unit(&name),
                Method::PUT => self.put_unit(req, &name).await,
                Method::DELETE => self.delete_unit(&name).await,
                _ => fleet_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "only GET, PUT and DELETE supported against this resource",
                ),
            };
        }
        if let Some(name) = item("/state") {
            if m != Method::GET {
                return fleet_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "only GET supported against this resource",
                );
            }
            let snap = snapshot(self);
            return match snap.states.get(&name).and_then(|s| s.values().next()) {
                Some(st) => fleet_json(StatusCode::OK, &StateJson::from(st)),
                None => fleet_error(StatusCode::NOT_FOUND, "unit state does not exist"),
            };
        }
        fleet_error(StatusCode::NOT_FOUND, "")
    }

    /// flotilla's own: where a unit is, or why it is nowhere
    /// (`GET /flotilla/v1/placement/<unit>`), so `start` can say why it waits.
    pub(super) fn placement(&self, unit: &str) -> Reply {
        let snap = snapshot(self);
        if !snap.units.contains_key(unit) {
            return fleet_error(StatusCode::NOT_FOUND, "unit does not exist");
        }
        let mut body = PlacementJson {
            name: unit.to_string(),
            ..Default::default()
        };
        match snap.machine_of(unit) {
            Some(m) => body.machine_id = m.to_string(),
            None => match snap.explain(unit) {
                why if why.is_empty() => body.pending = true,
                why => body.reason = why,
            },
        }
        fleet_json(StatusCode::OK, &body)
    }

    fn list_units(&self, q: Option<&str>) -> Reply {
        let page = match page_from_query(q) {
            Ok(p) => p,
            Err(e) => return fleet_error(StatusCode::BAD_REQUEST, &e),
        };
        let snap = snapshot(self);
        let all: Vec<&StoredUnit> = snap.units.values().collect();
        let (items, next) = paginate(&all, page);
        let units: Vec<UnitJson> = items.iter().map(|u| snap.unit_json(u, true)).collect();
        page_reply("units", units, next)
    }

    fn list_states(&self, q: Option<&str>) -> Reply {
        let page = match page_from_query(q) {
            Ok(p) => p,
            Err(e) => return fleet_error(StatusCode::BAD_REQUEST, &e),
        };
        let first = |k: &str| {
            form_urlencoded::parse(q.unwrap_or("").as_bytes())
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.into_owned())
        };
        let (machine, unit) = (first("machineID"), first("unitName"));
        let snap = snapshot(self);
        let all: Vec<StateJson> = snap
            .states
            .iter()
            .filter(|(u, _)| unit.as_ref().is_none_or(|w| w == *u))
            .flat_map(|(_, by_m)| by_m.iter())
            .filter(|(m, _)| machine.as_ref().is_none_or(|w| w == *m))
            .map(|(_, st)| StateJson::from(st))
            .collect();
        let (items, next) = paginate(&all, page);
        page_reply("states", items, next)
    }

    fn list_machines(&self, q: Option<&str>) -> Reply {
        let page = match page_from_query(q) {
            Ok(p) => p,
            Err(e) => return fleet_error(StatusCode::BAD_REQUEST, &e),
        };
        let snap = snapshot(self);
        let all: Vec<MachineView> = snap.machines.into_values().collect();
        let (items, next) = paginate(&all, page);
        page_reply("machines", items, next)
    }

    fn get_unit(&self, name: &str) -> Reply {
        let snap = snapshot(self);
        match snap.units.get(name) {
            Some(u) => fleet_json(StatusCode::OK, &snap.unit_json(u, false)),
            None => fleet_error(StatusCode::NOT_FOUND, "unit does not exist"),
        }
    }

    async fn delete_unit(&self, name: &str) -> Reply {
        let kv = InProc::new(self.raft.clone(), self.clock.clone());
        match kv
            .delete(&registry::unit_key(name), false, Precondition::default())
            .await
        {
            Ok(_) => fleet_empty(StatusCode::NO_CONTENT),
            Err(ClientError::Store(e)) if e.code == crate::kv::error::KEY_NOT_FOUND => {
                fleet_error(StatusCode::NOT_FOUND, "unit does not exist")
            }
            Err(e) => internal(e),
        }
    }

    async fn put_unit(&self, req: &Request<Bytes>, item: &str) -> Reply {
        let types: Vec<&HeaderValue> = req
            .headers()
            .get_all(http::header::CONTENT_TYPE)
            .iter()
            .collect();
        if types.len() != 1 {
            let msg = format!("expected 1 Content-Type, got {}", types.len());
            return fleet_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &msg);
        }
        let media = types[0]
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("");
        if media.trim() != "application/json" {
            return fleet_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "only acceptable Content-Type is application/json",
            );
        }
        let mut su: UnitJson = match decode_json(req.body()) {
            Ok(u) => u,
            Err(e) => {
                return fleet_error(
                    StatusCode::BAD_REQUEST,
                    &format!("unable to decode body: {e}"),
                )
            }
        };
        if su.name.is_empty() {
            su.name = item.to_string();
        }
        if su.name != item {
            let msg = format!(
                "name in URL {item:?} differs from unit name in request body {:?}",
                su.name
            );
            return fleet_error(StatusCode::BAD_REQUEST, &msg);
        }
        if let Err(e) = validate_name(&su.name) {
            return fleet_error(StatusCode::BAD_REQUEST, &e.0);
        }
        for _ in 0..CAS_ATTEMPTS_MAX {
            match self.put_unit_once(&su).await {
                Err(PutError::Raced) => continue,
                Err(PutError::Reply(r)) => return *r,
                Ok(r) => return r,
            }
        }
        fleet_error(StatusCode::CONFLICT, "unit is being changed concurrently")
    }

    /// fleet's PUT, steps 5–8 (`fleet-semantics.md` b.3), on one read of the unit.
    async fn put_unit_once(&self, su: &UnitJson) -> Result<Reply, PutError> {
        let kv = InProc::new(self.raft.clone(), self.clock.clone());
        let key = registry::unit_key(&su.name);
        let existing = kv
            .get(&key, false, false)
            .await
            .map_err(|e| PutError::Reply(Box::new(internal(e))))?;
        let existing = existing
            .and_then(|g| StoredUnit::parse(g.node.value.as_deref()?, g.node.modified_index));
        let bad = |m: String| PutError::Reply(Box::new(fleet_error(StatusCode::BAD_REQUEST, &m)));
        let desired = match su.desired_state.as_str() {
            "" => None,
            s => Some(Desired::parse(s).ok_or_else(|| bad(format!("invalid desiredState {s:?}")))?),
        };
        let template = NameInfo::new(&su.name).is_template();
        let check_template = |d: Desired| {
            if template && d != Desired::Inactive {
                return Err(bad(format!("cannot activate template {:?}", su.name)));
            }
            Ok(())
        };
        let replace = match &existing {
            None if su.options.is_empty() => {
                return Err(PutError::Reply(Box::new(fleet_error(
                    StatusCode::CONFLICT,
                    "unit does not exist and options field empty",
                ))))
            }
            None => true,
            Some(e) => !su.options.is_empty() && hash(&su.options) != e.hash,
        };
        if replace {
            validate_options(&su.options).map_err(|e| bad(e.0))?;
            let d = desired.unwrap_or(Desired::Inactive);
            check_template(d)?;
            let rec = UnitRecord {
                name: su.name.clone(),
                options: su.options.clone(),
                desired_state: d,
            };
            self.write_unit(&kv, &rec, existing.as_ref()).await?;
            return Ok(fleet_empty(StatusCode::CREATED));
        }
        let existing = existing.expect("replace is chosen when absent");
        let Some(d) = desired else {
            return Err(PutError::Reply(Box::new(fleet_error(
                StatusCode::CONFLICT,
                "must provide DesiredState to update existing unit",
            ))));
        };
        check_template(d)?;
        let rec = UnitRecord {
            desired_state: d,
            ..existing.record.clone()
        };
        self.write_unit(&kv, &rec, Some(&existing)).await?;
        Ok(fleet_empty(StatusCode::NO_CONTENT))
    }

    /// Writes a unit record if the unit is still as read (absent, or at its index).
    async fn write_unit(
        &self,
        kv: &InProc,
        rec: &UnitRecord,
        read: Option<&StoredUnit>,
    ) -> Result<(), PutError> {
        let prev = match read {
            None => Precondition {
                exist: Some(false),
                ..Default::default()
            },
            Some(u) => Precondition {
                exist: Some(true),
                index: u.modified_index,
                ..Default::default()
            },
        };
        let value = serde_json::to_string(rec).expect("unit record serializes");
        let opts = SetOpts {
            prev,
            ..Default::default()
        };
        match kv.set(&registry::unit_key(&rec.name), &value, opts).await {
            Ok(_) => Ok(()),
            Err(ClientError::Store(e)) if [100, 101, 105].contains(&e.code) => Err(PutError::Raced),
            Err(e) => Err(PutError::Reply(Box::new(internal(e)))),
        }
    }

    async fn patch_machines(&self, body: &Bytes) -> Reply {
        #[derive(Deserialize)]
        struct Op {
            #[serde(default)]
            op: String,
            #[serde(default)]
            path: String,
            #[serde(default, alias = "Value")]
            value: OpValue,
        }
        #[derive(Deserialize, Default)]
        struct OpValue {
            #[serde(default, alias = "Value")]
            value: String,
        }
        let ops: Vec<Op> = match decode_json(body) {
            Ok(o) => o,
            Err(e) => return fleet_error(StatusCode::BAD_REQUEST, &e),
        };
        let mut parsed = vec![];
        for op in &ops {
            if !["add", "remove", "replace"].contains(&op.op.as_str()) {
                return fleet_error(
                    StatusCode::BAD_REQUEST,
                    "invalid op: expect add, remove, or replace",
                );
            }
            let Some((machine, key)) = metadata_path(&op.path) else {
                return fleet_error(StatusCode::BAD_REQUEST, "machine metadata path invalid");
            };
            if op.op != "remove" && op.value.value.is_empty() {
                return fleet_error(
                    StatusCode::BAD_REQUEST,
                    "invalid value: add and replace require a value",
                );
            }
            let item = if op.op == "remove" {
                DynMeta::Removed
            } else {
                DynMeta::Value(op.value.value.clone())
            };
            parsed.push((format!("{}/{machine}/{key}", registry::METADATA), item));
        }
        let kv = InProc::new(self.raft.clone(), self.clock.clone());
        for (key, item) in parsed {
            let v = serde_json::to_string(&item).expect("metadata serializes");
            if let Err(e) = kv.set(&key, &v, SetOpts::default()).await {
                return internal(e);
            }
        }
        fleet_empty(StatusCode::NO_CONTENT)
    }
}

enum PutError {
    /// The unit changed between read and write: read again.
    Raced,
    Reply(Box<Reply>),
}

/// `/<machineID>/metadata/<key>` with fleet's key alphabet.
fn metadata_path(p: &str) -> Option<(&str, &str)> {
    let rest = p.strip_prefix('/')?;
    let (machine, rest) = rest.split_once('/')?;
    let key = rest.strip_prefix("metadata/")?;
    let key_ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    (!machine.is_empty() && key_ok).then_some((machine, key))
}

/// Decodes one JSON value from the start of `body`, as Go's `json.Decoder.Decode` does:
/// trailing data after it is ignored, an empty body is `EOF`.
fn decode_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err("EOF".into());
    }
    let mut de = serde_json::Deserializer::from_slice(body).into_iter::<T>();
    match de.next() {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("EOF".into()),
    }
}

fn page_reply<T: Serialize + Clone>(field: &str, items: Vec<T>, next: String) -> Reply {
    // Go's omitempty: an empty collection and no token serialize as `{}`.
    let mut obj = serde_json::Map::new();
    if !items.is_empty() {
        obj.insert(
            field.into(),
            serde_json::to_value(items).expect("items serialize"),
        );
    }
    if !next.is_empty() {
        obj.insert("nextPageToken".into(), next.into());
    }
    fleet_json(StatusCode::OK, &obj)
}

fn fleet_json<T: Serialize>(status: StatusCode, v: &T) -> Reply {
    let body = serde_json::to_vec(v).expect("fleet entities serialize");
    let mut r = full(status, body);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn fleet_empty(status: StatusCode) -> Reply {
    full(status, Bytes::new())
}

impl Api {
    /// With auth enabled, fleet's resources are checked as the keys that hold them: a
    /// unit as `/_flotilla/units/<name>` (writing it is submitting, starting or destroying
    /// it), lists as their whole directory, machines' metadata as `/_flotilla/metadata`.
    /// So a role may be allowed to read the schedule but not to submit units.
    fn fleet_access(&self, req: &Request<Bytes>, rest: &str) -> bool {
        let (key, recursive) = match rest.split('/').nth(1).unwrap_or("") {
            "units" => match rest.strip_prefix("/units/") {
                Some(name) => (registry::unit_key(name), false),
                None => (registry::UNITS.to_string(), true),
            },
            "state" => (registry::STATES.to_string(), true),
            "machines" if req.method() == Method::PATCH => (registry::METADATA.to_string(), true),
            "machines" => (registry::MACHINES.to_string(), true),
            _ => return true,
        };
        self.key_access(req, &key, recursive)
    }
}

pub fn fleet_error(status: StatusCode, message: &str) -> Reply {
    fleet_json(status, &ErrorJson::new(status.as_u16(), message))
}

/// Internal errors are logged, not shown (as fleet).
fn internal(e: ClientError) -> Reply {
    tracing::warn!(error = %e, "fleet API: store error");
    fleet_error(StatusCode::INTERNAL_SERVER_ERROR, "")
}

/// A small discovery document naming the API (fleet serves Google's discovery format).
fn discovery() -> Reply {
    let doc = serde_json::json!({
        "kind": "discovery#restDescription",
        "discoveryVersion": "v1",
        "id": "fleet:v1",
        "name": "fleet",
        "version": "v1",
        "title": "fleet API",
        "protocol": "rest",
        "basePath": "/fleet/v1/",
        "resources": {
            "Machines": {"methods": {"List": {"httpMethod": "GET", "path": "machines"}}},
            "UnitState": {"methods": {"List": {"httpMethod": "GET", "path": "state"}}},
            "Units": {"methods": {
                "List": {"httpMethod": "GET", "path": "units"},
                "Get": {"httpMethod": "GET", "path": "units/{unitName}"},
                "Set": {"httpMethod": "PUT", "path": "units/{unitName}"},
                "Delete": {"httpMethod": "DELETE", "path": "units/{unitName}"}
            }}
        }
    });
    fleet_json(StatusCode::OK, &doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_as_fleet() {
        assert_eq!(encode_token(2), "ZAACAA==");
        assert_eq!(page_from_query(Some("nextPageToken=ZAACAA%3D%3D")), Ok(2));
        assert_eq!(page_from_query(None), Ok(1));
        assert_eq!(
            page_from_query(Some("nextPageToken=EwBMLg==")).unwrap_err(),
            "token limit must be 100"
        );
        assert_eq!(
            page_from_query(Some("nextPageToken=ZAAAAA==")).unwrap_err(),
            "token page must be greater than zero"
        );
        assert!(page_from_query(Some("nextPageToken=")).is_err());
        assert!(page_from_query(Some("nextPageToken=ZAA=")).is_err());
        assert_eq!(
            page_from_query(Some("nextPageToken=ZAACAA==&nextPageToken=ZAACAA==")).unwrap_err(),
            "too many values for page token"
        );
    }

    #[test]
    fn pages_and_tokens_at_the_edges() {
        let all: Vec<u32> = (0..250).collect();
        let (p1, t1) = paginate(&all, 1);
        assert_eq!((p1.len(), t1.as_str()), (100, "ZAACAA=="));
        let (p3, t3) = paginate(&all, 3);
        assert_eq!((p3.len(), t3.as_str()), (50, ""));
        // An exact multiple: the last full page still offers a token, to an empty page.
        let hundred: Vec<u32> = (0..100).collect();
        let (p, t) = paginate(&hundred, 1);
        assert_eq!((p.len(), t.as_str()), (100, "ZAACAA=="));
        assert_eq!(paginate(&hundred, 2), (vec![], String::new()));
    }

    #[test]
    fn metadata_paths() {
        assert_eq!(metadata_path("/abc/metadata/k.1-_"), Some(("abc", "k.1-_")));
        assert_eq!(metadata_path("/abc/metadata/"), None);
        assert_eq!(metadata_path("/abc/metadata/a/b"), None);
        assert_eq!(metadata_path("//metadata/k"), None);
        assert_eq!(metadata_path("/abc/meta/k"), None);
    }
}
