//! `live-overhead`: what the live probe costs a busy web server. nginx in one network namespace
//! answers `POST /api/`, wrk in another drives it over a veth pair; each round runs every
//! [`Setup`] in turn: the probe detached; attached with its events read and discarded (the
//! kernel's and the ring's cost alone); attached and drained into a real pipeline as the daemon
//! does; the attached ones both woken per event and reading in 1 ms batches. Besides wrk's
//! figures it measures CPU per request: of nginx's processes (from /proc, where the kernel's
//! share of the probe shows: the classifier on egress, the uprobes' traps) and of the thread that
//! reads the ring. Prints one JSON object on stdout: every run, the means per setup, the ratios to
//! detached, the kernel's loss counters and the calls seen.
//!
//! With `--tls`, nginx (a uniquely named copy, so that no other nginx on the machine is probed)
//! serves HTTPS with a self-signed certificate and wrk speaks TLS; the setups are then the
//! uprobes detached and attached on nginx's libssl, drained every 1 ms into a pipeline.
//!
//! Needs root (namespaces, eBPF), nginx and wrk. Creates and removes everything it uses; touches
//! no host interface. `cargo xtask bench live` builds and runs it.

// The namespace pair, the probe thread and the root check are the kernel tests' own.
#[path = "../../tests/probe_env/mod.rs"]
mod probe_env;

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use monitor_tests::bench::{install_interrupt_handler, interrupted, mean, which};
use monitor_tests::cpu::{processes_cpu_time, thread_cpu_time};
use monitor_tests::netns::NamespacePair;
use monitor_tests::web::private_libssl;
use monitor_tests::wrk::result_numbers;
use probe_env::{SERVER_IP, SERVER_PORT, namespace_pair};
use redcap_monitor::commands::config::Config;
use redcap_monitor::edges::capture::kernel::{KernelCounters, ProbeConfig};
use redcap_monitor::shared::token::SiteKey;
use redcap_monitor::stages::pipeline::Pipeline;

/// A REDCap-like export call; the token is made up.
const BODY: &str = "token=0123456789ABCDEF0123456789ABCDEF&content=record&action=export\
                    &format=json&type=flat&returnFormat=json";

struct Options {
    duration_s: u32,
    rounds: u32,
    threads: u32,
    connections: u32,
    /// HTTPS through nginx's OpenSSL (uprobes) instead of HTTP (the TC probe).
    tls: bool,
    /// Where wrk finds a private copy of libssl (HTTPS only), so that the load generator's own
    /// TLS calls do not hit the uprobes: on a web host the clients are other machines.
    client_lib_dir: Option<std::path::PathBuf>,
}

