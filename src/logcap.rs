//! Bounds on what input can make spansink write to its log and its headers:
//! every error text is cut at [`MAX_TEXT`] bytes, and warnings that can repeat
//! for every message are rate-limited per call site. A flood of bad input
//! then costs a few lines a minute, not a copy of itself.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The longest error text kept, in logs and in dead-letter headers.
pub const MAX_TEXT: usize = 1024;

/// How often a rate-limited call site may log.
const PERIOD: Duration = Duration::from_secs(10);

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The end of an error text kept when its middle is cut: where the cause is
/// usually named ("…: recursion limit reached").
const KEPT_TAIL: usize = 128;

/// `text` in at most about [`MAX_TEXT`] bytes: its beginning and its end, and
/// how much of the middle was left out.
pub fn capped(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_string();
    }
    let head = cut(text, MAX_TEXT - KEPT_TAIL);
    let mut tail_start = text.len() - KEPT_TAIL;
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    let left_out = tail_start - head.len();
    format!("{head}…({left_out} bytes cut)…{}", &text[tail_start..])
}

/// Whether the call site `site` may log now: at most once every ten seconds.
/// `Some(n)`: yes, and `n` events were held back since it last did.
pub fn allow(site: &'static str) -> Option<u64> {
    static SITES: OnceLock<Mutex<HashMap<&'static str, (Instant, u64)>>> = OnceLock::new();
    let mut sites = SITES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    match sites.get_mut(site) {
        Some((last, held)) if now.duration_since(*last) < PERIOD => {
            *held += 1;
            None
        }
        Some((last, held)) => {
            *last = now;
            Some(std::mem::take(held))
        }
        None => {
            sites.insert(site, (now, 0));
            Some(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_at_a_character_boundary_and_says_so() {
        assert_eq!(cut("abc", 10), "abc");
        assert_eq!(cut("ééé", 3), "é");
        let long = format!("{}: the cause", "x".repeat(5000));
        let kept = capped(&long);
        assert!(kept.len() < MAX_TEXT + 40, "{}", kept.len());
        assert!(kept.contains("bytes cut)"), "{kept}");
        assert!(kept.ends_with(": the cause"), "{kept}");
    }

    #[test]
    fn a_call_site_logs_once_per_period_and_counts_the_rest() {
        assert_eq!(allow("test-site"), Some(0));
        assert_eq!(allow("test-site"), None);
        assert_eq!(allow("test-site"), None);
        assert_eq!(allow("another-site"), Some(0));
    }
}
