//! What to do about a token that broke a rule: warn it, suspend it, or hold back.
//!
//! Owns the decision ladder the policy describes — code that hurts production responsiveness gets
//! its token suspended — so by default a violation suspends only while the server is degraded and
//! the token carries a real share of the server's work; a strict mode suspends on violation
//! alone. First offences warn; repeated ones suspend, each suspension longer than the last (as
//! fail2ban's bantime increment does). Every decision carries its evidence. Sans-IO: acting on a
//! decision (hooks, alerts, the store) belongs to the edges.
//!
//! The [`Enforcer`] is the one owner of the suspensions in force: its own (decided here), an
//! admin's ([`Enforcer::suspend`], [`Enforcer::lift`]: inputs like calls) and those a store gave
//! back after a restart ([`Enforcer::restore`]). What happens to them comes out the way
//! quinn-proto's `Connection` tells it: [`Enforcer::poll_event`] yields each suspension begun or
//! ended, [`Enforcer::poll_timeout`] says when the next one ends and [`Enforcer::handle_timeout`]
//! ends it. The edges persist, alert and run hooks from those events; they hold no suspensions.

use serde::{Deserialize, Serialize};

use crate::shared::model::{Span, Timestamp};
use crate::shared::settings::{Duration, Problem, share};
use crate::shared::token::{FingerprintMap, TokenFingerprint};
use crate::stages::health::Assessment;

use super::{Verdict, Violation};

/// `[enforcement]`: when a violation becomes a suspension.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnforcementConfig {
    pub(crate) mode: EnforcementMode,
    /// Decide and record, but mark every decision as not to be acted on.
    pub(crate) dry_run: bool,
    /// In `when_degraded` mode, a token is suspended only if it carries at least this share of
    /// the server time in the health window.
    pub(crate) min_load_share: f64,
    /// Offences answered with a warning before the next one suspends.
    pub(crate) warnings_before_suspension: u32,
    /// How long offences and suspensions are remembered for escalation.
    pub memory: Duration,
    /// Length of a first suspension...
    pub(crate) suspension: Duration,
    /// ...multiplied by this for each earlier suspension still remembered...
    pub(crate) suspension_factor: f64,
    /// ...up to this.
    pub(crate) max_suspension: Duration,
    /// Most tokens whose offences are remembered; past it the eighth least recently offending
    /// (never a suspended one) are forgotten, counted as `evicted_records`, so that a flood of
    /// violating tokens cannot grow memory within `memory`.
    pub(crate) max_records: usize,
}

