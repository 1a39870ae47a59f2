//! Serving a network namespace someone else made: [`SandboxBuilder::attach`] (`moat
//! attach`, `moat netns create`). The settings are a sandbox's, assembled the same way
//! (`builder.rs`); only the network ones apply — policy, DNS, TLS, secrets, published
//! ports, limits on connections and buffers, the audit log and its summary — and instead
//! of a sandbox of moat's own, moat's TAP goes into the namespace given
//! (`moat_sandbox::netns`), while the engine runs here.
//!
//! What runs in that namespace was started by someone else (a container runtime), so moat
//! cannot give it the environment a sandbox gets: [`Attached::placeholders`] and
//! [`Attached::ca_pem`] say what its programs need (the secrets' placeholders, the
//! interception CA to trust), and [`Attached::resolv_conf`] the resolver line.

use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use moat_engine::{AuditLog, EngineHandle, LinkConfig, TapDevice, Terminate};
use moat_sandbox::NetSpec;
use moat_sandbox::netns::{self, NsId, Takeover, Watch};

use crate::api::{Error, SandboxBuilder, io_err};

/// A network namespace to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    path: PathBuf,
    takeover: Takeover,
    interface: String,
    pod: Option<PodAddresses>,
}

/// One address family of a pod's interface as its network plugin gave it (moat-cni): the
/// pod's address, the prefix of its network, and its gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PodAddress<A> {
    pub(crate) address: A,
    pub(crate) prefix: u8,
    pub(crate) gateway: A,
}

/// The addresses a pod keeps when moat's TAP takes its interface's place: each given as a
/// host address (/32, /128) with its gateway on the link, so that everything the pod
/// sends, to its own network's other pods too, goes through moat; moat's side of the link
/// (the engine) keeps the network's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct PodAddresses {
    pub(crate) v4: Option<PodAddress<Ipv4Addr>>,
    pub(crate) v6: Option<PodAddress<Ipv6Addr>>,
}

impl PodAddresses {
    /// The engine's link with the pod's addresses in place of moat's defaults.
    pub(crate) fn apply(&self, link: &mut LinkConfig) {
        if let Some(v4) = self.v4 {
            (link.guest_v4, link.prefix_v4, link.gateway_v4) = (v4.address, v4.prefix, v4.gateway);
        }
        if let Some(v6) = self.v6 {
            (link.guest_v6, link.prefix_v6, link.gateway_v6) = (v6.address, v6.prefix, v6.gateway);
        }
    }

    /// The TAP's side: host addresses where the pod's are given.
    fn narrow(&self, spec: &mut NetSpec) {
        if self.v4.is_some() {
            spec.prefix_v4 = 32;
        }
        if self.v6.is_some() {
            spec.prefix_v6 = 128;
        }
    }
}

impl Netns {
    /// The namespace at `path` (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn at(path: impl Into<PathBuf>) -> Netns {
        Netns {
            path: path.into(),
            takeover: Takeover::Refuse,
            interface: "eth0".to_owned(),
            pod: None,
        }
    }

    /// moat's interface in the namespace is called `name` instead of `eth0`, and carries
    /// the pod's `addresses` (moat-cni).
    pub(crate) fn pod(mut self, name: &str, addresses: PodAddresses) -> Netns {
        self.interface = name.to_owned();
        self.pod = Some(addresses);
        self
    }

    /// The namespace process `pid` runs in.
    pub fn of_pid(pid: u32) -> Netns {
        Netns::at(format!("/proc/{pid}/ns/net"))
    }

    /// Take the namespace's `eth0` over (it is deleted) instead of refusing a namespace
    /// that has one.
    pub fn replace(mut self, replace: bool) -> Netns {
        self.takeover = if replace {
            Takeover::Replace
        } else {
            Takeover::Refuse
        };
        self
    }

    /// The namespace's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A namespace moat serves: its engine runs until [`Attached::stop`].
pub struct Attached {
    engine: Option<EngineHandle>,
    audit: AuditLog,
    watch: Watch,
    terminate: Terminate,
    placeholders: Vec<(OsString, OsString)>,
    ca_pem: Option<String>,
    resolv_conf: String,
    replaced: bool,
    spec: NetSpec,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("watch", &self.watch)
            .field("replaced", &self.replaced)
            .finish_non_exhaustive()
    }
}

