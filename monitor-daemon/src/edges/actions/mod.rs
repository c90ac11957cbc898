//! Acting on decisions: the I/O edge after policy and health.
//!
//! Owns the durable [`Store`] (audit log, suspensions with their expiry, first/last seen, the
//! alert outbox), the [`Alerts`] with their delivery thread, and the [`Hooks`], which run on a
//! worker thread of their own so that a slow hook never holds up capture. Decisions are made
//! sans-IO by the policy's [`Enforcer`]; this module records them, tells the admin team and runs
//! the hooks, and publishes the suspensions in force for REDCap's External Module
//! ([`publish`]). The only raw token it handles is a call's, kept for suspend hooks with
//! `pass_raw_token` ([`crate::shared::token::HookToken`]): taken from the verdict, handed with the
//! suspension's hook event to the hook thread, dropped (zeroed) once the hooks ran; it is never
//! recorded, alerted or logged. Time is what the caller passes: the wall clock live,
//! capture time in a replay (so a replay's suspensions expire in capture time).

mod hook_worker;
pub mod publish;
mod requests;
mod store_outbox;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use crate::edges::alerts::AlertsConfig;
use crate::edges::alerts::{Alert, Alerts, AlertsSetupError, DeliveryWorker, TokenRef};
use crate::edges::directory::Directory;
use crate::edges::hooks::HooksConfig;
use crate::edges::hooks::{HookAction, HookEvent, Hooks};
use crate::edges::store::StoreConfig;
use crate::edges::store::{
    AuditEntry, AuditKind, Sighting, Source, Store, StoreError, StoreLimits, Suspension,
};
use crate::shared::model::{Span, Timestamp};
use crate::shared::token::{FingerprintMap, MaskedToken, RawToken, TokenFingerprint};
use crate::stages::health::{Assessment, HealthChange};
use crate::stages::pipeline::Pipeline;
use crate::stages::policy::Verdict;
use crate::stages::policy::enforce::{Action, Decision, Enforcer};

pub use hook_worker::HookRuns;
pub use requests::{Reply, Request, RequestError, request_dir, submit_request};
pub use store_outbox::StoreOutbox;

use hook_worker::HookWorker;

/// Audit records held at most between two flushes; past it they are written at once.
const MAX_PENDING_AUDIT: usize = 4096;
/// Tokens whose sightings are held at most between two flushes.
const MAX_PENDING_SIGHTINGS: usize = 4096;
/// How often sightings alone (no audit record to carry them) are written.
const SIGHTING_FLUSH: Span = Span::from_secs(10);
/// How often old audit records and tokens are pruned.
const PRUNE_INTERVAL: Span = Span::from_secs(3600);
/// Request files handled per tick (the admin API's requests are carried out as they come).
const REQUESTS_PER_TICK: usize = 16;

/// Counters of the action edge.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ActionStats {
    /// Audit records written.
    pub audit_records: u64,
    /// Suspensions recorded (decided by the daemon or by an admin).
    pub suspensions: u64,
    /// Of those, made by an admin.
    pub manual_suspensions: u64,
    /// Suspensions ended (expired or lifted by an admin).
    pub lifts: u64,
    /// Of those, lifted by an admin.
    pub manual_lifts: u64,
    /// Suspensions decided in a dry run: recorded, not enforced.
    pub dry_run_suspensions: u64,
    /// Hook runs handed to the hook thread.
    pub hook_events: u64,
    /// Hook runs dropped because the hook thread's queue was full (audited).
    pub hook_events_dropped: u64,
    /// Store writes that failed (logged; the daemon keeps running).
    pub store_errors: u64,
    /// Capture-loss alerts raised.
    pub capture_loss_alerts: u64,
    /// Blind-spot alerts raised.
    pub capture_blind_alerts: u64,
    /// Violations by suspended tokens: counted, audited as one record when the suspension ends.
    pub violations_while_suspended: u64,
    /// Calls whose token the server refused or never judged (no answer): not written to the
    /// token table, so that made-up tokens cannot grow it.
    pub tokens_not_kept: u64,
    /// Admin requests handled (admin API or request files).
    pub requests: u64,
}

