//! The pairings sites have claimed, in memory for the per-frame routing check, and the
//! [`RoutePolicy`] that admits connector-to-connector traffic only between two connectors
//! that have both claimed each other (defence in depth: the end-to-end keys pinned at
//! pairing are the real protection; this keeps a registered but unpaired site from even
//! reaching another site's connectors).
//!
//! ```text
//!  site A ── Claims{[(c1, B/c2)]} ──▶ conn ──▶ ClaimLimiter (per site) ──▶
//!            registry.replace_claims (hub.db), then ClaimTable::replace("A", …)
//!  Route{A/c1 → B/c2}    ──▶ PairedOnly::allows: to a `_` service? yes → allow
//!                            from a `_` service? → only as an answer (below)
//!                            A claims (c1, B/c2) and B claims (c2, A/c1)?
//!  Route{A/c1 → B/_svc, Request #7}  ──▶ delivered ──▶ ServiceAnswers::expect
//!  Route{B/_svc → A/c1, Response #7} ──▶ ServiceAnswers::take: one answer, then closed
//! ```
//!
//! Only a *destination* service opens a route: a frame whose sender is a service reaches a
//! connector only as the one Response or Failure to a Request that connector sent that
//! service (issue 13: a sender named `_x` used to reach any connector of any site).
//!
//! Deliberately absent: any check that a claim is true. A site can claim anything about its
//! own connectors (the hub stamps the authenticated site on every claim), but one side alone
//! opens nothing: the other site must claim the same pairing back.
//!
//! Invariants: a site's claims are replaced whole, never merged; the check allocates
//! nothing and takes one read lock. Outstanding service requests are bounded per requesting
//! site ([`MAX_OUTSTANDING`]) and forgotten after [`ANSWER_WINDOW`]. A site's Claims are
//! applied at most at the [`ClaimLimiter`]'s rate; a faster site waits (its own connection
//! only).

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use proto::wire::{self, Address, Kind, Pairing, Routed};

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

/// The hub's policy: a built-in service (`_…`) is always reachable (pairing itself goes
/// through `_pairing`); two connectors only when they have both claimed each other. A
/// service never opens a route to a connector: its answers go through [`Self::admits`].
#[derive(Debug, Default)]
pub struct PairedOnly {
    pub table: ClaimTable,
    /// Requests connectors sent to services, each of which may be answered once.
    pub answers: ServiceAnswers,
}

impl RoutePolicy for PairedOnly {
    fn allows(&self, from: &Address, to: &Address) -> bool {
        wire::is_service(&to.connector)
            || (!wire::is_service(&from.connector) && self.table.mutual(from, to))
    }
}

impl PairedOnly {
    /// Whether the hub forwards `r`: [`RoutePolicy::allows`], except that a service may send
    /// to a connector the one answer to a request it received from that connector (which
    /// this consumes).
    pub fn admits(&self, r: &Routed) -> bool {
        if wire::is_service(&r.from.connector) && !wire::is_service(&r.to.connector) {
            return matches!(r.kind, Kind::Response | Kind::Failure) && self.answers.take(r);
        }
        self.allows(&r.from, &r.to)
    }

    /// Called before `r` is handed to its receiver: a connector's request to a service
    /// may now be answered. Returns false (and records nothing) when the requesting site
    /// already has [`MAX_OUTSTANDING`] unanswered service requests.
    pub fn expect_answer(&self, r: &Routed) -> bool {
        if r.kind == Kind::Request
            && wire::is_service(&r.to.connector)
            && !wire::is_service(&r.from.connector)
        {
            return self.answers.expect(r);
        }
        true
    }

    /// Undoes [`Self::expect_answer`] for a request that was not delivered.
    pub fn undelivered(&self, r: &Routed) {
        if r.kind == Kind::Request && wire::is_service(&r.to.connector) {
            self.answers.forget(&r.from, &r.to, r.id);
        }
    }
}

/// How long a service may take to answer a request before the answer is refused.
pub const ANSWER_WINDOW: Duration = Duration::from_secs(120);
/// Unanswered service requests one site may have outstanding.
pub const MAX_OUTSTANDING: usize = 1024;

/// (the requesting connector, the service, the request id) → when it was forwarded.
type Outstanding = HashMap<(String, Address, u64), Instant>;

/// The service requests forwarded and not yet answered, per requesting site.
#[derive(Debug, Default)]
pub struct ServiceAnswers {
    sites: Mutex<HashMap<String, Outstanding>>,
}

impl ServiceAnswers {
    fn expect(&self, r: &Routed) -> bool {
        let now = Instant::now();
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let pending = sites.entry(r.from.site.clone()).or_default();
        if pending.len() >= MAX_OUTSTANDING {
            pending.retain(|_, at| now.duration_since(*at) < ANSWER_WINDOW);
            if pending.len() >= MAX_OUTSTANDING {
                return false;
            }
        }
        pending.insert((r.from.connector.clone(), r.to.clone(), r.id), now);
        true
    }

    /// Consumes the request `r` answers (`r.to` asked `r.from`), if it is outstanding.
    fn take(&self, r: &Routed) -> bool {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let Some(pending) = sites.get_mut(r.to.site.as_str()) else {
            return false;
        };
        let key = (r.to.connector.clone(), r.from.clone(), r.id);
        let fresh = pending
            .remove(&key)
            .is_some_and(|at| at.elapsed() < ANSWER_WINDOW);
        if pending.is_empty() {
            sites.remove(r.to.site.as_str());
        }
        fresh
    }

