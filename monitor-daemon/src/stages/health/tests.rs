use super::*;
use crate::stages::redcap::sample::{at, call, fingerprint};

/// Six calls by token 1 finishing in second `secs`, each taking `ttfb_ms`, `errors` of them 5xx.
fn second_of_calls(d: &mut ResponsivenessDetector, secs: u64, ttfb_ms: u64, errors: usize) {
    for i in 0..6 {
        let mut c = call(1, secs);
        c.ttfb = Some(Span::from_millis(ttfb_ms));
        if i < errors {
            c.status = Some(503);
        }
        d.observe(&c);
    }
}

/// Drives one 10 s interval of traffic (a burst every second) and judges it.
fn interval(
    d: &mut ResponsivenessDetector,
    end_secs: u64,
    ttfb_ms: u64,
    errors: usize,
) -> Option<HealthChange> {
    for s in end_secs - 9..=end_secs {
        second_of_calls(d, s, ttfb_ms, errors);
    }
    d.tick(at(end_secs))
}

fn kind(change: &Option<HealthChange>) -> &'static str {
    match change {
        None => "-",
        Some(HealthChange::Degraded { .. }) => "degraded",
        Some(HealthChange::Recovered { .. }) => "recovered",
    }
}

fn detector() -> ResponsivenessDetector {
    let mut d = ResponsivenessDetector::new(HealthConfig::default());
    // The first tick only schedules the first judgement.
    assert!(d.tick(at(1000)).is_none());
    d
}

#[test]
fn a_fast_server_stays_healthy() {
    let mut d = detector();
    for k in 1..=20 {
        assert!(interval(&mut d, 1000 + 10 * k, 50, 0).is_none());
    }
    assert!(!d.is_degraded());
    assert_eq!(d.assessment().ttfb_p95_s, Some(0.05));
}

#[test]
fn slowness_must_last_enter_after_intervals_before_it_is_degraded() {
    let mut d = detector();
    let changes: Vec<_> = (1..=4)
        .map(|k| kind(&interval(&mut d, 1000 + 10 * k, 3000, 0)))
        .collect();
    assert_eq!(changes, ["-", "-", "degraded", "-"]);
    let Some(HealthChange::Degraded { evidence, .. }) = ({
        let mut d = detector();
        (1..=3)
            .map(|k| interval(&mut d, 1000 + 10 * k, 3000, 0))
            .last()
            .flatten()
    }) else {
        panic!("expected a degradation")
    };
    assert_eq!(evidence.bad_signs, [BadSign::SlowAbsolute]);
    assert_eq!(evidence.ttfb_p95_s, Some(3.0));
}

#[test]
fn recovery_needs_leave_after_good_intervals_and_reports_how_long() {
    let mut d = detector();
    for k in 1..=3 {
        interval(&mut d, 1000 + 10 * k, 3000, 0);
    }
    assert!(d.is_degraded());
    // The window is 60 s: slow calls linger for a while after the server is fast again.
    let changes: Vec<_> = (4..=12)
        .map(|k| kind(&interval(&mut d, 1000 + 10 * k, 50, 0)))
        .collect();
    let recovered_at = changes
        .iter()
        .position(|c| *c == "recovered")
        .expect("recovers");
    assert_eq!(changes.iter().filter(|c| **c != "-").count(), 1);
    assert!(recovered_at >= 2, "{changes:?}");
    assert!(!d.is_degraded());
}

#[test]
fn alternating_good_and_bad_intervals_do_not_flap() {
    let mut d = ResponsivenessDetector::new(HealthConfig {
        window: Duration(Span::from_secs(10)),
        ..HealthConfig::default()
    });
    d.tick(at(1000));
    for k in 1..=20 {
        let ttfb = if k % 2 == 0 { 3000 } else { 50 };
        assert!(
            interval(&mut d, 1000 + 10 * k, ttfb, 0).is_none(),
            "interval {k}"
        );
    }
}

#[test]
fn many_server_errors_are_a_bad_sign() {
    let mut d = detector();
    for k in 1..=3 {
        interval(&mut d, 1000 + 10 * k, 50, 3);
    }
    assert!(d.is_degraded());
    assert_eq!(d.assessment().bad_signs, [BadSign::ServerErrors]);
    assert_eq!(d.assessment().server_error_share, Some(0.5));
}

#[test]
fn slowness_relative_to_the_learned_baseline_is_a_bad_sign() {
    let mut d = detector();
    for k in 1..=10 {
        interval(&mut d, 1000 + 10 * k, 200, 0);
    }
    assert!((d.assessment().baseline_p95_s.unwrap() - 0.2).abs() < 1e-9);
    // 900 ms is under the absolute 2 s but 4.5x the baseline.
    for k in 11..=20 {
        interval(&mut d, 1000 + 10 * k, 900, 0);
    }
    assert!(d.is_degraded());
    assert_eq!(d.assessment().bad_signs, [BadSign::SlowRelative]);
}

