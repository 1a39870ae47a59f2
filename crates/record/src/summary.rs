//! What a run did, in a few lines: the flows allowed and denied grouped by destination
//! (retries folded into a count), the rule that decided each group, the names DNS refused,
//! secrets swapped or stopped, and the `--allow` flags that would have permitted what the
//! policy denied.
//!
//! # Theory of operation
//! A [`Summary`] is built from audit events — as the run goes (the audit log feeds each event
//! it writes, [`crate::audit::AuditLog::summarize`]) or afterwards from a log file (`moat audit`) —
//! so both say the same. Events are grouped by run id; within a run, by what matters to the
//! reader: direction, protocol, destination (the name DNS answered for it when there is one,
//! else the address) and port, plus the deciding rule and reason for denials. Source ports
//! and repeated attempts fold into counts (a line the log itself folded counts as its
//! `count`). Each kind keeps at most [`MAX_GROUPS`] groups; more are counted as "others",
//! so the summary (and `--learn`, made from it) stays the same size however many distinct
//! destinations and names a run tries. Suggestions are made only for what the policy denied (a
//! rule or the default): what moat refused for other reasons (limits, DNS bypass, rebinding,
//! secrets) is not a matter of `--allow`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

/// The sandbox's gateway (moat's default addresses), which the policy judges as the host's
/// loopback.
const GATEWAY_V4: &str = "10.0.2.2";
const GATEWAY_V6: &str = "fd00:6d6f:6174::2";

/// Groups kept per kind and run.
pub const MAX_GROUPS: usize = 4096;
/// Groups shown per kind when rendered for people.
const SHOWN: usize = 8;

/// Where a group of flows went.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Dest {
    inbound: bool,
    proto: String,
    /// The name DNS answered for the address, else the address (for inbound: the peer).
    host: String,
    port: Option<u64>,
    /// Every name DNS answered for the address (comma-separated; empty: none).
    names: String,
    /// The address as the policy judges it (the gateway stands for the host's loopback).
    judged: String,
    /// The connection sent a TLS server name that DNS did not answer this address for (a
    /// refused connect event's `domain` is what DNS answered, its `sni` what the client
    /// named): a rule for that name cannot allow it here, an address rule can.
    elsewhere: bool,
}

/// Where an event's other fields are read from: a line of a log, or the fields the audit
/// log was handed (without building a JSON object for them).
pub trait EventFields {
    /// The field `key`.
    fn field(&self, key: &str) -> Option<&Value>;
}

impl EventFields for Map<String, Value> {
    fn field(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }
}

impl EventFields for [(&str, Value)] {
    fn field(&self, key: &str) -> Option<&Value> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

impl Dest {
    fn from(e: &(impl EventFields + ?Sized)) -> Dest {
        let inbound = e.field("direction").and_then(Value::as_str) == Some("inbound");
        let text = |k: &str| e.field(k).and_then(Value::as_str).unwrap_or("").to_owned();
        // The evidence of the name a connection used, strongest first: the TLS server name
        // it sent, else the `Host` of its first request or the names DNS answered for its
        // address to this sandbox, the most recent first (the engine's `domain`).
        let sni = text("sni");
        let pinned = text("domain");
        let elsewhere = !inbound && !sni.is_empty() && !pinned.split(',').any(|d| d == sni);
        let domain = if !inbound && !sni.is_empty() {
            sni
        } else {
            pinned
        };
        let host = if inbound {
            // The peer, without its port.
            let src = text("src");
            match src.rsplit_once(':') {
                Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => {
                    h.trim_matches(['[', ']']).to_owned()
                }
                _ => src,
            }
        } else if let Some(first) = domain.split(',').find(|d| !d.is_empty()) {
            first.to_owned()
        } else {
            text("dst")
        };
        let judged = if inbound {
            host.clone()
        } else {
            let dst = text("dst");
            match dst.as_str() {
                GATEWAY_V4 => "127.0.0.1".to_owned(),
                GATEWAY_V6 => "::1".to_owned(),
                _ => dst,
            }
        };
        Dest {
            inbound,
            proto: text("proto"),
            host,
            port: e.field("port").and_then(Value::as_u64),
            names: if inbound { String::new() } else { domain },
            judged,
            elsewhere,
        }
    }

    /// What `--allow` names for this destination: its name, else the address as judged
    /// (also when the name it sent is not one DNS answered for the address: a name rule
    /// holds only at the addresses DNS answered for the name).
    fn allow_flag(&self) -> String {
        let host = if self.names.is_empty() || self.elsewhere {
            self.judged.clone()
        } else {
            self.host.clone()
        };
        Dest {
            host,
            ..self.clone()
        }
        .shown()
    }

    /// The address as the policy judges it, with the port and protocol.
    fn address_shown(&self) -> String {
        Dest {
            host: self.judged.clone(),
            ..self.clone()
        }
        .shown()
    }

    /// Whether DNS answered the address for several names and the connection named none.
    fn ambiguous(&self) -> bool {
        self.names.contains(',')
    }

    /// [`Dest::shown`], or for an ambiguous destination its address and the names it may
    /// have meant: `203.0.113.10:80/tcp (one of a.example.com, b.example.com)`; for a
    /// server name sent to an address DNS did not answer for it, where it went too:
    /// `other.example.com:443/tcp at 203.0.113.10`.
    fn described(&self) -> String {
        if self.elsewhere {
            return format!("{} at {}", self.shown(), self.judged);
        }
        if !self.ambiguous() {
            return self.shown();
        }
        format!(
            "{} (one of {})",
            self.address_shown(),
            self.names.split(',').collect::<Vec<_>>().join(", ")
        )
    }

    /// `api.example.com:443/tcp`, `[2001:db8::1]:53/udp`, `198.51.100.7/icmp`.
    fn shown(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let proto = match self.proto.as_str() {
            "icmpv4" | "icmpv6" => "icmp",
            p => p,
        };
        match self.port {
            Some(port) if proto == "tcp" || proto == "udp" => format!("{host}:{port}/{proto}"),
            _ => format!("{host}/{proto}"),
        }
    }
}

/// Why a group was denied.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Denial {
    dest: Dest,
    rule: String,
    reason: String,
}

/// Counts by key, at most [`MAX_GROUPS`] keys.
#[derive(Debug, Clone)]
struct Groups<K: Ord> {
    counts: BTreeMap<K, u64>,
    /// In the order first seen, for the reader.
    order: Vec<K>,
    others: u64,
}

