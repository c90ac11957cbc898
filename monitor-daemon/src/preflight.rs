//! What `redcap-monitor run` will need from this host, checked without running it: the
//! interfaces exist, the record, key and store paths can be written, secret files can be read and
//! hook programs can be run.
//!
//! Findings are warnings, not errors: `check-config` may check a file meant for another host or
//! run before a directory is created; `run` itself stops, naming the key, on what it cannot do
//! without. Reads only metadata; creates, opens for writing and changes nothing.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::capture::kernel::interface_exists;
use crate::config::{Config, HookKind, Problem};

/// Everything on this host that would stop or hamper `run` with `config`, as the user running
/// this (under systemd, `ExecReload=` runs as the service's user, so its rights are checked).
pub fn warnings(config: &Config) -> Vec<Problem> {
    let mut found = Vec::new();
    let mut warn = |key: String, message: String| found.push(Problem::new(key, message));
    let capture = &config.capture;
    if capture.interfaces.is_empty() {
        warn(
            "capture.interfaces".into(),
            "is empty: `run` needs at least one interface to watch, e.g. [\"eth0\"]".into(),
        );
    }
    for (i, name) in capture.interfaces.iter().enumerate() {
        if !interface_exists(name) {
            warn(
                format!("capture.interfaces[{i}]"),
                format!("no network interface named {name:?} here (list them with `ip link`)"),
            );
        }
    }
    let output = &config.output;
    for (key, path) in [
        ("output.calls", &output.calls),
        ("output.violations", &output.violations),
        ("output.decisions", &output.decisions),
        ("output.stats", &output.stats),
    ] {
        if let Some(path) = path.as_deref().filter(|p| *p != Path::new("-"))
            && let Err(why) = can_create_or_write(path, false)
        {
            warn(key.into(), why);
        }
    }
    if let Err(why) = can_create_or_write(&config.site.key_file, false) {
        warn("site.key_file".into(), why);
    }
    if let Err(why) = can_create_or_write(&config.store.path, true) {
        warn("store.path".into(), why);
    }
    for (i, sink) in config.alerts.sinks.iter().enumerate() {
        if let Some(path) = &sink.secret_file
            && let Err(err) = std::fs::File::open(path)
        {
            warn(
                format!("alerts.sinks[{i}].secret_file"),
                format!("{}: {err}", path.display()),
            );
        }
    }
    for (list, hooks) in [
        ("suspend", &config.hooks.suspend),
        ("lift", &config.hooks.lift),
    ] {
        for (i, hook) in hooks.iter().enumerate() {
            if let (HookKind::Exec, Some(program)) = (hook.kind, &hook.program)
                && !accessible(program, libc::X_OK)
            {
                warn(
                    format!("hooks.{list}[{i}].program"),
                    format!("{} is missing or not executable", program.display()),
                );
            }
        }
    }
    found
}

/// Whether `path` can be written (if it exists) or created (in its directory; with
/// `parents_created`, in the nearest existing ancestor, as the store creates its directory).
fn can_create_or_write(path: &Path, parents_created: bool) -> Result<(), String> {
    if path.exists() {
        return if accessible(path, libc::W_OK) {
            Ok(())
        } else {
            Err(format!("{} exists but cannot be written", path.display()))
        };
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = if parents_created {
        parent.ancestors().find(|p| p.exists()).unwrap_or(parent)
    } else if parent.is_dir() {
        parent
    } else {
        return Err(format!(
            "the directory {} does not exist: create it (under systemd, \
             StateDirectory=/LogsDirectory= do)",
            parent.display()
        ));
    };
    if accessible(dir, libc::W_OK) {
        Ok(())
    } else {
        Err(format!(
            "{} cannot be created: {} is not writable",
            path.display(),
            dir.display()
        ))
    }
}

/// `access(2)`: the kernel's answer, read-only mounts (`ProtectSystem=`) included.
fn accessible(path: &Path, mode: libc::c_int) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::access(path.as_ptr(), mode) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(config: &str) -> Vec<String> {
        let config = Config::parse(config, Path::new("t.toml")).unwrap();
        warnings(&config).into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn what_run_would_trip_over_is_named_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let found = keys(&format!(
            "[site]\nkey_file = \"{d}/key\"\n\
             [store]\npath = \"{d}/new/state.redb\"\n\
             [capture]\ninterfaces = [\"lo\", \"rcm-absent9\"]\n\
             [output]\ncalls = \"{d}/calls.jsonl\"\nviolations = \"{d}/nodir/v.jsonl\"\n\
             stats = \"-\"\n\
             [[hooks.suspend]]\nname = \"h\"\nkind = \"exec\"\nprogram = \"{d}/nothere\"\n"
        ));
        assert_eq!(
            found,
            [
                "capture.interfaces[1]",
                "output.violations",
                "hooks.suspend[0].program"
            ]
        );
    }

    #[test]
    fn an_empty_interface_list_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let found = keys(&format!(
            "[site]\nkey_file = \"{d}/key\"\n[store]\npath = \"{d}/s.redb\"\n"
        ));
        assert_eq!(found, ["capture.interfaces"]);
    }
}
