//! `moat attach` and `moat netns`: moat serving a network namespace someone else made (as
//! a container runtime makes one), from the host namespace, against the test world.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::path::Path;
use std::time::Duration;

use moat_e2e::{Guest, HOST_ADDR, World, stderr, stdout, validate_event};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

fn events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn arrived(w: &World, path: &str) -> Option<Value> {
    w.log().into_iter().find(|l| l["path"] == path)
}

/// What a namespace moat attached to may reach is what the policy allows, by name and by
/// address, with moat's DNS (its resolv.conf written in place); moat's own connections
/// leave from the namespace moat runs in; moat ends by itself, with its summary, once the
/// namespace's last process is gone.
#[test]
fn an_attached_namespace_reaches_only_what_the_policy_allows() {
    let w = World::new();
    let mut g = Guest::new();
    g.hold(60);
    let audit = w.dir.join("attach-audit.jsonl");
    let ready = w.dir.join("attach-ready");
    let moat = w.spawn_moat(&[
        "attach",
        "--netns",
        g.path().to_str().unwrap(),
        "--allow",
        "api.example.test:80/tcp",
        "--deny",
        "203.0.113.11",
        "--block-domain",
        "blocked.example.test",
        "--resolv-conf",
        g.resolv_conf().to_str().unwrap(),
        "--audit",
        audit.to_str().unwrap(),
        "--ready-file",
        ready.to_str().unwrap(),
    ]);
    let mut moat = moat.ready(&ready);
    let out = g.run(
        r#"
cat /etc/resolv.conf
ip -br addr show eth0
curl -sS -m 10 -o /dev/null -w "allowed=%{http_code}\n" http://api.example.test/attach-allowed
curl -sS -m 3 -o /dev/null http://203.0.113.11/attach-denied; echo "denied_exit=$?"
getent hosts blocked.example.test; echo "blocked_exit=$?"
"#,
        T,
    );
    let text = stdout(&out);
    assert!(text.contains("nameserver 10.0.2.2"), "{text}");
    assert!(text.contains("eth0"), "{text}");
    assert!(text.contains("allowed=200"), "{text}{}", stderr(&out));
    let got = arrived(&w, "/attach-allowed").expect("the allowed request arrived");
    // From moat's socket, in the host namespace: not from the guest's address.
    assert!(
        got["client"].as_str().unwrap().ends_with(HOST_ADDR),
        "{got}"
    );
    assert!(arrived(&w, "/attach-denied").is_none(), "{:?}", w.log());
    assert!(!text.contains("denied_exit=0"), "{text}");
    assert!(text.contains("blocked_exit=2"), "{text}");
    // The namespace's last process ends: so does moat, by itself.
    g.release();
    assert!(
        moat.exits_within(Duration::from_secs(10)),
        "moat still serves an empty namespace"
    );
    let out = moat.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("its last process is gone"), "{err}");
    assert!(err.contains("moat: run "), "no summary: {err}");
    let events = events(&audit);
    for e in &events {
        validate_event(e).unwrap_or_else(|why| panic!("{why}: {e}"));
        assert_eq!(e["sandbox"], g.name.as_str(), "{e}");
    }
    assert_eq!(events.first().unwrap()["event"], "start");
    assert_eq!(events.last().unwrap()["event"], "end");
    assert!(events.iter().any(|e| e["event"] == "connect"
        && e["decision"] == "allow"
        && e["domain"] == "api.example.test"));
    assert!(
        events.iter().any(|e| e["event"] == "connect"
            && e["decision"] == "deny"
            && e["dst"] == "203.0.113.11")
    );
    assert!(events.iter().any(|e| e["event"] == "dns"
        && e["name"] == "blocked.example.test"
        && e["blocked_by"].is_string()));
}

