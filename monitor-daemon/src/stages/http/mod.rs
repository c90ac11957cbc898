//! HTTP/1.x and HTTP/2 exchanges from reassembled TCP streams.
//!
//! Owns request/response framing per connection: a connection whose client starts with the
//! HTTP/2 preface is HTTP/2 (frames, HPACK, multiplexed streams: [`h2`]); otherwise keep-alive and
//! pipelined requests matched to responses in order, Content-Length and chunked bodies, `Expect: 100-continue` and other 1xx
//! interim responses, and streaming gzip/deflate decoding of response bodies to learn their decoded
//! size under a work cap. It knows nothing about REDCap: an [`ExchangeSelector`] decides which
//! requests are interesting and receives their bodies; the others are framed and skipped.
//! Sans-IO: driven by [`StreamEvent`]s and the timestamps they carry. Never panics on input; every
//! rejection is counted in [`HttpStats`].

mod body;
mod connection;
pub(crate) mod decode;
mod h2;
mod head;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use crate::shared::model::{ConnectionId, Endpoint, StreamEvent, Timestamp};
use crate::shared::settings::{Problem, at_least_one};
use crate::shared::token::TokenFingerprint;
use connection::Ctx;
use h2::Session;
use head::HeaderSlots;
use serde::Deserialize;

/// Decoded bytes are written here, a piece at a time, and never read.
const DECODE_SCRATCH_BYTES: usize = 32 * 1024;

/// Bounds on what one connection may make the parser hold or do.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Bytes of a request or response head kept whole; past them a head is skimmed (only the
    /// lines framing and selection need are kept, up to as many bytes again), so a padded head
    /// is still read. Also the largest HTTP/2 header block (HPACK-encoded).
    pub max_head_bytes: usize,
    /// Most header lines accepted in one head (the default is above Apache's 100, so that every
    /// head Apache serves is read).
    pub max_headers: usize,
    /// Most requests waiting for their responses on one connection; for HTTP/2, most selected
    /// streams open at once.
    pub max_pending_requests: usize,
    /// Decoding of one response body stops after this many decoded bytes (the work cap).
    pub max_decoded_body_bytes: u64,
    /// Heap all connections' parsing state may hold together (head buffers, waiting requests
    /// and their body parsers, response decoders, HTTP/2 tables): past it, the connection
    /// holding the most starts afresh (see [`HttpStats::state_budget_resets`]). The
    /// per-connection limits alone multiply by the connection count.
    pub max_state_bytes_total: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            max_headers: 128,
            max_pending_requests: 32,
            max_decoded_body_bytes: 1 << 30,
            max_state_bytes_total: 256 << 20,
        }
    }
}

/// The HTTP version a request was sent with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum HttpVersion {
    #[serde(rename = "1.0")]
    Http10,
    #[default]
    #[serde(rename = "1.1")]
    Http11,
    /// HTTP/2 (over TLS with ALPN `h2`, or `h2c` with prior knowledge).
    #[serde(rename = "2")]
    Http2,
}

/// The parts of a request head that later stages need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHead {
    pub(crate) version: HttpVersion,
    pub(crate) method: String,
    /// The request target as sent (path and query).
    pub(crate) target: String,
    pub(crate) content_type: Option<String>,
    pub(crate) content_length: Option<u64>,
    pub(crate) chunked: bool,
    pub(crate) expect_continue: bool,
    pub(crate) host: Option<String>,
    /// Every `X-Forwarded-For` line's value, joined by commas, at most its rightmost
    /// [`MAX_FORWARDED_BYTES`] (see [`append_forwarded`]).
    pub(crate) forwarded_for: Option<String>,
    /// Every `Forwarded` (RFC 7239) line's value, kept the same way.
    pub(crate) forwarded: Option<String>,
}

/// Bytes of a client-address header kept: its right end, where the proxies nearest the server
/// wrote (the only part a trusted proxy vouches for; see `stages::redcap::client`). Enough for
/// dozens of hops.
pub(crate) const MAX_FORWARDED_BYTES: usize = 1024;

