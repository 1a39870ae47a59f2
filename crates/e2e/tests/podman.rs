//! moat as the network of Podman containers, rootful and rootless: a running container served with
//! `moat attach --pid`, and containers started in a namespace of `moat netns create`,
//! against the test world. The image is built here (`moat_e2e::podman`), never pulled.
//!
//! Without podman, or with no OCI runtime that runs a container on this machine, each test
//! says why and stops — unless MOAT_REQUIRE_PODMAN=1 (as `.ci/run` sets), when that is a
//! failure. Rootless Podman runs as the tests' user, with subordinate ids and /dev/net/tun
//! set up for it as distributions ship them (and restored after); moat serves its
//! container from that user's namespace (`podman unshare moat attach ...`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use moat_e2e::podman::{IMAGE, Podman, RUN_LIMITS};
use moat_e2e::{HOST_ADDR, World, stderr, stdout, validate_event};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

static N: AtomicUsize = AtomicUsize::new(0);

fn podman() -> Option<Podman> {
    moat_e2e::podman::podman_or_skip()
}

/// A container, removed (with `podman rm -f`) on drop.
struct Container<'a> {
    podman: &'a Podman,
    name: String,
}

impl<'a> Container<'a> {
    /// `podman run -d --name NAME ARGS... IMAGE sleep 120`.
    fn start(podman: &'a Podman, args: &[&str]) -> Container<'a> {
        let name = format!(
            "moat-e2e-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut all = vec!["run", "-d", "--name", &name];
        all.extend(RUN_LIMITS);
        all.extend(args);
        all.extend([IMAGE, "sleep", "120"]);
        podman.ok(&all);
        Container { podman, name }
    }

    fn inspect(&self, format: &str) -> String {
        self.podman
            .ok(&["inspect", "-f", format, &self.name])
            .trim()
            .to_owned()
    }

    fn exec(&self, script: &str) -> std::process::Output {
        self.podman
            .run(&["exec", &self.name, "sh", "-c", script], T)
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.podman.run(
            &["rm", "-f", "-t", "0", &self.name],
            Duration::from_secs(60),
        );
    }
}

fn arrived(w: &World, path: &str) -> Option<Value> {
    w.log().into_iter().find(|l| {
        l["path"]
            .as_str()
            .is_some_and(|p| p.split('?').next() == Some(path))
    })
}

/// A running container (`--network none`) served with `moat attach --pid`: it reaches what
/// the policy allows (by name, through moat's DNS, its resolv.conf written by moat) and
/// nothing else; a port it serves is published on the host; interception works with moat's
/// CA mounted where the container's curl looks; the audit log names the container; moat
/// ends, with its summary, when the container stops.
#[test]
fn a_running_container_is_confined_by_moat_attach() {
    let Some(podman) = podman() else { return };
    let w = World::new();
    // Files moat fills in once it serves the container, mounted when it starts (Podman
    // gives a container without a network no resolv.conf, and refuses --dns for one).
    let ca = w.file("moat-ca.pem", "");
    let resolv = w.file("resolv.conf", "");
    let c = Container::start(
        &podman,
        &[
            "--network",
            "none",
            "-v",
            &format!("{}:/etc/ssl/certs/ca-certificates.crt:ro", ca.display()),
            "-v",
            &format!("{}:/etc/resolv.conf:ro", resolv.display()),
        ],
    );
    let pid = c.inspect("{{.State.Pid}}");
    let resolv = resolv.display().to_string();
    let audit = w.dir.join("podman-audit.jsonl");
    let ready = w.dir.join("podman-ready");
    let world_ca = w.dir.join("world-ca.pem");
    let moat = w.spawn_moat(&[
        "attach",
        "--pid",
        &pid,
        "--name",
        &c.name,
        "--allow",
        "api.example.test:80/tcp",
        "--allow",
        "api.example.test:8443/tcp",
        "--deny",
        "203.0.113.11",
        "--block-domain",
        "blocked.example.test",
        "-p",
        "18090:8000",
        "--tls-intercept",
        "--tls-port",
        "8443",
        "--tls-upstream-ca",
        world_ca.to_str().unwrap(),
        "--ca-out",
        ca.to_str().unwrap(),
        "--resolv-conf",
        &resolv,
        "--audit",
        audit.to_str().unwrap(),
        "--ready-file",
        ready.to_str().unwrap(),
    ]);
    let mut moat = moat.ready(&ready);
    let out = c.exec(
        r#"
cat /etc/resolv.conf
wget -q -O - http://api.example.test/podman-allowed >/dev/null && echo allowed=ok
curl -sS -m 3 -o /dev/null http://203.0.113.11/podman-denied; echo "denied_exit=$?"
nslookup blocked.example.test >/dev/null 2>&1; echo "blocked_exit=$?"
busybox httpd -p 8000 -h /www && echo httpd=up
"#,
    );
    let text = stdout(&out);
    assert!(
        text.contains("nameserver 10.0.2.2"),
        "{text}{}",
        stderr(&out)
    );
    assert!(text.contains("allowed=ok"), "{text}{}", stderr(&out));
    assert!(!text.contains("denied_exit=0"), "{text}");
    assert!(!text.contains("blocked_exit=0"), "{text}");
    assert!(text.contains("httpd=up"), "{text}");
    let said = stderr(&out);
    let got = arrived(&w, "/podman-allowed").expect("the allowed request arrived");
    assert!(
        got["client"].as_str().unwrap().ends_with(HOST_ADDR),
        "{got}"
    );
    assert!(arrived(&w, "/podman-denied").is_none(), "{:?}", w.log());
    // The published port, from the host namespace.
    let mut curl = w.in_host("curl");
    curl.args(["-sS", "-m", "10", "http://127.0.0.1:18090/index.html"]);
    let page = moat_e2e::run_with_timeout(curl, T);
    assert!(
        stdout(&page).contains("served from the container"),
        "{}{}",
        stdout(&page),
        stderr(&page)
    );
    // TLS, intercepted: the container trusts moat's CA (written by --ca-out into the file
    // the container was started with, bound where its curl looks).
    let pem = std::fs::read_to_string(&ca).unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
    let out = c.exec(
        "curl -sS -m 10 --cacert /etc/ssl/certs/ca-certificates.crt -o /dev/null -w 'tls=%{http_code}\\n' https://api.example.test:8443/podman-tls",
    );
    let tls = stdout(&out);
    assert!(tls.contains("tls=200"), "{tls}{}", stderr(&out));
    assert!(arrived(&w, "/podman-tls").is_some());
    // The container stops: moat ends by itself.
    podman.ok(&["stop", "-t", "0", &c.name]);
    assert!(
        moat.exits_within(Duration::from_secs(15)),
        "moat still serves a stopped container"
    );
    let out = moat.finish();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("moat: run "), "{}", stderr(&out));
    let events: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for e in &events {
        validate_event(e).unwrap_or_else(|why| panic!("{why}: {e}"));
        assert_eq!(e["sandbox"], c.name.as_str(), "{e}");
    }
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "tls" && e["tls"] == "intercepted")
    );
    assert!(
        events.iter().any(|e| e["event"] == "connect"
            && e["decision"] == "deny"
            && e["dst"] == "203.0.113.11"),
        "{said}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "dns" && e["name"] == "blocked.example.test")
    );
}

