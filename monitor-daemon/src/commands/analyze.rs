//! `redcap-monitor analyze`: a capture file through the pipeline, into records and a summary.
//!
//! The offline edge: opens the file, feeds its frames to the [`Pipeline`], writes call and
//! violation records, and builds the per-token summary that answers "who made which calls, how
//! big, how slow, and who broke the policy". Progress goes to stderr only when it is a terminal.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::commands::config::{Config, ConfigError};
use crate::edges::capture::{CaptureError, CaptureFile};
use crate::edges::output::{RecordFiles, RecordPaths, RecordWriter, WriteMode};
use crate::edges::store::{Sighting, Store, StoreError, StoreLimits};
use crate::shared::model::{Span, Timestamp};
use crate::shared::token::{SiteKey, TokenFingerprint, TokenProblem};
use crate::stages::health::HealthChange;
use crate::stages::pipeline::{Pipeline, PipelineConfig, PipelineStats};
use crate::stages::policy::enforce::Action;
use crate::stages::policy::{SlidingCount, Verdict};
use crate::stages::redcap::KeepRawToken;
use crate::stages::usage::{Day, Usage};

/// Where `analyze` writes; `-` means stdout.
pub struct AnalyzeOutputs {
    pub calls: Option<PathBuf>,
    pub violations: Option<PathBuf>,
    pub decisions: Option<PathBuf>,
    /// Add the capture's token sightings and daily use to this store (the daemon's, stopped, or
    /// a store of its own for the reports), in one transaction.
    pub store: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one token did in the capture.
#[derive(Default)]
pub struct TokenSummary {
    pub(crate) masked: String,
    pub(crate) calls: u64,
    pub(crate) peak_calls_per_minute: u32,
    pub(crate) request_bytes: u64,
    pub(crate) response_bytes: u64,
    pub(crate) heavy_calls: u64,
    pub(crate) violations: u64,
    pub(crate) incomplete_calls: u64,
    /// Suspensions decided (or, in a dry run, that would have been).
    pub(crate) suspensions: u64,
    minute: SlidingCount,
}

/// The result of one analysis.
#[derive(Default)]
pub struct Summary {
    pub tokens: HashMap<TokenFingerprint, TokenSummary>,
    /// Calls whose token was missing or malformed (REDCap answers them 403).
    pub(crate) calls_without_token: HashMap<TokenProblem, u64>,
    pub calls: u64,
    pub incomplete_calls: u64,
    /// Non-fatal problems, e.g. a truncated last record in the capture.
    pub warnings: Vec<String>,
    /// Non-zero counters of input that was rejected, lost or only partly usable.
    pub problems: Vec<(&'static str, u64)>,
    /// When the server was degraded during the capture, and why.
    pub(crate) degraded: Vec<DegradedPeriod>,
}

/// A stretch of the capture during which the server was judged degraded.
pub(crate) struct DegradedPeriod {
    pub(crate) since: Timestamp,
    /// `None` when the capture ended while still degraded.
    pub(crate) until: Option<Timestamp>,
    /// What the judgement that entered the state saw.
    pub(crate) signs: String,
}

impl Summary {
    fn health_change(&mut self, change: HealthChange) {
        match change {
            HealthChange::Degraded { since, evidence } => {
                let signs: Vec<&str> = evidence.bad_signs.iter().map(|s| s.name()).collect();
                let p95 = evidence
                    .ttfb_p95_s
                    .map_or(String::new(), |p| format!(", p95 server time {p:.2} s"));
                self.degraded.push(DegradedPeriod {
                    since,
                    until: None,
                    signs: format!("{}{p95}", signs.join(" ")),
                });
            }
            HealthChange::Recovered { degraded_for, .. } => {
                if let Some(period) = self.degraded.last_mut() {
                    period.until = Some(period.since.plus(degraded_for));
                }
            }
        }
    }

