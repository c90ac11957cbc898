//! `redcap-monitor run`: live packets through the pipeline, records out as calls are released.
//!
//! The live edge: chooses the capture source (the eBPF probe, or libpcap), reads it with tokio,
//! feeds the same [`Pipeline`] as `analyze`, appends call and violation records, logs every
//! counter once per interval, and on SIGINT/SIGTERM finishes the pipeline, flushes and detaches.
//! SIGHUP re-reads the configuration and applies it whole or not at all ([`apply_config`]).
//! Tells systemd (`Type=notify`) when it is ready, alive, reloading and stopping. Nothing is
//! pinned: the probe's links go with the process.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior, interval, interval_at};

use crate::capture::kernel::{KernelProbe, ProbeConfig, ProbeError, interface_exists};
use crate::capture::live_pcap::{LiveCapture, OwnedFrame, PcapError};
use crate::config::{CaptureMode, Config, ConfigError};
use crate::model::Timestamp;
use crate::notify::Notifier;
use crate::output::{CallRecord, Transport, ViolationRecord, write_line};
use crate::pipeline::Pipeline;
use crate::policy::Verdict;
use crate::token::SiteKey;

/// How often time advances in the pipeline when no packet arrives, and outputs are flushed.
const TICK: Duration = Duration::from_millis(100);
/// How often the kernel's ring buffer is read (see `Source::wait`).
const KERNEL_DRAIN_INTERVAL: Duration = Duration::from_millis(10);
/// Frames in flight between the libpcap threads and the pipeline.
const PCAP_CHANNEL_FRAMES: usize = 8192;
/// Most frames handled per wake-up, so that ticks and signals are not starved under load.
const PCAP_BATCH: usize = 1024;
/// How often systemd's `STATUS=` line is refreshed (when it changed).
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("eBPF capture: {0}")]
    Probe(#[from] ProbeError),
    #[error("libpcap capture: {0}")]
    Pcap(#[from] PcapError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("every libpcap capture thread stopped (see the log above)")]
    CaptureEnded,
}

/// Checks what only `run` needs from the configuration (`origin` names the file in errors).
pub fn check_config(config: &Config, origin: &Path) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: origin.to_owned(),
        key: key.into(),
        message,
    };
    let capture = &config.capture;
    if capture.interfaces.is_empty() {
        return Err(invalid(
            "capture.interfaces",
            "is empty: list the interfaces to watch, e.g. [\"eth0\"]".into(),
        ));
    }
    if let Some(missing) = capture.interfaces.iter().find(|i| !interface_exists(i)) {
        return Err(invalid(
            "capture.interfaces",
            format!("no network interface named {missing:?} here (list them with `ip link`)"),
        ));
    }
    if capture.ports.is_empty() {
        return Err(invalid(
            "capture.ports",
            "is empty: list the web server's ports, e.g. [80, 8080]".into(),
        ));
    }
    Ok(())
}

/// Runs until SIGINT or SIGTERM. Blocks the calling thread on a single-threaded tokio runtime.
pub fn run(config: &Config, origin: &Path, key: SiteKey) -> Result<(), RunError> {
    check_config(config, origin)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|source| RunError::Io {
            what: "starting the tokio runtime",
            source,
        })?;
    runtime.block_on(run_live(config, origin, key))
}

