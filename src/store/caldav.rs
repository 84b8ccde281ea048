//! The CalDAV store (RFC 4791): a person's calendar collection on a server
//! (Nextcloud, Fastmail, Radicale, Xandikos, Stalwart, Cyrus …), through
//! libdav over a hyper client with rustls (ring), certificates verified
//! against the system roots plus an optional `ca_file`.
//!
//! Owns: finding the calendar (the configured URL may be the calendar, a
//! principal, or the server: `/.well-known/caldav` (RFC 6764), then
//! current-user-principal → calendar-home-set → the calendars, one picked
//! by its display name); reading an object by UID (a calendar-query on
//! UID, per component type); writing without ever overwriting someone
//! else's change: a new object is created with `If-None-Match: *`, a known
//! one replaced or removed with `If-Match` the ETag that the last read saw,
//! and a 412 (someone changed it meanwhile) is reported as
//! [`super::Conflict`], so that the processor reads the object again and
//! applies the iTIP message to what is there now; busy time by a
//! time-range calendar-query. Resource names come from the UID the same
//! safe way as vdir file names ([`crate::fsutil::safe_name`]).
//!
//! The store's methods are synchronous (the processor is); every request
//! runs on one small runtime of its own ([`io`]) and the caller waits for
//! its answer, at most `timeout`. A slow server holds up only the person
//! whose calendar it is. Nothing is sent before the first operation: a
//! store that is never used never connects.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use calcard::icalendar::ICalendar;
use http::header::{AUTHORIZATION, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use libdav::caldav::{FindCalendarHomeSet, FindCalendars, GetCalendarResources};
use libdav::dav::{make_relative_url, Delete, PutResource, WebDavClient, WebDavError};
use libdav::requests::{DavRequest, ParseResponseError};
use libdav::{names, CalDavClient};

use super::vdir::{render, scan_uids};
use super::Conflict;
use crate::config::CalDavConfig;
use crate::conflict::{Busy, HORIZON_DAYS};
use crate::fsutil::safe_name;
use crate::ical::Node;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;
type Http = Auth<hyper_util::client::legacy::Client<Https, String>>;
type Client = CalDavClient<Http>;

/// The component types an iTIP object may be stored as, in the order a
/// lookup by UID asks for them (events are by far the most common).
const COMPONENTS: [&str; 3] = ["VEVENT", "VTODO", "VJOURNAL"];

/// The busy time is looked at from a day before now to this far ahead (as
/// the vdir's).
const BUSY_AHEAD: i64 = HORIZON_DAYS * 86_400;

/// A calendar collection on a CalDAV server.
pub struct CalDav {
    cfg: CalDavConfig,
    read_only: bool,
    /// Found on first use.
    conn: Mutex<Option<Arc<Connected>>>,
    /// What the last read of each UID found: where, and its version.
    seen: Mutex<HashMap<String, Seen>>,
    /// Resource names a create found taken (by an object of another UID).
    taken: Mutex<HashSet<String>>,
}

/// The calendar found, and a client logged in to its server.
struct Connected {
    client: Client,
    /// The calendar collection's href (a path ending in `/`).
    collection: String,
    /// Its display name.
    name: Option<String>,
    /// `scheme://host:port`, to name resources by URL.
    origin: String,
    /// Whether the server offers sync-collection (RFC 6578) there.
    sync: bool,
}

/// What a read found for a UID.
#[derive(Debug, Clone)]
enum Seen {
    Absent,
    At { href: String, etag: Option<String> },
}

/// One resource a REPORT returned.
#[derive(Debug, Clone)]
struct Fetched {
    href: String,
    etag: Option<String>,
    data: String,
}

/// What `check --connect` says about the store.
#[derive(Debug, Clone)]
pub struct Found {
    pub url: String,
    pub name: Option<String>,
    pub sync: bool,
}

impl CalDav {
    /// A store for this calendar; nothing is sent yet.
    pub fn open(cfg: &CalDavConfig, read_only: bool) -> CalDav {
        CalDav {
            cfg: cfg.clone(),
            read_only,
            conn: Mutex::new(None),
            seen: Mutex::new(HashMap::new()),
            taken: Mutex::new(HashSet::new()),
        }
    }

    /// Log in and find the calendar now (`check --connect`).
    pub fn connect(&self) -> anyhow::Result<Found> {
        let c = self.connected()?;
        Ok(Found {
            url: format!("{}{}", c.origin, c.collection),
            name: c.name.clone(),
            sync: c.sync,
        })
    }

    fn connected(&self) -> anyhow::Result<Arc<Connected>> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let cfg = self.cfg.clone();
        let c = Arc::new(block(self.cfg.timeout * 4, discover(cfg))??);
        tracing::info!(url = %format!("{}{}", c.origin, c.collection), calendar = c.name.as_deref().unwrap_or(""), "CalDAV calendar found");
        *guard = Some(c.clone());
        Ok(c)
    }

    fn server(&self) -> String {
        self.cfg.url.clone()
    }

    /// Run one request against the calendar, within the timeout.
    fn run<T, F, Fut>(&self, what: &str, f: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Connected>) -> Fut,
        Fut: Future<Output = Result<T, RequestFailure>> + Send + 'static,
    {
        let c = self.connected()?;
        let context = || format!("cannot {what} on CalDAV server {}", self.server());
        match block(self.cfg.timeout, f(c)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(RequestFailure::Status(s))) if s == StatusCode::UNAUTHORIZED => {
                anyhow::bail!(
                    "{}: the server refused the login (401){}; check the store's username and password",
                    context(),
                    self.cfg
                        .username
                        .as_deref()
                        .map(|u| format!(" as {u}"))
                        .unwrap_or_default()
                )
            }
            Ok(Err(e)) => Err(anyhow::Error::new(e).context(context())),
            Err(e) => Err(e.context(context())),
        }
    }

    /// The resources holding a UID, by a calendar-query per component type.
    fn find(&self, uid: &str) -> anyhow::Result<Option<Fetched>> {
        for comp in COMPONENTS {
            let body = uid_query(comp, uid);
            let mut found = self.run(&format!("look up UID {uid}"), move |c| async move {
                let collection = c.collection.clone();
                report(&c.client, collection, body).await
            })?;
            found.retain(|f| scan_uids(f.data.as_bytes()).iter().any(|u| u == uid));
            found.sort_by(|a, b| a.href.cmp(&b.href));
            if let Some(f) = found.into_iter().next() {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    fn remember(&self, uid: &str, seen: Seen) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(uid.to_string(), seen);
    }

    fn last_seen(&self, uid: &str) -> Option<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uid)
            .cloned()
    }

    /// The href a new object of a UID gets: its safe name in the
    /// collection, unless a create found that name taken.
    fn new_href(&self, c: &Connected, uid: &str) -> String {
        let name = safe_name(uid);
        let taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        let stem = name.strip_suffix(".ics").unwrap_or(&name).to_string();
        let mut candidate = format!("{}{name}", c.collection);
        let mut n = 2;
        while taken.contains(&candidate) {
            candidate = format!("{}{stem}-{n}.ics", c.collection);
            n += 1;
        }
        candidate
    }

    fn writable(&self) -> anyhow::Result<()> {
        if self.read_only {
            anyhow::bail!(
                "cannot write to CalDAV server {}: opened read-only (dry run)",
                self.server()
            );
        }
        Ok(())
    }

    /// Every object of the calendar (for busy time over a window, only
    /// the events that have time in it).
    fn fetch_all(&self, window: Option<(i64, i64)>) -> anyhow::Result<Vec<Fetched>> {
        match window {
            Some((from, to)) => {
                let body = range_query(from, to);
                self.run("read busy time", move |c| async move {
                    let collection = c.collection.clone();
                    report(&c.client, collection, body).await
                })
            }
            None => self.run("list the calendar", move |c| async move {
                let collection = c.collection.clone();
                let r = c
                    .client
                    .request(GetCalendarResources::new(&collection))
                    .await
                    .map_err(RequestFailure::from)?;
                Ok(r.resources
                    .into_iter()
                    .filter_map(|f| {
                        let content = f.content.ok()?;
                        Some(Fetched {
                            href: f.href,
                            etag: Some(content.etag),
                            data: content.data,
                        })
                    })
                    .collect())
            }),
        }
    }
}

