use super::decode::tests::{gzip, raw_deflate, sample, zlib};
use super::*;
use crate::shared::model::{CloseReason, Direction};
use std::net::{IpAddr, Ipv4Addr};

/// Collects a selected request's body as it arrives.
#[derive(Debug, Default)]
pub(in crate::stages::http) struct Collected {
    pub(in crate::stages::http) bytes: Vec<u8>,
    pub(in crate::stages::http) lost: u64,
}

impl RequestBody for Collected {
    fn feed(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
    }
    fn gap(&mut self, len: u64) {
        self.lost += len;
    }
    fn held_bytes(&self) -> usize {
        self.bytes.capacity()
    }
}

/// Selects every request whose target does not contain "skip".
pub(in crate::stages::http) struct AllButSkip;

impl ExchangeSelector for AllButSkip {
    type Body = Collected;
    fn select(&mut self, head: &RequestHead) -> Option<Collected> {
        (!head.target.contains("skip")).then(Collected::default)
    }
}

pub(in crate::stages::http) const CONN: ConnectionId = ConnectionId(7);

pub(in crate::stages::http) struct Harness {
    pub(in crate::stages::http) tracker: HttpTracker<AllButSkip>,
    pub(in crate::stages::http) out: Vec<HttpExchange<Collected>>,
}

impl Harness {
    pub(in crate::stages::http) fn new() -> Self {
        Self::with_limits(HttpLimits::default())
    }

    pub(in crate::stages::http) fn with_limits(limits: HttpLimits) -> Self {
        let mut harness = Self {
            tracker: HttpTracker::new(limits, AllButSkip),
            out: Vec::new(),
        };
        let ep = |last, port| Endpoint {
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)),
            port,
        };
        harness.event(StreamEvent::Opened {
            conn: CONN,
            ts: Timestamp(0),
            client: ep(1, 40_000),
            server: ep(2, 443),
        });
        harness
    }

    pub(in crate::stages::http) fn event(&mut self, event: StreamEvent<'_>) {
        self.tracker.on_event(&event, &mut self.out);
    }

    pub(in crate::stages::http) fn data(&mut self, dir: Direction, ts: u64, bytes: &[u8]) {
        self.event(StreamEvent::Data {
            conn: CONN,
            dir,
            ts: Timestamp(ts),
            bytes,
        });
    }

    pub(in crate::stages::http) fn client(&mut self, ts: u64, bytes: &[u8]) {
        self.data(Direction::ClientToServer, ts, bytes);
    }

    pub(in crate::stages::http) fn server(&mut self, ts: u64, bytes: &[u8]) {
        self.data(Direction::ServerToClient, ts, bytes);
    }

    pub(in crate::stages::http) fn gap(&mut self, dir: Direction, ts: u64, len: u64) {
        self.event(StreamEvent::Gap {
            conn: CONN,
            dir,
            ts: Timestamp(ts),
            len,
        });
    }

    pub(in crate::stages::http) fn close(&mut self, ts: u64) {
        self.event(StreamEvent::Closed {
            conn: CONN,
            ts: Timestamp(ts),
            reason: CloseReason::Fin,
        });
    }

    pub(in crate::stages::http) fn stats(&self) -> HttpStats {
        self.tracker.stats().clone()
    }

    fn statuses(&self) -> Vec<Option<u16>> {
        self.out
            .iter()
            .map(|e| e.response.as_ref().map(|r| r.status))
            .collect()
    }
}

fn response(exchange: &HttpExchange<Collected>) -> &ResponseSummary {
    exchange.response.as_ref().expect("a response")
}

fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, chunk) in body.chunks(size).enumerate() {
        if i % 2 == 0 {
            out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        } else {
            out.extend_from_slice(format!("{:X};ext=\"v\"\r\n", chunk.len()).as_bytes());
        }
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    out
}

