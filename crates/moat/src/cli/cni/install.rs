//! `moat-cni install`: what a node needs to run moat-cni, put in place the way network
//! plugins install themselves from a DaemonSet (deploy/kubernetes): this executable copied
//! into the runtime's plugin directory as `moat-cni`, and moat-cni's entry appended to the
//! node's network configuration (the first conflist of the configuration directory, as
//! runtimes choose it), after the cluster's own plugin. Run again, it replaces the entry
//! it added before rather than adding a second. `--wait` then stays until signalled (the
//! DaemonSet's pod runs on; the node keeps its configuration when it stops, so pods made
//! while moat's pod restarts are still served).
//!
//! Every file is written beside its target and renamed over it: a runtime reading the
//! configuration sees the old one or the new one, never half of one.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

/// `install`'s arguments.
#[derive(Debug, Default)]
struct Args {
    bin_dir: PathBuf,
    conf_dir: PathBuf,
    entry: PathBuf,
    policies: Option<PathBuf>,
    delegate: bool,
    wait: bool,
}

const USAGE: &str = "usage: moat-cni install --bin-dir DIR --conf-dir DIR --entry FILE [--policies DIR] [--delegate] [--wait]\n  \
    --bin-dir DIR   the runtime's plugin directory (/opt/cni/bin)\n  \
    --conf-dir DIR  the runtime's network configuration directory (/etc/cni/net.d)\n  \
    --entry FILE    moat-cni's entry for the conflist (JSON, \"type\": \"moat-cni\")\n  \
    --policies DIR  named policies (NAME.toml, NAME.json) to put where the entry's policyDir says\n  \
    --delegate      put moat-cni in the place of the plugin that makes the interface, as its delegate\n                  (nothing moves between namespaces: faster ADDs), instead of after it\n  \
    --wait          stay until signalled once installed, chaining again when the file is rewritten";

fn parse(args: &[String]) -> anyhow::Result<Args> {
    let mut a = Args::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .map(PathBuf::from)
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--bin-dir" => a.bin_dir = value()?,
            "--conf-dir" => a.conf_dir = value()?,
            "--entry" => a.entry = value()?,
            "--policies" => a.policies = Some(value()?),
            "--wait" => a.wait = true,
            "--delegate" => a.delegate = true,
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("{other}: unknown option\n{USAGE}"),
        }
    }
    for (p, flag) in [
        (&a.bin_dir, "--bin-dir"),
        (&a.conf_dir, "--conf-dir"),
        (&a.entry, "--entry"),
    ] {
        if p.as_os_str().is_empty() {
            bail!("{flag} is needed\n{USAGE}");
        }
    }
    Ok(a)
}

/// Writes `contents` to `path` by a rename from beside it: a new file of its own (a link
/// planted at the temporary name is removed, never followed), written out before the
/// rename.
fn replace(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().context("a file name")?.to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.moat-new"));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("remove {}", tmp.display()));
        }
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replace {}", path.display()))
}

