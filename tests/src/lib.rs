//! End-to-end harness for redcap-monitor: a REDCap simulator, real clients (PyCap, curl), a
//! tcpdump capture, the daemon's `analyze`/`fingerprint` commands, and a pcap synthesiser.
//! Each piece is a small handle that cleans up on drop; tests combine them in a few lines.
//! This library never looks inside the daemon: it speaks only the CLI and JSONL contract (the
//! `live-overhead` bench binary alone links the daemon's library, to drive the probe itself).

pub mod bench;
pub mod browser;
pub mod capture;
pub mod clients;
pub mod cluster;
pub mod cpu;
pub mod daemon;
pub mod forged;
pub mod mariadb;
pub mod netns;
pub mod php;
pub mod rawhttp;
pub mod redis;
pub mod session;
pub mod sim;
pub mod synth;
pub mod unit;
pub mod web;
pub mod wrk;

use std::path::PathBuf;

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The Python helpers (`redcap_sim.py`, `pycap_client.py`).
pub fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// Tests that capture packets, load eBPF programs or create network namespaces need root.
/// Returns false (skip) only when the operator said so with `REDCAP_MONITOR_SKIP_ROOT_TESTS=1`;
/// otherwise a non-root run fails loudly.
pub fn require_root(test: &str) -> bool {
    if test_support::is_root() {
        return true;
    }
    if std::env::var("REDCAP_MONITOR_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("{test}: skipped (not root and REDCAP_MONITOR_SKIP_ROOT_TESTS=1)");
        return false;
    }
    panic!(
        "{test} captures packets, loads eBPF programs or creates network namespaces and needs \
         root; run as root (sudo -E cargo test ...) or set REDCAP_MONITOR_SKIP_ROOT_TESTS=1 to skip"
    );
}

/// Written as an admin would (mode 0600): the one helper all the workspace's tests share.
pub use test_support::write_secret;
