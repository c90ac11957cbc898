//! `cargo xtask fuzz [TARGET...] [--seconds N] [--runs N]`: runs the cargo-fuzz targets of
//! `fuzz/` (default: all, one after the other) with nightly, each on its working corpus
//! (`fuzz/corpus/TARGET`, not committed) plus its committed seeds (`fuzz/seeds/TARGET`).
//! `cargo xtask test` runs every target for a few seconds through [`smoke`].
//!
//! Built without a sanitizer: the daemon is safe Rust but for a few reads of kernel records,
//! and what libFuzzer catches here (panics, overflows with debug assertions, timeouts, memory
//! past the RSS limit) needs none; the sanitizer would cost half the executions.

use std::path::PathBuf;
use std::process::Command;

use crate::{Failure, Result, process, setup};

/// How long each target runs when neither `--seconds` nor `--runs` is given.
const DEFAULT_SECONDS: u32 = 60;
/// How long `cargo xtask test` runs each target.
const SMOKE_SECONDS: u32 = 5;

/// What the command line asks.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    targets: Vec<String>,
    seconds: Option<u32>,
    runs: Option<u64>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| Failure::new(format!("`{name}` needs a number")))
        };
        match arg.as_str() {
            "--seconds" => {
                let text = value("--seconds")?;
                options.seconds = Some(text.parse().map_err(|_| {
                    Failure::new(format!("`--seconds {text}`: not a whole number of seconds"))
                })?);
            }
            "--runs" => {
                let text = value("--runs")?;
                options.runs = Some(text.parse().map_err(|_| {
                    Failure::new(format!("`--runs {text}`: not a whole number of executions"))
                })?);
            }
            flag if flag.starts_with('-') => {
                return Err(Failure::new(format!(
                    "`fuzz` takes target names, --seconds N and --runs N (got `{flag}`)"
                )));
            }
            target => options.targets.push(target.to_owned()),
        }
    }
    Ok(options)
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    setup::run()?;
    let all = targets()?;
    let chosen = if options.targets.is_empty() {
        all
    } else {
        for target in &options.targets {
            if !all.contains(target) {
                return Err(Failure::new(format!(
                    "no fuzz target `{target}`; the targets are: {}",
                    all.join(" ")
                )));
            }
        }
        options.targets
    };
    let limit = match (options.seconds, options.runs) {
        (None, None) => Limit {
            seconds: Some(DEFAULT_SECONDS),
            runs: None,
        },
        (seconds, runs) => Limit { seconds, runs },
    };
    fuzz_each(&chosen, limit)
}

/// A few seconds of every target (for `cargo xtask test`; setup has run).
pub(crate) fn smoke() -> Result<()> {
    let limit = Limit {
        seconds: Some(SMOKE_SECONDS),
        runs: None,
    };
    fuzz_each(&targets()?, limit)
}

#[derive(Clone, Copy, Debug)]
struct Limit {
    seconds: Option<u32>,
    runs: Option<u64>,
}

fn fuzz_dir() -> PathBuf {
    process::workspace_root().join("fuzz")
}

/// `cargo fuzz` with nightly, in the workspace root (cargo-fuzz finds `fuzz/` there).
fn cargo_fuzz() -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo", "fuzz"])
        .current_dir(process::workspace_root())
        // The stable cargo that runs xtask must not be the one cargo-fuzz calls.
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN");
    command
}

/// The targets `fuzz/Cargo.toml` declares, as `cargo fuzz list` prints them.
fn targets() -> Result<Vec<String>> {
    let output = process::output(cargo_fuzz().arg("list"))?;
    if !output.status.success() {
        return Err(Failure::new(format!(
            "`cargo fuzz list` failed: {}\nIs cargo-fuzz installed (`cargo xtask setup`)?",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Builds every target once, then runs each in turn; stops at the first that fails (a crash
/// leaves its input in `fuzz/artifacts/TARGET/`).
fn fuzz_each(targets: &[String], limit: Limit) -> Result<()> {
    process::run(cargo_fuzz().args(["build", "--sanitizer", "none"]))?;
    for target in targets {
        fuzz_one(target, limit)?;
    }
    println!("fuzz: {} targets ran without a crash", targets.len());
    Ok(())
}

fn fuzz_one(target: &str, limit: Limit) -> Result<()> {
    let corpus = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&corpus)
        .map_err(|err| Failure::new(format!("cannot create {}: {err}", process::shown(&corpus))))?;
    let seeds = fuzz_dir().join("seeds").join(target);
    let mut command = cargo_fuzz();
    command
        .args(["run", "--sanitizer", "none", target])
        .arg(&corpus);
    if seeds.is_dir() {
        command.arg(&seeds);
    }
    command.args([
        "--",
        "-print_final_stats=1",
        "-rss_limit_mb=2048",
        "-timeout=10",
    ]);
    if let Some(seconds) = limit.seconds {
        command.arg(format!("-max_total_time={seconds}"));
    }
    if let Some(runs) = limit.runs {
        command.arg(format!("-runs={runs}"));
    }
    println!("fuzz: {target} ({})", describe_limit(limit));
    process::run(&mut command).map_err(|failure| {
        failure.hint(format!(
            "The fuzz target `{target}` failed: the input that did it is in {}; rerun it with \
             `cargo +nightly fuzz run --sanitizer none {target} <file>`, turn it into a unit test \
             of the daemon, then fix the daemon.",
            process::shown(&fuzz_dir().join("artifacts").join(target))
        ))
    })
}

fn describe_limit(limit: Limit) -> String {
    match (limit.seconds, limit.runs) {
        (Some(s), Some(r)) => format!("{r} executions or {s} s"),
        (Some(s), None) => format!("{s} s"),
        (None, Some(r)) => format!("{r} executions"),
        (None, None) => "until stopped".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| (*w).to_owned()).collect()
    }

    #[test]
    fn targets_seconds_and_runs_are_read_from_the_command_line() {
        assert_eq!(
            parse(&args(&["http", "--seconds", "30", "h2", "--runs", "1000"])).ok(),
            Some(Options {
                targets: vec!["http".into(), "h2".into()],
                seconds: Some(30),
                runs: Some(1000),
            })
        );
        assert_eq!(parse(&[]).ok(), Some(Options::default()));
        assert!(parse(&args(&["--seconds"])).is_err());
        assert!(parse(&args(&["--seconds", "ten"])).is_err());
        assert!(parse(&args(&["--verbose"])).is_err());
    }
}
