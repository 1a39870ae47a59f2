//! The packet path end to end: a real sandbox, real clients, the real moat binary in the
//! host namespace, servers in the world namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::{Duration, Instant};

use moat_e2e::{HOST_ADDR, WORLD_DNS, World, stderr, stdout};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn dns_arg() -> String {
    format!("--dns={WORLD_DNS}")
}

fn deny_events<'a>(events: &'a [Value], dst: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == "connect" && e["decision"] == "deny" && e["dst"] == dst)
        .collect()
}

#[test]
fn default_policy_reaches_public_hosts() {
    let w = World::new();
    let (out, events) = w.run_sh(&[], "curl -sS -m 10 http://203.0.113.10/hello", T);
    assert!(out.status.success(), "{}", stderr(&out));
    let body: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(body["path"], "/hello");
    // The request left from a host socket, not from the sandbox's address.
    assert_eq!(body["client"], format!("::ffff:{HOST_ADDR}"));
    assert!(
        w.log()
            .iter()
            .any(|l| l["server"] == "http" && l["path"] == "/hello")
    );
    let allow = events
        .iter()
        .find(|e| e["event"] == "connect" && e["decision"] == "allow")
        .unwrap();
    // Reached by address, no lookup: `domain` is absent (its type never varies).
    assert!(allow.get("domain").is_none(), "{allow}");
    assert_eq!(allow["dst"], "203.0.113.10");
    assert_eq!(allow["rule"], "default");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "close" && e["bytes_down"].as_u64().unwrap() > 0)
    );
}

#[test]
fn default_policy_denies_private_metadata_loopback_and_ula() {
    let w = World::new();
    let targets = [
        ("10.1.0.10", "http://10.1.0.10/", 1),
        ("172.16.5.5", "http://172.16.5.5/", 1),
        ("192.168.7.7", "http://192.168.7.7/", 1),
        ("100.64.1.1", "http://100.64.1.1/", 1),
        ("169.254.169.254", "http://169.254.169.254/", 2),
        ("fd00:1::10", "http://[fd00:1::10]/", 1),
        ("10.0.2.2", "http://10.0.2.2:8123/", 0),
        // IPv6 on the wire (a mapped address would leave the sandbox as IPv4, and match
        // 10.1.0.10's own event): the NAT64 form, judged as 10.1.0.10.
        ("64:ff9b::a01:a", "http://[64:ff9b::a01:a]/", 1),
    ];
    let script: String = targets
        .iter()
        .map(|(_, url, _)| {
            format!("curl -sS --connect-timeout 1 -m 2 {url} && echo REACHED {url}; ")
        })
        .collect();
    let (out, events) = w.run_sh(&[], &script, T);
    assert!(!stdout(&out).contains("REACHED"), "{}", stdout(&out));
    for (dst, _, rule) in targets {
        let denies = deny_events(&events, dst);
        assert!(!denies.is_empty(), "no deny event for {dst}: {events:?}");
        assert_eq!(denies[0]["rule"], rule, "{dst}: {:?}", denies[0]);
        assert!(
            denies[0]["reason"].as_str().unwrap().contains("group:"),
            "{:?}",
            denies[0]
        );
    }
    assert!(
        w.log().iter().all(|l| l["server"] != "http"),
        "a denied request arrived: {:?}",
        w.log()
    );
}

#[test]
fn allow_all_reaches_private_hosts_and_the_host_loopback() {
    let mut w = World::new();
    w.spawn_in_host(&[
        "python3",
        "-m",
        "http.server",
        "8123",
        "--bind",
        "127.0.0.1",
    ]);
    w.wait_for_host_port(8123);
    let (out, _) = w.run_sh(
        &["--policy", "allow-all"],
        "curl -sS -m 10 http://10.1.0.10/private && curl -sS -m 10 -o /dev/null -w 'host %{http_code}\\n' http://10.0.2.2:8123/",
        T,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("\"/private\""), "{}", stdout(&out));
    assert!(stdout(&out).contains("host 200"), "{}", stdout(&out));
}

