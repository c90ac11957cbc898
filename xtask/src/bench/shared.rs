//! The shared-state bench (`[shared]`, issue 14): two hosts' Redis edges and cluster stages
//! through a private `redis-server` on loopback. The measuring is done by the `shared-bench`
//! binary (monitor-tests, built in release), which prints one JSON object; this module runs it,
//! prints the figures against the goals and writes `target/bench/shared.json`.

use std::process::Stdio;

use super::{build_bench_binary, json_report, report_number, save_json_report, verdict};
use crate::Result;

/// Calls per second one host's calls must reach a peer's windows through Redis at least...
const GOAL_CALLS_PER_S: f64 = 50_000.0;
/// ...and the 99th percentile of the delay a peer adds to a violating call's decision.
const GOAL_DELAY_P99_MS: f64 = 5.0;

pub(super) fn run() -> Result<()> {
    let program = build_bench_binary("shared-bench")?;
    println!("shared: two hosts through a local redis-server (each on its own thread), best of 3");
    let mut command = std::process::Command::new(&program);
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let json = json_report(&mut command)?;
    let field = |key: &str| report_number(&json, key, "shared-bench");
    let rate = field("end_to_end_calls_per_s")?;
    println!(
        "  {:.0} calls from {:.0} tokens, batches of {:.0}: {:.0} calls/s from one host into its \
         peer's windows (publishing alone {:.0} calls/s)  goal: over {:.0}  {}",
        field("calls")?,
        field("tokens")?,
        field("batch")?,
        rate,
        field("publish_calls_per_s")?,
        GOAL_CALLS_PER_S,
        verdict(rate > GOAL_CALLS_PER_S)
    );
    println!(
        "  CPU per million calls: redis-server {:.2} s, the two hosts' threads {:.2} s",
        field("redis_cpu_s_per_million_calls")?,
        field("hosts_cpu_s_per_million_calls")?
    );
    let default_p99 = field("delay_ms_p99_heartbeat_250ms")?;
    println!(
        "  decision delay of a violating call while the peer idles, shared.heartbeat 250 ms \
         (default): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms  goal: p99 under {:.0} ms  {}",
        field("delay_ms_p50_heartbeat_250ms")?,
        default_p99,
        field("delay_ms_max_heartbeat_250ms")?,
        GOAL_DELAY_P99_MS,
        verdict(default_p99 < GOAL_DELAY_P99_MS)
    );
    let fast_p99 = field("delay_ms_p99_heartbeat_5ms")?;
    println!(
        "  the same with shared.heartbeat 5 ms: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms  {}",
        field("delay_ms_p50_heartbeat_5ms")?,
        fast_p99,
        field("delay_ms_max_heartbeat_5ms")?,
        verdict(fast_p99 < GOAL_DELAY_P99_MS)
    );
    let bytes = field("used_memory_bytes")?;
    let calls = field("memory_calls")?;
    println!(
        "  Redis memory for 10,000 tokens at 3 calls a minute over the stream's retention \
         ({:.0} calls): {:.1} MiB (used_memory), {:.0} bytes a call, one call an entry \
         ({:.1} MiB, {:.0} bytes a call at 50 calls an entry)",
        calls,
        bytes / 1048576.0,
        bytes / calls,
        field("used_memory_bytes_50_calls_an_entry")? / 1048576.0,
        field("used_memory_bytes_50_calls_an_entry")? / calls,
    );
    save_json_report("shared.json", &json)?;
    Ok(())
}
