//! The audit log as a record users can trust: every run opens with `start` and ends with
//! `end` (exit status, counts), every event names its run, the sandbox cannot write the
//! log, a flood cannot grow it past its cap, and a log that cannot be written is never
//! silent (and stops the sandbox under `--audit-required`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use moat_e2e::{World, moat_bin, run_with_timeout, stderr, stdout};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

#[test]
fn each_run_opens_and_ends_and_names_itself() {
    let w = World::new();
    let log = w.dir.join("runs.jsonl");
    let log_s = log.to_str().unwrap();
    // Two runs appended to one file: one with a network and a connection, one offline.
    let out = w.moat(
        &[
            "run",
            "--audit",
            log_s,
            "--",
            "sh",
            "-c",
            "curl -s -m 5 -o /dev/null http://203.0.113.10/; exit 3",
        ],
        T,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = w.moat(
        &["run", "--audit", log_s, "--policy", "none", "--", "true"],
        T,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e["run"].as_str().is_some_and(|r| r.len() == 16)),
        "{events:?}"
    );
    let starts: Vec<&Value> = events.iter().filter(|e| e["event"] == "start").collect();
    let ends: Vec<&Value> = events.iter().filter(|e| e["event"] == "end").collect();
    assert_eq!((starts.len(), ends.len()), (2, 2), "{events:?}");
    assert_ne!(starts[0]["run"], starts[1]["run"]);
    // The first run: opened first, its connection in between, ended with its status.
    assert_eq!(events.first().unwrap()["event"], "start");
    let first_run = &starts[0]["run"];
    let connect = events
        .iter()
        .position(|e| e["event"] == "connect" && &e["run"] == first_run)
        .unwrap();
    let end = events
        .iter()
        .position(|e| e["event"] == "end" && &e["run"] == first_run)
        .unwrap();
    assert!(connect < end);
    assert_eq!(events[end]["exit_status"], 3);
    assert!(
        events[end]["allowed"].as_u64().unwrap() >= 1,
        "{:?}",
        events[end]
    );
    assert_eq!(starts[0]["network"], "moat");
    assert_eq!(starts[1]["network"], "none");
    assert_eq!(ends[1]["exit_status"], 0);
}

#[test]
fn a_log_the_sandbox_could_write_is_refused() {
    let w = World::new();
    let work = w.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let inside = work.join("audit.jsonl");
    let out = w.moat(
        &[
            "run",
            "--audit",
            inside.to_str().unwrap(),
            "-w",
            work.to_str().unwrap(),
            "--",
            "true",
        ],
        T,
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("which the sandbox can write"),
        "{}",
        stderr(&out)
    );
    assert!(!inside.exists(), "the refused log was created");
    // Outside the writable directory it is fine (the control).
    let outside = w.dir.join("audit.jsonl");
    let out = w.moat(
        &[
            "run",
            "--audit",
            outside.to_str().unwrap(),
            "-w",
            work.to_str().unwrap(),
            "--",
            "true",
        ],
        T,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read_to_string(&outside)
            .unwrap()
            .contains("\"event\":\"start\"")
    );
}