fn parse_options() -> Result<Options> {
    let mut options = Options {
        duration_s: 10,
        rounds: 2,
        threads: 2,
        connections: 32,
        tls: false,
        client_lib_dir: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--duration" => &mut options.duration_s,
            "--rounds" => &mut options.rounds,
            "--threads" => &mut options.threads,
            "--connections" => &mut options.connections,
            "--tls" => {
                options.tls = true;
                continue;
            }
            "-h" | "--help" => {
                println!(
                    "usage: live-overhead [--duration SECONDS] [--rounds N] [--threads N] \
                     [--connections N] [--tls]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        };
        let value = args
            .next()
            .with_context(|| format!("{arg} needs a value"))?;
        *slot = value
            .parse()
            .ok()
            .filter(|&v| v > 0)
            .with_context(|| format!("{arg} takes a positive whole number, not {value:?}"))?;
    }
    Ok(options)
}

fn main() -> Result<()> {
    let mut options = parse_options()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("live-overhead creates network namespaces and loads eBPF programs: run it as root");
    }
    for tool in ["nginx", "wrk", "ip", "openssl"] {
        if !on_path(tool) {
            bail!("{tool} is not installed (`cargo xtask setup` installs it)");
        }
    }
    install_interrupt_handler();

    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    if options.tls {
        let wrk_binary = which("wrk").context("wrk is not on PATH")?;
        options.client_lib_dir = Some(private_libssl(&wrk_binary, dir.path())?);
    }
    let pair = namespace_pair();
    let nginx = Nginx::start(&pair, dir.path(), options.tls)?;
    let script = dir.path().join("post.lua");
    std::fs::write(&script, wrk_script()).context("writing the wrk script")?;

    eprintln!("live-overhead: warming up (2 s, not measured)");
    wrk(&pair, &script, &options, 2)?;
    let mut runs = Vec::new();
    for round in 1..=options.rounds {
        for &setup in Setup::of(options.tls) {
            if interrupted() {
                bail!("interrupted; namespaces removed");
            }
            let server_cpu = nginx.cpu();
            let mut run = match setup {
                Setup::Detached => Run {
                    setup,
                    wrk: wrk(&pair, &script, &options, options.duration_s)?,
                    probe: None,
                    server_cpu: Duration::ZERO,
                },
                Setup::TlsReadOnly | Setup::TlsAttached => {
                    tls_attached_run(&pair, &script, &options, &nginx.name, setup)?
                }
                _ => attached_run(&pair, &script, &options, setup)?,
            };
            run.server_cpu = nginx.cpu().saturating_sub(server_cpu);
            eprintln!(
                "live-overhead: round {round} {:<26} {:>9.0} req/s  p50 {:>6} us  p99 {:>6} us",
                setup.name(),
                run.wrk.requests_per_s(),
                run.wrk.p50_us,
                run.wrk.p99_us
            );
            runs.push(run);
        }
    }
    println!("{}", report_json(&options, &runs));
    Ok(())
}

/// What wrk measured in one run (printed by the `done` hook of [`wrk_script`]).
#[derive(Clone, Copy, Default)]
struct WrkResult {
    requests: u64,
    duration_us: u64,
    socket_errors: u64,
    non_2xx: u64,
    p50_us: u64,
    p99_us: u64,
}

impl WrkResult {
    fn requests_per_s(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }
}

/// What the probe and the pipeline did during an attached run.
#[derive(Clone, Copy, Default)]
struct ProbeResult {
    counters: KernelCounters,
    records: u64,
    malformed_records: u64,
    calls: u64,
    complete_calls: u64,
    /// CPU time of the thread that read the ring (and ran the pipeline), probe loading excluded.
    reader_cpu: Duration,
}

/// What is attached to the server's veth during a run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    Detached,
    /// The probe attached; its events are read (woken per event) and thrown away.
    ReadOnly,
    /// The same, reading the ring every 1 ms: what the wake-ups cost.
    ReadOnlyBatched,
    /// The probe attached; its events go through the pipeline, woken as soon as one arrives.
    Pipeline,
    /// The same, but the ring is read every 1 ms instead of on every wake-up.
    PipelineBatched,
    /// `--tls`: the uprobes on nginx's libssl; events read every 1 ms and thrown away.
    TlsReadOnly,
    /// `--tls`: the uprobes on nginx's libssl, read every 1 ms into the pipeline.
    TlsAttached,
}

impl Setup {
    const ALL: [Setup; 5] = [
        Setup::Detached,
        Setup::ReadOnly,
        Setup::ReadOnlyBatched,
        Setup::Pipeline,
        Setup::PipelineBatched,
    ];
    const TLS: [Setup; 3] = [Setup::Detached, Setup::TlsReadOnly, Setup::TlsAttached];

    fn of(tls: bool) -> &'static [Setup] {
        if tls { &Self::TLS } else { &Self::ALL }
    }

    /// The name in the report; `attached` is the daemon's way and the one the goal is for.
    fn name(self) -> &'static str {
        match self {
            Setup::Detached => "detached",
            Setup::ReadOnly => "attached_read_only",
            Setup::ReadOnlyBatched => "attached_read_only_batched",
            Setup::Pipeline => "attached",
            Setup::PipelineBatched => "attached_batched",
            Setup::TlsReadOnly => "tls_attached_read_only",
            Setup::TlsAttached => "tls_attached",
        }
    }
}

/// How often the batched setup reads the ring.
const BATCH_INTERVAL: Duration = Duration::from_millis(1);

struct Run {
    setup: Setup,
    wrk: WrkResult,
    probe: Option<ProbeResult>,
    /// CPU time (user + system) nginx used during the run: the uprobes' traps land here.
    server_cpu: Duration,
}

impl Run {
    fn server_cpu_us_per_request(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.wrk.requests as f64
    }

    /// `None` when detached.
    fn reader_cpu_us_per_request(&self) -> Option<f64> {
        let probe = self.probe?;
        Some(probe.reader_cpu.as_secs_f64() * 1e6 / self.wrk.requests as f64)
    }
}

