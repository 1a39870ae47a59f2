//! Exit, signals and teardown: nothing of a sandbox survives moat, whatever ends it; and
//! a normal user can run moat (user namespaces).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use moat_e2e::{World, moat_bin, run_with_timeout, sh, stderr, stdout};

/// Processes whose network namespace is `ns` (`net:[…]`).
fn processes_in_netns(ns: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(link) = std::fs::read_link(entry.path().join("ns/net"))
            && link.to_string_lossy() == ns
        {
            found.push(name);
        }
    }
    found
}

fn processes_with_cmdline(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmd).contains(marker)
        {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

/// State directories of runs named `name` under root's state base.
fn state_dirs(name: &str) -> Vec<String> {
    std::fs::read_dir(std::env::temp_dir().join("moat-0"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{name}-")))
                .collect()
        })
        .unwrap_or_default()
}

/// Starts `moat run` with a long sleep; returns the child and the sandbox's netns.
fn start_sleeper(w: &World, name: &str, marker: &str) -> (std::process::Child, String) {
    let mut child = w
        .in_host(moat_bin())
        .args([
            "run",
            "--name",
            name,
            "--",
            "sh",
            "-c",
            &format!("readlink /proc/self/ns/net; exec sleep {marker}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ns = line.trim().to_owned();
    assert!(ns.starts_with("net:["), "{ns}");
    assert!(!processes_in_netns(&ns).is_empty());
    (child, ns)
}

fn wait(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("moat did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_gone(ns: &str, marker: &str) {
    // The kernel reaps asynchronously: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && (!processes_in_netns(ns).is_empty() || !processes_with_cmdline(marker).is_empty())
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        processes_in_netns(ns),
        Vec::<String>::new(),
        "processes left in {ns}"
    );
    assert_eq!(
        processes_with_cmdline(marker),
        Vec::<String>::new(),
        "the command survived"
    );
}

#[test]
fn sigterm_ends_the_command_and_leaves_nothing() {
    let w = World::new();
    let marker = "1000.4242";
    let (mut child, ns) = start_sleeper(&w, "e2eterm", marker);
    nix_kill(child.id(), "TERM");
    let status = wait(&mut child, Duration::from_secs(15));
    assert_eq!(
        status.code(),
        Some(143),
        "exit status is the command's: killed by SIGTERM"
    );
    assert_gone(&ns, marker);
    assert_eq!(
        state_dirs("e2eterm"),
        Vec::<String>::new(),
        "state directory left behind"
    );
}

#[test]
fn sigkill_of_moat_takes_the_sandbox_down() {
    let w = World::new();
    let marker = "1000.4343";
    let (mut child, ns) = start_sleeper(&w, "e2ekill", marker);
    nix_kill(child.id(), "KILL");
    wait(&mut child, Duration::from_secs(15));
    assert_gone(&ns, marker);
    // SIGKILL gives moat no chance to clean up; the next start sweeps what it left.
    let next = w.moat(
        &["run", "--policy", "none", "--", "true"],
        Duration::from_secs(30),
    );
    assert!(next.status.success(), "{}", stderr(&next));
    assert_eq!(
        state_dirs("e2ekill"),
        Vec::<String>::new(),
        "state of the killed run left behind"
    );
}

fn nix_kill(pid: u32, signal: &str) {
    sh(&["kill", &format!("-{signal}"), &pid.to_string()]);
}

/// Restores /dev/net/tun's mode when dropped.
struct TunMode(u32);

impl Drop for TunMode {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(self.0));
    }
}

#[test]
fn rootless_basic_allow_and_deny() {
    let w = World::new();
    let user = "moat-e2e";
    if Command::new("id")
        .arg(user)
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        sh(&[
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            user,
        ]);
    }
    let mode = std::fs::metadata("/dev/net/tun")
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    let _restore = TunMode(mode);
    std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666)).unwrap();
    // The binary and a writable audit directory where the user can reach them.
    let dir = w.dir.join("rootless");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&w.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let bin = dir.join("moat");
    std::fs::copy(moat_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let audit = dir.join("audit.jsonl");
    let mut cmd = w.in_host("runuser");
    cmd.args(["-u", user, "--"])
        .arg(&bin)
        .args(["run", "--audit"])
        .arg(&audit)
        .args([
            "--",
            "sh",
            "-c",
            "id -u; cat /proc/self/uid_map; curl -sS -m 10 -o /dev/null -w 'public %{http_code}\\n' http://203.0.113.10/; \
             curl -sS --connect-timeout 1 -m 2 http://10.1.0.10/ && echo REACHED; true",
        ]);
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    let text = stdout(&out);
    assert!(text.contains("public 200"), "{text}\n{}", stderr(&out));
    assert!(!text.contains("REACHED"), "{text}");
    assert_eq!(
        text.lines().next(),
        Some("0"),
        "root inside the user namespace"
    );
    // ...which is the test user outside: moat really ran unprivileged.
    let uid = moat_e2e::test_uid().to_string();
    let map: Vec<&str> = text
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(map, ["0", uid.as_str(), "1"], "{text}");
    let events = std::fs::read_to_string(&audit).unwrap();
    assert!(
        events.contains("\"decision\":\"deny\"") && events.contains("10.1.0.10"),
        "{events}"
    );
    // The moat process itself ran as the user.
    assert!(Path::new(&bin).exists());
}

/// Orphans that end together are all reaped by the sandbox's init, though their SIGCHLDs
/// arrive as one: none is left a zombie.
#[test]
fn orphans_that_end_together_are_all_reaped() {
    let w = World::new();
    // Thirty orphans (their parent subshells exit at once) block on one FIFO; closing it
    // ends them in the same instant.
    let script = "mkfifo /tmp/gate; \
        for i in $(seq 1 30); do (cat /tmp/gate >/dev/null &); done; \
        exec 3>/tmp/gate; sleep 0.5; \
        orphans=$(grep -lx cat /proc/[0-9]*/comm 2>/dev/null | wc -l); \
        exec 3>&-; sleep 1; \
        zombies=0; \
        for s in /proc/[0-9]*/stat; do set -- $(cat $s 2>/dev/null); [ \"$3\" = Z ] && zombies=$((zombies+1)); done; \
        echo orphans=$orphans zombies=$zombies";
    let out = w.moat(
        &["run", "--policy", "none", "--", "sh", "-c", script],
        Duration::from_secs(30),
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    // The orphans were there to be reaped, and none is left unreaped.
    assert!(text.contains("orphans=30 "), "{text}");
    assert!(text.contains("zombies=0"), "{text}");
}
