//! The institution's API policy, evaluated exactly per token.
//!
//! Owns what makes a call heavy and the rate rules (at most N calls, or N heavy calls, per token
//! in any sliding window). Calls are evaluated in the order their requests started, not the order
//! their responses finished: a short reorder buffer holds finished calls until no earlier-started
//! call can still arrive. Sans-IO: time is the calls' own timestamps plus the `now` the caller
//! passes. Never reads a raw token: calls are keyed by fingerprint (a call waiting in the reorder
//! buffer may hold its raw token for the suspend hooks, opaque here).
//!
//! Memory is bounded: a token's windows are forgotten once they are empty, at most
//! `max_tokens` tokens are tracked (the least recently seen are evicted, counted), and refused
//! calls (401/403) and unanswered calls (the client reset before the answer) of a token not
//! otherwise tracked are counted per client address instead, so a flood of random tokens cannot
//! grow the map. A client whose refused calls go over the refused-calls rule (by default the
//! rate limit) is a [`ClientViolation`]: probing for tokens, keyed by its address, as fail2ban
//! would see it. The state has one owner (the pipeline's thread);
//! readers elsewhere (metrics, the admin API) get copies from the stats, not shared maps.

mod config;
pub mod enforce;
mod hold;
mod window;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::IpAddr;

pub use config::PolicyConfig;
#[cfg(test)]
pub(crate) use config::RuleConfig;
pub(crate) use config::{CallClass, HeavyKind};
pub use hold::{Hold, OpenRequests};
pub(crate) use window::{MAX_HELD, SlidingCount};

use crate::shared::model::{Span, Timestamp};
use crate::shared::token::{FingerprintMap, TokenFingerprint};
use crate::stages::redcap::ApiCall;

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
    pub(crate) ts: Timestamp,
    pub(crate) token: TokenFingerprint,
    pub rule: String,
    pub(crate) limit: u32,
    pub(crate) window: Span,
    /// Calls the rule counted in the window ending at `ts`, this one included.
    pub count: u32,
}

/// A client address whose refused calls (401/403) went over the refused-calls rule: it is
/// trying tokens the server does not accept. Keyed by the address, not by a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientViolation {
    /// When the offending call's request started.
    pub(crate) ts: Timestamp,
    pub(crate) client: IpAddr,
    pub(crate) limit: u32,
    pub(crate) window: Span,
    /// Refused calls from the address in the window ending at `ts`, this one included.
    pub count: u32,
}

/// `[policy.refused_calls]`: refused calls (401/403) one client address may make in any window.
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RefusedCallsRule {
    pub(crate) limit: u32,
    pub(crate) window: crate::shared::settings::Duration,
}

impl RefusedCallsRule {
    /// What is wrong with the rule, keyed by its path (`policy.refused_calls.window`).
    pub(crate) fn problems(&self) -> Vec<crate::shared::settings::Problem> {
        let key = |field: &str| format!("policy.refused_calls.{field}");
        let mut problems = Vec::new();
        if self.window.span().0 == 0 {
            problems.push(crate::shared::settings::Problem::new(
                key("window"),
                "must be longer than zero, e.g. `60s`".into(),
            ));
        }
        if self.limit >= MAX_HELD {
            problems.push(crate::shared::settings::Problem::new(
                key("limit"),
                format!("must be below {MAX_HELD} refused calls per window"),
            ));
        }
        problems
    }
}

/// Name of the refused-calls rule in violation records and alerts.
pub(crate) const REFUSED_CALLS_RULE: &str = "refused_calls";

/// A call after the policy has looked at it.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub call: ApiCall,
    pub heavy: Option<HeavyReason>,
    pub violations: Vec<Violation>,
    /// The call's client address went over the refused-calls rule.
    pub client_violation: Option<ClientViolation>,
    /// What was decided about the token, when the call broke a rule.
    pub(crate) decision: Option<enforce::Decision>,
    /// The token was under a suspension in force when the call began: its violations are
    /// counted by the enforcer (and reported when the suspension ends), not recorded one by one.
    pub(crate) while_suspended: bool,
}

