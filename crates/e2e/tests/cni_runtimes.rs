//! moat-cni under real runtimes: Debian's containerd (`ctr run --cni`) and Podman's CNI
//! backend, each running the locally built test image, with the node set up from
//! deploy/kubernetes exactly as the DaemonSet sets one up (`moat cni install` with the
//! manifests' moat-cni.json and policies/ and `--delegate`), in the place of a bridge, which
//! becomes its delegate. The containers reach
//! what their policy allows and nothing else, the world sees their own address, and
//! nothing of moat's is left when they are gone.
//!
//! The node's paths are the real ones (`ctr` reads /etc/cni/net.d and /opt/cni/bin; the
//! entry names /etc/moat/policies and /var/log/moat/cni): what a test adds there is
//! removed when it ends, and the tests here take turns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use moat_e2e::cni::{Runtime, conflist, state_dir};
use moat_e2e::podman::{IMAGE, podman_or_skip};
use moat_e2e::{Background, World, moat_bin, run_with_timeout, stderr, stdout};
use serde_json::{Value, json};

/// One test at a time touches the node's directories.
static NODE: Mutex<()> = Mutex::new(());

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes")
}

/// The manifests' moat-cni entry.
fn entry() -> Value {
    serde_json::from_slice(&std::fs::read(deploy().join("moat-cni.json")).unwrap()).unwrap()
}

/// Files and links a test put on the node, removed on drop.
struct Node {
    made: Vec<PathBuf>,
    conf_dir: PathBuf,
}

impl Node {
    /// The node as the DaemonSet leaves it: the reference plugins in /opt/cni/bin (linked
    /// where the machine has none), the test's bridge conflist in `conf_dir` as the
    /// cluster's network, then `moat cni install` with the manifests' files.
    fn set_up(w: &World, conf_dir: &Path) -> Node {
        let mut made = Vec::new();
        let bin = Path::new("/opt/cni/bin");
        std::fs::create_dir_all(bin).unwrap();
        for p in ["bridge", "host-local", "loopback"] {
            let at = bin.join(p);
            if std::fs::symlink_metadata(&at).is_err() {
                std::os::unix::fs::symlink(Path::new(moat_e2e::cni::PLUGINS).join(p), &at).unwrap();
                made.push(at);
            }
        }
        let plugin = bin.join("moat-cni");
        assert!(
            std::fs::symlink_metadata(&plugin).is_err(),
            "{} exists: this machine has a moat-cni the test would replace",
            plugin.display()
        );
        made.push(plugin);
        std::fs::create_dir_all(conf_dir).unwrap();
        let mut primary = conflist(w, json!({}));
        primary["plugins"].as_array_mut().unwrap().pop();
        let conf = conf_dir.join("10-moat-e2e.conflist");
        std::fs::write(&conf, primary.to_string()).unwrap();
        made.push(conf.clone());
        let policies = Path::new("/etc/moat/policies");
        for f in std::fs::read_dir(deploy().join("policies")).unwrap() {
            let name = f.unwrap().file_name();
            let at = policies.join(&name);
            assert!(
                !at.exists(),
                "{} exists: this machine has moat policies the test would replace",
                at.display()
            );
            made.push(at);
        }
        let out = run_with_timeout(
            {
                let mut c = Command::new(moat_bin());
                c.args(["cni", "install", "--bin-dir", "/opt/cni/bin", "--conf-dir"])
                    .arg(conf_dir)
                    .arg("--entry")
                    .arg(deploy().join("moat-cni.json"))
                    .arg("--policies")
                    .arg(deploy().join("policies"))
                    .arg("--delegate");
                c
            },
            Duration::from_secs(60),
        );
        let node = Node {
            made,
            conf_dir: conf_dir.to_owned(),
        };
        assert!(out.status.success(), "{}", stderr(&out));
        // The entry took the bridge's place with the bridge as its delegate, in the
        // conflist the runtime chooses (as the DaemonSet's --delegate puts it).
        let installed: Value = serde_json::from_slice(&std::fs::read(&conf).unwrap()).unwrap();
        let mut moat = installed["plugins"][0].clone();
        assert_eq!(moat["delegate"]["type"], "bridge", "{installed}");
        moat.as_object_mut().unwrap().remove("delegate");
        assert_eq!(moat, entry(), "{installed}");
        assert_eq!(installed["plugins"][1]["type"], "loopback");
        node
    }

