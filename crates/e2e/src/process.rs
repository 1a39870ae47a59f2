//! Processes a test starts and bounds: run to completion within a time, kept in the
//! background and ended (SIGTERM, then SIGKILL) when the test ends, and their memory.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The resident memory of process `pid` in KiB, or `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The highest resident memory of process `pid` in KiB, sampled every 50 ms until it
/// exits or `limit` passes.
pub fn peak_rss_kib(pid: u32, limit: Duration) -> u64 {
    let (mut peak, start) = (0, Instant::now());
    while let Some(kib) = rss_kib(pid) {
        peak = peak.max(kib);
        if start.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    peak
}

/// A `moat` process running in the background, ended (SIGTERM, then SIGKILL) on drop.
pub struct Background {
    pub(crate) child: Child,
}

impl Background {
    /// A process started by the caller (stdout and stderr piped), ended on drop.
    pub fn from_child(child: Child) -> Background {
        Background { child }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most 15 s) until `file` exists (a moat's `--ready-file`), failing the test
    /// with what the process printed when it does not appear.
    pub fn ready(self, file: &std::path::Path) -> Background {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !file.exists() {
            if Instant::now() > deadline {
                let out = self.finish();
                panic!(
                    "{} did not appear: {}{}",
                    file.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self
    }

    /// Whether the process ends by itself within `limit`.
    pub fn exits_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Ends the process and returns what it printed.
    pub fn finish(mut self) -> Output {
        let status = end(&mut self.child).unwrap();
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_end(&mut stdout);
        }
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_end(&mut stderr);
        }
        Output {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = end(&mut self.child);
    }
}

/// Ends `child` as a user would, with SIGTERM, so a moat cleans up (its state directory,
/// its control groups); SIGKILL after 15 s.
pub(crate) fn end(child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
    // Already reaped (finish, wait): its pid may be another process's by now.
    if let Ok(Some(status)) = child.try_wait() {
        return Ok(status);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait()
}

/// Runs `cmd` with piped output, killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_output(child, timeout)
}

/// Collects the piped output of `child`, killing it after `timeout`.
pub fn wait_output(mut child: Child, timeout: Duration) -> Output {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// Stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A process started in the background for a test, ended if the test ends early (a failed
/// assertion must not leave it holding the test's pipes).
pub struct Running {
    child: Child,
    stdout: Option<BufReader<std::process::ChildStdout>>,
}

impl Running {
    /// Starts `cmd` with stdout piped (stdin and stderr closed) and returns it with the
    /// first line it printed.
    pub fn start(mut cmd: Command) -> (Running, String) {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut running = Running {
            child,
            stdout: None,
        };
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        running.stdout = Some(reader);
        (running, line.trim().to_owned())
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit (failing the test after `limit`) and returns its
    /// status and the rest of what it printed.
    pub fn wait(&mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = String::new();
        if let Some(mut r) = self.stdout.take() {
            let _ = r.read_to_string(&mut rest);
        }
        (status, rest)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = end(&mut self.child);
    }
}
