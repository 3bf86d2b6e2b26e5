//! A bounded map for hot, immutable data (events, state maps), bounded by the bytes its
//! entries hold (each weighed once, when inserted). When an insert would pass the budget,
//! entries go in the map's own (arbitrary) order until a quarter of the budget is free:
//! no recency is tracked, so reads cost one lookup, and entries are cheap to reload.

use std::{
    borrow::Borrow,
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

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let found = self.lock().map.get(key).map(|(v, _)| v.clone());
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Several keys under one lock (a sync reads tens of thousands of events: one lock each
    /// made two rendering threads take turns at it).
    pub fn get_each<'q, Q>(&self, keys: impl IntoIterator<Item = &'q Q>) -> Vec<Option<V>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + 'q,
    {
        let entries = self.lock();
        let found: Vec<Option<V>> =
            keys.into_iter().map(|key| entries.map.get(key).map(|(v, _)| v.clone())).collect();
        drop(entries);
        let hits = found.iter().filter(|f| f.is_some()).count() as u64;
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses.fetch_add(found.len() as u64 - hits, Ordering::Relaxed);
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

    /// Forget everything.
    pub fn clear(&self) {
        let mut entries = self.lock();
        entries.map.clear();
        entries.bytes = 0;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries<K, V>> {
        // A panic while holding the lock cannot leave the map inconsistent (each operation
        // finishes its bookkeeping before it can fail), so a poisoned lock is still safe.
        self.entries.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Values read from storage and kept whole per key (a user's membership rows, a user's push
/// epochs), for data that changes rarely and is read on every sync. A change drops the key
/// and moves a generation; a read that began under an older generation does not keep what it
/// read, so a value read before a change never outlives it. Bounded by count: past
/// `capacity` keys the map starts over (values are cheap to read again).
pub struct GuardedCache<K, V> {
    capacity: usize,
    inner: Mutex<Guarded<K, V>>,
}

struct Guarded<K, V> {
    map: HashMap<K, V>,
    generation: u64,
}

impl<K: Eq + Hash, V: Clone> GuardedCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, inner: Mutex::new(Guarded { map: HashMap::new(), generation: 0 }) }
    }

    /// The kept value, if any (no read on a miss).
    pub fn peek<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().map.get(key).cloned()
    }

    /// The kept value, or what `load` reads, kept unless a change came meanwhile.
    pub fn get_or_load<Q, E>(&self, key: &Q, load: impl FnOnce() -> Result<V, E>) -> Result<V, E>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let generation = {
            let inner = self.lock();
            if let Some(kept) = inner.map.get(key) {
                return Ok(kept.clone());
            }
            inner.generation
        };
        let value = load()?;
        let mut inner = self.lock();
        if inner.generation == generation {
            if inner.map.len() >= self.capacity {
                inner.map.clear();
            }
            inner.map.insert(key.to_owned(), value.clone());
        }
        Ok(value)
    }

    /// These keys' values changed (the change is committed): they are read afresh, and reads
    /// already under way do not keep what they saw.
    pub fn invalidate<'a, Q>(&self, keys: impl IntoIterator<Item = &'a Q>)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized + 'a,
    {
        let mut inner = self.lock();
        inner.generation += 1;
        for key in keys {
            inner.map.remove(key);
        }
    }

    /// Every value may have changed: all are read afresh, and reads under way do not keep
    /// what they saw.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.map.clear();
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Guarded<K, V>> {
        // Each operation leaves the map and generation consistent before it can panic.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::{BoundedCache, GuardedCache};

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

    #[test]
    fn a_read_begun_before_a_change_is_not_kept() {
        let cache: GuardedCache<String, u32> = GuardedCache::new(10);
        // The change lands while the read is under way: the read's answer is returned but
        // not kept, so the next read sees the new value.
        let read = cache.get_or_load::<str, ()>("a", || {
            cache.invalidate(["a"]);
            Ok(1)
        });
        assert_eq!(read, Ok(1));
        assert_eq!(cache.peek("a"), None);
        assert_eq!(cache.get_or_load::<str, ()>("a", || Ok(2)), Ok(2));
        assert_eq!(cache.get_or_load::<str, ()>("a", || panic!("kept, not read again")), Ok(2));
        cache.invalidate(["a"]);
        assert_eq!(cache.peek("a"), None);
    }

    #[test]
    fn starts_over_past_its_capacity_and_keeps_no_failed_read() {
        let cache: GuardedCache<String, u32> = GuardedCache::new(3);
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            cache.get_or_load::<str, ()>(key, || Ok(i as u32)).unwrap();
        }
        assert_eq!(cache.len(), 3);
        cache.get_or_load::<str, ()>("d", || Ok(9)).unwrap();
        assert_eq!((cache.len(), cache.peek("d"), cache.peek("a")), (1, Some(9), None));
        assert_eq!(cache.get_or_load::<str, &str>("e", || Err("unreadable")), Err("unreadable"));
        assert_eq!(cache.peek("e"), None);
    }
}
