//! `redcap-monitor run`: live packets through the pipeline, records out as calls are released,
//! decisions acted on.
//!
//! The live event loop: opens the [`LiveSource`] (which chooses and assembles the capture),
//! waits on it with tokio, feeds the same [`Pipeline`] as `analyze`, appends call, violation and
//! decision records with the same [`RecordWriter`] (which never stops the daemon: a full disk
//! drops records, counted, alerted once per outage, and writing resumes), hands every
//! verdict, change of health and capture loss to [`Actions`] (store, alerts, hooks), logs every
//! counter once per interval, and on SIGINT/SIGTERM finishes the pipeline, flushes and detaches.
//! SIGHUP re-reads the configuration and applies it whole or not at all ([`apply_config`]).
//! Tells systemd (`Type=notify`) when it is ready, alive, reloading and stopping. Nothing is
//! pinned: the probe's links go with the process.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::{Interval, MissedTickBehavior, interval, interval_at};

use crate::commands::config::{Config, ConfigError};
use crate::edges::actions::{
    Actions, ActionsError, ActionsReload, AdminRequest, Reply, ReplyTo, Request,
};
use crate::edges::alerts::AlertKind;
use crate::edges::api::live::{LiveTelemetry, suspension_json};
use crate::edges::api::{AdminCommand, ApiError, ApiServer, Bearer, Shared};
use crate::edges::canary::Canary;
use crate::edges::capture::CaptureMode;
use crate::edges::capture::kernel::interface_exists;
use crate::edges::capture::live::{CaptureCounters, LiveSource, LiveSourceError, Ready};
use crate::edges::capture::live_pcap::OwnedFrame;
use crate::edges::directory::Directory;
use crate::edges::notify::Notifier;
use crate::edges::output::{Outage, RecordFiles, RecordPaths, RecordWriter, WriteMode};
use crate::edges::shared_state::{
    FromRedis, Retention, SharedState, SharedStateError, SuspensionNote,
};
use crate::edges::store::Suspension;
use crate::edges::telemetry::{
    AlertCounters, BlindSpotCounts, ClusterSection, KernelSection, Metrics, PeerStatus,
    PipelineCounters, Snapshot, Tracked,
};
use crate::shared::model::Timestamp;
use crate::shared::token::SiteKey;
use crate::stages::cluster::{ClusterConfig, PeerEvent};
use crate::stages::coverage::{Coverage, TlsCoverage};
use crate::stages::pipeline::Pipeline;
use crate::stages::policy::Verdict;