/// Adds one header line's value to a client-address header kept so far: repeated lines are one
/// list (RFC 9110 §5.3), and past [`MAX_FORWARDED_BYTES`] the leftmost elements are dropped
/// whole.
pub(crate) fn append_forwarded(slot: &mut Option<String>, value: &[u8]) {
    let value = String::from_utf8_lossy(value.trim_ascii());
    if value.is_empty() {
        return;
    }
    let kept = slot.get_or_insert_default();
    if !kept.is_empty() {
        kept.push_str(", ");
    }
    kept.push_str(&value);
    if kept.len() > MAX_FORWARDED_BYTES {
        let mut cut = kept.len() - MAX_FORWARDED_BYTES;
        while !kept.is_char_boundary(cut) {
            cut += 1;
        }
        // Drop whole elements: a cut one would read as another address.
        let cut = kept[cut..]
            .find(',')
            .map_or(kept.len(), |comma| cut + comma + 1);
        kept.replace_range(..cut, "");
        if kept.trim().is_empty() {
            *slot = None;
        }
    }
}

impl RequestHead {
    /// Heap its strings hold (for the stage's state budget).
    pub(crate) fn held_bytes(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
        self.method.capacity()
            + self.target.capacity()
            + text(&self.content_type)
            + text(&self.host)
            + text(&self.forwarded_for)
            + text(&self.forwarded)
    }

    /// The target without its query string.
    pub(crate) fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// Receives the (de-chunked) body of a selected request as it arrives.
pub trait RequestBody {
    fn feed(&mut self, chunk: &[u8]);
    /// `len` body bytes were lost in capture.
    fn gap(&mut self, len: u64);
    /// Heap the consumer holds (for the stage's state budget).
    fn held_bytes(&self) -> usize {
        0
    }
    /// The fingerprint of the token the body carries as read so far, if it is known (a later
    /// field of the same name may still replace it).
    fn token_fingerprint(&self) -> Option<TokenFingerprint> {
        None
    }
}

/// What the policy's reorder hold needs to know of one selected request still open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpenRequest {
    pub(crate) ts_start: Timestamp,
    /// The connection's client address (a proxy's, when one carries the request).
    pub(crate) peer: IpAddr,
    pub(crate) token: OpenToken,
}

/// Whose call an open request will be, as far as its bytes tell yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenToken {
    /// Neither a token nor the body's end has been read: it could be anyone's.
    Unknown,
    /// The body carries this token (`None`: the body ended without a usable one).
    Known(Option<TokenFingerprint>),
}

impl OpenRequest {
    pub(crate) fn of<B: RequestBody>(exchange: &HttpExchange<B>, request_done: bool) -> Self {
        let token = match exchange.body.token_fingerprint() {
            Some(fp) => OpenToken::Known(Some(fp)),
            None if request_done => OpenToken::Known(None),
            None => OpenToken::Unknown,
        };
        OpenRequest {
            ts_start: exchange.ts_request_start,
            peer: exchange.client.ip,
            token,
        }
    }
}

/// A multiset of start times: how many open requests started at each.
#[derive(Default)]
struct Starts(BTreeMap<Timestamp, u32>);

