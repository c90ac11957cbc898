//! `redcap-monitor report lifecycle|usage`: the long-term reports, gathered from the store (read
//! only, beside a running daemon), the token directory (when configured) and the attestation
//! CSV, computed by [`crate::stages::lifecycle`] and [`crate::stages::usage`], and rendered
//! here as a terminal table, CSV, JSON or a self-contained HTML page with charts
//! ([`crate::commands::html`]). `lifecycle --revoke` hands the stale tokens to the
//! `[[hooks.token_stale]]` hooks: a dry run listing what would run, or (`--execute`) running them
//! and auditing each result, in the store, or through the daemon when it holds the store.
//!
//! Never writes a raw token: the store and the directory hold fingerprints only, and every
//! renderer prints fingerprints and masked forms. CSV cells a spreadsheet would run as a
//! formula are quoted as text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::commands::config::Config;
use crate::commands::html::{Badge, BarChart, Cell, Limit, Page, Table, Unit};
use crate::edges::actions::{Request, RequestError, request_dir, submit_request};
use crate::edges::alerts::{TokenRef, host_name};
use crate::edges::directory::{Owner, SourceKind, read_source};
use crate::edges::hooks::{HookAction, HookEvent, HookOutcome, HookResult, Hooks};
use crate::edges::store::{AuditEntry, AuditKind, RollupExtent, Store, StoreError, StoreLimits};
use crate::shared::model::Timestamp;
use crate::shared::token::{FingerprintMap, SiteKey, TokenFingerprint};
use crate::stages::lifecycle::{
    Attestation, KnownToken, LastUseSource, LifecycleReport, LifecycleRules, StaleToken,
    lifecycle_report, parse_attestations,
};
use crate::stages::usage::{Day, OwnerView, Period, UsageReport, day_text_of, usage_report};

/// How a report is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    /// A table for a terminal.
    #[default]
    Text,
    /// One row per line with a header, for spreadsheets.
    Csv,
    /// One JSON document, for programs.
    Json,
    /// A self-contained page with charts, for people (no script, nothing fetched).
    Html,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the attestation file {path} (`lifecycle.attestations`): {message}")]
    Attestations { path: PathBuf, message: String },
    #[error("the report period is empty: --from {from} is after --to {to}")]
    Period { from: String, to: String },
    #[error(
        "no hook to revoke stale tokens with: add a `[[hooks.token_stale]]` (an exec or http hook, \
         see the README) to the configuration"
    )]
    NoRevocationHooks,
    #[error("the hook results could not be audited through the running daemon: {0}")]
    Request(#[from] RequestError),
    #[error("the running daemon refused the hook results: {0}")]
    Refused(String),
}

/// What the reports read besides the store: who owns each token, if the directory answered.
pub struct Sources {
    /// `None` when no directory is configured or it could not be read (see `warnings`).
    pub(crate) owners: Option<FingerprintMap<Arc<Owner>>>,
    pub(crate) warnings: Vec<String>,
}

/// Reads the configured token directory once. A directory that fails is a warning, not an
/// error: the reports fall back to fingerprints and the daemon's own last-seen.
pub fn read_directory(config: &Config, key: Option<&SiteKey>) -> Sources {
    if config.directory.source == SourceKind::None {
        return Sources {
            owners: None,
            warnings: Vec::new(),
        };
    }
    let Some(key) = key else {
        return Sources {
            owners: None,
            warnings: vec![format!(
                "the token directory is not used: the site key {} cannot be read (pass --key)",
                config.site.key_file.display()
            )],
        };
    };
    match read_source(&config.directory, key) {
        Ok(owners) => Sources {
            owners: Some(owners),
            warnings: Vec::new(),
        },
        Err(err) => Sources {
            owners: None,
            warnings: vec![format!(
                "the token directory could not be read, tokens are named by fingerprint and \
                 last use is the daemon's: {err}"
            )],
        },
    }
}

/// What each report document carries besides the report itself.
#[derive(Clone, Debug, Serialize)]
pub struct Context {
    pub(crate) store: PathBuf,
    pub(crate) rollups: RollupExtent,
    /// The oldest day the store holds rollups for (`2026-05-01`).
    pub(crate) history_since: Option<String>,
    pub(crate) warnings: Vec<String>,
    /// When the report was made (the page's date; the JSON has the report's own).
    #[serde(skip)]
    pub(crate) generated: Timestamp,
}

fn context(store: &Store, warnings: Vec<String>, now: Timestamp) -> Result<Context, ReportError> {
    let rollups = store.rollup_extent()?;
    let mut warnings = warnings;
    if let Some(day) = rollups.evicted_through {
        warnings.push(format!(
            "{} daily row(s) up to {} were dropped to stay within store.max_rollups: usage up \
             to that day is incomplete",
            rollups.evicted,
            day_text_of(day)
        ));
    }
    Ok(Context {
        store: store.path().to_owned(),
        rollups,
        history_since: rollups.oldest.map(day_text_of),
        warnings,
        generated: now,
    })
}

