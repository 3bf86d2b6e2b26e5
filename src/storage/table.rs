//! Typed handles over the raw engine: `Table<K, V>` encodes keys and versioned values so that
//! services never touch bytes.

use std::{marker::PhantomData, sync::Arc};

use serde::{Serialize, de::DeserializeOwned};

use super::{
    codec::{KeyCodec, decode_value, encode_value},
    kv::{
        Direction, Durability, KeyRange, KvStore, StorageError, StorageResult, Transaction, WriteBatch,
        transaction,
    },
};

/// A table's declaration in the catalogue: its name, documented key layout and value version.
pub struct TableDef<K, V> {
    pub name: &'static str,
    pub value_version: u8,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> TableDef<K, V> {
    pub const fn new(name: &'static str, value_version: u8) -> Self {
        Self { name, value_version, _types: PhantomData }
    }

    /// A handle on this table in `store`.
    pub fn open(&self, store: &Arc<dyn KvStore>) -> Table<K, V> {
        Table {
            name: self.name,
            value_version: self.value_version,
            store: Arc::clone(store),
            _types: PhantomData,
        }
    }
}

/// A typed view of one table. Cheap to clone; all clones share the engine.
pub struct Table<K, V> {
    name: &'static str,
    value_version: u8,
    store: Arc<dyn KvStore>,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            value_version: self.value_version,
            store: Arc::clone(&self.store),
            _types: PhantomData,
        }
    }
}

impl<K: KeyCodec, V: Serialize + DeserializeOwned> Table<K, V> {
    fn corrupt(&self, detail: String) -> StorageError {
        StorageError::Corrupt { table: self.name, detail }
    }

    fn decode(&self, bytes: &[u8]) -> StorageResult<V> {
        decode_value(self.value_version, bytes).map_err(|e| self.corrupt(e))
    }

    /// The value under `key`.
    pub fn get(&self, key: &K) -> StorageResult<Option<V>> {
        self.store.get(self.name, &key.to_key_bytes())?.map(|bytes| self.decode(&bytes)).transpose()
    }

