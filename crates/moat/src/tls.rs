//! TLS interception settings ([`TlsBuilder`], shared/API.md §2) and what they become: the
//! engine's [`TlsConfig`] (the CA, the upstream roots) and the trust the sandbox gets.
//!
//! # Trust inside the sandbox
//! The sandbox trusts moat's CA with no flags: a bundle of the host's roots plus the CA
//! is mounted read-only over every system bundle the host has (the paths of Debian and
//! Ubuntu, Fedora and RHEL, openSUSE, Alpine, Arch), and the variables that curl,
//! OpenSSL, Python (requests, pip), Node and git read point at it. Go reads the system
//! paths.
//!
//! # The stable CA
//! `moat ca init` writes a CA valid for ten years under the user's data directory
//! (`$XDG_DATA_HOME/moat`, else `~/.local/share/moat`; the key with mode 0600) and `moat
//! ca show` prints its certificate and fingerprint. Give it with `--tls-ca-cert` and
//! `--tls-ca-key` (or the builder's `intercept_ca_*`) to keep one CA across runs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moat_engine::{DEFAULT_TLS_PORTS, FRESH_CA_DAYS, InterceptCa, STABLE_CA_DAYS, TlsConfig};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The system trust bundles of the common distributions, the first that exists being
/// the one the variables name.
pub(crate) const SYSTEM_BUNDLES: [&str; 6] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/etc/pki/tls/cacert.pem",
];

/// The variables pointed at the bundle inside.
const TRUST_VARIABLES: [&str; 6] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
];

/// Why TLS interception could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Only one of the CA's certificate and key was given.
    #[error(
        "intercept_ca_{given} was given without intercept_ca_{missing} (--tls-ca-{given} needs --tls-ca-{missing})"
    )]
    HalfCa {
        /// The one given: `cert` or `key`.
        given: &'static str,
        /// The one missing.
        missing: &'static str,
    },
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The CA is unusable.
    #[error("the interception CA ({}): {source}", path.display())]
    Ca {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong.
        source: moat_engine::CaError,
    },
    /// A new CA could not be made.
    #[error("cannot make an interception CA: {0}")]
    Generate(moat_engine::CaError),
    /// An upstream CA file holds no certificate.
    #[error("upstream_ca_cert {}: no PEM certificate in it", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// No port to intercept, or port 0.
    #[error("intercepted_ports: expected ports 1 to 65535, at least one")]
    Ports,
    /// A bypass pattern is not a name or `*.suffix`.
    #[error("bypass {pattern}: {source}")]
    Bypass {
        /// The pattern.
        pattern: String,
        /// Why.
        source: moat_policy::PolicyError,
    },
}

/// TLS interception settings (shared/API.md `TlsBuilder`), used in
/// [`crate::NetworkBuilder::tls`].
#[derive(Debug, Clone)]
pub struct TlsBuilder {
    block_quic: bool,
    bypass: Vec<String>,
    ca_cert: Option<PathBuf>,
    ca_key: Option<PathBuf>,
    ports: Vec<u16>,
    upstream_cas: Vec<PathBuf>,
    verify_upstream: bool,
}

impl Default for TlsBuilder {
    fn default() -> TlsBuilder {
        TlsBuilder {
            block_quic: true,
            bypass: Vec::new(),
            ca_cert: None,
            ca_key: None,
            ports: DEFAULT_TLS_PORTS.to_vec(),
            upstream_cas: Vec::new(),
            verify_upstream: true,
        }
    }
}

impl TlsBuilder {
    /// Refuse UDP to intercepted ports (QUIC) at once, so clients fall back to TLS over
    /// TCP. Default `true`.
    pub fn block_quic(mut self, block: bool) -> TlsBuilder {
        self.block_quic = block;
        self
    }

    /// Do not intercept `pattern` (`api.x.com` exactly, or `*.x.com` for every name
    /// strictly below): its bytes pass as opaque TCP. Repeatable.
    pub fn bypass(mut self, pattern: impl Into<String>) -> TlsBuilder {
        self.bypass.push(pattern.into());
        self
    }

    /// The interception CA's PEM certificate (with [`Self::intercept_ca_key`]); default: a
    /// fresh CA per sandbox, its key only in memory.
    pub fn intercept_ca_cert(mut self, path: impl Into<PathBuf>) -> TlsBuilder {
        self.ca_cert = Some(path.into());
        self
    }

