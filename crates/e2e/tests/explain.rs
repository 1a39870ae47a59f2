//! Deny mode `explain` (issue 27 §5, "refusals an agent can read"), end to end: a refused
//! HTTP request gets moat's 403 with the reason (over TLS with moat's leaf when
//! intercepting), anything else is reset, a refused lookup carries an Extended DNS Error,
//! nothing reaches the world, and the audit log says what `reject`'s does.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use moat_e2e::{WORLD_DNS, World, moat_bin, run_with_timeout, stderr, stdout};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn dns() -> String {
    format!("--dns={WORLD_DNS}")
}

/// The world's servers got a request (or a connection) for which `pred` holds.
fn arrived(w: &World, pred: impl Fn(&Value) -> bool) -> bool {
    w.log().iter().any(pred)
}

#[test]
fn a_refused_http_request_gets_moats_403_with_the_reason_and_nothing_arrives() {
    let w = World::new();
    let args = [
        &dns(),
        "--policy",
        "none",
        "--allow",
        "api.example.test:8080",
        "--deny-mode",
        "explain",
    ];
    let script = "curl -sS -m 10 -w 'code %{http_code}\\n' http://api.example.test/refused; \
                  curl -sS -m 10 -o /dev/null -w 'allowed %{http_code}\\n' http://api.example.test:8080/allowed";
    let (out, events) = w.run_sh(&args, script, T);
    let text = stdout(&out);
    assert!(text.contains("code 403"), "{text}\n{}", stderr(&out));
    assert!(
        text.contains(
            "moat: refused a connection to api.example.test:80/tcp (no rule matched; default deny); to allow it: --allow api.example.test:80/tcp\n"
        ),
        "{text}"
    );
    // The positive control: the allowed request went through and arrived.
    assert!(text.contains("allowed 200"), "{text}\n{}", stderr(&out));
    assert!(arrived(&w, |l| l["path"] == "/allowed"), "{:?}", w.log());
    // The refused one never left the host.
    assert!(
        !arrived(&w, |l| l["path"] == "/refused"),
        "a refused request reached the world: {:?}",
        w.log()
    );
    let deny = events
        .iter()
        .find(|e| e["event"] == "connect" && e["decision"] == "deny")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(deny["port"], 80);
    assert_eq!(deny["domain"], "api.example.test");
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "close" && e["port"] == 80),
        "{events:#?}"
    );
}

#[test]
fn an_intercepted_https_request_refused_gets_the_403_over_tls_from_moats_ca() {
    let w = World::new();
    let args = [
        &dns(),
        "--policy",
        "none",
        "--allow",
        "api.example.test:8080",
        "--tls-intercept",
        "--deny-mode",
        "explain",
    ];
    // No -k: curl verifies the certificate against what the sandbox trusts (moat's CA).
    // The world's 443 is a banner server, not TLS: only moat can have answered.
    let script = "curl -sS -m 10 -w 'code %{http_code} %{ssl_verify_result}\\n' https://api.example.test/secure; \
                  echo | openssl s_client -connect api.example.test:443 -servername api.example.test 2>/dev/null | openssl x509 -noout -subject -issuer";
    let (out, events) = w.run_sh(&args, script, T);
    let text = stdout(&out);
    assert!(text.contains("code 403 0"), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("moat: refused a connection to api.example.test:443/tcp"),
        "{text}"
    );
    assert!(
        text.contains("to allow it: --allow api.example.test:443/tcp"),
        "{text}"
    );
    assert!(text.contains("subject=CN = api.example.test"), "{text}");
    assert!(text.contains("issuer=CN = moat moat"), "{text}");
    assert!(
        !arrived(&w, |l| l["port"] == 443 || l["server"] == "banner"),
        "a refused connection reached the world: {:?}",
        w.log()
    );
    // Refused at the SYN: no TLS event, one connect deny.
    assert!(!events.iter().any(|e| e["event"] == "tls"), "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "connect" && e["decision"] == "deny" && e["port"] == 443),
        "{events:#?}"
    );
}

