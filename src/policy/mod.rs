//! The `[[policy]]` rules: facts about one iTIP message → the first rule
//! that matches, its action, and why it matched. [`decide`] is pure: the
//! caller gathers the facts ([`facts::Facts`]; the costly ones only when a
//! rule needs them, see [`needs`]). With no rule matching, the action is
//! `file`. Each matcher is defined once, in [`matchers`]; a policy is
//! compiled from its TOML table here, and a policy that can never match is
//! refused at load time.

pub mod facts;
pub mod matchers;

use serde::Serialize;
use toml::Spanned;

pub use facts::{Facts, Needs};
pub use matchers::{Context, Matcher};

use crate::itip::Method;

/// What a policy does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Accept,
    Decline,
    Tentative,
    File,
    Ignore,
    Quarantine,
    /// Ask a program (the policy's `command`): it answers with one of the
    /// others.
    Command,
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::Accept,
        Action::Decline,
        Action::Tentative,
        Action::File,
        Action::Ignore,
        Action::Quarantine,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Decline => "decline",
            Action::Tentative => "tentative",
            Action::File => "file",
            Action::Ignore => "ignore",
            Action::Quarantine => "quarantine",
            Action::Command => "command",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// The PARTSTAT an answering action gives.
    pub fn partstat(self) -> Option<&'static str> {
        match self {
            Action::Accept => Some("ACCEPTED"),
            Action::Decline => Some("DECLINED"),
            Action::Tentative => Some("TENTATIVE"),
            _ => None,
        }
    }

    /// The methods this action answers: REQUEST and ADD with a REPLY; as
    /// organizer, a COUNTER declined with DECLINECOUNTER and a REFRESH
    /// accepted with the current event.
    pub fn answers(self) -> &'static [Method] {
        match self {
            Action::Accept => &[Method::Request, Method::Add, Method::Refresh],
            Action::Decline => &[Method::Request, Method::Add, Method::Counter],
            Action::Tentative => &[Method::Request, Method::Add],
            _ => &[],
        }
    }
}

/// One `[[policy]]`, compiled.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub matchers: Vec<Matcher>,
    pub action: Action,
    pub comment: Option<String>,
    /// For `action = "command"`: the program that decides.
    pub hook: Option<Hook>,
}

/// A decision hook: a program that reads the invitation as JSON and says
/// what to do with it (`action = "command"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The program and its arguments (no shell).
    pub command: Vec<String>,
    /// How long it may take (default 30 s); then it is killed.
    pub timeout: std::time::Duration,
    /// What to do when it fails: times out, exits non-zero, or prints
    /// something that is not a decision (default `file`).
    pub fallback: Action,
}

/// The default time a decision hook may take.
pub const HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The rule that decided, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The policy's name; `default` when none matched.
    pub policy: String,
    /// `command` until the hook (in [`Verdict::hook`]) has answered.
    pub action: Action,
    /// The hook to ask, for `action = "command"`.
    #[serde(skip)]
    pub hook: Option<Hook>,
    pub comment: Option<String>,
    /// The matchers that matched, as words ("method REQUEST, organizer
    /// alice@example.com matches *@example.com").
    pub why: String,
}

/// The costly facts the rules need gathered.
pub fn needs(rules: &[Policy]) -> Needs {
    rules
        .iter()
        .flat_map(|r| r.matchers.iter())
        .fold(Needs::default(), |n, m| n.or(m.def.needs))
}

/// The first rule that matches, or the default `file`.
pub fn decide(rules: &[Policy], f: &Facts<'_>) -> Verdict {
    for r in rules {
        if let Some(why) = matches(r, f) {
            return Verdict {
                policy: r.name.clone(),
                action: r.action,
                hook: r.hook.clone(),
                comment: r.comment.clone(),
                why: if why.is_empty() {
                    "it matches every message".into()
                } else {
                    why.join(", ")
                },
            };
        }
    }
    Verdict {
        policy: "default".into(),
        action: Action::File,
        hook: None,
        comment: None,
        why: "no policy matched".into(),
    }
}

