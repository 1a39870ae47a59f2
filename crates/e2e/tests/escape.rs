//! The escape suite: ways out through the packet path that a hostile review tried — those
//! it found open and those that held (rebinding, CNAME chains, other resolvers, DNS over
//! TLS, fragments, connection floods, UDP ports), so they stay held. Each
//! test asserts what the target received (the world's server log, not only the client's
//! error), that the audit log names the denial, and — as a control — that the same path
//! carries what the policy allows.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use moat_e2e::{World, moat_bin, stderr, stdout};

const T: Duration = Duration::from_secs(60);

/// A script that sends TLS ClientHellos for `attempts` (`NAME:split` or `NAME:whole`) to
/// 203.0.113.10:443, each as one record or cut into several, after a lookup of
/// api.example.test; each says whether the connection was reset. The client is `moat
/// selftest`'s split-ClientHello attacker (`moat __probe hello`), shown read-only inside.
fn hello_script(attempts: &[&str]) -> String {
    let bin = moat_bin().display().to_string();
    let mut script = format!("{bin} __probe dns api.example.test >/dev/null; ");
    for attempt in attempts {
        let (name, how) = attempt.split_once(':').unwrap();
        script.push_str(&format!(
            "{bin} __probe hello 203.0.113.10:443 {name} {how}; "
        ));
    }
    script
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

/// Runs `moat run ARGS` with split and whole hellos naming `forbidden` and a split one
/// naming `permitted`; checks that the forbidden ones were reset and never reached the
/// server, while the permitted one arrived whole (control). Returns the audit events.
fn split_hellos(args: &[&str], forbidden: &str, permitted: &str) -> Vec<serde_json::Value> {
    let w = World::new();
    let bin = moat_bin().display().to_string();
    let mut args = args.to_vec();
    args.extend(["--ro", bin.as_str()]);
    let (out, events) = w.run_sh(
        &args,
        &hello_script(&[
            &format!("{forbidden}:split"),
            &format!("{forbidden}:whole"),
            &format!("{permitted}:split"),
        ]),
        T,
    );
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{forbidden} split reset")),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(text.contains(&format!("{forbidden} whole reset")), "{text}");
    assert!(
        text.contains(&format!("{permitted} split closed")),
        "{text}"
    );
    let received = names_received(&w);
    assert!(received.contains(&permitted.to_owned()), "{received:?}");
    assert!(!received.contains(&forbidden.to_owned()), "{received:?}");
    events
}

/// A ClientHello split over two records (the server name in the second) is read whole:
/// a deny rule for the name resets it and the server never sees the name.
#[test]
fn a_split_client_hello_cannot_carry_a_denied_name() {
    let events = split_hellos(
        &["--deny", "blocked.example.test"],
        "blocked.example.test",
        "fine.example.test",
    );
    let denials = events
        .iter()
        .filter(|e| e["event"] == "connect" && e["decision"] == "deny")
        .filter(|e| e["sni"] == "blocked.example.test")
        .map(moat_e2e::times)
        .sum::<u64>();
    assert_eq!(denials, 2, "{events:#?}");
}

/// Under allow-only domain rules the server name must agree with the rule, split or not.
#[test]
fn a_split_client_hello_cannot_leave_an_allow_list() {
    let events = split_hellos(
        &["--policy", "none", "--allow", "api.example.test:443/tcp"],
        "elsewhere.example.test",
        "api.example.test",
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
            .any(|e| e["event"] == "connect" && e["decision"] == "deny" && e["by"] == "sni"),
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

/// A server on the host namespace, bound to every interface, that logs the local address
/// of each connection it accepts.
const HOST_SERVER: &str = r#"
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 8089))
s.listen(64)
while True:
    c, _ = s.accept()
    log.write(c.getsockname()[0] + "\n")
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhost\n")
    c.close()
"#;

/// Public-looking addresses on the host namespace's interface (documentation ranges: they
/// stand for a host with a public address); the interface's name.
fn add_public_host_addresses(w: &World) -> String {
    let dev = format!("vh{}", w.host.trim_start_matches("moath"));
    for a in ["198.51.100.200/32", "2001:db8:ffff::200/128"] {
        let fam = if a.contains(':') { "-6" } else { "-4" };
        moat_e2e::sh(
            &[
                "ip", "-n", &w.host, fam, "addr", "add", a, "dev", &dev, "nodad",
            ]
            .into_iter()
            .filter(|x| !(fam == "-4" && *x == "nodad"))
            .collect::<Vec<_>>(),
        );
    }
    dev
}

/// The host's own addresses are the `Loopback` group: a host service bound to every
/// interface is out of reach by each of them under the default policy — addresses added
/// while moat runs too — and reachable when a rule names it (control).
#[test]
fn the_hosts_own_addresses_are_loopback() {
    let mut w = World::new();
    let dev = add_public_host_addresses(&w);
    let log = w.dir.join("host-server.log");
    let server = w.file("host_server.py", HOST_SERVER);
    w.spawn_in_host(&["python3", server.to_str().unwrap(), log.to_str().unwrap()]);
    w.wait_for_host_port(8089);
    let work = w.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let curl = |a: &str| {
        let u = if a.contains(':') {
            format!("[{a}]")
        } else {
            a.to_owned()
        };
        format!("echo {a} $(curl -sS -m 3 http://{u}:8089/ 2>/dev/null || echo failed); ")
    };
    // The last address is added on the host after the command started.
    let script = format!(
        "{}{}{}while [ ! -f {w}/go ]; do sleep 0.05; done; {}",
        curl("198.51.100.200"),
        curl("2001:db8:ffff::200"),
        curl("172.31.0.3"),
        curl("198.51.100.201"),
        w = work.display()
    );
    let host = w.host.clone();
    let dev2 = dev.clone();
    let work2 = work.clone();
    let adder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        moat_e2e::sh(&[
            "ip",
            "-n",
            &host,
            "addr",
            "add",
            "198.51.100.201/32",
            "dev",
            &dev2,
        ]);
        std::thread::sleep(Duration::from_millis(300));
        std::fs::write(work2.join("go"), "").unwrap();
    });
    let (out, events) = w.run_sh(&["--reject", "-w", work.to_str().unwrap()], &script, T);
    adder.join().unwrap();
    let text = stdout(&out);
    for a in [
        "198.51.100.200",
        "2001:db8:ffff::200",
        "172.31.0.3",
        "198.51.100.201",
    ] {
        assert!(
            text.contains(&format!("{a} failed")),
            "{a}: {text}\n{}",
            stderr(&out)
        );
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "connect" && e["decision"] == "deny" && e["dst"] == a),
            "no deny event for {a}: {events:#?}"
        );
    }
    let reached = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        reached.trim().is_empty(),
        "the host service was reached: {reached}"
    );
    // Control: named by a rule, the same service answers on the same address.
    let (out, _) = w.run_sh(
        &["--allow", "198.51.100.200:8089/tcp"],
        &curl("198.51.100.200"),
        T,
    );
    assert!(
        stdout(&out).contains("198.51.100.200 host"),
        "{}",
        stdout(&out)
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("198.51.100.200")
    );
}

