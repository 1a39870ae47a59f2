//! The seccomp filter every sandboxed command runs under.
//!
//! # Theory of operation
//! An **allow list**: [`table`] names every x86_64 system call and what the filter answers
//! it; a call not allowed there is refused, so a call the kernel gains tomorrow is refused
//! until someone decides otherwise. The filter is compiled once by the supervisor and
//! installed in each command's process after fork, right before exec, with
//! `no_new_privs` set and every capability already dropped. What it refuses is the kernel
//! surface a build, a package install or an agent does not need and that reaches *beside*
//! the network:
//!
//! - **The terminal**: `ioctl(TIOCSTI)` and `ioctl(TIOCLINUX)` push bytes into a terminal's
//!   input (the host shell would run them).
//! - **Keyrings**: `keyctl`, `add_key`, `request_key` (the command also starts in a fresh
//!   empty session keyring).
//! - **Namespaces and mounts**: the mount calls old and new, `setns`, and `unshare`/`clone`
//!   with any namespace flag — a nested user namespace would hand the command a full
//!   capability set again.
//! - **Sockets beside the network**: `socket` of any family but unix, IPv4, IPv6 and
//!   netlink's route and diagnostics protocols — vsock is not namespaced and reaches the
//!   host and hypervisor, whatever the policy says.
//! - **Set-id files**: `chmod` and friends, `mknod*`, and `open*`/`creat` creating a file
//!   with S_ISUID or S_ISGID: written through a writable grant, such a file would run with
//!   the sandbox's uid for any host user who starts it.
//! - **Kernel surface with no use here**: `bpf`, `perf_event_open`, `userfaultfd`,
//!   `io_uring_*` (its operations bypass seccomp), kexec and modules, the clock, swap,
//!   quotas, `syslog`, port I/O, file handles (`open_by_handle_at` opens files outside the
//!   view).
//!
//! **Widths.** A filter sees six 64-bit registers; the kernel reads an `int` argument as
//! its low 32 bits. Every argument compared here is 32-bit in the kernel (families,
//! ioctl requests, modes, open and clone flags), so every compare reads only the low half:
//! `socket(0x1_0000_0028, ...)` is the kernel's AF_VSOCK and the filter's too.
//!
//! **Answers.** Refused calls fail with EPERM, so programs report an ordinary error. Three
//! kinds answer ENOSYS instead, so libc falls back as on an older kernel: `clone3` and
//! `openat2` (their flags and mode are in memory a filter cannot read; libc falls back to
//! `clone` and `openat`, which the filter can judge), numbers above the newest the table
//! names (future calls), and the x32 ABI's numbers (bit 30 set; answered as by a kernel
//! built without x32, as most distributions' are). A call through another architecture's
//! entry (the 32-bit `int 0x80`) kills the process: its numbers mean other calls.
//!
//! **Shape.** One BPF program: a short prefix of moat's own (architecture, x32, future
//! numbers, the ENOSYS calls) and then the allow list compiled by seccompiler (rust-vmm's
//! BPF compiler, the one Firecracker uses). Every unconditional allow depends only on the
//! number, so the kernel's per-call cache (Linux 5.11+) skips the filter for those calls.
//! [`table::answer`] is the plain definition; a test runs the compiled program on the same
//! inputs and must agree with it for every number, with the upper halves of the arguments
//! set and unset.
//!
//! References: seccomp(2), the moby and podman default profiles, bubblewrap's and
//! flatpak's set-id rules, arch/x86/entry/syscalls/syscall_64.tbl.

pub mod table;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use table::{Answer, Guard};

/// The compiled filter, installed by [`Filters::apply`].
#[derive(Debug, Clone)]
pub struct Filters {
    program: BpfProgram,
}

