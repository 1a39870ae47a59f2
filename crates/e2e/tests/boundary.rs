//! The sandbox boundary beside the network: the terminal, signals, host unix sockets,
//! set-id files, inherited descriptors, keyrings, host secrets, moat's own state, limits.
//!
//! Each test pairs the blocked path with a control that shows the path was exercised (the
//! attempt ran inside, or the same thing works where it is meant to). Runs that need no
//! network use `--policy none` in the test's own namespace: nothing is dialled.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use moat_e2e::{As, Running, Scratch, World, moat_bin, run_with_timeout, stderr, stdout, test_uid};

const T: Duration = Duration::from_secs(60);

/// A host directory a test made, removed when the test ends (also on panic).
struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn uid_of(who: As) -> u32 {
    match who {
        As::Root => 0,
        As::User => test_uid(),
    }
}

/// Runs a python3 script on the host (the test's own process space), bounded.
fn host_python(script: &str, timeout: Duration) -> std::process::Output {
    let mut c = Command::new("python3");
    c.args(["-c", script]);
    run_with_timeout(c, timeout)
}

/// Finding 1: a command cannot push input into the host terminal (TIOCSTI through
/// /dev/tty or a terminal descriptor), with stdin redirected or on the terminal itself.
#[test]
fn terminal_injection_does_not_reach_the_host() {
    let s = Scratch::new("tty");
    for who in As::BOTH {
        let bin = match who {
            As::Root => moat_bin(),
            As::User => s.user_bin(),
        };
        let runner = match who {
            As::Root => String::new(),
            As::User => format!("'runuser', '-u', '{}', '--', ", moat_e2e::TEST_USER),
        };
        // The inner script tries every way to the terminal and says what happened.
        let inner = r#"
import os, fcntl, termios
def sti(fd, what):
    try:
        for c in b"echo INJECTED\n":
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([c]))
        print("TIOCSTI-OK", what, flush=True)
    except OSError as e:
        print("TIOCSTI-DENIED", what, e.errno, flush=True)
try:
    fd = os.open("/dev/tty", os.O_RDWR)
    sti(fd, "devtty")
except OSError as e:
    print("NO-DEVTTY", e.errno, flush=True)
for fd in (0, 1, 2):
    sti(fd, "fd%d" % fd)
"#;
        // On a pseudo-terminal of its own: moat under it, then the terminal's input queue
        // is read back — injected bytes would be there.
        let outer = format!(
            r#"
import os, pty, select, sys, time
inner = {inner:?}
for stdin_mode in ("devnull", "tty"):
    pid, master = pty.fork()
    if pid == 0:
        if stdin_mode == "devnull":
            fd = os.open("/dev/null", os.O_RDONLY)
            os.dup2(fd, 0)
        os.execvp("{runner_bin}", [{runner}"{bin}", "run", "--policy", "none", "--", "python3", "-c", inner])
    out = b""
    deadline = time.time() + 30
    while time.time() < deadline:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                b = os.read(master, 4096)
            except OSError:
                break
            if not b:
                break
            out += b
        elif os.waitpid(pid, os.WNOHANG)[0]:
            break
    # Whatever sits in the terminal's input queue now would be read by the host shell.
    import termios
    queued = b""
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    print(stdin_mode, "OUTPUT", out.decode(errors="replace").replace("\r", "").replace("\n", " | "))
"#,
            runner_bin = if who == As::Root {
                bin.to_str().unwrap()
            } else {
                "runuser"
            },
            bin = bin.display(),
        );
        let out = host_python(&outer, T);
        let text = stdout(&out);
        // Controls: the attempts ran inside, in both modes.
        for mode in ["devnull", "tty"] {
            let line = text
                .lines()
                .find(|l| l.starts_with(mode))
                .unwrap_or_else(|| panic!("{who:?} {mode}: {text}\n{}", stderr(&out)));
            assert!(line.contains("fd0"), "{who:?} {mode}: {line}");
            assert!(!line.contains("TIOCSTI-OK"), "{who:?} {mode}: {line}");
            // Nothing came back as input: an injected line would be echoed by the terminal
            // as "echo INJECTED" and, read by a shell, run.
            assert!(!line.contains("echo INJECTED"), "{who:?} {mode}: {line}");
        }
        let devnull = text.lines().find(|l| l.starts_with("devnull")).unwrap();
        assert!(
            devnull.contains("NO-DEVTTY"),
            "no controlling terminal inside: {devnull}"
        );
    }
}

/// Finding 2: signals to the process group (and -1) stay inside; moat forwards the signals
/// it gets (SIGUSR1 included) and cleans up after them.
#[test]
fn signals_stay_inside_the_sandbox() {
    let s = Scratch::new("sig");
    for who in As::BOTH {
        let moat = who.shell_command(&s);
        let script = format!(
            "sleep 30 & {moat} run --policy none -- python3 -c 'import os, signal; print(\"inside\", flush=True); os.kill(0, signal.SIGTERM); os.kill(-1, signal.SIGTERM)'; \
             echo \"moat-exit $?\"; kill -0 $! && echo sibling-alive; kill $!; echo shell-alive"
        );
        let mut c = Command::new("setsid");
        c.args(["bash", "-c", &script]);
        let out = run_with_timeout(c, T);
        let text = stdout(&out);
        assert!(text.contains("inside"), "{who:?}: the command ran: {text}");
        assert!(text.contains("sibling-alive"), "{who:?}: {text}");
        assert!(text.contains("shell-alive"), "{who:?}: {text}");
        assert!(
            text.contains("moat-exit 143"),
            "{who:?}: the command itself got SIGTERM: {text}"
        );
    }
}

/// moat forwards SIGUSR1 (it used to die of it) and leaves no state behind.
#[test]
fn sigusr1_is_forwarded_and_state_removed() {
    let s = Scratch::new("usr1");
    let (mut child, line) = Running::start(As::Root.moat(
        &s,
        &[
            "run",
            "--policy",
            "none",
            "--name",
            "e2eusr1",
            "--",
            "sh",
            "-c",
            "trap 'echo got-usr1; exit 3' USR1; echo ready; while :; do sleep 0.05; done",
        ],
    ));
    assert_eq!(line, "ready");
    let ours = state_dirs("e2eusr1");
    assert_eq!(ours.len(), 1, "a state directory while running: {ours:?}");
    Command::new("kill")
        .args(["-USR1", &child.id().to_string()])
        .status()
        .unwrap();
    let (status, rest) = child.wait(T);
    assert!(rest.contains("got-usr1"), "{rest}");
    assert_eq!(status.code(), Some(3));
    assert!(
        !std::path::Path::new(&ours[0]).exists(),
        "state directory left behind"
    );
}

