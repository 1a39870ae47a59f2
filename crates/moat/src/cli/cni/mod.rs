//! `moat-cni`: moat as a CNI plugin (the Container Network Interface, versions 0.3.0 to
//! 1.0.0), chained after the plugin that gives a pod its interface (`bridge`, a cluster's
//! own), so that containerd, CRI-O, Podman's CNI backend and every Kubernetes pod get
//! moat's policy while keeping the address the cluster gave them. The same executable as
//! `moat`, called by that name (a link or a copy in the runtime's plugin directory).
//!
//! # Theory of operation
//! The runtime calls the plugin with `CNI_COMMAND` and the other `CNI_*` variables set and
//! the network's configuration on stdin; the plugin answers on stdout (a result, or an
//! error object with a code) and by its exit status. Per pod (`pod.rs`):
//! - **ADD**: the previous plugin's result says which interface the pod got and what it
//!   carries. moat makes a namespace of its own for the pod (`/run/netns/moat-ID`) and
//!   moves the interface there with its addresses and routes; its TAP takes the
//!   interface's name in the pod, with the pod's addresses; and a moat engine, one process
//!   per pod, serves the pod from moat's namespace, so what leaves, leaves from the pod's
//!   own address. What moat did is in `/run/moat/cni/ID`; the result passes through with
//!   the interface as the pod now sees it (moat's TAP's MAC).
//! - **DEL**: the engine stops, the interface goes back to the pod (where the previous
//!   plugin's DEL finds it), moat's namespace and state go. Whatever is missing (a second
//!   DEL, an engine that crashed, namespaces gone with a reboot) is skipped: DEL succeeds
//!   whenever nothing of the pod's is left.
//! - **CHECK**: the engine runs and the pod has moat's interface.
//!
//! Delegating (`pod/delegate.rs`): with the entry's `"delegate"` (the configuration of the
//! plugin that makes the interface), moat-cni runs that plugin itself with moat's namespace
//! as `CNI_NETNS`, so the interface is made where moat serves from and nothing moves; DEL
//! runs the delegate's DEL there.
//!
//! Everything given is checked before anything is changed (`config.rs`), and an ADD that
//! fails part way undoes what it did, so an error leaves the pod as the previous plugin
//! left it.

mod config;
mod install;
mod pod;

use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::{Value, json};

use config::{Conf, Env, MAX_CONFIG, VERSIONS};

/// The protocol's error codes (CNI spec, "Error"), and moat-cni's own from 100.
pub(super) mod code {
    /// Incompatible CNI version.
    pub(crate) const VERSION: u32 = 1;
    /// Invalid necessary environment variables.
    pub(crate) const ENV: u32 = 4;
    /// Failed to decode content.
    pub(crate) const DECODE: u32 = 6;
    /// Invalid network config.
    pub(crate) const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub(crate) const AGAIN: u32 = 11;
    /// The container is served already (a second ADD).
    pub(crate) const ALREADY: u32 = 100;
    /// The pod asks for a policy the policy directory does not have.
    pub(crate) const UNKNOWN_POLICY: u32 = 101;
    /// Setting the pod up failed (undone).
    pub(crate) const SETUP: u32 = 102;
    /// CHECK found the pod not served.
    pub(crate) const NOT_SERVED: u32 = 103;
    /// The pod's namespace may not choose the policy it names (`allowedPolicies`).
    pub(crate) const NOT_ALLOWED: u32 = 104;
}

/// An error result: its code, what went wrong, and more detail when there is some.
#[derive(Debug)]
pub(crate) struct CniError {
    code: u32,
    msg: String,
    details: String,
}

impl CniError {
    pub(crate) fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub(crate) fn details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }
}

/// Whether this process was called as the plugin.
pub(crate) fn called_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == "moat-cni"))
        .unwrap_or(false)
}

/// The plugin's entry point.
pub(crate) fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        return tool(&args);
    }
    let env = Env::from_process();
    let version = std::cell::RefCell::new(String::from("1.0.0"));
    let outcome = env.and_then(|env| run(&env, &version));
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(result)) => {
            let _ = writeln!(out, "{result}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            let mut error = json!({"cniVersion": *version.borrow(), "code": e.code, "msg": e.msg});
            if !e.details.is_empty() {
                error["details"] = Value::from(e.details.clone());
            }
            let _ = writeln!(out, "{error}");
            // For whoever reads the runtime's log rather than the result.
            eprintln!(
                "moat-cni: {}{}",
                e.msg,
                if e.details.is_empty() {
                    String::new()
                } else {
                    format!(": {}", e.details)
                }
            );
            ExitCode::FAILURE
        }
    }
}

/// moat-cni's own commands (`install`), for setting a node up.
pub(crate) fn tool(args: &[String]) -> ExitCode {
    let done = match args.first().map(String::as_str) {
        Some("install") => install::main(&args[1..]),
        _ => Err(anyhow::anyhow!(
            "expected: moat-cni install --help (a runtime runs moat-cni with no arguments, CNI_COMMAND set)"
        )),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moat-cni: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(env: &Env, version: &std::cell::RefCell<String>) -> Result<Option<Value>, CniError> {
    let mut text = Vec::new();
    std::io::stdin()
        .take(MAX_CONFIG + 1)
        .read_to_end(&mut text)
        .map_err(|e| CniError::new(code::DECODE, format!("read the configuration: {e}")))?;
    if text.len() as u64 > MAX_CONFIG {
        return Err(CniError::new(
            code::DECODE,
            format!("the configuration is over {} KiB", MAX_CONFIG >> 10),
        ));
    }
    if env.command == "VERSION" {
        let asked = serde_json::from_slice::<Value>(&text)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "1.0.0".to_owned());
        return Ok(Some(
            json!({"cniVersion": asked, "supportedVersions": VERSIONS}),
        ));
    }
    let conf = Conf::parse(&text)?;
    version.borrow_mut().clone_from(&conf.version);
    match env.command.as_str() {
        "ADD" => pod::add(env, &conf).map(Some),
        "DEL" => pod::del(env, &conf).map(|()| None),
        "CHECK" => pod::check(env, &conf).map(|()| None),
        other => Err(CniError::new(
            code::ENV,
            format!("CNI_COMMAND {other:?}: expected ADD, DEL, CHECK or VERSION"),
        )),
    }
}
