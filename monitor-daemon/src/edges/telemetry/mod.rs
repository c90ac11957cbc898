//! Prometheus metrics: every metric name, help text and label set of the daemon, in one place.
//!
//! Stages keep their own plain counters, gathered into one [`Snapshot`] (the stats file's and
//! `status`'s); [`Metrics::refresh`] projects that snapshot once a second and
//! [`Metrics::observe`] sees each verdict as it is released (never per packet). Both write atomics
//! that the API thread encodes on a scrape; the only locks shared with a scrape are
//! prometheus-client's own short ones (a label family's map, a histogram's buckets), held for
//! microseconds, so the capture path never waits on a scrape. Labels are bounded by construction: REDCap's `content`
//! and `action` come from hostile input and are mapped onto an allow-list (else `other`); a token
//! appears only as its fingerprint, and only in the opt-in top-K gauges (`api.top_tokens`).

mod snapshot;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

pub use snapshot::Snapshot;
pub(crate) use snapshot::{
    AlertCounters, BlindSpotCounts, ClusterSection, KernelSection, PeerStatus, PipelineCounters,
    Tracked,
};

use crate::stages::health::TokenLoad;
use crate::stages::policy::{HeavyReason, Verdict};

/// The exact Content-Type of what [`Metrics::encode`] writes (OpenMetrics 1.0 text).
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Every metric name starts with this.
pub(crate) const PREFIX: &str = "redcap_monitor";
/// Most per-token series the top-K gauges may hold.
pub(crate) const MAX_TOP_TOKENS: usize = 20;

/// REDCap's API `content` values (REDCap 14/15 API documentation); anything else is `other`.
const CONTENTS: &[&str] = &[
    "arm",
    "attachment",
    "dag",
    "event",
    "exportFieldNames",
    "fieldValidation",
    "file",
    "fileInfo",
    "fileRepository",
    "formEventMapping",
    "generateNextRecordName",
    "instrument",
    "log",
    "metadata",
    "participantList",
    "pdf",
    "project",
    "project_settings",
    "project_xml",
    "record",
    "repeatingFormsEvents",
    "report",
    "surveyAccessCode",
    "surveyLink",
    "surveyQueueLink",
    "surveyReturnCode",
    "user",
    "userDagMapping",
    "userRole",
    "userRoleMapping",
    "version",
];
/// REDCap's API `action` values; anything else is `other`.
const ACTIONS: &[&str] = &[
    "createFolder",
    "delete",
    "export",
    "import",
    "list",
    "rename",
    "switch",
];

/// `content` as a label: an allow-listed value, `none` when absent, else `other`.
pub(crate) fn content_label(content: Option<&str>) -> &'static str {
    allow_listed(CONTENTS, content)
}

/// `action` as a label: an allow-listed value, `none` when absent, else `other`.
pub(crate) fn action_label(action: Option<&str>) -> &'static str {
    allow_listed(ACTIONS, action)
}

fn allow_listed(list: &[&'static str], value: Option<&str>) -> &'static str {
    match value {
        None => "none",
        Some(v) => list
            .iter()
            .copied()
            .find(|&known| known == v)
            .unwrap_or("other"),
    }
}

/// `2xx` … `5xx`, `none` without a response, `other` for a status outside 100..=599.
pub(crate) fn status_class(status: Option<u16>) -> &'static str {
    match status {
        None => "none",
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
    }
}

fn heavy_label(reason: &HeavyReason) -> String {
    serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "other".into())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    content: &'static str,
    action: &'static str,
    status_class: &'static str,
}

/// No label: a family of one series, created only when it has a value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Unlabelled {}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    origin: &'static str,
}

