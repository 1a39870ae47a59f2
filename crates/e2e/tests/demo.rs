//! `moat demo`, the README's first command, runs on this machine and shows the right
//! decisions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::process::Command;
use std::time::Duration;

use moat_e2e::{moat_bin, run_with_timeout, stderr, stdout};

#[test]
fn demo_tours_the_policies() {
    let mut cmd = Command::new(moat_bin());
    cmd.arg("demo");
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let line = |section: usize, url: &str| -> String {
        let start = text
            .find(&format!("\n{section}. "))
            .unwrap_or_else(|| panic!("section {section}: {text}"));
        text[start..]
            .lines()
            .find(|l| l.trim_start().starts_with(url))
            .unwrap()
            .to_owned()
    };
    let public = line(1, "http://203.0.113.10/");
    assert!(
        public.contains("allow") && public.contains("hello from 203.0.113.10"),
        "{public}"
    );
    let private = line(1, "http://10.1.0.10/");
    assert!(
        private.contains("deny")
            && private.contains("group:private")
            && private.contains("no connection"),
        "{private}"
    );
    let host = line(1, "http://10.0.2.2:8080/");
    assert!(
        host.contains("deny") && host.contains("group:loopback"),
        "{host}"
    );
    let only = line(2, "http://203.0.113.10/");
    assert!(
        only.contains("rule 0: allow outbound 203.0.113.10:80/tcp"),
        "{only}"
    );
    let all = line(3, "http://10.0.2.2:8080/");
    assert!(
        all.contains("allow") && all.contains("hello from 127.0.0.1:8080"),
        "{all}"
    );
    // DNS and a domain rule: the allowed name resolves and connects; another name is not
    // resolved at all.
    let named = line(4, "http://www.demo.test/");
    assert!(
        named.contains("allow") && named.contains("hello from 203.0.113.10"),
        "{named}"
    );
    let other = line(4, "http://other.demo.test/");
    assert!(
        other.contains("deny") && other.contains("no connection"),
        "{other}"
    );
    // The tour ends with the summary moat run prints.
    assert!(
        text.contains("to allow what was denied: --allow 10.1.0.10:80/tcp --allow other.demo.test"),
        "{text}"
    );
}
