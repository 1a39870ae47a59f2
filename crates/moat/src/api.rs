//! The Rust API of shared/API.md §1–2: [`Sandbox::builder`], [`NetworkBuilder`], `exec`,
//! `spawn`, `fs` and `stop`.
//!
//! A program that creates sandboxes must call [`init`] first thing in `main`: the sandbox's
//! supervisor is that same program started again, and `init` is where it takes over.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use moat_engine::{AuditLog, EngineConfig, EngineHandle, LinkConfig, TapDevice};
use moat_policy::NetworkPolicy;
use moat_sandbox::{SandboxConfig, SpawnSpec};

pub use moat_engine::DenyMode;
pub use moat_sandbox::ExitStatus;

/// Takes over when this process was started as a sandbox supervisor (it then never
/// returns). Call it first in `main` of any program that creates sandboxes.
pub fn init() {
    if let Some(code) = moat_sandbox::supervisor_entry() {
        std::process::exit(code);
    }
}

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The sandbox name is not `[a-z0-9_-]{1,63}`.
    #[error("invalid sandbox name {0:?}: expected 1-63 characters of a-z, 0-9, - and _")]
    Name(String),
    /// The policy is invalid.
    #[error(transparent)]
    Policy(#[from] moat_policy::PolicyError),
    /// Building, running or talking to the sandbox failed.
    #[error(transparent)]
    Sandbox(#[from] moat_sandbox::SandboxError),
    /// A port could not be published.
    #[error(transparent)]
    Publish(#[from] crate::publish::PublishError),
    /// A path could not be granted.
    #[error(transparent)]
    Grant(#[from] crate::setup::GrantError),
    /// An I/O operation on moat's side failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Where audit events go.
pub enum AuditSink {
    /// Append JSON lines to a file.
    File(PathBuf),
    /// Write JSON lines to standard error.
    Stderr,
    /// Write JSON lines to any writer.
    Writer(Box<dyn Write + Send>),
}

impl AuditSink {
    /// Append to `path`.
    pub fn file(path: impl Into<PathBuf>) -> AuditSink {
        AuditSink::File(path.into())
    }

    fn open(self) -> Result<Box<dyn Write + Send>, Error> {
        Ok(match self {
            AuditSink::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(io_err("open the audit log"))?,
            ),
            AuditSink::Stderr => Box::new(io::stderr()),
            AuditSink::Writer(w) => w,
        })
    }
}

/// Network settings (shared/API.md §2), used in [`SandboxBuilder::network`].
#[derive(Debug, Clone)]
pub struct NetworkBuilder {
    policy: NetworkPolicy,
    block_domains: Vec<String>,
    block_domain_suffixes: Vec<String>,
    dns_rebind_protection: bool,
    max_connections: usize,
    max_buffer_memory: usize,
    mtu: Option<usize>,
    dns_servers: Vec<SocketAddr>,
    deny_mode: DenyMode,
}

impl Default for NetworkBuilder {
    fn default() -> NetworkBuilder {
        NetworkBuilder {
            policy: NetworkPolicy::public_only(),
            block_domains: Vec::new(),
            block_domain_suffixes: Vec::new(),
            dns_rebind_protection: true,
            max_connections: moat_engine::DEFAULT_MAX_CONNECTIONS,
            max_buffer_memory: moat_engine::DEFAULT_MAX_BUFFER_MEMORY,
            mtu: None,
            dns_servers: Vec::new(),
            deny_mode: DenyMode::Drop,
        }
    }
}

impl NetworkBuilder {
    /// Replaces the default `public_only()` policy.
    pub fn policy(mut self, policy: NetworkPolicy) -> NetworkBuilder {
        self.policy = policy;
        self
    }

    /// Lookups of exactly `domain` (any letter case, trailing dot ignored) answer NXDOMAIN
    /// and never leave the host. Repeatable. An invalid name fails [`SandboxBuilder::create`].
    pub fn block_domain(mut self, domain: impl Into<String>) -> NetworkBuilder {
        self.block_domains.push(domain.into());
        self
    }

    /// Lookups of every name strictly below `suffix` (`.tracking.com` or `tracking.com`)
    /// answer NXDOMAIN and never leave the host. Repeatable.
    pub fn block_domain_suffix(mut self, suffix: impl Into<String>) -> NetworkBuilder {
        self.block_domain_suffixes.push(suffix.into());
        self
    }

    /// Removes DNS answers that point at private, loopback, link-local, metadata or
    /// unspecified addresses. Default `true`.
    pub fn dns_rebind_protection(mut self, enabled: bool) -> NetworkBuilder {
        self.dns_rebind_protection = enabled;
        self
    }

    /// At most `max` concurrent connections (TCP connections and UDP flows); the next is
    /// refused. Default 1024.
    pub fn max_connections(mut self, max: usize) -> NetworkBuilder {
        self.max_connections = max;
        self
    }

    /// *Extension:* what the connections' socket buffers may hold in all, the engine's
    /// own frames and bookkeeping included. Past it, new connections get smaller windows,
    /// data waits (the peer's TCP window closes) and, when not even a small window fits,
    /// connections are refused (audit rule `max_buffer_memory`). Default 256 MiB; at
    /// least 4 MiB (less is an error at `create`).
    pub fn max_buffer_memory(mut self, bytes: u64) -> NetworkBuilder {
        self.max_buffer_memory = usize::try_from(bytes).unwrap_or(usize::MAX);
        self
    }

    /// *Extension:* the sandbox interface's MTU, 1280 to 65520 (outside: an error at
    /// `create`). Default 65520: large frames cost less. The CLI's `--mtu`.
    pub fn mtu(mut self, bytes: u32) -> NetworkBuilder {
        self.mtu = Some(usize::try_from(bytes).unwrap_or(usize::MAX));
        self
    }

    /// *Extension:* an upstream resolver (`ip` or `ip:port`), tried in the order added.
    /// Default: the host's resolv.conf. An unparsable address is ignored with no effect
    /// other than this resolver missing; prefer [`NetworkBuilder::dns_server_addr`].
    pub fn dns_server(self, addr: impl AsRef<str>) -> NetworkBuilder {
        let text = addr.as_ref();
        let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
            text.parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, 53))
        });
        match parsed {
            Some(sa) => self.dns_server_addr(sa),
            None => self,
        }
    }

    /// *Extension:* an upstream resolver.
    pub fn dns_server_addr(mut self, addr: SocketAddr) -> NetworkBuilder {
        self.dns_servers.push(addr);
        self
    }

    /// *Extension:* how denied flows are answered. Default [`DenyMode::Drop`].
    pub fn deny_mode(mut self, mode: DenyMode) -> NetworkBuilder {
        self.deny_mode = mode;
        self
    }
}

