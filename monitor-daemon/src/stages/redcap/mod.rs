//! REDCap API calls from HTTP exchanges.
//!
//! Owns what makes a request a REDCap API call (a POST to an API endpoint path), the streaming
//! extraction of the form fields REDCap reads (urlencoded and multipart, token anywhere in the
//! body, last value wins as in PHP) with bounded memory, and the [`ApiCall`] record. The raw token
//! lives only inside [`RequestFields`] until [`ApiCall::from_exchange`] fingerprints it, and is
//! dropped there unless the caller asks to keep it for suspend hooks ([`KeepRawToken`]).
//! Sans-IO and never panics on body bytes; problems are reported in [`RequestFields::problem`].

mod client;
mod form;
mod multipart;
mod paths;
mod urlencoded;

use crate::shared::model::{Endpoint, Span, Timestamp};
use crate::shared::token::{
    HookToken, MaskedToken, RawToken, SiteKey, TokenFingerprint, TokenProblem,
};
use crate::stages::http::{
    BodyDecoding, ExchangeSelector, HttpExchange, HttpVersion, Incomplete, RequestBody, RequestHead,
};
pub(crate) use client::{ClientAddressHeader, ClientAddressing, ClientOrigin, TrustedProxies};

pub use paths::{ApiPathError, ApiPaths, DEFAULT_API_PATHS};

use form::{FieldCollector, VarLimit};

/// PHP's `max_input_vars` assumed when none is configured: what REDCap's install check asks for.
pub(crate) const DEFAULT_MAX_INPUT_VARS: u64 = 100_000;
use crate::shared::settings::{Problem, at_least_one};
use multipart::MultipartScanner;
use serde::Deserialize;
use urlencoded::UrlencodedScanner;

/// The REDCap fields of one request body, as PHP would see them in `$_POST`.
#[derive(Default)]
pub struct RequestFields {
    pub token: Option<Result<RawToken, TokenProblem>>,
    pub params: ApiParams,
    /// Set when the body could not be parsed to the end (malformed, over a limit, gap); the
    /// most serious problem seen.
    pub problem: Option<BodyProblem>,
}

/// How many text parameters [`ApiParams`] keeps (for the HTTP stage's state budget).
const KEPT_PARAMS: usize = 8;

/// The parameters of a call that may be shown and kept: everything REDCap read but the token.
/// Read back from call records (`edges::records`) as written: absent fields take defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ApiParams {
    pub content: Option<String>,
    pub action: Option<String>,
    pub format: Option<String>,
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub return_format: Option<String>,
    /// Size of the `data` field (or of the uploaded `file` part); its presence means an import.
    pub data_bytes: Option<u64>,
    /// Number of records requested (`records[i]=`, `records[]=`, or `records=a,b,c`). Each
    /// `records[...]` entry counts, so a repeated index (which PHP overwrites) counts twice.
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
    /// The body has more fields than `redcap.max_input_vars`: PHP (with that setting) ignores
    /// the rest, and so do we; if PHP's setting differs, it read other fields than we did.
    InputVarsExceeded,
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
    /// Who made the call: the connection's peer, or the client a trusted proxy named (then the
    /// proxy is in `proxy`).
    pub client: Endpoint,
    pub server: Endpoint,
    /// The trusted proxy whose connection carried the call, when the client came from its
    /// header (see [`ClientAddressing`]).
    pub proxy: Option<Endpoint>,
    pub method: String,
    pub path: String,
    pub http_version: HttpVersion,
    pub token: Result<TokenIdentity, TokenProblem>,
    pub params: ApiParams,
    pub status: Option<u16>,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Decoded response body bytes (a lower bound when decoding was capped).
    pub response_bytes: Option<u64>,
    /// Response body bytes as sent.
    pub response_wire_bytes: Option<u64>,
    /// Why the body's fields may differ from what REDCap saw, if they may.
    pub body_problem: Option<BodyProblem>,
    /// False when a gap, truncation or parse problem touched the exchange (see
    /// [`ApiCall::from_exchange`]).
    pub complete: bool,
    /// The raw token, held only when [`KeepRawToken::ForSuspendHooks`] (a suspend hook has
    /// `pass_raw_token`); empty otherwise. Prints as `<redacted>`, is never serialised, and is
    /// not copied by `clone`.
    pub raw_token: HookToken,
}

