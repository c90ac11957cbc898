//! The Debian package, installed for real: `cargo xtask dist --debug` builds it, `dpkg -i`
//! installs it on this machine, the installed files, user and (not) enabled unit are checked, the
//! installed binary runs as the service user, and `dpkg --purge` removes it again, also when an
//! assertion fails. With systemd as PID 1 the service is started, reloaded and stopped for real;
//! without it that part is skipped (said on stderr). Needs root; REDCAP_MONITOR_SKIP_ROOT_TESTS=1
//! skips it. Never touches an installation it did not make.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PACKAGE: &str = "redcap-monitor";
const USER: &str = "redcap-monitor";
const CONFIG: &str = "/etc/redcap-monitor/config.toml";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn installed() -> bool {
    let out = run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    String::from_utf8_lossy(&out.stdout).contains("installed")
}

fn user_exists() -> bool {
    run("getent", &["passwd", USER]).status.success()
}

/// Purges the package (and the user, if this test created it) when the test ends, however.
struct Installation {
    remove_user: bool,
}

impl Drop for Installation {
    fn drop(&mut self) {
        if Path::new("/run/systemd/system").exists() {
            let _ = run("systemctl", &["stop", "redcap-monitor.service"]);
        }
        let _ = run("dpkg", &["--purge", PACKAGE]);
        if self.remove_user {
            let _ = run("userdel", &[USER]);
        }
    }
}

fn build_package() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["xtask", "dist", "--debug"])
        .current_dir(monitor_tests::workspace_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo xtask dist: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .rfind(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("no .deb path printed: {stdout}"));
    PathBuf::from(deb.trim())
}

