//! The live daemon acting on what it sees: `redcap-monitor run` (libpcap on loopback) in front of
//! the REDCap simulator, real curl clients with known tokens, exec hooks, and a webhook receiver.
//! An abuser is warned, then suspended (hooks run, audited); `kill -9`; the suspension and the
//! audit log are still there after a restart, and the alerts the dead receiver could not take are
//! delivered once it is back; `lift` while the daemon runs goes through it. A second suspend hook
//! with `pass_raw_token = true` gets the abuser's raw token on its stdin, and only there. Then
//! everything else the daemon wrote — records, stats, the store file, hook outputs, webhook
//! bodies, its logs — is scanned for the raw tokens: none. Needs root;
//! REDCAP_MONITOR_SKIP_ROOT_TESTS=1 skips it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use monitor_tests::clients::api_call;
use monitor_tests::daemon::{
    LiveDaemon, admin_json as admin, assert_no_raw_token, file_lines as lines, files_under,
    fingerprints, monitor_bin,
};
use monitor_tests::sim::{SimOptions, Simulator, wait_until};
use serde_json::Value;
use test_support::Receiver;

const ABUSER: &str = "AB12CD34EF56AB12CD34EF56AB12CD34";
const COMPLIANT: &str = "0C0C0C0C1D1D1D1D2E2E2E2E3F3F3F3F";
const WAIT: Duration = Duration::from_secs(20);