    fn forget(&self, requester: &Address, service: &Address, id: u64) {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pending) = sites.get_mut(requester.site.as_str()) {
            pending.remove(&(requester.connector.clone(), service.clone(), id));
            if pending.is_empty() {
                sites.remove(requester.site.as_str());
            }
        }
    }

    /// Unanswered requests in all, for tests.
    pub fn len(&self) -> usize {
        let sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        sites.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Claims frames a site may send in a burst, in units of [`ClaimLimiter::cost`].
pub const CLAIMS_BURST: f64 = 16.0;
/// Units regained per second.
pub const CLAIMS_PER_SECOND: f64 = 8.0;

/// A token bucket per site for Claims frames: each costs one unit plus one per 256
/// pairings, so that a flood of 4,096-pairing claims (each holding the registry and the
/// claim table for tens of milliseconds) is applied about once every two seconds, while
/// the few claims an honest site sends (on connecting, on each pairing) never wait.
#[derive(Debug, Default)]
pub struct ClaimLimiter {
    sites: Mutex<HashMap<String, (f64, Instant)>>,
}

impl ClaimLimiter {
    pub fn cost(pairings: usize) -> f64 {
        1.0 + (pairings / 256) as f64
    }

    /// Takes the cost of a Claims frame of `pairings` from `site`'s bucket and says how long
    /// the site must wait before the hub applies it (zero when it is within its rate).
    pub fn charge(&self, site: &str, pairings: usize) -> Duration {
        let now = Instant::now();
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let (level, at) = sites.entry(site.to_owned()).or_insert((CLAIMS_BURST, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * CLAIMS_PER_SECOND)
            .min(CLAIMS_BURST)
            - Self::cost(pairings);
        *at = now;
        if *level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*level / CLAIMS_PER_SECOND)
        }
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
        // Nothing claimed: connectors are refused, services are not; a service opens
        // nothing to a connector, paired or not.
        check(
            &[],
            &[
                ("a/c1", "b/c2", false),
                ("a/c1", "b/_pairing", true),
                ("b/_pairing", "a/c1", false),
                ("a/_link", "b/_echo", true),
            ],
        );
        check(
            &[("a", &[("c1", "b/c2")]), ("b", &[("c2", "a/c1")])],
            &[("b/_x", "a/c1", false), ("b/_x", "a/c9", false)],
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

    fn routed(from: &str, to: &str, kind: Kind, id: u64) -> Routed {
        Routed {
            from: addr(from),
            to: addr(to),
            kind,
            id,
            payload: Vec::new(),
        }
    }

    #[test]
    fn a_service_answers_only_the_request_it_received_and_only_once() {
        let p = PairedOnly::default();
        // Unasked: refused, whatever the kind.
        for kind in [Kind::Request, Kind::Message, Kind::Response, Kind::Failure] {
            assert!(
                !p.admits(&routed("b/_pairing", "a/c1", kind, 7)),
                "{kind:?}"
            );
        }
        let request = routed("a/c1", "b/_pairing", Kind::Request, 7);
        assert!(p.admits(&request));
        assert!(p.expect_answer(&request));
        // Another id, another connector, another service, or a one-way message: refused.
        assert!(!p.admits(&routed("b/_pairing", "a/c1", Kind::Response, 8)));
        assert!(!p.admits(&routed("b/_pairing", "a/c2", Kind::Response, 7)));
        assert!(!p.admits(&routed("b/_echo", "a/c1", Kind::Response, 7)));
        assert!(!p.admits(&routed("c/_pairing", "a/c1", Kind::Response, 7)));
        assert!(!p.admits(&routed("b/_pairing", "a/c1", Kind::Message, 7)));
        // The answer, once.
        assert!(p.admits(&routed("b/_pairing", "a/c1", Kind::Failure, 7)));
        assert!(!p.admits(&routed("b/_pairing", "a/c1", Kind::Response, 7)));
        assert!(p.answers.is_empty());

        // An undelivered request cannot be answered.
        assert!(p.expect_answer(&request));
        p.undelivered(&request);
        assert!(!p.admits(&routed("b/_pairing", "a/c1", Kind::Response, 7)));

        // A site cannot pile up unanswered requests without bound.
        for id in 0..MAX_OUTSTANDING as u64 {
            assert!(p.expect_answer(&routed("a/c1", "b/_pairing", Kind::Request, id)));
        }
        assert!(!p.expect_answer(&routed("a/c1", "b/_pairing", Kind::Request, u64::MAX)));
        assert!(p.expect_answer(&routed("z/c1", "b/_pairing", Kind::Request, 1)));
    }

    #[test]
    fn claims_within_the_rate_never_wait_and_a_flood_does() {
        let l = ClaimLimiter::default();
        for _ in 0..CLAIMS_BURST as usize {
            assert_eq!(l.charge("a", 3), Duration::ZERO);
        }
        assert!(l.charge("a", 3) > Duration::ZERO);
        // Per site: another site is not slowed by the first.
        assert_eq!(l.charge("b", 3), Duration::ZERO);
        // A maximal claim costs more than a burst: it always waits about two seconds.
        assert!(l.charge("c", wire::MAX_CLAIMS) > Duration::ZERO);
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
