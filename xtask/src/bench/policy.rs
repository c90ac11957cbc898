//! The policy bench: the rate rules (and the enforcement stage) alone on 5 million synthetic calls
//! from 10,000 tokens, then from a million distinct tokens (a flood of made-up tokens: memory
//! must stay within `policy.max_tokens`). The measuring is done by the `policy-bench` binary (monitor-tests, built
//! in release), which prints one JSON object; this module runs it, prints the figures and the
//! goals, and writes `target/bench/policy.json`.

use std::process::Stdio;

use super::{build_bench_binary, json_report, report_number, save_json_report, verdict};
use crate::Result;

/// Calls per second of one core the rate rules must evaluate at least...
const GOAL_CALLS_PER_S: f64 = 1_000_000.0;
/// ...holding at most this much memory for 10,000 active tokens.
const GOAL_PEAK_BYTES: f64 = 64.0 * 1024.0 * 1024.0;

pub(super) fn run() -> Result<()> {
    let program = build_bench_binary("policy-bench")?;
    println!("policy: 5,000,000 calls from 10,000 tokens, best of 3, CPU time of one core");
    let mut command = std::process::Command::new(&program);
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let json = json_report(&mut command)?;
    let field = |key: &str| report_number(&json, key, "policy-bench");
    let rate = field("policy_calls_per_s")?;
    println!(
        "  rate rules: {:.0} calls/s (CPU), {:.0} calls/s (wall)  goal: over {:.0}  {}",
        rate,
        field("policy_calls_per_wall_s")?,
        GOAL_CALLS_PER_S,
        verdict(rate > GOAL_CALLS_PER_S)
    );
    println!(
        "  with enforcement deciding every violation ({:.0} of them): {:.0} calls/s (CPU)",
        field("violations")?,
        field("policy_and_enforcement_calls_per_s")?
    );
    let peak = field("peak_rss_kib")? * 1024.0;
    println!(
        "  memory: policy state {:.1} MiB for {:.0} tokens, with enforcement {:.1} MiB; \
         heap peak {:.1} MiB; process peak RSS {:.1} MiB  goal: under {:.0} MiB  {}",
        field("policy_state_bytes")? / 1048576.0,
        field("tracked_tokens")?,
        field("policy_and_enforcement_state_bytes")? / 1048576.0,
        field("heap_peak_bytes")? / 1048576.0,
        peak / 1048576.0,
        GOAL_PEAK_BYTES / 1048576.0,
        verdict(peak < GOAL_PEAK_BYTES)
    );
    save_json_report("policy.json", &json)?;

    println!("policy under a flood: 5,000,000 calls from 1,000,000 distinct tokens");
    let mut command = std::process::Command::new(&program);
    command
        .args(["5000000", "1000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let flood = json_report(&mut command)?;
    let field = |key: &str| report_number(&flood, key, "policy-bench");
    println!(
        "  policy state {:.1} MiB for {:.0} tokens tracked ({:.0} evictions past \
         policy.max_tokens), with enforcement {:.1} MiB; heap peak {:.1} MiB beside the \
         bench's own {:.1} MiB of tokens; process peak RSS {:.1} MiB; {:.0} calls/s (CPU)",
        field("policy_state_bytes")? / 1048576.0,
        field("tracked_tokens")?,
        field("evicted_tokens")?,
        field("policy_and_enforcement_state_bytes")? / 1048576.0,
        (field("heap_peak_bytes")? - field("input_bytes")?) / 1048576.0,
        field("input_bytes")? / 1048576.0,
        field("peak_rss_kib")? / 1024.0,
        field("policy_calls_per_s")?,
    );
    save_json_report("policy-flood.json", &flood)?;
    Ok(())
}