/// Parse a resource's data into the object of one UID (only that UID's
/// scheduling components, with the time zones); `None` when it holds none.
fn object_of(data: &str, uid: &str) -> Option<Node> {
    let calcard::Entry::ICalendar(ical) = calcard::Parser::new(data).entry() else {
        return None;
    };
    let mut root = Node::from_ical(&ical);
    root.children
        .retain(|c| !c.is_scheduling() || c.uid().as_deref() == Some(uid));
    root.children
        .iter()
        .any(|c| c.is_scheduling())
        .then_some(root)
}

impl super::CalendarStore for CalDav {
    fn get(&self, uid: &str) -> anyhow::Result<Option<Node>> {
        match self.find(uid)? {
            Some(f) => match object_of(&f.data, uid) {
                Some(root) => {
                    self.remember(
                        uid,
                        Seen::At {
                            href: f.href,
                            etag: f.etag,
                        },
                    );
                    Ok(Some(root))
                }
                None => anyhow::bail!(
                    "cannot read {} on CalDAV server {}: not an iCalendar object with UID {uid}",
                    f.href,
                    self.server()
                ),
            },
            None => {
                self.remember(uid, Seen::Absent);
                Ok(None)
            }
        }
    }

    fn put(
        &mut self,
        uid: &str,
        object: &Node,
        tz_source: Option<&ICalendar>,
    ) -> anyhow::Result<String> {
        self.writable()?;
        let text = render(object, tz_source);
        let c = self.connected()?;
        // What the processor read is what may be replaced: nothing read,
        // or read as absent, is a create that fails if anything is there.
        let (href, etag) = match self.last_seen(uid) {
            Some(Seen::At { href, etag }) => (href, etag),
            _ => (self.new_href(&c, uid), None),
        };
        let is_create = etag.is_none();
        let put_href = href.clone();
        let result = self.run(&format!("write UID {uid}"), move |c| async move {
            let r = match etag {
                Some(e) => {
                    c.client
                        .request(PutResource::new(&put_href).update(
                            text,
                            "text/calendar; charset=utf-8",
                            e,
                        ))
                        .await
                }
                None => {
                    c.client
                        .request(
                            PutResource::new(&put_href)
                                .create(text, "text/calendar; charset=utf-8"),
                        )
                        .await
                }
            };
            r.map(|r| r.etag).map_err(RequestFailure::from)
        });
        match result {
            Ok(new_etag) => {
                // Some servers change what they store and give no ETag:
                // the next write then needs a read first.
                match new_etag {
                    Some(etag) => self.remember(
                        uid,
                        Seen::At {
                            href: href.clone(),
                            etag: Some(etag),
                        },
                    ),
                    None => {
                        self.seen
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(uid);
                    }
                }
                Ok(format!("{}{href}", c.origin))
            }
            Err(e) if is_precondition_failed(&e) => {
                self.seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(uid);
                if is_create {
                    // Taken: by this UID (someone created it meanwhile:
                    // the next read finds it) or by another (the next
                    // create picks another name).
                    self.taken
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(href);
                }
                Err(Conflict {
                    uid: uid.to_string(),
                }
                .into())
            }
            Err(e) => Err(e),
        }
    }

