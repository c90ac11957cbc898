//! The live capture's kernel edge: loads the TC classifier (`monitor-ebpf`), attaches it to an
//! interface, and turns its ring-buffer events into [`TcpSegment`]s for the reassembler.
//!
//! It owns the BPF object, its links (dropped = detached; nothing is pinned), any clsact qdisc it
//! had to add (removed again on drop) and the one conversion from kernel time to wall-clock time.
//! It does not reassemble, parse HTTP or block, except in [`KernelProbe::wait_readable`], and it
//! never trusts a length from the kernel unchecked. Loading and the counters are here; attaching
//! (TCX or netlink) is in `attach.rs`, reading the ring and handing flows back in `ring.rs`.

use std::io;
use std::time::Duration;

use aya::maps::{MapData, MapError, PerCpuArray, RingBuf};
use aya::programs::tc::{self, SchedClassifierLink};
use aya::programs::uprobe::UProbeLink;
use aya::programs::{ProgramError, SchedClassifier};
use aya::{Btf, Ebpf, EbpfError, EbpfLoader};
use monitor_common::{
    CHUNK_BYTES_GLOBAL, CLASSIFIER_PROGRAM, COUNTERS_MAP, EVENTS_MAP, FLOWS_MAP, FlowKey,
    FlowState, KernelCounter, MAX_CHUNK_BYTES, MAX_SERVER_PORTS, MIN_NEW_FLOWS, NEW_FLOWS_DIVISOR,
    NEW_FLOWS_MAP, SERVER_PORTS_GLOBAL, TLS_CONNS_MAP, TLS_IDLE_NS_GLOBAL, TLS_PROCESSES_GLOBAL,
    TLS_USERS_GLOBAL, TlsConnKey, TlsConnState,
};

use super::records::KernelClock;

mod attach;
mod ring;

use attach::OwnedClsact;

pub(crate) use attach::interface_exists;
pub use ring::DrainStats;

/// What the probe copies and how much room it has. Validated by [`KernelProbe::load`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// TCP ports the web server listens on (1 to 8 of them).
    pub ports: Vec<u16>,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_bytes: u32,
    /// Most payload bytes per event (64 ..= 16384); larger segments are split into several events.
    pub chunk_bytes: u32,
    /// How many API connections the kernel tracks at once (LRU beyond that).
    pub max_flows: u32,
    /// How [`KernelProbe::attach`] hooks the classifier into the interface.
    pub attach: AttachMethod,
    /// Names of the processes whose OpenSSL reads the TLS uprobes look at (at most 8, each
    /// 1..=15 bytes; a name matches a process whose name starts with it). Empty: none.
    pub tls_processes: Vec<String>,
    /// User ids those processes must run as (at most 8). Empty: no process is read.
    pub tls_users: Vec<u32>,
    /// After this long without a call, a tracked TLS connection is judged afresh.
    pub tls_idle: Duration,
}

/// How the classifier is attached to an interface's ingress and egress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMethod {
    /// TCX links where the kernel has them (6.6+), else a clsact qdisc and netlink filters.
    #[default]
    Auto,
    /// TCX links only: an error on kernels before 6.6.
    Tcx,
    /// A clsact qdisc (added if missing) and netlink filters, even where TCX works. Unlike TCX
    /// links, netlink filters outlive a crashed process.
    Netlink,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            ports: vec![80, 8080],
            ring_bytes: 16 << 20,
            chunk_bytes: MAX_CHUNK_BYTES,
            max_flows: 16384,
            attach: AttachMethod::Auto,
            tls_processes: Vec::new(),
            tls_users: Vec::new(),
            tls_idle: Duration::from_secs(120),
        }
    }
}

