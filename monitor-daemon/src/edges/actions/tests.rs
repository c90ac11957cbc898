//! Scenarios with a compressed clock: API traffic built as TCP segments goes through the real
//! [`Pipeline`] and [`Actions`] (store on disk, exec hooks, a webhook receiver on loopback), with
//! time taken from the segments, so an hour of suspension passes in a moment.

use crate::commands::config::Config;
use crate::stages::usage::Day;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::*;
use crate::edges::alerts::tests::verify_standard_webhook;
use crate::edges::output::{CallRecord, Transport, ViolationRecord, write_line};
use crate::shared::model::{Endpoint, TcpSegment};
use crate::shared::token::{RawToken, SiteKey};
use crate::stages::pipeline::Pipeline;
use crate::stages::policy::enforce::HoldReason;
use test_support::{Receiver, Recorded, Reply as HttpReply};

const T0_SECS: u64 = 1_700_000_000;
const ABUSER: &str = "A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0";
const COMPLIANT: &str = "C0C0C0C0C0C0C0C0C0C0C0C0C0C0C0C0";
const SECRET_KEY: [u8; 32] = [0x42; 32];
const WAIT: Duration = Duration::from_secs(15);

fn at(ms: u64) -> Timestamp {
    Timestamp((T0_SECS * 1000 + ms) * 1_000_000)
}

/// One segment to feed, owned.
struct Packet {
    ts: Timestamp,
    client_port: u16,
    to_server: bool,
    payload: Vec<u8>,
}

/// API calls as packets, each on its own connection; fed in time order.
#[derive(Default)]
struct Traffic {
    packets: Vec<Packet>,
}

/// Client ports are never reused within a test process, so no call lands on an old connection.
static NEXT_PORT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Traffic {
    fn call(&mut self, start_ms: u64, token: &str, ttfb_ms: u64) {
        self.call_answered(start_ms, token, ttfb_ms, 200);
    }

    /// A call answered with `status` (REDCap's own JSON answer).
    fn call_answered(&mut self, start_ms: u64, token: &str, ttfb_ms: u64, status: u16) {
        let n = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (n % 40_000) as u16;
        let body = format!("token={token}&content=record&format=json&records[0]=1");
        let request = format!(
            "POST /api/ HTTP/1.1\r\nHost: redcap\r\nContent-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"
        )
        .into_bytes();
        self.packets.push(Packet {
            ts: at(start_ms),
            client_port: port,
            to_server: true,
            payload: request.into_bytes(),
        });
        self.packets.push(Packet {
            ts: at(start_ms + ttfb_ms),
            client_port: port,
            to_server: false,
            payload: response,
        });
    }

    fn sorted(mut self) -> Vec<Packet> {
        self.packets.sort_by_key(|p| p.ts);
        self.packets
    }
}

fn segment(p: &Packet) -> TcpSegment<'_> {
    let client = Endpoint {
        ip: "10.0.0.2".parse().unwrap(),
        port: p.client_port,
    };
    let server = Endpoint {
        ip: "10.0.0.1".parse().unwrap(),
        port: 80,
    };
    let (src, dst, seq) = if p.to_server {
        (client, server, 1000)
    } else {
        (server, client, 5000)
    };
    TcpSegment::sample(p.ts, (src, dst), seq, &p.payload)
}

/// The pipeline and the action edge, driven as `run` drives them, on the packets' clock.
struct Daemon {
    pipeline: Pipeline,
    actions: Actions,
    decisions: Vec<Decision>,
    /// What `run` would write of each verdict (JSON lines of calls, violations and decisions),
    /// and each verdict's `Debug` form, as it reached the action edge.
    records: Vec<u8>,
    /// Verdicts whose call still held its raw token when it reached the action edge.
    kept_raw_tokens: usize,
    clock: Timestamp,
}

/// Records a verdict as `run` would before acting on it, then acts on it.
fn act(
    actions: &mut Actions,
    daemon: (&mut Vec<Decision>, &mut Vec<u8>, &mut usize),
    mut v: Verdict,
) {
    let (decisions, records, kept) = daemon;
    write_line(records, &CallRecord::of(&v, Transport::Tcp)).unwrap();
    for record in ViolationRecord::all_of(&v) {
        write_line(records, &record).unwrap();
    }
    if let Some(decision) = &v.decision {
        write_line(records, decision).unwrap();
    }
    writeln!(records, "{v:?}").unwrap();
    *kept += usize::from(v.call.raw_token.is_held());
    actions.on_verdict(&mut v);
    assert!(
        !v.call.raw_token.is_held(),
        "the action edge takes the raw token"
    );
    decisions.extend(v.decision.clone());
}

impl Daemon {
    fn new(config: &Config) -> Daemon {
        let mut pipeline = Pipeline::new(config.pipeline(), SiteKey::from_bytes([9; 32]));
        let actions = Actions::open(config.actions(), "web2".into(), at(0)).unwrap();
        actions
            .restore_into(
                pipeline.enforcer_mut(),
                at(0),
                config.enforcement.memory.span(),
            )
            .unwrap();
        Daemon {
            pipeline,
            actions,
            decisions: Vec::new(),
            records: Vec::new(),
            kept_raw_tokens: 0,
            clock: at(0),
        }
    }

