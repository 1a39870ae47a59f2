//! The audit log: one JSON object per line for every decision (shared/API.md §5).
//!
//! Common fields: `ts` (RFC 3339, UTC, microseconds), `sandbox`, `run` (an id per run),
//! `event`, `decision`, `reason`, and what decided: `rule` (the policy's: an index, or
//! `"default"`) or `by` (a built-in, when no rule did: `block_domain`, `max_connections`,
//! `rebind`, ...). Callers name either in one argument; this module files it.
//! Secrets' values never reach this module.
//!
//! # Theory of operation
//! Every event is first counted into the run's summary (when one is kept), whole and
//! unbounded in number but flat in memory (`summary.rs` keeps at most a few thousand groups
//! per kind). Then, for the log itself, three bounds hold whatever the sandbox sends:
//!
//! - **Repeats fold.** A denial, or an allowed lookup, that repeats one within
//!   [`FOLD_WINDOW`] — the same event, decision, rule, reason and destination (the source
//!   port aside) — is not written on its own: the first is written at once, the repeats
//!   are counted, and when the window has passed (seen at a later event, or at the end)
//!   one line stands for them with `count` and the last one's fields and time. Allowed
//!   connections and their `close` are records of a flow each and never fold. At most
//!   [`MAX_FOLDS`] destinations are watched at once; past that, events are written as
//!   they come (the cap below still holds).
//! - **The file has a cap** ([`AuditOptions::max_size`], `--audit-max-size`; the length the
//!   file had when opened counts). Room for the `end` event and for one `truncated` event
//!   is kept back: the first event that would eat into it is replaced by `truncated`, and
//!   every later one is only counted until `end`, which always fits and says how many
//!   events were folded, dropped at the cap, or lost.
//! - **A line is written whole or not at all**: built in memory, written in one call;
//!   after a failed or short write to a file the file is cut back to its last whole line
//!   (where even that fails, the next line starts on a line of its own). The first loss is
//!   said at once (on stderr for `moat run`); with [`AuditOptions::required`] it also asks
//!   the sandbox to stop (as auditd's `disk_full_action = halt`) and sets
//!   [`AuditLog::halted`], which the engine reads at the end of every turn: it stops
//!   there, so no flow goes on unrecorded while the sandbox is being stopped.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::summary::{Fresh, Head, Summary};

/// The default cap of an audit log file: 64 MiB (a quarter of a million events or so;
/// a run that makes more is either in trouble or under attack, and folding keeps repeats
/// out of it).
pub const DEFAULT_AUDIT_MAX_SIZE: u64 = 64 << 20;
/// The smallest cap accepted: room for `start`, a few events, `truncated` and `end`.
pub const MIN_AUDIT_MAX_SIZE: u64 = 16 << 10;
/// Repeats of one decision within this time are one line with a `count`.
pub const FOLD_WINDOW: Duration = Duration::from_secs(1);
/// Destinations whose repeats are watched at once (a flood of distinct ones is bounded by
/// the cap instead).
pub const MAX_FOLDS: usize = 4096;
/// Room kept back for the `end` event (its longest form is well under half of this: a
/// 63-character sandbox name and twenty-digit counts).
const END_RESERVE: u64 = 1024;
/// Room kept back for the `truncated` event.
const TRUNCATED_RESERVE: u64 = 512;
/// How often expired fold windows are looked for (at an event; never on a timer).
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// How an audit log is bounded and what its failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    /// The most the log may hold, in bytes (file length included when it was opened).
    pub max_size: u64,
    /// A write that fails stops the sandbox instead of losing the event.
    pub required: bool,
}

impl Default for AuditOptions {
    fn default() -> AuditOptions {
        AuditOptions {
            max_size: DEFAULT_AUDIT_MAX_SIZE,
            required: false,
        }
    }
}

