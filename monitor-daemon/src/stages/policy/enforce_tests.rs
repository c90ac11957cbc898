use super::*;
use crate::shared::model::Span;
use crate::stages::policy::sample::violating;
use crate::stages::redcap::sample::{at, fingerprint};

struct Server {
    degraded: bool,
    load_share: Option<f64>,
    assessment: Assessment,
}

impl Server {
    fn healthy() -> Server {
        Server {
            degraded: false,
            load_share: Some(0.9),
            assessment: Assessment::default(),
        }
    }

    fn degraded(share: f64) -> Server {
        Server {
            degraded: true,
            load_share: Some(share),
            assessment: Assessment::default(),
        }
    }

    fn view(&self) -> HealthView<'_> {
        HealthView {
            degraded: self.degraded,
            assessment: &self.assessment,
            load_share: self.load_share,
        }
    }
}

fn action(enforcer: &mut Enforcer, secs: u64, server: &Server) -> Option<Action> {
    enforcer
        .decide(&violating(1, secs), &server.view())
        .map(|d| d.action)
}

fn warn(reason: HoldReason) -> Option<Action> {
    Some(Action::Warn { reason })
}

fn suspend(from: u64, hours: u64) -> Option<Action> {
    Some(Action::Suspend {
        until: (from + hours * 3600) as f64,
        duration_s: (hours * 3600) as f64,
    })
}

#[test]
fn the_first_offence_warns_even_when_the_server_suffers() {
    let mut e = Enforcer::new(EnforcementConfig::default());
    assert_eq!(
        action(&mut e, 1000, &Server::degraded(0.9)),
        warn(HoldReason::FirstOffence)
    );
}

#[test]
fn a_repeat_offence_suspends_only_while_the_server_is_degraded_by_this_token() {
    let mut e = Enforcer::new(EnforcementConfig::default());
    action(&mut e, 1000, &Server::healthy());
    assert_eq!(
        action(&mut e, 1010, &Server::healthy()),
        warn(HoldReason::ServerHealthy)
    );
    assert_eq!(
        action(&mut e, 1020, &Server::degraded(0.05)),
        warn(HoldReason::SmallShareOfLoad)
    );
    assert_eq!(
        action(&mut e, 1030, &Server::degraded(0.5)),
        suspend(1030, 1)
    );
    assert_eq!(e.stats().suspensions, 1);
}

#[test]
fn strict_mode_suspends_on_violations_alone() {
    let mut e = Enforcer::new(EnforcementConfig {
        mode: EnforcementMode::OnViolation,
        ..EnforcementConfig::default()
    });
    action(&mut e, 1000, &Server::healthy());
    assert_eq!(action(&mut e, 1010, &Server::healthy()), suspend(1010, 1));
}

#[test]
fn a_suspended_token_is_not_decided_again_until_its_suspension_ends() {
    let mut e = Enforcer::new(EnforcementConfig::default());
    action(&mut e, 1000, &Server::degraded(0.9));
    action(&mut e, 1001, &Server::degraded(0.9));
    assert_eq!(action(&mut e, 2000, &Server::degraded(0.9)), None);
    assert_eq!(e.stats().while_suspended, 1);
}

#[test]
fn repeat_suspensions_double_up_to_the_maximum() {
    let mut e = Enforcer::new(EnforcementConfig {
        max_suspension: Duration(Span::from_secs(3 * 3600)),
        memory: Duration(Span::from_secs(7 * 24 * 3600)),
        ..EnforcementConfig::default()
    });
    let bad = Server::degraded(0.9);
    action(&mut e, 0, &bad);
    assert_eq!(action(&mut e, 10, &bad), suspend(10, 1));
    let after_first = 10 + 3600;
    assert_eq!(action(&mut e, after_first, &bad), suspend(after_first, 2));
    let after_second = after_first + 2 * 3600;
    assert_eq!(
        action(&mut e, after_second, &bad),
        suspend(after_second, 3),
        "capped"
    );
}

#[test]
fn offences_older_than_the_memory_are_forgiven() {
    let mut e = Enforcer::new(EnforcementConfig::default());
    let bad = Server::degraded(0.9);
    action(&mut e, 0, &bad);
    assert_eq!(
        action(&mut e, 2 * 24 * 3600, &bad),
        warn(HoldReason::FirstOffence)
    );
    e.forget_idle(at(5 * 24 * 3600));
    assert!(e.records.is_empty());
}

