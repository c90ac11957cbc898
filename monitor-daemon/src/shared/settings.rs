//! The words configuration sections are written in: durations (`90s`, `5m`) and the problems a
//! section's checks report, each naming its key path. Every component's section uses these; the
//! sections themselves live with the components they configure.

use std::fmt;

use serde::{Deserialize, Deserializer};

use crate::shared::model::Span;

/// A duration written like `90s`, `5m`, `2h`, `1d`, `250ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duration(pub Span);

impl Duration {
    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{text}` has no unit: write e.g. `60s`, `5m`, `2h`"))?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` does not start with a whole number"))?;
        let nanos_per_unit: u64 = match unit.trim() {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            other => {
                return Err(format!(
                    "unknown unit `{other}` in `{text}`: use ms, s, m, h or d"
                ));
            }
        };
        number
            .checked_mul(nanos_per_unit)
            .map(|n| Duration(Span(n)))
            .ok_or_else(|| format!("`{text}` is too long"))
    }

    pub fn span(self) -> Span {
        self.0
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Duration::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

/// One thing wrong in a configuration: the key path at fault and what is expected there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// e.g. `policy.rules[1].limit`.
    pub(crate) key: String,
    pub(crate) message: String,
}

impl Problem {
    pub(crate) fn new(key: String, message: String) -> Problem {
        Problem { key, message }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

/// Adds "must be at least 1" for each `(key, value)` that is zero.
pub(crate) fn at_least_one(problems: &mut Vec<Problem>, fields: &[(&str, u64)]) {
    for &(key, value) in fields {
        if value == 0 {
            problems.push(Problem::new(key.into(), "must be at least 1".into()));
        }
    }
}

/// Adds "must be longer than zero" for each `(key, duration)` that is zero; `example` is a
/// sensible value for these keys, e.g. `10s`.
pub(crate) fn longer_than_zero(
    problems: &mut Vec<Problem>,
    fields: &[(&str, Duration)],
    example: &str,
) {
    for &(key, duration) in fields {
        if duration.span().0 == 0 {
            problems.push(Problem::new(
                key.into(),
                format!("must be longer than zero, e.g. `{example}`"),
            ));
        }
    }
}

/// Adds "must be a share between 0 and 1" for each `(key, share)` outside it.
pub(crate) fn share(problems: &mut Vec<Problem>, fields: &[(&str, f64)]) {
    for &(key, value) in fields {
        if !(0.0..=1.0).contains(&value) {
            problems.push(Problem::new(
                key.into(),
                "must be a share between 0 and 1".into(),
            ));
        }
    }
}

/// A webhook URL. Slack and Teams URLs carry their credential, so `Debug` shows only the
/// scheme and host.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub(crate) struct WebhookUrl(pub(crate) String);

impl WebhookUrl {
    /// `scheme://host[:port]`, safe to log.
    pub(crate) fn origin(&self) -> &str {
        let after_scheme = self.0.find("://").map_or(0, |i| i + 3);
        let end = self.0[after_scheme..]
            .find(['/', '?', '#'])
            .map_or(self.0.len(), |i| after_scheme + i);
        // Userinfo (`user:pass@host`) is a credential too.
        match self.0[after_scheme..end].rfind('@') {
            Some(_) => &self.0[..after_scheme],
            None => &self.0[..end],
        }
    }

    /// Why the URL cannot be used, if it cannot: a message for the key that holds it.
    pub(crate) fn check(&self) -> Result<(), String> {
        let host = self
            .0
            .strip_prefix("https://")
            .or_else(|| self.0.strip_prefix("http://"))
            .ok_or("must start with https:// (or http://)")?;
        if host.is_empty() || host.starts_with('/') {
            return Err("names no host".into());
        }
        if self.0.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces or control characters".into());
        }
        Ok(())
    }
}

impl fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WebhookUrl({}/…)", self.origin())
    }
}
