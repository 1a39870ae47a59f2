//! A run's state on the host: the base directory of this user's sandboxes (its mode, and
//! a link or a stranger's directory in its place refused), one directory per run with the
//! file naming the moat process that owns it, and the sweep that removes the directories
//! of runs whose moat is gone.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{HostFile, SandboxError, limits, state_base};

/// The mode of the state base: 0700, and 0711 for root, whose sandboxes' supervisors
/// build as [`UNPRIVILEGED_ID`] and must pass through it to their own run's directory
/// (which belongs to that id; others cannot list the base to learn the runs' random names).
pub(crate) fn state_mode() -> u32 {
    if nix::unistd::geteuid().is_root() {
        0o711
    } else {
        0o700
    }
}

/// Whether `id` is mapped as a uid and a gid in moat's own user namespace (it is in the
/// host's, which maps every id; a container's or `moat demo`'s may not).
pub(crate) fn id_is_mapped(id: u32) -> bool {
    let covers = |file: &str| {
        std::fs::read_to_string(file).is_ok_and(|map| {
            map.lines().any(|line| {
                let f: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
                matches!(f[..], [inside, _, count] if (inside..inside + count).contains(&u64::from(id)))
            })
        })
    };
    covers("/proc/self/uid_map") && covers("/proc/self/gid_map")
}

/// The file in a run's state directory naming the moat process that owns it.
pub(crate) const OWNER_FILE: &str = "owner";

pub(crate) fn make_state_dir(name: &str) -> Result<PathBuf, SandboxError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let base = state_base();
    let err = |source: io::Error| SandboxError::StateDir {
        dir: base.clone(),
        source,
    };
    let mode = state_mode();
    match std::fs::DirBuilder::new().mode(mode).create(&base) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err(e)),
    }
    // Someone else's directory, or a link planted in a shared /tmp, is not ours to use.
    let meta = std::fs::symlink_metadata(&base).map_err(err)?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(err(io::Error::other(
            "exists but is not a directory owned by you; remove it or set TMPDIR",
        )));
    }
    if meta.permissions().mode() & 0o777 != mode {
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    sweep_stale(&base);
    let dir =
        nix::unistd::mkdtemp(&base.join(format!("{name}-XXXXXX"))).map_err(|e| err(e.into()))?;
    let me = std::process::id();
    let owner = format!("{me} {}\n", process_start(me).unwrap_or(0));
    // Written aside and renamed (as every file moat writes on the host): a concurrent
    // sweep sees no owner file or a whole one.
    write_state_file(&dir.join(OWNER_FILE), &owner).map_err(err)?;
    Ok(dir)
}

/// Writes a file of a run's state directory through the one door for files moat writes
/// on the host (`host_file.rs`).
pub(crate) fn write_state_file(path: &Path, text: &str) -> io::Result<()> {
    HostFile::open(path)
        .and_then(|f| f.replace(text.as_bytes(), 0o644))
        .map_err(io::Error::other)
}

/// The start time of process `pid` (field 22 of /proc/PID/stat, in clock ticks since
/// boot): with the pid it names a process uniquely, pid reuse included.
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Removes the state directories of runs whose moat process is gone (killed by SIGKILL,
/// or a signal it could not catch). A directory without a readable owner file is left for
/// a minute: its run may be starting right now.
pub(crate) fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let owner = std::fs::read_to_string(dir.join(OWNER_FILE)).ok();
        let mut words = owner.as_deref().unwrap_or("").split_whitespace();
        let pid = words.next().and_then(|w| w.parse::<u32>().ok());
        let start = words.next().and_then(|w| w.parse::<u64>().ok());
        let alive = match (pid, start) {
            (Some(pid), Some(start)) => process_start(pid) == Some(start),
            _ => entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| t.elapsed().unwrap_or_default() < Duration::from_secs(60))
                .unwrap_or(false),
        };
        if !alive {
            let _ = std::fs::remove_dir_all(&dir);
            limits::remove_leftovers(&entry.file_name().to_string_lossy());
        }
    }
}
