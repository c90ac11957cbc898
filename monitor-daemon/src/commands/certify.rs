//! `redcap-monitor certify`: a QA testing window judged against the configured policy.
//!
//! The edge around [`stages::certify`](crate::stages::certify): replays a capture through the
//! pipeline (the same replay as `analyze`), hands the verdicts to the judge, and renders its
//! [`Certification`] as terminal text, Markdown (for the researcher) or JSON. Shows tokens only
//! by fingerprint and masked form.

use std::fmt::Write as _;
use std::path::Path;

use crate::commands::analyze::replay;
use crate::commands::config::Config;
use crate::edges::alerts::time::{parse_rfc3339, rfc3339};
use crate::edges::capture::CaptureError;
use crate::shared::model::Timestamp;
use crate::shared::token::SiteKey;
use crate::stages::certify::{Certification, Judge, TokenCertificate, Window};

/// How the certification is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For a terminal.
    #[default]
    Text,
    /// For the researcher: a document an admin can hand on.
    Markdown,
    /// For programs.
    Json,
}

/// The certification of a capture, and what the replay met on the way.
pub struct CaptureCertification {
    pub certification: Certification,
    /// Non-fatal problems of the capture, e.g. a truncated last record.
    pub warnings: Vec<String>,
    /// Non-zero counters of input that was rejected, lost or only partly usable: calls may be
    /// missing from the evidence.
    pub problems: Vec<(&'static str, u64)>,
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

/// The certification as `format`; `source` names what was judged (e.g. the capture's path).
pub fn render(cert: &CaptureCertification, source: &str, format: Format) -> String {
    match format {
        Format::Text => text(cert, source),
        Format::Markdown => markdown(cert, source),
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
        lines.push(format!("capture: {warning}"));
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
            let peaks: Vec<String> = t
                .rules
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
                .collect();
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