/// Why the filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeccompError {
    /// This machine's architecture has no filter.
    #[error("no seccomp filter for the {0} architecture")]
    Arch(&'static str),
    /// Compiling or installing failed.
    #[error("seccomp: {0}")]
    Filter(#[from] seccompiler::Error),
    /// A rule was malformed.
    #[error("seccomp rule: {0}")]
    Rule(#[from] seccompiler::BackendError),
}

/// S_ISUID and S_ISGID (inode(7)).
const SET_ID_BITS: [u32; 2] = [0o4000, 0o2000];
/// O_CREAT and O_TMPFILE's own bit (O_TMPFILE is `__O_TMPFILE | O_DIRECTORY`): the open
/// flags that create a file with the mode argument.
const CREATE_FLAGS: [u32; 2] = [libc::O_CREAT as u32, 0o20_000_000];
/// The namespace flags of clone(2) and unshare(2).
const NAMESPACE_FLAGS: [u32; 8] = [
    libc::CLONE_NEWNS as u32,
    libc::CLONE_NEWCGROUP as u32,
    libc::CLONE_NEWUTS as u32,
    libc::CLONE_NEWIPC as u32,
    libc::CLONE_NEWUSER as u32,
    libc::CLONE_NEWPID as u32,
    libc::CLONE_NEWNET as u32,
    0x80, // CLONE_NEWTIME (include/uapi/linux/sched.h; not in the libc crate for every target)
];
/// The bits of each list above, together.
const fn any_of(bits: &[u32]) -> u32 {
    let mut mask = 0;
    let mut i = 0;
    while i < bits.len() {
        mask |= bits[i];
        i += 1;
    }
    mask
}
const SET_ID_MASK: u32 = any_of(&SET_ID_BITS);
const CREATE_MASK: u32 = any_of(&CREATE_FLAGS);
const NAMESPACE_MASK: u32 = any_of(&NAMESPACE_FLAGS);
/// The ioctl requests that push input into a terminal (tty_ioctl(4), ioctl_console(2)).
#[allow(clippy::unnecessary_cast)] // The request type is c_ulong on glibc, c_int on musl.
const TERMINAL_INPUT: [u32; 2] = [libc::TIOCSTI as u32, libc::TIOCLINUX as u32];
/// Socket families (include/linux/socket.h).
const AF_UNIX: u32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const AF_NETLINK: u32 = 16;
/// NETLINK_ROUTE and NETLINK_SOCK_DIAG (include/uapi/linux/netlink.h): interfaces,
/// addresses and routes (`ip`, getaddrinfo's AI_ADDRCONFIG) and socket listings (`ss`).
const NETLINK_PROTOCOLS: [u32; 2] = [0, 4];
/// personality(2) values the runtimes' profiles allow — PER_LINUX, PER_LINUX32, UNAME26,
/// both, the query 0xffffffff — and ADDR_NO_RANDOMIZE, which debuggers set
/// (include/uapi/linux/personality.h).
const PERSONAS: [u32; 6] = [0, 0x0008, 0x2_0000, 0x2_0008, 0x4_0000, 0xffff_ffff];
/// The x32 ABI's syscall number bit (arch/x86/include/uapi/asm/unistd.h).
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// AUDIT_ARCH_X86_64 (include/uapi/linux/audit.h: EM_X86_64 | 64BIT | LE).
const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;

/// `arg`'s low 32 bits compared with `op` to `value`.
fn low(arg: u8, op: SeccompCmpOp, value: u32) -> Result<SeccompCondition, SeccompError> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        u64::from(value),
    )?)
}

/// `arg`'s low 32 bits share no bit with `mask`.
fn none_of(arg: u8, mask: u32) -> Result<SeccompCondition, SeccompError> {
    low(arg, SeccompCmpOp::MaskedEq(u64::from(mask)), 0)
}

