//! Substitution and redaction: replacing placeholders with values on the way to an allowed
//! host, and values with placeholders on the way back.
//!
//! # Theory of operation
//! A [`Swap`] is one direction's list of pairs (`from` → `to`) on one connection: toward the
//! server, each placeholder its host may receive → the value ([`Swap::substitute`]); toward
//! the sandbox, each of those values → its placeholder ([`Swap::redact`]), so an endpoint
//! that echoes what it got cannot hand the value to the code it was kept from.
//!
//! Redaction also knows the value's standard encodings (`forms.rs`): hexadecimal,
//! percent-encoded and JSON-escaped, each replaced by the same encoding of the placeholder,
//! and base64 (standard and URL-safe, at every alignment), replaced by the base64 of as many
//! `*` as the value has bytes — the same length, so the encoded text around it still
//! decodes as it was; the characters at its ends that also hold a neighbour's bits change
//! only in the value's bits. Substitution swaps the placeholder as it is only: what the
//! sandbox encodes itself is its own business, and an encoded placeholder to a host outside
//! the list is still found by the scanner.
//!
//! - [`Swap::replace`] rewrites a whole piece (a request head, a held body, a header field).
//! - [`Swap::field`] does the same for a header field, and for HTTP Basic credentials
//!   (`Authorization: Basic ...`) decodes the base64, swaps inside it and encodes again.
//! - [`SwapStream`] rewrites a body that arrives in pieces: the end of a piece that may begin
//!   a `from` is held until what follows shows whether it does ([`SwapStream::finish`] lets it
//!   go at the body's end), so a placeholder split across writes, segments or frames is
//!   still replaced whole.
//!
//! The framing around the rewritten bytes (Content-Length, chunk sizes, HTTP/2 frame
//! lengths and flow control) is the HTTP rewriters' (`http/h1_swap.rs`, `http/h2_swap.rs`).

use base64::Engine as _;
use memchr::memmem::Finder;
use zeroize::Zeroizing;

use super::Secret;
use super::forms::{self, Edge};

/// One replacement.
struct Pair {
    secret: usize,
    from: Zeroizing<Vec<u8>>,
    to: Zeroizing<Vec<u8>>,
    finder: Finder<'static>,
    /// For a base64 form: the characters around `from` that hold some of its bits.
    edges: Option<Edges>,
}

/// The edge characters of a base64 form (`forms.rs`): each as `from` and as `to` set it.
struct Edges {
    alphabet: &'static [u8; 64],
    lead: Option<(Edge, Edge)>,
    trail: Option<(Edge, Edge)>,
}

/// Where a pair matched: its region (edge characters included) and its `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Match {
    start: usize,
    pair: usize,
    at: usize,
    end: usize,
}

/// What a base64 form's value bytes become when redacted (see the module header).
const MASK: u8 = b'*';

/// One direction's replacements on one connection (see the module header).
pub struct Swap {
    pairs: Vec<Pair>,
    /// Secrets replaced since [`Swap::take_hits`] (bit `i`: secret `i`; the first 64).
    hits: u64,
}

impl std::fmt::Debug for Swap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secrets: Vec<usize> = self.pairs.iter().map(|p| p.secret).collect();
        f.debug_struct("Swap")
            .field("secrets", &secrets)
            .finish_non_exhaustive()
    }
}

impl Swap {
    /// Placeholder → value for the secrets `allowed` selects (by index); `None` when it
    /// selects none.
    pub fn substitute(secrets: &[Secret], allowed: impl Fn(usize) -> bool) -> Option<Swap> {
        Swap::build(secrets, allowed, false, |s| {
            (s.placeholder.as_bytes().to_vec(), s.value.to_vec())
        })
    }

    /// Value → placeholder for the secrets `allowed` selects, the value's standard
    /// encodings included (see the module header); `None` when it selects none.
    pub fn redact(secrets: &[Secret], allowed: impl Fn(usize) -> bool) -> Option<Swap> {
        Swap::build(secrets, allowed, true, |s| {
            (s.value.to_vec(), s.placeholder.as_bytes().to_vec())
        })
    }

