//! Properties of the sans-IO stages, checked on generated inputs (proptest):
//! - reassembly delivers each direction's bytes exactly, whatever the segmentation, the order
//!   (within a bounded displacement), duplicates and overlapping retransmissions;
//! - streaming urlencoded and multipart extraction find what a one-piece reading finds, whatever
//!   the chunking;
//! - the policy's verdicts do not depend on the order calls finish in, as long as each finishes
//!   within the reorder window of its start.
//!
//! Case counts are moderate so that `cargo test` stays fast; a failure prints the minimal case.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use redcap_monitor::shared::model::{
    Direction, Endpoint, Span, StreamEvent, TcpFlags, TcpSegment, Timestamp,
};
use redcap_monitor::shared::token::{
    HookToken, MaskedToken, SiteKey, TokenFingerprint, TokenProblem,
};
use redcap_monitor::stages::http::{HttpVersion, RequestBody};
use redcap_monitor::stages::policy::PolicyConfig;
use redcap_monitor::stages::policy::{Hold, OpenRequests, Policy};
use redcap_monitor::stages::reassembly::{Reassembler, ReassemblyLimits};
use redcap_monitor::stages::redcap::{
    ApiCall, ApiParams, BodyProblem, FormBody, RequestFields, TokenIdentity,
};

fn endpoint(last: u8, port: u16) -> Endpoint {
    Endpoint {
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)),
        port,
    }
}

const T0: u64 = 1_767_600_000_000_000_000;

// ---------------------------------------------------------------------------------------------
// Reassembly

/// One captured data segment: bytes `start..end` of a direction's stream.
#[derive(Clone, Debug)]
struct Piece {
    dir: Direction,
    start: usize,
    end: usize,
}

/// A stream cut at the given points (sorted, deduplicated, inside it) into pieces.
fn cut(dir: Direction, len: usize, mut cuts: Vec<usize>) -> Vec<Piece> {
    cuts.retain(|&c| c > 0 && c < len);
    cuts.sort_unstable();
    cuts.dedup();
    let mut bounds = vec![0];
    bounds.extend(cuts);
    bounds.push(len);
    bounds
        .windows(2)
        .filter(|w| w[0] < w[1])
        .map(|w| Piece {
            dir,
            start: w[0],
            end: w[1],
        })
        .collect()
}

/// A conversation's two streams, and the order a capture saw their data in.
#[derive(Debug)]
struct Capture {
    client: Vec<u8>,
    server: Vec<u8>,
    pieces: Vec<Piece>,
}

/// Pieces of both streams, in order, then: retransmissions of random ranges (overlapping the
/// pieces' bounds), duplicates, and a shuffle that moves no piece more than `max_displacement`
/// places.
fn capture() -> impl Strategy<Value = Capture> {
    (
        proptest::collection::vec(any::<u8>(), 1..3000),
        proptest::collection::vec(any::<u8>(), 0..3000),
    )
        .prop_flat_map(|(client, server)| {
            let (c, s) = (client.len(), server.len());
            (
                Just(client),
                Just(server),
                proptest::collection::vec(0..c, 0..12),
                proptest::collection::vec(0..s.max(1), 0..12),
                proptest::collection::vec((any::<bool>(), 0..c.max(s), 1..600usize), 0..6),
                proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
                proptest::collection::vec(0..8usize, 64),
            )
        })
        .prop_map(
            |(client, server, client_cuts, server_cuts, retransmits, duplicates, shifts)| {
                let mut pieces = cut(Direction::ClientToServer, client.len(), client_cuts);
                pieces.extend(cut(Direction::ServerToClient, server.len(), server_cuts));
                // Interleave the two directions as they were sent: by position in their stream.
                pieces
                    .sort_by_key(|p| p.start * 2 + usize::from(p.dir == Direction::ServerToClient));
                for (to_server, start, len) in retransmits {
                    let (dir, stream_len) = if to_server || server.is_empty() {
                        (Direction::ClientToServer, client.len())
                    } else {
                        (Direction::ServerToClient, server.len())
                    };
                    let start = start % stream_len;
                    let end = (start + len).min(stream_len);
                    let at = (start * pieces.len()) / stream_len.max(1) + 1;
                    pieces.insert(at.min(pieces.len()), Piece { dir, start, end });
                }
                for index in duplicates {
                    let copy = index.get(&pieces).clone();
                    let at = (index.index(pieces.len()) + 3).min(pieces.len());
                    pieces.insert(at, copy);
                }
                // Bounded displacement: sort by position plus a small random delay.
                let mut keyed: Vec<(usize, Piece)> = pieces
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| (i + shifts[i % shifts.len()], p))
                    .collect();
                keyed.sort_by_key(|(key, _)| *key);
                Capture {
                    client,
                    server,
                    pieces: keyed.into_iter().map(|(_, p)| p).collect(),
                }
            },
        )
}

