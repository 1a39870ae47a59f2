//! A container runtime's side of CNI, as small as the protocol: a conflist's plugins
//! (Debian's reference `bridge`, `host-local`, `loopback`, and moat-cni) run in order with
//! the `CNI_*` variables and the network's configuration on stdin, each ADD given the
//! previous result, DEL in reverse order. The plugins run in the test's host namespace
//! (`nsenter`, which keeps the mount namespace: what moat-cni binds under /run/netns is
//! seen by everyone), where the bridge is made; the host forwards the pods' traffic to the
//! world without address translation, so the world sees each pod's own address.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{World, moat_bin, sh};

/// Debian's reference plugins.
pub const PLUGINS: &str = "/usr/lib/cni";

/// The pods' network (IPv4), routed by the host namespace.
pub const SUBNET: &str = "10.89.0.0/24";

/// The conflist's moat-cni entry for a test: `extra` keys added to it.
pub fn moat_entry(w: &World, extra: Value) -> Value {
    let mut entry = json!({
        "type": "moat-cni",
        "auditDir": w.dir.join("audit").to_string_lossy(),
    });
    if let (Some(e), Value::Object(more)) = (entry.as_object_mut(), extra) {
        e.extend(more);
    }
    entry
}

/// The conflist the tests use: a bridge with host-local addresses, loopback, then moat.
pub fn conflist(w: &World, moat: Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "moat-e2e",
        "plugins": [
            {
                "type": "bridge", "bridge": "moatbr0", "isGateway": true, "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": SUBNET}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": w.dir.join("ipam").to_string_lossy(),
                },
            },
            {"type": "loopback"},
            moat,
        ],
    })
}

/// The conflist of a delegating moat-cni: loopback, then moat-cni with the bridge (and its
/// addresses) as its delegate, which it runs in moat's namespace.
pub fn delegating(w: &World, extra: Value) -> Value {
    let mut list = conflist(w, moat_entry(w, extra));
    let plugins = list["plugins"].as_array_mut().unwrap();
    let bridge = plugins.remove(0);
    plugins[1]["delegate"] = bridge;
    list
}

/// One plugin call's outcome.
#[derive(Debug)]
pub struct Called {
    /// Whether the plugin exited 0.
    pub ok: bool,
    /// What it printed (a result or an error object; `Null` when nothing).
    pub out: Value,
    /// What it said on stderr.
    pub err: String,
}

/// The runtime: the plugin directory (the reference plugins and moat-cni, a link to the
/// moat under test) and the host namespace's forwarding to the world.
pub struct Runtime {
    bin: PathBuf,
    host: String,
    pods: Vec<String>,
    /// Containers moat-cni was asked to ADD: given a DEL on drop, so that a failed test
    /// leaves no engine, namespace or state behind.
    added: std::cell::RefCell<Vec<(String, PathBuf)>>,
}

impl Runtime {
    /// Sets the host namespace of `w` up as a node: forwarding on, the world routed back
    /// to the pods' network.
    pub fn new(w: &World) -> Runtime {
        let bin = w.dir.join("cni-bin");
        std::fs::create_dir_all(&bin).unwrap();
        for p in ["bridge", "host-local", "loopback"] {
            std::os::unix::fs::symlink(Path::new(PLUGINS).join(p), bin.join(p)).unwrap();
        }
        std::os::unix::fs::symlink(moat_bin(), bin.join("moat-cni")).unwrap();
        sh(&[
            "ip",
            "netns",
            "exec",
            &w.host,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        sh(&[
            "ip",
            "-n",
            &w.world,
            "route",
            "add",
            SUBNET,
            "via",
            "172.31.0.1",
        ]);
        Runtime {
            bin,
            host: w.host.clone(),
            pods: Vec::new(),
            added: Default::default(),
        }
    }

    /// Adds an executable plugin `name` (a shell script) to the plugin directory.
    pub fn plugin(&self, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.bin.join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A new pod namespace (removed on drop), its path.
    pub fn pod(&mut self, name: &str) -> PathBuf {
        sh(&["ip", "netns", "add", name]);
        self.pods.push(name.to_owned());
        PathBuf::from("/run/netns").join(name)
    }

    /// Calls one plugin as a runtime does.
    pub fn call(
        &self,
        plugin: &str,
        command: &str,
        id: &str,
        netns: &Path,
        args: &str,
        conf: &Value,
    ) -> Called {
        if plugin == "moat-cni" && command == "ADD" {
            self.added
                .borrow_mut()
                .push((id.to_owned(), netns.to_owned()));
        }
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.host))
            .arg(self.bin.join(plugin))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.bin)
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let input = conf.to_string();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(input.as_bytes()).unwrap();
        }
        let out = crate::process::wait_output(child, Duration::from_secs(60));
        Called {
            ok: out.status.success(),
            out: serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Calls moat-cni alone (the conflist's last plugin) with `prev` as the previous
    /// result. CHECK goes to moat-cni alone: the bridge's own CHECK looks for its veth in
    /// the pod, where moat's TAP is now (moat-cni's README section says so).
    pub fn moat(
        &self,
        command: &str,
        id: &str,
        netns: &Path,
        args: &str,
        list: &Value,
        prev: Option<&Value>,
    ) -> Called {
        let plugins = list["plugins"].as_array().unwrap();
        let mut conf = plugins[plugins.len() - 1].clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if let Some(r) = prev {
            conf["prevResult"] = r.clone();
        }
        self.call("moat-cni", command, id, netns, args, &conf)
    }

    /// Runs `command` through the conflist as a runtime does (ADD in order with each
    /// result passed on, DEL in reverse, CHECK in order with the last result); the first
    /// failure, or the last plugin's outcome.
    pub fn run(
        &self,
        command: &str,
        id: &str,
        netns: &Path,
        args: &str,
        list: &Value,
        prev: Option<&Value>,
    ) -> Called {
        let mut plugins: Vec<Value> = list["plugins"].as_array().unwrap().clone();
        if command == "DEL" {
            plugins.reverse();
        }
        let mut result = prev.cloned();
        let mut last = Called {
            ok: true,
            out: Value::Null,
            err: String::new(),
        };
        for p in plugins {
            let mut conf = p.clone();
            conf["name"] = list["name"].clone();
            conf["cniVersion"] = list["cniVersion"].clone();
            if let Some(r) = &result {
                conf["prevResult"] = r.clone();
            }
            let kind = p["type"].as_str().unwrap().to_owned();
            last = self.call(&kind, command, id, netns, args, &conf);
            if !last.ok {
                return last;
            }
            if command == "ADD" {
                result = Some(last.out.clone());
            }
        }
        last
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let conf = json!({"cniVersion": "1.0.0", "name": "moat-e2e", "type": "moat-cni"});
        for (id, netns) in self.added.take() {
            if state_dir(&id).exists() {
                let _ = self.call("moat-cni", "DEL", &id, &netns, "", &conf);
            }
        }
        for p in &self.pods {
            let _ = Command::new("ip").args(["netns", "del", p]).status();
        }
    }
}

/// moat-cni's state for container `id` (`/run/moat/cni/ID`).
pub fn state_dir(id: &str) -> PathBuf {
    Path::new("/run/moat/cni").join(id)
}

/// The engine's process id for container `id`, from its pid file.
pub fn engine_pid(id: &str) -> Option<u32> {
    std::fs::read_to_string(state_dir(id).join("pid"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Whether a process runs with pid `pid` (a zombie does not).
pub fn runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_owned()))
        .is_some_and(|r| !r.starts_with('Z'))
}
