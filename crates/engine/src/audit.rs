//! The audit log: one JSON object per line for every decision (shared/API.md §5).
//!
//! Common fields: `ts` (RFC 3339, UTC, microseconds), `sandbox`, `run` (an id per run),
//! `event`, `decision`, `reason`, and what decided: `rule` (the policy's: an index, or
//! `"default"`) or `by` (a built-in, when no rule did: `block_domain`, `max_connections`,
//! `rebind`, ...). Callers name either in one argument; this module files it.
//! Secrets' values never reach this module.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::summary::{Fresh, Head, Summary};

/// Where audit events go. Clones share one log: the engine writes the flows' events, the
/// one running the sandbox its `start` and `end`.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Mutex<Sink>>,
}

struct Sink {
    sandbox: String,
    /// A unique id of this run, in every event, so runs appended to one file can be told
    /// apart.
    run: String,
    out: Option<Box<dyn Write + Send>>,
    /// Events that could not be written (the sink failed).
    write_errors: u64,
    /// The run's summary, when asked for ([`AuditLog::summarize`]).
    summary: Option<Summary>,
    /// Where a line goes the first time a destination or a name is denied (a terminal).
    live: Option<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sink = self.sink();
        f.debug_struct("AuditLog")
            .field("sandbox", &sink.sandbox)
            .field("run", &sink.run)
            .field("enabled", &sink.out.is_some())
            .finish()
    }
}

impl AuditLog {
    /// A log for sandbox `sandbox` writing to `out` (`None` = discard), with a new run id.
    pub fn new(sandbox: &str, out: Option<Box<dyn Write + Send>>) -> AuditLog {
        AuditLog {
            inner: Arc::new(Mutex::new(Sink {
                sandbox: sandbox.to_owned(),
                run: new_run_id(),
                out,
                write_errors: 0,
                summary: None,
                live: None,
            })),
        }
    }

    /// From now on every event is also counted into the run's [`Summary`] (whether or not
    /// it is written anywhere); with `live`, the first denial of each destination or name
    /// is also a line there as it happens.
    pub fn summarize(&self, live: Option<Box<dyn Write + Send>>) {
        let mut sink = self.sink();
        sink.summary = Some(Summary::new());
        sink.live = live;
    }

    /// The summary so far ([`AuditLog::summarize`]).
    pub fn summary(&self) -> Option<Summary> {
        self.sink().summary.clone()
    }

    fn sink(&self) -> std::sync::MutexGuard<'_, Sink> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This run's id.
    pub fn run_id(&self) -> String {
        self.sink().run.clone()
    }

    /// Events that could not be written.
    pub fn write_errors(&self) -> u64 {
        self.sink().write_errors
    }

    /// Writes one event. `fields` are added after the common ones.
    pub fn event(
        &self,
        event: &str,
        decision: &str,
        rule: &str,
        reason: &str,
        fields: Vec<(&str, Value)>,
    ) {
        let mut sink = self.sink();
        if sink.out.is_none() && sink.summary.is_none() {
            return;
        }
        // The summary reads the parts as they are: no JSON object is built for it.
        let sink = &mut *sink;
        if let Some(summary) = sink.summary.as_mut() {
            let head = Head {
                run: &sink.run,
                sandbox: &sink.sandbox,
                event,
                decision,
                rule,
                reason,
            };
            if let Fresh::Denied(what) = summary.add_parts(&head, fields.as_slice())
                && let Some(live) = sink.live.as_mut()
            {
                let _ = writeln!(live, "moat: {what}");
                let _ = live.flush();
            }
        }
        if sink.out.is_none() {
            return;
        }
        let mut map = Map::new();
        map.insert("ts".into(), Value::String(rfc3339(SystemTime::now())));
        map.insert("sandbox".into(), Value::String(sink.sandbox.clone()));
        map.insert("run".into(), Value::String(sink.run.clone()));
        map.insert("event".into(), Value::String(event.into()));
        map.insert("decision".into(), Value::String(decision.into()));
        match rule.parse::<u64>() {
            Ok(i) => {
                map.insert("rule".into(), Value::from(i));
            }
            Err(_) if rule == "default" => {
                map.insert("rule".into(), Value::String(rule.into()));
            }
            // start / end: nothing decided them.
            Err(_) if rule.is_empty() || rule == "-" => {}
            Err(_) => {
                map.insert("by".into(), Value::String(rule.into()));
            }
        }
        map.insert("reason".into(), Value::String(reason.into()));
        for (k, v) in fields {
            map.insert(k.into(), v);
        }
        let mut line = Value::Object(map).to_string();
        line.push('\n');
        let failed = match sink.out.as_mut() {
            Some(out) => out
                .write_all(line.as_bytes())
                .and_then(|()| out.flush())
                .is_err(),
            None => false,
        };
        if failed {
            sink.write_errors += 1;
        }
    }
}

/// 64 random bits in hexadecimal.
fn new_run_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One-line notices for the person running moat, as things happen (the CLI sends them to
/// stderr; the Rust API to nowhere: programs read the audit log). Only what needs action
/// is noticed: a TLS connection moat could not set up, a request it refused.
#[derive(Default)]
pub struct Notices {
    out: Option<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notices")
            .field("enabled", &self.out.is_some())
            .finish()
    }
}

impl Notices {
    /// Notices written to `out`, one line each, prefixed `moat: `.
    pub fn to(out: Box<dyn Write + Send>) -> Notices {
        Notices { out: Some(out) }
    }

    /// Writes one notice (a failing sink is ignored: notices are a courtesy).
    pub fn line(&mut self, text: &str) {
        if let Some(out) = self.out.as_mut() {
            let _ = writeln!(out, "moat: {text}");
            let _ = out.flush();
        }
    }
}

/// `2026-11-28T01:02:03.456789Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_795_827_723_456_789);
        assert_eq!(rfc3339(t), "2026-11-28T01:02:03.456789Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert!(rfc3339(leap).starts_with("2000-02-29T00:00:00"));
    }

    #[derive(Clone)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn events_are_json_lines() {
        let buf = Shared(Arc::new(Mutex::new(Vec::new())));
        let log = AuditLog::new("agent", Some(Box::new(buf.clone())));
        log.event(
            "connect",
            "deny",
            "1",
            "rule 1: deny outbound group:private",
            vec![("port", Value::from(80))],
        );
        log.event(
            "connect",
            "allow",
            "default",
            "no rule matched; default allow",
            vec![],
        );
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["rule"], 1);
        assert_eq!(lines[0]["sandbox"], "agent");
        assert_eq!(lines[0]["port"], 80);
        assert_eq!(lines[1]["rule"], "default");
        // Every event names the run, and a new log is a new run.
        assert_eq!(lines[0]["run"], lines[1]["run"]);
        assert_eq!(lines[0]["run"].as_str().unwrap().len(), 16);
        assert_ne!(log.run_id(), AuditLog::new("agent", None).run_id());
    }
}
