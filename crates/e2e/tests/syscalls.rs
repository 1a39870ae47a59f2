//! The seccomp allow list, tried from inside a real sandbox against the real kernel: every
//! number the filter refuses, called with the upper half of every argument register set;
//! the socket families beside the network (vsock) at both widths; nested namespaces and
//! keyrings; the x32 and 32-bit entries.
//!
//! Each refusal is paired with a control: the same call on the host reaches the kernel
//! (it answers something else), or the allowed neighbour of a refused call runs inside.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::process::Command;
use std::time::Duration;

use moat_e2e::{As, Scratch, run_with_timeout, stderr, stdout};
use moat_sandbox::syscalls;

const T: Duration = Duration::from_secs(90);

/// Python that defines `call(nr, *args) -> (result, errno)` with every register given as a
/// full 64-bit value.
const CALL: &str = r#"
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    regs = [ctypes.c_ulong(a & 0xffffffffffffffff) for a in args]
    regs += [ctypes.c_ulong(0)] * (6 - len(regs))
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *regs)
    return r, ctypes.get_errno()
HI = 0xffffffff00000000
"#;

/// Runs `script` (with [`CALL`] before it) on the host, bounded.
fn on_host(script: &str) -> String {
    let mut c = Command::new("python3");
    c.args(["-c", &format!("{CALL}{script}")]);
    let out = run_with_timeout(c, T);
    format!("{}{}", stdout(&out), stderr(&out))
}

/// Runs `script` (with [`CALL`] before it) in a sandbox as `who`; its output, then
/// `status N` with the exit status python3 had inside.
fn inside(who: As, s: &Scratch, script: &str) -> String {
    let script = format!("{CALL}{script}");
    let args = [
        "run",
        "--policy",
        "none",
        "--",
        "sh",
        "-c",
        "python3 -c \"$1\"; echo \"status $?\"",
        "sh",
        &script,
    ];
    let out = run_with_timeout(who.moat(s, &args), T);
    format!("{}{}", stdout(&out), stderr(&out))
}

/// Asserts that each of `lines` is a whole line of `text`.
fn has_lines(who: As, text: &str, lines: &[&str]) {
    for line in lines {
        assert!(text.lines().any(|l| l == *line), "{who:?}: {line}: {text}");
    }
}

#[test]
fn every_refused_number_is_refused_with_its_upper_halves_set() {
    let s = Scratch::new("sysnr");
    let refused = syscalls::refused_always();
    assert!(refused.len() > 60, "{}", refused.len());
    let list: Vec<String> = refused
        .iter()
        .map(|(nr, _, errno)| format!("({nr},{errno})"))
        .collect();
    let newest = syscalls::NEWEST;
    let script = format!(
        r#"
bad = []
for nr, want in [{}]:
    for args in ([HI | 1, HI | 2, HI | 3, HI | 4, HI | 5, HI | 6], [0] * 6):
        r, e = call(nr, *args)
        if r != -1 or e != want:
            bad.append((nr, r, e))
# Numbers newer than the table, and x32 numbers, answer ENOSYS.
for nr in list(range({newest} + 1, {newest} + 40)) + [0x40000000 | 39, 0x40000000 | 41, 0x40000000 | 250]:
    r, e = call(nr, HI | 2, HI | 1, 0)
    if r != -1 or e != 38:
        bad.append((nr, r, e))
# Controls: allowed calls run, with garbage in their upper halves too.
ok = call(39)[0] > 0 and call(102)[0] >= 0 and call(63, HI | 0)[1] in (0, 14)
print("BAD", bad, "CONTROL", ok, flush=True)
"#,
        list.join(",")
    );
    for who in As::BOTH {
        let text = inside(who, &s, &script);
        assert!(
            text.contains("BAD [] CONTROL True") && text.contains("status 0"),
            "{who:?}: {text}"
        );
    }
}

