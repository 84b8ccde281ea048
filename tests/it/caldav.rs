//! The CalDAV store against real servers (Radicale and Xandikos, started
//! by the harness on 127.0.0.1): the scenario sequences that run on the
//! vdir run on both servers and must give the same outcomes, the same
//! replies and the same stored objects; an event a person changes through
//! CalDAV between imipd's read and its write loses nothing; discovery,
//! TLS, a wrong password and `check --connect`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::harness::dav::{DavServer, Kind};
use crate::support::*;

const ALICE: &str = "Alice <alice@example.com>";

/// Where a scenario keeps its calendar.
enum Backend {
    Vdir,
    Dav(Box<DavServer>),
}

/// One scenario environment: a configuration for bob@example.com with the
/// store on `backend`, the file transport and the given policies.
struct Run {
    env: Env,
    backend: Backend,
}

const OUTGOING: &str = "[outgoing]\ntransport = \"file\"\npath = \"sent\"\n";

impl Run {
    fn new(kind: Option<Kind>, extra: &str) -> Run {
        let env = Env::new(&format!("{OUTGOING}{extra}"));
        let backend = match kind {
            None => Backend::Vdir,
            Some(k) => {
                let server = DavServer::start(k);
                point_at(&env, &server.store_toml());
                Backend::Dav(Box::new(server))
            }
        };
        Run { env, backend }
    }

    /// Process one message; its outcome with what differs by store taken
    /// out (where the object went, where the message file was).
    fn step(&self, raw: &str) -> Value {
        let p = self.env.message(&format!("m-{}.eml", rand_suffix()), raw);
        let (values, out) = self.env.process(&[&p]);
        assert!(
            out.status.code() == Some(0) || out.status.code() == Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v = values
            .into_iter()
            .find(|v| v.get("results").is_some())
            .unwrap_or_else(|| panic!("no outcome: {}", String::from_utf8_lossy(&out.stderr)));
        v.as_object_mut().unwrap().remove("source");
        if let Some(rs) = v["results"].as_array_mut() {
            for r in rs {
                r.as_object_mut().unwrap().remove("file");
            }
        }
        v
    }

    /// UID → the stored object, in a canonical form (see [`canonical`]).
    fn stored(&self) -> BTreeMap<String, String> {
        let texts: Vec<String> = match &self.backend {
            Backend::Vdir => self.env.store_files().into_values().collect(),
            Backend::Dav(s) => {
                let objects = s.objects();
                // Resource names are safe, whatever the UID holds.
                for href in objects.keys() {
                    let name = href
                        .strip_prefix(&s.calendar)
                        .unwrap_or_else(|| panic!("{href} is outside the calendar {}", s.calendar));
                    assert!(
                        !name.contains('/') && !name.starts_with('.') && name.ends_with(".ics"),
                        "unsafe resource name {href}"
                    );
                }
                objects.into_values().collect()
            }
        };
        texts.iter().map(|t| (uid_of(t), canonical(t))).collect()
    }

    /// The replies sent: From, To and the VEVENTs of the calendar part.
    fn replies(&self) -> Vec<(String, String, Vec<String>)> {
        self.env
            .sent_in("sent")
            .iter()
            .map(|m| {
                let header = |name: &str| {
                    m.lines()
                        .find(|l| l.starts_with(name))
                        .unwrap_or_default()
                        .to_string()
                };
                let vevents = calendar_vevents(m)
                    .iter()
                    .map(|v| {
                        canonical(&format!(
                            "BEGIN:VCALENDAR\r\n{v}END:VEVENT\r\nEND:VCALENDAR\r\n"
                        ))
                    })
                    .collect();
                (header("From:"), header("To:"), vevents)
            })
            .collect()
    }
}

/// Replace the configuration's `[store]` with a CalDAV one (given as the
/// inline table of [`DavServer::store_toml`]).
fn point_at(env: &Env, store: &str) {
    let text = std::fs::read_to_string(&env.config).unwrap();
    let a = text.find("[store]\n").unwrap() + "[store]\n".len();
    let b = text.find("[state]\n").unwrap();
    let inner = store.trim().trim_start_matches('{').trim_end_matches('}');
    let lines: Vec<String> = inner.split(", ").map(|kv| kv.trim().to_string()).collect();
    let text = format!("{}{}\n{}", &text[..a], lines.join("\n"), &text[b..]);
    std::fs::write(&env.config, text).unwrap();
}

fn uid_of(text: &str) -> String {
    unfold(text)
        .replace("\r\n", "\n")
        .lines()
        .find_map(|l| l.strip_prefix("UID:").map(str::to_string))
        .unwrap_or_default()
}

/// A calendar object in a form two stores can be compared in: lines
/// unfolded, every component's properties sorted, components sorted, the
/// PRODID left out (a server may put its own).
fn canonical(text: &str) -> String {
    fn block(lines: &mut std::iter::Peekable<std::vec::IntoIter<String>>, name: &str) -> String {
        let mut props = Vec::new();
        let mut children = Vec::new();
        while let Some(l) = lines.next() {
            if let Some(child) = l.strip_prefix("BEGIN:") {
                children.push(block(lines, child));
            } else if l.starts_with("END:") {
                break;
            } else if !l.starts_with("PRODID:") && !l.is_empty() {
                props.push(sorted_params(&l));
            }
        }
        props.sort();
        children.sort();
        format!(
            "BEGIN:{name}\n{}{}END:{name}\n",
            props.iter().map(|p| format!("{p}\n")).collect::<String>(),
            children.concat()
        )
    }
    let unfolded = unfold(&text.replace("\r\n", "\n")).replace("\n ", "");
    let lines: Vec<String> = unfolded.lines().map(|l| l.trim_end().to_string()).collect();
    let mut it = lines.into_iter().peekable();
    let mut out = String::new();
    while let Some(l) = it.next() {
        if let Some(name) = l.strip_prefix("BEGIN:") {
            out.push_str(&block(&mut it, name));
        }
    }
    out
}

/// A content line with its parameters in order (their order means nothing,
/// and servers reorder them).
fn sorted_params(line: &str) -> String {
    let mut quoted = false;
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut value = None;
    for (i, c) in line.char_indices() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ';' if !quoted => parts.push(std::mem::take(&mut cur)),
            ':' if !quoted => {
                parts.push(std::mem::take(&mut cur));
                value = Some(&line[i..]);
                break;
            }
            _ => cur.push(c),
        }
    }
    let Some(value) = value else {
        return line.to_string();
    };
    let name = parts.remove(0);
    parts.sort();
    let mut out = name;
    for p in parts {
        out.push(';');
        out.push_str(&p);
    }
    out.push_str(value);
    out
}

