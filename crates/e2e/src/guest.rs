//! A network namespace a test makes as a container runtime would (`ip netns add`: only `lo`,
//! down), for `moat attach` and `moat netns` to serve; removed on drop, with the processes
//! started in it.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::{COUNTER, run_with_timeout, sh};

/// Runs `moat netns rm NAME` when dropped: a namespace of `moat netns create` is removed,
/// and the moat serving it stopped, also when a test fails. [`std::mem::forget`] it once
/// the test has removed the namespace itself.
pub struct NetnsRm(pub String);

impl Drop for NetnsRm {
    fn drop(&mut self) {
        let mut c = Command::new(crate::moat_bin());
        c.args(["netns", "rm", &self.0]);
        let _ = run_with_timeout(c, Duration::from_secs(30));
    }
}

/// A namespace made by the test (see the module header).
pub struct Guest {
    /// Its name under /run/netns.
    pub name: String,
    children: Vec<Child>,
}

impl Default for Guest {
    fn default() -> Guest {
        Guest::new()
    }
}

impl Guest {
    /// A fresh namespace, and an empty resolv.conf that `ip netns exec` shows inside it
    /// ([`Guest::resolv_conf`]).
    pub fn new() -> Guest {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("moatg{}x{n}", std::process::id() % 100_000);
        sh(&["ip", "netns", "add", &name]);
        let g = Guest {
            name,
            children: Vec::new(),
        };
        std::fs::create_dir_all(g.etc()).unwrap();
        std::fs::write(g.resolv_conf(), "").unwrap();
        g
    }

    fn etc(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// The namespace's file.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// The resolv.conf its processes see (as a container's, bound over /etc/resolv.conf).
    pub fn resolv_conf(&self) -> PathBuf {
        self.etc().join("resolv.conf")
    }

    /// A command that runs `program` inside the namespace.
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `sh -c SCRIPT` inside, killed after `timeout`.
    pub fn run(&self, script: &str, timeout: Duration) -> Output {
        let mut c = self.exec("sh");
        c.args(["-c", script]);
        run_with_timeout(c, timeout)
    }

    /// Starts `sleep SECONDS` inside (a process that keeps the namespace in use); its pid.
    pub fn hold(&mut self, seconds: u32) -> u32 {
        let child = self
            .exec("sleep")
            .arg(seconds.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Ends the processes [`Guest::hold`] started.
    pub fn release(&mut self) {
        for mut c in self.children.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.release();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}
