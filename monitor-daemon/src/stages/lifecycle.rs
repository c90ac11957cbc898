//! The token lifecycle the institution's policy asks for: tokens unused for longer than
//! `stale_after` (to be revoked), and tokens whose annual attestation of API use is due or
//! overdue. Owns the `[lifecycle]` section and the attestation CSV's format.
//!
//! Pure: the known tokens (from the store and the token directory), the attestations (parsed
//! here from text the caller read) and `now` are given. Tokens appear only as fingerprints and
//! masked forms; an attestation names a token by user and project, or by fingerprint, never by
//! the raw token.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::shared::model::{Span, Timestamp, rfc3339};
use crate::shared::settings::{Duration, Problem, longer_than_zero};
use crate::shared::token::{MaskedToken, TokenFingerprint};
use crate::stages::usage::{Day, OwnerView, day_text_of, parse_day};

/// `[lifecycle]`: when a token is stale and how often its use must be attested.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LifecycleConfig {
    /// A token unused for longer than this is listed for revocation.
    pub(crate) stale_after: Duration,
    /// Each token's API use must be attested this often.
    pub(crate) attestation_every: Duration,
    /// An attestation is listed as due this long before it falls due.
    pub(crate) attestation_warning: Duration,
    /// The attestation CSV the admin keeps (see the README); none: attestations are not
    /// reported.
    pub(crate) attestations: Option<PathBuf>,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            stale_after: Duration(Span::from_secs(180 * 86_400)),
            attestation_every: Duration(Span::from_secs(365 * 86_400)),
            attestation_warning: Duration(Span::from_secs(30 * 86_400)),
            attestations: None,
        }
    }
}

impl LifecycleConfig {
    /// What is wrong with `[lifecycle]`, each problem keyed by its full path.
    pub(crate) fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        longer_than_zero(
            &mut problems,
            &[
                ("lifecycle.stale_after", self.stale_after),
                ("lifecycle.attestation_every", self.attestation_every),
            ],
            "180d",
        );
        if self.attestation_warning.span() >= self.attestation_every.span() {
            problems.push(Problem::new(
                "lifecycle.attestation_warning".into(),
                "must be shorter than `lifecycle.attestation_every` (e.g. \"30d\")".into(),
            ));
        }
        problems
    }
}

/// A token the lifecycle report knows of: seen by the daemon, listed in the directory, or both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KnownToken {
    pub(crate) token_fp: TokenFingerprint,
    pub(crate) token_masked: Option<MaskedToken>,
    /// When the daemon last saw it used (from the store).
    pub(crate) daemon_last_seen: Option<Timestamp>,
    /// Who it belongs to, when the directory is connected and knows it.
    pub(crate) owner: Option<OwnerView>,
    /// REDCap's own last API use of the token's user in its project (from the directory).
    pub(crate) redcap_last_use: Option<Timestamp>,
}

impl KnownToken {
    /// A token known by fingerprint alone.
    pub(crate) fn new(token_fp: TokenFingerprint) -> KnownToken {
        KnownToken {
            token_fp,
            token_masked: None,
            daemon_last_seen: None,
            owner: None,
            redcap_last_use: None,
        }
    }
}

/// Where a token's last use comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LastUseSource {
    /// REDCap's own log (the directory's `last_api_use`).
    Redcap,
    /// The daemon's last sighting (the store).
    Daemon,
    /// Neither has seen the token used.
    None,
}

/// Whom an attestation covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AttestationKey {
    /// A user's API use in one project (what REDCap's tokens are issued for).
    UserProject { username: String, project_id: u64 },
    /// A token by its fingerprint, as the daemon shows it.
    Token(TokenFingerprint),
}

/// One row of the attestation CSV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Attestation {
    pub(crate) key: AttestationKey,
    pub(crate) attested_on: Day,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AttestationStatus {
    /// Falls due within the warning.
    Due,
    /// Past its due day.
    Overdue,
    /// No attestation on record for the token.
    Missing,
}