/// Everything a scenario produced.
#[derive(Debug, PartialEq)]
struct Result_ {
    outcomes: Vec<Value>,
    stored: BTreeMap<String, String>,
    replies: Vec<(String, String, Vec<String>)>,
}

/// Run a sequence of messages on one backend.
fn run(kind: Option<Kind>, extra: &str, messages: &[String]) -> Result_ {
    let r = Run::new(kind, extra);
    let outcomes = messages.iter().map(|m| r.step(m)).collect();
    Result_ {
        outcomes,
        stored: r.stored(),
        replies: r.replies(),
    }
}

/// Run on the vdir, Radicale and Xandikos: the same outcomes, replies and
/// store, exactly. Returns the vdir's.
fn same_everywhere(extra: &str, messages: &[String]) -> Result_ {
    let vdir = run(None, extra, messages);
    for kind in [Kind::Radicale, Kind::Xandikos] {
        let dav = run(Some(kind), extra, messages);
        for (i, (a, b)) in vdir.outcomes.iter().zip(&dav.outcomes).enumerate() {
            assert_eq!(
                a,
                b,
                "{}: outcome of message {i} differs from the vdir's",
                kind.name()
            );
        }
        assert_eq!(
            vdir.stored,
            dav.stored,
            "{}: the store differs from the vdir's",
            kind.name()
        );
        assert_eq!(
            vdir.replies,
            dav.replies,
            "{}: the replies differ from the vdir's",
            kind.name()
        );
    }
    vdir
}

fn effects(r: &Result_) -> Vec<String> {
    r.outcomes
        .iter()
        .flat_map(|o| o["results"].as_array().cloned().unwrap_or_default())
        .map(|x| x["effect"].as_str().unwrap_or("").to_string())
        .collect()
}

