//! `imipd init`: a commented starter configuration, written new at the
//! configuration path (never over an existing file), private to the user
//! (0600, in a folder created 0700), since it may come to hold a password.

use std::io::Write;
use std::path::Path;

/// The starter configuration: valid as it is, with every value to change
/// marked, and the keys most setups need.
pub const STARTER: &str = r#"# imipd configuration, written by `imipd init`.
#
# Change the values marked CHANGE, then:
#     imipd check --connect     # validate, log in to every server
#     imipd once --dry-run      # what one pass would do, changing nothing
#     imipd run                 # the service (or: systemctl --user enable --now imipd)
#
# Every key is documented in config.example.toml (in imipd's source, and
# usually in /usr/share/doc/imipd/). Relative paths are relative to this
# file's folder; `~` is your home.

[identity]
# CHANGE: every address that is you. Invitations to them are yours.
addresses = ["you@example.com"]
name = "Your Name"

[store]
# The calendar: a folder of .ics files (a vdir) that khal, todoman and
# vdirsyncer read. Created if missing.
path = "~/.calendars/invitations"

# [state]
# path = "~/.local/state/imipd"     # the default: what imipd has handled, its outbox

[[account]]
name = "mail"
source = "imap"
host = "imap.example.com"           # CHANGE: your IMAP server
# port = 993                        # default: 993 with tls = "implicit", 143 otherwise
# tls = "implicit"                  # or "starttls"; "none" only for a server on this machine
username = "you@example.com"        # CHANGE
password_command = "pass show mail/you"   # CHANGE: or password_file = "~/.imap-password" (chmod 600)
folders = ["INBOX"]
# Mail delivered before this is remembered as handled without being
# processed: switching imipd on never answers an old backlog.
since = "14d"                       # or a date: "2026-11-01"

# For a local Maildir instead of IMAP:
# [[account]]
# name = "local"
# source = "maildir"
# path = "~/Maildir"
# since = "14d"

# How answers are sent. Needed as soon as a policy answers (accept,
# decline, tentative).
# [outgoing]
# transport = "smtp"
# host = "smtp.example.com"
# tls = "implicit"                  # port 465; or "starttls" (port 587)
# username = "you@example.com"
# password_command = "pass show mail/you"

# Policies: the first that matches wins; with none matching, the invitation
# is filed into the calendar and nothing is answered. For example, to accept
# invitations from your colleagues (needs [outgoing]):
# [[policy]]
# name = "colleagues"
# methods = ["REQUEST"]
# organizers = ["*@example.com"]
# conflict = false                  # only when it does not clash with the calendar
# action = "accept"
"#;

/// Write [`STARTER`] to `path`, refusing to replace anything there.
pub fn write_starter(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::create_private_dir(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    let mut f = match crate::fsutil::open_new(path, 0o600) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => anyhow::bail!(
            "cannot write {}: it exists already, and `imipd init` never replaces a configuration \
             (edit it, or give another file with -c/--config)",
            path.display()
        ),
        Err(e) => anyhow::bail!("cannot write {}: {e}", path.display()),
    };
    f.write_all(STARTER.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_starter_configuration_is_valid() {
        let c = crate::config::parse(
            std::path::Path::new("/home/u/.config/imipd/config.toml"),
            super::STARTER,
        )
        .unwrap();
        assert_eq!(c.accounts.len(), 1);
        assert!(c.accounts[0].since.is_some());
    }
}
