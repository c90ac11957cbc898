//! The live bench: what the attached probe costs nginx under wrk, in namespaces it creates and
//! removes, over HTTP (the TC probe) and then HTTPS (the OpenSSL uprobes): throughput, latency,
//! and CPU per request of nginx and of the thread that reads the ring. The measuring is done by
//! the `live-overhead` binary (monitor-tests, built in release), which prints one JSON object;
//! this module runs it, prints the table and the goals, and writes `target/bench/live.json`.

use std::process::Stdio;

use super::{
    Options, build_bench_binary, json_field, json_report, report_number, save_json_report, verdict,
};
use crate::{Failure, Result, process};

/// With the probe attached and its events read as `run` reads them (every 1 ms), throughput
/// must stay at or above this share of the detached one...
const GOAL_ATTACHED_OVER_DETACHED: f64 = 0.98;
/// ...with no event lost (ring full, truncated copy, flow table full).
const LOSS_COUNTERS: &[&str] = &["ring_full", "truncated_bytes", "flow_insert_failed"];

/// Over HTTPS, the attached uprobes must keep this share of the unprobed throughput.
const GOAL_TLS_OVER_DETACHED: f64 = 0.95;
/// The same, plus the TLS-only losses.
const TLS_LOSS_COUNTERS: &[&str] = &[
    "ring_full",
    "truncated_bytes",
    "flow_insert_failed",
    "tls_args_lost",
    "tls_conns_evicted",
];
/// The setups of `live-overhead --tls`.
const TLS_SETUPS: &[(&str, &str)] = &[
    ("detached", "uprobes detached"),
    ("tls_attached_read_only", "uprobes, events discarded (1 ms)"),
    ("tls_attached", "uprobes + pipeline (1 ms, as `run`)"),
];

/// The setups live-overhead measures (its report's key prefixes), as the table names them.
const SETUPS: &[(&str, &str)] = &[
    ("detached", "probe detached"),
    ("attached_read_only", "probe, events discarded (per event)"),
    (
        "attached_read_only_batched",
        "probe, events discarded (1 ms)",
    ),
    ("attached", "probe + pipeline (per event)"),
    ("attached_batched", "probe + pipeline (1 ms, as `run`)"),
];

