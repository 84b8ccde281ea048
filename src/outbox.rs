//! The durable outbox: every outgoing message is first written to
//! `STATE/outbox/` (one file, written atomically) and its key appended to the
//! answered ledger (`STATE/answered.log`), and only then sent; an entry is
//! removed only after the server accepted it. A crash loses nothing, and the
//! key — the same answer to the same request version — stops a second reply.
//! Everything it writes holds mail and is private: entries, the ledger and
//! the `file` transport's messages are 0600, its folders 0700.
//! Also owns the transports: SMTP (lettre over rustls) and files.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{Outgoing as OutgoingConfig, SmtpConfig, Tls};
use crate::fsutil::write_atomic;
use crate::reply::Outgoing;

/// One queued message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Enqueue time in microseconds: the send order and the file name.
    pub seq: u64,
    #[serde(flatten)]
    pub message: Outgoing,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Unix seconds before which `run` does not try again.
    pub next_attempt: i64,
}

/// The result of one send attempt, for reporting.
#[derive(Debug, Clone, Serialize)]
pub struct SendReport {
    pub key: String,
    pub to: Vec<String>,
    pub summary: String,
    /// `sent`, `failed` (kept for the next pass) or `rejected` (the server
    /// refused it for good; moved to `outbox-rejected/`).
    pub status: &'static str,
    pub error: Option<String>,
}

/// Why sending stopped.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Try again later: the server is down, or said so (4xx), or the
    /// connection broke.
    #[error("{0}")]
    Transient(String),
    /// The server refuses this message (5xx): retrying will not help.
    #[error("{0}")]
    Permanent(String),
    /// The server refused the login: a configuration problem.
    #[error("{0}")]
    Login(String),
}

pub struct Outbox {
    dir: PathBuf,
    rejected: PathBuf,
    ledger: PathBuf,
    /// key → (counterpart, unix seconds) of every answer ever queued.
    answered: HashMap<String, (String, i64)>,
    /// The highest sequence number queued: the next one is higher.
    last_seq: u64,
    /// How much of the ledger has been read (another imipd may append:
    /// `respond` beside a running service).
    ledger_read: u64,
}

impl Outbox {
    pub fn open(state: &Path) -> anyhow::Result<Outbox> {
        let dir = state.join("outbox");
        crate::fsutil::create_private_dir(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create outbox {}: {e}", dir.display()))?;
        crate::fsutil::remove_temp_files(&dir);
        Outbox::read(state)
    }

    /// Open for reading only (a dry run): what was answered, nothing created.
    pub fn open_read_only(state: &Path) -> anyhow::Result<Outbox> {
        Outbox::read(state)
    }

    /// Open beside a running imipd (see [`crate::state::State::open_shared`]):
    /// the folder is created, nothing is cleaned up.
    pub fn open_shared(state: &Path) -> anyhow::Result<Outbox> {
        let dir = state.join("outbox");
        crate::fsutil::create_private_dir(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create outbox {}: {e}", dir.display()))?;
        Outbox::read(state)
    }

    fn read(state: &Path) -> anyhow::Result<Outbox> {
        let dir = state.join("outbox");
        let ledger = state.join("answered.log");
        let mut outbox = Outbox {
            rejected: state.join("outbox-rejected"),
            dir,
            ledger,
            answered: HashMap::new(),
            last_seq: 0,
            ledger_read: 0,
        };
        outbox.refresh()?;
        // Entries whose ledger line was lost in a crash still count.
        for e in outbox.pending()? {
            outbox.last_seq = outbox.last_seq.max(e.seq);
            outbox
                .answered
                .entry(e.message.key.clone())
                .or_insert((e.message.counterpart.clone(), (e.seq / 1_000_000) as i64));
        }
        Ok(outbox)
    }

    /// Read what another imipd appended to the answered ledger since it was
    /// last read (called under the write lock, before deciding).
    pub fn refresh(&mut self) -> anyhow::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = match fs::File::open(&self.ledger) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => anyhow::bail!("cannot read {}: {e}", self.ledger.display()),
        };
        let len = f
            .metadata()
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", self.ledger.display()))?
            .len();
        if len <= self.ledger_read {
            return Ok(());
        }
        let mut text = Vec::new();
        f.seek(SeekFrom::Start(self.ledger_read))
            .and_then(|_| f.read_to_end(&mut text))
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", self.ledger.display()))?;
        // Only whole lines: a line being written is read next time.
        let Some(end) = text.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        for line in text[..end].split(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(line);
            let mut it = line.split('\t');
            if let (Some(k), Some(c), Some(t)) = (it.next(), it.next(), it.next()) {
                if let Ok(t) = t.parse() {
                    self.answered.insert(k.to_string(), (c.to_string(), t));
                }
            }
        }
        self.ledger_read += end as u64 + 1;
        Ok(())
    }

