//! What a unit's `[X-Fleet]` section asks of the machine it runs on, read as fleet reads
//! it (`../shared/reference/fleet-semantics.md` c.2): values split as multi-values,
//! fleet's specifiers expanded, deprecated aliases honoured, unknown keys ignored.

use crate::unitfile::file::{split_multi, UnitOption};
use crate::unitfile::glob;
use crate::unitfile::name::{expand_fleet, NameInfo};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

const SECTION: &str = "X-Fleet";

/// A unit's scheduling constraints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    /// `MachineID` (or `X-ConditionMachineID`, or legacy `X-ConditionMachineBootID`).
    pub machine_id: Option<String>,
    /// `MachineMetadata`: for every key the machine must have one of the values.
    pub metadata: BTreeMap<String, BTreeSet<String>>,
    /// `MachineOf`: every one of these units must be on the machine.
    pub peers: Vec<String>,
    /// `Conflicts`: globs; no unit matching one may share the machine (both ways).
    pub conflicts: Vec<String>,
    /// `Replaces`: globs; a matching unit on the same machine is moved away.
    pub replaces: Vec<String>,
    pub global: bool,
}

/// The `X-Fleet` values of `key`, multi-value split, then expanded for `name`.
fn fleet_values(options: &[UnitOption], key: &str, name: &NameInfo) -> Vec<String> {
    options
        .iter()
        .filter(|o| o.section == SECTION && o.name == key)
        .flat_map(|o| split_multi(&o.value))
        .map(|v| expand_fleet(&v, name))
        .collect()
}

fn truthy(v: &str) -> bool {
    matches!(v.to_lowercase().as_str(), "true" | "yes" | "1" | "on" | "t")
}

impl Requirements {
    pub fn of(unit_name: &str, options: &[UnitOption]) -> Self {
        let name = NameInfo::new(unit_name);
        let get = |k: &str| fleet_values(options, k, &name);
        let machine_id = [
            "MachineID",
            "X-ConditionMachineID",
            "X-ConditionMachineBootID",
        ]
        .iter()
        .find_map(|k| get(k).into_iter().next());
        let mut metadata: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for pair in get("X-ConditionMachineMetadata")
            .into_iter()
            .chain(get("MachineMetadata"))
        {
            let parts: Vec<&str> = pair.split('=').collect();
            if let [k, v] = parts[..] {
                if !k.is_empty() && !v.is_empty() {
                    metadata.entry(k.into()).or_default().insert(v.into());
                }
            }
        }
        let peers = get("X-ConditionMachineOf")
            .into_iter()
            .chain(get("MachineOf"))
            .collect();
        let conflicts = get("X-Conflicts")
            .iter()
            .chain(get("Conflicts").iter())
            .flat_map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
            .collect();
        Self {
            machine_id,
            metadata,
            peers,
            conflicts,
            replaces: get("Replaces"),
            global: get("Global").last().is_some_and(|v| truthy(v)),
        }
    }

    /// MachineID matches the full id, or its first 8 characters.
    pub fn machine_id_ok(&self, machine_id: &str) -> bool {
        match &self.machine_id {
            None => true,
            Some(want) => want == machine_id || want == short_id(machine_id),
        }
    }

    pub fn metadata_ok(&self, machine: &BTreeMap<String, String>) -> bool {
        self.metadata
            .iter()
            .all(|(k, vs)| machine.get(k).is_some_and(|v| vs.contains(v)))
    }

    /// Does a unit with these requirements, named `me`, conflict with `other` (named
    /// `other_name`)? Either side's pattern matching the other's name is a conflict.
    pub fn conflicts_with(&self, me: &str, other_name: &str, other: &Requirements) -> bool {
        me != other_name
            && (self.conflicts.iter().any(|p| glob::matches(p, other_name))
                || other.conflicts.iter().any(|p| glob::matches(p, me)))
    }
}

