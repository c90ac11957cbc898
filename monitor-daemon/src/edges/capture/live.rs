//! The live capture as `run` uses it: [`LiveSource`] is assembled from `[capture]` (the eBPF
//! probe with or without the OpenSSL uprobes, or libpcap, with the fallbacks `"auto"` allows,
//! each said in the log), waits for packets, drains them into the pipeline in batches, hands
//! connections back to the kernel when the pipeline asks, rescans for new libssl files, reports
//! its loss counters and what the coverage judgement needs, and stops (feeding what was
//! captured before the stop). The event loop stays in `run`.

use std::io;
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::kernel::{DrainStats, KernelCounters, KernelProbe, ProbeConfig, ProbeError};
use super::live_pcap::{InterfaceCounters, LiveCapture, OwnedFrame, PcapError};
use super::records::is_synthetic;
use super::tls::{TlsCapture, TlsError, resolve_users};
use super::{CaptureConfig, CaptureMode, TlsCapturePlan};
use crate::stages::coverage::{CoverageSample, TlsCoverage};
use crate::stages::pipeline::{CaptureRequest, Pipeline};
use crate::stages::policy::Verdict;

/// How often the kernel's ring is read while the last read found events.
const KERNEL_DRAIN_INTERVAL: Duration = Duration::from_millis(1);
/// How often it is read while the last read found none (an idle daemon's wakeups).
const KERNEL_IDLE_DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// Frames libpcap's threads may hold for the loop.
const PCAP_CHANNEL_FRAMES: usize = 8192;
/// Most frames fed per drain, so that one busy interface cannot starve the loop's timers.
const PCAP_BATCH: usize = 1024;
/// At stop, how long the last drain may take: the probe is still attached, and a flood must not
/// keep the daemon from stopping.
const STOP_DRAIN_TIME: Duration = Duration::from_secs(1);

/// How much one drain may feed before the loop gets its turn (ticks, commits, the watchdog).
#[derive(Clone, Copy, Debug)]
struct DrainBudget {
    records: usize,
    time: Duration,
}

impl DrainBudget {
    /// A clock check for the kernel's drain: true while time is left.
    fn time_left(self) -> impl FnMut() -> bool {
        let started = std::time::Instant::now();
        move || started.elapsed() < self.time
    }
}

