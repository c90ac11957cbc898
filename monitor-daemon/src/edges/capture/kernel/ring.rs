//! Reading the probe's ring buffer: bounded drains of its records into [`TcpSegment`]s, waiting
//! for it to become readable, and handing flows back to the kernel (stop copying a connection
//! with nothing worth reading, copy it again when its next request came early).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use aya::maps::MapData;
use monitor_common::{
    FAMILY_IPV4, FAMILY_IPV6, FLOWS_MAP, FlowKey, FlowState, NEW_FLOWS_MAP, TLS_CONNS_MAP,
    TlsConnKey, TlsConnState, TlsEvent,
};

use super::KernelProbe;
use crate::edges::capture::records::{clock_ns, segment_from_record};
use crate::shared::model::{Endpoint, ResumedEarly, TcpSegment};

/// What user space did with the records it read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DrainStats {
    pub records: u64,
    /// Connections user space took out of the flow table (nothing worth reading until the
    /// client's next request, which the kernel then tracks afresh).
    pub flows_released: u64,
    /// Connections user space put back (their next request was copied before the release).
    pub flows_recopied: u64,
    /// Records whose header or lengths did not make sense; skipped.
    pub malformed: u64,
    /// Drains that stopped at their budget (`capture.max_drain_records` or `max_drain_time`)
    /// rather than at an empty ring: the loop did its periodic work and came back for the rest.
    pub(crate) drains_bounded: u64,
    /// TLS connections whose client address was found, and not found (then `client` is empty).
    pub(crate) tls_clients_found: u64,
    pub(crate) tls_clients_unknown: u64,
}