    fn delete(&mut self, uid: &str) -> anyhow::Result<bool> {
        self.writable()?;
        let (href, etag) = match self.last_seen(uid) {
            Some(Seen::At {
                href,
                etag: Some(etag),
            }) => (href, etag),
            Some(Seen::Absent) => return Ok(false),
            _ => {
                if self.get(uid)?.is_none() {
                    return Ok(false);
                }
                match self.last_seen(uid) {
                    Some(Seen::At {
                        href,
                        etag: Some(etag),
                    }) => (href, etag),
                    _ => anyhow::bail!(
                        "cannot remove UID {uid} on CalDAV server {}: the server gives no ETag, so imipd cannot be sure it removes what it read",
                        self.server()
                    ),
                }
            }
        };
        let h = href.clone();
        let r = self.run(&format!("remove UID {uid}"), move |c| async move {
            c.client
                .request(Delete::new(&h).with_etag(etag))
                .await
                .map(|_| ())
                .map_err(RequestFailure::from)
        });
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
        match r {
            Ok(()) => Ok(true),
            Err(e) if is_precondition_failed(&e) => Err(Conflict {
                uid: uid.to_string(),
            }
            .into()),
            Err(e) => Err(e),
        }
    }

    fn location(&self, uid: &str) -> String {
        if let Some(Seen::At { href, .. }) = self.last_seen(uid) {
            if let Ok(c) = self.connected() {
                return format!("{}{href}", c.origin);
            }
        }
        match self.connected() {
            Ok(c) => format!("{}{}", c.origin, self.new_href(&c, uid)),
            Err(_) => format!("{}/{}", self.cfg.url.trim_end_matches('/'), safe_name(uid)),
        }
    }

