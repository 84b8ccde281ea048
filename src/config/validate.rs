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

/// What `[trust]` and `[outgoing] sign` say for everyone; each person adds
/// the keys of their own identity ([`Validator::person_trust`]).
struct TrustBase {
    /// Without keys of mine, signing off.
    trust: crate::trust::Trust,
    anchors: crate::trust::smime::Anchors,
    public: crate::trust::pgp::PublicKeys,
    sign: Option<Spanned<String>>,
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

    fn validate(&self, mut raw: RawConfig) -> Result<Config, ConfigError> {
        let mut trusted_authserv_ids: Vec<String> = raw
            .authentication
            .take()
            .map(|a| {
                a.trusted_authserv_ids
                    .iter()
                    .map(|s| s.to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default();
        let outgoing_sign = raw.outgoing.as_mut().and_then(|o| o.sign.take());
        let base = self.trust_base(raw.trust.take(), outgoing_sign, &mut trusted_authserv_ids)?;
        // The global person: [identity] and [store], both or neither.
        let global = match (&raw.identity, &raw.store) {
            (Some(i), Some(st)) => Some(self.person("identity", i, "store", st, &base)?),
            (None, None) => None,
            (Some(i), None) => {
                return Err(self.missing(
                    "store",
                    Some(i.span()),
                    "[identity] needs a [store] beside it: where that person's calendar lives",
                ))
            }
            (None, Some(st)) => {
                return Err(self.missing(
                    "identity",
                    Some(st.span()),
                    "[store] needs an [identity] beside it: whose calendar it is",
                ))
            }
        };
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
        for mut a in raw.accounts {
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
            let person = match (a.identity.take(), a.store.take()) {
                (Some(i), Some(st)) => Some(self.person(
                    "account.identity",
                    &i,
                    "account.store",
                    &st,
                    &base,
                )?),
                (None, None) => None,
                (Some(i), None) => {
                    return Err(self.err(
                        "account.store",
                        Some(i.span()),
                        format!("account `{name}` has an identity of its own, so it needs a store of its own too: store = {{ path = \"…\" }} or store = {{ type = \"caldav\", url = \"…\" }}"),
                    ))
                }
                (None, Some(st)) => {
                    return Err(self.err(
                        "account.identity",
                        Some(st.span()),
                        format!("account `{name}` has a store of its own, so it needs an identity of its own too: identity = {{ addresses = [\"…\"] }}"),
                    ))
                }
            };
            if person.is_none() && global.is_none() {
                return Err(self.err(
                    "identity",
                    Some(a.name.span()),
                    format!("account `{name}` has no identity of its own and the file has no [identity]: give the account identity = {{ addresses = [\"…\"] }} and store = {{ … }}, or add [identity] and [store]"),
                ));
            }
            let since = self.since(&name, a.since.as_ref())?;
            let source = self.account_source(a)?;
            accounts.push(Account {
                name,
                source,
                person,
                since,
            });
        }
        // Encrypted mail is fetched only for a person who has a key to open it.
        for a in &mut accounts {
            let can_decrypt = match (&a.person, &global) {
                (Some(p), _) | (None, Some(p)) => p.trust.can_decrypt(),
                (None, None) => false,
            };
            if let Source::Imap(c) = &mut a.source {
                c.fetch_encrypted = can_decrypt;
            }
        }
        if global.is_none() && accounts.is_empty() {
            return Err(self.missing(
                "identity",
                None,
                "a configuration needs [identity] and [store] (whose calendar imipd keeps, and where), or accounts that carry their own",
            ));
        }
        self.people_apart(global.as_ref(), &accounts)?;

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

        let has_global_person = global.is_some();
        let (identity, store, trust, answer_edits) = match global {
            Some(p) => (p.identity, p.store, p.trust, p.answer_edits),
            // Never used as a person: every account carries its own.
            None => (
                Identity::default(),
                StoreConfig::Vdir {
                    path: PathBuf::new(),
                },
                base.trust,
                true,
            ),
        };
        Ok(Config {
            file: Some(self.file.clone()),
            identity,
            store,
            answer_edits,
            person: None,
            has_global_person,
            state,
            lock_timeout,
            outgoing,
            accounts,
            policies,
            limits,
            max_replies_per_hour,
            max_answers_per_hour,
            address_book,
            trust,
        })
    }

    /// A person: `[identity]` and `[store]`, or an account's own.
    fn person(
        &self,
        identity_key: &str,
        identity: &Spanned<RawIdentity>,
        store_key: &str,
        store: &Spanned<RawStore>,
        base: &TrustBase,
    ) -> Result<Person, ConfigError> {
        let store_config = self.store(store_key, store)?;
        // Edits are followed in a vdir (a look at each file's stamp); a
        // CalDAV calendar would cost a request per invitation every look.
        let answer_edits = match (&store_config, store.get_ref().answer_edits) {
            (StoreConfig::Vdir { .. }, set) => set.unwrap_or(true),
            (StoreConfig::CalDav(_), Some(true)) => {
                return Err(self.err(
                    &format!("{store_key}.answer_edits"),
                    Some(store.span()),
                    "answer_edits works with a vdir store only; on a CalDAV calendar answer with `imipd respond`",
                ))
            }
            (StoreConfig::CalDav(_), _) => false,
        };
        Ok(Person {
            identity: self.identity(identity_key, identity)?,
            store: store_config,
            trust: self.person_trust(identity_key, base, identity.get_ref())?,
            answer_edits,
        })
    }

    /// `[trust]` and `[outgoing] sign`: the key files are read now, so a bad
    /// one is a configuration error.
    fn trust_base(
        &self,
        raw: Option<RawTrust>,
        sign: Option<Spanned<String>>,
        authserv_ids: &mut Vec<String>,
    ) -> Result<TrustBase, ConfigError> {
        use crate::trust::{self, Keys, Relay, Require};
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
        Ok(TrustBase {
            trust: t,
            anchors: keys.smime_anchors,
            public: keys.pgp_public,
            sign,
        })
    }

    /// One person's trust: the common part with the keys of their identity
    /// (`smime_certificate`, `smime_key`, `pgp_secret_key`) and signing.
    fn person_trust(
        &self,
        who: &str,
        base: &TrustBase,
        ids: &RawIdentity,
    ) -> Result<crate::trust::Trust, ConfigError> {
        use crate::trust::{self, Keys, Sign};
        let mut t = base.trust.clone();
        let mut keys = Keys {
            smime_anchors: base.anchors.clone(),
            pgp_public: base.public.clone(),
            ..Keys::default()
        };
        let sign = &base.sign;
        match (&ids.smime_certificate, &ids.smime_key) {
            (Some(c), Some(k)) => {
                let key = self.path(k.get_ref());
                if let Some(problem) = loose_secret_file(&key) {
                    return Err(self.err(&format!("{who}.smime_key"), Some(k.span()), problem));
                }
                keys.smime_me = Some(
                    trust::smime::Identity::load(&self.path(c.get_ref()), &key).map_err(|e| {
                        self.err(&format!("{who}.smime_certificate"), Some(c.span()), e)
                    })?,
                );
            }
            (Some(c), None) => {
                return Err(self.err(
                    &format!("{who}.smime_key"),
                    Some(c.span()),
                    "smime_certificate needs smime_key (my private key) beside it",
                ))
            }
            (None, Some(k)) => {
                return Err(self.err(
                    &format!("{who}.smime_certificate"),
                    Some(k.span()),
                    "smime_key needs smime_certificate (my certificate) beside it",
                ))
            }
            (None, None) => {}
        }
        if let Some(k) = &ids.pgp_secret_key {
            let key = self.path(k.get_ref());
            if let Some(problem) = loose_secret_file(&key) {
                return Err(self.err(&format!("{who}.pgp_secret_key"), Some(k.span()), problem));
            }
            keys.pgp_me = Some(
                trust::pgp::SecretKey::load(&key)
                    .map_err(|e| self.err(&format!("{who}.pgp_secret_key"), Some(k.span()), e))?,
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
                        format!("sign = \"smime\" needs {who} smime_certificate and smime_key"),
                    ))
                }
                "pgp" => {
                    return Err(self.err(
                        "outgoing.sign",
                        Some(s.span()),
                        format!("sign = \"pgp\" needs {who} pgp_secret_key"),
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

    /// `[identity]`, or an account's `identity = { … }`.
    fn identity(&self, key: &str, raw: &Spanned<RawIdentity>) -> Result<Identity, ConfigError> {
        let raw = raw.get_ref();
        let mut addresses = Vec::new();
        for a in raw.addresses.get_ref() {
            let bare = address::bare(a.get_ref());
            if !address::looks_like_email(&bare) {
                return Err(self.err(
                    &format!("{key}.addresses"),
                    Some(a.span()),
                    format!("`{}` is not an e-mail address", a.get_ref()),
                ));
            }
            addresses.push(bare);
        }
        if addresses.is_empty() {
            return Err(self.err(
                &format!("{key}.addresses"),
                Some(raw.addresses.span()),
                "give at least one address",
            ));
        }
        Ok(Identity {
            addresses,
            name: raw.name.clone().filter(|n| !n.trim().is_empty()),
            trusted_sent_by: raw
                .trusted_sent_by
                .clone()
                .unwrap_or_default()
                .iter()
                .map(|g| address::bare(g))
                .collect(),
        })
    }

    /// `[store]`, or an account's `store = { … }`: a vdir folder, or a
    /// CalDAV calendar.
    fn store(&self, key: &str, raw: &Spanned<RawStore>) -> Result<StoreConfig, ConfigError> {
        let span = raw.span();
        let raw = raw.get_ref();
        let kind = raw
            .kind
            .as_ref()
            .map(|k| k.get_ref().to_ascii_lowercase())
            .unwrap_or_else(|| "vdir".into());
        let caldav_only = [
            ("url", raw.url.is_some()),
            ("username", raw.username.is_some()),
            (
                "password",
                raw.password.is_some()
                    || raw.password_command.is_some()
                    || raw.password_file.is_some(),
            ),
            ("ca_file", raw.ca_file.is_some()),
            ("calendar", raw.calendar.is_some()),
            ("timeout", raw.timeout.is_some()),
        ];
        match kind.as_str() {
            "vdir" => {
                if let Some((k, _)) = caldav_only.iter().find(|(_, set)| *set) {
                    return Err(self.err(
                        &format!("{key}.{k}"),
                        Some(span),
                        format!("`{k}` belongs to a CalDAV store (type = \"caldav\")"),
                    ));
                }
                let path = raw.path.as_ref().ok_or_else(|| {
                    self.err(
                        &format!("{key}.path"),
                        Some(span.clone()),
                        "a vdir store needs a path (the folder of .ics files), or type = \"caldav\" and a url",
                    )
                })?;
                if path.get_ref().trim().is_empty() {
                    return Err(self.err(
                        &format!("{key}.path"),
                        Some(path.span()),
                        "must not be empty",
                    ));
                }
                Ok(StoreConfig::Vdir {
                    path: self.path(path.get_ref()),
                })
            }
            "caldav" => {
                if let Some(p) = &raw.path {
                    return Err(self.err(
                        &format!("{key}.path"),
                        Some(p.span()),
                        "`path` belongs to a vdir store; a CalDAV store has a url",
                    ));
                }
                let url = raw.url.as_ref().ok_or_else(|| {
                    self.err(
                        &format!("{key}.url"),
                        Some(span.clone()),
                        "a CalDAV store needs a url (the calendar's, the principal's, or the server's)",
                    )
                })?;
                let text = url.get_ref().trim();
                let parsed: Option<http::Uri> = text.parse().ok();
                let usable = parsed.as_ref().is_some_and(|u| {
                    matches!(u.scheme_str(), Some("https") | Some("http")) && u.host().is_some()
                });
                if !usable {
                    return Err(self.err(
                        &format!("{key}.url"),
                        Some(url.span()),
                        format!("`{text}` is not an http:// or https:// URL with a host"),
                    ));
                }
                let secret = self.secret(
                    key,
                    raw.password.clone(),
                    raw.password_command.clone(),
                    raw.password_file.as_ref(),
                )?;
                if secret.is_some() && raw.username.is_none() {
                    return Err(self.err(
                        &format!("{key}.username"),
                        Some(span),
                        "a password needs a username",
                    ));
                }
                Ok(StoreConfig::CalDav(Box::new(CalDavConfig {
                    url: text.to_string(),
                    username: raw.username.clone(),
                    secret,
                    ca_file: raw.ca_file.as_ref().map(|c| self.path(c.get_ref())),
                    calendar: raw
                        .calendar
                        .as_ref()
                        .map(|c| c.get_ref().trim().to_string())
                        .filter(|c| !c.is_empty()),
                    timeout: self.seconds(raw.timeout.as_ref(), &format!("{key}.timeout"), 60)?,
                })))
            }
            other => Err(self.err(
                &format!("{key}.type"),
                raw.kind.as_ref().map(|k| k.span()),
                format!("unknown store type `{other}`, expected \"vdir\" or \"caldav\""),
            )),
        }
    }

    /// Two people never share an address or a calendar: each has its own
    /// answered ledger and caps, so a shared one could be answered twice,
    /// and two processors writing one calendar could undo each other.
    fn people_apart(
        &self,
        global: Option<&Person>,
        accounts: &[Account],
    ) -> Result<(), ConfigError> {
        let mut people: Vec<(String, &Person)> = Vec::new();
        if let Some(g) = global {
            people.push(("[identity]".to_string(), g));
        }
        for a in accounts {
            if let Some(p) = &a.person {
                people.push((format!("account `{}`", a.name), p));
            }
        }
        for (i, (who, p)) in people.iter().enumerate() {
            for (other, q) in &people[..i] {
                if let Some(addr) = p
                    .identity
                    .addresses
                    .iter()
                    .find(|a| q.identity.addresses.contains(a))
                {
                    return Err(self.err(
                        "account.identity",
                        None,
                        format!("{who} and {other} both speak for {addr}: an address belongs to one person (one identity); give their mail one account, or one identity"),
                    ));
                }
                if same_store(&p.store, &q.store) {
                    return Err(self.err(
                        "account.store",
                        None,
                        format!("{who} and {other} use the same calendar ({}): each person needs a store of their own", p.store),
                    ));
                }
            }
        }
        Ok(())
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

/// Whether two stores are one calendar: the same vdir folder, or the same
/// CalDAV URL, login and calendar name.
fn same_store(a: &StoreConfig, b: &StoreConfig) -> bool {
    match (a, b) {
        (StoreConfig::Vdir { path: p }, StoreConfig::Vdir { path: q }) => {
            let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            canon(p) == canon(q)
        }
        (StoreConfig::CalDav(x), StoreConfig::CalDav(y)) => {
            x.url.trim_end_matches('/') == y.url.trim_end_matches('/')
                && x.username == y.username
                && x.calendar == y.calendar
        }
        _ => false,
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

impl Validator<'_> {
    /// "missing section [identity]" (or `[store]`), why, and a minimal
    /// example.
    fn missing(&self, section: &str, span: Option<Range<usize>>, why: &str) -> ConfigError {
        let example = match section {
            "identity" => {
                "[identity]\n    addresses = [\"you@example.com\"]   # your calendar addresses"
            }
            _ => "[store]\n    path = \"~/.calendars/invitations\"   # the vdir imipd files events into",
        };
        let mut e = self.err(
            section,
            span,
            format!(
                "missing section [{section}]: {why}; for example:\n\n    {example}\n\n\
                 (`imipd init` writes a commented starter configuration)"
            ),
        );
        e.key = None;
        e
    }
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
