//! The daemon as `config/systemd/redcap-monitor.service` runs it, without systemd: the unit's
//! settings read from the unit file (and the shipped drop-ins a test names), the service user,
//! and one command that starts a program the way the unit would (as that user with exactly the
//! unit's capability sets and no supplementary group, `NoNewPrivileges=`, `LimitCORE=0`, its
//! `SystemCallFilter=` and `RestrictAddressFamilies=` as the seccomp filter systemd would install
//! (`unit-seccomp`, with systemd's own syscall groups), in a private mount namespace where
//! `/proc` is mounted `subset=pid,hidepid=invisible` (`ProcSubset=pid`, `ProtectProc=invisible`),
//! `/sys` and the whole system read-only (`ProtectKernelTunables=`, `ProtectSystem=strict`) but
//! for the directories the unit makes writable). Not reproduced: `PrivateTmp=`,
//! `PrivateDevices=` and the hardening that does not bear on what the tests look at
//! (`tests/tests/service.rs` checks the unit itself with `systemd-analyze`).

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
    capabilities(&[], setting)
}

/// [`unit_capabilities`] with the shipped `drop_ins` merged.
fn capabilities(drop_ins: &[&str], setting: &str) -> Vec<String> {
    merged_list(drop_ins, setting)
        .iter()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

/// A shipped drop-in (`config/systemd-drop-ins/NAME`).
pub fn drop_in_path(name: &str) -> PathBuf {
    crate::workspace_root()
        .join("config/systemd-drop-ins")
        .join(name)
}

/// A list setting (`AmbientCapabilities=`, `RestrictAddressFamilies=`, ...) as systemd merges
/// it over the unit and then `drop_ins` in order: each line adds to the list, an empty one
/// empties it.
pub fn merged_list(drop_ins: &[&str], setting: &str) -> Vec<String> {
    let mut list: Vec<String> = Vec::new();
    for value in setting_lines(drop_ins, setting) {
        assert!(
            !value.starts_with('~'),
            "{setting}={value}: deny lists are not read here"
        );
        for item in value.split_whitespace() {
            if !list.iter().any(|i| i == item) {
                list.push(item.to_owned());
            }
        }
    }
    list
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

/// A file of `/etc/redcap-monitor` as the package and the README set it up: root's, readable by
/// the service's group only (`chown root:redcap-monitor`, `chmod 0640`).
pub fn write_config_secret(path: &Path, text: &str, user: &ServiceUser) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    crate::write_secret(path, text);
    std::os::unix::fs::chown(path, Some(0), Some(user.gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o640))
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

/// What the unit grants the daemon: capability sets, the socket families and the system calls
/// it may use.
#[derive(Clone, Debug)]
pub struct Capabilities {
    /// Ambient and inheritable.
    pub ambient: Vec<String>,
    pub bounding: Vec<String>,
    /// `RestrictAddressFamilies=`: `AF_UNIX`, `AF_INET`, ...
    pub families: Vec<String>,
    /// `SystemCallFilter=` lines, in order (`@system-service bpf`, `~@resources`).
    pub syscall_filter: Vec<String>,
}

impl Capabilities {
    /// The unit's, with the shipped `drop_ins` (`libpcap.conf`, ...) merged as systemd does.
    pub fn of_unit(drop_ins: &[&str]) -> Capabilities {
        Capabilities {
            ambient: capabilities(drop_ins, "AmbientCapabilities"),
            bounding: capabilities(drop_ins, "CapabilityBoundingSet"),
            families: merged_list(drop_ins, "RestrictAddressFamilies"),
            syscall_filter: setting_lines(drop_ins, "SystemCallFilter"),
        }
    }

    /// These with `extra` capabilities added to both sets (a drop-in the README describes,
    /// e.g. `sys_ptrace`).
    pub fn with_extra(mut self, extra: &[&str]) -> Capabilities {
        for cap in extra {
            self.ambient.push(cap.to_string());
            self.bounding.push(cap.to_string());
        }
        self
    }

    /// These socket families with exactly `caps` in every capability set (to show one is needed).
    pub fn only(self, caps: &[String]) -> Capabilities {
        Capabilities {
            ambient: caps.to_vec(),
            bounding: caps.to_vec(),
            ..self
        }
    }

    /// `unit-seccomp` and its arguments, to put just before the program it confines: the
    /// system calls `SystemCallFilter=` allows, with `@default` (which systemd always allows),
    /// as numbers of this machine's architecture; those systemd does not know at all, which it
    /// answers with ENOSYS; the socket families.
    pub fn seccomp_command(&self) -> Vec<OsString> {
        let groups = syscall_groups();
        let numbers = syscall_numbers();
        let expand = |items: &str| -> Vec<String> {
            let mut names = Vec::new();
            for item in items.split_whitespace() {
                expand_group(&groups, item, &mut names);
            }
            names
        };
        let mut allowed: Vec<String> = expand("@default");
        for line in &self.syscall_filter {
            match line.strip_prefix('~') {
                Some(denied) => {
                    let denied = expand(denied);
                    allowed.retain(|name| !denied.contains(name));
                }
                None => allowed.extend(expand(line)),
            }
        }
        let known = expand("@known");
        let list = |numbers: Vec<u32>| {
            numbers
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut allowed_numbers: Vec<u32> = allowed
            .iter()
            .filter_map(|name| numbers.get(name).copied())
            .collect();
        allowed_numbers.sort_unstable();
        allowed_numbers.dedup();
        let unknown: Vec<u32> = numbers
            .iter()
            .filter(|(name, _)| !known.contains(name))
            .map(|(_, nr)| *nr)
            .collect();
        vec![
            own_binary("unit-seccomp").into(),
            "--families".into(),
            self.families.join(",").into(),
            "--allow".into(),
            list(allowed_numbers).into(),
            "--unknown".into(),
            list(unknown).into(),
            "--".into(),
        ]
    }
}

/// Every value of `setting=` over the unit and `drop_ins`, in order; an empty one drops the
/// lines before it, as systemd reads it.
fn setting_lines(drop_ins: &[&str], setting: &str) -> Vec<String> {
    let prefix = format!("{setting}=");
    let mut files = vec![std::fs::read_to_string(unit_path()).expect("the unit file")];
    files.extend(drop_ins.iter().map(|name| {
        std::fs::read_to_string(drop_in_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }));
    let mut lines: Vec<String> = Vec::new();
    for value in files
        .iter()
        .flat_map(|f| f.lines())
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
    {
        if value.trim().is_empty() {
            lines.clear();
        } else {
            lines.push(value.trim().to_owned());
        }
    }
    lines
}

/// systemd's syscall groups (`@default`, `@system-service`, `@known`, ...) as this machine's
/// `systemd-analyze syscall-filter` lists them: a group's members are names or other groups.
fn syscall_groups() -> std::collections::HashMap<String, Vec<String>> {
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager"])
        .output()
        .expect("systemd-analyze (package systemd, installed by `cargo xtask setup`)");
    let mut groups = std::collections::HashMap::new();
    let mut current: Option<String> = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(group) = line.strip_prefix('@') {
            current = Some(format!("@{}", group.trim()));
            groups.insert(format!("@{}", group.trim()), Vec::new());
        } else if !line.starts_with(' ') {
            current = None;
        } else if let Some(group) = &current {
            let member = line.trim();
            if !member.is_empty()
                && !member.starts_with('#')
                && let Some(members) = groups.get_mut(group)
            {
                members.push(member.to_owned());
            }
        }
    }
    assert!(
        groups.contains_key("@system-service") && groups.contains_key("@known"),
        "systemd-analyze syscall-filter listed no groups"
    );
    groups
}

fn expand_group(
    groups: &std::collections::HashMap<String, Vec<String>>,
    item: &str,
    into: &mut Vec<String>,
) {
    if item.starts_with('@') {
        let members = groups
            .get(item)
            .unwrap_or_else(|| panic!("systemd knows no syscall group {item}"));
        for member in members {
            expand_group(groups, member, into);
        }
    } else if !into.iter().any(|n| n == item) {
        into.push(item.to_owned());
    }
}

/// This architecture's system call numbers by name, from the kernel headers
/// (`linux-libc-dev`, which the C compiler brings).
fn syscall_numbers() -> std::collections::BTreeMap<String, u32> {
    let header = if cfg!(target_arch = "x86_64") {
        "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
    } else {
        "/usr/include/asm-generic/unistd.h"
    };
    let text = std::fs::read_to_string(header)
        .unwrap_or_else(|e| panic!("{header}: {e} (apt-get install linux-libc-dev)"));
    text.lines()
        .filter_map(|l| l.strip_prefix("#define __NR_"))
        .filter_map(|l| {
            let (name, nr) = l.split_once(char::is_whitespace)?;
            Some((name.to_owned(), nr.trim().parse().ok()?))
        })
        .collect()
}

/// A binary of this crate (`unit-seccomp`), beside the test binary that asks for it.
fn own_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the running test's path");
    let mut dir = exe.parent().expect("a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the tests crate's binaries (cargo build -p monitor-tests --bins)",
        path.display()
    );
    path
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

/// Whether process `pid` runs confined as [`run_as_the_unit`] confines it: as the service user,
/// and with `/proc` as the unit shows it. `Err` says what is not so.
pub fn check_confined(pid: u32) -> Result<(), String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next().map(str::to_owned));
    if uid != Some(service_user().uid.to_string()) {
        return Err(format!(
            "pid {pid} does not run as the service user:\n{status}"
        ));
    }
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    if !mounts.lines().any(|l| {
        l.contains(" /proc ") && l.contains("hidepid=invisible") && l.contains("subset=pid")
    }) {
        return Err(format!(
            "pid {pid} does not see /proc as the unit shows it:\n{mounts}"
        ));
    }
    Ok(())
}

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
    traced_as_the_unit(netns, writable, caps, &[], program, args)
}

/// [`run_as_the_unit`] with `tracer` (`strace -f -o FILE`) between the confinement and the
/// seccomp filter: a tracer needs `ptrace`, which the unit's filter refuses, so it runs
/// outside it and watches the program inside it. The child's pid is the tracer's.
pub fn traced_as_the_unit(
    netns: Option<&str>,
    writable: &[(&Path, &Path)],
    caps: &Capabilities,
    tracer: &[OsString],
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
        .args(tracer)
        .args(caps.seccomp_command())
        .arg(program)
        .args(args);
    command
}