/// Why the live capture could not start; each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum LiveSourceError {
    #[error("eBPF capture: {0}")]
    Probe(#[from] ProbeError),
    #[error("TLS capture: {0}")]
    Tls(#[from] TlsError),
    #[error(
        "TLS capture needs the eBPF probe, which cannot be used here ({0}); \
         without it HTTPS is not seen (capture.tls.enabled = \"auto\" falls back to libpcap, \
         HTTP only)"
    )]
    TlsWithoutProbe(Box<LiveSourceError>),
    #[error("libpcap capture: {0}")]
    Pcap(#[from] PcapError),
    #[error(
        "mode \"auto\": the eBPF probe cannot be used ({probe}), and libpcap, the fallback, \
         cannot either ({pcap}); fix either"
    )]
    NeitherProbeNorPcap {
        probe: Box<LiveSourceError>,
        pcap: Box<LiveSourceError>,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

/// What a wait found.
pub(crate) enum Ready {
    /// Time to read the kernel's ring.
    Kernel,
    /// A libpcap frame; `None` when every capture thread has stopped.
    Frame(Option<OwnedFrame>),
}

/// The capture's own counters, for the metrics.
pub(crate) enum CaptureCounters {
    Kernel {
        /// Or why they could not be read.
        counters: Result<Box<KernelCounters>, String>,
        drain: DrainStats,
    },
    Pcap(Vec<InterfaceCounters>),
}

/// The live capture: where packets come from, and the uprobes' library tracker when HTTPS is
/// captured too.
pub(crate) struct LiveSource {
    source: Source,
    tls: Option<TlsCapture>,
    budget: DrainBudget,
}

impl LiveSource {
    /// Opens what `[capture]` asks for; `tls_idle` is how long an idle TLS connection is kept
    /// (the reassembly's idle timeout). The "capturing with" line is logged once everything is
    /// attached.
    pub(crate) fn open(
        capture: &CaptureConfig,
        tls_idle: Duration,
    ) -> Result<LiveSource, LiveSourceError> {
        let (source, tls) = open_source(capture, tls_idle)?;
        let budget = DrainBudget {
            records: capture.max_drain_records.max(1),
            time: Duration::from_nanos(capture.max_drain_time.span().0),
        };
        Ok(LiveSource {
            source,
            tls,
            budget,
        })
    }

    /// `"ebpf"` or `"pcap"`.
    pub(crate) fn mode(&self) -> &'static str {
        self.source.mode()
    }

    /// Whether the kernel probe copies connections on the pipeline's judgement (then the
    /// pipeline's capture requests are carried out here).
    pub(crate) fn takes_capture_requests(&self) -> bool {
        matches!(self.source, Source::Kernel(_))
    }

    /// The capabilities (bit N: capability N) the capture still needs once it is attached:
    /// those that attach uprobes to a libssl found later (`CAP_SYS_ADMIN`, `CAP_PERFMON`,
    /// `CAP_BPF`), when HTTPS is captured; `CAP_BPF` with the probe in any case: the maps are
    /// read and changed through the `bpf` syscall, which kernels before 6.5 refuse altogether
    /// without it when `kernel.unprivileged_bpf_disabled` is set (Debian's default);
    /// `CAP_NET_ADMIN` when netlink filters were attached (removing them at exit needs it).
    /// Nothing else: the ring is read through its mapping, TCX links and uprobes go away with
    /// their file descriptors, libpcap's sockets are open, and a reload never re-attaches
    /// (`capture.*` needs a restart).
    pub(crate) fn capabilities_needed(&self) -> u64 {
        let mut needed = 0u64;
        if self.tls.is_some() {
            needed |= (1 << 21) | (1 << 38) | (1 << 39);
        }
        if let Source::Kernel(probe) = &self.source {
            needed |= 1 << 39;
            if probe.get_ref().uses_netlink() {
                needed |= 1 << 12;
            }
        }
        needed
    }

    /// Whether HTTPS is captured (the uprobes are attached).
    pub(crate) fn captures_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The libssl files the uprobes are attached to.
    pub(crate) fn tls_libraries(&self) -> Vec<String> {
        self.tls.as_ref().map_or_else(Vec::new, |tls| {
            tls.libraries().map(|l| l.display().to_string()).collect()
        })
    }

    /// Waits until there is something to read. `busy`: the last read found events.
    pub(crate) async fn wait(&mut self, busy: bool) -> Ready {
        self.source.wait(busy).await
    }

    /// Feeds what is ready now, without waiting, up to `capture.max_drain_records` or
    /// `max_drain_time`; returns how many kernel records it read.
    pub(crate) fn drain(
        &mut self,
        pipeline: &mut Pipeline,
        out: &mut impl FnMut(Verdict),
    ) -> usize {
        self.source.drain(self.budget, pipeline, out)
    }

    /// Looks for configured processes that use a libssl not covered yet.
    pub(crate) fn rescan_tls(&mut self) {
        if let (Some(tls), Source::Kernel(probe)) = (&mut self.tls, &mut self.source) {
            tls.refresh(probe.get_mut());
        }
    }

    /// Stops reading and feeds what was captured before the stop.
    pub(crate) async fn stop(&mut self, pipeline: &mut Pipeline, out: &mut impl FnMut(Verdict)) {
        self.source.stop(pipeline, out).await;
    }

    /// Whether HTTPS capture is on, for the coverage judgement.
    pub(crate) fn tls_coverage(&self) -> TlsCoverage {
        tls_coverage(self.tls.as_ref())
    }

    /// The counters the coverage judgement reads.
    pub(crate) fn coverage_sample(&self, pipeline: &Pipeline) -> CoverageSample {
        coverage_sample(&self.source, pipeline)
    }

    /// The capture's loss counters, summed, and by name.
    pub(crate) fn loss(&self) -> (u64, serde_json::Value) {
        match self.counters() {
            CaptureCounters::Kernel {
                counters: Ok(k), ..
            } => {
                let losses = k.losses();
                (
                    losses.iter().map(|(_, n)| n).sum(),
                    losses
                        .iter()
                        .map(|(name, n)| (format!("kernel.{name}"), serde_json::Value::from(*n)))
                        .collect::<serde_json::Map<_, _>>()
                        .into(),
                )
            }
            CaptureCounters::Kernel {
                counters: Err(_), ..
            } => (0, serde_json::Value::Null),
            CaptureCounters::Pcap(interfaces) => {
                let mut total = 0;
                let mut detail = serde_json::Map::new();
                for c in interfaces {
                    total += c.dropped + c.if_dropped + c.truncated;
                    for (name, n) in [
                        ("dropped", c.dropped),
                        ("if_dropped", c.if_dropped),
                        ("truncated", c.truncated),
                    ] {
                        detail.insert(format!("pcap.{}.{name}", c.interface), n.into());
                    }
                }
                (total, detail.into())
            }
        }
    }

    /// The capture's own counters, read once: the stats file, the loss check and the metrics
    /// all take them from here.
    pub(crate) fn counters(&self) -> CaptureCounters {
        match &self.source {
            Source::Kernel(probe) => {
                let probe = probe.get_ref();
                CaptureCounters::Kernel {
                    counters: probe.counters().map(Box::new).map_err(|e| e.to_string()),
                    drain: probe.drain_stats(),
                }
            }
            Source::Pcap { capture, .. } => CaptureCounters::Pcap(capture.counters()),
        }
    }
}

