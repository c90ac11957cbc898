//! The thread that runs suspension and lift hooks, off the capture path.
//!
//! Hooks block (a program up to its timeout, an HTTP POST up to its own), so they run here, in
//! the order they were decided, and each outcome is written to the audit log as a `hook_result`
//! record. The queue is bounded; a full queue refuses the event (the caller audits that).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use crate::hooks::{HookEvent, Hooks};
use crate::store::{AuditEntry, AuditKind, Store};

/// Hook events waiting at most.
const QUEUE: usize = 1024;

enum Job {
    Run(Box<HookEvent>),
    Replace(Box<Hooks>),
}

pub(super) struct HookWorker {
    jobs: Option<SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl HookWorker {
    pub(super) fn start(hooks: Hooks, store: Arc<Store>) -> std::io::Result<HookWorker> {
        let (jobs, queue) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("hooks".into())
            .spawn(move || run(hooks, &store, queue))?;
        Ok(HookWorker {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Queues the hooks for `event`; gives the event back when the queue is full.
    pub(super) fn submit(&self, event: HookEvent) -> Result<(), HookEvent> {
        let Some(jobs) = &self.jobs else {
            return Err(event);
        };
        match jobs.try_send(Job::Run(Box::new(event))) {
            Ok(()) => Ok(()),
            Err(
                TrySendError::Full(Job::Run(event)) | TrySendError::Disconnected(Job::Run(event)),
            ) => Err(*event),
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

fn run(mut hooks: Hooks, store: &Store, queue: Receiver<Job>) {
    for job in queue {
        match job {
            Job::Replace(new) => hooks = *new,
            Job::Run(event) => {
                // The raw token is gone by the time a decision is made (calls keep only the
                // fingerprint), so `pass_raw_token` hooks get none from the live path.
                for outcome in hooks.run(&event, None) {
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
