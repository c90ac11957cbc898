use super::*;
use crate::shared::model::Span;
use crate::stages::health::TokenLoad;
use crate::stages::policy::Violation;
use crate::stages::policy::sample::compliant;
use crate::stages::redcap::sample::{call, fingerprint};

fn verdict(content: &str, action: Option<&str>, status: Option<u16>) -> Verdict {
    let mut call = call(1, 1000);
    call.params.content = Some(content.into());
    call.params.action = action.map(Into::into);
    call.status = status;
    compliant(call)
}

/// The sample lines of one metric (name then `{` or space).
fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

#[test]
fn hostile_content_and_action_values_become_other() {
    assert_eq!(content_label(Some("record")), "record");
    assert_eq!(content_label(Some("record\"} 1\nevil")), "other");
    assert_eq!(content_label(Some(&"x".repeat(10_000))), "other");
    assert_eq!(content_label(None), "none");
    assert_eq!(action_label(Some("export")), "export");
    assert_eq!(action_label(Some("EXPORT")), "other");
    assert_eq!(status_class(Some(204)), "2xx");
    assert_eq!(status_class(Some(503)), "5xx");
    assert_eq!(status_class(Some(999)), "other");
    assert_eq!(status_class(None), "none");
}

#[test]
fn calls_are_counted_by_bounded_labels_only() {
    let metrics = Metrics::new();
    metrics.observe(&verdict("record", Some("export"), Some(200)));
    metrics.observe(&verdict("record", Some("export"), Some(200)));
    // A thousand different made-up contents add one series, not a thousand.
    for i in 0..1000 {
        metrics.observe(&verdict(&format!("made-up-{i}"), Some("x"), Some(500)));
    }
    let text = metrics.encode();
    let calls = samples(&text, "redcap_monitor_api_calls_total");
    assert_eq!(
        calls.len(),
        2,
        "one series per allow-listed combination: {calls:?}"
    );
    assert!(calls.contains(
        &"redcap_monitor_api_calls_total{content=\"record\",action=\"export\",status_class=\"2xx\"} 2"
    ));
    assert!(calls.contains(
        &"redcap_monitor_api_calls_total{content=\"other\",action=\"other\",status_class=\"5xx\"} 1000"
    ));
    assert!(!text.contains("made-up"));
    assert!(text.contains("redcap_monitor_api_server_time_seconds_count 1002"));
    assert!(text.contains("redcap_monitor_api_response_size_bytes_bucket{le=\"1024.0\"} 1002"));
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
}

#[test]
fn violations_heavy_calls_and_decisions_are_counted() {
    let metrics = Metrics::new();
    metrics.declare_rules(["api_calls", "heavy_calls"]);
    let mut v = verdict("record", Some("export"), Some(200));
    v.heavy = Some(HeavyReason::ResponseSize);
    v.violations.push(Violation {
        ts: v.call.ts_start,
        token: fingerprint(1),
        rule: "api_calls".into(),
        limit: 3,
        window: Span::from_secs(60),
        count: 4,
    });
    metrics.observe(&v);
    let text = metrics.encode();
    assert!(text.contains("redcap_monitor_policy_violations_total{rule=\"api_calls\"} 1"));
    assert!(
        text.contains("redcap_monitor_policy_violations_total{rule=\"heavy_calls\"} 0"),
        "declared rules show 0 before their first violation"
    );
    assert!(text.contains("redcap_monitor_api_heavy_calls_total{reason=\"response_size\"} 1"));
}

#[test]
fn top_tokens_keep_at_most_k_series_and_drop_those_that_leave() {
    let metrics = Metrics::new();
    let load = |n: u8, share: f64| TokenLoad {
        token: fingerprint(n),
        calls: 3,
        server_time: Span::from_millis(100),
        share,
    };
    let mut top = TopTokens::new(2);
    top.update(&metrics, &[load(1, 0.5), load(2, 0.3), load(3, 0.2)]);
    let text = metrics.encode();
    let shown = samples(&text, "redcap_monitor_top_token_load_ratio");
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(text.contains(&format!("token_fp=\"{}\"", fingerprint(1))));
    assert!(!text.contains(&format!("token_fp=\"{}\"", fingerprint(3))));
    top.update(&metrics, &[load(3, 0.6), load(1, 0.4)]);
    let text = metrics.encode();
    assert!(
        !text.contains(&format!("token_fp=\"{}\"", fingerprint(2))),
        "a token that left the top has no series: {text}"
    );
    assert_eq!(
        samples(&text, "redcap_monitor_top_token_window_calls").len(),
        2
    );
    assert_eq!(TopTokens::new(1000).k, MAX_TOP_TOKENS);
    let mut off = TopTokens::new(0);
    let quiet = Metrics::new();
    off.update(&quiet, &[load(1, 1.0)]);
    assert!(samples(&quiet.encode(), "redcap_monitor_top_token_load_ratio").is_empty());
}