#[test]
fn keep_alive_connection_emits_each_exchange_with_its_timing() {
    let mut h = Harness::new();
    h.client(10, b"GET /a?x=1 HTTP/1.1\r\nHost: redcap.example\r\nX-Forwarded-For: 192.0.2.9, 10.1.1.1\r\n\r\n");
    h.server(20, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel");
    assert!(h.out.is_empty());
    h.server(21, b"lo");
    assert_eq!(h.out.len(), 1);
    h.client(30, b"POST /b HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 3\r\n\r\nabc");
    h.server(40, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    h.client(50, b"GET /c HTTP/1.1\r\n\r\n");
    h.server(60, b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(h.statuses(), [Some(200), Some(404), Some(500)]);

    let first = &h.out[0];
    assert_eq!(first.request.method, "GET");
    assert_eq!(first.request.path(), "/a");
    assert_eq!(first.request.host.as_deref(), Some("redcap.example"));
    assert_eq!(
        first.request.forwarded_for.as_deref(),
        Some("192.0.2.9, 10.1.1.1")
    );
    assert_eq!(
        (first.ts_request_start, first.ts_request_end),
        (Timestamp(10), Timestamp(10))
    );
    let r = response(first);
    assert_eq!(
        (r.ts_first_byte, r.ts_last_byte),
        (Timestamp(20), Timestamp(21))
    );
    assert_eq!((r.wire_body_bytes, r.decoded_body_bytes), (5, 5));
    assert_eq!(
        (r.coding, r.decoding),
        (ContentCoding::Identity, BodyDecoding::Identity)
    );
    assert_eq!(first.incomplete, None);

    let second = &h.out[1];
    assert_eq!(second.body.bytes, b"abc");
    assert_eq!(second.request_body_bytes, 3);
    assert_eq!(second.request.content_length, Some(3));
    assert_eq!(
        second.request.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let stats = h.stats();
    assert_eq!(
        (stats.requests, stats.responses, stats.exchanges),
        (3, 3, 3)
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut h = Harness::new();
    h.client(10, b"GET /1 HTTP/1.1\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 4\r\n\r\nbodyGET /3 HTTP/1.1\r\n\r\n");
    h.server(
        20,
        b"HTTP/1.1 201 A\r\nContent-Length: 1\r\n\r\naHTTP/1.1 202 B\r\nContent-Length: 2\r\n\r\nbbHTTP/1.1 203 C\r\nContent-Length: 3\r\n\r\nccc",
    );
    assert_eq!(h.statuses(), [Some(201), Some(202), Some(203)]);
    let targets: Vec<_> = h.out.iter().map(|e| e.request.target.as_str()).collect();
    assert_eq!(targets, ["/1", "/2", "/3"]);
    assert_eq!(h.out[1].body.bytes, b"body");
    let wire: Vec<_> = h.out.iter().map(|e| response(e).wire_body_bytes).collect();
    assert_eq!(wire, [1, 2, 3]);
}

#[test]
fn the_web_servers_own_error_page_is_told_from_an_application_answer() {
    let refusal = |answer: &[u8]| {
        let mut h = Harness::new();
        h.client(10, b"POST /api/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        h.server(20, answer);
        response(&h.out[0]).is_web_server_refusal()
    };
    // Apache's 400 page.
    assert!(refusal(
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/html; charset=iso-8859-1\r\nContent-Length: 2\r\n\r\nno"
    ));
    assert!(refusal(
        b"HTTP/1.1 404 Not Found\r\nContent-Type: TEXT/HTML\r\nContent-Length: 2\r\n\r\nno"
    ));
    // REDCap's API answers its errors in the format asked for; a 5xx may be the call itself.
    assert!(!refusal(
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    ));
    assert!(!refusal(
        b"HTTP/1.1 500 Error\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nno"
    ));
    assert!(!refusal(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\n\r\nok"
    ));
}

#[test]
fn a_request_behind_an_answer_that_closes_the_connection_never_ran() {
    for closing in [
        &b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx"[..],
        b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
    ] {
        let mut h = Harness::new();
        h.client(
            10,
            b"GET /1 HTTP/1.0\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        );
        h.server(20, closing);
        h.close(30);
        let targets: Vec<_> = h.out.iter().map(|e| e.request.target.as_str()).collect();
        assert_eq!(targets, ["/1"], "{}", String::from_utf8_lossy(closing));
        assert_eq!(h.stats().unread_after_close, 1);
    }
    // Behind a keep-alive answer, a request left unanswered did reach the server.
    let mut h = Harness::new();
    h.client(
        10,
        b"GET /1 HTTP/1.0\r\n\r\nPOST /2 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    h.server(
        20,
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx",
    );
    h.close(30);
    assert_eq!(h.out.len(), 2);
    assert_eq!(h.out[1].incomplete, Some(Incomplete::NoResponse));
}

#[test]
fn pending_overflow_evicts_the_oldest_and_skips_its_response() {
    let mut h = Harness::with_limits(HttpLimits {
        max_pending_requests: 2,
        ..HttpLimits::default()
    });
    h.client(
        10,
        b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n",
    );
    assert_eq!(h.out.len(), 1);
    assert_eq!(h.out[0].incomplete, Some(Incomplete::NoResponse));
    h.server(20, b"HTTP/1.1 201 A\r\nContent-Length: 0\r\n\r\nHTTP/1.1 202 B\r\nContent-Length: 0\r\n\r\nHTTP/1.1 203 C\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.statuses(), [None, Some(202), Some(203)]);
    assert_eq!(h.stats().pending_overflow, 1);
    assert_eq!(h.stats().unmatched_responses, 0);
}

const FORM_REQUEST: &[u8] = b"POST /api/ HTTP/1.1\r\nHost: r\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 40\r\n\r\ntoken=0123456789ABCDEF&content=record&x=";

#[test]
fn content_length_body_split_at_every_byte_boundary() {
    let body_at = FORM_REQUEST.len() - 40;
    for split in 0..=FORM_REQUEST.len() {
        let mut h = Harness::new();
        let (a, b) = FORM_REQUEST.split_at(split);
        h.client(10, a);
        h.client(11, b);
        h.server(20, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.out.len(), 1, "split {split}");
        let ex = &h.out[0];
        assert_eq!(ex.body.bytes, &FORM_REQUEST[body_at..], "split {split}");
        assert_eq!(ex.request_body_bytes, 40);
        let start = if split > 0 { 10 } else { 11 };
        let end = if split < FORM_REQUEST.len() { 11 } else { 10 };
        assert_eq!(ex.ts_request_start, Timestamp(start), "split {split}");
        assert_eq!(ex.ts_request_end, Timestamp(end), "split {split}");
        assert_eq!(ex.incomplete, None);
    }

    let mut h = Harness::new();
    for (i, byte) in FORM_REQUEST.iter().enumerate() {
        h.client(100 + i as u64, std::slice::from_ref(byte));
    }
    h.server(1000, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let ex = &h.out[0];
    assert_eq!(ex.body.bytes, &FORM_REQUEST[body_at..]);
    assert_eq!(ex.ts_request_start, Timestamp(100));
    assert_eq!(
        ex.ts_request_end,
        Timestamp(100 + FORM_REQUEST.len() as u64 - 1)
    );
}

#[test]
fn chunked_request_and_response_at_every_split() {
    let request = b"POST /api/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nT: v\r\n\r\n";
    let reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
    for split in 0..=request.len() {
        let mut h = Harness::new();
        let (a, b) = request.split_at(split);
        h.client(10, a);
        h.client(11, b);
        h.server(20, reply);
        let ex = &h.out[0];
        assert_eq!(ex.body.bytes, b"hello world", "split {split}");
        assert_eq!(ex.request_body_bytes, 11);
        assert!(ex.request.chunked);
        assert_eq!(ex.incomplete, None);
    }
    for split in 0..=reply.len() {
        let mut h = Harness::new();
        h.client(10, request);
        let (a, b) = reply.split_at(split);
        h.server(20, a);
        h.server(21, b);
        h.client(30, b"GET /next HTTP/1.1\r\n\r\n");
        h.server(40, b"HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(h.statuses(), [Some(200), Some(204)], "split {split}");
        assert_eq!(response(&h.out[0]).wire_body_bytes, 19, "split {split}");
        assert_eq!(h.out[0].incomplete, None);
    }
}

#[test]
fn chunked_gzip_response_reports_exact_decoded_size() {
    let plain = sample(1500);
    let gz = gzip(&plain);
    let mut reply =
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    reply.extend_from_slice(&chunked(&gz, 97));
    let check = |h: &Harness, label: &str| {
        let r = response(&h.out[0]);
        assert_eq!(r.wire_body_bytes, gz.len() as u64, "{label}");
        assert_eq!(r.decoded_body_bytes, 1500, "{label}");
        assert_eq!(
            (r.coding, r.decoding),
            (ContentCoding::Gzip, BodyDecoding::Decoded)
        );
    };
    for split in 0..=reply.len() {
        let mut h = Harness::new();
        h.client(10, b"GET /export HTTP/1.1\r\n\r\n");
        let (a, b) = reply.split_at(split);
        h.server(20, a);
        h.server(21, b);
        check(&h, &format!("split {split}"));
    }
    let mut h = Harness::new();
    h.client(10, b"GET /export HTTP/1.1\r\n\r\n");
    for (i, byte) in reply.iter().enumerate() {
        h.server(20 + i as u64, std::slice::from_ref(byte));
    }
    check(&h, "byte by byte");
    assert_eq!(
        response(&h.out[0]).ts_last_byte,
        Timestamp(20 + reply.len() as u64 - 1)
    );
}

#[test]
fn deflate_is_decoded_zlib_wrapped_or_raw() {
    let plain = sample(3000);
    let (zlib, raw) = (zlib(&plain), raw_deflate(&plain));

    let mut h = Harness::new();
    h.client(10, b"GET /a HTTP/1.1\r\n\r\n");
    h.server(
        20,
        format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: {}\r\n\r\n",
            zlib.len()
        )
        .as_bytes(),
    );
    h.server(21, &zlib);
    h.client(30, b"GET /b HTTP/1.0\r\n\r\n");
    h.server(40, b"HTTP/1.0 200 OK\r\nContent-Encoding: Deflate\r\n\r\n");
    h.server(41, &raw);
    h.close(50);
    for ex in &h.out {
        let r = response(ex);
        assert_eq!(
            (r.decoding, r.decoded_body_bytes),
            (BodyDecoding::Decoded, 3000)
        );
    }
    assert_eq!(h.out.len(), 2);
}

#[test]
fn expect_continue_interim_response_is_skipped_and_timing_uses_the_final_one() {
    let mut h = Harness::new();
    h.client(
        10,
        b"POST /api/ HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 7\r\n\r\n",
    );
    h.server(20, b"HTTP/1.1 100 Continue\r\n\r\n");
    h.client(30, b"token=x");
    assert!(h.out.is_empty());
    h.server(40, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
    h.server(41, b"{}");
    let ex = &h.out[0];
    assert!(ex.request.expect_continue);
    assert_eq!(ex.body.bytes, b"token=x");
    assert_eq!(ex.ts_request_end, Timestamp(30));
    let r = response(ex);
    assert_eq!(
        (r.status, r.ts_first_byte, r.ts_last_byte),
        (200, Timestamp(40), Timestamp(41))
    );
    assert_eq!(h.stats().interim_responses, 1);
    assert_eq!(h.stats().responses, 1);
}

#[test]
fn head_204_and_304_responses_have_no_body() {
    let mut h = Harness::new();
    h.client(10, b"HEAD /x HTTP/1.1\r\n\r\nGET /y HTTP/1.1\r\n\r\nGET /z HTTP/1.1\r\n\r\nGET /w HTTP/1.1\r\n\r\n");
    h.server(
        20,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    );
    assert_eq!(h.statuses(), [Some(200), Some(204), Some(304), Some(200)]);
    let wire: Vec<_> = h.out.iter().map(|e| response(e).wire_body_bytes).collect();
    assert_eq!(wire, [0, 0, 0, 2]);
    assert!(h.out.iter().all(|e| e.incomplete.is_none()));
}

#[test]
fn body_without_length_is_read_until_close() {
    let mut h = Harness::new();
    h.client(10, b"GET /a HTTP/1.1\r\n\r\n");
    h.server(20, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc");
    h.server(21, b"defHTTP/1.1 200 fake\r\n\r\n");
    assert!(h.out.is_empty());
    h.close(30);
    let r = response(&h.out[0]);
    assert_eq!((r.wire_body_bytes, r.ts_last_byte), (27, Timestamp(21)));
    assert_eq!(h.out[0].incomplete, None);
    assert_eq!(h.tracker.connections(), 0);
}

#[test]
fn gap_in_content_length_body_is_skipped_and_marked() {
    let mut h = Harness::new();
    h.client(10, b"POST /1 HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    h.gap(Direction::ClientToServer, 11, 4);
    h.client(12, b"hij");
    h.server(20, b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n12");
    h.client(30, b"GET /2 HTTP/1.1\r\n\r\n");
    h.gap(Direction::ServerToClient, 21, 5);
    h.server(
        22,
        b"8HTTP/1.1 201 OK\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(h.statuses(), [Some(200), Some(201)]);
    let first = &h.out[0];
    assert_eq!(first.incomplete, Some(Incomplete::RequestGap));
    assert_eq!(
        (first.body.bytes.as_slice(), first.body.lost),
        (&b"abchij"[..], 4)
    );
    assert_eq!(first.request_body_bytes, 10);
    assert_eq!(first.ts_request_end, Timestamp(12));
    assert_eq!(response(first).wire_body_bytes, 8);
    let second = &h.out[1];
    assert_eq!(second.incomplete, None);
    assert_eq!(h.stats().resyncs, 0);

    h.client(40, b"GET /3 HTTP/1.1\r\n\r\n");
    h.server(
        50,
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 30\r\n\r\n",
    );
    h.gap(Direction::ServerToClient, 51, 30);
    let third = &h.out[2];
    assert_eq!(third.incomplete, Some(Incomplete::ResponseGap));
    let r = response(third);
    assert_eq!((r.wire_body_bytes, r.decoding), (30, BodyDecoding::Failed));
}

#[test]
fn gap_in_chunked_body_resyncs_to_the_next_exchange() {
    let mut h = Harness::new();
    h.client(10, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    h.server(
        20,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab",
    );
    h.gap(Direction::ServerToClient, 21, 10);
    h.server(
        22,
        b"z\r\n0\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    );
    assert_eq!(h.statuses(), [Some(200), Some(201)]);
    assert_eq!(h.out[0].incomplete, Some(Incomplete::ResponseGap));
    assert_eq!(h.out[1].incomplete, None);
    assert_eq!(response(&h.out[1]).wire_body_bytes, 2);
    assert_eq!(h.stats().resyncs, 1);
}

#[test]
fn gap_that_swallows_a_response_start_fails_that_response_only() {
    let mut h = Harness::new();
    h.client(
        10,
        b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n",
    );
    h.server(20, b"HTTP/1.1 201 OK\r\nContent-Length: 2\r\n\r\nok");
    h.gap(Direction::ServerToClient, 21, 20);
    h.server(
        22,
        b"ength: 2\r\n\r\nokHTTP/1.1 203 OK\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(h.statuses(), [Some(201), None, Some(203)]);
    assert_eq!(h.out[1].incomplete, Some(Incomplete::ResponseGap));
    assert_eq!(h.out[2].incomplete, None);
}

#[test]
fn gap_inside_chunk_data_keeps_the_framing() {
    let mut h = Harness::new();
    h.client(
        10,
        b"POST /1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\na\r\n01",
    );
    h.gap(Direction::ClientToServer, 11, 6);
    h.client(12, b"89\r\n0\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    h.server(
        20,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(h.out.len(), 2);
    assert_eq!(h.out[0].incomplete, Some(Incomplete::RequestGap));
    assert_eq!(h.out[0].request_body_bytes, 10);
    assert_eq!(h.stats().resyncs, 0);
}

#[test]
fn mid_stream_pickup_skips_to_the_next_message_start() {
    let mut h = Harness::new();
    h.client(
        10,
        b"ntent=record&format=JSONPOST /api/ HTTP/1.1\r\nContent-Length: 3\r\n\r\na=1",
    );
    h.server(
        11,
        b"d\":1}]\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
    );
    assert_eq!(h.statuses(), [Some(200)]);
    let ex = &h.out[0];
    assert_eq!(
        (ex.request.method.as_str(), ex.body.bytes.as_slice()),
        ("POST", &b"a=1"[..])
    );
    assert_eq!(ex.incomplete, None);
    let stats = h.stats();
    assert_eq!(
        (
            stats.midstream_pickups,
            stats.bad_request_head,
            stats.resyncs
        ),
        (2, 0, 0)
    );
}

#[test]
fn unmatched_response_is_counted_and_skipped() {
    let mut h = Harness::new();
    h.server(5, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nHTTP");
    h.client(10, b"GET /a HTTP/1.1\r\n\r\n");
    h.server(20, b"HTTP/1.1 202 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.statuses(), [Some(202)]);
    assert_eq!(h.stats().unmatched_responses, 1);
}

#[test]
fn oversize_head_is_counted_emitted_unreadable_and_its_answer_keeps_fifo_right() {
    let mut h = Harness::with_limits(HttpLimits {
        max_head_bytes: 64,
        ..HttpLimits::default()
    });
    let mut big = b"POST  /big  HTTP/1.1\r\nX-Forwarded-For: ".to_vec();
    big.extend(std::iter::repeat_n(b'1', 200));
    big.extend_from_slice(b"\r\n\r\nGET /ok HTTP/1.1\r\n\r\n");
    h.client(10, &big);
    h.server(20, b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.statuses(), [Some(431), Some(200)]);
    assert_eq!(h.out[0].request.method, "POST");
    assert_eq!(h.out[0].request.target, "/big");
    assert_eq!(h.out[0].incomplete, Some(Incomplete::UnreadableHead));
    assert_eq!(h.out[1].request.target, "/ok");
    assert_eq!(h.out[1].incomplete, None);
    assert_eq!(h.stats().head_too_large, 1);
}

#[test]
fn chunk_sizes_are_read_as_apache_reads_them() {
    // Each of these is a 9-byte chunk to Apache 2.4.
    for size_line in [
        &b"0000000000000000000000009"[..],
        b"9;ext=1;b=\"x\"",
        b"9 ",
        b"9\t;x",
    ] {
        let mut h = Harness::new();
        let mut req = b"POST /api/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec();
        req.extend_from_slice(size_line);
        req.extend_from_slice(b"\r\ntoken=AAA\r\n0\r\n\r\n");
        h.client(10, &req);
        h.server(20, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(h.out.len(), 1);
        assert_eq!(h.out[0].body.bytes, b"token=AAA");
        assert_eq!(h.out[0].incomplete, None);
    }
}

#[test]
fn lenient_request_behind_a_skipped_one_is_found_at_every_split() {
    let msg: &[u8] = b"POST /skip HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\r\n\r\n\
        POST  /api/  HTTP/1.1\r\nX-Folded: a\r\n b\r\nContent-Length : 0005\r\n\r\nhello";
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    for split in 0..msg.len() {
        let mut h = Harness::new();
        let (a, b) = msg.split_at(split);
        h.client(10, a);
        h.client(11, b);
        h.server(20, &[&ok[..], ok].concat());
        assert_eq!(h.out.len(), 1, "split {split}");
        assert_eq!(h.out[0].request.target, "/api/", "split {split}");
        assert_eq!(h.out[0].body.bytes, b"hello", "split {split}");
        assert_eq!(h.out[0].incomplete, None, "split {split}");
        assert_eq!(h.statuses(), [Some(200)]);
        assert_eq!(h.stats().lenient_request_heads, 1, "split {split}");
    }
}

#[test]
fn a_head_padded_past_the_limit_is_skimmed_and_its_body_read() {
    let mut h = Harness::with_limits(HttpLimits {
        max_head_bytes: 64,
        ..HttpLimits::default()
    });
    let mut req = b"GET /skip HTTP/1.1\r\n\r\nPOST /api/ HTTP/1.1\r\nCookie: ".to_vec();
    req.extend(std::iter::repeat_n(b'c', 5000));
    req.extend_from_slice(b"\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\n\r\n");
    for chunk in req.chunks(7) {
        h.client(10, chunk);
    }
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    h.server(20, &[&ok[..], ok, ok].concat());
    assert_eq!(h.statuses(), [Some(200), Some(200)]);
    assert_eq!(h.out[0].request.target, "/api/");
    assert_eq!(h.out[0].body.bytes, b"hello");
    assert_eq!(h.out[0].incomplete, None);
    assert_eq!(h.out[1].request.target, "/b");
    assert_eq!(h.stats().heads_skimmed, 1);
    assert_eq!(h.stats().head_too_large, 0);
}

#[test]
fn a_switch_to_http2_by_upgrade_h2c_is_counted() {
    let mut h = Harness::new();
    h.client(
        10,
        b"GET / HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: websocket, H2C\r\n\
          HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    h.server(
        20,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    );
    assert_eq!((h.stats().upgrades, h.stats().h2c_upgrades), (1, 1));
    let mut h = Harness::new();
    h.client(10, b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
    h.server(20, b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
    assert_eq!((h.stats().upgrades, h.stats().h2c_upgrades), (1, 0));
}

#[test]
fn a_connection_whose_api_request_was_unreadable_is_never_released() {
    let mut h = Harness::new();
    let mut released = Vec::new();
    h.client(10, b"GET /skip HTTP/1.1\r\n\r\n");
    h.tracker.take_releasable(&mut released);
    assert_eq!(released.len(), 1, "nothing selected yet: releasable");
    h.client(11, b"POST /api/ HTTP/1.1\r\nContent-Length: x\r\n\r\n");
    h.client(12, b"GET /skip-too HTTP/1.1\r\n\r\n");
    released.clear();
    h.tracker.take_releasable(&mut released);
    assert_eq!(released, [], "an API client's connection is kept");
}

#[test]
fn unreadable_heads_are_emitted_only_when_selected_and_keep_fifo_right() {
    let mut h = Harness::new();
    h.client(
        10,
        b"POST /a HTTP/1.1\r\nContent-Length: 1x\r\n\r\nz\
          POST /skip HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n\
          GET /b HTTP/1.1\r\n\r\n",
    );
    h.server(
        20,
        b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n\
          HTTP/1.1 501 No\r\nContent-Length: 0\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(h.statuses(), [Some(400), Some(200)]);
    assert_eq!(h.out[0].request.target, "/a");
    assert_eq!(h.out[0].request.content_length, None);
    assert_eq!(h.out[0].incomplete, Some(Incomplete::UnreadableHead));
    assert_eq!(h.out[1].request.target, "/b");
    assert_eq!(h.stats().bad_content_length, 1);
    assert_eq!(h.stats().bad_request_head, 1);
}

#[test]
fn too_many_headers_are_counted() {
    let mut h = Harness::with_limits(HttpLimits {
        max_headers: 2,
        ..HttpLimits::default()
    });
    h.client(
        10,
        b"GET /a HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
    );
    h.server(20, b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.statuses(), [Some(400), Some(200)]);
    assert_eq!(h.out[0].incomplete, Some(Incomplete::UnreadableHead));
    assert_eq!(h.stats().too_many_headers, 1);
}

#[test]
fn decoding_stops_at_the_cap() {
    let mut h = Harness::with_limits(HttpLimits {
        max_decoded_body_bytes: 1000,
        ..HttpLimits::default()
    });
    let gz = gzip(&sample(5000));
    h.client(10, b"GET /a HTTP/1.1\r\n\r\n");
    h.server(
        20,
        format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: x-gzip\r\nContent-Length: {}\r\n\r\n",
            gz.len()
        )
        .as_bytes(),
    );
    h.server(21, &gz);
    let r = response(&h.out[0]);
    assert_eq!(
        (r.decoding, r.decoded_body_bytes),
        (BodyDecoding::Capped, 1000)
    );
    assert_eq!(r.wire_body_bytes, gz.len() as u64);
    assert_eq!(h.stats().decode_capped, 1);
}

#[test]
fn invalid_gzip_fails_but_framing_goes_on() {
    let mut h = Harness::new();
    h.client(10, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    h.server(20, b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 12\r\n\r\nnot gzip!!!!HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 3\r\n\r\nxyz");
    let first = response(&h.out[0]);
    assert_eq!(
        (first.decoding, first.wire_body_bytes),
        (BodyDecoding::Failed, 12)
    );
    let second = response(&h.out[1]);
    assert_eq!(
        (second.coding, second.decoding),
        (ContentCoding::Other, BodyDecoding::Unsupported)
    );
    assert_eq!(h.stats().decode_failed, 1);
}

#[test]
fn non_selected_request_is_framed_but_not_emitted() {
    let mut h = Harness::new();
    h.client(
        10,
        b"POST /skip HTTP/1.1\r\nContent-Length: 19\r\n\r\nGET /fake HTTP/1.1\r\n",
    );
    h.client(11, b"POST /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nz");
    h.server(20, b"HTTP/1.1 500 skip\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 a\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.statuses(), [Some(200)]);
    assert_eq!(h.out[0].request.target, "/a");
    assert_eq!(h.out[0].body.bytes, b"z");
    let stats = h.stats();
    assert_eq!(
        (stats.requests, stats.responses, stats.exchanges),
        (2, 2, 1)
    );
}

#[test]
fn connection_closed_before_responses_emits_them_incomplete() {
    let mut h = Harness::new();
    h.client(10, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc");
    h.server(20, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    h.close(30);
    assert_eq!(h.statuses(), [Some(200), None, None]);
    assert_eq!(h.out[0].incomplete, Some(Incomplete::ResponseTruncated));
    assert_eq!(response(&h.out[0]).wire_body_bytes, 3);
    assert_eq!(h.out[1].incomplete, Some(Incomplete::NoResponse));
    assert_eq!(h.out[2].incomplete, Some(Incomplete::RequestTruncated));
    assert_eq!(h.stats().exchanges, 3);
}

#[test]
fn switching_protocols_stops_parsing_the_connection() {
    let mut h = Harness::new();
    h.client(
        10,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    h.server(
        20,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    );
    h.client(30, b"\x81\x85garbage that is not http");
    h.close(40);
    assert_eq!(h.statuses(), [Some(101)]);
    let stats = h.stats();
    assert_eq!(
        (
            stats.upgrades,
            stats.bad_request_head,
            stats.bad_response_head
        ),
        (1, 0, 0)
    );
}

#[test]
fn bad_chunk_size_is_counted_and_the_next_response_found() {
    let mut h = Harness::new();
    h.client(10, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n");
    h.server(20, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFFF\r\nxx\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.statuses(), [Some(200), Some(200)]);
    assert_eq!(h.out[0].incomplete, Some(Incomplete::Malformed));
    assert_eq!(h.out[1].incomplete, None);
    assert_eq!((h.stats().bad_chunk, h.stats().resyncs), (1, 1));
}

#[test]
fn early_response_waits_for_the_request_body_to_end() {
    let mut h = Harness::new();
    h.client(10, b"POST /api/ HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc");
    h.server(20, b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n");
    assert!(h.out.is_empty());
    h.client(30, b"def");
    assert_eq!(h.statuses(), [Some(413)]);
    assert_eq!(h.out[0].body.bytes, b"abcdef");
    assert_eq!(h.out[0].ts_request_end, Timestamp(30));
}

#[test]
fn gap_past_the_body_end_resyncs_to_a_request_after_body_text() {
    let mut h = Harness::new();
    h.client(10, b"POST /1 HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    h.gap(Direction::ClientToServer, 11, 20);
    h.client(
        12,
        b"ength: 3\r\n\r\nx=1POST /3 HTTP/1.1\r\nContent-Length: 1\r\n\r\nq",
    );
    // Three answers: the request whose start the gap swallowed is answered too.
    h.server(20, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    h.server(21, b"HTTP/1.1 202 OK\r\nContent-Length: 0\r\n\r\n");
    h.server(22, b"HTTP/1.1 203 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.statuses(), [Some(200), Some(203)]);
    assert_eq!(h.out[0].incomplete, Some(Incomplete::RequestGap));
    assert_eq!(h.out[0].request_body_bytes, 10);
    assert_eq!(h.out[1].request.target, "/3");
    assert_eq!(h.out[1].body.bytes, b"q");
    assert_eq!(h.stats().resyncs, 1);
    assert_eq!(h.stats().request_starts_lost, 1);
}

#[test]
fn a_whole_request_lost_at_the_start_still_takes_its_answer() {
    let mut h = Harness::new();
    // The stream's known start was lost (kernel ring full): the first request vanished
    // entirely, and the next one starts right after the gap.
    h.gap(Direction::ClientToServer, 10, 57);
    h.client(11, b"POST /2 HTTP/1.1\r\nContent-Length: 1\r\n\r\nq");
    h.server(20, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlost");
    h.server(21, b"HTTP/1.1 202 OK\r\nContent-Length: 0\r\n\r\n");
    // The first answer belongs to the lost request, not to /2.
    assert_eq!(h.statuses(), [Some(202)]);
    assert_eq!(h.out[0].request.target, "/2");
    assert_eq!(h.out[0].incomplete, None);
    assert_eq!(h.stats().request_starts_lost, 1);
    assert_eq!(h.stats().unmatched_responses, 0);
}

#[test]
fn direction_without_any_message_start_is_given_up() {
    let mut h = Harness::new();
    let noise = [0x17u8; 4096];
    for ts in 0..100 {
        h.client(ts, &noise);
    }
    h.client(200, b"\nGET /late HTTP/1.1\r\n\r\n");
    h.server(210, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert!(h.out.is_empty());
    assert_eq!(h.stats().not_http, 1);
    assert_eq!(h.stats().midstream_pickups, 1);
}

#[test]
fn zero_limits_do_not_stall() {
    let mut h = Harness::with_limits(HttpLimits {
        max_head_bytes: 0,
        max_headers: 0,
        max_pending_requests: 0,
        max_decoded_body_bytes: 0,
        max_state_bytes_total: 0,
    });
    h.client(
        10,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    );
    h.server(20, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    h.close(30);
    assert!(h.stats().head_too_large >= 2);
}

#[test]
fn hostile_bytes_never_panic_and_state_stays_bounded() {
    let mut x = 99u32;
    let mut next = move || {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        x >> 8
    };
    let alphabet: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"Content-Length: 5\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"\r\n",
        b"5\r\n",
        b"abcde",
        b"0\r\n",
        b"Content-Encoding: gzip\r\n",
        b"\x1f\x8b\x08\x00",
        b"HTTP/1.1 100 Continue\r\n",
        b"Content-Length: 99999999999999999999\r\n",
        b"zz\r\n",
        b"HEAD ",
        b"POST  /a  HTTP/1.1\r\n",
        b" folded\r\n",
        b"Content-Length : 0003\r\n",
        b"X-Forwarded-For: 1.2.3.4, 1.2.3.4, 1.2.3.4, 1.2.3.4, 1.2.3.4, 1.2.3.4, 1.2.3.4\r\n",
        b"Cookie: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\
          ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\
          ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\
          cccccccccccccccccccccccccccccccccc\r\n",
    ];
    let mut h = Harness::with_limits(HttpLimits {
        max_head_bytes: 256,
        max_pending_requests: 4,
        ..HttpLimits::default()
    });
    for ts in 0..20_000u64 {
        let dir = if next() % 2 == 0 {
            Direction::ClientToServer
        } else {
            Direction::ServerToClient
        };
        match next() % 40 {
            0 => h.gap(dir, ts, u64::from(next() % 50)),
            1 => {
                h.close(ts);
                let local = Endpoint {
                    ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    port: 1,
                };
                h.event(StreamEvent::Opened {
                    conn: CONN,
                    ts: Timestamp(ts),
                    client: local,
                    server: local,
                });
            }
            _ => {
                let piece = alphabet[next() as usize % alphabet.len()];
                let cut = next() as usize % (piece.len() + 1);
                h.data(dir, ts, &piece[..cut]);
                h.data(dir, ts, &piece[cut..]);
            }
        }
        if h.out.len() > 1000 {
            h.out.clear();
        }
    }
    h.close(u64::MAX);
    assert_eq!(h.tracker.connections(), 0);
    assert!(h.stats().requests > 0 && h.stats().responses > 0);
}

#[test]
fn client_address_headers_are_one_list_kept_by_their_right_end() {
    let mut kept = None;
    super::append_forwarded(&mut kept, b" 198.51.100.1 ");
    super::append_forwarded(&mut kept, b"");
    super::append_forwarded(&mut kept, b"203.0.113.7, 10.0.0.1");
    assert_eq!(kept.as_deref(), Some("198.51.100.1, 203.0.113.7, 10.0.0.1"));
    // A client padding the header cannot push out what the proxies nearest the server wrote,
    // and no element is cut in two.
    let mut kept = None;
    let padding = "192.0.2.123, ".repeat(500);
    super::append_forwarded(&mut kept, padding.trim_end_matches(", ").as_bytes());
    super::append_forwarded(&mut kept, b"203.0.113.7");
    let kept = kept.unwrap();
    assert!(kept.len() <= super::MAX_FORWARDED_BYTES);
    assert!(kept.ends_with(", 203.0.113.7"));
    assert!(
        kept.split(',')
            .all(|e| ["192.0.2.123", "203.0.113.7"].contains(&e.trim()))
    );
}

#[test]
fn parsing_state_over_the_global_budget_resets_the_connections_holding_most() {
    const BUDGET: usize = 256 * 1024;
    let mut h = Harness::with_limits(HttpLimits {
        max_state_bytes_total: BUDGET,
        ..HttpLimits::default()
    });
    // An honest API client: one request waiting for its answer.
    h.client(10, b"POST /api/ HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    // Hoarders on 40 connections: pipelined requests with long targets, never answered. Each
    // stays within every per-connection limit; together they hold megabytes.
    let target = "x".repeat(8000);
    for n in 0..40u32 {
        let conn = ConnectionId(100 + u64::from(n));
        let ep = |last, port| Endpoint {
            ip: IpAddr::V4(Ipv4Addr::new(10, 0, 1, last)),
            port,
        };
        h.event(StreamEvent::Opened {
            conn,
            ts: Timestamp(20),
            client: ep(n as u8, 41_000),
            server: ep(2, 443),
        });
        for i in 0..8 {
            let request = format!("GET /{target}{i} HTTP/1.1\r\n\r\n");
            h.event(StreamEvent::Data {
                conn,
                dir: Direction::ClientToServer,
                ts: Timestamp(30),
                bytes: request.as_bytes(),
            });
            assert!(h.tracker.stats().state_bytes <= BUDGET as u64);
        }
    }
    let stats = h.stats();
    assert!(stats.state_budget_resets > 0, "{stats:?}");
    assert!(stats.state_bytes > 0);
    // The honest request kept its place and gets its answer, complete.
    h.server(50, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let honest: Vec<_> = h.out.iter().filter(|e| e.conn == CONN).collect();
    assert_eq!(honest.len(), 1);
    assert_eq!(honest[0].incomplete, None);
    assert_eq!(honest[0].body.bytes, b"abc");
    // What the hoarders were made to give up is emitted, marked incomplete, not lost unsaid.
    assert!(
        h.out
            .iter()
            .any(|e| e.conn != CONN && e.incomplete.is_some())
    );
}