impl KernelProbe {
    /// Hands every record now in the ring buffer to `out` as a [`TcpSegment`] borrowing the
    /// record's bytes; malformed records are counted in [`Self::drain_stats`] and skipped.
    /// Returns how many segments were handed out.
    pub fn drain(&mut self, out: &mut impl FnMut(&TcpSegment<'_>)) -> usize {
        self.drain_bounded(usize::MAX, || true, out)
    }

    /// [`Self::drain`], stopping after `max_records` records or once `more_time` says no (asked
    /// every 64 records), so that a ring the kernel keeps filling cannot hold the caller: the
    /// rest stays in the ring for the next drain. Stops at a budget are counted
    /// (`drains_bounded`).
    pub(crate) fn drain_bounded(
        &mut self,
        max_records: usize,
        mut more_time: impl FnMut() -> bool,
        out: &mut impl FnMut(&TcpSegment<'_>),
    ) -> usize {
        let mut handed = 0;
        let mut read = 0usize;
        let tls_conns = self
            .ebpf
            .map(TLS_CONNS_MAP)
            .and_then(|map| aya::maps::HashMap::<_, TlsConnKey, TlsConnState>::try_from(map).ok());
        loop {
            if read >= max_records || (read % 64 == 63 && !more_time()) {
                self.stats.drains_bounded += 1;
                break;
            }
            let Some(record) = self.events.next() else {
                break;
            };
            read += 1;
            self.stats.records += 1;
            if crate::edges::capture::records::is_tls_record(&record) {
                let still_tracked = |event: &TlsEvent| {
                    let key = TlsConnKey {
                        ssl: event.ssl,
                        tgid: event.tgid,
                        _pad: 0,
                    };
                    tls_conns
                        .as_ref()
                        .and_then(|conns| conns.get(&key, 0).ok())
                        .is_some_and(|state| state.since_ns == event.conn_since_ns)
                };
                match crate::edges::capture::records::segments_from_record(
                    &record,
                    &self.clock,
                    &mut self.tls_peers,
                    &still_tracked,
                ) {
                    Some(segments) => {
                        for segment in segments.iter().flatten() {
                            out(segment);
                            handed += 1;
                        }
                    }
                    None => self.stats.malformed += 1,
                }
                continue;
            }
            match segment_from_record(&record, &self.clock) {
                Some(segment) => {
                    out(&segment);
                    handed += 1;
                }
                None => self.stats.malformed += 1,
            }
        }
        handed
    }

    /// Blocks until the ring buffer has data or `timeout` passes; `Ok(true)` when readable.
    /// For tests and simple loops; the daemon polls [`AsFd`] with tokio instead.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut fd = libc::pollfd {
            fd: self.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut fd, 1, millis) };
        if ready < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ready > 0)
    }

    /// Stops copying the connection between `client` and `server`: user space has read all it
    /// needs until the client's next request, and the classifier tracks that request afresh
    /// (it starts like any other). False when the kernel no longer tracked it.
    pub fn stop_copying(&mut self, client: Endpoint, server: Endpoint) -> bool {
        let Some(key) = flow_key(client, server) else {
            return false;
        };
        let removed = self
            .flows_mut()
            .is_some_and(|mut flows| flows.remove(&key).is_ok());
        // A flow the kernel has not seen answered yet is only waiting: dropping it is no release.
        if let Some(map) = self.ebpf.map_mut(NEW_FLOWS_MAP)
            && let Ok(mut waiting) = aya::maps::HashMap::<_, FlowKey, FlowState>::try_from(map)
        {
            let _ = waiting.remove(&key);
        }
        if removed {
            self.stats.flows_released += 1;
        }
        removed
    }

    /// Copies the connection again after [`KernelProbe::stop_copying`], when its next request
    /// was copied before the kernel stopped: the rest of that request and its answer must come.
    /// Does nothing when the kernel already tracks it afresh.
    pub fn copy_again(&mut self, resumed: &ResumedEarly) -> bool {
        let Some(key) = flow_key(resumed.client, resumed.server) else {
            return false;
        };
        // The starts user space now counts from, so that the events carry them as a tracking
        // of the kernel's own would.
        let state = FlowState {
            since_ns: u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).unwrap_or(0),
            fins: 0,
            server_start_known: u32::from(resumed.server_start.is_some()),
            client_start: resumed.client_start,
            server_start: resumed.server_start.unwrap_or(0),
        };
        // BPF_NOEXIST: a fresh tracking by the kernel wins.
        const NOEXIST: u64 = 1;
        let inserted = self
            .flows_mut()
            .is_some_and(|mut flows| flows.insert(key, state, NOEXIST).is_ok());
        if inserted {
            self.stats.flows_recopied += 1;
        }
        inserted
    }

    fn flows_mut(&mut self) -> Option<aya::maps::HashMap<&mut MapData, FlowKey, FlowState>> {
        let map = self.ebpf.map_mut(FLOWS_MAP)?;
        aya::maps::HashMap::try_from(map).ok()
    }

    pub fn drain_stats(&self) -> DrainStats {
        DrainStats {
            tls_clients_found: self.tls_peers.found,
            tls_clients_unknown: self.tls_peers.not_found,
            ..self.stats
        }
    }
}

impl AsFd for KernelProbe {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.events.as_fd()
    }
}

impl AsRawFd for KernelProbe {
    fn as_raw_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }
}

/// The kernel's key for the connection between `client` and `server`, if they are of one
/// address family.
fn flow_key(client: Endpoint, server: Endpoint) -> Option<FlowKey> {
    let mut key = FlowKey {
        client_port: client.port,
        server_port: server.port,
        ..FlowKey::default()
    };
    match (client.ip, server.ip) {
        (IpAddr::V4(c), IpAddr::V4(s)) => {
            key.family = FAMILY_IPV4;
            key.client_addr[..4].copy_from_slice(&c.octets());
            key.server_addr[..4].copy_from_slice(&s.octets());
        }
        (IpAddr::V6(c), IpAddr::V6(s)) => {
            key.family = FAMILY_IPV6;
            key.client_addr = c.octets();
            key.server_addr = s.octets();
        }
        _ => return None,
    }
    Some(key)
}
