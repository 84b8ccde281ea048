//! Who the calendar user is: the addresses that are "me" (invitations to
//! them are mine, answers never go to them), my name for replies, and whom I
//! trust to act for others (SENT-BY). A leaf the deciding code reads.

use crate::address;

/// The calendar user imipd acts for.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Lower-cased e-mail addresses, without `mailto:`.
    pub addresses: Vec<String>,
    pub name: Option<String>,
    /// Globs of addresses trusted to act for an organizer or attendee
    /// (SENT-BY) even when the stored event does not already name them.
    pub trusted_sent_by: Vec<String>,
}

impl Identity {
    /// Whether a calendar address (`mailto:` optional, any case) is one of mine.
    pub fn is_me(&self, cal_address: &str) -> bool {
        let a = address::bare(cal_address);
        self.addresses.contains(&a)
    }
}
