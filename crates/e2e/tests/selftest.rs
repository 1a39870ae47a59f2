//! `moat selftest`: its probes hold on this machine as root and as a normal user, and each
//! probe's attacker (`moat __probe NAME`) reports its attempt working when run without a
//! sandbox — so a held probe means the sandbox stopped an attempt that detects a leak, not
//! an attempt that could never succeed. (The split-ClientHello attacker is also the escape
//! suite's client: escape.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use moat_e2e::{As, Scratch, TEST_USER, World, moat_bin, run_with_timeout, stderr, stdout};

const T: Duration = Duration::from_secs(60);

/// The classes of issue 26, one probe each.
const PROBES: [&str; 18] = [
    "terminal",
    "signals",
    "descriptors",
    "keyring",
    "unix-sockets",
    "set-id",
    "socket-families",
    "namespaces",
    "syscalls",
    "etc-secrets",
    "root-only-files",
    "proc-sys-views",
    "host-addresses",
    "host-addresses-udp",
    "metadata",
    "private-ranges",
    "dns-rebinding",
    "split-client-hello",
];

/// `moat selftest ARGS` as `who`, in the host namespace of `w` (nothing it does could
/// reach another machine anyway: see the selftest module's header).
fn selftest(w: &World, s: &Scratch, who: As, args: &[&str]) -> Output {
    let mut c = match who {
        As::Root => w.in_host(moat_bin()),
        As::User => {
            moat_e2e::ensure_test_user();
            let mut c = w.in_host("runuser");
            c.args(["-u", TEST_USER, "--"]).arg(s.user_bin());
            c
        }
    };
    c.arg("selftest").args(args);
    run_with_timeout(c, T)
}

#[test]
fn every_probe_holds_as_root_and_as_a_user() {
    let w = World::new();
    let s = Scratch::new("selftest");
    for who in As::BOTH {
        let out = selftest(&w, &s, who, &["--json"]);
        let text = stdout(&out);
        let report: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{who:?}: {e}: {text}\n{}", stderr(&out)));
        // 0 only when every probe held; 2 when none leaked but some were skipped.
        let expected = if report["skipped"] == 0 { 0 } else { 2 };
        assert_eq!(out.status.code(), Some(expected), "{who:?}: {report:#}");
        let probes = report["probes"].as_array().unwrap();
        let names: Vec<&str> = probes.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, PROBES, "{who:?}");
        let lacks = report["host_lacks"].as_array().unwrap();
        let no_tun = lacks.iter().any(|l| l["what"] == "tun");
        for p in probes {
            let (name, verdict) = (p["name"].as_str().unwrap(), p["verdict"].as_str().unwrap());
            // What may be skipped: root's files for a user (the host refuses them too), and
            // the network where this user may not make a TAP (moat run fails closed there).
            let may_skip = match who {
                As::Root => false,
                As::User => {
                    ["etc-secrets", "root-only-files"].contains(&name)
                        || (no_tun && PROBES[12..].contains(&name))
                }
            };
            assert!(
                verdict == "held" || (may_skip && verdict == "skipped"),
                "{who:?}: {name} {verdict}: {}",
                p["detail"]
            );
        }
        assert_eq!(report["leaks"], 0, "{who:?}");
        assert_eq!(report["failed"], 0, "{who:?}");
        let seconds = report["seconds"].as_f64().unwrap();
        assert!(seconds < 10.0, "{who:?}: took {seconds} s");
    }
    // The text form: a line per probe, then what the host lacks, then the total.
    let out = selftest(&w, &s, As::Root, &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for name in PROBES {
        assert!(
            text.lines()
                .any(|l| l.starts_with("held ") && l.split_whitespace().nth(1) == Some(name)),
            "{name}: {text}"
        );
    }
    let last = text.lines().last().unwrap_or("");
    assert!(
        last.contains("18 probes") && last.contains("18 held"),
        "{last}"
    );
}

/// `moat __probe ARGS` on the host, as root, with no sandbox; its exit status and output.
fn attacker(args: &[&str]) -> (i32, String) {
    let mut c = Command::new(moat_bin());
    c.arg("__probe").args(args);
    let out = run_with_timeout(c, T);
    (out.status.code().unwrap_or(-1), stdout(&out))
}

/// Asserts that the attacker reported its attempt working (`open:`, exit status 1).
fn opens(args: &[&str]) -> String {
    let (status, text) = attacker(args);
    assert!(
        status == 1 && text.lines().last().unwrap_or("").starts_with("open: "),
        "{args:?}: {status}: {text}"
    );
    text
}

