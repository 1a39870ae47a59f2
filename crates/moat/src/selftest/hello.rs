//! A TLS 1.3 ClientHello (RFC 8446 §4.1.2) naming a server (RFC 6066 §3), as the records a
//! client may legally cut it into (RFC 8446 §5.1: a handshake message may span records):
//! the first record ends before the extensions, the second in the middle of the name. A
//! reader that judges only the first record sees no name at all.

/// The handshake message: a ClientHello with SNI `name`, x25519 and TLS 1.3 only.
fn client_hello(name: &str) -> Vec<u8> {
    let name = name.as_bytes();
    let mut ext = Vec::new();
    let mut push_ext = |kind: u16, body: &[u8]| {
        ext.extend_from_slice(&kind.to_be_bytes());
        ext.extend_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_be_bytes());
        ext.extend_from_slice(body);
    };
    let n = u16::try_from(name.len()).unwrap_or(0);
    let mut sni = Vec::new();
    sni.extend_from_slice(&(n + 3).to_be_bytes());
    sni.push(0); // host_name
    sni.extend_from_slice(&n.to_be_bytes());
    sni.extend_from_slice(name);
    push_ext(0, &sni); // server_name
    push_ext(10, &[0, 2, 0, 0x1d]); // supported_groups: x25519
    push_ext(13, &[0, 4, 0x04, 0x03, 0x08, 0x04]); // signature_algorithms
    push_ext(43, &[2, 3, 4]); // supported_versions: TLS 1.3
    let mut share = vec![0, 36, 0, 0x1d, 0, 32];
    share.extend((0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(9)));
    push_ext(51, &share); // key_share
    let mut body = vec![3, 3];
    body.extend((0u8..32).map(|i| i.wrapping_mul(13).wrapping_add(1))); // random
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // TLS_AES_128_GCM_SHA256
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&u16::try_from(ext.len()).unwrap_or(0).to_be_bytes());
    body.extend_from_slice(&ext);
    let len = u32::try_from(body.len()).unwrap_or(0).to_be_bytes();
    let mut msg = vec![1, len[1], len[2], len[3]];
    msg.extend_from_slice(&body);
    msg
}

/// The ClientHello for `name` in three handshake records.
pub(crate) fn split_client_hello(name: &str) -> Vec<Vec<u8>> {
    let msg = client_hello(name);
    let at = msg
        .windows(name.len().max(1))
        .position(|w| w == name.as_bytes())
        .unwrap_or(msg.len() / 2);
    let cuts = [0, 40, at + name.len() / 2, msg.len()];
    cuts.windows(2)
        .map(|c| {
            let frag = &msg[c[0]..c[1]];
            let mut rec = vec![22, 3, 1];
            rec.extend_from_slice(&u16::try_from(frag.len()).unwrap_or(0).to_be_bytes());
            rec.extend_from_slice(frag);
            rec
        })
        .collect()
}

/// `records` (from [`split_client_hello`]) as one handshake record.
pub(crate) fn as_one_record(records: &[Vec<u8>]) -> Vec<u8> {
    let msg: Vec<u8> = records.iter().flat_map(|r| r[5..].to_vec()).collect();
    let mut rec = vec![22, 3, 1];
    rec.extend_from_slice(&u16::try_from(msg.len()).unwrap_or(0).to_be_bytes());
    rec.extend_from_slice(&msg);
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_records_carry_one_client_hello_and_no_record_the_whole_name() {
        let records = split_client_hello("blocked.moat-selftest.test");
        assert_eq!(records.len(), 3);
        // The records' fragments are the one message again.
        let fragments: Vec<u8> = records.iter().flat_map(|r| r[5..].to_vec()).collect();
        assert_eq!(fragments, client_hello("blocked.moat-selftest.test"));
        let len = usize::from(u16::from_be_bytes([records[0][3], records[0][4]]));
        assert_eq!(len + 5, records[0].len());
        // No record alone holds the whole name.
        assert!(
            records
                .iter()
                .all(|r| !r.windows(26).any(|w| w == b"blocked.moat-selftest.test"))
        );
    }
}
