//! `cargo xtask build` and `cargo xtask test`: setup, then cargo. The test task passes cargo's
//! output and exit status through untouched; this module adds no test logic of its own.

use std::path::PathBuf;

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

/// Setup, the debug daemon (the end-to-end tests run it), then `cargo test --workspace ARGS`.
pub(crate) fn test(cargo_test_args: &[String]) -> Result<()> {
    setup::run()?;
    build_daemon(Profile::Debug)?;
    let mut cargo = process::cargo();
    cargo.args(["test", "--workspace"]).args(cargo_test_args);
    // The e2e harness defaults to <workspace>/target/debug; say exactly which binary we built.
    if std::env::var_os("REDCAP_MONITOR_BIN").is_none() {
        cargo.env("REDCAP_MONITOR_BIN", daemon_binary(Profile::Debug));
    }
    process::run(&mut cargo)
}
