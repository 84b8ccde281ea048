//! A real SMTP receiver: `tests/harness/smtp_receiver.py` (aiosmtpd) as a
//! child process on 127.0.0.1, writing every accepted message to a folder
//! that [`SmtpServer::received`] reads back.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::certs::Certs;

/// How the receiver speaks TLS (with the certificate in [`SmtpServer::certs`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP; STARTTLS is not offered.
    #[default]
    None,
    /// STARTTLS offered and required before MAIL FROM.
    StartTls,
    /// TLS from the first byte (SMTPS, "wrapper" mode).
    Implicit,
}

#[derive(Clone, Debug, Default)]
pub struct SmtpOptions {
    pub tls: SmtpTls,
    /// Required user and password. AUTH PLAIN and LOGIN are offered (also
    /// without TLS) and required before MAIL; bad credentials get 535.
    /// `None`: no AUTH offered, anybody may send.
    pub auth: Option<(String, String)>,
    /// `(lmtp_port, map)`: also deliver each accepted message over LMTP to
    /// 127.0.0.1:`lmtp_port` (e.g. [`super::dovecot::Dovecot::lmtp_port`]),
    /// once per envelope recipient. `map` rewrites envelope recipients
    /// (case-insensitively) to mailbox logins; unmapped recipients are
    /// delivered as they are (LMTP refuses unknown users, which is recorded in
    /// [`Received::lmtp_error`]). The delivery happens before the 250 to DATA,
    /// so once a message shows in [`SmtpServer::received`] it is in the mailbox.
    pub lmtp_forward: Option<(u16, Vec<(String, String)>)>,
}

impl SmtpOptions {
    pub fn plain() -> SmtpOptions {
        SmtpOptions::default()
    }
    pub fn with_tls(mut self, tls: SmtpTls) -> SmtpOptions {
        self.tls = tls;
        self
    }
    pub fn with_auth(mut self, user: &str, password: &str) -> SmtpOptions {
        self.auth = Some((user.to_string(), password.to_string()));
        self
    }
    pub fn with_lmtp_forward(mut self, lmtp_port: u16, map: &[(&str, &str)]) -> SmtpOptions {
        let map = map
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        self.lmtp_forward = Some((lmtp_port, map));
        self
    }
}

/// One message the receiver accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The MAIL FROM address ("" for the null sender `<>`).
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message exactly as received after DATA (dot-unstuffed, CRLF line
    /// ends as sent on the wire, without the final ".").
    pub data: Vec<u8>,
    /// The login the client authenticated as, if it did.
    pub auth_user: Option<String>,
    /// Whether the message came over TLS (STARTTLS or implicit).
    pub tls: bool,
    /// ESMTP MAIL parameters (e.g. "SIZE=123", "BODY=8BITMIME").
    pub mail_options: Vec<String>,
    /// With an LMTP forward: what went wrong delivering it, if anything.
    pub lmtp_error: Option<String>,
}

impl Received {
    pub fn data_str(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

pub struct SmtpServer {
    pub port: u16,
    pub certs: Certs,
    pub opts: SmtpOptions,
    /// Holds `out/` (one JSON file per message) and `receiver.log`.
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SmtpServer {
    /// Start the receiver on a free port and wait until it accepts connections.
    pub fn start(opts: SmtpOptions) -> SmtpServer {
        let dir = super::temp_dir("imipd-smtp-");
        std::fs::create_dir_all(dir.path().join("out")).unwrap();
        let certs = Certs::generate();
        let mut server = SmtpServer {
            port: 0,
            certs,
            opts,
            dir,
            child: None,
        };
        // A port may be taken by someone else between free_port() and the
        // receiver's bind: then take another.
        for attempt in 1.. {
            server.port = super::free_port();
            if server.spawn() {
                return server;
            }
            if attempt >= 5 {
                panic!("SMTP receiver did not start; log:\n{}", server.log());
            }
        }
        unreachable!()
    }

    /// Start the child on `self.port`; true once it accepts connections.
    fn spawn(&mut self) -> bool {
        let python = super::python::venv_python();
        let script = super::harness_dir().join("smtp_receiver.py");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut cmd = Command::new(&python);
        cmd.arg("-u")
            .arg(&script)
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--out-dir")
            .arg(self.dir.path().join("out"))
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        match self.opts.tls {
            SmtpTls::None => {
                cmd.args(["--tls", "none"]);
            }
            SmtpTls::StartTls | SmtpTls::Implicit => {
                let mode = if self.opts.tls == SmtpTls::StartTls {
                    "starttls"
                } else {
                    "implicit"
                };
                cmd.args(["--tls", mode])
                    .arg("--cert")
                    .arg(&self.certs.cert_pem)
                    .arg("--key")
                    .arg(&self.certs.key_pem);
            }
        }
        if let Some((user, pass)) = &self.opts.auth {
            cmd.arg("--auth-user")
                .arg(user)
                .arg("--auth-pass")
                .arg(pass);
        }
        if let Some((port, map)) = &self.opts.lmtp_forward {
            cmd.arg("--lmtp-port").arg(port.to_string());
            for (from, to) in map {
                cmd.arg("--lmtp-map").arg(format!("{from}={to}"));
            }
        }
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().expect("cannot start smtp_receiver.py");
        if super::wait_for_port_or_exit(&mut child, self.port, Duration::from_secs(10)) {
            self.child = Some(child);
            true
        } else {
            super::kill_child(&mut child);
            false
        }
    }

    /// The CA a client must trust for this server's certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.certs.ca_pem.clone()
    }

    /// Every message accepted so far (also before a stop/restart), in order.
    pub fn received(&self) -> Vec<Received> {
        let out = self.dir.path().join("out");
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") && !n.starts_with('.'))
            .collect();
        names.sort();
        names
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(out.join(n)).unwrap();
                let v: serde_json::Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("bad receiver record {n}: {e}"));
                let s = |k: &str| v[k].as_str().map(str::to_string);
                let list = |k: &str| {
                    v[k].as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                Received {
                    mail_from: s("mail_from").unwrap_or_default(),
                    rcpt_to: list("rcpt_to"),
                    data: super::base64_decode(v["data_b64"].as_str().unwrap_or(""))
                        .expect("bad base64 in receiver record"),
                    auth_user: s("auth_user"),
                    tls: v["tls"].as_bool().unwrap_or(false),
                    mail_options: list("mail_options"),
                    lmtp_error: s("lmtp_error"),
                }
            })
            .collect()
    }