/// The lifecycle report: everything a renderer (text, CSV, JSON, HTML) needs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LifecycleReport {
    /// When the report was made (RFC 3339, UTC).
    pub(crate) generated_at: String,
    pub(crate) stale_after_days: u32,
    pub(crate) attestation_every_days: u32,
    pub(crate) attestation_warning_days: u32,
    /// Whether the token directory named the tokens (and gave REDCap's own last use).
    pub(crate) directory_connected: bool,
    /// Whether attestations were read (`lifecycle.attestations` set).
    pub(crate) attestations_checked: bool,
    pub(crate) tokens_known: usize,
    /// Tokens unused for longer than `stale_after`, longest idle first.
    pub(crate) stale: Vec<StaleToken>,
    /// Tokens whose attestation is missing, overdue or due, most urgent first.
    pub(crate) attestations: Vec<AttestationDue>,
}

/// A token unused for longer than `stale_after`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct StaleToken {
    pub(crate) token_fp: TokenFingerprint,
    pub(crate) token_masked: Option<MaskedToken>,
    pub(crate) owner: Option<OwnerView>,
    /// RFC 3339, UTC; `None` when no use was ever recorded.
    pub(crate) last_use: Option<String>,
    pub(crate) last_use_source: LastUseSource,
    /// Whole days since the last use; `None` when no use was ever recorded.
    pub(crate) idle_days: Option<u64>,
}

/// A token whose attestation needs the admin's attention.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct AttestationDue {
    pub(crate) token_fp: TokenFingerprint,
    pub(crate) token_masked: Option<MaskedToken>,
    pub(crate) owner: Option<OwnerView>,
    pub(crate) status: AttestationStatus,
    /// `2026-05-01`; `None` when missing.
    pub(crate) last_attested: Option<String>,
    pub(crate) due: Option<String>,
    /// Days until due (negative: overdue by as many days); `None` when missing.
    pub(crate) days_left: Option<i64>,
}

/// The settings the computation needs, from [`LifecycleConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LifecycleRules {
    pub(crate) stale_after: Span,
    pub(crate) attestation_every: Span,
    pub(crate) attestation_warning: Span,
}

impl LifecycleRules {
    pub(crate) fn from_config(config: &LifecycleConfig) -> LifecycleRules {
        LifecycleRules {
            stale_after: config.stale_after.span(),
            attestation_every: config.attestation_every.span(),
            attestation_warning: config.attestation_warning.span(),
        }
    }
}

/// The token's last use and where it comes from: REDCap's own record when the directory has
/// one, the daemon's last sighting otherwise.
pub(crate) fn last_use(token: &KnownToken) -> (Option<Timestamp>, LastUseSource) {
    match (token.redcap_last_use, token.daemon_last_seen) {
        (Some(at), _) => (Some(at), LastUseSource::Redcap),
        (None, Some(at)) => (Some(at), LastUseSource::Daemon),
        (None, None) => (None, LastUseSource::None),
    }
}

