//! `fuzz-seeds DIR`: writes the fuzz targets' seed corpora (`fuzz/seeds/<target>/`) from the
//! messages the tests use: `synth`'s captures and HTTP messages (PyCap-style urlencoded and
//! redcapAPI-style multipart calls, gzip + chunked responses), HTTP/2 conversations like the h2
//! tests', ring records like the probe's tests, and the shipped configuration. Deterministic;
//! the output is committed, so run it only when a seed should change:
//! `cargo run -p monitor-tests --bin fuzz-seeds -- fuzz/seeds`.
//!
//! Each file is in its target's input format (see `fuzz/src/lib.rs`): most start with a control
//! byte that picks chunk sizes, gaps or the link type. The reassembly target's input is an
//! `arbitrary` structure, so it has no seeds; `shared_calls`' seeds are written by a unit test of
//! `stages/cluster` (only the daemon's crate can make the calls they encode).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use flate2::Compression;
use flate2::write::{DeflateEncoder, ZlibEncoder};
use monitor_common::{
    DIRECTION_CLIENT_TO_SERVER, DIRECTION_SERVER_TO_CLIENT, FAMILY_IPV4, FAMILY_TLS,
    SEGMENT_EVENT_LEN, SegmentEvent, TCP_ACK, TCP_FIN, TCP_SYN, TlsEvent,
};
use monitor_tests::synth::http::{self, BodyEncoding, FORBIDDEN_JSON};
use monitor_tests::synth::{Conversation, PcapOut, Segment, Side, mangle};

/// Separates the client's bytes from the server's (as `monitor_fuzz::SERVER_SEPARATOR`).
const SERVER_SEPARATOR: &[u8] = b"\0--server--\0";
const API: &str = "/redcap/api/";
const TOKEN: &str = "ABCDEF0123456789ABCDEF0123456789";
const T0: f64 = 1_767_600_000.0;

fn main() -> Result<()> {
    let out: PathBuf = std::env::args()
        .nth(1)
        .context("usage: fuzz-seeds DIR (e.g. fuzz/seeds)")?
        .into();
    let seeds = Seeds { out };
    let exchanges = exchanges();
    captures(&seeds, &exchanges)?;
    for (i, (request, response)) in exchanges.iter().enumerate() {
        let mut conversation = request.clone();
        conversation.extend_from_slice(SERVER_SEPARATOR);
        conversation.extend_from_slice(response);
        for control in [0x07, 0x0c, 0x1d] {
            seeds.write(
                "http",
                &format!("exchange-{i}-{control:02x}"),
                control,
                &conversation,
            )?;
        }
    }
    h2(&seeds)?;
    forms(&seeds)?;
    bodies(&seeds)?;
    records(&seeds)?;
    configs(&seeds)?;
    Ok(())
}

struct Seeds {
    out: PathBuf,
}

impl Seeds {
    /// Writes `control` then `bytes` as `<out>/<target>/<name>`.
    fn write(&self, target: &str, name: &str, control: u8, bytes: &[u8]) -> Result<()> {
        let mut input = vec![control];
        input.extend_from_slice(bytes);
        self.write_raw(target, name, &input)
    }

    fn write_raw(&self, target: &str, name: &str, bytes: &[u8]) -> Result<()> {
        let dir = self.out.join(target);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    }
}

