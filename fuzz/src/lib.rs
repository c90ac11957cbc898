//! What the fuzz targets share: how an input is cut into chunks, one HTTP conversation driven
//! through the HTTP stage, REDCap extraction and the policy, and the pipeline they feed.
//!
//! Inputs are plain bytes with a leading control byte (not `arbitrary` structures) wherever the
//! seeds are real messages from the tests, so that a seed reads as what it is and libFuzzer's
//! mutations stay meaningful. Reassembly alone takes a structured input (`arbitrary`).

use std::net::{IpAddr, Ipv4Addr};

use redcap_monitor::commands::config::Config;
use redcap_monitor::shared::model::{
    CloseReason, ConnectionId, Direction, Endpoint, StreamEvent, Timestamp,
};
use redcap_monitor::shared::token::SiteKey;
use redcap_monitor::stages::http::{HttpExchange, HttpLimits, HttpTracker};
use redcap_monitor::stages::pipeline::Pipeline;
use redcap_monitor::stages::policy::Policy;
use redcap_monitor::stages::policy::PolicyConfig;
use redcap_monitor::stages::redcap::{
    ApiCall, ApiPaths, ApiRequestSelector, FormBody, KeepRawToken,
};

/// Separates the client's bytes from the server's in the HTTP targets' inputs.
pub const SERVER_SEPARATOR: &[u8] = b"\0--server--\0";

/// The chunk sizes a control byte picks from (its low three bits).
const CHUNK_SIZES: [usize; 8] = [1, 2, 3, 7, 16, 64, 512, 4096];

/// The leading control byte of an input, and the rest.
pub fn split_control(data: &[u8]) -> Option<(u8, &[u8])> {
    let (&control, rest) = data.split_first()?;
    Some((control, rest))
}

/// The chunk size a control byte picks.
pub fn chunk_size(control: u8) -> usize {
    CHUNK_SIZES[usize::from(control & 7)]
}

/// The client's and the server's bytes of an HTTP target's input.
pub fn split_conversation(data: &[u8]) -> (&[u8], &[u8]) {
    match data
        .windows(SERVER_SEPARATOR.len())
        .position(|w| w == SERVER_SEPARATOR)
    {
        Some(at) => (&data[..at], &data[at + SERVER_SEPARATOR.len()..]),
        None => (data, &[]),
    }
}

pub fn endpoint(last: u8, port: u16) -> Endpoint {
    Endpoint {
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)),
        port,
    }
}

pub fn site_key() -> SiteKey {
    SiteKey::from_bytes([7; 32])
}

/// Limits small enough that the fuzzer reaches them (the defaults are far larger).
pub fn small_http_limits() -> HttpLimits {
    HttpLimits {
        max_head_bytes: 2048,
        max_headers: 32,
        max_pending_requests: 4,
        max_decoded_body_bytes: 1 << 20,
        // Within reach of one connection with a response decoder: the budget's resets run too.
        max_state_bytes_total: 64 * 1024,
    }
}

