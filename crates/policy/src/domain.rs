//! Validated DNS names: [`DomainName`] (one exact name) and [`DomainSuffix`] (every name
//! strictly below a name).
//!
//! Both hold the canonical form: ASCII lowercase, no trailing dot. The rules applied are the
//! host-name rules that DNS names in policies, SNI (RFC 6066 §3) and HTTP hosts follow:
//! - RFC 1035 §2.3.4: a label is 1–63 octets; a name is at most 255 octets on the wire,
//!   which is 253 characters in text without the trailing dot.
//! - RFC 1123 §2.1: labels hold letters, digits and hyphens, may start with a digit, and
//!   neither start nor end with a hyphen. We also accept `_` (RFC 2181 §11 allows any octet;
//!   `_` is used by service labels such as `_dmarc`).
//! - RFC 3696 §2: the last label is not all-numeric, so a name can never be mistaken for an
//!   IPv4 address.
//!
//! Names with non-ASCII characters are rejected with a request to write their ASCII (`xn--`)
//! form: converting them needs IDNA mapping and normalization (UTS #46), and a wrong
//! conversion of a deny rule would fail open.

use std::fmt;
use std::str::FromStr;

use crate::error::PolicyError;

/// RFC 1035 §2.3.4: 255 octets on the wire = 253 characters of dotted text.
const MAX_NAME_LEN: usize = 253;
/// RFC 1035 §2.3.4.
const MAX_LABEL_LEN: usize = 63;

/// One exact DNS host name in canonical form (lowercase, no trailing dot).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(Box<str>);

/// Every name strictly below a DNS name: `.example.com` (also written `*.example.com`)
/// matches `a.example.com` and `b.a.example.com`, not `example.com` nor `badexample.com`.
///
/// Holds the parent name without the leading dot.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainSuffix(DomainName);

fn invalid(input: &str, why: &'static str) -> PolicyError {
    PolicyError::DomainName {
        input: input.to_owned(),
        why,
    }
}

impl DomainName {
    /// Parses and canonicalizes a host name: one trailing dot is ignored and letters are
    /// lowercased.
    pub fn new(input: &str) -> Result<DomainName, PolicyError> {
        let name = input.strip_suffix('.').unwrap_or(input);
        if name.is_empty() {
            return Err(invalid(input, "it is empty"));
        }
        if !name.is_ascii() {
            return Err(invalid(
                input,
                "it contains non-ASCII characters; write internationalized names in their ASCII form (xn--...)",
            ));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid(input, "it is longer than 253 characters"));
        }
        let mut last_label = "";
        for label in name.split('.') {
            check_label(input, label)?;
            last_label = label;
        }
        if last_label.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                input,
                "its last label is all digits (an address is written as an IP or CIDR)",
            ));
        }
        Ok(DomainName(name.to_ascii_lowercase().into_boxed_str()))
    }

    /// The canonical text (lowercase, no trailing dot).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The labels from the top of the tree down: `a.example.com` gives `com`, `example`, `a`.
    pub fn labels_rev(&self) -> impl Iterator<Item = &str> {
        self.0.rsplit('.')
    }

    /// True when `self` lies strictly below `parent` (`a.b.c` is below `b.c`, `b.c` is not).
    pub fn is_strictly_below(&self, parent: &DomainName) -> bool {
        let (me, p) = (self.as_str(), parent.as_str());
        me.len() > p.len() + 1 && me.ends_with(p) && me.as_bytes()[me.len() - p.len() - 1] == b'.'
    }
}

fn check_label(input: &str, label: &str) -> Result<(), PolicyError> {
    if label.is_empty() {
        return Err(invalid(
            input,
            "it has an empty label (two dots in a row, or a leading dot)",
        ));
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(invalid(input, "it has a label longer than 63 characters"));
    }
    if label == "*" {
        return Err(invalid(
            input,
            "a wildcard is only allowed as a leading `*.` of a domain suffix",
        ));
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(invalid(
            input,
            "a label may hold only letters, digits, `-` and `_`",
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(invalid(input, "a label may not start or end with `-`"));
    }
    Ok(())
}

impl DomainSuffix {
    /// Parses a suffix given as `.example.com`, `*.example.com` or `example.com`; all three
    /// mean "every name strictly below example.com".
    pub fn new(input: &str) -> Result<DomainSuffix, PolicyError> {
        let parent = input
            .strip_prefix("*.")
            .or_else(|| input.strip_prefix('.'))
            .unwrap_or(input);
        if parent.is_empty() || parent == "." {
            return Err(invalid(
                input,
                "a suffix needs a parent name such as .example.com (use `any` for every name)",
            ));
        }
        DomainName::new(parent)
            .map(DomainSuffix)
            .map_err(|e| match e {
                PolicyError::DomainName { why, .. } => invalid(input, why),
                other => other,
            })
    }

    /// The name the suffix hangs below (`example.com` for `.example.com`).
    pub fn parent(&self) -> &DomainName {
        &self.0
    }

    /// True when `name` lies strictly below this suffix's parent.
    pub fn matches(&self, name: &DomainName) -> bool {
        name.is_strictly_below(&self.0)
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainName({:?})", &*self.0)
    }
}

/// Displays in the CLI's syntax, `*.example.com`.
impl fmt::Display for DomainSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "*.{}", self.0)
    }
}

