//! The reassembly bench: the reassembler alone on hostile input that used to cost quadratic work
//! (16,000 segments behind one hole; 50,000 connections' buffers under a total limit). The
//! measuring is done by the `reassembly-bench` binary (monitor-tests, built in release), which
//! prints one JSON object; this module runs it, prints the figures and writes
//! `target/bench/reassembly.json`.

use std::process::Stdio;

use super::{build_bench_binary, json_report, report_number, save_json_report, verdict};
use crate::Result;

/// Segments per CPU second either shape must reach at least (a linear-time reassembler does
/// millions; the quadratic one did tens of thousands).
const GOAL_SEGMENTS_PER_S: f64 = 1_000_000.0;

pub(super) fn run() -> Result<()> {
    let program = build_bench_binary("reassembly-bench")?;
    println!("reassembly: hostile out-of-order and memory-pressure input, best of 3, CPU time");
    let mut command = std::process::Command::new(&program);
    command.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let json = json_report(&mut command)?;
    let field = |key: &str| report_number(&json, key, "reassembly-bench");
    let ooo = field("out_of_order_segments_per_s")?;
    println!(
        "  {:.0} segments behind one hole: {:.0} segments/s  goal: over {:.0}  {}",
        field("out_of_order_segments")?,
        ooo,
        GOAL_SEGMENTS_PER_S,
        verdict(ooo > GOAL_SEGMENTS_PER_S)
    );
    let relief = field("relief_segments_per_s")?;
    println!(
        "  {:.0} connections over the total buffer limit ({:.0} buffers flushed): {:.0} \
         segments/s  goal: over {:.0}  {}",
        field("relief_connections")?,
        field("relief_buffer_evictions")?,
        relief,
        GOAL_SEGMENTS_PER_S,
        verdict(relief > GOAL_SEGMENTS_PER_S)
    );
    save_json_report("reassembly.json", &json)?;
    Ok(())
}
