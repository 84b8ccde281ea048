//! `imipd check`: the configuration as imipd understood it (identity,
//! store, state, each account, each policy by name and action, the outgoing
//! transport), and the truth about whether it can run: the store, the state
//! and a `file` transport's folder can be written, every Maildir exists,
//! there is an account to read. Person by person when the configuration
//! serves several ([`Config::people`]). With `--connect`, it logs in to
//! every IMAP, SMTP and CalDAV server and says what imipd would use there
//! (for a CalDAV store: the calendar it found).

use std::path::Path;

use crate::config::{self, Config, Source, Tls};
use crate::driver;
use crate::source::imap;

/// Exit status of a configuration `check` finds unusable.
pub const EXIT_UNUSABLE: u8 = 2;

/// What `imipd check` is asked.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask<'a> {
    /// Only this account's person (`--account`).
    pub account: Option<&'a str>,
    /// Log in to every server (`--connect`).
    pub connect: bool,
    /// Only `imipd process` reads mail: no account is fine.
    pub process_only: bool,
}

/// Print what the configuration says and probe what a run writes into;
/// the exit status: 0, 2 when imipd could not run with it, and with
/// `connect` 3 when a server could not be reached or refused the login.
pub fn check(cfg: &Config, ask: Ask<'_>) -> u8 {
    crate::say!(
        "configuration {} is valid",
        cfg.file.as_deref().unwrap_or(Path::new("?")).display()
    );
    let people = match ask.account {
        Some(name) => match cfg.for_account(Some(name)) {
            Ok(p) => vec![p],
            Err(e) => {
                crate::say_err!("imipd: {e:#}");
                return EXIT_UNUSABLE;
            }
        },
        None => {
            let mut people = cfg.people();
            if people.is_empty() {
                people.push(cfg.clone());
            }
            people
        }
    };
    let several = people.len() > 1;
    let mut unusable = false;
    let mut status = driver::EXIT_OK;
    for p in &people {
        if several || p.person.is_some() {
            crate::say!("person {}:", p.person.as_deref().unwrap_or("[identity]"));
        }
        unusable |= check_person(p);
        if ask.connect {
            status = status.max(check_connect(p));
        }
    }
    let mut problem = |text: String| {
        crate::say_err!("imipd: {text}");
        unusable = true;
    };
    if cfg.accounts.is_empty() && !ask.process_only {
        problem(
            "no [[account]]: `imipd once` and `imipd run` would read no mail; add one (see \
             config.example.toml), or, when only a mail server pipe runs `imipd process`, \
             check with `imipd check --process-only`"
                .to_string(),
        );
    }
    if cfg.policies.is_empty() {
        crate::say!("policies: none (every iTIP message is filed, nothing is answered)");
    } else {
        crate::say!("policies (the first that matches wins; otherwise file):");
        for p in &cfg.policies {
            let keys: Vec<&str> = p.matchers.iter().map(|m| m.def.key).collect();
            let when = if keys.is_empty() {
                "always".to_string()
            } else {
                format!("when {}", keys.join(", "))
            };
            crate::say!("  {}: {} ({when})", p.name, p.action.as_str());
        }
    }
    match &cfg.outgoing {
        None => crate::say!("outgoing: none (nothing is ever sent)"),
        Some(config::Outgoing::File { path }) => {
            crate::say!("outgoing: file, into {}", path.display())
        }
        Some(config::Outgoing::Smtp(s)) => crate::say!(
            "outgoing: smtp {}:{} ({}), {}",
            s.host,
            s.port,
            tls_words(s.tls),
            match &s.username {
                Some(u) => format!("login as {u}"),
                None => "no login".to_string(),
            }
        ),
    }
    for warning in plain_text_passwords(cfg) {
        crate::say_err!("imipd: warning: {warning}");
    }
    if let Some(config::Outgoing::File { path }) = &cfg.outgoing {
        if let Err(e) = crate::fsutil::probe_writable(path) {
            problem(format!(
                "cannot use outgoing folder {}: {e:#}",
                path.display()
            ));
        }
    }
    if ask.connect {
        status = status.max(check_outgoing(cfg));
    }
    if unusable {
        EXIT_UNUSABLE
    } else {
        status
    }
}

