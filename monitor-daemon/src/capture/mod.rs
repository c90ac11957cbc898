//! Capture sources: pcap/pcapng files read offline, and the kernel probe or libpcap read live.
//!
//! [`CaptureFile`] maps a file into memory and yields [`Frame`]s that borrow from the map;
//! [`decode`] turns a frame into a [`TcpSegment`](crate::model::TcpSegment) borrowing the same
//! bytes, counting every frame it cannot use in [`DecodeStats`]. Neither allocates per packet,
//! and nothing here knows about TCP state or anything after it. [`live_pcap`] copies each live
//! frame once, to hand it across threads. [`tls`] finds the web server's libssl, attaches the
//! OpenSSL uprobes and turns their plaintext into segments of synthetic connections.

mod decode;
mod file;
pub mod kernel;
pub mod live_pcap;
pub mod tls;

pub use decode::{DecodeStats, decode};
pub use file::{CaptureError, CaptureFile, Frame, Frames, LinkType};
