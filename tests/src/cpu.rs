//! CPU time for the benches that report cost per call: of the calling thread, and of every
//! process with a given name (a web server run from a uniquely named binary copy).

use std::time::Duration;

/// This thread's CPU time so far (user + system).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time (user + system) used so far by the processes named `name` (`/proc/PID/comm`),
/// including their children that have exited and been reaped: Apache's prefork master retires
/// idle children, whose time then moves into the master's `cutime`/`cstime`. A child that has
/// exited but is not reaped yet is missing for that moment. Clock-tick resolution (10 ms).
pub fn processes_cpu_time(name: &str) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut ticks = 0u64;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`: the name may hold spaces, so split at the last `)`.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if head.split_once(" (").is_none_or(|(_, comm)| comm != name) {
            continue;
        }
        // After `state`: utime, stime, cutime and cstime are the 12th to 15th fields.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for field in fields.get(11..15).unwrap_or_default() {
            ticks += field.parse::<u64>().unwrap_or(0);
        }
    }
    Duration::from_micros(ticks * 1_000_000 / ticks_per_s)
}