/// A namespace of `moat netns create`: a container started in it later
/// (`--network ns:PATH`) is confined by the namespace's policy; two containers share it.
#[test]
fn containers_started_in_a_moat_namespace_are_confined() {
    let Some(podman) = podman() else { return };
    let w = World::new();
    let name = format!("moatpn{}", std::process::id() % 100_000);
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
    let _rm = moat_e2e::NetnsRm(name.clone());
    let resolv = w.file("resolv.conf", "nameserver 10.0.2.2\n");
    let mount = format!("{}:/etc/resolv.conf:ro", resolv.display());
    let network = format!("ns:/run/netns/{name}");
    let first = Container::start(&podman, &["--network", &network, "-v", &mount]);
    let second = Container::start(&podman, &["--network", &network, "-v", &mount]);
    for (c, path) in [(&first, "/ns-first"), (&second, "/ns-second")] {
        let out = c.exec(&format!(
            "wget -q -O - http://api.example.test{path} >/dev/null && echo allowed=ok; \
             curl -sS -m 3 -o /dev/null http://203.0.113.11{path}-denied; echo denied_exit=$?"
        ));
        let text = stdout(&out);
        assert!(text.contains("allowed=ok"), "{text}{}", stderr(&out));
        assert!(!text.contains("denied_exit=0"), "{text}");
        assert!(arrived(&w, path).is_some(), "{path}: {:?}", w.log());
        assert!(arrived(&w, &format!("{path}-denied")).is_none());
    }
}