/// fleet's short machine id: the first 8 characters.
pub fn short_id(id: &str) -> &str {
    match id.char_indices().nth(8) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct OptionsError(pub String);

/// fleet's `ValidateOptions`: the text must re-parse, and the X-Fleet options must not
/// contradict each other. Specifiers are not expanded (there is no unit name here).
pub fn validate(options: &[UnitOption]) -> Result<(), OptionsError> {
    crate::unitfile::file::parse(&crate::unitfile::file::serialize(options))
        .map_err(|e| OptionsError(e.what))?;
    let raw = |k: &str| -> Vec<String> {
        options
            .iter()
            .filter(|o| o.section == SECTION && o.name == k)
            .flat_map(|o| split_multi(&o.value))
            .collect()
    };
    let req = Requirements::of("", options);
    let peers: BTreeSet<String> = raw("X-ConditionMachineOf")
        .into_iter()
        .chain(raw("MachineOf"))
        .collect();
    let conflicts: BTreeSet<String> = raw("X-Conflicts")
        .iter()
        .chain(raw("Conflicts").iter())
        .flat_map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect();
    let replaces: BTreeSet<String> = raw("Replaces").into_iter().collect();
    for peer in &peers {
        if let Some(c) = conflicts.iter().find(|c| glob::matches(c, peer)) {
            return Err(OptionsError(format!(
                "unresolvable requirements: peer {peer:?} matches conflict {c:?}"
            )));
        }
        if let Some(r) = replaces.iter().find(|r| glob::matches(r, peer)) {
            return Err(OptionsError(format!(
                "unresolvable requirements: peer {peer:?} matches replace {r:?}"
            )));
        }
    }
    let target = req.machine_id.is_some();
    let (peers, conflicts, replaces) = (
        !peers.is_empty(),
        !conflicts.is_empty(),
        !replaces.is_empty(),
    );
    let global = req.global;
    let clash = match () {
        _ if target && peers => "MachineID cannot be used with Peers",
        _ if target && conflicts => "MachineID cannot be used with Conflicts",
        _ if target && global => "MachineID cannot be used with Global",
        _ if target && replaces => "MachineID cannot be used with Replaces",
        _ if global && peers => "Global cannot be used with Peers",
        _ if global && replaces => "Global cannot be used with Replaces",
        _ if conflicts && replaces => "Conflicts cannot be used with Replaces",
        _ => return Ok(()),
    };
    Err(OptionsError(clash.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unitfile::file::parse;

    fn req(name: &str, text: &str) -> Requirements {
        Requirements::of(name, &parse(text).unwrap())
    }

    #[test]
    fn reads_x_fleet_as_fleet() {
        let r = req(
            "apache@3.service",
            "[X-Fleet]\nConflicts=%p@*.service other.service\nX-Conflicts=x*\nMachineMetadata=region=us\nMachineMetadata=\"region=eu\" \"disk=ssd\"\nMachineMetadata=k=\nMachineMetadata=a=b=c\nMachineOf=side@%i.service\nGlobal=false\nGlobal=Yes\n",
        );
        assert_eq!(r.conflicts, vec!["x*", "apache@*.service", "other.service"]);
        assert_eq!(r.metadata.len(), 2);
        assert_eq!(r.metadata["region"].len(), 2);
        assert_eq!(r.peers, vec!["side@3.service"]);
        assert!(r.global, "the last Global value wins");
        assert!(!req("a.service", "[X-Fleet]\nGlobal=12\n").global);
        assert!(!req("a.service", "[X-Fleet]\nglobal=true\n").global);
        assert!(!req("a.service", "[x-fleet]\nGlobal=true\n").global);
        // %i on a plain unit is empty: the pair is dropped, no constraint is left.
        assert!(
            req("plain.service", "[X-Fleet]\nMachineMetadata=hostname=%i\n")
                .metadata
                .is_empty()
        );
    }

    #[test]
    fn machine_id_precedence_and_short_ids() {
        let r = req(
            "a.service",
            "[X-Fleet]\nX-ConditionMachineID=old\nMachineID=0123456789abcdef\n",
        );
        assert_eq!(r.machine_id.as_deref(), Some("0123456789abcdef"));
        assert!(r.machine_id_ok("0123456789abcdef"));
        let short = req("a.service", "[X-Fleet]\nMachineID=01234567\n");
        assert!(short.machine_id_ok("0123456789abcdef"));
        let seven = req("a.service", "[X-Fleet]\nMachineID=0123456\n");
        assert!(!seven.machine_id_ok("0123456789abcdef"));
        assert!(seven.machine_id_ok("0123456"));
        let legacy = req("a.service", "[X-Fleet]\nX-ConditionMachineBootID=b\n");
        assert_eq!(legacy.machine_id.as_deref(), Some("b"));
    }

    #[test]
    fn metadata_ands_keys_and_ors_values() {
        let r = req(
            "a.service",
            "[X-Fleet]\nMachineMetadata=region=us\nMachineMetadata=region=eu\nMachineMetadata=disk=ssd\n",
        );
        let m = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert!(r.metadata_ok(&m(&[("region", "eu"), ("disk", "ssd")])));
        assert!(!r.metadata_ok(&m(&[("region", "eu")])));
        assert!(!r.metadata_ok(&m(&[("region", "ap"), ("disk", "ssd")])));
        assert!(!r.metadata_ok(&m(&[("region", "EU"), ("disk", "ssd")])));
    }

    #[test]
    fn conflicts_are_two_way() {
        let a = req("a@1.service", "[X-Fleet]\nConflicts=a@*.service\n");
        let b = req("a@2.service", "[Service]\nExecStart=/bin/true\n");
        assert!(a.conflicts_with("a@1.service", "a@2.service", &b));
        assert!(b.conflicts_with("a@2.service", "a@1.service", &a));
        assert!(!a.conflicts_with("a@1.service", "a@1.service", &a));
    }

    #[test]
    fn validation_messages_in_fleets_order() {
        let v = |t: &str| validate(&parse(t).unwrap()).err().map(|e| e.0);
        assert_eq!(v("[X-Fleet]\nConflicts=a*\nMachineMetadata=x=y\n"), None);
        assert_eq!(
            v("[X-Fleet]\nMachineOf=abc.service\nConflicts=a*\n").as_deref(),
            Some("unresolvable requirements: peer \"abc.service\" matches conflict \"a*\"")
        );
        assert_eq!(
            v("[X-Fleet]\nMachineID=x\nMachineOf=y.service\n").as_deref(),
            Some("MachineID cannot be used with Peers")
        );
        assert_eq!(
            v("[X-Fleet]\nMachineID=x\nGlobal=true\n").as_deref(),
            Some("MachineID cannot be used with Global")
        );
        assert_eq!(
            v("[X-Fleet]\nGlobal=true\nMachineOf=y.service\n").as_deref(),
            Some("Global cannot be used with Peers")
        );
        assert_eq!(
            v("[X-Fleet]\nGlobal=true\nReplaces=y.service\n").as_deref(),
            Some("Global cannot be used with Replaces")
        );
        assert_eq!(
            v("[X-Fleet]\nConflicts=z*\nReplaces=y.service\n").as_deref(),
            Some("Conflicts cannot be used with Replaces")
        );
        // Unknown keys are accepted.
        assert_eq!(v("[X-Fleet]\nMachineId=x\nX-Global=1\n"), None);
        // An over-long value fails the re-parse.
        let long = vec![UnitOption::new("Service", "ExecStart", &"x".repeat(3000))];
        assert!(validate(&long).unwrap_err().0.contains("line too long"));
    }
}
