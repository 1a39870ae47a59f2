//! The sandbox's system calls that have no safe wrapper: the TAP device, interface and
//! route ioctls, capabilities, recursive mount attributes, descriptor ranges, the session
//! keyring and terminal ioctls. This is the only module in
//! moat with `unsafe`; each block says why it is sound.
//!
//! References: Documentation/networking/tuntap.rst (TUNSETIFF), netdevice(7) (SIOCSIF*),
//! route(4)/ipv6(7) (SIOCADDRT), capabilities(7), mount_setattr(2), close_range(2), keyctl(2),
//! tty_ioctl(4).
#![allow(unsafe_code)] // The one place moat talks to the kernel without a safe wrapper.

use std::ffi::CStr;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Maximum interface name length including the NUL, `IFNAMSIZ` in <net/if.h>.
const IFNAMSIZ: usize = 16;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An `ifreq` with the interface name filled in.
fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: ifreq is a plain C struct of integers, arrays and unions; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(req)
}

/// Size of the virtio-net header in front of every frame on the TAP descriptor
/// (`struct virtio_net_hdr_mrg_rxbuf`; Documentation/networking/tuntap.rst, IFF_VNET_HDR).
pub const VNET_HDR_LEN: usize = 12;

/// Opens `/dev/net/tun` and attaches a TAP interface `name` (no packet-info header) in the
/// caller's network namespace. The interface lives as long as the returned descriptor.
///
/// Every frame read or written carries a [`VNET_HDR_LEN`]-byte virtio-net header, and the
/// interface offloads TCP checksums and segmentation (IPv4 and IPv6) to the reader: the
/// sandbox's kernel hands over TCP segments of up to 64 KiB with their checksum unfilled,
/// and takes such segments back.
///
/// `tun` is /dev/net/tun opened in the sandbox's network namespace ([`open_tun`]): the
/// interface is made in the namespace the device was opened in.
pub fn open_tap(tun: OwnedFd, name: &str) -> io::Result<OwnedFd> {
    let fd = tun;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `req` is and outlives the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req) })?;
    let hdr_len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which outlives the call.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ as _, &hdr_len) })?;
    let offloads = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is passed.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETOFFLOAD as _,
            offloads as libc::c_ulong,
        )
    })?;
    Ok(fd)
}

/// Opens /dev/net/tun (non-blocking, close-on-exec), for [`open_tap`].
pub fn open_tun() -> io::Result<OwnedFd> {
    let path = c"/dev/net/tun";
    // SAFETY: `path` is a NUL-terminated string; open returns a new descriptor or -1.
    let fd = cvt(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    })?;
    // SAFETY: `fd` was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn inet_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) on Linux, and the
    // kernel reads `sockaddr` fields of AF_INET as a sockaddr_in.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl_ifreq(sock: RawFd, request: libc::c_ulong, req: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: every SIOC*IF* request used here reads or writes exactly one `ifreq`.
    cvt(unsafe { libc::ioctl(sock, request as _, req as *mut libc::ifreq) }).map(drop)
}

/// Sets `name`'s IPv4 address and netmask.
pub fn set_ipv4(name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let sock = inet_socket(libc::AF_INET)?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_addr = sockaddr_v4(addr);
    ioctl_ifreq(sock.as_raw_fd(), libc::SIOCSIFADDR, &mut req)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    req.ifr_ifru.ifru_netmask = sockaddr_v4(Ipv4Addr::from(mask));
    ioctl_ifreq(sock.as_raw_fd(), libc::SIOCSIFNETMASK, &mut req)
}

/// Sets `name`'s MTU.
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let sock = inet_socket(libc::AF_INET)?;
    let mut req = ifreq(name)?;
    req.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    ioctl_ifreq(sock.as_raw_fd(), libc::SIOCSIFMTU, &mut req)
}

/// Brings `name` up.
pub fn set_up(name: &str) -> io::Result<()> {
    let sock = inet_socket(libc::AF_INET)?;
    let mut req = ifreq(name)?;
    ioctl_ifreq(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl_ifreq(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req)
}

/// The kernel's `struct rtentry` (include/uapi/linux/route.h), which the libc crate lacks.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// Adds the IPv4 default route via `gateway` on `dev`.
pub fn add_default_route_v4(dev: &CStr, gateway: Ipv4Addr) -> io::Result<()> {
    let sock = inet_socket(libc::AF_INET)?;
    let mut rt = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_v4(gateway),
        rt_genmask: sockaddr_v4(Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: dev.as_ptr().cast_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    // SAFETY: SIOCADDRT reads one `struct rtentry`, laid out as the kernel's; `rt_dev`
    // points to a NUL-terminated name that outlives the call, and the kernel only reads it.
    cvt(unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCADDRT as _,
            &mut rt as *mut RtEntry,
        )
    })
    .map(drop)
}

