//! `imipd check --connect`: log in to every IMAP and SMTP server the
//! configuration names and say what imipd would use there.

use crate::config::{Config, Source};
use crate::driver;
use crate::source::imap;

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
    if let Some(crate::config::Outgoing::Smtp(s)) = &cfg.outgoing {
        match rt.block_on(crate::outbox::test_smtp(s)) {
            Ok(()) => crate::say!(
                "outgoing: SMTP server {}:{} accepts the connection and login",
                s.host,
                s.port
            ),
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
