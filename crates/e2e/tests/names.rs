//! A connection is named by what it used, not by the first name DNS answered for its
//! address: a world where index.example.test, files.example.test and unused.example.test
//! all answer 203.0.113.10 (as a registry's names share a CDN's address). The sandbox looks
//! all three up, the unused one last, and connects with TLS (a server name), plain HTTP (a
//! `Host`), intercepted HTTPS, and a protocol that names nothing. The audit's `domain`, the
//! summary and `--learn` must each name what the connection used; the learned policy must
//! replay the run and refuse the name that was only looked up.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use moat_e2e::{WORLD_DNS, World, rules_of, stderr, stdout};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

fn dns_arg() -> String {
    format!("--dns={WORLD_DNS}")
}

/// The `connect` allow events to 203.0.113.10:`port`.
fn connects(events: &[Value], port: u64) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| {
            e["event"] == "connect"
                && e["decision"] == "allow"
                && e["dst"] == "203.0.113.10"
                && e["port"] == port
        })
        .collect()
}

/// The world's log lines for requests that arrived with `host` (the HTTP `Host` header's
/// name, without a port).
fn arrived(w: &World, host: &str) -> usize {
    std::fs::read_to_string(w.log_path())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["host"]
                .as_str()
                .is_some_and(|h| h.split(':').next() == Some(host))
        })
        .count()
}

/// Looks up every name, the one it will not use last, then connects by plain HTTP to the
/// name looked up in the middle (neither the first name DNS answered for the address nor
/// the most recent) and by TLS to the first.
const USE_TWO_OF_THREE: &str = "\
dig +short files.example.test index.example.test unused.example.test >/dev/null; \
curl -4 -sS -m 10 -o /dev/null -w 'plain %{http_code}\\n' http://index.example.test/simple/; \
curl -4 -ksS -m 10 -o /dev/null -w 'tls %{http_code}\\n' https://files.example.test:8443/files; \
sleep 0.3";

#[test]
fn a_connection_is_named_by_its_server_name_or_host_and_learn_writes_only_those() {
    let w = World::new();
    let learned = w.dir.join("learned.toml");
    let learned_s = learned.to_str().unwrap().to_owned();
    let (out, events) = w.run_sh(&[&dns_arg(), "--learn", &learned_s], USE_TWO_OF_THREE, T);
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(
        text.contains("plain 200") && text.contains("tls 200"),
        "{text}\n{err}"
    );
    // The positive control: the world got both requests, by their names.
    assert_eq!(arrived(&w, "index.example.test"), 1, "{err}");
    assert_eq!(arrived(&w, "files.example.test"), 1, "{err}");

    // The audit: the plain connection by its Host, the TLS one by its server name — not
    // by whichever name DNS answered for the address first or last.
    let plain = connects(&events, 80);
    assert_eq!(plain.len(), 1, "{events:?}");
    assert_eq!(plain[0]["domain"], "index.example.test", "{:?}", plain[0]);
    let tls = connects(&events, 8443);
    assert_eq!(tls.len(), 1, "{events:?}");
    assert_eq!(tls[0]["domain"], "files.example.test", "{:?}", tls[0]);
    assert_eq!(tls[0]["sni"], "files.example.test", "{:?}", tls[0]);
    // The lookup of the third name happened (the run could have named by it).
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "dns" && e["name"] == "unused.example.test"),
        "{events:?}"
    );

    // The summary names the same.
    assert!(err.contains("index.example.test:80/tcp"), "{err}");
    assert!(err.contains("files.example.test:8443/tcp"), "{err}");
    assert!(!err.contains("unused.example.test"), "{err}");

    // The learned policy: a rule for each name used, none for the name only looked up.
    let policy = std::fs::read_to_string(&learned).unwrap();
    let rules = rules_of(&policy);
    assert!(rules.contains("\"index.example.test\""), "{policy}");
    assert!(rules.contains("\"files.example.test\""), "{policy}");
    assert!(!rules.contains("unused.example.test"), "{policy}");
    assert!(!policy.contains("one of"), "{policy}");

    // Replayed: what the run used works; the name only looked up is refused, by name and
    // over TLS, and reaches nothing.
    let replay = "\
curl -4 -sS -m 10 -o /dev/null -w 'plain %{http_code}\\n' http://index.example.test/simple/; \
curl -4 -ksS -m 10 -o /dev/null -w 'tls %{http_code}\\n' https://files.example.test:8443/files; \
curl -4 -sS -m 10 -o /dev/null http://unused.example.test/ && echo unused-plain-reached; \
curl -4 -ksS -m 10 -o /dev/null https://unused.example.test:8443/ && echo unused-tls-reached; \
true";
    let (out, events) = w.run_sh(&[&dns_arg(), "--policy", &learned_s], replay, T);
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(
        text.contains("plain 200") && text.contains("tls 200"),
        "{text}\n{err}\n{policy}"
    );
    assert!(!text.contains("reached"), "{text}\n{err}");
    assert_eq!(arrived(&w, "index.example.test"), 2, "{err}");
    assert_eq!(arrived(&w, "files.example.test"), 2, "{err}");
    assert_eq!(arrived(&w, "unused.example.test"), 0, "{err}");
    assert!(
        events
            .iter()
            .any(|e| e["decision"] == "deny" && e.to_string().contains("unused.example.test")),
        "{events:?}"
    );
}

