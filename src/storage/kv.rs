//! The one storage seam: a small key-value engine trait that every backend implements.
//!
//! Everything above this trait sees named tables of ordered byte keys; nothing here knows
//! what the bytes mean. A backend must give: point reads, multi-reads, ordered range scans in
//! both directions, and atomic write batches that may span tables.

use std::ops::Bound;

/// Failure inside a storage backend. Carries a human-readable context; callers above the
/// storage layer turn it into an internal server error and log it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The backend itself failed (I/O, corruption, lock held by another process).
    #[error("storage backend: {0}")]
    Backend(String),
    /// A stored key or value could not be decoded into its declared type.
    #[error("corrupt or unexpected data in table `{table}`: {detail}")]
    Corrupt { table: &'static str, detail: String },
    /// A table was used that the catalogue does not declare.
    #[error("unknown table `{0}`")]
    UnknownTable(String),
    /// The database was written by a newer conduit or needs a migration that does not exist.
    #[error("{0}")]
    Schema(String),
}

pub type StorageResult<T> = Result<T, StorageError>;

/// Which way a range scan walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Reverse,
}

/// A key range over raw encoded keys; both bounds follow `std::ops::Bound` semantics.
#[derive(Clone, Debug)]
pub struct KeyRange {
    pub start: Bound<Vec<u8>>,
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key in the table.
    pub fn all() -> Self {
        Self { start: Bound::Unbounded, end: Bound::Unbounded }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: Vec<u8>) -> Self {
        let end = match prefix_successor(&prefix) {
            Some(succ) => Bound::Excluded(succ),
            None => Bound::Unbounded,
        };
        Self { start: Bound::Included(prefix), end }
    }

    /// Narrow the range to keys strictly after `key`.
    pub fn after(mut self, key: Vec<u8>) -> Self {
        self.start = Bound::Excluded(key);
        self
    }

    /// Narrow the range to keys up to and including `key`.
    pub fn up_to(mut self, key: Vec<u8>) -> Self {
        self.end = Bound::Included(key);
        self
    }

    /// Narrow the range to keys strictly before `key`.
    pub fn before(mut self, key: Vec<u8>) -> Self {
        self.end = Bound::Excluded(key);
        self
    }

    /// Whether `key` lies inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        let after_start = match &self.start {
            Bound::Included(s) => key >= s.as_slice(),
            Bound::Excluded(s) => key > s.as_slice(),
            Bound::Unbounded => true,
        };
        let before_end = match &self.end {
            Bound::Included(e) => key <= e.as_slice(),
            Bound::Excluded(e) => key < e.as_slice(),
            Bound::Unbounded => true,
        };
        after_start && before_end
    }
}

/// The smallest byte string greater than every string with this prefix, if one exists
/// (a prefix of only 0xFF bytes has none).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut succ = prefix.to_vec();
    while let Some(last) = succ.pop() {
        if last < 0xFF {
            succ.push(last + 1);
            return Some(succ);
        }
    }
    None
}

/// One write inside a batch.
#[derive(Clone, Debug)]
pub enum WriteOp {
    Put { table: &'static str, key: Vec<u8>, value: Vec<u8> },
    Delete { table: &'static str, key: Vec<u8> },
}

/// An ordered list of writes applied atomically: after a crash either all or none are visible.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn put(&mut self, table: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push(WriteOp::Put { table, key, value });
    }

