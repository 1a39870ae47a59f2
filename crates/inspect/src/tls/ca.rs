//! The interception CA: the certificate authority the sandbox trusts and moat signs its
//! per-server leaf certificates with.
//!
//! # Theory of operation
//! A sandbox gets a fresh CA by default ([`InterceptCa::generate`]): an ECDSA P-256 key
//! that lives only in moat's memory, and a certificate valid from an hour ago for
//! [`FRESH_CA_DAYS`]. A CA given as PEM ([`InterceptCa::from_pem`], `moat ca init` writes
//! one) must be a CA certificate whose public key is the given key's, else it is refused.
//!
//! Leaves ([`InterceptCa::mint`]) are made per server name: ECDSA P-256, the name (or the
//! address, for a ClientHello without a server name) as the only subject alternative
//! name, valid from an hour ago (clocks inside and outside may differ) for a day — a leaf
//! that leaks is useless by tomorrow. They are kept in a [`LeafCache`] bounded in entries,
//! oldest out first, so 10,000 distinct names cost 10,000 signatures but not 10,000 keys
//! held.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use time::{Duration, OffsetDateTime};

/// How long a fresh per-sandbox CA is valid.
pub const FRESH_CA_DAYS: i64 = 30;
/// How long a CA made by `moat ca init` is valid.
pub const STABLE_CA_DAYS: i64 = 3650;
/// How far back certificates are dated, for clocks that differ.
const BACKDATE: Duration = Duration::hours(1);
/// How long a leaf is valid.
const LEAF_LIFETIME: Duration = Duration::days(1);

/// Why a CA could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// The certificate is not PEM, or not an X.509 certificate.
    #[error("the CA certificate cannot be read: {0}")]
    Certificate(String),
    /// The key is not a PEM private key rcgen can sign with.
    #[error("the CA key cannot be read: {0}")]
    Key(String),
    /// The certificate is not a CA's.
    #[error("the certificate is not a CA certificate (its basic constraints do not say CA)")]
    NotCa,
    /// The key is not the certificate's.
    #[error("the CA key does not match the CA certificate")]
    Mismatch,
    /// Signing failed.
    #[error("cannot sign a certificate: {0}")]
    Sign(String),
}

/// The name a leaf is made for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeafName {
    /// The ClientHello's server name.
    Dns(String),
    /// The destination's address (no server name was sent).
    Ip(IpAddr),
}

impl fmt::Display for LeafName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeafName::Dns(name) => f.write_str(name),
            LeafName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A CA that signs leaves (see the module header).
pub struct InterceptCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

impl fmt::Debug for InterceptCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterceptCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl InterceptCa {
    /// A new CA named `name` (its common name), valid for `days` from an hour ago, with a
    /// new key. The key's PEM comes back beside it, for `moat ca init` to store; a
    /// per-sandbox CA drops it.
    pub fn generate(name: &str, days: i64) -> Result<(InterceptCa, String), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Key(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "moat interception CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(days);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let key_pem = key.serialize_pem();
        let ca = InterceptCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        };
        Ok((ca, key_pem))
    }

    /// A CA from its PEM certificate and key: refused unless the certificate is a CA's
    /// and the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<InterceptCa, CaError> {
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        if !x509.is_ca() {
            return Err(CaError::NotCa);
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Key(e.to_string()))?;
        if x509.public_key().raw != rcgen::PublicKeyData::subject_public_key_info(&key) {
            return Err(CaError::Mismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| CaError::Certificate(e.to_string()))?;
        Ok(InterceptCa {
            issuer,
            cert_pem: cert_pem.trim().to_owned() + "\n",
            cert_der,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The SHA-256 fingerprint of the certificate, as `AB:CD:...`.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.cert_der);
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// A new leaf for `name`, signed by this CA, with its key: what the sandbox's side
    /// of an intercepted connection presents.
    pub fn mint(&self, name: &LeafName) -> Result<Arc<CertifiedKey>, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Key(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, name.to_string());
        params.subject_alt_names = vec![match name {
            LeafName::Dns(dns) => SanType::DnsName(
                dns.clone()
                    .try_into()
                    .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?,
            ),
            LeafName::Ip(ip) => SanType::IpAddress(*ip),
        }];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + LEAF_LIFETIME;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_ecdsa_type(&der)
            .map_err(|e| CaError::Key(e.to_string()))?;
        Ok(Arc::new(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            signer,
        )))
    }
}

/// Leaves already made, at most `cap`, the oldest dropped first.
pub struct LeafCache {
    leaves: HashMap<LeafName, Arc<CertifiedKey>>,
    order: VecDeque<LeafName>,
    cap: usize,
}