/// Prometheus's naming rules, checked on every family the daemon exposes.
#[test]
fn every_metric_name_follows_the_naming_rules() {
    let metrics = Metrics::new();
    metrics.observe(&verdict("record", Some("export"), Some(200)));
    let text = metrics.encode();
    let mut families = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# UNIT ") {
            let (name, unit) = rest.split_once(' ').unwrap();
            assert!(["seconds", "bytes"].contains(&unit), "{name}: base unit");
            assert!(name.ends_with(&format!("_{unit}")), "{name}: unit suffix");
        }
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        families += 1;
        let (name, kind) = rest.split_once(' ').unwrap();
        assert!(name.starts_with("redcap_monitor_"), "{name}: prefix");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name}: snake_case"
        );
        for bad in ["milli", "micro", "percent", "kilo", "mega", "_ms", "_count"] {
            assert!(!name.contains(bad), "{name}: base units only");
        }
        assert!(!name.ends_with("_total"), "{name}: the family drops _total");
        if kind == "counter" {
            assert!(
                samples(&text, name).is_empty(),
                "{name}: counter samples end in _total"
            );
        }
        for sample in text
            .lines()
            .filter(|l| l.starts_with(name) && l.contains('{'))
        {
            let labels = &sample[sample.find('{').unwrap() + 1..sample.find('}').unwrap()];
            assert!(!labels.contains("token="), "{sample}: never a token label");
        }
    }
    // Families without a series yet (e.g. capture, before the first refresh) are not listed.
    assert!(families >= 15, "{families} families");
    assert!(text.contains("redcap_monitor_build_info{version=\""));
}

#[test]
fn alert_delivery_and_hook_counters_are_exported() {
    let metrics = Metrics::new();
    let text = metrics.encode();
    for zero in [
        "redcap_monitor_webhook_deliveries_total 0",
        "redcap_monitor_webhook_delivery_failures_total 0",
        "redcap_monitor_alert_sinks_failing 0",
        "redcap_monitor_hook_runs_total{event=\"lift\",result=\"failed\"} 0",
    ] {
        assert!(text.contains(zero), "{zero} before anything happened");
    }
    metrics.refresh(&Snapshot {
        alerts: AlertCounters {
            raise: crate::edges::alerts::AlertStats {
                raised: 4,
                ..Default::default()
            },
            delivery: Some(crate::edges::alerts::DeliveryStats {
                attempts: 9,
                delivered: 3,
                gave_up: 1,
                failing_sinks: vec!["chat".into()],
                ..Default::default()
            }),
        },
        actions: crate::edges::actions::ActionStats {
            suspensions: 5,
            manual_suspensions: 2,
            lifts: 3,
            manual_lifts: 1,
            ..Default::default()
        },
        hooks: crate::edges::actions::HookRuns {
            suspend_ok: 1,
            lift_failed: 1,
            ..Default::default()
        },
        ..Snapshot::default()
    });
    let text = metrics.encode();
    for line in [
        "redcap_monitor_alerts_raised_total 4",
        "redcap_monitor_webhook_delivery_attempts_total 9",
        "redcap_monitor_webhook_deliveries_total 3",
        "redcap_monitor_webhook_delivery_failures_total 1",
        "redcap_monitor_alert_sinks_failing 1",
        "redcap_monitor_hook_runs_total{event=\"suspend\",result=\"ok\"} 1",
        "redcap_monitor_hook_runs_total{event=\"lift\",result=\"failed\"} 1",
        "redcap_monitor_suspensions_total{origin=\"auto\"} 3",
        "redcap_monitor_suspensions_total{origin=\"manual\"} 2",
        "redcap_monitor_suspension_lifts_total{origin=\"manual\"} 1",
        "redcap_monitor_suspension_lifts_total{origin=\"expired\"} 2",
    ] {
        assert!(text.contains(line), "{line}:\n{text}");
    }
}

