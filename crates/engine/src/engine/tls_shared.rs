//! What every intercepted connection shares (`tls_stage.rs` is the connection itself): the
//! interception CA and the leaves it signed, the upstream leg's rustls configuration
//! (verifying against the host's roots plus `upstream_ca_cert`s, or accepting any with
//! `verify_upstream(false)`), the server side's configuration, and the settings: which
//! ports are intercepted, which names bypass, whether QUIC is refused.

use std::sync::Arc;

use moat_inspect::tls::ca::{InterceptCa, LeafCache};
use moat_policy::{DomainName, DomainSuffix};
use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::config::TlsConfig;

/// Leaves kept at once.
const LEAF_CACHE: usize = 1024;

/// A `bypass` pattern: one name, or every name strictly below one.
#[derive(Debug, Clone)]
enum Bypass {
    Exact(DomainName),
    Below(DomainSuffix),
}

/// What every intercepted connection shares: the CA, its leaves, the upstream client
/// configuration and the settings.
pub(super) struct TlsShared {
    pub(super) ca: Arc<InterceptCa>,
    pub(super) leaves: LeafCache,
    /// The upstream leg's configuration.
    pub(super) client: Arc<ClientConfig>,
    /// The server side's configuration when the upstream failed: it has no certificate,
    /// so rustls answers the sandbox's hello with an alert. Intercepted connections clone
    /// it and set their leaf.
    pub(super) refuse: Arc<ServerConfig>,
    ports: Vec<u16>,
    bypass: Vec<Bypass>,
    block_quic: bool,
    /// Upstream chains are verified.
    pub(super) verify: bool,
}

impl TlsShared {
    /// The shared state for `cfg`; an error names what is wrong with it.
    pub(super) fn new(cfg: &TlsConfig) -> Result<TlsShared, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for root in &cfg.roots {
            // A bundle holds some certificates webpki cannot use; skip those.
            let _ = roots.add(root.clone());
        }
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let client = if cfg.verify_upstream {
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider.clone())))
                .with_no_client_auth()
        };
        let refuse = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(None)));
        let bypass = cfg
            .bypass
            .iter()
            .map(|p| {
                if p.starts_with("*.") || p.starts_with('.') {
                    DomainSuffix::new(p).map(Bypass::Below)
                } else {
                    DomainName::new(p).map(Bypass::Exact)
                }
                .map_err(|e| format!("bypass {p}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TlsShared {
            ca: cfg.ca.clone(),
            leaves: LeafCache::new(LEAF_CACHE),
            client: Arc::new(client),
            refuse: Arc::new(refuse),
            ports: cfg.ports.clone(),
            bypass,
            block_quic: cfg.block_quic,
            verify: cfg.verify_upstream,
        })
    }

    /// Whether TCP port `port` is intercepted.
    pub(super) fn intercepts(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }

    /// Whether UDP to `port` is refused (QUIC to an intercepted port).
    pub(super) fn blocks_quic(&self, port: u16) -> bool {
        self.block_quic && self.intercepts(port)
    }

    /// Whether servers' chains are verified.
    pub(super) fn verifies(&self) -> bool {
        self.verify
    }

    /// Whether `name` passes without interception.
    pub(super) fn bypasses(&self, name: &DomainName) -> bool {
        self.bypass.iter().any(|b| match b {
            Bypass::Exact(n) => n == name,
            Bypass::Below(s) => s.matches(name),
        })
    }
}

/// Accepts any upstream certificate (`verify_upstream(false)`), still checking the
/// handshake's signatures.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One certificate for every hello (or none: an alert).
#[derive(Debug)]
pub(super) struct Fixed(pub(super) Option<Arc<CertifiedKey>>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.clone()
    }
}