/// A guard as seccompiler rules: the call is allowed when any rule holds, a rule holds
/// when all its conditions do (the same reading as [`table::passes`]).
fn guard_rules(guard: Guard) -> Result<Vec<SeccompRule>, SeccompError> {
    let rule =
        |conditions| -> Result<SeccompRule, SeccompError> { Ok(SeccompRule::new(conditions)?) };
    let each = |arg: u8, values: &[u32]| -> Result<Vec<SeccompRule>, SeccompError> {
        values
            .iter()
            .map(|&v| rule(vec![low(arg, SeccompCmpOp::Eq, v)?]))
            .collect()
    };
    Ok(match guard {
        Guard::NoSetIdMode { mode } => vec![rule(vec![none_of(mode, SET_ID_MASK)?])?],
        Guard::NoSetIdCreate { flags, mode } => vec![
            rule(vec![none_of(flags, CREATE_MASK)?])?,
            rule(vec![none_of(mode, SET_ID_MASK)?])?,
        ],
        Guard::NoTerminalInput => vec![rule(
            TERMINAL_INPUT
                .iter()
                .map(|&req| low(1, SeccompCmpOp::Ne, req))
                .collect::<Result<_, _>>()?,
        )?],
        Guard::NoNamespaces => vec![rule(vec![none_of(0, NAMESPACE_MASK)?])?],
        Guard::SocketFamily => {
            let mut rules = each(0, &[AF_UNIX, AF_INET, AF_INET6])?;
            for &protocol in &NETLINK_PROTOCOLS {
                rules.push(rule(vec![
                    low(0, SeccompCmpOp::Eq, AF_NETLINK)?,
                    low(2, SeccompCmpOp::Eq, protocol)?,
                ])?);
            }
            rules
        }
        Guard::UnixPair => each(0, &[AF_UNIX])?,
        Guard::Persona => each(0, &PERSONAS)?,
    })
}

/// The allow list as seccompiler's map: number → rules (an empty list: always).
fn allow_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut rules = BTreeMap::new();
    for call in table::CALLS {
        match call.answer {
            Answer::Allow => {
                rules.insert(call.nr, Vec::new());
            }
            Answer::Guarded(guard) => {
                rules.insert(call.nr, guard_rules(guard)?);
            }
            Answer::Refuse | Answer::Fallback => {}
        }
    }
    Ok(rules)
}