/// Where the log's lines go.
pub enum AuditOut {
    /// A file opened for appending (and reading: how it ends is looked at): a failed
    /// write is cut back to the last whole line.
    File(File),
    /// Any other writer (stderr, a pipe, a test's buffer).
    Stream(Box<dyn Write + Send>),
}

/// What the log could not write, for the summary and the `end` event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuditStats {
    /// Events counted into another line's `count` instead of a line of their own.
    pub folded: u64,
    /// Events not written because the cap was reached.
    pub dropped: u64,
    /// Events lost to a failed write.
    pub lost: u64,
    /// The cap was reached (a `truncated` event was written, or due).
    pub truncated: bool,
}

/// Where audit events go. Clones share one log: the engine writes the flows' events, the
/// one running the sandbox its `start` and `end`.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Mutex<Sink>>,
    /// Set once a write failed under [`AuditOptions::required`]; read without the lock by
    /// the engine at the end of every turn (it stops at once: nothing more passes
    /// unrecorded).
    halted: Arc<AtomicBool>,
}

/// One destination's repeats in the current window.
struct Fold {
    /// When the window opened (its first event was written then).
    opened: Instant,
    /// Repeats since, not yet written.
    pending: u64,
    /// The last repeat: its line (without `ts`) and time.
    last: Option<(Map<String, Value>, SystemTime)>,
}

struct Sink {
    sandbox: String,
    /// A unique id of this run, in every event, so runs appended to one file can be told
    /// apart.
    run: String,
    out: Option<AuditOut>,
    options: AuditOptions,
    /// Bytes the log holds: the file's length when opened, plus every whole line since.
    size: u64,
    stats: AuditStats,
    /// A file write failed and the partial line could not be cut away: the next line
    /// starts with a newline so that it stays a line of its own.
    torn: bool,
    /// The first write error, said once.
    loss: Option<String>,
    /// Where the first loss is said at once (`moat run`: stderr).
    loss_notice: Option<Box<dyn Write + Send>>,
    /// Asked to stop the sandbox on a loss under [`AuditOptions::required`].
    terminate: Option<Terminate>,
    /// [`AuditLog::halted`]'s flag.
    halted: Arc<AtomicBool>,
    folds: HashMap<String, Fold>,
    next_sweep: Option<Instant>,
    /// The run's summary, when asked for ([`AuditLog::summarize`]).
    summary: Option<Summary>,
    /// Where a line goes the first time a destination or a name is denied (a terminal).
    live: Option<Box<dyn Write + Send>>,
}

/// What a line is, for the cap.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Any event but these two: must leave the reserves free.
    Event,
    /// The one `truncated` event: may use its own reserve.
    Truncated,
    /// The `end` event: may use everything.
    End,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sink = self.sink();
        f.debug_struct("AuditLog")
            .field("sandbox", &sink.sandbox)
            .field("run", &sink.run)
            .field("enabled", &sink.out.is_some())
            .field("options", &sink.options)
            .finish()
    }
}

impl AuditLog {
    /// A log for sandbox `sandbox` writing to `out` (`None` = discard), with a new run id
    /// and the default bounds.
    pub fn new(sandbox: &str, out: Option<Box<dyn Write + Send>>) -> AuditLog {
        AuditLog::with_options(sandbox, out.map(AuditOut::Stream), AuditOptions::default())
    }

