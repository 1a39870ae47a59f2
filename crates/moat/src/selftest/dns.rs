//! The few DNS bytes selftest needs (RFC 1035 §4): a query, the addresses of an answer,
//! and a responder on the host's loopback that answers every A and AAAA question with
//! addresses chosen by name — the upstream a rebinding attacker controls.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// QTYPE A and AAAA (RFC 1035 §3.2.2, RFC 3596).
pub(crate) const A: u16 = 1;
pub(crate) const AAAA: u16 = 28;

/// A recursive query for `name`.
pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        m.push(u8::try_from(label.len()).unwrap_or(63).min(63));
        m.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

/// Skips a name at `pos` (labels, or a compression pointer), giving the position after it.
fn skip_name(m: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *m.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            l if l & 0xc0 == 0xc0 => return Some(pos + 2),
            l => pos += 1 + usize::from(l),
        }
    }
}

fn u16_at(m: &[u8], pos: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*m.get(pos)?, *m.get(pos + 1)?]))
}

/// The A and AAAA addresses of a response; `None` if it is not one.
pub(crate) fn answers(m: &[u8]) -> Option<Vec<IpAddr>> {
    if m.len() < 12 || m[2] & 0x80 == 0 {
        return None;
    }
    let (qd, an) = (u16_at(m, 4)?, u16_at(m, 6)?);
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(m, pos)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        pos = skip_name(m, pos)?;
        let (kind, len) = (u16_at(m, pos)?, usize::from(u16_at(m, pos + 8)?));
        let data = m.get(pos + 10..pos + 10 + len)?;
        match (kind, len) {
            (A, 4) => out.push(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
            (AAAA, 16) => out.push(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
            _ => {}
        }
        pos += 10 + len;
    }
    Some(out)
}

/// Loopback, private, shared, link-local or unspecified: where rebinding leads.
pub(crate) fn inward(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            a.is_loopback()
                || a.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped().is_some_and(|v4| inward(IpAddr::V4(v4)))
        }
    }
}

/// The name whose answers point inward, and the name whose answer is public (the control).
pub(crate) const REBIND_NAME: &str = "rebind.moat-selftest.test";
pub(crate) const PUBLIC_NAME: &str = "public.moat-selftest.test";
/// The public name's answer: TEST-NET-1 (RFC 5737), allowed and never routed.
pub(crate) const PUBLIC_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 44);

/// What the responder answers for `name` and `qtype`.
fn records(name: &str, qtype: u16) -> Vec<IpAddr> {
    let inward_v4 = [
        [127, 0, 0, 1],
        [10, 0, 0, 1],
        [169, 254, 169, 254],
        [192, 168, 1, 1],
    ];
    match (name, qtype) {
        (REBIND_NAME, A) => inward_v4.iter().map(|o| IpAddr::from(*o)).collect(),
        (REBIND_NAME, AAAA) => vec![
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
            IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped()),
        ],
        (PUBLIC_NAME, A) => vec![IpAddr::V4(PUBLIC_ANSWER)],
        _ => Vec::new(),
    }
}

/// The lowercase dotted name of a query's question and its type.
fn question(m: &[u8]) -> Option<(String, u16, usize)> {
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*m.get(pos)?);
        if len == 0 || len & 0xc0 != 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(m.get(pos + 1..pos + 1 + len)?).to_ascii_lowercase());
        pos += 1 + len;
    }
    let end = pos + 5;
    Some((labels.join("."), u16_at(m, pos + 1)?, end))
}

/// The response to query `q`: its question, then the records, TTL 60.
fn respond(q: &[u8]) -> Option<Vec<u8>> {
    let (name, qtype, end) = question(q)?;
    let records = records(&name, qtype);
    let mut m = q.get(..end)?.to_vec();
    m[2] = 0x81 | (q[2] & 0x01);
    m[3] = 0x80;
    m[6..8].copy_from_slice(&u16::try_from(records.len()).ok()?.to_be_bytes());
    m[8..12].fill(0);
    for r in records {
        m.extend_from_slice(&[0xc0, 12]);
        let data: Vec<u8> = match r {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let kind = if data.len() == 4 { A } else { AAAA };
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        m.extend_from_slice(&u16::try_from(data.len()).ok()?.to_be_bytes());
        m.extend_from_slice(&data);
    }
    Some(m)
}

/// A responder on 127.0.0.1 answering until stopped (or 30 s, or 1,000 queries).
pub(crate) struct Responder {
    pub(crate) addr: SocketAddr,
    /// Questions for [`REBIND_NAME`] it received (the control: moat asked upstream).
    pub(crate) rebind_asked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    pub(crate) fn start() -> std::io::Result<Responder> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let rebind_asked = Arc::new(AtomicUsize::new(0));
        let (s, asked) = (stop.clone(), rebind_asked.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut buf = [0u8; 1500];
            for _ in 0..1000 {
                if s.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if question(&buf[..n]).is_some_and(|(name, _, _)| name == REBIND_NAME) {
                    asked.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(reply) = respond(&buf[..n]) {
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        Ok(Responder {
            addr,
            rebind_asked,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_responder_answers_what_the_parser_reads() {
        let q = query(7, REBIND_NAME, A);
        let r = respond(&q).unwrap_or_default();
        let got = answers(&r).unwrap_or_default();
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(|a| inward(*a)));
        let r = respond(&query(8, PUBLIC_NAME, A)).unwrap_or_default();
        assert_eq!(answers(&r), Some(vec![IpAddr::V4(PUBLIC_ANSWER)]));
        assert!(!inward(IpAddr::V4(PUBLIC_ANSWER)));
        // A query is not a response.
        assert_eq!(answers(&q), None);
    }
}
