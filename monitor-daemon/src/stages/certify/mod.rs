//! QA-window certification: the policy's verdicts on one testing window, judged per token into
//! PASS or FAIL with the evidence an admin hands to the researcher.
//!
//! Owns the judgement only: a token passes when the policy found no violation of its calls in
//! the window. The evidence (each rule's peak count in any of its windows, heavy calls, the
//! largest response, the server time caused and its p95, every violation) is measured here from
//! the same verdicts. Sans-IO: it is fed verdicts and returns a [`Certification`]; reading
//! captures and printing belong to `commands::certify`. Never sees a raw token (fingerprints and
//! masked forms only). Memory grows with the calls in the window (one server time per call);
//! violations listed per token are capped at [`MAX_LISTED_VIOLATIONS`], the rest counted; the
//! per-minute activity kept for charts has at most one entry per call.

use std::collections::BTreeMap;

use crate::shared::model::{Span, Timestamp, as_secs};
use crate::shared::token::TokenFingerprint;
use crate::stages::health::percentile;
use crate::stages::policy::{CallClass, HeavyReason, PolicyConfig, SlidingCount, Verdict};

/// Violations listed one by one per token; beyond this they are only counted.
pub(crate) const MAX_LISTED_VIOLATIONS: usize = 1000;

/// Which calls are judged: those whose request started in `[from, to)`, optionally of one token.
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    pub token: Option<TokenFingerprint>,
}

impl Window {
    fn contains(&self, ts: Timestamp) -> bool {
        self.from.is_none_or(|from| ts >= from) && self.to.is_none_or(|to| ts < to)
    }
}

/// One rule as this token is held to it (`policy.overrides` applied).
struct RuleSpec {
    name: String,
    calls: CallClass,
    window: Span,
    limit: u32,
}

/// PASS or FAIL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    Pass,
    Fail,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
        }
    }
}

/// The most calls one rule counted in any of its windows.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct RulePeak {
    pub(crate) rule: String,
    /// `all` or `heavy`.
    pub(crate) counts: &'static str,
    /// The limit this token is held to (an override's, when one applies).
    pub(crate) limit: u32,
    pub(crate) window_s: f64,
    pub(crate) peak: u32,
    /// Request start of the call that reached the peak.
    #[serde(serialize_with = "as_secs_opt")]
    pub(crate) peak_at: Option<Timestamp>,
}

/// The largest response of a token in the window, and which call it answered.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct LargestResponse {
    pub(crate) bytes: u64,
    #[serde(serialize_with = "as_secs")]
    pub(crate) at: Timestamp,
    pub(crate) content: Option<String>,
    pub(crate) action: Option<String>,
}

/// What a token did in one clock minute (UTC), for charts of the window.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub(crate) struct MinuteActivity {
    #[serde(serialize_with = "as_secs")]
    pub(crate) start: Timestamp,
    pub(crate) calls: u32,
    pub(crate) heavy_calls: u32,
    /// The largest response of the minute's calls, when one was measured.
    pub(crate) largest_response_bytes: Option<u64>,
}

/// One violation, as evidence.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub(crate) struct ViolationEvidence {
    #[serde(serialize_with = "as_secs")]
    pub(crate) at: Timestamp,
    pub(crate) rule: String,
    pub(crate) limit: u32,
    pub(crate) window_s: f64,
    /// Calls the rule counted in the window ending at `at`, the offending one included.
    pub(crate) count: u32,
    /// What the offending call asked for.
    pub(crate) content: Option<String>,
    pub(crate) heavy: Option<HeavyReason>,
}

/// One token's judgement.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct TokenCertificate {
    pub(crate) token_fp: TokenFingerprint,
    pub(crate) token_masked: String,
    pub(crate) outcome: Outcome,
    /// Exempt from every rule by `policy.overrides`: passes whatever it did.
    pub(crate) exempt: bool,
    pub(crate) calls: u64,
    pub(crate) heavy_calls: u64,
    /// Calls the capture saw only in part (a gap, a truncation): the evidence may undercount.
    pub(crate) incomplete_calls: u64,
    #[serde(serialize_with = "as_secs")]
    pub(crate) first_call: Timestamp,
    #[serde(serialize_with = "as_secs")]
    pub(crate) last_call: Timestamp,
    pub(crate) rules: Vec<RulePeak>,
    pub(crate) largest_response: Option<LargestResponse>,
    /// Sum of the calls' server times (last request byte to first response byte).
    pub(crate) server_time_s: f64,
    pub(crate) server_time_p95_s: Option<f64>,
    pub(crate) violations: Vec<ViolationEvidence>,
    /// Violations beyond [`MAX_LISTED_VIOLATIONS`], counted only.
    pub(crate) violations_not_listed: u64,
    /// The minutes with calls, in order (at most one per call).
    pub(crate) minutes: Vec<MinuteActivity>,
}