    fn uids(&self) -> anyhow::Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for f in self.fetch_all(None)? {
            for u in scan_uids(f.data.as_bytes()) {
                if !out.contains(&u) {
                    out.push(u);
                }
            }
        }
        Ok(out)
    }

    fn busy_overlap(
        &mut self,
        q: &super::BusyQuery<'_>,
    ) -> anyhow::Result<Option<super::BusySpan>> {
        Ok(self
            .busy_near(q)?
            .and_then(|busy| busy.overlaps(q.spans, q.exclude_uid)))
    }

    fn busy_overlaps(
        &mut self,
        q: &super::BusyQuery<'_>,
        limit: usize,
    ) -> anyhow::Result<Vec<super::BusySpan>> {
        Ok(self
            .busy_near(q)?
            .map(|busy| busy.overlaps_all(q.spans, q.exclude_uid, limit))
            .unwrap_or_default())
    }
}

impl CalDav {
    /// The busy time of the events the server finds in the query's time
    /// range (`None`: the query's spans fall outside the window).
    fn busy_near(&mut self, q: &super::BusyQuery<'_>) -> anyhow::Result<Option<Busy>> {
        let (spans, now) = (q.spans, q.now);
        // The same window as the vdir's: a day back, HORIZON_DAYS ahead.
        let window = (now - 86_400, now.saturating_add(BUSY_AHEAD));
        let Some(from) = spans.iter().map(|s| s.0).min() else {
            return Ok(None);
        };
        let to = spans.iter().map(|s| s.1).max().unwrap_or(from);
        let (from, to) = (from.max(window.0), to.min(window.1));
        if from >= to {
            return Ok(None);
        }
        // The server expands recurrences for the query; the index then
        // does what the vdir's does, on just those events.
        let mut objects: HashMap<String, Node> = HashMap::new();
        for f in self.fetch_all(Some((from, to)))? {
            for uid in scan_uids(f.data.as_bytes()) {
                if let Some(root) = object_of(&f.data, &uid) {
                    objects.entry(uid).or_insert(root);
                }
            }
        }
        Ok(Some(Busy::build(
            objects.keys().cloned().collect(),
            |uid| Ok(objects.get(uid).cloned()),
            q.identity,
            window.0,
            window.1,
        )?))
    }
}

/// Why a request failed: a status the server answered, or anything else.
#[derive(Debug, thiserror::Error)]
enum RequestFailure {
    #[error("the server answered {0}")]
    Status(StatusCode),
    #[error("the server refused the change: {0}")]
    Precondition(String),
    #[error("{0}")]
    Other(String),
}

impl<E: std::error::Error + 'static> From<WebDavError<E>> for RequestFailure {
    fn from(e: WebDavError<E>) -> RequestFailure {
        match e {
            WebDavError::BadStatusCode(s) => RequestFailure::Status(s),
            WebDavError::PreconditionFailed(p) => RequestFailure::Precondition(p.to_string()),
            WebDavError::Request(libdav::dav::RequestError::Client(e)) => {
                RequestFailure::Other(error_chain(&e))
            }
            WebDavError::Request(libdav::dav::RequestError::Http(e)) => {
                RequestFailure::Other(error_chain(e.as_ref()))
            }
            other => RequestFailure::Other(other.to_string()),
        }
    }
}

/// An error and its causes, `: `-joined (hyper's "client error (Connect)"
/// alone says nothing).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cause = c.source();
    }
    s
}

fn is_precondition_failed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<RequestFailure>(),
            Some(RequestFailure::Status(StatusCode::PRECONDITION_FAILED))
        )
    })
}

