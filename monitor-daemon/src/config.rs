//! The daemon's configuration: TOML in, validated per-stage settings out.
//!
//! One section per pipeline component, each with `deny_unknown_fields` and its defaults in one
//! place (the `Default` impls below). [`Config::load`] parses and validates once; stages never see
//! TOML. Errors name the key path and what was expected, so that an admin can fix the file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

use crate::model::Span;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub site: SiteConfig,
    pub capture: CaptureConfig,
    pub reassembly: ReassemblyConfig,
    pub http: HttpConfig,
    pub redcap: RedcapConfig,
    pub policy: PolicyConfig,
    pub health: crate::health::HealthConfig,
    pub enforcement: crate::policy::enforce::EnforcementConfig,
    pub output: OutputConfig,
    pub store: StoreConfig,
    pub alerts: AlertsConfig,
    pub hooks: HooksConfig,
    pub api: crate::api::ApiConfig,
}

/// Where the site's secrets live.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    /// Key for token fingerprints; created (32 random bytes, mode 0600) if absent.
    pub key_file: PathBuf,
}

impl Default for SiteConfig {
    fn default() -> Self {
        Self {
            key_file: PathBuf::from("/var/lib/redcap-monitor/site.key"),
        }
    }
}

/// Where packets come from when the daemon runs live, and which of them matter.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// How `run` captures: the eBPF probe, libpcap, or the probe with libpcap as fallback.
    pub mode: CaptureMode,
    /// Interfaces `run` watches (required for `run`; `analyze` ignores them).
    pub interfaces: Vec<String>,
    /// Ports the web server listens on: the kernel and libpcap filters watch these, and they
    /// orient connections whose start (the SYN) was not captured. `server_ports` is the old name.
    #[serde(alias = "server_ports")]
    pub ports: Vec<u16>,
    /// Size of the eBPF ring buffer between kernel and daemon: a power of two of at least 4096.
    pub ring_bytes: u32,
    /// How the eBPF probe hooks into each interface: TCX links, clsact + netlink, or auto.
    pub tc_attach: crate::capture::kernel::AttachMethod,
    /// HTTPS at the web server's OpenSSL (uprobes), alone (`mode = "tls"`) or beside the probe.
    pub tls: TlsCaptureConfig,
}

/// `[capture.tls]`: which processes' OpenSSL the uprobes watch.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsCaptureConfig {
    /// Capture HTTPS too, beside the TC probe: `"auto"` whenever a libssl is found and the
    /// uprobes can be attached, `true` always (or fail), `false` never. `mode = "tls"` implies it.
    pub enabled: TlsSwitch,
    /// Names of the web server processes (a name matches a process whose name starts with it;
    /// 1 to 15 bytes, at most 8): their libssl is found and only their calls are looked at.
    pub processes: Vec<String>,
    /// libssl files to attach to at start, whether or not a configured process maps them yet.
    pub libraries: Vec<PathBuf>,
    /// How often `/proc` is scanned for configured processes that use a libssl not covered yet.
    pub rescan_interval: Duration,
}

