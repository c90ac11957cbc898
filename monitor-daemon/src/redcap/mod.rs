//! REDCap API calls from HTTP exchanges.
//!
//! Owns what makes a request a REDCap API call (a POST to an API endpoint path), the streaming
//! extraction of the form fields REDCap reads (urlencoded and multipart, token anywhere in the
//! body, last value wins as in PHP) with bounded memory, and the [`ApiCall`] record. The raw token
//! lives only inside [`RequestFields`] until [`ApiCall::from_exchange`] fingerprints and drops it.

use crate::http::{HttpExchange, RequestHead};
use crate::model::{Endpoint, Span, Timestamp};
use crate::token::{MaskedToken, RawToken, SiteKey, TokenFingerprint, TokenProblem};

/// The REDCap fields of one request body, as PHP would see them in `$_POST`.
#[derive(Default)]
pub struct RequestFields {
    pub token: Option<Result<RawToken, TokenProblem>>,
    pub content: Option<String>,
    pub action: Option<String>,
    pub format: Option<String>,
    pub type_: Option<String>,
    pub return_format: Option<String>,
    /// Size of the `data` field (or of the uploaded `file` part); its presence means an import.
    pub data_bytes: Option<u64>,
    /// Number of records requested (`records[i]=`, `records[]=`, or `records=a,b,c`).
    pub records: u32,
    /// Number of fields requested, counted the same way.
    pub fields: u32,
    pub report_id: Option<String>,
    /// Whether a non-empty `filterLogic` was sent (its text may name patients: never kept).
    pub filter_logic: bool,
    pub date_range_begin: Option<String>,
    pub date_range_end: Option<String>,
    pub return_metadata_only: Option<bool>,
    pub export_files: Option<bool>,
    pub all_records: Option<bool>,
    /// Set when the body could not be parsed to the end (malformed, over a limit, gap).
    pub problem: Option<BodyProblem>,
}

/// Why a request body's fields may be incomplete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyProblem {
    /// The content type is neither urlencoded nor multipart (e.g. JSON: REDCap sees no token).
    UnsupportedContentType,
    /// Multipart without a usable boundary, or a part head that is not valid.
    MalformedMultipart,
    /// A field name or kept value was longer than its limit; it was skipped.
    FieldTooLong,
    /// Body bytes were lost in capture.
    Gap,
}

/// Who made a call, as far as may be shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenIdentity {
    pub fingerprint: TokenFingerprint,
    pub masked: MaskedToken,
}

/// One REDCap API call: the record every later stage and every output works from.
#[derive(Clone, Debug)]
pub struct ApiCall {
    pub ts_start: Timestamp,
    pub ts_end: Timestamp,
    /// Last request byte to first response byte; `None` without a response.
    pub ttfb: Option<Span>,
    pub client: Endpoint,
    pub server: Endpoint,
    pub method: String,
    pub path: String,
    pub token: Result<TokenIdentity, TokenProblem>,
    pub content: Option<String>,
    pub action: Option<String>,
    pub format: Option<String>,
    pub type_: Option<String>,
    pub return_format: Option<String>,
    pub data_bytes: Option<u64>,
    pub records: u32,
    pub fields: u32,
    pub report_id: Option<String>,
    pub filter_logic: bool,
    pub date_range_begin: Option<String>,
    pub date_range_end: Option<String>,
    pub return_metadata_only: Option<bool>,
    pub export_files: Option<bool>,
    pub all_records: Option<bool>,
    pub status: Option<u16>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Decoded response body bytes (a lower bound when decoding was capped).
    pub response_bytes: Option<u64>,
    /// Response body bytes as sent.
    pub response_wire_bytes: Option<u64>,
    /// False when a gap, truncation or parse problem touched the exchange.
    pub complete: bool,
}

impl ApiCall {
    /// Builds the call record, turning the raw token into its fingerprint and masked form; the raw
    /// token is dropped (and zeroed) here.
    pub fn from_exchange(_exchange: HttpExchange<RequestFields>, _key: &SiteKey) -> ApiCall {
        todo!()
    }
}

/// Whether a request path is a REDCap API endpoint.
pub struct ApiPaths {}

impl ApiPaths {
    pub fn matches(&self, _path: &str) -> bool {
        todo!()
    }
}

pub fn _unused(_h: &RequestHead) {}
