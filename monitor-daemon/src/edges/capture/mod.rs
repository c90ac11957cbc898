//! Capture sources: pcap/pcapng files read offline, and the kernel probe or libpcap read live.
//!
//! [`CaptureFile`] maps a file into memory and yields [`Frame`](crate::stages::decode::Frame)s
//! that borrow from the map, for the decode stage to turn into TCP segments; it does not allocate
//! per packet, and nothing here knows about TCP state or anything after it. [`live_pcap`] copies each live
//! frame once, to hand it across threads. [`tls`] finds the web server's libssl, attaches the
//! OpenSSL uprobes and turns their plaintext into segments of synthetic connections.

mod config;
mod file;
pub mod kernel;
pub(crate) mod live;
pub(crate) mod live_pcap;
pub mod records;
pub mod tls;

#[cfg(test)]
pub(crate) use config::TlsSwitch;
pub(crate) use config::{CaptureConfig, CaptureMode, TlsCapturePlan};
pub use file::{CaptureError, CaptureFile, Frames};

/// What to do when the systemd unit refuses a kind of socket a capture needs: the shipped unit
/// allows only what the eBPF probe (TCX) and the uprobes use, and the package ships a drop-in
/// for each wider need (`config/systemd-drop-ins/`). `EAFNOSUPPORT` from `socket()` is how
/// `RestrictAddressFamilies=` refuses; outside systemd a kernel without that family says the same.
pub(crate) fn drop_in_advice(drop_in: &str) -> String {
    format!(
        "under the systemd unit, its RestrictAddressFamilies= refuses them unless the package's \
         drop-in is installed: `install -D -m 0644 /usr/share/redcap-monitor/systemd-drop-ins/{drop_in} \
         /etc/systemd/system/redcap-monitor.service.d/{drop_in}`, then `systemctl daemon-reload && \
         systemctl restart redcap-monitor`"
    )
}
