//! One pass over a folder on a logged-in [`Connection`]: the SELECT, the
//! batch FETCH of BODYSTRUCTURE and header fields ([`Fetched`]), which UIDs
//! of it to handle ([`plan_batch`], [`split_by_date`] for `since`), the
//! FETCH of the calendar parts and signed or encrypted entities alone, the
//! handler, marking or moving handled mail, and how far the folder's last
//! UID moves ([`advance_last_uid`]); and IDLE on a folder.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_imap::imap_proto::{MessageSection, SectionPath};
use async_imap::types::{Fetch, Flag, Mailbox};
use futures::TryStreamExt;

use crate::source::{Handler, Incoming, PassReport};

use super::conn::{timed, Connection, ImapError};
use super::structure::{structure_of, synthetic_message_with, CalPart, SecPart, Structure};
use super::{arrived_since, load_state, save_state, FolderState, PassContext, Seen, Woke};

const HEADER_FIELDS: &str = "FROM SENDER TO CC MESSAGE-ID REFERENCES IN-REPLY-TO SUBJECT DATE AUTHENTICATION-RESULTS AUTO-SUBMITTED";
const BATCH: u32 = 200;

/// What the batch FETCH said about one message, kept small: the response
/// itself (with whatever a BODYSTRUCTURE carries) is dropped as soon as it
/// is read, so a batch costs its calendar parts list and bounded headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    pub uid: Option<u32>,
    /// Carries the keyword of handled mail.
    pub handled: bool,
    /// The header fields (at most `limits.max_header_bytes`).
    pub header: Vec<u8>,
    /// What the BODYSTRUCTURE says; `None` when the response had none (an
    /// unsolicited FETCH: a flag change, not an answer to the batch).
    pub structure: Option<Structure>,
}

impl Fetched {
    fn new(f: &Fetch, keyword: &str, max_depth: usize, encrypted: bool) -> Fetched {
        Fetched {
            uid: f.uid,
            handled: f
                .flags()
                .any(|fl| matches!(fl, Flag::Custom(ref k) if k.eq_ignore_ascii_case(keyword))),
            header: f.header().unwrap_or_default().to_vec(),
            structure: f
                .bodystructure()
                .map(|b| structure_of(b, max_depth, encrypted)),
        }
    }
}

/// Which messages of a batch FETCH of `start:stop` to handle, in UID order:
/// those with a UID in that range and the BODYSTRUCTURE that was asked for,
/// each once. A server may add FETCH responses nobody asked for (another
/// client changed flags, or it is hostile), for any message: they are
/// left out.
pub fn plan_batch(fetched: &[Fetched], start: u32, stop: u32) -> Vec<usize> {
    let mut picked: Vec<(u32, usize)> = fetched
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let uid = f.uid?;
            (start <= uid && uid <= stop && f.structure.is_some()).then_some((uid, i))
        })
        .collect();
    picked.sort_by_key(|&(uid, i)| (uid, i));
    picked.dedup_by_key(|&mut (uid, _)| uid);
    picked.into_iter().map(|(_, i)| i).collect()
}

/// The UIDs of a `UID FETCH start:last (UID INTERNALDATE)` answer, split
/// into those delivered before `cutoff` and the others, each sorted. Only
/// UIDs asked for count; a message without an INTERNALDATE counts as new.
pub fn split_by_date(
    fetched: &[Fetch],
    start: u32,
    last: u32,
    cutoff: chrono::DateTime<chrono::Utc>,
) -> (Vec<u32>, Vec<u32>) {
    let (mut older, mut newer) = (Vec::new(), Vec::new());
    for f in fetched {
        let Some(uid) = f.uid.filter(|u| (start..=last).contains(u)) else {
            continue;
        };
        match f.internal_date() {
            Some(d) if d < cutoff => older.push(uid),
            _ => newer.push(uid),
        }
    }
    older.sort_unstable();
    older.dedup();
    newer.sort_unstable();
    newer.dedup();
    newer.retain(|u| older.binary_search(u).is_err());
    (older, newer)
}

/// A sorted list of UIDs as an IMAP sequence set (`5:9,12`).
pub fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let first = uids[i];
        let mut last = first;
        while i + 1 < uids.len() && uids[i + 1] == last.saturating_add(1) {
            i += 1;
            last = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if first == last {
            out.push_str(&first.to_string());
        } else {
            out.push_str(&format!("{first}:{last}"));
        }
        i += 1;
    }
    out
}

