//! JIRA as an alert sink: each alert becomes an issue created with JIRA's REST API
//! (`POST {url}/rest/api/2/issue`, which JIRA Cloud and Data Center both serve; version 2 takes
//! a plain-text description, version 3 would need Atlassian Document Format).
//!
//! The credential is read once from `credentials_file`: `email:api_token` (JIRA Cloud, sent as
//! HTTP Basic) or a personal access token alone (Data Center, sent as Bearer). It is held only as
//! the ready `Authorization` value, zeroed on drop, never in `Debug` or a log. Delivery, retries
//! and the outbox are the other sinks' (a retry after a lost answer can create a second issue).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::shared::secret_file::{SecretFileError, read_secret_text};

/// JIRA rejects a summary over 255 characters.
const SUMMARY_MAX: usize = 250;

/// What a JIRA sink creates: an issue of `issue_type` in `project`.
pub(crate) struct JiraTarget {
    pub(crate) project: String,
    pub(crate) issue_type: String,
    authorization: Zeroizing<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum JiraCredentialsError {
    #[error("{0}")]
    File(#[from] SecretFileError),
    #[error(
        "must hold one line: `email:api_token` (JIRA Cloud) or a personal access token (Data Center)"
    )]
    Format,
}

impl JiraTarget {
    pub(crate) fn read(
        path: &Path,
        project: &str,
        issue_type: &str,
    ) -> Result<JiraTarget, JiraCredentialsError> {
        let text = read_secret_text(path, 4096)?;
        let line = text.lines().next().unwrap_or("").trim();
        if line.is_empty() || line.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(JiraCredentialsError::Format);
        }
        let authorization = if line.contains(':') {
            Zeroizing::new(format!("Basic {}", STANDARD.encode(line.as_bytes())))
        } else {
            Zeroizing::new(format!("Bearer {line}"))
        };
        Ok(JiraTarget {
            project: project.to_owned(),
            issue_type: issue_type.to_owned(),
            authorization,
        })
    }

    pub(crate) fn authorization(&self) -> &str {
        &self.authorization
    }
}

/// Where issues are created, from the sink's base URL (`https://jira.example.org`).
pub(crate) fn issue_url(base: &str) -> String {
    format!("{}/rest/api/2/issue", base.trim_end_matches('/'))
}

/// The create-issue body: summary (one line), description (the facts, one per line, in JIRA's
/// wiki markup) and labels to find them by.
pub(crate) fn issue(
    target: &JiraTarget,
    summary: &str,
    facts: &[(&'static str, String)],
    kind: &str,
    severity: &str,
) -> Value {
    let summary: String = summary
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(SUMMARY_MAX)
        .collect();
    let description: Vec<String> = facts
        .iter()
        .map(|(title, value)| format!("*{title}:* {}", escape(value)))
        .collect();
    json!({
        "fields": {
            "project": {"key": target.project},
            "issuetype": {"name": target.issue_type},
            "summary": summary,
            "description": description.join("\n"),
            "labels": ["redcap-monitor", kind, severity],
        }
    })
}

/// Keeps text from outside from becoming JIRA markup (links, mentions, macros).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '[' | ']' | '{' | '}' | '|' | '*' | '_' | '!' | '~' | '^') {
            out.push('\\');
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}
