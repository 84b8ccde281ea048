//! The one integration test binary: runs the real `imipd` binary against
//! fixtures, scenarios, real khal, and (with their own harness) real servers.

mod support;

mod classify_fixtures;
mod cli;
mod crash;
mod khal;
mod replies;
mod robustness;
mod scenarios;