/// The runtime every CalDAV request runs on: two threads of its own, so
/// that a store can be used from any thread (also from inside another
/// runtime, as the batch commands do) and requests to many servers wait
/// side by side.
fn io() -> anyhow::Result<&'static tokio::runtime::Runtime> {
    static IO: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    IO.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("imipd-caldav")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the CalDAV runtime: {e}"))
    })
    .as_ref()
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Run a future on the CalDAV runtime and wait for it, at most `timeout`.
fn block<T, Fut>(timeout: Duration, fut: Fut) -> anyhow::Result<T>
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let rt = io()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let r = tokio::time::timeout(timeout, fut).await;
        let _ = tx.send(r);
    });
    match rx.recv() {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => anyhow::bail!(
            "no answer within {} s (the store's timeout)",
            timeout.as_secs()
        ),
        Err(_) => anyhow::bail!("the CalDAV runtime stopped"),
    }
}

/// A tower service that adds the login (HTTP Basic) and imipd's
/// User-Agent to every request. The header is marked sensitive, so it is
/// never logged.
#[derive(Clone)]
struct Auth<S> {
    inner: S,
    authorization: Option<HeaderValue>,
}

impl<S> tower_service::Service<Request<String>> for Auth<S>
where
    S: tower_service::Service<Request<String>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<String>) -> Self::Future {
        if let Some(a) = &self.authorization {
            req.headers_mut().insert(AUTHORIZATION, a.clone());
        }
        req.headers_mut()
            .insert(USER_AGENT, HeaderValue::from_static("imipd/0.1"));
        self.inner.call(req)
    }
}

/// The HTTP client for a store: rustls (system roots plus `ca_file`),
/// HTTP/1.1, a small pool of kept-alive connections, the login.
async fn http_client(cfg: &CalDavConfig) -> anyhow::Result<Http> {
    let tls = crate::tls::client_config(cfg.ca_file.as_deref())?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls).clone())
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(2)
        .build(https);
    let authorization = match &cfg.username {
        None => None,
        Some(user) => {
            let password = match &cfg.secret {
                Some(s) => s.resolve_within(cfg.timeout).await?,
                None => String::new(),
            };
            use base64::Engine as _;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let mut v = HeaderValue::from_str(&format!("Basic {token}")).map_err(|_| {
                anyhow::anyhow!("cannot use the store's username or password in an HTTP header")
            })?;
            v.set_sensitive(true);
            Some(v)
        }
    };
    Ok(Auth {
        inner: client,
        authorization,
    })
}

