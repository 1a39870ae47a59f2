//! The caller's half of the probes beside the network, all in one sandbox without one
//! (`--policy none`): what each attempt aims at, and what the host saw afterwards. The
//! attacker's half is in `attack.rs`; the order and the verdicts are explained in
//! `mod.rs`.

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};

use super::{Finding, Jail, Said, Scratch, Verdict, judge, on_host};
use crate::Sandbox;

/// The probes of this file, in the order they run.
const NAMES: [&str; 12] = [
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
];

/// Makes `fd` inherited across exec (`inherit`) or close-on-exec again.
fn set_inherited(fd: impl AsFd, inherit: bool) -> bool {
    let flags = if inherit {
        FdFlag::empty()
    } else {
        FdFlag::FD_CLOEXEC
    };
    fcntl(fd, FcntlArg::F_SETFD(flags)).is_ok()
}

/// A marker file of selftest's own, opened for appending.
fn marker(scratch: &Scratch, name: &str) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(scratch.path(name))
}

/// The marker file's `DEV:INO`, for the attacker to know it by.
fn identity(scratch: &Scratch, name: &str) -> String {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(scratch.path(name))
        .map(|m| format!("{}:{}", m.dev(), m.ino()))
        .unwrap_or_default()
}

fn written(scratch: &Scratch, name: &str) -> bool {
    std::fs::metadata(scratch.path(name)).is_ok_and(|m| m.len() > 0)
}

/// What the caller arranged before the sandbox started (it inherits them, as a sandbox
/// started by a program with open descriptors and keys would).
struct Bait {
    /// The descriptor the caller leaves open, and its number.
    fd: Option<(std::fs::File, i32)>,
    /// The key's description, when one could be added.
    key: Option<String>,
}

/// Runs the local probes; also returns the notes of limits the sandbox could not apply.
pub(crate) fn probes(scratch: &Scratch) -> (Vec<Finding>, Vec<String>) {
    let pid = std::process::id();
    let key = format!("moat-selftest-key-{pid}");
    let key = match (
        std::ffi::CString::new(format!("moat-selftest-{pid}")),
        std::ffi::CString::new(key.clone()),
    ) {
        (Ok(ring), Ok(desc)) => {
            moat_sandbox::probe::add_session_key(&ring, &desc, b"MOAT-SELFTEST-SECRET")
                .ok()
                .map(|_| key)
        }
        _ => None,
    };
    let fd = marker(scratch, "fd-inside").ok().and_then(|f| {
        let n = f.as_raw_fd();
        set_inherited(&f, true).then_some((f, n))
    });
    let bait = Bait { fd, key };
    let setid_dir = scratch.path("setid-inside");
    let _ = std::fs::create_dir(&setid_dir);
    // Limits asked so that the start says which controllers this host lacks.
    let builder = Sandbox::builder("selftest")
        .network(|n| n.policy(crate::NetworkPolicy::none()))
        .rw(&setid_dir)
        .memory(1 << 30)
        .cpus(1.0);
    let started = Jail::start(builder);
    if let Some((f, _)) = &bait.fd {
        set_inherited(f, false);
    }
    let mut jail = match started {
        Ok(j) => j,
        Err(e) => {
            let why = format!("the sandbox did not start: {e}");
            let findings = NAMES
                .iter()
                .map(|n| Finding::new(n, Verdict::Failed, why.clone()))
                .collect();
            return (findings, Vec::new());
        }
    };
    let mut out = vec![
        terminal(&mut jail),
        signals(&mut jail),
        descriptors(&mut jail, scratch, &bait),
        keyring(&mut jail, &bait),
        unix_sockets(&mut jail, scratch),
        setid(&mut jail, scratch, &setid_dir),
    ];
    let families = jail.attack(&["families"], None);
    out.push(judge(
        "socket-families",
        Some(&on_host(&["families"], None)),
        &families,
        None,
    ));
    let namespaces = jail.attack(&["namespaces"], None);
    out.push(judge(
        "namespaces",
        Some(&on_host(&["namespaces"], None)),
        &namespaces,
        None,
    ));
    out.push(judge(
        "syscalls",
        None,
        &jail.attack(&["syscalls"], None),
        None,
    ));
    out.push(files(&mut jail, "etc-secrets", &etc_secrets()));
    out.push(files(&mut jail, "root-only-files", &root_only_files()));
    let interfaces = super::host_interfaces();
    let mut args = vec!["views"];
    args.extend(interfaces.iter().map(String::as_str));
    let views = jail.attack(&args, None);
    out.push(judge(
        "proc-sys-views",
        Some(&on_host(&args, None)),
        &views,
        None,
    ));
    let notes = jail.limit_notes.clone();
    jail.stop();
    (out, notes)
}

