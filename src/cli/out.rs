//! Printing results: one JSON document on stdout with `--json` (errors too), words otherwise.

use super::exit;
use crate::protocol::{self, ApiError, Reply};

/// Where results go: one JSON document on stdout with `--json`, words otherwise; and the same
/// document, on one line, into `--result-file` (a pod's termination message).
pub(crate) struct Out {
    pub json: bool,
    pub result_file: Option<std::path::PathBuf>,
}

/// Write to stdout. A reader that went away (`recoveryctl journal | head`) ends the output and
/// the program, quietly and successfully, as the reader asked; `print!` would panic instead.
pub(crate) fn stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("recoveryctl: writing to stdout: {e}");
        std::process::exit(i32::from(super::exit::ERROR));
    }
}

impl Out {
    /// Print a document: its JSON (with the schema), or what `human` says.
    pub(crate) fn print<T: serde::Serialize>(&self, doc: &T, human: impl FnOnce() -> String) {
        self.record(doc);
        if self.json {
            stdout(&(protocol::to_pretty(doc) + "\n"));
        } else {
            stdout(&human());
        }
    }

    /// Write the document into the result file, if there is one. Kubernetes keeps at most
    /// 4096 bytes of a termination message; the result documents are far below that.
    pub(crate) fn record<T: serde::Serialize>(&self, doc: &T) {
        if let Some(path) = &self.result_file
            && let Err(e) = std::fs::write(path, protocol::to_line(doc))
        {
            eprintln!("recoveryctl: writing the result to {}: {e}", path.display());
        }
    }

    /// Print a reply; returns its exit code.
    pub(crate) fn reply(&self, r: &Reply) -> u8 {
        match r {
            Reply::Error(_) if !self.json => {
                self.record(r);
                eprintln!("recoveryctl: {}", r.human())
            }
            _ => self.print(r, || r.human() + "\n"),
        }
        exit::for_reply(r)
    }

    /// Print an error of the daemon or the operations; returns its exit code.
    pub(crate) fn error(&self, e: &ApiError) -> u8 {
        self.reply(&Reply::Error(e.clone()))
    }
}