    /// Nothing to replace (a connection that only watches for placeholders).
    pub fn none() -> Swap {
        Swap {
            pairs: Vec::new(),
            hits: 0,
        }
    }

    /// Whether there is nothing to replace.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    fn build(
        secrets: &[Secret],
        allowed: impl Fn(usize) -> bool,
        encoded: bool,
        pair: impl Fn(&Secret) -> (Vec<u8>, Vec<u8>),
    ) -> Option<Swap> {
        let mut pairs = Vec::new();
        let make = |secret, from: Vec<u8>, to: Vec<u8>, edges| {
            let (from, to) = (Zeroizing::new(from), Zeroizing::new(to));
            let finder = Finder::new(from.as_slice()).into_owned();
            Pair {
                secret,
                from,
                to,
                finder,
                edges,
            }
        };
        for (i, s) in secrets.iter().enumerate().filter(|(i, _)| allowed(*i)) {
            let (from, to) = pair(s);
            let (from, to) = (Zeroizing::new(from), Zeroizing::new(to));
            // As it is first: at one place, the first pair wins.
            pairs.push(make(i, from.to_vec(), to.to_vec(), None));
            if !encoded {
                continue;
            }
            for (f, t) in forms::text_forms(&from, &to) {
                pairs.push(make(i, f, t, None));
            }
            let masks = forms::base64_forms(&vec![MASK; from.len()]);
            for (f, t) in forms::base64_forms(&from).into_iter().zip(masks) {
                let edges = Edges {
                    alphabet: f.alphabet,
                    lead: f.lead.zip(t.lead),
                    trail: f.trail.zip(t.trail),
                };
                pairs.push(make(i, f.core, t.core, Some(edges)));
            }
        }
        (!pairs.is_empty()).then_some(Swap { pairs, hits: 0 })
    }

    /// The secrets replaced since the last call (bit `i`: secret `i`).
    pub fn take_hits(&mut self) -> u64 {
        std::mem::take(&mut self.hits)
    }

    /// Appends `data` to `out` with every `from` replaced (the leftmost first; at one
    /// place, the first pair); whether anything was.
    pub fn replace(&mut self, data: &[u8], out: &mut Vec<u8>) -> bool {
        self.replace_before(data, data.len(), out) > 0
    }

    /// Replaces the matches of `data` that start before `limit`, appending `data` up to
    /// `limit` or the end of the last match, whichever is later. Returns that end, or 0 when
    /// nothing matched.
    fn replace_before(&mut self, data: &[u8], limit: usize, out: &mut Vec<u8>) -> usize {
        let mut pos = 0;
        let mut found = 0;
        while let Some(m) = self.next_match(data, pos).filter(|m| m.start < limit) {
            let pair = &self.pairs[m.pair];
            out.extend_from_slice(&data[pos..m.start]);
            if let Some(e) = &pair.edges {
                if let Some((from, to)) = &e.lead
                    && m.start < m.at
                {
                    out.push(from.swap(e.alphabet, data[m.start], to));
                }
                out.extend_from_slice(&pair.to);
                if let Some((from, to)) = &e.trail
                    && m.end > m.at + pair.from.len()
                {
                    out.push(from.swap(e.alphabet, data[m.end - 1], to));
                }
            } else {
                out.extend_from_slice(&pair.to);
            }
            if pair.secret < 64 {
                self.hits |= 1 << pair.secret;
            }
            pos = m.end;
            found += 1;
        }
        if pos < limit {
            out.extend_from_slice(&data[pos..limit]);
            pos = limit;
        }
        if found == 0 { 0 } else { pos }
    }

    /// The leftmost match at or after `pos` (at one place, the first pair's).
    fn next_match(&self, data: &[u8], pos: usize) -> Option<Match> {
        let rest = data.get(pos..)?;
        self.pairs
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let at = pos + p.finder.find(rest)?;
                let mut m = Match {
                    start: at,
                    pair: i,
                    at,
                    end: at + p.from.len(),
                };
                if let Some(e) = &p.edges {
                    // An edge character goes with the match only when it holds the
                    // value's bits (a neighbour's own character is left alone).
                    if let Some((lead, _)) = &e.lead
                        && at > pos
                        && lead.holds(e.alphabet, data[at - 1])
                    {
                        m.start = at - 1;
                    }
                    if let Some((trail, _)) = &e.trail
                        && data.get(m.end).is_some_and(|&c| trail.holds(e.alphabet, c))
                    {
                        m.end += 1;
                    }
                }
                Some(m)
            })
            .min_by_key(|m| (m.start, m.pair))
    }

    /// Appends a header field's value to `out`, replaced; HTTP Basic credentials are
    /// decoded, replaced inside and encoded again. Whether anything was replaced.
    pub fn field(&mut self, name: &[u8], value: &[u8], out: &mut Vec<u8>) -> bool {
        let credentials = name.eq_ignore_ascii_case(b"authorization")
            || name.eq_ignore_ascii_case(b"proxy-authorization");
        if credentials
            && value.len() > 6
            && value[..6].eq_ignore_ascii_case(b"basic ")
            && let Ok(decoded) = base64::engine::general_purpose::STANDARD
                .decode(value[6..].trim_ascii())
                .map(Zeroizing::new)
        {
            let mut swapped = Zeroizing::new(Vec::with_capacity(decoded.len()));
            if self.replace(&decoded, &mut swapped) {
                out.extend_from_slice(&value[..6]);
                let encoded = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD.encode(swapped.as_slice()),
                );
                out.extend_from_slice(encoded.as_bytes());
                return true;
            }
        }
        self.replace(value, out)
    }

    /// How many bytes at the end of `data` begin some match without completing it: a
    /// start of a `from`, or for a base64 form, a whole one whose trailing edge character
    /// is still to come, or an edge character that may lead one; with the leading edge
    /// character when there is one.
    fn open_prefix(&self, data: &[u8]) -> usize {
        let mut best = 0;
        if data.is_empty() {
            return 0;
        }
        for p in &self.pairs {
            let from = p.from.as_slice();
            let (lead, trail) = match &p.edges {
                Some(e) => (
                    e.lead.as_ref().map(|(l, _)| (e.alphabet, *l)),
                    e.trail.is_some(),
                ),
                None => (None, false),
            };
            let led = |start: usize| {
                lead.is_some_and(|(alphabet, l)| start > 0 && l.holds(alphabet, data[start - 1]))
            };
            let window = data.len().min(from.len() - usize::from(!trail));
            let tail_at = data.len() - window;
            // Candidates start where the tail holds the pattern's first byte; the first is
            // the longest.
            for start in memchr::memchr_iter(from[0], &data[tail_at..]) {
                let start = tail_at + start;
                let k = data.len() - start;
                if from.starts_with(&data[start..]) {
                    best = best.max(k + usize::from(led(start)));
                    break;
                }
            }
            if led(data.len()) {
                best = best.max(1);
            }
        }
        best
    }
}