/// Builds a [`Sandbox`].
pub struct SandboxBuilder {
    name: String,
    network: NetworkBuilder,
    env: Vec<(OsString, OsString)>,
    workdir: PathBuf,
    workdir_host: Option<PathBuf>,
    audit: Option<AuditSink>,
    helper: Option<PathBuf>,
    publish: Vec<String>,
    ro: Vec<PathBuf>,
    rw: Vec<PathBuf>,
    limits: moat_sandbox::Limits,
    simulated_hosts: Vec<IpAddr>,
}

impl SandboxBuilder {
    /// Addresses on this host that stand for other machines (`moat demo`'s world), judged
    /// as what they are rather than as the host's loopback.
    pub(crate) fn simulated_hosts(mut self, addrs: Vec<IpAddr>) -> SandboxBuilder {
        self.simulated_hosts = addrs;
        self
    }

    /// *Extension:* makes host `path` visible, read-only, at the same path inside
    /// (repeatable). Nothing of the host beyond the system directories is visible otherwise.
    pub fn ro(mut self, path: impl Into<PathBuf>) -> SandboxBuilder {
        self.ro.push(path.into());
        self
    }

    /// *Extension:* makes host `path` visible and writable at the same path inside
    /// (repeatable). Set-id bits cannot be set on what the sandbox writes there.
    pub fn rw(mut self, path: impl Into<PathBuf>) -> SandboxBuilder {
        self.rw.push(path.into());
        self
    }