    /// The values under each of `keys`, in order.
    pub fn get_many<'k>(&self, keys: impl IntoIterator<Item = &'k K>) -> StorageResult<Vec<Option<V>>>
    where
        K: 'k,
    {
        let raw: Vec<Vec<u8>> = keys.into_iter().map(KeyCodec::to_key_bytes).collect();
        self.store
            .get_many(self.name, &raw)?
            .into_iter()
            .map(|v| v.map(|bytes| self.decode(&bytes)).transpose())
            .collect()
    }

    /// Whether a row exists under `key`.
    pub fn contains(&self, key: &K) -> StorageResult<bool> {
        Ok(self.store.get(self.name, &key.to_key_bytes())?.is_some())
    }

    /// Queue a write of `value` under `key` into `batch`.
    pub fn put(&self, batch: &mut WriteBatch, key: &K, value: &V) -> StorageResult<()> {
        let bytes = encode_value(self.value_version, value).map_err(|e| self.corrupt(e))?;
        batch.put(self.name, key.to_key_bytes(), bytes);
        Ok(())
    }

    /// Queue a delete of `key` into `batch`.
    pub fn delete(&self, batch: &mut WriteBatch, key: &K) {
        batch.delete(self.name, key.to_key_bytes());
    }

    /// Write one row on its own (a batch of one).
    pub fn insert(&self, key: &K, value: &V) -> StorageResult<()> {
        let mut batch = WriteBatch::new();
        self.put(&mut batch, key, value)?;
        self.store.write(batch)
    }

    /// Delete one row on its own.
    pub fn remove(&self, key: &K) -> StorageResult<()> {
        let mut batch = WriteBatch::new();
        self.delete(&mut batch, key);
        self.store.write(batch)
    }

    /// Every row whose key starts with the encoding of `prefix` (leading key components),
    /// in key order or reversed.
    pub fn scan_prefix<P: KeyCodec>(
        &self,
        prefix: &P,
        direction: Direction,
    ) -> StorageResult<impl Iterator<Item = StorageResult<(K, V)>> + '_> {
        self.scan(KeyRange::prefix(prefix.to_key_bytes()), direction)
    }

    /// Whether any row's key starts with the encoding of `prefix` (one seek; nothing is
    /// decoded).
    pub fn has_prefix<P: KeyCodec>(&self, prefix: &P) -> StorageResult<bool> {
        match self.store.scan(self.name, KeyRange::prefix(prefix.to_key_bytes()), Direction::Forward)?.next()
        {
            Some(row) => row.map(|_| true),
            None => Ok(false),
        }
    }

    /// Queue a delete of every row whose key starts with the encoding of `prefix` into
    /// `batch`, without decoding values; returns how many rows that is.
    pub fn delete_prefix<P: KeyCodec>(&self, batch: &mut WriteBatch, prefix: &P) -> StorageResult<u64> {
        let mut deleted = 0;
        for row in self.store.scan(self.name, KeyRange::prefix(prefix.to_key_bytes()), Direction::Forward)? {
            let (key, _) = row?;
            batch.delete(self.name, key);
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Delete, in one batch, every row whose value `doomed` picks (the sweeps of expired
    /// rows); returns how many. Keys are not decoded. A row rewritten between the scan and
    /// the write goes too, so callers sweep rows that nobody revives (expired ones).
    pub fn remove_where(&self, doomed: impl Fn(&V) -> bool) -> StorageResult<usize> {
        let mut batch = WriteBatch::new();
        let mut removed = 0;
        for row in self.store.scan(self.name, KeyRange::all(), Direction::Forward)? {
            let (key, value) = row?;
            if doomed(&self.decode(&value)?) {
                batch.delete(self.name, key);
                removed += 1;
            }
        }
        if removed > 0 {
            self.store.write(batch)?;
        }
        Ok(removed)
    }

    /// The value under `key`, read inside transaction `tx` (the commit checks it still holds).
    pub fn get_in(&self, tx: &mut dyn Transaction, key: &K) -> StorageResult<Option<V>> {
        tx.get(self.name, &key.to_key_bytes())?.map(|bytes| self.decode(&bytes)).transpose()
    }

    /// Queue a write of `value` under `key` into transaction `tx`.
    pub fn put_in(&self, tx: &mut dyn Transaction, key: &K, value: &V) -> StorageResult<()> {
        let bytes = encode_value(self.value_version, value).map_err(|e| self.corrupt(e))?;
        tx.put(self.name, key.to_key_bytes(), bytes);
        Ok(())
    }

    /// Queue a delete of `key` into transaction `tx`.
    pub fn delete_in(&self, tx: &mut dyn Transaction, key: &K) {
        tx.delete(self.name, key.to_key_bytes());
    }

    /// Every row whose raw key lies in `range`, read inside transaction `tx` (the commit
    /// checks the whole range still holds the same rows, so keep it small).
    pub fn scan_in(
        &self,
        tx: &mut dyn Transaction,
        range: KeyRange,
        direction: Direction,
    ) -> StorageResult<Vec<(K, V)>> {
        tx.scan(self.name, range, direction)?
            .into_iter()
            .map(|(k, v)| {
                let key = K::from_key_bytes(&k).map_err(|e| self.corrupt(format!("key: {e}")))?;
                Ok((key, self.decode(&v)?))
            })
            .collect()
    }

    /// Remove the row under `key` and return it, at most once: of several callers taking
    /// the same row concurrently exactly one gets it (compare-and-delete). Synced.
    pub fn take(&self, key: &K) -> StorageResult<Option<V>> {
        transaction(self.store.as_ref(), Durability::Synced, |tx| {
            let value = self.get_in(tx, key)?;
            if value.is_some() {
                self.delete_in(tx, key);
            }
            let found = value.is_some();
            Ok((value, found))
        })
    }

    /// The store this table lives in (to run transactions spanning tables).
    pub fn store(&self) -> &dyn KvStore {
        self.store.as_ref()
    }

    /// Every row whose raw key lies in `range`.
    pub fn scan(
        &self,
        range: KeyRange,
        direction: Direction,
    ) -> StorageResult<impl Iterator<Item = StorageResult<(K, V)>> + '_> {
        let rows = self.store.scan(self.name, range, direction)?;
        Ok(rows.map(move |row| {
            let (k, v) = row?;
            let key = K::from_key_bytes(&k).map_err(|e| self.corrupt(format!("key: {e}")))?;
            Ok((key, self.decode(&v)?))
        }))
    }
}
