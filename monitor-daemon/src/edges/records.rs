//! Reading back the call records the daemon writes (`output.calls`, see [`super::output`]):
//! the live file and its logrotate rotations (`calls.jsonl.1`, `calls.jsonl.2.gz`, …).
//!
//! Owns finding the files (oldest first), decompressing rotated ones, and turning each line back
//! into the [`ApiCall`] the policy judges: the fields the policy and the certification judge
//! read (times, token fingerprint and masked form, parameters, status, sizes, completeness).
//! Never sees a raw token (records hold none). Bounded: a line is read up to
//! [`MAX_LINE_BYTES`]; a malformed or overlong line is counted and skipped, never fatal; memory
//! does not grow with the files.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::shared::model::{Endpoint, Span, Timestamp};
use crate::shared::token::{HookToken, MaskedToken, TokenProblem};
use crate::stages::redcap::{ApiCall, ApiParams, TokenIdentity};

/// The longest record line read; a longer one is skipped as malformed (records are a few
/// hundred bytes).
pub(crate) const MAX_LINE_BYTES: usize = 64 * 1024;
/// Malformed lines named one by one in [`RecordStats::malformed_examples`]; the rest counted.
const MAX_EXAMPLES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("cannot read the call records at {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "no call records at {path}: give the file `output.calls` names (e.g. \
         /var/log/redcap-monitor/calls.jsonl) or the directory holding calls.jsonl and its \
         rotations"
    )]
    NoneFound { path: PathBuf },
}

/// What reading the records met.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RecordStats {
    pub(crate) files: Vec<PathBuf>,
    pub(crate) lines: u64,
    pub(crate) calls: u64,
    /// Lines that are not a call record (bad JSON, missing fields, bad values, overlong).
    pub(crate) malformed_lines: u64,
    /// `file:line: why` of the first few malformed lines.
    pub(crate) malformed_examples: Vec<String>,
    /// Files that ended in a read error (e.g. a rotation still being compressed): what came
    /// before the error was read.
    pub(crate) read_errors: Vec<String>,
    /// Files not read because they cannot hold a needed call (see [`Needed`]).
    pub(crate) skipped_files: Vec<PathBuf>,
    /// `file:line` where reading stopped at a call past [`Needed::before`].
    pub(crate) stopped_at: Option<String>,
}

/// Which calls the reader must hand over: those that started in `[since, before)`. Others may
/// be handed over too; whole stretches without a needed call are skipped: a file last modified
/// before `since` (each record is written after its call started, so all of its calls started
/// earlier), and everything from the first call at or after `before` on (records are written
/// in about the order calls started: give `before` a margin for calls written late).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Needed {
    pub(crate) since: Option<Timestamp>,
    pub(crate) before: Option<Timestamp>,
}

/// When `file` was last modified, as a timestamp.
fn modified(file: &File) -> Option<Timestamp> {
    let since_epoch = file
        .metadata()
        .and_then(|m| m.modified())
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(Timestamp(u64::try_from(since_epoch.as_nanos()).ok()?))
}

/// The files holding call records at `path`, oldest first. A file: it and its rotations beside
/// it (`NAME.N`, `NAME.N.gz`). A directory: `calls.jsonl` and its rotations in it.
pub(crate) fn record_files(path: &Path) -> Result<Vec<PathBuf>, RecordsError> {
    let meta = std::fs::metadata(path).map_err(|source| RecordsError::Open {
        path: path.to_owned(),
        source,
    })?;
    let (dir, base) = if meta.is_dir() {
        (path.to_owned(), "calls.jsonl".to_string())
    } else {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        (dir.to_owned(), base)
    };
    let entries = std::fs::read_dir(&dir).map_err(|source| RecordsError::Open {
        path: dir.clone(),
        source,
    })?;
    // (rotation number, path); the live file is rotation 0, the newest.
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&base) else {
            continue;
        };
        let number = if rest.is_empty() {
            Some(0)
        } else {
            rest.strip_prefix('.')
                .map(|r| r.strip_suffix(".gz").unwrap_or(r))
                .and_then(|n| n.parse::<u64>().ok())
                .filter(|n| *n > 0)
        };
        if let Some(n) = number
            && entry.path().is_file()
        {
            found.push((n, entry.path()));
        }
    }
    if found.is_empty() {
        return Err(RecordsError::NoneFound {
            path: path.to_owned(),
        });
    }
    found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Reads the call records of `files` in order, handing each call `needed` may hold to `each`.
/// A file that cannot be opened is an error; a bad line or a read error inside a file is
/// counted and reading goes on.
pub(crate) fn read_calls(
    files: &[PathBuf],
    needed: Needed,
    mut each: impl FnMut(ApiCall),
) -> Result<RecordStats, RecordsError> {
    let mut stats = RecordStats {
        files: files.to_vec(),
        ..RecordStats::default()
    };
    for path in files {
        if stats.stopped_at.is_some() {
            stats.skipped_files.push(path.clone());
            continue;
        }
        let file = File::open(path).map_err(|source| RecordsError::Open {
            path: path.clone(),
            source,
        })?;
        if let (Some(since), Some(modified)) = (needed.since, modified(&file))
            && modified < since
        {
            stats.skipped_files.push(path.clone());
            continue;
        }
        let mut reader = open_maybe_gzip(file).map_err(|source| RecordsError::Open {
            path: path.clone(),
            source,
        })?;
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            number += 1;
            match read_line_capped(&mut reader, &mut line, MAX_LINE_BYTES) {
                Ok(None) => break,
                Ok(Some(too_long)) => {
                    if line.iter().all(u8::is_ascii_whitespace) && !too_long {
                        continue;
                    }
                    stats.lines += 1;
                    let parsed = if too_long {
                        Err(format!("longer than {MAX_LINE_BYTES} bytes"))
                    } else {
                        parse_call(&line)
                    };
                    match parsed {
                        Ok(call) if needed.before.is_some_and(|before| call.ts_start >= before) => {
                            stats.stopped_at = Some(format!("{}:{number}", path.display()));
                            break;
                        }
                        Ok(call) => {
                            stats.calls += 1;
                            each(call);
                        }
                        Err(why) => {
                            stats.malformed_lines += 1;
                            if stats.malformed_examples.len() < MAX_EXAMPLES {
                                stats
                                    .malformed_examples
                                    .push(format!("{}:{number}: {why}", path.display()));
                            }
                        }
                    }
                }
                Err(err) => {
                    stats.read_errors.push(format!(
                        "{}: {err} (read up to line {number})",
                        path.display()
                    ));
                    break;
                }
            }
        }
    }
    Ok(stats)
}

