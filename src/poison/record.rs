//! A dead letter: the original message, unchanged, and why it could not be written.

use crate::otlp::spansink::v1::DeadLetter;

/// The dead-letter id: derived from where the message came from, so that the
/// same poison spooled twice (after a crash, a lost fence, a revocation) is the
/// same entry, and a DLQ consumer can drop a duplicate publish.
///
/// Group and topic are hashed (CRC32C) to keep the id a safe file name whatever
/// characters the group id holds.
pub fn dead_letter_id(group: &str, topic: &str, partition: i32, offset: i64) -> String {
    format!(
        "{:08x}{:08x}-{partition}-{offset}",
        crc32c::crc32c(group.as_bytes()),
        crc32c::crc32c(topic.as_bytes())
    )
}

/// Longest error text kept in a dead letter and its headers (bytes, cut at a
/// character boundary).
pub const MAX_ERROR_TEXT: usize = crate::logcap::MAX_TEXT;

pub fn truncate_error(text: &str) -> String {
    crate::logcap::cut(text, MAX_ERROR_TEXT).to_string()
}

pub fn describe(d: &DeadLetter) -> String {
    format!(
        "{} {}/{}@{} tenant={} stage={} reason={}: {}",
        d.id,
        d.topic,
        d.partition,
        d.offset,
        d.tenant.as_deref().unwrap_or("-"),
        d.stage,
        d.reason,
        d.error
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = dead_letter_id("spansink", "otlp_spans", 3, 42);
        assert_eq!(a, dead_letter_id("spansink", "otlp_spans", 3, 42));
        assert_ne!(a, dead_letter_id("spansink", "otlp_spans", 3, 43));
        assert_ne!(a, dead_letter_id("other", "otlp_spans", 3, 42));
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }

    #[test]
    fn error_text_is_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_ERROR_TEXT);
        let cut = truncate_error(&long);
        assert!(cut.len() <= MAX_ERROR_TEXT);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