/// Where packets come from.
enum Source {
    Kernel(Box<AsyncFd<KernelProbe>>),
    Pcap {
        capture: LiveCapture,
        frames: mpsc::Receiver<OwnedFrame>,
    },
}

/// The capture source and, when HTTPS is captured too, the uprobes' library tracker. The
/// "capturing with" line is logged once everything is attached.
fn open_source(
    capture: &CaptureConfig,
    tls_idle: Duration,
) -> Result<(Source, Option<TlsCapture>), LiveSourceError> {
    match capture.tls_plan() {
        TlsCapturePlan::Off => Ok((open_source_without_tls(capture, tls_idle)?, None)),
        TlsCapturePlan::IfPossible => open_source_https_if_possible(capture, tls_idle),
        TlsCapturePlan::Required => {
            let tc = capture.mode != CaptureMode::Tls;
            // No libpcap fallback: HTTPS was asked for, and libpcap would lose every call.
            let (source, tls) =
                open_probe(capture, tls_idle, tc).map_err(|err| match (tc, err) {
                    (true, err) => LiveSourceError::TlsWithoutProbe(Box::new(err)),
                    (false, err) => err,
                })?;
            let libraries: Vec<_> = tls.libraries().collect();
            if tc {
                tracing::info!(mode = "ebpf+tls", interfaces = ?capture.interfaces, processes = ?capture.tls.processes, ?libraries, "capturing with the eBPF probe and the OpenSSL uprobes");
            } else {
                tracing::info!(mode = "tls", processes = ?capture.tls.processes, ?libraries, "capturing with the OpenSSL uprobes only (configured)");
            }
            Ok((source, Some(tls)))
        }
    }
}

/// `capture.tls.enabled = "auto"` beside mode `"auto"` or `"ebpf"`: the TC probe and the
/// OpenSSL uprobes. Uprobes that cannot be used leave the TC probe alone; in mode `"auto"`, a
/// probe that cannot be loaded leaves libpcap, HTTP only. Either is a warning that says HTTPS
/// is not seen and why.
fn open_source_https_if_possible(
    capture: &CaptureConfig,
    tls_idle: Duration,
) -> Result<(Source, Option<TlsCapture>), LiveSourceError> {
    let mut probe = match load_probe(capture, tls_idle, true) {
        Ok(probe) => probe,
        Err(reason) if capture.mode == CaptureMode::Auto => {
            let (source, reason) = fall_back_to_pcap(capture, tls_idle, reason)?;
            tracing::warn!(mode = "pcap", interfaces = ?capture.interfaces, %reason, "capturing with libpcap (auto: the eBPF probe is unavailable); HTTPS is NOT seen: the OpenSSL uprobes need what the probe needs (CAP_BPF, CAP_PERFMON, a kernel with BPF ring buffers) and CAP_SYS_ADMIN");
            return Ok((source, None));
        }
        Err(err) => return Err(err),
    };
    let tls_config = &capture.tls;
    let mut tls = TlsCapture::new(tls_config.processes.clone(), tls_config.libraries.clone());
    match tls.start(&mut probe) {
        Ok(()) => {
            let source = register(probe)?;
            let libraries: Vec<_> = tls.libraries().collect();
            tracing::info!(mode = "ebpf+tls", interfaces = ?capture.interfaces, processes = ?tls_config.processes, ?libraries, "capturing with the eBPF probe and the OpenSSL uprobes (capture.tls.enabled = \"auto\")");
            Ok((source, Some(tls)))
        }
        // A configured library that is not there is the admin's to fix, as with `true`.
        Err(err @ TlsError::Library { .. }) => Err(err.into()),
        Err(reason) => {
            let source = register(probe)?;
            tracing::warn!(mode = "ebpf", interfaces = ?capture.interfaces, %reason, "capturing with the eBPF probe; HTTPS is NOT seen: the OpenSSL uprobes cannot be used (capture.tls.enabled = \"auto\")");
            Ok((source, None))
        }
    }
}

