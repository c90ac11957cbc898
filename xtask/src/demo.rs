//! `cargo xtask demo`: the main job end to end. The default is live: `live-demo` in the tests
//! crate runs nginx and the REDCap simulator in a namespace, the daemon's eBPF probe and real
//! clients, and shows calls and verdicts as they happen. `demo offline` records real REDCap API
//! traffic on loopback (`record-sample`), analyses the capture with the debug daemon, shows the
//! per-token summary and writes the call and violation records under `target/demo/`.

use std::{fs, path::Path, process::Command};

use crate::{
    Failure, Result,
    compile::{self, Profile},
    process, setup,
};

pub(crate) fn run(args: &[String]) -> Result<()> {
    match args {
        [first, rest @ ..] if first == "offline" => {
            if let Some(extra) = rest.first() {
                return Err(Failure::usage(format!(
                    "`demo offline` takes no arguments (got `{extra}`)"
                )));
            }
            offline()
        }
        [] => live(&[]),
        [flag, n] if flag == "--seconds" => live(&[flag.clone(), n.clone()]),
        [other, ..] => Err(Failure::usage(format!(
            "`demo` takes `offline` or `--seconds N` (got `{other}`)"
        ))),
    }
}

/// The live demo: the debug daemon plus `live-demo` (tests/src/bin/), which needs root.
fn live(live_demo_args: &[String]) -> Result<()> {
    setup::run()?;
    compile::build_daemon(Profile::Debug)?;
    if !process::is_root() {
        return Err(Failure::new(
            "the live demo creates network namespaces and loads the eBPF probe: run it as root \
             (`cargo xtask demo offline` also needs root, for tcpdump)"
                .to_string(),
        ));
    }
    let mut demo = process::cargo();
    demo.args(["run", "-p", "monitor-tests", "--bin", "live-demo", "--"])
        .args(live_demo_args)
        .env("REDCAP_MONITOR_BIN", compile::daemon_binary(Profile::Debug));
    // Ctrl-C reaches live-demo too (same process group); it stops and cleans up. We wait for
    // it instead of dying first and handing the terminal back mid-cleanup.
    let mut child = demo
        .spawn()
        .map_err(|err| Failure::new(format!("cannot start `cargo run ... live-demo`: {err}")))?;
    ignore_interrupts();
    let status = child
        .wait()
        .map_err(|err| Failure::new(format!("waiting for live-demo: {err}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure::new(format!("live-demo failed ({status})"))
            .with_exit_status(status.code())
            .hint("live-demo (tests/src/bin/) failed; its message above says why."))
    }
}

/// SIGINT ignored from now on in this process (xtask is dependency-free: std links libc on
/// Unix, so `signal` is declared here).
fn ignore_interrupts() {
    unsafe extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGINT: i32 = 2;
    const SIG_IGN: usize = 1;
    // SAFETY: installing SIG_IGN has no preconditions and runs no code in signal context.
    unsafe {
        signal(SIGINT, SIG_IGN);
    }
}

fn offline() -> Result<()> {
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