    /// *Extension:* at most `bytes` of memory for everything in the sandbox (its tmpfs
    /// files included); the kernel kills a process that goes over.
    pub fn memory(mut self, bytes: u64) -> SandboxBuilder {
        self.limits.memory = Some(bytes);
        self
    }

    /// *Extension:* at most `n` processes and threads in the sandbox (default 4096).
    pub fn pids_limit(mut self, n: u64) -> SandboxBuilder {
        self.limits.pids = Some(n);
        self
    }

    /// *Extension:* at most `cpus` CPUs' worth of time (1.5 = one and a half cores).
    pub fn cpus(mut self, cpus: f64) -> SandboxBuilder {
        self.limits.cpus = Some(cpus);
        self
    }

    /// Publishes guest TCP port `guest` on the host's 127.0.0.1:`host`. The port is bound
    /// by [`SandboxBuilder::create`], which fails if it is taken.
    pub fn port(mut self, host: u16, guest: u16) -> SandboxBuilder {
        self.publish.push(format!("{host}:{guest}"));
        self
    }

    /// *Extension:* publishes a port given as `[HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]`.
    pub fn publish(mut self, spec: impl Into<String>) -> SandboxBuilder {
        self.publish.push(spec.into());
        self
    }

    /// Configures the network.
    pub fn network(mut self, f: impl FnOnce(NetworkBuilder) -> NetworkBuilder) -> SandboxBuilder {
        self.network = f(self.network);
        self
    }

    /// Sets an environment variable for commands (the environment is otherwise minimal:
    /// the caller's PATH, HOME, USER; nothing else of the host's).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> SandboxBuilder {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    /// The writable work directory's path inside the sandbox (default `/workspace`), backed
    /// by a private directory removed at stop.
    pub fn workdir(mut self, path: impl Into<PathBuf>) -> SandboxBuilder {
        self.workdir = path.into();
        self
    }

    /// *Extension:* back the work directory with an existing host directory.
    pub fn workdir_from_host(mut self, host_dir: impl Into<PathBuf>) -> SandboxBuilder {
        self.workdir_host = Some(host_dir.into());
        self
    }

    /// Sends audit events to `sink`.
    pub fn audit(mut self, sink: AuditSink) -> SandboxBuilder {
        self.audit = Some(sink);
        self
    }

    /// *Extension:* the program to start as the sandbox's supervisor (it must call
    /// [`init`] first). Default: this program.
    pub fn helper(mut self, program: impl Into<PathBuf>) -> SandboxBuilder {
        self.helper = Some(program.into());
        self
    }

