//! Linux measurement helpers read from `/proc`: per-thread and per-process CPU time, a process's
//! resident set size (now and peak), and a one-line description of the machine. No `unsafe`, no
//! extra dependencies.

/// Clock ticks per second of the `utime`/`stime` fields of `/proc/<pid>/stat`: `USER_HZ`,
/// which Linux fixes at 100 for user space on every architecture we run on.
const USER_HZ: u64 = 100;

/// CPU time this thread has used so far, in nanoseconds (`/proc/thread-self/schedstat`), or
/// `None` where that file does not exist. The kernel updates it at least once per tick, so time
/// spans of a few hundred milliseconds or more are needed for a precise difference.
pub fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time (user + system, every thread, including exited ones) process `pid` has used so
/// far, in nanoseconds, from `/proc/<pid>/stat`. Its resolution is one clock tick (10 ms), so
/// only differences over many requests mean anything.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * (1_000_000_000 / USER_HZ))
}

/// Resident set size (`VmRSS`) of process `pid`, in bytes.
pub fn vm_rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:").map(|kib| kib * 1024)
}

/// Peak resident set size (`VmHWM`) of process `pid`, in bytes: since it started, or since the
/// last [`reset_peak_rss`].
pub fn vm_hwm_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

/// Resets `VmHWM` of process `pid` to its current RSS (`echo 5 > /proc/<pid>/clear_refs`, Linux
/// 4.0+, own processes only); false if the kernel refused.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.trim_start_matches(field)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// [`vm_rss_bytes`] of a child that must be running.
///
/// # Panics
/// If `/proc/<pid>/status` cannot be read (the process is gone).
pub fn rss(pid: u32) -> u64 {
    vm_rss_bytes(pid).unwrap_or_else(|| panic!("cannot read /proc/{pid}/status"))
}

/// `"<n> CPU(s), <model name>"` for the header of a bench's output.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpus} CPU(s), {cpu}")
}

/// CPU time of a fixed set of processes, read together so that differences line up.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    procs: Vec<(&'static str, u32)>,
}

/// One reading of a [`CpuMeter`].
#[derive(Debug, Clone)]
pub struct CpuSnapshot(Vec<u64>);

impl CpuSnapshot {
    /// Adds the CPU time between two readings to this one, process by process: starting from
    /// [`CpuMeter::zero`], the pair (zero, sum) covers several windows as if they were one.
    pub fn add_delta(&mut self, before: &CpuSnapshot, after: &CpuSnapshot) {
        for (sum, (b, a)) in self.0.iter_mut().zip(before.0.iter().zip(&after.0)) {
            *sum += a.saturating_sub(*b);
        }
    }
}

impl CpuMeter {
    /// Meters `procs` (name, pid); `std::process::id()` meters this process.
    pub fn new(procs: Vec<(&'static str, u32)>) -> Self {
        Self { procs }
    }

    /// Reads every process now (0 for a process that is gone).
    pub fn snapshot(&self) -> CpuSnapshot {
        CpuSnapshot(
            self.procs
                .iter()
                .map(|(_, pid)| process_cpu_ns(*pid).unwrap_or(0))
                .collect(),
        )
    }

    /// A reading of no CPU time at all, to sum windows into with [`CpuSnapshot::add_delta`].
    pub fn zero(&self) -> CpuSnapshot {
        CpuSnapshot(vec![0; self.procs.len()])
    }

    /// `name µs` per operation for each process between two readings, e.g.
    /// `gateway 41.0, relay 12.3`.
    pub fn per_op_us(&self, before: &CpuSnapshot, after: &CpuSnapshot, ops: u64) -> String {
        let ops = ops.max(1) as f64;
        self.procs
            .iter()
            .zip(before.0.iter().zip(&after.0))
            .map(|((name, _), (b, a))| {
                format!("{name} {:.1}", a.saturating_sub(*b) as f64 / 1e3 / ops)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// (name, CPU µs per operation) for each process between two readings.
    pub fn per_op_us_by_process(
        &self,
        before: &CpuSnapshot,
        after: &CpuSnapshot,
        ops: u64,
    ) -> Vec<(&'static str, f64)> {
        let ops = ops.max(1) as f64;
        self.procs
            .iter()
            .zip(before.0.iter().zip(&after.0))
            .map(|((name, _), (b, a))| (*name, a.saturating_sub(*b) as f64 / 1e3 / ops))
            .collect()
    }

    /// CPU microseconds per operation, all metered processes together.
    pub fn total_per_op_us(&self, before: &CpuSnapshot, after: &CpuSnapshot, ops: u64) -> f64 {
        self.total_ns(before, after) as f64 / 1e3 / ops.max(1) as f64
    }

    /// CPU nanoseconds all metered processes used between two readings.
    pub fn total_ns(&self, before: &CpuSnapshot, after: &CpuSnapshot) -> u64 {
        before
            .0
            .iter()
            .zip(&after.0)
            .map(|(b, a)| a.saturating_sub(*b))
            .sum()
    }

    /// CPU nanoseconds process `name` used between two readings.
    pub fn delta_ns(&self, name: &str, before: &CpuSnapshot, after: &CpuSnapshot) -> Option<u64> {
        let i = self.procs.iter().position(|(n, _)| *n == name)?;
        Some(after.0[i].saturating_sub(before.0[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_rss() {
        assert!(vm_rss_bytes(std::process::id()).unwrap_or(0) > 0);
    }

    #[test]
    fn reads_own_peak_rss() {
        let pid = std::process::id();
        assert!(vm_hwm_bytes(pid).unwrap_or(0) >= vm_rss_bytes(pid).unwrap_or(u64::MAX) / 2);
    }

    #[test]
    fn pools_windows() {
        let meter = CpuMeter::new(vec![("a", 1), ("b", 2)]);
        let mut sum = meter.zero();
        sum.add_delta(&CpuSnapshot(vec![10, 5]), &CpuSnapshot(vec![30, 6]));
        sum.add_delta(&CpuSnapshot(vec![40, 6]), &CpuSnapshot(vec![45, 16]));
        assert_eq!(meter.delta_ns("a", &meter.zero(), &sum), Some(25));
        assert_eq!(meter.total_ns(&meter.zero(), &sum), 36);
    }

    #[test]
    fn reads_own_cpu_time() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        assert!(process_cpu_ns(std::process::id()).unwrap_or(0) > 0);
    }
}
