//! `kill -9` during a burst of writes loses nothing the store acknowledged.
//!
//! The test binary re-runs itself as the writer: with `STORE_CRASH_CHILD` set, the
//! `writer_child` test appends audit records, suspensions and alerts in a tight loop and prints
//! each one after its commit returns. The parent kills it with SIGKILL mid-burst, reopens the store
//! and checks that every acknowledged write is there and the file is sound.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use redcap_monitor::edges::store::{
    AuditEntry, AuditKind, OutboxItem, Source, Store, StoreLimits, Suspension,
};
use redcap_monitor::shared::model::{Span, Timestamp};
use redcap_monitor::shared::token::TokenFingerprint;

const CHILD_ENV: &str = "STORE_CRASH_CHILD";
const ROUND_ENV: &str = "STORE_CRASH_ROUND";
const T0: Timestamp = Timestamp(1_700_000_000_000_000_000);

fn limits() -> StoreLimits {
    StoreLimits {
        audit_retention: Span::from_secs(365 * 86_400),
        max_outbox: 1_000_000,
        ..StoreLimits::default()
    }
}

fn token(round: u64, i: u64) -> TokenFingerprint {
    TokenFingerprint((round << 32 | i).to_be_bytes())
}

/// The writer. Runs only when re-invoked by `kill_9_loses_nothing_acknowledged`.
#[test]
fn writer_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let round: u64 = std::env::var(ROUND_ENV).unwrap().parse().unwrap();
    let store = Store::open(Path::new(&path), limits()).unwrap();
    // Bounded, so that a child whose parent died does not write forever.
    for i in 0..100_000u64 {
        let ts = T0.plus(Span::from_millis(i));
        let seq = store
            .append_audit(&AuditEntry {
                ts,
                kind: AuditKind::Decision,
                token: None,
                details: serde_json::json!({"round": round, "i": i}),
            })
            .unwrap();
        println!("audit {seq}");
        let fp = token(round, i);
        store
            .suspend(&Suspension {
                token: fp,
                masked: None,
                since: ts,
                until: None,
                reason: "crash test".into(),
                level: 1,
                source: Source::Auto,
            })
            .unwrap();
        println!("suspend {fp}");
        let id = format!("msg_{round}_{i}");
        store
            .enqueue_alert(&OutboxItem {
                id: id.clone(),
                sink: "generic".into(),
                payload: serde_json::json!({"i": i}),
                created: ts,
                attempts: 0,
                next_attempt: ts,
            })
            .unwrap();
        println!("alert {id}");
    }
}

#[derive(Default)]
struct Acknowledged {
    audit: BTreeSet<u64>,
    suspensions: BTreeSet<String>,
    alerts: BTreeSet<String>,
}

impl Acknowledged {
    fn note(&mut self, line: &str) {
        match line.split_once(' ') {
            Some(("audit", seq)) => {
                self.audit.insert(seq.parse().unwrap());
            }
            Some(("suspend", fp)) => {
                self.suspensions.insert(fp.to_owned());
            }
            Some(("alert", id)) => {
                self.alerts.insert(id.to_owned());
            }
            // The test harness's own lines ("running 1 test", ...).
            _ => {}
        }
    }

    fn len(&self) -> usize {
        self.audit.len() + self.suspensions.len() + self.alerts.len()
    }
}

/// Runs the writer until it has acknowledged `writes` writes, then SIGKILLs it. Returns every
/// write it acknowledged, including those still in the pipe when it died.
fn write_then_kill(path: &Path, round: u64, writes: usize) -> Acknowledged {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "writer_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .env(ROUND_ENV, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Acknowledged::default();
    while acked.len() < writes {
        let line = lines
            .next()
            .expect("the writer stopped before being killed")
            .unwrap();
        acked.note(&line);
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "the writer must die by the signal");
    for line in lines {
        acked.note(&line.unwrap());
    }
    acked
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let mut all = Acknowledged::default();
    for round in 0..4u64 {
        // Different counts so that the kill lands at different points of a transaction.
        let acked = write_then_kill(&path, round, 150 + 41 * round as usize);
        assert!(acked.len() >= 150);
        all.audit.extend(acked.audit);
        all.suspensions.extend(acked.suspensions);
        all.alerts.extend(acked.alerts);

        if round == 0 {
            // An admin's read right after the crash, before the daemon is back: it repairs the
            // file as a writer would, then reads.
            let reader = Store::open_read_only(&path).expect("readable after kill -9");
            assert!(!reader.active_suspensions(T0).unwrap().is_empty());
        }
        let mut store = Store::open(&path, limits()).expect("the store reopens after kill -9");
        assert!(store.check_integrity().unwrap(), "the store is not corrupt");

        let audit = store.audit(None, None, usize::MAX).unwrap();
        let stored: BTreeSet<u64> = audit.iter().map(|r| r.seq).collect();
        let missing: Vec<_> = all.audit.difference(&stored).collect();
        assert!(
            missing.is_empty(),
            "round {round}: audit records lost: {missing:?}"
        );
        // Each append is its own transaction, so what survives is a prefix with no holes.
        let max = stored.last().copied().unwrap_or(0);
        assert_eq!(
            stored,
            (1..=max).collect(),
            "round {round}: audit has holes"
        );

        let active: BTreeSet<String> = store
            .active_suspensions(T0)
            .unwrap()
            .iter()
            .map(|s| s.token.to_string())
            .collect();
        let missing: Vec<_> = all.suspensions.difference(&active).collect();
        assert!(
            missing.is_empty(),
            "round {round}: suspensions lost: {missing:?}"
        );

        let queued: BTreeSet<String> = store
            .due_alerts(Timestamp(u64::MAX), usize::MAX)
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect();
        let missing: Vec<_> = all.alerts.difference(&queued).collect();
        assert!(
            missing.is_empty(),
            "round {round}: alerts lost: {missing:?}"
        );

        // The store keeps working after recovery.
        let entry = AuditEntry {
            ts: T0,
            kind: AuditKind::Decision,
            token: None,
            details: serde_json::json!({"after_round": round}),
        };
        assert_eq!(store.append_audit(&entry).unwrap(), max + 1);
    }
}
