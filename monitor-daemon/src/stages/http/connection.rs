//! One connection's HTTP state: a request reader on the client's bytes, a response reader on the
//! server's, and the requests waiting for their responses in order.
//!
//! Matches responses to requests first in, first out; resyncs a direction after gaps and broken
//! framing; emits each selected request exactly once. Holds at most one head buffer per direction
//! and `max_pending_requests` requests; never copies a body.

use std::collections::VecDeque;

use super::body::{BodyFeed, BodyFraming, GapOutcome};
use super::decode::BodyDecoder;
use super::head::{
    HeadError, HeadFeed, HeadReader, HeaderSlots, MessageKind, RequestFraming, ResponseInfo,
    TransferCoding, fill_from_start_line, find_message_start,
};
use super::{
    BodyDecoding, ContentCoding, ExchangeSelector, HttpExchange, HttpLimits, HttpStats, Incomplete,
    OpenRequest, RequestBody, RequestHead, ResponseSummary,
};
use crate::shared::model::{ConnectionId, Direction, Endpoint, Timestamp};

/// A direction that shows no message start within this many bytes is taken not to be HTTP.
const NOT_HTTP_AFTER_BYTES: u64 = 256 * 1024;

/// The tracker's shared scratch and outputs, lent to one connection for one event.
pub(crate) struct Ctx<'a, S: ExchangeSelector> {
    pub(crate) selector: &'a mut S,
    pub(crate) limits: &'a HttpLimits,
    pub(crate) stats: &'a mut HttpStats,
    /// Decoded bytes land here and are never read.
    pub(crate) scratch: &'a mut [u8],
    pub(crate) request_head: &'a mut RequestHead,
    pub(crate) header_slots: &'a mut HeaderSlots,
    pub(crate) out: &'a mut Vec<HttpExchange<S::Body>>,
}

#[derive(Debug)]
enum Phase {
    /// Collecting a head; the first bytes of a direction may turn out to be mid-stream.
    Head,
    /// Discarding bytes until something that may start a message.
    Seek {
        at_line_start: bool,
    },
    Body(BodyFraming),
    /// Not HTTP any more (after an upgrade).
    Stopped,
}

/// What one direction is doing.
struct Reader {
    kind: MessageKind,
    phase: Phase,
    head: HeadReader,
    /// A message start has been confirmed on this direction.
    synced: bool,
    /// Looking for a message start after losing the framing; false starts are not counted.
    resyncing: bool,
    /// A gap swallowed the start of a message: if bytes must be skipped before the next start,
    /// they are the rest of a message that still counts (a request the server will answer, or
    /// the response owed to the oldest pending request).
    start_lost: bool,
    /// Bytes skipped before the first message start: past a limit, this is not HTTP.
    skipped_unsynced: u64,
}

impl Reader {
    fn new(kind: MessageKind) -> Self {
        Self {
            kind,
            phase: Phase::Head,
            head: HeadReader::new(kind),
            synced: false,
            resyncing: false,
            start_lost: false,
            skipped_unsynced: 0,
        }
    }

    /// Loses the framing: skip to the next plausible message start.
    fn resync(&mut self, at_line_start: bool, stats: &mut HttpStats) {
        if !self.resyncing {
            stats.resyncs += 1;
        }
        self.seek(at_line_start);
    }

    fn seek(&mut self, at_line_start: bool) {
        self.resyncing = true;
        self.head.reset();
        self.phase = Phase::Seek { at_line_start };
    }

    fn expect_head(&mut self) {
        self.head.reset();
        self.phase = Phase::Head;
    }