    /// Whether this answer was queued before (sent or not).
    pub fn answered(&self, key: &str) -> bool {
        self.answered.contains_key(key)
    }

    /// Answers to one counterpart queued within the last hour (counterparts
    /// compared as [`crate::address::cap_key`]: sub-addresses and case folded).
    pub fn recent(&self, counterpart: &str, now: DateTime<Utc>) -> usize {
        let since = now.timestamp() - 3600;
        let who = crate::address::cap_key(counterpart);
        self.answered
            .values()
            .filter(|(c, t)| *t > since && crate::address::cap_key(c) == who)
            .count()
    }

    /// Answers to anyone queued within the last hour.
    pub fn recent_all(&self, now: DateTime<Utc>) -> usize {
        let since = now.timestamp() - 3600;
        self.answered.values().filter(|(_, t)| *t > since).count()
    }

    /// Queue a message durably: the entry first, then the ledger line.
    pub fn enqueue(&mut self, message: Outgoing, now: DateTime<Utc>) -> anyhow::Result<()> {
        // The order of sending is the order of queueing: the system clock
        // (not imipd's, which IMIPD_NOW may move), and always past the last
        // entry queued, even within one microsecond.
        let seq = (Utc::now().timestamp_micros().max(0) as u64).max(self.last_seq + 1);
        self.last_seq = seq;
        let entry = Entry {
            seq,
            message,
            attempts: 0,
            last_error: None,
            next_attempt: 0,
        };
        let name = entry_name(seq, &entry.message.key);
        let json = serde_json::to_vec_pretty(&entry)?;
        write_atomic(&self.dir, &name, &json)?;
        let mut f = crate::fsutil::open_append(&self.ledger, 0o600)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", self.ledger.display()))?;
        writeln!(
            f,
            "{}\t{}\t{}",
            entry.message.key,
            entry.message.counterpart,
            now.timestamp()
        )
        .and_then(|_| f.sync_data())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", self.ledger.display()))?;
        self.answered.insert(
            entry.message.key.clone(),
            (entry.message.counterpart.clone(), now.timestamp()),
        );
        Ok(())
    }

    /// The sending side of this outbox, which needs no ledger (the service
    /// sends from its own task while messages are being handled).
    pub fn sender(&self) -> Sender {
        Sender {
            dir: self.dir.clone(),
            rejected: self.rejected.clone(),
        }
    }

    /// Every queued entry, oldest first.
    pub fn pending(&self) -> anyhow::Result<Vec<Entry>> {
        self.sender().pending()
    }

    /// Try to send what is queued; see [`Sender::flush`].
    pub async fn flush(
        &mut self,
        transport: &Transport,
        now: DateTime<Utc>,
        respect_backoff: bool,
    ) -> anyhow::Result<Vec<SendReport>> {
        self.sender().flush(transport, now, respect_backoff).await
    }
}

/// Sends the entries of an outbox folder.
#[derive(Debug, Clone)]
pub struct Sender {
    dir: PathBuf,
    rejected: PathBuf,
}

impl Sender {
    /// The sending side of the outbox in a state folder.
    pub fn new(state: &Path) -> Sender {
        Sender {
            dir: state.join("outbox"),
            rejected: state.join("outbox-rejected"),
        }
    }

