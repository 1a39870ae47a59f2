//! `moat demo`: a self-contained tour. moat starts itself again in a private user and
//! network namespace whose only interface is `lo`, gives `lo` a few "world" addresses with
//! small web servers on them, then runs sandboxes under several policies and shows what
//! each attempt did and why. Nothing leaves this machine: the namespace has no route out.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use moat_policy::{Destination, NetworkPolicy, PortRange, Protocol, Rule};
use serde_json::Value;

use crate::api::{AuditSink, Sandbox};

/// The environment variable that marks the re-started demo inside its namespace.
const IN_WORLD: &str = "__MOAT_DEMO_IN_WORLD";

/// The world: (address, what it stands for).
const WORLD: &[(Ipv4Addr, &str)] = &[
    (
        Ipv4Addr::new(203, 0, 113, 10),
        "a public web server (TEST-NET-3)",
    ),
    (Ipv4Addr::new(10, 1, 0, 10), "a private server (10.0.0.0/8)"),
    (
        Ipv4Addr::new(169, 254, 169, 254),
        "a cloud metadata endpoint",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 53),
        "a DNS server: www.demo.test and other.demo.test are 203.0.113.10",
    ),
];

/// The world's DNS server.
const DNS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 53);

/// Runs the demo; returns the exit status.
pub fn demo() -> anyhow::Result<i32> {
    if std::env::var_os(IN_WORLD).is_some() {
        return in_world();
    }
    let exe = std::env::current_exe().context("find the moat binary")?;
    let status = std::process::Command::new(exe)
        .arg("demo")
        .env(IN_WORLD, "1")
        .status()
        .context("start the demo")?;
    Ok(status.code().unwrap_or(1))
}

fn enter_private_namespaces() -> anyhow::Result<()> {
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNET)
        .context("create a user and network namespace for the demo world (are unprivileged user namespaces enabled?)")?;
    std::fs::write("/proc/self/setgroups", "deny").context("write setgroups")?;
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).context("write uid_map")?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).context("write gid_map")?;
    moat_sandbox::netconf::set_up("lo").context("bring up lo")?;
    for (i, (addr, _)) in WORLD.iter().enumerate() {
        moat_sandbox::netconf::set_ipv4(&format!("lo:{}", i + 1), *addr, 32)
            .with_context(|| format!("add {addr} to lo"))?;
    }
    Ok(())
}

/// A tiny HTTP server: every request gets `hello from ADDR`.
fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("listen on {addr}"))?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf);
                let body = format!("hello from {addr}\n");
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    Ok(())
}

/// A tiny DNS server: every A query for a name under demo.test is answered 203.0.113.10;
/// anything else gets an empty answer.
fn serve_dns(addr: SocketAddr) -> anyhow::Result<()> {
    let sock = std::net::UdpSocket::bind(addr).with_context(|| format!("listen on {addr}"))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let q = &buf[..n];
            if n < 17 || q[2] & 0x80 != 0 {
                continue;
            }
            // The question: labels up to the root, then type and class.
            let Some(end) = q[12..].iter().position(|&b| b == 0).map(|e| 12 + e) else {
                continue;
            };
            let name = String::from_utf8_lossy(&q[12..end]).to_ascii_lowercase();
            let Some(question) = q.get(..end + 5) else {
                continue;
            };
            let mut a = question.to_vec();
            a[2] = 0x81;
            a[3] = 0x80;
            a[8..12].fill(0);
            let is_a = q[end + 1..end + 3] == [0, 1];
            if is_a && name.ends_with("\x04demo\x04test") {
                a[6..8].copy_from_slice(&[0, 1]);
                a.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 203, 0, 113, 10]);
            } else {
                a[6..8].fill(0);
            }
            let _ = sock.send_to(&a, peer);
        }
    });
    Ok(())
}

/// Audit events kept in memory (the demo's and selftest's runs read them back).
#[derive(Clone, Default)]
pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The client run inside each sandbox: curl if present, else python3.
const CLIENT: &str = r#"for url in "$@"; do
  if command -v curl >/dev/null 2>&1; then
    r=$(curl -s --connect-timeout 1 -m 2 "$url") && echo "$url OK $r" || echo "$url FAILED"
  else
    python3 -c 'import sys,urllib.request as u; print(sys.argv[1], "OK", u.urlopen(sys.argv[1], timeout=2).read().decode().strip())' "$url" 2>/dev/null || echo "$url FAILED"
  fi
done"#;

struct Scenario {
    title: &'static str,
    flags: &'static str,
    policy: NetworkPolicy,
    urls: &'static [&'static str],
}

