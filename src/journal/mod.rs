//! The SQLite journal at `<state_dir>/journal.db`: runs, their steps, and generations.
//!
//! Every write is its own transaction with `synchronous=FULL` in WAL mode, so a record the
//! engine has written survives a crash or power cut the moment the call returns.

mod generations;
mod lock;
mod model;
mod pins;
mod runs;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags};

pub(crate) use lock::{LockError, RunLock};
pub use model::*;

/// Errors a caller may want to tell apart.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "journal {path} is corrupted ({detail}); it was left untouched. Move it aside to start a new \
         journal: the generations in its directory stay usable (`recoveryctl verify`)"
    )]
    Corrupted { path: PathBuf, detail: String },
    #[error(
        "journal {path} has schema version {found}, newer than this recoveryd understands ({supported}); \
         refusing to open it. Run the recoveryd that wrote it, or a newer one"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("journal {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("no journal at {0}: nothing has run yet")]
    Missing(PathBuf),
}

pub(crate) type Result<T, E = JournalError> = std::result::Result<T, E>;

/// An open journal. Cheap to share behind an `Arc`; calls are serialized internally.
pub struct Journal {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// The database file's (device, inode) when it was opened: a journal removed or replaced
    /// under a running process is told apart from the one it writes to (None: in memory).
    file_id: Option<(u64, u64)>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

impl Journal {
    /// Open the journal, creating and migrating it as needed.
    pub fn open(path: &Path) -> Result<Journal> {
        Self::open_with(path, true)
    }

    /// An empty journal in memory, for a read-only command on a state directory that has none
    /// (nothing has run yet): it knows no run and no generation, and is never written to disk.
    pub(crate) fn in_memory() -> Result<Journal> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|e| classify(&path, e))?;
        let journal = Journal {
            conn: Mutex::new(conn),
            path,
            file_id: None,
        };
        journal.migrate(0)?;
        Ok(journal)
    }

    /// Whether the file this journal writes to is still the one at its path. False when the
    /// state directory was emptied (or the journal replaced) under a running process: what it
    /// writes then goes to a deleted file.
    pub(crate) fn still_on_disk(&self) -> bool {
        self.file_id.is_none() || file_id(&self.path) == self.file_id
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Open an existing journal without creating it (status readers).
    pub fn open_existing(path: &Path) -> Result<Journal> {
        if !path.exists() {
            return Err(JournalError::Missing(path.to_path_buf()));
        }
        Self::open_with(path, false)
    }

    fn open_with(path: &Path, create: bool) -> Result<Journal> {
        let err = |source: rusqlite::Error| classify(path, source);
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let existed = path.exists();
        let conn = Connection::open_with_flags(path, flags).map_err(err)?;
        if !existed {
            restrict_mode(path);
        }
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        // Reading the header first tells a non-database file apart before we change anything.
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if version > schema::CURRENT {
            return Err(JournalError::TooNew {
                path: path.to_path_buf(),
                found: version,
                supported: schema::CURRENT,
            });
        }
        if existed {
            let check: String = conn
                .query_row("PRAGMA quick_check", [], |r| r.get(0))
                .map_err(err)?;
            if check != "ok" {
                return Err(JournalError::Corrupted {
                    path: path.to_path_buf(),
                    detail: check,
                });
            }
        }
        set_wal(&conn).map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        let journal = Journal {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            file_id: file_id(path),
        };
        if version < schema::CURRENT || !journal.has_every_feature() {
            journal.migrate(version)?;
        }
        Ok(journal)
    }

    /// Whether the journal already has every feature this build adds (a read: no write lock
    /// for the common case of opening a journal that is up to date).
    fn has_every_feature(&self) -> bool {
        let have = self.features().unwrap_or_default();
        schema::FEATURES
            .iter()
            .all(|(name, _)| have.iter().any(|h| h == name))
    }

    /// Bring the schema to [`schema::CURRENT`]. Two processes may open a new journal at the same
    /// moment (two first backups): each migration step takes the write lock first (`BEGIN
    /// IMMEDIATE`, waiting up to the busy timeout) and reads the version again under it, so the
    /// second one finds the work done instead of failing on "table already exists".
    fn migrate(&self, seen: u32) -> Result<()> {
        let mut conn = self.conn();
        loop {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| self.sql_err(e))?;
            let version: u32 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(|e| self.sql_err(e))?;
            if version > schema::CURRENT {
                return Err(JournalError::TooNew {
                    path: self.path.clone(),
                    found: version,
                    supported: schema::CURRENT,
                });
            }
            let Some(sql) = schema::MIGRATIONS.get(version as usize) else {
                tx.commit().map_err(|e| self.sql_err(e))?;
                drop(conn);
                return self.add_features();
            };
            let to = version + 1;
            tx.execute_batch(sql).map_err(|e| self.sql_err(e))?;
            tx.pragma_update(None, "user_version", to)
                .map_err(|e| self.sql_err(e))?;
            tx.commit().map_err(|e| self.sql_err(e))?;
            if seen > 0 {
                tracing::info!(journal = %self.path.display(), "migrated journal schema to version {to}");
            }
        }
    }

    /// Add the additive features this build knows and the journal lacks (idempotent; a
    /// concurrent opener waits on the write lock and finds them added).
    fn add_features(&self) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.sql_err(e))?;
        tx.execute_batch(schema::FEATURES_TABLE)
            .map_err(|e| self.sql_err(e))?;
        for (name, sql) in schema::FEATURES {
            let present: bool = tx
                .query_row(
                    "SELECT COUNT(*) > 0 FROM features WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .map_err(|e| self.sql_err(e))?;
            if !present {
                tx.execute_batch(sql).map_err(|e| self.sql_err(e))?;
                tx.execute("INSERT INTO features (name) VALUES (?1)", [name])
                    .map_err(|e| self.sql_err(e))?;
            }
        }
        tx.commit().map_err(|e| self.sql_err(e))
    }

    /// The features the journal has (a newer recoveryd's included).
    pub fn features(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT name FROM features ORDER BY added, name")
            .map_err(|e| self.sql_err(e))?;
        st.query_map([], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql_err(e))
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<u32> {
        self.conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.sql_err(e))
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (each write is a
        // transaction), so a poisoned mutex is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sql_err(&self, source: rusqlite::Error) -> JournalError {
        classify(&self.path, source)
    }
}

/// A damaged database is `Corrupted` (never silently replaced); anything else is `Sqlite`.
fn classify(path: &Path, source: rusqlite::Error) -> JournalError {
    if is_corruption(&source) {
        JournalError::Corrupted {
            path: path.to_path_buf(),
            detail: source.to_string(),
        }
    } else {
        JournalError::Sqlite {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Switch to WAL (persistent in the file; a no-op once done). Changing the journal mode needs
/// the database to itself for a moment, and SQLite does not wait for that with the busy
/// handler, so a concurrent first open is waited out here.
fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0));
        match r {
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() < give_up =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}

fn restrict_mode(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}
