//! The real-client test: PyCap and curl against the REDCap simulator, captured by tcpdump on
//! `lo`, analysed by `redcap-monitor analyze`, and compared call for call with what the
//! simulator says it answered. Also checks no raw token leaks into anything analyze writes.

use std::collections::BTreeMap;

use monitor_tests::clients::{PycapSet, run_curl_set, run_pycap};
use monitor_tests::daemon::{CallRecord, analyze_full, fingerprints};
use monitor_tests::session;
use monitor_tests::sim::{SimOptions, SimRecord};

const TOKEN: &str = "5E1F0C2A9B7D4E3F8A6C1B0D2E4F6A8C";
const OTHER: &str = "00FF11EE22DD33CC44BB55AA66997788";
const WRONG: &str = "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF";

fn ports<T>(m: &BTreeMap<u16, Vec<T>>) -> Vec<(u16, usize)> {
    m.iter().map(|(p, v)| (*p, v.len())).collect()
}

/// Every answered API request appears exactly once, on its connection, in order, with the
/// fields and sizes the simulator logged; nothing else appears.
fn assert_call_for_call(api: &[&SimRecord], calls: &[CallRecord], fp_of: &BTreeMap<&str, &str>) {
    // Pair calls and answered requests per client connection, in order.
    let mut calls_by_port: BTreeMap<u16, Vec<&CallRecord>> = BTreeMap::new();
    for call in calls {
        calls_by_port
            .entry(call.client_port().unwrap())
            .or_default()
            .push(call);
    }
    let mut sim_by_port: BTreeMap<u16, Vec<&SimRecord>> = BTreeMap::new();
    for r in api {
        sim_by_port.entry(r.client_port).or_default().push(r);
    }
    assert_eq!(
        ports(&calls_by_port),
        ports(&sim_by_port),
        "calls per client port (analyze vs simulator)"
    );
    for (port, sims) in &sim_by_port {
        for (call, sim) in calls_by_port[port].iter().zip(sims) {
            let want_fp = sim.token.as_deref().map(|t| fp_of[t]);
            let what = format!(
                "port {port}: {} {:?} {:?}",
                sim.path, sim.content, sim.action
            );
            assert_eq!(call.method, "POST", "{what}");
            assert_eq!(call.path, sim.path, "{what}");
            assert_eq!(call.token_fp.as_deref(), want_fp, "{what}");
            assert_eq!(call.content, sim.content, "{what}");
            assert_eq!(call.action, sim.action, "{what}");
            assert_eq!(call.format, sim.format, "{what}");
            assert_eq!(call.status, Some(sim.status), "{what}");
            assert_eq!(call.request_bytes, sim.request_body_bytes, "{what}");
            assert_eq!(call.response_bytes, Some(sim.body_bytes), "{what}");
            assert_eq!(call.response_wire_bytes, Some(sim.wire_bytes), "{what}");
            assert!(call.complete, "{what}");
            assert_eq!(call.transport, "tcp", "{what}");
        }
    }
}

