//! The outbox: durable, ordered delivery of what the server's stream produces to
//! destinations outside it. One queue per destination (a pusher now; federation peers and
//! application services later) keeps its place in the stream in the `outbox_queues` table,
//! asks its [`Courier`] for what is pending after that place, delivers it in order, and
//! moves its place only once the courier says the delivery is done. So nothing is lost
//! across a restart or a `kill -9`: a delivery that was under way is made again (at least
//! once). A failing destination is retried after 1 s, then twice as long each time up to a
//! configured maximum; what has failed for 24 hours is given up, as in Synapse. Queues run
//! as their own tasks, woken by the write path, which only rings a bell: sending never waits
//! for a delivery. The tasks run on the outbox's own runtime, one thread at a lower
//! scheduling priority than the request workers: when sending and delivering compete for the
//! processor, sending wins, and deliveries use what is left (a message to a room of 1,000
//! pushers makes 1,000 requests). Time is the server's clock, so tests move it by hand.
//!
//! Owns the `outbox_queues` table.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, watch};

use super::clock::Clock;
use crate::{
    Result,
    storage::{
        KvStore, Table, WriteBatch,
        tables::{OUTBOX_QUEUES, OutboxQueueRecord},
    },
};

/// The first wait after a failed delivery; each further failure doubles it.
const FIRST_RETRY_MS: u64 = 1000;
/// How long a destination may fail before what it failed on is given up.
const GIVE_UP_AFTER_MS: u64 = 24 * 3600 * 1000;
/// The wait before reading a queue again after the database failed to answer.
const STORAGE_RETRY: Duration = Duration::from_secs(5);

/// What became of one delivery.
#[derive(Debug)]
pub enum Delivery {
    /// Delivered: the queue moves past it.
    Done,
    /// Will never succeed (the destination refused it for good): logged, and the queue
    /// moves past it.
    Dropped(String),
    /// Failed for now (the destination is down, slow or erring): tried again later.
    Retry(String),
    /// The destination is gone (it asked to be removed): its queue ends.
    Gone(String),
}

pub type Delivering<'a> = Pin<Box<dyn Future<Output = Delivery> + Send + 'a>>;

/// Parcels, each with the stream position the queue moves to once it is delivered.
pub type Parcels<P> = Vec<(u64, P)>;

/// One kind of destination: where its work comes from and how it is delivered.
pub trait Courier: Send + Sync + 'static {
    /// What one delivery carries.
    type Parcel: Send + Sync;
    /// The kind's name, the first part of its queues' keys.
    const KIND: &'static str;
    /// Parcels delivered in one go.
    const BATCH: usize;

    /// What is pending for `destination` after stream position `after`, oldest first, at
    /// most `limit`, each with the position the queue moves to once it is delivered (never
    /// before `after`). `None` when the destination no longer exists: its queue ends.
    fn pending(&self, destination: &str, after: u64, limit: usize) -> Result<Option<Parcels<Self::Parcel>>>;

    /// Deliver `parcels` to `destination`.
    fn deliver<'a>(&'a self, destination: &'a str, parcels: &'a [(u64, Self::Parcel)]) -> Delivering<'a>;
}

/// A running queue's bell.
struct Queue {
    bell: Notify,
    /// Rung since the queue last read what is pending.
    rung: AtomicBool,
}

pub struct Outbox {
    queues: Table<(String, String), OutboxQueueRecord>,
    store: Arc<dyn KvStore>,
    clock: Arc<dyn Clock>,
    max_retry_ms: u64,
    running: Mutex<BTreeMap<(&'static str, String), Arc<Queue>>>,
    stop: watch::Sender<bool>,
    /// The runtime the queues run on, from `start` to `stop`.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

/// The nice value of the outbox's thread: below the request workers (0), so deliveries
/// yield the processor to requests.
#[cfg(target_os = "linux")]
const OUTBOX_NICE: libc::c_int = 10;

/// Lower the calling thread's scheduling priority (on Linux, `setpriority` with
/// `PRIO_PROCESS` and 0 acts on the calling thread alone).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, OUTBOX_NICE);
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // Dropping a runtime from async code is not allowed; letting it go in the background is.
        if let Some(runtime) = self.runtime.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            runtime.shutdown_background();
        }
    }
}

