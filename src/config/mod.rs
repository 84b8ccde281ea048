//! The configuration: the validated [`Config`] the rest of the crate uses,
//! loaded once from TOML. The parts: [`raw`] mirrors the file exactly
//! (unknown keys are errors), [`validate`] checks it and builds this
//! module's types, [`secret`] holds passwords and tokens, which are never
//! printed. Every error names the file, the key and, where known, the line
//! and column.

mod people;
mod raw;
mod secret;
mod since;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::identity::Identity;
pub use crate::limits::Limits;
pub use crate::policy::Action;
use crate::policy::Policy;
pub use crate::time::parse_duration;
pub use people::{shard_of, Shard};
pub use secret::Secret;
pub use since::Since;

use crate::address;

/// A configuration error: which file, which key, where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: Option<String>,
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot load configuration {}", self.file.display())?;
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        if let Some((line, col)) = self.position {
            write!(f, " (line {line}, column {col})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// How a connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    /// TLS from the first byte (IMAPS 993, SMTPS 465).
    Implicit,
    /// Plain connection upgraded with STARTTLS before any secret is sent.
    StartTls,
    /// No encryption at all; only when the configuration says so explicitly.
    None,
}

/// How an IMAP login is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImapAuth {
    Login,
    Plain,
    Xoauth2,
}

/// The default of `state.lock_timeout`.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub enum Outgoing {
    Smtp(SmtpConfig),
    File { path: PathBuf },
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub username: Option<String>,
    pub secret: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ImapConfig {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    pub username: String,
    pub auth: ImapAuth,
    pub secret: Secret,
    pub ca_file: Option<PathBuf>,
    pub folders: Vec<String>,
    /// Move handled mail here instead of marking it with the keyword.
    pub move_to: Option<String>,
    pub keyword: String,
    pub quarantine_folder: Option<String>,
    pub mark_seen: bool,
    pub poll_interval: Duration,
    pub idle: bool,
    pub timeout: Duration,
    /// Fetch encrypted entities (S/MIME enveloped data, PGP/MIME
    /// `multipart/encrypted`): set when a key of mine can open them.
    pub fetch_encrypted: bool,
}

#[derive(Debug, Clone)]
pub enum Source {
    Imap(Box<ImapConfig>),
    /// `run` looks for new mail every `poll_interval`.
    Maildir {
        path: PathBuf,
        poll_interval: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub source: Source,
    /// Mail delivered before this is remembered as handled, unprocessed.
    pub since: Option<Since>,
    /// The person this account's mail is for, when the account carries an
    /// `identity` and `store` of its own; `None`: the global `[identity]`.
    pub person: Option<Person>,
}

/// Someone imipd acts for: who they are and where their calendar lives.
#[derive(Debug, Clone)]
pub struct Person {
    pub identity: Identity,
    pub store: StoreConfig,
    /// `[trust]` with the keys of this identity.
    pub trust: crate::trust::Trust,
    /// `answer_edits` of this person's store.
    pub answer_edits: bool,
}

/// Where a person's calendar lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// A vdir: one `.ics` file per calendar object, in one folder.
    Vdir { path: PathBuf },
    /// A calendar collection on a CalDAV server (RFC 4791).
    CalDav(Box<CalDavConfig>),
}

impl StoreConfig {
    /// The vdir folder, for a vdir store.
    pub fn vdir_path(&self) -> Option<&Path> {
        match self {
            StoreConfig::Vdir { path } => Some(path),
            StoreConfig::CalDav(_) => None,
        }
    }
}

impl fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Vdir { path } => write!(f, "vdir {}", path.display()),
            StoreConfig::CalDav(c) => {
                write!(f, "caldav {}", c.url)?;
                if let Some(u) = &c.username {
                    write!(f, " as {u}")?;
                }
                if let Some(n) = &c.calendar {
                    write!(f, ", calendar \"{n}\"")?;
                }
                Ok(())
            }
        }
    }
}

/// A CalDAV calendar: the server (a calendar's URL, a principal's, or the
/// server's own, found by discovery), the login, and which calendar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalDavConfig {
    pub url: String,
    pub username: Option<String>,
    pub secret: Option<Secret>,
    /// An extra trusted CA (PEM), for a self-hosted server.
    pub ca_file: Option<PathBuf>,
    /// Pick the calendar with this display name when `url` is not itself a
    /// calendar.
    pub calendar: Option<String>,
    /// Every request to the server is given up after this long.
    pub timeout: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: Option<PathBuf>,
    pub identity: Identity,
    pub store: StoreConfig,
    /// Whose configuration this is: `None` for the global `[identity]` and
    /// `[store]`, the account's name for an account that carries its own
    /// (see [`Config::for_account`]).
    pub person: Option<String>,
    /// Whether the file has a global `[identity]` and `[store]`: without
    /// them, every account carries its own.
    pub has_global_person: bool,
    /// Answer when another program changes my PARTSTAT in a stored
    /// invitation, or deletes an upcoming one (`[store] answer_edits`).
    pub answer_edits: bool,
    pub state: PathBuf,
    /// How long `process`, `once` and `run` wait for another imipd to let
    /// go of the state lock before giving up with exit status 75.
    pub lock_timeout: Duration,
    pub outgoing: Option<Outgoing>,
    pub accounts: Vec<Account>,
    pub policies: Vec<Policy>,
    pub limits: Limits,
    /// Replies to one organizer within one hour, at most.
    pub max_replies_per_hour: u32,
    /// Automatic answers to anyone within one hour, at most.
    pub max_answers_per_hour: u32,
    pub address_book: Option<PathBuf>,
    /// `[trust]`, the keys of `[identity]`, `[outgoing] sign`.
    pub trust: crate::trust::Trust,
}

impl Config {
    /// A configuration with only an identity: what `classify --me` needs when
    /// there is no configuration file.
    pub fn minimal(addresses: &[String]) -> Config {
        Config {
            file: None,
            identity: Identity {
                addresses: addresses.iter().map(|a| address::bare(a)).collect(),
                name: None,
                trusted_sent_by: Vec::new(),
            },
            store: StoreConfig::Vdir {
                path: PathBuf::from("calendar"),
            },
            person: None,
            has_global_person: true,
            answer_edits: true,
            state: PathBuf::from("state"),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            outgoing: None,
            accounts: Vec::new(),
            policies: Vec::new(),
            limits: Limits::default(),
            max_replies_per_hour: 10,
            max_answers_per_hour: 30,
            address_book: None,
            trust: crate::trust::Trust::default(),
        }
    }
}

/// The configuration file to use: the one given, else `$IMIPD_CONFIG`, else
/// `$XDG_CONFIG_HOME/imipd/config.toml` (`~/.config/imipd/config.toml`).
pub fn default_path(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    if let Some(p) = std::env::var_os("IMIPD_CONFIG").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| home_dir().join(".config"));
    base.join("imipd").join("config.toml")
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Read and validate a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        key: None,
        position: None,
        message: format!("cannot read file: {e}"),
    })?;
    parse(path, &text)
}

/// Validate configuration text as if it were read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    validate::parse(path, text)
}

#[cfg(test)]
mod tests;
