//! The end-to-end test topology of shared/DESIGN.md, built and torn down by a guard:
//!
//! ```text
//!   [world ns]  servers (world.py) on TEST-NET and private addresses on its loopback
//!       │ veth 172.31.0.0/30, fd00:ffff::/64
//!   [host ns]   moat runs here; default route → world; resolv.conf → the world's DNS
//!       │ TAP (made by moat)
//!   [sandbox]   curl, dig, python3 — real clients
//! ```
//!
//! Nothing leaves the namespaces a test made: the host namespace's only route leads to the
//! world namespace. Every client call has a timeout; the guard removes the namespaces and
//! ends the servers it started (by pid), also when a test panics.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test support: a panic is the failure report.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Addresses on the world's loopback.
pub const WORLD_ADDRS: &[&str] = &[
    "203.0.113.10/32",
    "203.0.113.11/32",
    // Where the README's example.com and api.example.com live (HTTPS on 443: tests/readme.rs).
    "203.0.113.20/32",
    "198.51.100.53/32",
    "198.51.100.99/32",
    "10.1.0.10/32",
    "172.16.5.5/32",
    "192.168.7.7/32",
    "100.64.1.1/32",
    "169.254.169.254/32",
    // Special-purpose ranges that are not globally reachable (benchmarking, reserved, IETF
    // protocol assignments) and Azure's platform endpoint.
    "198.18.0.10/32",
    "240.0.0.10/32",
    "192.0.0.8/32",
    "168.63.129.16/32",
];
/// IPv6 addresses on the world's loopback.
pub const WORLD_ADDRS6: &[&str] = &[
    "2001:db8::10/128",
    "2001:db8::11/128",
    "fd00:1::10/128",
    // 10.1.0.10 carried in 6to4, Teredo (inverted) and local-use NAT64; deprecated site-local.
    "2002:a01:a::1/128",
    "2001:0:1:2:3:4:f5fe:fff5/128",
    "64:ff9b:1::a01:a/128",
    "fec0::10/128",
];
/// The world's DNS server.
pub const WORLD_DNS: &str = "198.51.100.53";
/// The host namespace's address as the world sees it.
pub const HOST_ADDR: &str = "172.31.0.1";

/// Numbers the scratch directories and namespaces of this process's tests.
static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub mod cni;
mod events;
mod guest;
pub mod podman;
mod process;
mod users;

pub use events::{rules_of, times, validate_event};
pub use guest::{Guest, NetnsRm};
pub use process::{
    Background, Running, peak_rss_kib, rss_kib, run_with_timeout, stderr, stdout, wait_output,
};
pub use users::{As, Scratch, TEST_USER, ensure_test_user, test_uid};

