//! `redcap-monitor certify`: a QA testing window judged against the configured policy.
//!
//! The edge around [`stages::certify`](crate::stages::certify): replays a capture through the
//! pipeline (the same replay as `analyze`), hands the verdicts to the judge, and renders its
//! [`Certification`] as terminal text, Markdown (for the researcher), a self-contained HTML page
//! with charts (through [`commands::html`](crate::commands::html)) or JSON. Shows tokens only by
//! fingerprint and masked form.

use std::fmt::Write as _;
use std::path::Path;

use crate::commands::analyze::replay;
use crate::commands::config::Config;
use crate::commands::html::{
    Badge, BarChart, Cell, Limit, Page, Series, Style, Table, TimeSeries, Unit,
};
use crate::edges::alerts::time::{parse_rfc3339, rfc3339};
use crate::edges::capture::CaptureError;
use crate::edges::records::{Needed, RecordsError, read_calls, record_files};
use crate::shared::model::{Span, Timestamp};
use crate::shared::token::SiteKey;
use crate::stages::certify::{Certification, Judge, Outcome, TokenCertificate, Window};
use crate::stages::policy::Policy;

/// How the certification is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For a terminal.
    #[default]
    Text,
    /// For the researcher: a document an admin can hand on.
    Markdown,
    /// For the researcher and for print: one HTML page with charts, no external assets.
    Html,
    /// For programs.
    Json,
}