/// A reload's new alert sinks, made by [`Actions::prepare_reload`] and put in place by
/// [`Actions::reconfigure`].
pub struct ActionsReload {
    alerts: Alerts,
}

/// Why the action edge cannot start or change.
#[derive(Debug, thiserror::Error)]
pub enum ActionsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Alerts(#[from] AlertsSetupError),
    #[error("cannot start the hook thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot create the admin request directory {path}: {source}")]
    RequestDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A token under suspension, as the action edge follows it.
struct SuspendedToken {
    until: Option<Timestamp>,
    /// Violations since the suspension began, audited as one record when it ends.
    violations: u64,
}

impl SuspendedToken {
    fn new(until: Option<Timestamp>) -> SuspendedToken {
        SuspendedToken {
            until,
            violations: 0,
        }
    }
}

/// A change the enforcer must hear about, because it was made outside it.
enum EnforcerUpdate {
    Hold {
        token: TokenFingerprint,
        until: Option<Timestamp>,
    },
    Lift(TokenFingerprint),
}

/// What the edge after policy and health owns. See the module's documentation.
pub struct Actions {
    store: Arc<Store>,
    alerts: Alerts,
    delivery: Option<DeliveryWorker>,
    hooks: HookWorker,
    host: String,
    store_path: PathBuf,
    /// Audit records and sightings not yet written (flushed each tick).
    pending_audit: Vec<AuditEntry>,
    sightings: FingerprintMap<Sighting>,
    next_sighting_flush: Timestamp,
    next_prune: Timestamp,
    /// The earliest end of a suspension in force: expiry is looked for only then.
    next_expiry: Option<Timestamp>,
    /// Tokens under a suspension: their further violations are counted, not audited one by
    /// one, so that a suspended client hammering the server cannot grow the audit log.
    suspended: FingerprintMap<SuspendedToken>,
    /// Loss counters' total at the last look (the capture's counters only grow).
    capture_lost: u64,
    enforcer_updates: Vec<EnforcerUpdate>,
    requests: requests::RequestDir,
    /// The suspension list for REDCap's External Module, when `[redcap_module]` is on.
    publisher: Option<publish::Publisher>,
    /// Who tokens belong to: named in alerts and audit records when known.
    directory: Directory,
    stats: ActionStats,
}

/// What the action edge is built from: the sections of the edges it drives.
#[derive(Clone, Copy, Debug)]
pub struct ActionsConfig<'a> {
    pub store: &'a StoreConfig,
    pub alerts: &'a AlertsConfig,
    pub hooks: &'a HooksConfig,
}

impl Actions {
    /// Opens the store (it must not be open elsewhere), starts the alert delivery thread and the
    /// hook thread. `now` is the caller's clock.
    pub fn open(
        config: ActionsConfig<'_>,
        host: String,
        now: Timestamp,
    ) -> Result<Actions, ActionsError> {
        let store = Arc::new(Store::open(
            &config.store.path,
            StoreLimits::from_config(config.store),
        )?);
        let mut actions = Actions::with_store(store, config, host, now)?;
        actions.start_delivery(config)?;
        Ok(actions)
    }

    /// Like [`Actions::open`] on a store already open, without the delivery thread (tests
    /// deliver on their own terms; call [`Actions::start_delivery`] for it).
    pub fn with_store(
        store: Arc<Store>,
        config: ActionsConfig<'_>,
        host: String,
        now: Timestamp,
    ) -> Result<Actions, ActionsError> {
        let outbox = Arc::new(StoreOutbox::new(store.clone()));
        let alerts = Alerts::new(config.alerts, outbox, host.clone())?;
        let hooks = HookWorker::start(Hooks::new(config.hooks, host.clone()), store.clone())
            .map_err(ActionsError::Thread)?;
        let store_path = store.path().to_owned();
        let requests = requests::RequestDir::create(&store_path)?;
        let active = store.active_suspensions(now)?;
        let next_expiry = earliest_end(&active);
        let suspended = active
            .iter()
            .map(|s| (s.token, SuspendedToken::new(s.until)))
            .collect();
        Ok(Actions {
            store,
            alerts,
            delivery: None,
            hooks,
            host,
            store_path,
            pending_audit: Vec::new(),
            sightings: FingerprintMap::default(),
            next_sighting_flush: now.plus(SIGHTING_FLUSH),
            next_prune: now,
            next_expiry,
            suspended,
            capture_lost: 0,
            enforcer_updates: Vec::new(),
            requests,
            publisher: None,
            directory: Directory::off(),
            stats: ActionStats::default(),
        })
    }