impl Default for EnforcementConfig {
    fn default() -> Self {
        Self {
            mode: EnforcementMode::WhenDegraded,
            dry_run: false,
            min_load_share: 0.2,
            warnings_before_suspension: 1,
            memory: Duration(Span::from_secs(24 * 3600)),
            suspension: Duration(Span::from_secs(3600)),
            suspension_factor: 2.0,
            max_suspension: Duration(Span::from_secs(7 * 24 * 3600)),
            max_records: 100_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EnforcementMode {
    /// Suspend only while the server is degraded and the token loads it.
    #[default]
    WhenDegraded,
    /// Suspend on violations alone (after the warnings).
    OnViolation,
}

/// What was decided about one offending call.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub(crate) enum Action {
    /// Told, not stopped.
    Warn { reason: HoldReason },
    /// Stopped until `until` (epoch seconds).
    Suspend { until: f64, duration_s: f64 },
}

/// Why a violation was answered with a warning rather than a suspension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HoldReason {
    /// The token has warnings left before it is suspended.
    FirstOffence,
    /// The server is responsive: breaking a rule alone does not suspend in this mode.
    ServerHealthy,
    /// The server is degraded, but this token carries too little of its load to be the cause.
    SmallShareOfLoad,
}

/// A decision and the evidence that led to it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    /// Epoch seconds of the offending call's start.
    pub(crate) ts: f64,
    pub(crate) token_fp: TokenFingerprint,
    pub(crate) token_masked: String,
    #[serde(flatten)]
    pub(crate) action: Action,
    /// Recorded but not to be acted on.
    pub(crate) dry_run: bool,
    pub(crate) evidence: Evidence,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Evidence {
    pub(crate) violations: Vec<ViolationEvidence>,
    pub(crate) offences_remembered: u32,
    pub(crate) suspensions_remembered: u32,
    pub(crate) server_degraded: bool,
    pub(crate) health: Assessment,
    /// The token's share of server time in the health window, when it had any.
    pub(crate) load_share: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct ViolationEvidence {
    pub(crate) rule: String,
    pub(crate) limit: u32,
    pub(crate) window_s: f64,
    pub(crate) count: u32,
}

impl From<&Violation> for ViolationEvidence {
    fn from(v: &Violation) -> Self {
        ViolationEvidence {
            rule: v.rule.clone(),
            limit: v.limit,
            window_s: v.window.as_secs_f64(),
            count: v.count,
        }
    }
}

/// The server's state at the time of a decision, as the health stage sees it.
pub struct HealthView<'a> {
    pub degraded: bool,
    pub assessment: &'a Assessment,
    /// The deciding token's share of the server time in the health window (`None`: no answered
    /// call of it there).
    pub load_share: Option<f64>,
}

/// Offences remembered per token at most (the newest): enough for any warning ladder, and a
/// token breaking rules thousands of times a minute cannot grow its record without bound.
const MAX_OFFENCES_REMEMBERED: usize = 64;

/// What is remembered of one token for escalation.
#[derive(Default)]
struct Record {
    offences: Vec<Timestamp>,
    suspensions: Vec<Timestamp>,
    suspended_until: Option<Timestamp>,
}

/// A suspension in force, as the enforcer holds it.
#[derive(Clone, Copy, Debug)]
struct Held {
    until: Option<Timestamp>,
    /// Violations of the token since the suspension began: counted, not recorded one by one, so
    /// that a suspended client hammering the server cannot grow the audit log.
    violations: u64,
}

/// Who began a suspension.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum SuspendedBy {
    /// This stage, on the decision of the call that broke a rule (with its evidence).
    Decision(Box<Decision>),
    /// An admin, by hand.
    Admin { reason: String },
}

/// Why a suspension ended.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum LiftedBy {
    /// It ran out (at the `at` of the event, its end).
    Expiry,
    /// An admin lifted it early.
    Admin { reason: String },
}

/// What happened to the suspensions in force, in order, from [`Enforcer::poll_event`].
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum EnforcementEvent {
    Suspended {
        token: TokenFingerprint,
        since: Timestamp,
        /// `None`: until lifted.
        until: Option<Timestamp>,
        by: SuspendedBy,
    },
    Lifted {
        token: TokenFingerprint,
        at: Timestamp,
        by: LiftedBy,
        /// Violations of the token while it was suspended.
        violations: u64,
    },
}

/// Counters the enforcer keeps.
#[derive(Clone, Debug, Default)]
pub(crate) struct EnforcementStats {
    pub(crate) warnings: u64,
    pub(crate) suspensions: u64,
    /// Violations by a token that was already suspended: nothing new to decide.
    pub(crate) while_suspended: u64,
    /// Records of tokens forgotten to stay within `max_records` (their next offence is a
    /// first one again).
    pub(crate) evicted_records: u64,
}

pub struct Enforcer {
    config: EnforcementConfig,
    records: FingerprintMap<Record>,
    /// The suspensions in force (not a dry run's): the one list of them in the daemon.
    active: FingerprintMap<Held>,
    /// Events not yet polled; kept only once someone listens ([`Enforcer::listen`]), so that a
    /// replay nobody acts on does not queue them.
    events: std::collections::VecDeque<EnforcementEvent>,
    listening: bool,
    /// The earliest end among `active` (kept current on every change: looked at per packet).
    next_end: Option<Timestamp>,
    stats: EnforcementStats,
}

impl Enforcer {
    pub fn new(config: EnforcementConfig) -> Enforcer {
        Enforcer {
            config,
            records: FingerprintMap::default(),
            active: FingerprintMap::default(),
            events: std::collections::VecDeque::new(),
            listening: false,
            next_end: None,
            stats: EnforcementStats::default(),
        }
    }

