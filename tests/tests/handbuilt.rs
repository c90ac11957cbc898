//! Hand-built captures, one per hard case of the offline pipeline: each test writes a small
//! pcap with exactly the segments it needs and checks `redcap-monitor analyze`'s calls and
//! violations against what it put on the wire.

use std::net::SocketAddr;
use std::path::PathBuf;

use monitor_tests::daemon::{CallRecord, ViolationRecord, analyze_full, fingerprint};
use monitor_tests::synth::http::{self, BodyEncoding, CONTINUE_100, FORBIDDEN_JSON};
use monitor_tests::synth::{Conversation, PcapOut, Segment, Side, mangle};

const T0: f64 = 1_767_600_000.0;
const TOKEN_A: &str = "0123456789ABCDEF0123456789ABCDEF";
const TOKEN_B: &str = "FEDCBA9876543210FEDCBA9876543210";
const API: &str = "/redcap/api/";
const SERVER: &str = "10.0.0.10:80";

/// A capture being built in its own temporary directory, with its own site key.
struct Case {
    name: &'static str,
    dir: tempfile::TempDir,
    pcap: PathBuf,
    out: PcapOut,
    next_port: u16,
}

impl Case {
    fn new(name: &'static str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        let pcap = dir.path().join("case.pcap");
        let out = PcapOut::create(&pcap).unwrap();
        Case {
            name,
            dir,
            pcap,
            out,
            next_port: 40_000,
        }
    }

    /// A fresh IPv4 connection from a new client port to the server.
    fn conn(&mut self) -> Conversation {
        self.next_port += 1;
        let client: SocketAddr = format!("10.0.0.1:{}", self.next_port).parse().unwrap();
        Conversation::new(client, SERVER.parse().unwrap())
    }

    /// One call on its own connection at `t`.
    fn call(&mut self, t: f64, request: &[u8], response: &[u8]) {
        let mut conv = self.conn();
        self.out
            .write_exchange(&mut conv, t, request, response)
            .unwrap();
    }

    fn write(&mut self, conv: &Conversation, segs: &[Segment], t: f64) -> f64 {
        self.out.write_all(conv, segs, t, 0.0001).unwrap()
    }

    fn analyze(self) -> Outcome {
        let key = self.dir.path().join("site.key");
        self.out.finish().unwrap();
        // For debugging a failure with tshark/wireshark.
        if let Some(keep) = std::env::var_os("MONITOR_TESTS_KEEP_PCAPS") {
            let keep = PathBuf::from(keep);
            std::fs::create_dir_all(&keep).unwrap();
            std::fs::copy(&self.pcap, keep.join(format!("{}.pcap", self.name))).unwrap();
        }
        let analysis = analyze_full(&self.pcap, &key, None).unwrap();
        Outcome {
            calls: analysis.calls,
            violations: analysis.violations,
            stderr: analysis.stderr,
            key,
            _dir: self.dir,
        }
    }
}

struct Outcome {
    calls: Vec<CallRecord>,
    violations: Vec<ViolationRecord>,
    /// analyze's report to people: the call count and the input problems it met.
    stderr: String,
    key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Outcome {
    fn fp(&self, token: &str) -> String {
        fingerprint(&self.key, token).unwrap()
    }
}

fn version_request(token: &str) -> Vec<u8> {
    http::post_form(API, &[("token", token), ("content", "version")])
}

fn version_response() -> Vec<u8> {
    http::response(
        200,
        "text/html; charset=UTF-8",
        b"15.7.6",
        BodyEncoding::Plain,
    )
    .bytes
}

fn json_records(n: usize) -> Vec<u8> {
    let rows: Vec<String> = (1..=n)
        .map(|i| {
            format!(
                r#"{{"record_id":"{i}","age":"{}","notes":"visit {i} went fine"}}"#,
                20 + i % 50
            )
        })
        .collect();
    format!("[{}]", rows.join(",")).into_bytes()
}

fn unfiltered_export(token: &str) -> Vec<u8> {
    http::post_form(
        API,
        &[
            ("token", token),
            ("content", "record"),
            ("format", "json"),
            ("type", "flat"),
        ],
    )
}

#[test]
fn pipelined_requests_are_reported_as_two_calls_in_order() {
    let mut case = Case::new("pipelined_requests_are_reported_as_two_calls_in_order");
    let mut conv = case.conn();
    let mut segs = conv.handshake();
    let mut both = version_request(TOKEN_A);
    both.extend(http::post_form(
        API,
        &[
            ("token", TOKEN_A),
            ("content", "metadata"),
            ("format", "json"),
        ],
    ));
    segs.extend(conv.data(Side::Client, &both));
    let first = http::response(200, "text/html", b"15.7.6", BodyEncoding::Plain);
    let metadata = br#"[{"field_name":"record_id","form_name":"f","field_type":"text"}]"#;
    let second = http::response(200, "application/json", metadata, BodyEncoding::Plain);
    let mut answers = first.bytes.clone();
    answers.extend(&second.bytes);
    segs.extend(conv.data(Side::Server, &answers));
    segs.extend(conv.close());
    case.write(&conv, &segs, T0);

    let out = case.analyze();
    let got: Vec<_> = out
        .calls
        .iter()
        .map(|c| (c.content.as_deref(), c.response_bytes))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("version"), Some(6)),
            (Some("metadata"), Some(metadata.len() as u64))
        ]
    );
    assert!(
        out.calls
            .iter()
            .all(|c| c.complete && c.status == Some(200))
    );
}