/// Why the probe could not be loaded or attached; each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no server ports configured: list the web server's ports (for example [80, 8080])")]
    NoServerPorts,
    #[error("{count} server ports configured but the kernel program matches at most {max}")]
    TooManyServerPorts { count: usize, max: usize },
    #[error("server port 0 is not a port: remove it from the port list")]
    ZeroPort,
    #[error("ring buffer size {bytes} is not a power of two of at least 4096 bytes (try 16777216)")]
    RingSize { bytes: u32 },
    #[error("chunk size {bytes} is outside 64..={max} bytes")]
    ChunkSize { bytes: u32, max: u32 },
    #[error("flow table capacity must be at least 1")]
    FlowCapacity,
    #[error(
        "permission denied to {action}: run as root or grant {capabilities} \
         (e.g. `setcap cap_bpf,cap_net_admin,cap_perfmon+ep <binary>`)"
    )]
    MissingPrivilege {
        action: &'static str,
        capabilities: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "this kernel cannot create a BPF ring buffer (needs Linux 5.8 or later); \
         use capture mode \"pcap\" instead"
    )]
    NoRingBuffer {
        #[source]
        source: io::Error,
    },
    #[error(
        "the kernel rejected the program's BTF type information (it needs CONFIG_DEBUG_INFO_BTF \
         and BTF support); use capture mode \"pcap\" instead"
    )]
    NoBtf {
        #[source]
        source: Box<EbpfError>,
    },
    #[error("loading the kernel program failed: {source}")]
    Load {
        #[source]
        source: Box<EbpfError>,
    },
    #[error("the kernel verifier rejected `{program}`: {source}")]
    Verifier {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("the kernel object has no {what}: it was built from a different monitor-ebpf")]
    MissingFromObject { what: &'static str },
    #[error("opening map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "no network interface named {interface:?} in this network namespace \
         (list them with `ip link`)"
    )]
    UnknownInterface { interface: String },
    #[error(
        "attaching to {interface} {direction} needs netlink sockets ({reason}), and they are \
         refused: {advice}",
        advice = crate::edges::capture::drop_in_advice("netlink-attach.conf")
    )]
    NetlinkRefused {
        interface: String,
        direction: &'static str,
        /// Why TCX was not used: this kernel lacks it, or the configuration asks for netlink.
        reason: String,
    },
    #[error("attaching to {interface} {direction} failed with TCX ({tcx}) and netlink ({netlink})")]
    Attach {
        interface: String,
        direction: &'static str,
        tcx: Box<ProgramError>,
        netlink: Box<ProgramError>,
    },
    #[error("attaching to {interface} {direction} with {method} failed: {source}")]
    AttachWith {
        interface: String,
        direction: &'static str,
        method: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("reading map {map}: {source}")]
    ReadMap {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error(
        "TLS process name {name:?} cannot match: process names are 1 to 15 bytes \
         (the kernel keeps 15), at most {max} of them"
    )]
    TlsProcessName { name: String, max: usize },
    #[error("capture.tls.users has more than {max} users")]
    TlsUsers { max: usize },
}

/// The kernel's loss and activity counters, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct KernelCounters {
    pub packets_seen: u64,
    pub filtered: u64,
    pub events_sent: u64,
    /// Events lost because the ring buffer was full.
    pub ring_full: u64,
    /// Payload bytes of tracked segments never copied (copy limit or full ring).
    pub truncated_bytes: u64,
    pub flow_insert_failed: u64,
    /// Flows that started like an API request (unconfirmed until the server acknowledges it).
    pub flows_started: u64,
    /// Flows the server acknowledged, moved to the main table.
    pub flows_confirmed: u64,
    pub flows_ended: u64,
    /// Client segments (data or RST) with a wrong TCP checksum on tracked flows or starting
    /// one, dropped in the kernel: forged or damaged, as the server's stack drops them too.
    pub checksum_bad: u64,
    /// API connections in the kernel's main flow table now (answered by the server).
    pub(crate) flows_tracked: u64,
    /// Connections the LRU table dropped to make room (the kernel cannot see these: they are
    /// confirmed − ended − still tracked). Their later segments are not sent.
    pub flows_evicted: u64,
    /// Flows the server never acknowledged, dropped from the small unconfirmed table (started
    /// − confirmed − ended unconfirmed − still waiting): forged requests, or real ones pushed out
    /// by a flood of such before their answer. Not a loss of answered connections.
    pub flows_unanswered: u64,
    /// TLS: reads by processes not in the process list (not looked at).
    pub(crate) tls_other_process: u64,
    /// TLS: reads by processes with a configured name running as a user not in
    /// `capture.tls.users` (not looked at): a misconfigured list, or an impostor.
    pub(crate) tls_other_user: u64,
    /// TLS: reads and writes on connections that are not API connections (no event).
    pub tls_filtered: u64,
    pub tls_conns_started: u64,
    pub(crate) tls_conns_ended: u64,
    /// TLS connections in the kernel's table now.
    pub(crate) tls_conns_tracked: u64,
    /// TLS connections the LRU table dropped (started − ended − tracked): a loss.
    pub tls_conns_evicted: u64,
    /// TLS calls whose arguments could not be kept for the return probe: a loss.
    pub tls_args_lost: u64,
    /// TLS handshakes (ClientHello) on the watched ports: HTTPS the TC probe cannot read.
    pub tls_handshakes: u64,
    /// HTTP/2 requests on connections whose preface was not seen (opened before the probe).
    pub(crate) http2_unseen: u64,
}

