//! Policy files, TOML or JSON with the same shape (shared/API.md §4):
//!
//! ```toml
//! default_action = "deny"
//! [[rules]]
//! action = "allow"
//! direction = "outbound"          # default outbound
//! destination = "*.example.com"   # DEST syntax, or a table such as { cidr = "10.0.0.0/8" }
//! protocol = "tcp"                # optional
//! ports = "443"                   # optional: 443, "443" or "8000-8100"
//! ```
//!
//! Unknown keys and wrong types are errors; every error names the file, the line and column
//! of the offending value, and what was expected. The format is chosen by the extension
//! (`.json`, `.toml`), else by the content (JSON starts with `{`).

use std::fmt;
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::dest::{DestSpec, parse_cidr, parse_protocol};
use crate::error::{PolicyError, PolicyFileError};
use crate::types::{
    Action, Destination, DestinationGroup, Direction, NetworkPolicy, PortRange, Rule,
};

/// The file's top level.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDoc {
    default_action: Word<Action>,
    #[serde(default)]
    rules: Vec<RuleDoc>,
}

/// One `[[rules]]` entry, checked as a whole once its fields are read.
#[derive(Deserialize)]
#[serde(try_from = "RawRule")]
struct RuleDoc(Rule);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    action: Word<Action>,
    #[serde(default)]
    direction: Option<Word<Direction>>,
    destination: DestDoc,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    ports: Option<PortsDoc>,
}

impl TryFrom<RawRule> for RuleDoc {
    type Error = PolicyError;
    fn try_from(raw: RawRule) -> Result<RuleDoc, PolicyError> {
        let spec = raw.destination.0;
        let twice = |what: &str, inline: &str| PolicyError::Rule {
            why: format!("{what} given both in `destination` ({inline}) and as `{what}`; keep one"),
        };
        let ports = match (spec.ports, raw.ports) {
            (Some(_), Some(_)) => return Err(twice("ports", ":PORT")),
            (a, b) => a.or(b.map(|p| p.0)),
        };
        let protocol = match (spec.protocol, raw.protocol) {
            (Some(_), Some(_)) => return Err(twice("protocol", "/PROTO")),
            (Some(p), None) => Some(p),
            (None, Some(word)) => Some(parse_protocol(&word, &spec.destination)?),
            (None, None) => None,
        };
        let rule = Rule {
            action: raw.action.0,
            destination: spec.destination,
            direction: raw.direction.map_or(Direction::Outbound, |d| d.0),
            ports,
            protocol,
        };
        rule.validate()?;
        Ok(RuleDoc(rule))
    }
}

/// A string parsed with `FromStr`, whose error becomes the deserializer's (with position).
struct Word<T>(T);

impl<'de, T> Deserialize<'de> for Word<T>
where
    T: std::str::FromStr<Err = PolicyError>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map(Word).map_err(de::Error::custom)
    }
}

/// `ports = 443`, `ports = "443"` or `ports = "8000-8100"`.
struct PortsDoc(PortRange);

