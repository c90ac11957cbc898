//! `mix-overhead`: what capture costs Apache (prefork + mod_ssl + mod_php, `web::Apache`) when it
//! serves a realistic REDCap mix rather than API calls alone. wrk in a client namespace plays two
//! kinds of client on separate keep-alive connections: browsers (PHP UI pages of a few KB,
//! static CSS/JS of 10 to 200 KB, a multipart upload to a non-API PHP page) and API scripts
//! (`POST /redcap/api/` with a token: record exports and `content=version`).
//!
//! - `mix-overhead https`: over HTTPS, the OpenSSL uprobes detached and attached (events drained
//!   every 1 ms into a real `Pipeline`, as `run` does): Apache's CPU per request, from /proc.
//!   Then the cheapest API call alone (`content=version`, every connection), both ways: what
//!   Apache and PHP spend on it, beside what the uprobes add.
//! - `mix-overhead http`: over plain HTTP with the TC probe on the server's veth: the share of
//!   the bytes the server sent and received that the kernel copied to user space although they
//!   belong to no API call, and the CPU of the thread that reads the ring and runs the pipeline,
//!   per API call.
//!
//! Both measure whatever the kernel filter of this build does. Prints one JSON object on stdout
//! (every run, then a summary); `cargo xtask bench https-mix` and `http-mix` build and run it.
//! Needs root, apache2 with mod_php, wrk; creates and removes everything it uses and touches no
//! host interface. Apache and wrk each load a private copy of libssl, so that neither other
//! programs' uprobes nor the client's own TLS calls land in what is measured.

// The namespace pair and the probe thread are the kernel tests' own.
#[path = "../../tests/probe_env/mod.rs"]
mod probe_env;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use monitor_tests::bench::{install_interrupt_handler, interrupted, mean, which};
use monitor_tests::cpu::{processes_cpu_time, thread_cpu_time};
use monitor_tests::netns::NamespacePair;
use monitor_tests::web::{APACHE_MODULES, Apache, TestPki, private_libssl};
use monitor_tests::wrk::result_numbers;
use probe_env::{SERVER_IP, namespace_pair};
use redcap_monitor::commands::config::Config;
use redcap_monitor::edges::capture::kernel::{KernelCounters, KernelProbe, ProbeConfig};
use redcap_monitor::edges::capture::records::is_synthetic;
use redcap_monitor::shared::model::{Endpoint, TcpSegment};
use redcap_monitor::shared::token::SiteKey;
use redcap_monitor::stages::pipeline::{CaptureRequest, Pipeline};
use redcap_monitor::stages::policy::Verdict;

/// How often the ring is read, as `run` reads it.
const BATCH_INTERVAL: Duration = Duration::from_millis(1);
const HTTP_PORT: u16 = 80;
const HTTPS_PORT: u16 = 443;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Https,
    Http,
}

struct Options {
    mode: Mode,
    duration_s: u32,
    rounds: u32,
    /// wrk threads; the first `api_threads` of them are API scripts, the others browsers.
    threads: u32,
    api_threads: u32,
    /// wrk connections, spread evenly over the threads.
    connections: u32,
}

fn parse_options() -> Result<Options> {
    let usage = "usage: mix-overhead https|http [--duration SECONDS] [--rounds N] [--threads N] \
                 [--api-threads N] [--connections N]";
    let mut args = std::env::args().skip(1);
    let mode = match args.next().as_deref() {
        Some("https") => Mode::Https,
        Some("http") => Mode::Http,
        Some("-h" | "--help") => {
            println!("{usage}");
            std::process::exit(0);
        }
        other => bail!("the first argument is https or http, not {other:?}\n{usage}"),
    };
    let mut options = Options {
        mode,
        duration_s: 10,
        rounds: 1,
        threads: 4,
        api_threads: 1,
        connections: 8,
    };
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--duration" => &mut options.duration_s,
            "--rounds" => &mut options.rounds,
            "--threads" => &mut options.threads,
            "--api-threads" => &mut options.api_threads,
            "--connections" => &mut options.connections,
            other => bail!("unknown argument {other:?}\n{usage}"),
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
    if options.api_threads >= options.threads {
        bail!("--api-threads must leave at least one browser thread (--threads)");
    }
    if !options.connections.is_multiple_of(options.threads) {
        bail!("--connections must be a multiple of --threads (wrk splits them evenly)");
    }
    Ok(options)
}