#[test]
fn an_intercepted_connection_is_named_by_its_server_name() {
    let w = World::new();
    let ca = w.dir.join("world-ca.pem").to_str().unwrap().to_owned();
    let learned = w.dir.join("learned.toml");
    let learned_s = learned.to_str().unwrap().to_owned();
    let script = "\
dig +short index.example.test files.example.test unused.example.test >/dev/null; \
curl -4 -sS -m 10 -o /dev/null -w 'intercepted %{http_code}\\n' https://files.example.test:8443/files; \
sleep 0.3";
    let (out, events) = w.run_sh(
        &[
            &dns_arg(),
            "--tls-intercept",
            "--tls-port",
            "8443",
            "--tls-upstream-ca",
            &ca,
            "--learn",
            &learned_s,
        ],
        script,
        T,
    );
    let (text, err) = (stdout(&out), stderr(&out));
    // curl trusted moat's CA with no flags: it was intercepted, and the world saw it.
    assert!(text.contains("intercepted 200"), "{text}\n{err}");
    assert_eq!(arrived(&w, "files.example.test"), 1, "{err}");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "tls" && e["tls"] == "intercepted"),
        "{events:?}"
    );
    let tls = connects(&events, 8443);
    assert_eq!(tls.len(), 1, "{events:?}");
    assert_eq!(tls[0]["domain"], "files.example.test", "{:?}", tls[0]);
    assert!(err.contains("files.example.test:8443/tcp"), "{err}");
    assert!(!err.contains("unused.example.test"), "{err}");
    let policy = std::fs::read_to_string(&learned).unwrap();
    let rules = rules_of(&policy);
    assert!(rules.contains("\"files.example.test\""), "{policy}");
    assert!(
        !rules.contains("unused.example.test") && !rules.contains("index.example.test"),
        "{policy}"
    );
}

#[test]
fn a_connection_that_names_nothing_is_one_of_the_names_most_recent_first() {
    let w = World::new();
    // The TCP sink (9000) reads bytes that are neither TLS nor HTTP: nothing names the
    // connection but DNS, which answered the address for two names, b last.
    let script = "\
dig +short a.example.test >/dev/null; dig +short b.example.test >/dev/null; \
python3 -c 'import socket; s = socket.create_connection((\"203.0.113.10\", 9000), 10); s.sendall(b\"\\x00\\x01 not a request\"); s.shutdown(socket.SHUT_WR); print(\"sink\", len(s.recv(100)) > 0)'";
    let (out, events) = w.run_sh(&[&dns_arg()], script, T);
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(text.contains("sink True"), "{text}\n{err}");
    let sink = connects(&events, 9000);
    assert_eq!(sink.len(), 1, "{events:?}");
    assert_eq!(
        sink[0]["domain"], "b.example.test,a.example.test",
        "{:?}",
        sink[0]
    );
    assert!(sink[0].get("sni").is_none(), "{:?}", sink[0]);
    assert!(
        err.contains("203.0.113.10:9000/tcp (one of b.example.test, a.example.test)"),
        "{err}"
    );
}