#[test]
fn every_event_type_validates_against_the_schema() {
    let w = World::new();
    let log = w.dir.join("schema.jsonl");
    let ca = w.dir.join("world-ca.pem");
    let dns = format!("--dns={}", moat_e2e::WORLD_DNS);
    // One run that makes every kind of event: start, end; connect allowed (TCP, UDP, ICMP)
    // and denied (by a rule, by the TLS server name, by max_connections is elsewhere);
    // close; DNS answered and refused; TLS intercepted, bypassed and failed; secrets
    // substituted, redacted and stopped.
    let script = r#"
curl -s -m 5 -o /dev/null http://api.example.test:8080/plain
curl -s -m 3 -o /dev/null http://203.0.113.10:9000/
getent hosts blocked.example.test || true
curl -s -m 5 -o /dev/null -H "X-Key: $API_KEY" https://api.example.test:8443/echo-header
curl -s -m 5 -o /dev/null -k https://www.example.test:8443/bypassed
curl -s -m 5 -o /dev/null https://api.example.test:9443/untrusted
curl -s -m 5 -o /dev/null "http://other.example.test:8080/?k=$API_KEY"
ping -c 1 -W 2 203.0.113.10 >/dev/null
python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.sendto(b'x', ('203.0.113.10', 7777)); s.recv(10)"
exit 5
"#;
    let mut cmd = w.in_host(moat_e2e::moat_bin());
    cmd.env("API_KEY", "sk-schema-value-0123456789").args([
        "run",
        "--audit",
        log.to_str().unwrap(),
        &dns,
        "--deny",
        "203.0.113.10:9000",
        "--deny",
        "blocked.example.test",
        "--tls-intercept",
        "--tls-port",
        "8443",
        "--tls-port",
        "9443",
        "--tls-bypass",
        "www.example.test",
        "--tls-upstream-ca",
        ca.to_str().unwrap(),
        "--secret",
        "API_KEY@api.example.test",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let out = moat_e2e::run_with_timeout(cmd, T);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let events: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for e in &events {
        moat_e2e::validate_event(e).unwrap_or_else(|why| panic!("{why}: {e}"));
    }
    // Each kind was made (the checks above are not vacuous).
    let has = |f: &dyn Fn(&Value) -> bool| events.iter().any(f);
    for (what, seen) in [
        ("start", has(&|e| e["event"] == "start")),
        (
            "end",
            has(&|e| e["event"] == "end" && e["exit_status"] == 5),
        ),
        (
            "connect allow tcp",
            has(&|e| e["event"] == "connect" && e["decision"] == "allow" && e["proto"] == "tcp"),
        ),
        (
            "connect allow udp",
            has(&|e| e["event"] == "connect" && e["proto"] == "udp"),
        ),
        (
            "connect icmp",
            has(&|e| e["event"] == "connect" && e["proto"] == "icmpv4"),
        ),
        (
            "connect deny by rule",
            has(&|e| e["event"] == "connect" && e["decision"] == "deny" && e["rule"] == 0),
        ),
        ("close", has(&|e| e["event"] == "close")),
        (
            "dns allow",
            has(&|e| e["event"] == "dns" && e["decision"] == "allow"),
        ),
        (
            "dns deny",
            has(&|e| e["event"] == "dns" && e["decision"] == "deny"),
        ),
        (
            "tls intercepted",
            has(&|e| e["event"] == "tls" && e["tls"] == "intercepted" && e["decision"] == "allow"),
        ),
        (
            "tls bypassed",
            has(&|e| e["event"] == "tls" && e["tls"] == "bypassed"),
        ),
        (
            "tls failed",
            has(&|e| e["event"] == "tls" && e["decision"] == "deny"),
        ),
        (
            "secret substituted",
            has(&|e| e["event"] == "secret" && e["secret"] == "substituted"),
        ),
        (
            "secret redacted",
            has(&|e| e["event"] == "secret" && e["secret"] == "redacted"),
        ),
        (
            "secret violation",
            has(&|e| e["event"] == "secret" && e["secret"] == "violation" && e["by"] == "secret"),
        ),
        (
            "sni on an allowed connect",
            has(&|e| {
                e["event"] == "connect"
                    && e["decision"] == "allow"
                    && e["sni"] == "api.example.test"
            }),
        ),
    ] {
        assert!(seen, "no {what} event: {events:#?}");
    }
    // A flow's allowed connect (audited once its first bytes named it) comes before every
    // tls, secret and close event of that flow.
    for (i, e) in events.iter().enumerate() {
        if e["event"] == "tls" || e["event"] == "secret" || e["event"] == "close" {
            let of_flow = |c: &Value| {
                c["event"] == "connect" && c["src"] == e["src"] && c["port"] == e["port"]
            };
            assert!(
                events[..i].iter().any(of_flow),
                "no connect before {e}: {events:#?}"
            );
        }
    }
    assert!(
        !std::fs::read_to_string(&log)
            .unwrap()
            .contains("sk-schema-value"),
        "the value is in the log"
    );
}

#[test]
fn a_sandbox_that_tries_to_rewrite_its_log_cannot() {
    let w = World::new();
    let dir = w.dir.join("logs");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let log_s = log.to_str().unwrap();
    // The sandbox is shown the log's directory (read-only) and tries to truncate it, append a
    // forged event, and replace it.
    let script = format!(
        "curl -s -m 5 -o /dev/null http://203.0.113.10/; \
         (: > {log_s}) 2>/dev/null && echo truncated; \
         (echo '{{\"event\":\"connect\",\"decision\":\"allow\",\"forged\":true}}' >> {log_s}) 2>/dev/null && echo appended; \
         mv {log_s} {log_s}.old 2>/dev/null && echo moved; \
         cat {log_s} | head -c 1 >/dev/null && echo readable"
    );
    let out = w.moat(
        &[
            "run",
            "--audit",
            log_s,
            "--ro",
            dir.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ],
        T,
    );
    let text = moat_e2e::stdout(&out);
    // It could read it (so the attempts were real), and change nothing.
    assert!(text.contains("readable"), "{text}\n{}", stderr(&out));
    for what in ["truncated", "appended", "moved"] {
        assert!(!text.contains(what), "{what}: {text}");
    }
    let content = std::fs::read_to_string(&log).unwrap();
    assert!(!content.contains("forged"), "{content}");
    let events: Vec<Value> = content
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["event"], "start");
    assert!(events.iter().any(|e| e["event"] == "connect"));
    assert_eq!(events.last().unwrap()["event"], "end");
    for e in &events {
        moat_e2e::validate_event(e).unwrap_or_else(|why| panic!("{why}: {e}"));
    }
}

#[test]
fn a_connection_refused_by_its_client_hello_closes_as_a_deny() {
    let w = World::new();
    // Port 443 under domain rules waits for the ClientHello. The SYN's address is allowed
    // (the default policy), then the server name is refused by rule 0; a hello that cannot
    // be read is refused by `sni`; a permitted name is the control.
    let script = "\
        curl -sk -m 5 -o /dev/null --resolve blocked.example.test:443:203.0.113.10 https://blocked.example.test/; \
        python3 - <<'PY'\nimport socket\ns = socket.create_connection(('203.0.113.10', 443), timeout=5)\ns.sendall(bytes([22, 3, 1, 0, 6, 1, 0, 1, 0, 3, 3]) + bytes([23, 3, 3, 0, 4]) + b'evil')\ntry:\n    while s.recv(100):\n        pass\nexcept OSError:\n    pass\nPY\n\
        curl -sk -m 5 -o /dev/null --resolve fine.example.test:443:203.0.113.10 https://fine.example.test/; \
        true";
    let (out, events) = w.run_sh(&["--deny", "blocked.example.test"], script, T);
    // Each connection's close event, by the connect event that judged it.
    let close_of = |connect: &Value| {
        events
            .iter()
            .find(|e| e["event"] == "close" && e["src"] == connect["src"])
            .unwrap_or_else(|| panic!("no close for {connect}: {events:#?}"))
            .clone()
    };
    let connect = |pred: &dyn Fn(&Value) -> bool| {
        events
            .iter()
            .find(|e| e["event"] == "connect" && pred(e))
            .unwrap_or_else(|| panic!("{}\n{events:#?}", stderr(&out)))
            .clone()
    };
    let by_name = connect(&|e| e["decision"] == "deny" && e["sni"] == "blocked.example.test");
    assert_eq!(by_name["rule"], 0, "{by_name}");
    let close = close_of(&by_name);
    assert_eq!(
        (&close["decision"], &close["rule"], &close["by"]),
        (&Value::from("deny"), &Value::from(0), &Value::Null),
        "{close}"
    );
    let unreadable = connect(&|e| e["decision"] == "deny" && e["by"] == "sni");
    let close = close_of(&unreadable);
    assert_eq!(
        (&close["decision"], &close["by"], &close["rule"]),
        (&Value::from("deny"), &Value::from("sni"), &Value::Null),
        "{close}"
    );
    // Control: the permitted name's connection closes as allowed, by the default (its
    // connect event names the server name, unless the banner server's greeting ended the
    // connection before the hello was judged).
    let fine = connect(&|e| e["decision"] == "allow" && e["port"] == 443);
    let close = close_of(&fine);
    assert_eq!(
        (&close["decision"], &close["rule"]),
        (&Value::from("allow"), &Value::from("default")),
        "{close}"
    );
}

#[test]
fn a_log_inside_a_rw_grant_is_refused() {
    let w = World::new();
    let shared = w.dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let inside = shared.join("audit.jsonl");
    std::fs::write(&inside, "").unwrap();
    let link = w.dir.join("link.jsonl");
    std::os::unix::fs::symlink(&inside, &link).unwrap();
    let (inside_s, shared_s, link_s) = (
        inside.to_str().unwrap(),
        shared.to_str().unwrap(),
        link.to_str().unwrap(),
    );
    // The log in a --rw directory; the log file itself granted --rw; and a log named
    // through a link into a --rw directory (the sandbox could rewrite it in each).
    for (args, says) in [
        (
            ["--rw", shared_s, "--audit", inside_s],
            "which the sandbox can write",
        ),
        (
            ["--rw", inside_s, "--audit", inside_s],
            "which the sandbox can write",
        ),
        (["--rw", shared_s, "--audit", link_s], "a symbolic link"),
    ] {
        let mut all = vec!["run", "--policy", "none"];
        all.extend(args);
        all.extend(["--", "true"]);
        let out = w.moat(&all, T);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("audit log"), "{}", stderr(&out));
        assert_eq!(std::fs::read_to_string(&inside).unwrap(), "", "{args:?}");
    }
    // The control: the same grant, the log elsewhere.
    let outside = w.dir.join("audit.jsonl");
    let out = w.moat(
        &[
            "run",
            "--policy",
            "none",
            "--rw",
            shared_s,
            "--audit",
            outside.to_str().unwrap(),
            "--",
            "true",
        ],
        T,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read_to_string(&outside)
            .unwrap()
            .contains("\"event\":\"end\"")
    );
}