/// moat inside a container, built from this repository's `deploy/container/Containerfile`
/// (with the binary under test, on the tests' base image): with the smallest set of
/// options (`--device /dev/net/tun`, seccomp and system paths unconfined) the workload
/// reaches what the policy mounted at /etc/moat/policy.toml allows and nothing else, while
/// moat's own sockets leave from the container's network (here the test's host namespace,
/// `--network ns:`); with the root file system read-only too. Without each option, moat
/// says which one is missing, and the workload never runs.
#[test]
fn moat_inside_a_container_confines_the_workload() {
    let Some(podman) = podman() else { return };
    let w = World::new();
    let context = w.dir.join("image");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy(moat_e2e::moat_bin(), context.join("moat")).unwrap();
    let containerfile =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/container/Containerfile");
    let tag = format!("localhost/moat-e2e-moat:{}", std::process::id());
    podman.ok(&[
        "build",
        "-q",
        "--build-arg",
        &format!("BASE={IMAGE}"),
        "-t",
        &tag,
        "-f",
        containerfile.to_str().unwrap(),
        context.to_str().unwrap(),
    ]);
    struct Untag<'a>(&'a Podman, &'a str);
    impl Drop for Untag<'_> {
        fn drop(&mut self) {
            let _ = self.0.run(&["rmi", "-f", self.1], Duration::from_secs(60));
        }
    }
    let _untag = Untag(&podman, &tag);
    let policy = w.file(
        "policy.toml",
        "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ndestination = \"api.example.test\"\nprotocol = \"tcp\"\nports = \"80\"\n",
    );
    let network = format!("ns:/run/netns/{}", w.host);
    let mount = format!("{}:/etc/moat/policy.toml:ro", policy.display());
    let run = |options: &[&str], script: &str| {
        let mut args = vec!["run", "--rm"];
        args.extend(RUN_LIMITS);
        args.extend([
            "--network",
            &network,
            "--dns",
            moat_e2e::WORLD_DNS,
            "-v",
            &mount,
        ]);
        args.extend(options);
        args.extend([tag.as_str(), "sh", "-c", script]);
        podman.run(&args, T)
    };
    let smallest = [
        "--device",
        "/dev/net/tun",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "systempaths=unconfined",
    ];
    let workload = "curl -sS -m 10 -o /dev/null -w 'allowed=%{http_code}\\n' http://api.example.test/inside-allowed; \
                    curl -sS -m 3 -o /dev/null http://203.0.113.11/inside-denied; echo denied_exit=$?";
    for read_only in [false, true] {
        let mut options = smallest.to_vec();
        if read_only {
            options.push("--read-only");
        }
        let out = run(&options, workload);
        let text = stdout(&out);
        assert!(out.status.success(), "{text}{}", stderr(&out));
        assert!(text.contains("allowed=200"), "{text}{}", stderr(&out));
        assert!(!text.contains("denied_exit=0"), "{text}");
        // moat's summary, from inside the container.
        assert!(stderr(&out).contains("moat: run "), "{}", stderr(&out));
    }
    let got = arrived(&w, "/inside-allowed").expect("the allowed request arrived");
    // From moat's socket in the container's network: the host namespace's address.
    assert!(
        got["client"].as_str().unwrap().ends_with(HOST_ADDR),
        "{got}"
    );
    assert!(arrived(&w, "/inside-denied").is_none(), "{:?}", w.log());
    // Each option left out: moat names it, and the workload never runs.
    for (left_out, says) in [
        (1, "--device /dev/net/tun"),
        (3, "--security-opt seccomp=unconfined"),
        (5, "--security-opt systempaths=unconfined"),
    ] {
        let options: Vec<&str> = smallest
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != left_out && i != left_out - 1)
            .map(|(_, o)| *o)
            .collect();
        let out = run(&options, "echo the workload ran");
        assert_eq!(out.status.code(), Some(125), "{says}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{says}: {}", stderr(&out));
        assert!(!stdout(&out).contains("the workload ran"), "{says}");
    }
    // Root without the runtime's default capabilities: said, not a raw EPERM.
    let mut options = smallest.to_vec();
    options.extend(["--cap-drop", "all"]);
    let out = run(&options, "echo the workload ran");
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no --cap-drop all"),
        "{}",
        stderr(&out)
    );
    assert!(!stdout(&out).contains("the workload ran"));
}

