//! Podman for the end-to-end tests: rootful, with the first OCI runtime that runs a
//! container on this machine, and an image built here from what the machine has (Debian's
//! static busybox, and curl with the libraries it loads), never pulled from a registry.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use crate::{run_with_timeout, stderr, stdout};

/// The image the tests run.
pub const IMAGE: &str = "localhost/moat-e2e:2";

/// Podman, as the tests run it.
#[derive(Debug, Clone)]
pub struct Podman {
    runtime: String,
}

/// Options every `podman run` takes here: open files and processes within the limits this
/// machine's root has (Podman's defaults ask for more, which the runtime may not set).
pub const RUN_LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
];

impl Podman {
    /// Podman with a runtime that runs the test image, or why there is none. Built once
    /// per test process.
    pub fn get() -> Result<Podman, String> {
        static ONCE: OnceLock<Result<Podman, String>> = OnceLock::new();
        ONCE.get_or_init(detect).clone()
    }

    /// The OCI runtime that works here.
    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    /// `podman` with its global options.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.args(["--runtime", &self.runtime]);
        c
    }

    /// A containers.conf that makes a plain `podman run` on this machine use the runtime
    /// and limits the tests found to work (for command lines run as written, with
    /// `CONTAINERS_CONF` naming it).
    pub fn containers_conf(&self, dir: &Path) -> PathBuf {
        let path = dir.join("containers.conf");
        let text = format!(
            "[containers]\ndefault_ulimits = [\"{}\", \"{}\"]\n\n[engine]\nruntime = \"{}\"\n",
            RUN_LIMITS[1], RUN_LIMITS[3], self.runtime
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `podman ARGS` (bounded), failing the test when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// Runs `podman ARGS`, killed after `timeout`.
    pub fn run(&self, args: &[&str], timeout: Duration) -> Output {
        let mut c = self.cmd();
        c.args(args);
        run_with_timeout(c, timeout)
    }
}

/// Podman, or `None` (said on stderr) when this machine cannot run it; with
/// MOAT_REQUIRE_PODMAN=1 (as `.ci/run` sets) that is a failure instead.
pub fn podman_or_skip() -> Option<Podman> {
    match Podman::get() {
        Ok(p) => Some(p),
        Err(why) if std::env::var("MOAT_REQUIRE_PODMAN").as_deref() != Ok("1") => {
            eprintln!("skipped: {why}");
            None
        }
        Err(why) => panic!("{why} (MOAT_REQUIRE_PODMAN=1)"),
    }
}

fn detect() -> Result<Podman, String> {
    if Command::new("podman").arg("--version").output().is_err() {
        return Err("podman is not installed (apt-get install podman runc)".into());
    }
    build_image()?;
    let mut why = Vec::new();
    // crun refuses a host whose control groups are in hybrid mode; runc does not.
    for runtime in ["crun", "runc"] {
        let p = Podman {
            runtime: runtime.to_owned(),
        };
        let mut args = vec!["run", "--rm", "--network", "none"];
        args.extend(RUN_LIMITS);
        args.extend([IMAGE, "true"]);
        let out = p.run(&args, Duration::from_secs(120));
        if out.status.success() {
            return Ok(p);
        }
        why.push(format!("{runtime}: {}", stderr(&out).trim()));
    }
    Err(format!(
        "no OCI runtime runs a container here: {}",
        why.join("; ")
    ))
}

/// The image: busybox (a shell, wget, nslookup, httpd) and curl with its libraries and the
/// dynamic loader, copied from this machine; imported, not pulled.
fn build_image() -> Result<(), String> {
    let exists = Command::new("podman")
        .args(["image", "exists", IMAGE])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if exists {
        return Ok(());
    }
    let root = std::env::temp_dir().join(format!("moat-e2e-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let made = fill_root(&root);
    let tar = root.with_extension("tar");
    let imported = made.and_then(|()| {
        let out = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(stderr(&out));
        }
        let out = Command::new("podman")
            .args(["import", "--change", "CMD [\"/bin/sh\"]"])
            .arg(&tar)
            .arg(IMAGE)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("podman import: {}", stderr(&out)))
        }
    });
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&tar);
    imported
}

fn fill_root(root: &Path) -> Result<(), String> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .ok_or("no busybox (apt-get install busybox-static)")?;
    let bin = root.join("bin");
    for dir in [
        "bin",
        "etc/ssl/certs",
        "tmp",
        "www",
        "proc",
        "sys",
        "dev",
        "run",
    ] {
        std::fs::create_dir_all(root.join(dir)).map_err(|e| e.to_string())?;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .map_err(|e| e.to_string())?;
    }
    std::fs::copy(busybox, bin.join("busybox")).map_err(|e| e.to_string())?;
    for applet in [
        "sh", "wget", "nslookup", "httpd", "sleep", "cat", "echo", "ip", "ls", "true", "grep",
    ] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(|e| e.to_string())?;
    }
    std::fs::write(root.join("www/index.html"), "served from the container\n")
        .map_err(|e| e.to_string())?;
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .map_err(|e| e.to_string())?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n").map_err(|e| e.to_string())?;
    // curl and every library it and moat load, at the same paths (the image is also the
    // base of moat's own, deploy/container/Containerfile).
    let curl = PathBuf::from("/usr/bin/curl");
    let ldd = Command::new("ldd")
        .arg(&curl)
        .arg(crate::moat_bin())
        .output()
        .map_err(|e| e.to_string())?;
    let mut files = vec![curl];
    // Given two files, ldd heads each one's list with its name and a colon.
    for line in stdout(&ldd).lines().filter(|l| !l.ends_with(':')) {
        let path = line
            .split("=>")
            .last()
            .and_then(|s| s.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        files.extend(path.map(PathBuf::from));
    }
    files.sort();
    files.dedup();
    for file in files {
        let to = root.join(file.strip_prefix("/").unwrap_or(&file));
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        std::fs::copy(&file, &to).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    Ok(())
}
