//! The binary's commands, the top of the house: [`config`] assembles every component's section
//! from the TOML file, [`preflight`] checks a host against it (`check-config`), [`analyze`]
//! replays a capture, [`html`] builds the self-contained HTML page every report renders
//! through, [`certify`] judges a QA testing window into PASS or FAIL per token, [`report`]
//! makes the long-term lifecycle and usage reports and [`run`] watches live. Commands use edges
//! and stages; nothing imports
//! a command.

pub mod analyze;
pub mod certify;
pub mod config;
pub mod html;
pub mod preflight;
pub mod report;
pub mod run;
