//! The daemon as `config/systemd/redcap-monitor.service` runs it, without systemd: the unit's
//! settings read from the unit file, the service user, and one command that starts a program
//! the way the unit would (as that user with exactly the unit's capability sets and
//! no supplementary group, `NoNewPrivileges=`, `LimitCORE=0`, in a private mount namespace where
//! `/proc` is mounted `subset=pid,hidepid=invisible` (`ProcSubset=pid`, `ProtectProc=invisible`),
//! `/sys` and the whole system read-only (`ProtectKernelTunables=`, `ProtectSystem=strict`) but
//! for the directories the unit makes writable). Not reproduced: the syscall filter,
//! `PrivateTmp=`, `PrivateDevices=` and the rest of the hardening that does not bear on what the
//! tests look at (`tests/tests/service.rs` checks the unit itself with `systemd-analyze`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The unit file.
pub fn unit_path() -> PathBuf {
    crate::workspace_root().join("config/systemd/redcap-monitor.service")
}

/// The value of `key=` in the unit (the last one, as systemd reads it).
pub fn unit_setting(key: &str) -> Option<String> {
    let unit = std::fs::read_to_string(unit_path()).expect("the unit file");
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .next_back()
        .map(str::to_owned)
}

/// The capabilities a unit setting (`AmbientCapabilities`, `CapabilityBoundingSet`) lists,
/// lower case without `CAP_`, as setpriv takes them.
pub fn unit_capabilities(setting: &str) -> Vec<String> {
    capabilities_in(
        &std::fs::read_to_string(unit_path()).expect("the unit file"),
        setting,
    )
}

/// [`unit_capabilities`] of a unit file or drop-in's `text`: its last non-empty `setting=` line
/// (an empty one resets the list, as systemd reads it).
pub fn capabilities_in(text: &str, setting: &str) -> Vec<String> {
    let prefix = format!("{setting}=");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("no {setting}= in:\n{text}"))
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// Makes `dir` the External Module's directory the way the unit's `ExecStartPre=-+` line makes
/// `/run/redcap-monitor/redcap-module` before each start (as root: the service user's, the web
/// server's group's, mode 2750), with `dir` and the service user in place of the unit's.
pub fn make_module_directory(dir: &Path) {
    let unit = std::fs::read_to_string(unit_path()).expect("the unit file");
    assert!(
        !unit.contains("SupplementaryGroups="),
        "the daemon is not to be in the web server's group: a member reads its files"
    );
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre=-+"))
        .expect("the unit makes the module's directory as root before the daemon starts");
    let owner = service_user().name;
    let words: Vec<String> = line
        .split_whitespace()
        .map(|word| match word {
            "/run/redcap-monitor/redcap-module" => dir.display().to_string(),
            "redcap-monitor" => owner.clone(),
            word => word.to_owned(),
        })
        .collect();
    let made = Command::new(&words[0]).args(&words[1..]).status();
    assert!(
        made.is_ok_and(|s| s.success()),
        "the unit's line failed: {words:?}"
    );
}

/// The service user: `redcap-monitor` where the package created it, else `nobody` (the tests
/// create no account on the machine).
#[derive(Clone, Debug)]
pub struct ServiceUser {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
}

pub fn service_user() -> ServiceUser {
    let id = |flag: &str, name: &str| {
        Command::new("id")
            .args([flag, name])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
    };
    for name in ["redcap-monitor", "nobody"] {
        if let (Some(uid), Some(gid)) = (id("-u", name), id("-g", name)) {
            return ServiceUser {
                uid,
                gid,
                name: name.to_owned(),
            };
        }
    }
    panic!("neither redcap-monitor nor nobody exists");
}

/// The capability sets to give: the unit's, or another list (to show one is needed).
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// Ambient and inheritable.
    pub ambient: Vec<String>,
    pub bounding: Vec<String>,
}

impl Capabilities {
    /// `AmbientCapabilities=` and `CapabilityBoundingSet=` of the unit, plus `extra` in both
    /// (a drop-in's, e.g. `sys_ptrace`).
    pub fn of_unit(extra: &[&str]) -> Capabilities {
        let with_extra = |mut caps: Vec<String>| {
            caps.extend(extra.iter().map(|c| c.to_string()));
            caps
        };
        Capabilities {
            ambient: with_extra(unit_capabilities("AmbientCapabilities")),
            bounding: with_extra(unit_capabilities("CapabilityBoundingSet")),
        }
    }

    /// Exactly `caps` in every set.
    pub fn only(caps: &[String]) -> Capabilities {
        Capabilities {
            ambient: caps.to_vec(),
            bounding: caps.to_vec(),
        }
    }
}

/// setpriv's arguments for the service user with no supplementary group and `caps`,
/// and `NoNewPrivileges=` (ambient capabilities survive the exec of a plain binary).
pub fn setpriv_args(user: &ServiceUser, caps: &Capabilities) -> Vec<String> {
    let list = |caps: &[String]| {
        std::iter::once("-all".to_owned())
            .chain(caps.iter().map(|c| format!("+{c}")))
            .collect::<Vec<_>>()
            .join(",")
    };
    vec![
        format!("--reuid={}", user.uid),
        format!("--regid={}", user.gid),
        // The unit has no SupplementaryGroups= (see `make_module_directory`).
        "--clear-groups".to_owned(),
        format!("--inh-caps={}", list(&caps.ambient)),
        format!("--ambient-caps={}", list(&caps.ambient)),
        format!("--bounding-set={}", list(&caps.bounding)),
        "--no-new-privs".to_owned(),
    ]
}

/// Mounts the unit's view of the system in the (private) mount namespace it runs in, then
/// execs what follows `--`. Its arguments before `--` are the writable directories as
/// `SOURCE=TARGET` (the same path twice for a directory that stays where it is); a target that
/// does not exist (`/var/lib/redcap-monitor` on a machine without the package) appears on a
/// tmpfs over its parent, which holds nothing else then.
const SANDBOX: &str = r#"set -eu
mount -t proc -o subset=pid,hidepid=invisible,nosuid,nodev,noexec proc /proc
mount --bind /sys /sys
mount -o remount,bind,ro /sys
while [ "$1" != -- ]; do
    src=${1%%=*}
    dst=${1#*=}
    if [ ! -d "$dst" ]; then
        mount -t tmpfs -o mode=0755 tmpfs "$(dirname "$dst")"
        mkdir "$dst"
    fi
    mount --bind "$src" "$dst"
    shift
done
shift
mount -o remount,bind,ro /
exec "$@"
"#;

/// `program args` as the unit runs it (see the module's doc), in network namespace `netns` when
/// given, with `writable` (`(source, target)`: the source directory appears at the target, the
/// only places it may write). Every step execs the next: the child's pid is the program's.
pub fn run_as_the_unit(
    netns: Option<&str>,
    writable: &[(&Path, &Path)],
    caps: &Capabilities,
    program: &Path,
    args: &[OsString],
) -> Command {
    let mut command = crate::netns::command_in(netns, "unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c", SANDBOX])
        .arg("sandbox");
    for (source, target) in writable {
        let mut pair = OsString::from(source.as_os_str());
        pair.push("=");
        pair.push(target.as_os_str());
        command.arg(pair);
    }
    command
        .arg("--")
        .args(["prlimit", "--core=0", "setpriv"])
        .args(setpriv_args(&service_user(), caps))
        .arg(program)
        .args(args);
    command
}
