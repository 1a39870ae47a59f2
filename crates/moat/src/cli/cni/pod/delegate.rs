//! moat-cni as a delegating plugin: the entry's `"delegate"` is the configuration of the
//! plugin that makes the pod's interface (the cluster's own, `bridge`, ...), and moat-cni
//! runs it itself, as a runtime would, but with moat's namespace as `CNI_NETNS`. The
//! interface is then made, addressed and routed where moat serves from, and nothing has to
//! move between namespaces — a move the kernel takes 15 to 40 ms over on its own
//! (bench/results/cni.md). The delegate's result comes back with the interface placed in
//! the pod (where moat's TAP has its name and addresses) and the TAP's MAC. DEL runs the
//! delegate's DEL in moat's namespace (it removes the interface and frees its address).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::super::config::{Conf, Env};
use super::super::{CniError, code};
use super::{State, given, make_ns, published, start_engine};

/// How long a delegate may take.
const LIMIT: Duration = Duration::from_secs(60);

/// Whether the entry names a delegate (checked: an object with a plain `type`).
pub(super) fn configured(conf: &Conf) -> Result<bool, CniError> {
    match &conf.raw["delegate"] {
        Value::Null => Ok(false),
        Value::Object(d) => {
            let plain = d.get("type").and_then(Value::as_str).is_some_and(|t| {
                !t.is_empty()
                    && t != "moat-cni"
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                    && !t.starts_with('.')
            });
            if plain {
                Ok(true)
            } else {
                Err(CniError::new(
                    code::INVALID_CONFIG,
                    "delegate: expected the configuration of the plugin that makes the pod's interface, with its \"type\" (a plugin's name, not moat-cni)",
                ))
            }
        }
        _ => Err(CniError::new(
            code::INVALID_CONFIG,
            "delegate: expected an object (a plugin's configuration)",
        )),
    }
}

/// The delegate's executable: its `type` in one of `CNI_PATH`'s directories.
fn executable(kind: &str) -> Result<PathBuf, CniError> {
    let path = std::env::var_os("CNI_PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("delegate: no plugin {kind:?} in CNI_PATH"),
            )
        })
}

/// Runs the delegate's `command` with `netns` as its CNI_NETNS (none: unset, as a DEL
/// after the namespace is gone may be) and `prev` as its previous result; its result.
pub(super) fn call(
    conf: &Conf,
    env: &Env,
    command: &str,
    netns: Option<&Path>,
    prev: Option<&Value>,
) -> Result<Option<Value>, CniError> {
    let mut net = conf.raw["delegate"].clone();
    let kind = net["type"].as_str().unwrap_or_default().to_owned();
    net["cniVersion"] = conf.raw["cniVersion"].clone();
    net["name"] = conf.raw["name"].clone();
    if !conf.raw["runtimeConfig"].is_null() && net["runtimeConfig"].is_null() {
        net["runtimeConfig"] = conf.raw["runtimeConfig"].clone();
    }
    if let Some(prev) = prev.filter(|p| !p.is_null()) {
        net["prevResult"] = prev.clone();
    }
    let failed = |msg: String| CniError::new(code::SETUP, format!("delegate {kind}: {msg}"));
    // Its configuration, its output and its errors in memory files, not pipes: a delegate
    // that writes much, or leaves a process holding its output open (a daemon it starts),
    // cannot make moat-cni wait on a pipe.
    let files = (|| -> std::io::Result<_> {
        let out = memory_file(b"")?;
        let err = memory_file(b"")?;
        Ok((memory_file(net.to_string().as_bytes())?, out, err))
    })();
    let (input, mut out, mut err) = files.map_err(|e| failed(format!("its files: {e}")))?;
    let (out_w, err_w) = out
        .try_clone()
        .and_then(|o| Ok((o, err.try_clone()?)))
        .map_err(|e| failed(format!("its files: {e}")))?;
    let mut c = Command::new(executable(&kind)?);
    c.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &env.container)
        .env("CNI_IFNAME", &env.ifname)
        .stdin(Stdio::from(input))
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    match netns {
        Some(ns) => c.env("CNI_NETNS", ns),
        None => c.env_remove("CNI_NETNS"),
    };
    let mut child = c.spawn().map_err(|e| failed(format!("start it: {e}")))?;
    drop(c);
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("no answer within {} s", LIMIT.as_secs())));
            }
        }
    };
    let read = |f: &mut std::fs::File, limit: u64| {
        let mut bytes = Vec::new();
        let _ = f
            .seek(SeekFrom::Start(0))
            .and_then(|_| f.take(limit).read_to_end(&mut bytes));
        bytes
    };
    let answer: Value = serde_json::from_slice(&read(&mut out, 1 << 20)).unwrap_or(Value::Null);
    let err = String::from_utf8_lossy(&read(&mut err, 64 << 10)).into_owned();
    if !status.success() {
        // Its own error, passed on with its code.
        let code = answer["code"]
            .as_u64()
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(code::SETUP);
        let msg = answer["msg"].as_str().unwrap_or(err.trim()).to_owned();
        return Err(CniError::new(code, format!("delegate {kind}: {msg}"))
            .details(answer["details"].as_str().unwrap_or_default().to_owned()));
    }
    Ok((!answer.is_null()).then_some(answer))
}

/// A file in memory holding `contents`, read from its start.
fn memory_file(contents: &[u8]) -> std::io::Result<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(c"moat-cni", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(contents)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// ADD through the delegate: moat's namespace made, the delegate's ADD run there, the
/// engine started with the addresses it gave; the result as the pod sees it.
pub(super) fn serve(
    state: &mut State,
    dir: &Path,
    conf: &Conf,
    env: &Env,
    opts: crate::cli::run::RunOptions,
) -> Result<Value, CniError> {
    let moat_path = make_ns(state, dir)?;
    let moat_id = state
        .moat_id
        .ok_or_else(|| CniError::new(code::SETUP, "moat's namespace was not recorded"))?;
    let prev = &conf.raw["prevResult"];
    let mut result = call(conf, env, "ADD", Some(&moat_path), Some(prev))?
        .ok_or_else(|| CniError::new(code::SETUP, "the delegate's ADD gave no result"))?;
    let given = given(&result, &state.ifname, moat_id)?;
    let opts = published(conf, opts, &given)?;
    let mac = start_engine(state, dir, given.pod, opts)?;
    let entry = &mut result["interfaces"][given.index];
    entry["sandbox"] = Value::from(state.netns.to_string_lossy().into_owned());
    entry["mac"] = Value::from(mac);
    Ok(result)
}