/// Find the calendar: the URL itself, or through the principal's
/// calendar-home-set (the principal found at the URL, at `/`, or after
/// `/.well-known/caldav`).
async fn discover(cfg: CalDavConfig) -> anyhow::Result<Connected> {
    let server = cfg.url.clone();
    let fail =
        |what: &str, e: String| anyhow::anyhow!("cannot {what} on CalDAV server {server}: {e}");
    let base: Uri = cfg
        .url
        .parse()
        .map_err(|e| fail("use the URL", format!("{e}")))?;
    let origin = format!(
        "{}://{}",
        base.scheme_str().unwrap_or("https"),
        base.authority().map(|a| a.as_str()).unwrap_or("")
    );
    let http = http_client(&cfg).await?;
    let client = CalDavClient::new(WebDavClient::new(base.clone(), http));
    let path = match base.path() {
        "" => "/".to_string(),
        p => p.to_string(),
    };
    let login = |s: StatusCode| {
        if s == StatusCode::UNAUTHORIZED {
            format!(
                "the server refused the login (401){}; check the store's username and password",
                cfg.username
                    .as_deref()
                    .map(|u| format!(" as {u}"))
                    .unwrap_or_default()
            )
        } else {
            format!("the server answered {s}")
        }
    };
    // The URL may be the calendar itself.
    match collection_info(&client, &path).await {
        Ok(Some(info)) if info.calendar => {
            if let (Some(want), Some(have)) = (&cfg.calendar, &info.name) {
                if !want.eq_ignore_ascii_case(have) {
                    return Err(fail(
                        "find the calendar",
                        format!("the URL is the calendar \"{have}\", not \"{want}\": give the server's or the principal's URL to pick a calendar by name, or leave `calendar` out"),
                    ));
                }
            }
            return Ok(Connected {
                client,
                collection: with_slash(&path),
                name: info.name,
                origin,
                sync: info.sync,
            });
        }
        Ok(_) => {}
        Err(RequestFailure::Status(s)) if s == StatusCode::UNAUTHORIZED => {
            return Err(fail("log in", login(s)))
        }
        Err(RequestFailure::Status(s)) => {
            tracing::debug!(url = %cfg.url, "not a calendar: the server answered {s}")
        }
        // Not reached at all (refused, a certificate not trusted, …).
        Err(e) => return Err(fail("connect", e.to_string())),
    }
    // The principal, where the URL (or `/`) names it…
    let mut principal = client.find_current_user_principal().await.ok().flatten();
    let mut client = client;
    if principal.is_none() {
        // … or after the server's well-known entry point (RFC 6764 §5).
        let service = libdav::caldav_service_for_url(&base)
            .map_err(|e| fail("find the calendar", e.to_string()))?;
        let host = base.host().unwrap_or("").to_string();
        let port = base.port_u16().unwrap_or(service.default_port());
        if let Ok(Some(context)) = client.find_context_path(service, &host, port).await {
            let http = http_client(&cfg).await?;
            client = CalDavClient::new(WebDavClient::new(context, http));
            principal = client.find_current_user_principal().await.ok().flatten();
        }
    }
    // The calendar homes: the principal's, or the URL as one.
    let mut homes: Vec<String> = Vec::new();
    if let Some(p) = &principal {
        match client.request(FindCalendarHomeSet::new(p.path())).await {
            Ok(r) => homes.extend(r.home_sets.iter().map(|h| h.path().to_string())),
            Err(WebDavError::BadStatusCode(s)) if s == StatusCode::UNAUTHORIZED => {
                return Err(fail("log in", login(s)))
            }
            Err(e) => tracing::debug!("no calendar-home-set: {e}"),
        }
    }
    if homes.is_empty() {
        homes.push(path.clone());
    }
    let mut calendars: Vec<(String, Option<String>, bool)> = Vec::new();
    for home in &homes {
        match client.request(FindCalendars::new(home)).await {
            Ok(r) => {
                for c in r.calendars {
                    let name = c
                        .properties
                        .iter()
                        .find(|(p, _)| **p == names::DISPLAY_NAME)
                        .and_then(|(_, v)| v.clone());
                    calendars.push((c.href, name, c.supports_sync));
                }
            }
            Err(WebDavError::BadStatusCode(s)) if s == StatusCode::UNAUTHORIZED => {
                return Err(fail("log in", login(s)))
            }
            Err(e) => tracing::debug!(home, "cannot list calendars: {e}"),
        }
    }
    let label = |c: &(String, Option<String>, bool)| match &c.1 {
        Some(n) => format!("\"{n}\" ({})", c.0),
        None => c.0.clone(),
    };
    let chosen = match &cfg.calendar {
        Some(want) => calendars
            .iter()
            .find(|c| c.1.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(want)))
            .or_else(|| {
                calendars
                    .iter()
                    .find(|c| c.0.trim_end_matches('/').rsplit('/').next() == Some(want.as_str()))
            })
            .cloned()
            .ok_or_else(|| {
                fail(
                    "find the calendar",
                    format!(
                        "no calendar is named \"{want}\" (calendars: {})",
                        if calendars.is_empty() {
                            "none".to_string()
                        } else {
                            calendars.iter().map(label).collect::<Vec<_>>().join(", ")
                        }
                    ),
                )
            })?,
        None => match calendars.len() {
            1 => calendars[0].clone(),
            0 => {
                return Err(fail(
                    "find the calendar",
                    "the server shows no calendar for this login: give the calendar's own URL, or create one".into(),
                ))
            }
            _ => {
                return Err(fail(
                    "find the calendar",
                    format!(
                        "there are {} calendars ({}); choose one with calendar = \"NAME\"",
                        calendars.len(),
                        calendars.iter().map(label).collect::<Vec<_>>().join(", ")
                    ),
                ))
            }
        },
    };
    Ok(Connected {
        client,
        collection: with_slash(&chosen.0),
        name: chosen.1,
        origin,
        sync: chosen.2,
    })
}

