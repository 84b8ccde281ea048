//! The IMAP source (async-imap over tokio-rustls): connecting and logging in
//! (implicit TLS, STARTTLS or — only when configured — plain; LOGIN,
//! AUTHENTICATE PLAIN, XOAUTH2), and one pass over a folder that touches only
//! what is needed:
//!
//! - one SELECT tells whether anything arrived (UIDVALIDITY, UIDNEXT; the
//!   folder state remembers them, the last UID handled and HIGHESTMODSEQ);
//!   nothing new means no FETCH at all;
//! - new mail is fetched in batches as BODYSTRUCTURE plus a few header
//!   fields; only messages with calendar parts get a second FETCH, of those
//!   parts alone (`BODY.PEEK[n]`), so a 20 MB attachment is never downloaded;
//! - handled iTIP mail gets the keyword `$iMIPProcessed` (or is moved), never
//!   `\Seen` unless configured, and is never deleted.
//!
//! Every network step has a timeout.

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_imap::imap_proto::{BodyStructure, ContentEncoding, SectionPath};
use async_imap::types::{Fetch, Flag, Mailbox};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{ImapAuth, ImapConfig, Limits, Tls};
use crate::process::{MessageOutcome, Origin, Processor};
use crate::store::{safe_name, write_atomic};

/// The connection under the IMAP session: plain TCP or TLS, counting the
/// bytes read (for the benchmark's "bytes fetched").
pub enum ImapStream {
    Plain(TcpStream, Arc<AtomicU64>),
    Tls(
        Box<tokio_rustls::client::TlsStream<TcpStream>>,
        Arc<AtomicU64>,
    ),
}

impl fmt::Debug for ImapStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImapStream::Plain(..) => write!(f, "ImapStream::Plain"),
            ImapStream::Tls(..) => write!(f, "ImapStream::Tls"),
        }
    }
}

impl AsyncRead for ImapStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let (r, counter) = match self.get_mut() {
            ImapStream::Plain(s, c) => (Pin::new(s).poll_read(cx, buf), c),
            ImapStream::Tls(s, c) => (Pin::new(s.as_mut()).poll_read(cx, buf), c),
        };
        counter.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for ImapStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ImapStream::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            ImapStream::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s, _) => Pin::new(s).poll_flush(cx),
            ImapStream::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            ImapStream::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

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
    timeout: Duration,
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

