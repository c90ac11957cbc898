//! Long-term use of the API: what one token did in one UTC day ([`Usage`], [`DayRow`]), and the
//! usage report over a period computed from those daily rows ([`usage_report`]): per token, per
//! user and per project, each one's share of the calls and of the server's time, and how
//! concentrated the use is (the share of calls made by the top 10 tokens).
//!
//! Pure: rows, owners and the period are given; nothing here reads a store or a clock. Tokens
//! appear only as fingerprints and masked forms.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::shared::model::{Span, Timestamp, civil_from_days, days_from_civil};
use crate::shared::token::{MaskedToken, TokenFingerprint};
use crate::stages::policy::Verdict;

const DAY_NANOS: u64 = 86_400 * 1_000_000_000;

/// How many of the busiest tokens the concentration figure counts.
pub(crate) const TOP_TOKENS: usize = 10;

/// A UTC calendar day: days since 1970-01-01.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub u32);

impl Day {
    /// The UTC day `at` falls in.
    pub(crate) fn of(at: Timestamp) -> Day {
        Day(u32::try_from(at.0 / DAY_NANOS).unwrap_or(u32::MAX))
    }

    /// Midnight UTC at the start of the day.
    pub(crate) fn start(self) -> Timestamp {
        Timestamp(u64::from(self.0) * DAY_NANOS)
    }

    /// The day `n` days later (saturating).
    #[cfg(test)]
    pub(crate) fn plus(self, n: u32) -> Day {
        Day(self.0.saturating_add(n))
    }

    /// The day `n` days earlier (saturating at 1970-01-01).
    pub(crate) fn minus(self, n: u32) -> Day {
        Day(self.0.saturating_sub(n))
    }

    /// Whole days in a span (rounded down).
    pub(crate) fn count(span: Span) -> u32 {
        u32::try_from(span.0 / DAY_NANOS).unwrap_or(u32::MAX)
    }
}

/// What one token did in one day (or any longer stretch, once summed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Usage {
    pub(crate) calls: u64,
    pub(crate) heavy_calls: u64,
    pub(crate) violations: u64,
    /// Request body bytes.
    pub(crate) request_bytes: u64,
    /// Response body bytes (decoded).
    pub(crate) response_bytes: u64,
    /// Server time: the sum of the calls' times to first response byte (what the health stage
    /// measures), in nanoseconds.
    pub(crate) server_time_ns: u64,
}

impl Usage {
    /// One call's use: heavy or not, the violations it caused, its bytes and server time.
    pub(crate) fn of_verdict(verdict: &Verdict) -> Usage {
        let call = &verdict.call;
        Usage {
            calls: 1,
            heavy_calls: u64::from(verdict.heavy.is_some()),
            violations: verdict.violations.len() as u64,
            request_bytes: call.request_bytes,
            response_bytes: call.response_bytes.unwrap_or(0),
            server_time_ns: call.ttfb.map_or(0, |t| t.0),
        }
    }

    pub(crate) fn add(&mut self, other: &Usage) {
        self.calls = self.calls.saturating_add(other.calls);
        self.heavy_calls = self.heavy_calls.saturating_add(other.heavy_calls);
        self.violations = self.violations.saturating_add(other.violations);
        self.request_bytes = self.request_bytes.saturating_add(other.request_bytes);
        self.response_bytes = self.response_bytes.saturating_add(other.response_bytes);
        self.server_time_ns = self.server_time_ns.saturating_add(other.server_time_ns);
    }
}

/// One daily rollup as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DayRow {
    pub(crate) day: Day,
    pub(crate) token: TokenFingerprint,
    pub(crate) usage: Usage,
}

/// Who a token belongs to, as far as the reports need (from the token directory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct OwnerView {
    pub(crate) username: String,
    /// `Jane Doe (jdoe)`, or the user name alone.
    pub(crate) person: String,
    /// Absent for a super token.
    pub(crate) project_id: Option<u64>,
    /// `12 Heart study`, when the project is known.
    pub(crate) project: Option<String>,
}

/// A period of whole UTC days, both ends included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Period {
    #[serde(serialize_with = "day_text")]
    pub(crate) from: Day,
    #[serde(serialize_with = "day_text")]
    pub(crate) to: Day,
}

impl Period {
    /// The `days` days that end with (and include) `last`.
    pub(crate) fn ending(last: Day, days: u32) -> Period {
        Period {
            from: last.minus(days.saturating_sub(1)),
            to: last,
        }
    }

    pub(crate) fn contains(&self, day: Day) -> bool {
        self.from <= day && day <= self.to
    }
}