    /// Poll until at least `n` messages were received or `timeout` passed;
    /// returns what there is either way (assert on its length).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the receiver (SIGKILL, reaped; the port is free when this
    /// returns). What was received is kept.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::kill_child(&mut child);
            super::wait_ports_free(&[self.port], Duration::from_secs(5));
        }
    }

    /// Start again on the same port with the same options and certificate.
    pub fn restart(&mut self) {
        self.stop();
        // The port may be briefly taken (e.g. by a client's ephemeral port).
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.spawn() {
            if Instant::now() >= deadline {
                panic!(
                    "SMTP receiver did not restart on port {}; log:\n{}",
                    self.port,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// From now on answer every DATA with `reply` (e.g. `"451 4.3.0 Try
    /// again later"` or `"554 5.7.1 Rejected"`) and record nothing; `None`
    /// accepts again. Takes effect for the next message, no restart.
    pub fn set_reject(&self, reply: Option<&str>) {
        let path = self.dir.path().join("reject");
        match reply {
            Some(r) => std::fs::write(path, format!("{r}\n")).unwrap(),
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Whether the child is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("receiver.log")
    }

    /// The receiver's stdout/stderr, for diagnosing failures.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::kill_child(&mut child);
        }
    }
}

/// A tiny plain-TCP SMTP client for tests: EHLO, optional AUTH PLAIN, MAIL
/// FROM, RCPT TO, DATA, QUIT against 127.0.0.1:`port`. Ok(transcript) when
/// the message was accepted (250 after the data), Err(transcript) at the
/// first reply that is not a success (the transcript ends with it).
pub fn smtp_send(
    port: u16,
    auth: Option<(&str, &str)>,
    from: &str,
    rcpts: &[&str],
    data: &[u8],
) -> Result<String, String> {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;
    let stream = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| format!("cannot connect to 127.0.0.1:{port}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let mut t = String::new();
    let mut reply = |t: &mut String| -> u16 {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                t.push_str("(connection closed)\n");
                return 0;
            }
            t.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            }
        }
    };
    let mut send = |t: &mut String, bytes: &[u8], show: &str| {
        t.push_str("C: ");
        t.push_str(show);
        t.push('\n');
        let _ = w.write_all(bytes);
    };
    macro_rules! step {
        ($bytes:expr, $show:expr, $ok:expr) => {{
            let b: Vec<u8> = $bytes;
            send(&mut t, &b, $show);
            let code = reply(&mut t);
            if !$ok(code) {
                return Err(t);
            }
        }};
    }
    if reply(&mut t) != 220 {
        return Err(t);
    }
    step!(
        b"EHLO client.localhost\r\n".to_vec(),
        "EHLO client.localhost",
        |c| c == 250
    );
    if let Some((user, pass)) = auth {
        let token = super::base64_encode(format!("\0{user}\0{pass}").as_bytes());
        step!(
            format!("AUTH PLAIN {token}\r\n").into_bytes(),
            &format!("AUTH PLAIN {token}"),
            |c| c == 235
        );
    }
    step!(
        format!("MAIL FROM:<{from}>\r\n").into_bytes(),
        &format!("MAIL FROM:<{from}>"),
        |c| c == 250
    );
    for rcpt in rcpts {
        step!(
            format!("RCPT TO:<{rcpt}>\r\n").into_bytes(),
            &format!("RCPT TO:<{rcpt}>"),
            |c| c == 250 || c == 251
        );
    }
    step!(b"DATA\r\n".to_vec(), "DATA", |c| c == 354);
    step!(
        super::dovecot::dot_stuff(data),
        &format!("<{} bytes>", data.len()),
        |c| c == 250
    );
    send(&mut t, b"QUIT\r\n", "QUIT");
    reply(&mut t);
    Ok(t)
}