    /// Skips to a candidate message start; returns the unconsumed input.
    fn skip_to_start<'i>(
        &mut self,
        input: &'i [u8],
        at_line_start: bool,
        stats: &mut HttpStats,
    ) -> &'i [u8] {
        let found = find_message_start(input, at_line_start, self.kind);
        if !self.synced {
            let skipped = found.unwrap_or(input.len()) as u64;
            self.skipped_unsynced = self.skipped_unsynced.saturating_add(skipped);
            if self.skipped_unsynced > NOT_HTTP_AFTER_BYTES {
                // Not worth the scanning (TLS, another protocol): leave this direction alone.
                stats.not_http += 1;
                self.phase = Phase::Stopped;
                return &[];
            }
        }
        match found {
            Some(at) => {
                self.head.reset();
                self.phase = Phase::Head;
                input.get(at..).unwrap_or_default()
            }
            None => {
                self.phase = Phase::Seek {
                    at_line_start: input.last().map_or(at_line_start, |&b| b == b'\n'),
                };
                &[]
            }
        }
    }

    /// Feeds bytes to the head being collected; returns the unconsumed input and what happened.
    fn feed_head<'i>(
        &mut self,
        input: &'i [u8],
        ts: Timestamp,
        limits: &HttpLimits,
        stats: &mut HttpStats,
    ) -> (&'i [u8], HeadStep) {
        let rest = |consumed: usize| input.get(consumed..).unwrap_or_default();
        match self
            .head
            .feed(input, ts, limits.max_head_bytes, limits.max_headers)
        {
            HeadFeed::NeedMore => (&[], HeadStep::Partial),
            HeadFeed::Complete { consumed } => {
                stats.heads_skimmed += u64::from(self.head.skimmed());
                (rest(consumed), HeadStep::Complete)
            }
            HeadFeed::Implausible {
                consumed,
                at_line_start,
            } => {
                self.reject_start(at_line_start, stats);
                (rest(consumed), HeadStep::NotAMessage)
            }
            HeadFeed::TooLarge {
                consumed,
                at_line_start,
            } => {
                // The caller resyncs once it has read what it needs of the head.
                stats.head_too_large += 1;
                let real_message = self.head.start_line_seen();
                (
                    rest(consumed),
                    HeadStep::TooLarge {
                        real_message,
                        at_line_start,
                    },
                )
            }
        }
    }

    /// A head that cannot start a message: count why and start seeking.
    fn reject_start(&mut self, at_line_start: bool, stats: &mut HttpStats) {
        if self.resyncing {
            self.seek(at_line_start);
        } else if !self.synced {
            stats.midstream_pickups += 1;
            self.seek(at_line_start);
        } else {
            match self.kind {
                MessageKind::Request => stats.bad_request_head += 1,
                MessageKind::Response => stats.bad_response_head += 1,
            }
            self.resync(at_line_start, stats);
        }
    }
}

/// What feeding a head did.
enum HeadStep {
    Partial,
    Complete,
    NotAMessage,
    /// Over the size limit; `real_message` when its start line was plausible (it will be
    /// answered). The reader must be resynced (at `at_line_start`).
    TooLarge {
        real_message: bool,
        at_line_start: bool,
    },
}

/// A request waiting for its response (and possibly for the rest of its own body).
struct Pending<B> {
    /// `None` when the selector did not want it (or its head was unusable): framed, not emitted.
    exchange: Option<HttpExchange<B>>,
    /// A HEAD request's response has no body.
    head_method: bool,
    connect: bool,
    /// The request asked to switch to HTTP/2 (`Upgrade: h2c`).
    asks_h2c: bool,
    request_done: bool,
    response_done: bool,
}

impl<B> Pending<B> {
    fn mark(&mut self, why: Incomplete) {
        if let Some(exchange) = self.exchange.as_mut() {
            exchange.incomplete.get_or_insert(why);
        }
    }
}

/// The final response being read.
struct ResponseInProgress {
    /// Whether it belongs to the first pending request without a response (else it is skipped).
    matched: bool,
    status: u16,
    ts_first_byte: Timestamp,
    ts_last_byte: Timestamp,
    wire_body_bytes: u64,
    coding: ContentCoding,
    html: bool,
    closes: bool,
    /// Only for selected exchanges: the others are framed, not decoded.
    decoder: Option<BodyDecoder>,
    incomplete: Option<Incomplete>,
}

impl ResponseInProgress {
    fn summary(&self, stats: &mut HttpStats) -> ResponseSummary {
        let (decoding, decoded_body_bytes) = match (&self.decoder, self.coding) {
            (Some(decoder), _) => decoder.outcome(self.wire_body_bytes),
            (None, ContentCoding::Identity) => (BodyDecoding::Identity, self.wire_body_bytes),
            (None, ContentCoding::Other) => (BodyDecoding::Unsupported, self.wire_body_bytes),
            // Decoding was abandoned (the exchange was evicted mid-response).
            (None, _) => (BodyDecoding::Failed, 0),
        };
        stats.count_decoding(decoding);
        ResponseSummary {
            status: self.status,
            ts_first_byte: self.ts_first_byte,
            ts_last_byte: self.ts_last_byte,
            wire_body_bytes: self.wire_body_bytes,
            decoded_body_bytes,
            coding: self.coding,
            html: self.html,
            decoding,
        }
    }
}

