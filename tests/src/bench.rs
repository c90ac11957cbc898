//! What the bench binaries share: stopping cleanly on Ctrl-C between runs, finding a program, a
//! mean (the live benches), and a TCP segment built for a pipeline (those that drive one).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGINT/SIGTERM once [`install_interrupt_handler`] ran.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C also reaches the load generator and the web server (same process group), which end
/// their run; the bench only notes it, so that it stops between runs ([`interrupted`]) and its
/// guards stop the server and remove the namespaces.
pub fn install_interrupt_handler() {
    let handler = on_interrupt as extern "C" fn(libc::c_int);
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}

/// Whether SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// `program`'s path on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The mean of `values` (NaN when there are none).
pub fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0u32), |(sum, n), v| (sum + v, n + 1));
    sum / f64::from(n)
}

/// A segment from `src` to `dst` for `Pipeline::push_segment`: a SYN when `syn`, acknowledging
/// `ack` when given.
pub fn segment<'a>(
    ts: redcap_monitor::shared::model::Timestamp,
    (src, dst): (
        redcap_monitor::shared::model::Endpoint,
        redcap_monitor::shared::model::Endpoint,
    ),
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    payload: &'a [u8],
) -> redcap_monitor::shared::model::TcpSegment<'a> {
    use redcap_monitor::shared::model::{TcpFlags, TcpSegment};
    TcpSegment {
        ts,
        src,
        dst,
        seq,
        ack,
        flags: TcpFlags {
            syn,
            ack: ack.is_some(),
            ..TcpFlags::default()
        },
        payload,
        stream_start: None,
    }
}
