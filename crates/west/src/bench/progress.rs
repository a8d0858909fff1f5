//! The benchmark's progress on stderr: one `indicatif` bar that moves through the run's
//! phases (start, throughput, latency, catch-up, then the baseline's), or, when stderr is not
//! a terminal (a log file, a pipe, CI), one plain line per phase instead of a bar.
//!
//! Deliberately absent: anything on stdout, which holds only the table or the JSON object.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The whole run's progress: `steps` phases in all, across every scenario of the run.
pub struct Progress {
    bar: ProgressBar,
    /// No terminal: one line per phase instead of the bar.
    plain: bool,
    steps: usize,
    step: usize,
    started: Instant,
}

impl Progress {
    pub fn new(steps: usize) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let plain = bar.is_hidden();
        Self {
            bar,
            plain,
            steps,
            step: 0,
            started: Instant::now(),
        }
    }

    /// Shows nothing at all (for a scenario that draws its own bars).
    pub fn off() -> Self {
        Self {
            bar: ProgressBar::hidden(),
            plain: false,
            steps: 0,
            step: 0,
            started: Instant::now(),
        }
    }

    /// Starts the next phase, `name` (e.g. `west: throughput`), counting towards `len`
    /// points (0: nothing to count, a spinner).
    pub fn phase(&mut self, name: &str, len: u64) {
        self.step += 1;
        let prefix = format!("[{}/{}] {name}", self.step, self.steps.max(self.step));
        if self.plain {
            let what = if len > 0 {
                format!(", {len} points")
            } else {
                String::new()
            };
            eprintln!(
                "west bench {prefix}{what} (at {:.0} s)",
                self.started.elapsed().as_secs_f64()
            );
            return;
        }
        let template = if len > 0 {
            "{prefix} {msg} [{elapsed}] {bar:30} {human_pos}/{human_len} {per_sec:0} eta {eta}"
        } else {
            "{spinner} {prefix} {msg} [{elapsed}]"
        };
        self.bar.reset();
        self.bar.set_length(len);
        self.bar.set_message("");
        self.bar.set_prefix(prefix);
        if let Ok(style) = ProgressStyle::with_template(template) {
            self.bar.set_style(style);
        }
        if self.step == 1 {
            // Redraws while nothing moves (a spinner, waits), so elapsed time keeps counting.
            self.bar.enable_steady_tick(Duration::from_millis(200));
        }
    }

    /// What the phase is doing now (e.g. `waiting for the Target`); restarts the count.
    pub fn stage(&self, msg: &str) {
        self.bar.set_message(msg.to_owned());
        self.bar.set_position(0);
        self.bar.reset_eta();
    }

    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// A handle on the bar for tasks that count on their own (`inc` on it moves this bar).
    pub fn counter(&self) -> ProgressBar {
        self.bar.clone()
    }

    pub fn set(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    /// Clears the bar, or logs the end of the run.
    pub fn finish(&self) {
        if self.plain && self.step > 0 {
            eprintln!(
                "west bench: done in {:.0} s",
                self.started.elapsed().as_secs_f64()
            );
        }
        self.bar.finish_and_clear();
    }
}