    pub fn delete(&mut self, table: &'static str, key: Vec<u8>) {
        self.ops.push(WriteOp::Delete { table, key });
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A key-value pair as stored.
pub type RawEntry = (Vec<u8>, Vec<u8>);

/// An ordered key-value engine with named tables.
///
/// Implementations must be safe to share across threads; every method may block on I/O, so
/// async callers use them from contexts where a short block is acceptable (RocksDB point
/// reads are served from cache in the common case).
pub trait KvStore: Send + Sync + 'static {
    /// The value stored under `key`, if any.
    fn get(&self, table: &'static str, key: &[u8]) -> StorageResult<Option<Vec<u8>>>;

    /// The values stored under each of `keys`, in the same order.
    fn get_many(&self, table: &'static str, keys: &[Vec<u8>]) -> StorageResult<Vec<Option<Vec<u8>>>>;

    /// The entries whose keys lie in `range`, ascending for `Forward`, descending for `Reverse`.
    fn scan<'a>(
        &'a self,
        table: &'static str,
        range: KeyRange,
        direction: Direction,
    ) -> StorageResult<Box<dyn Iterator<Item = StorageResult<RawEntry>> + 'a>>;

    /// Apply every write in `batch` atomically and durably: once this returns, the batch
    /// survives a crash or power loss (RocksDB: WAL synced).
    fn write(&self, batch: WriteBatch) -> StorageResult<()>;

    /// Apply every write in `batch` atomically and make it visible at once, without waiting
    /// for stable storage: it survives the process being killed, and a power loss only once
    /// a later `sync` has returned (RocksDB: written to the WAL, not yet synced).
    fn write_buffered(&self, batch: WriteBatch) -> StorageResult<()>;

    /// Make every write that returned before this call durable (RocksDB: sync the WAL).
    fn sync(&self) -> StorageResult<()>;

    /// Whether a writer that must be durable before it answers should `write` its batch
    /// synced, rather than `write_buffered` and then wait for a shared `sync` (group
    /// commit, [`super::GroupSync`]). RocksDB: no, a synced write holds an fsync of its own
    /// and group commit is what shares it. PostgreSQL: yes, a synchronous commit costs the
    /// one round trip a buffered commit does, and the server shares one WAL flush among
    /// concurrent commits itself, so a separate sync would be a second transaction.
    fn prefers_synced_writes(&self) -> bool {
        false
    }

    /// Persist everything written so far; called on graceful shutdown.
    fn flush(&self) -> StorageResult<()>;

    /// Whether the database answers now: a round trip for a backend behind a connection
    /// (PostgreSQL), nothing for one in this process, which answers as long as it runs.
    fn ping(&self) -> StorageResult<()> {
        Ok(())
    }

    /// Write a consistent copy of the whole database, as of this call, into the directory
    /// `dir` (which must not exist yet), in a form the same backend opens as a database.
    /// Every write that returned before the call is in it. Backends that cannot (the
    /// in-memory one) say so.
    fn checkpoint(&self, dir: &std::path::Path) -> StorageResult<()> {
        Err(StorageError::Backend(format!(
            "this storage backend cannot write a copy of itself to {}",
            dir.display()
        )))
    }
    /// The engine's numbers (sizes, operation counts) for monitoring, read when asked; a
    /// backend without any answers the empty default.
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// Run `body` as one serializable transaction: its reads (`get`, `scan`) see the
    /// database plus its own earlier writes, and its writes land atomically only if nothing
    /// it read changed before the commit. On a conflict the writes are dropped and `body`
    /// runs again from the start, so it must do nothing outside the transaction that cannot
    /// be repeated. `body` answers `Ok(true)` to commit and `Ok(false)` to abort (nothing is
    /// written); an error aborts too and is returned. Reads during one run may mix states
    /// from before and after another writer's commit, but such a run never commits.
    ///
    /// Blind writes (`write`, `write_buffered`) and transactions are serialised against
    /// each other on the keys they share, so a blind write cannot slip between a
    /// transaction's check and its write. Most callers use [`transaction`] instead.
    fn transact(
        &self,
        durability: Durability,
        body: &mut dyn FnMut(&mut dyn Transaction) -> StorageResult<bool>,
    ) -> StorageResult<()>;

    /// This process's id among the processes sharing the database, when several may
    /// (PostgreSQL with `multi_process`); `None` when the process holds the database alone,
    /// and then the bus methods below are not used.
    fn member(&self) -> Option<u64> {
        None
    }

    /// Send `payload` to every process sharing the database, this one included, and commit
    /// `with` (a synced write, possibly empty) in the same transaction: the message is sent
    /// if and only if the write is committed, for the price of one round trip. Messages
    /// reach each listener in the order their sends returned (across processes too), and a
    /// message sent after a write returned arrives after every earlier message.
    fn publish(&self, payload: &[u8], with: WriteBatch) -> StorageResult<()> {
        let _ = (payload, with);
        Err(StorageError::Backend("this storage backend has no message bus".into()))
    }

    /// Listen to what the processes sharing the database publish; `None` without a bus.
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<BusMessage>> {
        None
    }

    /// Which connection to the bus this process listens on: `None` while it has none
    /// (messages sent meanwhile are lost to it), and a number that changes with each new
    /// connection, before the [`BusMessage::Lost`] that follows it. Without a bus, always
    /// the same.
    fn bus_generation(&self) -> Option<u64> {
        Some(0)
    }

    /// The ids of the processes that have a connection to the database now (a process that
    /// died has none once the database noticed).
    fn live_members(&self) -> StorageResult<Vec<u64>> {
        Ok(self.member().into_iter().collect())
    }

    /// Hold the exclusive role `role` among the processes sharing the database, or find
    /// out that another holds it: `true` while this process holds it. A process holds a
    /// role until it ends or loses its connection to the database (then another may take
    /// it); asking again while holding it costs no round trip. A process that holds the
    /// database alone holds every role.
    fn lead(&self, role: &str) -> StorageResult<bool> {
        let _ = role;
        Ok(true)
    }

    /// Hand out the next `n` values of the durable sequence `name` (values start at 1):
    /// every value is handed out once, across restarts and across every process sharing
    /// the database. The sequence lives in the `sequences` table; callers that need IDs
    /// often take them in blocks ([`super::sequence::Sequence`]).
    fn next_ids(&self, name: &str, n: u64) -> StorageResult<std::ops::Range<u64>> {
        let key = sequence_key(name);
        let mut first = 0;
        self.transact(Durability::Synced, &mut |tx| {
            let last = match tx.get(SEQUENCES_TABLE, &key)? {
                Some(bytes) => decode_sequence(&bytes)?,
                None => 0,
            };
            let end = last.checked_add(n).ok_or_else(|| {
                StorageError::Backend(format!("sequence `{name}` would pass the largest value"))
            })?;
            tx.put(SEQUENCES_TABLE, key.clone(), encode_sequence(end)?);
            first = last + 1;
            Ok(true)
        })?;
        Ok(first..first + n)
    }

    /// The last value the sequence `name` handed out (0 before the first), anywhere.
    fn last_id(&self, name: &str) -> StorageResult<u64> {
        match self.get(SEQUENCES_TABLE, &sequence_key(name))? {
            Some(bytes) => decode_sequence(&bytes),
            None => Ok(0),
        }
    }

    /// Raise the sequence `name` so that it never hands out a value at or below `floor`
    /// (seeding from data written before the sequence existed); a sequence already past
    /// it is left alone.
    fn raise_sequence(&self, name: &str, floor: u64) -> StorageResult<()> {
        let key = sequence_key(name);
        self.transact(Durability::Synced, &mut |tx| {
            let last = match tx.get(SEQUENCES_TABLE, &key)? {
                Some(bytes) => decode_sequence(&bytes)?,
                None => 0,
            };
            if last >= floor {
                return Ok(false);
            }
            tx.put(SEQUENCES_TABLE, key.clone(), encode_sequence(floor)?);
            Ok(true)
        })
    }
}

/// What a listener on the message bus hears.
#[derive(Clone, Debug)]
pub enum BusMessage {
    /// One published payload.
    Payload(std::sync::Arc<[u8]>),
    /// The connection carrying messages was lost and made again: messages may have been
    /// missed, so whatever they maintain must be read again.
    Lost,
}

/// The table holding every sequence's last value handed out (declared in the catalogue as
/// `sequences`; a backend under test opens it too).
pub const SEQUENCES_TABLE: &str = "sequences";

pub(super) fn sequence_key(name: &str) -> Vec<u8> {
    super::codec::KeyCodec::to_key_bytes(&name.to_owned())
}

fn encode_sequence(value: u64) -> StorageResult<Vec<u8>> {
    super::codec::encode_value(1, &value)
        .map_err(|detail| StorageError::Corrupt { table: SEQUENCES_TABLE, detail })
}

fn decode_sequence(bytes: &[u8]) -> StorageResult<u64> {
    super::codec::decode_value(1, bytes)
        .map_err(|detail| StorageError::Corrupt { table: SEQUENCES_TABLE, detail })
}

/// When a committed transaction must be on stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Durable once `transact` returns, as [`KvStore::write`].
    Synced,
    /// Visible at once and surviving a killed process, as [`KvStore::write_buffered`].
    Buffered,
}

/// The reads and writes of one transaction in progress (see [`KvStore::transact`]).
pub trait Transaction {
    /// The value under `key`, including this transaction's own writes.
    fn get(&mut self, table: &'static str, key: &[u8]) -> StorageResult<Option<Vec<u8>>>;

    /// Every entry in `range`, in `direction` order, including this transaction's own
    /// writes. The whole range is checked again at commit, so keep it small.
    fn scan(
        &mut self,
        table: &'static str,
        range: KeyRange,
        direction: Direction,
    ) -> StorageResult<Vec<RawEntry>>;

    /// Queue a write; later reads in this transaction see it.
    fn put(&mut self, table: &'static str, key: Vec<u8>, value: Vec<u8>);

    /// Queue a delete; later reads in this transaction see it.
    fn delete(&mut self, table: &'static str, key: Vec<u8>);

    /// Queue every write of `batch`, in order.
    fn extend(&mut self, batch: WriteBatch) {
        for op in batch.ops {
            match op {
                WriteOp::Put { table, key, value } => self.put(table, key, value),
                WriteOp::Delete { table, key } => self.delete(table, key),
            }
        }
    }
}

/// Run `body` as a transaction on `store` (see [`KvStore::transact`]) and return what it
/// returns. `body` answers `Ok((value, true))` to commit, `Ok((value, false))` to return
/// `value` without writing anything, and any error aborts. `E` is the caller's error type.
pub fn transaction<T, E: From<StorageError>>(
    store: &dyn KvStore,
    durability: Durability,
    mut body: impl FnMut(&mut dyn Transaction) -> Result<(T, bool), E>,
) -> Result<T, E> {
    let mut outcome: Option<Result<T, E>> = None;
    let ran = store.transact(durability, &mut |tx| {
        match body(tx) {
            Ok((value, commit)) => {
                outcome = Some(Ok(value));
                Ok(commit)
            }
            Err(e) => {
                outcome = Some(Err(e));
                // Abort; the caller's error is returned below.
                Ok(false)
            }
        }
    });
    if let Err(e) = ran {
        return Err(E::from(e));
    }
    outcome
        .unwrap_or_else(|| Err(E::from(StorageError::Backend("a transaction ended without running".into()))))
}

/// What a backend tells about itself for monitoring: plain numbers, read on demand.
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    /// Per table (column family), in catalogue order.
    pub tables: Vec<TableStats>,
    /// Bytes the block cache holds now.
    pub block_cache_bytes: u64,
    /// Compactions running now.
    pub running_compactions: u64,
    /// Point reads (`get`), keys read by `get_many`, and scans begun, since start.
    pub gets: u64,
    pub multi_get_keys: u64,
    pub scans: u64,
    /// Write batches applied synced and buffered, and the bytes of keys and values they
    /// carried, since start.
    pub synced_writes: u64,
    pub buffered_writes: u64,
    pub written_bytes: u64,
    /// Syncs of the write-ahead log (group commits), since start.
    pub syncs: u64,
    /// Requests sent to a database server and waited for, since start: each one round trip
    /// (or two, the first time a connection prepares a statement). Zero for an embedded
    /// engine.
    pub requests: u64,
}

/// One table's sizes, as the engine estimates them.
#[derive(Clone, Debug, Default)]
pub struct TableStats {
    pub name: &'static str,
    pub estimated_keys: u64,
    pub live_sst_bytes: u64,
    pub memtable_bytes: u64,
    pub pending_compaction_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_bounds() {
        let r = KeyRange::prefix(vec![1, 0xFF]);
        assert!(r.contains(&[1, 0xFF]));
        assert!(r.contains(&[1, 0xFF, 0]));
        assert!(!r.contains(&[2]));
        assert!(!r.contains(&[1, 0xFE, 0xFF]));
        let all_ff = KeyRange::prefix(vec![0xFF, 0xFF]);
        assert!(matches!(all_ff.end, Bound::Unbounded));
        assert!(all_ff.contains(&[0xFF, 0xFF, 0xFF]));
    }
}
