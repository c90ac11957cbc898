use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;

use super::live::{LiveTelemetry, suspension_json};
use super::*;
use crate::stages::redcap::sample::fingerprint;

const TOKEN: &str = "correct-horse-battery-staple";

/// A listener on a free loopback port, with a live side answering its commands on a thread.
struct Running {
    server: ApiServer,
    _live: std::thread::JoinHandle<()>,
}

fn start(bearer: Option<Bearer>, max_connections: usize) -> Running {
    let shared = Shared::new(Metrics::new());
    let config = ApiConfig {
        listen: "127.0.0.1:0".into(),
        max_connections,
        request_timeout: Duration(Span::from_millis(500)),
        ..ApiConfig::default()
    };
    let (tx, mut rx) = mpsc::channel(4);
    shared.publish(AdminView {
        status: crate::edges::telemetry::Snapshot {
            mode: "pcap".into(),
            ..Default::default()
        },
        ..AdminView::default()
    });
    let server = ApiServer::start(&config, shared, bearer, tx).unwrap();
    // The live loop's part, as far as the listener can tell: suspensions kept in a map.
    let live = std::thread::spawn(move || {
        let mut suspended = std::collections::BTreeMap::new();
        let now = crate::shared::model::Timestamp::from_secs_f64(2e9);
        while let Some(command) = rx.blocking_recv() {
            match command {
                AdminCommand::Suspend {
                    token,
                    duration,
                    reason,
                    reply,
                } => {
                    let suspension = crate::edges::store::Suspension {
                        token,
                        masked: None,
                        since: now,
                        until: duration.map(|d| now.plus(d)),
                        reason,
                        level: 0,
                        source: crate::edges::store::Source::Manual,
                    };
                    let _ = reply.send(Ok(suspension_json(&suspension)));
                    suspended.insert(token, suspension);
                }
                AdminCommand::Lift { token, reply, .. } => {
                    let _ = reply.send(match suspended.remove(&token) {
                        Some(lifted) => Ok(suspension_json(&lifted)),
                        None => Err(format!("token {token} is not suspended")),
                    });
                }
            }
        }
    });
    Running {
        server,
        _live: live,
    }
}