/// What reassembly delivered for one connection.
#[derive(Default, Debug)]
struct Delivered {
    bytes: [Vec<u8>; 2],
    gaps: u64,
    opened: u32,
}

/// Pushes the handshake, the captured pieces and both FINs; returns what was delivered.
fn reassemble(capture: &Capture, client_isn: u32, server_isn: u32) -> Delivered {
    let (client, server) = (endpoint(1, 40000), endpoint(2, 80));
    let mut reassembler = Reassembler::new(ReassemblyLimits::default());
    let mut delivered = Delivered::default();
    let mut emit = |event: StreamEvent<'_>| match event {
        StreamEvent::Opened { .. } => delivered.opened += 1,
        StreamEvent::Data { dir, bytes, .. } => {
            delivered.bytes[dir.index()].extend_from_slice(bytes)
        }
        StreamEvent::Gap { .. } => delivered.gaps += 1,
        StreamEvent::Closed { .. } => {}
    };
    let mut ts = Timestamp(T0);
    let mut push = |reassembler: &mut Reassembler,
                    emit: &mut dyn FnMut(StreamEvent<'_>),
                    dir: Direction,
                    seq: u32,
                    flags: TcpFlags,
                    ack: Option<u32>,
                    payload: &[u8]| {
        ts = ts.plus(Span::from_millis(1));
        let (src, dst) = match dir {
            Direction::ClientToServer => (client, server),
            Direction::ServerToClient => (server, client),
        };
        let segment = TcpSegment {
            ts,
            src,
            dst,
            seq,
            ack,
            flags,
            payload,
            stream_start: None,
        };
        reassembler.push(&segment, emit);
    };
    let syn = TcpFlags {
        syn: true,
        ..TcpFlags::default()
    };
    let syn_ack = TcpFlags {
        syn: true,
        ack: true,
        ..TcpFlags::default()
    };
    push(
        &mut reassembler,
        &mut emit,
        Direction::ClientToServer,
        client_isn,
        syn,
        None,
        &[],
    );
    push(
        &mut reassembler,
        &mut emit,
        Direction::ServerToClient,
        server_isn,
        syn_ack,
        Some(client_isn.wrapping_add(1)),
        &[],
    );
    for piece in &capture.pieces {
        let (stream, isn) = match piece.dir {
            Direction::ClientToServer => (&capture.client, client_isn),
            Direction::ServerToClient => (&capture.server, server_isn),
        };
        // Acknowledgments are left out: one for bytes the capture has not shown yet would
        // rightly be taken for a loss.
        push(
            &mut reassembler,
            &mut emit,
            piece.dir,
            isn.wrapping_add(1).wrapping_add(piece.start as u32),
            TcpFlags::default(),
            None,
            &stream[piece.start..piece.end],
        );
    }
    let fin = TcpFlags {
        fin: true,
        ..TcpFlags::default()
    };
    let client_end = client_isn
        .wrapping_add(1)
        .wrapping_add(capture.client.len() as u32);
    let server_end = server_isn
        .wrapping_add(1)
        .wrapping_add(capture.server.len() as u32);
    push(
        &mut reassembler,
        &mut emit,
        Direction::ClientToServer,
        client_end,
        fin,
        None,
        &[],
    );
    push(
        &mut reassembler,
        &mut emit,
        Direction::ServerToClient,
        server_end,
        fin,
        None,
        &[],
    );
    assert_eq!(
        reassembler.connections(),
        0,
        "both FINs close the connection"
    );
    assert_eq!(reassembler.buffered_bytes(), 0);
    delivered
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn reassembly_delivers_the_same_bytes_whatever_the_segmentation_order_and_overlap(
        capture in capture(),
        client_isn in prop_oneof![Just(u32::MAX - 700), any::<u32>()],
        server_isn in any::<u32>(),
    ) {
        let delivered = reassemble(&capture, client_isn, server_isn);
        prop_assert_eq!(delivered.opened, 1);
        prop_assert_eq!(delivered.gaps, 0);
        prop_assert!(delivered.bytes[0] == capture.client, "client stream differs");
        prop_assert!(delivered.bytes[1] == capture.server, "server stream differs");
    }
}

