//! The Unix socket API at `/run/recoveryd/recoveryd.sock`, for the backup Job in its pod:
//! newline-delimited JSON. One request per connection; progress events while a run goes on
//! (with `"wait": true`), then one result line.
//!
//! ```text
//! -> {"op":"backup","wait":true}
//! <- {"event":"step_started","run":12,"stage":"preflight","step":"preflight",...}
//! <- {"ok":true,"run":12,"state":"succeeded","phase":"Succeeded","message":"..."}
//! ```
//! A malformed, oversized or unknown request, or a caller that is not root (SO_PEERCRED), gets
//! `{"ok":false,"error":{"name":"org.recoveryd.Recovery1.Error.InvalidArgs","message":"..."}}`
//! and the connection is closed. Nothing a client sends can stop the daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::manager::{ApiError, DaemonEvent, RecoverOptions, RunManager};
use crate::journal::RunState;
use crate::status::phase;

/// The longest request accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A request. Every op is a struct variant, even those without fields: serde checks
/// `deny_unknown_fields` only on fields it reads, so a unit variant would accept
/// `{"op":"cancel","now":true}`.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status {},
    Backup {
        #[serde(default)]
        wait: bool,
    },
    Recover {
        #[serde(default)]
        force: bool,
        #[serde(default)]
        allow_foreign: bool,
        #[serde(default)]
        step: bool,
        #[serde(default)]
        generation: Option<String>,
        #[serde(default)]
        wait: bool,
    },
    Resume {
        #[serde(default)]
        boot: bool,
        #[serde(default)]
        wait: bool,
    },
    Restart {
        #[serde(default)]
        wait: bool,
    },
    Cancel {},
}

impl Request {
    fn mutating(&self) -> bool {
        !matches!(self, Request::Status {})
    }
}

fn error_line(e: &ApiError) -> String {
    serde_json::json!({"ok": false, "error": {"name": e.name(), "message": e.to_string()}})
        .to_string()
}

/// Bind the socket (mode 0600) when systemd did not hand us one.
pub fn bind(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing a stale {}", path.display()));
        }
        _ => {}
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

