//! Every x86_64 system call, by number, with what the sandbox's filter answers it.
//!
//! This table *is* the allow list: a call is allowed only if it is named here as
//! [`Answer::Allow`] or passes its [`Guard`]. Names come from the kernel's
//! `arch/x86/entry/syscalls/syscall_64.tbl` (numbers from the libc crate where it has them,
//! literal below where it does not yet). Numbers up to [`NEWEST`] that the table does not
//! name are unassigned on x86_64 and refused like any other unlisted call; numbers above it
//! are calls newer than this table and answer ENOSYS, so libc falls back as it would on an
//! older kernel.
//!
//! The choice follows the container runtimes' default profiles (moby's and podman's):
//! what a build, a package install, a test suite or an agent's tools call is allowed; what
//! reaches beside the sandbox (keyrings, mounts, namespaces, kernel modules, the clock,
//! vsock, file handles) or is kernel attack surface with no use here (`bpf`,
//! `perf_event_open`, `userfaultfd`, `io_uring_*`, whose operations bypass seccomp) is
//! refused. [`answer`] is the plain definition the compiled filter is held to.

use super::{AF_INET, AF_INET6, AF_NETLINK, AF_UNIX, CREATE_MASK, NAMESPACE_MASK, SET_ID_MASK};

/// What the filter answers one system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Runs, whatever its arguments.
    Allow,
    /// Runs when its arguments pass the guard; otherwise EPERM.
    Guarded(Guard),
    /// EPERM: an ordinary "not permitted" the program can report.
    Refuse,
    /// ENOSYS: the call's arguments are in memory a filter cannot read, so it answers
    /// "not implemented" and libc falls back to an older call the filter can judge.
    Fallback,
}

/// The argument checks of the calls allowed only with some arguments. Each compares an
/// argument at the width the kernel reads it (all of these are 32-bit in the kernel, so
/// the upper half of the register is ignored here as it is there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// The mode in argument `mode` has neither S_ISUID nor S_ISGID.
    NoSetIdMode {
        /// The mode's argument index.
        mode: u8,
    },
    /// The call creates no file (no O_CREAT, no O_TMPFILE in argument `flags`), or the mode
    /// in argument `mode` has neither set-id bit.
    NoSetIdCreate {
        /// The open flags' argument index.
        flags: u8,
        /// The mode's argument index.
        mode: u8,
    },
    /// `ioctl` with any request but TIOCSTI and TIOCLINUX (both push input into a
    /// terminal: the host's shell would run it).
    NoTerminalInput,
    /// `clone`/`unshare` with no namespace flag in argument 0: a nested user namespace
    /// would hand the command a full capability set again.
    NoNamespaces,
    /// `socket` of the families a program here needs: unix, IPv4, IPv6 (every IP packet
    /// ends in moat's stack) and netlink's route and socket-diagnostics protocols (`ip`,
    /// `ss`, getaddrinfo's address check). Not vsock (not namespaced: it reaches the host
    /// or hypervisor), not packet sockets, not the rest (kernel surface with no use here).
    SocketFamily,
    /// `socketpair` of unix sockets (the only family that has pairs).
    UnixPair,
    /// `personality` queried, or set to Linux with only the flags the runtimes allow
    /// (UNAME26, 32-bit addresses, no address randomisation for a debugger).
    Persona,
}

/// The last number named below; anything above answers ENOSYS.
pub const NEWEST: i64 = 470;

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// The x86_64 number.
    pub nr: i64,
    /// The kernel's name for it.
    pub name: &'static str,
    /// What the filter answers.
    pub answer: Answer,
}

macro_rules! calls {
    ($($name:ident $nr:expr => $answer:expr;)*) => {
        /// The table, in any order (the filter and its tests index it by number).
        pub const CALLS: &[Call] = &[$(Call { nr: $nr, name: stringify!($name), answer: $answer }),*];
    };
}

