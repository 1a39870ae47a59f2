//! Secrets: the sandbox holds a placeholder; the real value stays in moat.
//!
//! # Theory of operation
//! A [`Secret`] has a name (the environment variable the sandbox sees), a value (held in
//! zeroed-on-drop memory, never printed: its `Debug` is redacted), a placeholder (random
//! per sandbox unless given: 32 hexadecimal digits after `moat_`, so it carries nothing of
//! the value, not even its length), the hosts it may go to, and whether plain HTTP may
//! carry it.
//!
//! Every byte the sandbox sends is scanned for placeholders ([`Scanner`]) on its way out,
//! whatever the protocol: a placeholder heading for a host outside its secret's list is a
//! violation, found in the forms a client may give it — as it is, percent-encoded,
//! JSON-escaped (`\u0061`), hexadecimal, or base64-encoded (standard or URL-safe) at any
//! alignment (HTTP Basic credentials, tokens in bodies) — and across writes, segments and
//! frames: the scanner keeps the bytes a pattern could still be completed by. Finding one
//! stops the bytes before they leave. A placeholder is random, so a match is never an
//! accident.
//!
//! The way back is the swap's (`secrets/swap.rs`): on a connection to a host a secret
//! allows, the value becomes the placeholder in what the server answers, as it is and in
//! the same standard encodings (`secrets/forms.rs`).

use std::fmt;

mod forms;
pub mod swap;

use moat_policy::{DomainName, DomainSuffix};
use zeroize::Zeroizing;

/// Why a secret could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The name cannot be an environment variable.
    #[error("secret {0:?}: the name must be an environment variable name (letters, digits, _)")]
    Name(String),
    /// No value.
    #[error("secret {0}: no value (set it, or the environment variable moat reads it from)")]
    NoValue(String),
    /// No host may receive it.
    #[error("secret {0}: no allowed host (allow_host, or NAME@HOST on the command line)")]
    NoHost(String),
    /// A host pattern is not a name or `*.suffix`.
    #[error("secret {name}: allowed host {pattern}: {why}")]
    Host {
        /// The secret.
        name: String,
        /// The pattern.
        pattern: String,
        /// Why.
        why: String,
    },
    /// A given placeholder is unusable.
    #[error(
        "secret {0}: the placeholder must be 16 to 256 printable ASCII characters and share nothing with the value"
    )]
    Placeholder(String),
    /// Two secrets share a name or a placeholder.
    #[error("secret {0}: another secret has the same name or placeholder")]
    Duplicate(String),
    /// The value could never be put in a request: moat reads none that could carry it.
    #[error("secret {name}: its value could never be substituted: {why}")]
    Unreachable {
        /// The secret.
        name: String,
        /// Why, and what to add.
        why: String,
    },
}

/// Where a secret may go: one name, or every name strictly below one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this name.
    Exact(DomainName),
    /// Every name strictly below this one (`*.example.com`).
    Below(DomainSuffix),
}

impl HostPattern {
    /// Parses `api.example.com` or `*.example.com`.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        if text.starts_with("*.") || text.starts_with('.') {
            DomainSuffix::new(text)
                .map(HostPattern::Below)
                .map_err(|e| e.to_string())
        } else {
            DomainName::new(text)
                .map(HostPattern::Exact)
                .map_err(|e| e.to_string())
        }
    }

    /// Whether `name` is covered.
    pub fn matches(&self, name: &DomainName) -> bool {
        match self {
            HostPattern::Exact(n) => n == name,
            HostPattern::Below(s) => s.matches(name),
        }
    }

    /// Whether every name `other` covers is covered by this one too.
    pub fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (_, HostPattern::Exact(name)) => self.matches(name),
            (HostPattern::Below(mine), HostPattern::Below(theirs)) => {
                mine == theirs || mine.matches(theirs.parent())
            }
            (HostPattern::Exact(_), HostPattern::Below(_)) => false,
        }
    }
}

/// One secret (see the module header).
pub struct Secret {
    name: String,
    value: Zeroizing<Vec<u8>>,
    placeholder: String,
    hosts: Vec<HostPattern>,
    allow_plain_http: bool,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .field("placeholder", &self.placeholder)
            .field("hosts", &self.hosts)
            .field("allow_plain_http", &self.allow_plain_http)
            .finish()
    }
}