#[test]
fn a_few_calls_say_nothing() {
    let mut d = detector();
    for k in 1..=5 {
        let mut c = call(1, 1000 + 10 * k);
        c.ttfb = Some(Span::from_secs(30));
        d.observe(&c);
        assert!(d.tick(at(1000 + 10 * k)).is_none());
    }
    assert!(!d.is_degraded());
}

#[test]
fn a_failing_canary_degrades_even_without_calls() {
    let mut d = detector();
    let changes: Vec<_> = (1..=3)
        .map(|k| {
            d.observe_canary(at(1000 + 10 * k - 1), None);
            kind(&d.tick(at(1000 + 10 * k)))
        })
        .collect();
    assert_eq!(changes, ["-", "-", "degraded"]);
    assert_eq!(d.assessment().bad_signs, [BadSign::CanaryFailed]);
}

#[test]
fn load_is_shared_by_server_time() {
    let mut d = detector();
    for (token, ttfb_ms, n) in [(1u8, 900u64, 2), (2, 50, 4)] {
        for _ in 0..n {
            let mut c = call(token, 1005);
            c.ttfb = Some(Span::from_millis(ttfb_ms));
            d.observe(&c);
        }
    }
    let loads = d.load_by_token(at(1010));
    assert_eq!(
        loads
            .iter()
            .map(|l| (l.token, l.calls, l.server_time))
            .collect::<Vec<_>>(),
        [
            (fingerprint(1), 2, Span::from_millis(1800)),
            (fingerprint(2), 4, Span::from_millis(200))
        ]
    );
    assert!((loads[0].share - 0.9).abs() < 1e-9);
    // One token's share, without a walk over the window, agrees.
    let share = d.load_share(fingerprint(1), at(1010)).unwrap();
    assert!((share - 0.9).abs() < 1e-9);
    assert_eq!(d.load_share(fingerprint(3), at(1010)), None);
    assert!(d.load_by_token(at(1100)).is_empty(), "outside the window");
    assert_eq!(
        d.load_share(fingerprint(1), at(1100)),
        None,
        "outside the window"
    );
}

#[test]
fn a_share_follows_the_samples_held_when_the_oldest_are_dropped() {
    let mut d = ResponsivenessDetector::new(HealthConfig {
        max_samples: 4,
        ..HealthConfig::default()
    });
    // Token 1's two slow calls are pushed out by four quick ones of token 2.
    for (token, ttfb_ms) in [
        (1u8, 900u64),
        (1, 900),
        (2, 100),
        (2, 100),
        (2, 100),
        (2, 100),
    ] {
        let mut c = call(token, 1005);
        c.ttfb = Some(Span::from_millis(ttfb_ms));
        d.observe(&c);
    }
    assert_eq!(d.load_share(fingerprint(1), at(1006)), None);
    assert_eq!(d.load_share(fingerprint(2), at(1006)), Some(1.0));
    assert_eq!(d.stats().samples_dropped, 2);
}

#[test]
fn judges_on_schedule_when_ticked_at_every_packet() {
    let mut d = detector();
    let mut changes = Vec::new();
    // One 3 s call every 3.5 s, ticked every 100 ms as packets would.
    for tenth in 10_000..10_700u64 {
        let now = Timestamp::from_nanos(tenth * 100_000_000);
        if tenth % 35 == 0 {
            let mut c = call(1, 0);
            c.ts_end = now;
            c.ttfb = Some(Span::from_secs(3));
            d.observe(&c);
        }
        changes.extend(d.tick(now));
    }
    assert_eq!(changes.len(), 1, "{:?}", d.stats());
}

#[test]
fn a_reload_keeps_the_degraded_state_and_judges_by_the_new_thresholds() {
    let mut d = detector();
    for k in 1..=3 {
        interval(&mut d, 1000 + 10 * k, 3000, 0);
    }
    assert!(d.is_degraded());
    // 3 s is fine under the new limit, but it takes `leave_after` = 1 good interval to say so:
    // the state and the streaks carried over.
    d.reconfigure(HealthConfig {
        ttfb_p95_max: crate::shared::settings::Duration(Span::from_secs(5)),
        baseline_factor: 100.0,
        leave_after: 1,
        ..HealthConfig::default()
    });
    assert!(d.is_degraded(), "a reload does not forget the state");
    assert_eq!(kind(&interval(&mut d, 1040, 3000, 0)), "recovered");
}
