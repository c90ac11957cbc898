//! The admin commands (`audit`, `suspensions`, `suspend`, `lift`) through the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use redcap_monitor::edges::store::{AuditEntry, AuditKind, Store, StoreLimits};
use redcap_monitor::shared::model::{Span, Timestamp};
use redcap_monitor::shared::token::{MaskedToken, TokenFingerprint};
use serde_json::Value;

const FP: &str = "0123456789abcdef";
const OTHER_FP: &str = "fedcba9876543210";

struct Admin {
    _dir: tempfile::TempDir,
    store: PathBuf,
}

impl Admin {
    fn new() -> Admin {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("state").join("state.redb");
        Admin { _dir: dir, store }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_redcap-monitor"))
            .args(args)
            .arg("--store")
            .arg(&self.store)
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed and prints JSON lines; returns them.
    fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    fn open(&self) -> Store {
        Store::open(&self.store, StoreLimits::default()).unwrap()
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn now() -> Timestamp {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    Timestamp(nanos as u64)
}

fn fp(text: &str) -> TokenFingerprint {
    text.parse().unwrap()
}

#[test]
fn suspend_list_and_lift_by_hand_are_audited() {
    let admin = Admin::new();
    let out = admin.run(&[
        "suspend",
        FP,
        "--for",
        "1h",
        "--reason",
        "nightly full export",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(FP));

    let active = admin.json(&["suspensions"]);
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["token_fp"], FP);
    assert_eq!(active[0]["source"], "manual");
    assert_eq!(active[0]["reason"], "nightly full export");
    let length = active[0]["until"].as_f64().unwrap() - active[0]["since"].as_f64().unwrap();
    assert!((length - 3600.0).abs() < 1e-3, "{length}");

    let out = admin.run(&["lift", FP, "--reason", "spoke to the PI"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(admin.json(&["suspensions"]).is_empty());

    let audit = admin.json(&["audit"]);
    let kinds: Vec<&str> = audit.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["suspend", "lift"]);
    assert_eq!(audit[1]["details"]["reason"], "spoke to the PI");
    assert_eq!(audit[1]["details"]["source"], "manual");
    assert!(audit.iter().all(|r| r["token_fp"] == FP));
}

#[test]
fn suspend_until_lifted_stays_in_force() {
    let admin = Admin::new();
    let out = admin.run(&["suspend", FP, "--until-lifted", "--reason", "leaked token"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let active = admin.json(&["suspensions"]);
    assert_eq!(active[0]["until"], Value::Null);
}

#[test]
fn manual_suspend_takes_the_masked_form_of_a_seen_token() {
    let admin = Admin::new();
    admin
        .open()
        .touch_token(fp(FP), &MaskedToken("ABC…EF".into()), now())
        .unwrap();
    let out = admin.run(&["suspend", FP, "--for", "10m", "--reason", "r"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("has not seen"), "{}", stderr(&out));
    assert_eq!(admin.json(&["suspensions"])[0]["token_masked"], "ABC…EF");

    let out = admin.run(&["suspend", OTHER_FP, "--for", "10m", "--reason", "r"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("has not seen"), "{}", stderr(&out));
}

#[test]
fn audit_filters_by_age_and_token() {
    let admin = Admin::new();
    let store = admin.open();
    let now = now();
    let entries = [
        (now.minus(Span::from_secs(2 * 86_400)), FP),
        (now.minus(Span::from_secs(3600)), FP),
        (now.minus(Span::from_secs(60)), OTHER_FP),
    ];
    for (ts, token) in entries {
        store
            .append_audit(&AuditEntry {
                ts,
                kind: AuditKind::Violation,
                token: Some(fp(token)),
                details: serde_json::json!({"rule": "api_calls"}),
            })
            .unwrap();
    }
    drop(store);
    let seqs = |records: Vec<Value>| -> Vec<u64> {
        records.iter().map(|r| r["seq"].as_u64().unwrap()).collect()
    };
    assert_eq!(seqs(admin.json(&["audit"])), [1, 2, 3]);
    assert_eq!(seqs(admin.json(&["audit", "--since", "24h"])), [2, 3]);
    assert_eq!(seqs(admin.json(&["audit", "--token-fp", FP])), [1, 2]);
    assert_eq!(
        seqs(admin.json(&["audit", "--since", "24h", "--token-fp", FP])),
        [2]
    );
    assert_eq!(seqs(admin.json(&["audit", "--limit", "1"])), [3]);

    let out = admin.run(&["audit"]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("   SEQ  TIME (UTC)"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
}

#[test]
fn bad_fingerprint_or_duration_is_a_usage_error_saying_what_is_expected() {
    let admin = Admin::new();
    let cases: [(&[&str], &str); 4] = [
        (&["lift", "0123"], "16 hex digits"),
        (
            &["suspend", "xyz", "--for", "1h", "--reason", "r"],
            "16 hex digits",
        ),
        (
            &["suspend", FP, "--for", "1 week", "--reason", "r"],
            "use ms, s, m, h or d",
        ),
        (&["audit", "--since", "yesterday"], "whole number"),
    ];
    for (args, expected) in cases {
        let out = admin.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let out = admin.run(&["suspend", FP, "--reason", "r"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!admin.store.exists(), "nothing is created on bad input");
}

#[test]
fn commands_on_a_missing_store_say_so_without_creating_it() {
    let admin = Admin::new();
    for args in [&["audit"][..], &["suspensions"], &["lift", FP]] {
        let out = admin.run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains("no state store"), "{}", stderr(&out));
    }
    assert!(!admin.store.exists());
}

#[test]
fn lifting_a_token_that_is_not_suspended_fails() {
    let admin = Admin::new();
    admin.open();
    let out = admin.run(&["lift", FP]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not suspended"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn while_another_process_holds_the_store_reads_work_and_writes_say_why_not() {
    let admin = Admin::new();
    let held = admin.open();
    held.touch_token(fp(FP), &MaskedToken("ABC…EF".into()), now())
        .unwrap();
    let out = admin.run(&["suspend", FP, "--for", "1h", "--reason", "r"]);
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(
        message.contains("another process") && message.contains("takes no admin requests"),
        "{message}"
    );
    assert!(admin.json(&["suspensions"]).is_empty());
    assert!(admin.json(&["audit"]).is_empty());
    // Reads see the writer's later commits too.
    held.suspend(&redcap_monitor::edges::store::Suspension {
        token: fp(FP),
        masked: None,
        since: now(),
        until: None,
        reason: "auto".into(),
        level: 1,
        source: redcap_monitor::edges::store::Source::Auto,
    })
    .unwrap();
    assert_eq!(admin.json(&["suspensions"]).len(), 1);
}

#[test]
fn the_store_path_comes_from_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("from-config.redb");
    let config = dir.path().join("monitor.toml");
    std::fs::write(
        &config,
        format!("[store]\npath = {:?}\n", store.display().to_string()),
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_redcap-monitor"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = run(&["suspend", FP, "--for", "1h", "--reason", "r"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(Path::new(&store).exists());
    let out = run(&["suspensions"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(FP));

    std::fs::write(&config, "[store]\nmax_outbox = 0\n").unwrap();
    let out = run(&["suspensions"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("store.max_outbox"),
        "{}",
        stderr(&out)
    );
}

/// A daemon's action edge on the store, ticking on its own thread as `run` does.
struct RunningDaemon {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<redcap_monitor::edges::actions::Actions>>,
}

impl RunningDaemon {
    fn start(store: &Path) -> RunningDaemon {
        use std::sync::atomic::{AtomicBool, Ordering};
        let config = redcap_monitor::commands::config::Config::parse(
            &format!("[store]\npath = {:?}\n", store.display().to_string()),
            Path::new("test.toml"),
        )
        .unwrap();
        let mut actions = redcap_monitor::edges::actions::Actions::open(
            config.actions(),
            "test-host".into(),
            now(),
        )
        .unwrap();
        let mut enforcer =
            redcap_monitor::stages::policy::enforce::Enforcer::new(config.enforcement.clone());
        actions
            .restore_into(&mut enforcer, now(), config.enforcement.memory.span())
            .unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                enforcer.handle_timeout(now());
                actions.tick(&mut enforcer, now());
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            actions
        });
        RunningDaemon {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> redcap_monitor::edges::actions::Actions {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

#[test]
fn while_the_daemon_runs_suspend_and_lift_are_carried_out_by_it() {
    let admin = Admin::new();
    let daemon = RunningDaemon::start(&admin.store);
    let suspended = admin.json(&["suspend", FP, "--for", "1h", "--reason", "abuse"]);
    assert_eq!(suspended.len(), 1);
    assert_eq!(suspended[0]["token_fp"], FP);
    assert_eq!(suspended[0]["reason"], "abuse");
    assert_eq!(suspended[0]["source"], "manual");
    let until = suspended[0]["until"].as_f64().unwrap();
    let expected = now().as_secs_f64() + 3600.0;
    assert!((until - expected).abs() < 30.0, "{until} vs {expected}");
    // The read-only commands see the daemon's commits.
    let listed = admin.json(&["suspensions"]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["token_fp"], FP);

    let lifted = admin.json(&["lift", FP, "--reason", "paid the fine"]);
    assert_eq!(lifted[0]["token_fp"], FP);
    assert!(admin.json(&["suspensions"]).is_empty());
    let out = admin.run(&["lift", OTHER_FP]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not suspended"),
        "{}",
        stderr(&out)
    );

    let actions = daemon.stop();
    assert_eq!(actions.stats().suspensions, 1);
    assert_eq!(actions.stats().lifts, 1);
    let audit = actions.store().audit(None, Some(fp(FP)), 100).unwrap();
    let kinds: Vec<_> = audit.iter().map(|r| r.entry.kind).collect();
    assert_eq!(kinds, [AuditKind::Suspend, AuditKind::Lift]);
    assert_eq!(audit[1].entry.details["reason"], "paid the fine");
    actions.shutdown();
}
