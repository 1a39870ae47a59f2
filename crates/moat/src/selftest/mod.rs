//! `moat selftest [--json]`: the escape classes of moat's boundary, tried against real
//! sandboxes on this host, in a few seconds.
//!
//! # Theory of operation
//!
//! A probe has two halves. The *attacker* is this same binary started again inside a
//! sandbox as `moat __probe NAME ARGS...` (`attack.rs`; hidden from `--help`): the binary
//! is shown read-only at its own path, so the host needs no other tool. It makes the
//! attempt with plain system calls and says what it got. The *caller's half* (`local.rs`,
//! `net.rs`) arranges what the attempt aims at — a pseudo-terminal, a process, a
//! descriptor, a key, unix sockets, listeners on the host's own addresses, a DNS server —
//! and afterwards looks at what the host saw: the terminal's input queue, whether the
//! process lives, what the file, the listeners and the server received, the run's audit
//! events. A probe *holds* when neither the attacker nor the host saw the attempt work.
//!
//! Every sandbox is made through [`crate::SandboxBuilder::assemble`] and
//! [`crate::builder::Assembly::start`], the one path `moat run` and the Rust API take:
//! one sandbox without a network (`--policy none`) for the local classes, one with the
//! default policy, public_only, for the network classes (two rules are added before it
//! for the split ClientHello, below). Probes run one after another in each sandbox.
//!
//! **Controls.** A probe holds only if its attempt could have worked: where that is
//! harmless the same attacker also runs on the host, after the attempt inside, with a
//! target of the same kind (selftest's own terminal, process, file, key, sockets), and
//! must succeed there; inside, an allowed neighbour (an `inet` socket beside `vsock`,
//! `getpid` beside the refused calls, a public name beside the rebinding one) must work. Where the host itself refuses the attempt
//! (no TIOCSTI outside `CAP_SYS_ADMIN`, a normal user reading root's files) the probe is
//! *skipped* with the reason — this host is not exposed to that class — and does not fail
//! the run. A probe that could not be made at all (a sandbox that did not start, an
//! attacker that failed its own control) *failed*, and fails the run.
//!
//! **Nothing leaves the machine.** The network attacker aims only at the host's own
//! addresses (TCP listeners and UDP sockets selftest opens), the gateway's alias for the
//! host's loopback, addresses moat refuses before it opens any socket (metadata, private
//! and special ranges: the audit events show each was judged and denied), and
//! selftest's DNS server on 127.0.0.1. The split ClientHello goes to selftest's listener on the host's loopback,
//! allowed by an added rule for its port, with a deny rule for the name the hello carries;
//! TLS is intercepted on that port so moat reads the hello. The refused calls of the
//! seccomp table are made only under a filter, each argument zero or a kernel address.
//!
//! **What the host lacks** (`host.rs`) is reported beside the probes: user namespaces,
//! seccomp, the cgroup controllers moat's limits need, idmapped mounts.
//!
//! Exit status: 0 only when every probe held (API.md); 1 when one leaked or failed; 2 when
//! none did but some were skipped — this host is not exposed to those classes, so nothing
//! leaked, but they were not tried here (a CI job that means "all held" checks for 0).

mod attack;
mod dns;
mod hello;
mod host;
mod local;
mod net;

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::builder::Started;
use crate::{Error, SandboxBuilder};

pub(crate) use attack::main as probe_main;

/// How long one attacker may run before it is killed (its own waits are shorter).
const ATTACK_LIMIT: Duration = Duration::from_secs(15);

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The attempt was refused and the host saw nothing.
    Held,
    /// The attempt worked.
    Leak,
    /// This host refuses the attempt outside any sandbox too.
    Skipped,
    /// The probe could not be made.
    Failed,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Held => "held",
            Verdict::Leak => "LEAK",
            Verdict::Skipped => "skipped",
            Verdict::Failed => "failed",
        }
    }
}

/// One probe's line.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub(crate) name: &'static str,
    pub(crate) verdict: Verdict,
    /// What was tried (held), or why (the others).
    pub(crate) detail: String,
}

impl Finding {
    pub(crate) fn new(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Finding {
        Finding {
            name,
            verdict,
            detail: detail.into(),
        }
    }
}

/// What an attacker said: its exit status (0 shut, 1 open, else it could not run) and
/// its output.
#[derive(Debug, Clone)]
pub(crate) struct Said {
    pub(crate) status: i32,
    pub(crate) text: String,
}

impl Said {
    pub(crate) fn open(&self) -> bool {
        self.status == 1
    }

    pub(crate) fn shut(&self) -> bool {
        self.status == 0
    }

    /// The attacker's last line (its summary), or the whole output when it had none.
    pub(crate) fn summary(&self) -> String {
        let last = self.text.lines().rev().find(|l| !l.trim().is_empty());
        last.unwrap_or("no output").trim().to_owned()
    }