fn invite(uid: &str, seq: u32, stamp: &str, start: &str, summary: &str, extra: &[&str]) -> String {
    let mut lines = vec![
        format!("UID:{uid}"),
        format!("SEQUENCE:{seq}"),
        format!("DTSTAMP:{stamp}"),
        format!("DTSTART;TZID=Europe/Berlin:{start}"),
        "DURATION:PT1H".to_string(),
        format!("SUMMARY:{summary}"),
        "ORGANIZER;CN=Alice:mailto:alice@example.com".to_string(),
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:bob@example.com".to_string(),
        "ATTENDEE;PARTSTAT=ACCEPTED:mailto:alice@example.com".to_string(),
    ];
    lines.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    mail(ALICE, "REQUEST", &[vevent(&refs)])
}

fn weekly(seq: u32, stamp: &str, start: &str, summary: &str) -> String {
    invite(
        "team-42@example.com",
        seq,
        stamp,
        start,
        summary,
        &["RRULE:FREQ=WEEKLY;COUNT=8"],
    )
}

fn cancel(from: &str, seq: u32, stamp: &str, rid: Option<&str>, range: bool) -> String {
    let mut lines = vec![
        "UID:team-42@example.com".to_string(),
        format!("SEQUENCE:{seq}"),
        format!("DTSTAMP:{stamp}"),
        "ORGANIZER;CN=Alice:mailto:alice@example.com".to_string(),
        "ATTENDEE:mailto:bob@example.com".to_string(),
    ];
    if let Some(r) = rid {
        let p = if range { ";RANGE=THISANDFUTURE" } else { "" };
        lines.push(format!("RECURRENCE-ID;TZID=Europe/Berlin{p}:{r}"));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    mail(from, "CANCEL", &[vevent(&refs)])
}

const ACCEPT: &str = "[[policy]]\nname = \"alice\"\nmethods = [\"REQUEST\", \"ADD\"]\norganizers = [\"alice@example.com\"]\naction = \"accept\"\n";

#[test]
fn caldav_scenarios_ordering_duplicates_and_spoofs_match_the_vdir() {
    let v1 = weekly(0, "20261120T100000Z", "20261201T100000", "Planning");
    let v2 = weekly(1, "20261121T100000Z", "20261201T140000", "Planning (moved)");
    let spoof = cancel(
        "Mallory <mallory@evil.example>",
        9,
        "20261122T100000Z",
        None,
        false,
    );
    let hijack = weekly(5, "20261125T100000Z", "20261201T100000", "Mine now")
        .replace("mailto:alice@example.com", "mailto:mallory@evil.example")
        .replace(ALICE, "mallory@evil.example");
    let r = same_everywhere("", &[v2.clone(), v1.clone(), v2.clone(), spoof, hijack]);
    assert_eq!(
        effects(&r),
        ["created", "stale", "unchanged", "refused", "refused"]
    );
    let text = &r.stored["team-42@example.com"];
    assert!(
        text.contains("DTSTART;TZID=Europe/Berlin:20261201T140000"),
        "{text}"
    );
}

#[test]
fn caldav_scenarios_cancels_held_cancels_and_instances_match_the_vdir() {
    let r = same_everywhere(
        "",
        &[
            // A cancel of one instance before its request: held.
            cancel(ALICE, 1, "20261121T090000Z", Some("20261215T100000"), false),
            weekly(0, "20261120T100000Z", "20261201T100000", "Planning"),
            cancel(ALICE, 1, "20261121T100000Z", Some("20261208T100000"), false),
            // One instance moved (a naked REQUEST for it).
            invite(
                "team-42@example.com",
                2,
                "20261122T100000Z",
                "20261222T110000",
                "Planning (one moved)",
                &["RECURRENCE-ID;TZID=Europe/Berlin:20261222T100000"],
            ),
            cancel(ALICE, 3, "20261123T100000Z", Some("20270105T100000"), true),
            cancel(ALICE, 4, "20261124T100000Z", None, false),
        ],
    );
    assert_eq!(
        effects(&r),
        [
            "held",
            "created",
            "cancelled",
            "updated",
            "cancelled",
            "cancelled"
        ]
    );
    let text = &r.stored["team-42@example.com"];
    assert!(
        text.contains("EXDATE;TZID=Europe/Berlin:20261208T100000"),
        "{text}"
    );
    assert!(
        text.contains("EXDATE;TZID=Europe/Berlin:20261215T100000"),
        "held: {text}"
    );
    assert!(text.contains("STATUS:CANCELLED"), "{text}");
}

fn own_event() -> String {
    mail(
        "Bob <bob@example.com>",
        "REQUEST",
        &[vevent(&[
            "UID:mine-1@example.com",
            "SEQUENCE:0",
            "DTSTAMP:20261120T100000Z",
            "DTSTART:20261203T150000Z",
            "DTEND:20261203T160000Z",
            "SUMMARY:Bob's review",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE;PARTSTAT=ACCEPTED:mailto:bob@example.com",
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:carol@example.com",
            "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:dave@example.com",
        ])],
    )
}

fn reply(from: &str, who: &str, partstat: &str, stamp: &str) -> String {
    mail(
        from,
        "REPLY",
        &[vevent(&[
            "UID:mine-1@example.com",
            "SEQUENCE:0",
            &format!("DTSTAMP:{stamp}"),
            "ORGANIZER:mailto:bob@example.com",
            &format!("ATTENDEE;PARTSTAT={partstat}:mailto:{who}"),
        ])],
    )
}

#[test]
fn caldav_scenarios_replies_to_my_events_match_the_vdir() {
    let r = same_everywhere(
        "",
        &[
            own_event(),
            reply(
                "carol@example.com",
                "carol@example.com",
                "ACCEPTED",
                "20261121T100000Z",
            ),
            reply(
                "carol@example.com",
                "carol@example.com",
                "DECLINED",
                "20261120T110000Z",
            ),
            reply(
                "mallory@evil.example",
                "mallory@evil.example",
                "ACCEPTED",
                "20261121T100000Z",
            ),
            reply(
                "mallory@evil.example",
                "dave@example.com",
                "DECLINED",
                "20261121T100000Z",
            ),
        ],
    );
    let text = &r.stored["mine-1@example.com"];
    assert!(
        text.contains("PARTSTAT=ACCEPTED") && text.contains("mailto:carol@example.com"),
        "{text}"
    );
    assert!(!text.contains("mallory"), "{text}");
}

#[test]
fn caldav_scenarios_answers_and_busy_time_match_the_vdir() {
    let policies = ACCEPT.replace("name = \"alice\"", "name = \"alice\"\nconflict = false")
        + "[[policy]]\nname = \"clash\"\nmethods = [\"REQUEST\"]\nconflict = true\naction = \"tentative\"\n";
    let first = invite(
        "a@example.com",
        0,
        "20261120T100000Z",
        "20261201T100000",
        "First",
        &[],
    );
    // Overlaps the first: answered tentatively (busy time from the store).
    let clash = invite(
        "b@example.com",
        0,
        "20261120T100000Z",
        "20261201T103000",
        "Clash",
        &[],
    );
    // Free time: accepted.
    let free = invite(
        "c@example.com",
        0,
        "20261120T100000Z",
        "20261201T160000",
        "Free",
        &[],
    );
    // Moved: answered again; the same again: not answered twice.
    let moved = invite(
        "c@example.com",
        1,
        "20261121T100000Z",
        "20261202T160000",
        "Free (moved)",
        &[],
    );
    let recurring = weekly(0, "20261120T100000Z", "20261203T100000", "Weekly");
    // Overlaps one instance of the weekly series.
    let clash2 = invite(
        "d@example.com",
        0,
        "20261120T100000Z",
        "20261217T100000",
        "Clash with an instance",
        &[],
    );
    let r = same_everywhere(
        &policies,
        &[first, clash, free, moved.clone(), moved, recurring, clash2],
    );
    let replies: Vec<String> = r
        .outcomes
        .iter()
        .map(|o| o["results"][0]["policy"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        replies,
        ["alice", "clash", "alice", "alice", "alice", "alice", "clash"]
    );
    assert_eq!(r.replies.len(), 6, "{:#?}", r.replies);
}

#[test]
fn caldav_scenarios_hostile_uids_and_todos_match_the_vdir() {
    let uids = [
        "../../etc/passwd",
        "a/b\\c",
        "Ünïcödé €",
        ".hidden",
        "x y<z>&\"'",
    ];
    let mut messages: Vec<String> = uids
        .iter()
        .map(|u| invite(u, 0, "20261120T100000Z", "20261201T100000", "Hostile", &[]))
        .collect();
    messages.push(mail(
        ALICE,
        "REQUEST",
        &[
            "BEGIN:VTODO\r\nUID:todo-1@example.com\r\nSEQUENCE:0\r\nDTSTAMP:20261120T100000Z\r\n\
           DUE:20261210T100000Z\r\nSUMMARY:A task\r\nORGANIZER:mailto:alice@example.com\r\n\
           ATTENDEE;PARTSTAT=NEEDS-ACTION:mailto:bob@example.com\r\nEND:VTODO\r\n"
                .to_string(),
        ],
    ));
    messages.push(mail(
        ALICE,
        "CANCEL",
        &[
            "BEGIN:VTODO\r\nUID:todo-1@example.com\r\nSEQUENCE:1\r\nDTSTAMP:20261121T100000Z\r\n\
           ORGANIZER:mailto:alice@example.com\r\nATTENDEE:mailto:bob@example.com\r\nEND:VTODO\r\n"
                .to_string(),
        ],
    ));
    let r = same_everywhere("", &messages);
    assert_eq!(
        effects(&r),
        [
            "created",
            "created",
            "created",
            "created",
            "created",
            "created",
            "cancelled"
        ]
    );
    assert_eq!(r.stored.len(), 6);
}

/// A forwarding proxy in front of a CalDAV server that calls a hook with
/// each request's head before it goes on (the pause point where a test
/// changes the server behind imipd's back).
struct HttpTap {
    port: u16,
}

type Hook = Arc<Mutex<dyn FnMut(&str) + Send>>;

impl HttpTap {
    fn start(upstream: u16, hook: impl FnMut(&str) + Send + 'static) -> HttpTap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hook: Hook = Arc::new(Mutex::new(hook));
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (mut s_read, mut c_write) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_read, &mut c_write);
                    let _ = c_write.shutdown(std::net::Shutdown::Both);
                });
                let hook = hook.clone();
                std::thread::spawn(move || loop {
                    // One request: its head, then Content-Length bytes.
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match c_read.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => {
                                let _ = s_write.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    let len = text
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0usize);
                    let mut body = vec![0u8; len];
                    if c_read.read_exact(&mut body).is_err() {
                        return;
                    }
                    (hook.lock().unwrap())(&text);
                    if s_write
                        .write_all(&head)
                        .and_then(|_| s_write.write_all(&body))
                        .is_err()
                    {
                        return;
                    }
                });
            }
        });
        HttpTap { port }
    }
}