#[test]
fn the_deb_installs_binary_unit_config_and_user_enables_nothing_and_purges_clean() {
    if !monitor_tests::require_root("dpkg -i of the .deb") {
        return;
    }
    if installed() {
        eprintln!("skipped: {PACKAGE} is installed on this machine already; not touching it");
        return;
    }
    let deb = build_package();
    let cleanup = Installation {
        remove_user: !user_exists(),
    };
    let out = run("dpkg", &["-i", deb.to_str().unwrap()]);
    assert!(out.status.success(), "dpkg -i: {}", text(&out));
    assert!(
        text(&out).contains("not enabled"),
        "postinst says what to do next: {}",
        text(&out)
    );

    let bin = Path::new("/usr/bin/redcap-monitor");
    assert!(bin.metadata().unwrap().mode() & 0o111 != 0);
    // /lib is /usr/lib on merged-/usr systems (Debian 12 and later, Ubuntu 20.04 and later).
    let unit = Path::new("/lib/systemd/system/redcap-monitor.service");
    assert_eq!(
        std::fs::read_to_string(unit).unwrap(),
        std::fs::read_to_string(
            monitor_tests::workspace_root().join("config/systemd/redcap-monitor.service")
        )
        .unwrap()
    );
    assert!(Path::new("/usr/lib/sysusers.d/redcap-monitor.conf").exists());
    // The records rotate: logrotate takes the shipped file and rotates a record file as the
    // service's user (the reload it asks for fails quietly without systemd).
    let logs = Path::new("/var/log/redcap-monitor");
    let made_logs = !logs.exists();
    std::fs::create_dir_all(logs).unwrap();
    run(
        "chown",
        &["redcap-monitor:redcap-monitor", "/var/log/redcap-monitor"],
    );
    std::fs::write(logs.join("calls.jsonl"), "{\"ts\":1}\n").unwrap();
    run(
        "chown",
        &[
            "redcap-monitor:redcap-monitor",
            "/var/log/redcap-monitor/calls.jsonl",
        ],
    );
    let state = tempfile::NamedTempFile::new().unwrap();
    let rotated = run(
        "logrotate",
        &[
            "--force",
            "--state",
            state.path().to_str().unwrap(),
            "/etc/logrotate.d/redcap-monitor",
        ],
    );
    assert!(rotated.status.success(), "logrotate: {}", text(&rotated));
    assert!(
        logs.join("calls.jsonl.1").exists(),
        "logrotate did not rotate calls.jsonl: {}",
        text(&rotated)
    );
    let _ = std::fs::remove_file(logs.join("calls.jsonl.1"));
    let _ = std::fs::remove_file(logs.join("calls.jsonl"));
    if made_logs {
        let _ = std::fs::remove_dir(logs);
    }
    assert!(Path::new("/usr/share/redcap-monitor/README").exists());
    for dir in ["grafana", "prometheus", "systemd-drop-ins"] {
        let source = monitor_tests::workspace_root().join("config").join(dir);
        for entry in std::fs::read_dir(&source).into_iter().flatten().flatten() {
            let shipped = Path::new("/usr/share/redcap-monitor")
                .join(dir)
                .join(entry.file_name());
            assert!(shipped.exists(), "{} is not installed", shipped.display());
        }
    }
    // REDCap's External Module, file for file, ready to be copied into REDCap's modules/.
    let module = monitor_tests::workspace_root().join("redcap-module/redcap_monitor_v1.0.0");
    for entry in std::fs::read_dir(&module).unwrap().flatten() {
        let shipped = Path::new("/usr/share/redcap-monitor/redcap-module/redcap_monitor_v1.0.0")
            .join(entry.file_name());
        assert_eq!(
            std::fs::read(&shipped).ok(),
            std::fs::read(entry.path()).ok(),
            "{} is not installed as in the sources",
            shipped.display()
        );
    }
    let conffiles = run("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    assert!(
        String::from_utf8_lossy(&conffiles.stdout).contains(CONFIG),
        "the configuration is a conffile: {}",
        text(&conffiles)
    );

    // The service user, no login; the configuration is readable by it and no one else.
    let passwd = run("getent", &["passwd", USER]);
    let entry = String::from_utf8_lossy(&passwd.stdout).into_owned();
    assert!(entry.trim_end().ends_with("nologin"), "{entry}");
    let gid = run("getent", &["group", USER]);
    let gid: u32 = String::from_utf8_lossy(&gid.stdout)
        .split(':')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    let meta = Path::new(CONFIG).metadata().unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (0, gid, 0o640)
    );

    // On this kernel (TCX) the unit needs no netlink; on one before 6.6 the postinst installs
    // the drop-in that allows it, and leaves an admin's own file alone. Its `configure` is run
    // again with `uname` saying 6.1, as Debian 12's kernel would.
    let netlink = Path::new("/etc/systemd/system/redcap-monitor.service.d/netlink-attach.conf");
    let release = String::from_utf8_lossy(&run("uname", &["-r"]).stdout).into_owned();
    let (major, minor) = release
        .split_once('.')
        .map(|(a, b)| {
            let minor: String = b.chars().take_while(char::is_ascii_digit).collect();
            (a.parse::<u32>().unwrap(), minor.parse::<u32>().unwrap())
        })
        .unwrap();
    assert_eq!(
        netlink.exists(),
        (major, minor) < (6, 6),
        "on Linux {release} the drop-in is there only before 6.6"
    );
    if !netlink.exists() {
        let stub = tempfile::tempdir().unwrap();
        let uname = stub.path().join("uname");
        std::fs::write(&uname, "#!/bin/sh\necho 6.1.0-28-amd64\n").unwrap();
        std::fs::set_permissions(&uname, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let path = format!(
            "{}:{}",
            stub.path().display(),
            std::env::var("PATH").unwrap()
        );
        let postinst = || {
            Command::new("sh")
                .args([
                    "/var/lib/dpkg/info/redcap-monitor.postinst",
                    "configure",
                    "0.0.1",
                ])
                .env("PATH", &path)
                .output()
                .unwrap()
        };
        let out = postinst();
        assert!(out.status.success(), "postinst: {}", text(&out));
        assert_eq!(
            std::fs::read(netlink).ok(),
            std::fs::read(
                monitor_tests::workspace_root().join("config/systemd-drop-ins/netlink-attach.conf")
            )
            .ok(),
            "postinst on Linux 6.1: {}",
            text(&out)
        );
        assert!(text(&out).contains("no TCX"), "{}", text(&out));
        std::fs::write(netlink, "# the admin's own\n").unwrap();
        let out = postinst();
        assert!(out.status.success(), "postinst: {}", text(&out));
        assert_eq!(
            std::fs::read_to_string(netlink).unwrap(),
            "# the admin's own\n"
        );
    }

    // Nothing enabled or started without the admin.
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/redcap-monitor.service").exists()
    );

    let version = run("/usr/bin/redcap-monitor", &["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("redcap-monitor {}", env!("CARGO_PKG_VERSION"))
    );
    let as_user = |args: &[&str]| {
        let mut all = vec![
            "--reuid",
            USER,
            "--regid",
            USER,
            "--init-groups",
            "/usr/bin/redcap-monitor",
        ];
        all.extend_from_slice(args);
        run("setpriv", &all)
    };
    let check = as_user(&["check-config", CONFIG]);
    assert!(
        check.status.success(),
        "check-config as {USER}: {}",
        text(&check)
    );
    assert!(text(&check).contains("valid"), "{}", text(&check));
    let verify = run(
        "systemd-analyze",
        &["verify", "--man=no", unit.to_str().unwrap()],
    );
    assert!(
        verify.status.success() && text(&verify).trim().is_empty(),
        "installed unit: {}",
        text(&verify)
    );

    if Path::new("/run/systemd/system").exists() {
        service_under_systemd();
    } else {
        eprintln!(
            "skipped starting the service: systemd is not PID 1 here (/run/systemd/system is \
             missing), so the installed binary and check-config were run directly instead"
        );
    }

    drop(cleanup);
    assert!(!installed(), "dpkg --purge left the package");
    for gone in [
        bin,
        unit,
        Path::new(CONFIG),
        Path::new("/var/lib/redcap-monitor"),
        netlink,
    ] {
        assert!(!gone.exists(), "{} is left after purge", gone.display());
    }
}

