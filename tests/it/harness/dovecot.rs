//! A real, throwaway Dovecot (IMAP on a plain+STARTTLS port and an implicit
//! TLS port, LMTP for delivering test mail) as a child process of the test,
//! plus a tiny raw IMAP/LMTP client over `std::net::TcpStream`.
//!
//! Needs `dovecot-imapd` and `dovecot-lmtpd` (Debian) and root (Dovecot drops
//! to the users `dovenull`/`dovecot` made by the package, mail runs as 65534).
//!
//! Mailboxes: Maildir++ under `DIR/home/<login>/Maildir`, hierarchy separator
//! `/` (so `Archive/2024` works; on disk `.Archive.2024`), special-use
//! folders Drafts/Sent/Trash/Junk declared but not auto-created. Folder names
//! passed to the helpers here must be ASCII (no modified UTF-7 encoding).
//!
//! Things worth knowing (Dovecot 2.3.19, Debian 12):
//! - Failed logins: by default Dovecot answers a failure only after up to
//!   0.5 s and then makes the *next* login from 127.0.0.1 wait 4 s (anvil's
//!   per-IP auth penalty; `auth_failure_delay = 0` and
//!   `login_trusted_networks` do not help). The config below puts a
//!   `static` passdb with `noauthenticate nodelay` first, which turns both off:
//!   bad logins fail in ~5 ms and never slow down later ones.
//! - XOAUTH2 with a passwd-file passdb compares the bearer token with the
//!   password. A bad token is answered with a `+ <base64 of
//!   {"status":"401","schemes":"bearer","scope":"mail"}>` challenge; after
//!   the client's empty line comes `NO [AUTHENTICATIONFAILED]`.
//! - UIDVALIDITY lives in the folder's `dovecot-uidlist` *and* its index:
//!   deleting only the uidlist keeps the UIDVALIDITY but renumbers every
//!   message with new UIDs (a broken-server scenario, not what
//!   [`Dovecot::set_uidvalidity_change`] does).
//! - Messages delivered over LMTP get `Return-Path:`, `Delivered-To:` and
//!   `Received:` headers on top; IMAP APPEND stores the bytes as given.
//! - The master's children stay in its process group: `stop()` SIGKILLs the
//!   group (a SIGTERM shutdown takes over a second).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use super::certs::Certs;

pub struct Dovecot {
    /// IMAP, plain with STARTTLS offered (LOGIN allowed without TLS).
    pub imap_port: u16,
    /// IMAPS, implicit TLS.
    pub imaps_port: u16,
    /// LMTP (plain), for delivering test mail.
    pub lmtp_port: u16,
    /// The server's certificate; clients trust `certs.ca_pem`.
    pub certs: Certs,
    /// `(login, password)` as given to [`Dovecot::start`].
    pub users: Vec<(String, String)>,
    /// Everything: dovecot.conf, users, dovecot.log, run/, state/, home/.
    pub dir: tempfile::TempDir,
    /// The master (leads its own process group) and its watchdog.
    child: Mutex<Option<(Child, Option<Child>)>>,
}

const DOVECOT: &str = "/usr/sbin/dovecot";