    fn feed(&mut self, packets: &[Packet]) {
        for packet in packets {
            self.idle_until(packet.ts);
            let Daemon {
                pipeline,
                actions,
                decisions,
                records,
                kept_raw_tokens,
                ..
            } = self;
            pipeline.push_segment(&segment(packet), &mut |v| {
                act(actions, (decisions, records, kept_raw_tokens), v)
            });
        }
    }

    /// An admin's suspension of `token` at `now` (`for_s` `None`: until lifted), as the admin
    /// API or a request file hands it in.
    fn suspend(
        &mut self,
        token: TokenFingerprint,
        for_s: Option<f64>,
        reason: &str,
        now: Timestamp,
    ) -> Reply {
        let request = Request::Suspend {
            token_fp: token,
            for_s,
            reason: reason.into(),
        };
        self.actions
            .execute(&request, self.pipeline.enforcer_mut(), now)
    }

    /// An admin's lift of `token` at `now`.
    fn lift(&mut self, token: TokenFingerprint, reason: &str, now: Timestamp) -> Reply {
        let request = Request::Lift {
            token_fp: token,
            reason: reason.into(),
        };
        self.actions
            .execute(&request, self.pipeline.enforcer_mut(), now)
    }

    /// Time passes without packets, in one-second ticks.
    fn idle_until(&mut self, until: Timestamp) {
        while self.clock < until {
            self.clock = self.clock.plus(Span::from_secs(1)).min(until);
            let Daemon {
                pipeline,
                actions,
                decisions,
                records,
                kept_raw_tokens,
                clock,
            } = self;
            pipeline.tick(*clock, &mut |v| {
                act(actions, (decisions, records, kept_raw_tokens), v)
            });
            actions.step(pipeline, *clock);
        }
    }
}

fn fingerprint(token: &str) -> TokenFingerprint {
    SiteKey::from_bytes([9; 32]).fingerprint(&RawToken::parse(token.as_bytes()).unwrap())
}

/// A hook script that appends its stdin, argv and environment to files in `dir`.
fn recording_hook(dir: &Path, name: &str) -> String {
    let script = dir.join(format!("{name}.sh"));
    let d = dir.display();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat >> '{d}/{name}.stdin'\necho >> '{d}/{name}.stdin'\n\
             echo \"$@\" >> '{d}/{name}.argv'\nenv >> '{d}/{name}.env'\necho ran {name}\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!(
        "name = \"{name}\"\nkind = \"exec\"\nprogram = \"{}\"\n\
         args = [\"{{action}}\", \"{{fingerprint}}\", \"{{masked}}\", \"{{reason}}\"]\n\
         timeout = \"5s\"\n",
        script.display()
    )
}

fn scenario_config(dir: &Path, receiver: &Receiver) -> Config {
    let hooks = format!(
        "[[hooks.suspend]]\n{suspend}[[hooks.lift]]\n{lift}",
        suspend = recording_hook(dir, "on_suspend"),
        lift = recording_hook(dir, "on_lift"),
    );
    config_with_hooks(dir, receiver, &hooks)
}

/// The scenarios' store and alert sink, with `hooks` (TOML tables).
fn config_with_hooks(dir: &Path, receiver: &Receiver, hooks: &str) -> Config {
    let secret = dir.join("siem.whsec");
    test_support::write_secret(&secret, format!("whsec_{}\n", STANDARD.encode(SECRET_KEY)));
    let text = format!(
        "[store]\npath = \"{store}\"\n\
         [alerts]\nbackoff_base = \"100ms\"\nrequest_timeout = \"2s\"\n\
         [[alerts.sinks]]\nname = \"siem\"\nkind = \"generic\"\nurl = \"{url}\"\n\
         secret_file = \"{secret}\"\n{hooks}",
        store = dir.join("state.redb").display(),
        url = receiver.url("/hook"),
        secret = secret.display(),
    );
    Config::parse(&text, Path::new("scenario.toml")).unwrap()
}

/// Abuser and compliant token, two rounds: the abuser is warned, then suspended once the server
/// (slowed by it) is degraded, the suspension expires and is lifted, and the next round's
/// suspension is twice as long. The compliant token is never named.
fn run_scenario(dir: &Path, receiver: &Receiver) -> Daemon {
    run_scenario_with(&scenario_config(dir, receiver))
}

/// [`run_scenario`]'s traffic under `config`.
fn run_scenario_with(config: &Config) -> Daemon {
    let mut daemon = Daemon::new(config);
    let mut traffic = Traffic::default();
    // Round 1: the abuser calls every 4 s for two minutes, each call taking the server 3 s.
    for i in 0..30 {
        traffic.call(i * 4_000, ABUSER, 3_000);
    }
    // Round 2, after the first suspension (1 h) has run out.
    for i in 0..30 {
        traffic.call(3_700_000 + i * 4_000, ABUSER, 3_000);
    }
    // A compliant script: one fast call every 25 s throughout.
    for i in 0..160 {
        traffic.call(1_000 + i * 25_000, COMPLIANT, 50);
    }
    daemon.feed(&traffic.sorted());
    daemon.idle_until(at(4_100_000));
    daemon.actions.flush();
    daemon
}