fn hook_script(dir: &Path) -> PathBuf {
    let script = dir.join("hook.sh");
    let d = dir.display();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat >> '{d}/hook.stdin'\necho >> '{d}/hook.stdin'\n\
             echo \"$@\" >> '{d}/hook.argv'\nenv >> '{d}/hook.env'\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

/// A suspend hook that keeps its stdin (which holds the raw token) in `token.stdin`, and its argv
/// and environment in `token.argv` and `token.env` (which must not).
fn token_hook_script(dir: &Path) -> PathBuf {
    let script = dir.join("token_hook.sh");
    let d = dir.display();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat >> '{d}/token.stdin'\necho >> '{d}/token.stdin'\n\
             echo \"$@\" >> '{d}/token.argv'\nenv >> '{d}/token.env'\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

fn config(dir: &Path, sim_port: u16, receiver_port: u16) -> PathBuf {
    let path = dir.join("act.toml");
    let secret = dir.join("siem.whsec");
    // 32 bytes of key, base64.
    monitor_tests::write_secret(
        &secret,
        "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
    );
    let hook = hook_script(dir);
    let hook_entry = |name: &str| {
        format!(
            "name = \"{name}\"\nkind = \"exec\"\nprogram = \"{}\"\n\
             args = [\"{{action}}\", \"{{fingerprint}}\", \"{{masked}}\"]\ntimeout = \"5s\"\n",
            hook.display()
        )
    };
    let with_token = format!(
        "name = \"with_token\"\nkind = \"exec\"\nprogram = \"{}\"\n\
         args = [\"{{fingerprint}}\"]\npass_raw_token = true\n",
        token_hook_script(dir).display()
    );
    let d = dir.display();
    std::fs::write(
        &path,
        format!(
            "[capture]\nmode = \"pcap\"\ninterfaces = [\"lo\"]\nports = [{sim_port}]\n\
             [output]\ncalls = \"{d}/calls.jsonl\"\nviolations = \"{d}/violations.jsonl\"\n\
             decisions = \"{d}/decisions.jsonl\"\nstats = \"{d}/stats.json\"\n\
             stats_interval = \"1s\"\n\
             [store]\npath = \"{d}/state/state.redb\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\n\
             [enforcement]\nmode = \"on_violation\"\n\
             [alerts]\nbackoff_base = \"100ms\"\nbackoff_cap = \"300ms\"\nmax_attempts = 1000\n\
             request_timeout = \"1s\"\n\
             [[alerts.sinks]]\nname = \"siem\"\nkind = \"generic\"\n\
             url = \"http://127.0.0.1:{receiver_port}/alerts\"\nsecret_file = \"{}\"\n\
             [[hooks.suspend]]\n{}[[hooks.suspend]]\n{}[[hooks.lift]]\n{}",
            secret.display(),
            hook_entry("on_suspend"),
            with_token,
            hook_entry("on_lift"),
        ),
    )
    .unwrap();
    path
}

#[test]
fn the_live_daemon_suspends_an_abuser_survives_kill_9_and_writes_no_raw_token() {
    if !monitor_tests::require_root("act_live") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("site.key");
    let fps = fingerprints(&key, &[ABUSER, COMPLIANT]).unwrap();
    let (abuser, compliant) = (fps[0].clone(), fps[1].clone());
    let sim = Simulator::start(&SimOptions {
        tokens: vec![ABUSER.into(), COMPLIANT.into()],
        ..SimOptions::default()
    })
    .unwrap();
    // The receiver's port is reserved and closed: while the first daemon runs, every alert
    // delivery is refused and stays queued.
    let receiver_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = config(dir.path(), sim.port(), receiver_port);
    let store = dir.path().join("state").join("state.redb");
    let url = sim.url("/api/");

    // Run 1: one compliant call, then six calls in a row by the abuser: the fourth is warned,
    // the fifth suspends (strict mode).
    let mut daemon = LiveDaemon::start(None, &config, &key).unwrap();
    api_call(&url, COMPLIANT);
    for _ in 0..6 {
        api_call(&url, ABUSER);
    }
    let suspended = wait_until(WAIT, || {
        Command::new(monitor_bin().unwrap())
            .args(["suspensions", "--json", "--store"])
            .arg(&store)
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&abuser))
    });
    assert!(suspended, "the abuser was not suspended");
    assert!(
        wait_until(WAIT, || !lines(&dir.path().join("hook.stdin")).is_empty()),
        "the suspend hook did not run"
    );
    assert!(
        wait_until(WAIT, || !lines(&dir.path().join("token.stdin")).is_empty()),
        "the pass_raw_token hook did not run"
    );
    // Let the hook's outcome reach the audit log, and the decision its JSONL file (records are
    // flushed each tick: a kill -9 may lose the last tick's, as documented), then kill -9.
    assert!(wait_until(WAIT, || {
        admin(&store, &["audit"])
            .iter()
            .any(|r| r["kind"] == "hook_result")
    }));
    assert!(wait_until(WAIT, || {
        lines(&dir.path().join("decisions.jsonl"))
            .iter()
            .any(|d| d.contains("\"suspend\""))
    }));
    let log_1 = daemon.kill_9().unwrap();

    // After the crash: suspension, audit log and queued alerts are in the store.
    let active = admin(&store, &["suspensions"]);
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["token_fp"], abuser.as_str());
    assert_eq!(active[0]["source"], "auto");
    let audit = admin(&store, &["audit", "--token-fp", &abuser]);
    let kinds: Vec<&str> = audit.iter().filter_map(|r| r["kind"].as_str()).collect();
    for kind in ["violation", "decision", "suspend", "hook_result"] {
        assert!(
            kinds.contains(&kind),
            "no {kind} record after kill -9: {kinds:?}"
        );
    }
    assert!(admin(&store, &["audit", "--token-fp", &compliant]).is_empty());
    let decisions = lines(&dir.path().join("decisions.jsonl"));
    assert!(decisions.iter().any(|d| d.contains("\"warn\"")));
    assert!(decisions.iter().any(|d| d.contains("\"suspend\"")));
    let hook_stdin: Value =
        serde_json::from_str(&lines(&dir.path().join("hook.stdin"))[0]).unwrap();
    assert_eq!(hook_stdin["action"], "suspend");
    assert_eq!(hook_stdin["token_fp"], abuser.as_str());
    assert_eq!(hook_stdin["token_masked"], "AB1…34");

    // Run 2, receiver up: the alerts queued before the crash are delivered; the abuser is
    // still suspended, so its calls decide nothing new.
    let received =
        Receiver::serve(TcpListener::bind(("127.0.0.1", receiver_port)).unwrap()).unwrap();
    let mut daemon = LiveDaemon::start(None, &config, &key).unwrap();
    let delivered = wait_until(WAIT, || {
        let events: Vec<String> = received
            .requests()
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
            .filter_map(|b| b["event"].as_str().map(String::from))
            .collect();
        events.contains(&"violation".to_string()) && events.contains(&"suspended".to_string())
    });
    assert!(
        delivered,
        "queued alerts were not delivered after the restart"
    );
    for request in received.requests().iter() {
        let head = request.head.to_lowercase();
        assert!(head.contains("webhook-id: msg_") && head.contains("webhook-signature: v1,"));
    }
    let decided_before = lines(&dir.path().join("decisions.jsonl")).len();
    api_call(&url, ABUSER);
    // `lift` while the daemon holds the store goes through the daemon, which runs the lift hook.
    let lifted = admin(&store, &["lift", &abuser, "--reason", "talked to the user"]);
    assert_eq!(lifted[0]["token_fp"], abuser.as_str());
    assert!(admin(&store, &["suspensions"]).is_empty());
    assert!(wait_until(WAIT, || lines(&dir.path().join("hook.stdin"))
        .len()
        >= 2));
    let (status, log_2) = daemon.stop().unwrap();
    assert!(status.success(), "{log_2}");
    assert_eq!(
        lines(&dir.path().join("decisions.jsonl")).len(),
        decided_before,
        "a suspended token's calls decide nothing new"
    );
    let lift_stdin: Value =
        serde_json::from_str(&lines(&dir.path().join("hook.stdin"))[1]).unwrap();
    assert_eq!(lift_stdin["action"], "lift");
    let stats: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("stats.json")).unwrap())
            .unwrap();
    assert_eq!(stats["actions"]["lifts"], 1);

    // The pass_raw_token hook got the abuser's raw token on stdin, once (lifts get none).
    let with_token = lines(&dir.path().join("token.stdin"));
    assert_eq!(with_token.len(), 1, "{with_token:?}");
    let event: Value = serde_json::from_str(&with_token[0]).unwrap();
    assert_eq!(
        (event["action"].as_str(), event["raw_token"].as_str()),
        (Some("suspend"), Some(ABUSER))
    );
    assert_eq!(event["token_fp"], abuser.as_str());

    // Nothing else the daemon wrote holds a raw token (its argv and environment included).
    let mut written: Vec<(String, Vec<u8>)> = Vec::new();
    let mut files = Vec::new();
    files_under(dir.path(), &mut files);
    files.retain(|f| !f.ends_with("token.stdin"));
    assert!(files.iter().any(|f| f.ends_with("state.redb")));
    assert!(files.iter().any(|f| f.ends_with("hook.env")));
    assert!(files.iter().any(|f| f.ends_with("token.env")));
    assert!(files.iter().any(|f| f.ends_with("token.argv")));
    for file in files {
        written.push((file.display().to_string(), std::fs::read(&file).unwrap()));
    }
    written.push(("log of run 1".into(), log_1.into_bytes()));
    written.push(("log of run 2".into(), log_2.into_bytes()));
    for (n, request) in received.requests().iter().enumerate() {
        let mut bytes = request.head.clone().into_bytes();
        bytes.extend_from_slice(&request.body);
        written.push((format!("webhook request {n}"), bytes));
    }
    assert_no_raw_token(&written, &[ABUSER, COMPLIANT]);
}
