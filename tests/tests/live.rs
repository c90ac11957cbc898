//! The live daemon against real traffic: a veth between two network namespaces, the REDCap
//! simulator on the server side, PyCap and curl (keep-alive, parallel connections, non-API
//! pages) on the client side, and `redcap-monitor run` and tcpdump on the server's interface at
//! the same time. The oracle: live calls == `analyze` of the tcpdump capture, call for call,
//! and == the simulator's log. Needs root; REDCAP_MONITOR_SKIP_ROOT_TESTS=1 skips it.

use std::collections::BTreeMap;
use std::path::Path;

use monitor_tests::capture::Tcpdump;
use monitor_tests::clients::{PycapSet, curl_in, run_curl_set_in, run_pycap_in};
use monitor_tests::daemon::{CallRecord, LiveDaemon, analyze_full, jsonl};
use monitor_tests::netns::NamespacePair;
use monitor_tests::sim::{SimOptions, SimRecord, Simulator};
use serde_json::Value;

const TOKEN: &str = "5E1F0C2A9B7D4E3F8A6C1B0D2E4F6A8C";
const OTHER: &str = "00FF11EE22DD33CC44BB55AA66997788";
const PORT: u16 = 8080;
/// Kernel (TC hook) and tcpdump (packet socket) stamp the same packet at slightly different
/// moments; a few milliseconds covers it.
const CLOCK_SLACK_S: f64 = 0.005;

/// What one live run left behind.
struct LiveRun {
    live_calls: Vec<Value>,
    live_violations: Vec<Value>,
    offline_calls: Vec<Value>,
    offline_violations: Vec<Value>,
    sim_api: Vec<SimRecord>,
    stats: Value,
    /// What `redcap-monitor status` says of the final stats file.
    status: String,
    log: String,
}

fn record_live_run(mode: &str, subnet: u8) -> LiveRun {
    let dir = tempfile::tempdir().unwrap();
    let pair = NamespacePair::create(subnet).unwrap();
    let sim = Simulator::start(&SimOptions {
        tokens: vec![TOKEN.into(), OTHER.into()],
        project_sizes: vec![(TOKEN.into(), 60), (OTHER.into(), 5)],
        log: Some(dir.path().join("sim-log.jsonl")),
        netns: Some(pair.server_ns.clone()),
        bind: Some("0.0.0.0".into()),
        port: Some(PORT),
        ..SimOptions::default()
    })
    .unwrap();
    let key = dir.path().join("site.key");
    let calls = dir.path().join("live-calls.jsonl");
    let violations = dir.path().join("live-violations.jsonl");
    let stats = dir.path().join("stats.json");
    let config = dir.path().join("live.toml");
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"{mode}\"\ninterfaces = [\"{}\"]\nports = [{PORT}]\n\
             [output]\ncalls = \"{}\"\nviolations = \"{}\"\nstats = \"{}\"\n\
             stats_interval = \"1s\"\n[store]\npath = \"{}\"\n",
            pair.server_if,
            calls.display(),
            violations.display(),
            stats.display(),
            dir.path().join("state.redb").display()
        ),
    )
    .unwrap();
    let ns = Some(pair.server_ns.as_str());
    let client = Some(pair.client_ns.as_str());
    let mut daemon = LiveDaemon::start(ns, &config, &key).unwrap();
    let pcap = dir.path().join("same-packets.pcap");
    let mut tcpdump =
        Tcpdump::start_in(ns, &pair.server_if, &format!("tcp port {PORT}"), &pcap).unwrap();

    let base = format!("http://{}:{PORT}", pair.server_ip);
    run_pycap_in(
        client,
        &format!("{base}/redcap/api/"),
        TOKEN,
        PycapSet::Full,
    )
    .unwrap();
    run_pycap_in(client, &format!("{base}/api/"), OTHER, PycapSet::Light).unwrap();
    run_curl_set_in(client, &base, TOKEN, dir.path()).unwrap();
    // Parallel keep-alive connections: three API calls each, plus a page on one of them.
    let api = format!("{base}/api/");
    let tok = format!("token={OTHER}");
    std::thread::scope(|scope| {
        for n in 0..4 {
            let (api, tok, base) = (&api, &tok, &base);
            scope.spawn(move || {
                let record = format!("records[0]={n}");
                #[rustfmt::skip]
                curl_in(client, &[
                    "-sS", "-o", "/dev/null", api, "-d", tok, "-d", "content=version",
                    "--next", "-o", "/dev/null", api, "-d", tok, "-d", "content=record",
                    "-d", "format=json", "-d", &record,
                    "--next", "-o", "/dev/null", base,
                    "--next", "-o", "/dev/null", api, "-d", tok, "-d", "content=project",
                ])
                .unwrap();
            });
        }
    });

    let tcpdump_counts = tcpdump.stop().unwrap();
    eprintln!("tcpdump: {}", tcpdump_counts.trim());
    let (status, log) = daemon.stop().unwrap();
    assert!(
        status.success(),
        "redcap-monitor run exited {status}:\n{log}"
    );
    let offline = analyze_full(&pcap, &key, None).unwrap();
    eprintln!("{mode}: final counters {}", read_last_counters(&log));
    let sim_api = sim.log().unwrap().into_iter().filter(|r| r.api).collect();
    let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let status = std::process::Command::new(monitor_tests::daemon::monitor_bin().unwrap())
        .arg("status")
        .arg("--stats")
        .arg(&stats)
        .output()
        .unwrap();
    assert!(status.status.success(), "status: {status:?}");
    LiveRun {
        status: String::from_utf8_lossy(&status.stdout).into_owned(),
        live_calls: jsonl(&read(&calls)),
        live_violations: jsonl(&read(&violations)),
        offline_calls: jsonl(&offline.calls_text),
        offline_violations: jsonl(&offline.violations_text),
        sim_api,
        stats: serde_json::from_str(&read(&stats))
            .unwrap_or_else(|e| panic!("stats file: {e}\n{log}")),
        log,
    }
}

