//! What `redcap-monitor run` does without the privileges its capture mode needs: `auto` falls back
//! to libpcap and says why; `ebpf` and `pcap` stop and name the capability to grant. The daemon
//! runs as root with capabilities removed from its bounding set (`setpriv`, util-linux), so the
//! kernel refuses exactly what an unprivileged service account would be refused.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use monitor_tests::daemon::monitor_bin;

/// Runs `redcap-monitor run` on loopback in `mode` without `dropped` capabilities, stops it with
/// SIGINT once it logged a line containing `ready` (if given), and returns its exit code and log.
fn run_without(dropped: &str, mode: &str, ready: Option<&str>) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        // Port 0: the tests run at once, each daemon needs its own API port.
        format!(
            "[capture]\nmode = \"{mode}\"\ninterfaces = [\"lo\"]\nports = [18081]\n\
             [api]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"{}\"\n",
            dir.path().join("state.redb").display()
        ),
    )
    .unwrap();
    let mut child = Command::new("setpriv")
        .arg(format!("--bounding-set={dropped}"))
        .arg(monitor_bin().unwrap())
        .args(["run", "--config"])
        .arg(&config)
        .arg("--key")
        .arg(dir.path().join("site.key"))
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) runs the daemon");
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut log = String::new();
    if let Some(ready) = ready {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !log.contains(ready) && Instant::now() < deadline {
            if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
                log.push_str(&line);
                log.push('\n');
            }
        }
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    }
    let status = child.wait().unwrap();
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(500)) {
        log.push_str(&line);
        log.push('\n');
    }
    (status.code(), log)
}

fn root_and_setpriv(test: &str) -> bool {
    monitor_tests::require_root(test) && Path::new("/usr/bin/setpriv").exists()
}

#[test]
fn auto_mode_falls_back_to_libpcap_without_cap_bpf_and_says_why() {
    if !root_and_setpriv("auto fallback") {
        return;
    }
    let (code, log) = run_without(
        "-bpf,-perfmon,-sys_admin",
        "auto",
        Some("capturing with libpcap"),
    );
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("the eBPF probe is unavailable"), "{log}");
    assert!(
        log.contains("CAP_BPF"),
        "the reason names the capability: {log}"
    );
    assert!(
        log.contains("\"mode\":\"pcap\""),
        "final counters say pcap: {log}"
    );
    // HTTPS is on by default; libpcap cannot see it, and the fallback says so.
    assert!(log.contains("HTTPS is NOT seen"), "{log}");
}

#[test]
fn ebpf_mode_without_cap_bpf_stops_and_names_the_capability() {
    if !root_and_setpriv("ebpf without CAP_BPF") {
        return;
    }
    let (code, log) = run_without("-bpf,-perfmon,-sys_admin", "ebpf", None);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("CAP_BPF") && log.contains("CAP_PERFMON"),
        "{log}"
    );
}

#[test]
fn pcap_mode_without_cap_net_raw_stops_and_names_the_capability() {
    if !root_and_setpriv("pcap without CAP_NET_RAW") {
        return;
    }
    let (code, log) = run_without("-net_raw,-net_admin", "pcap", None);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("CAP_NET_RAW"), "{log}");
}
