//! Alerts end to end against a real receiver on loopback: payload shapes, the signature (checked
//! from the spec, not with the signer), retries, Retry-After, a receiver that comes back late,
//! and the cooldown.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::config::SinkConfig;
use super::delivery::{DeliveryResult, GiveUpReason};
use super::*;
use crate::commands::config::Config;
use test_support::{Receiver, Recorded, Reply};

const WAIT: Duration = Duration::from_secs(10);
const SECRET_KEY: [u8; 32] = [0x5a; 32];

fn fp() -> TokenFingerprint {
    TokenFingerprint([0x3f, 0x9a, 0x1c, 0x2b, 0x7d, 0x10, 0x00, 0x01])
}

fn token() -> TokenRef {
    TokenRef {
        fingerprint: fp(),
        masked: Some(MaskedToken("ABC…EF".into())),
    }
}

fn violation(at_secs: u64, rule: &str) -> Alert {
    Alert::Violation {
        at: Timestamp(at_secs * 1_000_000_000),
        token: token(),
        rule: rule.into(),
        limit: 3,
        window: Span::from_secs(60),
        count: 4,
        evidence: serde_json::json!({"calls": [1, 2, 3, 4]}),
    }
}

fn sink(name: &str, kind: SinkKind, url: String, secret_file: Option<&Path>) -> SinkConfig {
    SinkConfig {
        name: name.into(),
        kind,
        url: WebhookUrl(url),
        secret_file: secret_file.map(Path::to_path_buf),
        project: None,
        issue_type: None,
        credentials_file: None,
        events: AlertKind::all(),
    }
}

pub(super) fn config(sinks: Vec<SinkConfig>) -> AlertsConfig {
    AlertsConfig {
        backoff_base: crate::shared::settings::Duration(Span::from_millis(100)),
        request_timeout: crate::shared::settings::Duration(Span::from_secs(2)),
        sinks,
        ..AlertsConfig::default()
    }
}

fn write_secret(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("sink.whsec");
    test_support::write_secret(&path, format!("whsec_{}\n", STANDARD.encode(SECRET_KEY)));
    path
}

/// Alerts with a delivery thread whose reports are collected.
struct Harness {
    alerts: Alerts,
    worker: DeliveryWorker,
    outbox: Arc<MemoryOutbox>,
    reports: Arc<Mutex<Vec<DeliveryReport>>>,
}

fn harness(config: &AlertsConfig) -> Harness {
    let outbox = Arc::new(MemoryOutbox::new(config.max_queued));
    let mut alerts = Alerts::new(config, outbox.clone(), "web2".into()).unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = reports.clone();
    let worker = alerts
        .start_delivery(
            config,
            Box::new(move |r| sink.lock().unwrap().push(r.clone())),
        )
        .unwrap();
    Harness {
        alerts,
        worker,
        outbox,
        reports,
    }
}

