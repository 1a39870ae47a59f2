//! What the view hides: the secrets of `/etc` (shadow files, private keys, ssh host keys,
//! every root-only entry), the host's processes and keys in `/proc`, firmware and power
//! counters in `/sys`, and the sandbox's own `/sys` and control group views.

use std::io::{self};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};

use super::view::{bind, cpath, inside_root, tmpfs};
use super::{Stage, at};
use crate::proto::{self};
use crate::sys;

/// Files whose contents are secrets, masked by an empty device (they read as empty).
pub(super) const MASKED_FILES: &[&str] = &[
    "etc/shadow",
    "etc/shadow-",
    "etc/gshadow",
    "etc/gshadow-",
    "etc/security/opasswd",
    "etc/krb5.keytab",
];

/// Directories whose contents are secrets, masked by an empty read-only one.
pub(super) const MASKED_DIRS: &[&str] = &["etc/ssl/private", "etc/pki/tls/private"];

/// Where ssh keeps host keys: every `ssh_host_*` file but the `.pub` ones is masked.
pub(super) const SSH_DIR: &str = "etc/ssh";

/// `/sys`, read-only. A fresh sysfs, mounted now that the sandbox has its own network
/// namespace, lists that namespace's interfaces (`lo`, `eth0`) with their MTU and address,
/// not the host's; `/sys/fs/cgroup` holds the sandbox's own control groups
/// ([`cgroup_view`]), not the host's tree. Where a fresh sysfs may not be mounted (a
/// container whose own `/sys` is partly masked refuses it) the host's `/sys` is bound
/// instead, read-only as well; where even that fails, `/sys` stays an empty directory.
pub(super) fn sys_view(sysfs: &Path, groups: &[(PathBuf, PathBuf)]) -> Stage<()> {
    let read_only = |path: &Path| -> Stage<()> {
        at(
            "make /sys read-only",
            sys::restrict_recursive(
                &at("path", cpath(path))?,
                sys::Restrict {
                    readonly: true,
                    nodev: true,
                    noexec: true,
                },
            ),
        )
    };
    let fresh = mount(
        Some("sysfs"),
        sysfs,
        Some("sysfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    );
    if fresh.is_ok() {
        let cgroups = sysfs.join("fs/cgroup");
        if !groups.is_empty() && cgroups.is_dir() {
            cgroup_view(&cgroups, groups)?;
            read_only(&cgroups)?;
        }
    } else if bind(Path::new("/sys"), sysfs, true).is_ok() {
        read_only(sysfs)?;
    } else {
        return Ok(());
    }
    at(
        "mask the host's firmware and energy counters in /sys",
        mask(
            SYS_MASKED.iter().map(|name| sysfs.join(name)),
            Path::new("/dev/null"),
        ),
    )
}

/// `/sys/fs/cgroup` inside: the sandbox's own groups ([`limits::own_groups`]) where their
/// hierarchies are mounted, and nothing else of the host's tree. In the sandbox's cgroup
/// namespace /proc/self/cgroup says `/` for each, so tools that size themselves by their
/// limits (memory.max, cpu.max, pids.max and their v1 names) read them here.
pub(super) fn cgroup_view(dir: &Path, groups: &[(PathBuf, PathBuf)]) -> Stage<()> {
    let group = "bind the sandbox's control group";
    if let [(inside, host)] = groups
        && inside.as_os_str().is_empty()
    {
        // cgroup v2 alone: its group is the whole of /sys/fs/cgroup.
        return at(group, bind(host, dir, false));
    }
    at("mount /sys/fs/cgroup", tmpfs(dir, "mode=0755,size=64k"))?;
    for (inside, host) in groups {
        let point = dir.join(inside);
        at(
            "create a cgroup mount point",
            std::fs::create_dir_all(&point),
        )?;
        at(group, bind(host, &point, false))?;
    }
    // Links between hierarchies (cpu -> cpu,cpuacct) where the host has them.
    for entry in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(entry.path())
            && groups.iter().any(|(inside, _)| *inside == target)
        {
            at(
                "link a cgroup hierarchy",
                symlink(&target, dir.join(entry.file_name())),
            )?;
        }
    }
    Ok(())
}

/// What of `/proc` is masked, much as container runtimes mask it: the host's
/// processes (`timer_list`, `sched_debug` name every task with a timer or on a run queue),
/// the key descriptions of every keyring the caller may view (`keys`, `key-users`), kernel
/// memory (`kcore`), and hardware the sandbox has no business with.
pub(super) const PROC_MASKED: &[&str] = &[
    "kcore",
    "keys",
    "key-users",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "latency_stats",
    "acpi",
    "asound",
    "scsi",
];

/// What of `/sys` is masked: firmware tables and variables (ACPI, DMI, EFI) and the energy
/// counters a power side channel reads (powercap).
pub(super) const SYS_MASKED: &[&str] = &["firmware", "devices/virtual/powercap"];

/// Masks each of `paths` that exists: a file (or socket, fifo) by binding `null` over it
/// (it reads as empty), a directory by an empty one no one may open ([`empty_dir_over`]).
pub(super) fn mask(paths: impl IntoIterator<Item = PathBuf>, null: &Path) -> io::Result<()> {
    for path in paths {
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => empty_dir_over(&path)?,
            Ok(meta) if !meta.is_symlink() => bind(null, &path, false)?,
            _ => {}
        }
    }
    Ok(())
}