impl Starts {
    fn add(&mut self, ts: Timestamp) {
        *self.0.entry(ts).or_default() += 1;
    }
    fn remove(&mut self, ts: Timestamp) {
        if let Some(n) = self.0.get_mut(&ts) {
            *n -= 1;
            if *n == 0 {
                self.0.remove(&ts);
            }
        }
    }
    fn first(&self) -> Option<Timestamp> {
        self.0.keys().next().copied()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The open requests of every connection, indexed for the policy's reorder hold.
#[derive(Default)]
struct OpenIndex {
    of: HashMap<ConnectionId, Vec<OpenRequest>>,
    unknown: Starts,
    by_token: HashMap<TokenFingerprint, Starts>,
    by_peer: HashMap<IpAddr, Starts>,
}

impl OpenIndex {
    /// Replaces `conn`'s open requests with `now` (sorted or not).
    fn update(&mut self, conn: ConnectionId, now: &mut Vec<OpenRequest>) {
        let before = self.of.get(&conn).map_or(&[][..], Vec::as_slice);
        if before == now.as_slice() {
            return;
        }
        let before = self.of.remove(&conn).unwrap_or_default();
        for r in &before {
            self.index(r, false);
        }
        for r in now.iter() {
            self.index(r, true);
        }
        if !now.is_empty() {
            self.of.insert(conn, std::mem::take(now));
        }
    }

    fn index(&mut self, r: &OpenRequest, add: bool) {
        let apply = |starts: &mut Starts| {
            if add {
                starts.add(r.ts_start);
            } else {
                starts.remove(r.ts_start);
            }
        };
        match r.token {
            OpenToken::Unknown => apply(&mut self.unknown),
            OpenToken::Known(token) => {
                if let Some(fp) = token {
                    let starts = self.by_token.entry(fp).or_default();
                    apply(starts);
                    if starts.is_empty() {
                        self.by_token.remove(&fp);
                    }
                }
                let starts = self.by_peer.entry(r.peer).or_default();
                apply(starts);
                if starts.is_empty() {
                    self.by_peer.remove(&r.peer);
                }
            }
        }
    }
}

/// A connection on which every request still waiting is one the selector did not want, and
/// everything the client sent has been read: nothing is worth reading until its next request,
/// which starts `client_remaining` bytes after what was delivered (the rest of the current
/// request's body, known from its `Content-Length`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Releasable {
    pub(crate) client: Endpoint,
    pub(crate) server: Endpoint,
    pub(crate) client_remaining: u64,
}

/// Decides which requests become [`HttpExchange`]s and builds the body consumer for each.
pub trait ExchangeSelector {
    type Body: RequestBody;
    fn select(&mut self, head: &RequestHead) -> Option<Self::Body>;
}

/// How a response body was encoded on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ContentCoding {
    #[default]
    Identity,
    Gzip,
    Deflate,
    /// A coding we do not decode (br, zstd, ...): the decoded size is unknown.
    Other,
}

/// What came of decoding a response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BodyDecoding {
    /// Nothing to decode: decoded size equals wire size.
    #[default]
    Identity,
    /// Fully decoded; the decoded size is exact.
    Decoded,
    /// Decoding stopped at the work cap; the decoded size is a lower bound.
    Capped,
    /// The body was not valid for its coding, or a gap interrupted it; size unknown past that.
    Failed,
    /// A coding we do not decode.
    Unsupported,
}

/// A response as the pipeline needs it: status, sizes, timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResponseSummary {
    pub(crate) status: u16,
    /// First byte of the final (non-1xx) response.
    pub(crate) ts_first_byte: Timestamp,
    pub(crate) ts_last_byte: Timestamp,
    /// Body bytes as sent (after de-chunking, before content decoding).
    pub(crate) wire_body_bytes: u64,
    /// Body bytes after content decoding (see `decoding` for how exact this is): the wire size
    /// for `Identity` and `Unsupported`, the cap for `Capped`, the bytes decoded before the
    /// failure for `Failed`.
    pub(crate) decoded_body_bytes: u64,
    pub(crate) coding: ContentCoding,
    pub(crate) decoding: BodyDecoding,
    /// The body is an HTML page (`Content-Type: text/html`).
    pub(crate) html: bool,
}

impl ResponseSummary {
    /// An error page of the web server itself rather than an answer of the application: Apache
    /// and nginx refuse a request they will not hand to PHP (a malformed or ambiguous head, a
    /// path above the root or with an encoded slash, no `Host`) with one of these statuses and
    /// an HTML page, while REDCap's API answers its own errors in the format asked for (XML,
    /// JSON, CSV). Such a request never ran as an API call. A 5xx is not one: it may be the
    /// application failing under the call.
    pub(crate) fn is_web_server_refusal(&self) -> bool {
        self.html
            && matches!(
                self.status,
                400 | 404 | 405 | 408 | 411 | 413 | 414 | 417 | 431 | 501 | 505
            )
    }
}