/// One connection's client and server bytes, in chunks of the control byte's size: bit 3
/// interleaves the two directions (otherwise the client's bytes all come first), bits 4 and 5
/// turn the client's and the server's second chunk into a gap, bits 6–7 pick the time between
/// chunks. Every exchange the HTTP stage gives goes through REDCap extraction and the policy.
pub fn drive_conversation(control: u8, client: &[u8], server: &[u8]) {
    let mut http = HttpTracker::new(
        small_http_limits(),
        ApiRequestSelector::new(ApiPaths::default()).with_max_input_vars(64),
    );
    let conn = ConnectionId(1);
    let size = chunk_size(control);
    let step = [0, 1_000_000, 1_000_000_000, 100_000_000_000][usize::from(control >> 6)];
    let mut exchanges: Vec<HttpExchange<FormBody>> = Vec::new();
    let mut ts = Timestamp(1_767_600_000_000_000_000);
    http.on_event(
        &StreamEvent::Opened {
            conn,
            ts,
            client: endpoint(1, 40000),
            server: endpoint(2, 80),
        },
        &mut exchanges,
    );
    let mut sides = [
        (
            Direction::ClientToServer,
            client.chunks(size),
            0usize,
            control & 0x10 != 0,
        ),
        (
            Direction::ServerToClient,
            server.chunks(size),
            0usize,
            control & 0x20 != 0,
        ),
    ];
    let interleave = control & 0x08 != 0;
    loop {
        let mut fed = false;
        for (dir, chunks, n, gap_second) in &mut sides {
            let Some(bytes) = chunks.next() else {
                continue;
            };
            fed = true;
            ts = Timestamp(ts.0 + step);
            *n += 1;
            let event = if *n == 2 && *gap_second {
                StreamEvent::Gap {
                    conn,
                    dir: *dir,
                    ts,
                    len: bytes.len() as u64,
                }
            } else {
                StreamEvent::Data {
                    conn,
                    dir: *dir,
                    ts,
                    bytes,
                }
            };
            http.on_event(&event, &mut exchanges);
            if !interleave {
                // The client's bytes all come first.
                break;
            }
        }
        if !fed {
            break;
        }
    }
    http.on_event(
        &StreamEvent::Closed {
            conn,
            ts,
            reason: CloseReason::Fin,
        },
        &mut exchanges,
    );
    judge(exchanges, ts);
}

/// Each exchange as a call, through the default policy.
pub fn judge(exchanges: Vec<HttpExchange<FormBody>>, now: Timestamp) {
    let key = site_key();
    let mut policy = Policy::new(&PolicyConfig::default());
    for exchange in exchanges {
        let call = ApiCall::from_exchange(exchange, &key, KeepRawToken::ForSuspendHooks);
        policy.push(call);
    }
    while policy
        .poll(now, &redcap_monitor::stages::policy::Hold::all_since(None))
        .is_some()
    {}
    while policy.drain().is_some() {}
}

/// The whole pipeline with the default configuration.
pub fn pipeline() -> Pipeline {
    Pipeline::new(Config::default().pipeline(), site_key())
}

/// Form body extraction (urlencoded, multipart) in one piece and in chunks.
pub mod form {
    use redcap_monitor::shared::token::TokenFingerprint;
    use redcap_monitor::stages::http::RequestBody;
    use redcap_monitor::stages::redcap::{FormBody, RequestFields};

    /// What a body gave, comparable: the token by its fingerprint.
    #[derive(Debug, PartialEq)]
    pub struct Extracted {
        pub token: Option<Result<TokenFingerprint, redcap_monitor::shared::token::TokenProblem>>,
        pub params: redcap_monitor::stages::redcap::ApiParams,
        pub problem: Option<redcap_monitor::stages::redcap::BodyProblem>,
    }

    pub fn extracted(fields: RequestFields) -> Extracted {
        let key = super::site_key();
        Extracted {
            token: fields
                .token
                .map(|token| token.map(|raw| key.fingerprint(&raw))),
            params: fields.params,
            problem: fields.problem,
        }
    }

    /// Reads `body` whole, with PHP's `max_input_vars` low enough to be reached.
    pub fn one_shot(content_type: Option<&str>, body: &[u8]) -> Extracted {
        let mut reader = FormBody::new(content_type, 64);
        reader.feed(body);
        extracted(reader.finish())
    }

    /// Reads `body` in chunks of the control byte's size; bit 3 loses the second chunk.
    /// Without a loss the fields must equal the one-piece reading.
    pub fn check(content_type: Option<&str>, control: u8, body: &[u8]) {
        let lose_second = control & 0x08 != 0;
        let mut reader = FormBody::new(content_type, 64);
        for (i, chunk) in body.chunks(super::chunk_size(control)).enumerate() {
            if i == 1 && lose_second {
                reader.gap(chunk.len() as u64);
            } else {
                reader.feed(chunk);
            }
        }
        let chunked = extracted(reader.finish());
        if !lose_second {
            assert_eq!(
                chunked,
                one_shot(content_type, body),
                "chunks change the fields"
            );
        }
    }
}
