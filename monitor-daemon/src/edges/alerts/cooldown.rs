//! The cooldown: repeated alerts for one token and rule are counted instead of sent.
//!
//! The first alert for a key goes out; later ones within the cooldown are held (only the latest
//! is kept) and summarised by the next alert sent for that key, or by [`Coalescer::expire`] once
//! the cooldown runs out. Sans-IO: time is the `now` the caller passes.

use std::collections::HashMap;

use super::{Alert, Outgoing, Repeats};
use crate::shared::model::{Span, Timestamp};

/// Keys tracked at most. Past it alerts go out uncoalesced rather than grow memory: a flood of
/// distinct tokens is itself worth hearing about.
const MAX_KEYS: usize = 100_000;

struct Entry {
    last_sent: Timestamp,
    held: u32,
    latest: Option<Alert>,
}

pub(crate) struct Coalescer {
    cooldown: Span,
    entries: HashMap<String, Entry>,
}

impl Coalescer {
    pub(crate) fn new(cooldown: Span) -> Coalescer {
        Coalescer {
            cooldown,
            entries: HashMap::new(),
        }
    }

    /// The alert to send now, or `None` when the cooldown holds it back.
    pub(crate) fn admit(&mut self, alert: Alert, now: Timestamp) -> Option<Outgoing> {
        let key = match alert.coalescing_key() {
            Some(key) if self.cooldown.0 > 0 => key,
            _ => {
                return Some(Outgoing {
                    alert,
                    repeats: None,
                });
            }
        };
        if let Some(entry) = self.entries.get_mut(&key) {
            if now < entry.last_sent.plus(self.cooldown) {
                entry.held = entry.held.saturating_add(1);
                entry.latest = Some(alert);
                return None;
            }
            let repeats = (entry.held > 0).then_some(Repeats {
                count: entry.held,
                since: entry.last_sent,
            });
            *entry = Entry {
                last_sent: now,
                held: 0,
                latest: None,
            };
            return Some(Outgoing { alert, repeats });
        }
        if self.entries.len() < MAX_KEYS {
            self.entries.insert(
                key,
                Entry {
                    last_sent: now,
                    held: 0,
                    latest: None,
                },
            );
        }
        Some(Outgoing {
            alert,
            repeats: None,
        })
    }

    /// Summaries for keys whose cooldown has run out with alerts still held: the latest held
    /// alert, standing for the others. Keys with nothing held are forgotten.
    pub(crate) fn expire(&mut self, now: Timestamp) -> Vec<Outgoing> {
        let cooldown = self.cooldown;
        let mut out = Vec::new();
        self.entries.retain(|_, entry| {
            if now < entry.last_sent.plus(cooldown) {
                return true;
            }
            match entry.latest.take() {
                Some(alert) => {
                    let others = entry.held.saturating_sub(1);
                    out.push(Outgoing {
                        alert,
                        repeats: (others > 0).then_some(Repeats {
                            count: others,
                            since: entry.last_sent,
                        }),
                    });
                    *entry = Entry {
                        last_sent: now,
                        held: 0,
                        latest: None,
                    };
                    true
                }
                None => false,
            }
        });
        out.sort_by_key(|o| o.alert.at());
        out
    }
}