impl KernelCounters {
    /// The names of the counters that mean lost or partial data, in the order
    /// [`KernelCounters::losses`] gives them: the one list the stats file, `status`, the
    /// `capture_loss` alert and the metrics read.
    pub(crate) const LOSS_NAMES: [&'static str; 7] = [
        "ring_full",
        "truncated_bytes",
        "flow_insert_failed",
        "flows_evicted",
        "flows_unanswered",
        "tls_conns_evicted",
        "tls_args_lost",
    ];

    /// The loss counters by name (`truncated_bytes` counts bytes, the others events).
    pub fn losses(&self) -> [(&'static str, u64); 7] {
        let values = [
            self.ring_full,
            self.truncated_bytes,
            self.flow_insert_failed,
            self.flows_evicted,
            self.flows_unanswered,
            self.tls_conns_evicted,
            self.tls_args_lost,
        ];
        std::array::from_fn(|i| (Self::LOSS_NAMES[i], values[i]))
    }
}

/// A loaded (and possibly attached) probe. Dropping it detaches and unloads everything.
pub struct KernelProbe {
    // Declared first so that the links are dropped (detached) before the program and maps.
    links: Vec<SchedClassifierLink>,
    /// The TLS uprobes' links (see `capture::tls`).
    pub(super) tls_links: Vec<UProbeLink>,
    /// The client addresses of TLS connections.
    tls_peers: super::records::TlsPeers,
    // After the links: a qdisc is removed only once our filters on it are gone.
    clsact: Vec<OwnedClsact>,
    attach_method: AttachMethod,
    /// Whether netlink filters were attached: removing them (at exit) needs CAP_NET_ADMIN.
    netlink_used: bool,
    events: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    pub(super) ebpf: Ebpf,
    clock: KernelClock,
    stats: DrainStats,
}

impl KernelProbe {
    /// Whether netlink filters (or a clsact qdisc) were attached: taking them away at exit
    /// needs CAP_NET_ADMIN, where TCX links go with their file descriptors.
    pub(crate) fn uses_netlink(&self) -> bool {
        self.netlink_used || !self.clsact.is_empty()
    }

