//! The thread that runs suspension and lift hooks, off the capture path.
//!
//! Hooks block (a program up to its timeout, an HTTP POST up to its own), so they run here, in
//! the order they were decided, and each outcome is written to the audit log as a `hook_result`
//! record. The queue is bounded; a full queue refuses the event (the caller audits that).
//! A suspension's job may carry the call's raw token for `pass_raw_token` hooks: it goes to
//! [`Hooks::run`] (stdin only) and is dropped, zeroed, as soon as the job's hooks ran.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use crate::edges::hooks::{HookAction, HookEvent, HookOutcome, HookResult, Hooks};
use crate::edges::store::{AuditEntry, AuditKind, Store};
use crate::shared::token::RawToken;

/// One event's hooks to run, with the raw token when it was kept for them.
struct HookJob {
    event: HookEvent,
    raw: Option<RawToken>,
}

/// Hook events waiting at most.
const QUEUE: usize = 1024;

enum Job {
    Run(Box<HookJob>),
    Replace(Box<Hooks>),
}

pub(super) struct HookWorker {
    jobs: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
    runs: Arc<RunCounts>,
}

/// Hook runs by event and result, counted on the hook thread.
#[derive(Default)]
struct RunCounts {
    /// [suspend ok, suspend failed, lift ok, lift failed]
    counts: [AtomicU64; 4],
}

/// How many hooks ran, by event and result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct HookRuns {
    pub(crate) suspend_ok: u64,
    pub(crate) suspend_failed: u64,
    pub(crate) lift_ok: u64,
    pub(crate) lift_failed: u64,
}

impl RunCounts {
    fn count(&self, outcome: &HookOutcome) {
        let ok = matches!(
            outcome.result,
            HookResult::Exited { success: true, .. } | HookResult::Http { success: true, .. }
        );
        let slot = match outcome.action {
            HookAction::Suspend => 0,
            HookAction::Lift => 2,
            // Run by `report lifecycle --revoke`, never on this worker.
            HookAction::TokenStale => return,
        } + usize::from(!ok);
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> HookRuns {
        let [suspend_ok, suspend_failed, lift_ok, lift_failed] =
            self.counts.each_ref().map(|c| c.load(Ordering::Relaxed));
        HookRuns {
            suspend_ok,
            suspend_failed,
            lift_ok,
            lift_failed,
        }
    }
}

impl HookWorker {
    pub(super) fn start(hooks: Hooks, store: Arc<Store>) -> std::io::Result<HookWorker> {
        let (jobs, queue) = sync_channel(QUEUE);
        let runs = Arc::new(RunCounts::default());
        let counted = runs.clone();
        let thread = std::thread::Builder::new()
            .name("hooks".into())
            .spawn(move || run(hooks, &store, &counted, queue))?;
        Ok(HookWorker {
            jobs: Some(jobs),
            thread: Some(thread),
            runs,
        })
    }

    pub(super) fn runs(&self) -> HookRuns {
        self.runs.snapshot()
    }

    /// Queues the hooks for `event`, with `raw` for `pass_raw_token` hooks; gives the event back
    /// when the queue is full (`raw` is then dropped).
    pub(super) fn submit(&self, event: HookEvent, raw: Option<RawToken>) -> Result<(), HookEvent> {
        let Some(jobs) = &self.jobs else {
            return Err(event);
        };
        match jobs.try_send(Job::Run(Box::new(HookJob { event, raw }))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Job::Run(job)) | TrySendError::Disconnected(Job::Run(job))) => {
                Err(job.event)
            }
            Err(_) => unreachable!("only Run jobs are sent here"),
        }
    }

    /// Hooks configured anew: events queued before this run with the old ones.
    pub(super) fn replace(&self, hooks: Hooks) {
        if let Some(jobs) = &self.jobs {
            // Blocks only while the queue is full; a reload is not on the capture path.
            let _ = jobs.send(Job::Replace(Box::new(hooks)));
        }
    }

    /// Lets the queued hooks run and waits for them.
    pub(super) fn stop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HookWorker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(mut hooks: Hooks, store: &Store, runs: &RunCounts, queue: Receiver<Job>) {
    for job in queue {
        match job {
            Job::Replace(new) => hooks = *new,
            Job::Run(job) => {
                let HookJob { event, raw } = *job;
                // `raw` is only there for a suspension decided on a call that kept its token;
                // `Hooks::run` shows it to `pass_raw_token` hooks only, on their stdin.
                let outcomes = hooks.run(&event, raw.as_ref());
                drop(raw);
                for outcome in outcomes {
                    runs.count(&outcome);
                    let mut details = serde_json::to_value(&outcome).unwrap_or_default();
                    details["event_at"] = event.at.as_secs_f64().into();
                    let entry = AuditEntry {
                        ts: event.at,
                        kind: AuditKind::HookResult,
                        token: Some(event.token.fingerprint),
                        details,
                    };
                    if let Err(err) = store.append_audit(&entry) {
                        tracing::error!(error = %err, hook = %outcome.hook, "cannot audit a hook result");
                    }
                }
            }
        }
    }
}