impl<K: Ord> Default for Groups<K> {
    fn default() -> Self {
        Groups {
            counts: BTreeMap::new(),
            order: Vec::new(),
            others: 0,
        }
    }
}

impl<K: Ord + Clone> Groups<K> {
    /// Counts `times` of `key`; whether it is new.
    fn add(&mut self, key: K, times: u64) -> bool {
        if let Some(n) = self.counts.get_mut(&key) {
            *n = n.saturating_add(times);
            return false;
        }
        if self.counts.len() >= MAX_GROUPS {
            self.others = self.others.saturating_add(times);
            return false;
        }
        self.order.push(key.clone());
        self.counts.insert(key, times);
        true
    }

    fn iter(&self) -> impl Iterator<Item = (&K, u64)> {
        self.order.iter().map(|k| (k, self.counts[k]))
    }

    fn total(&self) -> u64 {
        self.counts
            .values()
            .fold(self.others, |sum, n| sum.saturating_add(*n))
    }
}

/// One run's summary.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// The run id.
    pub run: String,
    /// The sandbox's name.
    pub sandbox: String,
    /// The command's exit status, when the run's `end` event was seen.
    pub exit_status: Option<Value>,
    allowed: Groups<(Dest, String)>,
    denied: Groups<Denial>,
    names: Groups<(String, String, String)>,
    lookups: u64,
    tls: Groups<(String, String)>,
    secrets: Groups<(String, String, String)>,
    /// What the log itself could not hold: it reached its cap (a `truncated` event, or
    /// events dropped), events dropped there, events lost to failed writes (from `end`).
    log_truncated: bool,
    log_dropped: u64,
    log_lost: u64,
}

/// The summary of one or more runs (see the module header).
#[derive(Debug, Clone, Default)]
pub struct Summary {
    runs: Vec<RunSummary>,
}

/// The fields every event has.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// The run's id.
    pub run: &'a str,
    /// The sandbox's name.
    pub sandbox: &'a str,
    /// The event type.
    pub event: &'a str,
    /// `allow` or `deny`.
    pub decision: &'a str,
    /// The rule that decided (an index or `default`), or the built-in that did.
    pub rule: &'a str,
    /// Why.
    pub reason: &'a str,
}

/// Whether an event is the first of its kind that a person watching should hear of now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fresh {
    /// Nothing new.
    No,
    /// A new denied destination or name: a line saying so.
    Denied(String),
}

impl Summary {
    /// An empty summary.
    pub fn new() -> Summary {
        Summary::default()
    }

    /// The runs seen, in order.
    pub fn runs(&self) -> &[RunSummary] {
        &self.runs
    }

    /// Takes one audit event.
    pub fn add(&mut self, e: &Map<String, Value>) -> Fresh {
        let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
        // What decided: the policy's rule, or a built-in (`by`; logs before it was
        // named so put built-ins in `rule` too).
        let rule = match (e.get("rule"), e.get("by")) {
            (Some(Value::Number(n)), _) => n.to_string(),
            (Some(Value::String(s)), _) => s.clone(),
            (_, Some(Value::String(s))) => s.clone(),
            _ => String::new(),
        };
        let head = Head {
            run: text("run"),
            sandbox: text("sandbox"),
            event: text("event"),
            decision: text("decision"),
            rule: &rule,
            reason: text("reason"),
        };
        self.add_parts(&head, e)
    }

    /// Takes one event given as its common fields and the rest.
    pub fn add_parts(&mut self, head: &Head<'_>, e: &(impl EventFields + ?Sized)) -> Fresh {
        let text = |k: &str| e.field(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let at = match self.runs.iter().position(|r| r.run == head.run) {
            Some(at) => at,
            None => {
                self.runs.push(RunSummary {
                    run: head.run.to_owned(),
                    sandbox: head.sandbox.to_owned(),
                    ..RunSummary::default()
                });
                self.runs.len() - 1
            }
        };
        let run = &mut self.runs[at];
        let deny = head.decision == "deny";
        // A line that stands for repeats the log folded (`count`) counts as that many.
        let times = e.field("count").and_then(Value::as_u64).unwrap_or(1);
        // Allowed lookups, the most frequent events, only count.
        if head.event == "dns" && !deny {
            run.lookups = run.lookups.saturating_add(times);
            return Fresh::No;
        }
        let rule = head.rule.to_owned();
        let reason = || head.reason.to_owned();
        match head.event {
            "end" => {
                run.exit_status = e.field("exit_status").cloned();
                let count = |k: &str| e.field(k).and_then(Value::as_u64).unwrap_or(0);
                run.log_dropped = count("events_dropped");
                run.log_lost = count("events_lost");
                run.log_truncated |= run.log_dropped > 0;
            }
            "truncated" => run.log_truncated = true,
            "connect" => {
                let dest = Dest::from(e);
                if deny {
                    let shown = format!("{} ({})", dest.described(), head.reason);
                    let new = run.denied.add(
                        Denial {
                            dest,
                            rule,
                            reason: reason(),
                        },
                        times,
                    );
                    if new {
                        return Fresh::Denied(format!("denied {shown}"));
                    }
                } else {
                    run.allowed.add((dest, rule), times);
                }
            }
            "dns" => {
                run.lookups = run.lookups.saturating_add(times);
                if deny {
                    let name = text("name");
                    let shown = format!("lookup of {name} refused ({})", head.reason);
                    let by = text("blocked_by");
                    if run.names.add((name, by, rule), times) {
                        return Fresh::Denied(shown);
                    }
                }
            }
            "tls" if deny => {
                // A hello without a server name is shown by the address it went to.
                let mut what = text("sni");
                if what.is_empty() {
                    what = Dest::from(e).address_shown();
                }
                run.tls.add((what, reason()), times);
            }
            "secret" => {
                run.secrets
                    .add((text("name"), text("host"), text("secret")), times);
            }
            _ => {}
        }
        Fresh::No
    }
}

/// Whether a deciding rule is the policy's (an index or the default), so `--allow` helps.
fn policy_rule(rule: &str) -> bool {
    rule == "default" || rule.bytes().all(|b| b.is_ascii_digit()) && !rule.is_empty()
}

/// The `--allow` flag suggested for a denied connection to `dest` decided by `rule`: none
/// for an inbound peer, a built-in refusal, or a `--deny` among the first `flag_rules` rules
/// (see [`RunSummary::suggestions_after`]).
fn connect_suggestion(dest: &Dest, rule: &str, flag_rules: usize) -> Option<String> {
    let by_flag = rule.parse::<usize>().is_ok_and(|i| i < flag_rules);
    (!dest.inbound && policy_rule(rule) && !by_flag)
        .then(|| format!("--allow {}", dest.allow_flag()))
}

/// A denied outbound `connect` event, given as the audit log is (`rule` and the other
/// fields), as the summary shows its destination (`api.example.test:80/tcp`) with the
/// `--allow` flag it would suggest for it: what deny mode `explain` tells the sandbox.
pub fn denied_connect(
    rule: &str,
    fields: &[(&str, Value)],
    flag_rules: usize,
) -> (String, Option<String>) {
    let dest = Dest::from(fields);
    let flag = connect_suggestion(&dest, rule, flag_rules);
    (dest.shown(), flag)
}

/// The `--allow` flag the summary suggests for a refused lookup of `name` (`blocked_by`
/// and `rule` as its `dns` event has them): only when the policy refused it, and not by a
/// `--deny` among the first `flag_rules` rules.
pub fn denied_lookup(
    name: &str,
    blocked_by: &str,
    rule: &str,
    flag_rules: usize,
) -> Option<String> {
    let by_flag = rule.parse::<usize>().is_ok_and(|i| i < flag_rules);
    (blocked_by == "policy" && !by_flag).then(|| format!("--allow {name}"))
}

impl RunSummary {
    /// Connections (and UDP flows) allowed.
    pub fn allowed(&self) -> u64 {
        self.allowed.total()
    }

