//! Proves the harness itself, without the daemon: the simulator answers PyCap and curl the way
//! the e2e tests expect, tcpdump captures it completely, and tshark reads both real and
//! synthesised captures with the expected number of HTTP requests.

use std::net::SocketAddr;

use monitor_tests::capture::tshark_fields;
use monitor_tests::clients::{PycapSet, run_curl_set, run_pycap};
use monitor_tests::session;
use monitor_tests::sim::SimOptions;
use monitor_tests::synth::http::{self, BodyEncoding, FORBIDDEN_JSON};
use monitor_tests::synth::{Conversation, PcapOut, Side, mangle};

const TOKEN: &str = "A1B2C3D4E5F60718293A4B5C6D7E8F90";

#[test]
fn simulator_answers_pycap_and_curl_and_tcpdump_captures_every_request() {
    if !monitor_tests::require_root(
        "simulator_answers_pycap_and_curl_and_tcpdump_captures_every_request",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("live.pcap");
    let opts = SimOptions {
        tokens: vec![TOKEN.to_string()],
        ..SimOptions::default()
    };
    let s = session::record(dir.path(), opts, &pcap, |sim| {
        let manifest = run_pycap(&sim.url("/redcap/api/"), TOKEN, PycapSet::Full)?;
        run_curl_set(&sim.url(""), TOKEN, dir.path())?;
        Ok(manifest)
    })
    .unwrap();

    // PyCap: every call worked but the wrong-token one, and its wire view matches the log.
    let failed: Vec<&str> = s
        .clients
        .calls
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.call.as_str())
        .collect();
    assert_eq!(failed, vec!["export_metadata(wrong token)"]);
    let from_pycap: Vec<_> = s
        .sim_log
        .iter()
        .filter(|r| {
            r.user_agent
                .as_deref()
                .is_some_and(|u| u.starts_with("python-requests"))
        })
        .map(|r| {
            (
                r.content.clone(),
                r.action.clone(),
                r.format.clone(),
                r.status,
                r.request_body_bytes,
                r.body_bytes,
            )
        })
        .collect();
    let manifest: Vec<_> = s
        .clients
        .requests
        .iter()
        .map(|r| {
            (
                r.content.clone(),
                r.action.clone(),
                r.format.clone(),
                r.status,
                r.request_bytes,
                r.response_bytes,
            )
        })
        .collect();
    assert_eq!(from_pycap, manifest);
    assert!(manifest.len() >= 13);

    // curl: the hard cases really happened.
    let curl: Vec<_> = s
        .sim_log
        .iter()
        .filter(|r| {
            r.user_agent
                .as_deref()
                .is_some_and(|u| u.starts_with("curl"))
        })
        .collect();
    assert!(
        curl.iter()
            .any(|r| r.expect_continue && r.request_body_bytes > 64 * 1024 && r.status == 200)
    );
    assert!(
        curl.iter()
            .any(|r| r.path.contains("redcap_v15.7.6") && r.status == 200 && !r.gzip)
    );
    assert!(
        curl.iter()
            .any(|r| r.token.as_deref() == Some(&TOKEN.to_lowercase())
                && r.status == 200
                && r.gzip
                && r.chunked)
    );
    assert!(curl.iter().any(|r| r.api && r.status == 403));
    let pages: Vec<&str> = curl
        .iter()
        .filter(|r| !r.api)
        .map(|r| r.path.as_str())
        .collect();
    assert_eq!(pages, vec!["/", "/redcap/index.php", "/redcap/"]);
    // Keep-alive: the first curl invocation made six requests on one connection.
    let first_port = curl[0].client_port;
    assert_eq!(
        curl.iter().filter(|r| r.client_port == first_port).count(),
        6
    );

    // tshark sees every request the simulator answered, in the capture tcpdump wrote.
    let methods = tshark_fields(
        &pcap,
        Some(s.port),
        "http.request",
        &["http.request.method", "http.request.uri"],
    )
    .unwrap();
    assert_eq!(
        methods.len(),
        s.sim_log.len(),
        "tshark: {methods:?}\ntcpdump: {}",
        s.tcpdump_report
    );
    let api_posts = methods
        .iter()
        .filter(|m| m.starts_with("POST") && (m.contains("/api/") || m.contains("/API/")))
        .count();
    assert_eq!(api_posts, s.sim_log.iter().filter(|r| r.api).count());
    let answers = tshark_fields(
        &pcap,
        Some(s.port),
        "http.response",
        &["http.response.code"],
    )
    .unwrap();
    // The 100 Continue interim answer is a response of its own on the wire.
    assert_eq!(answers.len(), s.sim_log.len() + 1, "{answers:?}");
}