#[test]
fn request_body_split_over_many_segments_is_one_call() {
    let mut case = Case::new("request_body_split_over_many_segments_is_one_call");
    let names: Vec<String> = (0..3000).map(|i| format!("field_{i}")).collect();
    let keys: Vec<String> = (0..names.len()).map(|i| format!("fields[{i}]")).collect();
    let mut pairs = vec![
        ("token", TOKEN_A),
        ("content", "record"),
        ("format", "json"),
    ];
    pairs.extend(
        keys.iter()
            .map(String::as_str)
            .zip(names.iter().map(String::as_str)),
    );
    pairs.push(("records[0]", "1"));
    let body_len = http::urlencode(&pairs).len() as u64;
    let request = http::post_form(API, &pairs);
    let mut conv = case.conn().with_mss(536);
    let mut segs = conv.handshake();
    segs.extend(conv.data(Side::Client, &request));
    assert!(segs.len() > 100, "the body should span many segments");
    let body = json_records(1);
    segs.extend(conv.data(
        Side::Server,
        &http::response(200, "application/json", &body, BodyEncoding::Plain).bytes,
    ));
    segs.extend(conv.close());
    case.write(&conv, &segs, T0);

    let out = case.analyze();
    assert_eq!(out.calls.len(), 1, "{:?}", out.calls);
    let call = &out.calls[0];
    assert_eq!(call.request_bytes, body_len);
    assert_eq!(call.fields, 3000);
    assert_eq!(call.records, 1);
    assert_eq!(call.token_fp.as_deref(), Some(out.fp(TOKEN_A).as_str()));
    assert!(call.complete);
}

/// The segments of a keep-alive connection with three calls, small segments both ways.
fn three_calls(conv: &mut Conversation) -> Vec<Segment> {
    let mut segs = conv.handshake();
    for (i, size) in [(0, 5_000), (1, 40_000), (2, 300)] {
        let records = format!("{}", i + 1);
        let req = http::post_form(
            API,
            &[
                ("token", TOKEN_A),
                ("content", "record"),
                ("format", "json"),
                ("records[0]", &records),
            ],
        );
        segs.extend(conv.data(Side::Client, &req));
        let body = json_records(size / 60 + 1);
        let resp = http::response(
            200,
            "application/json",
            &body,
            BodyEncoding::GzipChunked {
                level: 1,
                chunk: 997,
            },
        );
        segs.extend(conv.data(Side::Server, &resp.bytes));
    }
    segs.extend(conv.close());
    segs
}

/// What must not depend on segment order: everything but the timestamps. Each analysis has its
/// own site key, so the token is compared through that analysis's fingerprint of it.
fn essence(c: &CallRecord, outcome: &Outcome) -> String {
    format!(
        "{} {:?} {:?} {} {} {:?} {:?} {:?} {}",
        c.token_fp.as_deref() == Some(outcome.fp(TOKEN_A).as_str()),
        c.content,
        c.format,
        c.records,
        c.request_bytes,
        c.status,
        c.response_bytes,
        c.response_wire_bytes,
        c.complete
    )
}

#[test]
fn out_of_order_retransmitted_and_overlapping_segments_give_the_in_order_result() {
    let mut in_order = Case::new(
        "out_of_order_retransmitted_and_overlapping_segments_give_the_in_order_result-in-order",
    );
    let mut conv = in_order.conn().with_mss(700);
    let segs = three_calls(&mut conv);
    in_order.write(&conv, &segs, T0);

    let mut messy = Case::new(
        "out_of_order_retransmitted_and_overlapping_segments_give_the_in_order_result-messy",
    );
    let mangled = mangle(&conv, &segs);
    assert!(mangled.len() > segs.len());
    messy.write(&conv, &mangled, T0);
    let got = messy.analyze();
    let expected = in_order.analyze();
    assert_eq!(expected.calls.len(), 3);
    let want: Vec<String> = expected
        .calls
        .iter()
        .map(|c| essence(c, &expected))
        .collect();
    let have: Vec<String> = got.calls.iter().map(|c| essence(c, &got)).collect();
    assert!(want.iter().all(|e| e.starts_with("true ")), "{want:?}");
    assert_eq!(have, want);
}

