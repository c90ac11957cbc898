//! Forged traffic against `redcap-monitor run` in libpcap mode, on the server's veth in a
//! namespace pair: a flood of bare SYNs from a spoofed address (no handshake follows; the server
//! cannot answer) must not push a real API connection out of user space's connection table
//! while its request is in flight. Needs root; REDCAP_MONITOR_SKIP_ROOT_TESTS=1 skips it.

mod probe_env;

use std::time::Duration;

use monitor_tests::daemon::{LiveDaemon, fingerprint, jsonl};
use monitor_tests::forged::{Flood, SplitClient, flood};
use monitor_tests::require_root;
use probe_env::{SERVER_IP, SERVER_PORT, namespace_pair};

const TOKEN: &str = "0123456789ABCDEF0123456789ABCDEF";
const SPOOFED_IP: &str = "198.51.100.9";
const SYNS: usize = 3_000;

#[test]
fn a_syn_flood_does_not_evict_an_api_connection_in_flight_in_libpcap_mode() {
    if !require_root(module_path!()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = namespace_pair();
    let _server = probe_env::start_server(&pair, &dir.path().join("server.jsonl"), 100);
    let key = dir.path().join("site.key");
    let calls = dir.path().join("calls.jsonl");
    let config = dir.path().join("pcap.toml");
    // A small table (8 connections may wait for an answer), so that the flood is many times it.
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"pcap\"\ninterfaces = [\"{}\"]\nports = [{SERVER_PORT}]\n\
             [reassembly]\nmax_connections = 64\n\
             [output]\ncalls = \"{}\"\n[store]\npath = \"{}\"\n",
            pair.server_if,
            calls.display(),
            dir.path().join("state.redb").display()
        ),
    )
    .unwrap();
    let mut daemon = LiveDaemon::start(Some(&pair.server_ns), &config, &key).unwrap();
    daemon
        .wait_for_log("capturing with libpcap", 1, Duration::from_secs(20))
        .unwrap();

    let client = SplitClient::start(&pair, SERVER_IP, SERVER_PORT, TOKEN);
    // The server acknowledges the head: the connection is answered.
    std::thread::sleep(Duration::from_millis(300));
    flood(&pair, Flood::Syn, SPOOFED_IP, SERVER_IP, SYNS);
    // Let the capture take the flood in before the body goes.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(client.send_body(), "200");
    std::thread::sleep(Duration::from_millis(500));
    let (status, log) = daemon.stop().unwrap();
    assert!(status.success(), "{log}");

    let fp = fingerprint(&key, TOKEN).unwrap();
    let records = jsonl(&std::fs::read_to_string(&calls).unwrap_or_default());
    let real: Vec<&serde_json::Value> = records.iter().filter(|r| r["token_fp"] == fp).collect();
    assert_eq!(real.len(), 1, "the real call is reported once: {log}");
    assert_eq!(real[0]["complete"], true, "{}", real[0]);
    assert_eq!(real[0]["status"], 200);
    assert!(
        log.contains("unconfirmed_evicted"),
        "the flood is counted: {log}"
    );
}
