//! A small bounded map for hot, immutable data (events, state snapshots). When full it is
//! emptied rather than tracking recency: entries are cheap to reload and the bound is what
//! matters for memory.

use std::{collections::HashMap, hash::Hash, sync::Mutex};

pub struct BoundedCache<K, V> {
    capacity: usize,
    entries: Mutex<HashMap<K, V>>,
}

impl<K: Eq + Hash, V: Clone> BoundedCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, entries: Mutex::new(HashMap::new()) }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.lock().get(key).cloned()
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
