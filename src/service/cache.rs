//! A small bounded map for hot, immutable data (events, state snapshots). When full it is
//! emptied rather than tracking recency: entries are cheap to reload and the bound is what
//! matters for memory.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

pub struct BoundedCache<K, V> {
    capacity: usize,
    entries: Mutex<HashMap<K, V>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// A cache's counters since start, and its size now (for the metrics).
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub capacity: u64,
}

impl<K: Eq + Hash, V: Clone> BoundedCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::new(HashMap::new()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let found = self.lock().get(key).cloned();
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.lock().len() as u64,
            capacity: self.capacity as u64,
        }
    }

    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(key, value);
    }

    pub fn remove(&self, key: &K) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
        // A panic while holding the lock cannot leave the map inconsistent (each operation is
        // one call on it), so a poisoned lock is still safe to use.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
