//! The configuration (`config.rs`): TOML text to `Config` with every check, and a valid
//! configuration must build the pipeline and compare with itself as needing no restart.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use redcap_monitor::commands::config::Config;
use redcap_monitor::stages::pipeline::Pipeline;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text, Path::new("fuzz.toml")) else {
        return;
    };
    assert!(config.restart_needed(&config).is_empty());
    // A configuration that passed its checks builds the pipeline (building cannot fail: every
    // value it needs was checked as it was read).
    let _pipeline = Pipeline::new(config.pipeline(), monitor_fuzz::site_key());
});
