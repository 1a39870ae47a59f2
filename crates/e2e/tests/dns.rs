//! DNS interception and domain rules, end to end with dig, curl and python3.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use moat_e2e::{WORLD_DNS, World, stderr, stdout};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn dns() -> String {
    format!("--dns={WORLD_DNS}")
}

/// `dig` printing one line per query: "NAME TYPE STATUS answers...".
fn digs(queries: &[(&str, &str)], extra: &str) -> String {
    queries
        .iter()
        .map(|(name, qtype)| {
            format!(
                "printf '%s %s %s %s\\n' '{name}' '{qtype}' \"$(dig {extra} +time=3 +tries=1 +noall +comments '{name}' {qtype} | sed -n 's/.*status: \\([A-Z]*\\).*/\\1/p')\" \"$(dig {extra} +time=3 +tries=1 +short '{name}' {qtype} | tr '\\n' ' ')\"; "
            )
        })
        .collect()
}

fn line<'a>(text: &'a str, name: &str, qtype: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(&format!("{name} {qtype} ")))
        .unwrap_or_else(|| panic!("no line for {name} {qtype} in:\n{text}"))
}

fn queried(w: &World, name: &str) -> bool {
    w.log()
        .iter()
        .any(|l| l["server"] == "dns" && l["name"] == name)
}

#[test]
fn block_domain_answers_nxdomain_for_every_type_and_spelling() {
    let w = World::new();
    let q = [
        ("ads.example.test", "A"),
        ("ads.example.test", "AAAA"),
        ("ads.example.test", "TXT"),
        ("ads.example.test", "HTTPS"),
        ("ADS.Example.TEST", "A"),
        ("ads.example.test.", "AAAA"),
        ("x.ads.example.test", "A"),
    ];
    let (out, events) = w.run_sh(
        &[&dns(), "--block-domain", "ads.example.test"],
        &digs(&q, ""),
        T,
    );
    let text = stdout(&out);
    for (name, qtype) in &q[..6] {
        assert!(
            line(&text, name, qtype).contains("NXDOMAIN"),
            "{name} {qtype}: {text}\n{}",
            stderr(&out)
        );
    }
    let sub = line(&text, "x.ads.example.test", "A");
    assert!(
        sub.contains("NOERROR") && sub.contains("203.0.113.10"),
        "{sub}"
    );
    assert!(
        !queried(&w, "ads.example.test"),
        "a blocked name reached the upstream resolver"
    );
    let blocked: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "dns" && e["decision"] == "deny")
        .collect();
    assert!(
        blocked.iter().all(|e| e["blocked_by"] == "block_domain"),
        "{blocked:?}"
    );
    assert!(blocked.iter().any(|e| e["qtype"] == "HTTPS"));
}

#[test]
fn block_domain_suffix_blocks_strictly_below() {
    let w = World::new();
    let q = [
        ("a.tracking.example.test", "A"),
        ("b.c.tracking.example.test", "A"),
        ("tracking.example.test", "A"),
        ("eviltracking.example.test", "A"),
        ("alias.example.test", "A"),
        ("clean-alias.example.test", "A"),
    ];
    let (out, _) = w.run_sh(
        &[&dns(), "--block-domain-suffix", ".tracking.example.test"],
        &digs(&q, ""),
        T,
    );
    let text = stdout(&out);
    assert!(
        line(&text, "a.tracking.example.test", "A").contains("NXDOMAIN"),
        "{text}"
    );
    assert!(
        line(&text, "b.c.tracking.example.test", "A").contains("NXDOMAIN"),
        "{text}"
    );
    assert!(
        line(&text, "tracking.example.test", "A").contains("203.0.113.10"),
        "{text}"
    );
    assert!(
        line(&text, "eviltracking.example.test", "A").contains("203.0.113.10"),
        "{text}"
    );
    // A CNAME chain through a blocked name is blocked; a clean one resolves.
    assert!(
        line(&text, "alias.example.test", "A").contains("NXDOMAIN"),
        "{text}"
    );
    assert!(
        line(&text, "clean-alias.example.test", "A").contains("203.0.113.10"),
        "{text}"
    );
    assert!(!queried(&w, "a.tracking.example.test") && !queried(&w, "b.c.tracking.example.test"));
}