#[test]
fn each_attacker_reports_its_attempt_working_without_a_sandbox() {
    moat_e2e::require_root();
    let s = Scratch::new("attackers");
    // Socket families, namespaces, /proc and /sys, root's files: the kernel's answers.
    let text = opens(&["families"]);
    assert!(
        text.contains("socket(vsock, upper half set): worked"),
        "{text}"
    );
    opens(&["namespaces"]);
    let text = opens(&["syscalls"]);
    assert!(text.contains("no seccomp filter"), "{text}");
    opens(&["views", "lo"]);
    opens(&["files", "/etc/shadow"]);

    // A descriptor left open by the caller is written, and so is a file another process
    // holds (through its /proc/PID/fd link).
    use std::os::unix::fs::MetadataExt as _;
    let identity = |p: &std::path::Path| {
        let m = std::fs::metadata(p).unwrap();
        format!("{}:{}", m.dev(), m.ino())
    };
    let file = s.path("fd7");
    std::fs::write(&file, "").unwrap();
    let mut c = Command::new("bash");
    c.args([
        "-c",
        &format!(
            "exec 7>>{}; exec {} __probe fd 7 {}",
            file.display(),
            moat_bin().display(),
            identity(&file)
        ),
    ]);
    let out = run_with_timeout(c, T);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        std::fs::read_to_string(&file)
            .unwrap()
            .contains("MOAT-SELFTEST-LEAK")
    );
    let held = s.path("held");
    let mut holder = Command::new("sleep")
        .arg("30")
        .stdout(std::fs::File::create(&held).unwrap())
        .spawn()
        .unwrap();
    let text = opens(&["fd", "9", &identity(&held)]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        text.contains("write through another process's descriptor [\"/proc/"),
        "{text}"
    );
    assert!(
        std::fs::read_to_string(&held)
            .unwrap()
            .contains("MOAT-SELFTEST-LEAK")
    );

    // The caller's unix sockets are reached, on disk and abstract.
    use std::os::linux::net::SocketAddrExt as _;
    let path = s.path("api.sock");
    let disk = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let name = format!("moat-e2e-attacker-{}", std::process::id());
    let abs = std::os::unix::net::UnixListener::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap(),
    )
    .unwrap();
    opens(&["unix", &name, path.to_str().unwrap()]);
    for l in [&disk, &abs] {
        l.set_nonblocking(true).unwrap();
        assert!(l.accept().is_ok(), "not reached");
    }

    // Set-id files are made.
    let dir = s.path("setid");
    std::fs::create_dir(&dir).unwrap();
    opens(&["setid", dir.to_str().unwrap()]);
    let mode = std::fs::metadata(dir.join("chmod-4755"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o4000, 0, "{mode:o}");

    // A process of the caller's gets the signal.
    let mut victim = Command::new("sleep")
        .arg("30")
        .process_group(0)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = victim.id().to_string();
    opens(&["signal", &pid, &pid]);
    let ended = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        matches!(victim.try_wait(), Ok(Some(_)))
    });
    if !ended {
        let _ = victim.kill();
        let _ = victim.wait();
    }
    assert!(ended, "the signal did not arrive");

    // A key of the caller's session keyring is read.
    let desc = format!("moat-e2e-attacker-key-{}", std::process::id());
    moat_sandbox::probe::add_session_key(
        &std::ffi::CString::new(format!("moat-e2e-{}", std::process::id())).unwrap(),
        &std::ffi::CString::new(desc.clone()).unwrap(),
        b"SECRET",
    )
    .unwrap();
    opens(&["keyring", &desc]);

    // A listener of the caller's is reached.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    opens(&["connect", &l.local_addr().unwrap().to_string()]);

    // Input is pushed into the caller's terminal (where the kernel allows TIOCSTI at all).
    let script = format!(
        "import os, pty, fcntl, subprocess\nm, s = pty.openpty()\nr = subprocess.run([{bin:?}, '__probe', 'tty'], stdin=s, stdout=subprocess.DEVNULL)\nfcntl.fcntl(s, fcntl.F_SETFL, os.O_NONBLOCK)\ntry:\n    got = os.read(s, 4096)\nexcept OSError:\n    got = b''\nprint(r.returncode, b'MOAT-SELFTEST-INJECTED' in got)\n",
        bin = moat_bin().display().to_string()
    );
    let mut c = Command::new("python3");
    c.args(["-c", &script]);
    let out = run_with_timeout(c, T);
    assert_eq!(stdout(&out).trim(), "1 True", "{}", stderr(&out));
}

/// The rebinding attacker sees inward answers when a user turns the protection off, and
/// none under the default (the control of the probe's own verdict).
#[test]
fn the_rebinding_attacker_sees_what_the_protection_removes() {
    let w = World::new();
    let bin = moat_bin().display().to_string();
    let script = format!("{bin} __probe dns private.example.test; echo status $?");
    let (out, _) = w.run_sh(&["--ro", &bin, "--no-dns-rebind-protection"], &script, T);
    let text = stdout(&out);
    assert!(
        text.contains("open: ") && text.contains("status 1"),
        "{text}\n{}",
        stderr(&out)
    );
    let (out, _) = w.run_sh(&["--ro", &bin], &script, T);
    let text = stdout(&out);
    assert!(
        text.contains("shut: ") && text.contains("status 0"),
        "{text}\n{}",
        stderr(&out)
    );
}
