//! The pairings sites have claimed, in memory for the per-frame routing check, and the
//! [`RoutePolicy`] that admits connector-to-connector traffic only between two connectors
//! that have both claimed each other (defence in depth: the end-to-end keys pinned at
//! pairing are the real protection; this keeps a registered but unpaired site from even
//! reaching another site's connectors).
//!
//! ```text
//!  site A ── Claims{[(c1, B/c2)]} ──▶ conn ──▶ registry.replace_claims (hub.db), then
//!                                              ClaimTable::replace("A", …)
//!  Route{A/c1 → B/c2} ──▶ PairedOnly::allows: either end a `_` service? yes → allow
//!                                             A claims (c1, B/c2) and B claims (c2, A/c1)?
//! ```
//!
//! Deliberately absent: any check that a claim is true. A site can claim anything about its
//! own connectors (the hub stamps the authenticated site on every claim), but one side alone
//! opens nothing: the other site must claim the same pairing back.
//!
//! Invariants: a site's claims are replaced whole, never merged; the check allocates
//! nothing and takes one read lock.

use std::collections::HashMap;
use std::sync::RwLock;

use proto::wire::{self, Address, Pairing};

use crate::routing::RoutePolicy;

/// Each site's claimed pairings: site → its connector → the peers it claims.
#[derive(Debug, Default)]
pub struct ClaimTable {
    sites: RwLock<HashMap<String, HashMap<String, Vec<Address>>>>,
}

impl ClaimTable {
    /// A table holding `rows` (claiming site, pairing), as the registry stores them.
    pub fn from_rows(rows: impl IntoIterator<Item = (String, Pairing)>) -> Self {
        let mut sites: HashMap<String, Vec<Pairing>> = HashMap::new();
        for (site, p) in rows {
            sites.entry(site).or_default().push(p);
        }
        let table = Self::default();
        for (site, pairings) in sites {
            table.replace(&site, &pairings);
        }
        table
    }

    /// Replaces everything `site` claimed with `pairings`.
    pub fn replace(&self, site: &str, pairings: &[Pairing]) {
        let index = index(pairings);
        let mut sites = self.sites.write().unwrap_or_else(|p| p.into_inner());
        if index.is_empty() {
            sites.remove(site);
        } else {
            sites.insert(site.to_owned(), index);
        }
    }

    /// Whether replacing `site`'s claims with `pairings` would change nothing (sites send
    /// their claims on every reconnect; the registry is then left alone).
    pub fn is_current(&self, site: &str, pairings: &[Pairing]) -> bool {
        let wanted = index(pairings);
        let sites = self.sites.read().unwrap_or_else(|p| p.into_inner());
        match sites.get(site) {
            Some(current) => *current == wanted,
            None => wanted.is_empty(),
        }
    }

    /// Whether `local.site` has claimed that its connector `local.connector` is paired with
    /// `peer`.
    fn claims(
        sites: &HashMap<String, HashMap<String, Vec<Address>>>,
        local: &Address,
        peer: &Address,
    ) -> bool {
        sites
            .get(local.site.as_str())
            .and_then(|c| c.get(local.connector.as_str()))
            .is_some_and(|peers| peers.contains(peer))
    }

    /// Whether both ends have claimed each other.
    pub fn mutual(&self, a: &Address, b: &Address) -> bool {
        let sites = self.sites.read().unwrap_or_else(|p| p.into_inner());
        Self::claims(&sites, a, b) && Self::claims(&sites, b, a)
    }

