//! `[capture]`: where `run` gets packets and plaintext, and which of them matter. The checks
//! here are every rule the capture itself needs; `run` and `check-config` decide what to do when
//! the host cannot give what the section asks for.

use std::path::PathBuf;

use serde::Deserialize;

use super::kernel::AttachMethod;
use crate::shared::model::Span;
use crate::shared::settings::{Duration, Problem, longer_than_zero};

/// Where packets come from when the daemon runs live, and which of them matter.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CaptureConfig {
    /// How `run` captures: the eBPF probe, libpcap, or the probe with libpcap as fallback.
    pub(crate) mode: CaptureMode,
    /// Interfaces `run` watches (required for `run`; `analyze` ignores them).
    pub(crate) interfaces: Vec<String>,
    /// Ports the web server listens on: the kernel and libpcap filters watch these, and they
    /// orient connections whose start (the SYN) was not captured. `server_ports` is the old name.
    #[serde(alias = "server_ports")]
    pub(crate) ports: Vec<u16>,
    /// Size of the eBPF ring buffer between kernel and daemon: a power of two of at least 4096.
    pub(crate) ring_bytes: u32,
    /// How the eBPF probe hooks into each interface: TCX links, clsact + netlink, or auto.
    pub(crate) tc_attach: AttachMethod,
    /// Most ring records (or libpcap frames) one drain feeds before the loop does its periodic
    /// work (ticks, commits, the watchdog): under sustained load the ring is read in slices.
    pub(crate) max_drain_records: usize,
    /// Most time one drain may take, for the same reason.
    pub(crate) max_drain_time: Duration,
    /// HTTPS at the web server's OpenSSL (uprobes), alone (`mode = "tls"`) or beside the probe.
    pub(crate) tls: TlsCaptureConfig,
}

/// `[capture.tls]`: which processes' OpenSSL the uprobes watch.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TlsCaptureConfig {
    /// Capture HTTPS too, beside the TC probe: `"auto"` whenever a libssl is found and the
    /// uprobes can be attached, `true` always (or fail), `false` never. `mode = "tls"` implies it.
    pub(crate) enabled: TlsSwitch,
    /// Names of the web server processes (a name matches a process whose name starts with it;
    /// 1 to 15 bytes, at most 8): their libssl is found and only their calls are looked at.
    pub(crate) processes: Vec<String>,
    /// Users (names or numeric ids) those processes run as: a process with a configured name
    /// running as anyone else is not read, since any local user can name a process `nginx`.
    /// Names that do not exist on this host are skipped.
    pub(crate) users: Vec<String>,
    /// libssl files to attach to at start, whether or not a configured process maps them yet.
    pub(crate) libraries: Vec<PathBuf>,
    /// How often `/proc` is scanned for configured processes that use a libssl not covered yet.
    pub(crate) rescan_interval: Duration,
}

impl Default for TlsCaptureConfig {
    fn default() -> Self {
        Self {
            enabled: TlsSwitch::Auto,
            processes: ["apache2", "httpd", "nginx", "php-fpm"]
                .map(String::from)
                .to_vec(),
            // Debian's and RHEL's web server users, and root (a worker running as root can do
            // anything the probe could stop anyway).
            users: ["root", "www-data", "apache", "nginx", "http"]
                .map(String::from)
                .to_vec(),
            libraries: Vec::new(),
            rescan_interval: Duration(Span::from_secs(5)),
        }
    }
}

/// `capture.tls.enabled`: `"auto"`, `true` or `false` (the booleans of older files keep their
/// meaning).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum TlsSwitch {
    /// HTTPS too when a libssl is found and the uprobes attach; otherwise HTTP alone, said in
    /// the log (and, in mode `"auto"`, libpcap stays the fallback for HTTP).
    #[default]
    Auto,
    /// HTTPS must be captured: a probe or uprobe that cannot be used stops `run`.
    On,
    /// Never: the TC probe (or libpcap) only.
    Off,
}

