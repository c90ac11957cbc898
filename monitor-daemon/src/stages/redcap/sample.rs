//! Made-up calls for the tests of later stages (policy, health), so that each does not build its
//! own: a small metadata export by a numbered token, to be adjusted field by field.

use std::net::{IpAddr, Ipv4Addr};

use super::{ApiCall, ApiParams, TokenIdentity};
use crate::shared::model::{Endpoint, Span, Timestamp};
use crate::shared::token::{HookToken, MaskedToken, TokenFingerprint};

pub(crate) fn at(secs: u64) -> Timestamp {
    Timestamp::from_nanos(secs * 1_000_000_000)
}

/// Token `n`'s fingerprint in these samples.
pub(crate) fn fingerprint(n: u8) -> TokenFingerprint {
    TokenFingerprint([n; 8])
}

/// A 20 ms metadata export by token `n` that starts and ends at `secs`.
pub(crate) fn call(n: u8, secs: u64) -> ApiCall {
    let endpoint = |port| Endpoint {
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port,
    };
    ApiCall {
        ts_start: at(secs),
        ts_end: at(secs),
        ttfb: Some(Span::from_millis(20)),
        client: endpoint(40000),
        server: endpoint(80),
        proxy: None,
        method: "POST".into(),
        path: "/api/".into(),
        http_version: crate::stages::http::HttpVersion::Http11,
        token: Ok(TokenIdentity {
            fingerprint: fingerprint(n),
            masked: MaskedToken(format!("T{n}…")),
        }),
        params: ApiParams {
            content: Some("metadata".into()),
            format: Some("json".into()),
            ..ApiParams::default()
        },
        status: Some(200),
        request_bytes: 60,
        response_bytes: Some(1000),
        response_wire_bytes: Some(300),
        complete: true,
        body_problem: None,
        raw_token: HookToken::default(),
    }
}