#[test]
fn a_lifted_token_escalates_from_its_record() {
    let mut e = Enforcer::new(EnforcementConfig::default());
    let bad = Server::degraded(0.9);
    action(&mut e, 0, &bad);
    action(&mut e, 10, &bad);
    assert!(e.lift(fingerprint(1), at(15), "by hand".into()));
    assert_eq!(action(&mut e, 20, &bad), suspend(20, 2));
}

#[test]
fn a_decision_carries_its_evidence_and_the_dry_run_mark() {
    let mut e = Enforcer::new(EnforcementConfig {
        dry_run: true,
        ..EnforcementConfig::default()
    });
    let bad = Server::degraded(0.75);
    e.decide(&violating(1, 0), &bad.view());
    let decision = e.decide(&violating(1, 5), &bad.view()).unwrap();
    assert!(decision.dry_run);
    assert_eq!(decision.token_fp, fingerprint(1));
    assert_eq!(decision.evidence.offences_remembered, 2);
    assert_eq!(decision.evidence.load_share, Some(0.75));
    assert!(decision.evidence.server_degraded);
    assert_eq!(decision.evidence.violations[0].count, 4);
    let json = serde_json::to_value(&decision).unwrap();
    assert_eq!(json["action"], "suspend");
    assert_eq!(json["until"], 3605.0);
}

#[test]
fn compliant_calls_and_calls_without_a_token_need_no_decision() {
    let mut e = Enforcer::new(EnforcementConfig::default());
    let mut compliant = violating(1, 0);
    compliant.violations.clear();
    assert!(
        e.decide(&compliant, &Server::degraded(0.9).view())
            .is_none()
    );
    let mut anonymous = violating(1, 0);
    anonymous.call.token = Err(crate::shared::token::TokenProblem::Missing);
    assert!(
        e.decide(&anonymous, &Server::degraded(0.9).view())
            .is_none()
    );
}

#[test]
fn a_token_breaking_rules_without_end_is_remembered_within_bounds() {
    let mut enforcer = Enforcer::new(EnforcementConfig::default());
    let server = Server::healthy();
    let mut last = None;
    for i in 0..10_000 {
        last = enforcer.decide(&violating(1, 1000 + i / 100), &server.view());
    }
    let decision = last.expect("a healthy server warns");
    assert_eq!(decision.evidence.offences_remembered, 64);
    assert!(matches!(
        decision.action,
        Action::Warn {
            reason: HoldReason::ServerHealthy
        }
    ));
}

#[test]
fn a_reload_keeps_suspensions_and_escalation_and_applies_the_new_settings() {
    let mut e = Enforcer::new(EnforcementConfig::default());
    let bad = Server::degraded(0.9);
    action(&mut e, 0, &bad);
    assert_eq!(action(&mut e, 10, &bad), suspend(10, 1));
    e.reconfigure(EnforcementConfig {
        mode: EnforcementMode::OnViolation,
        suspension: Duration(Span::from_secs(2 * 3600)),
        ..EnforcementConfig::default()
    });
    assert_eq!(
        action(&mut e, 20, &Server::healthy()),
        None,
        "still suspended after the reload"
    );
    let after = 10 + 3600;
    // Strict mode now suspends on a healthy server; the base is 2 h, doubled for the
    // suspension remembered from before the reload.
    assert_eq!(action(&mut e, after, &Server::healthy()), suspend(after, 4));
}

#[test]
fn a_flood_of_violating_tokens_is_bounded_and_never_forgets_a_suspension() {
    let mut e = Enforcer::new(EnforcementConfig {
        mode: EnforcementMode::OnViolation,
        max_records: 16,
        ..EnforcementConfig::default()
    });
    let healthy = Server::healthy();
    // Token 1 is suspended (a warning, then a suspension).
    action(&mut e, 1000, &healthy);
    assert_eq!(action(&mut e, 1010, &healthy), suspend(1010, 1));
    // Then 200 made-up tokens break a rule once each, within the day.
    for token in 2..=201u8 {
        e.decide(&violating(token, 1100), &healthy.view());
    }
    assert!(e.tracked_tokens() <= 16, "{} records", e.tracked_tokens());
    assert!(e.stats().evicted_records >= 184);
    // Token 1's suspension still holds.
    assert_eq!(action(&mut e, 1200, &healthy), None);
    assert_eq!(e.stats().while_suspended, 1);
}

