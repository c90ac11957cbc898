//! `kill -9` of a daemon in the middle of a burst of suspensions: after a restart every
//! acknowledged suspension is in force (and back in the enforcer), its audit record is there, and
//! the alerts that could not be delivered before the crash are delivered after it.
//!
//! The test binary re-runs itself as the daemon: with `ACTIONS_CRASH_CHILD` set, `daemon_child`
//! suspends tokens through [`Actions::execute`] (an admin's request into the enforcer) in a loop, its alert sink unreachable, and prints each
//! token once the call returned. The parent kills it with SIGKILL mid-burst.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redcap_monitor::commands::config::Config;
use redcap_monitor::edges::actions::{Actions, Request};
use redcap_monitor::edges::store::{AuditKind, Store, StoreLimits};
use redcap_monitor::shared::model::Timestamp;
use redcap_monitor::shared::token::TokenFingerprint;
use redcap_monitor::stages::policy::enforce::Enforcer;
use test_support::Receiver;

const CHILD_ENV: &str = "ACTIONS_CRASH_CHILD";
const PORT_ENV: &str = "ACTIONS_CRASH_PORT";

fn now() -> Timestamp {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    Timestamp(since.as_nanos() as u64)
}

fn config(dir: &Path, port: u16) -> Config {
    Config::parse(
        &format!(
            "[store]\npath = \"{}\"\n\
             [alerts]\nbackoff_base = \"50ms\"\nbackoff_cap = \"200ms\"\nmax_attempts = 1000\n\
             request_timeout = \"1s\"\n\
             [[alerts.sinks]]\nname = \"team\"\nkind = \"slack\"\n\
             url = \"http://127.0.0.1:{port}/hook\"\nevents = [\"suspended\"]\n",
            dir.join("state.redb").display()
        ),
        Path::new("crash.toml"),
    )
    .unwrap()
}

fn token(i: u64) -> TokenFingerprint {
    TokenFingerprint((0xC0DE_0000_0000_0000 | i).to_be_bytes())
}

/// The daemon. Runs only when re-invoked by `kill_9_mid_burst_loses_no_suspension_or_alert`.
#[test]
fn daemon_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let port: u16 = std::env::var(PORT_ENV).unwrap().parse().unwrap();
    let config = config(Path::new(&dir), port);
    let mut actions = Actions::open(config.actions(), "crash-host".into(), now()).unwrap();
    let mut enforcer = Enforcer::new(config.enforcement.clone());
    actions
        .restore_into(&mut enforcer, now(), config.enforcement.memory.span())
        .unwrap();
    // Bounded, so that a child whose parent died does not run forever.
    for i in 0..5_000u64 {
        let at = now();
        let request = Request::Suspend {
            token_fp: token(i),
            for_s: Some(3600.0),
            reason: "burst".into(),
        };
        let reply = actions.execute(&request, &mut enforcer, at);
        assert!(reply.ok, "{reply:?}");
        actions.tick(&mut enforcer, at);
        println!("suspended {i}");
    }
}

#[test]
fn kill_9_mid_burst_loses_no_suspension_or_alert() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on while the child runs: every delivery is refused and retried.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "daemon_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir.path())
        .env(PORT_ENV, port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acknowledged = BTreeSet::new();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.map_while(Result::ok) {
        if let Some(i) = line.strip_prefix("suspended ") {
            acknowledged.insert(i.parse::<u64>().unwrap());
        }
        if acknowledged.len() == 40 {
            break;
        }
    }
    // SIGKILL mid-burst: no destructor, no flush.
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(acknowledged.len(), 40, "the child suspended too few tokens");

    let config = config(dir.path(), port);
    {
        let store = Store::open(&config.store.path, StoreLimits::default()).unwrap();
        let active: BTreeSet<TokenFingerprint> = store
            .active_suspensions(now())
            .unwrap()
            .into_iter()
            .map(|s| s.token)
            .collect();
        let audited: BTreeSet<TokenFingerprint> = store
            .audit(None, None, usize::MAX)
            .unwrap()
            .into_iter()
            .filter(|r| r.entry.kind == AuditKind::Suspend)
            .filter_map(|r| r.entry.token)
            .collect();
        for i in &acknowledged {
            assert!(active.contains(&token(*i)), "suspension {i} lost");
            assert!(audited.contains(&token(*i)), "audit record of {i} lost");
        }
        assert!(
            store.outbox_len().unwrap() >= acknowledged.len() as u64,
            "undelivered alerts lost"
        );
    }

    // Restart, now with the sink up: the suspensions are back in the enforcer, and the alerts
    // queued before the crash are delivered.
    let sink = Receiver::serve(TcpListener::bind(("127.0.0.1", port)).unwrap()).unwrap();
    let actions = Actions::open(config.actions(), "crash-host".into(), now()).unwrap();
    let mut enforcer = Enforcer::new(config.enforcement.clone());
    let restored = actions
        .restore_into(&mut enforcer, now(), config.enforcement.memory.span())
        .unwrap();
    assert!(restored >= acknowledged.len());
    assert_eq!(enforcer.tracked_tokens(), restored);
    assert_eq!(enforcer.suspensions_in_force(), restored);
    let end = Instant::now() + Duration::from_secs(30);
    while actions.store().outbox_len().unwrap() > 0 {
        assert!(Instant::now() < end, "queued alerts were not delivered");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sink.requests().len() >= acknowledged.len());
    actions.shutdown();
}