/// One raw request; returns (status, head, body).
fn send(running: &Running, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(running.server.address()).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn get(running: &Running, path: &str, token: Option<&str>) -> (u16, String, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    send(
        running,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n"),
    )
}

fn post(running: &Running, path: &str, body: &str) -> (u16, String, String) {
    send(
        running,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn metrics_are_served_with_the_exact_openmetrics_content_type() {
    let running = start(None, 4);
    let (status, head, body) = get(&running, "/metrics", None);
    assert_eq!(status, 200);
    assert!(
        head.contains(
            "\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        ),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"));
    assert!(body.contains("redcap_monitor_build_info"));
}

#[test]
fn admin_endpoints_need_the_bearer_token() {
    let running = start(Some(Bearer::of(TOKEN)), 4);
    let (status, head, _) = get(&running, "/api/v1/status", None);
    assert_eq!(status, 401);
    assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
    assert_eq!(get(&running, "/api/v1/status", Some("wrong")).0, 401);
    assert_eq!(
        get(&running, "/api/v1/status", Some(&TOKEN[..TOKEN.len() - 1])).0,
        401,
        "a prefix of the token is not the token"
    );
    let (status, _, body) = get(&running, "/api/v1/status", Some(TOKEN));
    assert_eq!(status, 200);
    assert!(body.contains("\"mode\":\"pcap\""), "{body}");
    assert_eq!(get(&running, "/api/v1/nope", Some(TOKEN)).0, 404);
}

#[test]
fn without_a_token_file_the_admin_api_is_off_and_says_how_to_turn_it_on() {
    let running = start(None, 4);
    let (status, _, body) = get(&running, "/api/v1/status", Some(TOKEN));
    assert_eq!(status, 404);
    assert!(body.contains("api.token_file"), "{body}");
}

#[test]
fn suspend_and_lift_go_through_the_live_side() {
    let running = start(Some(Bearer::of(TOKEN)), 4);
    let fp = fingerprint(9).to_string();
    let (status, _, body) = post(
        &running,
        "/api/v1/suspend",
        &format!("{{\"token_fp\":\"{fp}\",\"for\":\"1h\",\"reason\":\"test\"}}"),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"source\":\"manual\""), "{body}");
    let (status, _, body) = post(
        &running,
        "/api/v1/lift",
        &format!("{{\"token_fp\":\"{fp}\"}}"),
    );
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = post(
        &running,
        "/api/v1/lift",
        &format!("{{\"token_fp\":\"{fp}\"}}"),
    );
    assert_eq!(status, 409, "lifting twice: {body}");
    assert!(body.contains("not suspended"), "{body}");
    let (status, _, body) = post(&running, "/api/v1/suspend", "{\"token_fp\":\"xyz\"}");
    assert_eq!(status, 400, "{body}");
}

#[test]
fn oversized_and_slow_requests_are_cut_off() {
    let running = start(Some(Bearer::of(TOKEN)), 4);
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    let mut stream = TcpStream::connect(running.server.address()).unwrap();
    let _ = stream.write_all(huge.as_bytes());
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let (status, _, _) = post(&running, "/api/v1/suspend", &"x".repeat(5000));
    assert_eq!(status, 413);
    // A client that never finishes its head is dropped after the request timeout.
    let mut slow = TcpStream::connect(running.server.address()).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

#[test]
fn connections_over_the_limit_are_refused_not_queued() {
    let running = start(None, 1);
    // Holds the one permit with an unfinished request.
    let mut holder = TcpStream::connect(running.server.address()).unwrap();
    holder.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (status, _, _) = get(&running, "/metrics", None);
    assert_eq!(status, 503);
    drop(holder);
}

#[test]
fn a_world_readable_token_file_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Bearer::load(&path).err().unwrap().to_string();
    assert!(
        err.contains("chmod o-rwx") && err.contains("api.token_file"),
        "{err}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bearer = Bearer::load(&path).unwrap();
    assert!(bearer.admits(Some(format!("Bearer {TOKEN}").as_bytes())));
    assert!(
        !bearer.admits(Some(TOKEN.as_bytes())),
        "the scheme is required"
    );
    assert!(!bearer.admits(None));
    test_support::write_secret(&path, "short\n");
    let err = Bearer::load(&path).err().unwrap().to_string();
    assert!(err.contains("at least 16"), "{err}");
}

fn keys(config: &ApiConfig) -> Vec<String> {
    config.problems().into_iter().map(|p| p.key).collect()
}

#[test]
fn the_listen_address_and_limits_are_validated_with_their_keys() {
    let bad = ApiConfig {
        listen: "localhost".into(),
        ..ApiConfig::default()
    };
    assert_eq!(keys(&bad), ["api.listen"]);
    let bad = ApiConfig {
        top_tokens: 21,
        ..ApiConfig::default()
    };
    assert_eq!(keys(&bad), ["api.top_tokens"]);
    assert!(ApiConfig::default().problems().is_empty());
    assert!(ApiConfig::default().address().ip().is_loopback());
}

/// The live side: an enforcement decision to suspend becomes an active suspension, counted and
/// listed; the view lists the token's calls and bytes under its masked form; a lift ends it.
#[test]
fn decisions_violations_and_load_reach_the_admin_view_and_the_metrics() {
    use crate::edges::telemetry::Snapshot;
    use crate::stages::health::{Assessment, TokenLoad};
    use crate::stages::policy::enforce::{
        EnforcementConfig, EnforcementMode, Enforcer, HealthView,
    };
    use crate::stages::policy::sample::violating;
    use crate::stages::redcap::sample::at;

    let shared = Shared::new(Metrics::new());
    let mut live = LiveTelemetry::new(shared.clone(), 3, Span::from_secs(60));
    let mut enforcer = Enforcer::new(EnforcementConfig {
        mode: EnforcementMode::OnViolation,
        ..EnforcementConfig::default()
    });
    let assessment = Assessment::default();
    let health = HealthView {
        degraded: false,
        assessment: &assessment,
        load_share: None,
    };
    for secs in [1000, 1001] {
        let mut verdict = violating(4, secs);
        verdict.decision = enforcer.decide(&verdict, &health);
        live.observe(&verdict);
    }
    let loads = [TokenLoad {
        token: fingerprint(4),
        calls: 2,
        server_time: Span::from_millis(40),
        share: 1.0,
    }];
    // The action edge holds the suspensions; the view shows those it reports in force.
    let suspension = crate::edges::store::Suspension {
        token: fingerprint(4),
        masked: Some(crate::shared::token::MaskedToken("T4…".into())),
        since: at(1001),
        until: Some(at(1601)),
        reason: "broke api_calls".into(),
        level: 1,
        source: crate::edges::store::Source::Auto,
    };
    live.refresh(
        at(1002),
        Snapshot {
            suspensions_active: 1,
            ..Snapshot::default()
        },
        &loads,
        std::slice::from_ref(&suspension),
    );
    let admin = shared.view();
    let suspensions = admin.suspensions.as_array().unwrap();
    assert_eq!(suspensions.len(), 1, "{}", admin.suspensions);
    assert_eq!(suspensions[0]["source"], "auto");
    assert_eq!(suspensions[0]["token_masked"], "T4…");
    let top = &admin.top["tokens"][0];
    assert_eq!(top["token_fp"], fingerprint(4).to_string());
    assert_eq!(top["token_masked"], "T4…");
    assert_eq!(top["response_bytes"], 2000);
    assert_eq!(top["calls_per_minute"], 2.0);
    assert_eq!(admin.violations.as_array().unwrap().len(), 2);
    let text = shared.metrics.encode();
    assert!(
        text.contains("redcap_monitor_suspensions_active 1"),
        "{text}"
    );
    assert!(text.contains("redcap_monitor_enforcement_decisions_total{action=\"warn\"} 1"));
    assert!(text.contains(&format!(
        "redcap_monitor_top_token_load_ratio{{token_fp=\"{}\"}} 1.0",
        fingerprint(4)
    )));

    live.refresh(at(1004), Snapshot::default(), &loads, &[]);
    assert!(shared.view().suspensions.as_array().unwrap().is_empty());
    assert!(
        shared
            .metrics
            .encode()
            .contains("redcap_monitor_suspensions_active 0")
    );
}

#[test]
fn a_taken_port_is_an_error_that_names_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = ApiConfig {
        listen: taken.local_addr().unwrap().to_string(),
        ..ApiConfig::default()
    };
    let (tx, _rx) = mpsc::channel(1);
    let err = ApiServer::start(&config, Shared::new(Metrics::new()), None, tx)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("api.listen") && err.contains("api.enabled = false"),
        "{err}"
    );
}

#[test]
fn long_term_gauges_count_stale_tokens_attestations_and_concentration_without_token_labels() {
    use crate::edges::store::{Sighting, Store, StoreLimits};
    use crate::shared::model::Timestamp;
    use crate::shared::token::{MaskedToken, TokenFingerprint};
    use crate::stages::lifecycle::LifecycleConfig;
    use crate::stages::usage::{Day, Usage, day_text_of};

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state.redb"), StoreLimits::default()).unwrap();
    let now = Timestamp::from_secs_f64(1_796_558_400.0);
    let day = Span::from_secs(86_400);
    let used = |n: u8, at: Timestamp, calls: u64| Sighting {
        token: TokenFingerprint([n; 8]),
        masked: MaskedToken("ABC…EF".into()),
        ts: at,
        usage: Usage {
            calls,
            ..Usage::default()
        },
    };
    // Token 1 idle 181 days, token 2 idle 179; twelve tokens busy yesterday, token n+10 making
    // n calls: the top 10 made (3+…+12)/(1+…+12) = 75/78 of the calls.
    let mut sightings = vec![
        used(1, now.minus(Span(181 * day.0)), 1),
        used(2, now.minus(Span(179 * day.0)), 1),
    ];
    for n in 1..=12u8 {
        sightings.push(used(n + 10, now.minus(day), u64::from(n)));
    }
    store.touch_tokens(&sightings).unwrap();
    let attestations = dir.path().join("attestations.csv");
    let today = Day::of(now);
    std::fs::write(
        &attestations,
        format!(
            "token_fp,attested_on\n{},{}\n{},{}\n",
            TokenFingerprint([11; 8]),
            day_text_of(today.minus(366)),
            TokenFingerprint([12; 8]),
            day_text_of(today.minus(364)),
        ),
    )
    .unwrap();

    let metrics = Metrics::new();
    let mut live = LiveTelemetry::new(Shared::new(metrics.clone()), 0, Span::from_secs(60));
    live.use_lifecycle(&LifecycleConfig::default());
    live.refresh_long_term(&store, now);
    let text = metrics.encode();
    assert!(text.contains("redcap_monitor_tokens_stale 1\n"), "{text}");
    assert!(
        text.contains("redcap_monitor_attestations_missing -1\n"),
        "{text}"
    );
    assert!(
        text.contains("redcap_monitor_usage_rollup_rows 14\n"),
        "{text}"
    );
    let share = text
        .lines()
        .find_map(|l| l.strip_prefix("redcap_monitor_usage_top10_share "))
        .unwrap();
    assert!(
        (share.parse::<f64>().unwrap() - 75.0 / 78.0).abs() < 1e-9,
        "{share}"
    );
    assert!(!text.contains("token_fp"), "no token label: {text}");

    // With the attestation file: one overdue, one due tomorrow, twelve never attested. Not
    // computed again before the refresh interval, then at once after a reload.
    live.refresh_long_term(&store, now);
    live.use_lifecycle(&LifecycleConfig {
        attestations: Some(attestations),
        ..LifecycleConfig::default()
    });
    live.refresh_long_term(&store, now);
    let text = metrics.encode();
    assert!(
        text.contains("redcap_monitor_attestations_overdue 1\n"),
        "{text}"
    );
    assert!(
        text.contains("redcap_monitor_attestations_due 1\n"),
        "{text}"
    );
    assert!(
        text.contains("redcap_monitor_attestations_missing 12\n"),
        "{text}"
    );
}