/// The configuration a runtime uses: the first `.conflist` (or `.conf`, `.json`) by name.
fn chosen(conf_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(conf_dir)
        .with_context(|| format!("read {}", conf_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "conflist" || e == "conf" || e == "json")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    names.sort();
    names.into_iter().next().with_context(|| {
        format!(
            "{} holds no network configuration: install the cluster's network plugin first (moat-cni goes after it)",
            conf_dir.display()
        )
    })
}

/// `conf` (a conflist, or a single plugin's configuration) with moat-cni in `entry`'s form: following the cluster's plugin (the last of
/// the list), or, `delegating`, in the place of the plugin that makes the interface (the
/// first that is not `loopback`), which becomes its delegate. A moat-cni entry already
/// there goes first (its delegate put back in its place), so that installing again, in
/// either form, gives the same list.
fn placed(conf: &Value, entry: &Value, delegating: bool) -> anyhow::Result<Value> {
    if entry["type"] != "moat-cni" {
        bail!("the entry's \"type\" must be \"moat-cni\"");
    }
    let mut list = if conf["plugins"].is_array() {
        conf.clone()
    } else if conf["type"].is_string() {
        // A single plugin's file becomes a list of it and moat-cni.
        let mut single = conf.clone();
        let mut list = serde_json::json!({"cniVersion": conf["cniVersion"], "name": conf["name"]});
        if let Some(o) = single.as_object_mut() {
            o.remove("cniVersion");
            o.remove("name");
        }
        list["plugins"] = Value::Array(vec![single]);
        list
    } else {
        bail!("not a CNI network configuration (no \"plugins\" and no \"type\")");
    };
    let version = list["cniVersion"].as_str().unwrap_or("");
    if !super::config::VERSIONS.contains(&version) {
        bail!(
            "its cniVersion is {version:?}, and moat-cni speaks {}: every ADD on the node would fail",
            super::config::VERSIONS.join(", ")
        );
    }
    let Some(plugins) = list["plugins"].as_array_mut() else {
        bail!("\"plugins\" is not a list");
    };
    let unwrapped: Vec<Value> = plugins
        .iter()
        .filter_map(|p| match (&p["type"], &p["delegate"]) {
            (t, d) if t == "moat-cni" && d.is_object() => Some(d.clone()),
            (t, _) if t == "moat-cni" => None,
            _ => Some(p.clone()),
        })
        .collect();
    *plugins = unwrapped;
    if plugins.is_empty() {
        bail!("the configuration has no plugin to chain moat-cni after");
    }
    if delegating {
        let Some(at) = plugins.iter().position(|p| p["type"] != "loopback") else {
            bail!("the configuration has no plugin that makes the pod's interface to delegate to");
        };
        let mut wrapper = entry.clone();
        wrapper["delegate"] = plugins[at].clone();
        plugins[at] = wrapper;
    } else {
        plugins.push(entry.clone());
    }
    Ok(list)
}

/// Whether `path` names a policy file (`NAME.toml`, `NAME.json`).
fn is_policy(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "toml" || e == "json")
        && !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Makes `to`'s policies those of `from`: each copied (by a rename), and one no longer in
/// `from` removed (a pod naming it is then refused, not served by a policy withdrawn).
fn sync_policies(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("make {}", to.display()))?;
    let listed = |dir: &Path| -> anyhow::Result<Vec<PathBuf>> {
        Ok(std::fs::read_dir(dir)
            .with_context(|| format!("read {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_policy(p) && p.is_file())
            .collect())
    };
    let new = listed(from)?;
    for p in &new {
        let name = p.file_name().context("a file name")?;
        replace(&to.join(name), &std::fs::read(p)?, 0o644)?;
    }
    for old in listed(to)? {
        if !new.iter().any(|p| p.file_name() == old.file_name()) {
            std::fs::remove_file(&old)?;
        }
    }
    Ok(())
}

/// `moat-cni install ...`.
pub(crate) fn main(args: &[String]) -> anyhow::Result<()> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let a = parse(args)?;
    let entry: Value = serde_json::from_slice(
        &std::fs::read(&a.entry).with_context(|| format!("read {}", a.entry.display()))?,
    )
    .with_context(|| format!("{} is not JSON", a.entry.display()))?;
    if let Some(from) = &a.policies {
        let to = entry["policyDir"].as_str().with_context(|| {
            format!(
                "--policies: the entry ({}) names no policyDir to put them in",
                a.entry.display()
            )
        })?;
        sync_policies(from, Path::new(to))?;
    }
    let exe = std::fs::read("/proc/self/exe").context("read this executable")?;
    std::fs::create_dir_all(&a.bin_dir)?;
    replace(&a.bin_dir.join("moat-cni"), &exe, 0o755)?;
    let target = chain_in(&a.conf_dir, &entry, a.delegate)?;
    eprintln!(
        "moat-cni: installed in {} and chained in {}",
        a.bin_dir.display(),
        target.display()
    );
    if a.wait {
        watch(&a.conf_dir, &entry, a.delegate)?;
    }
    Ok(())
}

/// Chains `entry` into the configuration the runtime chooses in `conf_dir`; that file.
fn chain_in(conf_dir: &Path, entry: &Value, delegating: bool) -> anyhow::Result<PathBuf> {
    let path = chosen(conf_dir)?;
    let conf: Value = serde_json::from_slice(&std::fs::read(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let list = placed(&conf, entry, delegating).with_context(|| path.display().to_string())?;
    // A single plugin's file becomes a conflist: the runtime reads it by that name (the
    // single file goes: sorting first, it would still be the one chosen).
    let target = path.with_extension("conflist");
    replace(
        &target,
        serde_json::to_string_pretty(&list)?.as_bytes(),
        0o644,
    )?;
    if target != path {
        std::fs::remove_file(&path)?;
    }
    Ok(target)
}

/// Whether the configuration the runtime chooses in `conf_dir` has moat-cni as `entry`
/// places it (placing it again changes nothing).
fn still_chained(conf_dir: &Path, entry: &Value, delegating: bool) -> bool {
    chosen(conf_dir)
        .ok()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|c| placed(&c, entry, delegating).is_ok_and(|again| again == c))
}

/// How often `--wait` looks at the node's configuration.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Stays until signalled, chaining `entry` again whenever the configuration the runtime
/// chooses no longer ends with it: a cluster's network agent rewrites its own file when it
/// restarts or upgrades, and a new file may come to sort first; pods made then would
/// otherwise get no moat.
fn watch(conf_dir: &Path, entry: &Value, delegating: bool) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use std::os::fd::AsFd;
    let mut mask = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block()?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
    loop {
        let mut fds = [nix::poll::PollFd::new(
            sigfd.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let timeout = nix::poll::PollTimeout::try_from(RECHECK.as_millis() as i32)
            .unwrap_or(nix::poll::PollTimeout::MAX);
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        if let Ok(Some(info)) = sigfd.read_signal() {
            eprintln!(
                "moat-cni: signal {}: stopping (the node keeps moat-cni chained)",
                info.ssi_signo
            );
            return Ok(());
        }
        if !still_chained(conf_dir, entry, delegating) {
            match chain_in(conf_dir, entry, delegating) {
                Ok(p) => eprintln!(
                    "moat-cni: chained again in {} (it had been rewritten)",
                    p.display()
                ),
                Err(e) => eprintln!("moat-cni: cannot chain again: {e:#} (trying again in 2 s)"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn moat_goes_last_and_once() {
        let entry = json!({"type": "moat-cni", "policy": "public-only"});
        let list = json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "bridge"}, {"type": "portmap"}]});
        let once = placed(&list, &entry, false).unwrap();
        assert_eq!(once["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(once["plugins"][2], entry);
        // Again, with another entry: replaced, not added.
        let other = json!({"type": "moat-cni", "policy": "allow-all"});
        let twice = placed(&once, &other, false).unwrap();
        assert_eq!(twice["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(twice["plugins"][2], other);
        // A single plugin's configuration becomes a list.
        let single =
            json!({"cniVersion": "0.4.0", "name": "net", "type": "bridge", "bridge": "cni0"});
        let made = placed(&single, &entry, false).unwrap();
        assert_eq!(made["name"], "net");
        assert_eq!(
            made["plugins"][0],
            json!({"type": "bridge", "bridge": "cni0"})
        );
        assert_eq!(made["plugins"][1], entry);
        // Not moat's entry, not a configuration, nothing to chain after: refused.
        assert!(placed(&list, &json!({"type": "bridge"}), false).is_err());
        assert!(placed(&json!({"x": 1}), &entry, false).is_err());
        // Delegating: moat-cni takes the place of the first plugin that is not loopback,
        // which becomes its delegate; again, or back to following, from either form.
        let with_lo = json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "loopback"}, {"type": "bridge", "bridge": "cni0"}, {"type": "portmap"}]});
        let wrapped = placed(&with_lo, &entry, true).unwrap();
        assert_eq!(wrapped["plugins"][1]["type"], "moat-cni");
        assert_eq!(
            wrapped["plugins"][1]["delegate"],
            json!({"type": "bridge", "bridge": "cni0"})
        );
        assert_eq!(wrapped["plugins"][2]["type"], "portmap");
        assert_eq!(placed(&wrapped, &entry, true).unwrap(), wrapped);
        let back = placed(&wrapped, &entry, false).unwrap();
        assert_eq!(back, placed(&with_lo, &entry, false).unwrap());
        assert!(
            placed(
                &json!({"cniVersion": "1.0.0", "plugins": [{"type": "loopback"}]}),
                &entry,
                true
            )
            .is_err()
        );
        // A version moat-cni does not speak: every ADD would fail, so it is refused now.
        let newer = json!({"cniVersion": "1.1.0", "name": "k8s", "plugins": [{"type": "bridge"}]});
        assert!(format!("{:#}", placed(&newer, &entry, false).unwrap_err()).contains("1.1.0"));
        assert!(placed(&json!({"plugins": [{"type": "moat-cni"}]}), &entry, false).is_err());
    }

    #[test]
    fn every_path_is_asked_for() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(parse(&s(&["--bin-dir", "/b", "--conf-dir", "/c"])).is_err());
        assert!(parse(&s(&["--bin-dir"])).is_err());
        assert!(parse(&s(&["--what"])).is_err());
        let a = parse(&s(&[
            "--bin-dir",
            "/b",
            "--conf-dir",
            "/c",
            "--entry",
            "/e",
            "--wait",
        ]))
        .unwrap();
        assert!(a.wait && a.entry == Path::new("/e"));
    }
}
