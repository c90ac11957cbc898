//! The admin commands: on the durable state `audit`, `suspensions`, `suspend` and `lift`; on
//! the live daemon's stats file `status`.
//!
//! The edge between people and the [`Store`]: finds the store (`[store] path`, or `--store`),
//! reads the clock once per command, prints tables for people or one JSON object a line for
//! scripts (`--json`), and turns errors into messages and exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use redcap_monitor::config::{Config, Duration};
use redcap_monitor::model::Timestamp;
use redcap_monitor::store::{AuditRecord, Source, Store, StoreError, StoreLimits, Suspension};
use redcap_monitor::token::TokenFingerprint;
use serde_json::json;

use crate::fail;

/// Where the store is and how to print.
#[derive(clap::Args)]
pub struct StoreArgs {
    /// Configuration file (TOML) whose `[store] path` names the store.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The store file (overrides the configuration).
    #[arg(long, value_name = "FILE")]
    store: Option<PathBuf>,
    /// Print one JSON object a line, for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct AuditArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Only records from this long ago on, e.g. `24h` or `7d`.
    #[arg(long, value_parser = Duration::parse)]
    since: Option<Duration>,
    /// Only records about this token fingerprint (16 hex digits).
    #[arg(long = "token-fp", value_name = "FP")]
    token_fp: Option<TokenFingerprint>,
    /// At most this many records (the newest).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

#[derive(clap::Args)]
pub struct SuspensionsArgs {
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Args)]
pub struct SuspendArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The token's fingerprint (16 hex digits, as `redcap-monitor fingerprint` prints it).
    #[arg(value_name = "FP")]
    token_fp: TokenFingerprint,
    /// How long, e.g. `1h` or `2d`.
    #[arg(long = "for", value_name = "DURATION", value_parser = Duration::parse,
          required_unless_present = "until_lifted", conflicts_with = "until_lifted")]
    duration: Option<Duration>,
    /// Suspend until lifted by hand, instead of `--for`.
    #[arg(long)]
    until_lifted: bool,
    /// Why, for the audit log and the hooks.
    #[arg(long)]
    reason: String,
}

#[derive(clap::Args)]
pub struct LiftArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The token's fingerprint (16 hex digits).
    #[arg(value_name = "FP")]
    token_fp: TokenFingerprint,
    /// Why, for the audit log.
    #[arg(long, default_value = "lifted by hand")]
    reason: String,
}

pub fn audit(args: AuditArgs) -> ExitCode {
    let store = match open(&args.store, Access::Read) {
        Ok(store) => store,
        Err(code) => return code,
    };
    let since = args.since.map(|d| now().minus(d.span()));
    let records = match store.audit(since, args.token_fp, args.limit) {
        Ok(records) => records,
        Err(err) => return fail(1, &err),
    };
    if args.store.json {
        for record in &records {
            println!("{}", audit_json(record));
        }
    } else if records.is_empty() {
        eprintln!("no audit records match");
    } else {
        println!(
            "{:>6}  {:<20}  {:<11}  {:<16}  DETAILS",
            "SEQ", "TIME (UTC)", "KIND", "TOKEN FP"
        );
        for r in &records {
            let kind = serde_json::to_value(r.entry.kind).unwrap_or_default();
            println!(
                "{:>6}  {:<20}  {:<11}  {:<16}  {}",
                r.seq,
                utc(r.entry.ts),
                kind.as_str().unwrap_or("?"),
                r.entry.token.map_or("-".into(), |t| t.to_string()),
                r.entry.details
            );
        }
    }
    ExitCode::SUCCESS
}

pub fn suspensions(args: SuspensionsArgs) -> ExitCode {
    let store = match open(&args.store, Access::Read) {
        Ok(store) => store,
        Err(code) => return code,
    };
    let active = match store.active_suspensions(now()) {
        Ok(active) => active,
        Err(err) => return fail(1, &err),
    };
    if args.store.json {
        for s in &active {
            println!("{}", suspension_json(s));
        }
    } else if active.is_empty() {
        eprintln!("no token is suspended");
    } else {
        println!(
            "{:<16}  {:<8}  {:<20}  {:<20}  {:>5}  {:<6}  REASON",
            "TOKEN FP", "TOKEN", "SINCE (UTC)", "UNTIL (UTC)", "LEVEL", "SOURCE"
        );
        for s in &active {
            println!(
                "{:<16}  {:<8}  {:<20}  {:<20}  {:>5}  {:<6}  {}",
                s.token,
                masked(s),
                utc(s.since),
                s.until.map_or("until lifted".into(), utc),
                s.level,
                source(s.source),
                s.reason
            );
        }
    }
    ExitCode::SUCCESS
}

