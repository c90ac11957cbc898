//! `live-demo [--seconds N]`: the main job, live. A veth namespace pair, nginx on port 80 in the
//! server namespace proxying to the REDCap simulator, `redcap-monitor run` (eBPF) on the server's
//! veth, and a mix of real clients in the client namespace. Prints each call and each violation
//! as the daemon writes them, then a per-token summary and the kernel counters. Needs root;
//! removes namespaces, processes and temp files on exit, Ctrl-C included.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use monitor_tests::clients::{PycapSet, curl_in, run_curl_set_in, run_pycap_in};
use monitor_tests::daemon::{LiveDaemon, fingerprints};
use monitor_tests::netns::{NamespacePair, command_in};
use monitor_tests::sim::{SimOptions, Simulator};
use serde_json::Value;

const COMPLIANT: &str = "C0C0C0C0C0C0C0C0C0C0C0C0C0C0C0C0";
const BURSTY: &str = "B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0";
const HEAVY: &str = "E0E0E0E0E0E0E0E0E0E0E0E0E0E0E0E0";
const SCRIPTED: &str = "A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0";
/// The wrong token `run_curl_set_in` sends.
const BAD: &str = "0000000000000000000000000000DEAD";
const SUBNET: u8 = 207;

/// Set by SIGINT/SIGTERM: every loop here checks it, so Ctrl-C ends in the normal teardown.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn main() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let seconds = match parse_args() {
        Ok(seconds) => seconds,
        Err(err) => {
            eprintln!("live-demo: {err:#}");
            std::process::exit(2);
        }
    };
    // `run` owns every guard, so they are all dropped (and clean up) before we exit.
    if let Err(err) = run(seconds) {
        eprintln!("live-demo: {err:#}");
        std::process::exit(1);
    }
}

fn parse_args() -> Result<u64> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(40),
        [flag, n] if flag == "--seconds" => n.parse().context("--seconds takes a number"),
        _ => bail!("usage: live-demo [--seconds N] (default 40; needs root)"),
    }
}

fn run(seconds: u64) -> Result<()> {
    if !test_support::is_root() {
        bail!(
            "the live demo creates network namespaces and attaches an eBPF probe: run it as root"
        );
    }
    let style = Style::detect();
    let dir = tempfile::tempdir()?;
    let pair = NamespacePair::create(SUBNET).context("creating the namespace pair")?;
    println!(
        "live-demo: namespaces {} (server {}, {}) and {} (client {}); files in {}",
        pair.server_ns,
        pair.server_ip,
        pair.server_if,
        pair.client_ns,
        pair.client_ip,
        dir.path().display()
    );
    let sim = Simulator::start(&SimOptions {
        tokens: [COMPLIANT, BURSTY, HEAVY, SCRIPTED]
            .map(String::from)
            .to_vec(),
        // Big enough that one unfiltered export passes 500 kB.
        project_sizes: vec![(HEAVY.to_string(), 1500)],
        netns: Some(pair.server_ns.clone()),
        ..SimOptions::default()
    })
    .context("starting the REDCap simulator")?;
    let nginx = Nginx::start(&pair.server_ns, dir.path(), sim.port())?;
    let base = format!("http://{}", pair.server_ip);
    wait_for_http(&pair.client_ns, &base)?;
    println!(
        "live-demo: nginx on {base}:80 -> simulator on 127.0.0.1:{} (server namespace)",
        sim.port()
    );

    let key = dir.path().join("site.key");
    let labels = token_labels(&key)?;
    let calls = dir.path().join("calls.jsonl");
    let violations = dir.path().join("violations.jsonl");
    let stats = dir.path().join("stats.json");
    let config = dir.path().join("demo.toml");
    std::fs::write(
        &config,
        format!(
            "[capture]\nmode = \"ebpf\"\ninterfaces = [\"{}\"]\nports = [80]\n\
             [output]\ncalls = \"{}\"\nviolations = \"{}\"\nstats = \"{}\"\n\
             stats_interval = \"1s\"\n[store]\npath = \"{}\"\n",
            pair.server_if,
            calls.display(),
            violations.display(),
            stats.display(),
            dir.path().join("state.redb").display()
        ),
    )?;
    let mut daemon = LiveDaemon::start(Some(&pair.server_ns), &config, &key)
        .context("starting redcap-monitor run")?;
    println!(
        "live-demo: redcap-monitor run attached to {} (eBPF); clients for {seconds} s (Ctrl-C stops)\n",
        pair.server_if
    );

    let mut tail = Tail::new(&calls, &violations);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    std::thread::scope(|scope| {
        scope.spawn(|| drive_clients(&pair.client_ns, &base, dir.path(), deadline));
        while !stopping() && Instant::now() < deadline {
            tail.show(&labels, style);
            std::thread::sleep(Duration::from_millis(100));
        }
        if stopping() {
            println!("live-demo: interrupted; stopping the clients and the daemon");
        }
        STOP.store(true, Ordering::SeqCst);
    });

    let (status, log) = daemon.stop()?;
    tail.show(&labels, style);
    if !status.success() && status.code() != Some(130) {
        eprintln!("{log}");
        bail!("redcap-monitor run exited {status}");
    }
    drop(nginx);
    drop(sim);
    summary(&tail, &labels, &stats)?;
    Ok(())
}

