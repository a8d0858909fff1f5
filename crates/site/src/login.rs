//! Sign-in limits (issue 13 #1: 200 concurrent wrong sign-ins once took a site to 4.96 GB
//! and its API to seconds per call). Every password check goes through the [`LoginGuard`]:
//!
//! ```text
//!  sign-in ─▶ address or user backing off? ─ yes ─▶ 429 + Retry-After (no argon2)
//!          ─▶ a place in the queue (MAX_QUEUED)? ─ no ─▶ 503 + Retry-After: 1
//!          ─▶ one of max_checks() long-lived checker threads (never the store's blocking
//!             pool): argon2 against the user's hash or a dummy one (an unknown user costs
//!             what a wrong password costs)
//!          ─▶ wrong: count a failure for the address and the user; past FREE_FAILURES,
//!             each further one doubles the pause (1 s, 2 s, 4 s … up to MAX_BACKOFF)
//! ```
//!
//! Invariants: at most `max_checks()` argon2 computations (7 MiB each with [`argon2`]'s
//! parameters) run at once, whatever arrives; a checker holds that memory only while checks
//! are queued (a burst allocates it once), then gives it back; a success clears the address's and the user's failures; the failure table
//! is bounded (`MAX_TRACKED`, oldest forgotten first).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use tokio::sync::Semaphore;

/// Password checks (argon2) running at once: half the cores (one to four), so that the
/// other half keeps serving everything else whatever sign-ins arrive.
pub fn max_checks() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).clamp(1, 4))
}
/// Sign-ins waiting for or running a check; more are answered 503 at once.
pub const MAX_QUEUED: usize = 16;
/// Wrong passwords an address or a user may send before it has to wait.
pub const FREE_FAILURES: u32 = 5;
/// The longest pause imposed after repeated failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Addresses and user names whose failures are remembered; the oldest go first.
const MAX_TRACKED: usize = 10_000;
/// Failures older than this are forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Why a sign-in was not even checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The address or user failed too often: try again after this long.
    BackingOff(Duration),
    /// Too many sign-ins in progress: try again in a second.
    Busy,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Who {
    Addr(IpAddr),
    User(String),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// No attempt is checked before this.
    until: Instant,
    last: Instant,
}

/// A check for a checker thread, given that thread's argon2 memory.
type Job = Box<dyn FnOnce(&mut Vec<argon2::Block>) + Send>;

/// Bounds the memory and CPU that sign-ins may take, and slows password guessing.
pub struct LoginGuard {
    queue: Arc<Semaphore>,
    /// The checkers' inbox; [`max_checks()`] threads of their own, started on first use. Long
    /// lived, so that the allocator keeps at most that many argon2 arenas (a thread per
    /// check left hundreds of MiB behind).
    jobs: OnceLock<std::sync::mpsc::Sender<Job>>,
    failures: Mutex<HashMap<Who, Failures>>,
}

impl std::fmt::Debug for LoginGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginGuard").finish_non_exhaustive()
    }
}

impl Default for LoginGuard {
    fn default() -> Self {
        Self {
            queue: Arc::new(Semaphore::new(MAX_QUEUED)),
            jobs: OnceLock::new(),
            failures: Mutex::new(HashMap::new()),
        }
    }
}

/// The password hash of new passwords: Argon2id with 7 MiB, 5 passes and 1 lane, one of the
/// settings OWASP's Password Storage Cheat Sheet lists as equally strong; the crate's default
/// (19 MiB, 2 passes) is another, at nearly three times the memory for the same work. A
/// check holds that memory, so it counts in every site's footprint (issue 11: 19 MiB of
/// site-a's 90). A stored hash is checked with the parameters it names.
pub fn argon2() -> Argon2<'static> {
    let params = argon2::Params::new(7 * 1024, 5, 1, None).unwrap_or_default();
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Hashes a new password with [`argon2`]'s parameters and a random salt (PHC string).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
}

