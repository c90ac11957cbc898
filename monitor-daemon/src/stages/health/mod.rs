//! The server's responsiveness, judged from the calls it answers and an optional canary.
//!
//! Owns the healthy/degraded state. Every `interval` of capture time it looks at the calls that
//! finished in the last `window` — p95 server time (TTFB) and the share of 5xx answers — and at
//! the canary, and compares them with absolute limits and with a baseline learned while healthy.
//! The state changes only after `enter_after` bad (or `leave_after` good) intervals in a row, so
//! it does not flap. It also says who loads the server now: each token's share of the server time
//! in the window. Sans-IO: time comes from the calls, the canary results and `tick(now)`.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;

use crate::shared::model::{Span, Timestamp};
use crate::shared::settings::{Duration, Problem, at_least_one, longer_than_zero, share};
use crate::shared::token::{FingerprintMap, TokenFingerprint};
use crate::stages::redcap::ApiCall;

#[cfg(test)]
mod tests;

/// `[health]`: what degraded means, and how sure the detector must be before saying so.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HealthConfig {
    /// How often the state is judged.
    pub(crate) interval: Duration,
    /// How far back each judgement looks.
    pub(crate) window: Duration,
    /// Fewer calls than this in the window say nothing about the server (neither good nor bad).
    pub(crate) min_calls: u32,
    /// Bad when the window's p95 server time is above this.
    pub(crate) ttfb_p95_max: Duration,
    /// Bad when the p95 is more than this many times the baseline learned while healthy...
    pub(crate) baseline_factor: f64,
    /// ...and above this floor (3x of a 10 ms baseline is still fast).
    pub(crate) baseline_floor: Duration,
    /// Weight of each healthy interval in the baseline (exponential moving average).
    pub(crate) baseline_weight: f64,
    /// Bad when more than this share of the window's answers are 5xx.
    pub(crate) server_error_share_max: f64,
    /// Bad intervals in a row before the server is called degraded.
    pub(crate) enter_after: u32,
    /// Good intervals in a row before it is called healthy again.
    pub(crate) leave_after: u32,
    /// Most calls kept for one window; older ones beyond this are dropped (counted).
    pub(crate) max_samples: usize,
    /// The optional active probe (`[health.canary]`); the live edge runs it.
    pub(crate) canary: CanaryConfig,
}

/// `[health.canary]`: an HTTP GET to a page of the server (e.g. the REDCap login page) every
/// `interval`; an answer slower than `ttfb_p95_max`, a 5xx, an error or no answer within `timeout`
/// is a bad sign.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CanaryConfig {
    /// The page to fetch; no canary when absent.
    pub(crate) url: Option<String>,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            url: None,
            interval: Duration(Span::from_secs(30)),
            timeout: Duration(Span::from_secs(10)),
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration(Span::from_secs(10)),
            window: Duration(Span::from_secs(60)),
            min_calls: 5,
            ttfb_p95_max: Duration(Span::from_secs(2)),
            baseline_factor: 3.0,
            baseline_floor: Duration(Span::from_millis(500)),
            baseline_weight: 0.1,
            server_error_share_max: 0.2,
            enter_after: 3,
            leave_after: 3,
            max_samples: 100_000,
            canary: CanaryConfig::default(),
        }
    }
}

/// Why one interval was judged bad.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BadSign {
    /// p95 server time above the absolute limit.
    SlowAbsolute,
    /// p95 server time far above the learned baseline.
    SlowRelative,
    /// Too many 5xx answers.
    ServerErrors,
    /// The canary failed or timed out.
    CanaryFailed,
    /// The canary answered, but slower than the absolute limit.
    CanarySlow,
}

impl BadSign {
    /// The sign's name as records and logs show it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            BadSign::SlowAbsolute => "slow_absolute",
            BadSign::SlowRelative => "slow_relative",
            BadSign::ServerErrors => "server_errors",
            BadSign::CanaryFailed => "canary_failed",
            BadSign::CanarySlow => "canary_slow",
        }
    }
}