#[test]
fn vsock_and_other_families_are_refused_at_every_width() {
    let s = Scratch::new("vsock");
    let probe = r#"
for label, fam in (("vsock", 40), ("vsock-hi", 40 | (1 << 32)), ("vsock-allhi", 40 | HI), ("packet", 17), ("alg", 38), ("netlink-netfilter", 16)):
    proto = 12 if fam == 16 else 0
    r, e = call(41, fam, 1 if fam != 16 else 3, proto)
    print(label, "fd" if r >= 0 else e, flush=True)
# Controls: the families a program needs, upper halves set as the kernel ignores them.
for label, fam, kind in (("inet-hi", 2 | HI, 1), ("inet6", 10, 2), ("unix", 1, 1), ("netlink-route", 16, 3)):
    r, e = call(41, fam, kind, 0)
    print(label, "fd" if r >= 0 else e, flush=True)
r, e = call(53, 2, 1, 0, 0)
print("pair-inet", "fd" if r >= 0 else e, flush=True)
"#;
    // Control on the host: the kernel reads only the low half, so the upper half does not
    // turn vsock into an invalid family (EINVAL would mean the call never was vsock).
    let host = on_host(probe);
    for line in ["vsock-hi", "vsock-allhi"] {
        let answer = host
            .lines()
            .find(|l| l.starts_with(&format!("{line} ")))
            .unwrap_or("");
        assert!(
            answer.ends_with(" fd") || answer.ends_with(" 97"),
            "host {line}: {host}"
        );
    }
    for who in As::BOTH {
        let text = inside(who, &s, probe);
        has_lines(
            who,
            &text,
            &[
                "vsock 1",
                "vsock-hi 1",
                "vsock-allhi 1",
                "packet 1",
                "alg 1",
                "netlink-netfilter 1",
                "pair-inet 1",
            ],
        );
        // Controls.
        has_lines(
            who,
            &text,
            &["inet-hi fd", "inet6 fd", "unix fd", "netlink-route fd"],
        );
    }
}

#[test]
fn nested_namespaces_and_keyrings_are_refused_by_the_filter() {
    let s = Scratch::new("nsfilter");
    // unshare(CLONE_NEWUSER) and friends, with and without garbage above the flags; the
    // filter's own answer is checked in the sandbox crate's unit tests (a BPF interpreter
    // over the installed program), this is the kernel's end of it.
    let probe = r#"
NEWUSER, NEWNET, NEWNS, FS = 0x10000000, 0x40000000, 0x00020000, 0x00000200
for label, flags in (("user", NEWUSER), ("user-hi", NEWUSER | HI), ("net", NEWNET | (1 << 40)), ("mnt", NEWNS)):
    r, e = call(272, flags)
    print("unshare", label, "ok" if r == 0 else e, flush=True)
r, e = call(250, 0, -3 & 0xffffffffffffffff, 0)
print("keyctl", "ok" if r >= 0 else e, flush=True)
r, e = call(248, 0, 0, 0, 0, 0)
print("add_key", "ok" if r >= 0 else e, flush=True)
# Control: unshare without namespace flags runs (the kernel reads unshare's flags at 64
# bits and refuses unknown upper bits itself, so no garbage above them here).
r, e = call(272, FS)
print("unshare fs", "ok" if r == 0 else e, flush=True)
"#;
    for who in As::BOTH {
        let text = inside(who, &s, probe);
        has_lines(
            who,
            &text,
            &[
                "unshare user 1",
                "unshare user-hi 1",
                "unshare net 1",
                "unshare mnt 1",
                "keyctl 1",
                "add_key 1",
                "unshare fs ok",
            ],
        );
    }
}

#[test]
fn the_32_bit_entry_kills_the_process() {
    let s = Scratch::new("int80");
    // mov eax, 20 (getpid in the i386 table); int 0x80; ret — run from a 64-bit process.
    let probe = r#"
import mmap
m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3]))
f = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
print("PRE", flush=True)
print("int80", f(), flush=True)
"#;
    let host = on_host(probe);
    let host_supported = host.lines().any(|l| {
        l.strip_prefix("int80 ")
            .and_then(|v| v.parse::<i32>().ok())
            .is_some_and(|p| p > 0)
    });
    for who in As::BOTH {
        let text = inside(who, &s, probe);
        // The probe ran up to the call (control), and the call killed it: SIGSYS, 128 + 31.
        assert!(text.contains("PRE"), "{who:?}: {text}");
        assert!(
            !text.contains("int80 "),
            "{who:?}: the 32-bit call returned: {text}"
        );
        if host_supported {
            assert!(text.contains("status 159"), "{who:?}: {text}");
        } else {
            eprintln!(
                "this kernel has no 32-bit entry (host: {host}); checked only that it did not run"
            );
        }
    }
}
