//! The configuration file: raw serde structures that mirror the TOML exactly
//! (unknown keys are errors), and the validated [`Config`] the rest of the crate
//! uses. Validation happens once, here, so that every later step can trust what
//! it is given; every error names the file, the key and, where known, the line
//! and column. Secrets are held as [`Secret`] and never printed.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::address;
pub use crate::policy::Action;
use crate::policy::{self, Policy, RawPolicy};

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

/// A secret value (a password or a token), from the file itself, from a
/// command's standard output, or from a file. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Raw(String),
    Command(String),
    File(PathBuf),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Raw(_) => write!(f, "Secret(<redacted>)"),
            Secret::Command(c) => write!(f, "Secret(command `{c}`)"),
            Secret::File(p) => write!(f, "Secret(file {})", p.display()),
        }
    }
}

/// How long [`Secret::resolve`] lets a command run when the caller gives no
/// timeout of its own.
pub const SECRET_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

impl Secret {
    /// The secret's value: the raw string, the first line a command prints, or
    /// a file's content without its trailing line break. Blocking: a command
    /// gets [`SECRET_COMMAND_TIMEOUT`]. Async code uses
    /// [`Secret::resolve_within`], which blocks no thread.
    pub fn resolve(&self) -> anyhow::Result<String> {
        match self {
            Secret::Command(cmd) => {
                let out = secret_command::run_blocking(cmd, SECRET_COMMAND_TIMEOUT)?;
                first_line(cmd, out)
            }
            _ => self.resolve_plain(),
        }
    }

    /// The secret's value, for async code. A command runs as a child process
    /// watched by the runtime (no worker thread waits for it) for at most
    /// `timeout`; a command still running then is killed with everything it
    /// started (its process group), and so it is when the caller stops
    /// waiting (this future dropped, e.g. on SIGTERM).
    pub async fn resolve_within(&self, timeout: Duration) -> anyhow::Result<String> {
        match self {
            Secret::Command(cmd) => {
                let out = secret_command::run_async(cmd, timeout).await?;
                first_line(cmd, out)
            }
            _ => self.resolve_plain(),
        }
    }

    fn resolve_plain(&self) -> anyhow::Result<String> {
        match self {
            Secret::Raw(s) => Ok(s.clone()),
            Secret::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read password file {}: {e}", path.display())
                })?;
                Ok(text.trim_end_matches(['\r', '\n']).to_string())
            }
            Secret::Command(cmd) => anyhow::bail!("cannot run password command `{cmd}` here"),
        }
    }
}

/// The first line a secret command printed.
fn first_line(cmd: &str, out: std::process::Output) -> anyhow::Result<String> {
    if !out.status.success() {
        anyhow::bail!(
            "cannot run password command `{cmd}`: it exited with {}",
            out.status
        );
    }
    let text = String::from_utf8(out.stdout)
        .map_err(|_| anyhow::anyhow!("cannot read password command `{cmd}` output: not UTF-8"))?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// Running `password_command` / `oauth_token_command` (`sh -c`) with a
/// deadline. The shell leads a process group of its own, so that a command
/// that outlives its deadline is killed together with whatever it started
/// (`sh -c "sleep 600; echo pw"` leaves `sleep` behind otherwise).
mod secret_command {
    use std::io::Read;
    use std::os::unix::process::CommandExt as _;
    use std::process::{Output, Stdio};
    use std::time::Duration;

    fn spawn_error(cmd: &str, e: std::io::Error) -> anyhow::Error {
        anyhow::anyhow!("cannot run password command `{cmd}`: {e}")
    }

    fn timed_out(cmd: &str, timeout: Duration) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot run password command `{cmd}`: it did not finish within {} s (the account's timeout) and was stopped",
            timeout.as_secs_f64()
        )
    }

    /// SIGKILL a process group through the shell's `kill` (no unsafe code,
    /// no `kill` binary needed beyond `sh` itself).
    fn kill_group(pgid: u32) {
        if pgid > 1 {
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg("kill -s KILL -- \"-$0\" 2>/dev/null")
                .arg(pgid.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Kills the group when dropped, unless the command finished.
    struct Group(Option<u32>);

    impl Drop for Group {
        fn drop(&mut self) {
            if let Some(pgid) = self.0.take() {
                kill_group(pgid);
            }
        }
    }

    pub(super) async fn run_async(cmd: &str, timeout: Duration) -> anyhow::Result<Output> {
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| spawn_error(cmd, e))?;
        let mut group = Group(child.id());
        match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Err(_) => Err(timed_out(cmd, timeout)),
            Ok(Err(e)) => Err(spawn_error(cmd, e)),
            Ok(Ok(out)) => {
                group.0 = None;
                Ok(out)
            }
        }
    }

    pub(super) fn run_blocking(cmd: &str, timeout: Duration) -> anyhow::Result<Output> {
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(|e| spawn_error(cmd, e))?;
        let mut group = Group(Some(child.id()));
        let mut stdout = child.stdout.take();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut buf);
            }
            let status = child.wait();
            let _ = tx.send(status.map(|status| Output {
                status,
                stdout: buf,
                stderr: Vec::new(),
            }));
        });
        match rx.recv_timeout(timeout) {
            Err(_) => Err(timed_out(cmd, timeout)),
            Ok(Err(e)) => Err(spawn_error(cmd, e)),
            Ok(Ok(out)) => {
                group.0 = None;
                Ok(out)
            }
        }
    }
}

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

