use loona_hpack::Encoder;

use super::super::decode::tests::{gzip, sample};
use super::super::tests::{Collected, Harness};
use super::super::{
    BodyDecoding, ContentCoding, HttpExchange, HttpLimits, HttpVersion, Incomplete,
};
use super::frame::PREFACE;
use crate::shared::model::{Direction, Timestamp};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (id, value) in pairs {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

/// One side's HPACK encoder and frame builder.
struct Peer {
    hpack: Encoder<'static>,
}

impl Peer {
    fn new() -> Self {
        Self {
            hpack: Encoder::new(),
        }
    }

    fn block(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        self.hpack
            .encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
        let block = self.block(fields);
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        frame(HEADERS, flags, stream, &block)
    }
}

fn data(stream: u32, bytes: &[u8], end_stream: bool) -> Vec<u8> {
    frame(DATA, if end_stream { END_STREAM } else { 0 }, stream, bytes)
}

/// The header fields of an API call as curl sends them.
fn api_post() -> Vec<(&'static str, &'static str)> {
    vec![
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "redcap.example"),
        (":path", "/api/"),
        ("content-type", "application/x-www-form-urlencoded"),
        ("user-agent", "curl/7.88.1"),
    ]
}

/// A whole conversation: two API calls on one connection, the second with a gzip response over
/// several DATA frames, and a request that is not selected in between.
fn conversation() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut client = PREFACE.to_vec();
    client.extend(settings(&[(0x2, 0), (0x4, 65_535)]));
    client.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0xff, 0, 1]));
    client.extend(c.headers(1, &api_post(), false));
    client.extend(data(
        1,
        b"token=ABCDEF0123456789ABCDEF0123456789&content=",
        false,
    ));
    client.extend(data(1, b"version", true));
    client.extend(c.headers(
        3,
        &[
            (":method", "GET"),
            (":path", "/skip/me"),
            (":scheme", "https"),
        ],
        true,
    ));
    client.extend(c.headers(5, &api_post(), false));
    client.extend(data(5, b"content=record&format=json", true));
    let plain = sample(30_000);
    let gz = gzip(&plain);
    let mut server = settings(&[(0x3, 128), (0x5, 16_777_215)]);
    server.extend(frame(SETTINGS, 1, 0, &[]));
    server.extend(s.headers(
        1,
        &[(":status", "200"), ("content-type", "text/html")],
        false,
    ));
    server.extend(data(1, b"14.0.1", true));
    server.extend(s.headers(3, &[(":status", "404")], true));
    server.extend(s.headers(
        5,
        &[
            (":status", "200"),
            ("content-encoding", "gzip"),
            ("vary", "Accept-Encoding"),
        ],
        false,
    ));
    for piece in gz.chunks(4000) {
        server.extend(data(5, piece, false));
    }
    server.extend(data(5, &[], true));
    (client, server, gz)
}

/// Feeds the conversation with the client's bytes cut at `cut` and the server's at `cut` too.
fn run_conversation(h: &mut Harness, client: &[u8], server: &[u8], cuts: &[usize]) {
    let pieces = |bytes: &[u8]| -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain([bytes.len()].iter()) {
            let cut = cut.min(bytes.len()).max(at);
            out.push(bytes[at..cut].to_vec());
            at = cut;
        }
        out
    };
    // The client's whole stream first (time 10..), then the server's (time 100..).
    for (i, piece) in pieces(client).iter().enumerate() {
        h.client(10 + i as u64, piece);
    }
    for (i, piece) in pieces(server).iter().enumerate() {
        h.server(100 + i as u64, piece);
    }
}

fn essence(out: &[HttpExchange<Collected>]) -> Vec<String> {
    out.iter()
        .map(|e| {
            let r = e.response.as_ref();
            format!(
                "{:?} {} {} {:?} body={:?} req={} status={:?} wire={:?} decoded={:?} {:?} {:?}",
                e.request.version,
                e.request.method,
                e.request.target,
                e.request.host,
                String::from_utf8_lossy(&e.body.bytes),
                e.request_body_bytes,
                r.map(|r| r.status),
                r.map(|r| r.wire_body_bytes),
                r.map(|r| r.decoded_body_bytes),
                r.map(|r| r.decoding),
                e.incomplete,
            )
        })
        .collect()
}

