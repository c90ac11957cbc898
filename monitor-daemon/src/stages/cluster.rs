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
/// nothing else. It travels through Redis in the binary form of [`SharedCall::encode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedCall {
    /// Request start and response end, nanoseconds since the epoch (the serving host's clock).
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// The client (the refused-calls rule counts per address).
    pub(crate) client: IpAddr,
    pub(crate) client_port: u16,
    /// The token's keyed fingerprint, or why the call had no usable token.
    pub(crate) fingerprint: Option<TokenFingerprint>,
    pub(crate) token_problem: Option<TokenProblem>,
    pub(crate) status: Option<u16>,
    pub(crate) request_bytes: u64,
    pub(crate) response_bytes: Option<u64>,
    pub(crate) response_wire_bytes: Option<u64>,
    /// The parameters that make a call heavy.
    pub(crate) content: Option<String>,
    pub(crate) action: Option<String>,
    pub(crate) data_bytes: Option<u64>,
    pub(crate) records: u32,
    pub(crate) filter_logic: bool,
    pub(crate) return_metadata_only: Option<bool>,
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

/// Most calls one stream entry may carry (a publisher sends at most this many per entry; an entry
/// claiming more is rejected unread).
pub const MAX_CALLS_PER_ENTRY: usize = 1000;

/// Largest encoded call: every optional field present at its widest (IPv6, ten-byte varints,
/// both parameters at [`MAX_PARAM_CHARS`]).
pub const MAX_ENCODED_CALL: usize =
    2 + 2 * 10 + 16 + 3 + 8 + 1 + 5 * 10 + 2 * (1 + MAX_PARAM_CHARS) + 5;

/// Why an entry's calls could not be read (the entry is skipped and counted, never trusted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// It claims more calls than an entry may carry, or more bytes than they could take.
    TooLarge,
    /// The bytes end inside a call.
    Truncated,
    /// A value that no publisher writes (an unknown flag, a varint past 64 bits, a parameter
    /// that is not UTF-8 or too long, an end before the start).
    Invalid,
    /// Bytes left over after the calls it claims.
    Trailing,
}

// Which optional fields follow, in this order (a bit per field, two bytes little-endian).
const HAS_FINGERPRINT: u16 = 1;
const HAS_PROBLEM: u16 = 1 << 1;
const HAS_STATUS: u16 = 1 << 2;
const HAS_RESPONSE: u16 = 1 << 3;
const HAS_WIRE: u16 = 1 << 4;
const HAS_CONTENT: u16 = 1 << 5;
const HAS_ACTION: u16 = 1 << 6;
const HAS_DATA: u16 = 1 << 7;
const FILTER_LOGIC: u16 = 1 << 8;
const HAS_METADATA_ONLY: u16 = 1 << 9;
const METADATA_ONLY: u16 = 1 << 10;
const HAS_ALL_RECORDS: u16 = 1 << 11;
const ALL_RECORDS: u16 = 1 << 12;
const IPV6: u16 = 1 << 13;
const KNOWN_FLAGS: u16 = (1 << 14) - 1;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads the bytes of a stream entry's calls, never past their end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(WireError::Invalid);
            }
            value |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Invalid)
    }

    fn optional(&mut self, present: bool) -> Result<Option<u64>, WireError> {
        if present {
            self.varint().map(Some)
        } else {
            Ok(None)
        }
    }

    fn text(&mut self) -> Result<String, WireError> {
        let len = usize::from(self.byte()?);
        if len > MAX_PARAM_CHARS {
            return Err(WireError::Invalid);
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Invalid)
    }
}

