//! The delivery thread: posts due outbox items to their sinks, with retries.
//!
//! Runs on its own OS thread with a blocking HTTP client, so a slow or dead sink can delay only
//! other alerts, never capture or decisions. 2xx is delivered; network errors, timeouts, 408,
//! 425, 429 and 5xx are retried with capped exponential backoff and full jitter (or after
//! `Retry-After`); any other status is given up at once. The `webhook-id` never changes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::AlertsConfig;
use super::outbox::{Outbox, OutboxItem};
use super::{Sink, Sinks};
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
    pub base: Span,
    pub cap: Span,
    pub max_attempts: u32,
    pub request_timeout: Span,
}

impl RetryPolicy {
    pub(crate) fn from_config(config: &AlertsConfig) -> RetryPolicy {
        RetryPolicy {
            base: config.backoff_base.span(),
            cap: config.backoff_cap.span(),
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
}

/// What happened to one attempt, for the audit log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryReport {
    pub id: String,
    pub sink: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    #[serde(serialize_with = "crate::shared::model::as_secs")]
    pub at: Timestamp,
    pub result: DeliveryResult,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DeliveryResult {
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
pub enum GiveUpReason {
    /// The sink answered with a status that retrying cannot change (e.g. 400, 403, 404).
    Rejected,
    /// `alerts.max_attempts` attempts failed.
    OutOfAttempts,
    /// The item names a sink that is no longer configured.
    UnknownSink,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryStats {
    pub attempts: u64,
    pub delivered: u64,
    pub retries_scheduled: u64,
    pub gave_up: u64,
    pub outbox_errors: u64,
}

/// Handle of the delivery thread; dropping it stops the thread (after the attempt in flight).
pub struct DeliveryWorker {
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

    pub fn stats(&self) -> DeliveryStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops the thread and waits for it (at most one request timeout).
    pub fn stop(mut self) {
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
enum Attempt {
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
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<DeliveryStats>>,
}

impl Worker {
    fn run(&mut self, woken: Receiver<()>) {
        while !self.stop.load(Ordering::Relaxed) {
            let due = match self.outbox.due(wall_now(), BATCH) {
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
                self.judge(outcome, attempt)
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
                self.count(|s| s.gave_up += 1);
                tracing::warn!(id = %item.id, sink = %item.sink, attempt, ?status, ?error, ?reason,
                    "alert delivery given up");
            }
        }
        let report = DeliveryReport {
            id: item.id,
            sink: item.sink,
            attempt,
            at: wall_now(),
            result,
        };
        (self.on_report)(&report);
    }

    fn judge(&self, outcome: Attempt, attempt: u32) -> DeliveryResult {
        match outcome {
            Attempt::Delivered(status) => DeliveryResult::Delivered { status },
            Attempt::Rejected(status) => DeliveryResult::GaveUp {
                status: Some(status),
                error: None,
                reason: GiveUpReason::Rejected,
            },
            Attempt::Retry { status, error, .. } if attempt >= self.policy.max_attempts => {
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
                    .unwrap_or_else(|| self.policy.backoff(attempt, random_u64()));
                DeliveryResult::WillRetry {
                    status,
                    error,
                    next_attempt: wall_now().plus(delay),
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
            max_attempts: 12,
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