/// A reader of `file`, decompressing it when it starts with gzip's magic bytes (logrotate's
/// `delaycompress` leaves `.1` plain, so the name alone does not tell).
fn open_maybe_gzip(file: File) -> io::Result<Box<dyn BufRead>> {
    let mut reader = BufReader::new(file);
    let head = reader.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(
            reader,
        ))))
    } else {
        Ok(Box::new(reader))
    }
}

/// The next line into `line` (without its newline): `None` at the end, `Some(true)` when it
/// was longer than `cap` (then only its first `cap` bytes are kept and the rest skipped).
fn read_line_capped(
    reader: &mut dyn BufRead,
    line: &mut Vec<u8>,
    cap: usize,
) -> io::Result<Option<bool>> {
    line.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        if chunk.is_empty() {
            return Ok(any.then_some(too_long));
        }
        any = true;
        let (take, done) = match memchr::memchr(b'\n', chunk) {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        let room = cap.saturating_sub(line.len());
        too_long |= take > room;
        line.extend_from_slice(&chunk[..take.min(room)]);
        reader.consume(take + usize::from(done));
        if done {
            return Ok(Some(too_long));
        }
    }
}

/// The fields of a call record the policy and the judge read (see `output::CallRecord`).
#[derive(Deserialize)]
struct CallLine {
    ts_start: f64,
    ts_end: f64,
    ttfb_s: Option<f64>,
    client: String,
    server: String,
    /// The trusted proxy whose connection carried the call (records before it was added: none).
    #[serde(default)]
    proxy: Option<String>,
    #[serde(default)]
    method: String,
    #[serde(default)]
    path: String,
    token_fp: Option<String>,
    token_masked: Option<String>,
    token_problem: Option<TokenProblem>,
    #[serde(flatten)]
    params: ApiParams,
    status: Option<u16>,
    #[serde(default)]
    request_bytes: u64,
    response_bytes: Option<u64>,
    response_wire_bytes: Option<u64>,
    complete: bool,
}

fn time(secs: f64, what: &str) -> Result<Timestamp, String> {
    if (0.0..1e10).contains(&secs) {
        Ok(Timestamp((secs * 1e9).round() as u64))
    } else {
        Err(format!("{what} is not a time"))
    }
}

/// An `ip:port`; empty (a TLS call's server, a client that could not be found for certain)
/// reads as the unspecified address, which only the refused-calls count per client would see.
fn endpoint(text: &str, what: &str) -> Result<Endpoint, String> {
    if text.is_empty() {
        return Ok(Endpoint {
            ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
            port: 0,
        });
    }
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| format!("{what} is not an address:port"))?;
    Ok(Endpoint {
        ip: addr.ip(),
        port: addr.port(),
    })
}

/// One record line as a call. Errors name the field, never echo the line (it is input).
fn parse_call(line: &[u8]) -> Result<ApiCall, String> {
    let record: CallLine = serde_json::from_slice(line)
        .map_err(|e| format!("not a call record ({})", e.classify_name()))?;
    let token = match (&record.token_fp, record.token_problem) {
        (Some(fp), _) => Ok(TokenIdentity {
            fingerprint: fp
                .parse()
                .map_err(|_| "token_fp is not a fingerprint".to_string())?,
            masked: MaskedToken(record.token_masked.clone().unwrap_or_default()),
        }),
        (None, Some(problem)) => Err(problem),
        (None, None) => return Err("neither token_fp nor token_problem".into()),
    };
    let ttfb = match record.ttfb_s {
        Some(s) if s.is_finite() && s >= 0.0 => Some(Span((s * 1e9).round() as u64)),
        Some(_) => return Err("ttfb_s is not a duration".into()),
        None => None,
    };
    Ok(ApiCall {
        ts_start: time(record.ts_start, "ts_start")?,
        ts_end: time(record.ts_end, "ts_end")?,
        ttfb,
        client: endpoint(&record.client, "client")?,
        server: endpoint(&record.server, "server")?,
        proxy: record
            .proxy
            .as_deref()
            .map(|p| endpoint(p, "proxy"))
            .transpose()?,
        method: record.method,
        path: record.path,
        // Not read by the policy or the judge; the record's spelling is not parsed back.
        http_version: Default::default(),
        token,
        params: record.params,
        status: record.status,
        request_bytes: record.request_bytes,
        response_bytes: record.response_bytes,
        response_wire_bytes: record.response_wire_bytes,
        body_problem: None,
        complete: record.complete,
        raw_token: HookToken::default(),
    })
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "bad JSON",
            serde_json::error::Category::Data => "a field is missing or of the wrong type",
            serde_json::error::Category::Eof => "cut short",
        }
    }
}

#[cfg(test)]
mod tests;
