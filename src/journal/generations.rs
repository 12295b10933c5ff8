//! Committed generations.

use rusqlite::{OptionalExtension, Row, params};

use super::{GenerationRecord, Journal, Result};

const COLUMNS: &str = "id, run, state, created, committed, manifest_hash, entries, bytes, identity";

fn row(r: &Row<'_>) -> rusqlite::Result<GenerationRecord> {
    let identity: String = r.get(8)?;
    Ok(GenerationRecord {
        id: r.get(0)?,
        run: r.get(1)?,
        state: r.get(2)?,
        created: r.get(3)?,
        committed: r.get(4)?,
        manifest_hash: r.get(5)?,
        entries: r.get(6)?,
        bytes: r.get(7)?,
        identity: serde_json::from_str(&identity).unwrap_or(serde_json::Value::Null),
    })
}

impl Journal {
    /// Record a generation as committed. Called after its directory is durable.
    pub(crate) fn record_generation(&self, g: &GenerationRecord) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO generations (id, run, state, created, manifest_hash, entries, bytes, identity)
                 VALUES (?1, ?2, 'committed', ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (id) DO UPDATE SET state = 'committed', manifest_hash = excluded.manifest_hash",
                params![g.id, g.run, g.created, g.manifest_hash, g.entries, g.bytes, g.identity.to_string()],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    pub(crate) fn mark_generation_pruned(&self, id: &str) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE generations SET state = 'pruned', pruned = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
                [id],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    pub(crate) fn generation(&self, id: &str) -> Result<Option<GenerationRecord>> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM generations WHERE id = ?1"),
                [id],
                row,
            )
            .optional()
            .map_err(|e| self.sql_err(e))
    }

    /// The id of every generation ever recorded, pruned ones included (ids are never reused).
    pub(crate) fn generation_ids(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT id FROM generations")
            .map_err(|e| self.sql_err(e))?;
        st.query_map(params![], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql_err(e))
    }

    /// Committed generations, newest first.
    pub fn generations(&self) -> Result<Vec<GenerationRecord>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM generations WHERE state = 'committed'"
            ))
            .map_err(|e| self.sql_err(e))?;
        let mut v: Vec<GenerationRecord> = st
            .query_map(params![], row)
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql_err(e))?;
        v.sort_by(|a, b| {
            crate::files::store::id_order(&b.id).cmp(&crate::files::store::id_order(&a.id))
        });
        Ok(v)
    }
}
