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

/// The key files `[identity]` names.
struct IdentityKeys {
    smime_certificate: Option<Spanned<String>>,
    smime_key: Option<Spanned<String>>,
    pgp_secret_key: Option<Spanned<String>>,
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

    fn validate(&self, mut raw: RawConfig) -> Result<Config, ConfigError> {
        let identity_keys = IdentityKeys {
            smime_certificate: raw.identity.smime_certificate.take(),
            smime_key: raw.identity.smime_key.take(),
            pgp_secret_key: raw.identity.pgp_secret_key.take(),
        };
        let outgoing_sign = raw.outgoing.as_mut().and_then(|o| o.sign.take());
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
                    Action::Accept | Action::Decline | Action::Tentative | Action::Command
                )
            }) {
                return Err(self.err(
                    "outgoing",
                    None,
                    format!(
                        "policy `{}` answers ({}; a command may answer), so an [outgoing] section must say how replies are sent",
                        p.name,
                        p.action.as_str()
                    ),
                ));
            }
        }

        let address_book = raw.address_book.map(|a| self.path(a.path.get_ref()));
        let mut trusted_authserv_ids: Vec<String> = raw
            .authentication
            .map(|a| {
                a.trusted_authserv_ids
                    .iter()
                    .map(|s| s.to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default();
        let trust = self.trust(
            raw.trust,
            &identity_keys,
            outgoing_sign,
            &mut trusted_authserv_ids,
        )?;
        if trust.can_decrypt() {
            for a in &mut accounts {
                if let Source::Imap(c) = &mut a.source {
                    c.fetch_encrypted = true;
                }
            }
        }

        Ok(Config {
            file: Some(self.file.clone()),
            identity,
            store,
            answer_edits: raw.store.answer_edits.unwrap_or(true),
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
            trust,
        })
    }

    /// `[trust]`, the key files of `[identity]` and `[outgoing] sign`: the
    /// files are read now, so a bad one is a configuration error.
    fn trust(
        &self,
        raw: Option<RawTrust>,
        ids: &IdentityKeys,
        sign: Option<Spanned<String>>,
        authserv_ids: &mut Vec<String>,
    ) -> Result<crate::trust::Trust, ConfigError> {
        use crate::trust::{self, Keys, Relay, Require, Sign};
        let mut keys = Keys::default();
        let mut t = trust::Trust::default();
        if let Some(r) = raw {
            if let Some(req) = &r.require {
                t.require = match req.get_ref().as_str() {
                    "none" => Require::None,
                    "authenticated" => Require::Authenticated,
                    other => {
                        return Err(self.err(
                            "trust.require",
                            Some(req.span()),
                            format!(
                                "unknown value `{other}`, expected \"none\" or \"authenticated\""
                            ),
                        ))
                    }
                };
            }
            for id in r.trusted_authserv_ids.unwrap_or_default() {
                let id = id.to_ascii_lowercase();
                if !authserv_ids.contains(&id) {
                    authserv_ids.push(id);
                }
            }
            let files: Vec<PathBuf> = r
                .smime_ca_files
                .iter()
                .flatten()
                .map(|f| self.path(f.get_ref()))
                .collect();
            keys.smime_anchors =
                trust::smime::Anchors::load(&files, r.smime_system_roots.unwrap_or(false))
                    .map_err(|e| {
                        self.err(
                            "trust.smime_ca_files",
                            r.smime_ca_files
                                .as_ref()
                                .and_then(|f| f.first())
                                .map(|f| f.span()),
                            e,
                        )
                    })?;
            if let Some(dir) = &r.pgp_public_keys {
                keys.pgp_public = trust::pgp::PublicKeys::load(&self.path(dir.get_ref()))
                    .map_err(|e| self.err("trust.pgp_public_keys", Some(dir.span()), e))?;
            }
            for relay in r.relays {
                let from = address::bare(relay.from.get_ref());
                if !address::looks_like_email(&from) {
                    return Err(self.err(
                        "trust.relay.from",
                        Some(relay.from.span()),
                        format!("`{}` is not an e-mail address", relay.from.get_ref()),
                    ));
                }
                if relay.organizers.get_ref().is_empty() {
                    return Err(self.err(
                        "trust.relay.organizers",
                        Some(relay.organizers.span()),
                        "name at least one organizer (a glob like \"*@example.com\") the relay may speak for",
                    ));
                }
                t.relays.push(Relay {
                    from,
                    organizers: relay
                        .organizers
                        .get_ref()
                        .iter()
                        .map(|g| address::bare(g))
                        .collect(),
                });
            }
        }
        t.authserv_ids = authserv_ids.clone();
        match (&ids.smime_certificate, &ids.smime_key) {
            (Some(c), Some(k)) => {
                let key = self.path(k.get_ref());
                if let Some(problem) = loose_secret_file(&key) {
                    return Err(self.err("identity.smime_key", Some(k.span()), problem));
                }
                keys.smime_me = Some(
                    trust::smime::Identity::load(&self.path(c.get_ref()), &key)
                        .map_err(|e| self.err("identity.smime_certificate", Some(c.span()), e))?,
                );
            }
            (Some(c), None) => {
                return Err(self.err(
                    "identity.smime_key",
                    Some(c.span()),
                    "smime_certificate needs smime_key (my private key) beside it",
                ))
            }
            (None, Some(k)) => {
                return Err(self.err(
                    "identity.smime_certificate",
                    Some(k.span()),
                    "smime_key needs smime_certificate (my certificate) beside it",
                ))
            }
            (None, None) => {}
        }
        if let Some(k) = &ids.pgp_secret_key {
            let key = self.path(k.get_ref());
            if let Some(problem) = loose_secret_file(&key) {
                return Err(self.err("identity.pgp_secret_key", Some(k.span()), problem));
            }
            keys.pgp_me = Some(
                trust::pgp::SecretKey::load(&key)
                    .map_err(|e| self.err("identity.pgp_secret_key", Some(k.span()), e))?,
            );
        }
        if let Some(s) = &sign {
            t.sign = match s.get_ref().as_str() {
                "none" => Sign::None,
                "smime" if keys.smime_me.is_some() => Sign::Smime,
                "pgp" if keys.pgp_me.is_some() => Sign::Pgp,
                "smime" => {
                    return Err(self.err(
                        "outgoing.sign",
                        Some(s.span()),
                        "sign = \"smime\" needs [identity] smime_certificate and smime_key",
                    ))
                }
                "pgp" => {
                    return Err(self.err(
                        "outgoing.sign",
                        Some(s.span()),
                        "sign = \"pgp\" needs [identity] pgp_secret_key",
                    ))
                }
                other => {
                    return Err(self.err(
                        "outgoing.sign",
                        Some(s.span()),
                        format!("unknown value `{other}`, expected \"none\", \"smime\" or \"pgp\""),
                    ))
                }
            };
        }
        t.keys = std::sync::Arc::new(keys);
        Ok(t)
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
                    fetch_encrypted: false,
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