/// A body rewritten as it arrives (see the module header).
#[derive(Default)]
pub struct SwapStream {
    /// The end of what came before that may begin a `from`.
    held: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SwapStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwapStream")
            .field("held", &self.held.len())
            .finish()
    }
}

impl SwapStream {
    /// Appends to `out` what of the body so far can be rewritten now.
    pub fn push(&mut self, swap: &mut Swap, data: &[u8], out: &mut Vec<u8>) {
        if data.is_empty() {
            return;
        }
        let joined;
        let whole: &[u8] = if self.held.is_empty() {
            data
        } else {
            let mut j = std::mem::take(&mut self.held);
            j.extend_from_slice(data);
            joined = j;
            &joined
        };
        // Every place before the first one where a `from` could still begin is decided:
        // a match there is whole in `whole`, or there is none. A match taken may end past
        // that place; what follows it is looked at again.
        let mut pos = 0;
        loop {
            let rest = &whole[pos..];
            let open = rest.len() - swap.open_prefix(rest);
            let reached = swap.replace_before(rest, open, out);
            if reached <= open {
                self.held.extend_from_slice(&rest[open..]);
                return;
            }
            pos += reached;
        }
    }

    /// The body ended: what was held is not a beginning of anything, and goes.
    pub fn finish(&mut self, swap: &mut Swap, out: &mut Vec<u8>) {
        let held = std::mem::take(&mut self.held);
        swap.replace(&held, out);
    }