#[test]
fn api_posts_over_http2_become_exchanges_like_http1() {
    let mut h = Harness::new();
    let (client, server, gz) = conversation();
    run_conversation(&mut h, &client, &server, &[]);
    assert_eq!(h.out.len(), 2);
    let first = &h.out[0];
    assert_eq!(first.request.version, HttpVersion::Http2);
    assert_eq!(
        (first.request.method.as_str(), first.request.path()),
        ("POST", "/api/")
    );
    assert_eq!(first.request.host.as_deref(), Some("redcap.example"));
    assert_eq!(
        first.request.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        first.body.bytes,
        b"token=ABCDEF0123456789ABCDEF0123456789&content=version"
    );
    assert_eq!(first.request_body_bytes, 54);
    assert_eq!(first.incomplete, None);
    let r = first.response.as_ref().unwrap();
    assert_eq!(
        (r.status, r.wire_body_bytes, r.decoding),
        (200, 6, BodyDecoding::Identity)
    );
    let second = &h.out[1];
    assert_eq!(second.body.bytes, b"content=record&format=json");
    let r = second.response.as_ref().unwrap();
    assert_eq!(r.coding, ContentCoding::Gzip);
    assert_eq!(
        (r.wire_body_bytes, r.decoded_body_bytes, r.decoding),
        (gz.len() as u64, 30_000, BodyDecoding::Decoded)
    );
    assert_eq!(second.incomplete, None);
    let stats = h.stats();
    assert_eq!(stats.h2_connections, 1);
    assert_eq!(
        (stats.requests, stats.responses, stats.exchanges),
        (3, 3, 2)
    );
    assert_eq!(
        (
            stats.h2_hpack_errors,
            stats.h2_protocol_errors,
            stats.h2_gaps,
            stats.not_http
        ),
        (0, 0, 0, 0)
    );
    h.close(1000);
    assert_eq!(h.out.len(), 2);
}

#[test]
fn times_are_those_of_the_frames() {
    let mut h = Harness::new();
    let mut c = Peer::new();
    let mut s = Peer::new();
    let mut first = PREFACE.to_vec();
    first.extend(settings(&[]));
    h.client(5, &first);
    h.client(10, &c.headers(1, &api_post(), false));
    h.client(11, &data(1, b"content=version", false));
    h.client(12, &data(1, b"", true));
    h.server(20, &s.headers(1, &[(":status", "200")], false));
    h.server(21, &data(1, b"1", false));
    h.server(22, &data(1, b"5", true));
    let e = &h.out[0];
    assert_eq!(
        (e.ts_request_start, e.ts_request_end),
        (Timestamp(10), Timestamp(12))
    );
    let r = e.response.as_ref().unwrap();
    assert_eq!(
        (r.ts_first_byte, r.ts_last_byte),
        (Timestamp(20), Timestamp(22))
    );
}

#[test]
fn frames_split_at_every_byte_give_the_same_exchanges() {
    let (client, server, _) = conversation();
    let mut whole = Harness::new();
    run_conversation(&mut whole, &client, &server, &[]);
    let expected = essence(&whole.out);
    assert_eq!(expected.len(), 2);
    // Every single cut point of each stream, then every byte on its own.
    let longest = client.len().max(server.len());
    for cut in (0..600).chain((600..longest).step_by(61)) {
        let mut h = Harness::new();
        run_conversation(&mut h, &client, &server, &[cut]);
        assert_eq!(essence(&h.out), expected, "cut at {cut}");
    }
    let every: Vec<usize> = (1..client.len().max(server.len())).collect();
    let mut h = Harness::new();
    run_conversation(&mut h, &client, &server, &every);
    assert_eq!(essence(&h.out), expected);
    assert_eq!(h.stats().h2_connections, 1);
}

