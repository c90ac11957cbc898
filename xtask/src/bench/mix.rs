//! The mix benches: Apache (prefork + mod_ssl + mod_php) serving a realistic REDCap mix (PHP UI
//! pages, static files, uploads, API calls) to wrk, in namespaces they create and remove.
//! `https-mix`: Apache's CPU per HTTPS request with the OpenSSL uprobes detached and attached,
//! beside the cost of the cheapest API call. `http-mix`: with the TC probe on plain HTTP, the
//! share of the bytes the kernel copied to user space that belong to no API call, and the
//! reader's CPU per API call. The measuring is done by the `mix-overhead` binary (monitor-tests,
//! built in release), which prints one JSON object; this module runs it, prints the tables and
//! writes `target/bench/https-mix.json` and `http-mix.json`.

use std::process::Stdio;

use super::{
    Options, build_bench_binary, json_field, json_report, report_number, save_json_report, verdict,
};
use crate::{Failure, Result, process};

/// Over plain HTTP, at most this share of the bytes on the watched port may be copied to user
/// space without belonging to an API call.
const GOAL_NON_API_COPIED_SHARE: f64 = 0.01;

/// mix-overhead's length of a measured run.
const DEFAULT_DURATION_S: u32 = 10;

/// The setups of `mix-overhead https` (report key prefixes), as the table names them.
const HTTPS_SETUPS: &[(&str, &str)] = &[
    ("mix_detached", "mix, uprobes detached"),
    ("mix_tls_attached", "mix, uprobes + pipeline (as `run`)"),
    ("cheapest_detached", "cheapest API call, uprobes detached"),
    (
        "cheapest_tls_attached",
        "cheapest API call, uprobes + pipeline",
    ),
];

/// The setups of `mix-overhead http`.
const HTTP_SETUPS: &[(&str, &str)] = &[
    ("mix_detached", "mix, TC probe detached"),
    ("mix_tc_attached", "mix, TC probe + pipeline (as `run`)"),
];

const LOSS_COUNTERS: &[&str] = &[
    "ring_full",
    "truncated_bytes",
    "flow_insert_failed",
    "tls_args_lost",
    "tls_conns_evicted",
];

pub(super) fn run_https(options: &Options) -> Result<()> {
    let json = measure(
        options,
        "https",
        "https-mix: Apache (prefork, mod_ssl, mod_php) over HTTPS; wrk -t4 -c8: 1 thread \
         of API scripts, 3 of browsers (UI pages, static files, uploads); each setup once",
    )?;
    let field = |key: &str| number(&json, key);
    table(&json, HTTPS_SETUPS)?;
    println!(
        "  uprobes attached: {:+.1} us of Apache CPU per HTTPS request of the mix ({:.1} -> {:.1})",
        field("mix_tls_added_server_cpu_us_per_request")?,
        field("mix_detached_server_cpu_us_per_request")?,
        field("mix_tls_attached_server_cpu_us_per_request")?,
    );
    println!(
        "  the cheapest API call (content=version): the PHP script's own CPU {:.1} us (getrusage \
         inside PHP), Apache's whole CPU {:.1} us per call; the uprobes add {:.1} us to it",
        field("cheapest_php_script_cpu_us_per_call")?,
        field("cheapest_detached_server_cpu_us_per_request")?,
        field("cheapest_tls_added_server_cpu_us_per_request")?,
    );
    copied(&json, "mix_tls_attached")?;
    losses(&json, &["mix_tls_attached", "cheapest_tls_attached"])?;
    save_json_report("https-mix.json", &json)
}

pub(super) fn run_http(options: &Options) -> Result<()> {
    let json = measure(
        options,
        "http",
        "http-mix: Apache (prefork, mod_php) over plain HTTP, the TC probe on its veth; wrk -t4 \
         -c8: 1 thread of API scripts, 3 of browsers; each setup once",
    )?;
    let field = |key: &str| number(&json, key);
    table(&json, HTTP_SETUPS)?;
    let share = field("mix_tc_attached_non_api_copied_share")?;
    copied(&json, "mix_tc_attached")?;
    println!(
        "  non-API bytes copied / all bytes on the port {:>6.2}%  goal: at most {:.0}%  {}",
        share * 100.0,
        GOAL_NON_API_COPIED_SHARE * 100.0,
        verdict(share <= GOAL_NON_API_COPIED_SHARE)
    );
    println!(
        "  the reader (ring + pipeline): {:.1} us of CPU per API call ({:.1} per request of the \
         mix); Apache: {:+.1} us per request with the probe attached",
        field("mix_tc_attached_reader_cpu_us_per_api_call")?,
        field("mix_tc_attached_reader_cpu_us_per_request")?,
        field("mix_tc_added_server_cpu_us_per_request")?,
    );
    println!(
        "  connections user space took out of the kernel's flow table: {} (put back: {})",
        field("mix_tc_attached_flows_released")?,
        field("mix_tc_attached_flows_recopied")?,
    );
    losses(&json, &["mix_tc_attached"])?;
    save_json_report("http-mix.json", &json)
}

