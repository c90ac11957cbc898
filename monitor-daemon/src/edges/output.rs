//! The records the daemon writes: one JSON object a line per API call, per violation and per
//! enforcement decision, and the one [`RecordWriter`] that `run` and `analyze` both write them
//! with.
//!
//! These shapes are a public interface (documented in the README); change them only by adding
//! fields. Records name tokens by fingerprint and masked form only.
//!
//! The writer creates its files with mode 0640 whoever starts it (records hold fingerprints and
//! masked tokens). For `run` it appends, refuses a symbolic link, FIFO or anything but a regular
//! file at a record path, and never stops the daemon: a failed write (a full disk, an I/O
//! error) drops the records it held, counted by reason; the file is reopened every
//! [`RETRY_EVERY`] and writing resumes when a write succeeds. Each outage is told once
//! ([`RecordWriter::poll_outage`]), when it begins and when it ends.

use std::io::{self, Write};
use std::time::Instant;

use serde::Serialize;

use crate::shared::model::Span;
use crate::shared::settings::{Duration, Problem, longer_than_zero};
use crate::shared::token::TokenProblem;
use crate::stages::http::HttpVersion;
use crate::stages::policy::{ClientViolation, HeavyReason, Verdict, Violation};
use crate::stages::redcap::{ApiParams, BodyProblem};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// How a call was seen.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Transport {
    /// Plaintext HTTP reassembled from TCP segments.
    Tcp,
    /// HTTP read and written through the web server's OpenSSL (uprobes).
    Tls,
}

#[derive(Serialize)]
pub(crate) struct CallRecord<'a> {
    pub(crate) ts_start: f64,
    pub(crate) ts_end: f64,
    pub(crate) ttfb_s: Option<f64>,
    pub(crate) client: String,
    pub(crate) server: String,
    /// The trusted proxy whose connection carried the call, when `client` came from its header.
    pub(crate) proxy: Option<String>,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) http_version: HttpVersion,
    pub(crate) token_fp: Option<String>,
    pub(crate) token_masked: Option<&'a str>,
    pub(crate) token_problem: Option<TokenProblem>,
    #[serde(flatten)]
    pub(crate) params: &'a ApiParams,
    pub(crate) status: Option<u16>,
    pub(crate) request_bytes: u64,
    pub(crate) response_bytes: Option<u64>,
    pub(crate) response_wire_bytes: Option<u64>,
    pub(crate) heavy: Option<HeavyReason>,
    pub(crate) complete: bool,
    /// Why the body's fields may be incomplete, when they may be.
    pub(crate) body_problem: Option<BodyProblem>,
    pub(crate) transport: Transport,
}

impl<'a> CallRecord<'a> {
    pub(crate) fn of(verdict: &'a Verdict, transport: Transport) -> CallRecord<'a> {
        let call = &verdict.call;
        let (token_fp, token_masked, token_problem) = match &call.token {
            Ok(id) => (
                Some(id.fingerprint.to_string()),
                Some(id.masked.0.as_str()),
                None,
            ),
            Err(problem) => (None, None, Some(*problem)),
        };
        CallRecord {
            ts_start: call.ts_start.as_secs_f64(),
            ts_end: call.ts_end.as_secs_f64(),
            ttfb_s: call.ttfb.map(|t| t.as_secs_f64()),
            client: call.client.to_string(),
            proxy: call.proxy.map(|p| p.to_string()),
            server: call.server.to_string(),
            method: &call.method,
            path: &call.path,
            http_version: call.http_version,
            token_fp,
            token_masked,
            token_problem,
            params: &call.params,
            status: call.status,
            request_bytes: call.request_bytes,
            response_bytes: call.response_bytes,
            response_wire_bytes: call.response_wire_bytes,
            heavy: verdict.heavy,
            complete: call.complete,
            body_problem: call.body_problem,
            transport,
        }
    }
}

#[derive(Serialize)]
pub(crate) struct ViolationRecord<'a> {
    pub(crate) ts: f64,
    /// `null` for a client address over the refused-calls rule (no token is blamed).
    pub(crate) token_fp: Option<String>,
    /// The client address, for the refused-calls rule only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) client: Option<String>,
    pub(crate) rule: &'a str,
    pub(crate) limit: u32,
    pub(crate) window_s: u64,
    pub(crate) count: u32,
}