    /// How many pairings are claimed in all, for `/metrics`.
    pub fn len(&self) -> usize {
        let sites = self.sites.read().unwrap_or_else(|p| p.into_inner());
        sites.values().flat_map(|c| c.values()).map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sorted and without duplicates, so that two equal claim sets compare equal.
fn index(pairings: &[Pairing]) -> HashMap<String, Vec<Address>> {
    let mut out: HashMap<String, Vec<Address>> = HashMap::new();
    for p in pairings {
        out.entry(p.connector.clone())
            .or_default()
            .push(p.peer.clone());
    }
    for peers in out.values_mut() {
        peers.sort();
        peers.dedup();
    }
    out
}

/// The hub's policy: built-in services (`_…`) at either end are always reachable (pairing
/// itself goes through `_pairing`); two connectors only when they have both claimed each
/// other.
#[derive(Debug, Default)]
pub struct PairedOnly {
    pub table: ClaimTable,
}

impl RoutePolicy for PairedOnly {
    fn allows(&self, from: &Address, to: &Address) -> bool {
        wire::is_service(&from.connector)
            || wire::is_service(&to.connector)
            || self.table.mutual(from, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        let (site, connector) = s.split_once('/').expect("site/connector");
        Address::new(site, connector)
    }

    fn pairing(connector: &str, peer: &str) -> Pairing {
        Pairing::new(connector, addr(peer))
    }

    /// Builds a policy from `claims` (site, [(connector, peer)]) and checks each route.
    fn check(claims: &[(&str, &[(&str, &str)])], routes: &[(&str, &str, bool)]) {
        let policy = PairedOnly::default();
        for (site, pairings) in claims {
            let pairings: Vec<Pairing> = pairings.iter().map(|(c, p)| pairing(c, p)).collect();
            policy.table.replace(site, &pairings);
        }
        for (from, to, allowed) in routes {
            assert_eq!(
                policy.allows(&addr(from), &addr(to)),
                *allowed,
                "{from} -> {to} with claims {claims:?}"
            );
        }
    }

    #[test]
    fn only_mutual_claims_open_a_route() {
        // Nothing claimed: connectors are refused, services are not.
        check(
            &[],
            &[
                ("a/c1", "b/c2", false),
                ("a/c1", "b/_pairing", true),
                ("b/_pairing", "a/c1", true),
                ("a/_link", "b/_echo", true),
            ],
        );
        // One side alone opens nothing, in either direction.
        check(
            &[("a", &[("c1", "b/c2")])],
            &[("a/c1", "b/c2", false), ("b/c2", "a/c1", false)],
        );
        // Both sides: both directions, and only between those two connectors.
        check(
            &[("a", &[("c1", "b/c2")]), ("b", &[("c2", "a/c1")])],
            &[
                ("a/c1", "b/c2", true),
                ("b/c2", "a/c1", true),
                ("a/c1", "b/c3", false),
                ("a/c9", "b/c2", false),
                ("c/c1", "b/c2", false),
                ("a/c1", "c/c2", false),
            ],
        );
        // A third site cannot ride on a pairing by claiming one side of it.
        check(
            &[
                ("a", &[("c1", "b/c2")]),
                ("b", &[("c2", "a/c1")]),
                ("c", &[("c1", "b/c2"), ("c2", "a/c1")]),
            ],
            &[("c/c1", "b/c2", false), ("c/c2", "a/c1", false)],
        );
        // Claims that cross (a claims b, b claims someone else) do not match.
        check(
            &[("a", &[("c1", "b/c2")]), ("b", &[("c2", "a/c9")])],
            &[("a/c1", "b/c2", false)],
        );
    }

    #[test]
    fn claims_are_replaced_whole_and_compare_as_sets() {
        let t = ClaimTable::default();
        t.replace("a", &[pairing("c1", "b/c2"), pairing("c3", "b/c4")]);
        t.replace("b", &[pairing("c2", "a/c1"), pairing("c4", "a/c3")]);
        assert!(t.mutual(&addr("a/c1"), &addr("b/c2")));
        assert_eq!(t.len(), 4);
        assert!(t.is_current("a", &[pairing("c3", "b/c4"), pairing("c1", "b/c2")]));
        assert!(t.is_current(
            "a",
            &[
                pairing("c1", "b/c2"),
                pairing("c3", "b/c4"),
                pairing("c1", "b/c2")
            ]
        ));
        assert!(!t.is_current("a", &[pairing("c1", "b/c2")]));
        assert!(t.is_current("z", &[]));

        t.replace("a", &[pairing("c3", "b/c4")]);
        assert!(!t.mutual(&addr("a/c1"), &addr("b/c2")));
        assert!(t.mutual(&addr("a/c3"), &addr("b/c4")));
        t.replace("a", &[]);
        assert!(!t.mutual(&addr("a/c3"), &addr("b/c4")));
        assert!(t.is_current("a", &[]));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_table_loads_from_registry_rows() {
        let t = ClaimTable::from_rows([
            ("a".to_owned(), pairing("c1", "b/c2")),
            ("b".to_owned(), pairing("c2", "a/c1")),
            ("a".to_owned(), pairing("c3", "b/c4")),
        ]);
        assert!(t.mutual(&addr("b/c2"), &addr("a/c1")));
        assert!(!t.mutual(&addr("a/c3"), &addr("b/c4")));
        assert_eq!(t.len(), 3);
        assert!(!t.is_empty());
    }
}
