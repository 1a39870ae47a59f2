//! Every command line the README shows is run by a test as written (issue 27 §3).
//!
//! The test reads README.md itself and takes the command lines of its fenced blocks: in a
//! shell block (`sh`, `bash`, `shell`, `console`) every line that is not blank or a
//! comment, in any other block the lines that start with `moat `; each without its
//! trailing `# comment`. Each line must have a fixture here, keyed by the exact line, or be
//! listed as covered elsewhere; a line without one fails the test, naming the line, so a new
//! README example cannot go untested (and a fixture whose line the README no longer shows
//! fails too). A fixture runs its line through `sh -c` exactly as written, in the host
//! namespace of a [`World`], with `moat` on `PATH` meaning the binary under test, and checks
//! what the line's comment says it does. Synopses with placeholders are run with each
//! placeholder filled by a concrete value (see [`fill`]).
//!
//! The world serves the README's names: example.com and api.example.com answer
//! 203.0.113.20, where 443 is the world's HTTPS echo with a certificate from the world's
//! CA, and the host namespace's system trust store holds that CA ([`World::trust_world_ca`]),
//! as a real host's holds the public CAs: `curl https://example.com` inside a sandbox
//! verifies it with no flag. moat finds the world's DNS as it finds any host's, through
//! `/etc/resolv.conf` (the World's `/etc/netns` file); no line gets a `--dns`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use moat_e2e::{Scratch, World, rules_of, stderr, stdout, validate_event};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

/// Where the README's names live in the world (world.py's `README_HTTPS`).
const README_ADDR: &str = "203.0.113.20";

/// What a fixture gets: the world, and the README's text.
struct Cx {
    w: World,
    readme: String,
}

type Fixture = fn(&Cx, &str);

/// The README's command lines and the fixture that runs each, keyed by the exact line
/// (trailing comment stripped).
const FIXTURES: &[(&str, Fixture)] = &[
    ("moat run -- curl https://example.com", run_curl),
    (
        "moat run -w . --policy none --allow api.example.com:443/tcp -- ./agent",
        run_agent,
    ),
    ("moat run --audit ../audit.jsonl -w . -- make", run_make),
    ("moat run -w . --learn tool.toml -- ./install.sh", run_learn),
    ("moat policy check policy.toml", policy_check),
    (
        "moat policy explain POLICY --to ADDR[:PORT][/PROTO] [--domain NAME] [--sni NAME] [--inbound]",
        policy_explain,
    ),
    ("moat selftest", selftest),
    (
        "moat netns create agents --policy policy.toml",
        podman_netns,
    ),
    (
        "moat attach --pid \"$(podman inspect -f '{{.State.Pid}}' job)\" --resolv-conf resolv.conf --policy policy.toml",
        podman_attach,
    ),
];

/// Command lines the README shows that other tests run, and which.
const ELSEWHERE: &[(&str, &str)] = &[
    (
        "kubectl apply -k deploy/kubernetes",
        "there is no cluster here: tests/cni_runtimes.rs sets a node up with `moat cni install` from exactly these manifests' files (and holds the manifests to them), then runs containerd and Podman on it",
    ),
    (
        "cargo run --release -p moat -- demo",
        "tests/demo.rs runs `moat demo` and checks the decisions it shows",
    ),
    (
        "scripts/test",
        "CI runs it (.ci/run); it is the command that runs this test",
    ),
    (
        "podman run --rm --network ns:/run/netns/agents --dns 10.0.2.2 IMAGE COMMAND",
        "run as written, in order, by the fixture of `moat netns create agents ...`",
    ),
    (
        "moat netns rm agents",
        "run as written, in order, by the fixture of `moat netns create agents ...`",
    ),
    (
        "touch resolv.conf",
        "run as written, in order, by the fixture of `moat attach --pid ...`",
    ),
    (
        "podman run -d --name job --network none -v \"$PWD/resolv.conf:/etc/resolv.conf:ro\" IMAGE COMMAND",
        "run as written, in order, by the fixture of `moat attach --pid ...`",
    ),
];

fn readme_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")
}

fn read_readme() -> String {
    std::fs::read_to_string(readme_path()).unwrap()
}

