//! Optimistic transactions for backends without their own: a transaction runs against the
//! live store, remembering what it read and queueing what it writes; at commit the backend
//! takes the key stripes the transaction touched (exclusively), checks that every read still
//! holds, and applies the writes as one batch. A failed check drops the writes and runs the
//! body again.
//!
//! Blind writes take the stripes of the keys they write, shared, so they never run between a
//! transaction's check and its write; blind writes among themselves stay concurrent (RocksDB
//! orders them and groups their WAL syncs). A transaction that scanned a range takes every
//! stripe, since a range has no bounded set of keys.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{RwLock, RwLockReadGuard, RwLockWriteGuard},
};

use super::kv::{
    Direction, KeyRange, KvStore, RawEntry, StorageError, StorageResult, Transaction, WriteBatch, WriteOp,
};

/// Lock stripes; a batch or transaction locks a set of them, as a bit mask, in index order.
pub const STRIPES: usize = 64;
/// Runs of a transaction body before giving up on a key that never stops changing.
const MAX_ATTEMPTS: usize = 10_000;

/// The stripe of one key of one table.
fn stripe(table: &str, key: &[u8]) -> usize {
    // FNV-1a: cheap, and only has to spread keys within this process.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in table.as_bytes().iter().chain([0xFFu8].iter()).chain(key) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % STRIPES as u64) as usize
}

/// The stripes of the keys `batch` writes.
pub fn batch_mask(batch: &WriteBatch) -> u64 {
    batch.ops.iter().fold(0, |mask, op| {
        let (WriteOp::Put { table, key, .. } | WriteOp::Delete { table, key }) = op;
        mask | 1 << stripe(table, key)
    })
}

/// The stripes of a backend: shared by blind writes, exclusive for a transaction's commit.
pub struct Stripes {
    locks: Vec<RwLock<()>>,
}

impl Default for Stripes {
    fn default() -> Self {
        Self { locks: (0..STRIPES).map(|_| RwLock::new(())).collect() }
    }
}

impl Stripes {
    /// Hold the stripes in `mask` shared (a blind write), in index order.
    pub fn shared(&self, mask: u64) -> Vec<RwLockReadGuard<'_, ()>> {
        (0..STRIPES)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| self.locks[i].read().unwrap_or_else(std::sync::PoisonError::into_inner))
            .collect()
    }

    /// Hold the stripes in `mask` exclusively (a transaction's commit), in index order.
    pub fn exclusive(&self, mask: u64) -> Vec<RwLockWriteGuard<'_, ()>> {
        (0..STRIPES)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| self.locks[i].write().unwrap_or_else(std::sync::PoisonError::into_inner))
            .collect()
    }
}

type TableKey = (&'static str, Vec<u8>);
/// A backend's point read, used by the commit's check.
pub type CheckGet<'a> = &'a dyn Fn(&'static str, &[u8]) -> StorageResult<Option<Vec<u8>>>;
/// A backend's range read (forward), used by the commit's check.
pub type CheckScan<'a> = &'a dyn Fn(&'static str, &KeyRange) -> StorageResult<Vec<RawEntry>>;

/// One run of a transaction body: what it read and what it wants to write.
pub struct Recorded<'s> {
    store: &'s dyn KvStore,
    /// The first value each key had when the body read it (before its own writes).
    reads: HashMap<TableKey, Option<Vec<u8>>>,
    /// Every range scanned, with the rows the store held in it.
    scans: Vec<(&'static str, KeyRange, Vec<RawEntry>)>,
    /// The queued writes, in order, and their net effect per key for the body's reads.
    batch: WriteBatch,
    pending: HashMap<TableKey, Option<Vec<u8>>>,
}

impl<'s> Recorded<'s> {
    fn new(store: &'s dyn KvStore) -> Self {
        Self {
            store,
            reads: HashMap::new(),
            scans: Vec::new(),
            batch: WriteBatch::new(),
            pending: HashMap::new(),
        }
    }

    /// The stripes the commit must hold: every key read or written, or all of them once a
    /// range was scanned.
    pub fn mask(&self) -> u64 {
        if !self.scans.is_empty() {
            return u64::MAX;
        }
        self.reads.keys().fold(batch_mask(&self.batch), |mask, (table, key)| mask | 1 << stripe(table, key))
    }

    /// Whether every read still holds, checked with the backend's own reads (the caller
    /// holds the stripes).
    pub fn still_holds(&self, get: CheckGet<'_>, scan: CheckScan<'_>) -> StorageResult<bool> {
        for ((table, key), seen) in &self.reads {
            if get(table, key)? != *seen {
                return Ok(false);
            }
        }
        for (table, range, seen) in &self.scans {
            if scan(table, range)? != *seen {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The writes to apply.
    pub fn take_batch(&mut self) -> WriteBatch {
        std::mem::take(&mut self.batch)
    }
}

impl Transaction for Recorded<'_> {
    fn get(&mut self, table: &'static str, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        let table_key = (table, key.to_vec());
        if let Some(pending) = self.pending.get(&table_key) {
            return Ok(pending.clone());
        }
        if let Some(seen) = self.reads.get(&table_key) {
            return Ok(seen.clone());
        }
        let value = self.store.get(table, key)?;
        self.reads.insert(table_key, value.clone());
        Ok(value)
    }

    fn scan(
        &mut self,
        table: &'static str,
        range: KeyRange,
        direction: Direction,
    ) -> StorageResult<Vec<RawEntry>> {
        let stored: Vec<RawEntry> =
            self.store.scan(table, range.clone(), Direction::Forward)?.collect::<StorageResult<_>>()?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = stored.iter().cloned().collect();
        for ((t, key), value) in &self.pending {
            if *t == table && range.contains(key) {
                match value {
                    Some(v) => merged.insert(key.clone(), v.clone()),
                    None => merged.remove(key),
                };
            }
        }
        self.scans.push((table, range, stored));
        Ok(match direction {
            Direction::Forward => merged.into_iter().collect(),
            Direction::Reverse => merged.into_iter().rev().collect(),
        })
    }

    fn put(&mut self, table: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert((table, key.clone()), Some(value.clone()));
        self.batch.put(table, key, value);
    }

    fn delete(&mut self, table: &'static str, key: Vec<u8>) {
        self.pending.insert((table, key.clone()), None);
        self.batch.delete(table, key);
    }
}

/// Run `body` optimistically on `store` until one run commits: `commit` is handed each run
/// that asked to commit and answers whether its reads still held (and it was applied).
pub fn run(
    store: &dyn KvStore,
    body: &mut dyn FnMut(&mut dyn Transaction) -> StorageResult<bool>,
    commit: &mut dyn FnMut(&mut Recorded<'_>) -> StorageResult<bool>,
) -> StorageResult<()> {
    for attempt in 0..MAX_ATTEMPTS {
        let mut recorded = Recorded::new(store);
        if !body(&mut recorded)? {
            return Ok(());
        }
        if recorded.batch.is_empty() && recorded.reads.is_empty() && recorded.scans.is_empty() {
            return Ok(());
        }
        if commit(&mut recorded)? {
            return Ok(());
        }
        if attempt > 8 {
            std::thread::yield_now();
        }
    }
    Err(StorageError::Backend(format!("a transaction conflicted {MAX_ATTEMPTS} times in a row; giving up")))
}