/// Why an exchange is reported as incomplete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Incomplete {
    /// Bytes of the request were not captured.
    RequestGap,
    /// Bytes of the response were not captured.
    ResponseGap,
    /// The connection ended (or was evicted) before the response did.
    NoResponse,
    /// The response ended before its framing said it would.
    ResponseTruncated,
    /// The connection ended (or was evicted) before the request body did.
    RequestTruncated,
    /// A message's framing was invalid (bad chunk, unusable response head); the direction was
    /// resynced after it.
    Malformed,
    /// The request's start line was read but the rest of its head could not be (malformed, too
    /// many headers, over `max_head_bytes`, unusable framing): the exchange carries only its
    /// method and target, and none of its body.
    UnreadableHead,
}

/// One request and its response on one connection.
#[derive(Debug)]
pub struct HttpExchange<B> {
    // Only the unit tests read it (to tell the exchanges of several connections apart); the
    // stages after this one key by client and server.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) conn: ConnectionId,
    pub(crate) client: Endpoint,
    pub(crate) server: Endpoint,
    pub(crate) request: RequestHead,
    pub(crate) body: B,
    /// Request body bytes as framed (after de-chunking), including bytes lost in gaps.
    pub(crate) request_body_bytes: u64,
    /// First byte of the request head.
    pub(crate) ts_request_start: Timestamp,
    /// Last byte of the request body.
    pub(crate) ts_request_end: Timestamp,
    pub(crate) response: Option<ResponseSummary>,
    /// `None` when every byte of both messages was seen and framed. When several things went
    /// wrong, the first one seen is kept.
    pub(crate) incomplete: Option<Incomplete>,
}

/// Counters the HTTP stage keeps; telemetry reads them.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct HttpStats {
    pub(crate) requests: u64,
    pub(crate) responses: u64,
    pub(crate) interim_responses: u64,
    pub(crate) exchanges: u64,
    pub(crate) bad_request_head: u64,
    pub(crate) bad_response_head: u64,
    pub(crate) head_too_large: u64,
    pub(crate) bad_chunk: u64,
    pub(crate) unmatched_responses: u64,
    pub(crate) pending_overflow: u64,
    pub(crate) resyncs: u64,
    pub(crate) decode_failed: u64,
    pub(crate) decode_capped: u64,
    /// Heads with more header lines than `max_headers`.
    pub(crate) too_many_headers: u64,
    /// Content-Length that is not a number, disagrees with itself, or is beyond belief.
    pub(crate) bad_content_length: u64,
    /// Directions whose first bytes were not a message start (picked up mid-stream).
    pub(crate) midstream_pickups: u64,
    /// Gaps that swallowed the start of at least one request: the server answers it, but it is
    /// not reported (its method, path and token are unknown). A lower bound on requests lost.
    pub(crate) request_starts_lost: u64,
    /// Connections that switched protocols (101, or CONNECT answered 2xx); no longer parsed.
    pub(crate) upgrades: u64,
    /// Directions given up on: no message start found in their first bytes (TLS, not HTTP).
    pub(crate) not_http: u64,
    /// Selected requests sent behind an answer that closed the connection (`Connection:
    /// close`, HTTP/1.0): the server never read them, so they are not calls.
    pub(crate) unread_after_close: u64,
    /// Events for connections never opened (or already closed); ignored.
    pub(crate) unknown_connection_events: u64,
    /// Connections that held the most parsing state when all together went over
    /// `http.max_state_bytes_total`: their waiting requests were given up (calls marked
    /// incomplete) and they were read afresh from their next message.
    pub state_budget_resets: u64,
    /// Parsing state held by all connections now (an estimate of its heap, in bytes).
    pub state_bytes: u64,
    /// HTTP/2 connections seen (the client's first bytes were the HTTP/2 preface).
    pub(crate) h2_connections: u64,
    /// HTTP/2 header blocks HPACK could not decode: that direction is not read any further.
    pub(crate) h2_hpack_errors: u64,
    /// HTTP/2 header blocks or control frames over their limit: that direction is not read any
    /// further.
    pub(crate) h2_frame_too_large: u64,
    /// HTTP/2 API requests not followed because `max_pending_requests` were open on their
    /// connection.
    pub(crate) h2_too_many_streams: u64,
    /// HTTP/2 directions given up at a capture gap (frame boundaries are lost with it).
    pub(crate) h2_gaps: u64,
    /// HTTP/2 frames that break the protocol (padding longer than the frame, a CONTINUATION out
    /// of place, a control frame of the wrong size): that direction is not read any further.
    pub(crate) h2_protocol_errors: u64,
    /// HTTP/2 API requests the server refused unprocessed (RST_STREAM REFUSED_STREAM, or above
    /// GOAWAY's last stream): not calls, not reported.
    pub(crate) h2_streams_refused: u64,
    /// Heads longer than `max_head_bytes` that were read by skimming (only the header lines
    /// framing and selection need kept past the limit).
    pub(crate) heads_skimmed: u64,
    /// Request heads read only through leniency a strict parser (and, for most of it, Apache's
    /// default) would refuse: several spaces in the request line, folded headers, blanks
    /// before a colon, invalid header lines. Read anyway, so that no spelling either server
    /// serves escapes; a sign of odd or evasive clients.
    pub(crate) lenient_request_heads: u64,
    /// Connections switched to HTTP/2 by `Upgrade: h2c` (answered 101; Debian's mod_http2
    /// allows it by default): read as HTTP/2 from the client's preface on.
    pub(crate) h2c_upgrades: u64,
}

