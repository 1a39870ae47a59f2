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

/// Nothing that cannot work, or that hands the sandbox more than it seems, passes without a
/// word: a grant of the caller's home (or a directory holding it) is refused, naming the
/// secrets it would expose and how to grant less; a secret no request moat reads could
/// carry is refused, saying what to add; under `--policy none` the summary says there was
/// no interface and how to see what the command wanted. Each refusal's neighbour runs.
#[test]
fn refusals_say_what_would_be_exposed_and_what_to_add() {
    let dir = scratch("home");
    let home = dir.join("home");
    let project = home.join("project");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::create_dir_all(&project).unwrap();
    let (home_s, project_s) = (home.to_str().unwrap(), project.to_str().unwrap());
    let env = [("HOME", home_s), ("API_KEY", "a-value-of-the-secret")];
    for flags in [
        ["-w", home_s],
        ["--rw", home_s],
        ["--ro", home_s],
        ["--ro", dir.to_str().unwrap()],
    ] {
        let mut args = vec!["run", "--policy", "none"];
        args.extend_from_slice(&flags);
        args.extend_from_slice(&["--", "true"]);
        let out = moat(&args, &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{flags:?}: {err}");
        assert!(
            err.contains("your home directory") && err.contains(".ssh"),
            "{flags:?}: {err}"
        );
        assert!(err.contains(&format!("-w {home_s}/PROJECT")), "{err}");
    }
    // Control: a project inside the home is fine.
    let out = moat(
        &[
            "run", "--quiet", "--policy", "none", "-w", project_s, "--", "true",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let secret = ["--secret", "API_KEY@api.example.test"];
    let cases: [(&[&str], &str); 2] = [
        (&[], "add --tls-intercept"),
        (
            &["--tls-intercept", "--tls-bypass", "*.example.test"],
            "bypassed",
        ),
    ];
    for (flags, says) in cases {
        let mut args = vec!["run"];
        args.extend_from_slice(&secret);
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "true"]);
        let out = moat(&args, &env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{flags:?}: {err}");
        assert!(
            err.contains("could never be substituted") && err.contains(says),
            "{err}"
        );
    }
    // Controls: with interception, or plain HTTP allowed, the same secret starts.
    for flags in [
        &["--tls-intercept"][..],
        &["--secret-plain-http", "API_KEY"][..],
        &["--tls-intercept", "--tls-bypass", "www.example.test"][..],
    ] {
        // With a network (the default policy), where the check applies; nothing is dialled.
        let mut args = vec!["run", "--quiet"];
        args.extend_from_slice(&secret);
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "true"]);
        let out = moat(&args, &env);
        assert_eq!(out.status.code(), Some(0), "{flags:?}: {}", stderr(&out));
    }

    // A grant whose path is itself a link (left by an earlier run in a work directory) is
    // refused, naming where it points; the target granted as itself is fine.
    let link = project.join("vendor");
    let target = dir.join("elsewhere");
    std::fs::create_dir_all(&target).unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for flag in ["--rw", "--ro", "-w"] {
        let out = moat(
            &[
                "run",
                "--policy",
                "none",
                flag,
                link.to_str().unwrap(),
                "--",
                "true",
            ],
            &env,
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{flag}: {err}");
        assert!(
            err.contains("a symbolic link") && err.contains(target.to_str().unwrap()),
            "{err}"
        );
    }
    let out = moat(
        &[
            "run",
            "--quiet",
            "--policy",
            "none",
            "--rw",
            target.to_str().unwrap(),
            "--",
            "true",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // --policy none: the summary says why nothing was seen, and what to do.
    let out = moat(&["run", "--policy", "none", "--", "true"], &env);
    let err = stderr(&out);
    assert!(
        err.contains("no network interface") && err.contains("--learn"),
        "{err}"
    );
    // Nothing written: no word about discarding.
    assert!(!err.contains("discarded"), "{err}");

    // What the command wrote to its own work directory and /tmp is gone at the end: said,
    // with the amount and how to keep it.
    let out = moat(
        &[
            "run",
            "--policy",
            "none",
            "--",
            "sh",
            "-c",
            "head -c 2500000 /dev/zero > /workspace/out; head -c 600000 /dev/zero > /tmp/t",
        ],
        &env,
    );
    let err = stderr(&out);
    assert!(
        err.contains("3.0 MiB written to the sandbox's own /workspace, /tmp")
            && err.contains("discarded; -w DIR keeps"),
        "{err}"
    );
    // With -w, the work directory's files stay on the host and are not counted.
    let out = moat(
        &[
            "run",
            "--policy",
            "none",
            "-w",
            project_s,
            "--",
            "sh",
            "-c",
            "head -c 2500000 /dev/zero > out",
        ],
        &env,
    );
    assert!(!stderr(&out).contains("discarded"), "{}", stderr(&out));
    assert_eq!(
        std::fs::metadata(project.join("out")).unwrap().len(),
        2_500_000
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Every hint moat prints about where a program is works when followed: a tool under the
/// caller's home that runs files beside it (a version manager's shim) gets the grant of
/// the home's directory that holds both, a `./script` gets `-w .`, and a name that is
/// another program inside than on the host is said once, with the grant that shows the
/// host's. Each hint is followed here, and the run then does what was meant.
#[test]
fn hints_about_programs_work_when_followed() {
    let dir = scratch("hints");
    let home = dir.join("home");
    let manager = home.join(".fakemgr");
    std::fs::create_dir_all(manager.join("bin")).unwrap();
    std::fs::create_dir_all(manager.join("versions/1/bin")).unwrap();
    let shim = manager.join("bin/python3");
    let real = manager.join("versions/1/bin/real");
    std::fs::write(
        &shim,
        format!("#!/bin/sh\nexec {} \"$@\"\n", real.display()),
    )
    .unwrap();
    std::fs::write(&real, "#!/bin/sh\necho HOSTS-OWN-PYTHON\n").unwrap();
    let project = dir.join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(project.join("install.sh"), "#!/bin/sh\necho INSTALLED\n").unwrap();
    for f in [&shim, &real, &project.join("install.sh")] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        manager.join("bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env = [("HOME", home.to_str().unwrap()), ("PATH", path.as_str())];
    // The hint's grants, as printed: "... add --ro A --ro B" or "(--ro A shows ...)".
    let grants_in = |text: &str| -> Vec<String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0].trim_start_matches('(') == "--ro")
            .map(|w| w[1].trim_end_matches([')', ',']).to_owned())
            .collect()
    };

    // A name: inside it would be /usr/bin/python3; moat says so, and its grant shows the
    // host's.
    let out = moat(
        &[
            "run",
            "--quiet",
            "--policy",
            "none",
            "--",
            "python3",
            "-c",
            "print('SYSTEM')",
        ],
        &env,
    );
    let err = stderr(&out);
    assert!(stdout(&out).contains("SYSTEM"), "{err}");
    assert!(
        err.contains("python3 is") && err.contains("on the host"),
        "{err}"
    );
    let grants = grants_in(&err);
    assert_eq!(grants, vec![manager.display().to_string()], "{err}");
    let mut args = vec!["run", "--quiet", "--policy", "none", "--ro", &grants[0]];
    args.extend(["--", "python3"]);
    let out = moat(&args, &env);
    assert!(
        stdout(&out).contains("HOSTS-OWN-PYTHON"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("on the host"), "{}", stderr(&out));

    // Its path: not found inside; the hint names the manager's directory, not only bin/.
    let shim_s = shim.to_str().unwrap();
    let out = moat(&["run", "--quiet", "--policy", "none", "--", shim_s], &env);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    let grants = grants_in(&stderr(&out));
    assert_eq!(
        grants,
        vec![manager.display().to_string()],
        "{}",
        stderr(&out)
    );
    let out = moat(
        &[
            "run", "--quiet", "--policy", "none", "--ro", &grants[0], "--", shim_s,
        ],
        &env,
    );
    assert!(
        stdout(&out).contains("HOSTS-OWN-PYTHON"),
        "{}",
        stderr(&out)
    );

    // ./install.sh from the project directory: -w . as the hint says.
    let run_here = |args: &[&str]| {
        let mut cmd = Command::new(moat_bin());
        cmd.current_dir(&project).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_with_timeout(cmd, T)
    };
    let out = run_here(&["run", "--quiet", "--policy", "none", "--", "./install.sh"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(stderr(&out).contains("add -w ."), "{}", stderr(&out));
    let out = run_here(&[
        "run",
        "--quiet",
        "--policy",
        "none",
        "-w",
        ".",
        "--",
        "./install.sh",
    ]);
    assert!(stdout(&out).contains("INSTALLED"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(dir);
}

/// The machine's own rustup layout (CI's cargo is a rustup proxy under the caller's home):
/// `cargo` inside is not found, the hint names `~/.cargo` and `~/.rustup` (the proxy runs a
/// toolchain from the second), and followed, cargo and rustc run and build.
#[test]
fn the_hint_for_a_rustup_proxy_works_when_followed() {
    let home = std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default());
    let proxy = home.join(".cargo/bin/cargo");
    if !proxy.exists() || !home.join(".rustup").is_dir() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs cargo through rustup under {}: the layout is missing",
            home.display()
        );
        eprintln!("skipped: no rustup layout under {}", home.display());
        return;
    }
    let path = format!(
        "{}:/usr/local/bin:/usr/bin:/bin",
        home.join(".cargo/bin").display()
    );
    let env = [("PATH", path.as_str())];
    let out = moat(
        &[
            "run",
            "--quiet",
            "--policy",
            "none",
            "--",
            "cargo",
            "--version",
        ],
        &env,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(127), "{err}");
    let hint = err
        .split("add ")
        .nth(1)
        .unwrap_or_else(|| panic!("no hint: {err}"))
        .lines()
        .next()
        .unwrap()
        .to_owned();
    let cargo_dir = home.join(".cargo").display().to_string();
    let rustup_dir = home.join(".rustup").display().to_string();
    assert_eq!(
        hint.split_whitespace().collect::<Vec<_>>(),
        ["--ro", cargo_dir.as_str(), "--ro", rustup_dir.as_str()],
        "{err}"
    );
    // Followed: a crate is made, built offline and run inside.
    let script = "cd /tmp && cargo new -q hello && cd hello && cargo build -q --offline && ./target/debug/hello && rustc --version";
    let mut args = vec!["run", "--quiet", "--policy", "none"];
    args.extend(hint.split_whitespace());
    args.extend(["--", "sh", "-c", script]);
    let out = moat(&args, &env);
    let text = stdout(&out);
    assert!(
        text.contains("Hello, world!") && text.contains("rustc 1."),
        "{text}\n{}",
        stderr(&out)
    );
}
