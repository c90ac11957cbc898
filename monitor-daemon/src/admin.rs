//! The admin commands: on the durable state `audit`, `suspensions`, `suspend` and `lift`; on
//! the live daemon's admin API `status` (falling back to its stats file) and `top`.
//!
//! The edge between people and the [`Store`]: finds the store (`[store] path`, or `--store`),
//! reads the clock once per command, prints tables for people or one JSON object a line for
//! scripts (`--json`), and turns errors into messages and exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use redcap_monitor::commands::config::Config;
use redcap_monitor::edges::actions::{Request, submit_request};
use redcap_monitor::edges::api::live::suspension_json;
use redcap_monitor::edges::directory::DirectoryState;
use redcap_monitor::edges::store::{
    AuditRecord, Source, Store, StoreError, StoreLimits, Suspension,
};
use redcap_monitor::edges::telemetry::Snapshot;
use redcap_monitor::shared::model::Timestamp;
use redcap_monitor::shared::settings::Duration;
use redcap_monitor::shared::token::TokenFingerprint;
use serde_json::json;

use crate::fail;

/// Where the store is and how to print.
#[derive(clap::Args)]
pub(crate) struct StoreArgs {
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
pub(crate) struct AuditArgs {
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
pub(crate) struct SuspensionsArgs {
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(clap::Args)]
pub(crate) struct SuspendArgs {
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
pub(crate) struct LiftArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The token's fingerprint (16 hex digits).
    #[arg(value_name = "FP")]
    token_fp: TokenFingerprint,
    /// Why, for the audit log.
    #[arg(long, default_value = "lifted by hand")]
    reason: String,
}

pub(crate) fn audit(args: AuditArgs) -> ExitCode {
    let store = match open(&args.store, Access::Read) {
        Ok(store) => store,
        Err(refused) => return refused.exit(),
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

pub(crate) fn suspensions(args: SuspensionsArgs) -> ExitCode {
    let store = match open(&args.store, Access::Read) {
        Ok(store) => store,
        Err(refused) => return refused.exit(),
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
            "{:<16}  {:<8}  {:<20}  {:<20}  {:>5}  {:<6}  {:<24}  REASON",
            "TOKEN FP", "TOKEN", "SINCE (UTC)", "UNTIL (UTC)", "LEVEL", "SOURCE", "OWNER"
        );
        for s in &active {
            println!(
                "{:<16}  {:<8}  {:<20}  {:<20}  {:>5}  {:<6}  {:<24}  {}",
                s.token,
                masked(s),
                utc(s.since),
                s.until.map_or("until lifted".into(), utc),
                s.level,
                source(s.source),
                owner_text(&recorded_owner(&store, s.token)),
                s.reason
            );
        }
    }
    ExitCode::SUCCESS
}

pub(crate) fn suspend(args: SuspendArgs) -> ExitCode {
    let store = match open(&args.store, Access::Write { create: true }) {
        Ok(store) => store,
        Err(Refused::Busy(path)) => {
            let request = Request::Suspend {
                token_fp: args.token_fp,
                for_s: args.duration.map(|d| d.span().as_secs_f64()),
                reason: args.reason.clone(),
            };
            return through_daemon(&path, &request, args.store.json);
        }
        Err(Refused::Exit(code)) => return code,
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

pub(crate) fn lift(args: LiftArgs) -> ExitCode {
    let store = match open(&args.store, Access::Write { create: false }) {
        Ok(store) => store,
        Err(Refused::Busy(path)) => {
            let request = Request::Lift {
                token_fp: args.token_fp,
                reason: args.reason.clone(),
            };
            return through_daemon(&path, &request, args.store.json);
        }
        Err(Refused::Exit(code)) => return code,
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

/// How long `suspend` and `lift` wait for a running daemon to carry out their request.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `suspend`/`lift` while the daemon holds the store: handed to it through its request directory
/// (it answers on its next tick), and printed like the direct form.
fn through_daemon(store: &Path, request: &Request, json: bool) -> ExitCode {
    let reply = match submit_request(store, request, REQUEST_TIMEOUT) {
        Ok(reply) => reply,
        Err(err) => return fail(1, &err),
    };
    if !reply.ok {
        return fail(
            1,
            &reply
                .error
                .unwrap_or_else(|| "the daemon refused the request".into()),
        );
    }
    let Some(s) = reply.suspension else {
        return ExitCode::SUCCESS;
    };
    if json {
        println!("{}", suspension_json(&s));
        return ExitCode::SUCCESS;
    }
    match request {
        Request::Suspend { .. } => println!(
            "suspended {} ({}) {}: {} (by the running daemon)",
            s.token,
            masked(&s),
            s.until
                .map_or("until lifted".into(), |t| format!("until {}", utc(t))),
            s.reason
        ),
        Request::Lift { .. } => println!(
            "lifted the suspension of {} ({}), in force since {} (by the running daemon)",
            s.token,
            masked(&s),
            utc(s.since)
        ),
        Request::HookResults { .. } => {}
    }
    ExitCode::SUCCESS
}

/// Why a command cannot use the store itself.
enum Refused {
    /// A daemon holds it for writing (its path).
    Busy(PathBuf),
    /// Said why; exit with this.
    Exit(ExitCode),
}

impl Refused {
    fn exit(self) -> ExitCode {
        match self {
            Refused::Busy(path) => fail(1, &StoreError::Busy { path }),
            Refused::Exit(code) => code,
        }
    }
}

impl From<ExitCode> for Refused {
    fn from(code: ExitCode) -> Refused {
        Refused::Exit(code)
    }
}

enum Access {
    Read,
    Write { create: bool },
}

/// Opens the store the arguments name, or says why not (exit 2 for a bad configuration, 1 for a
/// store that cannot be used).
fn open(args: &StoreArgs, access: Access) -> Result<Store, Refused> {
    let config = match args.config.as_deref().map(Config::load).transpose() {
        Ok(config) => config.unwrap_or_default(),
        Err(err) => return Err(fail(2, &err).into()),
    };
    let path = args.store.clone().unwrap_or(config.store.path.clone());
    let opened = match access {
        Access::Read => Store::open_read_only(&path),
        Access::Write { create: false } if !path.exists() => Err(StoreError::Missing { path }),
        Access::Write { .. } => Store::open(&path, StoreLimits::from_config(&config.store)),
    };
    opened.map_err(|err| match err {
        StoreError::Busy { path } if matches!(access, Access::Write { .. }) => Refused::Busy(path),
        StoreError::Missing { .. } => {
            fail(1, &format!("{err} (pass --store FILE or --config)")).into()
        }
        err => fail(1, &err).into(),
    })
}

pub(crate) fn now() -> Timestamp {
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
pub(crate) struct StatusArgs {
    /// Configuration file (TOML): `[api]` says where the daemon listens and where its token is,
    /// `[output] stats` names the stats file to fall back on.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Read this stats file instead of asking the daemon.
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// Print the status JSON as it is.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub(crate) struct TopArgs {
    /// Configuration file (TOML) whose `[api]` says where the daemon listens.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print one view and exit (also what happens when stdout is not a terminal).
    #[arg(long)]
    once: bool,
    /// Time between refreshes, e.g. `2s`.
    #[arg(long, value_parser = Duration::parse, default_value = "2s")]
    interval: Duration,
    /// Print the API's JSON (implies --once).
    #[arg(long)]
    json: bool,
}

/// Why the admin API did not answer.
enum ApiFailure {
    /// Nothing listening, or no API configured: the caller may fall back.
    Unreachable(String),
    /// It answered, but not with what was asked.
    Refused(String),
}

/// A client of the daemon's admin API (`[api]` in the configuration).
struct ApiClient {
    base: String,
    authorization: String,
    agent: ureq::Agent,
}

impl ApiClient {
    fn new(config: &Config) -> Result<ApiClient, ApiFailure> {
        let api = &config.api;
        if !api.enabled {
            return Err(ApiFailure::Unreachable(
                "the API is off in this configuration (api.enabled = false)".into(),
            ));
        }
        let Some(path) = &api.token_file else {
            return Err(ApiFailure::Unreachable(
                "no api.token_file in this configuration, so the admin API is off".into(),
            ));
        };
        let token = std::fs::read_to_string(path).map_err(|err| {
            ApiFailure::Refused(format!(
                "cannot read the admin API token file {} (api.token_file): {err}; run as a user \
                 who may read it (root, or the daemon's group)",
                path.display()
            ))
        })?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(std::time::Duration::from_secs(5)))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        Ok(ApiClient {
            base: format!("http://{}", api.address()),
            authorization: format!("Bearer {}", token.trim()),
            agent,
        })
    }

    fn get(&self, endpoint: &str) -> Result<serde_json::Value, ApiFailure> {
        let url = format!("{}/api/v1/{endpoint}", self.base);
        let mut response = self
            .agent
            .get(&url)
            .header("Authorization", &self.authorization)
            .call()
            .map_err(|err| ApiFailure::Unreachable(format!("{url}: {err}")))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|err| ApiFailure::Refused(format!("{url}: {err}")))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|err| ApiFailure::Refused(format!("{url} did not answer JSON: {err}")))?;
        if status != 200 {
            let message = value["error"].as_str().unwrap_or("no reason given");
            let hint = if status == 401 {
                " (is this the token file the daemon reads?)"
            } else {
                ""
            };
            return Err(ApiFailure::Refused(format!(
                "{url} answered {status}: {message}{hint}"
            )));
        }
        Ok(value)
    }
}

/// `status`: the live daemon's capture health — losses first, since "zero calls lost" must be
/// shown, not assumed — from its admin API, or from its stats file when the API cannot be asked.
pub(crate) fn status(args: StatusArgs) -> ExitCode {
    let config = match args.config.as_deref().map(Config::load).transpose() {
        Ok(config) => config.unwrap_or_default(),
        Err(err) => return fail(2, &err),
    };
    let mut fell_back = None;
    if args.stats.is_none() {
        match ApiClient::new(&config).and_then(|client| {
            let status = client.get("status")?;
            let suspensions = client.get("suspensions")?;
            Ok((client.base, status, suspensions))
        }) {
            Ok((base, status, suspensions)) => {
                if args.json {
                    println!("{status}");
                } else {
                    let snapshot = match serde_json::from_value::<Snapshot>(status) {
                        Ok(snapshot) => snapshot,
                        Err(err) => {
                            return fail(
                                1,
                                &format!("the daemon's status is not understood: {err}"),
                            );
                        }
                    };
                    println!("daemon at {base}");
                    print!("{}", status_text(&snapshot));
                    let n = suspensions.as_array().map_or(0, Vec::len);
                    println!("suspended tokens: {n}");
                }
                return ExitCode::SUCCESS;
            }
            Err(ApiFailure::Refused(message)) => return fail(1, &message),
            Err(ApiFailure::Unreachable(why)) => fell_back = Some(why),
        }
    }
    let Some(path) = args.stats.or(config.output.stats) else {
        if let Some(why) = &fell_back {
            eprintln!("note: cannot ask the daemon ({why})");
        }
        return fail(
            2,
            &"no stats file: pass --stats FILE, or --config FILE whose [output] stats is set \
              (the daemon writes it every stats_interval)",
        );
    };
    if let Some(why) = fell_back {
        eprintln!(
            "note: cannot ask the daemon ({why}); reading its stats file {} instead",
            path.display()
        );
    }
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
    if args.json {
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(stats) => println!("{stats}"),
            Err(err) => return fail(1, &format!("{} is not a stats file: {err}", path.display())),
        }
        return ExitCode::SUCCESS;
    }
    let stats: Snapshot = match serde_json::from_str(&text) {
        Ok(stats) => stats,
        Err(err) => return fail(1, &format!("{} is not a stats file: {err}", path.display())),
    };
    print!("{}", status_text(&stats));
    ExitCode::SUCCESS
}

/// `top`: the tokens loading the server most, refreshed like `top(1)`; one view when stdout is
/// not a terminal or with `--once`.
pub(crate) fn top(args: TopArgs) -> ExitCode {
    use std::io::IsTerminal;
    let config = match args.config.as_deref().map(Config::load).transpose() {
        Ok(config) => config.unwrap_or_default(),
        Err(err) => return fail(2, &err),
    };
    let client = match ApiClient::new(&config) {
        Ok(client) => client,
        Err(ApiFailure::Unreachable(why) | ApiFailure::Refused(why)) => return fail(1, &why),
    };
    let live = !args.once && !args.json && std::io::stdout().is_terminal();
    loop {
        let fetched = client.get("top").and_then(|top| {
            let status = client.get("status")?;
            let suspensions = client.get("suspensions")?;
            Ok((top, status, suspensions))
        });
        let (top, status, suspensions) = match fetched {
            Ok(views) => views,
            Err(ApiFailure::Unreachable(why)) => {
                return fail(
                    1,
                    &format!(
                        "the daemon is not reachable: {why} (is `redcap-monitor run` running?)"
                    ),
                );
            }
            Err(ApiFailure::Refused(why)) => return fail(1, &why),
        };
        if args.json {
            println!("{top}");
            return ExitCode::SUCCESS;
        }
        let status = match serde_json::from_value::<Snapshot>(status) {
            Ok(status) => status,
            Err(err) => return fail(1, &format!("the daemon's status is not understood: {err}")),
        };
        let text = top_text(&client.base, &top, &status, &suspensions);
        if !live {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        // Home, clear, then the view: a whole frame at once, like top(1).
        print!("\x1b[H\x1b[2J{text}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        std::thread::sleep(std::time::Duration::from_nanos(args.interval.span().0));
    }
}

fn top_text(
    base: &str,
    top: &serde_json::Value,
    status: &Snapshot,
    suspensions: &serde_json::Value,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "redcap-monitor top  {base}  {}  server {}  suspended {}",
        utc(Timestamp::from_secs_f64(top["at"].as_f64().unwrap_or(0.0))),
        if status.degraded {
            "DEGRADED"
        } else {
            "responsive"
        },
        suspensions.as_array().map_or(0, Vec::len)
    );
    // The losses and blind-spot lines of `status`, so that a lossy or blind capture is never
    // out of sight, and the cluster's line (`[shared]`): Redis up or down, the peers.
    for line in status_text(status).lines().filter(|l| {
        l.starts_with("losses:") || l.starts_with("coverage: BLIND") || l.starts_with("cluster:")
    }) {
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "tokens by share of server time over the last {} s",
        top["window_s"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        out,
        "{:<16}  {:<8}  {:>6}  {:>8}  {:>11}  {:>12}  {:>9}  {:>6}  OWNER",
        "TOKEN FP", "TOKEN", "CALLS", "PER MIN", "REQ BYTES", "RESP BYTES", "SERVER S", "SHARE"
    );
    let tokens = top["tokens"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for t in tokens {
        let _ = writeln!(
            out,
            "{:<16}  {:<8}  {:>6}  {:>8.1}  {:>11}  {:>12}  {:>9.3}  {:>5.1}%  {}",
            t["token_fp"].as_str().unwrap_or("?"),
            t["token_masked"].as_str().unwrap_or("?"),
            t["calls"].as_u64().unwrap_or(0),
            t["calls_per_minute"].as_f64().unwrap_or(0.0),
            t["request_bytes"].as_u64().unwrap_or(0),
            t["response_bytes"].as_u64().unwrap_or(0),
            t["server_time_s"].as_f64().unwrap_or(0.0),
            100.0 * t["server_time_share"].as_f64().unwrap_or(0.0),
            owner_text(&t["owner"]),
        );
    }
    if tokens.is_empty() {
        let _ = writeln!(out, "(no API calls in the window)");
    }
    out
}

/// Who the token directory said the token belongs to, in the newest of its last audit records
/// that names an owner (decisions and violations carry it when the directory is connected):
/// the store keeps no other copy of personal data. Null when none does.
fn recorded_owner(store: &Store, token: TokenFingerprint) -> serde_json::Value {
    const LOOK_BACK: usize = 50;
    store
        .audit(None, Some(token), LOOK_BACK)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.entry.details["owner"].clone())
        .find(|owner| owner.is_object())
        .unwrap_or(serde_json::Value::Null)
}

/// `jdoe, project 12` from the token directory's owner object, `-` when unknown.
fn owner_text(owner: &serde_json::Value) -> String {
    let Some(user) = owner["username"].as_str() else {
        return "-".into();
    };
    match (owner["super_token"].as_bool(), owner["project_id"].as_u64()) {
        (Some(true), _) => format!("{user}, super token"),
        (_, Some(project)) => format!("{user}, project {project}"),
        _ => user.to_string(),
    }
}

fn status_text(stats: &Snapshot) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "mode {}, {} calls and {} violations written, server {}",
        if stats.mode.is_empty() {
            "?"
        } else {
            &stats.mode
        },
        stats.calls_written,
        stats.violations_written,
        if stats.degraded {
            "DEGRADED"
        } else {
            "responsive"
        }
    );
    let mut losses = Vec::new();
    if let Some(kernel) = stats.kernel_counters() {
        let _ = writeln!(
            out,
            "kernel: {} packets seen, {} filtered, {} events sent, {} flows tracked so far",
            kernel.packets_seen, kernel.filtered, kernel.events_sent, kernel.flows_started,
        );
        for (name, n) in kernel.losses() {
            if n > 0 {
                losses.push(format!("kernel.{name}={n}"));
            }
        }
    }
    for interface in stats.pcap.iter().flatten() {
        let dropped = interface.dropped + interface.if_dropped + interface.truncated;
        if dropped > 0 {
            losses.push(format!("pcap.{}.dropped={dropped}", interface.interface));
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
    // A blind daemon must never look healthy: the coverage line comes right after the losses.
    match &stats.coverage {
        Some(spots) if !spots.is_empty() => {
            for spot in spots {
                let _ = writeln!(
                    out,
                    "coverage: BLIND {} ({} seen): {}",
                    spot.reason, spot.count, spot.advice
                );
            }
        }
        Some(_) => {
            let _ = writeln!(out, "coverage: no blind spot seen");
        }
        // A stats file from a version without the judgement.
        None => {}
    }
    if let Some(directory) = &stats.directory {
        match directory.state {
            DirectoryState::Off => {}
            DirectoryState::DirectoryUnavailable => {
                let _ = writeln!(
                    out,
                    "directory: UNAVAILABLE ({} tokens named from an earlier read): {}",
                    directory.entries,
                    directory.error.as_deref().unwrap_or("?")
                );
            }
            DirectoryState::Loading | DirectoryState::Available => {
                let state = match directory.state {
                    DirectoryState::Loading => "loading",
                    _ => "available",
                };
                let _ = writeln!(
                    out,
                    "directory: {state}, {} tokens named",
                    directory.entries
                );
            }
        }
    }
    if let Some(cluster) = &stats.cluster {
        let peers: Vec<String> = cluster
            .peers
            .iter()
            .map(|p| {
                format!(
                    "{} ({}, heard {:.1}s ago, {} calls)",
                    p.name,
                    if p.live { "live" } else { "LOST" },
                    p.last_heartbeat_age_s,
                    p.calls_received
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "cluster: host {}, Redis {}, {} calls published, {} received ({} late, {} read twice), {} buffered{}; peers: {}",
            cluster.host,
            if cluster.up {
                "up"
            } else {
                "DOWN: going on alone"
            },
            cluster.calls_published,
            cluster.calls_received,
            cluster.calls_late,
            cluster.calls_deduplicated,
            cluster.buffered_calls,
            if cluster.buffered_dropped > 0 {
                format!(" ({} DROPPED from a full buffer)", cluster.buffered_dropped)
            } else {
                String::new()
            },
            if peers.is_empty() {
                "none".into()
            } else {
                peers.join(", ")
            }
        );
    }
    let failing = stats.failing_sinks();
    if !failing.is_empty() {
        let _ = writeln!(
            out,
            "alert sinks: FAILING {} (alerts to them wait in the outbox until alerts.max_age)",
            failing.join(", ")
        );
    }
    if !stats.problems.is_empty() {
        let listed: Vec<String> = stats
            .problems
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(out, "input problems: {}", listed.join(" "));
    }
    out
}

#[cfg(test)]
mod status_tests {
    use super::Snapshot;

    /// A stats file's text as `status` reads it: typed.
    fn status_text(stats: &serde_json::Value) -> String {
        let snapshot: Snapshot = serde_json::from_value(stats.clone()).unwrap();
        super::status_text(&snapshot)
    }

    fn top_text(
        base: &str,
        top: &serde_json::Value,
        status: &serde_json::Value,
        suspensions: &serde_json::Value,
    ) -> String {
        let snapshot: Snapshot = serde_json::from_value(status.clone()).unwrap();
        super::top_text(base, top, &snapshot, suspensions)
    }

    #[test]
    fn status_names_failing_alert_sinks() {
        let stats = serde_json::json!({
            "mode": "ebpf", "kernel": {},
            "alerts": {"delivery": {"attempts": 9, "failing_sinks": ["chat"]}}
        });
        let text = status_text(&stats);
        assert!(text.contains("alert sinks: FAILING chat"), "{text}");
        let stats =
            serde_json::json!({"mode": "ebpf", "alerts": {"delivery": {"failing_sinks": []}}});
        assert!(!status_text(&stats).contains("alert sinks"));
    }

    #[test]
    fn top_shows_a_blind_spot_with_the_losses() {
        let status = serde_json::json!({
            "mode": "ebpf", "kernel": {"ring_full": 0},
            "coverage": [{"reason": "https_unread", "count": 2, "advice": "turn on capture.tls"}]
        });
        let top = serde_json::json!({"at": 1_700_000_000.0, "window_s": 60.0, "tokens": []});
        let text = top_text(
            "http://127.0.0.1:9864",
            &top,
            &status,
            &serde_json::json!([]),
        );
        assert!(text.contains("losses: none"), "{text}");
        assert!(
            text.contains("coverage: BLIND https_unread (2 seen): turn on capture.tls"),
            "{text}"
        );
    }

    #[test]
    fn top_names_owners_and_status_the_directory_state() {
        let status = serde_json::json!({"mode": "pcap", "directory": {
            "state": "directory_unavailable", "entries": 3,
            "error": "cannot reach REDCap's database at 127.0.0.1:3306 (`directory.host`)"}});
        let top = serde_json::json!({"at": 1_700_000_000.0, "window_s": 60.0, "tokens": [
            {"token_fp": "8b472f95618a9a1c", "token_masked": "AB1…34", "calls": 5,
             "owner": {"username": "jdoe", "project_id": 12, "super_token": false}},
            {"token_fp": "0000000000000001", "token_masked": "9F9…9F", "calls": 1,
             "owner": {"username": "admin", "project_id": null, "super_token": true}},
            {"token_fp": "0000000000000002", "token_masked": "111…11", "calls": 1, "owner": null}
        ]});
        let text = top_text(
            "http://127.0.0.1:9864",
            &top,
            &status,
            &serde_json::json!([]),
        );
        assert!(text.contains("jdoe, project 12"), "{text}");
        assert!(text.contains("admin, super token"), "{text}");
        assert!(text.lines().last().unwrap().ends_with("  -"), "{text}");
        let text = status_text(&status);
        assert!(
            text.contains(
                "directory: UNAVAILABLE (3 tokens named from an earlier read): cannot reach"
            ),
            "{text}"
        );
        let available = serde_json::json!({"directory": {"state": "available", "entries": 3}});
        assert!(status_text(&available).contains("directory: available, 3 tokens named"));
        assert!(
            !status_text(&serde_json::json!({"directory": {"state": "off"}})).contains("directory")
        );
    }

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
        assert!(!text.contains("coverage"), "an older stats file: {text}");
        let mut covered = clean.clone();
        covered["coverage"] = serde_json::json!([]);
        assert!(status_text(&covered).contains("coverage: no blind spot seen"));
        let mut blind = clean.clone();
        blind["coverage"] = serde_json::json!([{"reason": "https_unread", "count": 5,
            "since": 1_700_000_000.0, "last": 1_700_000_010.0, "advice": "check capture.tls"}]);
        let text = status_text(&blind);
        assert!(
            text.contains("coverage: BLIND https_unread (5 seen): check capture.tls"),
            "{text}"
        );
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
