//! HTTPS capture at the web server's OpenSSL: finds the libssl files (the distribution's
//! standard ones, and whatever the configured processes map when their `/proc/PID/maps` can be
//! read), attaches the uprobes of `monitor-ebpf` (`tls.rs`) once per library file, and turns
//! their [`TlsEvent`]s into [`TcpSegment`]s of a synthetic connection for the reassembler.
//!
//! A TLS connection (process, `SSL*`, start time) becomes a TCP connection between two
//! addresses of the IPv6 discard prefix `100::/64` ([`is_synthetic`] tells them apart), with
//! sequence numbers counted from the plaintext bytes, so that reassembly, HTTP and REDCap
//! extraction work unchanged. It reads `/proc` (discovery) and never trusts a length from the
//! kernel unchecked; it never sees a raw token.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::programs::UProbe;
use aya::programs::uprobe::UProbeScope;
use monitor_common::{
    COMM_LEN, DIRECTION_CLIENT_TO_SERVER, DIRECTION_SERVER_TO_CLIENT, FAMILY_TLS,
    MAX_TLS_PROCESSES, NO_FD, SEGMENT_EVENT_LEN, TCP_FIN, TCP_SYN, TLS_PROGRAMS, TlsEvent,
};

use super::kernel::{KernelClock, KernelProbe, ProbeError, program_os_error};
use crate::model::{Endpoint, TcpFlags, TcpSegment};

/// The server end of every synthetic TLS connection: `[100::]:443`.
const SERVER: Endpoint = Endpoint {
    ip: IpAddr::V6(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0)),
    port: 443,
};
/// The client port of every synthetic TLS connection (the address tells them apart).
const CLIENT_PORT: u16 = 49152;
/// Most bytes of an executable read to tell whether it has OpenSSL linked in.
const MAX_EXE_SCAN: u64 = 256 << 20;
/// The dynamic loader's cache, read for the libssl files it knows.
const LD_SO_CACHE: &str = "/etc/ld.so.cache";
/// Largest loader cache read (a large distribution's is well under 1 MiB).
const MAX_LD_SO_CACHE: u64 = 16 << 20;
/// The directories distributions install libssl in, besides what the loader's cache says
/// (`{arch}`: Debian and Ubuntu's multiarch triplet; lib64: Fedora, RHEL, SUSE; lib: Arch,
/// Alpine), and the sonames looked for there (OpenSSL 3 and 1.1).
const STANDARD_DIRECTORIES: [&str; 6] = [
    "/usr/lib/{arch}-linux-gnu",
    "/lib/{arch}-linux-gnu",
    "/usr/lib64",
    "/lib64",
    "/usr/lib",
    "/lib",
];
const STANDARD_SONAMES: [&str; 2] = ["libssl.so.3", "libssl.so.1.1"];

/// Whether `endpoint` is one end of a synthetic TLS connection (an address in `100::/64`,
/// which RFC 6666 reserves for discarding: no real packet carries it).
pub fn is_synthetic(endpoint: &Endpoint) -> bool {
    matches!(endpoint.ip, IpAddr::V6(ip) if ip.segments()[..4] == [0x100, 0, 0, 0])
}

/// The configured process names as the kernel's filter table.
pub(crate) fn process_names(
    names: &[String],
) -> Result<[[u8; COMM_LEN]; MAX_TLS_PROCESSES], ProbeError> {
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

/// Whether a ring-buffer record is a [`TlsEvent`] (rather than a TC segment).
pub(crate) fn is_tls_record(record: &[u8]) -> bool {
    record.len() >= SEGMENT_EVENT_LEN
        && record.get(std::mem::offset_of!(TlsEvent, family)) == Some(&FAMILY_TLS)
}

/// One TLS record → the segments of its synthetic connection: one for data, two payload-less
/// FINs (one per direction) for an `SSL_free`. `None` when the record does not make sense.
///
/// Sequence numbers: byte `o` of a direction is at `o + 1`; the event that started tracking
/// carries SYN at 0, so the client is known without a port hint.
pub(crate) fn segments_from_record<'a>(
    record: &'a [u8],
    clock: &KernelClock,
    peers: &mut TlsPeers,
    still_tracked: &dyn Fn(&TlsEvent) -> bool,
) -> Option<[Option<TcpSegment<'a>>; 2]> {
    let header = record.get(..SEGMENT_EVENT_LEN)?;
    // SAFETY: `header` has exactly size_of::<TlsEvent>() bytes and every bit pattern is a valid
    // TlsEvent (integers and byte arrays only).
    let event: TlsEvent = unsafe { std::ptr::read_unaligned(header.as_ptr().cast()) };
    let payload = record.get(SEGMENT_EVENT_LEN..)?;
    if event.family != FAMILY_TLS || payload.len() != usize::try_from(event.copied).ok()? {
        return None;
    }
    if event.offset.checked_add(event.copied)? > event.call_len {
        return None;
    }
    let (client, server) = peers.ends(&event, still_tracked);
    let ts = clock.timestamp(event.ktime_ns);
    let segment = |src, dst, seq: u32, flags, payload| TcpSegment {
        ts,
        src,
        dst,
        seq,
        ack: None,
        flags,
        payload,
        // Every direction's first byte is at 1: bytes lost before the first event seen are a gap.
        stream_start: Some(1),
    };
    if event.flags & TCP_FIN != 0 {
        if !payload.is_empty() {
            return None;
        }
        peers.forget(&event);
        let fin = TcpFlags {
            fin: true,
            ..TcpFlags::default()
        };
        return Some([
            Some(segment(
                client,
                server,
                event.stream_offset.wrapping_add(1),
                fin,
                payload,
            )),
            Some(segment(
                server,
                client,
                event.peer_offset.wrapping_add(1),
                fin,
                payload,
            )),
        ]);
    }
    let (src, dst) = match event.direction {
        DIRECTION_CLIENT_TO_SERVER => (client, server),
        DIRECTION_SERVER_TO_CLIENT => (server, client),
        _ => return None,
    };
    let syn = event.flags & TCP_SYN != 0;
    if syn && (event.direction != DIRECTION_CLIENT_TO_SERVER || event.stream_offset != 0) {
        return None;
    }
    let flags = TcpFlags {
        syn,
        ..TcpFlags::default()
    };
    // With SYN the data starts right after the SYN's own number (0), like a TFO segment.
    let seq = if syn {
        0
    } else {
        event.stream_offset.wrapping_add(1)
    };
    Some([Some(segment(src, dst, seq, flags, payload)), None])
}

