//! The pins recoveryd made: a deployment it pinned for a backup is unpinned again when no kept
//! generation needs it; a pin someone else made is never touched.

use rusqlite::{OptionalExtension, params};

use super::{Journal, Result};

/// One deployment, as the pins table names it: OS name, checksum, serial.
pub(crate) type PinKey<'a> = (&'a str, &'a str, i32);

impl Journal {
    /// Record that recoveryd pinned this deployment (in run `run`).
    pub(crate) fn record_pin(
        &self,
        (osname, checksum, serial): PinKey<'_>,
        run: i64,
    ) -> Result<()> {
        self.conn()
            .execute(
                "INSERT INTO pins (osname, checksum, serial, run) VALUES (?1, ?2, ?3, ?4)",
                params![osname, checksum, serial, run],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    /// The run that pinned this deployment, if recoveryd pinned it and has not unpinned it.
    pub(crate) fn active_pin(&self, (osname, checksum, serial): PinKey<'_>) -> Result<Option<i64>> {
        self.conn()
            .query_row(
                "SELECT COALESCE(run, 0) FROM pins WHERE osname = ?1 AND checksum = ?2 AND serial = ?3
                   AND unpinned IS NULL ORDER BY pinned DESC LIMIT 1",
                params![osname, checksum, serial],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql_err(e))
    }

    /// Record that the pin is gone (unpinned by recoveryd, or the deployment removed).
    pub(crate) fn record_unpin(&self, (osname, checksum, serial): PinKey<'_>) -> Result<()> {
        self.conn()
            .execute(
                "UPDATE pins SET unpinned = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE osname = ?1 AND checksum = ?2 AND serial = ?3 AND unpinned IS NULL",
                params![osname, checksum, serial],
            )
            .map_err(|e| self.sql_err(e))?;
        Ok(())
    }

    /// Every deployment recoveryd pinned and has not unpinned: `(osname, checksum, serial)`.
    pub fn active_pins(&self) -> Result<Vec<(String, String, i32)>> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT DISTINCT osname, checksum, serial FROM pins WHERE unpinned IS NULL
                 ORDER BY pinned",
            )
            .map_err(|e| self.sql_err(e))?;
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.sql_err(e))
    }
}
