//! `/var/log` full: the live daemon (`redcap-monitor run`, libpcap on loopback, in front of the
//! REDCap simulator, real curl clients) writes its records into a small tmpfs the test mounts.
//! The test fills it: the daemon keeps running and judging (an abuser is still suspended, the
//! admin commands answer), the drop counter and its metric rise, one `records_write_failed`
//! alert goes out for the outage however many records are dropped; then space is freed and the
//! records resume, whole lines only. Needs root (mount); REDCAP_MONITOR_SKIP_ROOT_TESTS=1 skips
//! it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use monitor_tests::clients::api_call;
use monitor_tests::daemon::{
    LiveDaemon, file_lines as lines, fingerprints, monitor_bin, stats_json as stats,
};
use monitor_tests::sim::{SimOptions, Simulator, wait_until};
use serde_json::Value;
use test_support::Receiver;

const ABUSER: &str = "AB12CD34EF56AB12CD34EF56AB12CD34";
const COMPLIANT: &str = "0C0C0C0C1D1D1D1D2E2E2E2E3F3F3F3F";
const WAIT: Duration = Duration::from_secs(20);

/// A tmpfs of `size` mounted at `dir`, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        Tmpfs {
            dir: dir.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes `path` until the file system is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0x55u8; 4096];
    loop {
        match file.write_all(&block) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(err) => panic!("filling {}: {err}", path.display()),
        }
    }
    // What the page cache holds is on tmpfs already; nothing to sync.
}

fn dropped_no_space(dir: &Path) -> u64 {
    stats(dir)["records"]["dropped_no_space"]
        .as_u64()
        .unwrap_or(0)
}

/// `GET /metrics` from the daemon's API.
fn metrics(port: u16) -> String {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

fn metric(port: u16, series: &str) -> Option<f64> {
    metrics(port)
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn alert_events(seen: &Receiver) -> Vec<String> {
    seen.requests()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter_map(|b| b["event"].as_str().map(String::from))
        .collect()
}

fn suspended(store: &Path, fp: &str) -> bool {
    Command::new(monitor_bin().unwrap())
        .args(["suspensions", "--json", "--store"])
        .arg(store)
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(fp))
}

/// Whether the process runs (not gone, not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_full_record_disk_drops_records_counted_and_alerted_once_and_they_resume_with_space() {
    if !monitor_tests::require_root("records_full") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("log");
    let _tmpfs = Tmpfs::mount(&records, "256k");
    let key = dir.path().join("site.key");
    let fps = fingerprints(&key, &[ABUSER]).unwrap();
    let sim = Simulator::start(&SimOptions {
        tokens: vec![ABUSER.into(), COMPLIANT.into()],
        ..SimOptions::default()
    })
    .unwrap();
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let alerts = Receiver::serve(sink).unwrap();
    let api_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret = dir.path().join("team.whsec");
    monitor_tests::write_secret(
        &secret,
        "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
    );
    let config = dir.path().join("full.toml");
    let (d, r) = (dir.path().display(), records.display());
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"pcap\"\ninterfaces = [\"lo\"]\nports = [{}]\n\
             [output]\ncalls = \"{r}/calls.jsonl\"\nviolations = \"{r}/violations.jsonl\"\n\
             decisions = \"{r}/decisions.jsonl\"\nstats = \"{d}/stats.json\"\n\
             stats_interval = \"1s\"\n\
             [store]\npath = \"{d}/state/state.redb\"\n\
             [api]\nlisten = \"127.0.0.1:{api_port}\"\n\
             [enforcement]\nmode = \"on_violation\"\n\
             [alerts]\nbackoff_base = \"100ms\"\nbackoff_cap = \"300ms\"\n\
             [[alerts.sinks]]\nname = \"team\"\nkind = \"generic\"\n\
             url = \"http://127.0.0.1:{sink_port}/alerts\"\nsecret_file = \"{}\"\n\
             events = [\"records_write_failed\", \"suspended\"]\n",
            sim.port(),
            secret.display()
        ),
    )
    .unwrap();
    let store = dir.path().join("state").join("state.redb");
    let url = sim.url("/api/");
    let calls = records.join("calls.jsonl");

    let mut daemon = LiveDaemon::start(None, &config, &key).unwrap();
    api_call(&url, COMPLIANT);
    assert!(
        wait_until(WAIT, || lines(&calls).len() == 1),
        "the first call was not recorded"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&calls).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o640, "record files are created 0640");

    // The disk is full: calls go on, the abuser is still judged and suspended.
    fill(&records.join("filler"));
    for _ in 0..6 {
        api_call(&url, ABUSER);
    }
    for _ in 0..20 {
        api_call(&url, COMPLIANT);
    }
    assert!(
        wait_until(WAIT, || suspended(&store, &fps[0])),
        "the abuser was not suspended while the records' disk was full"
    );
    assert!(
        wait_until(WAIT, || dropped_no_space(dir.path()) > 0),
        "no dropped record counted: {}",
        stats(dir.path())
    );
    assert!(
        wait_until(WAIT, || metric(
            api_port,
            "redcap_monitor_records_dropped_total{reason=\"no_space\"}"
        )
        .is_some_and(|v| v > 0.0)),
        "the metric does not show the drops"
    );
    assert!(
        wait_until(WAIT, || alert_events(&alerts)
            .contains(&"records_write_failed".into())),
        "no records_write_failed alert"
    );
    assert!(
        alive(daemon.pid().unwrap()),
        "the daemon stopped: {}",
        daemon.log()
    );
    // More records dropped (a retry every second fails again): still one alert.
    let before = dropped_no_space(dir.path());
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..5 {
        api_call(&url, COMPLIANT);
    }
    assert!(wait_until(WAIT, || dropped_no_space(dir.path()) > before));

    // Space comes back: records resume, and every line in the file is whole.
    std::fs::remove_file(records.join("filler")).unwrap();
    let recorded = lines(&calls).len();
    std::thread::sleep(Duration::from_millis(1500));
    api_call(&url, COMPLIANT);
    assert!(
        wait_until(WAIT, || lines(&calls).len() > recorded),
        "records did not resume once space was back"
    );
    for line in lines(&calls) {
        serde_json::from_str::<Value>(&line)
            .unwrap_or_else(|err| panic!("a half-written record stayed: {err}: {line:?}"));
    }
    let failed = alert_events(&alerts)
        .iter()
        .filter(|e| *e == "records_write_failed")
        .count();
    assert_eq!(failed, 1, "one alert per outage");
    assert!(
        wait_until(WAIT, || stats(dir.path())["records"]["outages"] == 1),
        "{}",
        stats(dir.path())
    );
    let (status, log) = daemon.stop().unwrap();
    assert!(status.success(), "{log}");
}