impl SharedCall {
    /// Appends the call's compact binary form (what a stream entry carries, one after another):
    /// flags, then varints and fixed fields; a parameter longer than a peer would take is left
    /// out (the peer would drop it anyway).
    pub fn encode(&self, out: &mut Vec<u8>) {
        fn param(p: &Option<String>) -> Option<&String> {
            p.as_ref().filter(|s| s.len() <= MAX_PARAM_CHARS)
        }
        let (content, action) = (param(&self.content), param(&self.action));
        let mut flags = 0u16;
        let mut set = |bit: u16, on: bool| {
            if on {
                flags |= bit;
            }
        };
        set(HAS_FINGERPRINT, self.fingerprint.is_some());
        set(HAS_PROBLEM, self.token_problem.is_some());
        set(HAS_STATUS, self.status.is_some());
        set(HAS_RESPONSE, self.response_bytes.is_some());
        set(HAS_WIRE, self.response_wire_bytes.is_some());
        set(HAS_CONTENT, content.is_some());
        set(HAS_ACTION, action.is_some());
        set(HAS_DATA, self.data_bytes.is_some());
        set(FILTER_LOGIC, self.filter_logic);
        set(HAS_METADATA_ONLY, self.return_metadata_only.is_some());
        set(METADATA_ONLY, self.return_metadata_only == Some(true));
        set(HAS_ALL_RECORDS, self.all_records.is_some());
        set(ALL_RECORDS, self.all_records == Some(true));
        set(IPV6, self.client.is_ipv6());
        out.extend_from_slice(&flags.to_le_bytes());
        put_varint(out, self.start);
        put_varint(out, self.end.saturating_sub(self.start));
        match self.client {
            IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
            IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
        }
        put_varint(out, u64::from(self.client_port));
        if let Some(fp) = &self.fingerprint {
            out.extend_from_slice(&fp.0);
        }
        if let Some(problem) = self.token_problem {
            out.push(match problem {
                TokenProblem::Missing => 0,
                TokenProblem::Malformed => 1,
                TokenProblem::Unreadable => 2,
            });
        }
        for value in [
            self.status.map(u64::from),
            Some(self.request_bytes),
            self.response_bytes,
            self.response_wire_bytes,
            self.data_bytes,
            Some(u64::from(self.records)),
        ]
        .into_iter()
        .flatten()
        {
            put_varint(out, value);
        }
        for text in [content, action].into_iter().flatten() {
            out.push(text.len() as u8);
            out.extend_from_slice(text.as_bytes());
        }
    }

    /// Reads `count` calls from an entry's bytes, all or none: a hostile or corrupt entry is an
    /// error (bounded work: `count` and the bytes are checked against the limits first).
    pub fn decode_all(bytes: &[u8], count: usize) -> Result<Vec<SharedCall>, WireError> {
        if count > MAX_CALLS_PER_ENTRY || bytes.len() > count * MAX_ENCODED_CALL {
            return Err(WireError::TooLarge);
        }
        let mut reader = Reader(bytes);
        let calls = (0..count)
            .map(|_| Self::decode(&mut reader))
            .collect::<Result<Vec<_>, _>>()?;
        if reader.0.is_empty() {
            Ok(calls)
        } else {
            Err(WireError::Trailing)
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<SharedCall, WireError> {
        let flags = u16::from_le_bytes([r.byte()?, r.byte()?]);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::Invalid);
        }
        let has = |bit: u16| flags & bit != 0;
        let start = r.varint()?;
        let end = start.checked_add(r.varint()?).ok_or(WireError::Invalid)?;
        let client = if has(IPV6) {
            let octets: [u8; 16] = r.take(16)?.try_into().map_err(|_| WireError::Invalid)?;
            IpAddr::from(octets)
        } else {
            let octets: [u8; 4] = r.take(4)?.try_into().map_err(|_| WireError::Invalid)?;
            IpAddr::from(octets)
        };
        let client_port = u16::try_from(r.varint()?).map_err(|_| WireError::Invalid)?;
        let fingerprint = if has(HAS_FINGERPRINT) {
            let bytes: [u8; 8] = r.take(8)?.try_into().map_err(|_| WireError::Invalid)?;
            Some(TokenFingerprint(bytes))
        } else {
            None
        };
        let token_problem = if has(HAS_PROBLEM) {
            Some(match r.byte()? {
                0 => TokenProblem::Missing,
                1 => TokenProblem::Malformed,
                2 => TokenProblem::Unreadable,
                _ => return Err(WireError::Invalid),
            })
        } else {
            None
        };
        let status = r
            .optional(has(HAS_STATUS))?
            .map(|s| u16::try_from(s).map_err(|_| WireError::Invalid))
            .transpose()?;
        let request_bytes = r.varint()?;
        let response_bytes = r.optional(has(HAS_RESPONSE))?;
        let response_wire_bytes = r.optional(has(HAS_WIRE))?;
        let data_bytes = r.optional(has(HAS_DATA))?;
        let records = u32::try_from(r.varint()?).map_err(|_| WireError::Invalid)?;
        let content = if has(HAS_CONTENT) {
            Some(r.text()?)
        } else {
            None
        };
        let action = if has(HAS_ACTION) {
            Some(r.text()?)
        } else {
            None
        };
        let flag = |present: u16, value: u16| has(present).then(|| has(value));
        Ok(SharedCall {
            start,
            end,
            client,
            client_port,
            fingerprint,
            token_problem,
            status,
            request_bytes,
            response_bytes,
            response_wire_bytes,
            content,
            action,
            data_bytes,
            records,
            filter_logic: has(FILTER_LOGIC),
            return_metadata_only: flag(HAS_METADATA_ONLY, METADATA_ONLY),
            all_records: flag(HAS_ALL_RECORDS, ALL_RECORDS),
        })
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
