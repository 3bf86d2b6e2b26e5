//! Group commit: one sync of the store makes every buffered write before it durable, so
//! writers that finish at about the same time share one fsync instead of queueing for one
//! each.
//!
//! A writer applies its batch with `KvStore::write_buffered` (visible at once), then awaits
//! `GroupSync::synced`. A dedicated thread runs the syncs in rounds: a waiter asks for the
//! round after the one in progress (which may have started before its write), and each round
//! covers everyone who asked before it began.

use std::{
    sync::{Arc, Condvar, Mutex},
    thread::JoinHandle,
};

use tokio::sync::watch;

use super::{KvStore, StorageError, StorageResult};

pub struct GroupSync {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Upper bounds of the batch-size buckets (writers covered by one sync).
pub const BATCH_BUCKETS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// Group commit's counters since start (for the metrics): rounds run, writers they
/// covered, and how many rounds fell in each `BATCH_BUCKETS` bucket (above the previous
/// bound, at most this one; not cumulative); the last entry counts rounds above them all.
#[derive(Clone, Debug, Default)]
pub struct GroupSyncStats {
    pub rounds: u64,
    pub writers: u64,
    pub buckets: [u64; BATCH_BUCKETS.len() + 1],
}

struct Shared {
    rounds: Mutex<Rounds>,
    wake: Condvar,
    finished: watch::Sender<Finished>,
}

#[derive(Default)]
struct Rounds {
    /// The highest round someone waits for.
    requested: u64,
    /// The last round the syncer began.
    started: u64,
    stopping: bool,
    /// Writers that asked since the last round began (the next round's batch).
    asking: u64,
    stats: GroupSyncStats,
}

/// The outcome of the latest finished round.
#[derive(Clone, Default)]
struct Finished {
    round: u64,
    error: Option<Arc<str>>,
}

impl GroupSync {
    /// Start the sync thread for `store`.
    pub fn start(store: Arc<dyn KvStore>) -> StorageResult<Self> {
        let shared = Arc::new(Shared {
            rounds: Mutex::new(Rounds::default()),
            wake: Condvar::new(),
            finished: watch::channel(Finished::default()).0,
        });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("group-sync".to_owned())
            .spawn(move || worker.run(store.as_ref()))
            .map_err(|e| StorageError::Backend(format!("cannot start the sync thread: {e}")))?;
        Ok(Self { shared, thread: Some(thread) })
    }

