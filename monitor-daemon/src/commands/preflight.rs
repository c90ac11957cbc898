//! What `redcap-monitor run` will need from this host, checked without running it: the
//! interfaces exist, HTTPS on the watched ports can be seen, the record, key, store and REDCap
//! module list paths can be written, secret files (alert sinks, the token directory's) can be
//! read and hook programs can be run.
//!
//! Findings are warnings, not errors: `check-config` may check a file meant for another host or
//! run before a directory is created; `run` itself stops, naming the key, on what it cannot do
//! without. Reads only metadata; creates, opens for writing and changes nothing.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::commands::config::Config;
use crate::edges::capture::kernel::interface_exists;
use crate::edges::capture::tls::standard_libraries;
use crate::edges::capture::{CaptureMode, TlsCapturePlan};
use crate::edges::hooks::HookKind;
use crate::shared::settings::Problem;

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
    https_warnings(config, &mut warn);
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
    let module = &config.redcap_module;
    if module.enabled {
        let list = module.dir.join(crate::edges::actions::publish::LIST_FILE);
        if let Err(why) = can_create_or_write(&list, true) {
            warn("redcap_module.dir".into(), why);
        }
        match crate::edges::actions::publish::group_id(&module.group) {
            None if !module.group.is_empty() => warn(
                "redcap_module.group".into(),
                format!(
                    "no group {:?} here: name the web server's group (www-data on Debian)",
                    module.group
                ),
            ),
            Some(gid) => {
                // SAFETY: geteuid cannot fail.
                let root = unsafe { libc::geteuid() } == 0;
                if let Ok(dir) = std::fs::metadata(&module.dir)
                    && !root
                    && !crate::edges::actions::publish::handed_to(&dir, gid)
                {
                    warn(
                        "redcap_module.dir".into(),
                        format!(
                            "{} is not group {:?}'s with mode 2750 (set-group-ID), and unless this \
                             user is in that group only root may make it so: `install -d -o <daemon's user> -g {} -m 2750 {}` \
                             as root (the shipped unit's ExecStartPre=+ line does)",
                            module.dir.display(),
                            module.group,
                            module.group,
                            module.dir.display()
                        ),
                    );
                }
            }
            None => {}
        }
    }
    for (i, sink) in config.alerts.sinks.iter().enumerate() {
        for (field, file) in [
            ("secret_file", &sink.secret_file),
            ("credentials_file", &sink.credentials_file),
        ] {
            if let Some(path) = file
                && let Err(err) = std::fs::File::open(path)
            {
                warn(
                    format!("alerts.sinks[{i}].{field}"),
                    format!("{}: {err}", path.display()),
                );
            }
        }
    }
    // The directory's files only: the database itself is not contacted here (its state shows
    // in `status` once `run` has tried it).
    let directory = &config.directory;
    for (key, file) in [
        ("directory.password_file", &directory.password_file),
        ("directory.tls_ca_file", &directory.tls_ca_file),
        ("directory.csv_file", &directory.csv_file),
    ] {
        if let Some(path) = file
            && directory.source != crate::edges::directory::SourceKind::None
            && let Err(err) = std::fs::File::open(path)
        {
            warn(
                key.into(),
                format!(
                    "{}: {err}; the token directory stays unavailable until it can be read",
                    path.display()
                ),
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

/// Configurations under which HTTPS calls would go unseen: capture that cannot decrypt while an
/// HTTPS port is watched, or no OpenSSL library for the uprobes to sit on.
fn https_warnings(config: &Config, warn: &mut impl FnMut(String, String)) {
    let capture = &config.capture;
    match (capture.tls_plan(), capture.https_port()) {
        (TlsCapturePlan::Off, Some(port)) if capture.mode == CaptureMode::Pcap => warn(
            "capture.mode".into(),
            format!(
                "is \"pcap\" while capture.ports watches {port}: libpcap sees only ciphertext \
                 there, so HTTPS API calls are NOT seen; use \"auto\" (the eBPF probe plus the \
                 OpenSSL uprobes, capture.tls)"
            ),
        ),
        (TlsCapturePlan::Off, Some(port)) => warn(
            "capture.tls.enabled".into(),
            format!(
                "is false while capture.ports watches {port}: HTTPS API calls are encrypted \
                 there and NOT seen; set it to \"auto\" (the default) to read them at the web \
                 server's OpenSSL"
            ),
        ),
        (TlsCapturePlan::Off, None) => {}
        (TlsCapturePlan::IfPossible | TlsCapturePlan::Required, _) => {
            let tls = &capture.tls;
            for (i, path) in tls.libraries.iter().enumerate() {
                if let Err(err) = std::fs::File::open(path) {
                    warn(
                        format!("capture.tls.libraries[{i}]"),
                        format!(
                            "{}: {err}; `run` stops on it (give the libssl the web server \
                             loads: `grep libssl /proc/PID/maps`)",
                            path.display()
                        ),
                    );
                }
            }
            if !has_effective_capability(CAP_SYS_ADMIN) {
                warn(
                    "capture.tls.enabled".into(),
                    "HTTPS capture attaches uprobes, which current kernels (Linux 6.15.7+, and \
                     stable kernels fixed for CVE-2025-38466) allow only with CAP_SYS_ADMIN, and \
                     this user lacks it: HTTPS is NOT seen. Run as root or grant CAP_SYS_ADMIN \
                     (the shipped unit does), or set capture.tls.enabled = false"
                        .into(),
                );
            }
            if tls.libraries.is_empty() && standard_libraries().is_empty() {
                warn(
                    "capture.tls.libraries".into(),
                    "no OpenSSL libssl in the standard locations (the dynamic loader's cache, \
                     /usr/lib/ARCH-linux-gnu, /usr/lib64, /lib, ...): HTTPS is seen only once \
                     a configured process is found mapping one, which needs its \
                     /proc/PID/maps readable (root or CAP_SYS_PTRACE); list the web server's \
                     libssl here (`grep libssl /proc/PID/maps`)"
                        .into(),
                );
            }
        }
    }
}

/// `CAP_SYS_ADMIN`'s number in the capability sets.
const CAP_SYS_ADMIN: u32 = 21;

/// Whether this process holds `capability` in its effective set (`CapEff:` of
/// `/proc/self/status`; under systemd, what `AmbientCapabilities=` gave).
fn has_effective_capability(capability: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective_capabilities(&status))
        .is_some_and(|set| set & (1 << capability) != 0)
}

/// The `CapEff:` mask of a `/proc/PID/status` text.
fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
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
    fn configurations_that_cannot_see_https_on_a_watched_port_say_what_to_change() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let base = format!(
            "[site]\nkey_file = \"{d}/key\"\n[store]\npath = \"{d}/s.redb\"\n\
             [capture]\ninterfaces = [\"lo\"]\n"
        );
        let warned = |extra: &str| {
            let config = Config::parse(&format!("{base}{extra}"), Path::new("t.toml")).unwrap();
            warnings(&config)
                .into_iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect::<Vec<_>>()
        };
        let pcap = warned("mode = \"pcap\"\n");
        assert!(
            pcap.len() == 1 && pcap[0].starts_with("capture.mode") && pcap[0].contains("443"),
            "{pcap:?}"
        );
        let off = warned("[capture.tls]\nenabled = false\n");
        assert!(
            off.len() == 1 && off[0].starts_with("capture.tls.enabled") && off[0].contains("auto"),
            "{off:?}"
        );
        // Plain HTTP only: nothing to say.
        assert!(warned("ports = [80]\n[capture.tls]\nenabled = false\n").is_empty());
        assert!(warned("mode = \"pcap\"\nports = [80, 8080]\n").is_empty());
        let missing = warned(&format!(
            "[capture.tls]\nlibraries = [\"{d}/libssl.so.3\"]\n"
        ));
        assert!(
            missing.len() == 1 && missing[0].starts_with("capture.tls.libraries[0]"),
            "{missing:?}"
        );
        // The default: HTTPS through the uprobes, quiet where the distribution has a libssl and
        // the user may attach uprobes.
        let default = warned("");
        assert_eq!(
            default.is_empty(),
            !standard_libraries().is_empty() && has_effective_capability(CAP_SYS_ADMIN),
            "{default:?}"
        );
    }

    #[test]
    fn unreadable_directory_and_jira_files_are_named_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let found = keys(&format!(
            "[site]\nkey_file = \"{d}/key\"\n[store]\npath = \"{d}/s.redb\"\n\
             [capture]\ninterfaces = [\"lo\"]\nports = [80]\n[capture.tls]\nenabled = false\n\
             [[alerts.sinks]]\nname = \"j\"\nkind = \"jira\"\nurl = \"https://jira.example.org\"\n\
             project = \"OPS\"\ncredentials_file = \"{d}/jira.credentials\"\n\
             [directory]\nsource = \"mysql\"\npassword_file = \"{d}/db.password\"\n"
        ));
        assert_eq!(
            found,
            [
                "alerts.sinks[0].credentials_file",
                "directory.password_file"
            ]
        );
        // With no directory configured its files are not looked at.
        let off = keys(&format!(
            "[site]\nkey_file = \"{d}/key\"\n[store]\npath = \"{d}/s.redb\"\n\
             [capture]\ninterfaces = [\"lo\"]\nports = [80]\n[capture.tls]\nenabled = false\n\
             [directory]\ncsv_file = \"{d}/tokens.csv\"\n"
        ));
        assert!(off.is_empty(), "{off:?}");
    }

    #[test]
    fn the_effective_capabilities_are_read_from_the_status_text() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000000c000203000\n";
        let set = effective_capabilities(status).unwrap();
        assert!(set & (1 << CAP_SYS_ADMIN) != 0);
        assert!(set & (1 << 38) != 0, "CAP_PERFMON");
        assert!(set & (1 << 19) == 0, "CAP_SYS_PTRACE");
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
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
