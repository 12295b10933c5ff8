//! Running external programs (`cluster-backup.sh`, `crictl`, `crio`, `oc`, `podman`, `ostree`):
//! one careful helper instead of scattered `Command`s.
//!
//! Every run has a timeout (the program and everything it started are killed when it expires),
//! a retry budget, its exit code checked, and the tail of its stdout and stderr kept: logged,
//! returned for the journal, and put into the error.
//!
//! Two runners behind [`Programs`]: [`Runner`] runs a program as a child of this process (in
//! its own process group), for hosts without systemd and for tests;
//! [`super::transient::TransientUnits`] runs it in a transient systemd unit of its own, with
//! the sandbox [`Tool`] names, so that the daemon's unit need not allow what the tools need.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::AsyncReadExt;

pub use super::sandbox::Tool;

/// How much of each output stream is kept for messages.
const TAIL: usize = 4096;
/// The most stdout kept for parsing (JSON listings are far smaller).
const STDOUT_CAP: usize = 64 << 20;

#[derive(Debug, Clone)]
pub struct CommandSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    /// Further attempts after a failure (not after a timeout of a non-idempotent program:
    /// callers decide by setting this).
    pub retries: u32,
    pub retry_delay: Duration,
    /// Which tool this is: its sandbox when it runs in a unit of its own.
    pub tool: Tool,
    /// The working directory (`/` when unset).
    pub cwd: Option<PathBuf>,
}

impl CommandSpec {
    pub fn new(program: impl Into<PathBuf>, timeout: Duration) -> CommandSpec {
        CommandSpec {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            timeout,
            retries: 0,
            retry_delay: Duration::from_secs(1),
            tool: Tool::Other,
            cwd: None,
        }
    }

