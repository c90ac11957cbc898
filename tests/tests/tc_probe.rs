//! The TC probe against a real kernel and real traffic: a veth pair between two network
//! namespaces, a small HTTP server in one and curl in the other, the probe attached to the
//! server's side. It proves that API connections arrive byte for byte (both directions, several
//! keep-alive requests, bodies larger than one MSS, split into chunks) and that other traffic
//! produces no events. Needs root; set REDCAP_MONITOR_SKIP_ROOT_TESTS=1 to skip without it.

mod probe_env;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use monitor_tests::daemon::daemon_command;
use monitor_tests::netns::NamespacePair;
use monitor_tests::require_root;
use probe_env::{
    CLIENT_IP, CLIENT_IP6, SERVER_IP, SERVER_IP6, SERVER_PORT, namespace_pair,
    spawn_attached_probe, start_server,
};
use redcap_monitor::edges::capture::kernel::{
    AttachMethod, DrainStats, KernelCounters, KernelProbe, ProbeConfig, ProbeError,
};

/// The test server's answer to API calls: large, so that responses span many segments.
const API_RESPONSE_BYTES: usize = 100_011;

/// A segment as the probe delivered it, owned so that it outlives the ring-buffer record.
#[derive(Debug)]
struct Captured {
    src_port: u16,
    dst_port: u16,
    src_ip: IpAddr,
    seq: u32,
    fin: bool,
    payload: Vec<u8>,
    stream_start: Option<u32>,
}

struct Capture {
    segments: Vec<Captured>,
    counters: KernelCounters,
    drain: DrainStats,
}

/// Attaches the probe in the server's namespace and drains it until `stop` is set.
fn start_probe(
    pair: &NamespacePair,
    config: ProbeConfig,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Capture> {
    spawn_attached_probe(pair, config, move |mut probe| {
        let mut segments = Vec::new();
        let mut keep = |s: &redcap_monitor::shared::model::TcpSegment<'_>| {
            segments.push(Captured {
                src_port: s.src.port,
                dst_port: s.dst.port,
                src_ip: s.src.ip,
                seq: s.seq,
                fin: s.flags.fin,
                payload: s.payload.to_vec(),
                stream_start: s.stream_start,
            })
        };
        while !stop.load(Ordering::Relaxed) {
            probe
                .wait_readable(Duration::from_millis(50))
                .expect("poll");
            probe.drain(&mut keep);
        }
        probe.drain(&mut keep);
        Capture {
            segments,
            counters: probe.counters().expect("counters"),
            drain: probe.drain_stats(),
        }
    })
}

fn curl(pair: &NamespacePair, requests: &[(&str, &str, Option<&[u8]>)], dir: &Path) {
    curl_at(pair, SERVER_IP, requests, dir)
}

fn curl_at(pair: &NamespacePair, host: &str, requests: &[(&str, &str, Option<&[u8]>)], dir: &Path) {
    let mut command = pair.exec(&pair.client_ns, "curl");
    for (i, (method, path, body)) in requests.iter().enumerate() {
        if i > 0 {
            command.arg("--next");
        }
        // No `Expect: 100-continue`: the test server does not answer it and curl would wait.
        command.args([
            "-sS",
            "-f",
            "-o",
            "/dev/null",
            "-H",
            "Expect:",
            "-X",
            method,
        ]);
        if let Some(body) = body {
            let file = dir.join(format!("body-{}-{i}", std::process::id()));
            std::fs::File::create(&file)
                .and_then(|mut f| f.write_all(body))
                .expect("writing a request body");
            command
                .arg("--data-binary")
                .arg(format!("@{}", file.display()));
            command.args(["-H", "Content-Type: application/x-www-form-urlencoded"]);
        }
        command.arg(format!("http://{host}:{SERVER_PORT}{path}"));
    }
    let status = command.status().expect("curl is needed for the test");
    assert!(status.success(), "curl failed: {status}");
}

/// A form body of `len` bytes that is different for every request.
fn form_body(len: usize, seed: u8) -> Vec<u8> {
    let mut body =
        b"token=0123456789ABCDEF0123456789ABCDEF&content=record&action=import&data=".to_vec();
    body.extend(
        (0..len.saturating_sub(body.len())).map(|i| b'a' + ((i as u8).wrapping_add(seed) % 26)),
    );
    body
}

struct Exchange {
    method: String,
    path: String,
    request: Vec<u8>,
    response: Vec<u8>,
}

