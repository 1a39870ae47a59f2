//! The seccomp filter every sandboxed command runs under.
//!
//! # Theory of operation
//! A deny list, compiled once by the supervisor with seccompiler (rust-vmm's BPF compiler,
//! the one Firecracker uses) and installed in each command's process after fork, right
//! before exec, with `no_new_privs` set. What it closes is the kernel surface a build, a
//! package install or an agent does not need and that reaches *beside* the network:
//!
//! - **The terminal**: `ioctl(TIOCSTI)` (push bytes into a terminal's input: the host
//!   shell would run them) and `ioctl(TIOCLINUX)` (console selection paste does the same).
//! - **Keyrings**: `keyctl`, `add_key`, `request_key` (the caller's session keyring holds
//!   credentials; the command also starts in a fresh empty one).
//! - **Namespaces and mounts**: `mount`, `umount2`, `pivot_root`, the new mount API
//!   (`fsopen`, `fsconfig`, `fsmount`, `fspick`, `move_mount`, `open_tree`,
//!   `mount_setattr`), `setns`, and `unshare`/`clone` with any namespace flag — a nested
//!   user namespace would hand the command a full capability set again. `clone3` passes its
//!   flags in memory a filter cannot read, so it answers ENOSYS and libc falls back to
//!   `clone` (as the container runtimes' default profiles do).
//! - **Kernel attack surface with no use here**: `bpf`, `perf_event_open`, `userfaultfd`,
//!   `io_uring_*` (its operations bypass seccomp), `kexec_*`, module loading, `reboot`,
//!   `swapon`/`swapoff`, `acct`, `quotactl*`, clock and time setting, `syslog`,
//!   `ioperm`/`iopl`, `uselib`, `lookup_dcookie`, `nfsservctl`, `vhangup`,
//!   `open_by_handle_at` and `name_to_handle_at` (a file handle opens files outside the
//!   sandbox's view), `socket(AF_VSOCK)` (vsock is not namespaced: it reaches the host).
//! - **Set-id files**: `chmod`, `fchmod`, `fchmodat`, `fchmodat2` with S_ISUID or S_ISGID,
//!   `open`/`openat`/`creat` creating a file with those bits, `mknod*` likewise. A set-id
//!   file written through a writable grant would run with the sandbox's uid for any host
//!   user who starts it (the sandbox's mounts are nosuid; the host's are not).
//!   `openat2` passes its mode in memory and answers ENOSYS (libc falls back to `openat`).
//!
//! Denied calls fail with EPERM (ENOSYS for the two "fall back" cases), so programs see an
//! ordinary error rather than dying. On x86_64 the x32 ABI shares the architecture tag of
//! the 64-bit ABI and numbers its calls from 0x4000_0000, so every denied call is denied
//! under its x32 number too; other architectures' calls (i386 through `int 0x80`) kill the
//! process (the filter's architecture check).
//!
//! References: seccomp(2), the moby and podman default profiles (the source of this list),
//! bubblewrap's and flatpak's set-id rules.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The compiled filters, installed together by [`Filters::apply`].
#[derive(Debug, Clone)]
pub struct Filters {
    programs: Vec<BpfProgram>,
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
const SET_ID_BITS: [u64; 2] = [0o4000, 0o2000];
/// O_CREAT and O_TMPFILE's own bit (O_TMPFILE is `__O_TMPFILE | O_DIRECTORY`): the open
/// flags that create a file with the mode argument.
const CREATE_FLAGS: [u64; 2] = [libc::O_CREAT as u64, 0o20_000_000];
/// The namespace flags of clone(2) and unshare(2).
const NAMESPACE_FLAGS: [u64; 8] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME (include/uapi/linux/sched.h; not in the libc crate for every target)
];
/// AF_VSOCK (include/linux/socket.h).
const AF_VSOCK: u64 = 40;
/// The x32 ABI's syscall number bit (arch/x86/include/uapi/asm/unistd.h).
const X32_SYSCALL_BIT: i64 = 0x4000_0000;

/// Calls denied whatever their arguments.
fn denied_always() -> Vec<i64> {
    vec![
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_quotactl_fd,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_syslog,
        libc::SYS_ioperm,
        libc::SYS_iopl,
        libc::SYS_uselib,
        libc::SYS_lookup_dcookie,
        libc::SYS_nfsservctl,
        libc::SYS_vhangup,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_setns,
    ]
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        op,
        value,
    )?)
}

/// `arg & bit == bit`, on the low 32 bits (ioctl requests and modes are 32-bit in the
/// kernel: the upper half of the register is ignored there, so it must be here too).
fn has_bit(arg: u8, bit: u64) -> Result<SeccompCondition, SeccompError> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(bit),
        bit,
    )?)
}

/// One rule per set-id bit on argument `mode`.
fn set_id_mode(mode: u8) -> Result<Vec<SeccompRule>, SeccompError> {
    SET_ID_BITS
        .iter()
        .map(|&bit| Ok(SeccompRule::new(vec![has_bit(mode, bit)?])?))
        .collect()
}