#[test]
fn gap_in_response_body_reports_the_call_as_incomplete() {
    let mut case = Case::new("gap_in_response_body_reports_the_call_as_incomplete");
    let mut conv = case.conn().with_mss(1000);
    let mut segs = conv.handshake();
    segs.extend(conv.data(
        Side::Client,
        &http::post_form(
            API,
            &[("token", TOKEN_A), ("content", "log"), ("format", "json")],
        ),
    ));
    let body = json_records(200);
    let resp = http::response(200, "application/json", &body, BodyEncoding::Plain);
    let mut answer = conv.data(Side::Server, &resp.bytes);
    answer.remove(answer.len() / 2);
    segs.extend(answer);
    segs.extend(conv.close());
    case.write(&conv, &segs, T0);

    let out = case.analyze();
    assert_eq!(out.calls.len(), 1, "{:?}", out.calls);
    let call = &out.calls[0];
    assert!(!call.complete);
    assert_eq!(call.content.as_deref(), Some("log"));
    assert_eq!(call.format.as_deref(), Some("json"));
    assert_eq!(call.status, Some(200));
    assert_eq!(call.token_fp.as_deref(), Some(out.fp(TOKEN_A).as_str()));
    // The loss is counted and said, stage by stage.
    let problems = out
        .stderr
        .lines()
        .find(|l| l.starts_with("input problems:"))
        .unwrap_or_else(|| panic!("no input problems line in {}", out.stderr));
    for counter in ["reassembly.gaps=1", "redcap.incomplete=1"] {
        assert!(
            problems.split(' ').any(|p| p == counter),
            "{counter} in {problems}"
        );
    }
}

#[test]
fn multipart_request_with_the_token_last_is_attributed_to_the_token() {
    let mut case = Case::new("multipart_request_with_the_token_last_is_attributed_to_the_token");
    let (ctype, body) = http::multipart(
        "------------------------4ebf00fbcf09",
        &[
            ("content", "record"),
            ("format", "json"),
            ("records[1]", "7"),
            ("token", TOKEN_B),
        ],
        None,
    );
    let request = http::post("/redcap/redcap_v15.7.6/API/index.php", &ctype, &body, &[]);
    let resp = http::response(
        200,
        "application/json",
        &json_records(1),
        BodyEncoding::Plain,
    );
    case.call(T0, &request, &resp.bytes);

    let out = case.analyze();
    assert_eq!(out.calls.len(), 1, "{:?}", out.calls);
    let call = &out.calls[0];
    assert_eq!(call.token_fp.as_deref(), Some(out.fp(TOKEN_B).as_str()));
    assert_eq!(call.content.as_deref(), Some("record"));
    assert_eq!(call.format.as_deref(), Some("json"));
    assert_eq!(call.records, 1);
    assert_eq!(call.request_bytes, body.len() as u64);
    assert_eq!(call.heavy, None);
}

#[test]
fn chunked_gzip_response_reports_decoded_and_wire_sizes() {
    let mut case = Case::new("chunked_gzip_response_reports_decoded_and_wire_sizes");
    let body = json_records(3000);
    let resp = http::response(
        200,
        "application/json",
        &body,
        BodyEncoding::GzipChunked {
            level: 6,
            chunk: 4096,
        },
    );
    case.call(
        T0,
        &http::post_form(
            API,
            &[
                ("token", TOKEN_A),
                ("content", "report"),
                ("format", "json"),
                ("report_id", "12"),
            ],
        ),
        &resp.bytes,
    );

    let out = case.analyze();
    assert_eq!(out.calls.len(), 1, "{:?}", out.calls);
    let call = &out.calls[0];
    assert_eq!(call.response_bytes, Some(resp.body_bytes));
    assert_eq!(call.response_wire_bytes, Some(resp.wire_bytes));
    assert!(resp.wire_bytes < resp.body_bytes);
    assert_eq!(call.report_id.as_deref(), Some("12"));
    assert_eq!(call.heavy.as_deref(), Some("report"));
    assert!(call.complete);
}

#[test]
fn expect_100_continue_is_one_call_with_the_final_status() {
    let mut case = Case::new("expect_100_continue_is_one_call_with_the_final_status");
    let body = http::urlencode(&[
        ("token", TOKEN_A),
        ("content", "record"),
        ("format", "json"),
        ("records[0]", "2"),
    ]);
    let mut conv = case.conn();
    let mut segs = conv.handshake();
    segs.extend(conv.data(
        Side::Client,
        &http::post_head_expecting_continue(API, "application/x-www-form-urlencoded", body.len()),
    ));
    segs.extend(conv.data(Side::Server, CONTINUE_100));
    segs.extend(conv.data(Side::Client, body.as_bytes()));
    let records = json_records(1);
    segs.extend(conv.data(
        Side::Server,
        &http::response(200, "application/json", &records, BodyEncoding::Plain).bytes,
    ));
    segs.extend(conv.close());
    case.write(&conv, &segs, T0);

    let out = case.analyze();
    assert_eq!(out.calls.len(), 1, "{:?}", out.calls);
    let call = &out.calls[0];
    assert_eq!(call.status, Some(200));
    assert_eq!(call.request_bytes, body.len() as u64);
    assert_eq!(call.response_bytes, Some(records.len() as u64));
    assert!(call.complete);
}