impl<'de> Deserialize<'de> for PortsDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortsDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (443) or a port range (\"8000-8100\")")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortsDoc, E> {
                u16::try_from(v)
                    .map(|p| PortsDoc(PortRange::single(p)))
                    .map_err(|_| {
                        E::custom(PolicyError::Port {
                            input: v.to_string(),
                        })
                    })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortsDoc, E> {
                u16::try_from(v)
                    .map(|p| PortsDoc(PortRange::single(p)))
                    .map_err(|_| {
                        E::custom(PolicyError::Port {
                            input: v.to_string(),
                        })
                    })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortsDoc, E> {
                v.parse().map(PortsDoc).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `destination = "DEST"` or one of `{ cidr = .. }`, `{ domain = .. }`,
/// `{ domain_suffix = .. }`, `{ group = .. }`, `{ any = true }`.
struct DestDoc(DestSpec);

const DEST_KEYS: &[&str] = &["cidr", "domain", "domain_suffix", "group", "any"];

impl<'de> Deserialize<'de> for DestDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = DestDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a destination string (\"10.0.0.0/8\", \"*.example.com\", \"group:private\", \
                     \"any\") or a table with one of cidr, domain, domain_suffix, group, any",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DestDoc, E> {
                DestSpec::parse(v).map(DestDoc).map_err(E::custom)
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<DestDoc, M::Error> {
                let mut found: Option<Destination> = None;
                while let Some(key) = map.next_key::<String>()? {
                    if found.is_some() {
                        return Err(de::Error::custom(format!(
                            "`{key}`: a destination table holds exactly one of cidr, domain, domain_suffix, group, any"
                        )));
                    }
                    let dest = match key.as_str() {
                        "cidr" => parse_cidr(&map.next_value::<String>()?).map(Destination::Cidr),
                        "domain" => Destination::domain(&map.next_value::<String>()?),
                        "domain_suffix" => Destination::domain_suffix(&map.next_value::<String>()?),
                        "group" => map
                            .next_value::<String>()?
                            .parse::<DestinationGroup>()
                            .map(Destination::Group),
                        "any" => match map.next_value::<bool>()? {
                            true => Ok(Destination::Any),
                            false => {
                                return Err(de::Error::custom(
                                    "`any = false` matches nothing; remove the rule",
                                ));
                            }
                        },
                        other => return Err(de::Error::unknown_field(other, DEST_KEYS)),
                    };
                    found = Some(dest.map_err(de::Error::custom)?);
                }
                let destination = found.ok_or_else(|| {
                    de::Error::custom("empty destination table: give one of cidr, domain, domain_suffix, group, any")
                })?;
                Ok(DestDoc(DestSpec {
                    destination,
                    ports: None,
                    protocol: None,
                }))
            }
        }
        d.deserialize_any(V)
    }
}

/// The formats a policy file can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyFormat {
    /// TOML.
    Toml,
    /// JSON.
    Json,
}

impl PolicyFormat {
    /// Picks the format from the file's extension, else from its first non-blank character.
    pub fn detect(path: &Path, text: &str) -> PolicyFormat {
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("json") => PolicyFormat::Json,
            Some("toml") => PolicyFormat::Toml,
            _ if text.trim_start().starts_with('{') => PolicyFormat::Json,
            _ => PolicyFormat::Toml,
        }
    }
}

impl NetworkPolicy {
    /// Parses policy text; `path` is only used in error messages.
    pub fn from_text(
        path: &Path,
        text: &str,
        format: PolicyFormat,
    ) -> Result<NetworkPolicy, PolicyFileError> {
        let syntax = |line, column, message: String| PolicyFileError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message,
        };
        let doc: PolicyDoc = match format {
            PolicyFormat::Toml => toml::from_str(text).map_err(|e| {
                let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
                syntax(line, column, e.message().trim_end().to_owned())
            })?,
            PolicyFormat::Json => serde_json::from_str(text).map_err(|e| {
                let full = e.to_string();
                let suffix = format!(" at line {} column {}", e.line(), e.column());
                let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
                syntax(e.line().max(1), e.column().max(1), message)
            })?,
        };
        Ok(NetworkPolicy {
            default_action: doc.default_action.0,
            rules: doc.rules.into_iter().map(|r| r.0).collect(),
        })
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Protocol;

    fn toml(text: &str) -> Result<NetworkPolicy, PolicyFileError> {
        NetworkPolicy::from_text(Path::new("p.toml"), text, PolicyFormat::Toml)
    }

    fn json(text: &str) -> Result<NetworkPolicy, PolicyFileError> {
        NetworkPolicy::from_text(Path::new("p.json"), text, PolicyFormat::Json)
    }