impl<'a> ViolationRecord<'a> {
    pub(crate) fn of(violation: &'a Violation) -> ViolationRecord<'a> {
        ViolationRecord {
            ts: violation.ts.as_secs_f64(),
            token_fp: Some(violation.token.to_string()),
            client: None,
            rule: &violation.rule,
            limit: violation.limit,
            window_s: violation.window.0 / 1_000_000_000,
            count: violation.count,
        }
    }

    /// The record of a client address probing for tokens (see [`ClientViolation`]).
    pub(crate) fn of_client(violation: &ClientViolation) -> ViolationRecord<'static> {
        ViolationRecord {
            ts: violation.ts.as_secs_f64(),
            token_fp: None,
            client: Some(violation.client.to_string()),
            rule: crate::stages::policy::REFUSED_CALLS_RULE,
            limit: violation.limit,
            window_s: violation.window.0 / 1_000_000_000,
            count: violation.count,
        }
    }

    /// The records of one verdict: its token's violations, then its client's, if any.
    pub(crate) fn all_of(verdict: &'a Verdict) -> impl Iterator<Item = ViolationRecord<'a>> {
        let client = verdict
            .client_violation
            .as_ref()
            .map(ViolationRecord::of_client);
        verdict
            .violations
            .iter()
            .map(ViolationRecord::of)
            .chain(client)
    }
}

/// Writes one record as a JSON line.
pub(crate) fn write_line(out: &mut impl Write, record: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")
}

/// Where the live daemon writes its records and counters.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    /// Call records (JSONL, appended); `-` for stdout; absent for none.
    pub(crate) calls: Option<PathBuf>,
    /// Violation records (JSONL, appended); `-` for stdout; absent for none.
    pub(crate) violations: Option<PathBuf>,
    /// Enforcement decisions (JSONL, appended); `-` for stdout; absent for none.
    pub(crate) decisions: Option<PathBuf>,
    /// A JSON object with every counter, replaced each `stats_interval` and at exit.
    pub stats: Option<PathBuf>,
    /// How often the counters are logged (and the stats file rewritten).
    pub(crate) stats_interval: Duration,
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

impl OutputConfig {
    /// What is wrong with `[output]`, each problem keyed by its full path.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        longer_than_zero(
            &mut problems,
            &[("output.stats_interval", self.stats_interval)],
            "60s",
        );
        problems
    }
}

/// How often a record file that failed is reopened and tried again.
pub(crate) const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Bytes held per file between two flushes; past it they are written at once.
const BUFFER: usize = 1 << 16;

/// How the writer opens its files and meets errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// `analyze`: files are replaced; the first error stops the writing and is reported.
    Replace,
    /// `run`: files are appended to, only regular files; errors drop records and are retried.
    Append,
}

/// Why records were dropped, as counted and as the metric's `reason` label names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DropReason {
    /// The file system is full (ENOSPC) or the user's quota is used up (EDQUOT).
    NoSpace,
    /// Any other write or open error (EIO, a file that is not a regular file, ...).
    IoError,
}

impl DropReason {
    pub(crate) const ALL: [DropReason; 2] = [DropReason::NoSpace, DropReason::IoError];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DropReason::NoSpace => "no_space",
            DropReason::IoError => "io_error",
        }
    }

    fn of(err: &io::Error) -> DropReason {
        match err.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => DropReason::NoSpace,
            _ => DropReason::IoError,
        }
    }
}

/// What the record writer did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub(crate) struct WriterStats {
    pub(crate) calls_written: u64,
    pub(crate) violations_written: u64,
    pub(crate) decisions_written: u64,
    /// Records lost to write errors, by reason.
    pub(crate) dropped_no_space: u64,
    pub(crate) dropped_io_error: u64,
    /// Outages: times writing failed after it had worked (each told once).
    pub(crate) outages: u64,
}