    /// How many bytes are held.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use proptest::prelude::*;

    use super::*;

    fn secrets() -> Vec<Secret> {
        let one = |name: &str, value: &[u8], p: &str| {
            Secret::new(
                name,
                Zeroizing::new(value.to_vec()),
                Some(p.to_owned()),
                &["api.example.test".into()],
                false,
            )
            .unwrap()
        };
        vec![
            one("A", b"value-of-a-0123456789", "moat_aaaaaaaaaaaaaaaa"),
            one("B", b"vb", "moat_bbbbbbbbbbbbbbbb"),
        ]
    }

    fn plain(swap: &mut Swap, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        swap.replace(data, &mut out);
        out
    }

    #[test]
    fn placeholders_become_values_and_values_placeholders() {
        let s = secrets();
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let out = plain(
            &mut sub,
            b"x=moat_aaaaaaaaaaaaaaaa&y=moat_bbbbbbbbbbbbbbbbmoat_aaaaaaaaaaaaaaaa.",
        );
        assert_eq!(out, b"x=value-of-a-0123456789&y=vbvalue-of-a-0123456789.");
        assert_eq!(sub.take_hits(), 0b11);
        assert_eq!(sub.take_hits(), 0);
        let mut red = Swap::redact(&s, |i| i == 0).unwrap();
        assert_eq!(
            plain(&mut red, b"echo value-of-a-0123456789 vb"),
            b"echo moat_aaaaaaaaaaaaaaaa vb"
        );
        assert!(Swap::substitute(&s, |_| false).is_none());
        assert!(!format!("{sub:?}").contains("value-of-a"));
        // The secrets are named by their index only.
        assert_eq!(format!("{sub:?}"), "Swap { secrets: [0, 1], .. }");
    }

    #[test]
    fn past_the_sixty_fourth_secret_values_are_swapped_without_a_hit() {
        let s: Vec<Secret> = (0..65)
            .map(|i| {
                Secret::new(
                    &format!("S{i}"),
                    Zeroizing::new(format!("value-{i:02}").into_bytes()),
                    Some(format!("moat_{i:02}_placeholder")),
                    &["api.example.test".into()],
                    false,
                )
                .unwrap()
            })
            .collect();
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        assert_eq!(plain(&mut sub, b"moat_64_placeholder"), b"value-64");
        assert_eq!(sub.take_hits(), 0);
        assert_eq!(plain(&mut sub, b"moat_63_placeholder"), b"value-63");
        assert_eq!(sub.take_hits(), 1 << 63);
    }

    #[test]
    fn a_base64_core_without_the_values_edge_characters_is_replaced_alone() {
        // The value's base64 one byte into a group has an edge character at each end. At
        // the ends of the data, or beside characters without the value's bits there (a
        // neighbour's own), only the core is replaced and the characters around stay.
        let s = secrets();
        let v = b"value-of-a-0123456789";
        let alphabet = forms::BASE64;
        let from = forms::base64_at(v, 1, alphabet).unwrap();
        let to = forms::base64_at(&[MASK; 21], 1, alphabet).unwrap();
        let other = |e: Option<Edge>, t: Option<Edge>| {
            let (e, t) = (e.unwrap(), t.unwrap());
            alphabet
                .iter()
                .copied()
                .find(|&c| !e.holds(alphabet, c) && !t.holds(alphabet, c))
                .unwrap()
        };
        let (before, after) = (other(from.lead, to.lead), other(from.trail, to.trail));
        let mut red = Swap::redact(&s, |i| i == 0).unwrap();
        assert_eq!(plain(&mut red, &from.core), to.core);
        let data = [&[before][..], &from.core, &[after]].concat();
        let want = [&[before][..], &to.core, &[after]].concat();
        assert_eq!(plain(&mut red, &data), want);
        assert_eq!(red.take_hits(), 1);
    }

