//! HTTP/2 exchanges (RFC 9113): a connection whose client bytes start with the HTTP/2 preface,
//! whether plaintext (`h2c` with prior knowledge) or read at the web server's OpenSSL (ALPN `h2`).
//!
//! Owns the streams of one connection: each request header block is turned into the same
//! [`RequestHead`] HTTP/1.1 produces and offered to the [`ExchangeSelector`]; a selected stream
//! becomes the same [`HttpExchange`], with its request body streamed to the selector's consumer
//! and its response body decoded by the same [`BodyDecoder`]. Holds state only for selected
//! streams (at most `max_pending_requests` per connection) and one header block per direction;
//! never copies a body. Exchanges are emitted when both halves of a stream have ended, so in
//! completion order, not request order. Sans-IO; never panics on input; every loss is counted in
//! [`HttpStats`] (`h2_*`).

mod frame;
mod session;

use std::collections::BTreeMap;

use super::connection::Ctx;
use super::decode::BodyDecoder;
use super::head::content_coding;
use super::{
    ContentCoding, ExchangeSelector, HttpExchange, HttpStats, HttpVersion, Incomplete, OpenRequest,
    RequestBody, RequestHead, ResponseSummary,
};
use crate::shared::model::{ConnectionId, Direction, Endpoint, Timestamp};
use frame::{Event, FrameReader, HeaderFields, Stop};
pub(crate) use session::Session;

/// RST_STREAM's REFUSED_STREAM: the server did not process the request (RFC 9113 §8.7).
const REFUSED_STREAM: u32 = 0x7;

/// A selected request's response, while it arrives.
struct ResponseState {
    status: u16,
    ts_first_byte: Timestamp,
    ts_last_byte: Timestamp,
    wire_body_bytes: u64,
    coding: ContentCoding,
    decoder: BodyDecoder,
}

impl ResponseState {
    fn summary(&self, stats: &mut HttpStats) -> ResponseSummary {
        let (decoding, decoded_body_bytes) = self.decoder.outcome(self.wire_body_bytes);
        stats.count_decoding(decoding);
        ResponseSummary {
            status: self.status,
            ts_first_byte: self.ts_first_byte,
            ts_last_byte: self.ts_last_byte,
            wire_body_bytes: self.wire_body_bytes,
            decoded_body_bytes,
            coding: self.coding,
            // A web server refuses a malformed HTTP/2 request at the frame level (RST_STREAM,
            // GOAWAY), which this stage handles: an answer here came from the application.
            html: false,
            decoding,
        }
    }
}

/// One selected stream.
struct Stream<B> {
    exchange: HttpExchange<B>,
    request_done: bool,
    response: Option<ResponseState>,
    response_done: bool,
}

impl<B> Stream<B> {
    /// The request body has reached its `content-length`.
    fn body_complete(&self) -> bool {
        let request = &self.exchange;
        request
            .request
            .content_length
            .is_some_and(|len| request.request_body_bytes >= len)
    }

    fn mark(&mut self, why: Incomplete) {
        self.exchange.incomplete.get_or_insert(why);
    }

    /// The stream will see nothing more: say what is missing.
    fn end_abruptly(&mut self) {
        if !self.request_done {
            self.request_done = true;
            self.mark(Incomplete::RequestTruncated);
        }
        if !self.response_done {
            self.response_done = true;
            self.mark(if self.response.is_some() {
                Incomplete::ResponseTruncated
            } else {
                Incomplete::NoResponse
            });
        }
    }
}

/// The streams of one connection, and where it stands.
struct Streams<B> {
    id: ConnectionId,
    client: Endpoint,
    server: Endpoint,
    /// Selected streams by ID (ordered, so that what is left at close is emitted in order).
    open: BTreeMap<u32, Stream<B>>,
    /// The highest stream a client header block opened: a lower one is a trailer.
    last_client_stream: u32,
    /// The server's frames can no longer be read: later requests will get no response.
    responses_stopped: bool,
}

pub(crate) struct H2Connection<B> {
    requests: FrameReader,
    responses: FrameReader,
    streams: Streams<B>,
}

impl<B: RequestBody> H2Connection<B> {
    pub(crate) fn endpoints(&self) -> (Endpoint, Endpoint) {
        (self.streams.client, self.streams.server)
    }

