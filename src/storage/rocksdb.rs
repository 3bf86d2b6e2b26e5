//! The embedded default backend: RocksDB, one column family per catalogue table, WAL on.

use std::{
    ops::Bound,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, IteratorMode, Options,
    ReadOptions,
};

use super::{
    kv::{
        Direction, Durability, KeyRange, KvStore, RawEntry, StorageError, StorageResult, StoreStats,
        TableStats, Transaction, WriteBatch, WriteOp,
    },
    tables::TableInfo,
    txn::{self, Stripes},
};

/// A RocksDB database holding the given tables.
pub struct RocksDbStore {
    db: DB,
    tables: Vec<&'static str>,
    counts: Counts,
    /// Key stripes serialising transactions' commits against writes to the keys they read.
    stripes: Stripes,
}

/// Operation counters for the metrics (relaxed atomics: one add per operation).
#[derive(Default)]
struct Counts {
    gets: AtomicU64,
    multi_get_keys: AtomicU64,
    scans: AtomicU64,
    synced_writes: AtomicU64,
    buffered_writes: AtomicU64,
    written_bytes: AtomicU64,
    syncs: AtomicU64,
}

/// Run `f`, which waits on the disk (a WAL fsync), telling tokio first when called on a
/// worker of a multi-threaded runtime, so the worker's other tasks move to another thread
/// instead of queueing behind the fsync. Elsewhere (a plain thread, the group-commit thread,
/// a current-thread runtime in tests) `f` simply runs.
fn off_worker<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn backend(e: rocksdb::Error) -> StorageError {
    StorageError::Backend(e.into_string())
}

/// Memory all memtables together may use before the largest is flushed.
const MEMTABLE_BUDGET: usize = 32 << 20;
/// One table's memtable size before it is flushed.
const MEMTABLE_PER_TABLE: usize = 8 << 20;
/// Write-ahead log the database keeps before it flushes the tables holding the oldest log
/// file, so the file can go. A log file is deleted only once every table with writes in it
/// has flushed them; a table written rarely would otherwise keep every later file alive (by
/// default RocksDB allows four times all memtables together, gigabytes for this many tables).
const MAX_WAL_BYTES: u64 = 64 << 20;

impl RocksDbStore {
    /// Open (creating if needed) the database at `path` with one column family per table.
    ///
    /// Fails with a clear message when another process holds the database lock.
    pub fn open(path: &Path, tables: &[TableInfo]) -> StorageResult<Self> {
        Self::open_with_wal_limit(path, tables, MAX_WAL_BYTES)
    }

    /// [`Self::open`] with another bound on the write-ahead log (tests use a small one).
    pub fn open_with_wal_limit(path: &Path, tables: &[TableInfo], max_wal_bytes: u64) -> StorageResult<Self> {
        std::fs::create_dir_all(path).map_err(|e| {
            StorageError::Backend(format!("cannot create database directory {}: {e}", path.display()))
        })?;
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_compression_type(DBCompressionType::Lz4);
        // Bounded file handles: a service on a shared host should not exhaust descriptors.
        db_opts.set_max_open_files(512);
        db_opts.set_keep_log_file_num(4);
        // Every table is a column family with its own memtable; without a shared cap each
        // may grow to its own 64 MiB before flushing, which makes the resident memory of a
        // busy server a multiple of the table count.
        db_opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        db_opts.set_max_total_wal_size(max_wal_bytes);

        let mut cf_opts = Options::default();
        cf_opts.set_compression_type(DBCompressionType::Lz4);
        cf_opts.set_write_buffer_size(MEMTABLE_PER_TABLE);
        // Point reads that find nothing (a new transaction ID, an unknown event) are on every
        // send; without filters each one reads an index block of every table file.
        let mut table_opts = BlockBasedOptions::default();
        table_opts.set_bloom_filter(10.0, false);
        cf_opts.set_block_based_table_factory(&table_opts);
        let descriptors = tables.iter().map(|t| ColumnFamilyDescriptor::new(t.name, cf_opts.clone()));
        let db = DB::open_cf_descriptors(&db_opts, path, descriptors).map_err(|e| {
            let msg = e.into_string();
            if msg.contains("lock") || msg.contains("Resource temporarily unavailable") {
                StorageError::Backend(format!(
                    "the database at {} is in use by another process (is a conduit server \
                     running?): {msg}",
                    path.display()
                ))
            } else {
                StorageError::Backend(msg)
            }
        })?;
        Ok(Self {
            db,
            tables: tables.iter().map(|t| t.name).collect(),
            counts: Counts::default(),
            stripes: Stripes::default(),
        })
    }

