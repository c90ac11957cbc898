//! Merging the calls of several web hosts that share one token's windows (`[shared]`).
//!
//! Owns the compact form in which a finished call travels between hosts ([`SharedCall`]: only
//! what the policy needs, a fingerprint and never a raw token), the merge of the peers' batches
//! (deduplicated by host, instance and sequence number), each peer's watermark (the start of its
//! oldest request still open) and its liveness, and from these the hold that keeps this host's
//! policy from judging a call before every live peer has published the calls that started
//! earlier. Sans-IO: batches come in with the `now` of the caller, calls to push into the policy
//! and peer events go out through `poll_*`; the Redis edge (`edges::shared_state`) carries them.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::shared::model::{Endpoint, Span, Timestamp};
use crate::shared::token::{MaskedToken, TokenFingerprint, TokenProblem};
use crate::stages::redcap::{ApiCall, ApiParams, TokenIdentity};

/// At most this many peers are remembered (a misconfigured cluster inventing host names cannot
/// grow the table); entries of further hosts are dropped and counted.
pub(crate) const MAX_PEERS: usize = 256;

/// A lost peer is forgotten (no longer shown) this long after it was last heard.
const FORGET_LOST_PEER: Span = Span::from_secs(3600);

/// One finished API call as other hosts see it: what the policy's rules and heavy kinds read,
/// nothing else. Serialised with short names (one of these per call goes through Redis).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedCall {
    /// Request start and response end, nanoseconds since the epoch (the serving host's clock).
    #[serde(rename = "s")]
    pub(crate) start: u64,
    #[serde(rename = "e")]
    pub(crate) end: u64,
    /// The client (the refused-calls rule counts per address).
    #[serde(rename = "ip")]
    pub(crate) client: IpAddr,
    #[serde(rename = "pt", default)]
    pub(crate) client_port: u16,
    /// The token's keyed fingerprint, or why the call had no usable token.
    #[serde(rename = "fp", default, skip_serializing_if = "Option::is_none")]
    pub(crate) fingerprint: Option<TokenFingerprint>,
    #[serde(rename = "tp", default, skip_serializing_if = "Option::is_none")]
    pub(crate) token_problem: Option<TokenProblem>,
    #[serde(rename = "st", default, skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<u16>,
    #[serde(rename = "rq", default)]
    pub(crate) request_bytes: u64,
    #[serde(rename = "rs", default, skip_serializing_if = "Option::is_none")]
    pub(crate) response_bytes: Option<u64>,
    #[serde(rename = "rw", default, skip_serializing_if = "Option::is_none")]
    pub(crate) response_wire_bytes: Option<u64>,
    /// The parameters that make a call heavy.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub(crate) content: Option<String>,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub(crate) action: Option<String>,
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub(crate) data_bytes: Option<u64>,
    #[serde(rename = "r", default)]
    pub(crate) records: u32,
    #[serde(rename = "fl", default)]
    pub(crate) filter_logic: bool,
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub(crate) return_metadata_only: Option<bool>,
    #[serde(rename = "ar", default, skip_serializing_if = "Option::is_none")]
    pub(crate) all_records: Option<bool>,
}

/// Longest `content` or `action` value taken from a peer (REDCap's are short words).
const MAX_PARAM_CHARS: usize = 64;

impl SharedCall {
    /// The shared form of a call this host served (its raw token, if held, stays behind).
    pub(crate) fn of(call: &ApiCall) -> SharedCall {
        let (fingerprint, token_problem) = match &call.token {
            Ok(identity) => (Some(identity.fingerprint), None),
            Err(problem) => (None, Some(*problem)),
        };
        SharedCall {
            start: call.ts_start.0,
            end: call.ts_end.0,
            client: call.client.ip,
            client_port: call.client.port,
            fingerprint,
            token_problem,
            status: call.status,
            request_bytes: call.request_bytes,
            response_bytes: call.response_bytes,
            response_wire_bytes: call.response_wire_bytes,
            content: call.params.content.clone(),
            action: call.params.action.clone(),
            data_bytes: call.params.data_bytes,
            records: call.params.records,
            filter_logic: call.params.filter_logic,
            return_metadata_only: call.params.return_metadata_only,
            all_records: call.params.all_records,
        }
    }