pub fn suspend(args: SuspendArgs) -> ExitCode {
    let store = match open(&args.store, Access::Write { create: true }) {
        Ok(store) => store,
        Err(code) => return code,
    };
    let now = now();
    let seen = match store.token_seen(args.token_fp) {
        Ok(seen) => seen,
        Err(err) => return fail(1, &err),
    };
    if seen.is_none() {
        eprintln!(
            "note: the daemon has not seen token {} (yet); check the fingerprint with \
             `redcap-monitor fingerprint`",
            args.token_fp
        );
    }
    let suspension = Suspension {
        token: args.token_fp,
        masked: seen.map(|s| s.masked),
        since: now,
        until: args.duration.map(|d| now.plus(d.span())),
        reason: args.reason,
        level: 0,
        source: Source::Manual,
    };
    let seq = match store.suspend(&suspension) {
        Ok(seq) => seq,
        Err(err) => return fail(1, &err),
    };
    if args.store.json {
        let mut object = suspension_json(&suspension);
        object["audit_seq"] = json!(seq);
        println!("{object}");
    } else {
        println!(
            "suspended {} ({}) {}: {} (audit record {seq})",
            suspension.token,
            masked(&suspension),
            suspension
                .until
                .map_or("until lifted".into(), |t| format!("until {}", utc(t))),
            suspension.reason
        );
    }
    ExitCode::SUCCESS
}

pub fn lift(args: LiftArgs) -> ExitCode {
    let store = match open(&args.store, Access::Write { create: false }) {
        Ok(store) => store,
        Err(code) => return code,
    };
    match store.lift(args.token_fp, now(), Source::Manual, &args.reason) {
        Ok(Some(lifted)) => {
            if args.store.json {
                println!("{}", suspension_json(&lifted));
            } else {
                println!(
                    "lifted the suspension of {} ({}), in force since {}",
                    lifted.token,
                    masked(&lifted),
                    utc(lifted.since)
                );
            }
            ExitCode::SUCCESS
        }
        Ok(None) => fail(1, &format!("token {} is not suspended", args.token_fp)),
        Err(err) => fail(1, &err),
    }
}

enum Access {
    Read,
    Write { create: bool },
}

/// Opens the store the arguments name, or says why not (exit 2 for a bad configuration, 1 for a
/// store that cannot be used).
fn open(args: &StoreArgs, access: Access) -> Result<Store, ExitCode> {
    let config = match args.config.as_deref().map(Config::load).transpose() {
        Ok(config) => config.unwrap_or_default(),
        Err(err) => return Err(fail(2, &err)),
    };
    let path = args.store.clone().unwrap_or(config.store.path.clone());
    let opened = match access {
        Access::Read => Store::open_read_only(&path),
        Access::Write { create: false } if !path.exists() => Err(StoreError::Missing { path }),
        Access::Write { .. } => Store::open(&path, StoreLimits::from_config(&config.store)),
    };
    opened.map_err(|err| match err {
        StoreError::Busy { .. } => fail(
            1,
            &format!(
                "{err}. Stop the daemon to change suspensions from the command line \
                 (`audit` and `suspensions` work while it runs)."
            ),
        ),
        StoreError::Missing { .. } => fail(1, &format!("{err} (pass --store FILE or --config)")),
        err => fail(1, &err),
    })
}

fn now() -> Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
}

fn masked(s: &Suspension) -> String {
    s.masked.as_ref().map_or("?".into(), |m| m.to_string())
}

fn source(source: Source) -> &'static str {
    match source {
        Source::Auto => "auto",
        Source::Manual => "manual",
    }
}

/// The scripts' view of a record: times in epoch seconds, like the daemon's other JSON output.
fn audit_json(r: &AuditRecord) -> serde_json::Value {
    json!({
        "seq": r.seq,
        "ts": r.entry.ts.as_secs_f64(),
        "kind": r.entry.kind,
        "token_fp": r.entry.token,
        "details": r.entry.details,
    })
}

fn suspension_json(s: &Suspension) -> serde_json::Value {
    json!({
        "token_fp": s.token,
        "token_masked": s.masked.as_ref().map(|m| m.0.as_str()),
        "since": s.since.as_secs_f64(),
        "until": s.until.map(Timestamp::as_secs_f64),
        "reason": s.reason,
        "level": s.level,
        "source": s.source,
    })
}

/// `2023-11-14 22:13:20Z`.
fn utc(ts: Timestamp) -> String {
    let secs = ts.0 / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_epoch_times() {
        assert_eq!(utc(Timestamp(0)), "1970-01-01 00:00:00Z");
        assert_eq!(
            utc(Timestamp(1_700_000_000_999_999_999)),
            "2023-11-14 22:13:20Z"
        );
        assert_eq!(
            utc(Timestamp(951_782_400_000_000_000)),
            "2000-02-29 00:00:00Z"
        );
        assert_eq!(
            utc(Timestamp(4_107_542_399_000_000_000)),
            "2100-02-28 23:59:59Z"
        );
    }
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Configuration file (TOML) whose `[output] stats` names the daemon's stats file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The stats file (overrides the configuration).
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// Print the stats file's JSON as it is.
    #[arg(long)]
    json: bool,
}