impl WriterStats {
    pub(crate) fn dropped(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::NoSpace => self.dropped_no_space,
            DropReason::IoError => self.dropped_io_error,
        }
    }

    fn count_dropped(&mut self, reason: DropReason, n: u64) {
        match reason {
            DropReason::NoSpace => self.dropped_no_space += n,
            DropReason::IoError => self.dropped_io_error += n,
        }
    }
}

/// A change in the writer's health, told once each.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outage {
    /// A record file could not be written: records are being dropped.
    Began {
        path: PathBuf,
        reason: DropReason,
        error: String,
    },
    /// Every record file writes again; `dropped` records were lost meanwhile.
    Ended { dropped: u64 },
}

/// A record file that failed: its records are dropped until a retry works.
struct Failed {
    reason: DropReason,
    retry_at: Instant,
    /// Reopened at the retry: records are buffered again, and the next flush tells.
    reopened: bool,
}

/// One record file (or stdout).
struct RecordFile {
    path: PathBuf,
    mode: WriteMode,
    /// `None` while failed and not reopened yet.
    sink: Option<Box<dyn Write + Send>>,
    /// Whole lines not yet written, and how many.
    buffer: Vec<u8>,
    lines: u64,
    /// The file's length after the last whole write (a failed write is cut back to it, so that
    /// no half line stays), when it is a file.
    good_len: Option<u64>,
    file: Option<std::fs::File>,
    failed: Option<Failed>,
}

impl RecordFile {
    fn open(path: &Path, mode: WriteMode) -> io::Result<RecordFile> {
        let mut record = RecordFile {
            path: path.to_owned(),
            mode,
            sink: None,
            buffer: Vec::with_capacity(BUFFER),
            lines: 0,
            good_len: None,
            file: None,
            failed: None,
        };
        record.reopen()?;
        Ok(record)
    }

    fn reopen(&mut self) -> io::Result<()> {
        if self.path == Path::new("-") {
            self.sink = Some(Box::new(io::stdout()));
            return Ok(());
        }
        let file = open_record_file(&self.path, self.mode)?;
        self.good_len = file.metadata().ok().map(|m| m.len());
        self.sink = Some(Box::new(file.try_clone()?));
        self.file = Some(file);
        Ok(())
    }

    /// Buffers one line; `Err` only in [`WriteMode::Replace`].
    fn line(
        &mut self,
        record: &impl Serialize,
        stats: &mut WriterStats,
        outage: &mut Option<Outage>,
    ) -> io::Result<bool> {
        if let Some(failed) = &self.failed
            && !failed.reopened
        {
            if Instant::now() < failed.retry_at {
                stats.count_dropped(failed.reason, 1);
                return Ok(false);
            }
            match self.reopen() {
                // Tried again at the next flush: success ends the outage.
                Ok(()) => {
                    if let Some(failed) = &mut self.failed {
                        failed.reopened = true;
                    }
                }
                Err(err) => {
                    let reason = DropReason::of(&err);
                    self.failed = Some(Failed {
                        reason,
                        retry_at: Instant::now() + RETRY_EVERY,
                        reopened: false,
                    });
                    stats.count_dropped(reason, 1);
                    return Ok(false);
                }
            }
        }
        write_line(&mut self.buffer, record)?;
        self.lines += 1;
        if self.buffer.len() >= BUFFER {
            self.flush(stats, outage)?;
        }
        Ok(true)
    }