/// Limits that keep hostile or broken mail from costing too much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Larger messages are not read at all (reported, left in place).
    pub max_message_bytes: usize,
    /// Larger calendar parts are not parsed (reported).
    pub max_part_bytes: usize,
    /// MIME nesting (multipart and forwarded messages) deeper than this is not walked.
    pub max_depth: usize,
    /// An iCalendar object with more components than this is not processed.
    pub max_components: usize,
    /// The header fields read over IMAP (From, Subject, ...) are cut after
    /// this many bytes: a 10 MB Subject costs no more than this.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024 * 1024,
            max_part_bytes: 4 * 1024 * 1024,
            max_depth: 24,
            max_components: 2000,
            max_header_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Identity {
    /// Lower-cased e-mail addresses, without `mailto:`.
    pub addresses: Vec<String>,
    pub name: Option<String>,
    /// Globs of addresses trusted to act for an organizer or attendee
    /// (SENT-BY) even when the stored event does not already name them.
    pub trusted_sent_by: Vec<String>,
}

impl Identity {
    /// Whether a calendar address (`mailto:` optional, any case) is one of mine.
    pub fn is_me(&self, cal_address: &str) -> bool {
        let a = address::bare(cal_address);
        self.addresses.contains(&a)
    }
}

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

// ---------------------------------------------------------------------------
// Raw TOML structures.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    identity: RawIdentity,
    store: RawStore,
    state: Option<RawState>,
    outgoing: Option<RawOutgoing>,
    #[serde(default, rename = "account")]
    accounts: Vec<RawAccount>,
    #[serde(default, rename = "policy")]
    policies: Vec<Spanned<RawPolicy>>,
    limits: Option<RawLimits>,
    address_book: Option<RawAddressBook>,
    authentication: Option<RawAuthentication>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    addresses: Spanned<Vec<Spanned<String>>>,
    name: Option<String>,
    trusted_sent_by: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    path: Option<Spanned<String>>,
    lock_timeout: Option<Spanned<RawDuration>>,
}

/// A duration written as seconds (`60`) or as text (`"60s"`, `"2m"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Seconds(u64),
    Text(String),
}