/// Say what one person's configuration holds (identity, store, state,
/// accounts, trust), and make sure its store (a vdir) and state folders
/// can be created and written as a run would; true when one cannot.
fn check_person(cfg: &Config) -> bool {
    crate::say!("identity: {}", cfg.identity.addresses.join(", "));
    crate::say!("store: {}", cfg.store);
    crate::say!("state: {}", cfg.state.display());
    let mut unusable = false;
    let mut problem = |text: String| {
        crate::say_err!("imipd: {text}");
        unusable = true;
    };
    for a in &cfg.accounts {
        let since = a
            .since
            .map(|s| format!(", mail since {s}"))
            .unwrap_or_default();
        match &a.source {
            Source::Imap(i) => crate::say!(
                "account {}: imap {} on {}:{} ({}), folders {}{since}",
                a.name,
                i.username,
                i.host,
                i.port,
                tls_words(i.tls),
                i.folders.join(", ")
            ),
            Source::Maildir { path, .. } => {
                crate::say!("account {}: maildir {}{since}", a.name, path.display());
                if !path.join("cur").is_dir() && !path.join("new").is_dir() {
                    problem(format!(
                        "account {}: the Maildir {} does not exist (it has no cur/ or new/): check `path`",
                        a.name,
                        path.display()
                    ));
                }
            }
        }
    }
    crate::say!("trust: {}", crate::trust::summary(&cfg.trust));
    // The folders a run writes into: created as a run would, then probed.
    let mut probe = |what: &str, dir: &Path, r: anyhow::Result<()>| {
        if let Err(e) = r {
            problem(format!("cannot use {what} {}: {e:#}", dir.display()));
        }
    };
    if let Some(dir) = cfg.store.vdir_path() {
        probe("store folder", dir, crate::fsutil::probe_writable(dir));
    }
    probe(
        "state folder",
        &cfg.state,
        crate::state::State::probe_writable(&cfg.state),
    );
    unusable
}

fn tls_words(t: Tls) -> &'static str {
    match t {
        Tls::Implicit => "TLS",
        Tls::StartTls => "STARTTLS",
        Tls::None => "no TLS",
    }
}

/// Where a password would travel in plain text (`tls = "none"`) to a host
/// that is not this machine.
fn plain_text_passwords(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let say = |who: String, host: &str| {
        format!(
            "{who}: the password travels without TLS (tls = \"none\") to {host}, which is not this machine; \
             anyone on the way can read it (use tls = \"implicit\" or \"starttls\")"
        )
    };
    for a in &cfg.accounts {
        if let Source::Imap(i) = &a.source {
            if i.tls == Tls::None && !is_loopback(&i.host) {
                out.push(say(format!("account {}", a.name), &i.host));
            }
        }
    }
    if let Some(config::Outgoing::Smtp(s)) = &cfg.outgoing {
        if s.tls == Tls::None && s.secret.is_some() && !is_loopback(&s.host) {
            out.push(say("outgoing".to_string(), &s.host));
        }
    }
    let mut stores = vec![("store".to_string(), &cfg.store)];
    for a in &cfg.accounts {
        if let Some(p) = &a.person {
            stores.push((format!("account {} store", a.name), &p.store));
        }
    }
    for (who, store) in stores {
        if let config::StoreConfig::CalDav(c) = store {
            let uri: Option<http::Uri> = c.url.parse().ok();
            let host = uri
                .as_ref()
                .and_then(|u| u.host())
                .unwrap_or("")
                .to_string();
            if c.secret.is_some()
                && uri.as_ref().and_then(|u| u.scheme_str()) == Some("http")
                && !is_loopback(&host)
            {
                out.push(format!(
                    "{who}: the password travels without TLS (an http:// URL) to {host}, which is not this machine; \
                     anyone on the way can read it (use https://)"
                ));
            }
        }
    }
    out
}

/// `localhost`, a name under `.localhost` (RFC 6761), or a loopback address.
fn is_loopback(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    let bare = h.trim_start_matches('[').trim_end_matches(']');
    h == "localhost"
        || h.ends_with(".localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A runtime for the logins, or `None` after saying why there is none.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            crate::say_err!("imipd: cannot start the async runtime: {e}");
            None
        }
    }
}

