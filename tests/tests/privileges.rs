//! What `redcap-monitor run` does without the privileges its capture mode needs: `auto` falls back
//! to libpcap and says why; `ebpf` and `pcap` stop and name the capability to grant. The daemon
//! runs as root with capabilities removed from its bounding set (`setpriv`, util-linux), so the
//! kernel refuses exactly what an unprivileged service account would be refused.

use std::path::Path;

use monitor_tests::daemon::{LiveDaemon, setpriv_run};

/// Runs `redcap-monitor run` on loopback in `mode` without `dropped` capabilities, stops it with
/// SIGTERM once it logged a line containing `ready` (if given), and returns its exit code and log.
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
    let bounding = format!("--bounding-set={dropped}");
    let command = setpriv_run(&[&bounding], &config, &dir.path().join("site.key")).unwrap();
    match ready {
        Some(ready) => {
            let mut daemon =
                LiveDaemon::spawn(command).expect("setpriv (util-linux) runs the daemon");
            // Started means "capturing with" was logged; wait for the rest of `ready`.
            let _ = daemon.wait_for_log(ready, 1, std::time::Duration::from_secs(20));
            let (status, log) = daemon.stop().unwrap();
            (status.code(), log)
        }
        None => {
            let mut command = command;
            let out = command
                .output()
                .expect("setpriv (util-linux) runs the daemon");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    }
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