/// Request and response pairs as the tests send them.
fn exchanges() -> Vec<(Vec<u8>, Vec<u8>)> {
    let export = http::post_form(
        API,
        &[
            ("token", TOKEN),
            ("content", "record"),
            ("format", "json"),
            ("type", "flat"),
            ("records[0]", "1"),
            ("records[1]", "2"),
            ("fields[]", "record_id"),
            ("returnFormat", "json"),
        ],
    );
    let records: Vec<u8> = br#"[{"record_id":"1","age":"42"},{"record_id":"2","age":"7"}]"#
        .repeat(20)
        .to_vec();
    let gzipped = http::response(
        200,
        "application/json",
        &records,
        BodyEncoding::GzipChunked {
            level: 6,
            chunk: 100,
        },
    );
    let (content_type, body) = http::multipart(
        "----redcapAPIboundary",
        &[("token", TOKEN), ("content", "file"), ("action", "import")],
        Some(("scan.pdf", b"%PDF-1.4 a small file")),
    );
    let import = http::post(API, &content_type, &body, &[]);
    let mut pipelined = http::post_form(API, &[("token", TOKEN), ("content", "version")]);
    pipelined.extend(http::get("/redcap/index.php"));
    let mut answers = http::response(200, "text/plain", b"14.5.0", BodyEncoding::Plain).bytes;
    answers
        .extend(http::response(200, "text/html", b"<html></html>", BodyEncoding::Chunked(5)).bytes);
    let mut expecting = http::post_head_expecting_continue(
        API,
        "application/x-www-form-urlencoded",
        "token=ABC&content=version".len(),
    );
    expecting.extend_from_slice(b"token=ABC&content=version");
    let mut continued = http::CONTINUE_100.to_vec();
    continued.extend(
        http::response(
            403,
            "application/json",
            FORBIDDEN_JSON.as_bytes(),
            BodyEncoding::Plain,
        )
        .bytes,
    );
    vec![
        (export, gzipped.bytes),
        (
            import,
            http::response(200, "text/plain", b"1", BodyEncoding::Chunked(1)).bytes,
        ),
        (pipelined, answers),
        (expecting, continued),
    ]
}

/// Small pcaps of whole conversations (IPv4, IPv6 with a VLAN tag, mangled order and overlaps,
/// sequence numbers that wrap), for the reader and, frame by frame, for the decoder.
fn captures(seeds: &Seeds, exchanges: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
    let v4 = |last, port| SocketAddr::new(Ipv4Addr::new(10, 0, 0, last).into(), port);
    let v6 =
        |last, port| SocketAddr::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last).into(), port);
    let conversations = [
        Conversation::new(v4(1, 40001), v4(10, 80)).with_mss(600),
        Conversation::new(v6(1, 40002), v6(10, 80))
            .with_vlan(42)
            .with_isn(u32::MAX - 100, 7),
        Conversation::new(v4(2, 40003), v4(10, 443)).with_mss(300),
        Conversation::new(v4(3, 40004), v4(10, 8080)),
    ];
    let tmp = tempfile::tempdir()?;
    for (i, (mut conv, (request, response))) in conversations.into_iter().zip(exchanges).enumerate()
    {
        let mut segs: Vec<Segment> = conv.handshake();
        segs.extend(conv.data(Side::Client, request));
        segs.extend(conv.data(Side::Server, response));
        segs.extend(conv.close());
        if i == 2 {
            segs = mangle(&conv, &segs);
        }
        let path = tmp.path().join("seed.pcap");
        let mut pcap = PcapOut::create(&path)?;
        pcap.write_all(&conv, &segs, T0 + i as f64, 0.001)?;
        pcap.finish()?;
        let bytes = std::fs::read(&path)?;
        seeds.write_raw("capture_file", &format!("conversation-{i}.pcap"), &bytes)?;
        // The decoder's input: an Ethernet frame (control byte 1) of each kind.
        for (n, frame) in pcap_frames(&bytes)
            .into_iter()
            .enumerate()
            .filter(|(n, _)| *n < 4)
        {
            seeds.write("decode", &format!("conversation-{i}-frame-{n}"), 1, &frame)?;
        }
    }
    Ok(())
}

/// The frames of a classic pcap file (microsecond, little-endian, as `PcapOut` writes).
fn pcap_frames(file: &[u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= file.len() {
        let len = u32::from_le_bytes(file[at + 8..at + 12].try_into().unwrap_or_default()) as usize;
        at += 16;
        let Some(frame) = file.get(at..at + len) else {
            break;
        };
        frames.push(frame.to_vec());
        at += len;
    }
    frames
}

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK block of literal fields without indexing and without Huffman coding.
fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// HTTP/2 conversations like the h2 tests' (the target adds the client preface).
fn h2(seeds: &Seeds) -> Result<()> {
    const DATA: u8 = 0;
    const HEADERS: u8 = 1;
    const SETTINGS: u8 = 4;
    const WINDOW_UPDATE: u8 = 8;
    const END_STREAM: u8 = 1;
    const END_HEADERS: u8 = 4;
    let post = [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "redcap.example"),
        (":path", API),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    let mut client = frame(SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0]);
    client.extend(frame(WINDOW_UPDATE, 0, 0, &[0, 0xff, 0, 1]));
    client.extend(frame(HEADERS, END_HEADERS, 1, &block(&post)));
    client.extend(frame(
        DATA,
        0,
        1,
        format!("token={TOKEN}&content=").as_bytes(),
    ));
    client.extend(frame(DATA, END_STREAM, 1, b"version"));
    client.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &block(&[
            (":method", "GET"),
            (":path", "/skip/me"),
            (":scheme", "https"),
        ]),
    ));
    let mut server = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 128]);
    server.extend(frame(SETTINGS, 1, 0, &[]));
    server.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &block(&[(":status", "200"), ("content-encoding", "gzip")]),
    ));
    let body = http::gzip(b"14.5.0", 6);
    server.extend(frame(DATA, END_STREAM, 1, &body));
    server.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &block(&[(":status", "404")]),
    ));
    let mut conversation = client;
    conversation.extend_from_slice(SERVER_SEPARATOR);
    conversation.extend(server);
    for control in [0x07, 0x0c, 0x1a] {
        seeds.write(
            "h2",
            &format!("two-streams-{control:02x}"),
            control,
            &conversation,
        )?;
    }
    Ok(())
}

