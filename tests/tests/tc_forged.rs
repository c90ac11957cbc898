//! Forged traffic against the real kernel program, the probe attached to the server's veth in a
//! namespace pair and drained into a real [`Pipeline`]: a flood of forged segments that start
//! like an API request (no handshake, from a spoofed address the server cannot answer) must not
//! push a real API connection out of the kernel's flow table while its request is in flight; a
//! forged RST or a decoy body with the right sequence number and a wrong checksum must not end
//! the copy of the request, nor take the real body's place. Needs root; set REDCAP_MONITOR_SKIP_ROOT_TESTS=1 to
//! skip without it.

mod probe_env;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use monitor_tests::forged::{Flood, Forgery, SplitClient, flood, forging_client};
use monitor_tests::require_root;
use probe_env::{SERVER_IP, SERVER_PORT, namespace_pair, spawn_attached_probe};
use redcap_monitor::commands::config::Config;
use redcap_monitor::edges::capture::kernel::{KernelCounters, ProbeConfig};
use redcap_monitor::shared::token::{RawToken, SiteKey};
use redcap_monitor::stages::pipeline::Pipeline;
use redcap_monitor::stages::redcap::ApiCall;

const TOKEN: &str = "0123456789ABCDEF0123456789ABCDEF";
const DECOY_TOKEN: &str = "FEDCBA9876543210FEDCBA9876543210";
/// A source address the server's namespace has no route back to: it cannot answer (no RST),
/// as with spoofed sources on the internet.
const SPOOFED_IP: &str = "198.51.100.7";
const KEY: [u8; 32] = [5; 32];

struct Observed {
    calls: Vec<ApiCall>,
    counters: KernelCounters,
    /// Connections reassembly closed on a RST.
    resets: u64,
}

/// Attaches the probe and feeds every segment into a pipeline until `stop` is set.
fn observe(
    pair: &monitor_tests::netns::NamespacePair,
    config: ProbeConfig,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Observed> {
    spawn_attached_probe(pair, config, move |mut probe| {
        let mut pipeline = Pipeline::new(Config::default().pipeline(), SiteKey::from_bytes(KEY));
        let mut calls = Vec::new();
        loop {
            let last = stop.load(Ordering::Relaxed);
            probe
                .wait_readable(Duration::from_millis(20))
                .expect("poll");
            probe.drain(&mut |segment| {
                pipeline.push_segment(segment, &mut |verdict| calls.push(verdict.call))
            });
            if last {
                break;
            }
        }
        pipeline.finish(&mut |verdict| calls.push(verdict.call));
        Observed {
            calls,
            counters: probe.counters().expect("counters"),
            resets: pipeline.stats().reassembly.reset_closed,
        }
    })
}

/// The calls that carry [`TOKEN`].
fn real_calls(observed: &Observed) -> Vec<&ApiCall> {
    let fingerprint =
        SiteKey::from_bytes(KEY).fingerprint(&RawToken::parse(TOKEN.as_bytes()).unwrap());
    observed
        .calls
        .iter()
        .filter(|c| c.token.as_ref().is_ok_and(|t| t.fingerprint == fingerprint))
        .collect()
}

#[test]
fn a_flood_of_forged_api_requests_does_not_evict_an_api_connection_in_flight() {
    if !require_root(module_path!()) {
        return;
    }
    const FORGED: usize = 20_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = namespace_pair();
    let _server = probe_env::start_server(&pair, &dir.path().join("server.jsonl"), 100);
    let stop = Arc::new(AtomicBool::new(false));
    // A small table, so that the flood is many times its size.
    let config = ProbeConfig {
        ports: vec![SERVER_PORT],
        max_flows: 512,
        ..ProbeConfig::default()
    };
    let probe = observe(&pair, config, Arc::clone(&stop));

    let client = SplitClient::start(&pair, SERVER_IP, SERVER_PORT, TOKEN);
    // The server acknowledges the head: the flow is confirmed.
    thread::sleep(Duration::from_millis(300));
    flood(&pair, Flood::ApiStart, SPOOFED_IP, SERVER_IP, FORGED);
    assert_eq!(
        client.send_body(),
        "200",
        "the server answered the real call"
    );
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let observed = probe.join().expect("probe thread");

    let counters = observed.counters;
    eprintln!("{counters:?}");
    let real = real_calls(&observed);
    assert_eq!(
        real.len(),
        1,
        "the real call is reported once: {counters:?}"
    );
    assert!(real[0].complete, "{:?}", real[0]);
    assert_eq!(real[0].status, Some(200));
    assert_eq!(counters.flows_evicted, 0, "{counters:?}");
    assert_eq!(
        counters.flows_confirmed, 1,
        "only the real flow is confirmed: {counters:?}"
    );
    assert!(
        counters.flows_unanswered >= (FORGED - 512) as u64,
        "the flood is counted as unanswered: {counters:?}"
    );
}

#[test]
fn a_forged_reset_with_a_wrong_checksum_does_not_end_the_copy_of_a_request() {
    if !require_root(module_path!()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = namespace_pair();
    let _server = probe_env::start_server(&pair, &dir.path().join("server.jsonl"), 100);
    let stop = Arc::new(AtomicBool::new(false));
    let config = ProbeConfig {
        ports: vec![SERVER_PORT],
        ..ProbeConfig::default()
    };
    let probe = observe(&pair, config, Arc::clone(&stop));
    let output = forging_client(&pair, SERVER_IP, SERVER_PORT, TOKEN, Forgery::Reset);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.lines().eq(["rst", "200", "aborted"]),
        "the client: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let observed = probe.join().expect("probe thread");
    let counters = observed.counters;
    let real = real_calls(&observed);
    assert_eq!(
        real.len(),
        1,
        "the real call is reported once: {counters:?}"
    );
    assert!(real[0].complete, "{:?}", real[0]);
    assert_eq!(real[0].status, Some(200));
    assert_eq!(counters.checksum_bad, 1, "{counters:?}");
    // The client stack's own RST passes the check and closes its connection.
    assert_eq!(observed.resets, 1, "{counters:?}");
}

#[test]
fn a_decoy_body_with_a_wrong_checksum_does_not_take_the_real_bodys_place() {
    if !require_root(module_path!()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pair = namespace_pair();
    let _server = probe_env::start_server(&pair, &dir.path().join("server.jsonl"), 100);
    let stop = Arc::new(AtomicBool::new(false));
    let config = ProbeConfig {
        ports: vec![SERVER_PORT],
        ..ProbeConfig::default()
    };
    let probe = observe(&pair, config, Arc::clone(&stop));
    let output = forging_client(
        &pair,
        SERVER_IP,
        SERVER_PORT,
        TOKEN,
        Forgery::Decoy(DECOY_TOKEN),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.lines().eq(["decoy", "200"]),
        "the client: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let observed = probe.join().expect("probe thread");
    let counters = observed.counters;
    let real = real_calls(&observed);
    assert_eq!(
        observed.calls.len(),
        1,
        "one call, with the token the server read: {counters:?}"
    );
    assert_eq!(real.len(), 1, "{:?}", observed.calls[0].token);
    assert!(real[0].complete, "{:?}", real[0]);
    assert_eq!(counters.checksum_bad, 1, "{counters:?}");
}