/// `imipd check --connect` for one person: log in to its IMAP servers and
/// its CalDAV store, and say what imipd would use.
fn check_connect(cfg: &Config) -> u8 {
    // The servers' answers are parsed on a thread with the IMAP stack.
    imap::on_imap_stack(|| check_connect_here(cfg)).unwrap_or_else(|e| {
        crate::say_err!("imipd: {e:#}");
        driver::EXIT_SOME_FAILED
    })
}

fn check_connect_here(cfg: &Config) -> u8 {
    let Some(rt) = runtime() else {
        return driver::EXIT_SOME_FAILED;
    };
    let mut status = driver::EXIT_OK;
    for account in &cfg.accounts {
        let Source::Imap(icfg) = &account.source else {
            continue;
        };
        let r: Result<(), imap::ImapError> = rt.block_on(async {
            let mut conn = imap::connect(icfg, &cfg.limits).await?;
            crate::say!(
                "account {}: logged in to {} as {} (IDLE: {}, CONDSTORE: {}, MOVE: {})",
                account.name,
                conn.server,
                icfg.username,
                yes(conn.caps.idle),
                yes(conn.caps.condstore),
                yes(conn.caps.move_)
            );
            let mut refused = false;
            for folder in &icfg.folders {
                match conn.select(folder).await {
                    Ok(m) => crate::say!(
                        "  folder {folder}: {} messages, UIDVALIDITY {}, watched with {}",
                        m.exists,
                        m.uid_validity.unwrap_or(0),
                        if conn.caps.idle && icfg.idle {
                            "IDLE"
                        } else {
                            "polling"
                        }
                    ),
                    // The others are still listed.
                    Err(e @ imap::ImapError::Folder { .. }) => {
                        crate::say_err!("imipd: account {}: {e}", account.name);
                        refused = true;
                    }
                    Err(e) => return Err(e),
                }
            }
            conn.logout().await;
            if refused {
                status = status.max(driver::EXIT_SOME_FAILED);
            }
            Ok(())
        });
        if let Err(e) = r {
            crate::say_err!("imipd: account {}: {e}", account.name);
            status = status.max(if e.is_server_problem() {
                driver::EXIT_SERVER
            } else {
                driver::EXIT_SOME_FAILED
            });
        }
    }
    if let crate::config::StoreConfig::CalDav(c) = &cfg.store {
        let store = crate::store::caldav::CalDav::open(c, true);
        match store.connect() {
            Ok(found) => crate::say!(
                "store: logged in to CalDAV server {}{}; calendar {}at {} (sync-collection: {})",
                c.url,
                c.username
                    .as_deref()
                    .map(|u| format!(" as {u}"))
                    .unwrap_or_default(),
                found
                    .name
                    .as_deref()
                    .map(|n| format!("\"{n}\" "))
                    .unwrap_or_default(),
                found.url,
                yes(found.sync)
            ),
            Err(e) => {
                crate::say_err!("imipd: store: {e:#}");
                status = status.max(driver::EXIT_SERVER);
            }
        }
    }
    status
}

/// `imipd check --connect`: log in to the SMTP server, if any.
fn check_outgoing(cfg: &Config) -> u8 {
    let Some(crate::config::Outgoing::Smtp(s)) = &cfg.outgoing else {
        return driver::EXIT_OK;
    };
    let Some(rt) = runtime() else {
        return driver::EXIT_SOME_FAILED;
    };
    let mut status = driver::EXIT_OK;
    match rt.block_on(crate::outbox::test_smtp(s)) {
            Ok(()) => match &s.username {
                Some(user) if s.secret.is_some() => crate::say!(
                    "outgoing: SMTP server {}:{} accepts the connection and the login as {user}",
                    s.host,
                    s.port
                ),
                _ => crate::say!(
                    "outgoing: SMTP server {}:{} accepts the connection; no login is configured \
                     (no username and password), so whether it relays imipd's replies shows only when one is sent",
                    s.host,
                    s.port
                ),
            },
            Err(e) => {
                crate::say_err!("imipd: outgoing: {e}");
                status = status.max(driver::EXIT_SERVER);
            }
        }
    status
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
