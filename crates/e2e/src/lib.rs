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

use std::io::{BufRead, BufReader, Read};
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

static COUNTER: AtomicUsize = AtomicUsize::new(0);

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

/// The resident memory of process `pid` in KiB, or `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The highest resident memory of process `pid` in KiB, sampled every 50 ms until it
/// exits or `limit` passes.
pub fn peak_rss_kib(pid: u32, limit: Duration) -> u64 {
    let (mut peak, start) = (0, Instant::now());
    while let Some(kib) = rss_kib(pid) {
        peak = peak.max(kib);
        if start.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    peak
}

/// A `moat` process running in the background, ended (SIGTERM, then SIGKILL) on drop.
pub struct Background {
    child: Child,
}

impl Background {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Ends the process and returns what it printed.
    pub fn finish(mut self) -> Output {
        let status = end(&mut self.child).unwrap();
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_end(&mut stdout);
        }
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_end(&mut stderr);
        }
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = end(&mut self.child);
    }
}

/// Ends `child` as a user would, with SIGTERM, so a moat cleans up (its state directory,
/// its control groups); SIGKILL after 15 s.
fn end(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    // Already reaped (finish, wait): its pid may be another process's by now.
    if let Ok(Some(status)) = child.try_wait() {
        return Ok(status);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait()
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

/// Runs `cmd` with piped output, killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The unprivileged user the rootless tests run moat as.
pub const TEST_USER: &str = "moat-e2e";

/// Creates [`TEST_USER`] (a system user without a home) when it does not exist.
pub fn ensure_test_user() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let exists = Command::new("id")
            .arg(TEST_USER)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !exists {
            // Two tests may race to create it: a second useradd fails, so check again.
            let _ = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    TEST_USER,
                ])
                .status();
            sh(&["id", TEST_USER]);
        }
    });
}

