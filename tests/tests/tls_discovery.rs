//! How HTTPS capture finds its web servers: started with `capture.mode = "tls"` before any
//! configured process runs, the daemon attaches to the distribution's libssl, warns and keeps
//! looking; nginx started afterwards is found, covered and its calls reported. A configured process without libssl but with
//! OpenSSL inside its executable is reported as statically linked, not silently missed.

use std::process::{Command, Stdio};
use std::time::Duration;

use monitor_tests::clients::curl_in;
use monitor_tests::daemon::LiveDaemon;
use monitor_tests::netns::NamespacePair;
use monitor_tests::sim::{SimOptions, Simulator};
use monitor_tests::web::{Nginx, TestPki};
use serde_json::Value;

const TOKEN: &str = "3D4C5B6A79880F1E2D3C4B5A69788796";

#[test]
fn a_web_server_started_after_the_daemon_is_found_and_static_openssl_is_reported() {
    if !monitor_tests::require_root("tls_discovery") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NamespacePair::create(75).unwrap();
    let pki = TestPki::create(dir.path(), &pair.server_ip).unwrap();
    let sim = Simulator::start(&SimOptions {
        tokens: vec![TOKEN.into()],
        netns: Some(pair.server_ns.clone()),
        ..SimOptions::default()
    })
    .unwrap();

    // A "web server" with OpenSSL linked in: a copy of sleep with OpenSSL's symbol name in it
    // (trailing bytes do not change what an ELF executable runs).
    let static_name = format!("rcmst{}", std::process::id() % 1_000_000_000);
    let static_exe = dir.path().join(&static_name);
    let mut bytes = std::fs::read("/usr/bin/sleep").unwrap();
    bytes.extend_from_slice(b"\0SSL_read\0SSL_write\0");
    std::fs::write(&static_exe, bytes).unwrap();
    std::fs::set_permissions(
        &static_exe,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    // nginx's name is known before it runs: Nginx::start names the copy after this process.
    let nginx_name = format!("rcmtls{}", std::process::id() % 1_000_000_000);
    let key = dir.path().join("site.key");
    let calls = dir.path().join("calls.jsonl");
    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"tls\"\n[capture.tls]\nprocesses = [\"{nginx_name}\", \
             \"{static_name}\"]\nrescan_interval = \"1s\"\n[output]\ncalls = \"{}\"\n\
             [store]\npath = \"{}\"\n",
            calls.display(),
            dir.path().join("state.redb").display()
        ),
    )
    .unwrap();
    let mut daemon = LiveDaemon::start(None, &config, &key).unwrap();

    // Both start after the daemon.
    let mut static_server = Command::new(&static_exe)
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();

    let nginx = Nginx::start(&pair.server_ns, dir.path(), sim.port(), &pki, 1).unwrap();
    assert_eq!(nginx.name(), nginx_name);
    // The next scan (every second) attaches to nginx's libssl.
    std::thread::sleep(Duration::from_millis(2500));
    let ca = pki.ca_cert.to_string_lossy();
    #[rustfmt::skip]
    curl_in(Some(&pair.client_ns), &[
        "-sS", "--cacert", &ca, "-o", "/dev/null", &format!("https://{}/api/", pair.server_ip),
        "-d", &format!("token={TOKEN}"), "-d", "content=version",
    ]).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let (status, log) = daemon.stop().unwrap();
    let _ = static_server.kill();
    let _ = static_server.wait();
    assert!(
        status.success(),
        "redcap-monitor run exited {status}:\n{log}"
    );
    let text = std::fs::read_to_string(&calls).unwrap_or_default();
    let reported: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reported.len(), 1, "calls: {text}\nlog:\n{log}");
    assert_eq!(reported[0]["transport"], "tls");
    assert_eq!(reported[0]["content"], "version");
    assert_eq!(reported[0]["status"], 200);

    assert!(
        log.contains("no configured process is running"),
        "no warning while nothing ran:\n{log}"
    );
    let static_line = log
        .lines()
        .find(|l| l.contains(&static_name) && l.contains("exe="))
        .unwrap_or_else(|| panic!("{static_name} is not mentioned:\n{log}"));
    assert!(
        static_line.contains("statically") && static_line.contains("NOT seen"),
        "{static_line}"
    );
    // The distribution's libssl is attached at start, before nginx runs; nginx, found later
    // mapping that same file, is covered by it.
    let attached = log
        .lines()
        .find(|l| l.contains("uprobes attached"))
        .unwrap_or_else(|| panic!("no attach line:\n{log}"));
    assert!(
        attached.contains("libssl") && attached.contains("found=\"standard location\""),
        "{attached}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("covering this web server") && l.contains(&nginx_name)),
        "nginx is not reported as covered:\n{log}"
    );
}