/// The default of `state.lock_timeout`.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAddressBook {
    path: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthentication {
    trusted_authserv_ids: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_message_bytes: Option<Spanned<u64>>,
    max_part_bytes: Option<Spanned<u64>>,
    max_depth: Option<Spanned<u64>>,
    max_components: Option<Spanned<u64>>,
    max_header_bytes: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutgoing {
    transport: Spanned<String>,
    host: Option<Spanned<String>>,
    port: Option<u16>,
    tls: Option<Spanned<String>>,
    username: Option<String>,
    password: Option<String>,
    password_command: Option<String>,
    password_file: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    timeout: Option<Spanned<u64>>,
    max_replies_per_hour: Option<u32>,
    max_answers_per_hour: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    name: Spanned<String>,
    source: Spanned<String>,
    host: Option<Spanned<String>>,
    port: Option<u16>,
    tls: Option<Spanned<String>>,
    username: Option<String>,
    auth: Option<Spanned<String>>,
    password: Option<String>,
    password_command: Option<String>,
    password_file: Option<Spanned<String>>,
    oauth_token_command: Option<String>,
    ca_file: Option<Spanned<String>>,
    folders: Option<Vec<String>>,
    #[serde(rename = "move")]
    move_to: Option<String>,
    keyword: Option<String>,
    quarantine_folder: Option<String>,
    mark_seen: Option<bool>,
    poll_interval: Option<Spanned<u64>>,
    idle: Option<bool>,
    timeout: Option<Spanned<u64>>,
    path: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------
// Loading.

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
    let v = Validator {
        file: path.to_path_buf(),
        text,
        base: path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    p.to_path_buf()
                }
            })
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    let raw: RawConfig = toml::from_str(text).map_err(|e| v.toml_error(&e))?;
    v.validate(raw)
}

struct Validator<'a> {
    file: PathBuf,
    text: &'a str,
    base: PathBuf,
}

