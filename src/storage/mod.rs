//! Bytes and tables: the engine trait, its backends, typed tables and the catalogue.
//! Knows nothing of Matrix policy and imports nothing from `service` or `api`.

pub mod codec;
#[doc(hidden)]
pub mod conformance;
pub mod copy;
pub mod group_sync;
pub mod kv;
pub mod locks;
pub mod memory;
pub mod migrations;
#[doc(hidden)]
pub mod pg_cluster;
mod pg_conn;
pub mod postgres;
pub mod rocksdb;
pub mod sequence;
pub mod table;
pub mod tables;
pub mod txn;

use std::{path::Path, sync::Arc};

pub use group_sync::GroupSync;
pub use kv::{
    BusMessage, Direction, Durability, KvStore, StorageError, StorageResult, StoreStats, TableStats,
    Transaction, WriteBatch, transaction,
};
pub use table::Table;

/// Open the RocksDB database at `path` with every catalogue table and migrate it.
pub fn open_rocksdb(path: &Path) -> StorageResult<Arc<dyn KvStore>> {
    let store: Arc<dyn KvStore> = Arc::new(rocksdb::RocksDbStore::open(path, tables::ALL_TABLES)?);
    migrations::migrate(&store)?;
    Ok(store)
}

/// Open the PostgreSQL database `options` names, create any missing table and migrate it,
/// under an advisory lock so that processes starting together do it once. A database whose
/// schema is newer than this build is refused.
pub fn open_postgres(options: &postgres::PgOptions) -> StorageResult<Arc<dyn KvStore>> {
    postgres::PgStore::open_with(options, tables::ALL_TABLES, migrations::migrate)
}