/// Rootless Podman: a container the tests' user runs (`--network none`) is served by
/// `moat attach --pid` run inside that user's namespace (`podman unshare`), unprivileged on
/// the host, in the test's host network namespace; it reaches what the policy allows and
/// nothing else. The machine is set up as distributions ship it for rootless containers:
/// subordinate ids for the user, /dev/net/tun open to users (both restored after).
#[test]
fn a_rootless_container_is_served_from_its_user_namespace() {
    use std::os::unix::fs::PermissionsExt;
    let Some(podman) = podman() else { return };
    let w = World::new();
    let user = moat_e2e::TEST_USER;
    let uid = moat_e2e::test_uid();
    // Restored when the test ends, whatever happens.
    struct Machine(u32, bool);
    impl Drop for Machine {
        fn drop(&mut self) {
            let _ =
                std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(self.0));
            if self.1 {
                for file in ["/etc/subuid", "/etc/subgid"] {
                    let text = std::fs::read_to_string(file).unwrap_or_default();
                    let kept: String = text
                        .lines()
                        .filter(|l| *l != SUBIDS)
                        .map(|l| format!("{l}\n"))
                        .collect();
                    let _ = std::fs::write(file, kept);
                }
            }
        }
    }
    const SUBIDS: &str = "moat-e2e:400000:65536";
    let tun = std::fs::metadata("/dev/net/tun")
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    let had = std::fs::read_to_string("/etc/subuid")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("moat-e2e:"));
    let _machine = Machine(tun, !had);
    if !had {
        for file in ["/etc/subuid", "/etc/subgid"] {
            let mut text = std::fs::read_to_string(file).unwrap_or_default();
            text.push_str(SUBIDS);
            text.push('\n');
            std::fs::write(file, text).unwrap();
        }
    }
    std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666)).unwrap();
    let scratch = moat_e2e::Scratch::new("rootless-podman");
    let home = scratch.owned_dir("home", uid);
    let run = scratch.owned_dir("run", uid);
    let files = scratch.owned_dir("files", uid);
    let bin = scratch.user_bin();
    let env = [
        format!("HOME={}", home.display()),
        format!("XDG_RUNTIME_DIR={}", run.display()),
    ];
    let as_user = |args: &[&str]| {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", user, "--", "env"])
            .args(&env)
            .args(["podman", "--runtime", podman.runtime()])
            .args(args);
        c
    };
    let ok = |args: &[&str]| {
        let out = moat_e2e::run_with_timeout(as_user(args), T);
        assert!(out.status.success(), "podman {args:?}: {}", stderr(&out));
        stdout(&out).trim().to_owned()
    };
    // The image, into the user's store.
    let tar = files.join("image.tar");
    podman.ok(&["save", "-q", "-o", tar.to_str().unwrap(), IMAGE]);
    sh_chown(&tar, uid);
    ok(&["load", "-q", "-i", tar.to_str().unwrap()]);
    let resolv = files.join("resolv.conf");
    std::fs::write(&resolv, "").unwrap();
    sh_chown(&resolv, uid);
    let mount = format!("{}:/etc/resolv.conf:ro", resolv.display());
    let mut run_args = vec!["run", "-d", "--network", "none", "-v", &mount];
    run_args.extend(RUN_LIMITS);
    run_args.extend([IMAGE, "sleep", "120"]);
    let id = ok(&run_args);
    // Ended, and the user's podman with it, when the test ends.
    struct Rootless<'a>(&'a dyn Fn(&[&str]) -> std::process::Command, String);
    impl Drop for Rootless<'_> {
        fn drop(&mut self) {
            let _ = moat_e2e::run_with_timeout((self.0)(&["rm", "-f", "-t", "0", &self.1]), T);
            let _ = moat_e2e::run_with_timeout((self.0)(&["system", "migrate"]), T);
        }
    }
    let _container = Rootless(&as_user, id.clone());
    let pid = ok(&["inspect", "-f", "{{.State.Pid}}", &id]);
    let ready = files.join("ready");
    // moat in the user's namespace (root there, the user on the host), in the test's host
    // network namespace; the world's resolver given (podman unshare's mount namespace
    // shows the machine's /etc/resolv.conf).
    let mut attach = w.in_host("runuser");
    attach
        .args(["-u", user, "--", "env"])
        .args(&env)
        .args(["podman", "--runtime", podman.runtime(), "unshare"])
        .arg(&bin)
        .args(["attach", "--pid", &pid, "--dns", moat_e2e::WORLD_DNS])
        .args([
            "--allow",
            "api.example.test:80/tcp",
            "--deny",
            "203.0.113.11",
        ])
        .arg("--resolv-conf")
        .arg(&resolv)
        .arg("--ready-file")
        .arg(&ready)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut moat = moat_e2e::Background::from_child(attach.spawn().unwrap()).ready(&ready);
    let out = moat_e2e::run_with_timeout(
        as_user(&[
            "exec",
            &id,
            "sh",
            "-c",
            "curl -sS -m 10 -o /dev/null -w 'allowed=%{http_code}\\n' http://api.example.test/rootless-allowed; \
             curl -sS -m 3 -o /dev/null http://203.0.113.11/rootless-denied; echo denied_exit=$?",
        ]),
        T,
    );
    let text = stdout(&out);
    assert!(text.contains("allowed=200"), "{text}{}", stderr(&out));
    assert!(!text.contains("denied_exit=0"), "{text}");
    let got = arrived(&w, "/rootless-allowed").expect("the allowed request arrived");
    assert!(
        got["client"].as_str().unwrap().ends_with(HOST_ADDR),
        "{got}"
    );
    assert!(arrived(&w, "/rootless-denied").is_none());
    ok(&["stop", "-t", "0", &id]);
    assert!(
        moat.exits_within(Duration::from_secs(15)),
        "moat still serves"
    );
    let out = moat.finish();
    assert!(
        stderr(&out).contains("its last process is gone"),
        "{}",
        stderr(&out)
    );
}

fn sh_chown(path: &Path, uid: u32) {
    moat_e2e::sh(&["chown", &uid.to_string(), path.to_str().unwrap()]);
}
