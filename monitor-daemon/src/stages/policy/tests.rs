use super::*;
use crate::shared::token::TokenProblem;
use crate::stages::policy::PolicyConfig;
use crate::stages::redcap::sample::{at, call, fingerprint};

fn run(policy: &mut Policy, calls: Vec<ApiCall>) -> Vec<Verdict> {
    for c in calls {
        policy.push(c);
    }
    std::iter::from_fn(|| policy.drain()).collect()
}

fn rules_broken(verdicts: &[Verdict]) -> Vec<(u64, &str, u32)> {
    verdicts
        .iter()
        .flat_map(|v| &v.violations)
        .map(|v| (v.ts.as_nanos() / 1_000_000_000, v.rule.as_str(), v.count))
        .collect()
}

#[test]
fn three_calls_a_minute_is_compliant() {
    let mut policy = Policy::new(&PolicyConfig::default());
    let calls = (0..10).map(|i| call(1, 1000 + i * 20)).collect();
    let verdicts = run(&mut policy, calls);
    assert_eq!(verdicts.len(), 10);
    assert!(rules_broken(&verdicts).is_empty());
}

#[test]
fn every_call_over_the_limit_is_one_violation() {
    let mut policy = Policy::new(&PolicyConfig::default());
    let calls = (0..5).map(|i| call(1, 1000 + i)).collect();
    let verdicts = run(&mut policy, calls);
    assert_eq!(
        rules_broken(&verdicts),
        [(1003, "api_calls", 4), (1004, "api_calls", 5)]
    );
    assert_eq!(policy.stats().violations, 2);
}

#[test]
fn tokens_are_counted_apart() {
    let mut policy = Policy::new(&PolicyConfig::default());
    let calls = (0..6).map(|i| call(1 + (i % 2) as u8, 1000 + i)).collect();
    assert!(rules_broken(&run(&mut policy, calls)).is_empty());
    assert_eq!(policy.tracked_tokens(), 2);
}

#[test]
fn calls_are_evaluated_in_request_order_not_finish_order() {
    let mut policy = Policy::new(&PolicyConfig::default());
    // Four calls in one minute, but the first to start is the last to finish.
    let calls = vec![call(1, 1010), call(1, 1020), call(1, 1030), call(1, 1000)];
    let verdicts = run(&mut policy, calls);
    assert_eq!(rules_broken(&verdicts), [(1030, "api_calls", 4)]);
}

#[test]
fn poll_waits_for_earlier_open_requests_or_the_reorder_window() {
    let mut policy = Policy::new(&PolicyConfig::default());
    policy.push(call(1, 1000));
    // A request that started at 990 is still open: it may yet count before this call.
    assert!(
        policy
            .poll(at(1100), &Hold::all_since(Some(at(990))))
            .is_none()
    );
    assert!(
        policy
            .poll(at(1120), &Hold::all_since(Some(at(990))))
            .is_some(),
        "it cannot hold on forever"
    );
    policy.push(call(1, 1200));
    assert!(
        policy
            .poll(at(1201), &Hold::all_since(Some(at(1201))))
            .is_some(),
        "nothing open started earlier"
    );
    policy.push(call(1, 1300));
    assert!(
        policy.poll(at(1301), &Hold::all_since(None)).is_some(),
        "nothing open at all"
    );
}

#[test]
fn heavy_calls_are_limited_to_one_per_five_minutes() {
    let mut policy = Policy::new(&PolicyConfig::default());
    let export = |secs| {
        let mut c = call(1, secs);
        c.params.content = Some("record".into());
        c
    };
    let calls = vec![export(1000), export(1200), export(1301)];
    let verdicts = run(&mut policy, calls);
    assert_eq!(
        verdicts.iter().map(|v| v.heavy).collect::<Vec<_>>(),
        [Some(HeavyReason::Kind(HeavyKind::UnfilteredRecordExport)); 3]
    );
    // 1200 is within 300 s of 1000; 1301 is not within 300 s of 1000 but is of 1200.
    assert_eq!(
        rules_broken(&verdicts),
        [(1200, "heavy_calls", 2), (1301, "heavy_calls", 2)]
    );
}

