//! The single-writer lock: one run at a time, across processes.
//!
//! An exclusive `flock` on `<state_dir>/recoveryd.lock`, held for as long as a run executes.
//! The kernel drops it when the holder dies, so a crash never leaves a stale lock behind. The
//! file holds the holder's pid and run id so that a refused caller can be told who is busy.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, flock};

pub(crate) fn lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("recoveryd.lock")
}

#[derive(Debug)]
pub(crate) struct RunLock {
    file: File,
}

/// How long `acquire` keeps trying before it reports the lock busy. A process that another
/// thread is forking holds a copy of the lock's descriptor until it execs (the descriptor is
/// close-on-exec), so a lock released a moment ago can still look held for that moment.
const RELEASE_WINDOW: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub(crate) enum LockError {
    #[error("busy: {holder}")]
    Busy { holder: String },
    #[error("cannot open lock file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl RunLock {
    /// Take the lock, or report who holds it (after at most [`RELEASE_WINDOW`]).
    pub(crate) fn acquire(state_dir: &Path) -> Result<RunLock, LockError> {
        let path = lock_path(state_dir);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::CLOEXEC.bits() as i32)
            .open(&path)
            .map_err(io)?;
        let give_up = Instant::now() + RELEASE_WINDOW;
        let locked = loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break true,
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < give_up => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(rustix::io::Errno::WOULDBLOCK) => break false,
                Err(e) => return Err(io(e.into())),
            }
        };
        if !locked {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LockError::Busy {
                holder: if holder.is_empty() {
                    "another recoveryd process holds the journal lock".to_string()
                } else {
                    holder.to_string()
                },
            });
        }
        let mut lock = RunLock { file };
        lock.describe(&format!("process {} is starting a run", std::process::id()))
            .map_err(io)?;
        Ok(lock)
    }

    /// Say who holds the lock, for the next caller that is refused.
    pub(crate) fn describe(&mut self, holder: &str) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(holder.as_bytes())?;
        self.file.flush()
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}