fn wait_for_file_lines(path: &Path, n: usize) -> Vec<String> {
    let end = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect();
        if lines.len() >= n || Instant::now() > end {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn events(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[test]
fn an_abuser_is_warned_then_suspended_while_degraded_lifted_on_expiry_and_escalated() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    // The first delivery fails with 503 and Retry-After: it must come again with the same id.
    receiver.script([HttpReply::status(503).with("Retry-After", "1")]);
    let daemon = run_scenario(dir.path(), &receiver);
    let abuser = fingerprint(ABUSER);
    let compliant = fingerprint(COMPLIANT);

    // Decisions: warned first (first offence, then a healthy server), suspended once degraded.
    let mine: Vec<&Decision> = daemon.decisions.iter().collect();
    assert!(mine.iter().all(|d| d.token_fp == abuser), "only the abuser");
    assert!(matches!(
        mine[0].action,
        Action::Warn {
            reason: HoldReason::FirstOffence
        }
    ));
    assert!(mine.iter().any(|d| matches!(
        d.action,
        Action::Warn {
            reason: HoldReason::ServerHealthy
        }
    )));
    let suspensions: Vec<(f64, bool, u32, Option<f64>)> = mine
        .iter()
        .filter_map(|d| match d.action {
            Action::Suspend { duration_s, .. } => Some((
                duration_s,
                d.evidence.server_degraded,
                d.evidence.suspensions_remembered,
                d.evidence.load_share,
            )),
            Action::Warn { .. } => None,
        })
        .collect();
    assert_eq!(suspensions.len(), 2, "{suspensions:?}");
    assert_eq!(
        (suspensions[0].0, suspensions[0].1, suspensions[0].2),
        (3600.0, true, 1)
    );
    assert_eq!(
        (suspensions[1].0, suspensions[1].2),
        (7200.0, 2),
        "escalated"
    );
    assert!(
        suspensions[0].3.unwrap() > 0.9,
        "the abuser carries the load"
    );

    // The store: the second suspension is in force; the first was lifted when it expired.
    let store = daemon.actions.store();
    let active = store.active_suspensions(at(4_100_000)).unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!((active[0].token, active[0].level), (abuser, 2));
    assert_eq!(active[0].masked.as_ref().unwrap().0, "A0A…A0");
    let audit = store.audit(None, Some(abuser), 10_000).unwrap();
    let count = |kind| audit.iter().filter(|r| r.entry.kind == kind).count();
    assert_eq!(count(AuditKind::Suspend), 2);
    assert_eq!(count(AuditKind::Lift), 1);
    assert!(count(AuditKind::Violation) > 5);
    // While suspended, its violations are counted and audited as one record at the lift.
    let first_suspend = audit
        .iter()
        .find(|r| r.entry.kind == AuditKind::Suspend)
        .unwrap();
    let summary = audit
        .iter()
        .find(|r| r.entry.details["while_suspended"].is_u64())
        .expect("a summary of the violations while suspended");
    assert!(summary.entry.details["while_suspended"].as_u64().unwrap() >= 10);
    assert_eq!(summary.entry.kind, AuditKind::Violation);
    assert!(
        !audit.iter().any(|r| r.entry.kind == AuditKind::Violation
            && r.entry.ts > first_suspend.entry.ts
            && r.entry.ts < summary.entry.ts
            && r.entry.details["while_suspended"].is_null()),
        "no single violation records while suspended"
    );
    assert_eq!(count(AuditKind::Decision), mine.len());
    let lift = audit
        .iter()
        .find(|r| r.entry.kind == AuditKind::Lift)
        .unwrap();
    assert_eq!(lift.entry.details["reason"], "expired");
    assert!(store.audit(None, Some(compliant), 100).unwrap().is_empty());
    assert_eq!(
        store.token_seen(compliant).unwrap().unwrap().calls,
        160,
        "first/last seen counts every call"
    );

    // Hooks: suspend, lift, suspend, with the event on stdin and nothing secret anywhere.
    let suspend_runs = wait_for_file_lines(&dir.path().join("on_suspend.stdin"), 2);
    let lift_runs = wait_for_file_lines(&dir.path().join("on_lift.stdin"), 1);
    assert_eq!((suspend_runs.len(), lift_runs.len()), (2, 1));
    let first: serde_json::Value = serde_json::from_str(&suspend_runs[0]).unwrap();
    assert_eq!(first["action"], "suspend");
    assert_eq!(first["token_fp"], abuser.to_string());
    assert_eq!(first["token_masked"], "A0A…A0");
    assert_eq!(first["evidence"]["action"], "suspend");
    assert!(first["evidence"]["evidence"]["server_degraded"] == true);
    let lifted: serde_json::Value = serde_json::from_str(&lift_runs[0]).unwrap();
    assert_eq!(
        (lifted["action"].as_str(), lifted["reason"].as_str()),
        (Some("lift"), Some("expired"))
    );
    let argv = std::fs::read_to_string(dir.path().join("on_suspend.argv")).unwrap();
    assert!(
        argv.starts_with(&format!("suspend {abuser} A0A…A0 broke api_calls")),
        "{argv}"
    );
    // Hook results are audited (the hook thread writes them as each hook ends).
    let end = Instant::now() + WAIT;
    while store
        .audit(None, Some(abuser), 10_000)
        .unwrap()
        .iter()
        .filter(|r| r.entry.kind == AuditKind::HookResult)
        .count()
        < 3
    {
        assert!(Instant::now() < end, "hook results were not audited");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Alerts: each delivered, signed; the refused first one again under the same id.
    let expected = [
        "violation",
        "degraded",
        "suspended",
        // The warnings held back by the cooldown, summarised when it ends.
        "violation",
        "recovered",
        "lifted",
        // Round 2 starts with a warning: the server is healthy again.
        "violation",
        "degraded",
        "suspended",
        "recovered",
    ];
    let requests = receiver.wait_for(expected.len() + 1, WAIT);
    let mut seen = events(&requests);
    for request in &requests {
        verify_standard_webhook(request, &SECRET_KEY).unwrap();
    }
    let first_id = requests[0].header("webhook-id").unwrap();
    let retries: Vec<&Recorded> = requests
        .iter()
        .filter(|r| r.header("webhook-id") == Some(first_id))
        .collect();
    assert_eq!(retries.len(), 2, "delivered once after the 503");
    assert!(retries[1].at.duration_since(retries[0].at) >= Duration::from_millis(900));
    // Delivery order is not alert order (a retried alert waits), so compare as sets.
    seen.remove(0);
    seen.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(seen, want);
    for request in &requests {
        let body = request.json();
        if body["token_fp"].is_string() {
            assert_eq!(body["token_fp"], abuser.to_string());
        }
    }

    // Nothing the daemon wrote holds a raw token: store file, hook files, webhook bodies.
    let mut written: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.extension().is_none_or(|e| e != "sh") {
            written.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    for request in &requests {
        written.push(("webhook body".into(), request.body.clone()));
    }
    written.push(("records".into(), daemon.records.clone()));
    assert_eq!(daemon.kept_raw_tokens, 0, "no hook asked for the raw token");
    assert!(written.iter().any(|(p, _)| p.ends_with("state.redb")));
    for (path, bytes) in &written {
        for token in [ABUSER, COMPLIANT] {
            assert!(!holds(bytes, token), "{} holds a raw token", path.display());
        }
    }
    daemon.actions.shutdown();
}

/// Everything this test process logs (debug and above, every thread), for scans for raw tokens.
fn captured_log() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        // Fails only if another test set one first: then the log scan below finds no lines and
        // fails rather than passing blind.
        let _ = tracing::subscriber::set_global_default(subscriber);
        log
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut log) = self.0.lock() {
            log.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `bytes` hold `token` in either case.
fn holds(bytes: &[u8], token: &str) -> bool {
    [token.to_owned(), token.to_lowercase()]
        .iter()
        .any(|form| memchr::memmem::find(bytes, form.as_bytes()).is_some())
}

#[test]
fn a_pass_raw_token_suspend_hook_gets_the_raw_token_on_stdin_and_nothing_else_does() {
    let log = captured_log();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    // The hook that gets the token also echoes its stdin to stdout: the recorded outcome must
    // hold it masked. A second suspend hook, and a lift hook asking for the token, get none.
    let d = dir.path().display();
    let hooks = format!(
        "[[hooks.suspend]]\n{with}pass_raw_token = true\n\
         [[hooks.suspend]]\n{without}\
         [[hooks.lift]]\n{lift}pass_raw_token = true\n",
        with = recording_hook(dir.path(), "with_token"),
        without = recording_hook(dir.path(), "without_token"),
        lift = recording_hook(dir.path(), "lift_asks"),
    );
    let script = dir.path().join("with_token.sh");
    let mut text = std::fs::read_to_string(&script).unwrap();
    text.push_str(&format!("tail -n 2 '{d}/with_token.stdin'\n"));
    std::fs::write(&script, text).unwrap();
    let config = config_with_hooks(dir.path(), &receiver, &hooks);
    let daemon = run_scenario_with(&config);
    let abuser = fingerprint(ABUSER);
    assert!(daemon.kept_raw_tokens > 0, "calls kept their raw token");
    let suspensions = daemon
        .decisions
        .iter()
        .filter(|d| matches!(d.action, Action::Suspend { .. }))
        .count();
    assert_eq!(suspensions, 2);

    // The hook with `pass_raw_token`: the raw token on stdin, once per suspension.
    let with = wait_for_file_lines(&dir.path().join("with_token.stdin"), 2);
    assert_eq!(with.len(), 2);
    for line in &with {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(event["action"], "suspend");
        assert_eq!(event["token_fp"], abuser.to_string());
        assert_eq!(event["raw_token"], ABUSER);
    }
    // Neither its argv nor its environment holds it.
    for file in ["with_token.argv", "with_token.env"] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap();
        assert!(!bytes.is_empty(), "{file} was written");
        assert!(!holds(&bytes, ABUSER), "{file} holds the raw token");
    }
    // The hook without it, and the lift hook (no raw token is kept until a lift), get none.
    let without = wait_for_file_lines(&dir.path().join("without_token.stdin"), 2);
    let lift = wait_for_file_lines(&dir.path().join("lift_asks.stdin"), 1);
    assert_eq!((without.len(), lift.len()), (2, 1));
    for line in without.iter().chain(&lift) {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(event.get("raw_token").is_none(), "{line}");
    }
    // Every hook result is audited before the files are scanned.
    let store = daemon.actions.store();
    let end = Instant::now() + WAIT;
    let results = loop {
        let results: Vec<serde_json::Value> = store
            .audit(None, Some(abuser), 10_000)
            .unwrap()
            .into_iter()
            .filter(|r| r.entry.kind == AuditKind::HookResult)
            .map(|r| r.entry.details)
            .collect();
        if results.len() >= 5 {
            break results;
        }
        assert!(Instant::now() < end, "hook results were not audited");
        std::thread::sleep(Duration::from_millis(20));
    };
    let echoed = results.iter().find(|r| r["hook"] == "with_token").unwrap()["stdout"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(echoed.contains("\"raw_token\":\"[token]\""), "{echoed}");
    let requests = receiver.wait_for(1, WAIT);
    let mut daemon = daemon;
    daemon.actions.flush();
    let Daemon {
        actions, records, ..
    } = daemon;
    actions.shutdown();

    // Nowhere else: store, other hooks' files, webhook bodies, records, `Debug`, the log.
    let mut written: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_file() && !name.ends_with(".sh") && name != "with_token.stdin" {
            written.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    for request in &requests {
        written.push(("webhook body".into(), request.body.clone()));
    }
    assert!(
        String::from_utf8_lossy(&records).contains("raw_token: <redacted>"),
        "the verdicts' Debug shows the token held, redacted"
    );
    written.push(("records and Debug".into(), records));
    let logged = log.lock().unwrap().clone();
    let logged_text = String::from_utf8_lossy(&logged);
    assert!(
        logged_text.contains("token suspended") && logged_text.contains("hook ran"),
        "the log was captured"
    );
    written.push(("log".into(), logged));
    assert!(written.iter().any(|(p, _)| p.ends_with("state.redb")));
    assert!(
        written
            .iter()
            .any(|(p, _)| p.ends_with("without_token.stdin"))
    );
    for (path, bytes) in &written {
        for token in [ABUSER, COMPLIANT] {
            assert!(!holds(bytes, token), "{} holds a raw token", path.display());
        }
    }
    let with = std::fs::read(dir.path().join("with_token.stdin")).unwrap();
    assert!(!holds(&with, COMPLIANT), "only the suspended call's token");
}

#[test]
fn after_a_restart_suspensions_hold_and_the_next_one_escalates() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = scenario_config(dir.path(), &receiver);
    let abuser = fingerprint(ABUSER);
    {
        let mut daemon = Daemon::new(&config);
        let mut traffic = Traffic::default();
        for i in 0..30 {
            traffic.call(i * 4_000, ABUSER, 3_000);
        }
        daemon.feed(&traffic.sorted());
        daemon.idle_until(at(130_000));
        assert!(
            daemon
                .decisions
                .iter()
                .any(|d| matches!(d.action, Action::Suspend { .. }))
        );
        daemon.actions.shutdown();
    }
    // A new daemon on the same store: the suspension is still in force, so the abuser's calls
    // decide nothing new; once it has expired, the next suspension is the second step.
    let mut daemon = Daemon::new(&config);
    daemon.clock = at(200_000);
    let mut traffic = Traffic::default();
    for i in 0..10 {
        traffic.call(200_000 + i * 4_000, ABUSER, 3_000);
    }
    daemon.feed(&traffic.sorted());
    daemon.idle_until(at(250_000));
    assert!(daemon.decisions.is_empty(), "{:?}", daemon.decisions);
    assert_eq!(daemon.pipeline.enforcer_mut().stats().while_suspended, 7);

    let mut traffic = Traffic::default();
    for i in 0..30 {
        traffic.call(3_800_000 + i * 4_000, ABUSER, 3_000);
    }
    daemon.feed(&traffic.sorted());
    daemon.idle_until(at(3_930_000));
    let suspended: Vec<f64> = daemon
        .decisions
        .iter()
        .filter_map(|d| match d.action {
            Action::Suspend { duration_s, .. } => Some(duration_s),
            Action::Warn { .. } => None,
        })
        .collect();
    assert_eq!(suspended, [7200.0], "escalation survived the restart");
    assert!(
        daemon.actions.stats().lifts >= 1,
        "the first expired and was lifted"
    );
    assert_eq!(
        daemon
            .actions
            .store()
            .active_suspensions(at(3_930_000))
            .unwrap()[0]
            .token,
        abuser
    );
    daemon.actions.shutdown();
}

#[test]
fn capture_loss_is_alerted_when_the_counters_grow_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = scenario_config(dir.path(), &receiver);
    let mut actions = Actions::open(config.actions(), "web2".into(), at(0)).unwrap();
    actions.observe_capture_loss(0, serde_json::json!({}), at(1_000));
    actions.observe_capture_loss(7, serde_json::json!({"kernel.ring_full": 7}), at(2_000));
    actions.observe_capture_loss(7, serde_json::json!({"kernel.ring_full": 7}), at(3_000));
    let requests = receiver.wait_for(1, WAIT);
    assert_eq!(events(&requests), ["capture_loss"]);
    assert_eq!(requests[0].json()["lost"], 7);
    assert_eq!(actions.stats().capture_loss_alerts, 1);
    actions.shutdown();
}

#[test]
fn a_manual_suspension_holds_in_the_enforcer_and_a_lift_releases_it() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = scenario_config(dir.path(), &receiver);
    let mut daemon = Daemon::new(&config);
    let abuser = fingerprint(ABUSER);
    let reply = daemon.suspend(abuser, None, "by hand", at(0));
    assert!(reply.ok, "{reply:?}");
    daemon.idle_until(at(1_000));
    let mut traffic = Traffic::default();
    for i in 0..6 {
        traffic.call(2_000 + i * 1_000, ABUSER, 10);
    }
    daemon.feed(&traffic.sorted());
    daemon.idle_until(at(10_000));
    assert!(
        daemon.decisions.is_empty(),
        "suspended tokens get no new decisions"
    );
    let reply = daemon.lift(abuser, "ok", at(10_000));
    assert!(reply.ok, "{reply:?}");
    daemon.idle_until(at(11_000));
    let mut traffic = Traffic::default();
    for i in 0..5 {
        traffic.call(20_000 + i * 1_000, ABUSER, 10);
    }
    daemon.feed(&traffic.sorted());
    daemon.idle_until(at(30_000));
    assert!(
        !daemon.decisions.is_empty(),
        "after the lift the token is judged again"
    );
    let missing = daemon.lift(fingerprint(COMPLIANT), "ok", at(30_000));
    assert!(!missing.ok && missing.error.unwrap().contains("is not suspended"));
    daemon.actions.shutdown();
}

#[test]
fn reconfigure_swaps_hooks_and_sinks_and_keeps_suspensions() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = scenario_config(dir.path(), &receiver);
    let mut daemon = Daemon::new(&config);
    let abuser = fingerprint(ABUSER);
    let suspended = daemon.suspend(abuser, Some(3600.0), "before the reload", at(0));
    assert!(suspended.ok);
    // Delivered before the reload (an alert still queued for a sink the reload removes is given
    // up, with an audit record).
    let before = receiver.wait_for(1, WAIT).len();
    // The new configuration: another suspend hook, another sink (the old one gets nothing more).
    let other = Receiver::start();
    let mut text = format!(
        "[store]\npath = \"{}\"\n\
         [[alerts.sinks]]\nname = \"team\"\nkind = \"slack\"\nurl = \"{}\"\n\
         [[hooks.suspend]]\n{}",
        dir.path().join("state.redb").display(),
        other.url("/slack"),
        recording_hook(dir.path(), "reloaded"),
    );
    text.push('\n');
    let reloaded = Config::parse(&text, Path::new("reloaded.toml")).unwrap();
    let prepared = daemon.actions.prepare_reload(reloaded.actions()).unwrap();
    daemon.actions.reconfigure(prepared, reloaded.actions());
    let compliant = fingerprint(COMPLIANT);
    let reply = daemon.suspend(compliant, Some(60.0), "after the reload", at(1_000));
    assert!(reply.ok);
    let slack = other.wait_for(1, WAIT);
    assert_eq!(slack.len(), 1);
    assert!(
        slack[0].json()["text"]
            .as_str()
            .unwrap()
            .contains("suspended")
    );
    let runs = wait_for_file_lines(&dir.path().join("reloaded.stdin"), 1);
    assert_eq!(runs.len(), 1, "the new hook ran");
    // Hooks run in order on one thread: by now the old hook has run for the first suspension.
    let old_hook = std::fs::read_to_string(dir.path().join("on_suspend.stdin")).unwrap();
    assert_eq!(
        old_hook.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "the old hook ran only before the reload"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        receiver.requests().len(),
        before,
        "the old sink gets nothing more"
    );
    // State is kept: both suspensions are in force.
    let active = daemon
        .actions
        .store()
        .active_suspensions(at(1_000))
        .unwrap();
    assert_eq!(active.len(), 2);
    daemon.actions.shutdown();
}

#[test]
fn refused_tokens_are_not_stored_and_a_probing_client_is_audited_and_alerted_by_address() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = config_with_hooks(dir.path(), &receiver, "");
    let mut daemon = Daemon::new(&config);
    let mut traffic = Traffic::default();
    // One real token, then ten made-up ones the server refuses, all from 10.0.0.2 in 20 s.
    traffic.call(0, COMPLIANT, 50);
    let made_up: Vec<String> = (0..10)
        .map(|i| format!("{:032X}", 0xBAD0_0000_u64 + i))
        .collect();
    for (i, token) in made_up.iter().enumerate() {
        traffic.call_answered(1_000 + i as u64 * 2_000, token, 50, 403);
    }
    daemon.feed(&traffic.sorted());
    daemon.idle_until(at(200_000));
    daemon.actions.flush();

    let store = daemon.actions.store();
    assert!(store.token_seen(fingerprint(COMPLIANT)).unwrap().is_some());
    for token in &made_up {
        assert!(
            store.token_seen(fingerprint(token)).unwrap().is_none(),
            "a refused token is not kept"
        );
    }
    assert_eq!(daemon.actions.stats().tokens_not_kept, 10);
    let audit = store.audit(None, None, 10_000).unwrap();
    let probing: Vec<&crate::edges::store::AuditRecord> = audit
        .iter()
        .filter(|r| r.entry.details["rule"] == "refused_calls")
        .collect();
    // The rate limit is 3 a minute: the 4th to 10th refused calls are over it.
    assert_eq!(probing.len(), 7, "{audit:?}");
    assert_eq!(probing[0].entry.kind, AuditKind::Violation);
    assert_eq!(probing[0].entry.token, None);
    assert_eq!(probing[0].entry.details["client"], "10.0.0.2");
    assert_eq!(probing[0].entry.details["count"], 4);

    // One probing alert (the rest held by the cooldown), naming the address and no token.
    let end = Instant::now() + WAIT;
    let alert = loop {
        let found = receiver
            .requests()
            .iter()
            .map(|r| r.json())
            .find(|body| body["event"] == "probing");
        if let Some(body) = found {
            break body;
        }
        assert!(Instant::now() < end, "no probing alert was delivered");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(alert["client"], "10.0.0.2");
    assert_eq!(alert["rule"], "refused_calls");
    assert_eq!(
        (alert["limit"].as_u64(), alert["count"].as_u64()),
        (Some(3), Some(4))
    );
    assert!(alert["token_fp"].is_null());
    // The violations file gets a line per refused call over the rule, keyed by the address.
    let records = String::from_utf8_lossy(&daemon.records);
    let lines: Vec<serde_json::Value> = records
        .lines()
        .filter(|l| l.contains("\"refused_calls\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[0]["client"], "10.0.0.2");
    assert!(lines[0]["token_fp"].is_null());
    assert_eq!(
        (lines[0]["count"].as_u64(), lines[6]["count"].as_u64()),
        (Some(4), Some(10))
    );
}

#[test]
fn request_files_and_handed_in_requests_wait_in_one_queue_and_are_answered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = scenario_config(dir.path(), &receiver);
    let mut daemon = Daemon::new(&config);
    let abuser = fingerprint(ABUSER);
    // A request file, as `redcap-monitor suspend` writes it while the daemon runs.
    let file = daemon.actions.request_dir().join("1-1.json");
    let suspend = Request::Suspend {
        token_fp: abuser,
        for_s: None,
        reason: "by file".into(),
    };
    std::fs::write(&file, serde_json::to_vec(&suspend).unwrap()).unwrap();
    // The admin API's lift, handed in before the tick that takes the file: it waits its turn.
    let answers = Arc::new(Mutex::new(Vec::new()));
    let seen = answers.clone();
    daemon.actions.submit(AdminRequest {
        request: Ok(Request::Lift {
            token_fp: abuser,
            reason: "by api".into(),
        }),
        reply: ReplyTo::Callback(Box::new(move |reply| seen.lock().unwrap().push(reply))),
    });
    daemon.idle_until(at(1_000));
    let answers = answers.lock().unwrap();
    assert_eq!(answers.len(), 1);
    assert!(
        !answers[0].ok
            && answers[0]
                .error
                .as_deref()
                .unwrap()
                .contains("is not suspended"),
        "the lift went first, before the file's suspension: {:?}",
        answers[0]
    );
    let reply: Reply =
        serde_json::from_slice(&std::fs::read(file.with_extension("reply")).unwrap()).unwrap();
    assert!(reply.ok, "{reply:?}");
    assert_eq!(daemon.pipeline.enforcer_mut().suspensions_in_force(), 1);
    daemon.actions.shutdown();
}

#[test]
fn hook_results_handed_in_by_an_admin_command_are_audited_and_nothing_else_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = scenario_config(dir.path(), &receiver);
    let mut daemon = Daemon::new(&config);
    let stale = fingerprint(COMPLIANT);
    let entry = |kind| AuditEntry {
        ts: at(0),
        kind,
        token: Some(stale),
        details: serde_json::json!({"hook": "revoke", "action": "token_stale"}),
    };
    let refused = daemon.actions.execute(
        &Request::HookResults {
            entries: vec![entry(AuditKind::HookResult), entry(AuditKind::Suspend)],
        },
        daemon.pipeline.enforcer_mut(),
        at(0),
    );
    assert!(!refused.ok && refused.error.unwrap().contains("hook_result"));
    let reply = daemon.actions.execute(
        &Request::HookResults {
            entries: vec![entry(AuditKind::HookResult)],
        },
        daemon.pipeline.enforcer_mut(),
        at(0),
    );
    assert!(reply.ok, "{reply:?}");
    let records = daemon.actions.store().audit(None, Some(stale), 10).unwrap();
    let kinds: Vec<AuditKind> = records.iter().map(|r| r.entry.kind).collect();
    assert_eq!(kinds, [AuditKind::HookResult]);
    assert_eq!(records[0].entry.details["action"], "token_stale");
    daemon.actions.shutdown();
}

#[test]
fn the_live_path_writes_daily_rollups_split_at_midnight_utc() {
    // T0 is 2023-11-14T22:13:20Z: midnight UTC comes 6,400 s later.
    let midnight_ms = 6_400_000;
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let mut daemon = Daemon::new(&scenario_config(dir.path(), &receiver));
    let mut traffic = Traffic::default();
    traffic.call(midnight_ms - 100_000, COMPLIANT, 50);
    traffic.call(midnight_ms - 30_000, COMPLIANT, 50);
    traffic.call(midnight_ms + 30_000, COMPLIANT, 50);
    // Four calls within a minute before midnight: one over the 3-a-minute rule.
    for i in 0..4 {
        traffic.call(midnight_ms - 20_000 + i * 1_000, ABUSER, 10);
    }
    daemon.feed(&traffic.sorted());
    daemon.idle_until(at(midnight_ms + 120_000));
    let store = daemon.actions.store();
    let before = Day::of(at(midnight_ms - 1));
    let rows = store.rollups(before, before.plus(1)).unwrap();
    let summary: Vec<(u32, TokenFingerprint, u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r.day.0 - before.0,
                r.token,
                r.usage.calls,
                r.usage.violations,
                r.usage.server_time_ns / 1_000_000,
            )
        })
        .collect();
    let mut expected = vec![
        (0, fingerprint(ABUSER), 4, 1, 40),
        (0, fingerprint(COMPLIANT), 2, 0, 100),
        (1, fingerprint(COMPLIANT), 1, 0, 50),
    ];
    expected.sort_by_key(|e| (e.0, e.1));
    assert_eq!(summary, expected);
    // Each answer is `[]`: two body bytes a call.
    assert!(
        rows.iter()
            .all(|r| r.usage.request_bytes > 0 && r.usage.response_bytes == 2 * r.usage.calls)
    );
    daemon.actions.shutdown();
}