/// `status`: the live daemon's capture health from its stats file — losses first, since "zero
/// calls lost" must be shown, not assumed.
pub fn status(args: StatusArgs) -> ExitCode {
    let from_config = match args.config.as_deref().map(Config::load).transpose() {
        Ok(config) => config.and_then(|c| c.output.stats),
        Err(err) => return fail(2, &err),
    };
    let Some(path) = args.stats.or(from_config) else {
        return fail(
            2,
            &"no stats file: pass --stats FILE, or --config FILE whose [output] stats is set \
              (the daemon writes it every stats_interval)",
        );
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) => {
            return fail(
                1,
                &format!(
                    "cannot read {}: {err} (is `redcap-monitor run` running with this \
                     [output] stats?)",
                    path.display()
                ),
            );
        }
    };
    let stats: serde_json::Value = match serde_json::from_str(&text) {
        Ok(stats) => stats,
        Err(err) => return fail(1, &format!("{} is not a stats file: {err}", path.display())),
    };
    if args.json {
        println!("{stats}");
        return ExitCode::SUCCESS;
    }
    print!("{}", status_text(&stats));
    ExitCode::SUCCESS
}

/// Names of the kernel counters that mean lost or partial data.
const KERNEL_LOSSES: [&str; 6] = [
    "ring_full",
    "truncated_bytes",
    "flow_insert_failed",
    "flows_evicted",
    "tls_conns_evicted",
    "tls_args_lost",
];

fn status_text(stats: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let number = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "mode {}, {} calls and {} violations written, server {}",
        stats["mode"].as_str().unwrap_or("?"),
        number(&stats["calls_written"]),
        number(&stats["violations_written"]),
        if stats["degraded"].as_bool() == Some(true) {
            "DEGRADED"
        } else {
            "responsive"
        }
    );
    let mut losses = Vec::new();
    // Indexing a `Value` (not a `Map`) gives null for a missing key: a stats file from another
    // version must not crash `status`.
    let kernel = &stats["kernel"];
    if kernel.is_object() {
        let _ = writeln!(
            out,
            "kernel: {} packets seen, {} filtered, {} events sent, {} flows tracked so far",
            number(&kernel["packets_seen"]),
            number(&kernel["filtered"]),
            number(&kernel["events_sent"]),
            number(&kernel["flows_started"]),
        );
        for name in KERNEL_LOSSES {
            let n = number(&kernel[name]);
            if n > 0 {
                losses.push(format!("kernel.{name}={n}"));
            }
        }
    }
    if let Some(interfaces) = stats["pcap"].as_array() {
        for interface in interfaces {
            let dropped = number(&interface["dropped"]) + number(&interface["if_dropped"]);
            if dropped > 0 {
                losses.push(format!(
                    "pcap.{}.dropped={dropped}",
                    interface["interface"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    let _ = writeln!(
        out,
        "losses: {}",
        if losses.is_empty() {
            "none".to_string()
        } else {
            losses.join(" ")
        }
    );
    if let Some(problems) = stats["problems"].as_object().filter(|p| !p.is_empty()) {
        let listed: Vec<String> = problems.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "input problems: {}", listed.join(" "));
    }
    out
}

#[cfg(test)]
mod status_tests {
    use super::status_text;

    #[test]
    fn losses_are_named_or_said_to_be_none() {
        let clean = serde_json::json!({
            "mode": "ebpf", "calls_written": 5, "violations_written": 1, "degraded": false,
            "kernel": {"packets_seen": 100, "filtered": 40, "events_sent": 60, "ring_full": 0,
                       "truncated_bytes": 0, "flow_insert_failed": 0, "flows_started": 3},
            "problems": {}
        });
        let text = status_text(&clean);
        assert!(text.contains("losses: none"), "{text}");
        assert!(text.contains("40 filtered"), "{text}");
        let lossy = serde_json::json!({
            "mode": "ebpf", "degraded": true,
            "kernel": {"ring_full": 7, "truncated_bytes": 900},
            "problems": {"reassembly.gaps": 2}
        });
        let text = status_text(&lossy);
        assert!(
            text.contains("losses: kernel.ring_full=7 kernel.truncated_bytes=900"),
            "{text}"
        );
        assert!(text.contains("DEGRADED"), "{text}");
        assert!(text.contains("input problems: reassembly.gaps=2"), "{text}");
    }
}