/// The fenced blocks of a Markdown text: (info string, first line number, lines).
fn blocks(text: &str) -> Vec<(String, usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut open: Option<(String, usize, Vec<String>)> = None;
    for (i, line) in text.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (fence, open.take()) {
            (Some(info), None) => open = Some((info.trim().to_owned(), i + 2, Vec::new())),
            (Some(_), Some(block)) => out.push(block),
            (None, Some(mut block)) => {
                block.2.push(line.to_owned());
                open = Some(block);
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "README.md: a fenced block is never closed");
    out
}

/// A line without its trailing `# comment` (a `#` after white space), trimmed.
fn strip_comment(line: &str) -> &str {
    let cut = line
        .char_indices()
        .find(|&(i, c)| c == '#' && (i == 0 || line[..i].ends_with(char::is_whitespace)))
        .map_or(line.len(), |(i, _)| i);
    line[..cut].trim()
}

/// The README's command lines, with their line numbers (see the module header).
fn command_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (info, first, lines) in blocks(text) {
        let shell = ["sh", "bash", "shell", "console"].contains(&info.as_str());
        for (k, line) in lines.iter().enumerate() {
            let cmd = strip_comment(line);
            if cmd.is_empty() || !(shell || cmd.starts_with("moat ")) {
                continue;
            }
            out.push((first + k, cmd.to_owned()));
        }
    }
    out
}

/// The README's example policy: the one TOML block.
fn example_policy(readme: &str) -> String {
    let toml: Vec<_> = blocks(readme)
        .into_iter()
        .filter(|(info, _, _)| info == "toml")
        .collect();
    assert_eq!(
        toml.len(),
        1,
        "README.md: expected one TOML block (the example policy)"
    );
    toml[0].2.join("\n") + "\n"
}

/// A synopsis with its placeholders filled: each `(placeholder, value)` must occur in the
/// line (an optional `[...]` part filled with "" is left out), and no `[`, `]` or
/// upper-case placeholder may be left over.
fn fill(line: &str, values: &[(&str, &str)]) -> String {
    let mut out = line.to_owned();
    for (placeholder, value) in values {
        assert!(
            out.contains(placeholder),
            "the README's synopsis has no {placeholder}: {line}"
        );
        out = out.replacen(placeholder, value, 1);
    }
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        !out.contains(['[', ']'])
            && !out
                .split_whitespace()
                .any(|w| w.len() > 1 && w.chars().all(|c| c.is_ascii_uppercase())),
        "a placeholder of the synopsis is left unfilled: {out}"
    );
    out
}