fn home_name(login: &str) -> String {
    login
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Quote a string for IMAP (a quoted string; no CR/LF allowed).
pub fn imap_quote(s: &str) -> String {
    assert!(
        !s.contains(['\r', '\n']),
        "cannot quote CR/LF in IMAP: {s:?}"
    );
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

impl Dovecot {
    /// Start Dovecot with these users (login e-mail, password) and wait until
    /// its IMAP, IMAPS and LMTP ports answer (~50 ms).
    ///
    /// Authentication: passwd-file with `{PLAIN}` passwords; mechanisms
    /// PLAIN, LOGIN and XOAUTH2. With a passwd-file passdb, XOAUTH2 is checked
    /// like a password: `AUTHENTICATE XOAUTH2 base64("user=U\x01auth=Bearer
    /// PASSWORD\x01\x01")` logs in, any other token fails.
    pub fn start(users: &[(&str, &str)]) -> Dovecot {
        assert!(
            Path::new(DOVECOT).exists(),
            "{DOVECOT} missing: apt-get install dovecot-imapd dovecot-lmtpd"
        );
        let dir = super::temp_dir("imipd-dc-");
        let d = dir.path();
        for sub in ["run", "state", "home"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let mut lines = String::new();
        for (login, pass) in users {
            assert!(
                !login.contains(':') && !pass.contains(':'),
                "':' cannot be in a passwd-file"
            );
            assert!(!pass.contains(['\n', '\r']) && !login.contains(['\n', '\r']));
            let home = d.join("home").join(home_name(login));
            std::fs::create_dir_all(&home).unwrap();
            std::os::unix::fs::chown(&home, Some(65534), Some(65534))
                .expect("cannot chown a home dir to 65534: the Dovecot harness must run as root");
            lines.push_str(&format!(
                "{login}:{{PLAIN}}{pass}:65534:65534::{}::\n",
                home.display()
            ));
        }
        std::fs::write(d.join("users"), lines).unwrap();
        let certs = Certs::generate();
        let mut dc = Dovecot {
            imap_port: 0,
            imaps_port: 0,
            lmtp_port: 0,
            certs,
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            dir,
            child: Mutex::new(None),
        };
        // A port may be grabbed by someone else between free_port() and
        // Dovecot's bind: then pick new ports.
        for attempt in 1.. {
            dc.imap_port = super::free_port();
            dc.imaps_port = super::free_port();
            dc.lmtp_port = super::free_port();
            dc.write_config();
            if dc.spawn(Duration::from_secs(10)) {
                return dc;
            }
            if attempt >= 5 {
                panic!(
                    "Dovecot did not start; stderr:\n{}\nlog:\n{}",
                    dc.stderr(),
                    dc.log()
                );
            }
        }
        unreachable!()
    }

    fn conf_path(&self) -> PathBuf {
        self.dir.path().join("dovecot.conf")
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        // More users than a default Dovecot takes connections for (its
        // login processes are limited to 100).
        let many = self.users.len() > 50;
        let conf = format!(
            r#"# Throwaway Dovecot for imipd's integration tests.
base_dir = {d}/run
state_dir = {d}/state
instance_name = imipd-test-{imap}
log_path = {d}/dovecot.log
info_log_path = {d}/dovecot.log
debug_log_path = {d}/dovecot.log
log_timestamp = "%H:%M:%S.%{{usecs}} "
listen = 127.0.0.1
protocols = imap lmtp
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2
auth_failure_delay = 0
auth_verbose = yes
mail_location = maildir:~/Maildir
mail_fsync = never
# IDLE: inotify notices changes at once; this is the fallback poll.
mailbox_idle_check_interval = 1 secs
mail_max_userip_connections = 200
default_login_user = dovenull
default_internal_user = dovecot
# Answer failed logins at once and never penalise 127.0.0.1: this first
# passdb authenticates nobody (noauthenticate) but accepts any password, so
# its `nodelay` field survives the real passdb's failure. Without it,
# Dovecot delays every failure by up to 0.5 s and, after a failure, makes
# the next login from the same IP wait 2-15 s (anvil auth penalty).
passdb {{
  driver = static
  args = nopassword=y noauthenticate=y nodelay=y
  result_success = continue
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/users
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \Drafts
  }}
  mailbox Sent {{
    special_use = \Sent
  }}
  mailbox Trash {{
    special_use = \Trash
  }}
  mailbox Junk {{
    special_use = \Junk
  }}
}}
{many}service imap-login {{
  chroot =
{many_login}  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp}
  }}
}}
"#,
            cert = self.certs.cert_pem.display(),
            key = self.certs.key_pem.display(),
            imap = self.imap_port,
            imaps = self.imaps_port,
            lmtp = self.lmtp_port,
            many = if many {
                "default_client_limit = 4000\nservice imap {\n  process_limit = 2000\n}\n"
            } else {
                ""
            },
            many_login = if many {
                // Many connections: one login process serves them all
                // (Dovecot's high-performance mode), each IMAP connection
                // has a process of its own, as usual.
                "  service_count = 0\n  process_min_avail = 2\n  client_limit = 2000\n"
            } else {
                ""
            },
        );
        std::fs::write(self.conf_path(), conf).unwrap();
    }

    /// Start the master in the foreground; true when all ports answer.
    fn spawn(&self, timeout: Duration) -> bool {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("dovecot.stderr"))
            .unwrap();
        let mut cmd = Command::new(DOVECOT);
        cmd.arg("-F")
            .arg("-c")
            .arg(self.conf_path())
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().unwrap())
            .stderr(stderr);
        {
            use std::os::unix::process::CommandExt;
            // Its own process group, so stop() can SIGKILL master + children.
            cmd.process_group(0);
        }
        let mut child = cmd.spawn().expect("cannot start dovecot");
        let mut watchdog = super::spawn_watchdog(child.id());
        let deadline = Instant::now() + timeout;
        for port in [self.imap_port, self.imaps_port, self.lmtp_port] {
            let left = deadline.saturating_duration_since(Instant::now());
            if !super::wait_for_port_or_exit(&mut child, port, left) {
                super::kill_child(&mut child);
                if let Some(w) = watchdog.as_mut() {
                    super::kill_child(w);
                }
                return false;
            }
        }
        *self.child() = Some((child, watchdog));
        true
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<(Child, Option<Child>)>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// SIGKILL the master and all its children (fast); ports are free when
    /// this returns. Mail and indexes stay.
    pub fn stop(&mut self) {
        self.stop_shared();
    }

    fn stop_shared(&self) {
        let taken = self.child().take();
        if let Some((mut child, watchdog)) = taken {
            super::kill_child(&mut child);
            if let Some(mut w) = watchdog {
                super::kill_child(&mut w);
            }
            super::wait_ports_free(
                &[self.imap_port, self.imaps_port, self.lmtp_port],
                Duration::from_secs(5),
            );
        }
    }

    /// Start again with the same ports, users, certificate and mail.
    pub fn restart(&mut self) {
        self.restart_shared();
    }

    fn restart_shared(&self) {
        self.stop_shared();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.spawn(Duration::from_secs(10)) {
            if Instant::now() >= deadline {
                panic!(
                    "Dovecot did not restart; stderr:\n{}\nlog:\n{}",
                    self.stderr(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(
            self.child().as_mut().map(|(c, _)| c.try_wait()),
            Some(Ok(None))
        )
    }

    /// The Dovecot log (dovecot.log), for diagnosing failures.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// What the master printed before its log was set up (config errors).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.stderr")).unwrap_or_default()
    }

    pub fn password(&self, user: &str) -> String {
        self.users
            .iter()
            .find(|(u, _)| u == user)
            .unwrap_or_else(|| panic!("no such Dovecot user: {user}"))
            .1
            .clone()
    }

    /// The user's home (holds `Maildir/`).
    pub fn home(&self, user: &str) -> PathBuf {
        self.dir.path().join("home").join(home_name(user))
    }

    /// The Maildir++ folder on disk (`INBOX` is `Maildir/` itself).
    pub fn folder_path(&self, user: &str, folder: &str) -> PathBuf {
        let md = self.home(user).join("Maildir");
        if folder.eq_ignore_ascii_case("INBOX") {
            md
        } else {
            md.join(format!(".{}", folder.replace('/', ".")))
        }
    }

    /// LOGIN as `user` and run `commands` (see [`imap_command`]).
    pub fn imap(&self, user: &str, commands: &[&str]) -> String {
        imap_command(self.imap_port, user, &self.password(user), commands)
    }

    /// Put a message into a folder: over LMTP for INBOX (Dovecot adds
    /// Return-Path, Delivered-To and Received headers), over IMAP APPEND for
    /// any other folder (created if missing; stored as given).
    pub fn append(&self, user: &str, folder: &str, raw: &[u8]) {
        if folder.eq_ignore_ascii_case("INBOX") {
            self.deliver_lmtp(user, raw);
        } else {
            self.append_imap(user, folder, raw, &[]);
        }
    }

    /// IMAP APPEND (any folder, INBOX too) with the given flags, e.g.
    /// `&["\\Seen", "$Forwarded"]`; creates the folder if missing.
    pub fn append_imap(&self, user: &str, folder: &str, raw: &[u8], flags: &[&str]) {
        let raw = super::to_crlf(raw);
        let create = format!("CREATE {}", imap_quote(folder));
        let mut append = format!("APPEND {} ", imap_quote(folder)).into_bytes();
        if !flags.is_empty() {
            append.extend_from_slice(format!("({}) ", flags.join(" ")).as_bytes());
        }
        append.extend_from_slice(format!("{{{}+}}\r\n", raw.len()).as_bytes());
        append.extend_from_slice(&raw);
        let t = imap_session(
            self.imap_port,
            Some((user, &self.password(user))),
            &[create.as_bytes(), &append],
        );
        assert!(
            t.contains("\nA2 OK"),
            "IMAP APPEND to {folder} for {user} failed:\n{t}\nDovecot log:\n{}",
            self.log()
        );
    }

    /// IMAP APPEND with an INTERNALDATE (`"01-Oct-2026 10:00:00 +0000"`):
    /// mail that looks delivered then. Creates the folder if missing.
    pub fn append_dated(&self, user: &str, folder: &str, raw: &[u8], date: &str) {
        let raw = super::to_crlf(raw);
        let create = format!("CREATE {}", imap_quote(folder));
        let mut append =
            format!("APPEND {} {} ", imap_quote(folder), imap_quote(date)).into_bytes();
        append.extend_from_slice(format!("{{{}+}}\r\n", raw.len()).as_bytes());
        append.extend_from_slice(&raw);
        let t = imap_session(
            self.imap_port,
            Some((user, &self.password(user))),
            &[create.as_bytes(), &append],
        );
        assert!(
            t.contains("\nA2 OK"),
            "IMAP APPEND (dated) to {folder} for {user} failed:\n{t}\nDovecot log:\n{}",
            self.log()
        );
    }

    /// Deliver over LMTP to `rcpt` (a login). The envelope sender is the
    /// message's From address (or harness@localhost), never `<>`.
    pub fn deliver_lmtp(&self, rcpt: &str, raw: &[u8]) {
        let from = header_address(raw, "From").unwrap_or_else(|| "harness@localhost".to_string());
        if let Err(e) = lmtp_deliver(self.lmtp_port, &from, &[rcpt], raw) {
            panic!(
                "LMTP delivery to {rcpt} failed: {e}\nDovecot log:\n{}",
                self.log()
            );
        }
    }

    /// STATUS items of a folder, e.g. `&["MESSAGES", "UIDVALIDITY"]`; `None`
    /// when the folder does not exist.
    pub fn status(&self, user: &str, folder: &str, items: &[&str]) -> Option<Vec<(String, u64)>> {
        let cmd = format!("STATUS {} ({})", imap_quote(folder), items.join(" "));
        let t = self.imap(user, &[&cmd]);
        let line = t.lines().find(|l| l.starts_with("* STATUS "))?;
        let inner = &line[line.rfind('(')? + 1..line.rfind(')')?];
        let words: Vec<&str> = inner.split_whitespace().collect();
        Some(
            words
                .chunks(2)
                .filter(|c| c.len() == 2)
                .filter_map(|c| Some((c[0].to_ascii_uppercase(), c[1].parse().ok()?)))
                .collect(),
        )
    }

    fn status_item(&self, user: &str, folder: &str, item: &str) -> Option<u64> {
        self.status(user, folder, &[item])?
            .into_iter()
            .find(|(k, _)| k == item)
            .map(|(_, v)| v)
    }

    /// Number of messages in the folder (0 when it does not exist).
    pub fn folder_count(&self, user: &str, folder: &str) -> usize {
        self.status_item(user, folder, "MESSAGES").unwrap_or(0) as usize
    }

    /// The folder's UIDVALIDITY (panics when it does not exist). Just after
    /// a restart, or while a folder lock a killed Dovecot left behind goes
    /// stale (two minutes), STATUS may fail for a while: it is asked again.
    pub fn uidvalidity(&self, user: &str, folder: &str) -> u32 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(150);
        loop {
            if let Some(v) = self.status_item(user, folder, "UIDVALIDITY") {
                return v as u32;
            }
            if std::time::Instant::now() >= deadline {
                panic!("no folder {folder} for {user}");
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// `(uid, flags)` of every message, in UID order (`\Recent` left out).
    pub fn uids_and_flags(&self, user: &str, folder: &str) -> Vec<(u32, Vec<String>)> {
        let examine = format!("EXAMINE {}", imap_quote(folder));
        let t = self.imap(user, &[&examine, "FETCH 1:* (UID FLAGS)"]);
        let mut out: Vec<(u32, Vec<String>)> = t
            .lines()
            .filter(|l| l.starts_with("* ") && l.contains(" FETCH ("))
            .filter_map(|l| {
                let uid = l
                    .split("UID ")
                    .nth(1)?
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?;
                let f = l.split("FLAGS (").nth(1)?;
                let f = &f[..f.find(')')?];
                let flags = f
                    .split_whitespace()
                    .filter(|x| !x.eq_ignore_ascii_case("\\Recent"))
                    .map(str::to_string)
                    .collect();
                Some((uid.parse().ok()?, flags))
            })
            .collect();
        out.sort_by_key(|(uid, _)| *uid);
        out
    }

    /// Flags and keywords of each message in UID order (`\Recent` left out).
    pub fn flags(&self, user: &str, folder: &str) -> Vec<Vec<String>> {
        self.uids_and_flags(user, folder)
            .into_iter()
            .map(|(_, f)| f)
            .collect()
    }

    /// The raw messages in the folder, in UID order (BODY.PEEK[], as stored).
    pub fn messages(&self, user: &str, folder: &str) -> Vec<Vec<u8>> {
        let examine = format!("EXAMINE {}", imap_quote(folder));
        let t = imap_session_bytes(
            self.imap_port,
            Some((user, &self.password(user))),
            &[examine.as_bytes(), b"UID FETCH 1:* (BODY.PEEK[])"],
        );
        parse_fetch_literals(&t)
    }

    /// Force a new UIDVALIDITY for `folder` with the same messages, the way a
    /// mailbox rebuilt on the server looks to a client: Dovecot is stopped,
    /// the folder's `dovecot-uidlist` and `dovecot.index*` files and the
    /// user's mailbox-list index (`Maildir/dovecot.list.index*`, which caches
    /// UIDVALIDITY) are deleted, and Dovecot is started again on the same
    /// ports. Dovecot then numbers the messages afresh (UIDs from 1, so they
    /// may equal the old ones: only UIDVALIDITY tells) with a UIDVALIDITY
    /// larger than the last one it handed out for this user (it keeps
    /// `Maildir/dovecot-uidvalidity`). Connected clients are cut off.
    /// Returns the new UIDVALIDITY.
    pub fn set_uidvalidity_change(&self, user: &str, folder: &str) -> u32 {
        let old = self.uidvalidity(user, folder);
        self.stop_shared();
        let dir = self.folder_path(user, folder);
        let md = self.home(user).join("Maildir");
        remove_matching(&dir, |n| {
            n == "dovecot-uidlist" || n.starts_with("dovecot.index")
        });
        remove_matching(&md, |n| n.starts_with("dovecot.list.index"));
        self.restart_shared();
        let new = self.uidvalidity(user, folder);
        assert_ne!(old, new, "UIDVALIDITY of {folder} did not change");
        new
    }
}

fn remove_matching(dir: &Path, pred: impl Fn(&str) -> bool) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if pred(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let taken = self.child().take();
        if let Some((mut child, watchdog)) = taken {
            super::kill_child(&mut child);
            if let Some(mut w) = watchdog {
                super::kill_child(&mut w);
            }
        }
    }
}

/// The address in a header (`Name <a@b>` or `a@b`) of a raw message.
fn header_address(raw: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let prefix = format!("{}:", name.to_ascii_lowercase());
    for line in text.lines() {
        if line.is_empty() || line == "\r" {
            break;
        }
        if line.to_ascii_lowercase().starts_with(&prefix) {
            let v = line[prefix.len()..].trim();
            let addr = match (v.rfind('<'), v.rfind('>')) {
                (Some(a), Some(b)) if a < b => &v[a + 1..b],
                _ => v,
            };
            if addr.contains('@') && !addr.contains(char::is_whitespace) {
                return Some(addr.to_string());
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// A minimal LMTP client.

fn smtp_reply(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, String)> {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed after {all:?}"),
            ));
        }
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            let code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return Ok((code, all));
        }
    }
}

/// Deliver `raw` over LMTP at 127.0.0.1:`port`; Err with the server's
/// answer unless every recipient got a 2xx.
pub fn lmtp_deliver(port: u16, from: &str, rcpts: &[&str], raw: &[u8]) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let expect = |r: &mut BufReader<TcpStream>, what: &str| -> Result<String, String> {
        let (code, text) = smtp_reply(r).map_err(io)?;
        if (200..400).contains(&code) {
            Ok(text)
        } else {
            Err(format!("{what}: {text}"))
        }
    };
    expect(&mut r, "greeting")?;
    w.write_all(b"LHLO localhost\r\n").map_err(io)?;
    expect(&mut r, "LHLO")?;
    w.write_all(format!("MAIL FROM:<{from}>\r\n").as_bytes())
        .map_err(io)?;
    expect(&mut r, "MAIL FROM")?;
    for rcpt in rcpts {
        w.write_all(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())
            .map_err(io)?;
        expect(&mut r, &format!("RCPT TO {rcpt}"))?;
    }
    w.write_all(b"DATA\r\n").map_err(io)?;
    expect(&mut r, "DATA")?;
    w.write_all(&dot_stuff(raw)).map_err(io)?;
    let mut errors = Vec::new();
    for rcpt in rcpts {
        if let Err(e) = expect(&mut r, &format!("delivery to {rcpt}")) {
            errors.push(e);
        }
    }
    let _ = w.write_all(b"QUIT\r\n");
    let _ = smtp_reply(&mut r);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// CRLF line ends, leading dots doubled, terminated by CRLF "." CRLF.
pub fn dot_stuff(raw: &[u8]) -> Vec<u8> {
    let raw = super::to_crlf(raw);
    let mut out = Vec::with_capacity(raw.len() + 8);
    let mut at_line_start = true;
    for &b in &raw {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

// ---------------------------------------------------------------------------
// A minimal IMAP client.

/// Connect to 127.0.0.1:`port` (plain), `LOGIN user pass`, run each command,
/// `LOGOUT`; returns the whole transcript: client lines prefixed `C: `,
/// server lines as received. Tags: `L` for LOGIN, `A1`, `A2`, ... for the
/// commands in order, `Z` for LOGOUT, so e.g. `transcript.contains("\nA1 OK")`.
/// Commands run even when LOGIN failed (then they get BAD/NO). A command may
/// carry a LITERAL+ literal (`APPEND x {5+}\r\nhello`). A `+` continuation
/// is answered with an empty line (what a SASL client sends after an error
/// challenge). Every read times out after 10 s.
pub fn imap_command(port: u16, user: &str, pass: &str, commands: &[&str]) -> String {
    let cmds: Vec<&[u8]> = commands.iter().map(|c| c.as_bytes()).collect();
    imap_session(port, Some((user, pass)), &cmds)
}

/// Like [`imap_command`] without LOGIN (for AUTHENTICATE, STARTTLS probes,
/// CAPABILITY before login).
pub fn imap_raw(port: u16, commands: &[&str]) -> String {
    let cmds: Vec<&[u8]> = commands.iter().map(|c| c.as_bytes()).collect();
    imap_session(port, None, &cmds)
}

/// The general form: commands as bytes (literals may be binary).
pub fn imap_session(port: u16, login: Option<(&str, &str)>, commands: &[&[u8]]) -> String {
    String::from_utf8_lossy(&imap_session_bytes(port, login, commands)).into_owned()
}

/// Like [`imap_session`], the transcript as bytes.
pub fn imap_session_bytes(port: u16, login: Option<(&str, &str)>, commands: &[&[u8]]) -> Vec<u8> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("cannot connect to IMAP 127.0.0.1:{port}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut conn = ImapConn {
        w: stream.try_clone().unwrap(),
        r: BufReader::new(stream),
        transcript: Vec::new(),
    };
    if conn.read_line_with_literals().is_none() {
        return conn.transcript;
    }
    let mut tagged: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some((user, pass)) = login {
        tagged.push((
            "L".into(),
            format!("LOGIN {} {}", imap_quote(user), imap_quote(pass)).into_bytes(),
        ));
    }
    for (i, c) in commands.iter().enumerate() {
        tagged.push((format!("A{}", i + 1), c.to_vec()));
    }
    tagged.push(("Z".into(), b"LOGOUT".to_vec()));
    for (tag, cmd) in tagged {
        if !conn.command(&tag, &cmd) {
            break;
        }
    }
    conn.transcript
}

struct ImapConn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    transcript: Vec<u8>,
}

impl ImapConn {
    /// Send one tagged command and read up to its tagged answer. False when
    /// the connection ended.
    fn command(&mut self, tag: &str, cmd: &[u8]) -> bool {
        let mut line = format!("{tag} ").into_bytes();
        line.extend_from_slice(cmd);
        line.extend_from_slice(b"\r\n");
        // Log the command, with a literal's body shortened.
        self.transcript.extend_from_slice(b"C: ");
        match find_literal_plus(cmd) {
            Some((head_len, n)) => {
                self.transcript
                    .extend_from_slice(format!("{tag} ").as_bytes());
                self.transcript.extend_from_slice(&cmd[..head_len]);
                self.transcript
                    .extend_from_slice(format!(" <{n} bytes>\r\n").as_bytes());
            }
            None => self.transcript.extend_from_slice(&line),
        }
        if self.w.write_all(&line).is_err() {
            return false;
        }
        let prefix = format!("{tag} ");
        loop {
            let Some(l) = self.read_line_with_literals() else {
                return false;
            };
            if l.starts_with(prefix.as_bytes()) {
                return true;
            }
            if l.starts_with(b"+") {
                self.transcript.extend_from_slice(b"C: \r\n");
                if self.w.write_all(b"\r\n").is_err() {
                    return false;
                }
            }
        }
    }

    /// One server response line, with any `{N}` literals read inline.
    fn read_line_with_literals(&mut self) -> Option<Vec<u8>> {
        let mut whole = Vec::new();
        loop {
            let mut line = Vec::new();
            match self.r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => {
                    self.transcript.extend_from_slice(&whole);
                    self.transcript.extend_from_slice(&line);
                    return None;
                }
                Ok(_) => {}
            }
            whole.extend_from_slice(&line);
            let trimmed = line.strip_suffix(b"\r\n").unwrap_or(&line);
            if let Some(n) = trailing_literal(trimmed) {
                let mut buf = vec![0; n];
                if self.r.read_exact(&mut buf).is_err() {
                    self.transcript.extend_from_slice(&whole);
                    return None;
                }
                whole.extend_from_slice(&buf);
                continue;
            }
            self.transcript.extend_from_slice(&whole);
            return Some(whole);
        }
    }
}

/// `{N}` at the end of a line: N.
fn trailing_literal(line: &[u8]) -> Option<usize> {
    let s = std::str::from_utf8(line.strip_suffix(b"}")?).ok()?;
    let open = s.rfind('{')?;
    s[open + 1..].parse().ok()
}

/// In a command `... {N+}\r\n<body>`: (length of the part before the body, N).
fn find_literal_plus(cmd: &[u8]) -> Option<(usize, usize)> {
    let pos = cmd.windows(3).position(|w| w == b"+}\r")?;
    let s = std::str::from_utf8(&cmd[..pos]).ok()?;
    let open = s.rfind('{')?;
    let n = s[open + 1..].parse().ok()?;
    Some((pos + 2, n))
}

/// The literals of `* N FETCH (... BODY[] {n}` lines, in order.
fn parse_fetch_literals(t: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let end = t[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| i + p + 1)
            .unwrap_or(t.len());
        let line = &t[i..end];
        let trimmed = line.strip_suffix(b"\r\n").unwrap_or(line);
        if line.starts_with(b"* ") && trimmed.windows(6).any(|w| w == b"FETCH ") {
            if let Some(n) = trailing_literal(trimmed) {
                out.push(t[end..(end + n).min(t.len())].to_vec());
                i = end + n;
                continue;
            }
        }
        i = end;
    }
    out
}