/// The usage report: everything a renderer (text, CSV, JSON, HTML) needs, largest users first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UsageReport {
    pub(crate) period: Period,
    /// All tokens together over the period.
    pub(crate) totals: Usage,
    /// Tokens that made at least one call in the period.
    pub(crate) active_tokens: usize,
    /// Share of all calls made by the [`TOP_TOKENS`] busiest tokens (0..=1); `None` without calls.
    pub(crate) top10_share: Option<f64>,
    /// By calls, largest first; ties by fingerprint.
    pub(crate) tokens: Vec<TokenUsage>,
    /// Per user and per project when the token directory named the tokens; empty otherwise.
    pub(crate) users: Vec<GroupUsage>,
    pub(crate) projects: Vec<GroupUsage>,
}

/// One token's use over the period.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct TokenUsage {
    pub(crate) rank: usize,
    pub(crate) token_fp: TokenFingerprint,
    pub(crate) token_masked: Option<MaskedToken>,
    pub(crate) owner: Option<OwnerView>,
    #[serde(flatten)]
    pub(crate) usage: Usage,
    /// Share of all calls in the period (0..=1).
    pub(crate) share_of_calls: f64,
    /// Share of all server time in the period (0..=1).
    pub(crate) share_of_server_time: f64,
}

/// A user's or a project's use over the period (all its tokens together).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct GroupUsage {
    /// The user name, or the project as `12 Heart study` (`super tokens` for those without one).
    pub(crate) name: String,
    pub(crate) tokens: usize,
    #[serde(flatten)]
    pub(crate) usage: Usage,
    pub(crate) share_of_calls: f64,
    pub(crate) share_of_server_time: f64,
}

/// Sums the daily rows inside `period` per token (and per user and project when `owner` names
/// the tokens) into the report. `masked` gives each token's masked form when known.
pub(crate) fn usage_report(
    rows: &[DayRow],
    period: Period,
    masked: impl Fn(&TokenFingerprint) -> Option<MaskedToken>,
    owner: impl Fn(&TokenFingerprint) -> Option<OwnerView>,
) -> UsageReport {
    let mut per_token: BTreeMap<TokenFingerprint, Usage> = BTreeMap::new();
    let mut totals = Usage::default();
    for row in rows.iter().filter(|r| period.contains(r.day)) {
        per_token.entry(row.token).or_default().add(&row.usage);
        totals.add(&row.usage);
    }
    let share = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            part as f64 / whole as f64
        }
    };
    let mut tokens: Vec<TokenUsage> = per_token
        .into_iter()
        .map(|(fp, usage)| TokenUsage {
            rank: 0,
            token_fp: fp,
            token_masked: masked(&fp),
            owner: owner(&fp),
            usage,
            share_of_calls: share(usage.calls, totals.calls),
            share_of_server_time: share(usage.server_time_ns, totals.server_time_ns),
        })
        .collect();
    tokens.sort_by(|a, b| {
        b.usage
            .calls
            .cmp(&a.usage.calls)
            .then(b.usage.server_time_ns.cmp(&a.usage.server_time_ns))
            .then(a.token_fp.cmp(&b.token_fp))
    });
    for (i, token) in tokens.iter_mut().enumerate() {
        token.rank = i + 1;
    }
    let top: u64 = tokens.iter().take(TOP_TOKENS).map(|t| t.usage.calls).sum();
    let top10_share = (totals.calls > 0).then(|| share(top, totals.calls));
    let active_tokens = tokens.iter().filter(|t| t.usage.calls > 0).count();
    let group = |key: &dyn Fn(&OwnerView) -> String| {
        let mut groups: BTreeMap<String, (usize, Usage)> = BTreeMap::new();
        for token in &tokens {
            if let Some(owner) = &token.owner {
                let entry = groups.entry(key(owner)).or_default();
                entry.0 += 1;
                entry.1.add(&token.usage);
            }
        }
        let mut out: Vec<GroupUsage> = groups
            .into_iter()
            .map(|(name, (n, usage))| GroupUsage {
                name,
                tokens: n,
                usage,
                share_of_calls: share(usage.calls, totals.calls),
                share_of_server_time: share(usage.server_time_ns, totals.server_time_ns),
            })
            .collect();
        out.sort_by(|a, b| b.usage.calls.cmp(&a.usage.calls).then(a.name.cmp(&b.name)));
        out
    };
    let users = group(&|o: &OwnerView| o.username.clone());
    let projects = group(&|o: &OwnerView| {
        o.project
            .clone()
            .unwrap_or_else(|| "super tokens".to_owned())
    });
    UsageReport {
        period,
        totals,
        active_tokens,
        top10_share,
        tokens,
        users,
        projects,
    }
}