/// Whether [`ApiCall::from_exchange`] keeps the raw token on the call, for suspend hooks that
/// are configured with `pass_raw_token = true`. Decided once from the configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeepRawToken {
    /// Fingerprint and mask it, then drop (and zero) it: the default.
    #[default]
    Never,
    /// Also hold it on the call until the action edge hands it to the suspend hooks.
    ForSuspendHooks,
}

impl ApiCall {
    /// The server answered and did not refuse the token (401/403): it is a real token.
    pub(crate) fn token_accepted(&self) -> bool {
        self.status.is_some_and(|s| s != 401 && s != 403)
    }

    /// Builds the call record, turning the raw token into its fingerprint and masked form; the raw
    /// token is dropped (and zeroed) here, unless `keep` is [`KeepRawToken::ForSuspendHooks`]:
    /// then it is held in [`ApiCall::raw_token`].
    ///
    /// Sizes: `response_bytes` is the decoded body size when it is known (exact, or a lower bound
    /// when decoding hit its work cap) and `None` when decoding failed or the coding is one we do
    /// not decode; `response_wire_bytes` is always the size as sent.
    ///
    /// `complete` is false when the HTTP stage saw a gap, truncation or missing response, or the
    /// body had a gap or a multipart structure we may have read differently from PHP. A value
    /// over its limit (`FieldTooLong`) or a body type REDCap ignores (`UnsupportedContentType`)
    /// leaves the call complete: we saw all that REDCap saw, and know what we did not keep.
    pub fn from_exchange(
        exchange: HttpExchange<FormBody>,
        key: &SiteKey,
        keep: KeepRawToken,
    ) -> ApiCall {
        let HttpExchange {
            client,
            server,
            request,
            body,
            request_body_bytes,
            ts_request_start,
            ts_request_end,
            response,
            incomplete,
            ..
        } = exchange;
        let mut fields = body.finish();
        if incomplete == Some(Incomplete::UnreadableHead) {
            // Only the start line was read: no body was seen, and the token is unknown.
            fields.token = Some(Err(TokenProblem::Unreadable));
            fields.problem = None;
        }
        let mut raw_token = HookToken::default();
        let token = match fields.token {
            None => Err(TokenProblem::Missing),
            Some(Err(problem)) => Err(problem),
            Some(Ok(raw)) => {
                let identity = TokenIdentity {
                    fingerprint: key.fingerprint(&raw),
                    masked: MaskedToken::of(&raw),
                };
                if keep == KeepRawToken::ForSuspendHooks {
                    raw_token = HookToken::held(raw);
                }
                Ok(identity)
            }
        };
        let body_complete = !matches!(
            fields.problem,
            Some(BodyProblem::Gap | BodyProblem::MalformedMultipart)
        );
        let response_bytes = response.as_ref().and_then(|r| match r.decoding {
            BodyDecoding::Identity | BodyDecoding::Decoded | BodyDecoding::Capped => {
                Some(r.decoded_body_bytes)
            }
            BodyDecoding::Failed | BodyDecoding::Unsupported => None,
        });
        ApiCall {
            ts_start: ts_request_start,
            ts_end: response.as_ref().map_or(ts_request_end, |r| r.ts_last_byte),
            ttfb: response
                .as_ref()
                .map(|r| r.ts_first_byte.since(ts_request_end)),
            client,
            server,
            proxy: None,
            path: request.path().to_string(),
            http_version: request.version,
            method: request.method,
            token,
            params: fields.params,
            status: response.as_ref().map(|r| r.status),
            request_bytes: request_body_bytes,
            response_bytes,
            response_wire_bytes: response.as_ref().map(|r| r.wire_body_bytes),
            body_problem: fields.problem,
            complete: incomplete.is_none() && body_complete,
            raw_token,
        }
    }
}

/// A REDCap boolean parameter: `1` or `true` (any case) is true, anything else false, as
/// REDCap's `API/index.php` reads them.
pub(crate) fn parse_bool(value: &str) -> bool {
    value == "1" || value.eq_ignore_ascii_case("true")
}