#[test]
fn frames_split_at_each_byte_of_the_first_request() {
    let (client, server, _) = conversation();
    let mut whole = Harness::new();
    run_conversation(&mut whole, &client, &server, &[]);
    let expected = essence(&whole.out);
    // Exhaustive over the preface, the settings and the first request.
    for cut in 0..200 {
        let mut h = Harness::new();
        run_conversation(&mut h, &client, &server, &[cut, cut + 1]);
        assert_eq!(essence(&h.out), expected, "cut at {cut}");
    }
}

#[test]
fn continuation_frames_complete_a_header_block() {
    let mut h = Harness::new();
    let mut c = Peer::new();
    let mut fields = api_post();
    let long = "x".repeat(3000);
    fields.push(("cookie", &long));
    let block = c.block(&fields);
    let (a, rest) = block.split_at(10);
    let (b, d) = rest.split_at(1000);
    let mut client = PREFACE.to_vec();
    client.extend(frame(HEADERS, 0, 1, a));
    client.extend(frame(CONTINUATION, 0, 1, b));
    client.extend(frame(CONTINUATION, END_HEADERS, 1, d));
    client.extend(data(1, b"content=version", true));
    h.client(1, &client);
    h.server(2, &Peer::new().headers(1, &[(":status", "200")], true));
    assert_eq!(h.out.len(), 1);
    assert_eq!(h.out[0].request.target, "/api/");
    assert_eq!(h.out[0].incomplete, None);
}

#[test]
fn continuation_interrupted_by_another_frame_stops_the_direction() {
    let mut h = Harness::new();
    let mut c = Peer::new();
    let block = c.block(&api_post());
    let mut client = PREFACE.to_vec();
    client.extend(frame(HEADERS, 0, 1, &block[..5]));
    client.extend(frame(PING, 0, 0, &[0; 8]));
    client.extend(frame(CONTINUATION, END_HEADERS, 1, &block[5..]));
    h.client(1, &client);
    assert_eq!(h.stats().h2_protocol_errors, 1);
    h.close(2);
    assert!(h.out.is_empty());
}

#[test]
fn padding_and_priority_are_stripped() {
    let mut h = Harness::new();
    let mut c = Peer::new();
    let block = c.block(&api_post());
    let mut payload = vec![3u8]; // pad length
    payload.extend([0x80, 0, 0, 1, 16]); // priority: exclusive on stream 1, weight 16
    payload.extend(&block);
    payload.extend([0; 3]);
    let mut client = PREFACE.to_vec();
    client.extend(frame(
        HEADERS,
        END_HEADERS | PADDED | PRIORITY_FLAG,
        1,
        &payload,
    ));
    let mut body = vec![200u8];
    body.extend(b"content=version");
    body.extend([0u8; 200]);
    client.extend(frame(DATA, PADDED | END_STREAM, 1, &body));
    h.client(1, &client);
    let mut s = Peer::new();
    let mut body = vec![0u8];
    body.extend(b"14.0.1");
    let mut server = s.headers(1, &[(":status", "200")], false);
    server.extend(frame(DATA, PADDED | END_STREAM, 1, &body));
    // Split inside the pad length byte's frame header and right after it.
    let cut = server.len() - body.len();
    h.server(2, &server[..cut]);
    h.server(3, &server[cut..cut + 1]);
    h.server(4, &server[cut + 1..]);
    assert_eq!(h.out.len(), 1);
    let e = &h.out[0];
    assert_eq!(e.body.bytes, b"content=version");
    assert_eq!(e.request_body_bytes, 15);
    assert_eq!(e.response.as_ref().unwrap().wire_body_bytes, 6);
    assert_eq!(h.stats().h2_protocol_errors, 0);
}

