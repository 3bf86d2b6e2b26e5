//! Bytes and tables: the engine trait, its backends, typed tables and the catalogue.
//! Knows nothing of Matrix policy and imports nothing from `service` or `api`.

pub mod codec;
#[doc(hidden)]
pub mod conformance;
pub mod group_sync;
pub mod kv;
pub mod locks;
pub mod memory;
pub mod migrations;
pub mod rocksdb;
pub mod sequence;
pub mod table;
pub mod tables;
pub mod txn;

use std::{path::Path, sync::Arc};

pub use group_sync::GroupSync;
pub use kv::{
    Direction, Durability, KvStore, StorageError, StorageResult, StoreStats, TableStats, Transaction,
    WriteBatch, transaction,
};
pub use table::Table;

/// Open the RocksDB database at `path` with every catalogue table and migrate it.
pub fn open_rocksdb(path: &Path) -> StorageResult<Arc<dyn KvStore>> {
    let store: Arc<dyn KvStore> = Arc::new(rocksdb::RocksDbStore::open(path, tables::ALL_TABLES)?);
    migrations::migrate(&store)?;
    Ok(store)
}
