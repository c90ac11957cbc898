//! The token directory against a real MariaDB (TLS required for its user, verified against the
//! test CA) seeded with REDCap's table and column names: the
//! live daemon (`run`, libpcap on loopback, in front of the REDCap simulator) reads who each
//! token belongs to; a suspended token's alert (webhook receiver), its decision and audit
//! records, `redcap-monitor top` and the
//! admin API's `suspensions` and `top` name the user and the project. Then the database goes
//! wrong under the running daemon: a changed password, a missing table, SELECT not granted, the
//! server stopped.
//! Each gives `directory_unavailable` with an error naming what to fix, and the daemon keeps
//! judging (a violation after the server is gone is still written and alerted). Nothing the
//! daemon wrote, logged, sent or exported holds a raw token, and the metrics no personal data.
//! The daemon runs as the unit runs it (`monitor_tests::unit`: the service user, the unit's
//! capabilities with `libpcap.conf`, its seccomp filter, a read-only system but for the test's
//! directory). Needs root; REDCAP_MONITOR_SKIP_ROOT_TESTS=1 skips it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use monitor_tests::clients::api_call;
use monitor_tests::daemon::{
    LiveDaemon, assert_no_raw_token, files_under, fingerprints, monitor_bin, stats_json as stats,
};
use monitor_tests::mariadb::{MariaDb, REDCAP_SCHEMA};
use monitor_tests::sim::{SimOptions, Simulator, wait_until};
use monitor_tests::unit::{
    Capabilities, check_confined, make_module_directory, run_as_the_unit, service_user,
    write_config_secret,
};
use monitor_tests::web::TestPki;
use serde_json::Value;
use test_support::{Receiver, Recorded};

/// jdoe's token in project 12 (stored lower-case: REDCap matches tokens case-insensitively).
const ABUSER: &str = "AB12CD34EF56AB12CD34EF56AB12CD34";
/// bob's token in project 13, whose log is `redcap_log_event2`; bob is suspended in REDCap.
const LATE: &str = "5A5A5A5A6B6B6B6B7C7C7C7C8D8D8D8D";
/// The admin's super token (64 characters).
const SUPER: &str = "9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F9F";
const PASSWORD: &str = "directory-test-password";
const ADMIN_TOKEN: &str = "directory-admin-api-token-0123456789";
const WAIT: Duration = Duration::from_secs(30);