#[test]
fn padding_longer_than_its_frame_is_a_protocol_error() {
    let mut h = Harness::new();
    let mut c = Peer::new();
    let mut client = PREFACE.to_vec();
    client.extend(c.headers(1, &api_post(), false));
    client.extend(frame(DATA, PADDED | END_STREAM, 1, &[9, b'a', b'b']));
    h.client(1, &client);
    assert_eq!(h.stats().h2_protocol_errors, 1);
    h.server(2, &Peer::new().headers(1, &[(":status", "400")], true));
    assert_eq!(h.out.len(), 1);
    assert_eq!(h.out[0].incomplete, Some(Incomplete::Malformed));
    assert_eq!(h.out[0].response.as_ref().unwrap().status, 400);
}

#[test]
fn interleaved_streams_are_matched_by_their_ids() {
    let mut h = Harness::new();
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut client = PREFACE.to_vec();
    for id in [1u32, 3, 5] {
        client.extend(c.headers(id, &api_post(), false));
    }
    for round in 0..3 {
        for id in [5u32, 1, 3] {
            client.extend(data(id, format!("s{id}r{round}&").as_bytes(), false));
        }
    }
    for id in [3u32, 1, 5] {
        client.extend(data(id, b"", true));
    }
    h.client(1, &client);
    let bodies: Vec<Vec<u8>> = [1u32, 3, 5]
        .iter()
        .map(|id| gzip(&sample(20_000 + *id as usize * 1000)))
        .collect();
    let mut server = Vec::new();
    for id in [5u32, 3, 1] {
        server.extend(s.headers(
            id,
            &[(":status", "200"), ("content-encoding", "gzip")],
            false,
        ));
    }
    let mut offsets = [0usize; 3];
    loop {
        let mut any = false;
        for (i, id) in [1u32, 3, 5].iter().enumerate() {
            let body = &bodies[i];
            if offsets[i] < body.len() {
                let end = (offsets[i] + 1000).min(body.len());
                server.extend(data(*id, &body[offsets[i]..end], end == body.len()));
                offsets[i] = end;
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    h.server(2, &server);
    assert_eq!(h.out.len(), 3);
    let mut seen: Vec<(String, u64)> = h
        .out
        .iter()
        .map(|e| {
            (
                String::from_utf8_lossy(&e.body.bytes).into_owned(),
                e.response.as_ref().unwrap().decoded_body_bytes,
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("s1r0&s1r1&s1r2&".to_string(), 21_000),
            ("s3r0&s3r1&s3r2&".to_string(), 23_000),
            ("s5r0&s5r1&s5r2&".to_string(), 25_000),
        ]
    );
    assert!(h.out.iter().all(|e| e.incomplete.is_none()));
}

#[test]
fn large_gzip_response_over_many_data_frames_is_decoded() {
    let mut h = Harness::new();
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut client = PREFACE.to_vec();
    client.extend(c.headers(1, &api_post(), false));
    client.extend(data(1, b"content=record&format=csv", true));
    h.client(1, &client);
    let plain = sample(3 << 20);
    let gz = gzip(&plain);
    h.server(
        2,
        &s.headers(
            1,
            &[(":status", "200"), ("content-encoding", "gzip")],
            false,
        ),
    );
    for (i, piece) in gz.chunks(16_384).enumerate() {
        // Frames cut across the "SSL_write"s as nginx's 8 KiB records would.
        let f = data(1, piece, false);
        for (j, part) in f.chunks(8192).enumerate() {
            h.server(3 + (i * 4 + j) as u64, part);
        }
    }
    h.server(u64::MAX / 2, &data(1, &[], true));
    let r = h.out[0].response.as_ref().unwrap();
    assert_eq!(
        (r.wire_body_bytes, r.decoded_body_bytes, r.decoding),
        (gz.len() as u64, 3 << 20, BodyDecoding::Decoded)
    );
}

#[test]
fn hpack_dynamic_table_carries_across_requests() {
    // RFC 7541 C.3: the second request names :authority by its dynamic table index (62).
    let first = hex::decode("828684410f7777772e6578616d706c652e636f6d").unwrap();
    let second = hex::decode("828684be58086e6f2d6361636865").unwrap();
    let third = hex::decode("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565").unwrap();
    let mut h = Harness::new();
    let mut client = PREFACE.to_vec();
    client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &first));
    client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &second));
    client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &third));
    h.client(1, &client);
    let mut s = Peer::new();
    for id in [1u32, 3, 5] {
        // The encoder indexes the repeated fields after the first response.
        let f = s.headers(id, &[(":status", "200"), ("server", "nginx")], true);
        h.server(2, &f);
    }
    assert_eq!(h.out.len(), 3);
    for e in &h.out {
        assert_eq!(e.request.host.as_deref(), Some("www.example.com"));
        assert_eq!(e.response.as_ref().unwrap().status, 200);
    }
    assert_eq!(h.out[2].request.target, "/index.html");
    assert_eq!(h.stats().h2_hpack_errors, 0);
}