/// The client mix, on a timeline; each step is skipped once the demo is stopping.
fn drive_clients(ns: &str, base: &str, dir: &Path, deadline: Instant) {
    let api = format!("{base}/redcap/api/");
    let client = Some(ns);
    let report = |what: &str, outcome: Result<()>| {
        if let Err(err) = outcome
            && !stopping()
        {
            eprintln!("live-demo: {what}: {err:#}");
        }
    };
    let start = Instant::now();
    let mut next_compliant = start;
    let mut steps: Vec<(u64, &str)> = vec![
        (1, "bursty"),
        (3, "curl"),
        (5, "pages"),
        (6, "heavy"),
        (15, "pages"),
        (20, "bursty"),
        (30, "curl"),
        (35, "pages"),
    ];
    steps.reverse();
    while !stopping() && Instant::now() < deadline {
        let now = Instant::now();
        if now >= next_compliant {
            // One call every 25 s: never more than 3 a minute.
            report(
                "compliant PyCap user",
                run_pycap_in(client, &api, COMPLIANT, PycapSet::Burst(1)).map(drop),
            );
            next_compliant += Duration::from_secs(25);
            continue;
        }
        match steps.last() {
            Some(&(at, what)) if now >= start + Duration::from_secs(at) => {
                steps.pop();
                match what {
                    "bursty" => report(
                        "bursty PyCap script",
                        run_pycap_in(client, &api, BURSTY, PycapSet::Burst(6)).map(drop),
                    ),
                    "heavy" => report(
                        "heavy PyCap exporter",
                        run_pycap_in(client, &api, HEAVY, PycapSet::Heavy).map(drop),
                    ),
                    "curl" => report(
                        "curl keep-alive script",
                        run_curl_set_in(client, base, SCRIPTED, dir).map(drop),
                    ),
                    _ => report("page views", pages(client, base)),
                }
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Non-API traffic the kernel filter must drop: pages, a login form post, a static path.
fn pages(client: Option<&str>, base: &str) -> Result<()> {
    let login = format!("{base}/redcap/index.php");
    let redcap = format!("{base}/redcap/");
    #[rustfmt::skip]
    let args = [
        "-sS", "-o", "/dev/null", base,
        "--next", "-o", "/dev/null", &redcap,
        "--next", "-o", "/dev/null", "-d", "username=alice&password=x", &login,
    ];
    curl_in(client, &args)
}

fn token_labels(key: &Path) -> Result<BTreeMap<String, &'static str>> {
    let named = [
        (COMPLIANT, "compliant"),
        (BURSTY, "bursty"),
        (HEAVY, "heavy"),
        (SCRIPTED, "curl"),
        (BAD, "bad-token"),
    ];
    let fps = fingerprints(key, &named.map(|(token, _)| token))?;
    Ok(fps.into_iter().zip(named.map(|(_, label)| label)).collect())
}

/// nginx as a reverse proxy on port 80 in front of the simulator, all of its files in `dir`.
struct Nginx {
    child: Option<Child>,
}

impl Nginx {
    fn start(ns: &str, dir: &Path, upstream_port: u16) -> Result<Nginx> {
        let d = dir.display();
        let conf = dir.join("nginx.conf");
        // Workers run as root: the temp paths live in our 0700 temp dir.
        std::fs::write(
            &conf,
            format!(
                "user root;\nworker_processes 1;\nerror_log {d}/nginx-error.log;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n  access_log {d}/nginx-access.log;\n\
                 client_body_temp_path {d}/nginx-body;\n  proxy_temp_path {d}/nginx-proxy;\n\
                 fastcgi_temp_path {d}/nginx-fastcgi;\n  uwsgi_temp_path {d}/nginx-uwsgi;\n\
                 scgi_temp_path {d}/nginx-scgi;\n  client_max_body_size 16m;\n\
                 upstream redcap {{ server 127.0.0.1:{upstream_port}; keepalive 8; }}\n\
                 server {{\n    listen 80;\n    location / {{\n\
                 proxy_pass http://redcap;\n      proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n\
                 }}\n  }}\n}}\n"
            ),
        )?;
        let child = command_in(Some(ns), "nginx")
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("nginx-error.log"))
            .arg("-c")
            .arg(&conf)
            .arg("-g")
            .arg(format!("daemon off; pid {d}/nginx.pid;"))
            .stdin(Stdio::null())
            .spawn()
            .context("starting nginx (installed by `cargo xtask setup`)")?;
        Ok(Nginx { child: Some(child) })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGTERM is nginx's fast shutdown: the master takes its workers down with it.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn wait_for_http(ns: &str, base: &str) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) && !stopping() {
        if curl_in(Some(ns), &["-sS", "-o", "/dev/null", "-f", base]).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nginx did not answer on {base} within 10 s")
}

/// Follows the daemon's two JSONL files, printing whole lines as they appear.
struct Tail {
    calls: Follow,
    violations: Follow,
    per_token: BTreeMap<String, (u64, u64)>,
}

struct Follow {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl Follow {
    fn new_lines(&mut self) -> Vec<Value> {
        let Ok(mut file) = File::open(&self.path) else {
            return Vec::new();
        };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err()
            || file.read_to_string(&mut text).is_err()
        {
            return Vec::new();
        }
        self.offset += text.len() as u64;
        self.partial.push_str(&text);
        // Keep a line the daemon has not finished writing for the next round.
        let complete = match self.partial.rfind('\n') {
            Some(end) => self.partial.drain(..=end).collect::<String>(),
            None => return Vec::new(),
        };
        complete
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Tail {
    fn new(calls: &Path, violations: &Path) -> Tail {
        let follow = |path: &Path| Follow {
            path: path.to_owned(),
            offset: 0,
            partial: String::new(),
        };
        Tail {
            calls: follow(calls),
            violations: follow(violations),
            per_token: BTreeMap::new(),
        }
    }

    fn show(&mut self, labels: &BTreeMap<String, &str>, style: Style) {
        // The two files are written together; merged by time, a violation follows its call.
        let mut lines: Vec<(f64, String)> = Vec::new();
        for call in self.calls.new_lines() {
            let fp = call["token_fp"].as_str().unwrap_or("-").to_owned();
            self.per_token.entry(fp).or_default().0 += 1;
            let ts = call["ts_start"].as_f64().unwrap_or(0.0);
            lines.push((ts, call_line(&call, labels)));
        }
        for violation in self.violations.new_lines() {
            let fp = violation["token_fp"].as_str().unwrap_or("-").to_owned();
            self.per_token.entry(fp).or_default().1 += 1;
            let ts = violation["ts"].as_f64().unwrap_or(0.0);
            lines.push((ts, style.alert(&violation_line(&violation, labels))));
        }
        // Stable: on equal times the call (pushed first) stays before its violations.
        lines.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (_, line) in lines {
            println!("{line}");
        }
    }
}

fn label<'a>(labels: &'a BTreeMap<String, &str>, fp: Option<&str>) -> &'a str {
    match fp {
        Some(fp) => labels.get(fp).copied().unwrap_or("?"),
        None => "no token",
    }
}

fn call_line(call: &Value, labels: &BTreeMap<String, &str>) -> String {
    let text = |field: &str| call[field].as_str().unwrap_or("-").to_owned();
    let what = match (call["content"].as_str(), call["action"].as_str()) {
        (Some(content), Some(action)) => format!("{content}/{action}"),
        (Some(content), None) => content.to_owned(),
        (None, _) => call["token_problem"]
            .as_str()
            .map_or("-".to_owned(), |p| format!("token {p}")),
    };
    let status = call["status"]
        .as_u64()
        .map_or("-".into(), |s| s.to_string());
    let size = call["response_bytes"]
        .as_u64()
        .map_or("-".into(), |b| format!("{b} B"));
    let server = call["ttfb_s"]
        .as_f64()
        .map_or("-".into(), |s| format!("{:.1} ms", s * 1000.0));
    let heavy = call["heavy"]
        .as_str()
        .map_or(String::new(), |h| format!("  HEAVY {h}"));
    let fp = call["token_fp"].as_str();
    format!(
        "CALL      {}  {:<10} {:<9} fp {:<16}  {:<20} {:>3}  {:>10}  {:>9}{heavy}",
        clock(call["ts_start"].as_f64()),
        text("token_masked"),
        label(labels, fp),
        fp.unwrap_or("-"),
        what,
        status,
        size,
        server,
    )
}

fn violation_line(violation: &Value, labels: &BTreeMap<String, &str>) -> String {
    let fp = violation["token_fp"].as_str();
    format!(
        "VIOLATION {}  {:<9} fp {}  {}: {} calls in {} s (limit {})",
        clock(violation["ts"].as_f64()),
        label(labels, fp),
        fp.unwrap_or("-"),
        violation["rule"].as_str().unwrap_or("?"),
        violation["count"],
        violation["window_s"],
        violation["limit"],
    )
}

/// `HH:MM:SS.mmm` (UTC) of an epoch timestamp.
fn clock(ts: Option<f64>) -> String {
    let Some(ts) = ts else {
        return "--:--:--.---".into();
    };
    let ms = (ts * 1000.0) as u64;
    let (s, ms) = (ms / 1000, ms % 1000);
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    )
}

fn summary(tail: &Tail, labels: &BTreeMap<String, &str>, stats: &Path) -> Result<()> {
    println!("\nper token:");
    println!(
        "  {:<10} {:<16}  {:>5}  {:>10}",
        "client", "fingerprint", "calls", "violations"
    );
    for (fp, (calls, violations)) in &tail.per_token {
        let shown = (fp != "-").then_some(fp.as_str());
        println!(
            "  {:<10} {:<16}  {calls:>5}  {violations:>10}",
            label(labels, shown),
            fp
        );
    }
    let text = std::fs::read_to_string(stats).context("reading the daemon's final stats")?;
    let stats: Value = serde_json::from_str(&text).context("the daemon's final stats")?;
    let kernel = &stats["kernel"];
    println!(
        "\nkernel: {} packets seen, {} filtered (not API), {} events sent, lost: ring_full {} \
         truncated_bytes {} flow_insert_failed {}; ring records {} malformed {}",
        kernel["packets_seen"],
        kernel["filtered"],
        kernel["events_sent"],
        kernel["ring_full"],
        kernel["truncated_bytes"],
        kernel["flow_insert_failed"],
        stats["ring"]["records"],
        stats["ring"]["malformed"],
    );
    println!(
        "daemon: {} calls and {} violations written",
        stats["calls_written"], stats["violations_written"]
    );
    Ok(())
}

#[derive(Clone, Copy)]
struct Style {
    color: bool,
}

impl Style {
    fn detect() -> Style {
        Style {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn alert(self, line: &str) -> String {
        if self.color {
            format!("\x1b[1;31m{line}\x1b[0m")
        } else {
            line.to_owned()
        }
    }
}