    /// Starts the thread that delivers queued alerts (also those left by an earlier run).
    pub fn start_delivery(&mut self, config: ActionsConfig<'_>) -> Result<(), ActionsError> {
        let store = self.store.clone();
        let worker = self.alerts.start_delivery(
            config.alerts,
            Box::new(move |report| {
                let entry = AuditEntry {
                    ts: report.at,
                    kind: AuditKind::Alert,
                    token: None,
                    details: serde_json::to_value(report).unwrap_or_default(),
                };
                if let Err(err) = store.append_audit(&entry) {
                    tracing::error!(error = %err, "cannot audit an alert delivery");
                }
            }),
        )?;
        self.delivery = Some(worker);
        Ok(())
    }

    /// Publishes the suspensions in force for REDCap's External Module from now on: written at
    /// the next tick, again whenever they change, its mtime refreshed every heartbeat.
    pub fn publish_to(&mut self, publisher: publish::Publisher) {
        self.publisher = Some(publisher);
    }

    /// Names token owners from `directory` in alerts and audit records from now on.
    pub fn use_directory(&mut self, directory: Directory) {
        self.alerts.use_directory(directory.clone());
        self.directory = directory;
    }

    /// What the publisher did, when it runs.
    pub fn publish_stats(&self) -> Option<&publish::PublishStats> {
        self.publisher.as_ref().map(publish::Publisher::stats)
    }