impl Harness {
    fn wait_until_empty(&self) {
        let end = Instant::now() + WAIT;
        while !self.outbox.is_empty() {
            assert!(Instant::now() < end, "the outbox did not drain");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn reports(&self) -> Vec<DeliveryReport> {
        self.reports.lock().unwrap().clone()
    }
}

/// Standard Webhooks verification as a receiver does it, written from the spec.
pub(crate) fn verify_standard_webhook(request: &Recorded, key: &[u8]) -> Result<(), String> {
    let id = request.header("webhook-id").ok_or("no webhook-id")?;
    let ts = request
        .header("webhook-timestamp")
        .ok_or("no webhook-timestamp")?;
    let sigs = request
        .header("webhook-signature")
        .ok_or("no webhook-signature")?;
    let ts_secs: i64 = ts.parse().map_err(|_| "timestamp not an integer")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if (now - ts_secs).abs() > 300 {
        return Err("timestamp more than 5 minutes off".into());
    }
    let mut signed = format!("{id}.{ts}.").into_bytes();
    signed.extend_from_slice(&request.body);
    for sig in sigs.split(' ') {
        let Some(("v1", encoded)) = sig.split_once(',') else {
            continue;
        };
        let Ok(given) = STANDARD.decode(encoded) else {
            continue;
        };
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
        mac.update(&signed);
        if mac.verify_slice(&given).is_ok() {
            return Ok(());
        }
    }
    Err("no v1 signature verifies".into())
}

#[test]
fn slack_gets_block_kit_with_a_text_fallback() {
    let receiver = Receiver::start();
    let mut h = harness(&config(vec![sink(
        "slack",
        SinkKind::Slack,
        receiver.url("/services/T0/B0/secret"),
        None,
    )]));
    h.alerts
        .raise(violation(1_700_000_000, "api_calls"), Timestamp(1));
    let got = receiver.wait_for(1, WAIT);
    let request = &got[0];
    assert_eq!(request.path, "/services/T0/B0/secret");
    assert_eq!(request.header("content-type"), Some("application/json"));
    let body = request.json();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains("ABC…EF") && text.contains("api_calls"),
        "{text}"
    );
    let blocks = body["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(blocks[0]["text"]["type"], "plain_text");
    assert_eq!(blocks[1]["type"], "section");
    assert_eq!(blocks[1]["text"]["type"], "mrkdwn");
    assert!(
        blocks[1]["text"]["text"]
            .as_str()
            .unwrap()
            .contains("3f9a1c2b7d100001")
    );
    assert_eq!(blocks[2]["type"], "context");
    h.wait_until_empty();
    assert_eq!(h.worker.stats().delivered, 1);
}

#[test]
fn slack_text_from_outside_cannot_ping_the_channel() {
    let outgoing = Outgoing {
        alert: Alert::Degraded {
            at: Timestamp(0),
            summary: "<!channel> p95 > 2s & rising".into(),
            evidence: serde_json::Value::Null,
        },
        repeats: None,
    };
    let body: serde_json::Value = serde_json::from_str(&render::body(
        SinkKind::Slack,
        &outgoing,
        None,
        "msg_1",
        "web2",
    ))
    .unwrap();
    // mrkdwn fields are escaped; the header is plain_text, which Slack never parses for mentions.
    assert_eq!(body["blocks"][0]["text"]["type"], "plain_text");
    for mrkdwn in [&body["text"], &body["blocks"][1]["text"]["text"]] {
        let text = mrkdwn.as_str().unwrap();
        assert!(!text.contains("<!channel>"), "{text}");
        assert!(
            text.contains("&lt;!channel&gt; p95 &gt; 2s &amp; rising"),
            "{text}"
        );
    }
}

#[test]
fn teams_gets_a_message_with_an_adaptive_card() {
    let receiver = Receiver::start();
    let mut h = harness(&config(vec![sink(
        "teams",
        SinkKind::Teams,
        receiver.url("/workflows/abc?sig=secret"),
        None,
    )]));
    h.alerts.raise(
        Alert::Suspended {
            at: Timestamp(1_700_000_000 * 1_000_000_000),
            token: token(),
            until: Some(Timestamp(1_700_003_600 * 1_000_000_000)),
            reason: "api_calls while degraded".into(),
            evidence: serde_json::json!({}),
        },
        Timestamp(1),
    );
    let got = receiver.wait_for(1, WAIT);
    assert_eq!(got[0].path, "/workflows/abc?sig=secret");
    assert_eq!(got[0].header("content-type"), Some("application/json"));
    let body = got[0].json();
    assert_eq!(body["type"], "message");
    let attachment = &body["attachments"][0];
    assert_eq!(
        attachment["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    let card = &attachment["content"];
    assert_eq!(card["type"], "AdaptiveCard");
    assert_eq!(card["version"], "1.4");
    assert_eq!(card["body"][0]["type"], "TextBlock");
    assert_eq!(card["body"][0]["wrap"], true);
    let headline = card["body"][0]["text"].as_str().unwrap();
    assert!(
        headline.contains("suspended until 2023-11-14T23:13:20Z"),
        "{headline}"
    );
    let facts = card["body"][1]["facts"].as_array().unwrap();
    assert!(
        facts
            .iter()
            .any(|f| f["title"] == "Fingerprint" && f["value"] == "3f9a1c2b7d100001")
    );
}

#[test]
fn generic_payload_is_an_envelope_signed_per_standard_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let receiver = Receiver::start();
    let mut h = harness(&config(vec![sink(
        "siem",
        SinkKind::Generic,
        receiver.url("/hook"),
        Some(&secret),
    )]));
    h.alerts
        .raise(violation(1_700_000_000, "heavy_calls"), Timestamp(1));
    let got = receiver.wait_for(1, WAIT);
    let request = &got[0];
    verify_standard_webhook(request, &SECRET_KEY).unwrap();
    // A different key or a changed body does not verify.
    assert!(verify_standard_webhook(request, &[0x5b; 32]).is_err());
    let mut tampered = request.clone();
    tampered.body.push(b' ');
    assert!(verify_standard_webhook(&tampered, &SECRET_KEY).is_err());

    let id = request.header("webhook-id").unwrap();
    assert!(id.starts_with("msg_") && id.len() == 36, "{id}");
    let body = request.json();
    assert_eq!(body["version"], "1");
    assert_eq!(body["id"], id);
    assert_eq!(body["event"], "violation");
    assert_eq!(body["severity"], "warning");
    assert_eq!(body["host"], "web2");
    assert_eq!(body["token_fp"], "3f9a1c2b7d100001");
    assert_eq!(body["token_masked"], "ABC…EF");
    assert_eq!(body["rule"], "heavy_calls");
    assert_eq!(body["count"], 4);
    assert_eq!(body["window_s"], 60.0);
    assert_eq!(body["occurred_at"], "2023-11-14T22:13:20Z");
    assert_eq!(body["evidence"]["calls"][3], 4);
}

#[test]
fn server_error_is_retried_and_delivered_once_with_the_same_webhook_id() {
    let receiver = Receiver::start();
    receiver.script([Reply::status(500)]);
    let mut h = harness(&config(vec![sink(
        "slack",
        SinkKind::Slack,
        receiver.url("/s"),
        None,
    )]));
    h.alerts
        .raise(violation(1_700_000_000, "api_calls"), Timestamp(1));
    let got = receiver.wait_for(2, WAIT);
    h.wait_until_empty();
    std::thread::sleep(Duration::from_millis(600));
    let got_after = receiver.requests();
    assert_eq!(got_after.len(), 2, "delivered once, not again");
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert_eq!(got[0].body, got[1].body);
    let reports = h.reports();
    assert!(matches!(
        reports[0].result,
        DeliveryResult::WillRetry {
            status: Some(500),
            ..
        }
    ));
    assert_eq!(reports[1].attempt, 2);
    assert_eq!(reports[1].result, DeliveryResult::Delivered { status: 200 });
}

#[test]
fn too_many_requests_waits_for_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let receiver = Receiver::start();
    receiver.script([Reply::status(429).with("Retry-After", "2")]);
    let mut h = harness(&config(vec![sink(
        "siem",
        SinkKind::Generic,
        receiver.url("/hook"),
        Some(&secret),
    )]));
    h.alerts
        .raise(violation(1_700_000_000, "api_calls"), Timestamp(1));
    let got = receiver.wait_for(2, WAIT);
    let waited = got[1].at.duration_since(got[0].at);
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    // Each attempt is signed afresh, and both verify.
    verify_standard_webhook(&got[0], &SECRET_KEY).unwrap();
    verify_standard_webhook(&got[1], &SECRET_KEY).unwrap();
    h.wait_until_empty();
}

#[test]
fn alert_is_delivered_after_the_receiver_comes_back() {
    // Take a free port, then close it: connections are refused until the receiver starts.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut h = harness(&config(vec![sink(
        "slack",
        SinkKind::Slack,
        format!("http://{addr}/s"),
        None,
    )]));
    h.alerts
        .raise(violation(1_700_000_000, "api_calls"), Timestamp(1));
    let end = Instant::now() + WAIT;
    while h.reports().len() < 2 {
        assert!(Instant::now() < end, "no failed attempts reported");
        std::thread::sleep(Duration::from_millis(10));
    }
    let failed = h.reports();
    assert!(
        failed
            .iter()
            .all(|r| matches!(r.result, DeliveryResult::WillRetry { status: None, .. }))
    );
    assert_eq!(h.outbox.len(), 1);
    let receiver = Receiver::start_on(addr).unwrap();
    let got = receiver.wait_for(1, WAIT);
    h.wait_until_empty();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("webhook-id"), Some(failed[0].id.as_str()));
    assert!(matches!(
        h.reports().last().unwrap().result,
        DeliveryResult::Delivered { status: 200 }
    ));
}