    /// The call as the policy takes it. What the shared form leaves out is empty: the masked
    /// token is `…` (a peer's call is never shown or acted on here), the server unspecified.
    pub(crate) fn into_call(self) -> ApiCall {
        let token = match (self.fingerprint, self.token_problem) {
            (Some(fingerprint), _) => Ok(TokenIdentity {
                fingerprint,
                masked: MaskedToken("…".into()),
            }),
            (None, problem) => Err(problem.unwrap_or(TokenProblem::Unreadable)),
        };
        let cut = |s: Option<String>| s.filter(|s| s.len() <= MAX_PARAM_CHARS);
        ApiCall {
            ts_start: Timestamp(self.start),
            ts_end: Timestamp(self.end.max(self.start)),
            ttfb: None,
            client: Endpoint {
                ip: self.client,
                port: self.client_port,
            },
            server: Endpoint {
                ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port: 0,
            },
            proxy: None,
            method: "POST".into(),
            path: String::new(),
            http_version: Default::default(),
            token,
            params: ApiParams {
                content: cut(self.content),
                action: cut(self.action),
                data_bytes: self.data_bytes,
                records: self.records,
                filter_logic: self.filter_logic,
                return_metadata_only: self.return_metadata_only,
                all_records: self.all_records,
                ..ApiParams::default()
            },
            status: self.status,
            request_bytes: self.request_bytes,
            response_bytes: self.response_bytes,
            response_wire_bytes: self.response_wire_bytes,
            body_problem: None,
            complete: true,
            raw_token: Default::default(),
        }
    }
}

/// What one host published at once: its calls (each with the host's sequence number), and its
/// watermark: every call of this host that started before it is in this batch or an earlier one.
/// A batch without calls is a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub(crate) host: String,
    /// Chosen at random when the daemon starts: a restarted host numbers its calls afresh.
    pub(crate) instance: u64,
    /// When the host published it, on its clock.
    pub(crate) sent_at: Timestamp,
    pub(crate) watermark: Timestamp,
    pub(crate) calls: Vec<(u64, SharedCall)>,
}

/// This host in the cluster, and how long a silent peer is waited for.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub host: String,
    pub instance: u64,
    /// A peer not heard for this long holds nothing back (`shared.peer_timeout`).
    pub peer_timeout: Span,
}

/// What happened to a peer, for alerts and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PeerEvent {
    /// Not heard for `peer_timeout`: no longer waited for (alert `shared_peer_lost`).
    Lost { host: String },
    /// Heard again after it was lost, or for the first time.
    Joined { host: String },
}

/// One peer as this host knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct PeerView {
    pub(crate) host: String,
    pub(crate) instance: u64,
    /// When it last published (its clock).
    #[serde(serialize_with = "crate::shared::model::as_secs")]
    pub(crate) last_heard: Timestamp,
    #[serde(serialize_with = "crate::shared::model::as_secs")]
    pub(crate) watermark: Timestamp,
    pub(crate) calls_received: u64,
    pub(crate) live: bool,
}

/// Counters of the merge.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterStats {
    /// Peers' calls passed on to the policy.
    pub calls_received: u64,
    /// Calls seen before (a batch read twice, or published again after a lost reply): skipped.
    pub(crate) calls_deduplicated: u64,
    /// Times a peer went silent for longer than `peer_timeout`.
    pub(crate) peers_lost: u64,
    /// Entries of hosts past [`MAX_PEERS`], dropped.
    pub(crate) peers_over_limit: u64,
    /// Entries under this host's own name from another instance that is alive now: two hosts
    /// were given the same `shared.host`, and each takes the other's calls as a peer's.
    pub(crate) host_name_conflicts: u64,
}

struct Peer {
    instance: u64,
    last_seq: Option<u64>,
    last_heard: Timestamp,
    watermark: Timestamp,
    calls_received: u64,
    live: bool,
}

/// The merge of the peers' batches into this host's policy.
pub struct Cluster {
    config: ClusterConfig,
    /// When this instance started (entries under its own name from later are a conflict).
    started: Timestamp,
    peers: BTreeMap<String, Peer>,
    calls: VecDeque<ApiCall>,
    events: VecDeque<PeerEvent>,
    stats: ClusterStats,
}

impl Cluster {
    pub fn new(config: ClusterConfig, started: Timestamp) -> Cluster {
        Cluster {
            config,
            started,
            peers: BTreeMap::new(),
            calls: VecDeque::new(),
            events: VecDeque::new(),
            stats: ClusterStats::default(),
        }
    }