impl Validator<'_> {
    fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rfind('\n')
            .map_or(before.len(), |i| before.len() - i - 1)
            + 1;
        (line, col)
    }

    fn err(
        &self,
        key: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            key: Some(key.to_string()),
            position: span.map(|s| self.position(s.start)),
            message: message.into(),
        }
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span();
        let key = span.as_ref().and_then(|s| self.key_at(s.clone()));
        ConfigError {
            file: self.file.clone(),
            key,
            position: span.map(|s| self.position(s.start)),
            message: e.message().trim().to_string(),
        }
    }

    /// The key written at (or on the line of) a span, for error messages.
    fn key_at(&self, span: Range<usize>) -> Option<String> {
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        let line = self.text[line_start..line_end].trim();
        if let Some((k, _)) = line.split_once('=') {
            let k = k.trim();
            if !k.is_empty() {
                return Some(k.to_string());
            }
        }
        let snippet = self.text.get(span)?.trim();
        if snippet.is_empty() || snippet.len() > 64 || snippet.contains('\n') {
            None
        } else {
            Some(snippet.trim_matches(['[', ']']).to_string())
        }
    }

    /// Expand `~` and make a path relative to the configuration file's folder.
    fn path(&self, p: &str) -> PathBuf {
        let expanded = if p == "~" {
            home_dir()
        } else if let Some(rest) = p.strip_prefix("~/") {
            home_dir().join(rest)
        } else {
            PathBuf::from(p)
        };
        if expanded.is_absolute() {
            expanded
        } else {
            self.base.join(expanded)
        }
    }

    fn tls(&self, key: &str, v: Option<&Spanned<String>>) -> Result<Tls, ConfigError> {
        match v {
            None => Ok(Tls::Implicit),
            Some(s) => match s.get_ref().to_ascii_lowercase().as_str() {
                "implicit" | "tls" | "ssl" => Ok(Tls::Implicit),
                "starttls" => Ok(Tls::StartTls),
                "none" | "plain" => Ok(Tls::None),
                other => Err(self.err(
                    key,
                    Some(s.span()),
                    format!("unknown TLS mode `{other}`, expected \"implicit\", \"starttls\" or \"none\""),
                )),
            },
        }
    }

    fn secret(
        &self,
        section: &str,
        password: Option<String>,
        command: Option<String>,
        file: Option<&Spanned<String>>,
    ) -> Result<Option<Secret>, ConfigError> {
        let mut found = Vec::new();
        if let Some(p) = password {
            found.push(Secret::Raw(p));
        }
        if let Some(c) = command {
            found.push(Secret::Command(c));
        }
        if let Some(f) = file {
            let path = self.path(f.get_ref());
            if let Some(problem) = loose_secret_file(&path) {
                return Err(self.err(&format!("{section}.password_file"), Some(f.span()), problem));
            }
            found.push(Secret::File(path));
        }
        if found.len() > 1 {
            return Err(self.err(
                &format!("{section}.password"),
                file.map(|f| f.span()),
                "give only one of password, password_command and password_file",
            ));
        }
        Ok(found.pop())
    }

    fn seconds(
        &self,
        v: Option<&Spanned<u64>>,
        key: &str,
        default: u64,
    ) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(Duration::from_secs(default)),
            Some(s) if *s.get_ref() == 0 => {
                Err(self.err(key, Some(s.span()), "must be at least 1 (seconds)"))
            }
            Some(s) => Ok(Duration::from_secs(*s.get_ref())),
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        // identity
        let mut addresses = Vec::new();
        for a in raw.identity.addresses.get_ref() {
            let bare = address::bare(a.get_ref());
            if !address::looks_like_email(&bare) {
                return Err(self.err(
                    "identity.addresses",
                    Some(a.span()),
                    format!("`{}` is not an e-mail address", a.get_ref()),
                ));
            }
            addresses.push(bare);
        }
        if addresses.is_empty() {
            return Err(self.err(
                "identity.addresses",
                Some(raw.identity.addresses.span()),
                "give at least one address",
            ));
        }
        let identity = Identity {
            addresses,
            name: raw.identity.name.filter(|n| !n.trim().is_empty()),
            trusted_sent_by: raw
                .identity
                .trusted_sent_by
                .unwrap_or_default()
                .iter()
                .map(|g| address::bare(g))
                .collect(),
        };

        if raw.store.path.get_ref().trim().is_empty() {
            return Err(self.err(
                "store.path",
                Some(raw.store.path.span()),
                "must not be empty",
            ));
        }
        let store = self.path(raw.store.path.get_ref());
        let state = match raw.state.as_ref().and_then(|s| s.path.as_ref()) {
            Some(p) => self.path(p.get_ref()),
            None => std::env::var_os("XDG_STATE_HOME")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| home_dir().join(".local/state"))
                .join("imipd"),
        };
        let lock_timeout = match raw.state.as_ref().and_then(|s| s.lock_timeout.as_ref()) {
            None => DEFAULT_LOCK_TIMEOUT,
            Some(v) => match v.get_ref() {
                RawDuration::Seconds(n) => Duration::from_secs(*n),
                RawDuration::Text(t) => parse_duration(t).ok_or_else(|| {
                    self.err(
                        "state.lock_timeout",
                        Some(v.span()),
                        format!(
                            "`{t}` is not a duration (like \"60s\", \"5m\" or a number of seconds)"
                        ),
                    )
                })?,
            },
        };

        let mut limits = Limits::default();
        if let Some(l) = &raw.limits {
            let pick = |v: &Option<Spanned<u64>>, key: &str, target: &mut usize| {
                if let Some(s) = v {
                    if *s.get_ref() == 0 {
                        return Err(self.err(key, Some(s.span()), "must be at least 1"));
                    }
                    *target = usize::try_from(*s.get_ref()).unwrap_or(usize::MAX);
                }
                Ok(())
            };
            pick(
                &l.max_message_bytes,
                "limits.max_message_bytes",
                &mut limits.max_message_bytes,
            )?;
            pick(
                &l.max_part_bytes,
                "limits.max_part_bytes",
                &mut limits.max_part_bytes,
            )?;
            pick(&l.max_depth, "limits.max_depth", &mut limits.max_depth)?;
            pick(
                &l.max_components,
                "limits.max_components",
                &mut limits.max_components,
            )?;
            pick(
                &l.max_header_bytes,
                "limits.max_header_bytes",
                &mut limits.max_header_bytes,
            )?;
        }

        let mut max_replies_per_hour = 10;
        let mut max_answers_per_hour = 30;
        let outgoing = match raw.outgoing {
            None => None,
            Some(o) => {
                if let Some(m) = o.max_replies_per_hour {
                    max_replies_per_hour = m;
                }
                if let Some(m) = o.max_answers_per_hour {
                    max_answers_per_hour = m;
                }
                Some(self.outgoing(o)?)
            }
        };

        let mut accounts: Vec<Account> = Vec::new();
        for a in raw.accounts {
            let name = a.name.get_ref().trim().to_string();
            if name.is_empty() {
                return Err(self.err("account.name", Some(a.name.span()), "must not be empty"));
            }
            if accounts.iter().any(|x| x.name == name) {
                return Err(self.err(
                    "account.name",
                    Some(a.name.span()),
                    format!("two accounts are named `{name}`"),
                ));
            }
            let source = self.account_source(a)?;
            accounts.push(Account { name, source });
        }

        let account_names: Vec<String> = accounts.iter().map(|a| a.name.clone()).collect();
        let ctx = policy::Context {
            accounts: &account_names,
        };
        let mut policies: Vec<Policy> = Vec::new();
        for p in &raw.policies {
            let policy = policy::compile(p, &policies, &ctx)
                .map_err(|e| self.err(&e.key, e.span, e.message))?;
            policies.push(policy);
        }

        if outgoing.is_none() {
            if let Some(p) = policies.iter().find(|p| {
                matches!(
                    p.action,
                    Action::Accept | Action::Decline | Action::Tentative
                )
            }) {
                return Err(self.err(
                    "outgoing",
                    None,
                    format!(
                        "policy `{}` answers ({}), so an [outgoing] section must say how replies are sent",
                        p.name,
                        p.action.as_str()
                    ),
                ));
            }
        }

        let address_book = raw.address_book.map(|a| self.path(a.path.get_ref()));
        let trusted_authserv_ids = raw
            .authentication
            .map(|a| {
                a.trusted_authserv_ids
                    .iter()
                    .map(|s| s.to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default();

        Ok(Config {
            file: Some(self.file.clone()),
            identity,
            store,
            state,
            lock_timeout,
            outgoing,
            accounts,
            policies,
            limits,
            max_replies_per_hour,
            max_answers_per_hour,
            address_book,
            trusted_authserv_ids,
        })
    }

    fn outgoing(&self, o: RawOutgoing) -> Result<Outgoing, ConfigError> {
        match o.transport.get_ref().as_str() {
            "smtp" => {
                if let Some(p) = &o.path {
                    return Err(self.err(
                        "outgoing.path",
                        Some(p.span()),
                        "`path` belongs to transport = \"file\"",
                    ));
                }
                let host = o.host.as_ref().ok_or_else(|| {
                    self.err(
                        "outgoing.host",
                        Some(o.transport.span()),
                        "transport = \"smtp\" needs a host",
                    )
                })?;
                let tls = self.tls("outgoing.tls", o.tls.as_ref())?;
                let port = o.port.unwrap_or(match tls {
                    Tls::Implicit => 465,
                    Tls::StartTls => 587,
                    Tls::None => 25,
                });
                let secret = self.secret(
                    "outgoing",
                    o.password,
                    o.password_command,
                    o.password_file.as_ref(),
                )?;
                if secret.is_some() && o.username.is_none() {
                    return Err(self.err(
                        "outgoing.username",
                        Some(o.transport.span()),
                        "a password needs a username",
                    ));
                }
                Ok(Outgoing::Smtp(SmtpConfig {
                    host: host.get_ref().clone(),
                    port,
                    tls,
                    username: o.username,
                    secret,
                    ca_file: o.ca_file.map(|c| self.path(c.get_ref())),
                    timeout: self.seconds(o.timeout.as_ref(), "outgoing.timeout", 60)?,
                }))
            }
            "file" => {
                let path = o.path.as_ref().ok_or_else(|| {
                    self.err(
                        "outgoing.path",
                        Some(o.transport.span()),
                        "transport = \"file\" needs a path",
                    )
                })?;
                if let Some(h) = &o.host {
                    return Err(self.err(
                        "outgoing.host",
                        Some(h.span()),
                        "`host` belongs to transport = \"smtp\"",
                    ));
                }
                Ok(Outgoing::File {
                    path: self.path(path.get_ref()),
                })
            }
            other => Err(self.err(
                "outgoing.transport",
                Some(o.transport.span()),
                format!("unknown transport `{other}`, expected \"smtp\" or \"file\""),
            )),
        }
    }

    fn account_source(&self, a: RawAccount) -> Result<Source, ConfigError> {
        let name = a.name.get_ref().clone();
        match a.source.get_ref().as_str() {
            "imap" => {
                if let Some(p) = &a.path {
                    return Err(self.err(
                        "account.path",
                        Some(p.span()),
                        format!("account `{name}`: `path` belongs to source = \"maildir\""),
                    ));
                }
                let host = a.host.as_ref().ok_or_else(|| {
                    self.err(
                        "account.host",
                        Some(a.source.span()),
                        format!("account `{name}` needs a host"),
                    )
                })?;
                let username = a.username.clone().ok_or_else(|| {
                    self.err(
                        "account.username",
                        Some(a.source.span()),
                        format!("account `{name}` needs a username"),
                    )
                })?;
                let tls = self.tls("account.tls", a.tls.as_ref())?;
                let auth = match a.auth.as_ref().map(|s| s.get_ref().to_ascii_lowercase()) {
                    None => ImapAuth::Login,
                    Some(s) if s == "login" => ImapAuth::Login,
                    Some(s) if s == "plain" => ImapAuth::Plain,
                    Some(s) if s == "xoauth2" => ImapAuth::Xoauth2,
                    Some(other) => {
                        return Err(self.err(
                            "account.auth",
                            a.auth.as_ref().map(|s| s.span()),
                            format!(
                            "unknown auth `{other}`, expected \"login\", \"plain\" or \"xoauth2\""
                        ),
                        ))
                    }
                };
                let secret = if auth == ImapAuth::Xoauth2 {
                    match (a.oauth_token_command, &a.password, &a.password_command) {
                        (Some(cmd), None, None) => Some(Secret::Command(cmd)),
                        (None, _, _) => self.secret("account", a.password, a.password_command, a.password_file.as_ref())?,
                        _ => {
                            return Err(self.err(
                                "account.oauth_token_command",
                                Some(a.source.span()),
                                format!("account `{name}`: give oauth_token_command or a password, not both"),
                            ))
                        }
                    }
                } else {
                    if a.oauth_token_command.is_some() {
                        return Err(self.err(
                            "account.oauth_token_command",
                            Some(a.source.span()),
                            format!(
                                "account `{name}`: oauth_token_command needs auth = \"xoauth2\""
                            ),
                        ));
                    }
                    self.secret(
                        "account",
                        a.password,
                        a.password_command,
                        a.password_file.as_ref(),
                    )?
                };
                let secret = secret.ok_or_else(|| {
                    self.err(
                        "account.password",
                        Some(a.source.span()),
                        format!(
                            "account `{name}` needs password, password_command or password_file"
                        ),
                    )
                })?;
                let folders = a.folders.unwrap_or_else(|| vec!["INBOX".to_string()]);
                if folders.is_empty() {
                    return Err(self.err(
                        "account.folders",
                        Some(a.source.span()),
                        "give at least one folder",
                    ));
                }
                let port = a.port.unwrap_or(match tls {
                    Tls::Implicit => 993,
                    _ => 143,
                });
                Ok(Source::Imap(Box::new(ImapConfig {
                    host: host.get_ref().clone(),
                    port,
                    tls,
                    username,
                    auth,
                    secret,
                    ca_file: a.ca_file.map(|c| self.path(c.get_ref())),
                    folders,
                    move_to: a.move_to,
                    keyword: a.keyword.unwrap_or_else(|| "$iMIPProcessed".to_string()),
                    quarantine_folder: a.quarantine_folder,
                    mark_seen: a.mark_seen.unwrap_or(false),
                    poll_interval: self.seconds(
                        a.poll_interval.as_ref(),
                        "account.poll_interval",
                        300,
                    )?,
                    idle: a.idle.unwrap_or(true),
                    timeout: self.seconds(a.timeout.as_ref(), "account.timeout", 60)?,
                })))
            }
            "maildir" => {
                let imap_only = [
                    ("host", a.host.is_some()),
                    ("username", a.username.is_some()),
                    (
                        "password",
                        a.password.is_some()
                            || a.password_command.is_some()
                            || a.password_file.is_some(),
                    ),
                    ("folders", a.folders.is_some()),
                    ("move", a.move_to.is_some()),
                    ("tls", a.tls.is_some()),
                    ("port", a.port.is_some()),
                ];
                if let Some((k, _)) = imap_only.iter().find(|(_, set)| *set) {
                    return Err(self.err(
                        &format!("account.{k}"),
                        Some(a.source.span()),
                        format!("account `{name}`: `{k}` belongs to source = \"imap\""),
                    ));
                }
                let path = a.path.as_ref().ok_or_else(|| {
                    self.err(
                        "account.path",
                        Some(a.source.span()),
                        format!("account `{name}` needs a path"),
                    )
                })?;
                Ok(Source::Maildir {
                    path: self.path(path.get_ref()),
                    poll_interval: self.seconds(
                        a.poll_interval.as_ref(),
                        "account.poll_interval",
                        60,
                    )?,
                })
            }
            other => Err(self.err(
                "account.source",
                Some(a.source.span()),
                format!("unknown source `{other}`, expected \"imap\" or \"maildir\""),
            )),
        }
    }
}

/// Why a password file must not be used, as ssh refuses a private key that
/// others can read: it is open to group or others. A file that cannot be
/// looked at is reported when the password is needed.
fn loose_secret_file(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "password file {} is open to group or others (mode {mode:04o}), so others may read the password; \
             imipd refuses it: run `chmod 600 {}`",
            path.display(),
            path.display()
        )
    })
}

