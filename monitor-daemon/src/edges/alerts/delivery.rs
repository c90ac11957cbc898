//! The delivery thread: posts due outbox items to their sinks, with retries.
//!
//! Runs on its own OS thread with a blocking HTTP client, so a slow or dead sink can delay only
//! other alerts, never capture or decisions. 2xx is delivered; network errors, timeouts, 408,
//! 425, 429 and 5xx are retried with capped exponential backoff and full jitter (or after
//! `Retry-After`) until the item is older than `alerts.max_age`; any other status is given up
//! at once. The `webhook-id` never changes. A sink failing for `alerts.sink_failing_after` is
//! announced to the other sinks through the same outbox.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::AlertsConfig;
use super::outbox::{Outbox, OutboxError, OutboxItem};
use super::sink_health::SinkHealth;
use super::{Clock, Outgoing, Sink, Sinks};
use crate::shared::model::{Span, Timestamp};

/// Items taken from the outbox per look.
const BATCH: usize = 32;
/// How often the thread looks for due items when nothing wakes it.
const POLL: Duration = Duration::from_millis(250);
/// A `Retry-After` longer than this is treated as this: an alert an hour late is still useful,
/// one a day late is not, and a wrong header should not park the queue.
const MAX_RETRY_AFTER: Span = Span::from_secs(3600);

#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) base: Span,
    pub(crate) cap: Span,
    pub(crate) max_age: Span,
    pub(crate) max_attempts: Option<u32>,
    pub(crate) request_timeout: Span,
}

impl RetryPolicy {
    pub(crate) fn from_config(config: &AlertsConfig) -> RetryPolicy {
        RetryPolicy {
            base: config.backoff_base.span(),
            cap: config.backoff_cap.span(),
            max_age: config.max_age.span(),
            max_attempts: config.max_attempts,
            request_timeout: config.request_timeout.span(),
        }
    }

    /// Full jitter: uniform in [0, min(cap, base * 2^(attempt-1))].
    pub(crate) fn backoff(&self, attempt: u32, random: u64) -> Span {
        let shift = attempt.saturating_sub(1).min(63);
        let ceiling = self.base.0.saturating_mul(1u64 << shift).min(self.cap.0);
        Span(random % ceiling.saturating_add(1))
    }

    /// What becomes of `item` after `outcome`, its `attempt`th attempt, at `now`: retried
    /// until it is `max_age` old (the last retry falls at that age), then given up.
    pub(crate) fn decide(
        &self,
        outcome: Attempt,
        item: &OutboxItem,
        attempt: u32,
        now: Timestamp,
        random: u64,
    ) -> DeliveryResult {
        let horizon = item.created.plus(self.max_age);
        match outcome {
            Attempt::Delivered(status) => DeliveryResult::Delivered { status },
            Attempt::Rejected(status) => DeliveryResult::GaveUp {
                status: Some(status),
                error: None,
                reason: GiveUpReason::Rejected,
            },
            Attempt::Retry { status, error, .. } if now >= horizon => DeliveryResult::GaveUp {
                status,
                error,
                reason: GiveUpReason::TooOld,
            },
            Attempt::Retry { status, error, .. }
                if self.max_attempts.is_some_and(|max| attempt >= max) =>
            {
                DeliveryResult::GaveUp {
                    status,
                    error,
                    reason: GiveUpReason::OutOfAttempts,
                }
            }
            Attempt::Retry {
                status,
                retry_after,
                error,
            } => {
                let delay = retry_after
                    .map(|d| d.min(MAX_RETRY_AFTER))
                    .unwrap_or_else(|| self.backoff(attempt, random));
                DeliveryResult::WillRetry {
                    status,
                    error,
                    next_attempt: now.plus(delay).min(horizon),
                }
            }
        }
    }
}

/// What the delivery thread needs to tell the other sinks that one is failing.
pub(crate) struct Announce {
    pub(crate) health: SinkHealth,
    /// This machine's name, as in every alert.
    pub(crate) host: String,
}

