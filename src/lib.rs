//! imipd: an agent that answers calendar invitations that arrive by e-mail
//! (iMIP, RFC 6047, carrying iTIP, RFC 5546, in iCalendar, RFC 5545).
//!
//! The flow, one module a step; only the sources and `execute` touch the
//! outside world:
//!
//! ```text
//! source ──► mime ──► itip ──► classify ──► policy ──► plan ──► execute
//! ```
//!
//! - [`config`]: the TOML configuration, validated once; secrets.
//! - [`address`]: when two calendar addresses are the same person; globs.
//! - [`mime`]: raw message → headers and decoded calendar parts.
//! - [`ical`]: helpers over calcard's iCalendar model.
//! - [`itip`]: calendar text → iTIP objects, checked against the RFC MUSTs.
//! - [`classify`]: a message → its distinct iTIP objects, validity, suspicion.
#![forbid(unsafe_code)]

pub mod address;
pub mod classify;
pub mod config;
pub mod ical;
pub mod itip;
pub mod mime;

/// The PRODID imipd writes into the calendars it produces.
pub const PRODID: &str = "-//imipd//imipd 0.1//EN";
