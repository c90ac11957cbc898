//! The vocabulary every part speaks: timestamps, flows and segments, calls ([`model`]), token
//! fingerprints ([`token`]), the words configuration sections are written in ([`settings`]), and
//! the one rule for reading a file that holds a secret ([`secret_file`]).
//! Nothing here imports anything else of the crate.

pub mod model;
pub(crate) mod secret_file;
pub mod settings;
pub mod token;