pub(crate) struct Connection<B> {
    id: ConnectionId,
    client: Endpoint,
    server: Endpoint,
    requests: Reader,
    responses: Reader,
    response: Option<ResponseInProgress>,
    pending: VecDeque<Pending<B>>,
    /// Responses still owed to requests evicted from `pending`: skipped when they come.
    orphaned_responses: u64,
    /// The last request asked `Expect: 100-continue`: the server may refuse it without reading
    /// its body, and the client then sends its next request where the body would have been.
    expects_continue: bool,
    /// A request the selector wanted was seen: the connection belongs to an API client, whose
    /// next call follows at once on the same connection, and is never released.
    carried_selected: bool,
    /// An answer said the server reads no further request on this connection.
    server_closes: bool,
    /// A 101 answered `Upgrade: h2c`: the connection speaks HTTP/2 from here. Holds the server's
    /// bytes after the 101 (at most [`MAX_H2C_SERVER_BYTES`]) until the session takes them.
    h2c_switch: Option<Vec<u8>>,
}

/// Server bytes kept after a 101 to `Upgrade: h2c` for the HTTP/2 reader (its SETTINGS and
/// first frames); more in the same event are dropped.
const MAX_H2C_SERVER_BYTES: usize = 16 * 1024;

impl<B: RequestBody> Connection<B> {
    /// Heap this connection's parsing state holds: its two head readers, its waiting requests
    /// and the response decoder (for the stage's state budget).
    pub(crate) fn held_bytes(&self) -> usize {
        let pending: usize = self
            .pending
            .iter()
            .map(|p| {
                std::mem::size_of::<Pending<B>>()
                    + p.exchange
                        .as_ref()
                        .map_or(0, |e| e.request.held_bytes() + e.body.held_bytes())
            })
            .sum();
        self.requests.head.held_bytes()
            + self.responses.head.held_bytes()
            + pending
            + self
                .response
                .as_ref()
                .and_then(|r| r.decoder.as_ref())
                .map_or(0, BodyDecoder::held_bytes)
            + self.h2c_switch.as_ref().map_or(0, Vec::capacity)
    }

    /// Every selected request still waiting for its response, oldest first.
    pub(crate) fn open_requests(&self, out: &mut Vec<OpenRequest>) {
        for p in &self.pending {
            if let Some(e) = p.exchange.as_ref() {
                out.push(OpenRequest::of(e, p.request_done));
            }
        }
    }

    /// When the oldest selected request still waiting for its response started.
    pub(crate) fn oldest_open_exchange(&self) -> Option<Timestamp> {
        self.pending
            .iter()
            .find_map(|p| p.exchange.as_ref())
            .map(|e| e.ts_request_start)
    }

    pub(crate) fn new(id: ConnectionId, client: Endpoint, server: Endpoint) -> Self {
        Self {
            id,
            client,
            server,
            requests: Reader::new(MessageKind::Request),
            responses: Reader::new(MessageKind::Response),
            response: None,
            pending: VecDeque::new(),
            orphaned_responses: 0,
            expects_continue: false,
            carried_selected: false,
            server_closes: false,
            h2c_switch: None,
        }
    }

    pub(crate) fn client(&self) -> Endpoint {
        self.client
    }

    pub(crate) fn id(&self) -> ConnectionId {
        self.id
    }

    /// The server's bytes after a 101 that switched the connection to HTTP/2 (`Upgrade: h2c`),
    /// once: the session then reads the connection as HTTP/2 from its client preface on.
    pub(crate) fn take_h2c_switch(&mut self) -> Option<Vec<u8>> {
        self.h2c_switch.take()
    }

    pub(crate) fn server(&self) -> Endpoint {
        self.server
    }

    /// How many client bytes away its next request starts, when nothing is worth reading until
    /// then: the connection never carried a request the selector wanted, the client's bytes so
    /// far are all read, and its next request's place is known (not after a chunked body, nor
    /// after a body the server may refuse unread).
    pub(crate) fn release_point(&self) -> Option<u64> {
        let requests = &self.requests;
        if self.carried_selected
            || self.h2c_switch.is_some()
            || !requests.synced
            || requests.resyncing
            || !requests.head.bytes().is_empty()
        {
            return None;
        }
        match &requests.phase {
            Phase::Head => Some(0),
            Phase::Body(BodyFraming::Length { remaining }) if !self.expects_continue => {
                Some(*remaining)
            }
            _ => None,
        }
    }

    pub(crate) fn on_data<S: ExchangeSelector<Body = B>>(
        &mut self,
        dir: Direction,
        ts: Timestamp,
        bytes: &[u8],
        ctx: &mut Ctx<'_, S>,
    ) {
        match dir {
            Direction::ClientToServer => self.on_request_bytes(ts, bytes, ctx),
            Direction::ServerToClient => self.on_response_bytes(ts, bytes, ctx),
        }
    }