#[test]
fn what_is_not_http_is_reset_binary_at_once_and_silence_soon() {
    let w = World::new();
    let args = [
        &dns(),
        "--policy",
        "none",
        "--allow",
        "api.example.test:8080",
        "--deny-mode",
        "explain",
    ];
    let script = r#"python3 - <<'PY'
import socket, time
def probe(label, port, data):
    t = time.monotonic()
    s = socket.create_connection(('api.example.test', port), timeout=8)
    if data:
        s.sendall(data)
    try:
        got = s.recv(100)
        what = 'eof' if not got else 'data'
    except ConnectionResetError:
        what = 'reset'
    except socket.timeout:
        what = 'timeout'
    print(label, what, int((time.monotonic() - t) * 1000))
probe('binary', 9000, bytes(range(256)))
probe('tls', 9443, b'\x16\x03\x01\x00\xf4\x01\x00\x00\xf0\x03\x03' + bytes(32))
probe('silent', 2222, b'')
PY"#;
    let (out, _) = w.run_sh(&args, script, T);
    let text = stdout(&out);
    let ms = |label: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no {label} in {text}\n{}", stderr(&out)));
        assert!(line.contains(" reset "), "{line}\n{text}");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(ms("binary") < 1000, "{text}");
    assert!(ms("tls") < 1000, "{text}");
    // A client that sends nothing is reset at the 2 s deadline (the sweep runs every
    // 200 ms).
    let silent = ms("silent");
    assert!((1500..4500).contains(&silent), "{text}");
    assert!(
        !arrived(&w, |l| ["sink", "banner", "https"]
            .contains(&l["server"].as_str().unwrap_or(""))),
        "{:?}",
        w.log()
    );
}

#[test]
fn a_refused_lookup_carries_an_extended_dns_error_with_the_reason() {
    let w = World::new();
    let args = [
        &dns(),
        "--policy",
        "none",
        "--allow",
        "api.example.test",
        "--block-domain",
        "ads.example.test",
        "--deny-mode",
        "explain",
    ];
    let script = "dig +time=3 +tries=1 ads.example.test A; echo ==; \
                  dig +time=3 +tries=1 other.example.test A; echo ==; \
                  dig +noedns +time=3 +tries=1 ads.example.test A; echo ==; \
                  dig +tcp +time=3 +tries=1 other.example.test AAAA";
    let (out, _) = w.run_sh(&args, script, T);
    let text = stdout(&out);
    let parts: Vec<&str> = text.split("==\n").collect();
    assert_eq!(parts.len(), 4, "{text}\n{}", stderr(&out));
    let (blocked, refused, plain, tcp) = (parts[0], parts[1], parts[2], parts[3]);
    assert!(blocked.contains("status: NXDOMAIN"), "{blocked}");
    assert!(blocked.contains("EDE: 15 (Blocked)"), "{blocked}");
    assert!(
        blocked.contains(
            "moat: refused a lookup of ads.example.test (ads.example.test is on the block_domain list)"
        ),
        "{blocked}"
    );
    assert!(refused.contains("EDE: 18 (Prohibited)"), "{refused}");
    assert!(
        refused.contains("to allow it: --allow other.example.test"),
        "{refused}"
    );
    // Without EDNS there is no OPT record to carry one (RFC 6891 §7).
    assert!(plain.contains("status: NXDOMAIN"), "{plain}");
    assert!(!plain.contains("EDE"), "{plain}");
    // Over TCP the same.
    assert!(tcp.contains("EDE: 18 (Prohibited)"), "{tcp}");
    // Neither name left the host.
    for name in ["ads.example.test", "other.example.test"] {
        assert!(
            !arrived(&w, |l| l["server"] == "dns" && l["name"] == name),
            "{name} was looked up upstream"
        );
    }
}

/// The events a refusal writes, without what differs between two runs (time, run id, the
/// sandbox's source port).
fn refusals(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["decision"] == "deny" || e["event"] == "close")
        .map(|e| {
            let mut e = e.clone();
            let o = e.as_object_mut().unwrap();
            for volatile in ["ts", "run", "src", "duration_ms"] {
                o.remove(volatile);
            }
            e
        })
        .collect()
}

