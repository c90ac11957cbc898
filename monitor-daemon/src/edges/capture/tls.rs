//! HTTPS capture at the web server's OpenSSL: finds the libssl files (the distribution's
//! standard ones, and whatever the configured processes map when their `/proc/PID/maps` can be
//! read) and attaches the uprobes of `monitor-ebpf` (`tls.rs`) once per library file. Their
//! records reach the ring the TC probe writes to, and [`super::records`] turns them into
//! segments of synthetic connections. It reads `/proc` (discovery); it never sees a raw token.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use aya::programs::UProbe;
use aya::programs::uprobe::UProbeScope;
use monitor_common::TLS_PROGRAMS;

use super::kernel::{KernelProbe, ProbeError, program_os_error};

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
    pub(crate) pid: u32,
    /// Start time (see [`ProcessId`]).
    pub(crate) start: u64,
    pub(crate) comm: String,
    /// What its `/proc/PID/maps` says.
    pub(crate) libssl: MappedLibssl,
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
    pub(crate) fn refresh(&mut self, probe: &mut KernelProbe) {
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

/// The user ids of `capture.tls.users`: numeric ids as they are, names looked up in the
/// system's user database. Names this host does not have are skipped; when none is left, the
/// log says so (HTTPS is then not read, and the coverage check reports the handshakes).
pub(crate) fn resolve_users(names: &[String]) -> Vec<u32> {
    let mut uids = Vec::new();
    let mut missing = Vec::new();
    for name in names {
        match name.parse::<u32>().ok().or_else(|| uid_of(name)) {
            Some(uid) if !uids.contains(&uid) => uids.push(uid),
            Some(_) => {}
            None => missing.push(name.as_str()),
        }
    }
    if uids.is_empty() {
        tracing::warn!(
            ?missing,
            "none of capture.tls.users exists on this host, so no HTTPS is read: name the user the web server's workers run as (`ps -o user= -C nginx`)"
        );
    } else {
        tracing::info!(?uids, skipped = ?missing, "TLS capture reads only processes running as these users (capture.tls.users)");
    }
    uids
}

/// A user's id from the system's user database (`getpwnam_r`).
fn uid_of(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a zeroed passwd is a valid out-parameter; the buffer outlives the call and its
    // length is passed; only the uid (not the buffer's strings) is read afterwards.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found = std::ptr::null_mut();
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        )
    };
    (rc == 0 && !found.is_null()).then_some(pwd.pw_uid)
}

#[cfg(test)]
mod tests {
    #[test]
    fn users_are_names_or_ids_and_unknown_names_are_skipped() {
        let names = ["root", "33", "no-such-user-here", "0"].map(String::from);
        assert_eq!(resolve_users(&names), vec![0, 33]);
        assert!(resolve_users(&["no-such-user-here".into()]).is_empty());
    }

    use super::*;

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