impl HttpStats {
    /// Counts how a selected response's body decoding ended (HTTP/1.x and HTTP/2 alike).
    pub(crate) fn count_decoding(&mut self, decoding: BodyDecoding) {
        match decoding {
            BodyDecoding::Failed => self.decode_failed += 1,
            BodyDecoding::Capped => self.decode_capped += 1,
            _ => {}
        }
    }
}

/// Turns reassembled streams into [`HttpExchange`]s, one connection state per open connection.
///
/// An exchange is emitted once, when both its request and its response have ended, or when its
/// connection closes (or it is evicted from a full pending queue) with `incomplete` saying why.
/// After a gap or broken framing a direction resyncs at the next plausible start line (at a line
/// start, or a request line directly after body text); a request whose head was not seen is
/// never emitted, but is kept as a placeholder when its response is still owed, so that later
/// responses still match their requests.
pub struct HttpTracker<S: ExchangeSelector> {
    selector: S,
    limits: HttpLimits,
    stats: HttpStats,
    connections: HashMap<ConnectionId, Session<S::Body>>,
    /// Each connection's oldest open selected request, kept up to date after every event so
    /// that the oldest over all connections is the first entry, not a walk over every
    /// connection (a flood of connections with open requests made that walk quadratic).
    open_requests: BTreeSet<(Timestamp, ConnectionId)>,
    open_request_of: HashMap<ConnectionId, Timestamp>,
    /// Every connection's open requests by whose they are known to be (see [`OpenRequest`]).
    open_index: OpenIndex,
    open_scratch: Vec<OpenRequest>,
    /// What each connection's parsing state holds, indexed by size so that the largest is
    /// found at once when the total goes over the budget.
    held_by_size: BTreeSet<(usize, ConnectionId)>,
    held_of: HashMap<ConnectionId, usize>,
    held_total: usize,
    /// Connections with nothing worth reading until the client's next request.
    releasable: Vec<Releasable>,
    /// Decompressed body bytes (tokens, in a compressed request): zeroed when dropped.
    scratch: zeroize::Zeroizing<Box<[u8]>>,
    request_head: RequestHead,
    header_slots: HeaderSlots,
}

impl<S: ExchangeSelector> HttpTracker<S> {
    pub fn new(limits: HttpLimits, selector: S) -> Self {
        Self {
            selector,
            limits,
            stats: HttpStats::default(),
            connections: HashMap::new(),
            open_requests: BTreeSet::new(),
            open_request_of: HashMap::new(),
            open_index: OpenIndex::default(),
            open_scratch: Vec::new(),
            held_by_size: BTreeSet::new(),
            held_of: HashMap::new(),
            held_total: 0,
            releasable: Vec::new(),
            scratch: zeroize::Zeroizing::new(vec![0; DECODE_SCRATCH_BYTES].into_boxed_slice()),
            request_head: RequestHead::default(),
            header_slots: HeaderSlots::default(),
        }
    }