/// What happened to one attempt, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct DeliveryReport {
    pub(crate) id: String,
    pub(crate) sink: String,
    /// 1 for the first attempt.
    pub(crate) attempt: u32,
    #[serde(serialize_with = "crate::shared::model::as_secs")]
    pub(crate) at: Timestamp,
    pub(crate) result: DeliveryResult,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub(crate) enum DeliveryResult {
    Delivered {
        status: u16,
    },
    WillRetry {
        status: Option<u16>,
        error: Option<String>,
        #[serde(serialize_with = "crate::shared::model::as_secs")]
        next_attempt: Timestamp,
    },
    GaveUp {
        status: Option<u16>,
        error: Option<String>,
        reason: GiveUpReason,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum GiveUpReason {
    /// The sink answered with a status that retrying cannot change (e.g. 400, 403, 404).
    Rejected,
    /// Every attempt failed until the alert was `alerts.max_age` old.
    TooOld,
    /// `alerts.max_attempts` (when set) attempts failed.
    OutOfAttempts,
    /// The item names a sink that is no longer configured.
    UnknownSink,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct DeliveryStats {
    pub(crate) attempts: u64,
    pub(crate) delivered: u64,
    pub(crate) retries_scheduled: u64,
    pub(crate) gave_up: u64,
    /// Of `gave_up`: failed until they were `alerts.max_age` old.
    pub(crate) gave_up_too_old: u64,
    pub(crate) outbox_errors: u64,
    /// Sinks failing for `alerts.sink_failing_after` or longer (announced, not yet recovered).
    pub(crate) failing_sinks: Vec<String>,
    /// `sink_failing` and `sink_recovered` alerts queued for the other sinks.
    pub(crate) sink_alerts: u64,
}

/// Handle of the delivery thread; dropping it stops the thread (after the attempt in flight).
pub(crate) struct DeliveryWorker {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    wake: SyncSender<()>,
    stats: Arc<Mutex<DeliveryStats>>,
}

impl DeliveryWorker {
    pub(crate) fn start(
        policy: RetryPolicy,
        sinks: Arc<Sinks>,
        outbox: Arc<dyn Outbox>,
        on_report: Box<dyn FnMut(&DeliveryReport) + Send>,
        announce: Announce,
        clock: Clock,
    ) -> std::io::Result<DeliveryWorker> {
        let (wake, woken) = sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(DeliveryStats::default()));
        let mut worker = Worker {
            policy,
            agent: agent(policy.request_timeout),
            sinks,
            outbox,
            on_report,
            announce,
            clock,
            stop: stop.clone(),
            stats: stats.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("alert-delivery".into())
            .spawn(move || worker.run(woken))?;
        Ok(DeliveryWorker {
            thread: Some(thread),
            stop,
            wake,
            stats,
        })
    }

    pub(crate) fn waker(&self) -> SyncSender<()> {
        self.wake.clone()
    }

    pub(crate) fn stats(&self) -> DeliveryStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops the thread and waits for it (at most one request timeout).
    pub(crate) fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.wake.try_send(());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for DeliveryWorker {
    fn drop(&mut self) {
        self.shut_down();
    }
}

pub(crate) fn agent(timeout: Span) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_nanos(timeout.0)))
        .http_status_as_error(false)
        // A webhook that redirects is misconfigured; following it would re-send the body
        // somewhere the admin did not name.
        .max_redirects(0)
        .max_redirects_will_error(false)
        .user_agent(concat!("redcap-monitor/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .build()
        .into()
}

/// The wall clock as a [`Timestamp`]; the delivery thread is an edge and may read it.
pub(crate) fn wall_now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64),
    )
}

/// How one attempt ended, before the retry policy looks at it.
pub(crate) enum Attempt {
    Delivered(u16),
    Retry {
        status: Option<u16>,
        retry_after: Option<Span>,
        error: Option<String>,
    },
    Rejected(u16),
}

struct Worker {
    policy: RetryPolicy,
    agent: ureq::Agent,
    sinks: Arc<Sinks>,
    outbox: Arc<dyn Outbox>,
    on_report: Box<dyn FnMut(&DeliveryReport) + Send>,
    announce: Announce,
    clock: Clock,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<DeliveryStats>>,
}