/// One rule per (creating flag, set-id bit) pair.
fn creating_set_id(flags: u8, mode: u8) -> Result<Vec<SeccompRule>, SeccompError> {
    let mut rules = Vec::new();
    for &create in &CREATE_FLAGS {
        for &bit in &SET_ID_BITS {
            rules.push(SeccompRule::new(vec![
                has_bit(flags, create)?,
                has_bit(mode, bit)?,
            ])?);
        }
    }
    Ok(rules)
}

/// The EPERM rules: syscall number → conditions (an empty list: always).
fn eperm_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in denied_always() {
        rules.insert(nr, Vec::new());
    }
    #[allow(clippy::unnecessary_cast)] // The request type is c_ulong on glibc, c_int on musl.
    let tty_ioctls = [libc::TIOCSTI as u64, libc::TIOCLINUX as u64];
    rules.insert(
        libc::SYS_ioctl,
        tty_ioctls
            .iter()
            .map(|&req| {
                Ok(SeccompRule::new(vec![SeccompCondition::new(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    req,
                )?])?)
            })
            .collect::<Result<_, SeccompError>>()?,
    );
    let namespaces = |arg: u8| -> Result<Vec<SeccompRule>, SeccompError> {
        NAMESPACE_FLAGS
            .iter()
            .map(|&f| Ok(SeccompRule::new(vec![has_bit(arg, f)?])?))
            .collect()
    };
    rules.insert(libc::SYS_unshare, namespaces(0)?);
    // x86_64 clone(flags, stack, parent_tid, child_tid, tls): the flags come first.
    rules.insert(libc::SYS_clone, namespaces(0)?);
    rules.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![cond(
            0,
            SeccompCmpOp::Eq,
            AF_VSOCK,
        )?])?],
    );
    rules.insert(libc::SYS_chmod, set_id_mode(1)?);
    rules.insert(libc::SYS_fchmod, set_id_mode(1)?);
    rules.insert(libc::SYS_fchmodat, set_id_mode(2)?);
    rules.insert(libc::SYS_fchmodat2, set_id_mode(2)?);
    rules.insert(libc::SYS_creat, set_id_mode(1)?);
    rules.insert(libc::SYS_mknod, set_id_mode(1)?);
    rules.insert(libc::SYS_mknodat, set_id_mode(2)?);
    rules.insert(libc::SYS_open, creating_set_id(1, 2)?);
    rules.insert(libc::SYS_openat, creating_set_id(2, 3)?);
    Ok(rules)
}

/// The x32 numbers of the calls in `rules` (same rules), and of the x32-only entry points
/// of calls denied by argument or outright (arch/x86/entry/syscalls/syscall_64.tbl: ioctl
/// is 514 and kexec_load 528 there).
fn with_x32(rules: BTreeMap<i64, Vec<SeccompRule>>) -> BTreeMap<i64, Vec<SeccompRule>> {
    const X32_IOCTL: i64 = 514;
    const X32_KEXEC_LOAD: i64 = 528;
    let mut all = rules.clone();
    for (nr, chain) in rules {
        let x32 = match nr {
            libc::SYS_ioctl => X32_IOCTL,
            libc::SYS_kexec_load => X32_KEXEC_LOAD,
            other => other,
        };
        all.insert(x32 | X32_SYSCALL_BIT, chain);
    }
    all
}

impl Filters {
    /// Compiles the sandbox's filters for this machine's architecture.
    pub fn build() -> Result<Filters, SeccompError> {
        let arch = match std::env::consts::ARCH {
            "x86_64" => TargetArch::x86_64,
            other => return Err(SeccompError::Arch(other)),
        };
        let eperm = SeccompFilter::new(
            with_x32(eperm_rules()?),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )?;
        let mut enosys_rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        enosys_rules.insert(libc::SYS_clone3, Vec::new());
        enosys_rules.insert(libc::SYS_openat2, Vec::new());
        let enosys = SeccompFilter::new(
            with_x32(enosys_rules),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )?;
        Ok(Filters {
            programs: vec![eperm.try_into()?, enosys.try_into()?],
        })
    }

    /// Installs the filters on the calling thread (it also sets `no_new_privs`). Once
    /// installed they cannot be removed, and children inherit them.
    pub fn apply(&self) -> Result<(), SeccompError> {
        for program in &self.programs {
            seccompiler::apply_filter(program)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code.
    use super::*;

    #[test]
    fn builds_for_this_machine() {
        let filters = Filters::build().unwrap();
        assert_eq!(filters.programs.len(), 2);
        assert!(filters.programs.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn every_denied_call_has_an_x32_twin() {
        let rules = with_x32(eperm_rules().unwrap());
        for nr in denied_always() {
            let x32 = match nr {
                libc::SYS_kexec_load => 528,
                n => n,
            } | X32_SYSCALL_BIT;
            assert!(rules.contains_key(&x32), "{nr}");
        }
        assert!(rules.contains_key(&(514 | X32_SYSCALL_BIT)), "x32 ioctl");
    }
}