impl SandboxBuilder {
    /// Serves the network namespace `netns` with this builder's network settings instead
    /// of making a sandbox: moat's TAP goes into it as `eth0` (addresses, routes, MTU; the
    /// gateway answers DNS), and the engine runs in this process's namespace, so its
    /// sockets leave from here. The file system, limit and command settings do not apply.
    ///
    /// Refused, with the reason, when `netns` is not a network namespace, is this
    /// process's own, cannot be entered, or already has a way out: an interface other than
    /// `lo`, or a default route (an `eth0` is taken over with [`Netns::replace`]).
    pub fn attach(self, netns: Netns) -> Result<Attached, Error> {
        let pod = netns.pod;
        let assembly = self
            .network(|mut n| {
                n.pod = pod;
                n
            })
            .assemble()?;
        let Some(mut spec) = assembly.sandbox.network.clone() else {
            return Err(Error::Io {
                what: "attach to a network namespace",
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "this policy allows nothing, so there is no interface to serve a namespace with (--policy none); give a policy that allows something",
                ),
            });
        };
        spec.tap_name.clone_from(&netns.interface);
        if let Some(pod) = &netns.pod {
            pod.narrow(&mut spec);
        }
        let attached = netns::attach(&netns.path, &spec, netns.takeover)?;
        let placeholders = crate::secrets::env_of(&assembly.engine.secrets);
        let ca_pem = assembly
            .engine
            .tls
            .as_ref()
            .map(|t| t.ca.cert_pem().to_owned());
        let resolv_conf = assembly.sandbox.resolv_conf.clone().unwrap_or_default();
        let terminate = assembly.engine.terminate.clone();
        assembly.audit.event(
            "start",
            "allow",
            "-",
            "the namespace is served",
            vec![
                (
                    "version",
                    serde_json::Value::from(env!("CARGO_PKG_VERSION")),
                ),
                ("network", serde_json::Value::from("moat")),
            ],
        );
        let device = TapDevice::with_offloads(attached.tap).map_err(io_err("use the TAP"))?;
        moat_sandbox::memory::large_allocations_from_fresh_pages();
        let engine = moat_engine::spawn(Box::new(device), assembly.engine)
            .map_err(io_err("start the engine"))?;
        Ok(Attached {
            engine: Some(engine),
            audit: assembly.audit,
            watch: Watch::new(attached.ns, &netns.path),
            terminate,
            placeholders,
            ca_pem,
            resolv_conf,
            replaced: attached.replaced,
            spec,
        })
    }
}

impl Attached {
    /// Whether a process is in the namespace now (see `moat_sandbox::netns::Watch`).
    pub fn occupied(&mut self) -> bool {
        self.watch.occupied()
    }

    /// Whether the namespace's path still names it (its runtime has not removed it).
    pub fn named(&self) -> bool {
        self.watch.named()
    }

    /// The interface moat made in the namespace: its name, addresses and gateway.
    pub fn interface(&self) -> &NetSpec {
        &self.spec
    }

    /// Why serving must end because the namespace's own traffic asked for it, once it has:
    /// a secret violation under `BlockAndTerminate`, or an audit log that cannot be written
    /// under `audit_required`.
    pub fn terminated(&self) -> Option<String> {
        self.terminate.requested()
    }

    /// Why serving must end, once it must: a secret violation under `BlockAndTerminate`
    /// or an audit log that cannot be written under `audit_required` asked to stop, or the
    /// engine stopped on its own (its interface failed).
    pub fn must_stop(&self) -> Option<String> {
        if let Some(why) = self.terminate.requested() {
            return Some(why);
        }
        self.engine
            .as_ref()
            .is_none_or(EngineHandle::finished)
            .then(|| "moat's interface in the namespace failed".to_owned())
    }

    /// Each secret's variable and placeholder: what the namespace's programs must hold
    /// (e.g. `podman run -e NAME=PLACEHOLDER`).
    pub fn placeholders(&self) -> &[(OsString, OsString)] {
        &self.placeholders
    }

    /// The interception CA's certificate (PEM), which the namespace's programs must trust,
    /// when TLS is intercepted.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The resolv.conf that sends lookups to moat (the gateway).
    pub fn resolv_conf(&self) -> &str {
        &self.resolv_conf
    }

    /// Whether the namespace's own `eth0` was deleted to make room for moat's.
    pub fn replaced(&self) -> bool {
        self.replaced
    }

    /// The audit log (its summary, for the end).
    pub(crate) fn audit(&self) -> AuditLog {
        self.audit.clone()
    }

    /// Stops the engine (the TAP goes with it) and writes the `end` event; what the
    /// engine counted.
    pub fn stop(mut self) -> moat_engine::Counters {
        let counters = self
            .engine
            .take()
            .and_then(|e| e.stop().ok())
            .unwrap_or_default();
        crate::builder::audit_end(&self.audit, None, &counters);
        counters
    }

    /// The namespace served.
    pub fn namespace(&self) -> NsId {
        self.watch.namespace()
    }
}
