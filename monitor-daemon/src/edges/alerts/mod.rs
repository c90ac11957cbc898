//! Alerts to the admin team: what happened ([`Alert`]), to whom it goes (sinks), and getting it
//! there without ever holding up the capture path.
//!
//! [`Alerts::raise`] coalesces repeats, renders one body per sink and puts it in a durable
//! [`Outbox`]; a [`DeliveryWorker`] thread posts due items with retries. Alerts name tokens by
//! fingerprint and masked form only: no type here can hold a raw token.

mod config;
mod cooldown;
mod delivery;
mod jira;
mod outbox;
mod render;
mod signing;
mod sink_health;
pub(crate) mod time;

#[cfg(test)]
mod jira_tests;
#[cfg(test)]
pub(crate) mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;

pub(crate) use delivery::agent as http_agent;
pub(crate) use delivery::wall_now;
pub(crate) use delivery::{DeliveryReport, DeliveryStats, DeliveryWorker};
#[cfg(test)]
pub(crate) use outbox::MemoryOutbox;
pub(crate) use outbox::{Outbox, OutboxError, OutboxItem};
pub(crate) use signing::{SecretError, WebhookSecret};

use crate::edges::directory::Directory;
use crate::shared::model::{Span, Timestamp};
use crate::shared::settings::WebhookUrl;
use crate::shared::token::{MaskedToken, TokenFingerprint};
use crate::stages::policy::Violation;
pub(crate) use config::{AlertsConfig, SinkKind};
use cooldown::Coalescer;

/// The kinds of alert, as named in `[[alerts.sinks]] events` and in payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AlertKind {
    Violation,
    Degraded,
    Recovered,
    Suspended,
    Lifted,
    CaptureLoss,
    CaptureBlind,
    /// A client address went over the refused-calls rule: it is trying tokens.
    Probing,
    /// The call, violation or decision records cannot be written (a full disk): dropped.
    RecordsWriteFailed,
    /// Another sink has failed every attempt for `alerts.sink_failing_after`.
    SinkFailing,
    /// A sink announced as failing delivered again.
    SinkRecovered,
    /// Redis (`[shared]`) does not answer: this host goes on with its own calls only.
    SharedStateLost,
    /// Redis answers again: buffered calls are being published.
    SharedStateRestored,
    /// Another web host has not been heard for `shared.peer_timeout`.
    SharedPeerLost,
}

impl AlertKind {
    pub(crate) fn all() -> Vec<AlertKind> {
        vec![
            AlertKind::Violation,
            AlertKind::Degraded,
            AlertKind::Recovered,
            AlertKind::Suspended,
            AlertKind::Lifted,
            AlertKind::CaptureLoss,
            AlertKind::CaptureBlind,
            AlertKind::Probing,
            AlertKind::RecordsWriteFailed,
            AlertKind::SinkFailing,
            AlertKind::SinkRecovered,
            AlertKind::SharedStateLost,
            AlertKind::SharedStateRestored,
            AlertKind::SharedPeerLost,
        ]
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AlertKind::Violation => "violation",
            AlertKind::Degraded => "degraded",
            AlertKind::Recovered => "recovered",
            AlertKind::Suspended => "suspended",
            AlertKind::Lifted => "lifted",
            AlertKind::CaptureLoss => "capture_loss",
            AlertKind::CaptureBlind => "capture_blind",
            AlertKind::Probing => "probing",
            AlertKind::RecordsWriteFailed => "records_write_failed",
            AlertKind::SinkFailing => "sink_failing",
            AlertKind::SinkRecovered => "sink_recovered",
            AlertKind::SharedStateLost => "shared_state_lost",
            AlertKind::SharedStateRestored => "shared_state_restored",
            AlertKind::SharedPeerLost => "shared_peer_lost",
        }
    }

    pub(crate) fn severity(self) -> &'static str {
        match self {
            AlertKind::Degraded
            | AlertKind::Suspended
            | AlertKind::CaptureBlind
            | AlertKind::RecordsWriteFailed => "critical",
            AlertKind::Violation
            | AlertKind::CaptureLoss
            | AlertKind::Probing
            | AlertKind::SinkFailing
            | AlertKind::SharedStateLost
            | AlertKind::SharedPeerLost => "warning",
            AlertKind::Recovered
            | AlertKind::Lifted
            | AlertKind::SinkRecovered
            | AlertKind::SharedStateRestored => "info",
        }
    }
}

