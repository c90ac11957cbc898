//! The `redcap-monitor` command line: the edge where files, stdin and stdout live.

mod admin;

use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use redcap_monitor::commands::analyze::{AnalyzeError, AnalyzeOutputs, analyze};
use redcap_monitor::commands::certify::{self, Format};
use redcap_monitor::commands::config::{Config, ConfigError};
use redcap_monitor::commands::preflight;
use redcap_monitor::commands::report::{self, ReportFormat};
use redcap_monitor::commands::run::{RunError, run};
use redcap_monitor::shared::model::Timestamp;
use redcap_monitor::shared::token::{RawToken, SiteKey, TokenFingerprint};
use redcap_monitor::stages::certify::{Outcome, Window};
use redcap_monitor::stages::usage::Day;

/// Watches REDCap API calls per token and enforces the institution's API policy.
#[derive(Parser)]
#[command(name = "redcap-monitor", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reads a capture (pcap or pcapng) and reports every API call per token and every violation.
    Analyze {
        /// The capture file.
        capture: PathBuf,
        /// Configuration file (TOML); the built-in defaults are the institution's policy.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Site key for token fingerprints (created with mode 0600 if absent).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Write one JSON object a line per API call here (`-` for stdout).
        #[arg(long)]
        calls: Option<PathBuf>,
        /// Write one JSON object a line per violation here (`-` for stdout).
        #[arg(long)]
        violations: Option<PathBuf>,
        /// Write one JSON object a line per enforcement decision here (`-` for stdout).
        #[arg(long)]
        decisions: Option<PathBuf>,
        /// Add the capture's token sightings and daily use to this state store (for `report`);
        /// not while the daemon holds it.
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Judges a QA testing window (a capture, or the live daemon's call records with
    /// `--records`) against the configured policy: PASS or FAIL per token with the evidence
    /// (peaks per rule, heavy calls, largest response, server time and its p95, every
    /// violation). Exit 0 when all pass, 1 when any fails, 2 on usage or I/O errors.
    Certify {
        /// The capture file (pcap or pcapng) of the testing window.
        #[arg(required_unless_present = "records", conflicts_with = "records")]
        capture: Option<PathBuf>,
        /// Judge the daemon's call records instead of a capture: the file `output.calls` names
        /// (its rotations beside it, plain or .gz, are read too) or their directory.
        #[arg(long, value_name = "FILE|DIR")]
        records: Option<PathBuf>,
        /// Configuration file (TOML) whose `[policy]` is judged against; the built-in defaults
        /// are the institution's policy.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Site key for token fingerprints (the daemon's, so fingerprints match); not needed
        /// with `--records`, which hold fingerprints already.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Only this token (its fingerprint, 16 hex digits, as `redcap-monitor fingerprint`
        /// prints it).
        #[arg(long, value_name = "FP", visible_alias = "token-fingerprint")]
        token: Option<TokenFingerprint>,
        /// Only calls that started at or after this time (Unix seconds or UTC
        /// 2026-01-05T08:00:00Z).
        #[arg(long, value_name = "TIME", value_parser = certify::parse_time)]
        from: Option<Timestamp>,
        /// Only calls that started before this time (Unix seconds or UTC 2026-01-05T09:00:00Z).
        #[arg(long, value_name = "TIME", value_parser = certify::parse_time)]
        to: Option<Timestamp>,
        /// Output: terminal text, Markdown for the researcher, a self-contained HTML page with
        /// charts (print it or hand it on), or JSON.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Watches the configured interfaces live (eBPF probe or libpcap) until SIGINT/SIGTERM and
    /// appends call and violation records to the configured outputs.
    Run {
        /// Configuration file (TOML): `[capture] interfaces` is required.
        #[arg(long)]
        config: PathBuf,
        /// Site key for token fingerprints (default: `site.key_file` from the configuration).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Checks a configuration file: every problem with its key path (exit 1 if any), then what
    /// `run` would need on this host (interfaces, writable paths) as warnings (exit 0).
    CheckConfig {
        /// The configuration file (TOML), e.g. /etc/redcap-monitor/config.toml.
        file: PathBuf,
        /// Print only problems and warnings, not the closing verdict.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Reads tokens from stdin, one a line, and prints their fingerprints.
    Fingerprint {
        /// Site key (the same file the daemon uses).
        #[arg(long)]
        key: PathBuf,
    },
    /// Prints the audit log: violations, decisions, suspensions, lifts, hook results, alerts.
    Audit(admin::AuditArgs),
    /// Lists the suspensions in force.
    Suspensions(admin::SuspensionsArgs),
    /// Suspends a token by hand, by its fingerprint (writes an audit record).
    Suspend(admin::SuspendArgs),
    /// Lifts a token's suspension by hand (writes an audit record).
    Lift(admin::LiftArgs),
    /// Shows the live daemon's capture health (losses, filtered traffic, input problems) from
    /// its admin API, or from its stats file when the API cannot be asked.
    Status(admin::StatusArgs),
    /// Shows the tokens loading the server most, refreshed like `top` (from the admin API).
    Top(admin::TopArgs),
    /// The long-term reports from the state store (read only; the daemon may be running).
    #[command(subcommand)]
    Report(ReportCommand),
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Tokens unused for longer than `lifecycle.stale_after` (last use from REDCap's log when
    /// the token directory is connected, else from the daemon), and attestations due, overdue
    /// or missing.
    Lifecycle {
        #[command(flatten)]
        common: ReportArgs,
        /// Hand the stale tokens to the `[[hooks.token_stale]]` hooks: lists what would run,
        /// unless --execute.
        #[arg(long)]
        revoke: bool,
        /// With --revoke: run the hooks, and audit each result.
        #[arg(long, requires = "revoke")]
        execute: bool,
    },
    /// Calls, heavy calls, violations, bytes and share of server time per token (and per user
    /// and project with the token directory), and the top 10 tokens' share of the calls.
    Usage {
        #[command(flatten)]
        common: ReportArgs,
        /// First day (UTC, 2026-05-01; default: 29 days before --to).
        #[arg(long, value_name = "DAY", value_parser = day)]
        from: Option<Day>,
        /// Last day, included (UTC, 2026-05-30; default: today).
        #[arg(long, value_name = "DAY", value_parser = day)]
        to: Option<Day>,
    },
}

#[derive(clap::Args)]
struct ReportArgs {
    /// Configuration file (TOML): `[store]`, `[directory]`, `[lifecycle]`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The store file (overrides `store.path`).
    #[arg(long, value_name = "FILE")]
    store: Option<PathBuf>,
    /// Site key, for the token directory's fingerprints (default: `site.key_file`).
    #[arg(long)]
    key: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    format: ReportFormat,
    /// Judge as of this time instead of now (Unix seconds or UTC 2026-01-05T08:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = certify::parse_time)]
    at: Option<Timestamp>,
}

fn day(text: &str) -> Result<Day, String> {
    redcap_monitor::stages::usage::parse_day(text)
        .ok_or_else(|| format!("`{text}` is not a day: give it as 2026-05-01"))
}

fn report(command: ReportCommand) -> ExitCode {
    let (common, usage_period, revoke) = match command {
        ReportCommand::Lifecycle {
            common,
            revoke,
            execute,
        } => (common, None, revoke.then_some(execute)),
        ReportCommand::Usage { common, from, to } => (common, Some((from, to)), None),
    };
    let config = match common.config.as_deref().map(Config::load).transpose() {
        Ok(config) => config.unwrap_or_default(),
        Err(err) => return fail(2, &err),
    };
    let store = common.store.clone().unwrap_or(config.store.path.clone());
    let key_path = common.key.clone().unwrap_or(config.site.key_file.clone());
    // The key is needed only to fingerprint the directory's tokens; never created here.
    let key = key_path
        .exists()
        .then(|| SiteKey::load_or_create(&key_path).ok())
        .flatten();
    let sources = report::read_directory(&config, key.as_ref());
    let now = common.at.unwrap_or_else(wall_now);
    let mut failed = false;
    let rendered = match usage_period {
        None => report::lifecycle(&config, &store, sources, now).and_then(|(r, c)| match revoke {
            None => Ok(report::render_lifecycle(&r, &c, common.format)),
            Some(execute) => report::revoke(&config, &store, &r, execute, now).map(|run| {
                failed = run.any_failed();
                report::render_revocation(&run, &c, common.format)
            }),
        }),
        Some((from, to)) => report::usage(&store, sources, from, to, now)
            .map(|(r, c)| report::render_usage(&r, &c, common.format)),
    };
    match rendered {
        Ok(text) => {
            print!("{text}");
            if failed {
                eprintln!("error: some revocation hooks failed (see above and the audit log)");
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(err) => fail(1, &err),
    }
}

fn wall_now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Analyze {
            capture,
            config,
            key,
            calls,
            violations,
            decisions,
            store,
        } => {
            let config = match config.map(|path| Config::load(&path)).transpose() {
                Ok(config) => config.unwrap_or_default(),
                Err(err) => return fail(2, &err),
            };
            let key_path = key.unwrap_or_else(|| config.site.key_file.clone());
            let key = match SiteKey::load_or_create(&key_path) {
                Ok(key) => key,
                Err(err) => return fail(2, &err),
            };
            let print_table = calls.is_none() && violations.is_none() && decisions.is_none();
            let outputs = AnalyzeOutputs {
                calls,
                violations,
                decisions,
                store,
            };
            match analyze(&capture, &config, key, &outputs) {
                Ok((summary, stats)) => {
                    for warning in &summary.warnings {
                        eprintln!("warning: {warning}");
                    }
                    if print_table {
                        print!("{}", summary.table());
                    }
                    eprintln!(
                        "{} API call(s) from {} token(s), {} incomplete",
                        summary.calls,
                        summary.tokens.len(),
                        summary.incomplete_calls
                    );
                    if !summary.problems.is_empty() {
                        let problems: Vec<String> = summary
                            .problems
                            .iter()
                            .map(|(name, n)| format!("{name}={n}"))
                            .collect();
                        eprintln!("input problems: {}", problems.join(" "));
                    }
                    if std::env::var_os("REDCAP_MONITOR_STATS").is_some() {
                        eprint!("{stats}");
                    }
                    ExitCode::SUCCESS
                }
                Err(err @ AnalyzeError::Config(_)) => fail(2, &err),
                Err(err) => fail(1, &err),
            }
        }
        Command::Certify {
            capture,
            records,
            config,
            key,
            token,
            from,
            to,
            format,
        } => {
            let config = match config.map(|path| Config::load(&path)).transpose() {
                Ok(config) => config.unwrap_or_default(),
                Err(err) => return fail(2, &err),
            };
            let window = Window { from, to, token };
            let judged = match (capture, records) {
                (Some(capture), _) => {
                    let key_path = key.unwrap_or_else(|| config.site.key_file.clone());
                    let key = match SiteKey::load_or_create(&key_path) {
                        Ok(key) => key,
                        Err(err) => return fail(2, &err),
                    };
                    certify::certify_capture(&capture, &config, key, window)
                        .map(|cert| (cert, format!("capture {}", capture.display())))
                        .map_err(|err| err.to_string())
                }
                // Records hold fingerprints already: no site key is needed.
                (None, Some(records)) => certify::certify_records(&records, &config, window)
                    .map(|cert| (cert, format!("call records {}", records.display())))
                    .map_err(|err| err.to_string()),
                (None, None) => Err("give a capture file or --records".to_string()),
            };
            match judged {
                Ok((cert, source)) => {
                    print!("{}", certify::render(&cert, &source, format, admin::now()));
                    match cert.certification.outcome {
                        Outcome::Pass => ExitCode::SUCCESS,
                        Outcome::Fail => ExitCode::from(1),
                    }
                }
                Err(err) => fail(2, &err),
            }
        }
        Command::Run { config, key } => {
            init_logging();
            let origin = config;
            let config = match Config::load(&origin) {
                Ok(config) => config,
                Err(err) => return fail(2, &err),
            };
            let key_path = key.unwrap_or_else(|| config.site.key_file.clone());
            let key = match SiteKey::load_or_create(&key_path) {
                Ok(key) => key,
                Err(err) => return fail(2, &err),
            };
            match run(&config, &origin, key) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err @ RunError::Config(_)) => fail(2, &err),
                Err(err) => fail(1, &err),
            }
        }
        Command::CheckConfig { file, quiet } => check_config(&file, quiet),
        Command::Fingerprint { key } => {
            let key = match SiteKey::load_or_create(&key) {
                Ok(key) => key,
                Err(err) => return fail(2, &err),
            };
            fingerprint_stdin(&key)
        }
        Command::Audit(args) => admin::audit(args),
        Command::Suspensions(args) => admin::suspensions(args),
        Command::Suspend(args) => admin::suspend(args),
        Command::Lift(args) => admin::lift(args),
        Command::Status(args) => admin::status(args),
        Command::Top(args) => admin::top(args),
        Command::Report(command) => report(command),
    }
}

/// `check-config FILE`: exit 0 when `run` would accept the file (warnings allowed), 1 if not.
fn check_config(file: &std::path::Path, quiet: bool) -> ExitCode {
    let shown = file.display();
    let config = match Config::load(file) {
        Ok(config) => config,
        Err(ConfigError::Problems { problems, .. }) => {
            for problem in &problems {
                println!("{shown}: error: {problem}");
            }
            println!(
                "{shown}: {} error(s): not valid; fix the keys named above (a running daemon \
                 keeps its current configuration)",
                problems.len()
            );
            return ExitCode::FAILURE;
        }
        Err(err) => {
            println!("error: {err}");
            return ExitCode::FAILURE;
        }
    };
    let warnings = preflight::warnings(&config);
    for warning in &warnings {
        println!("{shown}: warning: {warning}");
    }
    if !quiet {
        match warnings.len() {
            0 => println!("{shown}: valid"),
            n => println!("{shown}: valid, with {n} warning(s) about this host"),
        }
    }
    ExitCode::SUCCESS
}

fn fingerprint_stdin(key: &SiteKey) -> ExitCode {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut status = ExitCode::SUCCESS;
    for (n, line) in io::stdin().lock().lines().enumerate() {
        let line = match line {
            Ok(line) => line,
            Err(err) => return fail(1, &err),
        };
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        match RawToken::parse(text.as_bytes()) {
            Ok(token) => {
                let _ = writeln!(out, "{}", key.fingerprint(&token));
            }
            Err(_) => {
                eprintln!(
                    "line {}: not a REDCap token (expected letters and digits only)",
                    n + 1
                );
                status = ExitCode::FAILURE;
            }
        }
    }
    status
}

/// Logs to stderr; `RUST_LOG` overrides the default level (info). Colours only on a terminal
/// (journald and log files get plain text), never with `NO_COLOR` set.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(io::stderr)
        .init();
}

fn fail(code: u8, err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("redcap-monitor: {err}");
    ExitCode::from(code)
}