    /// Attempts denied (retries counted).
    pub fn denied(&self) -> u64 {
        self.denied.total()
    }

    /// Lookups the sandbox made.
    pub fn lookups(&self) -> u64 {
        self.lookups
    }

    /// The `--allow` flags that would have permitted what the policy denied, each once.
    pub fn suggestions(&self) -> Vec<String> {
        self.suggestions_after(0)
    }

    /// [`RunSummary::suggestions`] for a run whose first `flag_rules` rules came from
    /// `--allow`/`--deny` flags: a denial by one of those (a `--deny`) is not one an
    /// `--allow` placed after it could lift, so none is suggested for it (the denial's own
    /// line names the rule).
    pub fn suggestions_after(&self, flag_rules: usize) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut push = |s: String| {
            if !out.contains(&s) {
                out.push(s);
            }
        };
        for (d, _) in self.denied.iter() {
            if let Some(flag) = connect_suggestion(&d.dest, &d.rule, flag_rules) {
                push(flag);
            }
        }
        for ((name, by, rule), _) in self.names.iter() {
            if let Some(flag) = denied_lookup(name, by, rule, flag_rules) {
                push(flag);
            }
        }
        out
    }

    /// What the audit log could not hold, when anything: a record with a hole in it says so.
    fn log_notes(&self, s: &mut String) {
        if self.log_truncated {
            let _ = writeln!(
                s,
                "  log      reached --audit-max-size: {} counted but not written",
                plural(self.log_dropped, "event")
            );
        }
        if self.log_lost > 0 {
            let _ = writeln!(
                s,
                "  log      {} lost (a write failed)",
                plural(self.log_lost, "event")
            );
        }
    }

    /// The summary for people: a headline, then the groups (at most a few of each).
    pub fn render(&self) -> String {
        self.render_after(0)
    }

    /// [`RunSummary::render`] for a run whose first `flag_rules` rules came from flags
    /// (see [`RunSummary::suggestions_after`]).
    pub fn render_after(&self, flag_rules: usize) -> String {
        let mut s = String::new();
        let exit = match &self.exit_status {
            Some(Value::Number(n)) => format!(", exit status {n}"),
            _ => String::new(),
        };
        let denied_groups = self.denied.counts.len() + usize::from(self.denied.others > 0);
        if self.allowed() == 0 && self.denied() == 0 && self.lookups == 0 {
            let _ = writeln!(s, "run {}{exit}: no network traffic", self.run);
            self.log_notes(&mut s);
            return s;
        }
        let _ = writeln!(
            s,
            "run {}{exit}: {} allowed, {} denied{}, {} lookups ({} refused)",
            self.run,
            plural(self.allowed(), "connection"),
            plural(self.denied(), "attempt"),
            if denied_groups > 0 {
                format!(" to {}", plural(denied_groups as u64, "destination"))
            } else {
                String::new()
            },
            self.lookups,
            self.names.total(),
        );
        let mut shown = |label: &str, lines: Vec<String>, others: u64| {
            let more = lines.len().saturating_sub(SHOWN) as u64 + others;
            for line in lines.into_iter().take(SHOWN) {
                let _ = writeln!(s, "  {label:<8} {line}");
            }
            if more > 0 {
                let _ = writeln!(s, "  {label:<8} ... and {more} more");
            }
        };
        shown(
            "denied",
            self.denied
                .iter()
                .map(|(d, n)| {
                    let dir = if d.dest.inbound { "from " } else { "" };
                    // The policy's reasons name their rule already.
                    let why = if d.reason.starts_with("rule ") || d.reason.contains(" rule") {
                        d.reason.clone()
                    } else {
                        format!("{}: {}", d.rule, d.reason)
                    };
                    format!("{dir}{}{}: {why}", d.dest.described(), times(n))
                })
                .collect(),
            self.denied.others,
        );
        shown(
            "refused",
            self.names
                .iter()
                .map(|((name, by, rule), n)| {
                    let by = if by.is_empty() {
                        rule.clone()
                    } else {
                        by.clone()
                    };
                    format!("lookup of {name}{} ({by})", times(n))
                })
                .collect(),
            self.names.others,
        );
        shown(
            "tls",
            self.tls
                .iter()
                .map(|((sni, reason), n)| format!("{sni}{}: {reason}", times(n)))
                .collect(),
            self.tls.others,
        );
        shown(
            "secret",
            self.secrets
                .iter()
                .map(|((name, host, what), n)| format!("{name} → {host}: {what}{}", times(n)))
                .collect(),
            self.secrets.others,
        );
        shown(
            "allowed",
            self.allowed
                .iter()
                .map(|((d, rule), n)| {
                    let dir = if d.inbound { "from " } else { "" };
                    format!("{dir}{}{} (rule {rule})", d.described(), times(n))
                })
                .collect(),
            self.allowed.others,
        );
        self.log_notes(&mut s);
        let suggestions = self.suggestions_after(flag_rules);
        if !suggestions.is_empty() {
            let _ = writeln!(s, "  to allow what was denied: {}", suggestions.join(" "));
        }
        s
    }

