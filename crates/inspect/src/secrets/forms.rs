//! The standard encodings of a secret's bytes, as literal patterns: what the [`Scanner`]
//! looks for (a placeholder on its way out) and what redaction replaces (a value on its way
//! back in, `swap.rs`).
//!
//! # Theory of operation
//! An endpoint that echoes what it got may hand a value back encoded rather than as it is.
//! Each encoding here is one an ordinary program produces without being told to hide
//! anything, and each leaves a literal run of characters that depends on the value alone:
//! - **hexadecimal**, lower and upper case (digests, dumps);
//! - **percent-encoding** (RFC 3986 §2.1), every byte or only the bytes outside the
//!   unreserved set (with and without `/` kept, as `encodeURIComponent` and Python's
//!   `quote` differ), upper and lower case digits;
//! - **JSON strings** (RFC 8259 §7): the escapes a serializer must make (`"`, `\`, control
//!   characters), the same with `\/`, ASCII-only output (`\u` for everything else), and
//!   every character as `\u` (lower and upper case digits);
//! - **base64** (RFC 4648 §4 standard and §5 URL-safe) at each of the three alignments the
//!   value may start at in the encoded data. There, a character holds 6 bits: those wholly
//!   inside the value make the literal ([`Base64::core`]), and at each end one character may
//!   mix the value's bits with its neighbour's ([`Edge`]): it is matched on the value's bits
//!   only and, when redacted, only those bits change — the neighbours decode as they were.
//!
//! The forms are literal so that the streaming matchers (`Scanner`, `SwapStream`) need no
//! decoder of their own: what a pattern could still begin is held back exactly as for the
//! value as it is. Mixed or unusual encodings (some escapes but not others, line-wrapped
//! base64, compression) are transformations moat does not follow: a host that transforms
//! the value arbitrarily is a host not to give it (README, "Secrets").
//!
//! [`Scanner`]: super::Scanner

/// RFC 4648 §4.
pub const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
/// RFC 4648 §5.
pub const BASE64_URL: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The fewest value bytes a base64 form is made for: a shorter core would match ordinary
/// base64 text by chance.
const BASE64_MIN: usize = 6;

/// One character at an end of a base64 form that holds some of the value's bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// The bits of the character's sextet that come from the value.
    pub mask: u8,
    /// Those bits, as the value sets them.
    pub bits: u8,
}

impl Edge {
    /// Whether `c` (a character of `alphabet`) carries the value's bits here.
    pub fn holds(&self, alphabet: &[u8; 64], c: u8) -> bool {
        sextet(alphabet, c).is_some_and(|s| s & self.mask == self.bits)
    }

    /// `c` with the value's bits replaced by `other`'s (the neighbour's kept).
    pub fn swap(&self, alphabet: &[u8; 64], c: u8, other: &Edge) -> u8 {
        match sextet(alphabet, c) {
            Some(s) => alphabet[usize::from(s & !self.mask | other.bits)],
            None => c,
        }
    }
}

/// The base64 form of some bytes at one alignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base64 {
    pub alphabet: &'static [u8; 64],
    /// The characters made of the value's bits alone.
    pub core: Vec<u8>,
    /// The character before the core that mixes a neighbour's bits with the value's.
    pub lead: Option<Edge>,
    /// The character after the core that does.
    pub trail: Option<Edge>,
}