// ---------------------------------------------------------------------------------------------
// Form extraction

/// What a body gave, comparable (the token by its fingerprint).
#[derive(Debug, PartialEq)]
struct Extracted {
    token: Option<Result<TokenFingerprint, TokenProblem>>,
    params: ApiParams,
    problem: Option<BodyProblem>,
}

fn extracted(fields: RequestFields) -> Extracted {
    let key = SiteKey::from_bytes([7; 32]);
    Extracted {
        token: fields.token.map(|t| t.map(|raw| key.fingerprint(&raw))),
        params: fields.params,
        problem: fields.problem,
    }
}

fn read(content_type: &str, max_input_vars: u64, chunks: &[&[u8]]) -> Extracted {
    let mut body = FormBody::new(Some(content_type), max_input_vars);
    for chunk in chunks {
        body.feed(chunk);
    }
    extracted(body.finish())
}

/// `body` cut at the given points.
fn chunks(body: &[u8], mut cuts: Vec<usize>) -> Vec<&[u8]> {
    cuts.retain(|&c| c < body.len());
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut from = 0;
    for c in cuts {
        out.push(&body[from..c]);
        from = c;
    }
    out.push(&body[from..]);
    out
}

/// Names REDCap reads (and some it does not), as PHP may spell them.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("token".to_owned()),
        Just("content".to_owned()),
        Just("format".to_owned()),
        Just("action".to_owned()),
        Just("data".to_owned()),
        Just("records[]".to_owned()),
        Just("records[3]".to_owned()),
        Just("fields".to_owned()),
        Just("filterLogic".to_owned()),
        Just("returnMetadataOnly".to_owned()),
        Just("to%6Ben".to_owned()),
        Just("tok en".to_owned()),
        "[a-z_\\[\\]. ]{0,12}",
    ]
}

/// Values with the characters that matter to the scanners: escapes (good and broken), `+`,
/// separators, CR/LF and dashes (multipart boundaries).
fn field_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("ABCDEF0123456789ABCDEF0123456789".to_owned()),
        Just("record".to_owned()),
        Just("1".to_owned()),
        "[A-Za-z0-9%+=&;\\-\r\n ]{0,40}",
        "(%[0-9A-Fa-f]{2}){0,8}",
        Just("--b\r\n--".to_owned()),
    ]
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    proptest::collection::vec((field_name(), field_value()), 0..10)
}