#[test]
fn dynamic_table_follows_the_peers_header_table_size() {
    // A table size update to 8192 (0x3f 0xe1 0x3f) before any request.
    let grow = |size_update: &[u8]| {
        let mut block = size_update.to_vec();
        block.extend(Peer::new().block(&api_post()));
        block
    };
    let to_8192 = [0x3f, 0xe1, 0x3f];
    // Without the server allowing it, the update is an HPACK error.
    let mut h = Harness::new();
    let mut client = PREFACE.to_vec();
    client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &grow(&to_8192)));
    h.client(1, &client);
    assert_eq!(h.stats().h2_hpack_errors, 1);
    // Once the server advertised 8192, it is accepted.
    let mut h = Harness::new();
    h.client(1, PREFACE);
    h.server(2, &settings(&[(0x1, 8192)]));
    h.client(
        3,
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, &grow(&to_8192)),
    );
    h.server(4, &Peer::new().headers(1, &[(":status", "200")], true));
    assert_eq!(h.stats().h2_hpack_errors, 0);
    assert_eq!(h.out.len(), 1);
    // An advertised size past the decoder's own bound is not followed: 1 MiB (0x3f 0xe1 0xff
    // 0x3f) is refused.
    let mut h = Harness::new();
    h.client(1, PREFACE);
    h.server(2, &settings(&[(0x1, 1 << 20)]));
    h.client(
        3,
        &frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &grow(&[0x3f, 0xe1, 0xff, 0x3f]),
        ),
    );
    assert_eq!(h.stats().h2_hpack_errors, 1);
}

#[test]
fn hostile_huge_frame_is_rejected_and_counted() {
    let mut h = Harness::new();
    let mut c = Peer::new();
    let mut client = PREFACE.to_vec();
    client.extend(c.headers(1, &api_post(), false));
    // A HEADERS frame claiming 16 MiB - 1: never buffered.
    client.extend([0xff, 0xff, 0xff, HEADERS, END_HEADERS, 0, 0, 0, 3]);
    h.client(1, &client);
    for ts in 0..64 {
        h.client(2 + ts, &[0x41; 64 * 1024]);
    }
    let stats = h.stats();
    assert_eq!((stats.h2_frame_too_large, stats.h2_protocol_errors), (1, 0));
    h.server(100, &Peer::new().headers(1, &[(":status", "200")], true));
    assert_eq!(h.out.len(), 1);
    assert_eq!(h.out[0].incomplete, Some(Incomplete::Malformed));
    // A huge DATA frame is streamed, not held: it is not an error.
    let mut h = Harness::new();
    let mut client = PREFACE.to_vec();
    client.extend(Peer::new().headers(1, &api_post(), false));
    client.extend([0xff, 0xff, 0xff, DATA, 0, 0, 0, 0, 1]);
    h.client(1, &client);
    h.client(2, &vec![b'a'; (1 << 24) - 1]);
    assert_eq!(h.stats().h2_frame_too_large, 0);
    assert_eq!(h.tracker.oldest_open_exchange(), Some(Timestamp(1)));
}