    /// Takes one batch read from the shared stream. This instance's own batches are skipped (its
    /// calls are in its policy already); a previous instance of this host is a peer like any
    /// other (a restart reads back the calls it served before). Calls already seen from the same
    /// instance are skipped and counted.
    pub fn receive(&mut self, batch: Batch, now: Timestamp) {
        if batch.host == self.config.host && batch.instance == self.config.instance {
            return;
        }
        if batch.host == self.config.host && batch.sent_at > self.started {
            self.stats.host_name_conflicts += 1;
        }
        if !self.peers.contains_key(&batch.host) && self.peers.len() >= MAX_PEERS {
            self.stats.peers_over_limit += 1;
            return;
        }
        let timeout = self.config.peer_timeout;
        let peer = self.peers.entry(batch.host.clone()).or_insert(Peer {
            instance: batch.instance,
            last_seq: None,
            last_heard: batch.sent_at,
            watermark: batch.watermark,
            calls_received: 0,
            live: false,
        });
        if peer.instance != batch.instance {
            // A restart: the new instance numbers its calls afresh and waits for nothing of the
            // old one. (The stream is in publishing order, so the old one does not come back.)
            peer.instance = batch.instance;
            peer.last_seq = None;
            peer.watermark = batch.watermark;
        }
        peer.last_heard = peer.last_heard.max(batch.sent_at);
        peer.watermark = peer.watermark.max(batch.watermark);
        for (seq, call) in batch.calls {
            if peer.last_seq.is_some_and(|last| seq <= last) {
                self.stats.calls_deduplicated += 1;
                continue;
            }
            peer.last_seq = Some(seq);
            peer.calls_received += 1;
            self.stats.calls_received += 1;
            self.calls.push_back(call.into_call());
        }
        let alive = peer.last_heard.plus(timeout) > now;
        if alive && !peer.live {
            peer.live = true;
            self.events
                .push_back(PeerEvent::Joined { host: batch.host });
        }
    }

    /// The next peer's call to push into the policy.
    pub fn poll_call(&mut self) -> Option<ApiCall> {
        self.calls.pop_front()
    }

    /// The next thing that happened to a peer.
    pub(crate) fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// How far the policy may judge calls as far as the peers are concerned: the lowest
    /// watermark of the live peers (`None`: no live peer holds anything back).
    pub fn hold(&self) -> Option<Timestamp> {
        self.peers
            .values()
            .filter(|p| p.live)
            .map(|p| p.watermark)
            .min()
    }

    /// When the next live peer will have been silent for `peer_timeout`.
    pub(crate) fn poll_timeout(&self) -> Option<Timestamp> {
        self.peers
            .values()
            .filter(|p| p.live)
            .map(|p| p.last_heard.plus(self.config.peer_timeout))
            .min()
    }

    /// Drops the peers silent for `peer_timeout` as of `now` from the hold (each is a
    /// [`PeerEvent::Lost`]) and forgets those lost long ago.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let timeout = self.config.peer_timeout;
        for (host, peer) in &mut self.peers {
            if peer.live && peer.last_heard.plus(timeout) <= now {
                peer.live = false;
                self.stats.peers_lost += 1;
                self.events
                    .push_back(PeerEvent::Lost { host: host.clone() });
            }
        }
        self.peers
            .retain(|_, p| p.live || p.last_heard.plus(FORGET_LOST_PEER) > now);
    }

    /// The peers known, by name.
    pub(crate) fn peers(&self) -> Vec<PeerView> {
        self.peers
            .iter()
            .map(|(host, p)| PeerView {
                host: host.clone(),
                instance: p.instance,
                last_heard: p.last_heard,
                watermark: p.watermark,
                calls_received: p.calls_received,
                live: p.live,
            })
            .collect()
    }

    /// Live peers now.
    pub fn live_peers(&self) -> usize {
        self.peers.values().filter(|p| p.live).count()
    }

    pub fn stats(&self) -> &ClusterStats {
        &self.stats
    }
}

/// Numbers this host's calls and makes its batches (the publishing side of [`Cluster`]).
#[derive(Debug)]
pub struct Outbox {
    host: String,
    instance: u64,
    next_seq: u64,
    calls: Vec<(u64, SharedCall)>,
}

impl Outbox {
    pub fn new(host: String, instance: u64) -> Outbox {
        Outbox {
            host,
            instance,
            next_seq: 0,
            calls: Vec::new(),
        }
    }

    /// A call this host served, to be published with the next batch.
    pub fn push(&mut self, call: &ApiCall) {
        self.calls.push((self.next_seq, SharedCall::of(call)));
        self.next_seq += 1;
    }

    /// Whether calls wait to be published.
    pub(crate) fn has_calls(&self) -> bool {
        !self.calls.is_empty()
    }

    /// The calls so far as one batch, with `watermark` (the start of the oldest request still
    /// open here, or `now` when none is).
    pub fn take_batch(&mut self, now: Timestamp, watermark: Timestamp) -> Batch {
        Batch {
            host: self.host.clone(),
            instance: self.instance,
            sent_at: now,
            watermark,
            calls: std::mem::take(&mut self.calls),
        }
    }
}

#[cfg(test)]
mod tests;
