//! Resource limits: memory, processes and CPU for everything in a sandbox.
//!
//! # Theory of operation
//! moat makes a control group for each sandbox where it can, writes the limits into it and
//! moves the supervisor in before the supervisor builds anything, so every process of the
//! sandbox (PID 1, the commands, their children) is counted. Two layouts are supported, as
//! runc and crun do:
//! - **cgroup v2** (one unified hierarchy at /sys/fs/cgroup): a child of moat's own group,
//!   with `memory.max` (and `memory.swap.max` 0, so the limit is not dodged by swapping),
//!   `pids.max`, `cpu.max`; possible where moat may write there (root, or a delegated
//!   subtree whose controllers are enabled for children).
//! - **cgroup v1** (one hierarchy per controller, e.g. /sys/fs/cgroup/{memory,pids,cpu}, the
//!   layout of these machines): a child in each controller's hierarchy below moat's own
//!   group there, with `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes` where
//!   swap is accounted), `pids.max`, `cpu.cfs_quota_us`.
//!
//! Where no group can be made (a normal user without delegation) the limits fall back to
//! rlimits that cover them as far as they can: RLIMIT_NPROC for processes (counted per
//! user namespace since Linux 5.14, so only the sandbox's own processes count) and
//! RLIMIT_AS for memory (per process, not a total); CPU has no rlimit equivalent. What could
//! not be applied is said in [`Applied::notes`].
//!
//! Exceeded limits are read back from the group's event counters (`memory.events` /
//! `memory.oom_control` `oom_kill`, `pids.events` `max`) so moat can end the run and say
//! which limit ended it. The supervisor and PID 1 are two processes of the group: the pids
//! limit is raised by two so the commands get what was asked.
//!
//! References: Documentation/admin-guide/cgroup-v2.rst, cgroup-v1/{memory,pids}.rst,
//! scheduler/sched-bwc.rst (CFS bandwidth), setrlimit(2).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::RLimit;

/// Where cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Processes of the group that are not the commands: the supervisor and PID 1.
const OWN_PROCESSES: u64 = 2;
/// The CFS period moat writes, 100 ms (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// Limits for a whole sandbox; `None` leaves one unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// Bytes of memory (anonymous and tmpfs pages alike).
    pub memory: Option<u64>,
    /// Processes and threads.
    pub pids: Option<u64>,
    /// CPUs' worth of time (1.5 = one and a half cores).
    pub cpus: Option<f64>,
}

/// A limit that ended a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    /// The kernel killed a process for going over the memory limit.
    Memory {
        /// The limit in bytes.
        limit: u64,
        /// Processes killed.
        kills: u64,
    },
    /// Forks were refused at the process limit.
    Pids {
        /// The limit.
        limit: u64,
        /// Forks refused.
        refused: u64,
    },
}

impl std::fmt::Display for LimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitHit::Memory { limit, kills } => write!(
                f,
                "the sandbox ran out of memory: the kernel killed {kills} process{} at the limit of {} (raise it with --memory)",
                if *kills == 1 { "" } else { "es" },
                human_bytes(*limit)
            ),
            LimitHit::Pids { limit, refused } => write!(
                f,
                "the sandbox reached its limit of {limit} processes: {refused} fork{} refused (raise it with --pids-limit)",
                if *refused == 1 { " was" } else { "s were" }
            ),
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if n >= size && n % size == 0 {
            return format!("{} {unit}", n / size);
        }
    }
    format!("{n} bytes")
}

/// How the limits were applied.
#[derive(Debug, Default)]
pub struct Applied {
    /// The control group, when one could be made.
    pub cgroup: Option<Cgroup>,
    /// rlimits for every command, where no group could hold a limit.
    pub rlimits: Vec<RLimit>,
    /// One line for each limit that could not be applied as asked.
    pub notes: Vec<String>,
}

/// Which cgroup layout a group lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    V1,
    V2,
}

/// A sandbox's control group (one directory per controller on v1, one on v2); removed by
/// [`Cgroup::remove`] once the sandbox's processes are gone.
#[derive(Debug)]
pub struct Cgroup {
    layout: Layout,
    /// (controller, directory); on v2 every controller shares one directory.
    dirs: Vec<(&'static str, PathBuf)>,
    limits: Limits,
}

impl Cgroup {
    /// Which layout this group uses, for messages.
    pub fn describe(&self) -> String {
        let dirs: Vec<String> = self
            .dirs
            .iter()
            .map(|(_, d)| d.display().to_string())
            .collect();
        match self.layout {
            Layout::V1 => format!("cgroup v1 ({})", dirs.join(", ")),
            Layout::V2 => format!("cgroup v2 ({})", dirs.first().cloned().unwrap_or_default()),
        }
    }

