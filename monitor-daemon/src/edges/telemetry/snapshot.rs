//! The daemon's counters as one typed value, [`Snapshot`]: what the stats file holds, what the
//! admin API's `status` answers and what `redcap-monitor status` reads back, so that each
//! counter is named once (by its field) instead of once per reader.
//!
//! It only gathers counters the stages and edges keep; it never counts anything itself. Every
//! field has a default, so a file from an older version still reads (its missing counters are
//! zero), and new counters are added as fields, never renamed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::edges::actions::publish::PublishStats;
use crate::edges::actions::{ActionStats, HookRuns};
use crate::edges::alerts::{AlertStats, DeliveryStats};
use crate::edges::capture::kernel::{DrainStats, KernelCounters};
use crate::edges::capture::live_pcap::InterfaceCounters;
use crate::edges::directory::DirectoryStatus;
use crate::edges::output::WriterStats;
use crate::stages::coverage::BlindSpot;
use crate::stages::decode::DecodeStats;
use crate::stages::health::HealthStats;
use crate::stages::http::HttpStats;
use crate::stages::pipeline::PipelineStats;
use crate::stages::policy::PolicyStats;
use crate::stages::reassembly::ReassemblyStats;
use crate::stages::redcap::RedcapStats;

/// Every counter of a running daemon at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    /// `ebpf` or `pcap`.
    pub mode: String,
    /// The libssl files the OpenSSL uprobes are attached to.
    pub(crate) tls_libraries: Vec<String>,
    pub calls_written: u64,
    pub violations_written: u64,
    /// What the record writer wrote and dropped; `null` in files of versions without it.
    pub(crate) records: Option<WriterStats>,
    /// The kernel probe's counters (eBPF mode), or why they could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) kernel: Option<KernelSection>,
    /// What user space made of the probe's ring (eBPF mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ring: Option<DrainStats>,
    /// libpcap's counters per interface (pcap mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcap: Option<Vec<InterfaceCounters>>,
    /// Every non-zero count of input a stage rejected, lost or only partly used, by
    /// `stage.reason`.
    pub problems: BTreeMap<String, u64>,
    pub degraded: bool,
    /// 95th percentile server time in the health detector's latest judgement; `null` without
    /// calls.
    pub(crate) server_time_p95_s: Option<f64>,
    /// Blind spots in force; `None` in files of versions without the judgement.
    pub coverage: Option<Vec<BlindSpotCounts>>,
    pub(crate) pipeline: PipelineCounters,
    /// What user space holds now.
    pub(crate) tracked: Tracked,
    pub(crate) actions: ActionStats,
    /// Suspensions in force now (the store's).
    pub(crate) suspensions_active: usize,
    /// Suspension hooks run, by event and result.
    pub(crate) hooks: HookRuns,
    /// Publishing for REDCap's External Module; `null` when `[redcap_module]` is off.
    pub(crate) redcap_module: Option<PublishStats>,
    /// The token directory; `null` in files of versions without one.
    pub directory: Option<DirectoryStatus>,
    pub(crate) alerts: AlertCounters,
    /// The state shared with the other web hosts; absent without `[shared]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSection>,
}

/// `cluster`: this host among the web hosts sharing windows through Redis (`[shared]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterSection {
    pub host: String,
    /// Redis answers.
    pub up: bool,
    pub calls_published: u64,
    /// Peers' calls counted in this host's windows.
    pub calls_received: u64,
    /// Peers' calls that came after later-started calls were judged here.
    pub calls_late: u64,
    /// Peers' calls read twice (skipped).
    pub calls_deduplicated: u64,
    /// This host's calls waiting for Redis, and those dropped from a full buffer.
    pub buffered_calls: u64,
    pub buffered_dropped: u64,
    /// Calls removed from the stream by its cap (`shared.max_stream_calls`), not by age.
    pub(crate) stream_capped: u64,
    /// Stream entries that could not be read (corrupt, or another version's): skipped.
    pub(crate) entries_rejected: u64,
    pub(crate) suspensions_published: u64,
    pub(crate) suspensions_received: u64,
    pub(crate) outages: u64,
    pub(crate) last_error: Option<String>,
    /// Two hosts with the same `shared.host`.
    pub(crate) host_name_conflicts: u64,
    pub peers: Vec<PeerStatus>,
}