impl Secret {
    /// A secret named `name` holding `value`, allowed to `hosts`; a random placeholder
    /// unless one is given.
    pub fn new(
        name: &str,
        value: Zeroizing<Vec<u8>>,
        placeholder: Option<String>,
        hosts: &[String],
        allow_plain_http: bool,
    ) -> Result<Secret, SecretError> {
        let valid_name = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_name {
            return Err(SecretError::Name(name.to_owned()));
        }
        if value.is_empty() {
            return Err(SecretError::NoValue(name.to_owned()));
        }
        if hosts.is_empty() {
            return Err(SecretError::NoHost(name.to_owned()));
        }
        let hosts = hosts
            .iter()
            .map(|h| {
                HostPattern::parse(h).map_err(|why| SecretError::Host {
                    name: name.to_owned(),
                    pattern: h.clone(),
                    why,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let placeholder = match placeholder {
            Some(p) => {
                let printable = p.bytes().all(|b| (0x21..0x7f).contains(&b));
                let shares = contains(&value, p.as_bytes()) || contains(p.as_bytes(), &value);
                if !(16..=256).contains(&p.len()) || !printable || shares {
                    return Err(SecretError::Placeholder(name.to_owned()));
                }
                p
            }
            None => random_placeholder(),
        };
        Ok(Secret {
            name: name.to_owned(),
            value,
            placeholder,
            hosts,
            allow_plain_http,
        })
    }

    /// The environment variable the sandbox sees.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the sandbox holds instead of the value.
    pub fn placeholder(&self) -> &str {
        &self.placeholder
    }

    /// Whether `host` may receive the value.
    pub fn allows(&self, host: &DomainName) -> bool {
        self.hosts.iter().any(|h| h.matches(host))
    }

    /// The hosts it may go to.
    pub fn hosts(&self) -> &[HostPattern] {
        &self.hosts
    }

    /// Whether plain HTTP may carry it (`allow_plain_http`).
    pub fn allows_plain_http(&self) -> bool {
        self.allow_plain_http
    }
}

/// Checks a set of secrets for duplicate names and placeholders.
pub fn check_distinct(secrets: &[Secret]) -> Result<(), SecretError> {
    for (i, a) in secrets.iter().enumerate() {
        for b in &secrets[i + 1..] {
            if a.name == b.name
                || contains(a.placeholder.as_bytes(), b.placeholder.as_bytes())
                || contains(b.placeholder.as_bytes(), a.placeholder.as_bytes())
            {
                return Err(SecretError::Duplicate(b.name.clone()));
            }
        }
    }
    Ok(())
}

/// The secret (by index) whose placeholder `data` carries, in any form the scanner knows,
/// when `data` is a whole message on its own (a datagram, a DNS name).
pub fn carried(secrets: &[Secret], data: &[u8]) -> Option<usize> {
    if secrets.is_empty() {
        return None;
    }
    match Scanner::new(secrets, |_| true).scan(data) {
        Scan::Found(i) => Some(i),
        Scan::Pass(_) => None,
    }
}

/// A [`Scanner`] over one body that arrives in pieces and leaves re-framed (a chunked
/// body, HTTP/2 DATA): a placeholder split by the framing is found whole, and the end of a
/// piece that may begin one waits for the next.
#[derive(Debug, Clone)]
pub struct BodyScan {
    scanner: Scanner,
    held: Vec<u8>,
}

impl BodyScan {
    /// A scan for what `template` looks for, from the body's start.
    pub fn new(template: &Scanner) -> BodyScan {
        BodyScan {
            scanner: template.clone(),
            held: Vec::new(),
        }
    }

    /// Appends to `out` what of `data` (after what was held) may go; the secret (by
    /// index) whose placeholder it carries, if any.
    pub fn pass(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), usize> {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        match self.scanner.scan(&buf) {
            Scan::Found(i) => Err(i),
            Scan::Pass(n) => {
                out.extend_from_slice(&buf[..n]);
                self.held = buf.split_off(n);
                Ok(())
            }
        }
    }

    /// How many bytes are held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The body ended: what was held cannot become a placeholder any more.
    pub fn end(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.held);
    }
}

/// `moat_` and 128 random bits in hexadecimal.
fn random_placeholder() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // The system's random source; it does not fail on Linux once booted.
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("moat_{hex}")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The forms of one placeholder the scanner looks for.
#[derive(Debug, Clone)]
struct Forms {
    /// Index of the secret.
    secret: usize,
    /// Literal patterns: the placeholder as it is, in hexadecimal, and in base64 at the
    /// three alignments, standard and URL-safe (the characters every encoding of it shares:
    /// `forms.rs`).
    literal: Vec<Vec<u8>>,
    /// The placeholder, to match against decoded text (percent and JSON escapes).
    plain: Vec<u8>,
}

/// What [`Scanner::scan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// No placeholder: the first this-many bytes may leave now; the rest could begin one
    /// and must be given again with what follows.
    Pass(usize),
    /// The placeholder of secret `.0` (by index).
    Found(usize),
}

/// The shortest start of a placeholder held back until what follows shows whether it is
/// one (a shorter piece carries nothing of it).
const HOLD_MIN: usize = 8;

/// Finds placeholders in a stream of bytes (see the module header).
#[derive(Debug, Clone)]
pub struct Scanner {
    forms: Vec<Forms>,
    /// The end of what came before that a pattern could still be completed from.
    tail: Vec<u8>,
    /// How much of what came before may start a pattern (the longest form, encoded).
    keep: usize,
}

impl Scanner {
    /// A scanner for the placeholders of `secrets` selected by `watch` (by index).
    pub fn new(secrets: &[Secret], watch: impl Fn(usize) -> bool) -> Scanner {
        let forms: Vec<Forms> = secrets
            .iter()
            .enumerate()
            .filter(|(i, _)| watch(*i))
            .map(|(i, s)| {
                let p = s.placeholder.as_bytes();
                let mut literal = vec![p.to_vec(), forms::hex(p, false), forms::hex(p, true)];
                literal.extend(forms::base64_forms(p).into_iter().map(|f| f.core));
                literal.dedup();
                Forms {
                    secret: i,
                    literal,
                    plain: p.to_vec(),
                }
            })
            .collect();
        // A character takes at most six bytes escaped (\u0061).
        let keep = forms.iter().map(|f| f.plain.len() * 6).max().unwrap_or(0);
        Scanner {
            forms,
            tail: Vec::new(),
            keep,
        }
    }

    /// Whether there is nothing to look for.
    pub fn is_idle(&self) -> bool {
        self.forms.is_empty()
    }

    /// Looks at the next bytes of the stream (with what passed before).
    pub fn scan(&mut self, data: &[u8]) -> Scan {
        if self.forms.is_empty() || data.is_empty() {
            return Scan::Pass(data.len());
        }
        // A form is at most `keep` bytes long, so one that crosses from what came before
        // lies in the tail and the first `keep` bytes of `data` (the seam); the rest is
        // searched where it is, without copying.
        let mut seam = std::mem::take(&mut self.tail);
        let tail_len = seam.len();
        seam.extend_from_slice(&data[..data.len().min(self.keep)]);
        if let Some(i) = self.find(&seam).or_else(|| self.find(data)) {
            self.tail = seam;
            return Scan::Found(i);
        }
        // The end may be the start of a placeholder (as it is, or in base64): those bytes
        // wait for what follows. Fewer than HOLD_MIN characters carry nothing.
        let end: &[u8] = if data.len() >= self.keep { data } else { &seam };
        let hold = self.held_prefix(end).min(data.len());
        let pass = data.len() - hold;
        // What a later form could start in: the last `keep` bytes of what passed.
        self.tail = if pass >= self.keep {
            data[pass - self.keep..pass].to_vec()
        } else {
            seam.truncate(tail_len + pass);
            let start = seam.len().saturating_sub(self.keep);
            seam.split_off(start)
        };
        Scan::Pass(pass)
    }

    /// The length of the longest end of `window` that begins a literal form, if at least
    /// [`HOLD_MIN`] long.
    fn held_prefix(&self, window: &[u8]) -> usize {
        let mut best = 0;
        for f in &self.forms {
            for l in &f.literal {
                for k in (HOLD_MIN..l.len()).rev() {
                    if k <= best {
                        break;
                    }
                    if window.ends_with(&l[..k]) {
                        best = k;
                        break;
                    }
                }
            }
        }
        best
    }

    fn find(&self, window: &[u8]) -> Option<usize> {
        for f in &self.forms {
            if f.literal.iter().any(|l| contains(window, l)) {
                return Some(f.secret);
            }
        }
        // Escaped forms only where there are escapes (most bytes have none).
        if !window.iter().any(|&b| b == b'%' || b == b'\\') {
            return None;
        }
        let decoded = decode_escapes(window);
        if decoded.len() != window.len() {
            for f in &self.forms {
                if contains(&decoded, &f.plain) {
                    return Some(f.secret);
                }
            }
        }
        None
    }
}

/// `data` with percent escapes (`%6d`) and JSON `\u` escapes of ASCII decoded.
fn decode_escapes(data: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'%'
            && let (Some(&h), Some(&l)) = (data.get(i + 1), data.get(i + 2))
            && let (Some(h), Some(l)) = (hex(h), hex(l))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        if data[i] == b'\\'
            && data.get(i + 1) == Some(&b'u')
            && let Some(digits) = data.get(i + 2..i + 6)
            && let Ok(text) = std::str::from_utf8(digits)
            && let Ok(code) = u32::from_str_radix(text, 16)
            && code < 0x80
        {
            out.push(code as u8);
            i += 6;
            continue;
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use proptest::prelude::*;

    use super::*;

    fn secret(name: &str) -> Secret {
        Secret::new(
            name,
            Zeroizing::new(b"sk-live-1234567890".to_vec()),
            None,
            &["api.example.test".into(), "*.allowed.test".into()],
            false,
        )
        .unwrap()
    }

    #[test]
    fn a_pattern_covers_what_every_name_it_allows_is_allowed_by() {
        let p = |t: &str| HostPattern::parse(t).unwrap();
        for (mine, theirs, covers) in [
            ("api.example.test", "api.example.test", true),
            ("api.example.test", "other.example.test", false),
            ("api.example.test", "*.api.example.test", false),
            ("*.example.test", "api.example.test", true),
            ("*.example.test", "example.test", false),
            ("*.example.test", "*.example.test", true),
            ("*.example.test", "*.api.example.test", true),
            ("*.api.example.test", "*.example.test", false),
            ("*.example.test", "*.other.test", false),
        ] {
            assert_eq!(p(mine).covers(&p(theirs)), covers, "{mine} covers {theirs}");
        }
        assert_eq!(
            secret("A").hosts(),
            [p("api.example.test"), p("*.allowed.test")]
        );
    }

    fn b64_std(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in data.chunks(3) {
            let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for (i, s) in [18, 12, 6, 0].into_iter().enumerate() {
                if i <= c.len() {
                    out.push(A[(n >> s & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn the_value_never_shows_and_placeholders_are_random() {
        let a = secret("API_KEY");
        let b = secret("API_KEY");
        assert_ne!(a.placeholder(), b.placeholder());
        assert!(a.placeholder().starts_with("moat_") && a.placeholder().len() == 37);
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("sk-live") && shown.contains("<redacted>"),
            "{shown}"
        );
        assert!(a.allows(&DomainName::new("api.example.test").unwrap()));
        assert!(a.allows(&DomainName::new("x.allowed.test").unwrap()));
        assert!(!a.allows(&DomainName::new("allowed.test").unwrap()));
        assert!(!a.allows(&DomainName::new("evil.example").unwrap()));
        // A name that ends with an allowed one is another host.
        assert!(!a.allows(&DomainName::new("evilapi.example.test").unwrap()));
        assert!(!a.allows(&DomainName::new("x.api.example.test").unwrap()));
        assert!(!a.allows(&DomainName::new("evilallowed.test").unwrap()));
    }

    #[test]
    fn bad_secrets_are_errors_naming_the_secret() {
        let v = || Zeroizing::new(b"value-1234".to_vec());
        let hosts = ["api.example.test".to_owned()];
        assert!(matches!(
            Secret::new("1X", v(), None, &hosts, false),
            Err(SecretError::Name(_))
        ));
        assert!(matches!(
            Secret::new("K", Zeroizing::new(Vec::new()), None, &hosts, false),
            Err(SecretError::NoValue(_))
        ));
        assert!(matches!(
            Secret::new("K", v(), None, &[], false),
            Err(SecretError::NoHost(_))
        ));
        assert!(matches!(
            Secret::new("K", v(), None, &["not a host".into()], false),
            Err(SecretError::Host { .. })
        ));
        assert!(matches!(
            Secret::new("K", v(), Some("short".into()), &hosts, false),
            Err(SecretError::Placeholder(_))
        ));
        assert!(matches!(
            Secret::new("K", v(), Some("xx-value-1234-xxxxxx".into()), &hosts, false),
            Err(SecretError::Placeholder(_))
        ));
        let same = [secret("A"), secret("A")];
        assert!(matches!(
            check_distinct(&same),
            Err(SecretError::Duplicate(_))
        ));
        assert!(check_distinct(&[secret("A"), secret("B")]).is_ok());
    }

    #[test]
    fn every_form_of_the_placeholder_is_found() {
        let secrets = [secret("API_KEY")];
        let p = secrets[0].placeholder().to_owned();
        let percent: String = p.bytes().map(|b| format!("%{b:02X}")).collect();
        let json: String = p.bytes().map(|b| format!("\\u{b:04x}")).collect();
        for form in [
            format!("GET /?key={p} HTTP/1.1\r\n"),
            format!("GET /?key={percent} HTTP/1.1\r\n"),
            format!("{{\"key\": \"{json}\"}}"),
            format!(
                "Authorization: Basic {}\r\n",
                b64_std(format!("user:{p}").as_bytes())
            ),
            format!(
                "Authorization: Basic {}\r\n",
                b64_std(format!("u:{p}").as_bytes())
            ),
            format!(
                "Authorization: Basic {}\r\n",
                b64_std(format!("usr:{p}").as_bytes())
            ),
            format!("x-token: {}", b64_std(p.as_bytes())),
        ] {
            let mut s = Scanner::new(&secrets, |_| true);
            assert_eq!(s.scan(form.as_bytes()), Scan::Found(0), "{form}");
        }
        // Control: none of it without the placeholder, and a scanner watching nothing.
        let mut s = Scanner::new(&secrets, |_| true);
        let clean = b"GET /?key=moat_0000 HTTP/1.1\r\n%41%42 \\u0041";
        assert_eq!(s.scan(clean), Scan::Pass(clean.len()));
        let mut idle = Scanner::new(&secrets, |_| false);
        assert!(idle.is_idle());
        assert_eq!(idle.scan(p.as_bytes()), Scan::Pass(p.len()));
        // The start of a placeholder waits; given again with the rest, it is found.
        let mut s = Scanner::new(&secrets, |_| true);
        let first = format!("GET /?k={}", &p[..12]);
        assert_eq!(s.scan(first.as_bytes()), Scan::Pass(first.len() - 12));
        let again = format!("{} HTTP/1.1", &p);
        assert_eq!(s.scan(again.as_bytes()), Scan::Found(0));
    }

    #[test]
    fn long_pieces_are_searched_whole_and_across_their_seam() {
        let secrets = [secret("API_KEY")];
        let p = secrets[0].placeholder().as_bytes().to_vec();
        let filler = vec![b'x'; 1000];
        // Deep inside one long piece.
        let mut s = Scanner::new(&secrets, |_| true);
        assert_eq!(s.scan(&filler), Scan::Pass(1000));
        let mut deep = filler.clone();
        deep.extend_from_slice(&p);
        deep.extend_from_slice(&filler);
        assert_eq!(s.scan(&deep), Scan::Found(0));
        // Across the seam of two long pieces, each part shorter than HOLD_MIN so nothing
        // was held back: the first piece passed whole.
        let mut s = Scanner::new(&secrets, |_| true);
        let mut first = filler.clone();
        first.extend_from_slice(&p[..5]);
        assert_eq!(s.scan(&first), Scan::Pass(first.len()));
        let mut second = p[5..].to_vec();
        second.extend_from_slice(&filler);
        assert_eq!(s.scan(&second), Scan::Found(0));
        // Long clean pieces pass whole (the control).
        let mut s = Scanner::new(&secrets, |_| true);
        for _ in 0..3 {
            assert_eq!(s.scan(&filler), Scan::Pass(1000));
        }
    }

    proptest! {
        /// Split anywhere, over any number of writes, the placeholder is still found, in
        /// each form.
        #[test]
        fn splitting_hides_nothing(cuts in proptest::collection::vec(0usize..200, 0..10), form in 0usize..4, junk in "[ -~]{0,40}") {
            let secrets = [secret("API_KEY")];
            let p = secrets[0].placeholder().to_owned();
            let body = match form {
                0 => p.clone(),
                1 => p.bytes().map(|b| format!("%{b:02x}")).collect(),
                2 => p.bytes().map(|b| format!("\\u{b:04X}")).collect(),
                _ => b64_std(format!("{junk}:{p}").as_bytes()),
            };
            let input = format!("{junk}{body}{junk}").into_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % input.len()).collect();
            cuts.sort_unstable();
            // The caller gives held bytes again with the next piece, as the engine does.
            let mut s = Scanner::new(&secrets, |_| true);
            let (mut found, mut pending, mut prev, mut passed) = (None, Vec::new(), 0, Vec::new());
            for cut in cuts.into_iter().chain([input.len()]) {
                pending.extend_from_slice(&input[prev..cut.max(prev)]);
                prev = cut.max(prev);
                if found.is_some() {
                    continue;
                }
                match s.scan(&pending) {
                    Scan::Found(i) => found = Some(i),
                    Scan::Pass(n) => {
                        passed.extend(pending.drain(..n));
                    }
                }
            }
            prop_assert_eq!(found, Some(0));
            // What passed before the find holds no whole placeholder.
            prop_assert!(!contains(&passed, p.as_bytes()));
        }
    }

    #[test]
    fn a_secret_says_its_name_and_whether_plain_http_may_carry_it() {
        let a = secret("API_KEY");
        assert_eq!(a.name(), "API_KEY");
        assert!(!a.allows_plain_http());
        let hosts = ["api.example.test".to_owned()];
        let v = Zeroizing::new(b"value-1234".to_vec());
        let plain = Secret::new("PLAIN", v, None, &hosts, true).unwrap();
        assert!(plain.allows_plain_http());
    }

    #[test]
    fn a_placeholder_inside_another_is_a_duplicate_either_way() {
        let hosts = ["api.example.test".to_owned()];
        let with = |name: &str, placeholder: &str| {
            let v = Zeroizing::new(b"value-1234".to_vec());
            Secret::new(name, v, Some(placeholder.into()), &hosts, false).unwrap()
        };
        let short = || with("A", "moat_placeholder_one");
        let long = || with("B", "moat_placeholder_one_two");
        assert!(matches!(
            check_distinct(&[short(), long()]),
            Err(SecretError::Duplicate(_))
        ));
        assert!(matches!(
            check_distinct(&[long(), short()]),
            Err(SecretError::Duplicate(_))
        ));
    }

    /// `carried` judges a whole message (a datagram, a DNS name); `BodyScan` a body that
    /// arrives in pieces and leaves re-framed (chunked, HTTP/2 DATA).
    #[test]
    fn whole_messages_and_bodies_in_pieces_are_scanned() {
        let secrets = [secret("API_KEY"), secret("OTHER")];
        let p = secrets[1].placeholder().to_owned();
        assert_eq!(carried(&secrets, format!("q={p}").as_bytes()), Some(1));
        assert_eq!(carried(&secrets, b"q=moat_0000"), None);
        assert_eq!(carried(&[], p.as_bytes()), None);
        // The start of a placeholder is held, then found with the rest.
        let template = Scanner::new(&secrets, |_| true);
        assert!(!template.is_idle());
        let mut body = BodyScan::new(&template);
        let mut out = Vec::new();
        let first = format!("a=1&k={}", &p[..12]);
        assert_eq!(body.pass(first.as_bytes(), &mut out), Ok(()));
        assert_eq!(out, b"a=1&k=");
        assert_eq!(body.held(), 12);
        assert_eq!(body.pass(&p.as_bytes()[12..], &mut out), Err(1));
        // A clean body: what was held goes out at its end.
        let mut body = BodyScan::new(&template);
        let mut out = Vec::new();
        assert_eq!(body.pass(first.as_bytes(), &mut out), Ok(()));
        assert_eq!(body.held(), 12);
        body.end(&mut out);
        assert_eq!(body.held(), 0);
        assert_eq!(out, first.as_bytes());
    }

    /// A piece longer than any form that ends with the start of a placeholder holds that
    /// start back, as a short piece does: none of the placeholder leaves before it is found.
    #[test]
    fn a_long_piece_holds_back_the_start_of_a_placeholder() {
        let secrets = [secret("API_KEY")];
        let p = secrets[0].placeholder().as_bytes().to_vec();
        let mut s = Scanner::new(&secrets, |_| true);
        let mut piece = vec![b'x'; 1000];
        piece.extend_from_slice(&p[..12]);
        assert_eq!(s.scan(&piece), Scan::Pass(1000));
        assert_eq!(s.scan(&p), Scan::Found(0));
    }
}