#[test]
fn client_error_is_given_up_without_retrying() {
    let receiver = Receiver::start();
    receiver.script([Reply::status(404)]);
    let h = &mut harness(&config(vec![sink(
        "slack",
        SinkKind::Slack,
        receiver.url("/gone"),
        None,
    )]));
    h.alerts
        .raise(violation(1_700_000_000, "api_calls"), Timestamp(1));
    receiver.wait_for(1, WAIT);
    h.wait_until_empty();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.requests().len(), 1);
    assert_eq!(
        h.reports()[0].result,
        DeliveryResult::GaveUp {
            status: Some(404),
            error: None,
            reason: GiveUpReason::Rejected
        }
    );
    assert_eq!(h.worker.stats().gave_up, 1);
}

#[test]
fn attempts_stop_at_max_attempts() {
    let receiver = Receiver::start();
    receiver.script([Reply::status(503), Reply::status(502), Reply::status(500)]);
    let mut cfg = config(vec![sink("s", SinkKind::Slack, receiver.url("/"), None)]);
    cfg.max_attempts = Some(2);
    cfg.backoff_base = crate::shared::settings::Duration(Span::from_millis(10));
    let mut h = harness(&cfg);
    h.alerts
        .raise(violation(1_700_000_000, "api_calls"), Timestamp(1));
    h.wait_until_empty();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.requests().len(), 2);
    assert!(matches!(
        h.reports()[1].result,
        DeliveryResult::GaveUp {
            reason: GiveUpReason::OutOfAttempts,
            status: Some(502),
            ..
        }
    ));
}