/// The interface index of `name` in the caller's network namespace.
pub fn if_index(name: &str) -> io::Result<u32> {
    let sock = inet_socket(libc::AF_INET)?;
    let mut req = ifreq(name)?;
    ioctl_ifreq(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut req)?;
    // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex } as u32)
}

fn in6(addr: Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr {
        s6_addr: addr.octets(),
    }
}

/// Adds an IPv6 address to interface `ifindex`.
pub fn add_ipv6(ifindex: u32, addr: Ipv6Addr, prefix: u8) -> io::Result<()> {
    let sock = inet_socket(libc::AF_INET6)?;
    let mut req = libc::in6_ifreq {
        ifr6_addr: in6(addr),
        ifr6_prefixlen: u32::from(prefix),
        ifr6_ifindex: ifindex as libc::c_int,
    };
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads one `in6_ifreq` (ipv6(7)).
    cvt(unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFADDR as _,
            &mut req as *mut libc::in6_ifreq,
        )
    })
    .map(drop)
}

/// The kernel's `struct in6_rtmsg` (include/uapi/linux/ipv6_route.h); the libc crate's
/// has private fields.
#[repr(C)]
struct In6RtMsg {
    rtmsg_dst: libc::in6_addr,
    rtmsg_src: libc::in6_addr,
    rtmsg_gateway: libc::in6_addr,
    rtmsg_type: u32,
    rtmsg_dst_len: u16,
    rtmsg_src_len: u16,
    rtmsg_metric: u32,
    rtmsg_info: libc::c_ulong,
    rtmsg_flags: u32,
    rtmsg_ifindex: libc::c_int,
}

/// Adds the IPv6 default route via `gateway` on interface `ifindex`.
pub fn add_default_route_v6(ifindex: u32, gateway: Ipv6Addr) -> io::Result<()> {
    let sock = inet_socket(libc::AF_INET6)?;
    let mut rt = In6RtMsg {
        rtmsg_dst: in6(Ipv6Addr::UNSPECIFIED),
        rtmsg_src: in6(Ipv6Addr::UNSPECIFIED),
        rtmsg_gateway: in6(gateway),
        rtmsg_type: 0,
        rtmsg_dst_len: 0,
        rtmsg_src_len: 0,
        rtmsg_metric: 1,
        rtmsg_info: 0,
        rtmsg_flags: u32::from(libc::RTF_UP | libc::RTF_GATEWAY),
        rtmsg_ifindex: ifindex as libc::c_int,
    };
    // SAFETY: SIOCADDRT on an AF_INET6 socket reads one `in6_rtmsg` (ipv6_route ioctl).
    cvt(unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCADDRT as _,
            &mut rt as *mut In6RtMsg,
        )
    })
    .map(drop)
}

/// `MOUNT_ATTR_*` bits of mount_setattr(2) (include/uapi/linux/mount.h).
const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOUNT_ATTR_NOEXEC: u64 = 0x0000_0008;

/// Flags that [`restrict_recursive`] sets on a mount tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restrict {
    /// Read-only.
    pub readonly: bool,
    /// No device nodes (`nodev`); device binds in /dev are the one place without it.
    pub nodev: bool,
    /// No programs (`noexec`).
    pub noexec: bool,
}

/// MOUNT_ATTR_IDMAP (include/uapi/linux/mount.h).
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
/// open_tree(2)'s OPEN_TREE_CLONE and move_mount(2)'s MOVE_MOUNT_F_EMPTY_PATH
/// (include/uapi/linux/mount.h).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;