    /// Feeds one reassembly event; finished exchanges are appended to `out` in completion order.
    pub fn on_event(&mut self, event: &StreamEvent<'_>, out: &mut Vec<HttpExchange<S::Body>>) {
        let (connections, mut ctx) = self.split(out);
        let mut releasable = None;
        match *event {
            StreamEvent::Opened {
                conn,
                client,
                server,
                ..
            } => {
                let fresh = Session::new(conn, client, server);
                if let Some(previous) = connections.insert(conn, fresh) {
                    previous.close(&mut ctx);
                }
            }
            StreamEvent::Data {
                conn,
                dir,
                ts,
                bytes,
            } => match connections.get_mut(&conn) {
                Some(connection) => {
                    connection.on_data(dir, ts, bytes, &mut ctx);
                    releasable = connection.releasable();
                }
                None => ctx.stats.unknown_connection_events += 1,
            },
            StreamEvent::Gap { conn, dir, ts, len } => match connections.get_mut(&conn) {
                Some(connection) => connection.on_gap(dir, ts, len, &mut ctx),
                None => ctx.stats.unknown_connection_events += 1,
            },
            StreamEvent::Closed { conn, .. } => match connections.remove(&conn) {
                Some(connection) => connection.close(&mut ctx),
                None => ctx.stats.unknown_connection_events += 1,
            },
        }
        self.releasable.extend(releasable);
        let conn = match *event {
            StreamEvent::Opened { conn, .. }
            | StreamEvent::Data { conn, .. }
            | StreamEvent::Gap { conn, .. }
            | StreamEvent::Closed { conn, .. } => conn,
        };
        self.note_held_bytes(conn);
        if self.held_total > self.limits.max_state_bytes_total {
            self.reset_largest(out);
        }
        self.note_open_request(conn);
    }

