//! `imipd check --connect`: log in to every IMAP, SMTP and CalDAV server
//! the configuration names and say what imipd would use there (for a
//! CalDAV store: the calendar it found).

use crate::config::{Config, Source};
use crate::driver;
use crate::source::imap;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// `imipd check --connect` for one person: log in to its IMAP servers and
/// its CalDAV store, and say what imipd would use.
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
            for folder in &icfg.folders {
                let m = conn.select(folder).await?;
                crate::say!(
                    "  folder {folder}: {} messages, UIDVALIDITY {}, watched with {}",
                    m.exists,
                    m.uid_validity.unwrap_or(0),
                    if conn.caps.idle && icfg.idle {
                        "IDLE"
                    } else {
                        "polling"
                    }
                );
            }
            conn.logout().await;
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
pub fn check_outgoing(cfg: &Config) -> u8 {
    let Some(crate::config::Outgoing::Smtp(s)) = &cfg.outgoing else {
        return driver::EXIT_OK;
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            crate::say_err!("imipd: {e:#}");
            return driver::EXIT_SOME_FAILED;
        }
    };
    match rt.block_on(crate::outbox::test_smtp(s)) {
        Ok(()) => {
            crate::say!(
                "outgoing: SMTP server {}:{} accepts the connection and login",
                s.host,
                s.port
            );
            driver::EXIT_OK
        }
        Err(e) => {
            crate::say_err!("imipd: outgoing: {e}");
            driver::EXIT_SERVER
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