/// `struct mount_attr` (include/uapi/linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr(2) on `dirfd`/`path` with `flags`.
fn mount_setattr(
    dirfd: RawFd,
    path: &CStr,
    flags: libc::c_int,
    attr: &MountAttr,
) -> io::Result<()> {
    // SAFETY: mount_setattr reads `size` bytes of `attr`, which is a `struct mount_attr`
    // that outlives the call; `path` is NUL-terminated; `dirfd` is a descriptor or AT_FDCWD.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags as libc::c_uint,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A detached copy of the mount tree at `path` (open_tree(2) with OPEN_TREE_CLONE and
/// AT_RECURSIVE, Linux 5.2+), to be changed and then attached elsewhere.
pub fn clone_tree(path: &CStr) -> io::Result<OwnedFd> {
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: open_tree reads the NUL-terminated `path` and returns a new descriptor, which
    // is owned by the OwnedFd made from it below and by nothing else.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor open_tree just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Idmaps the detached tree `tree` through the user namespace `userns` (mount_setattr(2)
/// with MOUNT_ATTR_IDMAP, Linux 5.12+): files show and are written with the owners that
/// namespace's map gives them. Fails where a file system of the tree cannot be idmapped.
pub fn idmap_tree(tree: &OwnedFd, userns: &OwnedFd) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    mount_setattr(
        tree.as_raw_fd(),
        c"",
        libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
        &attr,
    )
}

/// Attaches the detached tree `tree` at `target` (move_mount(2), Linux 5.2+).
pub fn attach_tree(tree: &OwnedFd, target: &CStr) -> io::Result<()> {
    // SAFETY: move_mount reads two NUL-terminated paths and takes two descriptors; `tree`
    // stays owned by the caller.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets `nosuid` — and `nodev`, read-only, `noexec` as asked — on the mount at `path` and
/// every mount below it (mount_setattr(2), Linux 5.12+), without touching other flags.
pub fn restrict_recursive(path: &CStr, how: Restrict) -> io::Result<()> {
    let mut set = MOUNT_ATTR_NOSUID;
    if how.readonly {
        set |= MOUNT_ATTR_RDONLY;
    }
    if how.nodev {
        set |= MOUNT_ATTR_NODEV;
    }
    if how.noexec {
        set |= MOUNT_ATTR_NOEXEC;
    }
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    mount_setattr(libc::AT_FDCWD, path, libc::AT_RECURSIVE, &attr)
}

/// Closes every descriptor from `first` up (close_range(2), Linux 5.9+).
pub fn close_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range takes integers only; closing descriptors this process owns is
    // what the caller asks for, and no Rust object of the caller uses them afterwards (the
    // callers are a freshly forked child about to exec and the supervisor's first step).
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, u32::MAX, 0) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Closes every descriptor in `first..=last`.
pub fn close_range(first: RawFd, last: RawFd) -> io::Result<()> {
    if last < first {
        return Ok(());
    }
    // SAFETY: as in `close_from`: integers only, and the caller owns the range.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            last as libc::c_uint,
            0,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// In a forked child about to exec: puts `fds[i]` at descriptor `i` (inherited across
/// exec), moves `keep` to the lowest free number above them (close-on-exec), and closes
/// every other descriptor. Returns `keep`'s new number.
pub fn arrange_fds(fds: Vec<OwnedFd>, keep: OwnedFd) -> io::Result<RawFd> {
    let count = fds.len() as RawFd;
    // Lift every descriptor above the target range first, so that no dup2 below
    // overwrites one that is still to be placed.
    let mut lifted = Vec::with_capacity(fds.len());
    for fd in &fds {
        // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we own; integers only.
        lifted.push(cvt(unsafe {
            libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, count)
        })?);
    }
    // SAFETY: as above.
    let kept = cvt(unsafe { libc::fcntl(keep.as_raw_fd(), libc::F_DUPFD_CLOEXEC, count) })?;
    for (target, fd) in lifted.iter().enumerate() {
        // SAFETY: dup2 onto 0..count: those numbers are replaced on purpose; the OwnedFds
        // that may hold them are forgotten below instead of being closed twice.
        cvt(unsafe { libc::dup2(*fd, target as RawFd) })?;
    }
    // Every descriptor from `count` up but `kept` is closed here, the originals included.
    for fd in fds {
        std::mem::forget(fd);
    }
    std::mem::forget(keep);
    close_range(count, kept - 1)?;
    close_from(kept + 1)?;
    Ok(kept)
}

/// Joins a new, empty, anonymous session keyring (keyctl(2), KEYCTL_JOIN_SESSION_KEYRING
/// with a NULL name), so nothing the caller's session keyring holds is reachable.
pub fn fresh_session_keyring() -> io::Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl with a NULL name pointer creates an anonymous keyring; no memory is
    // read or written.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes the terminal on `fd` the calling session leader's controlling terminal
/// (TIOCSCTTY, tty_ioctl(4)).
pub fn set_controlling_terminal(fd: RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal); no memory is passed.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSCTTY as _, 0 as libc::c_int) }).map(drop)
}