use Answer::{Allow, Fallback, Guarded, Refuse};
use Guard::{
    NoNamespaces, NoSetIdCreate, NoSetIdMode, NoTerminalInput, Persona, SocketFamily, UnixPair,
};

calls! {
    // Files and descriptors.
    read libc::SYS_read => Allow;
    write libc::SYS_write => Allow;
    open libc::SYS_open => Guarded(NoSetIdCreate { flags: 1, mode: 2 });
    close libc::SYS_close => Allow;
    stat libc::SYS_stat => Allow;
    fstat libc::SYS_fstat => Allow;
    lstat libc::SYS_lstat => Allow;
    poll libc::SYS_poll => Allow;
    lseek libc::SYS_lseek => Allow;
    mmap libc::SYS_mmap => Allow;
    mprotect libc::SYS_mprotect => Allow;
    munmap libc::SYS_munmap => Allow;
    brk libc::SYS_brk => Allow;
    rt_sigaction libc::SYS_rt_sigaction => Allow;
    rt_sigprocmask libc::SYS_rt_sigprocmask => Allow;
    rt_sigreturn libc::SYS_rt_sigreturn => Allow;
    ioctl libc::SYS_ioctl => Guarded(NoTerminalInput);
    pread64 libc::SYS_pread64 => Allow;
    pwrite64 libc::SYS_pwrite64 => Allow;
    readv libc::SYS_readv => Allow;
    writev libc::SYS_writev => Allow;
    access libc::SYS_access => Allow;
    pipe libc::SYS_pipe => Allow;
    select libc::SYS_select => Allow;
    sched_yield libc::SYS_sched_yield => Allow;
    mremap libc::SYS_mremap => Allow;
    msync libc::SYS_msync => Allow;
    mincore libc::SYS_mincore => Allow;
    madvise libc::SYS_madvise => Allow;
    shmget libc::SYS_shmget => Allow;
    shmat libc::SYS_shmat => Allow;
    shmctl libc::SYS_shmctl => Allow;
    dup libc::SYS_dup => Allow;
    dup2 libc::SYS_dup2 => Allow;
    pause libc::SYS_pause => Allow;
    nanosleep libc::SYS_nanosleep => Allow;
    getitimer libc::SYS_getitimer => Allow;
    alarm libc::SYS_alarm => Allow;
    setitimer libc::SYS_setitimer => Allow;
    getpid libc::SYS_getpid => Allow;
    sendfile libc::SYS_sendfile => Allow;
    socket libc::SYS_socket => Guarded(SocketFamily);
    connect libc::SYS_connect => Allow;
    accept libc::SYS_accept => Allow;
    sendto libc::SYS_sendto => Allow;
    recvfrom libc::SYS_recvfrom => Allow;
    sendmsg libc::SYS_sendmsg => Allow;
    recvmsg libc::SYS_recvmsg => Allow;
    shutdown libc::SYS_shutdown => Allow;
    bind libc::SYS_bind => Allow;
    listen libc::SYS_listen => Allow;
    getsockname libc::SYS_getsockname => Allow;
    getpeername libc::SYS_getpeername => Allow;
    socketpair libc::SYS_socketpair => Guarded(UnixPair);
    setsockopt libc::SYS_setsockopt => Allow;
    getsockopt libc::SYS_getsockopt => Allow;
    clone libc::SYS_clone => Guarded(NoNamespaces);
    fork libc::SYS_fork => Allow;
    vfork libc::SYS_vfork => Allow;
    execve libc::SYS_execve => Allow;
    exit libc::SYS_exit => Allow;
    wait4 libc::SYS_wait4 => Allow;
    kill libc::SYS_kill => Allow;
    uname libc::SYS_uname => Allow;
    semget libc::SYS_semget => Allow;
    semop libc::SYS_semop => Allow;
    semctl libc::SYS_semctl => Allow;
    shmdt libc::SYS_shmdt => Allow;
    msgget libc::SYS_msgget => Allow;
    msgsnd libc::SYS_msgsnd => Allow;
    msgrcv libc::SYS_msgrcv => Allow;
    msgctl libc::SYS_msgctl => Allow;
    fcntl libc::SYS_fcntl => Allow;
    flock libc::SYS_flock => Allow;
    fsync libc::SYS_fsync => Allow;
    fdatasync libc::SYS_fdatasync => Allow;
    truncate libc::SYS_truncate => Allow;
    ftruncate libc::SYS_ftruncate => Allow;
    getdents libc::SYS_getdents => Allow;
    getcwd libc::SYS_getcwd => Allow;
    chdir libc::SYS_chdir => Allow;
    fchdir libc::SYS_fchdir => Allow;
    rename libc::SYS_rename => Allow;
    mkdir libc::SYS_mkdir => Allow;
    rmdir libc::SYS_rmdir => Allow;
    creat libc::SYS_creat => Guarded(NoSetIdMode { mode: 1 });
    link libc::SYS_link => Allow;
    unlink libc::SYS_unlink => Allow;
    symlink libc::SYS_symlink => Allow;
    readlink libc::SYS_readlink => Allow;
    chmod libc::SYS_chmod => Guarded(NoSetIdMode { mode: 1 });
    fchmod libc::SYS_fchmod => Guarded(NoSetIdMode { mode: 1 });
    chown libc::SYS_chown => Allow;
    fchown libc::SYS_fchown => Allow;
    lchown libc::SYS_lchown => Allow;
    umask libc::SYS_umask => Allow;
    gettimeofday libc::SYS_gettimeofday => Allow;
    getrlimit libc::SYS_getrlimit => Allow;
    getrusage libc::SYS_getrusage => Allow;
    sysinfo libc::SYS_sysinfo => Allow;
    times libc::SYS_times => Allow;
    // Debuggers and tracers: they reach only processes of the sandbox's own pid namespace
    // with no more capabilities than the tracer (none), as in the runtimes' profiles on
    // kernels since 4.8, where a tracer can no longer step around seccomp.
    ptrace libc::SYS_ptrace => Allow;
    getuid libc::SYS_getuid => Allow;
    syslog libc::SYS_syslog => Refuse;
    getgid libc::SYS_getgid => Allow;
    setuid libc::SYS_setuid => Allow;
    setgid libc::SYS_setgid => Allow;
    geteuid libc::SYS_geteuid => Allow;
    getegid libc::SYS_getegid => Allow;
    setpgid libc::SYS_setpgid => Allow;
    getppid libc::SYS_getppid => Allow;
    getpgrp libc::SYS_getpgrp => Allow;
    setsid libc::SYS_setsid => Allow;
    setreuid libc::SYS_setreuid => Allow;
    setregid libc::SYS_setregid => Allow;
    getgroups libc::SYS_getgroups => Allow;
    setgroups libc::SYS_setgroups => Allow;
    setresuid libc::SYS_setresuid => Allow;
    getresuid libc::SYS_getresuid => Allow;
    setresgid libc::SYS_setresgid => Allow;
    getresgid libc::SYS_getresgid => Allow;
    getpgid libc::SYS_getpgid => Allow;
    setfsuid libc::SYS_setfsuid => Allow;
    setfsgid libc::SYS_setfsgid => Allow;
    getsid libc::SYS_getsid => Allow;
    capget libc::SYS_capget => Allow;
    capset libc::SYS_capset => Allow;
    rt_sigpending libc::SYS_rt_sigpending => Allow;
    rt_sigtimedwait libc::SYS_rt_sigtimedwait => Allow;
    rt_sigqueueinfo libc::SYS_rt_sigqueueinfo => Allow;
    rt_sigsuspend libc::SYS_rt_sigsuspend => Allow;
    sigaltstack libc::SYS_sigaltstack => Allow;
    utime libc::SYS_utime => Allow;
    mknod libc::SYS_mknod => Guarded(NoSetIdMode { mode: 1 });
    uselib libc::SYS_uselib => Refuse;
    personality libc::SYS_personality => Guarded(Persona);
    ustat libc::SYS_ustat => Refuse;
    statfs libc::SYS_statfs => Allow;
    fstatfs libc::SYS_fstatfs => Allow;
    sysfs libc::SYS_sysfs => Refuse;
    getpriority libc::SYS_getpriority => Allow;
    setpriority libc::SYS_setpriority => Allow;
    sched_setparam libc::SYS_sched_setparam => Allow;
    sched_getparam libc::SYS_sched_getparam => Allow;
    sched_setscheduler libc::SYS_sched_setscheduler => Allow;
    sched_getscheduler libc::SYS_sched_getscheduler => Allow;
    sched_get_priority_max libc::SYS_sched_get_priority_max => Allow;
    sched_get_priority_min libc::SYS_sched_get_priority_min => Allow;
    sched_rr_get_interval libc::SYS_sched_rr_get_interval => Allow;
    mlock libc::SYS_mlock => Allow;
    munlock libc::SYS_munlock => Allow;
    mlockall libc::SYS_mlockall => Allow;
    munlockall libc::SYS_munlockall => Allow;
    vhangup libc::SYS_vhangup => Refuse;
    modify_ldt libc::SYS_modify_ldt => Allow;
    pivot_root libc::SYS_pivot_root => Refuse;
    _sysctl libc::SYS__sysctl => Refuse;
    prctl libc::SYS_prctl => Allow;
    arch_prctl libc::SYS_arch_prctl => Allow;
    adjtimex libc::SYS_adjtimex => Refuse;
    setrlimit libc::SYS_setrlimit => Allow;
    // Inside the sandbox's own mount namespace: a build's chroot jail changes nothing
    // outside it.
    chroot libc::SYS_chroot => Allow;
    sync libc::SYS_sync => Allow;
    acct libc::SYS_acct => Refuse;
    settimeofday libc::SYS_settimeofday => Refuse;
    mount libc::SYS_mount => Refuse;
    umount2 libc::SYS_umount2 => Refuse;
    swapon libc::SYS_swapon => Refuse;
    swapoff libc::SYS_swapoff => Refuse;
    reboot libc::SYS_reboot => Refuse;
    // The sandbox's own UTS namespace.
    sethostname libc::SYS_sethostname => Allow;
    setdomainname libc::SYS_setdomainname => Allow;
    iopl libc::SYS_iopl => Refuse;
    ioperm libc::SYS_ioperm => Refuse;
    create_module 174 => Refuse;
    init_module libc::SYS_init_module => Refuse;
    delete_module libc::SYS_delete_module => Refuse;
    get_kernel_syms 177 => Refuse;
    query_module 178 => Refuse;
    quotactl libc::SYS_quotactl => Refuse;
    nfsservctl libc::SYS_nfsservctl => Refuse;
    getpmsg libc::SYS_getpmsg => Refuse;
    putpmsg libc::SYS_putpmsg => Refuse;
    afs_syscall libc::SYS_afs_syscall => Refuse;
    tuxcall libc::SYS_tuxcall => Refuse;
    security libc::SYS_security => Refuse;
    gettid libc::SYS_gettid => Allow;
    readahead libc::SYS_readahead => Allow;
    setxattr libc::SYS_setxattr => Allow;
    lsetxattr libc::SYS_lsetxattr => Allow;
    fsetxattr libc::SYS_fsetxattr => Allow;
    getxattr libc::SYS_getxattr => Allow;
    lgetxattr libc::SYS_lgetxattr => Allow;
    fgetxattr libc::SYS_fgetxattr => Allow;
    listxattr libc::SYS_listxattr => Allow;
    llistxattr libc::SYS_llistxattr => Allow;
    flistxattr libc::SYS_flistxattr => Allow;
    removexattr libc::SYS_removexattr => Allow;
    lremovexattr libc::SYS_lremovexattr => Allow;
    fremovexattr libc::SYS_fremovexattr => Allow;
    tkill libc::SYS_tkill => Allow;
    time libc::SYS_time => Allow;
    futex libc::SYS_futex => Allow;
    sched_setaffinity libc::SYS_sched_setaffinity => Allow;
    sched_getaffinity libc::SYS_sched_getaffinity => Allow;
    set_thread_area libc::SYS_set_thread_area => Allow;
    io_setup libc::SYS_io_setup => Allow;
    io_destroy libc::SYS_io_destroy => Allow;
    io_getevents libc::SYS_io_getevents => Allow;
    io_submit libc::SYS_io_submit => Allow;
    io_cancel libc::SYS_io_cancel => Allow;
    get_thread_area libc::SYS_get_thread_area => Allow;
    lookup_dcookie libc::SYS_lookup_dcookie => Refuse;
    epoll_create libc::SYS_epoll_create => Allow;
    epoll_ctl_old libc::SYS_epoll_ctl_old => Refuse;
    epoll_wait_old libc::SYS_epoll_wait_old => Refuse;
    remap_file_pages libc::SYS_remap_file_pages => Allow;
    getdents64 libc::SYS_getdents64 => Allow;
    set_tid_address libc::SYS_set_tid_address => Allow;
    restart_syscall libc::SYS_restart_syscall => Allow;
    semtimedop libc::SYS_semtimedop => Allow;
    fadvise64 libc::SYS_fadvise64 => Allow;
    timer_create libc::SYS_timer_create => Allow;
    timer_settime libc::SYS_timer_settime => Allow;
    timer_gettime libc::SYS_timer_gettime => Allow;
    timer_getoverrun libc::SYS_timer_getoverrun => Allow;
    timer_delete libc::SYS_timer_delete => Allow;
    clock_settime libc::SYS_clock_settime => Refuse;
    clock_gettime libc::SYS_clock_gettime => Allow;
    clock_getres libc::SYS_clock_getres => Allow;
    clock_nanosleep libc::SYS_clock_nanosleep => Allow;
    exit_group libc::SYS_exit_group => Allow;
    epoll_wait libc::SYS_epoll_wait => Allow;
    epoll_ctl libc::SYS_epoll_ctl => Allow;
    tgkill libc::SYS_tgkill => Allow;
    utimes libc::SYS_utimes => Allow;
    vserver libc::SYS_vserver => Refuse;
    // NUMA placement of the caller's own memory (JVMs and numactl ask for it).
    mbind libc::SYS_mbind => Allow;
    set_mempolicy libc::SYS_set_mempolicy => Allow;
    get_mempolicy libc::SYS_get_mempolicy => Allow;
    mq_open libc::SYS_mq_open => Allow;
    mq_unlink libc::SYS_mq_unlink => Allow;
    mq_timedsend libc::SYS_mq_timedsend => Allow;
    mq_timedreceive libc::SYS_mq_timedreceive => Allow;
    mq_notify libc::SYS_mq_notify => Allow;
    mq_getsetattr libc::SYS_mq_getsetattr => Allow;
    kexec_load libc::SYS_kexec_load => Refuse;
    waitid libc::SYS_waitid => Allow;
    add_key libc::SYS_add_key => Refuse;
    request_key libc::SYS_request_key => Refuse;
    keyctl libc::SYS_keyctl => Refuse;
    ioprio_set libc::SYS_ioprio_set => Allow;
    ioprio_get libc::SYS_ioprio_get => Allow;
    inotify_init libc::SYS_inotify_init => Allow;
    inotify_add_watch libc::SYS_inotify_add_watch => Allow;
    inotify_rm_watch libc::SYS_inotify_rm_watch => Allow;
    // Moves another process's pages: nothing a program here needs.
    migrate_pages libc::SYS_migrate_pages => Refuse;
    openat libc::SYS_openat => Guarded(NoSetIdCreate { flags: 2, mode: 3 });
    mkdirat libc::SYS_mkdirat => Allow;
    mknodat libc::SYS_mknodat => Guarded(NoSetIdMode { mode: 2 });
    fchownat libc::SYS_fchownat => Allow;
    futimesat libc::SYS_futimesat => Allow;
    newfstatat libc::SYS_newfstatat => Allow;
    unlinkat libc::SYS_unlinkat => Allow;
    renameat libc::SYS_renameat => Allow;
    linkat libc::SYS_linkat => Allow;
    symlinkat libc::SYS_symlinkat => Allow;
    readlinkat libc::SYS_readlinkat => Allow;
    fchmodat libc::SYS_fchmodat => Guarded(NoSetIdMode { mode: 2 });
    faccessat libc::SYS_faccessat => Allow;
    pselect6 libc::SYS_pselect6 => Allow;
    ppoll libc::SYS_ppoll => Allow;
    unshare libc::SYS_unshare => Guarded(NoNamespaces);
    set_robust_list libc::SYS_set_robust_list => Allow;
    get_robust_list libc::SYS_get_robust_list => Allow;
    splice libc::SYS_splice => Allow;
    tee libc::SYS_tee => Allow;
    sync_file_range libc::SYS_sync_file_range => Allow;
    vmsplice libc::SYS_vmsplice => Allow;
    move_pages libc::SYS_move_pages => Refuse;
    utimensat libc::SYS_utimensat => Allow;
    epoll_pwait libc::SYS_epoll_pwait => Allow;
    signalfd libc::SYS_signalfd => Allow;
    timerfd_create libc::SYS_timerfd_create => Allow;
    eventfd libc::SYS_eventfd => Allow;
    fallocate libc::SYS_fallocate => Allow;
    timerfd_settime libc::SYS_timerfd_settime => Allow;
    timerfd_gettime libc::SYS_timerfd_gettime => Allow;
    accept4 libc::SYS_accept4 => Allow;
    signalfd4 libc::SYS_signalfd4 => Allow;
    eventfd2 libc::SYS_eventfd2 => Allow;
    epoll_create1 libc::SYS_epoll_create1 => Allow;
    dup3 libc::SYS_dup3 => Allow;
    pipe2 libc::SYS_pipe2 => Allow;
    inotify_init1 libc::SYS_inotify_init1 => Allow;
    preadv libc::SYS_preadv => Allow;
    pwritev libc::SYS_pwritev => Allow;
    rt_tgsigqueueinfo libc::SYS_rt_tgsigqueueinfo => Allow;
    perf_event_open libc::SYS_perf_event_open => Refuse;
    recvmmsg libc::SYS_recvmmsg => Allow;
    // fanotify watches whole mounts; it needs the host's CAP_SYS_ADMIN anyway.
    fanotify_init libc::SYS_fanotify_init => Refuse;
    fanotify_mark libc::SYS_fanotify_mark => Refuse;
    prlimit64 libc::SYS_prlimit64 => Allow;
    // A file handle opens files outside the sandbox's view.
    name_to_handle_at libc::SYS_name_to_handle_at => Refuse;
    open_by_handle_at libc::SYS_open_by_handle_at => Refuse;
    clock_adjtime libc::SYS_clock_adjtime => Refuse;
    syncfs libc::SYS_syncfs => Allow;
    sendmmsg libc::SYS_sendmmsg => Allow;
    setns libc::SYS_setns => Refuse;
    getcpu libc::SYS_getcpu => Allow;
    process_vm_readv libc::SYS_process_vm_readv => Allow;
    process_vm_writev libc::SYS_process_vm_writev => Allow;
    kcmp libc::SYS_kcmp => Allow;
    finit_module libc::SYS_finit_module => Refuse;
    sched_setattr libc::SYS_sched_setattr => Allow;
    sched_getattr libc::SYS_sched_getattr => Allow;
    renameat2 libc::SYS_renameat2 => Allow;
    // A filter can only narrow what is allowed.
    seccomp libc::SYS_seccomp => Allow;
    getrandom libc::SYS_getrandom => Allow;
    memfd_create libc::SYS_memfd_create => Allow;
    kexec_file_load libc::SYS_kexec_file_load => Refuse;
    bpf libc::SYS_bpf => Refuse;
    execveat libc::SYS_execveat => Allow;
    userfaultfd libc::SYS_userfaultfd => Refuse;
    membarrier libc::SYS_membarrier => Allow;
    mlock2 libc::SYS_mlock2 => Allow;
    copy_file_range libc::SYS_copy_file_range => Allow;
    preadv2 libc::SYS_preadv2 => Allow;
    pwritev2 libc::SYS_pwritev2 => Allow;
    pkey_mprotect libc::SYS_pkey_mprotect => Allow;
    pkey_alloc libc::SYS_pkey_alloc => Allow;
    pkey_free libc::SYS_pkey_free => Allow;
    statx libc::SYS_statx => Allow;
    io_pgetevents 333 => Allow;
    rseq libc::SYS_rseq => Allow;
    // Reached only from the kernel's own uprobe trampolines (SIGILL from anywhere else);
    // refusing them would kill a program the host admin is tracing.
    uretprobe 335 => Allow;
    uprobe 336 => Allow;
    pidfd_send_signal 424 => Allow;
    io_uring_setup libc::SYS_io_uring_setup => Refuse;
    io_uring_enter libc::SYS_io_uring_enter => Refuse;
    io_uring_register libc::SYS_io_uring_register => Refuse;
    open_tree libc::SYS_open_tree => Refuse;
    move_mount libc::SYS_move_mount => Refuse;
    fsopen libc::SYS_fsopen => Refuse;
    fsconfig libc::SYS_fsconfig => Refuse;
    fsmount libc::SYS_fsmount => Refuse;
    fspick libc::SYS_fspick => Refuse;
    pidfd_open libc::SYS_pidfd_open => Allow;
    // Flags in a struct in memory: ENOSYS, and libc falls back to clone(2).
    clone3 libc::SYS_clone3 => Fallback;
    close_range libc::SYS_close_range => Allow;
    // The mode in a struct in memory: ENOSYS, and libc falls back to openat(2).
    openat2 libc::SYS_openat2 => Fallback;
    // Takes a descriptor out of another process.
    pidfd_getfd libc::SYS_pidfd_getfd => Refuse;
    faccessat2 libc::SYS_faccessat2 => Allow;
    process_madvise libc::SYS_process_madvise => Refuse;
    epoll_pwait2 libc::SYS_epoll_pwait2 => Allow;
    mount_setattr libc::SYS_mount_setattr => Refuse;
    quotactl_fd libc::SYS_quotactl_fd => Refuse;
    // A program may fence itself in further.
    landlock_create_ruleset libc::SYS_landlock_create_ruleset => Allow;
    landlock_add_rule libc::SYS_landlock_add_rule => Allow;
    landlock_restrict_self libc::SYS_landlock_restrict_self => Allow;
    memfd_secret libc::SYS_memfd_secret => Allow;
    process_mrelease libc::SYS_process_mrelease => Allow;
    futex_waitv libc::SYS_futex_waitv => Allow;
    set_mempolicy_home_node libc::SYS_set_mempolicy_home_node => Allow;
    cachestat 451 => Allow;
    fchmodat2 452 => Guarded(NoSetIdMode { mode: 2 });
    map_shadow_stack 453 => Allow;
    futex_wake 454 => Allow;
    futex_wait 455 => Allow;
    futex_requeue 456 => Allow;
    // The sandbox's own mount namespace's mounts, as /proc/self/mountinfo shows them.
    statmount 457 => Allow;
    listmount 458 => Allow;
    lsm_get_self_attr 459 => Allow;
    lsm_set_self_attr 460 => Refuse;
    lsm_list_modules 461 => Allow;
    mseal 462 => Allow;
    setxattrat 463 => Allow;
    getxattrat 464 => Allow;
    listxattrat 465 => Allow;
    removexattrat 466 => Allow;
    open_tree_attr 467 => Refuse;
    file_getattr 468 => Allow;
    file_setattr 469 => Allow;
    // Lists namespaces by id, the host's among them where the caller may see them.
    listns 470 => Refuse;
}