#[test]
fn heavy_kinds_follow_the_request() {
    let policy = Policy::new(&PolicyConfig::default());
    let kind = |f: &dyn Fn(&mut ApiCall)| {
        let mut c = call(1, 0);
        f(&mut c);
        policy.classify(&c)
    };
    let set = |content: &str| Some(content.to_string());
    let heavy = |k| Some(HeavyReason::Kind(k));
    assert_eq!(
        kind(&|c| c.params.content = set("record")),
        heavy(HeavyKind::UnfilteredRecordExport)
    );
    assert_eq!(
        kind(&|c| {
            c.params.content = set("record");
            c.params.records = 2;
        }),
        None
    );
    assert_eq!(
        kind(&|c| {
            c.params.content = set("record");
            c.params.filter_logic = true;
        }),
        None
    );
    assert_eq!(
        kind(&|c| {
            c.params.content = set("record");
            c.params.data_bytes = Some(10);
        }),
        None,
        "an import is not an export, whatever action says"
    );
    assert_eq!(
        kind(&|c| c.params.content = set("report")),
        heavy(HeavyKind::Report)
    );
    assert_eq!(
        kind(&|c| c.params.content = set("log")),
        heavy(HeavyKind::Log)
    );
    assert_eq!(
        kind(&|c| c.params.content = set("project_xml")),
        heavy(HeavyKind::ProjectXml)
    );
    assert_eq!(
        kind(&|c| {
            c.params.content = set("project_xml");
            c.params.return_metadata_only = Some(true);
        }),
        None
    );
    assert_eq!(kind(&|c| c.params.content = set("pdf")), None);
    assert_eq!(
        kind(&|c| {
            c.params.content = set("pdf");
            c.params.all_records = Some(true);
        }),
        heavy(HeavyKind::PdfAllRecords)
    );
    assert_eq!(
        kind(&|c| {
            c.params.content = set("file");
            c.params.action = set("export");
        }),
        heavy(HeavyKind::FileExport)
    );
    assert_eq!(
        kind(&|c| {
            c.params.content = set("file");
            c.params.action = set("import");
            c.params.data_bytes = Some(5000);
        }),
        None
    );
    assert_eq!(
        kind(&|c| c.response_bytes = Some(500_001)),
        Some(HeavyReason::ResponseSize)
    );
    assert_eq!(kind(&|c| c.response_bytes = Some(500_000)), None);
    assert_eq!(
        kind(&|c| {
            c.params.content = set("record");
            c.status = Some(403);
        }),
        None,
        "a refused export did no heavy work"
    );
    assert_eq!(
        kind(&|c| {
            c.params.content = set("report");
            c.status = Some(500);
        }),
        heavy(HeavyKind::Report),
        "a report that failed on the server still loaded it"
    );
}

#[test]
fn calls_without_a_token_break_no_rule() {
    let mut policy = Policy::new(&PolicyConfig::default());
    let calls = (0..5)
        .map(|i| {
            let mut c = call(1, 1000 + i);
            c.token = Err(TokenProblem::Missing);
            c
        })
        .collect();
    let verdicts = run(&mut policy, calls);
    assert!(rules_broken(&verdicts).is_empty());
    assert_eq!(policy.stats().calls_without_token, 5);
    assert_eq!(policy.tracked_tokens(), 0);
}

#[test]
fn calls_without_a_usable_token_are_counted_against_their_client_address() {
    let mut policy = Policy::new(&PolicyConfig::default());
    let calls = [
        TokenProblem::Missing,
        TokenProblem::Malformed,
        TokenProblem::Unreadable,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, problem)| {
        let mut c = call(1, 1000 + i as u64);
        c.token = Err(problem);
        c
    })
    .collect();
    run(&mut policy, calls);
    let clients = policy.refused_clients(10);
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].1.calls, 3);
    assert_eq!(policy.stats().refused_untracked_calls, 0);
}

#[test]
fn heavy_reason_serialises_as_its_snake_case_name() {
    let names: Vec<String> = [
        HeavyReason::ResponseSize,
        HeavyReason::Kind(HeavyKind::UnfilteredRecordExport),
        HeavyReason::Kind(HeavyKind::PdfAllRecords),
    ]
    .iter()
    .map(|r| serde_json::to_string(r).unwrap())
    .collect();
    assert_eq!(
        names,
        [
            "\"response_size\"",
            "\"unfiltered_record_export\"",
            "\"pdf_all_records\""
        ]
    );
}

fn with_overrides(text: &str) -> PolicyConfig {
    let config =
        crate::commands::config::Config::parse(text, std::path::Path::new("test.toml")).unwrap();
    config.policy
}

#[test]
fn an_override_raises_one_tokens_limit_and_leaves_the_others() {
    let config = with_overrides(&format!(
        "[[policy.overrides]]\ntoken_fp = \"{}\"\nnote = \"nightly export job\"\n\
         limits = {{ api_calls = 10 }}\n",
        fingerprint(1)
    ));
    let mut policy = Policy::new(&config);
    let calls = (0..12)
        .flat_map(|i| [call(1, 1000 + i), call(2, 1000 + i)])
        .collect();
    let verdicts = run(&mut policy, calls);
    let broken: Vec<(TokenFingerprint, u32, u32)> = verdicts
        .iter()
        .flat_map(|v| &v.violations)
        .map(|v| (v.token, v.limit, v.count))
        .collect();
    let bulk: Vec<_> = broken.iter().filter(|b| b.0 == fingerprint(1)).collect();
    assert_eq!(bulk, [&(fingerprint(1), 10, 11), &(fingerprint(1), 10, 12)]);
    assert_eq!(broken.iter().filter(|b| b.0 == fingerprint(2)).count(), 9);
}

