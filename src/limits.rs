//! The limits that keep broken or hostile mail cheap (`[limits]`): a leaf
//! that the MIME, iTIP, IMAP and configuration code all read.

/// Limits that keep hostile or broken mail from costing too much.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Larger messages are not read at all (reported, left in place).
    pub max_message_bytes: usize,
    /// Larger calendar parts are not parsed (reported).
    pub max_part_bytes: usize,
    /// MIME nesting (multipart and forwarded messages) deeper than this is not walked.
    pub max_depth: usize,
    /// An iCalendar object with more components than this is not processed,
    /// and a message's calendar objects past this many components in all
    /// are not read.
    pub max_components: usize,
    /// The header fields read over IMAP (From, Subject, ...) are cut after
    /// this many bytes: a 10 MB Subject costs no more than this.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024 * 1024,
            max_part_bytes: 4 * 1024 * 1024,
            max_depth: 24,
            max_components: 2000,
            max_header_bytes: 64 * 1024,
        }
    }
}
