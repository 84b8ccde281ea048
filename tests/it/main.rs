//! The one integration test binary: runs the real `imipd` binary against
//! fixtures, scenarios, real khal, and (with their own harness) real servers.

mod harness;
#[path = "harness/selftest.rs"]
mod harness_selftest;
mod hostile_mail;
mod support;

mod authz;
mod caldav;
mod chaos;
mod classify_fixtures;
mod cli;
mod crash;
mod everyday;
mod hostile;
mod imap;
mod imap_hardening;
mod itip;
mod khal;
mod later;
mod load;
mod people;
mod replies;
mod robustness;
mod scenarios;
mod smtp;
mod stalls;
mod store_state;
mod trust;
