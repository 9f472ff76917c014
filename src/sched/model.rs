//! What placement works on: units as it sees them, live machines, and the schedule it
//! produces — shared by [`super::place`] and [`super::replace`] (which otherwise would
//! import each other) and by everything that reads the schedule.

use super::require::Requirements;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// fleet's target states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Desired {
    Inactive,
    Loaded,
    Launched,
}

impl Desired {
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Inactive => "inactive",
            Desired::Loaded => "loaded",
            Desired::Launched => "launched",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "inactive" => Some(Desired::Inactive),
            "loaded" => Some(Desired::Loaded),
            "launched" => Some(Desired::Launched),
            _ => None,
        }
    }
}

/// A unit as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    pub req: Requirements,
    pub desired: Desired,
    pub hash: String,
    /// Templates (`x@.service`) are stored but never run.
    pub template: bool,
}

/// A live machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Machine {
    pub id: String,
    pub metadata: BTreeMap<String, String>,
}

/// What a schedule entry tells the machine's agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub desired: Desired,
    pub hash: String,
}

/// The schedule: unit → machine → entry. A plain unit has at most one machine, a global
/// unit one per machine it runs on.
pub type Schedule = BTreeMap<String, BTreeMap<String, Entry>>;
