//! `[policy]`: the rate rules, what makes a call heavy, and the tokens held to other limits,
//! with the checks that keep them usable (unique rule names, limits a window can count,
//! overrides naming tokens by fingerprint and rules by name).

use std::collections::HashSet;

use serde::Deserialize;

use super::MAX_HELD;
use crate::shared::model::Span;
use crate::shared::settings::{Duration, Problem, at_least_one};
use crate::shared::token::TokenFingerprint;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// How long a finished call may wait for earlier-started calls before rules see it, so that
    /// windows are evaluated in request order even when responses finish out of order.
    pub(crate) reorder_window: Duration,
    /// How long an open request whose token is not known yet (its head or body still arriving)
    /// holds back every finished call that started after it; past it, it holds back nothing.
    /// Never longer than `reorder_window` (a longer value acts as `reorder_window`).
    /// A request whose token is known holds back only that token's calls (and the calls its
    /// client address is judged by) for up to `reorder_window`.
    pub(crate) unknown_token_hold: Duration,
    pub(crate) heavy: HeavyConfig,
    pub(crate) rules: Vec<RuleConfig>,
    /// Tokens held to other limits (a registered bulk job) or exempt (an admin or service token),
    /// named by fingerprint.
    pub(crate) overrides: Vec<OverrideConfig>,
    /// Most tokens with rate windows in memory; past it the least recently seen are evicted
    /// (counted as `policy.evicted_tokens`).
    pub(crate) max_tokens: usize,
    /// Most client addresses whose refused calls (401/403 for a token not otherwise seen) are
    /// counted; such calls never get per-token state, so random tokens cannot grow memory.
    pub(crate) max_refused_clients: usize,
    /// `[policy.refused_calls]`: refused calls per client address before it is a violation
    /// (probing for tokens); absent, the `calls = "all"` rule's limit and window.
    pub(crate) refused_calls: Option<super::RefusedCallsRule>,
}

/// `[[policy.overrides]]`: one token's own limits, or its exemption from every rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OverrideConfig {
    /// The token's fingerprint (16 hex digits, from `redcap-monitor fingerprint`), never the
    /// token itself.
    pub(crate) token_fp: String,
    /// Who or what the token is, for people reading the file.
    // Never read by the daemon: the field is here so that `deny_unknown_fields` accepts it.
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) note: String,
    /// No rule applies to this token.
    #[serde(default)]
    pub(crate) exempt: bool,
    /// Rule name → this token's limit for it (other rules keep their limit).
    #[serde(default)]
    pub(crate) limits: std::collections::BTreeMap<String, u32>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            reorder_window: Duration(Span::from_secs(120)),
            unknown_token_hold: Duration(Span::from_secs(5)),
            heavy: HeavyConfig::default(),
            rules: vec![
                RuleConfig {
                    name: "api_calls".into(),
                    calls: CallClass::All,
                    limit: 3,
                    window: Duration(Span::from_secs(60)),
                },
                RuleConfig {
                    name: "heavy_calls".into(),
                    calls: CallClass::Heavy,
                    limit: 1,
                    window: Duration(Span::from_secs(300)),
                },
            ],
            overrides: Vec::new(),
            max_tokens: 100_000,
            max_refused_clients: 10_000,
            refused_calls: None,
        }
    }
}

/// What makes a call heavy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HeavyConfig {
    /// A call whose decoded response is larger than this is heavy.
    pub(crate) response_bytes: u64,
    /// Request kinds that are heavy whatever their size.
    pub(crate) kinds: Vec<HeavyKind>,
}

impl Default for HeavyConfig {
    fn default() -> Self {
        Self {
            response_bytes: 500_000,
            kinds: vec![
                HeavyKind::UnfilteredRecordExport,
                HeavyKind::Report,
                HeavyKind::Log,
                HeavyKind::ProjectXml,
                HeavyKind::PdfAllRecords,
                HeavyKind::FileExport,
            ],
        }
    }
}

