//! Building a sandbox: [`NetworkBuilder`] and [`SandboxBuilder`] (shared/API.md §1–2),
//! and the one path from settings to a running sandbox that the Rust API and the CLI
//! share: settings → [`SandboxBuilder::assemble`] (every check, ports bound, audit log
//! opened; nothing runs) → [`Assembly::start`] (the namespaces, then the engine on the
//! sandbox's TAP). `moat run` turns its flags into a `SandboxBuilder` and comes the same
//! way; no other code builds a sandbox or an engine configuration. Defaults live once, in
//! [`NetworkBuilder::default`] and the engine's constants.

use std::ffi::OsString;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use moat_engine::{AuditLog, EngineConfig, EngineHandle, LinkConfig, TapDevice};
use moat_policy::{NetworkPolicy, ViolationAction};
use moat_sandbox::SandboxConfig;

use crate::api::{AuditSink, DenyMode, Error, Sandbox, io_err};
use crate::secrets::SecretBuilder;
use crate::tls::TlsBuilder;

/// moat's own lines on stderr, whole also while a pseudo-terminal relay has the host
/// terminal in raw mode.
fn stderr_lines() -> crate::terminal::Lines<io::Stderr> {
    crate::terminal::Lines::new(io::stderr())
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
    busy_poll: Duration,
    dns_servers: Vec<SocketAddr>,
    deny_mode: DenyMode,
    /// How many of the policy's first rules are `moat run`'s `--allow`/`--deny` flags.
    flag_rules: usize,
    tls: Option<TlsBuilder>,
    on_secret_violation: ViolationAction,
    /// A pod's own addresses on the link instead of moat's (moat-cni).
    pub(crate) pod: Option<crate::attach::PodAddresses>,
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
            busy_poll: moat_engine::DEFAULT_BUSY_POLL,
            dns_servers: Vec::new(),
            deny_mode: DenyMode::Drop,
            flag_rules: 0,
            tls: None,
            on_secret_violation: ViolationAction::Block,
            pod: None,
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

    /// *Extension:* after any traffic, the engine keeps polling without sleeping for this
    /// long, so the next frame of an exchange is caught without a wake-up: latency bought
    /// with CPU. Default 100 µs; zero always sleeps until an event (least CPU, about
    /// 0.1 ms more per new connection); at most 1 ms (more is an error at `create`). The CLI's
    /// `--busy-poll`.
    pub fn busy_poll(mut self, window: Duration) -> NetworkBuilder {
        self.busy_poll = window;
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

    /// Turns TLS interception on and configures it (off by default): the sandbox trusts
    /// a CA of moat's, moat verifies the servers, and the plaintext passes through moat.
    pub fn tls(mut self, f: impl FnOnce(TlsBuilder) -> TlsBuilder) -> NetworkBuilder {
        self.tls = Some(f(self.tls.take().unwrap_or_default()));
        self
    }

    /// What happens when a secret's placeholder heads for a host outside its allow list:
    /// `Block` (default; the connection is reset), `BlockAndLog` (and a warning),
    /// `BlockAndTerminate` (and the whole sandbox stops).
    pub fn on_secret_violation(mut self, action: ViolationAction) -> NetworkBuilder {
        self.on_secret_violation = action;
        self
    }

    /// *Extension:* how denied flows are answered. Default [`DenyMode::Drop`];
    /// [`DenyMode::Explain`] tells the program inside why (a `403` for a refused HTTP
    /// request, an Extended DNS Error for a refused lookup).
    pub fn deny_mode(mut self, mode: DenyMode) -> NetworkBuilder {
        self.deny_mode = mode;
        self
    }

    /// The policy's first `n` rules came from `moat run`'s `--allow`/`--deny` flags: a
    /// refusal by one of them gets no `--allow` suggestion under [`DenyMode::Explain`], as
    /// the run's summary gives none.
    pub(crate) fn flag_rules(mut self, n: usize) -> NetworkBuilder {
        self.flag_rules = n;
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
    audit_options: moat_engine::AuditOptions,
    helper: Option<PathBuf>,
    publish: Vec<String>,
    ro: Vec<PathBuf>,
    rw: Vec<PathBuf>,
    limits: moat_sandbox::Limits,
    simulated_hosts: Vec<IpAddr>,
    /// One-line notices (a TLS connection that could not be set up) go to stderr.
    notices: bool,
    /// Count every event into a summary (`moat run`'s), with a live line per new denial
    /// when set to `Some(true)`.
    summary: Option<bool>,
    secrets: Vec<SecretBuilder>,
}

impl SandboxBuilder {
    /// Adds a secret: the sandbox's environment holds a placeholder, and the value stays
    /// in moat (see [`SecretBuilder`]). Repeatable.
    pub fn secret(mut self, f: impl FnOnce(SecretBuilder) -> SecretBuilder) -> SandboxBuilder {
        self.secrets.push(f(SecretBuilder::default()));
        self
    }

    /// Sends one-line notices to stderr as they happen (`moat run` does; a program reads
    /// the audit log instead).
    pub(crate) fn notices_to_stderr(mut self) -> SandboxBuilder {
        self.notices = true;
        self
    }

    /// Keeps a summary of the run's events (`moat run` prints it at the end); with `live`,
    /// the first denial of each destination or name is a line on stderr at once.
    pub(crate) fn summarize(mut self, live: bool) -> SandboxBuilder {
        self.summary = Some(live);
        self
    }

    /// What the policy's author may have overlooked (printed by `moat run`).
    pub(crate) fn policy_warnings(&self) -> Vec<String> {
        self.network.policy.warnings()
    }

    pub(crate) fn new(name: String) -> SandboxBuilder {
        SandboxBuilder {
            name,
            network: NetworkBuilder::default(),
            env: Vec::new(),
            workdir: PathBuf::from("/workspace"),
            workdir_host: None,
            audit: None,
            audit_options: moat_engine::AuditOptions::default(),
            helper: None,
            publish: Vec::new(),
            ro: Vec::new(),
            rw: Vec::new(),
            limits: moat_sandbox::Limits::default(),
            simulated_hosts: Vec::new(),
            notices: false,
            summary: None,
            secrets: Vec::new(),
        }
    }

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

    /// *Extension:* the most the audit log may hold, in bytes (a file's length when it is
    /// opened counts; default 64 MiB, at least 16 KiB). Repeats within a second are folded
    /// into one event with a `count`; at the cap one `truncated` event is written, later
    /// events are only counted, and the `end` event always fits.
    pub fn audit_max_size(mut self, bytes: u64) -> SandboxBuilder {
        self.audit_options.max_size = bytes;
        self
    }

    /// *Extension:* when an audit event cannot be written (disk full, I/O error), stop the
    /// sandbox instead of going on without it (as auditd's `disk_full_action = halt`);
    /// [`Sandbox::stop`] then returns [`Error::AuditFailed`]. Off by default: the loss is
    /// said on stderr and counted in the `end` event.
    pub fn audit_required(mut self, required: bool) -> SandboxBuilder {
        self.audit_options.required = required;
        self
    }

    /// *Extension:* the program to start as the sandbox's supervisor (it must call
    /// [`crate::init`] first). Default: this program.
    pub fn helper(mut self, program: impl Into<PathBuf>) -> SandboxBuilder {
        self.helper = Some(program.into());
        self
    }

    /// Builds the sandbox and starts its network engine.
    pub fn create(self) -> Result<Sandbox, Error> {
        let started = self.assemble()?.start()?;
        Ok(Sandbox::from_parts(started))
    }

    /// Checks every setting and turns them into the sandbox's and the engine's
    /// configuration, binding the published ports and opening the audit log. Nothing runs
    /// yet. The CLI comes through here too (see `cli/run.rs`).
    pub(crate) fn assemble(mut self) -> Result<Assembly, Error> {
        if !moat_sandbox::valid_name(&self.name) {
            return Err(Error::Name(self.name));
        }
        let checked = self.network.checked()?;
        self.check_limits()?;
        let offline = self.network.policy.is_offline();
        let specs = self
            .publish
            .iter()
            .map(|p| p.parse::<crate::publish::PublishSpec>())
            .collect::<Result<Vec<_>, _>>()?;
        if offline && !specs.is_empty() {
            return Err(invalid(
                "publish ports",
                "this policy allows nothing, so the sandbox has no interface to publish on; add an inbound allow rule or use another policy".to_owned(),
            ));
        }
        let mut sandbox = self.sandbox_config(offline, &checked.link)?;
        // Bound now, before anything runs: a taken port stops here.
        let published = crate::publish::bind_all(&specs)?;
        let audit = self.open_audit(&sandbox)?;
        let secrets = std::mem::take(&mut self.secrets)
            .into_iter()
            .map(SecretBuilder::build)
            .collect::<Result<Vec<_>, _>>()?;
        moat_engine::check_secrets(&secrets)?;
        if !offline {
            reachable(&secrets, self.network.tls.as_ref())?;
        }
        let mut engine = self.engine_config(checked, &audit);
        engine.published = published;
        let mut env = crate::setup::base_env();
        if let Some(tls) = self.network.tls.as_ref().filter(|_| !offline) {
            let trust = tls.assemble(&self.name)?;
            engine.tls = Some(trust.engine);
            sandbox.files.extend(trust.files);
            env.extend(trust.env);
        }
        env.extend(crate::secrets::env_of(&secrets));
        engine.secrets = secrets;
        for (k, v) in std::mem::take(&mut self.env) {
            env.retain(|(key, _)| *key != k);
            env.push((k, v));
        }
        Ok(Assembly {
            sandbox,
            engine,
            env,
            workdir: self.workdir,
            audit,
        })
    }

    /// The limits asked for, checked.
    fn check_limits(&self) -> Result<(), Error> {
        if self.limits.pids == Some(0) {
            return Err(invalid("set pids_limit", "expected at least 1".to_owned()));
        }
        if let Some(c) = self.limits.cpus
            && !(c.is_finite() && c >= 0.01)
        {
            return Err(invalid(
                "set cpus",
                format!("{c}: expected a number of CPUs such as 0.5 or 2"),
            ));
        }
        Ok(())
    }

    /// The sandbox's namespaces, view, interface and limits.
    fn sandbox_config(&mut self, offline: bool, link: &LinkConfig) -> Result<SandboxConfig, Error> {
        let network = (!offline).then(|| crate::setup::net_spec(link));
        let mut sandbox = SandboxConfig::new(self.name.clone());
        sandbox.workdir = self.workdir.clone();
        if let Some(dir) = &self.workdir_host {
            crate::setup::not_a_link("-w", dir)?;
            let resolved = dir.canonicalize().unwrap_or_else(|_| dir.clone());
            crate::setup::not_home("-w", &resolved)?;
        }
        sandbox.workdir_host = self.workdir_host.take();
        sandbox.resolv_conf = network.as_ref().map(|_| crate::setup::resolv_conf(link));
        sandbox.hosts = Some(crate::setup::hosts_file(&self.name, link));
        sandbox.network = network;
        sandbox.helper = self.helper.take();
        sandbox.grants = crate::setup::grants(&self.ro, &self.rw)?;
        sandbox.limits = crate::setup::limits(&self.limits);
        sandbox.asked_limits = self.limits;
        Ok(sandbox)
    }

    /// The audit log, opened (refused inside anything the sandbox may write), with the
    /// summary counting when asked.
    fn open_audit(&mut self, sandbox: &SandboxConfig) -> Result<AuditLog, Error> {
        let options = self.audit_options;
        if options.max_size < moat_engine::MIN_AUDIT_MAX_SIZE {
            return Err(invalid(
                "set audit_max_size",
                format!(
                    "{} bytes is below the least accepted, {} KiB (room for start, truncated and end)",
                    options.max_size,
                    moat_engine::MIN_AUDIT_MAX_SIZE >> 10
                ),
            ));
        }
        if options.required && self.audit.is_none() {
            return Err(invalid(
                "set audit_required",
                "there is no audit log to require; give one (--audit FILE)".to_owned(),
            ));
        }
        // The code a log audits must not be able to rewrite it: the work directory and
        // every writable grant are refused (AuditSink::open).
        let writable: Vec<&std::path::Path> = sandbox
            .grants
            .iter()
            .filter(|g| g.writable)
            .map(|g| g.path.as_path())
            .chain(sandbox.workdir_host.as_deref())
            .collect();
        let audit_path = match &self.audit {
            Some(AuditSink::File(path)) => path.display().to_string(),
            _ => "the audit log".to_owned(),
        };
        let out = self.audit.take().map(|s| s.open(&writable)).transpose()?;
        let audit = AuditLog::with_options(&self.name, out, options);
        if audit.room() == 0 {
            return Err(invalid(
                "open the audit log",
                format!(
                    "{audit_path} already holds its cap of {} bytes (--audit-max-size), with room kept for the truncated and end events: move it aside or raise the cap",
                    options.max_size
                ),
            ));
        }
        if let Some(live) = self.summary {
            let live: Option<Box<dyn std::io::Write + Send>> =
                live.then(|| Box::new(stderr_lines()) as Box<dyn std::io::Write + Send>);
            audit.summarize(live);
        }
        Ok(audit)
    }

    /// The engine's configuration from the network settings (TLS, secrets and published
    /// ports are the caller's to add).
    fn engine_config(&mut self, checked: CheckedNetwork, audit: &AuditLog) -> EngineConfig {
        let net = &mut self.network;
        let mut engine = EngineConfig::new(checked.compiled, audit.clone());
        // A loss is never silent; under `required` it stops the sandbox, as a secret
        // violation under BlockAndTerminate does.
        audit.on_loss(Some(Box::new(stderr_lines())), engine.terminate.clone());
        engine.deny_mode = net.deny_mode;
        engine.flag_rules = net.flag_rules;
        engine.block_domains = checked.block_domains;
        engine.block_domain_suffixes = checked.block_domain_suffixes;
        engine.dns_rebind_protection = net.dns_rebind_protection;
        engine.max_connections = net.max_connections;
        engine.max_buffer_memory = net.max_buffer_memory;
        engine.busy_poll = net.busy_poll;
        engine.dns_servers = if net.dns_servers.is_empty() {
            std::fs::read_to_string("/etc/resolv.conf")
                .map(|t| crate::setup::resolv_conf_servers(&t))
                .unwrap_or_default()
        } else {
            std::mem::take(&mut net.dns_servers)
        };
        engine.link = checked.link;
        engine.simulated_hosts = std::mem::take(&mut self.simulated_hosts);
        if self.notices {
            engine.notices = moat_engine::Notices::to(Box::new(stderr_lines()));
        }
        engine.on_secret_violation = net.on_secret_violation;
        engine
    }
}

/// A setting that is out of range, as an error that names it.
fn invalid(what: &'static str, message: String) -> Error {
    Error::Io {
        what,
        source: io::Error::new(io::ErrorKind::InvalidInput, message),
    }
}

/// The network settings checked: what the engine's configuration starts from.
struct CheckedNetwork {
    compiled: moat_policy::CompiledPolicy,
    block_domains: Vec<moat_policy::DomainName>,
    block_domain_suffixes: Vec<moat_policy::DomainSuffix>,
    link: LinkConfig,
}

impl NetworkBuilder {
    /// Every network setting checked (an error names the setting and what it expects).
    fn checked(&self) -> Result<CheckedNetwork, Error> {
        let compiled = self.policy.compile()?;
        let block_domains = self
            .block_domains
            .iter()
            .map(|d| moat_policy::DomainName::new(d))
            .collect::<Result<Vec<_>, _>>()?;
        let block_domain_suffixes = self
            .block_domain_suffixes
            .iter()
            .map(|d| moat_policy::DomainSuffix::new(d))
            .collect::<Result<Vec<_>, _>>()?;
        if self.max_buffer_memory < moat_engine::MIN_BUFFER_MEMORY {
            return Err(invalid(
                "set max_buffer_memory",
                format!(
                    "{} bytes is below the least accepted, {} MiB",
                    self.max_buffer_memory,
                    moat_engine::MIN_BUFFER_MEMORY >> 20
                ),
            ));
        }
        if self.busy_poll > moat_engine::MAX_BUSY_POLL {
            return Err(invalid(
                "set busy_poll",
                format!(
                    "{:?} is longer than the longest accepted, {:?}",
                    self.busy_poll,
                    moat_engine::MAX_BUSY_POLL
                ),
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid(
                "set max_connections",
                "0 would refuse every connection; expected at least 1".to_owned(),
            ));
        }
        let mut link = LinkConfig::default();
        if let Some(mtu) = self.mtu {
            link.set_mtu(mtu)
                .map_err(|e| invalid("set the MTU", format!("MTU {mtu}: {e}")))?;
        }
        if let Some(pod) = &self.pod {
            pod.apply(&mut link);
        }
        Ok(CheckedNetwork {
            compiled,
            block_domains,
            block_domain_suffixes,
            link,
        })
    }
}

/// Every secret that may not go over plain HTTP can reach a host: TLS is intercepted, and
/// not every one of its hosts is bypassed.
fn reachable(secrets: &[moat_engine::Secret], tls: Option<&TlsBuilder>) -> Result<(), Error> {
    for secret in secrets.iter().filter(|s| !s.allows_plain_http()) {
        let unreachable = |why: String| moat_engine::SecretError::Unreachable {
            name: secret.name().to_owned(),
            why,
        };
        match tls {
            None => {
                return Err(unreachable(format!(
                    "it goes only into requests moat reads, and without TLS interception it reads none: add --tls-intercept (API: network(|n| n.tls(|t| t))), or let plain HTTP carry it (--secret-plain-http {}) if its host speaks plain HTTP",
                    secret.name()
                ))
                .into());
            }
            Some(tls) if secret.hosts().iter().all(|h| tls.bypasses(h)) => {
                return Err(unreachable(
                    "every host it may go to is bypassed (--tls-bypass), so moat never reads those connections: remove the bypass of its host".to_owned(),
                )
                .into());
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// A sandbox ready to start: what [`SandboxBuilder::assemble`] made of the settings.
#[derive(Debug)]
pub(crate) struct Assembly {
    /// The namespaces, mounts, limits and interface.
    pub(crate) sandbox: SandboxConfig,
    /// The engine's configuration (used when the sandbox has an interface).
    pub(crate) engine: EngineConfig,
    /// The environment commands start with.
    pub(crate) env: Vec<(OsString, OsString)>,
    /// The work directory inside.
    pub(crate) workdir: PathBuf,
    /// The audit log (the engine's events and the run's `start` and `end`).
    pub(crate) audit: AuditLog,
}

/// The run's `end` event: the command's exit status (when there was one command) and what
/// the engine counted.
pub(crate) fn audit_end(audit: &AuditLog, status: Option<i32>, c: &moat_engine::Counters) {
    use serde_json::Value;
    audit.end(
        "the sandbox stopped",
        // `exit_status` only when there was one command (its type never varies).
        status
            .map(|s| ("exit_status", Value::from(s)))
            .into_iter()
            .chain([
                ("allowed", Value::from(c.allowed)),
                ("denied", Value::from(c.denied)),
                ("over_limit", Value::from(c.over_limit)),
                ("dns_queries", Value::from(c.dns_queries)),
            ])
            .collect(),
    );
}

/// A started sandbox, its engine, and what its commands start with.
pub(crate) struct Started {
    pub(crate) sandbox: moat_sandbox::Sandbox,
    pub(crate) engine: Option<EngineHandle>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) workdir: PathBuf,
    /// Set when a secret violation under `BlockAndTerminate`, or an audit log that cannot
    /// be written under `audit_required`, asks for the sandbox to stop.
    pub(crate) terminate: moat_engine::Terminate,
    /// One of those can happen (so someone must watch `terminate`).
    pub(crate) stop_on_violation: bool,
    /// The audit log, for the run's `end`.
    pub(crate) audit: AuditLog,
}

impl Assembly {
    /// Starts the sandbox and, when it has an interface, the engine on its TAP.
    pub(crate) fn start(self) -> Result<Started, Error> {
        let terminate = self.engine.terminate.clone();
        let network = if self.sandbox.network.is_some() {
            "moat"
        } else {
            "none"
        };
        self.audit.event(
            "start",
            "allow",
            "-",
            "the sandbox started",
            vec![
                (
                    "version",
                    serde_json::Value::from(env!("CARGO_PKG_VERSION")),
                ),
                ("network", serde_json::Value::from(network)),
            ],
        );
        // Under `audit_required` a log that cannot take even the first event stops here.
        if self.audit.halted() {
            return Err(Error::AuditFailed(format!(
                "the audit log could not be written ({}) and it is required (--audit-required)",
                self.audit.loss().unwrap_or_default()
            )));
        }
        let stop_on_violation = !self.engine.secrets.is_empty()
            && self.engine.on_secret_violation == ViolationAction::BlockAndTerminate
            || self.audit.options().required;
        let mut sandbox = moat_sandbox::Sandbox::start(&self.sandbox)?;
        let engine = match sandbox.take_tap() {
            Some(tap) => {
                let device = TapDevice::with_offloads(tap).map_err(io_err("use the TAP"))?;
                moat_sandbox::memory::large_allocations_from_fresh_pages();
                Some(
                    moat_engine::spawn(Box::new(device), self.engine)
                        .map_err(io_err("start the engine"))?,
                )
            }
            None => None,
        };
        Ok(Started {
            sandbox,
            engine,
            env: self.env,
            workdir: self.workdir,
            terminate,
            stop_on_violation,
            audit: self.audit,
        })
    }
}

/// The one assembly path: `moat run`'s flags and the same settings made through the API
/// come out as the same sandbox and engine.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use moat_policy::{NetworkPolicy, Rule};

    use crate::cli::run::{RunOptions, builder};
    use crate::{DenyMode, Sandbox};

    /// The parts of an assembly that say what sandbox and engine would start.
    fn describe(a: &crate::builder::Assembly) -> String {
        let e = &a.engine;
        let tls = e.tls.as_ref().map(|t| {
            format!(
                "ports {:?} bypass {:?} quic {} verify {} roots {} ca {}",
                t.ports,
                t.bypass,
                t.block_quic,
                t.verify_upstream,
                t.roots.len(),
                t.ca.fingerprint()
            )
        });
        format!(
            "{:?}\npolicy {:?}\ndeny {:?} dns {:?} max {} mem {} link {:?}\nblock {:?} {:?} rebind {}\ntimeouts {:?} {:?} {:?} busy {:?} buf {} sim {:?}\ntls {tls:?}\nenv {:?}\nworkdir {:?}\naudit {:?}",
            a.sandbox,
            e.policy.policy(),
            e.deny_mode,
            e.dns_servers,
            e.max_connections,
            e.max_buffer_memory,
            e.link,
            e.block_domains,
            e.block_domain_suffixes,
            e.dns_rebind_protection,
            e.connect_timeout,
            e.udp_idle_timeout,
            e.dns_timeout,
            e.busy_poll,
            e.tcp_buffer,
            e.simulated_hosts,
            a.env,
            a.workdir,
            a.audit.options(),
        )
    }

    #[test]
    fn the_cli_and_the_api_assemble_the_same_sandbox() {
        let base = std::env::temp_dir().join(format!("moat-assembly-{}", std::process::id()));
        let (work, shared) = (base.join("work"), base.join("shared"));
        std::fs::create_dir_all(&work).unwrap();
        std::fs::create_dir_all(&shared).unwrap();
        let work = work.canonicalize().unwrap();
        let shared = shared.canonicalize().unwrap();
        let (ca_cert, _) = crate::tls::ca_init(&base.join("ca")).unwrap();
        let ca_key = base.join("ca/ca-key.pem");
        let opts = RunOptions {
            policy: Some("allow-all".into()),
            rules: vec![(false, "198.51.100.0/24:22/tcp".into())],
            dns: vec!["192.0.2.53".into(), "[2001:db8::53]:5353".into()],
            block_domains: vec!["ads.example".into()],
            block_domain_suffixes: vec!["tracker.example".into()],
            no_dns_rebind_protection: true,
            mtu: Some(1500),
            busy_poll: Some(250),
            max_connections: Some(7),
            max_buffer_memory: Some("64m".into()),
            reject: true,
            workdir: Some(work.clone()),
            env: vec!["GREETING=hello".into()],
            ro: vec!["/usr".into()],
            rw: vec![shared.clone()],
            memory: Some("512m".into()),
            pids_limit: Some(50),
            cpus: Some(1.5),
            tls: Some(crate::cli::run::TlsOptions {
                bypass: vec!["*.pinned.example".into()],
                ports: vec![8443],
                ca_cert: Some(ca_cert.clone()),
                ca_key: Some(ca_key.clone()),
                upstream_cas: vec![ca_cert.clone()],
                no_verify_upstream: false,
                allow_quic: true,
            }),
            audit: Some(base.join("audit.jsonl").display().to_string()),
            audit_max_size: Some("1m".into()),
            audit_required: true,
            name: "same".into(),
            command: vec!["true".into()],
            ..RunOptions::default()
        };
        let from_cli = builder(&opts).unwrap().assemble().unwrap();

        let mut policy = NetworkPolicy::allow_all();
        let mut rule = Rule::deny_outbound(moat_policy::Destination::Cidr(
            "198.51.100.0/24".parse().unwrap(),
        ));
        rule.ports = Some(moat_policy::PortRange::single(22));
        rule.protocol = Some(moat_policy::Protocol::Tcp);
        policy.rules.insert(0, rule);
        let mut api = Sandbox::builder("same")
            .network(|n| {
                n.policy(policy)
                    .block_domain("ads.example")
                    .block_domain_suffix("tracker.example")
                    .dns_rebind_protection(false)
                    .dns_server("192.0.2.53")
                    .dns_server("[2001:db8::53]:5353")
                    .max_connections(7)
                    .max_buffer_memory(64 << 20)
                    .mtu(1500)
                    .busy_poll(Duration::from_micros(250))
                    .deny_mode(DenyMode::Reject)
                    .tls(|t| {
                        t.bypass("*.pinned.example")
                            .intercepted_ports(vec![8443])
                            .intercept_ca_cert(&ca_cert)
                            .intercept_ca_key(&ca_key)
                            .upstream_ca_cert(&ca_cert)
                            .block_quic(false)
                    })
            })
            .workdir(work.clone())
            .workdir_from_host(work.clone())
            .ro("/usr")
            .rw(shared.clone())
            .memory(512 << 20)
            .pids_limit(50)
            .cpus(1.5)
            .audit(crate::AuditSink::file(base.join("audit.jsonl")))
            .audit_max_size(1 << 20)
            .audit_required(true);
        // `moat run` passes these through from the caller, as a program would.
        for key in ["TERM", "LANG", "LC_ALL", "TZ", "COLORTERM"] {
            if let Some(v) = std::env::var_os(key) {
                api = api.env(key, v);
            }
        }
        let from_api = api.env("GREETING", "hello").assemble().unwrap();
        let _ = std::fs::remove_dir_all(&base);

        assert_eq!(describe(&from_cli), describe(&from_api));
        // The flags took effect: this is not two sets of defaults compared.
        let e = &from_cli.engine;
        assert_eq!(e.max_connections, 7);
        assert_eq!(e.max_buffer_memory, 64 << 20);
        assert_eq!(e.link.mtu, 1500);
        assert_eq!(e.busy_poll, Duration::from_micros(250));
        assert_eq!(e.deny_mode, DenyMode::Reject);
        assert!(!e.dns_rebind_protection);
        assert_eq!(
            from_cli.audit.options(),
            moat_engine::AuditOptions {
                max_size: 1 << 20,
                required: true
            }
        );
        assert_eq!(e.dns_servers.len(), 2);
        let rules = &e.policy.policy().rules;
        assert!(
            rules[0].to_string().contains("198.51.100.0/24"),
            "{rules:?}"
        );
        assert_eq!(from_cli.workdir, work);
        assert_eq!(
            from_cli.sandbox.workdir_host.as_deref(),
            Some(work.as_path())
        );
        assert_eq!(from_cli.sandbox.asked_limits.pids, Some(50));
        let tls = e.tls.as_ref().unwrap();
        assert_eq!(tls.ports, vec![8443]);
        assert!(!tls.block_quic);
        assert!(
            from_cli
                .env
                .iter()
                .any(|(k, v)| k == "GREETING" && v == "hello")
        );
        let grants = format!("{:?}", from_cli.sandbox.grants);
        assert!(grants.contains(shared.to_str().unwrap()), "{grants}");
    }

    #[test]
    fn settings_out_of_range_are_errors_both_ways() {
        // What `moat run` with these options, and the API with this builder, say.
        let cli = |opts: RunOptions| {
            let opts = RunOptions {
                name: "bad".into(),
                command: vec!["true".into()],
                ..opts
            };
            builder(&opts)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let api = |b: crate::SandboxBuilder| {
            b.assemble()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let zero = cli(RunOptions {
            max_connections: Some(0),
            ..RunOptions::default()
        });
        assert!(zero.contains("--max-connections 0"), "{zero}");
        let zero = api(Sandbox::builder("zero").network(|n| n.max_connections(0)));
        assert!(zero.contains("max_connections"), "{zero}");
        let pids = api(Sandbox::builder("zero").pids_limit(0));
        assert!(pids.contains("pids_limit"), "{pids}");
        // A busy-poll window past 1 ms is refused; 1 ms itself is fine.
        let spin = cli(RunOptions {
            busy_poll: Some(1001),
            ..RunOptions::default()
        });
        assert!(spin.contains("--busy-poll 1001"), "{spin}");
        let spin =
            api(Sandbox::builder("spin").network(|n| n.busy_poll(Duration::from_micros(1001))));
        assert!(spin.contains("busy_poll"), "{spin}");
        assert!(
            Sandbox::builder("spin")
                .network(|n| n.busy_poll(moat_engine::MAX_BUSY_POLL))
                .assemble()
                .is_ok()
        );
        assert!(Sandbox::builder("fine").assemble().is_ok());
        // A work directory must be a directory, and not the root.
        let file = std::env::temp_dir().join(format!("moat-w-file-{}", std::process::id()));
        std::fs::write(&file, "x").unwrap();
        let file = file.to_str().unwrap().to_owned();
        for (dir, says) in [("/", "the root"), (file.as_str(), "not a directory")] {
            let opts = RunOptions {
                name: "w".into(),
                workdir: Some(dir.into()),
                command: vec!["true".into()],
                ..RunOptions::default()
            };
            let e = builder(&opts)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(says), "{dir}: {e}");
        }
    }

    #[test]
    fn deny_mode_explain_reaches_the_engine_from_the_cli_and_the_api() {
        let opts = RunOptions {
            rules: vec![(true, "api.example.test:443".into())],
            deny_mode: Some("explain".into()),
            name: "explain".into(),
            command: vec!["true".into()],
            ..RunOptions::default()
        };
        let from_cli = builder(&opts).unwrap().assemble().unwrap();
        assert_eq!(from_cli.engine.deny_mode, DenyMode::Explain);
        // The summary's and the 403's suggestions skip the same flag rules.
        assert_eq!(from_cli.engine.flag_rules, 1);
        let from_api = Sandbox::builder("explain")
            .network(|n| n.deny_mode(DenyMode::Explain))
            .assemble()
            .unwrap();
        assert_eq!(from_api.engine.deny_mode, DenyMode::Explain);
        assert_eq!(from_api.engine.flag_rules, 0);
        let clash = RunOptions {
            reject: true,
            deny_mode: Some("drop".into()),
            ..opts
        };
        let e = builder(&clash)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("--reject and --deny-mode drop disagree"), "{e}");
    }
}