    fn property(&self, cf: &ColumnFamily, name: &str) -> u64 {
        self.db.property_int_value_cf(cf, name).ok().flatten().unwrap_or(0)
    }

    /// A blind write: shares the stripes of its keys with other blind writes, so none runs
    /// between a transaction's check and its write.
    fn apply(&self, batch: WriteBatch, sync: bool) -> StorageResult<()> {
        let _stripes = self.stripes.shared(txn::batch_mask(&batch));
        self.apply_unlocked(batch, sync)
    }

    fn apply_unlocked(&self, batch: WriteBatch, sync: bool) -> StorageResult<()> {
        let counter = if sync { &self.counts.synced_writes } else { &self.counts.buffered_writes };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut rb = rocksdb::WriteBatch::default();
        for op in batch.ops {
            match op {
                WriteOp::Put { table, key, value } => rb.put_cf(self.cf(table)?, key, value),
                WriteOp::Delete { table, key } => rb.delete_cf(self.cf(table)?, key),
            }
        }
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(sync);
        self.counts.written_bytes.fetch_add(rb.size_in_bytes() as u64, Ordering::Relaxed);
        if sync {
            off_worker(|| self.db.write_opt(rb, &opts)).map_err(backend)
        } else {
            self.db.write_opt(rb, &opts).map_err(backend)
        }
    }

    fn cf(&self, table: &'static str) -> StorageResult<&ColumnFamily> {
        self.db.cf_handle(table).ok_or_else(|| StorageError::UnknownTable(table.to_owned()))
    }
}

impl KvStore for RocksDbStore {
    fn get(&self, table: &'static str, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.counts.gets.fetch_add(1, Ordering::Relaxed);
        self.db.get_cf(self.cf(table)?, key).map_err(backend)
    }

    fn get_many(&self, table: &'static str, keys: &[Vec<u8>]) -> StorageResult<Vec<Option<Vec<u8>>>> {
        let cf = self.cf(table)?;
        self.counts.multi_get_keys.fetch_add(keys.len() as u64, Ordering::Relaxed);
        self.db
            .batched_multi_get_cf(cf, keys, false)
            .into_iter()
            .map(|r| r.map(|v| v.map(|s| s.to_vec())).map_err(backend))
            .collect()
    }