/// A python script for the sandbox: `repeats` lookups of one blocked name over about 1.5 s
/// (they fold), a pause, then distinct blocked names as fast as it can for `seconds` (they do not),
/// each a DNS query straight to the gateway; prints how many of each it sent.
fn flood_script(repeats: u32, seconds: f64) -> String {
    format!(
        r#"
import socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
def send(name, i):
    q = struct.pack('>HHHHHH', i & 0xffff, 0x0100, 1, 0, 0, 0)
    q += b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\0\0\1\0\1'
    try:
        s.sendto(q, ('10.0.2.2', 53))
    except BlockingIOError:
        time.sleep(0.001)
    try:
        while True:
            s.recv(4096)
    except BlockingIOError:
        pass
n = 0
end = time.time() + 1.5
while n < {repeats} and time.time() < end:
    send('same.flood.test', n)
    n += 1
    time.sleep(1.0 / {repeats})
# A pause longer than the fold window: the repeats' count is written at the flood's first
# lookup, before the flood fills the log.
time.sleep(1.2)
i = 0
end = time.time() + {seconds}
while i < 2000000 and time.time() < end:
    send('n%d.flood.test' % i, i)
    i += 1
print(n, i)
"#
    )
}

#[test]
fn a_flood_of_denied_lookups_stays_within_the_cap() {
    let w = World::new();
    let log = w.dir.join("flood.jsonl");
    let cap: u64 = 256 << 10;
    let out = w.moat(
        &[
            "run",
            "--audit",
            log.to_str().unwrap(),
            "--audit-max-size",
            "256k",
            "--block-domain-suffix",
            "flood.test",
            "--",
            "python3",
            "-c",
            &flood_script(1000, 4.0),
        ],
        T,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let sent: Vec<u64> = moat_e2e::stdout(&out)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let size = std::fs::metadata(&log).unwrap().len();
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for e in &events {
        moat_e2e::validate_event(e).unwrap_or_else(|why| panic!("{why}: {e}"));
    }
    let end = events.last().unwrap();
    eprintln!(
        "flood: sent {sent:?}; log {size} bytes (cap {cap}), {} lines; end {end}",
        events.len()
    );
    assert!(size <= cap, "{size} > {cap}");
    assert_eq!(events[0]["event"], "start");
    assert_eq!(end["event"], "end", "the end event always fits");
    assert_eq!(
        events.iter().filter(|e| e["event"] == "truncated").count(),
        1
    );
    // Far more was sent than the cap holds: the rest was counted, not written.
    assert!(sent[1] > 10_000, "{sent:?}");
    assert!(end["events_dropped"].as_u64().unwrap() > 5_000, "{end}");
    // The positive control for folding: the repeated name is a few lines with counts
    // that add up to what was sent, not a line per lookup.
    let same: Vec<&Value> = events
        .iter()
        .filter(|e| e["name"] == "same.flood.test")
        .collect();
    let counted: u64 = same.iter().map(|e| e["count"].as_u64().unwrap_or(1)).sum();
    assert!(same.len() <= 4, "{}", same.len());
    assert!(
        counted >= sent[0] * 9 / 10 && sent[0] >= 100,
        "{counted} of {sent:?}"
    );
    assert!(
        end["events_folded"].as_u64().unwrap() >= counted - same.len() as u64,
        "{end}"
    );
    // The summary counted everything, and says the log was capped.
    let err = stderr(&out);
    assert!(err.contains("reached --audit-max-size"), "{err}");
    // `moat audit` reads it back.
    let read = w.moat(&["audit", log.to_str().unwrap()], T);
    assert!(read.status.success(), "{}", stderr(&read));
    assert!(
        moat_e2e::stdout(&read).contains("same.flood.test ×"),
        "{}",
        moat_e2e::stdout(&read)
    );
}

/// A small tmpfs the test mounts (and unmounts, also on panic): a disk that fills.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn new(dir: std::path::PathBuf) -> SmallDisk {
        std::fs::create_dir_all(&dir).unwrap();
        moat_e2e::sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=64k",
            "tmpfs",
            dir.to_str().unwrap(),
        ]);
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_is_never_silent_and_fails_closed_when_required() {
    let w = World::new();
    for required in [false, true] {
        let disk = SmallDisk::new(w.dir.join(format!("disk-{required}")));
        let log = disk.0.join("audit.jsonl");
        let mut args = vec![
            "run",
            "--audit",
            log.to_str().unwrap(),
            "--block-domain-suffix",
            "flood.test",
        ];
        if required {
            args.push("--audit-required");
        }
        // Under --audit-required the flood would run 20 s: moat must stop it long before.
        let script = flood_script(10, if required { 20.0 } else { 3.0 });
        args.extend(["--", "python3", "-c", &script]);
        let started = std::time::Instant::now();
        let out = w.moat(&args, T);
        let took = started.elapsed();
        let err = stderr(&out);
        // Whole lines only, however the disk filled.
        let text = std::fs::read_to_string(&log).unwrap();
        for line in text.lines() {
            let e: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            moat_e2e::validate_event(&e).unwrap_or_else(|why| panic!("{why}: {e}"));
        }
        assert!(text.ends_with('\n'), "ends in half a line");
        assert!(
            err.contains("audit log: cannot write (No space left on device"),
            "{err}"
        );
        eprintln!(
            "disk full (required {required}): {} bytes, exit {:?} after {took:?}",
            text.len(),
            out.status.code()
        );
        if required {
            assert_eq!(out.status.code(), Some(121), "{err}");
            assert!(
                err.contains("stopping the sandbox (--audit-required)"),
                "{err}"
            );
            assert!(took < Duration::from_secs(15), "{took:?}");
        } else {
            // The command's own status; the loss said at once and counted at the end.
            assert_eq!(out.status.code(), Some(0), "{err}");
            assert!(err.contains("events are being lost"), "{err}");
            assert!(err.contains("events lost (a write failed)"), "{err}");
        }
        drop(disk);
    }
}