    /// Lines of the attempts that worked.
    pub(crate) fn worked(&self) -> String {
        let lines: Vec<&str> = self
            .text
            .lines()
            .filter(|l| l.contains(": worked"))
            .collect();
        if lines.is_empty() {
            self.summary()
        } else {
            lines.join("; ")
        }
    }
}

/// The verdict of a probe from the host's control run, the attacker inside, and whether
/// the host saw an effect (`seen`, with what it was).
pub(crate) fn judge(
    name: &'static str,
    control: Option<&Said>,
    inside: &Said,
    seen: Option<String>,
) -> Finding {
    if let Some(effect) = seen {
        return Finding::new(name, Verdict::Leak, effect);
    }
    if inside.open() {
        return Finding::new(name, Verdict::Leak, inside.worked());
    }
    if !inside.shut() {
        return Finding::new(
            name,
            Verdict::Failed,
            format!("the attacker could not run: {}", inside.summary()),
        );
    }
    match control {
        Some(c) if !c.open() => Finding::new(
            name,
            Verdict::Skipped,
            format!(
                "the attempt fails on this host outside a sandbox too ({})",
                c.summary()
            ),
        ),
        _ => Finding::new(
            name,
            Verdict::Held,
            inside.summary().trim_start_matches("shut: ").to_owned(),
        ),
    }
}

/// This binary, as the sandboxes see it (granted read-only at its own path).
pub(crate) fn exe() -> std::io::Result<PathBuf> {
    std::env::current_exe()?.canonicalize()
}

/// The attacker on the host: `moat __probe ARGS...`, bounded in time, with `stdin` (else
/// /dev/null). Only for attempts that are harmless here (they aim at selftest's own
/// things).
pub(crate) fn on_host(args: &[&str], stdin: Option<Stdio>) -> Said {
    let Ok(exe) = exe() else {
        return Said {
            status: 2,
            text: "cannot find this program".into(),
        };
    };
    let child = Command::new(exe)
        .arg("__probe")
        .args(args)
        .stdin(stdin.unwrap_or_else(Stdio::null))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return Said {
                status: 2,
                text: format!("cannot start the attacker: {e}"),
            };
        }
    };
    let deadline = Instant::now() + ATTACK_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s.code().unwrap_or(2),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break 2;
            }
        }
    };
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    Said { status, text }
}

/// A sandbox for probes, started through moat's one assembly path.
pub(crate) struct Jail {
    started: Option<Started>,
    exe: PathBuf,
    /// What could not be applied of the limits asked (from the sandbox's start).
    pub(crate) limit_notes: Vec<String>,
}

impl Jail {
    /// Starts `builder`'s sandbox with this binary granted read-only.
    pub(crate) fn start(builder: SandboxBuilder) -> Result<Jail, Error> {
        let exe = exe().map_err(crate::api::io_err("find this program"))?;
        let started = builder.ro(&exe).assemble()?.start()?;
        let limit_notes = started.sandbox.limit_notes().to_vec();
        Ok(Jail {
            started: Some(started),
            exe,
            limit_notes,
        })
    }

    /// Runs the attacker inside with `args`, stdin `stdin` (else /dev/null), bounded.
    pub(crate) fn attack(&mut self, args: &[&str], stdin: Option<BorrowedFd<'_>>) -> Said {
        let failed = |text: String| Said { status: 2, text };
        let Some(started) = self.started.as_mut() else {
            return failed("the sandbox was stopped".into());
        };
        let null = match std::fs::File::open("/dev/null") {
            Ok(f) => f,
            Err(e) => return failed(format!("/dev/null: {e}")),
        };
        let (out_r, out_w) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => return failed(format!("a pipe: {e}")),
        };
        let argv: Vec<OsString> = std::iter::once(self.exe.as_os_str().to_owned())
            .chain(std::iter::once("__probe".into()))
            .chain(args.iter().map(OsString::from))
            .collect();
        let spec = moat_sandbox::SpawnSpec::new(argv, started.env.clone(), started.workdir.clone());
        let stdin = stdin.unwrap_or(null.as_fd());
        let pid = match started
            .sandbox
            .spawn(spec, &[stdin, out_w.as_fd(), out_w.as_fd()])
        {
            Ok(pid) => pid,
            Err(e) => return failed(format!("cannot start the attacker: {e}")),
        };
        drop(out_w);
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::fs::File::from(out_r).read_to_string(&mut text);
            text
        });
        let deadline = Instant::now() + ATTACK_LIMIT;
        let status = loop {
            match started.sandbox.next_exit(false) {
                Ok(Some((p, s))) if p == pid => break s.shell_code(),
                Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                Ok(_) => {
                    let _ = started.sandbox.signal(pid, nix::libc::SIGKILL);
                    let _ = started.sandbox.wait(pid);
                    break 2;
                }
                Err(e) => return failed(format!("lost the sandbox: {e}")),
            }
        };
        let text = reader.join().unwrap_or_default();
        Said { status, text }
    }

    /// Stops the sandbox (and its engine), writing the audit log's `end`.
    pub(crate) fn stop(mut self) {
        if let Some(started) = self.started.take() {
            let _ = crate::Sandbox::from_parts(started).stop();
        }
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        if let Some(started) = self.started.take() {
            let _ = crate::Sandbox::from_parts(started).stop();
        }
    }
}

