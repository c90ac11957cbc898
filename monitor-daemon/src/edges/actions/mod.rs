//! Acting on decisions: the I/O edge after policy and health.
//!
//! Decisions are made sans-IO by the policy's [`Enforcer`], which is also the one owner of the
//! suspensions in force. This edge feeds it an admin's suspend and lift requests (from the
//! request files or the admin API, both through [`Actions::execute`]) as inputs, and acts on
//! what it emits ([`Enforcer::poll_event`]); it holds no suspension of its own. Its parts:
//! - the durable [`Store`]: each suspension begun or ended is persisted as the enforcer emits
//!   it, and given back to a new enforcer at start ([`Actions::restore_into`]); the alert outbox;
//! - the audit log (`audit_log.rs`): violations, decisions, hook results and the tokens'
//!   sightings, batched per tick;
//! - notification (`notification.rs`): the alerts with their delivery thread and the hooks on a
//!   worker thread of their own, so that a slow hook never holds up capture;
//! - admin requests: the request files of `redcap-monitor suspend/lift` (`requests.rs`) and
//!   the admin API's, in one queue ([`Actions::submit`]), carried out in order;
//! - the suspensions in force published for REDCap's External Module ([`publish`]).
//!
//! The only raw token it handles is a call's, kept for suspend hooks with
//! `pass_raw_token` ([`crate::shared::token::HookToken`]): taken from the verdict, handed with the
//! suspension's hook event to the hook thread, dropped (zeroed) once the hooks ran; it is never
//! recorded, alerted or logged. Time is what the caller passes: the wall clock live,
//! capture time in a replay (so a replay's suspensions expire in capture time).

mod audit_log;
mod hook_worker;
mod notification;
pub(crate) mod publish;
mod requests;
mod store_outbox;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use crate::edges::alerts::AlertsConfig;
use crate::edges::alerts::{Alert, AlertKind, AlertsSetupError, TokenRef};
use crate::edges::directory::Directory;
use crate::edges::hooks::HooksConfig;
use crate::edges::hooks::{HookAction, HookEvent};
use crate::edges::store::StoreConfig;
use crate::edges::store::{
    AuditEntry, AuditKind, Source, Store, StoreError, StoreLimits, Suspension,
};
use crate::shared::model::{Span, Timestamp};
use crate::shared::token::{FingerprintMap, MaskedToken, RawToken, TokenFingerprint};
use crate::stages::health::{Assessment, HealthChange};
use crate::stages::pipeline::Pipeline;
use crate::stages::policy::Verdict;
use crate::stages::policy::enforce::{
    Action, Decision, EnforcementEvent, Enforcer, LiftedBy, SuspendedBy,
};
use crate::stages::usage::Usage;

pub(crate) use hook_worker::HookRuns;
pub(crate) use requests::{AdminRequest, Reply, ReplyTo, request_dir};
pub use requests::{Request, RequestError, submit_request};

use audit_log::AuditLog;
use notification::{Notification, NotificationError};

/// Request files taken into the admin queue per tick (the admin API's requests are carried out
/// as they come).
const REQUESTS_PER_TICK: usize = 16;

/// Counters of the action edge.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ActionStats {
    /// Audit records written.
    pub(crate) audit_records: u64,
    /// Suspensions recorded (decided by the daemon or by an admin).
    pub suspensions: u64,
    /// Of those, made by an admin.
    pub(crate) manual_suspensions: u64,
    /// Suspensions ended (expired or lifted by an admin).
    pub lifts: u64,
    /// Of those, lifted by an admin.
    pub(crate) manual_lifts: u64,
    /// Suspensions decided in a dry run: recorded, not enforced.
    pub(crate) dry_run_suspensions: u64,
    /// Hook runs handed to the hook thread.
    pub(crate) hook_events: u64,
    /// Hook runs dropped because the hook thread's queue was full (audited).
    pub(crate) hook_events_dropped: u64,
    /// Store writes that failed (logged; the daemon keeps running).
    pub(crate) store_errors: u64,
    /// Capture-loss alerts raised.
    pub(crate) capture_loss_alerts: u64,
    /// Blind-spot alerts raised.
    pub(crate) capture_blind_alerts: u64,
    /// Record-writer outages alerted (`records_write_failed`).
    pub(crate) records_write_failed_alerts: u64,
    /// Violations by suspended tokens: counted, audited as one record when the suspension ends.
    pub(crate) violations_while_suspended: u64,
    /// Calls whose token the server refused or never judged (no answer): not written to the
    /// token table, so that made-up tokens cannot grow it.
    pub(crate) tokens_not_kept: u64,
    /// Admin requests handled (admin API or request files).
    pub(crate) requests: u64,
}

