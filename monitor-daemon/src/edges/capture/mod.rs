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
