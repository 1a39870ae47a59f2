//! Step 3: the sandbox's view of the files: a new root on a tmpfs, deny by default — the
//! system directories read-only, fresh bounded tmpfs, a minimal `/dev`, the grants and the
//! work directory — then the pivot into it. What is masked inside it is `masks.rs`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use super::masks::{empty_dir_over, mask_secrets, sys_view};
use super::{Stage, at};
use crate::proto::{self, Spec};
use crate::sys;

/// Top-level host directories bound read-only at their own paths (when the host has them;
/// a top-level symlink such as `/bin -> usr/bin` is copied). Nothing else of the host's
/// root is visible unless granted.
pub(super) const SYSTEM_DIRS: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "opt",
];

/// Device nodes bound into the sandbox's /dev; nothing else of the host's /dev is visible.
pub(super) const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

pub(super) fn bind(src: &Path, dst: &Path, recursive: bool) -> nix::Result<()> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(src), dst, None::<&str>, flags, None::<&str>)
}

pub(super) fn tmpfs(dst: &Path, options: &str) -> nix::Result<()> {
    mount(
        Some("tmpfs"),
        dst,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options),
    )
}

pub(super) fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

/// Sets nosuid and nodev (and read-only when asked) on the mount tree at `path`.
pub(super) fn restrict(path: &Path, readonly: bool) -> io::Result<()> {
    sys::restrict_recursive(
        &cpath(path)?,
        sys::Restrict {
            readonly,
            nodev: true,
            noexec: false,
        },
    )
}

/// Binds host `src` at `dst` (recursively), nosuid and nodev, read-only unless `writable`.
pub(super) fn bind_restricted(src: &Path, dst: &Path, writable: bool) -> io::Result<()> {
    bind(src, dst, true)?;
    restrict(dst, !writable)
}

/// Places host `src` at `dst` as [`bind_restricted`] does, or — where moat sent it as an
/// idmapped mount (`mount`) — that mount instead.
pub(super) fn place_restricted(
    src: &Path,
    mount: Option<OwnedFd>,
    dst: &Path,
    writable: bool,
) -> io::Result<()> {
    match mount {
        Some(tree) => {
            sys::attach_tree(&tree, &cpath(dst)?)?;
            restrict(dst, !writable)
        }
        None => bind_restricted(src, dst, writable),
    }
}

/// Fails unless `path`, with every symlink on the way resolved, lies inside `root`: a mount
/// point must never be made (or a mount placed) on the host's side of the new root, which
/// an absolute symlink inside a bound directory would lead to before the pivot.
pub(super) fn within_root(root: &Path, path: &Path) -> io::Result<()> {
    let mut existing = path;
    while existing.symlink_metadata().is_err() {
        existing = existing.parent().unwrap_or(root);
    }
    let real = existing.canonicalize()?;
    if real.starts_with(root.canonicalize()?) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} leads outside the sandbox through a symbolic link",
                path.strip_prefix(root).unwrap_or(path).display()
            ),
        ))
    }
}

/// Creates a mount point at `dst` of the same kind (directory or file) as host `src`, or
/// as the mount moat sent for it (the host path may lie where the sandbox's root cannot
/// look).
pub(super) fn mount_point_like(
    root: &Path,
    src: &Path,
    mount: Option<&OwnedFd>,
    dst: &Path,
) -> io::Result<()> {
    within_root(root, dst)?;
    if dst.symlink_metadata().is_ok() {
        return Ok(());
    }
    let is_dir = match mount {
        Some(tree) => nix::sys::stat::fstat(tree.as_fd())
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .map_err(io::Error::from)?,
        None => std::fs::metadata(src)?.is_dir(),
    };
    if is_dir {
        std::fs::create_dir_all(dst)
    } else {
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::File::create(dst).map(drop)
    }
}

