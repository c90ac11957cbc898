//! The daemon as a service: SIGHUP reloads the configuration without losing what it counted,
//! refuses an invalid file and keeps the running one; and the sd_notify protocol, heard on a real
//! unix datagram socket standing in for systemd. Needs root (network namespaces, the eBPF probe);
//! REDCAP_MONITOR_SKIP_ROOT_TESTS=1 skips it.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use monitor_tests::clients::curl_in;
use monitor_tests::daemon::{LiveDaemon, without_api_listener};
use monitor_tests::netns::NamespacePair;
use monitor_tests::sim::{SimOptions, Simulator, terminate, wait_until};
use monitor_tests::unit::{
    Capabilities, service_user, setpriv_args, traced_as_the_unit, unit_setting,
};
use serde_json::Value;

const TOKEN: &str = "7A1B2C3D4E5F60718293A4B5C6D7E8F9";
const PORT: u16 = 8080;

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn sighup_applies_a_tightened_rule_to_the_calls_already_counted_and_refuses_an_invalid_file() {
    if !monitor_tests::require_root("SIGHUP reload") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = NamespacePair::create(207).unwrap();
    let _sim = Simulator::start(&SimOptions {
        tokens: vec![TOKEN.into()],
        netns: Some(pair.server_ns.clone()),
        bind: Some("0.0.0.0".into()),
        port: Some(PORT),
        ..SimOptions::default()
    })
    .unwrap();
    let calls = dir.path().join("calls.jsonl");
    let violations = dir.path().join("violations.jsonl");
    let config = dir.path().join("config.toml");
    let write_config = |limit: &str, extra: &str| {
        let text = format!(
            "[capture]\nmode = \"ebpf\"\ninterfaces = [\"{}\"]\nports = [{PORT}]\n{extra}\n\
             [output]\ncalls = \"{}\"\nviolations = \"{}\"\n\
             [[policy.rules]]\nname = \"api_calls\"\nlimit = {limit}\nwindow = \"10m\"\n\
             [store]\npath = \"{}\"\n{}",
            pair.server_if,
            calls.display(),
            violations.display(),
            dir.path().join("state.redb").display(),
            without_api_listener()
        );
        std::fs::write(&config, text).unwrap();
    };
    write_config("3", "");
    let mut daemon =
        LiveDaemon::start(Some(&pair.server_ns), &config, &dir.path().join("site.key")).unwrap();
    let api = format!("http://{}:{PORT}/api/", pair.server_ip);
    let token = format!("token={TOKEN}");
    let call = || {
        curl_in(
            Some(&pair.client_ns),
            &[
                "-sS",
                "-o",
                "/dev/null",
                &api,
                "-d",
                &token,
                "-d",
                "content=version",
            ],
        )
        .unwrap()
    };
    let wait_calls = |n: usize| {
        assert!(
            wait_until(Duration::from_secs(10), || lines(&calls).len() >= n),
            "{n} calls not written: {:?}",
            lines(&calls)
        );
    };
    let second = Duration::from_secs(10);

    call();
    call();
    wait_calls(2);
    assert!(lines(&violations).is_empty(), "2 calls are within 3");

    // Tightened to 1 call per window, and a key that applies only at start changed.
    write_config("1", "ring_bytes = 8388608");
    daemon.signal("HUP").unwrap();
    let log = daemon
        .wait_for_log("configuration reloaded", 1, second)
        .unwrap();
    assert!(
        log.contains("capture.ring_bytes") && log.contains("restart the service"),
        "a change that needs a restart is named: {log}"
    );
    call();
    wait_calls(3);
    let found = lines(&violations);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (&found[0]["rule"], &found[0]["limit"], &found[0]["count"]),
        (&"api_calls".into(), &1.into(), &3.into()),
        "the third call breaks the new limit, counted with the two before the reload: {found:?}"
    );

    // An invalid file: two problems, each named; the running configuration stays.
    write_config("\"one\"", "bogus_key = 1");
    daemon.signal("HUP").unwrap();
    let log = daemon.wait_for_log("reload refused", 1, second).unwrap();
    let refused = log.lines().find(|l| l.contains("reload refused")).unwrap();
    assert!(
        refused.contains("capture.bogus_key") && refused.contains("policy.rules[0].limit"),
        "{refused}"
    );
    call();
    wait_calls(4);
    let found = lines(&violations);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(
        (&found[1]["limit"], &found[1]["count"]),
        (&1.into(), &4.into()),
        "the limit of 1 still holds after the refused reload: {found:?}"
    );

    let (status, log) = daemon.stop().unwrap();
    assert!(status.success(), "{status}: {log}");
}