impl LeafCache {
    /// An empty cache that keeps at most `cap` leaves.
    pub fn new(cap: usize) -> LeafCache {
        LeafCache {
            leaves: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// The leaf for `name`, made by `ca` when not cached.
    pub fn get(&mut self, ca: &InterceptCa, name: &LeafName) -> Result<Arc<CertifiedKey>, CaError> {
        if let Some(leaf) = self.leaves.get(name) {
            return Ok(leaf.clone());
        }
        let leaf = ca.mint(name)?;
        while self.leaves.len() >= self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.leaves.remove(&old);
                }
                None => break,
            }
        }
        self.leaves.insert(name.clone(), leaf.clone());
        self.order.push_back(name.clone());
        Ok(leaf)
    }

    /// Leaves held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.leaves.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use rustls::pki_types::ServerName;
    use rustls::server::{ClientHello, ResolvesServerCert};
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

    use super::*;

    #[derive(Debug)]
    struct One(Arc<CertifiedKey>);

    impl ResolvesServerCert for One {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }

    /// A client that trusts only `ca` handshakes with a server presenting `leaf`, in
    /// memory; the error is the client's verdict.
    fn handshake(
        ca: &InterceptCa,
        leaf: Arc<CertifiedKey>,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let client_config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(One(leaf)));
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let mut client = ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = ServerConnection::new(Arc::new(server_config)).unwrap();
        for _ in 0..8 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut &wire[..]).unwrap();
            let server_result = server.process_new_packets();
            wire.clear();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut &wire[..]).unwrap();
            client.process_new_packets()?;
            server_result?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General(
            "the handshake made no progress".into(),
        ))
    }

    #[test]
    fn a_leaf_is_trusted_for_its_name_only() {
        let (ca, _) = InterceptCa::generate("moat test", FRESH_CA_DAYS).unwrap();
        let leaf = ca.mint(&LeafName::Dns("api.example.com".into())).unwrap();
        handshake(&ca, leaf.clone(), "api.example.com").unwrap();
        // The same leaf for another name fails verification: a control that the check
        // above checked something.
        let other = handshake(&ca, leaf, "other.example.com").unwrap_err();
        assert!(other.to_string().contains("certificate"), "{other}");
        // A ClientHello without a server name: the leaf names the address.
        let ip: IpAddr = "203.0.113.10".parse().unwrap();
        let by_ip = ca.mint(&LeafName::Ip(ip)).unwrap();
        handshake(&ca, by_ip, "203.0.113.10").unwrap();
    }

    #[test]
    fn a_leaf_from_another_ca_is_not_trusted() {
        let (ca, _) = InterceptCa::generate("moat test", FRESH_CA_DAYS).unwrap();
        let (other, _) = InterceptCa::generate("someone else", FRESH_CA_DAYS).unwrap();
        let leaf = other
            .mint(&LeafName::Dns("api.example.com".into()))
            .unwrap();
        assert!(handshake(&ca, leaf, "api.example.com").is_err());
    }

    #[test]
    fn a_given_ca_must_be_a_ca_with_its_own_key() {
        let (ca, key_pem) = InterceptCa::generate("stable", STABLE_CA_DAYS).unwrap();
        let again = InterceptCa::from_pem(ca.cert_pem(), &key_pem).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        // It signs leaves its certificate verifies.
        let leaf = again.mint(&LeafName::Dns("a.example".into())).unwrap();
        handshake(&ca, leaf, "a.example").unwrap();

        let (_, other_key) = InterceptCa::generate("other", 1).unwrap();
        assert!(matches!(
            InterceptCa::from_pem(ca.cert_pem(), &other_key),
            Err(CaError::Mismatch)
        ));
        // A certificate that is not a CA's, with its own key.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let plain = CertificateParams::new(vec!["b.example".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(matches!(
            InterceptCa::from_pem(&plain.pem(), &key.serialize_pem()),
            Err(CaError::NotCa)
        ));
        assert!(matches!(
            InterceptCa::from_pem("not a certificate", &key_pem),
            Err(CaError::Certificate(_))
        ));
        assert!(matches!(
            InterceptCa::from_pem(ca.cert_pem(), "not a key"),
            Err(CaError::Key(_))
        ));
    }

    #[test]
    fn the_fingerprint_is_sha256_in_hex_pairs() {
        let (ca, _) = InterceptCa::generate("fp", 1).unwrap();
        let fp = ca.fingerprint();
        assert_eq!(fp.split(':').count(), 32, "{fp}");
        assert!(
            fp.split(':')
                .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
        );
    }

    #[test]
    fn the_leaf_cache_is_bounded_and_reuses_leaves() {
        let (ca, _) = InterceptCa::generate("cache", 1).unwrap();
        let mut cache = LeafCache::new(3);
        let first = cache.get(&ca, &LeafName::Dns("n0.example".into())).unwrap();
        let again = cache.get(&ca, &LeafName::Dns("n0.example".into())).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        for i in 1..10 {
            cache
                .get(&ca, &LeafName::Dns(format!("n{i}.example")))
                .unwrap();
        }
        assert_eq!(cache.len(), 3);
        let renewed = cache.get(&ca, &LeafName::Dns("n0.example".into())).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &renewed),
            "the oldest leaf was dropped"
        );
    }
}
