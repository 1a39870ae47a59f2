//! TLS interception end to end: real clients inside (curl, python3, openssl s_client), the
//! world's HTTPS echo servers (a certificate from the world's own test CA on 8443, a
//! self-signed one on 9443), and what arrived where.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use moat_e2e::{WORLD_DNS, World, stderr, stdout};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

fn dns_arg() -> String {
    format!("--dns={WORLD_DNS}")
}

/// The world's test CA, which moat is told to trust for upstreams.
fn world_ca(w: &World) -> String {
    w.dir.join("world-ca.pem").to_str().unwrap().to_owned()
}

fn tls_events(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["event"] == "tls").collect()
}

/// `moat run` with the world's DNS, intercepting `port` and trusting the world's CA for
/// upstreams; the output and the audit events.
fn run_intercepted(w: &World, port: &str, script: &str) -> (std::process::Output, Vec<Value>) {
    let ca = world_ca(w);
    w.run_sh(
        &[
            &dns_arg(),
            "--tls-intercept",
            "--tls-port",
            port,
            "--tls-upstream-ca",
            &ca,
        ],
        script,
        T,
    )
}

/// The audit log has a `tls` deny event for domain fronting.
fn assert_fronting_denied(events: &[Value]) {
    let tls = tls_events(events);
    assert!(
        tls.iter().any(|e| e["decision"] == "deny"
            && e["reason"]
                .as_str()
                .unwrap_or("")
                .contains("domain fronting")),
        "{tls:?}"
    );
}

/// The issuer's common name of the certificate a client inside is shown.
const SHOW_ISSUER: &str = "openssl s_client -connect api.example.test:8443 -servername api.example.test </dev/null 2>/dev/null | openssl x509 -noout -issuer";

