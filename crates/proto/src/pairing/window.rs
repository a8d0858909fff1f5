//! The Source's pairing window: the countdown after ENABLE REMOTE-SYNC and the budget of
//! five attempts.
//!
//! Every attempt is counted when it starts, because answering a Target's first message
//! already lets that Target test one guess of the code (SPAKE2 allows exactly one guess per
//! run). An attempt ends as a success (the window closes as paired), as a failure, or is
//! superseded when the next attempt starts; a superseded attempt counts as failed. So at
//! most [`MAX_ATTEMPTS`] guesses are ever answered per code, even if a relay drops
//! messages or a driver forgets to report an outcome.
//!
//! What it does not do: read a clock (every call takes `now_us`), persist itself (a site
//! that restarts during pairing opens a fresh window with a fresh code), or talk to the
//! network.

use super::{PairingCode, PairingError};

/// Failed attempts after which the window closes.
pub const MAX_ATTEMPTS: u8 = 5;
/// The default countdown: ten minutes, in microseconds.
pub const DEFAULT_WINDOW_US: u64 = 10 * 60 * 1_000_000;

/// Why a pairing window no longer accepts attempts. `Display` is what the Target's
/// operator should read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WindowClosed {
    #[error("the pairing countdown expired; click ENABLE REMOTE-SYNC on the source again")]
    Expired,
    #[error(
        "too many wrong pairing codes were tried; click ENABLE REMOTE-SYNC on the source again"
    )]
    TooManyAttempts,
    #[error("the source connector is already paired")]
    AlreadyPaired,
    #[error("pairing was cancelled on the source")]
    Cancelled,
}

/// What the Source's UI shows about its window at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowStatus {
    Open {
        expires_at_us: u64,
        attempts_left: u8,
    },
    Paired,
    Closed(WindowClosed),
}

/// One Source connector's pairing countdown and attempt budget.
#[derive(Debug)]
pub struct PairingWindow {
    /// The secret both operators share; handed to each attempt, never sent.
    code: PairingCode,
    /// End of the countdown; attempts that start or finish at or after it are refused.
    expires_at_us: u64,
    /// Attempts that ended without pairing, superseded ones included.
    failures: u8,
    /// The attempt in flight, by number: only it may still complete.
    pending: Option<u32>,
    /// Number given to the next attempt, so a superseded attempt can be told apart.
    next_attempt: u32,
    /// Set once the window has closed for good.
    closed: Option<Closed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    Paired,
    Refusing(WindowClosed),
}

/// Proof that the window admitted an attempt; the responder keeps it until the end.
#[derive(Debug)]
pub(crate) struct Attempt {
    number: u32,
    pub(crate) code: PairingCode,
}

impl PairingWindow {
    /// Opens a window at `now_us` that stays open for `duration_us` (see
    /// [`DEFAULT_WINDOW_US`]). Use a fresh code for every window.
    pub fn open(code: PairingCode, now_us: u64, duration_us: u64) -> Self {
        Self {
            code,
            expires_at_us: now_us.saturating_add(duration_us),
            failures: 0,
            pending: None,
            next_attempt: 0,
            closed: None,
        }
    }

    /// The code to show on the Source's screen.
    /// Rebuilds a window after a restart of the site from what the site persisted: the
    /// code, the end of the countdown and the attempts already answered. An attempt that was
    /// in flight when the site stopped is among `failures`: it counted when it was answered.
    pub fn restore(code: PairingCode, expires_at_us: u64, failures: u8) -> Self {
        let mut w = Self::open(code, 0, expires_at_us);
        for _ in 0..failures.min(MAX_ATTEMPTS) {
            w.count_failure();
        }
        w
    }

    /// Attempts answered so far, the one in flight included: what a site persists so that
    /// [`restore`](Self::restore) after a crash never grants a sixth guess.
    pub fn attempts_used(&self) -> u8 {
        self.failures
            .saturating_add(u8::from(self.pending.is_some()))
    }

    pub fn code(&self) -> &PairingCode {
        &self.code
    }

    pub fn expires_at_us(&self) -> u64 {
        self.expires_at_us
    }

    pub fn status(&self, now_us: u64) -> WindowStatus {
        match self.closed_reason(now_us) {
            Some(Closed::Paired) => WindowStatus::Paired,
            Some(Closed::Refusing(why)) => WindowStatus::Closed(why),
            None => WindowStatus::Open {
                expires_at_us: self.expires_at_us,
                attempts_left: MAX_ATTEMPTS
                    .saturating_sub(self.failures)
                    .saturating_sub(u8::from(self.pending.is_some())),
            },
        }
    }

    /// The operator cancelled pairing before it completed. A completed pairing stays.
    pub fn cancel(&mut self) {
        if self.closed.is_none() {
            self.closed = Some(Closed::Refusing(WindowClosed::Cancelled));
        }
    }

    fn closed_reason(&self, now_us: u64) -> Option<Closed> {
        self.closed.or_else(|| {
            (now_us >= self.expires_at_us).then_some(Closed::Refusing(WindowClosed::Expired))
        })
    }

    fn refusal(&self, now_us: u64) -> Option<WindowClosed> {
        self.closed_reason(now_us).map(|c| match c {
            Closed::Paired => WindowClosed::AlreadyPaired,
            Closed::Refusing(why) => why,
        })
    }