async fn timed<T, E: fmt::Display>(
    t: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(t, fut).await {
        Err(_) => Err(format!("no answer within {} s", t.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Connect, secure and log in.
pub async fn connect(cfg: &ImapConfig) -> Result<Connection, ImapError> {
    let server = format!("{}:{}", cfg.host, cfg.port);
    let conn_err = |reason: String| ImapError::Connect {
        server: server.clone(),
        reason,
    };
    let tcp = timed(
        cfg.timeout,
        TcpStream::connect((cfg.host.as_str(), cfg.port)),
    )
    .await
    .map_err(conn_err)?;
    let _ = tcp.set_nodelay(true);
    let counter = Arc::new(AtomicU64::new(0));
    let tls = || -> Result<tokio_rustls::TlsConnector, ImapError> {
        let config = crate::tls::client_config(cfg.ca_file.as_deref())
            .map_err(|e| conn_err(format!("{e:#}")))?;
        Ok(tokio_rustls::TlsConnector::from(config))
    };
    let name = || {
        rustls_pki_types::ServerName::try_from(cfg.host.clone())
            .map_err(|e| conn_err(format!("invalid server name {}: {e}", cfg.host)))
    };
    let client = match cfg.tls {
        Tls::Implicit => {
            let s = timed(cfg.timeout, tls()?.connect(name()?, tcp))
                .await
                .map_err(conn_err)?;
            let mut c = async_imap::Client::new(ImapStream::Tls(Box::new(s), counter.clone()));
            greeting(&mut c, cfg.timeout).await.map_err(conn_err)?;
            c
        }
        Tls::None => {
            let mut c = async_imap::Client::new(ImapStream::Plain(tcp, counter.clone()));
            greeting(&mut c, cfg.timeout).await.map_err(conn_err)?;
            c
        }
        Tls::StartTls => {
            let mut c = async_imap::Client::new(ImapStream::Plain(tcp, counter.clone()));
            greeting(&mut c, cfg.timeout).await.map_err(conn_err)?;
            timed(cfg.timeout, c.run_command_and_check_ok("STARTTLS", None))
                .await
                .map_err(|e| conn_err(format!("STARTTLS refused: {e}")))?;
            let ImapStream::Plain(tcp, _) = c.into_inner() else {
                unreachable!("the stream was plain before STARTTLS")
            };
            let s = timed(cfg.timeout, tls()?.connect(name()?, tcp))
                .await
                .map_err(conn_err)?;
            async_imap::Client::new(ImapStream::Tls(Box::new(s), counter.clone()))
        }
    };
    let secret = cfg.secret.resolve().map_err(|e| ImapError::Login {
        server: server.clone(),
        user: cfg.username.clone(),
        reason: format!("{e:#}"),
    })?;
    let login_err = |reason: String| ImapError::Login {
        server: server.clone(),
        user: cfg.username.clone(),
        reason,
    };
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

/// What imipd remembers about a folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderState {
    pub uidvalidity: u32,
    /// Every UID up to this one has been handled.
    pub last_uid: u32,
    pub uidnext: u32,
    pub highestmodseq: Option<u64>,
    /// Some message could not be handled: look again next time.
    pub retry: bool,
}

fn state_path(state_dir: &std::path::Path, account: &str, folder: &str) -> (PathBuf, String) {
    let dir = state_dir
        .join("imap")
        .join(safe_name(account).trim_end_matches(".ics"));
    let name = format!("{}.json", safe_name(folder).trim_end_matches(".ics"));
    (dir, name)
}

pub fn load_state(state_dir: &std::path::Path, account: &str, folder: &str) -> FolderState {
    let (dir, name) = state_path(state_dir, account, folder);
    std::fs::read(dir.join(name))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save_state(
    state_dir: &std::path::Path,
    account: &str,
    folder: &str,
    s: &FolderState,
) -> anyhow::Result<()> {
    let (dir, name) = state_path(state_dir, account, folder);
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    write_atomic(&dir, &name, &serde_json::to_vec_pretty(s)?)
}

/// Counters of one folder pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    pub folder: String,
    pub unchanged: bool,
    pub examined: usize,
    pub with_calendar: usize,
    pub failed: usize,
    /// UID FETCH commands sent (0 for an unchanged folder).
    pub fetch_commands: usize,
    /// Bytes read from the server during the pass.
    pub bytes_read: u64,
}

/// The messages of one pass, reported as they are handled.
pub type Report<'r> = &'r mut (dyn FnMut(&MessageOutcome) + Send);

/// Everything one pass needs besides the connection.
pub struct PassContext<'a, 'p> {
    pub account: &'a str,
    pub cfg: &'a ImapConfig,
    pub limits: &'a Limits,
    pub state_dir: &'a std::path::Path,
    pub processor: &'a Mutex<Processor<'p>>,
    pub dry_run: bool,
    /// Set when the service is asked to stop: the pass ends after the
    /// message in hand.
    pub stop: Option<&'a std::sync::atomic::AtomicBool>,
}

const HEADER_FIELDS: &str = "FROM SENDER TO CC MESSAGE-ID REFERENCES IN-REPLY-TO SUBJECT DATE AUTHENTICATION-RESULTS AUTO-SUBMITTED";
const BATCH: u32 = 200;

impl Connection {
    fn err(&self, what: impl Into<String>, reason: impl fmt::Display) -> ImapError {
        ImapError::Command {
            server: self.server.clone(),
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// SELECT a folder (with CONDSTORE where offered).
    pub async fn select(&mut self, folder: &str) -> Result<Mailbox, ImapError> {
        let t = self.timeout;
        let r = if self.caps.condstore {
            timed(t, self.session.select_condstore(folder)).await
        } else {
            timed(t, self.session.select(folder)).await
        };
        r.map_err(|e| self.err(format!("select folder {folder}"), e))
    }

    async fn fetch(&mut self, uids: &str, query: &str) -> Result<Vec<Fetch>, ImapError> {
        let t = self.timeout;
        let r: Result<Vec<Fetch>, String> = async {
            let stream = timed(t, self.session.uid_fetch(uids, query)).await?;
            timed(t, stream.try_collect::<Vec<Fetch>>()).await
        }
        .await;
        r.map_err(|e| self.err(format!("fetch UID {uids}"), e))
    }

    async fn run(&mut self, what: &str, command: &str) -> Result<(), ImapError> {
        let t = self.timeout;
        let r = timed(t, self.session.run_command_and_check_ok(command)).await;
        r.map_err(|e| self.err(what, e))
    }

    /// One pass over a folder: handle every message that arrived since the
    /// last one, in UID order.
    pub async fn pass(
        &mut self,
        folder: &str,
        ctx: &PassContext<'_, '_>,
        report: Report<'_>,
    ) -> Result<PassReport, ImapError> {
        let before = self.bytes_read.load(Ordering::Relaxed);
        let mut rep = self.pass_inner(folder, ctx, report).await?;
        rep.bytes_read = self.bytes_read.load(Ordering::Relaxed) - before;
        Ok(rep)
    }

    async fn pass_inner(
        &mut self,
        folder: &str,
        ctx: &PassContext<'_, '_>,
        report: Report<'_>,
    ) -> Result<PassReport, ImapError> {
        let mut rep = PassReport {
            folder: folder.to_string(),
            ..PassReport::default()
        };
        let mailbox = self.select(folder).await?;
        let uidvalidity = mailbox.uid_validity.unwrap_or(0);
        let uidnext = mailbox.uid_next.unwrap_or(0);
        let mut st = load_state(ctx.state_dir, ctx.account, folder);
        if st.uidvalidity != uidvalidity {
            if st.uidvalidity != 0 {
                tracing::info!(
                    account = ctx.account,
                    folder,
                    "UIDVALIDITY changed: rescanning the folder"
                );
            }
            st = FolderState {
                uidvalidity,
                ..FolderState::default()
            };
        }
        let nothing_new = uidnext != 0 && uidnext.saturating_sub(1) <= st.last_uid;
        if (nothing_new && !st.retry) || mailbox.exists == 0 {
            rep.unchanged = true;
            if !ctx.dry_run && (st.uidnext != uidnext || st.highestmodseq != mailbox.highest_modseq)
            {
                st.uidnext = uidnext;
                st.highestmodseq = mailbox.highest_modseq;
                save_state(ctx.state_dir, ctx.account, folder, &st)
                    .map_err(|e| self.err("save folder state", format!("{e:#}")))?;
            }
            return Ok(rep);
        }
        let keyword_ok = mailbox.permanent_flags.iter().any(|f| {
            matches!(f, Flag::MayCreate)
                || matches!(f, Flag::Custom(k) if k.eq_ignore_ascii_case(&ctx.cfg.keyword))
        });
        let end = if uidnext > 0 { uidnext - 1 } else { u32::MAX };
        let mut start = st.last_uid.saturating_add(1);
        let mut contiguous = true;
        let mut any_failed = false;
        while start <= end {
            let stop = start.saturating_add(BATCH - 1).min(end);
            let range = if uidnext == 0 {
                format!("{start}:*")
            } else {
                format!("{start}:{stop}")
            };
            let query = format!(
                "(UID FLAGS RFC822.SIZE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS ({HEADER_FIELDS})])"
            );
            rep.fetch_commands += 1;
            let mut batch = self.fetch(&range, &query).await?;
            batch.retain(|f| f.uid.is_some_and(|u| u >= start));
            batch.sort_by_key(|f| f.uid);
            for f in &batch {
                if ctx.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                    contiguous = false;
                    break;
                }
                let uid = f.uid.unwrap_or(0);
                rep.examined += 1;
                let done = self
                    .message(uid, f, folder, keyword_ok, ctx, &mut rep, report)
                    .await?;
                if done {
                    if contiguous {
                        st.last_uid = uid;
                    }
                } else {
                    contiguous = false;
                    any_failed = true;
                    rep.failed += 1;
                }
            }
            if contiguous {
                st.last_uid = st.last_uid.max(stop.min(end));
            }
            if !ctx.dry_run {
                save_state(ctx.state_dir, ctx.account, folder, &st)
                    .map_err(|e| self.err("save folder state", format!("{e:#}")))?;
            }
            if uidnext == 0 || ctx.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                break;
            }
            start = stop + 1;
        }
        st.retry = any_failed;
        st.uidnext = uidnext;
        st.highestmodseq = mailbox.highest_modseq;
        if !ctx.dry_run {
            save_state(ctx.state_dir, ctx.account, folder, &st)
                .map_err(|e| self.err("save folder state", format!("{e:#}")))?;
        }
        Ok(rep)
    }

    /// Handle one message; `Ok(false)` when it must be tried again later.
    #[allow(clippy::too_many_arguments)]
    async fn message(
        &mut self,
        uid: u32,
        f: &Fetch,
        folder: &str,
        keyword_ok: bool,
        ctx: &PassContext<'_, '_>,
        rep: &mut PassReport,
        report: Report<'_>,
    ) -> Result<bool, ImapError> {
        if f.flags()
            .any(|fl| matches!(fl, Flag::Custom(ref k) if k.eq_ignore_ascii_case(&ctx.cfg.keyword)))
        {
            return Ok(true); // handled before (a crash after marking, or a rescan)
        }
        let header = f.header().unwrap_or_default().to_vec();
        let structure = f
            .bodystructure()
            .map(|b| calendar_parts(b, ctx.limits.max_depth))
            .unwrap_or_default();
        let mut problems = Vec::new();
        if structure.too_deep {
            problems.push(format!(
                "MIME parts are nested deeper than {} levels (limits.max_depth); the deeper parts were not read",
                ctx.limits.max_depth
            ));
        }
        // Past the depth limit the server's view of the structure is not to
        // be trusted either (Dovecot flattens what it will not parse): such a
        // message is reported and nothing of it is fetched or acted on.
        let parts = if structure.too_deep {
            Vec::new()
        } else {
            structure.parts
        };
        if parts.is_empty() && problems.is_empty() {
            return Ok(true); // no calendar: nothing to do, nothing to mark
        }
        if !parts.is_empty() {
            rep.with_calendar += 1;
        }
        // BODYSTRUCTURE gives the encoded size: allow for base64's 4/3.
        let limit = ctx.limits.max_part_bytes;
        let too_big = |p: &CalPart| {
            let decoded = if p.encoding == "base64" {
                p.size as usize / 4 * 3
            } else {
                p.size as usize
            };
            decoded > limit
        };
        for p in parts.iter().filter(|p| too_big(p)) {
            problems.push(format!(
                "a {} part of {} bytes is larger than the limit of {limit} bytes (limits.max_part_bytes) and was not read",
                p.content_type, p.size
            ));
        }
        let wanted: Vec<&CalPart> = parts.iter().filter(|p| !too_big(p)).collect();
        let sections: Vec<String> = wanted
            .iter()
            .map(|p| format!("BODY.PEEK[{}]", p.section()))
            .collect();
        rep.fetch_commands += 1;
        let fetched = if sections.is_empty() {
            Vec::new()
        } else {
            self.fetch(&uid.to_string(), &format!("(UID {})", sections.join(" ")))
                .await?
        };
        let mut bodies = Vec::new();
        for p in &wanted {
            let path = SectionPath::Part(p.path.clone(), None);
            let body = fetched
                .iter()
                .find_map(|x| x.section(&path))
                .unwrap_or_default()
                .to_vec();
            bodies.push((*p, body));
        }
        let raw = synthetic_message(&header, &bodies);
        let source = format!("{}/{folder}/{uid}", ctx.account);
        let outcome = {
            let mut p = ctx.processor.lock().unwrap_or_else(|e| e.into_inner());
            p.process_from(
                &raw,
                Origin {
                    source: &source,
                    account: Some(ctx.account),
                    folder: Some(folder),
                    can_move: ctx.cfg.quarantine_folder.is_some(),
                    problems: &problems,
                },
            )
        };
        report(&outcome);
        if outcome.failed() {
            return Ok(false);
        }
        if ctx.dry_run {
            return Ok(true);
        }
        let set = uid.to_string();
        if let (true, Some(q)) = (outcome.quarantine, &ctx.cfg.quarantine_folder) {
            self.move_to(&set, q).await?;
            return Ok(true);
        }
        if !outcome.imip {
            return Ok(true);
        }
        if let Some(dest) = &ctx.cfg.move_to {
            self.move_to(&set, dest).await?;
        } else if keyword_ok {
            let seen = if ctx.cfg.mark_seen { " \\Seen" } else { "" };
            self.run(
                "mark handled mail",
                &format!("UID STORE {set} +FLAGS.SILENT ({}{seen})", ctx.cfg.keyword),
            )
            .await?;
        } else if ctx.cfg.mark_seen {
            self.run(
                "mark handled mail",
                &format!("UID STORE {set} +FLAGS.SILENT (\\Seen)"),
            )
            .await?;
        }
        Ok(true)
    }

    /// Move messages (MOVE, else COPY: a copy is never followed by a delete).
    async fn move_to(&mut self, set: &str, dest: &str) -> Result<(), ImapError> {
        let quoted = quote(dest);
        let cmd = if self.caps.move_ {
            format!("UID MOVE {set} {quoted}")
        } else {
            format!("UID COPY {set} {quoted}")
        };
        if self
            .run(&format!("move mail to {dest}"), &cmd)
            .await
            .is_err()
        {
            // The folder may not exist yet.
            let _ = self
                .run(
                    &format!("create folder {dest}"),
                    &format!("CREATE {quoted}"),
                )
                .await;
            self.run(&format!("move mail to {dest}"), &cmd).await?;
        }
        Ok(())
    }

    /// Wait in IDLE on a folder until something happens there, the time is
    /// up, or `stop` resolves. Returns the connection for the next command.
    pub async fn idle(
        mut self,
        folder: &str,
        wait: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<Connection, ImapError> {
        self.select(folder).await?;
        let server = self.server.clone();
        let t = self.timeout;
        let err = |what: &str, e: String| ImapError::Command {
            server: server.clone(),
            what: what.to_string(),
            reason: e,
        };
        let mut handle = self.session.idle();
        timed(t, handle.init())
            .await
            .map_err(|e| err("start IDLE", e))?;
        {
            // Keep the stop source alive while waiting: dropping it ends IDLE.
            let (fut, _interrupt) = handle.wait_with_timeout(wait);
            tokio::select! {
                r = fut => { r.map_err(|e| err("wait in IDLE", e.to_string()))?; }
                _ = stop => {}
            }
        }
        self.session = timed(t, handle.done())
            .await
            .map_err(|e| err("end IDLE", e))?;
        Ok(self)
    }

    pub async fn logout(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.session.logout()).await;
    }
}

/// IMAP quoted string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A calendar part found in a BODYSTRUCTURE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalPart {
    /// The part number path ("2.1" → [2, 1]); for a single-part message [1].
    pub path: Vec<u32>,
    pub content_type: String,
    pub params: Vec<(String, String)>,
    pub encoding: String,
    pub size: u32,
    /// Inside a forwarded message/rfc822.
    pub forwarded: bool,
}

impl CalPart {
    fn section(&self) -> String {
        self.path
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// The calendar parts (text/calendar, application/ics) of a BODYSTRUCTURE.
pub fn calendar_parts(bs: &BodyStructure<'_>, max_depth: usize) -> Structure {
    let mut s = Structure::default();
    walk(bs, &mut Vec::new(), false, true, 0, max_depth, &mut s);
    s
}

/// What a BODYSTRUCTURE says about calendar data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Structure {
    pub parts: Vec<CalPart>,
    /// Parts are nested deeper than `limits.max_depth` (not walked further).
    pub too_deep: bool,
}

#[allow(clippy::too_many_arguments)]
fn walk(
    bs: &BodyStructure<'_>,
    path: &mut Vec<u32>,
    forwarded: bool,
    top: bool,
    depth: usize,
    max_depth: usize,
    s: &mut Structure,
) {
    // The same depth rule as the MIME walker of `process`.
    if depth > max_depth {
        s.too_deep = true;
        return;
    }
    match bs {
        BodyStructure::Multipart { bodies, .. } => {
            for (i, b) in bodies.iter().enumerate() {
                path.push(i as u32 + 1);
                walk(b, path, forwarded, false, depth + 1, max_depth, s);
                path.pop();
            }
        }
        BodyStructure::Message { body, .. } => {
            // The parts of an encapsulated message are numbered under it;
            // a non-multipart body of it is part 1.
            let inner_multipart = matches!(**body, BodyStructure::Multipart { .. });
            if inner_multipart {
                walk(body, path, true, false, depth + 1, max_depth, s);
            } else {
                path.push(1);
                walk(body, path, true, false, depth + 1, max_depth, s);
                path.pop();
            }
        }
        BodyStructure::Basic { common, other, .. } | BodyStructure::Text { common, other, .. } => {
            let ty = common.ty.ty.to_ascii_lowercase();
            let sub = common.ty.subtype.to_ascii_lowercase();
            if (ty == "text" && sub == "calendar") || (ty == "application" && sub == "ics") {
                let p = if top { vec![1] } else { path.clone() };
                s.parts.push(CalPart {
                    path: p,
                    content_type: format!("{ty}/{sub}"),
                    params: common
                        .ty
                        .params
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    encoding: match &other.transfer_encoding {
                        ContentEncoding::SevenBit => "7bit".into(),
                        ContentEncoding::EightBit => "8bit".into(),
                        ContentEncoding::Binary => "binary".into(),
                        ContentEncoding::Base64 => "base64".into(),
                        ContentEncoding::QuotedPrintable => "quoted-printable".into(),
                        ContentEncoding::Other(o) => o.to_string(),
                    },
                    size: other.octets,
                    forwarded,
                });
            }
        }
    }
}

/// The message as imipd's classifier reads it, built from the fetched
/// header fields and the calendar parts alone (their MIME headers rebuilt
/// from the BODYSTRUCTURE). Forwarded parts are wrapped in a message/rfc822
/// part so they are still known as forwarded.
pub fn synthetic_message(header: &[u8], bodies: &[(&CalPart, Vec<u8>)]) -> Vec<u8> {
    let mut head = header.to_vec();
    while head.last().is_some_and(|b| *b == b'\r' || *b == b'\n') {
        head.pop();
    }
    let boundary = {
        let mut b = String::from("imipd-part-boundary");
        while bodies
            .iter()
            .any(|(_, body)| body.windows(b.len()).any(|w| w == b.as_bytes()))
        {
            b.push('x');
        }
        b
    };
    let mut out = head;
    out.extend_from_slice(
        format!("\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n").as_bytes(),
    );
    for (p, body) in bodies {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        if p.forwarded {
            out.extend_from_slice(
                b"Content-Type: message/rfc822\r\n\r\nFrom: forwarded@imipd.invalid\r\nMIME-Version: 1.0\r\n",
            );
        }
        let params: String = p
            .params
            .iter()
            .map(|(k, v)| format!("; {k}=\"{}\"", v.replace('"', "")))
            .collect();
        out.extend_from_slice(
            format!(
                "Content-Type: {}{params}\r\nContent-Transfer-Encoding: {}\r\n\r\n",
                p.content_type, p.encoding
            )
            .as_bytes(),
        );
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}
