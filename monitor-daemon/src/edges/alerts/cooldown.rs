//! The cooldown: repeated alerts for one token and rule are counted instead of sent.
//!
//! The first alert for a key goes out; later ones within the cooldown are held (only the latest
//! is kept) and summarised by the next alert sent for that key, or by [`Coalescer::expire`] once
//! the cooldown runs out. Sans-IO: time is the `now` the caller passes.

use std::collections::HashMap;

use super::{Alert, Outgoing, Repeats};
use crate::shared::model::{Span, Timestamp};

/// Keys tracked at most. Past it, an alert with a new key is coalesced under one key per alert
/// kind (`overflow/<kind>`): the first goes out, the rest are counted in its summary, so that a
/// flood of distinct tokens neither grows memory nor pushes real alerts out of the outbox.
const MAX_KEYS: usize = 100_000;

struct Entry {
    last_sent: Timestamp,
    held: u32,
    latest: Option<Alert>,
}

pub(crate) struct Coalescer {
    cooldown: Span,
    entries: HashMap<String, Entry>,
    max_keys: usize,
    /// Alerts coalesced under an overflow key because `max_keys` keys were tracked.
    overflowed: u64,
}

impl Coalescer {
    pub(crate) fn new(cooldown: Span) -> Coalescer {
        Coalescer::with_max_keys(cooldown, MAX_KEYS)
    }

    pub(crate) fn with_max_keys(cooldown: Span, max_keys: usize) -> Coalescer {
        Coalescer {
            cooldown,
            entries: HashMap::new(),
            max_keys,
            overflowed: 0,
        }
    }

    /// Alerts coalesced under an overflow key since start.
    pub(crate) fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// The alert to send now, or `None` when the cooldown holds it back.
    pub(crate) fn admit(&mut self, alert: Alert, now: Timestamp) -> Option<Outgoing> {
        let mut key = match alert.coalescing_key() {
            Some(key) if self.cooldown.0 > 0 => key,
            _ => {
                return Some(Outgoing {
                    alert,
                    repeats: None,
                });
            }
        };
        if self.entries.len() >= self.max_keys && !self.entries.contains_key(&key) {
            // One more key per alert kind at most: memory stays bounded.
            key = format!("overflow/{}", alert.kind().as_str());
            self.overflowed += 1;
        }
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
        self.entries.insert(
            key,
            Entry {
                last_sent: now,
                held: 0,
                latest: None,
            },
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edges::alerts::TokenRef;
    use crate::shared::token::TokenFingerprint;

    fn violation_of(token: u64, at_secs: u64) -> Alert {
        Alert::Violation {
            at: Timestamp(at_secs * 1_000_000_000),
            token: TokenRef {
                fingerprint: TokenFingerprint(token.to_be_bytes()),
                masked: None,
            },
            rule: "api_calls".into(),
            limit: 3,
            window: Span::from_secs(60),
            count: 4,
            evidence: serde_json::Value::Null,
        }
    }

    #[test]
    fn past_the_key_limit_new_tokens_share_one_overflow_key_per_kind() {
        let mut coalescer = Coalescer::with_max_keys(Span::from_secs(600), 3);
        let now = Timestamp(1_000 * 1_000_000_000);
        let sent = (0..1_000u64)
            .filter(|&t| coalescer.admit(violation_of(t, 1_000), now).is_some())
            .count();
        // Three tokens with their own key, one overflow alert; the other 996 are held.
        assert_eq!(sent, 4);
        assert_eq!(coalescer.overflowed(), 997);
        assert!(coalescer.entries.len() <= 4);
        // A token with its own key still gets its repeats coalesced as before.
        assert!(coalescer.admit(violation_of(0, 1_001), now).is_none());
        let later = now.plus(Span::from_secs(601));
        let summaries = coalescer.expire(later);
        let overflow = summaries
            .iter()
            .find(|o| {
                o.alert
                    .token()
                    .is_some_and(|t| t.fingerprint.0 == 999u64.to_be_bytes())
            })
            .expect("the overflow key's summary");
        assert_eq!(overflow.repeats.map(|r| r.count), Some(995));
    }
}