    /// The store, for readers (audit, suspensions, first/last seen).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn stats(&self) -> &ActionStats {
        &self.stats
    }

    pub fn alert_stats(&self) -> &crate::edges::alerts::AlertStats {
        self.alerts.stats()
    }

    pub fn delivery_stats(&self) -> Option<crate::edges::alerts::DeliveryStats> {
        self.delivery.as_ref().map(DeliveryWorker::stats)
    }

    /// Hooks run so far, by event and result.
    pub fn hook_runs(&self) -> HookRuns {
        self.hooks.runs()
    }

    /// Puts what the store remembers into a fresh enforcer after a restart: the suspensions in
    /// force (so their tokens stay suspended) and the daemon's own suspensions within
    /// `enforcement.memory` (so the next one escalates). Returns the suspensions in force.
    pub fn restore_into(
        &self,
        enforcer: &mut Enforcer,
        now: Timestamp,
        memory: Span,
    ) -> Result<usize, StoreError> {
        let active = self.store.active_suspensions(now)?;
        let since = now.minus(memory);
        for record in self.store.audit(Some(since), None, usize::MAX)? {
            let entry = &record.entry;
            let auto = entry.details["source"] == json!(Source::Auto);
            if let (AuditKind::Suspend, Some(token), true) = (entry.kind, entry.token, auto) {
                enforcer.note_suspension(token, entry.ts);
            }
        }
        for suspension in &active {
            enforcer.hold(suspension.token, suspension.until);
        }
        Ok(active.len())
    }

    /// Records what the policy made of one call: the token's sighting, every violation and the
    /// decision, and acts on it (alert, suspension, hooks). Does not block on the network.
    ///
    /// Takes the call's raw token, if it was kept (see [`crate::stages::redcap::KeepRawToken`]): a
    /// suspension decided here hands it to the suspend hooks; otherwise it is dropped (and
    /// zeroed) here. The verdict holds none afterwards.
    pub fn on_verdict(&mut self, verdict: &mut Verdict) {
        let raw = verdict.call.raw_token.take();
        let verdict: &Verdict = verdict;
        let call = &verdict.call;
        if let Some(probing) = &verdict.client_violation {
            self.audit(AuditEntry::client_violation(probing));
            self.alerts.raise(Alert::probing(probing), call.ts_start);
        }
        // Only tokens the server accepted are kept (90 days): a flood of made-up tokens, refused
        // or never answered, must not grow the token table.
        if call.token.is_ok() && !call.token_accepted() {
            self.stats.tokens_not_kept += 1;
        }
        if let (Ok(identity), true) = (&call.token, call.token_accepted()) {
            let sighting = self
                .sightings
                .entry(identity.fingerprint)
                .or_insert_with(|| Sighting {
                    token: identity.fingerprint,
                    masked: identity.masked.clone(),
                    ts: call.ts_start,
                    calls: 0,
                });
            sighting.ts = sighting.ts.max(call.ts_start);
            sighting.calls += 1;
        }
        for violation in &verdict.violations {
            match self.suspended.get_mut(&violation.token) {
                Some(held) if held.until.is_none_or(|until| violation.ts < until) => {
                    held.violations += 1;
                    self.stats.violations_while_suspended += 1;
                }
                _ => self.audit(AuditEntry::violation(violation)),
            }
        }
        if let Some(decision) = &verdict.decision {
            let masked = call.token.as_ref().ok().map(|id| id.masked.clone());
            self.on_decision(verdict, decision, masked, raw);
        }
        if self.pending_audit.len() >= MAX_PENDING_AUDIT
            || self.sightings.len() >= MAX_PENDING_SIGHTINGS
        {
            self.flush();
        }
    }

    /// `raw` goes to the suspend hooks when the decision is a suspension in force, and is
    /// dropped otherwise (warnings, dry runs).
    fn on_decision(
        &mut self,
        verdict: &Verdict,
        decision: &Decision,
        masked: Option<MaskedToken>,
        raw: Option<RawToken>,
    ) {
        let at = verdict.call.ts_start;
        let evidence = serde_json::to_value(decision).unwrap_or_default();
        self.audit(AuditEntry {
            ts: at,
            kind: AuditKind::Decision,
            token: Some(decision.token_fp),
            details: evidence.clone(),
        });
        match &decision.action {
            Action::Suspend { until, .. } if !decision.dry_run => {
                let suspension = Suspension {
                    token: decision.token_fp,
                    masked,
                    since: at,
                    until: Some(Timestamp::from_secs_f64(*until)),
                    reason: suspension_reason(decision),
                    level: decision.evidence.suspensions_remembered,
                    source: Source::Auto,
                };
                self.record_suspension(suspension, evidence, raw);
            }
            action => {
                if matches!(action, Action::Suspend { .. }) {
                    self.stats.dry_run_suspensions += 1;
                }
                for violation in &verdict.violations {
                    self.alerts.raise(
                        Alert::violation(violation, masked.clone(), evidence.clone()),
                        at,
                    );
                }
            }
        }
    }

    /// Suspends a token by hand: recorded, alerted, hooks run, and the enforcer told (at the
    /// next [`Actions::sync_enforcer`]). `until` `None` means until lifted. An admin names the
    /// token by fingerprint, so `pass_raw_token` hooks get no raw token here.
    pub fn suspend(
        &mut self,
        token: TokenFingerprint,
        until: Option<Timestamp>,
        reason: &str,
        now: Timestamp,
    ) -> Result<Suspension, StoreError> {
        let masked = self.store.token_seen(token)?.map(|seen| seen.masked);
        let suspension = Suspension {
            token,
            masked,
            since: now,
            until,
            reason: reason.to_owned(),
            level: 0,
            source: Source::Manual,
        };
        self.flush();
        self.store.suspend(&suspension)?;
        self.stats.manual_suspensions += 1;
        self.after_suspension(&suspension, json!({"source": "manual"}), None);
        Ok(suspension)
    }

    /// Lifts a token's suspension by hand; `None` when it was not suspended.
    pub fn lift(
        &mut self,
        token: TokenFingerprint,
        reason: &str,
        now: Timestamp,
    ) -> Result<Option<Suspension>, StoreError> {
        self.flush();
        let lifted = self.store.lift(token, now, Source::Manual, reason)?;
        if let Some(suspension) = &lifted {
            self.stats.manual_lifts += 1;
            self.after_lift(suspension, reason, now);
            self.next_expiry = earliest_end(&self.store.active_suspensions(now)?);
        }
        Ok(lifted)
    }

    /// Tells the enforcer about suspensions made or lifted outside it since the last call.
    pub fn sync_enforcer(&mut self, enforcer: &mut Enforcer) {
        for update in self.enforcer_updates.drain(..) {
            match update {
                EnforcerUpdate::Hold { token, until } => enforcer.hold(token, until),
                EnforcerUpdate::Lift(token) => {
                    enforcer.lift(token);
                }
            }
        }
    }

    /// A change of the server's state: alerted.
    pub fn on_health_change(&mut self, change: &HealthChange, now: Timestamp) {
        let alert = match change {
            HealthChange::Degraded { since, evidence } => Alert::Degraded {
                at: *since,
                summary: health_summary(evidence),
                evidence: serde_json::to_value(evidence).unwrap_or_default(),
            },
            HealthChange::Recovered {
                degraded_for,
                evidence,
            } => Alert::Recovered {
                at: now,
                summary: format!(
                    "degraded for {:.0} s; {}",
                    degraded_for.as_secs_f64(),
                    health_summary(evidence)
                ),
                evidence: serde_json::to_value(evidence).unwrap_or_default(),
            },
        };
        self.alerts.raise(alert, now);
    }

    /// The capture's loss counters summed (kernel `ring_full`, `truncated_bytes`,
    /// `flow_insert_failed`, `flows_evicted`; libpcap drops): an alert when the sum grew since
    /// the last look. `detail` names the counters, for the alert's evidence.
    pub fn observe_capture_loss(
        &mut self,
        lost_total: u64,
        detail: serde_json::Value,
        now: Timestamp,
    ) {
        if lost_total <= self.capture_lost {
            return;
        }
        let lost = lost_total - self.capture_lost;
        self.capture_lost = lost_total;
        self.stats.capture_loss_alerts += 1;
        self.alerts.raise(
            Alert::CaptureLoss {
                at: now,
                lost,
                evidence: json!({"lost_total": lost_total, "counters": detail}),
            },
            now,
        );
    }

    /// A blind spot began (see [`crate::stages::coverage`]): the admin team hears of it, once per
    /// reason within the alert cooldown.
    pub fn observe_blind_spot(
        &mut self,
        spot: &crate::stages::coverage::BlindSpot,
        now: Timestamp,
    ) {
        self.stats.capture_blind_alerts += 1;
        self.alerts.raise(
            Alert::CaptureBlind {
                at: now,
                reason: spot.reason.name().into(),
                advice: spot.advice.into(),
                evidence: serde_json::to_value(spot).unwrap_or_default(),
            },
            now,
        );
    }

    /// The live loop's tick, for whoever drives a [`Pipeline`]: the pipeline's changes of health
    /// are alerted, then [`Actions::tick`], then the enforcer hears of suspensions made or lifted
    /// outside it. `now` is on the pipeline's clock.
    pub fn step(&mut self, pipeline: &mut Pipeline, now: Timestamp) {
        let changes: Vec<HealthChange> = pipeline.take_health_changes().collect();
        for change in &changes {
            self.on_health_change(change, now);
        }
        self.tick(now);
        self.sync_enforcer(pipeline.enforcer_mut());
    }

    /// Time passes: writes what was batched, lifts expired suspensions (hooks, alerts), sends
    /// held alert summaries, answers admin requests, prunes now and then. Call every tick.
    pub fn tick(&mut self, now: Timestamp) {
        self.handle_requests(now);
        if !self.pending_audit.is_empty() || now >= self.next_sighting_flush {
            self.flush();
            self.next_sighting_flush = now.plus(SIGHTING_FLUSH);
        }
        if self.next_expiry.is_some_and(|t| t <= now) {
            self.expire(now);
        }
        self.alerts.tick(now);
        if let Some(publisher) = &mut self.publisher {
            let store = &self.store;
            publisher.tick(now, || store.active_suspensions(now));
        }
        if now >= self.next_prune {
            self.next_prune = now.plus(PRUNE_INTERVAL);
            match self.store.prune(now) {
                Ok(pruned) if pruned.audit_records + pruned.tokens > 0 => {
                    tracing::info!(
                        audit_records = pruned.audit_records,
                        tokens = pruned.tokens,
                        "pruned the store (store.audit_retention)"
                    );
                }
                Ok(_) => {}
                Err(err) => self.store_error("pruning", &err),
            }
        }
    }

    /// Writes what is batched. Call before stopping; [`Actions::tick`] calls it too.
    pub fn flush(&mut self) {
        if self.pending_audit.is_empty() && self.sightings.is_empty() {
            return;
        }
        let sightings: Vec<Sighting> = self.sightings.drain().map(|(_, s)| s).collect();
        match self.store.record(&self.pending_audit, &sightings) {
            Ok(seqs) => self.stats.audit_records += seqs.len() as u64,
            Err(err) => self.store_error("writing audit records", &err),
        }
        self.pending_audit.clear();
    }

    /// The first half of a reload: makes what a new configuration needs that can fail (the alert
    /// sinks and their secrets), changing nothing. State is kept across a reload (suspensions,
    /// the outbox, escalation); the store's path cannot change while running.
    pub fn prepare_reload(&self, config: ActionsConfig<'_>) -> Result<ActionsReload, ActionsError> {
        let outbox = Arc::new(StoreOutbox::new(self.store.clone()));
        let alerts = Alerts::new(config.alerts, outbox, self.host.clone())?;
        Ok(ActionsReload { alerts })
    }

    /// Applies what [`Actions::prepare_reload`] made for `config`; cannot fail (a delivery thread
    /// that will not start is logged, and alerts wait in the store for the next start).
    pub fn reconfigure(&mut self, prepared: ActionsReload, config: ActionsConfig<'_>) {
        if config.store.path != self.store_path {
            tracing::warn!(configured = %config.store.path.display(), in_use = %self.store_path.display(),
                "store.path changed: it takes effect at the next start");
        }
        let old = std::mem::replace(&mut self.alerts, prepared.alerts);
        self.alerts.use_directory(self.directory.clone());
        if let Some(worker) = self.delivery.take() {
            // Stopping waits for the attempt in flight; not on the capture path.
            std::thread::spawn(move || worker.stop());
        }
        drop(old);
        if let Err(err) = self.start_delivery(config) {
            tracing::error!(error = %err, "cannot start alert delivery after the reload; alerts stay queued in the store");
        }
        self.hooks
            .replace(Hooks::new(config.hooks, self.host.clone()));
    }

    /// Writes what is batched and stops the threads: alerts still queued stay in the store for
    /// the next start; hooks already queued run to their end or timeout.
    pub fn shutdown(mut self) {
        self.flush();
        if let Some(publisher) = self.publisher.take() {
            publisher.withdraw();
        }
        if let Some(worker) = self.delivery.take() {
            worker.stop();
        }
        self.hooks.stop();
    }

    fn record_suspension(
        &mut self,
        suspension: Suspension,
        evidence: serde_json::Value,
        raw: Option<RawToken>,
    ) {
        // Violations and the decision go first, so that the audit log reads in order.
        self.flush();
        if let Err(err) = self.store.suspend(&suspension) {
            self.store_error("recording a suspension", &err);
        }
        self.after_suspension(&suspension, evidence, raw);
    }

    /// `raw` is the suspended call's raw token for `pass_raw_token` hooks, when it was kept.
    fn after_suspension(
        &mut self,
        suspension: &Suspension,
        evidence: serde_json::Value,
        raw: Option<RawToken>,
    ) {
        self.stats.suspensions += 1;
        self.suspensions_changed();
        self.suspended
            .entry(suspension.token)
            .or_insert_with(|| SuspendedToken::new(suspension.until))
            .until = suspension.until;
        if suspension.source == Source::Manual {
            self.enforcer_updates.push(EnforcerUpdate::Hold {
                token: suspension.token,
                until: suspension.until,
            });
        }
        if let Some(until) = suspension.until {
            self.next_expiry = Some(self.next_expiry.map_or(until, |t| t.min(until)));
        }
        tracing::warn!(token_fp = %suspension.token, until = ?suspension.until.map(Timestamp::as_secs_f64),
            reason = %suspension.reason, "token suspended");
        let token = TokenRef {
            fingerprint: suspension.token,
            masked: suspension.masked.clone(),
        };
        self.alerts.raise(
            Alert::Suspended {
                at: suspension.since,
                token: token.clone(),
                until: suspension.until,
                reason: suspension.reason.clone(),
                evidence: evidence.clone(),
            },
            suspension.since,
        );
        self.run_hooks(
            HookEvent {
                action: HookAction::Suspend,
                at: suspension.since,
                token,
                until: suspension.until,
                reason: suspension.reason.clone(),
                evidence,
            },
            raw,
        );
    }

    fn after_lift(&mut self, suspension: &Suspension, reason: &str, now: Timestamp) {
        self.stats.lifts += 1;
        self.suspensions_changed();
        if let Some(held) = self.suspended.remove(&suspension.token)
            && held.violations > 0
        {
            self.audit(AuditEntry {
                ts: now,
                kind: AuditKind::Violation,
                token: Some(suspension.token),
                details: json!({
                    "while_suspended": held.violations,
                    "since": suspension.since.as_secs_f64(),
                }),
            });
        }
        self.enforcer_updates
            .push(EnforcerUpdate::Lift(suspension.token));
        tracing::info!(token_fp = %suspension.token, reason, "suspension lifted");
        let token = TokenRef {
            fingerprint: suspension.token,
            masked: suspension.masked.clone(),
        };
        let evidence = json!({
            "since": suspension.since.as_secs_f64(),
            "until": suspension.until.map(Timestamp::as_secs_f64),
            "level": suspension.level,
            "suspension_reason": suspension.reason,
        });
        self.alerts.raise(
            Alert::Lifted {
                at: now,
                token: token.clone(),
                reason: reason.to_owned(),
                evidence: evidence.clone(),
            },
            now,
        );
        // A lift comes long after the call (expiry, or an admin): no raw token is kept for it,
        // so `pass_raw_token` lift hooks get none.
        self.run_hooks(
            HookEvent {
                action: HookAction::Lift,
                at: now,
                token,
                until: None,
                reason: reason.to_owned(),
                evidence,
            },
            None,
        );
    }

    /// Every suspension made or ended passes here (from [`Actions::after_suspension`] and
    /// [`Actions::after_lift`]): the module's list follows at the end of the tick.
    fn suspensions_changed(&mut self) {
        if let Some(publisher) = &mut self.publisher {
            publisher.mark_changed();
        }
    }

    fn expire(&mut self, now: Timestamp) {
        let expired = match self.store.purge_expired(now) {
            Ok(expired) => expired,
            Err(err) => {
                self.store_error("lifting expired suspensions", &err);
                return;
            }
        };
        for suspension in &expired {
            let at = suspension.until.unwrap_or(now);
            self.after_lift(suspension, "expired", at);
        }
        self.next_expiry = match self.store.active_suspensions(now) {
            Ok(active) => earliest_end(&active),
            Err(err) => {
                self.store_error("reading suspensions", &err);
                None
            }
        };
    }

    /// Queues the hooks for `event`; `raw` (dropped if the queue is full) goes with it.
    fn run_hooks(&mut self, event: HookEvent, raw: Option<RawToken>) {
        self.stats.hook_events += 1;
        if let Err(event) = self.hooks.submit(event, raw) {
            self.stats.hook_events_dropped += 1;
            tracing::error!(token_fp = %event.token.fingerprint, action = event.action.as_str(),
                "hook queue full: hooks not run for this event");
            self.audit(AuditEntry {
                ts: event.at,
                kind: AuditKind::HookResult,
                token: Some(event.token.fingerprint),
                details: json!({
                    "action": event.action,
                    "result": "dropped",
                    "why": "the hook queue was full (hooks slower than suspensions)",
                }),
            });
        }
    }

    fn handle_requests(&mut self, now: Timestamp) {
        for (request, answer) in self.requests.take(REQUESTS_PER_TICK) {
            let reply = match request {
                Ok(request) => self.execute(&request, now),
                Err(problem) => Reply::error(&problem),
            };
            self.requests.answer(&answer, &reply);
        }
    }

    /// Carries out one admin request.
    pub fn execute(&mut self, request: &Request, now: Timestamp) -> Reply {
        self.stats.requests += 1;
        let result = match request {
            Request::Suspend {
                token_fp,
                for_s,
                reason,
            } => {
                let until = for_s.map(|secs| now.plus(Span::from_millis((secs * 1000.0) as u64)));
                self.suspend(*token_fp, until, reason, now)
                    .map(|s| Reply::done(Some(&s)))
            }
            Request::Lift { token_fp, reason } => {
                self.lift(*token_fp, reason, now)
                    .map(|lifted| match lifted {
                        Some(s) => Reply::done(Some(&s)),
                        None => Reply::error(&format!("token {token_fp} is not suspended")),
                    })
            }
        };
        result.unwrap_or_else(|err| Reply::error(&err.to_string()))
    }

    fn audit(&mut self, mut entry: AuditEntry) {
        let owner = entry.token.and_then(|token| self.directory.owner(&token));
        if let (Some(owner), Some(details)) = (owner, entry.details.as_object_mut()) {
            details.insert(
                "owner".into(),
                serde_json::to_value(&*owner).unwrap_or_default(),
            );
        }
        self.pending_audit.push(entry);
    }

    fn store_error(&mut self, what: &str, err: &StoreError) {
        self.stats.store_errors += 1;
        tracing::error!(error = %err, "{what}");
    }

    /// Where admin requests are picked up (`redcap-monitor suspend/lift` while running).
    pub fn request_dir(&self) -> &Path {
        self.requests.path()
    }
}