#[test]
fn an_exempt_token_breaks_no_rule_and_keeps_no_windows() {
    let config = with_overrides(&format!(
        "[[policy.overrides]]\ntoken_fp = \"{}\"\nexempt = true\n",
        fingerprint(1)
    ));
    let mut policy = Policy::new(&config);
    let verdicts = run(&mut policy, (0..50).map(|i| call(1, 1000 + i)).collect());
    assert!(rules_broken(&verdicts).is_empty());
    assert_eq!(policy.stats().exempt_calls, 50);
    assert_eq!(policy.tracked_tokens(), 0);
}

#[test]
fn the_token_cap_evicts_the_least_recently_seen_and_counts_it() {
    let config = PolicyConfig {
        max_tokens: 16,
        ..PolicyConfig::default()
    };
    let mut policy = Policy::new(&config);
    // Token 1 stays busy; 40 others call once each.
    let mut calls = Vec::new();
    for i in 0..40u8 {
        calls.push(call(100 + i, 1000 + u64::from(i)));
        calls.push(call(1, 1000 + u64::from(i) * 15));
    }
    run(&mut policy, calls);
    assert!(policy.tracked_tokens() <= 16);
    assert!(policy.stats().evicted_tokens >= 24);
    // The busy token kept its windows: its next call is still over the limit.
    let verdicts = run(&mut policy, vec![call(1, 1000 + 39 * 15)]);
    assert_eq!(rules_broken(&verdicts).len(), 1);
}

#[test]
fn refused_calls_of_unknown_tokens_are_counted_per_client_not_per_token() {
    let config = PolicyConfig {
        max_refused_clients: 4,
        ..PolicyConfig::default()
    };
    let mut policy = Policy::new(&config);
    let refused = |n: u8, client: u8, secs: u64| {
        let mut c = call(n, secs);
        c.status = Some(403);
        c.client.ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, client));
        c
    };
    // 200 random tokens from one client, then one each from ten others.
    let mut calls: Vec<ApiCall> = (0..200u8).map(|n| refused(n, 1, 1000)).collect();
    calls.extend((0..10u8).map(|c| refused(1, 10 + c, 1001)));
    let verdicts = run(&mut policy, calls);
    assert!(rules_broken(&verdicts).is_empty());
    assert_eq!(
        policy.tracked_tokens(),
        0,
        "no per-token state for refused calls"
    );
    assert_eq!(policy.stats().refused_untracked_calls, 210);
    assert!(policy.refused_clients(10).len() <= 4);
    assert!(policy.stats().evicted_refused_clients > 0);
    // A token the policy already tracks still has its refused calls counted against it.
    run(&mut policy, vec![call(7, 2000)]);
    let mut denied = call(7, 2001);
    denied.status = Some(403);
    run(&mut policy, vec![denied]);
    assert_eq!(policy.tracked_tokens(), 1);
    assert_eq!(policy.stats().refused_untracked_calls, 210);
}

#[test]
fn idle_tokens_are_forgotten_once_their_windows_are_empty() {
    let mut policy = Policy::new(&PolicyConfig::default());
    run(&mut policy, vec![call(1, 1000), call(2, 1500)]);
    policy.forget_idle(at(1200));
    assert_eq!(policy.tracked_tokens(), 2, "both may still count");
    // Longest window 300 s plus the reorder window 120 s after token 1's call.
    policy.forget_idle(at(1000 + 421));
    assert_eq!(policy.tracked_tokens(), 1);
}

fn rule(name: &str, calls: CallClass, limit: u32, secs: u64) -> crate::stages::policy::RuleConfig {
    crate::stages::policy::RuleConfig {
        name: name.into(),
        calls,
        limit,
        window: crate::shared::settings::Duration(Span::from_secs(secs)),
    }
}

#[test]
fn a_reload_judges_the_next_call_by_the_new_limit_with_the_calls_already_counted() {
    let mut policy = Policy::new(&PolicyConfig::default());
    let before = run(&mut policy, vec![call(1, 1000), call(1, 1001)]);
    assert!(rules_broken(&before).is_empty());
    let mut tightened = PolicyConfig::default();
    tightened.rules[0].limit = 1;
    policy.reconfigure(&tightened);
    let after = run(&mut policy, vec![call(1, 1002), call(2, 1002)]);
    // Token 1's third call in the minute breaks the new limit of 1: the two earlier calls
    // were kept. Token 2 has one call.
    assert_eq!(rules_broken(&after), [(1002, "api_calls", 3)]);
    assert_eq!(after[0].violations[0].limit, 1);
}