/// The lifecycle report from the store at `store`, the directory and the attestation file.
pub fn lifecycle(
    config: &Config,
    store_path: &Path,
    sources: Sources,
    now: Timestamp,
) -> Result<(LifecycleReport, Context), ReportError> {
    let store = Store::open_read_only(store_path)?;
    let mut known: BTreeMap<TokenFingerprint, KnownToken> = BTreeMap::new();
    for seen in store.tokens()? {
        let token = known
            .entry(seen.token)
            .or_insert_with(|| KnownToken::new(seen.token));
        token.token_masked = Some(seen.masked);
        token.daemon_last_seen = Some(seen.last_seen);
    }
    let connected = sources.owners.is_some();
    if let Some(owners) = &sources.owners {
        for (fp, owner) in owners {
            let token = known.entry(*fp).or_insert_with(|| KnownToken::new(*fp));
            token.owner = Some(owner.view());
            token.redcap_last_use = owner.last_api_use_at();
        }
    }
    let attestations = match &config.lifecycle.attestations {
        None => None,
        Some(path) => Some(read_attestations(path)?),
    };
    let tokens: Vec<KnownToken> = known.into_values().collect();
    let report = lifecycle_report(
        &tokens,
        attestations.as_deref(),
        LifecycleRules::from_config(&config.lifecycle),
        connected,
        now,
    );
    let context = context(&store, sources.warnings, now)?;
    Ok((report, context))
}

fn read_attestations(path: &Path) -> Result<Vec<Attestation>, ReportError> {
    let error = |message: String| ReportError::Attestations {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    parse_attestations(&text).map_err(error)
}

/// The usage report over the days `from..=to` (default: the 30 days ending today).
pub fn usage(
    store_path: &Path,
    sources: Sources,
    from: Option<Day>,
    to: Option<Day>,
    now: Timestamp,
) -> Result<(UsageReport, Context), ReportError> {
    let to = to.unwrap_or(Day::of(now));
    let period = match from {
        Some(from) => Period { from, to },
        None => Period::ending(to, 30),
    };
    if period.from > period.to {
        return Err(ReportError::Period {
            from: day_text_of(period.from),
            to: day_text_of(period.to),
        });
    }
    let store = Store::open_read_only(store_path)?;
    let rows = store.rollups(period.from, period.to)?;
    let masked: FingerprintMap<_> = store
        .tokens()?
        .into_iter()
        .map(|seen| (seen.token, seen.masked))
        .collect();
    let owners = sources.owners.as_ref();
    let report = usage_report(
        &rows,
        period,
        |fp| masked.get(fp).cloned(),
        |fp| owners.and_then(|o| o.get(fp)).map(|o| o.view()),
    );
    let context = context(&store, sources.warnings, now)?;
    Ok((report, context))
}

/// The document `--format json` prints: the report's kind, its context and the report.
#[derive(Serialize)]
struct Document<'a, T: Serialize> {
    report: &'static str,
    #[serde(flatten)]
    context: &'a Context,
    #[serde(flatten)]
    body: &'a T,
}

fn json<T: Serialize>(kind: &'static str, report: &T, context: &Context) -> String {
    let doc = Document {
        report: kind,
        context,
        body: report,
    };
    let mut out = serde_json::to_string_pretty(&doc).unwrap_or_default();
    out.push('\n');
    out
}

pub fn render_lifecycle(
    report: &LifecycleReport,
    context: &Context,
    format: ReportFormat,
) -> String {
    match format {
        ReportFormat::Json => json("lifecycle", report, context),
        ReportFormat::Csv => lifecycle_csv(report),
        ReportFormat::Text => lifecycle_text(report, context),
        ReportFormat::Html => lifecycle_html(report, context),
    }
}

pub fn render_usage(report: &UsageReport, context: &Context, format: ReportFormat) -> String {
    match format {
        ReportFormat::Json => json("usage", report, context),
        ReportFormat::Csv => usage_csv(report),
        ReportFormat::Text => usage_text(report, context),
        ReportFormat::Html => usage_html(report, context),
    }
}

fn opt<T: ToString>(value: &Option<T>) -> String {
    value.as_ref().map_or(String::new(), T::to_string)
}

fn who(owner: &Option<OwnerView>) -> (String, String) {
    owner.as_ref().map_or((String::new(), String::new()), |o| {
        (o.person.clone(), o.project.clone().unwrap_or_default())
    })
}

fn source_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

const LIFECYCLE_COLUMNS: &[&str] = &[
    "section",
    "token_fp",
    "token_masked",
    "username",
    "person",
    "project_id",
    "project",
    "last_use",
    "last_use_source",
    "idle_days",
    "attestation_status",
    "last_attested",
    "due",
    "days_left",
];

