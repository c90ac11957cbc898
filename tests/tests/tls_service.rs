//! HTTPS by default, as the shipped unit runs the daemon: the shipped configuration with only
//! `capture.interfaces` set (and `output.calls` uncommented, to read the result), run as an
//! unprivileged user holding exactly the unit's capability sets (`AmbientCapabilities=`,
//! `CapabilityBoundingSet=`, read from the unit file), with `NoNewPrivileges=`, in a private
//! mount namespace where `/proc` is mounted `subset=pid,hidepid=invisible` (what `ProcSubset=pid`
//! and `ProtectProc=invisible` give), the system is read-only (`ProtectSystem=strict`) and only the state and log
//! directories are writable (`StateDirectory=`, `LogsDirectory=`): `monitor_tests::unit`. The daemon cannot see the web
//! servers' processes there; HTTPS calls must still be recorded, each once.
//!
//! Apache runs from a copy named `apache2-<pid>` (its process name starts with the default
//! `apache2`, so the configuration is the pure default); nginx from a uniquely named copy that
//! `capture.tls.processes` has to name. Not reproduced: the syscall filter, `PrivateTmp=`,
//! `PrivateDevices=` and the other hardening that does not bear on capture.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use monitor_tests::clients::curl_in;
use monitor_tests::daemon::{LiveDaemon, monitor_bin};
use monitor_tests::netns::NamespacePair;
use monitor_tests::sim::{SimOptions, Simulator};
use monitor_tests::unit::{Capabilities, ServiceUser, run_as_the_unit, service_user};
use monitor_tests::web::{Apache, Nginx, TestPki};
use serde_json::Value;

const TOKEN: &str = "5A69788796A5B4C3D2E1F00F1E2D3C4B";