/// The ends of each TLS connection whose client address was found: the real client, and a
/// synthetic server (`[100::TGID]:PORT`, the port the web server accepted it on) so that the
/// 4-tuple stays apart from the packets' own. Bounded: past `capacity` connections, new ones get
/// synthetic clients (an empty address), never a wrong one.
pub(crate) struct TlsPeers {
    known: std::collections::HashMap<(u32, u64, u64), (Endpoint, Endpoint)>,
    capacity: usize,
    proc_root: PathBuf,
    /// Connections whose client address was found, and not found (the socket was unknown or
    /// already gone).
    pub found: u64,
    pub not_found: u64,
}

impl TlsPeers {
    pub(crate) fn new(capacity: usize) -> TlsPeers {
        TlsPeers {
            known: std::collections::HashMap::new(),
            capacity,
            proc_root: PathBuf::from("/proc"),
            found: 0,
            not_found: 0,
        }
    }

    /// (client, server) of the event's connection. On the event that started tracking, the
    /// socket's peer is looked up: `/proc/TGID/fd/FD` names the socket, which is then taken
    /// only if the kernel still tracks the same connection (`still_tracked`: the web server
    /// calls `SSL_free` before it closes the socket, so the descriptor was not yet reused),
    /// and its addresses are read from `/proc/TGID/net/tcp{,6}` by inode.
    fn ends(
        &mut self,
        event: &TlsEvent,
        still_tracked: &dyn Fn(&TlsEvent) -> bool,
    ) -> (Endpoint, Endpoint) {
        let id = (event.tgid, event.ssl, event.conn_since_ns);
        if let Some(ends) = self.known.get(&id) {
            return *ends;
        }
        let synthetic = (client_endpoint(event), SERVER);
        if event.flags & TCP_SYN == 0 || event.fd == NO_FD {
            return synthetic;
        }
        let resolved = if self.known.len() < self.capacity
            && let Some(inode) = socket_inode(&self.proc_root, event.tgid, event.fd)
            && still_tracked(event)
            && let Some(ends) = socket_ends(&self.proc_root, event.tgid, inode)
        {
            Some(ends)
        } else {
            None
        };
        let Some(ends) = resolved.map(|(local, remote)| {
            let server = Endpoint {
                ip: IpAddr::V6(Ipv6Addr::new(
                    0x100,
                    0,
                    0,
                    0,
                    0,
                    0,
                    (event.tgid >> 16) as u16,
                    event.tgid as u16,
                )),
                port: local.port,
            };
            (remote, server)
        }) else {
            self.not_found += 1;
            return synthetic;
        };
        self.found += 1;
        self.known.insert(id, ends);
        ends
    }

    fn forget(&mut self, event: &TlsEvent) {
        self.known
            .remove(&(event.tgid, event.ssl, event.conn_since_ns));
    }
}

/// The inode of socket `fd` of process `tgid` (`socket:[INODE]`).
fn socket_inode(proc_root: &Path, tgid: u32, fd: u32) -> Option<u64> {
    let link = std::fs::read_link(
        proc_root
            .join(tgid.to_string())
            .join("fd")
            .join(fd.to_string()),
    )
    .ok()?;
    let link = link.to_str()?;
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// (local, remote) of the TCP socket with `inode`, from the process's own network namespace.
fn socket_ends(proc_root: &Path, tgid: u32, inode: u64) -> Option<(Endpoint, Endpoint)> {
    let net = proc_root.join(tgid.to_string()).join("net");
    ["tcp", "tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(net.join(table)).ok()?;
        text.lines()
            .skip(1)
            .find_map(|line| tcp_line_ends(line, inode))
    })
}

/// A `/proc/net/tcp{,6}` line's (local, remote) when its inode is `inode`.
fn tcp_line_ends(line: &str, inode: u64) -> Option<(Endpoint, Endpoint)> {
    // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    if fields.get(9)?.parse::<u64>().ok()? != inode {
        return None;
    }
    Some((hex_endpoint(fields.get(1)?)?, hex_endpoint(fields.get(2)?)?))
}

/// `0100007F:1F90` (IPv4) or 32 hex digits (IPv6), each 32-bit word in host byte order.
fn hex_endpoint(text: &str) -> Option<Endpoint> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        addr.get(i * 8..i * 8 + 8)
            .and_then(|w| u32::from_str_radix(w, 16).ok())
            .map(u32::to_ne_bytes)
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(std::net::Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; packets say a.b.c.d.
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some(Endpoint { ip, port })
}

/// `100::/64` plus 64 bits that stand for (process, `SSL*`, tracking start).
fn client_endpoint(event: &TlsEvent) -> Endpoint {
    let mut hasher = std::hash::DefaultHasher::new();
    (event.tgid, event.ssl, event.conn_since_ns).hash(&mut hasher);
    // Never all zero: that is the server's address.
    let id = hasher.finish() | 1;
    let [a, b, c, d] = [
        (id >> 48) as u16,
        (id >> 32) as u16,
        (id >> 16) as u16,
        id as u16,
    ];
    Endpoint {
        ip: IpAddr::V6(Ipv6Addr::new(0x100, 0, 0, 0, a, b, c, d)),
        port: CLIENT_PORT,
    }
}

/// Why TLS capture could not start; each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(
        "capture.tls.libraries: {path} cannot be read ({source}): give the path of the libssl \
         the web server loads (`grep libssl /proc/PID/maps`)"
    )]
    Library {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} has no {symbol} ({source}): it is not an OpenSSL libssl (`nm -D {path} | grep \
         SSL_read`)"
    )]
    NotOpenSsl {
        path: PathBuf,
        symbol: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error(
        "permission denied to attach uprobes to {path} ({source}): this kernel requires \
         CAP_SYS_ADMIN for uprobes (Linux 6.15.7 and later, and the stable kernels fixed for \
         CVE-2025-38466; CAP_BPF and CAP_PERFMON were enough before): run as root or grant \
         CAP_SYS_ADMIN (the shipped unit does)"
    )]
    AttachPrivilege {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attaching the uprobe on {symbol} in {path} failed: {source}")]
    Attach {
        path: PathBuf,
        symbol: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
}

/// One process with a configured name, and the libssl it maps, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServerProcess {
    pub pid: u32,
    /// Start time (see [`ProcessId`]).
    pub start: u64,
    pub comm: String,
    /// What its `/proc/PID/maps` says.
    pub libssl: MappedLibssl,
}