fn lifecycle_csv(report: &LifecycleReport) -> String {
    let mut out = csv_line(LIFECYCLE_COLUMNS.iter().map(|c| c.to_string()));
    let owner_cells = |owner: &Option<OwnerView>| {
        owner.as_ref().map_or(vec![String::new(); 4], |o| {
            vec![
                o.username.clone(),
                o.person.clone(),
                opt(&o.project_id),
                o.project.clone().unwrap_or_default(),
            ]
        })
    };
    for s in &report.stale {
        let mut cells = vec!["stale".into(), s.token_fp.to_string(), opt(&s.token_masked)];
        cells.extend(owner_cells(&s.owner));
        cells.extend([
            opt(&s.last_use),
            source_name(&s.last_use_source),
            opt(&s.idle_days),
        ]);
        cells.extend([String::new(), String::new(), String::new(), String::new()]);
        out.push_str(&csv_line(cells));
    }
    for a in &report.attestations {
        let mut cells = vec![
            "attestation".into(),
            a.token_fp.to_string(),
            opt(&a.token_masked),
        ];
        cells.extend(owner_cells(&a.owner));
        cells.extend([String::new(), String::new(), String::new()]);
        cells.extend([
            source_name(&a.status),
            opt(&a.last_attested),
            opt(&a.due),
            opt(&a.days_left),
        ]);
        out.push_str(&csv_line(cells));
    }
    out
}

fn lifecycle_text(report: &LifecycleReport, context: &Context) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Token lifecycle at {} ({} token(s) known; last use from {})",
        report.generated_at,
        report.tokens_known,
        if report.directory_connected {
            "REDCap's log via the token directory, else the daemon"
        } else {
            "the daemon's sightings (no token directory)"
        }
    );
    let _ = writeln!(
        out,
        "\nUnused for more than {} days: {}",
        report.stale_after_days,
        report.stale.len()
    );
    if !report.stale.is_empty() {
        let _ = writeln!(
            out,
            "{:<16} {:<9} {:<28} {:<24} {:<20} {:<7} {:>5}",
            "fingerprint", "token", "owner", "project", "last use", "source", "days"
        );
        for s in &report.stale {
            let (person, project) = who(&s.owner);
            let _ = writeln!(
                out,
                "{:<16} {:<9} {:<28} {:<24} {:<20} {:<7} {:>5}",
                s.token_fp.to_string(),
                opt(&s.token_masked),
                cut(&person, 28),
                cut(&project, 24),
                s.last_use.as_deref().unwrap_or("never"),
                source_name(&s.last_use_source),
                s.idle_days.map_or("-".into(), |d| d.to_string())
            );
        }
    }
    if report.attestations_checked {
        let _ = writeln!(
            out,
            "\nAttestations (every {} days) due within {} days, overdue or missing: {}",
            report.attestation_every_days,
            report.attestation_warning_days,
            report.attestations.len()
        );
        if !report.attestations.is_empty() {
            let _ = writeln!(
                out,
                "{:<16} {:<9} {:<28} {:<24} {:<8} {:<10} {:<10} {:>6}",
                "fingerprint", "token", "owner", "project", "status", "attested", "due", "days"
            );
            for a in &report.attestations {
                let (person, project) = who(&a.owner);
                let _ = writeln!(
                    out,
                    "{:<16} {:<9} {:<28} {:<24} {:<8} {:<10} {:<10} {:>6}",
                    a.token_fp.to_string(),
                    opt(&a.token_masked),
                    cut(&person, 28),
                    cut(&project, 24),
                    source_name(&a.status),
                    a.last_attested.as_deref().unwrap_or("never"),
                    a.due.as_deref().unwrap_or("-"),
                    a.days_left.map_or("-".into(), |d| d.to_string())
                );
            }
        }
    } else {
        let _ = writeln!(
            out,
            "\nAttestations: not checked (set `lifecycle.attestations` to the attestation CSV)"
        );
    }
    footer(&mut out, context);
    out
}

const USAGE_COLUMNS: &[&str] = &[
    "scope",
    "rank",
    "name",
    "token_fp",
    "token_masked",
    "username",
    "project",
    "tokens",
    "calls",
    "heavy_calls",
    "violations",
    "request_bytes",
    "response_bytes",
    "server_time_s",
    "share_of_calls",
    "share_of_server_time",
];