/// The row for `nr`, if the table names it.
pub fn call(nr: i64) -> Option<&'static Call> {
    CALLS.iter().find(|c| c.nr == nr)
}

/// What the filter does with one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The call runs.
    Allow,
    /// The call fails with this errno and does nothing.
    Errno(i32),
    /// The whole process is killed (a call through another architecture's entry).
    Kill,
}

/// The plain definition of the filter: the verdict for a call from a process of `arch`
/// (the kernel's AUDIT_ARCH value), number `nr` (as the 32-bit value the kernel hands the
/// filter) and the six argument registers. The compiled BPF program is held to this by a
/// test that runs it on the same inputs.
pub fn answer(arch: u32, nr: u32, args: [u64; 6]) -> Verdict {
    if arch != super::AUDIT_ARCH_X86_64 {
        return Verdict::Kill;
    }
    // x32 calls: answered as by a kernel built without x32, as most distributions' are.
    if nr & super::X32_SYSCALL_BIT != 0 {
        return Verdict::Errno(libc::ENOSYS);
    }
    let nr = i64::from(nr);
    if nr > NEWEST {
        return Verdict::Errno(libc::ENOSYS);
    }
    let Some(row) = call(nr) else {
        return Verdict::Errno(libc::EPERM);
    };
    match row.answer {
        Answer::Allow => Verdict::Allow,
        Answer::Refuse => Verdict::Errno(libc::EPERM),
        Answer::Fallback => Verdict::Errno(libc::ENOSYS),
        Answer::Guarded(guard) if passes(guard, args) => Verdict::Allow,
        Answer::Guarded(_) => Verdict::Errno(libc::EPERM),
    }
}