/// One other web host as this one hears it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PeerStatus {
    pub name: String,
    /// Seconds since its last batch or heartbeat (its clock against ours).
    pub last_heartbeat_age_s: f64,
    pub calls_received: u64,
    /// Heard within `shared.peer_timeout` (its watermark holds this host's judgement back).
    pub live: bool,
}

/// `kernel`: the probe's counters, or the error that kept them from being read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum KernelSection {
    Counters(Box<KernelCounters>),
    Unreadable(String),
}

/// One blind spot, as the stats file shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlindSpotCounts {
    /// The blind spot's name (`https_unread`, …).
    pub reason: String,
    pub count: u64,
    /// Epoch seconds.
    pub(crate) since: f64,
    pub(crate) last: f64,
    pub advice: String,
}

impl From<&BlindSpot> for BlindSpotCounts {
    fn from(spot: &BlindSpot) -> Self {
        BlindSpotCounts {
            reason: spot.reason.name().to_owned(),
            count: spot.count,
            since: spot.since.as_secs_f64(),
            last: spot.last.as_secs_f64(),
            advice: spot.advice.to_owned(),
        }
    }
}

/// Connections and tokens user space holds state for now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Tracked {
    /// Connections reassembly tracks.
    pub(crate) connections: usize,
    /// Tokens whose rate windows are held.
    pub(crate) tokens: usize,
}

/// Each pipeline stage's own counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct PipelineCounters {
    pub(crate) decode: DecodeStats,
    pub(crate) reassembly: ReassemblyStats,
    pub(crate) http: HttpStats,
    pub(crate) redcap: RedcapStats,
    pub(crate) policy: PolicyStats,
    pub(crate) health: HealthStats,
}

impl PartialEq for PipelineCounters {
    /// By their serialized form: `HttpStats` and `PolicyStats` have no `PartialEq` of their own.
    fn eq(&self, other: &Self) -> bool {
        serde_json::to_value(self).ok() == serde_json::to_value(other).ok()
    }
}

impl From<&PipelineStats<'_>> for PipelineCounters {
    fn from(stats: &PipelineStats<'_>) -> Self {
        PipelineCounters {
            decode: stats.decode.clone(),
            reassembly: stats.reassembly.clone(),
            http: stats.http.clone(),
            redcap: stats.redcap.clone(),
            policy: stats.policy.clone(),
            health: stats.health.clone(),
        }
    }
}

/// The alerts' two sides.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct AlertCounters {
    pub(crate) raise: AlertStats,
    /// `null` when no delivery thread runs (no sinks).
    pub(crate) delivery: Option<DeliveryStats>,
}

impl Snapshot {
    /// The kernel's counters, when they were read.
    pub fn kernel_counters(&self) -> Option<&KernelCounters> {
        match &self.kernel {
            Some(KernelSection::Counters(k)) => Some(k),
            _ => None,
        }
    }

    /// Alert sinks failing for `alerts.sink_failing_after` or longer.
    pub fn failing_sinks(&self) -> &[String] {
        self.alerts
            .delivery
            .as_ref()
            .map_or(&[], |d| d.failing_sinks.as_slice())
    }
}

