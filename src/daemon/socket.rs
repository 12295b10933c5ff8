//! The Unix socket API at `/run/recoveryd/recoveryd.sock`, for the backup Job in its pod:
//! newline-delimited JSON. One request per connection; progress events while a run goes on
//! (with `"wait": true`), then one result line.
//!
//! The messages are the protocol's ([`crate::protocol`]), each line a document with its schema:
//!
//! ```text
//! -> {"op":"backup","wait":true}
//! <- {"schema":1,"event":"step_started","run":12,"stage":"preflight","step":"preflight",...}
//! <- {"schema":1,"reply":"finished","run":12,"kind":"backup","state":"succeeded","phase":"Succeeded","message":"..."}
//! ```
//! A malformed, oversized or unknown request, or a caller that is not root (SO_PEERCRED), gets
//! `{"schema":1,"reply":"error","name":"org.recoveryd.Recovery1.Error.InvalidArgs","message":"..."}`
//! and the connection is closed. Nothing a client sends can stop the daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::manager::{RunManager, Started};
use crate::protocol::{self, ApiError, Event, Reply, Request};

/// The longest request accepted.
pub(crate) const MAX_REQUEST: usize = 64 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Bind the socket (mode 0600) when systemd did not hand us one.
pub(crate) fn bind(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
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

pub(crate) async fn serve(
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
    let mut backoff = AcceptBackoff::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    backoff.succeeded();
                    let m = manager.clone();
                    tokio::spawn(async move {
                        if let Err(e) = client(stream, m).await {
                            tracing::debug!("socket client: {e}");
                        }
                    });
                }
                Err(e) => {
                    let (pause, log) = backoff.failed();
                    if log {
                        tracing::warn!(
                            "socket accept failed: {e} (retrying, next in {} ms; \
                             repeated failures are logged with growing pauses)",
                            pause.as_millis()
                        );
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
}

/// Pauses between failed `accept()`s (out of descriptors, or a policy that denies it): from
/// 100 ms doubling to 10 s, logged while the pause grows and then once in sixty failures, so
/// that a failure that lasts does not fill the journal; a success starts over.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(100);
    const LONGEST: Duration = Duration::from_secs(10);

    /// The pause before the next `accept()`, and whether to log this failure.
    fn failed(&mut self) -> (Duration, bool) {
        let doublings = self.failures.min(7);
        let pause = (Self::FIRST * 2u32.pow(doublings)).min(Self::LONGEST);
        // Each growing pause, then one line in sixty (every ten minutes).
        let log = self.failures <= 7 || self.failures.is_multiple_of(60);
        self.failures = self.failures.saturating_add(1);
        (pause, log)
    }

    fn succeeded(&mut self) {
        self.failures = 0;
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
    parse_request(&line)
}

/// One request line as read from a client: bounded, UTF-8, one JSON request with no field
/// the op does not take. Nothing from the socket is used before this accepts it.
pub(crate) fn parse_request(line: &[u8]) -> Result<Request, ApiError> {
    if line.len() > MAX_REQUEST {
        return Err(ApiError::InvalidArgs(format!(
            "request longer than {MAX_REQUEST} bytes"
        )));
    }
    let text = std::str::from_utf8(line)
        .map_err(|_| ApiError::InvalidArgs("request is not UTF-8".into()))?;
    if text.trim().is_empty() {
        return Err(ApiError::InvalidArgs("empty request".into()));
    }
    serde_json::from_str(text.trim())
        .map_err(|e| ApiError::InvalidArgs(format!("bad request: {e}")))
}

async fn send<T: serde::Serialize>(w: &mut UnixStream, msg: &T) -> std::io::Result<()> {
    let mut line = protocol::to_line(msg);
    line.push('\n');
    w.write_all(line.as_bytes()).await?;
    w.flush().await
}

async fn client(stream: UnixStream, manager: Arc<RunManager>) -> std::io::Result<()> {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    let mut reader = BufReader::new(stream);
    let request = read_request(&mut reader).await;
    let mut stream = reader.into_inner();
    let request = match request {
        Ok(r) => r,
        Err(e) => return send(&mut stream, &Reply::Error(e)).await,
    };
    if request.mutating() && uid != Some(0) {
        let e = ApiError::AccessDenied(format!(
            "only root may change anything (caller uid {})",
            uid.map(|u| u.to_string())
                .unwrap_or_else(|| "unknown".into())
        ));
        tracing::warn!("socket: {e}");
        return send(&mut stream, &Reply::Error(e)).await;
    }
    // Subscribe before starting, so that no event of the new run is missed.
    let mut events = manager.events.subscribe();
    let reply = match &request {
        Request::Status {} => match manager.status() {
            Ok(s) => Reply::Status(Box::new(s)),
            Err(e) => Reply::Error(e),
        },
        Request::Cancel {} => manager.cancel().unwrap_or_else(Reply::Error),
        _ => match manager.start(&request) {
            Err(e) => Reply::Error(e),
            Ok(Started::Nothing(message)) => Reply::NothingToResume { message },
            Ok(Started::Run { run, kind }) if !request.waits() => Reply::Started { run, kind },
            Ok(Started::Run { run, .. }) => {
                return follow(&mut stream, &manager, &mut events, run).await;
            }
        },
    };
    send(&mut stream, &reply).await
}

/// Stream a run's events until it ends, then its outcome. A client that goes away does not
/// stop the run.
async fn follow(
    stream: &mut UnixStream,
    manager: &RunManager,
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    run: i64,
) -> std::io::Result<()> {
    loop {
        let ev = match events.recv().await {
            Ok(ev) => ev,
            // Events were dropped (a slow client), possibly the end of the run: if the run is
            // no longer executing, its outcome is in the journal.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Event::Idle,
            Err(_) => return Ok(()),
        };
        if ev.run() != Some(run) {
            if manager.current().is_none_or(|(r, _)| r != run)
                && let Some(outcome) = manager.outcome(run)
            {
                return send(stream, &Reply::Finished(outcome)).await;
            }
            continue;
        }
        send(stream, &ev).await?;
        if let Some(outcome) = ev.outcome() {
            return send(stream, &Reply::Finished(outcome)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off_to_ten_seconds_and_log_rarely() {
        let mut b = AcceptBackoff::default();
        let first: Vec<_> = (0..10).map(|_| b.failed()).collect();
        let ms: Vec<u128> = first.iter().map(|(p, _)| p.as_millis()).collect();
        assert_eq!(
            ms,
            [100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000, 10000]
        );
        // An hour of failures at the longest pause: a handful of lines, not 36,000.
        let logged =
            first.iter().filter(|(_, l)| *l).count() + (0..360).filter(|_| b.failed().1).count();
        assert!(logged <= 15, "{logged}");
        b.succeeded();
        assert_eq!(b.failed(), (Duration::from_millis(100), true));
    }
}