/// A reload's new alert sinks, made by [`Actions::prepare_reload`] and put in place by
/// [`Actions::reconfigure`].
pub(crate) struct ActionsReload {
    alerts: crate::edges::alerts::Alerts,
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

/// What the edge after policy and health owns. See the module's documentation.
pub struct Actions {
    store: Arc<Store>,
    /// Alerts and hooks, each on a thread of its own.
    notify: Notification,
    store_path: PathBuf,
    /// Audit records and sightings, batched per tick.
    audit: AuditLog,
    /// Raw tokens of calls whose decision suspended their token (kept for `pass_raw_token`
    /// hooks), until the enforcer's event for that suspension is acted on (the same tick).
    raw_for_hooks: FingerprintMap<RawToken>,
    /// Loss counters' total at the last look (the capture's counters only grow).
    capture_lost: u64,
    requests: requests::RequestDir,
    /// Admin requests waiting, from the request files and the admin API alike: one queue,
    /// emptied each tick and whenever a request is handed in.
    admin: std::collections::VecDeque<AdminRequest>,
    /// The suspension list for REDCap's External Module, when `[redcap_module]` is on.
    publisher: Option<publish::Publisher>,
    stats: ActionStats,
    /// Suspensions begun and lifted here, for the other web hosts (`[shared]`); `None` when
    /// this host is alone.
    shared_changes: Option<Vec<SuspensionChange>>,
    /// Suspensions in force here that another web host began: their expiry is recorded but not
    /// alerted or hooked here (that host does it).
    from_peers: FingerprintMap<()>,
}

/// A suspension this host began, or lifted by hand, that the other web hosts must apply.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SuspensionChange {
    pub(crate) token: TokenFingerprint,
    pub(crate) since: Timestamp,
    pub(crate) until: Option<Timestamp>,
    pub(crate) reason: String,
    pub(crate) lifted: bool,
}

