//! The journal's schema, its migrations, and what stays readable across versions.
//!
//! Two kinds of change, as ext4 has incompatible and compatible features:
//! - `PRAGMA user_version` is the **format**: bumped only by a change an older recoveryd would
//!   misread (a column whose meaning changes, one removed, a new state value it must act on).
//!   Each migration in [`MIGRATIONS`] moves the format from N-1 to N; a journal of a newer
//!   format is refused, never guessed at.
//! - **Features** ([`FEATURES`]) are additive: a new table, or a column with a default, that an
//!   older recoveryd of the same format does not read and cannot break. They are recorded by
//!   name in the `features` table; a reader ignores names it does not know.
//!
//! The rule that follows: a recoveryd resumes any journal of its own format or older, whatever
//! features a newer recoveryd added. A recovery crosses versions (the failed, newer OS starts it;
//! the older, rolled-back OS resumes it), so `recover` compares the journal's format with the
//! one the generation's recoveryd reads (recorded in each generation) before it changes
//! anything. Format 2 has been the format since generations exist, so every generation without
//! that record was taken by a format-2 recoveryd.

/// The format this build reads and writes.
pub const CURRENT: u32 = 2;

/// Additive features, in the order they were added: a name and idempotent SQL.
pub(crate) const FEATURES: &[(&str, &str)] = &[("pins", PINS)];

/// Which deployments recoveryd pinned: only those it unpins again.
const PINS: &str = r#"
CREATE TABLE IF NOT EXISTS pins (
    osname   TEXT NOT NULL,
    checksum TEXT NOT NULL,
    serial   INTEGER NOT NULL,
    run      INTEGER,
    pinned   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    unpinned TEXT,
    PRIMARY KEY (osname, checksum, serial, pinned)
);
"#;

/// The table that lists the features present.
pub(crate) const FEATURES_TABLE: &str = r#"
CREATE TABLE IF NOT EXISTS features (
    name  TEXT PRIMARY KEY,
    added TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
"#;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[V1, V2];

/// Version 1: runs, their steps (one row per attempt) and run variables.
const V1: &str = r#"
CREATE TABLE runs (
    id                INTEGER PRIMARY KEY,
    kind              TEXT NOT NULL CHECK (kind IN ('backup', 'recovery')),
    state             TEXT NOT NULL,
    stage             TEXT,
    options           TEXT NOT NULL DEFAULT '{}',
    plan              TEXT NOT NULL,
    started           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished          TEXT,
    error             TEXT,
    boot_id           TEXT NOT NULL,
    no_progress_boots INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE steps (
    id       INTEGER PRIMARY KEY,
    run      INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq      INTEGER NOT NULL,
    name     TEXT NOT NULL,
    stage    TEXT NOT NULL,
    state    TEXT NOT NULL,
    attempt  INTEGER NOT NULL,
    started  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished TEXT,
    boot_id  TEXT NOT NULL,
    detail   TEXT
);
CREATE INDEX steps_by_run ON steps (run, seq, attempt);
CREATE TABLE run_vars (
    run   INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run, key)
);
"#;

/// Version 2: committed generations of node files, with their manifest's identity.
const V2: &str = r#"
CREATE TABLE generations (
    id            TEXT PRIMARY KEY,
    run           INTEGER REFERENCES runs(id) ON DELETE SET NULL,
    state         TEXT NOT NULL CHECK (state IN ('committed', 'pruned')),
    created       TEXT NOT NULL,
    committed     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    manifest_hash TEXT NOT NULL,
    entries       INTEGER NOT NULL,
    bytes         INTEGER NOT NULL,
    identity      TEXT NOT NULL DEFAULT '{}',
    pruned        TEXT
);
"#;