#[test]
fn web_pages_and_non_post_requests_are_not_api_calls() {
    let mut case = Case::new("web_pages_and_non_post_requests_are_not_api_calls");
    let page = http::response(
        200,
        "text/html",
        b"<html>REDCap</html>",
        BodyEncoding::Plain,
    )
    .bytes;
    case.call(T0, &http::get("/"), &page);
    case.call(T0 + 1.0, &http::get("/redcap/"), &page);
    // A login form that happens to carry a token-looking field.
    case.call(
        T0 + 2.0,
        &http::post_form(
            "/redcap/index.php",
            &[("username", "alice"), ("token", TOKEN_A)],
        ),
        &page,
    );
    let not_implemented = http::response(
        501,
        "text/html",
        b"The requested method is not implemented.",
        BodyEncoding::Plain,
    );
    case.call(T0 + 3.0, &http::get(API), &not_implemented.bytes);
    case.call(T0 + 4.0, &version_request(TOKEN_B), &version_response());

    let out = case.analyze();
    assert_eq!(out.calls.len(), 1, "{:?}", out.calls);
    assert_eq!(
        out.calls[0].token_fp.as_deref(),
        Some(out.fp(TOKEN_B).as_str())
    );
    assert_eq!(out.calls[0].method, "POST");
}

#[test]
fn three_calls_a_minute_is_compliant_and_the_fourth_and_fifth_are_violations() {
    let mut case =
        Case::new("three_calls_a_minute_is_compliant_and_the_fourth_and_fifth_are_violations");
    // Compliant: at most 3 in any 60 s window (0, 20, 40, then 61 when 0 has left the window).
    for t in [0.0, 20.0, 40.0, 61.0] {
        case.call(T0 + t, &version_request(TOKEN_A), &version_response());
    }
    // Abuser: 5 calls 10 s apart.
    for t in [1.0, 11.0, 21.0, 31.0, 41.0] {
        case.call(T0 + t, &version_request(TOKEN_B), &version_response());
    }

    let out = case.analyze();
    assert_eq!(out.calls.len(), 9);
    let fp_b = out.fp(TOKEN_B);
    let b_calls: Vec<&CallRecord> = out
        .calls
        .iter()
        .filter(|c| c.token_fp.as_deref() == Some(fp_b.as_str()))
        .collect();
    assert_eq!(b_calls.len(), 5);
    let got: Vec<(&str, &str, u64, u64, u64)> = out
        .violations
        .iter()
        .map(|v| {
            (
                v.token_fp.as_deref().unwrap_or_default(),
                v.rule.as_str(),
                v.limit,
                v.window_s,
                v.count,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (fp_b.as_str(), "api_calls", 3, 60, 4),
            (fp_b.as_str(), "api_calls", 3, 60, 5)
        ]
    );
    assert_eq!(out.violations[0].ts, b_calls[3].ts_start);
    assert_eq!(out.violations[1].ts, b_calls[4].ts_start);
    assert!((out.violations[0].ts - (T0 + 31.0)).abs() < 0.5);
}

#[test]
fn two_unfiltered_record_exports_within_five_minutes_are_one_heavy_violation() {
    let mut case =
        Case::new("two_unfiltered_record_exports_within_five_minutes_are_one_heavy_violation");
    let body = json_records(500);
    let resp = http::response(
        200,
        "application/json",
        &body,
        BodyEncoding::GzipChunked {
            level: 1,
            chunk: 8192,
        },
    );
    case.call(T0, &unfiltered_export(TOKEN_A), &resp.bytes);
    case.call(T0 + 200.0, &unfiltered_export(TOKEN_A), &resp.bytes);
    // A filtered export by the same token is not heavy.
    case.call(
        T0 + 250.0,
        &http::post_form(
            API,
            &[
                ("token", TOKEN_A),
                ("content", "record"),
                ("format", "json"),
                ("records[0]", "1"),
            ],
        ),
        &resp.bytes,
    );

    let out = case.analyze();
    assert_eq!(out.calls.len(), 3);
    let heavy: Vec<_> = out.calls.iter().map(|c| c.heavy.as_deref()).collect();
    assert_eq!(
        heavy,
        vec![
            Some("unfiltered_record_export"),
            Some("unfiltered_record_export"),
            None
        ]
    );
    assert_eq!(out.violations.len(), 1, "{:?}", out.violations);
    let v = &out.violations[0];
    assert_eq!(
        (v.rule.as_str(), v.limit, v.window_s, v.count),
        ("heavy_calls", 1, 300, 2)
    );
    assert_eq!(v.token_fp.as_deref(), Some(out.fp(TOKEN_A).as_str()));
    assert_eq!(v.ts, out.calls[1].ts_start);
}

#[test]
fn ipv6_over_vlan_is_decoded() {
    let mut case = Case::new("ipv6_over_vlan_is_decoded");
    let client: SocketAddr = "[fd00:1::5]:51000".parse().unwrap();
    let server: SocketAddr = "[fd00:1::10]:80".parse().unwrap();
    let mut conv = Conversation::new(client, server).with_vlan(120);
    let forbidden = http::response(
        403,
        "application/json",
        FORBIDDEN_JSON.as_bytes(),
        BodyEncoding::Plain,
    );
    case.out
        .write_exchange(
            &mut conv,
            T0,
            &http::post_form(
                API,
                &[
                    ("token", TOKEN_B),
                    ("content", "metadata"),
                    ("format", "json"),
                ],
            ),
            &forbidden.bytes,
        )
        .unwrap();

    let out = case.analyze();
    assert_eq!(out.calls.len(), 1, "{:?}", out.calls);
    let call = &out.calls[0];
    assert!(call.client.contains("fd00:1::5"), "{}", call.client);
    assert_eq!(call.client_port(), Some(51000));
    assert_eq!(call.status, Some(403));
    assert_eq!(call.content.as_deref(), Some("metadata"));
    assert_eq!(call.token_fp.as_deref(), Some(out.fp(TOKEN_B).as_str()));
}

#[test]
fn damaged_captures_never_crash_the_analyzer() {
    let mut case = Case::new("damaged_captures_never_crash_the_analyzer");
    let mut conv = case.conn().with_mss(536);
    let segs = three_calls(&mut conv);
    case.write(&conv, &segs, T0);
    let key = case.dir.path().join("site.key");
    let pcap = case.pcap.clone();
    case.out.finish().unwrap();
    let pristine = std::fs::read(&pcap).unwrap();
    let damaged = case.dir.path().join("damaged.pcap");
    // A fixed xorshift sequence: the same damage on every run, so a failure reproduces.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..40 {
        let mut bytes = pristine.clone();
        for _ in 0..1 + next() % 24 {
            // Past the 24-byte file header, so that most damage lands in packets.
            let at = 24 + (next() as usize) % (bytes.len() - 24);
            bytes[at] = next() as u8;
        }
        std::fs::write(&damaged, &bytes).unwrap();
        let out = std::process::Command::new(monitor_tests::daemon::monitor_bin().unwrap())
            .args(["analyze", "--key"])
            .arg(&key)
            .arg(&damaged)
            .args(["--calls", "/dev/null"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(0 | 1)) && !stderr.contains("panicked"),
            "round {round}: {:?}\n{stderr}",
            out.status
        );
    }
}