/// Counters the policy stage keeps.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PolicyStats {
    pub(crate) calls: u64,
    pub(crate) heavy_calls: u64,
    pub(crate) violations: u64,
    /// Calls without a usable token (missing, malformed, unreadable): no rule can apply to
    /// them; they are counted per client address instead (see [`Policy::refused_clients`]).
    pub(crate) calls_without_token: u64,
    /// Calls that arrived after later-started calls of the same token (or, for calls counted
    /// per client address, of the same address) had already been evaluated.
    pub late_calls: u64,
    /// Calls of exempt tokens (`policy.overrides`): no rule applied.
    pub(crate) exempt_calls: u64,
    /// Refused calls (401/403) of tokens not otherwise tracked, counted per client address.
    pub(crate) refused_untracked_calls: u64,
    /// Unanswered calls (the client reset or closed before the answer) of tokens not otherwise
    /// tracked, counted per client address: the server never judged the token.
    pub(crate) unanswered_untracked_calls: u64,
    /// Calls that took a client address over the refused-calls rule (probing for tokens).
    pub(crate) client_violations: u64,
    /// Tokens whose windows were dropped to stay within `policy.max_tokens`.
    pub evicted_tokens: u64,
    /// Client addresses dropped to stay within `policy.max_refused_clients`.
    pub(crate) evicted_refused_clients: u64,
    /// Other web hosts' calls (`[shared]`) counted in the windows; they are in none of the
    /// counters above, which count this host's calls only.
    pub(crate) peer_calls: u64,
    /// Peers' calls that arrived after later-started calls of the same token (or client address)
    /// had been evaluated here (a peer that was cut off, or Redis down for a while): still
    /// counted in their windows.
    pub late_peer_calls: u64,
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
    /// Request start of the token's latest call: for idle expiry and eviction.
    last_call: Timestamp,
}

/// One token's treatment under `policy.overrides`.
enum Override {
    Exempt,
    /// This token's limit per rule (in rule order), `None` where the rule's own applies.
    Limits(Vec<Option<u32>>),
}

/// Calls from one client address that no token's windows took: refused calls of untracked
/// tokens ([`PolicyStats::refused_untracked_calls`]) and calls without a usable token
/// ([`PolicyStats::calls_without_token`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RefusedClient {
    pub(crate) calls: u64,
    pub(crate) last_call: Timestamp,
}

/// One client address's calls that no token took, and its refused calls' window.
struct ClientCalls {
    summary: RefusedClient,
    refused: SlidingCount,
}

/// The refused-calls rule: as configured, else the rate limit (the `calls = "all"` rule).
fn refused_rule(config: &PolicyConfig) -> (u32, Span) {
    if let Some(rule) = config.refused_calls {
        return (rule.limit, rule.window.span());
    }
    config
        .rules
        .iter()
        .find(|r| r.calls == CallClass::All)
        .map_or((3, Span::from_secs(60)), |r| (r.limit, r.window.span()))
}

/// Calls held back that one round of [`Policy::poll`] looks past for a later call it may
/// release: a bound on the work per release when many calls wait behind open requests (those
/// beyond it wait for a later round, at worst for the reorder window).
const MAX_HELD_LOOKED_PAST: usize = 1024;

/// How often idle tokens are looked for (in capture time).
const FORGET_INTERVAL: Span = Span::from_secs(60);