/// `Some(reasons)` when every matcher of the rule holds.
fn matches(r: &Policy, f: &Facts<'_>) -> Option<Vec<String>> {
    r.matchers.iter().map(|m| m.check(f)).collect()
}

/// Why a policy cannot be compiled: the key (as `policy.KEY`), where in the
/// file, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub key: String,
    pub span: Option<std::ops::Range<usize>>,
    pub message: String,
}

/// A `[[policy]]` table as written: every key with where it is.
pub type RawPolicy = std::collections::BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// The keys of a `[[policy]]` that are not matchers.
const OWN_KEYS: [&str; 6] = [
    "name", "action", "comment", "command", "timeout", "fallback",
];

/// Compile one `[[policy]]` table, given the policies before it (a policy
/// that can never match is an error).
pub fn compile(
    table: &Spanned<RawPolicy>,
    earlier: &[Policy],
    ctx: &Context<'_>,
) -> Result<Policy, PolicyError> {
    let raw = table.get_ref();
    let err = |key: &str, span: Option<std::ops::Range<usize>>, message: String| PolicyError {
        key: format!("policy.{key}"),
        span,
        message,
    };
    let get = |k: &str| raw.iter().find(|(key, _)| key.get_ref() == k);
    let text = |k: &str| -> Result<Option<(String, std::ops::Range<usize>)>, PolicyError> {
        match get(k) {
            None => Ok(None),
            Some((_, v)) => match v.get_ref() {
                toml::Value::String(s) => Ok(Some((s.clone(), v.span()))),
                _ => Err(err(k, Some(v.span()), "expected a string".into())),
            },
        }
    };
    let (name, name_span) = text("name")?.ok_or_else(|| {
        err(
            "name",
            Some(table.span()),
            "every [[policy]] needs a name".into(),
        )
    })?;
    let (action_text, action_span) = text("action")?.ok_or_else(|| {
        err(
            "action",
            Some(table.span()),
            format!("policy `{name}` needs an action"),
        )
    })?;
    let action = if action_text.trim().eq_ignore_ascii_case("command") {
        Action::Command
    } else {
        Action::parse(&action_text).ok_or_else(|| {
            err(
                "action",
                Some(action_span.clone()),
                format!(
                    "policy `{name}`: unknown action `{action_text}`, expected accept, decline, tentative, file, ignore, quarantine or command"
                ),
            )
        })?
    };
    let comment = text("comment")?.map(|(c, _)| c);
    let hook = compile_hook(raw, &name, action, action_span, table.span())?;
    let mut matchers = Vec::new();
    for (key, value) in raw {
        let k = key.get_ref().as_str();
        if OWN_KEYS.contains(&k) {
            continue;
        }
        let Some(def) = matchers::def(k) else {
            let known: Vec<&str> = OWN_KEYS
                .iter()
                .copied()
                .chain(matchers::MATCHERS.iter().map(|d| d.key))
                .collect();
            return Err(err(
                k,
                Some(key.span()),
                format!(
                    "policy `{name}`: unknown key `{k}`, expected one of {}",
                    known.join(", ")
                ),
            ));
        };
        let m = def
            .parse(value.get_ref(), ctx)
            .map_err(|e| err(k, Some(value.span()), format!("policy `{name}`: {e}")))?;
        matchers.push(m);
    }
    let policy = Policy {
        name,
        matchers,
        action,
        comment,
        hook,
    };
    if let Some(why) = never_matches(&policy, earlier) {
        return Err(PolicyError {
            key: "policy".into(),
            span: Some(name_span),
            message: format!("policy `{}` {why}", policy.name),
        });
    }
    Ok(policy)
}