#[test]
fn a_reload_starts_renamed_or_reclassed_rules_empty_and_drops_removed_ones() {
    let mut policy = Policy::new(&PolicyConfig::default());
    run(&mut policy, (0..3).map(|i| call(1, 1000 + i)).collect());
    let changed = PolicyConfig {
        rules: vec![
            rule("burst", CallClass::All, 1, 60),
            rule("api_calls", CallClass::Heavy, 1, 60),
        ],
        ..PolicyConfig::default()
    };
    policy.reconfigure(&changed);
    let after = run(&mut policy, vec![call(1, 1003), call(1, 1004)]);
    // `burst` is new: it counts from the reload on. `api_calls` now counts heavy calls only,
    // so the old all-calls counts do not carry over (and these calls are not heavy).
    assert_eq!(rules_broken(&after), [(1004, "burst", 2)]);
}

#[test]
fn unanswered_calls_of_unknown_tokens_are_counted_per_client_not_per_token() {
    let mut policy = Policy::new(&PolicyConfig::default());
    // The client resets before each answer: the server never judged these tokens.
    let calls = (0..200u8)
        .map(|n| {
            let mut c = call(n, 1000);
            c.status = None;
            c
        })
        .collect();
    let verdicts = run(&mut policy, calls);
    assert!(rules_broken(&verdicts).is_empty());
    assert_eq!(
        policy.tracked_tokens(),
        0,
        "no per-token state for unanswered calls"
    );
    assert_eq!(policy.stats().unanswered_untracked_calls, 200);
    assert_eq!(policy.refused_clients(10)[0].1.calls, 200);
    // A token already tracked still has its unanswered calls counted against it.
    run(&mut policy, vec![call(7, 2000)]);
    let mut reset = call(7, 2001);
    reset.status = None;
    run(&mut policy, vec![reset]);
    assert_eq!(policy.tracked_tokens(), 1);
    assert_eq!(policy.stats().unanswered_untracked_calls, 200);
}

#[test]
fn a_client_probing_with_refused_tokens_over_the_rate_limit_is_a_violation_by_address() {
    let mut policy = Policy::new(&PolicyConfig::default());
    let refused = |n: u8, client: u8, secs: u64| {
        let mut c = call(n, secs);
        c.status = Some(403);
        c.client.ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, client));
        c
    };
    // Five refused tokens in 40 s from one address (the rate limit is 3 a minute), three from
    // another, one every 30 s from a third (never more than 2 in a minute).
    let mut calls: Vec<ApiCall> = (0..5u8)
        .map(|n| refused(n, 1, 1000 + u64::from(n) * 10))
        .collect();
    calls.extend((0..3u8).map(|n| refused(50 + n, 2, 1000 + u64::from(n))));
    calls.extend((0..6u8).map(|n| refused(80 + n, 3, 1000 + u64::from(n) * 30)));
    let verdicts = run(&mut policy, calls);
    let found: Vec<(std::net::IpAddr, u64, u32)> = verdicts
        .iter()
        .filter_map(|v| v.client_violation.as_ref())
        .map(|v| (v.client, v.ts.as_nanos() / 1_000_000_000, v.count))
        .collect();
    let one = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(found, vec![(one, 1030, 4), (one, 1040, 5)]);
    let v = verdicts
        .iter()
        .find_map(|v| v.client_violation.as_ref())
        .unwrap();
    assert_eq!((v.limit, v.window), (3, Span::from_secs(60)));
    assert_eq!(policy.stats().client_violations, 2);
    assert!(rules_broken(&verdicts).is_empty(), "no token is blamed");
}

#[test]
fn the_refused_calls_rule_can_be_configured_apart_from_the_rate_limit() {
    let config = with_overrides("[policy.refused_calls]\nlimit = 10\nwindow = \"10m\"\n");
    let mut policy = Policy::new(&config);
    let calls = (0..11u8)
        .map(|n| {
            let mut c = call(n, 1000 + u64::from(n) * 30);
            c.status = Some(401);
            c
        })
        .collect();
    let verdicts = run(&mut policy, calls);
    let counts: Vec<u32> = verdicts
        .iter()
        .filter_map(|v| v.client_violation.as_ref().map(|v| v.count))
        .collect();
    assert_eq!(counts, vec![11]);
}

#[test]
fn a_refused_calls_rule_with_an_empty_window_is_refused_by_its_key() {
    let err = crate::commands::config::Config::parse(
        "[policy.refused_calls]\nlimit = 3\nwindow = \"0s\"\n",
        std::path::Path::new("test.toml"),
    )
    .map(|_| ())
    .expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("policy.refused_calls.window"), "{text}");
}
