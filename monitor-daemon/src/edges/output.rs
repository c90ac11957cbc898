//! The records the daemon writes: one JSON object a line per API call and per violation.
//!
//! These shapes are a public interface (documented in the README); change them only by adding
//! fields. Records name tokens by fingerprint and masked form only.

use std::io::{self, Write};

use serde::Serialize;

use crate::shared::model::Span;
use crate::shared::settings::{Duration, Problem, longer_than_zero};
use crate::shared::token::TokenProblem;
use crate::stages::http::HttpVersion;
use crate::stages::policy::{ClientViolation, HeavyReason, Verdict, Violation};
use crate::stages::redcap::{ApiParams, BodyProblem};
use serde::Deserialize;
use std::path::PathBuf;

/// How a call was seen.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// Plaintext HTTP reassembled from TCP segments.
    Tcp,
    /// HTTP read and written through the web server's OpenSSL (uprobes).
    Tls,
}

#[derive(Serialize)]
pub struct CallRecord<'a> {
    pub ts_start: f64,
    pub ts_end: f64,
    pub ttfb_s: Option<f64>,
    pub client: String,
    pub server: String,
    /// The trusted proxy whose connection carried the call, when `client` came from its header.
    pub proxy: Option<String>,
    pub method: &'a str,
    pub path: &'a str,
    pub http_version: HttpVersion,
    pub token_fp: Option<String>,
    pub token_masked: Option<&'a str>,
    pub token_problem: Option<TokenProblem>,
    #[serde(flatten)]
    pub params: &'a ApiParams,
    pub status: Option<u16>,
    pub request_bytes: u64,
    pub response_bytes: Option<u64>,
    pub response_wire_bytes: Option<u64>,
    pub heavy: Option<HeavyReason>,
    pub complete: bool,
    /// Why the body's fields may be incomplete, when they may be.
    pub body_problem: Option<BodyProblem>,
    pub transport: Transport,
}

impl<'a> CallRecord<'a> {
    pub fn of(verdict: &'a Verdict, transport: Transport) -> CallRecord<'a> {
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
pub struct ViolationRecord<'a> {
    pub ts: f64,
    /// `null` for a client address over the refused-calls rule (no token is blamed).
    pub token_fp: Option<String>,
    /// The client address, for the refused-calls rule only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    pub rule: &'a str,
    pub limit: u32,
    pub window_s: u64,
    pub count: u32,
}

impl<'a> ViolationRecord<'a> {
    pub fn of(violation: &'a Violation) -> ViolationRecord<'a> {
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
    pub fn of_client(violation: &ClientViolation) -> ViolationRecord<'static> {
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
    pub fn all_of(verdict: &'a Verdict) -> impl Iterator<Item = ViolationRecord<'a>> {
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
pub fn write_line(out: &mut impl Write, record: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, record)?;
    out.write_all(b"\n")
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

impl OutputConfig {
    /// What is wrong with `[output]`, each problem keyed by its full path.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        longer_than_zero(
            &mut problems,
            &[("output.stats_interval", self.stats_interval)],
            "60s",
        );
        problems
    }
}