/// classic BPF opcodes (include/uapi/linux/bpf_common.h, filter.h) and seccomp's return
/// values and `struct seccomp_data` offsets (include/uapi/linux/seccomp.h).
mod op {
    pub const LD_W_ABS: u16 = 0x20; // LD | W | ABS
    pub const JEQ_K: u16 = 0x15; // JMP | JEQ | K
    pub const JGT_K: u16 = 0x25; // JMP | JGT | K
    pub const JSET_K: u16 = 0x45; // JMP | JSET | K
    pub const RET_K: u16 = 0x06; // RET | K
    pub const NR: u32 = 0;
    pub const ARCH: u32 = 4;
    pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
    pub const RET_ERRNO: u32 = 0x0005_0000;
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// moat's prefix: kill another architecture's calls, answer ENOSYS to x32 numbers, to
/// numbers newer than the table and to the `Fallback` calls, and fall through to the allow
/// list for the rest.
fn prefix() -> Vec<sock_filter> {
    let fallbacks: Vec<u32> = table::CALLS
        .iter()
        .filter(|c| c.answer == Answer::Fallback)
        .filter_map(|c| u32::try_from(c.nr).ok())
        .collect();
    // The tests after the number is loaded, each jumping to the ENOSYS return when true.
    let mut tests = vec![
        (op::JSET_K, X32_SYSCALL_BIT),
        (op::JGT_K, table::NEWEST as u32),
    ];
    tests.extend(fallbacks.iter().map(|&nr| (op::JEQ_K, nr)));
    let mut program = vec![
        stmt(op::LD_W_ABS, op::ARCH),
        jump(op::JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        stmt(op::RET_K, op::RET_KILL_PROCESS),
        stmt(op::LD_W_ABS, op::NR),
    ];
    let count = tests.len();
    for (i, (code, k)) in tests.into_iter().enumerate() {
        // The ENOSYS return sits right after the last test; a false last test skips it.
        let to_enosys = u8::try_from(count - 1 - i).unwrap_or(u8::MAX);
        let last = i + 1 == count;
        program.push(jump(code, k, to_enosys, u8::from(last)));
    }
    program.push(stmt(op::RET_K, op::RET_ERRNO | libc::ENOSYS as u32));
    program
}

impl Filters {
    /// Compiles the sandbox's filter for this machine's architecture.
    pub fn build() -> Result<Filters, SeccompError> {
        let arch = match std::env::consts::ARCH {
            "x86_64" => TargetArch::x86_64,
            other => return Err(SeccompError::Arch(other)),
        };
        let allow: BpfProgram = SeccompFilter::new(
            allow_rules()?,
            SeccompAction::Errno(libc::EPERM as u32),
            SeccompAction::Allow,
            arch,
        )?
        .try_into()?;
        let mut program = prefix();
        program.extend(allow);
        Ok(Filters { program })
    }

    /// Installs the filter on the calling thread (it also sets `no_new_privs`). Once
    /// installed it cannot be removed, and children inherit it.
    pub fn apply(&self) -> Result<(), SeccompError> {
        Ok(seccompiler::apply_filter(&self.program)?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code.
    use super::table::{Verdict, answer};
    use super::*;

    /// Runs a classic BPF program on one `struct seccomp_data` as the kernel does, for the
    /// instructions seccomp filters use (loads from the data, AND, jumps on constants,
    /// returns). Anything else fails the test: the program must stay in this subset.
    fn run(program: &[sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::with_capacity(64);
        data.extend_from_slice(&nr.to_le_bytes());
        data.extend_from_slice(&arch.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes()); // instruction_pointer
        for a in args {
            data.extend_from_slice(&a.to_le_bytes());
        }
        let mut acc: u32 = 0;
        let mut pc = 0usize;
        loop {
            let ins = &program[pc];
            pc += 1;
            match ins.code {
                0x20 => {
                    let at = ins.k as usize;
                    acc = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
                }
                0x54 => acc &= ins.k, // ALU | AND | K
                0x05 => pc += ins.k as usize,
                0x15 | 0x25 | 0x35 | 0x45 => {
                    let taken = match ins.code {
                        0x15 => acc == ins.k,
                        0x25 => acc > ins.k,
                        0x35 => acc >= ins.k,
                        _ => acc & ins.k != 0,
                    };
                    pc += usize::from(if taken { ins.jt } else { ins.jf });
                }
                0x06 => return ins.k,
                other => panic!("instruction {other:#x} at {}", pc - 1),
            }
        }
    }

    fn verdict(ret: u32) -> Verdict {
        match ret & 0xffff_0000 {
            0x7fff_0000 => Verdict::Allow,
            0x0005_0000 => Verdict::Errno((ret & 0xffff) as i32),
            0x8000_0000 => Verdict::Kill,
            other => panic!("unexpected action {other:#x}"),
        }
    }

    /// Argument values that sit on every guard's edges, alone and with the upper half of
    /// the register set (the kernel ignores it for these 32-bit arguments).
    fn edge_values() -> Vec<u64> {
        let mut low: Vec<u32> = vec![0, 1, 2, 4, 10, 16, 40, 17, 0o4000, 0o2000, 0o6755, 0o755];
        low.extend(CREATE_FLAGS);
        low.extend(CREATE_FLAGS.map(|f| f | 0o1));
        low.extend(NAMESPACE_FLAGS);
        low.extend(NAMESPACE_FLAGS.map(|f| f | libc::SIGCHLD as u32));
        low.extend(TERMINAL_INPUT);
        low.extend(PERSONAS);
        low.extend([
            0x4_0008,
            u32::MAX - 1,
            libc::CLONE_VM as u32 | libc::CLONE_FS as u32,
        ]);
        let mut all = Vec::new();
        for v in low {
            all.push(u64::from(v));
            all.push(u64::from(v) | 0xffff_ffff_0000_0000);
            all.push(u64::from(v) | 0x1_0000_0000);
        }
        all
    }

    #[test]
    fn the_compiled_filter_answers_as_the_table_says() {
        let filters = Filters::build().unwrap();
        let values = edge_values();
        let mut checked = 0u64;
        let numbers = (0..=table::NEWEST as u32 + 40)
            .chain((0..=table::NEWEST as u32 + 40).map(|n| n | X32_SYSCALL_BIT))
            .chain([u32::MAX, 0x8000_0000, 0x4000_0200, 0x4000_0202]);
        for nr in numbers {
            let guarded =
                table::call(i64::from(nr)).is_some_and(|c| matches!(c.answer, Answer::Guarded(_)));
            // Every edge value in each of the first four argument positions for guarded
            // calls (all their guards read arguments 0 to 3); a handful for the rest.
            let vectors: Vec<[u64; 6]> = if guarded {
                let mut v = Vec::new();
                for &a in &values {
                    for &b in &values {
                        v.push([a, b, b, b, 0, 0]);
                        v.push([b, a, 0, a, b, 0]);
                    }
                }
                v
            } else {
                vec![[0; 6], [u64::MAX; 6], [40 | 1 << 32, 1, 0, 0, 0, 0]]
            };
            for args in vectors {
                let got = verdict(run(&filters.program, AUDIT_ARCH_X86_64, nr, args));
                assert_eq!(
                    got,
                    answer(AUDIT_ARCH_X86_64, nr, args),
                    "nr {nr:#x} args {args:x?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 100_000, "{checked}");
    }

    #[test]
    fn another_architectures_calls_kill_the_process() {
        let filters = Filters::build().unwrap();
        // AUDIT_ARCH_I386 (EM_386 | LE): the 32-bit `int 0x80` entry, where 359 is socket.
        let i386 = 3 | 0x4000_0000;
        for nr in [0, 20, 359, 1 << 30] {
            assert_eq!(
                verdict(run(&filters.program, i386, nr, [40, 1, 0, 0, 0, 0])),
                Verdict::Kill
            );
            assert_eq!(answer(i386, nr, [0; 6]), Verdict::Kill);
        }
    }

    /// The plain definition itself, on the cases the hostile reviews named (so a wrong
    /// table cannot be "agreed with" by a wrong compiler).
    #[test]
    fn the_findings_are_refused_at_every_width() {
        let x86 = AUDIT_ARCH_X86_64;
        let nr = |n: i64| n as u32;
        let eperm = Verdict::Errno(libc::EPERM);
        let hi = 0x1_0000_0000u64;
        // vsock with the upper half set is still AF_VSOCK to the kernel.
        for family in [40, 40 | hi, 40 | 0xffff_ffff << 32, 17, 38] {
            assert_eq!(
                answer(x86, nr(libc::SYS_socket), [family, 1, 0, 0, 0, 0]),
                eperm
            );
        }
        for family in [2, 2 | hi, 10, 1] {
            assert_eq!(
                answer(x86, nr(libc::SYS_socket), [family, 1, 0, 0, 0, 0]),
                Verdict::Allow
            );
        }
        assert_eq!(
            answer(x86, nr(libc::SYS_socket), [16, 3, 0, 0, 0, 0]),
            Verdict::Allow
        );
        assert_eq!(
            answer(x86, nr(libc::SYS_socket), [16, 3, 12, 0, 0, 0]),
            eperm
        );
        // A nested user namespace, a keyring, a mount: refused by the filter itself.
        let newuser = libc::CLONE_NEWUSER as u64;
        for flags in [newuser, newuser | hi, libc::CLONE_NEWNET as u64 | hi] {
            assert_eq!(
                answer(x86, nr(libc::SYS_unshare), [flags, 0, 0, 0, 0, 0]),
                eperm
            );
            assert_eq!(
                answer(x86, nr(libc::SYS_clone), [flags, 0, 0, 0, 0, 0]),
                eperm
            );
        }
        assert_eq!(
            answer(
                x86,
                nr(libc::SYS_unshare),
                [libc::CLONE_FS as u64 | hi, 0, 0, 0, 0, 0]
            ),
            Verdict::Allow
        );
        for call in [
            libc::SYS_keyctl,
            libc::SYS_add_key,
            libc::SYS_mount,
            libc::SYS_bpf,
            libc::SYS_io_uring_setup,
        ] {
            assert_eq!(answer(x86, nr(call), [0; 6]), eperm, "{call}");
        }
        // The terminal: TIOCSTI with garbage above it.
        #[allow(clippy::unnecessary_cast)]
        let sti = libc::TIOCSTI as u64;
        assert_eq!(
            answer(x86, nr(libc::SYS_ioctl), [0, sti | hi, 0, 0, 0, 0]),
            eperm
        );
        assert_eq!(
            answer(x86, nr(libc::SYS_ioctl), [0, 0x5401, 0, 0, 0, 0]),
            Verdict::Allow
        );
        // Set-id modes, group-only and with other bits beside them.
        for mode in [0o4755, 0o2755, 0o6000, 0o2000 | hi] {
            assert_eq!(
                answer(x86, nr(libc::SYS_fchmodat), [0, 0, mode, 0, 0, 0]),
                eperm
            );
            assert_eq!(
                answer(
                    x86,
                    nr(libc::SYS_openat),
                    [0, 0, libc::O_CREAT as u64 | hi, mode, 0, 0]
                ),
                eperm
            );
        }
        assert_eq!(
            answer(x86, nr(libc::SYS_openat), [0, 0, 0, 0o4755, 0, 0]),
            Verdict::Allow
        );
        // New calls answer ENOSYS; x32 calls too.
        assert_eq!(answer(x86, 471, [0; 6]), Verdict::Errno(libc::ENOSYS));
        assert_eq!(
            answer(x86, 41 | X32_SYSCALL_BIT, [2, 1, 0, 0, 0, 0]),
            Verdict::Errno(libc::ENOSYS)
        );
        assert_eq!(
            answer(x86, nr(libc::SYS_clone3), [0; 6]),
            Verdict::Errno(libc::ENOSYS)
        );
    }

    #[test]
    fn the_table_names_each_number_once_and_agrees_with_libc() {
        let mut seen = std::collections::BTreeSet::new();
        for c in table::CALLS {
            assert!(seen.insert(c.nr), "{} listed twice", c.nr);
            assert!((0..=table::NEWEST).contains(&c.nr), "{}", c.name);
        }
        // Spot checks of the literal numbers against libc where it has them.
        for (name, nr) in [
            ("socket", libc::SYS_socket),
            ("rseq", libc::SYS_rseq),
            ("statx", libc::SYS_statx),
        ] {
            assert_eq!(table::CALLS.iter().find(|c| c.name == name).unwrap().nr, nr);
        }
        // Names from the kernel's table for the numbers written literally.
        for (nr, name) in [
            (333, "io_pgetevents"),
            (424, "pidfd_send_signal"),
            (451, "cachestat"),
            (462, "mseal"),
        ] {
            assert_eq!(table::call(nr).unwrap().name, name);
        }
        let refused = table::refused_always();
        assert!(refused.iter().any(|&(nr, _, _)| nr == libc::SYS_keyctl));
        assert!(!refused.iter().any(|&(nr, _, _)| nr == libc::SYS_read));
    }

    /// `refused_always` (the list `moat selftest` and the e2e syscall test try one by one)
    /// holds every number the filter refuses whatever the arguments, ENOSYS fallbacks
    /// included, each with the errno it answers, and nothing a call can pass.
    #[test]
    fn refused_always_is_every_number_refused_whatever_the_arguments() {
        let refused = table::refused_always();
        for nr in 0..=table::NEWEST {
            let listed = refused.iter().find(|&&(n, _, _)| n == nr);
            let nr32 = u32::try_from(nr).unwrap();
            match listed {
                Some(&(_, name, errno)) => {
                    for args in [[0; 6], [u64::MAX; 6]] {
                        assert_eq!(
                            answer(AUDIT_ARCH_X86_64, nr32, args),
                            Verdict::Errno(errno),
                            "{nr} {name}"
                        );
                    }
                }
                None => assert!(
                    matches!(
                        table::call(nr).unwrap().answer,
                        Answer::Allow | Answer::Guarded(_)
                    ),
                    "{nr} is refused whatever the arguments but not listed"
                ),
            }
        }
        assert!(refused.contains(&(libc::SYS_clone3, "clone3", libc::ENOSYS)));
    }
}