impl TokenCertificate {
    pub(crate) fn violation_count(&self) -> u64 {
        self.violations.len() as u64 + self.violations_not_listed
    }
}

/// The judgement of one window.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Certification {
    /// PASS only when at least one token was judged and every judged token passed.
    pub outcome: Outcome,
    #[serde(serialize_with = "as_secs_opt")]
    pub(crate) from: Option<Timestamp>,
    #[serde(serialize_with = "as_secs_opt")]
    pub(crate) to: Option<Timestamp>,
    pub(crate) token: Option<TokenFingerprint>,
    /// Responses larger than this make a call heavy (`policy.heavy.response_bytes`).
    pub(crate) heavy_response_bytes: u64,
    /// Tokens judged, failing first, then by fingerprint.
    pub(crate) tokens: Vec<TokenCertificate>,
    /// Calls in the window without a usable token (missing, malformed, unreadable): no rule
    /// can apply to them, and REDCap refuses them.
    pub(crate) calls_without_token: u64,
    /// Calls outside the window (or of other tokens) that were seen and not judged.
    pub(crate) calls_not_judged: u64,
}

fn as_secs_opt<S: serde::Serializer>(at: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => as_secs(at, s),
        None => s.serialize_none(),
    }
}

/// What the judge accumulates for one token.
struct TokenState {
    masked: String,
    exempt: bool,
    rules: Vec<RuleSpec>,
    windows: Vec<SlidingCount>,
    peaks: Vec<(u32, Option<Timestamp>)>,
    calls: u64,
    heavy_calls: u64,
    incomplete_calls: u64,
    first_call: Timestamp,
    last_call: Timestamp,
    largest_response: Option<LargestResponse>,
    server_time: Span,
    server_times: Vec<Span>,
    violations: Vec<ViolationEvidence>,
    violations_not_listed: u64,
    /// Keyed by Unix minute.
    minutes: BTreeMap<u64, MinuteActivity>,
}

/// Judges verdicts, fed in any order close to request-start order (as the pipeline releases
/// them), into a [`Certification`].
pub(crate) struct Judge {
    window: Window,
    policy: PolicyConfig,
    tokens: BTreeMap<TokenFingerprint, TokenState>,
    calls_without_token: u64,
    calls_not_judged: u64,
}

impl Judge {
    pub(crate) fn new(policy: &PolicyConfig, window: Window) -> Judge {
        Judge {
            window,
            policy: policy.clone(),
            tokens: BTreeMap::new(),
            calls_without_token: 0,
            calls_not_judged: 0,
        }
    }

    /// The rules as `fp` is held to them, and whether it is exempt.
    fn rules_for(&self, fp: TokenFingerprint) -> (Vec<RuleSpec>, bool) {
        let fp_text = fp.to_string();
        let override_ = self
            .policy
            .overrides
            .iter()
            .find(|o| o.token_fp.eq_ignore_ascii_case(&fp_text));
        let rules = self
            .policy
            .rules
            .iter()
            .map(|r| RuleSpec {
                name: r.name.clone(),
                calls: r.calls,
                window: r.window.span(),
                limit: override_
                    .and_then(|o| o.limits.get(&r.name).copied())
                    .unwrap_or(r.limit),
            })
            .collect();
        (rules, override_.is_some_and(|o| o.exempt))
    }

