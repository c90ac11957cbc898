//! The live loop's side of telemetry and the admin API: sees each released verdict, refreshes
//! the metrics from the stages' counters, and builds the [`AdminView`] snapshot. Suspensions
//! themselves are the action edge's ([`crate::edges::actions`]): it owns the store, and the admin's
//! lift and suspend are carried out there.
//!
//! Memory is bounded: recent calls per token only over the health window and at most
//! [`MAX_ACTIVITY`] of them, the last [`MAX_RECENT_VIOLATIONS`] violations.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};

use super::{AdminView, Shared};
use crate::edges::directory::Directory;
use crate::edges::store::{Store, Suspension};
use crate::edges::telemetry::{AttestationCounts, LongTermView, Metrics, Snapshot, TopTokens};
use crate::shared::model::{Span, Timestamp};
use crate::shared::token::{MaskedToken, TokenFingerprint};
use crate::stages::health::{HealthConfig, TokenLoad};
use crate::stages::lifecycle::{
    AttestationStatus, KnownToken, LifecycleConfig, LifecycleRules, lifecycle_report,
    parse_attestations,
};
use crate::stages::policy::{PolicyConfig, Verdict};
use crate::stages::usage::{Day, Period, usage_report};

/// Calls remembered for the per-token view (bytes, masked form).
pub(crate) const MAX_ACTIVITY: usize = 100_000;
/// Violations the admin API lists.
pub(crate) const MAX_RECENT_VIOLATIONS: usize = 200;
/// Tokens `GET /api/v1/top` lists.
const TOP_LISTED: usize = 50;
/// How often the long-term gauges are computed again from the store (a read of the tokens and
/// 30 days of rollups, and of the attestation file).
const LONG_TERM_REFRESH: Span = Span::from_secs(300);

/// One call, remembered for the per-token view.
struct Activity {
    ts: Timestamp,
    token: TokenFingerprint,
    request_bytes: u64,
    response_bytes: u64,
}

pub(crate) struct LiveTelemetry {
    metrics: Metrics,
    shared: Arc<Shared>,
    top: TopTokens,
    window: Span,
    activity: VecDeque<Activity>,
    masked: HashMap<TokenFingerprint, MaskedToken>,
    violations: VecDeque<Value>,
    /// Who tokens belong to: `top` and `suspensions` name the owner when known.
    directory: Directory,
    lifecycle: LifecycleConfig,
    next_long_term: Timestamp,
    /// The attestation file's last error, logged once until it changes.
    attestation_error: Option<String>,
}

impl LiveTelemetry {
    pub(crate) fn new(shared: Arc<Shared>, top_tokens: usize, window: Span) -> LiveTelemetry {
        LiveTelemetry {
            metrics: shared.metrics.clone(),
            shared,
            top: TopTokens::new(top_tokens),
            window,
            activity: VecDeque::new(),
            masked: HashMap::new(),
            violations: VecDeque::new(),
            directory: Directory::off(),
            lifecycle: LifecycleConfig::default(),
            next_long_term: Timestamp::default(),
            attestation_error: None,
        }
    }

    /// The `[lifecycle]` section the long-term gauges judge by (at start and on reload).
    pub(crate) fn use_lifecycle(&mut self, config: &LifecycleConfig) {
        self.lifecycle = config.clone();
        self.next_long_term = Timestamp::default();
    }