    /// Queues [`EnforcementEvent`]s from now on, for an edge that acts on them.
    pub(crate) fn listen(&mut self) {
        self.listening = true;
    }

    fn emit(&mut self, event: EnforcementEvent) {
        if self.listening {
            self.events.push_back(event);
        }
    }

    /// The next suspension begun or ended, oldest first.
    pub(crate) fn poll_event(&mut self) -> Option<EnforcementEvent> {
        self.events.pop_front()
    }

    /// When the next suspension in force ends (`None`: none ends by itself).
    pub(crate) fn poll_timeout(&self) -> Option<Timestamp> {
        self.next_end
    }

    fn active_changed(&mut self) {
        self.next_end = self.active.values().filter_map(|held| held.until).min();
    }

    /// Ends the suspensions whose end is `now` or earlier, each with a
    /// [`EnforcementEvent::Lifted`] at its end.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.poll_timeout().is_none_or(|next| next > now) {
            return;
        }
        let mut ended: Vec<(TokenFingerprint, Timestamp, u64)> = self
            .active
            .iter()
            .filter_map(|(token, held)| {
                held.until
                    .filter(|until| *until <= now)
                    .map(|until| (*token, until, held.violations))
            })
            .collect();
        ended.sort_by_key(|(token, until, _)| (*until, token.0));
        for (token, at, violations) in ended {
            self.active.remove(&token);
            self.emit(EnforcementEvent::Lifted {
                token,
                at,
                by: LiftedBy::Expiry,
                violations,
            });
        }
        self.active_changed();
    }

    /// Whether `token` is under a suspension in force at `at`; if so the call's `violations`
    /// are counted against the suspension (reported when it ends).
    pub(crate) fn held_at(
        &mut self,
        token: TokenFingerprint,
        at: Timestamp,
        violations: usize,
    ) -> bool {
        match self.active.get_mut(&token) {
            Some(held) if held.until.is_none_or(|until| at < until) => {
                held.violations += violations as u64;
                true
            }
            _ => false,
        }
    }

    /// Suspensions in force.
    pub fn suspensions_in_force(&self) -> usize {
        self.active.len()
    }

    /// Remembers an offence of `token` at `now` for escalation, as [`decide`](Self::decide)
    /// does, and returns how many earlier ones are remembered; `None` (nothing remembered) while
    /// the token is suspended.
    fn remember_offence(&mut self, token: TokenFingerprint, now: Timestamp) -> Option<u32> {
        let config = &self.config;
        if !self.records.contains_key(&token) && self.records.len() >= config.max_records.max(1) {
            self.stats.evicted_records += make_room(&mut self.records, config.max_records, now);
        }
        let record = self.records.entry(token).or_default();
        if record.suspended_until.is_some_and(|until| until > now) {
            return None;
        }
        if let Some(horizon) = now.0.checked_sub(config.memory.span().0) {
            record.offences.retain(|t| t.0 > horizon);
            record.suspensions.retain(|t| t.0 > horizon);
        }
        let earlier = record.offences.len() as u32;
        let most = MAX_OFFENCES_REMEMBERED.max(config.warnings_before_suspension as usize + 1);
        if record.offences.len() >= most {
            record.offences.remove(0);
        }
        record.offences.push(now);
        Some(earlier)
    }

    /// Remembers an offence another host saw (its call broke a rule in the shared windows) and
    /// acted on itself: the next offence here escalates from it, nothing is decided now.
    pub(crate) fn note_offence(&mut self, token: TokenFingerprint, at: Timestamp) {
        let _ = self.remember_offence(token, at);
    }

    /// Applies new settings (a reload) and keeps every token's offences and suspensions: a
    /// suspension in force stays until its end, and escalation continues from the record.
    pub(crate) fn reconfigure(&mut self, config: EnforcementConfig) {
        self.config = config;
    }

    /// Decides about a verdict that broke rules; `None` for compliant calls, calls without a
    /// token, and tokens already suspended.
    pub fn decide(&mut self, verdict: &Verdict, health: &HealthView<'_>) -> Option<Decision> {
        let identity = verdict.call.token.as_ref().ok()?;
        if verdict.violations.is_empty() {
            return None;
        }
        let now = verdict.call.ts_start;
        let Some(earlier_offences) = self.remember_offence(identity.fingerprint, now) else {
            self.stats.while_suspended += 1;
            return None;
        };
        let config = &self.config;
        let record = self
            .records
            .get_mut(&identity.fingerprint)
            .expect("remember_offence keeps the record");
        let offences_remembered = record.offences.len() as u32;

        let load_share = health.load_share;
        let mut suspended_until = None;
        let action = if earlier_offences < config.warnings_before_suspension {
            Action::Warn {
                reason: HoldReason::FirstOffence,
            }
        } else if config.mode == EnforcementMode::WhenDegraded && !health.degraded {
            Action::Warn {
                reason: HoldReason::ServerHealthy,
            }
        } else if config.mode == EnforcementMode::WhenDegraded
            && load_share.unwrap_or(0.0) < config.min_load_share
        {
            Action::Warn {
                reason: HoldReason::SmallShareOfLoad,
            }
        } else {
            let repeats = record.suspensions.len() as i32;
            let base = config.suspension.span().as_secs_f64();
            let secs = (base * config.suspension_factor.powi(repeats))
                .min(config.max_suspension.span().as_secs_f64());
            let duration = Span::from_millis((secs * 1000.0) as u64);
            let until = now.plus(duration);
            // A dry run remembers what it would have done, so that its escalation matches.
            record.suspensions.push(now);
            record.suspended_until = Some(until);
            if !config.dry_run {
                suspended_until = Some(until);
            }
            Action::Suspend {
                until: until.as_secs_f64(),
                duration_s: duration.as_secs_f64(),
            }
        };
        match action {
            Action::Warn { .. } => self.stats.warnings += 1,
            Action::Suspend { .. } => self.stats.suspensions += 1,
        }
        let decision = Decision {
            ts: now.as_secs_f64(),
            token_fp: identity.fingerprint,
            token_masked: identity.masked.0.clone(),
            action,
            dry_run: config.dry_run,
            evidence: Evidence {
                violations: verdict
                    .violations
                    .iter()
                    .map(ViolationEvidence::from)
                    .collect(),
                offences_remembered,
                suspensions_remembered: record.suspensions.len() as u32,
                server_degraded: health.degraded,
                health: health.assessment.clone(),
                load_share,
            },
        };
        if let Some(until) = suspended_until {
            self.active.insert(
                identity.fingerprint,
                Held {
                    until: Some(until),
                    violations: 0,
                },
            );
            self.active_changed();
            self.emit(EnforcementEvent::Suspended {
                token: identity.fingerprint,
                since: now,
                until: Some(until),
                by: SuspendedBy::Decision(Box::new(decision.clone())),
            });
        }
        Some(decision)
    }

    /// Suspends `token` by hand from `now` until `until` (`None`: until lifted): an admin's
    /// input. Its violations then decide nothing new. A suspension in force is replaced.
    pub(crate) fn suspend(
        &mut self,
        token: TokenFingerprint,
        now: Timestamp,
        until: Option<Timestamp>,
        reason: String,
    ) {
        self.hold(token, until);
        let violations = self.active.get(&token).map_or(0, |held| held.violations);
        self.active.insert(token, Held { until, violations });
        self.active_changed();
        self.emit(EnforcementEvent::Suspended {
            token,
            since: now,
            until,
            by: SuspendedBy::Admin { reason },
        });
    }

    /// Lifts a suspension early (an admin's input); later offences escalate from the record.
    /// False when `token` was not suspended.
    pub(crate) fn lift(&mut self, token: TokenFingerprint, now: Timestamp, reason: String) -> bool {
        if let Some(record) = self.records.get_mut(&token) {
            record.suspended_until = None;
        }
        let Some(held) = self.active.remove(&token) else {
            return false;
        };
        self.active_changed();
        self.emit(EnforcementEvent::Lifted {
            token,
            at: now,
            by: LiftedBy::Admin { reason },
            violations: held.violations,
        });
        true
    }

    /// Takes back a suspension in force that a store kept over a restart (no event: it was
    /// acted on when it began).
    pub(crate) fn restore(&mut self, token: TokenFingerprint, until: Option<Timestamp>) {
        self.hold(token, until);
        self.active.insert(
            token,
            Held {
                until,
                violations: 0,
            },
        );
        self.active_changed();
    }

    /// Ends a suspension that another web host lifted (`[shared]`): no event, as that host acted
    /// on it. False when `token` was not suspended here.
    pub(crate) fn forget_suspension(&mut self, token: TokenFingerprint) -> bool {
        if let Some(record) = self.records.get_mut(&token) {
            record.suspended_until = None;
        }
        let removed = self.active.remove(&token).is_some();
        if removed {
            self.active_changed();
        }
        removed
    }

    /// Remembers an earlier suspension of `token` at `at` for escalation (e.g. one read back from
    /// the store after a restart).
    pub(crate) fn note_suspension(&mut self, token: TokenFingerprint, at: Timestamp) {
        let record = self.records.entry(token).or_default();
        if !record.suspensions.contains(&at) {
            let at_index = record.suspensions.partition_point(|t| *t <= at);
            record.suspensions.insert(at_index, at);
        }
    }

    /// Remembers `token` as suspended until `until` (`None`: until lifted) for decisions.
    fn hold(&mut self, token: TokenFingerprint, until: Option<Timestamp>) {
        let until = until.unwrap_or(Timestamp(u64::MAX));
        let record = self.records.entry(token).or_default();
        record.suspended_until = Some(record.suspended_until.map_or(until, |u| u.max(until)));
    }

    /// Tokens with escalation state in memory.
    pub fn tracked_tokens(&self) -> usize {
        self.records.len()
    }

    /// Forgets tokens with nothing left to remember as of `now`.
    pub fn forget_idle(&mut self, now: Timestamp) {
        let Some(horizon) = now.0.checked_sub(self.config.memory.span().0) else {
            return;
        };
        self.records.retain(|_, r| {
            r.offences.last().is_some_and(|t| t.0 > horizon)
                || r.suspensions.last().is_some_and(|t| t.0 > horizon)
                || r.suspended_until.is_some_and(|until| until > now)
        });
    }

    #[cfg(test)]
    pub(crate) fn stats(&self) -> &EnforcementStats {
        &self.stats
    }
}