/// The libssl a process maps, as far as this daemon may know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MappedLibssl {
    /// Its path as the process sees it, and its inode.
    Found(PathBuf, u64),
    /// The process maps no `libssl.so*`.
    None,
    /// `/proc/PID/maps` cannot be read: another user's process, and not the privilege to read
    /// it (`CAP_SYS_PTRACE`).
    Unreadable,
}

/// Where a libssl file the uprobes sit on was found (said in the log).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LibraryOrigin {
    /// `capture.tls.libraries`.
    Configured,
    /// The dynamic loader's cache or a distribution's usual path.
    StandardLocation,
    /// The `/proc/PID/maps` of a configured process.
    MappedByProcess,
}

impl LibraryOrigin {
    fn describe(self) -> &'static str {
        match self {
            LibraryOrigin::Configured => "capture.tls.libraries",
            LibraryOrigin::StandardLocation => "standard location",
            LibraryOrigin::MappedByProcess => "mapped by a configured process",
        }
    }
}

/// Keeps the uprobes attached to every libssl the configured web servers may use: explicit
/// `libraries` and the distribution's standard files once at start, then whatever a `/proc`
/// scan finds, on every [`Self::refresh`]. A uprobe sits on the file, and the kernel filters by
/// process name, so a standard libssl covers servers this daemon cannot see in `/proc`.
pub struct TlsCapture {
    processes: Vec<String>,
    libraries: Vec<PathBuf>,
    proc_root: PathBuf,
    loaded: bool,
    /// (device, inode) → the path the uprobes were attached through.
    attached: BTreeMap<(u64, u64), PathBuf>,
    /// Whether `/proc` hides other users' processes (`hidepid`, `ProtectProc=invisible`).
    proc_hidden: bool,
    /// Whether unreadable `/proc/PID/maps` were reported.
    reported_unreadable: bool,
    /// Process names seen running at least once (to say when one appears).
    seen: BTreeSet<String>,
    /// Executables already reported as having no libssl.
    reported_without_libssl: BTreeSet<PathBuf>,
    /// Whether the "no configured process is running" warning was given.
    warned_none: bool,
    /// Processes whose maps were read (only running ones are kept).
    examined: BTreeSet<ProcessId>,
    /// Libraries the uprobes could not be attached to.
    failed: BTreeSet<(u64, u64)>,
}

impl TlsCapture {
    pub fn new(processes: Vec<String>, libraries: Vec<PathBuf>) -> TlsCapture {
        TlsCapture {
            processes,
            libraries,
            proc_root: PathBuf::from("/proc"),
            loaded: false,
            attached: BTreeMap::new(),
            proc_hidden: false,
            reported_unreadable: false,
            seen: BTreeSet::new(),
            reported_without_libssl: BTreeSet::new(),
            warned_none: false,
            examined: BTreeSet::new(),
            failed: BTreeSet::new(),
        }
    }

    /// Attaches the configured libraries (an error names the one at fault) and the standard
    /// ones (one that is not OpenSSL or cannot be attached is logged), then scans. An error
    /// means the uprobes cannot be used at all (e.g. a missing privilege: `CAP_SYS_ADMIN`, which
    /// current kernels require to attach a uprobe).
    pub fn start(&mut self, probe: &mut KernelProbe) -> Result<(), TlsError> {
        self.proc_hidden = std::fs::read_to_string(self.proc_root.join("self/mountinfo"))
            .is_ok_and(|mountinfo| proc_hides_processes(&mountinfo));
        for path in self.libraries.clone() {
            let meta = std::fs::metadata(&path).map_err(|source| TlsError::Library {
                path: path.clone(),
                source,
            })?;
            let symbols = self.attach(probe, &path, (meta.dev(), meta.ino()))?;
            log_attached(&path, LibraryOrigin::Configured, &symbols, &[]);
        }
        for path in standard_libraries() {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            let id = (meta.dev(), meta.ino());
            if self.attached.contains_key(&id) {
                continue;
            }
            match self.attach(probe, &path, id) {
                Ok(symbols) => log_attached(&path, LibraryOrigin::StandardLocation, &symbols, &[]),
                // Without the privilege no library can be attached: say that, not "none found".
                Err(err @ (TlsError::Probe(_) | TlsError::AttachPrivilege { .. })) => {
                    return Err(err);
                }
                Err(err) => {
                    self.failed.insert(id);
                    tracing::warn!(library = %path.display(), %err, "TLS capture: a libssl in a standard location cannot be attached; processes using it are not covered");
                }
            }
        }
        if self.attached.is_empty() {
            tracing::warn!(processes = ?self.processes, "TLS capture: no OpenSSL libssl found in the standard locations (the loader's cache, /usr/lib/ARCH-linux-gnu, /usr/lib64, /lib, ...): HTTPS is seen only once a configured process is found mapping one (set capture.tls.libraries to the web server's libssl otherwise)");
        }
        self.refresh(probe);
        Ok(())
    }

    /// Libraries attached so far.
    pub fn libraries(&self) -> impl Iterator<Item = &Path> {
        self.attached.values().map(PathBuf::as_path)
    }

    /// Scans `/proc` for configured processes, attaches to any libssl not yet covered, and
    /// says what it found. Problems with one process or library are logged, not fatal: the
    /// next scan tries again.
    pub fn refresh(&mut self, probe: &mut KernelProbe) {
        if self.processes.is_empty() {
            return;
        }
        let (running, found) = scan_processes(&self.proc_root, &self.processes, &self.examined);
        if running.is_empty() {
            if !self.warned_none {
                self.warn_none_running();
                self.warned_none = true;
            }
            return;
        }
        self.warned_none = false;
        // Forget processes that ended; a process is examined again only if its library could
        // not be resolved (it may be readable at the next scan).
        self.examined.retain(|id| running.contains(id));
        let mut by_library: BTreeMap<(u64, u64), (PathBuf, Vec<String>)> = BTreeMap::new();
        for process in &found {
            let (path, inode) = match &process.libssl {
                MappedLibssl::Found(path, inode) => (path, inode),
                MappedLibssl::None => {
                    self.report_without_libssl(process);
                    self.examined.insert((process.pid, process.start));
                    continue;
                }
                MappedLibssl::Unreadable => {
                    self.report_unreadable(process);
                    self.examined.insert((process.pid, process.start));
                    continue;
                }
            };
            let Some((through, id)) = self.resolve(process.pid, path, *inode) else {
                tracing::warn!(pid = process.pid, library = %path.display(), "TLS capture: the library this process maps cannot be opened from here");
                continue;
            };
            self.examined.insert((process.pid, process.start));
            by_library
                .entry(id)
                .or_insert_with(|| (through, Vec::new()))
                .1
                .push(format!("{}[{}]", process.comm, process.pid));
        }
        let mut covered = BTreeSet::new();
        for (id, (path, users)) in by_library {
            if self.attached.contains_key(&id) {
                covered.extend(users);
                continue;
            }
            // A library that failed once is not tried again (the verifier's verdict and the
            // symbols do not change): one warning, not one per scan.
            if !self.failed.insert(id) {
                continue;
            }
            match self.attach(probe, &path, id) {
                Ok(symbols) => {
                    self.failed.remove(&id);
                    covered.extend(users.iter().cloned());
                    log_attached(&path, LibraryOrigin::MappedByProcess, &symbols, &users);
                }
                Err(err) => {
                    tracing::warn!(library = %path.display(), processes = ?users, %err, "TLS capture: cannot attach; these processes are not covered (restart the daemon to try again)");
                }
            }
        }
        for process in &found {
            let user = format!("{}[{}]", process.comm, process.pid);
            if covered.contains(&user) && self.seen.insert(process.comm.clone()) {
                tracing::info!(process = %process.comm, pid = process.pid, "TLS capture: covering this web server");
            }
        }
    }