    /// Heap this connection's parsing state holds (for the stage's state budget).
    pub(crate) fn held_bytes(&self) -> usize {
        let streams: usize = self
            .streams
            .open
            .values()
            .map(|s| {
                std::mem::size_of::<Stream<B>>()
                    + s.exchange.request.held_bytes()
                    + s.exchange.body.held_bytes()
                    + s.response.as_ref().map_or(0, |r| r.decoder.held_bytes())
            })
            .sum();
        self.requests.held_bytes() + self.responses.held_bytes() + streams
    }

    pub(crate) fn new(
        id: ConnectionId,
        client: Endpoint,
        server: Endpoint,
        max_head_bytes: usize,
    ) -> Self {
        Self {
            requests: FrameReader::new(max_head_bytes),
            responses: FrameReader::new(max_head_bytes),
            streams: Streams {
                id,
                client,
                server,
                open: BTreeMap::new(),
                last_client_stream: 0,
                responses_stopped: false,
            },
        }
    }

    /// Every selected request still open.
    pub(crate) fn open_requests(&self, out: &mut Vec<OpenRequest>) {
        for s in self.streams.open.values() {
            out.push(OpenRequest::of(&s.exchange, s.request_done));
        }
    }

    /// When the oldest selected request still open started.
    pub(crate) fn oldest_open_exchange(&self) -> Option<Timestamp> {
        self.streams
            .open
            .values()
            .map(|s| s.exchange.ts_request_start)
            .min()
    }

    pub(crate) fn on_data<S: ExchangeSelector<Body = B>>(
        &mut self,
        dir: Direction,
        ts: Timestamp,
        bytes: &[u8],
        ctx: &mut Ctx<'_, S>,
    ) {
        let (reader, other) = match dir {
            Direction::ClientToServer => (&mut self.requests, &mut self.responses),
            Direction::ServerToClient => (&mut self.responses, &mut self.requests),
        };
        let streams = &mut self.streams;
        let mut table_size = None;
        reader.feed_with(bytes, ts, ctx, &mut |event, ctx| match event {
            Event::HeaderTableSize(size) => table_size = Some(size),
            event => streams.on_event(dir, event, ctx),
        });
        if let Some(size) = table_size {
            other.allow_header_table_size(size);
        }
    }

    pub(crate) fn on_gap<S: ExchangeSelector<Body = B>>(
        &mut self,
        dir: Direction,
        _len: u64,
        ctx: &mut Ctx<'_, S>,
    ) {
        let reader = match dir {
            Direction::ClientToServer => &mut self.requests,
            Direction::ServerToClient => &mut self.responses,
        };
        let streams = &mut self.streams;
        reader.gap_with(ctx, &mut |event, ctx| streams.on_event(dir, event, ctx));
    }

    /// The connection ended: every stream still open is emitted, saying what it lacks.
    pub(crate) fn close<S: ExchangeSelector<Body = B>>(mut self, ctx: &mut Ctx<'_, S>) {
        for (_, mut stream) in std::mem::take(&mut self.streams.open) {
            stream.end_abruptly();
            emit(stream, ctx);
        }
    }
}

impl FrameReader {
    /// [`FrameReader::feed`] with the tracker's context lent to the event handler.
    fn feed_with<S: ExchangeSelector>(
        &mut self,
        bytes: &[u8],
        ts: Timestamp,
        ctx: &mut Ctx<'_, S>,
        handler: &mut impl FnMut(Event<'_>, &mut Ctx<'_, S>),
    ) {
        // The reader counts into the same stats the handler may touch: give it its own copy of
        // the counters it can change, and merge them after.
        let mut counted = HttpStats::default();
        self.feed(bytes, ts, &mut counted, &mut |event| handler(event, ctx));
        add_h2_counts(ctx.stats, &counted);
    }

    fn gap_with<S: ExchangeSelector>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        handler: &mut impl FnMut(Event<'_>, &mut Ctx<'_, S>),
    ) {
        let mut counted = HttpStats::default();
        self.gap(&mut counted, &mut |event| handler(event, ctx));
        add_h2_counts(ctx.stats, &counted);
    }
}

/// The counters a [`FrameReader`] keeps, added to the tracker's.
fn add_h2_counts(stats: &mut HttpStats, counted: &HttpStats) {
    stats.h2_gaps += counted.h2_gaps;
    stats.h2_hpack_errors += counted.h2_hpack_errors;
    stats.h2_frame_too_large += counted.h2_frame_too_large;
    stats.h2_protocol_errors += counted.h2_protocol_errors;
}

