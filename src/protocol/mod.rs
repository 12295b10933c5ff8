//! The one protocol between the daemon and its clients, on every transport: requests, replies,
//! run events, the status, and the errors, all `Serialize + Deserialize`. The Unix socket
//! carries them as JSON lines; D-Bus carries the typed methods and signals of
//! `org.recoveryd.Recovery1.Manager` plus the same events as JSON (`Event` signal) and the same
//! status (`GetStatus`); `recoveryctl --json` prints them. Nothing outside this module builds
//! or reads JSON by hand. See `docs/architecture.md` ("The protocol").
//!
//! Every document carries [`SCHEMA`]: a field that changes meaning bumps it; a field added
//! does not (readers ignore fields they do not know, writers never drop ones they do).

mod error;
mod event;
pub(crate) mod inspect;
mod reply;
mod request;
pub(crate) mod status;

pub(crate) use error::ApiError;
pub(crate) use event::Event;
pub(crate) use reply::{Reply, RunOutcome};
pub(crate) use request::{RecoverRequest, Request};
pub(crate) use status::{Live, RunSummary, Status};

use serde::{Deserialize, Serialize};

/// The version of every JSON document recoveryd writes.
pub(crate) const SCHEMA: u32 = 1;

/// A document with its schema version: `{"schema": 1, ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Doc<T> {
    pub schema: u32,
    #[serde(flatten)]
    pub body: T,
}

impl<T> Doc<T> {
    pub fn new(body: T) -> Doc<T> {
        Doc {
            schema: SCHEMA,
            body,
        }
    }
}

/// One line of the socket stream: an event while a run goes on, then one reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum Line {
    Event(Event),
    Reply(Reply),
}

/// Serialize a document with its schema (one line, no newline).
pub(crate) fn to_line<T: Serialize>(body: &T) -> String {
    serde_json::to_string(&Doc::new(body)).expect("protocol documents serialize")
}

/// Serialize a document with its schema, indented for people.
pub(crate) fn to_pretty<T: Serialize>(body: &T) -> String {
    serde_json::to_string_pretty(&Doc::new(body)).expect("protocol documents serialize")
}

/// Read one line of the socket stream.
pub(crate) fn read_line(s: &str) -> Result<Line, serde_json::Error> {
    Ok(serde_json::from_str::<Doc<Line>>(s)?.body)
}

#[cfg(test)]
mod tests;
