//! What a runtime hands moat-cni (the CNI protocol: variables in the environment, the
//! network's configuration on stdin), read and checked before anything is changed, and
//! turned into the options `moat attach` takes for the pod.
//!
//! The plugin's keys in the conflist (every one optional):
//! - `policy`: the default policy, a preset (`public-only`, `allow-all`, `none`) or a
//!   policy file's path;
//! - `policyDir`: a directory of named policies, `NAME.toml` or `NAME.json`, one of which a
//!   pod chooses by name: `MOAT_POLICY=NAME` in `CNI_ARGS`, or the pod annotation
//!   `moat.dev/policy` (passed by the runtime as `runtimeConfig`'s
//!   `io.kubernetes.cri.pod-annotations` when the conflist asks for that capability);
//! - `auditDir`: where each pod's audit log goes (default `/var/log/moat/cni`);
//! - `dns`: upstream resolvers (default: the node's resolv.conf);
//! - `denyMode`: `drop`, `reject` or `explain`;
//! - `tlsIntercept`, `tlsCaCert`, `tlsCaKey`, `tlsBypass`: TLS interception with a CA
//!   the node holds (the pods must trust its certificate);
//! - `allowedPolicies`: `{"NAMESPACE": [NAMES], "*": [NAMES]}`: which named policies the
//!   pods of a namespace may choose (without it, any in `policyDir`): whoever can make a
//!   pod chooses its policy, so a cluster says who may choose what;
//! - `publish`: the pod's ports that traffic to the pod's own address reaches (`"8080"`,
//!   `"53/udp"`; a Service's, the kubelet's probes), judged as inbound traffic;
//! - `maxConnections`, `maxBufferMemory` (e.g. `"64m"`), `busyPoll` (microseconds; 0, no
//!   busy polling, unless given: an engine per pod shares the node's cores);
//! - `secrets`: `[{"name", "file", "hosts", "placeholder", "plainHttp", "policies"}]`: the
//!   value is read from `file` on the node when the pod is added (never from the conflist);
//!   the pod holds `placeholder` (the pod's manifest sets it, so it is given here, not made
//!   up); with `policies`, only pods under one of those named policies (`"default"`: the
//!   conflist's) get it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{CniError, code};
use crate::cli::run::{RunOptions, SecretFile, TlsOptions};

/// The largest configuration read from stdin.
pub(super) const MAX_CONFIG: u64 = 1 << 20;

/// Where pod audit logs go unless the conflist says.
const AUDIT_DIR: &str = "/var/log/moat/cni";

/// The pod annotation that names its policy.
pub(super) const ANNOTATION: &str = "moat.dev/policy";

/// The `CNI_ARGS` key that names a pod's policy.
pub(super) const ARG: &str = "MOAT_POLICY";

/// The protocol's variables.
#[derive(Debug, Clone)]
pub(super) struct Env {
    pub(super) command: String,
    pub(super) container: String,
    pub(super) netns: Option<PathBuf>,
    pub(super) ifname: String,
    /// `CNI_ARGS`: `K=V;K=V`.
    pub(super) args: Vec<(String, String)>,
}

impl Env {
    pub(super) fn from_process() -> Result<Env, CniError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let command =
            var("CNI_COMMAND").ok_or_else(|| CniError::new(code::ENV, "CNI_COMMAND is not set"))?;
        let args = var("CNI_ARGS")
            .map(|a| {
                a.split(';')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Env {
            command,
            container: var("CNI_CONTAINERID").unwrap_or_default(),
            netns: var("CNI_NETNS").map(PathBuf::from),
            ifname: var("CNI_IFNAME").unwrap_or_default(),
            args,
        })
    }

    pub(super) fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The container id, checked: it names moat's state directory and namespace.
    pub(super) fn container_id(&self) -> Result<&str, CniError> {
        let id = self.container.as_str();
        let ok = !id.is_empty()
            && id.len() <= 128
            && id.as_bytes()[0].is_ascii_alphanumeric()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(id)
        } else {
            Err(CniError::new(
                code::ENV,
                format!(
                    "CNI_CONTAINERID {id:?}: expected letters, digits, '_', '.' and '-' (at most 128, starting with a letter or digit)"
                ),
            ))
        }
    }

    /// The interface's name, checked.
    pub(super) fn interface(&self) -> Result<&str, CniError> {
        let name = self.ifname.as_str();
        let ok = !name.is_empty()
            && name.len() < 16
            && !matches!(name, "lo" | "." | "..")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if ok {
            Ok(name)
        } else {
            Err(CniError::new(
                code::ENV,
                format!(
                    "CNI_IFNAME {name:?}: expected an interface name (1-15 of letters, digits, '_', '.', '-'; not lo)"
                ),
            ))
        }
    }

    /// The pod's namespace and name from the runtime's arguments, when it gave them.
    pub(super) fn pod(&self) -> Option<(&str, &str)> {
        Some((self.arg("K8S_POD_NAMESPACE")?, self.arg("K8S_POD_NAME")?))
    }
}