/// State directories of runs named `name` (all users' bases under the temp dir).
fn state_dirs(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    for base in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
        let base_name = base.file_name().to_string_lossy().into_owned();
        if !base_name.starts_with("moat-") || !base.path().is_dir() {
            continue;
        }
        if let Ok(entries) = std::fs::read_dir(base.path()) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{name}-"))
                {
                    found.push(e.path().display().to_string());
                }
            }
        }
    }
    found
}

/// Finding 3: unix sockets on the host's disk are out of reach under every policy; a
/// grant shows them (the control: the same client reaches the same server).
#[test]
fn host_unix_sockets_are_not_reachable() {
    let s = Scratch::new("unix");
    // A listener in a directory under /run, where the system's sockets live, and one under
    // /var/tmp; both accept anyone (mode 0777) and log each connection.
    let run_dir = std::path::PathBuf::from(format!("/run/moat-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    struct Cleanup(std::path::PathBuf, std::process::Child);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = self.1.kill();
            let _ = self.1.wait();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let sock = run_dir.join("api.sock");
    let log = s.path("accepted.log");
    let server = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket, os\ns = socket.socket(socket.AF_UNIX)\ns.bind({sock:?})\nos.chmod({sock:?}, 0o777)\ns.listen(16)\nprint('ready', flush=True)\nwhile True:\n    c, _ = s.accept()\n    open({log:?}, 'a').write('accepted\\n')\n    c.sendall(b'hello\\n')\n    c.close()\n",
                sock = sock.display().to_string(),
                log = log.display().to_string()
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = Cleanup(run_dir.clone(), server);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(guard.1.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    let client = format!(
        "python3 -c \"import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect('{}')\n    print('CONNECTED', s.recv(10))\nexcept OSError as e:\n    print('REFUSED', type(e).__name__)\"",
        sock.display()
    );
    let accepted = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    for who in As::BOTH {
        let out = who.run_offline(&s, &[], &client, T);
        let text = stdout(&out);
        assert!(text.contains("REFUSED"), "{who:?}: {text} {}", stderr(&out));
    }
    assert_eq!(accepted(), 0, "a sandbox reached the host's socket");
    // Under the network policies, in a world of namespaces (root).
    let w = World::new();
    for policy in ["public-only", "allow-all"] {
        let (out, _) = w.run_sh(&["--policy", policy], &client, T);
        assert!(
            stdout(&out).contains("REFUSED"),
            "{policy}: {}",
            stdout(&out)
        );
    }
    assert_eq!(accepted(), 0, "a sandbox reached the host's socket");
    // Control: granted on purpose, the same client reaches the same server.
    let out = As::Root.run_offline(&s, &["--ro", run_dir.to_str().unwrap()], &client, T);
    assert!(stdout(&out).contains("CONNECTED"), "{}", stdout(&out));
    assert_eq!(accepted(), 1);
}

/// Finding 4: nothing written through a writable grant or the work directory carries a
/// set-user-ID or set-group-ID bit, however it was made.
#[test]
fn no_set_id_files_through_the_work_dir() {
    let s = Scratch::new("suid");
    for who in As::BOTH {
        let dir = s.owned_dir(&format!("work-{who:?}"), uid_of(who));
        let script = "cp /usr/bin/id s1; chmod 4755 s1; chmod g+s s1; \
             cp /usr/bin/id s2; chmod 755 s2; \
             install -m 4755 /usr/bin/id s3; \
             python3 -c \"import os; os.close(os.open('s4', os.O_CREAT | os.O_WRONLY, 0o6755))\"; \
             python3 -c \"import os; os.mknod('s5', 0o104755)\"; \
             mkdir -p sub && cp -p /usr/bin/id sub/s6 && chmod u+s sub/s6; ls -l; true";
        let out = who.run_offline(&s, &["-w", dir.to_str().unwrap()], script, T);
        let mut seen = 0;
        for name in ["s1", "s2", "s3", "s4", "s5", "sub/s6"] {
            let p = dir.join(name);
            if let Ok(meta) = std::fs::metadata(&p) {
                seen += 1;
                let mode = meta.permissions().mode();
                assert_eq!(
                    mode & 0o6000,
                    0,
                    "{who:?}: {name} has mode {mode:o}\n{}",
                    stdout(&out)
                );
            }
        }
        // Controls: the copies were made, and an ordinary chmod works.
        assert!(seen >= 3, "{who:?}: {}\n{}", stdout(&out), stderr(&out));
        for made in ["s1", "s2", "sub/s6"] {
            assert!(dir.join(made).exists(), "{who:?}: {made}: {}", stderr(&out));
        }
        let s2 = std::fs::metadata(dir.join("s2"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(s2 & 0o777, 0o755, "{who:?}");
    }
}

/// Finding 5: descriptors the caller left open do not reach the command, unless passed
/// with --preserve-fds.
#[test]
fn inherited_descriptors_are_closed() {
    let s = Scratch::new("fds");
    for who in As::BOTH {
        let file = s.path(&format!("shared-{who:?}"));
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let moat = who.shell_command(&s);
        let f = file.display();
        let script = format!(
            "exec 7<>{f}; {moat} run --policy none -- sh -c 'echo LEAK >&7; ls /proc/self/fd | tr \"\\n\" \" \"; echo'; \
             exec 3<>{f}; {moat} run --policy none --preserve-fds 1 -- sh -c 'echo PASSED >&3'"
        );
        let mut c = Command::new("bash");
        c.args(["-c", &script]);
        let out = run_with_timeout(c, T);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("LEAK"), "{who:?}: {text}");
        // Control: passed on purpose, the same kind of descriptor works.
        assert!(text.contains("PASSED"), "{who:?}: {text} {}", stderr(&out));
        let listed = stdout(&out);
        let fds: Vec<&str> = listed
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        // ls lists 0, 1, 2 and the directory it reads; nothing else.
        assert!(fds.len() <= 4 && !fds.contains(&"7"), "{who:?}: {fds:?}");
    }
}

/// The processes of the descendants of `root` (itself included), by walking /proc.
fn process_tree(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The parent is the second field after the command name's closing parenthesis.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            parents.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|&&(_, pp)| pp == p).map(|&(c, _)| c));
        i += 1;
    }
    tree
}

/// The same class at the sandbox's first process: a descriptor the caller left open is
/// held by moat on the host (control), and by none of the sandbox's processes — the
/// supervisor and PID 1 included, not only the command.
#[test]
fn inherited_descriptors_stop_at_the_sandboxs_first_process() {
    let s = Scratch::new("fds1");
    for who in As::BOTH {
        let file = s.path(&format!("held-{who:?}"));
        std::fs::write(&file, "").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let script = format!(
            "exec 7<>{}; exec {} run --policy none -- sh -c 'echo started; sleep 20'",
            file.display(),
            who.shell_command(&s)
        );
        let mut c = Command::new("bash");
        c.args(["-c", &script]);
        let (running, first) = Running::start(c);
        assert_eq!(first, "started", "{who:?}");
        let own_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let (mut holders_outside, mut inside) = (0, Vec::new());
        for pid in process_tree(running.id()) {
            let Ok(mnt) = std::fs::read_link(format!("/proc/{pid}/ns/mnt")) else {
                continue;
            };
            let holds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|fds| {
                    fds.flatten()
                        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == file))
                })
                .unwrap_or(false);
            if mnt == own_mnt {
                holders_outside += usize::from(holds);
            } else {
                inside.push((pid, holds));
            }
        }
        drop(running);
        // Controls: the descriptor reached moat, and the sandbox's processes were seen
        // (the supervisor, PID 1, the shell and sleep).
        assert!(holders_outside >= 1, "{who:?}: moat did not inherit fd 7");
        assert!(inside.len() >= 2, "{who:?}: sandbox processes: {inside:?}");
        assert!(
            inside.iter().all(|&(_, holds)| !holds),
            "{who:?}: held inside: {inside:?}"
        );
    }
}

