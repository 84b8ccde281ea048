//! The one clock of imipd. Everything that asks "what time is it" (ordering
//! answers in the outbox, the hourly caps, "is this invitation over",
//! booking windows, names of kept files) asks here, once per message, and
//! passes the value down; the deciding code never reads the clock itself.
//!
//! `IMIPD_NOW` (RFC 3339, e.g. `2027-03-01T09:00:00Z`) moves the clock: the
//! process starts at that instant and time then runs on normally, so a test
//! (or a user replaying old mail) gets the same decisions on any day.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};

/// The difference between the clock imipd uses and the system clock.
fn offset() -> chrono::Duration {
    static OFFSET: OnceLock<chrono::Duration> = OnceLock::new();
    *OFFSET.get_or_init(|| {
        let Some(text) = std::env::var("IMIPD_NOW").ok().filter(|s| !s.is_empty()) else {
            return chrono::Duration::zero();
        };
        match DateTime::parse_from_rfc3339(text.trim()) {
            Ok(t) => t.with_timezone(&Utc) - Utc::now(),
            Err(e) => {
                tracing::warn!(
                    "IMIPD_NOW={text} is not an RFC 3339 time ({e}); using the system clock"
                );
                chrono::Duration::zero()
            }
        }
    })
}

/// The current time.
pub fn now() -> DateTime<Utc> {
    let offset = offset();
    Utc::now() + offset
}