fn seed(db: &MariaDb) {
    db.sql(REDCAP_SCHEMA).unwrap();
    db.sql(&format!(
        "USE redcap;
         INSERT INTO redcap_projects VALUES
           (12, 'Trial X', 'Ada', 'Lovelace', 'ada@example.org', 'redcap_log_event'),
           (13, 'Cohort Y', 'Alan', 'Turing', 'alan@example.org', 'redcap_log_event2');
         INSERT INTO redcap_user_information
           (username, user_email, user_firstname, user_lastname, user_suspended_time, api_token)
         VALUES
           ('jdoe', 'jane@example.org', 'Jane', 'Doe', NULL, NULL),
           ('bob', 'bob@example.org', 'Bob', 'Smith', '2026-11-01 08:00:00', NULL),
           ('admin', 'admin@example.org', 'Ann', 'Admin', NULL, '{SUPER}');
         INSERT INTO redcap_user_rights VALUES
           (12, 'jdoe', NULL, '{}'),
           (13, 'bob', '2000-01-01', '{LATE}'),
           (13, 'jdoe', NULL, NULL);
         INSERT INTO redcap_log_event (project_id, ts, user, page, description) VALUES
           (12, 20261201093005, 'jdoe', 'api/index.php', 'Export data (API)'),
           (12, 20261130080000, 'jdoe', 'api/index.php', 'Export data (API)'),
           (12, 20261202110000, 'jdoe', 'DataEntry/index.php', 'Update record');
         INSERT INTO redcap_log_event2 (project_id, ts, user, page, description) VALUES
           (13, 20261115120000, 'bob', 'API/index.php', 'Download file (API)');
         CREATE USER 'redcap_monitor'@'%' IDENTIFIED BY '{PASSWORD}' REQUIRE SSL;
         GRANT SELECT ON redcap.redcap_user_rights TO 'redcap_monitor'@'%';
         GRANT SELECT ON redcap.redcap_user_information TO 'redcap_monitor'@'%';
         GRANT SELECT ON redcap.redcap_projects TO 'redcap_monitor'@'%';
         GRANT SELECT ON redcap.redcap_log_event TO 'redcap_monitor'@'%';
         GRANT SELECT ON redcap.redcap_log_event2 TO 'redcap_monitor'@'%';",
        ABUSER.to_lowercase()
    ))
    .unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The configuration and its secrets as the package sets them up (root's, the service's group
/// may read them).
fn config(dir: &Path, sim_port: u16, receiver_port: u16, db_port: u16, api_port: u16) -> PathBuf {
    let user = service_user();
    let path = dir.join("directory.toml");
    let d = dir.display();
    let secret =
        |name: &str, text: &str| write_config_secret(&dir.join(name), text, &user).unwrap();
    secret("db.password", &format!("{PASSWORD}\n"));
    secret("admin.token", ADMIN_TOKEN);
    // 32 bytes of key, base64.
    secret(
        "siem.whsec",
        "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
    );
    secret(
        "directory.toml",
        &format!(
            "[capture]\nmode = \"pcap\"\ninterfaces = [\"lo\"]\nports = [{sim_port}]\n\
             [output]\ncalls = \"{d}/calls.jsonl\"\nviolations = \"{d}/violations.jsonl\"\n\
             decisions = \"{d}/decisions.jsonl\"\nstats = \"{d}/stats.json\"\n\
             stats_interval = \"1s\"\n\
             [site]\nkey_file = \"{d}/site.key\"\n\
             [store]\npath = \"{d}/state/state.redb\"\n\
             [redcap_module]\ndir = \"{d}/redcap-module\"\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\ntoken_file = \"{d}/admin.token\"\n\
             top_tokens = 5\n\
             [enforcement]\nmode = \"on_violation\"\n\
             [alerts]\nbackoff_base = \"100ms\"\nbackoff_cap = \"300ms\"\n\
             [[alerts.sinks]]\nname = \"siem\"\nkind = \"generic\"\n\
             url = \"http://127.0.0.1:{receiver_port}/alerts\"\n\
             secret_file = \"{d}/siem.whsec\"\n\
             [[alerts.sinks]]\nname = \"chat\"\nkind = \"slack\"\n\
             url = \"http://127.0.0.1:{receiver_port}/slack\"\n\
             [directory]\nsource = \"mysql\"\nhost = \"127.0.0.1\"\nport = {db_port}\n\
             database = \"redcap\"\nuser = \"redcap_monitor\"\n\
             password_file = \"{d}/db.password\"\nrefresh = \"1s\"\nretry = \"1s\"\n\
             tls = true\ntls_ca_file = \"{d}/ca.pem\"\n"
        ),
    );
    path
}

/// Waits for the directory's state in the stats file; returns the directory object.
fn wait_directory(dir: &Path, state: &str, error_has: &[&str]) -> Value {
    let mut last = Value::Null;
    let reached = wait_until(WAIT, || {
        last = stats(dir)["directory"].clone();
        last["state"] == state
            && error_has
                .iter()
                .all(|needle| last["error"].as_str().unwrap_or("").contains(needle))
    });
    assert!(
        reached,
        "directory never {state} with {error_has:?}: {last}"
    );
    last
}

fn get(api_port: u16, path: &str) -> Vec<u8> {
    Command::new("curl")
        .args(["-sS", "--max-time", "5", "-H"])
        .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
        .arg(format!("http://127.0.0.1:{api_port}{path}"))
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default()
}

fn json_bodies(received: &[Recorded], path: &str) -> Vec<Value> {
    received
        .iter()
        .filter(|r| r.head.contains(&format!("POST {path} ")))
        .filter_map(|r| serde_json::from_slice(&r.body).ok())
        .collect()
}

#[test]
fn the_directory_names_owners_and_the_daemon_outlives_the_database() {
    if !monitor_tests::require_root("directory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("site.key");
    let fps = fingerprints(&key, &[ABUSER, LATE]).unwrap();
    // The daemon runs as the unit runs it: the service user's directory (its state, records
    // and site key), libpcap through the unit's drop-in.
    let user = service_user();
    for path in [dir.path(), key.as_path()] {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).unwrap();
    }
    let (abuser, late) = (fps[0].clone(), fps[1].clone());
    let pki = TestPki::create(dir.path(), "127.0.0.1").unwrap();
    let mut db = MariaDb::start_tls(&pki).unwrap();
    seed(&db);
    let sim = Simulator::start(&SimOptions {
        tokens: vec![ABUSER.into(), LATE.into()],
        ..SimOptions::default()
    })
    .unwrap();
    let receiver_port = free_port();
    let received =
        Receiver::serve(TcpListener::bind(("127.0.0.1", receiver_port)).unwrap()).unwrap();
    let api_port = free_port();
    let config = config(dir.path(), sim.port(), receiver_port, db.port(), api_port);
    let url = sim.url("/api/");
    make_module_directory(&dir.path().join("redcap-module"));
    let mut daemon = LiveDaemon::spawn(run_as_the_unit(
        None,
        &[(dir.path(), dir.path())],
        &Capabilities::of_unit(&["libpcap.conf"]),
        &monitor_bin().unwrap(),
        &["run".into(), "--config".into(), config.clone().into()],
    ))
    .unwrap();
    if let Err(why) = check_confined(daemon.pid().unwrap()) {
        panic!("{why}");
    }

    // Three tokens: two project tokens and the super token.
    let directory = wait_directory(dir.path(), "available", &[]);
    assert_eq!(directory["entries"], 3, "{directory}");

    // The abuser is warned, then suspended: the alerts name jdoe and project 12.
    for _ in 0..6 {
        api_call(&url, ABUSER);
    }
    let suspended = wait_until(WAIT, || {
        json_bodies(&received.requests(), "/alerts")
            .iter()
            .any(|b| b["event"] == "suspended")
    });
    assert!(suspended, "no suspended alert: {}", daemon.log());
    let generic = json_bodies(&received.requests(), "/alerts");
    let alert = generic.iter().find(|b| b["event"] == "suspended").unwrap();
    assert_eq!(alert["token_fp"], abuser.as_str());
    let owner = &alert["owner"];
    assert_eq!(owner["username"], "jdoe", "{alert}");
    assert_eq!(owner["first_name"], "Jane");
    assert_eq!(owner["email"], "jane@example.org");
    assert_eq!(owner["project_id"], 12);
    assert_eq!(owner["project_title"], "Trial X");
    assert_eq!(owner["pi_last_name"], "Lovelace");
    assert_eq!(owner["super_token"], false);
    assert_eq!(owner["user_suspended"], false);
    assert_eq!(owner["rights_expired"], false);
    // REDCap's latest API row for jdoe in project 12 (not the later non-API row).
    assert_eq!(owner["last_api_use"], "2026-12-01 09:30:05");
    assert!(wait_until(WAIT, || {
        json_bodies(&received.requests(), "/slack")
            .iter()
            .any(|b| b["text"].as_str().unwrap_or("").contains("suspended"))
    }));
    let slack = json_bodies(&received.requests(), "/slack");
    let text = slack
        .iter()
        .map(|b| b["text"].as_str().unwrap_or("").to_string())
        .find(|t| t.contains("suspended"))
        .unwrap();
    assert!(text.contains("Jane Doe (jdoe)"), "{text}");
    assert!(text.contains("#12 Trial X"), "{text}");
    assert!(text.contains("*PI:* Ada Lovelace"), "{text}");

    // The decision's audit record and the admin API's suspensions and top name the owner too.
    let store = dir.path().join("state").join("state.redb");
    let audit_named = wait_until(WAIT, || {
        let out = Command::new(monitor_bin().unwrap())
            .args(["audit", "--json", "--token-fp", &abuser, "--store"])
            .arg(&store)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|r| r["kind"] == "decision" && r["details"]["owner"]["username"] == "jdoe")
    });
    assert!(audit_named, "no audit record names jdoe");
    // `redcap-monitor suspensions` names the owner from the decision's audit record.
    let listed = Command::new(monitor_bin().unwrap())
        .args(["suspensions", "--store"])
        .arg(&store)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("jdoe, project 12"), "{listed}");
    let decided = wait_until(WAIT, || {
        std::fs::read_to_string(dir.path().join("decisions.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|d| d["action"] == "suspend" && d["owner"]["project_id"] == 12)
    });
    assert!(
        decided,
        "the suspend decision record does not name the owner"
    );
    let named = wait_until(WAIT, || {
        let suspensions: Value =
            serde_json::from_slice(&get(api_port, "/api/v1/suspensions")).unwrap_or_default();
        let top: Value = serde_json::from_slice(&get(api_port, "/api/v1/top")).unwrap_or_default();
        suspensions[0]["owner"]["project_title"] == "Trial X"
            && top["tokens"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["owner"]["username"] == "jdoe"))
    });
    assert!(named, "the admin API does not name jdoe");
    let top = Command::new(monitor_bin().unwrap())
        .args(["top", "--once", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(top.contains("jdoe, project 12"), "{top}");

    // A changed password: the login is refused, and the error says which keys to fix.
    db.sql("ALTER USER 'redcap_monitor'@'%' IDENTIFIED BY 'something-else'")
        .unwrap();
    wait_directory(
        dir.path(),
        "directory_unavailable",
        &["refused the login", "directory.password_file"],
    );
    db.sql(&format!(
        "ALTER USER 'redcap_monitor'@'%' IDENTIFIED BY '{PASSWORD}'"
    ))
    .unwrap();
    wait_directory(dir.path(), "available", &[]);

    // A missing table.
    db.sql("RENAME TABLE redcap.redcap_projects TO redcap.redcap_projects_gone")
        .unwrap();
    wait_directory(
        dir.path(),
        "directory_unavailable",
        &["redcap_projects", "directory.database"],
    );
    db.sql("RENAME TABLE redcap.redcap_projects_gone TO redcap.redcap_projects")
        .unwrap();
    wait_directory(dir.path(), "available", &[]);

    // SELECT not granted on a table the directory needs.
    db.sql("REVOKE SELECT ON redcap.redcap_user_information FROM 'redcap_monitor'@'%'")
        .unwrap();
    wait_directory(
        dir.path(),
        "directory_unavailable",
        &["may not read", "GRANT SELECT"],
    );
    db.sql("GRANT SELECT ON redcap.redcap_user_information TO 'redcap_monitor'@'%'")
        .unwrap();
    wait_directory(dir.path(), "available", &[]);

    // The server stopped mid-run: unavailable, and the daemon keeps judging.
    db.stop();
    wait_directory(
        dir.path(),
        "directory_unavailable",
        &["cannot reach", "directory.host"],
    );
    for _ in 0..4 {
        api_call(&url, LATE);
    }
    let judged = wait_until(WAIT, || {
        std::fs::read_to_string(dir.path().join("violations.jsonl"))
            .unwrap_or_default()
            .contains(&late)
    });
    assert!(
        judged,
        "no violation for a token after the database stopped"
    );
    // The names read before the server went away are still used.
    let late_named = wait_until(WAIT, || {
        json_bodies(&received.requests(), "/alerts")
            .iter()
            .any(|b| b["token_fp"] == late.as_str() && b["owner"]["username"] == "bob")
    });
    assert!(late_named, "the violation alert does not name bob");
    let bob = json_bodies(&received.requests(), "/alerts")
        .into_iter()
        .find(|b| b["token_fp"] == late.as_str())
        .unwrap();
    assert_eq!(bob["owner"]["user_suspended"], true);
    assert_eq!(bob["owner"]["rights_expired"], true);
    assert_eq!(bob["owner"]["last_api_use"], "2026-11-15 12:00:00");

    // Metrics: the directory's gauges, and no personal data.
    let metrics = String::from_utf8(get(api_port, "/metrics")).unwrap();
    assert!(
        metrics.contains("redcap_monitor_directory_available 0"),
        "{metrics}"
    );
    for personal in ["jdoe", "Jane", "example.org", "Trial X", "bob", "Lovelace"] {
        assert!(!metrics.contains(personal), "metrics hold {personal}");
    }

    let (status, log) = daemon.stop().unwrap();
    assert!(status.success(), "{log}");
    assert!(log.contains("token directory unavailable"), "{log}");

    // Nothing written, logged, sent or exported holds a raw token.
    let mut written: Vec<(String, Vec<u8>)> = Vec::new();
    let mut files = Vec::new();
    files_under(dir.path(), &mut files);
    for file in files {
        written.push((file.display().to_string(), std::fs::read(&file).unwrap()));
    }
    written.push(("the daemon's log".into(), log.into_bytes()));
    written.push(("metrics".into(), metrics.into_bytes()));
    for (n, request) in received.requests().iter().enumerate() {
        let mut bytes = request.head.clone().into_bytes();
        bytes.extend_from_slice(&request.body);
        written.push((format!("webhook request {n}"), bytes));
    }
    assert_no_raw_token(&written, &[ABUSER, LATE, SUPER]);
}
