//! A recorded session: a fresh simulator on a free loopback port, tcpdump on `lo` for that
//! port, the caller's clients run against it, then the capture is stopped and the simulator's
//! log collected. The pcap and the log are the two views a test compares.

use std::path::Path;

use anyhow::Result;

use crate::capture::Tcpdump;
use crate::sim::{SimOptions, SimRecord, Simulator};

/// What a session left behind besides the pcap file.
pub struct Session<T> {
    /// What the clients closure returned.
    pub clients: T,
    /// Every request the simulator answered, API or not.
    pub sim_log: Vec<SimRecord>,
    /// The simulator's port (the capture filter).
    pub port: u16,
    /// tcpdump's closing report (packet counts).
    pub tcpdump_report: String,
}

/// Runs `clients` against a simulator started with `opts` while tcpdump writes `pcap`.
/// `dir` holds the simulator's log.
pub fn record<T>(
    dir: &Path,
    mut opts: SimOptions,
    pcap: &Path,
    clients: impl FnOnce(&Simulator) -> Result<T>,
) -> Result<Session<T>> {
    opts.log = Some(dir.join("sim-log.jsonl"));
    let sim = Simulator::start(&opts)?;
    let mut tcpdump = Tcpdump::start("lo", &format!("tcp port {}", sim.port()), pcap)?;
    let result = clients(&sim);
    let tcpdump_report = tcpdump.stop()?;
    let clients = result?;
    Ok(Session {
        clients,
        sim_log: sim.log()?,
        port: sim.port(),
        tcpdump_report,
    })
}
