//! What the tests of more than one crate need (the daemon's unit tests, its integration tests and
//! the end-to-end `tests/` crate): a webhook receiver, whether the tests run as root, secret files
//! written as an admin would. A dev-dependency only: nothing here reaches the daemon's binary.

pub mod receiver;

pub use receiver::{Receiver, Recorded, Reply};

/// Whether this process runs as root (the e2e tests that load eBPF programs or create network
/// namespaces need it).
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Writes a secret file (site key, webhook secret, API token, password) as an admin would:
/// mode 0600, since the daemon refuses one that others can read.
pub fn write_secret(path: &std::path::Path, contents: impl AsRef<[u8]>) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(contents.as_ref()).unwrap();
}