/// Streams one request body into the [`RequestFields`] REDCap would read from it.
///
/// Only `application/x-www-form-urlencoded` and `multipart/form-data` are read, as only those
/// fill PHP's `$_POST`. A POST without a content type is not read either: PHP's `sapi_activate`
/// reads a POST body only when the request has a content type (clients such as `curl -d` always
/// send one), so REDCap sees no token in it.
pub struct FormBody {
    collector: FieldCollector,
    scanner: Scanner,
    /// Keys the fingerprint of the token read so far (for the policy's reorder hold); without
    /// it the token stays unknown until the call is built.
    key: Option<std::sync::Arc<SiteKey>>,
    /// The fingerprint of the token read so far, as of `token_assignments` assignments.
    token_fp: Option<TokenFingerprint>,
    token_assignments: u32,
}

enum Scanner {
    Urlencoded(UrlencodedScanner),
    Multipart(Box<MultipartScanner>),
    /// A body REDCap does not read, or cannot (multipart without a boundary).
    Unread,
}

impl FormBody {
    /// A body reader for a request with this `Content-Type` header value, read with PHP's
    /// default [`DEFAULT_MAX_INPUT_VARS`].
    #[cfg(test)]
    pub(crate) fn for_content_type(content_type: Option<&str>) -> FormBody {
        FormBody::new(content_type, DEFAULT_MAX_INPUT_VARS)
    }

    /// A body reader for a request with this `Content-Type` header value, read as PHP with
    /// this `max_input_vars` reads it.
    pub fn new(content_type: Option<&str>, max_input_vars: u64) -> FormBody {
        let content_type = content_type.unwrap_or_default().trim();
        // PHP compares the media type, in any case, up to the first `;`, `,` or space.
        let media_type = content_type
            .split([';', ',', ' '])
            .next()
            .unwrap_or_default();
        let urlencoded = media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded");
        let mut collector = FieldCollector::new(if urlencoded {
            VarLimit::StopAfterOneMore(max_input_vars)
        } else {
            VarLimit::DropPast(max_input_vars)
        });
        let scanner = if urlencoded {
            Scanner::Urlencoded(UrlencodedScanner::new())
        } else if media_type.eq_ignore_ascii_case("multipart/form-data") {
            match MultipartScanner::for_content_type(content_type) {
                Some(scanner) => Scanner::Multipart(Box::new(scanner)),
                None => {
                    collector.problem(BodyProblem::MalformedMultipart);
                    Scanner::Unread
                }
            }
        } else {
            collector.problem(BodyProblem::UnsupportedContentType);
            Scanner::Unread
        };
        FormBody {
            collector,
            scanner,
            key: None,
            token_fp: None,
            token_assignments: 0,
        }
    }

    /// Fingerprints the token as soon as it is read, with `key` (see
    /// [`RequestBody::token_fingerprint`]).
    pub(crate) fn with_key(mut self, key: std::sync::Arc<SiteKey>) -> FormBody {
        self.key = Some(key);
        self
    }

    /// Brings the fingerprint of the token read so far up to date (once per assignment).
    fn note_token(&mut self) {
        let (assignments, token) = self.collector.token_so_far();
        if assignments == self.token_assignments {
            return;
        }
        self.token_assignments = assignments;
        self.token_fp = match (token, &self.key) {
            (Some(Ok(raw)), Some(key)) => Some(key.fingerprint(raw)),
            _ => None,
        };
    }

    /// The fields read, once the body has ended.
    pub fn finish(mut self) -> RequestFields {
        match &mut self.scanner {
            Scanner::Urlencoded(s) => s.finish(&mut self.collector),
            Scanner::Multipart(s) => s.finish(&mut self.collector),
            Scanner::Unread => {}
        }
        self.collector.finish()
    }
}

#[cfg(test)]
impl FormBody {
    /// Bytes of buffer this body reader holds (its memory bound).
    fn buffered_bytes(&self) -> usize {
        self.collector.buffered_bytes()
            + match &self.scanner {
                Scanner::Urlencoded(s) => s.buffered_bytes(),
                Scanner::Multipart(s) => s.buffered_bytes(),
                Scanner::Unread => 0,
            }
    }
}

