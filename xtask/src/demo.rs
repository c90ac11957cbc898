//! `cargo xtask demo`: the main job end to end. Records real REDCap API traffic on loopback
//! (`record-sample` in the tests crate), analyses the capture with the debug daemon, shows the
//! per-token summary and writes the call and violation records under `target/demo/`.

use std::{fs, path::Path, process::Command};

use crate::{
    Failure, Result,
    compile::{self, Profile},
    process, setup,
};

pub(crate) fn run() -> Result<()> {
    setup::run()?;
    compile::build_daemon(Profile::Debug)?;
    let daemon = compile::daemon_binary(Profile::Debug);
    let demo_dir = process::target_dir().join("demo");
    fs::create_dir_all(&demo_dir)
        .map_err(|err| Failure::new(format!("cannot create {}: {err}", demo_dir.display())))?;
    let capture = demo_dir.join("sample.pcap");
    let key = demo_dir.join("site.key");
    let calls = demo_dir.join("calls.jsonl");
    let violations = demo_dir.join("violations.jsonl");

    println!("demo: recording REDCap API traffic (simulator, PyCap and curl on loopback, tcpdump)");
    let mut record = process::cargo();
    record
        .args(["run", "-p", "monitor-tests", "--bin", "record-sample", "--"])
        .arg("--out")
        .arg(&capture);
    process::run(&mut record).map_err(|failure| {
        let hint = if process::is_root() {
            "record-sample (tests/src/bin/) failed; its message above says why."
        } else {
            "record-sample captures on loopback with tcpdump: run the demo as root."
        };
        failure.hint(hint)
    })?;

    println!("\ndemo: per-token summary of {}", process::shown(&capture));
    process::run(&mut analyze(&daemon, &capture, &key))?;

    process::run(
        analyze(&daemon, &capture, &key)
            .arg("--calls")
            .arg(&calls)
            .arg("--violations")
            .arg(&violations),
    )?;
    println!(
        "\ndemo: {} call records in {}",
        count_records(&calls)?,
        process::shown(&calls)
    );
    println!(
        "demo: {} violation records in {}",
        count_records(&violations)?,
        process::shown(&violations)
    );
    println!(
        "demo: fingerprints are keyed by {}; `{} fingerprint --key {}` turns tokens into them",
        process::shown(&key),
        process::shown(&daemon),
        process::shown(&key)
    );
    Ok(())
}

fn analyze(daemon: &Path, capture: &Path, key: &Path) -> Command {
    let mut command = Command::new(daemon);
    command
        .current_dir(process::workspace_root())
        .arg("analyze")
        .arg(capture)
        .arg("--key")
        .arg(key);
    command
}

/// Lines in a JSONL file that analyze must have written.
fn count_records(path: &Path) -> Result<usize> {
    let bytes = fs::read(path).map_err(|err| {
        Failure::new(format!(
            "analyze exited 0 but {} cannot be read ({err}); it should have written it",
            process::shown(path)
        ))
    })?;
    Ok(bytes.iter().filter(|&&byte| byte == b'\n').count())
}
