//! Published ports: servers inside the sandbox reached from the host namespace through
//! `-p`, judged as inbound traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use moat_e2e::{World, stderr, stdout};

const T: Duration = Duration::from_secs(60);

/// A host-side client that retries until the sandbox's server is up (bounded).
const HTTP_CLIENT: &str = r#"
import socket, sys, time
port = int(sys.argv[1]) if len(sys.argv) > 1 else 18080
deadline = time.monotonic() + 20
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
        if data.startswith(b"HTTP/1.0 200"):
            print("status 200")
            break
        raise ConnectionError("short answer")
    except (ConnectionError, OSError) as e:
        if time.monotonic() > deadline:
            print("gave up:", e)
            break
        time.sleep(0.2)
"#;

#[test]
fn a_server_inside_answers_through_a_published_port() {
    let w = World::new();
    let audit = w.dir.join("publish-audit.jsonl");
    let moat = w.spawn_moat(&[
        "run",
        "--audit",
        audit.to_str().unwrap(),
        "-p",
        "18080:8000",
        "--",
        "python3",
        "-m",
        "http.server",
        "8000",
    ]);
    let out = w.host_python(HTTP_CLIENT, T);
    assert!(
        stdout(&out).contains("status 200"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let moat_out = moat.finish();
    // The sandbox saw the host's loopback peer as the gateway.
    assert!(
        stderr(&moat_out).contains("10.0.2.2 - -"),
        "{}",
        stderr(&moat_out)
    );
    let events = std::fs::read_to_string(&audit).unwrap();
    assert!(
        events.contains("\"direction\":\"inbound\"") && events.contains("\"decision\":\"allow\""),
        "{events}"
    );
    // Inbound events validate, and `close` names the peer as the side that opened it.
    let parsed: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for e in &parsed {
        moat_e2e::validate_event(e).unwrap_or_else(|why| panic!("{why}: {e}"));
    }
    let connect = parsed
        .iter()
        .find(|e| e["event"] == "connect" && e["direction"] == "inbound")
        .unwrap();
    let close = parsed
        .iter()
        .find(|e| e["event"] == "close" && e["direction"] == "inbound")
        .unwrap_or_else(|| panic!("{events}"));
    assert_eq!(close["port"], connect["port"], "{events}");
    assert!(close["src"].as_str().unwrap().contains(":"), "{close}");
    assert!(
        close["dst"].as_str().unwrap().starts_with("10.0.2."),
        "{close}"
    );
}

#[test]
fn a_udp_echo_inside_answers_through_a_published_port() {
    let w = World::new();
    let server = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('0.0.0.0', 5353))\nwhile True:\n    d, a = s.recvfrom(2048)\n    s.sendto(b'echo:' + d, a)\n";
    let moat = w.spawn_moat(&["run", "-p", "15353:5353/udp", "--", "python3", "-c", server]);
    let client = "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.settimeout(0.5)\nfor i in range(40):\n    s.sendto(b'ping', ('127.0.0.1', 15353))\n    try:\n        print(s.recvfrom(100)[0].decode())\n        break\n    except (socket.timeout, ConnectionRefusedError):\n        time.sleep(0.1)\n";
    let out = w.host_python(client, T);
    assert!(
        stdout(&out).contains("echo:ping"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    drop(moat);
}

/// Inbound rules hold on published UDP ports: a rule denying the host's loopback on guest
/// port 5353 silences that port, while 5354, published the same way, answers (control).
#[test]
fn an_inbound_rule_holds_on_a_published_udp_port() {
    let w = World::new();
    let policy = w.file(
        "inbound-udp.toml",
        "default_action = \"allow\"\n[[rules]]\naction = \"deny\"\ndirection = \"inbound\"\ndestination = \"127.0.0.0/8\"\nprotocol = \"udp\"\nports = \"5353\"\n",
    );
    let audit = w.dir.join("udp-inbound-audit.jsonl");
    let server = "import socket, threading\ndef serve(port):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.bind(('0.0.0.0', port))\n    while True:\n        d, a = s.recvfrom(2048)\n        print('got', port, flush=True)\n        s.sendto(b'echo%d:' % port + d, a)\nthreading.Thread(target=serve, args=(5354,), daemon=True).start()\nserve(5353)\n";
    let moat = w.spawn_moat(&[
        "run",
        "--policy",
        policy.to_str().unwrap(),
        "--audit",
        audit.to_str().unwrap(),
        "-p",
        "15363:5353/udp",
        "-p",
        "15364:5354/udp",
        "--",
        "python3",
        "-c",
        server,
    ]);
    let client = "import socket, time\nfor port in (15364, 15363):\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.settimeout(0.5)\n    got = None\n    for i in range(20):\n        s.sendto(b'ping', ('127.0.0.1', port))\n        try:\n            got = s.recvfrom(100)[0].decode()\n            break\n        except (socket.timeout, ConnectionRefusedError):\n            time.sleep(0.1)\n    print(port, got, flush=True)\n";
    let out = w.host_python(client, T);
    let text = stdout(&out);
    let result = moat.finish();
    assert!(
        text.contains("15364 echo5354:ping"),
        "{text}{}",
        stderr(&out)
    );
    assert!(text.contains("15363 None"), "{text}");
    let inside = stdout(&result);
    assert!(
        inside.contains("got 5354") && !inside.contains("got 5353"),
        "{inside}"
    );
    let events = std::fs::read_to_string(&audit).unwrap_or_default();
    assert!(
        events.lines().any(|l| l.contains("\"decision\":\"deny\"")
            && l.contains("inbound")
            && l.contains("udp")),
        "{events}"
    );
}

#[test]
fn an_inbound_deny_rule_refuses_the_published_port_not_outbound_traffic() {
    let w = World::new();
    let policy = w.file(
        "inbound.toml",
        "default_action = \"allow\"\n[[rules]]\naction = \"deny\"\ndirection = \"inbound\"\ndestination = \"127.0.0.0/8\"\n",
    );
    let audit = w.dir.join("deny-audit.jsonl");
    let moat = w.spawn_moat(&[
        "run",
        "--policy",
        policy.to_str().unwrap(),
        "--audit",
        audit.to_str().unwrap(),
        "-p",
        "18082:8000",
        "--",
        "sh",
        "-c",
        "curl -sS -m 5 -o /dev/null -w 'outbound %{http_code}\\n' http://203.0.113.10/; python3 -m http.server 8000",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    let client = "import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', 18082), timeout=3)\n    s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n    print('got', s.recv(100))\nexcept ConnectionResetError:\n    print('reset')\n";
    let out = w.host_python(client, T);
    assert!(
        stdout(&out).contains("reset"),
        "a denied peer gets a reset: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let moat_out = moat.finish();
    assert!(
        stdout(&moat_out).contains("outbound 200"),
        "{}{}",
        stdout(&moat_out),
        stderr(&moat_out)
    );
    let events = std::fs::read_to_string(&audit).unwrap();
    assert!(
        events
            .lines()
            .any(|l| l.contains("\"direction\":\"inbound\"")
                && l.contains("\"decision\":\"deny\"")
                && l.contains("\"rule\":0")),
        "{events}"
    );
}

#[test]
fn publishing_a_taken_port_fails_before_the_command_runs() {
    let mut w = World::new();
    w.spawn_in_host(&["python3", "-c", "import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('127.0.0.1', 18081))\ns.listen()\ntime.sleep(60)"]);
    w.wait_for_host_port(18081);
    let out = w.moat(&["run", "-p", "18081:80", "--", "sh", "-c", "echo RAN"], T);
    assert_ne!(out.status.code(), Some(0));
    assert!(!stdout(&out).contains("RAN"), "the command ran");
    assert!(stderr(&out).contains("127.0.0.1:18081"), "{}", stderr(&out));
    let out = w.moat(
        &["run", "--policy", "none", "-p", "18083:80", "--", "true"],
        T,
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("--publish"), "{}", stderr(&out));
}

#[test]
fn half_close_and_a_gib_each_way_through_a_published_port() {
    let w = World::new();
    let server = r#"
import hashlib, socket, threading
PATTERN = bytes(range(256)) * 256
def sink(c):
    h = hashlib.sha256()
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        h.update(b)
    c.sendall((h.hexdigest() + "\n").encode())
    c.close()
def source(c):
    n = int(c.makefile().readline())
    while n:
        k = min(n, len(PATTERN)); c.sendall(PATTERN[:k]); n -= k
    c.close()
def serve(port, fn):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen()
    while True:
        c, _ = s.accept()
        threading.Thread(target=fn, args=(c,)).start()
threading.Thread(target=serve, args=(9000, sink), daemon=True).start()
serve(9001, source)
"#;
    let moat = w.spawn_moat(&[
        "run",
        "-p",
        "19000:9000",
        "-p",
        "19001:9001",
        "--",
        "python3",
        "-c",
        server,
    ]);
    let client = r#"
import hashlib, socket, time
N = 1 << 30
PATTERN = bytes(range(256)) * 256
def connect(port):
    for _ in range(100):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            return s
        except OSError:
            time.sleep(0.1)
    raise SystemExit("no server")
for attempt in range(50):
    s = connect(19000)
    try:
        h = hashlib.sha256(); left = N
        while left:
            k = min(left, len(PATTERN)); s.sendall(PATTERN[:k]); h.update(PATTERN[:k]); left -= k
        s.shutdown(socket.SHUT_WR)
        got = s.makefile().readline().strip()
        print("up", "ok" if got == h.hexdigest() else "MISMATCH " + got)
        break
    except (ConnectionResetError, BrokenPipeError):
        time.sleep(0.2)
s = connect(19001)
s.sendall(b"%d\n" % N)
h, total = hashlib.sha256(), 0
while True:
    b = s.recv(1 << 20)
    if not b:
        break
    h.update(b); total += len(b)
e = hashlib.sha256(); left = N
while left:
    k = min(left, len(PATTERN)); e.update(PATTERN[:k]); left -= k
print("down", "ok" if total == N and h.hexdigest() == e.hexdigest() else "MISMATCH %d" % total)
"#;
    let out = w.host_python(client, Duration::from_secs(600));
    let text = stdout(&out);
    assert!(text.contains("up ok"), "{text}{}", stderr(&out));
    assert!(text.contains("down ok"), "{text}");
    drop(moat);
}

#[test]
fn a_server_on_a_port_below_1024_can_be_published() {
    let w = World::new();
    let moat = w.spawn_moat(&[
        "run",
        "-p",
        "18081:80",
        "--",
        "python3",
        "-m",
        "http.server",
        "80",
    ]);
    let out = w.host_python(&HTTP_CLIENT.replace("18080", "18081"), T);
    let moat_out = moat.finish();
    assert!(
        stdout(&out).contains("status 200"),
        "{}{}\n{}",
        stdout(&out),
        stderr(&out),
        stderr(&moat_out)
    );
}
