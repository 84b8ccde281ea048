//! Validation: the raw TOML structures → the [`Config`] the rest of imipd
//! trusts. Paths are resolved (`~`, relative to the file's folder), values
//! checked, policies compiled; every error names the file, the key and,
//! where known, the line and column.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::*;
use super::*;
use crate::address;
use crate::policy::{self, Policy};

/// Validate configuration text as if it were read from `path`.
pub(super) fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
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
        let message = e.message().trim();
        // A missing section is reported for the whole file: no position.
        if let Some(section) = missing_section(message) {
            return ConfigError {
                file: self.file.clone(),
                key: None,
                position: None,
                message: section,
            };
        }
        let key = span.as_ref().and_then(|s| self.key_at(s.clone()));
        ConfigError {
            file: self.file.clone(),
            message: plain_words(message, key.as_deref()),
            key,
            position: span.map(|s| self.position(s.start)),
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

    /// A duration key: a number of seconds (`60`) or text with a unit
    /// (`"60s"`, `"5m"`); text without a unit is an error that shows one.
    fn seconds(
        &self,
        v: Option<&Spanned<RawDuration>>,
        key: &str,
        default: u64,
    ) -> Result<Duration, ConfigError> {
        let Some(v) = v else {
            return Ok(Duration::from_secs(default));
        };
        let d = match v.get_ref() {
            RawDuration::Seconds(n) => Duration::from_secs(*n),
            RawDuration::Text(t) => {
                duration_with_unit(t).map_err(|m| self.err(key, Some(v.span()), m))?
            }
        };
        if d.is_zero() {
            return Err(self.err(key, Some(v.span()), "must be at least 1 second"));
        }
        Ok(d)
    }

    fn since(
        &self,
        account: &str,
        v: Option<&Spanned<RawSince>>,
    ) -> Result<Option<Since>, ConfigError> {
        let Some(v) = v else { return Ok(None) };
        let parsed = match v.get_ref() {
            RawSince::Text(t) => Since::parse(t),
            RawSince::Date(d) => match (d.date, d.time) {
                (Some(date), None) => chrono::NaiveDate::from_ymd_opt(
                    i32::from(date.year),
                    u32::from(date.month),
                    u32::from(date.day),
                )
                .map(Since::Date)
                .ok_or_else(|| format!("`{d}` is not a date")),
                _ => Since::parse(&d.to_string()),
            },
        };
        parsed.map(Some).map_err(|m| {
            self.err(
                "account.since",
                Some(v.span()),
                format!("account `{account}`: {m}"),
            )
        })
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
                RawDuration::Text(t) => duration_with_unit(t)
                    .map_err(|m| self.err("state.lock_timeout", Some(v.span()), m))?,
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
            let since = self.since(&name, a.since.as_ref())?;
            let source = self.account_source(a)?;
            accounts.push(Account {
                name,
                source,
                since,
            });
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

/// "missing section [identity]" with a minimal example, for the sections
/// every configuration needs.
fn missing_section(message: &str) -> Option<String> {
    let example = match message {
        "missing field `identity`" => {
            "[identity]\n    addresses = [\"you@example.com\"]   # your calendar addresses"
        }
        "missing field `store`" => {
            "[store]\n    path = \"~/.calendars/invitations\"   # the vdir imipd files events into"
        }
        _ => return None,
    };
    let name = example[1..].split(']').next().unwrap_or_default();
    Some(format!(
        "missing section [{name}]; every configuration needs one, for example:\n\n    {example}\n\n\
         (`imipd init` writes a commented starter configuration)"
    ))
}

/// Keys whose value is a list of strings, for "expected a list of strings".
const STRING_LISTS: &[&str] = &[
    "addresses",
    "trusted_sent_by",
    "trusted_authserv_ids",
    "folders",
];

/// serde's and toml's wording of a type error (`u16`, `a sequence`,
/// `struct RawIdentity`) in words users know.
fn plain_words(message: &str, key: Option<&str>) -> String {
    let expected_words = |what: &str| -> String {
        let what = what.trim();
        match what {
            "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => {
                let range = match what {
                    "u16" => " from 0 to 65535",
                    "u32" => " from 0 to 4294967295",
                    _ => "",
                };
                format!("a number{range} (without quotes)")
            }
            "a sequence" if key.is_some_and(|k| STRING_LISTS.contains(&k)) => {
                "a list of strings, like [\"a\", \"b\"]".to_string()
            }
            "a sequence" => "a list, like [\"a\", \"b\"]".to_string(),
            "a boolean" => "true or false (without quotes)".to_string(),
            "a string" => "a string in quotes".to_string(),
            w if w.starts_with("struct ") => "a table (a [section])".to_string(),
            w => w.to_string(),
        }
    };
    let found_words = |what: &str| -> String {
        let what = what.trim();
        if let Some(v) = what.strip_prefix("string ") {
            format!("the string {v}")
        } else if let Some(v) = what.strip_prefix("integer ") {
            format!("the number {}", v.trim_matches('`'))
        } else if let Some(v) = what.strip_prefix("floating point ") {
            format!("the number {}", v.trim_matches('`'))
        } else if let Some(v) = what.strip_prefix("boolean ") {
            v.trim_matches('`').to_string()
        } else if what == "sequence" {
            "a list".to_string()
        } else if what == "map" {
            "a table".to_string()
        } else {
            what.to_string()
        }
    };
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!(
                "expected {}, found {}",
                expected_words(expected),
                found_words(found)
            );
        }
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.split_once(", expected ") {
            return format!(
                "{} is out of range: expected {}",
                found_words(found),
                expected_words(expected)
            );
        }
    }
    if message.contains("untagged enum RawDuration") {
        return "expected a duration like \"60s\", \"5m\" or \"2h\", or a number of seconds"
            .to_string();
    }
    if message.contains("untagged enum RawSince") {
        return "expected a date like \"2026-11-01\" or a span like \"14d\"".to_string();
    }
    if let Some(rest) = message.strip_prefix("unknown field ") {
        return format!("unknown key {rest}");
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        return format!("missing key {rest}");
    }
    message.to_string()
}

/// A duration written as text: it needs a unit (`"90"` could be seconds or
/// minutes, so it is refused with the forms that are meant).
pub(crate) fn duration_with_unit(t: &str) -> Result<Duration, String> {
    let trimmed = t.trim();
    if !trimmed.is_empty() && trimmed.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "`{trimmed}` has no unit: write \"{trimmed}s\" for seconds, \"{trimmed}m\" for minutes or \"{trimmed}h\" for hours (or a number without quotes for seconds)"
        ));
    }
    parse_duration(trimmed).ok_or_else(|| {
        format!("`{t}` is not a duration (like \"60s\", \"5m\", \"2h\", \"1d\" or \"PT90M\")")
    })
}