impl Default for TlsCaptureConfig {
    fn default() -> Self {
        Self {
            enabled: TlsSwitch::Auto,
            processes: ["apache2", "httpd", "nginx", "php-fpm"]
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
pub enum TlsSwitch {
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
pub enum TlsCapturePlan {
    /// Not at all (switched off, or mode `"pcap"` with `"auto"`).
    Off,
    /// If it can: a missing libssl or uprobe is logged, and HTTP is captured anyway.
    IfPossible,
    /// It must: what stops it stops `run`.
    Required,
}

/// Ports on which clients are expected to speak HTTPS: watched without TLS capture, what they
/// carry is not seen.
pub const TLS_PORTS: [u16; 2] = [443, 8443];

impl CaptureConfig {
    /// The first watched port that carries HTTPS by convention ([`TLS_PORTS`]).
    pub fn https_port(&self) -> Option<u16> {
        self.ports.iter().copied().find(|p| TLS_PORTS.contains(p))
    }

    /// How `run` captures HTTPS, from `mode` and `tls.enabled`.
    pub fn tls_plan(&self) -> TlsCapturePlan {
        match (self.mode, self.tls.enabled) {
            (CaptureMode::Tls, _) | (_, TlsSwitch::On) => TlsCapturePlan::Required,
            (CaptureMode::Pcap, _) | (_, TlsSwitch::Off) => TlsCapturePlan::Off,
            (CaptureMode::Auto | CaptureMode::Ebpf, TlsSwitch::Auto) => TlsCapturePlan::IfPossible,
        }
    }

    /// Whether `run` tries to capture HTTPS through the OpenSSL uprobes.
    pub fn tls_on(&self) -> bool {
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
            tc_attach: crate::capture::kernel::AttachMethod::Auto,
            tls: TlsCaptureConfig::default(),
        }
    }
}

/// How the live daemon captures packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMode {
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

/// Where the live daemon writes its records and counters.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Call records (JSONL, appended); `-` for stdout; absent for none.
    pub calls: Option<PathBuf>,
    /// Violation records (JSONL, appended); `-` for stdout; absent for none.
    pub violations: Option<PathBuf>,
    /// Enforcement decisions (JSONL, appended); `-` for stdout; absent for none.
    pub decisions: Option<PathBuf>,
    /// A JSON object with every counter, replaced each `stats_interval` and at exit.
    pub stats: Option<PathBuf>,
    /// How often the counters are logged (and the stats file rewritten).
    pub stats_interval: Duration,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            calls: None,
            violations: None,
            decisions: None,
            stats: None,
            stats_interval: Duration(Span::from_secs(60)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReassemblyConfig {
    pub max_connections: usize,
    pub max_buffered_bytes_per_direction: usize,
    pub max_buffered_bytes_total: usize,
    pub idle_timeout: Duration,
}

impl Default for ReassemblyConfig {
    fn default() -> Self {
        Self {
            max_connections: 65_536,
            max_buffered_bytes_per_direction: 1 << 20,
            max_buffered_bytes_total: 256 << 20,
            idle_timeout: Duration(Span::from_secs(120)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_pending_requests: usize,
    /// Work cap for decoding one gzip/deflate response body.
    pub max_decoded_body_bytes: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let d = crate::http::HttpLimits::default();
        Self {
            max_head_bytes: d.max_head_bytes,
            max_headers: d.max_headers,
            max_pending_requests: d.max_pending_requests,
            max_decoded_body_bytes: d.max_decoded_body_bytes,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedcapConfig {
    /// Path patterns of the API endpoint: `**` any characters, `*` any but `/`.
    pub api_paths: Vec<String>,
    /// PHP's `max_input_vars` on the web server: bodies are read as PHP reads them with it.
    pub max_input_vars: u64,
}

impl Default for RedcapConfig {
    fn default() -> Self {
        Self {
            api_paths: crate::redcap::DEFAULT_API_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            max_input_vars: crate::redcap::DEFAULT_MAX_INPUT_VARS,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// How long a finished call may wait for earlier-started calls before rules see it, so that
    /// windows are evaluated in request order even when responses finish out of order.
    pub reorder_window: Duration,
    pub heavy: HeavyConfig,
    pub rules: Vec<RuleConfig>,
    /// Tokens held to other limits (a registered bulk job) or exempt (an admin or service token),
    /// named by fingerprint.
    pub overrides: Vec<OverrideConfig>,
    /// Most tokens with rate windows in memory; past it the least recently seen are evicted
    /// (counted as `policy.evicted_tokens`).
    pub max_tokens: usize,
    /// Most client addresses whose refused calls (401/403 for a token not otherwise seen) are
    /// counted; such calls never get per-token state, so random tokens cannot grow memory.
    pub max_refused_clients: usize,
    /// `[policy.refused_calls]`: refused calls per client address before it is a violation
    /// (probing for tokens); absent, the `calls = "all"` rule's limit and window.
    pub refused_calls: Option<crate::policy::RefusedCallsRule>,
}

/// `[[policy.overrides]]`: one token's own limits, or its exemption from every rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideConfig {
    /// The token's fingerprint (16 hex digits, from `redcap-monitor fingerprint`), never the
    /// token itself.
    pub token_fp: String,
    /// Who or what the token is, for people reading the file.
    #[serde(default)]
    pub note: String,
    /// No rule applies to this token.
    #[serde(default)]
    pub exempt: bool,
    /// Rule name → this token's limit for it (other rules keep their limit).
    #[serde(default)]
    pub limits: std::collections::BTreeMap<String, u32>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            reorder_window: Duration(Span::from_secs(120)),
            heavy: HeavyConfig::default(),
            rules: vec![
                RuleConfig {
                    name: "api_calls".into(),
                    calls: CallClass::All,
                    limit: 3,
                    window: Duration(Span::from_secs(60)),
                },
                RuleConfig {
                    name: "heavy_calls".into(),
                    calls: CallClass::Heavy,
                    limit: 1,
                    window: Duration(Span::from_secs(300)),
                },
            ],
            overrides: Vec::new(),
            max_tokens: 100_000,
            max_refused_clients: 10_000,
            refused_calls: None,
        }
    }
}

/// What makes a call heavy.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeavyConfig {
    /// A call whose decoded response is larger than this is heavy.
    pub response_bytes: u64,
    /// Request kinds that are heavy whatever their size.
    pub kinds: Vec<HeavyKind>,
}

impl Default for HeavyConfig {
    fn default() -> Self {
        Self {
            response_bytes: 500_000,
            kinds: vec![
                HeavyKind::UnfilteredRecordExport,
                HeavyKind::Report,
                HeavyKind::Log,
                HeavyKind::ProjectXml,
                HeavyKind::PdfAllRecords,
                HeavyKind::FileExport,
            ],
        }
    }
}

/// A request kind that needs heavy server work or returns a large answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeavyKind {
    /// `content=record` export with neither `records` nor `filterLogic`.
    UnfilteredRecordExport,
    Report,
    Log,
    /// `content=project_xml` unless `returnMetadataOnly` is true.
    ProjectXml,
    PdfAllRecords,
    /// `content=file` or `fileRepository` export.
    FileExport,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Names the rule in violation records.
    pub name: String,
    /// Which calls the rule counts.
    #[serde(default)]
    pub calls: CallClass,
    /// Most calls allowed in any window.
    pub limit: u32,
    pub window: Duration,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallClass {
    #[default]
    All,
    Heavy,
}

/// The durable state: suspensions, audit log, alert outbox, tokens first/last seen.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The store file; its directory is created with mode 0700 and the file with 0600.
    pub path: PathBuf,
    /// Audit records (and tokens not seen) older than this are pruned.
    pub audit_retention: Duration,
    /// Most alerts waiting for delivery; past it the oldest is dropped (and audited).
    pub max_outbox: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/redcap-monitor/state.redb"),
            audit_retention: Duration(Span::from_secs(90 * 86_400)),
            max_outbox: 10_000,
        }
    }
}

/// A duration written like `90s`, `5m`, `2h`, `1d`, `250ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duration(pub Span);

impl Duration {
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{text}` has no unit: write e.g. `60s`, `5m`, `2h`"))?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` does not start with a whole number"))?;
        let nanos_per_unit: u64 = match unit.trim() {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            other => {
                return Err(format!(
                    "unknown unit `{other}` in `{text}`: use ms, s, m, h or d"
                ));
            }
        };
        number
            .checked_mul(nanos_per_unit)
            .map(|n| Duration(Span(n)))
            .ok_or_else(|| format!("`{text}` is too long"))
    }

    pub fn span(self) -> Span {
        self.0
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

/// One thing wrong in a configuration: the key path at fault and what is expected there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// e.g. `policy.rules[1].limit`.
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: String, message: String) -> Problem {
        Problem { key, message }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

/// A configuration that cannot be used, with every problem found in it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML at all; the message carries the line and column.
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// Keys or values that are wrong, each with its key path (never empty).
    #[error("{path}: {}", list_problems(problems))]
    Problems {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list_problems(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut text = format!("{} problems:", many.len());
            for problem in many {
                text.push_str("\n  ");
                text.push_str(&problem.to_string());
            }
            text
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `origin` names it in errors. Reports every
    /// problem it can find, sections in alphabetical order: each top-level section is read on
    /// its own (a wrong key or type stops only its section), then, once all could be read, every
    /// value is checked.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|err| ConfigError::Syntax {
            path: origin.to_owned(),
            message: err.to_string(),
        })?;
        let mut problems = Vec::new();
        for (name, value) in &table {
            // A table holding only this section, read as a whole configuration: the other
            // sections stand at their defaults, and an unknown section is an unknown field.
            let alone = toml::Table::from_iter([(name.clone(), value.clone())]);
            if let Err(problem) = read::<Config>(toml::Value::Table(alone)) {
                problems.push(problem);
            }
        }
        let config = if problems.is_empty() {
            read::<Config>(toml::Value::Table(table)).map_err(|problem| vec![problem])
        } else {
            Err(problems)
        }
        .and_then(|config| match config.problems() {
            found if found.is_empty() => Ok(config),
            found => Err(found),
        });
        config.map_err(|problems| ConfigError::Problems {
            path: origin.to_owned(),
            problems,
        })
    }

    /// The keys that differ between `self` (running) and `new` and cannot change while `run`
    /// runs: they shape the capture, the stages' buffers, the fingerprints or the store. Empty
    /// when everything that changed can be applied live.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (&self.capture, &new.capture);
        [
            ("capture.mode", a.mode != b.mode),
            ("capture.interfaces", a.interfaces != b.interfaces),
            ("capture.ports", a.ports != b.ports),
            ("capture.ring_bytes", a.ring_bytes != b.ring_bytes),
            ("capture.tc_attach", a.tc_attach != b.tc_attach),
            ("site", self.site != new.site),
            ("reassembly", self.reassembly != new.reassembly),
            ("http", self.http != new.http),
            ("redcap", self.redcap != new.redcap),
            ("store", self.store != new.store),
            ("api", self.api != new.api),
            ("capture.tls", a.tls != b.tls),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    /// Every problem with the values (the types are already right), in file order.
    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if let Err(err) = crate::redcap::ApiPaths::new(&self.redcap.api_paths) {
            problems.push(Problem::new("redcap.api_paths".into(), err.to_string()));
        }
        if self.redcap.api_paths.is_empty() {
            problems.push(Problem::new(
                "redcap.api_paths".into(),
                "is empty: no request would count as an API call".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, rule) in self.policy.rules.iter().enumerate() {
            let key = |field: &str| format!("policy.rules[{i}].{field}");
            if rule.name.is_empty() || !names.insert(rule.name.as_str()) {
                problems.push(Problem::new(
                    key("name"),
                    "must be a non-empty name unique among the rules".into(),
                ));
            }
            if rule.window.span().0 == 0 {
                problems.push(Problem::new(
                    key("window"),
                    "must be longer than zero, e.g. `60s`".into(),
                ));
            }
            if rule.limit >= crate::policy::MAX_HELD {
                problems.push(too_high_a_limit(key("limit")));
            }
        }
        if let Some(rule) = &self.policy.refused_calls {
            problems.extend(rule.problems());
        }
        let mut overridden = std::collections::HashSet::new();
        for (i, o) in self.policy.overrides.iter().enumerate() {
            let key = |field: &str| format!("policy.overrides[{i}].{field}");
            // The value is not echoed: a raw token pasted here must not reach a log.
            let Ok(fp) = o.token_fp.parse::<crate::token::TokenFingerprint>() else {
                problems.push(Problem::new(
                    key("token_fp"),
                    "must be a token fingerprint, 16 hex digits as `redcap-monitor fingerprint` \
                     prints them (never the token itself)"
                        .into(),
                ));
                continue;
            };
            if !overridden.insert(fp) {
                problems.push(Problem::new(
                    key("token_fp"),
                    format!("{fp} has an earlier override"),
                ));
            }
            match (o.exempt, o.limits.is_empty()) {
                (true, false) => {
                    problems.push(Problem::new(
                        key("limits"),
                        "an exempt token has no limits: drop `limits` or `exempt`".into(),
                    ));
                }
                (false, true) => {
                    problems.push(Problem::new(
                        key("limits"),
                        "is empty: give the token limits, e.g. { api_calls = 30 }, or set \
                         `exempt = true`"
                            .into(),
                    ));
                }
                _ => {}
            }
            if o.limits
                .values()
                .any(|&limit| limit >= crate::policy::MAX_HELD)
            {
                problems.push(too_high_a_limit(key("limits")));
            }
            if let Some(unknown) = o.limits.keys().find(|name| !names.contains(name.as_str())) {
                problems.push(Problem::new(
                    key("limits"),
                    format!(
                        "names no rule `{unknown}`; the rules are {}",
                        self.policy
                            .rules
                            .iter()
                            .map(|r| r.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        let h = &self.health;
        for (key, span) in [("health.interval", h.interval), ("health.window", h.window)] {
            if span.span().0 == 0 {
                problems.push(Problem::new(
                    key.into(),
                    "must be longer than zero, e.g. `10s`".into(),
                ));
            }
        }
        for (key, share) in [
            ("health.server_error_share_max", h.server_error_share_max),
            ("health.baseline_weight", h.baseline_weight),
        ] {
            if !(0.0..=1.0).contains(&share) {
                problems.push(Problem::new(
                    key.into(),
                    "must be a share between 0 and 1".into(),
                ));
            }
        }
        let canary = &h.canary;
        if let Some(url) = &canary.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            problems.push(Problem::new(
                "health.canary.url".into(),
                "must start with http:// or https://, e.g. \"https://redcap.example.org/redcap/\""
                    .into(),
            ));
        }
        for (key, span) in [
            ("health.canary.interval", canary.interval),
            ("health.canary.timeout", canary.timeout),
        ] {
            if span.span().0 == 0 {
                problems.push(Problem::new(
                    key.into(),
                    "must be longer than zero, e.g. `10s`".into(),
                ));
            }
        }
        if canary.timeout.span() > canary.interval.span() {
            problems.push(Problem::new(
                "health.canary.timeout".into(),
                "must not be longer than health.canary.interval".into(),
            ));
        }
        let e = &self.enforcement;
        if !(0.0..=1.0).contains(&e.min_load_share) {
            problems.push(Problem::new(
                "enforcement.min_load_share".into(),
                "must be a share between 0 and 1".into(),
            ));
        }
        if e.suspension_factor < 1.0 || !e.suspension_factor.is_finite() {
            problems.push(Problem::new(
                "enforcement.suspension_factor".into(),
                "must be at least 1.0".into(),
            ));
        }
        if h.baseline_factor < 1.0 || !h.baseline_factor.is_finite() {
            problems.push(Problem::new(
                "health.baseline_factor".into(),
                "must be at least 1.0".into(),
            ));
        }
        let ring = self.capture.ring_bytes;
        if !ring.is_power_of_two() || ring < 4096 {
            problems.push(Problem::new(
                "capture.ring_bytes".into(),
                format!("{ring} is not a power of two of at least 4096 (e.g. 16777216)"),
            ));
        }
        if self.capture.ports.contains(&0) {
            problems.push(Problem::new(
                "capture.ports".into(),
                "0 is not a port".into(),
            ));
        }
        let tls = &self.capture.tls;
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
        if self.capture.tls_on() && tls.processes.is_empty() {
            problems.push(Problem::new(
                "capture.tls.processes".into(),
                "is empty: name the web server processes, e.g. [\"nginx\"], or set \
                 capture.tls.enabled = false"
                    .into(),
            ));
        }
        if tls.rescan_interval.span().0 == 0 {
            problems.push(Problem::new(
                "capture.tls.rescan_interval".into(),
                "must be longer than zero, e.g. `5s`".into(),
            ));
        }
        if tls.enabled == TlsSwitch::On && self.capture.mode == CaptureMode::Pcap {
            problems.push(Problem::new(
                "capture.tls.enabled".into(),
                "needs the eBPF probe, but capture.mode is \"pcap\": use mode \"ebpf\" or \
                 \"auto\" (or \"tls\" for HTTPS only)"
                    .into(),
            ));
        }
        if self.output.stats_interval.span().0 == 0 {
            problems.push(Problem::new(
                "output.stats_interval".into(),
                "must be longer than zero, e.g. `60s`".into(),
            ));
        }
        let positive = [
            (
                "reassembly.max_connections",
                self.reassembly.max_connections,
            ),
            (
                "reassembly.max_buffered_bytes_per_direction",
                self.reassembly.max_buffered_bytes_per_direction,
            ),
            ("http.max_head_bytes", self.http.max_head_bytes),
            ("http.max_headers", self.http.max_headers),
            ("http.max_pending_requests", self.http.max_pending_requests),
            (
                "redcap.max_input_vars",
                usize::try_from(self.redcap.max_input_vars).unwrap_or(usize::MAX),
            ),
            ("health.enter_after", h.enter_after as usize),
            ("health.leave_after", h.leave_after as usize),
            ("health.max_samples", h.max_samples),
            ("policy.max_tokens", self.policy.max_tokens),
            (
                "policy.max_refused_clients",
                self.policy.max_refused_clients,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                problems.push(Problem::new(key.into(), "must be at least 1".into()));
            }
        }
        if self.store.audit_retention.span().0 == 0 {
            problems.push(Problem::new(
                "store.audit_retention".into(),
                "must be longer than zero, e.g. `90d`".into(),
            ));
        }
        if self.store.max_outbox == 0 {
            problems.push(Problem::new(
                "store.max_outbox".into(),
                "must be at least 1".into(),
            ));
        }
        self.alerts.check(&mut problems);
        self.hooks.check(&mut problems);
        if let Err((key, message)) = self.api.validate() {
            problems.push(Problem::new(key, message));
        }
        problems
    }
}

/// A window counts at most `MAX_HELD` calls per token, so a limit at or above it never triggers.
fn too_high_a_limit(key: String) -> Problem {
    Problem::new(
        key,
        format!(
            "must be below {} calls per window (a window holds at most that many calls of one \
             token); use a shorter window for a higher rate",
            crate::policy::MAX_HELD
        ),
    )
}

/// Reads `value` as a `T`; an error carries its full key path (`policy.rules[1].limit`).
fn read<T: serde::de::DeserializeOwned>(value: toml::Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|err| {
        let key = err.path().to_string();
        // toml appends "in `key`" lines; the key path already says where.
        let message = err.into_inner().to_string();
        let message = message.lines().next().unwrap_or_default().to_owned();
        Problem::new(key, message)
    })
}

/// Alert webhooks to the admin team.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Repeated alerts for one token and rule within this time are counted, not sent; the next
    /// one sent says how many it stands for.
    pub cooldown: Duration,
    /// Attempts per alert and sink before it is given up (recorded).
    pub max_attempts: u32,
    /// Retry delays grow from `backoff_base` doubling up to `backoff_cap`, with full jitter.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Time allowed for one delivery attempt (connect, send, answer).
    pub request_timeout: Duration,
    /// Undelivered alerts held at most; past it new alerts are refused (counted).
    pub max_queued: usize,
    pub sinks: Vec<SinkConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            cooldown: Duration(Span::from_secs(15 * 60)),
            max_attempts: 12,
            backoff_base: Duration(Span::from_secs(1)),
            backoff_cap: Duration(Span::from_secs(10 * 60)),
            request_timeout: Duration(Span::from_secs(10)),
            max_queued: 10_000,
            sinks: Vec::new(),
        }
    }
}

/// One webhook that receives alerts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Names the sink in logs and delivery records (the URL itself is a secret).
    pub name: String,
    pub kind: SinkKind,
    pub url: WebhookUrl,
    /// `generic` only: a file holding the Standard Webhooks secret, `whsec_<base64>`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Which alerts go to this sink; all of them when absent.
    #[serde(default = "crate::alerts::AlertKind::all")]
    pub events: Vec<crate::alerts::AlertKind>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// Slack incoming webhook: Block Kit blocks with a `text` fallback.
    Slack,
    /// Microsoft Teams Workflows webhook: a message with an Adaptive Card.
    Teams,
    /// Any HTTP endpoint: a JSON envelope signed with the Standard Webhooks headers.
    Generic,
}

/// A webhook URL. Slack and Teams URLs carry their credential, so `Debug` shows only the
/// scheme and host.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct WebhookUrl(pub String);

impl WebhookUrl {
    /// `scheme://host[:port]`, safe to log.
    pub fn origin(&self) -> &str {
        let after_scheme = self.0.find("://").map_or(0, |i| i + 3);
        let end = self.0[after_scheme..]
            .find(['/', '?', '#'])
            .map_or(self.0.len(), |i| after_scheme + i);
        // Userinfo (`user:pass@host`) is a credential too.
        match self.0[after_scheme..end].rfind('@') {
            Some(_) => &self.0[..after_scheme],
            None => &self.0[..end],
        }
    }

    fn check(&self) -> Result<(), String> {
        let host = self
            .0
            .strip_prefix("https://")
            .or_else(|| self.0.strip_prefix("http://"))
            .ok_or("must start with https:// (or http://)")?;
        if host.is_empty() || host.starts_with('/') {
            return Err("names no host".into());
        }
        if self.0.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces or control characters".into());
        }
        Ok(())
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({}/…)", self.origin())
    }
}

impl AlertsConfig {
    fn check(&self, problems: &mut Vec<Problem>) {
        let positive = [
            ("alerts.max_attempts", self.max_attempts as usize),
            ("alerts.max_queued", self.max_queued),
            ("alerts.backoff_base", self.backoff_base.span().0 as usize),
            (
                "alerts.request_timeout",
                self.request_timeout.span().0 as usize,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                problems.push(Problem::new(key.into(), "must be more than zero".into()));
            }
        }
        if self.backoff_cap.span() < self.backoff_base.span() {
            problems.push(Problem::new(
                "alerts.backoff_cap".into(),
                "must be at least alerts.backoff_base".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let key = |field: &str| format!("alerts.sinks[{i}].{field}");
            if sink.name.is_empty() || !names.insert(sink.name.as_str()) {
                problems.push(Problem::new(
                    key("name"),
                    "must be a non-empty name unique among the sinks".into(),
                ));
            }
            if let Err(message) = sink.url.check() {
                problems.push(Problem::new(key("url"), message));
            }
            match (sink.kind, &sink.secret_file) {
                (SinkKind::Generic, None) => {
                    problems.push(Problem::new(
                        key("secret_file"),
                        "is required for a generic sink: a file holding `whsec_<base64>`".into(),
                    ));
                }
                (SinkKind::Slack | SinkKind::Teams, Some(_)) => {
                    problems.push(Problem::new(
                        key("secret_file"),
                        "applies only to generic sinks (Slack and Teams URLs carry their own secret)"
                            .into(),
                    ));
                }
                _ => {}
            }
            if sink.events.is_empty() {
                problems.push(Problem::new(
                    key("events"),
                    "is empty: leave it out to receive every alert".into(),
                ));
            }
        }
    }
}

/// Programs and URLs told about suspensions and lifts.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Run, in order, when a token is suspended.
    pub suspend: Vec<HookConfig>,
    /// Run, in order, when a suspension is lifted (by expiry or by hand).
    pub lift: Vec<HookConfig>,
}

impl HooksConfig {
    /// Whether some suspend hook gets the raw token (`pass_raw_token`, exec hooks only): only
    /// then do calls keep their raw token until a decision is acted on.
    pub fn suspend_wants_raw_token(&self) -> bool {
        self.suspend
            .iter()
            .any(|h| h.pass_raw_token && h.kind == HookKind::Exec)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Names the hook in outcome records.
    pub name: String,
    pub kind: HookKind,
    /// `exec`: the program to run (an absolute path; no shell is involved).
    #[serde(default)]
    pub program: Option<PathBuf>,
    /// `exec`: its arguments, with placeholders `{fingerprint}`, `{masked}`, `{action}`,
    /// `{until}`, `{reason}`.
    #[serde(default)]
    pub args: Vec<String>,
    /// `http`: where the event is POSTed as JSON.
    #[serde(default)]
    pub url: Option<WebhookUrl>,
    /// After this the program is killed (with its process group) or the request abandoned.
    #[serde(default = "HookConfig::default_timeout")]
    pub timeout: Duration,
    /// `exec` only: add the raw token to the JSON on stdin (never argv or the environment).
    #[serde(default)]
    pub pass_raw_token: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    Exec,
    Http,
}

impl HookConfig {
    fn default_timeout() -> Duration {
        Duration(Span::from_secs(30))
    }
}

impl HooksConfig {
    fn check(&self, problems: &mut Vec<Problem>) {
        for (list, hooks) in [("suspend", &self.suspend), ("lift", &self.lift)] {
            let mut names = std::collections::HashSet::new();
            for (i, hook) in hooks.iter().enumerate() {
                let key = |field: &str| format!("hooks.{list}[{i}].{field}");
                if hook.name.is_empty() || !names.insert(hook.name.as_str()) {
                    problems.push(Problem::new(
                        key("name"),
                        format!("must be a non-empty name unique among hooks.{list}"),
                    ));
                }
                if hook.timeout.span().0 == 0 {
                    problems.push(Problem::new(
                        key("timeout"),
                        "must be longer than zero, e.g. `30s`".into(),
                    ));
                }
                match hook.kind {
                    HookKind::Exec => {
                        match &hook.program {
                            Some(p) if p.is_absolute() => {}
                            _ => {
                                problems.push(Problem::new(
                                    key("program"),
                                    "an exec hook needs the absolute path of a program".into(),
                                ));
                            }
                        }
                        if hook.url.is_some() {
                            problems.push(Problem::new(
                                key("url"),
                                "applies only to http hooks".into(),
                            ));
                        }
                        for (j, arg) in hook.args.iter().enumerate() {
                            if let Err(message) = crate::hooks::check_template(arg) {
                                problems.push(Problem::new(key(&format!("args[{j}]")), message));
                            }
                        }
                    }
                    HookKind::Http => {
                        match &hook.url {
                            None => problems.push(Problem::new(
                                key("url"),
                                "an http hook needs a url to POST to".into(),
                            )),
                            Some(url) => {
                                if let Err(message) = url.check() {
                                    problems.push(Problem::new(key("url"), message));
                                }
                            }
                        }
                        if hook.program.is_some() || !hook.args.is_empty() {
                            problems.push(Problem::new(
                                key("program"),
                                "program and args apply only to exec hooks".into(),
                            ));
                        }
                        if hook.pass_raw_token {
                            problems.push(Problem::new(
                                key("pass_raw_token"),
                                "applies only to exec hooks: the raw token is only ever written \
                                 to a program's stdin"
                                    .into(),
                            ));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::kernel::AttachMethod;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    #[test]
    fn empty_file_gives_the_institution_policy() {
        let config = parse("").unwrap();
        let rules: Vec<_> = config
            .policy
            .rules
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.calls,
                    r.limit,
                    r.window.span().as_secs_f64(),
                )
            })
            .collect();
        assert_eq!(
            rules,
            [
                ("api_calls", CallClass::All, 3, 60.0),
                ("heavy_calls", CallClass::Heavy, 1, 300.0)
            ]
        );
        assert_eq!(config.policy.heavy.response_bytes, 500_000);
    }

    #[test]
    fn shipped_example_parses_and_states_the_defaults() {
        let example = parse(include_str!("../../config/redcap-monitor.toml")).unwrap();
        let defaults = Config::default();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn max_input_vars_is_read_and_must_be_positive() {
        let config = parse("[redcap]\nmax_input_vars = 1000\n").unwrap();
        assert_eq!(config.redcap.max_input_vars, 1000);
        let err = parse("[redcap]\nmax_input_vars = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("redcap.max_input_vars"), "{err}");
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(Duration::parse("5m").unwrap().span(), Span::from_secs(300));
        assert_eq!(
            Duration::parse("250ms").unwrap().span(),
            Span::from_millis(250)
        );
        assert!(Duration::parse("5").unwrap_err().contains("no unit"));
        assert!(
            Duration::parse("5 weeks")
                .unwrap_err()
                .contains("unknown unit")
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = parse("[policy]\nreorder_windw = \"1m\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("reorder_windw"), "{err}");
    }

    #[test]
    fn invalid_values_name_their_key_path() {
        let err = parse("[[policy.rules]]\nname = \"a\"\nlimit = 1\nwindow = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("policy.rules[0].window"), "{err}");
        let err = parse("[reassembly]\nmax_connections = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("reassembly.max_connections"), "{err}");
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text) {
            Err(ConfigError::Problems { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn every_wrong_section_is_reported_with_the_full_key_path() {
        let found = problems(
            "[capture]\nmode = \"xdp\"\n\
             [[policy.rules]]\nname = \"a\"\nlimit = 1\nwindow = \"1m\"\n\
             [[policy.rules]]\nname = \"b\"\nlimit = \"ten\"\nwindow = \"1m\"\n\
             [output]\ncall = \"-\"\n\
             [polcy]\nx = 1\n\
             [health]\nwindow = \"5\"\n",
        );
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "capture.mode",
                "health.window",
                "output.call",
                "polcy",
                "policy.rules[1].limit"
            ],
            "{found:#?}"
        );
        let text = |key: &str| &found.iter().find(|p| p.key == key).unwrap().message;
        assert_eq!(
            text("capture.mode"),
            "unknown variant `xdp`, expected one of `auto`, `ebpf`, `pcap`, `tls`"
        );
        assert!(text("health.window").contains("no unit"), "{found:#?}");
        assert!(text("output.call").contains("`calls`"), "{found:#?}");
        assert!(
            text("policy.rules[1].limit").contains("\"ten\", expected u32"),
            "{found:#?}"
        );
        assert!(
            text("polcy").starts_with("unknown field `polcy`, expected one of `site`"),
            "{found:#?}"
        );
    }

    #[test]
    fn every_bad_value_is_reported_not_just_the_first() {
        let found = problems(
            "[capture]\nring_bytes = 5000\n\
             [[policy.rules]]\nname = \"a\"\nlimit = 1\nwindow = \"0s\"\n\
             [health]\nbaseline_weight = 2.0\n\
             [[hooks.suspend]]\nname = \"h\"\nkind = \"exec\"\nprogram = \"relative\"\n",
        );
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "policy.rules[0].window",
                "health.baseline_weight",
                "capture.ring_bytes",
                "hooks.suspend[0].program"
            ],
            "{found:#?}"
        );
        let shown = parse("[capture]\nring_bytes = 5000\n[health]\nbaseline_weight = 2.0\n")
            .unwrap_err()
            .to_string();
        assert!(
            shown.starts_with("test.toml: 2 problems:\n  `health.baseline_weight`: "),
            "{shown}"
        );
    }

    #[test]
    fn rules_can_be_replaced() {
        let config = parse(
            "[[policy.rules]]\nname = \"bulk\"\nlimit = 30\nwindow = \"1m\"\n\
             [[policy.rules]]\nname = \"heavy\"\ncalls = \"heavy\"\nlimit = 2\nwindow = \"10m\"\n",
        )
        .unwrap();
        assert_eq!(config.policy.rules.len(), 2);
        assert_eq!(config.policy.rules[1].calls, CallClass::Heavy);
    }

    #[test]
    fn overrides_name_tokens_by_fingerprint_and_rules_by_name() {
        let config = parse(
            "[[policy.overrides]]\ntoken_fp = \"0123456789abcdef\"\nnote = \"bulk job\"\n\
             limits = { api_calls = 30 }\n\
             [[policy.overrides]]\ntoken_fp = \"fedcba9876543210\"\nexempt = true\n",
        )
        .unwrap();
        assert_eq!(config.policy.overrides.len(), 2);
        assert_eq!(config.policy.overrides[0].limits["api_calls"], 30);
        assert!(config.policy.overrides[1].exempt);
    }

    #[test]
    fn a_raw_token_given_as_a_fingerprint_is_refused_without_being_repeated() {
        let raw = "0123456789ABCDEF0123456789ABCDEF";
        let err = parse(&format!(
            "[[policy.overrides]]\ntoken_fp = \"{raw}\"\nexempt = true\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("policy.overrides[0].token_fp"), "{err}");
        assert!(err.contains("16 hex digits"), "{err}");
        assert!(!err.contains(&raw[..12]), "the value is not echoed: {err}");
    }

    #[test]
    fn a_rule_limit_a_window_cannot_count_is_refused() {
        let err = parse("[[policy.rules]]\nname = \"a\"\nlimit = 70000\nwindow = \"1m\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("policy.rules[0].limit") && err.contains("must be below 65536"),
            "{err}"
        );
        parse("[[policy.rules]]\nname = \"a\"\nlimit = 65535\nwindow = \"1m\"\n").unwrap();
    }

    #[test]
    fn bad_overrides_name_their_key_path() {
        let fp = "token_fp = \"0123456789abcdef\"\n";
        for (text, key, says) in [
            (
                "limits = { api_calls = 9 }\nexempt = true\n",
                "limits",
                "exempt",
            ),
            ("", "limits", "is empty"),
            (
                "limits = { api_cals = 9 }\n",
                "limits",
                "api_calls, heavy_calls",
            ),
            (
                "limits = { api_calls = 65536 }\n",
                "limits",
                "must be below 65536",
            ),
        ] {
            let err = parse(&format!("[[policy.overrides]]\n{fp}{text}"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("policy.overrides[0].{key}")) && err.contains(says),
                "{err}"
            );
        }
        let err = parse(&format!(
            "[[policy.overrides]]\n{fp}exempt = true\n[[policy.overrides]]\n{fp}exempt = true\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("policy.overrides[1].token_fp"), "{err}");
        let err = parse("[policy]\nmax_tokens = 0\n").unwrap_err().to_string();
        assert!(err.contains("policy.max_tokens"), "{err}");
    }

    #[test]
    fn the_canary_is_off_by_default_and_checked_when_on() {
        assert!(parse("").unwrap().health.canary.url.is_none());
        let on = parse("[health.canary]\nurl = \"https://redcap.example.org/redcap/\"\n").unwrap();
        assert_eq!(on.health.canary.interval.span(), Span::from_secs(30));
        let err = parse("[health.canary]\nurl = \"redcap.example.org\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("health.canary.url"), "{err}");
        let err = parse("[health.canary]\ninterval = \"5s\"\ntimeout = \"10s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("health.canary.timeout"), "{err}");
    }

    #[test]
    fn live_capture_keys_parse_and_the_old_port_key_still_works() {
        let config = parse(
            "[capture]\nmode = \"pcap\"\ninterfaces = [\"eth0\"]\nports = [8080]\n\
             [output]\ncalls = \"-\"\nviolations = \"/tmp/v.jsonl\"\nstats_interval = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(config.capture.mode, CaptureMode::Pcap);
        assert_eq!(config.capture.interfaces, ["eth0"]);
        assert_eq!(config.capture.ports, [8080]);
        assert_eq!(config.output.calls.as_deref(), Some(Path::new("-")));
        let old = parse("[capture]\nserver_ports = [81]\n").unwrap();
        assert_eq!(old.capture.ports, [81]);
        assert_eq!(old.capture.mode, CaptureMode::Auto);
        assert_eq!(old.capture.tc_attach, AttachMethod::Auto);
        let netlink = parse("[capture]\ntc_attach = \"netlink\"\n").unwrap();
        assert_eq!(netlink.capture.tc_attach, AttachMethod::Netlink);
        let tcx = parse("[capture]\ntc_attach = \"tcx\"\n").unwrap();
        assert_eq!(tcx.capture.tc_attach, AttachMethod::Tcx);
        // HTTPS is captured by default when it can be; `true`/`false` keep their meaning.
        assert_eq!(old.capture.tls.enabled, TlsSwitch::Auto);
        assert_eq!(old.capture.tls_plan(), TlsCapturePlan::IfPossible);
        for (text, plan) in [
            ("mode = \"ebpf\"\n", TlsCapturePlan::IfPossible),
            ("mode = \"pcap\"\n", TlsCapturePlan::Off),
            (
                "[capture.tls]\nenabled = \"auto\"\n",
                TlsCapturePlan::IfPossible,
            ),
            ("[capture.tls]\nenabled = false\n", TlsCapturePlan::Off),
            ("[capture.tls]\nenabled = true\n", TlsCapturePlan::Required),
            (
                "mode = \"tls\"\n[capture.tls]\nenabled = false\n",
                TlsCapturePlan::Required,
            ),
        ] {
            let config = parse(&format!("[capture]\n{text}")).unwrap();
            assert_eq!(config.capture.tls_plan(), plan, "{text}");
        }
        let tls =
            parse("[capture]\nmode = \"tls\"\n[capture.tls]\nprocesses = [\"nginx\"]\n").unwrap();
        assert_eq!(tls.capture.mode, CaptureMode::Tls);
        assert!(tls.capture.tls_on());
        let both = parse(
            "[capture]\nmode = \"ebpf\"\n[capture.tls]\nenabled = true\n\
             libraries = [\"/usr/lib/libssl.so.3\"]\nrescan_interval = \"1s\"\n",
        )
        .unwrap();
        assert!(both.capture.tls_on());
        assert_eq!(both.capture.tls.processes.len(), 4);
        assert_eq!(both.capture.tls.rescan_interval.span(), Span::from_secs(1));
    }

    #[test]
    fn bad_live_capture_values_name_their_key_path() {
        let err = parse("[capture]\nmode = \"xdp\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode") && err.contains("xdp"), "{err}");
        let err = parse("[capture]\ntc_attach = \"xdp\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tc_attach") && err.contains("netlink"),
            "{err}"
        );
        let err = parse("[capture]\nring_bytes = 5000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("capture.ring_bytes"), "{err}");
        let err = parse("[capture]\nports = [80, 0]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("capture.ports"), "{err}");
        let err = parse("[output]\ncall = \"-\"\n").unwrap_err().to_string();
        assert!(err.contains("call"), "{err}");
    }

    #[test]
    fn bad_tls_capture_values_name_their_key_path() {
        for (text, key, hint) in [
            (
                "[capture.tls]\nprocesses = [\"a-name-longer-than-15\"]\n",
                "capture.tls.processes",
                "15 bytes",
            ),
            (
                "[capture]\nmode = \"tls\"\n[capture.tls]\nprocesses = []\n",
                "capture.tls.processes",
                "nginx",
            ),
            (
                "[capture]\nmode = \"pcap\"\n[capture.tls]\nenabled = true\n",
                "capture.tls.enabled",
                "\"ebpf\"",
            ),
            (
                "[capture.tls]\nrescan_interval = \"0s\"\n",
                "capture.tls.rescan_interval",
                "5s",
            ),
            ("[capture.tls]\nprocess = [\"x\"]\n", "process", ""),
            (
                "[capture.tls]\nenabled = \"yes\"\n",
                "enabled",
                "\"auto\", true or false",
            ),
            (
                "[capture.tls]\nprocesses = []\n",
                "capture.tls.processes",
                "enabled = false",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(hint), "{text}: {err}");
        }
    }
}