async fn run_live(config: &Config, origin: &Path, key: SiteKey) -> Result<(), RunError> {
    let mut pipeline = Pipeline::new(config, key).map_err(|err| match err {
        ConfigError::Invalid { key, message, .. } => ConfigError::Invalid {
            path: origin.to_owned(),
            key,
            message,
        },
        other => other,
    })?;
    let mut records = Records::open(config)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
    let mut notifier = Notifier::from_env();
    let mut source = open_source(config)?;
    // The configuration in force: replaced as a whole by a reload.
    let mut current = config.clone();
    notifier.ready(&status_line(&source, &current, &pipeline));
    if let Some(every) = notifier.watchdog_interval() {
        tracing::info!(
            ping_every_ms = every.as_millis() as u64,
            "systemd watchdog on: pinging from the live loop"
        );
    }

    let mut tick = interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stats_tick = stats_interval(&current);
    let mut next_status = std::time::Instant::now() + STATUS_INTERVAL;

    loop {
        let event = tokio::select! {
            _ = interrupt.recv() => Event::Stop("SIGINT"),
            _ = terminate.recv() => Event::Stop("SIGTERM"),
            _ = hangup.recv() => Event::Reload,
            ready = source.wait() => ready,
            _ = tick.tick() => Event::Tick,
            _ = stats_tick.tick() => Event::Stats,
        };
        match event {
            Event::Stop(signal) => {
                tracing::info!(signal, "stopping: finishing open calls");
                notifier.stopping();
                break;
            }
            Event::Reload => {
                notifier.reloading();
                records.flush()?;
                if let Some(new) = reload(origin, config, &mut records) {
                    apply_config(&new, &mut pipeline, &mut stats_tick);
                    current = new;
                }
                notifier.ready(&status_line(&source, &current, &pipeline));
            }
            Event::KernelReadable(Err(source)) => {
                return Err(RunError::Io {
                    what: "waiting for the eBPF ring buffer",
                    source,
                });
            }
            Event::KernelReadable(Ok(())) => source.drain(&mut pipeline, &mut records),
            Event::Frame(None) => return Err(RunError::CaptureEnded),
            Event::Frame(Some(frame)) => {
                pipeline.push_frame(&frame.frame(), &mut |v| records.write(&v));
                source.drain(&mut pipeline, &mut records);
            }
            Event::Tick => {
                // The ring buffer's readiness can be missed between a drain and the next
                // event; the tick drains too, so nothing waits longer than one tick.
                source.drain(&mut pipeline, &mut records);
                pipeline.tick(wall_clock(), &mut |v| records.write(&v));
                records.flush()?;
                // The pipeline's heartbeat: systemd's watchdog hears from the loop only while
                // the loop runs.
                let now = std::time::Instant::now();
                notifier.heartbeat(now);
                if now >= next_status {
                    next_status = now + STATUS_INTERVAL;
                    notifier.status(&status_line(&source, &current, &pipeline));
                }
            }
            Event::Stats => {
                let stats = counters(&source, &pipeline, &records);
                tracing::info!(counters = %stats, "counters");
                records.write_stats(&stats)?;
            }
        }
        records.check()?;
    }

    source.stop(&mut pipeline, &mut records).await;
    pipeline.finish(&mut |v| records.write(&v));
    records.check()?;
    records.flush()?;
    let stats = counters(&source, &pipeline, &records);
    tracing::info!(counters = %stats, "final counters");
    records.write_stats(&stats)?;
    // Dropping the source detaches the probe's links (or joins the libpcap threads).
    drop(source);
    Ok(())
}

fn stats_interval(config: &Config) -> Interval {
    let every = Duration::from_nanos(config.output.stats_interval.span().0);
    let mut stats_tick = interval_at(tokio::time::Instant::now() + every, every);
    stats_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    stats_tick
}

/// SIGHUP: reads the file again and prepares everything that can fail (validation, opening the
/// outputs). Returns the new configuration to apply, or `None` (logged, with every problem)
/// when the running one stays in force. The record outputs are reopened (new paths, or the same
/// paths after logrotate moved the files) and swapped in only on success.
/// `started` is the configuration the process started with: keys that apply only at start are
/// compared with it.
fn reload(origin: &Path, started: &Config, records: &mut Records) -> Option<Config> {
    let refused = |why: &dyn std::fmt::Display| {
        tracing::error!(
            file = %origin.display(),
            "reload refused, the running configuration stays in force: {why}. Fix the file \
             (`redcap-monitor check-config {}` lists every problem) and reload again",
            origin.display()
        );
    };
    let new = match Config::load(origin) {
        Ok(new) => new,
        Err(err) => {
            refused(&single_line(&err));
            return None;
        }
    };
    match Records::open(&new) {
        Ok(reopened) => records.replace_outputs(reopened),
        Err(err) => {
            refused(&err);
            return None;
        }
    }
    let restart = started.restart_needed(&new);
    if !restart.is_empty() {
        tracing::warn!(
            keys = %restart.join(", "),
            "these keys differ from the configuration the daemon started with and apply only \
             at the next start: restart the service (systemctl restart redcap-monitor) to use them"
        );
    }
    tracing::info!(
        file = %origin.display(),
        rules = %new.policy.rules.iter().map(|r| format!("{}<={}/{}", r.name, r.limit, r.window)).collect::<Vec<_>>().join(" "),
        "configuration reloaded: rules, heavy thresholds, health, enforcement and outputs applied; \
         token windows and suspensions kept"
    );
    Some(new)
}