#[test]
fn blocks_hold_over_tcp_and_at_any_resolver_address() {
    let w = World::new();
    let mut script = digs(
        &[("ads.example.test", "A"), ("www.example.test", "A")],
        "+tcp",
    );
    script += &digs(
        &[("ads.example.test", "AAAA"), ("www.example.test", "AAAA")],
        "@198.51.100.99",
    );
    let (out, events) = w.run_sh(&[&dns(), "--block-domain", "ads.example.test"], &script, T);
    let text = stdout(&out);
    assert!(
        line(&text, "ads.example.test", "A").contains("NXDOMAIN"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(
        line(&text, "www.example.test", "A").contains("203.0.113.10"),
        "{text}"
    );
    assert!(
        line(&text, "ads.example.test", "AAAA").contains("NXDOMAIN"),
        "{text}"
    );
    assert!(
        line(&text, "www.example.test", "AAAA").contains("2001:db8::10"),
        "{text}"
    );
    assert!(!queried(&w, "ads.example.test"));
    // The query to 198.51.100.99 was answered by moat, never sent there.
    assert!(
        !w.log()
            .iter()
            .any(|l| l["server"] == "dns-raw" && l["local"] == "198.51.100.99")
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "dns" && e["name"] == "www.example.test")
    );
}

#[test]
fn rebinding_is_blocked_unless_turned_off_or_explicitly_allowed() {
    let w = World::new();
    let q = [
        ("private.example.test", "A"),
        ("loopback.example.test", "A"),
        ("metadata.example.test", "A"),
        ("mixed.example.test", "A"),
    ];
    let (out, events) = w.run_sh(&[&dns()], &digs(&q, ""), T);
    let text = stdout(&out);
    for name in [
        "private.example.test",
        "loopback.example.test",
        "metadata.example.test",
    ] {
        assert!(
            line(&text, name, "A").contains("NXDOMAIN"),
            "{name}: {text}\n{}",
            stderr(&out)
        );
    }
    let mixed = line(&text, "mixed.example.test", "A");
    assert!(
        mixed.contains("203.0.113.10") && !mixed.contains("10.1.0.10"),
        "{mixed}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["blocked_by"] == "rebind_protection")
    );

    let (out, _) = w.run_sh(
        &[&dns(), "--no-dns-rebind-protection"],
        &digs(&q[..1], ""),
        T,
    );
    assert!(
        line(&stdout(&out), "private.example.test", "A").contains("10.1.0.10"),
        "{}",
        stdout(&out)
    );

    let exempt = [
        "--allow",
        "10.1.0.0/24",
        "--allow",
        "127.0.0.0/8",
        "--allow",
        "169.254.169.254",
    ];
    let mut args = vec![dns()];
    args.extend(exempt.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, _) = w.run_sh(&args, &digs(&q[..3], ""), T);
    let text = stdout(&out);
    assert!(
        line(&text, "private.example.test", "A").contains("10.1.0.10"),
        "{text}"
    );
    assert!(
        line(&text, "loopback.example.test", "A").contains("NXDOMAIN"),
        "{text}"
    );
    assert!(
        line(&text, "metadata.example.test", "A").contains("NXDOMAIN"),
        "{text}"
    );
}

#[test]
fn a_domain_allow_list_resolves_and_reaches_only_its_names() {
    let w = World::new();
    let args = [
        dns(),
        "--policy".into(),
        "none".into(),
        "--allow".into(),
        "api.example.test".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let script = format!(
        "curl -sS -m 5 -o /dev/null -w 'byname %{{http_code}}\\n' http://api.example.test/; {}",
        digs(&[("other.example.test", "A")], "")
    );
    let (out, events) = w.run_sh(&args, &script, T);
    let text = stdout(&out);
    assert!(text.contains("byname 200"), "{text}\n{}", stderr(&out));
    assert!(
        line(&text, "other.example.test", "A").contains("NXDOMAIN"),
        "{text}"
    );
    assert!(
        !queried(&w, "other.example.test"),
        "DNS is egress: the name must not leave"
    );
    let allowed = events
        .iter()
        .find(|e| e["event"] == "connect" && e["decision"] == "allow")
        .unwrap();
    assert_eq!(allowed["domain"], "api.example.test", "{allowed}");
    // A fresh sandbox that never looked the name up cannot use the address.
    let (out, events) = w.run_sh(
        &args,
        "curl -sS --connect-timeout 1 -m 2 http://203.0.113.10/ && echo REACHED; echo tried",
        T,
    );
    assert!(stdout(&out).contains("tried"), "{}", stderr(&out));
    assert!(!stdout(&out).contains("REACHED"), "{}", stdout(&out));
    // The attempt reached moat and was refused there, by the default (no rule matched an
    // address that no lookup of this sandbox answered).
    assert!(
        events.iter().any(|e| e["event"] == "connect"
            && e["decision"] == "deny"
            && e["dst"] == "203.0.113.10"
            && e["rule"] == "default"),
        "{events:#?}"
    );
}

#[test]
fn both_addresses_of_a_rotating_name_stay_usable() {
    let w = World::new();
    let args = [
        dns(),
        "--policy".into(),
        "none".into(),
        "--allow".into(),
        "rotate.example.test".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let script = "dig +short +time=3 +tries=1 rotate.example.test A; dig +short +time=3 +tries=1 rotate.example.test A; \
                  for h in 203.0.113.10 203.0.113.11; do curl -sS -m 5 -o /dev/null -w \"$h %{http_code}\\n\" http://$h/; done";
    let (out, _) = w.run_sh(&args, script, T);
    let text = stdout(&out);
    assert!(
        text.contains("203.0.113.10 200") && text.contains("203.0.113.11 200"),
        "{text}\n{}",
        stderr(&out)
    );
}

#[test]
fn non_dns_bytes_on_port_53_go_nowhere() {
    let w = World::new();
    // Control in the same run: a real query to the same address is answered (by moat's
    // interceptor), so the garbage went to a path that answers DNS and was dropped there.
    let script = "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); [s.sendto(b'not dns at all', ('198.51.100.99', 53)) for _ in range(3)]\"; sleep 0.5; \
                  dig +short +time=3 +tries=1 @198.51.100.99 api.example.test A";
    let (out, _) = w.run_sh(&[&dns()], script, T);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("203.0.113.10"),
        "control: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        !w.log().iter().any(|l| l["local"] == "198.51.100.99"),
        "{:?}",
        w.log()
    );
}

#[test]
fn upstream_failover_and_servfail() {
    let w = World::new();
    // 198.51.100.98 has no server: queries to it time out.
    let (out, _) = w.run_sh(
        &["--dns=198.51.100.98", &dns()],
        &digs(&[("www.example.test", "A")], "+time=8"),
        T,
    );
    assert!(
        line(&stdout(&out), "www.example.test", "A").contains("203.0.113.10"),
        "{}",
        stdout(&out)
    );
    let script = "t=$(date +%s%N); dig +time=8 +tries=1 +noall +comments www.example.test A | grep -o 'status: [A-Z]*'; \
                  echo elapsed $(( ($(date +%s%N) - t) / 1000000 )); \
                  dig +time=8 +tries=1 +noall +comments other.example.test A | grep -o 'status: [A-Z]*'";
    let (out, _) = w.run_sh(&["--dns=198.51.100.98"], script, T);
    let text = stdout(&out);
    assert_eq!(
        text.matches("status: SERVFAIL").count(),
        2,
        "{text}\n{}",
        stderr(&out)
    );
    let ms: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("elapsed "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(ms < 5000, "SERVFAIL took {ms} ms");
}

#[test]
fn a_server_first_protocol_on_443_gets_its_banner_fast() {
    let w = World::new();
    let script = "python3 - <<'PY'\nimport socket, time\nt = time.monotonic()\ns = socket.create_connection(('203.0.113.10', 443), timeout=5)\nb = s.recv(7)\nprint('banner', b.decode().strip(), round((time.monotonic() - t) * 1000))\nPY";
    let (out, _) = w.run_sh(&[&dns(), "--deny", "blocked.example.test"], script, T);
    let text = stdout(&out);
    let ms: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("banner BANNER "))
        .unwrap_or_else(|| panic!("{text}\n{}", stderr(&out)))
        .trim()
        .parse()
        .unwrap();
    assert!(ms < 100, "banner took {ms} ms");
}

#[test]
fn a_deny_domain_rule_blocks_by_name_and_by_sni() {
    let w = World::new();
    let script = format!(
        "{} python3 - <<'PY'\nimport socket, ssl\ndef hello(name):\n    ctx = ssl.create_default_context()\n    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()\n    obj = ctx.wrap_bio(inc, out, server_hostname=name)\n    try:\n        obj.do_handshake()\n    except ssl.SSLWantReadError:\n        pass\n    return out.read()\nfor name in ['blocked.example.test', 'fine.example.test']:\n    s = socket.create_connection(('203.0.113.10', 443), timeout=5)\n    s.sendall(hello(name))\n    got = b''\n    try:\n        while True:\n            b = s.recv(100)\n            if not b:\n                break\n            got += b\n        print(name, 'closed')\n    except ConnectionResetError:\n        print(name, 'reset')\nPY",
        digs(&[("blocked.example.test", "A")], "")
    );
    let (out, events) = w.run_sh(&[&dns(), "--deny", "blocked.example.test"], &script, T);
    let text = stdout(&out);
    assert!(
        line(&text, "blocked.example.test", "A").contains("NXDOMAIN"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(
        text.contains("blocked.example.test reset"),
        "{text}\n{}\n{events:#?}",
        stderr(&out)
    );
    assert!(text.contains("fine.example.test closed"), "{text}");
    let sni_deny = events
        .iter()
        .find(|e| e["event"] == "connect" && e["sni"] == "blocked.example.test")
        .unwrap();
    assert_eq!(sni_deny["decision"], "deny");
    assert_eq!(sni_deny["rule"], 0);
}

#[test]
fn answers_too_big_for_udp_are_truncated_and_retried_over_tcp() {
    let w = World::new();
    let script = "dig +noedns +ignore +time=3 +tries=1 +noall +comments big.example.test A | grep -o 'flags: [a-z ]*'; \
                  echo count $(dig +noedns +time=3 +tries=1 +short big.example.test A | wc -l)";
    let (out, _) = w.run_sh(&[&dns()], script, T);
    let text = stdout(&out);
    let flags = text
        .lines()
        .find(|l| l.starts_with("flags:"))
        .unwrap_or_else(|| panic!("{text}\n{}", stderr(&out)));
    assert!(flags.split_whitespace().any(|f| f == "tc"), "{flags}");
    assert!(text.contains("count 40"), "{text}");
}
