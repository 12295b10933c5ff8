//! Printing results: one JSON document on stdout with `--json` (errors too), words otherwise.

use super::exit;
use crate::protocol::{self, ApiError, Reply};

/// Where results go: one JSON document on stdout with `--json`, words otherwise.
pub(crate) struct Out {
    pub json: bool,
}

impl Out {
    /// Print a document: its JSON (with the schema), or what `human` says.
    pub(crate) fn print<T: serde::Serialize>(&self, doc: &T, human: impl FnOnce() -> String) {
        if self.json {
            println!("{}", protocol::to_pretty(doc));
        } else {
            print!("{}", human());
        }
    }

    /// Print a reply; returns its exit code.
    pub(crate) fn reply(&self, r: &Reply) -> u8 {
        match r {
            Reply::Error(_) if !self.json => eprintln!("recoveryctl: {}", r.human()),
            _ => self.print(r, || r.human() + "\n"),
        }
        exit::for_reply(r)
    }

    /// Print an error of the daemon or the operations; returns its exit code.
    pub(crate) fn error(&self, e: &ApiError) -> u8 {
        self.reply(&Reply::Error(e.clone()))
    }
}