/// A token as alerts may name it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct TokenRef {
    pub(crate) fingerprint: TokenFingerprint,
    /// Absent when the token was named by fingerprint alone (e.g. a manual suspension).
    pub(crate) masked: Option<MaskedToken>,
}

/// Something the admin team should hear about. `evidence` is the decision's own record (calls,
/// windows, percentiles, shares); it goes to generic sinks whole and is never a raw token.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Alert {
    /// A token broke a rule (a warning: suspension is a separate decision).
    Violation {
        at: Timestamp,
        token: TokenRef,
        rule: String,
        limit: u32,
        window: Span,
        count: u32,
        evidence: serde_json::Value,
    },
    /// The server's responsiveness crossed its thresholds.
    Degraded {
        at: Timestamp,
        summary: String,
        evidence: serde_json::Value,
    },
    Recovered {
        at: Timestamp,
        summary: String,
        evidence: serde_json::Value,
    },
    Suspended {
        at: Timestamp,
        token: TokenRef,
        /// `None`: until lifted by hand.
        until: Option<Timestamp>,
        reason: String,
        evidence: serde_json::Value,
    },
    Lifted {
        at: Timestamp,
        token: TokenRef,
        reason: String,
        evidence: serde_json::Value,
    },
    /// The capture dropped events, so calls may have been missed.
    CaptureLoss {
        at: Timestamp,
        lost: u64,
        evidence: serde_json::Value,
    },
    /// Traffic the capture cannot read (HTTPS nobody decrypts, another protocol, lost request
    /// starts): API calls in it are not counted.
    CaptureBlind {
        at: Timestamp,
        /// The blind spot's name (`https_unread`, …).
        reason: String,
        /// What it means and what to do.
        advice: String,
        evidence: serde_json::Value,
    },
    /// A client address made more refused calls (401/403) than the refused-calls rule allows:
    /// it is trying tokens. Named by address, as fail2ban would ban it.
    Probing {
        at: Timestamp,
        client: std::net::IpAddr,
        limit: u32,
        window: Span,
        count: u32,
        evidence: serde_json::Value,
    },
    /// Records cannot be written (told once per outage): they are dropped, counted, until a
    /// write works again. Capture and enforcement go on.
    RecordsWriteFailed {
        at: Timestamp,
        path: String,
        /// `no_space` or `io_error`.
        reason: String,
        error: String,
        evidence: serde_json::Value,
    },
    /// A sink has failed every attempt since `since`: alerts to it wait in the outbox (and are
    /// given up past `alerts.max_age`). Sent to the other sinks, once per outage.
    SinkFailing {
        at: Timestamp,
        sink: String,
        since: Timestamp,
        failed_attempts: u64,
        /// The last attempt's error or status, as the delivery audit records it.
        last_error: String,
        evidence: serde_json::Value,
    },
    /// A sink announced as failing delivered again (sent to the other sinks).
    SinkRecovered {
        at: Timestamp,
        sink: String,
        /// When its outage began.
        since: Timestamp,
        failed_attempts: u64,
        evidence: serde_json::Value,
    },
    /// The state shared with the other web hosts (`[shared]`): Redis lost or restored, a peer
    /// lost. `kind` is one of the three `shared_*` kinds.
    Shared {
        at: Timestamp,
        kind: AlertKind,
        summary: String,
        evidence: serde_json::Value,
    },
}

impl Alert {
    /// A warning for one policy violation.
    pub(crate) fn violation(
        violation: &Violation,
        masked: Option<MaskedToken>,
        evidence: serde_json::Value,
    ) -> Alert {
        Alert::Violation {
            at: violation.ts,
            token: TokenRef {
                fingerprint: violation.token,
                masked,
            },
            rule: violation.rule.clone(),
            limit: violation.limit,
            window: violation.window,
            count: violation.count,
            evidence,
        }
    }