    /// Take `STATE/send.lock`, waiting (without blocking a thread) up to
    /// [`SEND_LOCK_WAIT`] for another imipd to finish sending; `None` when
    /// it is still busy then.
    async fn send_lock(&self) -> anyhow::Result<Option<fs::File>> {
        let Some(state) = self.dir.parent() else {
            return Ok(None);
        };
        let started = std::time::Instant::now();
        loop {
            match crate::state::take_lock(state, "send.lock", Duration::ZERO) {
                Ok(f) => return Ok(Some(f)),
                Err(e) if e.is::<crate::state::LockBusy>() => {
                    if started.elapsed() >= SEND_LOCK_WAIT {
                        return Ok(None);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every queued entry, oldest first.
    pub fn pending(&self) -> anyhow::Result<Vec<Entry>> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => anyhow::bail!("cannot read outbox {}: {e}", self.dir.display()),
        };
        for f in rd.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let text = fs::read(f.path())
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", f.path().display()))?;
            match serde_json::from_slice::<Entry>(&text) {
                Ok(e) => out.push(e),
                Err(e) => {
                    tracing::warn!(file = %f.path().display(), "cannot read outbox entry: {e}")
                }
            }
        }
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    /// Try to send what is queued (all of it, or with `respect_backoff` only
    /// what is due). Stops at the first login or connection failure: the
    /// rest would fail the same way.
    pub async fn flush(
        &self,
        transport: &Transport,
        now: DateTime<Utc>,
        respect_backoff: bool,
    ) -> anyhow::Result<Vec<SendReport>> {
        // One sender at a time (`respond` beside a running service): two
        // would send the same entry twice.
        let _lock = match self.send_lock().await? {
            Some(l) => l,
            None => {
                tracing::info!("another imipd is sending the outbox; what is queued stays for it");
                return Ok(Vec::new());
            }
        };
        let mut reports = Vec::new();
        let mut session = transport.session();
        for mut entry in self.pending()? {
            if respect_backoff && entry.next_attempt > now.timestamp() {
                continue;
            }
            let name = entry_name(entry.seq, &entry.message.key);
            let result = session.send(&entry).await;
            let mut report = SendReport {
                key: entry.message.key.clone(),
                to: entry.message.to.clone(),
                summary: entry.message.summary.clone(),
                status: "sent",
                error: None,
            };
            match result {
                Ok(()) => {
                    let path = self.dir.join(&name);
                    fs::remove_file(&path)
                        .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", path.display()))?;
                    let _ = fs::File::open(&self.dir).and_then(|d| d.sync_all());
                    reports.push(report);
                }
                Err(SendError::Permanent(msg)) => {
                    crate::fsutil::create_private_dir(&self.rejected).map_err(|e| {
                        anyhow::anyhow!("cannot create {}: {e}", self.rejected.display())
                    })?;
                    entry.last_error = Some(msg.clone());
                    write_atomic(&self.rejected, &name, &serde_json::to_vec_pretty(&entry)?)?;
                    let _ = fs::remove_file(self.dir.join(&name));
                    report.status = "rejected";
                    report.error = Some(msg);
                    reports.push(report);
                }
                Err(err) => {
                    entry.attempts += 1;
                    entry.last_error = Some(err.to_string());
                    // 1, 2, 4 ... minutes, at most 6 hours.
                    let wait = 60i64 << entry.attempts.min(9).saturating_sub(1);
                    entry.next_attempt = now.timestamp() + wait.min(6 * 3600);
                    write_atomic(&self.dir, &name, &serde_json::to_vec_pretty(&entry)?)?;
                    report.status = "failed";
                    report.error = Some(err.to_string());
                    reports.push(report);
                    break;
                }
            }
        }
        session.close().await;
        Ok(reports)
    }
}

/// How long a flush waits for another imipd that is sending.
pub const SEND_LOCK_WAIT: Duration = Duration::from_secs(120);

fn entry_name(seq: u64, key: &str) -> String {
    format!("{seq:020}-{key}.json")
}

/// How queued mail leaves.
pub enum Transport {
    /// Each message becomes `DIR/SEQ-KEY.eml` (sorted in sending order;
    /// writing the same entry again replaces the same file).
    File(PathBuf),
    Smtp(Box<SmtpConfig>),
}

impl Transport {
    pub fn from_config(c: &OutgoingConfig) -> Transport {
        match c {
            OutgoingConfig::File { path } => Transport::File(path.clone()),
            OutgoingConfig::Smtp(s) => Transport::Smtp(Box::new(s.clone())),
        }
    }

    /// A sending session: for SMTP one connection, opened on first use and
    /// reused for every message of a flush.
    pub fn session(&self) -> Session<'_> {
        if let Transport::File(dir) = self {
            clean_once(dir);
        }
        Session {
            transport: self,
            smtp: None,
        }
    }
}

/// Remove the temp files a killed run left in the file transport's folder,
/// once per process: sessions of several people (and other imipd
/// processes, shards sharing the folder) write there at the same time, and
/// a temp file being written must not be taken away.
fn clean_once(dir: &std::path::Path) {
    static CLEANED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut cleaned = CLEANED.lock().unwrap_or_else(|e| e.into_inner());
    if cleaned.iter().any(|d| d == dir) {
        return;
    }
    cleaned.push(dir.to_path_buf());
    if let Ok(rd) = fs::read_dir(dir) {
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // `.NAME.PID.tmp`: only a process that is gone left it.
            let pid = name
                .strip_suffix(".tmp")
                .and_then(|r| r.rsplit_once('.'))
                .map(|(_, pid)| pid.to_string());
            let alive = pid.is_some_and(|p| {
                std::path::Path::new("/proc/self").exists()
                    && std::path::Path::new("/proc").join(&p).exists()
            });
            if crate::fsutil::is_our_temp_file(&name) && !alive {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Sends messages one after the other over one connection.
pub struct Session<'t> {
    transport: &'t Transport,
    smtp: Option<lettre::transport::smtp::client::AsyncSmtpConnection>,
}

impl Session<'_> {
    /// Send one entry; `Ok` once the server accepted it (SMTP 250).
    pub async fn send(&mut self, e: &Entry) -> Result<(), SendError> {
        match self.transport {
            Transport::File(dir) => {
                fs::create_dir_all(dir).map_err(|err| {
                    SendError::Transient(format!("cannot create {}: {err}", dir.display()))
                })?;
                let name = format!("{:020}-{}.eml", e.seq, e.message.key);
                write_atomic(dir, &name, e.message.message.as_bytes())
                    .map_err(|err| SendError::Transient(format!("{err:#}")))
            }
            Transport::Smtp(cfg) => {
                if self.smtp.as_ref().is_none_or(|c| c.has_broken()) {
                    self.smtp = Some(smtp_connect(cfg).await?);
                }
                let conn = self.smtp.as_mut().expect("connected above");
                let r = smtp_send(cfg, conn, e).await;
                if r.is_err() {
                    self.smtp = None;
                }
                r
            }
        }
    }

    /// Say goodbye (SMTP QUIT), after the messages are accounted for.
    pub async fn close(mut self) {
        if let (Some(mut c), Transport::Smtp(cfg)) = (self.smtp.take(), self.transport) {
            let _ = tokio::time::timeout(cfg.timeout, c.quit()).await;
        }
    }
}

/// TLS parameters that trust the system roots plus an optional CA file.
fn tls_parameters(
    cfg: &SmtpConfig,
) -> Result<lettre::transport::smtp::client::TlsParameters, SendError> {
    use lettre::transport::smtp::client::{Certificate, TlsParameters};
    let mut b = TlsParameters::builder(cfg.host.clone());
    if let Some(ca) = &cfg.ca_file {
        let pem = fs::read(ca)
            .map_err(|e| SendError::Login(format!("cannot read CA file {}: {e}", ca.display())))?;
        let cert = Certificate::from_pem(&pem)
            .map_err(|e| SendError::Login(format!("cannot read CA file {}: {e}", ca.display())))?;
        b = b.add_root_certificate(cert);
    }
    b.build_rustls()
        .map_err(|e| SendError::Login(format!("cannot set up TLS for {}: {e}", cfg.host)))
}

/// Implicit TLS under lettre's SMTP client, with imipd's own rustls setup.
#[derive(Debug)]
struct TlsTcp(tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

impl tokio::io::AsyncRead for TlsTcp {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsTcp {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl lettre::transport::smtp::client::AsyncTokioStream for TlsTcp {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

/// Connect (TCP_NODELAY: the end of a message goes out at once, so the time
/// between the server accepting it and imipd knowing so stays tiny), secure,
/// and log in.
async fn smtp_connect(
    cfg: &SmtpConfig,
) -> Result<lettre::transport::smtp::client::AsyncSmtpConnection, SendError> {
    use lettre::transport::smtp::authentication::{Credentials, Mechanism};
    use lettre::transport::smtp::client::AsyncSmtpConnection;
    use lettre::transport::smtp::extension::ClientId;

    let server = format!("{}:{}", cfg.host, cfg.port);
    let t = cfg.timeout;
    let down =
        |e: String| SendError::Transient(format!("cannot connect to SMTP server {server}: {e}"));
    let tcp = match tokio::time::timeout(
        t,
        tokio::net::TcpStream::connect((cfg.host.as_str(), cfg.port)),
    )
    .await
    {
        Err(_) => return Err(down("timed out".into())),
        Ok(Err(e)) => return Err(down(e.to_string())),
        Ok(Ok(s)) => s,
    };
    let _ = tcp.set_nodelay(true);
    let hello = ClientId::default();
    let refused =
        |e: String| SendError::Login(format!("cannot connect to SMTP server {server}: {e}"));
    let mut conn = match cfg.tls {
        Tls::Implicit => {
            let config = crate::tls::client_config(cfg.ca_file.as_deref())
                .map_err(|e| refused(format!("{e:#}")))?;
            let name = rustls_pki_types::ServerName::try_from(cfg.host.clone())
                .map_err(|e| refused(format!("invalid server name: {e}")))?;
            let tls = match tokio::time::timeout(
                t,
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            {
                Err(_) => return Err(down("TLS handshake timed out".into())),
                Ok(Err(e)) => {
                    return Err(refused(crate::tls::explain_handshake_error(
                        &e,
                        &cfg.host,
                        cfg.port,
                        crate::tls::Service::Smtp,
                    )))
                }
                Ok(Ok(s)) => s,
            };
            timed(
                t,
                AsyncSmtpConnection::connect_with_transport(Box::new(TlsTcp(tls)), &hello),
            )
            .await
            .map_err(down)?
        }
        Tls::StartTls | Tls::None => {
            let mut c = timed(
                t,
                AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &hello),
            )
            .await
            .map_err(|e| {
                // A server that waits for a TLS handshake sends no greeting.
                if e == "timed out" {
                    down(format!(
                        "no greeting within {} s; if port {} expects TLS from the first byte (as 465 does), set tls = \"implicit\"",
                        t.as_secs(),
                        cfg.port
                    ))
                } else {
                    down(e)
                }
            })?;
            if cfg.tls == Tls::StartTls {
                let params = tls_parameters(cfg)?;
                match tokio::time::timeout(t, c.starttls(params, &hello)).await {
                    Err(_) => return Err(refused("STARTTLS timed out".into())),
                    Ok(Err(e)) => {
                        return Err(refused(crate::tls::explain_handshake_error(
                            &e,
                            &cfg.host,
                            cfg.port,
                            crate::tls::Service::Smtp,
                        )))
                    }
                    Ok(Ok(())) => {}
                }
            }
            c
        }
    };
    if let (Some(user), Some(secret)) = (&cfg.username, &cfg.secret) {
        let password = secret
            .resolve_within(t)
            .await
            .map_err(|err| SendError::Login(format!("cannot get the SMTP password: {err:#}")))?;
        let creds = Credentials::new(user.clone(), password);
        match tokio::time::timeout(t, conn.auth(&[Mechanism::Plain, Mechanism::Login], &creds))
            .await
        {
            Err(_) => {
                return Err(SendError::Login(format!(
                    "cannot log in to SMTP server {server} as {user}: timed out"
                )))
            }
            Ok(Err(e)) if e.is_permanent() => {
                return Err(SendError::Login(format!(
                    "cannot log in to SMTP server {server} as {user}: the server refused the login for {user} \
                     (check `password`, `password_command` or `password_file`, and `username`, in [outgoing]): {e}"
                )))
            }
            Ok(Err(e)) => {
                return Err(SendError::Login(format!(
                    "cannot log in to SMTP server {server} as {user}: {e}"
                )))
            }
            Ok(Ok(_)) => {}
        }
    }
    Ok(conn)
}

async fn timed<T, E: std::fmt::Display>(
    t: Duration,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(t, f).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Connect and log in without sending anything (`check --connect`).
pub async fn test_smtp(cfg: &SmtpConfig) -> Result<(), SendError> {
    let mut c = smtp_connect(cfg).await?;
    let _ = tokio::time::timeout(cfg.timeout, c.quit()).await;
    Ok(())
}

async fn smtp_send(
    cfg: &SmtpConfig,
    conn: &mut lettre::transport::smtp::client::AsyncSmtpConnection,
    e: &Entry,
) -> Result<(), SendError> {
    let server = format!("{}:{}", cfg.host, cfg.port);
    let from = e.message.from.parse().map_err(|err| {
        SendError::Permanent(format!("cannot use sender {}: {err}", e.message.from))
    })?;
    let to: Vec<lettre::Address> = e
        .message
        .to
        .iter()
        .map(|t| t.parse())
        .collect::<Result<_, _>>()
        .map_err(|err| SendError::Permanent(format!("cannot use recipient: {err}")))?;
    let envelope = lettre::address::Envelope::new(Some(from), to)
        .map_err(|err| SendError::Permanent(format!("cannot build envelope: {err}")))?;
    match tokio::time::timeout(
        cfg.timeout,
        conn.send(&envelope, e.message.message.as_bytes()),
    )
    .await
    {
        Err(_) => Err(SendError::Transient(format!(
            "cannot send via SMTP server {server}: timed out"
        ))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) if err.is_permanent() => Err(SendError::Permanent(format!(
            "cannot send via SMTP server {server}: {err}"
        ))),
        Ok(Err(err)) => Err(SendError::Transient(format!(
            "cannot send via SMTP server {server}: {err}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn answer(key: &str, to: &str) -> Outgoing {
        Outgoing {
            key: key.into(),
            from: "bob@example.com".into(),
            to: vec![to.into()],
            counterpart: to.into(),
            summary: format!("answer {key}"),
            method: "REPLY".into(),
            message: format!("Subject: {key}\r\n\r\nbody\r\n"),
        }
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn queued_answers_are_remembered_and_counted_per_person() {
        let d = tempfile::tempdir().unwrap();
        let now = at("2027-01-05T10:00:00Z");
        let mut o = Outbox::open(d.path()).unwrap();
        o.enqueue(answer("k1", "alice@example.com"), now).unwrap();
        o.enqueue(answer("k2", "Alice+x@example.com"), now).unwrap();
        o.enqueue(answer("k3", "carol@example.com"), now).unwrap();
        assert!(o.answered("k1") && !o.answered("k9"));
        assert_eq!(o.recent("alice@example.com", now), 2, "sub-addresses fold");
        assert_eq!(o.recent_all(now), 3);
        assert_eq!(o.recent_all(now + chrono::Duration::hours(2)), 0);
        // The ledger survives a restart; so do entries whose line was lost.
        let o = Outbox::open(d.path()).unwrap();
        assert!(o.answered("k2"));
        std::fs::remove_file(d.path().join("answered.log")).unwrap();
        let o = Outbox::open(d.path()).unwrap();
        assert!(o.answered("k3"), "recovered from the queued entry");
        assert_eq!(
            o.pending()
                .unwrap()
                .iter()
                .map(|e| e.message.key.as_str())
                .collect::<Vec<_>>(),
            ["k1", "k2", "k3"],
            "in the order queued"
        );
    }

    #[test]
    fn sending_removes_entries_and_failures_back_off() {
        let d = tempfile::tempdir().unwrap();
        let now = at("2027-01-05T10:00:00Z");
        let mut o = Outbox::open(d.path()).unwrap();
        o.enqueue(answer("k1", "alice@example.com"), now).unwrap();
        o.enqueue(answer("k2", "carol@example.com"), now).unwrap();
        // A transport that cannot write: the first entry fails and stays,
        // with its next attempt a minute later; the rest waits.
        let blocked = d.path().join("not-a-folder");
        std::fs::write(&blocked, "x").unwrap();
        let reports = run(o.flush(&Transport::File(blocked.join("out")), now, true)).unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].status, "failed");
        let pending = o.pending().unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].attempts, 1);
        assert_eq!(pending[0].next_attempt, now.timestamp() + 60);
        // Within its backoff the failed entry waits, and the one behind it
        // goes (one bad message does not hold the others); without the
        // backoff (`once`, `process`), the failed one is tried again.
        let out = d.path().join("out");
        let reports = run(o.flush(&Transport::File(out.clone()), now, true)).unwrap();
        assert_eq!(
            reports.iter().map(|r| r.key.as_str()).collect::<Vec<_>>(),
            ["k2"]
        );
        let reports = run(o.flush(&Transport::File(out.clone()), now, false)).unwrap();
        assert_eq!(
            reports
                .iter()
                .map(|r| (r.key.as_str(), r.status))
                .collect::<Vec<_>>(),
            [("k1", "sent")]
        );
        assert!(o.pending().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
    }

    #[test]
    fn a_read_only_outbox_creates_nothing() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let o = Outbox::open_read_only(&state).unwrap();
        assert!(o.pending().unwrap().is_empty());
        assert!(!state.exists());
    }
}
