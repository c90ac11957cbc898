//! The audit log's writing side: violations, decisions, hook results and alert reports batched
//! with the tokens' sightings (first/last seen) and written to the [`Store`] in one transaction
//! per tick, each record naming its token's owner when the [`Directory`] knows it; and the
//! store's pruning, now and then. Suspensions are not batched: the action edge writes each one
//! as the enforcer emits it, after flushing what led to it.

use std::sync::Arc;

use crate::edges::directory::Directory;
use crate::edges::store::{AuditEntry, Pruned, Sighting, Store, StoreError};
use crate::shared::model::{Span, Timestamp};
use crate::shared::token::FingerprintMap;
use crate::stages::redcap::TokenIdentity;
use crate::stages::usage::{Day, Usage};

/// Audit records held at most between two flushes; past it they are written at once.
const MAX_PENDING_AUDIT: usize = 4096;
/// Tokens whose sightings are held at most between two flushes.
const MAX_PENDING_SIGHTINGS: usize = 4096;
/// How often sightings alone (no audit record to carry them) are written.
const SIGHTING_FLUSH: Span = Span::from_secs(10);
/// How often old audit records and tokens are pruned.
const PRUNE_INTERVAL: Span = Span::from_secs(3600);

pub(super) struct AuditLog {
    store: Arc<Store>,
    /// Audit records and sightings not yet written (flushed each tick).
    pending: Vec<AuditEntry>,
    sightings: FingerprintMap<Sighting>,
    next_sighting_flush: Timestamp,
    next_prune: Timestamp,
    /// Who tokens belong to: named in audit records when known.
    directory: Directory,
}

impl AuditLog {
    pub(super) fn new(store: Arc<Store>, now: Timestamp) -> AuditLog {
        AuditLog {
            store,
            pending: Vec::new(),
            sightings: FingerprintMap::default(),
            next_sighting_flush: now.plus(SIGHTING_FLUSH),
            next_prune: now,
            directory: Directory::off(),
        }
    }

    pub(super) fn use_directory(&mut self, directory: Directory) {
        self.directory = directory;
    }

    /// Batches one record, with the token's owner added to its details when known.
    pub(super) fn append(&mut self, mut entry: AuditEntry) {
        let owner = entry.token.and_then(|token| self.directory.owner(&token));
        if let (Some(owner), Some(details)) = (owner, entry.details.as_object_mut()) {
            details.insert(
                "owner".into(),
                serde_json::to_value(&*owner).unwrap_or_default(),
            );
        }
        self.pending.push(entry);
    }

    /// Notes a call of a token the server accepted at `ts`, and what it used.
    pub(super) fn saw(&mut self, identity: &TokenIdentity, ts: Timestamp, usage: &Usage) {
        let sighting = self
            .sightings
            .entry(identity.fingerprint)
            .or_insert_with(|| Sighting {
                token: identity.fingerprint,
                masked: identity.masked.clone(),
                ts,
                usage: Usage::default(),
            });
        sighting.ts = sighting.ts.max(ts);
        sighting.usage.add(usage);
    }

    /// Whether a call at `ts` falls on another UTC day than the sightings batched: a batch
    /// holds one day (its sightings become that day's rollups), so it is written first.
    pub(super) fn other_day(&self, ts: Timestamp) -> bool {
        self.sightings
            .values()
            .next()
            .is_some_and(|s| Day::of(s.ts) != Day::of(ts))
    }

    /// Whether the batch is at its bound and must be written now.
    pub(super) fn is_full(&self) -> bool {
        self.pending.len() >= MAX_PENDING_AUDIT || self.sightings.len() >= MAX_PENDING_SIGHTINGS
    }

    /// Whether a tick should write the batch: records wait, or sightings are due.
    pub(super) fn flush_due(&mut self, now: Timestamp) -> bool {
        if !self.pending.is_empty() || now >= self.next_sighting_flush {
            self.next_sighting_flush = now.plus(SIGHTING_FLUSH);
            return true;
        }
        false
    }

    /// Writes the batch; the number of audit records written. The batch is dropped on an error
    /// (logged by the caller): a store that cannot write must not grow memory.
    pub(super) fn flush(&mut self) -> Result<usize, StoreError> {
        if self.pending.is_empty() && self.sightings.is_empty() {
            return Ok(0);
        }
        let sightings: Vec<Sighting> = self.sightings.drain().map(|(_, s)| s).collect();
        let written = self.store.record(&self.pending, &sightings);
        self.pending.clear();
        written.map(|seqs| seqs.len())
    }

    /// Prunes old audit records and tokens once per interval; `None` when not due.
    pub(super) fn prune_if_due(&mut self, now: Timestamp) -> Option<Result<Pruned, StoreError>> {
        if now < self.next_prune {
            return None;
        }
        self.next_prune = now.plus(PRUNE_INTERVAL);
        Some(self.store.prune(now))
    }
}