    fn scan<'a>(
        &'a self,
        table: &'static str,
        range: KeyRange,
        direction: Direction,
    ) -> StorageResult<Box<dyn Iterator<Item = StorageResult<RawEntry>> + 'a>> {
        let cf = self.cf(table)?;
        self.counts.scans.fetch_add(1, Ordering::Relaxed);
        let mut read_opts = ReadOptions::default();
        // Let RocksDB stop at the bounds instead of us filtering past them.
        if let Bound::Included(start) | Bound::Excluded(start) = &range.start {
            read_opts.set_iterate_lower_bound(start.clone());
        }
        match &range.end {
            Bound::Excluded(end) => read_opts.set_iterate_upper_bound(end.clone()),
            // The first key after `end` is `end` followed by a zero byte.
            Bound::Included(end) => {
                let mut after = end.clone();
                after.push(0);
                read_opts.set_iterate_upper_bound(after);
            }
            Bound::Unbounded => {}
        }
        let mode = match direction {
            Direction::Forward => IteratorMode::Start,
            Direction::Reverse => IteratorMode::End,
        };
        let iter = self.db.iterator_cf_opt(cf, read_opts, mode);
        // An excluded start is the one bound RocksDB cannot express: that one key is filtered.
        Ok(Box::new(iter.filter_map(move |item| match item {
            Ok((k, v)) => range.contains(&k).then(|| Ok((k.into_vec(), v.into_vec()))),
            Err(e) => Some(Err(backend(e))),
        })))
    }

    fn write(&self, batch: WriteBatch) -> StorageResult<()> {
        // Synced: a logout, password change or deactivation must survive a power loss, not
        // only a process crash.
        self.apply(batch, true)
    }

    fn write_buffered(&self, batch: WriteBatch) -> StorageResult<()> {
        // The WAL record is written to the file (the OS holds it) before this returns, so a
        // killed process loses nothing; `sync` makes it survive a power loss.
        self.apply(batch, false)
    }

    fn sync(&self) -> StorageResult<()> {
        self.counts.syncs.fetch_add(1, Ordering::Relaxed);
        off_worker(|| self.db.flush_wal(true)).map_err(backend)
    }

    fn flush(&self) -> StorageResult<()> {
        self.db.flush_wal(true).map_err(backend)?;
        self.db.flush().map_err(backend)
    }

    /// Optimistic (see `storage::txn`): the body reads the live database; the commit holds
    /// the stripes of every key it touched, checks its reads, writes the batch unsynced and,
    /// for `Synced`, syncs the WAL after letting the stripes go, so other writers do not wait
    /// for its fsync.
    fn transact(
        &self,
        durability: Durability,
        body: &mut dyn FnMut(&mut dyn Transaction) -> StorageResult<bool>,
    ) -> StorageResult<()> {
        let mut wrote = false;
        txn::run(self, body, &mut |recorded| {
            let _stripes = self.stripes.exclusive(recorded.mask());
            let holds = recorded.still_holds(
                &|table, key| self.db.get_cf(self.cf(table)?, key).map_err(backend),
                &|table, range| self.scan(table, range.clone(), Direction::Forward)?.collect(),
            )?;
            if holds {
                let batch = recorded.take_batch();
                wrote = !batch.is_empty();
                if wrote {
                    self.apply_unlocked(batch, false)?;
                }
            }
            Ok(holds)
        })?;
        if wrote && durability == Durability::Synced {
            self.sync()?;
        }
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        let mut stats = StoreStats::default();
        for &name in &self.tables {
            let Some(cf) = self.db.cf_handle(name) else { continue };
            stats.tables.push(TableStats {
                name,
                estimated_keys: self.property(cf, "rocksdb.estimate-num-keys"),
                live_sst_bytes: self.property(cf, "rocksdb.live-sst-files-size"),
                memtable_bytes: self.property(cf, "rocksdb.cur-size-all-mem-tables"),
                pending_compaction_bytes: self.property(cf, "rocksdb.estimate-pending-compaction-bytes"),
            });
            // The tables share one block cache (one table factory): any table tells its usage.
            stats.block_cache_bytes =
                stats.block_cache_bytes.max(self.property(cf, "rocksdb.block-cache-usage"));
        }
        stats.running_compactions =
            self.db.property_int_value("rocksdb.num-running-compactions").ok().flatten().unwrap_or(0);
        let c = &self.counts;
        stats.gets = c.gets.load(Ordering::Relaxed);
        stats.multi_get_keys = c.multi_get_keys.load(Ordering::Relaxed);
        stats.scans = c.scans.load(Ordering::Relaxed);
        stats.synced_writes = c.synced_writes.load(Ordering::Relaxed);
        stats.buffered_writes = c.buffered_writes.load(Ordering::Relaxed);
        stats.written_bytes = c.written_bytes.load(Ordering::Relaxed);
        stats.syncs = c.syncs.load(Ordering::Relaxed);
        stats
    }

    /// A RocksDB checkpoint: the memtables are flushed, then the table files are hard-linked
    /// (copied when `dir` is on another filesystem) with the manifest and WAL as of now.
    fn checkpoint(&self, dir: &Path) -> StorageResult<()> {
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(backend)?;
        checkpoint.create_checkpoint(dir).map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rocksdb_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksDbStore::open(dir.path(), super::super::conformance::TABLES).unwrap();
        super::super::conformance::run(&store);
    }

    #[test]
    fn rocksdb_passes_the_concurrency_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksDbStore::open(dir.path(), super::super::conformance::TABLES).unwrap();
        super::super::conformance::run_concurrent(std::sync::Arc::new(store));
    }

    /// Bytes of write-ahead log files in a database directory.
    fn wal_bytes(dir: &Path) -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum()
    }

    #[test]
    fn write_ahead_logs_are_reclaimed_while_running() {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksDbStore::open_with_wal_limit(dir.path(), super::super::conformance::TABLES, 1 << 20)
            .unwrap();
        // Each round: one row into a table written rarely (its memtable never fills, so it
        // holds every log file it has a row in), then enough into another table to fill
        // its memtable, which flushes and starts a new log file. Without the bound every
        // round's file stays (about 36 MiB here); with it the oldest files' tables are
        // flushed and the files go.
        for round in 0..4u32 {
            let mut b = WriteBatch::new();
            b.put("conf_a", round.to_be_bytes().to_vec(), b"v".to_vec());
            store.write(b).unwrap();
            for i in 0..90u32 {
                let mut b = WriteBatch::new();
                b.put("conf_b", (round * 1000 + i).to_be_bytes().to_vec(), vec![i as u8; 100 << 10]);
                store.write_buffered(b).unwrap();
            }
        }
        store.sync().unwrap();
        let kept = wal_bytes(dir.path());
        assert!(kept < 20 << 20, "{kept} bytes of write-ahead log kept");
        // Nothing was lost by flushing.
        assert_eq!(store.get("conf_a", &0u32.to_be_bytes()).unwrap(), Some(b"v".to_vec()));
        assert_eq!(store.get("conf_b", &3089u32.to_be_bytes()).unwrap().map(|v| v.len()), Some(100 << 10));
    }

    #[test]
    fn data_survives_reopen_and_a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tables = super::super::conformance::TABLES;
        {
            let store = RocksDbStore::open(dir.path(), tables).unwrap();
            let mut b = WriteBatch::new();
            b.put("conf_a", b"k".to_vec(), b"v".to_vec());
            store.write(b).unwrap();
            let second = RocksDbStore::open(dir.path(), tables);
            let err = second.err().expect("lock must be exclusive").to_string();
            assert!(err.contains("in use by another process"), "{err}");
        }
        let store = RocksDbStore::open(dir.path(), tables).unwrap();
        assert_eq!(store.get("conf_a", b"k").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn a_checkpoint_holds_every_write_made_before_it_and_opens_as_a_database() {
        let dir = tempfile::tempdir().unwrap();
        let tables = super::super::conformance::TABLES;
        let store = RocksDbStore::open(&dir.path().join("live"), tables).unwrap();
        let mut synced = WriteBatch::new();
        synced.put("conf_a", b"synced".to_vec(), b"1".to_vec());
        store.write(synced).unwrap();
        // Written to the memtable and WAL but not synced: still in the copy.
        let mut buffered = WriteBatch::new();
        buffered.put("conf_a", b"buffered".to_vec(), b"2".to_vec());
        store.write_buffered(buffered).unwrap();
        let copy = dir.path().join("copy");
        store.checkpoint(&copy).unwrap();
        let mut later = WriteBatch::new();
        later.put("conf_a", b"later".to_vec(), b"3".to_vec());
        store.write(later).unwrap();
        // The live database stays open: the copy opens beside it.
        let reopened = RocksDbStore::open(&copy, tables).unwrap();
        assert_eq!(reopened.get("conf_a", b"synced").unwrap(), Some(b"1".to_vec()));
        assert_eq!(reopened.get("conf_a", b"buffered").unwrap(), Some(b"2".to_vec()));
        assert_eq!(reopened.get("conf_a", b"later").unwrap(), None);
        // An existing target is refused rather than mixed into.
        assert!(store.checkpoint(&copy).is_err());
    }
}