/// A request kind that needs heavy server work or returns a large answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeavyKind {
    /// `content=record` export with neither `records` nor `filterLogic`.
    UnfilteredRecordExport,
    Report,
    Log,
    /// `content=project_xml` unless `returnMetadataOnly` is true.
    ProjectXml,
    PdfAllRecords,
    /// `content=file` or `fileRepository` export.
    FileExport,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleConfig {
    /// Names the rule in violation records.
    pub(crate) name: String,
    /// Which calls the rule counts.
    #[serde(default)]
    pub(crate) calls: CallClass,
    /// Most calls allowed in any window.
    pub(crate) limit: u32,
    pub(crate) window: Duration,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CallClass {
    #[default]
    All,
    Heavy,
}

/// A window counts at most `MAX_HELD` calls per token, so a limit at or above it never triggers.
fn too_high_a_limit(key: String) -> Problem {
    Problem::new(
        key,
        format!(
            "must be below {} calls per window (a window holds at most that many calls of one \
             token); use a shorter window for a higher rate",
            MAX_HELD
        ),
    )
}

impl PolicyConfig {
    /// What is wrong with `[policy]`, each problem keyed by its full path.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut names = HashSet::new();
        for (i, rule) in self.rules.iter().enumerate() {
            let key = |field: &str| format!("policy.rules[{i}].{field}");
            if rule.name.is_empty() || !names.insert(rule.name.as_str()) {
                problems.push(Problem::new(
                    key("name"),
                    "must be a non-empty name unique among the rules".into(),
                ));
            }
            if rule.window.span().0 == 0 {
                problems.push(Problem::new(
                    key("window"),
                    "must be longer than zero, e.g. `60s`".into(),
                ));
            }
            if rule.limit >= MAX_HELD {
                problems.push(too_high_a_limit(key("limit")));
            }
        }
        if let Some(rule) = &self.refused_calls {
            problems.extend(rule.problems());
        }
        let mut overridden = HashSet::new();
        for (i, o) in self.overrides.iter().enumerate() {
            let key = |field: &str| format!("policy.overrides[{i}].{field}");
            // The value is not echoed: a raw token pasted here must not reach a log.
            let Ok(fp) = o.token_fp.parse::<TokenFingerprint>() else {
                problems.push(Problem::new(
                    key("token_fp"),
                    "must be a token fingerprint, 16 hex digits as `redcap-monitor fingerprint` \
                     prints them (never the token itself)"
                        .into(),
                ));
                continue;
            };
            if !overridden.insert(fp) {
                problems.push(Problem::new(
                    key("token_fp"),
                    format!("{fp} has an earlier override"),
                ));
            }
            match (o.exempt, o.limits.is_empty()) {
                (true, false) => {
                    problems.push(Problem::new(
                        key("limits"),
                        "an exempt token has no limits: drop `limits` or `exempt`".into(),
                    ));
                }
                (false, true) => {
                    problems.push(Problem::new(
                        key("limits"),
                        "is empty: give the token limits, e.g. { api_calls = 30 }, or set \
                         `exempt = true`"
                            .into(),
                    ));
                }
                _ => {}
            }
            if o.limits.values().any(|&limit| limit >= MAX_HELD) {
                problems.push(too_high_a_limit(key("limits")));
            }
            if let Some(unknown) = o.limits.keys().find(|name| !names.contains(name.as_str())) {
                problems.push(Problem::new(
                    key("limits"),
                    format!(
                        "names no rule `{unknown}`; the rules are {}",
                        self.rules
                            .iter()
                            .map(|r| r.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        at_least_one(
            &mut problems,
            &[
                ("policy.max_tokens", self.max_tokens as u64),
                (
                    "policy.max_refused_clients",
                    self.max_refused_clients as u64,
                ),
            ],
        );
        problems
    }
}
