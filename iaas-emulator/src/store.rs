//! The crash-safe store: an in-memory cache of every record, persisted in
//! redb (`<data_dir>/state.redb`), one table per kind keyed by id with the
//! record's JSON as value.
//!
//! Mutations go to the cache and mark rows dirty, remembering each row's value
//! before the request first touched it, so that a failed request can be rolled
//! back in memory ([`TableIo::rollback`]) without rereading the store (which
//! may lag the cache while other requests' writes are being committed). The
//! dirty rows of a request are handed to the group committer
//! ([`crate::commit`]), which writes them with redb's immediate durability
//! (fsync before the transaction returns); handlers answer only after that,
//! so an acknowledged change survives SIGKILL.

use std::collections::BTreeMap;
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
    /// Rows changed since the last drain, each with its value before the
    /// first change (None: it did not exist), for rollback.
    dirty: BTreeMap<String, Option<Row<T>>>,
}

impl<T> Table<T> {
    /// An empty table stored under `name`.
    pub fn new(name: &'static str) -> Self {
        Table {
            name,
            rows: BTreeMap::new(),
            dirty: BTreeMap::new(),
        }
    }

    /// A record by id.
    pub fn get(&self, id: &str) -> Option<&T> {
        self.rows.get(id).map(|r| &r.rec)
    }

    /// Whether the id exists.
    pub fn contains(&self, id: &str) -> bool {
        self.rows.contains_key(id)
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

/// Changes: each remembers the row's value before the request first touched
/// it (hence `Clone`), for [`TableIo::rollback`].
impl<T: Clone> Table<T> {
    /// Marks `id` dirty, saving its current value the first time.
    fn touch(&mut self, id: &str) {
        if !self.dirty.contains_key(id) {
            let before = self.rows.get(id).cloned();
            self.dirty.insert(id.to_string(), before);
        }
    }

    /// A record by id, for modification (marks it dirty).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut T> {
        if !self.rows.contains_key(id) {
            return None;
        }
        self.touch(id);
        self.rows.get_mut(id).map(|r| &mut r.rec)
    }

    /// Inserts or replaces a record; `seq` orders it in Describe output.
    pub fn insert(&mut self, id: &str, seq: u64, rec: T) {
        let seq = self.rows.get(id).map(|r| r.seq).unwrap_or(seq);
        self.touch(id);
        self.rows.insert(id.to_string(), Row { seq, rec });
    }

    /// Removes a record.
    pub fn remove(&mut self, id: &str) -> Option<T> {
        if !self.rows.contains_key(id) {
            return None;
        }
        self.touch(id);
        self.rows.remove(id).map(|r| r.rec)
    }
}

/// A pending write: table, key, new JSON (None = delete).
pub type Write = (&'static str, String, Option<Vec<u8>>);

/// What the store needs from a table regardless of its record type.
pub trait TableIo: Send {
    /// redb table name.
    fn name(&self) -> &'static str;
    /// Serialises the dirty rows (keeping them dirty; see [`TableIo::settle`]).
    fn collect(&self, out: &mut Vec<Write>) -> Result<(), EmuError>;
    /// Forgets the dirty set once its writes are handed over.
    fn settle(&mut self);
    /// Puts every dirty row back to its value before the first change.
    fn rollback(&mut self);
    /// Loads one stored row.
    fn load(&mut self, id: &str, bytes: &[u8]) -> Result<(), EmuError>;
    /// Highest sequence number held.
    fn max_seq(&self) -> u64;
    /// Drops everything (before a reload).
    fn clear(&mut self);
}

impl<T: Serialize + DeserializeOwned + Clone + Send> TableIo for Table<T> {
    fn name(&self) -> &'static str {
        self.name
    }

    fn collect(&self, out: &mut Vec<Write>) -> Result<(), EmuError> {
        for id in self.dirty.keys() {
            let bytes = match self.rows.get(id) {
                Some(row) => Some(serde_json::to_vec(row).map_err(EmuError::store)?),
                None => None,
            };
            out.push((self.name, id.clone(), bytes));
        }
        Ok(())
    }

    fn settle(&mut self) {
        self.dirty.clear();
    }

    fn rollback(&mut self) {
        for (id, before) in std::mem::take(&mut self.dirty) {
            match before {
                Some(row) => {
                    self.rows.insert(id, row);
                }
                None => {
                    self.rows.remove(&id);
                }
            }
        }
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

    /// Writes a batch durably in one transaction (blocking: start-up and the
    /// group committer's thread; see [`Store::commit`] for async callers).
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

#[cfg(test)]
mod tests {
    use super::{Table, TableIo};

    #[test]
    fn rollback_restores_every_touched_row() {
        let mut t: Table<String> = Table::new("t");
        t.insert("keep", 1, "a".into());
        t.insert("edit", 2, "b".into());
        t.insert("gone", 3, "c".into());
        let mut out = Vec::new();
        t.collect(&mut out).unwrap();
        t.settle();
        assert_eq!(out.len(), 3);

        // A request that edits, removes, adds, and edits twice, then fails.
        *t.get_mut("edit").unwrap() = "b2".into();
        *t.get_mut("edit").unwrap() = "b3".into();
        t.remove("gone");
        t.insert("new", 4, "d".into());
        t.remove("new");
        t.insert("new", 5, "e".into());
        t.rollback();
        let now: Vec<&String> = t.ordered();
        assert_eq!(now, ["a", "b", "c"]);
        let mut out = Vec::new();
        t.collect(&mut out).unwrap();
        assert!(out.is_empty(), "nothing left to write after a rollback");

        // Settled changes are not undone by a later rollback.
        t.remove("keep");
        let mut out = Vec::new();
        t.collect(&mut out).unwrap();
        t.settle();
        assert_eq!(out, vec![("t", "keep".to_string(), None)]);
        t.rollback();
        assert!(!t.contains("keep"));
    }
}
