//! The institution's API policy, evaluated exactly per token.
//!
//! Owns what makes a call heavy and the rate rules (at most N calls, or N heavy calls, per token
//! in any sliding window). Calls are evaluated in the order their requests started, not the order
//! their responses finished: a short reorder buffer holds finished calls until no earlier-started
//! call can still arrive. Sans-IO: time is the calls' own timestamps plus the `now` the caller
//! passes. Never sees a raw token: calls are keyed by fingerprint.

pub mod enforce;
mod window;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

pub use window::SlidingCount;

use crate::config::{CallClass, HeavyKind, PolicyConfig};
use crate::model::{Span, Timestamp};
use crate::redcap::ApiCall;
use crate::token::TokenFingerprint;

/// Why a call counts as heavy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeavyReason {
    /// The decoded response was larger than the configured size.
    ResponseSize,
    /// A request kind that is heavy whatever its size.
    #[serde(untagged)]
    Kind(HeavyKind),
}

/// One call that took its token over one rule's limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// When the offending call's request started.
    pub ts: Timestamp,
    pub token: TokenFingerprint,
    pub rule: String,
    pub limit: u32,
    pub window: Span,
    /// Calls the rule counted in the window ending at `ts`, this one included.
    pub count: u32,
}

/// A call after the policy has looked at it.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub call: ApiCall,
    pub heavy: Option<HeavyReason>,
    pub violations: Vec<Violation>,
    /// What was decided about the token, when the call broke a rule.
    pub decision: Option<enforce::Decision>,
}

/// Counters the policy stage keeps.
#[derive(Clone, Debug, Default)]
pub struct PolicyStats {
    pub calls: u64,
    pub heavy_calls: u64,
    pub violations: u64,
    /// Calls without a usable token: no rule can apply to them.
    pub calls_without_token: u64,
    /// Calls that arrived after later-started calls had already been evaluated.
    pub late_calls: u64,
}

struct Rule {
    name: String,
    calls: CallClass,
    limit: u32,
    window: Span,
}

/// Per-token state: one sliding count per rule.
#[derive(Default)]
struct TokenWindows {
    per_rule: Vec<SlidingCount>,
}

/// A finished call waiting in the reorder buffer, ordered by request start.
struct Pending {
    ts_start: Timestamp,
    seq: u64,
    call: ApiCall,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.ts_start, self.seq) == (other.ts_start, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.ts_start, self.seq).cmp(&(other.ts_start, other.seq))
    }
}

pub struct Policy {
    rules: Vec<Rule>,
    heavy_response_bytes: u64,
    heavy_kinds: Vec<HeavyKind>,
    reorder_window: Span,
    tokens: HashMap<TokenFingerprint, TokenWindows>,
    pending: BinaryHeap<Reverse<Pending>>,
    next_seq: u64,
    /// Request start of the newest call evaluated so far.
    evaluated_up_to: Timestamp,
    stats: PolicyStats,
}

fn rules(config: &PolicyConfig) -> Vec<Rule> {
    config
        .rules
        .iter()
        .map(|r| Rule {
            name: r.name.clone(),
            calls: r.calls,
            limit: r.limit,
            window: r.window.span(),
        })
        .collect()
}

impl Policy {
    pub fn new(config: &PolicyConfig) -> Policy {
        Policy {
            rules: rules(config),
            heavy_response_bytes: config.heavy.response_bytes,
            heavy_kinds: config.heavy.kinds.clone(),
            reorder_window: config.reorder_window.span(),
            tokens: HashMap::new(),
            pending: BinaryHeap::new(),
            next_seq: 0,
            evaluated_up_to: Timestamp::default(),
            stats: PolicyStats::default(),
        }
    }

    /// Applies a new configuration (a reload) without forgetting what was counted: each token's
    /// window of a rule is kept when the new rules have a rule of the same name counting the same
    /// class of calls (its limit and window may change), so the next call is judged against the
    /// new limit with the calls already seen. A new or changed rule starts empty. Calls waiting
    /// in the reorder buffer stay there and are judged by the new rules.
    ///
    /// A window made longer counts only what the old one still held: events older than the old
    /// window were already forgotten.
    pub fn reconfigure(&mut self, config: &PolicyConfig) {
        let new_rules = rules(config);
        // For each new rule, the index of the old rule whose counts carry over.
        let carried: Vec<Option<usize>> = new_rules
            .iter()
            .map(|new| {
                self.rules
                    .iter()
                    .position(|old| old.name == new.name && old.calls == new.calls)
            })
            .collect();
        for windows in self.tokens.values_mut() {
            let mut old = std::mem::take(&mut windows.per_rule);
            windows.per_rule = carried
                .iter()
                .map(|from| {
                    from.and_then(|i| old.get_mut(i))
                        .map(std::mem::take)
                        .unwrap_or_default()
                })
                .collect();
        }
        self.tokens
            .retain(|_, w| w.per_rule.iter().any(|c| !c.is_empty()));
        self.rules = new_rules;
        self.heavy_response_bytes = config.heavy.response_bytes;
        self.heavy_kinds = config.heavy.kinds.clone();
        self.reorder_window = config.reorder_window.span();
    }

