//! Alert bodies, one shape per sink kind: Slack Block Kit, a Teams Adaptive Card, a JIRA issue,
//! and our versioned JSON envelope for generic sinks.
//!
//! Pure functions from an [`Outgoing`] alert to JSON text. Chat bodies carry facts only (the
//! evidence goes to generic sinks), and text from outside is escaped so that it cannot ping
//! (`<!channel>`) or break the markup.

use serde_json::{Value, json};

use super::SinkKind;
use super::time::rfc3339;
use super::{Alert, Outgoing};
use crate::edges::directory::Owner;

/// Slack rejects section text over 3000 characters and header text over 150.
const SLACK_TEXT_MAX: usize = 2900;
const SLACK_HEADER_MAX: usize = 150;

/// `owner`: who the alert's token belongs to, from the token directory, when known.
pub(crate) fn body(
    kind: SinkKind,
    outgoing: &Outgoing,
    owner: Option<&Owner>,
    id: &str,
    host: &str,
) -> String {
    let value = match kind {
        SinkKind::Slack => slack(outgoing, owner, host),
        SinkKind::Teams => teams(outgoing, owner, host),
        // A JIRA sink renders with its target (`jira` below); without one, the envelope.
        SinkKind::Generic | SinkKind::Jira => generic(outgoing, owner, id, host),
    };
    value.to_string()
}

/// A JIRA create-issue body: the headline as summary, the chat sinks' facts as description.
pub(crate) fn jira(
    target: &super::jira::JiraTarget,
    outgoing: &Outgoing,
    owner: Option<&Owner>,
    host: &str,
) -> String {
    let kind = outgoing.alert.kind();
    super::jira::issue(
        target,
        &headline(&outgoing.alert),
        &facts(outgoing, owner, host),
        kind.as_str(),
        kind.severity(),
    )
    .to_string()
}

fn headline(alert: &Alert) -> String {
    match alert {
        Alert::Violation {
            token,
            rule,
            limit,
            window,
            count,
            ..
        } => format!(
            "Token {} broke rule {rule}: {count} calls in {} (limit {limit})",
            token_name(token),
            seconds(window.as_secs_f64())
        ),
        Alert::Probing {
            client,
            limit,
            window,
            count,
            ..
        } => format!(
            "Client {client} is probing for tokens: {count} refused calls in {} (limit {limit})",
            seconds(window.as_secs_f64())
        ),
        Alert::Degraded { summary, .. } => format!("REDCap server degraded: {summary}"),
        Alert::Recovered { summary, .. } => format!("REDCap server recovered: {summary}"),
        Alert::Suspended { token, until, .. } => match until {
            Some(until) => format!(
                "Token {} suspended until {}",
                token_name(token),
                rfc3339(*until)
            ),
            None => format!("Token {} suspended until lifted", token_name(token)),
        },
        Alert::Lifted { token, .. } => {
            format!("Suspension of token {} lifted", token_name(token))
        }
        Alert::CaptureLoss { lost, .. } => {
            format!("Capture lost {lost} events: calls may have been missed")
        }
        Alert::RecordsWriteFailed { path, .. } => {
            format!("redcap-monitor cannot write its records to {path}: they are being dropped")
        }
        Alert::CaptureBlind { reason, .. } => {
            format!("redcap-monitor is blind to some traffic ({reason}): API calls are not counted")
        }
        Alert::SinkFailing { sink, since, .. } => format!(
            "Alert sink {sink} has been failing since {}: its alerts wait in the outbox",
            rfc3339(*since)
        ),
        Alert::SinkRecovered { sink, .. } => {
            format!("Alert sink {sink} works again: its waiting alerts are being delivered")
        }
        Alert::Shared { summary, .. } => summary.clone(),
    }
}

fn token_name(token: &super::TokenRef) -> String {
    match &token.masked {
        Some(masked) => masked.to_string(),
        None => format!("fp {}", token.fingerprint),
    }
}

fn seconds(secs: f64) -> String {
    format!("{secs}s")
}

