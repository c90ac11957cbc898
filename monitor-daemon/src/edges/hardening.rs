//! Process hardening that `run` applies to itself: no core dumps and no ptrace by other
//! processes of the same user, since its memory holds the site key and request bodies with
//! tokens; and capabilities the capture no longer needs once it is attached, dropped from every
//! thread. The unit's sandbox is the service's business.

use std::io;

/// Makes the process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): no core file is written, its
/// `/proc/<pid>` files belong to root, and processes of its user cannot ptrace it or read its
/// memory. `execve` sets it back for the new program: hooks the daemon starts are dumpable
/// again (their memory is their own).
pub(crate) fn forbid_core_dumps() -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes one integer argument; no memory is passed.
    let status = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The capabilities the capture can use: `CAP_NET_ADMIN` (12: TC attach), `CAP_NET_RAW` (13:
/// packet sockets), `CAP_SYS_ADMIN` (21: uprobes), `CAP_PERFMON` (38), `CAP_BPF` (39).
pub(crate) const CAPTURE_CAPABILITIES: [(u32, &str); 5] = [
    (12, "CAP_NET_ADMIN"),
    (13, "CAP_NET_RAW"),
    (21, "CAP_SYS_ADMIN"),
    (38, "CAP_PERFMON"),
    (39, "CAP_BPF"),
];

/// What [`drop_capabilities`] did.
#[derive(Debug, Default)]
pub(crate) struct Dropped {
    /// Threads of the process whose sets were changed (the caller's included).
    pub(crate) threads: usize,
    /// Threads that still hold a dropped capability after the last try (none expected).
    pub(crate) still_holding: usize,
    /// Whether the bounding set could be narrowed too (needs `CAP_SETPCAP`, which the unit does
    /// not grant: there, with `NoNewPrivileges=` and the permitted sets emptied, nothing can
    /// bring a dropped capability back).
    pub(crate) bounding: bool,
}

/// The capabilities to drop, for the signal handler (a bit per capability).
static DROP_MASK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static DROPS_DONE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops the capabilities in `mask` from the calling thread's effective, permitted and
/// inheritable sets (and its bounding set when it may), and clears its ambient set. Only raw
/// syscalls: it runs in a signal handler.
fn drop_in_this_thread(mask: u64) -> bool {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes two data words, as version 3 requires; the header is valid.
    if unsafe { libc::syscall(libc::SYS_capget, &header, data.as_mut_ptr()) } != 0 {
        return false;
    }
    // CAP_SETPCAP (8) allows narrowing the bounding set.
    let setpcap = data[0].effective & (1 << 8) != 0;
    let mut bounding = setpcap;
    for cap in 0..64u32 {
        if mask & (1 << cap) != 0 && setpcap {
            // SAFETY: prctl with integer arguments only.
            bounding &=
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } == 0
                    || std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL);
        }
    }
    // SAFETY: prctl with integer arguments only. EINVAL: no ambient set (before 4.3).
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    for (i, word) in data.iter_mut().enumerate() {
        let keep = !((mask >> (32 * i)) as u32);
        word.effective &= keep;
        word.permitted &= keep;
        word.inheritable &= keep;
    }
    // SAFETY: capset reads a valid header and two data words, as version 3 requires.
    let set = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } == 0;
    set && (bounding || !setpcap)
}

extern "C" fn drop_on_signal(_: libc::c_int) {
    let mask = DROP_MASK.load(std::sync::atomic::Ordering::SeqCst);
    if drop_in_this_thread(mask) {
        DROPS_DONE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The process's threads, by id.
fn threads() -> Vec<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether thread `tid` still holds any capability of `mask` (effective, permitted or ambient).
fn holds(tid: i32, mask: u64) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")) else {
        return false; // gone
    };
    ["CapEff:", "CapPrm:", "CapAmb:"].iter().any(|field| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .is_some_and(|held| held & mask != 0)
    })
}

/// Drops the capabilities of `mask` (bit N: capability N) from every thread of the process:
/// capabilities belong to threads, and the daemon's threads (the API, alert delivery, the token
/// directory, capture threads) exist by the time the capture is attached. The calling thread
/// drops its own; every other thread is sent a real-time signal whose handler drops them in
/// that thread (the way the C library's `setuid` reaches every thread), and each thread's
/// `/proc/self/task/TID/status` is read back until none holds them (threads started meanwhile
/// inherit the sets of the thread that started them, so a second pass catches them).
pub(crate) fn drop_capabilities(mask: u64) -> io::Result<Dropped> {
    let signal = libc::SIGRTMIN() + 5;
    DROP_MASK.store(mask, std::sync::atomic::Ordering::SeqCst);
    // SAFETY: installs a handler that makes only raw syscalls and atomic updates.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = drop_on_signal as extern "C" fn(libc::c_int) as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let own = unsafe { libc::gettid() };
    let bounding = drop_in_this_thread(mask);
    let pid = std::process::id() as i32;
    let mut dropped = Dropped {
        bounding,
        ..Dropped::default()
    };
    for _ in 0..5 {
        let holding: Vec<i32> = threads()
            .into_iter()
            .filter(|&tid| holds(tid, mask))
            .collect();
        dropped.still_holding = holding.len();
        if holding.is_empty() {
            break;
        }
        for &tid in &holding {
            if tid == own {
                drop_in_this_thread(mask);
                continue;
            }
            // SAFETY: signals one thread of this process; ESRCH (it ended) is harmless.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) };
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
        while std::time::Instant::now() < deadline && holding.iter().any(|&t| holds(t, mask)) {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    dropped.threads = threads().len();
    Ok(dropped)
}