/// Reads what waits in the terminal's input queue (the slave side, non-blocking).
fn queued(slave: &std::os::fd::OwnedFd) -> String {
    let _ = fcntl(slave.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    for _ in 0..64 {
        match nix::unistd::read(slave.as_fd(), &mut buf) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// TIOCSTI into a terminal of selftest's own, given to the attacker as stdin.
fn terminal(jail: &mut Jail) -> Finding {
    const NAME: &str = "terminal";
    let pty = match nix::pty::openpty(None, None) {
        Ok(p) => p,
        Err(e) => return Finding::new(NAME, Verdict::Skipped, format!("no pseudo-terminal: {e}")),
    };
    let inside = jail.attack(&["tty"], Some(pty.slave.as_fd()));
    let mark = super::attack::INJECTED.trim();
    let seen = queued(&pty.slave)
        .contains(mark)
        .then(|| "the host terminal's input queue held the injected line".to_owned());
    let mut control = match pty.slave.try_clone() {
        Ok(fd) => on_host(&["tty"], Some(Stdio::from(fd))),
        Err(e) => Said {
            status: 2,
            text: e.to_string(),
        },
    };
    if !queued(&pty.slave).contains(mark) {
        control.status = 0;
    }
    judge(NAME, Some(&control), &inside, seen)
}

/// A process of the caller's, in a group of its own, that SIGTERM ends.
fn sibling() -> Option<Child> {
    use std::os::unix::process::CommandExt as _;
    Command::new(super::exe().ok()?)
        .args(["__probe", "idle", "10"])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .ok()
}

/// Whether `child` died within `wait` (a loaded machine may take a while to run its end);
/// ends it either way.
fn died(mut child: Child, wait: Duration) -> bool {
    let deadline = std::time::Instant::now() + wait;
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// SIGTERM to a process of the caller's and to its group.
fn signals(jail: &mut Jail) -> Finding {
    const NAME: &str = "signals";
    let (Some(a), Some(b)) = (sibling(), sibling()) else {
        return Finding::new(NAME, Verdict::Failed, "cannot start a process to aim at");
    };
    let (pa, pb) = (a.id().to_string(), b.id().to_string());
    let mut inside = jail.attack(&["signal", &pa, &pa], None);
    // An attacker that says its kill worked gets as long as the control to show it (a
    // loaded machine may take a while to end the process); one refused, a short look.
    let wait = if inside.open() {
        Duration::from_secs(3)
    } else {
        Duration::from_millis(300)
    };
    let seen = died(a, wait).then(|| format!("the caller's process {pa} got the signal"));
    // Inside, the number may name one of the sandbox's own processes: only what the
    // caller's process got counts.
    if seen.is_none() && inside.open() {
        inside.status = 0;
    }
    let mut control = on_host(&["signal", &pb, &pb], None);
    if !died(b, Duration::from_secs(3)) {
        control.status = 0;
    }
    judge(NAME, Some(&control), &inside, seen)
}

/// A descriptor the caller left open when the sandbox started.
fn descriptors(jail: &mut Jail, scratch: &Scratch, bait: &Bait) -> Finding {
    const NAME: &str = "descriptors";
    let Some((_, n)) = &bait.fd else {
        return Finding::new(NAME, Verdict::Failed, "cannot leave a descriptor open");
    };
    let inside = jail.attack(
        &["fd", &n.to_string(), &identity(scratch, "fd-inside")],
        None,
    );
    let seen = written(scratch, "fd-inside")
        .then(|| format!("the file the caller holds as fd {n} was written"));
    // Control: the same attacker on the host, holding a descriptor of the same kind.
    let control = match marker(scratch, "fd-host") {
        Ok(f) if set_inherited(&f, true) => {
            let n = f.as_raw_fd().to_string();
            let mut said = on_host(&["fd", &n, &identity(scratch, "fd-host")], None);
            set_inherited(&f, false);
            if !written(scratch, "fd-host") {
                said.status = 0;
            }
            said
        }
        _ => Said {
            status: 2,
            text: "cannot leave a descriptor open".into(),
        },
    };
    judge(NAME, Some(&control), &inside, seen)
}

/// A key in the session keyring selftest joined before the sandbox started.
fn keyring(jail: &mut Jail, bait: &Bait) -> Finding {
    const NAME: &str = "keyring";
    let Some(key) = &bait.key else {
        return Finding::new(
            NAME,
            Verdict::Skipped,
            "this host refuses selftest a keyring of its own (keyctl)",
        );
    };
    let inside = jail.attack(&["keyring", key], None);
    judge(NAME, Some(&on_host(&["keyring", key], None)), &inside, None)
}

/// Connections accepted so far on a non-blocking listener.
fn accepted(l: &UnixListener) -> usize {
    let mut n = 0;
    while n < 100 && l.accept().is_ok() {
        n += 1;
    }
    n
}

/// A unix socket of the caller's on disk (any user may connect), an abstract one, and the
/// host's services' sockets that exist.
fn unix_sockets(jail: &mut Jail, scratch: &Scratch) -> Finding {
    use std::os::linux::net::SocketAddrExt as _;
    const NAME: &str = "unix-sockets";
    let path = scratch.path("api.sock");
    let name = format!("moat-selftest-{}", std::process::id());
    let listeners = UnixListener::bind(&path).and_then(|disk| {
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let abs = UnixListener::bind_addr(&addr)?;
        disk.set_nonblocking(true)?;
        abs.set_nonblocking(true)?;
        Ok((disk, abs))
    });
    let (disk, abs) = match listeners {
        Ok(l) => l,
        Err(e) => return Finding::new(NAME, Verdict::Failed, format!("cannot listen: {e}")),
    };
    let shown = path.display().to_string();
    // The host's own services' sockets too, where they are: connected to only from inside.
    let xdg_bus = std::env::var("XDG_RUNTIME_DIR").map(|d| format!("{d}/bus"));
    let services: Vec<String> = [
        "/run/docker.sock",
        "/var/run/docker.sock",
        "/run/containerd/containerd.sock",
        "/run/podman/podman.sock",
        "/run/dbus/system_bus_socket",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(xdg_bus)
    .filter(|p| {
        use std::os::unix::fs::FileTypeExt as _;
        std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket())
    })
    .collect();
    let mut args = vec!["unix", &name, &shown];
    args.extend(services.iter().map(String::as_str));
    let inside = jail.attack(&args, None);
    let reached = accepted(&disk) + accepted(&abs);
    let seen =
        (reached > 0).then(|| format!("the caller's sockets accepted {reached} connections"));
    let mut control = on_host(&["unix", &name, &shown], None);
    if accepted(&disk) + accepted(&abs) == 0 {
        control.status = 0;
    }
    judge(NAME, Some(&control), &inside, seen)
}

/// Set-id bits on files written through a writable grant, as the host sees them.
fn setid(jail: &mut Jail, scratch: &Scratch, dir: &Path) -> Finding {
    const NAME: &str = "set-id";
    let with_bits = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.metadata()
                            .is_ok_and(|m| m.permissions().mode() & 0o6000 != 0)
                    })
                    .map(|e| e.path().display().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let inside = jail.attack(&["setid", &dir.display().to_string()], None);
    let bits = with_bits(dir);
    let seen = (!bits.is_empty()).then(|| format!("set-id files on the host: {}", bits.join(", ")));
    let host_dir = scratch.path("setid-host");
    let _ = std::fs::create_dir(&host_dir);
    let control = on_host(&["setid", &host_dir.display().to_string()], None);
    judge(NAME, Some(&control), &inside, seen)
}

/// The secrets of /etc that the host holds: `/etc/shadow` and its kin, SSH host keys,
/// the private-key directories.
fn etc_secrets() -> Vec<String> {
    let mut paths: Vec<String> = [
        "/etc/shadow",
        "/etc/gshadow",
        "/etc/shadow-",
        "/etc/gshadow-",
        "/etc/security/opasswd",
        "/etc/krb5.keytab",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .collect();
    if let Ok(dir) = std::fs::read_dir("/etc/ssh") {
        for e in dir.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("ssh_host_") && !n.ends_with(".pub") {
                paths.push(e.path().display().to_string());
            }
        }
    }
    paths.retain(|p| super::nonempty(Path::new(p)));
    for dir in ["/etc/ssl/private", "/etc/pki/tls/private"] {
        if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
            || (Path::new(dir).is_dir() && nix::unistd::geteuid().is_root())
        {
            paths.push(dir.to_owned());
        }
    }
    paths
}

/// Up to eight files of /etc that not every user may read (beyond the known secrets),
/// found by a walk bounded in depth and entries.
fn root_only_files() -> Vec<String> {
    let known = etc_secrets();
    let mut found = Vec::new();
    // /etc, and the system directories beyond it (a root-only directory under /usr or
    // /opt is closed by the sandbox's unprivileged root, not by a mask): a few of each.
    for (top, per_top) in [("/etc", 4), ("/usr", 2), ("/opt", 2)] {
        let before = found.len();
        // (directory, depth, whether others may not reach it)
        let mut dirs = vec![(std::path::PathBuf::from(top), 0, false)];
        let mut seen = 0;
        'walk: while let Some((dir, depth, closed)) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                seen += 1;
                if seen > 20_000 || found.len() - before >= per_top {
                    break 'walk;
                }
                let Ok(kind) = e.file_type() else { continue };
                let Ok(meta) = e.metadata() else { continue };
                let mode = meta.permissions().mode();
                let path = e.path();
                if kind.is_dir() && depth < 6 {
                    dirs.push((path, depth + 1, closed || mode & 0o001 == 0));
                } else if kind.is_file() && meta.len() > 0 && (closed || mode & 0o004 == 0) {
                    let p = path.display().to_string();
                    if !known.contains(&p) {
                        found.push(p);
                    }
                }
            }
        }
    }
    found
}

/// Reads of `paths` inside; the same reads on the host are the control.
fn files(jail: &mut Jail, name: &'static str, paths: &[String]) -> Finding {
    if paths.is_empty() {
        return Finding::new(name, Verdict::Skipped, "this host has none of these files");
    }
    let mut args = vec!["files"];
    args.extend(paths.iter().map(String::as_str));
    let inside = jail.attack(&args, None);
    judge(name, Some(&on_host(&args, None)), &inside, None)
}