#[test]
fn a_suspension_from_another_host_holds_here_without_a_second_alert_and_ours_are_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let config = scenario_config(dir.path(), &receiver);
    let mut daemon = Daemon::new(&config);
    daemon.actions.share_suspensions();
    let abuser = fingerprint(ABUSER);
    let change = super::SuspensionChange {
        token: abuser,
        since: at(0),
        until: Some(at(600_000)),
        reason: "api_calls: 4 calls in 60s".into(),
        lifted: false,
    };
    daemon
        .actions
        .suspension_from_peer(daemon.pipeline.enforcer_mut(), &change, "web1", at(0));
    daemon.idle_until(at(1_000));
    let mut traffic = Traffic::default();
    for i in 0..6 {
        traffic.call(2_000 + i * 1_000, ABUSER, 10);
    }
    daemon.feed(&traffic.sorted());
    daemon.idle_until(at(10_000));
    assert!(
        daemon.decisions.is_empty(),
        "refused here too: no decision of ours"
    );
    let active = daemon
        .actions
        .store()
        .active_suspensions(at(10_000))
        .unwrap();
    assert_eq!(active.len(), 1);
    assert!(
        active[0].reason.contains("from host web1"),
        "{}",
        active[0].reason
    );
    assert!(
        daemon.actions.take_suspension_changes().is_empty(),
        "another host's suspension is not announced again"
    );
    // Lifted on that host: released here, still without an alert.
    daemon.actions.suspension_from_peer(
        daemon.pipeline.enforcer_mut(),
        &super::SuspensionChange {
            lifted: true,
            ..change.clone()
        },
        "web1",
        at(11_000),
    );
    daemon.idle_until(at(12_000));
    assert!(
        daemon
            .actions
            .store()
            .active_suspensions(at(12_000))
            .unwrap()
            .is_empty()
    );
    assert_eq!(daemon.actions.alert_stats().raised, 0, "that host alerted");
    // One that runs out here: recorded, not alerted (its host tells its end).
    daemon.actions.suspension_from_peer(
        daemon.pipeline.enforcer_mut(),
        &super::SuspensionChange {
            until: Some(at(12_500)),
            ..change.clone()
        },
        "web1",
        at(12_000),
    );
    daemon.idle_until(at(12_400));
    assert_eq!(
        daemon
            .actions
            .store()
            .active_suspensions(at(12_400))
            .unwrap()
            .len(),
        1
    );
    daemon.idle_until(at(13_000));
    assert!(
        daemon
            .actions
            .store()
            .active_suspensions(at(13_000))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        daemon.actions.alert_stats().raised,
        0,
        "no lifted alert here"
    );
    // A suspension by an admin here is handed out for the other hosts.
    let reply = daemon.suspend(fingerprint(COMPLIANT), None, "by hand", at(14_000));
    assert!(reply.ok, "{reply:?}");
    daemon.idle_until(at(15_000));
    let changes = daemon.actions.take_suspension_changes();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (changes[0].token, changes[0].lifted),
        (fingerprint(COMPLIANT), false)
    );
    daemon.actions.shutdown();
}
