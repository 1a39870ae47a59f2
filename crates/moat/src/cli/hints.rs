//! What `moat run` says when the command cannot start: not found or not executable, and
//! the grant or flag that would let it (a program outside the view, a name that resolves
//! elsewhere inside).

use std::ffi::OsString;
use std::path::PathBuf;

use super::run::{NOT_EXECUTABLE, NOT_FOUND, RunOptions};

/// The message and exit status for a command that could not be started: 127 when it is
/// not in the sandbox (with the `--ro` that would show it, when the host has it), 126
/// when it is there but cannot be executed.
pub(super) fn spawn_failure(error: &str, command: &OsString) -> (String, i32) {
    // ENOENT from exec: a path given with a slash that the sandbox does not have.
    if error.contains("command not found") || error.ends_with("(os error 2)") {
        let relative = std::path::Path::new(command);
        if relative.is_relative() && relative.components().count() > 1 && relative.is_file() {
            // ./install.sh: the sandbox starts in a work directory of its own.
            let hint = format!(
                "; it is in this directory on the host, but the sandbox starts in its own work directory: add -w . (shows this directory, writable, and starts there) or give its absolute path with --ro {}",
                std::path::absolute(relative)
                    .ok()
                    .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
                    .unwrap_or_default()
                    .display()
            );
            return (format!("{error}{hint}"), NOT_FOUND);
        }
        let hint = host_program(command).map_or_else(
            || {
                " (the sandbox sees the system directories /usr, /bin, /sbin, /lib, /etc and /opt, the work directory and what --ro/--rw grant)".to_owned()
            },
            |path| {
                let grants = grants_for(&path)
                    .iter()
                    .map(|d| format!("--ro {}", d.display()))
                    .collect::<Vec<_>>()
                    .join(" ");
                format!(
                    "; the host has it at {}, which the sandbox does not see: add {grants}",
                    path.display()
                )
            },
        );
        (format!("{error}{hint}"), NOT_FOUND)
    } else {
        (error.to_owned(), NOT_EXECUTABLE)
    }
}

/// The read-only grants that show the host's `program` with what it needs: its directory,
/// or — under the caller's home, where tool managers keep a program beside the files it
/// runs (pyenv's shims and versions, a rustup proxy and its toolchains) — the home's
/// top-level directory that holds it, and for `~/.cargo` also `~/.rustup`.
pub(super) fn grants_for(program: &std::path::Path) -> Vec<PathBuf> {
    let dir = program.parent().unwrap_or(program).to_owned();
    let Some(home) = std::env::var_os("HOME")
        .map(PathBuf::from)
        .and_then(|h| h.canonicalize().ok())
        .filter(|h| h != std::path::Path::new("/"))
    else {
        return vec![dir];
    };
    let Some(first) = program
        .strip_prefix(&home)
        .ok()
        .and_then(|rest| rest.components().next())
    else {
        return vec![dir];
    };
    let top = home.join(first);
    if top == program {
        return vec![dir];
    }
    let mut out = vec![top.clone()];
    let rustup = home.join(".rustup");
    if top.ends_with(".cargo") && rustup.is_dir() {
        out.push(rustup);
    }
    out
}

/// Whether the sandbox shows host path `path`: the system directories, the work
/// directory given with -w, and the grants.
pub(super) fn shown_inside(path: &std::path::Path, opts: &RunOptions) -> bool {
    const SYSTEM: [&str; 9] = [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt",
    ];
    let real = |p: &std::path::Path| p.canonicalize().unwrap_or_else(|_| p.to_owned());
    let path = real(path);
    SYSTEM
        .iter()
        .any(|d| path.starts_with(real(std::path::Path::new(d))))
        || opts
            .workdir
            .iter()
            .chain(&opts.ro)
            .chain(&opts.rw)
            .any(|g| path.starts_with(real(g)))
}

/// When the command (a name looked up on PATH) is one program on the host and another in
/// the sandbox (the host's comes first on PATH from a directory the sandbox does not see),
/// one line saying so, with the grants that would show the host's.
pub(super) fn resolves_elsewhere(opts: &RunOptions) -> Option<String> {
    let command = opts.command.first()?;
    if std::path::Path::new(command).components().count() > 1 {
        return None;
    }
    let path = std::env::var_os("PATH")?;
    let host = std::env::split_paths(&path)
        .map(|d| d.join(command))
        .find(|p| p.is_file())?;
    if shown_inside(&host, opts) {
        return None;
    }
    let inside = std::env::split_paths(&path)
        .map(|d| d.join(command))
        .find(|p| p.is_file() && shown_inside(p, opts))?;
    let grants = grants_for(&host.canonicalize().unwrap_or_else(|_| host.clone()))
        .iter()
        .map(|d| format!("--ro {}", d.display()))
        .collect::<Vec<_>>()
        .join(" ");
    Some(format!(
        "{} is {} on the host, which the sandbox does not see; it runs {} instead ({grants} shows the host's)",
        command.to_string_lossy(),
        host.display(),
        inside.display()
    ))
}

/// Where the host's PATH finds `command`, if anywhere.
pub(super) fn host_program(command: &OsString) -> Option<PathBuf> {
    let command = std::path::Path::new(command);
    if command.components().count() > 1 {
        return command.exists().then(|| command.to_owned());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(command))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
}
