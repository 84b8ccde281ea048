//! Connecting to the IMAP server: TCP, TLS (implicit or STARTTLS) or —
//! only when configured — plain, the greeting, the login (LOGIN,
//! AUTHENTICATE PLAIN, XOAUTH2) and the capabilities imipd uses
//! ([`Caps`]), each step within the account's timeout. [`connect`] gives a
//! logged-in [`Connection`]; what a pass does with it is in
//! [`fetch`](super::fetch). [`ImapError`] says why an IMAP step failed.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpStream;

use crate::config::{ImapAuth, ImapConfig, Limits, Tls};

use super::wire::{ImapStream, Transport, WireLimits};

pub type Session = async_imap::Session<ImapStream>;

/// Why an IMAP step failed.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    /// The server cannot be reached, or its certificate is refused.
    #[error("cannot connect to IMAP server {server}: {reason}")]
    Connect { server: String, reason: String },
    /// The server refused the login.
    #[error("cannot log in to IMAP server {server} as {user}: {reason}")]
    Login {
        server: String,
        user: String,
        reason: String,
    },
    /// The server refused to open a folder: it does not exist (deleted,
    /// misspelt) or may not be read. The connection is still good.
    #[error("cannot select folder {folder} on IMAP server {server}: {reason} (is the name in `folders` right? the folder is skipped and tried again at the next poll)")]
    Folder {
        server: String,
        folder: String,
        reason: String,
    },
    /// A command failed or the connection broke mid-way.
    #[error("cannot {what} on IMAP server {server}: {reason}")]
    Command {
        server: String,
        what: String,
        reason: String,
    },
}

impl ImapError {
    /// Exit status 3 cases: unreachable server or refused login.
    pub fn is_server_problem(&self) -> bool {
        matches!(self, ImapError::Connect { .. } | ImapError::Login { .. })
    }
}

/// What the server offers that imipd uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Caps {
    pub idle: bool,
    pub condstore: bool,
    #[serde(rename = "move")]
    pub move_: bool,
}

/// A logged-in connection.
pub struct Connection {
    pub session: Session,
    pub caps: Caps,
    pub server: String,
    pub bytes_read: Arc<AtomicU64>,
    /// Literals the [`WireGuard`](super::WireGuard) cut so far.
    pub(super) literals_cut: Arc<AtomicU64>,
    pub(super) timeout: Duration,
}

struct PlainAuth {
    user: String,
    password: String,
}

impl async_imap::Authenticator for PlainAuth {
    type Response = String;
    fn process(&mut self, _challenge: &[u8]) -> String {
        format!("\0{}\0{}", self.user, self.password)
    }
}

struct XOAuth2 {
    user: String,
    token: String,
    sent: bool,
}

impl async_imap::Authenticator for XOAuth2 {
    type Response = String;
    fn process(&mut self, _challenge: &[u8]) -> String {
        if self.sent {
            // The server sent an error challenge: answer empty to get the NO.
            return String::new();
        }
        self.sent = true;
        format!("user={}\x01auth=Bearer {}\x01\x01", self.user, self.token)
    }
}