/// The test user's numeric uid.
pub fn test_uid() -> u32 {
    ensure_test_user();
    let out = Command::new("id").args(["-u", TEST_USER]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A scratch directory, removed on drop, that the test user can enter; with a copy of
/// the moat binary the test user can run.
pub struct Scratch {
    /// The directory.
    pub dir: PathBuf,
}

impl Scratch {
    /// A fresh directory under the system temp dir (mode 0755).
    pub fn new(tag: &str) -> Scratch {
        use std::os::unix::fs::PermissionsExt;
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "moat-e2e-{tag}-{}x{n}",
            std::process::id() % 100_000
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch { dir }
    }

    /// A path in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A subdirectory owned by `uid` (mode 0700), e.g. a work dir for the test user.
    pub fn owned_dir(&self, name: &str, uid: u32) -> PathBuf {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        sh(&["chown", &uid.to_string(), d.to_str().unwrap()]);
        d
    }

    /// A copy of the moat binary that every user may run.
    pub fn user_bin(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let bin = self.dir.join("moat");
        if !bin.exists() {
            std::fs::copy(moat_bin(), &bin).unwrap();
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        bin
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Who runs moat in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum As {
    /// root (CI runs as root).
    Root,
    /// [`TEST_USER`], through runuser.
    User,
}

impl As {
    /// Both, for tests that must hold as root and as a normal user.
    pub const BOTH: [As; 2] = [As::Root, As::User];

    /// A command that runs `moat ARGS` as this user, in the current (root) network
    /// namespace: for runs with `--policy none`, which dial nothing.
    pub fn moat(self, scratch: &Scratch, args: &[&str]) -> Command {
        match self {
            As::Root => {
                let mut c = Command::new(moat_bin());
                c.args(args);
                c
            }
            As::User => {
                ensure_test_user();
                let mut c = Command::new("runuser");
                c.args(["-u", TEST_USER, "--"])
                    .arg(scratch.user_bin())
                    .args(args);
                c
            }
        }
    }

    /// How a shell script starts moat as this user (a command line to prefix arguments to).
    pub fn shell_command(self, scratch: &Scratch) -> String {
        match self {
            As::Root => moat_bin().display().to_string(),
            As::User => {
                ensure_test_user();
                format!("runuser -u {TEST_USER} -- {}", scratch.user_bin().display())
            }
        }
    }

    /// Runs `moat run --policy none MOAT_ARGS -- sh -c SCRIPT` as this user (bounded).
    pub fn run_offline(
        self,
        scratch: &Scratch,
        moat_args: &[&str],
        script: &str,
        timeout: Duration,
    ) -> Output {
        let mut args = vec!["run", "--policy", "none"];
        args.extend_from_slice(moat_args);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        run_with_timeout(self.moat(scratch, &args), timeout)
    }
}

/// A process started in the background for a test, ended if the test ends early (a failed
/// assertion must not leave it holding the test's pipes).
pub struct Running {
    child: Child,
    stdout: Option<BufReader<std::process::ChildStdout>>,
}

impl Running {
    /// Starts `cmd` with stdout piped (stdin and stderr closed) and returns it with the
    /// first line it printed.
    pub fn start(mut cmd: Command) -> (Running, String) {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut running = Running {
            child,
            stdout: None,
        };
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        running.stdout = Some(reader);
        (running, line.trim().to_owned())
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit (failing the test after `limit`) and returns its
    /// status and the rest of what it printed.
    pub fn wait(&mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = String::new();
        if let Some(mut r) = self.stdout.take() {
            let _ = r.read_to_string(&mut rest);
        }
        (status, rest)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = end(&mut self.child);
    }
}

/// How many events an audit log line stands for: repeats within a second are folded into
/// one line with `count`.
pub fn times(e: &serde_json::Value) -> u64 {
    e["count"].as_u64().unwrap_or(1)
}

/// Checks one audit event against the schema of shared/API.md §5: the common fields, then
/// each event type's own, each with its one type; no field beyond them. Returns what is
/// wrong.
pub fn validate_event(e: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    let obj = e.as_object().ok_or("not an object")?;
    let s = |v: &Value| v.is_string();
    let u = |v: &Value| v.is_u64();
    let b = |v: &Value| v.is_boolean();
    let strs = |v: &Value| v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
    let one_of = |allowed: &'static [&'static str]| {
        move |v: &Value| v.as_str().is_some_and(|x| allowed.contains(&x))
    };
    let hex16 = |v: &Value| {
        v.as_str()
            .is_some_and(|x| x.len() == 16 && x.bytes().all(|c| c.is_ascii_hexdigit()))
    };
    let ts = |v: &Value| {
        v.as_str().is_some_and(|x| {
            x.len() == 27 && x.ends_with('Z') && x.as_bytes()[10] == b'T' && x.as_bytes()[4] == b'-'
        })
    };
    let rule = |v: &Value| v.is_u64() || v == "default";
    type Check<'a> = (&'a str, bool, Box<dyn Fn(&Value) -> bool + 'a>);
    let mut fields: Vec<Check> = vec![
        ("ts", true, Box::new(ts)),
        ("sandbox", true, Box::new(s)),
        ("run", true, Box::new(hex16)),
        ("event", true, Box::new(s)),
        ("decision", true, Box::new(one_of(&["allow", "deny"]))),
        ("reason", true, Box::new(s)),
        ("rule", false, Box::new(rule)),
        ("by", false, Box::new(s)),
    ];
    let flow = |fields: &mut Vec<Check>| {
        fields.push((
            "direction",
            true,
            Box::new(one_of(&["outbound", "inbound"])),
        ));
        fields.push((
            "proto",
            true,
            Box::new(one_of(&["tcp", "udp", "icmpv4", "icmpv6"])),
        ));
        fields.push(("src", true, Box::new(s)));
        fields.push(("dst", true, Box::new(s)));
        fields.push(("port", true, Box::new(u)));
    };
    let event = obj.get("event").and_then(Value::as_str).unwrap_or("");
    let decided = match event {
        "start" => {
            fields.push(("version", true, Box::new(s)));
            fields.push(("network", true, Box::new(one_of(&["moat", "none"]))));
            false
        }
        "end" => {
            fields.push(("exit_status", false, Box::new(|v: &Value| v.is_i64())));
            for k in ["allowed", "denied", "over_limit", "dns_queries"] {
                fields.push((k, true, Box::new(u)));
            }
            // What the log itself could not hold (absent from logs written before them).
            for k in ["events_folded", "events_dropped", "events_lost"] {
                fields.push((k, false, Box::new(u)));
            }
            false
        }
        "truncated" => {
            fields.push(("max_size", true, Box::new(u)));
            false
        }
        "connect" => {
            flow(&mut fields);
            fields.push(("domain", false, Box::new(s)));
            fields.push(("sni", false, Box::new(s)));
            true
        }
        "close" => {
            flow(&mut fields);
            for k in ["bytes_up", "bytes_down", "duration_ms"] {
                fields.push((k, true, Box::new(u)));
            }
            true
        }
        "dns" => {
            fields.push(("name", true, Box::new(s)));
            fields.push(("qtype", true, Box::new(s)));
            fields.push(("answers", true, Box::new(strs)));
            fields.push(("blocked_by", false, Box::new(s)));
            true
        }
        "tls" => {
            flow(&mut fields);
            fields.push(("sni", true, Box::new(s)));
            fields.push(("tls", true, Box::new(one_of(&["intercepted", "bypassed"]))));
            fields.push(("upstream_verified", false, Box::new(b)));
            fields.push(("alpn", false, Box::new(s)));
            true
        }
        "secret" => {
            flow(&mut fields);
            fields.push(("name", true, Box::new(s)));
            fields.push(("host", true, Box::new(s)));
            fields.push((
                "secret",
                true,
                Box::new(one_of(&["substituted", "redacted", "violation"])),
            ));
            fields.push(("action", true, Box::new(s)));
            true
        }
        other => return Err(format!("unknown event type {other:?}")),
    };
    if decided {
        // Repeats folded into this line (at least one: the line itself stands for one).
        fields.push((
            "count",
            false,
            Box::new(|v: &Value| v.as_u64().is_some_and(|n| n >= 1)),
        ));
    }
    for (name, required, check) in &fields {
        match obj.get(*name) {
            Some(v) if !check(v) => return Err(format!("{event}: field {name} = {v}")),
            None if *required => return Err(format!("{event}: no field {name}")),
            _ => {}
        }
    }
    for key in obj.keys() {
        if !fields.iter().any(|(n, _, _)| n == key) {
            return Err(format!("{event}: unknown field {key}"));
        }
    }
    // What decided: a rule of the policy, or a built-in; start and end, neither.
    let deciders = usize::from(obj.contains_key("rule")) + usize::from(obj.contains_key("by"));
    if decided && deciders != 1 {
        return Err(format!("{event}: {deciders} of rule/by"));
    }
    if !decided && deciders != 0 {
        return Err(format!("{event}: rule/by on a {event} event"));
    }
    Ok(())
}

/// Waits for a server started with a piped stdout to say "ready" on its first line.
fn await_ready(child: &mut Child, what: &str) {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "{what} did not start");
}

/// A policy file's rules: its lines that are not comments (a learned file's header quotes
/// the command, which may name anything).
pub fn rules_of(policy: &str) -> String {
    policy
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}