/// Masks the secrets of /etc that exist on this host: the known ones by name, and every
/// file no other user of the host may read and every directory no other user may enter
/// ([`private_entries`]) but those a grant names. A command that runs as root inside runs
/// as the host's root when moat does, and would read root's own files (a VPN's keys, a
/// keystore's password) through the read-only view.
pub(super) fn mask_secrets(root: &Path, grants: &[proto::Grant]) -> Stage<()> {
    let mut paths: Vec<PathBuf> = MASKED_FILES.iter().map(|f| root.join(f)).collect();
    let granted: Vec<PathBuf> = grants.iter().map(|g| inside_root(root, &g.path)).collect();
    private_entries(&root.join("etc"), &granted, 0, &mut paths);
    if let Ok(entries) = std::fs::read_dir(root.join(SSH_DIR)) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.as_bytes();
            if name.starts_with(b"ssh_host_") && !name.ends_with(b".pub") {
                paths.push(entry.path());
            }
        }
    }
    paths.extend(MASKED_DIRS.iter().map(|d| root.join(d)));
    at(
        "mask the secrets of /etc",
        mask(paths, Path::new("/dev/null")),
    )
}

/// How deep the walk of /etc goes; a directory deeper is masked whole.
pub(super) const MAX_ETC_DEPTH: usize = 16;

/// Collects under `dir` what only its owner or group may read: files (and sockets, fifos)
/// without read permission for others, directories others may not list and enter (masked
/// whole, not walked, unless a grant lies inside). Symbolic links are left: they lead to
/// paths judged where they lie. Paths in `granted` and below are left as granted. Deeper
/// than [`MAX_ETC_DEPTH`], or where a directory cannot be read, the directory is masked
/// whole.
pub(super) fn private_entries(
    dir: &Path,
    granted: &[PathBuf],
    depth: usize,
    out: &mut Vec<PathBuf>,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) if depth < MAX_ETC_DEPTH => entries,
        _ => {
            out.push(dir.to_path_buf());
            return;
        }
    };
    for entry in entries.flatten() {
        // The directory entry's type comes without a system call: links cost nothing.
        if entry.file_type().is_ok_and(|t| t.is_symlink()) {
            continue;
        }
        let path = entry.path();
        if granted.iter().any(|g| path.starts_with(g)) {
            continue;
        }
        let Ok(meta) = entry.metadata() else {
            out.push(path);
            continue;
        };
        let mode = meta.permissions().mode();
        if meta.is_symlink() {
            continue;
        } else if meta.is_dir() {
            if mode & 0o005 == 0o005 || granted.iter().any(|g| g.starts_with(&path)) {
                private_entries(&path, granted, depth + 1, out);
            } else {
                out.push(path);
            }
        } else if mode & 0o004 == 0 {
            out.push(path);
        }
    }
}

/// Mounts an empty, read-only, inaccessible directory over `dir`.
pub(super) fn empty_dir_over(dir: &Path) -> io::Result<()> {
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        Some("mode=000,size=4k"),
    )
    .map_err(io::Error::from)
}
