//! `moat run`: its flags turned into the Rust API's [`SandboxBuilder`] (one assembly path,
//! see `builder.rs`), then the command run with the caller's terminal, signals forwarded,
//! its exit status propagated and nothing left behind; and reading `--policy` arguments.

use std::ffi::OsString;
use std::io::IsTerminal as _;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use moat_engine::LinkConfig;
use moat_policy::{DestSpec, NetworkPolicy, PolicyFileError, PolicyFormat, Rule};
use moat_sandbox::SpawnSpec;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use super::hints::{resolves_elsewhere, spawn_failure};
use super::learn::Learn;
use super::wait::{FORWARDED, wait_with_signals};
use crate::builder::Started;
use crate::{
    AuditSink, DenyMode, NetworkBuilder, Sandbox, SandboxBuilder, TlsBuilder, ViolationAction,
};

/// Exit status for moat's own failures (the command never ran), as container runtimes do.
pub const SETUP_FAILED: i32 = 125;
/// Exit status when a resource limit (`--memory`, `--pids-limit`) ended the run.
pub const LIMIT_EXCEEDED: i32 = 122;
/// Exit status when a secret's placeholder headed elsewhere under
/// `--on-secret-violation block-and-terminate` and moat stopped the sandbox.
pub const SECRET_VIOLATION: i32 = 123;
/// Exit status when the audit log could not be written under `--audit-required` and moat
/// stopped the sandbox (or never started it).
pub const AUDIT_FAILED: i32 = 121;
/// Exit status when the command could not be executed (found, but not runnable).
pub const NOT_EXECUTABLE: i32 = 126;
/// Exit status when the command is not found in the sandbox.
pub const NOT_FOUND: i32 = 127;