    /// Says that no configured process is seen, and what that means here: with `/proc`
    /// hiding other users' processes, they may well run (and be covered by the uprobes on the
    /// standard libssl files).
    fn warn_none_running(&self) {
        let libraries: Vec<_> = self.libraries().collect();
        match (self.proc_hidden, libraries.is_empty()) {
            (false, _) => {
                tracing::warn!(processes = ?self.processes, "TLS capture: no configured process is running; looking again every capture.tls.rescan_interval");
            }
            (true, false) => {
                tracing::info!(processes = ?self.processes, ?libraries, "TLS capture: /proc hides other users' processes from this daemon (hidepid, as systemd's ProtectProc=invisible mounts it), so whether the configured processes run cannot be seen; those that load the attached libraries are covered all the same (the kernel filters by process name)");
            }
            (true, true) => {
                tracing::warn!(processes = ?self.processes, "TLS capture: no libssl attached and /proc hides other users' processes (hidepid, ProtectProc=invisible): HTTPS is NOT seen. Set capture.tls.libraries to the web server's libssl (`grep libssl /proc/PID/maps` as root)");
            }
        }
    }

    /// Says once that configured processes were seen whose maps cannot be read.
    fn report_unreadable(&mut self, process: &ServerProcess) {
        if std::mem::replace(&mut self.reported_unreadable, true) {
            return;
        }
        let libraries: Vec<_> = self.libraries().collect();
        tracing::info!(process = %process.comm, pid = process.pid, ?libraries, "TLS capture: cannot read this process's /proc/PID/maps (another user's process; reading it needs CAP_SYS_PTRACE): it is covered if it loads one of the attached libraries, not if it loads a libssl from elsewhere (then set capture.tls.libraries)");
    }

    /// The path to attach through and the file's (device, inode): the path as the process sees
    /// it when it is the same file here, else through `/proc/PID/root` (another mount
    /// namespace, e.g. a container).
    fn resolve(&self, pid: u32, path: &Path, inode: u64) -> Option<(PathBuf, (u64, u64))> {
        if let Ok(meta) = std::fs::metadata(path)
            && meta.ino() == inode
        {
            return Some((path.to_owned(), (meta.dev(), meta.ino())));
        }
        let relative = path.strip_prefix("/").ok()?;
        let through = self
            .proc_root
            .join(pid.to_string())
            .join("root")
            .join(relative);
        let meta = std::fs::metadata(&through).ok()?;
        Some((through, (meta.dev(), meta.ino())))
    }

    fn report_without_libssl(&mut self, process: &ServerProcess) {
        let exe = self.proc_root.join(process.pid.to_string()).join("exe");
        let Ok(target) = std::fs::read_link(&exe) else {
            return;
        };
        if !self.reported_without_libssl.insert(target.clone()) {
            return;
        }
        if has_openssl_symbols(&exe) {
            tracing::warn!(process = %process.comm, pid = process.pid, exe = %target.display(), "TLS capture: this process has OpenSSL linked in statically (no libssl mapped), which is not supported: its HTTPS traffic is NOT seen. Use a build linked against the system libssl");
        } else {
            tracing::info!(process = %process.comm, pid = process.pid, exe = %target.display(), "TLS capture: this process maps no libssl (it does not terminate TLS with OpenSSL); nothing to capture in it");
        }
    }

    /// Loads the uprobe programs (once) and attaches them to `path`. `SSL_read` and
    /// `SSL_write` must exist; the `_ex` forms (OpenSSL 1.1.1+) and `SSL_free` are optional.
    fn attach(
        &mut self,
        probe: &mut KernelProbe,
        path: &Path,
        id: (u64, u64),
    ) -> Result<Vec<&'static str>, TlsError> {
        if !self.loaded {
            for (name, _, _) in TLS_PROGRAMS {
                uprobe(probe, name)?
                    .load()
                    .map_err(|source| load_error(name, source))?;
            }
            self.loaded = true;
        }
        let mut links = Vec::new();
        let mut symbols = Vec::new();
        for (name, symbol, _) in TLS_PROGRAMS {
            let program = uprobe(probe, name)?;
            let attached = program
                .attach(symbol, path, UProbeScope::AllProcesses)
                .and_then(|link| program.take_link(link));
            match attached {
                Ok(link) => {
                    links.push(link);
                    if !symbols.contains(&symbol) {
                        symbols.push(symbol);
                    }
                }
                Err(source) if matches!(symbol, "SSL_read" | "SSL_write") => {
                    let source = Box::new(source);
                    let errno = program_os_error(&source);
                    if let Some(errno) = errno.filter(|e| [libc::EACCES, libc::EPERM].contains(e)) {
                        return Err(TlsError::AttachPrivilege {
                            path: path.to_owned(),
                            source: io::Error::from_raw_os_error(errno),
                        });
                    }
                    return Err(if errno.is_some() {
                        TlsError::Attach {
                            path: path.to_owned(),
                            symbol,
                            source,
                        }
                    } else {
                        TlsError::NotOpenSsl {
                            path: path.to_owned(),
                            symbol,
                            source,
                        }
                    });
                }
                Err(err) => {
                    tracing::debug!(library = %path.display(), symbol, %err, "TLS capture: optional symbol not attached");
                }
            }
        }
        probe.tls_links.extend(links);
        self.attached.insert(id, path.to_owned());
        Ok(symbols)
    }
}

