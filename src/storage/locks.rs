//! One keyed-lock abstraction for every "one writer at a time per X" rule in the services
//! (per user, per room, per media item): a map from key to lock whose entries go when nobody
//! holds or waits for them, so the map is bounded by the keys in use, not the keys ever seen.
//!
//! Two flavours share the map logic: [`KeyedLocks`] for async code that holds the lock across
//! an `.await`, and [`KeyedMutexes`] for synchronous critical sections (a read, a check and a
//! write), which must not be held across an `.await`. Both are in-process: several processes
//! sharing one database need the database's own locks or transactions for the same rules.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
};

use tokio::sync::OwnedMutexGuard;

struct Registry<K, L> {
    map: Mutex<HashMap<K, Arc<L>>>,
}

impl<K: Eq + Hash + Clone, L: Default> Registry<K, L> {
    fn new() -> Self {
        Self { map: Mutex::new(HashMap::new()) }
    }

    fn entry(&self, key: &K) -> Arc<L> {
        Arc::clone(self.map.lock().unwrap_or_else(PoisonError::into_inner).entry(key.clone()).or_default())
    }

    /// Forget `key`'s lock if only the map and the releasing holder (`held`) still have it:
    /// nobody else holds or waits for it.
    fn release(&self, key: &K, held: usize) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(key).is_some_and(|lock| Arc::strong_count(lock) <= 1 + held) {
            map.remove(key);
        }
    }

    fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// Async keyed locks: `lock(key).await` waits without blocking a worker thread.
pub struct KeyedLocks<K> {
    registry: Registry<K, tokio::sync::Mutex<()>>,
}

impl<K: Eq + Hash + Clone> Default for KeyedLocks<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone> KeyedLocks<K> {
    pub fn new() -> Self {
        Self { registry: Registry::new() }
    }

    /// Wait for, then hold, the lock of `key` until the guard is dropped.
    pub async fn lock(&self, key: &K) -> KeyedGuard<'_, K> {
        let guard = self.registry.entry(key).lock_owned().await;
        KeyedGuard { locks: self, key: key.clone(), guard: Some(guard) }
    }

    /// Keys with a lock held or awaited now (the map's size).
    pub fn in_use(&self) -> usize {
        self.registry.len()
    }
}

/// A held async keyed lock; dropping it releases the lock and prunes the entry if unused.
pub struct KeyedGuard<'a, K: Eq + Hash + Clone> {
    locks: &'a KeyedLocks<K>,
    key: K,
    guard: Option<OwnedMutexGuard<()>>,
}

impl<K: Eq + Hash + Clone> Drop for KeyedGuard<'_, K> {
    fn drop(&mut self) {
        // Unlock first, then prune: the guard's own handle is gone by then.
        drop(self.guard.take());
        self.locks.registry.release(&self.key, 0);
    }
}

/// Synchronous keyed locks for short critical sections that do not `.await`. Waiters park
/// on one condition variable, which suits locks held for a read, a check and a write.
pub struct KeyedMutexes<K> {
    /// Per key in use: whether it is held, and how many wait for it.
    state: Mutex<HashMap<K, Waiting>>,
    released: Condvar,
}

#[derive(Default)]
struct Waiting {
    held: bool,
    waiters: usize,
}

impl<K: Eq + Hash + Clone> Default for KeyedMutexes<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone> KeyedMutexes<K> {
    pub fn new() -> Self {
        Self { state: Mutex::new(HashMap::new()), released: Condvar::new() }
    }

    fn state(&self) -> MutexGuard<'_, HashMap<K, Waiting>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Block until holding the lock of `key`; held until the guard is dropped.
    pub fn lock(&self, key: &K) -> KeyedMutexGuard<'_, K> {
        let mut state = self.state();
        loop {
            let entry = state.entry(key.clone()).or_default();
            if !entry.held {
                entry.held = true;
                return KeyedMutexGuard { locks: self, key: key.clone() };
            }
            entry.waiters += 1;
            state = self.released.wait(state).unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = state.get_mut(key) {
                entry.waiters -= 1;
            }
        }
    }

    /// Keys with a lock held or awaited now (the map's size).
    pub fn in_use(&self) -> usize {
        self.state().len()
    }
}

/// A held synchronous keyed lock.
pub struct KeyedMutexGuard<'a, K: Eq + Hash + Clone> {
    locks: &'a KeyedMutexes<K>,
    key: K,
}

impl<K: Eq + Hash + Clone> Drop for KeyedMutexGuard<'_, K> {
    fn drop(&mut self) {
        let mut state = self.locks.state();
        if let Some(entry) = state.get_mut(&self.key) {
            entry.held = false;
            if entry.waiters == 0 {
                state.remove(&self.key);
            }
        }
        drop(state);
        self.locks.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn sync_locks_exclude_per_key_and_forget_unused_keys() {
        let locks = Arc::new(KeyedMutexes::<u32>::new());
        let counters: Arc<Vec<AtomicUsize>> = Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (locks, counters) = (Arc::clone(&locks), Arc::clone(&counters));
                std::thread::spawn(move || {
                    for i in 0..500u32 {
                        let key = i % 3;
                        let _held = locks.lock(&key);
                        let seen = counters[key as usize].load(Ordering::SeqCst);
                        std::thread::yield_now();
                        counters[key as usize].store(seen + 1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total: usize = counters.iter().map(|c| c.load(Ordering::SeqCst)).sum();
        assert_eq!(total, 8 * 500);
        assert_eq!(locks.in_use(), 0, "released keys are pruned");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn async_locks_exclude_per_key_and_forget_unused_keys() {
        let locks = Arc::new(KeyedLocks::<u32>::new());
        let counters: Arc<Vec<AtomicUsize>> = Arc::new((0..3).map(|_| AtomicUsize::new(0)).collect());
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (locks, counters) = (Arc::clone(&locks), Arc::clone(&counters));
                tokio::spawn(async move {
                    for i in 0..200u32 {
                        let key = i % 3;
                        let _held = locks.lock(&key).await;
                        // A non-atomic read-modify-write split by a yield: only exclusion
                        // keeps every increment.
                        let seen = counters[key as usize].load(Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        counters[key as usize].store(seen + 1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let total: usize = counters.iter().map(|c| c.load(Ordering::SeqCst)).sum();
        assert_eq!(total, 16 * 200);
        assert_eq!(locks.in_use(), 0, "released keys are pruned");
    }
}