    /// The connections, and the context their parsing runs in: disjoint borrows of the tracker.
    fn split<'a>(
        &'a mut self,
        out: &'a mut Vec<HttpExchange<S::Body>>,
    ) -> (&'a mut HashMap<ConnectionId, Session<S::Body>>, Ctx<'a, S>) {
        let HttpTracker {
            selector,
            limits,
            stats,
            connections,
            scratch,
            request_head,
            header_slots,
            ..
        } = self;
        let ctx = Ctx {
            selector,
            limits,
            stats,
            scratch,
            request_head,
            header_slots,
            out,
        };
        (connections, ctx)
    }

    /// Brings `conn`'s entry in the index of held state up to date.
    fn note_held_bytes(&mut self, conn: ConnectionId) {
        let now = self.connections.get(&conn).map(Session::held_bytes);
        let before = self.held_of.get(&conn).copied();
        if now == before {
            return;
        }
        if let Some(bytes) = before {
            self.held_by_size.remove(&(bytes, conn));
            self.held_of.remove(&conn);
            self.held_total -= bytes;
        }
        if let Some(bytes) = now {
            self.held_by_size.insert((bytes, conn));
            self.held_of.insert(conn, bytes);
            self.held_total += bytes;
        }
        self.stats.state_bytes = self.held_total as u64;
    }

    /// Over the budget: the connections holding the most give up their waiting requests and
    /// start afresh (reading from their next message, as a connection picked up mid-stream),
    /// until the total fits. Whoever piles up state pays for it, not the connection that
    /// happened to cross the line.
    fn reset_largest(&mut self, out: &mut Vec<HttpExchange<S::Body>>) {
        while self.held_total > self.limits.max_state_bytes_total {
            let Some(&(held, conn)) = self.held_by_size.last() else {
                return;
            };
            let (connections, mut ctx) = self.split(out);
            let Some(session) = connections.remove(&conn) else {
                return;
            };
            let (client, server) = session.endpoints();
            session.close(&mut ctx);
            ctx.stats.state_budget_resets += 1;
            self.connections
                .insert(conn, Session::new(conn, client, server));
            self.note_held_bytes(conn);
            self.note_open_request(conn);
            if self.held_of.get(&conn).is_some_and(|&now| now >= held) {
                // Only fresh connections are left: a budget below their bare cost cannot be
                // met by resetting them again.
                return;
            }
        }
    }

    /// Brings `conn`'s entry in the index of open requests up to date (a look at its own
    /// pending requests, which are bounded).
    fn note_open_request(&mut self, conn: ConnectionId) {
        let mut open = std::mem::take(&mut self.open_scratch);
        open.clear();
        if let Some(c) = self.connections.get(&conn) {
            c.open_requests(&mut open);
        }
        self.open_index.update(conn, &mut open);
        self.open_scratch = open;
        let now = self
            .connections
            .get(&conn)
            .and_then(|c| c.oldest_open_exchange());
        let before = self.open_request_of.get(&conn).copied();
        if now == before {
            return;
        }
        if let Some(ts) = before {
            self.open_requests.remove(&(ts, conn));
            self.open_request_of.remove(&conn);
        }
        if let Some(ts) = now {
            self.open_requests.insert((ts, conn));
            self.open_request_of.insert(conn, ts);
        }
    }

    pub(crate) fn stats(&self) -> &HttpStats {
        &self.stats
    }

    /// Moves into `out` the connections found, since the last call, to have nothing worth
    /// reading until the client's next request (see [`Releasable`]). Reassembly may then stop
    /// passing their bytes on, and the capture stop copying them.
    pub(crate) fn take_releasable(&mut self, out: &mut Vec<Releasable>) {
        out.append(&mut self.releasable);
    }

    /// Connections currently tracked.
    #[cfg(test)]
    pub(crate) fn connections(&self) -> usize {
        self.connections.len()
    }

    /// When the oldest selected request that has not finished started: no exchange emitted
    /// later can have started before it. O(1): the index is kept by [`Self::on_event`].
    pub(crate) fn oldest_open_exchange(&self) -> Option<Timestamp> {
        // The unit tests check the index against the walk it replaces.
        #[cfg(test)]
        assert_eq!(
            self.open_requests.first().map(|&(ts, _)| ts),
            self.connections
                .values()
                .filter_map(|c| c.oldest_open_exchange())
                .min()
        );
        self.open_requests.first().map(|&(ts, _)| ts)
    }

    /// Start of the oldest open request whose token is not known yet (see [`OpenToken`]) among
    /// those that started after `after`.
    pub(crate) fn oldest_open_unknown_after(&self, after: Timestamp) -> Option<Timestamp> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.open_index
            .unknown
            .0
            .range((Excluded(after), Unbounded))
            .next()
            .map(|(&ts, _)| ts)
    }

    /// Start of the oldest open request known to carry `token`.
    pub(crate) fn oldest_open_of_token(&self, token: &TokenFingerprint) -> Option<Timestamp> {
        self.open_index.by_token.get(token).and_then(Starts::first)
    }

    /// Start of the oldest open request from `peer` whose token is known (or known missing).
    pub(crate) fn oldest_open_from_peer(&self, peer: IpAddr) -> Option<Timestamp> {
        self.open_index.by_peer.get(&peer).and_then(Starts::first)
    }
}

/// The HTTP/1.x tests; their harness serves the HTTP/2 tests too.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct HttpConfig {
    pub(crate) max_head_bytes: usize,
    pub(crate) max_headers: usize,
    pub(crate) max_pending_requests: usize,
    /// Work cap for decoding one gzip/deflate response body.
    pub(crate) max_decoded_body_bytes: u64,
    /// Heap all connections' parsing state may hold together (see [`HttpLimits`]).
    pub(crate) max_state_bytes_total: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let d = crate::stages::http::HttpLimits::default();
        Self {
            max_head_bytes: d.max_head_bytes,
            max_headers: d.max_headers,
            max_pending_requests: d.max_pending_requests,
            max_decoded_body_bytes: d.max_decoded_body_bytes,
            max_state_bytes_total: d.max_state_bytes_total,
        }
    }
}

impl HttpConfig {
    /// What is wrong with `[http]`, each problem keyed by its full path.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        at_least_one(
            &mut problems,
            &[
                ("http.max_head_bytes", self.max_head_bytes as u64),
                ("http.max_headers", self.max_headers as u64),
                (
                    "http.max_pending_requests",
                    self.max_pending_requests as u64,
                ),
                (
                    "http.max_state_bytes_total",
                    self.max_state_bytes_total as u64,
                ),
            ],
        );
        problems
    }
}

#[cfg(test)]
mod tests;
