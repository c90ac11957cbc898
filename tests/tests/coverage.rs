//! What the daemon cannot see, it says: nginx serves the REDCap simulator over HTTPS in a server
//! namespace while `redcap-monitor run` watches the veth (ports 80 and 443) with the TC probe.
//! Without TLS capture the HTTPS API calls cannot be counted, so the daemon must report the blind
//! spot in its log, `status`, the metrics and a `capture_blind` alert; with TLS capture on the
//! same traffic it must report none and count the calls.

use std::path::Path;
use std::time::Duration;

use monitor_tests::clients::curl_in;
use monitor_tests::daemon::{LiveDaemon, monitor_bin};
use monitor_tests::netns::{NamespacePair, command_in, listen_in};
use monitor_tests::sim::{SimOptions, Simulator, wait_until};
use monitor_tests::web::{Nginx, TestPki};
use serde_json::Value;
use test_support::Receiver;

const TOKEN: &str = "7C3A9E1B5D2F4A6C8E0B1D3F5A7C9E2B";
const WAIT: Duration = Duration::from_secs(20);

/// Fields drop in this order: nginx before the directory that holds its pid file.
struct Site {
    nginx: Nginx,
    _sim: Simulator,
    pki: TestPki,
    pair: NamespacePair,
    dir: tempfile::TempDir,
}

fn site(subnet: u8) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let pair = NamespacePair::create(subnet).unwrap();
    let pki = TestPki::create(dir.path(), &pair.server_ip).unwrap();
    let sim = Simulator::start(&SimOptions {
        tokens: vec![TOKEN.into()],
        netns: Some(pair.server_ns.clone()),
        ..SimOptions::default()
    })
    .unwrap();
    let nginx = Nginx::start(&pair.server_ns, dir.path(), sim.port(), &pki, 1).unwrap();
    Site {
        dir,
        pair,
        pki,
        _sim: sim,
        nginx,
    }
}

/// A configuration for `site`: TC on the veth (80 and 443), metrics and alerts on the server
/// namespace's loopback, `tls` added as given.
fn config(site: &Site, tls: &str, receiver_port: u16) -> std::path::PathBuf {
    let d = site.dir.path().display();
    let path = site.dir.path().join("coverage.toml");
    std::fs::write(
        &path,
        format!(
            "[capture]\nmode = \"ebpf\"\ninterfaces = [\"{}\"]\nports = [80, 443]\n{tls}\
             [output]\ncalls = \"{d}/calls.jsonl\"\nstats = \"{d}/stats.json\"\n\
             stats_interval = \"1s\"\n\
             [store]\npath = \"{d}/state/state.redb\"\n\
             [api]\nlisten = \"127.0.0.1:19864\"\n\
             [alerts]\nbackoff_base = \"100ms\"\nbackoff_cap = \"300ms\"\n\
             [[alerts.sinks]]\nname = \"siem\"\nkind = \"generic\"\n\
             url = \"http://127.0.0.1:{receiver_port}/alerts\"\nsecret_file = \"{d}/siem.whsec\"\n",
            site.pair.server_if,
        ),
    )
    .unwrap();
    monitor_tests::write_secret(
        &site.dir.path().join("siem.whsec"),
        "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
    );
    path
}

/// Five HTTPS API calls, each on its own connection (a TLS handshake each).
fn https_calls(site: &Site) {
    let url = format!("https://{}/api/", site.pair.server_ip);
    let token = format!("token={TOKEN}");
    for _ in 0..5 {
        #[rustfmt::skip]
        curl_in(Some(&site.pair.client_ns), &[
            "-sS", "-o", "/dev/null", "--http1.1", "--cacert",
            site.pki.ca_cert.to_str().unwrap(), &url, "-d", &token, "-d", "content=version",
        ])
        .unwrap();
    }
}

fn status(site: &Site) -> String {
    let out = command_in(
        Some(&site.pair.server_ns),
        monitor_bin().unwrap().to_str().unwrap(),
    )
    .arg("status")
    .arg("--stats")
    .arg(site.dir.path().join("stats.json"))
    .output()
    .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn metrics(site: &Site) -> String {
    let out = command_in(Some(&site.pair.server_ns), "curl")
        .args(["-sS", "http://127.0.0.1:19864/metrics"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn calls(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("calls.jsonl"))
        .unwrap_or_default()
        .lines()
        .count()
}

#[test]
fn https_that_nothing_reads_is_a_blind_spot_everywhere_the_admin_looks_and_https_read_is_not() {
    if !monitor_tests::require_root("coverage") {
        return;
    }
    let site = site(81);
    // 1. TLS capture off: the five HTTPS calls are blind spots.
    let listener = listen_in(Some(&site.pair.server_ns), "127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Receiver::serve(listener).unwrap();
    let config = config(&site, "[capture.tls]\nenabled = false\n", port);
    let key = site.dir.path().join("site.key");
    let mut daemon = LiveDaemon::start(Some(&site.pair.server_ns), &config, &key).unwrap();
    https_calls(&site);

    daemon
        .wait_for_log("https_unread", 1, WAIT)
        .expect("the log names the blind spot");
    assert!(
        wait_until(WAIT, || status(&site)
            .contains("coverage: BLIND https_unread")),
        "status: {}",
        status(&site)
    );
    let text = status(&site);
    assert!(
        text.contains("capture.tls"),
        "status says what to change: {text}"
    );
    assert!(
        text.contains("coverage: BLIND https_not_captured"),
        "443 is watched without TLS capture: {text}"
    );
    assert!(
        wait_until(WAIT, || metrics(&site).contains(
            "redcap_monitor_capture_blind{reason=\"https_unread\"} 1"
        )),
        "metrics:\n{}",
        metrics(&site)
    );
    assert!(
        wait_until(WAIT, || received.requests().iter().any(|r| {
            serde_json::from_slice::<Value>(&r.body)
                .is_ok_and(|b| b["event"] == "capture_blind" && b["reason"] == "https_unread")
        })),
        "no capture_blind alert reached the webhook"
    );
    let (status, log) = daemon.stop().unwrap();
    assert!(status.success(), "{log}");
    assert_eq!(calls(site.dir.path()), 0, "no HTTPS call can be read here");

    // 2. The same traffic with TLS capture on nginx's OpenSSL: counted, and nothing is blind.
    // (One test, one nginx: uprobes are system-wide, and a second nginx of this process would
    // share its name.)
    std::fs::remove_file(site.dir.path().join("stats.json")).unwrap();
    std::fs::remove_file(site.dir.path().join("calls.jsonl")).unwrap();
    let tls = format!(
        "[capture.tls]\nenabled = true\nprocesses = [\"{}\"]\nrescan_interval = \"1s\"\n",
        site.nginx.name()
    );
    let config = self::config(&site, &tls, port);
    let mut daemon = LiveDaemon::start(Some(&site.pair.server_ns), &config, &key).unwrap();
    https_calls(&site);
    assert!(
        wait_until(WAIT, || calls(site.dir.path()) == 5),
        "{} of 5 HTTPS calls recorded",
        calls(site.dir.path())
    );
    // Several coverage judgements (once a second) and a stats file after the calls.
    std::thread::sleep(Duration::from_secs(3));
    let text = self::status(&site);
    assert!(text.contains("coverage: no blind spot seen"), "{text}");
    assert!(
        metrics(&site).contains("redcap_monitor_capture_blind{reason=\"https_unread\"} 0"),
        "{}",
        metrics(&site)
    );
    let (status, log) = daemon.stop().unwrap();
    assert!(status.success(), "{log}");
    assert!(!log.contains("capture is blind"), "{log}");
}