impl fmt::Debug for DomainSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainSuffix({:?})", self.0.as_str())
    }
}

impl FromStr for DomainName {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DomainName::new(s)
    }
}

impl FromStr for DomainSuffix {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DomainSuffix::new(s)
    }
}

impl TryFrom<&str> for DomainName {
    type Error = PolicyError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        DomainName::new(s)
    }
}

impl TryFrom<String> for DomainName {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        DomainName::new(&s)
    }
}

impl TryFrom<&str> for DomainSuffix {
    type Error = PolicyError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        DomainSuffix::new(s)
    }
}

impl TryFrom<String> for DomainSuffix {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        DomainSuffix::new(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> DomainName {
        DomainName::new(s).unwrap()
    }

    #[test]
    fn debug_shows_the_type_and_the_text() {
        assert_eq!(
            format!("{:?}", name("API.example.test")),
            "DomainName(\"api.example.test\")"
        );
        assert_eq!(
            format!("{:?}", DomainSuffix::new("*.example.test").unwrap()),
            "DomainSuffix(\"example.test\")"
        );
    }

    #[test]
    fn canonical_form_is_lowercase_without_trailing_dot() {
        assert_eq!(name("API.Example.COM.").as_str(), "api.example.com");
        assert_eq!(name("_dmarc.example.com").as_str(), "_dmarc.example.com");
        assert_eq!(name("3com.example").as_str(), "3com.example");
        assert_eq!(name("localhost").as_str(), "localhost");
    }

    #[test]
    fn rejects_what_is_not_a_host_name() {
        for bad in [
            "",
            ".",
            "a..b",
            ".a.b",
            "a.b..",
            "-a.example.com",
            "a-.example.com",
            "a b.com",
            "a/b.com",
            "*.example.com",
            "a.*.com",
            "1.2.3.4",
            "example.123",
            "bücher.de",
        ] {
            assert!(DomainName::new(bad).is_err(), "{bad:?} should be rejected");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(DomainName::new(&long_label).is_err());
        let ok_label = format!("{}.com", "a".repeat(63));
        assert!(DomainName::new(&ok_label).is_ok());
        // 4 × 63 + 3 dots = 255 characters: too long; 253 is the limit.
        let long = [&"a".repeat(63)[..]; 4].join(".");
        assert!(DomainName::new(&long).is_err());
        let limit = format!("{}.{}", "a".repeat(61), [&"a".repeat(63)[..]; 3].join("."));
        assert_eq!(limit.len(), 253);
        assert!(DomainName::new(&limit).is_ok());
    }

    #[test]
    fn non_ascii_error_says_what_to_do() {
        let err = DomainName::new("bücher.de").unwrap_err().to_string();
        assert!(err.contains("xn--"), "{err}");
    }

    #[test]
    fn suffix_means_strictly_below() {
        for form in [
            ".tracking.com",
            "*.tracking.com",
            "tracking.com",
            "*.Tracking.COM.",
        ] {
            let s = DomainSuffix::new(form).unwrap();
            assert_eq!(s.parent().as_str(), "tracking.com");
            assert!(s.matches(&name("a.tracking.com")));
            assert!(s.matches(&name("b.c.tracking.com")));
            assert!(!s.matches(&name("tracking.com")));
            assert!(!s.matches(&name("eviltracking.com")));
            assert!(!s.matches(&name("tracking.com.evil")));
            assert!(!s.matches(&name("com")));
        }
        assert!(DomainSuffix::new(".").is_err());
        assert!(DomainSuffix::new("*.").is_err());
        assert!(DomainSuffix::new("").is_err());
        assert_eq!(DomainSuffix::new(".com").unwrap().to_string(), "*.com");
    }

    #[test]
    fn labels_run_from_the_top() {
        let n = name("b.a.example.com");
        let labels: Vec<_> = n.labels_rev().collect();
        assert_eq!(labels, ["com", "example", "a", "b"]);
    }
}
