//! The summary `moat run` prints when the run ends: what was allowed and denied, grouped
//! by destination with retries folded, the deciding rule, refused lookups, and the
//! `--allow` flags that would have permitted the denials — with or without `--audit`, and
//! the same from a log with `moat audit FILE`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use moat_e2e::{WORLD_DNS, World, stderr, stdout};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

/// A run that is denied 203.0.113.11 (by rule 0) and fetches from it twice, resolves a
/// blocked name, and fetches from 203.0.113.10 (allowed).
fn denied_run(w: &World, extra: &[&str]) -> std::process::Output {
    let dns = format!("--dns={WORLD_DNS}");
    let mut args = vec![
        "run",
        &dns,
        "--deny",
        "203.0.113.11",
        "--deny",
        "blocked.example.test",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "--",
        "sh",
        "-c",
        "curl -sS -m 3 -o /dev/null http://203.0.113.11:8080/a; \
         curl -sS -m 3 -o /dev/null http://203.0.113.11:8080/b; \
         getent hosts blocked.example.test || echo refused; \
         curl -sS -m 5 -o /dev/null http://api.example.test:8080/ok && echo fetched; exit 4",
    ]);
    w.moat(&args, T)
}

/// The summary lines of moat's stderr.
fn summary(out: &std::process::Output) -> Vec<String> {
    stderr(out)
        .lines()
        .filter(|l| l.starts_with("moat: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_denied_run_says_what_was_denied_and_what_would_allow_it() {
    let w = World::new();
    let out = denied_run(&w, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stdout(&out).contains("fetched") && stdout(&out).contains("refused"));
    let lines = summary(&out);
    let text = lines.join("\n");
    let head = &lines[0];
    assert!(head.contains("exit status 4"), "{text}");
    assert!(head.contains("1 connection allowed"), "{text}");
    // Two fetches, each retried while curl waited: folded into one destination.
    let denied = lines
        .iter()
        .find(|l| l.contains("denied   203.0.113.11:8080/tcp"))
        .unwrap_or_else(|| panic!("{text}"));
    let times: u64 = denied
        .split('×')
        .nth(1)
        .and_then(|t| t.split(':').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(1);
    assert!(times >= 2, "{text}");
    assert!(denied.contains("rule 0"), "{text}");
    assert!(head.contains("to 1 destination"), "{text}");
    assert!(text.contains("lookup of blocked.example.test"), "{text}");
    assert!(text.contains("api.example.test:8080/tcp"), "{text}");
    // Both were denied by the run's own --deny flags: an --allow after them would change
    // nothing, so none is suggested (the denials' lines name the rules).
    assert!(!text.contains("to allow what was denied"), "{text}");
    assert!(!text.contains("--allow 203.0.113.11"), "{text}");

    // The same with --audit: the summary counts what the log holds.
    let log = w.dir.join("summary.jsonl");
    let out = denied_run(&w, &["--audit", log.to_str().unwrap()]);
    let text = summary(&out).join("\n");
    let events: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let denies = events
        .iter()
        .filter(|e| e["event"] == "connect" && e["decision"] == "deny")
        .map(moat_e2e::times)
        .sum::<u64>();
    assert!(
        text.contains(&format!("{denies} attempts denied")),
        "{denies}: {text}"
    );
    // `moat audit FILE` says the same from the log; --json for machines.
    let audit = w.moat(&["audit", log.to_str().unwrap()], T);
    assert!(audit.status.success(), "{}", stderr(&audit));
    let from_log = stdout(&audit);
    assert!(
        from_log.contains(&format!("{denies} attempts denied")),
        "{from_log}"
    );
    assert!(
        from_log.contains("--allow 203.0.113.11:8080/tcp"),
        "{from_log}"
    );
    let json = w.moat(&["audit", "--json", log.to_str().unwrap()], T);
    let v: Value = serde_json::from_str(&stdout(&json)).unwrap();
    assert_eq!(v["runs"][0]["denied"][0]["host"], "203.0.113.11");
    assert_eq!(v["runs"][0]["denied"][0]["count"], denies);
    assert_eq!(v["runs"][0]["exit_status"], 4);

    // The suggestions work: the same run with them gets through.
    let out = w.moat(
        &[
            "run",
            &format!("--dns={WORLD_DNS}"),
            "--allow",
            "203.0.113.11:8080/tcp",
            "--deny",
            "203.0.113.11",
            "--",
            "sh",
            "-c",
            "curl -sS -m 5 -o /dev/null http://203.0.113.11:8080/after && echo fetched",
        ],
        T,
    );
    assert!(stdout(&out).contains("fetched"), "{}", stderr(&out));
    assert!(
        summary(&out)[0].contains("0 attempts denied"),
        "{}",
        stderr(&out)
    );

    // --quiet: no summary.
    let out = denied_run(&w, &["--quiet"]);
    assert!(
        !stderr(&out).contains("attempts denied"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn on_a_terminal_a_denial_is_a_line_at_once() {
    let w = World::new();
    // `script` gives moat a terminal; the command waits 3 s on the denied connection.
    let command = format!(
        "{} run --deny 203.0.113.11 -- sh -c 'tty; curl -sS -m 3 -o /dev/null http://203.0.113.11:8080/; echo after-curl'",
        moat_e2e::moat_bin().display()
    );
    let mut cmd = w.in_host("script");
    cmd.args(["-qec", &command, "/dev/null"]);
    let out = moat_e2e::run_with_timeout(cmd, T);
    let text = stdout(&out);
    let live = text
        .find("moat: denied 203.0.113.11:8080/tcp")
        .unwrap_or_else(|| panic!("{text}"));
    let after = text.find("after-curl").unwrap_or_else(|| panic!("{text}"));
    assert!(live < after, "{text}");
    // The host terminal is raw while moat relays the pseudo-terminal: moat's own line ends
    // with CR LF there, or the next line would start where this one ended.
    let line_end = live + text[live..].find('\n').unwrap();
    assert_eq!(&text[line_end - 1..=line_end], "\r\n", "{text:?}");
    // The terminal is one of the sandbox's own, which `tty` names; nothing stray precedes
    // the command's output.
    assert!(
        text.lines().any(|l| l.trim_end().starts_with("/dev/pts/")),
        "{text:?}"
    );
    assert!(!text.contains('\0'), "{text:?}");
    // Once per destination, however many retries.
    assert_eq!(
        text.matches("moat: denied 203.0.113.11").count(),
        1,
        "{text}"
    );
}

#[test]
fn learn_writes_a_policy_that_allows_exactly_what_the_run_used() {
    let w = World::new();
    let policy = w.dir.join("learned.toml");
    let dns = format!("--dns={WORLD_DNS}");
    let script = "curl -sS -m 5 -o /dev/null http://api.example.test:8080/one && echo one-ok; \
                  curl -sS -m 5 -o /dev/null http://other.example.test:8080/two && echo two-ok";
    let out = w.moat(
        &[
            "run",
            &dns,
            "--learn",
            policy.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            script,
        ],
        T,
    );
    let text = stdout(&out);
    assert!(
        text.contains("one-ok") && text.contains("two-ok"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("learned 2 rules"), "{}", stderr(&out));
    let learned = std::fs::read_to_string(&policy).unwrap();
    assert!(learned.contains("default_action = \"deny\""), "{learned}");
    assert!(
        learned.contains("destination = \"api.example.test\""),
        "{learned}"
    );
    assert!(
        learned.contains("destination = \"other.example.test\""),
        "{learned}"
    );
    assert!(
        learned.contains("# used by: api.example.test:8080/tcp"),
        "{learned}"
    );
    // moat itself accepts it.
    let check = w.moat(&["policy", "check", policy.to_str().unwrap()], T);
    assert!(check.status.success(), "{}", stderr(&check));

    // Under it, the same script succeeds and a third host is denied (its lookup refused,
    // and its address too).
    let policy_arg = format!("--policy={}", policy.display());
    let again = format!(
        "{script}; curl -sS -m 3 -o /dev/null http://www.example.test:8080/three && echo three-ok; \
         curl -sS -m 3 -o /dev/null http://203.0.113.10:80/four && echo four-ok; true"
    );
    let out = w.moat(&["run", &dns, &policy_arg, "--", "sh", "-c", &again], T);
    let text = stdout(&out);
    assert!(
        text.contains("one-ok") && text.contains("two-ok"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(
        !text.contains("three-ok") && !text.contains("four-ok"),
        "{text}"
    );
    let paths: Vec<String> = w
        .log()
        .iter()
        .filter_map(|l| l["path"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !paths.iter().any(|p| p == "/three" || p == "/four"),
        "{paths:?}"
    );
    let err = stderr(&out);
    assert!(err.contains("lookup of www.example.test"), "{err}");

    // Nothing to learn without a network.
    let out = w.moat(
        &[
            "run",
            "--policy",
            "none",
            "--learn",
            policy.to_str().unwrap(),
            "--",
            "true",
        ],
        T,
    );
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
}

/// `--learn` can be trusted with a good policy: a run whose command never started leaves
/// it as it was (a typo used to replace it with an empty deny-all policy); runs add to it,
/// keeping what is there, comments included, and say what they added; `--learn-fresh`
/// starts over.
#[test]
fn learn_extends_a_policy_and_keeps_it_when_the_command_did_not_start() {
    let w = World::new();
    let policy = w.dir.join("tool.toml");
    let dns = format!("--dns={WORLD_DNS}");
    let path = policy.to_str().unwrap();
    let learn =
        |flag: &str, script: &str| w.moat(&["run", &dns, flag, path, "--", "sh", "-c", script], T);
    let one = "curl -sS -m 5 -o /dev/null http://api.example.test:8080/one && echo one-ok";
    let two = "curl -sS -m 5 -o /dev/null http://other.example.test:8080/two && echo two-ok";
    let out = learn("--learn", one);
    assert!(stdout(&out).contains("one-ok"), "{}", stderr(&out));
    // The user's own note in the file stays.
    let mut first = std::fs::read_to_string(&policy).unwrap();
    first.push_str("\n# my note: reviewed\n");
    std::fs::write(&policy, &first).unwrap();

    // A typo: the command is not found, nothing ran. The file is kept, and moat says so.
    for typo in ["--learn", "--learn-fresh"] {
        let out = w.moat(
            &["run", &dns, typo, path, "--", "./no-such-installer.sh"],
            T,
        );
        assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
        assert!(stderr(&out).contains("kept as it was"), "{}", stderr(&out));
        assert_eq!(std::fs::read_to_string(&policy).unwrap(), first);
    }

    // A second run adds its rule and keeps the first, the note too.
    let out = learn("--learn", two);
    assert!(stdout(&out).contains("two-ok"), "{}", stderr(&out));
    assert!(stderr(&out).contains("added 1 rule"), "{}", stderr(&out));
    let both = std::fs::read_to_string(&policy).unwrap();
    assert!(both.starts_with(&first), "{both}");
    assert!(both.contains("# my note: reviewed"), "{both}");
    assert!(
        both.contains("destination = \"other.example.test\""),
        "{both}"
    );
    let check = w.moat(&["policy", "check", path], T);
    assert!(check.status.success(), "{}", stderr(&check));
    // Under it, both runs' traffic passes.
    let policy_arg = format!("--policy={path}");
    let out = w.moat(
        &[
            "run",
            &dns,
            &policy_arg,
            "--",
            "sh",
            "-c",
            &format!("{one}; {two}"),
        ],
        T,
    );
    assert!(
        stdout(&out).contains("one-ok") && stdout(&out).contains("two-ok"),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );

    // The same run again adds nothing and changes nothing.
    let out = learn("--learn", one);
    assert!(stderr(&out).contains("added 0 rules"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), both);

    // --learn-fresh starts over: only this run's rule.
    let out = learn("--learn-fresh", two);
    assert!(stdout(&out).contains("two-ok"), "{}", stderr(&out));
    let fresh = std::fs::read_to_string(&policy).unwrap();
    assert!(
        !fresh.contains("api.example.test") && !fresh.contains("my note"),
        "{fresh}"
    );
    assert!(
        fresh.contains("destination = \"other.example.test\""),
        "{fresh}"
    );

    // A command line with control characters still makes a policy moat reads back (the
    // comments that carry it hold none).
    let out = learn("--learn-fresh", &format!("{two} # \u{1b}[31m\rX"));
    assert!(stdout(&out).contains("two-ok"), "{}", stderr(&out));
    let check = w.moat(&["policy", "check", path], T);
    assert!(check.status.success(), "{}", stderr(&check));

    // A file that is not a policy is not extended: refused before the run.
    std::fs::write(&policy, "not = [a policy").unwrap();
    let out = learn("--learn", one);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(stderr(&out).contains("--learn-fresh"), "{}", stderr(&out));
    assert!(!stdout(&out).contains("one-ok"), "the command ran");
}

#[test]
fn learn_writes_through_no_link_the_sandbox_planted() {
    let w = World::new();
    let work = w.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    // Host files the sandbox cannot see, and would like moat (root) to overwrite.
    let victim = w.dir.join("victim-temp");
    let victim_final = w.dir.join("victim-final");
    std::fs::write(&victim, "host file\n").unwrap();
    std::fs::write(&victim_final, "host file\n").unwrap();
    // The sandbox waits for moat's pid (the test hands it over), plants links at the
    // temporary name moat used to derive from it and at the final name, then makes a
    // connection for moat to learn.
    let script = format!(
        "echo ready; i=0; while [ ! -s pid ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
         p=$(cat pid); ln -s {} tool.moat-learn-$p; ln -s {} tool.toml; \
         curl -sS -m 5 -o /dev/null http://api.example.test:8080/one && echo one-ok",
        victim.display(),
        victim_final.display()
    );
    let dns = format!("--dns={WORLD_DNS}");
    let mut cmd = w.in_host(moat_e2e::moat_bin());
    cmd.current_dir(&work).args([
        "run",
        &dns,
        "-w",
        ".",
        "--learn",
        "tool.toml",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let (mut running, first) = moat_e2e::Running::start(cmd);
    assert_eq!(first, "ready");
    std::fs::write(work.join("pid"), running.id().to_string()).unwrap();
    let (status, rest) = running.wait(T);
    assert!(rest.contains("one-ok"), "{rest}");
    assert!(status.success(), "{status:?}");
    // Neither host file was touched...
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file\n");
    assert_eq!(
        std::fs::read_to_string(&victim_final).unwrap(),
        "host file\n"
    );
    assert!(
        std::fs::symlink_metadata(work.join(format!("tool.moat-learn-{}", running.id())))
            .is_ok_and(|m| m.is_symlink()),
        "the planted link was made (the attempt was real) and left alone"
    );
    // ...and the policy is where it was asked for, a file of its own (the control).
    let learned = work.join("tool.toml");
    assert!(std::fs::symlink_metadata(&learned).unwrap().is_file());
    let text = std::fs::read_to_string(&learned).unwrap();
    assert!(
        text.contains("destination = \"api.example.test\""),
        "{text}"
    );
}

#[test]
fn learn_refuses_a_directory_the_sandbox_swapped_for_a_link() {
    let w = World::new();
    let work = w.dir.join("work");
    std::fs::create_dir_all(work.join("sub")).unwrap();
    let elsewhere = w.dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    // The sandbox moves the learned policy's directory aside and puts a link to a host
    // directory in its place.
    let script = format!(
        "curl -sS -m 5 -o /dev/null http://api.example.test:8080/one && echo one-ok; \
         mv sub sub.old && ln -s {} sub && echo swapped",
        elsewhere.display()
    );
    let dns = format!("--dns={WORLD_DNS}");
    let mut cmd = w.in_host(moat_e2e::moat_bin());
    cmd.current_dir(&work).args([
        "run",
        &dns,
        "-w",
        ".",
        "--learn",
        "sub/tool.toml",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let out = moat_e2e::run_with_timeout(cmd, T);
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(
        text.contains("one-ok") && text.contains("swapped"),
        "{text}\n{err}"
    );
    // Nothing went through the link, nor into the directory moved aside: moat says why.
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(work.join("sub.old")).unwrap().count(), 0);
    assert!(err.contains("no longer the directory opened"), "{err}");
    assert_eq!(out.status.code(), Some(125), "{err}");
}

/// The suggestion at the end works when followed: the flags moat prints for what the
/// policy denied, added to the same command line, let the same run through.
#[test]
fn the_suggested_allow_works_when_followed() {
    let w = World::new();
    let dns = format!("--dns={WORLD_DNS}");
    let script = "curl -sS -m 3 -o /dev/null http://203.0.113.11:8080/s && echo fetched; true";
    let out = w.moat(
        &[
            "run",
            &dns,
            "--policy",
            "none",
            "--allow",
            "api.example.test",
            "--",
            "sh",
            "-c",
            script,
        ],
        T,
    );
    assert!(!stdout(&out).contains("fetched"), "{}", stdout(&out));
    let err = stderr(&out);
    let line = err
        .lines()
        .find_map(|l| l.split("to allow what was denied: ").nth(1))
        .unwrap_or_else(|| panic!("no suggestion: {err}"));
    let mut args = vec![
        "run",
        dns.as_str(),
        "--policy",
        "none",
        "--allow",
        "api.example.test",
    ];
    args.extend(line.split_whitespace());
    args.extend(["--", "sh", "-c", script]);
    let out = w.moat(&args, T);
    assert!(
        stdout(&out).contains("fetched"),
        "{args:?}: {}",
        stderr(&out)
    );
}

#[test]
fn after_a_server_name_sent_to_another_names_address_the_hint_works_when_followed() {
    // The client looks up api.example.test and sends its TLS hello to that address naming
    // other.example.test (as a program with its own resolver or a pinned address does).
    // A rule for other.example.test cannot allow that (a name rule holds only where DNS
    // answered for the name), and api.example.test is allowed already: the hint is the
    // address, and the refusal says why.
    let w = World::new();
    let dns = format!("--dns={WORLD_DNS}");
    let ca = w.dir.join("world-ca.pem").to_str().unwrap().to_owned();
    let script = "dig +short api.example.test >/dev/null; \
        curl -4 -sS -m 10 -o /dev/null -w 'status %{http_code}\\n' \
        --connect-to other.example.test:8443:api.example.test:8443 https://other.example.test:8443/fronted; true";
    let base = [
        "run",
        dns.as_str(),
        "--policy",
        "none",
        "--allow",
        "api.example.test:8443/tcp",
        "--tls-intercept",
        "--tls-port",
        "8443",
        "--tls-upstream-ca",
        ca.as_str(),
    ];
    let mut args = base.to_vec();
    args.extend(["--", "sh", "-c", script]);
    let out = w.moat(&args, T);
    let err = stderr(&out);
    assert!(!stdout(&out).contains("status 200"), "{}", stdout(&out));
    assert!(
        err.contains("other.example.test was sent to 203.0.113.10, an address DNS answered for api.example.test, not for it"),
        "{err}"
    );
    let line = err
        .lines()
        .find_map(|l| l.split("to allow what was denied: ").nth(1))
        .unwrap_or_else(|| panic!("no suggestion: {err}"));
    assert_eq!(line.trim(), "--allow 203.0.113.10:8443/tcp", "{err}");
    assert_eq!(
        std::fs::read_to_string(w.log_path())
            .unwrap_or_default()
            .matches("/fronted")
            .count(),
        0,
        "the refused request reached the world"
    );
    // Followed: the same command with the suggested flags gets through.
    let mut args = base.to_vec();
    args.extend(line.split_whitespace());
    args.extend(["--", "sh", "-c", script]);
    let out = w.moat(&args, T);
    assert!(
        stdout(&out).contains("status 200"),
        "{args:?}: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(w.log_path())
            .unwrap_or_default()
            .matches("/fronted")
            .count(),
        1
    );
}
