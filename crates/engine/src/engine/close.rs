//! Why a flow ended. Every removal names one of these; its text is the audit log's
//! `close` event `reason`, and [`CloseReason::is_clean`] says whether the far end of a
//! published port gets an orderly close or a reset. Below them, why a stream stage cannot
//! go on ([`Broken`]) and why an intercepted connection failed ([`TlsFailure`]): what a
//! stage reports and its flow turns into a removal.

use std::fmt;

/// Why a flow was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// Both sides finished, each with a FIN.
    Closed,
    /// A side reset, or the connection ended without both FINs.
    Reset,
    /// The sandbox reset a TCP connection while moat was still dialing for it.
    ResetWhileConnecting,
    /// No traffic for the idle timeout (UDP flows, echo flows).
    Idle,
    /// The upstream dial did not finish in time.
    ConnectTimedOut,
    /// The upstream dial failed.
    ConnectFailed(String),
    /// The smoltcp socket could not take the connection.
    CannotListen,
    /// Writing to the upstream failed.
    UpstreamWrite(String),
    /// Reading from the upstream failed.
    UpstreamRead(String),
    /// The TLS server name in the ClientHello was denied, or could not be read.
    DeniedByClientHello,
    /// TLS interception failed (the sandbox was sent an alert).
    Tls(String),
    /// The connection did not finish closing in time after both sides were done.
    CloseTimedOut,
    /// A secret's placeholder was heading for a host outside its list (the secret's name).
    SecretViolation(String),
    /// moat refused a plain-HTTP request it rewrites secrets in (another host, malformed).
    Refused(String),
    /// A DNS query was answered.
    Answered,
    /// Every upstream resolver failed a DNS query.
    DnsFailed,
    /// The sandbox stopped.
    SandboxStopped,
}

impl CloseReason {
    /// True for an orderly close (FIN both ways); anything else resets the host side of a
    /// published port.
    pub(crate) fn is_clean(&self) -> bool {
        *self == CloseReason::Closed
    }

    /// The audit `decision` of the close event: `deny` when a decision of the policy
    /// ended the flow (its ClientHello was refused; the flow's rule is then the one that
    /// refused), `allow` when it ran as allowed and ended for what the reason says.
    pub(crate) fn decision(&self) -> &'static str {
        match self {
            CloseReason::DeniedByClientHello => "deny",
            _ => "allow",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Closed => f.write_str("closed"),
            CloseReason::Reset => f.write_str("reset"),
            CloseReason::ResetWhileConnecting => {
                f.write_str("reset by the sandbox while connecting")
            }
            CloseReason::Idle => f.write_str("idle"),
            CloseReason::ConnectTimedOut => f.write_str("upstream connect timed out"),
            CloseReason::ConnectFailed(e) => write!(f, "upstream connect failed: {e}"),
            CloseReason::CannotListen => f.write_str("cannot listen"),
            CloseReason::UpstreamWrite(e) => write!(f, "upstream write failed: {e}"),
            CloseReason::UpstreamRead(e) => write!(f, "upstream read failed: {e}"),
            CloseReason::DeniedByClientHello => f.write_str("denied by its TLS ClientHello"),
            CloseReason::Tls(e) => write!(f, "tls interception failed: {e}"),
            CloseReason::CloseTimedOut => f.write_str("close timed out"),
            CloseReason::Refused(why) => write!(f, "request refused: {why}"),
            CloseReason::SecretViolation(name) => {
                write!(f, "secret {name}: its placeholder was heading elsewhere")
            }
            CloseReason::Answered => f.write_str("answered"),
            CloseReason::DnsFailed => f.write_str("dns failed"),
            CloseReason::SandboxStopped => f.write_str("sandbox stopped"),
        }
    }
}

/// Why a stream cannot go on.
#[derive(Debug)]
pub(super) enum Broken {
    /// A socket failed: the flow is reset.
    Reset(CloseReason),
    /// Interception cannot go on; what the sandbox was sent (an alert, a 403) must
    /// arrive, so the flow closes in order.
    Tls(TlsFailure),
    /// The placeholder of secret `.0` was heading for a host outside its list; the bytes
    /// carrying it were kept back.
    Secret(usize),
}

/// Why an intercepted connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum TlsFailure {
    /// A handshake failed, on either leg; the sandbox was sent an alert where it could be.
    Handshake(String),
    /// The server's certificate is not trusted (the sandbox was sent an alert).
    Untrusted(String),
    /// A request was refused; the sandbox was answered 403.
    Refused(String),
    /// The connection broke after both handshakes.
    Broken(String),
    /// The placeholder of secret `.0` was heading for this host, outside its list; it
    /// was kept back.
    Secret(usize),
}

impl TlsFailure {
    /// The reason, for the audit log.
    pub(super) fn reason(&self) -> &str {
        match self {
            TlsFailure::Handshake(why)
            | TlsFailure::Untrusted(why)
            | TlsFailure::Refused(why)
            | TlsFailure::Broken(why) => why,
            TlsFailure::Secret(_) => "a secret's placeholder was kept back",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_orderly_close_is_clean() {
        assert!(CloseReason::Closed.is_clean());
        for other in [
            CloseReason::Reset,
            CloseReason::Idle,
            CloseReason::SandboxStopped,
            CloseReason::UpstreamRead("connection reset by peer".into()),
        ] {
            assert!(!other.is_clean(), "{other}");
        }
    }

    #[test]
    fn a_refused_client_hello_closes_as_a_deny() {
        assert_eq!(CloseReason::DeniedByClientHello.decision(), "deny");
        assert_eq!(CloseReason::Closed.decision(), "allow");
        assert_eq!(CloseReason::Reset.decision(), "allow");
    }

    #[test]
    fn the_audit_text_names_the_cause() {
        assert_eq!(CloseReason::Closed.to_string(), "closed");
        assert_eq!(
            CloseReason::ConnectFailed("connection refused".into()).to_string(),
            "upstream connect failed: connection refused"
        );
        assert_eq!(
            CloseReason::DeniedByClientHello.to_string(),
            "denied by its TLS ClientHello"
        );
    }
}