/// 70 s of back-to-back calls by one token that each wait 3 s for their answer, then 90 s of
/// fast ones: a server degraded by that token's load, which then recovers.
fn slow_then_fast(case: &mut Case) {
    let mut t = T0;
    for (ttfb, until) in [(3.0, T0 + 70.0), (0.05, T0 + 160.0)] {
        while t < until {
            let mut conv = case.conn();
            let mut ask = conv.handshake();
            ask.extend(conv.data(Side::Client, &version_request(TOKEN_A)));
            let mut answer = conv.data(Side::Server, &version_response());
            answer.extend(conv.close());
            case.write(&conv, &ask, t);
            t = case.write(&conv, &answer, t + ttfb) + 0.5;
        }
    }
}

#[test]
fn an_abuser_is_warned_then_suspended_once_the_server_is_degraded() {
    let mut case = Case::new("an_abuser_is_warned_then_suspended_once_the_server_is_degraded");
    slow_then_fast(&mut case);
    let key = case.dir.path().join("site.key");
    let pcap = case.pcap.clone();
    case.out.finish().unwrap();
    let out = std::process::Command::new(monitor_tests::daemon::monitor_bin().unwrap())
        .args(["analyze", "--decisions", "-", "--key"])
        .arg(&key)
        .arg(&pcap)
        .output()
        .unwrap();
    assert!(out.status.success());
    let decisions: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<(String, bool)> = decisions
        .iter()
        .map(|d| {
            let what = format!(
                "{} {}",
                d["action"].as_str().unwrap(),
                d["reason"].as_str().unwrap_or("")
            );
            (
                what.trim().to_string(),
                d["evidence"]["server_degraded"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps[0],
        ("warn first_offence".to_string(), false),
        "{steps:?}"
    );
    let suspensions: Vec<_> = steps.iter().filter(|(w, _)| w == "suspend").collect();
    assert_eq!(suspensions, [&("suspend".to_string(), true)], "{steps:?}");
    let before: Vec<_> = steps
        .iter()
        .take_while(|(w, _)| w != "suspend")
        .skip(1)
        .collect();
    assert!(
        !before.is_empty()
            && before
                .iter()
                .all(|(w, degraded)| w == "warn server_healthy" && !degraded),
        "{steps:?}"
    );
    assert_eq!(
        decisions.last().unwrap()["action"],
        "suspend",
        "nothing more is decided while suspended"
    );
    assert_eq!(decisions.last().unwrap()["evidence"]["load_share"], 1.0);
}

#[test]
fn a_slow_stretch_is_reported_as_a_degraded_period() {
    let mut case = Case::new("a_slow_stretch_is_reported_as_a_degraded_period");
    slow_then_fast(&mut case);
    let key = case.dir.path().join("site.key");
    let pcap = case.pcap.clone();
    case.out.finish().unwrap();
    let out = std::process::Command::new(monitor_tests::daemon::monitor_bin().unwrap())
        .args(["analyze", "--key"])
        .arg(&key)
        .arg(&pcap)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let degraded: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("server degraded"))
        .collect();
    assert_eq!(degraded.len(), 1, "{table}");
    assert!(degraded[0].contains("slow_absolute"), "{table}");
    assert!(
        !degraded[0].contains("end of the capture"),
        "recovered: {table}"
    );
}

// ---- Recognition: every spelling the web server runs as an API call is counted (issue 11). ----

/// One keep-alive connection at `t` carrying `requests` back to back in client segments of
/// `segment` bytes, each answered with the version response.
fn keep_alive(case: &mut Case, t: f64, requests: &[Vec<u8>], segment: usize) {
    let mut conv = case.conn();
    let mut segs = conv.handshake();
    segs.extend(conv.data_in(Side::Client, &requests.concat(), segment));
    let answers: Vec<u8> = requests.iter().flat_map(|_| version_response()).collect();
    segs.extend(conv.data(Side::Server, &answers));
    segs.extend(conv.close());
    case.write(&conv, &segs, t);
}

/// A urlencoded POST to `target` (as sent, unencoded) whose `content` is `label`.
fn labelled(target: &str, token: &str, label: &str) -> Vec<u8> {
    http::post_form(target, &[("token", token), ("content", label)])
}

fn contents(out: &Outcome) -> Vec<&str> {
    out.calls
        .iter()
        .map(|c| c.content.as_deref().unwrap_or("-"))
        .collect()
}

fn all_complete_and_ok(out: &Outcome) -> bool {
    out.calls
        .iter()
        .all(|c| c.complete && c.status == Some(200))
}

fn all_by(out: &Outcome, token: &str) -> bool {
    let fp = out.fp(token);
    out.calls
        .iter()
        .all(|c| c.token_fp.as_deref() == Some(fp.as_str()))
}

#[test]
fn api_paths_spelled_as_the_server_resolves_them_are_calls() {
    let mut case = Case::new("api_paths_spelled_as_the_server_resolves_them_are_calls");
    let api = [
        "/redcap/ap%69/",
        "//redcap//api//",
        "/redcap/x/../api/",
        "/redcap/./api/index.php",
        "http://redcap.example.org/redcap/api/",
        "/redcap/api/index.php/anything",
        "/redcap/api/?content=ignored",
        "/redcap/api/#fragment",
    ];
    let not_api = [
        "/redcap/API/",
        "/redcap/api",
        "/redcap/index.php",
        "/redcap/api/../index.php",
        "/redcap/api/%3F",
    ];
    let mut requests: Vec<Vec<u8>> = Vec::new();
    for (i, target) in api.iter().enumerate() {
        requests.push(labelled(target, TOKEN_A, &format!("p{i}")));
    }
    for target in not_api {
        requests.push(labelled(target, TOKEN_A, "not-api"));
    }
    keep_alive(&mut case, T0, &requests, 1448);
    let out = case.analyze();
    assert_eq!(
        contents(&out),
        ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"]
    );
    assert!(all_by(&out, TOKEN_A));
    assert!(all_complete_and_ok(&out), "{:?}", out.calls);
}

#[test]
fn request_heads_as_lenient_as_apache_and_nginx_are_calls_at_any_segmentation() {
    let name = "request_heads_as_lenient_as_apache_and_nginx_are_calls_at_any_segmentation";
    let form = "application/x-www-form-urlencoded";
    let body = |label: &str| http::urlencode(&[("token", TOKEN_A), ("content", label)]);
    let with_head = |head: &str, label: &str| {
        let body = body(label);
        let head = head.replace("{len}", &body.len().to_string());
        [head.as_bytes(), body.as_bytes()].concat()
    };
    let mut chunked = b"POST /redcap/api/ HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in body("l4").as_bytes().chunks(5) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    // What Apache serves: 30 header lines of 8,000 bytes (each under LimitRequestFieldSize).
    let padding: String = (0..30)
        .map(|i| format!("X-Pad-{i}: {}\r\n", "p".repeat(8000)))
        .collect();
    let requests = vec![
        // Empty lines before the request line.
        [&b"\r\n\r\n"[..], &labelled(API, TOKEN_A, "l0")].concat(),
        // Several spaces between the request line's parts.
        with_head(
            &format!(
                "POST   /redcap/api/   HTTP/1.1\r\nContent-Type: {form}\r\nContent-Length: {{len}}\r\n\r\n"
            ),
            "l1",
        ),
        // A folded Content-Type, and a blank before a colon.
        with_head(
            "POST /redcap/api/ HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded;\r\n charset=UTF-8\r\nContent-Length : {len}\r\n\r\n",
            "l2",
        ),
        // Leading zeros, and a header line that is not valid at all.
        with_head(
            &format!(
                "POST /redcap/api/ HTTP/1.1\r\nthis is not a header\r\nContent-Type: {form}\r\nContent-Length: 0000{{len}}\r\n\r\n"
            ),
            "l3",
        ),
        chunked,
        // A head padded far past http.max_head_bytes.
        with_head(
            &format!(
                "POST /redcap/api/ HTTP/1.1\r\n{padding}Content-Type: {form}\r\nContent-Length: {{len}}\r\n\r\n"
            ),
            "l5",
        ),
    ];
    let mut case = Case::new(name);
    keep_alive(&mut case, T0, &requests, 7);
    let out = case.analyze();
    assert_eq!(
        contents(&out),
        ["l0", "l1", "l2", "l3", "l4", "l5"],
        "{}",
        out.stderr
    );
    assert!(all_by(&out, TOKEN_A));
    assert!(out.calls.iter().all(|c| c.complete), "{:?}", out.calls);
    // Read, and flagged: l1, l2 and l3 needed leniency, l5 was skimmed.
    for flag in ["http.lenient_request_heads=3", "http.heads_skimmed=1"] {
        assert!(out.stderr.contains(flag), "{flag}: {}", out.stderr);
    }
}

#[test]
fn api_requests_pipelined_behind_other_requests_are_found_and_the_others_skipped() {
    let mut case =
        Case::new("api_requests_pipelined_behind_other_requests_are_found_and_the_others_skipped");
    // A non-API POST whose body reads like an API request: body text, not a request.
    let decoy = labelled(API, TOKEN_B, "decoy");
    let mut conv = case.conn();
    let mut segs = conv.handshake();
    let first_segment = [
        http::get("/redcap/index.php"),
        http::post(
            "/redcap/Design/online_designer.php",
            "text/plain",
            &decoy,
            &[],
        ),
        labelled(API, TOKEN_A, "first"),
    ]
    .concat();
    segs.extend(conv.data(Side::Client, &first_segment));
    let second_segment = [
        http::post_form(
            "/redcap/index.php",
            &[("username", "alice"), ("token", TOKEN_B)],
        ),
        labelled(API, TOKEN_A, "second"),
    ]
    .concat();
    segs.extend(conv.data(Side::Client, &second_segment));
    let answers: Vec<u8> = (0..5).flat_map(|_| version_response()).collect();
    segs.extend(conv.data(Side::Server, &answers));
    segs.extend(conv.close());
    case.write(&conv, &segs, T0);
    let out = case.analyze();
    assert_eq!(contents(&out), ["first", "second"]);
    assert!(all_by(&out, TOKEN_A));
    assert!(all_complete_and_ok(&out), "{:?}", out.calls);
}

#[test]
fn form_fields_are_read_as_php_reads_them() {
    let mut case = Case::new("form_fields_are_read_as_php_reads_them");
    let form = "application/x-www-form-urlencoded";
    let raw = |content_type: &str, body: &str| http::post(API, content_type, body.as_bytes(), &[]);
    let boundary = "xYzZY";
    let mp = format!("multipart/form-data; boundary={boundary}");
    let part = |head: &str, value: &str| format!("--{boundary}\r\n{head}\r\n\r\n{value}\r\n");
    let end = format!("--{boundary}--\r\n");
    let requests = vec![
        // A leading space is dropped from a name, and the last value wins.
        raw(form, &format!("token={TOKEN_B}&+token={TOKEN_A}&content=f0")),
        // `to.ken` becomes `to_ken`, not `token`.
        raw(form, &format!("token={TOKEN_A}&to.ken={TOKEN_B}&content=f1")),
        // A name is cut at a NUL.
        raw(form, &format!("token={TOKEN_B}&token%00x={TOKEN_A}&content=f2")),
        // Media type in any case, with parameters.
        raw(
            "Application/X-WWW-Form-URLEncoded; charset=utf-8",
            &format!("content=f3&token={TOKEN_A}"),
        ),
        // Multipart decoys PHP never puts in $_POST['token']: a padded delimiter line, an
        // upload; then the real one without `form-data`.
        raw(
            &mp,
            &[
                part("Content-Disposition: form-data; name=\"content\"", "f4"),
                format!("--{boundary} \r\nContent-Disposition: form-data; name=token\r\n\r\n{TOKEN_B}\r\n"),
                part("Content-Disposition: form-data; name=token; filename=\"t.txt\"", TOKEN_B),
                part("Content-Disposition: name=token", TOKEN_A),
                end.clone(),
            ]
            .concat(),
        ),
        // A part after the closing delimiter is still read by PHP.
        raw(
            &mp,
            &[
                part("Content-Disposition: form-data; name=token", TOKEN_B),
                end.clone(),
                part("Content-Disposition: form-data; name=content", "f5"),
                part("Content-Disposition: form-data; name=token", TOKEN_A),
                end.clone(),
            ]
            .concat(),
        ),
    ];
    keep_alive(&mut case, T0, &requests, 1448);
    // A JSON body fills no $_POST: REDCap sees no token.
    let json = http::post(
        API,
        "application/json",
        format!(r#"{{"token":"{TOKEN_A}"}}"#).as_bytes(),
        &[],
    );
    case.call(T0 + 5.0, &json, &version_response());
    let out = case.analyze();
    assert_eq!(
        contents(&out),
        ["f0", "f1", "f2", "f3", "f4", "f5", "-"],
        "{:?}",
        out.calls
    );
    let fp = out.fp(TOKEN_A);
    let (php_read, json) = out.calls.split_at(6);
    assert!(
        php_read
            .iter()
            .all(|c| c.token_fp.as_deref() == Some(fp.as_str())),
        "{php_read:?}"
    );
    assert_eq!(json[0].token_problem.as_deref(), Some("missing"));
    assert_eq!(
        json[0].body_problem.as_deref(),
        Some("unsupported_content_type")
    );
}

#[test]
fn api_requests_whose_head_cannot_be_read_are_counted_as_unreadable() {
    let mut case = Case::new("api_requests_whose_head_cannot_be_read_are_counted_as_unreadable");
    let bad_length = |target: &str| {
        format!(
            "POST {target} HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: 12x\r\n\r\ntoken={TOKEN_A}"
        )
        .into_bytes()
    };
    let bad_request = http::response(400, "text/html", b"Bad Request", BodyEncoding::Plain).bytes;
    // Answered by the application (a server whose limits let the head through): a call.
    let by_php = http::response(
        400,
        "application/json",
        br#"{"error":"The value of the parameter \"content\" is not valid"}"#,
        BodyEncoding::Plain,
    )
    .bytes;
    case.call(T0, &bad_length(API), &by_php);
    // Refused with the web server's own error page: it never ran, so it is no call.
    case.call(T0 + 0.5, &bad_length(API), &bad_request);
    // The same on a page that is not the API is no call.
    case.call(T0 + 1.0, &bad_length("/redcap/index.php"), &bad_request);
    case.call(T0 + 2.0, &version_request(TOKEN_A), &version_response());
    let out = case.analyze();
    assert_eq!(out.calls.len(), 2, "{:?}", out.calls);
    let unreadable = &out.calls[0];
    assert_eq!(unreadable.token_problem.as_deref(), Some("unreadable"));
    assert_eq!(unreadable.token_fp, None);
    assert_eq!(unreadable.status, Some(400));
    assert!(!unreadable.complete);
    assert_eq!(
        out.calls[1].token_fp.as_deref(),
        Some(out.fp(TOKEN_A).as_str())
    );
    assert!(
        out.stderr.contains("redcap.token_unreadable=1"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("http.bad_content_length=3"),
        "{}",
        out.stderr
    );
}

/// An HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A HEADERS frame (END_HEADERS) whose fields are HPACK literals without indexing.
fn h2_headers(stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    h2_frame(0x1, 0x4 | u8::from(end_stream), stream, &block)
}

#[test]
fn an_api_call_after_an_upgrade_to_h2c_is_counted() {
    let mut case = Case::new("an_api_call_after_an_upgrade_to_h2c_is_counted");
    let mut conv = case.conn();
    let mut segs = conv.handshake();
    // An API call first: the connection is an API client's, never handed back to the kernel,
    // so the switch must be followed on it.
    segs.extend(conv.data(Side::Client, &version_request(TOKEN_A)));
    segs.extend(conv.data(Side::Server, &version_response()));
    segs.extend(conv.data(
        Side::Client,
        b"GET /redcap/ HTTP/1.1\r\nHost: redcap.example.org\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    ));
    let mut switched =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n".to_vec();
    switched.extend(h2_frame(0x4, 0, 0, &[]));
    segs.extend(conv.data(Side::Server, &switched));
    let body = http::urlencode(&[("token", TOKEN_A), ("content", "version")]);
    let mut client = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    client.extend(h2_frame(0x4, 0, 0, &[]));
    client.extend(h2_headers(
        3,
        &[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "redcap.example.org"),
            (":path", API),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        false,
    ));
    client.extend(h2_frame(0x0, 0x1, 3, body.as_bytes()));
    segs.extend(conv.data(Side::Client, &client));
    let mut server = h2_frame(0x4, 0x1, 0, &[]);
    server.extend(h2_headers(1, &[(":status", "200")], true));
    server.extend(h2_headers(3, &[(":status", "200")], false));
    server.extend(h2_frame(0x0, 0x1, 3, b"15.7.6"));
    segs.extend(conv.data(Side::Server, &server));
    segs.extend(conv.close());
    case.write(&conv, &segs, T0);
    let out = case.analyze();
    assert_eq!(out.calls.len(), 2, "{:?} {}", out.calls, out.stderr);
    assert_eq!(out.calls[0].http_version, "1.1");
    let call = &out.calls[1];
    assert_eq!(call.http_version, "2");
    assert_eq!(call.token_fp.as_deref(), Some(out.fp(TOKEN_A).as_str()));
    assert_eq!(
        (call.content.as_deref(), call.status),
        (Some("version"), Some(200))
    );
    assert!(call.complete);
}
