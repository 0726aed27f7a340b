//! The durable half of the store: one SQLite database in WAL mode with `synchronous=FULL`,
//! so a committed transaction is on disk before the server acknowledges it.
//!
//! Only the writer thread touches the connection; it commits many writes per transaction
//! (group commit), which is what makes thousands of durable writes per second possible with
//! one fsync per batch.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

/// One row change of a batch.
pub enum RowChange<'a> {
    Put {
        resource: &'a str,
        key: &'a str,
        rv: u64,
        value: &'a Value,
    },
    Delete {
        resource: &'a str,
        key: &'a str,
    },
}

pub struct Database {
    conn: Connection,
}

/// Everything stored, as loaded at start.
pub struct Loaded {
    /// The last resourceVersion ever assigned (deletes included).
    pub resource_version: u64,
    /// (resource, key, value) for every stored object.
    pub objects: Vec<(String, String, Value)>,
}

impl Database {
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS objects (
                 resource TEXT NOT NULL,
                 key TEXT NOT NULL,
                 rv INTEGER NOT NULL,
                 value TEXT NOT NULL,
                 PRIMARY KEY (resource, key)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS meta (
                 name TEXT PRIMARY KEY,
                 value INTEGER NOT NULL
             );",
        )?;
        Ok(Self { conn })
    }

    pub fn load(&self) -> anyhow::Result<Loaded> {
        let stored_rv: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'resourceVersion'",
                [],
                |row| row.get(0),
            )
            .optional()?;
        let mut stmt = self
            .conn
            .prepare("SELECT resource, key, rv, value FROM objects")?;
        let mut objects = Vec::new();
        let mut max_rv = u64::try_from(stored_rv.unwrap_or(0)).unwrap_or(0);
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, String>(3)?,
            ))
        })?;
        for row in rows {
            let (resource, key, rv, text) = row?;
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("stored object {resource} {key} is corrupt: {e}"))?;
            max_rv = max_rv.max(u64::try_from(rv).unwrap_or(0));
            objects.push((resource, key, value));
        }
        Ok(Loaded {
            resource_version: max_rv,
            objects,
        })
    }

    /// Writes one batch in one transaction and records the new resourceVersion.
    pub fn commit(
        &mut self,
        changes: &[RowChange<'_>],
        resource_version: u64,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut put = tx.prepare_cached(
                "INSERT INTO objects (resource, key, rv, value) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (resource, key) DO UPDATE SET rv = excluded.rv, value = excluded.value",
            )?;
            let mut delete =
                tx.prepare_cached("DELETE FROM objects WHERE resource = ?1 AND key = ?2")?;
            for change in changes {
                match change {
                    RowChange::Put {
                        resource,
                        key,
                        rv,
                        value,
                    } => {
                        let rv = i64::try_from(*rv)?;
                        put.execute(params![resource, key, rv, value.to_string()])?;
                    }
                    RowChange::Delete { resource, key } => {
                        delete.execute(params![resource, key])?;
                    }
                }
            }
            tx.execute(
                "INSERT INTO meta (name, value) VALUES ('resourceVersion', ?1)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![i64::try_from(resource_version)?],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}