#[test]
fn policy_none_has_no_interface_but_runs_commands() {
    let w = World::new();
    let out = w.moat(
        &[
            "run",
            "--policy",
            "none",
            "--",
            "sh",
            "-c",
            "ip -o link | cut -d: -f2; echo data > /workspace/f && cat /workspace/f",
        ],
        T,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let links: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("data"))
        .map(str::trim)
        .collect();
    assert_eq!(links, ["lo"], "{text}");
    assert!(text.contains("data"));
}

#[test]
fn a_deny_by_default_file_allows_exactly_its_rule() {
    let w = World::new();
    let policy = w.file(
        "only80.toml",
        "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ndestination = \"203.0.113.10\"\nprotocol = \"tcp\"\nports = 80\n",
    );
    let script = "curl -sS -m 5 -o /dev/null -w 'a %{http_code}\\n' http://203.0.113.10/; \
                  curl -sS --connect-timeout 1 -m 2 http://203.0.113.10:8080/ && echo REACHED-8080; \
                  curl -sS --connect-timeout 1 -m 2 http://203.0.113.11/ && echo REACHED-11; true";
    let (out, events) = w.run_sh(&["--policy", policy.to_str().unwrap()], script, T);
    let text = stdout(&out);
    assert!(text.contains("a 200"), "{text}\n{}", stderr(&out));
    assert!(!text.contains("REACHED"), "{text}");
    assert_eq!(deny_events(&events, "203.0.113.11")[0]["rule"], "default");
    assert!(
        events
            .iter()
            .any(|e| e["decision"] == "deny" && e["port"] == 8080)
    );
}

#[test]
fn udp_echo_to_allowed_hosts_only() {
    let w = World::new();
    let script = r#"python3 - <<'PY'
import socket
for host in ["203.0.113.10", "10.1.0.10"]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.5)
    s.sendto(b"ping-" + host.encode(), (host, 7777))
    try:
        print("echo", s.recvfrom(100)[0].decode())
    except socket.timeout:
        print("timeout", host)
PY"#;
    let (out, events) = w.run_sh(&[], script, T);
    let text = stdout(&out);
    assert!(
        text.contains("echo ping-203.0.113.10"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(text.contains("timeout 10.1.0.10"), "{text}");
    assert!(!deny_events(&events, "10.1.0.10").is_empty());
}

#[test]
fn ipv6_http_and_dns_through_the_gateway() {
    let w = World::new();
    let dns = dns_arg();
    let script = "curl -sS -m 10 'http://[2001:db8::10]/six' && dig +short +time=2 +tries=1 api.example.test A && dig +short +time=2 +tries=1 api.example.test AAAA && dig +tcp +short +time=2 +tries=1 www.example.test A";
    let (out, _) = w.run_sh(&[&dns], script, T);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("\"/six\""), "{text}");
    let lines: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(
        lines,
        ["203.0.113.10", "2001:db8::10", "203.0.113.10"],
        "{text}"
    );
}

#[test]
fn dns_uses_the_host_resolv_conf_by_default() {
    let w = World::new();
    let (out, _) = w.run_sh(&[], "dig +short +time=2 +tries=1 other.example.test", T);
    assert_eq!(stdout(&out).trim(), "203.0.113.11", "{}", stderr(&out));
}

#[test]
fn max_connections_refuses_the_next_and_recovers() {
    let w = World::new();
    let script = r#"python3 - <<'PY'
import socket
def dial():
    s = socket.create_connection(("203.0.113.10", 2222), timeout=3)
    assert s.recv(7) == b"BANNER\n"
    return s
held = [dial() for _ in range(5)]
try:
    dial()
    print("sixth: connected")
except ConnectionRefusedError:
    print("sixth: refused")
for s in held:
    s.close()
import time
time.sleep(0.5)
dial().close()
print("after: ok")
PY"#;
    let (out, events) = w.run_sh(&["--max-connections", "5"], script, T);
    let text = stdout(&out);
    assert!(text.contains("sixth: refused"), "{text}\n{}", stderr(&out));
    assert!(text.contains("after: ok"), "{text}");
    assert!(events.iter().any(|e| e["by"] == "max_connections"));
}

