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

/// Under the default policy, special-purpose ranges that are not globally reachable and
/// IPv6 forms that carry a private IPv4 address reach nothing — though the world has a
/// server at each — while public and documentation addresses do (control).
#[test]
fn special_purpose_ranges_and_embedded_ipv4_are_denied_by_default() {
    let w = World::new();
    let denied = [
        "198.18.0.10",
        "240.0.0.10",
        "192.0.0.8",
        "168.63.129.16",
        "2002:a01:a::1",
        "2001:0:1:2:3:4:f5fe:fff5",
        "64:ff9b:1::a01:a",
        "fec0::10",
    ];
    let allowed = ["203.0.113.10", "2001:db8::10"];
    let url = |a: &str| {
        if a.contains(':') {
            format!("http://[{a}]/")
        } else {
            format!("http://{a}/")
        }
    };
    let script: String = denied
        .iter()
        .chain(&allowed)
        .map(|a| {
            format!(
                "echo {a} $(curl -sS -m 5 -o /dev/null -w '%{{http_code}}' {} 2>/dev/null || echo failed); ",
                url(a)
            )
        })
        .collect();
    let (out, events) = w.run_sh(&["--reject"], &script, T);
    let text = stdout(&out);
    for a in allowed {
        assert!(
            text.contains(&format!("{a} 200")),
            "control {a}: {text}\n{}",
            stderr(&out)
        );
    }
    let reached: Vec<String> = w
        .log()
        .iter()
        .filter(|e| e["server"] == "http")
        .filter_map(|e| e["local"].as_str().map(str::to_owned))
        .collect();
    for a in denied {
        assert!(
            text.contains(&format!("{a} failed")) || text.contains(&format!("{a} 000")),
            "{a}: {text}"
        );
        assert!(
            !reached
                .iter()
                .any(|l| l == a || l.ends_with(&format!(":{a}"))),
            "{a} reached the world: {reached:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "connect" && e["decision"] == "deny" && e["dst"] == a),
            "no deny event for {a}: {events:#?}"
        );
    }
}

/// `--policy none --allow any:PORT` is legal but reaches the host's loopback, metadata and
/// private addresses: `moat run` warns and names the fix, and with the fix those are denied
/// while the public host on that port still answers.
#[test]
fn an_unguarded_any_allow_is_warned_about() {
    let w = World::new();
    let script = "for a in 10.1.0.10 203.0.113.10; do echo $a $(curl -sS -m 5 -o /dev/null -w '%{http_code}' http://$a:8080/ 2>/dev/null || echo failed); done";
    let (out, _) = w.run_sh(
        &["--policy", "none", "--reject", "--allow", "any:8080"],
        script,
        T,
    );
    let err = stderr(&out);
    assert!(err.contains("moat: warning: rule 0 (allow outbound any:8080) also allows loopback, metadata, private"), "{err}");
    // Control: the trap is real — the private address answers.
    assert!(stdout(&out).contains("10.1.0.10 200"), "{}", stdout(&out));
    let (out, _) = w.run_sh(
        &[
            "--policy",
            "none",
            "--reject",
            "--deny",
            "group:loopback",
            "--deny",
            "group:metadata",
            "--deny",
            "group:private",
            "--allow",
            "any:8080",
        ],
        script,
        T,
    );
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("203.0.113.10 200") && !text.contains("10.1.0.10 200"),
        "{text}"
    );
}