pub async fn serve(
    listener: std::os::unix::net::UnixListener,
    manager: Arc<RunManager>,
    shutdown: CancellationToken,
) {
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::error!("socket API unavailable: {e}");
        return;
    }
    let listener = match UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("socket API unavailable: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let m = manager.clone();
                    tokio::spawn(async move {
                        if let Err(e) = client(stream, m).await {
                            tracing::debug!("socket client: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn read_request(stream: &mut BufReader<UnixStream>) -> Result<Request, ApiError> {
    let mut line = Vec::new();
    let mut limited = (&mut *stream).take(MAX_REQUEST as u64 + 1);
    let read = limited.read_until(b'\n', &mut line);
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Err(_) => {
            return Err(ApiError::InvalidArgs(format!(
                "no request within {}s",
                REQUEST_TIMEOUT.as_secs()
            )));
        }
        Ok(Err(e)) => return Err(ApiError::InvalidArgs(format!("reading the request: {e}"))),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST {
        return Err(ApiError::InvalidArgs(format!(
            "request longer than {MAX_REQUEST} bytes"
        )));
    }
    let text = std::str::from_utf8(&line)
        .map_err(|_| ApiError::InvalidArgs("request is not UTF-8".into()))?;
    if text.trim().is_empty() {
        return Err(ApiError::InvalidArgs("empty request".into()));
    }
    serde_json::from_str(text.trim())
        .map_err(|e| ApiError::InvalidArgs(format!("bad request: {e}")))
}

async fn send(w: &mut UnixStream, line: &str) -> std::io::Result<()> {
    w.write_all(line.as_bytes()).await?;
    w.write_all(b"\n").await?;
    w.flush().await
}

async fn client(stream: UnixStream, manager: Arc<RunManager>) -> std::io::Result<()> {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let mut reader = BufReader::new(stream);
    let request = read_request(&mut reader).await;
    let mut stream = reader.into_inner();
    let request = match request {
        Ok(r) => r,
        Err(e) => return send(&mut stream, &error_line(&e)).await,
    };
    if request.mutating() && uid != Some(0) {
        let e = ApiError::AccessDenied(format!(
            "only root may change anything (caller uid {})",
            uid.map(|u| u.to_string())
                .unwrap_or_else(|| "unknown".into())
        ));
        tracing::warn!("socket: {e}");
        return send(&mut stream, &error_line(&e)).await;
    }
    // Subscribe before starting, so that no event of the new run is missed.
    let mut events = manager.events.subscribe();
    let (started, wait) = match request {
        Request::Status {} => {
            let line = match manager.status() {
                Ok(s) => {
                    let mut v = serde_json::to_value(&s).unwrap_or_default();
                    v["ok"] = true.into();
                    v["state"] = manager.state().into();
                    v.to_string()
                }
                Err(e) => error_line(&e),
            };
            return send(&mut stream, &line).await;
        }
        Request::Cancel {} => {
            let line = match manager.cancel() {
                Ok(m) => serde_json::json!({"ok": true, "message": m}).to_string(),
                Err(e) => error_line(&e),
            };
            return send(&mut stream, &line).await;
        }
        Request::Backup { wait } => (manager.start_backup().map(Some), wait),
        Request::Recover {
            force,
            allow_foreign,
            step,
            generation,
            wait,
        } => (
            manager
                .start_recovery(RecoverOptions {
                    force,
                    allow_foreign,
                    step,
                    generation,
                })
                .map(Some),
            wait,
        ),
        Request::Resume { boot, wait } => (manager.resume(boot), wait),
        Request::Restart { wait } => (manager.restart().map(Some), wait),
    };
    let run = match started {
        Ok(Some(run)) => run,
        Ok(None) => {
            return send(
                &mut stream,
                &serde_json::json!({"ok": true, "run": null, "message": "nothing to resume"})
                    .to_string(),
            )
            .await;
        }
        Err(e) => return send(&mut stream, &error_line(&e)).await,
    };
    if !wait {
        return send(
            &mut stream,
            &serde_json::json!({"ok": true, "run": run, "state": "running"}).to_string(),
        )
        .await;
    }
    // Stream this run's events until it ends. A client that goes away does not stop the run.
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            // Events were dropped (a slow client), possibly the end of the run: if the run is
            // no longer executing, its outcome is in the journal.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => DaemonEvent::Idle,
            Err(_) => return Ok(()),
        };
        if ev.run() != run {
            if manager.current().is_none_or(|(r, _)| r != run)
                && let Ok(Some(r)) = manager.journal.run(run)
            {
                let message = r.error.clone().unwrap_or_default();
                let result = result_line(run, r.state, phase(r.kind, r.state), message);
                return send(&mut stream, &result).await;
            }
            continue;
        }
        let line = serde_json::to_string(&ev).unwrap_or_default();
        if let DaemonEvent::RunFinished {
            run,
            state,
            phase,
            message,
            ..
        } = ev
        {
            send(&mut stream, &line).await?;
            return send(&mut stream, &result_line(run, state, phase, message)).await;
        }
        if matches!(ev, DaemonEvent::StepProgress { .. }) {
            continue;
        }
        send(&mut stream, &line).await?;
    }
}

/// The last line of a waiting request: the run's outcome.
fn result_line(run: i64, state: RunState, phase: String, message: String) -> String {
    let ok = matches!(
        state,
        RunState::Succeeded | RunState::AwaitingReboot | RunState::Paused
    );
    serde_json::json!({"ok": ok, "run": run, "state": state, "phase": phase, "message": message})
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::Request;

    fn parse(s: &str) -> Result<Request, String> {
        serde_json::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn every_op_refuses_unknown_fields() {
        for op in ["status", "backup", "recover", "resume", "restart", "cancel"] {
            let good = format!(r#"{{"op":"{op}"}}"#);
            assert!(parse(&good).is_ok(), "{good}");
            let bad = format!(r#"{{"op":"{op}","extra":1}}"#);
            let e = parse(&bad).unwrap_err();
            assert!(e.contains("unknown field `extra`"), "{bad}: {e}");
        }
        assert!(parse(r#"{"op":"cancel","now":true}"#).is_err());
        assert!(parse(r#"{"op":"reboot"}"#).is_err());
        assert!(parse(r#"{"op":"backup","wait":"yes"}"#).is_err());
        assert!(parse(r#"{}"#).is_err());
    }
}
