//! Files moat writes on the host, all through one door (shared/DESIGN.md, "Identity").
//!
//! # Theory of operation
//! A sandbox with a writable grant (`-w`, `--rw`) may put anything there, symbolic links
//! included, while moat — often root — is about to write a file beside them (`--learn
//! tool.toml` in the work directory) or is appending to one (the audit log). A file opened
//! by its path at that moment goes wherever a planted link points, and a predictable
//! temporary name is one the sandbox can plant in advance. So every file moat writes on the
//! host is a [`HostFile`]:
//!
//! - [`HostFile::open`], called before the sandbox starts, opens the target's directory as
//!   a descriptor (`O_DIRECTORY | O_NOFOLLOW`: the directory itself may not be a link) and
//!   notes which directory it is (device, inode). The file's name must be one plain
//!   component. Every later step names the file relative to that descriptor, never by its
//!   path: whatever the sandbox renames or links meanwhile, moat writes into the directory
//!   it opened.
//! - [`HostFile::replace`] writes a whole file: under a random temporary name created with
//!   `O_CREAT | O_EXCL | O_NOFOLLOW` (a name that exists — a planted link included — is
//!   never opened: another name is tried, a bounded number of times), written (and synced,
//!   for a file that must survive a crash: [`HostFile::durable`]),
//!   then `renameat` onto the final name, which replaces whatever is there: a link planted
//!   at the final name is replaced, never followed. [`HostFile::create_new`] does the same
//!   but refuses to replace an existing file (`RENAME_NOREPLACE`).
//! - Before either, the path must still name the directory that was opened: a directory
//!   swapped for a link (or for another directory) while the sandbox ran is refused, so moat
//!   never reports a file written at a path where it is not.
//! - [`HostFile::append`] opens the final name itself with `O_NOFOLLOW | O_APPEND`
//!   (created if absent) for a file written as the run goes (the audit log); it must be a
//!   regular file (a FIFO would block moat, a device is not a log), opened with
//!   `O_NONBLOCK` so that checking it cannot block either.
//!
//! What this does not decide: whether a file may lie where the sandbox can write it. The
//! caller checks that against the grants with [`HostFile::real_path`] (the audit log is
//! refused inside a writable grant; the learned policy, written after the sandbox is gone,
//! is not).

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::UnlinkatFlags;

/// How many random temporary names are tried before giving up: a collision with a name
/// nobody planted is a 2^-64 event, so running out means someone is planting them.
const TEMP_ATTEMPTS: usize = 16;

/// Why a file on the host could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostFileError {
    /// The path does not end in a file name.
    #[error("{path}: expected a path that ends in a file name")]
    NotAFileName {
        /// The path as given.
        path: PathBuf,
    },
    /// The directory that is to hold the file could not be opened.
    #[error("{dir}: cannot open the directory that is to hold {name}: {source}", name = name.to_string_lossy())]
    OpenDir {
        /// The directory.
        dir: PathBuf,
        /// The file's name in it.
        name: OsString,
        /// The OS error.
        source: io::Error,
    },
    /// The directory that is to hold the file is a symbolic link.
    #[error("{dir}: a symbolic link, not the directory itself; give the real path of {name}", name = name.to_string_lossy())]
    DirIsLink {
        /// The directory.
        dir: PathBuf,
        /// The file's name in it.
        name: OsString,
    },
    /// The directory was replaced after it was opened.
    #[error(
        "{dir}: no longer the directory opened at the start (replaced, or swapped for a link, while the sandbox ran); {name} was not written", name = name.to_string_lossy()
    )]
    DirReplaced {
        /// The directory.
        dir: PathBuf,
        /// The file's name in it.
        name: OsString,
    },
    /// The file exists and is not a regular file (a link, a FIFO, a device, a directory).
    #[error("{path}: not a regular file ({what}); give the path of a file")]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is.
        what: &'static str,
    },
    /// The file already exists ([`HostFile::create_new`]).
    #[error("{path}: exists already; it was kept")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Opening, writing or renaming the file failed.
    #[error("{path}: cannot {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// A file on the host that moat will write, reached through its directory opened up front
