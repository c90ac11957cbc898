//! Made-up traffic for the tests of the pipeline and of what drives it (the shared state's
//! tests run two pipelines through Redis): API requests on numbered connections, and the
//! violations of a run in a stable order.

use std::net::{IpAddr, Ipv4Addr};

use crate::shared::model::{Endpoint, TcpSegment, Timestamp};
use crate::stages::policy::Verdict;

pub(crate) const CLIENT: Endpoint = Endpoint {
    ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
    port: 40000,
};
pub(crate) const SERVER: Endpoint = Endpoint {
    ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
    port: 80,
};

pub(crate) fn segment_from(
    client: Endpoint,
    ts_ms: u64,
    to_server: bool,
    seq: u32,
    payload: &[u8],
) -> TcpSegment<'_> {
    let (src, dst) = if to_server {
        (client, SERVER)
    } else {
        (SERVER, client)
    };
    TcpSegment::sample(
        Timestamp(1_700_000_000_000_000_000 + ts_ms * 1_000_000),
        (src, dst),
        seq,
        payload,
    )
}

/// A request by token `token` (0..10) for `content`.
pub(crate) fn request_by(token: usize, content: &str) -> String {
    let body = format!(
        "token={}{token:01X}&content={content}",
        "0123456789ABCDEF0123456789ABCDE"
    );
    format!(
        "POST /api/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Every violation in `verdicts`, in a stable order.
pub(crate) fn violations(verdicts: &[Verdict]) -> Vec<(Timestamp, String, String, u32)> {
    let mut all: Vec<_> = verdicts
        .iter()
        .flat_map(|v| &v.violations)
        .map(|v| (v.ts, v.token.to_string(), v.rule.clone(), v.count))
        .collect();
    all.sort();
    all
}
