//! `cargo xtask bench [NAME...]`: setup, a release build of the daemon, then the named benches
//! (default: all). Each bench is a sibling module with one `run` function that prints its own
//! table and writes `target/bench/<name>.json`; this module holds what they share (selection,
//! best-of-N timing, JSON output).

mod connections;
mod live;
mod mix;
mod offline;
mod policy;
mod reassembly;
mod shared;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    Failure, Result,
    compile::{self, Profile},
    process::{self, describe},
    setup,
};

/// One bench: its name on the command line and the function that runs it.
#[derive(Clone, Copy)]
struct Bench {
    name: &'static str,
    run: fn(&Options) -> Result<()>,
}

/// What the command line says besides the benches' names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Options {
    /// `--duration SECONDS`: the length of each measured run of the benches that drive a web
    /// server (live, https-mix, http-mix); their own default (10 s) otherwise.
    pub(crate) duration_s: Option<u32>,
}

/// The benches, in the order `all` runs them.
const BENCHES: &[Bench] = &[
    Bench {
        name: "offline",
        run: |_| offline::run(),
    },
    Bench {
        name: "policy",
        run: |_| policy::run(),
    },
    Bench {
        name: "reassembly",
        run: |_| reassembly::run(),
    },
    Bench {
        name: "shared",
        run: |_| shared::run(),
    },
    Bench {
        name: "connections",
        run: |_| connections::run(),
    },
    Bench {
        name: "live",
        run: live::run,
    },
    Bench {
        name: "https-mix",
        run: mix::run_https,
    },
    Bench {
        name: "http-mix",
        run: mix::run_http,
    },
];

pub(crate) fn run(args: &[String]) -> Result<()> {
    let (options, names) = parse_options(args)?;
    let selected = select(&names)?;
    setup::run()?;
    compile::build_daemon(Profile::Release)?;
    for bench in selected {
        println!("\nbench {}", bench.name);
        (bench.run)(&options)?;
    }
    Ok(())
}

/// Splits `--duration SECONDS` from the benches' names.
fn parse_options(args: &[String]) -> Result<(Options, Vec<String>)> {
    let mut options = Options::default();
    let mut names = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg != "--duration" {
            names.push(arg.clone());
            continue;
        }
        let seconds = args
            .next()
            .and_then(|value| value.parse::<u32>().ok())
            .filter(|&seconds| seconds > 0)
            .ok_or_else(|| Failure::new("--duration takes a positive number of seconds"))?;
        options.duration_s = Some(seconds);
    }
    Ok((options, names))
}

impl Options {
    /// The arguments that pass these options on to a bench binary that takes `--duration`.
    pub(crate) fn duration_args(&self) -> Vec<String> {
        self.duration_s
            .map(|seconds| vec!["--duration".to_owned(), seconds.to_string()])
            .unwrap_or_default()
    }
}

fn select(args: &[String]) -> Result<Vec<Bench>> {
    if args.is_empty() || args.iter().any(|arg| arg == "all") {
        return Ok(BENCHES.to_vec());
    }
    args.iter()
        .map(|arg| {
            BENCHES
                .iter()
                .find(|bench| bench.name == arg)
                .copied()
                .ok_or_else(|| {
                    let names: Vec<&str> = BENCHES.iter().map(|bench| bench.name).collect();
                    Failure::new(format!(
                        "no bench called `{arg}`; the benches are: {} (or all)",
                        names.join(", ")
                    ))
                })
        })
        .collect()
}

/// The shortest of `runs` timed runs of `once`: the least disturbed by the rest of the machine.
fn best_of(runs: u32, mut once: impl FnMut() -> Result<()>) -> Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let start = Instant::now();
        once()?;
        best = best.min(start.elapsed());
    }
    Ok(best)
}