    pub(crate) fn on_gap<S: ExchangeSelector<Body = B>>(
        &mut self,
        dir: Direction,
        ts: Timestamp,
        len: u64,
        ctx: &mut Ctx<'_, S>,
    ) {
        if len == 0 {
            return;
        }
        match dir {
            Direction::ClientToServer => self.on_request_gap(ts, len, ctx),
            Direction::ServerToClient => self.on_response_gap(len, ctx),
        }
    }

    /// The connection ended: finish what can be finished and emit every pending exchange.
    pub(crate) fn close<S: ExchangeSelector<Body = B>>(mut self, ctx: &mut Ctx<'_, S>) {
        let until_close = matches!(self.responses.phase, Phase::Body(BodyFraming::UntilClose));
        let in_body = matches!(self.responses.phase, Phase::Body(_));
        let in_head = matches!(self.responses.phase, Phase::Head) && self.responses.head.started();
        if in_body {
            if let Some(response) = self.response.as_mut().filter(|_| !until_close) {
                response
                    .incomplete
                    .get_or_insert(Incomplete::ResponseTruncated);
            }
            self.finish_response(ctx);
        } else if in_head {
            self.fail_response_start(Incomplete::ResponseTruncated, ctx);
        }
        if let (Phase::Body(_), Some(last)) = (&self.requests.phase, self.pending.back_mut())
            && !last.request_done
        {
            last.request_done = true;
            last.mark(Incomplete::RequestTruncated);
        }
        for mut pending in self.pending.drain(..) {
            if !pending.response_done {
                if self.server_closes && pending.exchange.is_some() {
                    // Sent behind an answer that closed the connection: the server never read
                    // it (RFC 9112 §9.6), so it never ran.
                    ctx.stats.unread_after_close += 1;
                    continue;
                }
                pending.mark(Incomplete::NoResponse);
            }
            emit(pending, ctx);
        }
    }

    fn on_request_bytes<S: ExchangeSelector<Body = B>>(
        &mut self,
        ts: Timestamp,
        bytes: &[u8],
        ctx: &mut Ctx<'_, S>,
    ) {
        let mut input = bytes;
        while !input.is_empty() {
            match &mut self.requests.phase {
                Phase::Stopped => return,
                Phase::Seek { at_line_start } => {
                    let at_line_start = *at_line_start;
                    input = self.requests.skip_to_start(input, at_line_start, ctx.stats);
                    // Lost bytes where a request should start were (the start of) a request,
                    // whether or not its tail must be skipped: its response will come, so it
                    // keeps its place in the FIFO.
                    if matches!(self.requests.phase, Phase::Head)
                        && std::mem::take(&mut self.requests.start_lost)
                    {
                        ctx.stats.request_starts_lost += 1;
                        self.push_pending(None, false, false, true, ctx);
                    }
                }
                Phase::Head => {
                    let (rest, step) = self.requests.feed_head(input, ts, ctx.limits, ctx.stats);
                    input = rest;
                    match step {
                        HeadStep::Complete => self.on_request_head(ts, ctx),
                        HeadStep::TooLarge {
                            real_message,
                            at_line_start,
                        } => {
                            if real_message {
                                self.push_unreadable_request(ts, ctx);
                            }
                            self.requests.resync(at_line_start, ctx.stats);
                        }
                        _ => {}
                    }
                }
                Phase::Body(framing) => {
                    let mut exchange = self.pending.back_mut().and_then(|p| p.exchange.as_mut());
                    let mut fed = 0u64;
                    let result = framing.feed(input, &mut |data: &[u8]| {
                        fed += data.len() as u64;
                        if let Some(exchange) = exchange.as_mut() {
                            exchange.body.feed(data);
                        }
                    });
                    let consumed = match result {
                        Ok(BodyFeed { consumed, .. }) => consumed,
                        Err(bad) => bad.consumed,
                    };
                    if let Some(exchange) = exchange.filter(|_| consumed > 0) {
                        exchange.request_body_bytes += fed;
                        exchange.ts_request_end = ts;
                    }
                    input = input.get(consumed..).unwrap_or_default();
                    match result {
                        Ok(BodyFeed { done: true, .. }) => {
                            self.requests.expect_head();
                            self.finish_request(None, ctx);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            ctx.stats.bad_chunk += 1;
                            self.requests.resync(false, ctx.stats);
                            self.finish_request(Some(Incomplete::Malformed), ctx);
                        }
                    }
                }
            }
        }
    }