/// What one judgement saw: the evidence behind a state change.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Assessment {
    /// Epoch seconds of the judgement.
    pub(crate) at: f64,
    pub(crate) calls: u32,
    pub(crate) ttfb_p50_s: Option<f64>,
    pub(crate) ttfb_p95_s: Option<f64>,
    pub(crate) ttfb_p99_s: Option<f64>,
    pub(crate) server_error_share: Option<f64>,
    pub(crate) baseline_p95_s: Option<f64>,
    /// Latest canary latency in the window; `None` without a canary result.
    pub(crate) canary_s: Option<f64>,
    pub(crate) canary_failed: bool,
    pub(crate) bad_signs: Vec<BadSign>,
}

/// A change of state, with the judgement that made it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum HealthChange {
    Degraded {
        since: Timestamp,
        evidence: Assessment,
    },
    Recovered {
        degraded_for: Span,
        evidence: Assessment,
    },
}

/// One token's part in the server's work over the window.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TokenLoad {
    pub(crate) token: TokenFingerprint,
    pub(crate) calls: u32,
    pub(crate) server_time: Span,
    /// Share of all server time in the window, 0..=1.
    pub(crate) share: f64,
}

/// Counters the detector keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct HealthStats {
    pub(crate) judgements: u64,
    pub(crate) bad_intervals: u64,
    pub(crate) degradations: u64,
    pub(crate) recoveries: u64,
    /// Calls dropped from the window because it held `max_samples` already.
    pub(crate) samples_dropped: u64,
}

struct Sample {
    ts: Timestamp,
    ttfb: Span,
    server_error: bool,
    token: Option<TokenFingerprint>,
}

struct CanaryResult {
    ts: Timestamp,
    latency: Option<Span>,
}

/// One token's calls and server time over the samples held.
#[derive(Clone, Copy, Default)]
struct Tally {
    calls: u32,
    nanos: u64,
}

pub(crate) struct ResponsivenessDetector {
    config: HealthConfig,
    samples: VecDeque<Sample>,
    /// Per token over `samples`, kept as samples come and go: a flood of violating calls asks
    /// for its token's share on every call, and must not pay for a walk over the window.
    tallies: FingerprintMap<Tally>,
    /// Server time of every sample held, with or without a token.
    total_nanos: u64,
    canary: VecDeque<CanaryResult>,
    baseline_p95: Option<f64>,
    degraded_since: Option<Timestamp>,
    bad_streak: u32,
    good_streak: u32,
    next_judgement: Option<Timestamp>,
    latest: Assessment,
    /// Reused for percentiles so that a judgement does not allocate.
    scratch: Vec<Span>,
    stats: HealthStats,
}

impl ResponsivenessDetector {
    pub(crate) fn new(config: HealthConfig) -> ResponsivenessDetector {
        ResponsivenessDetector {
            config,
            samples: VecDeque::new(),
            tallies: FingerprintMap::default(),
            total_nanos: 0,
            canary: VecDeque::new(),
            baseline_p95: None,
            degraded_since: None,
            bad_streak: 0,
            good_streak: 0,
            next_judgement: None,
            latest: Assessment::default(),
            scratch: Vec::new(),
            stats: HealthStats::default(),
        }
    }

    /// Applies new thresholds (a reload) and keeps what was learned: the calls in the window, the
    /// baseline, the healthy/degraded state and the streaks. The next judgement uses the new
    /// values; a smaller `max_samples` drops the oldest calls at the next one observed.
    pub(crate) fn reconfigure(&mut self, config: HealthConfig) {
        self.config = config;
    }

    /// Takes note of a finished call: its server time, whether the server failed it, and whose
    /// it was. Calls without a response say nothing about server time and are skipped.
    pub(crate) fn observe(&mut self, call: &ApiCall) {
        let Some(ttfb) = call.ttfb else { return };
        while self.samples.len() >= self.config.max_samples {
            self.forget_oldest();
            self.stats.samples_dropped += 1;
        }
        let token = call.token.as_ref().ok().map(|id| id.fingerprint);
        self.total_nanos += ttfb.0;
        if let Some(token) = token {
            let tally = self.tallies.entry(token).or_default();
            tally.calls += 1;
            tally.nanos += ttfb.0;
        }
        self.samples.push_back(Sample {
            ts: call.ts_end,
            ttfb,
            server_error: call.status.is_some_and(|s| (500..600).contains(&s)),
            token,
        });
    }