/// Form bodies for the urlencoded and multipart targets.
fn forms(seeds: &Seeds) -> Result<()> {
    let urlencoded = [
        http::urlencode(&[("token", TOKEN), ("content", "record"), ("format", "json")]),
        http::urlencode(&[
            ("content", "record"),
            ("records[]", "1"),
            ("records[]", "2"),
            ("fields", "a,b,c"),
            ("filterLogic", "[age] > 30"),
            ("token", TOKEN),
        ]),
        "token=ab%43d&token=%zz&data=%E2%82%AC&a[b]=1&&=x&+token=1".to_owned(),
    ];
    for (i, body) in urlencoded.iter().enumerate() {
        for control in [0x00, 0x03, 0x0d] {
            seeds.write(
                "urlencoded",
                &format!("form-{i}-{control:02x}"),
                control,
                body.as_bytes(),
            )?;
        }
    }
    let multipart = [
        http::multipart("xYzZY", &[("token", TOKEN), ("content", "metadata")], None),
        http::multipart(
            "----WebKitFormBoundary7MA4YWxkTrZu0gW",
            &[
                ("token", TOKEN),
                ("content", "file"),
                ("action", "import"),
                ("record", "1"),
            ],
            Some((
                "data.csv",
                b"record_id,age\r\n1,42\r\n--not-the-boundary\r\n",
            )),
        ),
    ];
    for (i, (content_type, body)) in multipart.iter().enumerate() {
        let mut input = content_type.clone().into_bytes();
        input.push(b'\n');
        input.extend_from_slice(body);
        for control in [0x00, 0x04, 0x0e] {
            seeds.write(
                "multipart",
                &format!("form-{i}-{control:02x}"),
                control,
                &input,
            )?;
        }
    }
    Ok(())
}

/// gzip, zlib-wrapped and raw deflate bodies (the control byte's top bits pick the coding).
fn bodies(seeds: &Seeds) -> Result<()> {
    use std::io::Write;
    let text = br#"{"record_id":"1","redcap_event_name":"baseline_arm_1","age":"42"}"#.repeat(30);
    let deflate = |zlib: bool| -> Result<Vec<u8>> {
        Ok(if zlib {
            let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
            e.write_all(&text)?;
            e.finish()?
        } else {
            let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
            e.write_all(&text)?;
            e.finish()?
        })
    };
    seeds.write("body_decode", "gzip", 0x05, &http::gzip(&text, 9))?;
    seeds.write("body_decode", "gzip-capped", 0x0b, &http::gzip(&text, 1))?;
    seeds.write("body_decode", "zlib", 0x44, &deflate(true)?)?;
    seeds.write("body_decode", "raw-deflate", 0x40, &deflate(false)?)?;
    seeds.write("body_decode", "identity", 0x80, &text)?;
    Ok(())
}

fn segment_record(event: &SegmentEvent, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; SEGMENT_EVENT_LEN];
    // SAFETY: `bytes` has room for one SegmentEvent.
    unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), *event) };
    bytes.extend_from_slice(payload);
    bytes
}

fn tls_record(event: &TlsEvent, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; SEGMENT_EVENT_LEN];
    // SAFETY: `bytes` has room for one TlsEvent (the same size as a SegmentEvent).
    unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), *event) };
    bytes.extend_from_slice(payload);
    bytes
}

