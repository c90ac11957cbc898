//! `cargo xtask build` and `cargo xtask test`: setup, then cargo. The test task passes cargo's
//! output and exit status through and adds one closing line that totals every test binary's
//! result, so that a reader (or CI) sees the whole count last rather than the last binary's.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

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

/// How long one test may run before the run is stopped as hung, unless
/// `REDCAP_MONITOR_TEST_HANG_MINUTES` says otherwise. The slowest test takes about two minutes on
/// CI; a hung one would otherwise hold CI until its own time limit and report nothing.
const HANG_MINUTES: u64 = 15;

/// Runs cargo test, echoing its stdout line by line while adding up the `test result:` lines.
/// A test still running `HANG_MINUTES` after it started is named, and cargo with every process
/// under it is killed, so that a hang fails the run with the test's name.
fn run_counting(cargo: &mut std::process::Command) -> Result<()> {
    let mut child = cargo
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|err| crate::Failure::new(format!("cannot run cargo test: {err}")))?;
    let hang_after = std::env::var("REDCAP_MONITOR_TEST_HANG_MINUTES")
        .ok()
        .and_then(|m| m.parse::<u64>().ok())
        .unwrap_or(HANG_MINUTES);
    let hang_after = Duration::from_secs(hang_after * 60);
    let (lines, received) = std::sync::mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let mut totals = TestTotals::default();
    let mut slow = SlowTests::default();
    let mut hung = None;
    let mut out = std::io::stdout().lock();
    loop {
        match received.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                totals.add(&line);
                slow.add(&line, Instant::now());
                let _ = writeln!(out, "{line}");
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Some(test) = slow.hung(Instant::now(), hang_after) {
            hung = Some(test.to_owned());
            kill_tree(child.id());
            break;
        }
    }
    drop(out);
    let status = child
        .wait()
        .map_err(|err| crate::Failure::new(format!("cargo test did not finish: {err}")))?;
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if let Some(test) = hung {
        return Err(crate::Failure::new(format!(
            "test {test} was still running {} minutes after it started: cargo test and its \
             processes were killed (set REDCAP_MONITOR_TEST_HANG_MINUTES to allow longer)",
            hang_after.as_secs() / 60
        )));
    }
    if status.success() {
        Ok(())
    } else {
        Err(crate::Failure::new(format!("cargo test failed ({status})"))
            .with_exit_status(status.code()))
    }
}

/// Kills `pid` and every process under it, children first, so that no test's server outlives
/// the run. Uses `kill(1)`: xtask has no dependencies.
fn kill_tree(pid: u32) {
    let children = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>();
    // Stop it first, so that it starts no new child while its children are killed.
    let _ = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status();
    for child in children {
        kill_tree(child);
    }
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// The tests libtest has called slow (`test NAME has been running for over 60 seconds`) and
/// not yet reported finished (`test NAME ... ok`), with when they were first seen. libtest says
/// so 60 seconds after a test starts, so a test's start is taken as 60 seconds before.
#[derive(Debug, Default)]
struct SlowTests {
    running: Vec<(String, Instant)>,
}

impl SlowTests {
    fn add(&mut self, line: &str, now: Instant) {
        let Some(rest) = line.strip_prefix("test ") else {
            return;
        };
        if let Some(name) = rest.strip_suffix(" has been running for over 60 seconds") {
            let started = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
            self.running.push((name.to_owned(), started));
        } else if let Some((name, _)) = rest.split_once(" ... ") {
            self.running.retain(|(slow, _)| slow != name);
        }
    }

    /// The first test running for longer than `limit` at `now`.
    fn hung(&self, now: Instant, limit: Duration) -> Option<&str> {
        self.running
            .iter()
            .find(|(_, started)| now.duration_since(*started) > limit)
            .map(|(name, _)| name.as_str())
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
    use std::time::{Duration, Instant};

    use super::{SlowTests, TestTotals};

    #[test]
    fn a_slow_test_is_hung_only_past_the_limit_and_not_once_it_finished() {
        let start = Instant::now();
        let mut slow = SlowTests::default();
        slow.add("test a_b has been running for over 60 seconds", start);
        slow.add("test c has been running for over 60 seconds", start);
        slow.add("test c ... ok", start + Duration::from_secs(5));
        slow.add("running 3 tests", start);
        let limit = Duration::from_secs(600);
        assert_eq!(slow.hung(start + Duration::from_secs(500), limit), None);
        assert_eq!(
            slow.hung(start + Duration::from_secs(541), limit),
            Some("a_b")
        );
        slow.add("test a_b ... FAILED", start + Duration::from_secs(542));
        assert_eq!(slow.hung(start + Duration::from_secs(9999), limit), None);
    }

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