/// Finding 6: a key in the caller's session keyring cannot be read inside, nor its
/// description listed (`/proc/keys` lists every key the reader may view).
#[test]
fn session_keyring_is_not_shared() {
    let s = Scratch::new("keys");
    for who in As::BOTH {
        let moat: Vec<String> = match who {
            As::Root => vec![moat_bin().display().to_string()],
            As::User => vec![
                "runuser".into(),
                "-u".into(),
                moat_e2e::TEST_USER.into(),
                "--".into(),
                s.user_bin().display().to_string(),
            ],
        };
        // Inside and outside alike: find the key in the session keyring and read it, and
        // look for its description in /proc/keys.
        let reader = r#"
import ctypes, os
try:
    listed = "LISTED" if b"moat-e2e-key" in open("/proc/keys", "rb").read() else "UNLISTED"
except OSError:
    listed = "UNLISTED"
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
KEYCTL_SEARCH, KEYCTL_READ, SESSION = 10, 11, -3
SYS_keyctl = 250
kid = libc.syscall(SYS_keyctl, KEYCTL_SEARCH, SESSION, b"user", b"moat-e2e-key", 0)
if kid < 0:
    print("NOKEY", ctypes.get_errno(), listed, flush=True)
else:
    buf = ctypes.create_string_buffer(64)
    n = libc.syscall(SYS_keyctl, KEYCTL_READ, kid, buf, 64)
    print("KEY", buf.raw[:max(n, 0)].decode(), listed, flush=True)
"#;
        let outer = format!(
            r#"
import ctypes, subprocess
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SYS_add_key, SYS_keyctl = 248, 250
# A session keyring of this test's own, inherited by what it starts (and readable by all
# possessors, so the test user's moat could read it if the sandbox let it).
assert libc.syscall(SYS_keyctl, 1, b"moat-e2e-session") >= 0
kid = libc.syscall(SYS_add_key, b"user", b"moat-e2e-key", b"SECRET-VALUE", 12, -3)
assert kid >= 0
libc.syscall(SYS_keyctl, 5, kid, 0x3f3f3f3f)              # setperm: all may read
reader = {reader:?}
print("HOST", subprocess.run(["python3", "-c", reader], capture_output=True, text=True).stdout.strip())
args = {moat:?} + ["run", "--policy", "none", "--", "python3", "-c", reader]
print("SANDBOX", subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL).stdout.strip())
"#
        );
        let out = host_python(&outer, T);
        let text = stdout(&out);
        assert!(
            text.contains("HOST KEY SECRET-VALUE LISTED"),
            "{who:?}: control: {text} {}",
            stderr(&out)
        );
        let inside = text
            .lines()
            .find(|l| l.starts_with("SANDBOX"))
            .unwrap_or("");
        assert!(
            inside.contains("NOKEY") && inside.contains("UNLISTED"),
            "{who:?}: the command ran: {inside}"
        );
        assert!(!text.contains("SANDBOX KEY"), "{who:?}: {text}");
    }
}

/// The kernel's views of the whole host that container runtimes mask are masked:
/// `/proc/keys` and `/proc/key-users` (keys of every keyring the caller may view),
/// `/proc/timer_list`, `/sys/firmware` (ACPI tables, memory map); the rest of `/proc`
/// reads as usual.
#[test]
fn kernel_views_of_the_host_are_masked() {
    let s = Scratch::new("masked");
    // Control: on the host these are there to read, so masking them is what hides them.
    for f in ["/proc/timer_list", "/proc/keys", "/proc/key-users"] {
        assert!(std::fs::read(f).is_ok(), "control: the host reads {f}");
    }
    let firmware = std::fs::read_dir("/sys/firmware").map_or(0, |d| d.count());
    let script = "for f in /proc/timer_list /proc/keys /proc/key-users; do \
                    if [ \"$(cat $f | wc -c)\" = 0 ]; then echo masked $f; else echo open $f; fi; \
                  done; echo firmware $(ls /sys/firmware | wc -l); \
                  echo acpi $(ls /proc/acpi 2>/dev/null | wc -l); echo uptime $(cut -d' ' -f1 /proc/uptime)";
    for who in As::BOTH {
        let out = who.run_offline(&s, &[], script, T);
        let text = stdout(&out);
        // Control: the script ran and the sandbox's own /proc reads.
        assert!(
            text.contains("uptime ") && !text.contains("uptime \n"),
            "{who:?}: {text} {}",
            stderr(&out)
        );
        assert!(!text.contains("open "), "{who:?}: {text}");
        for f in ["/proc/timer_list", "/proc/keys", "/proc/key-users"] {
            assert!(text.contains(&format!("masked {f}\n")), "{who:?}: {text}");
        }
        assert!(
            text.contains("firmware 0\n"),
            "{who:?} (host: {firmware}): {text}"
        );
        assert!(text.contains("acpi 0\n"), "{who:?}: {text}");
    }
}

