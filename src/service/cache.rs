//! A bounded map for hot, immutable data (events, state maps), bounded by the bytes its
//! entries hold (each weighed once, when inserted). When an insert would pass the budget,
//! entries go in the map's own (arbitrary) order until a quarter of the budget is free:
//! no recency is tracked, so reads cost one lookup, and entries are cheap to reload.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

pub struct BoundedCache<K, V> {
    /// Bytes the entries may hold.
    budget: usize,
    weigh: fn(&V) -> usize,
    entries: Mutex<Entries<K, V>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct Entries<K, V> {
    map: HashMap<K, (V, usize)>,
    bytes: usize,
}

/// A cache's counters since start, and its size now (for the metrics).
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    /// Entries it may hold at most, when bounded by count (0 when bounded by bytes).
    pub capacity: u64,
    /// Bytes its entries hold now, as weighed, and may hold at most.
    pub bytes: u64,
    pub budget: u64,
}

impl<K: Eq + Hash + Clone, V: Clone> BoundedCache<K, V> {
    /// A cache of at most `budget` bytes, each entry weighing what `weigh` says (plus the
    /// key's and the map's share, which `weigh` includes).
    pub fn new(budget: usize, weigh: fn(&V) -> usize) -> Self {
        Self {
            budget,
            weigh,
            entries: Mutex::new(Entries { map: HashMap::new(), bytes: 0 }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let found = self.lock().map.get(key).map(|(v, _)| v.clone());
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    pub fn stats(&self) -> CacheStats {
        let entries = self.lock();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: entries.map.len() as u64,
            capacity: 0,
            bytes: entries.bytes as u64,
            budget: self.budget as u64,
        }
    }

    pub fn insert(&self, key: K, value: V) {
        // Weighed before the lock is taken: a state map is walked once.
        let weight = (self.weigh)(&value);
        if weight > self.budget {
            return;
        }
        let mut entries = self.lock();
        if let Some((_, old)) = entries.map.remove(&key) {
            entries.bytes -= old;
        }
        if entries.bytes + weight > self.budget {
            let target = (self.budget - weight).min(self.budget / 4 * 3);
            let mut bytes = entries.bytes;
            let mut gone = Vec::new();
            for (k, (_, w)) in &entries.map {
                if bytes <= target {
                    break;
                }
                bytes -= w;
                gone.push(k.clone());
            }
            for k in gone {
                entries.map.remove(&k);
            }
            entries.bytes = bytes;
        }
        entries.bytes += weight;
        entries.map.insert(key, (value, weight));
    }

    pub fn remove(&self, key: &K) {
        let mut entries = self.lock();
        if let Some((_, weight)) = entries.map.remove(key) {
            entries.bytes -= weight;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<K, V>> {
        // A panic while holding the lock cannot leave the map inconsistent (each operation
        // finishes its bookkeeping before it can fail), so a poisoned lock is still safe.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::BoundedCache;

    #[allow(clippy::ptr_arg)] // the cache's weigher takes its value type
    fn weigh(v: &Vec<u8>) -> usize {
        v.len()
    }

    #[test]
    fn stays_within_its_budget_and_keeps_what_fits() {
        let cache = BoundedCache::new(1000, weigh);
        for i in 0..100u32 {
            cache.insert(i, vec![0u8; 30]);
            assert!(cache.stats().bytes <= 1000);
        }
        // The latest insert is always kept.
        assert_eq!(cache.get(&99).map(|v| v.len()), Some(30));
        let stats = cache.stats();
        assert!(stats.entries >= 25 && stats.entries <= 33, "{stats:?}");
        assert_eq!(stats.bytes, stats.entries * 30);
    }

    #[test]
    fn replacing_and_removing_keep_the_byte_count_true() {
        let cache = BoundedCache::new(1000, weigh);
        cache.insert(1, vec![0u8; 100]);
        cache.insert(1, vec![0u8; 300]);
        assert_eq!(cache.stats().bytes, 300);
        cache.insert(2, vec![0u8; 200]);
        cache.remove(&1);
        assert_eq!((cache.stats().entries, cache.stats().bytes), (1, 200));
        // An entry larger than the whole budget is not kept, and evicts nothing.
        cache.insert(3, vec![0u8; 2000]);
        assert_eq!(cache.get(&3), None);
        assert_eq!(cache.get(&2).map(|v| v.len()), Some(200));
    }
}