impl Outbox {
    pub fn new(store: &Arc<dyn KvStore>, clock: Arc<dyn Clock>, max_retry: Duration) -> Self {
        Self {
            queues: OUTBOX_QUEUES.open(store),
            store: Arc::clone(store),
            clock,
            max_retry_ms: u64::try_from(max_retry.as_millis()).unwrap_or(u64::MAX).max(FIRST_RETRY_MS),
            running: Mutex::new(BTreeMap::new()),
            stop: watch::channel(false).0,
            runtime: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(&'static str, String), Arc<Queue>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on queues run (called once the server serves).
    pub fn start(&self) -> Result<()> {
        let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        if runtime.is_none() {
            let built = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("outbox")
                .on_thread_start(lower_priority)
                .enable_all()
                .build()
                .map_err(|e| crate::Error::internal(format!("starting the outbox's runtime: {e}")))?;
            *runtime = Some(built);
        }
        Ok(())
    }

    /// Stop every queue; what is under way is delivered again after the next start.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        if let Some(runtime) = self.runtime.lock().unwrap_or_else(|p| p.into_inner()).take() {
            runtime.shutdown_background();
        }
    }

    /// Where a destination's queue stands, if it has one.
    pub fn delivered(&self, kind: &str, destination: &str) -> Result<Option<u64>> {
        Ok(self.queues.get(&(kind.to_owned(), destination.to_owned()))?.map(|r| r.delivered))
    }

    /// Give a destination a queue starting after `start`, unless it has one (or, with
    /// `restart`, replacing the one it has).
    pub fn open(&self, kind: &str, destination: &str, start: u64, restart: bool) -> Result<()> {
        let key = (kind.to_owned(), destination.to_owned());
        if !restart && self.queues.get(&key)?.is_some() {
            return Ok(());
        }
        Ok(self.queues.insert(&key, &OutboxQueueRecord { delivered: start })?)
    }

    /// Run `destination`'s queue, unless it runs already, and ring its bell.
    pub fn run<C: Courier>(self: &Arc<Self>, courier: &Arc<C>, destination: &str) {
        let Some(runtime) =
            self.runtime.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|r| r.handle().clone())
        else {
            return;
        };
        let key = (C::KIND, destination.to_owned());
        let queue = {
            let mut running = self.lock();
            if let Some(queue) = running.get(&key) {
                queue.rung.store(true, Ordering::SeqCst);
                queue.bell.notify_one();
                return;
            }
            let queue = Arc::new(Queue { bell: Notify::new(), rung: AtomicBool::new(false) });
            running.insert(key, Arc::clone(&queue));
            queue
        };
        runtime.spawn(Arc::clone(self).work(Arc::clone(courier), destination.to_owned(), queue));
    }

    /// Ring the bells of the running queues of kind `kind` whose destination starts with
    /// `prefix`; answers how many rang.
    pub fn ring(&self, kind: &'static str, prefix: &str) -> usize {
        let running = self.lock();
        let mut rung = 0;
        for ((_, destination), queue) in running.range((kind, prefix.to_owned())..) {
            if !destination.starts_with(prefix) {
                break;
            }
            queue.rung.store(true, Ordering::SeqCst);
            queue.bell.notify_one();
            rung += 1;
        }
        rung
    }

    /// Queues running now.
    pub fn running(&self) -> usize {
        self.lock().len()
    }

    /// One queue's life: deliver what is pending, in order, until the destination is gone
    /// or the server stops.
    async fn work<C: Courier>(self: Arc<Self>, courier: Arc<C>, destination: String, queue: Arc<Queue>) {
        let mut stop = self.stop.subscribe();
        loop {
            let stopped = self.deliver_all(courier.as_ref(), &destination, &queue, &mut stop).await;
            let mut running = self.lock();
            // A bell rung since the queue last looked (the destination came back) keeps it.
            if !stopped && queue.rung.swap(false, Ordering::SeqCst) {
                continue;
            }
            let key = (C::KIND, destination.clone());
            if running.get(&key).is_some_and(|q| Arc::ptr_eq(q, &queue)) {
                running.remove(&key);
            }
            return;
        }
    }

