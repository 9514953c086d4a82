//! CPU time and memory of a process, from Linux' `/proc`.

use std::fs;

/// Clock ticks per second of `/proc/<pid>/stat` times. Linux fixes USER_HZ at 100 for
/// userspace on every architecture it supports.
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// User plus system CPU seconds since the process started.
    pub cpu_s: f64,
    /// Resident set size, KiB.
    pub rss_kb: u64,
    /// Peak resident set size (since start or the last reset), KiB.
    pub hwm_kb: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` if the process is gone.
#[must_use]
pub fn sample(pid: u32) -> Option<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Sample {
        cpu_s: parse_cpu(&stat)?,
        rss_kb: status_kb(&status, "VmRSS:").unwrap_or(0),
        hwm_kb: status_kb(&status, "VmHWM:").unwrap_or(0),
    })
}

/// CPU seconds of this process.
#[must_use]
pub fn self_cpu() -> f64 {
    fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_cpu(&s))
        .unwrap_or(0.0)
}

/// Resets the peak RSS (VmHWM) of `pid` to its current RSS; returns whether it worked
/// (it needs the right to write `/proc/<pid>/clear_refs`).
pub fn reset_peak(pid: u32) -> bool {
    fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in seconds. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted after the last `)`.
fn parse_cpu(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After `)`: field 3 (state) is the first; utime is field 14, i.e. the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line =
            "1234 (we ird) name)) S 1 1234 1234 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 8 0 \
                    100 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu(line), Some(3.25));
    }

    #[test]
    fn parses_status() {
        let s = "Name:\twarren\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kb(s, "VmRSS:"), Some(10240));
        assert_eq!(status_kb(s, "VmHWM:"), Some(20480));
        assert_eq!(status_kb(s, "VmSwap:"), None);
    }

    #[test]
    fn samples_itself() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kb > 0 && s.hwm_kb >= s.rss_kb);
        assert!(self_cpu() >= 0.0);
    }
}