/// A finished call waiting in the reorder buffer, ordered by request start.
struct Pending {
    ts_start: Timestamp,
    seq: u64,
    call: ApiCall,
    /// Another web host served it: it only fills windows, no verdict comes out.
    from_peer: bool,
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
    unknown_token_hold: Span,
    tokens: FingerprintMap<TokenWindows>,
    overrides: FingerprintMap<Override>,
    max_tokens: usize,
    refused: HashMap<IpAddr, ClientCalls>,
    max_refused_clients: usize,
    refused_rule: (u32, Span),
    /// The longest rule window: a token idle for longer has nothing left to count.
    longest_window: Span,
    next_forget: Timestamp,
    pending: BinaryHeap<Reverse<Pending>>,
    /// Calls found held during the current round of [`Policy::poll`] (back in `pending` when
    /// the round ends), and the tokens and client addresses they hold back with them: a later
    /// call of the same token or address must not overtake them.
    deferred: Vec<Pending>,
    blocked_tokens: HashSet<TokenFingerprint>,
    blocked_clients: HashSet<IpAddr>,
    next_seq: u64,
    /// Peers' calls that broke a rule, for the enforcer's memory (see `take_peer_offences`).
    peer_offences: Vec<(TokenFingerprint, Timestamp)>,
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

/// The per-token overrides, with limits indexed like the configured rules.
fn overrides(config: &PolicyConfig) -> FingerprintMap<Override> {
    let rule_index = |name: &str| config.rules.iter().position(|r| r.name == name);
    config
        .overrides
        .iter()
        .filter_map(|o| {
            // Validated by `Config::load`; a bad one here is skipped, not trusted.
            let fp: TokenFingerprint = o.token_fp.parse().ok()?;
            let treatment = if o.exempt {
                Override::Exempt
            } else {
                let mut limits = vec![None; config.rules.len()];
                for (name, limit) in &o.limits {
                    if let Some(i) = rule_index(name) {
                        limits[i] = Some(*limit);
                    }
                }
                Override::Limits(limits)
            };
            Some((fp, treatment))
        })
        .collect()
}

/// The longest rule window: how far back a call can still count.
pub(crate) fn longest_window(config: &PolicyConfig) -> Span {
    config
        .rules
        .iter()
        .map(|r| r.window.span())
        .max()
        .unwrap_or(Span(0))
}

impl Policy {
    pub fn new(config: &PolicyConfig) -> Policy {
        Policy {
            overrides: overrides(config),
            max_tokens: config.max_tokens.max(1),
            refused: HashMap::new(),
            max_refused_clients: config.max_refused_clients.max(1),
            refused_rule: refused_rule(config),
            longest_window: longest_window(config),
            next_forget: Timestamp::default(),
            rules: rules(config),
            heavy_response_bytes: config.heavy.response_bytes,
            heavy_kinds: config.heavy.kinds.clone(),
            reorder_window: config.reorder_window.span(),
            unknown_token_hold: config.unknown_token_hold.span(),
            tokens: FingerprintMap::default(),
            pending: BinaryHeap::new(),
            deferred: Vec::new(),
            blocked_tokens: HashSet::new(),
            blocked_clients: HashSet::new(),
            next_seq: 0,
            peer_offences: Vec::new(),
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
    pub(crate) fn reconfigure(&mut self, config: &PolicyConfig) {
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
        self.overrides = overrides(config);
        self.max_tokens = config.max_tokens.max(1);
        self.max_refused_clients = config.max_refused_clients.max(1);
        self.refused_rule = refused_rule(config);
        self.longest_window = longest_window(config);
        self.heavy_response_bytes = config.heavy.response_bytes;
        self.heavy_kinds = config.heavy.kinds.clone();
        self.reorder_window = config.reorder_window.span();
        self.unknown_token_hold = config.unknown_token_hold.span();
    }

    /// Why `call` is heavy, if it is: size first (it is measured), then the request kind.
    pub(crate) fn classify(&self, call: &ApiCall) -> Option<HeavyReason> {
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
        self.enqueue(call, false);
    }

    /// Accepts a call another web host served (`[shared]`): it is evaluated in request-start
    /// order with this host's calls and counts in the windows, but gives no verdict here (its
    /// own host acts on it).
    pub fn push_from_peer(&mut self, call: ApiCall) {
        self.enqueue(call, true);
    }

    fn enqueue(&mut self, call: ApiCall, from_peer: bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push(Reverse(Pending {
            ts_start: call.ts_start,
            seq,
            call,
            from_peer,
        }));
    }

    /// Evaluates the next call that no earlier-started call can still overtake, or returns
    /// `None` when every waiting call is held back; call it until it does (one round), with the
    /// same `hold`. A call is held back by a request still open that started no later than it
    /// and may count against the same window (see [`Hold`]): one whose token is that call's
    /// token; for a call counted per client address (refused, unanswered, without a usable
    /// token), one from that address whose token is known; any one whose token is not known
    /// yet and that started less than `policy.unknown_token_hold` before `now`; and by an
    /// earlier call held back of the same token or address. Nothing is held back once it
    /// started at least the reorder window before `now` (a request left hanging must not hold
    /// the others back for ever).
    pub fn poll(&mut self, now: Timestamp, hold: &Hold<'_>) -> Option<Verdict> {
        let unknown = hold
            .open
            .oldest_unknown_after(now.minus(self.unknown_token_hold.min(self.reorder_window)));
        let all_since = match (hold.all_since, unknown) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        while let Some(Reverse(pending)) = self.pending.pop() {
            let aged = pending.ts_start.plus(self.reorder_window) <= now;
            if aged {
                match self.settle(pending) {
                    Some(verdict) => return Some(verdict),
                    None => continue,
                }
            }
            // Everything from here on started after the hold on all calls, or more calls are
            // held back than a round looks past: the rest waits for a later round (at worst
            // for the reorder window), so a flood of held calls costs little per release.
            if all_since.is_some_and(|since| since <= pending.ts_start)
                || self.deferred.len() >= MAX_HELD_LOOKED_PAST
            {
                self.pending.push(Reverse(pending));
                break;
            }
            if !self.held(&pending.call, all_since, hold.open) {
                match self.settle(pending) {
                    Some(verdict) => return Some(verdict),
                    None => continue,
                }
            }
            self.block(&pending.call);
            self.deferred.push(pending);
        }
        self.end_round();
        None
    }

    /// Whether an open request, or a call already held back, may still count before `call`.
    fn held(&self, call: &ApiCall, all_since: Option<Timestamp>, open: &dyn OpenRequests) -> bool {
        let started_before = |open: Option<Timestamp>| open.is_some_and(|o| o <= call.ts_start);
        if started_before(all_since) {
            return true;
        }
        if let Ok(identity) = &call.token {
            let fp = identity.fingerprint;
            if self.blocked_tokens.contains(&fp) || started_before(open.oldest_of_token(&fp)) {
                return true;
            }
        }
        if !by_client(call) {
            return false;
        }
        // The open request's client is known by its connection's address (a trusted proxy's,
        // when one carried it), the call's by what the proxy said too: either may match.
        let client = call.client.ip;
        self.blocked_clients.contains(&client)
            || started_before(open.oldest_from_peer(client))
            || call
                .proxy
                .is_some_and(|proxy| started_before(open.oldest_from_peer(proxy.ip)))
    }

    /// A call held back holds back the later calls of its token, and of its client address when
    /// it may be counted by address.
    fn block(&mut self, call: &ApiCall) {
        if let Ok(identity) = &call.token {
            self.blocked_tokens.insert(identity.fingerprint);
        }
        if by_client(call) {
            self.blocked_clients.insert(call.client.ip);
        }
    }

    /// Puts the calls held back in this round back among the waiting ones.
    fn end_round(&mut self) {
        self.pending.extend(self.deferred.drain(..).map(Reverse));
        self.blocked_tokens.clear();
        self.blocked_clients.clear();
    }

    /// Start of the earliest call of this host still waiting to be judged: with windows shared,
    /// the watermark this host publishes stays before it, so that a peer judges its later calls
    /// only after this host has decided (and announced) what this call brought.
    pub(crate) fn oldest_own_waiting(&self) -> Option<Timestamp> {
        self.pending
            .iter()
            .filter(|Reverse(p)| !p.from_peer)
            .map(|Reverse(p)| p.ts_start)
            .min()
    }

    /// Takes the tokens whose peers' calls broke a rule here since the last take, with when the
    /// calls started: the enforcer remembers them as offences, so that a token spreading its
    /// calls over hosts climbs the same warning ladder as on one host. Take them after every
    /// [`poll`](Self::poll), before acting on its verdict: they started earlier.
    pub(crate) fn take_peer_offences(
        &mut self,
    ) -> std::vec::Drain<'_, (TokenFingerprint, Timestamp)> {
        self.peer_offences.drain(..)
    }

    /// Drops the raw tokens of the calls waiting here (a reload left no hook that wants them).
    pub(crate) fn drop_raw_tokens(&mut self) {
        self.end_round();
        let mut waiting = std::mem::take(&mut self.pending).into_vec();
        for Reverse(pending) in &mut waiting {
            drop(pending.call.raw_token.take());
        }
        self.pending = BinaryHeap::from(waiting);
    }

    /// Whether finished calls are waiting to be evaluated.
    pub(crate) fn has_waiting(&self) -> bool {
        !self.pending.is_empty() || !self.deferred.is_empty()
    }

    /// Evaluates the next waiting call regardless of time (end of input).
    pub fn drain(&mut self) -> Option<Verdict> {
        self.end_round();
        while self.has_waiting() {
            if let Some(verdict) = self.release() {
                return Some(verdict);
            }
        }
        None
    }

    pub fn stats(&self) -> &PolicyStats {
        &self.stats
    }

    /// Tokens with state in memory.
    pub fn tracked_tokens(&self) -> usize {
        self.tokens.len()
    }

    /// Client addresses whose refused or tokenless calls are being counted, most calls first (at
    /// most `n`).
    #[cfg(test)]
    pub(crate) fn refused_clients(&self, n: usize) -> Vec<(IpAddr, RefusedClient)> {
        let mut clients: Vec<(IpAddr, RefusedClient)> = self
            .refused
            .iter()
            .map(|(ip, c)| (*ip, c.summary))
            .collect();
        clients.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then(a.0.cmp(&b.0)));
        clients.truncate(n);
        clients
    }

