//! Which sinks are failing. A sink whose attempts have all failed for `failing_after` is
//! announced to the other sinks once per outage (`sink_failing`), and its first delivery after
//! that once more (`sink_recovered`).
//!
//! Sans-IO: the delivery thread feeds it each attempt's outcome with the time. It holds one
//! entry per configured sink that is failing now, so it is bounded by the configuration.

use std::collections::BTreeMap;

use super::Alert;
use crate::shared::model::{Span, Timestamp};

/// A sink's current run of failed attempts.
#[derive(Clone, Debug)]
struct Outage {
    since: Timestamp,
    failed_attempts: u64,
    last_error: String,
    announced: bool,
}

pub(crate) struct SinkHealth {
    failing_after: Span,
    outages: BTreeMap<String, Outage>,
}

impl SinkHealth {
    pub(crate) fn new(failing_after: Span) -> SinkHealth {
        SinkHealth {
            failing_after,
            outages: BTreeMap::new(),
        }
    }

    /// An attempt to `sink` failed with `error`: returns `sink_failing` when the sink has now
    /// been failing for `failing_after` and that was not said yet in this outage.
    pub(crate) fn failed(&mut self, sink: &str, error: String, now: Timestamp) -> Option<Alert> {
        let outage = self
            .outages
            .entry(sink.to_owned())
            .or_insert_with(|| Outage {
                since: now,
                failed_attempts: 0,
                last_error: String::new(),
                announced: false,
            });
        outage.failed_attempts += 1;
        outage.last_error = error;
        if outage.announced || now.since(outage.since) < self.failing_after {
            return None;
        }
        outage.announced = true;
        Some(Alert::SinkFailing {
            at: now,
            sink: sink.to_owned(),
            since: outage.since,
            failed_attempts: outage.failed_attempts,
            last_error: outage.last_error.clone(),
            evidence: serde_json::json!({
                "failing_after_s": self.failing_after.as_secs_f64(),
            }),
        })
    }

    /// An attempt to `sink` was delivered: ends its outage, and returns `sink_recovered` when
    /// the outage had been announced.
    pub(crate) fn delivered(&mut self, sink: &str, now: Timestamp) -> Option<Alert> {
        let outage = self.outages.remove(sink)?;
        outage.announced.then(|| Alert::SinkRecovered {
            at: now,
            sink: sink.to_owned(),
            since: outage.since,
            failed_attempts: outage.failed_attempts,
            evidence: serde_json::json!({"down_s": now.since(outage.since).as_secs_f64()}),
        })
    }

    /// Sinks announced as failing and not yet recovered, by name.
    pub(crate) fn failing(&self) -> Vec<String> {
        self.outages
            .iter()
            .filter(|(_, o)| o.announced)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000_000_000;

    #[test]
    fn a_sink_is_announced_failing_once_per_outage_and_recovered_once() {
        let mut health = SinkHealth::new(Span::from_secs(600));
        let t = |m: u64| Timestamp(1_000 * MIN + m * MIN);
        assert_eq!(
            health.failed("slack", "connection failed".into(), t(0)),
            None
        );
        assert_eq!(health.failed("slack", "timed out".into(), t(9)), None);
        assert!(health.failing().is_empty());
        let Some(Alert::SinkFailing {
            sink,
            since,
            failed_attempts,
            last_error,
            ..
        }) = health.failed("slack", "status 503".into(), t(10))
        else {
            panic!("no sink_failing after 10 minutes of failures");
        };
        assert_eq!(
            (sink.as_str(), since, failed_attempts, last_error.as_str()),
            ("slack", t(0), 3, "status 503")
        );
        assert_eq!(health.failing(), vec!["slack".to_string()]);
        assert_eq!(health.failed("slack", "status 503".into(), t(30)), None);
        // Another sink's outage is its own.
        assert_eq!(health.failed("siem", "timed out".into(), t(30)), None);
        let Some(Alert::SinkRecovered {
            sink,
            since,
            failed_attempts,
            ..
        }) = health.delivered("slack", t(45))
        else {
            panic!("no sink_recovered");
        };
        assert_eq!((sink.as_str(), since, failed_attempts), ("slack", t(0), 4));
        assert!(health.failing().is_empty());
        assert_eq!(health.delivered("slack", t(46)), None);
        // A short blip that was never announced recovers silently, and a new outage starts
        // its own clock.
        assert_eq!(health.delivered("siem", t(31)), None);
        assert_eq!(health.failed("siem", "timed out".into(), t(50)), None);
        assert_eq!(health.failed("siem", "timed out".into(), t(59)), None);
        assert!(health.failed("siem", "timed out".into(), t(60)).is_some());
    }
}