    /// A deny-by-default policy file (TOML) with the fewest rules that allow what this run
    /// was allowed: a rule per name DNS answered for a destination (else its address), per
    /// protocol and per run of consecutive ports, each with a comment saying what used it.
    /// `header` opens the file as comment lines.
    pub fn learned_policy(&self, header: &str) -> String {
        // (direction inbound?, target, proto) → ports used → what used them.
        type Key = (bool, String, String);
        let mut rules: BTreeMap<Key, BTreeMap<Option<u64>, Vec<String>>> = BTreeMap::new();
        let mut ambiguous: BTreeMap<Key, String> = BTreeMap::new();
        for ((d, _), n) in self.allowed.iter() {
            let what = format!(
                "{}{}{}",
                if d.inbound { "from " } else { "" },
                if d.elsewhere {
                    d.described()
                } else {
                    d.shown()
                },
                times(n)
            );
            // A server name DNS did not answer for the address is the program's claim: a
            // rule for it would grant wherever DNS points that name later, and would not
            // even match here. The address is what the run used.
            let targets: Vec<String> = if d.names.is_empty() || d.elsewhere {
                vec![d.judged.clone()]
            } else {
                d.names.split(',').map(str::to_owned).collect()
            };
            // A plain connection to an address DNS answered for several names: which one it
            // meant is not known, so each gets a rule, and a comment says why.
            if targets.len() > 1 {
                for target in &targets {
                    ambiguous.insert(
                        (d.inbound, target.clone(), d.proto.clone()),
                        format!(
                            "one of {}: DNS answered the address for each, and the connection named none of them (by a TLS server name or HTTP Host)",
                            targets.join(", ")
                        ),
                    );
                }
            }
            for target in targets {
                let key = (d.inbound, target, d.proto.clone());
                let port = if d.proto == "tcp" || d.proto == "udp" {
                    d.port
                } else {
                    None
                };
                rules
                    .entry(key)
                    .or_default()
                    .entry(port)
                    .or_default()
                    .push(what.clone());
            }
        }
        let mut out = String::new();
        for line in header.lines() {
            let _ = writeln!(out, "# {line}");
        }
        let _ = writeln!(out, "default_action = \"deny\"");
        if self.allowed.others > 0 {
            let _ = writeln!(
                out,
                "# {} more flows were not grouped (more than {MAX_GROUPS} destinations): add them by hand",
                self.allowed.others
            );
        }
        for ((inbound, target, proto), ports) in &rules {
            // Consecutive ports share a rule.
            let mut runs: Vec<(Option<u64>, Option<u64>, Vec<String>)> = Vec::new();
            for (port, used) in ports {
                match (runs.last_mut(), port) {
                    (Some((_, Some(end), whats)), Some(p)) if *end + 1 == *p => {
                        *end = *p;
                        whats.extend(used.iter().cloned());
                    }
                    _ => runs.push((*port, *port, used.clone())),
                }
            }
            for (start, end, whats) in runs {
                let _ = writeln!(out, "\n[[rules]]");
                let mut whats = whats;
                whats.dedup();
                let used: String = whats
                    .join(", ")
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                let _ = writeln!(out, "# used by: {used}");
                if let Some(why) = ambiguous.get(&(*inbound, target.clone(), proto.clone())) {
                    let _ = writeln!(out, "# {why}");
                }
                let _ = writeln!(out, "action = \"allow\"");
                if *inbound {
                    let _ = writeln!(out, "direction = \"inbound\"");
                }
                let _ = writeln!(out, "destination = {}", toml_string(target));
                let _ = writeln!(out, "protocol = {}", toml_string(proto));
                match (start, end) {
                    (Some(a), Some(b)) if a == b => {
                        let _ = writeln!(out, "ports = \"{a}\"");
                    }
                    (Some(a), Some(b)) => {
                        let _ = writeln!(out, "ports = \"{a}-{b}\"");
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// The summary for machines.
    pub fn to_json(&self) -> Value {
        let dest = |d: &Dest| {
            json!({
                "direction": if d.inbound { "inbound" } else { "outbound" },
                "proto": d.proto, "host": d.host, "port": d.port,
            })
        };
        json!({
            "run": self.run,
            "sandbox": self.sandbox,
            "exit_status": self.exit_status,
            "allowed": self.allowed.iter().map(|((d, rule), n)| {
                let mut v = dest(d);
                v["rule"] = json!(rule);
                v["count"] = json!(n);
                v
            }).collect::<Vec<_>>(),
            "denied": self.denied.iter().map(|(d, n)| {
                let mut v = dest(&d.dest);
                v["rule"] = json!(d.rule);
                v["reason"] = json!(d.reason);
                v["count"] = json!(n);
                v
            }).collect::<Vec<_>>(),
            "refused_lookups": self.names.iter().map(|((name, by, rule), n)| {
                json!({"name": name, "blocked_by": by, "rule": rule, "count": n})
            }).collect::<Vec<_>>(),
            "tls_denied": self.tls.iter().map(|((sni, reason), n)| {
                json!({"sni": sni, "reason": reason, "count": n})
            }).collect::<Vec<_>>(),
            "secrets": self.secrets.iter().map(|((name, host, what), n)| {
                json!({"name": name, "host": host, "secret": what, "count": n})
            }).collect::<Vec<_>>(),
            "lookups": self.lookups,
            "others": {
                "allowed": self.allowed.others, "denied": self.denied.others,
                "refused_lookups": self.names.others,
            },
            "suggestions": self.suggestions(),
            "log": {
                "truncated": self.log_truncated,
                "events_dropped": self.log_dropped,
                "events_lost": self.log_lost,
            },
        })
    }
}

/// A TOML basic string: quotes and backslashes escaped, control characters dropped (the
/// values come from the audit log's fields).
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn times(n: u64) -> String {
    if n > 1 {
        format!(" ×{n}")
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

    use super::*;

    fn ev(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn retries_fold_and_suggestions_follow_the_policy() {
        let mut s = Summary::new();
        for port in 40000..40011 {
            let fresh = s.add(&ev(
                json!({"run": "r1", "event": "connect", "decision": "deny",
                "rule": "default", "reason": "no rule matched; default deny", "proto": "tcp",
                "src": format!("10.0.2.100:{port}"), "dst": "10.0.2.2", "port": 1}),
            ));
            assert_eq!(matches!(fresh, Fresh::Denied(_)), port == 40000);
        }
        s.add(&ev(
            json!({"run": "r1", "event": "connect", "decision": "allow", "rule": 0,
            "reason": "r", "proto": "tcp", "dst": "203.0.113.10", "port": 443,
            "domain": "api.example.test,www.example.test"}),
        ));
        s.add(&ev(
            json!({"run": "r1", "event": "connect", "decision": "deny",
            "rule": "max_connections", "reason": "64 concurrent", "proto": "tcp",
            "dst": "203.0.113.11", "port": 80}),
        ));
        s.add(&ev(
            json!({"run": "r1", "event": "dns", "decision": "deny", "rule": "default",
            "reason": "no rule allows it", "name": "evil.example.test", "blocked_by": "policy"}),
        ));
        s.add(&ev(
            json!({"run": "r1", "event": "dns", "decision": "deny", "rule": "block_domain",
            "reason": "blocked", "name": "ads.example.test", "blocked_by": "block_domain"}),
        ));
        s.add(&ev(
            json!({"run": "r1", "event": "connect", "decision": "deny", "rule": 2,
            "reason": "rule 2", "proto": "udp", "dst": "2001:db8::1", "port": 53}),
        ));
        s.add(&ev(
            json!({"run": "r1", "event": "end", "decision": "allow", "exit_status": 7}),
        ));
        let r = &s.runs()[0];
        assert_eq!((r.allowed(), r.denied()), (1, 13));
        assert_eq!(
            r.suggestions(),
            [
                "--allow 127.0.0.1:1/tcp",
                "--allow [2001:db8::1]:53/udp",
                "--allow evil.example.test"
            ]
        );
        let text = r.render();
        assert!(text.contains("exit status 7"), "{text}");
        assert!(
            text.contains("10.0.2.2:1/tcp ×11: no rule matched; default deny"),
            "{text}"
        );
        // DNS answered the address for two names and the connection named neither.
        assert!(
            text.contains(
                "203.0.113.10:443/tcp (one of api.example.test, www.example.test) (rule 0)"
            ),
            "{text}"
        );
        assert!(
            text.contains("lookup of ads.example.test (block_domain)"),
            "{text}"
        );
        let j = r.to_json();
        assert_eq!(j["denied"][0]["count"], 11);
        assert_eq!(j["suggestions"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn the_gateway_is_suggested_as_the_hosts_loopback() {
        let mut s = Summary::new();
        s.add(&ev(
            json!({"run": "r", "event": "connect", "decision": "deny", "rule": "default",
            "reason": "x", "proto": "tcp", "dst": "10.0.2.2", "port": 5432}),
        ));
        assert_eq!(s.runs()[0].suggestions(), ["--allow 127.0.0.1:5432/tcp"]);
        assert!(s.runs()[0].render().contains("10.0.2.2:5432/tcp"));
    }

    #[test]
    fn a_learned_policy_allows_what_was_used_and_nothing_else() {
        let mut s = Summary::new();
        let allow = |s: &mut Summary, dst: &str, port: u64, proto: &str, domain: Option<&str>| {
            let mut e = json!({"run": "r", "event": "connect", "decision": "allow", "rule": "default",
                "reason": "x", "proto": proto, "dst": dst, "port": port});
            if let Some(d) = domain {
                e["domain"] = json!(d);
            }
            s.add(&ev(e));
        };
        allow(
            &mut s,
            "203.0.113.10",
            443,
            "tcp",
            Some("api.example.test,www.example.test"),
        );
        allow(
            &mut s,
            "203.0.113.10",
            443,
            "tcp",
            Some("api.example.test,www.example.test"),
        );
        allow(
            &mut s,
            "203.0.113.10",
            444,
            "tcp",
            Some("api.example.test,www.example.test"),
        );
        allow(&mut s, "198.51.100.7", 53, "udp", None);
        allow(&mut s, "198.51.100.7", 0, "icmpv4", None);
        allow(&mut s, "10.0.2.2", 5432, "tcp", None);
        s.add(&ev(
            json!({"run": "r", "event": "connect", "decision": "deny", "rule": "default",
            "reason": "x", "proto": "tcp", "dst": "198.51.100.9", "port": 80}),
        ));
        let text = s.runs()[0].learned_policy("learned");
        let policy = moat_policy::NetworkPolicy::from_text(
            std::path::Path::new("learned.toml"),
            &text,
            moat_policy::PolicyFormat::Toml,
        )
        .unwrap();
        assert_eq!(policy.rules.len(), 5, "{text}");
        assert!(
            text.contains(
                "destination = \"api.example.test\"\nprotocol = \"tcp\"\nports = \"443-444\""
            ),
            "{text}"
        );
        assert!(text.contains("destination = \"127.0.0.1\""), "{text}");
        assert!(
            text.contains("# used by: api.example.test:443/tcp ×2, api.example.test:444/tcp"),
            "{text}"
        );
        assert!(!text.contains("198.51.100.9"), "{text}");
        // The plain connections named neither of the address's names: a rule for each, and
        // the comment says why.
        assert!(
            text.contains("# one of api.example.test, www.example.test: DNS answered"),
            "{text}"
        );
    }

    #[test]
    fn a_server_name_dns_did_not_answer_for_the_address_is_learned_as_the_address() {
        // The program sent `exfil.example.test` to an address DNS answered only for
        // api.example.test (the engine's `domain` is then what DNS answered). A rule for
        // the claimed name would grant wherever DNS points it later: the address is learned.
        let mut s = Summary::new();
        s.add(&ev(
            json!({"run": "r", "event": "connect", "decision": "allow", "rule": "default",
            "reason": "x", "proto": "tcp", "dst": "203.0.113.10", "port": 443,
            "domain": "api.example.test", "sni": "exfil.example.test"}),
        ));
        // Sent where DNS answered it: learned by name.
        s.add(&ev(
            json!({"run": "r", "event": "connect", "decision": "allow", "rule": "default",
            "reason": "x", "proto": "tcp", "dst": "203.0.113.11", "port": 443,
            "domain": "files.example.test", "sni": "files.example.test"}),
        ));
        let run = &s.runs()[0];
        let text = run.learned_policy("learned");
        assert!(text.contains("destination = \"203.0.113.10\""), "{text}");
        assert!(
            text.contains("destination = \"files.example.test\""),
            "{text}"
        );
        assert!(!text.contains("destination = \"exfil"), "{text}");
        assert!(!text.contains("destination = \"api"), "{text}");
        assert!(
            text.contains("# used by: exfil.example.test:443/tcp at 203.0.113.10"),
            "{text}"
        );
        assert!(
            run.render()
                .contains("allowed  exfil.example.test:443/tcp at 203.0.113.10 (rule default)"),
            "{}",
            run.render()
        );
    }

    #[test]
    fn the_report_says_a_capped_log_denied_server_names_and_secrets() {
        let mut s = Summary::new();
        let head = |event: &str, decision: &str| json!({"run": "r", "event": event, "decision": decision, "rule": "-", "reason": "why"});
        // One connection, so the report has a body.
        s.add(&ev(
            json!({"run": "r", "event": "connect", "decision": "allow", "rule": "default",
            "reason": "x", "proto": "tcp", "dst": "203.0.113.10", "port": 443}),
        ));
        let mut tls = head("tls", "deny");
        tls["sni"] = json!("pinned.example.test");
        s.add(&ev(tls));
        // An allowed TLS event is not a denial.
        let mut fine = head("tls", "allow");
        fine["sni"] = json!("fine.example.test");
        s.add(&ev(fine));
        let mut secret = head("secret", "deny");
        secret["name"] = json!("API_KEY");
        secret["host"] = json!("other.example.test");
        secret["secret"] = json!("violation");
        s.add(&ev(secret));
        let run = &s.runs()[0];
        let text = run.render();
        assert!(text.contains("pinned.example.test: why"), "{text}");
        assert!(!text.contains("fine.example.test"), "{text}");
        assert!(
            text.contains("API_KEY → other.example.test: violation"),
            "{text}"
        );
        assert!(!text.contains("reached --audit-max-size"), "{text}");
        // A truncated event: the report says the log was capped.
        s.add(&ev(head("truncated", "allow")));
        let text = s.runs()[0].render();
        assert!(text.contains("reached --audit-max-size"), "{text}");
    }

    #[test]
    fn an_end_that_counts_dropped_events_says_the_log_was_capped() {
        for (dropped, capped) in [(0, false), (1, true)] {
            let mut s = Summary::new();
            s.add(&ev(
                json!({"run": "r", "event": "connect", "decision": "allow", "rule": "default",
                "reason": "x", "proto": "tcp", "dst": "203.0.113.10", "port": 443}),
            ));
            s.add(&ev(
                json!({"run": "r", "event": "end", "decision": "allow", "exit_status": 0,
                "events_dropped": dropped}),
            ));
            let text = s.runs()[0].render();
            assert_eq!(text.contains("reached --audit-max-size"), capped, "{text}");
        }
    }

    #[test]
    fn a_denied_connection_is_shown_with_the_flag_that_would_allow_it() {
        let fields = [
            ("proto", json!("tcp")),
            ("dst", json!("203.0.113.10")),
            ("port", json!(443)),
            ("domain", json!("api.example.test")),
        ];
        let flag = || Some("--allow api.example.test:443/tcp".to_owned());
        // Two `--deny` flags come first (rules 0 and 1): a denial by one of them is not
        // undone by an `--allow`; the policy's own rules and its default are.
        for (rule, want) in [("0", None), ("1", None), ("2", flag()), ("default", flag())] {
            assert_eq!(
                denied_connect(rule, &fields, 2),
                ("api.example.test:443/tcp".to_owned(), want),
                "{rule}"
            );
        }
        // A built-in refusal suggests nothing.
        assert_eq!(denied_connect("max_connections", &fields, 0).1, None);
    }

    #[test]
    fn a_refused_lookup_suggests_its_name_only_when_the_policy_refused_it() {
        let flag = || Some("--allow evil.example.test".to_owned());
        for (blocked_by, rule, want) in [
            ("policy", "0", None),
            ("policy", "1", None),
            ("policy", "2", flag()),
            ("policy", "default", flag()),
            ("block_domain", "default", None),
        ] {
            assert_eq!(
                denied_lookup("evil.example.test", blocked_by, rule, 2),
                want,
                "{blocked_by} {rule}"
            );
        }
    }

    #[test]
    fn lookups_are_counted_allowed_and_refused() {
        let mut s = Summary::new();
        for (decision, name) in [
            ("allow", "a.example.test"),
            ("deny", "b.example.test"),
            ("allow", "a.example.test"),
        ] {
            s.add(&ev(
                json!({"run": "r", "event": "dns", "decision": decision, "rule": "default",
                "reason": "x", "name": name, "blocked_by": "policy"}),
            ));
        }
        assert_eq!(s.runs()[0].lookups(), 3);
    }

    #[test]
    fn a_run_with_only_lookups_had_traffic_and_lost_events_are_said() {
        let mut s = Summary::new();
        s.add(&ev(
            json!({"run": "r", "event": "end", "decision": "allow", "exit_status": 0}),
        ));
        let text = s.runs()[0].render();
        assert!(text.contains("no network traffic"), "{text}");
        assert!(!text.contains("lost"), "{text}");
        let mut s = Summary::new();
        s.add(&ev(
            json!({"run": "r", "event": "dns", "decision": "allow", "rule": "default",
            "reason": "x", "name": "a.example.test"}),
        ));
        s.add(&ev(
            json!({"run": "r", "event": "end", "decision": "allow", "exit_status": 0,
            "events_lost": 2}),
        ));
        let text = s.runs()[0].render();
        assert!(!text.contains("no network traffic"), "{text}");
        assert!(text.contains("1 lookups (0 refused)"), "{text}");
        assert!(text.contains("2 events lost (a write failed)"), "{text}");
    }

    #[test]
    fn a_small_run_says_no_more_than_it_has() {
        let mut s = Summary::new();
        s.add(&ev(
            json!({"run": "r", "event": "connect", "decision": "allow", "rule": "default",
            "reason": "x", "proto": "tcp", "dst": "203.0.113.10", "port": 443,
            "domain": "api.example.test"}),
        ));
        let run = &s.runs()[0];
        let text = run.render();
        assert!(!text.contains("... and"), "{text}");
        assert!(!text.contains("to allow what was denied"), "{text}");
        let learned = run.learned_policy("learned");
        assert!(learned.contains("api.example.test"), "{learned}");
        assert!(!learned.contains("one of"), "{learned}");
        assert!(!learned.contains("not grouped"), "{learned}");
    }

    #[test]
    fn a_learned_string_cannot_break_out_of_its_line() {
        assert_eq!(toml_string("a\nb\u{7}\"c\\"), "\"ab\\\"c\\\\\"");
        // A log read back may carry anything in its fields.
        let mut s = Summary::new();
        s.add(&ev(
            json!({"run": "r", "event": "connect", "decision": "allow", "rule": "default",
            "reason": "x", "proto": "tcp\ndefault_action = \"allow\"", "dst": "203.0.113.10"}),
        ));
        let learned = s.runs()[0].learned_policy("learned");
        let defaults = learned.lines().filter(|l| l.starts_with("default_action"));
        assert_eq!(defaults.count(), 1, "{learned}");
    }

    #[test]
    fn one_denial_is_one_destination() {
        let mut s = Summary::new();
        s.add(&ev(
            json!({"run": "r", "event": "connect", "decision": "deny", "rule": "default",
            "reason": "x", "proto": "tcp", "dst": "203.0.113.10", "port": 80}),
        ));
        let text = s.runs()[0].render();
        assert!(
            text.contains("1 attempt denied to 1 destination,"),
            "{text}"
        );
    }

    #[test]
    fn a_connection_is_named_by_its_server_name_before_its_address_names() {
        let mut s = Summary::new();
        // An address DNS answered for two names (and a third only looked up); the
        // connection's TLS server name says which it used.
        s.add(&ev(
            json!({"run": "r", "event": "connect", "decision": "allow", "rule": "default",
            "reason": "x", "proto": "tcp", "dst": "203.0.113.10", "port": 443,
            "domain": "files.example.test,index.example.test", "sni": "files.example.test"}),
        ));
        // Denials by server name (`domain` is what DNS answered, `sni` what was sent). One
        // DNS answered the address for: an --allow names it (not the address's other,
        // already allowed name).
        s.add(&ev(
            json!({"run": "r", "event": "connect", "decision": "deny", "rule": "default",
            "reason": "x", "proto": "tcp", "dst": "203.0.113.10", "port": 443,
            "domain": "index.example.test,other.example.test", "sni": "other.example.test"}),
        ));
        // One DNS did not answer it for: a rule for the name cannot allow it there, so
        // the hint is the address.
        s.add(&ev(
            json!({"run": "r", "event": "connect", "decision": "deny", "rule": "default",
            "reason": "x", "proto": "tcp", "dst": "203.0.113.12", "port": 443,
            "domain": "index.example.test", "sni": "elsewhere.example.test"}),
        ));
        // A request refused inside a hello that named no server: shown by its address.
        s.add(&ev(
            json!({"run": "r", "event": "tls", "decision": "deny", "rule": "default",
            "reason": "fronting", "proto": "tcp", "dst": "203.0.113.10", "port": 8443,
            "sni": "", "tls": "intercepted"}),
        ));
        let run = &s.runs()[0];
        assert!(
            run.render()
                .contains("tls      203.0.113.10:8443/tcp: fronting"),
            "{}",
            run.render()
        );
        let text = run.learned_policy("learned");
        assert!(
            text.contains("destination = \"files.example.test\""),
            "{text}"
        );
        assert!(!text.contains("index.example.test"), "{text}");
        assert_eq!(
            run.suggestions(),
            [
                "--allow other.example.test:443/tcp",
                "--allow 203.0.113.12:443/tcp"
            ]
        );
        assert!(
            run.render().contains("files.example.test:443/tcp"),
            "{}",
            run.render()
        );
    }

    #[test]
    fn runs_are_kept_apart_and_groups_bounded() {
        let mut s = Summary::new();
        for i in 0..(MAX_GROUPS + 10) {
            s.add(&ev(json!({"run": "a", "event": "connect", "decision": "deny", "rule": "default",
                "reason": "x", "proto": "tcp", "dst": format!("198.51.100.{}", i % 250), "port": i})));
        }
        s.add(&ev(
            json!({"run": "b", "event": "connect", "decision": "allow", "rule": "default",
            "reason": "x", "proto": "tcp", "dst": "198.51.100.1", "port": 1}),
        ));
        assert_eq!(s.runs().len(), 2);
        assert_eq!(s.runs()[0].denied(), (MAX_GROUPS + 10) as u64);
        let text = s.runs()[0].render();
        assert!(text.contains("more"), "{text}");
        // The groups kept and one for the others.
        let groups = format!("to {} destinations", MAX_GROUPS + 1);
        assert!(text.lines().next().unwrap().contains(&groups), "{text}");
        let more = format!("... and {} more", MAX_GROUPS - SHOWN + 10);
        assert!(text.contains(&more), "{text}");
        assert_eq!(s.runs()[1].allowed(), 1);
    }

    /// A learned policy read back and asked: the decision for one flow.
    fn decide(text: &str, flow: &moat_policy::Flow) -> moat_policy::Action {
        let policy = moat_policy::NetworkPolicy::from_text(
            std::path::Path::new("learned.toml"),
            text,
            moat_policy::PolicyFormat::Toml,
        )
        .unwrap();
        policy.compile().unwrap().decide(flow).action
    }

    #[test]
    fn a_peer_through_a_published_port_is_learned_as_inbound_only() {
        let mut s = Summary::new();
        s.add(&ev(
            json!({"run": "r", "event": "connect", "decision": "allow", "rule": 0,
            "reason": "x", "direction": "inbound", "proto": "tcp",
            "src": "198.51.100.20:51000", "dst": "10.0.2.100", "port": 8080}),
        ));
        let text = s.runs()[0].learned_policy("learned");
        assert!(text.contains("direction = \"inbound\""), "{text}");
        let peer: std::net::IpAddr = "198.51.100.20".parse().unwrap();
        use moat_policy::{Action, Flow, Protocol};
        // The peer may connect in to the published port again...
        assert_eq!(
            decide(&text, &Flow::inbound(Protocol::Tcp, peer, 8080)),
            Action::Allow,
            "{text}"
        );
        // ...and the sandbox may not connect out to it: nothing outbound was used.
        assert_eq!(
            decide(&text, &Flow::outbound(Protocol::Tcp, (peer, 8080).into())),
            Action::Deny,
            "{text}"
        );
    }

    #[test]
    fn ports_apart_are_learned_apart() {
        let mut s = Summary::new();
        for port in [80, 443] {
            s.add(&ev(
                json!({"run": "r", "event": "connect", "decision": "allow", "rule": "default",
                "reason": "x", "proto": "tcp", "dst": "203.0.113.10", "port": port}),
            ));
        }
        let text = s.runs()[0].learned_policy("learned");
        assert!(text.contains("ports = \"80\""), "{text}");
        assert!(text.contains("ports = \"443\""), "{text}");
        assert!(!text.contains("80-443"), "{text}");
        use moat_policy::{Action, Flow, Protocol};
        let addr: std::net::IpAddr = "203.0.113.10".parse().unwrap();
        for (port, action) in [
            (80, Action::Allow),
            (443, Action::Allow),
            (81, Action::Deny),
            (442, Action::Deny),
        ] {
            assert_eq!(
                decide(&text, &Flow::outbound(Protocol::Tcp, (addr, port).into())),
                action,
                "port {port}: {text}"
            );
        }
    }

    #[test]
    fn the_summary_and_the_learned_policy_stay_flat_under_a_million_names() {
        let mut s = Summary::new();
        let head = |decision| Head {
            run: "r",
            sandbox: "s",
            event: "dns",
            decision,
            rule: "default",
            reason: "x",
        };
        let connect = Head {
            event: "connect",
            decision: "allow",
            ..head("allow")
        };
        for i in 0..1_000_000u32 {
            let name = format!("n{i}.flood.test");
            s.add_parts(
                &head("deny"),
                [
                    ("name", Value::from(name.as_str())),
                    ("blocked_by", Value::from("policy")),
                ]
                .as_slice(),
            );
            if i % 4 == 0 {
                s.add_parts(
                    &connect,
                    [
                        ("proto", Value::from("tcp")),
                        (
                            "dst",
                            Value::from(format!("198.18.{}.{}", (i >> 8) & 255, i & 255)),
                        ),
                        ("port", Value::from(443)),
                        ("domain", Value::from(name.as_str())),
                    ]
                    .as_slice(),
                );
            }
        }
        let r = &s.runs()[0];
        // Every event counted, a bounded number of groups kept.
        assert_eq!(r.names.total(), 1_000_000);
        assert_eq!(r.names.counts.len(), MAX_GROUPS);
        assert_eq!(r.names.order.len(), MAX_GROUPS);
        assert_eq!(r.allowed(), 250_000);
        assert_eq!(r.allowed.counts.len(), MAX_GROUPS);
        assert_eq!(r.suggestions().len(), MAX_GROUPS);
        let text = r.learned_policy("learned");
        assert_eq!(text.matches("[[rules]]").count(), MAX_GROUPS);
        assert!(
            text.contains("more flows were not grouped"),
            "the rest is said"
        );
        assert!(text.len() < 2 << 20, "{}", text.len());
    }

    /// The IPv6 gateway is judged as the host's `::1`, so that is what `--allow` and a
    /// learned policy name; an ICMP flow's suggestion carries no port.
    #[test]
    fn the_ipv6_gateway_is_the_hosts_loopback_and_icmp_has_no_port() {
        let mut s = Summary::new();
        for (dst, proto, port) in [
            ("fd00:6d6f:6174::2", "tcp", 5432),
            ("198.51.100.7", "icmpv4", 0),
        ] {
            s.add(&ev(
                json!({"run": "r", "event": "connect", "decision": "deny",
                "rule": "default", "reason": "x", "proto": proto, "dst": dst, "port": port}),
            ));
        }
        assert_eq!(
            s.runs()[0].suggestions(),
            ["--allow [::1]:5432/tcp", "--allow 198.51.100.7/icmp"]
        );
        let mut s = Summary::new();
        s.add(&ev(
            json!({"run": "r", "event": "connect", "decision": "allow",
            "rule": "default", "reason": "x", "proto": "tcp", "dst": "fd00:6d6f:6174::2",
            "port": 5432}),
        ));
        let text = s.runs()[0].learned_policy("learned");
        assert!(text.contains("destination = \"::1\""), "{text}");
    }

    /// An inbound peer is learned without its port, bracketed or not, and a peer given
    /// without one keeps its whole address.
    #[test]
    fn an_inbound_peer_is_learned_without_its_port() {
        let mut s = Summary::new();
        for src in ["[2001:db8::a]:51000", "2001:db8::b"] {
            s.add(&ev(
                json!({"run": "r", "event": "connect", "decision": "allow", "rule": 0,
                "reason": "x", "direction": "inbound", "proto": "tcp", "src": src,
                "dst": "10.0.2.100", "port": 8080}),
            ));
        }
        let text = s.runs()[0].learned_policy("learned");
        use moat_policy::{Action, Flow, Protocol};
        for peer in ["2001:db8::a", "2001:db8::b"] {
            let peer: std::net::IpAddr = peer.parse().unwrap();
            assert_eq!(
                decide(&text, &Flow::inbound(Protocol::Tcp, peer, 8080)),
                Action::Allow,
                "{peer}: {text}"
            );
        }
    }

    /// A built-in that refused a flow names itself in `by` (no `rule`): the summary keeps
    /// its name (and the run its sandbox) and suggests no `--allow` for it.
    #[test]
    fn a_built_in_refusal_is_named_by_its_by_field() {
        let mut s = Summary::new();
        s.add(&ev(
            json!({"run": "r", "sandbox": "sb1", "event": "connect", "decision": "deny",
            "by": "max_connections", "reason": "64 concurrent", "proto": "tcp",
            "dst": "203.0.113.11", "port": 80}),
        ));
        let r = &s.runs()[0];
        assert_eq!(r.to_json()["sandbox"], "sb1");
        assert_eq!(r.to_json()["denied"][0]["rule"], "max_connections");
        assert!(r.suggestions().is_empty());
    }
}