/// Appends one record as the ring_records target reads it: a little-endian u16 length first.
fn push_record(out: &mut Vec<u8>, record: &[u8]) {
    out.extend_from_slice(&(record.len() as u16).to_le_bytes());
    out.extend_from_slice(record);
}

/// A TC-probe API call (client request copied from its POST, server answer) and a TLS
/// connection's call and `SSL_free`.
fn records(seeds: &Seeds) -> Result<()> {
    let request = http::post_form(API, &[("token", TOKEN), ("content", "version")]);
    let response = http::response(200, "text/plain", b"14.5.0", BodyEncoding::Plain).bytes;
    let mut client_addr = [0u8; 16];
    client_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
    let mut server_addr = [0u8; 16];
    server_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
    let tc = |direction, seq: u32, ack: u32, flags, payload: &[u8]| SegmentEvent {
        ktime_ns: 5_000 + u64::from(seq),
        seq,
        ack,
        segment_len: payload.len() as u32,
        offset: 0,
        copied: payload.len() as u32,
        client_port: 40000,
        server_port: 80,
        client_addr,
        server_addr,
        family: FAMILY_IPV4,
        direction,
        tcp_flags: flags,
        stream_start_known: 1,
        stream_start: 1000,
    };
    let mut input = Vec::new();
    let c = tc(DIRECTION_CLIENT_TO_SERVER, 1000, 5000, TCP_ACK, &request);
    push_record(&mut input, &segment_record(&c, &request));
    let s = tc(
        DIRECTION_SERVER_TO_CLIENT,
        5000,
        1000 + request.len() as u32,
        TCP_ACK,
        &response,
    );
    push_record(&mut input, &segment_record(&s, &response));
    let fin = tc(
        DIRECTION_CLIENT_TO_SERVER,
        1000 + request.len() as u32,
        5000 + response.len() as u32,
        TCP_ACK | TCP_FIN,
        b"",
    );
    push_record(&mut input, &segment_record(&fin, b""));
    seeds.write_raw("ring_records", "tc-call", &input)?;

    let tls = |direction, stream_offset: u32, peer_offset: u32, flags, payload: &[u8]| TlsEvent {
        ktime_ns: 7_000 + u64::from(stream_offset),
        stream_offset,
        peer_offset,
        call_len: payload.len() as u32,
        copied: payload.len() as u32,
        fd: monitor_common::NO_FD,
        ssl: 0x5555_0000_1234,
        tgid: 4242,
        conn_since_ns: 99,
        family: FAMILY_TLS,
        direction,
        flags,
        ..TlsEvent::default()
    };
    let mut input = Vec::new();
    let first = tls(DIRECTION_CLIENT_TO_SERVER, 0, 0, TCP_SYN, &request);
    push_record(&mut input, &tls_record(&first, &request));
    let answer = tls(
        DIRECTION_SERVER_TO_CLIENT,
        0,
        request.len() as u32,
        0,
        &response,
    );
    push_record(&mut input, &tls_record(&answer, &response));
    let free = tls(
        DIRECTION_CLIENT_TO_SERVER,
        request.len() as u32,
        response.len() as u32,
        TCP_FIN,
        b"",
    );
    push_record(&mut input, &tls_record(&free, b""));
    seeds.write_raw("ring_records", "tls-call", &input)?;
    Ok(())
}

/// The shipped configuration and a few sections as the configuration tests write them.
fn configs(seeds: &Seeds) -> Result<()> {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/redcap-monitor.toml");
    let text = std::fs::read(&shipped).with_context(|| format!("reading {}", shipped.display()))?;
    seeds.write_raw("config", "shipped.toml", &text)?;
    seeds.write_raw(
        "config",
        "policy.toml",
        br#"[policy]
reorder_window = "2s"
max_tokens = 1000

[[policy.rules]]
name = "calls"
calls = "all"
limit = 3
window = "1m"

[[policy.rules]]
name = "heavy"
calls = "heavy"
limit = 1
window = "5m"

[[policy.overrides]]
token_fp = "0011223344556677"
exempt = true
"#,
    )?;
    seeds.write_raw(
        "config",
        "capture.toml",
        b"[capture]\nmode = \"auto\"\ninterfaces = [\"eth0\"]\nports = [80, 443]\n\n[reassembly]\nmax_connections = 100\nidle_timeout = \"30s\"\n",
    )?;
    Ok(())
}
