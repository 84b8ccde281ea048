//! The people one configuration serves, and the configuration as each of
//! them sees it. The global `[identity]` and `[store]` are one person (its
//! state is the `[state]` folder itself, as it always was); every account
//! that carries an `identity` and `store` of its own is another, whose
//! state — answered ledger and caps, outbox, held CANCELs, attention,
//! quarantine, the account's folder state, the lock — is
//! `STATE/people/NAME/`. [`Config::for_account`] gives one person's view
//! (what `check`, `process` and the commands that act for one person
//! take); [`Config::people`] gives them all (what `once` and `run` open a
//! processor for). [`Shard`] splits the people between processes by a
//! stable hash of the account name.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::{Account, Config};
use crate::fsutil::safe_name;

/// The folder under the state folder that holds each person's own state.
pub const PEOPLE_DIR: &str = "people";

impl Config {
    /// The configuration as the person of one account sees it: that
    /// account's identity, store and state folder (`STATE/people/NAME/`),
    /// or, for an account without an identity of its own, the global ones;
    /// `accounts` holds only that person's accounts. `None` asks for the
    /// only person there is: an error naming the accounts when there are
    /// several.
    pub fn for_account(&self, name: Option<&str>) -> anyhow::Result<Config> {
        let Some(name) = name else {
            let people = self.people();
            return match people.len() {
                1 => Ok(people.into_iter().next().unwrap_or_else(|| self.clone())),
                0 if self.has_global_person => Ok(self.global_person()),
                _ => anyhow::bail!(
                    "cannot tell whose calendar to use: this configuration serves {} people; name one with --account NAME (accounts: {})",
                    people.len(),
                    self.account_names().join(", ")
                ),
            };
        };
        let Some(account) = self.accounts.iter().find(|a| a.name == name) else {
            anyhow::bail!(
                "cannot find account `{name}` in the configuration (accounts: {})",
                if self.accounts.is_empty() {
                    "none".to_string()
                } else {
                    self.account_names().join(", ")
                }
            );
        };
        Ok(match &account.person {
            Some(_) => self.own_person(account),
            None => self.global_person(),
        })
    }

    /// Every person with an account, each as [`Config::for_account`] gives
    /// it: the global person first (when some account has no identity of
    /// its own), then each account with its own, in the file's order.
    pub fn people(&self) -> Vec<Config> {
        let mut out = Vec::new();
        if self.has_global_person && self.accounts.iter().any(|a| a.person.is_none()) {
            out.push(self.global_person());
        }
        for a in self.accounts.iter().filter(|a| a.person.is_some()) {
            out.push(self.own_person(a));
        }
        out
    }

    /// Whether more than one person is configured (then the commands that
    /// act for one person need `--account`).
    pub fn serves_several_people(&self) -> bool {
        let own = self.accounts.iter().filter(|a| a.person.is_some()).count();
        own + usize::from(self.has_global_person) > 1
    }

    /// Keep only the accounts of one shard (and so the people they belong
    /// to): see [`shard_of`].
    pub fn shard(&mut self, shard: Shard) {
        let first_global = self
            .accounts
            .iter()
            .filter(|a| a.person.is_none())
            .map(|a| a.name.clone())
            .min();
        self.accounts.retain(|a| {
            let key = match &a.person {
                Some(_) => a.name.as_str(),
                None => first_global.as_deref().unwrap_or(""),
            };
            shard_of(key, shard.count) == shard.index
        });
    }

    fn account_names(&self) -> Vec<String> {
        self.accounts.iter().map(|a| a.name.clone()).collect()
    }

    /// The global person: `[identity]`, `[store]`, the state folder, and the
    /// accounts without an identity of their own.
    fn global_person(&self) -> Config {
        let mut c = self.clone();
        c.accounts.retain(|a| a.person.is_none());
        c.person = None;
        c
    }