#[test]
fn oversized_settings_is_too_large() {
    let mut h = Harness::new();
    let mut client = PREFACE.to_vec();
    client.extend(settings(&[(0x9, 1); 100]));
    h.client(1, &client);
    assert_eq!(h.stats().h2_frame_too_large, 1);
}

#[test]
fn gap_stops_a_direction_and_marks_what_it_owed() {
    let mut h = Harness::new();
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut client = PREFACE.to_vec();
    client.extend(c.headers(1, &api_post(), false));
    client.extend(data(1, b"content=version", true));
    client.extend(c.headers(3, &api_post(), false));
    client.extend(data(3, b"content=rec", false));
    h.client(1, &client);
    h.gap(Direction::ClientToServer, 2, 100);
    h.client(3, &c.headers(5, &api_post(), true));
    h.server(4, &s.headers(1, &[(":status", "200")], false));
    h.server(5, &data(1, b"ok", false));
    h.gap(Direction::ServerToClient, 6, 10);
    assert_eq!(h.stats().h2_gaps, 2);
    h.close(7);
    let mut got: Vec<(Option<u16>, Option<Incomplete>)> = h
        .out
        .iter()
        .map(|e| (e.response.as_ref().map(|r| r.status), e.incomplete))
        .collect();
    got.sort_by_key(|g| g.0);
    assert_eq!(
        got,
        [
            (None, Some(Incomplete::RequestGap)),
            (Some(200), Some(Incomplete::ResponseGap)),
        ]
    );
}

#[test]
fn refused_streams_are_not_calls() {
    let mut h = Harness::new();
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut client = PREFACE.to_vec();
    for id in [1u32, 3, 5, 7] {
        client.extend(c.headers(id, &api_post(), false));
        client.extend(data(id, b"content=version", true));
    }
    h.client(1, &client);
    let mut server = frame(RST_STREAM, 0, 3, &7u32.to_be_bytes());
    server.extend(frame(
        GOAWAY,
        0,
        0,
        &[0, 0, 0, 1, 0, 0, 0, 0, b'b', b'y', b'e'],
    ));
    server.extend(s.headers(1, &[(":status", "200")], false));
    server.extend(data(1, b"1", false));
    // A reset after the response started: the call ran, its response is cut short.
    server.extend(frame(RST_STREAM, 0, 1, &2u32.to_be_bytes()));
    h.server(2, &server);
    assert_eq!(h.stats().h2_streams_refused, 3);
    assert_eq!(h.out.len(), 1);
    assert_eq!(h.out[0].incomplete, Some(Incomplete::ResponseTruncated));
    h.close(3);
    assert_eq!(h.out.len(), 1);
}

#[test]
fn a_body_whole_at_its_content_length_survives_a_reset_before_end_stream() {
    // httpx sends END_STREAM in an empty DATA frame of its own; nginx may answer first and
    // reset the stream (NO_ERROR) before it reads that frame.
    let mut h = Harness::new();
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut fields = api_post();
    fields.push(("content-length", "15"));
    let mut client = PREFACE.to_vec();
    client.extend(c.headers(1, &fields, false));
    h.client(1, &client);
    h.client(2, &data(1, b"content=version", false));
    h.server(3, &s.headers(1, &[(":status", "200")], false));
    h.server(4, &data(1, b"14.0.1", true));
    assert_eq!(h.out.len(), 1);
    h.server(5, &frame(RST_STREAM, 0, 1, &0u32.to_be_bytes()));
    h.client(6, &data(1, b"", true));
    assert_eq!(h.out.len(), 1);
    let e = &h.out[0];
    assert_eq!(e.incomplete, None);
    assert_eq!((e.request_body_bytes, e.ts_request_end), (15, Timestamp(2)));
}