/// Whether `password` matches the stored `hash` (checked with the parameters it names).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Starts the checker threads; they end when the guard (the sender) is dropped.
fn checkers() -> std::sync::mpsc::Sender<Job> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..max_checks() {
        let rx = Arc::clone(&rx);
        let spawned = std::thread::Builder::new()
            .name(format!("password-check-{i}"))
            .spawn(move || {
                // One argon2 working memory per thread, reused while checks are queued and
                // given back when none is: an idle site holds none of it.
                let mut blocks = Vec::new();
                let mut next: Option<Job> = None;
                loop {
                    let job = match next.take() {
                        Some(job) => job,
                        None => {
                            let job = rx
                                .lock()
                                .map_err(|_| ())
                                .and_then(|r| r.recv().map_err(|_| ()));
                            match job {
                                Ok(job) => job,
                                Err(()) => return,
                            }
                        }
                    };
                    job(&mut blocks);
                    // A lock held elsewhere is a checker waiting: nothing is queued for this one.
                    next = rx.try_lock().ok().and_then(|r| r.try_recv().ok());
                    if next.is_none() {
                        blocks = Vec::new();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start a password checker");
        }
    }
    tx
}

/// A hash of a random password with the same parameters as real ones, checked for unknown
/// users so that they cost the same as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        SaltString::encode_b64(&bytes[..16])
            .map_err(|e| e.to_string())
            .and_then(|salt| {
                argon2()
                    .hash_password(&bytes[16..], &salt)
                    .map(|h| h.to_string())
                    .map_err(|e| e.to_string())
            })
            .unwrap_or_default()
    })
}

impl LoginGuard {
    fn keys(client: Option<IpAddr>, user: &str) -> Vec<Who> {
        let mut keys = vec![Who::User(user.to_owned())];
        keys.extend(client.map(Who::Addr));
        keys
    }

    /// How long `client` or `user` must still wait, if at all.
    fn backing_off(&self, client: Option<IpAddr>, user: &str) -> Option<Duration> {
        let now = Instant::now();
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        Self::keys(client, user)
            .iter()
            .filter_map(|k| failures.get(k))
            .filter(|f| f.until > now)
            .map(|f| f.until - now)
            .max()
    }

    fn record(&self, client: Option<IpAddr>, user: &str, ok: bool) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for key in Self::keys(client, user) {
            if ok {
                failures.remove(&key);
                continue;
            }
            let f = failures.entry(key).or_insert(Failures {
                count: 0,
                until: now,
                last: now,
            });
            if now.duration_since(f.last) > FORGET_AFTER {
                f.count = 0;
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
            if f.count > FREE_FAILURES {
                let doublings = (f.count - FREE_FAILURES - 1).min(20);
                f.until = now + Duration::from_secs(1u64 << doublings).min(MAX_BACKOFF);
            }
        }
        if failures.len() > MAX_TRACKED {
            failures.retain(|_, f| now.duration_since(f.last) <= FORGET_AFTER);
            while failures.len() > MAX_TRACKED {
                let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                failures.remove(&oldest);
            }
        }
    }

    /// Checks `password` against `hash` (the user's, or `None` for an unknown user) within
    /// the guard's limits. `Ok(true)` only for the right password of a known user.
    pub async fn check(
        &self,
        client: Option<IpAddr>,
        user: &str,
        password: &str,
        hash: Option<String>,
    ) -> Result<bool, Refused> {
        if let Some(wait) = self.backing_off(client, user) {
            return Err(Refused::BackingOff(wait));
        }
        let Ok(queued) = Arc::clone(&self.queue).try_acquire_owned() else {
            return Err(Refused::Busy);
        };
        let known = hash.is_some();
        let password = password.to_owned();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Threads of their own: the blocking pool serves the store, and a queue of argon2
        // checks there once delayed every API call by seconds.
        let job: Job = Box::new(move |blocks| {
            // Held until argon2 is done, even if the caller gave up meanwhile.
            let _queued = queued;
            let hash = hash.as_deref().unwrap_or_else(|| dummy_hash());
            let _ = tx.send(verify_with_memory(&password, hash, blocks));
        });
        if self.jobs.get_or_init(checkers).send(job).is_err() {
            tracing::error!("the password checkers are gone");
            return Err(Refused::Busy);
        }
        let verified = rx.await.unwrap_or(false);
        let ok = known && verified;
        self.record(client, user, ok);
        Ok(ok)
    }
}

impl LoginGuard {
    /// Hashes a new password (argon2, as [`hash_password`]) on the checker
    /// threads, within the same queue as checks: creating users and changing passwords can
    /// take no more memory and CPU than sign-ins can. `Err` when the queue is full.
    pub async fn hash(&self, password: &str) -> Result<anyhow::Result<String>, Refused> {
        let Ok(queued) = Arc::clone(&self.queue).try_acquire_owned() else {
            return Err(Refused::Busy);
        };
        let password = password.to_owned();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |_| {
            let _queued = queued;
            let _ = tx.send(hash_password(&password));
        });
        if self.jobs.get_or_init(checkers).send(job).is_err() {
            tracing::error!("the password checkers are gone");
            return Err(Refused::Busy);
        }
        rx.await.map_err(|_| Refused::Busy)
    }
}

