//! redcap-monitor: watches REDCap API calls per token and enforces the institution's API policy.
//!
//! The house has four floors, and imports only run down them: [`shared`] (the vocabulary),
//! [`stages`] (the sans-IO pipeline: decode → reassembly → http → redcap → health and policy),
//! [`edges`] (capture, records, store, alerts, hooks, telemetry, the admin API: everything that
//! does I/O) and [`commands`] (the configuration that assembles every component's section, and
//! the `check-config`, `analyze` and `run` commands). Within a floor, modules run in the flow
//! order their `mod.rs` describes; the architecture test (`tests/architecture.rs`) writes that
//! order down once and holds the code to it.

// The public surface is what the binary, the integration tests, the tests crate and the fuzz
// targets use; a `pub` item none of them can reach is a `pub(crate)` one mislabelled.
#![warn(unreachable_pub)]

pub mod commands;
pub mod edges;
/// What the fuzz targets (`fuzz/`) reach that the crate keeps to itself.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod shared;
pub mod stages;

/// The kernel programs, built by build.rs through aya-build.
pub static KERNEL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor-ebpf"));
