//! libpcap on live interfaces: the capture source when the eBPF probe cannot be used.
//!
//! One blocking capture thread per interface, with a kernel BPF filter on the server ports and
//! immediate mode, copies each frame into an owned buffer and sends it over a bounded channel.
//! It owns the libpcap handles and their threads; it does not decode or reassemble.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::shared::model::Timestamp;
use crate::stages::decode::{Frame, LinkType};

/// How long a capture thread waits for a packet before it looks at the stop flag again.
const READ_TIMEOUT_MS: i32 = 100;
/// How often a capture thread refreshes its libpcap counters.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// Kernel buffer per interface: room for bursts while the pipeline is busy.
const KERNEL_BUFFER_BYTES: i32 = 16 << 20;
/// Bytes kept of each frame, as tcpdump keeps by default: loopback frames and GRO/TSO frames on
/// real interfaces are larger than 65,535 bytes, and a cut frame is a hole in the stream.
pub(crate) const SNAPLEN: i32 = 262_144;

/// A captured frame that owns its bytes, so that it can cross from a capture thread.
pub(crate) struct OwnedFrame {
    pub(crate) ts: Timestamp,
    pub(crate) link: LinkType,
    pub(crate) data: Vec<u8>,
}

impl OwnedFrame {
    pub(crate) fn frame(&self) -> Frame<'_> {
        Frame {
            ts: self.ts,
            link: self.link,
            data: &self.data,
        }
    }
}

/// Why libpcap capture could not start; each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("no server ports configured: list the web server's ports (for example [80, 8080])")]
    NoServerPorts,
    #[error(
        "permission denied to capture on {interface}: run as root or grant CAP_NET_RAW \
         (e.g. `setcap cap_net_raw+ep <binary>`) ({message})"
    )]
    MissingPrivilege { interface: String, message: String },
    #[error(
        "libpcap cannot open a packet socket on {interface} ({message}): {advice}",
        advice = super::drop_in_advice("libpcap.conf")
    )]
    PacketSocketsRefused { interface: String, message: String },
    #[error("libpcap cannot capture on {interface}: {source}")]
    Open {
        interface: String,
        #[source]
        source: pcap::Error,
    },
    #[error("libpcap refused the filter `{filter}` on {interface}: {source}")]
    Filter {
        interface: String,
        filter: String,
        #[source]
        source: pcap::Error,
    },
    #[error("cannot start the capture thread for {interface}: {source}")]
    Thread {
        interface: String,
        #[source]
        source: std::io::Error,
    },
}

/// libpcap's own counters for one interface (since the capture started).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct InterfaceCounters {
    pub interface: String,
    /// Packets that passed the filter.
    pub(crate) received: u64,
    /// Packets dropped because the kernel buffer was full (the daemon fell behind).
    pub dropped: u64,
    /// Packets dropped by the interface or its driver.
    pub if_dropped: u64,
    /// Frames longer than [`SNAPLEN`], cut short: their tail is a gap in the stream.
    pub truncated: u64,
}

#[derive(Default)]
struct SharedCounters {
    received: AtomicU64,
    dropped: AtomicU64,
    if_dropped: AtomicU64,
    truncated: AtomicU64,
}

/// Running captures, one thread per interface. Dropping it stops and joins the threads: drain
/// or drop the frame receiver first, or a thread blocked on a full channel cannot finish.
pub(crate) struct LiveCapture {
    stop: Arc<AtomicBool>,
    /// Wakes a thread blocked in libpcap (the read timeout alone does not in immediate mode).
    wake: Vec<pcap::BreakLoop>,
    threads: Vec<JoinHandle<()>>,
    counters: Vec<(String, Arc<SharedCounters>)>,
}

/// The libpcap filter for `ports`: TCP to or from any of them.
pub(crate) fn port_filter(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(|p| format!("port {p}")).collect();
    format!("tcp and ({})", ports.join(" or "))
}

impl LiveCapture {
    /// Opens every interface (all or none), then starts their capture threads. Frames arrive on
    /// the returned receiver; it closes when every thread has stopped.
    pub(crate) fn open(
        interfaces: &[String],
        ports: &[u16],
        channel_frames: usize,
    ) -> Result<(LiveCapture, mpsc::Receiver<OwnedFrame>), PcapError> {
        if ports.is_empty() {
            return Err(PcapError::NoServerPorts);
        }
        let filter = port_filter(ports);
        let mut opened = Vec::new();
        for interface in interfaces {
            opened.push((interface.clone(), open_interface(interface, &filter)?));
        }
        let (tx, rx) = mpsc::channel(channel_frames.max(1));
        let mut capture = LiveCapture {
            stop: Arc::new(AtomicBool::new(false)),
            wake: Vec::new(),
            threads: Vec::new(),
            counters: Vec::new(),
        };
        for (interface, mut handle) in opened {
            capture.wake.push(handle.breakloop_handle());
            let counters = Arc::new(SharedCounters::default());
            capture
                .counters
                .push((interface.clone(), Arc::clone(&counters)));
            let stop = Arc::clone(&capture.stop);
            let tx = tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("pcap-{interface}"))
                .spawn(move || capture_loop(handle, &tx, &stop, &counters))
                .map_err(|source| PcapError::Thread { interface, source })?;
            capture.threads.push(thread);
        }
        Ok((capture, rx))
    }

    /// Asks the threads to stop; the receiver closes once they have.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for wake in &self.wake {
            wake.breakloop();
        }
    }

    pub(crate) fn counters(&self) -> Vec<InterfaceCounters> {
        self.counters
            .iter()
            .map(|(interface, c)| InterfaceCounters {
                interface: interface.clone(),
                received: c.received.load(Ordering::Relaxed),
                dropped: c.dropped.load(Ordering::Relaxed),
                if_dropped: c.if_dropped.load(Ordering::Relaxed),
                truncated: c.truncated.load(Ordering::Relaxed),
            })
            .collect()
    }
}