fn with_slash(p: &str) -> String {
    if p.ends_with('/') {
        p.to_string()
    } else {
        format!("{p}/")
    }
}

/// What a PROPFIND (depth 0) says about a collection.
struct CollectionInfo {
    calendar: bool,
    name: Option<String>,
    sync: bool,
}

async fn collection_info(
    client: &Client,
    path: &str,
) -> Result<Option<CollectionInfo>, RequestFailure> {
    let req = Propfind {
        href: path.to_string(),
    };
    client.request(req).await.map_err(RequestFailure::from)
}

/// PROPFIND depth 0 for resourcetype, displayname and the reports.
struct Propfind {
    href: String,
}

impl DavRequest for Propfind {
    type Response = Option<CollectionInfo>;
    type ParseError = ParseResponseError;
    type Error<E> = WebDavError<E>;

    fn prepare_request(&self, base_url: Uri) -> Result<Request<String>, http::Error> {
        Request::builder()
            .method(Method::from_bytes(b"PROPFIND")?)
            .uri(make_relative_url(base_url, &self.href)?)
            .header("Depth", "0")
            .header("Content-Type", "application/xml; charset=utf-8")
            .body(
                "<D:propfind xmlns:D=\"DAV:\"><D:prop><D:resourcetype/><D:displayname/><D:supported-report-set/></D:prop></D:propfind>"
                    .to_string(),
            )
    }

    fn parse_response(
        &self,
        parts: &http::response::Parts,
        body: &[u8],
    ) -> Result<Self::Response, ParseResponseError> {
        if parts.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !parts.status.is_success() {
            return Err(ParseResponseError::BadStatusCode(parts.status));
        }
        let text = std::str::from_utf8(body)?;
        let doc = roxmltree::Document::parse(text)?;
        let is = |n: &roxmltree::Node, ns: &str, name: &str| {
            n.is_element() && n.tag_name().name() == name && n.tag_name().namespace() == Some(ns)
        };
        let calendar = doc
            .descendants()
            .filter(|n| is(n, names::DAV, "resourcetype"))
            .any(|r| r.descendants().any(|n| is(&n, names::CALDAV, "calendar")));
        let name = doc
            .descendants()
            .find(|n| is(n, names::DAV, "displayname"))
            .and_then(|n| n.text())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let sync = doc
            .descendants()
            .any(|n| is(&n, names::DAV, "sync-collection"));
        Ok(Some(CollectionInfo {
            calendar,
            name,
            sync,
        }))
    }
}

/// A REPORT on the calendar (a calendar-query), answered with each
/// resource's href, ETag and calendar data.
struct Report {
    href: String,
    body: String,
}

impl DavRequest for Report {
    type Response = Vec<Fetched>;
    type ParseError = ParseResponseError;
    type Error<E> = WebDavError<E>;

    fn prepare_request(&self, base_url: Uri) -> Result<Request<String>, http::Error> {
        Request::builder()
            .method(Method::from_bytes(b"REPORT")?)
            .uri(make_relative_url(base_url, &self.href)?)
            .header("Depth", "1")
            .header("Content-Type", "application/xml; charset=utf-8")
            .body(self.body.clone())
    }

    fn parse_response(
        &self,
        parts: &http::response::Parts,
        body: &[u8],
    ) -> Result<Self::Response, ParseResponseError> {
        if !parts.status.is_success() {
            return Err(ParseResponseError::BadStatusCode(parts.status));
        }
        parse_multistatus(body, &self.href)
    }
}

async fn report(
    client: &Client,
    collection: String,
    body: String,
) -> Result<Vec<Fetched>, RequestFailure> {
    client
        .request(Report {
            href: collection,
            body,
        })
        .await
        .map_err(RequestFailure::from)
}