#[test]
fn too_many_open_streams_are_counted() {
    let mut h = Harness::with_limits(HttpLimits {
        max_pending_requests: 2,
        ..HttpLimits::default()
    });
    let mut c = Peer::new();
    let mut client = PREFACE.to_vec();
    for id in [1u32, 3, 5] {
        client.extend(c.headers(id, &api_post(), false));
    }
    h.client(1, &client);
    assert_eq!(h.stats().h2_too_many_streams, 1);
    h.close(2);
    assert_eq!(h.out.len(), 2);
    assert!(
        h.out
            .iter()
            .all(|e| e.incomplete == Some(Incomplete::RequestTruncated))
    );
}

#[test]
fn interim_responses_and_trailers_are_understood() {
    let mut h = Harness::new();
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut client = PREFACE.to_vec();
    let mut fields = api_post();
    fields.push(("expect", "100-continue"));
    client.extend(c.headers(1, &fields, false));
    h.client(1, &client);
    h.server(2, &s.headers(1, &[(":status", "100")], false));
    h.client(3, &data(1, b"content=version", false));
    h.client(4, &c.headers(1, &[("x-checksum", "1")], true));
    h.server(5, &s.headers(1, &[(":status", "200")], false));
    h.server(6, &data(1, b"14", false));
    h.server(7, &s.headers(1, &[("grpc-status", "0")], true));
    assert_eq!(h.out.len(), 1);
    let e = &h.out[0];
    assert!(e.request.expect_continue);
    assert_eq!(e.ts_request_end, Timestamp(4));
    let r = e.response.as_ref().unwrap();
    assert_eq!(
        (r.status, r.ts_first_byte, r.ts_last_byte),
        (200, Timestamp(5), Timestamp(7))
    );
    let stats = h.stats();
    assert_eq!(
        (
            stats.interim_responses,
            stats.bad_response_head,
            stats.bad_request_head
        ),
        (1, 0, 0)
    );
}

#[test]
fn server_settings_before_the_preface_are_kept() {
    let mut h = Harness::new();
    h.server(1, &settings(&[(0x1, 8192)]));
    let mut client = PREFACE.to_vec();
    client.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &{
        let mut b = vec![0x3f, 0xe1, 0x3f];
        b.extend(Peer::new().block(&api_post()));
        b
    }));
    h.client(2, &client[..5]);
    h.client(3, &client[5..]);
    h.server(4, &Peer::new().headers(1, &[(":status", "200")], true));
    assert_eq!(h.out.len(), 1);
    assert_eq!(h.stats().h2_hpack_errors, 0);
}

