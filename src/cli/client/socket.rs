//! The daemon's Unix socket: one request line, then event lines and one reply line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{Client, OnEvent};
use crate::protocol::{self, Line, Reply, Request};

/// How long the daemon may take to send the first line. It answers a request, or sends the
/// first event of the run it starts, at once; only a daemon that never accepts (not started,
/// stuck, or denied its socket) is silent, and the backup Job must not wait for its deadline.
/// Later lines may be minutes apart (a long step), so only the first is timed.
const FIRST_LINE: Duration = Duration::from_secs(60);

pub(crate) struct Socket {
    path: PathBuf,
    first_line: Duration,
}

impl Socket {
    pub(crate) fn new(path: PathBuf) -> Socket {
        Socket {
            path,
            first_line: FIRST_LINE,
        }
    }
}

#[async_trait(?Send)]
impl Client for Socket {
    async fn request(&self, request: Request, events: &OnEvent<'_>) -> Result<Reply> {
        let path = &self.path;
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting to {}", path.display()))?;
        let (r, mut w) = stream.into_split();
        let mut line = serde_json::to_string(&request)?;
        line.push('\n');
        w.write_all(line.as_bytes()).await?;
        w.flush().await?;
        let mut lines = BufReader::new(r).lines();
        let mut next = tokio::time::timeout(self.first_line, lines.next_line())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "recoveryd did not answer on {} within {} s (is recoveryd.service running? \
                     `systemctl status recoveryd.service recoveryd.socket`)",
                    path.display(),
                    self.first_line.as_secs()
                )
            })?;
        while let Some(line) = next? {
            match protocol::read_line(&line)
                .with_context(|| format!("bad line from the daemon: {line}"))?
            {
                Line::Event(e) => events(&e),
                Line::Reply(r) => return Ok(r),
            }
            next = lines.next_line().await;
        }
        anyhow::bail!("the daemon closed the connection without a reply")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that is bound and listening but never accepted (a daemon that does not run):
    /// the client gives up after its first-line timeout and says what to look at.
    #[tokio::test]
    async fn a_daemon_that_never_answers_is_reported_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recoveryd.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let client = Socket {
            path: path.clone(),
            first_line: Duration::from_millis(300),
        };
        let started = std::time::Instant::now();
        let err = client
            .request(Request::Status {}, &|_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(err.contains("did not answer"), "{err}");
        assert!(err.contains("recoveryd.service"), "{err}");
    }
}