/// One log line per attached library: where it was found, and the processes seen using it.
fn log_attached(path: &Path, origin: LibraryOrigin, symbols: &[&str], processes: &[String]) {
    tracing::info!(library = %path.display(), found = origin.describe(), ?symbols, ?processes, "TLS capture: uprobes attached; every configured process mapping this file is covered, also those started later");
}

fn uprobe<'a>(probe: &'a mut KernelProbe, name: &'static str) -> Result<&'a mut UProbe, TlsError> {
    probe
        .ebpf
        .program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(TlsError::Probe(ProbeError::MissingFromObject {
            what: "TLS uprobe program",
        }))
}

fn load_error(program: &'static str, source: aya::programs::ProgramError) -> TlsError {
    TlsError::Probe(match program_os_error(&source) {
        Some(errno) if errno == libc::EPERM => ProbeError::MissingPrivilege {
            action: "load the TLS uprobes",
            capabilities: "CAP_BPF and CAP_PERFMON",
            source: io::Error::from_raw_os_error(errno),
        },
        _ => ProbeError::Verifier {
            program,
            source: Box::new(source),
        },
    })
}

/// A process, told apart from a later one with the same pid by its start time.
pub(crate) type ProcessId = (u32, u64);

/// The processes under `proc_root` whose name starts with one of `names`: all of them (ids),
/// and, with their libssl, those not in `examined` (a process's maps are read once: web
/// servers load libssl at start, and new workers are new processes).
pub(crate) fn scan_processes(
    proc_root: &Path,
    names: &[String],
    examined: &BTreeSet<ProcessId>,
) -> (BTreeSet<ProcessId>, Vec<ServerProcess>) {
    let mut running = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return (running, Vec::new());
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        // Processes come and go during the scan: a missing file just means it is gone.
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let comm = comm.trim_end_matches('\n');
        if !names.iter().any(|name| comm.starts_with(name.as_str())) {
            continue;
        }
        let Some(start) = start_time(&dir) else {
            continue;
        };
        running.insert((pid, start));
        if examined.contains(&(pid, start)) {
            continue;
        }
        let libssl = match std::fs::read_to_string(dir.join("maps")) {
            Ok(maps) => libssl_in_maps(&maps).map_or(MappedLibssl::None, |(path, inode)| {
                MappedLibssl::Found(path, inode)
            }),
            Err(err) if err.kind() == io::ErrorKind::PermissionDenied => MappedLibssl::Unreadable,
            // Gone during the scan.
            Err(_) => continue,
        };
        found.push(ServerProcess {
            pid,
            start,
            comm: comm.to_owned(),
            libssl,
        });
    }
    found.sort_by_key(|p| p.pid);
    (running, found)
}

/// Field 22 of `/proc/PID/stat`: when the process started (clock ticks since boot).
fn start_time(dir: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
    // `pid (comm) state ppid …`: the name may hold spaces and ')', so count after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// The first mapped file named `libssl.so*` in a `/proc/PID/maps` text, with its inode.
/// (`libssl3.so` is NSS, not OpenSSL, and does not match.)
pub(crate) fn libssl_in_maps(maps: &str) -> Option<(PathBuf, u64)> {
    maps.lines().find_map(|line| {
        // address perms offset dev inode path
        let mut fields = line.split_ascii_whitespace();
        let inode = fields.nth(4)?.parse::<u64>().ok()?;
        let path = fields.next()?;
        let name = Path::new(path).file_name()?.to_str()?;
        (path.starts_with('/') && name.starts_with("libssl.so"))
            .then(|| (PathBuf::from(path), inode))
    })
}

/// The distribution's OpenSSL libssl files on this host: those the dynamic loader's cache
/// names, then the usual paths; only files of this program's architecture, each file once
/// (`/lib` and `/usr/lib` are often the same directory).
pub(crate) fn standard_libraries() -> Vec<PathBuf> {
    use std::io::Read;
    let mut cache = Vec::new();
    if let Ok(file) = std::fs::File::open(LD_SO_CACHE) {
        let _ = file.take(MAX_LD_SO_CACHE).read_to_end(&mut cache);
    }
    let mut candidates = libssl_in_ld_cache(&cache);
    for dir in STANDARD_DIRECTORIES {
        let dir = PathBuf::from(dir.replace("{arch}", std::env::consts::ARCH));
        candidates.extend(STANDARD_SONAMES.iter().map(|soname| dir.join(soname)));
    }
    let Some(own) = elf_kind(Path::new("/proc/self/exe")) else {
        return Vec::new();
    };
    let mut files = BTreeSet::new();
    candidates
        .into_iter()
        .filter(|path| {
            std::fs::metadata(path).is_ok_and(|meta| {
                meta.is_file()
                    && elf_kind(path) == Some(own)
                    && files.insert((meta.dev(), meta.ino()))
            })
        })
        .collect()
}

/// An ELF file's class, byte order and machine (header bytes 4, 5, 18 and 19).
fn elf_kind(path: &Path) -> Option<[u8; 4]> {
    use std::io::Read;
    let mut header = [0u8; 20];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut header)
        .ok()?;
    (header[..4] == *b"\x7fELF").then_some([header[4], header[5], header[18], header[19]])
}

/// The `libssl.so*` paths in a dynamic loader cache (glibc's `glibc-ld.so.cache1.1` format,
/// alone or after the old format's entries); nothing for anything else (musl has no cache).
pub(crate) fn libssl_in_ld_cache(cache: &[u8]) -> Vec<PathBuf> {
    const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
    // magic and version (20), nlibs, len_strings, flags and padding, extension offset, unused.
    const HEADER: usize = 48;
    // flags (i32), key, value (string offsets), osversion (u32), hwcap (u64).
    const ENTRY: usize = 24;
    let Some(start) = cache.windows(MAGIC.len()).position(|w| w == MAGIC) else {
        return Vec::new();
    };
    // String offsets count from the start of this header.
    let data = &cache[start..];
    let word = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let text = |at: usize| {
        let bytes = data.get(at..)?;
        let end = bytes.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&bytes[..end]).ok()
    };
    let Some(count) = word(20) else {
        return Vec::new();
    };
    let mut paths = Vec::new();
    for i in 0..count {
        let entry = HEADER + i * ENTRY;
        let (Some(key), Some(value)) = (word(entry + 4), word(entry + 8)) else {
            break;
        };
        if let (Some(name), Some(path)) = (text(key), text(value))
            && name.starts_with("libssl.so")
            && path.starts_with('/')
        {
            paths.push(PathBuf::from(path));
        }
    }
    paths
}

