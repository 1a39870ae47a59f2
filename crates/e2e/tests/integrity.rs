//! Bulk transfers through the engine arrive intact, and the sandbox leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use moat_e2e::{World, stderr, stdout};

/// Python for both tests: `up` sends `n` bytes of `pattern` to the world's sink and checks
/// the SHA-256 it answers; `down` asks the world's source for `n` bytes and checks them
/// against its fixed pattern. Each returns "ok" or what went wrong.
const TRANSFER: &str = r#"
import hashlib, socket
SOURCE_PATTERN = bytes(range(256)) * 256
def up(host, n, pattern):
    # Send n bytes, half-close, read the sink's hash of what arrived.
    s = socket.create_connection((host, 9000), timeout=60)
    h = hashlib.sha256()
    left = n
    while left:
        k = min(left, len(pattern))
        s.sendall(pattern[:k]); h.update(pattern[:k]); left -= k
    s.shutdown(socket.SHUT_WR)
    got = s.makefile().readline().strip()
    return "ok" if got == h.hexdigest() else "MISMATCH " + got
def down(host, n):
    # Ask for n bytes, hash them as they arrive, compare with the expected pattern.
    s = socket.create_connection((host, 9001), timeout=60)
    s.sendall(b"%d\n" % n)
    h, total = hashlib.sha256(), 0
    while True:
        b = s.recv(1 << 20)
        if not b:
            break
        h.update(b); total += len(b)
    e = hashlib.sha256()
    left = n
    while left:
        k = min(left, len(SOURCE_PATTERN)); e.update(SOURCE_PATTERN[:k]); left -= k
    return "ok" if (total == n and h.hexdigest() == e.hexdigest()) else "MISMATCH %d" % total
"#;

/// `body` run by python3 inside the sandbox after [`TRANSFER`].
fn python(body: &str) -> String {
    format!("python3 - <<'PY'\n{TRANSFER}{body}PY")
}

/// 1 GiB up (sink hashes what arrived) and 1 GiB down (source sends a known pattern).
#[test]
fn one_gib_each_way_arrives_intact() {
    let w = World::new();
    let script = python(
        r#"
N = 1 << 30
print("up", up("203.0.113.10", N, SOURCE_PATTERN))
print("down", down("203.0.113.10", N))
"#,
    );
    let (out, events) = w.run_sh(&[], &script, Duration::from_secs(600));
    let text = stdout(&out);
    assert!(text.contains("up ok"), "{text}\n{}", stderr(&out));
    assert!(text.contains("down ok"), "{text}");
    let sink = w.log().into_iter().find(|l| l["server"] == "sink").unwrap();
    assert_eq!(sink["bytes"], 1u64 << 30);
    let up: u64 = events
        .iter()
        .filter(|e| e["event"] == "close")
        .map(|e| e["bytes_up"].as_u64().unwrap())
        .sum();
    assert!(up >= 1 << 30, "{events:?}");
}

/// At MTU 1500 the link offloads TCP both ways: the sandbox's kernel hands moat segments
/// larger than the MTU and takes such segments back (the interface's average frame is over
/// 1,500 bytes each way), and 256 MiB each way over IPv4 and IPv6 arrives intact.
#[test]
fn offloaded_segments_cross_a_1500_byte_link_intact() {
    let w = World::new();
    let script = python(
        r#"
import fcntl, struct
N = 1 << 28
def stats():
    # /proc/net/dev: the counters of the sandbox's own eth0.
    for line in open("/proc/net/dev"):
        name, _, rest = line.partition(":")
        if name.strip() == "eth0":
            f = [int(x) for x in rest.split()]
            return {"rx_bytes": f[0], "rx_packets": f[1], "tx_bytes": f[8], "tx_packets": f[9]}
def avg(before, after, d):
    return (after[d + "_bytes"] - before[d + "_bytes"]) // max(after[d + "_packets"] - before[d + "_packets"], 1)
for host in ("203.0.113.10", "2001:db8::10"):
    before = stats()
    print("up", host, up(host, N, bytes(range(251)) * 261))
    print("avg_tx", host, avg(before, stats(), "tx"))
    before = stats()
    print("down", host, down(host, N))
    print("avg_rx", host, avg(before, stats(), "rx"))
SIOCGIFMTU = 0x8921
req = fcntl.ioctl(socket.socket(), SIOCGIFMTU, struct.pack("16si", b"eth0", 0))
print("mtu", struct.unpack("16si", req)[1])
"#,
    );
    let (out, _) = w.run_sh(&["--mtu", "1500"], &script, Duration::from_secs(600));
    let text = stdout(&out);
    for host in ["203.0.113.10", "2001:db8::10"] {
        assert!(
            text.contains(&format!("up {host} ok")),
            "{text}\n{}",
            stderr(&out)
        );
        assert!(text.contains(&format!("down {host} ok")), "{text}");
    }
    assert!(text.contains("mtu 1500"), "{text}");
    // The average frame in the direction of the data, ACKs the other way not counted;
    // without offloads it stays at or under the MTU plus the Ethernet header (1,514).
    let avg = |key: String| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {text}"))
    };
    for host in ["203.0.113.10", "2001:db8::10"] {
        let up = avg(format!("avg_tx {host}"));
        assert!(
            up > 4 * 1514,
            "the sandbox did not hand over large segments: {text}"
        );
        let down = avg(format!("avg_rx {host}"));
        assert!(down > 4 * 1514, "moat did not send large segments: {text}");
    }
}