impl RequestBody for FormBody {
    fn held_bytes(&self) -> usize {
        let scanner = match &self.scanner {
            Scanner::Urlencoded(_) => form::MAX_FIELD_NAME,
            Scanner::Multipart(s) => s.held_bytes(),
            Scanner::Unread => 0,
        };
        // The parameters kept so far: each at most `MAX_KEPT_VALUE` bytes.
        let params = KEPT_PARAMS * form::MAX_KEPT_VALUE;
        std::mem::size_of::<FormBody>() + self.collector.held_bytes() + scanner + params
    }

    fn feed(&mut self, chunk: &[u8]) {
        match &mut self.scanner {
            Scanner::Urlencoded(s) => s.feed(chunk, &mut self.collector),
            Scanner::Multipart(s) => s.feed(chunk, &mut self.collector),
            Scanner::Unread => {}
        }
        self.note_token();
    }

    fn token_fingerprint(&self) -> Option<TokenFingerprint> {
        self.token_fp
    }

    fn gap(&mut self, len: u64) {
        match &mut self.scanner {
            Scanner::Urlencoded(s) => s.gap(len, &mut self.collector),
            Scanner::Multipart(s) => s.gap(len, &mut self.collector),
            Scanner::Unread => {}
        }
        self.note_token();
    }
}

/// Picks the requests that are REDCap API calls: `POST` to an API endpoint path.
pub struct ApiRequestSelector {
    paths: ApiPaths,
    max_input_vars: u64,
    /// Given to each body, so that an open request's token is known as soon as it is read.
    key: Option<std::sync::Arc<SiteKey>>,
    stats: SelectorStats,
}

/// What the selector has seen; telemetry reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SelectorStats {
    pub(crate) requests: u64,
    pub(crate) selected: u64,
    /// Requests to an API path with another method (REDCap answers 501; not an API call).
    pub(crate) other_method_on_api_path: u64,
}

impl ApiRequestSelector {
    pub fn new(paths: ApiPaths) -> ApiRequestSelector {
        ApiRequestSelector {
            paths,
            max_input_vars: DEFAULT_MAX_INPUT_VARS,
            key: None,
            stats: SelectorStats::default(),
        }
    }

    /// Bodies fingerprint their token as soon as it is read (the policy's reorder hold then
    /// holds back only that token's calls behind an open request).
    pub(crate) fn with_site_key(mut self, key: SiteKey) -> ApiRequestSelector {
        self.key = Some(std::sync::Arc::new(key));
        self
    }

    /// Reads bodies as PHP with this `max_input_vars` (`redcap.max_input_vars`) does.
    pub fn with_max_input_vars(mut self, max_input_vars: u64) -> ApiRequestSelector {
        self.max_input_vars = max_input_vars;
        self
    }

    #[cfg(test)]
    pub(crate) fn stats(&self) -> &SelectorStats {
        &self.stats
    }
}

impl ExchangeSelector for ApiRequestSelector {
    type Body = FormBody;

    fn select(&mut self, head: &RequestHead) -> Option<FormBody> {
        self.stats.requests += 1;
        if !self.paths.matches(&head.target) {
            return None;
        }
        if head.method != "POST" {
            self.stats.other_method_on_api_path += 1;
            return None;
        }
        self.stats.selected += 1;
        let body = FormBody::new(head.content_type.as_deref(), self.max_input_vars);
        Some(match &self.key {
            Some(key) => body.with_key(key.clone()),
            None => body,
        })
    }
}

