//! The attacker's half of each probe: `moat __probe NAME ARGS...`, run inside a sandbox by
//! `moat selftest` (and, as the control, on the host where that is harmless). Each attempt
//! is made with plain system calls, so the host needs no other tool, and says what it got:
//! its last line is `open: WHAT` when the attempt worked (exit status 1) or `shut: WHAT`
//! when it was refused (exit status 0); 2 when the probe could not be made at all.
//!
//! An attacker only reports; what the host saw is judged by the caller (`local.rs`,
//! `net.rs`). Nothing here picks a destination of its own: `connect`, `udp`, `dns` and
//! `hello` aim at what the caller chose (its own listeners and server, or ranges moat
//! refuses before dialling), and `signal` never at 0 or 1.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use moat_sandbox::probe;

/// The upper half of a register filled with ones: the kernel reads only the lower half of
/// an `int` argument, a filter that compares all 64 bits does not.
pub(crate) const HI: u64 = 0xffff_ffff_0000_0000;

/// A line of terminal input an attacker pushes (TIOCSTI): a host shell would run it.
pub(crate) const INJECTED: &str = "echo MOAT-SELFTEST-INJECTED\n";

/// What an attack found: any `open` attempt makes the whole probe `open`.
struct Report {
    lines: Vec<String>,
    open: Vec<String>,
}

impl Report {
    fn new() -> Report {
        Report {
            lines: Vec::new(),
            open: Vec::new(),
        }
    }

    /// Records `what` and whether it worked.
    fn attempt(&mut self, what: impl Into<String>, worked: bool, detail: impl std::fmt::Display) {
        let what = what.into();
        self.lines.push(format!(
            "{what}: {}{detail}",
            if worked { "worked " } else { "refused " }
        ));
        if worked {
            self.open.push(what);
        }
    }

    /// Prints the report and gives the exit status.
    fn finish(self, tried: &str) -> i32 {
        for line in &self.lines {
            println!("{line}");
        }
        if self.open.is_empty() {
            println!("shut: {tried}");
            0
        } else {
            println!("open: {}", self.open.join(", "));
            1
        }
    }
}

fn errno(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("(errno {n})"),
        None => format!("({e})"),
    }
}

/// `moat __probe NAME ARGS...`: runs attack NAME and returns the exit status.
pub(crate) fn main(args: &[String]) -> i32 {
    let Some((name, rest)) = args.split_first() else {
        eprintln!("moat __probe: which probe?");
        return 2;
    };
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    match (name.as_str(), rest.as_slice()) {
        ("tty", []) => tty(),
        ("signal", [pid, group]) => signal(pid, group),
        ("fd", [fd, identity]) => descriptors(fd, identity),
        ("keyring", [description]) => keyring(description),
        ("unix", [abstract_name, paths @ ..]) => unix(abstract_name, paths),
        ("setid", [dir]) => setid(dir),
        ("families", []) => families(),
        ("namespaces", []) => namespaces(),
        ("syscalls", []) => syscalls(),
        ("files", paths) => files(paths),
        ("views", interfaces) => views(interfaces),
        ("connect", targets) => connect(targets),
        ("udp", targets) => udp(targets),
        ("dns", names) => dns(names),
        ("hello", [target, name]) => hello(target, name, "split"),
        ("hello", [target, name, how @ ("split" | "whole")]) => hello(target, name, how),
        ("idle", [secs]) => {
            std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(5).min(30)));
            0
        }
        _ => {
            eprintln!("moat __probe: unknown probe or arguments: {args:?}");
            2
        }
    }
}

/// Terminal injection: TIOCSTI on /dev/tty and on 0, 1 and 2; where no terminal is the
/// controlling one, it first makes stdin's its own (a new session, TIOCSCTTY).
fn tty() -> i32 {
    let mut r = Report::new();
    let push = |fd: RawFd| -> io::Result<()> {
        INJECTED
            .bytes()
            .try_for_each(|b| probe::push_terminal_input(fd, b))
    };
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    {
        Ok(tty) => {
            let got = push(tty.as_raw_fd());
            r.attempt(
                "TIOCSTI on /dev/tty",
                got.is_ok(),
                got.err().map(|e| errno(&e)).unwrap_or_default(),
            );
        }
        Err(e) => r.lines.push(format!("no /dev/tty {}", errno(&e))),
    }
    for fd in 0..3 {
        let got = push(fd);
        r.attempt(
            format!("TIOCSTI on fd {fd}"),
            got.is_ok(),
            got.err().map(|e| errno(&e)).unwrap_or_default(),
        );
    }
    if r.open.is_empty() {
        // The kernel lets a session's leader push into its own controlling terminal.
        let _ = nix::unistd::setsid();
        let taken = probe::set_controlling_terminal(0);
        let got = taken.and_then(|()| push(0));
        r.attempt(
            "TIOCSTI on fd 0 made the controlling terminal",
            got.is_ok(),
            got.err().map(|e| errno(&e)).unwrap_or_default(),
        );
    }
    r.finish("TIOCSTI into the terminal on stdin and /dev/tty")
}