fn read_server_log(path: &Path) -> BTreeMap<u16, Vec<Exchange>> {
    let mut by_port: BTreeMap<u16, Vec<Exchange>> = BTreeMap::new();
    let text = std::fs::read_to_string(path).expect("server log");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("server log line");
        let port = v["client_port"].as_u64().expect("port") as u16;
        by_port.entry(port).or_default().push(Exchange {
            method: v["method"].as_str().expect("method").to_owned(),
            path: v["path"].as_str().expect("path").to_owned(),
            request: hex::decode(v["request"].as_str().expect("request")).expect("hex"),
            response: hex::decode(v["response"].as_str().expect("response")).expect("hex"),
        });
    }
    by_port
}

/// One direction's bytes, placed by sequence number relative to the first segment seen, with
/// holes reported: a stand-in for the reassembler, which has not landed on this branch.
fn stream_bytes(segments: &[&Captured]) -> Result<Vec<u8>, String> {
    let Some(first) = segments.iter().find(|s| !s.payload.is_empty()) else {
        return Ok(Vec::new());
    };
    let base = first.seq;
    // Every event names where its direction's tracked bytes begin: here, the first byte.
    if let Some(other) = segments.iter().find(|s| s.stream_start != Some(base)) {
        return Err(format!(
            "an event says the stream starts at {:?}, the first byte is at {base}",
            other.stream_start
        ));
    }
    let mut bytes: Vec<Option<u8>> = Vec::new();
    for segment in segments.iter().filter(|s| !s.payload.is_empty()) {
        let start = segment.seq.wrapping_sub(base) as usize;
        if start > 1 << 24 {
            return Err(format!(
                "segment at seq {} precedes the first one",
                segment.seq
            ));
        }
        let end = start + segment.payload.len();
        if bytes.len() < end {
            bytes.resize(end, None);
        }
        for (slot, &b) in bytes[start..end].iter_mut().zip(&segment.payload) {
            *slot = Some(b);
        }
    }
    match bytes.iter().position(Option::is_none) {
        Some(hole) => Err(format!("hole at offset {hole} of {}", bytes.len())),
        None => Ok(bytes.into_iter().flatten().collect()),
    }
}