    fn flush(&mut self, stats: &mut WriterStats, outage: &mut Option<Outage>) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let Some(sink) = self.sink.as_mut() else {
            return Ok(());
        };
        let written = sink.write_all(&self.buffer).and_then(|()| sink.flush());
        match written {
            Ok(()) => {
                if let Some(len) = &mut self.good_len {
                    *len += self.buffer.len() as u64;
                }
                self.failed = None;
                self.buffer.clear();
                self.lines = 0;
                Ok(())
            }
            Err(err) if self.mode == WriteMode::Replace => Err(err),
            Err(err) => {
                let reason = DropReason::of(&err);
                stats.count_dropped(reason, self.lines);
                self.cut_back(self.buffer.len() as u64);
                self.buffer.clear();
                self.lines = 0;
                self.sink = None;
                if self.failed.is_none() {
                    tracing::error!(path = %self.path.display(), error = %err,
                        "cannot write records: they are dropped (counted by reason) and the file is \
                         tried again every second; free space on its file system (or fix the error) \
                         and writing resumes by itself");
                    if outage.is_none() {
                        *outage = Some(Outage::Began {
                            path: self.path.clone(),
                            reason,
                            error: err.to_string(),
                        });
                    }
                }
                self.failed = Some(Failed {
                    reason,
                    retry_at: Instant::now() + RETRY_EVERY,
                    reopened: false,
                });
                Ok(())
            }
        }
    }

    /// Cuts a half-written line off the end of the file (best effort: the file may be gone).
    fn cut_back(&mut self, tried: u64) {
        let (Some(file), Some(good)) = (&self.file, self.good_len) else {
            return;
        };
        // Only what this write may have added: someone else truncating the file (logrotate's
        // copytruncate) must not make it grow back.
        if let Ok(meta) = file.metadata()
            && meta.len() > good
            && meta.len() - good <= tried
        {
            let _ = file.set_len(good);
        }
    }
}

/// Opens a record file: created with mode 0640. In [`WriteMode::Append`] the path must not be a
/// symbolic link (`O_NOFOLLOW`), nor a FIFO or device (opened non-blocking, then checked), and
/// an existing file readable by others loses those bits.
fn open_record_file(path: &Path, mode: WriteMode) -> io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut options = std::fs::OpenOptions::new();
    options.mode(0o640);
    match mode {
        WriteMode::Replace => {
            options.write(true).create(true).truncate(true);
        }
        WriteMode::Append => {
            options
                .append(true)
                .create(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
        }
    }
    let file = options.open(path).map_err(|err| {
        if err.raw_os_error() == Some(libc::ELOOP) {
            io::Error::other(format!(
                "{} is a symbolic link: records are written only to a regular file (remove the \
                 link; the daemon creates the file itself)",
                path.display()
            ))
        } else if err.raw_os_error() == Some(libc::ENXIO) {
            io::Error::other(format!(
                "{} is a FIFO: records are written only to a regular file (remove it)",
                path.display()
            ))
        } else {
            err
        }
    })?;
    if mode == WriteMode::Append {
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(io::Error::other(format!(
                "{} is not a regular file: records are written only to one (remove it; the \
                 daemon creates the file itself)",
                path.display()
            )));
        }
        let bits = meta.permissions().mode() & 0o7777;
        if bits & 0o137 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(bits & !0o137))?;
        }
        // Writes to a regular file never block; the flag only kept a FIFO from holding open().
        let flags = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_GETFL) };
        if flags >= 0 {
            unsafe {
                libc::fcntl(
                    std::os::fd::AsRawFd::as_raw_fd(&file),
                    libc::F_SETFL,
                    flags & !libc::O_NONBLOCK,
                )
            };
        }
    }
    Ok(file)
}

/// The paths records go to; `-` is stdout.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct RecordPaths {
    pub(crate) calls: Option<PathBuf>,
    pub(crate) violations: Option<PathBuf>,
    pub(crate) decisions: Option<PathBuf>,
}

/// The files of a [`RecordWriter`], opened apart from it so that a reload can open the new ones
/// first and swap them in only when all opened.
pub(crate) struct RecordFiles {
    calls: Option<RecordFile>,
    violations: Option<RecordFile>,
    decisions: Option<RecordFile>,
}

impl RecordFiles {
    /// Opens (creates) every configured file; the error names the path.
    pub(crate) fn open(
        paths: &RecordPaths,
        mode: WriteMode,
    ) -> Result<RecordFiles, (PathBuf, io::Error)> {
        let open = |path: &Option<PathBuf>| {
            path.as_deref()
                .map(|p| RecordFile::open(p, mode).map_err(|err| (p.to_owned(), err)))
                .transpose()
        };
        Ok(RecordFiles {
            calls: open(&paths.calls)?,
            violations: open(&paths.violations)?,
            decisions: open(&paths.decisions)?,
        })
    }