fn main() -> Result<()> {
    let options = parse_options()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("mix-overhead creates network namespaces and loads eBPF programs: run it as root");
    }
    let wrk_binary = which("wrk").context("wrk is not installed (`cargo xtask setup`)")?;
    install_interrupt_handler();

    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let client_libs = private_libssl(&wrk_binary, &dir.path().join("client"))?;
    let server_libs = private_libssl(
        &Path::new(APACHE_MODULES).join("mod_ssl.so"),
        &dir.path().join("server"),
    )?;
    let pair = namespace_pair();
    let pki = TestPki::create(dir.path(), SERVER_IP)?;
    let apache_dir = dir.path().join("apache");
    std::fs::create_dir_all(&apache_dir)?;
    // REDCap's clients call `/redcap/api/`: mod_dir hands it to `index.php`.
    let dir_index =
        format!("LoadModule dir_module {APACHE_MODULES}/mod_dir.so\nDirectoryIndex index.php\n");
    let apache = Apache::start_with_env(
        &pair.server_ns,
        &apache_dir,
        &pki,
        &dir_index,
        &[("LD_LIBRARY_PATH", &server_libs)],
    )?;
    let php_cpu_log = apache_dir.join("php-cpu.log");
    write_site(&apache.docroot(), &php_cpu_log)?;
    let script = dir.path().join("mix.lua");
    std::fs::write(&script, WRK_SCRIPT).context("writing the wrk script")?;
    let wrk = Wrk {
        pair: &pair,
        script: &script,
        client_libs: &client_libs,
        options: &options,
    };

    eprintln!("mix-overhead: warming up (3 s, not measured)");
    wrk.run(Load::Mix, 3)?;
    let setups: &[Setup] = match options.mode {
        Mode::Https => &[
            Setup::Detached(Load::Mix),
            Setup::TlsAttached(Load::Mix),
            Setup::Detached(Load::Cheapest),
            Setup::TlsAttached(Load::Cheapest),
            Setup::Detached(Load::CheapestTimed),
        ],
        Mode::Http => &[Setup::Detached(Load::Mix), Setup::TcAttached(Load::Mix)],
    };
    let mut runs = Vec::new();
    for round in 1..=options.rounds {
        for &setup in setups {
            if interrupted() {
                bail!("interrupted; namespaces removed");
            }
            let cpu_before = processes_cpu_time(apache.name());
            // Emptied, not removed: www-data may not create files there.
            std::fs::write(&php_cpu_log, "").context("emptying the PHP CPU log")?;
            let (wrk_result, probe) = match setup {
                Setup::Detached(load) => (wrk.run(load, options.duration_s)?, None),
                Setup::TlsAttached(load) => {
                    let (w, p) = attached(&wrk, load, |stop, setup_done| {
                        tls_drainer(apache.name(), stop, setup_done)
                    })?;
                    (w, Some(p))
                }
                Setup::TcAttached(load) => {
                    let (w, p) = attached(&wrk, load, |stop, setup_done| {
                        tc_drainer(&pair, stop, setup_done)
                    })?;
                    (w, Some(p))
                }
            };
            // Let the master reap children that exited, so their time is counted.
            thread::sleep(Duration::from_millis(200));
            let server_cpu = processes_cpu_time(apache.name()).saturating_sub(cpu_before);
            let php_script_cpu = match setup {
                Setup::Detached(Load::CheapestTimed) => Some(read_php_cpu_log(&php_cpu_log)?),
                _ => None,
            };
            let run = Run {
                setup,
                wrk: wrk_result,
                probe,
                server_cpu,
                php_script_cpu,
            };
            eprintln!(
                "mix-overhead: round {round} {:<22} {:>8.0} req/s  apache {:>6.1} us/req{}",
                setup.name(),
                run.wrk.requests_per_s(),
                run.server_cpu_us_per_request(),
                run.probe
                    .as_ref()
                    .map(|p| format!(
                        "  reader {:.1} us/req, {} API calls seen",
                        p.reader_cpu.as_secs_f64() * 1e6 / run.wrk.requests as f64,
                        p.calls
                    ))
                    .unwrap_or_default()
            );
            runs.push(run);
        }
    }
    println!("{}", report_json(&options, setups, &runs));
    Ok(())
}

/// What the clients send: the realistic mix, or the cheapest API call on every connection
/// (`content=version`), also through a wrapper that times the API script inside PHP.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Mix,
    Cheapest,
    CheapestTimed,
}

/// The PHP CPU log: one line per call, the API script's CPU microseconds. Returns the number of
/// calls and the mean.
fn read_php_cpu_log(path: &Path) -> Result<(u64, f64)> {
    let text = std::fs::read_to_string(path).context("reading the PHP CPU log")?;
    let values: Vec<f64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    if values.is_empty() {
        bail!("the timed API script logged no call to {}", path.display());
    }
    Ok((values.len() as u64, mean(values.iter().copied())))
}