/// Runs a command to completion, failing the test with its output when it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Path to the moat binary under test: `MOAT_BIN`, else the one beside this test binary.
pub fn moat_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("MOAT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/moat
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("moat");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p moat` first (or set MOAT_BIN)",
        bin.display()
    );
    bin
}

/// Fails the test unless it runs as root (namespaces, veth).
pub fn require_root() {
    assert!(
        nix_geteuid() == 0,
        "end-to-end tests build network namespaces and must run as root (CI does)"
    );
}

fn nix_geteuid() -> u32 {
    // /proc/self/status "Uid:\treal\teffective..."
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

/// A world namespace with servers, and a host namespace routed to it.
pub struct World {
    /// The world namespace's name.
    pub world: String,
    /// The host namespace's name.
    pub host: String,
    /// Scratch directory (logs, policy files), removed on drop.
    pub dir: PathBuf,
    server: Option<Child>,
    extra: Vec<Child>,
}

impl Default for World {
    fn default() -> World {
        World::new()
    }
}

impl World {
    /// Builds the topology and starts the world's servers.
    pub fn new() -> World {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}x{n}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("moat-e2e-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = World {
            world: format!("moatw{id}"),
            host: format!("moath{id}"),
            dir,
            server: None,
            extra: Vec::new(),
        };
        w.build(&id);
        w
    }

    fn build(&mut self, id: &str) {
        let (wn, hn) = (self.world.clone(), self.host.clone());
        sh(&["ip", "netns", "add", &wn]);
        sh(&["ip", "netns", "add", &hn]);
        let (vh, vw) = (format!("vh{id}"), format!("vw{id}"));
        sh(&[
            "ip", "link", "add", &vh, "netns", &hn, "type", "veth", "peer", "name", &vw, "netns",
            &wn,
        ]);
        for (ns, dev, v4, v6) in [
            (&hn, &vh, "172.31.0.1/30", "fd00:ffff::1/64"),
            (&wn, &vw, "172.31.0.2/30", "fd00:ffff::2/64"),
        ] {
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&["ip", "-n", ns, "addr", "add", v4, "dev", dev]);
            sh(&["ip", "-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad"]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        sh(&[
            "ip",
            "-n",
            &hn,
            "route",
            "add",
            "default",
            "via",
            "172.31.0.2",
        ]);
        sh(&[
            "ip",
            "-n",
            &hn,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:ffff::2",
        ]);
        for a in WORLD_ADDRS {
            sh(&["ip", "-n", &wn, "addr", "add", a, "dev", "lo"]);
        }
        for a in WORLD_ADDRS6 {
            sh(&[
                "ip", "-n", &wn, "-6", "addr", "add", a, "dev", "lo", "nodad",
            ]);
        }
        // `ip netns exec` puts this over the host namespace's /etc/resolv.conf.
        let etc = PathBuf::from("/etc/netns").join(&hn);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("resolv.conf"), format!("nameserver {WORLD_DNS}\n")).unwrap();

        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("world.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &wn, "python3", "-u"])
            .arg(&script)
            .arg(self.log_path())
            .args(
                WORLD_ADDRS
                    .iter()
                    .chain(WORLD_ADDRS6)
                    .map(|a| a.split('/').next().unwrap_or(a)),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        await_ready(&mut child, "world servers");
        self.server = Some(child);
    }

    /// Starts the world's HTTP/2 echo (h2echo.py, tcp 8445) with the first python3 that
    /// has the h2 module (the system's, from python3-h2, when the one on PATH has not).
    pub fn start_h2_echo(&mut self) {
        let python = ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|p| {
                Command::new(p)
                    .args(["-c", "import h2"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .expect("no python3 with the h2 module (apt-get install python3-h2)");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("h2echo.py");
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.world, python, "-u"])
            .arg(&script)
            .arg(self.log_path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        await_ready(&mut child, "the HTTP/2 echo");
        self.extra.push(child);
    }

    /// The world servers' request log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("world.jsonl")
    }

    /// Every logged request so far.
    pub fn log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The world's log once `done` holds for it, or as it stands after `limit`. For what the
    /// world logs with no answer to wait for (a datagram sink): its line may land a moment
    /// after the client is done, later still on a loaded machine.
    pub fn log_once(
        &self,
        limit: Duration,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let end = Instant::now() + limit;
        loop {
            let log = self.log();
            if done(&log) || Instant::now() >= end {
                return log;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes a file into the scratch directory and returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A command that runs in the host namespace.
    pub fn in_host(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.host]).arg(program);
        c
    }

    /// Starts a background process in the host namespace, ended on drop.
    pub fn spawn_in_host(&mut self, args: &[&str]) {
        let child = self
            .in_host(args[0])
            .args(&args[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.extra.push(child);
    }

    /// Starts nginx in the world (one process, ended on drop): HTTPS on 8444 with the
    /// world's certificate, HTTP/2 and HTTP/1.1, answering `PROTOCOL HOST` per request;
    /// `/big` serves 64 MiB. Requests go to `nginx-access.log` in the scratch directory
    /// (protocol, host, server name, URI). Returns once it answers.
    pub fn start_nginx(&mut self) {
        let d = self.dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nuser root;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               log_format t '$server_protocol $host $ssl_server_name $request_uri';\n\
               access_log {d}/nginx-access.log t;\n\
               client_body_temp_path {d}/ngx-body; proxy_temp_path {d}/ngx-proxy; fastcgi_temp_path {d}/ngx-fcgi;\n\
               uwsgi_temp_path {d}/ngx-uwsgi; scgi_temp_path {d}/ngx-scgi;\n\
               server {{\n\
                 listen 8444 ssl http2; listen [::]:8444 ssl http2;\n\
                 ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key;\n\
                 keepalive_requests 100000;\n\
                 location /big {{ alias {d}/big.bin; default_type application/octet-stream; }}\n\
                 location / {{ default_type text/plain; return 200 \"$server_protocol $host\\n\"; }}\n\
               }}\n\
             }}\n"
        );
        let big = std::fs::File::create(self.dir.join("big.bin")).unwrap();
        big.set_len(64 << 20).unwrap();
        let conf_path = self.file("nginx.conf", &conf);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.world, "nginx", "-c"])
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.extra.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = Command::new("ip")
                .args(["netns", "exec", &self.host, "curl", "-sk", "-m", "2"])
                .arg("https://203.0.113.10:8444/")
                .output()
                .is_ok_and(|o| o.status.success());
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not start: {}",
                std::fs::read_to_string(self.dir.join("nginx-error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What nginx logged so far, one line per request.
    pub fn nginx_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nginx-access.log")).unwrap_or_default()
    }

    /// Runs `moat ARGS` in the host namespace, killed after `timeout`.
    pub fn moat(&self, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = self.in_host(moat_bin());
        cmd.args(args);
        run_with_timeout(cmd, timeout)
    }

    /// Runs `moat run MOAT_ARGS -- sh -c SCRIPT` with the world's DNS and an audit log;
    /// returns the output and the audit events.
    pub fn run_sh(
        &self,
        moat_args: &[&str],
        script: &str,
        timeout: Duration,
    ) -> (Output, Vec<serde_json::Value>) {
        let audit = self.dir.join(format!(
            "audit-{}.jsonl",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let audit_s = audit.to_str().unwrap().to_owned();
        let mut args = vec!["run", "--audit", &audit_s];
        args.extend_from_slice(moat_args);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        let out = self.moat(&args, timeout);
        let events = std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (out, events)
    }
}

impl World {
    /// Starts `moat ARGS` in the host namespace in the background.
    pub fn spawn_moat(&self, args: &[&str]) -> Background {
        self.spawn_moat_env(&[], args)
    }

    /// [`World::spawn_moat`] with `env` added to moat's environment (a secret's value).
    pub fn spawn_moat_env(&self, env: &[(&str, &str)], args: &[&str]) -> Background {
        let child = self
            .in_host(moat_bin())
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Background { child }
    }

    /// Runs a python3 script in the host namespace (bounded by `timeout`).
    /// Waits (at most 15 s) until a TCP or UDP socket of the host namespace is bound to
    /// `port`: a server started with [`World::spawn_in_host`] is then ready, however busy
    /// the machine. Fails the test when none appears.
    pub fn wait_for_host_port(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        let want = format!(":{port} ");
        loop {
            let out = self
                .in_host("ss")
                .args(["-Hlntu"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            if out.lines().any(|l| l.contains(&want)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nothing listens on port {port} in the host namespace"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Makes the world's CA a trust anchor of the host namespace's system store, as a
    /// machine trusts the public CAs: `ip netns exec` shows `/etc/netns/HOST/ssl` as
    /// `/etc/ssl` (the system bundle with the world's CA appended, and `openssl.cnf`), and a
    /// sandbox sees that `/etc`, so a client inside verifies the world's certificates with no
    /// flag or variable. Removed with the rest of `/etc/netns/HOST` on drop.
    pub fn trust_world_ca(&self) {
        let ssl = PathBuf::from("/etc/netns").join(&self.host).join("ssl");
        std::fs::create_dir_all(ssl.join("certs")).unwrap();
        if let Ok(cnf) = std::fs::read("/etc/ssl/openssl.cnf") {
            std::fs::write(ssl.join("openssl.cnf"), cnf).unwrap();
        }
        let mut bundle =
            std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str(&std::fs::read_to_string(self.dir.join("world-ca.pem")).unwrap());
        std::fs::write(ssl.join("certs/ca-certificates.crt"), bundle).unwrap();
    }

    /// A directory whose `moat` is the binary under test (a symbolic link), for a `PATH`
    /// under which a command line's `moat` means that binary. In the scratch directory.
    pub fn moat_on_path(&self) -> PathBuf {
        let bin = self.dir.join("bin");
        if !bin.join("moat").exists() {
            std::fs::create_dir_all(&bin).unwrap();
            std::os::unix::fs::symlink(moat_bin(), bin.join("moat")).unwrap();
        }
        bin
    }

    /// Runs `argv` in the host namespace in `cwd`, with `env` added to the environment,
    /// killed after `timeout`.
    pub fn run_in_host(
        &self,
        argv: &[&str],
        cwd: &Path,
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Output {
        let mut cmd = self.in_host(argv[0]);
        cmd.args(&argv[1..])
            .current_dir(cwd)
            .envs(env.iter().copied());
        run_with_timeout(cmd, timeout)
    }

    /// Runs `moat ARGS` in the host network namespace but in this mount namespace (where
    /// `ip netns` and Podman look for named namespaces; `ip netns exec` would give moat a
    /// mount namespace of its own), killed after `timeout`. /etc/resolv.conf is then this
    /// machine's: give `--dns`.
    pub fn moat_in_host_net(&self, args: &[&str], timeout: Duration) -> Output {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.host))
            .arg(moat_bin())
            .args(args);
        run_with_timeout(c, timeout)
    }

    /// Runs a python3 script in the host namespace, bounded.
    pub fn host_python(&self, script: &str, timeout: Duration) -> Output {
        let mut cmd = self.in_host("python3");
        cmd.args(["-c", script]);
        run_with_timeout(cmd, timeout)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for mut c in self.extra.drain(..).chain(self.server.take()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.world])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.host])
            .status();
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.host));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for a server started with a piped stdout to say "ready" on its first line.
fn await_ready(child: &mut Child, what: &str) {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "{what} did not start");
}
