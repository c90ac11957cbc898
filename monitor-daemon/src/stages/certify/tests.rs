use super::*;
use crate::shared::model::Span;
use crate::stages::policy::sample::compliant;
use crate::stages::policy::{HeavyKind, Policy, Violation};
use crate::stages::redcap::ApiCall;
use crate::stages::redcap::sample::{at, call, fingerprint};

/// The policy's verdicts on `calls` (the default policy: 3 calls a minute, 1 heavy in 5).
fn verdicts(calls: Vec<ApiCall>) -> Vec<Verdict> {
    let mut policy = Policy::new(&PolicyConfig::default());
    for c in calls {
        policy.push(c);
    }
    std::iter::from_fn(|| policy.drain()).collect()
}

fn judge(verdicts: &[Verdict], window: Window) -> Certification {
    let mut judge = Judge::new(&PolicyConfig::default(), window);
    for v in verdicts {
        judge.add(v);
    }
    judge.finish()
}

fn export(n: u8, secs: u64, bytes: u64) -> ApiCall {
    let mut c = call(n, secs);
    c.params.content = Some("record".into());
    c.response_bytes = Some(bytes);
    c
}

fn peak(cert: &TokenCertificate, rule: &str) -> (u32, u32, Option<Timestamp>) {
    let r = cert.rules.iter().find(|r| r.rule == rule).unwrap();
    (r.peak, r.limit, r.peak_at)
}

#[test]
fn a_compliant_script_passes_with_its_peaks_and_server_time() {
    // Three calls in the first minute, then one a minute later: at most 3 in any 60 s.
    let mut calls: Vec<ApiCall> = [0, 20, 40, 61].iter().map(|s| call(1, 1000 + s)).collect();
    calls[1].ttfb = Some(Span::from_millis(900));
    calls[2].response_bytes = Some(50_000);
    let cert = judge(&verdicts(calls), Window::default());
    assert_eq!(cert.outcome, Outcome::Pass);
    assert_eq!(cert.tokens.len(), 1);
    let t = &cert.tokens[0];
    assert_eq!((t.outcome, t.calls, t.heavy_calls), (Outcome::Pass, 4, 0));
    assert_eq!(peak(t, "api_calls"), (3, 3, Some(at(1040))));
    assert_eq!(peak(t, "heavy_calls").0, 0);
    let largest = t.largest_response.as_ref().unwrap();
    assert_eq!((largest.bytes, largest.at), (50_000, at(1040)));
    assert!((t.server_time_s - 0.96).abs() < 1e-9, "{}", t.server_time_s);
    assert_eq!(t.server_time_p95_s, Some(0.9));
    assert!(t.violations.is_empty());
    let minutes: Vec<_> = t
        .minutes
        .iter()
        .map(|m| (m.start, m.calls, m.heavy_calls, m.largest_response_bytes))
        .collect();
    // 1000 s is 16 min 40 s: the first call falls in the minute from 960 s, the others in the
    // one from 1020 s.
    assert_eq!(
        minutes,
        [(at(960), 1, 0, Some(1000)), (at(1020), 3, 0, Some(50_000)),]
    );
    assert_eq!(cert.heavy_response_bytes, 500_000);
}

#[test]
fn a_rate_violation_fails_with_the_offending_calls_as_evidence() {
    let calls = (0..5).map(|i| call(1, 1000 + i * 10)).collect();
    let cert = judge(&verdicts(calls), Window::default());
    assert_eq!(cert.outcome, Outcome::Fail);
    let t = &cert.tokens[0];
    assert_eq!(t.outcome, Outcome::Fail);
    assert_eq!(peak(t, "api_calls"), (5, 3, Some(at(1040))));
    let got: Vec<_> = t
        .violations
        .iter()
        .map(|v| (v.at, v.rule.as_str(), v.limit, v.count))
        .collect();
    assert_eq!(
        got,
        [(at(1030), "api_calls", 3, 4), (at(1040), "api_calls", 3, 5)]
    );
}

#[test]
fn a_second_heavy_call_within_five_minutes_fails() {
    let calls = vec![export(1, 1000, 2_000_000), export(1, 1200, 3_000_000)];
    let cert = judge(&verdicts(calls), Window::default());
    let t = &cert.tokens[0];
    assert_eq!((t.outcome, t.heavy_calls), (Outcome::Fail, 2));
    assert_eq!(peak(t, "heavy_calls"), (2, 1, Some(at(1200))));
    assert_eq!(peak(t, "api_calls").0, 1, "200 s apart: one per minute");
    assert_eq!(t.violations.len(), 1);
    let v = &t.violations[0];
    assert_eq!(
        (v.rule.as_str(), v.count, v.window_s),
        ("heavy_calls", 2, 300.0)
    );
    assert_eq!(
        v.heavy,
        Some(HeavyReason::ResponseSize),
        "3 MB is over the size limit"
    );
    assert_eq!(t.largest_response.as_ref().unwrap().bytes, 3_000_000);
}

#[test]
fn a_hand_built_violation_fails_its_token_and_not_the_others() {
    let mut bad = compliant(call(2, 1000));
    bad.heavy = Some(HeavyReason::Kind(HeavyKind::Report));
    bad.violations.push(Violation {
        ts: at(1000),
        token: fingerprint(2),
        rule: "heavy_calls".into(),
        limit: 1,
        window: Span::from_secs(300),
        count: 2,
    });
    let good = compliant(call(1, 1000));
    let cert = judge(&[good, bad], Window::default());
    assert_eq!(cert.outcome, Outcome::Fail);
    let outcomes: Vec<_> = cert
        .tokens
        .iter()
        .map(|t| (t.token_fp, t.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            (fingerprint(2), Outcome::Fail),
            (fingerprint(1), Outcome::Pass)
        ],
        "failing tokens first"
    );
}

#[test]
fn only_calls_in_the_window_and_of_the_chosen_token_are_judged() {
    // Token 1 breaks the rate before the window; token 2 breaks it inside.
    let mut calls: Vec<ApiCall> = (0..5).map(|i| call(1, 1000 + i)).collect();
    calls.extend((0..5).map(|i| call(2, 2000 + i)));
    calls.push(call(1, 2000));
    let verdicts = verdicts(calls);
    let window = Window {
        from: Some(at(1500)),
        to: Some(at(3000)),
        token: None,
    };
    let cert = judge(&verdicts, window);
    let outcomes: Vec<_> = cert
        .tokens
        .iter()
        .map(|t| (t.token_fp, t.outcome, t.calls))
        .collect();
    assert_eq!(
        outcomes,
        [
            (fingerprint(2), Outcome::Fail, 5),
            (fingerprint(1), Outcome::Pass, 1)
        ]
    );
    assert_eq!(cert.calls_not_judged, 5);

    let one = judge(
        &verdicts,
        Window {
            token: Some(fingerprint(1)),
            ..window
        },
    );
    assert_eq!(one.outcome, Outcome::Pass);
    assert_eq!(one.tokens.len(), 1);
    assert_eq!(one.calls_not_judged, 10);
}

#[test]
fn a_window_without_calls_certifies_nothing_and_fails() {
    let cert = judge(
        &verdicts(vec![call(1, 1000)]),
        Window {
            token: Some(fingerprint(9)),
            ..Window::default()
        },
    );
    assert!(cert.tokens.is_empty());
    assert_eq!(cert.outcome, Outcome::Fail);
}
