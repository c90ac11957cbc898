//! Telling people and programs: the [`Alerts`] with their delivery thread (alerts queue in the
//! store's outbox, so none is lost to a crash) and the [`Hooks`] on a worker thread of their own
//! (a slow hook never holds up capture). What to tell is the action edge's choice; this owns
//! the threads, their reload and their stop.

use std::sync::Arc;

use crate::edges::alerts::{
    Alert, AlertStats, Alerts, AlertsConfig, AlertsSetupError, DeliveryStats, DeliveryWorker,
};
use crate::edges::directory::Directory;
use crate::edges::hooks::{HookEvent, Hooks, HooksConfig};
use crate::edges::store::{AuditEntry, AuditKind, Store};
use crate::shared::model::Timestamp;
use crate::shared::token::RawToken;

use super::hook_worker::{HookRuns, HookWorker};
use super::store_outbox::StoreOutbox;

pub(super) struct Notification {
    store: Arc<Store>,
    alerts: Alerts,
    delivery: Option<DeliveryWorker>,
    hooks: HookWorker,
    /// This machine's name, in alerts and hook events.
    host: String,
    directory: Directory,
}

impl Notification {
    /// The alert sinks of `alerts` and the hook thread; delivery starts with
    /// [`Notification::start_delivery`].
    pub(super) fn new(
        store: Arc<Store>,
        alerts: &AlertsConfig,
        hooks: &HooksConfig,
        host: String,
    ) -> Result<Notification, NotificationError> {
        let outbox = Arc::new(StoreOutbox::new(store.clone()));
        let sinks = Alerts::new(alerts, outbox, host.clone())?;
        let hooks = HookWorker::start(Hooks::new(hooks, host.clone()), store.clone())
            .map_err(NotificationError::Thread)?;
        Ok(Notification {
            store,
            alerts: sinks,
            delivery: None,
            hooks,
            host,
            directory: Directory::off(),
        })
    }

    /// Starts the thread that delivers queued alerts (also those left by an earlier run); each
    /// delivery's report is an audit record.
    pub(super) fn start_delivery(&mut self, config: &AlertsConfig) -> Result<(), AlertsSetupError> {
        let store = self.store.clone();
        let worker = self.alerts.start_delivery(
            config,
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

    pub(super) fn use_directory(&mut self, directory: Directory) {
        self.alerts.use_directory(directory.clone());
        self.directory = directory;
    }

    pub(super) fn raise(&mut self, alert: Alert, now: Timestamp) {
        self.alerts.raise(alert, now);
    }

    /// Sends held alert summaries whose cooldown ended.
    pub(super) fn tick(&mut self, now: Timestamp) {
        self.alerts.tick(now);
    }

    /// Queues the hooks for `event` with `raw`; gives the event back when the queue is full.
    pub(super) fn run_hooks(
        &mut self,
        event: HookEvent,
        raw: Option<RawToken>,
    ) -> Result<(), HookEvent> {
        self.hooks.submit(event, raw)
    }

    /// New alert sinks for a reload, changing nothing yet.
    pub(super) fn prepare(&self, config: &AlertsConfig) -> Result<Alerts, AlertsSetupError> {
        let outbox = Arc::new(StoreOutbox::new(self.store.clone()));
        Alerts::new(config, outbox, self.host.clone())
    }

    /// Puts `alerts` (from [`Notification::prepare`]) and the new hooks in place; cannot fail
    /// (a delivery thread that will not start is logged, and alerts wait in the store).
    pub(super) fn reconfigure(&mut self, alerts: Alerts, config: (&AlertsConfig, &HooksConfig)) {
        let old = std::mem::replace(&mut self.alerts, alerts);
        self.alerts.use_directory(self.directory.clone());
        if let Some(worker) = self.delivery.take() {
            // Stopping waits for the attempt in flight; not on the capture path.
            std::thread::spawn(move || worker.stop());
        }
        drop(old);
        if let Err(err) = self.start_delivery(config.0) {
            tracing::error!(error = %err, "cannot start alert delivery after the reload; alerts stay queued in the store");
        }
        self.hooks.replace(Hooks::new(config.1, self.host.clone()));
    }

    /// Stops the threads: alerts still queued stay in the store for the next start; hooks
    /// already queued run to their end or timeout.
    pub(super) fn stop(mut self) {
        if let Some(worker) = self.delivery.take() {
            worker.stop();
        }
        self.hooks.stop();
    }

    pub(super) fn alert_stats(&self) -> &AlertStats {
        self.alerts.stats()
    }

    pub(super) fn delivery_stats(&self) -> Option<DeliveryStats> {
        self.delivery.as_ref().map(DeliveryWorker::stats)
    }

    pub(super) fn hook_runs(&self) -> HookRuns {
        self.hooks.runs()
    }
}

/// Why the alert sinks or the hook thread cannot start.
#[derive(Debug, thiserror::Error)]
pub(super) enum NotificationError {
    #[error(transparent)]
    Alerts(#[from] AlertsSetupError),
    #[error("cannot start the hook thread: {0}")]
    Thread(std::io::Error),
}