/// Runs a command line as written, through `sh -c`, in the host namespace, in `cwd`, with
/// `moat` on `PATH` meaning the binary under test.
fn run_line(w: &World, line: &str, cwd: &Path) -> Output {
    assert!(line.starts_with("moat "), "{line}");
    let path = format!(
        "{}:{}",
        w.moat_on_path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    w.run_in_host(&["sh", "-c", line], cwd, &[("PATH", &path)], T)
}

/// `out` failed: what to show.
fn show(line: &str, out: &Output) -> String {
    format!(
        "`{line}`: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    )
}

/// The world's log lines from `since` on, without its DNS server's.
fn arrivals(w: &World, since: usize) -> Vec<Value> {
    w.log()
        .into_iter()
        .skip(since)
        .filter(|l| !l["server"].as_str().is_some_and(|s| s.starts_with("dns")))
        .collect()
}

/// The names the world's DNS server was asked from `since` on.
fn asked(w: &World, since: usize) -> Vec<String> {
    w.log()
        .into_iter()
        .skip(since)
        .filter(|l| l["server"] == "dns")
        .filter_map(|l| l["name"].as_str().map(str::to_owned))
        .collect()
}

/// An HTTPS request that arrived at the README's address on 443 for `host` and `path`.
fn is_https_to(l: &Value, host: &str, path: &str) -> bool {
    l["server"] == "https"
        && l["host"] == host
        && l["sni"] == host
        && l["path"] == path
        && l["port"] == 443
        && l["local"]
            .as_str()
            .is_some_and(|a| a.trim_start_matches("::ffff:") == README_ADDR)
}

/// Writes an executable script.
fn script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The README block that holds `line`, its command lines in order.
fn block_of(readme: &str, line: &str) -> Vec<String> {
    let block = blocks(readme)
        .into_iter()
        .find(|(_, _, lines)| lines.iter().any(|l| strip_comment(l) == line))
        .expect("the line's block");
    block
        .2
        .iter()
        .map(|l| strip_comment(l).to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// What the README's Podman examples run in their containers: an allowed request
/// (`*.example.com:443` in the README's policy), then one to an address the policy does not
/// allow.
fn container_command(path: &str) -> String {
    format!(
        "sh -c 'n=0; until grep -q nameserver /etc/resolv.conf || test $n -gt 100; do n=$((n+1)); sleep 0.1; done; \
         curl -sk -m 10 -o /dev/null -w \"allowed %{{http_code}}\\n\" https://api.example.com{path}; \
         curl -sS -m 3 -o /dev/null http://203.0.113.10{path}-denied; echo \"denied exit $?\"'"
    )
}

/// Runs the lines of a README block in order, as written (placeholders filled), in one
/// shell in the host namespace, with Podman set up for this machine; then `after`.
fn run_block(cx: &Cx, lines: &[String], fills: &[(&str, &str)], dir: &Path, after: &str) -> Output {
    let podman = moat_e2e::podman::Podman::get().unwrap();
    let conf = podman.containers_conf(dir);
    let script: Vec<String> = lines
        .iter()
        .map(|l| {
            if l.contains("IMAGE") {
                fill(l, fills)
            } else {
                l.clone()
            }
        })
        .collect();
    let script = format!("{}\n{after}", script.join("\n"));
    let path = format!(
        "{}:{}",
        cx.w.moat_on_path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The host namespace as `ip netns exec` gives it (the world's resolver over
    // /etc/resolv.conf, in a mount namespace of its own), but keeping /sys as it is:
    // Podman's runtime finds the control groups there.
    let resolv = format!("/etc/netns/{}/resolv.conf", cx.w.host);
    let mut c = std::process::Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", cx.w.host))
        .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$1\" /etc/resolv.conf && exec sh -c \"$2\"")
        .args(["sh", &resolv, &script])
        .current_dir(dir)
        .env("PATH", &path)
        .env("CONTAINERS_CONF", &conf);
    moat_e2e::run_with_timeout(c, T)
}

/// `moat netns create agents --policy policy.toml`, then a container in it, then `moat
/// netns rm agents`: the container reaches what the policy allows and nothing else, and
/// `rm` prints the summary and removes the namespace.
fn podman_netns(cx: &Cx, line: &str) {
    if moat_e2e::podman::podman_or_skip().is_none() {
        return;
    }
    let w = &cx.w;
    let dir = Scratch::new("readme-netns");
    std::fs::write(dir.path("policy.toml"), example_policy(&cx.readme)).unwrap();
    let lines = block_of(&cx.readme, line);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let since = w.log().len();
    let command = container_command("/readme-netns");
    let out = run_block(
        cx,
        &lines,
        &[("IMAGE", moat_e2e::podman::IMAGE), ("COMMAND", &command)],
        &dir.dir,
        "test ! -e /run/netns/agents && echo removed",
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{}", show(line, &out));
    assert!(text.contains("/run/netns/agents"), "{}", show(line, &out));
    assert!(text.contains("allowed 200"), "{}", show(line, &out));
    assert!(
        text.contains("denied exit") && !text.contains("denied exit 0"),
        "{}",
        show(line, &out)
    );
    assert!(text.contains("removed"), "{}", show(line, &out));
    assert!(
        stderr(&out).contains("moat: run "),
        "no summary: {}",
        show(line, &out)
    );
    let got = arrivals(w, since);
    assert!(
        got.len() == 1 && got[0]["path"] == "/readme-netns",
        "the world saw {got:?}"
    );
}

/// `touch resolv.conf`, a container without a network, and `moat attach --pid ...`: moat
/// writes the resolver, the container reaches what the policy allows and nothing else, and
/// moat ends with its summary when the container does.
fn podman_attach(cx: &Cx, line: &str) {
    let Some(podman) = moat_e2e::podman::podman_or_skip() else {
        return;
    };
    let w = &cx.w;
    let dir = Scratch::new("readme-attach");
    std::fs::write(dir.path("policy.toml"), example_policy(&cx.readme)).unwrap();
    let lines = block_of(&cx.readme, line);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let _ = podman.run(&["rm", "-f", "-t", "0", "job"], T);
    let since = w.log().len();
    let command = container_command("/readme-attach");
    let out = run_block(
        cx,
        &lines,
        &[("IMAGE", moat_e2e::podman::IMAGE), ("COMMAND", &command)],
        &dir.dir,
        "echo \"attach exit $?\"; podman logs job; podman rm -f -t 0 job >/dev/null",
    );
    let text = stdout(&out);
    assert!(text.contains("attach exit 0"), "{}", show(line, &out));
    assert!(text.contains("allowed 200"), "{}", show(line, &out));
    assert!(
        text.contains("denied exit") && !text.contains("denied exit 0"),
        "{}",
        show(line, &out)
    );
    assert!(
        stderr(&out).contains("its last process is gone") && stderr(&out).contains("moat: run "),
        "{}",
        show(line, &out)
    );
    let got = arrivals(w, since);
    assert!(
        got.len() == 1 && got[0]["path"] == "/readme-attach",
        "the world saw {got:?}"
    );
}

/// `# default policy: public_only` — curl reaches example.com over HTTPS, verified against
/// the host's trust store, allowed by public_only's default.
fn run_curl(cx: &Cx, line: &str) {
    let w = &cx.w;
    let dir = Scratch::new("readme-curl");
    let since = w.log().len();
    let out = run_line(w, line, &dir.dir);
    assert!(out.status.success(), "{}", show(line, &out));
    let got = arrivals(w, since);
    assert!(
        got.len() == 1 && is_https_to(&got[0], "example.com", "/"),
        "the world saw {got:?}\n{}",
        show(line, &out)
    );
    // What curl printed is the world's answer to it.
    assert!(
        stdout(&out).contains("\"host\": \"example.com\""),
        "{}",
        show(line, &out)
    );
    // public_only: allowed by its default (no rule of it names a public address).
    assert!(
        stderr(&out).contains("allowed  example.com:443/tcp (rule default)"),
        "{}",
        show(line, &out)
    );
}

/// `# deny by default` — the one allowed name works; another name (looked up, and on the
/// very same address) and an address the rule does not name are refused and reach nothing.
fn run_agent(cx: &Cx, line: &str) {
    let w = &cx.w;
    let dir = Scratch::new("readme-agent");
    script(
        &dir.path("agent"),
        &format!(
            "#!/bin/sh\n\
             curl -sS -m 10 -o api.json -w 'api %{{http_code}}\\n' https://api.example.com/agent\n\
             curl -sS -m 3 -o /dev/null https://example.com/by-name && echo reached example.com\n\
             curl -sS -m 3 -o /dev/null --resolve example.com:443:{README_ADDR} https://example.com/by-address \
               && echo reached example.com by its address\n\
             curl -sS -m 3 -o /dev/null http://203.0.113.10/ && echo reached 203.0.113.10\n\
             echo agent done\n"
        ),
    );
    let since = w.log().len();
    let out = run_line(w, line, &dir.dir);
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "{}", show(line, &out));
    assert!(
        text.contains("api 200") && text.contains("agent done"),
        "{}",
        show(line, &out)
    );
    assert!(!text.contains("reached"), "{}", show(line, &out));
    // `-w .`: what it fetched is in the directory on the host.
    let fetched = std::fs::read_to_string(dir.path("api.json")).unwrap_or_default();
    assert!(
        fetched.contains("\"host\": \"api.example.com\""),
        "{fetched}"
    );
    // The world saw the allowed request and nothing else; the refused name was never
    // even asked of its DNS.
    let got = arrivals(w, since);
    assert!(
        got.len() == 1 && is_https_to(&got[0], "api.example.com", "/agent"),
        "the world saw {got:?}\n{}",
        show(line, &out)
    );
    let names = asked(w, since);
    assert!(
        names.contains(&"api.example.com".to_owned()) && !names.contains(&"example.com".to_owned()),
        "the world's DNS was asked {names:?}"
    );
    // The summary says what the default denied: the other name's lookup, its TLS
    // connection to the allowed name's address, and the address; and that the sandbox
    // had a network (`--allow` gives `--policy none` an interface).
    for (what, why) in [
        ("refused  lookup of example.com", "(policy)"),
        (
            "denied   example.com:443/tcp",
            "TLS server name example.com: no rule matched; default deny \
             (example.com was sent to 203.0.113.20, an address DNS answered for api.example.com, not for it)",
        ),
        (
            "denied   203.0.113.10:80/tcp",
            "no rule matched; default deny",
        ),
        ("allowed  api.example.com:443/tcp", "(rule 0)"),
    ] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("moat:   {what}")) && l.ends_with(why)),
            "no {what:?} ... {why:?}: {}",
            show(line, &out)
        );
    }
    assert!(
        !err.contains("no network interface"),
        "{}",
        show(line, &out)
    );
}

/// `# audit log (outside what the sandbox may write); current dir writable` — make writes
/// a file and fetches one through `-w .`; the log in the parent directory holds the run,
/// and what the build wrote to `../audit.jsonl` inside did not reach it.
fn run_make(cx: &Cx, line: &str) {
    let w = &cx.w;
    let parent = Scratch::new("readme-make");
    let dir = parent.path("project");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("Makefile"),
        "all:\n\
         \techo built > built.txt\n\
         \tcurl -sS -m 10 -o fetched.json https://api.example.com/make\n\
         \t-echo '{\"event\":\"forged\"}' >> ../audit.jsonl\n",
    )
    .unwrap();
    let since = w.log().len();
    let out = run_line(w, line, &dir);
    assert!(out.status.success(), "{}", show(line, &out));
    assert_eq!(
        std::fs::read_to_string(dir.join("built.txt")).unwrap_or_default(),
        "built\n",
        "{}",
        show(line, &out)
    );
    let fetched = std::fs::read_to_string(dir.join("fetched.json")).unwrap_or_default();
    assert!(
        fetched.contains("\"host\": \"api.example.com\""),
        "{fetched}"
    );
    let got = arrivals(w, since);
    assert!(
        got.len() == 1 && is_https_to(&got[0], "api.example.com", "/make"),
        "the world saw {got:?}"
    );
    let log = std::fs::read_to_string(parent.path("audit.jsonl"))
        .unwrap_or_else(|e| panic!("../audit.jsonl: {e}\n{}", show(line, &out)));
    let events: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for e in &events {
        validate_event(e).unwrap_or_else(|why| panic!("{why}: {e}"));
    }
    assert_eq!(
        events.first().map(|e| &e["event"]),
        Some(&"start".into()),
        "{log}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "connect"
            && e["decision"] == "allow"
            && e["dst"] == README_ADDR
            && e["port"] == 443
            && e["domain"] == "api.example.com"),
        "{log}"
    );
    let end = events.last().unwrap();
    assert!(end["event"] == "end" && end["exit_status"] == 0, "{log}");
}