    /// Loads the classifier with `config` patched in. Needs CAP_BPF and CAP_PERFMON (or root).
    pub fn load(config: &ProbeConfig) -> Result<KernelProbe, ProbeError> {
        let ports = server_ports(config)?;
        validate_sizes(config)?;
        let tls_processes = process_names(&config.tls_processes)?;
        let tls_users = user_table(&config.tls_users)?;
        let tls_idle_ns = u64::try_from(config.tls_idle.as_nanos()).unwrap_or(u64::MAX);
        let btf = Btf::from_sys_fs().ok();
        let mut ebpf = EbpfLoader::new()
            .btf(btf.as_ref())
            .override_global(SERVER_PORTS_GLOBAL, &ports, true)
            .override_global(CHUNK_BYTES_GLOBAL, &config.chunk_bytes, true)
            .override_global(TLS_PROCESSES_GLOBAL, &tls_processes, true)
            .override_global(TLS_USERS_GLOBAL, &tls_users, true)
            .override_global(TLS_IDLE_NS_GLOBAL, &tls_idle_ns, true)
            .map_max_entries(TLS_CONNS_MAP, config.max_flows)
            .map_max_entries(EVENTS_MAP, config.ring_bytes)
            .map_max_entries(FLOWS_MAP, config.max_flows)
            .map_max_entries(NEW_FLOWS_MAP, new_flows_capacity(config.max_flows))
            .load(crate::KERNEL_OBJECT)
            .map_err(load_error)?;

        let program: &mut SchedClassifier = ebpf
            .program_mut(CLASSIFIER_PROGRAM)
            .and_then(|p| p.try_into().ok())
            .ok_or(ProbeError::MissingFromObject {
                what: "TC classifier api_flow_classifier",
            })?;
        // EACCES here is the verifier refusing the program, not a missing capability.
        verify(|| program.load()).map_err(|source| match program_os_error(&source) {
            Some(errno) if errno == libc::EPERM => ProbeError::MissingPrivilege {
                action: "load the TC classifier",
                capabilities: "CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON",
                source: io::Error::from_raw_os_error(errno),
            },
            _ => ProbeError::Verifier {
                program: CLASSIFIER_PROGRAM,
                source: Box::new(source),
            },
        })?;

        let events = ebpf
            .take_map(EVENTS_MAP)
            .ok_or(ProbeError::MissingFromObject { what: "EVENTS map" })?;
        let events = RingBuf::try_from(events).map_err(|source| ProbeError::Map {
            map: EVENTS_MAP,
            source,
        })?;
        let counters = ebpf
            .take_map(COUNTERS_MAP)
            .ok_or(ProbeError::MissingFromObject {
                what: "COUNTERS map",
            })?;
        let counters = PerCpuArray::try_from(counters).map_err(|source| ProbeError::Map {
            map: COUNTERS_MAP,
            source,
        })?;
        Ok(KernelProbe {
            links: Vec::new(),
            tls_links: Vec::new(),
            tls_peers: super::records::TlsPeers::new(config.max_flows as usize),
            clsact: Vec::new(),
            attach_method: config.attach,
            netlink_used: false,
            events,
            counters,
            ebpf,
            clock: KernelClock::measure(),
            stats: DrainStats::default(),
        })
    }

    /// The kernel's counters, summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let read = |counter: KernelCounter| -> Result<u64, ProbeError> {
            let per_cpu =
                self.counters
                    .get(&(counter as u32), 0)
                    .map_err(|source| ProbeError::ReadMap {
                        map: COUNTERS_MAP,
                        source,
                    })?;
            Ok(per_cpu.iter().fold(0u64, |sum, v| sum.wrapping_add(*v)))
        };
        let flows_started = read(KernelCounter::FlowsStarted)?;
        let flows_confirmed = read(KernelCounter::FlowsConfirmed)?;
        let flows_ended = read(KernelCounter::FlowsEnded)?;
        let flows_tracked = self.flows_tracked(FLOWS_MAP)?;
        let flows_waiting = self.flows_tracked(NEW_FLOWS_MAP)?;
        let tls_conns_started = read(KernelCounter::TlsConnsStarted)?;
        let tls_conns_ended = read(KernelCounter::TlsConnsEnded)?;
        let tls_conns_tracked = self.tls_conns_tracked()?;
        Ok(KernelCounters {
            tls_other_process: read(KernelCounter::TlsOtherProcess)?,
            tls_other_user: read(KernelCounter::TlsOtherUser)?,
            tls_filtered: read(KernelCounter::TlsFiltered)?,
            tls_conns_evicted: tls_conns_started
                .saturating_sub(tls_conns_ended)
                .saturating_sub(tls_conns_tracked),
            tls_conns_started,
            tls_conns_ended,
            tls_conns_tracked,
            tls_args_lost: read(KernelCounter::TlsArgsLost)?,
            tls_handshakes: read(KernelCounter::TlsHandshakes)?,
            http2_unseen: read(KernelCounter::Http2Unseen)?,
            // User space takes entries out (released) and puts some back: neither is a loss.
            flows_evicted: (flows_confirmed + self.stats.flows_recopied)
                .saturating_sub(flows_ended)
                .saturating_sub(self.stats.flows_released)
                .saturating_sub(flows_tracked),
            flows_unanswered: flows_started
                .saturating_sub(flows_confirmed)
                .saturating_sub(read(KernelCounter::UnconfirmedEnded)?)
                .saturating_sub(flows_waiting),
            flows_confirmed,
            checksum_bad: read(KernelCounter::ChecksumBad)?,
            flows_tracked,
            packets_seen: read(KernelCounter::PacketsSeen)?,
            filtered: read(KernelCounter::Filtered)?,
            events_sent: read(KernelCounter::EventsSent)?,
            ring_full: read(KernelCounter::RingFull)?,
            truncated_bytes: read(KernelCounter::TruncatedBytes)?,
            flow_insert_failed: read(KernelCounter::FlowInsertFailed)?,
            flows_started,
            flows_ended,
        })
    }

    /// Entries in one of the kernel's flow tables (a walk of at most `max_flows` keys).
    fn flows_tracked(&self, name: &'static str) -> Result<u64, ProbeError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(ProbeError::MissingFromObject { what: name })?;
        let flows = aya::maps::HashMap::<_, FlowKey, FlowState>::try_from(map)
            .map_err(|source| ProbeError::Map { map: name, source })?;
        Ok(flows.keys().filter(Result::is_ok).count() as u64)
    }

    /// Entries in the kernel's TLS connection table (a walk of at most `max_flows` keys).
    fn tls_conns_tracked(&self) -> Result<u64, ProbeError> {
        let map = self
            .ebpf
            .map(TLS_CONNS_MAP)
            .ok_or(ProbeError::MissingFromObject {
                what: "TLS_CONNS map",
            })?;
        let conns =
            aya::maps::HashMap::<_, TlsConnKey, TlsConnState>::try_from(map).map_err(|source| {
                ProbeError::Map {
                    map: TLS_CONNS_MAP,
                    source,
                }
            })?;
        Ok(conns.keys().filter(Result::is_ok).count() as u64)
    }
}