/// `2026-05-01`.
pub(crate) fn day_text_of(day: Day) -> String {
    let (y, m, d) = civil_from_days(i64::from(day.0));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The day of `2026-05-01` (UTC).
pub fn parse_day(text: &str) -> Option<Day> {
    let mut parts = text.trim().split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    u32::try_from(days_from_civil(y, m, d)).ok().map(Day)
}

fn day_text<S: serde::Serializer>(day: &Day, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&day_text_of(*day))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u8) -> TokenFingerprint {
        TokenFingerprint([n; 8])
    }

    fn calls(n: u64) -> Usage {
        Usage {
            calls: n,
            heavy_calls: n / 10,
            violations: 0,
            request_bytes: n * 100,
            response_bytes: n * 1000,
            server_time_ns: n * 1_000_000,
        }
    }

    fn row(day: u32, token: u8, usage: Usage) -> DayRow {
        DayRow {
            day: Day(day),
            token: fp(token),
            usage,
        }
    }

    #[test]
    fn days_are_utc_calendar_days() {
        let day = parse_day("2026-05-01").unwrap();
        assert_eq!(day_text_of(day), "2026-05-01");
        let noon = day.start().plus(Span::from_secs(12 * 3600));
        assert_eq!(Day::of(noon), day);
        assert_eq!(Day::of(day.start().minus(Span(1))), day.minus(1));
        assert_eq!(parse_day("2026-13-01"), None);
        assert_eq!(parse_day("yesterday"), None);
    }

    #[test]
    fn top10_share_counts_the_ten_busiest_tokens_over_the_period() {
        // Twelve tokens over two months: token n makes n*10 calls a day for 60 days, and one
        // heavy day outside the period must not count.
        let mut rows = Vec::new();
        for day in 0..60 {
            for token in 1..=12u8 {
                rows.push(row(20_000 + day, token, calls(u64::from(token) * 10)));
            }
        }
        rows.push(row(19_999, 1, calls(1_000_000)));
        let period = Period {
            from: Day(20_000),
            to: Day(20_059),
        };
        let report = usage_report(&rows, period, |_| None, |_| None);
        let total: u64 = (1..=12).map(|n| n * 10 * 60).sum();
        let top: u64 = (3..=12).map(|n| n * 10 * 60).sum();
        assert_eq!(report.totals.calls, total);
        assert_eq!(report.top10_share, Some(top as f64 / total as f64));
        assert_eq!(report.active_tokens, 12);
        assert_eq!(report.tokens[0].token_fp, fp(12));
        assert_eq!(report.tokens[0].rank, 1);
        assert_eq!(report.tokens[11].token_fp, fp(1));
        let share = report.tokens[0].share_of_server_time;
        assert!((share - 120.0 / 780.0).abs() < 1e-12, "{share}");
        assert!(report.users.is_empty() && report.projects.is_empty());
    }

    #[test]
    fn a_period_without_calls_has_no_concentration() {
        let report = usage_report(&[], Period::ending(Day(100), 30), |_| None, |_| None);
        assert_eq!(report.top10_share, None);
        assert_eq!(report.period.from, Day(71));
        assert!(report.tokens.is_empty());
    }

    #[test]
    fn users_and_projects_sum_their_tokens() {
        let rows = vec![
            row(10, 1, calls(30)),
            row(10, 2, calls(10)),
            row(11, 3, calls(60)),
        ];
        let owner = |fp: &TokenFingerprint| {
            let (user, project) = match fp.0[0] {
                1 => ("jdoe", Some(12)),
                2 => ("jdoe", Some(13)),
                _ => ("asmith", Some(12)),
            };
            Some(OwnerView {
                username: user.into(),
                person: user.into(),
                project_id: project,
                project: project.map(|p| format!("{p} Study")),
            })
        };
        let report = usage_report(&rows, Period::ending(Day(11), 2), |_| None, owner);
        let users: Vec<(&str, u64, usize)> = report
            .users
            .iter()
            .map(|g| (g.name.as_str(), g.usage.calls, g.tokens))
            .collect();
        assert_eq!(users, [("asmith", 60, 1), ("jdoe", 40, 2)]);
        let projects: Vec<(&str, u64)> = report
            .projects
            .iter()
            .map(|g| (g.name.as_str(), g.usage.calls))
            .collect();
        assert_eq!(projects, [("12 Study", 90), ("13 Study", 10)]);
        assert_eq!(report.top10_share, Some(1.0));
    }
}