/// Judges every known token at `now`. `attestations` is `None` when none are kept.
pub(crate) fn lifecycle_report(
    tokens: &[KnownToken],
    attestations: Option<&[Attestation]>,
    rules: LifecycleRules,
    directory_connected: bool,
    now: Timestamp,
) -> LifecycleReport {
    let days = |span: Span| Day::count(span);
    let mut stale = Vec::new();
    for token in tokens {
        let (at, source) = last_use(token);
        let idle = at.map(|at| now.since(at));
        if idle.is_none_or(|idle| idle > rules.stale_after) {
            stale.push(StaleToken {
                token_fp: token.token_fp,
                token_masked: token.token_masked.clone(),
                owner: token.owner.clone(),
                last_use: at.map(rfc3339),
                last_use_source: source,
                idle_days: idle.map(|idle| idle.0 / 86_400_000_000_000),
            });
        }
    }
    stale.sort_by(|a, b| {
        b.idle_days
            .unwrap_or(u64::MAX)
            .cmp(&a.idle_days.unwrap_or(u64::MAX))
            .then(a.token_fp.cmp(&b.token_fp))
    });
    let mut due = Vec::new();
    if let Some(attestations) = attestations {
        let today = i64::from(Day::of(now).0);
        let every = i64::from(days(rules.attestation_every));
        let warning = i64::from(days(rules.attestation_warning));
        for token in tokens {
            let last = attestations
                .iter()
                .filter(|a| covers(&a.key, token))
                .map(|a| a.attested_on)
                .max();
            let row = |status, due_day: Option<i64>| AttestationDue {
                token_fp: token.token_fp,
                token_masked: token.token_masked.clone(),
                owner: token.owner.clone(),
                status,
                last_attested: last.map(day_text_of),
                due: due_day
                    .and_then(|d| u32::try_from(d).ok())
                    .map(|d| day_text_of(Day(d))),
                days_left: due_day.map(|d| d - today),
            };
            match last {
                None => due.push(row(AttestationStatus::Missing, None)),
                Some(on) => {
                    let due_day = i64::from(on.0) + every;
                    let left = due_day - today;
                    if left < 0 {
                        due.push(row(AttestationStatus::Overdue, Some(due_day)));
                    } else if left <= warning {
                        due.push(row(AttestationStatus::Due, Some(due_day)));
                    }
                }
            }
        }
    }
    due.sort_by(|a, b| {
        a.days_left
            .unwrap_or(i64::MIN)
            .cmp(&b.days_left.unwrap_or(i64::MIN))
            .then(a.token_fp.cmp(&b.token_fp))
    });
    LifecycleReport {
        generated_at: rfc3339(now),
        stale_after_days: days(rules.stale_after),
        attestation_every_days: days(rules.attestation_every),
        attestation_warning_days: days(rules.attestation_warning),
        directory_connected,
        attestations_checked: attestations.is_some(),
        tokens_known: tokens.len(),
        stale,
        attestations: due,
    }
}

fn covers(key: &AttestationKey, token: &KnownToken) -> bool {
    match key {
        AttestationKey::Token(fp) => *fp == token.token_fp,
        AttestationKey::UserProject {
            username,
            project_id,
        } => token.owner.as_ref().is_some_and(|owner| {
            owner.username.eq_ignore_ascii_case(username) && owner.project_id == Some(*project_id)
        }),
    }
}

/// The attestation CSV's columns: `attested_on` (`2026-05-01`), and on each row either
/// `username` and `project_id` or `token_fp`; `note` is free text and ignored. Cells may not
/// hold commas or quotes.
pub(crate) const ATTESTATION_COLUMNS: &[&str] =
    &["username", "project_id", "token_fp", "attested_on", "note"];

/// Most rows an attestation file may have (far above any institution's token count).
const MAX_ATTESTATIONS: usize = 1_000_000;