    /// Forgets tokens with nothing left in any window as of `now` (every `FORGET_INTERVAL`).
    pub fn forget_idle(&mut self, now: Timestamp) {
        if now < self.next_forget {
            return;
        }
        self.next_forget = now.plus(FORGET_INTERVAL);
        // Calls up to the reorder window old may still arrive and must find their windows.
        let horizon = now.minus(self.longest_window).minus(self.reorder_window);
        self.tokens.retain(|_, w| w.last_call > horizon);
        let refused_horizon = horizon.min(now.minus(self.refused_rule.1));
        self.refused
            .retain(|_, c| c.summary.last_call > refused_horizon);
    }

    /// Evaluates the next waiting call; a peer's gives no verdict (`None` then too).
    fn release(&mut self) -> Option<Verdict> {
        let Reverse(pending) = self.pending.pop()?;
        self.settle(pending)
    }

    /// Evaluates a call taken from the waiting ones: this host's gives its verdict; a peer's
    /// only fills the windows (and may be an offence for the enforcer), `None`.
    fn settle(&mut self, pending: Pending) -> Option<Verdict> {
        if !pending.from_peer {
            return Some(self.evaluate(pending.call));
        }
        // The windows take the peer's call; this host's counters stay this host's own, but for
        // what is about memory (evictions), which is this host's whatever the call.
        let own = self.stats.clone();
        let own_late = own.late_calls;
        let verdict = self.evaluate(pending.call);
        if let (Ok(identity), false) = (&verdict.call.token, verdict.violations.is_empty()) {
            self.peer_offences
                .push((identity.fingerprint, verdict.call.ts_start));
        }
        let after = std::mem::replace(&mut self.stats, own);
        self.stats.evicted_tokens = after.evicted_tokens;
        self.stats.evicted_refused_clients = after.evicted_refused_clients;
        self.stats.peer_calls += 1;
        self.stats.late_peer_calls += after.late_calls - own_late;
        None
    }

