//! Copying a whole database from one backend to another (`conduit migrate-db`): every
//! catalogue table in key order, in batches, then each table verified on both sides by its
//! row count and a SHA-256 over its keys and values.
//!
//! Resumable: batches land in key order, so the last key a target table holds is how far
//! that table got; a resumed copy starts after it. A fresh copy refuses a target that holds
//! anything, so two databases are never merged by accident.

use sha2::{Digest, Sha256};

use super::{
    kv::{Direction, KeyRange, KvStore, StorageError, StorageResult, WriteBatch},
    tables::TableInfo,
};

/// Rows (or bytes of keys and values, whichever comes first) per written batch.
const BATCH_ROWS: usize = 2_000;
const BATCH_BYTES: usize = 8 << 20;

/// What the copy tells as it goes.
#[derive(Debug)]
pub enum CopyEvent<'a> {
    /// A table is starting; `resumed` when the target already held part of it.
    Table { name: &'a str, resumed: bool },
    /// Rows of `name` copied so far in this run.
    Progress { name: &'a str, rows: u64 },
    /// A table was copied and its two sides agree.
    Verified { name: &'a str, rows: u64, sha256: &'a str },
}

/// One table's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableCopy {
    pub name: &'static str,
    pub rows: u64,
    pub sha256: String,
}

/// A database named on the command line: `rocksdb:PATH` or `postgresql:URL` (a bare
/// `postgresql://…` URL is taken too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Rocksdb(std::path::PathBuf),
    Postgresql(String),
}

impl std::str::FromStr for Location {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.starts_with("postgresql://") || text.starts_with("postgres://") {
            return Ok(Location::Postgresql(text.to_owned()));
        }
        match text.split_once(':') {
            Some(("rocksdb", path)) if !path.is_empty() => Ok(Location::Rocksdb(path.into())),
            Some(("postgresql", url)) if !url.is_empty() => Ok(Location::Postgresql(url.to_owned())),
            _ => Err(format!("`{text}`: name a database as rocksdb:PATH or postgresql:URL")),
        }
    }
}

/// Open `location` for copying: RocksDB migrated to this build's schema (a source must be
/// current before it is copied); PostgreSQL with its tables created and nothing else, so
/// that the copy brings the source's schema version along.
pub fn open_location(location: &Location, pool_size: usize) -> StorageResult<std::sync::Arc<dyn KvStore>> {
    match location {
        Location::Rocksdb(path) => {
            if !path.join("CURRENT").exists() {
                return Err(StorageError::Backend(format!("{} holds no RocksDB database", path.display())));
            }
            super::open_rocksdb(path)
        }
        Location::Postgresql(url) => {
            let options = super::postgres::PgOptions {
                url: url.clone(),
                pool_size,
                statement_timeout_ms: None,
                multi_process: false,
            };
            super::postgres::PgStore::open_with(&options, super::tables::ALL_TABLES, |_| Ok(()))
        }
    }
}

/// The row count and SHA-256 of a table: each row hashed as its key and value, each preceded
/// by its length (8 bytes, big-endian), in key order.
pub fn table_digest(store: &dyn KvStore, table: &'static str) -> StorageResult<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut rows = 0u64;
    for row in store.scan(table, KeyRange::all(), Direction::Forward)? {
        let (key, value) = row?;
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(&key);
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(&value);
        rows += 1;
    }
    let digest = hasher.finalize();
    Ok((rows, digest.iter().map(|b| format!("{b:02x}")).collect()))
}