fn queued_payloads(outbox: &MemoryOutbox) -> Vec<serde_json::Value> {
    let mut items = outbox.due(Timestamp(u64::MAX), usize::MAX).unwrap();
    items.sort_by_key(|i| i.created);
    items
        .iter()
        .map(|i| serde_json::from_str(&i.payload).unwrap())
        .collect()
}

#[test]
fn cooldown_coalesces_repeats_for_one_token_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let cfg = config(vec![sink(
        "siem",
        SinkKind::Generic,
        "http://127.0.0.1:9/".into(),
        Some(&secret),
    )]);
    let outbox = Arc::new(MemoryOutbox::new(100));
    let mut alerts = Alerts::new(&cfg, outbox.clone(), "web2".into()).unwrap();
    let t = |secs: u64| Timestamp((1_700_000_000 + secs) * 1_000_000_000);
    // 15 minutes of cooldown: the first goes out, the next four are held.
    for s in [0, 60, 120, 180, 240] {
        alerts.raise(violation(1_700_000_000 + s, "api_calls"), t(s));
    }
    // Another rule and a state change are not held back by it.
    alerts.raise(violation(1_700_000_000, "heavy_calls"), t(10));
    alerts.raise(
        Alert::Lifted {
            at: t(20),
            token: token(),
            reason: "by hand".into(),
            evidence: serde_json::Value::Null,
        },
        t(20),
    );
    assert_eq!(outbox.len(), 3);
    assert_eq!(alerts.stats().coalesced, 4);
    // After the cooldown the next one carries the count of the held ones.
    alerts.raise(violation(1_700_000_000 + 1000, "api_calls"), t(1000));
    let payloads = queued_payloads(&outbox);
    assert_eq!(payloads.len(), 4);
    assert_eq!(payloads[0]["repeats"], serde_json::Value::Null);
    assert_eq!(payloads[3]["rule"], "api_calls");
    assert_eq!(payloads[3]["repeats"]["count"], 4);
    assert_eq!(payloads[3]["repeats"]["since"], "2023-11-14T22:13:20Z");
}