    fn add(&mut self, verdict: &Verdict) {
        let call = &verdict.call;
        self.calls += 1;
        self.incomplete_calls += u64::from(!call.complete);
        let identity = match &call.token {
            Ok(identity) => identity,
            Err(problem) => {
                *self.calls_without_token.entry(*problem).or_default() += 1;
                return;
            }
        };
        let token = self.tokens.entry(identity.fingerprint).or_default();
        if token.masked.is_empty() {
            token.masked = identity.masked.0.clone();
        }
        token.calls += 1;
        let per_minute = token.minute.record(call.ts_start, Span::from_secs(60));
        token.peak_calls_per_minute = token.peak_calls_per_minute.max(per_minute);
        token.request_bytes += call.request_bytes;
        token.response_bytes += call.response_bytes.unwrap_or(0);
        token.heavy_calls += u64::from(verdict.heavy.is_some());
        token.violations += verdict.violations.len() as u64;
        token.suspensions += u64::from(matches!(
            verdict.decision.as_ref().map(|d| &d.action),
            Some(Action::Suspend { .. })
        ));
        token.incomplete_calls += u64::from(!call.complete);
    }

    /// The per-token table, busiest token first.
    pub fn table(&self) -> String {
        let mut rows: Vec<_> = self.tokens.iter().collect();
        rows.sort_by(|a, b| b.1.calls.cmp(&a.1.calls).then(a.0.cmp(b.0)));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<9} {:<16} {:>7} {:>8} {:>12} {:>12} {:>6} {:>10} {:>9}",
            "token",
            "fingerprint",
            "calls",
            "peak/min",
            "req bytes",
            "resp bytes",
            "heavy",
            "violations",
            "suspended"
        );
        for (fp, t) in rows {
            let _ = writeln!(
                out,
                "{:<9} {:<16} {:>7} {:>8} {:>12} {:>12} {:>6} {:>10} {:>9}",
                t.masked,
                fp.to_string(),
                t.calls,
                t.peak_calls_per_minute,
                t.request_bytes,
                t.response_bytes,
                t.heavy_calls,
                t.violations,
                t.suspensions
            );
        }
        for period in &self.degraded {
            let until = period
                .until
                .map_or("the end of the capture".to_string(), |t| {
                    format!("{:.0}", t.as_secs_f64())
                });
            let _ = writeln!(
                out,
                "server degraded from {:.0} to {until} ({})",
                period.since.as_secs_f64(),
                period.signs
            );
        }
        let mut problems: Vec<_> = self.calls_without_token.iter().collect();
        problems.sort();
        for (problem, n) in problems {
            let what = match problem {
                TokenProblem::Missing => "without a token (REDCap refuses these)",
                TokenProblem::Malformed => "with a malformed token (REDCap refuses these)",
                TokenProblem::Unreadable => {
                    "whose request head could not be read (token unknown; counted per client)"
                }
            };
            let _ = writeln!(out, "{n} call(s) {what}");
        }
        out
    }
}