impl<B: RequestBody> Streams<B> {
    fn on_event<S: ExchangeSelector<Body = B>>(
        &mut self,
        dir: Direction,
        event: Event<'_>,
        ctx: &mut Ctx<'_, S>,
    ) {
        match (dir, event) {
            (
                Direction::ClientToServer,
                Event::Head {
                    stream,
                    ts_start,
                    end_stream,
                    fields,
                },
            ) => self.on_request_head(stream, ts_start, end_stream, fields, ctx),
            (
                Direction::ServerToClient,
                Event::Head {
                    stream,
                    ts_start,
                    end_stream,
                    fields,
                },
            ) => self.on_response_head(stream, ts_start, end_stream, fields, ctx),
            (Direction::ClientToServer, Event::Data { stream, ts, bytes }) => {
                if let Some(s) = self.open.get_mut(&stream).filter(|s| !s.request_done) {
                    s.exchange.body.feed(bytes);
                    s.exchange.request_body_bytes += bytes.len() as u64;
                    s.exchange.ts_request_end = ts;
                    // The body is whole at its declared length, as in HTTP/1.1: the server may
                    // answer (and reset the stream) before the client's END_STREAM comes.
                    s.request_done = s.body_complete();
                }
                self.emit_if_done(stream, ctx);
            }
            (Direction::ServerToClient, Event::Data { stream, ts, bytes }) => {
                if let Some(response) = self
                    .open
                    .get_mut(&stream)
                    .filter(|s| !s.response_done)
                    .and_then(|s| s.response.as_mut())
                {
                    response.wire_body_bytes += bytes.len() as u64;
                    response.decoder.feed(bytes, ctx.scratch);
                    response.ts_last_byte = ts;
                }
            }
            (Direction::ClientToServer, Event::EndStream { stream, ts }) => {
                if let Some(s) = self.open.get_mut(&stream) {
                    s.request_done = true;
                    s.exchange.ts_request_end = ts;
                }
                self.emit_if_done(stream, ctx);
            }
            (Direction::ServerToClient, Event::EndStream { stream, ts }) => {
                if let Some(s) = self.open.get_mut(&stream) {
                    s.response_done = true;
                    if let Some(response) = s.response.as_mut() {
                        response.ts_last_byte = ts;
                    }
                }
                self.emit_if_done(stream, ctx);
            }
            (dir, Event::Reset { stream, code }) => self.on_reset(dir, stream, code, ctx),
            (Direction::ServerToClient, Event::GoAway { last_stream }) => {
                // Streams above the last one the server processed were not run (RFC 9113 §6.8).
                let refused = self.open.split_off(&last_stream.saturating_add(1));
                ctx.stats.h2_streams_refused += refused.len() as u64;
            }
            (dir, Event::Stopped(why)) => self.on_stopped(dir, why, ctx),
            _ => {}
        }
    }

    fn on_request_head<S: ExchangeSelector<Body = B>>(
        &mut self,
        stream: u32,
        ts_start: Timestamp,
        end_stream: bool,
        fields: &HeaderFields,
        ctx: &mut Ctx<'_, S>,
    ) {
        if stream <= self.last_client_stream || stream.is_multiple_of(2) {
            // Trailers (of a selected stream, or of one we do not follow).
            if end_stream && let Some(s) = self.open.get_mut(&stream) {
                s.request_done = true;
                s.exchange.ts_request_end = ts_start;
                self.emit_if_done(stream, ctx);
            }
            return;
        }
        self.last_client_stream = stream;
        let (Some(method), Some(path)) = (&fields.method, &fields.path) else {
            ctx.stats.bad_request_head += 1;
            return;
        };
        ctx.stats.requests += 1;
        let head = &mut *ctx.request_head;
        *head = RequestHead {
            version: HttpVersion::Http2,
            method: method.clone(),
            target: path.clone(),
            content_type: fields.content_type.clone(),
            content_length: fields.content_length,
            chunked: false,
            expect_continue: fields.expect_continue,
            host: fields.authority.clone().or_else(|| fields.host.clone()),
            forwarded_for: fields.forwarded_for.clone(),
            forwarded: fields.forwarded.clone(),
        };
        let Some(body) = ctx.selector.select(head) else {
            return;
        };
        if self.open.len() >= ctx.limits.max_pending_requests.max(1) {
            ctx.stats.h2_too_many_streams += 1;
            return;
        }
        let exchange = HttpExchange {
            conn: self.id,
            client: self.client,
            server: self.server,
            request: head.clone(),
            body,
            request_body_bytes: 0,
            ts_request_start: ts_start,
            ts_request_end: ts_start,
            response: None,
            incomplete: None,
        };
        let mut opened = Stream {
            exchange,
            request_done: end_stream || head.content_length == Some(0),
            response: None,
            response_done: false,
        };
        if self.responses_stopped {
            opened.response_done = true;
            opened.mark(Incomplete::NoResponse);
        }
        self.open.insert(stream, opened);
        self.emit_if_done(stream, ctx);
    }

