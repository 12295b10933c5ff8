//! The daemon's Unix socket: one request line, then event lines and one reply line.

use std::path::PathBuf;

use anyhow::{Context, Result};
use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{Client, OnEvent};
use crate::protocol::{self, Line, Reply, Request};

pub(crate) struct Socket(pub PathBuf);

#[async_trait(?Send)]
impl Client for Socket {
    async fn request(&self, request: Request, events: &OnEvent<'_>) -> Result<Reply> {
        let path = &self.0;
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting to {}", path.display()))?;
        let (r, mut w) = stream.into_split();
        let mut line = serde_json::to_string(&request)?;
        line.push('\n');
        w.write_all(line.as_bytes()).await?;
        w.flush().await?;
        let mut lines = BufReader::new(r).lines();
        while let Some(line) = lines.next_line().await? {
            match protocol::read_line(&line)
                .with_context(|| format!("bad line from the daemon: {line}"))?
            {
                Line::Event(e) => events(&e),
                Line::Reply(r) => return Ok(r),
            }
        }
        anyhow::bail!("the daemon closed the connection without a reply")
    }
}