/// The plugin's configuration.
#[derive(Debug)]
pub(super) struct Conf {
    pub(super) version: String,
    pub(super) raw: Value,
}

/// Versions of the protocol moat-cni speaks (their results have the same shape).
pub(super) const VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

impl Conf {
    pub(super) fn parse(text: &[u8]) -> Result<Conf, CniError> {
        let raw: Value = serde_json::from_slice(text).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("the network configuration is not JSON: {e}"),
            )
        })?;
        if !raw.is_object() {
            return Err(CniError::new(
                code::DECODE,
                "the network configuration is not a JSON object",
            ));
        }
        let version = raw["cniVersion"].as_str().unwrap_or("").to_owned();
        if !VERSIONS.contains(&version.as_str()) {
            return Err(CniError::new(
                code::VERSION,
                format!(
                    "cniVersion {version:?}: moat-cni speaks {}",
                    VERSIONS.join(", ")
                ),
            ));
        }
        Ok(Conf { version, raw })
    }

    fn str_key(&self, key: &str) -> Result<Option<&str>, CniError> {
        match &self.raw[key] {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            _ => Err(invalid(format!("{key}: expected a string"))),
        }
    }

    fn list_key(&self, key: &str) -> Result<Vec<String>, CniError> {
        match &self.raw[key] {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid(format!("{key}: expected a list of strings")))
                })
                .collect(),
            _ => Err(invalid(format!("{key}: expected a list of strings"))),
        }
    }

    fn bool_key(&self, key: &str) -> Result<bool, CniError> {
        match &self.raw[key] {
            Value::Null => Ok(false),
            Value::Bool(b) => Ok(*b),
            _ => Err(invalid(format!("{key}: expected true or false"))),
        }
    }

    /// The policy this pod gets: its own by name (from `CNI_ARGS` or its annotation), else
    /// the conflist's default.
    /// With it, the name chosen (`None`: the default).
    pub(super) fn policy_for(
        &self,
        env: &Env,
    ) -> Result<(Option<String>, Option<String>), CniError> {
        let annotated =
            self.raw["runtimeConfig"]["io.kubernetes.cri.pod-annotations"][ANNOTATION].as_str();
        let Some(name) = env.arg(ARG).or(annotated) else {
            return Ok((self.str_key("policy")?.map(str::to_owned), None));
        };
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        if !valid {
            return Err(invalid(format!(
                "policy name {name:?}: expected letters, digits, '-' and '_' (at most 63)"
            )));
        }
        self.allowed_in_namespace(name, env)?;
        let dir = self.str_key("policyDir")?.ok_or_else(|| {
            invalid(format!(
                "the pod asks for policy {name:?}, and the conflist has no policyDir to find it in"
            ))
        })?;
        ["toml", "json"]
            .iter()
            .map(|ext| Path::new(dir).join(format!("{name}.{ext}")))
            .find(|p| p.is_file())
            .map(|p| {
                (
                    Some(p.to_string_lossy().into_owned()),
                    Some(name.to_owned()),
                )
            })
            .ok_or_else(|| {
                CniError::new(
                    code::UNKNOWN_POLICY,
                    format!("unknown policy {name:?}: there is no {dir}/{name}.toml or .json"),
                )
            })
    }

    /// With `allowedPolicies` (a map from a pod's namespace, or `*` for every one, to the
    /// names its pods may choose), whether the pod's namespace may choose `name`: whoever
    /// can make a pod chooses its policy, so a cluster limits which a namespace may.
    fn allowed_in_namespace(&self, name: &str, env: &Env) -> Result<(), CniError> {
        let map = &self.raw["allowedPolicies"];
        if map.is_null() {
            return Ok(());
        }
        if !map.is_object() {
            return Err(invalid(
                "allowedPolicies: expected a map from a namespace (or \"*\") to a list of policy names".to_owned(),
            ));
        }
        let namespace = env.pod().map(|(ns, _)| ns).unwrap_or("");
        let lists = |key: &str| {
            map[key]
                .as_array()
                .is_some_and(|l| l.iter().any(|n| n.as_str() == Some(name)))
        };
        if lists(namespace) || lists("*") {
            return Ok(());
        }
        Err(CniError::new(
            code::NOT_ALLOWED,
            format!(
                "policy {name:?} is not one namespace {namespace:?} may choose (allowedPolicies)"
            ),
        ))
    }

    fn number_key(&self, key: &str) -> Result<Option<u64>, CniError> {
        match &self.raw[key] {
            Value::Null => Ok(None),
            v => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| invalid(format!("{key}: expected a whole number"))),
        }
    }

    /// `moat attach`'s options for this pod.
    pub(super) fn options(&self, env: &Env) -> Result<RunOptions, CniError> {
        let (policy, chosen) = self.policy_for(env)?;
        let mut opts = RunOptions {
            policy,
            name: audit_name(env),
            quiet: false,
            // An engine per pod on a shared node: no busy polling unless asked (it spends a
            // core's time for each pod's traffic).
            busy_poll: Some(self.number_key("busyPoll")?.unwrap_or(0)),
            max_connections: self
                .number_key("maxConnections")?
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            max_buffer_memory: self.str_key("maxBufferMemory")?.map(str::to_owned),
            ..RunOptions::default()
        };
        opts.dns = self.list_key("dns")?;
        for d in &opts.dns {
            if d.parse::<IpAddr>().is_err() && d.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(format!("dns {d:?}: expected IP or IP:PORT")));
            }
        }
        opts.deny_mode = self.str_key("denyMode")?.map(str::to_owned);
        let dir = self.str_key("auditDir")?.unwrap_or(AUDIT_DIR);
        opts.audit = Some(format!("{dir}/{}.jsonl", audit_file(env)?));
        if self.bool_key("tlsIntercept")? {
            opts.tls = Some(TlsOptions {
                bypass: self.list_key("tlsBypass")?,
                ca_cert: self.str_key("tlsCaCert")?.map(PathBuf::from),
                ca_key: self.str_key("tlsCaKey")?.map(PathBuf::from),
                ..TlsOptions::default()
            });
        }
        opts.secret_files = self.secrets(chosen.as_deref())?;
        Ok(opts)
    }

    /// `publish`: the pod's ports reached at its own address (a Service, the kubelet's
    /// probes), each `PORT` or `PORT/tcp|udp`, as `moat attach --publish` takes them with
    /// the pod's address `at` on both sides.
    pub(super) fn published(&self, at: IpAddr) -> Result<Vec<String>, CniError> {
        self.list_key("publish")?
            .iter()
            .map(|spec| {
                let (port, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
                let ok = port.parse::<u16>().is_ok_and(|p| p > 0) && matches!(proto, "tcp" | "udp");
                if !ok {
                    return Err(invalid(format!(
                        "publish {spec:?}: expected PORT or PORT/tcp|udp, e.g. 8080"
                    )));
                }
                let host = match at {
                    IpAddr::V4(a) => a.to_string(),
                    IpAddr::V6(a) => format!("[{a}]"),
                };
                Ok(format!("{host}:{port}:{port}/{proto}"))
            })
            .collect()
    }

    /// The secrets for a pod under the named policy `chosen` (`None`: the default): each
    /// secret with `"policies"` only for pods under one of those names (`"default"` for the
    /// conflist's default), one without for every pod.
    fn secrets(&self, chosen: Option<&str>) -> Result<Vec<SecretFile>, CniError> {
        let items = match &self.raw["secrets"] {
            Value::Null => return Ok(Vec::new()),
            Value::Array(items) => items,
            _ => return Err(invalid("secrets: expected a list".to_owned())),
        };
        items
            .iter()
            .map(|s| {
                let text = |k: &str| {
                    s[k].as_str().map(str::to_owned).ok_or_else(|| {
                        invalid(format!(
                            "secrets: each needs \"name\", \"file\", \"placeholder\" and \"hosts\" (missing or not a string: {k})"
                        ))
                    })
                };
                let hosts = s["hosts"]
                    .as_array()
                    .map(|h| h.iter().filter_map(Value::as_str).map(str::to_owned).collect::<Vec<_>>())
                    .filter(|h| !h.is_empty())
                    .ok_or_else(|| invalid("secrets: \"hosts\" is a list of the hosts its value may go to".to_owned()))?;
                let under = match &s["policies"] {
                    Value::Null => true,
                    Value::Array(names) => names
                        .iter()
                        .any(|n| n.as_str() == Some(chosen.unwrap_or("default"))),
                    _ => {
                        return Err(invalid(
                            "secrets: \"policies\" is a list of policy names".to_owned(),
                        ));
                    }
                };
                Ok(under.then_some(SecretFile {
                    name: text("name")?,
                    file: PathBuf::from(text("file")?),
                    placeholder: text("placeholder")?,
                    hosts,
                    plain_http: s["plainHttp"].as_bool().unwrap_or(false),
                }))
            })
            .filter_map(Result::transpose)
            .collect()
    }
}