/// Copy every table of `tables` from `from` to `to` and verify each. Without `resume`, a
/// target holding any row is refused.
pub fn copy_database(
    from: &dyn KvStore,
    to: &dyn KvStore,
    tables: &[TableInfo],
    resume: bool,
    progress: &mut dyn FnMut(CopyEvent<'_>),
) -> StorageResult<Vec<TableCopy>> {
    if !resume {
        for t in tables {
            if to.scan(t.name, KeyRange::all(), Direction::Forward)?.next().transpose()?.is_some() {
                return Err(StorageError::Backend(format!(
                    "the target database is not empty (table `{}` has rows); pass --resume to \
                     continue an interrupted copy into it",
                    t.name
                )));
            }
        }
    }
    let mut report = Vec::new();
    for t in tables {
        let name = t.name;
        // How far an earlier run got: the largest key the target holds.
        let last = to.scan(name, KeyRange::all(), Direction::Reverse)?.next().transpose()?.map(|(k, _)| k);
        progress(CopyEvent::Table { name, resumed: last.is_some() });
        let range = match last {
            Some(key) => KeyRange::all().after(key),
            None => KeyRange::all(),
        };
        let mut batch = WriteBatch::new();
        let mut batch_bytes = 0usize;
        let mut rows = 0u64;
        for row in from.scan(name, range, Direction::Forward)? {
            let (key, value) = row?;
            batch_bytes += key.len() + value.len();
            batch.put(name, key, value);
            rows += 1;
            if batch.ops.len() >= BATCH_ROWS || batch_bytes >= BATCH_BYTES {
                to.write_buffered(std::mem::take(&mut batch))?;
                batch_bytes = 0;
                progress(CopyEvent::Progress { name, rows });
            }
        }
        if !batch.is_empty() {
            to.write_buffered(batch)?;
        }
        progress(CopyEvent::Progress { name, rows });
        to.sync()?;
        let (source_rows, source_sum) = table_digest(from, name)?;
        let (target_rows, target_sum) = table_digest(to, name)?;
        if (source_rows, &source_sum) != (target_rows, &target_sum) {
            return Err(StorageError::Backend(format!(
                "table `{name}` differs after copying: the source has {source_rows} rows (sha256 \
                 {source_sum}), the target {target_rows} (sha256 {target_sum}); was either \
                 database written to during the copy?"
            )));
        }
        progress(CopyEvent::Verified { name, rows: source_rows, sha256: &source_sum });
        report.push(TableCopy { name, rows: source_rows, sha256: source_sum });
    }
    to.flush()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{conformance::TABLES, memory::MemoryStore};

    fn filled(rows: u32) -> MemoryStore {
        let store = MemoryStore::new(TABLES);
        let mut batch = WriteBatch::new();
        for i in 0..rows {
            batch.put("conf_a", i.to_be_bytes().to_vec(), vec![i as u8; 10]);
        }
        batch.put("conf_b", Vec::new(), Vec::new());
        store.write(batch).unwrap();
        store
    }

    #[test]
    fn a_copy_is_verified_refuses_a_full_target_and_resumes() {
        let from = filled(5_000);
        let to = MemoryStore::new(TABLES);
        // An interrupted copy: the first rows only.
        let mut part = WriteBatch::new();
        for i in 0..1_234u32 {
            part.put("conf_a", i.to_be_bytes().to_vec(), vec![i as u8; 10]);
        }
        to.write(part).unwrap();
        let refused = copy_database(&from, &to, TABLES, false, &mut |_| {}).unwrap_err().to_string();
        assert!(refused.contains("not empty"), "{refused}");
        let mut resumed_tables = Vec::new();
        let report = copy_database(&from, &to, TABLES, true, &mut |e| {
            if let CopyEvent::Table { name, resumed: true } = e {
                resumed_tables.push(name.to_owned());
            }
        })
        .unwrap();
        assert_eq!(resumed_tables, vec!["conf_a".to_owned()]);
        assert_eq!(report[0].rows, 5_000);
        assert_eq!(report[1].rows, 1);
        assert_eq!(table_digest(&from, "conf_a").unwrap(), table_digest(&to, "conf_a").unwrap());
        // A row that differs is caught by the checksum.
        let mut wrong = WriteBatch::new();
        wrong.put("conf_a", 7u32.to_be_bytes().to_vec(), b"changed".to_vec());
        to.write(wrong).unwrap();
        let err = copy_database(&from, &to, TABLES, true, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("`conf_a` differs"), "{err}");
    }
}