    /// Why `call` is heavy, if it is: size first (it is measured), then the request kind.
    pub fn classify(&self, call: &ApiCall) -> Option<HeavyReason> {
        let size = call.response_bytes.or(call.response_wire_bytes);
        if size.is_some_and(|bytes| bytes > self.heavy_response_bytes) {
            return Some(HeavyReason::ResponseSize);
        }
        // A refused request (bad token, missing right, bad parameter) did none of the work its
        // kind stands for; only its measured size can make it heavy.
        if call.status.is_some_and(|s| (400..500).contains(&s)) {
            return None;
        }
        let kind = heavy_kind(call)?;
        self.heavy_kinds
            .contains(&kind)
            .then_some(HeavyReason::Kind(kind))
    }

    /// Accepts a finished call; it is evaluated once [`poll`](Self::poll) releases it.
    pub fn push(&mut self, call: ApiCall) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push(Reverse(Pending {
            ts_start: call.ts_start,
            seq,
            call,
        }));
    }

    /// Evaluates the next call that no earlier-started call can still overtake: one that started
    /// before every request still open (`open_since`, `None` when none is), or at least the
    /// reorder window before `now` (a request left hanging must not hold the others back).
    pub fn poll(&mut self, now: Timestamp, open_since: Option<Timestamp>) -> Option<Verdict> {
        let ready = self.pending.peek().is_some_and(|Reverse(p)| {
            open_since.is_none_or(|open| p.ts_start < open)
                || p.ts_start.plus(self.reorder_window) <= now
        });
        if ready { self.release() } else { None }
    }

    /// Whether finished calls are waiting to be evaluated.
    pub fn has_waiting(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Evaluates the next waiting call regardless of time (end of input).
    pub fn drain(&mut self) -> Option<Verdict> {
        self.release()
    }

    pub fn stats(&self) -> &PolicyStats {
        &self.stats
    }

    /// Tokens with state in memory.
    pub fn tracked_tokens(&self) -> usize {
        self.tokens.len()
    }

    fn release(&mut self) -> Option<Verdict> {
        let Reverse(pending) = self.pending.pop()?;
        Some(self.evaluate(pending.call))
    }

    fn evaluate(&mut self, call: ApiCall) -> Verdict {
        self.stats.calls += 1;
        let heavy = self.classify(&call);
        if heavy.is_some() {
            self.stats.heavy_calls += 1;
        }
        if call.ts_start < self.evaluated_up_to {
            self.stats.late_calls += 1;
        } else {
            self.evaluated_up_to = call.ts_start;
        }
        let mut violations = Vec::new();
        match &call.token {
            Ok(identity) => {
                let windows = self.tokens.entry(identity.fingerprint).or_default();
                windows
                    .per_rule
                    .resize_with(self.rules.len(), SlidingCount::default);
                for (rule, window) in self.rules.iter().zip(&mut windows.per_rule) {
                    if rule.calls == CallClass::Heavy && heavy.is_none() {
                        continue;
                    }
                    let count = window.record(call.ts_start, rule.window);
                    if count > rule.limit {
                        violations.push(Violation {
                            ts: call.ts_start,
                            token: identity.fingerprint,
                            rule: rule.name.clone(),
                            limit: rule.limit,
                            window: rule.window,
                            count,
                        });
                    }
                }
            }
            Err(_) => self.stats.calls_without_token += 1,
        }
        self.stats.violations += violations.len() as u64;
        Verdict {
            call,
            heavy,
            violations,
            decision: None,
        }
    }
}

/// The heavy request kind a call is, judged from its request alone.
fn heavy_kind(call: &ApiCall) -> Option<HeavyKind> {
    let call = &call.params;
    let content = call.content.as_deref()?;
    let is_import = call.data_bytes.is_some();
    let action = call.action.as_deref().unwrap_or("export");
    match content {
        "record" if !is_import && action == "export" => {
            (call.records == 0 && !call.filter_logic).then_some(HeavyKind::UnfilteredRecordExport)
        }
        "report" => Some(HeavyKind::Report),
        "log" => Some(HeavyKind::Log),
        "project_xml" => (call.return_metadata_only != Some(true)).then_some(HeavyKind::ProjectXml),
        "pdf" => (call.all_records == Some(true)).then_some(HeavyKind::PdfAllRecords),
        "file" | "fileRepository" if action == "export" && !is_import => {
            Some(HeavyKind::FileExport)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