/// The certification of a capture or of call records, and what reading them met on the way.
pub struct CaptureCertification {
    pub certification: Certification,
    /// Non-fatal problems of the input, e.g. a truncated last record, a malformed record line.
    pub(crate) warnings: Vec<String>,
    /// Non-zero counters of input that was rejected, lost or only partly usable: calls may be
    /// missing from the evidence.
    pub(crate) problems: Vec<(&'static str, u64)>,
}

/// Judges the calls of `capture` in `window` against `config`'s policy.
pub fn certify_capture(
    capture: &Path,
    config: &Config,
    key: SiteKey,
    window: Window,
) -> Result<CaptureCertification, CaptureError> {
    let mut judge = Judge::new(&config.policy, window);
    let replay = replay(capture, config, key, |verdict| judge.add(&verdict))?;
    Ok(CaptureCertification {
        certification: judge.finish(),
        warnings: replay.warnings,
        problems: replay.problems,
    })
}

/// Judges the calls in `window` of the call records at `records` (the file `output.calls` names,
/// with its rotations, or their directory) against `config`'s policy: the records are turned
/// back into calls and run through the same policy stage as a capture's, in the order the
/// daemon wrote them, so the judge sees the same verdicts. Calls before the window count in the
/// rules' windows as they did live. Memory grows only with the calls in the window.
pub fn certify_records(
    records: &Path,
    config: &Config,
    window: Window,
) -> Result<CaptureCertification, RecordsError> {
    let files = record_files(records)?;
    let mut policy = Policy::new(&config.policy);
    let mut judge = Judge::new(&config.policy, window);
    // Calls long enough before the window count in no rule's window of a call inside it, and
    // calls after it in nothing; an hour's margin covers records written late (a long request).
    let longest = config
        .policy
        .rules
        .iter()
        .map(|r| r.window.span())
        .max()
        .unwrap_or(Span(0));
    let margin = Span::from_secs(3600);
    let needed = Needed {
        since: window.from.map(|from| {
            from.minus(longest)
                .minus(config.policy.reorder_window.span())
                .minus(margin)
        }),
        before: window.to.map(|to| to.plus(margin)),
    };
    let stats = read_calls(&files, needed, |call| {
        let ts = call.ts_start;
        policy.push(call);
        while let Some(verdict) = policy.drain() {
            judge.add(&verdict);
        }
        policy.forget_idle(ts);
    })?;
    let mut warnings: Vec<String> = stats
        .malformed_examples
        .iter()
        .map(|e| format!("malformed record: {e}"))
        .collect();
    warnings.extend(stats.read_errors.iter().map(|e| format!("read error: {e}")));
    if !stats.skipped_files.is_empty() {
        warnings.push(format!(
            "{} record file(s) not read: they hold no call near the window ({})",
            stats.skipped_files.len(),
            stats
                .skipped_files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Some(at) = &stats.stopped_at {
        warnings.push(format!(
            "records read up to {at}: the calls from there on started an hour or more after the window"
        ));
    }
    let mut problems = Vec::new();
    if stats.malformed_lines > 0 {
        problems.push(("malformed_record_lines", stats.malformed_lines));
    }
    if !stats.read_errors.is_empty() {
        problems.push(("unreadable_record_files", stats.read_errors.len() as u64));
    }
    Ok(CaptureCertification {
        certification: judge.finish(),
        warnings,
        problems,
    })
}

/// A `--from`/`--to` time: Unix seconds, or UTC as `2026-01-05T08:00:00Z`.
pub fn parse_time(text: &str) -> Result<Timestamp, String> {
    if let Ok(secs) = text.trim().parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Ok(Timestamp::from_secs_f64(secs));
    }
    parse_rfc3339(text)
        .map(|secs| Timestamp::from_nanos(secs.saturating_mul(1_000_000_000)))
        .ok_or_else(|| {
            format!("`{text}` is not a time: give Unix seconds or UTC as 2026-01-05T08:00:00Z")
        })
}

/// The certification as `format`; `source` names what was judged (e.g. the capture's path);
/// `now` is when the report is made (the HTML page says so).
pub fn render(cert: &CaptureCertification, source: &str, format: Format, now: Timestamp) -> String {
    match format {
        Format::Text => text(cert, source),
        Format::Markdown => markdown(cert, source),
        Format::Html => html_page(cert, source, now),
        Format::Json => {
            let doc = serde_json::json!({
                "source": source,
                "certification": cert.certification,
                "capture_warnings": cert.warnings,
                "input_problems": cert.problems.iter().map(|(name, n)| (name.to_string(), *n))
                    .collect::<std::collections::BTreeMap<String, u64>>(),
            });
            let mut out = serde_json::to_string_pretty(&doc).unwrap_or_default();
            out.push('\n');
            out
        }
    }
}

fn time(at: Option<Timestamp>, otherwise: &str) -> String {
    at.map_or(otherwise.to_string(), rfc3339)
}

fn scope(cert: &Certification, source: &str) -> String {
    let token = cert
        .token
        .map_or("all tokens".to_string(), |fp| format!("token {fp}"));
    format!(
        "{source}, calls from {} to {}, {token}",
        time(cert.from, "the start"),
        time(cert.to, "the end")
    )
}

fn window_s(secs: f64) -> String {
    format!("{secs:.0} s")
}

fn largest(t: &TokenCertificate) -> String {
    match &t.largest_response {
        None => "none measured".to_string(),
        Some(l) => {
            let what = [("content", &l.content), ("action", &l.action)]
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(" ");
            format!("{} bytes ({what}) at {}", l.bytes, rfc3339(l.at))
        }
    }
}

/// Each rule's peak and limit, briefly: `api_calls: 3 in 60 s (3)`.
fn peaks_brief(t: &TokenCertificate) -> Vec<String> {
    t.rules
        .iter()
        .map(|r| {
            format!(
                "{}: {} in {} ({})",
                r.rule,
                r.peak,
                window_s(r.window_s),
                r.limit
            )
        })
        .collect()
}

fn p95(t: &TokenCertificate) -> String {
    t.server_time_p95_s
        .map_or("n/a".to_string(), |p| format!("{p:.3} s"))
}

/// Lines that say what the evidence may miss.
fn caveats(cert: &CaptureCertification) -> Vec<String> {
    let c = &cert.certification;
    let mut lines = Vec::new();
    if c.tokens.is_empty() {
        lines.push(
            "no API calls by a token in the window: nothing to certify (check the capture, the \
             window and the token fingerprint)"
                .to_string(),
        );
    }
    if c.calls_without_token > 0 {
        lines.push(format!(
            "{} call(s) without a usable token (REDCap refuses these; no rule applies)",
            c.calls_without_token
        ));
    }
    if c.calls_not_judged > 0 {
        lines.push(format!(
            "{} call(s) outside the window or of other tokens, not judged",
            c.calls_not_judged
        ));
    }
    let incomplete: u64 = c.tokens.iter().map(|t| t.incomplete_calls).sum();
    if incomplete > 0 {
        lines.push(format!(
            "{incomplete} call(s) seen only in part: sizes and times may undercount"
        ));
    }
    for warning in &cert.warnings {
        lines.push(format!("input: {warning}"));
    }
    if !cert.problems.is_empty() {
        let problems: Vec<String> = cert
            .problems
            .iter()
            .map(|(name, n)| format!("{name}={n}"))
            .collect();
        lines.push(format!(
            "input problems (calls may be missing): {}",
            problems.join(" ")
        ));
    }
    lines
}

fn text(cert: &CaptureCertification, source: &str) -> String {
    let c = &cert.certification;
    let mut out = String::new();
    let _ = writeln!(out, "QA-window certification: {}", c.outcome.as_str());
    let _ = writeln!(out, "judged: {}", scope(c, source));
    for t in &c.tokens {
        let exempt = if t.exempt {
            " (exempt by policy.overrides)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "\n{}  {}  {}{exempt}: {} call(s), {} heavy, {} to {}",
            t.outcome.as_str(),
            t.token_fp,
            t.token_masked,
            t.calls,
            t.heavy_calls,
            rfc3339(t.first_call),
            rfc3339(t.last_call)
        );
        for r in &t.rules {
            let at = r
                .peak_at
                .map_or(String::new(), |at| format!(" at {}", rfc3339(at)));
            let _ = writeln!(
                out,
                "  {} ({} calls): peak {} in any {} (limit {}){at}",
                r.rule,
                r.counts,
                r.peak,
                window_s(r.window_s),
                r.limit
            );
        }
        let _ = writeln!(out, "  largest response: {}", largest(t));
        let _ = writeln!(
            out,
            "  server time caused: {:.3} s, p95 {}",
            t.server_time_s,
            p95(t)
        );
        if t.violation_count() > 0 {
            let _ = writeln!(out, "  violations ({}):", t.violation_count());
            for v in &t.violations {
                let _ = writeln!(
                    out,
                    "    {}  {}: {} calls in {} (limit {}){}",
                    rfc3339(v.at),
                    v.rule,
                    v.count,
                    window_s(v.window_s),
                    v.limit,
                    v.content
                        .as_ref()
                        .map_or(String::new(), |c| format!(", content={c}"))
                );
            }
            if t.violations_not_listed > 0 {
                let _ = writeln!(out, "    … and {} more", t.violations_not_listed);
            }
        }
    }
    let caveats = caveats(cert);
    if !caveats.is_empty() {
        let _ = writeln!(out);
        for line in caveats {
            let _ = writeln!(out, "note: {line}");
        }
    }
    out
}

fn markdown(cert: &CaptureCertification, source: &str) -> String {
    let c = &cert.certification;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# QA-window certification: **{}**\n",
        c.outcome.as_str()
    );
    let _ = writeln!(out, "Judged: {}.\n", scope(c, source).replace('|', "\\|"));
    let _ = writeln!(
        out,
        "A token passes when none of its calls broke a rule of the API policy. Peaks are the \
         most calls each rule counted in any of its windows.\n"
    );
    if !c.tokens.is_empty() {
        let _ = writeln!(
            out,
            "| Result | Token | Calls | Heavy | Peaks (limit) | Largest response (bytes) | \
             Server time (s) | p95 (s) | Violations |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---|---:|---:|---:|---:|");
        for t in &c.tokens {
            let peaks = peaks_brief(t);
            let _ = writeln!(
                out,
                "| **{}**{} | `{}` {} | {} | {} | {} | {} | {:.3} | {} | {} |",
                t.outcome.as_str(),
                if t.exempt { " (exempt)" } else { "" },
                t.token_fp,
                t.token_masked,
                t.calls,
                t.heavy_calls,
                peaks.join("<br>"),
                t.largest_response.as_ref().map_or(0, |l| l.bytes),
                t.server_time_s,
                t.server_time_p95_s
                    .map_or("n/a".to_string(), |p| format!("{p:.3}")),
                t.violation_count()
            );
        }
    }
    for t in c.tokens.iter().filter(|t| t.violation_count() > 0) {
        let _ = writeln!(
            out,
            "\n## Violations of `{}` {}\n",
            t.token_fp, t.token_masked
        );
        let _ = writeln!(
            out,
            "| When (UTC) | Rule | Calls in window | Limit | Call |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---|");
        for v in &t.violations {
            let _ = writeln!(
                out,
                "| {} | {} | {} in {} | {} | {} |",
                rfc3339(v.at),
                v.rule,
                v.count,
                window_s(v.window_s),
                v.limit,
                v.content
                    .as_ref()
                    .map_or(String::new(), |c| format!("content={c}"))
            );
        }
        if t.violations_not_listed > 0 {
            let _ = writeln!(out, "\n… and {} more.", t.violations_not_listed);
        }
    }
    let caveats = caveats(cert);
    if !caveats.is_empty() {
        let _ = writeln!(out, "\n## Notes\n");
        for line in caveats {
            let _ = writeln!(out, "- {line}");
        }
    }
    out
}

fn heavy_reason(reason: Option<crate::stages::policy::HeavyReason>) -> String {
    reason
        .and_then(|r| serde_json::to_value(r).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn html_page(cert: &CaptureCertification, source: &str, now: Timestamp) -> String {
    let c = &cert.certification;
    let mut page = Page::new("QA-window certification", now);
    let (badge, label) = Badge::outcome(c.outcome == Outcome::Pass);
    let failed = c
        .tokens
        .iter()
        .filter(|t| t.outcome == Outcome::Fail)
        .count();
    page.summary(&[
        ("Result", Cell::badge(badge, label)),
        ("Judged", Cell::text(scope(c, source))),
        (
            "Tokens",
            Cell::text(format!(
                "{} judged, {} passed, {failed} failed",
                c.tokens.len(),
                c.tokens.len() - failed
            )),
        ),
    ]);
    page.paragraph(
        "A token passes when none of its calls broke a rule of the API policy. Peaks are the most \
         calls each rule counted in any of its (sliding) windows; tokens are shown by fingerprint \
         and masked form only.",
    );
    // What the evidence may miss comes before the evidence.
    let caveats = caveats(cert);
    if !caveats.is_empty() {
        page.heading(2, "Notes");
        page.list(&caveats);
    }
    if !c.tokens.is_empty() {
        let mut overview = Table::new(&[
            "Result",
            "Token",
            "Calls",
            "Heavy",
            "Peaks (limit)",
            "Largest response (bytes)",
            "Server time (s)",
            "p95 (s)",
            "Violations",
        ]);
        for t in &c.tokens {
            let (badge, label) = Badge::outcome(t.outcome == Outcome::Pass);
            let peaks = peaks_brief(t);
            overview.row(vec![
                Cell::badge(
                    badge,
                    if t.exempt {
                        format!("{label} (exempt)")
                    } else {
                        label.into()
                    },
                ),
                Cell::code(format!("{} {}", t.token_fp, t.token_masked)),
                Cell::number(t.calls),
                Cell::number(t.heavy_calls),
                Cell::text(peaks.join("; ")),
                Cell::number(t.largest_response.as_ref().map_or(0, |l| l.bytes)),
                Cell::number(format!("{:.3}", t.server_time_s)),
                Cell::number(
                    t.server_time_p95_s
                        .map_or("n/a".into(), |p| format!("{p:.3}")),
                ),
                Cell::number(t.violation_count()),
            ]);
        }
        page.table(&overview);
        page.bar_chart(&BarChart {
            title: "Largest response per token".into(),
            x_label: "bytes".into(),
            unit: Unit::Bytes,
            bars: c
                .tokens
                .iter()
                .map(|t| {
                    let bytes = t.largest_response.as_ref().map_or(0, |l| l.bytes);
                    (format!("{} {}", t.token_fp, t.token_masked), bytes as f64)
                })
                .collect(),
            limit: Some(heavy_limit(c.heavy_response_bytes)),
        });
    }
    // Every token's charts span the same minutes, a minute of margin either side, so they
    // line up when compared.
    let minutes = c
        .tokens
        .iter()
        .flat_map(|t| t.minutes.iter().map(|m| m.start));
    let range = minutes
        .clone()
        .min()
        .zip(minutes.max())
        .map(|(first, last)| (first.minus(MINUTE), last.plus(MINUTE)));
    for t in &c.tokens {
        token_section(&mut page, c, t, range);
    }
    page.finish()
}

fn heavy_limit(bytes: u64) -> Limit {
    Limit {
        value: bytes as f64,
        label: format!("heavy above {}", Unit::Bytes.label(bytes as f64)),
    }
}

const MINUTE: Span = Span::from_secs(60);

fn token_section(
    page: &mut Page,
    c: &Certification,
    t: &TokenCertificate,
    range: Option<(Timestamp, Timestamp)>,
) {
    let (badge, label) = Badge::outcome(t.outcome == Outcome::Pass);
    page.heading_with_badge(
        2,
        &format!("Token {} {}", t.token_fp, t.token_masked),
        badge,
        label,
    );
    let mut pairs: Vec<(&str, Cell)> = vec![(
        "Calls",
        Cell::text(format!(
            "{} ({} heavy), {} to {}",
            t.calls,
            t.heavy_calls,
            rfc3339(t.first_call),
            rfc3339(t.last_call)
        )),
    )];
    let peaks: Vec<String> = t
        .rules
        .iter()
        .map(|r| {
            let at = r
                .peak_at
                .map_or(String::new(), |at| format!(" at {}", rfc3339(at)));
            let over = if r.peak > r.limit {
                " — over the limit"
            } else {
                ""
            };
            format!(
                "{} ({} calls): peak {} in any {} (limit {}){at}{over}",
                r.rule,
                r.counts,
                r.peak,
                window_s(r.window_s),
                r.limit
            )
        })
        .collect();
    pairs.push(("Peaks", Cell::text(peaks.join("; "))));
    pairs.push(("Largest response", Cell::text(largest(t))));
    pairs.push((
        "Server time caused",
        Cell::text(format!("{:.3} s, p95 {}", t.server_time_s, p95(t))),
    ));
    pairs.push(("Violations", Cell::number(t.violation_count())));
    if t.exempt {
        pairs.push((
            "Exempt",
            Cell::badge(Badge::Info, "exempt by policy.overrides"),
        ));
    }
    if t.incomplete_calls > 0 {
        pairs.push((
            "Incomplete calls",
            Cell::badge(
                Badge::Warn,
                format!("{} seen only in part: may undercount", t.incomplete_calls),
            ),
        ));
    }
    page.summary(&pairs);

    // The rate rule that counts every call in a minute gives the calls chart its limit line.
    let per_minute = t
        .rules
        .iter()
        .find(|r| r.counts == "all" && r.window_s == 60.0);
    page.time_series(&TimeSeries {
        title: format!("Calls per minute of {}", t.token_fp),
        y_label: "calls in the clock minute".into(),
        unit: Unit::Count,
        style: Style::Stems,
        range,
        series: vec![Series {
            name: "calls".into(),
            points: t
                .minutes
                .iter()
                .map(|m| (m.start, f64::from(m.calls)))
                .collect(),
        }],
        limit: per_minute.map(|r| Limit {
            value: f64::from(r.limit),
            label: format!("{}: limit {} in any 60 s", r.rule, r.limit),
        }),
    });
    let sizes: Vec<(Timestamp, f64)> = t
        .minutes
        .iter()
        .filter_map(|m| m.largest_response_bytes.map(|b| (m.start, b as f64)))
        .collect();
    if !sizes.is_empty() {
        page.time_series(&TimeSeries {
            title: format!("Largest response per minute of {}", t.token_fp),
            y_label: "response size".into(),
            unit: Unit::Bytes,
            style: Style::Stems,
            range,
            series: vec![Series {
                name: "largest response".into(),
                points: sizes,
            }],
            limit: Some(heavy_limit(c.heavy_response_bytes)),
        });
    }
    if t.violation_count() > 0 {
        let mut table = Table::new(&[
            "When (UTC)",
            "Rule",
            "Calls in window",
            "Limit",
            "Call",
            "Heavy because",
        ]);
        table.caption = Some(format!("Violations ({})", t.violation_count()));
        for v in &t.violations {
            table.row(vec![
                Cell::text(rfc3339(v.at)),
                Cell::text(&v.rule),
                Cell::number(format!("{} in {}", v.count, window_s(v.window_s))),
                Cell::number(v.limit),
                Cell::text(
                    v.content
                        .as_ref()
                        .map_or(String::new(), |c| format!("content={c}")),
                ),
                Cell::text(heavy_reason(v.heavy)),
            ]);
        }
        page.table(&table);
        if t.violations_not_listed > 0 {
            page.paragraph(&format!("… and {} more.", t.violations_not_listed));
        }
    }
}