fn open_source_without_tls(
    capture: &CaptureConfig,
    tls_idle: Duration,
) -> Result<Source, LiveSourceError> {
    match capture.mode {
        // `Tls` never gets here (`open_source` handles it); it is listed to keep the match total.
        CaptureMode::Ebpf | CaptureMode::Tls => {
            let source = open_tc_probe(capture, tls_idle)?;
            tracing::info!(mode = "ebpf", interfaces = ?capture.interfaces, "capturing with the eBPF probe (configured)");
            Ok(source)
        }
        CaptureMode::Pcap => {
            let source = open_pcap(capture, tls_idle)?;
            tracing::info!(mode = "pcap", interfaces = ?capture.interfaces, "capturing with libpcap (configured)");
            Ok(source)
        }
        CaptureMode::Auto => match open_tc_probe(capture, tls_idle) {
            Ok(source) => {
                tracing::info!(mode = "ebpf", interfaces = ?capture.interfaces, "capturing with the eBPF probe (auto: it loaded)");
                Ok(source)
            }
            Err(reason) => {
                let (source, reason) = fall_back_to_pcap(capture, tls_idle, reason)?;
                tracing::warn!(mode = "pcap", interfaces = ?capture.interfaces, %reason, "capturing with libpcap (auto: the eBPF probe is unavailable)");
                Ok(source)
            }
        },
    }
}

/// Mode `"auto"`'s libpcap after the probe failed for `reason`, which comes back for the log;
/// when libpcap fails too, the error gives both reasons (either one fixed starts the capture).
fn fall_back_to_pcap(
    capture: &CaptureConfig,
    tls_idle: Duration,
    reason: LiveSourceError,
) -> Result<(Source, LiveSourceError), LiveSourceError> {
    match open_pcap(capture, tls_idle) {
        Ok(source) => Ok((source, reason)),
        Err(pcap) => Err(LiveSourceError::NeitherProbeNorPcap {
            probe: Box::new(reason),
            pcap: Box::new(pcap),
        }),
    }
}

fn open_tc_probe(capture: &CaptureConfig, tls_idle: Duration) -> Result<Source, LiveSourceError> {
    register(load_probe(capture, tls_idle, true)?)
}

/// The probe (TC classifier attached when `tc`) with the OpenSSL uprobes attached.
fn open_probe(
    capture: &CaptureConfig,
    tls_idle: Duration,
    tc: bool,
) -> Result<(Source, TlsCapture), LiveSourceError> {
    let mut probe = load_probe(capture, tls_idle, tc)?;
    let tls_config = &capture.tls;
    let mut tls = TlsCapture::new(tls_config.processes.clone(), tls_config.libraries.clone());
    tls.start(&mut probe)?;
    Ok((register(probe)?, tls))
}

/// Loads the probe; attaches the TC classifier to the interfaces when `tc` is set.
fn load_probe(
    capture: &CaptureConfig,
    tls_idle: Duration,
    tc: bool,
) -> Result<KernelProbe, LiveSourceError> {
    let mut probe = KernelProbe::load(&ProbeConfig {
        // The classifier is loaded in TLS-only mode too (it shares the object), but not attached.
        ports: if capture.ports.is_empty() {
            ProbeConfig::default().ports
        } else {
            capture.ports.clone()
        },
        ring_bytes: capture.ring_bytes,
        attach: capture.tc_attach,
        tls_processes: if capture.tls_on() {
            capture.tls.processes.clone()
        } else {
            Vec::new()
        },
        tls_users: if capture.tls_on() {
            resolve_users(&capture.tls.users)
        } else {
            Vec::new()
        },
        tls_idle,
        ..ProbeConfig::default()
    })?;
    if tc {
        for interface in &capture.interfaces {
            probe.attach(interface)?;
        }
    }
    Ok(probe)
}

fn register(probe: KernelProbe) -> Result<Source, LiveSourceError> {
    // SAFETY: the fd is the probe's ring-buffer map, owned by the probe and open until the
    // probe is dropped, which happens only with the AsyncFd; `as_raw_fd` always returns it.
    let probe =
        unsafe { AsyncFd::register_with_interest(probe, Interest::READABLE) }.map_err(|err| {
            LiveSourceError::Io {
                what: "watching the eBPF ring buffer",
                source: err.into(),
            }
        })?;
    Ok(Source::Kernel(Box::new(probe)))
}

fn open_pcap(capture: &CaptureConfig, _tls_idle: Duration) -> Result<Source, LiveSourceError> {
    let (capture, frames) =
        LiveCapture::open(&capture.interfaces, &capture.ports, PCAP_CHANNEL_FRAMES)?;
    Ok(Source::Pcap { capture, frames })
}

