//! The `moat` command line (shared/API.md §3): the flags, and the subcommands that are
//! not `run` (`policy check`, `policy explain`). `moat run` is in `run.rs`, `moat demo` in
//! `demo.rs`. None of this is part of the library's API: the binary calls
//! [`crate::command_line`].

mod attach;
mod cni;
mod hints;
mod learn;
mod netns;
pub(crate) mod run;
mod wait;

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use self::run::policy_arg;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use moat_policy::{
    Direction, DomainName, Flow, FlowTarget, NetworkPolicy, PolicyFileError, canonical_addr,
};

/// Run untrusted code behind a policy-enforcing user-space network.
#[derive(Parser)]
#[command(name = "moat", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a sandbox whose network goes only through moat's policy.
    Run(Box<RunArgs>),
    /// Serve a network namespace someone else made (a container's): moat's interface goes
    /// in as eth0, and its traffic is judged by the policy as in `moat run`, until the
    /// namespace's last process is gone; then the summary.
    Attach(Box<AttachArgs>),
    /// Named network namespaces (/run/netns/NAME) served by moat, for containers to join.
    #[command(subcommand)]
    Netns(NetnsCommand),
    /// A self-contained tour: sandboxes under several policies on a throwaway local world.
    Demo,
    /// Run the boundary probes on this host: a line per probe (held, LEAK or skipped) and what
    /// the host lacks; exit 0 unless a probe leaked or could not run.
    Selftest {
        /// One JSON document instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// A probe's attacker (run by `moat selftest` inside a sandbox).
    #[command(name = "__probe", hide = true)]
    Probe {
        /// The probe and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check policy files and explain decisions.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// A stable TLS interception CA under the user's data directory.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Summarize an audit log, run by run: what was allowed and denied, by destination,
    /// and the --allow flags that would have permitted the denials.
    Audit {
        /// An audit log (JSON lines, as `moat run --audit FILE` writes); "-" for stdin.
        file: PathBuf,
        /// One JSON object ({"runs": [...]}) instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Make the CA (kept if it exists): ca.pem and ca-key.pem (mode 0600).
    Init,
    /// Print the CA's certificate, fingerprint and how to use it.
    Show,
}

#[derive(Args)]
#[command(
    after_help = "DEST = IP | CIDR | DOMAIN | *.SUFFIX | any | group:private|loopback|link-local|metadata|multicast,\n       optional :PORT or :START-END, optional /tcp /udp /icmp\n\nThe sandbox sees /usr, /bin, /sbin, /lib*, /etc (secrets masked) and /opt read-only, a fresh\nHOME (/root), /tmp and /run, the work directory, and what --ro/--rw grant; nothing else of the host.\n\nThe exit status is the command's (128+N when signal N killed it); 125 when moat itself failed,\n126 when the command cannot be executed, 127 when it is not found, 122 when a limit ended the run,\n123 when a secret's placeholder headed elsewhere under --on-secret-violation block-and-terminate,\n121 when the audit log could not be written under --audit-required (moat stopped the sandbox)."
)]
struct RunArgs {
    #[command(flatten)]
    net: NetArgs,
    /// Learn mode: run under the policy as usual (public-only unless given), then write FILE,
    /// a deny-by-default policy with the fewest rules that allow what the run used. An
    /// existing FILE is extended (what it holds is kept, comments too); a run whose command
    /// did not start leaves it as it was.
    #[arg(long, value_name = "FILE", conflicts_with = "learn_fresh")]
    learn: Option<PathBuf>,
    /// Learn mode, starting over: FILE is replaced by what this run used alone.
    #[arg(long, value_name = "FILE")]
    learn_fresh: Option<PathBuf>,
    /// Host directory to mount writable at the same path, and start in.
    #[arg(short = 'w', long, value_name = "DIR")]
    workdir: Option<std::path::PathBuf>,
    /// Set an environment variable inside the sandbox (K alone: the caller's value).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    env: Vec<String>,
    /// Make a host path visible inside, read-only, at the same path; repeatable.
    #[arg(long, value_name = "PATH")]
    ro: Vec<PathBuf>,
    /// Make a host path visible and writable inside, at the same path; repeatable.
    #[arg(long, value_name = "PATH")]
    rw: Vec<PathBuf>,
    /// Pass moat's descriptors 3 to 2+N on to the command (all others are closed).
    #[arg(long, value_name = "N", default_value_t = 0)]
    preserve_fds: usize,
    /// Memory for everything in the sandbox, e.g. 512m or 2g (the kernel kills what goes over).
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// At most N processes and threads in the sandbox (default 4096).
    #[arg(long, value_name = "N")]
    pids_limit: Option<u64>,
    /// CPUs' worth of time, e.g. 0.5 or 2.
    #[arg(long, value_name = "F")]
    cpus: Option<f64>,
    /// The command and its arguments (after `--`, or simply after moat's own options).
    #[arg(required = true, trailing_var_arg = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

/// The network options of `moat run`, which `moat attach` and `moat netns create` take too.
#[derive(Args)]
struct NetArgs {
    /// public-only (default), allow-all, none, or a TOML/JSON policy file.
    #[arg(long, value_name = "POLICY")]
    policy: Option<String>,
    /// Allow outbound traffic to DEST (before the policy's own rules, in command-line order).
    #[arg(long, value_name = "DEST")]
    allow: Vec<String>,
    /// Deny outbound traffic to DEST (before the policy's own rules, in command-line order).
    #[arg(long, value_name = "DEST")]
    deny: Vec<String>,
    /// Upstream DNS resolver, IP[:PORT]; repeatable, tried in order (default: the host's resolv.conf).
    #[arg(long, value_name = "IP[:PORT]")]
    dns: Vec<String>,
    /// Answer NXDOMAIN for lookups of exactly NAME (never sent upstream); repeatable.
    #[arg(long, value_name = "NAME")]
    block_domain: Vec<String>,
    /// Answer NXDOMAIN for lookups of every name below SUFFIX (.tracking.com); repeatable.
    #[arg(long, value_name = "SUFFIX")]
    block_domain_suffix: Vec<String>,
    /// Keep DNS answers that point at private, loopback, link-local or metadata addresses.
    #[arg(long)]
    no_dns_rebind_protection: bool,
    /// Publish a sandbox port on the host: [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|/udp]
    /// (HOST_IP defaults to 127.0.0.1); repeatable.
    #[arg(short = 'p', long, value_name = "SPEC")]
    publish: Vec<String>,
    /// The sandbox interface's MTU (1280-65520; default 65520: large frames cost less).
    #[arg(long, value_name = "BYTES")]
    mtu: Option<u32>,
    /// After traffic, keep polling this many microseconds before sleeping (default 100;
    /// 0: least CPU, about 0.1 ms more per new connection; at most 1000).
    #[arg(long, value_name = "MICROSECONDS")]
    busy_poll: Option<u64>,
    /// At most N concurrent connections (TCP connections and UDP flows).
    #[arg(long, value_name = "N", default_value_t = moat_engine::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Memory the connections' buffers may hold in all, e.g. 64m (default 256m; at least
    /// 4m): past it, windows shrink and new connections are refused.
    #[arg(long, value_name = "SIZE")]
    max_buffer_memory: Option<String>,
    /// Refuse denied connections at once (TCP RST, ICMP prohibited) instead of dropping them
    /// (the same as --deny-mode reject).
    #[arg(long)]
    reject: bool,
    /// How denied flows are answered: drop (silently; the default), reject (TCP RST, ICMP
    /// prohibited), or explain (as reject, but a refused HTTP request gets moat's 403 with
    /// the reason and the flag that would allow it, and a refused lookup an Extended DNS
    /// Error saying the same).
    #[arg(long, value_name = "MODE", value_parser = ["drop", "reject", "explain"])]
    deny_mode: Option<String>,
    /// Append audit events (JSON lines) to FILE; "-" for stderr.
    #[arg(long, value_name = "FILE")]
    audit: Option<String>,
    /// The audit log's cap, e.g. 16m (default 64m; at least 16k; the file's length when
    /// opened counts): repeats within a second are one event with a count, at the cap one
    /// `truncated` event is written and later events only counted; `end` always fits.
    #[arg(long, value_name = "SIZE")]
    audit_max_size: Option<String>,
    /// Stop the sandbox (exit status 121) when an audit event cannot be written (disk full,
    /// I/O error) instead of going on without it; by default the loss is said on stderr
    /// and counted in the summary and the end event.
    #[arg(long)]
    audit_required: bool,
    /// No summary of what the run's network did when it ends (and no live line per new
    /// denial on a terminal).
    #[arg(long)]
    quiet: bool,
    /// Intercept TLS on the intercepted ports (443 unless --tls-port): the sandbox trusts a
    /// CA of moat's; moat verifies the servers.
    #[arg(long)]
    tls_intercept: bool,
    /// Do not intercept NAME (or *.SUFFIX, every name below); repeatable.
    #[arg(long, value_name = "PATTERN", requires = "tls_intercept")]
    tls_bypass: Vec<String>,
    /// Intercept TLS on TCP port N instead of 443; repeatable.
    #[arg(long, value_name = "N", requires = "tls_intercept")]
    tls_port: Vec<u16>,
    /// The interception CA's PEM certificate (with --tls-ca-key; see `moat ca init`).
    #[arg(long, value_name = "FILE", requires = "tls_intercept")]
    tls_ca_cert: Option<PathBuf>,
    /// The interception CA's PEM key.
    #[arg(long, value_name = "FILE", requires = "tls_intercept")]
    tls_ca_key: Option<PathBuf>,
    /// Also trust the PEM CA certificate(s) in FILE when verifying servers; repeatable.
    #[arg(long, value_name = "FILE", requires = "tls_intercept")]
    tls_upstream_ca: Vec<PathBuf>,
    /// Accept any server certificate.
    #[arg(long, requires = "tls_intercept")]
    tls_no_verify_upstream: bool,
    /// Let UDP to intercepted ports (QUIC) pass under the policy instead of refusing it.
    #[arg(long, requires = "tls_intercept")]
    tls_allow_quic: bool,
    /// A secret: the sandbox's NAME holds a placeholder, the value (moat's own NAME) may go
    /// only to HOST(s) (`*.SUFFIX` allowed); repeatable.
    #[arg(long, value_name = "NAME@HOST[,HOST...]")]
    secret: Vec<String>,
    /// Let secret NAME's value go over plain HTTP to its hosts too (off by default: a value
    /// in clear text is a leak); repeatable.
    #[arg(long, value_name = "NAME")]
    secret_plain_http: Vec<String>,
    /// When a placeholder heads elsewhere: block (reset), block-and-log (and warn), or
    /// block-and-terminate (and stop the sandbox; exit status 123).
    #[arg(long, value_name = "ACTION")]
    on_secret_violation: Option<String>,
    /// The sandbox's name (also its host name; `moat attach`: the name in the audit log).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

#[derive(Args)]
#[command(
    group(clap::ArgGroup::new("target").required(true).args(["netns", "pid"])),
    after_help = "With Podman: `touch resolv.conf; podman run --network none -v $PWD/resolv.conf:/etc/resolv.conf ...`, then
  moat attach --pid \"$(podman inspect -f '{{.State.Pid}}' C)\" --resolv-conf resolv.conf [options]
or run containers in a namespace of `moat netns create NAME` (podman run --network ns:/run/netns/NAME --dns 10.0.2.2).
The exit status is 0, 123 when a secret violation under block-and-terminate stopped it, 121 when the
audit log could not be written under --audit-required, 125 when moat could not serve the namespace."
)]
struct AttachArgs {
    /// The network namespace to serve: /run/netns/NAME, /proc/PID/ns/net, ...
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// Serve the network namespace process PID runs in.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Take over the namespace's eth0 (it is deleted, a veth with its peer) instead of
    /// refusing a namespace that has one.
    #[arg(long)]
    replace: bool,
    /// Stay until signalled, even when no process is left in the namespace.
    #[arg(long)]
    keep: bool,
    /// Write a resolv.conf that sends lookups to moat over FILE, in place (one mounted at a
    /// container's /etc/resolv.conf).
    #[arg(long, value_name = "FILE")]
    resolv_conf: Option<PathBuf>,
    /// Write the interception CA's certificate (PEM) to FILE, for the namespace's programs
    /// to trust (mount it into the container).
    #[arg(long, value_name = "FILE", requires = "tls_intercept")]
    ca_out: Option<PathBuf>,
    /// Write each secret's NAME=PLACEHOLDER to FILE (mode 0600), for `podman run
    /// --env-file FILE`.
    #[arg(long, value_name = "FILE")]
    env_out: Option<PathBuf>,
    /// Write moat's process id and its start time (/proc/PID/stat's 22nd field) to FILE
    /// once the namespace is served.
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(Subcommand)]
enum NetnsCommand {
    /// Make /run/netns/NAME and serve it with moat in the background (its output in
    /// /run/moat/netns/NAME.log); prints the namespace's path.
    Create {
        /// The namespace's name: letters, digits, '-', '_' and '.'.
        #[arg(value_name = "NAME")]
        namespace: String,
        #[command(flatten)]
        net: Box<NetArgs>,
    },
    /// Stop the moat serving NAME (printing its summary) and remove the namespace.
    Rm {
        /// The namespace's name.
        name: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file and print its rules, normalized; exit 1 with file:line:col on error.
    Check {
        /// A TOML or JSON policy file.
        file: PathBuf,
    },
    /// Print the decision for a flow and the rule that made it.
    Explain(ExplainArgs),
}

#[derive(Args)]
struct ExplainArgs {
    /// A preset (public-only, allow-all, none) or a policy file.
    policy: String,
    /// The flow's remote end: ADDR[:PORT][/PROTO], e.g. 10.1.2.3:80/tcp or '[2001:db8::1]:443'.
    #[arg(long, value_name = "ADDR[:PORT][/PROTO]")]
    to: String,
    /// A name whose DNS answer contained ADDR (the pin set); repeatable.
    #[arg(long, value_name = "NAME")]
    domain: Vec<String>,
    /// The TLS SNI the client sent.
    #[arg(long, value_name = "NAME")]
    sni: Option<String>,
    /// Judge an inbound flow (a peer at ADDR connecting to published guest port PORT).
    #[arg(long)]
    inbound: bool,
}

/// The `moat` binary.
pub(crate) fn main() -> ExitCode {
    // A sandbox's supervisor is this same program started again: it never returns here.
    if let Some(code) = moat_sandbox::supervisor_entry() {
        std::process::exit(code);
    }
    // Called by a container runtime as its CNI plugin (a link or copy named moat-cni).
    if cni::called_as_plugin() {
        return cni::main();
    }
    // `moat cni install ...`: what `moat-cni install ...` does (a DaemonSet runs it from
    // moat's image, which has no moat-cni link).
    if std::env::args_os().nth(1).is_some_and(|a| a == "cni") {
        let args: Vec<String> = std::env::args().skip(2).collect();
        return cni::tool(&args);
    }
    // Usage errors exit 125 like moat's other failures (as podman does); help and the
    // version exit 0.
    let usage_error = |e: clap::Error| -> ExitCode {
        let _ = e.print();
        match e.kind() {
            clap::error::ErrorKind::DisplayHelp
            | clap::error::ErrorKind::DisplayVersion
            | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => ExitCode::SUCCESS,
            _ => ExitCode::from(run::SETUP_FAILED as u8),
        }
    };
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) => return usage_error(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match cli.command {
        Command::Run(args) => {
            let run_matches = matches.subcommand_matches("run");
            return match run::run(run_options(*args, run_matches)) {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(e) => {
                    eprintln!("moat: {}", describe(&e));
                    ExitCode::from(run::SETUP_FAILED as u8)
                }
            };
        }
        Command::Attach(args) => {
            let sub = matches.subcommand_matches("attach");
            let args = *args;
            let name = args
                .netns
                .as_deref()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .filter(|n| moat_sandbox::valid_name(n))
                .map(str::to_owned)
                .or_else(|| args.pid.map(|p| format!("pid-{p}")))
                .unwrap_or_else(|| "moat".to_owned());
            let opts = net_options(args.net, sub, &name);
            let netns = match (args.netns, args.pid) {
                (Some(path), _) => Some(crate::Netns::at(path)),
                (None, Some(pid)) => Some(crate::Netns::of_pid(pid)),
                (None, None) => None,
            }
            .map(|n| n.replace(args.replace));
            let a = attach::AttachOptions {
                netns,
                keep: args.keep,
                resolv_conf: args.resolv_conf,
                ca_out: args.ca_out,
                env_out: args.env_out,
                ready_file: args.ready_file,
                detached: false,
            };
            return exit_of(attach::attach(opts, a));
        }
        Command::Netns(NetnsCommand::Create {
            namespace: name,
            net,
        }) => {
            let sub = matches
                .subcommand_matches("netns")
                .and_then(|m| m.subcommand_matches("create"));
            let default = if moat_sandbox::valid_name(&name) {
                name.as_str()
            } else {
                "moat"
            };
            let opts = net_options(*net, sub, default);
            return exit_of(netns::create(&name, opts));
        }
        Command::Netns(NetnsCommand::Rm { name }) => return exit_of(netns::rm(&name)),
        Command::Demo => {
            return match crate::demo::demo() {
                Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
                Err(e) => {
                    eprintln!("moat demo: {}", describe(&e));
                    ExitCode::FAILURE
                }
            };
        }
        Command::Selftest { json } => return crate::selftest::main(json),
        Command::Probe { args } => {
            return ExitCode::from(crate::selftest::probe_main(&args).clamp(0, 255) as u8);
        }
        Command::Policy(PolicyCommand::Check { file }) => check(&file),
        Command::Ca(what) => ca(&what),
        Command::Audit { file, json } => audit(&file, json),
        Command::Policy(PolicyCommand::Explain(args)) => explain(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moat: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// A command's exit status, or moat's own failure (125) said on stderr.
fn exit_of(result: anyhow::Result<i32>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("moat: {}", describe(&e));
            ExitCode::from(run::SETUP_FAILED as u8)
        }
    }
}

/// `moat audit FILE [--json]`.
fn audit(file: &Path, json: bool) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let reader: Box<dyn std::io::BufRead> = if file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| anyhow::anyhow!("cannot read the audit log {}: {e}", file.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut summary = moat_engine::summary::Summary::new();
    let mut skipped = 0u64;
    for (n, line) in reader.lines().enumerate() {
        let line =
            line.map_err(|e| anyhow::anyhow!("reading {} line {}: {e}", file.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(serde_json::Value::Object(event)) => {
                summary.add(&event);
            }
            _ => skipped += 1,
        }
    }
    if json {
        let runs: Vec<serde_json::Value> = summary.runs().iter().map(|r| r.to_json()).collect();
        println!(
            "{}",
            serde_json::json!({ "runs": runs, "skipped_lines": skipped })
        );
    } else {
        if summary.runs().is_empty() {
            println!("no events in {}", file.display());
        }
        for run in summary.runs() {
            print!("{}", run.render());
        }
        if skipped > 0 {
            eprintln!(
                "moat: {skipped} lines of {} are not audit events (skipped)",
                file.display()
            );
        }
    }
    Ok(())
}

/// `moat run`'s options: the network's, then the sandbox's.
fn run_options(args: RunArgs, matches: Option<&clap::ArgMatches>) -> run::RunOptions {
    let mut opts = net_options(args.net, matches, "moat");
    opts.workdir = args.workdir;
    opts.env = args.env;
    opts.ro = args.ro;
    opts.rw = args.rw;
    opts.preserve_fds = args.preserve_fds;
    opts.memory = args.memory;
    opts.pids_limit = args.pids_limit;
    opts.cpus = args.cpus;
    opts.learn_fresh = args.learn_fresh.is_some();
    opts.learn = args.learn.or(args.learn_fresh);
    opts.command = args.command;
    opts
}

/// The network options, with `--allow` and `--deny` merged in the order they were given
/// (`matches`: the subcommand's) and `name` when `--name` is not given.
fn net_options(args: NetArgs, matches: Option<&clap::ArgMatches>, name: &str) -> run::RunOptions {
    let mut rules: Vec<(usize, bool, String)> = Vec::new();
    for (id, allow, values) in [("allow", true, &args.allow), ("deny", false, &args.deny)] {
        let indices: Vec<usize> = matches
            .and_then(|m| m.indices_of(id))
            .map(Iterator::collect)
            .unwrap_or_default();
        for (i, value) in values.iter().enumerate() {
            rules.push((
                indices.get(i).copied().unwrap_or(usize::MAX),
                allow,
                value.clone(),
            ));
        }
    }
    rules.sort_by_key(|r| r.0);
    run::RunOptions {
        policy: args.policy,
        rules: rules.into_iter().map(|(_, a, d)| (a, d)).collect(),
        dns: args.dns,
        block_domains: args.block_domain,
        block_domain_suffixes: args.block_domain_suffix,
        no_dns_rebind_protection: args.no_dns_rebind_protection,
        publish: args.publish,
        mtu: args.mtu,
        busy_poll: args.busy_poll,
        max_connections: Some(args.max_connections),
        max_buffer_memory: args.max_buffer_memory,
        reject: args.reject,
        deny_mode: args.deny_mode,
        audit: args.audit,
        audit_max_size: args.audit_max_size,
        audit_required: args.audit_required,
        tls: args.tls_intercept.then_some(run::TlsOptions {
            bypass: args.tls_bypass,
            ports: args.tls_port,
            ca_cert: args.tls_ca_cert,
            ca_key: args.tls_ca_key,
            upstream_cas: args.tls_upstream_ca,
            no_verify_upstream: args.tls_no_verify_upstream,
            allow_quic: args.tls_allow_quic,
        }),
        secrets: args.secret,
        secrets_plain_http: args.secret_plain_http,
        quiet: args.quiet,
        on_secret_violation: args.on_secret_violation,
        name: args.name.unwrap_or_else(|| name.to_owned()),
        ..run::RunOptions::default()
    }
}

fn load(path: &Path) -> Result<NetworkPolicy, PolicyFileError> {
    run::read_policy_file(path)
}

/// The address `moat policy explain --to NAME` judges a name at (TEST-NET-1, RFC 5737).
const NAME_STAND_IN: &str = "192.0.2.1";

/// An error and its causes on one line, each cause once: errors that already show their
/// source (moat's own, "what: why") are not followed by it again.
pub(crate) fn describe(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// `moat ca init|show`.
fn ca(what: &CaCommand) -> anyhow::Result<()> {
    let dir = crate::tls::ca_dir().ok_or_else(|| {
        anyhow::anyhow!("neither XDG_DATA_HOME nor HOME is set: nowhere to keep the CA")
    })?;
    match what {
        CaCommand::Init => {
            let (cert, made) = crate::tls::ca_init(&dir)?;
            if made {
                println!("made a CA: {}", cert.display());
            } else {
                println!("the CA exists: {}", cert.display());
            }
            print!("{}", crate::tls::ca_show(&dir)?);
        }
        CaCommand::Show => print!("{}", crate::tls::ca_show(&dir)?),
    }
    Ok(())
}

fn check(file: &Path) -> anyhow::Result<()> {
    let policy = load(file)?;
    policy
        .compile()
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    println!(
        "{}: ok: {} rule{}, default {}",
        file.display(),
        policy.rules.len(),
        if policy.rules.len() == 1 { "" } else { "s" },
        policy.default_action
    );
    let width = policy.rules.len().saturating_sub(1).to_string().len();
    for (i, rule) in policy.rules.iter().enumerate() {
        println!("  {i:>width$}  {rule}");
    }
    println!(
        "  {:>width$}  {} (no rule matched)",
        "-", policy.default_action
    );
    if policy.is_offline() {
        println!("note: nothing can ever be allowed: the sandbox gets no network interface");
    }
    for warning in policy.warnings() {
        println!("warning: {warning}");
    }
    Ok(())
}

fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    let policy = policy_arg(&args.policy)?;
    let compiled = policy.compile()?;
    // A name is judged as a connection to an address its lookup answered: a documentation
    // address stands for that address.
    let (target, named) = match FlowTarget::parse(&args.to) {
        Ok(target) => (target, None),
        Err(e) => {
            let at = args.to.find([':', '/']).unwrap_or(args.to.len());
            let Ok(name) = DomainName::new(&args.to[..at]) else {
                return Err(e.into());
            };
            let stand_in = format!("{NAME_STAND_IN}{}", &args.to[at..]);
            (FlowTarget::parse(&stand_in)?, Some(name))
        }
    };
    let mut names = args
        .domain
        .iter()
        .map(|n| DomainName::new(n))
        .collect::<Result<Vec<_>, _>>()?;
    names.extend(named.clone());
    let sni = args.sni.as_deref().map(DomainName::new).transpose()?;
    let direction = if args.inbound {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    // As `moat run` judges it: the gateway stands for the host's loopback.
    let link = moat_engine::LinkConfig::default();
    let gateway_loopback = match target.addr {
        a if a == IpAddr::V4(link.gateway_v4) => Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        a if a == IpAddr::V6(link.gateway_v6) => Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        _ => None,
    }
    .filter(|_| direction == Direction::Outbound);
    let flow = Flow {
        direction,
        protocol: target.protocol,
        addr: gateway_loopback.unwrap_or(target.addr),
        port: target.port,
        names: &names,
        sni: sni.as_ref(),
        local: false,
    };
    let decision = compiled.decide(&flow);
    let without_sni = compiled.decide(&Flow { sni: None, ..flow });
    let host = named
        .as_ref()
        .map_or_else(|| target.addr.to_string(), |n| n.as_str().to_owned());
    let shown = match target.port {
        Some(port) if target.addr.is_ipv6() && named.is_none() => format!("[{host}]:{port}"),
        Some(port) => format!("{host}:{port}"),
        None => host,
    };
    println!("decision: {}", decision.action);
    println!("rule:     {}", decision.rule_label());
    println!("reason:   {}", compiled.reason(&decision));
    print!("flow:     {direction} {} {shown}", target.protocol);
    let judged = canonical_addr(flow.addr);
    if let Some(name) = &named {
        print!(
            " (judged at an address a lookup of {name} answered; {NAME_STAND_IN} stands for it, so rules naming real addresses may decide otherwise)"
        );
    } else if let Some(loopback) = gateway_loopback {
        print!(" (the gateway: judged as the host's loopback, {loopback})");
    } else if judged != target.addr {
        print!(" (judged as {judged})");
    }
    println!();
    if !names.is_empty() {
        let list: Vec<&str> = names.iter().map(DomainName::as_str).collect();
        println!("names:    {}", list.join(", "));
    }
    if let Some(sni) = &sni {
        println!("sni:      {sni}");
        if without_sni.action != decision.action {
            println!(
                "note:     the TLS server name decided: without it the flow would be {} ({})",
                without_sni.action,
                compiled.reason(&without_sni)
            );
        }
    }
    for name in &names {
        let d = compiled.decide_name(name);
        let what = if d.is_allow() {
            "forwarded upstream"
        } else {
            "answered NXDOMAIN, never sent upstream"
        };
        println!(
            "dns:      a lookup of {name} is {what} ({})",
            compiled.reason(&d)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

    use super::*;

    fn command_of(args: &[&str]) -> Vec<OsString> {
        match Cli::try_parse_from(args).unwrap().command {
            Command::Run(run) => run.command,
            _ => panic!("not run"),
        }
    }

    /// Every subcommand's arguments are well formed (clap's own checks: unique names,
    /// groups naming arguments that exist).
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_cause_already_shown_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let shown = crate::Error::Io {
            what: "open the thing",
            source: io,
        };
        let e = anyhow::Error::new(shown).context("--flag x");
        assert_eq!(describe(&e), "--flag x: open the thing: no such file");
        // A cause not yet shown is added.
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(describe(&e), "outer: inner");
    }

    #[test]
    fn the_command_follows_moats_options_with_or_without_a_double_dash() {
        let want: Vec<OsString> = ["curl", "-sS", "http://x"].map(OsString::from).to_vec();
        assert_eq!(
            command_of(&["moat", "run", "curl", "-sS", "http://x"]),
            want
        );
        assert_eq!(
            command_of(&["moat", "run", "--", "curl", "-sS", "http://x"]),
            want
        );
        let args = [
            "moat",
            "run",
            "--policy",
            "none",
            "sh",
            "-c",
            "echo --policy",
        ];
        assert_eq!(
            command_of(&args),
            ["sh", "-c", "echo --policy"].map(OsString::from).to_vec()
        );
        // moat's own options still need to come first, and a misspelt one is an error.
        assert!(Cli::try_parse_from(["moat", "run", "--polcy", "none", "true"]).is_err());
        assert!(Cli::try_parse_from(["moat", "run"]).is_err());
    }
}