/// Whether the arguments pass `guard`, each read as the 32-bit value the kernel reads.
pub fn passes(guard: Guard, args: [u64; 6]) -> bool {
    let low = |i: u8| args[usize::from(i)] as u32;
    match guard {
        Guard::NoSetIdMode { mode } => low(mode) & SET_ID_MASK == 0,
        Guard::NoSetIdCreate { flags, mode } => {
            low(flags) & CREATE_MASK == 0 || low(mode) & SET_ID_MASK == 0
        }
        Guard::NoTerminalInput => !super::TERMINAL_INPUT.contains(&low(1)),
        Guard::NoNamespaces => low(0) & NAMESPACE_MASK == 0,
        Guard::SocketFamily => match low(0) {
            AF_UNIX | AF_INET | AF_INET6 => true,
            AF_NETLINK => super::NETLINK_PROTOCOLS.contains(&low(2)),
            _ => false,
        },
        Guard::UnixPair => low(0) == AF_UNIX,
        Guard::Persona => super::PERSONAS.contains(&low(0)),
    }
}

/// Every number up to [`NEWEST`] the filter refuses whatever the arguments, with the
/// errno it answers: the unassigned numbers among them. For tests and `moat selftest`.
pub fn refused_always() -> Vec<(i64, &'static str, i32)> {
    (0..=NEWEST)
        .filter_map(|nr| match call(nr) {
            None => Some((nr, "(unassigned)", libc::EPERM)),
            Some(c) if c.answer == Answer::Refuse => Some((nr, c.name, libc::EPERM)),
            Some(c) if c.answer == Answer::Fallback => Some((nr, c.name, libc::ENOSYS)),
            Some(_) => None,
        })
        .collect()
}