/// Signals to a process of the caller's and to its process group.
fn signal(pid: &str, group: &str) -> i32 {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    // Never 0 or 1: kill(-1) is every process the caller may signal.
    let (Ok(pid @ 2..), Ok(group @ 2..)) = (pid.parse::<i32>(), group.parse::<i32>()) else {
        return 2;
    };
    let mut r = Report::new();
    for (what, target) in [("SIGTERM to pid", pid), ("SIGTERM to group", -group)] {
        let got = kill(Pid::from_raw(target), Signal::SIGTERM);
        r.attempt(
            format!("{what} {}", target.abs()),
            got.is_ok(),
            got.err().map(|e| format!("({e})")).unwrap_or_default(),
        );
    }
    r.finish("SIGTERM to a process of the caller and to its group")
}

/// Descriptors beyond 0, 1 and 2: lists them (/proc/self/fd) and writes to `fd` through
/// its /proc link, as any program may reopen a descriptor it holds; then to the caller's
/// file (`identity`, `DEV:INO`) through any other process that holds it.
fn descriptors(fd: &str, identity: &str) -> i32 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(fd) = fd.parse::<RawFd>() else {
        return 2;
    };
    let mut r = Report::new();
    let mut open: Vec<String> = Vec::new();
    match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let target = std::fs::read_link(entry.path()).unwrap_or_default();
                let n: RawFd = name.parse().unwrap_or(-1);
                // The directory being read is the one descriptor of its own.
                if n > 2 && !target.to_string_lossy().contains("/fd") {
                    open.push(format!("{n} -> {}", target.display()));
                }
            }
        }
        Err(e) => r
            .lines
            .push(format!("cannot list /proc/self/fd {}", errno(&e))),
    }
    r.attempt(
        format!("descriptors beyond 2 {open:?}"),
        !open.is_empty(),
        "",
    );
    let append = |path: &str| {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(b"MOAT-SELFTEST-LEAK\n"))
    };
    let written = append(&format!("/proc/self/fd/{fd}"));
    r.attempt(
        format!("write to fd {fd}"),
        written.is_ok(),
        written.err().map(|e| errno(&e)).unwrap_or_default(),
    );
    // Another process that still holds the file (the sandbox's PID 1, its supervisor) is a
    // way to it through /proc/PID/fd: written only where the link is the caller's file
    // (device and inode `identity`), so the attempt touches nothing else.
    let mut through = Vec::new();
    for pid in std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .take(10_000)
    {
        let name = pid.file_name().to_string_lossy().into_owned();
        if name.parse::<u32>().is_err() || name == std::process::id().to_string() {
            continue;
        }
        for link in std::fs::read_dir(pid.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .take(4096)
        {
            let same = std::fs::metadata(link.path())
                .is_ok_and(|m| format!("{}:{}", m.dev(), m.ino()) == identity);
            if same && append(&link.path().to_string_lossy()).is_ok() {
                through.push(link.path().display().to_string());
            }
        }
    }
    r.attempt(
        format!("write through another process's descriptor {through:?}"),
        !through.is_empty(),
        "",
    );
    r.finish("a descriptor the caller left open, through this process and others")
}

/// The session keyring: finds and reads the caller's key, and looks for it in /proc/keys.
fn keyring(description: &str) -> i32 {
    let Ok(desc) = CString::new(description) else {
        return 2;
    };
    let mut r = Report::new();
    let read = probe::read_session_key(&desc);
    r.attempt(
        "read the caller's key",
        read.as_ref().is_ok_and(|v| !v.is_empty()),
        read.err().map(|e| errno(&e)).unwrap_or_default(),
    );
    let listed = std::fs::read_to_string("/proc/keys").unwrap_or_default();
    r.attempt(
        "its description in /proc/keys",
        listed.contains(description),
        "",
    );
    r.finish("a key in the caller's session keyring")
}

