//! Runs, steps and run variables.

use rusqlite::{OptionalExtension, Row, params};

use super::{Journal, Result, RunKind, RunRecord, RunState, StepRecord, StepState};

const RUN_COLUMNS: &str =
    "id, kind, state, stage, options, plan, started, finished, error, boot_id, no_progress_boots";
const STEP_COLUMNS: &str =
    "id, run, seq, name, stage, state, attempt, started, finished, boot_id, detail";

fn parse<T: std::str::FromStr<Err = String>>(idx: usize, s: String) -> rusqlite::Result<T> {
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn json<T: serde::de::DeserializeOwned>(idx: usize, s: String) -> rusqlite::Result<T> {
    serde_json::from_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

fn run_row(r: &Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: r.get(0)?,
        kind: parse(1, r.get(1)?)?,
        state: parse(2, r.get(2)?)?,
        stage: r.get(3)?,
        options: json(4, r.get(4)?)?,
        plan: json(5, r.get(5)?)?,
        started: r.get(6)?,
        finished: r.get(7)?,
        error: r.get(8)?,
        boot_id: r.get(9)?,
        no_progress_boots: r.get(10)?,
    })
}

fn step_row(r: &Row<'_>) -> rusqlite::Result<StepRecord> {
    Ok(StepRecord {
        id: r.get(0)?,
        run: r.get(1)?,
        seq: r.get(2)?,
        name: r.get(3)?,
        stage: r.get(4)?,
        state: parse(5, r.get(5)?)?,
        attempt: r.get(6)?,
        started: r.get(7)?,
        finished: r.get(8)?,
        boot_id: r.get(9)?,
        detail: r.get(10)?,
    })
}

