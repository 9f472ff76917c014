//! The scheduler's safety invariants, judged on any replica's committed schedule: no
//! plain unit on two machines, no two units that conflict on one machine, no `MachineOf`
//! follower without its peer. Units are judged by the constraints their names always have
//! in the workload ([`crate::scenario::xfleet_of`]), so even an entry left behind by a
//! destroyed unit is judged.

use crate::scenario::xfleet_of;
use flotilla::sched::place::Schedule;
use flotilla::sched::require::Requirements;
use flotilla::unitfile::file::UnitOption;
use std::collections::BTreeMap;

pub fn requirements(unit: &str) -> Requirements {
    let opts: Vec<UnitOption> = xfleet_of(unit)
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| UnitOption::new("X-Fleet", k, v))
        .collect();
    Requirements::of(unit, &opts)
}

/// The first broken invariant in `schedule`, if any.
pub fn check(schedule: &Schedule) -> Result<(), String> {
    let mut on: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (unit, machines) in schedule {
        if !requirements(unit).global && machines.len() > 1 {
            let ms: Vec<&String> = machines.keys().collect();
            return Err(format!("{unit} is scheduled on {ms:?} at once"));
        }
        for m in machines.keys() {
            on.entry(m.as_str()).or_default().push(unit.as_str());
        }
    }
    for (m, units) in &on {
        let reqs: Vec<Requirements> = units.iter().map(|u| requirements(u)).collect();
        for (i, a) in units.iter().enumerate() {
            for p in &reqs[i].peers {
                if !units.contains(&p.as_str()) {
                    return Err(format!("{a} is on {m} without its MachineOf peer {p}"));
                }
            }
            for (j, b) in units.iter().enumerate().skip(i + 1) {
                if reqs[i].conflicts_with(a, b, &reqs[j]) {
                    return Err(format!("{a} and {b} conflict but are both on {m}"));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla::sched::place::{Desired, Entry};

    fn sched(pairs: &[(&str, &str)]) -> Schedule {
        let mut s = Schedule::new();
        for (u, m) in pairs {
            s.entry(u.to_string()).or_default().insert(
                m.to_string(),
                Entry {
                    desired: Desired::Launched,
                    hash: String::new(),
                },
            );
        }
        s
    }

    #[test]
    fn finds_each_kind_of_violation() {
        assert!(check(&sched(&[
            ("app@1.service", "m0"),
            ("app@2.service", "m1"),
            ("side@1.service", "m0")
        ]))
        .is_ok());
        let e = check(&sched(&[("app@1.service", "m0"), ("app@2.service", "m0")])).unwrap_err();
        assert!(e.contains("conflict"), "{e}");
        let e = check(&sched(&[("side@1.service", "m0"), ("app@1.service", "m1")])).unwrap_err();
        assert!(e.contains("without its MachineOf peer"), "{e}");
        let e = check(&sched(&[("p1.service", "m0"), ("p1.service", "m1")])).unwrap_err();
        assert!(e.contains("at once"), "{e}");
        assert!(check(&sched(&[("log.service", "m0"), ("log.service", "m1")])).is_ok());
        let e = check(&sched(&[("solo.service", "m0"), ("p2.service", "m0")])).unwrap_err();
        assert!(e.contains("conflict"), "{e}");
    }
}
