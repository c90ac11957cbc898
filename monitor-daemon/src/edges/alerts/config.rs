//! `[alerts]`: the sinks alerts go to and how hard delivery tries, with their checks.

use std::path::PathBuf;

use serde::Deserialize;

use crate::shared::model::Span;
use crate::shared::settings::{Duration, Problem, WebhookUrl};

/// Alert webhooks to the admin team.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AlertsConfig {
    /// Repeated alerts for one token and rule within this time are counted, not sent; the next
    /// one sent says how many it stands for.
    pub(crate) cooldown: Duration,
    /// An alert that could not be delivered for this long after it was queued is given up
    /// (recorded, reason `too_old`); until then it is retried, however many attempts it takes.
    pub(crate) max_age: Duration,
    /// Optional: also give an alert up after this many attempts (reason `out_of_attempts`).
    /// Unset by default: a sink that is down for hours still gets every alert when it is back.
    pub(crate) max_attempts: Option<u32>,
    /// A sink whose attempts have all failed for this long is announced to the other sinks
    /// (`sink_failing`, once per outage; `sink_recovered` when it works again).
    pub(crate) sink_failing_after: Duration,
    /// Retry delays grow from `backoff_base` doubling up to `backoff_cap`, with full jitter.
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_cap: Duration,
    /// Time allowed for one delivery attempt (connect, send, answer).
    pub(crate) request_timeout: Duration,
    /// Undelivered alerts held at most; past it new alerts are refused (counted).
    pub(crate) max_queued: usize,
    pub(crate) sinks: Vec<SinkConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            cooldown: Duration(Span::from_secs(15 * 60)),
            max_age: Duration(Span::from_secs(24 * 3600)),
            max_attempts: None,
            sink_failing_after: Duration(Span::from_secs(10 * 60)),
            backoff_base: Duration(Span::from_secs(1)),
            backoff_cap: Duration(Span::from_secs(10 * 60)),
            request_timeout: Duration(Span::from_secs(10)),
            max_queued: 10_000,
            sinks: Vec::new(),
        }
    }
}

/// One webhook that receives alerts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SinkConfig {
    /// Names the sink in logs and delivery records (the URL itself is a secret).
    pub(crate) name: String,
    pub(crate) kind: SinkKind,
    pub(crate) url: WebhookUrl,
    /// `generic` only: a file holding the Standard Webhooks secret, `whsec_<base64>`.
    #[serde(default)]
    pub(crate) secret_file: Option<PathBuf>,
    /// `jira` only: the project key issues are created in (e.g. `OPS`).
    #[serde(default)]
    pub(crate) project: Option<String>,
    /// `jira` only: the issue type's name (default `Task`).
    #[serde(default)]
    pub(crate) issue_type: Option<String>,
    /// `jira` only: a file holding `email:api_token` (Cloud) or a personal access token.
    #[serde(default)]
    pub(crate) credentials_file: Option<PathBuf>,
    /// Which alerts go to this sink; all of them when absent.
    #[serde(default = "super::AlertKind::all")]
    pub(crate) events: Vec<super::AlertKind>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SinkKind {
    /// Slack incoming webhook: Block Kit blocks with a `text` fallback.
    Slack,
    /// Microsoft Teams Workflows webhook: a message with an Adaptive Card.
    Teams,
    /// Any HTTP endpoint: a JSON envelope signed with the Standard Webhooks headers.
    Generic,
    /// JIRA: an issue per alert, created with the REST API at `url` (JIRA's base URL).
    Jira,
}

impl AlertsConfig {
    /// What is wrong with `[alerts]`, each problem keyed by its full path.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let positive = [
            (
                "alerts.max_attempts",
                self.max_attempts.map_or(1, |n| n as usize),
            ),
            ("alerts.max_age", self.max_age.span().0 as usize),
            (
                "alerts.sink_failing_after",
                self.sink_failing_after.span().0 as usize,
            ),
            ("alerts.max_queued", self.max_queued),
            ("alerts.backoff_base", self.backoff_base.span().0 as usize),
            (
                "alerts.request_timeout",
                self.request_timeout.span().0 as usize,
            ),
        ];
        for (key, value) in positive {
            if value == 0 {
                problems.push(Problem::new(key.into(), "must be more than zero".into()));
            }
        }
        if self.backoff_cap.span() < self.backoff_base.span() {
            problems.push(Problem::new(
                "alerts.backoff_cap".into(),
                "must be at least alerts.backoff_base".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
            let key = |field: &str| format!("alerts.sinks[{i}].{field}");
            if sink.name.is_empty() || !names.insert(sink.name.as_str()) {
                problems.push(Problem::new(
                    key("name"),
                    "must be a non-empty name unique among the sinks".into(),
                ));
            }
            if let Err(message) = sink.url.check() {
                problems.push(Problem::new(key("url"), message));
            }
            match (sink.kind, &sink.secret_file) {
                (SinkKind::Generic, None) => {
                    problems.push(Problem::new(
                        key("secret_file"),
                        "is required for a generic sink: a file holding `whsec_<base64>`".into(),
                    ));
                }
                (SinkKind::Slack | SinkKind::Teams | SinkKind::Jira, Some(_)) => {
                    problems.push(Problem::new(
                        key("secret_file"),
                        "applies only to generic sinks (Slack and Teams URLs carry their own \
                         secret, JIRA sinks use `credentials_file`)"
                            .into(),
                    ));
                }
                _ => {}
            }
            let jira_fields = [
                ("project", sink.project.is_some()),
                ("issue_type", sink.issue_type.is_some()),
                ("credentials_file", sink.credentials_file.is_some()),
            ];
            if sink.kind == SinkKind::Jira {
                if sink.project.as_deref().is_none_or(|p| p.trim().is_empty()) {
                    problems.push(Problem::new(
                        key("project"),
                        "is required for a jira sink: the project key, e.g. \"OPS\"".into(),
                    ));
                }
                if sink.credentials_file.is_none() {
                    problems.push(Problem::new(
                        key("credentials_file"),
                        "is required for a jira sink: a file holding `email:api_token` (Cloud) \
                         or a personal access token (Data Center)"
                            .into(),
                    ));
                }
            } else {
                for (field, set) in jira_fields {
                    if set {
                        problems.push(Problem::new(
                            key(field),
                            "applies only to jira sinks".into(),
                        ));
                    }
                }
            }
            if sink.events.is_empty() {
                problems.push(Problem::new(
                    key("events"),
                    "is empty: leave it out to receive every alert".into(),
                ));
            }
        }
        problems
    }
}