    fn on_request_head<S: ExchangeSelector<Body = B>>(
        &mut self,
        ts: Timestamp,
        ctx: &mut Ctx<'_, S>,
    ) {
        let parsed = ctx.header_slots.parse_request(
            self.requests.head.bytes(),
            ctx.limits.max_headers,
            ctx.request_head,
        );
        let ts_request_start = self.requests.head.ts_first();
        let framing = match parsed {
            Ok(framing) => framing,
            Err(error) => {
                count_head_error(error, MessageKind::Request, ctx.stats);
                self.push_unreadable_request(ts, ctx);
                self.requests.resync(true, ctx.stats);
                return;
            }
        };
        self.requests.head.reset();
        ctx.stats.requests += 1;
        ctx.stats.lenient_request_heads += u64::from(ctx.header_slots.last_request_was_lenient());
        self.requests.synced = true;
        self.requests.resyncing = false;
        self.requests.start_lost = false;
        let head = &*ctx.request_head;
        self.expects_continue = head.expect_continue;
        let head_method = head.method == "HEAD";
        let connect = head.method == "CONNECT";
        let exchange = ctx
            .selector
            .select(head)
            .map(|body| self.exchange(head, body, ts_request_start, ts));
        let request_done = framing == RequestFraming::NoBody;
        self.carried_selected |= exchange.is_some();
        self.push_pending(exchange, head_method, connect, request_done, ctx);
        if let Some(pending) = self.pending.back_mut() {
            pending.asks_h2c = ctx.header_slots.last_request_asked_h2c();
        }
        match framing {
            RequestFraming::NoBody => self.requests.expect_head(),
            RequestFraming::Length(remaining) => {
                self.requests.phase = Phase::Body(BodyFraming::Length { remaining });
            }
            RequestFraming::Chunked => {
                self.requests.phase = Phase::Body(BodyFraming::chunked(ctx.limits.max_head_bytes));
            }
        }
    }

    /// A request whose start line was read but not the rest of its head. The server answers it,
    /// so it keeps its place in the FIFO; and when the selector wants it by its start line (an
    /// API call), it is emitted as [`Incomplete::UnreadableHead`] rather than dropped. Its body
    /// cannot be framed: the direction resyncs after it.
    fn push_unreadable_request<S: ExchangeSelector<Body = B>>(
        &mut self,
        ts: Timestamp,
        ctx: &mut Ctx<'_, S>,
    ) {
        let ts_request_start = self.requests.head.ts_first();
        let head = &mut *ctx.request_head;
        let exchange = if fill_from_start_line(self.requests.head.bytes(), head) {
            ctx.selector.select(head).map(|body| HttpExchange {
                incomplete: Some(Incomplete::UnreadableHead),
                ..self.exchange(head, body, ts_request_start, ts)
            })
        } else {
            None
        };
        let head_method = exchange.is_some() && ctx.request_head.method == "HEAD";
        self.carried_selected |= exchange.is_some();
        self.push_pending(exchange, head_method, false, true, ctx);
    }

    /// A selected request's exchange, as its head ends.
    fn exchange(
        &self,
        head: &RequestHead,
        body: B,
        ts_request_start: Timestamp,
        ts: Timestamp,
    ) -> HttpExchange<B> {
        HttpExchange {
            conn: self.id,
            client: self.client,
            server: self.server,
            request: head.clone(),
            body,
            request_body_bytes: 0,
            ts_request_start,
            ts_request_end: ts,
            response: None,
            incomplete: None,
        }
    }

    /// The request being read has ended (or been given up on).
    fn finish_request<S: ExchangeSelector<Body = B>>(
        &mut self,
        why: Option<Incomplete>,
        ctx: &mut Ctx<'_, S>,
    ) {
        if let Some(last) = self.pending.back_mut() {
            last.request_done = true;
            if let Some(why) = why {
                last.mark(why);
            }
        }
        self.emit_ready(ctx);
    }

    fn push_pending<S: ExchangeSelector<Body = B>>(
        &mut self,
        exchange: Option<HttpExchange<B>>,
        head_method: bool,
        connect: bool,
        request_done: bool,
        ctx: &mut Ctx<'_, S>,
    ) {
        while self.pending.len() >= ctx.limits.max_pending_requests.max(1) {
            self.evict_oldest(ctx);
        }
        self.pending.push_back(Pending {
            exchange,
            head_method,
            connect,
            asks_h2c: false,
            request_done,
            response_done: false,
        });
    }