impl Worker {
    fn run(&mut self, woken: Receiver<()>) {
        while !self.stop.load(Ordering::Relaxed) {
            let due = match self.outbox.due((self.clock)(), BATCH) {
                Ok(due) => due,
                Err(err) => {
                    self.count(|s| s.outbox_errors += 1);
                    tracing::error!(error = %err, "cannot read the alert outbox");
                    Vec::new()
                }
            };
            let full_batch = due.len() == BATCH;
            for item in due {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                self.deliver(item);
            }
            if full_batch {
                continue;
            }
            match woken.recv_timeout(POLL) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn deliver(&mut self, item: OutboxItem) {
        let attempt = item.attempts.saturating_add(1);
        let result = match self.sinks.get(&item.sink) {
            None => DeliveryResult::GaveUp {
                status: None,
                error: None,
                reason: GiveUpReason::UnknownSink,
            },
            Some(sink) => {
                self.count(|s| s.attempts += 1);
                let outcome = post(&self.agent, sink, &item);
                self.policy
                    .decide(outcome, &item, attempt, (self.clock)(), random_u64())
            }
        };
        let stored = match &result {
            DeliveryResult::Delivered { .. } => self.outbox.delivered(&item.id),
            DeliveryResult::WillRetry { next_attempt, .. } => {
                self.outbox.reschedule(&item.id, attempt, *next_attempt)
            }
            DeliveryResult::GaveUp { .. } => self.outbox.abandon(&item.id),
        };
        if let Err(err) = stored {
            self.count(|s| s.outbox_errors += 1);
            tracing::error!(id = %item.id, sink = %item.sink, error = %err,
                "cannot record an alert delivery in the outbox");
        }
        match &result {
            DeliveryResult::Delivered { status } => {
                self.count(|s| s.delivered += 1);
                tracing::debug!(id = %item.id, sink = %item.sink, attempt, status, "alert delivered");
            }
            DeliveryResult::WillRetry { status, error, .. } => {
                self.count(|s| s.retries_scheduled += 1);
                tracing::info!(id = %item.id, sink = %item.sink, attempt, ?status, ?error,
                    "alert delivery failed; will retry");
            }
            DeliveryResult::GaveUp {
                status,
                error,
                reason,
            } => {
                self.count(|s| {
                    s.gave_up += 1;
                    s.gave_up_too_old += u64::from(*reason == GiveUpReason::TooOld);
                });
                tracing::warn!(id = %item.id, sink = %item.sink, attempt, ?status, ?error, ?reason,
                    "alert delivery given up");
            }
        }
        let now = (self.clock)();
        self.watch_sink(&item.sink, &result, now);
        let report = DeliveryReport {
            id: item.id,
            sink: item.sink,
            attempt,
            at: now,
            result,
        };
        (self.on_report)(&report);
    }

    /// Follows `sink`'s outage and tells the other sinks when it starts to matter and ends.
    fn watch_sink(&mut self, sink: &str, result: &DeliveryResult, now: Timestamp) {
        let change = match result {
            DeliveryResult::Delivered { .. } => self.announce.health.delivered(sink, now),
            DeliveryResult::GaveUp {
                reason: GiveUpReason::UnknownSink,
                ..
            } => None,
            DeliveryResult::WillRetry { status, error, .. }
            | DeliveryResult::GaveUp { status, error, .. } => {
                let what = match (status, error) {
                    (_, Some(error)) => error.clone(),
                    (Some(status), None) => format!("HTTP status {status}"),
                    (None, None) => "failed".into(),
                };
                self.announce.health.failed(sink, what, now)
            }
        };
        let failing = self.announce.health.failing();
        self.count(|s| s.failing_sinks = failing);
        let Some(alert) = change else {
            return;
        };
        tracing::warn!(
            sink,
            alert = alert.kind().as_str(),
            "alert sink health changed"
        );
        let outgoing = Outgoing {
            alert,
            repeats: None,
        };
        let items = self
            .sinks
            .render(&outgoing, None, &self.announce.host, now, Some(sink));
        for item in items {
            match self.outbox.enqueue(item) {
                Ok(()) => self.count(|s| s.sink_alerts += 1),
                Err(err @ OutboxError::Full { .. }) | Err(err @ OutboxError::Store(_)) => {
                    self.count(|s| s.outbox_errors += 1);
                    tracing::error!(error = %err, "cannot queue a sink health alert");
                }
            }
        }
    }

    fn count(&self, change: impl FnOnce(&mut DeliveryStats)) {
        if let Ok(mut stats) = self.stats.lock() {
            change(&mut stats);
        }
    }
}

fn post(agent: &ureq::Agent, sink: &Sink, item: &OutboxItem) -> Attempt {
    let url = match &sink.jira {
        Some(_) => super::jira::issue_url(&sink.url.0),
        None => sink.url.0.clone(),
    };
    let mut request = agent
        .post(url.as_str())
        .header("content-type", "application/json")
        .header("webhook-id", item.id.as_str());
    if let Some(jira) = &sink.jira {
        request = request
            .header("accept", "application/json")
            .header("authorization", jira.authorization());
    }
    if let Some(secret) = &sink.secret {
        let timestamp = wall_now().as_nanos() / 1_000_000_000;
        request = request
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                secret.sign(&item.id, timestamp, &item.payload),
            );
    }
    match request.send(item.payload.as_str()) {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, wall_now()));
            classify(status, retry_after)
        }
        Err(err) => Attempt::Retry {
            status: None,
            retry_after: None,
            error: Some(describe(&err)),
        },
    }
}

