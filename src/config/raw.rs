//! The configuration file as written: serde structures that mirror the TOML
//! exactly (`deny_unknown_fields`), with spans for error positions. Only
//! [`super::validate`] reads them.

use serde::Deserialize;
use toml::Spanned;

use crate::policy::RawPolicy;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) identity: Option<Spanned<RawIdentity>>,
    pub(super) store: Option<Spanned<RawStore>>,
    pub(super) state: Option<RawState>,
    pub(super) outgoing: Option<RawOutgoing>,
    #[serde(default, rename = "account")]
    pub(super) accounts: Vec<RawAccount>,
    #[serde(default, rename = "policy")]
    pub(super) policies: Vec<Spanned<RawPolicy>>,
    pub(super) limits: Option<RawLimits>,
    pub(super) address_book: Option<RawAddressBook>,
    pub(super) authentication: Option<RawAuthentication>,
    pub(super) trust: Option<RawTrust>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrust {
    pub(super) require: Option<Spanned<String>>,
    pub(super) trusted_authserv_ids: Option<Vec<String>>,
    pub(super) smime_ca_files: Option<Vec<Spanned<String>>>,
    pub(super) smime_system_roots: Option<bool>,
    pub(super) pgp_public_keys: Option<Spanned<String>>,
    #[serde(default, rename = "relay")]
    pub(super) relays: Vec<RawRelay>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRelay {
    pub(super) from: Spanned<String>,
    pub(super) organizers: Spanned<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    pub(super) addresses: Spanned<Vec<Spanned<String>>>,
    pub(super) name: Option<String>,
    pub(super) trusted_sent_by: Option<Vec<String>>,
    pub(super) smime_certificate: Option<Spanned<String>>,
    pub(super) smime_key: Option<Spanned<String>>,
    pub(super) pgp_secret_key: Option<Spanned<String>>,
}

/// `[store]`, or an account's `store = { … }`: a vdir (`path`) or a CalDAV
/// calendar (`type = "caldav"`, `url`, …).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    #[serde(rename = "type")]
    pub(super) kind: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_command: Option<String>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) calendar: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<RawDuration>>,
    pub(super) answer_edits: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub(super) path: Option<Spanned<String>>,
    pub(super) lock_timeout: Option<Spanned<RawDuration>>,
}

/// A duration written as seconds (`60`) or as text (`"60s"`, `"2m"`).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawDuration {
    Seconds(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAddressBook {
    pub(super) path: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthentication {
    pub(super) trusted_authserv_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_message_bytes: Option<Spanned<u64>>,
    pub(super) max_part_bytes: Option<Spanned<u64>>,
    pub(super) max_depth: Option<Spanned<u64>>,
    pub(super) max_components: Option<Spanned<u64>>,
    pub(super) max_header_bytes: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutgoing {
    pub(super) transport: Spanned<String>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) port: Option<u16>,
    pub(super) tls: Option<Spanned<String>>,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_command: Option<String>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) path: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<RawDuration>>,
    pub(super) max_replies_per_hour: Option<u32>,
    pub(super) max_answers_per_hour: Option<u32>,
    pub(super) sign: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccount {
    pub(super) name: Spanned<String>,
    pub(super) source: Spanned<String>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) port: Option<u16>,
    pub(super) tls: Option<Spanned<String>>,
    pub(super) username: Option<String>,
    pub(super) auth: Option<Spanned<String>>,
    pub(super) password: Option<String>,
    pub(super) password_command: Option<String>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) oauth_token_command: Option<String>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) folders: Option<Vec<String>>,
    #[serde(rename = "move")]
    pub(super) move_to: Option<String>,
    pub(super) keyword: Option<String>,
    pub(super) quarantine_folder: Option<String>,
    pub(super) mark_seen: Option<bool>,
    pub(super) poll_interval: Option<Spanned<RawDuration>>,
    pub(super) idle: Option<bool>,
    pub(super) timeout: Option<Spanned<RawDuration>>,
    pub(super) path: Option<Spanned<String>>,
    /// The person this account's mail is for, instead of `[identity]`.
    pub(super) identity: Option<Spanned<RawIdentity>>,
    /// That person's calendar, instead of `[store]`.
    pub(super) store: Option<Spanned<RawStore>>,
    pub(super) since: Option<Spanned<RawSince>>,
}

/// `since`: a date or a span as text (`"2026-11-01"`, `"14d"`), or a TOML
/// date (`since = 2026-11-01`).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawSince {
    Text(String),
    Date(toml::value::Datetime),
}
