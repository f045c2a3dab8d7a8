//! CPU time and memory of a process, from Linux's /proc.

use std::io;
use std::sync::OnceLock;
use std::time::Duration;

/// Which process to read: a pid, or this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proc {
    Pid(u32),
    Myself,
}

impl Proc {
    fn dir(self) -> String {
        match self {
            Proc::Pid(pid) => format!("/proc/{pid}"),
            Proc::Myself => "/proc/self".to_owned(),
        }
    }
}

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    /// User plus system time of all its threads (utime + stime).
    pub(crate) cpu: Duration,
    /// Resident set size now (VmRSS), KiB.
    pub(crate) rss_kib: u64,
    /// Peak resident set size since start (VmHWM), KiB.
    pub(crate) hwm_kib: u64,
    /// Threads.
    pub(crate) threads: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub(crate) fn sample(proc: Proc) -> io::Result<Sample> {
    let dir = proc.dir();
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    let cpu = parse_stat_cpu(&stat).ok_or_else(|| invalid(format!("{dir}/stat: no utime/stime")))?;
    let field = |key: &str| status_field(&status, key).ok_or_else(|| invalid(format!("{dir}/status: no {key}")));
    Ok(Sample { cpu, rss_kib: field("VmRSS:")?, hwm_kib: field("VmHWM:")?, threads: field("Threads:")? })
}

/// The process's command name (`comm`, at most 15 bytes).
pub(crate) fn command_name(pid: u32) -> io::Result<String> {
    Ok(std::fs::read_to_string(format!("/proc/{pid}/comm"))?.trim_end().to_owned())
}

/// CPU time of this process's threads whose name (`comm`) is `name`.
pub(crate) fn threads_cpu(name: &str) -> io::Result<Duration> {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir("/proc/self/task")? {
        let path = task?.path();
        // Threads may exit between the listing and the reads.
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else { continue };
        if comm.trim_end() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else { continue };
        total += parse_stat_cpu(&stat).unwrap_or_default();
    }
    Ok(total)
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// CPU seconds over a window as a percentage of one core.
pub(crate) fn percent(cpu: Duration, wall: Duration) -> f64 {
    if wall.is_zero() {
        return 0.0;
    }
    cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Clock ticks per second of the utime/stime fields (`getconf CLK_TCK`,
/// 100 on every common Linux).
fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// utime + stime from a `stat` line. The command name (field 2) may contain
/// spaces and parentheses, so fields are counted after its last `)`:
/// state is field 3, utime field 14, stime field 15.
fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = clock_ticks();
    let total = utime + stime;
    Some(Duration::from_secs(total / ticks) + Duration::from_nanos((total % ticks) * 1_000_000_000 / ticks))
}

/// A `Key:   123 kB` (or plain number) line of `status`.
fn status_field(status: &str, key: &str) -> Option<u64> {
    let rest = status.lines().find_map(|line| line.strip_prefix(key))?;
    rest.trim().trim_end_matches("kB").trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_command_name() {
        let ticks = clock_ticks();
        let stat =
            format!("42 (my (odd) name) S 1 42 42 0 -1 4194304 100 0 0 0 {} {} 0 0 20 0 3 0", ticks * 2, ticks / 2);
        assert_eq!(parse_stat_cpu(&stat), Some(Duration::from_millis(2_500)));
        assert_eq!(parse_stat_cpu("42 (x) S 1"), None);
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tx\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\nThreads:\t5\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(1024));
        assert_eq!(status_field(status, "VmHWM:"), Some(2048));
        assert_eq!(status_field(status, "Threads:"), Some(5));
        assert_eq!(status_field(status, "VmSwap:"), None);
    }

    #[test]
    fn reads_this_process() {
        let s = sample(Proc::Myself).unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib && s.threads >= 1, "{s:?}");
        assert!(loadavg().is_some());
        assert!(threads_cpu("no-such-thread").unwrap().is_zero());
        assert!(!command_name(std::process::id()).unwrap().is_empty());
    }
}