/// Host unix sockets: an abstract one and sockets on disk (the caller's, and the host's
/// own services' where they exist: Docker, containerd, D-Bus).
fn unix(abstract_name: &str, paths: &[&str]) -> i32 {
    use std::os::linux::net::SocketAddrExt as _;
    let mut r = Report::new();
    let got = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
        .and_then(|a| UnixStream::connect_addr(&a));
    r.attempt(
        format!("connect to @{abstract_name}"),
        got.is_ok(),
        got.err().map(|e| errno(&e)).unwrap_or_default(),
    );
    for path in paths {
        let got = UnixStream::connect(path);
        r.attempt(
            format!("connect to {path}"),
            got.is_ok(),
            got.err().map(|e| errno(&e)).unwrap_or_default(),
        );
    }
    r.finish("the host's unix sockets, abstract and on disk")
}

/// Set-id files in a writable directory: created with the bits, and given them by chmod.
fn setid(dir: &str) -> i32 {
    use std::os::unix::fs::PermissionsExt as _;
    let mut r = Report::new();
    let dir = std::path::Path::new(dir);
    let made = dir.join("created-6755");
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o6755)
        .open(&made);
    let chmodded = dir.join("chmod-4755");
    let changed = std::fs::write(&chmodded, b"#!/bin/sh\n").and_then(|()| {
        std::fs::set_permissions(&chmodded, std::fs::Permissions::from_mode(0o4755))
    });
    for (path, result) in [(&made, created.map(drop)), (&chmodded, changed)] {
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        r.attempt(
            format!("{} with mode {mode:o}", path.display()),
            mode & 0o6000 != 0,
            result.err().map(|e| errno(&e)).unwrap_or_default(),
        );
    }
    r.finish("set-user-ID and set-group-ID files in a writable directory")
}

/// Socket families beside the network, with garbage in the upper halves too; the
/// families a program needs are the control.
fn families() -> i32 {
    const STREAM: u64 = 1;
    const DGRAM: u64 = 2;
    const RAW: u64 = 3;
    const SEQPACKET: u64 = 5;
    let mut r = Report::new();
    for (label, family, kind, protocol) in [
        ("vsock", 40, STREAM, 0),
        ("vsock, 1 above the low half", 40 | (1 << 32), STREAM, 0),
        ("vsock, upper half set", 40 | HI, STREAM, 0),
        ("packet", 17, RAW, 0),
        ("alg", 38, SEQPACKET, 0),
        ("netlink netfilter", 16, RAW, 12),
        ("key (PF_KEY)", 15, RAW, 2),
    ] {
        // A refusal is the filter's EPERM; the kernel's own answer (a socket, or EAFNOSUPPORT
        // where the family is not built) means the call reached it.
        let got = probe::socket_at_full_width(family, kind, protocol);
        let reached = match &got {
            Ok(_) => true,
            Err(e) => e.raw_os_error() != Some(nix::libc::EPERM),
        };
        r.attempt(
            format!("socket({label})"),
            reached,
            got.err()
                .map(|e| errno(&e))
                .unwrap_or_else(|| "(a socket)".into()),
        );
    }
    for (label, family, kind) in [
        ("inet, upper half set", 2 | HI, STREAM),
        ("inet6", 10, DGRAM),
        ("unix", 1, STREAM),
    ] {
        if let Err(e) = probe::socket_at_full_width(family, kind, 0) {
            println!("the control failed: socket({label}) {}", errno(&e));
            return 2;
        }
    }
    r.finish(
        "vsock (not namespaced: it reaches the host), packet, alg, netfilter and PF_KEY sockets",
    )
}

/// New namespaces: the flags at full width, one at a time.
fn namespaces() -> i32 {
    let mut r = Report::new();
    for (label, flags) in [
        ("user", 0x1000_0000),
        ("user, upper half set", 0x1000_0000 | HI),
        ("net", 0x4000_0000),
        ("mount", 0x0002_0000),
        ("pid", 0x2000_0000),
        ("cgroup", 0x0200_0000),
        ("time", 0x80),
    ] {
        let got = probe::unshare_at_full_width(flags);
        r.attempt(
            format!("unshare({label})"),
            got.is_ok(),
            got.err().map(|e| errno(&e)).unwrap_or_default(),
        );
    }
    r.finish("unshare of user, net, mount, pid, cgroup and time namespaces")
}