/// The kinds of the events polled so far, with their token's number and time in seconds.
fn polled(e: &mut Enforcer) -> Vec<String> {
    std::iter::from_fn(|| e.poll_event())
        .map(|event| match event {
            EnforcementEvent::Suspended {
                token,
                since,
                until,
                by,
            } => format!(
                "suspended {token} at {} until {:?} by {}",
                since.as_secs_f64(),
                until.map(Timestamp::as_secs_f64),
                match by {
                    SuspendedBy::Decision(d) => format!("decision at {}", d.ts),
                    SuspendedBy::Admin { reason } => format!("admin: {reason}"),
                }
            ),
            EnforcementEvent::Lifted {
                token,
                at,
                by,
                violations,
            } => format!(
                "lifted {token} at {} by {by:?} after {violations} violations",
                at.as_secs_f64()
            ),
        })
        .collect()
}

#[test]
fn a_decided_suspension_is_polled_held_and_ends_at_its_poll_timeout() {
    let mut e = Enforcer::new(EnforcementConfig::default());
    e.listen();
    let bad = Server::degraded(0.9);
    action(&mut e, 1000, &bad);
    assert_eq!(
        polled(&mut e),
        Vec::<String>::new(),
        "a warning is no event"
    );
    assert_eq!(e.poll_timeout(), None);
    action(&mut e, 1010, &bad);
    let token = fingerprint(1);
    assert_eq!(
        polled(&mut e),
        [format!(
            "suspended {token} at 1010 until Some(4610.0) by decision at 1010"
        )]
    );
    assert_eq!(e.suspensions_in_force(), 1);
    assert_eq!(e.poll_timeout(), Some(at(4610)));
    assert!(
        e.held_at(token, at(2000), 2),
        "in force: violations counted"
    );
    e.handle_timeout(at(4609));
    assert_eq!(polled(&mut e), Vec::<String>::new(), "not before its end");
    e.handle_timeout(at(5000));
    assert_eq!(
        polled(&mut e),
        [format!(
            "lifted {token} at 4610 by Expiry after 2 violations"
        )]
    );
    assert_eq!((e.suspensions_in_force(), e.poll_timeout()), (0, None));
    assert!(!e.held_at(token, at(5001), 1));
}

#[test]
fn an_admin_suspends_and_lifts_through_the_stage_and_nothing_is_queued_without_a_listener() {
    let mut e = Enforcer::new(EnforcementConfig::default());
    let token = fingerprint(1);
    e.suspend(token, at(100), None, "quiet".into());
    assert_eq!(e.poll_event(), None, "no listener, no queue");
    e.listen();
    assert!(e.lift(token, at(200), "by hand".into()));
    assert!(
        !e.lift(token, at(201), "again".into()),
        "nothing left to lift"
    );
    e.suspend(token, at(300), None, "by hand".into());
    assert_eq!(e.poll_timeout(), None, "until lifted: no end to wait for");
    let bad = Server::degraded(0.9);
    assert_eq!(action(&mut e, 400, &bad), None, "held: nothing new decided");
    assert!(e.lift(token, at(500), "ok".into()));
    assert_eq!(
        polled(&mut e),
        [
            format!("lifted {token} at 200 by Admin {{ reason: \"by hand\" }} after 0 violations"),
            format!("suspended {token} at 300 until None by admin: by hand"),
            format!("lifted {token} at 500 by Admin {{ reason: \"ok\" }} after 0 violations"),
        ]
    );
    assert_eq!(
        action(&mut e, 600, &bad),
        warn(HoldReason::FirstOffence),
        "judged again after the lift"
    );
}

#[test]
fn a_restored_suspension_holds_without_an_event_and_expires_with_one() {
    let mut e = Enforcer::new(EnforcementConfig::default());
    let token = fingerprint(1);
    e.restore(token, Some(at(2000)));
    e.note_suspension(token, at(900));
    e.listen();
    let bad = Server::degraded(0.9);
    assert_eq!(action(&mut e, 1000, &bad), None, "still suspended");
    assert_eq!(
        e.poll_event(),
        None,
        "a restored suspension was acted on before"
    );
    assert_eq!(e.poll_timeout(), Some(at(2000)));
    e.handle_timeout(at(2000));
    assert_eq!(
        polled(&mut e),
        [format!(
            "lifted {token} at 2000 by Expiry after 0 violations"
        )]
    );
    assert_eq!(action(&mut e, 2100, &bad), warn(HoldReason::FirstOffence));
    assert_eq!(
        action(&mut e, 2110, &bad),
        suspend(2110, 2),
        "the restored suspension counts for escalation"
    );
}
