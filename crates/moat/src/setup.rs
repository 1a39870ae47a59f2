//! What `moat run` and the Rust API both give a sandbox: its interface, /etc/hosts and
//! /etc/resolv.conf, from the engine's link addresses.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use moat_engine::LinkConfig;
use moat_sandbox::{Grant, Limits, NetSpec};

/// The sandbox's one interface.
pub(crate) fn net_spec(link: &LinkConfig) -> NetSpec {
    NetSpec {
        tap_name: "eth0".into(),
        mtu: link.mtu as u32,
        guest_v4: link.guest_v4,
        gateway_v4: link.gateway_v4,
        prefix_v4: link.prefix_v4,
        guest_v6: link.guest_v6,
        gateway_v6: link.gateway_v6,
        prefix_v6: link.prefix_v6,
    }
}

/// /etc/hosts: localhost, the sandbox's own name, and `host.moat.internal` for the gateway
/// (the host's loopback).
pub(crate) fn hosts_file(name: &str, link: &LinkConfig) -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{name}\n{}\thost.moat.internal\n",
        link.guest_v4, link.gateway_v4
    )
}

/// `nameserver` lines of a resolv.conf, as socket addresses on port 53: the upstream
/// resolvers when none are given.
pub(crate) fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|addr| addr.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// /etc/resolv.conf: the gateway, where moat answers DNS.
pub(crate) fn resolv_conf(link: &LinkConfig) -> String {
    format!("nameserver {}\n", link.gateway_v4)
}

/// The environment every command starts from: the caller's `PATH` (a directory the
/// sandbox does not see is simply skipped), and `HOME` and `USER` for the sandbox's root.
pub(crate) fn base_env() -> Vec<(OsString, OsString)> {
    let path = std::env::var_os("PATH")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_PATH.into());
    vec![
        ("PATH".into(), path),
        ("HOME".into(), moat_sandbox::DEFAULT_HOME.into()),
        ("USER".into(), "root".into()),
    ]
}

/// PATH when the caller has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a grant was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// The path does not exist on the host.
    #[error("--{flag} {path}: {source}")]
    Missing {
        /// `ro` or `rw`.
        flag: &'static str,
        /// The path as given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The path would show the whole host.
    #[error(
        "--{flag} /: granting the root would show the whole host; grant the directories the command needs"
    )]
    Root {
        /// `ro` or `rw`.
        flag: &'static str,
    },
    /// The path is a symbolic link.
    #[error(
        "{flag} {path}: a symbolic link (to {target}); a grant names what it shows — give the path it should be, {target} itself if that is what you mean"
    )]
    Link {
        /// The flag (`-w`, `--ro`, `--rw`).
        flag: &'static str,
        /// The path as given.
        path: String,
        /// Where it points.
        target: String,
    },
    /// The path is the caller's home directory or holds it.
    #[error(
        "{flag} {path}: that would hand the sandbox your home directory {home} and every secret in it{exposed}; grant only what the command needs: a project directory (-w {home}/PROJECT), or single files read-only (--ro {home}/.gitconfig)"
    )]
    Home {
        /// The flag (`-w`, `--ro`, `--rw`).
        flag: &'static str,
        /// The path as granted.
        path: String,
        /// The caller's home.
        home: String,
        /// `" (.ssh, .aws, ...)"`: what lies there now, or nothing.
        exposed: String,
    },
}

/// Refuses a grant (`flag`, as given) whose path is itself a symbolic link: a link left in
/// a work directory by an earlier run (`./vendor -> /etc/cron.d`) would make the next
/// grant of that path one of wherever it points. Links on the way to it are followed.
pub(crate) fn not_a_link(flag: &'static str, path: &Path) -> Result<(), GrantError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(GrantError::Link {
            flag,
            path: path.display().to_string(),
            target: std::fs::read_link(path)
                .map(|t| t.display().to_string())
                .unwrap_or_default(),
        }),
        _ => Ok(()),
    }
}

/// The caller's home directory (`$HOME`, else the password database's), resolved.
fn caller_home() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
        })?;
    home.canonicalize().ok().filter(|h| h != Path::new("/"))
}

/// Refuses a grant (`flag`, resolved `path`) that is the caller's home or one of its
/// parents: every dotfile — keys, tokens, shell history — would be the sandbox's.
pub(crate) fn not_home(flag: &'static str, path: &Path) -> Result<(), GrantError> {
    let Some(home) = caller_home() else {
        return Ok(());
    };
    if !home.starts_with(path) {
        return Ok(());
    }
    let mut secrets: Vec<String> = std::fs::read_dir(&home)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    [
                        ".ssh",
                        ".aws",
                        ".gnupg",
                        ".config",
                        ".netrc",
                        ".docker",
                        ".kube",
                        ".git-credentials",
                        ".npmrc",
                        ".pypirc",
                        ".cargo",
                    ]
                    .contains(&n.as_str())
                })
                .collect()
        })
        .unwrap_or_default();
    secrets.sort();
    Err(GrantError::Home {
        flag,
        path: path.display().to_string(),
        home: home.display().to_string(),
        exposed: if secrets.is_empty() {
            String::new()
        } else {
            format!(" ({})", secrets.join(", "))
        },
    })
}

/// `--ro` and `--rw` paths as grants: absolute, symlinks resolved (a link cannot point a
/// grant somewhere else later), in the order given, read-only ones first.
pub(crate) fn grants(ro: &[PathBuf], rw: &[PathBuf]) -> Result<Vec<Grant>, GrantError> {
    let mut out = Vec::with_capacity(ro.len() + rw.len());
    for (paths, writable, flag) in [(ro, false, "ro"), (rw, true, "rw")] {
        for path in paths {
            not_a_link(if writable { "--rw" } else { "--ro" }, path)?;
            let canonical = path.canonicalize().map_err(|source| GrantError::Missing {
                flag,
                path: path.display().to_string(),
                source,
            })?;
            if canonical == Path::new("/") {
                return Err(GrantError::Root { flag });
            }
            not_home(if writable { "--rw" } else { "--ro" }, &canonical)?;
            out.push(Grant {
                path: canonical,
                writable,
            });
        }
    }
    Ok(out)
}

/// The sandbox's limits: what was asked, and the default process limit otherwise.
pub(crate) fn limits(asked: &Limits) -> Limits {
    Limits {
        pids: asked.pids.or(Some(moat_sandbox::DEFAULT_PIDS_LIMIT)),
        ..*asked
    }
}