fn wrk_script() -> String {
    format!(
        r#"wrk.method = "POST"
wrk.body = "{BODY}"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("\nRESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"#
    )
}

/// Runs wrk from the client namespace for `seconds` and reads its RESULT line.
fn wrk(pair: &NamespacePair, script: &Path, options: &Options, seconds: u32) -> Result<WrkResult> {
    let mut command = pair.exec(&pair.client_ns, "wrk");
    if let Some(lib_dir) = &options.client_lib_dir {
        command.env("LD_LIBRARY_PATH", lib_dir);
    }
    let output = command
        .arg(format!("-t{}", options.threads))
        .arg(format!("-c{}", options.connections))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(format!(
            "{}://{SERVER_IP}:{SERVER_PORT}/api/",
            if options.tls { "https" } else { "http" }
        ))
        .stderr(Stdio::inherit())
        .output()
        .context("running wrk")?;
    let [
        requests,
        duration_us,
        socket_errors,
        non_2xx,
        p50_us,
        p99_us,
    ] = result_numbers(&output)?;
    Ok(WrkResult {
        requests,
        duration_us,
        socket_errors,
        non_2xx,
        p50_us,
        p99_us,
    })
}

/// One wrk run with a freshly loaded probe attached to the server's veth, every event drained
/// into a pipeline as the daemon would; the probe is detached (dropped) at the end.
fn attached_run(
    pair: &NamespacePair,
    script: &Path,
    options: &Options,
    setup: Setup,
) -> Result<Run> {
    let stop = Arc::new(AtomicBool::new(false));
    let config = ProbeConfig {
        ports: vec![SERVER_PORT],
        ..ProbeConfig::default()
    };
    let probe = {
        let stop = Arc::clone(&stop);
        probe_env::spawn_attached_probe(pair, config, move |mut probe| {
            let cpu_at_start = thread_cpu_time();
            let mut pipeline =
                Pipeline::new(Config::default().pipeline(), SiteKey::from_bytes([5; 32]));
            let (mut seen, mut complete) = (0u64, 0u64);
            let mut count = |verdict: redcap_monitor::stages::policy::Verdict| {
                seen += 1;
                complete += u64::from(verdict.call.complete);
            };
            let mut consume = |segment: &redcap_monitor::shared::model::TcpSegment<'_>| {
                if matches!(setup, Setup::Pipeline | Setup::PipelineBatched) {
                    pipeline.push_segment(segment, &mut count);
                }
            };
            while !stop.load(Ordering::Relaxed) {
                if matches!(setup, Setup::ReadOnlyBatched | Setup::PipelineBatched) {
                    thread::sleep(BATCH_INTERVAL);
                } else {
                    // A poll error (EINTR on Ctrl-C) just means: drain now.
                    let _ = probe.wait_readable(Duration::from_millis(50));
                }
                probe.drain(&mut consume);
            }
            probe.drain(&mut consume);
            pipeline.finish(&mut count);
            let drain = probe.drain_stats();
            ProbeResult {
                counters: probe.counters().unwrap_or_default(),
                records: drain.records,
                malformed_records: drain.malformed,
                calls: seen,
                complete_calls: complete,
                reader_cpu: thread_cpu_time().saturating_sub(cpu_at_start),
            }
        })
    };
    let measured = wrk(pair, script, options, options.duration_s);
    // wrk's last connections close as it exits: let their FINs reach the probe.
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let probe = probe
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?;
    Ok(Run {
        setup,
        wrk: measured?,
        probe: Some(probe),
        server_cpu: Duration::ZERO,
    })
}