/// "90m", "2h", "30d", "1w", "45s", a number of seconds, or an ISO 8601 /
/// RFC 5545 duration such as "PT1H30M" or "P2D".
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Some(rest) = s.strip_prefix(['P', 'p']) {
        let mut secs: u64 = 0;
        let mut num = String::new();
        let mut in_time = false;
        for ch in rest.chars() {
            match ch.to_ascii_uppercase() {
                'T' => in_time = true,
                c if c.is_ascii_digit() => num.push(c),
                unit => {
                    let n: u64 = num.parse().ok()?;
                    num.clear();
                    let mul = match (unit, in_time) {
                        ('W', false) => 7 * 86400,
                        ('D', false) => 86400,
                        ('H', true) => 3600,
                        ('M', true) => 60,
                        ('S', true) => 1,
                        _ => return None,
                    };
                    secs = secs.checked_add(n.checked_mul(mul)?)?;
                }
            }
        }
        return if num.is_empty() {
            Some(Duration::from_secs(secs))
        } else {
            None
        };
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mul = match unit.trim() {
        "" | "s" | "sec" | "secs" => 1,
        "m" | "min" | "mins" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86400,
        "w" | "week" | "weeks" => 7 * 86400,
        _ => return None,
    };
    n.checked_mul(mul).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("/etc/imipd/config.toml"), text)
    }

    const MIN: &str = "[identity]\naddresses = [\"Bob@Example.com\"]\n[store]\npath = \"cal\"\n";

    #[test]
    fn minimal_config_loads_with_relative_paths() {
        let c = p(MIN).unwrap();
        assert_eq!(c.identity.addresses, vec!["bob@example.com"]);
        assert_eq!(c.store, PathBuf::from("/etc/imipd/cal"));
        assert!(c.identity.is_me("MAILTO:BOB@example.com"));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = p(&format!("{MIN}colour = 1\n")).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("colour"));
        assert_eq!(e.position, Some((5, 1)));
        assert!(e.to_string().contains("/etc/imipd/config.toml"), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let e =
            p("[identity]\naddresses = \"bob@example.com\"\n[store]\npath = \"c\"\n").unwrap_err();
        assert_eq!(e.key.as_deref(), Some("addresses"));
        assert_eq!(e.position.map(|p| p.0), Some(2));
    }

    #[test]
    fn bad_action_is_reported_with_position() {
        let e = p(&format!(
            "{MIN}[[policy]]\nname = \"x\"\naction = \"maybe\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("policy.action"));
        assert_eq!(e.position, Some((7, 10)));
    }

    #[test]
    fn unreachable_policies_fail_at_load_time() {
        let catch_all = format!("{MIN}[[policy]]\nname = \"all\"\naction = \"file\"\n[[policy]]\nname = \"late\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n");
        let e = p(&catch_all).unwrap_err();
        assert!(
            e.message.contains("`late` can never match") && e.message.contains("`all`"),
            "{e}"
        );
        assert_eq!(e.position.map(|p| p.0), Some(9));
        let shadowed = format!("{MIN}[[policy]]\nname = \"a\"\norganizers = [\"*@x.org\"]\naction = \"decline\"\n[[policy]]\nname = \"b\"\norganizers = [\"*@x.org\"]\nmethods = [\"ADD\"]\naction = \"accept\"\n");
        assert!(p(&shadowed).is_err());
        let fine = format!("{MIN}[outgoing]\ntransport = \"file\"\npath = \"out\"\n[[policy]]\nname = \"a\"\nmethods = [\"REQUEST\"]\naction = \"decline\"\n[[policy]]\nname = \"b\"\naction = \"file\"\n");
        assert!(p(&fine).is_ok());
    }

    #[test]
    fn answering_a_method_that_is_never_answered_fails() {
        let e = p(&format!("{MIN}[[policy]]\nname = \"r\"\nmethods = [\"REPLY\", \"CANCEL\"]\naction = \"accept\"\n")).unwrap_err();
        assert!(e.message.contains("can never accept"), "{e}");
    }

    #[test]
    fn tilde_expands() {
        std::env::set_var("HOME", "/home/bob");
        let c = p("[identity]\naddresses = [\"b@x.org\"]\n[store]\npath = \"~/cal\"\n").unwrap();
        assert_eq!(c.store, PathBuf::from("/home/bob/cal"));
    }

    #[test]
    fn secret_debug_hides_the_value() {
        let s = Secret::Raw("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn secret_commands_print_their_first_line() {
        let s = Secret::Command("printf 'pw\\nsecond\\n'".into());
        assert_eq!(s.resolve().unwrap(), "pw");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(s.resolve_within(Duration::from_secs(10)));
        assert_eq!(got.unwrap(), "pw");
        let e = rt
            .block_on(Secret::Command("exit 3".into()).resolve_within(Duration::from_secs(10)))
            .unwrap_err();
        assert!(e.to_string().contains("exited with"), "{e}");
    }

    /// Whether a process with `marker` in its command line runs.
    fn running(marker: &str) -> bool {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
    }

    /// Poll until no process with `marker` runs (panics after 5 s).
    fn wait_gone(marker: &str) {
        let t0 = std::time::Instant::now();
        while running(marker) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "`{marker}` was not killed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_hanging_secret_command_is_stopped_at_the_timeout() {
        // The shell forks `sleep` (a compound command): only killing the
        // process group ends it too. GNU sleep takes fractions, which makes
        // the command line unique to this test.
        let marker = format!("sleep 600.{}1", std::process::id());
        let cmd = format!("{marker}; echo pw");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let t0 = std::time::Instant::now();
        let e = rt
            .block_on(Secret::Command(cmd.clone()).resolve_within(Duration::from_millis(300)))
            .unwrap_err();
        assert!(e.to_string().contains("did not finish within"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        wait_gone(&marker.replace(' ', "\0"));

        let marker = format!("sleep 600.{}2", std::process::id());
        let cmd = format!("{marker}; echo pw");
        let t0 = std::time::Instant::now();
        let e = secret_command::run_blocking(&cmd, Duration::from_millis(300)).unwrap_err();
        assert!(e.to_string().contains("did not finish within"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        wait_gone(&marker.replace(' ', "\0"));
    }

    #[test]
    fn a_secret_command_is_killed_when_its_caller_gives_up() {
        let marker = format!("sleep 600.{}3", std::process::id());
        let cmd = Secret::Command(format!("{marker}; echo pw"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let sleep_argv = marker.replace(' ', "\0");
        rt.block_on(async {
            tokio::select! {
                _ = cmd.resolve_within(Duration::from_secs(600)) => panic!("it cannot finish"),
                _ = async {
                    while !running(&sleep_argv) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                } => {}
            }
        });
        wait_gone(&sleep_argv);
    }

    #[test]
    fn two_secrets_are_an_error() {
        let e = p(&format!(
            "{MIN}[[account]]\nname = \"w\"\nsource = \"imap\"\nhost = \"h\"\nusername = \"u\"\npassword = \"a\"\npassword_command = \"b\"\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("only one"), "{e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("PT1H30M"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("P2D"), Some(Duration::from_secs(172800)));
        assert_eq!(parse_duration("soon"), None);
    }
}