/// Finding 7: host secrets — /etc/shadow, private keys, home directories — are not
/// readable; a grant shows what it names.
#[test]
fn host_secrets_are_hidden() {
    let s = Scratch::new("secrets");
    // A home directory with a readable secret, as a user's ~/.ssh or cloud credentials.
    let home = std::path::PathBuf::from(format!("/home/moat-e2e-victim-{}", std::process::id()));
    let _cleanup = RemoveDir(home.clone());
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/id_ed25519"), "PRIVATE-KEY-MATERIAL\n").unwrap();
    for p in [&home, &home.join(".ssh")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(
        home.join(".ssh/id_ed25519"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let key = home.join(".ssh/id_ed25519");
    // A TLS key of the host's own where distributions keep them (the snakeoil key's
    // directory, root-only): planted here so the check holds on a host without one.
    let private = std::path::Path::new("/etc/ssl/private");
    let made_private = !private.exists();
    if made_private {
        std::fs::create_dir_all(private).unwrap();
        std::fs::set_permissions(private, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let tls_key = private.join(format!("moat-e2e-{}.key", std::process::id()));
    std::fs::write(&tls_key, "PLANTED-TLS-KEY\n").unwrap();
    std::fs::set_permissions(&tls_key, std::fs::Permissions::from_mode(0o640)).unwrap();
    struct Unplant(std::path::PathBuf, bool);
    impl Drop for Unplant {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
            if self.1 {
                let _ = std::fs::remove_dir(self.0.parent().unwrap());
            }
        }
    }
    let _unplant = Unplant(tls_key.clone(), made_private);
    assert!(
        std::fs::read_to_string(&tls_key)
            .unwrap()
            .contains("PLANTED-TLS-KEY"),
        "control: the host reads its key"
    );
    let script = format!(
        "cat {key} 2>&1; echo; echo shadow-bytes $(cat /etc/shadow 2>/dev/null | wc -c); \
         cat {tls_key} 2>&1; ls /etc/ssl/private 2>&1 | sed 's/^/private: /' | head -3; ls /root 2>&1 | head -3; ls -d /home /srv /mnt /media /var/lib /run/* 2>&1; echo done",
        key = key.display(),
        tls_key = tls_key.display()
    );
    let host_shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    assert!(!host_shadow.is_empty(), "control: the host has /etc/shadow");
    for who in As::BOTH {
        let out = who.run_offline(&s, &[], &script, T);
        let text = stdout(&out);
        assert!(text.contains("done"), "{who:?}: {text} {}", stderr(&out));
        assert!(!text.contains("PRIVATE-KEY-MATERIAL"), "{who:?}: {text}");
        assert!(text.contains("shadow-bytes 0"), "{who:?}: {text}");
        assert!(!text.contains("snakeoil"), "{who:?}: {text}");
        assert!(!text.contains("PLANTED-TLS-KEY"), "{who:?}: {text}");
        assert!(
            !text.lines().any(|l| l.starts_with("private: moat-e2e-")),
            "{who:?}: listed: {text}"
        );
        for hidden in ["/home", "/srv", "/mnt", "/media", "/var/lib"] {
            assert!(
                text.contains(&format!("cannot access '{hidden}'")),
                "{who:?}: {hidden} visible: {text}"
            );
        }
        // Control: granted, the same file is read.
        let out = who.run_offline(&s, &["--ro", home.to_str().unwrap()], &script, T);
        assert!(
            stdout(&out).contains("PRIVATE-KEY-MATERIAL"),
            "{who:?}: {}",
            stdout(&out)
        );
    }
}

/// Finding 7's class, beyond the known names: a file of /etc that only root may read (a
/// VPN's keys, a keystore's password) or a directory only root may enter is masked, also
/// when moat runs as root and the command inside is the host's root; what every user may
/// read stays readable, and a grant shows what it names.
#[test]
fn root_only_files_of_etc_are_masked() {
    let s = Scratch::new("etcpriv");
    let base = format!("/etc/moat-e2e-{}", std::process::id());
    struct Remove(Vec<String>);
    impl Drop for Remove {
        fn drop(&mut self) {
            for p in &self.0 {
                let _ = std::fs::remove_dir_all(p);
                let _ = std::fs::remove_file(p);
            }
        }
    }
    let mut cleanup = Remove(Vec::new());
    // Files: hidden unless others may read them, whatever the owner's and group's bits.
    let files = [
        (0o600, false),
        (0o640, false),
        (0o660, false),
        (0o400, false),
        (0o440, false),
        (0o700, false),
        (0o644, true),
        (0o604, true),
        (0o444, true),
    ];
    // Directories: entered only where others may list and enter them; a file inside that
    // everyone may read shows only then.
    let dirs = [
        (0o700, false),
        (0o750, false),
        (0o770, false),
        (0o711, false),
        (0o755, true),
    ];
    let mut script = String::new();
    for (mode, _) in files {
        let path = format!("{base}-f{mode:o}");
        std::fs::write(&path, format!("FILE-{mode:o}-CONTENT")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        script.push_str(&format!("cat {path} 2>&1; echo; "));
        cleanup.0.push(path);
    }
    for (mode, _) in dirs {
        let dir = format!("{base}-d{mode:o}");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(format!("{dir}/inner"), format!("DIR-{mode:o}-CONTENT")).unwrap();
        std::fs::write(
            format!("{dir}/private"),
            format!("DIRPRIV-{mode:o}-CONTENT"),
        )
        .unwrap();
        std::fs::set_permissions(
            format!("{dir}/private"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        script.push_str(&format!("cat {dir}/inner {dir}/private 2>&1; echo; "));
        cleanup.0.push(dir);
    }
    script.push_str("echo done");
    for who in As::BOTH {
        let out = who.run_offline(&s, &[], &script, T);
        let text = stdout(&out);
        assert!(text.contains("done"), "{who:?}: {text} {}", stderr(&out));
        for (mode, shown) in files {
            let seen = text.contains(&format!("FILE-{mode:o}-CONTENT"));
            assert_eq!(seen, shown, "{who:?}: file mode {mode:o}: {text}");
        }
        for (mode, entered) in dirs {
            let seen = text.contains(&format!("DIR-{mode:o}-CONTENT"));
            assert_eq!(seen, entered, "{who:?}: directory mode {mode:o}: {text}");
            assert!(
                !text.contains(&format!("DIRPRIV-{mode:o}-CONTENT")),
                "{who:?}: a 0640 file in a {mode:o} directory: {text}"
            );
        }
    }
    // Control: granted, a directory shows (to root, whose it is), and so does a file
    // granted inside it.
    let dir = format!("{base}-d700");
    let inner = format!("{dir}/private");
    for grant in [&dir, &inner] {
        let out = As::Root.run_offline(&s, &["--ro", grant], &script, T);
        assert!(
            stdout(&out).contains("DIRPRIV-700-CONTENT"),
            "{grant}: {} {}",
            stdout(&out),
            stderr(&out)
        );
    }
}

/// Root inside is not the host's root: run as root, the command cannot read a root-only
/// directory of the view outside /etc (here under /usr), while what is granted keeps the
/// caller's ownership through idmapped mounts — a root-only file granted is read, and what
/// the command writes in `-w` and `--rw` belongs to root on the host. Where a grant's file
/// system cannot be idmapped (sysfs), one line says so and the run goes on as before.
#[test]
fn root_inside_is_not_the_hosts_root() {
    let s = Scratch::new("ident");
    let hidden =
        std::path::PathBuf::from(format!("/usr/local/share/moat-e2e-{}", std::process::id()));
    let _cleanup = RemoveDir(hidden.clone());
    std::fs::create_dir_all(&hidden).unwrap();
    std::fs::write(hidden.join("key"), "ROOT-ONLY-UNDER-USR").unwrap();
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o700)).unwrap();
    let granted = s.path("granted");
    std::fs::write(&granted, "GRANTED-ROOT-FILE").unwrap();
    std::fs::set_permissions(&granted, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (work, rw) = (s.owned_dir("work", 0), s.owned_dir("rw", 0));
    std::fs::set_permissions(&rw, std::fs::Permissions::from_mode(0o700)).unwrap();
    let script = format!(
        "echo uid $(id -u); cat {k} 2>&1; echo; cat {g}; echo; echo w > {w}/made; echo r > {r}/made; echo done",
        k = hidden.join("key").display(),
        g = granted.display(),
        w = work.display(),
        r = rw.display()
    );
    let args = [
        "--ro",
        granted.to_str().unwrap(),
        "-w",
        work.to_str().unwrap(),
        "--rw",
        rw.to_str().unwrap(),
    ];
    let out = As::Root.run_offline(&s, &args, &script, T);
    let text = stdout(&out);
    assert!(
        text.contains("uid 0") && text.contains("done"),
        "{text} {}",
        stderr(&out)
    );
    assert!(!text.contains("ROOT-ONLY-UNDER-USR"), "{text}");
    assert!(
        text.contains("GRANTED-ROOT-FILE"),
        "{text} {}",
        stderr(&out)
    );
    use std::os::unix::fs::MetadataExt;
    for dir in [&work, &rw] {
        let meta = std::fs::metadata(dir.join("made")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{}", dir.display());
    }
    assert!(!stderr(&out).contains("idmapped"), "{}", stderr(&out));
    // Root's supplementary groups (0 among them, as from a login or sudo) do not follow
    // the unprivileged id inside: a file only group root may read stays closed.
    let grouped = std::path::PathBuf::from(format!("/opt/moat-e2e-group-{}", std::process::id()));
    let _cleanup_group = RemoveDir(grouped.clone());
    std::fs::create_dir_all(&grouped).unwrap();
    std::fs::write(grouped.join("f"), "GROUP-ROOT-ONLY").unwrap();
    std::fs::set_permissions(grouped.join("f"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::set_permissions(&grouped, std::fs::Permissions::from_mode(0o750)).unwrap();
    let mut c = Command::new("setpriv");
    c.args(["--groups=0", "--"])
        .arg(moat_bin())
        .args(["run", "--policy", "none", "--", "sh", "-c"])
        .arg(format!(
            "cat {}/f 2>&1; echo; grep Groups /proc/self/status; echo done",
            grouped.display()
        ));
    let out = run_with_timeout(c, T);
    let text = stdout(&out);
    assert!(text.contains("done"), "{text} {}", stderr(&out));
    assert!(!text.contains("GROUP-ROOT-ONLY"), "{text}");
    // Control: the same groups on the host read it.
    let mut c = Command::new("setpriv");
    c.args(["--groups=0", "--reuid=65534", "--", "cat"])
        .arg(grouped.join("f"));
    let out = run_with_timeout(c, T);
    assert!(
        stdout(&out).contains("GROUP-ROOT-ONLY"),
        "control: {}",
        stderr(&out)
    );

    // Control: the host's root reads the directory, and so does the sandbox's where the
    // identity falls back (a grant on sysfs, which cannot be idmapped) — with its line.
    assert!(std::fs::read_to_string(hidden.join("key")).is_ok());
    let out = As::Root.run_offline(&s, &["--ro", "/sys/kernel/mm"], &script, T);
    assert!(
        stdout(&out).contains("ROOT-ONLY-UNDER-USR"),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("cannot be idmapped"))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
}

/// Also seen: resolv.conf and hosts were writable inside.
#[test]
fn resolv_conf_and_hosts_are_read_only() {
    let w = World::new();
    let (out, _) = w.run_sh(
        &[],
        "grep -c host.moat.internal /etc/hosts; grep -c nameserver /etc/resolv.conf; \
         (echo 6.6.6.6 evil >> /etc/hosts) 2>&1; (echo nameserver 6.6.6.6 > /etc/resolv.conf) 2>&1; \
         grep -c 6.6.6.6 /etc/hosts /etc/resolv.conf; true",
        T,
    );
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"1"),
        "control: moat's hosts file: {text}"
    );
    assert_eq!(
        lines.get(1),
        Some(&"1"),
        "control: moat's resolv.conf: {text}"
    );
    // Refused as read-only, or — as root, whose sandbox's root is unprivileged — already
    // as not the owner's to write.
    assert_eq!(
        text.matches("Read-only file system").count() + text.matches("Permission denied").count(),
        2,
        "{text}"
    );
    assert!(
        text.contains("/etc/hosts:0") && text.contains("/etc/resolv.conf:0"),
        "{text}"
    );
}

/// `/sys` is the sandbox's own: its interfaces (`lo`, `eth0` at the MTU moat gave it), not
/// the host's (whose interface names and hardware addresses it used to list), read-only,
/// as root and as a normal user; of the host's control groups only the sandbox's own
/// show, their limits where tools look for them.
#[test]
fn sys_shows_the_sandboxs_own_interfaces() {
    let w = World::new();
    let s = Scratch::new("sysfs");
    let host_ifaces = stdout(&run_with_timeout(
        {
            let mut c = w.in_host("ls");
            c.arg("/sys/class/net");
            c
        },
        T,
    ));
    let host_veth = host_ifaces
        .split_whitespace()
        .find(|n| n.starts_with("vh"))
        .unwrap_or_else(|| panic!("control: the host namespace's veth: {host_ifaces}"))
        .to_owned();
    // Root with a network; the normal user (who may not open /dev/net/tun on these
    // machines) without one. Both in the namespace whose veth the host's /sys lists.
    for (who, policy, ifaces, mtus, writes) in [
        (
            As::Root,
            "allow-all",
            "eth0 lo",
            "1400 65536",
            "echo 1500 > /sys/class/net/eth0/mtu",
        ),
        (
            As::User,
            "none",
            "lo",
            "65536",
            "echo 1 > /sys/kernel/profiling",
        ),
    ] {
        let mut cmd = match who {
            As::Root => w.in_host(moat_bin()),
            As::User => {
                moat_e2e::ensure_test_user();
                let mut c = w.in_host("runuser");
                c.args(["-u", moat_e2e::TEST_USER, "--"]).arg(s.user_bin());
                c
            }
        };
        let script = format!(
            "echo ifaces $(ls /sys/class/net); echo mtu $(cat /sys/class/net/*/mtu); \
             ({writes}) 2>&1; (touch /sys/x) 2>&1; true"
        );
        cmd.args(["run", "--policy", policy, "--mtu", "1400", "--"])
            .args(["sh", "-c", &script]);
        let out = run_with_timeout(cmd, T);
        let text = stdout(&out);
        assert!(out.status.success(), "{who:?}: {text} {}", stderr(&out));
        assert!(
            text.contains(&format!("ifaces {ifaces}\n")),
            "{who:?}: {text}"
        );
        assert!(!text.contains(&host_veth), "{who:?}: {text}");
        // Control: the interfaces' own files, eth0 at the MTU moat gave it.
        assert!(text.contains(&format!("mtu {mtus}\n")), "{who:?}: {text}");
        assert_eq!(
            text.matches("Read-only file system").count(),
            2,
            "{who:?}: {text}"
        );
    }
    // Offline, in the test's own namespace: only `lo`; with a memory limit, the group's
    // limit file is where /proc/self/cgroup says (cgroup v1 or v2), and none of the host's
    // other groups is listed.
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory");
    let hierarchy = if v1.is_dir() {
        v1
    } else {
        std::path::Path::new("/sys/fs/cgroup")
    };
    let host_groups: Vec<String> = std::fs::read_dir(hierarchy)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !host_groups.is_empty(),
        "control: the host has groups to hide"
    );
    let out = As::Root.run_offline(
        &s,
        &["--memory", "256m"],
        "echo ifaces $(ls /sys/class/net); \
         echo groups $(find /sys/fs/cgroup -mindepth 1 -maxdepth 3 -type d -printf '%f '); \
         p=$(grep -E '^[0-9]+:memory:' /proc/self/cgroup | cut -d: -f3); echo own \"$p\"; \
         if [ -n \"$p\" ]; then cat /sys/fs/cgroup/memory$p/memory.limit_in_bytes; \
         else cat /sys/fs/cgroup$(grep '^0::' /proc/self/cgroup | cut -d: -f3)/memory.max; fi",
        T,
    );
    let text = stdout(&out);
    assert!(text.contains("ifaces lo\n"), "{text} {}", stderr(&out));
    assert!(text.contains("268435456"), "{text} {}", stderr(&out));
    let listed = text
        .lines()
        .find_map(|l| l.strip_prefix("groups"))
        .unwrap_or_default();
    for name in &host_groups {
        assert!(
            !listed.split_whitespace().any(|n| n == name),
            "{name} listed: {text}"
        );
    }
}

/// Also seen: state left after SIGKILL is swept at the next start.
#[test]
fn stale_state_is_swept_at_the_next_start() {
    let s = Scratch::new("stale");
    let (mut child, _) = Running::start(As::Root.moat(
        &s,
        &[
            "run",
            "--policy",
            "none",
            "--name",
            "e2estale",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 60",
        ],
    ));
    let dirs = state_dirs("e2estale");
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait(T);
    assert!(
        std::path::Path::new(&dirs[0]).exists(),
        "control: SIGKILL leaves the state directory"
    );
    // Its control group (the default process limit made one) is left too.
    let group = pids_group(&dirs[0]);
    if let Some(group) = &group {
        assert!(
            group.exists(),
            "control: SIGKILL leaves {}",
            group.display()
        );
    }
    let out = As::Root.run_offline(&s, &[], "true", T);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !std::path::Path::new(&dirs[0]).exists(),
        "the next start did not sweep {}",
        dirs[0]
    );
    if let Some(group) = &group {
        assert!(
            !group.exists(),
            "the next start did not remove {}",
            group.display()
        );
    }
}

/// The cgroup v1 pids group of the run whose state directory is `state_dir`, where this
/// machine has that controller.
fn pids_group(state_dir: &str) -> Option<std::path::PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        (controllers == "pids").then(|| path.to_owned())
    })?;
    let name = std::path::Path::new(state_dir)
        .file_name()?
        .to_string_lossy()
        .into_owned();
    Some(
        std::path::Path::new("/sys/fs/cgroup/pids")
            .join(path.trim_start_matches('/'))
            .join(format!("moat-{name}")),
    )
}

/// Also seen: with TMPDIR on a directory the sandbox can see, one sandbox read another's
/// work directory. moat's state is hidden wherever it would be visible.
#[test]
fn one_sandbox_cannot_see_anothers_state() {
    let s = Scratch::new("tmpdir");
    let shared = s.owned_dir("shared", 0);
    let tmpdir = shared.display().to_string();
    // The first sandbox leaves a marker in its private work directory and waits.
    let mut first_cmd = As::Root.moat(
        &s,
        &[
            "run",
            "--policy",
            "none",
            "--name",
            "e2efirst",
            "--",
            "sh",
            "-c",
            "echo MARKER-CONTENT > /workspace/marker; echo ready; exec sleep 60",
        ],
    );
    first_cmd.env("TMPDIR", &tmpdir);
    let (_first, line) = Running::start(first_cmd);
    assert_eq!(line, "ready");
    // Control: the marker is there on the host, under the shared TMPDIR.
    let on_host = Command::new("grep")
        .args(["-rl", "MARKER-CONTENT", &tmpdir])
        .output()
        .unwrap();
    assert!(!stdout(&on_host).trim().is_empty(), "control: {}", tmpdir);
    // The second sandbox sees the shared directory (granted writable) but not the state.
    let mut cmd = As::Root.moat(
        &s,
        &[
            "run",
            "--policy",
            "none",
            "--rw",
            &tmpdir,
            "--",
            "sh",
            "-c",
            &format!("ls {tmpdir}; grep -rl MARKER-CONTENT {tmpdir} 2>&1; echo searched"),
        ],
    );
    cmd.env("TMPDIR", &tmpdir);
    let out = run_with_timeout(cmd, T);
    let text = stdout(&out);
    assert!(text.contains("searched"), "{text} {}", stderr(&out));
    assert!(
        !text.contains("workspace") && !text.contains("/work/marker"),
        "{text}"
    );
    assert!(
        !text.lines().any(|l| l.ends_with("marker")),
        "another sandbox's work directory is visible: {text}"
    );
}

/// Also seen: no limits. A fork bomb stops at --pids-limit, a memory hog at --memory,
/// and moat says which limit ended the run; /tmp and /dev/shm are bounded.
#[test]
fn limits_stop_fork_bombs_and_memory_hogs() {
    let s = Scratch::new("limits");
    // A bounded fork bomb: each process starts two more until forks fail.
    let bomb = "python3 -c \"\nimport os, time\nn = 0\nfor i in range(400):\n    try:\n        if os.fork() == 0:\n            time.sleep(20); os._exit(0)\n        n += 1\n    except OSError:\n        print('fork-failed-after', n, flush=True); break\ntime.sleep(5)\n\"";
    let out = As::Root.run_offline(&s, &["--pids-limit", "100"], bomb, T);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(122), "{err} {}", stdout(&out));
    assert!(
        err.contains("limit of 100 processes") && err.contains("--pids-limit"),
        "{err}"
    );
    // Control: without the flag the same program starts all 400.
    let out = As::Root.run_offline(
        &s,
        &[],
        &bomb
            .replace("time.sleep(20)", "time.sleep(1)")
            .replace("time.sleep(5)", "print('started', n)"),
        T,
    );
    assert!(stdout(&out).contains("started 400"), "{}", stdout(&out));

    let hog = "python3 -c \"\nchunks = []\nfor i in range(1024):\n    chunks.append(bytearray(1 << 20))\nprint('allocated 1 GiB', flush=True)\n\"";
    let out = As::Root.run_offline(&s, &["--memory", "256m"], hog, T);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(122), "{err} {}", stdout(&out));
    assert!(
        err.contains("out of memory") && err.contains("256 MiB"),
        "{err}"
    );
    assert!(!stdout(&out).contains("allocated"), "{}", stdout(&out));
    // Control: with room it completes.
    let out = As::Root.run_offline(&s, &["--memory", "2g"], hog, T);
    assert!(stdout(&out).contains("allocated 1 GiB"), "{}", stderr(&out));

    // Bounded file systems (they were half of RAM each).
    let out = As::Root.run_offline(
        &s,
        &[],
        "df -k /tmp /dev/shm /root | awk 'NR>1 {print $6, $2}'",
        T,
    );
    let text = stdout(&out);
    for (mount, max_kib) in [
        ("/tmp", 1 << 20),
        ("/dev/shm", 64 << 10),
        ("/root", 1 << 20),
    ] {
        let size: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{mount} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{mount}: {text}"));
        assert!(size <= max_kib, "{mount} {size} KiB: {text}");
    }

    // As a normal user (no control group here): the process limit still holds, through
    // RLIMIT_NPROC, and --cpus says it could not be applied.
    let out = As::User.run_offline(&s, &["--pids-limit", "50", "--cpus", "1"], bomb, T);
    let text = stdout(&out);
    let err = stderr(&out);
    let n: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("fork-failed-after "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{text} {err}"));
    assert!(n < 60, "{n} forks under --pids-limit 50");
    assert!(err.contains("--cpus not applied"), "{err}");
}

/// A pseudo-terminal: `moat run -- sh` answers commands, Ctrl-C interrupts a sleep inside
/// while moat and the shell live on, a window-size change is seen inside, and the
/// terminal's mode is restored at the end.
#[test]
fn interactive_shell_through_a_pseudo_terminal() {
    let script = format!(
        r#"
import os, pty, select, time, fcntl, termios, struct
pid, master = pty.fork()
if pid == 0:
    os.environ["PS1"] = "PROMPT$ "
    os.execv("{bin}", ["moat", "run", "--policy", "none", "-e", "PS1", "--", "sh", "-i"])
buf = b""
def expect(token, timeout=30):
    global buf, seen
    deadline = time.time() + timeout
    while token.encode() not in buf:
        r, _, _ = select.select([master], [], [], max(0.0, deadline - time.time()))
        if not r:
            raise SystemExit("timeout waiting for %r in %r" % (token, buf[-300:]))
        chunk = os.read(master, 4096)
        buf += chunk
        seen += chunk
    i = buf.index(token.encode()) + len(token)
    buf = buf[i:]
def send(s):
    os.write(master, s.encode())
seen = b""
expect("PROMPT$ ")
send("tty\n"); expect("/dev/pts/"); expect("PROMPT$ "); print("named", flush=True)
send("echo hel''lo\n"); expect("hello"); print("echoed", flush=True)
fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
time.sleep(0.5)
expect("PROMPT$ ")
send("stty size\n"); expect("33 111"); print("resized", flush=True)
def descendants(root):
    kids = {{}}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open("/proc/%s/stat" % d).read()
            except OSError:
                continue
            kids.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out
def running(argv):
    for p in descendants(pid):
        try:
            if open("/proc/%d/cmdline" % p, "rb").read().split(b"\0")[:-1] == argv:
                return True
        except OSError:
            pass
    return False
# Interrupt only once sleep runs (a busy machine may take a while to start it): a ^C that
# reached the shell first would leave sleep to run for its 100 s.
send("sleep 100\n")
deadline = time.time() + 30
while not running([b"sleep", b"100"]):
    if time.time() > deadline:
        raise SystemExit("sleep never started")
    time.sleep(0.05)
send("\x03"); expect("PROMPT$ ", timeout=30)
send("echo status$?\n"); expect("status130"); print("interrupted", flush=True)
send("echo still-here\n"); expect("still-here"); print("alive", flush=True)
send("exit 7\n")
_, status = os.waitpid(pid, 0)
print("exit", os.waitstatus_to_exitcode(status), flush=True)
after = termios.tcgetattr(master)
print("restored", bool(after[3] & termios.ICANON) and bool(after[3] & termios.ECHO), flush=True)
print("nul", b"\0" in seen, flush=True)
"#,
        bin = moat_bin().display()
    );
    let out = host_python(&script, T);
    let text = stdout(&out);
    for want in [
        "named",
        "echoed",
        "resized",
        "interrupted",
        "alive",
        "exit 7",
        "restored True",
        "nul False",
    ] {
        assert!(text.contains(want), "{want}: {text}\n{}", stderr(&out));
    }
}

/// Grants and work directories under /var/tmp (where /var is the sandbox's own skeleton of
/// links) appear at their path inside, and nothing is created on the host's side.
#[test]
fn grants_under_var_tmp_land_inside() {
    let dir = std::path::PathBuf::from(format!("/var/tmp/moat-e2e-var-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("work")).unwrap();
    std::fs::create_dir_all(dir.join("ro")).unwrap();
    std::fs::write(dir.join("ro/file"), "granted\n").unwrap();
    let _cleanup = RemoveDir(dir.clone());
    let s = Scratch::new("vartmp");
    let work = dir.join("work");
    let ro = dir.join("ro");
    let out = As::Root.run_offline(
        &s,
        &["-w", work.to_str().unwrap(), "--ro", ro.to_str().unwrap()],
        "pwd; cat ../ro/file; echo made > here",
        T,
    );
    let text = stdout(&out);
    // /var/tmp is a link to the sandbox's /tmp, so the shell may show either spelling.
    assert!(
        text.lines().next().unwrap_or("").ends_with("/work"),
        "{text} {}",
        stderr(&out)
    );
    assert!(text.contains("granted"), "{text}");
    assert_eq!(
        std::fs::read_to_string(work.join("here")).unwrap(),
        "made\n"
    );
    // Nothing appeared on the host under /tmp (where an absolute /var/tmp link would lead).
    assert!(
        !std::path::Path::new("/tmp")
            .join(dir.file_name().unwrap())
            .exists()
    );
}

/// pip, npm and git write under HOME with the default view.
#[test]
fn package_tools_write_under_home() {
    let s = Scratch::new("tools");
    for who in As::BOTH {
        let work = s.owned_dir(&format!("work-{who:?}"), uid_of(who));
        // A wheel built by hand (a zip with its metadata), installed without an index.
        let wheel = work.join("moatdemo-1.0-py3-none-any.whl");
        let make = format!(
            "import zipfile\nz = zipfile.ZipFile({w:?}, 'w')\nz.writestr('moatdemo.py', 'X = 42\\n')\nz.writestr('moatdemo-1.0.dist-info/METADATA', 'Metadata-Version: 2.1\\nName: moatdemo\\nVersion: 1.0\\n')\nz.writestr('moatdemo-1.0.dist-info/WHEEL', 'Wheel-Version: 1.0\\nGenerator: moat-e2e\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')\nz.writestr('moatdemo-1.0.dist-info/RECORD', '')\nz.close()\n",
            w = wheel.display().to_string()
        );
        assert!(host_python(&make, T).status.success());
        sh_chown(&wheel, uid_of(who));
        let script = format!(
            "cd {work} && /usr/bin/python3 -m pip install --user --break-system-packages --no-index --no-cache-dir -q {whl} 2>&1 | tail -2; \
             /usr/bin/python3 -c 'import moatdemo; print(\"pip-ok\", moatdemo.X)'; \
             (command -v npm >/dev/null && npm config set moat-test yes >/dev/null 2>&1 && echo npm-$(npm config get moat-test)) || echo npm-absent; \
             git config --global user.name moat && echo git-$(git config --global user.name); ls -A $HOME",
            work = work.display(),
            whl = wheel.file_name().unwrap().to_string_lossy()
        );
        let out = who.run_offline(&s, &["-w", work.to_str().unwrap()], &script, T);
        let text = stdout(&out);
        assert!(
            text.contains("pip-ok 42"),
            "{who:?}: {text} {}",
            stderr(&out)
        );
        assert!(
            text.contains("npm-yes") || text.contains("npm-absent"),
            "{who:?}: {text}"
        );
        assert!(text.contains("git-moat"), "{who:?}: {text}");
    }
}

fn sh_chown(path: &std::path::Path, uid: u32) {
    moat_e2e::sh(&["chown", &uid.to_string(), path.to_str().unwrap()]);
}

/// Every mount of the view is nosuid and nodev, and the host's system directories and a
/// read-only grant are read-only — as the mount table says, not only as a write that fails:
/// as root, the sandbox's root is an unprivileged id, and a write to `/usr` fails for lack
/// of permission whether or not the mount is read-only.
#[test]
fn every_mount_is_nosuid_and_nodev_and_the_system_read_only() {
    let dir = std::path::PathBuf::from(format!("/var/tmp/moat-e2e-mounts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("ro")).unwrap();
    std::fs::create_dir_all(dir.join("rw")).unwrap();
    let _cleanup = RemoveDir(dir.clone());
    let (ro, rw) = (dir.join("ro"), dir.join("rw"));
    for who in [As::Root, As::User] {
        if who == As::User {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o777)).unwrap();
            std::fs::set_permissions(&rw, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let s = Scratch::new("mounts");
        let out = who.run_offline(
            &s,
            &["--ro", ro.to_str().unwrap(), "--rw", rw.to_str().unwrap()],
            "cat /proc/self/mountinfo",
            T,
        );
        let text = stdout(&out);
        // Mount point → its per-mount options (the last mount at a point is what shows).
        let mut options = std::collections::HashMap::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() > 5 {
                options.insert(f[4].to_owned(), f[5].to_owned());
            }
        }
        let has = |point: &str, flag: &str| {
            options
                .get(point)
                .is_some_and(|o| o.split(',').any(|x| x == flag))
        };
        // /var/tmp is a link to the sandbox's /tmp: the grants show there.
        let inside = |p: &std::path::Path| p.to_str().unwrap().replacen("/var/tmp/", "/tmp/", 1);
        let (ro_inside, rw_inside) = (inside(&ro), inside(&rw));
        let (ro_path, rw_path) = (ro_inside.as_str(), rw_inside.as_str());
        for point in [
            "/", "/usr", "/etc", "/tmp", "/run", "/dev", "/dev/shm", "/sys", "/proc", ro_path,
            rw_path,
        ] {
            assert!(
                options.contains_key(point),
                "{who:?}: no mount at {point}: {text} {}",
                stderr(&out)
            );
            assert!(
                has(point, "nosuid") && has(point, "nodev"),
                "{who:?}: {point}: {:?}",
                options.get(point)
            );
        }
        for point in ["/", "/usr", "/etc", "/sys", ro_path] {
            assert!(
                has(point, "ro"),
                "{who:?}: {point} writable: {:?}",
                options.get(point)
            );
        }
        for point in ["/tmp", "/run", rw_path] {
            assert!(
                has(point, "rw"),
                "{who:?}: {point}: {:?}",
                options.get(point)
            );
        }
    }
}
