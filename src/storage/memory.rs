//! An in-memory backend over ordered maps: proves the engine trait is backend-neutral and
//! serves unit tests that need no disk. Not durable.

use std::{
    collections::{BTreeMap, HashMap},
    sync::RwLock,
};

use super::{
    kv::{
        Direction, Durability, KeyRange, KvStore, RawEntry, StorageError, StorageResult, Transaction,
        WriteBatch, WriteOp,
    },
    tables::TableInfo,
    txn,
};

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

/// Tables held in memory behind one lock, so a batch is applied atomically.
pub struct MemoryStore {
    tables: RwLock<HashMap<&'static str, Tree>>,
}

impl MemoryStore {
    pub fn new(tables: &[TableInfo]) -> Self {
        Self { tables: RwLock::new(tables.iter().map(|t| (t.name, Tree::new())).collect()) }
    }

    fn read<T>(&self, table: &'static str, f: impl FnOnce(&Tree) -> T) -> StorageResult<T> {
        let guard = self.tables.read().map_err(|_| StorageError::Backend("poisoned".into()))?;
        guard.get(table).map(f).ok_or_else(|| StorageError::UnknownTable(table.to_owned()))
    }
}

impl KvStore for MemoryStore {
    fn get(&self, table: &'static str, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.read(table, |t| t.get(key).cloned())
    }

    fn get_many(&self, table: &'static str, keys: &[Vec<u8>]) -> StorageResult<Vec<Option<Vec<u8>>>> {
        self.read(table, |t| keys.iter().map(|k| t.get(k).cloned()).collect())
    }

    fn scan<'a>(
        &'a self,
        table: &'static str,
        range: KeyRange,
        direction: Direction,
    ) -> StorageResult<Box<dyn Iterator<Item = StorageResult<RawEntry>> + 'a>> {
        // A snapshot keeps the lock short; fine for the sizes this backend is for.
        let rows: Vec<RawEntry> = self.read(table, |t| {
            t.range((range.start.clone(), range.end.clone())).map(|(k, v)| (k.clone(), v.clone())).collect()
        })?;
        Ok(match direction {
            Direction::Forward => Box::new(rows.into_iter().map(Ok)),
            Direction::Reverse => Box::new(rows.into_iter().rev().map(Ok)),
        })
    }

    fn write(&self, batch: WriteBatch) -> StorageResult<()> {
        let mut guard = self.tables.write().map_err(|_| StorageError::Backend("poisoned".into()))?;
        apply(&mut guard, batch)
    }

    fn write_buffered(&self, batch: WriteBatch) -> StorageResult<()> {
        self.write(batch)
    }

    fn sync(&self) -> StorageResult<()> {
        Ok(())
    }

    fn flush(&self) -> StorageResult<()> {
        Ok(())
    }

    /// Optimistic, like RocksDB's: the body reads under short read locks; the commit checks
    /// and applies under the one write lock, which every blind write also takes.
    fn transact(
        &self,
        _durability: Durability,
        body: &mut dyn FnMut(&mut dyn Transaction) -> StorageResult<bool>,
    ) -> StorageResult<()> {
        txn::run(self, body, &mut |recorded| {
            let mut guard = self.tables.write().map_err(|_| StorageError::Backend("poisoned".into()))?;
            let tables = &*guard;
            let tree = |table: &'static str| {
                tables.get(table).ok_or_else(|| StorageError::UnknownTable(table.to_owned()))
            };
            let holds =
                recorded.still_holds(&|table, key| Ok(tree(table)?.get(key).cloned()), &|table, range| {
                    Ok(tree(table)?
                        .range((range.start.clone(), range.end.clone()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect())
                })?;
            if holds {
                apply(&mut guard, recorded.take_batch())?;
            }
            Ok(holds)
        })
    }
}

fn apply(guard: &mut HashMap<&'static str, Tree>, batch: WriteBatch) -> StorageResult<()> {
    // Validate every table first so a bad op cannot leave half a batch applied.
    for op in &batch.ops {
        let (WriteOp::Put { table, .. } | WriteOp::Delete { table, .. }) = op;
        if !guard.contains_key(table) {
            return Err(StorageError::UnknownTable((*table).to_owned()));
        }
    }
    for op in batch.ops {
        match op {
            WriteOp::Put { table, key, value } => {
                guard.get_mut(table).map(|t| t.insert(key, value));
            }
            WriteOp::Delete { table, key } => {
                guard.get_mut(table).map(|t| t.remove(&key));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_store_passes_the_conformance_suite() {
        let store = super::MemoryStore::new(super::super::conformance::TABLES);
        super::super::conformance::run(&store);
    }

    #[test]
    fn memory_store_passes_the_concurrency_conformance_suite() {
        let store = super::MemoryStore::new(super::super::conformance::TABLES);
        super::super::conformance::run_concurrent(std::sync::Arc::new(store));
    }
}
