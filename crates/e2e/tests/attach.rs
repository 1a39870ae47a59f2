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
    // A secret: what the namespace's programs must hold goes to --env-out, the value never.
    let env_out = w.file("secrets.env", "");
    let value = "sk-attach-VALUE-0123456789";
    let moat = w.spawn_moat_env(
        &[("API_KEY", value)],
        &[
            "attach",
            "--pid",
            &pid.to_string(),
            "--allow",
            "api.example.test:80/tcp",
            "--tls-intercept",
            "--secret",
            "API_KEY@api.example.test",
            "--env-out",
            env_out.to_str().unwrap(),
            "--resolv-conf",
            g.resolv_conf().to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
        ],
    );
    let mut moat = moat.ready(&ready);
    let written = std::fs::read_to_string(&env_out).unwrap();
    assert!(written.starts_with("API_KEY=moat_"), "{written}");
    assert!(!written.contains(value), "{written}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&env_out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
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

/// Adds a veth named `name` in `guest`, its peer (returned) in this namespace.
fn veth_in(guest: &Guest, name: &str) -> String {
    let peer = format!("{}{}", guest.name, &name[name.len() - 1..]);
    moat_e2e::sh(&[
        "ip",
        "link",
        "add",
        name,
        "netns",
        &guest.name,
        "type",
        "veth",
        "peer",
        "name",
        &peer,
    ]);
    peer
}

/// What moat cannot serve is refused with the reason, and the namespace is left as it was:
/// a file that is not a namespace, a path that does not exist, moat's own namespace, and a
/// namespace with any way out of its own — an eth0, any other interface (through which any
/// route or rule could lead), a default route (even through lo); `--replace` takes an eth0
/// over (deleting it, a veth with its peer) but not another interface.
#[test]
fn what_cannot_be_served_is_refused_and_left_as_it_was() {
    let w = World::new();
    let not_ns = w.file("not-a-namespace", "x");
    let own = "/proc/self/ns/net".to_owned();
    let g = Guest::new();
    let with_eth0 = Guest::new();
    let eth0_peer = veth_in(&with_eth0, "eth0");
    let other = Guest::new();
    veth_in(&other, "eth1");
    let both = Guest::new();
    veth_in(&both, "eth0");
    veth_in(&both, "eth1");
    let lo_route = Guest::new();
    moat_e2e::sh(&["ip", "-n", &lo_route.name, "link", "set", "lo", "up"]);
    moat_e2e::sh(&[
        "ip",
        "-n",
        &lo_route.name,
        "route",
        "add",
        "default",
        "dev",
        "lo",
    ]);
    let path = |g: &Guest| g.path().display().to_string();
    let cases: [(&str, String, bool, &str); 7] = [
        (
            "not a namespace",
            not_ns.display().to_string(),
            false,
            "is not a network namespace",
        ),
        (
            "missing",
            "/run/netns/moat-no-such-ns".into(),
            false,
            "no such file",
        ),
        (
            "moat's own",
            own,
            false,
            "the network namespace moat runs in",
        ),
        (
            "an eth0",
            path(&with_eth0),
            false,
            "already has an interface named eth0",
        ),
        (
            "another interface",
            path(&other),
            false,
            "interfaces of its own (eth1)",
        ),
        (
            "--replace with another interface",
            path(&both),
            true,
            "interfaces of its own (eth1)",
        ),
        (
            "a default route",
            path(&lo_route),
            false,
            "an IPv4 default route through lo",
        ),
    ];
    for (what, path, replace, says) in cases {
        let mut args = vec!["attach", "--netns", &path, "--keep"];
        if replace {
            args.push("--replace");
        }
        let out = w.moat(&args, T);
        assert_eq!(out.status.code(), Some(125), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{what}: {}", stderr(&out));
    }
    // One moat may not enter: root's namespace, to an unprivileged user.
    let scratch = moat_e2e::Scratch::new("attach-user");
    let g_path = path(&g);
    let out = moat_e2e::run_with_timeout(
        moat_e2e::As::User.moat(&scratch, &["attach", "--netns", &g_path, "--keep"]),
        T,
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot enter") && stderr(&out).contains("CAP_SYS_ADMIN"),
        "{}",
        stderr(&out)
    );
    // Nothing was changed in them: lo still down, their interfaces all there.
    for (guest, links) in [(&with_eth0, "eth0"), (&other, "eth1"), (&both, "eth0 eth1")] {
        let text = stdout(&guest.run("ip -br link", T));
        assert!(
            text.lines()
                .any(|l| l.starts_with("lo ") && l.contains("DOWN")),
            "{text}"
        );
        for name in links.split(' ') {
            assert!(text.contains(&format!("{name}@")), "{name}: {text}");
        }
    }
    // The same moat serves a namespace it may serve (the refusals above were the checks'),
    // and takes an eth0 over when asked: moat's TAP in its place, the veth gone (its peer
    // here too).
    let mut served = g;
    served.hold(30);
    let mut with_eth0 = with_eth0;
    with_eth0.hold(30);
    for (guest, extra) in [(&served, None), (&with_eth0, Some("--replace"))] {
        let ready = w.dir.join(format!("ready-{}", guest.name));
        let (path, ready_s) = (path(guest), ready.display().to_string());
        let mut args = vec!["attach", "--netns", &path, "--ready-file", &ready_s];
        args.extend(extra);
        let moat = w.spawn_moat(&args).ready(&ready);
        let links = stdout(&guest.run("ip -d link show eth0; ip -br link", T));
        assert!(links.contains("tun type tap"), "{links}");
        assert!(
            !links.contains("veth") && !links.contains("eth0@"),
            "{links}"
        );
        let out = moat.finish();
        assert!(stderr(&out).contains("SIGTERM"), "{}", stderr(&out));
        if extra.is_some() {
            assert!(
                stderr(&out).contains("its own eth0 is deleted"),
                "{}",
                stderr(&out)
            );
        }
    }
    let peer = std::process::Command::new("ip")
        .args(["link", "show", &eth0_peer])
        .output()
        .unwrap();
    assert!(
        !peer.status.success(),
        "the replaced veth's peer is still here"
    );
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
    let rm = moat_e2e::NetnsRm(name.clone());
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
    assert!(stderr(&gone).contains("did not make"), "{}", stderr(&gone));
}

/// `moat netns rm` removes only what `moat netns create` made, and signals only the moat
/// it left serving: not a runtime's namespace, and not a process that merely has that
/// moat's id and command line (its start time tells them apart); that moat still ends
/// once its namespace is gone.
#[test]
fn netns_rm_touches_only_what_create_made() {
    let w = World::new();
    let foreign = Guest::new();
    let out = w.moat_in_host_net(&["netns", "rm", &foreign.name], T);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("did not make"), "{}", stderr(&out));
    assert!(foreign.path().exists(), "a foreign namespace was removed");
    let name = format!("moatr{}", std::process::id() % 100_000);
    let out = w.moat_in_host_net(&["netns", "create", &name, "--dns", moat_e2e::WORLD_DNS], T);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid_file = format!("/run/moat/netns/{name}.pid");
    let real: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // On a failure below: the moat it left ended, and the namespace and files removed.
    struct Cleanup(u32, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if moat_sandbox_is(self.0) {
                let _ = std::process::Command::new("kill")
                    .arg(self.0.to_string())
                    .status();
            }
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.1])
                .status();
            for ext in ["pid", "log"] {
                let _ = std::fs::remove_file(format!("/run/moat/netns/{}.{ext}", self.1));
            }
        }
    }
    let _cleanup = Cleanup(real, name.clone());
    // A process with the same command line words, named in the pid file with a start
    // time that is not its own.
    let mut decoy = std::process::Command::new("sh")
        .args(["-c", "sleep 30", "x", "netns", "create", &name])
        .spawn()
        .unwrap();
    std::fs::write(&pid_file, format!("{} 1\n", decoy.id())).unwrap();
    let out = w.moat_in_host_net(&["netns", "rm", &name], T);
    let alive = decoy.try_wait().unwrap().is_none();
    let _ = decoy.kill();
    let _ = decoy.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(alive, "rm signalled a process that is not the moat it left");
    assert!(
        stderr(&out).contains("no moat was serving"),
        "{}",
        stderr(&out)
    );
    assert!(!Path::new(&format!("/run/netns/{name}")).exists());
    // The real one ends by itself: its namespace is gone and nothing runs in it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{real}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "moat {real} still serves"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` is a moat `moat netns create` left (its command line says so).
fn moat_sandbox_is(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).any(|w| w == b"create"))
}
