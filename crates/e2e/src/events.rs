//! Reading what moat wrote: audit events (checked against shared/API.md §5's schema,
//! counted with their folded repeats) and a policy file's rules.

/// How many events an audit log line stands for: repeats within a second are folded into
/// one line with `count`.
pub fn times(e: &serde_json::Value) -> u64 {
    e["count"].as_u64().unwrap_or(1)
}

/// Checks one audit event against the schema of shared/API.md §5: the common fields, then
/// each event type's own, each with its one type; no field beyond them. Returns what is
/// wrong.
pub fn validate_event(e: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    let obj = e.as_object().ok_or("not an object")?;
    let s = |v: &Value| v.is_string();
    let u = |v: &Value| v.is_u64();
    let b = |v: &Value| v.is_boolean();
    let strs = |v: &Value| v.as_array().is_some_and(|a| a.iter().all(Value::is_string));
    let one_of = |allowed: &'static [&'static str]| {
        move |v: &Value| v.as_str().is_some_and(|x| allowed.contains(&x))
    };
    let hex16 = |v: &Value| {
        v.as_str()
            .is_some_and(|x| x.len() == 16 && x.bytes().all(|c| c.is_ascii_hexdigit()))
    };
    let ts = |v: &Value| {
        v.as_str().is_some_and(|x| {
            x.len() == 27 && x.ends_with('Z') && x.as_bytes()[10] == b'T' && x.as_bytes()[4] == b'-'
        })
    };
    let rule = |v: &Value| v.is_u64() || v == "default";
    type Check<'a> = (&'a str, bool, Box<dyn Fn(&Value) -> bool + 'a>);
    let mut fields: Vec<Check> = vec![
        ("ts", true, Box::new(ts)),
        ("sandbox", true, Box::new(s)),
        ("run", true, Box::new(hex16)),
        ("event", true, Box::new(s)),
        ("decision", true, Box::new(one_of(&["allow", "deny"]))),
        ("reason", true, Box::new(s)),
        ("rule", false, Box::new(rule)),
        ("by", false, Box::new(s)),
    ];
    let flow = |fields: &mut Vec<Check>| {
        fields.push((
            "direction",
            true,
            Box::new(one_of(&["outbound", "inbound"])),
        ));
        fields.push((
            "proto",
            true,
            Box::new(one_of(&["tcp", "udp", "icmpv4", "icmpv6"])),
        ));
        fields.push(("src", true, Box::new(s)));
        fields.push(("dst", true, Box::new(s)));
        fields.push(("port", true, Box::new(u)));
    };
    let event = obj.get("event").and_then(Value::as_str).unwrap_or("");
    let decided = match event {
        "start" => {
            fields.push(("version", true, Box::new(s)));
            fields.push(("network", true, Box::new(one_of(&["moat", "none"]))));
            false
        }
        "end" => {
            fields.push(("exit_status", false, Box::new(|v: &Value| v.is_i64())));
            for k in ["allowed", "denied", "over_limit", "dns_queries"] {
                fields.push((k, true, Box::new(u)));
            }
            // What the log itself could not hold (absent from logs written before them).
            for k in ["events_folded", "events_dropped", "events_lost"] {
                fields.push((k, false, Box::new(u)));
            }
            false
        }
        "truncated" => {
            fields.push(("max_size", true, Box::new(u)));
            false
        }
        "connect" => {
            flow(&mut fields);
            fields.push(("domain", false, Box::new(s)));
            fields.push(("sni", false, Box::new(s)));
            true
        }
        "close" => {
            flow(&mut fields);
            for k in ["bytes_up", "bytes_down", "duration_ms"] {
                fields.push((k, true, Box::new(u)));
            }
            true
        }
        "dns" => {
            fields.push(("name", true, Box::new(s)));
            fields.push(("qtype", true, Box::new(s)));
            fields.push(("answers", true, Box::new(strs)));
            fields.push(("blocked_by", false, Box::new(s)));
            true
        }
        "tls" => {
            flow(&mut fields);
            fields.push(("sni", true, Box::new(s)));
            fields.push(("tls", true, Box::new(one_of(&["intercepted", "bypassed"]))));
            fields.push(("upstream_verified", false, Box::new(b)));
            fields.push(("alpn", false, Box::new(s)));
            true
        }
        "secret" => {
            flow(&mut fields);
            fields.push(("name", true, Box::new(s)));
            fields.push(("host", true, Box::new(s)));
            fields.push((
                "secret",
                true,
                Box::new(one_of(&["substituted", "redacted", "violation"])),
            ));
            fields.push(("action", true, Box::new(s)));
            true
        }
        other => return Err(format!("unknown event type {other:?}")),
    };
    if decided {
        // Repeats folded into this line (at least one: the line itself stands for one).
        fields.push((
            "count",
            false,
            Box::new(|v: &Value| v.as_u64().is_some_and(|n| n >= 1)),
        ));
    }
    for (name, required, check) in &fields {
        match obj.get(*name) {
            Some(v) if !check(v) => return Err(format!("{event}: field {name} = {v}")),
            None if *required => return Err(format!("{event}: no field {name}")),
            _ => {}
        }
    }
    for key in obj.keys() {
        if !fields.iter().any(|(n, _, _)| n == key) {
            return Err(format!("{event}: unknown field {key}"));
        }
    }
    // What decided: a rule of the policy, or a built-in; start and end, neither.
    let deciders = usize::from(obj.contains_key("rule")) + usize::from(obj.contains_key("by"));
    if decided && deciders != 1 {
        return Err(format!("{event}: {deciders} of rule/by"));
    }
    if !decided && deciders != 0 {
        return Err(format!("{event}: rule/by on a {event} event"));
    }
    Ok(())
}

/// A policy file's rules: its lines that are not comments (a learned file's header quotes
/// the command, which may name anything).
pub fn rules_of(policy: &str) -> String {
    policy
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}
