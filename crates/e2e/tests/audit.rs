//! The audit log as a record users can trust: every run opens with `start` and ends with
//! `end` (exit status, counts), every event names its run, and the sandbox cannot write
//! the log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use moat_e2e::{World, stderr};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

#[test]
fn each_run_opens_and_ends_and_names_itself() {
    let w = World::new();
    let log = w.dir.join("runs.jsonl");
    let log_s = log.to_str().unwrap();
    // Two runs appended to one file: one with a network and a connection, one offline.
    let out = w.moat(
        &[
            "run",
            "--audit",
            log_s,
            "--",
            "sh",
            "-c",
            "curl -s -m 5 -o /dev/null http://203.0.113.10/; exit 3",
        ],
        T,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = w.moat(
        &["run", "--audit", log_s, "--policy", "none", "--", "true"],
        T,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e["run"].as_str().is_some_and(|r| r.len() == 16)),
        "{events:?}"
    );
    let starts: Vec<&Value> = events.iter().filter(|e| e["event"] == "start").collect();
    let ends: Vec<&Value> = events.iter().filter(|e| e["event"] == "end").collect();
    assert_eq!((starts.len(), ends.len()), (2, 2), "{events:?}");
    assert_ne!(starts[0]["run"], starts[1]["run"]);
    // The first run: opened first, its connection in between, ended with its status.
    assert_eq!(events.first().unwrap()["event"], "start");
    let first_run = &starts[0]["run"];
    let connect = events
        .iter()
        .position(|e| e["event"] == "connect" && &e["run"] == first_run)
        .unwrap();
    let end = events
        .iter()
        .position(|e| e["event"] == "end" && &e["run"] == first_run)
        .unwrap();
    assert!(connect < end);
    assert_eq!(events[end]["exit_status"], 3);
    assert!(
        events[end]["allowed"].as_u64().unwrap() >= 1,
        "{:?}",
        events[end]
    );
    assert_eq!(starts[0]["network"], "moat");
    assert_eq!(starts[1]["network"], "none");
    assert_eq!(ends[1]["exit_status"], 0);
}

#[test]
fn a_log_the_sandbox_could_write_is_refused() {
    let w = World::new();
    let work = w.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let inside = work.join("audit.jsonl");
    let out = w.moat(
        &[
            "run",
            "--audit",
            inside.to_str().unwrap(),
            "-w",
            work.to_str().unwrap(),
            "--",
            "true",
        ],
        T,
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("which the sandbox can write"),
        "{}",
        stderr(&out)
    );
    assert!(!inside.exists(), "the refused log was created");
    // Outside the writable directory it is fine (the control).
    let outside = w.dir.join("audit.jsonl");
    let out = w.moat(
        &[
            "run",
            "--audit",
            outside.to_str().unwrap(),
            "-w",
            work.to_str().unwrap(),
            "--",
            "true",
        ],
        T,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read_to_string(&outside)
            .unwrap()
            .contains("\"event\":\"start\"")
    );
}