/// The most argon2 memory a stored hash may ask for (256 MiB); a larger `m` is refused.
const MAX_BLOCKS: usize = 256 * 1024;

/// [`verify_password`], computing in `blocks` (resized to the hash's parameters and kept),
/// so that a checker thread allocates its memory once per burst rather than on every check.
pub fn verify_with_memory(password: &str, hash: &str, blocks: &mut Vec<argon2::Block>) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        argon2::Algorithm::try_from(parsed.algorithm),
        argon2::Params::try_from(&parsed),
    ) else {
        return false;
    };
    let Ok(version) = parsed
        .version
        .map_or(Ok(argon2::Version::default()), argon2::Version::try_from)
    else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    if params.block_count() > MAX_BLOCKS {
        return false;
    }
    blocks.resize(params.block_count(), argon2::Block::default());
    let mut out = vec![0u8; expected.len()];
    let computed = Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut blocks[..])
        .is_ok();
    computed && constant_time_eq(&out, expected.as_bytes())
}

/// Equality of two secrets in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_hashes_take_7_mib_and_older_19_mib_ones_still_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=7168,t=5,p=1$"), "{hash}");
        // A hash stored by an earlier version, with the crate's default parameters.
        let salt = SaltString::encode_b64(&[7; 16]).unwrap();
        let old = Argon2::default()
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert!(old.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{old}");
        let mut blocks = Vec::new();
        assert!(verify_with_memory("correct horse", &old, &mut blocks));
        assert!(!verify_with_memory("correct hors", &old, &mut blocks));
        assert!(verify_password("correct horse", &old));
    }

    #[test]
    fn a_checker_verifies_in_its_own_memory() {
        let hash = hash_password("correct horse").unwrap();
        let mut blocks = Vec::new();
        assert!(verify_with_memory("correct horse", &hash, &mut blocks));
        assert!(!verify_with_memory("correct hors", &hash, &mut blocks));
        assert!(!verify_with_memory(
            "correct horse",
            "not a hash",
            &mut blocks
        ));
        let other = hash_password("battery staple").unwrap();
        assert!(verify_with_memory("battery staple", &other, &mut blocks));
        assert!(!dummy_hash().is_empty());
    }

    #[tokio::test]
    async fn a_new_password_is_hashed_on_the_checkers_and_then_verifies() {
        let guard = LoginGuard::default();
        let hash = guard.hash("jane-first-password").await.unwrap().unwrap();
        assert!(hash.starts_with("$argon2"), "{hash}");
        assert_eq!(
            guard
                .check(None, "jane", "jane-first-password", Some(hash.clone()))
                .await,
            Ok(true)
        );
        assert_eq!(
            guard
                .check(None, "jane", "jane-first-passwor", Some(hash))
                .await,
            Ok(false)
        );
    }

    #[tokio::test]
    async fn repeated_failures_back_off_per_address_and_per_user() {
        let guard = LoginGuard::default();
        let hash = hash_password("right").unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            assert_eq!(
                guard
                    .check(Some(a), "u1", "wrong", Some(hash.clone()))
                    .await,
                Ok(false)
            );
        }
        // The next failure starts the pause; during it nothing is checked, not even the
        // right password.
        assert_eq!(
            guard
                .check(Some(a), "u1", "wrong", Some(hash.clone()))
                .await,
            Ok(false)
        );
        assert!(matches!(
            guard
                .check(Some(a), "u1", "right", Some(hash.clone()))
                .await,
            Err(Refused::BackingOff(_))
        ));
        // The address is paused for any user, the user from any address.
        assert!(matches!(
            guard.check(Some(a), "u2", "x", None).await,
            Err(Refused::BackingOff(_))
        ));
        assert!(matches!(
            guard
                .check(Some(b), "u1", "right", Some(hash.clone()))
                .await,
            Err(Refused::BackingOff(_))
        ));
        // An unknown user is checked (against the dummy hash) and never accepted.
        assert_eq!(
            guard.check(Some(b), "ghost", "right", None).await,
            Ok(false)
        );
        // Success clears the failures.
        let g = LoginGuard::default();
        for _ in 0..FREE_FAILURES {
            assert_eq!(
                g.check(Some(a), "u1", "wrong", Some(hash.clone())).await,
                Ok(false)
            );
        }
        assert_eq!(
            g.check(Some(a), "u1", "right", Some(hash.clone())).await,
            Ok(true)
        );
        assert_eq!(
            g.check(Some(a), "u1", "wrong", Some(hash.clone())).await,
            Ok(false)
        );
        assert_eq!(g.check(Some(a), "u1", "right", Some(hash)).await, Ok(true));
    }
}