/// What `moat run` was asked to do.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Preset name or policy file.
    pub policy: Option<String>,
    /// `--allow`/`--deny` rules in command-line order: (allow?, DEST).
    pub rules: Vec<(bool, String)>,
    /// `--dns` upstreams.
    pub dns: Vec<String>,
    /// `--block-domain`.
    pub block_domains: Vec<String>,
    /// `--block-domain-suffix`.
    pub block_domain_suffixes: Vec<String>,
    /// `--no-dns-rebind-protection`.
    pub no_dns_rebind_protection: bool,
    /// `-p, --publish`.
    pub publish: Vec<String>,
    /// `--mtu`.
    pub mtu: Option<u32>,
    /// `--busy-poll MICROSECONDS`.
    pub busy_poll: Option<u64>,
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--max-buffer-memory SIZE`.
    pub max_buffer_memory: Option<String>,
    /// `--reject`.
    pub reject: bool,
    /// `--deny-mode drop|reject|explain`.
    pub deny_mode: Option<String>,
    /// `--audit FILE` ("-" = stderr).
    pub audit: Option<String>,
    /// `--audit-max-size SIZE`.
    pub audit_max_size: Option<String>,
    /// `--audit-required`.
    pub audit_required: bool,
    /// `-w DIR`.
    pub workdir: Option<PathBuf>,
    /// `-e K=V` or `-e K` (the caller's value).
    pub env: Vec<String>,
    /// `--ro PATH`, in order.
    pub ro: Vec<PathBuf>,
    /// `--rw PATH`, in order.
    pub rw: Vec<PathBuf>,
    /// `--preserve-fds N`: pass moat's descriptors 3..3+N on to the command.
    pub preserve_fds: usize,
    /// `--memory SIZE`.
    pub memory: Option<String>,
    /// `--pids-limit N`.
    pub pids_limit: Option<u64>,
    /// `--cpus F`.
    pub cpus: Option<f64>,
    /// `--tls-intercept` and the `--tls-*` settings.
    pub tls: Option<TlsOptions>,
    /// `--secret NAME@HOST[,HOST...]`.
    pub secrets: Vec<String>,
    /// `--secret-plain-http NAME`.
    pub secrets_plain_http: Vec<String>,
    /// Secrets whose values are in files (moat-cni's, from the node).
    pub secret_files: Vec<SecretFile>,
    /// `--quiet`: no summary at the end.
    pub quiet: bool,
    /// `--learn FILE` (or `--learn-fresh FILE`).
    pub learn: Option<PathBuf>,
    /// `--learn-fresh`: replace FILE rather than extend it.
    pub learn_fresh: bool,
    /// `--on-secret-violation`.
    pub on_secret_violation: Option<String>,
    /// `--name`.
    pub name: String,
    /// The command.
    pub command: Vec<OsString>,
}

/// A secret whose value is read from a file when the sandbox is built (moat-cni: a file
/// the node holds), with a placeholder given rather than made up (the pod's manifest holds
/// it).
#[derive(Debug, Default, Clone)]
pub struct SecretFile {
    /// The variable the placeholder is known by.
    pub name: String,
    /// Where the value is (its last line break is not part of it).
    pub file: PathBuf,
    /// What the programs hold instead of the value.
    pub placeholder: String,
    /// Where the value may go.
    pub hosts: Vec<String>,
    /// Whether plain HTTP may carry it.
    pub plain_http: bool,
}

/// The largest secret value read from a file.
const MAX_SECRET_FILE: u64 = 64 << 10;

impl SecretFile {
    fn builder(&self) -> anyhow::Result<crate::SecretBuilder> {
        use std::io::Read;
        let mut value = Vec::new();
        std::fs::File::open(&self.file)
            .and_then(|f| f.take(MAX_SECRET_FILE + 1).read_to_end(&mut value))
            .with_context(|| format!("secret {}: read {}", self.name, self.file.display()))?;
        if value.len() as u64 > MAX_SECRET_FILE {
            bail!(
                "secret {}: {} is over {} KiB; a secret's value is smaller",
                self.name,
                self.file.display(),
                MAX_SECRET_FILE >> 10
            );
        }
        if value.ends_with(b"\n") {
            value.pop();
        }
        let value = String::from_utf8(value).with_context(|| {
            format!("secret {}: {} is not text", self.name, self.file.display())
        })?;
        let mut b = crate::SecretBuilder::default()
            .env(self.name.clone())
            .value(value)
            .placeholder(self.placeholder.clone())
            .allow_plain_http(self.plain_http);
        for h in &self.hosts {
            b = b.allow_host(h.clone());
        }
        Ok(b)
    }
}

/// `--tls-*` (with `--tls-intercept`).
#[derive(Debug, Default, Clone)]
pub struct TlsOptions {
    /// `--tls-bypass`.
    pub bypass: Vec<String>,
    /// `--tls-port` (empty: the default, 443).
    pub ports: Vec<u16>,
    /// `--tls-ca-cert`.
    pub ca_cert: Option<PathBuf>,
    /// `--tls-ca-key`.
    pub ca_key: Option<PathBuf>,
    /// `--tls-upstream-ca`.
    pub upstream_cas: Vec<PathBuf>,
    /// `--tls-no-verify-upstream`.
    pub no_verify_upstream: bool,
    /// `--tls-allow-quic`.
    pub allow_quic: bool,
}

/// Reads a policy file, TOML or JSON (by its extension, else its first character). The
/// policy crate only parses; reading files is the caller's part.
pub fn read_policy_file(path: &std::path::Path) -> Result<NetworkPolicy, PolicyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    NetworkPolicy::from_text(path, &text, PolicyFormat::detect(path, &text))
}

/// A preset name (`public-only`, `allow-all`, `none`), else a policy file.
pub fn policy_arg(text: &str) -> anyhow::Result<NetworkPolicy> {
    match NetworkPolicy::preset(text) {
        Ok(p) => Ok(p),
        Err(preset_err) => {
            let path = std::path::Path::new(text);
            if path.exists() {
                Ok(read_policy_file(path)?)
            } else {
                Err(anyhow::anyhow!(
                    "{preset_err}; no file {text:?} exists either"
                ))
            }
        }
    }
}

/// Builds the policy: the base (preset or file), with the command line's rules first.
pub fn build_policy(base: Option<&str>, rules: &[(bool, String)]) -> anyhow::Result<NetworkPolicy> {
    let mut policy = match base {
        None => NetworkPolicy::public_only(),
        Some(text) => policy_arg(text)?,
    };
    let mut extra = Vec::with_capacity(rules.len());
    for (allow, dest) in rules {
        let spec = DestSpec::parse(dest)
            .with_context(|| format!("--{} {dest}", if *allow { "allow" } else { "deny" }))?;
        let mut rule = if *allow {
            Rule::allow_outbound(spec.destination)
        } else {
            Rule::deny_outbound(spec.destination)
        };
        rule.ports = spec.ports;
        rule.protocol = spec.protocol;
        extra.push(rule);
    }
    extra.append(&mut policy.rules);
    policy.rules = extra;
    Ok(policy)
}

fn parse_dns(text: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(sa) = text.parse::<SocketAddr>() {
        return Ok(sa);
    }
    match text.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, 53)),
        Err(_) => {
            bail!("--dns {text}: expected IP or IP:PORT (e.g. 192.0.2.53 or [2001:db8::53]:5353)")
        }
    }
}

/// What the command's environment gets on top of the base one: a few harmless host
/// variables, then `-e` settings. Nothing else of moat's environment (tokens, keys)
/// reaches the sandbox.
fn command_env(extra: &[String]) -> anyhow::Result<Vec<(OsString, OsString)>> {
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    let mut set = |k: &str, v: OsString| {
        env.retain(|(key, _)| key != k);
        env.push((k.into(), v));
    };
    for key in ["TERM", "LANG", "LC_ALL", "TZ", "COLORTERM"] {
        if let Some(v) = std::env::var_os(key) {
            set(key, v);
        }
    }
    for kv in extra {
        let (k, v) = match kv.split_once('=') {
            Some((k, v)) => (k, OsString::from(v)),
            // `-e K`: the caller's own value, as podman and docker do; unset stays unset.
            None => match std::env::var_os(kv) {
                Some(v) => (kv.as_str(), v),
                None => continue,
            },
        };
        if k.is_empty() || k.contains('\0') || v.as_encoded_bytes().contains(&0) {
            bail!("-e {kv}: expected KEY=VALUE or KEY");
        }
        set(k, v);
    }
    Ok(env)
}

/// `moat run`'s flags as the [`SandboxBuilder`] of the Rust API: the CLI builds its
/// sandbox the same way a program does (see `builder.rs`). What is checked here is what
/// only flags have (their spelling, sizes in text) so that errors name the flag.
pub(crate) fn builder(opts: &RunOptions) -> anyhow::Result<SandboxBuilder> {
    let c = Checked::from_flags(opts)?;
    let mut b = Sandbox::builder(opts.name.clone())
        .notices_to_stderr()
        .network(|n| {
            let n = n
                .policy(c.policy)
                .dns_rebind_protection(!opts.no_dns_rebind_protection)
                .on_secret_violation(c.on_violation)
                .deny_mode(c.deny_mode)
                .flag_rules(opts.rules.len());
            network(n, opts, c.dns_servers, c.max_buffer_memory, c.busy_poll)
        });
    if let Some(dir) = &opts.workdir {
        let dir = workdir(dir)?;
        b = b.workdir(dir.clone()).workdir_from_host(dir);
    }
    for spec in &opts.publish {
        b = b.publish(spec.clone());
    }
    for path in &opts.ro {
        b = b.ro(path.clone());
    }
    for path in &opts.rw {
        b = b.rw(path.clone());
    }
    if let Some(bytes) = c.memory {
        b = b.memory(bytes);
    }
    if let Some(n) = opts.pids_limit {
        b = b.pids_limit(n);
    }
    if let Some(c) = opts.cpus {
        b = b.cpus(c);
    }
    for (k, v) in c.env {
        b = b.env(k, v);
    }
    for secret in c.secrets {
        b = b.secret(|_| secret);
    }
    if !opts.quiet || opts.learn.is_some() {
        b = b.summarize(!opts.quiet && std::io::stderr().is_terminal());
    }
    b = match opts.audit.as_deref() {
        None => b,
        Some("-") => b.audit(AuditSink::Stderr),
        Some(path) => b.audit(AuditSink::file(path)),
    };
    if let Some(bytes) = c.audit_max_size {
        b = b.audit_max_size(bytes);
    }
    Ok(b.audit_required(opts.audit_required))
}

/// What the flags say, each checked (an error names the flag and what it expects).
struct Checked {
    policy: NetworkPolicy,
    dns_servers: Vec<SocketAddr>,
    max_buffer_memory: Option<u64>,
    busy_poll: Option<Duration>,
    memory: Option<u64>,
    audit_max_size: Option<u64>,
    env: Vec<(OsString, OsString)>,
    secrets: Vec<crate::SecretBuilder>,
    deny_mode: DenyMode,
    on_violation: ViolationAction,
}

impl Checked {
    fn from_flags(opts: &RunOptions) -> anyhow::Result<Checked> {
        if !moat_sandbox::valid_name(&opts.name) {
            bail!(
                "--name {}: expected 1-63 characters of a-z, 0-9, - and _",
                opts.name
            );
        }
        let policy = build_policy(opts.policy.as_deref(), &opts.rules)?;
        let dns_servers = opts
            .dns
            .iter()
            .map(|d| parse_dns(d))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for d in &opts.block_domains {
            moat_policy::DomainName::new(d).with_context(|| format!("--block-domain {d}"))?;
        }
        for d in &opts.block_domain_suffixes {
            moat_policy::DomainSuffix::new(d)
                .with_context(|| format!("--block-domain-suffix {d}"))?;
        }
        if !opts.publish.is_empty() && policy.is_offline() {
            bail!(
                "--publish needs a network, and this policy allows nothing (no interface is created); add an inbound allow rule or use another policy"
            );
        }
        if let Some(mtu) = opts.mtu {
            LinkConfig::default()
                .set_mtu(mtu as usize)
                .map_err(|e| anyhow::anyhow!("--mtu {mtu}: {e}"))?;
        }
        let max_buffer_memory = size_flag(
            "--max-buffer-memory",
            opts.max_buffer_memory.as_deref(),
            "64m or 1g",
            moat_engine::MIN_BUFFER_MEMORY as u64,
        )?;
        let busy_poll = opts.busy_poll.map(Duration::from_micros);
        if let Some(window) = busy_poll
            && window > moat_engine::MAX_BUSY_POLL
        {
            bail!(
                "--busy-poll {}: expected at most {} microseconds",
                window.as_micros(),
                moat_engine::MAX_BUSY_POLL.as_micros()
            );
        }
        if opts.max_connections == Some(0) {
            bail!("--max-connections 0: expected at least 1");
        }
        let memory = size_flag("--memory", opts.memory.as_deref(), "512m or 2g", 0)?;
        if opts.pids_limit == Some(0) {
            bail!("--pids-limit 0: expected at least 1");
        }
        if let Some(c) = opts.cpus
            && !(c.is_finite() && c >= 0.01)
        {
            bail!("--cpus {c}: expected a number of CPUs such as 0.5 or 2");
        }
        let audit_max_size = size_flag(
            "--audit-max-size",
            opts.audit_max_size.as_deref(),
            "64m or 1g",
            moat_engine::MIN_AUDIT_MAX_SIZE,
        )?;
        if opts.audit.is_none() && (audit_max_size.is_some() || opts.audit_required) {
            bail!(
                "--{} needs an audit log: add --audit FILE",
                if opts.audit_required {
                    "audit-required"
                } else {
                    "audit-max-size"
                }
            );
        }
        Ok(Checked {
            policy,
            dns_servers,
            max_buffer_memory,
            busy_poll,
            memory,
            audit_max_size,
            env: command_env(&opts.env)?,
            secrets: secrets_of(opts)?,
            deny_mode: deny_mode(opts.reject, opts.deny_mode.as_deref())?,
            on_violation: violation_action(opts.on_secret_violation.as_deref())?,
        })
    }
}

/// A size flag's bytes (`64m`, `1g`), at least `min` when one is given.
fn size_flag(
    flag: &str,
    value: Option<&str>,
    example: &str,
    min: u64,
) -> anyhow::Result<Option<u64>> {
    let Some(m) = value else {
        return Ok(None);
    };
    let bytes = moat_sandbox::parse_size(m)
        .with_context(|| format!("{flag} {m}: expected a size such as {example}"))?;
    if bytes < min {
        if min >= 1 << 20 {
            bail!("{flag} {m}: expected at least {}m", min >> 20);
        }
        bail!("{flag} {m}: expected at least {}k", min >> 10);
    }
    Ok(Some(bytes))
}

/// The secrets of `--secret NAME@HOST...`, those named by `--secret-plain-http` allowed
/// over plain HTTP (each of which must name a secret given).
fn secrets_of(opts: &RunOptions) -> anyhow::Result<Vec<crate::SecretBuilder>> {
    let named = |spec: &str, n: &str| spec.split('@').next() == Some(n);
    let secrets = opts
        .secrets
        .iter()
        .map(|spec| {
            let plain = opts.secrets_plain_http.iter().any(|n| named(spec, n));
            crate::secrets::from_flag(spec).map(|s| s.allow_plain_http(plain))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(name) = opts
        .secrets_plain_http
        .iter()
        .find(|n| !opts.secrets.iter().any(|s| named(s, n)))
    {
        bail!("--secret-plain-http {name}: no --secret {name}@HOST names that secret");
    }
    let mut secrets = secrets;
    for file in &opts.secret_files {
        secrets.push(file.builder()?);
    }
    Ok(secrets)
}

/// `--on-secret-violation`'s action (block when not given).
fn violation_action(flag: Option<&str>) -> anyhow::Result<ViolationAction> {
    Ok(match flag {
        None | Some("block") => ViolationAction::Block,
        Some("block-and-log") => ViolationAction::BlockAndLog,
        Some("block-and-terminate") => ViolationAction::BlockAndTerminate,
        Some(other) => bail!(
            "--on-secret-violation {other}: expected block, block-and-log or block-and-terminate"
        ),
    })
}

/// The network flags beyond the policy and the deny mode.
fn network(
    mut n: NetworkBuilder,
    opts: &RunOptions,
    dns_servers: Vec<SocketAddr>,
    max_buffer_memory: Option<u64>,
    busy_poll: Option<Duration>,
) -> NetworkBuilder {
    for d in &opts.block_domains {
        n = n.block_domain(d);
    }
    for d in &opts.block_domain_suffixes {
        n = n.block_domain_suffix(d);
    }
    for addr in dns_servers {
        n = n.dns_server_addr(addr);
    }
    if let Some(max) = opts.max_connections {
        n = n.max_connections(max);
    }
    if let Some(bytes) = max_buffer_memory {
        n = n.max_buffer_memory(bytes);
    }
    if let Some(mtu) = opts.mtu {
        n = n.mtu(mtu);
    }
    if let Some(window) = busy_poll {
        n = n.busy_poll(window);
    }
    if let Some(tls) = &opts.tls {
        n = n.tls(|t| tls_flags(t, tls));
    }
    n
}

/// The `--tls-*` flags.
fn tls_flags(mut t: TlsBuilder, tls: &TlsOptions) -> TlsBuilder {
    for pattern in &tls.bypass {
        t = t.bypass(pattern.clone());
    }
    if !tls.ports.is_empty() {
        t = t.intercepted_ports(tls.ports.clone());
    }
    if let Some(cert) = &tls.ca_cert {
        t = t.intercept_ca_cert(cert.clone());
    }
    if let Some(key) = &tls.ca_key {
        t = t.intercept_ca_key(key.clone());
    }
    for ca in &tls.upstream_cas {
        t = t.upstream_ca_cert(ca.clone());
    }
    t.verify_upstream(!tls.no_verify_upstream)
        .block_quic(!tls.allow_quic)
}

/// `-w DIR`: an existing directory (not a link, not the root), made absolute.
fn workdir(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let given = dir.display().to_string();
    crate::setup::not_a_link("-w", dir)?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("-w {given}: no such directory"))?;
    if !dir.is_dir() {
        bail!("-w {given}: not a directory; give the directory the command should work in");
    }
    if dir == std::path::Path::new("/") {
        bail!("-w {given}: the root would make the whole host writable; give a project directory");
    }
    Ok(dir)
}

/// The deny mode of `--reject` and `--deny-mode MODE` (drop when neither is given); the two
/// must agree when both are.
fn deny_mode(reject: bool, mode: Option<&str>) -> anyhow::Result<DenyMode> {
    let named = match mode {
        None => None,
        Some("drop") => Some(DenyMode::Drop),
        Some("reject") => Some(DenyMode::Reject),
        Some("explain") => Some(DenyMode::Explain),
        Some(other) => bail!("--deny-mode {other}: expected drop, reject or explain"),
    };
    match (reject, named) {
        (false, named) => Ok(named.unwrap_or(DenyMode::Drop)),
        (true, None | Some(DenyMode::Reject)) => Ok(DenyMode::Reject),
        (true, Some(_)) => bail!(
            "--reject and --deny-mode {} disagree: --reject is --deny-mode reject; give one of them",
            mode.unwrap_or_default()
        ),
    }
}

/// Runs the command; returns the exit status for moat to exit with.
pub(crate) fn run(opts: RunOptions) -> anyhow::Result<i32> {
    // First, before moat opens anything that could take their numbers.
    if opts.preserve_fds > moat_sandbox::MAX_PRESERVED_FDS {
        bail!(
            "--preserve-fds {}: at most {}",
            opts.preserve_fds,
            moat_sandbox::MAX_PRESERVED_FDS
        );
    }
    let preserved = moat_sandbox::take_inherited_fds(opts.preserve_fds).with_context(|| {
        format!(
            "--preserve-fds {}: descriptors 3 to {} must be open",
            opts.preserve_fds,
            2 + opts.preserve_fds
        )
    })?;
    // `--policy none` with `--allow` flags has a network (what they allow) to learn from.
    if opts.learn.is_some()
        && opts.policy.as_deref() == Some("none")
        && build_policy(Some("none"), &opts.rules).is_ok_and(|p| p.is_offline())
    {
        bail!(
            "--learn with --policy none: the sandbox would have no network to learn from; leave --policy out (public-only) or use allow-all"
        );
    }
    if opts.command.is_empty() {
        bail!(
            "nothing to run: give the command after --, e.g. moat run -- curl https://example.com"
        );
    }
    let builder = builder(&opts)?;
    for warning in builder.policy_warnings() {
        eprintln!("moat: warning: {warning}");
    }
    // The learned policy's directory is opened now, before the sandbox can plant anything
    // in it (moat_sandbox's host_file.rs); the file is written through it at the end.
    let learn = opts
        .learn
        .as_deref()
        .map(|path| Learn::open(path, opts.learn_fresh))
        .transpose()?;
    let assembly = builder.assemble()?;

    // Signals are taken through a signalfd; block them before any thread starts so every
    // thread inherits the mask.
    let mut mask = SigSet::empty();
    for s in FORWARDED.iter().chain(&[Signal::SIGWINCH]) {
        mask.add(*s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;

    let started = match assembly.start() {
        Err(crate::Error::AuditFailed(why)) => {
            eprintln!("moat: {why}; the command was not started");
            return Ok(AUDIT_FAILED);
        }
        started => started?,
    };
    let Started {
        mut sandbox,
        engine,
        env,
        workdir,
        terminate,
        audit,
        ..
    } = started;
    for note in sandbox.limit_notes() {
        eprintln!("moat: note: {note}");
    }

    if let Some(line) = resolves_elsewhere(&opts) {
        eprintln!("moat: note: {line}");
    }
    let mut streams =
        crate::terminal::Streams::new(&mut sandbox).context("set up the command's terminal")?;
    // What the run writes to the sandbox's own places vanishes with it: said at the end.
    let home = env
        .iter()
        .find(|(k, _)| k == "HOME")
        .map(|(_, v)| PathBuf::from(v));
    let private = Private {
        filesystems: std::iter::once(PathBuf::from("/tmp")).chain(home).collect(),
        workdir: opts.workdir.is_none().then(|| workdir.clone()),
    };
    let mut spec = SpawnSpec::new(opts.command.clone(), env, workdir);
    spec.terminal = streams.is_terminal();
    let mut fds: Vec<std::os::fd::BorrowedFd<'_>> = streams.fds().to_vec();
    fds.extend(preserved.iter().map(AsFd::as_fd));
    let spawned = sandbox.spawn(spec, &fds);
    drop(fds);
    let pid = match spawned {
        Ok(pid) => pid,
        Err(e) => {
            let counters = engine.and_then(|e| e.stop().ok()).unwrap_or_default();
            let _ = sandbox.stop();
            drop(streams);
            let (message, code) = spawn_failure(&e.to_string(), &opts.command[0]);
            eprintln!("moat: {message}");
            crate::builder::audit_end(&audit, Some(code), &counters);
            return finish(&opts, learn.as_ref(), &audit, code, false);
        }
    };
    streams.started()?;
    drop(preserved);

    let ended = wait_with_signals(&mut sandbox, &sigfd, pid, &streams, &terminate, &audit)?;
    let counters = engine.and_then(|e| e.stop().ok()).unwrap_or_default();
    let hit = sandbox.limit_hit();
    let discarded = private.discarded(&mut sandbox);
    let _ = sandbox.stop();
    streams.finish();
    let status = match &hit {
        Some(hit) => {
            eprintln!("moat: {hit}");
            LIMIT_EXCEEDED
        }
        None => ended,
    };
    crate::builder::audit_end(&audit, Some(status), &counters);
    let status = finish(&opts, learn.as_ref(), &audit, status, true)?;
    if let Some(line) = discarded.filter(|_| !opts.quiet) {
        eprintln!("moat: {line}");
    }
    Ok(status)
}

/// The end of a run: the summary on stderr (unless `--quiet`), what the audit log could
/// not hold (always), the learned policy (`--learn FILE`). Returns the exit status: under
/// `--audit-required`, a log with a hole in it (the `end` event lost too) is a failure.
pub(super) fn finish(
    opts: &RunOptions,
    learn: Option<&Learn>,
    audit: &moat_engine::AuditLog,
    status: i32,
    started: bool,
) -> anyhow::Result<i32> {
    let stats = audit.stats();
    // The rendered summary says these too (from the end event); without it, say them here:
    // a record with a hole in it is never silent, --quiet or not.
    let rendered = !opts.quiet && audit.summary().is_some();
    if stats.lost > 0 && !rendered {
        eprintln!(
            "moat: audit log: {} lost (cannot write: {})",
            plural(stats.lost, "event"),
            audit.loss().unwrap_or_default()
        );
    }
    if stats.truncated && !rendered {
        eprintln!(
            "moat: audit log: reached --audit-max-size ({} bytes); {} counted but not written",
            audit.options().max_size,
            plural(stats.dropped, "event")
        );
    }
    let status = if audit.halted() && status != AUDIT_FAILED {
        eprintln!(
            "moat: the audit log could not be written (--audit-required): exit status {AUDIT_FAILED} instead of {status}"
        );
        AUDIT_FAILED
    } else {
        status
    };
    let Some(summary) = audit.summary() else {
        return Ok(status);
    };
    if !opts.quiet {
        for run in summary.runs() {
            for line in run.render_after(opts.rules.len()).lines() {
                eprintln!("moat: {line}");
            }
        }
        // `--policy none` with an `--allow` has an interface (the README's
        // `--policy none --allow api.example.com:443/tcp`): only without one is this true.
        let offline = opts.policy.as_deref() == Some("none")
            && build_policy(Some("none"), &opts.rules).is_ok_and(|p| p.is_offline());
        if offline {
            eprintln!(
                "moat:   the sandbox had no network interface (--policy none): to see what the command would connect to, run it under the default policy with --learn FILE"
            );
        }
    }
    if let (Some(learn), Some(run)) = (learn, summary.runs().first()) {
        // A command that never ran (not found, not executable, refused) used nothing: a
        // good policy is not to be replaced by an empty one because of a typo.
        let quiet_failure =
            (status == 126 || status == 127) && run.allowed() + run.denied() + run.lookups() == 0;
        if !started || quiet_failure {
            eprintln!(
                "moat: --learn {}: {} (the command did not start)",
                learn.file.path().display(),
                if learn.existed {
                    "kept as it was"
                } else {
                    "not written"
                }
            );
            return Ok(status);
        }
        // The command line goes into TOML comments: no control character (a line break or
        // an escape would end the comment or make the file unreadable as a policy).
        let command: Vec<String> = opts
            .command
            .iter()
            .map(|a| {
                a.to_string_lossy()
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect()
            })
            .collect();
        let header = format!(
            "Written by `moat run --learn` from run {} of: {} (exit status {status}).\n\
             Deny by default; each rule allows what that run used, and says what used it.\n\
             Check it with `moat policy check FILE`; use it with `moat run --policy FILE -- ...`.",
            run.run,
            command.join(" ")
        );
        learn.write(&run.learned_policy(&header), &run.run, &command.join(" "))?;
    }
    Ok(status)
}

/// The sandbox's own writable places, whose contents are gone when it stops: its /tmp
/// and home (file systems of its own) and, without `-w`, its private work directory.
struct Private {
    filesystems: Vec<PathBuf>,
    workdir: Option<PathBuf>,
}

impl Private {
    /// One line saying how much the run wrote there (none when nothing was written).
    fn discarded(&self, sandbox: &mut moat_sandbox::Sandbox) -> Option<String> {
        let trees: Vec<PathBuf> = self.workdir.iter().cloned().collect();
        let bytes = sandbox.used_bytes(&self.filesystems, &trees).ok()?;
        if bytes == 0 {
            return None;
        }
        let mut places: Vec<String> = trees
            .iter()
            .chain(&self.filesystems)
            .map(|p| p.display().to_string())
            .collect();
        let last = places.pop().unwrap_or_default();
        let places = if places.is_empty() {
            last
        } else {
            format!("{} and {last}", places.join(", "))
        };
        let keep = if self.workdir.is_some() {
            "-w DIR keeps the work directory's, --rw DIR what the command writes elsewhere"
        } else {
            "--rw DIR keeps what the command writes there"
        };
        Some(format!(
            "{} written to the sandbox's own {places} were discarded; {keep}",
            human_bytes(bytes)
        ))
    }
}

/// `12 MiB`, `340 KiB`, `512 bytes`.
fn human_bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} byte{}", if n == 1 { "" } else { "s" }),
        1024..1_048_576 => format!("{} KiB", n.div_ceil(1024)),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_and_deny_mode_are_one_setting_and_must_agree() {
        assert_eq!(deny_mode(false, None).unwrap(), DenyMode::Drop);
        assert_eq!(deny_mode(true, None).unwrap(), DenyMode::Reject);
        assert_eq!(deny_mode(true, Some("reject")).unwrap(), DenyMode::Reject);
        assert_eq!(
            deny_mode(false, Some("explain")).unwrap(),
            DenyMode::Explain
        );
        assert_eq!(deny_mode(false, Some("drop")).unwrap(), DenyMode::Drop);
        let e = deny_mode(true, Some("drop")).unwrap_err().to_string();
        assert!(e.contains("--reject and --deny-mode drop disagree"), "{e}");
        assert!(deny_mode(true, Some("explain")).is_err());
        let e = deny_mode(false, Some("loud")).unwrap_err().to_string();
        assert!(e.contains("expected drop, reject or explain"), "{e}");
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nnameserver 127.0.0.53\nsearch example\nnameserver fe80::1%eth0\nnameserver ::1\nnameserver bogus\n";
        let servers = crate::setup::resolv_conf_servers(text);
        assert_eq!(
            servers,
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn cli_rules_come_first_in_order() {
        let p = build_policy(
            Some("none"),
            &[
                (true, "203.0.113.10:80/tcp".into()),
                (false, "group:private".into()),
            ],
        )
        .unwrap();
        let shown: Vec<String> = p.rules.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "allow outbound 203.0.113.10:80/tcp",
                "deny outbound group:private"
            ]
        );
        let p = build_policy(None, &[(true, "10.0.0.0/8".into())]).unwrap();
        assert_eq!(p.rules.len(), 6 + moat_policy::SPECIAL_PURPOSE.len());
        assert_eq!(p.rules[0].to_string(), "allow outbound 10.0.0.0/8");
    }

    #[test]
    fn environment_is_chosen_not_inherited() {
        let env = command_env(&["A=1".into(), "PATH=/x".into()]).unwrap();
        assert!(env.contains(&("A".into(), "1".into())));
        assert!(env.contains(&("PATH".into(), "/x".into())));
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
        // cargo sets CARGO_MANIFEST_DIR for this test process: it must not pass through
        // unless asked for, and `-e K` passes the caller's value.
        let host = std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test");
        assert!(!env.iter().any(|(k, _)| k == "CARGO_MANIFEST_DIR"));
        let keys: Vec<&OsString> = env.iter().map(|(k, _)| k).collect();
        assert!(
            keys.iter().all(|k| [
                "A",
                "PATH",
                "HOME",
                "USER",
                "TERM",
                "LANG",
                "LC_ALL",
                "TZ",
                "COLORTERM"
            ]
            .iter()
            .any(|allowed| k.as_os_str() == *allowed)),
            "{keys:?}"
        );
        let env = command_env(&["CARGO_MANIFEST_DIR".into()]).unwrap();
        assert!(env.contains(&("CARGO_MANIFEST_DIR".into(), host)));
        // A variable the caller does not have stays unset; an empty name is an error.
        let env = command_env(&["MOAT_SURELY_UNSET_VARIABLE".into()]).unwrap();
        assert!(!env.iter().any(|(k, _)| k == "MOAT_SURELY_UNSET_VARIABLE"));
        assert!(command_env(&["=x".into()]).is_err());
    }
}