/// Every number the seccomp table refuses, each register's upper half set; made only
/// under a filter (outside one they would run for real).
fn syscalls() -> i32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let filtered = status
        .lines()
        .any(|l| l.starts_with("Seccomp:") && l.split_whitespace().nth(1) == Some("2"));
    let mut r = Report::new();
    if !filtered {
        r.attempt(
            "run with no seccomp filter (the calls were not made)",
            true,
            "",
        );
        return r.finish("");
    }
    // Under a filter that is not moat's (a container runtime's), stop before the table: a
    // call it lets through would run. vsock is refused by moat's and harmless if not.
    let sentinel = probe::socket_at_full_width(40 | HI, 1, 0);
    if sentinel.as_ref().err().and_then(io::Error::raw_os_error) != Some(nix::libc::EPERM) {
        r.attempt(
            "socket(vsock) under this filter (the table's calls were not made)",
            true,
            sentinel
                .err()
                .map(|e| errno(&e))
                .unwrap_or_else(|| "(a socket)".into()),
        );
        return r.finish("");
    }
    let args = [HI | 1, HI | 2, HI | 3, HI | 4, HI | 5, HI | 6];
    // Control: an allowed call runs with the same registers.
    if !matches!(probe::call_without_user_memory(nix::libc::SYS_getpid, args), Some(Ok(p)) if p > 0)
    {
        println!("the control failed: getpid with the upper halves set");
        return 2;
    }
    let refused = moat_sandbox::syscalls::refused_always();
    let mut wrong = Vec::new();
    for &(nr, name, want) in &refused {
        match probe::call_without_user_memory(nr, args) {
            Some(Err(e)) if e.raw_os_error() == Some(want) => {}
            Some(Err(e)) => wrong.push(format!("{name} ({nr}) {}", errno(&e))),
            Some(Ok(v)) => wrong.push(format!("{name} ({nr}) returned {v}")),
            None => {}
        }
    }
    r.lines.push(format!(
        "{} of {} refused numbers answered as the table says",
        refused.len() - wrong.len(),
        refused.len()
    ));
    for w in wrong {
        r.attempt(format!("ran past the filter: {w}"), true, "");
    }
    r.finish(&format!(
        "all {} numbers the filter refuses, registers' upper halves set",
        refused.len()
    ))
}

/// Files (and directories) that must read as empty: bytes read, entries listed.
fn files(paths: &[&str]) -> i32 {
    let mut r = Report::new();
    for path in paths {
        let p = std::path::Path::new(path);
        if p.is_dir() {
            let listed = std::fs::read_dir(p).map(|d| d.count());
            r.attempt(
                format!("list {path}"),
                listed.as_ref().is_ok_and(|&n| n > 0),
                listed
                    .map(|n| format!("({n} entries)"))
                    .unwrap_or_else(|e| errno(&e)),
            );
            continue;
        }
        let mut buf = [0u8; 64];
        let read = std::fs::File::open(p).and_then(|mut f| f.read(&mut buf));
        r.attempt(
            format!("read {path}"),
            read.as_ref().is_ok_and(|&n| n > 0),
            read.map(|n| format!("({n} bytes)"))
                .unwrap_or_else(|e| errno(&e)),
        );
    }
    r.finish(&format!(
        "{} files of the host that only root may read",
        paths.len()
    ))
}

/// The kernel's views of the whole host in /proc and /sys, and the caller's processes.
fn views(interfaces: &[&str]) -> i32 {
    let mut r = Report::new();
    for path in [
        "/proc/keys",
        "/proc/key-users",
        "/proc/timer_list",
        "/proc/sched_debug",
    ] {
        let n = std::fs::read(path).map(|v| v.len()).unwrap_or(0);
        r.attempt(format!("read {path}"), n > 0, format!("({n} bytes)"));
    }
    let firmware = std::fs::read_dir("/sys/firmware")
        .map(|d| d.count())
        .unwrap_or(0);
    r.attempt(
        "list /sys/firmware",
        firmware > 0,
        format!("({firmware} entries)"),
    );
    let seen: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let host: Vec<&String> = seen
        .iter()
        .filter(|n| interfaces.contains(&n.as_str()))
        .collect();
    r.attempt(
        format!("the host's interfaces in /sys/class/net {host:?}"),
        !host.is_empty(),
        "",
    );
    let caller = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten().any(|e| {
                std::fs::read(e.path().join("cmdline"))
                    .is_ok_and(|c| c.split(|&b| b == 0).any(|arg| arg == b"selftest"))
            })
        })
        .unwrap_or(false);
    r.attempt("`moat selftest` among the processes in /proc", caller, "");
    r.finish("/proc and /sys views of the whole host")
}

