//! What this host could not provide to moat, found cheaply: user namespaces, seccomp, the
//! cgroup controllers the limits need (the local sandbox asks for memory and CPU limits,
//! and its start says what it could not apply), idmapped mounts.

/// A small number from a file of /proc/sys; `None` when the file is not there.
fn sysctl(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The kernel's release as (major, minor).
fn kernel() -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// What the host lacks, each with why it matters; `notes` are the local sandbox's limit
/// notes.
pub(crate) fn lacks(notes: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    let userns_off = sysctl("/proc/sys/user/max_user_namespaces") == Some(0)
        || (!root && sysctl("/proc/sys/kernel/unprivileged_userns_clone") == Some(0))
        || (!root && sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == Some(1));
    if userns_off {
        out.push((
            "user-namespaces".to_owned(),
            "disabled (user.max_user_namespaces, kernel.unprivileged_userns_clone or AppArmor): moat cannot start a sandbox as this user".to_owned(),
        ));
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !status.lines().any(|l| l.starts_with("Seccomp:"))
        || !std::path::Path::new("/proc/sys/kernel/seccomp/actions_avail").exists()
    {
        out.push((
            "seccomp".to_owned(),
            "this kernel has no seccomp filters: moat cannot install its allow list".to_owned(),
        ));
    }
    if let Some(why) = super::net::no_tap() {
        out.push(("tun".to_owned(), why));
    }
    // The sandbox's own notes: an identity that fell back (as root), or limits that could
    // not be applied.
    let (identity, limits): (Vec<&String>, Vec<&String>) = notes
        .iter()
        .partition(|n| n.contains("the sandbox's root is the host's root"));
    let idmapped = identity.is_empty();
    for note in limits {
        out.push(("cgroup-controllers".to_owned(), note.clone()));
    }
    match kernel() {
        Some(k) if k < (5, 12) => out.push((
            "idmapped-mounts".to_owned(),
            format!("kernel {}.{} has none (5.12 and later)", k.0, k.1),
        )),
        _ if root && !idmapped => {
            for note in identity {
                out.push(("idmapped-mounts".to_owned(), note.clone()));
            }
        }
        _ => {}
    }
    out
}
