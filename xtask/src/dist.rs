//! `cargo xtask dist`: the Debian package. Setup (cargo-deb included), the daemon, then
//! cargo-deb with the metadata in `monitor-daemon/Cargo.toml`: the binary, the systemd unit
//! (disabled), the example configuration as a conffile, the sysusers file for the service user,
//! and `config/grafana/` and `config/prometheus/` (whatever they hold) under
//! `/usr/share/redcap-monitor/`. Does not install anything on this machine.

use std::path::{Path, PathBuf};

use crate::compile::{self, Profile};
use crate::{Failure, Result, process, setup};

/// Directories of `config/` shipped under `/usr/share/redcap-monitor/`, staged first because
/// cargo-deb refuses a glob that matches nothing (they may not exist yet).
const SHARED_DIRS: &[&str] = &["grafana", "prometheus", "systemd-drop-ins"];

/// `dist [--debug]`: `--debug` packages the debug build with fast compression (the tests use it;
/// the package is the same but for the binary's optimisation).
pub(crate) fn run(args: &[String]) -> Result<()> {
    let profile = match args {
        [] => Profile::Release,
        [flag] if flag == "--debug" => Profile::Debug,
        [other, ..] => {
            return Err(Failure::new(format!(
                "`dist` takes only --debug (got `{other}`)"
            )));
        }
    };
    setup::run()?;
    compile::build_daemon(profile)?;
    stage_shared_files()?;
    let out_dir = process::target_dir().join("debian");
    let mut deb = process::cargo();
    deb.args(["deb", "-p", "monitor-daemon", "--no-build", "-o"])
        .arg(&out_dir);
    if profile == Profile::Debug {
        // cargo-deb warns that dev builds are not for release: this one is for the tests.
        deb.args(["--profile", "dev", "--fast"]);
    }
    let output = process::output(&mut deb)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(Failure::new(format!(
            "`{}` failed ({}):\n{}{}",
            process::describe(&deb),
            output.status,
            stdout.trim(),
            stderr.trim()
        )));
    }
    let package = stdout
        .lines()
        .map(str::trim)
        .rfind(|line| line.ends_with(".deb"))
        .ok_or_else(|| Failure::new(format!("cargo-deb printed no .deb path:\n{stdout}")))?;
    println!("{package}");
    Ok(())
}

/// `<workspace>/target/dist/share/`: a README and a copy of each of [`SHARED_DIRS`] that exists.
fn stage_shared_files() -> Result<()> {
    let root = process::workspace_root();
    // Where the package metadata's asset glob looks, whatever CARGO_TARGET_DIR says.
    let stage = root.join("target").join("dist").join("share");
    let io = |what: &str, path: &Path, err: std::io::Error| {
        Failure::new(format!("{what} {}: {err}", path.display()))
    };
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(|e| io("cannot clear", &stage, e))?;
    }
    std::fs::create_dir_all(&stage).map_err(|e| io("cannot create", &stage, e))?;
    let mut shipped = Vec::new();
    for dir in SHARED_DIRS {
        let source = root.join("config").join(dir);
        if source.is_dir() {
            copy_tree(&source, &stage.join(dir)).map_err(|e| io("cannot copy", &source, e))?;
            shipped.push(format!("{dir}/"));
        }
    }
    let readme = format!(
        "redcap-monitor: files for the monitoring stack around the daemon.\n\
         Shipped here: {}.\n\
         grafana/: dashboards and provisioning for Grafana; prometheus/: alert rules;\n\
         systemd-drop-ins/: optional drop-ins for the unit (each says when it fits).\n\
         See /usr/share/doc/redcap-monitor/README.md.\n",
        if shipped.is_empty() {
            "nothing yet".to_owned()
        } else {
            shipped.join(", ")
        }
    );
    let path = stage.join("README");
    std::fs::write(&path, readme).map_err(|e| io("cannot write", &path, e))
}

fn copy_tree(from: &Path, to: &PathBuf) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