/// TCP connections, 1.5 s each at most.
fn connect(targets: &[&str]) -> i32 {
    let mut r = Report::new();
    for target in targets {
        let Ok(addr) = target.parse::<SocketAddr>() else {
            return 2;
        };
        let got = TcpStream::connect_timeout(&addr, Duration::from_millis(1500));
        r.attempt(
            format!("connect to {target}"),
            got.is_ok(),
            got.err().map(|e| errno(&e)).unwrap_or_default(),
        );
    }
    r.finish(&format!("TCP to {} addresses", targets.len()))
}

/// A UDP datagram to each target; whether one arrived is the caller's to see.
fn udp(targets: &[&str]) -> i32 {
    let mut r = Report::new();
    for target in targets {
        let Ok(addr) = target.parse::<SocketAddr>() else {
            return 2;
        };
        let from = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let sent = UdpSocket::bind(from).and_then(|s| s.send_to(b"MOAT-SELFTEST-UDP", addr));
        r.lines.push(format!(
            "a datagram to {target}: {}",
            sent.map(|_| "sent".to_owned())
                .unwrap_or_else(|e| errno(&e))
        ));
    }
    r.finish(&format!("UDP to {} addresses", targets.len()))
}

/// The first name server of /etc/resolv.conf, port 53.
fn resolver() -> Option<SocketAddr> {
    let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
    conf.lines().find_map(|l| {
        let ip = l.strip_prefix("nameserver")?.trim().parse().ok()?;
        Some(SocketAddr::new(ip, 53))
    })
}

/// Lookups of `names` (A and AAAA) from the sandbox's resolver; an answer that points
/// inward (loopback, private, link-local, unspecified) worked.
fn dns(names: &[&str]) -> i32 {
    let Some(server) = resolver() else {
        println!("no name server in /etc/resolv.conf");
        return 2;
    };
    let Ok(sock) = UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }) else {
        return 2;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(1500)));
    let mut r = Report::new();
    for (i, name) in names.iter().enumerate() {
        for qtype in [super::dns::A, super::dns::AAAA] {
            let id = u16::try_from(i * 2).unwrap_or(0) + u16::from(qtype == super::dns::AAAA);
            let answers = sock
                .send_to(&super::dns::query(id, name, qtype), server)
                .ok()
                .and_then(|_| {
                    let mut buf = [0u8; 1500];
                    let n = sock.recv(&mut buf).ok()?;
                    super::dns::answers(&buf[..n])
                });
            match answers {
                Some(list) => {
                    let inward: Vec<_> = list.iter().filter(|a| super::dns::inward(**a)).collect();
                    r.attempt(
                        format!(
                            "{name} {qtype_name} answered {list:?}",
                            qtype_name = if qtype == super::dns::A { "A" } else { "AAAA" }
                        ),
                        !inward.is_empty(),
                        "",
                    );
                }
                None => r.lines.push(format!("{name}: no answer")),
            }
        }
    }
    r.finish("lookups whose answers point inward")
}

/// A TLS ClientHello for `name`, cut into three records (the first ends before the
/// extensions, the second in the middle of the name), each written on its own — or, with
/// `whole`, as one record. Says how the connection ended: `NAME split|whole reset`,
/// `closed` (after whatever came back) or `timeout`. What reached the far side is the
/// caller's to judge.
fn hello(target: &str, name: &str, how: &str) -> i32 {
    let Ok(addr) = target.parse::<SocketAddr>() else {
        return 2;
    };
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => {
            println!("{name} {how} connect {}", errno(&e));
            return 2;
        }
    };
    let _ = stream.set_nodelay(true);
    let records = super::hello::split_client_hello(name);
    let records = if how == "whole" {
        vec![super::hello::as_one_record(&records)]
    } else {
        records
    };
    for record in records {
        if stream.write_all(&record).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    let ended = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break "timeout";
        }
        match stream.read(&mut buf) {
            Ok(0) => break "closed",
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break "reset",
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break "timeout";
            }
            Err(_) => break "closed",
        }
    };
    println!("{name} {how} {ended}");
    println!("shut: reported");
    0
}