/// What is attached while wrk runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    Detached(Load),
    /// The OpenSSL uprobes on Apache's libssl, drained every 1 ms into a pipeline.
    TlsAttached(Load),
    /// The TC probe on the server's veth (port 80), drained every 1 ms into a pipeline.
    TcAttached(Load),
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Detached(Load::Mix) => "mix_detached",
            Setup::Detached(Load::Cheapest) => "cheapest_detached",
            Setup::Detached(Load::CheapestTimed) => "cheapest_timed_detached",
            Setup::TlsAttached(Load::CheapestTimed) | Setup::TcAttached(Load::CheapestTimed) => {
                unreachable!("the timed API script runs detached only")
            }
            Setup::TlsAttached(Load::Mix) => "mix_tls_attached",
            Setup::TlsAttached(Load::Cheapest) => "cheapest_tls_attached",
            Setup::TcAttached(Load::Mix) => "mix_tc_attached",
            Setup::TcAttached(Load::Cheapest) => "cheapest_tc_attached",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The site Apache serves beside the API script.

/// A REDCap-like UI page: a little PHP work (a record table built, escaped and hashed) and a
/// few KB of HTML. Not an API path, and reached by `GET`.
const PAGE_PHP: &str = r#"<?php
$pid = intval($_GET['pid'] ?? '1');
$page = htmlspecialchars($_GET['page'] ?? 'index', ENT_QUOTES);
header('Content-Type: text/html; charset=utf-8');
echo "<!DOCTYPE html><html><head><title>REDCap | Project $pid</title>";
echo '<link rel="stylesheet" href="/redcap/static/theme.css"><script src="/redcap/static/vendor.js"></script></head><body>';
echo "<div id=\"pagecontainer\"><h1>Record Status Dashboard ($page)</h1><table class=\"dataTable\">";
for ($i = 1; $i <= 40; $i++) {
    $id = sprintf('%d-%04d', $pid, $i);
    $status = ['Incomplete', 'Unverified', 'Complete'][($i * 7) % 3];
    $hash = substr(md5($id . $page), 0, 8);
    echo '<tr><td><a href="/redcap/index.php?pid=' . $pid . '&id=' . urlencode($id) . '">'
        . htmlspecialchars($id) . '</a></td><td class="' . strtolower($status) . '">'
        . $status . '</td><td>' . $hash . '</td></tr>';
}
echo '</table></div></body></html>';
"#;

/// A non-API page that takes a multipart upload (a data import file, say) and answers a small
/// HTML page: a `POST`, as REDCap's UI sends for uploads, form saves and AJAX.
const UPLOAD_PHP: &str = r#"<?php
header('Content-Type: text/html; charset=utf-8');
$size = isset($_FILES['file']) ? $_FILES['file']['size'] : -1;
echo '<html><body><div class="green">Upload received: ' . $size . ' bytes</div></body></html>';
"#;

/// Static files (name, size): stylesheets and scripts of 10 to 200 KB.
const STATIC_FILES: &[(&str, usize)] = &[
    ("app.css", 10_000),
    ("icons.css", 25_000),
    ("theme.css", 40_000),
    ("redcap.js", 100_000),
    ("vendor.js", 200_000),
];

/// The API script run through a wrapper that measures its own CPU time (getrusage before it
/// starts and in a shutdown function, which runs after its `exit`) and appends the
/// microseconds to a log (`%LOG%`): the cost of the PHP script alone, without Apache, TLS and
/// PHP's request start-up.
const TIMED_API_PHP: &str = r#"<?php
$rcm_before = getrusage();
register_shutdown_function(function () use ($rcm_before) {
    $after = getrusage();
    $us = 0;
    foreach (['ru_utime', 'ru_stime'] as $k) {
        $us += ($after["$k.tv_sec"] - $rcm_before["$k.tv_sec"]) * 1000000
            + ($after["$k.tv_usec"] - $rcm_before["$k.tv_usec"]);
    }
    file_put_contents('%LOG%', "$us\n", FILE_APPEND);
});
require __DIR__ . '/index.php';
"#;

