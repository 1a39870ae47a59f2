//! Secrets (shared/API.md §2, "Secrets"): [`SecretBuilder`], used in
//! [`crate::SandboxBuilder::secret`]. The sandbox's environment holds a placeholder; the
//! value stays in moat, zeroed when dropped, and is never printed.
//!
//! What moat does with them today: every byte the sandbox sends is scanned for the
//! placeholders, and one heading for a host outside its secret's list triggers
//! `on_secret_violation` (`Block`: the connection is reset; `BlockAndLog`: and a warning
//! on stderr; `BlockAndTerminate`: and the whole sandbox stops). Substituting the value
//! on the way to an allowed host is the next step (issue 14); until then the placeholder
//! arrives there as it is. Bytes moat cannot read (TLS that is not intercepted) cannot be
//! checked; a placeholder carries nothing of the value.

use std::ffi::OsString;

use moat_engine::Secret;
use zeroize::Zeroizing;

/// One secret's settings.
#[derive(Default)]
pub struct SecretBuilder {
    env: Option<String>,
    value: Option<Zeroizing<Vec<u8>>>,
    hosts: Vec<String>,
    placeholder: Option<String>,
    allow_plain_http: bool,
}

impl std::fmt::Debug for SecretBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBuilder")
            .field("env", &self.env)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .field("hosts", &self.hosts)
            .field("allow_plain_http", &self.allow_plain_http)
            .finish_non_exhaustive()
    }
}

impl SecretBuilder {
    /// The environment variable the sandbox sees (holding the placeholder).
    pub fn env(mut self, name: impl Into<String>) -> SecretBuilder {
        self.env = Some(name.into());
        self
    }

    /// The real value.
    pub fn value(mut self, value: impl Into<String>) -> SecretBuilder {
        self.value = Some(Zeroizing::new(value.into().into_bytes()));
        self
    }

    /// A host the value may go to: `api.example.com`, or `*.example.com` for every name
    /// strictly below. Repeatable.
    pub fn allow_host(mut self, pattern: impl Into<String>) -> SecretBuilder {
        self.hosts.push(pattern.into());
        self
    }

    /// The placeholder (default: random per sandbox, `moat_` and 32 hex digits).
    pub fn placeholder(mut self, placeholder: impl Into<String>) -> SecretBuilder {
        self.placeholder = Some(placeholder.into());
        self
    }

    /// Whether plain HTTP to an allowed host may carry it (default `false`: a secret in
    /// clear text is a leak).
    pub fn allow_plain_http(mut self, allow: bool) -> SecretBuilder {
        self.allow_plain_http = allow;
        self
    }

    /// The secret, checked.
    pub(crate) fn build(self) -> Result<Secret, moat_engine::SecretError> {
        let name = self.env.unwrap_or_default();
        let value = self.value.unwrap_or_default();
        Secret::new(
            &name,
            value,
            self.placeholder,
            &self.hosts,
            self.allow_plain_http,
        )
    }
}

/// The sandbox's variables for `secrets`: each name with its placeholder.
pub(crate) fn env_of(secrets: &[Secret]) -> Vec<(OsString, OsString)> {
    secrets
        .iter()
        .map(|s| (OsString::from(s.name()), OsString::from(s.placeholder())))
        .collect()
}

/// `--secret NAME@HOST[,HOST...]`, the value read from moat's own variable `NAME`.
pub(crate) fn from_flag(spec: &str) -> anyhow::Result<SecretBuilder> {
    let (name, hosts) = spec.split_once('@').ok_or_else(|| {
        anyhow::anyhow!(
            "--secret {spec}: expected NAME@HOST[,HOST...], e.g. OPENAI_API_KEY@api.openai.com"
        )
    })?;
    let value = std::env::var(name).map_err(|_| {
        anyhow::anyhow!(
            "--secret {spec}: moat reads the value from its own environment variable {name}, which is not set"
        )
    })?;
    let mut builder = SecretBuilder::default().env(name).value(value);
    for host in hosts.split(',').filter(|h| !h.is_empty()) {
        builder = builder.allow_host(host);
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use super::*;

    #[test]
    fn the_builder_never_shows_the_value() {
        let b = SecretBuilder::default()
            .env("API_KEY")
            .value("sk-very-secret-value")
            .allow_host("api.example.test");
        let shown = format!("{b:?}");
        assert!(
            !shown.contains("sk-very") && shown.contains("<redacted>"),
            "{shown}"
        );
        let secret = b.build().unwrap();
        assert!(!format!("{secret:?}").contains("sk-very"));
        let env = env_of(std::slice::from_ref(&secret));
        assert_eq!(env[0].0, "API_KEY");
        assert_eq!(env[0].1, secret.placeholder());
    }

    #[test]
    fn flags_name_what_is_wrong() {
        let e = from_flag("NO_AT_SIGN").unwrap_err().to_string();
        assert!(e.contains("NAME@HOST"), "{e}");
        let e = from_flag("MOAT_TEST_SURELY_UNSET_VARIABLE@api.example.test")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not set"), "{e}");
    }
}