/// What a replay of a capture left besides its verdicts.
pub(crate) struct Replay {
    /// Non-fatal problems, e.g. a truncated last record in the capture.
    pub(crate) warnings: Vec<String>,
    pub(crate) health_changes: Vec<HealthChange>,
    /// Non-zero counters of input that was rejected, lost or only partly usable.
    pub(crate) problems: Vec<(&'static str, u64)>,
    /// Every stage's counters (see [`stats_report`]).
    pub(crate) stats: String,
}

/// Runs a capture file through the pipeline, handing each verdict to `on_verdict` in the order
/// the policy judged it. The one way a capture is replayed (`analyze`, `certify`).
pub(crate) fn replay(
    capture: &Path,
    config: &Config,
    key: SiteKey,
    mut on_verdict: impl FnMut(Verdict),
) -> Result<Replay, CaptureError> {
    let file = CaptureFile::open(capture)?;
    let mut pipeline = Pipeline::new(
        PipelineConfig {
            // A replay runs no hooks, so its calls never keep a raw token for them.
            keep_raw: KeepRawToken::Never,
            ..config.pipeline()
        },
        key,
    );
    let mut progress = Progress::new(file.len());
    let mut frames = file.frames();
    let mut warnings = Vec::new();
    let mut health_changes = Vec::new();
    while let Some(frame) = frames.next() {
        match frame {
            Ok(frame) => {
                pipeline.push_frame(&frame, &mut on_verdict);
                health_changes.extend(pipeline.take_health_changes());
            }
            Err(err) => {
                // Frames before a damaged record still count: report and stop reading.
                warnings.push(err.to_string());
                break;
            }
        }
        progress.update(frames.position());
    }
    pipeline.finish(&mut on_verdict);
    progress.done();
    health_changes.extend(pipeline.take_health_changes());
    Ok(Replay {
        warnings,
        health_changes,
        problems: pipeline.stats().problems(),
        stats: stats_report(&pipeline.stats()),
    })
}

/// Runs a capture file through the pipeline into records and a summary.
pub fn analyze(
    capture: &Path,
    config: &Config,
    key: SiteKey,
    outputs: &AnalyzeOutputs,
) -> Result<(Summary, String), AnalyzeError> {
    let paths = RecordPaths {
        calls: outputs.calls.clone(),
        violations: outputs.violations.clone(),
        decisions: outputs.decisions.clone(),
    };
    let files = RecordFiles::open(&paths, WriteMode::Replace)
        .map_err(|(path, source)| AnalyzeError::Write { path, source })?;
    let mut writer = RecordWriter::new(files);
    let mut summary = Summary::default();
    // Open the store first, so that a wrong path fails before a long replay.
    let store = outputs
        .store
        .as_deref()
        .map(|path| Store::open(path, StoreLimits::from_config(&config.store)))
        .transpose()?;
    let mut sightings: std::collections::BTreeMap<(Day, TokenFingerprint), Sighting> =
        std::collections::BTreeMap::new();

    let on_verdict = |verdict: Verdict| {
        summary.add(&verdict);
        // As the live daemon does: only tokens the server accepted are kept.
        if store.is_some()
            && let (Ok(identity), true) = (&verdict.call.token, verdict.call.token_accepted())
        {
            let at = verdict.call.ts_start;
            let sighting = sightings
                .entry((Day::of(at), identity.fingerprint))
                .or_insert_with(|| Sighting {
                    token: identity.fingerprint,
                    masked: identity.masked.clone(),
                    ts: at,
                    usage: Usage::default(),
                });
            sighting.ts = sighting.ts.max(at);
            sighting.usage.add(&Usage::of_verdict(&verdict));
        }
        writer.write(&verdict);
    };

    let replay = replay(capture, config, key, on_verdict)?;
    writer.flush();
    if let Some((path, source)) = writer.take_error() {
        return Err(AnalyzeError::Write { path, source });
    }
    for change in replay.health_changes {
        summary.health_change(change);
    }
    if let Some(store) = &store {
        let sightings: Vec<Sighting> = sightings.into_values().collect();
        store.touch_tokens(&sightings)?;
    }
    summary.warnings = replay.warnings;
    summary.problems = replay.problems;
    Ok((summary, replay.stats))
}

/// What each stage saw and rejected: one line per stage with every counter.
pub(crate) fn stats_report(stats: &PipelineStats<'_>) -> String {
    format!(
        "decode: {:?}\nreassembly: {:?}\nhttp: {:?}\nredcap: {:?}\npolicy: {:?}\nhealth: {:?}\n",
        stats.decode, stats.reassembly, stats.http, stats.redcap, stats.policy, stats.health
    )
}

/// A progress line on stderr for large files, only when a person is watching.
struct Progress {
    total: u64,
    enabled: bool,
    frames: u32,
    last: Option<Instant>,
}

impl Progress {
    const MIN_BYTES: u64 = 64 << 20;

    fn new(total: u64) -> Progress {
        Progress {
            total,
            enabled: total >= Self::MIN_BYTES && io::stderr().is_terminal(),
            frames: 0,
            last: None,
        }
    }

    fn update(&mut self, position: u64) {
        // Looking at the clock once every few thousand frames keeps this off the hot path.
        self.frames = self.frames.wrapping_add(1);
        if !self.enabled || !self.frames.is_multiple_of(4096) {
            return;
        }
        if self.last.is_some_and(|t| t.elapsed().as_millis() < 200) {
            return;
        }
        self.last = Some(Instant::now());
        let pct = position as f64 * 100.0 / self.total.max(1) as f64;
        eprint!("\ranalyzing: {pct:5.1}% of {} MB", self.total >> 20);
    }

    fn done(&mut self) {
        if self.enabled {
            eprintln!("\ranalyzing: 100.0% of {} MB", self.total >> 20);
        }
    }
}