/// (see the module header).
#[derive(Debug)]
pub struct HostFile {
    dir: OwnedFd,
    /// The directory as given (absolute), for messages and the check that it is unchanged.
    dir_path: PathBuf,
    name: OsString,
    /// Which directory `dir` is: (device, inode).
    id: (u64, u64),
    /// Sync the new file before it is renamed into place.
    durable: bool,
}

impl HostFile {
    /// Opens the directory that is to hold `path` (see the module header). Nothing is
    /// created yet.
    pub fn open(path: &Path) -> Result<HostFile, HostFileError> {
        let not_a_name = || HostFileError::NotAFileName {
            path: path.to_owned(),
        };
        let absolute = std::path::absolute(path).map_err(|_| not_a_name())?;
        // `..` or `/` as the last component names a directory, not a file in one.
        let name = match absolute.components().next_back() {
            Some(Component::Normal(name)) => name.to_owned(),
            _ => return Err(not_a_name()),
        };
        let dir_path = absolute.parent().ok_or_else(not_a_name)?.to_owned();
        let dir = nix::fcntl::open(
            &dir_path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            // O_NOFOLLOW with O_DIRECTORY says ENOTDIR for a link: say what it is.
            if std::fs::symlink_metadata(&dir_path).is_ok_and(|m| m.is_symlink()) {
                HostFileError::DirIsLink {
                    dir: dir_path.clone(),
                    name: name.clone(),
                }
            } else {
                HostFileError::OpenDir {
                    dir: dir_path.clone(),
                    name: name.clone(),
                    source: e.into(),
                }
            }
        })?;
        let stat = nix::sys::stat::fstat(&dir).map_err(|e| HostFileError::OpenDir {
            dir: dir_path.clone(),
            name: name.clone(),
            source: e.into(),
        })?;
        Ok(HostFile {
            dir,
            dir_path,
            id: (stat.st_dev, stat.st_ino),
            durable: false,
            name,
        })
    }

    /// Syncs a file written whole before it is renamed into place, so that a crash leaves
    /// the old file or the new one, never an empty one: for what the user keeps (a learned
    /// policy, a CA). A run's own state dies with it and skips the cost (milliseconds per
    /// file on a disk, at every start).
    pub fn durable(mut self) -> HostFile {
        self.durable = true;
        self
    }

    /// The path as given (absolute).
    pub fn path(&self) -> PathBuf {
        self.dir_path.join(&self.name)
    }

    /// The file's path with every link of its directory resolved, as the directory opened
    /// is reached now (for checks against the sandbox's grants).
    pub fn real_path(&self) -> io::Result<PathBuf> {
        let dir = std::fs::read_link(format!("/proc/self/fd/{}", self.dir.as_raw_fd()))?;
        Ok(dir.join(&self.name))
    }

    /// What the file holds now, if it exists: read through the directory opened (never a
    /// link: `O_NOFOLLOW`), a regular file of at most `limit` bytes. For a file moat
    /// extends (a learned policy), read before the sandbox starts, while nothing inside
    /// could have changed it.
    pub fn read_existing(&self, limit: u64) -> Result<Option<Vec<u8>>, HostFileError> {
        let fd = match nix::fcntl::openat(
            &self.dir,
            self.name.as_os_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => {
                return Err(HostFileError::NotRegular {
                    path: self.path(),
                    what: "a symbolic link",
                });
            }
            Err(e) => return Err(self.io("open to read", e.into())),
        };
        let file = self.regular(fd)?;
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(&file, limit + 1), &mut text)
            .map_err(|e| self.io("read", e))?;
        if text.len() as u64 > limit {
            return Err(self.io(
                "read",
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("larger than {limit} bytes"),
                ),
            ));
        }
        Ok(Some(text))
    }

    /// `fd` as a file, if it is a regular one (what was opened is what is checked: the
    /// name may have changed between a look and the open).
    fn regular(&self, fd: OwnedFd) -> Result<File, HostFileError> {
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| self.io("read the file's type", e))?;
        if !meta.file_type().is_file() {
            return Err(HostFileError::NotRegular {
                path: self.path(),
                what: kind(meta.mode()),
            });
        }
        Ok(file)
    }

    /// Opens the file for appending, creating it (with `mode`, less the umask) if absent;
    /// readable too, so that a writer can see how the file ends. Refused when the name is a
    /// link or anything but a regular file.
    pub fn append(&self, mode: u32) -> Result<File, HostFileError> {
        // Said first for a clear message; the checks after the open are the ones that hold.
        if let Ok(s) = nix::sys::stat::fstatat(
            &self.dir,
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) && SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG
        {
            return Err(HostFileError::NotRegular {
                path: self.path(),
                what: kind(s.st_mode),
            });
        }
        let fd = nix::fcntl::openat(
            &self.dir,
            self.name.as_os_str(),
            OFlag::O_RDWR
                | OFlag::O_APPEND
                | OFlag::O_CREAT
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        )
        .map_err(|e| self.open_error("open for appending", e))?;
        let file = self.regular(fd)?;
        // Back to blocking writes: O_NONBLOCK only kept a FIFO from blocking the open.
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_APPEND))
            .map_err(|e| self.io("open for appending", e.into()))?;
        Ok(file)
    }

    /// Why opening the name with `O_NOFOLLOW | O_NONBLOCK` failed: a link (`ELOOP`), a FIFO
    /// with no reader (`ENXIO`, swapped in after a check), or the OS's reason.
    fn open_error(&self, op: &'static str, e: Errno) -> HostFileError {
        match e {
            Errno::ELOOP => HostFileError::NotRegular {
                path: self.path(),
                what: "a symbolic link",
            },
            Errno::ENXIO => HostFileError::NotRegular {
                path: self.path(),
                what: "a FIFO",
            },
            e => self.io(op, e.into()),
        }
    }

    /// Writes `contents` over an existing regular file, in place (the same inode: a file
    /// bind-mounted elsewhere, such as a container's resolv.conf, shows the new contents
    /// there), and sets its mode to `mode` when given. The name is first opened as a path
    /// only (`O_PATH | O_NOFOLLOW`), so nothing but a regular file with one name is ever
    /// opened for writing: a link, a FIFO or a device planted there (opening some devices
    /// has effects of its own) is refused unopened, and so is a hard link to a file
    /// elsewhere.
    pub fn overwrite(&self, contents: &[u8], mode: Option<u32>) -> Result<(), HostFileError> {
        self.check_unchanged()?;
        let at = nix::fcntl::openat(
            &self.dir,
            self.name.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.open_error("open for writing", e))?;
        let seen =
            nix::sys::stat::fstat(&at).map_err(|e| self.io("read the file's type", e.into()))?;
        let is_link = SFlag::from_bits_truncate(seen.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK;
        if is_link || SFlag::from_bits_truncate(seen.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(HostFileError::NotRegular {
                path: self.path(),
                what: kind(seen.st_mode),
            });
        }
        if seen.st_nlink != 1 {
            return Err(HostFileError::NotRegular {
                path: self.path(),
                what: "a file with other names (a hard link)",
            });
        }
        // The file just checked, opened again through its descriptor.
        let fd = nix::fcntl::open(
            format!("/proc/self/fd/{}", at.as_raw_fd()).as_str(),
            OFlag::O_WRONLY | OFlag::O_NOCTTY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io("open for writing", e.into()))?;
        let file = self.regular(fd)?;
        let now = file
            .metadata()
            .map_err(|e| self.io("read the file's type", e))?;
        if (now.dev(), now.ino()) != (seen.st_dev, seen.st_ino) {
            return Err(self.io(
                "open for writing",
                io::Error::other("the file was replaced while it was opened"),
            ));
        }
        if let Some(mode) = mode {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| self.io("set the mode", e))?;
        }
        file.set_len(0)
            .and_then(|()| (&file).write_all(contents))
            .map_err(|e| self.io("write", e))
    }

    /// Writes `contents` as the whole file (mode `mode`, less the umask), replacing what
    /// the name held: written aside under a random name and renamed over it.
    pub fn replace(&self, contents: &[u8], mode: u32) -> Result<(), HostFileError> {
        self.write_with(contents, mode, RenameFlags::empty(), &mut random_temp_name)
    }

    /// Like [`HostFile::replace`], but an existing file (or link) at the name is kept and
    /// the call fails.
    pub fn create_new(&self, contents: &[u8], mode: u32) -> Result<(), HostFileError> {
        self.write_with(
            contents,
            mode,
            RenameFlags::RENAME_NOREPLACE,
            &mut random_temp_name,
        )
    }

    /// [`HostFile::replace`] with the temporary names drawn from `names` (tests plant
    /// files at the names they will be given).
    fn write_with(
        &self,
        contents: &[u8],
        mode: u32,
        flags: RenameFlags,
        names: &mut dyn FnMut() -> OsString,
    ) -> Result<(), HostFileError> {
        self.check_unchanged()?;
        let (temp, file) = self.create_temp(mode, names)?;
        let written = (&file)
            .write_all(contents)
            .and_then(|()| {
                if self.durable {
                    file.sync_all()
                } else {
                    Ok(())
                }
            })
            .map_err(|e| self.io("write", e))
            .and_then(|()| {
                nix::fcntl::renameat2(
                    &self.dir,
                    temp.as_os_str(),
                    &self.dir,
                    self.name.as_os_str(),
                    flags,
                )
                .map_err(|e| match e {
                    Errno::EEXIST => HostFileError::Exists { path: self.path() },
                    e => self.io("rename the new file into place", e.into()),
                })
            });
        if written.is_err() {
            let _ = nix::unistd::unlinkat(&self.dir, temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        }
        written
    }

    /// A new, empty file under a name no one else has, in the directory opened.
    fn create_temp(
        &self,
        mode: u32,
        names: &mut dyn FnMut() -> OsString,
    ) -> Result<(OsString, File), HostFileError> {
        let mut last = Errno::EEXIST;
        for _ in 0..TEMP_ATTEMPTS {
            let temp = names();
            match nix::fcntl::openat(
                &self.dir,
                temp.as_os_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(mode),
            ) {
                Ok(fd) => return Ok((temp, File::from(fd))),
                // Taken (a planted link or file): never opened, another name is tried.
                Err(Errno::EEXIST) => last = Errno::EEXIST,
                Err(e) => return Err(self.io("create a temporary file", e.into())),
            }
        }
        Err(self.io("create a temporary file", last.into()))
    }

    /// The path still names the directory opened: not a link now, the same inode.
    fn check_unchanged(&self) -> Result<(), HostFileError> {
        let now = nix::sys::stat::fstatat(AT_FDCWD, &self.dir_path, AtFlags::AT_SYMLINK_NOFOLLOW);
        let same = now.is_ok_and(|s| {
            SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
                && (s.st_dev, s.st_ino) == self.id
        });
        if same {
            Ok(())
        } else {
            Err(HostFileError::DirReplaced {
                dir: self.dir_path.clone(),
                name: self.name.clone(),
            })
        }
    }

    fn io(&self, op: &'static str, source: io::Error) -> HostFileError {
        HostFileError::Io {
            path: self.path(),
            op,
            source,
        }
    }
}

