//! The vocabulary every part speaks: timestamps, flows and segments, calls ([`model`]), token
//! fingerprints ([`token`]), and the words configuration sections are written in ([`settings`]).
//! Nothing here imports anything else of the crate.

pub mod model;
pub mod settings;
pub mod token;