/// The daemon as the unit runs it, with its files in a temporary directory: the configuration
/// (root-owned, readable by the service group, as the package installs it), and the state and
/// log directories that appear at `/var/lib/redcap-monitor` and `/var/log/redcap-monitor`.
struct ServiceRun {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl ServiceRun {
    /// The shipped configuration with `capture.interfaces = [interface]`, `output.calls` in
    /// the log directory, and `replacements` (exact text of the shipped file → new text).
    fn new(interface: &str, replacements: &[(&str, &str)]) -> ServiceRun {
        let ServiceUser {
            uid,
            gid,
            name: user,
        } = service_user();
        eprintln!("tls_service: running the daemon as {user} ({uid}:{gid})");
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for (sub, mode) in [("state", 0o700), ("logs", 0o750)] {
            let path = dir.path().join(sub);
            std::fs::create_dir(&path).unwrap();
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let shipped = std::fs::read_to_string(
            monitor_tests::workspace_root().join("config/redcap-monitor.toml"),
        )
        .unwrap();
        let interfaces = format!("interfaces = [\"{interface}\"]");
        let mut text = shipped;
        for (from, to) in [
            ("interfaces = []", interfaces.as_str()),
            (
                "# calls = \"/var/log/redcap-monitor/calls.jsonl\"",
                "calls = \"/var/log/redcap-monitor/calls.jsonl\"",
            ),
        ]
        .iter()
        .chain(replacements)
        {
            assert_eq!(
                text.matches(from).count(),
                1,
                "{from:?} in the shipped file"
            );
            text = text.replace(from, to);
        }
        let config = dir.path().join("config.toml");
        std::fs::write(&config, text).unwrap();
        std::os::unix::fs::chown(&config, Some(0), Some(gid)).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
        ServiceRun { dir, config }
    }

    /// Starts `redcap-monitor run` in namespace `ns` as the unit would, with the unit's
    /// capabilities plus `extra` (e.g. a drop-in's `sys_ptrace`).
    fn start(&self, ns: &str, extra: &[&str]) -> LiveDaemon {
        let state = self.dir.path().join("state");
        let logs = self.dir.path().join("logs");
        let command = run_as_the_unit(
            Some(ns),
            &[
                (&state, Path::new("/var/lib/redcap-monitor")),
                (&logs, Path::new("/var/log/redcap-monitor")),
            ],
            &Capabilities::of_unit(&[]).with_extra(extra),
            &monitor_bin().unwrap(),
            &["run".into(), "--config".into(), self.config.clone().into()],
        );
        LiveDaemon::spawn(command).unwrap()
    }

    /// Stops `daemon` after a moment for the last events, checks that it exited cleanly, and
    /// returns the call records it wrote and its log.
    fn stop(&self, mut daemon: LiveDaemon) -> (Vec<Value>, String) {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let (status, log) = daemon.stop().unwrap();
        assert!(
            status.success(),
            "redcap-monitor run exited {status}:\n{log}"
        );
        let calls = std::fs::read_to_string(self.dir.path().join("logs/calls.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (calls, log)
    }
}

/// One API call to `url` per `content`, each on its own connection.
fn call_each(client: &str, url: &str, ca: &Path, contents: &[&str]) {
    let token = format!("token={TOKEN}");
    let ca = ca.to_string_lossy();
    for content in contents {
        #[rustfmt::skip]
        curl_in(Some(client), &[
            "-sS", "--fail", "--cacert", &ca, "-o", "/dev/null", url, "-d", &token,
            "-d", &format!("content={content}"),
        ]).unwrap();
    }
}

/// Several API calls to `url` on one keep-alive connection.
fn call_keep_alive(client: &str, url: &str, ca: &Path, contents: &[&str]) {
    let token = format!("token={TOKEN}");
    let ca = ca.to_string_lossy();
    let mut args: Vec<String> = Vec::new();
    for (i, content) in contents.iter().enumerate() {
        if i > 0 {
            args.push("--next".into());
        }
        for arg in [
            "-sS",
            "--fail",
            "--cacert",
            &ca,
            "-o",
            "/dev/null",
            url,
            "-d",
            &token,
        ] {
            args.push(arg.into());
        }
        args.push("-d".into());
        args.push(format!("content={content}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl_in(Some(client), &args).unwrap();
}

/// The contents of the calls with `transport`, sorted.
fn contents(calls: &[Value], transport: &str) -> Vec<String> {
    let mut found: Vec<String> = calls
        .iter()
        .filter(|c| c["transport"] == transport)
        .map(|c| c["content"].as_str().unwrap_or("").to_owned())
        .collect();
    found.sort();
    found
}

fn sorted(items: &[&str]) -> Vec<String> {
    let mut items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    items.sort();
    items
}

/// What the log must say under the unit's sandbox: the distribution's libssl attached from its
/// standard location, the processes hidden (not "not running"), HTTPS on.
fn assert_https_by_default_log(log: &str) {
    assert!(
        log.lines().any(|l| l.contains("uprobes attached")
            && l.contains("libssl")
            && l.contains("found=\"standard location\"")),
        "no libssl attached from a standard location:\n{log}"
    );
    assert!(
        log.contains("/proc hides other users' processes"),
        "the daemon saw the web server's processes: not the unit's sandbox?\n{log}"
    );
    assert!(!log.contains("no configured process is running"), "{log}");
    assert!(log.contains("mode=\"ebpf+tls\""), "{log}");
    assert!(!log.contains("HTTPS is NOT seen"), "{log}");
    // The coverage self-check agrees: no HTTPS goes unread.
    for blind in ["https_unread", "https_not_captured"] {
        assert!(!log.contains(blind), "{blind}:\n{log}");
    }
}

#[test]
fn the_shipped_configuration_under_the_units_sandbox_records_apache_https_calls_once() {
    if !monitor_tests::require_root("tls_service apache") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NamespacePair::create(76).unwrap();
    let pki = TestPki::create(dir.path(), &pair.server_ip).unwrap();
    // A default process name (`apache2` matches any name that starts with it), still unique.
    let name = format!("apache2-{}", std::process::id() % 10_000_000);
    let apache = Apache::start_named(&pair.server_ns, dir.path(), &pki, &name).unwrap();

    let service = ServiceRun::new(&pair.server_if, &[]);
    let daemon = service.start(&pair.server_ns, &[]);

    let https = format!("https://{}/redcap/api/index.php", pair.server_ip);
    let http = format!("http://{}/redcap/api/index.php", pair.server_ip);
    // The field report: five HTTPS API calls answered 200.
    let secure = ["version", "project", "metadata", "record", "project_xml"];
    call_each(&pair.client_ns, &https, &pki.ca_cert, &secure[..2]);
    call_keep_alive(&pair.client_ns, &https, &pki.ca_cert, &secure[2..]);
    // Plain HTTP beside it, through the TC probe.
    let plain = ["event", "user"];
    call_each(&pair.client_ns, &http, &pki.ca_cert, &plain);
    let (calls, log) = service.stop(daemon);
    drop(apache);
    eprintln!("tls_service apache: {} calls recorded", calls.len());
    assert_eq!(
        contents(&calls, "tls"),
        sorted(&secure),
        "HTTPS calls:\n{log}"
    );
    assert_eq!(
        contents(&calls, "tcp"),
        sorted(&plain),
        "HTTP calls:\n{log}"
    );
    for call in calls.iter().filter(|c| c["transport"] == "tls") {
        assert_eq!(call["status"], 200, "{call}");
        assert_eq!(call["complete"], true, "{call}");
    }
    assert_https_by_default_log(&log);
}

#[test]
fn nginx_https_calls_are_recorded_under_the_units_sandbox_and_client_addresses_need_the_ptrace_drop_in()
 {
    if !monitor_tests::require_root("tls_service nginx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NamespacePair::create(77).unwrap();
    let pki = TestPki::create(dir.path(), &pair.server_ip).unwrap();
    let sim = Simulator::start(&SimOptions {
        tokens: vec![TOKEN.into()],
        netns: Some(pair.server_ns.clone()),
        ..SimOptions::default()
    })
    .unwrap();
    let name = format!("rcmsvc{}", std::process::id() % 1_000_000_000);
    let nginx =
        Nginx::start_named(&pair.server_ns, dir.path(), sim.port(), &pki, 2, &name).unwrap();
    // The shipped configuration, but the test's nginx has its own name (uprobes are
    // system-wide: other nginx processes on this machine must not add to what is seen).
    let processes = format!("processes = [\"{name}\"]");
    let replace = [(
        "processes = [\"apache2\", \"httpd\", \"nginx\", \"php-fpm\"]",
        processes.as_str(),
    )];
    let https = format!("https://{}/api/", pair.server_ip);
    let secure = ["version", "project", "metadata", "record", "project_xml"];

    // As the unit runs it: no CAP_SYS_PTRACE, so no client address (and no view of nginx).
    let service = ServiceRun::new(&pair.server_if, &replace);
    let daemon = service.start(&pair.server_ns, &[]);
    call_each(&pair.client_ns, &https, &pki.ca_cert, &secure[..2]);
    call_keep_alive(&pair.client_ns, &https, &pki.ca_cert, &secure[2..]);
    let (calls, log) = service.stop(daemon);
    assert_eq!(
        contents(&calls, "tls"),
        sorted(&secure),
        "HTTPS calls:\n{log}"
    );
    assert_eq!(contents(&calls, "tcp"), Vec::<String>::new(), "{log}");
    for call in &calls {
        assert_eq!(call["status"], 200, "{call}");
        assert_eq!(
            call["client"], "",
            "an address without CAP_SYS_PTRACE? {call}"
        );
    }
    assert_https_by_default_log(&log);

    // With the drop-in that adds CAP_SYS_PTRACE (to see the processes under hidepid and read
    // their fd links) and CAP_DAC_READ_SEARCH (to enter their 0500 /proc/PID/fd): the calls
    // carry the client's address (a connection already closed when the ring was read may not).
    // Either one alone gives none (tried by hand).
    let service = ServiceRun::new(&pair.server_if, &replace);
    let daemon = service.start(&pair.server_ns, &["sys_ptrace", "dac_read_search"]);
    call_keep_alive(&pair.client_ns, &https, &pki.ca_cert, &secure);
    let (calls, log) = service.stop(daemon);
    drop(nginx);
    assert_eq!(
        contents(&calls, "tls"),
        sorted(&secure),
        "HTTPS calls:\n{log}"
    );
    let with_address = calls
        .iter()
        .filter(|c| {
            c["client"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("{}:", pair.client_ip)))
        })
        .count();
    eprintln!(
        "tls_service nginx: with the ptrace drop-in {with_address} of {} calls carry the client address",
        calls.len()
    );
    assert!(
        with_address > 0,
        "no client address with the ptrace drop-in:\n{log}"
    );
    // Visible now: the processes are seen, and covered through the standard libssl.
    assert!(
        log.lines()
            .any(|l| l.contains("covering this web server") && l.contains(&name)),
        "{log}"
    );
}
