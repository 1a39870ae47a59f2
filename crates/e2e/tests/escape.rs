//! The escape suite: ways out through the packet path that a hostile review tried. Each
//! test asserts what the target received (the world's server log, not only the client's
//! error), that the audit log names the denial, and — as a control — that the same path
//! carries what the policy allows.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use moat_e2e::{World, stderr, stdout};

const T: Duration = Duration::from_secs(60);

/// Python that sends TLS ClientHellos for given names to 203.0.113.10:443, each as one
/// record or re-framed into several records, and says whether the connection was reset.
const HELLO_CLIENT: &str = r#"
import socket, ssl, sys
def hello(name):
    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()
def reframe(record, cuts):
    # The handshake message of one record, as records cut at the given offsets.
    message = record[5:5 + int.from_bytes(record[3:5], "big")]
    out, start = b"", 0
    for end in list(cuts) + [len(message)]:
        frag = message[start:end]
        out += bytes([22, 3, 1]) + len(frag).to_bytes(2, "big") + frag
        start = end
    return out
def attempt(name, how):
    h = hello(name)
    if how == "split":
        # The first record ends before the extensions, the second in the middle of the name.
        at = h.find(name.encode()) - 5
        h = reframe(h, [40, at + len(name) // 2])
    s = socket.create_connection(("203.0.113.10", 443), timeout=5)
    s.sendall(h)
    try:
        while s.recv(100):
            pass
        print(name, how, "closed", flush=True)
    except ConnectionResetError:
        print(name, how, "reset", flush=True)
    except socket.timeout:
        print(name, how, "timeout", flush=True)
socket.getaddrinfo("api.example.test", 443)
for arg in sys.argv[1:]:
    name, how = arg.split(":")
    attempt(name, how)
"#;

fn hello_script(attempts: &[&str]) -> String {
    format!("python3 - {} <<'PY'\n{HELLO_CLIENT}PY", attempts.join(" "))
}

/// Names the world's TLS port (a banner server that logs what arrives) received.
fn names_received(w: &World) -> Vec<String> {
    w.log()
        .iter()
        .filter(|e| e["server"] == "banner-data" && e["port"] == 443)
        .flat_map(|e| {
            e["names"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
        })
        .collect()
}

/// A ClientHello split over two records (the server name in the second) is read whole:
/// a deny rule for the name resets it and the server never sees the name.
#[test]
fn a_split_client_hello_cannot_carry_a_denied_name() {
    let w = World::new();
    let (out, events) = w.run_sh(
        &["--deny", "blocked.example.test"],
        &hello_script(&[
            "blocked.example.test:split",
            "blocked.example.test:whole",
            "fine.example.test:split",
        ]),
        T,
    );
    let text = stdout(&out);
    assert!(
        text.contains("blocked.example.test split reset"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(text.contains("blocked.example.test whole reset"), "{text}");
    // Control: the same split shape with a permitted name arrives whole.
    assert!(text.contains("fine.example.test split closed"), "{text}");
    let received = names_received(&w);
    assert!(
        received.contains(&"fine.example.test".to_owned()),
        "{received:?}"
    );
    assert!(
        !received.contains(&"blocked.example.test".to_owned()),
        "{received:?}"
    );
    let denials = events
        .iter()
        .filter(|e| e["event"] == "connect" && e["decision"] == "deny")
        .filter(|e| e["sni"] == "blocked.example.test")
        .count();
    assert_eq!(denials, 2, "{events:#?}");
}

/// Under allow-only domain rules the server name must agree with the rule, split or not.
#[test]
fn a_split_client_hello_cannot_leave_an_allow_list() {
    let w = World::new();
    let (out, events) = w.run_sh(
        &["--policy", "none", "--allow", "api.example.test:443/tcp"],
        &hello_script(&[
            "elsewhere.example.test:split",
            "elsewhere.example.test:whole",
            "api.example.test:split",
        ]),
        T,
    );
    let text = stdout(&out);
    assert!(
        text.contains("elsewhere.example.test split reset"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(
        text.contains("elsewhere.example.test whole reset"),
        "{text}"
    );
    assert!(text.contains("api.example.test split closed"), "{text}");
    let received = names_received(&w);
    assert!(
        received.contains(&"api.example.test".to_owned()),
        "{received:?}"
    );
    assert!(
        !received.contains(&"elsewhere.example.test".to_owned()),
        "{received:?}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "connect"
            && e["decision"] == "deny"
            && e["sni"] == "elsewhere.example.test"),
        "{events:#?}"
    );
}

/// Under domain rules, a TLS hello that cannot be read (a record of another type in the
/// middle) fails closed; plain TLS without domain rules is untouched (control).
#[test]
fn an_unreadable_client_hello_fails_closed_under_domain_rules() {
    let w = World::new();
    let script = "python3 - <<'PY'\nimport socket\ns = socket.create_connection(('203.0.113.10', 443), timeout=5)\n# A handshake record that starts a ClientHello, then an application-data record.\ns.sendall(bytes([22, 3, 1, 0, 6, 1, 0, 1, 0, 3, 3]) + bytes([23, 3, 3, 0, 4]) + b'evil.example.test')\ntry:\n    while s.recv(100):\n        pass\n    print('closed')\nexcept ConnectionResetError:\n    print('reset')\nPY";
    let (out, events) = w.run_sh(&["--deny", "blocked.example.test"], script, T);
    assert!(
        stdout(&out).contains("reset"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(!names_received(&w).contains(&"evil.example.test".to_owned()));
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "connect" && e["decision"] == "deny" && e["rule"] == "sni"),
        "{events:#?}"
    );
    // Control: without domain rules moat does not read the stream at all.
    let (out, _) = w.run_sh(&[], script, T);
    assert!(stdout(&out).contains("closed"), "{}", stdout(&out));
    assert!(names_received(&w).contains(&"evil.example.test".to_owned()));
}
