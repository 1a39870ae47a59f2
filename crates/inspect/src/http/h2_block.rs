//! A header block moat writes anew on a connection that swaps secrets (`h2_swap.rs`):
//! decoded with the sender's table, judged (the anti-fronting check of `h2.rs`, the
//! placeholders the host may not receive, what it says of codings and ranges), each field
//! swapped, and encoded again as literals that never enter a dynamic table, so each leg's
//! HPACK tables stay right whatever the other leg did (RFC 7541).

use super::h2::{BlockCheck, UNDECODABLE};
use super::{Authority, Refused};
use crate::secrets::swap::Swap;
use crate::secrets::{Scan, Scanner};

/// What a header block may say of content codings and ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coding {
    /// Anything (no value on this connection, or no body follows).
    Any,
    /// A request's: `accept-encoding: identity`, no range.
    Ask,
    /// A response's: no coding but identity.
    Refuse,
}

/// What a header block is held to before it is encoded again.
#[derive(Clone, Copy)]
pub(super) struct Judge<'a> {
    /// Placeholders the host may not receive.
    pub(super) scan: Option<&'a Scanner>,
    /// What it may say of codings and ranges.
    pub(super) coding: Coding,
    /// The authority a request must name, judged as the reader judges ([`BlockCheck`]).
    /// The block is judged as the sandbox sent it: a host field that passes names the
    /// handshake's host exactly, so it holds no placeholder and swapping leaves it alone.
    pub(super) check: Option<&'a Authority>,
}

/// Decodes a header block and encodes it again with every field swapped (see the module
/// header), after `judge`'s checks, and what its coding asks done.
pub(super) fn reencode(
    decoder: &mut loona_hpack::Decoder<'static>,
    swap: &mut Swap,
    judge: Judge<'_>,
    block: &[u8],
) -> Result<Vec<u8>, Refused> {
    let Judge {
        scan,
        coding,
        check,
    } = judge;
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut sent = BlockCheck::default();
    decoder
        .decode_with_cb(block, |name, value| {
            // Only a side that checks gathers what it needs (the host fields, kept as text).
            if check.is_some() {
                sent.field(&name, &value);
            }
            fields.push((name.into_owned(), value.into_owned()));
        })
        .map_err(|_| Refused::Malformed(UNDECODABLE))?;
    if let Some(expect) = check {
        sent.verdict(expect)?;
    }
    // Inside HPACK (often Huffman-coded) a placeholder is only seen decoded.
    if let Some(template) = scan {
        let mut text = Vec::new();
        for (name, value) in &fields {
            text.extend_from_slice(name);
            text.extend_from_slice(b": ");
            text.extend_from_slice(value);
            text.push(b'\n');
        }
        if let Scan::Found(i) = template.clone().scan(&text) {
            return Err(Refused::Secret(i));
        }
    }
    if coding == Coding::Refuse
        && let Some((_, coded)) = fields.iter().find(|(n, v)| {
            n.as_slice() == b"content-encoding" && !v.trim_ascii().eq_ignore_ascii_case(b"identity")
        })
    {
        return Err(Refused::Coded(String::from_utf8_lossy(coded).into_owned()));
    }
    let mut out = Vec::with_capacity(block.len() + 64);
    let mut value = Vec::new();
    // A request's head (not its trailers) asks for identity.
    if coding == Coding::Ask && fields.iter().any(|(n, _)| n.as_slice() == b":method") {
        fields.retain(|(n, _)| !super::h1_swap::asks_unreadable(n));
        let at = fields
            .iter()
            .position(|(n, _)| !n.starts_with(b":"))
            .unwrap_or(fields.len());
        fields.insert(at, (b"accept-encoding".to_vec(), b"identity".to_vec()));
    }
    for (name, raw) in &fields {
        // Swapping may change a body's length, which END_STREAM delimits anyway.
        if !swap.is_empty() && name.as_slice() == b"content-length" {
            continue;
        }
        value.clear();
        let changed = swap.field(name, raw, &mut value);
        // Literal field, new name: never indexed (0x10) when it carries a swapped value,
        // else without indexing (0x00); neither touches a dynamic table.
        out.push(if changed { 0x10 } else { 0x00 });
        string(&mut out, name);
        string(&mut out, &value);
    }
    Ok(out)
}

/// An HPACK string literal without Huffman coding (RFC 7541 §5.2).
fn string(out: &mut Vec<u8>, s: &[u8]) {
    integer(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// An HPACK integer with an `n`-bit prefix after `first`'s high bits (RFC 7541 §5.1).
fn integer(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}