#[test]
fn reads_of_the_ring_cut_short_by_their_budget_are_exported() {
    let metrics = Metrics::new();
    metrics.refresh(&Snapshot {
        mode: "ebpf".into(),
        kernel: Some(KernelSection::Counters(Box::default())),
        ring: Some(crate::edges::capture::kernel::DrainStats {
            records: 9_000,
            drains_bounded: 7,
            ..Default::default()
        }),
        ..Snapshot::default()
    });
    let text = metrics.encode();
    assert!(
        text.contains("redcap_monitor_capture_bounded_drains_total 7"),
        "{text}"
    );
}

/// Counters of the [`Snapshot`] that only `status` and the stats file show, by JSON pointer (a
/// prefix covers what is under it). The stages' own counters reach the metrics through
/// `problems` (`input_problems{problem}`), the rest are details for a person reading `status`.
const STATUS_ONLY: &[&str] = &[
    "/calls_written",
    "/violations_written",
    "/records/calls_written",
    "/records/violations_written",
    "/records/decisions_written",
    "/records/outages",
    "/kernel/",
    "/ring/",
    "/pcap/0/",
    "/coverage/0/",
    "/pipeline/",
    "/actions/",
    "/redcap_module/",
    "/directory/",
    "/alerts/",
    "/cluster/",
];

/// What a [`STATUS_ONLY`] entry says is exported after all (checked separately, since the
/// prefixes above cover them).
const EXPORTED_UNDER_STATUS_ONLY: &[&str] = &[
    "/cluster/up",
    "/cluster/calls_published",
    "/cluster/calls_late",
    "/cluster/buffered_calls",
    "/cluster/peers/0/calls_received",
    "/cluster/peers/0/live",
    "/kernel/packets_seen",
    "/kernel/events_sent",
    "/kernel/filtered",
    "/kernel/ring_full",
    "/kernel/truncated_bytes",
    "/kernel/flow_insert_failed",
    "/kernel/flows_evicted",
    "/kernel/flows_unanswered",
    "/kernel/tls_conns_evicted",
    "/kernel/tls_args_lost",
    "/kernel/flows_tracked",
    "/kernel/tls_conns_tracked",
    "/ring/malformed",
    "/ring/drains_bounded",
    "/pcap/0/received",
    "/pcap/0/dropped",
    "/pcap/0/if_dropped",
    "/pcap/0/truncated",
    "/pipeline/reassembly/bytes_delivered",
    "/pipeline/reassembly/evicted_connections",
    "/pipeline/reassembly/buffer_evictions",
    "/pipeline/health/degradations",
    "/actions/suspensions",
    "/actions/manual_suspensions",
    "/actions/lifts",
    "/actions/manual_lifts",
    "/directory/entries",
    "/alerts/raise/raised",
    "/alerts/delivery/attempts",
    "/alerts/delivery/delivered",
    "/alerts/delivery/gave_up",
];