/// Counts of calls by what was wrong with their token or body; telemetry reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct RedcapStats {
    pub(crate) calls: u64,
    pub(crate) incomplete: u64,
    pub(crate) token_missing: u64,
    pub(crate) token_malformed: u64,
    /// Calls whose request head could not be read (see [`TokenProblem::Unreadable`]).
    pub(crate) token_unreadable: u64,
    pub(crate) unsupported_content_type: u64,
    pub(crate) malformed_multipart: u64,
    pub(crate) field_too_long: u64,
    /// Calls whose body had more fields than `redcap.max_input_vars`.
    pub(crate) input_vars_exceeded: u64,
    pub(crate) body_gap: u64,
    /// Requests to an API path that the web server refused with its own error page (400, 404,
    /// …): never run by REDCap, so not calls (see `ResponseSummary::is_web_server_refusal`).
    pub(crate) web_server_refusals: u64,
    /// Calls whose client was named by a trusted proxy's header.
    pub(crate) client_from_proxy: u64,
    /// Calls from a trusted proxy without a usable client-address header: the proxy stays the
    /// client (is the proxy configured to write `redcap.client_address_header`?).
    pub(crate) proxy_header_missing: u64,
    /// Calls whose client-address header held something that is not an address (`unknown`,
    /// an obfuscated name): the walk stopped at the last address.
    pub(crate) proxy_header_unparsable: u64,
}

impl RedcapStats {
    /// Counts where a call's client came from, and applies it to the call.
    pub(crate) fn apply_origin(&mut self, call: &mut ApiCall, origin: ClientOrigin) {
        let client = match origin {
            ClientOrigin::Peer => return,
            ClientOrigin::HeaderMissing => {
                self.proxy_header_missing += 1;
                return;
            }
            ClientOrigin::Forwarded { client } => client,
            ClientOrigin::HeaderUnparsable { client } => {
                self.proxy_header_unparsable += 1;
                if client == call.client {
                    // Nothing in the header was an address: the proxy stays the client.
                    return;
                }
                client
            }
        };
        self.client_from_proxy += 1;
        call.proxy = Some(call.client);
        call.client = client;
    }

    pub(crate) fn count(&mut self, call: &ApiCall) {
        self.calls += 1;
        self.incomplete += u64::from(!call.complete);
        match call.token {
            Ok(_) => {}
            Err(TokenProblem::Missing) => self.token_missing += 1,
            Err(TokenProblem::Malformed) => self.token_malformed += 1,
            Err(TokenProblem::Unreadable) => self.token_unreadable += 1,
        }
        match call.body_problem {
            None => {}
            Some(BodyProblem::UnsupportedContentType) => self.unsupported_content_type += 1,
            Some(BodyProblem::MalformedMultipart) => self.malformed_multipart += 1,
            Some(BodyProblem::FieldTooLong) => self.field_too_long += 1,
            Some(BodyProblem::InputVarsExceeded) => self.input_vars_exceeded += 1,
            Some(BodyProblem::Gap) => self.body_gap += 1,
        }
    }
}

#[cfg(test)]
pub(crate) mod sample;
#[cfg(test)]
mod tests;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RedcapConfig {
    /// Path patterns of the API endpoint: `**` any characters, `*` any but `/`.
    pub(crate) api_paths: ApiPaths,
    /// PHP's `max_input_vars` on the web server: bodies are read as PHP reads them with it.
    pub(crate) max_input_vars: u64,
    /// Load balancers or TLS terminators (addresses, CIDRs) whose client-address header is
    /// believed; empty: none, the connection's peer is always the client.
    pub(crate) trusted_proxies: TrustedProxies,
    /// The header those proxies write the client's address in.
    pub(crate) client_address_header: ClientAddressHeader,
}

impl Default for RedcapConfig {
    fn default() -> Self {
        Self {
            api_paths: ApiPaths::default(),
            max_input_vars: DEFAULT_MAX_INPUT_VARS,
            trusted_proxies: TrustedProxies::default(),
            client_address_header: ClientAddressHeader::default(),
        }
    }
}

impl RedcapConfig {
    /// What is wrong with `[redcap]`, each problem keyed by its full path.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        // `api_paths` was checked as it was read: an `ApiPaths` holds only valid patterns.
        at_least_one(
            &mut problems,
            &[("redcap.max_input_vars", self.max_input_vars)],
        );
        problems
    }

    /// How calls' client addresses are found.
    pub(crate) fn client_addressing(&self) -> ClientAddressing {
        ClientAddressing {
            trusted_proxies: self.trusted_proxies.clone(),
            header: self.client_address_header,
        }
    }
}