/// `# write the policy a tool needs` — the learned file has a rule for the name the tool
/// used, checks, and replays the tool under the README's next line.
fn run_learn(cx: &Cx, line: &str) {
    let w = &cx.w;
    let dir = Scratch::new("readme-learn");
    script(
        &dir.path("install.sh"),
        "#!/bin/sh\ncurl -sS -m 10 -o payload.json https://api.example.com/install && echo installed\n",
    );
    let since = w.log().len();
    let out = run_line(w, line, &dir.dir);
    assert!(
        out.status.success() && stdout(&out).contains("installed"),
        "{}",
        show(line, &out)
    );
    let policy = std::fs::read_to_string(dir.path("tool.toml"))
        .unwrap_or_else(|e| panic!("tool.toml: {e}\n{}", show(line, &out)));
    let rules = rules_of(&policy);
    assert!(
        rules.contains("default_action = \"deny\"")
            && rules.contains("destination = \"api.example.com\"")
            && rules.contains("443"),
        "{policy}"
    );
    // What the README says to do with it next, each as it is written there.
    for next in [
        "moat policy check tool.toml",
        "moat run -w . --policy tool.toml -- ./install.sh",
    ] {
        assert!(
            cx.readme.contains(&format!("`{next}`")),
            "the README no longer says `{next}`"
        );
        let out = run_line(w, next, &dir.dir);
        assert!(out.status.success(), "{}\n{policy}", show(next, &out));
        if next.contains("run") {
            assert!(stdout(&out).contains("installed"), "{}", show(next, &out));
        } else {
            assert!(
                stdout(&out).contains("allow outbound api.example.com:443/tcp"),
                "{}",
                show(next, &out)
            );
        }
    }
    let got = arrivals(w, since);
    assert!(
        got.len() == 2
            && got
                .iter()
                .all(|l| is_https_to(l, "api.example.com", "/install")),
        "the world saw {got:?}"
    );
}