    /// Builds the sandbox and starts its network engine.
    pub fn create(self) -> Result<Sandbox, Error> {
        if !moat_sandbox::valid_name(&self.name) {
            return Err(Error::Name(self.name));
        }
        let policy = self.network.policy;
        let compiled = policy.compile()?;
        let block_domains = self
            .network
            .block_domains
            .iter()
            .map(|d| moat_policy::DomainName::new(d))
            .collect::<Result<Vec<_>, _>>()?;
        let block_domain_suffixes = self
            .network
            .block_domain_suffixes
            .iter()
            .map(|d| moat_policy::DomainSuffix::new(d))
            .collect::<Result<Vec<_>, _>>()?;
        if self.network.max_buffer_memory < moat_engine::MIN_BUFFER_MEMORY {
            return Err(Error::Io {
                what: "set max_buffer_memory",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{} bytes is below the least accepted, {} MiB",
                        self.network.max_buffer_memory,
                        moat_engine::MIN_BUFFER_MEMORY >> 20
                    ),
                ),
            });
        }
        let mut link = LinkConfig::default();
        if let Some(mtu) = self.network.mtu {
            link.set_mtu(mtu).map_err(|e| Error::Io {
                what: "set the MTU",
                source: io::Error::new(io::ErrorKind::InvalidInput, format!("MTU {mtu}: {e}")),
            })?;
        }
        let offline = policy.is_offline();
        let specs = self
            .publish
            .iter()
            .map(|p| p.parse::<crate::publish::PublishSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        if offline && !specs.is_empty() {
            return Err(Error::Io {
                what: "publish ports",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "this policy allows nothing, so the sandbox has no interface to publish on",
                ),
            });
        }
        let published = crate::publish::bind_all(&specs)?;
        let network = (!offline).then(|| crate::setup::net_spec(&link));
        let hosts = crate::setup::hosts_file(&self.name, &link);
        let mut config = SandboxConfig::new(self.name.clone());
        config.workdir = self.workdir.clone();
        config.workdir_host = self.workdir_host;
        config.resolv_conf = network.as_ref().map(|_| crate::setup::resolv_conf(&link));
        config.hosts = Some(hosts);
        config.network = network;
        config.helper = self.helper;
        config.grants = crate::setup::grants(&self.ro, &self.rw)?;
        config.limits = crate::setup::limits(&self.limits);
        config.asked_limits = self.limits;
        let audit = AuditLog::new(&self.name, self.audit.map(AuditSink::open).transpose()?);
        let mut inner = moat_sandbox::Sandbox::start(&config)?;
        let engine = match inner.take_tap() {
            Some(tap) => {
                let mut cfg = EngineConfig::new(compiled, audit);
                cfg.deny_mode = self.network.deny_mode;
                cfg.block_domains = block_domains;
                cfg.block_domain_suffixes = block_domain_suffixes;
                cfg.dns_rebind_protection = self.network.dns_rebind_protection;
                cfg.published = published;
                cfg.max_connections = self.network.max_connections;
                cfg.max_buffer_memory = self.network.max_buffer_memory;
                cfg.dns_servers = if self.network.dns_servers.is_empty() {
                    std::fs::read_to_string("/etc/resolv.conf")
                        .map(|t| crate::cli::resolv_conf_servers(&t))
                        .unwrap_or_default()
                } else {
                    self.network.dns_servers
                };
                cfg.link = link;
                cfg.simulated_hosts = self.simulated_hosts;
                let device = TapDevice::with_offloads(tap).map_err(io_err("use the TAP"))?;
                moat_sandbox::memory::large_allocations_from_fresh_pages();
                Some(
                    moat_engine::spawn(Box::new(device), cfg)
                        .map_err(io_err("start the engine"))?,
                )
            }
            None => None,
        };
        let mut env = crate::setup::base_env();
        for (k, v) in self.env {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        }
        Ok(Sandbox {
            inner: Arc::new(Mutex::new(Some(inner))),
            engine: Mutex::new(engine),
            env,
            workdir: self.workdir,
        })
    }
}

/// A running sandbox (shared/API.md §1). Stopping it, or dropping it, kills everything
/// inside and removes its state.
pub struct Sandbox {
    inner: Arc<Mutex<Option<moat_sandbox::Sandbox>>>,
    engine: Mutex<Option<EngineHandle>>,
    env: Vec<(OsString, OsString)>,
    workdir: PathBuf,
}

/// What a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it ended (a non-zero exit is not an error).
    pub status: ExitStatus,
    /// Everything it wrote to standard output.
    pub stdout: Vec<u8>,
    /// Everything it wrote to standard error.
    pub stderr: Vec<u8>,
}

fn lock(
    inner: &Mutex<Option<moat_sandbox::Sandbox>>,
) -> MutexGuard<'_, Option<moat_sandbox::Sandbox>> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn stopped() -> Error {
    Error::Io {
        what: "use the sandbox",
        source: io::Error::new(io::ErrorKind::NotConnected, "the sandbox was stopped"),
    }
}

impl Sandbox {
    /// Starts building a sandbox named `name` (`[a-z0-9_-]{1,63}`, also its host name).
    pub fn builder(name: impl Into<String>) -> SandboxBuilder {
        SandboxBuilder {
            name: name.into(),
            network: NetworkBuilder::default(),
            env: Vec::new(),
            workdir: PathBuf::from("/workspace"),
            workdir_host: None,
            audit: None,
            helper: None,
            publish: Vec::new(),
            ro: Vec::new(),
            rw: Vec::new(),
            limits: moat_sandbox::Limits::default(),
            simulated_hosts: Vec::new(),
        }
    }