    /// The tool this is (its sandbox in a transient unit).
    pub fn tool(mut self, tool: Tool) -> CommandSpec {
        self.tool = tool;
        self
    }

    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> CommandSpec {
        self.cwd = Some(dir.into());
        self
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> CommandSpec {
        self.args.push(a.into());
        self
    }

    pub(crate) fn args<I, A>(mut self, args: I) -> CommandSpec
    where
        I: IntoIterator<Item = A>,
        A: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> CommandSpec {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn retries(mut self, n: u32, delay: Duration) -> CommandSpec {
        self.retries = n;
        self.retry_delay = delay;
        self
    }

    /// The command line, for messages.
    pub(crate) fn display(&self) -> String {
        let mut s = self.program.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

#[derive(Debug, Clone)]
pub struct CommandOutput {
    pub stdout: Vec<u8>,
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub attempts: u32,
    pub duration: Duration,
    /// The transient unit it ran in, if it ran in one.
    pub unit: Option<String>,
}

impl CommandOutput {
    /// One line for the journal: the last lines of output.
    pub fn summary(&self) -> String {
        let out = last_lines(&self.stdout_tail, 3);
        let err = last_lines(&self.stderr_tail, 3);
        let mut s = format!("in {:.1}s", self.duration.as_secs_f64());
        if self.attempts > 1 {
            s.push_str(&format!(" after {} attempts", self.attempts));
        }
        if let Some(unit) = &self.unit {
            s.push_str(&format!(" in {unit}"));
        }
        if !out.is_empty() {
            s.push_str(&format!("; stdout: {out}"));
        }
        if !err.is_empty() {
            s.push_str(&format!("; stderr: {err}"));
        }
        s
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{command}: cannot run it: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error(
        "{command}: no result after {timeout:?} (attempt {attempt}); killed it. stderr: {stderr}"
    )]
    Timeout {
        command: String,
        timeout: Duration,
        attempt: u32,
        stderr: String,
    },
    #[error("{command}: exited with {status} (attempt {attempt}). stderr: {stderr}{stdout}")]
    Failed {
        command: String,
        status: String,
        attempt: u32,
        stderr: String,
        stdout: String,
    },
}

impl CommandError {
    /// A program that ran and failed: its status and the tails of what it wrote.
    pub(super) fn failed(
        command: String,
        status: String,
        attempt: u32,
        out: &[u8],
        err: &[u8],
    ) -> CommandError {
        let stdout = tail_of(out);
        CommandError::Failed {
            command,
            status,
            attempt,
            stderr: tail_of(err),
            stdout: if stdout.is_empty() {
                String::new()
            } else {
                format!("; stdout: {stdout}")
            },
        }
    }
}

/// Runs external programs. A trait so that plans can be tested with a recording runner.
#[async_trait]
pub trait Programs: Send + Sync {
    async fn run(&self, spec: &CommandSpec) -> Result<CommandOutput, CommandError>;
}

/// The real runner.
#[derive(Debug, Default)]
pub struct Runner;

pub(super) fn tail_of(buf: &[u8]) -> String {
    let start = buf.len().saturating_sub(TAIL);
    String::from_utf8_lossy(&buf[start..]).trim().to_string()
}

/// Read a stream to its end. `tail_only` keeps only the last bytes (stderr); otherwise the
/// first `STDOUT_CAP` bytes are kept (stdout, parsed by callers).
pub(super) async fn read_stream(
    mut r: impl tokio::io::AsyncRead + Unpin,
    tail_only: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) if tail_only => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > 2 * TAIL {
                    out.drain(..out.len() - TAIL);
                }
            }
            Ok(n) => {
                let room = STDOUT_CAP.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    out
}

impl Runner {
    async fn once(
        &self,
        spec: &CommandSpec,
        attempt: u32,
    ) -> Result<(Vec<u8>, Vec<u8>), CommandError> {
        let command = spec.display();
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so that a timeout kills what it started too.
            .process_group(0)
            .current_dir(spec.cwd.as_deref().unwrap_or("/".as_ref()));
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|source| CommandError::Spawn {
            command: command.clone(),
            source,
        })?;
        let pid = child.id();
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let out_task = tokio::spawn(read_stream(stdout, false));
        let err_task = tokio::spawn(read_stream(stderr, true));
        let status = match tokio::time::timeout(spec.timeout, child.wait()).await {
            Ok(s) => s.map_err(|source| CommandError::Spawn {
                command: command.clone(),
                source,
            })?,
            Err(_) => {
                if let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.kill().await;
                let err = err_task.await.unwrap_or_default();
                out_task.abort();
                return Err(CommandError::Timeout {
                    command,
                    timeout: spec.timeout,
                    attempt,
                    stderr: tail_of(&err),
                });
            }
        };
        let out = out_task.await.unwrap_or_default();
        let err = err_task.await.unwrap_or_default();
        if !status.success() {
            return Err(CommandError::failed(
                command,
                status.to_string(),
                attempt,
                &out,
                &err,
            ));
        }
        Ok((out, err))
    }
}

#[async_trait]
impl Programs for Runner {
    async fn run(&self, spec: &CommandSpec) -> Result<CommandOutput, CommandError> {
        with_retries(spec, |attempt| async move {
            let (out, err) = self.once(spec, attempt).await?;
            Ok((out, err, None))
        })
        .await
    }
}

/// One attempt's stdout, stderr and the unit it ran in.
pub(super) type Attempt = (Vec<u8>, Vec<u8>, Option<String>);

/// Run `once` until it succeeds, the retries are spent, or the program cannot be started.
pub(super) async fn with_retries<F, Fut>(
    spec: &CommandSpec,
    once: F,
) -> Result<CommandOutput, CommandError>
where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = Result<Attempt, CommandError>>,
{
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        tracing::debug!("running {}", spec.display());
        match once(attempt).await {
            Ok((out, err, unit)) => {
                return Ok(CommandOutput {
                    stdout_tail: tail_of(&out),
                    stderr_tail: tail_of(&err),
                    stdout: out,
                    attempts: attempt,
                    duration: started.elapsed(),
                    unit,
                });
            }
            Err(e @ CommandError::Spawn { .. }) => return Err(e),
            Err(e) if attempt > spec.retries => return Err(e),
            Err(e) => {
                tracing::warn!("{e}; retrying in {:?}", spec.retry_delay);
                tokio::time::sleep(spec.retry_delay).await;
            }
        }
    }
}