    /// The interception CA's PEM private key.
    pub fn intercept_ca_key(mut self, path: impl Into<PathBuf>) -> TlsBuilder {
        self.ca_key = Some(path.into());
        self
    }

    /// The TCP ports where TLS is intercepted. Default `[443]`.
    pub fn intercepted_ports(mut self, ports: Vec<u16>) -> TlsBuilder {
        self.ports = ports;
        self
    }

    /// Also trust the PEM CA certificate(s) in `path` when verifying servers. Repeatable.
    pub fn upstream_ca_cert(mut self, path: impl Into<PathBuf>) -> TlsBuilder {
        self.upstream_cas.push(path.into());
        self
    }

    /// Verify servers' certificates (default `true`); `false` accepts any.
    pub fn verify_upstream(mut self, verify: bool) -> TlsBuilder {
        self.verify_upstream = verify;
        self
    }

    /// Whether connections to every host `pattern` covers pass without interception.
    pub(crate) fn bypasses(&self, pattern: &moat_engine::HostPattern) -> bool {
        self.bypass
            .iter()
            .any(|b| moat_engine::HostPattern::parse(b).is_ok_and(|b| b.covers(pattern)))
    }

    /// The engine's configuration, the trust bundle for the sandbox (the host's roots
    /// and the CA) and the files and variables that carry it.
    pub(crate) fn assemble(&self, sandbox: &str) -> Result<Trust, TlsError> {
        if self.ports.is_empty() || self.ports.contains(&0) {
            return Err(TlsError::Ports);
        }
        for pattern in &self.bypass {
            let checked = if pattern.starts_with("*.") || pattern.starts_with('.') {
                moat_policy::DomainSuffix::new(pattern).map(drop)
            } else {
                moat_policy::DomainName::new(pattern).map(drop)
            };
            checked.map_err(|source| TlsError::Bypass {
                pattern: pattern.clone(),
                source,
            })?;
        }
        let ca = match (&self.ca_cert, &self.ca_key) {
            (Some(cert), Some(key)) => load_ca(cert, key)?,
            (Some(_), None) => {
                return Err(TlsError::HalfCa {
                    given: "cert",
                    missing: "key",
                });
            }
            (None, Some(_)) => {
                return Err(TlsError::HalfCa {
                    given: "key",
                    missing: "cert",
                });
            }
            (None, None) => {
                InterceptCa::generate(&format!("moat {sandbox}"), FRESH_CA_DAYS)
                    .map_err(TlsError::Generate)?
                    .0
            }
        };
        let host_bundle = SYSTEM_BUNDLES
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default();
        let mut roots: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(host_bundle.as_bytes())
                .filter_map(Result::ok)
                .collect();
        for path in &self.upstream_cas {
            let text = read(path)?;
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(text.as_bytes())
                    .filter_map(Result::ok)
                    .collect();
            if certs.is_empty() {
                return Err(TlsError::NoCertificate { path: path.clone() });
            }
            roots.extend(certs);
        }
        let mut bundle = host_bundle;
        if !bundle.is_empty() && !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        bundle.push_str(ca.cert_pem());
        let files = SYSTEM_BUNDLES
            .iter()
            .filter(|p| Path::new(p).exists())
            .map(|p| (PathBuf::from(p), bundle.clone()))
            .collect::<Vec<_>>();
        let env = files
            .first()
            .map(|(path, _)| {
                TRUST_VARIABLES
                    .iter()
                    .map(|v| (OsString::from(v), path.clone().into_os_string()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Trust {
            engine: TlsConfig {
                ca: Arc::new(ca),
                ports: self.ports.clone(),
                bypass: self.bypass.clone(),
                block_quic: self.block_quic,
                verify_upstream: self.verify_upstream,
                roots,
            },
            files,
            env,
        })
    }
}

/// What interception adds to a sandbox.
#[derive(Debug)]
pub(crate) struct Trust {
    /// The engine's part.
    pub(crate) engine: TlsConfig,
    /// The bundle over each system bundle path the host has.
    pub(crate) files: Vec<(PathBuf, String)>,
    /// The variables naming the bundle.
    pub(crate) env: Vec<(OsString, OsString)>,
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn load_ca(cert: &Path, key: &Path) -> Result<InterceptCa, TlsError> {
    InterceptCa::from_pem(&read(cert)?, &read(key)?).map_err(|source| TlsError::Ca {
        path: cert.to_owned(),
        source,
    })
}

/// Where `moat ca init` keeps the stable CA.
pub(crate) fn ca_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/share"))
        })?;
    Some(base.join("moat"))
}

/// `moat ca init`: writes a stable CA (certificate `ca.pem`, key `ca-key.pem` with mode
/// 0600) into `dir`; an existing one is kept. Returns the certificate's path and whether
/// it was made now.
pub(crate) fn ca_init(dir: &Path) -> anyhow::Result<(PathBuf, bool)> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if cert_path.exists() && key_path.exists() {
        load_ca(&cert_path, &key_path)?;
        return Ok((cert_path, false));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
    let (ca, key_pem) = InterceptCa::generate("moat interception CA", STABLE_CA_DAYS)
        .map_err(TlsError::Generate)?;
    // Through the one door for files moat writes on the host (moat_sandbox's
    // host_file.rs): a link at either name is never followed; an existing key is kept.
    let write = |path: &Path, text: &str, mode: u32, new: bool| -> anyhow::Result<()> {
        let file = moat_sandbox::HostFile::open(path)?.durable();
        if new {
            file.create_new(text.as_bytes(), mode)?;
        } else {
            file.replace(text.as_bytes(), mode)?;
        }
        Ok(())
    };
    write(&key_path, &key_pem, 0o600, true)?;
    write(&cert_path, ca.cert_pem(), 0o644, false)?;
    Ok((cert_path, true))
}

/// `moat ca show`: the stable CA's certificate and fingerprint.
pub(crate) fn ca_show(dir: &Path) -> anyhow::Result<String> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    if !cert_path.exists() {
        anyhow::bail!("no CA in {}: run `moat ca init` first", dir.display());
    }
    let ca = load_ca(&cert_path, &key_path)?;
    Ok(format!(
        "{}\nfingerprint (SHA-256): {}\ncertificate: {}\nkey: {}\nuse: moat run --tls-intercept --tls-ca-cert {} --tls-ca-key {} -- ...\n",
        ca.cert_pem().trim_end(),
        ca.fingerprint(),
        cert_path.display(),
        key_path.display(),
        cert_path.display(),
        key_path.display()
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("moat-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn half_a_ca_or_a_bad_setting_is_an_error_naming_it() {
        let e = TlsBuilder::default()
            .intercept_ca_cert("/nonexistent/ca.pem")
            .assemble("t")
            .unwrap_err();
        assert!(
            e.to_string().contains("--tls-ca-cert needs --tls-ca-key"),
            "{e}"
        );
        let e = TlsBuilder::default()
            .intercept_ca_key("/nonexistent/key.pem")
            .assemble("t")
            .unwrap_err();
        assert!(
            e.to_string().contains("--tls-ca-key needs --tls-ca-cert"),
            "{e}"
        );
        let e = TlsBuilder::default()
            .intercepted_ports(vec![])
            .assemble("t")
            .unwrap_err();
        assert!(matches!(e, TlsError::Ports));
        let e = TlsBuilder::default()
            .bypass("not a name!")
            .assemble("t")
            .unwrap_err();
        assert!(matches!(e, TlsError::Bypass { .. }), "{e}");
        // And the defaults assemble: a fresh CA in the bundle.
        let trust = TlsBuilder::default().assemble("t").unwrap();
        assert_eq!(trust.engine.ports, vec![443]);
        for (_, bundle) in &trust.files {
            assert!(bundle.ends_with(trust.engine.ca.cert_pem()));
        }
    }

    #[test]
    fn a_stable_ca_is_written_once_and_used_as_given() {
        let dir = scratch("init");
        let (cert, made) = ca_init(&dir).unwrap();
        assert!(made);
        let key = dir.join("ca-key.pem");
        let mode = std::fs::metadata(&key).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let (_, again) = ca_init(&dir).unwrap();
        assert!(!again, "an existing CA is kept");
        let shown = ca_show(&dir).unwrap();
        let ca = load_ca(&cert, &key).unwrap();
        assert!(shown.contains(&ca.fingerprint()), "{shown}");
        let trust = TlsBuilder::default()
            .intercept_ca_cert(&cert)
            .intercept_ca_key(&key)
            .assemble("t")
            .unwrap();
        assert_eq!(trust.engine.ca.fingerprint(), ca.fingerprint());
        // A key that is not the certificate's is refused.
        let other = scratch("other");
        ca_init(&other).unwrap();
        let e = TlsBuilder::default()
            .intercept_ca_cert(&cert)
            .intercept_ca_key(other.join("ca-key.pem"))
            .assemble("t")
            .unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&other);
    }
}
