//! The outbox: alert bodies waiting for delivery, one item per alert and sink.
//!
//! [`Outbox`] is what the raising side and the delivery thread share; the durable store
//! implements it, and the tests use a bounded in-memory form (`MemoryOutbox`). An item's `id` is its `webhook-id`: it never changes between attempts.

#[cfg(test)]
use std::collections::BTreeMap;
#[cfg(test)]
use std::sync::Mutex;

use crate::shared::model::Timestamp;

/// One body for one sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutboxItem {
    /// The `webhook-id`: unique per item, the same on every attempt.
    pub id: String,
    /// The sink's configured name.
    pub sink: String,
    /// The exact JSON body to send (generic sinks sign these bytes).
    pub payload: String,
    pub created: Timestamp,
    /// Attempts made so far.
    pub attempts: u32,
    /// Not to be tried before this (wall-clock) time.
    pub next_attempt: Timestamp,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum OutboxError {
    #[error(
        "the alert outbox holds {limit} undelivered alerts, its limit; check that the sinks \
         are reachable"
    )]
    // Only the tests' in-memory outbox refuses: the durable store drops its oldest alert
    // instead (audited), so the newest news wins.
    #[cfg_attr(not(test), allow(dead_code))]
    Full { limit: usize },
    #[error("the alert outbox failed: {0}")]
    Store(String),
}

/// Storage for undelivered alerts. Implementations are shared between threads, bounded (they
/// refuse with [`OutboxError::Full`]) and, for the durable store, keep items across restarts.
pub(crate) trait Outbox: Send + Sync {
    fn enqueue(&self, item: OutboxItem) -> Result<(), OutboxError>;
    /// Up to `limit` items whose `next_attempt` is at or before `now`, oldest due first.
    fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<OutboxItem>, OutboxError>;
    /// The item reached its sink: forget it.
    fn delivered(&self, id: &str) -> Result<(), OutboxError>;
    /// The item failed and will be tried again.
    fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt: Timestamp,
    ) -> Result<(), OutboxError>;
    /// The item will never be delivered (rejected or out of attempts). The delivery worker
    /// reports why; a store that keeps an audit log may record it here too.
    fn abandon(&self, id: &str) -> Result<(), OutboxError> {
        self.delivered(id)
    }
}

/// A bounded outbox in memory: lost on restart.
#[cfg(test)]
pub(crate) struct MemoryOutbox {
    limit: usize,
    items: Mutex<BTreeMap<String, OutboxItem>>,
}

#[cfg(test)]
impl MemoryOutbox {
    pub(crate) fn new(limit: usize) -> MemoryOutbox {
        MemoryOutbox {
            limit,
            items: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, OutboxItem>> {
        // A panic elsewhere while holding the lock leaves the map consistent (single inserts
        // and removes), so the data is still good.
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
impl Outbox for MemoryOutbox {
    fn enqueue(&self, item: OutboxItem) -> Result<(), OutboxError> {
        let mut items = self.lock();
        if items.len() >= self.limit {
            return Err(OutboxError::Full { limit: self.limit });
        }
        items.insert(item.id.clone(), item);
        Ok(())
    }

    fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<OutboxItem>, OutboxError> {
        let items = self.lock();
        let mut due: Vec<OutboxItem> = items
            .values()
            .filter(|i| i.next_attempt <= now)
            .cloned()
            .collect();
        due.sort_by_key(|i| (i.next_attempt, i.created));
        due.truncate(limit);
        Ok(due)
    }

    fn delivered(&self, id: &str) -> Result<(), OutboxError> {
        self.lock().remove(id);
        Ok(())
    }

    fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt: Timestamp,
    ) -> Result<(), OutboxError> {
        if let Some(item) = self.lock().get_mut(id) {
            item.attempts = attempts;
            item.next_attempt = next_attempt;
        }
        Ok(())
    }
}
