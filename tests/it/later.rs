//! Answering later (issue 14): `pending` lists what waits, `respond`
//! answers over a real SMTP receiver (a changed answer is a new REPLY, a
//! repeated one is none), an edit of my PARTSTAT in the `.ics` file and the
//! deletion of an upcoming invitation are answered by `once` and, within
//! seconds, by `run`; a decision hook that accepts standups and declines the
//! rest, one that hangs, one that prints garbage; COUNTER and the
//! DECLINECOUNTER that comes back; the MCP server driven through a session.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::smtp::{Received, SmtpOptions, SmtpServer};
use crate::support::*;

fn invitation(uid: &str, summary: &str, start: &str, end: &str, extra: &[&str]) -> String {
    let mut lines = vec![
        format!("UID:{uid}"),
        "SEQUENCE:0".into(),
        "DTSTAMP:20261120T100000Z".into(),
        format!("DTSTART;TZID=Europe/Berlin:{start}"),
        format!("DTEND;TZID=Europe/Berlin:{end}"),
        format!("SUMMARY:{summary}"),
        "LOCATION:Room 4".into(),
        "ORGANIZER;CN=Alice:mailto:alice@example.com".into(),
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=Bob:mailto:bob@example.com".into(),
        "ATTENDEE;PARTSTAT=ACCEPTED;ROLE=CHAIR:mailto:alice@example.com".into(),
    ];
    lines.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    mail("Alice <alice@example.com>", "REQUEST", &[vevent(&refs)])
}

fn planning(uid: &str) -> String {
    invitation(uid, "Planning", "20261201T100000", "20261201T110000", &[])
}

fn smtp_env(smtp: &SmtpServer, extra: &str) -> Env {
    Env::new(&format!(
        "[outgoing]\ntransport = \"smtp\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout = 5\n{extra}",
        smtp.port
    ))
}

fn file_env(extra: &str) -> Env {
    Env::new(&format!(
        "[outgoing]\ntransport = \"file\"\npath = \"sent\"\n{extra}"
    ))
}

fn run(env: &Env, args: &[&str]) -> (Option<i32>, String, String) {
    env.run_text(args)
}

fn lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
        .collect()
}

