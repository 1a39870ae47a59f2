//! The command line's work, shared by the `moat` binary: `moat run` (build the sandbox,
//! start the engine on its TAP, run the command, propagate its exit status, leave nothing
//! behind) and reading `--policy` arguments.

use std::ffi::OsString;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use moat_engine::{AuditLog, DenyMode, EngineConfig, LinkConfig, TapDevice};
use moat_policy::{DestSpec, NetworkPolicy, PolicyFileError, PolicyFormat, Rule};
use moat_sandbox::{Sandbox, SandboxConfig, SpawnSpec};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Exit status for moat's own failures (the command never ran), as container runtimes do.
pub const SETUP_FAILED: i32 = 125;
/// Exit status when a resource limit (`--memory`, `--pids-limit`) ended the run.
pub const LIMIT_EXCEEDED: i32 = 122;
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
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--max-buffer-memory SIZE`.
    pub max_buffer_memory: Option<String>,
    /// `--reject`.
    pub reject: bool,
    /// `--audit FILE` ("-" = stderr).
    pub audit: Option<String>,
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
    /// `--name`.
    pub name: String,
    /// The command.
    pub command: Vec<OsString>,
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

/// `nameserver` lines of a resolv.conf, as socket addresses on port 53.
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
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

/// The command's environment: a few harmless host variables, then `-e` settings. Nothing
/// else of moat's environment (tokens, keys) reaches the sandbox.
fn command_env(extra: &[String]) -> anyhow::Result<Vec<(OsString, OsString)>> {
    let mut env = crate::setup::base_env();
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

fn open_audit(target: Option<&str>) -> anyhow::Result<Option<Box<dyn Write + Send>>> {
    Ok(match target {
        None => None,
        Some("-") => Some(Box::new(io::stderr())),
        Some(path) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("--audit {path}: cannot open for appending"))?,
        )),
    })
}

/// Runs the command; returns the exit status for moat to exit with.
pub fn run(opts: RunOptions) -> anyhow::Result<i32> {
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
    if opts.command.is_empty() {
        bail!(
            "nothing to run: give the command after --, e.g. moat run -- curl https://example.com"
        );
    }
    if !moat_sandbox::valid_name(&opts.name) {
        bail!(
            "--name {}: expected 1-63 characters of a-z, 0-9, - and _",
            opts.name
        );
    }
    let policy = build_policy(opts.policy.as_deref(), &opts.rules)?;
    let compiled = policy.compile()?;
    for warning in policy.warnings() {
        eprintln!("moat: warning: {warning}");
    }
    let env = command_env(&opts.env)?;
    let dns_servers = if opts.dns.is_empty() {
        std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| resolv_conf_servers(&t))
            .unwrap_or_default()
    } else {
        opts.dns
            .iter()
            .map(|d| parse_dns(d))
            .collect::<anyhow::Result<_>>()?
    };
    let block_domains = opts
        .block_domains
        .iter()
        .map(|d| moat_policy::DomainName::new(d).with_context(|| format!("--block-domain {d}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let block_domain_suffixes = opts
        .block_domain_suffixes
        .iter()
        .map(|d| {
            moat_policy::DomainSuffix::new(d).with_context(|| format!("--block-domain-suffix {d}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let publish = opts
        .publish
        .iter()
        .map(|p| p.parse::<crate::publish::PublishSpec>())
        .collect::<Result<Vec<_>, _>>()?;
    if !publish.is_empty() && policy.is_offline() {
        bail!(
            "--publish needs a network, and this policy allows nothing (no interface is created); add an inbound allow rule or use another policy"
        );
    }
    // Bound now, before anything runs: a taken port stops moat here.
    let published = crate::publish::bind_all(&publish)?;
    let audit = AuditLog::new(&opts.name, open_audit(opts.audit.as_deref())?);

    let mut link = LinkConfig::default();
    if let Some(mtu) = opts.mtu {
        link.set_mtu(mtu as usize)
            .map_err(|e| anyhow::anyhow!("--mtu {mtu}: {e}"))?;
    }
    let network = (!policy.is_offline()).then(|| crate::setup::net_spec(&link));
    let (workdir, workdir_host) = match &opts.workdir {
        Some(dir) => {
            let dir = dir
                .canonicalize()
                .with_context(|| format!("-w {}: no such directory", dir.display()))?;
            (dir.clone(), Some(dir))
        }
        None => (PathBuf::from("/workspace"), None),
    };
    let hosts = crate::setup::hosts_file(&opts.name, &link);
    let asked = moat_sandbox::Limits {
        memory: opts
            .memory
            .as_deref()
            .map(|m| {
                moat_sandbox::parse_size(m)
                    .with_context(|| format!("--memory {m}: expected a size such as 512m or 2g"))
            })
            .transpose()?,
        pids: opts.pids_limit,
        cpus: opts.cpus,
    };
    let max_buffer_memory = match opts.max_buffer_memory.as_deref() {
        None => moat_engine::DEFAULT_MAX_BUFFER_MEMORY,
        Some(m) => {
            let bytes = moat_sandbox::parse_size(m).with_context(|| {
                format!("--max-buffer-memory {m}: expected a size such as 64m or 1g")
            })?;
            let min = moat_engine::MIN_BUFFER_MEMORY;
            if bytes < min as u64 {
                bail!("--max-buffer-memory {m}: expected at least {}m", min >> 20);
            }
            usize::try_from(bytes).unwrap_or(usize::MAX)
        }
    };
    if asked.pids == Some(0) {
        bail!("--pids-limit 0: expected at least 1");
    }
    if let Some(c) = asked.cpus
        && !(c.is_finite() && c >= 0.01)
    {
        bail!("--cpus {c}: expected a number of CPUs such as 0.5 or 2");
    }
    let mut config = SandboxConfig::new(opts.name.clone());
    config.workdir = workdir.clone();
    config.workdir_host = workdir_host;
    config.resolv_conf = network.as_ref().map(|_| crate::setup::resolv_conf(&link));
    config.hosts = Some(hosts);
    config.network = network;
    config.grants = crate::setup::grants(&opts.ro, &opts.rw)?;
    config.limits = crate::setup::limits(&asked);
    config.asked_limits = asked;

    // Signals are taken through a signalfd; block them before any thread starts so every
    // thread inherits the mask.
    let mut mask = SigSet::empty();
    for s in FORWARDED.iter().chain(&[Signal::SIGWINCH]) {
        mask.add(*s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)?;
    let sigfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;

    let mut sandbox = Sandbox::start(&config)?;
    for note in sandbox.limit_notes() {
        eprintln!("moat: note: {note}");
    }
    let engine = match sandbox.take_tap() {
        Some(tap) => {
            let mut cfg = EngineConfig::new(compiled, audit);
            cfg.deny_mode = if opts.reject {
                DenyMode::Reject
            } else {
                DenyMode::Drop
            };
            cfg.max_connections = opts
                .max_connections
                .unwrap_or(moat_engine::DEFAULT_MAX_CONNECTIONS);
            cfg.max_buffer_memory = max_buffer_memory;
            cfg.dns_servers = dns_servers;
            cfg.block_domains = block_domains;
            cfg.block_domain_suffixes = block_domain_suffixes;
            cfg.dns_rebind_protection = !opts.no_dns_rebind_protection;
            cfg.published = published;
            cfg.link = link;
            let device = TapDevice::with_offloads(tap)?;
            moat_sandbox::memory::large_allocations_from_fresh_pages();
            Some(moat_engine::spawn(Box::new(device), cfg)?)
        }
        None => None,
    };

    let mut streams = crate::terminal::Streams::new().context("set up the command's terminal")?;
    let mut spec = SpawnSpec::new(opts.command.clone(), env, workdir);
    spec.terminal = streams.is_terminal();
    let mut fds: Vec<std::os::fd::BorrowedFd<'_>> = streams.fds().to_vec();
    fds.extend(preserved.iter().map(AsFd::as_fd));
    let spawned = sandbox.spawn(spec, &fds);
    drop(fds);
    let pid = match spawned {
        Ok(pid) => pid,
        Err(e) => {
            drop(engine);
            let _ = sandbox.stop();
            drop(streams);
            let (message, code) = spawn_failure(&e.to_string(), &opts.command[0]);
            eprintln!("moat: {message}");
            return Ok(code);
        }
    };
    streams.started()?;
    drop(preserved);

    let ended = wait_with_signals(&mut sandbox, &sigfd, pid, &streams)?;
    if let Some(engine) = engine {
        let _ = engine.stop();
    }
    let hit = sandbox.limit_hit();
    let _ = sandbox.stop();
    streams.finish();
    match hit {
        Some(hit) => {
            eprintln!("moat: {hit}");
            Ok(LIMIT_EXCEEDED)
        }
        None => Ok(ended),
    }
}

/// The message and exit status for a command that could not be started: 127 when it is
/// not in the sandbox (with the `--ro` that would show it, when the host has it), 126
/// when it is there but cannot be executed.
fn spawn_failure(error: &str, command: &OsString) -> (String, i32) {
    // ENOENT from exec: a path given with a slash that the sandbox does not have.
    if error.contains("command not found") || error.ends_with("(os error 2)") {
        let hint = host_program(command).map_or_else(
            || {
                " (the sandbox sees the system directories /usr, /bin, /sbin, /lib, /etc and /opt, the work directory and what --ro/--rw grant)".to_owned()
            },
            |path| {
                let dir = path.parent().unwrap_or(&path).display().to_string();
                format!(
                    "; the host has it at {}, which the sandbox does not see: add --ro {dir}",
                    path.display()
                )
            },
        );
        (format!("{error}{hint}"), NOT_FOUND)
    } else {
        (error.to_owned(), NOT_EXECUTABLE)
    }
}

/// Where the host's PATH finds `command`, if anywhere.
fn host_program(command: &OsString) -> Option<PathBuf> {
    let command = std::path::Path::new(command);
    if command.components().count() > 1 {
        return command.exists().then(|| command.to_owned());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(command))
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
}

/// Signals moat passes on to the command. The command runs in a session of its own, so a
/// terminal's Ctrl-C reaches moat only, and moat hands it on.
const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// How often moat looks at the sandbox's limit counters while the command runs.
const LIMIT_CHECK: Duration = Duration::from_millis(200);

/// Waits for the command, forwarding the signals moat gets and copying window-size
/// changes; returns early (the caller stops the sandbox) when a resource limit was hit.
fn wait_with_signals(
    sandbox: &mut Sandbox,
    sigfd: &SignalFd,
    pid: i32,
    streams: &crate::terminal::Streams,
) -> anyhow::Result<i32> {
    let mut kill_deadline: Option<Instant> = None;
    loop {
        if let Some(status) = sandbox
            .next_exit(false)?
            .and_then(|(p, s)| (p == pid).then_some(s))
        {
            return Ok(status.shell_code());
        }
        if sandbox.limit_hit().is_some() {
            return Ok(LIMIT_EXCEEDED);
        }
        let mut wait = LIMIT_CHECK;
        if let Some(d) = kill_deadline {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // The command ignored the forwarded signal: end the whole sandbox.
                return Ok(128 + Signal::SIGKILL as i32);
            }
            wait = wait.min(left);
        }
        let timeout = nix::poll::PollTimeout::try_from(wait.as_millis() as i32)
            .unwrap_or(nix::poll::PollTimeout::MAX);
        let mut fds = [
            nix::poll::PollFd::new(sandbox.event_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(sigfd.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        if !fds[1].any().unwrap_or(false) {
            continue;
        }
        while let Ok(Some(info)) = sigfd.read_signal() {
            let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match signal {
                Signal::SIGWINCH => streams.resize(),
                // What a terminal sends goes to the command's whole process group, as the
                // terminal would have done had the command been in moat's.
                Signal::SIGINT | Signal::SIGQUIT => {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(-pid), signal);
                }
                _ => {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
                    let terminating = matches!(signal, Signal::SIGTERM | Signal::SIGHUP);
                    if terminating && kill_deadline.is_none() {
                        kill_deadline = Some(Instant::now() + Duration::from_secs(10));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nnameserver 127.0.0.53\nsearch example\nnameserver fe80::1%eth0\nnameserver ::1\nnameserver bogus\n";
        let servers = resolv_conf_servers(text);
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