impl Source {
    fn mode(&self) -> &'static str {
        match self {
            Source::Kernel(_) => "ebpf",
            Source::Pcap { .. } => "pcap",
        }
    }

    /// Waits until there is something to read; borrows only the source.
    /// `busy`: the last read of the kernel's ring found events.
    async fn wait(&mut self, busy: bool) -> Ready {
        match self {
            Source::Kernel(_) => {
                // The ring is read in batches on a short timer, not on readiness: waking for
                // every event cost a quarter of nginx's throughput in `cargo xtask bench live`,
                // batches every millisecond cost nothing measurable there, and the ring
                // (`capture.ring_bytes`) holds far more than that of traffic. The batches are
                // short because connections are handed back to the kernel after each one: at
                // 10 ms, browsers that send their next request at once were copied three times
                // as much (`cargo xtask bench http-mix`).
                tokio::time::sleep(if busy {
                    KERNEL_DRAIN_INTERVAL
                } else {
                    KERNEL_IDLE_DRAIN_INTERVAL
                })
                .await;
                Ready::Kernel
            }
            Source::Pcap { frames, .. } => Ready::Frame(frames.recv().await),
        }
    }

    /// Feeds what is ready now, without waiting, within `budget`; returns how many kernel
    /// records it read.
    fn drain(
        &mut self,
        budget: DrainBudget,
        pipeline: &mut Pipeline,
        out: &mut impl FnMut(Verdict),
    ) -> usize {
        match self {
            Source::Kernel(probe) => {
                let probe = probe.get_mut();
                let read =
                    probe.drain_bounded(budget.records, budget.time_left(), &mut |segment| {
                        pipeline.push_segment(segment, out)
                    });
                // The kernel copies what the pipeline still reads: connections with nothing
                // worth reading until their next request leave its flow table (TLS connections
                // are not handed back: see `Reassembler::release`).
                while let Some(request) = pipeline.poll_capture_request() {
                    match request {
                        CaptureRequest::StopCopying { client, server } => {
                            if !is_synthetic(&client) {
                                probe.stop_copying(client, server);
                            }
                        }
                        CaptureRequest::CopyAgain(resumed) => {
                            if !is_synthetic(&resumed.client) {
                                probe.copy_again(&resumed);
                            }
                        }
                    }
                }
                read
            }
            Source::Pcap { frames, .. } => {
                for _ in 0..PCAP_BATCH.min(budget.records) {
                    let Ok(frame) = frames.try_recv() else { break };
                    pipeline.push_frame(&frame.frame(), out);
                }
                0
            }
        }
    }

    /// Stops reading and feeds what was captured before the stop.
    async fn stop(&mut self, pipeline: &mut Pipeline, out: &mut impl FnMut(Verdict)) {
        match self {
            Source::Kernel(probe) => {
                let budget = DrainBudget {
                    records: usize::MAX,
                    time: STOP_DRAIN_TIME,
                };
                probe
                    .get_mut()
                    .drain_bounded(usize::MAX, budget.time_left(), &mut |segment| {
                        pipeline.push_segment(segment, out)
                    });
            }
            Source::Pcap { capture, frames } => {
                capture.stop();
                // Closes once every thread has seen the flag and dropped its sender.
                while let Some(frame) = frames.recv().await {
                    pipeline.push_frame(&frame.frame(), out);
                }
            }
        }
    }
}

fn tls_coverage(tls: Option<&TlsCapture>) -> TlsCoverage {
    match tls {
        None => TlsCoverage::Off,
        Some(tls) => TlsCoverage::On {
            libraries: tls.libraries().count(),
        },
    }
}

/// The counters the coverage judgement reads.
fn coverage_sample(source: &Source, pipeline: &Pipeline) -> CoverageSample {
    let stats = pipeline.stats();
    let http = &stats.http;
    let mut sample = CoverageSample {
        unreadable_api_requests: stats.redcap.token_unreadable,
        not_http: http.not_http,
        request_starts_lost: http.request_starts_lost,
        http2_unreadable: http.h2_hpack_errors
            + http.h2_frame_too_large
            + http.h2_protocol_errors
            + http.h2_gaps,
        ..CoverageSample::default()
    };
    if let Source::Kernel(probe) = source
        && let Ok(k) = probe.get_ref().counters()
    {
        sample.tls_handshakes = k.tls_handshakes;
        sample.http2_started_unseen = k.http2_unseen;
        sample.tls_reads = k.tls_filtered + k.tls_conns_started;
        sample.tls_other_user = k.tls_other_user;
    }
    sample
}
