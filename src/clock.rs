//! The one clock of imipd. Everything that asks "what time is it" (ordering
//! answers in the outbox, the hourly caps, "is this invitation over",
//! booking windows, names of kept files) asks here, once per message, and
//! passes the value down; the deciding code never reads the clock itself.
//!
//! `IMIPD_NOW` (RFC 3339, e.g. `2027-03-01T09:00:00Z`) moves the clock: the
//! process starts at that instant and time then runs on normally, so a test
//! (or a user replaying old mail) gets the same decisions on any day.

use std::sync::OnceLock;
use std::time::Instant;

use chrono::{DateTime, Utc};

/// `IMIPD_NOW` and the moment it was read; `None` for the system clock.
fn origin() -> Option<(DateTime<Utc>, Instant)> {
    static ORIGIN: OnceLock<Option<(DateTime<Utc>, Instant)>> = OnceLock::new();
    *ORIGIN.get_or_init(|| {
        let text = std::env::var("IMIPD_NOW").ok().filter(|s| !s.is_empty())?;
        match DateTime::parse_from_rfc3339(text.trim()) {
            Ok(t) => Some((t.with_timezone(&Utc), Instant::now())),
            Err(e) => {
                tracing::warn!(
                    "IMIPD_NOW={text} is not an RFC 3339 time ({e}); using the system clock"
                );
                None
            }
        }
    })
}

/// The current time. With `IMIPD_NOW`, the first call gives that instant
/// itself (to well under a microsecond, so two processes started at the
/// same instant agree on it), and time runs on from there.
pub fn now() -> DateTime<Utc> {
    match origin() {
        Some((t, start)) => t + chrono::Duration::from_std(start.elapsed()).unwrap_or_default(),
        None => Utc::now(),
    }
}