/// A log an earlier moat wrote (the tree of 4c7e0d1, before connections were named by their
/// evidence: `domain` there is every name DNS answered for the address, first answered
/// first) still reads: the schema only grows, and `moat audit` gives the same run, counts
/// and suggestions, an address DNS answered for two names shown as one of them.
#[test]
fn a_log_an_earlier_moat_wrote_still_reads() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/audit-log-4c7e0d1.jsonl"
    );
    let mut cmd = std::process::Command::new(moat_bin());
    cmd.args(["audit", fixture]);
    let out = run_with_timeout(cmd, T);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    for line in [
        "run 802a9f343bb3660f, exit status 0: 2 connections allowed, 11 attempts denied to 2 destinations, 7 lookups (2 refused)",
        "denied   203.0.113.11:8080/tcp ×6: rule 0: deny outbound 203.0.113.11:8080/tcp",
        "denied   other.example.test:8080/tcp ×5",
        "refused  lookup of blocked.example.test ×2 (policy)",
        "allowed  203.0.113.10:80/tcp (one of index.example.test, files.example.test) (rule default)",
        "allowed  files.example.test:8443/tcp (rule default)",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
    let mut cmd = std::process::Command::new(moat_bin());
    cmd.args(["audit", "--json", fixture]);
    let out = run_with_timeout(cmd, T);
    let json: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["runs"][0]["run"], "802a9f343bb3660f", "{json}");
}
