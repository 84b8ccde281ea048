//! The configuration: the validated [`Config`] the rest of the crate uses,
//! loaded once from TOML. The parts: [`raw`] mirrors the file exactly
//! (unknown keys are errors), [`validate`] checks it and builds this
//! module's types, [`secret`] holds passwords and tokens, which are never
//! printed. Every error names the file, the key and, where known, the line
//! and column.

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
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: Option<PathBuf>,
    pub identity: Identity,
    pub store: PathBuf,
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
    pub trusted_authserv_ids: Vec<String>,
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
            store: PathBuf::from("calendar"),
            state: PathBuf::from("state"),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            outgoing: None,
            accounts: Vec::new(),
            policies: Vec::new(),
            limits: Limits::default(),
            max_replies_per_hour: 10,
            max_answers_per_hour: 30,
            address_book: None,
            trusted_authserv_ids: Vec::new(),
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