fn usage_csv(report: &UsageReport) -> String {
    let mut out = csv_line(USAGE_COLUMNS.iter().map(|c| c.to_string()));
    let numbers = |u: &crate::stages::usage::Usage, calls: f64, time: f64| {
        vec![
            u.calls.to_string(),
            u.heavy_calls.to_string(),
            u.violations.to_string(),
            u.request_bytes.to_string(),
            u.response_bytes.to_string(),
            format!("{:.3}", u.server_time_ns as f64 / 1e9),
            format!("{calls:.4}"),
            format!("{time:.4}"),
        ]
    };
    let total = &report.totals;
    let mut cells = vec![
        "total".into(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        report.active_tokens.to_string(),
    ];
    cells.extend(numbers(total, 1.0, 1.0));
    out.push_str(&csv_line(cells));
    if let Some(share) = report.top10_share {
        let top: u64 = report.tokens.iter().take(10).map(|t| t.usage.calls).sum();
        let mut cells = vec!["top10".into(), String::new(), String::new()];
        cells.extend(vec![String::new(); 4]);
        cells.push(report.tokens.len().min(10).to_string());
        cells.extend([top.to_string()]);
        cells.extend(vec![String::new(); 5]);
        cells.extend([format!("{share:.4}"), String::new()]);
        out.push_str(&csv_line(cells));
    }
    for t in &report.tokens {
        let (username, project) = t
            .owner
            .as_ref()
            .map_or((String::new(), String::new()), |o| {
                (o.username.clone(), o.project.clone().unwrap_or_default())
            });
        let mut cells = vec![
            "token".into(),
            t.rank.to_string(),
            String::new(),
            t.token_fp.to_string(),
            opt(&t.token_masked),
            username,
            project,
            "1".into(),
        ];
        cells.extend(numbers(&t.usage, t.share_of_calls, t.share_of_server_time));
        out.push_str(&csv_line(cells));
    }
    for (scope, groups) in [("user", &report.users), ("project", &report.projects)] {
        for (i, g) in groups.iter().enumerate() {
            let mut cells = vec![scope.into(), (i + 1).to_string(), g.name.clone()];
            cells.extend(vec![String::new(); 4]);
            cells.push(g.tokens.to_string());
            cells.extend(numbers(&g.usage, g.share_of_calls, g.share_of_server_time));
            out.push_str(&csv_line(cells));
        }
    }
    out
}

fn usage_text(report: &UsageReport, context: &Context) -> String {
    let mut out = String::new();
    let t = &report.totals;
    let _ = writeln!(
        out,
        "API use from {} to {} (UTC days): {} call(s) by {} token(s), {} heavy, {} violation(s), \
         server time {:.1} s",
        day_text_of(report.period.from),
        day_text_of(report.period.to),
        t.calls,
        report.active_tokens,
        t.heavy_calls,
        t.violations,
        t.server_time_ns as f64 / 1e9
    );
    match report.top10_share {
        Some(share) => {
            let _ = writeln!(
                out,
                "The top 10 tokens made {:.1}% of the calls.",
                share * 100.0
            );
        }
        None => {
            let _ = writeln!(out, "No calls in the period.");
        }
    }
    if !report.tokens.is_empty() {
        let _ = writeln!(
            out,
            "\n{:>4} {:<16} {:<9} {:<28} {:>8} {:>6} {:>5} {:>12} {:>12} {:>7} {:>7}",
            "#",
            "fingerprint",
            "token",
            "owner",
            "calls",
            "heavy",
            "viol",
            "req bytes",
            "resp bytes",
            "calls%",
            "time%"
        );
        for tok in &report.tokens {
            let (person, _) = who(&tok.owner);
            let _ = writeln!(
                out,
                "{:>4} {:<16} {:<9} {:<28} {:>8} {:>6} {:>5} {:>12} {:>12} {:>6.1}% {:>6.1}%",
                tok.rank,
                tok.token_fp.to_string(),
                opt(&tok.token_masked),
                cut(&person, 28),
                tok.usage.calls,
                tok.usage.heavy_calls,
                tok.usage.violations,
                tok.usage.request_bytes,
                tok.usage.response_bytes,
                tok.share_of_calls * 100.0,
                tok.share_of_server_time * 100.0
            );
        }
    }
    for (title, groups) in [("user", &report.users), ("project", &report.projects)] {
        if groups.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "\n{:<40} {:>6} {:>8} {:>6} {:>5} {:>7} {:>7}",
            format!("by {title}"),
            "tokens",
            "calls",
            "heavy",
            "viol",
            "calls%",
            "time%"
        );
        for g in groups {
            let _ = writeln!(
                out,
                "{:<40} {:>6} {:>8} {:>6} {:>5} {:>6.1}% {:>6.1}%",
                cut(&g.name, 40),
                g.tokens,
                g.usage.calls,
                g.usage.heavy_calls,
                g.usage.violations,
                g.share_of_calls * 100.0,
                g.share_of_server_time * 100.0
            );
        }
    }
    footer(&mut out, context);
    out
}

/// The owner columns of a row: who and which project, or empty cells without a directory.
fn owner_cells(owner: &Option<OwnerView>) -> [Cell; 2] {
    let (person, project) = who(owner);
    [Cell::text(person), Cell::text(project)]
}