/// UDP flows count toward max_connections like TCP connections: with three held, a
/// fourth (another local port) gets nothing back, and the world's echo server never sees it.
#[test]
fn max_connections_counts_udp_flows() {
    let w = World::new();
    let script = r#"python3 - <<'PY'
import socket
def flow(tag):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.5)
    s.sendto(tag.encode(), ("203.0.113.10", 7777))
    try:
        print("echo", s.recvfrom(100)[0].decode(), flush=True)
    except socket.timeout:
        print("timeout", tag, flush=True)
    return s
held = [flow("udp-flow-%d" % i) for i in range(3)]
flow("udp-flow-over")
PY"#;
    let (out, events) = w.run_sh(&["--max-connections", "3"], script, T);
    let text = stdout(&out);
    for i in 0..3 {
        assert!(
            text.contains(&format!("echo udp-flow-{i}")),
            "{text}\n{}",
            stderr(&out)
        );
    }
    assert!(text.contains("timeout udp-flow-over"), "{text}");
    let echoed = w
        .log()
        .iter()
        .filter(|e| e["server"] == "udp" && e["bytes"] == "udp-flow-over".len())
        .count();
    assert_eq!(echoed, 0, "the fourth flow reached the world");
    assert!(
        events
            .iter()
            .any(|e| e["by"] == "max_connections" && e["proto"] == "udp"),
        "{events:#?}"
    );
}

#[test]
fn denied_connections_time_out_or_are_refused_fast() {
    let w = World::new();
    let time_it = "python3 - <<'PY'\nimport socket, time\nfor port, host in [(80, '10.1.0.10'), (81, '203.0.113.10')]:\n    t = time.monotonic()\n    try:\n        socket.create_connection((host, port), timeout=2).close()\n        r = 'connected'\n    except ConnectionRefusedError:\n        r = 'refused'\n    except (socket.timeout, TimeoutError):\n        r = 'timeout'\n    print(host, port, r, round(time.monotonic() - t, 3))\nPY";
    let (out, _) = w.run_sh(&[], time_it, T);
    let text = stdout(&out);
    let line = |host: &str| {
        text.lines()
            .find(|l| l.starts_with(host))
            .unwrap_or_else(|| panic!("{text}\n{}", stderr(&out)))
            .to_owned()
    };
    assert!(line("10.1.0.10").contains("timeout"), "{text}");
    let closed = line("203.0.113.10");
    assert!(closed.contains("refused"), "{text}");
    let secs: f64 = closed.split_whitespace().last().unwrap().parse().unwrap();
    assert!(secs < 1.0, "closed port took {secs}s");

    let (out, _) = w.run_sh(&["--reject"], time_it, T);
    let text = stdout(&out);
    let denied = text
        .lines()
        .find(|l| l.starts_with("10.1.0.10"))
        .unwrap()
        .to_owned();
    assert!(denied.contains("refused"), "{text}");
    let secs: f64 = denied.split_whitespace().last().unwrap().parse().unwrap();
    assert!(secs < 1.0, "rejected connect took {secs}s");
}