/// CLOCK_MONOTONIC in microseconds, as the daemon reads it.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

/// Messages received within `time`.
fn messages_for(socket: &UnixDatagram, time: Duration) -> Vec<String> {
    let end = Instant::now() + time;
    let mut buf = [0u8; 4096];
    let mut found = Vec::new();
    while Instant::now() < end {
        if let Ok(n) = socket.recv(&mut buf) {
            found.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    found
}

#[test]
fn systemd_hears_ready_after_the_probe_is_attached_then_watchdog_status_reloading_and_stopping() {
    if !monitor_tests::require_root("sd_notify protocol") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"ebpf\"\ninterfaces = [\"lo\"]\nports = [18083]\n\
             [store]\npath = \"{}\"\n{}",
            dir.path().join("state.redb").display(),
            without_api_listener()
        ),
    )
    .unwrap();
    let socket_env = socket_path.to_string_lossy().into_owned();
    let mut daemon = LiveDaemon::start_with_env(
        None,
        &config,
        &dir.path().join("site.key"),
        // Ping every 200 ms.
        &[
            ("NOTIFY_SOCKET", socket_env.as_str()),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
    .unwrap();

    let first = messages_for(&socket, Duration::from_millis(1100));
    assert_eq!(
        first.first().map(String::as_str),
        Some("READY=1\nSTATUS=ebpf on lo: 0 calls, 0 violations, server responsive"),
        "{first:?}"
    );
    assert!(
        daemon.log().contains("capturing with the eBPF probe"),
        "READY comes once the probe is attached: {}",
        daemon.log()
    );
    let pings = first.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!((3..=7).contains(&pings), "pings every 200 ms: {first:?}");

    let before = monotonic_usec();
    daemon.signal("HUP").unwrap();
    let reload: Vec<String> = messages_for(&socket, Duration::from_millis(600))
        .into_iter()
        .filter(|m| m != "WATCHDOG=1")
        .collect();
    assert_eq!(reload.len(), 2, "{reload:?}");
    let usec: u64 = reload[0]
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{reload:?}"))
        .parse()
        .unwrap();
    assert!(
        usec >= before && usec < before + 5_000_000,
        "MONOTONIC_USEC is now on CLOCK_MONOTONIC: {usec} vs {before}"
    );
    assert!(
        reload[1].starts_with("READY=1\nSTATUS=ebpf on lo"),
        "{reload:?}"
    );

    daemon.signal("TERM").unwrap();
    let last = messages_for(&socket, Duration::from_millis(600));
    assert!(last.iter().any(|m| m == "STOPPING=1"), "{last:?}");
    let (status, log) = daemon.stop().unwrap_or_else(|_| {
        panic!("daemon gone");
    });
    assert!(status.success(), "{status}: {log}");
}

/// A root directory for `systemd-analyze --root`: the system's units, the daemon at
/// /usr/bin/redcap-monitor, the other programs the unit runs, and the project's unit in
/// /etc/systemd/system with `drop_ins` (files of `config/systemd-drop-ins/`) beside it.
fn offline_root(drop_ins: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for dir in ["usr/bin", "bin", "etc/systemd/system", "lib/systemd"] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    std::fs::copy(
        monitor_tests::daemon::monitor_bin().unwrap(),
        r.join("usr/bin/redcap-monitor"),
    )
    .unwrap();
    std::fs::copy("/bin/kill", r.join("bin/kill")).unwrap();
    std::fs::copy("/usr/bin/install", r.join("usr/bin/install")).unwrap();
    let copied = std::process::Command::new("cp")
        .args(["-r", "/lib/systemd/system"])
        .arg(r.join("lib/systemd/"))
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::copy(
        monitor_tests::workspace_root().join("config/systemd/redcap-monitor.service"),
        r.join("etc/systemd/system/redcap-monitor.service"),
    )
    .unwrap();
    let drop_in_dir = r.join("etc/systemd/system/redcap-monitor.service.d");
    for name in drop_ins {
        std::fs::create_dir_all(&drop_in_dir).unwrap();
        std::fs::copy(
            monitor_tests::workspace_root()
                .join("config/systemd-drop-ins")
                .join(name),
            drop_in_dir.join(name),
        )
        .unwrap();
    }
    root
}

fn systemd_analyze(root: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("systemd-analyze")
        .args(args)
        .arg(format!("--root={}", root.display()))
        .arg("redcap-monitor.service")
        .output()
        .expect("systemd-analyze (package systemd, installed by `cargo xtask setup`)")
}

#[test]
fn the_unit_passes_systemd_analyze_verify_with_no_complaint() {
    // Alone and with each shipped drop-in.
    for drop_ins in [&[][..], &["netlink-attach.conf"], &["libpcap.conf"]] {
        let root = offline_root(drop_ins);
        let out = systemd_analyze(root.path(), &["verify", "--man=no"]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // verify exits 0 on unknown keys too, with a line saying it ignores them: none allowed.
        assert!(
            out.status.success() && said.trim().is_empty(),
            "{drop_ins:?}: {said}"
        );
    }
}

#[test]
fn the_units_security_exposure_is_the_one_the_readme_records() {
    let score = exposure(&[]);
    assert!(score <= 2.0, "hardening regressed: {score}");
    let readme =
        std::fs::read_to_string(monitor_tests::workspace_root().join("README.md")).unwrap();
    let recorded = format!("exposure level {score:.1}");
    assert!(
        readme.contains(&recorded),
        "README should say `{recorded}` (systemd-analyze security says {score})"
    );
    // Each shipped drop-in widens the unit only for its capture; the README gives each level.
    for drop_in in ["netlink-attach.conf", "libpcap.conf"] {
        let widened = exposure(&[drop_in]);
        assert!(widened >= score, "{drop_in}: {widened}");
        let recorded = format!("`{drop_in}` rates it **{widened:.1}**");
        assert!(
            readme.contains(&recorded),
            "README should say {recorded} (systemd-analyze security says {widened})"
        );
    }
}

/// `systemd-analyze security`'s overall exposure of the unit with `drop_ins`.
fn exposure(drop_ins: &[&str]) -> f64 {
    let root = offline_root(drop_ins);
    let out = systemd_analyze(root.path(), &["security", "--offline=yes", "--no-pager"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let level = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for redcap-monitor.service: ")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    level.split_whitespace().next().unwrap().parse().unwrap()
}

/// A size as systemd writes it (`768M`, `1G`), in bytes.
fn unit_bytes(value: &str) -> u64 {
    let (number, unit) = value.split_at(value.len() - 1);
    let scale = match unit {
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => panic!("{value}: a size in K, M or G"),
    };
    number.parse::<u64>().unwrap() * scale
}

#[test]
fn the_unit_bounds_memory_and_tasks_writes_no_core_and_yields_cpu_and_io_to_the_web_server() {
    let high = unit_bytes(&unit_setting("MemoryHigh").expect("MemoryHigh="));
    let max = unit_bytes(&unit_setting("MemoryMax").expect("MemoryMax="));
    assert!(
        high < max && max <= 2 << 30,
        "MemoryHigh={high} MemoryMax={max}"
    );
    let tasks: u64 = unit_setting("TasksMax")
        .expect("TasksMax=")
        .parse()
        .unwrap();
    assert!((16..=256).contains(&tasks), "TasksMax={tasks}");
    assert_eq!(unit_setting("LimitCORE").as_deref(), Some("0"));
    // Below the default weight (100) that the web server's unit runs with.
    for key in ["CPUWeight", "IOWeight"] {
        let weight: u32 = unit_setting(key)
            .unwrap_or_else(|| panic!("{key}="))
            .parse()
            .unwrap();
        assert!(weight < 100, "{key}={weight}");
    }
    assert_eq!(
        unit_setting("ProtectKernelTunables").as_deref(),
        Some("yes")
    );
    assert_eq!(unit_setting("ProcSubset").as_deref(), Some("pid"));
}

/// A cgroup (v1 hierarchies `pids` and `memory`, or the v2 tree) holding the unit's `TasksMax=`
/// and `MemoryMax=`; removed on drop. `None` when this host lets no test make one.
struct Limits {
    dirs: Vec<PathBuf>,
}

impl Limits {
    fn from_unit() -> Option<Limits> {
        let tasks = unit_setting("TasksMax")?;
        let memory = unit_bytes(&unit_setting("MemoryMax")?).to_string();
        let name = format!("redcap-monitor-test-{}", std::process::id());
        let own = |controller: &str| -> Option<PathBuf> {
            let list = std::fs::read_to_string("/proc/self/cgroup").ok()?;
            let path = list.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers
                    .split(',')
                    .any(|c| c == controller)
                    .then(|| path.trim_start_matches('/').to_owned())
            })?;
            Some(Path::new("/sys/fs/cgroup").join(controller).join(path))
        };
        let mut limits = Limits { dirs: Vec::new() };
        let v1 = [
            (own("pids")?, "pids.max", tasks),
            (own("memory")?, "memory.limit_in_bytes", memory),
        ];
        for (parent, file, value) in v1 {
            let dir = parent.join(&name);
            std::fs::create_dir(&dir).ok()?;
            limits.dirs.push(dir.clone());
            std::fs::write(dir.join(file), &value).ok()?;
        }
        Some(limits)
    }

    /// `echo $$ > …/cgroup.procs` for each: the shell, and what it execs, is in them.
    fn join_commands(&self) -> String {
        self.dirs
            .iter()
            .map(|d| format!("echo $$ > {}/cgroup.procs && ", d.display()))
            .collect()
    }

    fn holds(&self, pid: u32) -> bool {
        self.dirs.iter().all(|d| {
            std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.trim() == pid.to_string())
        })
    }
}

impl Drop for Limits {
    fn drop(&mut self) {
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Runs `run` in `mode` on loopback the way the unit confines it, as far as a host without
/// systemd allows: as the service user with `caps`, in a mount namespace with `/proc` holding
/// only processes (`ProcSubset=pid`, `ProtectProc=invisible`) and `/sys` read-only
/// (`ProtectKernelTunables=`), with `LimitCORE=0` (`monitor_tests::unit::run_as_the_unit`), in
/// a cgroup with the unit's `TasksMax=` and `MemoryMax=`; `capture` holds `[capture]` settings
/// (`mode = "pcap"`). Returns whether it started capturing,
/// its log, and its `/proc/PID/limits` while it ran; with `trace`, strace (run by the service
/// user, the daemon its child) records the daemon's `socket` and `bpf` calls, and what it
/// recorded takes the limits' place (the pid is strace's).
fn run_confined(
    caps: &Capabilities,
    capture: &str,
    limits: &Limits,
    trace: bool,
) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[capture]\n{capture}\ninterfaces = [\"lo\"]\nports = [18086]\n\
             [site]\nkey_file = \"{0}/site.key\"\n[store]\npath = \"{0}/state.redb\"\n{1}",
            dir.path().display(),
            without_api_listener(),
        ),
    )
    .unwrap();
    let log_path = dir.path().join("log");
    let daemon = monitor_tests::daemon::monitor_bin().unwrap();
    let trace_path = dir.path().join("strace");
    let trace = trace.then_some(trace_path.as_path());
    let tracer: Vec<std::ffi::OsString> = match trace {
        Some(trace) => [
            "/usr/bin/strace",
            "-f",
            "-qq",
            "-e",
            "trace=socket,bpf",
            "-o",
        ]
        .map(Into::into)
        .into_iter()
        .chain([trace.into()])
        .collect(),
        None => Vec::new(),
    };
    let confined = traced_as_the_unit(
        None,
        &[(dir.path(), dir.path())],
        caps,
        &tracer,
        &daemon,
        &["run".into(), "--config".into(), config.clone().into()],
    );
    // The shell joins the cgroups, then execs the confinement (the pid stays the daemon's).
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{}exec \"$@\"", limits.join_commands()))
        .arg("sh")
        .arg(confined.get_program())
        .args(confined.get_args())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let started = wait_until(Duration::from_secs(15), || {
        log().contains("capturing with") || child.try_wait().unwrap().is_some()
    }) && log().contains("capturing with");
    let mut proc_limits = String::new();
    if started && trace.is_none() {
        // Every exec kept the pid: it is the daemon's.
        assert!(
            limits.holds(child.id()),
            "the daemon is not in the test's cgroups"
        );
        proc_limits =
            std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap_or_default();
    }
    if trace.is_some() {
        // `strace -o FILE PROG` blocks fatal signals (its -I3 default): the daemon, its child,
        // gets the SIGTERM, and strace leaves when it has.
        for daemon in children_of(child.id()) {
            unsafe { libc::kill(daemon, libc::SIGTERM) };
        }
    }
    let status = terminate(&mut child, Duration::from_secs(20));
    if started && trace.is_none() {
        let status = status.unwrap_or_else(|e| panic!("{e}: {}", log()));
        assert!(status.success(), "{status}: {}", log());
    }
    if let Some(trace) = trace {
        let traced = std::fs::read_to_string(trace).unwrap_or_default();
        let pids: std::collections::BTreeSet<i32> = traced
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        wait_until(Duration::from_secs(15), || {
            pids.iter()
                .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        });
        for pid in pids {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        return (started, log(), traced);
    }
    (started, log(), proc_limits)
}

#[test]
fn the_daemon_captures_in_each_mode_confined_as_the_unit_confines_it() {
    if !monitor_tests::require_root("the unit's confinement") {
        return;
    }
    let Some(limits) = Limits::from_unit() else {
        eprintln!("skipped: this host lets no test make a pids and memory cgroup");
        return;
    };
    for (capture, drop_ins, says) in [
        ("mode = \"ebpf\"", &[][..], "capturing with the eBPF probe"),
        (
            "mode = \"pcap\"",
            &["libpcap.conf"][..],
            "capturing with libpcap",
        ),
        (
            "mode = \"tls\"",
            &[][..],
            "capturing with the OpenSSL uprobes",
        ),
    ] {
        let caps = Capabilities::of_unit(drop_ins);
        let (started, log, proc_limits) = run_confined(&caps, capture, &limits, false);
        assert!(started && log.contains(says), "{capture}: {log}");
        let core = proc_limits
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .unwrap_or_else(|| panic!("{proc_limits}"));
        assert_eq!(
            core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
            ["0", "0"],
            "{core}"
        );
    }
}

/// The unit grants what the probe (TCX) and the uprobes use and nothing more: under it alone
/// (its capabilities, and its `RestrictAddressFamilies=` enforced by seccomp as systemd does) the
/// daemon captures HTTP and HTTPS, and strace sees it open no packet socket and no netlink socket
/// while it loads its programs (`bpf`, traced too, shows the trace works). What it does not
/// grant is refused with the drop-in to install: libpcap needs `libpcap.conf`, netlink attach
/// (kernels without TCX; forced here with `tc_attach = "netlink"`) `netlink-attach.conf`; with
/// the drop-in, each captures.
#[test]
fn the_unit_grants_only_what_the_probe_and_uprobes_use_and_names_the_drop_in_for_the_rest() {
    if !monitor_tests::require_root("the unit's socket families") {
        return;
    }
    let Some(limits) = Limits::from_unit() else {
        eprintln!("skipped: this host lets no test make a pids and memory cgroup");
        return;
    };
    let unit = Capabilities::of_unit(&[]);
    assert!(!unit.ambient.contains(&"net_raw".to_owned()), "{unit:?}");
    assert_eq!(unit.families, ["AF_UNIX", "AF_INET", "AF_INET6"]);
    for (capture, says) in [
        ("mode = \"ebpf\"", "capturing with the eBPF probe"),
        ("mode = \"tls\"", "capturing with the OpenSSL uprobes"),
    ] {
        let (started, log, traced) = run_confined(&unit, capture, &limits, true);
        assert!(started && log.contains(says), "{capture}: {log}");
        assert!(
            traced.contains("bpf(BPF_PROG_LOAD"),
            "{capture}: no trace:\n{traced}"
        );
        for family in ["AF_PACKET", "AF_NETLINK"] {
            assert!(
                !traced
                    .lines()
                    .any(|l| l.contains("socket(") && l.contains(family)),
                "{capture}: the daemon tried an {family} socket, which the unit forbids:\n{traced}"
            );
        }
    }
    for (capture, drop_in, says) in [
        ("mode = \"pcap\"", "libpcap.conf", "capturing with libpcap"),
        (
            "mode = \"ebpf\"\ntc_attach = \"netlink\"",
            "netlink-attach.conf",
            "capturing with the eBPF probe",
        ),
    ] {
        let (started, log, _) = run_confined(&unit, capture, &limits, false);
        assert!(!started, "{capture} captured without {drop_in}: {log}");
        let advice = format!(
            "install -D -m 0644 /usr/share/redcap-monitor/systemd-drop-ins/{drop_in} \
             /etc/systemd/system/redcap-monitor.service.d/{drop_in}"
        );
        assert!(
            log.contains(&advice) && log.contains("RestrictAddressFamilies="),
            "{capture}: the refusal does not name {drop_in}:\n{log}"
        );
        let widened = Capabilities::of_unit(&[drop_in]);
        let (started, log, _) = run_confined(&widened, capture, &limits, false);
        assert!(
            started && log.contains(says),
            "{capture} with {drop_in}: {log}"
        );
    }
    // Mode "auto" where the probe cannot load (no CAP_BPF, nor CAP_SYS_ADMIN standing in for
    // it): its libpcap fallback is refused too, and the error gives both reasons.
    let no_bpf: Vec<String> = ["perfmon", "net_admin"].map(String::from).to_vec();
    let (started, log, _) = run_confined(
        &unit.clone().only(&no_bpf),
        "mode = \"auto\"",
        &limits,
        false,
    );
    assert!(!started, "auto captured without CAP_BPF: {log}");
    assert!(
        log.contains("CAP_BPF") && log.contains("systemd-drop-ins/libpcap.conf"),
        "auto's error does not give both reasons:\n{log}"
    );
}

/// The processes `pid` started (its main thread's children).
fn children_of(pid: u32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The capabilities `AmbientCapabilities=` in the unit grants, lower-case without `CAP_`.
fn unit_capabilities() -> Vec<String> {
    monitor_tests::unit::unit_capabilities("AmbientCapabilities")
}

/// Runs `run` in `mode` on loopback as `nobody` holding exactly `caps` (ambient, inheritable
/// and bounding, as systemd sets them for `User=` with `AmbientCapabilities=`). Returns whether
/// it started capturing, and its log.
fn run_as_nobody(caps: &[String], mode: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"{mode}\"\ninterfaces = [\"lo\"]\nports = [18085]\n\
             [site]\nkey_file = \"{0}/site.key\"\n[store]\npath = \"{0}/state.redb\"\n{1}",
            dir.path().display(),
            without_api_listener()
        ),
    )
    .unwrap();
    let log_path = dir.path().join("log");
    let mut child = std::process::Command::new("setpriv")
        .args(setpriv_args(
            &service_user(),
            &Capabilities::of_unit(&[]).only(caps),
        ))
        .arg(monitor_tests::daemon::monitor_bin().unwrap())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("setpriv (util-linux)");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let started = wait_until(Duration::from_secs(15), || {
        log().contains("capturing with") || child.try_wait().unwrap().is_some()
    }) && log().contains("capturing with");
    let status = terminate(&mut child, Duration::from_secs(20));
    if started {
        let status = status.unwrap_or_else(|e| panic!("{e}: {}", log()));
        assert!(status.success(), "{status}: {}", log());
    }
    (started, log())
}

