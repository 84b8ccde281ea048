//! The durable outbox: every outgoing message is first written to
//! `STATE/outbox/` (one file, written atomically) and its key appended to the
//! answered ledger (`STATE/answered.log`), and only then sent; an entry is
//! removed only after the server accepted it. A crash loses nothing, and the
//! key — the same answer to the same request version — stops a second reply.
//! Also owns the transports: SMTP (lettre over rustls) and files.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::{Outgoing as OutgoingConfig, SmtpConfig, Tls};
use crate::reply::Outgoing;
use crate::store::write_atomic;

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
}

impl Outbox {
    pub fn open(state: &Path) -> anyhow::Result<Outbox> {
        let dir = state.join("outbox");
        fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create outbox {}: {e}", dir.display()))?;
        let ledger = state.join("answered.log");
        let mut answered = HashMap::new();
        match fs::File::open(&ledger) {
            Ok(f) => {
                for line in BufReader::new(f).lines() {
                    let line =
                        line.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ledger.display()))?;
                    let mut it = line.split('\t');
                    if let (Some(k), Some(c), Some(t)) = (it.next(), it.next(), it.next()) {
                        if let Ok(t) = t.parse() {
                            answered.insert(k.to_string(), (c.to_string(), t));
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => anyhow::bail!("cannot read {}: {e}", ledger.display()),
        }
        let mut outbox = Outbox {
            rejected: state.join("outbox-rejected"),
            dir,
            ledger,
            answered,
        };
        // Entries whose ledger line was lost in a crash still count.
        for e in outbox.pending()? {
            outbox
                .answered
                .entry(e.message.key.clone())
                .or_insert((e.message.counterpart.clone(), (e.seq / 1_000_000) as i64));
        }
        Ok(outbox)
    }

    /// Whether this answer was queued before (sent or not).
    pub fn answered(&self, key: &str) -> bool {
        self.answered.contains_key(key)
    }

    /// Answers to one counterpart queued within the last hour.
    pub fn recent(&self, counterpart: &str, now: DateTime<Utc>) -> usize {
        let since = now.timestamp() - 3600;
        self.answered
            .values()
            .filter(|(c, t)| c == counterpart && *t > since)
            .count()
    }

    /// Queue a message durably: the entry first, then the ledger line.
    pub fn enqueue(&mut self, message: Outgoing, now: DateTime<Utc>) -> anyhow::Result<()> {
        let mut seq = now.timestamp_micros().max(0) as u64;
        // Keep the order strict even within one microsecond.
        while self.dir.join(entry_name(seq, &message.key)).exists() {
            seq += 1;
        }
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
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.ledger)
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
pub struct Sender {
    dir: PathBuf,
    rejected: PathBuf,
}

impl Sender {
    /// Every queued entry, oldest first.
    pub fn pending(&self) -> anyhow::Result<Vec<Entry>> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.dir)
            .map_err(|e| anyhow::anyhow!("cannot read outbox {}: {e}", self.dir.display()))?;
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
        let mut reports = Vec::new();
        for mut entry in self.pending()? {
            if respect_backoff && entry.next_attempt > now.timestamp() {
                continue;
            }
            let name = entry_name(entry.seq, &entry.message.key);
            let result = transport.send(&entry).await;
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
                    fs::create_dir_all(&self.rejected).map_err(|e| {
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
        Ok(reports)
    }
}

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

    pub async fn send(&self, e: &Entry) -> Result<(), SendError> {
        match self {
            Transport::File(dir) => {
                fs::create_dir_all(dir).map_err(|err| {
                    SendError::Transient(format!("cannot create {}: {err}", dir.display()))
                })?;
                let name = format!("{:020}-{}.eml", e.seq, e.message.key);
                write_atomic(dir, &name, e.message.message.as_bytes())
                    .map_err(|err| SendError::Transient(format!("{err:#}")))
            }
            Transport::Smtp(cfg) => send_smtp(cfg, e).await,
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

/// Connect and log in without sending anything (`check --connect`).
pub async fn test_smtp(cfg: &SmtpConfig) -> Result<(), SendError> {
    let transport = smtp_transport(cfg)?;
    let server = format!("{}:{}", cfg.host, cfg.port);
    match tokio::time::timeout(
        cfg.timeout + Duration::from_secs(5),
        transport.test_connection(),
    )
    .await
    {
        Err(_) => Err(SendError::Transient(format!(
            "cannot connect to SMTP server {server}: timed out"
        ))),
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(SendError::Transient(format!(
            "cannot connect to SMTP server {server}: it did not answer"
        ))),
        Ok(Err(e)) => Err(SendError::Login(format!(
            "cannot connect to SMTP server {server}: {e}"
        ))),
    }
}

fn smtp_transport(
    cfg: &SmtpConfig,
) -> Result<lettre::AsyncSmtpTransport<lettre::Tokio1Executor>, SendError> {
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::Tls as LTls;
    use lettre::{AsyncSmtpTransport, Tokio1Executor};
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.clone())
        .port(cfg.port)
        .timeout(Some(cfg.timeout));
    b = match cfg.tls {
        Tls::Implicit => b.tls(LTls::Wrapper(tls_parameters(cfg)?)),
        Tls::StartTls => b.tls(LTls::Required(tls_parameters(cfg)?)),
        Tls::None => b.tls(LTls::None),
    };
    if let (Some(user), Some(secret)) = (&cfg.username, &cfg.secret) {
        let password = secret
            .resolve()
            .map_err(|err| SendError::Login(format!("cannot get the SMTP password: {err:#}")))?;
        b = b.credentials(Credentials::new(user.clone(), password));
    }
    Ok(b.build())
}

async fn send_smtp(cfg: &SmtpConfig, e: &Entry) -> Result<(), SendError> {
    use lettre::AsyncTransport;
    let server = format!("{}:{}", cfg.host, cfg.port);
    let transport = smtp_transport(cfg)?;
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
    let send = transport.send_raw(&envelope, e.message.message.as_bytes());
    match tokio::time::timeout(cfg.timeout + Duration::from_secs(5), send).await {
        Err(_) => Err(SendError::Transient(format!(
            "cannot send via SMTP server {server}: timed out"
        ))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => {
            let text = format!("cannot send via SMTP server {server}: {err}");
            let code = err.status().map(|c| c.to_string());
            let auth = text.contains("authentication")
                || code
                    .as_deref()
                    .is_some_and(|c| c.starts_with("535") || c.starts_with("530"));
            if auth {
                Err(SendError::Login(text))
            } else if err.is_permanent() {
                Err(SendError::Permanent(text))
            } else {
                Err(SendError::Transient(text))
            }
        }
    }
}