#[test]
fn a_claimed_name_dns_never_answered_here_never_becomes_a_rule() {
    // The run may reach 203.0.113.10 by its address only. The program sends a Host and a
    // TLS server name for exfil.example.test, which it never looked up (DNS would answer
    // another address for it later): learned, either would grant that name wherever it
    // points — more than this run was allowed. And one name it did look up, as control.
    let w = World::new();
    let learned = w.dir.join("learned.toml");
    let learned_s = learned.to_str().unwrap().to_owned();
    let script = "\
curl -4 -sS -m 10 -o /dev/null -w 'plain %{http_code}\\n' -H 'Host: exfil.example.test' http://203.0.113.10:8080/claimed; \
curl -4 -ksS -m 10 -o /dev/null -w 'tls %{http_code}\\n' --connect-to exfil.example.test:8443:203.0.113.10:8443 https://exfil.example.test:8443/claimed; \
curl -4 -sS -m 10 -o /dev/null -w 'looked-up %{http_code}\\n' http://www.example.test:8080/looked-up; \
true";
    let args = [
        &dns_arg(),
        "--policy",
        "none",
        "--allow",
        "203.0.113.10:8080",
        "--allow",
        "203.0.113.10:8443",
        "--allow",
        "www.example.test:8080",
        "--learn",
        &learned_s,
    ];
    let (out, events) = w.run_sh(&args, script, T);
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(
        text.contains("plain 200") && text.contains("tls 200") && text.contains("looked-up 200"),
        "{text}\n{err}"
    );
    let policy = std::fs::read_to_string(&learned).unwrap();
    let rules = rules_of(&policy);
    assert!(!rules.contains("exfil"), "{policy}");
    assert!(rules.contains("destination = \"203.0.113.10\""), "{policy}");
    // The control: the name it looked up and used is learned by name.
    assert!(
        rules.contains("destination = \"www.example.test\""),
        "{policy}"
    );
    // The record: the claim is not the connection's name.
    for e in connects(&events, 8080)
        .iter()
        .chain(connects(&events, 8443).iter())
    {
        assert_ne!(e["domain"], "exfil.example.test", "{e}");
    }
    assert!(
        err.contains("exfil.example.test:8443/tcp at 203.0.113.10"),
        "{err}"
    );
    // Replayed: what ran works again, and the claimed name reached by its own address
    // (DNS answers 203.0.113.10 for it too, as for every *.example.test) is refused.
    let replay = "\
curl -4 -sS -m 10 -o /dev/null -w 'plain %{http_code}\\n' -H 'Host: exfil.example.test' http://203.0.113.10:8080/claimed; \
curl -4 -sS -m 10 -o /dev/null -w 'looked-up %{http_code}\\n' http://www.example.test:8080/looked-up; \
curl -4 -sS -m 10 -o /dev/null http://exfil.example.test:9000/ && echo exfil-reached; true";
    let (out, _) = w.run_sh(&[&dns_arg(), "--policy", &learned_s, "--reject"], replay, T);
    let text = stdout(&out);
    assert!(
        text.contains("plain 200") && text.contains("looked-up 200"),
        "{text}\n{}\n{policy}",
        stderr(&out)
    );
    assert!(!text.contains("exfil-reached"), "{text}");
}

#[test]
fn a_name_looked_up_after_the_connection_opened_is_not_its_name() {
    // The connection opens while DNS has answered its address for a only; before its
    // first bytes (which name nothing), the sandbox looks up b for the same address. b is
    // not what the connection used.
    let w = World::new();
    let script = "\
dig +short a.example.test >/dev/null; \
python3 -c 'import socket, subprocess; s = socket.create_connection((\"203.0.113.10\", 9000), 10); subprocess.run([\"dig\", \"+short\", \"b.example.test\"], capture_output=True); s.sendall(b\"\\x00\\x01 not a request\"); s.shutdown(socket.SHUT_WR); print(\"sink\", len(s.recv(100)) > 0)'; \
python3 -c 'import socket; s = socket.create_connection((\"203.0.113.10\", 9000), 10); s.sendall(b\"\\x00\\x02\"); s.shutdown(socket.SHUT_WR); print(\"sink\", len(s.recv(100)) > 0)'";
    let (out, events) = w.run_sh(&[&dns_arg()], script, T);
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(text.matches("sink True").count(), 2, "{text}\n{err}");
    let sink = connects(&events, 9000);
    assert_eq!(sink.len(), 2, "{events:?}");
    // The lookup of b did happen before the first connection's event was written...
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "dns" && e["name"] == "b.example.test"),
        "{events:?}"
    );
    assert_eq!(sink[0]["domain"], "a.example.test", "{:?}", sink[0]);
    // ...and the connection opened after it may be either.
    assert_eq!(
        sink[1]["domain"], "b.example.test,a.example.test",
        "{:?}",
        sink[1]
    );
}