/// Runs a program load through the verifier. The verifier gives up with EAGAIN when a signal
/// arrives while it works (SIGCHLD from any child of this process will do, and verifying the
/// classifier takes long enough on a busy host); like libbpf, try again a few times.
pub(crate) fn verify(
    mut load: impl FnMut() -> Result<(), ProgramError>,
) -> Result<(), ProgramError> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match load() {
            Err(source)
                if attempt < ATTEMPTS && program_os_error(&source) == Some(libc::EAGAIN) =>
            {
                tracing::debug!(attempt, "the verifier was interrupted; loading again");
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn server_ports(config: &ProbeConfig) -> Result<[u16; MAX_SERVER_PORTS], ProbeError> {
    if config.ports.is_empty() {
        return Err(ProbeError::NoServerPorts);
    }
    if config.ports.len() > MAX_SERVER_PORTS {
        return Err(ProbeError::TooManyServerPorts {
            count: config.ports.len(),
            max: MAX_SERVER_PORTS,
        });
    }
    let mut ports = [0u16; MAX_SERVER_PORTS];
    for (slot, &port) in ports.iter_mut().zip(&config.ports) {
        if port == 0 {
            return Err(ProbeError::ZeroPort);
        }
        *slot = port;
    }
    Ok(ports)
}

fn validate_sizes(config: &ProbeConfig) -> Result<(), ProbeError> {
    if !config.ring_bytes.is_power_of_two() || config.ring_bytes < 4096 {
        return Err(ProbeError::RingSize {
            bytes: config.ring_bytes,
        });
    }
    if !(64..=MAX_CHUNK_BYTES).contains(&config.chunk_bytes) {
        return Err(ProbeError::ChunkSize {
            bytes: config.chunk_bytes,
            max: MAX_CHUNK_BYTES,
        });
    }
    if config.max_flows == 0 {
        return Err(ProbeError::FlowCapacity);
    }
    Ok(())
}

/// Size of the kernel's table of flows not answered yet: an eighth of the main table.
fn new_flows_capacity(max_flows: u32) -> u32 {
    (max_flows / NEW_FLOWS_DIVISOR).max(MIN_NEW_FLOWS)
}

fn is_permission(errno: i32) -> bool {
    errno == libc::EPERM || errno == libc::EACCES
}

/// The errno under an error, wherever aya put it.
pub(super) fn program_os_error(err: &ProgramError) -> Option<i32> {
    if let ProgramError::LoadError { io_error, .. } = err {
        return io_error.raw_os_error();
    }
    source_os_error(err)
}

/// Walks the `source()` chain. aya's transparent variants forward `source()` to what they wrap,
/// skipping it, so the ones that wrap an io or netlink error are opened here.
fn source_os_error(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut current = Some(err);
    while let Some(err) = current {
        let tc_error = |tc: &tc::TcError| match tc {
            tc::TcError::NetlinkError(netlink) => netlink.raw_os_error(),
            tc::TcError::IoError(io) => io.raw_os_error(),
            _ => None,
        };
        let errno = if let Some(io) = err.downcast_ref::<io::Error>() {
            io.raw_os_error()
        } else if let Some(tc) = err.downcast_ref::<tc::TcError>() {
            tc_error(tc)
        } else if let Some(program) = err.downcast_ref::<ProgramError>() {
            match program {
                ProgramError::IOError(io) => io.raw_os_error(),
                ProgramError::NetlinkError(netlink) => netlink.raw_os_error(),
                ProgramError::TcError(tc) => tc_error(tc),
                _ => None,
            }
        } else {
            None
        };
        if errno.is_some() {
            return errno;
        }
        current = err.source();
    }
    None
}

fn load_error(source: EbpfError) -> ProbeError {
    if let EbpfError::MapError(MapError::CreateError { name, io_error }) = &source
        && let Some(errno) = io_error.raw_os_error()
    {
        if is_permission(errno) {
            return ProbeError::MissingPrivilege {
                action: "create BPF maps",
                capabilities: "CAP_BPF and CAP_PERFMON",
                source: io::Error::from_raw_os_error(errno),
            };
        }
        if name == EVENTS_MAP && errno == libc::EINVAL {
            return ProbeError::NoRingBuffer {
                source: io::Error::from_raw_os_error(errno),
            };
        }
    }
    if let Some(errno) = source_os_error(&source).filter(|&e| is_permission(e)) {
        return ProbeError::MissingPrivilege {
            action: "load the eBPF object",
            capabilities: "CAP_BPF and CAP_PERFMON",
            source: io::Error::from_raw_os_error(errno),
        };
    }
    if matches!(source, EbpfError::BtfError(_) | EbpfError::NoBTF) {
        return ProbeError::NoBtf {
            source: Box::new(source),
        };
    }
    ProbeError::Load {
        source: Box::new(source),
    }
}

/// The configured process names as the kernel's filter table.
pub(crate) fn process_names(
    names: &[String],
) -> Result<[[u8; monitor_common::COMM_LEN]; monitor_common::MAX_TLS_PROCESSES], ProbeError> {
    use monitor_common::{COMM_LEN, MAX_TLS_PROCESSES};
    let mut table = [[0u8; COMM_LEN]; MAX_TLS_PROCESSES];
    if names.len() > MAX_TLS_PROCESSES {
        return Err(ProbeError::TlsProcessName {
            name: names[MAX_TLS_PROCESSES].clone(),
            max: MAX_TLS_PROCESSES,
        });
    }
    for (slot, name) in table.iter_mut().zip(names) {
        if name.is_empty() || name.len() >= COMM_LEN || name.contains('\0') {
            return Err(ProbeError::TlsProcessName {
                name: name.clone(),
                max: MAX_TLS_PROCESSES,
            });
        }
        slot[..name.len()].copy_from_slice(name.as_bytes());
    }
    Ok(table)
}

/// The configured user ids as the kernel's filter table.
fn user_table(uids: &[u32]) -> Result<[u32; monitor_common::MAX_TLS_USERS], ProbeError> {
    use monitor_common::{MAX_TLS_USERS, NO_USER};
    if uids.len() > MAX_TLS_USERS {
        return Err(ProbeError::TlsUsers { max: MAX_TLS_USERS });
    }
    let mut table = [NO_USER; MAX_TLS_USERS];
    table[..uids.len()].copy_from_slice(uids);
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    use monitor_common::{
        DIRECTION_CLIENT_TO_SERVER, DIRECTION_SERVER_TO_CLIENT, FAMILY_IPV4, FAMILY_IPV6,
        SEGMENT_EVENT_LEN, SegmentEvent, TCP_ACK, TCP_FIN,
    };

    use crate::edges::capture::records::{clock_ns, segment_from_record};

    use crate::shared::model::Timestamp;

    #[test]
    fn process_names_must_fit_the_kernel_name_field() {
        let ok = process_names(&["nginx".into(), "apache2".into()]).unwrap();
        assert_eq!(&ok[0][..6], b"nginx\0");
        assert_eq!(ok[2], [0; monitor_common::COMM_LEN]);
        for bad in ["", "a-name-of-16-byt"] {
            let err = process_names(&[bad.into()]).unwrap_err().to_string();
            assert!(err.contains("1 to 15 bytes"), "{err}");
        }
        let nine: Vec<String> = (0..9).map(|i| format!("p{i}")).collect();
        assert!(process_names(&nine).is_err());
    }

    fn record(event: &SegmentEvent, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; SEGMENT_EVENT_LEN];
        // SAFETY: `bytes` has room for one SegmentEvent.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), *event) };
        bytes.extend_from_slice(payload);
        bytes
    }

    fn ipv4_event(direction: u8, copied: u32) -> SegmentEvent {
        let mut client_addr = [0u8; 16];
        client_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let mut server_addr = [0u8; 16];
        server_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        SegmentEvent {
            ktime_ns: 5_000,
            seq: 1000,
            ack: 77,
            segment_len: copied + 100,
            offset: 100,
            copied,
            client_port: 40000,
            server_port: 80,
            client_addr,
            server_addr,
            family: FAMILY_IPV4,
            direction,
            tcp_flags: TCP_ACK,
            stream_start_known: 1,
            stream_start: 1000,
        }
    }

    fn os_error(errno: i32) -> ProgramError {
        ProgramError::SyscallError(aya::sys::SyscallError {
            call: "bpf_prog_load",
            io_error: io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn an_interrupted_verification_is_tried_again_a_few_times() {
        let mut calls = 0;
        let result = verify(|| {
            calls += 1;
            if calls < 3 {
                Err(os_error(libc::EAGAIN))
            } else {
                Ok(())
            }
        });
        assert!(result.is_ok());
        assert_eq!(calls, 3);

        let mut calls = 0;
        let result = verify(|| {
            calls += 1;
            Err(os_error(libc::EAGAIN))
        });
        assert_eq!(
            result.as_ref().map_err(program_os_error),
            Err(Some(libc::EAGAIN))
        );
        assert_eq!(calls, 5);

        // Any other error is final at once.
        let mut calls = 0;
        let result = verify(|| {
            calls += 1;
            Err(os_error(libc::EACCES))
        });
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }

    const CLOCK: KernelClock = KernelClock::offset(1_700_000_000_000_000_000);

    #[test]
    fn a_client_event_becomes_a_segment_from_client_to_server() {
        let bytes = record(&ipv4_event(DIRECTION_CLIENT_TO_SERVER, 4), b"POST");
        let segment = segment_from_record(&bytes, &CLOCK).expect("well-formed");
        assert_eq!(segment.src.to_string(), "10.0.0.1:40000");
        assert_eq!(segment.dst.to_string(), "10.0.0.2:80");
        assert_eq!(segment.seq, 1000);
        assert_eq!(segment.ack, Some(77));
        assert!(segment.flags.ack && !segment.flags.fin);
        assert_eq!(segment.payload, b"POST");
        assert_eq!(segment.ts, Timestamp(1_700_000_000_000_005_000));
        assert_eq!(segment.stream_start, Some(1000));
    }

    #[test]
    fn a_server_event_swaps_source_and_destination() {
        let bytes = record(&ipv4_event(DIRECTION_SERVER_TO_CLIENT, 2), b"HT");
        let segment = segment_from_record(&bytes, &CLOCK).expect("well-formed");
        assert_eq!(segment.src.to_string(), "10.0.0.2:80");
        assert_eq!(segment.dst.to_string(), "10.0.0.1:40000");
    }

    #[test]
    fn ipv6_addresses_use_all_sixteen_bytes() {
        let mut event = ipv4_event(DIRECTION_CLIENT_TO_SERVER, 0);
        event.family = FAMILY_IPV6;
        event.client_addr = Ipv6Addr::LOCALHOST.octets();
        event.server_addr = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        event.tcp_flags = TCP_FIN | TCP_ACK;
        let bytes = record(&event, b"");
        let segment = segment_from_record(&bytes, &CLOCK).expect("well-formed");
        assert_eq!(segment.src.to_string(), "[::1]:40000");
        assert_eq!(segment.dst.to_string(), "[fd00::2]:80");
        assert!(segment.flags.fin && segment.payload.is_empty());
    }

    #[test]
    fn records_whose_lengths_disagree_are_rejected() {
        let event = ipv4_event(DIRECTION_CLIENT_TO_SERVER, 4);
        assert!(segment_from_record(&record(&event, b"POS"), &CLOCK).is_none());
        assert!(segment_from_record(&record(&event, b"POST!"), &CLOCK).is_none());
        let bytes = record(&event, b"POST");
        assert!(segment_from_record(&bytes[..SEGMENT_EVENT_LEN - 1], &CLOCK).is_none());
        let mut beyond = event;
        beyond.segment_len = 103;
        assert!(segment_from_record(&record(&beyond, b"POST"), &CLOCK).is_none());
        let mut overflow = event;
        overflow.offset = u32::MAX;
        assert!(segment_from_record(&record(&overflow, b"POST"), &CLOCK).is_none());
    }

    #[test]
    fn unknown_family_or_direction_is_rejected() {
        let mut event = ipv4_event(DIRECTION_CLIENT_TO_SERVER, 0);
        event.family = 5;
        assert!(segment_from_record(&record(&event, b""), &CLOCK).is_none());
        let mut event = ipv4_event(DIRECTION_CLIENT_TO_SERVER, 0);
        event.direction = 2;
        assert!(segment_from_record(&record(&event, b""), &CLOCK).is_none());
    }

    #[test]
    fn kernel_time_converts_to_wall_clock_time_now() {
        let clock = KernelClock::measure();
        let now_wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let converted = clock.timestamp(clock_ns(libc::CLOCK_MONOTONIC) as u64);
        assert!(
            converted.0.abs_diff(now_wall) < 50_000_000,
            "{converted:?} vs {now_wall}"
        );
    }

    #[test]
    fn bad_configurations_are_refused_with_what_to_change() {
        let load =
            |config: ProbeConfig| server_ports(&config).and_then(|_| validate_sizes(&config));
        let base = ProbeConfig::default();
        assert!(load(base.clone()).is_ok());
        let err = load(ProbeConfig {
            ports: vec![],
            ..base.clone()
        })
        .unwrap_err();
        assert!(err.to_string().contains("no server ports"), "{err}");
        assert!(matches!(
            load(ProbeConfig {
                ports: (1..=9).collect(),
                ..base.clone()
            }),
            Err(ProbeError::TooManyServerPorts { count: 9, max: 8 })
        ));
        assert!(matches!(
            load(ProbeConfig {
                ports: vec![80, 0],
                ..base.clone()
            }),
            Err(ProbeError::ZeroPort)
        ));
        assert!(matches!(
            load(ProbeConfig {
                ring_bytes: 5000,
                ..base.clone()
            }),
            Err(ProbeError::RingSize { .. })
        ));
        assert!(matches!(
            load(ProbeConfig {
                chunk_bytes: 1 << 20,
                ..base.clone()
            }),
            Err(ProbeError::ChunkSize { .. })
        ));
        assert!(matches!(
            load(ProbeConfig {
                max_flows: 0,
                ..base
            }),
            Err(ProbeError::FlowCapacity)
        ));
    }

    #[test]
    fn an_unknown_interface_is_named_in_the_error() {
        assert!(!interface_exists("no-such-if0"));
        let err = ProbeError::UnknownInterface {
            interface: "no-such-if0".into(),
        };
        assert!(err.to_string().contains("\"no-such-if0\""));
    }
}
