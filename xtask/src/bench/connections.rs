//! The connections bench: the whole pipeline holding 100,000 API connections in flight (nine in
//! ten with their token sent, one in ten a slowloris head), with a real token breaking the rate
//! rule meanwhile. The measuring is done by the `connections-bench` binary (monitor-tests, built
//! in release), which prints one JSON object; this module runs it, prints the figures and writes
//! `target/bench/connections.json`.

use std::process::Stdio;

use super::{build_bench_binary, json_report, report_number, save_json_report, verdict};
use crate::Result;

/// The unit's `MemoryMax=`: the daemon must stay under it with 100,000 connections in flight.
const MEMORY_MAX_KIB: f64 = 1024.0 * 1024.0;

pub(super) fn run() -> Result<()> {
    let program = build_bench_binary("connections-bench")?;
    println!("connections: 100,000 API connections in flight through the whole pipeline");
    let mut command = std::process::Command::new(&program);
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let json = json_report(&mut command)?;
    let field = |key: &str| report_number(&json, key, "connections-bench");
    let peak = field("peak_rss_kib")?;
    println!(
        "  {:.0} connections ({:.0} tracked, {:.0} evicted, {:.0} slowloris): RSS {:.0} MiB with \
         all open, peak {:.0} MiB  goal: under the unit's MemoryMax= (1 GiB)  {}",
        field("connections")?,
        field("tracked_connections")?,
        field("evicted_connections")?,
        field("slowloris")?,
        field("rss_all_open_kib")? / 1024.0,
        peak / 1024.0,
        verdict(peak < MEMORY_MAX_KIB)
    );
    println!(
        "  HTTP parsing state {:.0} MiB ({:.0} budget resets); the real token's 5 calls judged \
         right, released at most {:.1} s after they started (reorder window 120 s)",
        field("http_state_bytes")? / 1048576.0,
        field("state_budget_resets")?,
        field("real_last_release_delay_s")?,
    );
    save_json_report("connections.json", &json)?;
    Ok(())
}