/// How often time advances in the pipeline when no packet arrives, and outputs are flushed.
const TICK: Duration = Duration::from_millis(100);
/// How often the metrics and the admin API's view are refreshed from the stages' counters.
const TELEMETRY_REFRESH: Duration = Duration::from_secs(1);
/// Admin commands waiting for the live loop.
const ADMIN_QUEUE: usize = 16;
/// How often the capture's loss counters are looked at (a growth raises a `capture_loss` alert).
const LOSS_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How often systemd's `STATUS=` line is refreshed (when it changed).
const STATUS_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Capture(#[from] LiveSourceError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("acting on decisions: {0}")]
    Actions(#[from] ActionsError),
    #[error("every libpcap capture thread stopped (see the log above)")]
    CaptureEnded,
    #[error(transparent)]
    Shared(#[from] SharedStateError),
}

/// Checks what only `run` needs from the configuration (`origin` names the file in errors).
pub(crate) fn check_config(config: &Config, origin: &Path) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: origin.to_owned(),
        key: key.into(),
        message,
    };
    let capture = &config.capture;
    if capture.mode == CaptureMode::Tls {
        // HTTPS only: no interface is watched, the uprobes find the web server's libssl.
        return Ok(());
    }
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
    // The site key is in memory already, and request bodies with tokens soon will be.
    crate::edges::hardening::forbid_core_dumps().map_err(|source| RunError::Io {
        what: "making the process non-dumpable (prctl PR_SET_DUMPABLE)",
        source,
    })?;
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
    let publisher =
        crate::edges::actions::publish::Publisher::start_or_log(&config.redcap_module, &key);
    let (directory, _directory_worker) =
        Directory::start(&config.directory, key.clone()).map_err(|source| RunError::Io {
            what: "starting the token directory thread",
            source,
        })?;
    let mut pipeline = Pipeline::new(config.pipeline(), key);
    let mut records = Records::open(config)?;
    let owners = directory.clone();
    records.writer.decision_extra(Box::new(move |token| {
        owners
            .owner(token)
            .map(|owner| serde_json::to_value(&*owner).unwrap_or_default())
    }));
    let mut actions = Actions::open(
        config.actions(),
        crate::edges::alerts::host_name(),
        wall_clock(),
    )?;
    if let Some(publisher) = publisher {
        actions.publish_to(publisher);
    }
    actions.use_directory(directory.clone());
    let memory = config.enforcement.memory.span();
    let restored = actions
        .restore_into(pipeline.enforcer_mut(), wall_clock(), memory)
        .map_err(ActionsError::from)?;
    tracing::info!(store = %config.store.path.display(), suspensions_in_force = restored,
        requests = %actions.request_dir().display(), "state store open");
    let canary = Canary::start(&config.health.canary).map_err(|source| RunError::Io {
        what: "starting the canary thread",
        source,
    })?;
    if canary.is_some() {
        tracing::info!(every = %config.health.canary.interval, "canary probing");
    }
    let metrics = Metrics::new();
    metrics.declare_rules(config.policy.rules.iter().map(|r| r.name.as_str()));
    let shared = Shared::new(metrics);
    // The sender stays here too, so that `recv` waits (rather than ends) without a listener.
    let (command_tx, mut commands) = mpsc::channel::<AdminCommand>(ADMIN_QUEUE);
    let _api = start_api(config, &shared, command_tx.clone())?;
    let mut telemetry =
        LiveTelemetry::new(shared, config.api.top_tokens, config.health.window.span());
    telemetry.use_directory(directory);
    telemetry.use_lifecycle(&config.lifecycle);
    let shared_state = start_shared(config, &mut pipeline, &mut actions)?;
    let mut edges = Edges {
        records,
        telemetry,
        actions,
        canary,
        coverage: Coverage::new(TlsCoverage::Off, config.capture.https_port().is_some()),
        shared: shared_state,
    };
    let mut interrupt = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(signal_error)?;
    let mut notifier = Notifier::from_env();
    let mut source = LiveSource::open(
        &config.capture,
        Duration::from_nanos(config.reassembly.idle_timeout.span().0),
    )?;
    if source.takes_capture_requests() {
        pipeline.listen_for_capture_requests();
    }
    edges.coverage.set_tls(source.tls_coverage());
    drop_capture_capabilities(&source);
    // The configuration in force: replaced as a whole by a reload.
    let mut current = config.clone();
    notifier.ready(&status_line(&source, &current, &pipeline, &edges.coverage));
    if let Some(every) = notifier.watchdog_interval() {
        tracing::info!(
            ping_every_ms = every.as_millis() as u64,
            "systemd watchdog on: pinging from the live loop"
        );
    }
    let rescan_every = Duration::from_nanos(config.capture.tls.rescan_interval.span().0);
    let mut rescan_tick = interval_at(tokio::time::Instant::now() + rescan_every, rescan_every);
    rescan_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

    let mut tick = interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut stats_tick = stats_interval(&current);
    let mut next_status = std::time::Instant::now() + STATUS_INTERVAL;
    let mut refresh_tick = interval(TELEMETRY_REFRESH);
    refresh_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut loss_tick = interval(LOSS_CHECK_INTERVAL);
    let mut kernel_busy = false;
    loss_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        let event = tokio::select! {
            _ = interrupt.recv() => Event::Stop("SIGINT"),
            _ = terminate.recv() => Event::Stop("SIGTERM"),
            _ = hangup.recv() => Event::Reload,
            ready = source.wait(kernel_busy) => match ready {
                Ready::Kernel => Event::KernelReadable,
                Ready::Frame(frame) => Event::Frame(frame),
            },
            _ = tick.tick() => Event::Tick,
            _ = stats_tick.tick() => Event::Stats,
            _ = refresh_tick.tick() => Event::Refresh,
            Some(command) = commands.recv() => Event::Admin(command),
            message = from_redis(&mut edges.shared) => Event::Shared(message),
            _ = loss_tick.tick() => Event::LossCheck,
            _ = rescan_tick.tick(), if source.captures_tls() => Event::Rescan,
        };
        match event {
            Event::Stop(signal) => {
                tracing::info!(signal, "stopping: finishing open calls");
                notifier.stopping();
                break;
            }
            Event::Reload => {
                notifier.reloading();
                edges.records.writer.flush();
                if let Some((new, actions)) = reload(origin, config, &mut edges) {
                    apply_config((&new, actions), &mut pipeline, &mut edges, &mut stats_tick);
                    current = new;
                }
                notifier.ready(&status_line(&source, &current, &pipeline, &edges.coverage));
            }
            Event::KernelReadable => {
                kernel_busy = source.drain(&mut pipeline, &mut |v| edges.verdict(v)) > 0;
                edges.share_finished_calls(&mut pipeline);
            }
            Event::Frame(None) => return Err(RunError::CaptureEnded),
            Event::Frame(Some(frame)) => {
                pipeline.push_frame(&frame.frame(), &mut |v| edges.verdict(v));
                source.drain(&mut pipeline, &mut |v| edges.verdict(v));
                edges.share_finished_calls(&mut pipeline);
            }
            Event::Tick => {
                // The ring buffer's readiness can be missed between a drain and the next
                // event; the tick drains too, so nothing waits longer than one tick.
                source.drain(&mut pipeline, &mut |v| edges.verdict(v));
                let now = wall_clock();
                pipeline.tick(now, &mut |v| edges.verdict(v));
                edges.tick(&mut pipeline, now);
                edges.share(&mut pipeline, now);
                edges.records.writer.flush();
                edges.records_outages(now);
                // The pipeline's heartbeat: systemd's watchdog hears from the loop only while
                // the loop runs.
                let beat = std::time::Instant::now();
                notifier.heartbeat(beat);
                if beat >= next_status {
                    next_status = beat + STATUS_INTERVAL;
                    notifier.status(&status_line(&source, &current, &pipeline, &edges.coverage));
                }
            }
            Event::LossCheck => {
                let (lost, detail) = source.loss();
                let now = wall_clock();
                edges.actions.observe_capture_loss(lost, detail, now);
                edges.coverage.set_tls(source.tls_coverage());
                edges
                    .coverage
                    .observe(source.coverage_sample(&pipeline), now);
                while let Some(spot) = edges.coverage.poll_blind() {
                    tracing::warn!(
                        blind_spot = spot.reason.name(),
                        count = spot.count,
                        "capture is blind: {}",
                        spot.advice
                    );
                    edges.actions.observe_blind_spot(&spot, now);
                }
            }
            Event::Rescan => {
                source.rescan_tls();
            }
            Event::Stats => {
                let active = active_suspensions(&edges, wall_clock()).len();
                let stats = counters(&source, &pipeline, &edges, active);
                tracing::info!(counters = %stats, "counters");
                edges.records.write_stats(&stats);
            }
            Event::Refresh => refresh_telemetry(&source, &pipeline, &mut edges),
            Event::Admin(command) => {
                let now = wall_clock();
                edges.admin(command, &mut pipeline, now);
                // An admin's suspension or lift reaches the other hosts at once.
                edges.share(&mut pipeline, now);
            }
            Event::Shared(message) => {
                let now = wall_clock();
                edges.from_redis(message, &mut pipeline, now);
                // The peer that published calls waits for this host's watermark to judge them;
                // `share` acts first on the suspensions the released calls began.
                edges.share(&mut pipeline, now);
            }
        }
    }

    source.stop(&mut pipeline, &mut |v| edges.verdict(v)).await;
    pipeline.finish(&mut |v| edges.verdict(v));
    edges.tick(&mut pipeline, wall_clock());
    edges.share(&mut pipeline, wall_clock());
    edges.records.writer.flush();
    let active = active_suspensions(&edges, wall_clock()).len();
    let stats = counters(&source, &pipeline, &edges, active);
    tracing::info!(counters = %stats, "final counters");
    edges.records.write_stats(&stats);
    refresh_telemetry(&source, &pipeline, &mut edges);
    drop(command_tx);
    if let Some(shared) = edges.shared.take() {
        shared.close(SHARED_CLOSE).await;
    }
    // Dropping the source detaches the probe's links (or joins the libpcap threads).
    drop(source);
    // Hooks already queued run to their end; undelivered alerts stay in the store.
    edges.actions.shutdown();
    Ok(())
}