/// Whether the `/proc` of a `/proc/self/mountinfo` text hides other users' processes
/// (`hidepid=invisible` or `noaccess`, as systemd's `ProtectProc=` mounts it).
pub(crate) fn proc_hides_processes(mountinfo: &str) -> bool {
    mountinfo
        .lines()
        .rev()
        .find_map(|line| {
            // id parent dev root mountpoint options [optional…] - fstype source superoptions
            let (mount, superblock) = line.split_once(" - ")?;
            let point = mount.split_ascii_whitespace().nth(4)?;
            let mut superblock = superblock.split_ascii_whitespace();
            (point == "/proc" && superblock.next()? == "proc")
                .then(|| superblock.nth(1).unwrap_or("").to_owned())
        })
        // The last mount on /proc is the one seen.
        .is_some_and(|options| {
            options.split(',').any(|option| {
                option
                    .strip_prefix("hidepid=")
                    .is_some_and(|level| !matches!(level, "0" | "off"))
            })
        })
}

/// Whether an executable has OpenSSL's `SSL_read` in it (read in bounded pieces).
fn has_openssl_symbols(exe: &Path) -> bool {
    use std::io::Read;
    const NEEDLE: &[u8] = b"SSL_read\0";
    let Ok(file) = std::fs::File::open(exe) else {
        return false;
    };
    let mut reader = io::BufReader::new(file.take(MAX_EXE_SCAN));
    let mut window = Vec::with_capacity(1 << 16);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        window.extend_from_slice(&chunk[..n]);
        if window.windows(NEEDLE.len()).any(|w| w == NEEDLE) {
            return true;
        }
        let keep = window.len().saturating_sub(NEEDLE.len());
        window.drain(..keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monitor_common::TlsEvent;

    const CLOCK: KernelClock = KernelClock::offset(1_700_000_000_000_000_000);

    /// The segments of one record, with no client address to be found.
    fn segments(record: &[u8]) -> Option<[Option<TcpSegment<'_>>; 2]> {
        segments_from_record(record, &CLOCK, &mut TlsPeers::new(16), &|_| false)
    }

    fn record(event: &TlsEvent, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; SEGMENT_EVENT_LEN];
        // SAFETY: `bytes` has room for one TlsEvent.
        unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr().cast(), *event) };
        bytes.extend_from_slice(payload);
        bytes
    }

    fn event(direction: u8, stream_offset: u32, copied: u32) -> TlsEvent {
        TlsEvent {
            ktime_ns: 7_000,
            stream_offset,
            call_len: copied,
            copied,
            ssl: 0x5555_0000_1234,
            tgid: 4242,
            conn_since_ns: 99,
            family: FAMILY_TLS,
            direction,
            ..TlsEvent::default()
        }
    }

    #[test]
    fn the_first_read_opens_a_synthetic_connection_with_a_syn() {
        let mut first = event(DIRECTION_CLIENT_TO_SERVER, 0, 4);
        first.flags = TCP_SYN;
        let bytes = record(&first, b"POST");
        assert!(is_tls_record(&bytes));
        let [Some(seg), None] = segments(&bytes).unwrap() else {
            panic!("one segment expected");
        };
        assert!(seg.flags.syn && !seg.flags.ack);
        assert_eq!(seg.seq, 0);
        assert_eq!(seg.payload, b"POST");
        assert_eq!(seg.dst, SERVER);
        assert!(is_synthetic(&seg.src) && is_synthetic(&seg.dst));
        assert_eq!(seg.ts.0, 1_700_000_000_000_007_000);
    }

    #[test]
    fn later_bytes_are_numbered_by_their_offset_and_replies_go_the_other_way() {
        let bytes = record(&event(DIRECTION_CLIENT_TO_SERVER, 4, 3), b" /a");
        let [Some(read), None] = segments(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(read.seq, 5);
        let bytes = record(&event(DIRECTION_SERVER_TO_CLIENT, 0, 4), b"HTTP");
        let [Some(write), None] = segments(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!((write.src, write.dst), (read.dst, read.src));
        assert_eq!(write.seq, 1);
    }

    #[test]
    fn a_reused_ssl_pointer_is_a_different_connection() {
        let a = event(DIRECTION_CLIENT_TO_SERVER, 0, 0);
        let mut b = a;
        b.conn_since_ns += 1;
        let mut c = a;
        c.tgid += 1;
        let ends: Vec<Endpoint> = [a, b, c].iter().map(client_endpoint).collect();
        assert_ne!(ends[0], ends[1]);
        assert_ne!(ends[0], ends[2]);
        assert_eq!(client_endpoint(&a), ends[0]);
    }

    #[test]
    fn ssl_free_ends_both_directions_at_their_offsets() {
        let mut end = event(DIRECTION_CLIENT_TO_SERVER, 120, 0);
        end.peer_offset = 5000;
        end.flags = TCP_FIN;
        let bytes = record(&end, b"");
        let [Some(client_fin), Some(server_fin)] = segments(&bytes).unwrap() else {
            panic!()
        };
        assert!(client_fin.flags.fin && server_fin.flags.fin);
        assert_eq!(client_fin.seq, 121);
        assert_eq!(server_fin.seq, 5001);
        assert_eq!(client_fin.dst, SERVER);
        assert_eq!(server_fin.src, SERVER);
    }

    #[test]
    fn records_that_do_not_add_up_are_rejected() {
        let e = event(DIRECTION_CLIENT_TO_SERVER, 0, 4);
        assert!(segments(&record(&e, b"POS")).is_none());
        assert!(segments(&record(&e, b"POST!")).is_none());
        let mut beyond = e;
        beyond.offset = 1;
        assert!(segments(&record(&beyond, b"POST")).is_none());
        let mut direction = e;
        direction.direction = 7;
        assert!(segments(&record(&direction, b"POST")).is_none());
        let mut late_syn = e;
        late_syn.flags = TCP_SYN;
        late_syn.stream_offset = 10;
        assert!(segments(&record(&late_syn, b"POST")).is_none());
        let mut fin_with_data = e;
        fin_with_data.flags = TCP_FIN;
        assert!(segments(&record(&fin_with_data, b"POST")).is_none());
        let bytes = record(&e, b"POST");
        assert!(segments(&bytes[..SEGMENT_EVENT_LEN - 1]).is_none());
        assert!(!is_tls_record(&bytes[..SEGMENT_EVENT_LEN - 1]));
    }

    #[test]
    fn proc_net_tcp_lines_give_both_ends_by_inode() {
        let v4 = "   3: 0100000A:01BB 0200000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1";
        let (local, remote) = tcp_line_ends(v4, 4242).unwrap();
        assert_eq!(local.to_string(), "10.0.0.1:443");
        assert_eq!(remote.to_string(), "10.0.0.2:50000");
        assert!(tcp_line_ends(v4, 4243).is_none());
        // A dual-stack listener: the IPv4 client appears as ::ffff:10.0.0.2.
        let mapped = "   0: 0000000000000000FFFF00000100000A:01BB 0000000000000000FFFF00000200000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 77 1";
        let (_, remote) = tcp_line_ends(mapped, 77).unwrap();
        assert_eq!(remote.to_string(), "10.0.0.2:50000");
        let v6 = "   0: 00000000000000000000000001000000:01BB 0000FDFD000000000000000001000000:C350 01 0:0 0:0 0 0 0 78 1";
        let (_, remote) = tcp_line_ends(v6, 78).unwrap();
        assert_eq!(remote.to_string(), "[fdfd::1]:50000");
        assert!(hex_endpoint("0100007F").is_none());
        assert!(hex_endpoint("XYZ:01BB").is_none());
    }

    #[test]
    fn the_client_address_is_taken_only_while_the_connection_is_still_tracked() {
        let root = tempfile::tempdir().unwrap();
        let proc = root.path().join("4242");
        std::fs::create_dir_all(proc.join("fd")).unwrap();
        std::fs::create_dir_all(proc.join("net")).unwrap();
        std::os::unix::fs::symlink("socket:[9001]", proc.join("fd/7")).unwrap();
        std::fs::write(
            proc.join("net/tcp"),
            "  sl  local_address rem_address   st\n   1: 0100000A:01BB 0200000A:C350 01 0:0 0:0 0 0 0 9001 1\n",
        )
        .unwrap();
        std::fs::write(proc.join("net/tcp6"), "  sl\n").unwrap();
        let mut peers = TlsPeers::new(16);
        peers.proc_root = root.path().to_owned();
        let mut first = event(DIRECTION_CLIENT_TO_SERVER, 0, 4);
        first.tgid = 4242;
        first.flags = TCP_SYN;
        first.fd = 7;
        let bytes = record(&first, b"POST");

        // Freed (and its descriptor possibly reused) before user space looked: no address.
        let [Some(seg), None] =
            segments_from_record(&bytes, &CLOCK, &mut peers, &|_| false).unwrap()
        else {
            panic!()
        };
        assert!(is_synthetic(&seg.src));
        assert_eq!(peers.not_found, 1);

        let mut later = first;
        later.conn_since_ns += 1;
        let bytes = record(&later, b"POST");
        let [Some(seg), None] =
            segments_from_record(&bytes, &CLOCK, &mut peers, &|_| true).unwrap()
        else {
            panic!()
        };
        assert_eq!(seg.src.to_string(), "10.0.0.2:50000");
        assert!(is_synthetic(&seg.dst) && seg.dst.port == 443);
        // The rest of the connection keeps those ends; its end forgets them.
        let mut reply = later;
        reply.flags = 0;
        reply.fd = NO_FD;
        reply.direction = DIRECTION_SERVER_TO_CLIENT;
        let bytes = record(&reply, b"HTTP");
        let [Some(out), None] =
            segments_from_record(&bytes, &CLOCK, &mut peers, &|_| true).unwrap()
        else {
            panic!()
        };
        assert_eq!((out.src, out.dst), (seg.dst, seg.src));
        let mut end = reply;
        end.flags = TCP_FIN;
        end.copied = 0;
        end.call_len = 0;
        segments_from_record(&record(&end, b""), &CLOCK, &mut peers, &|_| true).unwrap();
        assert!(peers.known.is_empty());
    }

    #[test]
    fn real_addresses_are_not_synthetic() {
        let real = |ip: &str| Endpoint {
            ip: ip.parse().unwrap(),
            port: 443,
        };
        assert!(!is_synthetic(&real("10.0.0.1")));
        assert!(!is_synthetic(&real("::1")));
        assert!(!is_synthetic(&real("100:0:0:1::5")));
        assert!(is_synthetic(&real("100::5")));
    }

    #[test]
    fn process_names_must_fit_the_kernel_name_field() {
        let ok = process_names(&["nginx".into(), "apache2".into()]).unwrap();
        assert_eq!(&ok[0][..6], b"nginx\0");
        assert_eq!(ok[2], [0; COMM_LEN]);
        for bad in ["", "a-name-of-16-byt"] {
            let err = process_names(&[bad.into()]).unwrap_err().to_string();
            assert!(err.contains("1 to 15 bytes"), "{err}");
        }
        let nine: Vec<String> = (0..9).map(|i| format!("p{i}")).collect();
        assert!(process_names(&nine).is_err());
    }

    #[test]
    fn libssl_is_found_in_maps_and_nss_is_not_taken_for_it() {
        let maps = "\
55d0c0a00000-55d0c0a2e000 r--p 00000000 fe:01 1311 /usr/sbin/nginx
7f1c2a000000-7f1c2a01f000 r--p 00000000 fe:01 2222 /usr/lib/x86_64-linux-gnu/libssl3.so
7f1c2b000000-7f1c2b01f000 r--p 00000000 fe:01 3333 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2c000000-7f1c2c001000 rw-p 00000000 00:00 0 
7ffd1a000000-7ffd1a021000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            libssl_in_maps(maps),
            Some((PathBuf::from("/usr/lib/x86_64-linux-gnu/libssl.so.3"), 3333))
        );
        assert_eq!(libssl_in_maps("garbage\n\n1 2 3 4 x y\n"), None);
        let deleted = "7f-8f r-xp 0 fe:01 44 /opt/ssl/lib/libssl.so.1.1 (deleted)\n";
        assert_eq!(
            libssl_in_maps(deleted),
            Some((PathBuf::from("/opt/ssl/lib/libssl.so.1.1"), 44))
        );
    }

    #[test]
    fn a_fake_proc_tree_is_scanned_by_process_name() {
        let root = tempfile::tempdir().unwrap();
        let add = |pid: u32, comm: &str, maps: &str, start: u64| {
            let dir = root.path().join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            std::fs::write(dir.join("maps"), maps).unwrap();
            let stat =
                format!("{pid} ({comm}) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0\n");
            std::fs::write(dir.join("stat"), stat).unwrap();
        };
        let ssl = "7f-8f r-xp 0 fe:01 3333 /usr/lib/libssl.so.3\n";
        add(10, "nginx", ssl, 500);
        add(11, "php-fpm8.2", "", 600);
        add(12, "curl", ssl, 700);
        std::fs::create_dir_all(root.path().join("self")).unwrap();
        let names = ["nginx".into(), "php-fpm".into()];
        let (running, found) = scan_processes(root.path(), &names, &BTreeSet::new());
        assert_eq!(running.len(), 2);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].pid, 10);
        assert_eq!(
            found[0].libssl,
            MappedLibssl::Found(PathBuf::from("/usr/lib/libssl.so.3"), 3333)
        );
        assert_eq!(found[1].comm, "php-fpm8.2");
        assert_eq!(found[1].libssl, MappedLibssl::None);

        // Examined processes' maps are not read again; a reused pid is a new process.
        let (_, again) = scan_processes(root.path(), &names, &running);
        assert!(again.is_empty());
        add(10, "nginx", ssl, 900);
        let (_, reused) = scan_processes(root.path(), &names, &running);
        assert_eq!(reused.len(), 1);
        assert_eq!((reused[0].pid, reused[0].start), (10, 900));
    }

    /// A loader cache in glibc's new format with `entries` (name, path), after `prefix`.
    fn ld_cache(prefix: &[u8], entries: &[(&str, &str)]) -> Vec<u8> {
        let mut strings = Vec::new();
        let strings_at = 48 + 24 * entries.len();
        let mut table = Vec::new();
        for (name, path) in entries {
            let mut offset = |text: &str| {
                let at = strings_at + strings.len();
                strings.extend_from_slice(text.as_bytes());
                strings.push(0);
                at as u32
            };
            let (key, value) = (offset(name), offset(path));
            table.extend_from_slice(&0x0303i32.to_ne_bytes());
            table.extend_from_slice(&key.to_ne_bytes());
            table.extend_from_slice(&value.to_ne_bytes());
            table.extend_from_slice(&[0; 12]);
        }
        let mut cache = prefix.to_vec();
        cache.extend_from_slice(b"glibc-ld.so.cache1.1");
        cache.extend_from_slice(&(entries.len() as u32).to_ne_bytes());
        cache.extend_from_slice(&(strings.len() as u32).to_ne_bytes());
        cache.extend_from_slice(&[0; 20]);
        cache.extend_from_slice(&table);
        cache.extend_from_slice(&strings);
        cache
    }

    #[test]
    fn the_loader_cache_names_the_libssl_files_and_not_nss_or_others() {
        let entries = [
            ("libssl3.so", "/lib/x86_64-linux-gnu/libssl3.so"),
            ("libssl.so.3", "/lib/x86_64-linux-gnu/libssl.so.3"),
            ("libcrypto.so.3", "/lib/x86_64-linux-gnu/libcrypto.so.3"),
            ("libssl.so.1.1", "/usr/lib64/libssl.so.1.1"),
        ];
        let want = [
            PathBuf::from("/lib/x86_64-linux-gnu/libssl.so.3"),
            PathBuf::from("/usr/lib64/libssl.so.1.1"),
        ];
        assert_eq!(libssl_in_ld_cache(&ld_cache(b"", &entries)), want);
        // After the old format's entries (older glibc writes both).
        let old = ld_cache(b"ld.so-1.7.0\0\0\0\0\0", &entries);
        assert_eq!(libssl_in_ld_cache(&old), want);
        // A cache cut short, or not a cache: what can be read, and no panic.
        let whole = ld_cache(b"", &entries);
        for len in 0..whole.len() {
            assert!(libssl_in_ld_cache(&whole[..len]).len() <= 2);
        }
        assert!(libssl_in_ld_cache(b"not a cache").is_empty());
    }

    #[test]
    fn this_hosts_standard_libssl_files_are_openssl_each_once() {
        let found = standard_libraries();
        let files: BTreeSet<_> = found
            .iter()
            .map(|p| {
                let meta = std::fs::metadata(p).unwrap();
                (meta.dev(), meta.ino())
            })
            .collect();
        assert_eq!(files.len(), found.len(), "{found:?}");
        for path in &found {
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(name.starts_with("libssl.so"), "{found:?}");
        }
        // What the loader's cache says agrees with `ldconfig -p`, where both exist.
        let (Ok(cache), Ok(listed)) = (
            std::fs::read(LD_SO_CACHE),
            std::process::Command::new("ldconfig").arg("-p").output(),
        ) else {
            return;
        };
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        let from_cache = libssl_in_ld_cache(&cache);
        eprintln!("loader cache: {from_cache:?}; standard libraries: {found:?}");
        for path in from_cache {
            assert!(
                listed.contains(&format!("=> {}\n", path.display())),
                "{path:?}"
            );
        }
    }

    #[test]
    fn a_proc_mounted_with_hidepid_is_recognised() {
        let plain = "22 27 0:21 / /proc rw,relatime shared:12 - proc proc rw\n";
        assert!(!proc_hides_processes(plain));
        let hidden =
            format!("{plain}900 22 0:88 / /proc rw,nosuid - proc proc rw,hidepid=invisible\n");
        assert!(proc_hides_processes(&hidden));
        assert!(proc_hides_processes(
            "1 0 0:5 / /proc rw - proc none rw,hidepid=2\n"
        ));
        assert!(!proc_hides_processes(
            "1 0 0:5 / /proc rw - proc none rw,hidepid=0\n"
        ));
        // Another file system's options, or proc mounted elsewhere, do not count.
        assert!(!proc_hides_processes(
            "1 0 0:5 / /proc rw - tmpfs none rw,hidepid=2\n\
             2 0 0:6 / /srv/proc rw - proc proc rw,hidepid=2\n"
        ));
    }

    #[test]
    fn a_statically_linked_openssl_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let with = dir.path().join("with");
        let mut bytes = vec![0u8; (1 << 16) - 3];
        bytes.extend_from_slice(b"SSL_read\0more");
        std::fs::write(&with, &bytes).unwrap();
        assert!(has_openssl_symbols(&with));
        let without = dir.path().join("without");
        std::fs::write(&without, b"SSL_read_ex_but_no_nul").unwrap();
        assert!(!has_openssl_symbols(&without));
        assert!(!has_openssl_symbols(&dir.path().join("missing")));
    }
}
