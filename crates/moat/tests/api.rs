//! The Rust API (shared/API.md §1) against real sandboxes. This test binary is also the
//! sandboxes' supervisor, so it runs without the libtest harness and calls `moat::init()`
//! first, as every program using the API must.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use moat::{ExitStatus, Netns, NetworkPolicy, Sandbox};

fn offline_exec_fs_and_status() {
    let sb = Sandbox::builder("api-offline")
        .network(|n| n.policy(NetworkPolicy::none()))
        .env("GREETING", "hi")
        .create()
        .unwrap();
    let out = sb
        .exec("sh", ["-c", "echo $GREETING; echo err >&2; exit 3"])
        .unwrap();
    assert_eq!(out.status, ExitStatus::Code(3));
    assert_eq!(out.stdout, b"hi\n");
    assert_eq!(out.stderr, b"err\n");
    let links = sb.exec("ip", ["-o", "link"]).unwrap();
    let text = String::from_utf8_lossy(&links.stdout).into_owned();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains(": lo:"), "{text}");

    sb.fs()
        .write("/workspace/in.txt", b"from the host")
        .unwrap();
    let out = sb
        .exec(
            "sh",
            [
                "-c",
                "cat /workspace/in.txt; echo made > /workspace/out.txt",
            ],
        )
        .unwrap();
    assert_eq!(out.stdout, b"from the host");
    assert_eq!(sb.fs().read("/workspace/out.txt").unwrap(), b"made\n");
    let names = sb.fs().list("/workspace").unwrap();
    assert_eq!(names, ["in.txt", "out.txt"]);
    sb.fs().remove("/workspace/in.txt").unwrap();
    assert_eq!(sb.fs().list("/workspace").unwrap(), ["out.txt"]);
    // Outside the work directory the host is read-only.
    assert!(sb.fs().write("/etc/moat-test", b"x").is_err());
    let out = sb.exec("sh", ["-c", "touch /usr/moat-test"]).unwrap();
    assert_ne!(out.status, ExitStatus::Code(0));
    sb.stop().unwrap();
    assert!(
        sb.exec("true", [""; 0]).is_err(),
        "a stopped sandbox runs nothing"
    );
}