/// Start, reload and stop under the real systemd, on loopback.
fn service_under_systemd() {
    std::fs::write(
        CONFIG,
        "[capture]\nmode = \"auto\"\ninterfaces = [\"lo\"]\nports = [18084]\n",
    )
    .unwrap();
    let start = run("systemctl", &["start", "redcap-monitor.service"]);
    assert!(start.status.success(), "systemctl start: {}", text(&start));
    let active = run("systemctl", &["is-active", "redcap-monitor.service"]);
    assert_eq!(String::from_utf8_lossy(&active.stdout).trim(), "active");
    let status = run(
        "systemctl",
        &["show", "-p", "StatusText", "redcap-monitor.service"],
    );
    assert!(
        String::from_utf8_lossy(&status.stdout).contains(" on lo: "),
        "STATUS= reaches systemd: {}",
        text(&status)
    );
    let reload = run("systemctl", &["reload", "redcap-monitor.service"]);
    assert!(
        reload.status.success(),
        "systemctl reload: {}",
        text(&reload)
    );
    std::fs::write(CONFIG, "[capture]\nmode = \"xdp\"\n").unwrap();
    let refused = run("systemctl", &["reload", "redcap-monitor.service"]);
    assert!(
        !refused.status.success(),
        "ExecReload's check-config refuses an invalid file"
    );
    let active = run("systemctl", &["is-active", "redcap-monitor.service"]);
    assert_eq!(String::from_utf8_lossy(&active.stdout).trim(), "active");
    let stop = run("systemctl", &["stop", "redcap-monitor.service"]);
    assert!(stop.status.success(), "systemctl stop: {}", text(&stop));
}