/// A person edits the event in their calendar app between imipd's read of
/// it and imipd's write of the organizer's update: the write is refused
/// (412), imipd reads the person's version and applies the update to it.
/// Both the update and the person's alarm, category and note are there.
fn edit_between_read_and_write(kind: Kind) {
    let server = Arc::new(DavServer::start(kind));
    let edited = Arc::new(Mutex::new(false));
    let tap = {
        let server = server.clone();
        let edited = edited.clone();
        HttpTap::start(server.port, move |head| {
            let mut done = edited.lock().unwrap();
            if *done
                || !head.starts_with("PUT ")
                || !head.to_ascii_lowercase().contains("if-match:")
            {
                return;
            }
            // The person's edit, through CalDAV, as their app would do it.
            let (href, etag, data) = server.object("team-42@example.com").expect("the event");
            let mine = data.replace("\r\n", "\n").replace(
                "END:VEVENT",
                "CATEGORIES:Important\nX-MY-NOTE:bring the slides\nBEGIN:VALARM\nACTION:DISPLAY\nDESCRIPTION:Soon\nTRIGGER:-PT15M\nEND:VALARM\nEND:VEVENT",
            );
            let (status, _) = server.put(&href, &mine.replace('\n', "\r\n"), Some(&etag));
            assert!(
                status == 204 || status == 201 || status == 200,
                "the person's edit: {status}"
            );
            *done = true;
        })
    };
    let env = Env::new("");
    let store = server.store_toml().replace(
        &format!("127.0.0.1:{}", server.port),
        &format!("127.0.0.1:{}", tap.port),
    );
    point_at(&env, &store);
    let v1 = weekly(0, "20261120T100000Z", "20261201T100000", "Planning");
    let v2 = weekly(1, "20261121T100000Z", "20261201T140000", "Planning (moved)");
    let r = Run {
        env,
        backend: Backend::Vdir,
    };
    assert_eq!(r.step(&v1)["results"][0]["effect"], "created");
    assert!(!*edited.lock().unwrap(), "a create is not an update");
    let o = r.step(&v2);
    assert!(
        *edited.lock().unwrap(),
        "the person edited between imipd's read and write"
    );
    assert_eq!(o["results"][0]["effect"], "updated", "{o}");
    let (_, _, text) = server.object("team-42@example.com").unwrap();
    let text = unfold(&text.replace("\r\n", "\n"));
    assert!(
        text.contains("DTSTART;TZID=Europe/Berlin:20261201T140000"),
        "the update: {text}"
    );
    assert!(text.contains("SEQUENCE:1"), "{text}");
    assert!(
        text.contains("CATEGORIES:Important"),
        "the person's category: {text}"
    );
    assert!(
        text.contains("X-MY-NOTE:bring the slides"),
        "the person's note: {text}"
    );
    assert!(
        text.contains("TRIGGER:-PT15M"),
        "the person's alarm: {text}"
    );
    assert_eq!(server.objects().len(), 1, "no second object");
}

