//! The JIRA sink against a local stand-in (the test receiver): the request is checked as JIRA's
//! REST API documents `POST /rest/api/2/issue` (a `fields` object with the project key, the
//! issue type's name, a one-line summary and a plain-text description; JSON in and out; Basic
//! auth with `email:api_token` or Bearer with a personal access token); retries go through the
//! same outbox; credentials and config are checked with the key to fix. Also: the other sinks'
//! bodies name the token's owner from the token directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::config::SinkConfig;
use super::tests::config;
use super::*;
use crate::edges::directory::{Directory, Owner};
use crate::shared::token::FingerprintMap;
use test_support::{Receiver, Reply};

const WAIT: Duration = Duration::from_secs(10);

fn fp() -> TokenFingerprint {
    TokenFingerprint([0x8b, 0x47, 0x2f, 0x95, 0x61, 0x8a, 0x9a, 0x1c])
}

fn suspended() -> Alert {
    Alert::Suspended {
        at: Timestamp(1_700_000_000_000_000_000),
        token: TokenRef {
            fingerprint: fp(),
            masked: Some(MaskedToken("AB1…34".into())),
        },
        until: Some(Timestamp(1_700_000_600_000_000_000)),
        reason: "broke api_calls (5 calls in 60 s, limit 3)".into(),
        evidence: serde_json::json!({}),
    }
}

fn credentials(dir: &Path, text: &str, mode: u32) -> PathBuf {
    let path = dir.join("jira.credentials");
    test_support::write_secret(&path, text);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    path
}

fn jira_sink(url: String, credentials_file: Option<PathBuf>) -> SinkConfig {
    SinkConfig {
        name: "jira".into(),
        kind: SinkKind::Jira,
        url: WebhookUrl(url),
        secret_file: None,
        project: Some("OPS".into()),
        issue_type: None,
        credentials_file,
        events: AlertKind::all(),
    }
}

fn alerts(config: &AlertsConfig) -> (Alerts, DeliveryWorker, Arc<MemoryOutbox>) {
    let outbox = Arc::new(MemoryOutbox::new(config.max_queued));
    let mut alerts = Alerts::new(config, outbox.clone(), "web2".into()).unwrap();
    let worker = alerts.start_delivery(config, Box::new(|_| {})).unwrap();
    (alerts, worker, outbox)
}

fn jdoe() -> Directory {
    let mut map = FingerprintMap::default();
    map.insert(
        fp(),
        Arc::new(Owner {
            username: "jdoe".into(),
            first_name: Some("Jane".into()),
            last_name: Some("Doe".into()),
            email: Some("jane@example.org".into()),
            project_id: Some(12),
            project_title: Some("Trial [X]".into()),
            ..Owner::default()
        }),
    );
    Directory::from_map(map)
}