pub(super) fn build_root(
    spec: &Spec,
    groups: &[(PathBuf, PathBuf)],
    mounts: &mut [Option<OwnedFd>],
) -> Stage<()> {
    let root = &spec.root_dir;
    at(
        "make mounts private",
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )?;
    at("mount the root tmpfs", tmpfs(root, "mode=0755,size=16m"))?;
    system_dirs(root)?;
    dev(root, spec.sizes.shm)?;
    fresh_dirs(spec)?;

    let sysfs = root.join("sys");
    at("create /sys", std::fs::create_dir(&sysfs))?;
    sys_view(&sysfs, groups)?;

    for (i, grant) in spec.grants.iter().enumerate() {
        let inside = inside_root(root, &grant.path);
        let mount = mounts.get_mut(i).and_then(Option::take);
        let made = mount_point_like(root, &grant.path, mount.as_ref(), &inside);
        if spec.idmapped
            && let Err(e) = &made
            && e.kind() == io::ErrorKind::PermissionDenied
        {
            return Err((proto::UNREACHABLE_GRANT, io::Error::from(e.kind())));
        }
        at(
            "create a grant's mount point (its parent inside the sandbox must be writable or new)",
            made,
        )?;
        at(
            "bind a granted path",
            place_restricted(&grant.path, mount, &inside, grant.writable),
        )?;
    }

    let workdir = inside_root(root, &spec.workdir);
    at(
        "place the work directory inside the sandbox",
        within_root(root, &workdir),
    )?;
    if !workdir.exists() {
        at(
            "create the work directory's mount point (its parent must exist in the sandbox or be /)",
            std::fs::create_dir_all(&workdir),
        )?;
    }
    let mount = mounts.get_mut(spec.grants.len()).and_then(Option::take);
    at(
        "bind the work directory",
        place_restricted(&spec.workdir_host, mount, &workdir, true),
    )?;

    for (file, source) in [
        ("etc/resolv.conf", &spec.resolv_conf),
        ("etc/hosts", &spec.hosts),
    ] {
        if let Some(source) = source
            && let Some(target) = resolve_inside(root, Path::new(file))
        {
            at("bind resolv.conf / hosts", bind(source, &target, false))?;
            at(
                "make resolv.conf / hosts read-only",
                restrict(&target, true),
            )?;
        }
    }
    for (inside, source) in &spec.files {
        let relative = inside.strip_prefix("/").unwrap_or(inside);
        if let Some(target) = resolve_inside(root, relative)
            && target.is_file()
        {
            at("bind a file moat provides", bind(source, &target, false))?;
            at(
                "make a file moat provides read-only",
                restrict(&target, true),
            )?;
        }
    }

    mask_secrets(root, &spec.grants)?;
    for hidden in &spec.hidden {
        let inside = inside_root(root, hidden);
        if within_root(root, &inside).is_ok() && inside.is_dir() {
            at("hide moat's state", empty_dir_over(&inside))?;
        }
    }
    Ok(())
}

/// The system directories, read-only, and copies of top-level symlinks among them.
pub(super) fn system_dirs(root: &Path) -> Stage<()> {
    for name in SYSTEM_DIRS {
        let host = Path::new("/").join(name);
        let inside = root.join(name);
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let target = at("read a top-level symlink", std::fs::read_link(&host))?;
            at("copy a top-level symlink", symlink(target, &inside))?;
        } else if meta.is_dir() {
            at("create a mount point", std::fs::create_dir(&inside))?;
            at(
                "bind a system directory read-only",
                bind_restricted(&host, &inside, false),
            )?;
        }
    }
    Ok(())
}

/// A minimal /dev: a few device nodes, a private devpts, a bounded /dev/shm.
pub(super) fn dev(root: &Path, shm_size: u64) -> Stage<()> {
    let dev = root.join("dev");
    at("create /dev", std::fs::create_dir(&dev))?;
    at("mount /dev", tmpfs(&dev, "mode=0755,size=1m"))?;
    for name in DEVICES {
        let host = Path::new("/dev").join(name);
        if host.exists() {
            at(
                "create a device mount point",
                std::fs::File::create(dev.join(name)),
            )?;
            at("bind a device", bind(&host, &dev.join(name), false))?;
        }
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        at("create a /dev link", symlink(target, dev.join(link)))?;
    }
    at("create /dev/shm", std::fs::create_dir(dev.join("shm")))?;
    at(
        "mount /dev/shm",
        tmpfs(&dev.join("shm"), &format!("mode=1777,size={shm_size}")),
    )?;
    at("create /dev/pts", std::fs::create_dir(dev.join("pts")))?;
    // A private devpts instance for programs that open pseudo-terminals; optional.
    let _ = mount(
        Some("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620"),
    );
    Ok(())
}