/// How far the folder's last UID may move after a batch: over each UID
/// handled (in order) until the first that failed; and, when every message
/// of the batch was handled and the batch's range ended at `range_end` (a
/// UID below the UIDNEXT of the SELECT), up to that end: a UID there that
/// the server did not return no longer exists, and UIDs are never reused.
/// `handled` holds only UIDs of the range (see [`plan_batch`]); nothing
/// else moves it.
pub fn advance_last_uid(
    last_uid: u32,
    handled: &[(u32, bool)],
    whole_batch: bool,
    range_end: Option<u32>,
) -> u32 {
    let mut last = last_uid;
    for &(uid, ok) in handled {
        if !ok {
            return last;
        }
        last = last.max(uid);
    }
    match range_end {
        Some(end) if whole_batch => last.max(end),
        _ => last,
    }
}

impl Connection {
    fn err(&self, what: impl Into<String>, reason: impl fmt::Display) -> ImapError {
        ImapError::Command {
            server: self.server.clone(),
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// SELECT a folder (with CONDSTORE where offered). A folder the server
    /// refuses (NO or BAD: it does not exist, or may not be read) is an
    /// [`ImapError::Folder`]; the connection is still good.
    pub async fn select(&mut self, folder: &str) -> Result<Mailbox, ImapError> {
        let t = self.timeout;
        let r = if self.caps.condstore {
            tokio::time::timeout(t, self.session.select_condstore(folder)).await
        } else {
            tokio::time::timeout(t, self.session.select(folder)).await
        };
        match r {
            Err(_) => Err(self.err(
                format!("select folder {folder}"),
                format!("no answer within {} s", t.as_secs()),
            )),
            Ok(Err(
                async_imap::error::Error::No(reason) | async_imap::error::Error::Bad(reason),
            )) => Err(ImapError::Folder {
                server: self.server.clone(),
                folder: folder.to_string(),
                reason: reason.trim().to_string(),
            }),
            Ok(Err(e)) => Err(self.err(format!("select folder {folder}"), e)),
            Ok(Ok(m)) => Ok(m),
        }
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

    /// A batch FETCH, each response made [`Fetched`] as it arrives.
    async fn fetch_batch(
        &mut self,
        uids: &str,
        query: &str,
        keyword: &str,
        max_depth: usize,
        encrypted: bool,
    ) -> Result<Vec<Fetched>, ImapError> {
        let t = self.timeout;
        let r: Result<Vec<Fetched>, String> = async {
            let mut stream = timed(t, self.session.uid_fetch(uids, query)).await?;
            let mut out = Vec::new();
            while let Some(f) = timed(t, stream.try_next()).await? {
                out.push(Fetched::new(&f, keyword, max_depth, encrypted));
            }
            Ok(out)
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
    pub async fn pass<H: Handler>(
        &mut self,
        folder: &str,
        ctx: &PassContext<'_>,
        handler: &mut H,
    ) -> Result<PassReport, ImapError> {
        let before = self.bytes_read.load(Ordering::Relaxed);
        let mut rep = self.pass_inner(folder, ctx, handler).await?;
        rep.bytes_read = self.bytes_read.load(Ordering::Relaxed) - before;
        Ok(rep)
    }

    async fn pass_inner<H: Handler>(
        &mut self,
        folder: &str,
        ctx: &PassContext<'_>,
        handler: &mut H,
    ) -> Result<PassReport, ImapError> {
        let mut rep = PassReport {
            folder: folder.to_string(),
            ..PassReport::default()
        };
        let mailbox = self.select(folder).await?;
        let uidvalidity = mailbox.uid_validity.unwrap_or(0);
        let uidnext = mailbox.uid_next.unwrap_or(0);
        rep.seen = Seen {
            uidnext,
            exists: mailbox.exists,
        };
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
        // Without UIDNEXT the end of the folder is unknown: one FETCH of
        // `start:*`, and only the UIDs handled move the last UID.
        let end = if uidnext > 0 { uidnext - 1 } else { u32::MAX };
        let mut start = st.last_uid.saturating_add(1);
        let mut any_failed = false;
        let mut contiguous = true;
        let stopping = || ctx.stop.is_set();
        let about = if uidnext > 0 {
            u64::from(end.saturating_sub(start).saturating_add(1)).min(u64::from(mailbox.exists))
        } else {
            u64::from(mailbox.exists)
        };
        let mut progress =
            crate::progress::Progress::start(&format!("{}/{folder}", ctx.account), about);
        while start <= end {
            let stop = start.saturating_add(BATCH - 1).min(end);
            let range = if uidnext == 0 {
                format!("{start}:*")
            } else {
                format!("{start}:{stop}")
            };
            let last_asked = if uidnext == 0 { u32::MAX } else { stop };
            // With `since`, the dates come first, and only newer mail is
            // fetched and handled; older mail is remembered as handled.
            let (older, wanted) = match ctx.cutoff {
                None => (Vec::new(), Some(range.clone())),
                Some(cutoff) => {
                    rep.fetch_commands += 1;
                    let dates = self.fetch(&range, "(UID INTERNALDATE)").await?;
                    let (older, newer) = split_by_date(&dates, start, last_asked, cutoff);
                    let wanted = (!newer.is_empty()).then(|| uid_set(&newer));
                    (older, wanted)
                }
            };
            let query = format!(
                "(UID FLAGS RFC822.SIZE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS ({HEADER_FIELDS})]<0.{}>)",
                ctx.limits.max_header_bytes
            );
            let batch = match &wanted {
                Some(set) => {
                    rep.fetch_commands += 1;
                    self.fetch_batch(
                        set,
                        &query,
                        &ctx.cfg.keyword,
                        ctx.limits.max_depth,
                        ctx.cfg.fetch_encrypted,
                    )
                    .await?
                }
                None => Vec::new(),
            };
            let plan: Vec<usize> = plan_batch(&batch, start, last_asked)
                .into_iter()
                .filter(|&i| {
                    batch[i]
                        .uid
                        .is_some_and(|u| older.binary_search(&u).is_err())
                })
                .collect();
            // Older and newer mail in UID order, so that a stop in the
            // middle never moves the last UID over a message not handled.
            let mut order: Vec<(u32, Option<usize>)> = older.iter().map(|&u| (u, None)).collect();
            order.extend(plan.iter().map(|&i| (batch[i].uid.unwrap_or(0), Some(i))));
            order.sort_by_key(|&(uid, _)| uid);
            let mut handled = Vec::with_capacity(order.len());
            let mut whole_batch = true;
            for (uid, item) in order {
                if stopping() {
                    whole_batch = false;
                    break;
                }
                progress.inc();
                let Some(i) = item else {
                    rep.older += 1;
                    handled.push((uid, true));
                    continue;
                };
                let f = &batch[i];
                rep.examined += 1;
                let done = self
                    .message(uid, f, folder, keyword_ok, ctx, &mut rep, handler)
                    .await?;
                if !done {
                    any_failed = true;
                    rep.failed += 1;
                }
                handled.push((uid, done));
            }
            // After a failure, later batches are still handled in this
            // pass, but the last UID stays before the failed message, which
            // is tried again next time.
            if contiguous {
                let range_end = (uidnext != 0).then_some(stop);
                st.last_uid = advance_last_uid(st.last_uid, &handled, whole_batch, range_end);
            }
            contiguous &= whole_batch && handled.iter().all(|&(_, ok)| ok);
            if !ctx.dry_run {
                save_state(ctx.state_dir, ctx.account, folder, &st)
                    .map_err(|e| self.err("save folder state", format!("{e:#}")))?;
            }
            if uidnext == 0 || !whole_batch || stopping() || stop == u32::MAX {
                break;
            }
            start = stop + 1;
        }
        drop(progress);
        if rep.older > 0 {
            tracing::info!(
                "{}/{folder}: {} messages delivered before `since` remembered as handled without being processed",
                ctx.account,
                rep.older
            );
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
    async fn message<H: Handler>(
        &mut self,
        uid: u32,
        f: &Fetched,
        folder: &str,
        keyword_ok: bool,
        ctx: &PassContext<'_>,
        rep: &mut PassReport,
        handler: &mut H,
    ) -> Result<bool, ImapError> {
        if f.handled {
            return Ok(true); // handled before (a crash after marking, or a rescan)
        }
        let structure = f.structure.clone().unwrap_or_default();
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
        let (parts, entities) = if structure.too_deep {
            (Vec::new(), Vec::new())
        } else {
            (structure.parts, structure.entities)
        };
        if parts.is_empty() && entities.is_empty() && problems.is_empty() {
            return Ok(true); // no calendar: nothing to do, nothing to mark
        }
        if !parts.is_empty() || !entities.is_empty() {
            rep.with_calendar += 1;
        }
        let header = bounded_header(&f.header, ctx.limits.max_header_bytes, &mut problems);
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
        // A signed or encrypted entity is fetched whole (the signature
        // covers all of it), up to the size of a whole message.
        let entity_limit = ctx.limits.max_message_bytes as u64;
        for e in entities.iter().filter(|e| e.size > entity_limit) {
            problems.push(format!(
                "a {} entity of {} bytes is larger than the limit of {entity_limit} bytes (limits.max_message_bytes) and was not read",
                e.content_type, e.size
            ));
        }
        let wanted_entities: Vec<&SecPart> =
            entities.iter().filter(|e| e.size <= entity_limit).collect();
        let mut sections: Vec<String> = wanted
            .iter()
            .map(|p| format!("BODY.PEEK[{}]", p.section()))
            .collect();
        for e in &wanted_entities {
            if e.path.is_empty() {
                sections.push("BODY.PEEK[TEXT]".into());
            } else {
                let n = e.section();
                sections.push(format!("BODY.PEEK[{n}.MIME] BODY.PEEK[{n}]"));
            }
        }
        rep.fetch_commands += 1;
        let cut_before = self.literals_cut.load(Ordering::Relaxed);
        let fetched = if sections.is_empty() {
            Vec::new()
        } else {
            self.fetch(&uid.to_string(), &format!("(UID {})", sections.join(" ")))
                .await?
        };
        // The server sent a part larger than its BODYSTRUCTURE said (and
        // than the limit): what arrived is cut, so none of it is used.
        let lied = self.literals_cut.load(Ordering::Relaxed) != cut_before;
        if lied {
            problems.push(format!(
                "the server sent a calendar part larger than {} bytes (limits.max_part_bytes) although its BODYSTRUCTURE said less; it was not read",
                ctx.limits.max_part_bytes
            ));
        }
        let mut bodies = Vec::new();
        for p in wanted.iter().filter(|_| !lied) {
            let path = SectionPath::Part(p.path.clone(), None);
            let body = fetched
                .iter()
                .filter(|x| x.uid == Some(uid))
                .find_map(|x| x.section(&path))
                .unwrap_or_default()
                .to_vec();
            bodies.push((*p, body));
        }
        let mut entity_bytes = Vec::new();
        for e in wanted_entities.iter().filter(|_| !lied) {
            let find = |path: &SectionPath| {
                fetched
                    .iter()
                    .filter(|x| x.uid == Some(uid))
                    .find_map(|x| x.section(path))
                    .unwrap_or_default()
                    .to_vec()
            };
            let (head, body) = if e.path.is_empty() {
                (
                    e.header().into_bytes(),
                    find(&SectionPath::Full(MessageSection::Text)),
                )
            } else {
                (
                    find(&SectionPath::Part(
                        e.path.clone(),
                        Some(MessageSection::Mime),
                    )),
                    find(&SectionPath::Part(e.path.clone(), None)),
                )
            };
            entity_bytes.push((*e, head, body));
        }
        drop(fetched);
        let raw = synthetic_message_with(&header, &bodies, &entity_bytes);
        drop(bodies);
        drop(entity_bytes);
        let outcome = handler
            .handle(Incoming {
                raw,
                source: format!("{}/{folder}/{uid}", ctx.account),
                account: Some(ctx.account.to_string()),
                folder: Some(folder.to_string()),
                can_move: ctx.cfg.quarantine_folder.is_some(),
                problems,
            })
            .await;
        if outcome.stop {
            // The store or the state cannot be written: the pass stops here,
            // leaving this message and every later one unmarked.
            return Err(self.err(
                format!("handle message UID {uid}"),
                outcome
                    .error
                    .as_deref()
                    .unwrap_or("the store or the state cannot be written"),
            ));
        }
        if outcome.failed() {
            return Ok(false);
        }
        if ctx.dry_run {
            return Ok(true);
        }
        let set = uid.to_string();
        if let (true, Some(q)) = (outcome.quarantine, &ctx.cfg.quarantine_folder) {
            self.move_to(&set, q).await?;
            rep.seen.exists = rep.seen.exists.saturating_sub(1);
            return Ok(true);
        }
        if !outcome.imip {
            return Ok(true);
        }
        if let Some(dest) = &ctx.cfg.move_to {
            self.move_to(&set, dest).await?;
            rep.seen.exists = rep.seen.exists.saturating_sub(1);
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

    /// Wait in IDLE on a folder until something happens there, `wait` is
    /// up, or `stop` resolves. The SELECT before IDLE is compared with
    /// `seen` (what the last pass over the folder saw): when mail arrived in
    /// between, IDLE would never report it (the SELECT already counted it),
    /// so no IDLE is sent and [`Woke::Arrived`] says to pass again at once.
    /// Returns the connection for the next command.
    pub async fn idle(
        mut self,
        folder: &str,
        wait: Duration,
        seen: Option<Seen>,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(Connection, Woke), ImapError> {
        let mailbox = self.select(folder).await?;
        if seen.is_some_and(|s| arrived_since(s, mailbox.uid_next, mailbox.exists)) {
            return Ok((self, Woke::Arrived));
        }
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
        let woke = {
            // Keep the stop source alive while waiting: dropping it ends IDLE.
            let (fut, _interrupt) = handle.wait_with_timeout(wait);
            tokio::select! {
                r = fut => {
                    r.map_err(|e| err("wait in IDLE", e.to_string()))?;
                    Woke::Event
                }
                // async-imap's timeout restarts with every keepalive the
                // server sends ("* OK Still here" every 2 minutes in
                // Dovecot): this one does not.
                _ = tokio::time::sleep(wait) => Woke::Event,
                _ = stop => Woke::Stopped,
            }
        };
        self.session = timed(t, handle.done())
            .await
            .map_err(|e| err("end IDLE", e))?;
        Ok((self, woke))
    }

    pub async fn logout(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.session.logout()).await;
    }
}

/// The header fields as read, cut back to their last whole line when the
/// partial fetch stopped at `max` bytes (a problem says so).
fn bounded_header(header: &[u8], max: usize, problems: &mut Vec<String>) -> Vec<u8> {
    if header.len() < max {
        return header.to_vec();
    }
    problems.push(format!(
        "the header fields are longer than {max} bytes (limits.max_header_bytes); only the first {max} were read"
    ));
    let end = header
        .windows(2)
        .rposition(|w| w == b"\r\n")
        .map(|p| p + 2)
        .unwrap_or(0);
    header[..end].to_vec()
}

/// IMAP quoted string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(uid: Option<u32>, structure: bool) -> Fetched {
        Fetched {
            uid,
            structure: structure.then(Structure::default),
            ..Fetched::default()
        }
    }

    #[test]
    fn unsolicited_fetch_never_moves_last_uid() {
        // A batch FETCH of 5:200 answered with, besides 5 and 7: flag
        // updates (no BODYSTRUCTURE) for an old message, for a message of
        // the range, for one past the range and for a far UID; a FETCH with
        // no UID; and a full answer for a UID nobody asked for.
        let batch = vec![
            fetched(Some(7), true),
            fetched(Some(3), false),
            fetched(Some(5), true),
            fetched(Some(5), false),
            fetched(Some(201), false),
            fetched(Some(4_000_000_000), false),
            fetched(None, false),
            fetched(Some(250), true),
        ];
        let plan = plan_batch(&batch, 5, 200);
        let uids: Vec<u32> = plan.iter().map(|&i| batch[i].uid.unwrap()).collect();
        assert_eq!(uids, [5, 7], "only the UIDs asked for, each once, in order");
        // Both handled: up to the end of the range asked for (UIDNEXT 201).
        assert_eq!(
            advance_last_uid(4, &[(5, true), (7, true)], true, Some(200)),
            200
        );
        // Without UIDNEXT (a `5:*` FETCH): only as far as handled.
        let plan = plan_batch(&batch, 5, u32::MAX);
        let uids: Vec<u32> = plan.iter().map(|&i| batch[i].uid.unwrap()).collect();
        assert_eq!(uids, [5, 7, 250], "`*` asked for every UID from 5 on");
        assert_eq!(
            advance_last_uid(4, &[(5, true), (7, true), (250, true)], true, None),
            250
        );
        // A failure stops it before the failed message; so does a stop in
        // the middle of the batch.
        assert_eq!(
            advance_last_uid(4, &[(5, true), (7, false)], true, Some(200)),
            5
        );
        assert_eq!(advance_last_uid(4, &[(5, true)], false, Some(200)), 5);
        assert_eq!(advance_last_uid(4, &[], false, Some(200)), 4);
        // Never backwards.
        assert_eq!(advance_last_uid(300, &[(5, true)], true, Some(200)), 300);
    }

    #[test]
    fn a_cut_header_keeps_whole_lines_and_says_so() {
        let mut problems = Vec::new();
        let h = bounded_header(b"From: a@b.c\r\nSubject: xxxxx", 25, &mut problems);
        assert_eq!(h, b"From: a@b.c\r\n");
        assert!(problems[0].contains("limits.max_header_bytes"));
        let mut problems = Vec::new();
        assert_eq!(
            bounded_header(b"From: a\r\n\r\n", 64, &mut problems).len(),
            11
        );
        assert!(problems.is_empty());
    }
}