/// Builds and runs `mix-overhead MODE` and returns its JSON report.
fn measure(options: &Options, mode: &str, banner: &str) -> Result<String> {
    if !process::is_root() {
        return Err(Failure::new(format!(
            "bench {mode}-mix creates network namespaces and loads eBPF programs: run it as root"
        )));
    }
    let program = build_bench_binary("mix-overhead")?;
    println!(
        "{banner}; {} s a setup",
        options.duration_s.unwrap_or(DEFAULT_DURATION_S)
    );
    let mut command = std::process::Command::new(&program);
    command
        .arg(mode)
        .args(options.duration_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    json_report(&mut command)
}

fn number(json: &str, key: &str) -> Result<f64> {
    report_number(json, key, "mix-overhead")
}

/// Throughput, latency and CPU per request of each setup.
fn table(json: &str, setups: &[(&str, &str)]) -> Result<()> {
    println!(
        "  {:<40} {:>11} {:>8} {:>8} {:>14} {:>14} {:>17}",
        "", "requests/s", "p50 ms", "p99 ms", "Apache us/req", "reader us/req", "API calls seen"
    );
    for (key, label) in setups {
        let optional = |suffix: &str| json_field(json, &format!("{key}_{suffix}"));
        println!(
            "  {:<40} {:>11.0} {:>8.3} {:>8.3} {:>14.1} {:>14} {:>17}",
            label,
            number(json, &format!("{key}_requests_per_s"))?,
            number(json, &format!("{key}_p50_us"))? / 1000.0,
            number(json, &format!("{key}_p99_us"))? / 1000.0,
            number(json, &format!("{key}_server_cpu_us_per_request"))?,
            optional("reader_cpu_us_per_request").map_or_else(String::new, |us| format!("{us:.1}")),
            match (optional("api_calls_seen"), optional("api_calls_sent")) {
                (Some(seen), Some(sent)) => format!("{seen} of {sent}"),
                _ => String::new(),
            },
        );
    }
    println!(
        "  (us/req: CPU microseconds per completed request, of Apache's processes and of the \
         thread that reads the ring; API calls sent counts a few still in flight at the end)"
    );
    Ok(())
}

/// What the kernel copied to user space, API and not.
fn copied(json: &str, key: &str) -> Result<()> {
    let field = |suffix: &str| number(json, &format!("{key}_{suffix}"));
    let mb = |bytes: f64| bytes / 1e6;
    println!(
        "  bytes on the port {:.1} MB; copied to user space {:.1} MB: API calls {:.1} MB, other \
         {:.1} MB ({:.1}% of all bytes) on {} of {} copied connections",
        mb(field("wire_bytes")?),
        mb(field("copied_bytes")?),
        mb(field("copied_api_bytes")?),
        mb(field("copied_non_api_bytes")?),
        field("non_api_copied_share")? * 100.0,
        field("copied_non_api_connections")?,
        field("copied_connections")?,
    );
    Ok(())
}

/// The loss counters of the attached setups, summed, against the goal of zero.
fn losses(json: &str, setups: &[&str]) -> Result<()> {
    let mut lost = 0.0;
    let mut counters = Vec::new();
    for counter in LOSS_COUNTERS {
        let mut value = 0.0;
        for setup in setups {
            value += number(json, &format!("{setup}_{counter}"))?;
        }
        lost += value;
        counters.push(format!("{counter} {value}"));
    }
    println!(
        "  kernel loss counters: {}  goal: all zero  {}",
        counters.join(", "),
        verdict(lost == 0.0)
    );
    Ok(())
}