/// Title and value pairs shown by chat sinks.
fn facts(outgoing: &Outgoing, owner: Option<&Owner>, host: &str) -> Vec<(&'static str, String)> {
    let alert = &outgoing.alert;
    let mut facts = Vec::new();
    if let Some(token) = alert.token() {
        if let Some(masked) = &token.masked {
            facts.push(("Token", masked.to_string()));
        }
        facts.push(("Fingerprint", token.fingerprint.to_string()));
    }
    if let Some(owner) = owner {
        owner_facts(owner, &mut facts);
    }
    match alert {
        Alert::Violation {
            rule,
            limit,
            window,
            count,
            ..
        } => {
            facts.push(("Rule", rule.clone()));
            facts.push((
                "Calls",
                format!(
                    "{count} in {} (limit {limit})",
                    seconds(window.as_secs_f64())
                ),
            ));
        }
        Alert::Suspended { until, reason, .. } => {
            facts.push((
                "Until",
                until.map_or_else(|| "lifted by hand".into(), rfc3339),
            ));
            facts.push(("Reason", reason.clone()));
        }
        Alert::Lifted { reason, .. } => facts.push(("Reason", reason.clone())),
        Alert::Degraded { summary, .. } | Alert::Recovered { summary, .. } => {
            facts.push(("Summary", summary.clone()))
        }
        Alert::CaptureLoss { lost, .. } => facts.push(("Events lost", lost.to_string())),
        Alert::Probing {
            client,
            limit,
            window,
            count,
            ..
        } => {
            facts.push(("Client", client.to_string()));
            facts.push((
                "Refused calls",
                format!(
                    "{count} in {} (limit {limit})",
                    seconds(window.as_secs_f64())
                ),
            ));
        }
        Alert::CaptureBlind { reason, advice, .. } => {
            facts.push(("Blind spot", reason.clone()));
            facts.push(("What to do", advice.clone()));
        }
        Alert::RecordsWriteFailed { path, error, .. } => {
            facts.push(("File", path.clone()));
            facts.push(("Error", error.clone()));
            facts.push((
                "What to do",
                "free space on its file system: writing resumes by itself".into(),
            ));
        }
        Alert::SinkFailing {
            sink,
            since,
            failed_attempts,
            last_error,
            ..
        } => {
            facts.push(("Sink", sink.clone()));
            facts.push(("Failing since", rfc3339(*since)));
            facts.push(("Failed attempts", failed_attempts.to_string()));
            facts.push(("Last error", last_error.clone()));
        }
        Alert::SinkRecovered {
            sink,
            since,
            failed_attempts,
            ..
        } => {
            facts.push(("Sink", sink.clone()));
            facts.push(("Failing since", rfc3339(*since)));
            facts.push(("Failed attempts", failed_attempts.to_string()));
        }
        Alert::Shared { summary, .. } => facts.push(("What happened", summary.clone())),
    }
    if let Some(repeats) = outgoing.repeats {
        facts.push((
            "Repeats",
            format!(
                "{} more since {} (held back by the cooldown)",
                repeats.count,
                rfc3339(repeats.since)
            ),
        ));
    }
    facts.push(("Severity", alert.kind().severity().into()));
    facts.push(("Host", host.into()));
    facts.push(("Time", rfc3339(alert.at())));
    facts
}

/// Who the token belongs to, and what REDCap itself says of it.
fn owner_facts(owner: &Owner, facts: &mut Vec<(&'static str, String)>) {
    let mut user = owner.person();
    if let Some(email) = &owner.email {
        user.push_str(&format!(" <{email}>"));
    }
    facts.push(("User", user));
    if let Some(project) = owner.project() {
        facts.push(("Project", project));
    }
    if let Some(pi) = owner.pi() {
        facts.push(("PI", pi));
    }
    let mut redcap = Vec::new();
    if owner.user_suspended {
        redcap.push("user suspended in REDCap");
    }
    if owner.rights_expired {
        redcap.push("project rights expired");
    }
    if !redcap.is_empty() {
        facts.push(("In REDCap", redcap.join(", ")));
    }
    if let Some(last) = &owner.last_api_use {
        facts.push(("REDCap's last API use", last.clone()));
    }
}

/// Escapes the three characters Slack's mrkdwn treats as markup (`<!channel>` pings everyone).
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn slack(outgoing: &Outgoing, owner: Option<&Owner>, host: &str) -> Value {
    let headline = headline(&outgoing.alert);
    let facts = facts(outgoing, owner, host);
    let lines: Vec<String> = facts
        .iter()
        .map(|(title, value)| format!("*{title}:* {}", slack_escape(value)))
        .collect();
    json!({
        "text": truncate(&format!("{}\n{}", slack_escape(&headline), lines.join("\n")), SLACK_TEXT_MAX),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": truncate(&headline, SLACK_HEADER_MAX - 1)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": truncate(&lines.join("\n"), SLACK_TEXT_MAX)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                "redcap-monitor · {} · {}", outgoing.alert.kind().as_str(), slack_escape(host))}]}
        ]
    })
}