impl<'de> Deserialize<'de> for TlsSwitch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = TlsSwitch;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"auto\", true or false")
            }
            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<TlsSwitch, E> {
                Ok(if on { TlsSwitch::On } else { TlsSwitch::Off })
            }
            fn visit_str<E: serde::de::Error>(self, word: &str) -> Result<TlsSwitch, E> {
                match word {
                    "auto" => Ok(TlsSwitch::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(word), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Whether and how `run` captures HTTPS through the OpenSSL uprobes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsCapturePlan {
    /// Not at all (switched off, or mode `"pcap"` with `"auto"`).
    Off,
    /// If it can: a missing libssl or uprobe is logged, and HTTP is captured anyway.
    IfPossible,
    /// It must: what stops it stops `run`.
    Required,
}

/// Ports on which clients are expected to speak HTTPS: watched without TLS capture, what they
/// carry is not seen.
pub(crate) const TLS_PORTS: [u16; 2] = [443, 8443];

impl CaptureConfig {
    /// The first watched port that carries HTTPS by convention ([`TLS_PORTS`]).
    pub(crate) fn https_port(&self) -> Option<u16> {
        self.ports.iter().copied().find(|p| TLS_PORTS.contains(p))
    }

    /// How `run` captures HTTPS, from `mode` and `tls.enabled`.
    pub(crate) fn tls_plan(&self) -> TlsCapturePlan {
        match (self.mode, self.tls.enabled) {
            (CaptureMode::Tls, _) | (_, TlsSwitch::On) => TlsCapturePlan::Required,
            (CaptureMode::Pcap, _) | (_, TlsSwitch::Off) => TlsCapturePlan::Off,
            (CaptureMode::Auto | CaptureMode::Ebpf, TlsSwitch::Auto) => TlsCapturePlan::IfPossible,
        }
    }

    /// Whether `run` tries to capture HTTPS through the OpenSSL uprobes.
    pub(crate) fn tls_on(&self) -> bool {
        self.tls_plan() != TlsCapturePlan::Off
    }
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            mode: CaptureMode::Auto,
            interfaces: Vec::new(),
            ports: vec![80, 443, 8080, 8443],
            ring_bytes: 16 << 20,
            tc_attach: AttachMethod::Auto,
            max_drain_records: 16_384,
            max_drain_time: Duration(Span::from_millis(20)),
            tls: TlsCaptureConfig::default(),
        }
    }
}

/// How the live daemon captures packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CaptureMode {
    /// The eBPF probe; libpcap when the probe cannot be loaded or attached.
    #[default]
    Auto,
    /// The eBPF probe only: an error when it cannot be loaded.
    Ebpf,
    /// libpcap only.
    Pcap,
    /// HTTPS only, through uprobes on the web server's OpenSSL (no interfaces needed).
    Tls,
}

impl CaptureConfig {
    /// What is wrong with `[capture]`, each problem keyed by its full path.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let ring = self.ring_bytes;
        if !ring.is_power_of_two() || ring < 4096 {
            problems.push(Problem::new(
                "capture.ring_bytes".into(),
                format!("{ring} is not a power of two of at least 4096 (e.g. 16777216)"),
            ));
        }
        if self.max_drain_records == 0 {
            problems.push(Problem::new(
                "capture.max_drain_records".into(),
                "must be more than zero (e.g. 16384)".into(),
            ));
        }
        longer_than_zero(
            &mut problems,
            &[("capture.max_drain_time", self.max_drain_time)],
            "20ms",
        );
        if self.ports.contains(&0) {
            problems.push(Problem::new(
                "capture.ports".into(),
                "0 is not a port".into(),
            ));
        }
        let tls = &self.tls;
        if let Some(name) = tls
            .processes
            .iter()
            .find(|n| n.is_empty() || n.len() > 15 || n.contains('\0'))
        {
            problems.push(Problem::new(
                "capture.tls.processes".into(),
                format!(
                    "{name:?} cannot match a process: the kernel keeps 1 to 15 bytes of a \
                     process name (see `cat /proc/PID/comm`)"
                ),
            ));
        }
        if tls.processes.len() > monitor_common::MAX_TLS_PROCESSES {
            problems.push(Problem::new(
                "capture.tls.processes".into(),
                format!(
                    "has {} names; at most {} fit the kernel's filter",
                    tls.processes.len(),
                    monitor_common::MAX_TLS_PROCESSES
                ),
            ));
        }
        if tls.users.len() > monitor_common::MAX_TLS_USERS {
            problems.push(Problem::new(
                "capture.tls.users".into(),
                format!(
                    "has {} users; at most {} fit the kernel's filter",
                    tls.users.len(),
                    monitor_common::MAX_TLS_USERS
                ),
            ));
        }
        if self.tls_on() && tls.users.is_empty() {
            problems.push(Problem::new(
                "capture.tls.users".into(),
                "is empty: no process would be read; name the user the web server's workers \
                 run as (`ps -o user= -C nginx`), e.g. [\"www-data\"]"
                    .into(),
            ));
        }
        if self.tls_on() && tls.processes.is_empty() {
            problems.push(Problem::new(
                "capture.tls.processes".into(),
                "is empty: name the web server processes, e.g. [\"nginx\"], or set \
                 capture.tls.enabled = false"
                    .into(),
            ));
        }
        longer_than_zero(
            &mut problems,
            &[("capture.tls.rescan_interval", tls.rescan_interval)],
            "5s",
        );
        if tls.enabled == TlsSwitch::On && self.mode == CaptureMode::Pcap {
            problems.push(Problem::new(
                "capture.tls.enabled".into(),
                "needs the eBPF probe, but capture.mode is \"pcap\": use mode \"ebpf\" or \
                 \"auto\" (or \"tls\" for HTTPS only)"
                    .into(),
            ));
        }
        problems
    }
}