    /// A warning for a client address probing for tokens.
    pub(crate) fn probing(violation: &crate::stages::policy::ClientViolation) -> Alert {
        Alert::Probing {
            at: violation.ts,
            client: violation.client,
            limit: violation.limit,
            window: violation.window,
            count: violation.count,
            evidence: serde_json::json!({"rule": crate::stages::policy::REFUSED_CALLS_RULE}),
        }
    }

    pub(crate) fn kind(&self) -> AlertKind {
        match self {
            Alert::Violation { .. } => AlertKind::Violation,
            Alert::Degraded { .. } => AlertKind::Degraded,
            Alert::Recovered { .. } => AlertKind::Recovered,
            Alert::Suspended { .. } => AlertKind::Suspended,
            Alert::Lifted { .. } => AlertKind::Lifted,
            Alert::CaptureLoss { .. } => AlertKind::CaptureLoss,
            Alert::CaptureBlind { .. } => AlertKind::CaptureBlind,
            Alert::Probing { .. } => AlertKind::Probing,
            Alert::RecordsWriteFailed { .. } => AlertKind::RecordsWriteFailed,
            Alert::SinkFailing { .. } => AlertKind::SinkFailing,
            Alert::SinkRecovered { .. } => AlertKind::SinkRecovered,
            Alert::Shared { kind, .. } => *kind,
        }
    }

    pub(crate) fn at(&self) -> Timestamp {
        match self {
            Alert::Violation { at, .. }
            | Alert::Degraded { at, .. }
            | Alert::Recovered { at, .. }
            | Alert::Suspended { at, .. }
            | Alert::Lifted { at, .. }
            | Alert::CaptureLoss { at, .. }
            | Alert::CaptureBlind { at, .. }
            | Alert::Probing { at, .. }
            | Alert::RecordsWriteFailed { at, .. }
            | Alert::SinkFailing { at, .. }
            | Alert::SinkRecovered { at, .. }
            | Alert::Shared { at, .. } => *at,
        }
    }

    pub(crate) fn token(&self) -> Option<&TokenRef> {
        match self {
            Alert::Violation { token, .. }
            | Alert::Suspended { token, .. }
            | Alert::Lifted { token, .. } => Some(token),
            _ => None,
        }
    }

    pub(crate) fn evidence(&self) -> &serde_json::Value {
        match self {
            Alert::Violation { evidence, .. }
            | Alert::Degraded { evidence, .. }
            | Alert::Recovered { evidence, .. }
            | Alert::Suspended { evidence, .. }
            | Alert::Lifted { evidence, .. }
            | Alert::CaptureLoss { evidence, .. }
            | Alert::CaptureBlind { evidence, .. }
            | Alert::Probing { evidence, .. }
            | Alert::RecordsWriteFailed { evidence, .. }
            | Alert::SinkFailing { evidence, .. }
            | Alert::SinkRecovered { evidence, .. }
            | Alert::Shared { evidence, .. } => evidence,
        }
    }

    /// Alerts that can repeat quickly are coalesced per key; state changes (degraded, recovered,
    /// suspended, lifted) always go out.
    fn coalescing_key(&self) -> Option<String> {
        match self {
            Alert::Violation { token, rule, .. } => {
                Some(format!("violation/{}/{rule}", token.fingerprint))
            }
            Alert::CaptureLoss { .. } => Some("capture_loss".into()),
            Alert::CaptureBlind { reason, .. } => Some(format!("capture_blind/{reason}")),
            Alert::Probing { client, .. } => Some(format!("probing/{client}")),
            _ => None,
        }
    }
}

/// How many alerts one sent alert stands for beyond itself (the cooldown's summary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Repeats {
    /// Alerts for the same token and rule that were held back...
    pub(crate) count: u32,
    /// ...since this time (the previous alert sent for them).
    pub(crate) since: Timestamp,
}

/// One alert as it leaves the coalescer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Outgoing {
    pub(crate) alert: Alert,
    pub(crate) repeats: Option<Repeats>,
}

/// A configured sink, ready to send to: its secret has been read and checked.
pub(crate) struct Sink {
    pub(crate) name: String,
    pub(crate) kind: SinkKind,
    pub(crate) url: WebhookUrl,
    pub(crate) secret: Option<WebhookSecret>,
    /// A JIRA sink's project, issue type and credential.
    pub(crate) jira: Option<jira::JiraTarget>,
    pub(crate) events: Vec<AlertKind>,
}