    #[test]
    fn basic_credentials_are_decoded_swapped_and_encoded() {
        let s = secrets();
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
        let value = format!("Basic {}", b64(b"user:moat_aaaaaaaaaaaaaaaa"));
        let mut out = Vec::new();
        assert!(sub.field(b"Authorization", value.as_bytes(), &mut out));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("Basic {}", b64(b"user:value-of-a-0123456789"))
        );
        // Elsewhere the field is replaced as it is.
        let mut out = Vec::new();
        assert!(sub.field(b"x-token", b"moat_bbbbbbbbbbbbbbbb", &mut out));
        assert_eq!(out, b"vb");
        // Not base64: left as it is.
        let mut out = Vec::new();
        assert!(!sub.field(b"authorization", b"Basic !!!", &mut out));
        assert_eq!(out, b"Basic !!!");
    }

    #[test]
    fn the_value_is_redacted_in_its_standard_encodings() {
        let s = secrets();
        let v = b"value-of-a-0123456789";
        let mut red = Swap::redact(&s, |i| i == 0).unwrap();
        // Text forms become the same form of the placeholder.
        let p = b"moat_aaaaaaaaaaaaaaaa";
        for (from, to) in [
            (forms::hex(v, false), forms::hex(p, false)),
            (forms::hex(v, true), forms::hex(p, true)),
            (
                v.iter()
                    .flat_map(|b| format!("%{b:02X}").into_bytes())
                    .collect(),
                p.iter()
                    .flat_map(|b| format!("%{b:02X}").into_bytes())
                    .collect(),
            ),
            (
                v.iter()
                    .flat_map(|b| format!("\\u{b:04x}").into_bytes())
                    .collect(),
                p.iter()
                    .flat_map(|b| format!("\\u{b:04x}").into_bytes())
                    .collect(),
            ),
        ] {
            let data = [&b"{\"x\":\""[..], &from, b"\"}"].concat();
            let want = [&b"{\"x\":\""[..], &to, b"\"}"].concat();
            assert_eq!(plain(&mut red, &data), want);
        }
        // Base64, each alphabet and alignment, padded or not: what was around decodes as
        // it was, the value as as many `*`.
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        for before in ["", "a", "ab", "abc", "user:"] {
            for after in ["", "!", "?>"] {
                let data = [before.as_bytes(), v, after.as_bytes()].concat();
                let want = [before.as_bytes(), &[b'*'; 21], after.as_bytes()].concat();
                for engine in [&STANDARD, &URL_SAFE_NO_PAD] {
                    let text = format!("token={} end", engine.encode(&data));
                    let out = String::from_utf8(plain(&mut red, text.as_bytes())).unwrap();
                    let inner = out.strip_prefix("token=").unwrap().strip_suffix(" end");
                    let got = engine.decode(inner.unwrap()).unwrap();
                    assert_eq!(got, want, "{before:?} {after:?} {text} {out}");
                }
            }
        }
        assert_eq!(red.take_hits(), 1);
        // Substitution swaps the placeholder as it is only.
        let mut sub = Swap::substitute(&s, |i| i == 0).unwrap();
        let hex_p = forms::hex(p, false);
        assert_eq!(plain(&mut sub, &hex_p), hex_p);
    }

    #[test]
    fn an_encoded_value_cut_anywhere_is_redacted_as_whole() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let s = secrets();
        let v = b"value-of-a-0123456789";
        let mut bodies = vec![forms::hex(v, true)];
        for before in ["", "x", "xy"] {
            let data = [before.as_bytes(), v, b"z"].concat();
            bodies.push(STANDARD.encode(&data).into_bytes());
            bodies.push(URL_SAFE_NO_PAD.encode(&data).into_bytes());
        }
        for body in bodies {
            let body = [&b"Ab"[..], &body, b"Yz"].concat();
            let expected = plain(&mut Swap::redact(&s, |_| true).unwrap(), &body);
            assert!(!contains(&expected, v));
            for cut in 0..=body.len() {
                let (mut swap, mut stream) =
                    (Swap::redact(&s, |_| true).unwrap(), SwapStream::default());
                let mut out = Vec::new();
                stream.push(&mut swap, &body[..cut], &mut out);
                stream.push(&mut swap, &body[cut..], &mut out);
                stream.finish(&mut swap, &mut out);
                assert_eq!(out, expected, "cut at {cut}");
            }
        }
    }

    #[test]
    fn what_is_held_is_exactly_what_may_still_begin_a_match() {
        let s = secrets();
        // A whole placeholder at the end is replaced at once; the start of one is held.
        let mut sub = Swap::substitute(&s, |_| true).unwrap();
        let (mut stream, mut out) = (SwapStream::default(), Vec::new());
        stream.push(&mut sub, b"x moat_aaaaaaaaaaaaaaaa", &mut out);
        assert_eq!(out, b"x value-of-a-0123456789");
        assert_eq!(stream.held(), 0);
        stream.push(&mut sub, b" moat_aa", &mut out);
        assert_eq!(stream.held(), 7);
        assert_eq!(format!("{stream:?}"), "SwapStream { held: 7 }");
        // The start of the value's base64 core one byte into a group is held with the
        // character before it only when that one holds the value's first bits.
        let alphabet = forms::BASE64;
        let lead = forms::base64_at(b"value-of-a-0123456789", 1, alphabet).unwrap();
        let part = &lead.core[..5];
        let edge = lead.lead.unwrap();
        let holding = alphabet.iter().copied().find(|&c| edge.holds(alphabet, c));
        let other = alphabet.iter().copied().find(|&c| !edge.holds(alphabet, c));
        for (before, passed, held) in [(None, 0, 5), (other, 1, 5), (holding, 0, 6)] {
            let mut red = Swap::redact(&s, |i| i == 0).unwrap();
            let (mut stream, mut out) = (SwapStream::default(), Vec::new());
            let data = [before.as_slice(), part].concat();
            stream.push(&mut red, &data, &mut out);
            assert_eq!((out.len(), stream.held()), (passed, held), "{before:?}");
            stream.finish(&mut red, &mut out);
            assert_eq!(out, data);
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    proptest! {
        /// However a body is split, the stream rewrites it as a whole piece would be.
        #[test]
        fn streaming_equals_replacing_whole(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just(b"moat_aaaaaaaaaaaaaaaa".to_vec()),
                    Just(b"moat_bbbbbbbbbbbbbbbb".to_vec()),
                    Just(b"moat_aaaa".to_vec()),
                    Just(b"value-of-a-0123456789".to_vec()),
                    Just(b"76616c75652d6f662d612d30313233343536373839".to_vec()),
                    Just(b"dmFsdWUtb2YtYS0wMTIzNDU2Nzg5".to_vec()),
                    Just(b"eHZhbHVlLW9mLWEtMDEyMzQ1Njc4OQ".to_vec()),
                    Just(b"eHl2YWx1ZS1vZi1hLTAxMjM0NTY3ODk".to_vec()),
                    "[a-z_]{0,12}".prop_map(String::into_bytes),
                    "[A-Za-z0-9+/]{0,6}".prop_map(String::into_bytes),
                ],
                0..12,
            ),
            cuts in proptest::collection::vec(0usize..400, 0..8),
            redact in any::<bool>(),
        ) {
            let s = secrets();
            let make = || if redact { Swap::redact(&s, |_| true) } else { Swap::substitute(&s, |_| true) };
            let body: Vec<u8> = parts.concat();
            let mut whole = make().unwrap();
            let expected = plain(&mut whole, &body);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (body.len() + 1)).collect();
            cuts.sort_unstable();
            let (mut swap, mut stream, mut out, mut prev) = (make().unwrap(), SwapStream::default(), Vec::new(), 0);
            for cut in cuts.into_iter().chain([body.len()]) {
                stream.push(&mut swap, &body[prev..cut], &mut out);
                prev = cut;
            }
            stream.finish(&mut swap, &mut out);
            prop_assert_eq!(out, expected);
        }
    }
}
