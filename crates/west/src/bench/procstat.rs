//! What the benchmark's processes used, read from Linux's /proc, and how much a directory
//! holds on disk: shared by every scenario so that `west` and its baselines are measured the
//! same way.
//!
//! - [`Usage`]: the peak resident set (`VmHWM` of `/proc/PID/status`, the kernel's
//!   high-water mark, so one reading at the end is the peak of the whole life) and CPU seconds
//!   (`utime + stime` of `/proc/PID/stat`). A process that is restarted is measured per life
//!   and the lives are combined with [`Usage::and`].
//! - [`ClientMeter`]: the same for this process, over one scenario only, so that a baseline
//!   run after ours in the same process is not charged for ours.
//! - [`disk_written`]: bytes a process caused to be written to storage (`write_bytes` of
//!   `/proc/PID/io`: the WAL, the database and its checkpoints all count; a page counts when
//!   it turns from clean to dirty, so one rewritten before it reaches the disk counts once,
//!   and short runs under-count).
//! - [`dir_size`]: bytes of all files under a directory.
//!
//! Deliberately absent: sampling over time; nothing here is portable beyond Linux.

use std::path::Path;

use anyhow::Context;

/// What a process used so far.
#[derive(Default, Clone, Copy, Debug)]
pub struct Usage {
    /// VmHWM: the peak resident set, KiB.
    pub peak_rss_kib: u64,
    /// utime + stime, seconds.
    pub cpu_secs: f64,
}

impl Usage {
    /// Reads `/proc/<pid>` (`proc` is that directory); `tick` is seconds per clock tick.
    pub fn read(proc: &str, tick: f64) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("{proc}/status"))
            .with_context(|| format!("reading {proc}/status"))?;
        let peak_rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no VmHWM in {proc}/status"))?;
        let stat = std::fs::read_to_string(format!("{proc}/stat"))
            .with_context(|| format!("reading {proc}/stat"))?;
        // Fields after the command name, which may hold spaces: state is field 3, utime 14.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| -> anyhow::Result<u64> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("field {} of {proc}/stat", i + 3))
        };
        Ok(Self {
            peak_rss_kib,
            cpu_secs: (ticks(11)? + ticks(12)?) as f64 * tick,
        })
    }

    /// Reads a running process by id; nothing (zeros) when there is none.
    pub fn of(pid: Option<u32>, tick: f64) -> anyhow::Result<Self> {
        match pid {
            Some(pid) => Self::read(&format!("/proc/{pid}"), tick),
            None => Ok(Self::default()),
        }
    }

    /// Two lives of one process: the higher peak, the sum of CPU.
    pub fn and(self, later: Self) -> Self {
        Self {
            peak_rss_kib: self.peak_rss_kib.max(later.peak_rss_kib),
            cpu_secs: self.cpu_secs + later.cpu_secs,
        }
    }

    pub fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
}

/// This process's usage over one scenario: the CPU it spent since [`start`](Self::start),
/// and its peak resident set since then (the kernel's high-water mark is reset at the start
/// through `/proc/self/clear_refs`; where that is refused, the peak is since the process
/// started).
pub struct ClientMeter {
    at_start: Usage,
}

impl ClientMeter {
    pub fn start(tick: f64) -> anyhow::Result<Self> {
        // "5" resets VmHWM to the current resident set (Linux ≥ 4.0).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        Ok(Self {
            at_start: Usage::read("/proc/self", tick)?,
        })
    }

    pub fn finish(&self, tick: f64) -> anyhow::Result<Usage> {
        let now = Usage::read("/proc/self", tick)?;
        Ok(Usage {
            peak_rss_kib: now.peak_rss_kib,
            cpu_secs: now.cpu_secs - self.at_start.cpu_secs,
        })
    }
}

/// Seconds per clock tick of /proc/PID/stat, from `getconf CLK_TCK` (100 on Linux if that
/// fails).
pub async fn clock_ticks() -> f64 {
    let hz = tokio::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .await
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse::<u32>().ok())
        .filter(|&hz| hz > 0)
        .unwrap_or(100);
    1.0 / f64::from(hz)
}

/// `write_bytes` of `/proc/<pid>/io` (`proc` is that directory): bytes this process sent, or
/// caused to be sent, to the storage layer over its life.
pub fn read_written(proc: &str) -> anyhow::Result<u64> {
    let io = std::fs::read_to_string(format!("{proc}/io"))
        .with_context(|| format!("reading {proc}/io"))?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no write_bytes in {proc}/io"))
}

/// [`read_written`] of a running process by id; 0 when there is none.
pub fn disk_written(pid: Option<u32>) -> anyhow::Result<u64> {
    match pid {
        Some(pid) => read_written(&format!("/proc/{pid}")),
        None => Ok(0),
    }
}

/// Total length of the files under `dir`.
pub fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Adds one figure per process and kind, in the row names every scenario shares:
/// `peak RSS <process>` (MiB), then `CPU <process>` (s).
pub fn report(report: &mut super::Report, usage: &[(&str, Usage)]) {
    for (name, u) in usage {
        report.add(format!("peak RSS {name}"), u.peak_rss_mib(), "MiB");
    }
    for (name, u) in usage {
        report.add(format!("CPU {name}"), u.cpu_secs, "s");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_this_process() {
        let u = Usage::read("/proc/self", 0.01).expect("reading /proc/self");
        assert!(u.peak_rss_kib > 0);
        assert!(Usage::of(None, 0.01).expect("nothing").peak_rss_kib == 0);
    }

    #[test]
    fn lives_combine_to_the_higher_peak_and_the_sum_of_cpu() {
        let a = Usage {
            peak_rss_kib: 10,
            cpu_secs: 1.5,
        };
        let b = Usage {
            peak_rss_kib: 7,
            cpu_secs: 2.0,
        };
        let both = a.and(b);
        assert_eq!(both.peak_rss_kib, 10);
        assert!((both.cpu_secs - 3.5).abs() < 1e-9);
    }

    #[test]
    fn client_meter_counts_from_its_start() {
        let meter = ClientMeter::start(0.01).expect("start");
        let u = meter.finish(0.01).expect("finish");
        assert!(u.cpu_secs >= 0.0 && u.peak_rss_kib > 0);
    }

    #[test]
    fn disk_written_counts_what_this_process_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let before = read_written("/proc/self").expect("reading /proc/self/io");
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 1 << 20]).expect("write");
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .expect("sync");
        let after = read_written("/proc/self").expect("reading /proc/self/io");
        assert!(after >= before + (1 << 20), "{before} → {after}");
        assert_eq!(disk_written(None).expect("nothing"), 0);
    }

    #[test]
    fn dir_size_sums_nested_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), [0u8; 100]).expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/b"), [0u8; 23]).expect("write");
        assert_eq!(dir_size(dir.path()).expect("size"), 123);
    }
}