fn lifecycle_html(report: &LifecycleReport, context: &Context) -> String {
    let mut page = Page::new("Token lifecycle", context.generated);
    page.summary(&[
        ("Judged at", Cell::text(report.generated_at.clone())),
        ("Tokens known", Cell::number(report.tokens_known)),
        (
            "Last use from",
            Cell::text(if report.directory_connected {
                "REDCap's log via the token directory, else the daemon's sightings"
            } else {
                "the daemon's sightings (no token directory)"
            }),
        ),
        (
            "Unused longer than",
            Cell::text(format!("{} days", report.stale_after_days)),
        ),
    ]);
    let stale_badge = if report.stale.is_empty() {
        Badge::Pass
    } else {
        Badge::Warn
    };
    page.heading_with_badge(
        2,
        &format!("Unused for more than {} days", report.stale_after_days),
        stale_badge,
        &report.stale.len().to_string(),
    );
    if report.stale.is_empty() {
        page.paragraph("No token is unused that long.");
    } else {
        page.bar_chart(&BarChart {
            title: "Days since last use".into(),
            x_label: "days".into(),
            unit: Unit::Count,
            bars: report
                .stale
                .iter()
                .take(MAX_CHART_BARS)
                .map(|s| {
                    let label = opt(&s.token_masked);
                    (label, s.idle_days.map_or(0.0, |d| d as f64))
                })
                .collect(),
            limit: Some(Limit {
                value: report.stale_after_days as f64,
                label: format!("{} days", report.stale_after_days),
            }),
        });
        let mut table = Table::new(&[
            "fingerprint",
            "token",
            "owner",
            "project",
            "last use",
            "source",
            "idle days",
        ]);
        for s in &report.stale {
            let [person, project] = owner_cells(&s.owner);
            table.row(vec![
                Cell::code(s.token_fp.to_string()),
                Cell::code(opt(&s.token_masked)),
                person,
                project,
                Cell::text(s.last_use.clone().unwrap_or_else(|| "never".into())),
                Cell::text(source_name(&s.last_use_source)),
                s.idle_days.map_or(Cell::Empty, Cell::number),
            ]);
        }
        page.table(&table);
    }
    if report.attestations_checked {
        let overdue = report
            .attestations
            .iter()
            .any(|a| source_name(&a.status) != "due");
        let badge = match (report.attestations.is_empty(), overdue) {
            (true, _) => Badge::Pass,
            (false, true) => Badge::Fail,
            (false, false) => Badge::Warn,
        };
        page.heading_with_badge(
            2,
            &format!(
                "Attestations (every {} days): due within {} days, overdue or missing",
                report.attestation_every_days, report.attestation_warning_days
            ),
            badge,
            &report.attestations.len().to_string(),
        );
        let mut table = Table::new(&[
            "fingerprint",
            "token",
            "owner",
            "project",
            "status",
            "last attested",
            "due",
            "days left",
        ]);
        for a in &report.attestations {
            let [person, project] = owner_cells(&a.owner);
            let status = source_name(&a.status);
            let badge = if status == "due" {
                Badge::Warn
            } else {
                Badge::Fail
            };
            table.row(vec![
                Cell::code(a.token_fp.to_string()),
                Cell::code(opt(&a.token_masked)),
                person,
                project,
                Cell::badge(badge, status),
                Cell::text(a.last_attested.clone().unwrap_or_else(|| "never".into())),
                Cell::text(a.due.clone().unwrap_or_default()),
                a.days_left.map_or(Cell::Empty, Cell::number),
            ]);
        }
        page.table(&table);
    } else {
        page.heading(2, "Attestations");
        page.paragraph("Not checked: set `lifecycle.attestations` to the attestation CSV.");
    }
    html_footer(&mut page, context);
    page.finish()
}