#[test]
fn the_audit_log_of_explain_is_the_one_of_reject() {
    let w = World::new();
    // IPv4 only: refused with a reset, curl would try the name's IPv6 address next, and
    // answered it would not — a difference in the client, not in what moat audits.
    let script = "curl -4 -sS -m 10 -o /dev/null http://api.example.test/; \
                  dig +time=3 +tries=1 +short ads.example.test A; \
                  dig +time=3 +tries=1 +short other.example.test A; true";
    let mut logs = Vec::new();
    for mode in ["reject", "explain"] {
        let args = [
            &dns(),
            "--policy",
            "none",
            "--allow",
            "api.example.test:8080",
            "--block-domain",
            "ads.example.test",
            "--deny-mode",
            mode,
        ];
        let (out, events) = w.run_sh(&args, script, T);
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        logs.push(refusals(&events));
    }
    assert_eq!(logs[0], logs[1]);
    let kinds: Vec<&str> = logs[0]
        .iter()
        .map(|e| e["event"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["connect", "dns", "dns"], "{:#?}", logs[0]);
}

#[test]
fn reject_and_a_different_deny_mode_are_a_usage_error() {
    let mut cmd = std::process::Command::new(moat_bin());
    cmd.args([
        "run",
        "--policy",
        "none",
        "--reject",
        "--deny-mode",
        "drop",
        "--",
        "true",
    ]);
    let out = run_with_timeout(cmd, T);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--reject and --deny-mode drop disagree"),
        "{}",
        stderr(&out)
    );
    let mut cmd = std::process::Command::new(moat_bin());
    cmd.args([
        "run",
        "--policy",
        "none",
        "--deny-mode",
        "loud",
        "--",
        "true",
    ]);
    let out = run_with_timeout(cmd, T);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("explain"), "{}", stderr(&out));
}

/// Connections the sandbox opens and abandons before the handshake ends: its kernel
/// answers moat's SYN-ACK with a reset, which puts moat's socket for each back in LISTEN on
/// the destination (when the close wins the race with the SYN-ACK: so, sixteen of them).
/// Then the names given as arguments are looked up, and the same destination is fetched
/// three times.
const ABANDON_THEN: &str = r#"
import socket, sys, time
def fetch(path):
    b = socket.create_connection(("203.0.113.10", 8080), timeout=10)
    b.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: z.example.test\r\nConnection: close\r\n\r\n")
    got = b""
    while True:
        d = b.recv(4096)
        if not d:
            break
        got += d
    b.close()
    print(path, "", got.split(b"\r\n")[0].decode(), flush=True)
socket.getaddrinfo("z.example.test", 8080, socket.AF_INET)
for _ in range(16):
    a = socket.socket()
    a.setblocking(False)
    try:
        a.connect(("203.0.113.10", 8080))
    except BlockingIOError:
        pass
    print("abandoned", a.getsockname()[1], flush=True)
    a.close()
time.sleep(0.5)
for name in sys.argv[1:]:
    socket.getaddrinfo(name, 80, socket.AF_INET)
time.sleep(0.3)
for i in range(3):
    fetch("/after-%d" % i)
"#;