/// Where verdicts go: the records, the metrics and admin view, and the actions taken on them.
struct Edges {
    records: Records,
    telemetry: LiveTelemetry,
    actions: Actions,
    canary: Option<Canary>,
    /// What the capture cannot see, judged once a second with the loss counters.
    coverage: Coverage,
    /// The windows and suspensions shared with the other web hosts (`[shared]`).
    shared: Option<SharedState>,
}

impl Edges {
    /// The actions go last: they take the call's raw token, if it was kept for the suspend
    /// hooks (records and telemetry cannot see it either way), and the verdict is dropped here.
    fn verdict(&mut self, mut verdict: Verdict) {
        self.records.writer.write(&verdict);
        self.telemetry.observe(&verdict);
        self.actions.on_verdict(&mut verdict);
    }

    /// Hands an admin's lift or suspend from the API into the action edge's admin queue (where
    /// request files wait too) and carries the queue out at once.
    fn admin(&mut self, command: AdminCommand, pipeline: &mut Pipeline, now: Timestamp) {
        let (request, reply) = match command {
            AdminCommand::Suspend {
                token,
                duration,
                reason,
                reply,
            } => (
                Request::Suspend {
                    token_fp: token,
                    for_s: duration.map(|d| d.as_secs_f64()),
                    reason,
                },
                reply,
            ),
            AdminCommand::Lift {
                token,
                reason,
                reply,
            } => (
                Request::Lift {
                    token_fp: token,
                    reason,
                },
                reply,
            ),
        };
        self.actions.submit(AdminRequest {
            request: Ok(request),
            reply: ReplyTo::Callback(Box::new(move |answer: Reply| {
                let _ = reply.send(match (answer.ok, answer.suspension, answer.error) {
                    (true, Some(suspension), _) => Ok(suspension_json(&suspension)),
                    (true, None, _) => Ok(serde_json::Value::Null),
                    (false, _, error) => Err(error.unwrap_or_default()),
                });
            })),
        });
        self.actions.handle_admin(pipeline.enforcer_mut(), now);
    }

