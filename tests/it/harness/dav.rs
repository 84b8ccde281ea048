//! Real CalDAV servers on 127.0.0.1 for the CalDAV store tests: Radicale
//! (with a login, and optionally TLS with the test CA) and Xandikos, both
//! from PyPI in a venv under the target dir (installed once, ~10 s), each
//! in a temp dir of its own on a free port, killed when the handle drops.
//! Each server gets one user (`bob`, password `secret`) and one calendar
//! named "Calendar"; Xandikos also has the `calendar` its `--defaults`
//! makes.
//!
//! [`DavServer::request`] is a tiny raw HTTP/1.1 client (a new connection
//! per request), so that a test can look at what the server holds, and
//! change it behind imipd's back, the way another calendar app would.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::certs::Certs;

pub const USER: &str = "bob";
pub const PASSWORD: &str = "secret";

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Radicale,
    Xandikos,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Radicale => "radicale",
            Kind::Xandikos => "xandikos",
        }
    }
}

/// A program of the venv with radicale and xandikos
/// (`$CARGO_TARGET_TMPDIR/dav-venv`).
pub fn venv_bin(program: &str) -> PathBuf {
    super::python::venv("dav-venv", &["radicale", "xandikos"])
        .join("bin")
        .join(program)
}

/// A running CalDAV server (see the module docs).
pub struct DavServer {
    pub kind: Kind,
    pub port: u16,
    /// With TLS (Radicale only): the certificates; clients trust `ca_pem`.
    pub certs: Option<Certs>,
    /// The calendar collection imipd is given (a path ending in `/`).
    pub calendar: String,
    pub dir: tempfile::TempDir,
    child: Mutex<Option<(Child, Option<Child>)>>,
}

impl DavServer {
    pub fn start(kind: Kind) -> DavServer {
        DavServer::launch(kind, false)
    }

    /// Radicale over TLS with a certificate of the test CA.
    pub fn start_tls() -> DavServer {
        DavServer::launch(Kind::Radicale, true)
    }

    fn launch(kind: Kind, tls: bool) -> DavServer {
        let bin = venv_bin(kind.name());
        let dir = super::temp_dir("imipd-dav-");
        let certs = tls.then(Certs::generate);
        for attempt in 1.. {
            let port = super::free_port();
            let log = File::create(dir.path().join("server.log")).unwrap();
            let mut cmd = Command::new(&bin);
            match kind {
                Kind::Radicale => {
                    std::fs::write(dir.path().join("users"), format!("{USER}:{PASSWORD}\n"))
                        .unwrap();
                    cmd.arg("--server-hosts")
                        .arg(format!("127.0.0.1:{port}"))
                        .arg("--storage-filesystem-folder")
                        .arg(dir.path().join("collections"))
                        .args([
                            "--auth-type",
                            "htpasswd",
                            "--auth-htpasswd-encryption",
                            "plain",
                        ])
                        .arg("--auth-htpasswd-filename")
                        .arg(dir.path().join("users"))
                        // Answer a failed login at once.
                        .args(["--auth-delay", "0"]);
                    if let Some(c) = &certs {
                        cmd.arg("--server-ssl")
                            .arg("--server-certificate")
                            .arg(&c.cert_pem)
                            .arg("--server-key")
                            .arg(&c.key_pem);
                    } else {
                        cmd.arg("--no-server-ssl");
                    }
                }
                Kind::Xandikos => {
                    cmd.args(["serve", "--defaults", "-l", "127.0.0.1", "-p"])
                        .arg(port.to_string())
                        .arg("-d")
                        .arg(dir.path().join("data"))
                        .arg("--state-dir")
                        .arg(dir.path().join("state"))
                        .arg("--no-detect-systemd");
                }
            }
            {
                use std::os::unix::process::CommandExt;
                cmd.process_group(0);
            }
            let mut child = cmd
                .env("HOME", dir.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("cannot start the CalDAV server");
            let watchdog = super::spawn_watchdog(child.id());
            if super::wait_for_port_or_exit(&mut child, port, Duration::from_secs(30)) {
                let server = DavServer {
                    kind,
                    port,
                    certs,
                    calendar: String::new(),
                    dir,
                    child: Mutex::new(Some((child, watchdog))),
                };
                return server.with_calendar();
            }
            super::kill_child(&mut child);
            if let Some(mut w) = watchdog {
                super::kill_child(&mut w);
            }
            assert!(
                attempt < 4,
                "{} did not start: {}",
                kind.name(),
                std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default()
            );
        }
        unreachable!()
    }

    /// Make the calendar "Calendar" (Radicale starts with none; Xandikos
    /// with one called "calendar", which imipd must not pick by mistake).
    fn with_calendar(mut self) -> DavServer {
        let path = match self.kind {
            Kind::Radicale => {
                // Radicale's own storage format (it may speak TLS, which
                // the raw client does not).
                let dir = self
                    .dir
                    .path()
                    .join(format!("collections/collection-root/{USER}/Calendar"));
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(
                    dir.join(".Radicale.props"),
                    r#"{"D:displayname": "Calendar", "tag": "VCALENDAR"}"#,
                )
                .unwrap();
                self.calendar = format!("/{USER}/Calendar/");
                return self;
            }
            Kind::Xandikos => "/user/calendars/Calendar/".to_string(),
        };
        let body = "<?xml version=\"1.0\"?><C:mkcalendar xmlns:D=\"DAV:\" xmlns:C=\"urn:ietf:params:xml:ns:caldav\">\
            <D:set><D:prop><D:displayname>Calendar</D:displayname></D:prop></D:set></C:mkcalendar>";
        // The port may answer before the application does: ask again
        // until it answers (a calendar made by an earlier try is 405).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (status, _, text) = self.request("MKCALENDAR", &path, &[], body);
            if status == 201 || (status == 405 && self.objects_status(&path) == 207) {
                break;
            }
            assert!(
                status == 0 && std::time::Instant::now() < deadline,
                "MKCALENDAR {path}: {status} {text}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.calendar = path;
        self
    }

    /// `http(s)://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        let scheme = if self.certs.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The `store = { … }` of an imipd configuration for this server: the
    /// server's root URL and the calendar's name, found by discovery.
    pub fn store_toml(&self) -> String {
        let mut s = format!(
            "{{ type = \"caldav\", url = \"{}/\", username = \"{USER}\", password = \"{PASSWORD}\", calendar = \"Calendar\", timeout = 20",
            self.origin()
        );
        if let Some(c) = &self.certs {
            s.push_str(&format!(", ca_file = \"{}\"", c.ca_pem.display()));
        }
        s.push_str(" }");
        s
    }

    /// One HTTP/1.1 request on a connection of its own (plain HTTP only):
    /// status, headers (lower-cased names), body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, BTreeMap<String, String>, String) {
        assert!(
            self.certs.is_none(),
            "the raw client speaks plain HTTP only"
        );
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return (0, BTreeMap::new(), String::new());
        };
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let auth = super::base64_encode(format!("{USER}:{PASSWORD}").as_bytes());
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Basic {auth}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        if !body.is_empty()
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req.push_str("Content-Type: application/xml; charset=utf-8\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        if s.write_all(req.as_bytes()).is_err() {
            return (0, BTreeMap::new(), String::new());
        }
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        parse_response(&raw)
    }

