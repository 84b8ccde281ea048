//! `imipd check`: the configuration as imipd understood it (identity,
//! store, state, each account, each policy by name and action, the outgoing
//! transport), and the truth about whether it can run: the store, the state
//! and a `file` transport's folder can be written, every Maildir exists,
//! there is an account to read. With `--connect`, it logs in to every IMAP
//! and SMTP server and says what imipd would use there.

use std::path::Path;

use crate::config::{self, Config, Source, Tls};
use crate::driver;
use crate::source::imap;

/// Exit status of a configuration `check` finds unusable.
pub const EXIT_UNUSABLE: u8 = 2;

/// Print what the configuration says and probe what a run writes into;
/// the exit status: 0, or 2 when imipd could not run with it.
pub fn check(cfg: &Config, process_only: bool) -> u8 {
    crate::say!(
        "configuration {} is valid",
        cfg.file.as_deref().unwrap_or(Path::new("?")).display()
    );
    crate::say!("identity: {}", cfg.identity.addresses.join(", "));
    crate::say!("store: {}", cfg.store.display());
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
    if cfg.accounts.is_empty() && !process_only {
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
    // The folders a run writes into: created as a run would, then probed.
    let mut probe = |what: &str, dir: &Path, r: anyhow::Result<()>| {
        if let Err(e) = r {
            problem(format!("cannot use {what} {}: {e:#}", dir.display()));
        }
    };
    probe(
        "store folder",
        &cfg.store,
        crate::fsutil::probe_writable(&cfg.store),
    );
    probe(
        "state folder",
        &cfg.state,
        crate::state::State::probe_writable(&cfg.state),
    );
    if let Some(config::Outgoing::File { path }) = &cfg.outgoing {
        probe("outgoing folder", path, crate::fsutil::probe_writable(path));
    }
    if unusable {
        EXIT_UNUSABLE
    } else {
        driver::EXIT_OK
    }
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// `imipd check --connect`: log in to every server and say what imipd would use.
pub fn check_connect(cfg: &Config) -> u8 {
    // The servers' answers are parsed on a thread with the IMAP stack.
    imap::on_imap_stack(|| check_connect_here(cfg)).unwrap_or_else(|e| {
        crate::say_err!("imipd: {e:#}");
        driver::EXIT_SOME_FAILED
    })
}

fn check_connect_here(cfg: &Config) -> u8 {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            crate::say_err!("imipd: {e:#}");
            return driver::EXIT_SOME_FAILED;
        }
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
    if let Some(crate::config::Outgoing::Smtp(s)) = &cfg.outgoing {
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
