//! The alert outbox in the durable store, so that undelivered alerts survive a crash.
//!
//! Adapts [`Store`]'s outbox table to [`alerts::Outbox`](crate::edges::alerts::Outbox). The store keeps
//! bodies as JSON values (readable with any redb tool); the exact text the delivery thread signs
//! and sends is the value written back out, so a body is the same bytes on every attempt.

use std::sync::Arc;

use crate::edges::alerts::{Outbox, OutboxError, OutboxItem};
use crate::edges::store::{self, Store, StoreError};
use crate::shared::model::Timestamp;

pub(crate) struct StoreOutbox {
    store: Arc<Store>,
}

impl StoreOutbox {
    pub(crate) fn new(store: Arc<Store>) -> StoreOutbox {
        StoreOutbox { store }
    }
}

fn failed(err: StoreError) -> OutboxError {
    OutboxError::Store(err.to_string())
}

impl Outbox for StoreOutbox {
    fn enqueue(&self, item: OutboxItem) -> Result<(), OutboxError> {
        let payload =
            serde_json::from_str(&item.payload).unwrap_or(serde_json::Value::String(item.payload));
        let stored = store::OutboxItem {
            id: item.id,
            sink: item.sink,
            payload,
            created: item.created,
            attempts: item.attempts,
            next_attempt: item.next_attempt,
        };
        // A full outbox drops its oldest alert (audited by the store): the newest news wins.
        self.store.enqueue_alert(&stored).map(drop).map_err(failed)
    }

    fn due(&self, now: Timestamp, limit: usize) -> Result<Vec<OutboxItem>, OutboxError> {
        let items = self.store.due_alerts(now, limit).map_err(failed)?;
        Ok(items
            .into_iter()
            .map(|item| OutboxItem {
                payload: match item.payload {
                    serde_json::Value::String(text) => text,
                    value => value.to_string(),
                },
                id: item.id,
                sink: item.sink,
                created: item.created,
                attempts: item.attempts,
                next_attempt: item.next_attempt,
            })
            .collect())
    }

    fn delivered(&self, id: &str) -> Result<(), OutboxError> {
        self.store.delivered(id).map(drop).map_err(failed)
    }

    fn reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt: Timestamp,
    ) -> Result<(), OutboxError> {
        self.store
            .reschedule(id, attempts, next_attempt)
            .map(drop)
            .map_err(failed)
    }
}
