//! A sustained flood of API calls through the real kernel probe, the daemon (a debug build, so
//! the flood outruns it) attached to the server's veth in a namespace pair: the live loop reads
//! the ring in slices (`capture.max_drain_records`, `max_drain_time`, the defaults), so systemd's
//! watchdog keeps hearing `WATCHDOG=1` on a real unix datagram socket standing in for systemd,
//! and the stats file counts the drains that stopped at their budget. With a drain that has no
//! bound (`max_drain_time = "1h"`, `max_drain_records = 100000000`) the same flood gets one ping
//! in 12 s. No timing is asserted beyond the watchdog's own rule: a ping at least every
//! `WatchdogSec`. Needs root; REDCAP_MONITOR_SKIP_ROOT_TESTS=1 skips it.

mod probe_env;

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use monitor_tests::daemon::{LiveDaemon, without_api_listener};
use probe_env::{SERVER_IP, SERVER_PORT, namespace_pair, start_server};
use serde_json::Value;

/// `WatchdogSec` as the test configures it (systemd passes it as `WATCHDOG_USEC`): the daemon
/// pings every half of it, and systemd would kill it after a whole one without a ping.
const WATCHDOG: Duration = Duration::from_secs(4);
const FLOOD_SECONDS: u64 = 12;

/// API calls as fast as `conns` keep-alive connections allow, for `seconds`; prints how many
/// were answered.
const FLOOD_PY: &str = r#"
import http.client, sys, threading, time
host, port, conns, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
body = ("token=0123456789ABCDEF0123456789ABCDEF&content=record&action=export&format=json&data="
        + "x" * 4000).encode()
end = time.time() + seconds
answered = [0] * conns
def drive(i):
    c = http.client.HTTPConnection(host, port, timeout=30)
    while time.time() < end:
        c.request("POST", "/api/", body=body,
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
        r = c.getresponse()
        r.read()
        answered[i] += 1
    c.close()
threads = [threading.Thread(target=drive, args=(i,)) for i in range(conns)]
for t in threads: t.start()
for t in threads: t.join()
print(sum(answered))
"#;

/// Collects every `WATCHDOG=1` datagram with the time it arrived, until `stop`.
fn listen(
    socket: UnixDatagram,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Instant>>>, std::thread::JoinHandle<()>) {
    let pings = Arc::new(Mutex::new(Vec::new()));
    let seen = pings.clone();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            if let Ok(n) = socket.recv(&mut buf)
                && &buf[..n] == b"WATCHDOG=1"
            {
                seen.lock().unwrap().push(Instant::now());
            }
        }
    });
    (pings, thread)
}

#[test]
fn the_watchdog_keeps_hearing_the_loop_while_a_flood_outruns_each_drain() {
    if !monitor_tests::require_root("watchdog under a flood") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pair = namespace_pair();
    // The server's own log of every exchange would grow by gigabytes under the flood.
    let _server = start_server(&pair, std::path::Path::new("/dev/null"), 300);
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let stats = dir.path().join("stats.json");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"ebpf\"\ninterfaces = [\"{}\"]\nports = [{SERVER_PORT}]\n\
             [output]\nstats = \"{}\"\nstats_interval = \"1s\"\n\
             [store]\npath = \"{}\"\n{}",
            pair.server_if,
            stats.display(),
            dir.path().join("state.redb").display(),
            without_api_listener()
        ),
    )
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (pings, listener) = listen(socket, stop.clone());
    let socket_env = socket_path.to_string_lossy().into_owned();
    let watchdog_usec = WATCHDOG.as_micros().to_string();
    let mut daemon = LiveDaemon::start_with_env(
        Some(&pair.server_ns),
        &config,
        &dir.path().join("site.key"),
        &[
            ("NOTIFY_SOCKET", socket_env.as_str()),
            ("WATCHDOG_USEC", watchdog_usec.as_str()),
        ],
    )
    .unwrap();

    let flood_start = Instant::now();
    let flood = pair
        .exec(&pair.client_ns, "python3")
        .args(["-c", FLOOD_PY, SERVER_IP, &SERVER_PORT.to_string(), "16"])
        .arg(FLOOD_SECONDS.to_string())
        .output()
        .expect("python3 is needed for the test client");
    let flood_end = Instant::now();
    assert!(
        flood.status.success(),
        "the flood client failed: {}",
        String::from_utf8_lossy(&flood.stderr)
    );
    let answered: u64 = String::from_utf8_lossy(&flood.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(answered > 1000, "a flood of {answered} calls is no flood");
    // One more stats interval, so that the file has counted the flood.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    listener.join().unwrap();

    let pings = pings.lock().unwrap().clone();
    let during: Vec<Instant> = pings
        .iter()
        .copied()
        .filter(|t| *t >= flood_start && *t <= flood_end)
        .collect();
    assert!(
        during.len() as u64 >= FLOOD_SECONDS / WATCHDOG.as_secs(),
        "{} pings during a {FLOOD_SECONDS} s flood",
        during.len()
    );
    // Every gap, from the flood's start to its end, is shorter than WatchdogSec.
    let mut last = flood_start;
    for at in during.iter().copied().chain([flood_end]) {
        let gap = at.duration_since(last);
        assert!(
            gap < WATCHDOG,
            "no WATCHDOG=1 for {gap:?} during the flood: systemd would have killed the daemon"
        );
        last = at;
    }

    let counters: Value = serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let ring = &counters["ring"];
    assert!(
        ring["drains_bounded"].as_u64().unwrap_or(0) > 0,
        "the flood never outran a drain: {ring}"
    );
    assert!(
        ring["records"].as_u64().unwrap_or(0) > 0,
        "{answered} calls answered, ring: {ring}, kernel: {}",
        counters["kernel"]
    );
    let (status, log) = daemon.stop().unwrap();
    assert!(status.success(), "{status}: {log}");
}