impl Journal {
    /// Record a new run.
    pub fn create_run(
        &self,
        kind: RunKind,
        plan: &[(String, String)],
        options: &serde_json::Value,
        boot_id: &str,
    ) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO runs (kind, state, options, plan, boot_id) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                kind.as_str(),
                RunState::Running.as_str(),
                options.to_string(),
                serde_json::to_string(plan).expect("plan serializes"),
                boot_id
            ],
        )
        .map_err(|e| self.sql_err(e))?;
        Ok(conn.last_insert_rowid())
    }

    pub fn run(&self, id: i64) -> Result<Option<RunRecord>> {
        self.conn()
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                [id],
                run_row,
            )
            .optional()
            .map_err(|e| self.sql_err(e))
    }

    /// The newest runs first.
    pub fn runs(&self, limit: u32) -> Result<Vec<RunRecord>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?1"
            ))
            .map_err(|e| self.sql_err(e))?;
        st.query_map([limit], run_row)
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql_err(e))
    }

    /// The newest run of a kind.
    pub fn latest_run(&self, kind: RunKind) -> Result<Option<RunRecord>> {
        self.conn()
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE kind = ?1 ORDER BY id DESC LIMIT 1"),
                [kind.as_str()],
                run_row,
            )
            .optional()
            .map_err(|e| self.sql_err(e))
    }

    /// The newest run of a kind that is not in a final state (it can still be continued).
    pub(crate) fn open_run(&self, kind: RunKind) -> Result<Option<RunRecord>> {
        Ok(self.latest_run(kind)?.filter(|r| r.resumable()))
    }

    pub(crate) fn set_run_state(
        &self,
        id: i64,
        state: RunState,
        error: Option<&str>,
    ) -> Result<()> {
        let finished = !state.is_open();
        self.conn()
            .execute(
                "UPDATE runs SET state = ?2, error = ?3,
                    finished = CASE WHEN ?4 THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') ELSE NULL END
                 WHERE id = ?1",
                params![id, state.as_str(), error, finished],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    pub(crate) fn set_run_options(&self, id: i64, options: &serde_json::Value) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE runs SET options = ?2 WHERE id = ?1",
                params![id, options.to_string()],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    pub(crate) fn set_run_stage(&self, id: i64, stage: &str) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE runs SET stage = ?2 WHERE id = ?1",
                params![id, stage],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    pub(crate) fn set_no_progress_boots(&self, id: i64, n: u32) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE runs SET no_progress_boots = ?2 WHERE id = ?1",
                params![id, n],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    /// Record that an attempt of a step has begun; returns the attempt's row id.
    pub(crate) fn step_started(
        &self,
        run: i64,
        seq: u32,
        name: &str,
        stage: &str,
        attempt: u32,
        boot_id: &str,
    ) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO steps (run, seq, name, stage, state, attempt, boot_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![run, seq, name, stage, StepState::Started.as_str(), attempt, boot_id],
        )
        .map_err(|e| self.sql_err(e))?;
        Ok(conn.last_insert_rowid())
    }

    /// Record how an attempt ended.
    pub(crate) fn step_finished(
        &self,
        row: i64,
        state: StepState,
        detail: Option<&str>,
    ) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE steps SET state = ?2, detail = COALESCE(?3, detail),
                    finished = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
                params![row, state.as_str(), detail],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    /// Mark every attempt of a run still recorded as started as failed (the run could not
    /// record their end).
    pub(crate) fn fail_started_steps(&self, run: i64, detail: &str) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE steps SET state = 'failed', detail = ?2,
                    finished = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE run = ?1 AND state = 'started'",
                params![run, detail],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    /// Change an attempt's state without ending it (a reboot barrier waiting for the reboot).
    pub(crate) fn step_set_state(
        &self,
        row: i64,
        state: StepState,
        detail: Option<&str>,
    ) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE steps SET state = ?2, detail = COALESCE(?3, detail) WHERE id = ?1",
                params![row, state.as_str(), detail],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    /// Every attempt of every step of a run, in order.
    pub fn steps(&self, run: i64) -> Result<Vec<StepRecord>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {STEP_COLUMNS} FROM steps WHERE run = ?1 ORDER BY id"
            ))
            .map_err(|e| self.sql_err(e))?;
        st.query_map([run], step_row)
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql_err(e))
    }

    /// The latest attempt of a named step in a run.
    pub fn last_attempt(&self, run: i64, name: &str) -> Result<Option<StepRecord>> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT {STEP_COLUMNS} FROM steps WHERE run = ?1 AND name = ?2 ORDER BY id DESC LIMIT 1"
                ),
                params![run, name],
                step_row,
            )
            .optional()
            .map_err(|e| self.sql_err(e))
    }

    /// Number of steps of the run whose latest attempt is complete.
    pub(crate) fn completed_steps(&self, run: i64) -> Result<u32> {
        self.conn()
            .query_row(
                "SELECT COUNT(*) FROM steps s WHERE s.run = ?1 AND s.state IN ('done', 'skipped') AND s.stage != 'cleanup'
                   AND s.id = (SELECT MAX(id) FROM steps t WHERE t.run = s.run AND t.name = s.name)",
                [run],
                |r| r.get(0),
            )
            .map_err(|e| self.sql_err(e))
    }

    /// Forget every step attempt of a run (`restart`). The run itself is kept.
    pub(crate) fn clear_steps(&self, run: i64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.sql_err(e))?;
        tx.execute("DELETE FROM steps WHERE run = ?1", [run])
            .map_err(|e| self.sql_err(e))?;
        tx.execute("DELETE FROM run_vars WHERE run = ?1", [run])
            .map_err(|e| self.sql_err(e))?;
        tx.commit().map_err(|e| self.sql_err(e))
    }

    pub(crate) fn set_var(&self, run: i64, key: &str, value: &str) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO run_vars (run, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (run, key) DO UPDATE SET value = excluded.value",
                params![run, key, value],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    pub fn var(&self, run: i64, key: &str) -> Result<Option<String>> {
        self.conn()
            .query_row(
                "SELECT value FROM run_vars WHERE run = ?1 AND key = ?2",
                params![run, key],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql_err(e))
    }

    pub(crate) fn vars(&self, run: i64) -> Result<Vec<(String, String)>> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT key, value FROM run_vars WHERE run = ?1 ORDER BY key")
            .map_err(|e| self.sql_err(e))?;
        st.query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql_err(e))
    }
}
