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
    metrics.set_alert_stats(&crate::edges::alerts::AlertStats {
        raised: 4,
        ..Default::default()
    });
    metrics.set_delivery_stats(&crate::edges::alerts::DeliveryStats {
        attempts: 9,
        delivered: 3,
        gave_up: 1,
        failing_sinks: vec!["chat".into()],
        ..Default::default()
    });
    metrics.set_action_stats(
        &crate::edges::actions::ActionStats {
            suspensions: 5,
            manual_suspensions: 2,
            lifts: 3,
            manual_lifts: 1,
            ..Default::default()
        },
        crate::edges::actions::HookRuns {
            suspend_ok: 1,
            lift_failed: 1,
            ..Default::default()
        },
    );
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
    let pipeline = crate::stages::pipeline::Pipeline::new(
        crate::commands::config::Config::default().pipeline(),
        crate::shared::token::SiteKey::from_bytes([1; 32]),
    );
    let drain = crate::edges::capture::kernel::DrainStats {
        records: 9_000,
        drains_bounded: 7,
        ..Default::default()
    };
    let counters = crate::edges::capture::kernel::KernelCounters::default();
    metrics.refresh(&StatsView {
        pipeline: pipeline.stats(),
        capture: CaptureView::Kernel {
            counters: Some(&counters),
            drain: &drain,
        },
        degraded: false,
        blind_spots: &[],
        server_time_p95_s: None,
        tracked_connections: 0,
        tracked_tokens: 0,
    });
    let text = metrics.encode();
    assert!(
        text.contains("redcap_monitor_capture_bounded_drains_total 7"),
        "{text}"
    );
}