/// What the action edge is built from: the sections of the edges it drives.
#[derive(Clone, Copy, Debug)]
pub struct ActionsConfig<'a> {
    pub(crate) store: &'a StoreConfig,
    pub(crate) alerts: &'a AlertsConfig,
    pub(crate) hooks: &'a HooksConfig,
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
    pub(crate) fn with_store(
        store: Arc<Store>,
        config: ActionsConfig<'_>,
        host: String,
        now: Timestamp,
    ) -> Result<Actions, ActionsError> {
        let notify =
            Notification::new(store.clone(), config.alerts, config.hooks, host).map_err(|err| {
                match err {
                    NotificationError::Alerts(err) => ActionsError::Alerts(err),
                    NotificationError::Thread(err) => ActionsError::Thread(err),
                }
            })?;
        let store_path = store.path().to_owned();
        let requests = requests::RequestDir::create(&store_path)?;
        Ok(Actions {
            audit: AuditLog::new(store.clone(), now),
            store,
            notify,
            store_path,
            raw_for_hooks: FingerprintMap::default(),
            capture_lost: 0,
            requests,
            admin: std::collections::VecDeque::new(),
            publisher: None,
            stats: ActionStats::default(),
            shared_changes: None,
            from_peers: FingerprintMap::default(),
        })
    }

    /// Starts the thread that delivers queued alerts (also those left by an earlier run).
    pub(crate) fn start_delivery(&mut self, config: ActionsConfig<'_>) -> Result<(), ActionsError> {
        Ok(self.notify.start_delivery(config.alerts)?)
    }

    /// Publishes the suspensions in force for REDCap's External Module from now on: written at
    /// the next tick, again whenever they change, its mtime refreshed every heartbeat.
    pub(crate) fn publish_to(&mut self, publisher: publish::Publisher) {
        self.publisher = Some(publisher);
    }

    /// Names token owners from `directory` in alerts and audit records from now on.
    pub(crate) fn use_directory(&mut self, directory: Directory) {
        self.notify.use_directory(directory.clone());
        self.audit.use_directory(directory);
    }

    /// What the publisher did, when it runs.
    pub(crate) fn publish_stats(&self) -> Option<&publish::PublishStats> {
        self.publisher.as_ref().map(publish::Publisher::stats)
    }

    /// The store, for readers (audit, suspensions, first/last seen).
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn stats(&self) -> &ActionStats {
        &self.stats
    }

    pub(crate) fn alert_stats(&self) -> &crate::edges::alerts::AlertStats {
        self.notify.alert_stats()
    }

    pub(crate) fn delivery_stats(&self) -> Option<crate::edges::alerts::DeliveryStats> {
        self.notify.delivery_stats()
    }

    /// Hooks run so far, by event and result.
    pub(crate) fn hook_runs(&self) -> HookRuns {
        self.notify.hook_runs()
    }

    /// Puts what the store remembers into a fresh enforcer after a restart: the suspensions in
    /// force (so their tokens stay suspended) and the daemon's own suspensions within
    /// `enforcement.memory` (so the next one escalates); from then on the enforcer queues its
    /// events for this edge. Returns the suspensions in force.
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
            enforcer.restore(suspension.token, suspension.until);
        }
        enforcer.listen();
        Ok(active.len())
    }

    /// Records what the policy made of one call: the token's sighting, every violation and the
    /// decision, and acts on it (alert, suspension, hooks). Does not block on the network.
    ///
    /// Takes the call's raw token, if it was kept (see [`crate::stages::redcap::KeepRawToken`]): a
    /// suspension decided here hands it to the suspend hooks; otherwise it is dropped (and
    /// zeroed) here. The verdict holds none afterwards.
    pub(crate) fn on_verdict(&mut self, verdict: &mut Verdict) {
        let raw = verdict.call.raw_token.take();
        let verdict: &Verdict = verdict;
        let call = &verdict.call;
        if let Some(probing) = &verdict.client_violation {
            self.audit(AuditEntry::client_violation(probing));
            self.notify.raise(Alert::probing(probing), call.ts_start);
        }
        // Only tokens the server accepted are kept (90 days): a flood of made-up tokens, refused
        // or never answered, must not grow the token table.
        if call.token.is_ok() && !call.token_accepted() {
            self.stats.tokens_not_kept += 1;
        }
        if let (Ok(identity), true) = (&call.token, call.token_accepted()) {
            // A batch holds one UTC day (its sightings become that day's rollups).
            if self.audit.other_day(call.ts_start) {
                self.flush();
            }
            self.audit
                .saw(identity, call.ts_start, &Usage::of_verdict(verdict));
        }
        if verdict.while_suspended {
            // The enforcer counts them for the record written when the suspension ends.
            self.stats.violations_while_suspended += verdict.violations.len() as u64;
        } else {
            for violation in &verdict.violations {
                self.audit(AuditEntry::violation(violation));
            }
        }
        if let Some(decision) = &verdict.decision {
            let masked = call.token.as_ref().ok().map(|id| id.masked.clone());
            self.on_decision(verdict, decision, masked, raw);
        }
        if self.audit.is_full() {
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
            // The enforcer holds the suspension and tells of it (`apply`); its hooks get `raw`.
            Action::Suspend { .. } if !decision.dry_run => {
                if let Some(raw) = raw {
                    self.raw_for_hooks.insert(decision.token_fp, raw);
                }
            }
            action => {
                if matches!(action, Action::Suspend { .. }) {
                    self.stats.dry_run_suspensions += 1;
                }
                for violation in &verdict.violations {
                    self.notify.raise(
                        Alert::violation(violation, masked.clone(), evidence.clone()),
                        at,
                    );
                }
            }
        }
    }

    /// Acts on the suspensions the enforcer began or ended since the last call, now rather than
    /// at the next tick: a host publishing its calls and watermark between ticks (`[shared]`)
    /// must announce a suspension before the watermark that lets peers judge the token's later
    /// calls.
    pub(crate) fn apply_enforcement(&mut self, enforcer: &mut Enforcer) {
        if let Err(err) = self.apply_events(enforcer, None) {
            self.store_error("recording a suspension or its end", &err);
        }
    }

    /// Acts on what the enforcer emitted since the last call: each suspension begun or ended is
    /// persisted, alerted and handed to the hooks. Returns the last suspension made or lifted
    /// for `token`, for the reply to an admin's request.
    fn apply_events(
        &mut self,
        enforcer: &mut Enforcer,
        token: Option<TokenFingerprint>,
    ) -> Result<Option<Suspension>, StoreError> {
        let mut result = Ok(None);
        while let Some(event) = enforcer.poll_event() {
            let about = match &event {
                EnforcementEvent::Suspended { token, .. }
                | EnforcementEvent::Lifted { token, .. } => *token,
            };
            let applied = self.apply(event);
            if token == Some(about) {
                result = applied;
            } else if let Err(err) = applied {
                self.store_error("recording a suspension or its end", &err);
            }
        }
        result
    }

    fn apply(&mut self, event: EnforcementEvent) -> Result<Option<Suspension>, StoreError> {
        match event {
            EnforcementEvent::Suspended {
                token,
                since,
                until,
                by: SuspendedBy::Decision(decision),
            } => {
                let suspension = Suspension {
                    token,
                    masked: Some(MaskedToken(decision.token_masked.clone())),
                    since,
                    until,
                    reason: suspension_reason(&decision),
                    level: decision.evidence.suspensions_remembered,
                    source: Source::Auto,
                };
                let evidence = serde_json::to_value(&*decision).unwrap_or_default();
                let raw = self.raw_for_hooks.remove(&token);
                // Violations and the decision go first, so that the audit log reads in order.
                self.flush();
                if let Err(err) = self.store.suspend(&suspension) {
                    self.store_error("recording a suspension", &err);
                }
                self.share_change(&suspension, false);
                self.after_suspension(&suspension, evidence, raw);
                Ok(Some(suspension))
            }
            EnforcementEvent::Suspended {
                token,
                since,
                until,
                by: SuspendedBy::Admin { reason },
            } => {
                // An admin names the token by fingerprint, so `pass_raw_token` hooks get no raw
                // token here.
                let masked = self.store.token_seen(token)?.map(|seen| seen.masked);
                let suspension = Suspension {
                    token,
                    masked,
                    since,
                    until,
                    reason,
                    level: 0,
                    source: Source::Manual,
                };
                self.flush();
                self.store.suspend(&suspension)?;
                self.share_change(&suspension, false);
                self.stats.manual_suspensions += 1;
                self.after_suspension(&suspension, json!({"source": "manual"}), None);
                Ok(Some(suspension))
            }
            EnforcementEvent::Lifted {
                token,
                at,
                by,
                violations,
            } => {
                let (source, reason) = match &by {
                    LiftedBy::Expiry => (Source::Auto, "expired"),
                    LiftedBy::Admin { reason } => (Source::Manual, reason.as_str()),
                };
                self.flush();
                let from_peer = self.from_peers.remove(&token).is_some();
                let lifted = self.store.lift(token, at, source, reason)?;
                if from_peer && matches!(by, LiftedBy::Expiry) {
                    // Another host began it and tells its end; here it only stops holding.
                    return Ok(lifted);
                }
                match &lifted {
                    Some(suspension) => {
                        if source == Source::Manual {
                            self.stats.manual_lifts += 1;
                            // Expiry happens on every host by itself; a lift by hand must travel.
                            self.share_change(
                                &Suspension {
                                    reason: reason.to_owned(),
                                    ..suspension.clone()
                                },
                                true,
                            );
                        }
                        self.after_lift(suspension, reason, at, violations);
                    }
                    None => tracing::warn!(token_fp = %token,
                        "a suspension ended that the store did not hold (an earlier write failed)"),
                }
                Ok(lifted)
            }
        }
    }

    fn share_change(&mut self, suspension: &Suspension, lifted: bool) {
        if let Some(changes) = &mut self.shared_changes {
            changes.push(SuspensionChange {
                token: suspension.token,
                since: suspension.since,
                until: suspension.until,
                reason: suspension.reason.clone(),
                lifted,
            });
        }
    }

    /// From now on, suspensions begun here and lifts by hand are kept for
    /// [`take_suspension_changes`](Self::take_suspension_changes) (`[shared]`).
    pub(crate) fn share_suspensions(&mut self) {
        self.shared_changes.get_or_insert_with(Vec::new);
    }

    /// The suspensions begun and lifted here since the last call, for the other hosts.
    pub(crate) fn take_suspension_changes(&mut self) -> Vec<SuspensionChange> {
        self.shared_changes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// A suspension another web host began or lifted (`[shared]`): an input to the enforcer
    /// (it refuses the token's calls here too), the store (and so the External Module's list)
    /// and the audit log ("from host X"), without a second alert or hook: that host acted.
    pub(crate) fn suspension_from_peer(
        &mut self,
        enforcer: &mut Enforcer,
        change: &SuspensionChange,
        origin: &str,
        now: Timestamp,
    ) {
        let token = change.token;
        if change.lifted {
            self.from_peers.remove(&token);
            enforcer.forget_suspension(token);
            let reason = format!("lifted on host {origin}: {}", change.reason);
            if let Err(err) = self.store.lift(token, now, Source::Manual, &reason) {
                self.store_error("recording a lift from another host", &err);
            }
            self.suspensions_changed();
            return;
        }
        if change.until.is_some_and(|until| until <= now) {
            return;
        }
        enforcer.restore(token, change.until);
        enforcer.note_suspension(token, change.since);
        self.from_peers.insert(token, ());
        let masked = self
            .store
            .token_seen(token)
            .ok()
            .flatten()
            .map(|seen| seen.masked);
        let suspension = Suspension {
            token,
            masked,
            since: change.since,
            until: change.until,
            reason: format!("suspension from host {origin}: {}", change.reason),
            level: 0,
            source: Source::Auto,
        };
        if let Err(err) = self.store.suspend(&suspension) {
            self.store_error("recording a suspension from another host", &err);
        }
        self.suspensions_changed();
    }

    /// Something about the state shared with the other web hosts that the admin team must hear.
    pub(crate) fn observe_shared(
        &mut self,
        kind: AlertKind,
        summary: String,
        evidence: serde_json::Value,
        now: Timestamp,
    ) {
        self.notify.raise(
            Alert::Shared {
                at: now,
                kind,
                summary,
                evidence,
            },
            now,
        );
    }

    /// A change of the server's state: alerted.
    pub(crate) fn on_health_change(&mut self, change: &HealthChange, now: Timestamp) {
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
        self.notify.raise(alert, now);
    }

    /// The capture's loss counters summed (kernel `ring_full`, `truncated_bytes`,
    /// `flow_insert_failed`, `flows_evicted`; libpcap drops): an alert when the sum grew since
    /// the last look. `detail` names the counters, for the alert's evidence.
    pub(crate) fn observe_capture_loss(
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
        self.notify.raise(
            Alert::CaptureLoss {
                at: now,
                lost,
                evidence: json!({"lost_total": lost_total, "counters": detail}),
            },
            now,
        );
    }

    /// Records could not be written (an outage of the record writer began): the admin team
    /// hears of it once per outage.
    pub(crate) fn observe_records_outage(
        &mut self,
        outage: &crate::edges::output::Outage,
        now: Timestamp,
    ) {
        let crate::edges::output::Outage::Began {
            path,
            reason,
            error,
        } = outage
        else {
            return;
        };
        self.stats.records_write_failed_alerts += 1;
        self.notify.raise(
            Alert::RecordsWriteFailed {
                at: now,
                path: path.display().to_string(),
                reason: reason.as_str().into(),
                error: error.clone(),
                evidence: json!({"path": path, "reason": reason, "error": error}),
            },
            now,
        );
    }

    /// A blind spot began (see [`crate::stages::coverage`]): the admin team hears of it, once per
    /// reason within the alert cooldown.
    pub(crate) fn observe_blind_spot(
        &mut self,
        spot: &crate::stages::coverage::BlindSpot,
        now: Timestamp,
    ) {
        self.stats.capture_blind_alerts += 1;
        self.notify.raise(
            Alert::CaptureBlind {
                at: now,
                reason: spot.reason.name().into(),
                advice: spot.advice.into(),
                evidence: serde_json::to_value(spot).unwrap_or_default(),
            },
            now,
        );
    }

    /// The live loop's tick, for whoever drives a [`Pipeline`] (after its own tick, which ends
    /// the suspensions that ran out): the pipeline's changes of health are alerted, then
    /// [`Actions::tick`] on its enforcer. `now` is on the pipeline's clock.
    pub(crate) fn step(&mut self, pipeline: &mut Pipeline, now: Timestamp) {
        let changes: Vec<HealthChange> = pipeline.take_health_changes().collect();
        for change in &changes {
            self.on_health_change(change, now);
        }
        self.tick(pipeline.enforcer_mut(), now);
    }

    /// Time passes: answers admin requests, acts on the enforcer's events (suspensions begun or
    /// ended: store, hooks, alerts), writes what was batched, sends held alert summaries,
    /// prunes now and then. Call every tick.
    pub fn tick(&mut self, enforcer: &mut Enforcer, now: Timestamp) {
        self.handle_requests(enforcer, now);
        if let Err(err) = self.apply_events(enforcer, None) {
            self.store_error("recording a suspension or its end", &err);
        }
        // Every suspension decided before this tick has been acted on: a raw token still held
        // had no suspension event (an enforcer not listening); it goes (zeroed) now.
        self.raw_for_hooks.clear();
        if self.audit.flush_due(now) {
            self.flush();
        }
        self.notify.tick(now);
        if let Some(publisher) = &mut self.publisher {
            let store = &self.store;
            publisher.tick(now, || store.active_suspensions(now));
        }
        if let Some(pruned) = self.audit.prune_if_due(now) {
            match pruned {
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
    pub(crate) fn flush(&mut self) {
        match self.audit.flush() {
            Ok(written) => self.stats.audit_records += written as u64,
            Err(err) => self.store_error("writing audit records", &err),
        }
    }

    /// The first half of a reload: makes what a new configuration needs that can fail (the alert
    /// sinks and their secrets), changing nothing. State is kept across a reload (suspensions,
    /// the outbox, escalation); the store's path cannot change while running.
    pub(crate) fn prepare_reload(
        &self,
        config: ActionsConfig<'_>,
    ) -> Result<ActionsReload, ActionsError> {
        let alerts = self.notify.prepare(config.alerts)?;
        Ok(ActionsReload { alerts })
    }

    /// Applies what [`Actions::prepare_reload`] made for `config`; cannot fail (a delivery thread
    /// that will not start is logged, and alerts wait in the store for the next start).
    pub(crate) fn reconfigure(&mut self, prepared: ActionsReload, config: ActionsConfig<'_>) {
        if config.store.path != self.store_path {
            tracing::warn!(configured = %config.store.path.display(), in_use = %self.store_path.display(),
                "store.path changed: it takes effect at the next start");
        }
        self.notify
            .reconfigure(prepared.alerts, (config.alerts, config.hooks));
    }

    /// Writes what is batched and stops the threads: alerts still queued stay in the store for
    /// the next start; hooks already queued run to their end or timeout.
    pub fn shutdown(mut self) {
        self.flush();
        if let Some(publisher) = self.publisher.take() {
            publisher.withdraw();
        }
        self.notify.stop();
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
        tracing::warn!(token_fp = %suspension.token, until = ?suspension.until.map(Timestamp::as_secs_f64),
            reason = %suspension.reason, "token suspended");
        let token = TokenRef {
            fingerprint: suspension.token,
            masked: suspension.masked.clone(),
        };
        self.notify.raise(
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

    /// `violations`: the token's violations while suspended, audited as one record.
    fn after_lift(
        &mut self,
        suspension: &Suspension,
        reason: &str,
        now: Timestamp,
        violations: u64,
    ) {
        self.stats.lifts += 1;
        self.suspensions_changed();
        if violations > 0 {
            self.audit(AuditEntry {
                ts: now,
                kind: AuditKind::Violation,
                token: Some(suspension.token),
                details: json!({
                    "while_suspended": violations,
                    "since": suspension.since.as_secs_f64(),
                }),
            });
        }
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
        self.notify.raise(
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

    /// Queues the hooks for `event`; `raw` (dropped if the queue is full) goes with it.
    fn run_hooks(&mut self, event: HookEvent, raw: Option<RawToken>) {
        self.stats.hook_events += 1;
        if let Err(event) = self.notify.run_hooks(event, raw) {
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

    /// Hands in an admin request (the admin API's); it is carried out at the next
    /// [`Actions::handle_admin`] or tick, after those waiting.
    pub(crate) fn submit(&mut self, request: AdminRequest) {
        self.admin.push_back(request);
    }

    /// Takes the waiting request files into the admin queue, then carries out every request in
    /// it, in order, each answered where it came from.
    fn handle_requests(&mut self, enforcer: &mut Enforcer, now: Timestamp) {
        let files = self.requests.take(REQUESTS_PER_TICK);
        self.admin.extend(files);
        self.handle_admin(enforcer, now);
    }

    /// Carries out the queued admin requests, in order.
    pub(crate) fn handle_admin(&mut self, enforcer: &mut Enforcer, now: Timestamp) {
        while let Some(AdminRequest { request, reply }) = self.admin.pop_front() {
            let answer = match request {
                Ok(request) => self.execute(&request, enforcer, now),
                Err(problem) => Reply::error(&problem),
            };
            match reply {
                ReplyTo::File(file) => requests::RequestDir::answer(&file, &answer),
                ReplyTo::Callback(send) => send(answer),
            }
        }
    }

    /// Carries out one admin request: an input to the enforcer, which holds the suspensions;
    /// what it emits is then persisted, alerted and handed to the hooks.
    pub fn execute(&mut self, request: &Request, enforcer: &mut Enforcer, now: Timestamp) -> Reply {
        self.stats.requests += 1;
        let token = match request {
            Request::Suspend {
                token_fp,
                for_s,
                reason,
            } => {
                let until = for_s.map(|secs| now.plus(Span::from_millis((secs * 1000.0) as u64)));
                enforcer.suspend(*token_fp, now, until, reason.clone());
                *token_fp
            }
            Request::Lift { token_fp, reason } => {
                if !enforcer.lift(*token_fp, now, reason.clone()) {
                    return Reply::error(&format!("token {token_fp} is not suspended"));
                }
                *token_fp
            }
            Request::HookResults { entries } => {
                if entries.iter().any(|e| e.kind != AuditKind::HookResult) {
                    return Reply::error("only hook_result audit records may be handed in");
                }
                entries.iter().for_each(|e| self.audit(e.clone()));
                self.flush();
                return Reply::done(None);
            }
        };
        match self.apply_events(enforcer, Some(token)) {
            Ok(Some(suspension)) => Reply::done(Some(&suspension)),
            Ok(None) => Reply::done(None),
            Err(err) => Reply::error(&err.to_string()),
        }
    }

    fn audit(&mut self, entry: AuditEntry) {
        self.audit.append(entry);
    }

    fn store_error(&mut self, what: &str, err: &StoreError) {
        self.stats.store_errors += 1;
        tracing::error!(error = %err, "{what}");
    }

    /// Where admin requests are picked up (`redcap-monitor suspend/lift` while running).
    pub(crate) fn request_dir(&self) -> &Path {
        self.requests.path()
    }
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