/// Calls per connection, in order: clocks may reorder calls of different connections that
/// started within a few microseconds, never the calls of one connection.
fn by_connection(calls: &[Value]) -> BTreeMap<String, Vec<&Value>> {
    let mut map: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for call in calls {
        map.entry(call["client"].as_str().unwrap().to_owned())
            .or_default()
            .push(call);
    }
    map
}

/// Equal except the timestamp fields, which must agree within the clock slack.
fn assert_same_record(live: &Value, offline: &Value, time_fields: &[&str], what: &str) {
    let strip = |v: &Value| {
        let mut v = v.clone();
        for field in time_fields {
            v.as_object_mut().unwrap().remove(*field);
        }
        v
    };
    assert_eq!(strip(live), strip(offline), "{what}");
    for field in time_fields {
        match (live[field].as_f64(), offline[field].as_f64()) {
            (Some(a), Some(b)) => assert!(
                (a - b).abs() <= CLOCK_SLACK_S,
                "{what}: {field} live {a} offline {b}"
            ),
            (a, b) => assert_eq!(a, b, "{what}: {field}"),
        }
    }
}

fn assert_live_equals_offline(run: &LiveRun) {
    let live = by_connection(&run.live_calls);
    let offline = by_connection(&run.offline_calls);
    let shape = |m: &BTreeMap<String, Vec<&Value>>| {
        m.iter()
            .map(|(k, v)| (k.clone(), v.len()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        shape(&live),
        shape(&offline),
        "calls per connection\n{}",
        run.log
    );
    for (client, calls) in &live {
        for (i, (l, o)) in calls.iter().zip(&offline[client]).enumerate() {
            assert_same_record(
                l,
                o,
                &["ts_start", "ts_end", "ttfb_s"],
                &format!("{client} #{i}"),
            );
        }
    }
    let order = |v: &[Value]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| {
            (
                a["token_fp"].as_str(),
                a["rule"].as_str(),
                a["count"].as_u64(),
            )
                .cmp(&(
                    b["token_fp"].as_str(),
                    b["rule"].as_str(),
                    b["count"].as_u64(),
                ))
                .then(a["ts"].as_f64().partial_cmp(&b["ts"].as_f64()).unwrap())
        });
        v
    };
    let (lv, ov) = (order(&run.live_violations), order(&run.offline_violations));
    assert_eq!(lv.len(), ov.len(), "violations: live {lv:?} offline {ov:?}");
    assert!(
        !lv.is_empty(),
        "the bursts must break the 3-per-minute rule"
    );
    for (l, o) in lv.iter().zip(&ov) {
        assert_same_record(l, o, &["ts"], "violation");
    }
}