/// The `command`, `timeout` and `fallback` of a policy: required (the
/// first) with `action = "command"`, refused without it.
fn compile_hook(
    raw: &RawPolicy,
    name: &str,
    action: Action,
    action_span: std::ops::Range<usize>,
    table_span: std::ops::Range<usize>,
) -> Result<Option<Hook>, PolicyError> {
    let err = |key: &str, span: std::ops::Range<usize>, message: String| PolicyError {
        key: format!("policy.{key}"),
        span: Some(span),
        message,
    };
    let get = |k: &str| raw.iter().find(|(key, _)| key.get_ref() == k);
    if action != Action::Command {
        if let Some((k, v)) = ["command", "timeout", "fallback"]
            .iter()
            .find_map(|k| get(k))
        {
            return Err(err(
                k.get_ref(),
                v.span(),
                format!(
                    "policy `{name}`: `{}` belongs to action = \"command\"",
                    k.get_ref()
                ),
            ));
        }
        return Ok(None);
    }
    let Some((_, cmd)) = get("command") else {
        return Err(err(
            "command",
            table_span,
            format!(
                "policy `{name}`: action = \"command\" needs command = [\"program\", \"argument\", ...]"
            ),
        ));
    };
    let command: Vec<String> = match cmd.get_ref() {
        toml::Value::Array(a) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    if command.is_empty() || command[0].trim().is_empty() {
        return Err(err(
            "command",
            cmd.span(),
            format!(
                "policy `{name}`: command must be a list of strings, the program first: [\"program\", \"argument\", ...]"
            ),
        ));
    }
    let timeout = match get("timeout") {
        None => HOOK_TIMEOUT,
        Some((_, v)) => {
            let d = match v.get_ref() {
                toml::Value::Integer(n) if *n > 0 => {
                    Some(std::time::Duration::from_secs(*n as u64))
                }
                toml::Value::String(t) => crate::time::parse_duration(t).filter(|d| !d.is_zero()),
                _ => None,
            };
            d.ok_or_else(|| {
                err(
                    "timeout",
                    v.span(),
                    format!(
                        "policy `{name}`: timeout must be a positive number of seconds or a duration like \"30s\""
                    ),
                )
            })?
        }
    };
    let fallback = match get("fallback") {
        None => Action::File,
        Some((_, v)) => v
            .get_ref()
            .as_str()
            .and_then(Action::parse)
            .ok_or_else(|| {
                err(
                    "fallback",
                    v.span(),
                    format!(
                        "policy `{name}`: fallback must be one of accept, decline, tentative, file, ignore, quarantine"
                    ),
                )
            })?,
    };
    let _ = action_span;
    Ok(Some(Hook {
        command,
        timeout,
        fallback,
    }))
}

/// Why a policy can never take effect, if it cannot: an earlier policy
/// catches everything it would, or it answers but matches only methods that
/// are never answered that way.
fn never_matches(p: &Policy, earlier: &[Policy]) -> Option<String> {
    let answers = p.action.answers();
    if !answers.is_empty() {
        if let Some(methods) = p.matchers.iter().find_map(Matcher::methods) {
            if !methods.iter().any(|m| answers.contains(m)) {
                return Some(format!(
                    "can never {}: its methods ({}) are never answered that way",
                    p.action.as_str(),
                    methods
                        .iter()
                        .map(|m| m.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    earlier.iter().find(|e| covers(e, p)).map(|e| {
        format!(
            "can never match: policy `{}` before it matches everything it would",
            e.name
        )
    })
}

/// Whether every message `later` matches is also matched by `first`: each
/// of `first`'s matchers lets through everything `later`'s matcher of the
/// same key does (a matcher `later` lacks lets everything through).
fn covers(first: &Policy, later: &Policy) -> bool {
    first.matchers.iter().all(|m| {
        later
            .matchers
            .iter()
            .find(|l| l.def.key == m.def.key)
            .is_some_and(|l| m.covers(l))
    })
}

#[cfg(test)]
mod tests;
