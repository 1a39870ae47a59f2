//! The Rust API of shared/API.md §1–2: [`Sandbox::builder`] (see `builder.rs` for the
//! builders), `exec`, `spawn`, `fs` and `stop`.
//!
//! A program that creates sandboxes must call [`init`] first thing in `main`: the sandbox's
//! supervisor is that same program started again, and `init` is where it takes over.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use moat_engine::EngineHandle;
use moat_sandbox::SpawnSpec;

use crate::builder::Started;
pub use crate::builder::{NetworkBuilder, SandboxBuilder};

pub use moat_engine::DenyMode;
pub use moat_sandbox::ExitStatus;

/// Takes over when this process was started as a sandbox supervisor (it then never
/// returns). Call it first in `main` of any program that creates sandboxes.
pub fn init() {
    if let Some(code) = moat_sandbox::supervisor_entry() {
        std::process::exit(code);
    }
}

/// Why a sandbox operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The sandbox name is not `[a-z0-9_-]{1,63}`.
    #[error("invalid sandbox name {0:?}: expected 1-63 characters of a-z, 0-9, - and _")]
    Name(String),
    /// The policy is invalid.
    #[error(transparent)]
    Policy(#[from] moat_policy::PolicyError),
    /// Building, running or talking to the sandbox failed.
    #[error(transparent)]
    Sandbox(#[from] moat_sandbox::SandboxError),
    /// A port could not be published.
    #[error(transparent)]
    Publish(#[from] crate::publish::PublishError),
    /// A secret is unusable.
    #[error(transparent)]
    Secret(#[from] moat_engine::SecretError),
    /// TLS interception could not be set up.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A path could not be granted.
    #[error(transparent)]
    Grant(#[from] crate::setup::GrantError),
    /// The audit log could not be opened.
    #[error("audit log {}: cannot open for appending: {source}", path.display())]
    Audit {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The audit log's file was refused or could not be opened (a link, not a regular
    /// file, its directory unusable).
    #[error("audit log: {0}")]
    AuditFile(#[source] moat_sandbox::HostFileError),
    /// Under `audit_required`, the audit log could not be written: the sandbox was not
    /// started, or was stopped.
    #[error("{0}")]
    AuditFailed(String),
    /// A network namespace cannot be served ([`SandboxBuilder::attach`]).
    #[error(transparent)]
    Attach(#[from] moat_sandbox::netns::AttachError),
    /// An I/O operation on moat's side failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

pub(crate) fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// Where audit events go.
pub enum AuditSink {
    /// Append JSON lines to a file.
    File(PathBuf),
    /// Write JSON lines to standard error.
    Stderr,
    /// Write JSON lines to any writer.
    Writer(Box<dyn Write + Send>),
}

impl AuditSink {
    /// Append to `path`.
    pub fn file(path: impl Into<PathBuf>) -> AuditSink {
        AuditSink::File(path.into())
    }

    /// Opens the sink. A file is opened through the one door for files moat writes on
    /// the host (its directory as a descriptor, the name never followed if a link: see
    /// moat_sandbox's `host_file.rs`), and refused where the sandbox could write it: inside
    /// one of `writable` (the work directory and `rw` grants, files or directories), or
    /// with another name (a hard link) that could be.
    pub(crate) fn open(self, writable: &[&Path]) -> Result<moat_engine::AuditOut, Error> {
        use moat_engine::AuditOut;
        use std::os::unix::fs::MetadataExt;
        let path = match self {
            AuditSink::File(path) => path,
            AuditSink::Stderr => return Ok(AuditOut::Stream(Box::new(io::stderr()))),
            AuditSink::Writer(w) => return Ok(AuditOut::Stream(w)),
        };
        let file = moat_sandbox::HostFile::open(&path).map_err(Error::AuditFile)?;
        // The name as it resolves now (its directory's links followed), against grants
        // with theirs followed: a log named through a link, or a grant of the log file
        // itself, is caught.
        let real = file.real_path().unwrap_or_else(|_| file.path());
        for grant in writable {
            let canonical = grant.canonicalize().unwrap_or_else(|_| grant.to_path_buf());
            if real.starts_with(&canonical) {
                return Err(refused(format!(
                    "{} is {}{}, which the sandbox can write: the code it audits could rewrite it; put the log elsewhere",
                    path.display(),
                    // A grant of the log file itself, or of a directory above it.
                    if real == canonical { "" } else { "inside " },
                    grant.display()
                )));
            }
        }
        let opened = file.append(0o666).map_err(Error::AuditFile)?;
        let links = opened.metadata().map(|m| m.nlink()).unwrap_or(1);
        if links > 1 {
            return Err(refused(format!(
                "{} has {links} names (hard links): another could be inside a directory the sandbox can write; give a file of its own",
                path.display()
            )));
        }
        Ok(AuditOut::File(opened))
    }
}

fn refused(message: String) -> Error {
    Error::Io {
        what: "place the audit log",
        source: io::Error::new(io::ErrorKind::InvalidInput, message),
    }
}

/// A running sandbox (shared/API.md §1). Stopping it, or dropping it, kills everything
/// inside and removes its state.
pub struct Sandbox {
    inner: Arc<Mutex<Option<moat_sandbox::Sandbox>>>,
    engine: Mutex<Option<EngineHandle>>,
    /// The audit log, for the run's `end` (written once, at stop).
    audit: Mutex<Option<moat_engine::AuditLog>>,
    env: Vec<(OsString, OsString)>,
    workdir: PathBuf,
}

/// What a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// How it ended (a non-zero exit is not an error).
    pub status: ExitStatus,
    /// Everything it wrote to standard output.
    pub stdout: Vec<u8>,
    /// Everything it wrote to standard error.
    pub stderr: Vec<u8>,
}

/// Under `BlockAndTerminate`, stops the sandbox (everything in it is killed; later calls
/// say it was stopped) as soon as the engine asks; ends with the sandbox.
fn watch_for_termination(
    inner: std::sync::Weak<Mutex<Option<moat_sandbox::Sandbox>>>,
    terminate: moat_engine::Terminate,
) {
    let _ = std::thread::Builder::new()
        .name("moat-terminate".into())
        .spawn(move || {
            while let Some(inner) = inner.upgrade() {
                if terminate.requested().is_some() {
                    if let Some(sandbox) = lock(&inner).take() {
                        let _ = sandbox.stop();
                    }
                    return;
                }
                drop(inner);
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
}

fn lock(
    inner: &Mutex<Option<moat_sandbox::Sandbox>>,
) -> MutexGuard<'_, Option<moat_sandbox::Sandbox>> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

fn stopped() -> Error {
    Error::Io {
        what: "use the sandbox",
        source: io::Error::new(io::ErrorKind::NotConnected, "the sandbox was stopped"),
    }
}

impl Sandbox {
    /// Starts building a sandbox named `name` (`[a-z0-9_-]{1,63}`, also its host name).
    pub fn builder(name: impl Into<String>) -> SandboxBuilder {
        SandboxBuilder::new(name.into())
    }

    /// A started sandbox as the API's handle.
    pub(crate) fn from_parts(started: Started) -> Sandbox {
        let inner = Arc::new(Mutex::new(Some(started.sandbox)));
        if started.stop_on_violation {
            watch_for_termination(Arc::downgrade(&inner), started.terminate);
        }
        Sandbox {
            inner,
            engine: Mutex::new(started.engine),
            audit: Mutex::new(Some(started.audit)),
            env: started.env,
            workdir: started.workdir,
        }
    }

    fn spec(&self, program: &str, args: &[&str]) -> SpawnSpec {
        let argv = std::iter::once(program)
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        SpawnSpec::new(argv, self.env.clone(), self.workdir.clone())
    }

    /// Runs a command to completion and collects its output.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = self.spawn(program, &arg_refs)?;
        drop(child.stdin.take());
        let mut out_pipe = child.stdout.take();
        let mut err_pipe = child.stderr.take();
        let err_thread = std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(p) = err_pipe.as_mut() {
                let _ = p.read_to_end(&mut v);
            }
            v
        });
        let mut stdout = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            p.read_to_end(&mut stdout)
                .map_err(io_err("read the command's output"))?;
        }
        let stderr = err_thread.join().unwrap_or_default();
        let status = child.wait()?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Starts a command with piped standard streams.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<Child, Error> {
        let (in_r, in_w) = pipe()?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let spec = self.spec(program, args);
        let pid = {
            let mut guard = lock(&self.inner);
            let sandbox = guard.as_mut().ok_or_else(stopped)?;
            sandbox.spawn(spec, &[in_r.as_fd(), out_w.as_fd(), err_w.as_fd()])?
        };
        Ok(Child {
            pid,
            sandbox: self.inner.clone(),
            stdin: Some(std::fs::File::from(in_w)),
            stdout: Some(std::fs::File::from(out_r)),
            stderr: Some(std::fs::File::from(err_r)),
        })
    }

    /// File operations inside the sandbox's view.
    pub fn fs(&self) -> Fs<'_> {
        Fs { sandbox: self }
    }

    /// Kills everything inside, stops the engine and removes the sandbox's state.
    pub fn stop(&self) -> Result<(), Error> {
        let engine = self.engine.lock().unwrap_or_else(|e| e.into_inner()).take();
        let counters = engine.and_then(|e| e.stop().ok()).unwrap_or_default();
        let audit = self.audit.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(audit) = &audit {
            crate::builder::audit_end(audit, None, &counters);
        }
        if let Some(sandbox) = lock(&self.inner).take() {
            sandbox.stop()?;
        }
        // Under `audit_required`, a record with a hole in it is an error, not a success.
        match audit.filter(moat_engine::AuditLog::halted) {
            Some(audit) => Err(Error::AuditFailed(format!(
                "the audit log could not be written ({}) and it is required (audit_required): the sandbox was stopped",
                audit.loss().unwrap_or_default()
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::Io {
        what: "create a pipe",
        source: e.into(),
    })
}

/// A command started with [`Sandbox::spawn`].
pub struct Child {
    pid: i32,
    sandbox: Arc<Mutex<Option<moat_sandbox::Sandbox>>>,
    /// The command's standard input.
    pub stdin: Option<std::fs::File>,
    /// The command's standard output.
    pub stdout: Option<std::fs::File>,
    /// The command's standard error.
    pub stderr: Option<std::fs::File>,
}

impl Child {
    /// The command's pid, in moat's pid namespace.
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the command.
    pub fn signal(&self, signal: i32) -> Result<(), Error> {
        let mut guard = lock(&self.sandbox);
        guard
            .as_mut()
            .ok_or_else(stopped)?
            .signal(self.pid, signal)?;
        Ok(())
    }

    /// Waits for the command to end.
    pub fn wait(&mut self) -> Result<ExitStatus, Error> {
        drop(self.stdin.take());
        let mut guard = lock(&self.sandbox);
        Ok(guard.as_mut().ok_or_else(stopped)?.wait(self.pid)?)
    }
}

/// File operations inside a sandbox, as its commands see the files.
pub struct Fs<'a> {
    sandbox: &'a Sandbox,
}

impl Fs<'_> {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut moat_sandbox::Sandbox) -> Result<T, moat_sandbox::SandboxError>,
    ) -> Result<T, Error> {
        let mut guard = lock(&self.sandbox.inner);
        Ok(f(guard.as_mut().ok_or_else(stopped)?)?)
    }

    /// Reads a whole file.
    pub fn read(&self, path: impl AsRef<Path>) -> Result<Vec<u8>, Error> {
        self.with(|s| s.read_file(path))
    }

    /// Creates or replaces a file.
    pub fn write(&self, path: impl AsRef<Path>, data: impl AsRef<[u8]>) -> Result<(), Error> {
        self.with(|s| s.write_file(path, data.as_ref()))
    }

    /// Lists a directory (sorted names).
    pub fn list(&self, path: impl AsRef<Path>) -> Result<Vec<OsString>, Error> {
        self.with(|s| s.list(path))
    }

    /// Removes a file or an empty directory.
    pub fn remove(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        self.with(|s| s.remove(path))
    }
}