/// Runs a measured program with its output discarded; on failure shows the end of its stderr.
fn run_silently(command: &mut Command) -> Result<()> {
    let output = process::output(command.stdout(Stdio::null()).stderr(Stdio::piped()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(Failure::new(format!(
        "`{}` failed ({}):\n{}",
        describe(command),
        output.status,
        tail.join("\n")
    )))
}

/// Builds the bench binary `name` of monitor-tests in release and returns its path.
fn build_bench_binary(name: &str) -> Result<PathBuf> {
    process::run(process::cargo().args([
        "build",
        "--release",
        "-p",
        "monitor-tests",
        "--bin",
        name,
    ]))?;
    Ok(process::target_dir().join("release").join(name))
}

/// Writes a bench binary's JSON report to `target/bench/<file_name>` and says so.
fn save_json_report(file_name: &str, json: &str) -> Result<()> {
    let path = output_path(file_name)?;
    write_report(&path, &(json.trim_end().to_owned() + "\n"))?;
    println!("  written to {}", process::shown(&path));
    Ok(())
}

/// Runs a bench binary that prints one JSON report on stdout (its progress goes to stderr, which
/// the caller may let through) and returns the report.
fn json_report(command: &mut Command) -> Result<String> {
    let output = process::output(command)?;
    let json = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(Failure::new(format!(
            "`{}` failed ({})",
            describe(command),
            output.status
        )));
    }
    Ok(json)
}

/// The number `key` of `program`'s JSON report (see [`json_field`]), or an error that shows the
/// report.
fn report_number(json: &str, key: &str, program: &str) -> Result<f64> {
    json_field(json, key)
        .ok_or_else(|| Failure::new(format!("{program}'s report has no number `{key}`:\n{json}")))
}

/// `target/bench/<file_name>`, with the directory created.
fn output_path(file_name: &str) -> Result<PathBuf> {
    let dir = process::target_dir().join("bench");
    fs::create_dir_all(&dir)
        .map_err(|err| Failure::new(format!("cannot create {}: {err}", dir.display())))?;
    Ok(dir.join(file_name))
}

fn write_report(path: &Path, json: &str) -> Result<()> {
    fs::write(path, json)
        .map_err(|err| Failure::new(format!("cannot write {}: {err}", path.display())))
}

/// A JSON string literal (xtask has no serde on purpose).
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            ch if u32::from(ch) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(ch))),
            ch => out.push(ch),
        }
    }
    out.push('"');
    out
}

/// A JSON number; non-finite values (a zero-length run) become null.
fn json_number(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else {
        "null".to_owned()
    }
}

/// "met" or "MISSED", for a goal line.
pub(crate) fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// The number after `"key": ` in the report's summary, which follows the `runs` array (xtask
/// has no JSON parser on purpose; the summary's keys are unique).
pub(crate) fn json_field(json: &str, key: &str) -> Option<f64> {
    let summary = json
        .rfind(']')
        .and_then(|end| json.get(end..))
        .unwrap_or(json);
    let pattern = format!("\"{key}\": ");
    let rest = summary.get(summary.find(&pattern)? + pattern.len()..)?;
    let end = rest
        .find(|c: char| c == ',' || c == '}' || c.is_whitespace())
        .unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_field_reads_numbers_by_key_and_not_by_prefix() {
        let json = "{\n  \"runs\": [{\"ring_full\": 7}],\n  \"ring_full\": 0,\n  \
                    \"ring_full_x\": 5,\n  \"ratio\": 0.991\n}";
        assert_eq!(json_field(json, "ring_full"), Some(0.0));
        assert_eq!(json_field(json, "ring_full_x"), Some(5.0));
        assert_eq!(json_field(json, "ratio"), Some(0.991));
        assert_eq!(json_field(json, "missing"), None);
        assert_eq!(json_field("{\"a\": null}", "a"), None);
    }

    #[test]
    fn json_string_escapes_quotes_backslashes_and_controls() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
    }

    #[test]
    fn json_number_turns_infinity_into_null() {
        assert_eq!(json_number(1.5), "1.5");
        assert_eq!(json_number(f64::INFINITY), "null");
    }

    #[test]
    fn duration_is_taken_from_among_the_names() {
        let args = ["live", "--duration", "3", "http-mix"].map(String::from);
        let (options, names) = parse_options(&args).unwrap();
        assert_eq!(options.duration_s, Some(3));
        assert_eq!(names, ["live", "http-mix"]);
        assert!(parse_options(&["--duration".to_owned()]).is_err());
        assert!(parse_options(&["--duration", "0"].map(String::from)).is_err());
    }

    #[test]
    fn select_defaults_to_all_and_rejects_unknown_names() {
        assert_eq!(select(&[]).map(|b| b.len()).ok(), Some(BENCHES.len()));
        assert_eq!(
            select(&["offline".to_owned()]).map(|b| b.len()).ok(),
            Some(1)
        );
        assert!(select(&["nosuch".to_owned()]).is_err());
    }
}