/// The clock alerts are queued and retried by: the wall clock, or a test's.
pub(crate) type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The sinks, shared by the raising side and the delivery thread.
pub(crate) struct Sinks(pub(crate) Vec<Sink>);

impl Sinks {
    fn get(&self, name: &str) -> Option<&Sink> {
        self.0.iter().find(|s| s.name == name)
    }

    /// One outbox item per sink that wants `outgoing`'s kind, except the sink named `except`.
    /// `queued` (the outbox's clock) is when each item's age starts.
    fn render(
        &self,
        outgoing: &Outgoing,
        owner: Option<&crate::edges::directory::Owner>,
        host: &str,
        queued: Timestamp,
        except: Option<&str>,
    ) -> Vec<OutboxItem> {
        let kind = outgoing.alert.kind();
        self.0
            .iter()
            .filter(|s| s.events.contains(&kind) && Some(s.name.as_str()) != except)
            .map(|sink| {
                let id = signing::new_webhook_id();
                let payload = match &sink.jira {
                    Some(target) => render::jira(target, outgoing, owner, host),
                    None => render::body(sink.kind, outgoing, owner, &id, host),
                };
                OutboxItem {
                    id,
                    sink: sink.name.clone(),
                    payload,
                    created: queued,
                    attempts: 0,
                    next_attempt: Timestamp(0),
                }
            })
            .collect()
    }
}

/// A sink that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum AlertsSetupError {
    #[error("`alerts.sinks[{index}].secret_file` {path}: {source}")]
    Secret {
        index: usize,
        path: PathBuf,
        source: SecretError,
    },
    #[error("`alerts.sinks[{index}].credentials_file` {path}: {source}")]
    JiraCredentials {
        index: usize,
        path: PathBuf,
        source: jira::JiraCredentialsError,
    },
    #[error("cannot start the alert delivery thread: {0}")]
    Thread(std::io::Error),
}

/// Counters of the raising side.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct AlertStats {
    pub(crate) raised: u64,
    /// Held back by the cooldown (summarised in a later alert).
    pub(crate) coalesced: u64,
    /// Coalesced under one key per alert kind because the cooldown tracked as many keys as it
    /// may (100,000 tokens): a flood of distinct tokens.
    pub(crate) coalesced_overflow: u64,
    /// Bodies put in the outbox (one per alert and sink).
    pub(crate) enqueued: u64,
    /// Bodies the outbox refused because it was full.
    pub(crate) refused_full: u64,
    /// Bodies lost to an outbox (store) failure.
    pub(crate) store_errors: u64,
}

/// What the decision engine calls: coalesces, renders per sink and enqueues. Never does network
/// I/O; its one blocking step is the outbox's own write.
pub(crate) struct Alerts {
    sinks: Arc<Sinks>,
    outbox: Arc<dyn Outbox>,
    coalescer: Coalescer,
    host: String,
    wake: Option<SyncSender<()>>,
    stats: AlertStats,
    /// Who tokens belong to: alerts name the owner when it is known.
    directory: Directory,
    clock: Clock,
}

impl Alerts {
    /// Reads the sinks' secrets; `host` names this machine in every alert.
    pub(crate) fn new(
        config: &AlertsConfig,
        outbox: Arc<dyn Outbox>,
        host: String,
    ) -> Result<Alerts, AlertsSetupError> {
        let mut sinks = Vec::with_capacity(config.sinks.len());
        for (index, sink) in config.sinks.iter().enumerate() {
            let secret =
                match &sink.secret_file {
                    Some(path) => Some(WebhookSecret::read(path).map_err(|source| {
                        AlertsSetupError::Secret {
                            index,
                            path: path.clone(),
                            source,
                        }
                    })?),
                    None => None,
                };
            let jira = match (&sink.credentials_file, sink.kind) {
                (Some(path), SinkKind::Jira) => Some(
                    jira::JiraTarget::read(
                        path,
                        sink.project.as_deref().unwrap_or(""),
                        sink.issue_type.as_deref().unwrap_or("Task"),
                    )
                    .map_err(|source| AlertsSetupError::JiraCredentials {
                        index,
                        path: path.clone(),
                        source,
                    })?,
                ),
                _ => None,
            };
            sinks.push(Sink {
                name: sink.name.clone(),
                kind: sink.kind,
                url: sink.url.clone(),
                secret,
                jira,
                events: sink.events.clone(),
            });
        }
        Ok(Alerts {
            sinks: Arc::new(Sinks(sinks)),
            outbox,
            coalescer: Coalescer::new(config.cooldown.span()),
            host,
            wake: None,
            stats: AlertStats::default(),
            directory: Directory::off(),
            clock: Arc::new(wall_now),
        })
    }

