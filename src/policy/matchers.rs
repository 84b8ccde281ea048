//! Every policy matcher, each defined once: its TOML key, how its value is
//! read, which facts it needs gathered, how it matches (with the reason in
//! words), and whether it lets through everything another matcher of the
//! same key lets through (to refuse a policy that can never match).
//!
//! To add a matcher, add one entry to [`MATCHERS`] (and its test below, and
//! a line in `config.example.toml`): most are one of the shapes
//! [`Shape::Flag`], [`Shape::Words`], [`Shape::Globs`], [`Shape::Names`],
//! [`Shape::AtMost`] or [`Shape::Within`], reading their fact from [`Facts`].

use std::time::Duration;

use crate::address;
use crate::itip::Method;

use super::facts::{Facts, Needs};

/// How a matcher's value is written and compared.
#[derive(Debug, Clone, Copy)]
pub enum Shape {
    /// `key = true | false` against a yes/no fact (unknown never matches).
    Flag {
        fact: fn(&Facts<'_>) -> Option<bool>,
        yes: &'static str,
        no: &'static str,
    },
    /// A list of upper-case words (`["REQUEST", "ADD"]`), one of `allowed`.
    Words {
        fact: fn(&Facts<'_>) -> Option<String>,
        allowed: &'static [&'static str],
        what: &'static str,
    },
    /// A list of address globs (`*@example.com`, or a bare domain).
    Globs {
        fact: fn(&Facts<'_>) -> Option<String>,
        what: &'static str,
    },
    /// A list of text globs (`*standup*`), case-insensitive.
    Text {
        fact: fn(&Facts<'_>) -> Option<String>,
        what: &'static str,
    },
    /// One name or a list of names, compared exactly.
    Names {
        fact: fn(&Facts<'_>) -> Option<String>,
        what: &'static str,
    },
    /// A duration (`"90m"`); the fact must be at most that long.
    AtMost {
        fact: fn(&Facts<'_>) -> Option<Duration>,
        what: &'static str,
    },
    /// A duration; the fact (a start) must lie within that long from now.
    Within {
        fact: fn(&Facts<'_>) -> Option<chrono::DateTime<chrono::Utc>>,
    },
}

/// One matcher as the configuration names it.
#[derive(Debug, Clone, Copy)]
pub struct Def {
    /// The `[[policy]]` key.
    pub key: &'static str,
    pub shape: Shape,
    /// The facts to gather for it (the costly ones are gathered only when
    /// some policy asks).
    pub needs: Needs,
    /// A check of the value against the rest of the configuration.
    pub check: Option<Check>,
}

/// A check of a matcher's value against the rest of the configuration.
pub type Check = fn(&Value, &Context<'_>) -> Result<(), String>;

/// What a matcher's value may be checked against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context<'a> {
    /// The names of the configured accounts.
    pub accounts: &'a [String],
}

/// A matcher with the value a policy gave it.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub def: &'static Def,
    pub value: Value,
}

/// A matcher's value, read and checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Flag(bool),
    List(Vec<String>),
    Duration(Duration),
}

const NONE: Needs = Needs {
    conflict: false,
    next: false,
    known_sender: false,
};

/// Every matcher imipd knows, by key.
pub static MATCHERS: &[Def] = &[
    Def {
        key: "methods",
        shape: Shape::Words {
            fact: |f| Some(f.method.as_str().to_string()),
            allowed: &crate::itip::METHODS,
            what: "method",
        },
        needs: NONE,
        check: None,
    },
    Def {
        key: "components",
        shape: Shape::Words {
            fact: |f| f.component(),
            allowed: &["VEVENT", "VTODO", "VJOURNAL", "VFREEBUSY"],
            what: "component",
        },
        needs: NONE,
        check: None,
    },
    Def {
        key: "organizers",
        shape: Shape::Globs {
            fact: |f| f.organizer(),
            what: "organizer",
        },
        needs: NONE,
        check: None,
    },
    Def {
        key: "senders",
        shape: Shape::Globs {
            fact: |f| f.sender.map(str::to_string),
            what: "sender",
        },
        needs: NONE,
        check: None,
    },
    Def {
        key: "summary",
        shape: Shape::Text {
            fact: |f| {
                f.master()
                    .and_then(|c| c.text(&calcard::icalendar::ICalendarProperty::Summary))
            },
            what: "summary",
        },
        needs: NONE,
        check: None,
    },
    Def {
        key: "known_sender",
        shape: Shape::Flag {
            fact: |f| f.known_sender,
            yes: "organizer in the address book",
            no: "organizer not in the address book",
        },
        needs: Needs {
            known_sender: true,
            ..NONE
        },
        check: None,
    },
    Def {
        key: "authenticated",
        shape: Shape::Flag {
            fact: |f| Some(f.authenticated()),
            yes: "originator authenticated (signature, DKIM/DMARC or trusted relay)",
            no: "originator not authenticated",
        },
        needs: NONE,
        check: None,
    },
    Def {
        key: "signed",
        shape: Shape::Flag {
            fact: |f| Some(f.originator.is_some_and(|o| o.proof.is_signed())),
            yes: "signed by its originator (S/MIME or PGP)",
            no: "not signed by its originator",
        },
        needs: NONE,
        check: None,
    },
    Def {
        key: "conflict",
        shape: Shape::Flag {
            fact: |f| f.conflict,
            yes: "conflicts with a busy event",
            no: "no conflict",
        },
        needs: Needs {
            conflict: true,
            next: true,
            ..NONE
        },
        check: None,
    },
    Def {
        key: "recurring",
        shape: Shape::Flag {
            fact: |f| Some(f.recurring()),
            yes: "recurring",
            no: "not recurring",
        },
        needs: NONE,
        check: None,
    },
    Def {
        key: "valid",
        shape: Shape::Flag {
            fact: |f| Some(f.valid),
            yes: "valid",
            no: "invalid calendar data",
        },
        needs: NONE,
        check: None,
    },
    Def {
        key: "max_duration",
        shape: Shape::AtMost {
            fact: |f| f.duration(),
            what: "lasts",
        },
        needs: NONE,
        check: None,
    },
    Def {
        key: "booking_window",
        shape: Shape::Within {
            fact: |f| f.next.map(|(s, _)| s),
        },
        needs: Needs { next: true, ..NONE },
        check: None,
    },
    Def {
        key: "account",
        shape: Shape::Names {
            fact: |f| f.account.map(str::to_string),
            what: "account",
        },
        needs: NONE,
        check: Some(|v, ctx| match v {
            Value::List(names) => match names.iter().find(|n| !ctx.accounts.contains(n)) {
                Some(n) => Err(format!("there is no account named `{n}`")),
                None => Ok(()),
            },
            _ => Ok(()),
        }),
    },
    Def {
        key: "folder",
        shape: Shape::Names {
            fact: |f| f.folder.map(str::to_string),
            what: "folder",
        },
        needs: NONE,
        check: None,
    },
];

/// The matcher defined for a key.
pub fn def(key: &str) -> Option<&'static Def> {
    MATCHERS.iter().find(|d| d.key == key)
}

impl Def {
    /// Read a matcher's TOML value; `Err` says what is wrong, in words.
    pub fn parse(&'static self, v: &toml::Value, ctx: &Context<'_>) -> Result<Matcher, String> {
        let strings = |v: &toml::Value| -> Result<Vec<String>, String> {
            match v {
                toml::Value::String(s) => Ok(vec![s.clone()]),
                toml::Value::Array(a) => a
                    .iter()
                    .map(|x| match x {
                        toml::Value::String(s) => Ok(s.clone()),
                        _ => Err("expected a list of strings".to_string()),
                    })
                    .collect(),
                _ => Err("expected a string or a list of strings".to_string()),
            }
        };
        let value = match self.shape {
            Shape::Flag { .. } => match v {
                toml::Value::Boolean(b) => Value::Flag(*b),
                _ => return Err("expected true or false".into()),
            },
            Shape::Words { allowed, what, .. } => {
                let mut out = Vec::new();
                for w in strings(v)? {
                    let up = w.trim().to_ascii_uppercase();
                    if !allowed.contains(&up.as_str()) {
                        return Err(format!(
                            "unknown {what} `{w}`, expected one of {}",
                            allowed.join(", ")
                        ));
                    }
                    out.push(up);
                }
                Value::List(out)
            }
            Shape::Globs { .. } | Shape::Text { .. } | Shape::Names { .. } => {
                Value::List(strings(v)?)
            }
            Shape::AtMost { .. } | Shape::Within { .. } => match v {
                toml::Value::String(s)
                    if !s.trim().is_empty() && s.trim().chars().all(|c| c.is_ascii_digit()) =>
                {
                    let n = s.trim();
                    return Err(format!(
                        "`{n}` has no unit: write \"{n}m\" for {n} minutes, \"{n}h\" for hours or \"{n}d\" for days"
                    ));
                }
                toml::Value::String(s) => {
                    Value::Duration(crate::time::parse_duration(s).ok_or_else(|| {
                        format!(
                            "`{s}` is not a duration (like \"90m\", \"2h\", \"30d\" or \"PT2H\")"
                        )
                    })?)
                }
                _ => return Err("expected a duration such as \"90m\", \"2h\" or \"30d\"".into()),
            },
        };
        if matches!(&value, Value::List(l) if l.is_empty()) {
            return Err("an empty list never matches".into());
        }
        if let Some(check) = self.check {
            check(&value, ctx)?;
        }
        Ok(Matcher { def: self, value })
    }
}

impl Matcher {
    /// `Some(reason)` when the facts match, `None` when not (an unknown
    /// fact never matches).
    pub fn check(&self, f: &Facts<'_>) -> Option<String> {
        match (self.def.shape, &self.value) {
            (Shape::Flag { fact, yes, no }, Value::Flag(want)) => {
                (fact(f)? == *want).then(|| if *want { yes } else { no }.to_string())
            }
            (Shape::Words { fact, what, .. }, Value::List(l)) => {
                let got = fact(f)?;
                l.contains(&got).then(|| format!("{what} {got}"))
            }
            (Shape::Globs { fact, what }, Value::List(l)) => {
                let got = fact(f)?;
                let g = l.iter().find(|g| address::glob_matches(g, &got))?;
                Some(format!("{what} {} matches {g}", address::bare(&got)))
            }
            (Shape::Text { fact, what }, Value::List(l)) => {
                let got = fact(f)?;
                let g = l.iter().find(|g| address::glob_text(g, &got))?;
                Some(format!("{what} matches {g}"))
            }
            (Shape::Names { fact, what }, Value::List(l)) => {
                let got = fact(f)?;
                l.contains(&got).then(|| format!("{what} {got}"))
            }
            (Shape::AtMost { fact, what }, Value::Duration(max)) => {
                let d = fact(f)?;
                (d <= *max).then(|| format!("{what} {} (at most {})", human(d), human(*max)))
            }
            (Shape::Within { fact }, Value::Duration(window)) => {
                let start = fact(f)?;
                let limit = chrono::Duration::from_std(*window)
                    .ok()
                    .and_then(|w| f.now.checked_add_signed(w))
                    .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC);
                (start <= limit).then(|| format!("starts within {}", human(*window)))
            }
            _ => None,
        }
    }

    /// Whether this matcher lets through everything `later` (a matcher of
    /// the same key) lets through.
    pub fn covers(&self, later: &Matcher) -> bool {
        match (&self.value, &later.value) {
            (Value::Flag(a), Value::Flag(b)) => a == b,
            (Value::List(a), Value::List(b)) => b.iter().all(|x| a.contains(x)),
            (Value::Duration(a), Value::Duration(b)) => b <= a,
            _ => false,
        }
    }

    /// The methods this matcher lets through, when it restricts them.
    pub fn methods(&self) -> Option<Vec<Method>> {
        match (self.def.key, &self.value) {
            ("methods", Value::List(l)) => {
                Some(l.iter().filter_map(|m| Method::parse(m)).collect())
            }
            _ => None,
        }
    }
}

/// A duration for people: `2h`, `90m`, `30d`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(86400) && s > 0 {
        format!("{}d", s / 86400)
    } else if s.is_multiple_of(3600) && s > 0 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}