    fn evaluate(&mut self, call: ApiCall) -> Verdict {
        self.stats.calls += 1;
        let heavy = self.classify(&call);
        if heavy.is_some() {
            self.stats.heavy_calls += 1;
        }
        let mut violations = Vec::new();
        let mut client_violation = None;
        match &call.token {
            Ok(identity) => {
                let fp = identity.fingerprint;
                let limits: Option<Vec<Option<u32>>> = match self.overrides.get(&fp) {
                    Some(Override::Exempt) => {
                        self.stats.exempt_calls += 1;
                        None
                    }
                    Some(Override::Limits(limits)) => Some(limits.clone()),
                    None => Some(Vec::new()),
                };
                let refused = call.status.is_some_and(|s| s == 401 || s == 403);
                // No answer (the client reset first): the server never judged the token, so
                // a flood of them must not grow per-token state any more than refused ones.
                let unanswered = call.status.is_none();
                if let Some(limits) = limits {
                    if (refused || unanswered) && !self.tokens.contains_key(&fp) {
                        if refused {
                            self.stats.refused_untracked_calls += 1;
                        } else {
                            self.stats.unanswered_untracked_calls += 1;
                        }
                        client_violation = self.count_by_client(&call);
                    } else {
                        self.make_room(fp);
                        let windows = self.tokens.entry(fp).or_default();
                        if call.ts_start < windows.last_call {
                            self.stats.late_calls += 1;
                        }
                        windows.last_call = windows.last_call.max(call.ts_start);
                        windows
                            .per_rule
                            .resize_with(self.rules.len(), SlidingCount::default);
                        for (i, (rule, window)) in
                            self.rules.iter().zip(&mut windows.per_rule).enumerate()
                        {
                            if rule.calls == CallClass::Heavy && heavy.is_none() {
                                continue;
                            }
                            let limit = limits.get(i).copied().flatten().unwrap_or(rule.limit);
                            let count = window.record(call.ts_start, rule.window);
                            if count > limit {
                                violations.push(Violation {
                                    ts: call.ts_start,
                                    token: fp,
                                    rule: rule.name.clone(),
                                    limit,
                                    window: rule.window,
                                    count,
                                });
                            }
                        }
                    }
                }
            }
            Err(_) => {
                self.stats.calls_without_token += 1;
                client_violation = self.count_by_client(&call);
            }
        }
        self.stats.violations += violations.len() as u64;
        self.stats.client_violations += u64::from(client_violation.is_some());
        Verdict {
            call,
            heavy,
            violations,
            client_violation,
            decision: None,
            while_suspended: false,
        }
    }
}

impl Policy {
    /// Before a new token gets windows at the cap, evicts the least recently seen eighth of the
    /// tokens (one scan per many insertions, so a flood costs little per call).
    fn make_room(&mut self, fp: TokenFingerprint) {
        if self.tokens.len() < self.max_tokens || self.tokens.contains_key(&fp) {
            return;
        }
        let evict = (self.max_tokens / 8).max(1);
        let mut by_age: Vec<(Timestamp, TokenFingerprint)> = self
            .tokens
            .iter()
            .map(|(fp, w)| (w.last_call, *fp))
            .collect();
        by_age.select_nth_unstable(evict - 1);
        for (_, old) in &by_age[..evict] {
            self.tokens.remove(old);
        }
        self.stats.evicted_tokens += evict as u64;
    }