impl std::fmt::Display for Snapshot {
    /// One line of JSON, as in the stats file.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match serde_json::to_string(self) {
            Ok(text) => f.write_str(&text),
            Err(_) => f.write_str("{}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> Snapshot {
        let mut problems = BTreeMap::new();
        problems.insert("reassembly.gaps".to_owned(), 3);
        Snapshot {
            mode: "ebpf".into(),
            tls_libraries: vec!["/usr/lib/x86_64-linux-gnu/libssl.so.3".into()],
            calls_written: 12,
            violations_written: 2,
            records: Some(WriterStats {
                calls_written: 12,
                violations_written: 2,
                dropped_no_space: 5,
                outages: 1,
                ..WriterStats::default()
            }),
            kernel: Some(KernelSection::Counters(Box::new(KernelCounters {
                packets_seen: 1000,
                ring_full: 4,
                ..KernelCounters::default()
            }))),
            ring: Some(DrainStats {
                records: 900,
                drains_bounded: 7,
                ..DrainStats::default()
            }),
            pcap: None,
            problems,
            degraded: true,
            server_time_p95_s: Some(0.25),
            coverage: Some(vec![BlindSpotCounts {
                reason: "https_unread".into(),
                count: 5,
                since: 1_700_000_000.5,
                last: 1_700_000_100.0,
                advice: "turn on capture.tls".into(),
            }]),
            pipeline: PipelineCounters {
                http: HttpStats {
                    requests: 40,
                    ..HttpStats::default()
                },
                ..PipelineCounters::default()
            },
            tracked: Tracked {
                connections: 4,
                tokens: 2,
            },
            actions: ActionStats {
                suspensions: 1,
                ..ActionStats::default()
            },
            suspensions_active: 1,
            hooks: HookRuns {
                suspend_ok: 1,
                ..HookRuns::default()
            },
            redcap_module: None,
            directory: None,
            alerts: AlertCounters {
                raise: AlertStats {
                    raised: 3,
                    ..AlertStats::default()
                },
                delivery: Some(DeliveryStats {
                    attempts: 9,
                    failing_sinks: vec!["chat".into()],
                    ..DeliveryStats::default()
                }),
            },
            cluster: Some(ClusterSection {
                host: "web1".into(),
                up: true,
                calls_published: 5,
                peers: vec![PeerStatus {
                    name: "web2".into(),
                    last_heartbeat_age_s: 0.25,
                    calls_received: 4,
                    live: true,
                }],
                ..ClusterSection::default()
            }),
        }
    }

    #[test]
    fn the_stats_file_round_trips_through_the_type() {
        let snapshot = busy();
        let text = serde_json::to_string_pretty(&snapshot).unwrap();
        let back: Snapshot = serde_json::from_str(&text).unwrap();
        assert_eq!(back, snapshot);
        // The shape readers of the file rely on: the same keys as before the type.
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["kernel"]["packets_seen"], 1000);
        assert_eq!(value["ring"]["drains_bounded"], 7);
        assert_eq!(value["problems"]["reassembly.gaps"], 3);
        assert_eq!(value["coverage"][0]["reason"], "https_unread");
        assert_eq!(value["pipeline"]["http"]["requests"], 40);
        assert_eq!(value["tracked"]["connections"], 4);
        assert_eq!(value["hooks"]["suspend_ok"], 1);
        assert_eq!(value["alerts"]["delivery"]["failing_sinks"][0], "chat");
        assert!(value.get("pcap").is_none(), "no pcap section in eBPF mode");
        assert_eq!(snapshot.failing_sinks(), ["chat".to_string()]);
        assert_eq!(snapshot.kernel_counters().map(|k| k.ring_full), Some(4));
    }

    #[test]
    fn an_older_or_partial_file_reads_with_zeros_and_an_unreadable_kernel_keeps_its_reason() {
        let old: Snapshot = serde_json::from_str(
            r#"{"mode": "pcap", "calls_written": 5, "pcap": [{"interface": "eth0", "dropped": 2}],
                "kernel": "cannot read map COUNTERS", "some_future_counter": 1}"#,
        )
        .unwrap();
        assert_eq!(old.mode, "pcap");
        assert_eq!(old.calls_written, 5);
        assert_eq!(old.pcap.as_ref().unwrap()[0].dropped, 2);
        assert_eq!(
            old.kernel,
            Some(KernelSection::Unreadable("cannot read map COUNTERS".into()))
        );
        assert!(old.kernel_counters().is_none());
        assert_eq!(old.alerts, AlertCounters::default());
        assert!(old.failing_sinks().is_empty());
    }
}