    fn each(&mut self) -> impl Iterator<Item = &mut RecordFile> {
        self.calls
            .iter_mut()
            .chain(self.violations.iter_mut())
            .chain(self.decisions.iter_mut())
    }
}

/// Extra fields of a decision record (the token's owner, when a directory knows it).
pub(crate) type DecisionExtra =
    Box<dyn Fn(&crate::shared::token::TokenFingerprint) -> Option<serde_json::Value> + Send>;

/// Writes the call, violation and decision records of verdicts: the one writer of `run` and
/// `analyze`. See the module's documentation for what it does on errors.
pub(crate) struct RecordWriter {
    files: RecordFiles,
    stats: WriterStats,
    /// A failed write seen since the last look (`Outage::Began`), for [`RecordWriter::track_outage`].
    outage: Option<Outage>,
    /// The drops counted when the outage in progress began.
    outage_since: Option<u64>,
    /// Outages begun or ended, not yet polled (at most one of each kind: bounded).
    told: std::collections::VecDeque<Outage>,
    /// The first error, in [`WriteMode::Replace`].
    error: Option<(PathBuf, io::Error)>,
    decision_extra: Option<DecisionExtra>,
}

impl RecordWriter {
    /// A writer on `files`, which say how they meet errors ([`WriteMode`]).
    pub(crate) fn new(files: RecordFiles) -> RecordWriter {
        RecordWriter {
            files,
            stats: WriterStats::default(),
            outage: None,
            outage_since: None,
            told: std::collections::VecDeque::new(),
            error: None,
            decision_extra: None,
        }
    }

    /// Adds the fields `extra` gives to each decision record (its token's owner).
    pub(crate) fn decision_extra(&mut self, extra: DecisionExtra) {
        self.decision_extra = Some(extra);
    }

    /// Writes one verdict's records. Live TLS calls have synthetic addresses: their transport
    /// is `tls` and a synthetic address is written empty.
    pub(crate) fn write(&mut self, verdict: &Verdict) {
        if self.error.is_some() {
            return;
        }
        let RecordWriter {
            files,
            stats,
            outage,
            error,
            decision_extra,
            ..
        } = self;
        let mut result = Ok(());
        if let Some(calls) = &mut files.calls {
            let mut record = CallRecord::of(verdict, Transport::Tcp);
            if is_synthetic(&verdict.call.server) {
                record.transport = Transport::Tls;
                if is_synthetic(&verdict.call.client) {
                    record.client = String::new();
                }
                record.server = String::new();
            }
            result = result.and_then(|()| {
                let written = calls.line(&record, stats, outage)?;
                stats.calls_written += u64::from(written);
                Ok(())
            });
            if let Err(err) = result {
                *error = Some((calls.path.clone(), err));
                return;
            }
        }
        if let Some(violations) = &mut files.violations {
            for record in ViolationRecord::all_of(verdict) {
                match violations.line(&record, stats, outage) {
                    Ok(written) => stats.violations_written += u64::from(written),
                    Err(err) => {
                        *error = Some((violations.path.clone(), err));
                        return;
                    }
                }
            }
        }
        if let (Some(decisions), Some(decision)) = (&mut files.decisions, &verdict.decision) {
            let extra = decision_extra.as_ref().and_then(|f| f(&decision.token_fp));
            let written = match extra {
                Some(owner) => {
                    let mut record = serde_json::to_value(decision).unwrap_or_default();
                    record["owner"] = owner;
                    decisions.line(&record, stats, outage)
                }
                None => decisions.line(decision, stats, outage),
            };
            match written {
                Ok(written) => stats.decisions_written += u64::from(written),
                Err(err) => *error = Some((decisions.path.clone(), err)),
            }
        }
        self.track_outage();
    }

    /// Writes what is buffered (each tick, before a reload, at the end).
    pub(crate) fn flush(&mut self) {
        let RecordWriter {
            files,
            stats,
            outage,
            error,
            ..
        } = self;
        for file in files.each() {
            if let Err(err) = file.flush(stats, outage)
                && error.is_none()
            {
                *error = Some((file.path.clone(), err));
            }
        }
        self.track_outage();
    }

