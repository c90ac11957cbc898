//! Calendar text for alert payloads and HTTP: RFC 3339 out, RFC 9110 HTTP-date in.
//!
//! Pure arithmetic on Unix seconds (no clock, no time zone database; everything is UTC).

use crate::shared::model::days_from_civil;

pub(crate) use crate::shared::model::rfc3339;

/// Unix seconds of `2026-05-01T12:34:56Z` (the form [`rfc3339`] writes; UTC only, a trailing
/// `Z` optional, no fractions).
pub(crate) fn parse_rfc3339(text: &str) -> Option<u64> {
    let text = text.trim();
    let text = text.strip_suffix('Z').unwrap_or(text);
    let (date, clock) = text.split_once('T')?;
    let mut date = date.split('-');
    let year: i64 = date.next()?.parse().ok()?;
    let month: u32 = date.next()?.parse().ok()?;
    let day: u32 = date.next()?.parse().ok()?;
    let mut clock = clock.split(':');
    let h: u64 = clock.next()?.parse().ok()?;
    let min: u64 = clock.next()?.parse().ok()?;
    let s: u64 = clock.next()?.parse().ok()?;
    if date.next().is_some() || clock.next().is_some() {
        return None;
    }
    unix_seconds(year, month, day, h, min, s)
}

/// Unix seconds of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only HTTP-date form
/// senders may generate; the obsolete forms are not accepted.
pub(crate) fn parse_http_date(text: &str) -> Option<u64> {
    let rest = text.trim().split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: u32 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':');
    let h: u64 = clock.next()?.parse().ok()?;
    let min: u64 = clock.next()?.parse().ok()?;
    let s: u64 = clock.next()?.parse().ok()?;
    if parts.next()? != "GMT" || parts.next().is_some() || clock.next().is_some() {
        return None;
    }
    unix_seconds(year, month, day, h, min, s)
}

/// Unix seconds of a UTC date and time, or `None` when a field is out of range. Years are the
/// four-digit ones both formats have: a peer's `Retry-After` for the year 10^18 must be refused,
/// not overflow the arithmetic.
fn unix_seconds(year: i64, month: u32, day: u32, h: u64, min: u64, s: u64) -> Option<u64> {
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || h > 23
        || min > 59
        || s > 60
    {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    Some(days * 86_400 + h * 3600 + min * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::model::Timestamp;

    #[test]
    fn rfc3339_reads_back_what_it_writes() {
        let at = Timestamp::from_nanos(1_767_600_123 * 1_000_000_000);
        assert_eq!(parse_rfc3339(&rfc3339(at)), Some(1_767_600_123));
        assert_eq!(
            parse_rfc3339("2026-01-05T08:02:03"),
            parse_rfc3339("2026-01-05T08:02:03Z")
        );
        assert_eq!(parse_rfc3339("2026-13-05T08:02:03Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn rfc3339_names_the_utc_second() {
        assert_eq!(rfc3339(Timestamp(0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(Timestamp(784_111_777_500_000_000)),
            "1994-11-06T08:49:37Z"
        );
        assert_eq!(
            rfc3339(Timestamp(1_709_210_096 * 1_000_000_000)),
            "2024-02-29T12:34:56Z"
        );
    }

    #[test]
    fn http_dates_parse_to_unix_seconds() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Thu, 29 Feb 2024 12:34:56 GMT"),
            Some(1_709_210_096)
        );
        for bad in [
            "",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }
}