/// `--pid`: the namespace of a running process (a container's), served until it ends.
#[test]
fn a_process_namespace_is_served_by_its_pid_until_it_ends() {
    let w = World::new();
    let mut g = Guest::new();
    let pid = g.hold(60);
    let ready = w.dir.join("pid-ready");
    let moat = w.spawn_moat(&[
        "attach",
        "--pid",
        &pid.to_string(),
        "--allow",
        "api.example.test:80/tcp",
        "--resolv-conf",
        g.resolv_conf().to_str().unwrap(),
        "--ready-file",
        ready.to_str().unwrap(),
    ]);
    let mut moat = moat.ready(&ready);
    let out = g.run(
        "curl -sS -m 10 -o /dev/null -w 'code=%{http_code}\\n' http://api.example.test/by-pid",
        T,
    );
    assert!(
        stdout(&out).contains("code=200"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(arrived(&w, "/by-pid").is_some());
    g.release();
    assert!(moat.exits_within(Duration::from_secs(10)));
    let err = stderr(&moat.finish());
    // Named after the process when no --name is given.
    assert!(err.contains("its last process is gone"), "{err}");
}

/// What moat cannot serve is refused with the reason, and nothing is made in it: a file
/// that is not a namespace, a path that does not exist, moat's own namespace, and a
/// namespace that has an eth0 or a default route of its own; `--replace` takes an eth0
/// over.
#[test]
fn what_cannot_be_served_is_refused_and_left_as_it_was() {
    let w = World::new();
    let not_ns = w.file("not-a-namespace", "x");
    let own = "/proc/self/ns/net".to_owned();
    let g = Guest::new();
    // A guest with an eth0 (a veth, as a bridge network gives a container) and one with a
    // default route through another interface.
    let with_eth0 = Guest::new();
    let peer = format!("{}p", with_eth0.name);
    moat_e2e::sh(&[
        "ip",
        "link",
        "add",
        "eth0",
        "netns",
        &with_eth0.name,
        "type",
        "veth",
        "peer",
        "name",
        &peer,
    ]);
    let routed = Guest::new();
    let peer2 = format!("{}p", routed.name);
    moat_e2e::sh(&[
        "ip",
        "link",
        "add",
        "eth1",
        "netns",
        &routed.name,
        "type",
        "veth",
        "peer",
        "name",
        &peer2,
    ]);
    for args in [
        ["ip", "-n", &routed.name, "link", "set", "eth1", "up"].as_slice(),
        &[
            "ip",
            "-n",
            &routed.name,
            "addr",
            "add",
            "192.0.2.5/24",
            "dev",
            "eth1",
        ],
        &[
            "ip",
            "-n",
            &routed.name,
            "route",
            "add",
            "default",
            "via",
            "192.0.2.1",
        ],
    ] {
        moat_e2e::sh(args);
    }
    let cases: [(&str, String, &str); 5] = [
        (
            "not a namespace",
            not_ns.display().to_string(),
            "is not a network namespace",
        ),
        (
            "missing",
            "/run/netns/moat-no-such-ns".into(),
            "no such file",
        ),
        ("moat's own", own, "the network namespace moat runs in"),
        (
            "an eth0",
            with_eth0.path().display().to_string(),
            "already has an interface named eth0",
        ),
        (
            "a default route",
            routed.path().display().to_string(),
            "already has an IPv4 default route through eth1",
        ),
    ];
    for (what, path, says) in cases {
        let out = w.moat(&["attach", "--netns", &path, "--keep"], T);
        assert_eq!(out.status.code(), Some(125), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{what}: {}", stderr(&out));
    }
    // Nothing was made in them: no interface of moat's, lo still down.
    for guest in [&with_eth0, &routed] {
        let text = stdout(&guest.run("ip -br link show lo; ip -br link show eth0", T));
        assert!(
            text.lines()
                .any(|l| l.starts_with("lo ") && l.contains("DOWN")),
            "{text}"
        );
        if guest.name == routed.name {
            assert!(!text.contains("eth0"), "{text}");
        }
    }
    let mut served = g;
    served.hold(30);
    // The same moat serves a namespace it may serve (the refusals above were the checks'),
    // and takes an eth0 over when asked.
    let mut with_eth0 = with_eth0;
    with_eth0.hold(30);
    for (guest, extra) in [(&served, None), (&with_eth0, Some("--replace"))] {
        let ready = w.dir.join(format!("ready-{}", guest.name));
        let (path, ready_s) = (
            guest.path().display().to_string(),
            ready.display().to_string(),
        );
        let mut args = vec!["attach", "--netns", &path, "--ready-file", &ready_s];
        args.extend(extra);
        let moat = w.spawn_moat(&args).ready(&ready);
        let links = stdout(&guest.run("ip -br link", T));
        assert!(links.contains("eth0 "), "{links}");
        if extra.is_some() {
            assert!(links.contains("eth0-pre-moat"), "{links}");
        }
        let out = moat.finish();
        assert!(stderr(&out).contains("SIGTERM"), "{}", stderr(&out));
    }
}

/// A namespace that goes away while moat serves it (its last process gone and its name
/// removed) ends moat, even with `--keep`.
#[test]
fn moat_ends_when_the_namespace_is_gone() {
    let w = World::new();
    let g = Guest::new();
    let ready = w.dir.join("gone-ready");
    let moat = w.spawn_moat(&[
        "attach",
        "--netns",
        g.path().to_str().unwrap(),
        "--keep",
        "--ready-file",
        ready.to_str().unwrap(),
    ]);
    let mut moat = moat.ready(&ready);
    // Served: moat's interface is there.
    assert!(stdout(&g.run("ip -br link", T)).contains("eth0 "));
    // --keep: an empty namespace is still served.
    assert!(!moat.exits_within(Duration::from_secs(1)));
    drop(g);
    assert!(
        moat.exits_within(Duration::from_secs(10)),
        "moat still runs after its namespace is gone"
    );
    let err = stderr(&moat.finish());
    assert!(err.contains("the namespace is gone"), "{err}");
}

/// `moat netns create NAME` makes a namespace served in the background (a container
/// started in it later is confined); a second create of the same name is refused and
/// leaves the first serving; `moat netns rm NAME` stops it, with its summary, and removes
/// the namespace.
#[test]
fn a_named_namespace_is_served_until_removed() {
    let w = World::new();
    let name = format!("moatn{}", std::process::id() % 100_000);
    let path = format!("/run/netns/{name}");
    // In the host namespace, but in this mount namespace (where `ip netns` looks; `ip
    // netns exec` would make moat a mount namespace of its own), so with the world's DNS.
    let netns_moat = |args: &[&str]| w.moat_in_host_net(args, T);
    let out = netns_moat(&[
        "netns",
        "create",
        &name,
        "--dns",
        moat_e2e::WORLD_DNS,
        "--allow",
        "api.example.test:80/tcp",
        "--deny",
        "203.0.113.11",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), path);
    // Removed on panic too.
    struct Rm<'a>(&'a World, &'a str);
    impl Drop for Rm<'_> {
        fn drop(&mut self) {
            let _ = self
                .0
                .moat(&["netns", "rm", self.1], Duration::from_secs(30));
        }
    }
    let rm = Rm(&w, &name);
    let again = w.moat(&["netns", "create", &name], T);
    assert_eq!(again.status.code(), Some(125));
    assert!(
        stderr(&again).contains("exists already"),
        "{}",
        stderr(&again)
    );
    // A process started in it later, with the resolver moat answers on.
    let etc = Path::new("/etc/netns").join(&name);
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("resolv.conf"), "nameserver 10.0.2.2\n").unwrap();
    let mut c = std::process::Command::new("ip");
    c.args(["netns", "exec", &name, "sh", "-c"]).arg(
        "curl -sS -m 10 -o /dev/null -w 'code=%{http_code}\\n' http://api.example.test/named-allowed; \
         curl -sS -m 3 -o /dev/null http://203.0.113.11/named-denied; echo denied_exit=$?",
    );
    let out = moat_e2e::run_with_timeout(c, T);
    let _ = std::fs::remove_dir_all(&etc);
    let text = stdout(&out);
    assert!(text.contains("code=200"), "{text}{}", stderr(&out));
    assert!(!text.contains("denied_exit=0"), "{text}");
    assert!(arrived(&w, "/named-allowed").is_some());
    assert!(arrived(&w, "/named-denied").is_none());
    std::mem::forget(rm);
    let out = w.moat(&["netns", "rm", &name], T);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("moat: run "), "no summary: {err}");
    assert!(err.contains("SIGTERM"), "{err}");
    assert!(!Path::new(&path).exists());
    assert!(!Path::new(&format!("/run/moat/netns/{name}.pid")).exists());
    let gone = w.moat(&["netns", "rm", &name], T);
    assert_eq!(gone.status.code(), Some(125));
    assert!(
        stderr(&gone).contains("no such namespace"),
        "{}",
        stderr(&gone)
    );
}