/// Writes the UI page, the upload page, the static files and the timed API wrapper (logging to
/// `php_cpu_log`) into Apache's document root.
fn write_site(docroot: &Path, php_cpu_log: &Path) -> Result<()> {
    let redcap = docroot.join("redcap");
    let static_dir = redcap.join("static");
    std::fs::create_dir_all(&static_dir)?;
    std::fs::set_permissions(&static_dir, std::fs::Permissions::from_mode(0o755))?;
    let mut files: Vec<(PathBuf, Vec<u8>)> = vec![
        (redcap.join("index.php"), PAGE_PHP.into()),
        (redcap.join("upload.php"), UPLOAD_PHP.into()),
        (
            redcap.join("api/timed.php"),
            TIMED_API_PHP
                .replace("%LOG%", &php_cpu_log.to_string_lossy())
                .into(),
        ),
    ];
    for &(name, size) in STATIC_FILES {
        let mut text = String::with_capacity(size + 100);
        let mut i = 0;
        while text.len() < size {
            let _ = writeln!(
                text,
                ".rc-{name}-{i} {{ margin: {}px; color: #{:06x}; }}",
                i % 17,
                i * 7919 % 0xffffff
            );
            i += 1;
        }
        text.truncate(size);
        files.push((static_dir.join(name), text.into_bytes()));
    }
    for (path, bytes) in files {
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
    }
    // The children run as www-data and append to the log.
    std::fs::write(php_cpu_log, "")?;
    std::fs::set_permissions(php_cpu_log, std::fs::Permissions::from_mode(0o666))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The load.

/// The wrk script. `setup` numbers the threads; `init` gives each its cycle of requests: API
/// threads (the first `api_threads`, the second script argument) cycle record exports and
/// `content=version`, browser threads cycle 4 UI pages, 5 static files and 1 upload; with
/// `cheapest` (the first argument) every thread sends `content=version`. Each thread counts what
/// it sent by kind and in bytes; `done` sums the threads and prints one RESULT line.
const WRK_SCRIPT: &str = r#"
local counter = 0
local threads = {}
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local cycle, kinds, pos = {}, {}, 0
sent_bytes, n_ui, n_static, n_upload, n_api = 0, 0, 0, 0, 0

local token = "token=0123456789ABCDEF0123456789ABCDEF"
local function form() return { ["Content-Type"] = "application/x-www-form-urlencoded" } end
local function add(kind, request)
  table.insert(cycle, request)
  table.insert(kinds, kind)
end
local function api(body) add("api", wrk.format("POST", "/redcap/api/", form(), token .. body)) end
local function get(kind, path) add(kind, wrk.format("GET", path, {})) end

function init(args)
  if args[1] == "cheapest" then
    api("&content=version&format=json")
  elseif args[1] == "cheapest-timed" then
    add("api", wrk.format("POST", "/redcap/api/timed.php", form(), token .. "&content=version&format=json"))
  elseif id < tonumber(args[2]) then
    api("&content=record&action=export&format=json&type=flat&rows=10&returnFormat=json")
    api("&content=version&format=json")
    api("&content=record&action=export&format=json&type=flat&rows=100&returnFormat=json")
  else
    local boundary = "----redcapMixBoundary7MA4YWxkTrZu0gW"
    local file = string.rep("record_id,field_1,field_2\r\n1,abcdefghij,42\r\n", 1500)
    local body = "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"redcap_csrf_token\"\r\n\r\n"
      .. "5f1c0a7e9b2d4c6a8e0f1b3d5c7a9e1f\r\n--" .. boundary
      .. "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"import.csv\"\r\n"
      .. "Content-Type: text/csv\r\n\r\n" .. file .. "\r\n--" .. boundary .. "--\r\n"
    local upload = wrk.format("POST", "/redcap/upload.php?pid=12&route=DataImportController:index",
      { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }, body)
    get("ui", "/redcap/index.php?pid=12&page=record_status_dashboard")
    get("static", "/redcap/static/app.css")
    get("static", "/redcap/static/vendor.js")
    get("ui", "/redcap/index.php?pid=12&page=record_home&id=12-0007")
    get("static", "/redcap/static/redcap.js")
    get("static", "/redcap/static/theme.css")
    get("ui", "/redcap/index.php?pid=12&page=data_entry&id=12-0007")
    add("upload", upload)
    get("ui", "/redcap/index.php?pid=12&page=data_import")
    get("static", "/redcap/static/icons.css")
  end
end

function request()
  pos = pos % #cycle + 1
  local kind = kinds[pos]
  if kind == "ui" then n_ui = n_ui + 1
  elseif kind == "static" then n_static = n_static + 1
  elseif kind == "upload" then n_upload = n_upload + 1
  else n_api = n_api + 1 end
  sent_bytes = sent_bytes + #cycle[pos]
  return cycle[pos]
end

function done(summary, latency, requests)
  local sent, ui, static, upload, api = 0, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    sent = sent + t:get("sent_bytes")
    ui = ui + t:get("n_ui")
    static = static + t:get("n_static")
    upload = upload + t:get("n_upload")
    api = api + t:get("n_api")
  end
  local e = summary.errors
  io.write(string.format("\nRESULT %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f %.0f\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), summary.bytes, sent, ui, static, upload, api))
end
"#;

/// What wrk measured in one run.
#[derive(Clone, Copy, Default)]
struct WrkResult {
    requests: u64,
    duration_us: u64,
    errors: u64,
    non_2xx: u64,
    p50_us: u64,
    p99_us: u64,
    /// Bytes wrk read: every response byte the server sent (heads included).
    bytes_received: u64,
    /// Bytes of the requests wrk sent (heads included).
    bytes_sent: u64,
    /// Requests sent, by kind (a few may still have been in flight at the end).
    sent_ui: u64,
    sent_static: u64,
    sent_upload: u64,
    sent_api: u64,
}

impl WrkResult {
    fn requests_per_s(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }
}

struct Wrk<'a> {
    pair: &'a NamespacePair,
    script: &'a Path,
    client_libs: &'a Path,
    options: &'a Options,
}

impl Wrk<'_> {
    /// Runs wrk from the client namespace for `seconds` and reads its RESULT line.
    fn run(&self, load: Load, seconds: u32) -> Result<WrkResult> {
        let o = self.options;
        let url = match o.mode {
            Mode::Https => format!("https://{SERVER_IP}:{HTTPS_PORT}/"),
            Mode::Http => format!("http://{SERVER_IP}:{HTTP_PORT}/"),
        };
        let output = self
            .pair
            .exec(&self.pair.client_ns, "wrk")
            .env("LD_LIBRARY_PATH", self.client_libs)
            .arg(format!("-t{}", o.threads))
            .arg(format!("-c{}", o.connections))
            .arg(format!("-d{seconds}s"))
            .arg("--latency")
            .arg("-s")
            .arg(self.script)
            .arg(url)
            .arg("--")
            .arg(match load {
                Load::Mix => "mix",
                Load::Cheapest => "cheapest",
                Load::CheapestTimed => "cheapest-timed",
            })
            .arg(o.api_threads.to_string())
            .stderr(Stdio::inherit())
            .output()
            .context("running wrk")?;
        let n: [u64; 12] = result_numbers(&output)?;
        Ok(WrkResult {
            requests: n[0],
            duration_us: n[1],
            errors: n[2],
            non_2xx: n[3],
            p50_us: n[4],
            p99_us: n[5],
            bytes_received: n[6],
            bytes_sent: n[7],
            sent_ui: n[8],
            sent_static: n[9],
            sent_upload: n[10],
            sent_api: n[11],
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The capture side.

/// What the probe and the pipeline did during an attached run.
#[derive(Clone, Default)]
struct ProbeResult {
    counters: KernelCounters,
    records: u64,
    /// API calls the pipeline reported.
    calls: u64,
    complete_calls: u64,
    /// Payload bytes in ring events, all of them and those on connections that carried no API
    /// call.
    copied_bytes: u64,
    copied_non_api_bytes: u64,
    /// Connections with bytes copied, and those of them that carried no API call.
    copied_connections: u64,
    copied_non_api_connections: u64,
    /// CPU time of the thread that read the ring and ran the pipeline.
    reader_cpu: Duration,
    /// Connections user space took out of the kernel's flow table, and put back.
    flows_released: u64,
    flows_recopied: u64,
    /// The libssl files the uprobes sat on (TLS only): the server's private copy.
    tls_libraries: Vec<String>,
}

/// Runs wrk with a drainer (started by `spawn`, which returns once the capture is attached and
/// hands back the thread) reading the ring until wrk is done.
fn attached(
    wrk: &Wrk<'_>,
    load: Load,
    spawn: impl FnOnce(
        Arc<AtomicBool>,
        std::sync::mpsc::Sender<Result<(), String>>,
    ) -> thread::JoinHandle<ProbeResult>,
) -> Result<(WrkResult, ProbeResult)> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let drainer = spawn(Arc::clone(&stop), ready_tx);
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(err)) => bail!("the capture did not start: {err}"),
        Err(_) => bail!("the capture thread died before it was attached"),
    }
    let measured = wrk.run(load, wrk.options.duration_s);
    // wrk's last connections close as it exits: let their FINs reach the ring.
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let probe = drainer
        .join()
        .map_err(|_| anyhow::anyhow!("the capture thread panicked"))?;
    Ok((measured?, probe))
}

/// A connection, by its two endpoints in a fixed order (TLS connections have synthetic ones,
/// unique per connection, as TC connections have real ones).
type ConnKey = ((IpAddr, u16), (IpAddr, u16));

fn conn_key(a: Endpoint, b: Endpoint) -> ConnKey {
    let (a, b) = ((a.ip, a.port), (b.ip, b.port));
    if a <= b { (a, b) } else { (b, a) }
}

/// The API calls the pipeline reported, and on which connections.
#[derive(Default)]
struct Calls {
    count: u64,
    complete: u64,
    connections: HashSet<ConnKey>,
}

impl Calls {
    fn add(&mut self, verdict: Verdict) {
        self.count += 1;
        self.complete += u64::from(verdict.call.complete);
        self.connections
            .insert(conn_key(verdict.call.client, verdict.call.server));
    }
}

/// Accounts what a drainer reads: the pipeline's calls and, per connection, the payload bytes
/// copied.
struct Drain {
    pipeline: Pipeline,
    calls: Calls,
    bytes_by_conn: HashMap<ConnKey, u64>,
    copied_bytes: u64,
}

impl Drain {
    fn new() -> Drain {
        let mut pipeline =
            Pipeline::new(Config::default().pipeline(), SiteKey::from_bytes([5; 32]));
        // As `run` does with the kernel probe: the pipeline asks it to stop copying
        // connections it has read all it needs of.
        pipeline.listen_for_capture_requests();
        Drain {
            pipeline,
            calls: Calls::default(),
            bytes_by_conn: HashMap::new(),
            copied_bytes: 0,
        }
    }

    fn segment(&mut self, segment: &TcpSegment<'_>) {
        let len = segment.payload.len() as u64;
        self.copied_bytes += len;
        *self
            .bytes_by_conn
            .entry(conn_key(segment.src, segment.dst))
            .or_default() += len;
        let calls = &mut self.calls;
        self.pipeline
            .push_segment(segment, &mut |verdict| calls.add(verdict));
    }

    fn finish(mut self, probe: &KernelProbe, cpu_at_start: Duration) -> ProbeResult {
        let calls = &mut self.calls;
        self.pipeline.finish(&mut |verdict| calls.add(verdict));
        let reader_cpu = thread_cpu_time().saturating_sub(cpu_at_start);
        let non_api: Vec<u64> = self
            .bytes_by_conn
            .iter()
            .filter(|(conn, _)| !self.calls.connections.contains(conn))
            .map(|(_, &bytes)| bytes)
            .collect();
        ProbeResult {
            counters: probe.counters().unwrap_or_default(),
            records: probe.drain_stats().records,
            flows_released: probe.drain_stats().flows_released,
            flows_recopied: probe.drain_stats().flows_recopied,
            calls: self.calls.count,
            complete_calls: self.calls.complete,
            copied_bytes: self.copied_bytes,
            copied_non_api_bytes: non_api.iter().sum(),
            copied_connections: self.bytes_by_conn.len() as u64,
            copied_non_api_connections: non_api.len() as u64,
            reader_cpu,
            tls_libraries: Vec::new(),
        }
    }
}

/// The OpenSSL uprobes on the libssl of the processes named `name`, read every 1 ms into a
/// pipeline on their own thread until `stop`.
fn tls_drainer(
    name: &str,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> thread::JoinHandle<ProbeResult> {
    let name = name.to_owned();
    thread::spawn(move || {
        let (mut probe, tls) = match probe_env::attach_tls_probe(vec![HTTPS_PORT], &name) {
            Ok(attached) => attached,
            Err(err) => {
                let _ = ready.send(Err(format!("{err:#}")));
                return ProbeResult::default();
            }
        };
        let _ = ready.send(Ok(()));
        let libraries = tls.libraries().map(|p| p.display().to_string()).collect();
        ProbeResult {
            tls_libraries: libraries,
            ..drain_until(&mut probe, &stop)
        }
    })
}

/// The TC probe on the server's veth (port 80), read every 1 ms into a pipeline until `stop`.
fn tc_drainer(
    pair: &NamespacePair,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> thread::JoinHandle<ProbeResult> {
    let config = ProbeConfig {
        ports: vec![HTTP_PORT],
        ..ProbeConfig::default()
    };
    // spawn_attached_probe returns once the probe is attached (and panics if it cannot be).
    let handle = probe_env::spawn_attached_probe(pair, config, move |mut probe| {
        drain_until(&mut probe, &stop)
    });
    let _ = ready.send(Ok(()));
    handle
}

/// Reads the ring every 1 ms into the pipeline until `stop`, and after every batch does what
/// the pipeline asks of the capture, as `run`'s read loop does (`Source::drain` in
/// `monitor-daemon/src/run.rs`): connections with nothing worth reading until their next
/// request leave the kernel's flow table, and come back when that request was copied early;
/// TLS connections keep being copied. Whatever `run` comes to do there must be done here too.
fn drain_until(probe: &mut KernelProbe, stop: &AtomicBool) -> ProbeResult {
    let cpu_at_start = thread_cpu_time();
    let mut drain = Drain::new();
    loop {
        let last = stop.load(Ordering::Relaxed);
        if !last {
            thread::sleep(BATCH_INTERVAL);
        }
        probe.drain(&mut |segment| drain.segment(segment));
        while let Some(request) = drain.pipeline.poll_capture_request() {
            match request {
                CaptureRequest::StopCopying { client, server } => {
                    if !is_synthetic(&client) {
                        probe.stop_copying(client, server);
                    }
                }
                CaptureRequest::CopyAgain(resumed) => {
                    if !is_synthetic(&resumed.client) {
                        probe.copy_again(&resumed);
                    }
                }
            }
        }
        if last {
            break;
        }
    }
    drain.finish(probe, cpu_at_start)
}

// ---------------------------------------------------------------------------------------------
// The report.

struct Run {
    setup: Setup,
    wrk: WrkResult,
    probe: Option<ProbeResult>,
    /// CPU time (user + system) Apache's processes used during the run.
    server_cpu: Duration,
    /// The timed API script: calls logged and its mean CPU microseconds per call.
    php_script_cpu: Option<(u64, f64)>,
}

impl Run {
    fn server_cpu_us_per_request(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.wrk.requests as f64
    }
}

fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "null".into()
    }
}

fn report_json(options: &Options, setups: &[Setup], runs: &[Run]) -> String {
    let mut out = String::from("{\n");
    let _ = writeln!(
        out,
        "  \"bench\": \"{}\",\n  \"duration_s\": {}, \"rounds\": {}, \"wrk_threads\": {}, \
         \"wrk_api_threads\": {}, \"wrk_connections\": {},",
        match options.mode {
            Mode::Https => "https-mix",
            Mode::Http => "http-mix",
        },
        options.duration_s,
        options.rounds,
        options.threads,
        options.api_threads,
        options.connections
    );
    let _ = writeln!(
        out,
        "  \"static_files\": [{}],",
        STATIC_FILES
            .iter()
            .map(|(name, size)| format!("{{\"name\": \"{name}\", \"bytes\": {size}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out.push_str("  \"runs\": [\n");
    for (i, run) in runs.iter().enumerate() {
        let w = &run.wrk;
        let _ = write!(
            out,
            "    {{\"setup\": \"{}\", \"requests\": {}, \"requests_per_s\": {:.1}, \"p50_us\": {}, \
             \"p99_us\": {}, \"errors\": {}, \"non_2xx\": {}, \"bytes_from_server\": {}, \
             \"bytes_to_server\": {}, \"sent_ui\": {}, \"sent_static\": {}, \"sent_upload\": {}, \
             \"sent_api\": {}, \"server_cpu_us_per_request\": {}",
            run.setup.name(),
            w.requests,
            w.requests_per_s(),
            w.p50_us,
            w.p99_us,
            w.errors,
            w.non_2xx,
            w.bytes_received,
            w.bytes_sent,
            w.sent_ui,
            w.sent_static,
            w.sent_upload,
            w.sent_api,
            number(run.server_cpu_us_per_request())
        );
        if let Some((calls, us)) = run.php_script_cpu {
            let _ = write!(
                out,
                ", \"php_script_calls\": {calls}, \"php_script_cpu_us_per_call\": {}",
                number(us)
            );
        }
        if let Some(p) = &run.probe {
            let c = &p.counters;
            let _ = write!(
                out,
                ", \"calls_seen\": {}, \"complete_calls\": {}, \"events\": {}, \
                 \"copied_bytes\": {}, \"copied_non_api_bytes\": {}, \"copied_connections\": {}, \
                 \"copied_non_api_connections\": {}, \"reader_cpu_us\": {}, \
                 \"ring_full\": {}, \"truncated_bytes\": {}, \"flow_insert_failed\": {}, \
                 \"flows_started\": {}, \"flows_evicted\": {}, \"tls_conns_started\": {}, \
                 \"tls_conns_evicted\": {}, \"tls_args_lost\": {}, \"tls_filtered\": {}, \
                 \"flows_released\": {}, \"flows_recopied\": {}",
                p.calls,
                p.complete_calls,
                p.records,
                p.copied_bytes,
                p.copied_non_api_bytes,
                p.copied_connections,
                p.copied_non_api_connections,
                p.reader_cpu.as_micros(),
                c.ring_full,
                c.truncated_bytes,
                c.flow_insert_failed,
                c.flows_started,
                c.flows_evicted,
                c.tls_conns_started,
                c.tls_conns_evicted,
                c.tls_args_lost,
                c.tls_filtered,
                p.flows_released,
                p.flows_recopied
            );
            if !p.tls_libraries.is_empty() {
                let names: Vec<String> = p.tls_libraries.iter().map(|l| format!("{l:?}")).collect();
                let _ = write!(out, ", \"tls_libraries\": [{}]", names.join(", "));
            }
        }
        out.push_str(if i + 1 < runs.len() { "},\n" } else { "}\n" });
    }
    out.push_str("  ],\n");

    // The summary: means over rounds per setup, then the derived figures.
    let of = |setup: Setup| runs.iter().filter(move |r| r.setup == setup);
    let mut summary: Vec<(String, String)> = Vec::new();
    for &setup in setups {
        let name = setup.name();
        let m = |f: &dyn Fn(&Run) -> f64| mean(of(setup).map(f));
        summary.push((
            format!("{name}_requests_per_s"),
            number(m(&|r| r.wrk.requests_per_s())),
        ));
        summary.push((
            format!("{name}_p50_us"),
            number(m(&|r| r.wrk.p50_us as f64)),
        ));
        summary.push((
            format!("{name}_p99_us"),
            number(m(&|r| r.wrk.p99_us as f64)),
        ));
        summary.push((
            format!("{name}_server_cpu_us_per_request"),
            number(m(&Run::server_cpu_us_per_request)),
        ));
        if let Setup::Detached(_) = setup {
            continue;
        }
        // Per API call the pipeline reported (the daemon's cost per call), and per request.
        let reader_us = |r: &Run| {
            r.probe
                .as_ref()
                .map_or(0.0, |p| p.reader_cpu.as_secs_f64() * 1e6)
        };
        summary.push((
            format!("{name}_reader_cpu_us_per_request"),
            number(m(&|r| reader_us(r) / r.wrk.requests as f64)),
        ));
        summary.push((
            format!("{name}_reader_cpu_us_per_api_call"),
            number(m(&|r| {
                reader_us(r) / r.probe.as_ref().map_or(0, |p| p.calls) as f64
            })),
        ));
        let total = |f: &dyn Fn(&Run) -> u64| of(setup).map(f).sum::<u64>();
        let api_sent = total(&|r| r.wrk.sent_api);
        let calls = total(&|r| r.probe.as_ref().map_or(0, |p| p.calls));
        summary.push((format!("{name}_api_calls_sent"), api_sent.to_string()));
        summary.push((format!("{name}_api_calls_seen"), calls.to_string()));
        for (key, f) in [
            (
                "ring_full",
                &(|p: &ProbeResult| p.counters.ring_full) as &dyn Fn(&ProbeResult) -> u64,
            ),
            ("truncated_bytes", &|p| p.counters.truncated_bytes),
            ("flow_insert_failed", &|p| p.counters.flow_insert_failed),
            ("tls_args_lost", &|p| p.counters.tls_args_lost),
            ("tls_conns_evicted", &|p| p.counters.tls_conns_evicted),
            ("flows_released", &|p| p.flows_released),
            ("flows_recopied", &|p| p.flows_recopied),
        ] {
            let sum = total(&|r| r.probe.as_ref().map_or(0, f));
            summary.push((format!("{name}_{key}"), sum.to_string()));
        }
        {
            let wire = total(&|r| r.wrk.bytes_received + r.wrk.bytes_sent);
            let copied = total(&|r| r.probe.as_ref().map_or(0, |p| p.copied_bytes));
            let non_api = total(&|r| r.probe.as_ref().map_or(0, |p| p.copied_non_api_bytes));
            summary.push((format!("{name}_wire_bytes"), wire.to_string()));
            summary.push((format!("{name}_copied_bytes"), copied.to_string()));
            summary.push((
                format!("{name}_copied_api_bytes"),
                (copied - non_api).to_string(),
            ));
            summary.push((format!("{name}_copied_non_api_bytes"), non_api.to_string()));
            summary.push((
                format!("{name}_non_api_wire_bytes"),
                wire.saturating_sub(copied - non_api).to_string(),
            ));
            summary.push((
                format!("{name}_non_api_copied_share"),
                number(non_api as f64 / wire as f64),
            ));
            summary.push((
                format!("{name}_copied_connections"),
                total(&|r| r.probe.as_ref().map_or(0, |p| p.copied_connections)).to_string(),
            ));
            summary.push((
                format!("{name}_copied_non_api_connections"),
                total(&|r| r.probe.as_ref().map_or(0, |p| p.copied_non_api_connections))
                    .to_string(),
            ));
        }
    }
    let detached = |load| mean(of(Setup::Detached(load)).map(Run::server_cpu_us_per_request));
    let added = |setup, load| mean(of(setup).map(Run::server_cpu_us_per_request)) - detached(load);
    match options.mode {
        Mode::Https => {
            summary.push((
                "mix_tls_added_server_cpu_us_per_request".into(),
                number(added(Setup::TlsAttached(Load::Mix), Load::Mix)),
            ));
            summary.push((
                "cheapest_tls_added_server_cpu_us_per_request".into(),
                number(added(Setup::TlsAttached(Load::Cheapest), Load::Cheapest)),
            ));
            summary.push((
                "cheapest_php_script_cpu_us_per_call".into(),
                number(mean(
                    runs.iter()
                        .filter_map(|r| r.php_script_cpu)
                        .map(|(_, us)| us),
                )),
            ));
        }
        Mode::Http => summary.push((
            "mix_tc_added_server_cpu_us_per_request".into(),
            number(added(Setup::TcAttached(Load::Mix), Load::Mix)),
        )),
    }
    let errors: u64 = runs.iter().map(|r| r.wrk.errors + r.wrk.non_2xx).sum();
    summary.push(("wrk_errors".into(), errors.to_string()));
    let fields: Vec<String> = summary
        .iter()
        .map(|(key, value)| format!("  \"{key}\": {value}"))
        .collect();
    out.push_str(&fields.join(",\n"));
    out.push_str("\n}");
    out
}