impl Drop for LiveCapture {
    fn drop(&mut self) {
        self.stop();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn open_interface(interface: &str, filter: &str) -> Result<pcap::Capture<pcap::Active>, PcapError> {
    let open_error = |source: pcap::Error| {
        let message = source.to_string();
        if message.contains("not permitted") || message.contains("ermission denied") {
            PcapError::MissingPrivilege {
                interface: interface.to_owned(),
                message,
            }
        } else if message.contains("Address family not supported") {
            // strerror(EAFNOSUPPORT), which libpcap puts in its message.
            PcapError::PacketSocketsRefused {
                interface: interface.to_owned(),
                message,
            }
        } else {
            PcapError::Open {
                interface: interface.to_owned(),
                source,
            }
        }
    };
    let mut capture = pcap::Capture::from_device(interface)
        .map_err(open_error)?
        .immediate_mode(true)
        .snaplen(SNAPLEN)
        .buffer_size(KERNEL_BUFFER_BYTES)
        .timeout(READ_TIMEOUT_MS)
        .precision(pcap::Precision::Nano)
        .open()
        .map_err(open_error)?;
    capture
        .filter(filter, true)
        .map_err(|source| PcapError::Filter {
            interface: interface.to_owned(),
            filter: filter.to_owned(),
            source,
        })?;
    Ok(capture)
}

fn capture_loop(
    mut capture: pcap::Capture<pcap::Active>,
    tx: &mpsc::Sender<OwnedFrame>,
    stop: &AtomicBool,
    counters: &SharedCounters,
) {
    let link = LinkType(u16::try_from(capture.get_datalink().0).unwrap_or(u16::MAX));
    let mut last_stats = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match capture.next_packet() {
            Ok(packet) => {
                if packet.header.caplen < packet.header.len {
                    counters.truncated.fetch_add(1, Ordering::Relaxed);
                }
                let frame = OwnedFrame {
                    ts: timestamp(&packet.header.ts),
                    link,
                    data: packet.data.to_vec(),
                };
                // The receiver is gone: the daemon is shutting down.
                if tx.blocking_send(frame).is_err() {
                    break;
                }
            }
            Err(pcap::Error::TimeoutExpired) => {}
            // pcap_breakloop's answer: the stop flag ends the loop.
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(err) => {
                tracing::error!(error = %err, "libpcap capture stopped");
                break;
            }
        }
        if last_stats.elapsed() >= STATS_EVERY {
            last_stats = Instant::now();
            publish_stats(&mut capture, counters);
        }
    }
    publish_stats(&mut capture, counters);
}

fn publish_stats(capture: &mut pcap::Capture<pcap::Active>, counters: &SharedCounters) {
    if let Ok(stat) = capture.stats() {
        counters
            .received
            .store(u64::from(stat.received), Ordering::Relaxed);
        counters
            .dropped
            .store(u64::from(stat.dropped), Ordering::Relaxed);
        counters
            .if_dropped
            .store(u64::from(stat.if_dropped), Ordering::Relaxed);
    }
}

/// A nanosecond-precision libpcap timestamp (the `tv_usec` field holds nanoseconds).
fn timestamp(ts: &libc::timeval) -> Timestamp {
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_usec).unwrap_or(0);
    Timestamp(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_names_every_port() {
        assert_eq!(port_filter(&[80]), "tcp and (port 80)");
        assert_eq!(port_filter(&[80, 8080]), "tcp and (port 80 or port 8080)");
    }

    #[test]
    fn no_ports_is_refused_before_opening_anything() {
        let err = LiveCapture::open(&["lo".into()], &[], 16)
            .err()
            .expect("refused");
        assert!(matches!(err, PcapError::NoServerPorts), "{err}");
    }

    #[test]
    fn nanosecond_timestamps_convert_exactly() {
        let ts = libc::timeval {
            tv_sec: 1_700_000_000,
            tv_usec: 123_456_789,
        };
        assert_eq!(timestamp(&ts), Timestamp(1_700_000_000_123_456_789));
    }
}