#[test]
fn held_repeats_are_summarised_when_the_cooldown_ends_without_a_new_alert() {
    let cfg = config(vec![sink(
        "slack",
        SinkKind::Slack,
        "http://127.0.0.1:9/".into(),
        None,
    )]);
    let outbox = Arc::new(MemoryOutbox::new(100));
    let mut alerts = Alerts::new(&cfg, outbox.clone(), "web2".into()).unwrap();
    let t = |secs: u64| Timestamp((1_700_000_000 + secs) * 1_000_000_000);
    for s in [0, 1, 2, 3] {
        alerts.raise(violation(1_700_000_000 + s, "api_calls"), t(s));
    }
    alerts.tick(t(899));
    assert_eq!(outbox.len(), 1);
    alerts.tick(t(900));
    assert_eq!(outbox.len(), 2);
    let payloads = queued_payloads(&outbox);
    let text = payloads[1]["text"].as_str().unwrap();
    assert!(text.contains("2 more since 2023-11-14T22:13:20Z"), "{text}");
    // Nothing held any more: later ticks send nothing.
    alerts.tick(t(5000));
    assert_eq!(outbox.len(), 2);
}

#[test]
fn sinks_receive_only_the_events_they_ask_for() {
    let mut only_suspensions = sink("s", SinkKind::Slack, "http://127.0.0.1:9/".into(), None);
    only_suspensions.events = vec![AlertKind::Suspended];
    let cfg = config(vec![only_suspensions]);
    let outbox = Arc::new(MemoryOutbox::new(100));
    let mut alerts = Alerts::new(&cfg, outbox.clone(), "web2".into()).unwrap();
    alerts.raise(violation(1_700_000_000, "api_calls"), Timestamp(1));
    assert!(outbox.is_empty());
}

#[test]
fn a_full_outbox_refuses_and_counts() {
    let cfg = config(vec![sink(
        "s",
        SinkKind::Slack,
        "http://127.0.0.1:9/".into(),
        None,
    )]);
    let outbox = Arc::new(MemoryOutbox::new(2));
    let mut alerts = Alerts::new(&cfg, outbox.clone(), "web2".into()).unwrap();
    for rule in ["a", "b", "c"] {
        alerts.raise(violation(1_700_000_000, rule), Timestamp(1));
    }
    assert_eq!(outbox.len(), 2);
    assert_eq!(alerts.stats().refused_full, 1);
    assert_eq!(alerts.stats().enqueued, 2);
}

#[test]
fn secrets_must_be_whsec_base64() {
    assert!(WebhookSecret::parse(&format!("whsec_{}", STANDARD.encode([1u8; 32]))).is_ok());
    assert!(matches!(
        WebhookSecret::parse(&STANDARD.encode([1u8; 32])),
        Err(SecretError::Format)
    ));
    assert!(matches!(
        WebhookSecret::parse("whsec_not base64!"),
        Err(SecretError::Format)
    ));
    assert!(matches!(
        WebhookSecret::parse(&format!("whsec_{}", STANDARD.encode([1u8; 8]))),
        Err(SecretError::TooShort)
    ));
}

#[test]
fn an_unreadable_secret_file_names_its_key() {
    let cfg = config(vec![sink(
        "siem",
        SinkKind::Generic,
        "https://example.org/".into(),
        Some(Path::new("/nonexistent/secret")),
    )]);
    let err = Alerts::new(&cfg, Arc::new(MemoryOutbox::new(1)), "h".into())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("alerts.sinks[0].secret_file"), "{err}");
}

fn parse(text: &str) -> Result<Config, crate::commands::config::ConfigError> {
    Config::parse(text, Path::new("test.toml"))
}