    /// Moves process `pid` (and so all it will start) into the group.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        let mut done: Vec<&Path> = Vec::new();
        for (_, dir) in &self.dirs {
            if done.contains(&dir.as_path()) {
                continue;
            }
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
            done.push(dir);
        }
        Ok(())
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, d)| d.as_path())
    }

    /// The limit that was exceeded, if one was.
    pub fn exceeded(&self) -> Option<LimitHit> {
        if let (Some(limit), Some(dir)) = (self.limits.memory, self.dir("memory")) {
            let file = match self.layout {
                Layout::V2 => "memory.events",
                Layout::V1 => "memory.oom_control",
            };
            let kills = counter(&dir.join(file), "oom_kill");
            if kills > 0 {
                return Some(LimitHit::Memory { limit, kills });
            }
        }
        if let (Some(limit), Some(dir)) = (self.limits.pids, self.dir("pids")) {
            let refused = counter(&dir.join("pids.events"), "max");
            if refused > 0 {
                return Some(LimitHit::Pids { limit, refused });
            }
        }
        None
    }

    /// Removes the group's directories (also done on drop).
    pub fn remove(self) {}
}

impl Drop for Cgroup {
    /// Removes the group's directories; waits briefly for the kernel to let go of the
    /// processes that just died.
    fn drop(&mut self) {
        for (_, dir) in self.dirs.iter().rev() {
            for _ in 0..100 {
                match std::fs::remove_dir(dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    _ => break,
                }
            }
        }
    }
}

/// The value after `key` in a flat-keyed cgroup file (`key value` lines); 0 when absent.
fn counter(path: &Path, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|line| {
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

/// This process's group path for `controller` from /proc/self/cgroup
/// (`ID:CONTROLLERS:PATH` lines; `0::PATH` is v2): (mount directory name, path).
fn own_group(cgroup_file: &str, controller: Option<&str>) -> Option<(String, String)> {
    cgroup_file.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        match controller {
            None => controllers
                .is_empty()
                .then(|| (String::new(), path.to_owned())),
            Some(c) => controllers
                .split(',')
                .any(|x| x == c)
                .then(|| (controllers.to_owned(), path.to_owned())),
        }
    })
}

/// This process's own groups, one per hierarchy, as the sandbox is to see them under
/// /sys/fs/cgroup: (where inside /sys/fs/cgroup, the group's directory on the host). Read
/// from `cgroup_file` (/proc/self/cgroup) before the sandbox's cgroup namespace makes every
/// path `/`. A hierarchy in which this process sits at the root is left out: its directory
/// is the whole host's tree. Mount directories are named as [`make_v1`] and [`make_v2`]
/// expect them (`/sys/fs/cgroup/CONTROLLERS`, `name=X` as `X`; v2 at /sys/fs/cgroup, or
/// `unified` beside v1 hierarchies).
pub fn own_groups(cgroup_file: &str) -> Vec<(PathBuf, PathBuf)> {
    own_groups_under(Path::new(CGROUP_ROOT), cgroup_file)
}

fn own_groups_under(root: &Path, cgroup_file: &str) -> Vec<(PathBuf, PathBuf)> {
    let unified = root.join("cgroup.controllers").exists();
    cgroup_file
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let path = path.trim_start_matches('/');
            if path.is_empty() {
                return None;
            }
            let inside = match controllers {
                "" if unified => PathBuf::new(),
                "" => PathBuf::from("unified"),
                c => PathBuf::from(c.strip_prefix("name=").unwrap_or(c)),
            };
            let host = root.join(&inside).join(path);
            host.is_dir().then_some((inside, host))
        })
        .collect()
}

