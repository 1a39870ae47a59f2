//! Errors of the policy model: building rules and reading policy files.

use std::path::PathBuf;

/// Why a piece of policy could not be built.
///
/// Messages are written for people: what was wrong, on what input, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A domain name or suffix that is not a valid DNS host name.
    #[error("invalid domain name {input:?}: {why}")]
    DomainName {
        /// The text as given.
        input: String,
        /// What rule it broke.
        why: &'static str,
    },
    /// A port range whose start is above its end.
    #[error("port range {start}-{end} starts after it ends; write it as {end}-{start}")]
    PortRangeOrder {
        /// First port given.
        start: u16,
        /// Last port given.
        end: u16,
    },
    /// A port or port range that is not a number in 0..=65535.
    #[error("invalid port {input:?}: expected a port 0-65535 or a range START-END")]
    Port {
        /// The text as given.
        input: String,
    },
    /// A CIDR or address that does not parse.
    #[error(
        "invalid address or CIDR {input:?}: expected an IPv4/IPv6 address or CIDR such as 10.0.0.0/8 or 2001:db8::/32"
    )]
    Cidr {
        /// The text as given.
        input: String,
    },
    /// A CIDR whose address has bits set below its prefix length.
    #[error("CIDR {input:?} has host bits set; did you mean {normalized}?")]
    CidrHostBits {
        /// The text as given.
        input: String,
        /// The network it most likely means.
        normalized: String,
    },
    /// An address group name that moat does not know.
    #[error(
        "unknown group {input:?}; expected one of private, loopback, link-local, metadata, multicast"
    )]
    Group {
        /// The text as given.
        input: String,
    },
    /// A protocol name that moat does not know.
    #[error("unknown protocol {input:?}; expected one of tcp, udp, icmp, icmpv4, icmpv6")]
    Protocol {
        /// The text as given.
        input: String,
    },
    /// An action name that moat does not know.
    #[error("unknown action {input:?}; expected allow or deny")]
    Action {
        /// The text as given.
        input: String,
    },
    /// A direction name that moat does not know.
    #[error("unknown direction {input:?}; expected outbound or inbound")]
    Direction {
        /// The text as given.
        input: String,
    },
    /// A destination in the DEST syntax that cannot be read.
    #[error("invalid destination {input:?}: {why}")]
    Destination {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        why: String,
    },
    /// A rule whose filters contradict each other.
    #[error("invalid rule: {why}")]
    Rule {
        /// What is wrong with it.
        why: String,
    },
    /// A preset name that moat does not know.
    #[error(
        "unknown policy preset {input:?}; expected public-only, allow-all or none (or a policy file path)"
    )]
    Preset {
        /// The text as given.
        input: String,
    },
}

/// A policy file that could not be read or understood.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyFileError {
    /// The file could not be read.
    #[error("{}: cannot read policy file: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML/JSON, or not a valid policy.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// What was wrong and what was expected.
        message: String,
    },
}

impl PolicyFileError {
    /// `file:line:col` of the problem, when the file was read.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            PolicyFileError::Syntax { line, column, .. } => Some((*line, *column)),
            PolicyFileError::Read { .. } => None,
        }
    }
}
