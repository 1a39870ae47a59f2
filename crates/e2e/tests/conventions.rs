//! The command-line conventions users expect (issue: legible denials ... item 6), each
//! checked on the real binary. Offline (`--policy none`): nothing here needs a network.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

use moat_e2e::{moat_bin, run_with_timeout, stderr, stdout};

const T: Duration = Duration::from_secs(60);

fn moat(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(moat_bin());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, T)
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("moat-conv-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_command_may_follow_the_options_without_a_double_dash() {
    let out = moat(
        &["run", "--policy", "none", "sh", "-c", "echo ran; exit 3"],
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).contains("ran"));
}

#[test]
fn usage_errors_exit_125() {
    let out = moat(&["run", "--no-such-flag", "--", "true"], &[]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
}

#[test]
fn a_file_that_is_not_executable_exits_126_and_a_missing_one_127() {
    let dir = scratch("noexec");
    let file = dir.join("script.sh");
    std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let d = dir.to_str().unwrap();
    let out = moat(
        &[
            "run",
            "--policy",
            "none",
            "-w",
            d,
            "--",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
    let out = moat(&["run", "--policy", "none", "--", "/no/such/program"], &[]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn env_k_passes_the_callers_value_and_k_v_sets_one() {
    let out = moat(
        &[
            "run",
            "--policy",
            "none",
            "-e",
            "MOAT_CONV_K",
            "-e",
            "MOAT_CONV_J=set",
            "--",
            "sh",
            "-c",
            "echo k=$MOAT_CONV_K j=$MOAT_CONV_J",
        ],
        &[("MOAT_CONV_K", "from-caller")],
    );
    assert!(
        stdout(&out).contains("k=from-caller j=set"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn values_that_cannot_work_are_refused_with_what_to_do() {
    let dir = scratch("refuse");
    let file = dir.join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let log = dir.join("audit.jsonl");
    let log = log.to_str().unwrap();
    let full = dir.join("full.jsonl");
    std::fs::write(&full, vec![b'\n'; 20_000]).unwrap();
    let full = full.to_str().unwrap();
    let cases: [(&[&str], &str); 12] = [
        (&["-p", "0:80"], "0"),
        (&["--max-connections", "0"], "max-connections"),
        (&["--busy-poll", "5000"], "at most 1000 microseconds"),
        (&["-w", file.to_str().unwrap()], "not a directory"),
        (&["-w", "/"], "/"),
        (
            &["--allow", "https://example.com"],
            "give the host and the port",
        ),
        (
            &["--policy", "/no/such/policy.toml"],
            "/no/such/policy.toml",
        ),
        (&["--audit", log, "--audit-max-size", "1k"], "at least 16k"),
        (&["--audit-required"], "add --audit FILE"),
        (
            &["--audit", full, "--audit-max-size", "16k"],
            "already holds its cap",
        ),
        (
            &["--audit", "/no/such/dir/audit.jsonl"],
            "cannot open the directory that is to hold audit.jsonl",
        ),
        (
            &["--learn", "/no/such/dir/tool.toml"],
            "cannot open the directory that is to hold tool.toml",
        ),
    ];
    for (flags, says) in cases {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "true"]);
        let out = moat(&args, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{flags:?}: {err}");
        assert!(err.contains(says), "{flags:?}: {err}");
        // Each cause once: an os error is not printed twice.
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{flags:?}: {err}");
        assert!(err.matches("os error").count() <= 1, "{flags:?}: {err}");
    }
    // The same flags within range run (the refusals above are about the values).
    for flags in [["--busy-poll", "0"], ["--busy-poll", "1000"]] {
        let mut args = vec!["run", "--quiet"];
        args.extend_from_slice(&flags);
        args.extend_from_slice(&["--", "true"]);
        let out = moat(&args, &[]);
        assert_eq!(out.status.code(), Some(0), "{flags:?}: {}", stderr(&out));
    }
    let _ = std::fs::remove_dir_all(dir);
}