    /// Every [`LONG_TERM_REFRESH`], counts the stale tokens (of those the daemon has seen), the
    /// attestations due, overdue and missing, and the top 10 tokens' share of the last 30 days'
    /// calls, into gauges without token labels. A store that cannot be read is logged and the
    /// gauges keep their last values.
    pub(crate) fn refresh_long_term(&mut self, store: &Store, now: Timestamp) {
        if now < self.next_long_term {
            return;
        }
        self.next_long_term = now.plus(LONG_TERM_REFRESH);
        let read = (|| {
            let tokens: Vec<KnownToken> = store
                .tokens()?
                .into_iter()
                .map(|seen| {
                    let owner = self.directory.owner(&seen.token);
                    KnownToken {
                        token_masked: Some(seen.masked),
                        daemon_last_seen: Some(seen.last_seen),
                        owner: owner.as_ref().map(|o| o.view()),
                        redcap_last_use: owner.and_then(|o| o.last_api_use_at()),
                        ..KnownToken::new(seen.token)
                    }
                })
                .collect();
            let period = Period::ending(Day::of(now), 30);
            let rows = store.rollups(period.from, period.to)?;
            Ok::<_, crate::edges::store::StoreError>((tokens, rows, store.rollup_extent()?))
        })();
        let (tokens, rows, extent) = match read {
            Ok(read) => read,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the store for the long-term gauges");
                return;
            }
        };
        let attestations = self.lifecycle.attestations.as_ref().and_then(|path| {
            let parsed = std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|text| parse_attestations(&text));
            match parsed {
                Ok(rows) => {
                    self.attestation_error = None;
                    Some(rows)
                }
                Err(why) => {
                    if self.attestation_error.as_ref() != Some(&why) {
                        tracing::warn!(file = %path.display(), error = %why,
                            "cannot read the attestation file (lifecycle.attestations)");
                        self.attestation_error = Some(why);
                    }
                    None
                }
            }
        });
        let connected = self.directory.status().entries > 0;
        let lifecycle = lifecycle_report(
            &tokens,
            attestations.as_deref(),
            LifecycleRules::from_config(&self.lifecycle),
            connected,
            now,
        );
        let count = |status| {
            lifecycle
                .attestations
                .iter()
                .filter(|a| a.status == status)
                .count()
        };
        let usage = usage_report(&rows, Period::ending(Day::of(now), 30), |_| None, |_| None);
        self.metrics.set_long_term(&LongTermView {
            tokens_stale: lifecycle.stale.len(),
            attestations: attestations.is_some().then(|| AttestationCounts {
                due: count(AttestationStatus::Due),
                overdue: count(AttestationStatus::Overdue),
                missing: count(AttestationStatus::Missing),
            }),
            top10_share: usage.top10_share,
            rollup_rows: extent.rows,
        });
    }

    /// Names token owners from `directory` in the admin views, and shows its state in status.
    pub(crate) fn use_directory(&mut self, directory: Directory) {
        self.directory = directory;
    }

    pub(crate) fn directory(&self) -> &Directory {
        &self.directory
    }

    /// A reload: new rules get their series, the per-token view follows the health window.
    /// (`api.top_tokens` and the listener apply at the next start.)
    pub(crate) fn reconfigure(&mut self, policy: &PolicyConfig, health: &HealthConfig) {
        self.metrics
            .declare_rules(policy.rules.iter().map(|r| r.name.as_str()));
        self.window = health.window.span();
    }

    /// Sees one released verdict (cheap: atomics, and a bounded queue).
    pub(crate) fn observe(&mut self, verdict: &Verdict) {
        self.metrics.observe(verdict);
        let call = &verdict.call;
        if let Ok(identity) = &call.token {
            if self.activity.len() >= MAX_ACTIVITY {
                self.activity.pop_front();
            }
            self.activity.push_back(Activity {
                ts: call.ts_end,
                token: identity.fingerprint,
                request_bytes: call.request_bytes,
                response_bytes: call.response_bytes.unwrap_or(0),
            });
            self.masked
                .entry(identity.fingerprint)
                .or_insert_with(|| identity.masked.clone());
        }
        for violation in &verdict.violations {
            if self.violations.len() >= MAX_RECENT_VIOLATIONS {
                self.violations.pop_front();
            }
            self.violations.push_back(json!({
                "ts": violation.ts.as_secs_f64(),
                "token_fp": violation.token,
                "token_masked": call.token.as_ref().ok().map(|t| t.masked.0.as_str()),
                "rule": violation.rule,
                "limit": violation.limit,
                "window_s": violation.window.as_secs_f64(),
                "count": violation.count,
            }));
        }
    }

    /// Refreshes the metrics from the counters and publishes a new admin view. `status` is the
    /// stats file's counters; `loads` the tokens' shares of server time, largest first;
    /// `suspensions` those in force.
    pub(crate) fn refresh(
        &mut self,
        now: Timestamp,
        status: Snapshot,
        loads: &[TokenLoad],
        suspensions: &[Suspension],
    ) {
        self.metrics.refresh(&status);
        self.top.update(&self.metrics, loads);
        let horizon = now.minus(self.window);
        while self.activity.front().is_some_and(|a| a.ts <= horizon) {
            self.activity.pop_front();
        }
        if self.masked.len() > MAX_ACTIVITY {
            let live: std::collections::HashSet<_> =
                self.activity.iter().map(|a| a.token).collect();
            self.masked.retain(|fp, _| live.contains(fp));
        }
        let view = AdminView {
            status,
            top: self.top_json(now, loads),
            suspensions: Value::Array(
                suspensions
                    .iter()
                    .map(|s| {
                        let mut json = suspension_json(s);
                        json["owner"] = self.owner_json(&s.token);
                        json
                    })
                    .collect(),
            ),
            violations: Value::Array(self.violations.iter().rev().cloned().collect()),
        };
        self.shared.publish(view);
    }

    fn top_json(&self, now: Timestamp, loads: &[TokenLoad]) -> Value {
        let mut bytes: HashMap<TokenFingerprint, (u64, u64)> = HashMap::new();
        let horizon = now.minus(self.window);
        for a in self.activity.iter().filter(|a| a.ts > horizon) {
            let entry = bytes.entry(a.token).or_default();
            entry.0 += a.request_bytes;
            entry.1 += a.response_bytes;
        }
        let minutes = (self.window.as_secs_f64() / 60.0).max(1.0 / 60.0);
        let tokens: Vec<Value> = loads
            .iter()
            .take(TOP_LISTED)
            .map(|load| {
                let (request_bytes, response_bytes) =
                    bytes.get(&load.token).copied().unwrap_or_default();
                json!({
                    "token_fp": load.token,
                    "token_masked": self.masked.get(&load.token).map(|m| m.0.as_str()),
                    "calls": load.calls,
                    "calls_per_minute": f64::from(load.calls) / minutes,
                    "request_bytes": request_bytes,
                    "response_bytes": response_bytes,
                    "server_time_s": load.server_time.as_secs_f64(),
                    "server_time_share": load.share,
                    "owner": self.owner_json(&load.token),
                })
            })
            .collect();
        json!({
            "at": now.as_secs_f64(),
            "window_s": self.window.as_secs_f64(),
            "tokens": tokens,
        })
    }
}

impl LiveTelemetry {
    /// The token's owner for the admin views (`null` when the directory does not know it).
    fn owner_json(&self, token: &TokenFingerprint) -> Value {
        self.directory.owner(token).map_or(Value::Null, |o| {
            serde_json::to_value(&*o).unwrap_or_default()
        })
    }
}

/// A suspension as the API shows it: times in epoch seconds, like the daemon's other JSON.
pub fn suspension_json(s: &Suspension) -> Value {
    let mut json = crate::edges::store::suspension_details(s);
    json["token_fp"] = json!(s.token);
    json
}
