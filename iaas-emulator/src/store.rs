//! The crash-safe store: an in-memory cache of every record, persisted in
//! redb (`<data_dir>/state.redb`), one table per kind keyed by id with the
//! record's JSON as value.
//!
//! Mutations go to the cache and mark rows dirty; [`Store::commit`] writes all
//! dirty rows of a request in one write transaction with redb's default
//! immediate durability (fsync before `commit` returns). Handlers answer only
//! after the commit, so an acknowledged change survives SIGKILL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use redb::{ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::EmuError;

/// A stored record with its creation sequence number (Describe order).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row<T> {
    seq: u64,
    rec: T,
}

/// One kind of record, cached in memory.
#[derive(Debug)]
pub struct Table<T> {
    name: &'static str,
    rows: BTreeMap<String, Row<T>>,
    dirty: BTreeSet<String>,
}

impl<T: Serialize + DeserializeOwned> Table<T> {
    /// An empty table stored under `name`.
    pub fn new(name: &'static str) -> Self {
        Table {
            name,
            rows: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    /// A record by id.
    pub fn get(&self, id: &str) -> Option<&T> {
        self.rows.get(id).map(|r| &r.rec)
    }

    /// A record by id, for modification (marks it dirty).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        let row = self.rows.get_mut(id)?;
        self.dirty.insert(id.to_string());
        Some(&mut row.rec)
    }

    /// Whether the id exists.
    pub fn contains(&self, id: &str) -> bool {
        self.rows.contains_key(id)
    }

    /// Inserts or replaces a record; `seq` orders it in Describe output.
    pub fn insert(&mut self, id: &str, seq: u64, rec: T) {
        let seq = self.rows.get(id).map(|r| r.seq).unwrap_or(seq);
        self.rows.insert(id.to_string(), Row { seq, rec });
        self.dirty.insert(id.to_string());
    }

    /// Removes a record.
    pub fn remove(&mut self, id: &str) -> Option<T> {
        let row = self.rows.remove(id)?;
        self.dirty.insert(id.to_string());
        Some(row.rec)
    }

    /// Records in creation order.
    pub fn ordered(&self) -> Vec<&T> {
        let mut rows: Vec<&Row<T>> = self.rows.values().collect();
        rows.sort_by_key(|r| r.seq);
        rows.into_iter().map(|r| &r.rec).collect()
    }

    /// Records in id order (cheap; use [`Table::ordered`] for output).
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.rows.values().map(|r| &r.rec)
    }

    /// Ids of records matching `pred`.
    pub fn ids_where(&self, pred: impl Fn(&T) -> bool) -> Vec<String> {
        self.rows
            .iter()
            .filter(|(_, r)| pred(&r.rec))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A pending write: table, key, new JSON (None = delete).
pub type Write = (&'static str, String, Option<Vec<u8>>);

/// What the store needs from a table regardless of its record type.
pub trait TableIo: Send {
    /// redb table name.
    fn name(&self) -> &'static str;
    /// Serialises dirty rows and clears the dirty set.
    fn drain(&mut self, out: &mut Vec<Write>) -> Result<(), EmuError>;
    /// Loads one stored row.
    fn load(&mut self, id: &str, bytes: &[u8]) -> Result<(), EmuError>;
    /// Highest sequence number held.
    fn max_seq(&self) -> u64;
    /// Drops everything (before a reload).
    fn clear(&mut self);
}

impl<T: Serialize + DeserializeOwned + Send> TableIo for Table<T> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn drain(&mut self, out: &mut Vec<Write>) -> Result<(), EmuError> {
        for id in std::mem::take(&mut self.dirty) {
            let bytes = match self.rows.get(&id) {
                Some(row) => Some(serde_json::to_vec(row).map_err(EmuError::store)?),
                None => None,
            };
            out.push((self.name, id, bytes));
        }
        Ok(())
    }

    fn load(&mut self, id: &str, bytes: &[u8]) -> Result<(), EmuError> {
        let row: Row<T> = serde_json::from_slice(bytes)
            .map_err(|e| EmuError::Store(format!("table {} row {id}: {e}", self.name)))?;
        self.rows.insert(id.to_string(), row);
        Ok(())
    }

    fn max_seq(&self) -> u64 {
        self.rows.values().map(|r| r.seq).max().unwrap_or(0)
    }

    fn clear(&mut self) {
        self.rows.clear();
        self.dirty.clear();
    }
}

/// The redb database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Arc<redb::Database>,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/state.redb`.
    pub fn open(data_dir: &Path) -> Result<Store, EmuError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| EmuError::io(format!("creating {}", data_dir.display()), e))?;
        let path = data_dir.join("state.redb");
        let db = redb::Database::create(&path)
            .map_err(|e| EmuError::Store(format!("opening {}: {e}", path.display())))?;
        Ok(Store { db: Arc::new(db) })
    }

    /// Loads every table into `tables` (clearing them first).
    pub fn load(&self, tables: &mut [&mut dyn TableIo]) -> Result<(), EmuError> {
        // A write transaction so that missing tables are created on first start.
        let txn = self.db.begin_write().map_err(EmuError::store)?;
        for t in tables.iter_mut() {
            t.clear();
            let def: TableDefinition<&str, &[u8]> = TableDefinition::new(t.name());
            let table = txn.open_table(def).map_err(EmuError::store)?;
            for item in table.iter().map_err(EmuError::store)? {
                let (k, v) = item.map_err(EmuError::store)?;
                t.load(k.value(), v.value())?;
            }
        }
        txn.commit().map_err(EmuError::store)?;
        Ok(())
    }

    /// Writes a batch durably in one transaction (blocking; see [`Store::commit`]).
    pub fn write_blocking(&self, writes: &[Write]) -> Result<(), EmuError> {
        if writes.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(EmuError::store)?;
        {
            let mut by_table: BTreeMap<&'static str, Vec<&Write>> = BTreeMap::new();
            for w in writes {
                by_table.entry(w.0).or_default().push(w);
            }
            for (name, ws) in by_table {
                let def: TableDefinition<&str, &[u8]> = TableDefinition::new(name);
                let mut table = txn.open_table(def).map_err(EmuError::store)?;
                for (_, id, bytes) in ws {
                    match bytes {
                        Some(b) => {
                            table
                                .insert(id.as_str(), b.as_slice())
                                .map_err(EmuError::store)?;
                        }
                        None => {
                            table.remove(id.as_str()).map_err(EmuError::store)?;
                        }
                    }
                }
            }
        }
        txn.commit().map_err(EmuError::store)
    }

    /// Writes a batch durably on a blocking thread (the fsync must not stall the runtime).
    pub async fn commit(&self, writes: Vec<Write>) -> Result<(), EmuError> {
        if writes.is_empty() {
            return Ok(());
        }
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.write_blocking(&writes))
            .await
            .map_err(|e| EmuError::Store(format!("commit task: {e}")))?
    }
}
