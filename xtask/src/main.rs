//! `cargo xtask`: the project's tasks (setup, build, test, demo, bench, fuzz, dist) in plain Rust.
//!
//! Dependency-free on purpose: it must build on a fresh machine before `setup` has installed
//! anything. Each task lives in its own module; this file only parses the command line and turns
//! a [`Failure`] into a message and an exit status.

mod bench;
mod compile;
mod demo;
mod dist;
mod fuzz;
mod process;
mod setup;

use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  setup              install what building and testing need (Debian packages, nightly rust-src,
                     bpf-linker for LLVM 22, cargo-fuzz, PyCap), skipping whatever is present
  build [--release]  setup, then build the daemon (target/{debug,release}/redcap-monitor)
  test [ARGS...]     setup, build the daemon, then `cargo test --workspace [ARGS...]`, then 5 s
                     of every fuzz target
  demo [--seconds N] setup, then the live demo (root): nginx + the REDCap simulator in a network
                     namespace, the daemon's eBPF probe on its veth, real clients; calls and
                     violations shown as they happen (default 40 s, Ctrl-C stops and cleans up)
  demo offline       setup, record REDCap API traffic on loopback, then `analyze` the capture
  bench [NAME...] [--duration SECONDS]
                     setup, release build, then benchmarks: offline, policy, reassembly, shared,
                     connections, live, https-mix, http-mix (default: all); --duration: each measured run of
                     the web server benches (default 10 s)
  fuzz [TARGET...] [--seconds N] [--runs N]
                     setup, then the cargo-fuzz targets of fuzz/ with nightly (default: all,
                     each 60 s); --runs: stop each after N executions. `test` runs each 5 s
  dist [--debug]     setup, release build, then the Debian package (cargo-deb) in target/debian/:
                     binary, systemd unit (not enabled), config, service user; --debug packages
                     the debug build (for tests)";

fn main() -> ExitCode {
    process::put_cargo_bin_on_path();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (task, rest) = match args.split_first() {
        Some((task, rest)) => (task.as_str(), rest),
        None => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let outcome = match task {
        "setup" => no_args(task, rest).and_then(|()| setup::run()),
        "build" => build_args(rest).and_then(compile::build),
        "test" => compile::test(rest),
        "demo" => demo::run(rest),
        "bench" => bench::run(rest),
        "dist" => dist::run(rest),
        "fuzz" => fuzz::run(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(Failure::usage(format!("unknown task `{other}`"))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("xtask {task}: {}", failure.message);
            if failure.show_usage {
                eprintln!("\n{USAGE}");
            }
            ExitCode::from(failure.exit_status)
        }
    }
}

fn no_args(task: &str, rest: &[String]) -> Result<()> {
    match rest.first() {
        None => Ok(()),
        Some(arg) => Err(Failure::usage(format!(
            "`{task}` takes no arguments (got `{arg}`)"
        ))),
    }
}

fn build_args(rest: &[String]) -> Result<compile::Profile> {
    match rest {
        [] => Ok(compile::Profile::Debug),
        [flag] if flag == "--release" => Ok(compile::Profile::Release),
        [other, ..] => Err(Failure::usage(format!(
            "`build` takes only --release (got `{other}`)"
        ))),
    }
}

/// Why a task stopped: a message that says what to do next, and the exit status to leave with.
#[derive(Debug)]
pub(crate) struct Failure {
    message: String,
    exit_status: u8,
    show_usage: bool,
}

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            exit_status: 1,
            show_usage: false,
        }
    }

    /// A failure that passes on a child's exit status (e.g. cargo test's 101).
    pub(crate) fn with_exit_status(mut self, status: Option<i32>) -> Self {
        self.exit_status = status
            .and_then(|code| u8::try_from(code).ok())
            .filter(|&code| code != 0)
            .unwrap_or(1);
        self
    }

    /// Adds what to do next to a failure, keeping its exit status.
    pub(crate) fn hint(mut self, hint: impl AsRef<str>) -> Self {
        self.message.push('\n');
        self.message.push_str(hint.as_ref());
        self
    }

    fn usage(message: String) -> Self {
        Failure {
            message,
            exit_status: 2,
            show_usage: true,
        }
    }
}

pub(crate) type Result<T> = std::result::Result<T, Failure>;
