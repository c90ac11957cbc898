//! redcap-monitor: watches REDCap API calls per token and enforces the institution's API policy.
//!
//! The pipeline runs one way: [`capture`] → [`reassembly`] → [`http`] → [`redcap`] → [`policy`],
//! with [`model`] and [`token`] as shared vocabulary and [`config`] turning TOML into each stage's
//! settings. [`pipeline`] wires the stages together; the binary's commands are the edges that do
//! I/O. Every stage is sans-IO: it is driven by the timestamps it is given.

pub mod actions;
pub mod alerts;
pub mod analyze;
pub mod api;
pub mod canary;
pub mod capture;
pub mod config;
pub mod coverage;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod health;
pub mod hooks;
pub mod http;
pub mod model;
pub mod notify;
pub mod output;
pub mod pipeline;
pub mod policy;
pub mod preflight;
pub mod reassembly;
pub mod redcap;
pub mod run;
pub mod store;
pub mod telemetry;
pub mod token;

/// The kernel programs, built by build.rs through aya-build.
pub static KERNEL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor-ebpf"));