#[test]
fn sinks_are_read_from_config() {
    let config = parse(
        "[alerts]\ncooldown = \"5m\"\n\
         [[alerts.sinks]]\nname = \"admins\"\nkind = \"slack\"\nurl = \"https://hooks.slack.com/services/T/B/X\"\n\
         events = [\"suspended\", \"degraded\"]\n\
         [[alerts.sinks]]\nname = \"siem\"\nkind = \"generic\"\nurl = \"https://siem.example.org/h\"\n\
         secret_file = \"/etc/redcap-monitor/siem.whsec\"\n",
    )
    .unwrap();
    assert_eq!(config.alerts.cooldown.span(), Span::from_secs(300));
    assert_eq!(config.alerts.sinks.len(), 2);
    assert_eq!(
        config.alerts.sinks[0].events,
        [AlertKind::Suspended, AlertKind::Degraded]
    );
    assert_eq!(config.alerts.sinks[1].events, AlertKind::all());
    // The URL's secret path stays out of debug output.
    let debug = format!("{config:?}");
    assert!(debug.contains("https://hooks.slack.com"), "{debug}");
    assert!(!debug.contains("T/B/X"), "{debug}");
}

#[test]
fn invalid_sinks_name_their_key_path() {
    let cases = [
        (
            "[[alerts.sinks]]\nname = \"g\"\nkind = \"generic\"\nurl = \"https://x.org/\"\n",
            "alerts.sinks[0].secret_file",
        ),
        (
            "[[alerts.sinks]]\nname = \"s\"\nkind = \"slack\"\nurl = \"ftp://x.org/\"\n",
            "alerts.sinks[0].url",
        ),
        (
            "[[alerts.sinks]]\nname = \"s\"\nkind = \"slack\"\nurl = \"https://x.org/\"\n\
             [[alerts.sinks]]\nname = \"s\"\nkind = \"teams\"\nurl = \"https://y.org/\"\n",
            "alerts.sinks[1].name",
        ),
        (
            "[[alerts.sinks]]\nname = \"s\"\nkind = \"slack\"\nurl = \"https://x.org/\"\nevents = []\n",
            "alerts.sinks[0].events",
        ),
        ("[alerts]\nmax_attempts = 0\n", "alerts.max_attempts"),
    ];
    for (text, key) in cases {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
    let err = parse("[[alerts.sinks]]\nname = \"s\"\nkind = \"email\"\nurl = \"https://x.org/\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("email"), "{err}");
}

#[test]
fn webhook_url_origin_hides_path_query_and_userinfo() {
    assert_eq!(
        WebhookUrl("https://hooks.slack.com/services/T/B/X".into()).origin(),
        "https://hooks.slack.com"
    );
    assert_eq!(
        WebhookUrl("https://x.org:8443?sig=abc".into()).origin(),
        "https://x.org:8443"
    );
    assert_eq!(
        WebhookUrl("https://user:pw@x.org/h".into()).origin(),
        "https://"
    );
}

/// A clock the test sets: the outbox's ages and retries run on it, the network on real time.
#[derive(Clone)]
struct GivenClock(Arc<std::sync::atomic::AtomicU64>);

impl GivenClock {
    fn at(secs: u64) -> GivenClock {
        GivenClock(Arc::new(std::sync::atomic::AtomicU64::new(
            secs * 1_000_000_000,
        )))
    }

    fn set(&self, secs: u64) {
        self.0
            .store(secs * 1_000_000_000, std::sync::atomic::Ordering::SeqCst);
    }
}

fn clocked_harness(config: &AlertsConfig, clock: &GivenClock) -> Harness {
    let outbox = Arc::new(MemoryOutbox::new(config.max_queued));
    let mut alerts = Alerts::new(config, outbox.clone(), "web2".into()).unwrap();
    let reports = Arc::new(Mutex::new(Vec::new()));
    let sink = reports.clone();
    let time = clock.0.clone();
    let worker = alerts
        .start_delivery_with_clock(
            config,
            Box::new(move |r| sink.lock().unwrap().push(r.clone())),
            Arc::new(move || Timestamp(time.load(std::sync::atomic::Ordering::SeqCst))),
        )
        .unwrap();
    Harness {
        alerts,
        worker,
        outbox,
        reports,
    }
}

impl Harness {
    /// Waits for a report of `sink` beyond the first `seen` ones, and returns it.
    fn next_report(&self, sink: &str, seen: usize) -> DeliveryReport {
        let end = Instant::now() + WAIT;
        loop {
            let of_sink: Vec<DeliveryReport> = self
                .reports()
                .into_iter()
                .filter(|r| r.sink == sink)
                .collect();
            if of_sink.len() > seen {
                return of_sink[seen].clone();
            }
            assert!(
                Instant::now() < end,
                "no report {} for sink {sink}",
                seen + 1
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

const T0: u64 = 1_700_000_000;
const HOUR_S: u64 = 3600;

fn closed_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn a_sink_down_for_23_hours_gets_its_alert_and_the_other_sinks_hear_of_the_outage() {
    let dir = tempfile::tempdir().unwrap();
    let secret = write_secret(dir.path());
    let chat_addr = closed_port();
    let siem = Receiver::start();
    let cfg = config(vec![
        sink(
            "chat",
            SinkKind::Slack,
            format!("http://{chat_addr}/s"),
            None,
        ),
        sink("siem", SinkKind::Generic, siem.url("/hook"), Some(&secret)),
    ]);
    let clock = GivenClock::at(T0);
    let h = &mut clocked_harness(&cfg, &clock);
    h.alerts
        .raise(violation(1_700_000_000, "api_calls"), Timestamp(1));
    assert_eq!(siem.wait_for(1, WAIT)[0].json()["event"], "violation");
    assert!(matches!(
        h.next_report("chat", 0).result,
        DeliveryResult::WillRetry { status: None, .. }
    ));

    // Eleven minutes of failures (sink_failing_after is ten): the siem hears of it, once.
    clock.set(T0 + 11 * 60);
    assert!(matches!(
        h.next_report("chat", 1).result,
        DeliveryResult::WillRetry { .. }
    ));
    let failing = siem.wait_for(2, WAIT)[1].json();
    assert_eq!(failing["event"], "sink_failing");
    assert_eq!(failing["sink"], "chat");
    assert_eq!(failing["since_ts"].as_f64(), Some(T0 as f64));
    assert!(
        failing["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    assert_eq!(h.worker.stats().failing_sinks, vec!["chat".to_string()]);

    // 23 hours on, far past any count of attempts the old limit allowed: still retried.
    clock.set(T0 + 23 * HOUR_S);
    assert!(matches!(
        h.next_report("chat", 2).result,
        DeliveryResult::WillRetry { .. }
    ));
    assert_eq!(h.outbox.len(), 1, "the chat alert waits in the outbox");

    // The chat sink comes back: the alert is delivered and the siem hears that it recovered.
    let chat = Receiver::start_on(chat_addr).unwrap();
    clock.set(T0 + 23 * HOUR_S + 11 * 60);
    let got = chat.wait_for(1, WAIT);
    assert!(String::from_utf8_lossy(&got[0].body).contains("api_calls"));
    assert!(matches!(
        h.next_report("chat", 3).result,
        DeliveryResult::Delivered { status: 200 }
    ));
    let recovered = siem.wait_for(3, WAIT)[2].json();
    assert_eq!(recovered["event"], "sink_recovered");
    assert_eq!(recovered["sink"], "chat");
    h.wait_until_empty();
    assert!(h.worker.stats().failing_sinks.is_empty());
    assert_eq!(h.worker.stats().sink_alerts, 2);
    assert_eq!(siem.requests().len(), 3, "one sink_failing per outage");
    assert_eq!(chat.requests().len(), 1, "no sink alert about itself");
}

#[test]
fn an_alert_undelivered_at_its_max_age_is_given_up_as_too_old() {
    let addr = closed_port();
    let cfg = config(vec![sink(
        "chat",
        SinkKind::Slack,
        format!("http://{addr}/s"),
        None,
    )]);
    let clock = GivenClock::at(T0);
    let h = &mut clocked_harness(&cfg, &clock);
    h.alerts
        .raise(violation(1_700_000_000, "api_calls"), Timestamp(1));
    assert!(matches!(
        h.next_report("chat", 0).result,
        DeliveryResult::WillRetry { .. }
    ));
    clock.set(T0 + 24 * HOUR_S + 1);
    assert!(matches!(
        h.next_report("chat", 1).result,
        DeliveryResult::GaveUp {
            status: None,
            reason: GiveUpReason::TooOld,
            ..
        }
    ));
    h.wait_until_empty();
    let stats = h.worker.stats();
    assert_eq!((stats.gave_up, stats.gave_up_too_old), (1, 1));
}
