//! Where the daemon meets the world, in flow order: [`capture`] (files, the kernel probe,
//! libpcap, the TLS uprobes) feeds the stages; [`output`] writes their records and [`records`]
//! reads the call records back; [`store`] keeps what must survive a crash; [`directory`] names
//! who a token belongs to; [`alerts`], [`hooks`] and [`actions`] act on decisions;
//! [`notify`] and [`canary`] talk to systemd and to the web server; [`telemetry`] and [`api`]
//! show it all; [`hardening`] makes the process itself harder to read. Edges use stages, never
//! the other way round.

pub mod actions;
pub(crate) mod alerts;
pub mod api;
pub(crate) mod canary;
pub mod capture;
pub mod directory;
pub(crate) mod hardening;
pub(crate) mod hooks;
pub(crate) mod notify;
pub(crate) mod output;
pub(crate) mod records;
pub mod shared_state;
pub mod store;
pub mod telemetry;