/// Forgets the eighth of `max` records that offended least recently, never one suspended at
/// `now` (a suspension must hold); returns how many went. One scan per many insertions.
fn make_room(records: &mut FingerprintMap<Record>, max: usize, now: Timestamp) -> u64 {
    let evict = (max / 8).max(1);
    let last = |r: &Record| {
        let offence = r.offences.last().copied().unwrap_or_default();
        offence.max(r.suspensions.last().copied().unwrap_or_default())
    };
    let mut by_age: Vec<(Timestamp, TokenFingerprint)> = records
        .iter()
        .filter(|(_, r)| r.suspended_until.is_none_or(|until| until <= now))
        .map(|(fp, r)| (last(r), *fp))
        .collect();
    let evict = evict.min(by_age.len());
    if evict == 0 {
        return 0;
    }
    by_age.select_nth_unstable(evict - 1);
    for (_, old) in &by_age[..evict] {
        records.remove(old);
    }
    evict as u64
}

#[cfg(test)]
#[path = "enforce_tests.rs"]
mod tests;

impl EnforcementConfig {
    /// What is wrong with `[enforcement]`, each problem keyed by its full path.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        share(
            &mut problems,
            &[("enforcement.min_load_share", self.min_load_share)],
        );
        if self.suspension_factor < 1.0 || !self.suspension_factor.is_finite() {
            problems.push(Problem::new(
                "enforcement.suspension_factor".into(),
                "must be at least 1.0".into(),
            ));
        }
        problems
    }
}