/// `# validate; print the normalized rules` — on the README's example policy.
fn policy_check(cx: &Cx, line: &str) {
    let dir = Scratch::new("readme-check");
    std::fs::write(dir.path("policy.toml"), example_policy(&cx.readme)).unwrap();
    let out = run_line(&cx.w, line, &dir.dir);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", show(line, &out));
    assert!(
        text.contains("policy.toml: ok: 1 rule, default deny")
            && text.contains("0  allow outbound *.example.com:443/tcp")
            && text.contains("deny (no rule matched)"),
        "{}",
        show(line, &out)
    );
    // A broken policy is not validated.
    std::fs::write(dir.path("policy.toml"), "default_action = \"maybe\"\n").unwrap();
    let out = run_line(&cx.w, line, &dir.dir);
    assert!(!out.status.success(), "{}", show(line, &out));
}

/// The synopsis, run with its placeholders filled: POLICY is the README's example policy
/// (policy.toml); ADDR[:PORT][/PROTO] is 203.0.113.20:443/tcp; NAME is api.example.com,
/// or example.org for a name the policy does not allow; `[--inbound]` is given or left
/// out. Each instance must show the decision the policy makes.
fn policy_explain(cx: &Cx, line: &str) {
    let dir = Scratch::new("readme-explain");
    std::fs::write(dir.path("policy.toml"), example_policy(&cx.readme)).unwrap();
    let to = "203.0.113.20:443/tcp";
    let cases: [(&str, &str, &str, &str); 3] = [
        (
            "--domain api.example.com",
            "--sni api.example.com",
            "",
            "decision: allow\nrule:     0\n",
        ),
        (
            "--domain api.example.com",
            "",
            "--inbound",
            "decision: deny\nrule:     default\n",
        ),
        (
            "--domain example.org",
            "--sni example.org",
            "",
            "decision: deny\nrule:     default\n",
        ),
    ];
    for (domain, sni, inbound, want) in cases {
        let instance = fill(
            line,
            &[
                ("POLICY", "policy.toml"),
                ("ADDR[:PORT][/PROTO]", to),
                ("[--domain NAME]", domain),
                ("[--sni NAME]", sni),
                ("[--inbound]", inbound),
            ],
        );
        let out = run_line(&cx.w, &instance, &dir.dir);
        assert!(out.status.success(), "{}", show(&instance, &out));
        assert!(stdout(&out).starts_with(want), "{}", show(&instance, &out));
    }
}