    fn objects_status(&self, path: &str) -> u16 {
        self.request(
            "PROPFIND",
            path,
            &[("Depth", "0")],
            "<D:propfind xmlns:D=\"DAV:\"><D:prop><D:resourcetype/></D:prop></D:propfind>",
        )
        .0
    }

    /// Every object of the calendar: href → calendar data (as the server
    /// hands it out).
    pub fn objects(&self) -> BTreeMap<String, String> {
        let body = "<C:calendar-query xmlns:D=\"DAV:\" xmlns:C=\"urn:ietf:params:xml:ns:caldav\">\
            <D:prop><D:getetag/><C:calendar-data/></D:prop>\
            <C:filter><C:comp-filter name=\"VCALENDAR\"/></C:filter></C:calendar-query>";
        let (status, _, text) = self.request("REPORT", &self.calendar, &[("Depth", "1")], body);
        assert_eq!(status, 207, "REPORT {}: {text}", self.calendar);
        let doc = roxmltree::Document::parse(&text).expect("multistatus XML");
        let mut out = BTreeMap::new();
        for r in doc
            .descendants()
            .filter(|n| n.tag_name().name() == "response")
        {
            let href = r
                .descendants()
                .find(|n| n.tag_name().name() == "href")
                .and_then(|n| n.text())
                .unwrap_or_default()
                .to_string();
            if let Some(data) = r
                .descendants()
                .find(|n| n.tag_name().name() == "calendar-data")
                .and_then(|n| n.text())
            {
                out.insert(href, data.to_string());
            }
        }
        out
    }

    /// The object holding a UID: (href, ETag, data).
    pub fn object(&self, uid: &str) -> Option<(String, String, String)> {
        let (href, data) = self
            .objects()
            .into_iter()
            .find(|(_, d)| d.replace("\r\n", "\n").contains(&format!("\nUID:{uid}\n")))?;
        let (status, headers, _) = self.request("GET", &href, &[], "");
        assert_eq!(status, 200, "GET {href}");
        Some((href, headers.get("etag").cloned().unwrap_or_default(), data))
    }

    /// PUT an object as another calendar app would (status, new ETag).
    pub fn put(&self, href: &str, data: &str, if_match: Option<&str>) -> (u16, Option<String>) {
        let mut headers = vec![("Content-Type", "text/calendar; charset=utf-8")];
        if let Some(e) = if_match {
            headers.push(("If-Match", e));
        }
        let (status, h, _) = self.request("PUT", href, &headers, data);
        (status, h.get("etag").cloned())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for DavServer {
    fn drop(&mut self) {
        let taken = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((mut child, watchdog)) = taken {
            super::kill_child(&mut child);
            if let Some(mut w) = watchdog {
                super::kill_child(&mut w);
            }
        }
    }
}

/// Status, headers and body of a raw HTTP/1.x response (chunked or not).
fn parse_response(raw: &[u8]) -> (u16, BTreeMap<String, String>, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&after[..n.min(after.len())]);
            rest = after.get(n + 2..).unwrap_or("");
        }
        out
    } else {
        body.to_string()
    };
    (status, headers, body)
}