fn network_to_the_host_loopback_through_the_gateway() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = conn.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /api "));
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
            .unwrap();
    });
    let sb = Sandbox::builder("api-net")
        .network(|n| n.policy(NetworkPolicy::allow_all()))
        .create()
        .unwrap();
    let url = format!("http://10.0.2.2:{port}/api");
    let out = sb.exec("curl", ["-sS", "-m", "10", url.as_str()]).unwrap();
    assert_eq!(
        out.status,
        ExitStatus::Code(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello");
    server.join().unwrap();

    // The default policy (public_only) denies the host's loopback: nothing reaches a live
    // listener...
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!(
        "http://10.0.2.2:{}/api",
        listener.local_addr().unwrap().port()
    );
    let sb2 = Sandbox::builder("api-default").create().unwrap();
    let out = sb2
        .exec(
            "curl",
            ["-sS", "--connect-timeout", "1", "-m", "2", url.as_str()],
        )
        .unwrap();
    assert_ne!(out.status, ExitStatus::Code(0));
    assert!(
        listener.accept().is_err(),
        "a connection arrived under the default policy"
    );
    // ...that the allow-all sandbox does reach (control: the listener was live).
    let _ = sb.exec("curl", ["-sS", "-m", "5", url.as_str()]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while listener.accept().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "control: the allow-all sandbox did not reach the listener"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_and_signal() {
    let sb = Sandbox::builder("api-signal")
        .network(|n| n.policy(NetworkPolicy::none()))
        .create()
        .unwrap();
    let mut child = sb.spawn("sleep", &["30"]).unwrap();
    child.signal(15).unwrap();
    assert_eq!(child.wait().unwrap(), ExitStatus::Signal(15));
    let mut cat = sb.spawn("cat", &[]).unwrap();
    cat.stdin.take().unwrap().write_all(b"piped").unwrap();
    let mut out = String::new();
    cat.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert_eq!(out, "piped");
    assert_eq!(cat.wait().unwrap(), ExitStatus::Code(0));
}

fn bad_names_are_errors() {
    assert!(Sandbox::builder("Not Valid").create().is_err());
}

fn network_options_out_of_range_are_errors() {
    for mtu in [1279, 65521] {
        let err = Sandbox::builder("mtu")
            .network(|n| n.mtu(mtu))
            .create()
            .err()
            .unwrap_or_else(|| panic!("MTU {mtu} accepted"));
        assert!(err.to_string().contains("expected 1280 to 65520"), "{err}");
    }
    let err = Sandbox::builder("buffers")
        .network(|n| n.max_buffer_memory(1 << 20))
        .create()
        .err()
        .expect("1 MiB of buffers accepted");
    assert!(err.to_string().contains("4 MiB"), "{err}");
}

/// A writer that takes `room` bytes and then fails as a full disk does.
struct Full(usize);

impl Write for Full {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.0 == 0 {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        let n = b.len().min(self.0);
        self.0 -= n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn an_audit_log_that_cannot_be_written_fails_closed_when_required() {
    let offline = |room: usize, required: bool| {
        Sandbox::builder("api-audit")
            .network(|n| n.policy(NetworkPolicy::none()))
            .audit(moat::AuditSink::Writer(Box::new(Full(room))))
            .audit_required(required)
    };
    // Not even `start` can be written: nothing starts.
    match offline(0, true).create() {
        Err(moat::Error::AuditFailed(why)) => {
            assert!(why.contains("No space left on device"), "{why}")
        }
        other => panic!("started without its audit log: {:?}", other.err()),
    }
    // `start` fits, `end` does not: stop says the record has a hole in it.
    let sb = offline(400, true).create().unwrap();
    assert_eq!(
        sb.exec("true", [""; 0]).unwrap().status,
        ExitStatus::Code(0)
    );
    assert!(matches!(sb.stop(), Err(moat::Error::AuditFailed(_))));
    // Not required: the loss is said (stderr) and counted, and the sandbox runs.
    let sb = offline(0, false).create().unwrap();
    assert_eq!(
        sb.exec("true", [""; 0]).unwrap().status,
        ExitStatus::Code(0)
    );
    sb.stop().unwrap();
    // A cap too small for start, truncated and end is refused.
    let err = Sandbox::builder("api-audit")
        .audit(moat::AuditSink::Stderr)
        .audit_max_size(1024)
        .create()
        .err()
        .expect("a 1 KiB cap accepted");
    assert!(err.to_string().contains("16 KiB"), "{err}");
}

/// `SandboxBuilder::attach`: a namespace made outside moat (as a runtime makes one) is
/// served with the builder's policy; a program in it reaches the host's loopback through
/// the gateway under allow-all; the process watch sees it; a file that is not a namespace
/// is an `Error::Attach`.
fn attach_serves_a_namespace_made_elsewhere() {
    let name = format!("moatapi{}", std::process::id() % 100_000);
    let ran = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap()
            .success()
    };
    assert!(ran(&["netns", "add", &name]), "ip netns add (needs root)");
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }
    let _del = Del(name.clone());
    let err = Sandbox::builder("api-attach")
        .network(|n| n.policy(NetworkPolicy::allow_all()))
        .attach(Netns::at("/etc/hostname"))
        .expect_err("a file that is not a namespace was served");
    assert!(matches!(err, moat::Error::Attach(_)), "{err}");
    assert!(err.to_string().contains("not a network namespace"), "{err}");
    let mut attached = Sandbox::builder("api-attach")
        .network(|n| n.policy(NetworkPolicy::allow_all()))
        .attach(Netns::at(format!("/run/netns/{name}")))
        .unwrap();
    assert!(!attached.occupied());
    assert_eq!(attached.resolv_conf().trim(), "nameserver 10.0.2.2");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://10.0.2.2:{}/api",
        listener.local_addr().unwrap().port()
    );
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf).unwrap();
        conn.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nattached",
        )
        .unwrap();
    });
    let mut curl = std::process::Command::new("ip")
        .args(["netns", "exec", &name, "curl", "-sS", "-m", "10", &url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The process in the namespace is seen.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !attached.occupied() && curl.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no process seen in the namespace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut body = String::new();
    curl.stdout
        .take()
        .unwrap()
        .read_to_string(&mut body)
        .unwrap();
    assert!(curl.wait().unwrap().success());
    assert_eq!(body, "attached");
    server.join().unwrap();
    assert!(attached.must_stop().is_none());
    let counters = attached.stop();
    assert!(counters.allowed >= 1, "{counters:?}");
}

fn main() {
    moat::init();
    let tests: [(&str, fn()); 7] = [
        ("offline_exec_fs_and_status", offline_exec_fs_and_status),
        (
            "network_to_the_host_loopback_through_the_gateway",
            network_to_the_host_loopback_through_the_gateway,
        ),
        ("spawn_and_signal", spawn_and_signal),
        ("bad_names_are_errors", bad_names_are_errors),
        (
            "an_audit_log_that_cannot_be_written_fails_closed_when_required",
            an_audit_log_that_cannot_be_written_fails_closed_when_required,
        ),
        (
            "network_options_out_of_range_are_errors",
            network_options_out_of_range_are_errors,
        ),
        (
            "attach_serves_a_namespace_made_elsewhere",
            attach_serves_a_namespace_made_elsewhere,
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, test) in tests {
        match std::panic::catch_unwind(test) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