#[test]
fn caldav_a_change_between_read_and_write_is_not_lost_radicale() {
    edit_between_read_and_write(Kind::Radicale);
}

#[test]
fn caldav_a_change_between_read_and_write_is_not_lost_xandikos() {
    edit_between_read_and_write(Kind::Xandikos);
}

#[test]
fn caldav_tls_discovery_and_check_connect() {
    let server = DavServer::start_tls();
    let env = Env::new("");
    point_at(&env, &server.store_toml());
    let out = env.run(&["check", "--connect", "--process-only"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("calendar \"Calendar\" at https://127.0.0.1:")
            && stdout.contains(&server.calendar),
        "{stdout}"
    );
    // Filed over TLS.
    let o = env.one(&weekly(
        0,
        "20261120T100000Z",
        "20261201T100000",
        "Planning",
    ));
    assert_eq!(first(&o)["effect"], "created");
    assert!(
        first(&o)["file"]
            .as_str()
            .unwrap()
            .starts_with("https://127.0.0.1:"),
        "{o}"
    );
    // Without the CA the certificate is refused; a wrong password is said so.
    let no_ca = server.store_toml().replace(
        &format!(
            ", ca_file = \"{}\"",
            server.certs.as_ref().unwrap().ca_pem.display()
        ),
        "",
    );
    point_at(&env, &no_ca);
    let out = env.run(&["check", "--connect", "--process-only"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("cannot") && stderr.to_lowercase().contains("certificate"),
        "{stderr}"
    );
    let env = Env::new("");
    point_at(
        &env,
        &server
            .store_toml()
            .replace("password = \"secret\"", "password = \"wrong\""),
    );
    let out = env.run(&["check", "--connect", "--process-only"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("refused the login (401) as bob"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wrong"),
        "the password is never shown: {stderr}"
    );
    // A message that cannot reach its store is left for the next pass.
    let p = env.message(
        "m.eml",
        &weekly(0, "20261120T100000Z", "20261201T100000", "Planning"),
    );
    let (_, out) = env.process(&[&p]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn caldav_discovery_needs_a_calendar_name_when_there_are_several() {
    // Xandikos has "calendar" (from --defaults) and "Calendar".
    let server = DavServer::start(Kind::Xandikos);
    let env = Env::new("");
    point_at(
        &env,
        &server.store_toml().replace(", calendar = \"Calendar\"", ""),
    );
    let out = env.run(&["check", "--connect", "--process-only"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("choose one with calendar = \"NAME\""),
        "{stderr}"
    );
    // The calendar's own URL needs no name.
    let own = format!(
        "{{ type = \"caldav\", url = \"{}{}\" }}",
        server.origin(),
        server.calendar
    );
    point_at(&env, &own);
    let o = env.one(&weekly(
        0,
        "20261120T100000Z",
        "20261201T100000",
        "Planning",
    ));
    assert_eq!(first(&o)["effect"], "created", "{o}");
    assert_eq!(server.objects().len(), 1);
}