#[test]
fn an_abandoned_connection_never_serves_a_later_one_refused_or_allowed() {
    // Abandoned connections, allowed (z.example.test is pinned). Then 32 other names push
    // z's pin out of the address's list: the same destination is now refused, and each
    // later request must get moat's 403 — not be carried to the world by an abandoned
    // connection's host side.
    let w = World::new();
    let names: Vec<String> = (0..32).map(|i| format!("n{i}.example.test")).collect();
    let script = format!("python3 - {} <<'PY'\n{ABANDON_THEN}PY", names.join(" "));
    let args = [
        &dns(),
        "--policy",
        "none",
        "--allow",
        "z.example.test:8080",
        // Lets the other names be looked up (and pinned), on another port only.
        "--allow",
        "*.example.test:9999",
        "--deny-mode",
        "explain",
    ];
    let (out, events) = w.run_sh(&args, &script, T);
    let text = stdout(&out);
    assert_eq!(
        text.matches("abandoned").count(),
        16,
        "{text}\n{}",
        stderr(&out)
    );
    for i in 0..3 {
        assert!(
            text.contains(&format!("/after-{i}  HTTP/1.1 403")),
            "{text}\n{}",
            stderr(&out)
        );
    }
    let after = |l: &Value| l["path"].as_str().is_some_and(|p| p.starts_with("/after"));
    assert!(
        !arrived(&w, after),
        "a refused request reached the world: {:?}",
        w.log()
    );
    // Both were judged: the abandoned ones allowed, the later ones denied (repeats folded).
    let connects = |decision: &str| {
        events
            .iter()
            .filter(|e| e["event"] == "connect" && e["port"] == 8080 && e["decision"] == decision)
            .map(moat_e2e::times)
            .sum::<u64>()
    };
    assert!(
        connects("allow") >= 1 && connects("deny") == 3,
        "{events:#?}"
    );

    // All allowed (no eviction): each later request goes through a host connection of
    // its own; no abandoned connection carried a byte.
    let w = World::new();
    let script = format!("python3 - <<'PY'\n{ABANDON_THEN}PY");
    let args = [&dns(), "--policy", "none", "--allow", "z.example.test:8080"];
    let (out, events) = w.run_sh(&args, &script, T);
    let text = stdout(&out);
    for i in 0..3 {
        assert!(
            text.contains(&format!("/after-{i}  HTTP/1.1 200")),
            "{text}\n{}",
            stderr(&out)
        );
    }
    assert_eq!(
        w.log().iter().filter(|l| after(l)).count(),
        3,
        "{:?}",
        w.log()
    );
    let abandoned: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("abandoned "))
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    assert_eq!(abandoned.len(), 16, "{text}");
    let src_port = |e: &Value| {
        e["src"]
            .as_str()
            .and_then(|s| s.rsplit(':').next())
            .and_then(|p| p.parse::<u64>().ok())
    };
    let closes: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "close" && e["port"] == 8080)
        .collect();
    let (of_abandoned, others): (Vec<&Value>, Vec<&Value>) = closes
        .iter()
        .partition(|e| src_port(e).is_some_and(|p| abandoned.contains(&p)));
    assert_eq!(
        others
            .iter()
            .filter(|e| e["bytes_up"].as_u64() > Some(0))
            .count(),
        3,
        "each request by its own connection: {closes:#?}"
    );
    for e in of_abandoned {
        assert_eq!(
            e["bytes_up"], 0,
            "an abandoned connection carried bytes: {e}"
        );
    }
}

#[test]
fn refusals_held_never_take_the_slots_allowed_connections_need() {
    // Under --max-connections 4, six refused connections that send nothing (each would be
    // held a few seconds for its first bytes), then an allowed request: refusals hold at
    // most half the slots, the rest are reset as under reject, and the allowed request
    // finds its slot.
    let w = World::new();
    let script = r#"
import socket, time
held = []
for _ in range(6):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("203.0.113.11", 80))
        held.append(s)
    except OSError:
        pass
time.sleep(0.3)
alive = 0
for s in held:
    s.setblocking(False)
    try:
        alive += s.recv(1) != b""
    except BlockingIOError:
        alive += 1
    except OSError:
        pass
print("held", alive, flush=True)
b = socket.create_connection(("203.0.113.10", 8080), timeout=10)
b.sendall(b"GET /allowed-beside HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n")
print("allowed", b.recv(100).split(b"\r\n")[0].decode(), flush=True)
"#;
    let script = format!("python3 - <<'PY'\n{script}PY");
    let args = [
        &dns(),
        "--policy",
        "none",
        "--allow",
        "203.0.113.10:8080",
        "--max-connections",
        "4",
        "--deny-mode",
        "explain",
    ];
    let (out, _) = w.run_sh(&args, &script, T);
    let text = stdout(&out);
    assert!(text.contains("held 2\n"), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("allowed HTTP/1.1 200"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(
        arrived(&w, |l| l["path"] == "/allowed-beside"),
        "{:?}",
        w.log()
    );
}