/// A directory of selftest's own (mode 0700), removed when dropped.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = std::env::temp_dir().join(format!("moat-selftest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        Ok(Scratch(dir))
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `moat selftest [--json]`.
pub(crate) fn main(json: bool) -> ExitCode {
    let began = Instant::now();
    let scratch = match Scratch::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("moat selftest: cannot make a scratch directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (mut findings, notes) = local::probes(&scratch);
    findings.extend(net::probes());
    let lacks = host::lacks(&notes);
    let seconds = began.elapsed().as_secs_f64();
    let count = |v: Verdict| findings.iter().filter(|f| f.verdict == v).count();
    let (held, leaks, skipped, failed) = (
        count(Verdict::Held),
        count(Verdict::Leak),
        count(Verdict::Skipped),
        count(Verdict::Failed),
    );
    if json {
        let probes: Vec<serde_json::Value> = findings
            .iter()
            .map(|f| serde_json::json!({"name": f.name, "verdict": f.verdict.label().to_ascii_lowercase(), "detail": f.detail}))
            .collect();
        let lacking: Vec<serde_json::Value> = lacks
            .iter()
            .map(|(what, why)| serde_json::json!({"what": what, "detail": why}))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "probes": probes,
                "host_lacks": lacking,
                "held": held, "leaks": leaks, "skipped": skipped, "failed": failed,
                "seconds": (seconds * 100.0).round() / 100.0,
            })
        );
    } else {
        let width = findings.iter().map(|f| f.name.len()).max().unwrap_or(0);
        for f in &findings {
            println!("{:<7} {:<width$}  {}", f.verdict.label(), f.name, f.detail);
        }
        for (what, why) in &lacks {
            println!("lacks   {what:<width$}  {why}");
        }
        if lacks.is_empty() {
            println!(
                "lacks   {:<width$}  user namespaces, seccomp, cgroup controllers, /dev/net/tun and idmapped mounts are there",
                "nothing"
            );
        }
        println!(
            "{} probes in {seconds:.1} s: {held} held, {leaks} leaked, {skipped} skipped, {failed} failed",
            findings.len()
        );
    }
    let status = exit_status(leaks + failed, skipped);
    if !json && status == 2 {
        println!(
            "exit status 2: nothing leaked, but {skipped} of the probes could not be tried on this host (the skipped lines say why)"
        );
    }
    ExitCode::from(status)
}

/// 0 only when every probe held, 1 when one leaked or failed, 2 when some were skipped.
fn exit_status(bad: usize, skipped: usize) -> u8 {
    match (bad, skipped) {
        (0, 0) => 0,
        (0, _) => 2,
        _ => 1,
    }
}

/// The host's interface names other than `lo` (for the /sys probe).
pub(crate) fn host_interfaces() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lo")
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `path` exists and holds at least a byte (for root-only files: stat needs no
/// read permission).
pub(crate) fn nonempty(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_status_is_0_only_when_every_probe_held() {
        assert_eq!(exit_status(0, 0), 0);
        assert_eq!(exit_status(0, 3), 2);
        assert_eq!(exit_status(1, 0), 1);
        assert_eq!(exit_status(2, 5), 1);
    }

    fn said(status: i32, last: &str) -> Said {
        Said {
            status,
            text: format!("an attempt: worked\n{last}\n"),
        }
    }

    #[test]
    fn a_probe_holds_only_when_nothing_worked_and_the_control_did() {
        let open = said(1, "open: an attempt");
        let shut = said(0, "shut: the attempt");
        let broken = said(2, "cannot run");
        let verdict = |c: Option<&Said>, inside: &Said, seen: Option<&str>| {
            judge("p", c, inside, seen.map(str::to_owned)).verdict
        };
        // What the host saw decides, whatever the attacker said.
        assert_eq!(verdict(Some(&open), &shut, Some("queue")), Verdict::Leak);
        assert_eq!(verdict(Some(&open), &open, None), Verdict::Leak);
        assert_eq!(verdict(Some(&open), &broken, None), Verdict::Failed);
        // The control: an attempt that fails on the host too proves nothing.
        assert_eq!(verdict(Some(&shut), &shut, None), Verdict::Skipped);
        assert_eq!(verdict(Some(&broken), &shut, None), Verdict::Skipped);
        assert_eq!(verdict(Some(&open), &shut, None), Verdict::Held);
        assert_eq!(verdict(None, &shut, None), Verdict::Held);
        let held = judge("p", Some(&open), &shut, None);
        assert_eq!(held.detail, "the attempt");
    }
}
