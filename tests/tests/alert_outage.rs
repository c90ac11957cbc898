//! An alert sink down, then back, in front of the live daemon: `redcap-monitor run` (libpcap on
//! loopback) watches the REDCap simulator, a token breaks the call rule, and of its two sinks
//! one (`chat`) refuses every connection. The other (`siem`) gets the violation, then
//! `sink_failing` naming `chat` once it has failed for `alerts.sink_failing_after`; when `chat`
//! comes back it gets the violation it missed (retried by age, not given up by count) and
//! `siem` gets `sink_recovered`. Needs root (libpcap); REDCAP_MONITOR_SKIP_ROOT_TESTS=1 skips it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use monitor_tests::clients::api_call;
use monitor_tests::daemon::{LiveDaemon, fingerprints, without_api_listener};
use monitor_tests::sim::{SimOptions, Simulator, wait_until};
use serde_json::Value;
use test_support::{Receiver, Recorded};

const TOKEN: &str = "5A5A5A5A6B6B6B6B7C7C7C7C8D8D8D8D";
const WAIT: Duration = Duration::from_secs(30);

fn config(dir: &Path, sim_port: u16, chat_port: u16, siem_port: u16) -> PathBuf {
    let path = dir.join("outage.toml");
    let secret = dir.join("siem.whsec");
    monitor_tests::write_secret(
        &secret,
        "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
    );
    let d = dir.display();
    // A tiny max_attempts would have given the alert up long before: retries run by age now,
    // and the test leaves max_attempts unset as the default does.
    std::fs::write(
        &path,
        format!(
            "[capture]\nmode = \"pcap\"\ninterfaces = [\"lo\"]\nports = [{sim_port}]\n\
             [output]\nstats = \"{d}/stats.json\"\nstats_interval = \"1s\"\n\
             [store]\npath = \"{d}/state/state.redb\"\n{api}\
             [alerts]\nbackoff_base = \"100ms\"\nbackoff_cap = \"300ms\"\n\
             request_timeout = \"1s\"\nsink_failing_after = \"2s\"\n\
             [[alerts.sinks]]\nname = \"chat\"\nkind = \"slack\"\n\
             url = \"http://127.0.0.1:{chat_port}/chat\"\n\
             [[alerts.sinks]]\nname = \"siem\"\nkind = \"generic\"\n\
             url = \"http://127.0.0.1:{siem_port}/alerts\"\nsecret_file = \"{}\"\n",
            secret.display(),
            api = without_api_listener(),
        ),
    )
    .unwrap();
    path
}

fn events(seen: &[Recorded]) -> Vec<Value> {
    seen.iter()
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect()
}

#[test]
fn a_sink_down_then_back_gets_its_alert_and_the_other_sink_hears_of_the_outage() {
    if !monitor_tests::require_root("alert sink outage") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("site.key");
    let fp = fingerprints(&key, &[TOKEN]).unwrap().remove(0);
    let sim = Simulator::start(&SimOptions {
        tokens: vec![TOKEN.into()],
        ..SimOptions::default()
    })
    .unwrap();
    // `chat`'s port is reserved and closed: every attempt is refused until it listens.
    let chat_addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let siem_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let siem_port = siem_listener.local_addr().unwrap().port();
    let siem = Receiver::serve(siem_listener).unwrap();
    let config = config(dir.path(), sim.port(), chat_addr.port(), siem_port);
    let mut daemon = LiveDaemon::start(None, &config, &key).unwrap();

    // Four calls in a minute: the fourth breaks the 3-a-minute rule.
    let url = sim.url("/api/");
    for _ in 0..4 {
        api_call(&url, TOKEN);
    }
    let siem_events = |kind: &str| -> Vec<Value> {
        events(&siem.requests())
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    };
    assert!(
        wait_until(WAIT, || !siem_events("violation").is_empty()),
        "siem got no violation: {}",
        daemon.log()
    );
    assert_eq!(siem_events("violation")[0]["token_fp"], fp.as_str());

    // `chat` has failed for sink_failing_after: `siem` hears of it, naming it.
    assert!(
        wait_until(WAIT, || !siem_events("sink_failing").is_empty()),
        "siem got no sink_failing: {}",
        daemon.log()
    );
    let failing = &siem_events("sink_failing")[0];
    assert_eq!(failing["sink"], "chat");
    assert!(
        failing["failed_attempts"].as_u64().unwrap() >= 2,
        "{failing}"
    );
    let stats = dir.path().join("stats.json");
    assert!(
        wait_until(WAIT, || {
            std::fs::read_to_string(&stats)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                .is_some_and(|s| s["alerts"]["delivery"]["failing_sinks"][0] == "chat")
        }),
        "the stats file does not name the failing sink"
    );

    // `chat` comes back: the violation it missed arrives, and `siem` hears it recovered.
    let chat = Receiver::serve(TcpListener::bind(chat_addr).unwrap()).unwrap();
    assert!(
        wait_until(WAIT, || !chat.requests().is_empty()),
        "chat never got its alert: {}",
        daemon.log()
    );
    let chat_body = String::from_utf8_lossy(&chat.requests()[0].body).into_owned();
    assert!(chat_body.contains("api_calls"), "{chat_body}");
    assert!(
        wait_until(WAIT, || !siem_events("sink_recovered").is_empty()),
        "siem got no sink_recovered: {}",
        daemon.log()
    );
    assert_eq!(siem_events("sink_recovered")[0]["sink"], "chat");
    assert_eq!(siem_events("sink_failing").len(), 1, "once per outage");
    assert!(
        chat.requests()
            .iter()
            .all(|r| !String::from_utf8_lossy(&r.body).contains("sink_")),
        "chat gets no alert about its own outage"
    );
    let (status, log) = daemon.stop().unwrap();
    assert!(status.success(), "{status}: {log}");
}