    /// The person of an account with an identity of its own.
    fn own_person(&self, account: &Account) -> Config {
        let mut c = self.clone();
        if let Some(p) = &account.person {
            c.identity = p.identity.clone();
            c.store = p.store.clone();
            c.trust = p.trust.clone();
            c.answer_edits = p.answer_edits;
        }
        c.state = person_state(&self.state, &account.name);
        c.person = Some(account.name.clone());
        c.has_global_person = false;
        c.accounts = vec![account.clone()];
        c
    }
}

/// The state folder of the person of an account with an identity of its
/// own: `STATE/people/NAME` (the name made safe for a file name).
pub fn person_state(state: &std::path::Path, account: &str) -> PathBuf {
    let name = safe_name(account);
    let name = name.strip_suffix(".ics").unwrap_or(&name).to_string();
    state.join(PEOPLE_DIR).join(name)
}

/// One of N processes that share a configuration (`--shard K/N`): the
/// accounts whose [`shard_of`] is K.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// K, from 1.
    pub index: u32,
    /// N.
    pub count: u32,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("`{s}` is not a shard: write K/N with 1 ≤ K ≤ N, like 2/4");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u32 = k.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The shard (1 to `count`) an account belongs to: the first 8 bytes of
/// SHA-256 of its name, big-endian, modulo `count`, plus one. Stable across
/// versions, machines and the order of the file. Accounts without an
/// identity of their own are one person and go together, to the shard of
/// the first of their names in byte order.
pub fn shard_of(name: &str, count: u32) -> u32 {
    let hash = Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    (u64::from_be_bytes(first) % u64::from(count.max(1))) as u32 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(text: &str) -> Config {
        super::super::parse(Path::new("/etc/imipd/config.toml"), text).unwrap()
    }

    const THREE: &str = "[state]\npath = \"/var/lib/imipd\"\n\
        [[account]]\nname = \"room-101\"\nsource = \"maildir\"\npath = \"m1\"\n\
        identity = { addresses = [\"room-101@example.com\"], name = \"Room 101\" }\n\
        store = { path = \"cal/101\" }\n\
        [[account]]\nname = \"room-102\"\nsource = \"maildir\"\npath = \"m2\"\n\
        identity = { addresses = [\"room-102@example.com\"] }\n\
        store = { type = \"caldav\", url = \"https://dav.example.com/\", username = \"r102\", password = \"x\", calendar = \"Room 102\" }\n";

    #[test]
    fn each_account_with_an_identity_is_a_person_of_its_own() {
        let c = cfg(THREE);
        assert!(!c.has_global_person);
        assert!(c.serves_several_people());
        let people = c.people();
        assert_eq!(people.len(), 2);
        let r1 = c.for_account(Some("room-101")).unwrap();
        assert_eq!(r1.identity.addresses, ["room-101@example.com"]);
        assert_eq!(r1.store.vdir_path(), Some(Path::new("/etc/imipd/cal/101")));
        assert_eq!(r1.state, Path::new("/var/lib/imipd/people/room-101"));
        assert_eq!(r1.accounts.len(), 1);
        assert_eq!(r1.person.as_deref(), Some("room-101"));
        let r2 = c.for_account(Some("room-102")).unwrap();
        assert!(
            matches!(&r2.store, super::super::StoreConfig::CalDav(d) if d.calendar.as_deref() == Some("Room 102"))
        );
        let e = c.for_account(None).unwrap_err().to_string();
        assert!(
            e.contains("--account") && e.contains("room-101, room-102"),
            "{e}"
        );
        let e = c.for_account(Some("nope")).unwrap_err().to_string();
        assert!(e.contains("cannot find account `nope`"), "{e}");
    }

    #[test]
    fn the_global_person_keeps_its_state_folder() {
        let text = format!(
            "[identity]\naddresses = [\"bob@example.com\"]\n[store]\npath = \"cal\"\n{THREE}\
             [[account]]\nname = \"bob-mail\"\nsource = \"maildir\"\npath = \"m0\"\n"
        );
        let c = cfg(&text);
        let people = c.people();
        assert_eq!(people.len(), 3);
        assert_eq!(people[0].state, Path::new("/var/lib/imipd"));
        assert_eq!(people[0].accounts.len(), 1);
        assert_eq!(people[0].accounts[0].name, "bob-mail");
        let bob = c.for_account(Some("bob-mail")).unwrap();
        assert_eq!(bob.identity.addresses, ["bob@example.com"]);
        assert_eq!(bob.person, None);
    }

    #[test]
    fn one_person_needs_no_account_name() {
        let c = cfg("[identity]\naddresses = [\"bob@example.com\"]\n[store]\npath = \"cal\"\n");
        assert!(!c.serves_several_people());
        let me = c.for_account(None).unwrap();
        assert_eq!(me.identity.addresses, ["bob@example.com"]);
    }

    #[test]
    fn people_never_share_an_address_or_a_calendar() {
        let shared_address = THREE.replace("room-102@example.com", "room-101@example.com");
        let e = super::super::parse(Path::new("/c.toml"), &shared_address).unwrap_err();
        assert!(
            e.message.contains("both speak for room-101@example.com"),
            "{e}"
        );
        let shared_store = format!(
            "{THREE}[[account]]\nname = \"x\"\nsource = \"maildir\"\npath = \"m3\"\n\
             identity = {{ addresses = [\"x@example.com\"] }}\nstore = {{ path = \"cal/101\" }}\n"
        );
        let e =
            super::super::parse(Path::new("/etc/imipd/config.toml"), &shared_store).unwrap_err();
        assert!(e.message.contains("same calendar"), "{e}");
        let half = "[[account]]\nname = \"a\"\nsource = \"maildir\"\npath = \"m\"\nidentity = { addresses = [\"a@example.com\"] }\n";
        let e = super::super::parse(Path::new("/c.toml"), half).unwrap_err();
        assert!(e.message.contains("needs a store of its own"), "{e}");
        let orphan = "[[account]]\nname = \"a\"\nsource = \"maildir\"\npath = \"m\"\n";
        let e = super::super::parse(Path::new("/c.toml"), orphan).unwrap_err();
        assert!(e.message.contains("no identity of its own"), "{e}");
    }

    #[test]
    fn caldav_store_keys_are_checked() {
        let bad = THREE.replace("https://dav.example.com/", "ftp://x");
        let e = super::super::parse(Path::new("/c.toml"), &bad).unwrap_err();
        assert!(e.message.contains("not an http:// or https:// URL"), "{e}");
        let mixed = THREE.replace(
            "store = { path = \"cal/101\" }",
            "store = { path = \"cal/101\", url = \"https://x/\" }",
        );
        let e = super::super::parse(Path::new("/c.toml"), &mixed).unwrap_err();
        assert!(e.message.contains("belongs to a CalDAV store"), "{e}");
    }

    #[test]
    fn shards_split_accounts_stably_and_completely() {
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
        for bad in ["0/4", "5/4", "1/0", "x", "1-2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        // Fixed values: the hash must never change between versions.
        assert_eq!(shard_of("room-101", 4), 4);
        assert_eq!(shard_of("room-101", 7), 5);
        assert_eq!(shard_of("acct0", 4), 3);
        let names: Vec<String> = (0..1000).map(|i| format!("room-{i}")).collect();
        let mut counts = [0usize; 4];
        for n in &names {
            counts[shard_of(n, 4) as usize - 1] += 1;
        }
        assert!(counts.iter().all(|&c| c > 200 && c < 300), "{counts:?}");
        let mut text = String::new();
        for n in names.iter().take(40) {
            text.push_str(&format!(
                "[[account]]\nname = \"{n}\"\nsource = \"maildir\"\npath = \"m/{n}\"\n\
                 identity = {{ addresses = [\"{n}@example.com\"] }}\nstore = {{ path = \"c/{n}\" }}\n"
            ));
        }
        let all = cfg(&text);
        let mut seen = Vec::new();
        for k in 1..=3 {
            let mut c = all.clone();
            c.shard(Shard { index: k, count: 3 });
            seen.extend(c.accounts.iter().map(|a| a.name.clone()));
        }
        seen.sort();
        let mut want: Vec<String> = names.iter().take(40).cloned().collect();
        want.sort();
        assert_eq!(seen, want, "every account in exactly one shard");
    }
}
