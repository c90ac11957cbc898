//! Spawning programs and finding paths. Every child runs through here so that a failure always
//! names the command line that failed and its exit status. Knows nothing about any one task.

use std::{
    env,
    ffi::OsString,
    io,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use crate::{Failure, Result};

/// The workspace's root directory (the parent of `xtask/`).
pub(crate) fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ sits inside the workspace")
}

/// `path` relative to the workspace root when it lies inside it, for messages.
pub(crate) fn shown(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Where cargo puts its output: `$CARGO_TARGET_DIR` if set, else `<root>/target`.
pub(crate) fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The cargo that runs us (`$CARGO`), else the one on PATH, working in the workspace root.
pub(crate) fn cargo() -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(program);
    command.current_dir(workspace_root());
    command
}

/// Runs `command` with our stdin/stdout/stderr; fails unless it exits with status 0.
pub(crate) fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .map_err(|err| spawn_failure(command, &err))?;
    if status.success() {
        Ok(())
    } else {
        Err(
            Failure::new(format!("`{}` failed ({status})", describe(command)))
                .with_exit_status(status.code()),
        )
    }
}

/// Runs `command` and collects its output; fails only if it cannot be started.
pub(crate) fn output(command: &mut Command) -> Result<Output> {
    command.stdin(Stdio::null());
    command.output().map_err(|err| spawn_failure(command, &err))
}

/// Whether `command` starts and exits with status 0; its output is discarded.
pub(crate) fn succeeds(command: &mut Command) -> bool {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `program arg arg ...`, for messages.
pub(crate) fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(
        command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned()),
    );
    words.join(" ")
}

fn spawn_failure(command: &Command, err: &io::Error) -> Failure {
    let program = command.get_program().to_string_lossy();
    if err.kind() == io::ErrorKind::NotFound {
        Failure::new(format!(
            "`{program}` is not installed or not on PATH (needed for `{}`); \
             `cargo xtask setup` installs the tools this project uses",
            describe(command)
        ))
    } else {
        Failure::new(format!("cannot start `{}`: {err}", describe(command)))
    }
}

/// The first executable called `name` on PATH.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// Whether we run as root (effective uid 0), read from /proc so that xtask needs no libc crate.
pub(crate) fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        // "Uid:\treal\teffective\tsaved\tfilesystem"
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|effective| effective == "0")
}

/// `$CARGO_HOME/bin` (default `~/.cargo/bin`), where rustup's proxies and `cargo install` live.
pub(crate) fn cargo_bin_dir() -> Option<PathBuf> {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))?;
    Some(home.join("bin"))
}

/// Puts `$CARGO_HOME/bin` on our PATH (and so our children's) when it is missing: a fresh
/// `cargo install bpf-linker` lands there, and aya-build looks for bpf-linker on PATH.
pub(crate) fn put_cargo_bin_on_path() {
    let Some(bin) = cargo_bin_dir() else { return };
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| dir == bin) {
        return;
    }
    let mut dirs = vec![bin];
    dirs.extend(env::split_paths(&path));
    let Ok(joined) = env::join_paths(dirs) else {
        return;
    };
    set_path(joined);
}

fn set_path(value: OsString) {
    // SAFETY: called first thing in main, before xtask starts any thread, so nothing can read
    // the environment concurrently.
    unsafe { env::set_var("PATH", value) };
}