/// The resources of a multistatus answer that came with calendar data.
fn parse_multistatus(body: &[u8], collection: &str) -> Result<Vec<Fetched>, ParseResponseError> {
    let text = std::str::from_utf8(body)?;
    let doc = roxmltree::Document::parse(text)?;
    let is = |n: &roxmltree::Node, ns: &str, name: &str| {
        n.is_element() && n.tag_name().name() == name && n.tag_name().namespace() == Some(ns)
    };
    let mut out = Vec::new();
    for response in doc.descendants().filter(|n| is(n, names::DAV, "response")) {
        let Some(href) = response
            .children()
            .find(|n| is(n, names::DAV, "href"))
            .and_then(|n| n.text())
        else {
            continue;
        };
        let href = libdav::encoding::normalise_percent_encoded(href.trim())
            .map(|h| h.into_owned())
            .unwrap_or_else(|_| href.trim().to_string());
        if href.trim_end_matches('/') == collection.trim_end_matches('/') {
            continue;
        }
        let mut etag = None;
        let mut data = None;
        for propstat in response
            .children()
            .filter(|n| is(n, names::DAV, "propstat"))
        {
            let ok = propstat
                .children()
                .find(|n| is(n, names::DAV, "status"))
                .and_then(|n| n.text())
                .is_none_or(|s| s.contains(" 200"));
            if !ok {
                continue;
            }
            for n in propstat.descendants() {
                if is(&n, names::DAV, "getetag") {
                    etag = n.text().map(|t| t.trim().to_string());
                } else if is(&n, names::CALDAV, "calendar-data") {
                    data = Some(n.text().unwrap_or("").to_string());
                }
            }
        }
        if let Some(data) = data {
            out.push(Fetched { href, etag, data });
        }
    }
    Ok(out)
}

/// XML text with its five special characters escaped.
fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// A calendar-query for the components of one type with a UID (a
/// substring match, RFC 4791 §9.7.5: the answers are checked exactly).
fn uid_query(comp: &str, uid: &str) -> String {
    format!(
        "<C:calendar-query xmlns:D=\"DAV:\" xmlns:C=\"urn:ietf:params:xml:ns:caldav\">\
         <D:prop><D:getetag/><C:calendar-data/></D:prop>\
         <C:filter><C:comp-filter name=\"VCALENDAR\"><C:comp-filter name=\"{comp}\">\
         <C:prop-filter name=\"UID\"><C:text-match collation=\"i;octet\">{}</C:text-match></C:prop-filter>\
         </C:comp-filter></C:comp-filter></C:filter></C:calendar-query>",
        xml_escape(uid)
    )
}

/// A calendar-query for the events with time in `[from, to)`.
fn range_query(from: i64, to: i64) -> String {
    let stamp = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .unwrap_or_default()
            .format("%Y%m%dT%H%M%SZ")
            .to_string()
    };
    format!(
        "<C:calendar-query xmlns:D=\"DAV:\" xmlns:C=\"urn:ietf:params:xml:ns:caldav\">\
         <D:prop><D:getetag/><C:calendar-data/></D:prop>\
         <C:filter><C:comp-filter name=\"VCALENDAR\"><C:comp-filter name=\"VEVENT\">\
         <C:time-range start=\"{}\" end=\"{}\"/></C:comp-filter></C:comp-filter></C:filter></C:calendar-query>",
        stamp(from),
        stamp(to)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_escape_the_uid() {
        let q = uid_query("VEVENT", "a<b>&\"c'");
        assert!(q.contains("a&lt;b&gt;&amp;&quot;c&apos;"), "{q}");
        assert!(
            range_query(0, 86_400).contains("start=\"19700101T000000Z\" end=\"19700102T000000Z\"")
        );
    }

    #[test]
    fn multistatus_keeps_resources_with_data() {
        let body = br#"<?xml version="1.0"?>
<d:multistatus xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav">
 <d:response><d:href>/cal/</d:href><d:propstat><d:prop><d:getetag>"c"</d:getetag></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>
 <d:response><d:href>/cal/a%40b.ics</d:href><d:propstat><d:prop><d:getetag>"1"</d:getetag><c:calendar-data>BEGIN:VCALENDAR
END:VCALENDAR
</c:calendar-data></d:prop><d:status>HTTP/1.1 200 OK</d:status></d:propstat></d:response>
 <d:response><d:href>/cal/gone.ics</d:href><d:status>HTTP/1.1 404 Not Found</d:status></d:response>
</d:multistatus>"#;
        let r = parse_multistatus(body, "/cal/").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].href, "/cal/a@b.ics");
        assert_eq!(r[0].etag.as_deref(), Some("\"1\""));
        assert!(r[0].data.starts_with("BEGIN:VCALENDAR"));
    }
}