/// One wrk run with the OpenSSL uprobes attached to the libssl of nginx (process `name`), every
/// event drained every 1 ms into a pipeline as `run` does; detached (dropped) at the end.
fn tls_attached_run(
    pair: &NamespacePair,
    script: &Path,
    options: &Options,
    name: &str,
    setup: Setup,
) -> Result<Run> {
    let (mut probe, tls) = probe_env::attach_tls_probe(vec![SERVER_PORT], name)?;
    let stop = Arc::new(AtomicBool::new(false));
    let drainer = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            // The uprobes stay attached as long as `tls` and `probe` live (this thread).
            let _tls = tls;
            let cpu_at_start = thread_cpu_time();
            let mut pipeline =
                Pipeline::new(Config::default().pipeline(), SiteKey::from_bytes([5; 32]));
            let (mut seen, mut complete) = (0u64, 0u64);
            let mut count = |verdict: redcap_monitor::stages::policy::Verdict| {
                seen += 1;
                complete += u64::from(verdict.call.complete);
            };
            let mut consume = |segment: &redcap_monitor::shared::model::TcpSegment<'_>| {
                if setup == Setup::TlsAttached {
                    pipeline.push_segment(segment, &mut count);
                }
            };
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(BATCH_INTERVAL);
                probe.drain(&mut consume);
            }
            probe.drain(&mut consume);
            pipeline.finish(&mut count);
            let drain = probe.drain_stats();
            ProbeResult {
                counters: probe.counters().unwrap_or_default(),
                records: drain.records,
                malformed_records: drain.malformed,
                calls: seen,
                complete_calls: complete,
                reader_cpu: thread_cpu_time().saturating_sub(cpu_at_start),
            }
        })
    };
    let measured = wrk(pair, script, options, options.duration_s);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let probe = drainer
        .join()
        .map_err(|_| anyhow::anyhow!("the drain thread panicked"))?;
    Ok(Run {
        setup,
        wrk: measured?,
        probe: Some(probe),
        server_cpu: Duration::ZERO,
    })
}

/// nginx serving a small JSON answer to `POST /api/` (over HTTPS with `tls`, from a copy of its
/// binary named [`Nginx::name`]); stopped (SIGTERM, then SIGKILL) on drop.
struct Nginx {
    child: Child,
    name: String,
}

impl Nginx {
    /// CPU time (user + system) used so far by nginx's processes, found by the unique name of
    /// its binary.
    fn cpu(&self) -> Duration {
        processes_cpu_time(&self.name)
    }

    fn start(pair: &NamespacePair, dir: &Path, tls: bool) -> Result<Nginx> {
        let d = dir.display();
        let name = format!("rcmbench{}", std::process::id() % 10_000_000);
        let binary = dir.join(&name);
        std::fs::copy("/usr/sbin/nginx", &binary).context("copying /usr/sbin/nginx")?;
        let listen = if tls {
            let status = std::process::Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", "/CN=live-overhead", "-keyout"])
                .arg(dir.join("key.pem"))
                .arg("-out")
                .arg(dir.join("cert.pem"))
                .stderr(Stdio::null())
                .status()
                .context("running openssl")?;
            if !status.success() {
                bail!("openssl could not make a certificate");
            }
            format!(
                "listen {SERVER_PORT} ssl;\n    ssl_certificate {d}/cert.pem;\n    \
                 ssl_certificate_key {d}/key.pem;"
            )
        } else {
            format!("listen {SERVER_PORT};")
        };
        // One worker: the machine under test is small, and wrk needs the other core.
        let conf = format!(
            r#"worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    {listen}
    location = /api/ {{ default_type application/json; return 200 '{{"count": 1}}'; }}
  }}
}}
"#
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).context("writing nginx.conf")?;
        let child = pair
            .exec(&pair.server_ns, &binary.to_string_lossy())
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .args(["-g", "daemon off;"])
            .spawn()
            .context("starting nginx")?;
        let nginx = Nginx { child, name };
        let scheme = if tls { "https" } else { "http" };
        // Ready when a request from the client namespace is answered.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answered = pair
                .exec(&pair.client_ns, "curl")
                .args(["-sfk", "-o", "/dev/null", "-X", "POST", "-d", "a=b"])
                .arg(format!("{scheme}://{SERVER_IP}:{SERVER_PORT}/api/"))
                .status()
                .is_ok_and(|s| s.success());
            if answered {
                return Ok(nginx);
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx did not answer within 10 s; see {}",
                    dir.join("error.log").display()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // `ip netns exec` execs nginx, so this is the master; SIGTERM stops its workers too.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on_path(program: &str) -> bool {
    which(program).is_some()
}

