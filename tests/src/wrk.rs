//! wrk, the load generator of the live benches: their Lua scripts end (in `done`) by printing one
//! line `RESULT n1 n2 ...` of whole numbers, which this reads from wrk's output.

use anyhow::{Context, Result, bail};

/// The `N` numbers of the RESULT line in a finished wrk's output; an error (with wrk's output)
/// when wrk failed, printed no such line or another count of numbers.
pub fn result_numbers<const N: usize>(output: &std::process::Output) -> Result<[u64; N]> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed ({}):\n{stdout}", output.status);
    }
    let numbers: Vec<u64> = stdout
        .lines()
        .find_map(|line| line.strip_prefix("RESULT "))
        .with_context(|| format!("wrk printed no RESULT line:\n{stdout}"))?
        .split_whitespace()
        .map(|n| n.parse().context("a number in wrk's RESULT line"))
        .collect::<Result<_>>()?;
    let count = numbers.len();
    numbers
        .try_into()
        .map_err(|_| anyhow::anyhow!("wrk's RESULT line has {count} numbers, not {N}"))
}