    /// Calls finished by the input just taken go to the peers at once, not at the next tick:
    /// each peer's judgement of its own calls that started later waits for them (and for this
    /// host's watermark after them). The Redis task gathers what comes while it publishes, so
    /// under load the entries still carry many calls.
    fn share_finished_calls(&mut self, pipeline: &mut Pipeline) {
        if self.shared.is_some() && pipeline.has_batch() {
            self.share(pipeline, wall_clock());
        }
    }

    /// Publishes this host's calls (or a heartbeat) when due and its suspensions, and alerts
    /// on a peer gone silent.
    fn share(&mut self, pipeline: &mut Pipeline, now: Timestamp) {
        if self.shared.is_none() {
            return;
        }
        // The suspensions the verdicts since the last tick began (after input, or after a peer's
        // batch let this host's calls be judged) are acted on now, as the tick would, so that
        // they go out before the watermark that lets peers judge the token's later calls (a
        // peer would suspend a second time otherwise).
        self.actions.apply_enforcement(pipeline.enforcer_mut());
        let Some(shared) = &mut self.shared else {
            return;
        };
        // Suspensions first: the batch's watermark lets peers judge the calls after them.
        for change in self.actions.take_suspension_changes() {
            shared.announce(SuspensionNote {
                token: change.token,
                until: change.until.map(|t| t.0),
                since: change.since.0,
                reason: change.reason,
                origin: shared.host().to_owned(),
                lifted: change.lifted,
            });
        }
        shared.publish_due(pipeline, now);
        while let Some(event) = pipeline.poll_peer_event() {
            match event {
                PeerEvent::Lost { host } => {
                    tracing::warn!(peer = %host, "web host not heard for shared.peer_timeout: its calls no longer hold this host's judgement back");
                    self.actions.observe_shared(
                        AlertKind::SharedPeerLost,
                        format!("Web host {host} has not been heard through Redis for shared.peer_timeout: its calls are missing from the shared windows until it is back"),
                        serde_json::json!({"peer": host}),
                        now,
                    );
                }
                PeerEvent::Joined { host } => {
                    tracing::info!(peer = %host, "web host heard: sharing windows with it");
                }
            }
        }
    }