#[test]
fn synthesised_pcaps_open_in_tshark_with_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("synth.pcap");
    let mut out = PcapOut::create(&pcap).unwrap();
    let server: SocketAddr = "10.0.0.10:80".parse().unwrap();
    let records = vec![b'r'; 50_000];
    let gz = http::response(
        200,
        "application/json",
        &records,
        BodyEncoding::GzipChunked {
            level: 6,
            chunk: 3000,
        },
    );
    let forbidden = http::response(
        403,
        "application/json",
        FORBIDDEN_JSON.as_bytes(),
        BodyEncoding::Plain,
    );
    let (ctype, body) = http::multipart(
        "xyz123",
        &[("content", "record"), ("format", "json"), ("token", TOKEN)],
        None,
    );

    let mut keep_alive = Conversation::new("10.0.0.1:40001".parse().unwrap(), server);
    let mut segs = keep_alive.handshake();
    for _ in 0..3 {
        segs.extend(keep_alive.data(
            Side::Client,
            &http::post_form("/redcap/api/", &[("token", TOKEN), ("content", "record")]),
        ));
        segs.extend(keep_alive.data(Side::Server, &gz.bytes));
    }
    segs.extend(keep_alive.close());
    let mut t = out
        .write_all(&keep_alive, &segs, 1_767_600_000.0, 0.001)
        .unwrap();
    let mut multipart = Conversation::new("10.0.0.1:40002".parse().unwrap(), server);
    t = out
        .write_exchange(
            &mut multipart,
            t,
            &http::post("/api/", &ctype, &body, &[]),
            &forbidden.bytes,
        )
        .unwrap();
    let mut v6 = Conversation::new(
        "[fd00::1]:40003".parse().unwrap(),
        "[fd00::2]:80".parse().unwrap(),
    )
    .with_vlan(7);
    out.write_exchange(&mut v6, t, &http::get("/redcap/"), &forbidden.bytes)
        .unwrap();
    out.finish().unwrap();

    let requests = tshark_fields(&pcap, None, "http.request", &["http.request.method"]).unwrap();
    assert_eq!(requests, vec!["POST", "POST", "POST", "POST", "GET"]);
    let codes = tshark_fields(&pcap, None, "http.response", &["http.response.code"]).unwrap();
    assert_eq!(codes, vec!["200", "200", "200", "403", "403"]);
    let bad_checksums = tshark_fields(
        &pcap,
        None,
        "_ws.expert.severity >= warning",
        &["frame.number"],
    )
    .unwrap();
    assert!(
        bad_checksums.is_empty(),
        "tshark warnings in frames {bad_checksums:?}"
    );
}

#[test]
fn mangled_segments_reassemble_in_tshark_to_the_original_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server: SocketAddr = "10.0.0.10:80".parse().unwrap();
    let mut conv = Conversation::new("10.0.0.1:40001".parse().unwrap(), server).with_mss(700);
    let mut segs = conv.handshake();
    for n in [5_000, 40_000, 300] {
        segs.extend(conv.data(
            Side::Client,
            &http::post_form("/redcap/api/", &[("token", TOKEN), ("content", "record")]),
        ));
        // Incompressible enough that the gzip body still spans many segments.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let body: Vec<u8> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b'a' + (x % 26) as u8
            })
            .collect();
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
    let mangled = mangle(&conv, &segs);
    assert!(
        mangled.len() > segs.len() + 5,
        "{} -> {}",
        segs.len(),
        mangled.len()
    );

    let stream = |name: &str, segs: &[monitor_tests::synth::Segment]| {
        let pcap = dir.path().join(name);
        let mut out = PcapOut::create(&pcap).unwrap();
        out.write_all(&conv, segs, 1_767_600_000.0, 0.001).unwrap();
        out.finish().unwrap();
        let mut cmd = std::process::Command::new("tshark");
        cmd.args(["-o", "tcp.reassemble_out_of_order:TRUE", "-r"])
            .arg(&pcap);
        let follow = cmd.args(["-q", "-z", "follow,tcp,raw,0"]).output().unwrap();
        let text = String::from_utf8_lossy(&follow.stdout).into_owned();
        let hex: String = text
            .lines()
            .skip_while(|l| !l.starts_with("Node 1"))
            .skip(1)
            .take_while(|l| !l.starts_with("===="))
            .flat_map(|l| l.trim().chars())
            .collect();
        let codes = tshark_fields(&pcap, None, "http.response", &["http.response.code"]).unwrap();
        (hex, codes)
    };
    let (clean, clean_codes) = stream("clean.pcap", &segs);
    let (messy, messy_codes) = stream("messy.pcap", &mangled);
    assert!(
        clean.len() > 50_000,
        "tshark follow gave {} hex chars",
        clean.len()
    );
    assert_eq!(messy, clean);
    assert_eq!(clean_codes, vec!["200", "200", "200"]);
    assert_eq!(messy_codes, clean_codes);
}