#[test]
fn http1_that_starts_like_the_preface_is_still_http1() {
    let mut h = Harness::new();
    h.client(1, b"P");
    h.client(2, b"OST /api/ HTTP/1.0\r\nContent-Length: 3\r\n\r\na=1");
    h.server(3, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(h.out.len(), 1);
    assert_eq!(h.out[0].request.version, HttpVersion::Http10);
    assert_eq!(h.out[0].ts_request_start, Timestamp(1));
    assert_eq!(h.out[0].body.bytes, b"a=1");
    assert_eq!(h.stats().h2_connections, 0);
}

#[test]
fn a_server_that_talks_first_for_long_is_not_held_for_http2() {
    let mut h = Harness::new();
    // Over 16 KiB from the server before the client said anything: HTTP/1.x (mid-stream).
    h.server(1, &[b'x'; 20_000]);
    h.client(2, PREFACE);
    h.client(3, &Peer::new().headers(1, &api_post(), true));
    assert_eq!(h.stats().h2_connections, 0);
    // A gap before the client's first bytes: HTTP/1.x too.
    let mut h = Harness::new();
    h.gap(Direction::ClientToServer, 1, 10);
    h.client(2, PREFACE);
    assert_eq!(h.stats().h2_connections, 0);
}

#[test]
fn hostile_frames_never_panic_and_state_stays_bounded() {
    let mut x = 7u32;
    let mut next = move || {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        x >> 8
    };
    let mut c = Peer::new();
    let pieces: Vec<Vec<u8>> = vec![
        c.headers(1, &api_post(), false),
        data(1, b"content=x", true),
        frame(HEADERS, 0, 3, &[0x82, 0x84]),
        frame(CONTINUATION, END_HEADERS, 3, &[0x86]),
        frame(CONTINUATION, END_HEADERS, 5, &[0xbe]),
        frame(HEADERS, END_HEADERS, 7, &[0x3f, 0xff, 0xff, 0xff, 0x0f]),
        frame(HEADERS, END_HEADERS | PADDED, 9, &[200, 1]),
        frame(DATA, PADDED, 1, &[]),
        frame(RST_STREAM, 0, 1, &[0, 0, 0, 7]),
        frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]),
        frame(SETTINGS, 0, 0, &[0, 1, 0xff, 0xff, 0xff, 0xff]),
        frame(PING, 0, 0, &[1, 2, 3]),
        vec![0xff, 0xff, 0xff, 0x1, 0x4, 0, 0, 0, 1],
        vec![0, 0, 0, 0xfe, 0, 0, 0, 0, 0],
        Peer::new().headers(
            1,
            &[(":status", "200"), ("content-encoding", "gzip")],
            false,
        ),
        data(1, &[0x1f, 0x8b, 8, 0, 1, 2, 3], false),
    ];
    for round in 0..300u64 {
        let mut h = Harness::with_limits(HttpLimits {
            max_pending_requests: 4,
            ..HttpLimits::default()
        });
        h.client(round, PREFACE);
        for ts in 0..50 {
            let piece = &pieces[next() as usize % pieces.len()];
            let cut = next() as usize % (piece.len() + 1);
            let dir = if next() % 2 == 0 {
                Direction::ClientToServer
            } else {
                Direction::ServerToClient
            };
            if next() % 30 == 0 {
                h.gap(dir, ts, 5);
            }
            h.data(dir, ts, &piece[..cut]);
            h.data(dir, ts, &piece[cut..]);
        }
        h.close(1000);
        assert_eq!(h.tracker.connections(), 0);
        assert!(h.out.len() <= 50);
    }
}

#[test]
fn a_connection_upgraded_with_h2c_is_read_as_http2_after_the_101() {
    let (mut c, mut s) = (Peer::new(), Peer::new());
    let mut h = Harness::new();
    // The upgrade request has no body (Apache's mod_http2 upgrades only those); the API call
    // follows on stream 3 once the connection speaks HTTP/2.
    h.client(
        10,
        b"GET / HTTP/1.1\r\nHost: redcap.example\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    let mut server =
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec();
    server.extend(settings(&[(0x3, 100)]));
    server.extend(s.headers(1, &[(":status", "200")], false));
    server.extend(data(1, b"<html>", true));
    h.server(20, &server);
    let mut client = PREFACE.to_vec();
    client.extend(settings(&[]));
    client.extend(c.headers(3, &api_post(), false));
    client.extend(data(3, b"token=ABCDEF0123456789ABCDEF0123456789", true));
    for piece in client.chunks(7) {
        h.client(30, piece);
    }
    let mut answer = frame(SETTINGS, 1, 0, &[]);
    answer.extend(s.headers(3, &[(":status", "200")], false));
    answer.extend(data(3, b"15.7.6", true));
    h.server(40, &answer);
    let api: Vec<_> = h
        .out
        .iter()
        .filter(|e| e.request.version == HttpVersion::Http2)
        .collect();
    assert_eq!(
        api.len(),
        1,
        "{:?}",
        h.out.iter().map(|e| &e.request.target).collect::<Vec<_>>()
    );
    assert_eq!(api[0].request.path(), "/api/");
    assert_eq!(api[0].body.bytes, b"token=ABCDEF0123456789ABCDEF0123456789");
    assert_eq!(api[0].response.as_ref().map(|r| r.status), Some(200));
    let stats = h.stats();
    assert_eq!((stats.h2c_upgrades, stats.h2_connections), (1, 1));
    assert_eq!((stats.h2_protocol_errors, stats.not_http), (0, 0));
}