    /// Too many requests wait: give up on the oldest, and skip its response when it comes.
    fn evict_oldest<S: ExchangeSelector<Body = B>>(&mut self, ctx: &mut Ctx<'_, S>) {
        let Some(mut oldest) = self.pending.pop_front() else {
            return;
        };
        ctx.stats.pending_overflow += 1;
        if !oldest.response_done {
            match self.response.as_mut().filter(|r| r.matched) {
                Some(response) => {
                    response.matched = false;
                    response.decoder = None;
                    if let Some(exchange) = oldest.exchange.as_mut() {
                        exchange.response = Some(response.summary(ctx.stats));
                    }
                    oldest.mark(Incomplete::ResponseTruncated);
                }
                None => {
                    self.orphaned_responses += 1;
                    oldest.mark(Incomplete::NoResponse);
                }
            }
        }
        emit(oldest, ctx);
    }

    fn on_request_gap<S: ExchangeSelector<Body = B>>(
        &mut self,
        ts: Timestamp,
        len: u64,
        ctx: &mut Ctx<'_, S>,
    ) {
        match &mut self.requests.phase {
            Phase::Stopped => {}
            Phase::Seek { .. } => self.requests.seek(false),
            Phase::Head => {
                if self.requests.head.started() {
                    // The request cannot be emitted without its head, but it will be answered.
                    ctx.stats.request_starts_lost += 1;
                    self.push_pending(None, false, false, true, ctx);
                } else {
                    self.requests.start_lost = true;
                }
                self.requests.resync(false, ctx.stats);
            }
            Phase::Body(framing) => {
                let outcome = framing.gap(len);
                let lost = match outcome {
                    GapOutcome::Within { .. } | GapOutcome::Broken => len,
                    GapOutcome::Overran { lost } => lost,
                };
                if let Some(exchange) = self.pending.back_mut().and_then(|p| p.exchange.as_mut()) {
                    exchange.body.gap(lost);
                    exchange.request_body_bytes = exchange.request_body_bytes.saturating_add(lost);
                    exchange.ts_request_end = ts;
                    exchange.incomplete.get_or_insert(Incomplete::RequestGap);
                }
                match outcome {
                    GapOutcome::Within { done: false } => {}
                    GapOutcome::Within { done: true } => {
                        self.requests.expect_head();
                        self.finish_request(None, ctx);
                    }
                    GapOutcome::Overran { .. } => {
                        self.requests.resync(false, ctx.stats);
                        self.requests.start_lost = true;
                        self.finish_request(None, ctx);
                    }
                    GapOutcome::Broken => {
                        self.requests.resync(false, ctx.stats);
                        self.finish_request(None, ctx);
                    }
                }
            }
        }
    }

    fn on_response_bytes<S: ExchangeSelector<Body = B>>(
        &mut self,
        ts: Timestamp,
        bytes: &[u8],
        ctx: &mut Ctx<'_, S>,
    ) {
        let mut input = bytes;
        while !input.is_empty() {
            match &mut self.responses.phase {
                Phase::Stopped => {
                    if let Some(held) = self.h2c_switch.as_mut() {
                        let room = MAX_H2C_SERVER_BYTES.saturating_sub(held.len());
                        held.extend_from_slice(
                            input.get(..room.min(input.len())).unwrap_or_default(),
                        );
                    }
                    return;
                }
                Phase::Seek { at_line_start } => {
                    let at_line_start = *at_line_start;
                    let before = input.len();
                    input = self
                        .responses
                        .skip_to_start(input, at_line_start, ctx.stats);
                    if input.len() < before && std::mem::take(&mut self.responses.start_lost) {
                        // The skipped bytes were the rest of the owed response.
                        self.fail_response_start(Incomplete::ResponseGap, ctx);
                    }
                }
                Phase::Head => {
                    let (rest, step) = self.responses.feed_head(input, ts, ctx.limits, ctx.stats);
                    input = rest;
                    match step {
                        HeadStep::Complete => self.on_response_head(ts, ctx),
                        HeadStep::TooLarge {
                            real_message,
                            at_line_start,
                        } => {
                            if real_message {
                                self.fail_response_start(Incomplete::Malformed, ctx);
                            }
                            self.responses.resync(at_line_start, ctx.stats);
                        }
                        _ => {}
                    }
                }
                Phase::Body(framing) => {
                    let Some(response) = self.response.as_mut() else {
                        // Cannot happen: a body phase always has its response.
                        self.responses.expect_head();
                        continue;
                    };
                    let scratch = &mut *ctx.scratch;
                    let result = framing.feed(input, &mut |data: &[u8]| {
                        response.wire_body_bytes += data.len() as u64;
                        if let Some(decoder) = response.decoder.as_mut() {
                            decoder.feed(data, scratch);
                        }
                    });
                    let consumed = match result {
                        Ok(BodyFeed { consumed, .. }) => consumed,
                        Err(bad) => bad.consumed,
                    };
                    if consumed > 0 {
                        response.ts_last_byte = ts;
                    }
                    input = input.get(consumed..).unwrap_or_default();
                    match result {
                        Ok(BodyFeed { done: true, .. }) => {
                            self.responses.expect_head();
                            self.finish_response(ctx);
                        }
                        Ok(_) => {}
                        Err(_) => {
                            ctx.stats.bad_chunk += 1;
                            response.incomplete.get_or_insert(Incomplete::Malformed);
                            if let Some(decoder) = response.decoder.as_mut() {
                                decoder.interrupt();
                            }
                            self.responses.resync(false, ctx.stats);
                            self.finish_response(ctx);
                        }
                    }
                }
            }
        }
    }

