//! What to say about a step of building the sandbox that failed: the kernel's error alone
//! (EPERM, EROFS) does not say which setting of the host or of a container runtime to
//! change.

use std::path::Path;

/// What to do about a failed step of building the sandbox. In a container the usual cause
/// is one of the runtime's defaults, so the hint names the `podman run` (or `docker run`)
/// option that lifts it: the smallest set is `--device /dev/net/tun --security-opt
/// seccomp=unconfined --security-opt systempaths=unconfined` (README, "moat inside a
/// container").
pub(crate) fn hint_for(stage: &str, error: &str) -> &'static str {
    hint_where(stage, error, in_container())
}

fn hint_where(stage: &str, error: &str, container: bool) -> &'static str {
    let denied = error.contains("EPERM") || error.contains("not permitted");
    let read_only = error.contains("EROFS") || error.contains("Read-only file system");
    match (container, stage) {
        (true, s) if s.contains("tun") => {
            "; in a container, give it the device: --device /dev/net/tun"
        }
        (true, _) if read_only => {
            "; in a container its /proc/sys is read-only (and its /proc masked, which the sandbox cannot mount again): run it with --security-opt systempaths=unconfined"
        }
        (true, s) if denied && (s.contains("mount") || s.contains("proc")) => {
            "; in a container, mounting takes --security-opt systempaths=unconfined (a masked /proc cannot be mounted again) and a seccomp profile that allows mount: --security-opt seccomp=unconfined (moat filters what it runs with its own)"
        }
        (true, s) if denied && s.contains("groups") => {
            "; in a container without the runtime's default capabilities, moat as root cannot set its groups: keep them (no --cap-drop all), or run moat as another user"
        }
        (true, _) if denied || error.contains("ENOSPC") => {
            "; in a container this is its seccomp profile refusing what builds the sandbox: run it with --security-opt seccomp=unconfined (moat filters what it runs with its own)"
        }
        (false, s) if s.contains("namespaces") && (denied || error.contains("ENOSPC")) => {
            "; unprivileged user namespaces may be disabled: check sysctl kernel.unprivileged_userns_clone, user.max_user_namespaces and kernel.apparmor_restrict_unprivileged_userns"
        }
        (false, s) if s.contains("tun") => {
            "; /dev/net/tun must exist and be readable and writable by you (modprobe tun; chmod 0666 /dev/net/tun)"
        }
        _ => "",
    }
}

/// Whether moat runs in a container (Podman's and Docker's marks, or the `container`
/// variable runtimes set for the process they start).
fn in_container() -> bool {
    Path::new("/run/.containerenv").exists()
        || Path::new("/.dockerenv").exists()
        || std::env::var_os("container").is_some_and(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_a_container_the_hint_names_the_runtime_option() {
        let eperm = "Operation not permitted (os error 1)";
        let cases = [
            (
                "open /dev/net/tun and create the TAP",
                "No such file or directory (os error 2)",
                "--device /dev/net/tun",
            ),
            (
                "disable IPv6 DAD",
                "Read-only file system (os error 30)",
                "systempaths=unconfined",
            ),
            ("set host name", eperm, "seccomp=unconfined"),
            ("mount proc", eperm, "systempaths=unconfined"),
            ("create namespaces", eperm, "seccomp=unconfined"),
            ("drop the supplementary groups", eperm, "--cap-drop all"),
        ];
        for (stage, error, option) in cases {
            assert!(hint_where(stage, error, true).contains(option), "{stage}");
            // Outside a container no runtime option is named.
            assert!(
                !hint_where(stage, error, false).contains("--security-opt"),
                "{stage}"
            );
        }
        assert!(
            hint_where("create namespaces", eperm, false).contains("unprivileged_userns_clone")
        );
        assert!(
            hint_where("open /dev/net/tun and create the TAP", "x", false).contains("modprobe tun")
        );
        assert_eq!(hint_where("set host name", "Invalid argument", true), "");
    }
}