#[test]
fn intercepted_https_works_with_no_flags_inside_and_is_verified_upstream() {
    let w = World::new();
    let script = format!(
        "curl -sS -m 20 https://api.example.test:8443/curl; echo; \
         python3 -c \"import urllib.request; print(urllib.request.urlopen('https://api.example.test:8443/python', timeout=20).read().decode())\"; \
         node -e \"require('https').get('https://api.example.test:8443/node', r => r.on('data', d => process.stdout.write(d)))\"; \
         {SHOW_ISSUER}; \
         echo | openssl s_client -connect api.example.test:8443 -servername api.example.test -verify_return_error 2>&1 | grep -q 'Verify return code: 0 (ok)' && echo verified-inside; \
         curl -sS -m 20 https://203.0.113.10:8443/by-address; echo"
    );
    let (out, events) = run_intercepted(&w, "8443", &script);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    // Both clients got the server's answer, through moat.
    assert!(
        text.contains("\"path\": \"/curl\""),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(text.contains("\"path\": \"/python\""), "{text}");
    assert!(text.contains("\"path\": \"/node\""), "{text}");
    // Without a server name (an address in the URL), the sandbox is shown a certificate
    // for the address, and the server was asked with none.
    assert!(
        text.contains("\"path\": \"/by-address\""),
        "{text}\n{}",
        stderr(&out)
    );
    // The chain they saw is moat's, and openssl verified it with the sandbox's bundle.
    assert!(text.contains("issuer=CN = moat moat"), "{text}");
    assert!(text.contains("verified-inside"), "{text}");
    // The server saw TLS from moat with the sandbox's server name.
    let arrived: Vec<Value> = w
        .log()
        .into_iter()
        .filter(|l| l["server"] == "https" && l["port"] == 8443)
        .collect();
    assert!(
        arrived
            .iter()
            .any(|l| l["path"] == "/curl" && l["sni"] == "api.example.test"),
        "{arrived:?}"
    );
    assert!(
        arrived
            .iter()
            .any(|l| l["path"] == "/by-address" && l["sni"].is_null()),
        "{arrived:?}"
    );
    let tls = tls_events(&events);
    assert!(
        tls.iter().any(|e| e["tls"] == "intercepted"
            && e["decision"] == "allow"
            && e["sni"] == "api.example.test"
            && e["upstream_verified"] == true),
        "{tls:?}"
    );
}

#[test]
fn an_untrusted_upstream_fails_at_once_with_an_alert_unless_verification_is_off() {
    let w = World::new();
    // The world's CA is not given: 9443's self-signed certificate is trusted by nothing.
    let script = "s=$(date +%s%N); curl -sS -m 20 https://api.example.test:9443/x; echo \"exit=$?\"; e=$(date +%s%N); echo \"ms=$(( (e - s) / 1000000 ))\"";
    let (out, events) = w.run_sh(
        &[&dns_arg(), "--tls-intercept", "--tls-port", "9443"],
        script,
        T,
    );
    let text = stdout(&out);
    let err = stderr(&out);
    assert!(text.contains("exit=35"), "{text}\n{err}");
    assert!(err.contains("alert"), "{err}");
    // moat says so on its stderr too, with what to do.
    assert!(
        err.contains("moat: could not set up TLS to api.example.test")
            && err.contains("--tls-upstream-ca"),
        "{err}"
    );
    let ms: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ms="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(ms < 1000, "the failure took {ms} ms");
    assert!(
        !w.log()
            .iter()
            .any(|l| l["server"] == "https" && l["path"] == "/x"),
        "a request reached the untrusted server"
    );
    let tls = tls_events(&events);
    assert!(
        tls.iter().any(|e| e["decision"] == "deny"
            && e["reason"].as_str().unwrap_or("").contains("certificate")),
        "{tls:?}"
    );

    // Verification off: the same request arrives.
    let (out, _) = w.run_sh(
        &[
            &dns_arg(),
            "--tls-intercept",
            "--tls-port",
            "9443",
            "--tls-no-verify-upstream",
        ],
        "curl -sS -m 20 https://api.example.test:9443/unverified",
        T,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        w.log()
            .iter()
            .any(|l| l["server"] == "https" && l["path"] == "/unverified")
    );
}

#[test]
fn bypassed_names_and_other_ports_pass_untouched() {
    let w = World::new();
    let ca = world_ca(&w);
    // Bypassed: the client sees the server's own certificate (issued by the world's CA).
    let script = format!(
        "{SHOW_ISSUER}; curl -sS -m 20 --cacert {ca} https://other.example.test:8443/intercepted-with-world-ca; echo \"curl=$?\""
    );
    let (out, events) = w.run_sh(
        &[
            &dns_arg(),
            "--tls-intercept",
            "--tls-port",
            "8443",
            "--tls-upstream-ca",
            &ca,
            "--tls-bypass",
            "api.example.test",
            "--ro",
            w.dir.to_str().unwrap(),
        ],
        &script,
        T,
    );
    let text = stdout(&out);
    assert!(
        text.contains("issuer=CN = moat test world CA"),
        "{text}\n{}",
        stderr(&out)
    );
    // Control: a name not bypassed is intercepted, so a client that trusts only the
    // world's CA refuses moat's certificate (curl 60: the peer's certificate cannot be
    // verified).
    assert!(text.contains("curl=60"), "{text}\n{}", stderr(&out));
    let tls = tls_events(&events);
    assert!(
        tls.iter()
            .any(|e| e["tls"] == "bypassed" && e["sni"] == "api.example.test"),
        "{tls:?}"
    );
    assert!(
        tls.iter()
            .any(|e| e["tls"] == "intercepted" && e["sni"] == "other.example.test"),
        "{tls:?}"
    );

    // A port that is not intercepted: the world's banner server on 443 gets the sandbox's
    // own ClientHello (its server name in the clear), untouched.
    let (out, events) = w.run_sh(
        &[&dns_arg(), "--tls-intercept", "--tls-port", "8443"],
        "echo | timeout 10 openssl s_client -connect api.example.test:443 -servername untouched.example.test >/dev/null 2>&1; echo done",
        T,
    );
    assert!(stdout(&out).contains("done"), "{}", stderr(&out));
    assert!(
        w.log().iter().any(|l| l["server"] == "banner-data"
            && l["port"] == 443
            && l.to_string().contains("untouched.example.test")),
        "{:?}",
        w.log()
    );
    assert!(tls_events(&events).is_empty(), "{events:?}");
}

#[test]
fn quic_to_intercepted_ports_is_refused_at_once_unless_allowed() {
    let w = World::new();
    // UDP to 7777 (the world's echo) made an intercepted port: refused with ICMP at once.
    let script = "python3 - <<'PY'\nimport socket, time\nu = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nu.settimeout(5)\nu.connect(('203.0.113.10', 7777))\nstart = time.time()\ntry:\n    u.send(b'quic?')\n    print('answer', u.recv(100))\nexcept ConnectionRefusedError:\n    print('refused', round(time.time() - start, 3))\nexcept socket.timeout:\n    print('timeout')\nPY";
    let (out, events) = w.run_sh(&["--tls-intercept", "--tls-port", "7777"], script, T);
    let text = stdout(&out);
    let secs: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("refused "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text}\n{}", stderr(&out)));
    assert!(secs < 1.0, "{secs}");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "connect" && e["by"] == "block_quic"),
        "{events:?}"
    );
    // Allowed: the echo round-trips.
    let (out, _) = w.run_sh(
        &["--tls-intercept", "--tls-port", "7777", "--tls-allow-quic"],
        script,
        T,
    );
    assert!(stdout(&out).contains("answer b'quic?'"), "{}", stdout(&out));
}

