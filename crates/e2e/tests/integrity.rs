//! Bulk transfers through the engine arrive intact, and the sandbox leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use moat_e2e::{World, stderr, stdout};

/// 1 GiB up (sink hashes what arrived) and 1 GiB down (source sends a known pattern).
#[test]
fn one_gib_each_way_arrives_intact() {
    let w = World::new();
    let script = r#"python3 - <<'PY'
import hashlib, socket
N = 1 << 30
PATTERN = bytes(range(256)) * 256
# Up: send N bytes, half-close, read the sink's hash of what arrived.
s = socket.create_connection(("203.0.113.10", 9000), timeout=60)
h = hashlib.sha256()
left = N
while left:
    k = min(left, len(PATTERN))
    s.sendall(PATTERN[:k]); h.update(PATTERN[:k]); left -= k
s.shutdown(socket.SHUT_WR)
got = s.makefile().readline().strip()
print("up", "ok" if got == h.hexdigest() else "MISMATCH " + got)
# Down: ask for N bytes, hash them as they arrive, compare with the expected pattern.
s = socket.create_connection(("203.0.113.10", 9001), timeout=60)
s.sendall(b"%d\n" % N)
h, total = hashlib.sha256(), 0
while True:
    b = s.recv(1 << 20)
    if not b:
        break
    h.update(b); total += len(b)
e = hashlib.sha256()
left = N
while left:
    k = min(left, len(PATTERN)); e.update(PATTERN[:k]); left -= k
print("down", "ok" if (total == N and h.hexdigest() == e.hexdigest()) else "MISMATCH %d" % total)
PY"#;
    let (out, events) = w.run_sh(&[], script, Duration::from_secs(600));
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