/// One capture source: `ebpf` (interface `all`: the kernel counts across interfaces) or `pcap`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
    interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LossLabels {
    source: &'static str,
    interface: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProblemLabels {
    problem: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LayerLabels {
    layer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    event: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    token_fp: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The registry and a handle on every metric in it. Cloning shares the metrics.
#[derive(Clone)]
pub(crate) struct Metrics {
    registry: Arc<Registry>,
    api_calls: Family<CallLabels, Counter>,
    response_bytes: Histogram,
    server_time: Histogram,
    heavy_calls: Family<ReasonLabels, Counter>,
    violations: Family<RuleLabels, Counter>,
    decisions: Family<ActionLabels, Counter>,
    suspensions_active: Gauge,
    directory_available: Gauge,
    directory_entries: Gauge,
    suspensions: Family<OriginLabels, Counter>,
    lifts: Family<OriginLabels, Counter>,
    degraded: Gauge,
    degradations: Counter,
    server_time_p95: FloatGauge,
    capture_events: Family<SourceLabels, Counter>,
    capture_packets: Family<SourceLabels, Counter>,
    capture_filtered: Family<SourceLabels, Counter>,
    capture_drains_bounded: Counter,
    capture_payload_bytes: Family<SourceLabels, Counter>,
    capture_losses: Family<LossLabels, Counter>,
    capture_lost_bytes: Family<LossLabels, Counter>,
    capture_blind: Family<ReasonLabels, Gauge>,
    reassembly_evictions: Family<ReasonLabels, Counter>,
    input_problems: Family<ProblemLabels, Counter>,
    connections: Family<LayerLabels, Gauge>,
    tokens: Gauge,
    alerts_raised: Counter,
    webhook_attempts: Counter,
    webhook_deliveries: Counter,
    webhook_failures: Counter,
    alert_sinks_failing: Gauge,
    hook_runs: Family<HookLabels, Counter>,
    records_dropped: Family<ReasonLabels, Counter>,
    // `[shared]`: families without labels, so that a host alone has no series of them.
    shared_up: Family<Unlabelled, Gauge>,
    shared_published: Family<Unlabelled, Counter>,
    shared_received: Family<PeerLabels, Counter>,
    shared_late: Family<Unlabelled, Counter>,
    shared_buffered: Family<Unlabelled, Gauge>,
    shared_peers: Family<Unlabelled, Gauge>,
    top_share: Family<TokenLabels, FloatGauge>,
    top_calls: Family<TokenLabels, Gauge>,
    top_server_time: Family<TokenLabels, FloatGauge>,
    tokens_stale: Gauge,
    attestations_due: Gauge,
    attestations_overdue: Gauge,
    attestations_missing: Gauge,
    usage_top10_share: FloatGauge,
    usage_rollup_rows: Gauge,
}

/// The long-term view, counted without naming a token (see `LiveTelemetry::refresh_long_term`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct LongTermView {
    pub(crate) tokens_stale: usize,
    /// `None` when no attestation file is configured (or it cannot be read).
    pub(crate) attestations: Option<AttestationCounts>,
    /// Share of the last 30 days' calls made by the 10 busiest tokens; `None` without calls.
    pub(crate) top10_share: Option<f64>,
    pub(crate) rollup_rows: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct AttestationCounts {
    pub(crate) due: usize,
    pub(crate) overdue: usize,
    pub(crate) missing: usize,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut r = Registry::with_prefix(PREFIX);
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            api_calls: Family::default(),
            // 256 B × 4ⁿ up to 1 GiB.
            response_bytes: Histogram::new(exponential_buckets(256.0, 4.0, 12)),
            // OpenTelemetry's advised HTTP server buckets, plus 30 s and 60 s for slow exports.
            server_time: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                30.0, 60.0,
            ]),
            heavy_calls: Family::default(),
            violations: Family::default(),
            decisions: Family::default(),
            suspensions_active: Gauge::default(),
            directory_available: Gauge::default(),
            directory_entries: Gauge::default(),
            suspensions: Family::default(),
            lifts: Family::default(),
            degraded: Gauge::default(),
            degradations: Counter::default(),
            server_time_p95: FloatGauge::default(),
            capture_events: Family::default(),
            capture_packets: Family::default(),
            capture_filtered: Family::default(),
            capture_drains_bounded: Counter::default(),
            capture_payload_bytes: Family::default(),
            capture_losses: Family::default(),
            capture_lost_bytes: Family::default(),
            capture_blind: Family::default(),
            reassembly_evictions: Family::default(),
            input_problems: Family::default(),
            connections: Family::default(),
            tokens: Gauge::default(),
            alerts_raised: Counter::default(),
            webhook_attempts: Counter::default(),
            webhook_deliveries: Counter::default(),
            webhook_failures: Counter::default(),
            alert_sinks_failing: Gauge::default(),
            hook_runs: Family::default(),
            records_dropped: Family::default(),
            shared_up: Family::default(),
            shared_published: Family::default(),
            shared_received: Family::default(),
            shared_late: Family::default(),
            shared_buffered: Family::default(),
            shared_peers: Family::default(),
            top_share: Family::default(),
            top_calls: Family::default(),
            top_server_time: Family::default(),
            tokens_stale: Gauge::default(),
            attestations_due: Gauge::default(),
            attestations_overdue: Gauge::default(),
            attestations_missing: Gauge::default(),
            usage_top10_share: FloatGauge::default(),
            usage_rollup_rows: Gauge::default(),
        };
        r.register(
            "build",
            "Build information (always 1)",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        r.register(
            "api_calls",
            "REDCap API calls by content, action and HTTP status class (content and action outside REDCap's API are `other`)",
            m.api_calls.clone(),
        );
        r.register_with_unit(
            "api_response_size",
            "Decoded (gunzipped) response body size of API calls",
            Unit::Bytes,
            m.response_bytes.clone(),
        );
        r.register_with_unit(
            "api_server_time",
            "Server time of API calls: last request byte to first response byte",
            Unit::Seconds,
            m.server_time.clone(),
        );
        r.register(
            "api_heavy_calls",
            "Heavy API calls by why they are heavy",
            m.heavy_calls.clone(),
        );
        r.register(
            "policy_violations",
            "Calls that took their token over a rule's limit, by rule",
            m.violations.clone(),
        );
        r.register(
            "enforcement_decisions",
            "Enforcement decisions by action (warn, suspend)",
            m.decisions.clone(),
        );
        r.register(
            "suspensions_active",
            "Tokens suspended now",
            m.suspensions_active.clone(),
        );
        r.register(
            "directory_available",
            "1 while the token directory's last read worked (0: directory_unavailable, or none configured)",
            m.directory_available.clone(),
        );
        r.register(
            "directory_entries",
            "Tokens the token directory can name (no personal data is exported)",
            m.directory_entries.clone(),
        );
        r.register(
            "suspensions",
            "Suspensions started, by origin (auto: the enforcement engine, manual: an admin)",
            m.suspensions.clone(),
        );
        r.register(
            "suspension_lifts",
            "Suspensions ended, by origin (manual: lifted by an admin; expired)",
            m.lifts.clone(),
        );
        r.register(
            "capture_blind",
            "1 while the capture is blind to some traffic, by reason (https_unread, \
             https_not_captured, not_http, request_starts_lost, unreadable_api_requests, http2_unreadable, http2_started_unseen): API \
             calls in it are not counted",
            m.capture_blind.clone(),
        );
        r.register(
            "server_degraded",
            "1 while the REDCap server is judged degraded, else 0",
            m.degraded.clone(),
        );
        r.register(
            "server_degradations",
            "Times the server was judged degraded",
            m.degradations.clone(),
        );
        r.register_with_unit(
            "server_time_p95",
            "95th percentile server time in the health detector's latest judgement (NaN without calls)",
            Unit::Seconds,
            m.server_time_p95.clone(),
        );
        r.register(
            "capture_events",
            "Events the capture source delivered (eBPF: ring buffer events; pcap: packets that passed the filter)",
            m.capture_events.clone(),
        );
        r.register(
            "capture_packets",
            "Packets the eBPF probe looked at",
            m.capture_packets.clone(),
        );
        r.register(
            "capture_filtered_packets",
            "Packets on a server port that belong to no API connection (cost no event)",
            m.capture_filtered.clone(),
        );
        r.register(
            "capture_bounded_drains",
            "Reads of the kernel's ring cut short by capture.max_drain_records or max_drain_time, so that the loop's periodic work ran before the next read",
            m.capture_drains_bounded.clone(),
        );
        r.register_with_unit(
            "capture_payload",
            "TCP payload bytes delivered in order by reassembly",
            Unit::Bytes,
            m.capture_payload_bytes.clone(),
        );
        r.register(
            "capture_losses",
            "Events or packets lost by the capture, by reason (ring_full, flow_insert_failed, flows_evicted, flows_unanswered, tls_conns_evicted, tls_args_lost, ring_malformed, dropped, if_dropped, truncated)",
            m.capture_losses.clone(),
        );
        r.register_with_unit(
            "capture_lost_payload",
            "Payload bytes of tracked segments the eBPF probe never copied",
            Unit::Bytes,
            m.capture_lost_bytes.clone(),
        );
        r.register(
            "reassembly_evictions",
            "Connections or buffers reassembly dropped to stay within its limits",
            m.reassembly_evictions.clone(),
        );
        r.register(
            "input_problems",
            "Input a pipeline stage rejected, lost or could only partly use, by stage.reason",
            m.input_problems.clone(),
        );
        r.register(
            "tracked_connections",
            "Connections tracked now (layer kernel: the eBPF flow table; reassembly: user space)",
            m.connections.clone(),
        );
        r.register(
            "tracked_tokens",
            "Tokens whose rate windows are held now",
            m.tokens.clone(),
        );
        r.register(
            "alerts_raised",
            "Alerts raised to the admin team",
            m.alerts_raised.clone(),
        );
        r.register(
            "webhook_delivery_attempts",
            "Webhook delivery attempts",
            m.webhook_attempts.clone(),
        );
        r.register(
            "webhook_deliveries",
            "Webhooks delivered",
            m.webhook_deliveries.clone(),
        );
        r.register(
            "webhook_delivery_failures",
            "Webhooks given up after their last attempt",
            m.webhook_failures.clone(),
        );
        r.register(
            "alert_sinks_failing",
            "Alert sinks whose every attempt has failed for alerts.sink_failing_after or longer",
            m.alert_sinks_failing.clone(),
        );
        r.register(
            "hook_runs",
            "Suspension hooks run, by event (suspend, lift) and result (ok, failed)",
            m.hook_runs.clone(),
        );
        r.register(
            "records_dropped",
            "Call, violation and decision records lost to write errors, by reason (no_space, io_error)",
            m.records_dropped.clone(),
        );
        r.register(
            "shared_state_up",
            "Whether Redis ([shared]) answers (1) or this host goes on alone (0); absent without [shared]",
            m.shared_up.clone(),
        );
        r.register(
            "shared_calls_published",
            "This host's calls published to the shared stream",
            m.shared_published.clone(),
        );
        r.register(
            "shared_calls_received",
            "Other web hosts' calls counted in this host's windows, by peer",
            m.shared_received.clone(),
        );
        r.register(
            "shared_calls_late",
            "Peers' calls that arrived after later-started calls were judged here (still counted)",
            m.shared_late.clone(),
        );
        r.register(
            "shared_buffered_calls",
            "This host's calls waiting for Redis",
            m.shared_buffered.clone(),
        );
        r.register(
            "shared_peers",
            "Other web hosts heard within shared.peer_timeout",
            m.shared_peers.clone(),
        );
        r.register(
            "top_token_load_ratio",
            "Share of the server time in the health window, for the top tokens by load (opt-in: api.top_tokens)",
            m.top_share.clone(),
        );
        r.register(
            "top_token_window_calls",
            "API calls in the health window, for the top tokens by load (opt-in: api.top_tokens)",
            m.top_calls.clone(),
        );
        r.register_with_unit(
            "top_token_server_time",
            "Server time in the health window, for the top tokens by load (opt-in: api.top_tokens)",
            Unit::Seconds,
            m.top_server_time.clone(),
        );
        r.register(
            "tokens_stale",
            "Tokens seen by the daemon and unused for longer than lifecycle.stale_after (REDCap's own last use when the token directory has it)",
            m.tokens_stale.clone(),
        );
        r.register(
            "attestations_due",
            "Tokens whose yearly attestation falls due within lifecycle.attestation_warning (-1: no attestation file)",
            m.attestations_due.clone(),
        );
        r.register(
            "attestations_overdue",
            "Tokens whose attestation is older than lifecycle.attestation_every (-1: no attestation file)",
            m.attestations_overdue.clone(),
        );
        r.register(
            "attestations_missing",
            "Tokens with no attestation on record (-1: no attestation file)",
            m.attestations_missing.clone(),
        );
        r.register(
            "usage_top10_share",
            "Share of the last 30 days' API calls made by the 10 busiest tokens (NaN without calls)",
            m.usage_top10_share.clone(),
        );
        r.register(
            "usage_rollup_rows",
            "Daily per-token rows in the store (bounded by store.max_rollups)",
            m.usage_rollup_rows.clone(),
        );
        // Series that are zero until something happens are created now, so that a dashboard
        // shows 0 rather than no data.
        for reason in crate::edges::output::DropReason::ALL {
            let _ = m.records_dropped.get_or_create(&ReasonLabels {
                reason: reason.as_str().into(),
            });
        }
        for event in ["suspend", "lift"] {
            for result in ["ok", "failed"] {
                let _ = m.hook_runs.get_or_create(&HookLabels { event, result });
            }
        }
        for action in ["warn", "suspend"] {
            let _ = m.decisions.get_or_create(&ActionLabels { action });
        }
        for origin in ["auto", "manual"] {
            let _ = m.suspensions.get_or_create(&OriginLabels { origin });
        }
        for origin in ["manual", "expired"] {
            let _ = m.lifts.get_or_create(&OriginLabels { origin });
        }
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// The whole exposition, OpenMetrics text ending in `# EOF` (see [`CONTENT_TYPE`]).
    pub(crate) fn encode(&self) -> String {
        let mut text = String::with_capacity(16 << 10);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// Counts one released call: its kind and status, size, server time, heaviness, the rules it
    /// broke and what enforcement decided.
    pub(crate) fn observe(&self, verdict: &Verdict) {
        let call = &verdict.call;
        self.api_calls
            .get_or_create(&CallLabels {
                content: content_label(call.params.content.as_deref()),
                action: action_label(call.params.action.as_deref()),
                status_class: status_class(call.status),
            })
            .inc();
        if let Some(bytes) = call.response_bytes {
            self.response_bytes.observe(bytes as f64);
        }
        if let Some(ttfb) = call.ttfb {
            self.server_time.observe(ttfb.as_secs_f64());
        }
        if let Some(reason) = &verdict.heavy {
            self.heavy_calls
                .get_or_create(&ReasonLabels {
                    reason: heavy_label(reason),
                })
                .inc();
        }
        for violation in &verdict.violations {
            // Rule names come from the configuration: bounded.
            self.violations
                .get_or_create(&RuleLabels {
                    rule: violation.rule.clone(),
                })
                .inc();
        }
        if let Some(decision) = &verdict.decision {
            let action = match decision.action {
                crate::stages::policy::enforce::Action::Warn { .. } => "warn",
                crate::stages::policy::enforce::Action::Suspend { .. } => "suspend",
            };
            self.decisions.get_or_create(&ActionLabels { action }).inc();
        }
    }

    /// Creates the violation series of every configured rule at 0.
    pub(crate) fn declare_rules<'a>(&self, rules: impl IntoIterator<Item = &'a str>) {
        for rule in rules {
            let _ = self
                .violations
                .get_or_create(&RuleLabels { rule: rule.into() });
        }
    }

    /// The shared state's counters (`[shared]`): only when it is configured.
    fn refresh_cluster(&self, s: &Snapshot) {
        let Some(cluster) = &s.cluster else {
            return;
        };
        let up = cluster.up;
        let published = cluster.calls_published;
        let late = cluster.calls_late;
        let buffered = cluster.buffered_calls;
        let live_peers = cluster.peers.iter().filter(|p| p.live).count();
        self.shared_up
            .get_or_create(&Unlabelled {})
            .set(i64::from(up));
        store(
            &self.shared_published.get_or_create(&Unlabelled {}),
            published,
        );
        store(&self.shared_late.get_or_create(&Unlabelled {}), late);
        self.shared_buffered
            .get_or_create(&Unlabelled {})
            .set(buffered as i64);
        self.shared_peers
            .get_or_create(&Unlabelled {})
            .set(live_peers as i64);
        for peer in &cluster.peers {
            store(
                &self.shared_received.get_or_create(&PeerLabels {
                    peer: peer.name.clone(),
                }),
                peer.calls_received,
            );
        }
    }

    /// The long-term view (stale tokens, attestations, concentration of use): counts only.
    pub(crate) fn set_long_term(&self, view: &LongTermView) {
        self.tokens_stale.set(view.tokens_stale as i64);
        let (due, overdue, missing) = view.attestations.map_or((-1, -1, -1), |a| {
            (a.due as i64, a.overdue as i64, a.missing as i64)
        });
        self.attestations_due.set(due);
        self.attestations_overdue.set(overdue);
        self.attestations_missing.set(missing);
        self.usage_top10_share
            .set(view.top10_share.unwrap_or(f64::NAN));
        self.usage_rollup_rows.set(view.rollup_rows as i64);
    }

    /// Every counter of the [`Snapshot`] (the one the stats file and `status` show), as metrics:
    /// absolute values, set on each refresh. The stages and edges count; this only projects, so
    /// a metric cannot disagree with `status`.
    pub(crate) fn refresh(&self, s: &Snapshot) {
        self.refresh_capture(s);
        self.refresh_pipeline(s);
        self.refresh_actions(s);
        self.refresh_cluster(s);
    }

    /// What the capture saw and lost, and what it cannot see.
    fn refresh_capture(&self, s: &Snapshot) {
        let source = match s.mode.as_str() {
            "ebpf" => "ebpf",
            "pcap" => "pcap",
            _ => "none",
        };
        let all = || SourceLabels {
            source,
            interface: "all".into(),
        };
        for reason in crate::stages::coverage::BlindReason::ALL {
            let blind = s
                .coverage
                .iter()
                .flatten()
                .any(|spot| spot.reason == reason.name());
            self.capture_blind
                .get_or_create(&ReasonLabels {
                    reason: reason.name().into(),
                })
                .set(i64::from(blind));
        }
        store(
            &self.capture_payload_bytes.get_or_create(&all()),
            s.pipeline.reassembly.bytes_delivered,
        );
        if let Some(k) = s.kernel_counters() {
            store(&self.capture_events.get_or_create(&all()), k.events_sent);
            store(&self.capture_packets.get_or_create(&all()), k.packets_seen);
            store(&self.capture_filtered.get_or_create(&all()), k.filtered);
            // Truncated bytes are bytes, not events: their own series, below.
            for (reason, n) in k.losses() {
                if reason != "truncated_bytes" {
                    self.loss(source, "all", reason, n);
                }
            }
            let lost = LossLabels {
                source,
                interface: "all".into(),
                reason: "truncated",
            };
            store(
                &self.capture_lost_bytes.get_or_create(&lost),
                k.truncated_bytes,
            );
            self.connections
                .get_or_create(&LayerLabels { layer: "kernel" })
                .set(k.flows_tracked as i64);
            self.connections
                .get_or_create(&LayerLabels {
                    layer: "kernel_tls",
                })
                .set(k.tls_conns_tracked as i64);
        }
        if let Some(ring) = &s.ring {
            self.loss(source, "all", "ring_malformed", ring.malformed);
            store(&self.capture_drains_bounded, ring.drains_bounded);
        }
        for i in s.pcap.iter().flatten() {
            let labels = SourceLabels {
                source,
                interface: i.interface.clone(),
            };
            store(&self.capture_events.get_or_create(&labels), i.received);
            self.loss(source, &i.interface, "dropped", i.dropped);
            self.loss(source, &i.interface, "if_dropped", i.if_dropped);
            self.loss(source, &i.interface, "truncated", i.truncated);
        }
    }

    /// The stages' counters: reassembly's limits, input problems, health, what is tracked.
    fn refresh_pipeline(&self, s: &Snapshot) {
        self.degraded.set(i64::from(s.degraded));
        store(&self.degradations, s.pipeline.health.degradations);
        self.server_time_p95
            .set(s.server_time_p95_s.unwrap_or(f64::NAN));
        for (reason, n) in [
            ("connections", s.pipeline.reassembly.evicted_connections),
            ("buffers", s.pipeline.reassembly.buffer_evictions),
        ] {
            store(
                &self.reassembly_evictions.get_or_create(&ReasonLabels {
                    reason: reason.into(),
                }),
                n,
            );
        }
        for (problem, &n) in &s.problems {
            store(
                &self.input_problems.get_or_create(&ProblemLabels {
                    problem: problem.clone(),
                }),
                n,
            );
        }
        self.connections
            .get_or_create(&LayerLabels {
                layer: "reassembly",
            })
            .set(s.tracked.connections as i64);
        self.tokens.set(s.tracked.tokens as i64);
    }

    /// The edges that act: records, suspensions, hooks, alerts, the token directory.
    fn refresh_actions(&self, s: &Snapshot) {
        if let Some(records) = &s.records {
            for reason in crate::edges::output::DropReason::ALL {
                store(
                    &self.records_dropped.get_or_create(&ReasonLabels {
                        reason: reason.as_str().into(),
                    }),
                    records.dropped(reason),
                );
            }
        }
        let stats = &s.actions;
        let origin = |origin| OriginLabels { origin };
        store(
            &self.suspensions.get_or_create(&origin("auto")),
            stats.suspensions.saturating_sub(stats.manual_suspensions),
        );
        store(
            &self.suspensions.get_or_create(&origin("manual")),
            stats.manual_suspensions,
        );
        store(
            &self.lifts.get_or_create(&origin("manual")),
            stats.manual_lifts,
        );
        store(
            &self.lifts.get_or_create(&origin("expired")),
            stats.lifts.saturating_sub(stats.manual_lifts),
        );
        self.suspensions_active.set(s.suspensions_active as i64);
        let hooks = &s.hooks;
        for (event, result, n) in [
            ("suspend", "ok", hooks.suspend_ok),
            ("suspend", "failed", hooks.suspend_failed),
            ("lift", "ok", hooks.lift_ok),
            ("lift", "failed", hooks.lift_failed),
        ] {
            store(
                &self.hook_runs.get_or_create(&HookLabels { event, result }),
                n,
            );
        }
        store(&self.alerts_raised, s.alerts.raise.raised);
        if let Some(delivery) = &s.alerts.delivery {
            store(&self.webhook_attempts, delivery.attempts);
            store(&self.webhook_deliveries, delivery.delivered);
            store(&self.webhook_failures, delivery.gave_up);
            self.alert_sinks_failing
                .set(delivery.failing_sinks.len() as i64);
        }
        let (available, entries) = s.directory.as_ref().map_or((false, 0), |d| {
            (
                d.state == crate::edges::directory::DirectoryState::Available,
                d.entries,
            )
        });
        self.directory_available.set(i64::from(available));
        self.directory_entries.set(entries as i64);
    }

    fn loss(&self, source: &'static str, interface: &str, reason: &'static str, n: u64) {
        let labels = LossLabels {
            source,
            interface: interface.into(),
            reason,
        };
        store(&self.capture_losses.get_or_create(&labels), n);
    }
}

/// Sets a counter to a stage's own running total (the stage counts; telemetry only reads).
fn store(counter: &Counter, value: u64) {
    counter.inner().store(value, Ordering::Relaxed);
}

/// The opt-in per-token gauges: at most K series, keyed by fingerprint; a token that leaves the
/// top K has its series removed.
pub(crate) struct TopTokens {
    k: usize,
    shown: HashSet<String>,
}

impl TopTokens {
    /// `k` is capped at [`MAX_TOP_TOKENS`]; 0 shows none.
    pub(crate) fn new(k: usize) -> TopTokens {
        TopTokens {
            k: k.min(MAX_TOP_TOKENS),
            shown: HashSet::new(),
        }
    }

    /// Shows the first K of `loads` (largest first) and removes the series of tokens not among
    /// them any more.
    pub(crate) fn update(&mut self, metrics: &Metrics, loads: &[TokenLoad]) {
        if self.k == 0 {
            return;
        }
        let mut now_shown = HashSet::with_capacity(self.k);
        for load in loads.iter().take(self.k) {
            let labels = TokenLabels {
                token_fp: load.token.to_string(),
            };
            metrics.top_share.get_or_create(&labels).set(load.share);
            metrics
                .top_calls
                .get_or_create(&labels)
                .set(i64::from(load.calls));
            metrics
                .top_server_time
                .get_or_create(&labels)
                .set(load.server_time.as_secs_f64());
            now_shown.insert(labels.token_fp);
        }
        for gone in self.shown.iter().filter(|fp| !now_shown.contains(*fp)) {
            let labels = TokenLabels {
                token_fp: gone.clone(),
            };
            metrics.top_share.remove(&labels);
            metrics.top_calls.remove(&labels);
            metrics.top_server_time.remove(&labels);
        }
        self.shown = now_shown;
    }
}

#[cfg(test)]
mod tests;
