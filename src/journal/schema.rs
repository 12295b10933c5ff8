//! The journal's schema and its migrations.
//!
//! `PRAGMA user_version` holds the schema version. Each migration moves the database from
//! version N-1 to N inside one transaction; a database newer than [`CURRENT`] is refused rather
//! than guessed at, because an older recoveryd could misread a recovery in progress.

/// The schema version this build writes.
pub const CURRENT: u32 = 2;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[V1, V2];

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