    /// A log for sandbox `sandbox` writing to `out` (`None` = discard), bounded by
    /// `options`. A file counts its length at this point against the cap.
    pub fn with_options(sandbox: &str, out: Option<AuditOut>, options: AuditOptions) -> AuditLog {
        let size = match &out {
            Some(AuditOut::File(f)) => f.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        };
        // A file left ending in part of a line (a writer that died, or one before lines
        // were written whole) gets its next line on a line of its own.
        let torn = match &out {
            Some(AuditOut::File(f)) if size > 0 => {
                use std::os::unix::fs::FileExt;
                let mut last = [0u8];
                f.read_exact_at(&mut last, size - 1).is_ok() && last[0] != b'\n'
            }
            _ => false,
        };
        let halted = Arc::new(AtomicBool::new(false));
        AuditLog {
            halted: halted.clone(),
            inner: Arc::new(Mutex::new(Sink {
                halted,
                sandbox: sandbox.to_owned(),
                run: new_run_id(),
                out,
                options,
                size,
                stats: AuditStats::default(),
                torn,
                loss: None,
                loss_notice: None,
                terminate: None,
                folds: HashMap::new(),
                next_sweep: None,
                summary: None,
                live: None,
            })),
        }
    }

    /// Room left for events before the cap, not counting what is kept for `truncated` and
    /// `end` (a file already at its cap has none: the caller refuses to start).
    pub fn room(&self) -> u64 {
        let sink = self.sink();
        sink.options
            .max_size
            .saturating_sub(END_RESERVE + TRUNCATED_RESERVE)
            .saturating_sub(sink.size)
    }

    /// The first write that fails is said on `notice` at once; under
    /// [`AuditOptions::required`] `terminate` is asked to stop the sandbox.
    pub fn on_loss(&self, notice: Option<Box<dyn Write + Send>>, terminate: Terminate) {
        let mut sink = self.sink();
        sink.loss_notice = notice;
        sink.terminate = Some(terminate);
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

    /// Events that could not be written (a failed write).
    pub fn write_errors(&self) -> u64 {
        self.sink().stats.lost
    }

    /// What the log folded, dropped at its cap, and lost.
    pub fn stats(&self) -> AuditStats {
        self.sink().stats
    }

    /// The first write error (the system's words), if any.
    pub fn loss(&self) -> Option<String> {
        self.sink().loss.clone()
    }

    /// How the log is bounded.
    pub fn options(&self) -> AuditOptions {
        self.sink().options
    }

    /// A write failed under [`AuditOptions::required`]: the sandbox must stop (the engine
    /// has stopped already).
    pub fn halted(&self) -> bool {
        self.halted.load(Ordering::Acquire)
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
        self.sink()
            .event(event, decision, rule, reason, fields, Kind::Event);
    }

    /// Writes the run's `end` event: repeats still pending are written first, and the
    /// log's own counts (`events_folded`, `events_dropped`, `events_lost`) are added to
    /// `fields`. Room for it was kept back from the start.
    pub fn end(&self, reason: &str, mut fields: Vec<(&str, Value)>) {
        let mut sink = self.sink();
        sink.flush_folds(None);
        let stats = sink.stats;
        fields.push(("events_folded", Value::from(stats.folded)));
        fields.push(("events_dropped", Value::from(stats.dropped)));
        // The end event itself, if it cannot be written either, is not in its own count.
        fields.push(("events_lost", Value::from(stats.lost)));
        sink.event("end", "allow", "-", reason, fields, Kind::End);
    }
}

impl Sink {
    fn event(
        &mut self,
        event: &str,
        decision: &str,
        rule: &str,
        reason: &str,
        fields: Vec<(&str, Value)>,
        kind: Kind,
    ) {
        if self.out.is_none() && self.summary.is_none() {
            return;
        }
        // The summary reads the parts as they are: no JSON object is built for it.
        if let Some(summary) = self.summary.as_mut() {
            let head = Head {
                run: &self.run,
                sandbox: &self.sandbox,
                event,
                decision,
                rule,
                reason,
            };
            if let Fresh::Denied(what) = summary.add_parts(&head, fields.as_slice())
                && let Some(live) = self.live.as_mut()
            {
                let _ = writeln!(live, "moat: {what}");
                let _ = live.flush();
            }
        }
        if self.out.is_none() {
            return;
        }
        // Past the cap nothing but `end` is written: no line is built for what is dropped.
        if kind == Kind::Event && self.stats.truncated {
            self.stats.dropped += 1;
            return;
        }
        let now = Instant::now();
        if self.next_sweep.is_none_or(|t| now >= t) {
            self.flush_folds(Some(now));
            self.next_sweep = Some(now + SWEEP_EVERY);
        }
        let map = self.line(event, decision, rule, reason, fields);
        let key = (kind == Kind::Event && folds(event, decision)).then(|| fold_key(&map));
        if let Some(key) = &key
            && let Some(fold) = self.folds.get_mut(key)
        {
            if now.duration_since(fold.opened) < FOLD_WINDOW {
                fold.pending += 1;
                fold.last = Some((map, SystemTime::now()));
                return;
            }
            // The window has passed: its repeats are one line, and this event opens a new one.
            if let Some(fold) = self.folds.remove(key) {
                self.write_fold(fold);
            }
        }
        if self.write(map, SystemTime::now(), kind, 1)
            && let Some(key) = key
            && self.folds.len() < MAX_FOLDS
        {
            self.folds.insert(
                key,
                Fold {
                    opened: now,
                    pending: 0,
                    last: None,
                },
            );
        }
    }