/// The base64 form of `data` when it starts `offset` (0, 1 or 2) bytes into a 3-byte
/// group, in `alphabet`; `None` when `data` is too short to make one.
pub fn base64_at(data: &[u8], offset: usize, alphabet: &'static [u8; 64]) -> Option<Base64> {
    if data.len() < BASE64_MIN || offset > 2 {
        return None;
    }
    // The value's bits are [start, end) of the bit stream of its groups; character i holds
    // bits [6i, 6i + 6).
    let (start, end) = (8 * offset, 8 * (offset + data.len()));
    let mut bytes = vec![0u8; offset];
    bytes.extend_from_slice(data);
    bytes.resize(bytes.len().div_ceil(3) * 3, 0);
    let chars = base64_whole(&bytes, alphabet);
    let mut core = Vec::new();
    let (mut lead, mut trail) = (None, None);
    for (i, &c) in chars.iter().enumerate() {
        let (lo, hi) = (6 * i, 6 * i + 6);
        if hi <= start || lo >= end {
            continue;
        }
        if lo >= start && hi <= end {
            core.push(c);
            continue;
        }
        // Bit j of the sextet (5: its first) is stream bit lo + 5 - j.
        let mask = (0..6u8)
            .filter(|j| (start..end).contains(&(lo + 5 - usize::from(*j))))
            .fold(0u8, |m, j| m | 1 << j);
        let s = sextet(alphabet, c).unwrap_or(0);
        let edge = Edge {
            mask,
            bits: s & mask,
        };
        if lo < start {
            lead = Some(edge);
        } else {
            trail = Some(edge);
        }
    }
    Some(Base64 {
        alphabet,
        core,
        lead,
        trail,
    })
}

/// Every base64 form of `data`: both alphabets, the three alignments.
pub fn base64_forms(data: &[u8]) -> Vec<Base64> {
    [BASE64, BASE64_URL]
        .into_iter()
        .flat_map(|a| (0..3).filter_map(move |o| base64_at(data, o, a)))
        .collect()
}

/// The value of base64 character `c`.
fn sextet(alphabet: &[u8; 64], c: u8) -> Option<u8> {
    alphabet.iter().position(|&a| a == c).map(|i| i as u8)
}

/// The base64 of `data` (a whole number of 3-byte groups), no padding.
fn base64_whole(data: &[u8], alphabet: &[u8; 64]) -> Vec<u8> {
    data.chunks_exact(3)
        .flat_map(|c| {
            let n = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
            [18, 12, 6, 0].map(|s| alphabet[(n >> s & 63) as usize])
        })
        .collect()
}

/// The literal text forms of `data` other than base64, each with the same encoding of
/// `to`, without duplicates and without `data` as it is: hexadecimal, percent-encoded and
/// JSON-escaped (see the module header).
pub fn text_forms(data: &[u8], to: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    type Encoder<'a> = &'a dyn Fn(&[u8]) -> Vec<u8>;
    let encoders: [Encoder<'_>; 14] = [
        &|d| hex(d, false),
        &|d| hex(d, true),
        &|d| percent(d, |_| true, false),
        &|d| percent(d, |_| true, true),
        &|d| percent(d, |b| !unreserved(b), true),
        &|d| percent(d, |b| !unreserved(b), false),
        &|d| percent(d, |b| !unreserved(b) && b != b'/', true),
        &|d| percent(d, |b| !unreserved(b) && b != b'/', false),
        &|d| json(d, JsonStyle::Minimal, false),
        &|d| json(d, JsonStyle::Slash, false),
        &|d| json(d, JsonStyle::Ascii, false),
        &|d| json(d, JsonStyle::Ascii, true),
        &|d| json(d, JsonStyle::Every, false),
        &|d| json(d, JsonStyle::Every, true),
    ];
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for encode in encoders {
        let from = encode(data);
        if from != data && !out.iter().any(|(f, _)| *f == from) {
            out.push((from, encode(to)));
        }
    }
    out
}

/// `data` in hexadecimal.
pub fn hex(data: &[u8], upper: bool) -> Vec<u8> {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    data.iter()
        .flat_map(|&b| [digits[usize::from(b >> 4)], digits[usize::from(b & 15)]])
        .collect()
}

