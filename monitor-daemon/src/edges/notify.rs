//! Tells systemd how the live daemon is doing (`Type=notify`): `READY=1` once capture is running,
//! `WATCHDOG=1` from the live loop's heartbeat, a one-line `STATUS=`, `RELOADING=1` and `READY=1`
//! around a reload, `STOPPING=1` at shutdown.
//!
//! The sd_notify(3) protocol by hand: one datagram per message to the unix socket named by
//! `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). Without it every call does
//! nothing. Never blocks the loop: a message that cannot be sent is dropped and logged once.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

pub(crate) struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    /// How often to ping: half of `$WATCHDOG_USEC`, when the watchdog is on for this process.
    ping_every: Option<Duration>,
    last_ping: Option<Instant>,
    last_status: String,
    send_failed: bool,
}

impl Notifier {
    /// From this process's environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub(crate) fn from_env() -> Notifier {
        let var = |name| std::env::var(name).ok();
        Notifier::new(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    /// From explicit values, as systemd sets them; `pid` is this process's.
    pub(crate) fn new(
        notify_socket: Option<&OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Notifier {
        let socket = notify_socket.and_then(|name| match connect(name) {
            Ok(socket) => Some(socket),
            Err(err) => {
                tracing::warn!(
                    socket = %name.to_string_lossy(),
                    %err,
                    "NOTIFY_SOCKET is set but unusable: systemd will not hear that the daemon is ready"
                );
                None
            }
        });
        // The watchdog applies to us unless WATCHDOG_PID names another process.
        let for_us = watchdog_pid.is_none_or(|p| p.trim().parse() == Ok(pid));
        let ping_every = watchdog_usec
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_us && socket.is_some())
            .map(|usec| Duration::from_micros(usec / 2));
        Notifier {
            socket,
            ping_every,
            last_ping: None,
            last_status: String::new(),
            send_failed: false,
        }
    }

    /// Whether systemd listens (`$NOTIFY_SOCKET` was usable).
    #[cfg(test)]
    pub(crate) fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often [`heartbeat`](Self::heartbeat) pings, when the watchdog is on.
    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.ping_every
    }

    /// Startup (or a reload) is complete.
    pub(crate) fn ready(&mut self, status: &str) {
        self.last_status = one_line(status);
        let message = format!("READY=1\nSTATUS={}", self.last_status);
        self.send(&message);
    }

    /// A reload starts now; [`ready`](Self::ready) ends it.
    pub(crate) fn reloading(&mut self) {
        let message = format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec());
        self.send(&message);
    }

    pub(crate) fn stopping(&mut self) {
        self.send("STOPPING=1");
    }

    /// Shows `status` in `systemctl status` when it changed.
    pub(crate) fn status(&mut self, status: &str) {
        let status = one_line(status);
        if status != self.last_status {
            self.send(&format!("STATUS={status}"));
            self.last_status = status;
        }
    }

    /// The live loop made progress at `now`: pings the watchdog when half its time has passed.
    pub(crate) fn heartbeat(&mut self, now: Instant) {
        let Some(every) = self.ping_every else { return };
        if self.last_ping.is_some_and(|last| now < last + every) {
            return;
        }
        self.last_ping = Some(now);
        self.send("WATCHDOG=1");
    }

    fn send(&mut self, message: &str) {
        let Some((socket, address)) = &self.socket else {
            return;
        };
        if let Err(err) = socket.send_to_addr(message.as_bytes(), address)
            && !self.send_failed
        {
            self.send_failed = true;
            tracing::warn!(%err, "cannot notify systemd (further failures are not logged)");
        }
    }
}

fn connect(name: &OsStr) -> std::io::Result<(UnixDatagram, SocketAddr)> {
    let bytes = name.as_bytes();
    let address = match bytes.strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
        None => SocketAddr::from_pathname(name)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    Ok((socket, address))
}

/// `STATUS=` ends at a newline.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` wants it.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> (tempfile::TempDir, UnixDatagram, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();
        (dir, socket, path)
    }

    fn received(socket: &UnixDatagram) -> Vec<String> {
        let mut buf = [0u8; 4096];
        std::iter::from_fn(|| {
            let n = socket.recv(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).into_owned())
        })
        .collect()
    }

    #[test]
    fn messages_reach_the_socket_in_the_protocol_format() {
        let (_dir, socket, path) = listener();
        let mut notifier = Notifier::new(Some(path.as_os_str()), Some("2000000"), None, 1);
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(1)));
        notifier.ready("ebpf on eth0:\n0 calls");
        let start = Instant::now();
        notifier.heartbeat(start);
        notifier.heartbeat(start + Duration::from_millis(500));
        notifier.heartbeat(start + Duration::from_millis(1000));
        notifier.status("ebpf on eth0: 0 calls");
        notifier.status("ebpf on eth0: 1 calls");
        notifier.reloading();
        notifier.stopping();
        let messages = received(&socket);
        assert_eq!(messages[0], "READY=1\nSTATUS=ebpf on eth0: 0 calls");
        assert_eq!(messages[1..3], ["WATCHDOG=1", "WATCHDOG=1"]);
        assert_eq!(messages[3], "STATUS=ebpf on eth0: 1 calls");
        let reloading = &messages[4];
        let usec: u64 = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{reloading}"))
            .parse()
            .unwrap();
        assert!(usec > 0);
        assert_eq!(messages[5], "STOPPING=1");
        assert_eq!(messages.len(), 6);
    }

    #[test]
    fn the_watchdog_is_off_for_another_pid_or_without_a_socket() {
        let (_dir, _socket, path) = listener();
        let other = Notifier::new(Some(path.as_os_str()), Some("2000000"), Some("99"), 1);
        assert_eq!(other.watchdog_interval(), None);
        let ours = Notifier::new(Some(path.as_os_str()), Some("2000000"), Some("7"), 7);
        assert!(ours.watchdog_interval().is_some());
        let mut silent = Notifier::new(None, Some("2000000"), None, 1);
        assert!(!silent.enabled() && silent.watchdog_interval().is_none());
        silent.ready("nothing happens");
    }

    #[test]
    fn an_abstract_socket_name_is_understood() {
        let name = format!("redcap-monitor-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        socket.set_nonblocking(true).unwrap();
        let mut notifier = Notifier::new(Some(OsStr::new(&format!("@{name}"))), None, None, 1);
        notifier.ready("up");
        assert_eq!(received(&socket), ["READY=1\nSTATUS=up"]);
    }
}