#[test]
fn exit_statuses_propagate() {
    let w = World::new();
    for (script, code) in [("exit 0", 0), ("exit 3", 3), ("kill -KILL $$", 137)] {
        let started = Instant::now();
        let out = w.moat(&["run", "--", "sh", "-c", script], T);
        assert_eq!(out.status.code(), Some(code), "{script}: {}", stderr(&out));
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    let out = w.moat(&["run", "--", "/nonexistent/program"], T);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/nonexistent/program"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn ping_the_gateway_and_allowed_hosts_not_denied_ones() {
    let w = World::new();
    let script = "ping -c 1 -W 2 10.0.2.2 >/dev/null && echo gateway-ok; \
                  ping -c 2 -W 2 203.0.113.10 >/dev/null && echo public-ok; \
                  ping -c 2 -W 2 2001:db8::10 >/dev/null && echo public6-ok; \
                  ping -c 1 -W 1 10.1.0.10 >/dev/null && echo private-REACHED; true";
    let (out, events) = w.run_sh(&[], script, T);
    let text = stdout(&out);
    for want in ["gateway-ok", "public-ok", "public6-ok"] {
        assert!(text.contains(want), "{want}: {text}\n{}", stderr(&out));
    }
    assert!(!text.contains("REACHED"), "{text}");
    assert!(
        events
            .iter()
            .any(|e| e["proto"] == "icmpv4" && e["decision"] == "deny" && e["dst"] == "10.1.0.10")
    );
    assert!(
        events.iter().any(|e| e["proto"] == "icmpv4"
            && e["decision"] == "allow"
            && e["dst"] == "203.0.113.10")
    );
}

/// Connections the server closes first end cleanly in the sandbox too: moat acknowledges the
/// sandbox's last FIN before it forgets the connection, so nothing waits in LAST-ACK
/// holding a port (a job opening connections fast would run out of them).
#[test]
fn short_connections_leave_nothing_waiting_in_the_sandbox() {
    let w = World::new();
    let script = "for i in $(seq 60); do curl -s -o /dev/null -H 'Connection: close' http://203.0.113.10:8080/short; done; \
                  sleep 0.5; echo last-ack=$(ss -Htan state last-ack | wc -l) fin-wait=$(ss -Htan state fin-wait-1 | wc -l)";
    let (out, _) = w.run_sh(&[], script, T);
    let text = stdout(&out);
    // The positive side: every request arrived.
    let arrived = w.log().iter().filter(|l| l["path"] == "/short").count();
    assert_eq!(arrived, 60, "{text}\n{}", moat_e2e::stderr(&out));
    assert!(text.contains("last-ack=0 fin-wait=0"), "{text}");
}

/// A server that answers and then resets (an abortive close once moat's socket has
/// acknowledged the whole answer): the sandbox reads the whole answer, then sees the reset.
/// Its receive buffer is small and it reads only after a second, so when the reset comes
/// most of the answer is still in moat, acknowledged to the server on the sandbox's behalf.
#[test]
fn an_answer_followed_by_a_reset_is_delivered_before_the_reset() {
    let w = World::new();
    let client = "import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.settimeout(10)
s.connect(('203.0.113.10', 9003))
s.sendall(b'200000\\n')
time.sleep(1)
data, end = b'', 'eof'
try:
    while True:
        b = s.recv(65536)
        if not b:
            break
        data += b
except ConnectionResetError:
    end = 'reset'
except socket.timeout:
    end = 'timeout'
whole = (bytes(range(256)) * 1024)[:200000]
print('got', len(data), 'whole' if data == whole else 'not-whole', end)
";
    let script = format!("python3 -c \"{client}\"");
    let (out, events) = w.run_sh(&[], &script, T);
    let text = stdout(&out);
    assert!(
        text.contains("got 200000 whole reset"),
        "{text}{}",
        stderr(&out)
    );
    // The server answered in full before its reset, and moat ended the flow with the
    // server's reset as the reason.
    assert!(
        w.log()
            .iter()
            .any(|l| l["server"] == "answer-reset" && l["bytes"] == 200000),
        "{:?}",
        w.log()
    );
    assert!(
        events.iter().any(|e| {
            e["event"] == "close" && e["reason"].as_str().unwrap_or("").contains("upstream")
        }),
        "{events:#?}"
    );
}

/// A burst of datagrams that waits together in moat's socket (the world sends 40 of 1,000
/// bytes and one of 300 in one system call) reaches a sandbox program whole and in order,
/// over IPv4 and IPv6. moat hands such a run to the sandbox's kernel as one frame to split:
/// a receiver that asks for coalesced datagrams (UDP_GRO) sees them arrive together, which a
/// frame per datagram would never give it on this link.
#[test]
fn a_burst_of_datagrams_arrives_whole_and_in_order_in_few_frames() {
    let w = World::new();
    let client = r#"python3 - <<'PY'
import socket
for host in ["203.0.113.10", "2001:db8::10"]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for gro in (False, True):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        if gro:
            s.setsockopt(socket.SOL_UDP, 104, 1)  # UDP_GRO
        s.settimeout(2)
        s.sendto(b"40 1000 300", (host, 7778))
        reads, data = [], b""
        try:
            while len(data) < 40 * 1000 + 300:
                got, anc, _, _ = s.recvmsg(65536, 64)
                size = [int.from_bytes(d[:2], "little") for lvl, t, d in anc if lvl == socket.SOL_UDP and t == 104]
                reads.append((len(got), size[0] if size else len(got)))
                data += got
        except socket.timeout:
            pass
        want = b"".join(i.to_bytes(4, "big") + bytes([i % 251]) * 996 for i in range(40))
        want += (40).to_bytes(4, "big") + b"t" * 296
        if gro:
            together = max((n // max(size, 1) for n, size in reads), default=0)
            print(host, "gro", "whole" if data == want else "not-whole", "reads", len(reads), "most-together", together)
        else:
            sizes = sorted(set(n for n, _ in reads))
            print(host, "plain", "whole" if data == want else "not-whole", "datagrams", len(reads), "sizes", sizes)
PY"#;
    let (out, _) = w.run_sh(&[], client, T);
    let text = stdout(&out);
    for host in ["203.0.113.10", "2001:db8::10"] {
        assert!(
            text.contains(&format!(
                "{host} plain whole datagrams 41 sizes [300, 1000]"
            )),
            "{text}{}",
            stderr(&out)
        );
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{host} gro whole")))
            .unwrap_or_else(|| panic!("{text}{}", stderr(&out)));
        let together: usize = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(together > 1, "{line}");
    }
    // The world sent each burst (four of them) as asked.
    let bursts = w
        .log()
        .iter()
        .filter(|l| l["server"] == "udp-burst")
        .count();
    assert_eq!(bursts, 4, "{:?}", w.log());
}

/// The other way: a sandbox program's run of datagrams (21, sent in one UDP_SEGMENT call,
/// so they wait together in the TAP) reaches the world whole and in order, over IPv4 and
/// IPv6, and leaves moat as a run: the world's UDP_GRO socket takes several at once.
#[test]
fn a_run_of_datagrams_from_the_sandbox_arrives_whole_and_in_order() {
    let w = World::new();
    let client = r#"python3 - <<'PY'
import socket
body = b"".join(i.to_bytes(4, "big") + bytes([i % 251]) * 996 for i in range(20))
body += (20).to_bytes(4, "big") + bytes([20]) * 296
for host in ["203.0.113.10", "2001:db8::10"]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.sendmsg([body], [(socket.SOL_UDP, 103, (1000).to_bytes(2, "little"))], 0, (host, 7779))
    print("sent", host)
PY
sleep 1"#;
    let (out, _) = w.run_sh(&[], client, T);
    assert!(
        stdout(&out).contains("sent 2001:db8::10"),
        "{}",
        stderr(&out)
    );
    // The sink logs what it read with no answer to wait for: give both families' lines
    // time to land (bounded), then hold them to every count below.
    let sum = |log: &[Value], v6: bool| -> u64 {
        log.iter()
            .filter(|l| {
                l["server"] == "udp-gro" && l["client"].as_str().unwrap_or("").contains(':') == v6
            })
            .map(|l| l["bytes"].as_u64().unwrap_or(0))
            .sum()
    };
    let log = w.log_once(Duration::from_secs(10), |log| {
        sum(log, false) >= 20 * 1000 + 300 && sum(log, true) >= 20 * 1000 + 300
    });
    for (v6, family) in [(false, "IPv4"), (true, "IPv6")] {
        let reads: Vec<&Value> = log
            .iter()
            .filter(|l| {
                l["server"] == "udp-gro" && l["client"].as_str().unwrap_or("").contains(':') == v6
            })
            .collect();
        let bytes: u64 = reads.iter().map(|l| l["bytes"].as_u64().unwrap()).sum();
        assert_eq!(bytes, 20 * 1000 + 300, "{family}: {reads:?}");
        assert!(
            reads.iter().all(|l| l["well_formed"] == true),
            "{family}: {reads:?}"
        );
        // In order: each read starts where the last ended.
        let mut next = 0;
        for l in &reads {
            assert_eq!(l["first"].as_u64().unwrap(), next, "{family}: {reads:?}");
            next += l["datagrams"].as_u64().unwrap();
        }
        assert_eq!(next, 21, "{family}: {reads:?}");
        let most = reads.iter().map(|l| l["datagrams"].as_u64().unwrap()).max();
        assert!(
            most > Some(1),
            "{family}: every datagram came alone: {reads:?}"
        );
    }
}