    /// Starts the thread that delivers what [`Alerts::raise`] enqueues.
    pub(crate) fn start_delivery(
        &mut self,
        config: &AlertsConfig,
        on_report: Box<dyn FnMut(&DeliveryReport) + Send>,
    ) -> Result<DeliveryWorker, AlertsSetupError> {
        self.start_delivery_with_clock(config, on_report, Arc::new(wall_now))
    }

    /// [`Alerts::start_delivery`] with the outbox's age and retries measured by `clock`.
    pub(crate) fn start_delivery_with_clock(
        &mut self,
        config: &AlertsConfig,
        on_report: Box<dyn FnMut(&DeliveryReport) + Send>,
        clock: Clock,
    ) -> Result<DeliveryWorker, AlertsSetupError> {
        self.clock = clock.clone();
        let worker = DeliveryWorker::start(
            delivery::RetryPolicy::from_config(config),
            self.sinks.clone(),
            self.outbox.clone(),
            on_report,
            delivery::Announce {
                health: sink_health::SinkHealth::new(config.sink_failing_after.span()),
                host: self.host.clone(),
            },
            clock,
        )
        .map_err(AlertsSetupError::Thread)?;
        self.wake = Some(worker.waker());
        Ok(worker)
    }

    /// Sends `alert` to every sink that wants its kind, unless the cooldown holds it back.
    /// `now` is the caller's clock (capture time in replays).
    pub(crate) fn raise(&mut self, alert: Alert, now: Timestamp) {
        self.stats.raised += 1;
        match self.coalescer.admit(alert, now) {
            Some(outgoing) => self.enqueue(&outgoing),
            None => self.stats.coalesced += 1,
        }
        self.stats.coalesced_overflow = self.coalescer.overflowed();
    }

    /// Sends the summaries of repeats whose cooldown has run out with no newer alert to carry
    /// them. Call now and then (e.g. once a second).
    pub(crate) fn tick(&mut self, now: Timestamp) {
        for outgoing in self.coalescer.expire(now) {
            self.enqueue(&outgoing);
        }
    }

    pub(crate) fn stats(&self) -> &AlertStats {
        &self.stats
    }

    /// Names token owners from `directory` in the alerts raised from now on.
    pub(crate) fn use_directory(&mut self, directory: Directory) {
        self.directory = directory;
    }

    fn enqueue(&mut self, outgoing: &Outgoing) {
        let kind = outgoing.alert.kind();
        let owner = outgoing
            .alert
            .token()
            .and_then(|t| self.directory.owner(&t.fingerprint));
        // An item's age (alerts.max_age) runs on the delivery thread's clock, not the caller's
        // (capture time in replays).
        let queued = (self.clock)();
        for item in self
            .sinks
            .render(outgoing, owner.as_deref(), &self.host, queued, None)
        {
            let sink = item.sink.clone();
            match self.outbox.enqueue(item) {
                Ok(()) => self.stats.enqueued += 1,
                Err(OutboxError::Full { limit }) => {
                    self.stats.refused_full += 1;
                    tracing::warn!(sink = %sink, limit, alert = kind.as_str(),
                        "alert outbox full: alert dropped");
                }
                Err(err) => {
                    self.stats.store_errors += 1;
                    tracing::error!(sink = %sink, alert = kind.as_str(), error = %err,
                        "alert not queued");
                }
            }
        }
        if let Some(wake) = &self.wake {
            // A full wake channel means the worker is already due to look.
            let _ = wake.try_send(());
        }
    }
}

/// This machine's name for alerts, or `unknown` if the system will not say.
pub(crate) fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..len]).into_owned()
}