fn pending(env: &Env) -> Vec<Value> {
    let (code, out, err) = run(env, &["pending", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    lines(&out)
}

/// The method and my PARTSTAT of a sent iTIP message (parsed back by the
/// classifier).
fn itip_of(env: &Env, raw: &str) -> (String, String, Value) {
    let f = env.message(&format!("got-{}.eml", rand_suffix()), raw);
    let out = imipd().arg("classify").arg(&f).output().unwrap();
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["valid"], true, "{c}");
    let m = &c["messages"][0];
    let partstat = m["components"][0]["attendees"]["mailto:bob@example.com"]
        .as_str()
        .unwrap_or("")
        .to_string();
    (m["method"].as_str().unwrap_or("").to_string(), partstat, c)
}

fn partstats(env: &Env, got: &[Received]) -> Vec<String> {
    got.iter()
        .map(|r| {
            let (method, p, _) = itip_of(env, &r.data_str());
            assert_eq!(method, "REPLY");
            p
        })
        .collect()
}

fn sent_partstats(env: &Env) -> Vec<(String, String)> {
    env.sent_in("sent")
        .iter()
        .map(|m| {
            let (method, p, _) = itip_of(env, m);
            (method, p)
        })
        .collect()
}

fn store_file(env: &Env, uid: &str) -> std::path::PathBuf {
    env.store().join(format!("{uid}.ics"))
}

#[test]
fn filed_pending_respond_change_and_repeat_over_smtp() {
    let smtp = SmtpServer::start(SmtpOptions::plain());
    let env = smtp_env(&smtp, "");
    let o = env.one(&planning("later-1@example.com"));
    assert_eq!(first(&o)["effect"], "created", "{o}");
    assert!(first(&o)["reply"].is_null(), "no policy answers: {o}");
    // An overlapping invitation from someone else: a conflict for both.
    env.one(&invitation(
        "later-2@example.com",
        "Dentist",
        "20261201T103000",
        "20261201T113000",
        &[],
    ));

    let items = pending(&env);
    assert_eq!(items.len(), 2, "{items:?}");
    let it = items
        .iter()
        .find(|i| i["uid"] == "later-1@example.com")
        .unwrap();
    assert_eq!(it["schema"], 1);
    assert_eq!(it["kind"], "invitation");
    assert!(it["recurrence_id"].is_null());
    assert_eq!(it["summary"], "Planning");
    assert_eq!(it["start"], "2026-12-01T10:00:00+01:00");
    assert_eq!(it["end"], "2026-12-01T11:00:00+01:00");
    assert_eq!(it["timezone"], "Europe/Berlin");
    assert_eq!(it["location"], "Room 4");
    assert_eq!(it["organizer"]["address"], "alice@example.com");
    assert_eq!(
        it["attendees"][0],
        json!({"address": "bob@example.com", "name": "Bob", "partstat": "NEEDS-ACTION", "role": "REQ-PARTICIPANT"})
    );
    assert_eq!(it["attendees"][1]["role"], "CHAIR");
    assert!(
        it["why"].as_str().unwrap().contains("no policy answers it"),
        "{it}"
    );
    assert_eq!(it["conflicts"][0]["uid"], "later-2@example.com", "{it}");
    assert_eq!(it["conflicts"][0]["summary"], "Dentist");
    assert_eq!(it["conflicts"][0]["start"], "2026-12-01T10:30:00+01:00");
    let (_, table, _) = run(&env, &["pending"]);
    assert!(table.contains("later-1@example.com") && table.contains("Planning"));

    // Accept: one REPLY, ACCEPTED, and it waits no more.
    let (code, out, err) = run(
        &env,
        &[
            "respond",
            "later-1@example.com",
            "accept",
            "--comment",
            "Gladly",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let r = &lines(&out)[0];
    assert_eq!(r["reply"]["status"], "queued", "{r}");
    assert_eq!(r["reply"]["to"], json!(["alice@example.com"]));
    assert_eq!(r["reply"]["partstat"], "ACCEPTED");
    assert_eq!(r["changed"], true);
    let got = smtp.wait_for(1, Duration::from_secs(10));
    assert_eq!(partstats(&env, &got), ["ACCEPTED"]);
    assert!(got[0].data_str().contains("COMMENT:Gladly"));
    assert!(stored(&env, "later-1@example.com")
        .unwrap()
        .contains("PARTSTAT=ACCEPTED;CN=Bob"));
    let items = pending(&env);
    assert!(
        items.iter().all(|i| i["uid"] != "later-1@example.com"),
        "{items:?}"
    );

    // The same answer again sends nothing; a changed one a new REPLY, and
    // changing it back another.
    let (code, out, err) = run(
        &env,
        &["respond", "later-1@example.com", "accept", "--json"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines(&out)[0]["reply"]["status"], "already-answered");
    let (code, _, err) = run(&env, &["respond", "later-1@example.com", "decline"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run(&env, &["respond", "later-1@example.com", "accept"]);
    assert_eq!(code, Some(0), "{err}");
    let got = smtp.wait_for(3, Duration::from_secs(10));
    assert_eq!(partstats(&env, &got), ["ACCEPTED", "DECLINED", "ACCEPTED"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(smtp.received().len(), 3, "nothing more");
}

#[test]
fn respond_refuses_what_cannot_be_answered_with_exit_2() {
    let env = file_env("");
    env.one(&planning("ok@example.com"));
    // Organized by me.
    env.one(&mail(
        "Bob <bob@example.com>",
        "REQUEST",
        &[vevent(&[
            "UID:mine@example.com",
            "DTSTAMP:20261120T100000Z",
            "DTSTART:20261205T100000Z",
            "DTEND:20261205T110000Z",
            "ORGANIZER:mailto:bob@example.com",
            "ATTENDEE:mailto:erin@example.com",
        ])],
    ));
    // Not invited.
    env.one(&planning("other@example.com").replace(
        "ATTENDEE;PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=Bob:mailto:bob@example.com\r\n",
        "",
    ));
    // Over.
    env.one(&invitation(
        "past@example.com",
        "Past",
        "20261101T100000",
        "20261101T110000",
        &[],
    ));
    // Cancelled.
    env.one(&planning("gone@example.com"));
    env.one(&mail(
        "Alice <alice@example.com>",
        "CANCEL",
        &[vevent(&[
            "UID:gone@example.com",
            "SEQUENCE:1",
            "DTSTAMP:20261121T090000Z",
            "DTSTART;TZID=Europe/Berlin:20261201T100000",
            "ORGANIZER;CN=Alice:mailto:alice@example.com",
            "ATTENDEE:mailto:bob@example.com",
            "STATUS:CANCELLED",
        ])],
    ));
    for (uid, says) in [
        ("nobody@example.com", "no event with this UID"),
        ("mine@example.com", "I organize this event"),
        ("other@example.com", "not invited"),
        ("past@example.com", "over"),
        ("gone@example.com", "cancelled"),
    ] {
        let (code, _, err) = run(&env, &["respond", uid, "accept"]);
        assert_eq!(code, Some(2), "{uid}: {err}");
        assert!(err.contains(says), "{uid}: {err}");
    }
    let (code, _, err) = run(
        &env,
        &[
            "respond",
            "ok@example.com",
            "--instance",
            "20261208T090000Z",
            "accept",
        ],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("no instance"), "{err}");
    let (code, _, _) = run(&env, &["respond", "ok@example.com", "maybe-not"]);
    assert_eq!(code, Some(2), "a bad answer is a usage error");
    assert!(env.sent_in("sent").is_empty());
    // pending lists only the one that waits.
    let uids: Vec<Value> = pending(&env).iter().map(|i| i["uid"].clone()).collect();
    assert_eq!(uids, [json!("ok@example.com")]);
}

#[test]
fn one_instance_of_a_series_is_answered_on_its_own() {
    let env = file_env("");
    env.one(&invitation(
        "weekly@example.com",
        "Weekly",
        "20261201T100000",
        "20261201T110000",
        &["RRULE:FREQ=WEEKLY;COUNT=4"],
    ));
    let items = pending(&env);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["recurrence"], "FREQ=WEEKLY;COUNT=4");
    let (code, out, err) = run(
        &env,
        &[
            "respond",
            "weekly@example.com",
            "--instance",
            "2026-12-08T10:00:00+01:00",
            "decline",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines(&out)[0]["recurrence_id"], "2026-12-08T10:00:00+01:00");
    let sent = env.sent_in("sent");
    assert_eq!(sent.len(), 1);
    let v = calendar_vevents(&sent[0]);
    assert_eq!(v.len(), 1);
    assert!(
        v[0].contains("RECURRENCE-ID;TZID=Europe/Berlin:20261208T100000"),
        "{}",
        v[0]
    );
    assert!(v[0].contains("PARTSTAT=DECLINED"));
    // The series still waits; the instance does not.
    let items = pending(&env);
    assert_eq!(items.len(), 1, "{items:?}");
    assert!(items[0]["recurrence_id"].is_null());
}

#[test]
fn an_edit_in_the_store_is_answered_and_a_deletion_declines() {
    let env = file_env("");
    env.one(&planning("edit@example.com"));
    env.one(&invitation(
        "del@example.com",
        "Review",
        "20261202T100000",
        "20261202T110000",
        &[],
    ));
    // imipd's own writes answer nothing.
    let (code, _, err) = run(&env, &["once"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(env.sent_in("sent").is_empty(), "{err}");
    // As khal would: my PARTSTAT edited in the file.
    let path = store_file(&env, "edit@example.com");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=Bob",
            "PARTSTAT=TENTATIVE;CN=Bob",
        ),
    )
    .unwrap();
    let (code, _, err) = run(&env, &["once"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        sent_partstats(&env),
        [("REPLY".to_string(), "TENTATIVE".to_string())],
        "{err}"
    );
    assert!(err.contains("my answer changed to TENTATIVE"), "{err}");
    // Looked at again: nothing new.
    run(&env, &["once"]);
    assert_eq!(env.sent_in("sent").len(), 1);
    // A respond after the edit is imipd's own write: no extra REPLY.
    run(&env, &["respond", "edit@example.com", "accept"]);
    run(&env, &["once"]);
    assert_eq!(env.sent_in("sent").len(), 2);
    // The upcoming invitation deleted from the store: declined.
    std::fs::remove_file(store_file(&env, "del@example.com")).unwrap();
    let (code, out, err) = run(&env, &["once", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let edit = lines(&out)
        .into_iter()
        .find(|l| l.get("edit").is_some())
        .unwrap_or_else(|| panic!("no edit line: {out}"));
    assert_eq!(edit["edit"]["change"], "deleted");
    assert_eq!(edit["edit"]["reply"]["status"], "queued");
    let sent = sent_partstats(&env);
    assert_eq!(sent.len(), 3);
    assert!(sent.contains(&("REPLY".to_string(), "DECLINED".to_string())));
    run(&env, &["once"]);
    assert_eq!(env.sent_in("sent").len(), 3, "declined once");

    // Turned off: an edit is left alone.
    let off = file_env("");
    std::fs::write(
        &off.config,
        std::fs::read_to_string(&off.config).unwrap().replace(
            "path = \"calendar\"",
            "path = \"calendar\"\nanswer_edits = false",
        ),
    )
    .unwrap();
    off.one(&planning("off@example.com"));
    std::fs::remove_file(store_file(&off, "off@example.com")).unwrap();
    run(&off, &["once"]);
    assert!(off.sent_in("sent").is_empty());
}

fn spawn_run(env: &Env) -> Child {
    std::fs::create_dir_all(env.path("Maildir/new")).unwrap();
    std::fs::create_dir_all(env.path("Maildir/cur")).unwrap();
    std::fs::create_dir_all(env.path("Maildir/tmp")).unwrap();
    imipd()
        .args(["run", "--config"])
        .arg(&env.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_answers_an_edit_within_seconds_and_respond_works_beside_it() {
    let env = file_env(
        "[[account]]\nname = \"mail\"\nsource = \"maildir\"\npath = \"Maildir\"\npoll_interval = 1\n",
    );
    env.one(&planning("run-edit@example.com"));
    env.one(&invitation(
        "run-respond@example.com",
        "Sync",
        "20261203T100000",
        "20261203T110000",
        &[],
    ));
    let mut child = spawn_run(&env);
    // respond while the service holds its lock: answered at once.
    let started = Instant::now();
    let (code, _, err) = run(&env, &["respond", "run-respond@example.com", "accept"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let path = store_file(&env, "run-edit@example.com");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = Instant::now();
    std::fs::write(
        &path,
        text.replace(
            "PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=Bob",
            "PARTSTAT=DECLINED;CN=Bob",
        ),
    )
    .unwrap();
    wait_until("the REPLY to the edit", Duration::from_secs(15), || {
        env.sent_in("sent").len() >= 2
    });
    let took = edited.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    let mut got: Vec<String> = sent_partstats(&env).into_iter().map(|(_, p)| p).collect();
    got.sort();
    assert_eq!(got, ["ACCEPTED", "DECLINED"]);
    println!("figure: run answered a calendar edit in {took:?}");
}

fn hook_script(env: &Env, name: &str, body: &str) -> String {
    let p = env.path(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

#[test]
fn a_hook_accepts_standups_declines_the_rest_and_falls_back() {
    let env = file_env("");
    let hook = hook_script(
        &env,
        "decide.sh",
        "input=$(cat)\nprintf '%s' \"$input\" > \"$0.input\"\n\
         case \"$input\" in\n  *'\"summary\":\"Daily standup\"'*) echo '{\"action\":\"accept\",\"comment\":\"See you\"}' ;;\n  *) echo '{\"action\":\"decline\"}' ;;\nesac",
    );
    let cfg = format!(
        "[[policy]]\nname = \"bot\"\nmethods = [\"REQUEST\"]\naction = \"command\"\ncommand = [\"{hook}\"]\n"
    );
    std::fs::write(
        &env.config,
        std::fs::read_to_string(&env.config).unwrap() + &cfg,
    )
    .unwrap();
    let o = env.one(&invitation(
        "standup@example.com",
        "Daily standup",
        "20261201T090000",
        "20261201T091500",
        &[],
    ));
    assert_eq!(first(&o)["action"], "accept", "{o}");
    assert!(first(&o)["policy_reason"]
        .as_str()
        .unwrap()
        .contains("the hook answered accept"));
    let input: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{hook}.input")).unwrap()).unwrap();
    assert_eq!(input["method"], "REQUEST");
    assert_eq!(input["policy"], "bot");
    assert_eq!(input["uid"], "standup@example.com");
    assert_eq!(input["start"], "2026-12-01T09:00:00+01:00");
    assert_eq!(input["originator"]["address"], "mailto:alice@example.com");
    assert_eq!(input["kind"], "invitation");
    let o = env.one(&planning("other-meeting@example.com"));
    assert_eq!(first(&o)["action"], "decline", "{o}");
    assert_eq!(
        sent_partstats(&env),
        [
            ("REPLY".to_string(), "ACCEPTED".to_string()),
            ("REPLY".to_string(), "DECLINED".to_string())
        ]
    );
    assert!(env.sent_in("sent")[0].contains("See you"));

    // A hook that hangs: the fallback (file) after its timeout, reported.
    for (name, body, says) in [
        ("hang.sh", "sleep 600", "did not answer within 1 s"),
        (
            "garbage.sh",
            "cat >/dev/null; echo 'I think yes'",
            "not a JSON object",
        ),
        ("fails.sh", "cat >/dev/null; exit 4", "exited with"),
    ] {
        let env = file_env("");
        let hook = hook_script(&env, name, body);
        std::fs::write(
            &env.config,
            std::fs::read_to_string(&env.config).unwrap()
                + &format!(
                    "[[policy]]\nname = \"bot\"\naction = \"command\"\ncommand = [\"{hook}\"]\ntimeout = 1\n"
                ),
        )
        .unwrap();
        let started = Instant::now();
        let o = env.one(&planning("fallback@example.com"));
        assert!(started.elapsed() < Duration::from_secs(20), "{name}");
        assert_eq!(first(&o)["action"], "file", "{name}: {o}");
        assert!(
            first(&o)["policy_reason"].as_str().unwrap().contains(says),
            "{name}: {o}"
        );
        assert!(env.sent_in("sent").is_empty(), "{name}");
        let items = pending(&env);
        assert_eq!(items.len(), 1, "{name}: still waiting");
    }
}

#[test]
fn counter_and_the_declinecounter_that_comes_back() {
    let env = file_env("");
    env.one(&planning("counter@example.com"));
    let (code, out, err) = run(
        &env,
        &[
            "counter",
            "counter@example.com",
            "--start",
            "2026-12-01T15:00:00+01:00",
            "--end",
            "2026-12-01T16:00:00+01:00",
            "--comment",
            "Afternoon?",
            "--json",
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines(&out)[0]["reply"]["method"], "COUNTER");
    let sent = env.sent_in("sent");
    assert_eq!(sent.len(), 1);
    let (method, _, c) = itip_of(&env, &sent[0]);
    assert_eq!(method, "COUNTER");
    assert_eq!(c["suspicious"], false, "{c}");
    let v = calendar_vevents(&sent[0]);
    assert!(v[0].contains("DTSTART:20261201T140000Z"), "{}", v[0]);
    assert!(v[0].contains("COMMENT:Afternoon?"));
    // My answer in the calendar did not change.
    assert!(stored(&env, "counter@example.com")
        .unwrap()
        .contains("PARTSTAT=NEEDS-ACTION"));
    // The organizer declines the proposal.
    let o = env.one(&mail(
        "Alice <alice@example.com>",
        "DECLINECOUNTER",
        &[vevent(&[
            "UID:counter@example.com",
            "SEQUENCE:0",
            "DTSTAMP:20261121T110000Z",
            "ORGANIZER;CN=Alice:mailto:alice@example.com",
            "ATTENDEE:mailto:bob@example.com",
            "COMMENT:No, morning it is",
        ])],
    ));
    assert_eq!(first(&o)["effect"], "recorded", "{o}");
    let items = pending(&env);
    let dc = items
        .iter()
        .find(|i| i["kind"] == "declinecounter")
        .unwrap_or_else(|| panic!("{items:?}"));
    assert_eq!(dc["uid"], "counter@example.com");
    assert_eq!(dc["from"], "alice@example.com");
    assert_eq!(dc["comment"], "No, morning it is");
    assert_eq!(dc["proposed"]["start"], "2026-12-01T15:00:00+01:00");
    assert!(dc["proposed"]["declined"].is_number(), "{dc}");
    assert!(items.iter().any(|i| i["kind"] == "invitation"));
}

/// A line-delimited JSON-RPC client of `imipd mcp`.
struct Mcp {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    next: u64,
}

impl Mcp {
    fn start(env: &Env) -> Mcp {
        let mut child = imipd()
            .args(["mcp", "--config"])
            .arg(&env.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Mcp {
            child,
            out,
            next: 1,
        }
    }

    fn send(&mut self, v: Value) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{v}").unwrap();
        stdin.flush().unwrap();
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let mut line = String::new();
            assert!(
                self.out.read_line(&mut line).unwrap() > 0,
                "the server closed"
            );
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == id {
                return v;
            }
        }
    }

    fn tool(&mut self, name: &str, args: Value) -> Value {
        self.call("tools/call", json!({"name": name, "arguments": args}))
    }
}

#[test]
fn the_mcp_server_through_a_whole_session() {
    let env = file_env("");
    env.one(&planning("mcp@example.com"));
    let mut mcp = Mcp::start(&env);
    let init = mcp.call(
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}),
    );
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18", "{init}");
    assert_eq!(init["result"]["serverInfo"]["name"], "imipd");
    assert!(
        init["result"]["capabilities"]["tools"].is_object(),
        "{init}"
    );
    mcp.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    let tools = mcp.call("tools/list", json!({}));
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pending", "show", "respond", "counter"]);
    let respond = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "respond")
        .unwrap();
    assert_eq!(respond["inputSchema"]["required"], json!(["uid", "answer"]));

    let p = mcp.tool("pending", json!({}));
    let items = &p["result"]["structuredContent"]["items"];
    assert_eq!(items[0]["uid"], "mcp@example.com", "{p}");
    assert!(p["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("mcp@example.com"));
    let s = mcp.tool("show", json!({"uid": "mcp@example.com"}));
    assert_eq!(
        s["result"]["structuredContent"]["items"][0]["summary"],
        "Planning"
    );

    let r = mcp.tool(
        "respond",
        json!({"uid": "mcp@example.com", "answer": "tentative"}),
    );
    let out = &r["result"]["structuredContent"];
    assert_eq!(out["reply"]["status"], "queued", "{r}");
    assert_eq!(out["sent"][0]["status"], "sent", "{r}");
    assert_eq!(
        sent_partstats(&env),
        [("REPLY".to_string(), "TENTATIVE".to_string())]
    );
    let p = mcp.tool("pending", json!({}));
    assert_eq!(p["result"]["structuredContent"]["items"], json!([]));

    // Errors are tool errors the model reads, not protocol errors.
    let e = mcp.tool(
        "respond",
        json!({"uid": "nope@example.com", "answer": "accept"}),
    );
    assert_eq!(e["result"]["isError"], true, "{e}");
    assert!(e["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("no event with this UID"));
    let e = mcp.tool(
        "counter",
        json!({"uid": "mcp@example.com", "start": "soon", "end": "later"}),
    );
    assert_eq!(e["result"]["isError"], true, "{e}");
    let c = mcp.tool(
        "counter",
        json!({"uid": "mcp@example.com", "start": "2026-12-01T15:00:00+01:00", "end": "2026-12-01T16:00:00+01:00"}),
    );
    assert_eq!(
        c["result"]["structuredContent"]["reply"]["method"], "COUNTER",
        "{c}"
    );
    assert_eq!(env.sent_in("sent").len(), 2);
    drop(mcp.child.stdin.take());
    let status = mcp.child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn outcome_lines_carry_the_event_and_the_reply_as_an_object() {
    let env =
        file_env("[[policy]]\nname = \"yes\"\nmethods = [\"REQUEST\"]\naction = \"accept\"\n");
    let o = env.one(&planning("outcome@example.com"));
    assert_eq!(o["schema"], 1);
    let r = first(&o);
    assert_eq!(r["start"], "2026-12-01T10:00:00+01:00");
    assert_eq!(r["end"], "2026-12-01T11:00:00+01:00");
    assert_eq!(r["location"], "Room 4");
    assert_eq!(r["organizer"], "alice@example.com");
    assert_eq!(r["reply"]["status"], "queued");
    assert_eq!(r["reply"]["method"], "REPLY");
    assert_eq!(r["reply"]["partstat"], "ACCEPTED");
    assert_eq!(r["reply"]["to"], json!(["alice@example.com"]));
    assert!(r["file"]
        .as_str()
        .unwrap()
        .ends_with("outcome@example.com.ics"));
}

#[test]
fn an_edit_is_answered_before_a_message_rewrites_the_event() {
    let env = file_env("");
    env.one(&planning("race@example.com"));
    let path = store_file(&env, "race@example.com");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            "PARTSTAT=NEEDS-ACTION;RSVP=TRUE;CN=Bob",
            "PARTSTAT=ACCEPTED;CN=Bob",
        ),
    )
    .unwrap();
    // The organizer re-sends the same version with a new title before any
    // pass looked at the calendar: the edit is answered first, not lost.
    let o = env.one(
        &planning("race@example.com")
            .replace("DTSTAMP:20261120T100000Z", "DTSTAMP:20261121T080000Z")
            .replace("SUMMARY:Planning", "SUMMARY:Planning (room changed)"),
    );
    assert_eq!(first(&o)["effect"], "updated", "{o}");
    assert_eq!(
        sent_partstats(&env),
        [("REPLY".to_string(), "ACCEPTED".to_string())]
    );
    let stored = stored(&env, "race@example.com").unwrap();
    assert!(stored.contains("Planning (room changed)"));
    assert!(
        stored
            .lines()
            .any(|l| l.contains("mailto:bob@example.com") && l.contains("PARTSTAT=ACCEPTED")),
        "my answer stays: {stored}"
    );
    run(&env, &["once"]);
    assert_eq!(env.sent_in("sent").len(), 1, "answered once");
}

/// In `run`, a decision hook runs beside the processor: a slow hook holds
/// up its own message only, and the messages of the person's other account
/// are decided meanwhile.
#[test]
fn a_slow_hook_delays_only_its_own_message() {
    let env = file_env(
        "[[account]]\nname = \"a\"\nsource = \"maildir\"\npath = \"MailA\"\npoll_interval = 1\n\
         [[account]]\nname = \"b\"\nsource = \"maildir\"\npath = \"MailB\"\npoll_interval = 1\n",
    );
    let hook = hook_script(
        &env,
        "decide.sh",
        "input=$(cat)\n\
         case \"$input\" in\n  *'\"summary\":\"Slow\"'*) sleep 8 ;;\nesac\n\
         echo '{\"action\":\"accept\"}'",
    );
    std::fs::write(
        &env.config,
        std::fs::read_to_string(&env.config).unwrap()
            + &format!(
                "[[policy]]\nname = \"bot\"\nmethods = [\"REQUEST\"]\naction = \"command\"\ncommand = [\"{hook}\"]\ntimeout = 60\n"
            ),
    )
    .unwrap();
    for m in ["MailA", "MailB"] {
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(env.path(&format!("{m}/{sub}"))).unwrap();
        }
    }
    let mut child = imipd()
        .args(["run", "--config"])
        .arg(&env.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(
        env.path("MailA/new/1.slow"),
        invitation(
            "slow@example.com",
            "Slow",
            "20261202T100000",
            "20261202T110000",
            &[],
        ),
    )
    .unwrap();
    // The slow hook has its message in hand before the other one arrives.
    std::thread::sleep(Duration::from_millis(2500));
    let fast_at = Instant::now();
    std::fs::write(
        env.path("MailB/new/1.fast"),
        invitation(
            "fast@example.com",
            "Fast",
            "20261203T100000",
            "20261203T110000",
            &[],
        ),
    )
    .unwrap();
    wait_until(
        "the other account's answer",
        Duration::from_secs(20),
        || env.sent_in("sent").iter().any(|m| m.contains("Fast")),
    );
    let fast = fast_at.elapsed();
    let slow_done = env.sent_in("sent").iter().any(|m| m.contains("Slow"));
    wait_until("the slow hook's answer", Duration::from_secs(30), || {
        env.sent_in("sent").iter().any(|m| m.contains("Slow"))
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !slow_done,
        "the other account was answered only after the slow hook ({fast:?})"
    );
    assert!(fast < Duration::from_secs(5), "{fast:?}");
    assert_eq!(env.sent_in("sent").len(), 2);
}
