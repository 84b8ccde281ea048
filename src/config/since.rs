//! `[[account]] since`: where an account's mail starts to count. Mail
//! delivered before it (IMAP INTERNALDATE, a Maildir message's delivery
//! time) is remembered as handled without being processed, so switching
//! imipd on for an existing mailbox never answers its backlog.

use std::time::Duration;

use chrono::{DateTime, Local, NaiveDate, TimeZone, Utc};

/// A date (midnight, local time), an instant, or a span back from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// `"2026-11-01"` or `since = 2026-11-01`: from that day's midnight,
    /// local time.
    Date(NaiveDate),
    /// `"2026-11-01T08:00:00Z"`: from that instant.
    Instant(DateTime<Utc>),
    /// `"14d"`: mail of the last 14 days, counted back from each pass.
    Span(Duration),
}

impl Since {
    /// Read `since` as written: a date, an RFC 3339 instant, or a span with
    /// a unit. The error says what was expected.
    pub fn parse(text: &str) -> Result<Since, String> {
        let t = text.trim();
        if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
            return Ok(Since::Date(d));
        }
        if let Ok(i) = DateTime::parse_from_rfc3339(t) {
            return Ok(Since::Instant(i.with_timezone(&Utc)));
        }
        if !t.is_empty() && t.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!(
                "`{t}` has no unit: write \"{t}d\" for {t} days (or \"{t}h\", \"{t}w\"), or a date like \"2026-11-01\""
            ));
        }
        match crate::time::parse_duration(t) {
            Some(d) => Ok(Since::Span(d)),
            None => Err(format!(
                "`{t}` is neither a date (like \"2026-11-01\") nor a span (like \"14d\" or \"2w\")"
            )),
        }
    }

    /// The instant mail must be delivered at or after to be processed.
    pub fn cutoff(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Since::Date(d) => {
                let midnight = d.and_hms_opt(0, 0, 0).unwrap_or_default();
                Local
                    .from_local_datetime(&midnight)
                    .earliest()
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or_else(|| Utc.from_utc_datetime(&midnight))
            }
            Since::Instant(i) => *i,
            Since::Span(s) => now - chrono::Duration::from_std(*s).unwrap_or(chrono::Duration::MAX),
        }
    }
}

impl std::fmt::Display for Since {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Since::Date(d) => write!(f, "{d}"),
            Since::Instant(i) => write!(f, "{}", i.to_rfc3339()),
            Since::Span(s) => write!(f, "the last {}", describe(*s)),
        }
    }
}

/// A span in the largest unit that divides it ("14 days", "36 hours").
fn describe(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = [(86_400, "day"), (3_600, "hour"), (60, "minute")]
        .into_iter()
        .find(|(u, _)| s >= *u && s.is_multiple_of(*u))
        .map_or((s, "second"), |(u, name)| (s / u, name));
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_instants_and_spans() {
        assert_eq!(
            Since::parse("2026-11-01"),
            Ok(Since::Date(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()))
        );
        let now = DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = Since::parse("14d").unwrap();
        assert_eq!(s.cutoff(now), now - chrono::Duration::days(14));
        let i = Since::parse("2026-11-01T08:00:00Z").unwrap();
        assert_eq!(i.cutoff(now).to_rfc3339(), "2026-11-01T08:00:00+00:00");
        let e = Since::parse("14").unwrap_err();
        assert!(e.contains("\"14d\""), "{e}");
        assert!(Since::parse("last week").is_err());
        assert_eq!(Since::parse("2w").unwrap().to_string(), "the last 14 days");
    }
}