/// The one place where a new configuration takes effect in the running daemon, after
/// [`reload`] accepted it. Everything here is infallible, so a reload applies whole.
/// Components that act on decisions (hooks, alerts) take their part here too, e.g.
/// `actions.reconfigure(new)`.
fn apply_config(new: &Config, pipeline: &mut Pipeline, stats_tick: &mut Interval) {
    pipeline.reconfigure(new);
    *stats_tick = stats_interval(new);
}

/// A config error on one line (a log line), every problem kept.
fn single_line(err: &ConfigError) -> String {
    err.to_string().replace("\n  ", " | ").replace('\n', " ")
}

/// One line for `systemctl status`: capture, interfaces, calls, violations, health.
fn status_line(source: &Source, config: &Config, pipeline: &Pipeline) -> String {
    let policy = pipeline.stats().policy;
    format!(
        "{} on {}: {} calls, {} violations, server {}",
        source.mode(),
        config.capture.interfaces.join(","),
        policy.calls,
        policy.violations,
        if pipeline.health().is_degraded() {
            "DEGRADED"
        } else {
            "responsive"
        }
    )
}

enum Event {
    Stop(&'static str),
    Reload,
    KernelReadable(io::Result<()>),
    Frame(Option<OwnedFrame>),
    Tick,
    Stats,
}

/// Where packets come from.
enum Source {
    Kernel(Box<AsyncFd<KernelProbe>>),
    Pcap {
        capture: LiveCapture,
        frames: mpsc::Receiver<OwnedFrame>,
    },
}

fn open_source(config: &Config) -> Result<Source, RunError> {
    let capture = &config.capture;
    match capture.mode {
        CaptureMode::Ebpf => {
            let source = open_probe(config)?;
            tracing::info!(mode = "ebpf", interfaces = ?capture.interfaces, "capturing with the eBPF probe (configured)");
            Ok(source)
        }
        CaptureMode::Pcap => {
            let source = open_pcap(config)?;
            tracing::info!(mode = "pcap", interfaces = ?capture.interfaces, "capturing with libpcap (configured)");
            Ok(source)
        }
        CaptureMode::Auto => match open_probe(config) {
            Ok(source) => {
                tracing::info!(mode = "ebpf", interfaces = ?capture.interfaces, "capturing with the eBPF probe (auto: it loaded)");
                Ok(source)
            }
            Err(reason) => {
                let source = open_pcap(config)?;
                tracing::warn!(mode = "pcap", interfaces = ?capture.interfaces, %reason, "capturing with libpcap (auto: the eBPF probe is unavailable)");
                Ok(source)
            }
        },
    }
}

fn open_probe(config: &Config) -> Result<Source, RunError> {
    let mut probe = KernelProbe::load(&ProbeConfig {
        ports: config.capture.ports.clone(),
        ring_bytes: config.capture.ring_bytes,
        attach: config.capture.tc_attach,
        ..ProbeConfig::default()
    })?;
    for interface in &config.capture.interfaces {
        probe.attach(interface)?;
    }
    // SAFETY: the fd is the probe's ring-buffer map, owned by the probe and open until the
    // probe is dropped, which happens only with the AsyncFd; `as_raw_fd` always returns it.
    let probe =
        unsafe { AsyncFd::register_with_interest(probe, Interest::READABLE) }.map_err(|err| {
            RunError::Io {
                what: "watching the eBPF ring buffer",
                source: err.into(),
            }
        })?;
    Ok(Source::Kernel(Box::new(probe)))
}

fn open_pcap(config: &Config) -> Result<Source, RunError> {
    let (capture, frames) = LiveCapture::open(
        &config.capture.interfaces,
        &config.capture.ports,
        PCAP_CHANNEL_FRAMES,
    )?;
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
    async fn wait(&mut self) -> Event {
        match self {
            Source::Kernel(_) => {
                // The ring is read in batches on a short timer, not on readiness: waking for
                // every event cost a quarter of nginx's throughput in `cargo xtask bench live`
                // (75.6% of unprobed), batches every 10 ms cost nothing measurable, and the
                // ring (`capture.ring_bytes`) holds far more than 10 ms of API traffic.
                tokio::time::sleep(KERNEL_DRAIN_INTERVAL).await;
                Event::KernelReadable(Ok(()))
            }
            Source::Pcap { frames, .. } => Event::Frame(frames.recv().await),
        }
    }

    /// Feeds what is ready now, without waiting.
    fn drain(&mut self, pipeline: &mut Pipeline, records: &mut Records) {
        match self {
            Source::Kernel(probe) => {
                probe.get_mut().drain(&mut |segment| {
                    pipeline.push_segment(segment, &mut |v| records.write(&v))
                });
            }
            Source::Pcap { frames, .. } => {
                for _ in 0..PCAP_BATCH {
                    let Ok(frame) = frames.try_recv() else { break };
                    pipeline.push_frame(&frame.frame(), &mut |v| records.write(&v));
                }
            }
        }
    }

    /// Stops reading and feeds what was captured before the stop.
    async fn stop(&mut self, pipeline: &mut Pipeline, records: &mut Records) {
        match self {
            Source::Kernel(probe) => {
                probe.get_mut().drain(&mut |segment| {
                    pipeline.push_segment(segment, &mut |v| records.write(&v))
                });
            }
            Source::Pcap { capture, frames } => {
                capture.stop();
                // Closes once every thread has seen the flag and dropped its sender.
                while let Some(frame) = frames.recv().await {
                    pipeline.push_frame(&frame.frame(), &mut |v| records.write(&v));
                }
            }
        }
    }
}

/// Every counter as one JSON object: the kernel's (or libpcap's), then each stage's.
fn counters(source: &Source, pipeline: &Pipeline, records: &Records) -> serde_json::Value {
    let mut value = serde_json::json!({
        "mode": source.mode(),
        "calls_written": records.calls_written,
        "violations_written": records.violations_written,
    });
    match source {
        Source::Kernel(probe) => {
            let probe = probe.get_ref();
            value["kernel"] = match probe.counters() {
                Ok(k) => serde_json::json!({
                    "packets_seen": k.packets_seen,
                    "filtered": k.filtered,
                    "events_sent": k.events_sent,
                    "ring_full": k.ring_full,
                    "truncated_bytes": k.truncated_bytes,
                    "flow_insert_failed": k.flow_insert_failed,
                    "flows_started": k.flows_started,
                    "flows_ended": k.flows_ended,
                    "flows_tracked": k.flows_tracked,
                    "flows_evicted": k.flows_evicted,
                }),
                Err(err) => serde_json::Value::String(err.to_string()),
            };
            let drain = probe.drain_stats();
            value["ring"] = serde_json::json!({
                "records": drain.records,
                "malformed": drain.malformed,
            });
        }
        Source::Pcap { capture, .. } => {
            value["pcap"] = serde_json::to_value(capture.counters()).unwrap_or_default();
        }
    }
    // The stages' counters have no stable JSON shape yet; their Debug form is what
    // `analyze` prints too. The problems are structured: `status` reads them.
    let stats = pipeline.stats();
    value["problems"] = stats
        .problems()
        .into_iter()
        .map(|(name, n)| (name.to_string(), serde_json::Value::from(n)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    value["degraded"] = pipeline.health().is_degraded().into();
    value["pipeline"] = serde_json::json!({
        "decode": format!("{:?}", stats.decode),
        "reassembly": format!("{:?}", stats.reassembly),
        "http": format!("{:?}", stats.http),
        "policy": format!("{:?}", stats.policy),
    });
    value
}

/// The record outputs; a write error is kept and reported at the next check.
struct Records {
    calls: Option<Output>,
    violations: Option<Output>,
    decisions: Option<Output>,
    stats: Option<PathBuf>,
    calls_written: u64,
    violations_written: u64,
    error: Option<RunError>,
}

struct Output {
    path: PathBuf,
    out: BufWriter<Box<dyn Write>>,
}

impl Records {
    fn open(config: &Config) -> Result<Records, RunError> {
        let output = &config.output;
        Ok(Records {
            calls: output.calls.as_deref().map(Output::append).transpose()?,
            violations: output
                .violations
                .as_deref()
                .map(Output::append)
                .transpose()?,
            decisions: output
                .decisions
                .as_deref()
                .map(Output::append)
                .transpose()?,
            stats: output.stats.clone(),
            calls_written: 0,
            violations_written: 0,
            error: None,
        })
    }

    fn write(&mut self, verdict: &Verdict) {
        if self.error.is_some() {
            return;
        }
        if let Some(calls) = &mut self.calls {
            if let Err(err) = calls.line(&CallRecord::of(verdict, Transport::Tcp)) {
                self.error = Some(err);
                return;
            }
            self.calls_written += 1;
        }
        if let Some(violations) = &mut self.violations {
            for violation in &verdict.violations {
                if let Err(err) = violations.line(&ViolationRecord::of(violation)) {
                    self.error = Some(err);
                    return;
                }
                self.violations_written += 1;
            }
        }
        if let (Some(decisions), Some(decision)) = (&mut self.decisions, &verdict.decision)
            && let Err(err) = decisions.line(decision)
        {
            self.error = Some(err);
        }
    }

    /// Takes `reopened`'s outputs (a reload); the counts carry on. Call after a flush.
    fn replace_outputs(&mut self, reopened: Records) {
        self.calls = reopened.calls;
        self.violations = reopened.violations;
        self.decisions = reopened.decisions;
        self.stats = reopened.stats;
    }

    fn check(&mut self) -> Result<(), RunError> {
        self.error.take().map_or(Ok(()), Err)
    }

    fn flush(&mut self) -> Result<(), RunError> {
        let outputs = self.calls.iter_mut().chain(self.violations.iter_mut());
        for output in outputs.chain(self.decisions.iter_mut()) {
            output.out.flush().map_err(|source| RunError::Write {
                path: output.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Replaces the stats file atomically (write a sibling, rename over).
    fn write_stats(&self, stats: &serde_json::Value) -> Result<(), RunError> {
        let Some(path) = &self.stats else {
            return Ok(());
        };
        let write_error = |source| RunError::Write {
            path: path.clone(),
            source,
        };
        let mut partial = path.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let text = format!("{stats}\n");
        std::fs::write(&partial, text).map_err(write_error)?;
        std::fs::rename(&partial, path).map_err(write_error)
    }
}

impl Output {
    fn append(path: &Path) -> Result<Output, RunError> {
        let sink: Box<dyn Write> = if path == Path::new("-") {
            Box::new(io::stdout())
        } else {
            let file: File = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| RunError::Write {
                    path: path.to_owned(),
                    source,
                })?;
            Box::new(file)
        };
        Ok(Output {
            path: path.to_owned(),
            out: BufWriter::with_capacity(1 << 16, sink),
        })
    }

    fn line(&mut self, record: &impl serde::Serialize) -> Result<(), RunError> {
        write_line(&mut self.out, record).map_err(|source| RunError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

fn wall_clock() -> Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
}

fn signal_error(source: io::Error) -> RunError {
    RunError::Io {
        what: "installing the SIGINT/SIGTERM/SIGHUP handlers",
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("live.toml")).unwrap()
    }

    #[test]
    fn run_needs_an_interface_and_names_the_key() {
        let err = check_config(&config(""), Path::new("live.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("capture.interfaces") && err.contains("eth0"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_interface_is_named() {
        let err = check_config(
            &config("[capture]\ninterfaces = [\"lo\", \"rcm-nope0\"]\n"),
            Path::new("live.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("\"rcm-nope0\"") && err.contains("ip link"),
            "{err}"
        );
    }

    #[test]
    fn an_empty_port_list_is_refused() {
        let err = check_config(
            &config("[capture]\ninterfaces = [\"lo\"]\nports = []\n"),
            Path::new("live.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("capture.ports"), "{err}");
    }

    #[test]
    fn records_are_appended_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.jsonl");
        std::fs::write(&path, "{\"earlier\":1}\n").unwrap();
        let mut output = Output::append(&path).unwrap();
        output.line(&serde_json::json!({"later": 2})).unwrap();
        output.out.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"earlier\":1}\n{\"later\":2}\n");
    }
}