#[test]
fn api_connections_arrive_byte_for_byte_and_other_traffic_produces_no_events() {
    if !require_root(module_path!()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = namespace_pair();
    let log = dir.path().join("server.jsonl");
    let _server = start_server(&pair, &log, API_RESPONSE_BYTES);

    let stop = Arc::new(AtomicBool::new(false));
    // Small chunks so that every large segment is split into several events.
    let config = ProbeConfig {
        ports: vec![80, SERVER_PORT],
        chunk_bytes: 4096,
        ..ProbeConfig::default()
    };
    let probe = start_probe(&pair, config, Arc::clone(&stop));

    // 1. API calls: three POSTs larger than one MSS on one keep-alive connection, then a GET on
    //    the same (now tracked) connection; and a REDCap-versioned API path on another.
    let (b1, b2, b3) = (form_body(20000, 1), form_body(3000, 2), form_body(45000, 3));
    curl(
        &pair,
        &[
            ("POST", "/api/", Some(&b1)),
            ("POST", "/api/", Some(&b2)),
            ("POST", "/api/", Some(&b3)),
            ("GET", "/index.php", None),
        ],
        dir.path(),
    );
    let b4 = form_body(500, 4);
    curl(
        &pair,
        &[("POST", "/redcap/redcap_v14.0.0/API/", Some(&b4))],
        dir.path(),
    );
    // The same over IPv6, with a body that spans segments.
    let b6 = form_body(30000, 6);
    curl_at(
        &pair,
        &format!("[{SERVER_IP6}]"),
        &[("POST", "/api/index.php", Some(&b6))],
        dir.path(),
    );
    // 2. A POST to another path: the kernel copies every POST (the path is user space's call).
    let b5 = form_body(8000, 5);
    curl(&pair, &[("POST", "/index.php", Some(&b5))], dir.path());
    // 3. Non-API traffic on the same port: pages.
    curl(&pair, &[("GET", "/index.php", None)], dir.path());
    curl(
        &pair,
        &[("GET", "/api/", None), ("GET", "/", None)],
        dir.path(),
    );

    // Let the closes (FIN both ways) reach the probe, then stop it.
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let capture = probe.join().expect("probe thread");
    let exchanges = read_server_log(&log);

    let api_ports: Vec<u16> = exchanges
        .iter()
        .filter(|(_, ex)| ex[0].method == "POST")
        .map(|(&port, _)| port)
        .collect();
    assert_eq!(
        api_ports.len(),
        4,
        "four connections starting with a POST expected: {:?}",
        exchanges.keys()
    );
    assert_eq!(exchanges.len(), 6, "six connections expected");

    for (&port, exchanges) in &exchanges {
        let upstream: Vec<&Captured> = capture
            .segments
            .iter()
            .filter(|s| s.src_port == port)
            .collect();
        let downstream: Vec<&Captured> = capture
            .segments
            .iter()
            .filter(|s| s.dst_port == port)
            .collect();
        if !api_ports.contains(&port) {
            assert!(
                upstream.is_empty() && downstream.is_empty(),
                "connection without a POST from port {port} ({} {}) produced events",
                exchanges[0].method,
                exchanges[0].path
            );
            continue;
        }
        let sent: Vec<u8> = exchanges.iter().flat_map(|e| e.request.clone()).collect();
        let answered: Vec<u8> = exchanges.iter().flat_map(|e| e.response.clone()).collect();
        let requests =
            stream_bytes(&upstream).unwrap_or_else(|e| panic!("port {port} requests: {e}"));
        let responses =
            stream_bytes(&downstream).unwrap_or_else(|e| panic!("port {port} responses: {e}"));
        assert!(
            requests == sent,
            "port {port}: {} request bytes captured, {} sent",
            requests.len(),
            sent.len()
        );
        assert!(
            responses == answered,
            "port {port}: {} response bytes captured, {} sent",
            responses.len(),
            answered.len()
        );
        let client = upstream[0].src_ip.to_string();
        assert!(client == CLIENT_IP || client == CLIENT_IP6, "{client}");
        assert!(upstream.iter().all(|s| s.src_ip.to_string() == client));
        assert!(
            upstream.iter().any(|s| s.fin),
            "port {port}: the client's FIN was not seen"
        );
        assert!(
            downstream.iter().any(|s| s.fin),
            "port {port}: the server's FIN was not seen"
        );
        // Large requests and responses must have been split into several events.
        assert!(upstream.iter().all(|s| s.payload.len() <= 4096));
    }

    let counters = capture.counters;
    assert!(counters.filtered > 0, "{counters:?}");
    assert_eq!(counters.ring_full, 0, "{counters:?}");
    assert_eq!(counters.truncated_bytes, 0, "{counters:?}");
    assert_eq!(counters.flow_insert_failed, 0, "{counters:?}");
    assert_eq!(counters.flows_started, 4, "{counters:?}");
    assert_eq!(
        counters.flows_ended, 4,
        "every tracked connection closed: {counters:?}"
    );
    assert_eq!(
        counters.events_sent, capture.drain.records,
        "{counters:?} {:?}",
        capture.drain
    );
    assert_eq!(capture.drain.malformed, 0);
    assert!(counters.packets_seen > counters.filtered);
    eprintln!("{counters:?} {:?}", capture.drain);
}

#[test]
fn bytes_beyond_the_copy_limit_are_counted_and_leave_a_hole() {
    if !require_root(module_path!()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = namespace_pair();
    let log = dir.path().join("server.jsonl");
    let _server = start_server(&pair, &log, API_RESPONSE_BYTES);
    let stop = Arc::new(AtomicBool::new(false));
    // 64-byte chunks: at most 16 × 64 bytes of any segment are copied.
    let config = ProbeConfig {
        ports: vec![SERVER_PORT],
        chunk_bytes: 64,
        ..ProbeConfig::default()
    };
    let probe = start_probe(&pair, config, Arc::clone(&stop));
    let body = form_body(60000, 9);
    curl(&pair, &[("POST", "/api/", Some(&body))], dir.path());
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let capture = probe.join().expect("probe thread");

    let counters = capture.counters;
    assert!(counters.truncated_bytes > 0, "{counters:?}");
    assert_eq!(counters.ring_full, 0, "{counters:?}");
    let downstream: Vec<&Captured> = capture
        .segments
        .iter()
        .filter(|s| s.src_port == SERVER_PORT)
        .collect();
    assert!(
        stream_bytes(&downstream).is_err(),
        "a 100 kB response cannot arrive whole through 1 kB per segment"
    );
}

/// The kernel does not judge the path (the server normalises it: `%69`, `..`, `//`,
/// absolute-form), so every POST is copied, and HTTPS on a watched port is counted as such.
#[test]
fn every_post_is_tracked_whatever_its_path_and_tls_handshakes_are_counted() {
    if !require_root(module_path!()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = namespace_pair();
    let log = dir.path().join("server.jsonl");
    let _server = start_server(&pair, &log, 2000);
    let stop = Arc::new(AtomicBool::new(false));
    let config = ProbeConfig {
        ports: vec![SERVER_PORT],
        ..ProbeConfig::default()
    };
    let probe = start_probe(&pair, config, Arc::clone(&stop));
    let body = form_body(3000, 7);
    for path in ["/ap%69/", "/redcap/x/../api/", "/index.php/api"] {
        curl(&pair, &[("POST", path, Some(&body))], dir.path());
    }
    curl(&pair, &[("GET", "/api/", None)], dir.path());
    // A TLS client on the plaintext port: the server answers nonsense, the probe counts it.
    let _ = pair
        .exec(&pair.client_ns, "curl")
        .args(["-sk", "-o", "/dev/null", "--max-time", "2"])
        .arg(format!("https://{SERVER_IP}:{SERVER_PORT}/api/"))
        .status();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let capture = probe.join().expect("probe thread");

    let exchanges = read_server_log(&log);
    for (port, ex) in &exchanges {
        let events = capture
            .segments
            .iter()
            .filter(|s| s.src_port == *port || s.dst_port == *port)
            .count();
        if ex[0].method == "POST" {
            let upstream: Vec<&Captured> = capture
                .segments
                .iter()
                .filter(|s| s.src_port == *port)
                .collect();
            assert_eq!(
                stream_bytes(&upstream).expect("whole request"),
                ex[0].request,
                "{}",
                ex[0].path
            );
        } else {
            assert_eq!(events, 0, "{} {} was copied", ex[0].method, ex[0].path);
        }
    }
    assert_eq!(capture.counters.flows_started, 3, "{:?}", capture.counters);
    assert!(
        capture.counters.tls_handshakes >= 1,
        "{:?}",
        capture.counters
    );
}

#[test]
fn attaching_to_a_missing_interface_names_it() {
    if !require_root(module_path!()) {
        return;
    }
    let mut probe = KernelProbe::load(&ProbeConfig::default()).expect("load");
    let err = probe.attach("rcm-missing0").unwrap_err();
    assert!(
        matches!(err, ProbeError::UnknownInterface { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("rcm-missing0"), "{err}");
}

#[test]
fn an_empty_port_list_is_refused_before_loading() {
    let err = KernelProbe::load(&ProbeConfig {
        ports: vec![],
        ..ProbeConfig::default()
    })
    .err()
    .expect("refused");
    assert!(matches!(err, ProbeError::NoServerPorts), "{err:?}");
}

/// `tc <args> dev <server veth> <extra>` inside the server's namespace, its output as text.
fn tc_show(pair: &NamespacePair, what: &str, extra: &[&str]) -> String {
    let out = pair
        .exec(&pair.server_ns, "tc")
        .args([what, "show", "dev", &pair.server_if])
        .args(extra)
        .output()
        .expect("tc is needed for the test");
    assert!(out.status.success(), "tc {what} show failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// With netlink filters (not TCX): an API POST is captured byte for byte, a non-API POST is
/// filtered, and dropping the probe removes both filters and the clsact qdisc it added — or,
/// when `clsact_before`, leaves the qdisc that was already there.
fn netlink_attach_captures_and_cleans_up(clsact_before: bool) {
    if !require_root(module_path!()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = namespace_pair();
    if clsact_before {
        let status = pair
            .exec(&pair.server_ns, "tc")
            .args(["qdisc", "add", "dev", &pair.server_if, "clsact"])
            .status()
            .expect("tc");
        assert!(status.success());
    }
    let log = dir.path().join("server.jsonl");
    let _server = start_server(&pair, &log, API_RESPONSE_BYTES);
    let stop = Arc::new(AtomicBool::new(false));
    let config = ProbeConfig {
        ports: vec![SERVER_PORT],
        attach: AttachMethod::Netlink,
        ..ProbeConfig::default()
    };
    let probe = start_probe(&pair, config, Arc::clone(&stop));

    // Attached through clsact, not TCX: the filters are visible to tc.
    assert!(tc_show(&pair, "qdisc", &[]).contains("clsact"));
    for direction in ["ingress", "egress"] {
        let filters = tc_show(&pair, "filter", &[direction]);
        assert!(
            filters.contains("api_flow_classifier") && filters.contains("direct-action"),
            "{direction}: {filters}"
        );
    }

    let api = form_body(20000, 7);
    curl(&pair, &[("POST", "/api/", Some(&api))], dir.path());
    curl(&pair, &[("GET", "/index.php", None)], dir.path());
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    // The probe is dropped at the end of its thread.
    let capture = probe.join().expect("probe thread");

    let exchanges = read_server_log(&log);
    assert_eq!(exchanges.len(), 2, "two connections expected");
    for (&port, exchanges) in &exchanges {
        let upstream: Vec<&Captured> = capture
            .segments
            .iter()
            .filter(|s| s.src_port == port)
            .collect();
        let downstream: Vec<&Captured> = capture
            .segments
            .iter()
            .filter(|s| s.dst_port == port)
            .collect();
        if exchanges[0].path != "/api/" {
            assert!(
                upstream.is_empty() && downstream.is_empty(),
                "the page request produced events"
            );
            continue;
        }
        assert_eq!(
            stream_bytes(&upstream).expect("requests"),
            exchanges[0].request
        );
        assert_eq!(
            stream_bytes(&downstream).expect("responses"),
            exchanges[0].response
        );
    }
    let counters = capture.counters;
    assert_eq!(counters.flows_started, 1, "{counters:?}");
    assert!(counters.filtered > 0, "{counters:?}");
    assert_eq!(counters.events_sent, capture.drain.records, "{counters:?}");

    for direction in ["ingress", "egress"] {
        let filters = tc_show(&pair, "filter", &[direction]);
        assert!(
            !filters.contains("api_flow_classifier"),
            "{direction} after drop: {filters}"
        );
    }
    let qdiscs = tc_show(&pair, "qdisc", &[]);
    assert_eq!(qdiscs.contains("clsact"), clsact_before, "{qdiscs}");
}

#[test]
fn netlink_attach_captures_api_calls_and_removes_the_clsact_it_added() {
    netlink_attach_captures_and_cleans_up(false);
}

#[test]
fn netlink_attach_leaves_a_clsact_that_was_there_before() {
    netlink_attach_captures_and_cleans_up(true);
}

/// Netlink filters outlive a process: `redcap-monitor run` killed with SIGKILL leaves its
/// classifier attached. The next run removes the leftovers (so the classifier is attached once,
/// not twice, and no call is counted twice), and its clean exit leaves nothing behind.
#[test]
fn a_run_after_a_crash_removes_the_netlink_filters_the_crash_left() {
    if !require_root(module_path!()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = namespace_pair();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[site]\nkey_file = {:?}\n[store]\npath = {:?}\n[capture]\nmode = \"ebpf\"\n\
             interfaces = [{:?}]\nports = [{SERVER_PORT}]\ntc_attach = \"netlink\"\n",
            dir.path().join("site.key"),
            dir.path().join("state.redb"),
            pair.server_if
        ),
    )
    .expect("writing the config");
    let classifiers = |direction: &str| {
        tc_show(&pair, "filter", &[direction])
            .matches("api_flow_classifier")
            .count()
    };
    let attached_once = || ["ingress", "egress"].iter().all(|d| classifiers(d) == 1);
    let start = |log: &str| {
        let log = std::fs::File::create(dir.path().join(log)).expect("log file");
        daemon_command(Some(&pair.server_ns), &[])
            .expect("the redcap-monitor binary")
            .args(["run", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting redcap-monitor run")
    };
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        for _ in 0..200 {
            if done() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting until {what}");
    };

    let mut crashed = start("first.log");
    wait_for("the first run attached", &attached_once);
    crashed.kill().expect("SIGKILL");
    crashed.wait().expect("reaping the first run");
    assert!(attached_once(), "the crash should have left the filters");

    let mut second = start("second.log");
    let second_log = || std::fs::read_to_string(dir.path().join("second.log")).unwrap_or_default();
    wait_for("the second run attached", &|| {
        second_log().contains("capturing with the eBPF probe")
    });
    assert!(
        attached_once(),
        "ingress: {}",
        tc_show(&pair, "filter", &["ingress"])
    );
    assert_eq!(
        second_log()
            .matches("removed a classifier an earlier run left attached")
            .count(),
        2,
        "{}",
        second_log()
    );
    let status = std::process::Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(second.wait().expect("reaping the second run").success());
    for direction in ["ingress", "egress"] {
        assert_eq!(classifiers(direction), 0, "{direction} after a clean exit");
    }
}