pub(super) async fn timed<T, E: fmt::Display>(
    t: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(t, fut).await {
        Err(_) => Err(format!("no answer within {} s", t.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Connect, secure and log in. `limits` bound what the server's answers
/// may cost (see [`WireGuard`](super::WireGuard)).
pub async fn connect(cfg: &ImapConfig, limits: &Limits) -> Result<Connection, ImapError> {
    let server = format!("{}:{}", cfg.host, cfg.port);
    let conn_err = |reason: String| ImapError::Connect {
        server: server.clone(),
        reason,
    };
    let login_err = |reason: String| ImapError::Login {
        server: server.clone(),
        user: cfg.username.clone(),
        reason,
    };
    // The secret first, so that no connection waits on it. A command
    // (password_command, oauth_token_command) runs off the worker threads,
    // within the account's timeout.
    let secret = cfg
        .secret
        .resolve_within(cfg.timeout)
        .await
        .map_err(|e| login_err(format!("{e:#}")))?;
    let tcp = timed(
        cfg.timeout,
        TcpStream::connect((cfg.host.as_str(), cfg.port)),
    )
    .await
    .map_err(conn_err)?;
    let _ = tcp.set_nodelay(true);
    let counter = Arc::new(AtomicU64::new(0));
    let wire = WireLimits::new(limits);
    let stream = |t: Transport| ImapStream::new(t, counter.clone(), wire);
    let tls = || -> Result<tokio_rustls::TlsConnector, ImapError> {
        let config = crate::tls::client_config(cfg.ca_file.as_deref())
            .map_err(|e| conn_err(format!("{e:#}")))?;
        Ok(tokio_rustls::TlsConnector::from(config))
    };
    let name = || {
        rustls_pki_types::ServerName::try_from(cfg.host.clone())
            .map_err(|e| conn_err(format!("invalid server name {}: {e}", cfg.host)))
    };
    let handshake = |tcp: TcpStream| async {
        let connector = tls()?;
        let name = name()?;
        match tokio::time::timeout(cfg.timeout, connector.connect(name, tcp)).await {
            Err(_) => Err(conn_err(format!(
                "no TLS answer within {} s",
                cfg.timeout.as_secs()
            ))),
            Ok(Err(e)) => Err(conn_err(crate::tls::explain_handshake_error(
                &e as &(dyn std::error::Error + 'static),
                &cfg.host,
                cfg.port,
                crate::tls::Service::Imap,
            ))),
            Ok(Ok(s)) => Ok(s),
        }
    };
    // A server that waits for a TLS handshake never sends a plain greeting.
    let plain_greeting = |e: String| {
        if e.starts_with("no greeting") {
            conn_err(if cfg.port == 993 {
                format!("{e}; port 993 expects TLS from the first byte: set tls = \"implicit\"")
            } else {
                format!(
                    "{e}; if port {} expects TLS from the first byte (as 993 does), set tls = \"implicit\"",
                    cfg.port
                )
            })
        } else {
            conn_err(e)
        }
    };
    let client = match cfg.tls {
        Tls::Implicit => {
            let s = handshake(tcp).await?;
            let mut c = async_imap::Client::new(stream(Transport::Tls(Box::new(s))));
            greeting(&mut c, cfg.timeout).await.map_err(conn_err)?;
            c
        }
        Tls::None => {
            let mut c = async_imap::Client::new(stream(Transport::Plain(tcp)));
            greeting(&mut c, cfg.timeout)
                .await
                .map_err(plain_greeting)?;
            c
        }
        Tls::StartTls => {
            let mut c = async_imap::Client::new(stream(Transport::Plain(tcp)));
            greeting(&mut c, cfg.timeout)
                .await
                .map_err(plain_greeting)?;
            timed(cfg.timeout, c.run_command_and_check_ok("STARTTLS", None))
                .await
                .map_err(|e| conn_err(format!("STARTTLS refused: {e}")))?;
            let tcp = c
                .into_inner()
                .into_plain()
                .ok_or_else(|| conn_err("the stream was not plain before STARTTLS".into()))?;
            let s = handshake(tcp).await?;
            async_imap::Client::new(stream(Transport::Tls(Box::new(s))))
        }
    };
    let literals_cut = client.get_ref().guard.cut.clone();
    let logged_in = match cfg.auth {
        ImapAuth::Login => {
            tokio::time::timeout(cfg.timeout, client.login(&cfg.username, &secret)).await
        }
        ImapAuth::Plain => {
            tokio::time::timeout(
                cfg.timeout,
                client.authenticate(
                    "PLAIN",
                    PlainAuth {
                        user: cfg.username.clone(),
                        password: secret,
                    },
                ),
            )
            .await
        }
        ImapAuth::Xoauth2 => {
            tokio::time::timeout(
                cfg.timeout,
                client.authenticate(
                    "XOAUTH2",
                    XOAuth2 {
                        user: cfg.username.clone(),
                        token: secret,
                        sent: false,
                    },
                ),
            )
            .await
        }
    };
    let mut session = match logged_in {
        Err(_) => return Err(login_err("no answer".into())),
        Ok(Err((async_imap::error::Error::No(r), _))) => {
            let check = if cfg.auth == ImapAuth::Xoauth2 {
                "check `oauth_token_command` (the token may have expired)"
            } else {
                "check `password`, `password_command` or `password_file`, and `username`"
            };
            return Err(login_err(format!(
                "the server refused the login for {} ({check}): {}",
                cfg.username,
                r.trim()
            )));
        }
        Ok(Err((e, _))) => return Err(login_err(e.to_string())),
        Ok(Ok(s)) => s,
    };
    let caps = timed(cfg.timeout, session.capabilities())
        .await
        .map_err(|e| ImapError::Command {
            server: server.clone(),
            what: "read capabilities".into(),
            reason: e,
        })?;
    let caps = Caps {
        idle: caps.has_str("IDLE"),
        condstore: caps.has_str("CONDSTORE") || caps.has_str("QRESYNC"),
        move_: caps.has_str("MOVE"),
    };
    Ok(Connection {
        session,
        caps,
        server,
        bytes_read: counter,
        literals_cut,
        timeout: cfg.timeout,
    })
}

async fn greeting(c: &mut async_imap::Client<ImapStream>, t: Duration) -> Result<(), String> {
    match tokio::time::timeout(t, c.read_response()).await {
        Err(_) => Err(format!("no greeting within {} s", t.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(None)) => Err("the server closed the connection".into()),
        Ok(Ok(Some(_))) => Ok(()),
    }
}
