//! `moat policy check` and `moat policy explain`, run as the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::path::PathBuf;
use std::process::{Command, Output};

fn moat(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(args)
        .output()
        .expect("run moat")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A policy file in a fresh temporary directory, removed on drop.
struct TempPolicy {
    dir: PathBuf,
    path: PathBuf,
}

impl TempPolicy {
    fn new(file_name: &str, body: &str) -> TempPolicy {
        let dir = std::env::temp_dir().join(format!(
            "moat-cli-test-{}-{}",
            std::process::id(),
            file_name.replace('.', "-")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(file_name);
        std::fs::write(&path, body).unwrap();
        TempPolicy { dir, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for TempPolicy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn check_fails_at(file_name: &str, body: &str, line: usize, col: usize, expected: &str) {
    let policy = TempPolicy::new(file_name, body);
    let out = moat(&["policy", "check", policy.path()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let location = format!("{}:{line}:{col}: ", policy.path());
    assert!(stderr.contains(&location), "want {location:?} in: {stderr}");
    assert!(stderr.contains(expected), "want {expected:?} in: {stderr}");
}

const HEAD: &str = "default_action = \"deny\"\n\n[[rules]]\naction = \"allow\"\n";

#[test]
fn check_reports_a_bad_cidr() {
    check_fails_at(
        "bad-cidr.toml",
        &format!("{HEAD}destination = \"10.0.0.0/33\"\n"),
        5,
        15,
        "expected an IPv4/IPv6 address or CIDR",
    );
}

#[test]
fn check_reports_an_unknown_group() {
    check_fails_at(
        "bad-group.toml",
        &format!("{HEAD}destination = {{ group = \"privat\" }}\n"),
        5,
        15,
        "unknown group \"privat\"; expected one of private, loopback, link-local, metadata, multicast",
    );
}

#[test]
fn check_reports_a_reversed_port_range() {
    check_fails_at(
        "bad-ports.toml",
        &format!("{HEAD}destination = \"any\"\nports = \"9000-8000\"\n"),
        6,
        9,
        "port range 9000-8000 starts after it ends",
    );
}

#[test]
fn check_reports_an_unknown_key() {
    check_fails_at(
        "bad-key.toml",
        &format!("{HEAD}destination = \"any\"\nport = 443\n"),
        6,
        1,
        "unknown field `port`, expected one of",
    );
}

#[test]
fn check_reports_a_wrong_type() {
    check_fails_at(
        "bad-type.toml",
        &format!("{HEAD}destination = \"any\"\nprotocol = 6\n"),
        6,
        12,
        "invalid type: integer `6`, expected a string",
    );
}

#[test]
fn check_reports_json_errors_too() {
    check_fails_at(
        "bad.json",
        "{\n  \"default_action\": \"deny\",\n  \"rules\": [\n    {\"action\": \"allow\", \"destination\": \"group:privat\"}\n  ]\n}\n",
        4,
        53,
        "unknown group \"privat\"",
    );
}

#[test]
fn check_prints_normalized_rules() {
    let policy = TempPolicy::new(
        "good.toml",
        "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ndestination = \"*.Example.COM\"\nprotocol = \"tcp\"\nports = 443\n[[rules]]\naction = \"deny\"\ndirection = \"inbound\"\ndestination = \"127.0.0.0/8\"\n",
    );
    let out = moat(&["policy", "check", policy.path()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("ok: 2 rules, default deny"), "{stdout}");
    assert!(
        stdout.contains("0  allow outbound *.example.com:443/tcp"),
        "{stdout}"
    );
    assert!(stdout.contains("1  deny inbound 127.0.0.0/8"), "{stdout}");
}

#[test]
fn check_names_a_missing_file() {
    let out = moat(&["policy", "check", "/nonexistent/moat-policy.toml"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("/nonexistent/moat-policy.toml: cannot read policy file"),
        "{stderr}"
    );
}

fn explain(args: &[&str]) -> String {
    let mut all = vec!["policy", "explain"];
    all.extend_from_slice(args);
    let out = moat(&all);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    stdout
}

#[test]
fn explain_public_only_private_address() {
    let out = explain(&["public-only", "--to", "10.1.2.3:80/tcp"]);
    assert!(out.contains("decision: deny"), "{out}");
    assert!(out.contains("rule:     1\n"), "{out}");
    assert!(out.contains("rule 1: deny outbound group:private"), "{out}");
}

#[test]
fn explain_public_only_public_address() {
    let out = explain(&["public-only", "--to", "203.0.113.10:443/tcp"]);
    assert!(out.contains("decision: allow"), "{out}");
    assert!(out.contains("rule:     default"), "{out}");
    assert!(out.contains("no rule matched; default allow"), "{out}");
}

#[test]
fn explain_takes_a_name_as_a_pinned_name() {
    let policy = TempPolicy::new(
        "named.toml",
        "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ndestination = \"api.example.test\"\n",
    );
    let out = explain(&[policy.path(), "--to", "api.example.test:443"]);
    assert!(out.contains("decision: allow"), "{out}");
    assert!(out.contains("outbound tcp api.example.test:443"), "{out}");
    assert!(
        out.contains("a lookup of api.example.test answered"),
        "{out}"
    );
    // Another name is not allowed (the control).
    let out = explain(&[policy.path(), "--to", "other.example.test:443"]);
    assert!(out.contains("decision: deny"), "{out}");
    // Not a name and not an address: the address error stays.
    let out = moat(&["policy", "explain", "none", "--to", "not a host:80"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn explain_judges_the_gateway_as_run_does() {
    let out = explain(&["public-only", "--to", "10.0.2.2:8000"]);
    assert!(out.contains("decision: deny"), "{out}");
    assert!(out.contains("group:loopback"), "{out}");
    assert!(
        out.contains("(the gateway: judged as the host's loopback, 127.0.0.1)"),
        "{out}"
    );
    // Another private address is judged as what it is (the control).
    let out = explain(&["public-only", "--to", "10.0.2.3:8000"]);
    assert!(
        out.contains("group:private") && !out.contains("the gateway"),
        "{out}"
    );
}

#[test]
fn explain_public_only_mapped_private_address() {
    let out = explain(&["public-only", "--to", "[::ffff:192.168.1.1]:80/tcp"]);
    assert!(out.contains("decision: deny"), "{out}");
    assert!(out.contains("group:private"), "{out}");
    assert!(out.contains("judged as 192.168.1.1"), "{out}");
}

#[test]
fn explain_with_names_sni_and_inbound() {
    let policy = TempPolicy::new(
        "names.toml",
        "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ndestination = \"api.example.test\"\n",
    );
    let out = explain(&[
        policy.path(),
        "--to",
        "203.0.113.10:443",
        "--domain",
        "api.example.test",
    ]);
    assert!(out.contains("decision: allow"), "{out}");
    assert!(
        out.contains("a lookup of api.example.test is forwarded upstream"),
        "{out}"
    );
    let out = explain(&[
        policy.path(),
        "--to",
        "203.0.113.10:443",
        "--domain",
        "api.example.test",
        "--sni",
        "evil.example.test",
    ]);
    assert!(out.contains("decision: deny"), "{out}");
    // It says when the server name is what decided.
    assert!(
        out.contains("note:     the TLS server name decided: without it the flow would be allow"),
        "{out}"
    );
    let out = explain(&[policy.path(), "--to", "203.0.113.10:443"]);
    assert!(out.contains("decision: deny"), "{out}");
    let out = explain(&["public-only", "--to", "127.0.0.1:8000", "--inbound"]);
    assert!(out.contains("decision: allow"), "{out}");
    assert!(out.contains("inbound tcp 127.0.0.1:8000"), "{out}");
}

#[test]
fn explain_rejects_bad_input_clearly() {
    let out = moat(&["policy", "explain", "publik-only", "--to", "10.0.0.1:80"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("unknown policy preset"), "{stderr}");
    let out = moat(&["policy", "explain", "none", "--to", "10.0.0.1"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("tcp needs a port"), "{stderr}");
}

/// An allow of `any` that no deny of loopback, metadata and private precedes is legal but
/// a trap: `policy check` says so and names the fix; guarded, it says nothing.
#[test]
fn check_warns_about_unguarded_any_allows() {
    let trap = TempPolicy::new(
        "trap.toml",
        "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ndestination = \"any\"\nports = \"8088\"\n",
    );
    let out = moat(&["policy", "check", trap.path.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(
            "warning: rule 0 (allow outbound any:8088) also allows loopback, metadata, private"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("--deny group:loopback --deny group:metadata --deny group:private"),
        "{stdout}"
    );
    let guarded = TempPolicy::new(
        "guarded.toml",
        "default_action = \"deny\"\n[[rules]]\naction = \"deny\"\ndestination = \"group:loopback\"\n[[rules]]\naction = \"deny\"\ndestination = \"group:metadata\"\n[[rules]]\naction = \"deny\"\ndestination = \"group:private\"\n[[rules]]\naction = \"allow\"\ndestination = \"any\"\nports = \"8088\"\n",
    );
    let out = moat(&["policy", "check", guarded.path.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("ok: 4 rules"), "{stdout}");
    assert!(!stdout.contains("warning"), "{stdout}");
}

#[test]
fn usage_errors_exit_125_and_help_exits_0() {
    for args in [
        &["run", "--no-such-flag", "--", "true"][..],
        &["run"][..],
        &["frobnicate"][..],
    ] {
        let out = moat(args);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {:?}", text(&out));
    }
    for args in [&["--help"][..], &["run", "--help"][..], &["--version"][..]] {
        let out = moat(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {:?}", text(&out));
    }
}