fn cuts() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(0..2000usize, 0..40)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn streaming_urlencoded_extraction_equals_one_shot_whatever_the_chunking(
        pairs in pairs(),
        separators in proptest::collection::vec(prop_oneof![Just("&"), Just("&&"), Just(";")], 10),
        cuts in cuts(),
        max_input_vars in prop_oneof![Just(3u64), Just(100_000)],
    ) {
        let mut body = String::new();
        for (i, (name, value)) in pairs.iter().enumerate() {
            if i > 0 {
                body.push_str(separators[i % separators.len()]);
            }
            body.push_str(name);
            body.push('=');
            body.push_str(value);
        }
        let content_type = "application/x-www-form-urlencoded";
        let whole = read(content_type, max_input_vars, &[body.as_bytes()]);
        let streamed = read(content_type, max_input_vars, &chunks(body.as_bytes(), cuts));
        prop_assert_eq!(streamed, whole);
    }

    #[test]
    fn streaming_multipart_extraction_equals_one_shot_whatever_the_chunking(
        pairs in pairs(),
        boundary in prop_oneof![Just("b".to_owned()), "[A-Za-z0-9'()+_,./:=?-]{1,70}"],
        file in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        preamble in prop_oneof![Just(String::new()), "[a-z\r\n-]{0,20}"],
        crlf in prop_oneof![Just("\r\n"), Just("\n")],
        cuts in cuts(),
        max_input_vars in prop_oneof![Just(3u64), Just(100_000)],
    ) {
        let mut body = preamble.into_bytes();
        for (name, value) in &pairs {
            body.extend_from_slice(
                format!(
                    "--{boundary}{crlf}Content-Disposition: form-data; name=\"{name}\"{crlf}{crlf}{value}{crlf}"
                )
                .as_bytes(),
            );
        }
        if let Some(data) = &file {
            body.extend_from_slice(
                format!(
                    "--{boundary}{crlf}Content-Disposition: form-data; name=\"file\"; filename=\"a.bin\"{crlf}\
                     Content-Type: application/octet-stream{crlf}{crlf}"
                )
                .as_bytes(),
            );
            body.extend_from_slice(data);
            body.extend_from_slice(crlf.as_bytes());
        }
        body.extend_from_slice(format!("--{boundary}--{crlf}").as_bytes());
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let whole = read(&content_type, max_input_vars, &[&body]);
        let streamed = read(&content_type, max_input_vars, &chunks(&body, cuts));
        prop_assert_eq!(streamed, whole);
    }
}

// ---------------------------------------------------------------------------------------------
// Policy

/// One call: its token (`None`: no usable token), its client address, when its request
/// started, how long its token stayed unknown (its body arriving) and how long it took, what it
/// asked.
#[derive(Clone, Debug)]
struct CallSpec {
    token: Option<u8>,
    client: u8,
    start: Timestamp,
    token_unknown_for: Span,
    duration: Span,
    heavy: bool,
    refused: bool,
}

fn fingerprint(token: u8) -> TokenFingerprint {
    TokenFingerprint([token; 8])
}

fn api_call(spec: &CallSpec) -> ApiCall {
    ApiCall {
        ts_start: spec.start,
        ts_end: spec.start.plus(spec.duration),
        ttfb: Some(spec.duration),
        client: endpoint(10 + spec.client, 40000),
        server: endpoint(2, 80),
        proxy: None,
        method: "POST".into(),
        path: "/api/".into(),
        http_version: HttpVersion::Http11,
        token: match spec.token {
            Some(token) => Ok(TokenIdentity {
                fingerprint: fingerprint(token),
                masked: MaskedToken(format!("T{token}…")),
            }),
            None => Err(TokenProblem::Missing),
        },
        params: ApiParams {
            content: Some("record".into()),
            format: Some("json".into()),
            ..ApiParams::default()
        },
        status: Some(if spec.refused { 403 } else { 200 }),
        request_bytes: 60,
        // Over the default heavy threshold (500 kB) or not.
        response_bytes: Some(if spec.heavy { 2_000_000 } else { 1_000 }),
        response_wire_bytes: Some(300),
        complete: true,
        body_problem: None,
        raw_token: HookToken::default(),
    }
}

/// Calls with distinct, increasing starts (gaps from a millisecond to a minute), each taking
/// less than the default reorder window (two minutes), their token unknown for less than the
/// default `policy.unknown_token_hold` (5 s); from four tokens (one in ten without a usable
/// token) and three client addresses.
fn call_specs() -> impl Strategy<Value = Vec<CallSpec>> {
    proptest::collection::vec(
        (
            prop_oneof![9 => (0..4u8).prop_map(Some), 1 => Just(None)],
            0..3u8,
            prop_oneof![1..60_000u64, 1..3_000u64],
            0..4_999u64,
            prop_oneof![0..2_000u64, 0..119_999u64],
            proptest::bool::weighted(0.2),
            proptest::bool::weighted(0.15),
        ),
        1..40,
    )
    .prop_map(|raw| {
        let mut start = T0;
        raw.into_iter()
            .map(
                |(token, client, gap_ms, unknown_ms, duration_ms, heavy, refused)| {
                    start += gap_ms * 1_000_000;
                    CallSpec {
                        token,
                        client,
                        start: Timestamp(start),
                        token_unknown_for: Span::from_millis(unknown_ms.min(duration_ms)),
                        duration: Span::from_millis(duration_ms),
                        heavy,
                        refused,
                    }
                },
            )
            .collect()
    })
}