    /// Wait until every write that returned before this call is durable.
    pub async fn synced(&self) -> StorageResult<()> {
        let mut finished = self.shared.finished.subscribe();
        let round = {
            let mut rounds = self.shared.lock();
            // The round in progress may have begun before our write: only the next one
            // certainly covers it.
            let round = rounds.started + 1;
            rounds.requested = rounds.requested.max(round);
            rounds.asking += 1;
            round
        };
        self.shared.wake.notify_one();
        let outcome = finished
            .wait_for(|f| f.round >= round)
            .await
            .map_err(|_| StorageError::Backend("the sync thread has stopped".to_owned()))?;
        // A later round that succeeded covers ours too; only the latest outcome matters.
        match &outcome.error {
            None => Ok(()),
            Some(error) => Err(StorageError::Backend(format!("syncing writes: {error}"))),
        }
    }
}

impl GroupSync {
    /// Rounds and batch sizes so far.
    pub fn stats(&self) -> GroupSyncStats {
        self.shared.lock().stats.clone()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Rounds> {
        self.rounds.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn run(&self, store: &dyn KvStore) {
        loop {
            let round = {
                let mut rounds = self.lock();
                while rounds.requested <= rounds.started && !rounds.stopping {
                    rounds = self.wake.wait(rounds).unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                if rounds.requested <= rounds.started {
                    return;
                }
                rounds.started += 1;
                let batch = std::mem::take(&mut rounds.asking);
                rounds.stats.rounds += 1;
                rounds.stats.writers += batch;
                let bucket = BATCH_BUCKETS.iter().position(|&b| batch <= b).unwrap_or(BATCH_BUCKETS.len());
                rounds.stats.buckets[bucket] += 1;
                rounds.started
            };
            let error = store.sync().err().map(|e| Arc::from(e.to_string()));
            if let Some(error) = &error {
                tracing::error!(%error, "syncing the store failed");
            }
            self.finished.send_replace(Finished { round, error });
        }
    }
}

impl Drop for GroupSync {
    /// Finish the rounds already asked for, then stop the thread.
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::storage::{
        Direction, WriteBatch,
        kv::{KeyRange, RawEntry},
    };

    /// A store that only counts syncs and can be made to fail them.
    #[derive(Default)]
    struct CountingStore {
        syncs: AtomicU64,
        failing: std::sync::atomic::AtomicBool,
    }

    impl KvStore for CountingStore {
        fn get(&self, _: &'static str, _: &[u8]) -> StorageResult<Option<Vec<u8>>> {
            Ok(None)
        }
        fn get_many(&self, _: &'static str, keys: &[Vec<u8>]) -> StorageResult<Vec<Option<Vec<u8>>>> {
            Ok(vec![None; keys.len()])
        }
        fn scan<'a>(
            &'a self,
            _: &'static str,
            _: KeyRange,
            _: Direction,
        ) -> StorageResult<Box<dyn Iterator<Item = StorageResult<RawEntry>> + 'a>> {
            Ok(Box::new(std::iter::empty()))
        }
        fn write(&self, _: WriteBatch) -> StorageResult<()> {
            Ok(())
        }
        fn write_buffered(&self, _: WriteBatch) -> StorageResult<()> {
            Ok(())
        }
        fn sync(&self) -> StorageResult<()> {
            std::thread::sleep(std::time::Duration::from_millis(5));
            self.syncs.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                return Err(StorageError::Backend("disk gone".to_owned()));
            }
            Ok(())
        }
        fn flush(&self) -> StorageResult<()> {
            Ok(())
        }
        fn transact(
            &self,
            _: crate::storage::Durability,
            _: &mut dyn FnMut(&mut dyn crate::storage::Transaction) -> StorageResult<bool>,
        ) -> StorageResult<()> {
            Err(StorageError::Backend("this test store has no transactions".to_owned()))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_waiters_share_syncs_and_each_waits_for_one() {
        let store = Arc::new(CountingStore::default());
        let group = Arc::new(GroupSync::start(Arc::clone(&store) as Arc<dyn KvStore>).unwrap());
        group.synced().await.unwrap();
        assert_eq!(store.syncs.load(Ordering::SeqCst), 1, "a lone waiter gets its own sync");

        let waiters: Vec<_> = (0..50)
            .map(|_| {
                let group = Arc::clone(&group);
                tokio::spawn(async move { group.synced().await })
            })
            .collect();
        for waiter in waiters {
            waiter.await.unwrap().unwrap();
        }
        let syncs = store.syncs.load(Ordering::SeqCst) - 1;
        assert!((1..50).contains(&syncs), "50 waiters took {syncs} syncs");
        // The metrics' numbers: every round counted once, with the writers it covered.
        let stats = group.stats();
        assert_eq!((stats.rounds, stats.writers), (syncs + 1, 51));
        assert_eq!(stats.buckets.iter().sum::<u64>(), stats.rounds);
    }

    #[tokio::test]
    async fn a_failed_sync_fails_its_waiters_and_a_later_one_recovers() {
        let store = Arc::new(CountingStore::default());
        let group = GroupSync::start(Arc::clone(&store) as Arc<dyn KvStore>).unwrap();
        store.failing.store(true, Ordering::SeqCst);
        let error = group.synced().await.unwrap_err().to_string();
        assert!(error.contains("disk gone"), "{error}");
        store.failing.store(false, Ordering::SeqCst);
        group.synced().await.unwrap();
    }
}
