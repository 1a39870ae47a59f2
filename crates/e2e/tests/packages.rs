//! Package tools end to end with moat's defaults: pip and npm fetch a package from the
//! world's registries (a PEP 503 index and an npm registry, world.py) through the sandbox's
//! network (npm writing its cache under the sandbox's HOME).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::time::Duration;

use moat_e2e::{WORLD_DNS, World, stderr, stdout};

const T: Duration = Duration::from_secs(120);

#[test]
fn pip_and_npm_fetch_from_registries_with_the_defaults() {
    let w = World::new();
    let script = r#"
cd /tmp
/usr/bin/python3 -m pip download --no-deps --disable-pip-version-check \
  --index-url http://api.example.test:8080/simple/ --trusted-host api.example.test \
  -d /tmp/dl demo-pkg >/tmp/pip.log 2>&1 || tail -5 /tmp/pip.log
ls /tmp/dl
mkdir -p /tmp/proj && cd /tmp/proj
npm install --registry http://api.example.test:8080/npm/ demo-pkg --no-audit --no-fund \
  --loglevel=error >/tmp/npm.log 2>&1 || tail -5 /tmp/npm.log
node -e 'console.log("npm-ok", require("demo-pkg"))'
ls -d "$HOME/.npm" >/dev/null 2>&1 && echo npm-cache-in-home
"#;
    let out = w.moat(
        &[
            "run",
            &format!("--dns={WORLD_DNS}"),
            "--",
            "sh",
            "-c",
            script,
        ],
        T,
    );
    let text = stdout(&out);
    assert!(
        text.contains("demo_pkg-1.0-py3-none-any.whl"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(text.contains("npm-ok 42"), "{text}\n{}", stderr(&out));
    assert!(text.contains("npm-cache-in-home"), "{text}");
    // The files came from the world's registries, through moat.
    let served: Vec<String> = w
        .log()
        .iter()
        .filter(|l| l["server"] == "packages")
        .filter_map(|l| l["path"].as_str().map(str::to_owned))
        .collect();
    assert!(
        served
            .iter()
            .any(|p| p == "/packages/demo_pkg-1.0-py3-none-any.whl"),
        "{served:?}"
    );
    assert!(
        served
            .iter()
            .any(|p| p == "/npm/demo-pkg/-/demo-pkg-1.0.0.tgz"),
        "{served:?}"
    );
}