fn usage_html(report: &UsageReport, context: &Context) -> String {
    let mut page = Page::new("API use", context.generated);
    let t = &report.totals;
    page.summary(&[
        (
            "Period (UTC days)",
            Cell::text(format!(
                "{} to {}",
                day_text_of(report.period.from),
                day_text_of(report.period.to)
            )),
        ),
        ("Calls", Cell::number(t.calls)),
        ("Tokens that called", Cell::number(report.active_tokens)),
        ("Heavy calls", Cell::number(t.heavy_calls)),
        ("Violations", Cell::number(t.violations)),
        (
            "Server time",
            Cell::text(Unit::Seconds.label(t.server_time_ns as f64 / 1e9)),
        ),
        (
            "Calls by the top 10 tokens",
            report.top10_share.map_or(Cell::text("no calls"), |share| {
                Cell::text(Unit::Share.label(share))
            }),
        ),
    ]);
    if !report.tokens.is_empty() {
        page.heading(2, "Tokens by calls");
        page.bar_chart(&BarChart {
            title: "Share of all calls".into(),
            x_label: "share of calls".into(),
            unit: Unit::Share,
            bars: report
                .tokens
                .iter()
                .take(MAX_CHART_BARS)
                .map(|tok| {
                    let (person, _) = who(&tok.owner);
                    let name = opt(&tok.token_masked);
                    let label = if person.is_empty() {
                        name
                    } else {
                        format!("{name} {person}")
                    };
                    (label, tok.share_of_calls)
                })
                .collect(),
            limit: None,
        });
        let mut table = Table::new(&[
            "#",
            "fingerprint",
            "token",
            "owner",
            "project",
            "calls",
            "heavy",
            "violations",
            "request bytes",
            "response bytes",
            "share of calls",
            "share of server time",
        ]);
        for tok in &report.tokens {
            let [person, project] = owner_cells(&tok.owner);
            table.row(vec![
                Cell::number(tok.rank),
                Cell::code(tok.token_fp.to_string()),
                Cell::code(opt(&tok.token_masked)),
                person,
                project,
                Cell::number(tok.usage.calls),
                Cell::number(tok.usage.heavy_calls),
                Cell::number(tok.usage.violations),
                Cell::text(Unit::Bytes.label(tok.usage.request_bytes as f64)),
                Cell::text(Unit::Bytes.label(tok.usage.response_bytes as f64)),
                Cell::text(Unit::Share.label(tok.share_of_calls)),
                Cell::text(Unit::Share.label(tok.share_of_server_time)),
            ]);
        }
        page.table(&table);
    }
    for (title, groups) in [("By user", &report.users), ("By project", &report.projects)] {
        if groups.is_empty() {
            continue;
        }
        page.heading(2, title);
        let mut table = Table::new(&[
            "name",
            "tokens",
            "calls",
            "heavy",
            "violations",
            "share of calls",
            "share of server time",
        ]);
        for g in groups {
            table.row(vec![
                Cell::text(g.name.clone()),
                Cell::number(g.tokens),
                Cell::number(g.usage.calls),
                Cell::number(g.usage.heavy_calls),
                Cell::number(g.usage.violations),
                Cell::text(Unit::Share.label(g.share_of_calls)),
                Cell::text(Unit::Share.label(g.share_of_server_time)),
            ]);
        }
        page.table(&table);
    }
    html_footer(&mut page, context);
    page.finish()
}

/// Bars one chart shows: the rest are in the table below it.
const MAX_CHART_BARS: usize = 25;

fn html_footer(page: &mut Page, context: &Context) {
    page.paragraph(&format!(
        "Store {}: {} daily row(s){}.",
        context.store.display(),
        context.rollups.rows,
        context
            .history_since
            .as_ref()
            .map_or(String::new(), |day| format!(" since {day}"))
    ));
    if !context.warnings.is_empty() {
        page.heading_with_badge(
            2,
            "Warnings",
            Badge::Warn,
            &context.warnings.len().to_string(),
        );
        page.list(&context.warnings);
    }
}

fn footer(out: &mut String, context: &Context) {
    let _ = writeln!(
        out,
        "\nStore {}: {} daily row(s){}",
        context.store.display(),
        context.rollups.rows,
        context
            .history_since
            .as_ref()
            .map_or(String::new(), |day| format!(" since {day}"))
    );
    for warning in &context.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
}