    /// `token`'s share of the server time in the window ending at `now`; `None` when it has no
    /// answered call there. Costs a lookup (and forgetting what left the window).
    pub(crate) fn load_share(&mut self, token: TokenFingerprint, now: Timestamp) -> Option<f64> {
        self.forget_before(now);
        let tally = self.tallies.get(&token)?;
        Some(if self.total_nanos == 0 {
            0.0
        } else {
            tally.nanos as f64 / self.total_nanos as f64
        })
    }

    /// Takes note of one canary probe: its latency, or `None` when it failed or timed out.
    pub(crate) fn observe_canary(&mut self, ts: Timestamp, latency: Option<Span>) {
        self.canary.push_back(CanaryResult { ts, latency });
    }

    /// Judges the state if an interval has passed; returns a change of state, if any.
    pub(crate) fn tick(&mut self, now: Timestamp) -> Option<HealthChange> {
        let due = *self
            .next_judgement
            .get_or_insert(now.plus(self.config.interval.span()));
        if now < due {
            return None;
        }
        self.next_judgement = Some(now.plus(self.config.interval.span()));
        self.forget_before(now);
        let assessment = self.judge(now);
        let bad = !assessment.bad_signs.is_empty();
        let has_evidence = assessment.calls >= self.config.min_calls
            || assessment.canary_s.is_some()
            || assessment.canary_failed;
        self.stats.judgements += 1;
        self.latest = assessment;
        if bad {
            self.stats.bad_intervals += 1;
            self.bad_streak += 1;
            self.good_streak = 0;
        } else if has_evidence || self.degraded_since.is_some() {
            // Silence while degraded counts as good: no calls is no load.
            self.good_streak += 1;
            self.bad_streak = 0;
            if self.degraded_since.is_none() {
                self.learn_baseline();
            }
        }
        match self.degraded_since {
            None if self.bad_streak >= self.config.enter_after => {
                self.degraded_since = Some(now);
                self.stats.degradations += 1;
                Some(HealthChange::Degraded {
                    since: now,
                    evidence: self.latest.clone(),
                })
            }
            Some(since) if self.good_streak >= self.config.leave_after => {
                self.degraded_since = None;
                self.stats.recoveries += 1;
                Some(HealthChange::Recovered {
                    degraded_for: now.since(since),
                    evidence: self.latest.clone(),
                })
            }
            _ => None,
        }
    }

    pub(crate) fn is_degraded(&self) -> bool {
        self.degraded_since.is_some()
    }

    /// The most recent judgement.
    pub(crate) fn assessment(&self) -> &Assessment {
        &self.latest
    }

    /// Each token's share of the server time in the window ending at `now`, largest first.
    pub(crate) fn load_by_token(&self, now: Timestamp) -> Vec<TokenLoad> {
        let start = now.minus(self.config.window.span());
        let mut total = 0u64;
        let mut per_token: HashMap<TokenFingerprint, (u32, u64)> = HashMap::new();
        for sample in self.samples.iter().filter(|s| s.ts > start && s.ts <= now) {
            total += sample.ttfb.0;
            if let Some(token) = sample.token {
                let entry = per_token.entry(token).or_default();
                entry.0 += 1;
                entry.1 += sample.ttfb.0;
            }
        }
        let mut loads: Vec<TokenLoad> = per_token
            .into_iter()
            .map(|(token, (calls, nanos))| TokenLoad {
                token,
                calls,
                server_time: Span(nanos),
                share: if total == 0 {
                    0.0
                } else {
                    nanos as f64 / total as f64
                },
            })
            .collect();
        loads.sort_by(|a, b| {
            b.server_time
                .cmp(&a.server_time)
                .then(a.token.cmp(&b.token))
        });
        loads
    }

    pub(crate) fn stats(&self) -> &HealthStats {
        &self.stats
    }

    fn forget_before(&mut self, now: Timestamp) {
        let start = now.minus(self.config.window.span());
        while self.samples.front().is_some_and(|s| s.ts <= start) {
            self.forget_oldest();
        }
        while self.canary.front().is_some_and(|c| c.ts <= start) {
            self.canary.pop_front();
        }
    }

