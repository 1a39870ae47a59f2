//! The `moat` command line (shared/API.md §3).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
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
    /// Check policy files and explain decisions.
    #[command(subcommand)]
    Policy(PolicyCommand),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Policy(PolicyCommand::Check { file }) => check(&file),
        Command::Policy(PolicyCommand::Explain(args)) => explain(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<NetworkPolicy, PolicyFileError> {
    NetworkPolicy::from_file(path)
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
    Ok(())
}

/// A preset name, else a file.
fn policy_arg(text: &str) -> anyhow::Result<NetworkPolicy> {
    match NetworkPolicy::preset(text) {
        Ok(p) => Ok(p),
        Err(preset_err) => {
            let path = Path::new(text);
            if path.exists() {
                Ok(load(path)?)
            } else {
                Err(anyhow::anyhow!(
                    "{preset_err}; no file {text:?} exists either"
                ))
            }
        }
    }
}

fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    let policy = policy_arg(&args.policy)?;
    let compiled = policy.compile()?;
    let target = FlowTarget::parse(&args.to)?;
    let names = args
        .domain
        .iter()
        .map(|n| DomainName::new(n))
        .collect::<Result<Vec<_>, _>>()?;
    let sni = args.sni.as_deref().map(DomainName::new).transpose()?;
    let direction = if args.inbound {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    let flow = Flow {
        direction,
        protocol: target.protocol,
        addr: target.addr,
        port: target.port,
        names: &names,
        sni: sni.as_ref(),
    };
    let decision = compiled.decide(&flow);
    let shown = match target.port {
        Some(port) if target.addr.is_ipv6() => format!("[{}]:{port}", target.addr),
        Some(port) => format!("{}:{port}", target.addr),
        None => target.addr.to_string(),
    };
    println!("decision: {}", decision.action);
    println!("rule:     {}", decision.rule_label());
    println!("reason:   {}", compiled.reason(&decision));
    print!("flow:     {direction} {} {shown}", target.protocol);
    let judged = canonical_addr(target.addr);
    if judged != target.addr {
        print!(" (judged as {judged})");
    }
    println!();
    if !names.is_empty() {
        let list: Vec<&str> = names.iter().map(DomainName::as_str).collect();
        println!("names:    {}", list.join(", "));
    }
    if let Some(sni) = &sni {
        println!("sni:      {sni}");
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