    /// Counts a call that no token's windows take (refused and untracked, or without a usable
    /// token) against its client address, within `policy.max_refused_clients`. A refused one
    /// (401/403) that takes the address over the refused-calls rule is a violation.
    fn count_by_client(&mut self, call: &ApiCall) -> Option<ClientViolation> {
        let ip = call.client.ip;
        if !self.refused.contains_key(&ip) && self.refused.len() >= self.max_refused_clients {
            let evict = (self.max_refused_clients / 8).max(1);
            let mut by_age: Vec<(Timestamp, IpAddr)> = self
                .refused
                .iter()
                .map(|(ip, c)| (c.summary.last_call, *ip))
                .collect();
            by_age.select_nth_unstable(evict - 1);
            for (_, old) in &by_age[..evict] {
                self.refused.remove(old);
            }
            self.stats.evicted_refused_clients += evict as u64;
        }
        let entry = self.refused.entry(ip).or_insert(ClientCalls {
            summary: RefusedClient {
                calls: 0,
                last_call: call.ts_start,
            },
            refused: SlidingCount::default(),
        });
        entry.summary.calls += 1;
        if call.ts_start < entry.summary.last_call {
            self.stats.late_calls += 1;
        }
        entry.summary.last_call = entry.summary.last_call.max(call.ts_start);
        if !call.status.is_some_and(|s| s == 401 || s == 403) {
            return None;
        }
        let (limit, window) = self.refused_rule;
        let count = entry.refused.record(call.ts_start, window);
        (count > limit).then_some(ClientViolation {
            ts: call.ts_start,
            client: ip,
            limit,
            window,
            count,
        })
    }
}

/// Whether the policy may count `call` against its client address rather than its token: it
/// has no usable token, or the server refused it or never answered (counted by address when the
/// token is not otherwise tracked).
fn by_client(call: &ApiCall) -> bool {
    call.token.is_err() || call.status.is_none_or(|s| s == 401 || s == 403)
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
pub(crate) mod sample;
#[cfg(test)]
mod tests;
