//! Which unit replaces which, once per pass.
//!
//! fleet ignores a `Replaces` relation when the two units match each other
//! (`../shared/reference/fleet-semantics.md` c.7), and flaps forever on longer rings
//! (a replaces b replaces c replaces a: whichever is placed, a pending one evicts it).
//! A ring can also close through `MachineOf`: evicting a unit takes its followers off
//! too, so `a` replacing `b` while `c` follows `b` and `c` replaces `a` flaps the same
//! way. The eviction graph therefore has an edge `a → b` where `a` replaces `b` and an
//! edge `p → f` where `f` follows `p`; a `Replaces` counts only between units that are
//! not on one ring of it (its strongly connected components). A two-unit ring is
//! fleet's circular case. What is left holds no ring of `Replaces` (follow edges alone
//! evict nothing), so evictions run one way and a pass settles.

use super::model::Unit;
use crate::unitfile::glob;
use std::collections::{BTreeMap, BTreeSet};

pub struct Replaces<'a> {
    /// Each unit on some edge → its component; units on no edge are absent.
    component: BTreeMap<&'a str, usize>,
}

impl<'a> Replaces<'a> {
    pub fn new(units: &'a BTreeMap<String, Unit>) -> Self {
        let edges = edges(units);
        Self {
            component: components(&edges),
        }
    }

    /// Does `a` replace `b` (`a`'s pattern matches `b`, and `b` does not lead back)?
    pub fn replaces(&self, a: &Unit, b: &Unit) -> bool {
        a.name != b.name
            && a.req.replaces.iter().any(|p| glob::matches(p, &b.name))
            && self.component.get(a.name.as_str()) != self.component.get(b.name.as_str())
    }
}

/// The eviction graph: `a → b` for every stored `b` that one of `a`'s patterns matches
/// (a pattern without metacharacters is looked up, so only globs walk every unit), and
/// `p → f` for every stored peer `p` of a follower `f`.
fn edges(units: &BTreeMap<String, Unit>) -> BTreeMap<&str, Vec<&str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for f in units.values() {
        for p in &f.req.peers {
            if let Some((p, _)) = units.get_key_value(p).filter(|(p, _)| **p != f.name) {
                out.entry(p.as_str()).or_default().push(&f.name);
            }
        }
    }
    for a in units.values().filter(|u| !u.req.replaces.is_empty()) {
        let mut to: Vec<&str> = out.remove(a.name.as_str()).unwrap_or_default();
        for p in &a.req.replaces {
            if p.contains(['*', '?', '[', '\\']) {
                to.extend(
                    units
                        .keys()
                        .filter(|b| glob::matches(p, b))
                        .map(String::as_str),
                );
            } else if let Some((b, _)) = units.get_key_value(p) {
                to.push(b);
            }
        }
        to.retain(|b| *b != a.name);
        if !to.is_empty() {
            out.insert(&a.name, to);
        }
    }
    for to in out.values_mut() {
        to.sort_unstable();
        to.dedup();
    }
    out
}

/// Strongly connected components (Kosaraju, iterative: rings can be long).
fn components<'a>(edges: &BTreeMap<&'a str, Vec<&'a str>>) -> BTreeMap<&'a str, usize> {
    let mut back: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, to) in edges {
        back.entry(a).or_default();
        for b in to {
            back.entry(b).or_default().push(a);
        }
    }
    // Pass 1: nodes in order of finishing a depth-first walk forwards.
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut finished: Vec<&str> = vec![];
    for start in back.keys() {
        if !seen.insert(start) {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        while let Some((n, i)) = stack.pop() {
            let next = edges.get(n).and_then(|to| to.get(i));
            match next {
                Some(m) => {
                    stack.push((n, i + 1));
                    if seen.insert(m) {
                        stack.push((m, 0));
                    }
                }
                None => finished.push(n),
            }
        }
    }
    // Pass 2: walking backwards from the last finished gathers one component at a time.
    let mut component: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, root) in finished.iter().rev().enumerate() {
        if component.contains_key(root) {
            continue;
        }
        let mut stack = vec![*root];
        component.insert(root, id);
        while let Some(n) = stack.pop() {
            for m in &back[n] {
                if !component.contains_key(m) {
                    component.insert(m, id);
                    stack.push(m);
                }
            }
        }
    }
    component
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::require::Requirements;

    fn units(spec: &[(&str, &[&str])]) -> BTreeMap<String, Unit> {
        spec.iter()
            .map(|(name, replaces)| {
                let req = Requirements {
                    replaces: replaces.iter().map(|r| r.to_string()).collect(),
                    ..Requirements::default()
                };
                let u = Unit {
                    name: name.to_string(),
                    req,
                    desired: super::super::place::Desired::Launched,
                    hash: "h".into(),
                    template: false,
                };
                (name.to_string(), u)
            })
            .collect()
    }

    fn pairs(us: &BTreeMap<String, Unit>) -> Vec<(String, String)> {
        let r = Replaces::new(us);
        let mut out = vec![];
        for a in us.values() {
            for b in us.values().filter(|b| r.replaces(a, b)) {
                out.push((a.name.clone(), b.name.clone()));
            }
        }
        out
    }

    #[test]
    fn a_chain_counts_and_rings_of_any_length_do_not() {
        let us = units(&[
            ("a", &["b"]),
            ("b", &["c"]),
            ("c", &["a", "d"]),
            ("d", &["e*"]),
            ("e1", &[]),
            ("e2", &["d"]),
            ("x", &["x", "y"]),
            ("y", &[]),
        ]);
        let want = [("c", "d"), ("d", "e1"), ("x", "y")];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        // a→b→c→a is a ring, d⇄e2 the circular pair; a unit never replaces itself.
        assert_eq!(pairs(&us), want);
    }

    #[test]
    fn a_ring_closed_by_machine_of_does_not_count_and_edges_into_it_do() {
        // app replaces u5 replaces u2 replaces u1, and app follows u1: evicting u1 would
        // take app off, so the four are one ring. v replaces u1 from outside it; w
        // follows v, which adds no ring.
        let mut us = units(&[
            ("app", &["u5"]),
            ("u1", &[]),
            ("u2", &["u1"]),
            ("u5", &["u2"]),
            ("v", &["u1"]),
            ("w", &[]),
        ]);
        for (f, p) in [("app", "u1"), ("w", "v")] {
            us.get_mut(f).expect("unit").req.peers = vec![p.to_string()];
        }
        assert_eq!(pairs(&us), vec![("v".to_string(), "u1".to_string())]);
    }
}