    fn spec(&self, program: &str, args: &[&str]) -> SpawnSpec {
        let argv = std::iter::once(program)
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        SpawnSpec::new(argv, self.env.clone(), self.workdir.clone())
    }

    /// Runs a command to completion and collects its output.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = self.spawn(program, &arg_refs)?;
        drop(child.stdin.take());
        let mut out_pipe = child.stdout.take();
        let mut err_pipe = child.stderr.take();
        let err_thread = std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(p) = err_pipe.as_mut() {
                let _ = p.read_to_end(&mut v);
            }
            v
        });
        let mut stdout = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            p.read_to_end(&mut stdout)
                .map_err(io_err("read the command's output"))?;
        }
        let stderr = err_thread.join().unwrap_or_default();
        let status = child.wait()?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Starts a command with piped standard streams.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<Child, Error> {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let spec = self.spec(program, args);
        let pid = {
            let mut guard = lock(&self.inner);
            let sandbox = guard.as_mut().ok_or_else(stopped)?;
            sandbox.spawn(spec, &[in_r.as_fd(), out_w.as_fd(), err_w.as_fd()])?
        };
        Ok(Child {
            pid,
            sandbox: self.inner.clone(),
            stdin: Some(std::fs::File::from(in_w)),
            stdout: Some(std::fs::File::from(out_r)),
            stderr: Some(std::fs::File::from(err_r)),
        })
    }

    /// File operations inside the sandbox's view.
    pub fn fs(&self) -> Fs<'_> {
        Fs { sandbox: self }
    }

    /// Kills everything inside, stops the engine and removes the sandbox's state.
    pub fn stop(&self) -> Result<(), Error> {
        if let Some(engine) = self.engine.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = engine.stop();
        }
        if let Some(sandbox) = lock(&self.inner).take() {
            sandbox.stop()?;
        }
        Ok(())
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Io {
        what: "create a pipe",
        source: e.into(),
    })
}

/// A command started with [`Sandbox::spawn`].
pub struct Child {
    pid: i32,
    sandbox: Arc<Mutex<Option<moat_sandbox::Sandbox>>>,
    /// The command's standard input.
    pub stdin: Option<std::fs::File>,
    /// The command's standard output.
    pub stdout: Option<std::fs::File>,
    /// The command's standard error.
    pub stderr: Option<std::fs::File>,
}

impl Child {
    /// The command's pid, in moat's pid namespace.
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the command.
    pub fn signal(&self, signal: i32) -> Result<(), Error> {
        let mut guard = lock(&self.sandbox);
        guard
            .as_mut()
            .ok_or_else(stopped)?
            .signal(self.pid, signal)?;
        Ok(())
    }

    /// Waits for the command to end.
    pub fn wait(&mut self) -> Result<ExitStatus, Error> {
        drop(self.stdin.take());
        let mut guard = lock(&self.sandbox);
        Ok(guard.as_mut().ok_or_else(stopped)?.wait(self.pid)?)
    }
}

/// File operations inside a sandbox, as its commands see the files.
pub struct Fs<'a> {
    sandbox: &'a Sandbox,
}

impl Fs<'_> {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut moat_sandbox::Sandbox) -> Result<T, moat_sandbox::SandboxError>,
    ) -> Result<T, Error> {
        let mut guard = lock(&self.sandbox.inner);
        Ok(f(guard.as_mut().ok_or_else(stopped)?)?)
    }

    /// Reads a whole file.
    pub fn read(&self, path: impl AsRef<Path>) -> Result<Vec<u8>, Error> {
        self.with(|s| s.read_file(path))
    }

    /// Creates or replaces a file.
    pub fn write(&self, path: impl AsRef<Path>, data: impl AsRef<[u8]>) -> Result<(), Error> {
        self.with(|s| s.write_file(path, data.as_ref()))
    }

    /// Lists a directory (sorted names).
    pub fn list(&self, path: impl AsRef<Path>) -> Result<Vec<OsString>, Error> {
        self.with(|s| s.list(path))
    }

    /// Removes a file or an empty directory.
    pub fn remove(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        self.with(|s| s.remove(path))
    }
}