    fn on_response_head<S: ExchangeSelector<Body = B>>(
        &mut self,
        ts: Timestamp,
        ctx: &mut Ctx<'_, S>,
    ) {
        let parsed = ctx
            .header_slots
            .parse_response(self.responses.head.bytes(), ctx.limits.max_headers);
        let ts_first_byte = self.responses.head.ts_first();
        let info = match parsed {
            Ok(info) => info,
            Err(error) => {
                count_head_error(error, MessageKind::Response, ctx.stats);
                self.fail_response_start(Incomplete::Malformed, ctx);
                self.responses.resync(true, ctx.stats);
                return;
            }
        };
        self.responses.synced = true;
        self.responses.resyncing = false;
        self.responses.start_lost = false;
        self.responses.expect_head();
        if (100..200).contains(&info.status) && info.status != 101 {
            // Interim (e.g. 100 Continue): the final response to the same request follows.
            ctx.stats.interim_responses += 1;
            return;
        }
        ctx.stats.responses += 1;
        let target = self.take_response_target(ctx.stats);
        let (head_method, connect, selected, asks_h2c) = target
            .and_then(|i| self.pending.get(i))
            .map_or((false, false, false, false), |p| {
                (p.head_method, p.connect, p.exchange.is_some(), p.asks_h2c)
            });
        let decoder =
            selected.then(|| BodyDecoder::new(info.coding, ctx.limits.max_decoded_body_bytes));
        self.response = Some(ResponseInProgress {
            matched: target.is_some(),
            status: info.status,
            ts_first_byte,
            ts_last_byte: ts,
            wire_body_bytes: 0,
            coding: info.coding,
            html: info.html,
            closes: info.closes,
            decoder,
            incomplete: None,
        });
        if info.status == 101 || (connect && (200..300).contains(&info.status)) {
            if info.status == 101 && asks_h2c {
                // HTTP/2 from here: the session switches to it (see `take_h2c_switch`).
                ctx.stats.h2c_upgrades += 1;
                self.h2c_switch = Some(Vec::new());
            }
            self.upgrade(ctx);
            return;
        }
        match response_framing(&info, head_method, ctx.limits.max_head_bytes) {
            None => self.finish_response(ctx),
            Some(framing) => self.responses.phase = Phase::Body(framing),
        }
    }

    /// Which pending request a new final response answers, if any.
    fn take_response_target(&mut self, stats: &mut HttpStats) -> Option<usize> {
        if self.orphaned_responses > 0 {
            self.orphaned_responses -= 1;
            return None;
        }
        let target = self.pending.iter().position(|p| !p.response_done);
        if target.is_none() {
            stats.unmatched_responses += 1;
        }
        target
    }

    /// The connection switched protocols: the answered request is done, the rest is not HTTP.
    fn upgrade<S: ExchangeSelector<Body = B>>(&mut self, ctx: &mut Ctx<'_, S>) {
        ctx.stats.upgrades += 1;
        if self.response.as_ref().is_some_and(|r| r.matched)
            && let Some(target) = self.pending.iter_mut().find(|p| !p.response_done)
        {
            target.request_done = true;
        }
        self.finish_response(ctx);
        self.requests.phase = Phase::Stopped;
        self.responses.phase = Phase::Stopped;
    }