pub(super) fn run(options: &Options) -> Result<()> {
    if !process::is_root() {
        return Err(Failure::new(
            "bench live creates network namespaces and loads eBPF programs: run it as root",
        ));
    }
    let program = build_bench_binary("live-overhead")?;
    println!(
        "live: nginx in a namespace, wrk -t2 -c32 -d10s in another; each setup twice, interleaved"
    );
    let mut command = std::process::Command::new(&program);
    command
        .args(options.duration_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    http(&mut command)?;
    println!(
        "live, HTTPS: nginx with a self-signed certificate, wrk over TLS; each setup once, \
         interleaved"
    );
    let mut command = std::process::Command::new(&program);
    command
        .args(["--tls", "--rounds", "1"])
        .args(options.duration_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    https(&mut command)
}

/// Runs live-overhead over HTTPS, prints its table and goals, writes `live-tls.json`.
fn https(command: &mut std::process::Command) -> Result<()> {
    let json = json_report(command)?;
    let field = |key: &str| number(&json, key);
    table(&json, TLS_SETUPS)?;
    let ratio = field("tls_attached_read_only_over_detached")?;
    println!(
        "  uprobes attached, events read every 1 ms / detached {:>6.1}%  goal: at least {:.0}%  {}",
        ratio * 100.0,
        GOAL_TLS_OVER_DETACHED * 100.0,
        verdict(ratio >= GOAL_TLS_OVER_DETACHED)
    );
    pipeline_share(&json, "tls_attached")?;
    losses(&json, TLS_LOSS_COUNTERS)?;
    println!(
        "  pipeline run: wrk completed {} requests; the pipeline saw {} calls",
        field("pipeline_requests")?,
        field("pipeline_calls_seen")?
    );
    save_json_report("live-tls.json", &json)?;
    Ok(())
}

fn number(json: &str, key: &str) -> Result<f64> {
    report_number(json, key, "live-overhead")
}

/// The requests/s, latency and ratio table of `setups`.
fn table(json: &str, setups: &[(&str, &str)]) -> Result<()> {
    println!(
        "  {:<36} {:>11} {:>8} {:>8} {:>10} {:>13} {:>13}",
        "", "requests/s", "p50 ms", "p99 ms", "/ detached", "nginx us/req", "reader us/req"
    );
    for (key, label) in setups {
        let optional = |suffix: &str, show: &dyn Fn(f64) -> String| {
            json_field(json, &format!("{key}_{suffix}")).map_or_else(String::new, show)
        };
        println!(
            "  {:<36} {:>11.0} {:>8.3} {:>8.3} {:>10} {:>13.1} {:>13}",
            label,
            number(json, &format!("{key}_requests_per_s"))?,
            number(json, &format!("{key}_p50_us"))? / 1000.0,
            number(json, &format!("{key}_p99_us"))? / 1000.0,
            optional("over_detached", &|r| format!("{:.1}%", r * 100.0)),
            number(json, &format!("{key}_server_cpu_us_per_request"))?,
            optional("reader_cpu_us_per_request", &|us| format!("{us:.1}")),
        );
    }
    println!(
        "  (us/req: CPU microseconds per completed request, of nginx's processes and of the \
         thread that reads the ring)"
    );
    Ok(())
}

/// What the pipeline adds when it runs on the cores that nginx and wrk already fill: every
/// microsecond of its CPU per call is taken from them.
fn pipeline_share(json: &str, key: &str) -> Result<()> {
    println!(
        "  with the pipeline on the same cores (as `run`) / detached {:>6.1}%  (the reader's CPU: \
         {:.1} us per call)",
        number(json, &format!("{key}_over_detached"))? * 100.0,
        number(json, &format!("{key}_reader_cpu_us_per_request"))?
    );
    Ok(())
}

/// The loss counters, summed, against the goal of zero.
fn losses(json: &str, keys: &[&str]) -> Result<()> {
    let mut lost = 0.0;
    let mut counters = Vec::new();
    for key in keys {
        let value = number(json, key)?;
        lost += value;
        counters.push(format!("{key} {value}"));
    }
    println!(
        "  kernel loss counters: {}  goal: all zero  {}",
        counters.join(", "),
        verdict(lost == 0.0)
    );
    Ok(())
}

/// Runs live-overhead over HTTP (the TC probe), prints its table and goals, writes `live.json`.
fn http(command: &mut std::process::Command) -> Result<()> {
    let json = json_report(command)?;
    let field = |key: &str| number(&json, key);
    table(&json, SETUPS)?;
    // `redcap-monitor run` reads the ring every 1 ms (waking per event costs far more), so the
    // probe's goal is judged on that setup.
    let ratio = field("attached_read_only_batched_over_detached")?;
    println!(
        "  probe attached, events read every 1 ms / detached {:>6.1}%  goal: at least {:.0}%  {}",
        ratio * 100.0,
        GOAL_ATTACHED_OVER_DETACHED * 100.0,
        verdict(ratio >= GOAL_ATTACHED_OVER_DETACHED)
    );
    pipeline_share(&json, "attached_batched")?;
    losses(&json, LOSS_COUNTERS)?;
    let requests = field("pipeline_requests")?;
    let calls = field("pipeline_calls_seen")?;
    println!(
        "  pipeline runs: wrk completed {requests} requests; the pipeline saw {calls} calls \
         ({} complete; wrk does not count requests in flight when it stops)",
        field("pipeline_complete_calls")?
    );
    save_json_report("live.json", &json)?;
    Ok(())
}