#[test]
fn a_jira_sink_creates_an_issue_as_the_rest_api_documents() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    receiver.script([Reply::status(201)]);
    let file = credentials(dir.path(), "ops@example.org:atl-api-token\n", 0o600);
    let config = config(vec![jira_sink(receiver.url("/jira/"), Some(file))]);
    let (mut alerts, worker, _outbox) = alerts(&config);
    alerts.use_directory(jdoe());
    alerts.raise(suspended(), Timestamp(1));
    let got = receiver.wait_for(1, WAIT);
    let request = &got[0];
    assert_eq!(request.path, "/jira/rest/api/2/issue");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("accept"), Some("application/json"));
    let basic = format!("Basic {}", STANDARD.encode("ops@example.org:atl-api-token"));
    assert_eq!(request.header("authorization"), Some(basic.as_str()));
    let body = request.json();
    let fields = body["fields"].as_object().unwrap();
    assert_eq!(fields["project"], serde_json::json!({"key": "OPS"}));
    assert_eq!(fields["issuetype"], serde_json::json!({"name": "Task"}));
    let summary = fields["summary"].as_str().unwrap();
    assert!(summary.contains("AB1…34 suspended until"), "{summary}");
    assert!(!summary.contains('\n') && summary.chars().count() <= 255);
    let description = fields["description"].as_str().unwrap();
    assert!(
        description.contains("*User:* Jane Doe (jdoe) <jane@example.org>"),
        "{description}"
    );
    // Text from outside cannot become a JIRA link.
    assert!(
        description.contains("*Project:* #12 Trial \\[X\\]"),
        "{description}"
    );
    assert!(
        description.contains("*Fingerprint:* 8b472f95618a9a1c"),
        "{description}"
    );
    assert_eq!(
        fields["labels"],
        serde_json::json!(["redcap-monitor", "suspended", "critical"])
    );
    let end = std::time::Instant::now() + WAIT;
    while worker.stats().delivered < 1 {
        assert!(std::time::Instant::now() < end, "not counted as delivered");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn jira_retries_through_the_outbox_and_a_token_alone_is_a_bearer() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    receiver.script([Reply::status(503), Reply::status(201)]);
    let file = credentials(dir.path(), "personal-access-token-123\n", 0o640);
    let config = config(vec![jira_sink(receiver.url(""), Some(file))]);
    let (mut alerts, worker, outbox) = alerts(&config);
    alerts.raise(suspended(), Timestamp(1));
    let got = receiver.wait_for(2, WAIT);
    assert_eq!(got[0].body, got[1].body, "the retry sends the same issue");
    assert_eq!(got[1].path, "/rest/api/2/issue");
    assert_eq!(
        got[1].header("authorization"),
        Some("Bearer personal-access-token-123")
    );
    // Without a directory the issue names the token only.
    let description = got[1].json()["fields"]["description"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!description.contains("*User:*"), "{description}");
    let end = std::time::Instant::now() + WAIT;
    while !outbox.is_empty() || worker.stats().delivered < 1 {
        assert!(
            std::time::Instant::now() < end,
            "not delivered after the retry"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn jira_credentials_and_keys_are_checked_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let open = credentials(dir.path(), "ops@example.org:token\n", 0o644);
    let open_file = config(vec![jira_sink(
        "https://jira.example.org".into(),
        Some(open),
    )]);
    let outbox = Arc::new(MemoryOutbox::new(10));
    let error = Alerts::new(&open_file, outbox.clone(), "web2".into())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("alerts.sinks[0].credentials_file"),
        "{error}"
    );
    assert!(error.contains("chmod o-rwx"), "{error}");
    assert!(
        !error.contains("token\n") && !error.contains(":token"),
        "{error}"
    );
    let empty = credentials(dir.path(), "\n", 0o600);
    let config_empty = config(vec![jira_sink(
        "https://jira.example.org".into(),
        Some(empty),
    )]);
    let error = Alerts::new(&config_empty, outbox, "web2".into())
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("email:api_token"), "{error}");

    let mut missing = jira_sink("https://jira.example.org".into(), None);
    missing.project = None;
    let keys: Vec<String> = config(vec![missing])
        .problems()
        .into_iter()
        .map(|p| p.key)
        .collect();
    assert_eq!(
        keys,
        [
            "alerts.sinks[0].project",
            "alerts.sinks[0].credentials_file"
        ]
    );
    let mut slack = jira_sink("https://hooks.slack.com/x".into(), None);
    slack.kind = SinkKind::Slack;
    let problems = config(vec![slack]).problems();
    assert_eq!(problems[0].key, "alerts.sinks[0].project");
    assert!(problems[0].message.contains("only to jira"));
}

#[test]
fn teams_and_generic_bodies_name_the_owner_and_what_redcap_says_of_the_token() {
    let owner = Owner {
        username: "bob".into(),
        project_id: Some(13),
        project_title: Some("Cohort Y".into()),
        pi_email: Some("alan@example.org".into()),
        user_suspended: true,
        rights_expired: true,
        last_api_use: Some("2026-11-15 12:00:00".into()),
        ..Owner::default()
    };
    let outgoing = Outgoing {
        alert: suspended(),
        repeats: None,
    };
    let teams: serde_json::Value = serde_json::from_str(&render::body(
        SinkKind::Teams,
        &outgoing,
        Some(&owner),
        "msg_1",
        "web2",
    ))
    .unwrap();
    let facts: Vec<(String, String)> = teams["attachments"][0]["content"]["body"][1]["facts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["title"].as_str().unwrap().into(),
                f["value"].as_str().unwrap().into(),
            )
        })
        .collect();
    let fact = |title: &str| {
        facts
            .iter()
            .find(|(t, _)| t == title)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(fact("User"), Some("bob"));
    assert_eq!(fact("Project"), Some("#13 Cohort Y"));
    assert_eq!(fact("PI"), Some("alan@example.org"));
    assert_eq!(
        fact("In REDCap"),
        Some("user suspended in REDCap, project rights expired")
    );
    assert_eq!(fact("REDCap's last API use"), Some("2026-11-15 12:00:00"));
    let generic: serde_json::Value = serde_json::from_str(&render::body(
        SinkKind::Generic,
        &outgoing,
        Some(&owner),
        "msg_1",
        "web2",
    ))
    .unwrap();
    assert_eq!(generic["owner"]["username"], "bob");
    assert_eq!(generic["owner"]["rights_expired"], true);
    let unknown: serde_json::Value = serde_json::from_str(&render::body(
        SinkKind::Generic,
        &outgoing,
        None,
        "msg_1",
        "web2",
    ))
    .unwrap();
    assert!(unknown["owner"].is_null());
}