    /// The event as a JSON object, without `ts` (added when it is written).
    fn line(
        &self,
        event: &str,
        decision: &str,
        rule: &str,
        reason: &str,
        fields: Vec<(&str, Value)>,
    ) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("sandbox".into(), Value::String(self.sandbox.clone()));
        map.insert("run".into(), Value::String(self.run.clone()));
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
        map
    }

    /// Writes the folds whose window has passed (all of them with `None`: the run ends).
    fn flush_folds(&mut self, now: Option<Instant>) {
        let done: Vec<String> = self
            .folds
            .iter()
            .filter(|(_, f)| now.is_none_or(|now| now.duration_since(f.opened) >= FOLD_WINDOW))
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            if let Some(fold) = self.folds.remove(&key) {
                self.write_fold(fold);
            }
        }
    }

    /// One line for a window's repeats: the last one's fields and time, and their `count`.
    fn write_fold(&mut self, fold: Fold) {
        let Some((mut map, ts)) = fold.last else {
            return;
        };
        map.insert("count".into(), Value::from(fold.pending));
        if self.write(map, ts, Kind::Event, fold.pending) {
            self.stats.folded += fold.pending - 1;
        }
    }

    /// Writes one line, standing for `events` events, within the cap; whether it was
    /// written. What is not written is counted (dropped at the cap, or lost).
    fn write(
        &mut self,
        mut map: Map<String, Value>,
        ts: SystemTime,
        kind: Kind,
        events: u64,
    ) -> bool {
        map.insert("ts".into(), Value::String(rfc3339(ts)));
        let mut line = Value::Object(map).to_string();
        line.push('\n');
        let len = line.len() as u64 + u64::from(self.torn);
        let max = self.options.max_size;
        let limit = match kind {
            Kind::Event => max.saturating_sub(END_RESERVE + TRUNCATED_RESERVE),
            Kind::Truncated => max.saturating_sub(END_RESERVE),
            Kind::End => max,
        };
        if self.size + len > limit {
            self.stats.dropped += events;
            if kind == Kind::Event && !self.stats.truncated {
                self.stats.truncated = true;
                self.truncated();
            }
            return false;
        }
        if self.torn {
            line.insert(0, '\n');
        }
        let result = match self.out.as_mut() {
            Some(AuditOut::File(file)) => match file.write_all(line.as_bytes()) {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Cut back to the last whole line; where that fails too, the next line
                    // starts on a line of its own.
                    self.torn = file.set_len(self.size).is_err();
                    Err(e)
                }
            },
            Some(AuditOut::Stream(out)) => {
                let result = out.write_all(line.as_bytes()).and_then(|()| out.flush());
                // A stream cannot be cut back: part of the line may be out, so the next
                // one starts on a line of its own.
                self.torn = result.is_err();
                result
            }
            None => Ok(()),
        };
        match result {
            Ok(()) => {
                self.size += line.len() as u64;
                self.torn = false;
                true
            }
            Err(e) => {
                self.stats.lost += events;
                self.lost(&e);
                false
            }
        }
    }

    /// The one `truncated` event, in the room kept for it.
    fn truncated(&mut self) {
        let max = self.options.max_size;
        let map = self.line(
            "truncated",
            "allow",
            "-",
            &format!(
                "the audit log reached its cap of {max} bytes (--audit-max-size): later events are counted, not written, until the end event"
            ),
            vec![("max_size", Value::from(max))],
        );
        self.write(map, SystemTime::now(), Kind::Truncated, 0);
    }

    /// Says the first loss at once, and under `required` asks the sandbox to stop.
    fn lost(&mut self, error: &std::io::Error) {
        if self.loss.is_some() {
            return;
        }
        let required = self.options.required;
        let what = format!(
            "audit log: cannot write ({error}): {}",
            if required {
                "stopping the sandbox (--audit-required)"
            } else {
                "events are being lost (counted in the summary and the end event)"
            }
        );
        if let Some(out) = self.loss_notice.as_mut() {
            let _ = writeln!(out, "moat: {what}");
            let _ = out.flush();
        }
        if required {
            self.halted.store(true, Ordering::Release);
            if let Some(t) = &self.terminate {
                t.request(what);
            }
        }
        self.loss = Some(error.to_string());
    }
}

