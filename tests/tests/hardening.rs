//! What `redcap-monitor run` does to protect its own memory (the site key, request bodies with
//! tokens): it makes itself non-dumpable, so no core file is written and processes of its own
//! user cannot read its memory. Seen from outside the way the kernel shows it: the files of a
//! non-dumpable process under `/proc/<pid>` belong to root, not to the process's user. The daemon
//! runs as an unprivileged user (`setpriv`, util-linux) with CAP_NET_RAW for libpcap on loopback,
//! given as an ambient capability the way the shipped unit gives its capabilities; a suspend hook
//! it runs must hold none of them. Needs root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use monitor_tests::daemon::{LiveDaemon, monitor_bin, setpriv_run};

const NOBODY: u32 = 65534;

#[test]
fn the_daemon_makes_itself_non_dumpable_and_its_hooks_hold_no_capabilities() {
    if !monitor_tests::require_root(module_path!()) || !Path::new("/usr/bin/setpriv").exists() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"pcap\"\ninterfaces = [\"lo\"]\nports = [18082]\n\
             [api]\nlisten = \"127.0.0.1:0\"\n[store]\npath = \"{}\"\n\
             [[hooks.suspend]]\nname = \"caps\"\nkind = \"exec\"\nprogram = \"/bin/sh\"\n\
             args = [\"-c\", \"grep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status > {}\"]\n",
            dir.path().join("state.redb").display(),
            dir.path().join("hook-caps").display(),
        ),
    )
    .unwrap();
    let mut daemon = LiveDaemon::spawn(
        setpriv_run(
            &[
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                "--inh-caps=+net_raw",
                "--ambient-caps=+net_raw",
            ],
            &config,
            &dir.path().join("site.key"),
        )
        .unwrap(),
    )
    .expect("setpriv (util-linux) runs the daemon");
    let pid = daemon.pid().unwrap();
    // A manual suspension runs the suspend hook, which writes down its own capabilities.
    let suspended = Command::new(monitor_bin().unwrap())
        .args([
            "suspend",
            "00000000000000aa",
            "--for",
            "1h",
            "--reason",
            "hook caps",
            "--store",
        ])
        .arg(dir.path().join("state.redb"))
        .output()
        .unwrap();
    let hook_caps = dir.path().join("hook-caps");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&hook_caps).map_or(true, |m| m.len() == 0) && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let caps = std::fs::read_to_string(&hook_caps).unwrap_or_default();
    let proc_dir = format!("/proc/{pid}");
    let status = std::fs::read_to_string(format!("{proc_dir}/status")).unwrap_or_default();
    let fd_owner = std::fs::metadata(format!("{proc_dir}/fd")).map(|m| m.uid());
    let (exit, log) = daemon.stop().unwrap();
    assert!(
        log.contains("capturing with libpcap"),
        "the daemon did not start with libpcap: {log}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains(&NOBODY.to_string())),
        "the daemon runs as {NOBODY}: {status}"
    );
    assert_eq!(
        fd_owner.unwrap(),
        0,
        "/proc/<pid>/fd of a dumpable process belongs to its user ({NOBODY})"
    );
    assert_eq!(exit.code(), Some(0), "{log}");
    assert!(
        suspended.status.success(),
        "suspend: {}",
        String::from_utf8_lossy(&suspended.stderr)
    );
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert!(
            caps.lines()
                .any(|l| l.starts_with(set) && l.ends_with("0000000000000000")),
            "the hook holds capabilities ({set}): {caps}\n{log}"
        );
    }
}
