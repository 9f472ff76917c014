//! The dashboard: `/ui/` on every node's client port.
//!
//! # Layout
//! - [`assets`]: the page, its one script and its style sheet, built into the binary and
//!   served with a Content-Security-Policy that allows no inline script and no other
//!   origin.
//! - [`history`]: a bounded ring of samples (writes/s, units by state) the node takes on
//!   a timer, so the overview shows the last minutes even on first load.
//! - [`overview`]: `/flotilla/v1/overview` — members with their state as each reports
//!   it, the history, and the problems worth putting at the top.
//! - [`whoami`]: `/flotilla/v1/whoami` — who the caller is under v2 auth and what they
//!   may do, so the pages show only the buttons that would work.
//! - [`relay`]: the dashboard on an agent-only machine: files here, API requests passed
//!   to the members.
//!
//! Everything else the pages show comes from the APIs any client uses (`/v2/keys`,
//! `/fleet/v1`, `/flotilla/v1/placement`, `/flotilla/v1/journal`, `/v2/members`), and a
//! page stays live through one streamed watch (`wait=true&stream=true`).

pub mod assets;
pub mod history;
pub mod overview;
pub mod relay;
pub mod whoami;

/// What the pages need to know about this node that is not in the store.
#[derive(Debug, Clone, Default)]
pub struct UiConfig {
    /// Where the network's keys live (`--network-prefix`).
    pub network_prefix: String,
    /// The domain DNS answers under, when this node answers DNS (`--dns-domain`).
    pub dns_domain: Option<String>,
}