#[test]
fn the_units_capabilities_let_an_unprivileged_user_capture_in_each_mode_and_each_is_needed() {
    if !monitor_tests::require_root("capabilities of the unit") {
        return;
    }
    let caps = unit_capabilities();
    assert_eq!(caps, ["bpf", "perfmon", "net_admin", "sys_admin"]);
    // libpcap's capability comes with its drop-in.
    let with_libpcap = Capabilities::of_unit(&["libpcap.conf"]).ambient;
    assert_eq!(
        with_libpcap,
        ["bpf", "perfmon", "net_admin", "sys_admin", "net_raw"]
    );
    let (started, log) = run_as_nobody(&caps, "ebpf");
    assert!(
        started && log.contains("capturing with the eBPF probe"),
        "{log}"
    );
    let (started, log) = run_as_nobody(&with_libpcap, "pcap");
    assert!(started && log.contains("capturing with libpcap"), "{log}");
    // HTTPS: the uprobes attach to the distribution's libssl.
    let (started, log) = run_as_nobody(&caps, "tls");
    assert!(
        started && log.contains("capturing with the OpenSSL uprobes") && log.contains("libssl"),
        "{log}"
    );
    // Only what a mode needs: without any one of its capabilities it cannot capture. The kernel
    // lets CAP_SYS_ADMIN stand in for CAP_BPF, CAP_PERFMON and (for TCX links) CAP_NET_ADMIN, so
    // those are shown needed without it: the unit as an HTTP-only site's drop-in leaves it
    // (which still captures HTTP, and says HTTPS is not seen).
    let http_only: Vec<String> = caps.iter().filter(|c| *c != "sys_admin").cloned().collect();
    let (started, log) = run_as_nobody(&http_only, "ebpf");
    assert!(
        started && log.contains("capturing with the eBPF probe") && log.contains("CAP_SYS_ADMIN"),
        "{log}"
    );
    for (mode, needed, from) in [
        ("ebpf", "bpf", &http_only),
        ("ebpf", "perfmon", &http_only),
        ("ebpf", "net_admin", &http_only),
        ("pcap", "net_raw", &with_libpcap),
        // Current kernels refuse uprobes without CAP_SYS_ADMIN (CVE-2025-38466).
        ("tls", "sys_admin", &caps),
    ] {
        let fewer: Vec<String> = from.iter().filter(|c| *c != needed).cloned().collect();
        let (started, log) = run_as_nobody(&fewer, mode);
        assert!(!started, "{mode} captured without CAP_{needed}: {log}");
    }
}