/// A snapshot with every section present (every `Option` filled, one interface, one blind
/// spot, one problem).
fn full_snapshot() -> Snapshot {
    Snapshot {
        mode: "ebpf".into(),
        records: Some(Default::default()),
        kernel: Some(KernelSection::Counters(Box::default())),
        ring: Some(Default::default()),
        pcap: Some(vec![crate::edges::capture::live_pcap::InterfaceCounters {
            interface: "eth0".into(),
            ..Default::default()
        }]),
        server_time_p95_s: Some(0.5),
        coverage: Some(vec![BlindSpotCounts {
            reason: "https_unread".into(),
            ..Default::default()
        }]),
        problems: [("reassembly.gaps".to_owned(), 1)].into(),
        redcap_module: Some(Default::default()),
        directory: Some(Default::default()),
        alerts: AlertCounters {
            delivery: Some(Default::default()),
            ..Default::default()
        },
        cluster: Some(super::ClusterSection {
            host: "web1".into(),
            peers: vec![super::PeerStatus {
                name: "web2".into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Snapshot::default()
    }
}

/// Every number and flag in `value`, by JSON pointer.
fn leaves(value: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                leaves(v, format!("{at}/{key}"), out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                leaves(v, format!("{at}/{i}"), out);
            }
        }
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => out.push(at),
        _ => {}
    }
}

/// The exposition's lines, sorted (a family's series come out in no fixed order).
fn exposition_of(value: &serde_json::Value) -> Vec<String> {
    let snapshot: Snapshot = serde_json::from_value(value.clone()).unwrap();
    let metrics = Metrics::new();
    metrics.refresh(&snapshot);
    let mut lines: Vec<String> = metrics.encode().lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// A counter added to the snapshot fails here until it is exported or listed as status-only:
/// metrics cannot forget one, and cannot disagree with `status` (they read the same value).
#[test]
fn every_counter_of_the_snapshot_reaches_a_metric_or_is_listed_as_status_only() {
    let full = full_snapshot();
    let mut base = serde_json::to_value(&full).unwrap();
    let mut paths = Vec::new();
    leaves(&base, String::new(), &mut paths);
    // Distinct values everywhere, so that a changed one shows.
    for (i, path) in paths.iter().enumerate() {
        let leaf = base.pointer_mut(path).unwrap();
        if leaf.is_number() {
            *leaf = serde_json::json!(10 + 2 * i);
        }
    }
    // A part smaller than its total (auto = all - manual).
    for part in ["/actions/manual_suspensions", "/actions/manual_lifts"] {
        *base.pointer_mut(part).unwrap() = serde_json::json!(1);
    }
    let before = exposition_of(&base);
    assert!(paths.len() > 100, "{} counters", paths.len());
    let mut forgotten = Vec::new();
    let mut not_exported = Vec::new();
    for path in &paths {
        let mut changed = base.clone();
        let leaf = changed.pointer_mut(path).unwrap();
        let next = match &*leaf {
            serde_json::Value::Bool(b) => serde_json::json!(!*b),
            n => match n.as_u64() {
                Some(n) => serde_json::json!(n + 1),
                None => serde_json::json!(n.as_f64().unwrap() + 1.0),
            },
        };
        *leaf = next;
        let exported = exposition_of(&changed) != before;
        let status_only = STATUS_ONLY
            .iter()
            .any(|p| path == p || (p.ends_with('/') && path.starts_with(p)))
            && !EXPORTED_UNDER_STATUS_ONLY.contains(&path.as_str());
        if !exported && !status_only {
            forgotten.push(path.clone());
        }
        let said_exported = EXPORTED_UNDER_STATUS_ONLY.contains(&path.as_str());
        if (exported && status_only) || (!exported && said_exported) {
            not_exported.push(path.clone());
        }
    }
    assert!(
        forgotten.is_empty(),
        "counters no metric shows: {forgotten:?}"
    );
    assert!(not_exported.is_empty(), "listed wrongly: {not_exported:?}");
}

/// The metric names a text uses (identifiers that start with the daemon's prefix).
fn metric_names(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("redcap_monitor_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(&tail[..end]);
        rest = &tail[end..];
    }
    names
}

/// The shipped Grafana dashboard and Prometheus rules only query series the daemon exports
/// (the e2e test `telemetry` also runs every query against a live daemon; this needs no root).
#[test]
fn every_metric_the_dashboard_and_the_alert_rules_use_is_exported() {
    let metrics = Metrics::new();
    metrics.refresh(&full_snapshot());
    let mut v = verdict("record", Some("export"), Some(200));
    v.heavy = Some(HeavyReason::ResponseSize);
    metrics.observe(&v);
    metrics.set_long_term(&LongTermView::default());
    TopTokens::new(3).update(
        &metrics,
        &[TokenLoad {
            token: fingerprint(1),
            calls: 3,
            server_time: Span::from_millis(100),
            share: 1.0,
        }],
    );
    metrics.declare_rules(["api_calls"]);
    let text = metrics.encode();
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut checked = 0;
    for file in [
        "grafana/dashboards/redcap-monitor.json",
        "prometheus/redcap-monitor.rules.yml",
        "prometheus/redcap-monitor.rules.test.yml",
    ] {
        let uses = std::fs::read_to_string(config.join(file)).unwrap();
        for name in metric_names(&uses) {
            assert!(
                !samples(&text, name).is_empty(),
                "{file} uses {name}, which the daemon does not export:\n{text}"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "{checked} uses");
}