#[test]
fn a_given_ca_signs_and_half_a_ca_is_refused() {
    let w = World::new();
    let ca = world_ca(&w);
    let data = w.dir.join("data");
    let init = w
        .in_host(moat_e2e::moat_bin())
        .args(["ca", "init"])
        .env("XDG_DATA_HOME", &data)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    let cert = data.join("moat/ca.pem");
    let key = data.join("moat/ca-key.pem");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let (out, _) = w.run_sh(
        &[
            &dns_arg(),
            "--tls-intercept",
            "--tls-port",
            "8443",
            "--tls-upstream-ca",
            &ca,
            "--tls-ca-cert",
            cert,
            "--tls-ca-key",
            key,
        ],
        SHOW_ISSUER,
        T,
    );
    assert!(
        stdout(&out).contains("issuer=CN = moat interception CA"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    // A certificate without its key, and a key that is not the certificate's: errors
    // before anything runs.
    let out = w.moat(
        &[
            "run",
            "--tls-intercept",
            "--tls-ca-cert",
            cert,
            "--",
            "true",
        ],
        T,
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("--tls-ca-key"), "{}", stderr(&out));
    let world_key = w.dir.join("world-ca.key");
    let out = w.moat(
        &[
            "run",
            "--tls-intercept",
            "--tls-ca-cert",
            cert,
            "--tls-ca-key",
            world_key.to_str().unwrap(),
            "--",
            "true",
        ],
        T,
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not match"), "{}", stderr(&out));
}

#[test]
fn ech_is_removed_from_https_answers_while_intercepting() {
    let w = World::new();
    let script = "dig +short +time=5 +tries=1 HTTPS ech.example.test";
    let (out, _) = w.run_sh(&[&dns_arg(), "--tls-intercept"], script, T);
    let text = stdout(&out);
    // The record arrived, without its ECH configuration.
    assert!(text.contains("alpn=\"h2\""), "{text}\n{}", stderr(&out));
    assert!(!text.contains("ech="), "{text}");
    // Control: without interception it is passed whole.
    let (out, _) = w.run_sh(&[&dns_arg()], script, T);
    assert!(stdout(&out).contains("ech="), "{}", stdout(&out));
}

#[test]
fn a_host_other_than_the_server_name_gets_403_and_never_arrives() {
    let w = World::new();
    let script = "curl -sS -m 20 https://api.example.test:8443/plain; echo; \
                  curl -sS -m 20 -w 'status=%{http_code}' -H 'Host: other.example.test' https://api.example.test:8443/fronted";
    let (out, events) = run_intercepted(&w, "8443", script);
    let text = stdout(&out);
    // Control: the same connection setup with its own host arrives.
    assert!(
        text.contains("\"path\": \"/plain\""),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(text.contains("status=403"), "{text}");
    assert!(
        text.contains("other.example.test, but the TLS server name is api.example.test"),
        "{text}"
    );
    assert!(
        !w.log().iter().any(|l| l["path"] == "/fronted"),
        "the fronted request reached the server"
    );
    assert!(
        stderr(&out).contains("moat: refused a request on api.example.test"),
        "{}",
        stderr(&out)
    );
    assert_fronting_denied(&events);
}

#[test]
fn h2_stays_h2_end_to_end() {
    let mut w = World::new();
    w.start_nginx();
    let script =
        "curl -sS -m 20 --http2 -w ' version=%{http_version}' https://api.example.test:8444/h2";
    let (out, events) = run_intercepted(&w, "8444", script);
    let text = stdout(&out);
    // The server spoke HTTP/2 to moat, and moat HTTP/2 to curl.
    assert!(
        text.contains("HTTP/2.0 api.example.test"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(text.contains("version=2"), "{text}");
    assert!(
        w.nginx_log()
            .contains("HTTP/2.0 api.example.test api.example.test /h2"),
        "{}",
        w.nginx_log()
    );
    assert!(
        tls_events(&events)
            .iter()
            .any(|e| e["tls"] == "intercepted" && e["alpn"] == "h2"),
        "{events:?}"
    );
}

/// Handshakes with 10,000 distinct server names (all served by the world's nginx), writing
/// its progress to the work directory.
const MANY_NAMES: &str = r#"
import socket, ssl, threading
ctx = ssl.create_default_context()
done, lock = [0], threading.Lock()
def worker(k):
    for i in range(k, 10000, 4):
        s = socket.create_connection(("203.0.113.10", 8444), timeout=20)
        t = ctx.wrap_socket(s, server_hostname="n%d.example.test" % i)
        t.close()
        with lock:
            done[0] += 1
            if done[0] in (2000, 10000):
                with open("progress", "w") as f:
                    f.write(str(done[0]))
threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print("handshakes", done[0], flush=True)
import time; time.sleep(3)
"#;

#[test]
fn ten_thousand_names_keep_moats_memory_flat() {
    let mut w = World::new();
    w.start_nginx();
    let ca = world_ca(&w);
    let work = w.dir.join("many");
    std::fs::create_dir_all(&work).unwrap();
    let audit = w.dir.join("many.jsonl");
    let script = format!("python3 - <<'PY'\n{MANY_NAMES}PY");
    let run = w.spawn_moat(&[
        "run",
        "--audit",
        audit.to_str().unwrap(),
        "--tls-intercept",
        "--tls-port",
        "8444",
        "--tls-upstream-ca",
        &ca,
        "-w",
        work.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let progress = work.join("progress");
    let rss = |pid: u32| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let (mut at_2000, mut at_10000) = (None, None);
    let start = std::time::Instant::now();
    while at_10000.is_none() && start.elapsed() < Duration::from_secs(240) {
        match std::fs::read_to_string(&progress).as_deref() {
            Ok("2000") if at_2000.is_none() => at_2000 = rss(run.id()),
            Ok("10000") => at_10000 = rss(run.id()),
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = run.finish();
    assert!(
        stdout(&out).contains("handshakes 10000"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let (a, b) = (at_2000.unwrap(), at_10000.unwrap());
    eprintln!("moat's RSS after 2,000 names: {a} KiB; after 10,000: {b} KiB");
    // Leaves beyond the cache's bound are dropped: 8,000 more names cost no more memory
    // than noise (a leaf and its key are about 1.5 KiB; 8,000 kept would be ~12 MiB).
    assert!(b < a + 6 * 1024, "moat's RSS grew from {a} KiB to {b} KiB");
    let intercepted = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"event\":\"tls\"") && l.contains("\"tls\":\"intercepted\""))
        .count();
    assert_eq!(intercepted, 10_000);
}

#[test]
fn an_h2_authority_other_than_the_server_name_gets_403() {
    let mut w = World::new();
    w.start_nginx();
    let script = "curl -sS -m 20 --http2 https://api.example.test:8444/plain; \
                  curl -sS -m 20 --http2 -w ' status=%{http_code} version=%{http_version}' -H 'Host: other.example.test' https://api.example.test:8444/fronted";
    let (out, events) = run_intercepted(&w, "8444", script);
    let text = stdout(&out);
    // Control: the request for the server name arrives over HTTP/2.
    assert!(
        text.contains("HTTP/2.0 api.example.test"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(
        text.contains("status=403 version=2"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(
        text.contains("other.example.test, but the TLS server name is api.example.test"),
        "{text}"
    );
    let log = w.nginx_log();
    assert!(log.contains("/plain") && !log.contains("/fronted"), "{log}");
    assert_fronting_denied(&events);
}
