//! `cargo xtask build` and `cargo xtask test`: setup, then cargo. The test task passes cargo's
//! output and exit status through and adds one closing line that totals every test binary's
//! result, so that a reader (or CI) sees the whole count last rather than the last binary's.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::Stdio;

use crate::{Result, process, setup};

/// Which cargo profile to build the daemon with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Profile {
    Debug,
    Release,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Release => "release",
        }
    }
}

/// The daemon binary that `build_daemon(profile)` leaves behind.
pub(crate) fn daemon_binary(profile: Profile) -> PathBuf {
    process::target_dir()
        .join(profile.dir())
        .join("redcap-monitor")
}

/// `cargo build [--release] -p monitor-daemon --bins`, without setup.
pub(crate) fn build_daemon(profile: Profile) -> Result<()> {
    let mut cargo = process::cargo();
    cargo.args(["build", "-p", "monitor-daemon", "--bins"]);
    if profile == Profile::Release {
        cargo.arg("--release");
    }
    process::run(&mut cargo)
}

pub(crate) fn build(profile: Profile) -> Result<()> {
    setup::run()?;
    build_daemon(profile)?;
    println!("built {}", process::shown(&daemon_binary(profile)));
    Ok(())
}

/// Setup, the debug daemon (the end-to-end tests run it), then `cargo test --workspace ARGS`,
/// then a few seconds of every fuzz target (also when tests failed: both results are shown).
pub(crate) fn test(cargo_test_args: &[String]) -> Result<()> {
    setup::run()?;
    build_daemon(Profile::Debug)?;
    let mut cargo = process::cargo();
    // --no-fail-fast: one failing test binary must not hide the others' results.
    cargo
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(cargo_test_args);
    // The e2e harness defaults to <workspace>/target/debug; say exactly which binary we built.
    if std::env::var_os("REDCAP_MONITOR_BIN").is_none() {
        cargo.env("REDCAP_MONITOR_BIN", daemon_binary(Profile::Debug));
    }
    let tests = run_counting(&mut cargo);
    let fuzzing = crate::fuzz::smoke();
    tests.and(fuzzing)
}

/// Runs cargo test, echoing its stdout line by line while adding up the `test result:` lines.
fn run_counting(cargo: &mut std::process::Command) -> Result<()> {
    let mut child = cargo
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|err| crate::Failure::new(format!("cannot run cargo test: {err}")))?;
    let mut totals = TestTotals::default();
    if let Some(stdout) = child.stdout.take() {
        let mut out = std::io::stdout().lock();
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            totals.add(&line);
            let _ = writeln!(out, "{line}");
        }
    }
    let status = child
        .wait()
        .map_err(|err| crate::Failure::new(format!("cargo test did not finish: {err}")))?;
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if status.success() {
        Ok(())
    } else {
        Err(crate::Failure::new(format!("cargo test failed ({status})"))
            .with_exit_status(status.code()))
    }
}

/// Sums of libtest's `test result: ok. 5 passed; 0 failed; 1 ignored; ...` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct TestTotals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl TestTotals {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(name), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match name {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TestTotals;

    #[test]
    fn totals_add_up_every_result_line_and_ignore_the_rest() {
        let mut totals = TestTotals::default();
        for line in [
            "test result: ok. 168 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 1.70s",
            "running 3 tests",
            "test result: FAILED. 10 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.4s",
        ] {
            totals.add(line);
        }
        assert_eq!(
            totals,
            TestTotals {
                passed: 178,
                failed: 1,
                ignored: 2
            }
        );
    }
}