/// A UDP service of the host, bound to every interface, answers on none of the host's own
/// addresses under the default policy (they are loopback, UDP as TCP), and answers when a
/// rule names it (control).
#[test]
fn udp_to_the_hosts_own_addresses_is_loopback() {
    let mut w = World::new();
    add_public_host_addresses(&w);
    let log = w.dir.join("host-udp.log");
    let server = w.file(
        "host_udp.py",
        r#"
import socket, sys
log = open(sys.argv[1], "a", buffering=1)
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 8090))
while True:
    data, peer = s.recvfrom(2048)
    log.write(peer[0] + " " + data.decode(errors="replace") + "\n")
    s.sendto(b"host:" + data, peer)
"#,
    );
    w.spawn_in_host(&["python3", server.to_str().unwrap(), log.to_str().unwrap()]);
    w.wait_for_host_port(8090);
    let probe = |addrs: &[&str]| {
        let list: Vec<String> = addrs.iter().map(|a| format!("{a:?}")).collect();
        format!(
            r#"python3 -c '
import socket
for a in [{}]:
    fam = socket.AF_INET6 if ":" in a else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(1.5)
    try:
        s.sendto(b"probe", (a, 8090))
        print(a, s.recv(100).decode(), flush=True)
    except OSError as e:
        print(a, "failed", flush=True)
'"#,
            list.join(",")
        )
    };
    let addrs = ["198.51.100.200", "2001:db8:ffff::200", moat_e2e::HOST_ADDR];
    let (out, events) = w.run_sh(&[], &probe(&addrs), T);
    let text = stdout(&out);
    for a in addrs {
        assert!(
            text.contains(&format!("{a} failed")),
            "{a}: {text}\n{}",
            stderr(&out)
        );
        assert!(
            events.iter().any(|e| e["event"] == "connect"
                && e["decision"] == "deny"
                && e["proto"] == "udp"
                && e["dst"] == a),
            "no UDP deny event for {a}: {events:#?}"
        );
    }
    assert!(
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .trim()
            .is_empty(),
        "the host's UDP service was reached"
    );
    // Control: named by a rule, the same service answers on the same address.
    let (out, _) = w.run_sh(
        &["--allow", "198.51.100.200:8090/udp"],
        &probe(&["198.51.100.200"]),
        T,
    );
    assert!(
        stdout(&out).contains("198.51.100.200 host:probe"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// moat is the only author of what goes upstream: a query with answer, authority and
/// additional records, EDNS options, trailing bytes or 51 KB of padding reaches the
/// resolver as one question and, at most, an OPT record with nothing in it — and is still
/// answered (control).
#[test]
fn dns_queries_are_written_anew_upstream() {
    let w = World::new();
    let script = r#"python3 - <<'PY'
import socket, struct
def name(n):
    return b"".join(bytes([len(l)]) + l.encode() for l in n.split(".")) + b"\0"
q = name("www.example.test") + struct.pack(">HH", 1, 1)
smuggle = name("EXFIL.smuggle.test") + struct.pack(">HHIH", 1, 1, 60, 4) + b"\xc0\x00\x02\x01"
option = struct.pack(">HH", 65001, 9) + b"EXFIL-opt"
opt = b"\0" + struct.pack(">HHIH", 41, 4096, 0x8000, len(option)) + option
msg = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 1, 1, 2) + q + smuggle + smuggle + smuggle + opt + b"EXFIL-trailing"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(msg, ("10.0.2.2", 53))
r = u.recv(4096)
print("udp answers", struct.unpack(">H", r[6:8])[0], "rcode", r[3] & 15)
big = struct.pack(">HHHHHH", 0x4343, 0x0100, 1, 0, 0, 0) + q + b"EXFIL" * 10200
t = socket.create_connection(("10.0.2.2", 53), timeout=5)
t.sendall(struct.pack(">H", len(big)) + big)
n = struct.unpack(">H", t.recv(2))[0]
r = b""
while len(r) < n:
    r += t.recv(n - len(r))
print("tcp answers", struct.unpack(">H", r[6:8])[0], "rcode", r[3] & 15)
PY"#;
    let (out, _) = w.run_sh(&[], script, T);
    let text = stdout(&out);
    assert!(
        text.contains("udp answers 1 rcode 0"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(text.contains("tcp answers 1 rcode 0"), "{text}");
    let raw: Vec<serde_json::Value> = w
        .log()
        .into_iter()
        .filter(|e| e["server"] == "dns-raw")
        .collect();
    assert!(raw.len() >= 2, "control: the resolver was asked: {raw:?}");
    for e in &raw {
        assert_eq!(e["marker"], false, "{e}");
        let counts: Vec<u64> = e["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        assert!(counts[..3] == [1, 0, 0] && counts[3] <= 1, "{e}");
        assert!(e["bytes"].as_u64().unwrap() < 100, "{e}");
    }
}

/// Held by the review, kept held: private, metadata, CGNAT and host-loopback targets in
/// other spellings (integer, hex, octal, IPv4-mapped, NAT64) reach nothing under the
/// default policy; the public server in the same spellings does (control).
#[test]
fn inward_targets_in_every_spelling_reach_nothing() {
    let w = World::new();
    let denied = [
        "http://167837706/",           // 10.1.0.10
        "http://0x0a01000a/",          // 10.1.0.10
        "http://012.1.0.012/",         // 10.1.0.10
        "http://[::ffff:a01:a]/",      // 10.1.0.10, IPv4 on the wire
        "http://[64:ff9b::a01:a]/",    // 10.1.0.10 through NAT64
        "http://2852039166/",          // 169.254.169.254
        "http://0xa9.0xfe.0xa9.0xfe/", // 169.254.169.254
        "http://0x64400101/",          // 100.64.1.1
        "http://0xa000202:8123/",      // 10.0.2.2: the host's loopback
    ];
    let allowed = ["http://3405803786/", "http://0xcb.0.0x71.0xa/"]; // 203.0.113.10
    let script: String = denied
        .iter()
        .chain(&allowed)
        .map(|u| {
            format!("echo {u} $(curl -sS -m 5 -o /dev/null -w '%{{http_code}}' {u} 2>/dev/null || echo failed); ")
        })
        .collect();
    let (out, events) = w.run_sh(&["--reject"], &script, T);
    let text = stdout(&out);
    for u in allowed {
        assert!(
            text.contains(&format!("{u} 200")),
            "control {u}: {text}\n{}",
            stderr(&out)
        );
    }
    for u in denied {
        assert!(!text.contains(&format!("{u} 200")), "{u}: {text}");
    }
    let reached: Vec<String> = w
        .log()
        .iter()
        .filter(|e| e["server"] == "http")
        .filter_map(|e| e["local"].as_str().map(str::to_owned))
        .collect();
    assert!(
        reached.iter().any(|l| l.ends_with("203.0.113.10")),
        "control: {reached:?}"
    );
    for inward in ["10.1.0.10", "169.254.169.254", "100.64.1.1"] {
        assert!(
            !reached.iter().any(|l| l.ends_with(inward)),
            "{inward} reached: {reached:?}"
        );
    }
    let denials = events
        .iter()
        .filter(|e| e["event"] == "connect" && e["decision"] == "deny")
        .map(moat_e2e::times)
        .sum::<u64>();
    assert!(
        denials >= denied.len() as u64,
        "{denials} denials: {events:#?}"
    );
}

/// Python for inside the sandbox: opens `N` connections to the world's flood server
/// (which sends and never reads), sends on each until nothing more is taken, never reads,
/// says how many it holds, and keeps them a few seconds.
const STALL_CLIENT: &str = r#"
import socket, sys, time
n = int(sys.argv[1])
socks = [socket.create_connection(("203.0.113.10", 9002), timeout=5) for _ in range(n)]
for s in socks:
    s.setblocking(False)
chunk, quiet, start = bytes(65536), 0, time.time()
while quiet < 20 and time.time() - start < 20:
    moved = 0
    for s in socks:
        for _ in range(256):
            try:
                moved += s.send(chunk)
            except BlockingIOError:
                break
    quiet = quiet + 1 if moved == 0 else 0
    time.sleep(0.05)
print("stalled", len(socks), flush=True)
time.sleep(2)
"#;

#[test]
fn connections_whose_far_side_never_reads_stay_within_the_buffer_budget() {
    // 150 connections that fill both ways: without a budget moat's socket buffers would
    // hold a megabyte or more each (the review measured ~2 GiB for 1,024).
    let w = World::new();
    let script = format!("python3 - 150 <<'PY'\n{STALL_CLIENT}PY");
    let run = w.spawn_moat(&[
        "run",
        "--max-buffer-memory",
        "16m",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let peak = moat_e2e::peak_rss_kib(run.id(), T);
    let out = run.finish();
    assert!(
        stdout(&out).contains("stalled 150"),
        "every connection was opened and filled: {} {}",
        stdout(&out),
        stderr(&out)
    );
    // The 16 MiB of buffers, plus the process itself.
    assert!(peak > 0 && peak < 32 * 1024, "moat's peak RSS {peak} KiB");
    // The path was exercised: the flood server sent on every connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let flooded = loop {
        let sent: Vec<u64> = w
            .log()
            .iter()
            .filter(|e| e["server"] == "flood")
            .filter_map(|e| e["bytes"].as_u64())
            .collect();
        if sent.len() >= 150 || std::time::Instant::now() > deadline {
            break sent;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(flooded.len(), 150, "{flooded:?}");
    assert!(flooded.iter().all(|&b| b >= 64 * 1024), "{flooded:?}");
    // The cap is checked: too small or not a size is a usage error that says what to do.
    for (bad, says) in [("1m", "at least 4m"), ("lots", "a size such as 64m")] {
        let out = w.moat(&["run", "--max-buffer-memory", bad, "--", "true"], T);
        assert!(
            !out.status.success() && stderr(&out).contains(says),
            "{bad}: {:?} {}",
            out.status,
            stderr(&out)
        );
    }
}

#[test]
fn dns_bypass_transports_are_refused() {
    let w = World::new();
    let script = "python3 - <<'PY'\nimport socket\ntry:\n    s = socket.create_connection(('203.0.113.10', 853), timeout=3)\n    print('dot', 'connected', s.recv(7))\nexcept OSError as e:\n    print('dot', 'refused', type(e).__name__)\nfor port in [853, 5353, 5355, 137]:\n    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    u.settimeout(2)\n    u.connect(('203.0.113.10', port))\n    u.send(b'query')\n    try:\n        u.recv(100)\n        print('udp', port, 'answered')\n    except socket.timeout:\n        print('udp', port, 'timeout')\n    except OSError as e:\n        print('udp', port, 'refused')\nPY";
    let (out, events) = w.run_sh(&["--policy", "allow-all"], script, T);
    let text = stdout(&out);
    assert!(text.contains("dot refused"), "{text}\n{}", stderr(&out));
    for port in [853, 5353, 5355, 137] {
        assert!(
            text.contains(&format!("udp {port} refused")),
            "{port}: {text}"
        );
    }
    let bypass: u64 = events
        .iter()
        .filter(|e| e["by"] == "dns_bypass")
        .map(moat_e2e::times)
        .sum();
    assert_eq!(bypass, 5, "{events:?}");
    assert!(
        !w.log().iter().any(|l| l["server"] == "banner"),
        "DoT reached the world"
    );
    // A rule that names port 853 explicitly allows DNS over TLS.
    let (out, _) = w.run_sh(
        &["--policy", "allow-all", "--allow", "203.0.113.10:853/tcp"],
        script,
        T,
    );
    assert!(
        stdout(&out).contains("dot connected"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
}

/// Shell that prints "LABEL CODE" for an HTTP GET of each (label, curl arguments) pair,
/// CODE being the status or "failed".
fn http_codes(requests: &[(&str, &str)]) -> String {
    requests
        .iter()
        .map(|(label, args)| {
            format!("echo {label} $(curl -sS -m 5 -o /dev/null -w '%{{http_code}}' {args} 2>/dev/null || echo failed); ")
        })
        .collect()
}

/// The world's HTTP requests as (server address, Host header).
fn http_arrivals(w: &World) -> Vec<(String, String)> {
    w.log()
        .iter()
        .filter(|e| e["server"] == "http")
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
            (field("local"), field("host"))
        })
        .collect()
}

#[test]
fn rebinding_cannot_lead_an_allowed_name_inward() {
    // The policy allows the names themselves. Answers pointing inward are dropped, and the
    // inward address stays unreachable even under an allowed name: domain rules hold only
    // for addresses DNS answered.
    let w = World::new();
    let script = http_codes(&[
        ("private", "http://private.example.test:8080/"),
        ("mixed", "http://mixed.example.test:8080/"),
        (
            "direct",
            "-H 'Host: private.example.test' http://10.1.0.10:8080/",
        ),
        ("api", "http://api.example.test:8080/"),
    ]);
    let allows: Vec<String> = ["private", "mixed", "api"]
        .iter()
        .map(|name| format!("{name}.example.test:8080"))
        .collect();
    let mut args = vec!["--policy", "none", "--reject"];
    for allow in &allows {
        args.extend(["--allow", allow.as_str()]);
    }
    let (out, events) = w.run_sh(&args, &script, T);
    let text = stdout(&out);
    for control in ["mixed 200", "api 200"] {
        assert!(
            text.contains(control),
            "{control}: {text}\n{}",
            stderr(&out)
        );
    }
    for denied in ["private 200", "direct 200"] {
        assert!(!text.contains(denied), "{denied}: {text}");
    }
    let arrivals = http_arrivals(&w);
    assert!(
        arrivals
            .iter()
            .any(|(local, host)| local.ends_with("203.0.113.10")
                && host == "mixed.example.test:8080"),
        "control: {arrivals:?}"
    );
    assert!(
        !arrivals
            .iter()
            .any(|(local, _)| local.ends_with("10.1.0.10")),
        "{arrivals:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["blocked_by"] == "rebind_protection"),
        "{events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "connect" && e["decision"] == "deny" && e["dst"] == "10.1.0.10"),
        "{events:#?}"
    );
}

/// The audit log has a `dns` event for `name` blocked by `by`.
fn assert_dns_blocked(events: &[serde_json::Value], name: &str, by: &str) {
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "dns" && e["name"] == name && e["blocked_by"] == by),
        "no dns event for {name} blocked by {by}: {events:#?}"
    );
}

#[test]
fn a_cname_chain_cannot_launder_a_blocked_name() {
    // alias.example.test is a CNAME for a name under a blocked suffix; clean-alias for an
    // unblocked one.
    let w = World::new();
    let script = http_codes(&[
        ("alias", "http://alias.example.test:8080/"),
        ("clean", "http://clean-alias.example.test:8080/"),
    ]);
    let (out, events) = w.run_sh(
        &["--block-domain-suffix", ".tracking.example.test"],
        &script,
        T,
    );
    let text = stdout(&out);
    assert!(
        text.contains("clean 200"),
        "control: {text}\n{}",
        stderr(&out)
    );
    assert!(!text.contains("alias 200"), "{text}");
    let arrivals = http_arrivals(&w);
    assert!(
        arrivals
            .iter()
            .any(|(_, host)| host == "clean-alias.example.test:8080"),
        "control: {arrivals:?}"
    );
    assert!(
        !arrivals.iter().any(|(_, host)| host.starts_with("alias.")),
        "{arrivals:?}"
    );
    assert_dns_blocked(&events, "alias.example.test", "cname");
}

#[test]
fn lookups_sent_to_any_resolver_are_answered_by_moat() {
    // Every address answers DNS in the world, so a query moat let through to the address
    // the sandbox chose would show up there.
    let w = World::new();
    let mut script = String::new();
    for server in ["203.0.113.10", "2001:db8::10"] {
        for transport in ["", "+tcp"] {
            for name in ["ads.example.test", "www.example.test"] {
                script += &format!(
                    "echo {server} {transport} {name} $(dig @{server} {transport} +time=3 +tries=1 +short {name} A | tr '\\n' ' ') $(dig @{server} {transport} +time=3 +tries=1 {name} A | sed -n 's/.*status: \\([A-Z]*\\).*/\\1/p'); "
                );
            }
        }
    }
    let (out, events) = w.run_sh(&["--block-domain", "ads.example.test"], &script, T);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8, "{text}\n{}", stderr(&out));
    for l in lines {
        if l.contains("www.example.test") {
            assert!(l.contains("203.0.113.10 NOERROR"), "control: {l}");
        } else {
            assert!(l.ends_with("NXDOMAIN"), "{l}");
        }
    }
    let log = w.log();
    assert!(
        !log.iter()
            .any(|e| e["server"] == "dns-raw" && e["local"] != moat_e2e::WORLD_DNS),
        "a query reached the resolver the sandbox chose: {log:?}"
    );
    assert!(
        log.iter()
            .any(|e| e["server"] == "dns" && e["name"] == "www.example.test"),
        "control: the allowed name was asked upstream"
    );
    assert!(
        !log.iter()
            .any(|e| e["server"] == "dns" && e["name"] == "ads.example.test")
    );
    assert_dns_blocked(&events, "ads.example.test", "block_domain");
}

#[test]
fn ip_fragments_go_nowhere() {
    // Datagrams larger than the link's MTU leave the sandbox's kernel as fragments, which
    // moat drops (and counts); they are not flows, so the audit log has nothing to name.
    // The same socket's small datagram is the control.
    let w = World::new();
    let script = r#"python3 - <<'PY'
import socket
for family, addr in [(socket.AF_INET, "203.0.113.10"), (socket.AF_INET6, "2001:db8::10")]:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.settimeout(2)
    if family == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER: IP_PMTUDISC_DONT
    s.connect((addr, 7777))
    for size in [3000, 5]:
        s.send(b"F" * size)
        try:
            print(addr, size, "answered", len(s.recv(4000)), flush=True)
        except socket.timeout:
            print(addr, size, "timeout", flush=True)
PY"#;
    let (out, events) = w.run_sh(&["--mtu", "1500"], script, T);
    let text = stdout(&out);
    for addr in ["203.0.113.10", "2001:db8::10"] {
        assert!(
            text.contains(&format!("{addr} 5 answered 5")),
            "control {addr}: {text}\n{}",
            stderr(&out)
        );
        assert!(
            text.contains(&format!("{addr} 3000 timeout")),
            "{addr}: {text}"
        );
    }
    let sizes: Vec<u64> = w
        .log()
        .iter()
        .filter(|e| e["server"] == "udp")
        .filter_map(|e| e["bytes"].as_u64())
        .collect();
    assert_eq!(sizes, [5, 5], "what the world's UDP echo received");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "connect" && e["proto"] == "udp"),
        "{events:#?}"
    );
}

#[test]
fn a_flood_of_connections_is_held_to_max_connections() {
    let w = World::new();
    let script = r#"python3 - <<'PY'
import socket
held, refused = [], 0
for _ in range(60):
    try:
        held.append(socket.create_connection(("203.0.113.10", 2222), timeout=3))
    except OSError:
        refused += 1
print("held", len(held), "refused", refused, flush=True)
PY"#;
    let (out, events) = w.run_sh(&["--max-connections", "20"], script, T);
    let text = stdout(&out);
    assert!(
        text.contains("held 20 refused 40"),
        "{text}\n{}",
        stderr(&out)
    );
    let arrived = w
        .log()
        .iter()
        .filter(|e| e["server"] == "banner" && e["port"] == 2222)
        .count();
    assert_eq!(arrived, 20, "connections the world accepted");
    let limited = events
        .iter()
        .filter(|e| e["decision"] == "deny" && e["by"] == "max_connections")
        .map(moat_e2e::times)
        .sum::<u64>();
    assert!(limited >= 40, "{limited} denials: {events:#?}");
}

#[test]
fn udp_reaches_only_the_ports_and_hosts_a_rule_names() {
    let w = World::new();
    let script = r#"python3 - <<'PY'
import socket
for addr in ["203.0.113.10", "203.0.113.11"]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect((addr, 7777))
    s.send(b"ping")
    try:
        print(addr, "answered", s.recv(100).decode(), flush=True)
    except OSError as e:
        print(addr, "failed", type(e).__name__, flush=True)
PY
echo tcp $(curl -sS -m 5 -o /dev/null -w '%{http_code}' http://203.0.113.10:8080/ 2>/dev/null || echo failed)"#;
    let (out, events) = w.run_sh(
        &[
            "--policy",
            "none",
            "--allow",
            "203.0.113.10:7777/udp",
            "--reject",
        ],
        script,
        T,
    );
    let text = stdout(&out);
    assert!(
        text.contains("203.0.113.10 answered ping"),
        "control: {text}\n{}",
        stderr(&out)
    );
    assert!(text.contains("203.0.113.11 failed"), "{text}");
    assert!(!text.contains("tcp 200"), "{text}");
    let log = w.log();
    let udp: Vec<&str> = log
        .iter()
        .filter(|e| e["server"] == "udp")
        .filter_map(|e| e["local"].as_str())
        .collect();
    assert_eq!(udp, ["203.0.113.10"], "where UDP arrived");
    assert!(!log.iter().any(|e| e["server"] == "http"), "TCP arrived");
    for (proto, dst) in [("udp", "203.0.113.11"), ("tcp", "203.0.113.10")] {
        assert!(
            events.iter().any(|e| e["event"] == "connect"
                && e["decision"] == "deny"
                && e["proto"] == proto
                && e["dst"] == dst),
            "{proto} {dst}: {events:#?}"
        );
    }
}