/// The capture capabilities (bit N: capability N) `CapEff`, `CapPrm` or `CapAmb` of each of
/// `pid`'s threads holds, by thread id.
fn thread_capabilities(pid: u32) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let mut held = 0u64;
        for field in ["CapEff:", "CapPrm:", "CapAmb:"] {
            held |= status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0);
        }
        found.push((task.file_name().to_string_lossy().into_owned(), held));
    }
    found
}

const CAP_NET_ADMIN: u64 = 1 << 12;
const CAP_NET_RAW: u64 = 1 << 13;
const CAP_SYS_ADMIN: u64 = 1 << 21;
const CAP_PERFMON: u64 = 1 << 38;
const CAP_BPF: u64 = 1 << 39;

/// Runs `run` as `nobody` with the unit's capabilities in `mode` (`tls` says whether the
/// OpenSSL uprobes are on), in front of the REDCap simulator on loopback; once it captures,
/// returns every thread's capture capabilities, then makes an API call and says whether it was
/// recorded.
fn capabilities_after_attach(mode: &str, tls: bool) -> (Vec<(String, u64)>, bool, String) {
    let sim = Simulator::start(&SimOptions {
        tokens: vec![TOKEN.into()],
        ..SimOptions::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
    std::fs::set_permissions(dir.path(), perms).unwrap();
    let config = dir.path().join("config.toml");
    let calls = dir.path().join("calls.jsonl");
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"{mode}\"\ninterfaces = [\"lo\"]\nports = [{port}]\n\
             [capture.tls]\nenabled = {tls}\n\
             [output]\ncalls = \"{calls}\"\n\
             [site]\nkey_file = \"{0}/site.key\"\n[store]\npath = \"{0}/state.redb\"\n{1}",
            dir.path().display(),
            without_api_listener(),
            port = sim.port(),
            calls = calls.display(),
        ),
    )
    .unwrap();
    let log_path = dir.path().join("log");
    let drop_ins: &[&str] = if mode == "pcap" {
        &["libpcap.conf"]
    } else {
        &[]
    };
    let mut child = std::process::Command::new("setpriv")
        .args(setpriv_args(
            &service_user(),
            &Capabilities::of_unit(drop_ins),
        ))
        .arg(monitor_tests::daemon::monitor_bin().unwrap())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("setpriv (util-linux)");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let started = wait_until(Duration::from_secs(15), || {
        log().contains("capturing with") || child.try_wait().unwrap().is_some()
    }) && log().contains("capturing with");
    // The drop follows the attach at once; its log line says it is done (a daemon that does not
    // drop never says so, and its threads are read all the same).
    wait_until(Duration::from_secs(3), || {
        log().contains("capabilities the capture no longer needs")
    });
    let threads = if started {
        thread_capabilities(child.id())
    } else {
        Vec::new()
    };
    let recorded = started && {
        monitor_tests::clients::api_call(&sim.url("/api/"), TOKEN);
        wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&calls).is_ok_and(|c| c.contains("/api/"))
        })
    };
    let status =
        terminate(&mut child, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{e}: {}", log()));
    assert!(status.success(), "{status}: {}", log());
    (threads, recorded, log())
}

