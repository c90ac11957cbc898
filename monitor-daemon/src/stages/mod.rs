//! The sans-IO pipeline, in flow order: [`decode`] (frames to TCP segments) → [`reassembly`]
//! (segments to byte streams) → [`http`] (streams to exchanges) → [`redcap`] (exchanges to API
//! calls) → [`health`] (the server's responsiveness) and [`policy`] (rate windows, then
//! enforcement decisions) → [`cluster`] (other web hosts' calls, when several share the windows) →
//! [`pipeline`], which wires them. [`coverage`] judges, from the
//! counters, what the capture cannot see; [`certify`] judges a testing window's verdicts into
//! PASS or FAIL per token. [`usage`] and [`lifecycle`] make the long-term reports from the
//! daily rollups the store keeps.
//!
//! A stage is driven only by the inputs and timestamps it is given; none does I/O, and none
//! imports an edge or a command.

pub mod certify;
pub mod cluster;
pub(crate) mod coverage;
pub mod decode;
pub mod health;
pub mod http;
pub(crate) mod lifecycle;
pub mod pipeline;
pub mod policy;
pub mod reassembly;
pub mod redcap;
pub mod usage;
