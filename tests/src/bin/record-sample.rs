//! `record-sample --out FILE`: records a small, real capture for the README's demo. It starts
//! the REDCap simulator on a free loopback port, captures that port on `lo` with tcpdump, and
//! runs real clients: a compliant PyCap user (3 calls), a bursty one (over 3 calls a minute),
//! a heavy exporter (unfiltered exports and a report) and curl's assorted requests.
//! Needs root (tcpdump); takes a few seconds.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use monitor_tests::clients::{PycapSet, run_curl_set, run_pycap};
use monitor_tests::session;
use monitor_tests::sim::SimOptions;

const COMPLIANT: &str = "C0C0C0C0C0C0C0C0C0C0C0C0C0C0C0C0";
const BURSTY: &str = "B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0B0";
const HEAVY: &str = "E0E0E0E0E0E0E0E0E0E0E0E0E0E0E0E0";
const SCRIPTED: &str = "A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let out = match (args.next().as_deref(), args.next()) {
        (Some("--out"), Some(path)) => PathBuf::from(path),
        _ => bail!("usage: record-sample --out FILE (needs root for tcpdump)"),
    };
    let dir = tempfile::tempdir()?;
    let pcap = dir.path().join("sample.pcap");
    let opts = SimOptions {
        tokens: [COMPLIANT, BURSTY, HEAVY, SCRIPTED]
            .map(String::from)
            .to_vec(),
        // The heavy exporter's project is big enough that one export passes 500 kB.
        project_sizes: vec![(HEAVY.to_string(), 1500)],
        ..SimOptions::default()
    };
    let s = session::record(dir.path(), opts, &pcap, |sim| {
        let api = sim.url("/redcap/api/");
        run_pycap(&api, COMPLIANT, PycapSet::Light)?;
        run_pycap(&api, BURSTY, PycapSet::Burst(6))?;
        run_pycap(&api, HEAVY, PycapSet::Heavy)?;
        run_curl_set(&sim.url(""), SCRIPTED, dir.path())
    })?;
    std::fs::copy(&pcap, &out).with_context(|| format!("writing {}", out.display()))?;
    let api = s.sim_log.iter().filter(|r| r.api).count();
    println!(
        "wrote {}: {api} API calls, {} other requests, simulator port {}",
        out.display(),
        s.sim_log.len() - api,
        s.port
    );
    Ok(())
}