#[test]
fn every_api_request_from_pycap_and_curl_is_reported_exactly_once_with_its_sizes() {
    if !monitor_tests::require_root(
        "every_api_request_from_pycap_and_curl_is_reported_exactly_once_with_its_sizes",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("real-clients.pcap");
    let key = dir.path().join("site.key");
    let opts = SimOptions {
        tokens: vec![TOKEN.to_string(), OTHER.to_string()],
        project_sizes: vec![(TOKEN.to_string(), 60), (OTHER.to_string(), 5)],
        ..SimOptions::default()
    };
    let s = session::record(dir.path(), opts, &pcap, |sim| {
        run_pycap(&sim.url("/redcap/api/"), TOKEN, PycapSet::Full)?;
        run_pycap(&sim.url("/api/"), OTHER, PycapSet::Light)?;
        run_curl_set(&sim.url(""), TOKEN, dir.path())
    })
    .unwrap();
    let api: Vec<&SimRecord> = s.sim_log.iter().filter(|r| r.api).collect();
    assert!(
        api.len() > 20,
        "the clients made too few calls: {}",
        api.len()
    );
    assert!(
        s.sim_log.iter().any(|r| !r.api),
        "the session should include non-API requests"
    );

    let analysis = analyze_full(&pcap, &key, None).unwrap();

    // The simulator's raw tokens, mapped to what analyze must report.
    let raw: Vec<&str> = api.iter().filter_map(|r| r.token.as_deref()).collect();
    let fps = fingerprints(&key, &raw).unwrap();
    let fp_of: BTreeMap<&str, &str> = raw
        .iter()
        .copied()
        .zip(fps.iter().map(String::as_str))
        .collect();

    assert_call_for_call(&api, &analysis.calls, &fp_of);

    // The wrong token's 403 is a call too, under its own fingerprint.
    assert!(analysis.calls.iter().any(|c| c.status == Some(403)));
    assert!(raw.contains(&WRONG));

    // Tokens are secrets: none may appear in anything analyze wrote.
    let everything = [
        analysis.stdout.as_str(),
        analysis.stderr.as_str(),
        analysis.calls_text.as_str(),
        analysis.violations_text.as_str(),
    ]
    .concat();
    for token in raw.iter().copied().chain([TOKEN, OTHER, WRONG]) {
        for form in [
            token.to_string(),
            token.to_lowercase(),
            token.to_uppercase(),
        ] {
            assert!(
                !everything.contains(&form),
                "a raw token leaked into analyze's output"
            );
        }
    }

    // The full PyCap set makes far more than 3 calls a minute with TOKEN: it is flagged; the
    // light client (3 requests) is not.
    let fp_token = fp_of[TOKEN];
    let fp_other = fp_of[OTHER];
    assert!(
        analysis
            .violations
            .iter()
            .any(|v| v.token_fp.as_deref() == Some(&*fp_token) && v.rule == "api_calls")
    );
    assert!(
        !analysis
            .violations
            .iter()
            .any(|v| v.token_fp.as_deref() == Some(&*fp_other))
    );
}

/// The comparison above must be able to fail: a faithful report passes, a lost call or a
/// wrong size does not. Runs without root or the daemon.
#[test]
fn call_for_call_check_accepts_a_faithful_report_and_rejects_a_lost_or_wrong_call() {
    let sim: Vec<SimRecord> = [
        r#"{"method":"POST","path":"/api/","client_port":5000,"user_agent":null,"expect_continue":false,"api":true,"token":"AA","content":"version","action":null,"format":null,"returnFormat":null,"status":200,"body_bytes":6,"wire_bytes":6,"gzip":false,"chunked":false,"request_body_bytes":30}"#,
        r#"{"method":"POST","path":"/api/","client_port":5000,"user_agent":null,"expect_continue":false,"api":true,"token":"AA","content":"record","action":null,"format":"json","returnFormat":null,"status":200,"body_bytes":900,"wire_bytes":300,"gzip":true,"chunked":true,"request_body_bytes":50}"#,
    ]
    .iter()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    let call = |content: &str, format: &str, request: u64, body: u64, wire: u64| -> CallRecord {
        serde_json::from_str(&format!(
            r#"{{"ts_start":1.0,"ts_end":1.1,"ttfb_s":null,"client":"127.0.0.1:5000","server":"127.0.0.1:80",
            "method":"POST","path":"/api/","http_version":"1.1","token_fp":"00112233aabbccdd","token_masked":null,"token_problem":null,
            "content":"{content}","action":null,"format":{format},"type":null,"return_format":null,"data_bytes":null,
            "records":0,"fields":0,"report_id":null,"filter_logic":false,"date_range_begin":null,"date_range_end":null,
            "return_metadata_only":null,"export_files":null,"all_records":null,"status":200,"request_bytes":{request},
            "response_bytes":{body},"response_wire_bytes":{wire},"heavy":null,"complete":true,"transport":"tcp",
            "a_field_added_later":1}}"#
        ))
        .unwrap()
    };
    let api: Vec<&SimRecord> = sim.iter().collect();
    let fp_of = BTreeMap::from([("AA", "00112233aabbccdd")]);
    let faithful = vec![
        call("version", "null", 30, 6, 6),
        call("record", "\"json\"", 50, 900, 300),
    ];
    assert_call_for_call(&api, &faithful, &fp_of);

    let lost = vec![faithful[0].clone()];
    let wrong_wire = vec![
        faithful[0].clone(),
        call("record", "\"json\"", 50, 900, 900),
    ];
    for bad in [lost, wrong_wire] {
        let checked = std::panic::catch_unwind(|| assert_call_for_call(&api, &bad, &fp_of));
        assert!(checked.is_err());
    }
}
