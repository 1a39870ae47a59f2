//! moat: run untrusted code in a Linux sandbox whose only way to the network is moat's own
//! user-space stack, where every flow is judged by a [`NetworkPolicy`] first.
//!
//! This crate is the public facade of shared/API.md:
//!
//! ```no_run
//! use moat::{NetworkPolicy, Sandbox};
//!
//! fn main() -> Result<(), moat::Error> {
//!     moat::init(); // first thing: a sandbox's supervisor is this program started again
//!     let sb = Sandbox::builder("agent")
//!         .network(|n| n.policy(NetworkPolicy::public_only()))
//!         .env("LANG", "C.UTF-8")
//!         .create()?;
//!     let out = sb.exec("sh", ["-c", "echo hello > /workspace/out.txt; cat /workspace/out.txt"])?;
//!     assert_eq!(out.stdout, b"hello\n");
//!     assert_eq!(sb.fs().read("/workspace/out.txt")?, b"hello\n");
//!     sb.stop()
//! }
//! ```
#![forbid(unsafe_code)]

mod api;
mod attach;
mod builder;
mod cli;
mod demo;
mod publish;
mod secrets;
mod selftest;
mod setup;
mod terminal;
mod tls;

/// The `moat` binary's entry point (parses the command line, runs it, returns the exit
/// status). Not an API: the binary is this crate's only caller.
#[doc(hidden)]
pub fn command_line() -> std::process::ExitCode {
    cli::main()
}

pub use api::{
    AuditSink, Child, DenyMode, Error, ExitStatus, Fs, NetworkBuilder, Output, Sandbox,
    SandboxBuilder, init,
};
pub use attach::{Attached, Netns};
pub use moat_engine::Counters;
pub use moat_policy::{
    Action, CompiledPolicy, DecidedBy, Decision, Destination, DestinationGroup, Direction,
    DomainName, DomainSuffix, Flow, IpNetwork, NetworkPolicy, PolicyError, PolicyFileError,
    PortRange, Protocol, Rule, ViolationAction,
};
pub use secrets::SecretBuilder;
pub use tls::{TlsBuilder, TlsError};