fn classify(status: u16, retry_after: Option<Span>) -> Attempt {
    match status {
        200..=299 => Attempt::Delivered(status),
        429 | 503 => Attempt::Retry {
            status: Some(status),
            retry_after,
            error: None,
        },
        408 | 425 | 500..=599 => Attempt::Retry {
            status: Some(status),
            retry_after: None,
            error: None,
        },
        _ => Attempt::Rejected(status),
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub(crate) fn parse_retry_after(value: &str, now: Timestamp) -> Option<Span> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Span(secs.saturating_mul(1_000_000_000)));
    }
    let at = super::time::parse_http_date(value)?;
    Some(Timestamp(at.saturating_mul(1_000_000_000)).since(now))
}

/// An error for the log and the audit record. Errors that could quote the URL (which holds the
/// sink's credential) are named, not displayed.
fn describe(err: &ureq::Error) -> String {
    match err {
        ureq::Error::Timeout(_) => "timed out".into(),
        ureq::Error::Io(e) => format!("i/o error: {}", e.kind()),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::Tls(e) => format!("TLS: {e}"),
        ureq::Error::Rustls(e) => format!("TLS: {e}"),
        ureq::Error::Protocol(e) => format!("protocol error: {e}"),
        _ => "request failed (invalid URL, proxy or TLS set-up)".into(),
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // Jitter only spreads retries; without randomness the ceiling itself is a fine delay.
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => u64::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            base: Span::from_secs(1),
            cap: Span::from_secs(600),
            max_age: Span::from_secs(24 * 3600),
            max_attempts: None,
            request_timeout: Span::from_secs(10),
        }
    }

    #[test]
    fn backoff_stays_under_a_doubling_ceiling_capped_at_ten_minutes() {
        let p = policy();
        for attempt in 1..=40u32 {
            let ceiling = Span::from_secs(1u64 << (attempt - 1).min(20)).min(p.cap);
            assert!(p.backoff(attempt, 12345) <= ceiling);
            assert_eq!(p.backoff(attempt, 0), Span(0));
        }
        assert_eq!(p.backoff(3, 4_000_000_000), Span(4_000_000_000));
        assert_eq!(p.backoff(3, 4_000_000_001), Span(0));
    }

    const HOUR: u64 = 3_600_000_000_000;

    fn queued_at(created: Timestamp) -> OutboxItem {
        OutboxItem {
            id: "msg_1".into(),
            sink: "slack".into(),
            payload: "{}".into(),
            created,
            attempts: 0,
            next_attempt: created,
        }
    }

    fn down() -> Attempt {
        Attempt::Retry {
            status: None,
            retry_after: None,
            error: Some("connection failed".into()),
        }
    }

    #[test]
    fn a_sink_down_for_23_hours_is_still_retried() {
        let created = Timestamp(1_700_000_000 * 1_000_000_000);
        let item = queued_at(created);
        // Attempt 500 at 23 h: far past the old 12-attempt limit, still retried, and the next
        // attempt never falls past the day.
        let now = created.plus(Span(23 * HOUR));
        match policy().decide(down(), &item, 500, now, u64::MAX) {
            DeliveryResult::WillRetry { next_attempt, .. } => {
                assert!(next_attempt > now);
                assert!(next_attempt <= created.plus(Span(24 * HOUR)));
            }
            other => panic!("given up at 23 h: {other:?}"),
        }
        // A minute before the horizon the backoff is clamped to the horizon itself: one last
        // attempt at 24 h.
        let late = created.plus(Span(24 * HOUR - 60_000_000_000));
        assert_eq!(
            policy().decide(down(), &item, 501, late, u64::MAX),
            DeliveryResult::WillRetry {
                status: None,
                error: Some("connection failed".into()),
                next_attempt: created.plus(Span(24 * HOUR)),
            }
        );
    }

    #[test]
    fn an_alert_older_than_the_horizon_is_given_up_as_too_old() {
        let created = Timestamp(1_700_000_000 * 1_000_000_000);
        let item = queued_at(created);
        for now in [
            created.plus(Span(24 * HOUR)),
            created.plus(Span(30 * 24 * HOUR)),
        ] {
            assert_eq!(
                policy().decide(down(), &item, 3, now, 7),
                DeliveryResult::GaveUp {
                    status: None,
                    error: Some("connection failed".into()),
                    reason: GiveUpReason::TooOld,
                }
            );
        }
        // Delivered and rejected do not depend on age.
        let old = created.plus(Span(48 * HOUR));
        assert_eq!(
            policy().decide(Attempt::Delivered(200), &item, 9, old, 7),
            DeliveryResult::Delivered { status: 200 }
        );
        // `max_attempts`, when set, still bounds the count too.
        let capped = RetryPolicy {
            max_attempts: Some(12),
            ..policy()
        };
        assert!(matches!(
            capped.decide(down(), &item, 12, created.plus(Span(HOUR)), 7),
            DeliveryResult::GaveUp {
                reason: GiveUpReason::OutOfAttempts,
                ..
            }
        ));
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = Timestamp(784_111_777 * 1_000_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Span::from_secs(2)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(Span::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Span::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Span(0))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        // A hostile or broken receiver's far future is refused, not an overflow.
        for year in [
            "99999999999999999",
            "9223372036854775807",
            "-9223372036854775808",
            "0",
        ] {
            let date = format!("Sun, 06 Nov {year} 08:50:07 GMT");
            assert_eq!(parse_retry_after(&date, now), None, "{date}");
        }
        // Past what a nanosecond clock holds: as far as it goes (the cap applies later).
        assert!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now)
                .is_some_and(|wait| wait > Span::from_secs(400 * 365 * 86_400))
        );
        assert_eq!(parse_retry_after("99999999999999999999", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn statuses_are_delivered_retried_or_rejected() {
        assert!(matches!(classify(200, None), Attempt::Delivered(200)));
        assert!(matches!(classify(202, None), Attempt::Delivered(202)));
        for status in [408, 425, 429, 500, 502, 503, 504] {
            assert!(
                matches!(classify(status, None), Attempt::Retry { .. }),
                "{status}"
            );
        }
        for status in [301, 400, 401, 403, 404, 410, 413] {
            assert!(
                matches!(classify(status, None), Attempt::Rejected(_)),
                "{status}"
            );
        }
        // Retry-After counts only where the RFC gives it meaning for a retry.
        assert!(matches!(
            classify(500, Some(Span::from_secs(9))),
            Attempt::Retry {
                retry_after: None,
                ..
            }
        ));
        assert!(matches!(
            classify(429, Some(Span::from_secs(9))),
            Attempt::Retry {
                retry_after: Some(_),
                ..
            }
        ));
    }
}