    fn on_response_head<S: ExchangeSelector<Body = B>>(
        &mut self,
        stream: u32,
        ts_start: Timestamp,
        end_stream: bool,
        fields: &HeaderFields,
        ctx: &mut Ctx<'_, S>,
    ) {
        let status = fields.status;
        let interim = status.is_some_and(|s| (100..200).contains(&s));
        // A block without `:status` is a trailer (or broken, below, when no response began).
        match status {
            None if fields.bad_status => ctx.stats.bad_response_head += 1,
            Some(_) if interim => ctx.stats.interim_responses += 1,
            _ => {}
        }
        let Some(s) = self.open.get_mut(&stream).filter(|s| !s.response_done) else {
            if status.is_some() && !interim {
                ctx.stats.responses += 1;
            }
            return;
        };
        match (&mut s.response, status) {
            // Trailers.
            (Some(response), _) => response.ts_last_byte = ts_start,
            (None, Some(status)) if !interim => {
                ctx.stats.responses += 1;
                let coding = content_coding(std::iter::once(&fields.content_encoding[..]));
                s.response = Some(ResponseState {
                    status,
                    ts_first_byte: ts_start,
                    ts_last_byte: ts_start,
                    wire_body_bytes: 0,
                    coding,
                    decoder: BodyDecoder::new(coding, ctx.limits.max_decoded_body_bytes),
                });
            }
            (None, None) => {
                if !fields.bad_status {
                    ctx.stats.bad_response_head += 1;
                }
                s.mark(Incomplete::Malformed);
            }
            (None, Some(_)) => return,
        }
        if end_stream {
            s.response_done = true;
            self.emit_if_done(stream, ctx);
        }
    }

    fn on_reset<S: ExchangeSelector<Body = B>>(
        &mut self,
        dir: Direction,
        stream: u32,
        code: u32,
        ctx: &mut Ctx<'_, S>,
    ) {
        let Some(mut s) = self.open.remove(&stream) else {
            return;
        };
        if dir == Direction::ServerToClient && code == REFUSED_STREAM && s.response.is_none() {
            ctx.stats.h2_streams_refused += 1;
            return;
        }
        // A server may answer before the body ends and reset the rest (NO_ERROR): the request
        // still ran; what is missing is said.
        s.end_abruptly();
        emit(s, ctx);
    }

    /// A direction stopped: what it still owed will not come.
    fn on_stopped<S: ExchangeSelector<Body = B>>(
        &mut self,
        dir: Direction,
        why: Stop,
        ctx: &mut Ctx<'_, S>,
    ) {
        let ids: Vec<u32> = self.open.keys().copied().collect();
        for stream in ids {
            let Some(s) = self.open.get_mut(&stream) else {
                continue;
            };
            match dir {
                Direction::ClientToServer => {
                    if !s.request_done {
                        s.request_done = true;
                        s.mark(match why {
                            Stop::Gap => Incomplete::RequestGap,
                            Stop::Malformed => Incomplete::Malformed,
                        });
                    }
                }
                Direction::ServerToClient => {
                    if !s.response_done {
                        s.response_done = true;
                        if let Some(response) = s.response.as_mut() {
                            response.decoder.interrupt();
                        }
                        s.mark(match why {
                            Stop::Gap => Incomplete::ResponseGap,
                            Stop::Malformed => Incomplete::Malformed,
                        });
                    }
                }
            }
            self.emit_if_done(stream, ctx);
        }
        if dir == Direction::ServerToClient {
            self.responses_stopped = true;
        }
    }

    fn emit_if_done<S: ExchangeSelector<Body = B>>(&mut self, stream: u32, ctx: &mut Ctx<'_, S>) {
        if self
            .open
            .get(&stream)
            .is_some_and(|s| s.request_done && s.response_done)
            && let Some(s) = self.open.remove(&stream)
        {
            emit(s, ctx);
        }
    }
}

fn emit<B, S: ExchangeSelector<Body = B>>(mut stream: Stream<B>, ctx: &mut Ctx<'_, S>) {
    if let Some(response) = stream.response.as_ref() {
        stream.exchange.response = Some(response.summary(ctx.stats));
    }
    ctx.stats.exchanges += 1;
    ctx.out.push(stream.exchange);
}

#[cfg(test)]
mod tests;