#[test]
fn after_attach_no_thread_holds_a_capture_capability_it_no_longer_needs_and_capture_goes_on() {
    if !monitor_tests::require_root("capabilities dropped after attach") {
        return;
    }
    // libpcap: its sockets are open, nothing is attached later: every capture capability goes.
    let (threads, recorded, log) = capabilities_after_attach("pcap", false);
    assert!(
        threads.len() > 1,
        "the daemon's threads were not read: {log}"
    );
    for (tid, held) in &threads {
        assert_eq!(
            held & (CAP_NET_ADMIN | CAP_NET_RAW | CAP_SYS_ADMIN | CAP_PERFMON | CAP_BPF),
            0,
            "thread {tid} holds {held:#x}: {log}"
        );
    }
    assert!(recorded, "no call recorded after the drop: {log}");
    // The probe with the uprobes: TC attach and packet sockets are no longer needed; what
    // attaches uprobes to a libssl found later stays (in the thread that rescans, the main one).
    let (threads, recorded, log) = capabilities_after_attach("ebpf", true);
    assert!(
        log.contains("capturing with the eBPF probe and the OpenSSL uprobes"),
        "{log}"
    );
    assert!(
        threads.len() > 1,
        "the daemon's threads were not read: {log}"
    );
    for (tid, held) in &threads {
        assert_eq!(
            held & (CAP_NET_ADMIN | CAP_NET_RAW),
            0,
            "thread {tid} holds {held:#x}: {log}"
        );
    }
    let main = threads
        .iter()
        .map(|(_, held)| *held)
        .max()
        .unwrap_or_default();
    assert_eq!(main, CAP_SYS_ADMIN | CAP_PERFMON | CAP_BPF, "{log}");
    assert!(recorded, "no call recorded after the drop: {log}");
}

/// The tests' reproduction of the unit's seccomp filter (`unit-seccomp`, in every
/// `run_as_the_unit`) is live and as strict as the unit: a program under it may open an inet
/// socket, but not a packet socket (`RestrictAddressFamilies=`), nor change its priority or CPU
/// affinity (`SystemCallFilter=~@resources`), nor chroot (`@privileged` is not allowed).
#[test]
fn the_tests_confine_the_daemon_with_the_units_own_syscall_filter() {
    if !monitor_tests::require_root("the unit's syscall filter") {
        return;
    }
    let script = r#"
import errno, os, socket
def attempt(name, call):
    try:
        call()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
attempt("inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
attempt("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
attempt("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, 0, 5))
attempt("sched_setaffinity", lambda: os.sched_setaffinity(0, {0}))
attempt("chroot", lambda: os.chroot("/"))
"#;
    let out = traced_as_the_unit(
        None,
        &[],
        &Capabilities::of_unit(&[]),
        &[],
        Path::new("/usr/bin/python3"),
        &["-c".into(), script.into()],
    )
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        [
            "inet ok",
            "packet EAFNOSUPPORT",
            "setpriority EPERM",
            "sched_setaffinity EPERM",
            "chroot EPERM"
        ]
    );
}