    fn forget_oldest(&mut self) {
        let Some(sample) = self.samples.pop_front() else {
            return;
        };
        self.total_nanos -= sample.ttfb.0;
        if let Some(token) = sample.token
            && let std::collections::hash_map::Entry::Occupied(mut entry) =
                self.tallies.entry(token)
        {
            let tally = entry.get_mut();
            tally.calls -= 1;
            tally.nanos -= sample.ttfb.0;
            if tally.calls == 0 {
                entry.remove();
            }
        }
    }

    fn judge(&mut self, now: Timestamp) -> Assessment {
        let config = &self.config;
        let mut a = Assessment {
            at: now.as_secs_f64(),
            baseline_p95_s: self.baseline_p95,
            ..Assessment::default()
        };
        self.scratch.clear();
        self.scratch.extend(self.samples.iter().map(|s| s.ttfb));
        a.calls = self.scratch.len() as u32;
        if a.calls >= config.min_calls {
            self.scratch.sort_unstable();
            let pick = |q: f64| percentile(&self.scratch, q).map(Span::as_secs_f64);
            a.ttfb_p50_s = pick(0.50);
            a.ttfb_p95_s = pick(0.95);
            a.ttfb_p99_s = pick(0.99);
            let errors = self.samples.iter().filter(|s| s.server_error).count();
            let share = errors as f64 / f64::from(a.calls);
            a.server_error_share = Some(share);
            let p95 = a.ttfb_p95_s.unwrap_or(0.0);
            if p95 > config.ttfb_p95_max.span().as_secs_f64() {
                a.bad_signs.push(BadSign::SlowAbsolute);
            } else if let Some(baseline) = self.baseline_p95
                && p95 > baseline * config.baseline_factor
                && p95 > config.baseline_floor.span().as_secs_f64()
            {
                a.bad_signs.push(BadSign::SlowRelative);
            }
            if share > config.server_error_share_max {
                a.bad_signs.push(BadSign::ServerErrors);
            }
        }
        if let Some(last) = self.canary.back() {
            match last.latency {
                None => {
                    a.canary_failed = true;
                    a.bad_signs.push(BadSign::CanaryFailed);
                }
                Some(latency) => {
                    a.canary_s = Some(latency.as_secs_f64());
                    if latency > config.ttfb_p95_max.span() {
                        a.bad_signs.push(BadSign::CanarySlow);
                    }
                }
            }
        }
        a
    }

    fn learn_baseline(&mut self) {
        let Some(p95) = self.latest.ttfb_p95_s else {
            return;
        };
        let w = self.config.baseline_weight;
        self.baseline_p95 = Some(match self.baseline_p95 {
            None => p95,
            Some(old) => old * (1.0 - w) + p95 * w,
        });
    }
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn percentile(sorted: &[Span], q: f64) -> Option<Span> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = (q * n as f64).ceil() as usize;
    sorted.get(rank.clamp(1, n) - 1).copied()
}

impl HealthConfig {
    /// What is wrong with `[health]` (and `[health.canary]`), each problem keyed by its full
    /// path.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        longer_than_zero(
            &mut problems,
            &[
                ("health.interval", self.interval),
                ("health.window", self.window),
            ],
            "10s",
        );
        share(
            &mut problems,
            &[
                ("health.server_error_share_max", self.server_error_share_max),
                ("health.baseline_weight", self.baseline_weight),
            ],
        );
        let canary = &self.canary;
        if let Some(url) = &canary.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.push(Problem::new(
                "health.canary.url".into(),
                "must start with http:// or https://, e.g. \"https://redcap.example.org/redcap/\""
                    .into(),
            ));
        }
        longer_than_zero(
            &mut problems,
            &[
                ("health.canary.interval", canary.interval),
                ("health.canary.timeout", canary.timeout),
            ],
            "10s",
        );
        if canary.timeout.span() > canary.interval.span() {
            problems.push(Problem::new(
                "health.canary.timeout".into(),
                "must not be longer than health.canary.interval".into(),
            ));
        }
        if self.baseline_factor < 1.0 || !self.baseline_factor.is_finite() {
            problems.push(Problem::new(
                "health.baseline_factor".into(),
                "must be at least 1.0".into(),
            ));
        }
        at_least_one(
            &mut problems,
            &[
                ("health.enter_after", self.enter_after.into()),
                ("health.leave_after", self.leave_after.into()),
                ("health.max_samples", self.max_samples as u64),
            ],
        );
        problems
    }
}