/// Removes the (empty) groups a run named `name` left behind when its moat was killed
/// before it could remove them; groups that still hold processes stay.
pub fn remove_leftovers(name: &str) {
    let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let leaf = format!("moat-{name}");
    let mut dirs = Vec::new();
    for controller in ["pids", "memory", "cpu"] {
        if let Some((mount, path)) = own_group(&proc_cgroup, Some(controller)) {
            dirs.push(
                Path::new(CGROUP_ROOT)
                    .join(mount)
                    .join(path.trim_start_matches('/'))
                    .join(&leaf),
            );
        }
    }
    if let Some((_, path)) = own_group(&proc_cgroup, None) {
        dirs.push(
            Path::new(CGROUP_ROOT)
                .join(path.trim_start_matches('/'))
                .join(&leaf),
        );
    }
    for dir in dirs {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Applies `limits` for sandbox `name` (unique per run): a control group where one can
/// be made, else rlimits, with a note for each limit that could not be applied as asked.
/// `asked` names the limits the user set (the others are defaults: no note for them).
pub fn apply(name: &str, limits: &Limits, asked: &Limits) -> Applied {
    if limits.memory.is_none() && limits.pids.is_none() && limits.cpus.is_none() {
        return Applied::default();
    }
    let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let leaf = format!("moat-{name}");
    let unified = Path::new(CGROUP_ROOT).join("cgroup.controllers").exists();
    let made = if unified {
        make_v2(&proc_cgroup, &leaf, limits)
    } else {
        make_v1(&proc_cgroup, &leaf, limits)
    };
    match made {
        Ok(cgroup) => Applied {
            cgroup: Some(cgroup),
            rlimits: Vec::new(),
            notes: Vec::new(),
        },
        Err(why) => fallback(limits, asked, &why),
    }
}

fn fallback(limits: &Limits, asked: &Limits, why: &io::Error) -> Applied {
    let mut applied = Applied::default();
    if let Some(n) = limits.pids {
        applied.rlimits.push(RLimit::Processes(n));
    }
    if let Some(bytes) = limits.memory {
        applied.rlimits.push(RLimit::AddressSpace(bytes));
        if asked.memory.is_some() {
            applied.notes.push(format!(
                "--memory applied per process (RLIMIT_AS), not to the sandbox as a whole: no control group could be made ({why})"
            ));
        }
    }
    if asked.cpus.is_some() {
        applied.notes.push(format!(
            "--cpus not applied: no control group could be made ({why}); run as root or with a delegated cgroup v2 subtree"
        ));
    }
    applied
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

fn make_v1(proc_cgroup: &str, leaf: &str, limits: &Limits) -> io::Result<Cgroup> {
    let mut group = Cgroup {
        layout: Layout::V1,
        dirs: Vec::new(),
        limits: *limits,
    };
    let result = (|| {
        let wanted: [(&'static str, bool); 3] = [
            ("pids", limits.pids.is_some()),
            ("memory", limits.memory.is_some()),
            ("cpu", limits.cpus.is_some()),
        ];
        for (controller, needed) in wanted {
            if !needed {
                continue;
            }
            let (mount, path) = own_group(proc_cgroup, Some(controller)).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no cgroup v1 {controller} controller"),
                )
            })?;
            let dir = Path::new(CGROUP_ROOT)
                .join(mount)
                .join(path.trim_start_matches('/'))
                .join(leaf);
            std::fs::create_dir(&dir)?;
            group.dirs.push((controller, dir.clone()));
            match controller {
                "pids" => write(
                    &dir,
                    "pids.max",
                    &(limits.pids.unwrap_or(0) + OWN_PROCESSES).to_string(),
                )?,
                "memory" => {
                    let bytes = limits.memory.unwrap_or(0).to_string();
                    write(&dir, "memory.limit_in_bytes", &bytes)?;
                    if dir.join("memory.memsw.limit_in_bytes").exists() {
                        write(&dir, "memory.memsw.limit_in_bytes", &bytes)?;
                    }
                }
                _ => {
                    write(&dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                    write(&dir, "cpu.cfs_quota_us", &cpu_quota(limits).to_string())?;
                }
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(group),
        Err(e) => {
            group.remove();
            Err(e)
        }
    }
}

fn cpu_quota(limits: &Limits) -> u64 {
    let cpus = limits.cpus.unwrap_or(1.0);
    ((cpus * CPU_PERIOD_US as f64) as u64).max(1_000)
}

fn make_v2(proc_cgroup: &str, leaf: &str, limits: &Limits) -> io::Result<Cgroup> {
    let (_, path) = own_group(proc_cgroup, None)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 group"))?;
    let parent = Path::new(CGROUP_ROOT).join(path.trim_start_matches('/'));
    let mut enable = Vec::new();
    if limits.memory.is_some() {
        enable.push("+memory");
    }
    if limits.pids.is_some() {
        enable.push("+pids");
    }
    if limits.cpus.is_some() {
        enable.push("+cpu");
    }
    // Children get controllers only where the parent hands them down; this fails where
    // moat's own group holds processes (the "no internal processes" rule) and is not the
    // root, or where moat may not write: then rlimits stand in.
    write(&parent, "cgroup.subtree_control", &enable.join(" "))?;
    let dir = parent.join(leaf);
    std::fs::create_dir(&dir)?;
    let group = Cgroup {
        layout: Layout::V2,
        dirs: ["memory", "pids", "cpu"]
            .iter()
            .map(|c| (*c, dir.clone()))
            .collect(),
        limits: *limits,
    };
    let result = (|| {
        if let Some(bytes) = limits.memory {
            write(&dir, "memory.max", &bytes.to_string())?;
            if dir.join("memory.swap.max").exists() {
                write(&dir, "memory.swap.max", "0")?;
            }
        }
        if let Some(n) = limits.pids {
            write(&dir, "pids.max", &(n + OWN_PROCESSES).to_string())?;
        }
        if limits.cpus.is_some() {
            write(
                &dir,
                "cpu.max",
                &format!("{} {CPU_PERIOD_US}", cpu_quota(limits)),
            )?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(group),
        Err(e) => {
            let _ = std::fs::remove_dir(&dir);
            Err(e)
        }
    }
}

/// Parses a size: bytes, or a number with k, m, g or t (powers of 1024; `256m`, `1.5g`).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (number, unit) = match t.char_indices().last()? {
        (i, 'k') => (&t[..i], 1u64 << 10),
        (i, 'm') => (&t[..i], 1 << 20),
        (i, 'g') => (&t[..i], 1 << 30),
        (i, 't') => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    let value: f64 = number.parse().ok()?;
    if !value.is_finite() || value <= 0.0 {
        return None;
    }
    let bytes = value * unit as f64;
    (bytes >= 1.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code.
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256m"), Some(256 << 20));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("2kb"), Some(2048));
        for bad in ["", "m", "-1m", "0", "abc", "1x", "nan", "inf"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn own_group_lines() {
        let text = "9:name=systemd:/\n8:pids:/a\n4:memory:/process_api/x\n1:cpu,cpuacct:/\n0::/user.slice\n";
        assert_eq!(
            own_group(text, Some("memory")),
            Some(("memory".into(), "/process_api/x".into()))
        );
        assert_eq!(
            own_group(text, Some("cpu")),
            Some(("cpu,cpuacct".into(), "/".into()))
        );
        assert_eq!(
            own_group(text, None),
            Some((String::new(), "/user.slice".into()))
        );
        assert_eq!(own_group("1:cpu:/\n", Some("pids")), None);
    }

    #[test]
    fn own_groups_by_layout() {
        let dir = std::env::temp_dir().join(format!("moat-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // v1 with a named hierarchy and a v2 one beside (hybrid).
        for d in [
            "memory/a/moat-x",
            "cpu,cpuacct/b",
            "systemd/s",
            "unified/u",
            "pids",
        ] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let text = "9:name=systemd:/s\n8:pids:/\n4:memory:/a/moat-x\n1:cpu,cpuacct:/b\n\
                    0::/u\n3:blkio:/missing\n";
        let got = own_groups_under(&dir, text);
        let want: Vec<(PathBuf, PathBuf)> = [
            ("systemd", "systemd/s"),
            ("memory", "memory/a/moat-x"),
            ("cpu,cpuacct", "cpu,cpuacct/b"),
            ("unified", "unified/u"),
        ]
        .iter()
        .map(|(inside, host)| (PathBuf::from(inside), dir.join(host)))
        .collect();
        // pids sits at its hierarchy's root (the whole host tree) and blkio's group does
        // not exist: both left out.
        assert_eq!(got, want);
        // v2 alone: its group is the whole of /sys/fs/cgroup (once the group exists).
        std::fs::write(dir.join("cgroup.controllers"), "memory pids").unwrap();
        assert_eq!(own_groups_under(&dir, "0::/u\n"), vec![]);
        std::fs::create_dir_all(dir.join("u")).unwrap();
        assert_eq!(
            own_groups_under(&dir, "0::/u\n"),
            vec![(PathBuf::new(), dir.join("u"))]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn counters() {
        let dir = std::env::temp_dir().join(format!("moat-limits-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("events");
        std::fs::write(&f, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n").unwrap();
        assert_eq!(counter(&f, "max"), 3);
        assert_eq!(counter(&f, "oom_kill"), 2);
        assert_eq!(counter(&f, "missing"), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn messages_name_the_flag() {
        let m = LimitHit::Memory {
            limit: 256 << 20,
            kills: 1,
        }
        .to_string();
        assert!(m.contains("256 MiB") && m.contains("--memory"), "{m}");
        let p = LimitHit::Pids {
            limit: 100,
            refused: 7,
        }
        .to_string();
        assert!(
            p.contains("100 processes") && p.contains("--pids-limit"),
            "{p}"
        );
    }
}