    /// Deliver until the destination is gone (`false`) or the server stops (`true`).
    async fn deliver_all<C: Courier>(
        &self,
        courier: &C,
        destination: &str,
        queue: &Queue,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        let kind = C::KIND;
        let mut failing_since: Option<u64> = None;
        let mut failures: u32 = 0;
        loop {
            if *stop.borrow() {
                return true;
            }
            queue.rung.store(false, Ordering::SeqCst);
            let pending = match self.delivered(kind, destination) {
                Ok(None) => Ok(None),
                Ok(Some(after)) => courier.pending(destination, after, C::BATCH),
                Err(e) => Err(e),
            };
            let parcels = match pending {
                Ok(Some(parcels)) => parcels,
                Ok(None) => {
                    self.close(kind, destination);
                    return false;
                }
                Err(e) => {
                    tracing::warn!(kind, destination, error = %e, "reading an outbox queue failed");
                    tokio::select! {
                        () = tokio::time::sleep(STORAGE_RETRY) => continue,
                        _ = stop.changed() => return true,
                    }
                }
            };
            let Some(&(last, _)) = parcels.last() else {
                tokio::select! {
                    () = queue.bell.notified() => continue,
                    _ = stop.changed() => return true,
                }
            };
            let outcome = tokio::select! {
                outcome = courier.deliver(destination, &parcels) => outcome,
                _ = stop.changed() => return true,
            };
            match outcome {
                Delivery::Done => {}
                Delivery::Dropped(why) => {
                    tracing::warn!(kind, destination, reason = %why, "delivery refused for good; skipped");
                }
                Delivery::Gone(why) => {
                    tracing::info!(kind, destination, reason = %why, "destination gone; its queue ends");
                    self.close(kind, destination);
                    return false;
                }
                Delivery::Retry(why) => {
                    let now = self.clock.now_ms();
                    let since = *failing_since.get_or_insert(now);
                    if now.saturating_sub(since) < GIVE_UP_AFTER_MS {
                        let wait =
                            FIRST_RETRY_MS.saturating_mul(1 << failures.min(32)).min(self.max_retry_ms);
                        failures = failures.saturating_add(1);
                        tracing::debug!(kind, destination, reason = %why, wait_ms = wait, "delivery failed; retrying");
                        tokio::select! {
                            () = self.clock.sleep_until(now.saturating_add(wait)) => continue,
                            _ = stop.changed() => return true,
                        }
                    }
                    tracing::warn!(kind, destination, reason = %why, "failing for 24 hours; skipped");
                }
            }
            failing_since = None;
            failures = 0;
            if let Err(e) = self.advance(kind, destination, last) {
                tracing::warn!(kind, destination, error = %e, "recording an outbox queue's place failed");
            }
        }
    }

    /// Move a queue's place (unless the queue was closed meanwhile). Written without
    /// waiting for the disk: after a crash of the machine (not only of the process) a
    /// delivery may be made again, which at-least-once allows.
    fn advance(&self, kind: &str, destination: &str, delivered: u64) -> Result<()> {
        let key = (kind.to_owned(), destination.to_owned());
        match self.queues.get(&key)? {
            Some(record) if record.delivered < delivered => {
                let mut batch = WriteBatch::new();
                self.queues.put(&mut batch, &key, &OutboxQueueRecord { delivered })?;
                Ok(self.store.write_buffered(batch)?)
            }
            _ => Ok(()),
        }
    }

    fn close(&self, kind: &str, destination: &str) {
        if let Err(e) = self.queues.remove(&(kind.to_owned(), destination.to_owned())) {
            tracing::warn!(kind, destination, error = %e, "removing an outbox queue failed");
        }
    }
}
