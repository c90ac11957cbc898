//! HTTP/1.1 exchanges from reassembled TCP streams.
//!
//! Owns request/response framing per connection: keep-alive and pipelined requests matched to
//! responses in order, Content-Length and chunked bodies, `Expect: 100-continue` and other 1xx
//! interim responses, and streaming gzip/deflate decoding of response bodies to learn their decoded
//! size under a work cap. It knows nothing about REDCap: an [`ExchangeSelector`] decides which
//! requests are interesting and receives their bodies; the others are framed and skipped.
//! Sans-IO: driven by [`StreamEvent`]s and the timestamps they carry. Never panics on input; every
//! rejection is counted in [`HttpStats`].

use crate::model::{ConnectionId, Endpoint, StreamEvent, Timestamp};

/// Bounds on what one connection may make the parser hold or do.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// Largest request or response head (start line + headers) accepted.
    pub max_head_bytes: usize,
    /// Most header lines accepted in one head.
    pub max_headers: usize,
    /// Most requests waiting for their responses on one connection.
    pub max_pending_requests: usize,
    /// Decoding of one response body stops after this many decoded bytes (the work cap).
    pub max_decoded_body_bytes: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            max_pending_requests: 32,
            max_decoded_body_bytes: 1 << 30,
        }
    }
}

/// The parts of a request head that later stages need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    pub content_type: Option<String>,
    pub content_length: Option<u64>,
    pub chunked: bool,
    pub expect_continue: bool,
    pub host: Option<String>,
    /// First address of `X-Forwarded-For`, when present.
    pub forwarded_for: Option<String>,
}

impl RequestHead {
    /// The target without its query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

/// Receives the (de-chunked) body of a selected request as it arrives.
pub trait RequestBody {
    fn feed(&mut self, chunk: &[u8]);
    /// `len` body bytes were lost in capture.
    fn gap(&mut self, len: u64);
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
pub struct ResponseSummary {
    pub status: u16,
    /// First byte of the final (non-1xx) response.
    pub ts_first_byte: Timestamp,
    pub ts_last_byte: Timestamp,
    /// Body bytes as sent (after de-chunking, before content decoding).
    pub wire_body_bytes: u64,
    /// Body bytes after content decoding (see `decoding` for how exact this is).
    pub decoded_body_bytes: u64,
    pub coding: ContentCoding,
    pub decoding: BodyDecoding,
}

/// Why an exchange is reported as incomplete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incomplete {
    /// Bytes of the request were not captured.
    RequestGap,
    /// Bytes of the response were not captured.
    ResponseGap,
    /// The connection ended (or was evicted) before the response did.
    NoResponse,
    /// The response ended before its framing said it would.
    ResponseTruncated,
    /// The request was picked up mid-stream; its start was not captured.
    MidStream,
}

/// One request and its response on one connection.
#[derive(Debug)]
pub struct HttpExchange<B> {
    pub conn: ConnectionId,
    pub client: Endpoint,
    pub server: Endpoint,
    pub request: RequestHead,
    pub body: B,
    /// Request body bytes as framed (after de-chunking), including bytes lost in gaps.
    pub request_body_bytes: u64,
    /// First byte of the request head.
    pub ts_request_start: Timestamp,
    /// Last byte of the request body.
    pub ts_request_end: Timestamp,
    pub response: Option<ResponseSummary>,
    /// `None` when every byte of both messages was seen and framed.
    pub incomplete: Option<Incomplete>,
}

/// Counters the HTTP stage keeps; telemetry reads them.
#[derive(Clone, Debug, Default)]
pub struct HttpStats {
    pub requests: u64,
    pub responses: u64,
    pub interim_responses: u64,
    pub exchanges: u64,
    pub bad_request_head: u64,
    pub bad_response_head: u64,
    pub head_too_large: u64,
    pub bad_chunk: u64,
    pub unmatched_responses: u64,
    pub pending_overflow: u64,
    pub resyncs: u64,
    pub decode_failed: u64,
    pub decode_capped: u64,
}

pub struct HttpTracker<S: ExchangeSelector> {
    _selector: S,
    _limits: HttpLimits,
    stats: HttpStats,
}

impl<S: ExchangeSelector> HttpTracker<S> {
    pub fn new(limits: HttpLimits, selector: S) -> Self {
        Self {
            _selector: selector,
            _limits: limits,
            stats: HttpStats::default(),
        }
    }

    /// Feeds one reassembly event; finished exchanges are appended to `out` in completion order.
    pub fn on_event(&mut self, _event: &StreamEvent<'_>, _out: &mut Vec<HttpExchange<S::Body>>) {
        todo!()
    }

    pub fn stats(&self) -> &HttpStats {
        &self.stats
    }
}