fn report_json(options: &Options, runs: &[Run]) -> String {
    let number = |v: f64| {
        if v.is_finite() {
            format!("{v:.3}")
        } else {
            "null".into()
        }
    };
    let of = |setup: Setup| runs.iter().filter(move |r| r.setup == setup);
    let rps = |setup| mean(of(setup).map(|r| r.wrk.requests_per_s()));
    let probes: Vec<ProbeResult> = runs.iter().filter_map(|r| r.probe).collect();
    let total = |f: fn(&ProbeResult) -> u64| probes.iter().map(f).sum::<u64>();
    let pipeline_runs = || {
        runs.iter().filter(|r| {
            matches!(
                r.setup,
                Setup::Pipeline | Setup::PipelineBatched | Setup::TlsAttached
            )
        })
    };
    let errors: u64 = runs
        .iter()
        .map(|r| r.wrk.socket_errors + r.wrk.non_2xx)
        .sum();

    let mut out = String::from("{\n  \"bench\": \"live\",\n");
    let _ = writeln!(
        out,
        "  \"duration_s\": {}, \"rounds\": {}, \"wrk_threads\": {}, \"wrk_connections\": {}, \
         \"tls\": {},",
        options.duration_s, options.rounds, options.threads, options.connections, options.tls
    );
    out.push_str("  \"runs\": [\n");
    for (i, run) in runs.iter().enumerate() {
        let _ = write!(
            out,
            "    {{\"setup\": \"{}\", \"requests\": {}, \"requests_per_s\": {:.1}, \
             \"p50_us\": {}, \"p99_us\": {}, \"errors\": {}",
            run.setup.name(),
            run.wrk.requests,
            run.wrk.requests_per_s(),
            run.wrk.p50_us,
            run.wrk.p99_us,
            run.wrk.socket_errors + run.wrk.non_2xx
        );
        let _ = write!(
            out,
            ", \"server_cpu_us_per_request\": {}",
            number(run.server_cpu_us_per_request())
        );
        if let Some(p) = run.probe {
            let _ = write!(
                out,
                ", \"calls_seen\": {}, \"events\": {}, \"lost_events\": {}, \
                 \"reader_cpu_us_per_request\": {}",
                p.calls,
                p.records,
                p.counters.ring_full,
                number(run.reader_cpu_us_per_request().unwrap_or(f64::NAN))
            );
        }
        out.push_str(if i + 1 < runs.len() { "},\n" } else { "}\n" });
    }
    out.push_str("  ],\n");
    let mut summary: Vec<(String, String)> = Vec::new();
    for &setup in Setup::of(options.tls) {
        let name = setup.name();
        summary.push((format!("{name}_requests_per_s"), number(rps(setup))));
        summary.push((
            format!("{name}_p50_us"),
            number(mean(of(setup).map(|r| r.wrk.p50_us as f64))),
        ));
        summary.push((
            format!("{name}_p99_us"),
            number(mean(of(setup).map(|r| r.wrk.p99_us as f64))),
        ));
        summary.push((
            format!("{name}_server_cpu_us_per_request"),
            number(mean(of(setup).map(Run::server_cpu_us_per_request))),
        ));
        if setup != Setup::Detached {
            summary.push((
                format!("{name}_over_detached"),
                number(rps(setup) / rps(Setup::Detached)),
            ));
            summary.push((
                format!("{name}_reader_cpu_us_per_request"),
                number(mean(of(setup).filter_map(Run::reader_cpu_us_per_request))),
            ));
        }
    }
    let requests: u64 = pipeline_runs().map(|r| r.wrk.requests).sum();
    let calls: u64 = pipeline_runs()
        .filter_map(|r| r.probe)
        .map(|p| p.calls)
        .sum();
    let complete: u64 = pipeline_runs()
        .filter_map(|r| r.probe)
        .map(|p| p.complete_calls)
        .sum();
    for (key, value) in [
        ("wrk_errors", errors),
        ("pipeline_requests", requests),
        ("pipeline_calls_seen", calls),
        ("pipeline_complete_calls", complete),
        ("total_events", total(|p| p.records)),
        ("malformed_events", total(|p| p.malformed_records)),
        ("ring_full", total(|p| p.counters.ring_full)),
        ("truncated_bytes", total(|p| p.counters.truncated_bytes)),
        (
            "flow_insert_failed",
            total(|p| p.counters.flow_insert_failed),
        ),
        ("flows_started", total(|p| p.counters.flows_started)),
        ("tls_args_lost", total(|p| p.counters.tls_args_lost)),
        ("tls_conns_evicted", total(|p| p.counters.tls_conns_evicted)),
        ("tls_conns_started", total(|p| p.counters.tls_conns_started)),
        ("packets_seen", total(|p| p.counters.packets_seen)),
        ("filtered", total(|p| p.counters.filtered)),
    ] {
        summary.push((key.to_owned(), value.to_string()));
    }
    let fields: Vec<String> = summary
        .iter()
        .map(|(key, value)| format!("  \"{key}\": {value}"))
        .collect();
    out.push_str(&fields.join(",\n"));
    out.push_str("\n}");
    out
}