    /// One message of the Redis task.
    fn from_redis(&mut self, message: FromRedis, pipeline: &mut Pipeline, now: Timestamp) {
        match message {
            FromRedis::Batch(batch) => {
                // (`recv` made this host's watermark due if the batch has calls.)
                pipeline.receive_from_peer(batch, now, &mut |v| self.verdict(v));
            }
            FromRedis::Suspension(note) => {
                let change = crate::edges::actions::SuspensionChange {
                    token: note.token,
                    since: Timestamp(note.since),
                    until: note.until.map(Timestamp),
                    reason: note.reason,
                    lifted: note.lifted,
                };
                tracing::info!(token_fp = %note.token, origin = %note.origin, lifted = note.lifted,
                    "suspension from another web host applied");
                self.actions.suspension_from_peer(
                    pipeline.enforcer_mut(),
                    &change,
                    &note.origin,
                    now,
                );
            }
            FromRedis::Up { first } => {
                tracing::info!(
                    "shared state: Redis answers, windows shared with the other web hosts"
                );
                if !first {
                    self.actions.observe_shared(
                        AlertKind::SharedStateRestored,
                        "Redis answers again: this host's buffered calls are published and the windows are shared again".into(),
                        serde_json::json!({}),
                        now,
                    );
                }
            }
            FromRedis::Down { error } => {
                tracing::warn!(%error, "shared state: Redis does not answer; going on with this host's calls only, buffering them");
                self.actions.observe_shared(
                    AlertKind::SharedStateLost,
                    format!("Redis does not answer ({error}): this host judges its own calls only until it is back; other hosts' calls are missing from its windows"),
                    serde_json::json!({"error": error}),
                    now,
                );
            }
        }
    }

    /// A record outage begun or ended: alerted once each (`records_write_failed`).
    fn records_outages(&mut self, now: Timestamp) {
        while let Some(outage) = self.records.writer.poll_outage() {
            if let Outage::Began { .. } = &outage {
                self.actions.observe_records_outage(&outage, now);
            }
        }
    }

    /// Time passes: health changes are alerted, suspensions expire, admin requests are
    /// answered, and the enforcer hears of what changed outside it.
    fn tick(&mut self, pipeline: &mut Pipeline, now: Timestamp) {
        if let Some(canary) = &self.canary {
            for probe in canary.results() {
                pipeline.observe_canary(probe.at, probe.latency);
            }
        }
        self.actions.step(pipeline, now);
    }
}