fn invalid(msg: String) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

/// The name each audit line carries (`sandbox`): the pod's, as far as moat's names allow
/// (a-z, 0-9, '-', '_'; at most 63), else the container's.
fn audit_name(env: &Env) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let name = match env.pod() {
        Some((ns, pod)) => format!("{}_{}", clean(ns), clean(pod)),
        None => format!("cni-{}", clean(&env.container)),
    };
    name.chars().take(63).collect()
}

/// The audit file's name: `NAMESPACE_POD_ID` (as the kubelet names pod log directories),
/// or the container id alone.
fn audit_file(env: &Env) -> Result<String, CniError> {
    let id = env.container_id()?;
    let dns_label = |s: &str| {
        !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !s.starts_with('.')
    };
    // Within a file name's 255 bytes (a long pod name falls back to the id alone).
    Ok(match env.pod() {
        Some((ns, pod))
            if dns_label(ns) && dns_label(pod) && ns.len() + pod.len() + id.len() < 240 =>
        {
            format!("{ns}_{pod}_{id}")
        }
        _ => id.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(args: &str) -> Env {
        Env {
            command: "ADD".into(),
            container: "c1".into(),
            netns: None,
            ifname: "eth0".into(),
            args: args
                .split(';')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    fn conf(extra: Value) -> Conf {
        let mut raw = json!({"cniVersion": "1.0.0", "name": "n", "type": "moat-cni"});
        if let (Some(o), Value::Object(more)) = (raw.as_object_mut(), extra) {
            o.extend(more);
        }
        Conf::parse(raw.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_namespace_chooses_only_the_policies_it_may() {
        let dir = std::env::temp_dir().join(format!("moat-cni-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("open.toml"), "").unwrap();
        let c = conf(json!({
            "policy": "public-only",
            "policyDir": dir.to_string_lossy(),
            "allowedPolicies": {"team-a": ["open"]},
        }));
        let asks = |ns: &str| {
            env(&format!(
                "K8S_POD_NAMESPACE={ns};K8S_POD_NAME=p;MOAT_POLICY=open"
            ))
        };
        let (policy, chosen) = c.policy_for(&asks("team-a")).unwrap();
        assert!(policy.unwrap().ends_with("open.toml"));
        assert_eq!(chosen.as_deref(), Some("open"));
        assert_eq!(
            c.policy_for(&asks("team-b")).unwrap_err().code,
            code::NOT_ALLOWED
        );
        // No name asked: the default, whatever the namespace.
        let (policy, chosen) = c.policy_for(&env("K8S_POD_NAMESPACE=team-b")).unwrap();
        assert_eq!((policy.as_deref(), chosen), (Some("public-only"), None));
        // "*" opens a name to every namespace; without the map, every name is open.
        let star =
            conf(json!({"policyDir": dir.to_string_lossy(), "allowedPolicies": {"*": ["open"]}}));
        assert!(star.policy_for(&asks("team-b")).is_ok());
        let all = conf(json!({"policyDir": dir.to_string_lossy()}));
        assert!(all.policy_for(&asks("team-b")).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_secret_goes_only_to_pods_under_its_policies() {
        let c = conf(json!({"secrets": [
            {"name": "A", "file": "/a", "placeholder": "moat_a", "hosts": ["x.test"]},
            {"name": "B", "file": "/b", "placeholder": "moat_b", "hosts": ["x.test"], "policies": ["open"]},
            {"name": "C", "file": "/c", "placeholder": "moat_c", "hosts": ["x.test"], "policies": ["default"]},
        ]}));
        let names = |chosen| -> Vec<String> {
            c.secrets(chosen)
                .unwrap()
                .into_iter()
                .map(|s| s.name)
                .collect()
        };
        assert_eq!(names(None), ["A", "C"]);
        assert_eq!(names(Some("open")), ["A", "B"]);
        assert_eq!(names(Some("other")), ["A"]);
        let bad = conf(
            json!({"secrets": [{"name": "A", "file": "/a", "placeholder": "p", "hosts": []}]}),
        );
        assert!(bad.secrets(None).is_err());
    }

    #[test]
    fn names_from_the_runtime_are_checked() {
        let mut e = env("");
        for bad in ["", ".", "..", "lo", "a/b", "x".repeat(16).as_str()] {
            e.ifname = bad.to_owned();
            assert!(e.interface().is_err(), "{bad:?}");
        }
        for bad in ["", "-x", "../x", "a b", &"f".repeat(129)] {
            e.container = bad.to_owned();
            assert!(e.container_id().is_err(), "{bad:?}");
        }
        // A pod name too long for a file name falls back to the container's id.
        let long = env(&format!(
            "K8S_POD_NAMESPACE=ns;K8S_POD_NAME={}",
            "p".repeat(250)
        ));
        assert_eq!(audit_file(&long).unwrap(), "c1");
        let k8s = env("K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-1");
        assert_eq!(audit_file(&k8s).unwrap(), "ns_web-1_c1");
        assert_eq!(audit_name(&k8s), "ns_web-1");
    }
}