/// Parses the attestation CSV; the message names the line (1 = the header) and column at fault.
pub(crate) fn parse_attestations(text: &str) -> Result<Vec<Attestation>, String> {
    let mut lines = text.lines().enumerate();
    let Some((_, header)) = lines.next() else {
        return Err(
            "is empty: it needs a header row (username,project_id,token_fp,attested_on)".into(),
        );
    };
    let columns: Vec<&str> = header
        .trim_start_matches('\u{feff}')
        .split(',')
        .map(str::trim)
        .collect();
    for column in &columns {
        if !ATTESTATION_COLUMNS.contains(column) {
            return Err(format!(
                "line 1: unknown column `{column}` (known: {})",
                ATTESTATION_COLUMNS.join(", ")
            ));
        }
    }
    if !columns.contains(&"attested_on") {
        return Err("line 1: the column `attested_on` is missing".into());
    }
    let mut out = Vec::new();
    for (index, line) in lines {
        let n = index + 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if out.len() >= MAX_ATTESTATIONS {
            return Err(format!("has more than {MAX_ATTESTATIONS} rows"));
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() > columns.len() {
            return Err(format!(
                "line {n}: more cells than columns (cells may not hold commas)"
            ));
        }
        let cell = |name: &str| {
            columns
                .iter()
                .position(|c| *c == name)
                .and_then(|i| cells.get(i).copied())
                .filter(|c| !c.is_empty())
        };
        let on = cell("attested_on").ok_or_else(|| format!("line {n}: `attested_on` is empty"))?;
        let attested_on = parse_day(on)
            .ok_or_else(|| format!("line {n}: `attested_on` is not a date like 2026-05-01"))?;
        let key = match (cell("token_fp"), cell("username"), cell("project_id")) {
            (Some(fp), _, _) => AttestationKey::Token(fp.parse().map_err(|_| {
                format!("line {n}: `token_fp` is not a fingerprint (16 hex digits)")
            })?),
            (None, Some(username), Some(project)) => AttestationKey::UserProject {
                username: username.to_owned(),
                project_id: project
                    .parse()
                    .map_err(|_| format!("line {n}: `project_id` is not a number"))?,
            },
            _ => {
                return Err(format!(
                    "line {n}: give `token_fp`, or both `username` and `project_id`"
                ));
            }
        };
        out.push(Attestation { key, attested_on });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn now() -> Timestamp {
        // 2026-12-06T12:00:00Z
        parse_day("2026-12-06")
            .unwrap()
            .start()
            .plus(Span::from_secs(12 * 3600))
    }

    fn days_ago(days: u64) -> Timestamp {
        now().minus(Span::from_secs(days * DAY))
    }

    fn fp(n: u8) -> TokenFingerprint {
        TokenFingerprint([n; 8])
    }

    fn rules() -> LifecycleRules {
        LifecycleRules::from_config(&LifecycleConfig::default())
    }

    fn seen(n: u8, last: Timestamp) -> KnownToken {
        KnownToken {
            token_fp: fp(n),
            token_masked: Some(MaskedToken("ABC…EF".into())),
            daemon_last_seen: Some(last),
            ..KnownToken::new(fp(n))
        }
    }

    fn owned(n: u8, user: &str, project: u64) -> KnownToken {
        KnownToken {
            token_fp: fp(n),
            owner: Some(OwnerView {
                username: user.into(),
                person: user.into(),
                project_id: Some(project),
                project: Some(format!("{project} Study")),
            }),
            ..KnownToken::new(fp(n))
        }
    }

    #[test]
    fn a_token_idle_181_days_is_stale_and_one_idle_179_days_is_not() {
        let tokens = [
            seen(1, days_ago(181)),
            seen(2, days_ago(179)),
            seen(3, now()),
        ];
        let report = lifecycle_report(&tokens, None, rules(), false, now());
        let stale: Vec<_> = report
            .stale
            .iter()
            .map(|s| (s.token_fp, s.idle_days))
            .collect();
        assert_eq!(stale, [(fp(1), Some(181))]);
        assert_eq!(report.stale[0].last_use_source, LastUseSource::Daemon);
        assert_eq!(
            report.stale[0].last_use.as_deref(),
            Some("2026-06-08T12:00:00Z")
        );
        assert!(report.attestations.is_empty() && !report.attestations_checked);
        assert_eq!(report.tokens_known, 3);
    }

    #[test]
    fn redcaps_own_last_use_wins_over_the_daemons_and_says_so() {
        // The daemon saw token 1 long ago, but REDCap's log has a recent use (e.g. the daemon
        // was not watching): not stale. Token 2 is the other way round: stale by REDCap.
        let mut recent = owned(1, "jdoe", 12);
        recent.daemon_last_seen = Some(days_ago(300));
        recent.redcap_last_use = Some(days_ago(10));
        let mut old = owned(2, "asmith", 13);
        old.daemon_last_seen = Some(days_ago(1));
        old.redcap_last_use = Some(days_ago(200));
        let never = owned(3, "bnew", 14);
        let report = lifecycle_report(&[recent, old, never], None, rules(), true, now());
        let stale: Vec<_> = report
            .stale
            .iter()
            .map(|s| (s.token_fp, s.last_use_source, s.idle_days))
            .collect();
        assert_eq!(
            stale,
            [
                (fp(3), LastUseSource::None, None),
                (fp(2), LastUseSource::Redcap, Some(200)),
            ]
        );
    }

    #[test]
    fn an_attestation_due_tomorrow_is_due_and_one_past_is_overdue() {
        let today = Day::of(now());
        let tokens = [
            owned(1, "jdoe", 12),
            owned(2, "asmith", 13),
            owned(3, "cfresh", 14),
            seen(4, now()),
            owned(5, "dnone", 15),
        ];
        let attestations = [
            // Due tomorrow: attested 364 days ago.
            Attestation {
                key: AttestationKey::UserProject {
                    username: "jdoe".into(),
                    project_id: 12,
                },
                attested_on: today.minus(364),
            },
            // Overdue by one day.
            Attestation {
                key: AttestationKey::UserProject {
                    username: "asmith".into(),
                    project_id: 13,
                },
                attested_on: today.minus(366),
            },
            // Fresh: not listed.
            Attestation {
                key: AttestationKey::UserProject {
                    username: "cfresh".into(),
                    project_id: 14,
                },
                attested_on: today.minus(100),
            },
            // By fingerprint, the latest row counts.
            Attestation {
                key: AttestationKey::Token(fp(4)),
                attested_on: today.minus(400),
            },
            Attestation {
                key: AttestationKey::Token(fp(4)),
                attested_on: today.minus(10),
            },
        ];
        let report = lifecycle_report(&tokens, Some(&attestations), rules(), true, now());
        let rows: Vec<_> = report
            .attestations
            .iter()
            .map(|a| (a.token_fp, a.status, a.days_left))
            .collect();
        assert_eq!(
            rows,
            [
                (fp(5), AttestationStatus::Missing, None),
                (fp(2), AttestationStatus::Overdue, Some(-1)),
                (fp(1), AttestationStatus::Due, Some(1)),
            ]
        );
        assert_eq!(report.attestations[2].due.as_deref(), Some("2026-12-07"));
    }

    #[test]
    fn attestation_csv_reads_both_keys_and_names_the_line_at_fault() {
        let text = "username,project_id,token_fp,attested_on,note\n\
                    jdoe,12,,2026-01-05,signed by PI\n\
                    ,,0101010101010101,2025-12-01,\n\
                    \n";
        let rows = parse_attestations(text).unwrap();
        assert_eq!(
            rows,
            [
                Attestation {
                    key: AttestationKey::UserProject {
                        username: "jdoe".into(),
                        project_id: 12
                    },
                    attested_on: parse_day("2026-01-05").unwrap(),
                },
                Attestation {
                    key: AttestationKey::Token(fp(1)),
                    attested_on: parse_day("2025-12-01").unwrap(),
                },
            ]
        );
        let err = parse_attestations("username,attested_on\njdoe,2026-01-05\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("project_id"),
            "{err}"
        );
        let err = parse_attestations("token,attested_on\n").unwrap_err();
        assert!(err.contains("unknown column `token`"), "{err}");
        let err =
            parse_attestations("token_fp,attested_on\n0101010101010101,05/01/2026\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("attested_on"),
            "{err}"
        );
    }

    #[test]
    fn lifecycle_section_checks_its_durations() {
        let bad = LifecycleConfig {
            attestation_warning: Duration(Span::from_secs(400 * DAY)),
            ..LifecycleConfig::default()
        };
        let keys: Vec<String> = bad.problems().into_iter().map(|p| p.key).collect();
        assert_eq!(keys, ["lifecycle.attestation_warning"]);
        assert!(LifecycleConfig::default().problems().is_empty());
    }
}