/// Once the capture is attached, drops from every thread the capture capabilities it no longer
/// needs (see [`LiveSource::capabilities_needed`]); other capabilities (root's) are left alone.
fn drop_capture_capabilities(source: &LiveSource) {
    use crate::edges::hardening::{CAPTURE_CAPABILITIES, drop_capabilities};
    let needed = source.capabilities_needed();
    let names = |held: bool| {
        CAPTURE_CAPABILITIES
            .iter()
            .filter(|(cap, _)| (needed & (1 << cap) != 0) == held)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let drop = CAPTURE_CAPABILITIES
        .iter()
        .map(|(cap, _)| 1u64 << cap)
        .fold(0, |all, bit| all | bit)
        & !needed;
    match drop_capabilities(drop) {
        Ok(done) if done.still_holding == 0 => tracing::info!(
            dropped = %names(false),
            kept = %names(true),
            threads = done.threads,
            bounding_set = done.bounding,
            "capabilities the capture no longer needs dropped from every thread"
        ),
        Ok(done) => tracing::warn!(
            threads = done.still_holding,
            "some threads still hold capabilities the capture no longer needs ({})",
            names(false)
        ),
        Err(err) => tracing::warn!(
            "cannot drop the capabilities the capture no longer needs ({}): {err}",
            names(false)
        ),
    }
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
fn reload(origin: &Path, started: &Config, edges: &mut Edges) -> Option<(Config, ActionsReload)> {
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
    let reopened = match OpenedRecords::open(&new) {
        Ok(reopened) => reopened,
        Err(err) => {
            refused(&err);
            return None;
        }
    };
    let actions = match edges.actions.prepare_reload(new.actions()) {
        Ok(prepared) => prepared,
        Err(err) => {
            refused(&err);
            return None;
        }
    };
    edges.records.replace_outputs(reopened);
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
    Some((new, actions))
}

/// The one place where a new configuration takes effect in the running daemon, after
/// [`reload`] accepted it and made what could fail. Everything here is infallible, so a reload
/// applies whole.
fn apply_config(
    (new, actions): (&Config, ActionsReload),
    pipeline: &mut Pipeline,
    edges: &mut Edges,
    stats_tick: &mut Interval,
) {
    pipeline.reconfigure(new.pipeline());
    edges.actions.reconfigure(actions, new.actions());
    edges.telemetry.reconfigure(&new.policy, &new.health);
    edges.telemetry.use_lifecycle(&new.lifecycle);
    *stats_tick = stats_interval(new);
}

/// A config error on one line (a log line), every problem kept.
fn single_line(err: &ConfigError) -> String {
    err.to_string().replace("\n  ", " | ").replace('\n', " ")
}

/// One line for `systemctl status`: capture, interfaces, calls, violations, health.
fn status_line(
    source: &LiveSource,
    config: &Config,
    pipeline: &Pipeline,
    coverage: &Coverage,
) -> String {
    let policy = pipeline.stats().policy;
    let blind: Vec<&str> = coverage
        .blind_spots()
        .iter()
        .map(|s| s.reason.name())
        .collect();
    format!(
        "{} on {}: {} calls, {} violations, server {}{}",
        source.mode(),
        config.capture.interfaces.join(","),
        policy.calls,
        policy.violations,
        if pipeline.health().is_degraded() {
            "DEGRADED"
        } else {
            "responsive"
        },
        if blind.is_empty() {
            String::new()
        } else {
            format!(", BLIND: {}", blind.join(","))
        }
    )
}

enum Event {
    Stop(&'static str),
    Reload,
    KernelReadable,
    Frame(Option<OwnedFrame>),
    Tick,
    Stats,
    Refresh,
    Admin(AdminCommand),
    Shared(FromRedis),
    LossCheck,
    /// Time to look for web server processes whose libssl is not covered yet.
    Rescan,
}

/// How long a stopping daemon waits for its last calls to reach Redis.
const SHARED_CLOSE: Duration = Duration::from_secs(2);

/// Shares windows and suspensions through Redis when `[shared]` is configured: the pipeline
/// publishes its calls and takes the peers', the action edge hands over its suspensions.
fn start_shared(
    config: &Config,
    pipeline: &mut Pipeline,
    actions: &mut Actions,
) -> Result<Option<SharedState>, RunError> {
    let Some(shared) = &config.shared else {
        return Ok(None);
    };
    let mut bytes = [0u8; 8];
    // A clash only makes two instances' numbering one (the readers' dedup skips some calls).
    let _ = getrandom::fill(&mut bytes);
    let instance = u64::from_le_bytes(bytes);
    let longest = crate::stages::policy::longest_window(&config.policy);
    let retention = Retention(crate::shared::model::Span(
        longest.0 + config.policy.reorder_window.span().0,
    ));
    let state = SharedState::start(shared, instance, retention)?;
    pipeline.share_with_peers(ClusterConfig {
        host: state.host().to_owned(),
        instance,
        peer_timeout: shared.peer_timeout.span(),
    });
    actions.share_suspensions();
    tracing::info!(host = %state.host(), url = %redacted_url(&shared.url), "sharing windows and suspensions through Redis");
    Ok(Some(state))
}

/// A Redis URL without a password in it, for the log.
fn redacted_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// The next message of the Redis task; never, without `[shared]`.
async fn from_redis(shared: &mut Option<SharedState>) -> FromRedis {
    match shared {
        Some(shared) => shared.recv().await,
        None => std::future::pending().await,
    }
}

/// Starts the metrics and admin listener (`[api]`), unless it is disabled.
fn start_api(
    config: &Config,
    shared: &std::sync::Arc<Shared>,
    commands: mpsc::Sender<AdminCommand>,
) -> Result<Option<ApiServer>, RunError> {
    let api = &config.api;
    if !api.enabled {
        tracing::info!("API listener off (api.enabled = false)");
        return Ok(None);
    }
    let bearer = api.token_file.as_deref().map(Bearer::load).transpose()?;
    let admin = bearer.is_some();
    let server = ApiServer::start(api, shared.clone(), bearer, commands)?;
    tracing::info!(
        address = %server.address(),
        admin_api = if admin { "on" } else { "off (no api.token_file)" },
        "API listening: GET /metrics, /api/v1/"
    );
    Ok(Some(server))
}

/// Refreshes the metrics and the admin API's view from every counter.
fn refresh_telemetry(source: &LiveSource, pipeline: &Pipeline, edges: &mut Edges) {
    let now = wall_clock();
    let suspensions = active_suspensions(edges, now);
    let status = counters(source, pipeline, edges, suspensions.len());
    let loads = pipeline.health().load_by_token(now);
    edges
        .telemetry
        .refresh_long_term(edges.actions.store(), now);
    edges.telemetry.refresh(now, status, &loads, &suspensions);
}

/// The suspensions in force, as the store holds them (none, logged, when it cannot be read).
fn active_suspensions(edges: &Edges, now: Timestamp) -> Vec<Suspension> {
    edges
        .actions
        .store()
        .active_suspensions(now)
        .unwrap_or_else(|err| {
            tracing::error!(error = %err, "cannot read the suspensions in force");
            Vec::new()
        })
}

/// Every counter as one [`Snapshot`]: the kernel's (or libpcap's), then each stage's.
fn counters(
    source: &LiveSource,
    pipeline: &Pipeline,
    edges: &Edges,
    suspensions_active: usize,
) -> Snapshot {
    let records = &edges.records;
    let (kernel, ring, pcap) = match source.counters() {
        CaptureCounters::Kernel { counters, drain } => {
            let kernel = match counters {
                Ok(k) => KernelSection::Counters(k),
                Err(err) => KernelSection::Unreadable(err),
            };
            (Some(kernel), Some(drain), None)
        }
        CaptureCounters::Pcap(interfaces) => (None, None, Some(interfaces)),
    };
    let stats = pipeline.stats();
    let (tracked_connections, tracked_tokens) = pipeline.tracked();
    let actions = &edges.actions;
    Snapshot {
        mode: source.mode().to_owned(),
        tls_libraries: source.tls_libraries(),
        calls_written: records.writer.stats().calls_written,
        violations_written: records.writer.stats().violations_written,
        records: Some(records.writer.stats().clone()),
        kernel,
        ring,
        pcap,
        problems: stats
            .problems()
            .into_iter()
            .map(|(name, n)| (name.to_owned(), n))
            .collect(),
        degraded: pipeline.health().is_degraded(),
        server_time_p95_s: pipeline.health().assessment().ttfb_p95_s,
        coverage: Some(
            edges
                .coverage
                .blind_spots()
                .iter()
                .map(BlindSpotCounts::from)
                .collect(),
        ),
        pipeline: PipelineCounters::from(&stats),
        tracked: Tracked {
            connections: tracked_connections,
            tokens: tracked_tokens,
        },
        actions: actions.stats().clone(),
        suspensions_active,
        hooks: actions.hook_runs(),
        redcap_module: actions.publish_stats().cloned(),
        directory: Some(edges.telemetry.directory().status()),
        alerts: AlertCounters {
            raise: actions.alert_stats().clone(),
            delivery: actions.delivery_stats(),
        },
        cluster: edges
            .shared
            .as_ref()
            .map(|shared| cluster_section(shared, pipeline, wall_clock())),
    }
}

/// The `cluster` section: the Redis edge's counters and the cluster stage's peers.
fn cluster_section(shared: &SharedState, pipeline: &Pipeline, now: Timestamp) -> ClusterSection {
    let io = shared.stats();
    let stats = pipeline.stats();
    let cluster = pipeline.cluster();
    let merge = cluster.map(|c| c.stats().clone()).unwrap_or_default();
    ClusterSection {
        host: shared.host().to_owned(),
        up: io.up,
        calls_published: io.calls_published,
        calls_received: merge.calls_received,
        calls_late: stats.policy.late_peer_calls,
        calls_deduplicated: merge.calls_deduplicated,
        buffered_calls: io.buffered_calls,
        buffered_dropped: io.buffered_dropped,
        stream_capped: io.stream_capped,
        entries_rejected: io.entries_rejected,
        suspensions_published: io.suspensions_published,
        suspensions_received: io.suspensions_received,
        outages: io.outages,
        last_error: io.last_error,
        host_name_conflicts: merge.host_name_conflicts,
        peers: cluster
            .map(|c| c.peers())
            .unwrap_or_default()
            .into_iter()
            .map(|p| PeerStatus {
                last_heartbeat_age_s: now.0.saturating_sub(p.last_heard.0) as f64 / 1e9,
                name: p.host,
                calls_received: p.calls_received,
                live: p.live,
            })
            .collect(),
    }
}

/// The record outputs (the shared [`RecordWriter`], appending) and the stats file.
struct Records {
    writer: RecordWriter,
    stats: Option<PathBuf>,
}

/// The files a configuration names, opened (for a start or a reload).
struct OpenedRecords {
    files: RecordFiles,
    stats: Option<PathBuf>,
}

impl Records {
    fn open(config: &Config) -> Result<Records, RunError> {
        let opened = OpenedRecords::open(config)?;
        Ok(Records {
            writer: RecordWriter::new(opened.files),
            stats: opened.stats,
        })
    }

    /// Takes a reload's files (new paths, or the same paths after logrotate moved the files);
    /// the counts carry on.
    fn replace_outputs(&mut self, reopened: OpenedRecords) {
        self.writer.replace_files(reopened.files);
        self.stats = reopened.stats;
    }

    /// Replaces the stats file atomically (write a sibling, rename over). A failure is logged:
    /// like the records, the stats file never stops the daemon.
    fn write_stats(&self, stats: &Snapshot) {
        let Some(path) = &self.stats else {
            return;
        };
        let mut partial = path.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let text = format!("{stats}\n");
        let written = std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, path));
        if let Err(err) = written {
            let _ = std::fs::remove_file(&partial);
            tracing::error!(path = %path.display(), error = %err, "cannot write the stats file");
        }
    }
}

impl OpenedRecords {
    fn open(config: &Config) -> Result<OpenedRecords, RunError> {
        let output = &config.output;
        let paths = RecordPaths {
            calls: output.calls.clone(),
            violations: output.violations.clone(),
            decisions: output.decisions.clone(),
        };
        let files = RecordFiles::open(&paths, WriteMode::Append)
            .map_err(|(path, source)| RunError::Write { path, source })?;
        Ok(OpenedRecords {
            files,
            stats: output.stats.clone(),
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
}