    /// Follows outages: one begins with the first failed write, and ends once no file is
    /// failed any more (a write worked).
    fn track_outage(&mut self) {
        let dropped = self.stats.dropped_no_space + self.stats.dropped_io_error;
        if let Some(began) = self.outage.take()
            && self.outage_since.is_none()
        {
            self.outage_since = Some(dropped);
            self.stats.outages += 1;
            self.tell(began);
        }
        let failing = self.files.each().any(|f| f.failed.is_some());
        if let (Some(at_start), false) = (self.outage_since, failing) {
            let dropped = dropped - at_start;
            tracing::info!(dropped, "records are written again");
            self.outage_since = None;
            self.tell(Outage::Ended { dropped });
        }
    }

    fn tell(&mut self, outage: Outage) {
        // Nobody polling (a writer nobody asks) keeps only the newest of each.
        if self.told.len() >= 2 {
            self.told.pop_front();
        }
        self.told.push_back(outage);
    }

    /// An outage begun or ended since the last call, oldest first (each told once).
    pub(crate) fn poll_outage(&mut self) -> Option<Outage> {
        self.told.pop_front()
    }

    /// Takes the files of a reload (new paths, or the same after logrotate moved them); the
    /// counters carry on. Flushes the old ones first.
    pub(crate) fn replace_files(&mut self, files: RecordFiles) {
        self.flush();
        self.files = files;
    }

    /// The first error, in [`WriteMode::Replace`] (`analyze` stops on it).
    pub(crate) fn take_error(&mut self) -> Option<(PathBuf, io::Error)> {
        self.error.take()
    }

    pub(crate) fn stats(&self) -> &WriterStats {
        &self.stats
    }
}

/// Addresses the TLS uprobes make up for connections they cannot tie to a socket (see
/// `edges/capture/records.rs`): never written.
fn is_synthetic(endpoint: &crate::shared::model::Endpoint) -> bool {
    crate::edges::capture::records::is_synthetic(endpoint)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn record_files_are_created_0640_in_both_modes_and_an_open_one_loses_bits_for_others() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [WriteMode::Replace, WriteMode::Append] {
            let path = dir.path().join(format!("{mode:?}.jsonl"));
            open_record_file(&path, mode).unwrap();
            assert_eq!(mode_of(&path), 0o640, "{mode:?}");
        }
        let wide = dir.path().join("wide.jsonl");
        std::fs::write(&wide, "{}\n").unwrap();
        std::fs::set_permissions(&wide, std::fs::Permissions::from_mode(0o666)).unwrap();
        open_record_file(&wide, WriteMode::Append).unwrap();
        assert_eq!(mode_of(&wide), 0o640);
        assert_eq!(
            std::fs::read_to_string(&wide).unwrap(),
            "{}\n",
            "appended to, kept"
        );
    }

    #[test]
    fn records_are_appended_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("calls.jsonl");
        std::fs::write(&path, "{\"earlier\":1}\n").unwrap();
        let mut file = RecordFile::open(&path, WriteMode::Append).unwrap();
        let (mut stats, mut outage) = (WriterStats::default(), None);
        file.line(&serde_json::json!({"later": 2}), &mut stats, &mut outage)
            .unwrap();
        file.flush(&mut stats, &mut outage).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"earlier\":1}\n{\"later\":2}\n");
    }

    #[test]
    fn the_daemon_refuses_a_symbolic_link_a_fifo_or_a_directory_at_a_record_path() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "").unwrap();
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let fifo = dir.path().join("fifo.jsonl");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let sub = dir.path().join("dir.jsonl");
        std::fs::create_dir(&sub).unwrap();
        for (path, says) in [
            (&link, "symbolic link"),
            (&fifo, "FIFO"),
            (&sub, "Is a directory"),
        ] {
            let err = open_record_file(path, WriteMode::Append).unwrap_err();
            assert!(err.to_string().contains(says), "{}: {err}", path.display());
        }
        assert_eq!(
            std::fs::read(&target).unwrap(),
            b"",
            "nothing written through the link"
        );
    }
}
