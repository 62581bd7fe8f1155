//! Lease names: Unicode, NFC-normalized, length-bounded, and safe to use as a URL path segment
//! and (in ASCII form) as a DNS label.
//!
//! Two spellings of the same name in different Unicode normal forms are the same lease, so every
//! name is normalized before it is compared, stored or signed.

use unicode_normalization::UnicodeNormalization;

use crate::protocol::MAX_LEASE_NAME_BYTES;

/// Why a lease name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseNameError {
    #[error("lease name is empty")]
    Empty,
    #[error("lease name is {0} bytes; the limit is {MAX_LEASE_NAME_BYTES}")]
    TooLong(usize),
    #[error("lease name contains {0:?}; allowed are letters, digits, '-', '_' and '.'")]
    BadChar(char),
    #[error("lease name must start and end with a letter or digit")]
    BadEdge,
}

/// Returns the NFC form of `name` if it is a valid lease name.
pub fn normalize(name: &str) -> Result<String, LeaseNameError> {
    let nfc: String = name.nfc().collect();
    if nfc.is_empty() {
        return Err(LeaseNameError::Empty);
    }
    if nfc.len() > MAX_LEASE_NAME_BYTES {
        return Err(LeaseNameError::TooLong(nfc.len()));
    }
    if let Some(c) = nfc
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(LeaseNameError::BadChar(c));
    }
    let edge_ok = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    if !edge_ok(nfc.chars().next()) || !edge_ok(nfc.chars().last()) {
        return Err(LeaseNameError::BadEdge);
    }
    Ok(nfc)
}

/// Glob match where `*` matches any run of characters (including none). Exact otherwise.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.nfc().collect();
    let name: Vec<char> = name.chars().collect();
    // Iterative wildcard matching with single backtrack point: O(len(p) * len(n)) worst case.
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalizes_to_nfc() {
        // "é" as e + combining acute becomes the single code point.
        assert_eq!(normalize("cafe\u{301}").unwrap(), "caf\u{e9}");
        assert_eq!(normalize("my-mcp_1.dev").unwrap(), "my-mcp_1.dev");
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(normalize(""), Err(LeaseNameError::Empty));
        assert_eq!(normalize("a/b"), Err(LeaseNameError::BadChar('/')));
        assert_eq!(normalize("a b"), Err(LeaseNameError::BadChar(' ')));
        assert_eq!(normalize("-a"), Err(LeaseNameError::BadEdge));
        assert_eq!(normalize("a."), Err(LeaseNameError::BadEdge));
        assert!(matches!(
            normalize(&"a".repeat(64)),
            Err(LeaseNameError::TooLong(64))
        ));
    }

    #[test]
    fn globs() {
        assert!(pattern_matches("*", "anything"));
        assert!(pattern_matches("team-*", "team-a"));
        assert!(!pattern_matches("team-*", "other"));
        assert!(pattern_matches("a*b*c", "axxbyyc"));
        assert!(!pattern_matches("a*b*c", "axxbyy"));
        assert!(pattern_matches("exact", "exact"));
        assert!(!pattern_matches("exact", "exactly"));
    }

    proptest! {
        #[test]
        fn normalize_never_panics(s in "\\PC{0,80}") {
            let _ = normalize(&s);
        }

        #[test]
        fn a_name_matches_itself_and_star(s in "[a-z0-9]{1,20}") {
            prop_assert!(pattern_matches(&s, &s));
            prop_assert!(pattern_matches("*", &s));
        }
    }
}