fn earliest_end(suspensions: &[Suspension]) -> Option<Timestamp> {
    suspensions.iter().filter_map(|s| s.until).min()
}

/// Why the daemon suspended a token, in one line for people (the evidence has the numbers).
fn suspension_reason(decision: &Decision) -> String {
    let rules: Vec<String> = decision
        .evidence
        .violations
        .iter()
        .map(|v| {
            format!(
                "{} ({} calls in {} s, limit {})",
                v.rule, v.count, v.window_s, v.limit
            )
        })
        .collect();
    let mut reason = format!("broke {}", rules.join(", "));
    if decision.evidence.server_degraded {
        reason.push_str(" while the server was degraded");
    }
    if let Some(share) = decision.evidence.load_share {
        reason.push_str(&format!(
            ", carrying {:.0}% of its server time",
            share * 100.0
        ));
    }
    reason
}

fn health_summary(a: &Assessment) -> String {
    let signs: Vec<&str> = a.bad_signs.iter().map(|s| s.name()).collect();
    let mut text = if signs.is_empty() {
        "no bad signs".to_string()
    } else {
        signs.join(", ")
    };
    if let Some(p95) = a.ttfb_p95_s {
        text.push_str(&format!(
            "; p95 server time {p95:.2} s over {} calls",
            a.calls
        ));
    }
    if let Some(share) = a.server_error_share {
        text.push_str(&format!("; {:.0}% 5xx", share * 100.0));
    }
    text
}