/// Whether repeats of this kind of event fold: denials, and allowed lookups. An allowed
/// connection and its `close` are the record of one flow each.
fn folds(event: &str, decision: &str) -> bool {
    match event {
        "start" | "end" | "truncated" | "close" => false,
        "dns" => true,
        _ => decision == "deny",
    }
}

/// What makes two events the same for folding: every field but the time and the source
/// port (a retry comes from a new one; inbound, the peer's port changes likewise).
fn fold_key(map: &Map<String, Value>) -> String {
    let mut key = map.clone();
    if let Some(Value::String(src)) = key.get_mut("src")
        && let Some((host, port)) = src.rsplit_once(':')
        && port.bytes().all(|b| b.is_ascii_digit())
    {
        *src = host.to_owned();
    }
    Value::Object(key).to_string()
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

/// A request to stop the whole sandbox, shared between the engine and whoever runs it.
#[derive(Debug, Clone, Default)]
pub struct Terminate(Arc<Mutex<Option<String>>>);

impl Terminate {
    /// Asks for the sandbox to stop, saying why (the first reason is kept).
    pub fn request(&self, why: String) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(why);
    }

    /// Why the sandbox must stop, once asked.
    pub fn requested(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
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

    /// A writer that takes `room` bytes, then fails (after a short write, as a full disk
    /// does).
    #[derive(Clone)]
    struct Full {
        buf: Shared,
        room: Arc<Mutex<usize>>,
    }
    impl Write for Full {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let mut room = self.room.lock().unwrap();
            if *room == 0 {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            let n = b.len().min(*room);
            *room -= n;
            self.buf.write(&b[..n])
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn shared() -> Shared {
        Shared(Arc::new(Mutex::new(Vec::new())))
    }

    fn lines(buf: &Shared) -> Vec<Value> {
        String::from_utf8(buf.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn deny(log: &AuditLog, src_port: u16, dst: &str) {
        log.event(
            "connect",
            "deny",
            "default",
            "no rule matched; default deny",
            vec![
                ("direction", Value::from("outbound")),
                ("proto", Value::from("tcp")),
                ("src", Value::from(format!("10.0.2.100:{src_port}"))),
                ("dst", Value::from(dst)),
                ("port", Value::from(80)),
            ],
        );
    }

    fn log_to(buf: &Shared, max_size: u64, required: bool) -> AuditLog {
        AuditLog::with_options(
            "agent",
            Some(AuditOut::Stream(Box::new(buf.clone()))),
            AuditOptions { max_size, required },
        )
    }

    #[test]
    fn repeats_within_a_second_are_one_line_with_a_count() {
        let buf = shared();
        let log = log_to(&buf, DEFAULT_AUDIT_MAX_SIZE, false);
        log.summarize(None);
        // A retry loop: new source ports, one destination; and one other destination.
        for port in 0..1000 {
            deny(&log, 40000 + port, "198.51.100.7");
        }
        deny(&log, 50000, "198.51.100.8");
        // Allowed connections are each a flow's record: never folded.
        for _ in 0..3 {
            log.event("connect", "allow", "0", "rule 0", vec![]);
        }
        log.end("the sandbox stopped", vec![]);
        let l = lines(&buf);
        let of = |dst: &str| -> Vec<&Value> { l.iter().filter(|e| e["dst"] == dst).collect() };
        // The first at once, the 999 repeats as one line that says so.
        let seven = of("198.51.100.7");
        assert_eq!(seven.len(), 2, "{l:#?}");
        assert!(seven[0].get("count").is_none());
        assert_eq!(seven[1]["count"], 999);
        assert_eq!(
            seven[1]["src"], "10.0.2.100:40999",
            "the last repeat's fields"
        );
        assert_eq!(of("198.51.100.8").len(), 1);
        assert_eq!(
            l.iter()
                .filter(|e| e["decision"] == "allow" && e["event"] == "connect")
                .count(),
            3
        );
        let end = l.last().unwrap();
        assert_eq!(end["event"], "end");
        assert_eq!(end["events_folded"], 998);
        assert_eq!(
            (end["events_dropped"].clone(), end["events_lost"].clone()),
            (Value::from(0), Value::from(0))
        );
        // The summary saw every attempt; a log read back counts the same.
        let live = log.summary().unwrap();
        assert_eq!(live.runs()[0].denied(), 1001);
        let mut read = Summary::new();
        for e in &l {
            read.add(e.as_object().unwrap());
        }
        assert_eq!(read.runs()[0].denied(), 1001);
    }

    #[test]
    fn a_new_window_opens_once_a_second_has_passed() {
        let buf = shared();
        let log = log_to(&buf, DEFAULT_AUDIT_MAX_SIZE, false);
        deny(&log, 1, "198.51.100.7");
        deny(&log, 2, "198.51.100.7");
        deny(&log, 3, "198.51.100.7");
        std::thread::sleep(FOLD_WINDOW + Duration::from_millis(50));
        // The window's repeats are written before this one, which opens the next window.
        deny(&log, 4, "198.51.100.7");
        deny(&log, 5, "198.51.100.7");
        let l = lines(&buf);
        let counts: Vec<Option<u64>> = l.iter().map(|e| e["count"].as_u64()).collect();
        assert_eq!(counts, [None, Some(2), None], "{l:#?}");
        log.end("stopped", vec![]);
        let l = lines(&buf);
        assert_eq!(l[3]["count"], 1);
        assert_eq!(l[3]["src"], "10.0.2.100:5");
    }

    #[test]
    fn the_cap_holds_with_one_truncated_event_and_the_end() {
        let buf = shared();
        let max = MIN_AUDIT_MAX_SIZE;
        let log = log_to(&buf, max, false);
        log.summarize(None);
        log.event("start", "allow", "-", "the sandbox started", vec![]);
        // Distinct destinations: nothing folds; the cap is what bounds them.
        for i in 0..10_000u32 {
            deny(
                &log,
                1,
                &format!("198.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
            );
        }
        log.end("the sandbox stopped", vec![("exit_status", Value::from(0))]);
        let bytes = buf.0.lock().unwrap().len() as u64;
        assert!(bytes <= max, "{bytes} > {max}");
        let l = lines(&buf);
        assert_eq!(l[0]["event"], "start");
        assert_eq!(l.iter().filter(|e| e["event"] == "truncated").count(), 1);
        let end = l.last().unwrap();
        assert_eq!(end["event"], "end");
        let written = l.iter().filter(|e| e["event"] == "connect").count() as u64;
        assert!(written > 10, "{written}");
        assert_eq!(end["events_dropped"].as_u64().unwrap() + written, 10_000);
        assert!(log.stats().truncated);
        // The summary counted them all, and says the log has a hole; so does the log read
        // back (`moat audit`).
        let live = log.summary().unwrap();
        assert_eq!(live.runs()[0].denied(), 10_000);
        let dropped = end["events_dropped"].as_u64().unwrap();
        let note = format!("reached --audit-max-size: {dropped} events counted but not written");
        assert!(
            live.runs()[0].render().contains(&note),
            "{}",
            live.runs()[0].render()
        );
        let mut read = Summary::new();
        for e in &l {
            read.add(e.as_object().unwrap());
        }
        assert!(
            read.runs()[0].render().contains(&note),
            "{}",
            read.runs()[0].render()
        );
        assert_eq!(read.runs()[0].to_json()["log"]["truncated"], true);
    }

    #[test]
    fn a_failed_write_is_said_once_counted_and_under_required_stops_the_sandbox() {
        for required in [false, true] {
            let buf = shared();
            let full = Full {
                buf: buf.clone(),
                room: Arc::new(Mutex::new(1000)),
            };
            let notices = shared();
            let terminate = Terminate::default();
            let log = AuditLog::with_options(
                "agent",
                Some(AuditOut::Stream(Box::new(full))),
                AuditOptions {
                    max_size: DEFAULT_AUDIT_MAX_SIZE,
                    required,
                },
            );
            log.on_loss(Some(Box::new(notices.clone())), terminate.clone());
            for i in 0..50 {
                deny(&log, 1, &format!("198.51.100.{i}"));
            }
            let said = String::from_utf8(notices.0.lock().unwrap().clone()).unwrap();
            assert_eq!(said.lines().count(), 1, "{said}");
            assert!(said.contains("No space left on device"), "{said}");
            assert!(log.stats().lost > 40, "{:?}", log.stats());
            assert_eq!(log.halted(), required);
            assert_eq!(terminate.requested().is_some(), required);
            if required {
                assert!(
                    said.contains("stopping the sandbox (--audit-required)"),
                    "{said}"
                );
            } else {
                assert!(said.contains("events are being lost"), "{said}");
            }
        }
    }

    #[test]
    fn folding_stays_bounded_under_distinct_destinations() {
        let log = log_to(&shared(), u64::MAX, false);
        let start = std::time::Instant::now();
        for i in 0..(MAX_FOLDS as u32 * 3) {
            deny(
                &log,
                1,
                &format!("198.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
            );
        }
        let folds = log.sink().folds.len();
        // Never more than the bound; and full when the loop ran inside one fold window (a
        // loaded machine that took longer has let older entries go, as it should).
        assert!(folds <= MAX_FOLDS, "{folds}");
        if start.elapsed() < std::time::Duration::from_millis(900) {
            assert_eq!(folds, MAX_FOLDS);
        }
    }

    #[test]
    fn a_file_left_in_the_middle_of_a_line_gets_the_next_line_on_its_own() {
        let path = std::env::temp_dir().join(format!("moat-audit-torn-{}", std::process::id()));
        std::fs::write(
            &path,
            "{\"event\":\"start\"}\n{\"answers\":[],\"blocked_by\"",
        )
        .unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .unwrap();
        let log =
            AuditLog::with_options("agent", Some(AuditOut::File(file)), AuditOptions::default());
        deny(&log, 1, "198.51.100.7");
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(serde_json::from_str::<Value>(lines[2]).is_ok(), "{text}");
    }
}