/// RFC 3986 §2.3.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `data` with the bytes `escape` selects percent-encoded.
fn percent(data: &[u8], escape: impl Fn(u8) -> bool, upper: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() * 3);
    for &b in data {
        if escape(b) {
            out.push(b'%');
            out.extend_from_slice(&hex(&[b], upper));
        } else {
            out.push(b);
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum JsonStyle {
    /// Only what RFC 8259 requires, short escapes where there are (serde_json, Go).
    Minimal,
    /// The same with `/` as `\/` (PHP).
    Slash,
    /// Everything outside ASCII as `\u` (Python's default `ensure_ascii`).
    Ascii,
    /// Every character as `\u`.
    Every,
}

/// `data` as the inside of a JSON string, `\u` escapes in `upper` case hexadecimal (Python
/// writes lower case, Jackson upper); text that is not UTF-8 is taken as UTF-8 with
/// replacement characters (an encoder would have refused or replaced it: the ASCII part
/// still matches).
fn json(data: &[u8], style: JsonStyle, upper: bool) -> Vec<u8> {
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::with_capacity(data.len());
    let mut units = [0u16; 2];
    for c in text.chars() {
        let short = match c {
            '"' => Some(&b"\\\""[..]),
            '\\' => Some(&b"\\\\"[..]),
            '\n' => Some(&b"\\n"[..]),
            '\r' => Some(&b"\\r"[..]),
            '\t' => Some(&b"\\t"[..]),
            '\u{8}' => Some(&b"\\b"[..]),
            '\u{c}' => Some(&b"\\f"[..]),
            '/' if style == JsonStyle::Slash => Some(&b"\\/"[..]),
            _ => None,
        };
        let escape = style == JsonStyle::Every
            || (c as u32) < 0x20
            || (style == JsonStyle::Ascii && !c.is_ascii());
        match short {
            Some(s) if style != JsonStyle::Every => out.extend_from_slice(s),
            _ if escape => {
                for u in c.encode_utf16(&mut units) {
                    out.extend_from_slice(b"\\u");
                    out.extend_from_slice(&hex(&u.to_be_bytes(), upper));
                }
            }
            _ => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use base64::Engine as _;
    use proptest::prelude::*;

    use super::*;

    /// What `encoded` decodes to (the base64 crate's decoder, unpadded: the reference).
    fn decodes_to(encoded: &str, url: bool) -> Vec<u8> {
        let engine = if url {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
        } else {
            base64::engine::general_purpose::STANDARD_NO_PAD
        };
        engine.decode(encoded.trim_end_matches('=')).unwrap()
    }

    #[test]
    fn hex_percent_and_json_forms_are_what_programs_write() {
        let forms = text_forms(b"a/b\"c", b"P");
        let froms: Vec<String> = forms
            .iter()
            .map(|(f, _)| String::from_utf8(f.clone()).unwrap())
            .collect();
        for expected in [
            "612f622263",
            "%61%2F%62%22%63",
            "%61%2f%62%22%63",
            "a%2Fb%22c",
            "a/b%22c",
            "a/b\\\"c",
            "a\\/b\\\"c",
            "\\u0061\\u002f\\u0062\\u0022\\u0063",
            "\\u0061\\u002F\\u0062\\u0022\\u0063",
        ] {
            assert!(froms.iter().any(|f| f == expected), "{expected}: {froms:?}");
        }
        // Each comes with the same encoding of the replacement; none is the data itself.
        assert!(forms.iter().any(|(f, t)| f == b"612f622263" && t == b"50"));
        assert!(!forms.iter().any(|(f, _)| f == b"a/b\"c"));
        // Non-ASCII: \u escapes of UTF-16 units.
        let forms = text_forms("é€".as_bytes(), b"P");
        assert!(
            forms.iter().any(|(f, _)| f == b"\\u00e9\\u20ac"),
            "{forms:?}"
        );
    }

    #[test]
    fn each_encoder_makes_its_own_form() {
        // Bytes whose escapes have hex letters (`/`, `:`, `é`), so that every case and every
        // escaped set makes a form of its own: all fourteen, in the encoders' order, each
        // with the same encoding of the replacement.
        let forms = text_forms("a/b:\"é".as_bytes(), b":");
        let text = |b: &Vec<u8>| String::from_utf8(b.clone()).unwrap();
        let froms: Vec<String> = forms.iter().map(|(f, _)| text(f)).collect();
        let tos: Vec<String> = forms.iter().map(|(_, t)| text(t)).collect();
        assert_eq!(
            froms,
            [
                "612f623a22c3a9",
                "612F623A22C3A9",
                "%61%2f%62%3a%22%c3%a9",
                "%61%2F%62%3A%22%C3%A9",
                "a%2Fb%3A%22%C3%A9",
                "a%2fb%3a%22%c3%a9",
                "a/b%3A%22%C3%A9",
                "a/b%3a%22%c3%a9",
                "a/b:\\\"é",
                "a\\/b:\\\"é",
                "a/b:\\\"\\u00e9",
                "a/b:\\\"\\u00E9",
                "\\u0061\\u002f\\u0062\\u003a\\u0022\\u00e9",
                "\\u0061\\u002F\\u0062\\u003A\\u0022\\u00E9",
            ]
        );
        assert_eq!(
            tos,
            [
                "3a", "3A", "%3a", "%3A", "%3A", "%3a", "%3A", "%3a", ":", ":", ":", ":",
                "\\u003a", "\\u003A",
            ]
        );
    }

    #[test]
    fn a_form_equal_to_the_data_or_to_another_form_is_left_out() {
        // "123": no byte is escaped outside hex, `%` for every byte and `\u` for every
        // character, and their digits have no case.
        let froms: Vec<Vec<u8>> = text_forms(b"123", b"P")
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            froms,
            [&b"313233"[..], b"%31%32%33", b"\\u0031\\u0032\\u0033"]
        );
    }

    #[test]
    fn json_uses_the_short_escapes_where_there_are() {
        let d = b"\"\\/\n\r\t\x08\x0c\x01 ";
        assert_eq!(
            json(d, JsonStyle::Minimal, false),
            br#"\"\\/\n\r\t\b\f\u0001 "#
        );
        assert_eq!(
            json(d, JsonStyle::Slash, false),
            br#"\"\\\/\n\r\t\b\f\u0001 "#
        );
        assert_eq!(
            json(d, JsonStyle::Ascii, false),
            br#"\"\\/\n\r\t\b\f\u0001 "#
        );
        assert_eq!(
            json(d, JsonStyle::Every, true),
            br#"\u0022\u005C\u002F\u000A\u000D\u0009\u0008\u000C\u0001\u0020"#
        );
    }

    #[test]
    fn base64_edges_hold_only_the_values_bits() {
        let v = b"sk-live-1234";
        for url in [false, true] {
            let alphabet = if url { BASE64_URL } else { BASE64 };
            for offset in 0..3 {
                let form = base64_at(v, offset, alphabet).unwrap();
                assert_eq!(form.lead.is_some(), offset != 0);
                // Encoded after `offset` bytes of anything, the core is there, and the
                // edges around it hold the value's bits.
                for lead_byte in [0u8, 0xff, b'x'] {
                    let mut data = vec![lead_byte; offset];
                    data.extend_from_slice(v);
                    data.extend_from_slice(&[lead_byte, 0x5a]);
                    let engine = if url {
                        base64::engine::general_purpose::URL_SAFE
                    } else {
                        base64::engine::general_purpose::STANDARD
                    };
                    let enc = engine.encode(&data).into_bytes();
                    let at = memchr::memmem::find(&enc, &form.core).unwrap();
                    if let Some(lead) = form.lead {
                        assert!(lead.holds(alphabet, enc[at - 1]));
                    }
                    if let Some(trail) = form.trail {
                        assert!(trail.holds(alphabet, enc[at + form.core.len()]));
                    }
                }
            }
        }
        assert!(base64_at(b"short", 0, BASE64).is_none());
    }

    #[test]
    fn an_edge_holds_only_the_characters_with_the_values_bits() {
        // At offset 1 the lead character holds the value's first 4 bits ('s' = 0x73: 0111)
        // under a neighbour's 2; at offset 2 the trail holds its last 4 ('4' = 0x34: 0100).
        let v = b"sk-live-1234";
        let lead = base64_at(v, 1, BASE64).unwrap().lead.unwrap();
        assert_eq!(
            lead,
            Edge {
                mask: 0b1111,
                bits: 0b0111
            }
        );
        let trail = base64_at(v, 2, BASE64).unwrap().trail.unwrap();
        assert_eq!(
            trail,
            Edge {
                mask: 0b11_1100,
                bits: 0b01_0000
            }
        );
        for (edge, free) in [(lead, 2), (trail, 2)] {
            let held: Vec<u8> = BASE64
                .iter()
                .copied()
                .filter(|&c| edge.holds(BASE64, c))
                .collect();
            // One character for each setting of the neighbour's bits, each with the value's.
            assert_eq!(held.len(), 1 << free, "{edge:?}");
            for c in held {
                assert_eq!(sextet(BASE64, c).unwrap() & edge.mask, edge.bits);
            }
        }
        // 'H' (7 = 000111) has the lead's bits, 'I' (8 = 001000) does not; '=' and '.'
        // are no base64 characters.
        assert!(lead.holds(BASE64, b'H'));
        assert!(!lead.holds(BASE64, b'I'));
        assert!(!lead.holds(BASE64, b'='));
        assert!(!lead.holds(BASE64_URL, b'+'));
    }

    /// Plain reference decoders: hexadecimal pairs, and percent escapes.
    fn unhex(text: &[u8]) -> Vec<u8> {
        text.chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn unpercent(text: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < text.len() {
            if text[i] == b'%' {
                out.extend(unhex(&text[i + 1..i + 3]));
                i += 3;
            } else {
                out.push(text[i]);
                i += 1;
            }
        }
        out
    }

    proptest! {
        /// Every text encoding decodes to the data with a plain decoder of its kind
        /// (serde_json for JSON strings).
        #[test]
        fn text_forms_decode_to_what_they_encode(data in "(?s).{1,24}") {
            let d = data.as_bytes();
            prop_assert_eq!(unhex(&hex(d, true)), d);
            prop_assert_eq!(unhex(&hex(d, false)), d);
            let escapes: [&dyn Fn(u8) -> bool; 3] = [
                &|_| true,
                &|b| !unreserved(b),
                &|b| !unreserved(b) && b != b'/',
            ];
            for escape in escapes {
                for upper in [false, true] {
                    prop_assert_eq!(unpercent(&percent(d, escape, upper)), d);
                }
            }
            for style in [JsonStyle::Minimal, JsonStyle::Slash, JsonStyle::Ascii, JsonStyle::Every] {
                for upper in [false, true] {
                    let text = json(d, style, upper);
                    let quoted = format!("\"{}\"", std::str::from_utf8(&text).unwrap());
                    let back: String = serde_json::from_str(&quoted).unwrap();
                    prop_assert_eq!(back.as_bytes(), d, "{}", quoted);
                }
            }
        }

        /// Replacing a form's core and edges by another's of the same length decodes to the
        /// same bytes around, with the other in the value's place (the plain reference: the
        /// whole thing encoded again).
        #[test]
        fn a_swapped_base64_form_decodes_to_the_other_bytes(
            before in proptest::collection::vec(any::<u8>(), 0..7),
            after in proptest::collection::vec(any::<u8>(), 0..7),
            value in proptest::collection::vec(any::<u8>(), 6..40),
            url in any::<bool>(),
        ) {
            let other = vec![b'*'; value.len()];
            let alphabet = if url { BASE64_URL } else { BASE64 };
            let engine = if url {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
            } else {
                base64::engine::general_purpose::STANDARD_NO_PAD
            };
            let offset = before.len() % 3;
            let from = base64_at(&value, offset, alphabet).unwrap();
            let to = base64_at(&other, offset, alphabet).unwrap();
            prop_assert_eq!(from.core.len(), to.core.len());
            let data = [before.as_slice(), &value, &after].concat();
            let mut enc = engine.encode(&data).into_bytes();
            // The core starts at the first character wholly inside the value.
            let first = (8 * before.len()).div_ceil(6);
            prop_assert_eq!(&enc[first..first + from.core.len()], from.core.as_slice());
            enc[first..first + from.core.len()].copy_from_slice(&to.core);
            if let (Some(l), Some(t)) = (from.lead, to.lead) {
                prop_assert!(l.holds(alphabet, enc[first - 1]));
                enc[first - 1] = l.swap(alphabet, enc[first - 1], &t);
            }
            let end = first + from.core.len();
            if let (Some(l), Some(t)) = (from.trail, to.trail) {
                prop_assert!(l.holds(alphabet, enc[end]));
                enc[end] = l.swap(alphabet, enc[end], &t);
            }
            let expected = [before.as_slice(), &other, &after].concat();
            prop_assert_eq!(decodes_to(std::str::from_utf8(&enc).unwrap(), url), expected);
        }
    }
}