    /// The response being read has ended: hand its summary to its request.
    fn finish_response<S: ExchangeSelector<Body = B>>(&mut self, ctx: &mut Ctx<'_, S>) {
        let Some(response) = self.response.take() else {
            return;
        };
        self.server_closes |= response.closes;
        if response.matched
            && let Some(target) = self.pending.iter_mut().find(|p| !p.response_done)
        {
            target.response_done = true;
            if let Some(exchange) = target.exchange.as_mut() {
                exchange.response = Some(response.summary(ctx.stats));
                if let Some(why) = response.incomplete {
                    exchange.incomplete.get_or_insert(why);
                }
            }
        }
        self.emit_ready(ctx);
    }

    /// A response whose head never became usable: its request gets no summary.
    fn fail_response_start<S: ExchangeSelector<Body = B>>(
        &mut self,
        why: Incomplete,
        ctx: &mut Ctx<'_, S>,
    ) {
        if self.orphaned_responses > 0 {
            self.orphaned_responses -= 1;
            return;
        }
        if let Some(target) = self.pending.iter_mut().find(|p| !p.response_done) {
            target.response_done = true;
            target.mark(why);
        }
        self.emit_ready(ctx);
    }

    fn on_response_gap<S: ExchangeSelector<Body = B>>(&mut self, len: u64, ctx: &mut Ctx<'_, S>) {
        match &mut self.responses.phase {
            Phase::Stopped => {}
            Phase::Seek { .. } => self.responses.seek(false),
            Phase::Head => {
                if self.responses.head.started() {
                    self.fail_response_start(Incomplete::ResponseGap, ctx);
                } else {
                    self.responses.start_lost = true;
                }
                self.responses.resync(false, ctx.stats);
            }
            Phase::Body(framing) => {
                let outcome = framing.gap(len);
                if let Some(response) = self.response.as_mut() {
                    response.wire_body_bytes =
                        response.wire_body_bytes.saturating_add(match outcome {
                            GapOutcome::Within { .. } | GapOutcome::Broken => len,
                            GapOutcome::Overran { lost } => lost,
                        });
                    response.incomplete.get_or_insert(Incomplete::ResponseGap);
                    if let Some(decoder) = response.decoder.as_mut() {
                        decoder.interrupt();
                    }
                }
                match outcome {
                    GapOutcome::Within { done: false } => {}
                    GapOutcome::Within { done: true } => {
                        self.responses.expect_head();
                        self.finish_response(ctx);
                    }
                    GapOutcome::Overran { .. } => {
                        self.responses.resync(false, ctx.stats);
                        self.responses.start_lost = true;
                        self.finish_response(ctx);
                    }
                    GapOutcome::Broken => {
                        self.responses.resync(false, ctx.stats);
                        self.finish_response(ctx);
                    }
                }
            }
        }
    }

    /// Emits exchanges from the front whose request and response have both ended.
    fn emit_ready<S: ExchangeSelector<Body = B>>(&mut self, ctx: &mut Ctx<'_, S>) {
        while self
            .pending
            .front()
            .is_some_and(|p| p.request_done && p.response_done)
        {
            if let Some(done) = self.pending.pop_front() {
                emit(done, ctx);
            }
        }
    }
}

fn emit<B, S: ExchangeSelector<Body = B>>(pending: Pending<B>, ctx: &mut Ctx<'_, S>) {
    if let Some(exchange) = pending.exchange {
        ctx.stats.exchanges += 1;
        ctx.out.push(exchange);
    }
}

/// RFC 9112 §6.3, for a final response.
fn response_framing(
    info: &ResponseInfo,
    head_method: bool,
    max_trailer_bytes: usize,
) -> Option<BodyFraming> {
    if head_method || info.status == 204 || info.status == 304 {
        return None;
    }
    match (info.transfer, info.content_length) {
        (TransferCoding::Chunked, _) => Some(BodyFraming::chunked(max_trailer_bytes)),
        (TransferCoding::Other, _) | (TransferCoding::Absent, None) => {
            Some(BodyFraming::UntilClose)
        }
        (TransferCoding::Absent, Some(0)) => None,
        (TransferCoding::Absent, Some(remaining)) => Some(BodyFraming::Length { remaining }),
    }
}

fn count_head_error(error: HeadError, kind: MessageKind, stats: &mut HttpStats) {
    match error {
        HeadError::TooManyHeaders => stats.too_many_headers += 1,
        HeadError::BadContentLength => stats.bad_content_length += 1,
        HeadError::Malformed | HeadError::BadTransferCoding => match kind {
            MessageKind::Request => stats.bad_request_head += 1,
            MessageKind::Response => stats.bad_response_head += 1,
        },
    }
}