    /// Admits a new attempt, counting the one in flight (if any) as failed.
    pub(crate) fn attempt(&mut self, now_us: u64) -> Result<Attempt, WindowClosed> {
        if let Some(why) = self.refusal(now_us) {
            return Err(why);
        }
        if self.pending.take().is_some() {
            self.count_failure();
            if let Some(why) = self.refusal(now_us) {
                return Err(why);
            }
        }
        let number = self.next_attempt;
        self.next_attempt = self.next_attempt.wrapping_add(1);
        self.pending = Some(number);
        Ok(Attempt {
            number,
            code: self.code.clone(),
        })
    }

    /// The attempt ended without pairing.
    pub(crate) fn fail(&mut self, attempt: &Attempt) {
        if self.pending == Some(attempt.number) {
            self.pending = None;
            self.count_failure();
        }
    }

    /// The attempt proved knowledge of the code; close the window as paired, unless the
    /// window closed or a newer attempt replaced this one meanwhile.
    pub(crate) fn complete(&mut self, attempt: &Attempt, now_us: u64) -> Result<(), PairingError> {
        if let Some(why) = self.refusal(now_us) {
            return Err(why.into());
        }
        if self.pending != Some(attempt.number) {
            return Err(PairingError::Superseded);
        }
        self.pending = None;
        self.closed = Some(Closed::Paired);
        Ok(())
    }

    fn count_failure(&mut self) {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= MAX_ATTEMPTS && self.closed.is_none() {
            self.closed = Some(Closed::Refusing(WindowClosed::TooManyAttempts));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairing::test_rng::TestRng;

    fn window() -> PairingWindow {
        PairingWindow::open(PairingCode::generate(&mut TestRng::new(1)), 1_000, 600)
    }

    #[test]
    fn countdown_expires() {
        let mut w = window();
        assert_eq!(
            w.status(1_599),
            WindowStatus::Open {
                expires_at_us: 1_600,
                attempts_left: 5
            }
        );
        assert_eq!(w.status(1_600), WindowStatus::Closed(WindowClosed::Expired));
        assert_eq!(w.attempt(1_600).err(), Some(WindowClosed::Expired));
    }

    #[test]
    fn attempt_that_outlives_the_countdown_cannot_complete() {
        let mut w = window();
        let a = w.attempt(1_500).expect("open");
        assert_eq!(
            w.complete(&a, 1_600),
            Err(PairingError::Closed(WindowClosed::Expired))
        );
    }

    #[test]
    fn a_restored_window_keeps_its_used_attempts() {
        let mut w = window();
        let _ = w.attempt(1_000).expect("open");
        assert_eq!(w.attempts_used(), 1);
        let w = PairingWindow::restore(w.code().clone(), w.expires_at_us(), w.attempts_used());
        assert_eq!(
            w.status(1_000),
            WindowStatus::Open {
                expires_at_us: 1_600,
                attempts_left: 4
            }
        );
        let w = PairingWindow::restore(w.code().clone(), 1_600, MAX_ATTEMPTS);
        assert_eq!(
            w.status(1_000),
            WindowStatus::Closed(WindowClosed::TooManyAttempts)
        );
    }

    #[test]
    fn five_failures_close_the_window() {
        let mut w = window();
        for left in (1..=5u8).rev() {
            assert!(
                matches!(w.status(1_000), WindowStatus::Open { attempts_left, .. } if attempts_left == left)
            );
            let a = w.attempt(1_000).expect("still open");
            w.fail(&a);
            w.fail(&a); // Reporting twice counts once.
        }
        assert_eq!(
            w.status(1_000),
            WindowStatus::Closed(WindowClosed::TooManyAttempts)
        );
        assert_eq!(w.attempt(1_000).err(), Some(WindowClosed::TooManyAttempts));
    }

    #[test]
    fn abandoned_attempts_count_when_superseded() {
        let mut w = window();
        let mut last = None;
        for _ in 0..5 {
            last = Some(w.attempt(1_000).expect("open"));
        }
        // Four superseded, the fifth still in flight: nothing left to start.
        assert_eq!(
            w.status(1_000),
            WindowStatus::Open {
                expires_at_us: 1_600,
                attempts_left: 0
            }
        );
        assert_eq!(w.attempt(1_000).err(), Some(WindowClosed::TooManyAttempts));
        // The sixth start counted the fifth as failed, so it cannot complete any more.
        let fifth = last.expect("started");
        assert_eq!(
            w.complete(&fifth, 1_000),
            Err(PairingError::Closed(WindowClosed::TooManyAttempts))
        );
    }

    #[test]
    fn superseded_attempt_cannot_complete() {
        let mut w = window();
        let first = w.attempt(1_000).expect("open");
        let second = w.attempt(1_000).expect("open");
        assert_eq!(w.complete(&first, 1_000), Err(PairingError::Superseded));
        assert_eq!(w.complete(&second, 1_000), Ok(()));
        assert_eq!(w.status(1_000), WindowStatus::Paired);
        assert_eq!(w.attempt(1_000).err(), Some(WindowClosed::AlreadyPaired));
        // Paired stays paired, even past the countdown and after a cancel.
        w.cancel();
        assert_eq!(w.status(9_999), WindowStatus::Paired);
    }

    #[test]
    fn cancel_closes() {
        let mut w = window();
        let a = w.attempt(1_000).expect("open");
        w.cancel();
        assert_eq!(w.attempt(1_000).err(), Some(WindowClosed::Cancelled));
        assert_eq!(
            w.complete(&a, 1_000),
            Err(PairingError::Closed(WindowClosed::Cancelled))
        );
    }
}