    /// A second network, the same but for its policy (Podman chooses by network).
    fn with_policy(&self, name: &str, policy: &str) -> String {
        let conf = self.conf_dir.join("10-moat-e2e.conflist");
        let mut list: Value = serde_json::from_slice(&std::fs::read(conf).unwrap()).unwrap();
        list["name"] = json!(name);
        let at = list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .position(|p| p["type"] == "moat-cni")
            .unwrap();
        list["plugins"][at]["policy"] = json!(policy);
        std::fs::write(
            self.conf_dir.join(format!("20-{name}.conflist")),
            list.to_string(),
        )
        .unwrap();
        name.to_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for p in self.made.iter().rev() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The audit log moat-cni wrote for container `id` (then removed: it is the node's).
fn take_audit(id: &str) -> Vec<Value> {
    let path = Path::new("/var/log/moat/cni").join(format!("{id}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// What the world logged for HTTP path `path`: the clients it saw.
fn clients(w: &World, path: &str) -> Vec<String> {
    w.log()
        .iter()
        .filter(|l| l["server"] == "http" && l["path"] == path)
        .map(|l| l["client"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The script the containers run: one allowed request, one denied, each line the status.
const PROBE: &str = "for u in http://203.0.113.10/cni-80 http://203.0.113.10:8080/cni-8080 http://10.1.0.10/cni-private; do \
     echo \"$u $(curl -s -o /dev/null -w '%{http_code}' --connect-timeout 3 --max-time 5 $u)\"; done";

/// containerd 1.6 from Debian, `ctr run --cni` (which reads /etc/cni/net.d and
/// /opt/cni/bin): the container gets the bridge's address, moat's interface, the entry's
/// default policy (public-only); `--rm` DELs it, leaving nothing.
#[test]
fn containerd_runs_a_container_served_by_moat_cni() {
    let Some(podman) = podman_or_skip() else {
        return;
    };
    if Command::new("containerd")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("MOAT_REQUIRE_PODMAN").as_deref() == Ok("1") {
            panic!("containerd is not installed (apt-get install containerd)");
        }
        eprintln!("skipped: containerd is not installed");
        return;
    }
    let _turn = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let w = World::new();
    let _rt = Runtime::new(&w);
    let _node = Node::set_up(&w, Path::new("/etc/cni/net.d"));
    let dir = w.dir.join("containerd");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
    )
    .unwrap();
    let sock = dir.join("sock");
    let daemon = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", w.host))
        .arg("containerd")
        .arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--address")
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let daemon = Background::from_child(daemon).ready(&sock);
    // `ctr` is the one that runs the CNI plugins (containerd's CRI plugin does for
    // Kubernetes): it runs in the host namespace, where the bridge goes.
    let ctr = |args: &[&str], limit: u64| {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", w.host))
            .arg("ctr")
            .arg("-a")
            .arg(&sock)
            .args(["-n", "moat-e2e"])
            .args(args);
        run_with_timeout(c, Duration::from_secs(limit))
    };
    let archive = w.dir.join("image.tar");
    podman.ok(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        archive.to_str().unwrap(),
        IMAGE,
    ]);
    let imported = ctr(&["image", "import", archive.to_str().unwrap()], 120);
    assert!(imported.status.success(), "{}", stderr(&imported));
    let name = format!("c{}", std::process::id());
    let run = ctr(
        &[
            "run",
            "--rm",
            "--cni",
            "--runtime",
            "io.containerd.runc.v2",
            IMAGE,
            &name,
            "sh",
            "-c",
            &format!("ip -4 -o addr show dev eth0; {PROBE}"),
        ],
        120,
    );
    let text = stdout(&run);
    drop(daemon);
    assert!(
        text.contains("http://203.0.113.10/cni-80 200"),
        "{text}{}",
        stderr(&run)
    );
    assert!(
        text.contains("http://203.0.113.10:8080/cni-8080 200"),
        "{text}"
    );
    assert!(text.contains("http://10.1.0.10/cni-private 000"), "{text}");
    // The container's address is the bridge's (a host address on moat's TAP), and the
    // world saw it.
    let ip = text
        .split_whitespace()
        .find(|t| t.starts_with("10.89.0.") && t.ends_with("/32"))
        .unwrap_or_else(|| panic!("{text}"))
        .trim_end_matches("/32")
        .to_owned();
    let seen = clients(&w, "/cni-80");
    assert!(seen.len() == 1 && seen[0].ends_with(&ip), "{seen:?} {ip}");
    assert!(clients(&w, "/cni-private").is_empty());
    // ctr names the CNI container NAMESPACE-ID; its audit log says what was refused.
    let id = format!("moat-e2e-{name}");
    let audit = take_audit(&id);
    let ns: String = id.chars().take(40).collect();
    assert!(
        audit.iter().any(|l| l["event"] == "connect"
            && l["decision"] == "deny"
            && l["dst"].as_str().unwrap_or("").starts_with("10.1.0.10")),
        "{audit:?}"
    );
    assert!(
        audit.last().is_some_and(|l| l["event"] == "end"),
        "{audit:?}"
    );
    // `--rm` ran DEL: nothing of moat's is left.
    assert!(!state_dir(&id).exists());
    assert!(!Path::new(&format!("/run/netns/moat-{ns}")).exists());
}

/// Podman's CNI backend: a container per network, each network the manifests' entry with
/// its own policy (the default, and `web-only` from policies/): the same requests, allowed
/// and refused as each policy says; `--rm` leaves nothing.
#[test]
fn podman_cni_backend_chooses_the_policy_per_container() {
    let Some(podman) = podman_or_skip() else {
        return;
    };
    let _turn = NODE.lock().unwrap_or_else(|e| e.into_inner());
    let w = World::new();
    let _rt = Runtime::new(&w);
    let net_dir = w.dir.join("networks");
    let node = Node::set_up(&w, &net_dir);
    let web = node.with_policy("moat-e2e-web", "/etc/moat/policies/web-only.toml");
    let conf = w.dir.join("containers.conf");
    std::fs::write(
        &conf,
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\n[engine]\nruntime = \"{}\"\n\n[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"/opt/cni/bin\"]\nnetwork_config_dir = \"{}\"\n",
            podman.runtime(),
            net_dir.display()
        ),
    )
    .unwrap();
    // Each run: what the container printed, and the id Podman gave it (its CNI id).
    let run = |network: &str, name: &str| {
        let cidfile = w.dir.join(format!("{name}.cid"));
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", w.host))
            .args([
                "podman",
                "run",
                "--rm",
                "--name",
                name,
                "--network",
                network,
            ])
            .arg("--cidfile")
            .arg(&cidfile)
            .args([IMAGE, "sh", "-c", PROBE])
            .env("CONTAINERS_CONF", &conf);
        let out = run_with_timeout(c, Duration::from_secs(120));
        let id = std::fs::read_to_string(&cidfile).unwrap_or_default();
        (stdout(&out) + &stderr(&out), id.trim().to_owned())
    };
    let tag = std::process::id();
    let (default, id_default) = run("moat-e2e", &format!("moat-d{tag}"));
    assert!(
        default.contains("http://203.0.113.10/cni-80 200"),
        "{default}"
    );
    assert!(
        default.contains("http://203.0.113.10:8080/cni-8080 200"),
        "{default}"
    );
    assert!(
        default.contains("http://10.1.0.10/cni-private 000"),
        "{default}"
    );
    let (chosen, id_web) = run(&web, &format!("moat-w{tag}"));
    assert!(
        chosen.contains("http://203.0.113.10/cni-80 200"),
        "{chosen}"
    );
    assert!(
        chosen.contains("http://203.0.113.10:8080/cni-8080 000"),
        "web-only: {chosen}"
    );
    assert!(
        chosen.contains("http://10.1.0.10/cni-private 000"),
        "{chosen}"
    );
    // Both reached the world from the bridge's network, the second refused on 8080.
    assert_eq!(clients(&w, "/cni-80").len(), 2);
    assert!(
        clients(&w, "/cni-80")
            .iter()
            .all(|c| c.contains("10.89.0."))
    );
    assert_eq!(clients(&w, "/cni-8080").len(), 1);
    // Each container's audit log, by its id; DEL (on --rm) left nothing of moat's.
    for (id, refused) in [(&id_default, 1), (&id_web, 2)] {
        assert!(!id.is_empty());
        let audit = take_audit(id);
        let denied = audit
            .iter()
            .filter(|l| l["event"] == "connect" && l["decision"] == "deny")
            .count();
        assert_eq!(denied, refused, "{audit:?}");
        assert!(!state_dir(id).exists());
        let ns: String = id.chars().take(40).collect();
        assert!(!Path::new(&format!("/run/netns/moat-{ns}")).exists());
    }
}

/// The manifests hold exactly what the tests above ran with: the ConfigMaps are made from
/// moat-cni.json and every file of policies/ (no more, no fewer), and the DaemonSet gives
/// `moat cni install` those ConfigMaps at the paths it names.
#[test]
fn the_manifests_install_what_the_runtime_tests_ran() {
    let read = |name: &str| std::fs::read_to_string(deploy().join(name)).unwrap();
    let kustomization = read("kustomization.yaml");
    let listed: Vec<&str> = kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|f| f.ends_with(".json") || f.ends_with(".toml"))
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(deploy().join("policies"))
        .unwrap()
        .map(|e| format!("policies/{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    files.push("moat-cni.json".to_owned());
    files.sort();
    let mut listed_sorted: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
    listed_sorted.sort();
    assert_eq!(listed_sorted, files, "{kustomization}");
    // Each policy is one moat reads (a sandbox starts under it).
    for f in files.iter().filter(|f| f.ends_with(".toml")) {
        let mut c = Command::new(moat_bin());
        c.args(["run", "--quiet", "--policy"])
            .arg(deploy().join(f))
            .args(["--", "true"]);
        let out = run_with_timeout(c, Duration::from_secs(60));
        assert!(out.status.success(), "{f}: {}", stderr(&out));
    }
    // The entry is one moat-cni takes, naming the paths the DaemonSet fills.
    let e = entry();
    assert_eq!(e["type"], "moat-cni");
    let daemonset = read("daemonset.yaml");
    for needed in [
        "- cni\n",
        "- install\n",
        "- --delegate\n",
        "- /etc/moat-cni/moat-cni.json\n",
        "- /etc/moat-cni/policies\n",
        "mountPath: /etc/moat-cni\n",
        "mountPath: /etc/moat-cni/policies\n",
        "name: moat-cni-entry\n",
        "name: moat-policies\n",
        "path: /opt/cni/bin\n",
        "path: /etc/cni/net.d\n",
    ] {
        assert!(
            daemonset.contains(needed),
            "daemonset.yaml lacks {needed:?}"
        );
    }
    let dir = e["policyDir"].as_str().unwrap();
    assert!(
        daemonset.contains(&format!("mountPath: {dir}\n")),
        "policyDir {dir} is not mounted"
    );
    assert!(daemonset.contains(&format!("path: {dir}\n")));
    for name in ["moat-cni-entry", "moat-policies"] {
        assert!(
            kustomization.contains(&format!("- name: {name}\n")),
            "{name}"
        );
    }
    // The example pod names a policy that exists.
    let pod = read("example-pod.yaml");
    let chosen = pod
        .lines()
        .find_map(|l| l.trim().strip_prefix("moat.dev/policy: "))
        .unwrap();
    assert!(
        deploy().join(format!("policies/{chosen}.toml")).is_file(),
        "{chosen}"
    );
}