/// What a file of mode `mode` is, for messages.
fn kind(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFCHR | SFlag::S_IFBLK => "a device",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFLNK => "a symbolic link",
        _ => "not a regular file",
    }
}

/// `.moat-` and 16 hex digits nobody can guess: std's `RandomState` keys SipHash with
/// random bits from the OS, so its output is unpredictable from inside the sandbox (a
/// name derived from the pid, as before, could be planted for every pid in advance).
fn random_temp_name() -> OsString {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(DRAWN.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    OsString::from(format!(".moat-{:016x}.tmp", h.finish()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use super::*;
    use std::os::unix::fs::symlink;

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "moat-hostfile-{tag}-{}-{}",
                std::process::id(),
                random_temp_name().to_string_lossy()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Names handed out in order, then fresh random ones.
    fn names(fixed: &[&str]) -> impl FnMut() -> OsString {
        let mut fixed: Vec<OsString> = fixed.iter().rev().map(OsString::from).collect();
        move || fixed.pop().unwrap_or_else(random_temp_name)
    }

    #[test]
    fn a_link_planted_at_the_final_name_is_replaced_not_followed() {
        let s = Scratch::new("final");
        let victim = s.0.join("victim");
        std::fs::write(&victim, "host file").unwrap();
        let target = s.0.join("tool.toml");
        symlink(&victim, &target).unwrap();
        HostFile::open(&target)
            .unwrap()
            .replace(b"policy", 0o644)
            .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file");
        assert!(std::fs::symlink_metadata(&target).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "policy");
    }

    #[test]
    fn a_link_planted_at_the_temporary_name_is_never_opened() {
        let s = Scratch::new("temp");
        let victim = s.0.join("victim");
        std::fs::write(&victim, "host file").unwrap();
        symlink(&victim, s.0.join("planted")).unwrap();
        let target = s.0.join("tool.toml");
        let file = HostFile::open(&target).unwrap();
        file.write_with(
            b"policy",
            0o644,
            RenameFlags::empty(),
            &mut names(&["planted"]),
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "policy");
        // The planted link is left as it was (not ours to remove), and no temporary remains.
        assert!(
            std::fs::symlink_metadata(s.0.join("planted"))
                .unwrap()
                .is_symlink()
        );
        let left: Vec<_> = std::fs::read_dir(&s.0).unwrap().flatten().collect();
        assert_eq!(left.len(), 3, "{left:?}");
    }

    #[test]
    fn a_taken_temporary_name_is_retried_and_given_up_on_after_a_bound() {
        let s = Scratch::new("excl");
        std::fs::write(s.0.join("taken"), "someone's").unwrap();
        let target = s.0.join("out");
        let file = HostFile::open(&target).unwrap();
        file.write_with(
            b"new",
            0o600,
            RenameFlags::empty(),
            &mut names(&["taken", "taken"]),
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(s.0.join("taken")).unwrap(),
            "someone's"
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        // Every name taken: an error, nothing written.
        let always_taken = &mut || OsString::from("taken");
        let err = file
            .write_with(b"newer", 0o600, RenameFlags::empty(), always_taken)
            .unwrap_err();
        assert!(matches!(err, HostFileError::Io { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
    }

    #[test]
    fn a_directory_swapped_for_a_link_after_opening_is_refused() {
        let s = Scratch::new("swap");
        let work = s.0.join("work");
        let elsewhere = s.0.join("elsewhere");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        let file = HostFile::open(&work.join("tool.toml")).unwrap();
        // What a sandbox could do to its work directory's subdirectory while it runs.
        std::fs::rename(&work, s.0.join("work.old")).unwrap();
        symlink(&elsewhere, &work).unwrap();
        let err = file.replace(b"policy", 0o644).unwrap_err();
        assert!(matches!(err, HostFileError::DirReplaced { .. }), "{err}");
        assert!(err.to_string().contains("was not written"), "{err}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(s.0.join("work.old")).unwrap().count(), 0);
        // A directory that is a link already at the start is refused too.
        let err = HostFile::open(&work.join("tool.toml")).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn append_refuses_links_and_what_is_not_a_regular_file() {
        let s = Scratch::new("append");
        let victim = s.0.join("victim");
        std::fs::write(&victim, "host file\n").unwrap();
        symlink(&victim, s.0.join("link.jsonl")).unwrap();
        let err = HostFile::open(&s.0.join("link.jsonl"))
            .unwrap()
            .append(0o644)
            .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        nix::unistd::mkfifo(&s.0.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let err = HostFile::open(&s.0.join("fifo"))
            .unwrap()
            .append(0o644)
            .unwrap_err();
        assert!(err.to_string().contains("a FIFO"), "{err}");
        // The control: a plain file is created, then appended to.
        let log = HostFile::open(&s.0.join("audit.jsonl")).unwrap();
        log.append(0o644).unwrap().write_all(b"one\n").unwrap();
        log.append(0o644).unwrap().write_all(b"two\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(s.0.join("audit.jsonl")).unwrap(),
            "one\ntwo\n"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file\n");
    }

    #[test]
    fn overwrite_writes_in_place_and_refuses_links_and_missing_files() {
        let s = Scratch::new("overwrite");
        let conf = s.0.join("resolv.conf");
        std::fs::write(&conf, "nameserver 192.0.2.53\nsearch a.long.example.test\n").unwrap();
        let inode = std::fs::metadata(&conf).unwrap().ino();
        HostFile::open(&conf)
            .unwrap()
            .overwrite(b"nameserver 10.0.2.2\n", None)
            .unwrap();
        // The same file (a bind mount of it shows the change), shorter contents whole.
        assert_eq!(std::fs::metadata(&conf).unwrap().ino(), inode);
        assert_eq!(
            std::fs::read_to_string(&conf).unwrap(),
            "nameserver 10.0.2.2\n"
        );
        let victim = s.0.join("victim");
        std::fs::write(&victim, "host file").unwrap();
        symlink(&victim, s.0.join("link")).unwrap();
        let err = HostFile::open(&s.0.join("link"))
            .unwrap()
            .overwrite(b"x", None)
            .unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file");
        // A hard link to a file elsewhere, a FIFO: refused, and nothing written.
        std::fs::hard_link(&victim, s.0.join("hard")).unwrap();
        let err = HostFile::open(&s.0.join("hard"))
            .unwrap()
            .overwrite(b"x", None)
            .unwrap_err();
        assert!(err.to_string().contains("hard link"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file");
        nix::unistd::mkfifo(&s.0.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let err = HostFile::open(&s.0.join("fifo"))
            .unwrap()
            .overwrite(b"x", None)
            .unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        // The mode, when asked.
        let env = s.0.join("env");
        std::fs::write(&env, "").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        HostFile::open(&env)
            .unwrap()
            .overwrite(b"K=V\n", Some(0o600))
            .unwrap();
        assert_eq!(std::fs::metadata(&env).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&env).unwrap(), "K=V\n");
        let missing = HostFile::open(&s.0.join("missing"))
            .unwrap()
            .overwrite(b"x", None);
        assert!(missing.is_err());
        assert!(!s.0.join("missing").exists());
    }

    #[test]
    fn create_new_keeps_what_exists_and_names_must_be_files() {
        let s = Scratch::new("new");
        let key = s.0.join("key.pem");
        let file = HostFile::open(&key).unwrap();
        file.create_new(b"first", 0o600).unwrap();
        let err = file.create_new(b"second", 0o600).unwrap_err();
        assert!(matches!(err, HostFileError::Exists { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "first");
        assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&s.0).unwrap().count(), 1);
        for bad in ["/", "a/..", ""] {
            assert!(HostFile::open(Path::new(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            HostFile::open(&s.0.join("x")).unwrap().real_path().unwrap(),
            s.0.canonicalize().unwrap().join("x")
        );
    }
}
