//! An exact sliding-window count of events per key (a token, for a rule).
//!
//! Keeps the timestamps inside the window, sorted, so that a count is exact rather than a bucket
//! approximation; late arrivals are inserted in order. Memory is proportional to the events inside
//! one window, up to [`MAX_HELD`]: a token calling faster than that saturates its count there
//! (far above any limit) instead of growing without bound.

use std::collections::VecDeque;

use crate::shared::model::{Span, Timestamp};

/// Most events one window holds (512 KiB of timestamps); rule limits must stay below it.
pub(crate) const MAX_HELD: u32 = 1 << 16;

#[derive(Clone, Debug, Default)]
pub(crate) struct SlidingCount {
    times: VecDeque<Timestamp>,
    /// Latest timestamp recorded: entries at or before `latest - window` can never count again.
    latest: Timestamp,
}

impl SlidingCount {
    /// Records an event at `ts` and returns how many recorded events fall in `(ts - window, ts]`.
    pub(crate) fn record(&mut self, ts: Timestamp, window: Span) -> u32 {
        if ts > self.latest {
            self.latest = ts;
        }
        if let Some(horizon) = self.latest.0.checked_sub(window.0) {
            while self.times.front().is_some_and(|t| t.0 <= horizon) {
                self.times.pop_front();
            }
        }
        if self.times.len() >= MAX_HELD as usize {
            self.times.pop_front();
        }
        // Usually `ts` is the newest and this is a push to the back.
        let at = if self.times.back().is_none_or(|&last| last <= ts) {
            self.times.push_back(ts);
            self.times.len() - 1
        } else {
            let at = self.times.partition_point(|&t| t <= ts);
            self.times.insert(at, ts);
            at
        };
        // Everything still held is after `latest - window`, so (as `ts <= latest`) inside
        // `ts`'s window: the count is what is held up to `ts`, no search needed.
        (at + 1) as u32
    }

    /// Events currently held (for memory accounting).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.times.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.times.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_nanos(secs * 1_000_000_000)
    }

    #[test]
    fn counts_events_in_half_open_window() {
        let mut w = SlidingCount::default();
        let minute = Span::from_secs(60);
        assert_eq!(w.record(at(100), minute), 1);
        assert_eq!(w.record(at(120), minute), 2);
        assert_eq!(w.record(at(140), minute), 3);
        // 160 - 60 = 100: the event at exactly 100 is outside (100, 160].
        assert_eq!(w.record(at(160), minute), 3);
        assert_eq!(w.record(at(161), minute), 4);
    }

    #[test]
    fn late_event_is_counted_where_it_belongs() {
        let mut w = SlidingCount::default();
        let minute = Span::from_secs(60);
        w.record(at(100), minute);
        w.record(at(150), minute);
        // Arrives late but happened at 130: (70, 130] holds 100 and 130.
        assert_eq!(w.record(at(130), minute), 2);
        assert_eq!(w.record(at(155), minute), 4);
    }

    #[test]
    fn old_events_are_forgotten() {
        let mut w = SlidingCount::default();
        let minute = Span::from_secs(60);
        for s in 0..10 {
            w.record(at(1000 + s), minute);
        }
        w.record(at(2000), minute);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn a_flood_saturates_the_count_instead_of_growing_memory() {
        let mut w = SlidingCount::default();
        let minute = Span::from_secs(60);
        let mut last = 0;
        for i in 0..u64::from(MAX_HELD) + 100 {
            last = w.record(Timestamp::from_nanos(1_000_000_000 + i * 1000), minute);
        }
        assert_eq!(last, MAX_HELD);
        assert_eq!(w.len(), MAX_HELD as usize);
    }

    #[test]
    fn events_near_time_zero_do_not_underflow() {
        let mut w = SlidingCount::default();
        let minute = Span::from_secs(60);
        assert_eq!(w.record(at(0), minute), 1);
        assert_eq!(w.record(at(1), minute), 2);
    }
}
