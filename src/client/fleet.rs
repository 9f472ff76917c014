//! fleet's API v1 (and flotilla's additions to it) as a typed client, over the endpoints'
//! failover rule, with the API's own JSON types: what `flotilla units` (and anything else
//! that drives units from outside a member) speaks.

use super::endpoints::{query_value, segment, Endpoints};
use crate::api::fleet::{ErrorJson, JournalJson, PageJson, PlacementJson, StateJson, UnitJson};
use crate::sched::place::Desired;
use crate::sched::registry::MachineRecord;
use crate::unitfile::file::UnitOption;
use bytes::Bytes;
use flotilla_shims::http::{ClientResponse, RequestError};
use serde::de::DeserializeOwned;
use std::time::Duration;
use thiserror::Error;

/// Pages of one collection read at most: a million items at fleet's 100 a page.
const PAGES_MAX: usize = 10_000;

#[derive(Debug, Error)]
pub enum FleetError {
    /// No endpoint answered.
    #[error("error attempting to reach the fleet API: {0}")]
    Unreachable(RequestError),
    /// The API answered with an error (fleet's message, or the status if it gave none).
    #[error("{what}: {message}")]
    Api {
        what: String,
        status: u16,
        message: String,
    },
    /// The answer was not the JSON expected.
    #[error("{what}: bad JSON: {why}")]
    BadJson { what: String, why: String },
}

/// A client of one cluster's fleet API.
pub struct FleetClient {
    endpoints: Endpoints,
    timeout: Duration,
}

fn unit_path(name: &str) -> String {
    format!("/fleet/v1/units/{}", segment(name))
}

impl FleetClient {
    pub fn new(endpoints: Endpoints, timeout: Duration) -> Self {
        Self { endpoints, timeout }
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<ClientResponse, FleetError> {
        let b = body.map(|v| ("application/json", Bytes::from(v)));
        self.endpoints
            .call(method, path, b, self.timeout)
            .await
            .map_err(FleetError::Unreachable)
    }

    /// `GET path`, its answer decoded; `None` on a 404.
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, FleetError> {
        let r = self.call("GET", path, None).await?;
        match r.status {
            200 => decode(&format!("GET {path}"), &r.body).map(Some),
            404 => Ok(None),
            _ => Err(api_error(format!("GET {path}"), &r)),
        }
    }

    /// A unit, or `None` when the cluster has no such unit.
    pub async fn unit(&self, name: &str) -> Result<Option<UnitJson>, FleetError> {
        self.get(&unit_path(name)).await
    }

    /// Every unit.
    pub async fn units(&self) -> Result<Vec<UnitJson>, FleetError> {
        self.all("units", "").await
    }

    /// Every unit state as machines report them, or those `filter` (a query such as
    /// `unitName=a.service`) selects.
    pub async fn states(&self, filter: &str) -> Result<Vec<StateJson>, FleetError> {
        self.all("state", filter).await
    }

    /// One unit's state on one machine.
    pub async fn state_on(
        &self,
        unit: &str,
        machine: &str,
    ) -> Result<Option<StateJson>, FleetError> {
        let q = format!(
            "unitName={}&machineID={}",
            query_value(unit),
            query_value(machine)
        );
        Ok(self.states(&q).await?.into_iter().next())
    }

    pub async fn machines(&self) -> Result<Vec<MachineRecord>, FleetError> {
        self.all("machines", "").await
    }

    /// Every item of a paged collection, following `nextPageToken`.
    async fn all<T: DeserializeOwned>(
        &self,
        what: &str,
        filter: &str,
    ) -> Result<Vec<T>, FleetError> {
        let mut out = vec![];
        let mut token = String::new();
        for _ in 0..PAGES_MAX {
            let mut q: Vec<String> = vec![];
            q.extend((!filter.is_empty()).then(|| filter.to_string()));
            q.extend((!token.is_empty()).then(|| format!("nextPageToken={}", query_value(&token))));
            let path = match q.is_empty() {
                true => format!("/fleet/v1/{what}"),
                false => format!("/fleet/v1/{what}?{}", q.join("&")),
            };
            let page: PageJson<T> = self.get(&path).await?.ok_or_else(|| FleetError::Api {
                what: format!("GET {path}"),
                status: 404,
                message: "not found".into(),
            })?;
            out.extend(page.items);
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
        Err(FleetError::Api {
            what: format!("GET /fleet/v1/{what}"),
            status: 200,
            message: format!("more than {PAGES_MAX} pages"),
        })
    }

    /// Creates (or replaces) a unit with `options`, in state `desired`.
    pub async fn create(
        &self,
        name: &str,
        desired: Desired,
        options: &[UnitOption],
    ) -> Result<(), FleetError> {
        let body = UnitJson {
            name: name.to_string(),
            desired_state: desired.as_str().to_string(),
            options: options.to_vec(),
            ..Default::default()
        };
        self.put(name, &body, format!("creating {name}")).await
    }

    /// Sets a unit's desired state.
    pub async fn set_state(&self, name: &str, desired: Desired) -> Result<(), FleetError> {
        let body = UnitJson {
            desired_state: desired.as_str().to_string(),
            ..Default::default()
        };
        let what = format!("setting {name} {}", desired.as_str());
        self.put(name, &body, what).await
    }

    async fn put(&self, name: &str, body: &UnitJson, what: String) -> Result<(), FleetError> {
        let json = serde_json::to_string(body).expect("a unit serializes");
        let r = self.call("PUT", &unit_path(name), Some(json)).await?;
        match r.status / 100 {
            2 => Ok(()),
            _ => Err(api_error(what, &r)),
        }
    }

    /// Destroys a unit (one already gone is not an error).
    pub async fn destroy(&self, name: &str) -> Result<(), FleetError> {
        let r = self.call("DELETE", &unit_path(name), None).await?;
        match r.status {
            204 | 404 => Ok(()),
            _ => Err(api_error(format!("destroying {name}"), &r)),
        }
    }

    /// Where a unit is placed, or why it is not.
    pub async fn placement(&self, name: &str) -> Result<Option<PlacementJson>, FleetError> {
        self.get(&format!("/flotilla/v1/placement/{}", segment(name)))
            .await
    }

    /// A unit's last `n` journal lines, from its machine.
    pub async fn journal(&self, name: &str, n: usize) -> Result<JournalJson, FleetError> {
        let path = format!("/flotilla/v1/journal/{}?n={n}", segment(name));
        let r = self.call("GET", &path, None).await?;
        match r.status {
            200 => decode(name, &r.body),
            _ => Err(api_error(name.to_string(), &r)),
        }
    }
}

fn decode<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, FleetError> {
    serde_json::from_slice(body).map_err(|e| FleetError::BadJson {
        what: what.to_string(),
        why: e.to_string(),
    })
}

/// fleet's message from an error answer, or its status when it has none.
fn api_error(what: String, r: &ClientResponse) -> FleetError {
    let message = serde_json::from_slice::<ErrorJson>(&r.body)
        .ok()
        .map(|e| e.error.message)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| format!("HTTP {}", r.status));
    FleetError::Api {
        what,
        status: r.status,
        message,
    }
}