/// A terminal's window size: rows and columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// The window size of the terminal on `fd` (TIOCGWINSZ).
pub fn window_size(fd: RawFd) -> io::Result<WindowSize> {
    // SAFETY: winsize is four u16s; all-zero is valid.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one `winsize`, which `ws` is and outlives the call.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCGWINSZ as _, &mut ws as *mut libc::winsize) })?;
    Ok(WindowSize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// Sets the window size of the terminal on `fd` (TIOCSWINSZ); the kernel then sends
/// SIGWINCH to the terminal's foreground process group.
pub fn set_window_size(fd: RawFd, size: WindowSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize`, which `ws` is and outlives the call.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSWINSZ as _, &ws as *const libc::winsize) }).map(drop)
}

/// Drops every capability for good: locks the secure bits so that neither uid 0 nor a
/// uid change brings capabilities back, clears the ambient set, then the effective,
/// permitted and inheritable sets (capabilities(7)). With `no_new_privs` (set by the
/// caller) set-user-ID bits and file capabilities grant nothing either.
///
/// The bounding set is left as it is: a program with file capabilities (ping) then still
/// runs, without them, instead of failing with EPERM ("capability-dumb" check in execve).
pub fn drop_all_capabilities() -> io::Result<()> {
    // SECBIT_NOROOT, _NO_SETUID_FIXUP and _NO_CAP_AMBIENT_RAISE, each with its lock
    // (include/uapi/linux/securebits.h). KEEP_CAPS stays unlocked: programs such as ping
    // set it, and with empty permitted and ambient sets it keeps nothing.
    const SECURE_BITS: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x08 | 0x40 | 0x80;
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECURE_BITS, 0, 0, 0) })?;
    // SAFETY: prctl with integer arguments only.
    cvt(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads a version-3 header and two data structs, which these are.
    let ret =
        unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Forks. In the child only async-signal-safe work may follow when the caller has threads;
/// the supervisor that calls this is single-threaded.
pub fn fork() -> io::Result<nix::unistd::ForkResult> {
    // SAFETY: the supervisor process is single-threaded (it is a fresh exec and starts no
    // threads), so the child may run arbitrary code after the fork.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// Takes ownership of descriptor `fd`, inherited from moat's caller, after checking that
/// it is open; it is made close-on-exec.
pub fn take_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: F_SETFD only sets the descriptor's flags.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(own_fd(fd))
}

/// TIOCGPTPEER (include/uapi/asm-generic/ioctls.h, Linux 4.13+).
const TIOCGPTPEER: libc::c_ulong = 0x5441;

/// Opens the command's side of the pseudo-terminal whose master is `master`, without a path
/// lookup: the right devpts instance whatever mount namespace the caller is in.
pub fn pty_peer(master: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes its open flags by value and returns a new descriptor, owned
    // by the OwnedFd made from it below and by nothing else.
    let fd = cvt(unsafe { libc::ioctl(master.as_raw_fd(), TIOCGPTPEER as _, flags) })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of a descriptor the kernel handed over (SCM_RIGHTS, an inherited
/// channel). The caller must not use `fd` elsewhere.
pub fn own_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: callers pass descriptors that were just received from the kernel or inherited
    // at exec and are owned by no other object in this process.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Allocations of at least this many bytes come straight from `mmap`.
#[cfg(target_env = "gnu")]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;

/// Makes every allocation of 128 KiB or more a fresh anonymous mapping, given back to the
/// kernel when freed. glibc otherwise raises its mmap threshold after the first large
/// free and serves later large allocations from its heap, zeroing (and so committing)
/// them at once and keeping them after they are freed. The engine's socket buffers rely on
/// fresh pages: a buffer costs memory only as it is written, which is what its memory
/// budget charges (mallopt(3), M_MMAP_THRESHOLD). Setting the threshold also ends glibc's
/// adjustment of it. Elsewhere than glibc the call does not exist and this does nothing.
pub fn large_allocations_from_fresh_pages() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; any value is accepted or refused
    // with 0, and no memory is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

// Attempts for probes of the boundary (`moat selftest`): each is what hostile code inside a
// sandbox would try. They are sound whatever the kernel answers: none passes memory the
// kernel could write beyond what the call's contract names.

/// Pushes `byte` into the input queue of the terminal on `fd` (TIOCSTI, tty_ioctl(4)).
pub fn push_terminal_input(fd: RawFd, byte: u8) -> io::Result<()> {
    // SAFETY: TIOCSTI reads one byte through the pointer, which points at `byte` and
    // outlives the call.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSTI as _, &byte as *const u8) }).map(drop)
}

/// socket(2) with every register given as a full 64-bit value (the kernel reads the low
/// 32 bits of each; a filter that compares all 64 can be fooled by the upper half).
pub fn socket_at_full_width(family: u64, kind: u64, protocol: u64) -> io::Result<OwnedFd> {
    // SAFETY: socket takes integers only; a returned descriptor is new and owned below.
    let fd = unsafe { libc::syscall(libc::SYS_socket, family, kind, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(own_fd(fd as RawFd))
}

/// unshare(2) with `flags` as a full 64-bit register value.
pub fn unshare_at_full_width(flags: u64) -> io::Result<()> {
    // SAFETY: unshare takes one integer; it changes this process's namespaces only.
    let ret = unsafe { libc::syscall(libc::SYS_unshare, flags) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The lowest address of the x86_64 kernel half: a pointer at or above it is never user
/// memory, so a system call given it as a buffer answers EFAULT.
const KERNEL_HALF: u64 = 0xffff_8000_0000_0000;

/// Calls system call `nr` with `args`, each of them zero or an address in the kernel half,
/// which no call may read or write as user memory. `None` when an argument is neither
/// (the call is not made).
pub fn call_without_user_memory(nr: i64, args: [u64; 6]) -> Option<io::Result<i64>> {
    if args.iter().any(|&a| a != 0 && a < KERNEL_HALF) {
        return None;
    }
    // SAFETY: no argument is the address of user memory (each is zero, which nothing maps
    // in this process, or in the kernel half, which the kernel refuses as a user pointer
    // with EFAULT), so the call reads and writes none of this process's memory; a call
    // that ends or signals the process ends it, which is not unsound.
    let ret = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
    Some(if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    })
}

/// KEY_SPEC_SESSION_KEYRING, keyctl(2).
const SESSION_KEYRING: libc::c_long = -3;

/// Joins a new session keyring named `name` (KEYCTL_JOIN_SESSION_KEYRING) and adds a
/// "user" key `description` holding `payload` to it that every possessor may read.
pub fn add_session_key(name: &CStr, description: &CStr, payload: &[u8]) -> io::Result<i64> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    const KEYCTL_SETPERM: libc::c_long = 5;
    // SAFETY: keyctl reads the NUL-terminated `name`, which outlives the call.
    let ret =
        unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name.as_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: add_key reads two NUL-terminated strings and `payload.len()` bytes of
    // `payload`, all of which outlive the call.
    let id = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            c"user".as_ptr(),
            description.as_ptr(),
            payload.as_ptr(),
            payload.len(),
            SESSION_KEYRING,
        )
    };
    if id < 0 {
        return Err(io::Error::last_os_error());
    }
    // Possessor: view, read, write, search, link, setattr (KEY_POS_ALL), as for the user.
    // SAFETY: KEYCTL_SETPERM takes integers only.
    let ret = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_SETPERM, id, 0x3f3f_0000_u32) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(id)
}

/// Finds the "user" key `description` in the session keyring (KEYCTL_SEARCH) and reads
/// up to 256 bytes of it (KEYCTL_READ).
pub fn read_session_key(description: &CStr) -> io::Result<Vec<u8>> {
    const KEYCTL_SEARCH: libc::c_long = 10;
    const KEYCTL_READ: libc::c_long = 11;
    // SAFETY: KEYCTL_SEARCH reads two NUL-terminated strings that outlive the call.
    let id = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_SEARCH,
            SESSION_KEYRING,
            c"user".as_ptr(),
            description.as_ptr(),
            0,
        )
    };
    if id < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 256];
    // SAFETY: KEYCTL_READ writes at most `buf.len()` bytes into `buf`, which outlives the
    // call.
    let n = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_READ,
            id,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(usize::try_from(n).unwrap_or(0).min(256));
    Ok(buf)
}