/// The requests open at `now`, as the HTTP stage would know them.
struct OpenAt<'a> {
    now: Timestamp,
    open: Vec<&'a CallSpec>,
}

impl OpenAt<'_> {
    fn known(&self) -> impl Iterator<Item = &CallSpec> {
        self.open
            .iter()
            .copied()
            .filter(|s| s.start.plus(s.token_unknown_for) <= self.now)
    }
}

impl OpenRequests for OpenAt<'_> {
    fn oldest_unknown_after(&self, after: Timestamp) -> Option<Timestamp> {
        self.open
            .iter()
            .filter(|s| s.start.plus(s.token_unknown_for) > self.now && s.start > after)
            .map(|s| s.start)
            .min()
    }
    fn oldest_of_token(&self, token: &TokenFingerprint) -> Option<Timestamp> {
        self.known()
            .filter(|s| s.token.map(fingerprint).as_ref() == Some(token))
            .map(|s| s.start)
            .min()
    }
    fn oldest_from_peer(&self, peer: IpAddr) -> Option<Timestamp> {
        self.known()
            .filter(|s| endpoint(10 + s.client, 0).ip == peer)
            .map(|s| s.start)
            .min()
    }
}

/// Each call's verdict by its start: whether it was heavy, its violations (rule, count), and
/// the refused-calls count that made its client address a violation.
type Verdicts = BTreeMap<Timestamp, (bool, Vec<(String, u32)>, Option<u32>)>;

fn record(verdicts: &mut Verdicts, verdict: redcap_monitor::stages::policy::Verdict) {
    let violations = verdict
        .violations
        .iter()
        .map(|v| (v.rule.clone(), v.count))
        .collect();
    let client = verdict.client_violation.as_ref().map(|v| v.count);
    let previous = verdicts.insert(
        verdict.call.ts_start,
        (verdict.heavy.is_some(), violations, client),
    );
    assert!(previous.is_none(), "a call was judged twice");
}

/// The calls handed to the policy in the order they finish, released as the pipeline does: held
/// back by the earlier-started requests still open whose token is that call's, or whose client
/// is that call's (for calls counted by address), or whose token is not known yet, until the
/// reorder window is over.
fn judged_as_they_finish(specs: &[CallSpec]) -> (Verdicts, u64) {
    let mut policy = Policy::new(&PolicyConfig::default());
    let mut verdicts = Verdicts::new();
    let mut by_end: Vec<&CallSpec> = specs.iter().collect();
    by_end.sort_by_key(|s| (s.start.plus(s.duration), s.start));
    for (i, spec) in by_end.iter().enumerate() {
        let now = spec.start.plus(spec.duration);
        policy.push(api_call(spec));
        // Requests started by now and not finished yet (those later in the finishing order).
        let open = OpenAt {
            now,
            open: by_end[i + 1..]
                .iter()
                .copied()
                .filter(|s| s.start <= now)
                .collect(),
        };
        while let Some(verdict) = policy.poll(now, &Hold::new(&open)) {
            record(&mut verdicts, verdict);
        }
    }
    while let Some(verdict) = policy.drain() {
        record(&mut verdicts, verdict);
    }
    (verdicts, policy.stats().late_calls)
}

/// The calls judged in the order their requests started.
fn judged_in_start_order(specs: &[CallSpec]) -> Verdicts {
    let mut policy = Policy::new(&PolicyConfig::default());
    let mut verdicts = Verdicts::new();
    for spec in specs {
        policy.push(api_call(spec));
        let now = spec.start;
        while let Some(verdict) = policy.poll(now, &Hold::all_since(None)) {
            record(&mut verdicts, verdict);
        }
    }
    while let Some(verdict) = policy.drain() {
        record(&mut verdicts, verdict);
    }
    verdicts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn policy_verdicts_do_not_depend_on_the_order_calls_finish_within_the_reorder_window(
        specs in call_specs(),
    ) {
        let (as_finished, late) = judged_as_they_finish(&specs);
        prop_assert_eq!(late, 0);
        prop_assert_eq!(as_finished, judged_in_start_order(&specs));
    }
}