/// Every API request the simulator answered is one live call on its connection, in order.
fn assert_live_equals_simulator(run: &LiveRun) {
    let calls: Vec<CallRecord> = run
        .live_calls
        .iter()
        .map(|v| serde_json::from_value(v.clone()).unwrap())
        .collect();
    let mut calls_by_port: BTreeMap<u16, Vec<&CallRecord>> = BTreeMap::new();
    for call in &calls {
        calls_by_port
            .entry(call.client_port().unwrap())
            .or_default()
            .push(call);
    }
    let mut sim_by_port: BTreeMap<u16, Vec<&SimRecord>> = BTreeMap::new();
    for r in &run.sim_api {
        sim_by_port.entry(r.client_port).or_default().push(r);
    }
    assert_eq!(
        shape(&calls_by_port),
        shape(&sim_by_port),
        "live calls vs simulator"
    );
    for (port, sims) in &sim_by_port {
        for (call, sim) in calls_by_port[port].iter().zip(sims) {
            let what = format!("port {port}: {} {:?}", sim.path, sim.content);
            assert_eq!(call.path, sim.path, "{what}");
            assert_eq!(call.content, sim.content, "{what}");
            assert_eq!(call.action, sim.action, "{what}");
            assert_eq!(call.status, Some(sim.status), "{what}");
            assert_eq!(call.request_bytes, sim.request_body_bytes, "{what}");
            assert_eq!(call.response_bytes, Some(sim.body_bytes), "{what}");
            assert_eq!(call.response_wire_bytes, Some(sim.wire_bytes), "{what}");
            assert!(call.complete, "{what}");
        }
    }
}

#[test]
fn ebpf_mode_reports_the_same_calls_as_analyze_of_a_tcpdump_of_the_same_packets() {
    if !monitor_tests::require_root("live ebpf equivalence") {
        return;
    }
    let run = record_live_run("ebpf", 205);
    assert!(
        run.sim_api.len() > 30,
        "too few API calls: {}",
        run.sim_api.len()
    );
    assert_live_equals_offline(&run);
    assert_live_equals_simulator(&run);
    let kernel = &run.stats["kernel"];
    assert_eq!(run.stats["mode"], "ebpf", "{}", run.stats);
    assert!(
        kernel["filtered"].as_u64().unwrap() > 0,
        "non-API traffic: {kernel}"
    );
    assert_eq!(kernel["ring_full"], 0, "{kernel}");
    assert_eq!(kernel["truncated_bytes"], 0, "{kernel}");
    assert_eq!(kernel["flows_evicted"], 0, "{kernel}");
    assert_eq!(run.stats["ring"]["malformed"], 0, "{}", run.stats);
    assert!(run.status.contains("losses: none"), "{}", run.status);
    assert!(run.status.starts_with("mode ebpf"), "{}", run.status);
    assert!(
        run.log.contains("capturing with the eBPF probe"),
        "{}",
        run.log
    );
}

#[test]
fn pcap_mode_reports_the_same_calls_as_analyze_of_a_tcpdump_of_the_same_packets() {
    if !monitor_tests::require_root("live pcap equivalence") {
        return;
    }
    let run = record_live_run("pcap", 206);
    assert_live_equals_offline(&run);
    assert_live_equals_simulator(&run);
    assert_eq!(run.stats["mode"], "pcap", "{}", run.stats);
    let pcap = &run.stats["pcap"][0];
    assert!(pcap["received"].as_u64().unwrap() > 0, "{pcap}");
    assert_eq!(pcap["dropped"], 0, "{pcap}");
    assert!(run.status.contains("losses: none"), "{}", run.status);
    assert!(run.log.contains("capturing with libpcap"), "{}", run.log);
}

fn shape<T>(m: &BTreeMap<u16, Vec<T>>) -> Vec<(u16, usize)> {
    m.iter().map(|(p, v)| (*p, v.len())).collect()
}

fn read_last_counters(log: &str) -> &str {
    log.lines()
        .rfind(|l| l.contains("final counters"))
        .unwrap_or("(none)")
}