/// At most `width` characters, ending in `…` when cut.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_owned()
    } else {
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// One CSV record (RFC 4180): cells with commas, quotes or line breaks are quoted, and a cell a
/// spreadsheet would run as a formula is prefixed with `'`.
fn csv_line(cells: impl IntoIterator<Item = String>) -> String {
    let mut line = cells
        .into_iter()
        .map(|cell| {
            let cell = if cell.starts_with(['=', '+', '@', '\t', '\r'])
                || (cell.starts_with('-') && cell.parse::<f64>().is_err())
            {
                format!("'{cell}")
            } else {
                cell
            };
            if cell.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", cell.replace('"', "\"\""))
            } else {
                cell
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    line.push_str("\r\n");
    line
}

/// One hook for one stale token: to run (a dry run) or run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Revocation {
    #[serde(flatten)]
    pub(crate) token: StaleToken,
    pub(crate) hook: String,
    /// `None` in a dry run.
    pub(crate) outcome: Option<HookOutcome>,
}

/// What `report lifecycle --revoke` did or would do.
#[derive(Clone, Debug, Serialize)]
pub struct RevocationRun {
    pub(crate) executed: bool,
    /// Where the hook results were audited: `store`, `daemon` (through its request directory),
    /// or `none` in a dry run.
    pub(crate) audited_in: &'static str,
    pub(crate) runs: Vec<Revocation>,
}

impl RevocationRun {
    /// Some hook that ran did not succeed.
    pub fn any_failed(&self) -> bool {
        self.runs
            .iter()
            .filter_map(|r| r.outcome.as_ref())
            .any(|o| !succeeded(o))
    }
}

fn succeeded(outcome: &HookOutcome) -> bool {
    matches!(
        outcome.result,
        HookResult::Exited { success: true, .. } | HookResult::Http { success: true, .. }
    )
}

/// How long the daemon may take to take the audit records of one token's hooks.
const AUDIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

enum AuditSink {
    Store(Store),
    Daemon(PathBuf),
}

/// Hands each stale token of `report` to the `[[hooks.token_stale]]` hooks: with `execute`
/// false lists what would run, else runs them in order, token by token, auditing each result
/// (`hook_result`, `action: token_stale`) before the next token. Where the audit goes is
/// settled before anything runs: the store, or the daemon that holds it.
pub fn revoke(
    config: &Config,
    store_path: &Path,
    report: &LifecycleReport,
    execute: bool,
    now: Timestamp,
) -> Result<RevocationRun, ReportError> {
    let names: Vec<&str> = config
        .hooks
        .token_stale
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    if names.is_empty() {
        return Err(ReportError::NoRevocationHooks);
    }
    if !execute {
        let runs = report
            .stale
            .iter()
            .flat_map(|token| {
                names.iter().map(|name| Revocation {
                    token: token.clone(),
                    hook: (*name).to_owned(),
                    outcome: None,
                })
            })
            .collect();
        return Ok(RevocationRun {
            executed: false,
            audited_in: "none",
            runs,
        });
    }
    let sink = match Store::open(store_path, StoreLimits::from_config(&config.store)) {
        Ok(store) => AuditSink::Store(store),
        Err(StoreError::Busy { .. }) => {
            let dir = request_dir(store_path);
            if !dir.is_dir() {
                return Err(RequestError::NoDaemon {
                    store: store_path.to_owned(),
                    dir,
                }
                .into());
            }
            AuditSink::Daemon(store_path.to_owned())
        }
        Err(err) => return Err(err.into()),
    };
    let hooks = Hooks::new(&config.hooks, host_name());
    let mut runs = Vec::new();
    for token in &report.stale {
        let event = HookEvent {
            action: HookAction::TokenStale,
            at: now,
            token: TokenRef {
                fingerprint: token.token_fp,
                masked: token.token_masked.clone(),
            },
            until: None,
            reason: stale_reason(token, report.stale_after_days),
            evidence: serde_json::to_value(token).unwrap_or_default(),
        };
        let outcomes = hooks.run(&event, None);
        let entries: Vec<AuditEntry> = outcomes
            .iter()
            .map(|outcome| {
                let mut details = serde_json::to_value(outcome).unwrap_or_default();
                details["event_at"] = now.as_secs_f64().into();
                details["reason"] = event.reason.clone().into();
                details["source"] = "report lifecycle --revoke --execute".into();
                AuditEntry {
                    ts: now,
                    kind: AuditKind::HookResult,
                    token: Some(token.token_fp),
                    details,
                }
            })
            .collect();
        match &sink {
            AuditSink::Store(store) => {
                for entry in &entries {
                    store.append_audit(entry)?;
                }
            }
            AuditSink::Daemon(path) => {
                for entry in entries {
                    let request = Request::HookResults {
                        entries: vec![fit_request(entry)],
                    };
                    let reply = submit_request(path, &request, AUDIT_TIMEOUT)?;
                    if !reply.ok {
                        return Err(ReportError::Refused(reply.error.unwrap_or_default()));
                    }
                }
            }
        }
        runs.extend(outcomes.into_iter().map(|outcome| Revocation {
            token: token.clone(),
            hook: outcome.hook.clone(),
            outcome: Some(outcome),
        }));
    }
    Ok(RevocationRun {
        executed: true,
        audited_in: match sink {
            AuditSink::Store(_) => "store",
            AuditSink::Daemon(_) => "daemon",
        },
        runs,
    })
}

/// A request file is at most 64 KiB: a hook's output is cut to fit (it is bounded already).
fn fit_request(mut entry: AuditEntry) -> AuditEntry {
    const KEEP: usize = 4096;
    for stream in ["stdout", "stderr"] {
        if let Some(text) = entry.details[stream].as_str()
            && text.len() > KEEP
        {
            let mut end = KEEP;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            entry.details[stream] = text[..end].to_owned().into();
            entry.details["output_truncated"] = true.into();
        }
    }
    entry
}

fn stale_reason(token: &StaleToken, stale_after_days: u32) -> String {
    match (&token.last_use, token.idle_days) {
        (Some(last), Some(days)) => format!(
            "unused for {days} days (more than {stale_after_days}); last use {last} according to {}",
            match token.last_use_source {
                LastUseSource::Redcap => "REDCap's log",
                LastUseSource::Daemon => "redcap-monitor",
                LastUseSource::None => "nobody",
            }
        ),
        _ => "no use on record (REDCap's log and redcap-monitor)".into(),
    }
}

pub fn render_revocation(run: &RevocationRun, context: &Context, format: ReportFormat) -> String {
    match format {
        ReportFormat::Html => {
            let mut page = Page::new("Revoking stale tokens", context.generated);
            page.paragraph(&if run.executed {
                format!(
                    "Ran {} hook(s) for the stale tokens, audited in the {}.",
                    run.runs.len(),
                    run.audited_in
                )
            } else {
                format!(
                    "Dry run: with --execute, {} hook run(s) for the stale tokens.",
                    run.runs.len()
                )
            });
            let mut table = Table::new(&[
                "fingerprint",
                "token",
                "owner",
                "project",
                "idle days",
                "hook",
                "result",
            ]);
            for r in &run.runs {
                let [person, project] = owner_cells(&r.token.owner);
                table.row(vec![
                    Cell::code(r.token.token_fp.to_string()),
                    Cell::code(opt(&r.token.token_masked)),
                    person,
                    project,
                    r.token.idle_days.map_or(Cell::Empty, Cell::number),
                    Cell::code(r.hook.clone()),
                    Cell::text(
                        r.outcome
                            .as_ref()
                            .map_or_else(|| "would run".into(), outcome_text),
                    ),
                ]);
            }
            page.table(&table);
            html_footer(&mut page, context);
            page.finish()
        }
        ReportFormat::Json => {
            let mut out = serde_json::to_string_pretty(run).unwrap_or_default();
            out.push('\n');
            out
        }
        ReportFormat::Csv => {
            let mut out = csv_line(
                [
                    "token_fp",
                    "token_masked",
                    "username",
                    "project",
                    "idle_days",
                    "last_use_source",
                    "hook",
                    "executed",
                    "result",
                ]
                .map(String::from),
            );
            for r in &run.runs {
                let (username, project) =
                    r.token.owner.as_ref().map_or_else(Default::default, |o| {
                        (o.username.clone(), o.project.clone().unwrap_or_default())
                    });
                out.push_str(&csv_line([
                    r.token.token_fp.to_string(),
                    opt(&r.token.token_masked),
                    username,
                    project,
                    opt(&r.token.idle_days),
                    source_name(&r.token.last_use_source),
                    r.hook.clone(),
                    run.executed.to_string(),
                    r.outcome.as_ref().map_or(String::new(), outcome_text),
                ]));
            }
            out
        }
        ReportFormat::Text => {
            let mut out = String::new();
            if !run.executed {
                let _ = writeln!(
                    out,
                    "Dry run: with --execute, {} hook run(s) for the stale tokens:",
                    run.runs.len()
                );
            } else {
                let _ = writeln!(
                    out,
                    "Ran {} hook(s) for the stale tokens (audited in the {}):",
                    run.runs.len(),
                    run.audited_in
                );
            }
            for r in &run.runs {
                let (person, _) = who(&r.token.owner);
                let _ = writeln!(
                    out,
                    "  {} `{}` for {} ({}{}): {}{}",
                    if run.executed { "ran" } else { "would run" },
                    r.hook,
                    r.token.token_fp,
                    opt(&r.token.token_masked),
                    if person.is_empty() {
                        String::new()
                    } else {
                        format!(", {person}")
                    },
                    r.token
                        .idle_days
                        .map_or("never used".into(), |d| format!("unused {d} days")),
                    r.outcome
                        .as_ref()
                        .map_or(String::new(), |o| format!(" -> {}", outcome_text(o)))
                );
            }
            out
        }
    }
}

fn outcome_text(outcome: &HookOutcome) -> String {
    match &outcome.result {
        HookResult::Exited { code, signal, .. } => {
            let how = match (code, signal) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(signal)) => format!("signal {signal}"),
                (None, None) => "exited".into(),
            };
            format!(
                "{} ({how})",
                if succeeded(outcome) { "ok" } else { "failed" }
            )
        }
        HookResult::TimedOut => "failed (timed out)".into(),
        HookResult::FailedToStart { error } => format!("failed (did not start: {error})"),
        HookResult::Http { status, .. } => {
            format!(
                "{} (HTTP {status})",
                if succeeded(outcome) { "ok" } else { "failed" }
            )
        }
        HookResult::HttpFailed { error } => format!("failed ({error})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_separators_and_defuses_formulas() {
        let line = csv_line([
            "a,b".into(),
            "say \"hi\"".into(),
            "=1+1".into(),
            "-3".into(),
        ]);
        assert_eq!(line, "\"a,b\",\"say \"\"hi\"\"\",'=1+1,-3\r\n");
    }

    #[test]
    fn a_period_that_ends_before_it_starts_is_refused_before_the_store_is_read() {
        let sources = Sources {
            owners: None,
            warnings: Vec::new(),
        };
        let err = usage(
            Path::new("/nonexistent/state.redb"),
            sources,
            Some(Day(20_001)),
            Some(Day(20_000)),
            Timestamp(0),
        )
        .unwrap_err();
        assert!(matches!(err, ReportError::Period { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("--from 2024-10-05 is after --to 2024-10-04"),
            "{err}"
        );
    }

    #[test]
    fn redcaps_last_use_reads_as_utc() {
        let owner = |text: &str| Owner {
            last_api_use: Some(text.into()),
            ..Owner::default()
        };
        let at = owner("2026-12-01 10:00:00").last_api_use_at().unwrap();
        assert_eq!(crate::shared::model::rfc3339(at), "2026-12-01T10:00:00Z");
        assert_eq!(owner("not a date").last_api_use_at(), None);
    }
}