/// The sandbox's own writable places: /tmp, the home directory and /run (each a bounded
/// tmpfs), and /var as a skeleton of links into them; plus the /proc mount point.
pub(super) fn fresh_dirs(spec: &Spec) -> Stage<()> {
    let root = &spec.root_dir;
    let tmp = root.join("tmp");
    at("create /tmp", std::fs::create_dir(&tmp))?;
    at(
        "mount /tmp",
        tmpfs(&tmp, &format!("mode=1777,size={}", spec.sizes.tmp)),
    )?;
    let home = inside_root(root, &spec.home);
    at("create the home directory", std::fs::create_dir_all(&home))?;
    at(
        "mount the home directory",
        tmpfs(&home, &format!("mode=0700,size={}", spec.sizes.home)),
    )?;
    let run = root.join("run");
    at("create /run", std::fs::create_dir(&run))?;
    at("mount /run", tmpfs(&run, "mode=0755,size=4m"))?;
    at("create /run/lock", std::fs::create_dir(run.join("lock")))?;
    at(
        "open /run/lock to all",
        std::fs::set_permissions(run.join("lock"), std::fs::Permissions::from_mode(0o1777)),
    )?;
    let var = root.join("var");
    at("create /var", std::fs::create_dir(&var))?;
    // Relative links: they resolve the same inside, and before the pivot (when mount
    // points for grants are made under `root`) they stay inside the new root.
    for (link, target) in [
        ("tmp", "../tmp"),
        ("run", "../run"),
        ("lock", "../run/lock"),
    ] {
        at("create a /var link", symlink(target, var.join(link)))?;
    }
    at("create /proc", std::fs::create_dir(root.join("proc")))?;
    Ok(())
}

/// Pivots into the assembled root, drops the host's, and makes `/` read-only.
pub(super) fn enter_root(root: &Path) -> Stage<()> {
    let old = root.join(".oldroot");
    at("create the old-root mount point", std::fs::create_dir(&old))?;
    at(
        "pivot into the new root",
        nix::unistd::pivot_root(root, &old),
    )?;
    at("enter the new root", nix::unistd::chdir("/"))?;
    at(
        "detach the old root",
        umount2("/.oldroot", MntFlags::MNT_DETACH),
    )?;
    at(
        "remove the old-root mount point",
        std::fs::remove_dir("/.oldroot"),
    )?;
    at(
        "make / read-only",
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None::<&str>,
        ),
    )?;
    Ok(())
}

/// `path` (absolute, inside the sandbox) under `root`, without `..`.
pub(super) fn inside_root(root: &Path, path: &Path) -> PathBuf {
    let mut out = root.to_path_buf();
    for c in path.components() {
        if let Component::Normal(part) = c {
            out.push(part);
        }
    }
    out
}

/// Follows symlinks of `rel` as the sandbox will see them (absolute targets are taken
/// relative to `root`); `None` when the file does not exist there.
pub(super) fn resolve_inside(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut current = inside_root(root, rel);
    for _ in 0..8 {
        let meta = std::fs::symlink_metadata(&current).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(current);
        }
        let target = std::fs::read_link(&current).ok()?;
        current = if target.is_absolute() {
            inside_root(root, &target)
        } else {
            current.parent()?.join(target)
        };
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

    use super::*;

    /// A path inside the new root that an absolute link would lead out of is refused; one
    /// whose links stay inside (or that does not exist yet) is taken.
    #[test]
    fn a_path_that_leads_out_of_the_root_is_refused() {
        let base = std::env::temp_dir().join(format!("moat-within-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let (root, outside) = (base.join("root"), base.join("outside"));
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/out")).unwrap();
        std::os::unix::fs::symlink("b", root.join("a/in")).unwrap();
        let checked = |rel: &str| within_root(&root, &root.join(rel));
        assert!(checked("a/b/new/deeper").is_ok());
        assert!(checked("a/in/x").is_ok());
        let refused = checked("a/out/x").unwrap_err();
        assert!(
            refused.to_string().contains("through a symbolic link"),
            "{refused}"
        );
        assert!(checked("a/out").is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