/// `# one line per probe, what this host lacks, a total` — and nothing leaked.
fn selftest(cx: &Cx, line: &str) {
    let dir = Scratch::new("readme-selftest");
    let out = run_line(&cx.w, line, &dir.dir);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", show(line, &out));
    let verdicts = ["held ", "LEAK ", "skipped ", "failed "];
    let probes = text
        .lines()
        .filter(|l| verdicts.iter().any(|v| l.starts_with(v)))
        .count();
    assert!(
        text.lines().any(|l| l.starts_with("lacks ")),
        "{}",
        show(line, &out)
    );
    let total = text.lines().last().unwrap_or_default();
    let want = format!("{probes} probes in ");
    assert!(
        probes > 0
            && total.starts_with(&want)
            && total.contains(&format!(": {probes} held, 0 leaked, 0 skipped, 0 failed")),
        "{}",
        show(line, &out)
    );
}

#[test]
fn every_readme_command_line_has_a_fixture() {
    let readme = read_readme();
    let lines = command_lines(&readme);
    let known =
        |l: &str| FIXTURES.iter().any(|(k, _)| *k == l) || ELSEWHERE.iter().any(|(k, _)| *k == l);
    let missing: Vec<String> = lines
        .iter()
        .filter(|(_, l)| !known(l))
        .map(|(n, l)| format!("README.md:{n}: `{l}` needs a fixture in crates/e2e/tests/readme.rs"))
        .collect();
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    let stale: Vec<&str> = FIXTURES
        .iter()
        .map(|(k, _)| *k)
        .chain(ELSEWHERE.iter().map(|(k, _)| *k))
        .filter(|k| !lines.iter().any(|(_, l)| l == k))
        .collect();
    assert!(
        stale.is_empty(),
        "fixtures for lines README.md no longer shows: {stale:?}"
    );
}

#[test]
fn every_readme_command_line_does_what_its_comment_says() {
    let readme = read_readme();
    let lines = command_lines(&readme);
    let w = World::new();
    w.trust_world_ca();
    let cx = Cx { w, readme };
    let mut failed = Vec::new();
    let mut ran = 0;
    for (n, line) in &lines {
        if let Some((_, why)) = ELSEWHERE.iter().find(|(k, _)| k == line) {
            eprintln!("README.md:{n}: `{line}`: covered elsewhere: {why}");
            continue;
        }
        let Some((_, fixture)) = FIXTURES.iter().find(|(k, _)| k == line) else {
            failed.push(format!("README.md:{n}: `{line}` needs a fixture"));
            continue;
        };
        eprintln!("README.md:{n}: `{line}`");
        ran += 1;
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| fixture(&cx, line))) {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failed.push(format!("README.md:{n}: `{line}`: {why}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
    assert_eq!(ran, FIXTURES.len(), "every fixture ran");
}