    pub(crate) fn add(&mut self, verdict: &Verdict) {
        let call = &verdict.call;
        if !self.window.contains(call.ts_start) {
            self.calls_not_judged += 1;
            return;
        }
        let identity = match &call.token {
            Ok(identity) => identity,
            Err(_) => {
                if self.window.token.is_none() {
                    self.calls_without_token += 1;
                } else {
                    self.calls_not_judged += 1;
                }
                return;
            }
        };
        let fp = identity.fingerprint;
        if self.window.token.is_some_and(|only| only != fp) {
            self.calls_not_judged += 1;
            return;
        }
        if !self.tokens.contains_key(&fp) {
            let (rules, exempt) = self.rules_for(fp);
            let n = rules.len();
            self.tokens.insert(
                fp,
                TokenState {
                    masked: identity.masked.0.clone(),
                    exempt,
                    rules,
                    windows: vec![SlidingCount::default(); n],
                    peaks: vec![(0, None); n],
                    calls: 0,
                    heavy_calls: 0,
                    incomplete_calls: 0,
                    first_call: call.ts_start,
                    last_call: call.ts_start,
                    largest_response: None,
                    server_time: Span(0),
                    server_times: Vec::new(),
                    violations: Vec::new(),
                    violations_not_listed: 0,
                    minutes: BTreeMap::new(),
                },
            );
        }
        let Some(token) = self.tokens.get_mut(&fp) else {
            return;
        };
        token.calls += 1;
        token.heavy_calls += u64::from(verdict.heavy.is_some());
        token.incomplete_calls += u64::from(!call.complete);
        token.first_call = token.first_call.min(call.ts_start);
        token.last_call = token.last_call.max(call.ts_start);
        for ((rule, window), peak) in token
            .rules
            .iter()
            .zip(&mut token.windows)
            .zip(&mut token.peaks)
        {
            if rule.calls == CallClass::Heavy && verdict.heavy.is_none() {
                continue;
            }
            let count = window.record(call.ts_start, rule.window);
            if count > peak.0 {
                *peak = (count, Some(call.ts_start));
            }
        }
        let size = call.response_bytes.or(call.response_wire_bytes);
        let minute = call.ts_start.as_nanos() / 60_000_000_000;
        let activity = token.minutes.entry(minute).or_insert(MinuteActivity {
            start: Timestamp::from_nanos(minute * 60_000_000_000),
            calls: 0,
            heavy_calls: 0,
            largest_response_bytes: None,
        });
        activity.calls = activity.calls.saturating_add(1);
        activity.heavy_calls = activity
            .heavy_calls
            .saturating_add(u32::from(verdict.heavy.is_some()));
        activity.largest_response_bytes = activity.largest_response_bytes.max(size);
        if let Some(bytes) = size
            && token
                .largest_response
                .as_ref()
                .is_none_or(|l| bytes > l.bytes)
        {
            token.largest_response = Some(LargestResponse {
                bytes,
                at: call.ts_start,
                content: call.params.content.clone(),
                action: call.params.action.clone(),
            });
        }
        if let Some(ttfb) = call.ttfb {
            token.server_time = Span(token.server_time.0.saturating_add(ttfb.0));
            token.server_times.push(ttfb);
        }
        for violation in &verdict.violations {
            if token.violations.len() >= MAX_LISTED_VIOLATIONS {
                token.violations_not_listed += 1;
                continue;
            }
            token.violations.push(ViolationEvidence {
                at: violation.ts,
                rule: violation.rule.clone(),
                limit: violation.limit,
                window_s: violation.window.as_secs_f64(),
                count: violation.count,
                content: call.params.content.clone(),
                heavy: verdict.heavy,
            });
        }
    }

    pub(crate) fn finish(self) -> Certification {
        let mut tokens: Vec<TokenCertificate> = self
            .tokens
            .into_iter()
            .map(|(fp, mut t)| {
                t.server_times.sort_unstable();
                let failed = !t.exempt && (!t.violations.is_empty() || t.violations_not_listed > 0);
                TokenCertificate {
                    token_fp: fp,
                    token_masked: t.masked,
                    outcome: if failed { Outcome::Fail } else { Outcome::Pass },
                    exempt: t.exempt,
                    calls: t.calls,
                    heavy_calls: t.heavy_calls,
                    incomplete_calls: t.incomplete_calls,
                    first_call: t.first_call,
                    last_call: t.last_call,
                    rules: t
                        .rules
                        .iter()
                        .zip(&t.peaks)
                        .map(|(rule, &(peak, peak_at))| RulePeak {
                            rule: rule.name.clone(),
                            counts: match rule.calls {
                                CallClass::All => "all",
                                CallClass::Heavy => "heavy",
                            },
                            limit: rule.limit,
                            window_s: rule.window.as_secs_f64(),
                            peak,
                            peak_at,
                        })
                        .collect(),
                    largest_response: t.largest_response,
                    server_time_s: t.server_time.as_secs_f64(),
                    server_time_p95_s: percentile(&t.server_times, 0.95).map(Span::as_secs_f64),
                    violations: t.violations,
                    violations_not_listed: t.violations_not_listed,
                    minutes: t.minutes.into_values().collect(),
                }
            })
            .collect();
        // Failing tokens first: they are what the reader must act on.
        tokens.sort_by(|a, b| {
            (b.outcome == Outcome::Fail)
                .cmp(&(a.outcome == Outcome::Fail))
                .then(a.token_fp.cmp(&b.token_fp))
        });
        let passed = !tokens.is_empty() && tokens.iter().all(|t| t.outcome == Outcome::Pass);
        Certification {
            outcome: if passed { Outcome::Pass } else { Outcome::Fail },
            from: self.window.from,
            to: self.window.to,
            token: self.window.token,
            heavy_response_bytes: self.policy.heavy.response_bytes,
            tokens,
            calls_without_token: self.calls_without_token,
            calls_not_judged: self.calls_not_judged,
        }
    }
}

#[cfg(test)]
mod tests;
