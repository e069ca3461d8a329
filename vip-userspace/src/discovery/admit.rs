//! Which discovered apiservers receive flows: the pure bookkeeping between
//! "the slice lists it" and "it is a backend".
//!
//! An address new to the slice is a *candidate*: the apiserver registers
//! itself before it serves (its lease is written at start), and a new
//! control-plane node's certificate may not carry the VIP yet. It becomes a
//! backend only once its probe has passed `rise` times in a row and its
//! certificate is valid for every VIP of its family (the vetting, run by the
//! shell; see `mod.rs`). An address gone from the slice stops being a
//! backend at once: it is drained as a reload drains (its flows get an RST).
//! Nothing here ever empties the set: a family the slices do not list
//! ([`Found::Nothing`]) keeps what it had.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use super::slice::{Family, Found};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    /// The backends of each family (from the cache, or vetted).
    admitted: BTreeMap<Family, BTreeSet<SocketAddr>>,
    /// Listed, not vetted yet.
    candidates: BTreeSet<SocketAddr>,
}

/// What one discovered set changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// New candidates: start vetting them.
    pub vet: Vec<SocketAddr>,
    /// Candidates no longer listed: stop vetting them.
    pub unvet: Vec<SocketAddr>,
    /// Backends no longer listed: the set changed.
    pub removed: Vec<SocketAddr>,
}

impl Admission {
    /// Starts from a known set (the cache), trusted: it was vetted before.
    pub fn with(known: impl IntoIterator<Item = SocketAddr>) -> Admission {
        let mut a = Admission::default();
        for addr in known {
            a.admitted
                .entry(Family::of(&addr.ip()))
                .or_default()
                .insert(addr);
        }
        a
    }

    /// The slices' new view of `family`.
    pub fn discovered(&mut self, family: Family, found: &Found) -> Step {
        let Found::Set(listed) = found else {
            return Step::default();
        };
        let mut step = Step::default();
        let admitted = self.admitted.entry(family).or_default();
        admitted.retain(|a| {
            let keep = listed.contains(a);
            if !keep {
                step.removed.push(*a);
            }
            keep
        });
        self.candidates.retain(|a| {
            let keep = Family::of(&a.ip()) != family || listed.contains(a);
            if !keep {
                step.unvet.push(*a);
            }
            keep
        });
        for a in listed {
            if !admitted.contains(a) && self.candidates.insert(*a) {
                step.vet.push(*a);
            }
        }
        step
    }

    /// A candidate passed its probe's rise and the certificate gate. True if
    /// it became a backend (false if it was unlisted meanwhile).
    pub fn vetted(&mut self, addr: SocketAddr) -> bool {
        if !self.candidates.remove(&addr) {
            return false;
        }
        self.admitted
            .entry(Family::of(&addr.ip()))
            .or_default()
            .insert(addr)
    }

    /// The backends of `family`; `None`: nothing known yet (the file's list
    /// stands).
    pub fn backends(&self, family: Family) -> Option<&BTreeSet<SocketAddr>> {
        self.admitted.get(&family).filter(|s| !s.is_empty())
    }

    /// Every backend, both families: what the cache keeps.
    pub fn all(&self) -> Vec<SocketAddr> {
        self.admitted.values().flatten().copied().collect()
    }

    pub fn candidates(&self) -> &BTreeSet<SocketAddr> {
        &self.candidates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    fn found(v: &[&str]) -> Found {
        Found::Set(v.iter().map(|s| a(s)).collect())
    }

    #[test]
    fn a_new_address_is_vetted_first_and_a_removed_one_goes_at_once() {
        let mut ad = Admission::with([a("10.0.0.11:6443"), a("10.0.0.12:6443")]);
        let step = ad.discovered(
            Family::V4,
            &found(&["10.0.0.11:6443", "10.0.0.12:6443", "10.0.0.14:6443"]),
        );
        assert_eq!(step.vet, [a("10.0.0.14:6443")]);
        assert!(step.removed.is_empty());
        // Not a backend until vetted.
        assert_eq!(ad.backends(Family::V4).map(BTreeSet::len), Some(2));
        // Listed again while vetting: not vetted twice.
        let again = ad.discovered(
            Family::V4,
            &found(&["10.0.0.11:6443", "10.0.0.12:6443", "10.0.0.14:6443"]),
        );
        assert_eq!(again, Step::default());
        assert!(ad.vetted(a("10.0.0.14:6443")));
        assert!(!ad.vetted(a("10.0.0.14:6443")), "once");
        assert_eq!(ad.backends(Family::V4).map(BTreeSet::len), Some(3));

        let step = ad.discovered(Family::V4, &found(&["10.0.0.11:6443", "10.0.0.14:6443"]));
        assert_eq!(step.removed, [a("10.0.0.12:6443")]);
        assert_eq!(
            ad.all(),
            [a("10.0.0.11:6443"), a("10.0.0.14:6443")],
            "what the cache keeps"
        );
    }

    #[test]
    fn nothing_listed_keeps_the_set_and_families_stay_apart() {
        let mut ad = Admission::with([a("10.0.0.11:6443"), a("[fd00::11]:6443")]);
        assert_eq!(ad.discovered(Family::V4, &Found::Nothing), Step::default());
        assert_eq!(ad.backends(Family::V4).map(BTreeSet::len), Some(1));
        // A v6 candidate is not dropped by a v4 list.
        let s6 = ad.discovered(Family::V6, &found(&["[fd00::11]:6443", "[fd00::12]:6443"]));
        assert_eq!(s6.vet, [a("[fd00::12]:6443")]);
        assert_eq!(
            ad.discovered(Family::V4, &found(&["10.0.0.11:6443"])),
            Step::default()
        );
        assert_eq!(ad.candidates().len(), 1);
        // Unlisted while vetting: vetting stops, and a late pass admits nothing.
        let s6 = ad.discovered(Family::V6, &found(&["[fd00::11]:6443"]));
        assert_eq!(s6.unvet, [a("[fd00::12]:6443")]);
        assert!(!ad.vetted(a("[fd00::12]:6443")));
        // Nothing known: the file's list stands.
        assert_eq!(Admission::default().backends(Family::V4), None);
    }
}