    #[test]
    fn a_full_toml_policy() {
        let p = toml(
            r#"
default_action = "deny"
[[rules]]
action = "allow"
destination = "*.example.com"
protocol = "tcp"
ports = "443"
[[rules]]
action = "deny"
direction = "inbound"
destination = { cidr = "127.0.0.0/8" }
[[rules]]
action = "allow"
destination = "203.0.113.10:80/tcp"
[[rules]]
action = "allow"
destination = { group = "private" }
ports = 8000
"#,
        )
        .unwrap();
        assert_eq!(p.default_action, Action::Deny);
        let shown: Vec<String> = p.rules.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "allow outbound *.example.com:443/tcp",
                "deny inbound 127.0.0.0/8",
                "allow outbound 203.0.113.10:80/tcp",
                "allow outbound group:private:8000",
            ]
        );
        assert_eq!(p.rules[0].protocol, Some(Protocol::Tcp));
    }

    #[test]
    fn json_has_the_same_shape() {
        let p = json(r#"{"default_action":"allow","rules":[{"action":"deny","destination":{"domain":"x.example"},"ports":"1-2"}]}"#).unwrap();
        assert_eq!(p.rules[0].to_string(), "deny outbound x.example:1-2");
    }

    fn err(r: Result<NetworkPolicy, PolicyFileError>) -> (usize, usize, String) {
        match r.unwrap_err() {
            PolicyFileError::Syntax {
                line,
                column,
                message,
                ..
            } => (line, column, message),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn errors_point_at_the_value() {
        let (l, c, m) = err(toml(
            "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ndestination = \"10.0.0.0/33\"\n",
        ));
        assert_eq!((l, c), (4, 15), "{m}");
        assert!(m.contains("10.0.0.0/33"), "{m}");

        let (l, _, m) = err(toml(
            "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ndestination = \"group:privat\"\n",
        ));
        assert_eq!(l, 4);
        assert!(m.contains("expected one of private"), "{m}");

        let (l, _, m) = err(toml(
            "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ndestination = \"any\"\nports = \"90-80\"\n",
        ));
        assert_eq!(l, 5);
        assert!(m.contains("80-90"), "{m}");

        let (l, c, m) = err(toml(
            "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ndestination = \"any\"\nport = \"80\"\n",
        ));
        assert_eq!((l, c), (5, 1), "{m}");
        assert!(m.contains("unknown field `port`"), "{m}");

        let (l, _, m) = err(toml(
            "default_action = \"deny\"\n[[rules]]\naction = 5\ndestination = \"any\"\n",
        ));
        assert_eq!(l, 3);
        assert!(m.contains("invalid type"), "{m}");

        let (l, _, m) = err(toml("default_action = \"maybe\"\n"));
        assert_eq!(l, 1);
        assert!(m.contains("expected allow or deny"), "{m}");

        let (_, _, m) = err(toml("rules = []\n"));
        assert!(m.contains("default_action"), "{m}");

        let (l, c, m) = err(json(
            "{\n  \"default_action\": \"deny\",\n  \"rules\": [{\"action\": \"allow\", \"destination\": \"any\", \"extra\": 1}]\n}",
        ));
        assert_eq!(l, 3, "{m}");
        assert!(c > 1);
        assert!(m.contains("unknown field `extra`"), "{m}");
    }

    #[test]
    fn rule_level_contradictions() {
        let (l, _, m) = err(toml(
            "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ndestination = \"any:80\"\nports = 81\n",
        ));
        assert_eq!(l, 2, "the rule's table: {m}");
        assert!(m.contains("both"), "{m}");
        let (_, _, m) = err(toml(
            "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ndestination = \"any\"\nprotocol = \"icmp\"\n",
        ));
        assert!(m.contains("icmpv4 or icmpv6"), "{m}");
        let (_, _, m) = err(toml(
            "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ndirection = \"inbound\"\ndestination = \"a.example\"\n",
        ));
        assert!(m.contains("inbound"), "{m}");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 3), (2, 1));
        assert_eq!(line_col("", 10), (1, 1));
    }

    #[test]
    fn the_format_comes_from_the_extension_then_the_text() {
        let detect = |path: &str, text: &str| PolicyFormat::detect(Path::new(path), text);
        assert_eq!(detect("p.json", "default_action = 1"), PolicyFormat::Json);
        assert_eq!(detect("p.JSON", ""), PolicyFormat::Json);
        assert_eq!(detect("p.toml", " {"), PolicyFormat::Toml);
        assert_eq!(detect("p.TOML", "{"), PolicyFormat::Toml);
        assert_eq!(detect("policy", "\n  {\"rules\": []}"), PolicyFormat::Json);
        assert_eq!(detect("policy.conf", "rules = []"), PolicyFormat::Toml);
    }

    #[test]
    fn errors_say_where() {
        let unread = PolicyFileError::Read {
            path: "absent.toml".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(unread.location(), None);

        let bad = toml("default_action = \"deny\"\n\n[[rules]]\naction = \"maybe\"\n").unwrap_err();
        assert_eq!(bad.location(), Some((4, 10)), "{bad}");
    }

    #[test]
    fn wrong_types_say_what_was_expected() {
        let ports = toml("[[rules]]\naction = \"allow\"\ndestination = \"any\"\nports = true\n")
            .unwrap_err()
            .to_string();
        assert!(ports.contains("a port (443) or a port range"), "{ports}");
        let dest = toml("[[rules]]\naction = \"allow\"\ndestination = 5\n")
            .unwrap_err()
            .to_string();
        assert!(dest.contains("a destination string"), "{dest}");
    }
}