fn in_world() -> anyhow::Result<i32> {
    enter_private_namespaces()?;
    for (addr, _) in WORLD {
        serve(SocketAddr::new((*addr).into(), 80))?;
    }
    serve("127.0.0.1:8080".parse()?)?;
    serve_dns(SocketAddr::new(DNS.into(), 53))?;

    println!(
        "moat demo: a tour on a throwaway world (a private network namespace; nothing leaves this machine)\n"
    );
    println!("The world:");
    for (addr, what) in WORLD {
        println!("  {addr:<16} {what}");
    }
    println!(
        "  {:<16} the host's loopback (127.0.0.1:8080), as the sandbox sees it through its gateway\n",
        "10.0.2.2"
    );

    let urls: &[&str] = &[
        "http://203.0.113.10/",
        "http://10.1.0.10/",
        "http://169.254.169.254/",
        "http://10.0.2.2:8080/",
    ];
    let by_name = NetworkPolicy {
        default_action: moat_policy::Action::Deny,
        rules: vec![
            Rule::allow_outbound(Destination::Domain("www.demo.test".into()))
                .with_ports(PortRange::single(80))
                .with_protocol(Protocol::Tcp),
        ],
    };
    let only_public_web = NetworkPolicy {
        default_action: moat_policy::Action::Deny,
        rules: vec![
            Rule::allow_outbound(Destination::Cidr("203.0.113.10/32".parse()?))
                .with_ports(PortRange::single(80))
                .with_protocol(Protocol::Tcp),
        ],
    };
    let scenarios = [
        Scenario {
            title: "The default policy, public_only: the internet yes, private ranges, metadata and the host no",
            flags: "moat run -- ...",
            policy: NetworkPolicy::public_only(),
            urls,
        },
        Scenario {
            title: "Deny by default, one allow rule",
            flags: "moat run --policy none --allow 203.0.113.10:80/tcp -- ...",
            policy: only_public_web,
            urls,
        },
        Scenario {
            title: "allow_all: everything, the host's loopback included",
            flags: "moat run --policy allow-all -- ...",
            policy: NetworkPolicy::allow_all(),
            urls,
        },
        Scenario {
            title: "A domain rule: moat answers DNS itself; a name the policy does not allow is not even resolved, and the rule holds for the addresses DNS answered",
            flags: "moat run --policy none --allow www.demo.test:80/tcp --dns 203.0.113.53 -- ...",
            policy: by_name,
            urls: &[
                "http://www.demo.test/",
                "http://other.demo.test/",
                "http://10.1.0.10/",
            ],
        },
    ];
    let mut last = None;
    let mut failures = 0;
    for (n, sc) in scenarios.iter().enumerate() {
        println!("{}. {}\n   $ {}", n + 1, sc.title, sc.flags);
        let audit = Captured::default();
        let sb = Sandbox::builder(format!("demo{}", n + 1))
            .network(|net| net.policy(sc.policy.clone()).dns_server(DNS.to_string()))
            // The world's machines live on this namespace's loopback; they are not the host.
            .simulated_hosts(WORLD.iter().map(|(a, _)| IpAddr::V4(*a)).collect())
            .audit(AuditSink::Writer(Box::new(audit.clone())))
            .create()?;
        let mut args = vec!["-c", CLIENT, "client"];
        args.extend_from_slice(sc.urls);
        let out = sb.exec("sh", args)?;
        sb.stop()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let events: Vec<Value> =
            String::from_utf8_lossy(&audit.0.lock().unwrap_or_else(|e| e.into_inner()))
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
        for url in sc.urls {
            let line = text.lines().find(|l| l.starts_with(url)).unwrap_or("");
            let host = url
                .trim_start_matches("http://")
                .split(['/', ':'])
                .next()
                .unwrap_or("");
            // The connection's decision; for a name, the lookup's when it was refused.
            let event = events
                .iter()
                .find(|e| e["event"] == "connect" && (e["dst"] == host || e["domain"] == host))
                .or_else(|| {
                    events.iter().find(|e| {
                        e["event"] == "dns" && e["name"] == host && e["decision"] == "deny"
                    })
                });
            let (verdict, why) = match event {
                Some(e) => (
                    e["decision"].as_str().unwrap_or("?").to_owned(),
                    e["reason"].as_str().unwrap_or("").to_owned(),
                ),
                None => ("?".to_owned(), "no decision logged".to_owned()),
            };
            let result = if line.contains(" OK ") {
                line.split(" OK ").nth(1).unwrap_or("").to_owned()
            } else {
                "no connection".to_owned()
            };
            let consistent = (verdict == "allow") == line.contains(" OK ");
            if !consistent {
                failures += 1;
            }
            println!("   {url:<26} {verdict:<5}  {why:<44} -> {result}");
        }
        println!();
        let mut summary = moat_engine::summary::Summary::new();
        for e in &events {
            if let Some(obj) = e.as_object() {
                summary.add(obj);
            }
        }
        last = Some(summary);
    }
    if let Some(run) = last.as_ref().and_then(|s| s.runs().first()) {
        println!("When a run ends, `moat run` sums it up on stderr; for the last one:");
        for line in run.render().lines() {
            println!("   moat: {line}");
        }
        println!();
    }
    println!(
        "Every decision above came from the audit log (--audit FILE writes it as JSON lines)."
    );
    println!("Ask the policy directly: moat policy explain public-only --to 10.1.2.3:80/tcp");
    if failures > 0 {
        bail!("{failures} attempts did not match their logged decision");
    }
    Ok(0)
}
