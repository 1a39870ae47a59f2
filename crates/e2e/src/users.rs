//! Who runs moat in a test: root, or an unprivileged test user (created once), with a
//! scratch directory and a copy of the binary that user can reach.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::{COUNTER, moat_bin, run_with_timeout, sh};

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