fn teams(outgoing: &Outgoing, owner: Option<&Owner>, host: &str) -> Value {
    let facts: Vec<Value> = facts(outgoing, owner, host)
        .into_iter()
        .map(|(title, value)| json!({"title": title, "value": value}))
        .collect();
    let colour = match outgoing.alert.kind().severity() {
        "critical" => "Attention",
        "warning" => "Warning",
        _ => "Good",
    };
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": "1.4",
                "msteams": {"width": "full"},
                "body": [
                    {"type": "TextBlock", "text": headline(&outgoing.alert), "weight": "Bolder",
                     "size": "Medium", "color": colour, "wrap": true},
                    {"type": "FactSet", "facts": facts}
                ]
            }
        }]
    })
}

/// The generic envelope, version 1. Field names match the violation records where they overlap.
fn generic(outgoing: &Outgoing, owner: Option<&Owner>, id: &str, host: &str) -> Value {
    let alert = &outgoing.alert;
    let mut body = json!({
        "version": "1",
        "id": id,
        "event": alert.kind().as_str(),
        "severity": alert.kind().severity(),
        "summary": headline(alert),
        "occurred_at": rfc3339(alert.at()),
        "ts": alert.at().as_secs_f64(),
        "host": host,
        "token_fp": alert.token().map(|t| t.fingerprint),
        "token_masked": alert.token().and_then(|t| t.masked.clone()),
        "owner": owner,
        "repeats": outgoing.repeats.map(|r| json!({
            "count": r.count, "since": rfc3339(r.since), "since_ts": r.since.as_secs_f64()})),
        "evidence": alert.evidence(),
    });
    let extra = match alert {
        Alert::Violation {
            rule,
            limit,
            window,
            count,
            ..
        } => {
            json!({"rule": rule, "limit": limit, "window_s": window.as_secs_f64(), "count": count})
        }
        Alert::Suspended { until, reason, .. } => json!({
            "until": until.map(rfc3339), "until_ts": until.map(|u| u.as_secs_f64()), "reason": reason}),
        Alert::Lifted { reason, .. } => json!({"reason": reason}),
        Alert::CaptureLoss { lost, .. } => json!({"lost": lost}),
        Alert::Probing {
            client,
            limit,
            window,
            count,
            ..
        } => json!({"rule": crate::stages::policy::REFUSED_CALLS_RULE, "client": client,
            "limit": limit, "window_s": window.as_secs_f64(), "count": count}),
        Alert::CaptureBlind { reason, advice, .. } => json!({"reason": reason, "advice": advice}),
        Alert::RecordsWriteFailed {
            path,
            reason,
            error,
            ..
        } => json!({"path": path, "reason": reason, "error": error}),
        Alert::SinkFailing {
            sink,
            since,
            failed_attempts,
            last_error,
            ..
        } => json!({"sink": sink, "since": rfc3339(*since), "since_ts": since.as_secs_f64(),
            "failed_attempts": failed_attempts, "last_error": last_error}),
        Alert::SinkRecovered {
            sink,
            since,
            failed_attempts,
            ..
        } => json!({"sink": sink, "since": rfc3339(*since), "since_ts": since.as_secs_f64(),
            "failed_attempts": failed_attempts}),
        Alert::Shared { summary, .. } => json!({"summary": summary}),
        Alert::Degraded { .. } | Alert::Recovered { .. } => json!({}),
    };
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}
