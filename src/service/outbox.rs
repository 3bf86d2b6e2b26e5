//! The outbox: durable, ordered delivery of what the server's stream produces to
//! destinations outside it. One queue per destination (a pusher, an email pusher, an
//! application service, a federation peer) keeps its place in the stream in the
//! `outbox_queues` table, asks its [`Courier`] for what is pending after that place, delivers
//! it in order, and moves its place only once the courier says the delivery is done. So nothing is lost
//! across a restart or a `kill -9`: a delivery that was under way is made again (at least
//! once). A failing destination is retried after 1 s, then twice as long each time up to a
//! configured maximum; what has failed for 24 hours is given up, as in Synapse. Queues run
//! as their own tasks, woken by the write path, which only rings a bell: sending never waits
//! for a delivery. A courier may answer that nothing is due before a time (an email digest
//! waits for its delay): the queue keeps its place and sleeps until then, or until its bell
//! rings. The tasks run on the outbox's own runtime, one thread at a lower scheduling
//! priority than the request workers: when sending and delivering compete for the
//! processor, sending wins, and deliveries use what is left (a message to a room of 1,000
//! pushers makes 1,000 requests). Time is the server's clock, so tests move it by hand.
//!
//! With several processes on one database, queues run on one of them only, the leader
//! ([`super::leader::Leader`]): elsewhere `run` tells the leader through the stream's bus, and
//! a process that gains the lead runs every queue in the table (`set_leading`).
//!
//! Owns the `outbox_queues` table.

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, watch};

use super::{
    clock::Clock,
    stream::{Change, Heard, Stream},
};
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
/// How long a stop waits for the queues' tasks to end.
const STOP_WAIT: Duration = Duration::from_secs(5);
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
    /// Not due yet (an email digest waits for its delay): nothing was sent and nothing
    /// failed. The queue keeps its place and asks again at this time on the server's clock
    /// (at least a millisecond from now), or sooner when its bell rings.
    NotBefore(u64),
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

    /// The longest wait between retries for this kind, when it has its own setting
    /// (federation's `federation_max_backoff_secs`); otherwise the outbox's.
    fn max_backoff_ms(&self) -> Option<u64> {
        None
    }
}

/// A running queue's bell.
struct Queue {
    bell: Notify,
    /// Rung since the queue last read what is pending.
    rung: AtomicBool,
    /// Cuts short whatever the queue waits for (a retry's backoff, a delivery under way) so
    /// that it asks its courier again: its destination may be gone.
    recheck: Notify,
    /// Ended from outside (this process stopped leading): the task stops at once.
    ended: AtomicBool,
}

/// Runs a queue of one kind for a destination, with the kind's courier.
type Starter = Arc<dyn Fn(&Arc<Outbox>, &str) + Send + Sync>;
/// Asks the leading process to run a queue (kind, destination).
type TellLeader = Box<dyn Fn(&'static str, &str) + Send + Sync>;

pub struct Outbox {
    queues: Table<(String, String), OutboxQueueRecord>,
    store: Arc<dyn KvStore>,
    clock: Arc<dyn Clock>,
    max_retry_ms: u64,
    running: Mutex<BTreeMap<(&'static str, String), Arc<Queue>>>,
    stop: watch::Sender<bool>,
    /// The runtime the queues run on, from `start` to `stop`.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    /// The queues' tasks, which `stop` waits for: shutting the runtime down drops a task at
    /// its next wait, a delivery under way included.
    tasks: tokio_util::task::TaskTracker,
    /// Delivery outcomes by kind since start (for the metrics).
    outcomes: Mutex<BTreeMap<&'static str, DeliveryStats>>,
    /// Whether queues run in this process: always for a process alone; with several, only
    /// while it leads.
    leading: AtomicBool,
    /// Stopped for good: gaining the lead does not start queues again.
    stopped: AtomicBool,
    /// Each served kind's way to run a queue (`serve`).
    starters: Mutex<BTreeMap<&'static str, Starter>>,
    /// With several processes: how to ask the leader to run a queue.
    tell_leader: OnceLock<TellLeader>,
}

/// One kind's delivery outcomes since start, and its queues running now.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeliveryStats {
    pub queues: u64,
    /// Deliveries done (each may carry several parcels).
    pub delivered: u64,
    /// Refused for good by the destination, and skipped.
    pub dropped: u64,
    /// Failed for now, to be tried again.
    pub retried: u64,
    /// Given up after failing for 24 hours.
    pub given_up: u64,
    /// Queues ended because their destination asked to be removed.
    pub gone: u64,
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
            tasks: tokio_util::task::TaskTracker::new(),
            runtime: Mutex::new(None),
            outcomes: Mutex::new(BTreeMap::new()),
            leading: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            starters: Mutex::new(BTreeMap::new()),
            tell_leader: OnceLock::new(),
        }
    }

    /// Several processes share the database: queues run here only once `set_leading` says
    /// this process leads, and a queue asked to run meanwhile is handed to the leader
    /// through `tell_leader`. Called once, when the services are built.
    pub fn share_with_other_processes(
        &self,
        tell_leader: impl Fn(&'static str, &str) + Send + Sync + 'static,
    ) {
        self.leading.store(false, Ordering::SeqCst);
        let _ = self.tell_leader.set(Box::new(tell_leader));
    }

    /// Whether queues run in this process now.
    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// This process gained or lost the lead. Gaining it runs the queue of every destination
    /// in the table whose kind is served here. Losing it ends every queue at once: another
    /// process delivers now, and what was under way here is delivered again there (at
    /// least once).
    pub fn set_leading(self: &Arc<Self>, leading: bool) {
        if leading {
            if self.stopped.load(Ordering::SeqCst) || self.is_leading() {
                return;
            }
            // Queues started from here on must not see the stop of the last loss.
            self.stop.send_replace(false);
            self.leading.store(true, Ordering::SeqCst);
            if let Err(e) = self.adopt() {
                tracing::warn!(error = %e, "reading the outbox's queues failed; they start when rung");
            }
        } else if self.leading.swap(false, Ordering::SeqCst) {
            let ended = std::mem::take(&mut *self.lock());
            for queue in ended.values() {
                queue.ended.store(true, Ordering::SeqCst);
            }
            self.stop.send_replace(true);
        }
    }

    /// Serve queues of `courier`'s kind: a queue in the table may be run by its kind's name
    /// (when this process gains the lead, or the process that opened it asks). The courier
    /// is held until `stop`, as its running queues hold it.
    pub fn serve<C: Courier>(&self, courier: &Arc<C>) {
        let courier = Arc::clone(courier);
        let starter: Starter =
            Arc::new(move |outbox: &Arc<Outbox>, destination: &str| outbox.run(&courier, destination));
        self.starters.lock().unwrap_or_else(|p| p.into_inner()).insert(C::KIND, starter);
    }

    /// Run (or ring) the queue of kind `kind` for `destination` if it is in the table and its
    /// kind is served here: another process opened it or has work for it.
    pub fn run_by_name(self: &Arc<Self>, kind: &str, destination: &str) {
        let starter = self.starters.lock().unwrap_or_else(|p| p.into_inner()).get(kind).cloned();
        match (starter, self.delivered(kind, destination)) {
            (Some(starter), Ok(Some(_))) => starter(self, destination),
            (_, Err(e)) => tracing::warn!(kind, destination, error = %e, "reading an outbox queue failed"),
            _ => {}
        }
    }

    /// Run every queue in the table whose kind is served here.
    fn adopt(self: &Arc<Self>) -> Result<()> {
        let starters = self.starters.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for row in
            self.queues.scan(crate::storage::kv::KeyRange::all(), crate::storage::Direction::Forward)?
        {
            let ((kind, destination), _) = row?;
            if let Some(starter) = starters.get(kind.as_str()) {
                starter(self, &destination);
            }
        }
        Ok(())
    }

    fn count(&self, kind: &'static str, field: fn(&mut DeliveryStats) -> &mut u64) {
        let mut outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        *field(outcomes.entry(kind).or_default()) += 1;
    }

    /// Each kind's delivery outcomes since start and its queues running now.
    pub fn stats(&self) -> Vec<(&'static str, DeliveryStats)> {
        let mut stats = self.outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (kind, _) in self.lock().keys() {
            stats.entry(kind).or_default().queues += 1;
        }
        stats.into_iter().collect()
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

    /// Stop every queue and wait (up to a few seconds) until their tasks are gone, so that
    /// nothing of theirs holds the database any more. Deliveries under way finish first and
    /// record their place; one still under way after `STOP_WAIT` is cut off, and delivered
    /// again by whichever process runs its queue next.
    pub async fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
        // The couriers hold the outbox: let them go.
        self.starters.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.tasks.close();
        if tokio::time::timeout(STOP_WAIT, self.tasks.wait()).await.is_err() {
            tracing::warn!(
                tasks = self.tasks.len(),
                "deliveries still under way at the stop are cut off; they are made again after"
            );
        }
        let runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(runtime) = runtime {
            // Waiting for a runtime blocks, which async code may not do.
            let _ =
                tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(1))).await;
        }
    }

    /// Where a destination's queue stands, if it has one.
    pub fn delivered(&self, kind: &str, destination: &str) -> Result<Option<u64>> {
        Ok(self.queues.get(&(kind.to_owned(), destination.to_owned()))?.map(|r| r.delivered))
    }

    /// The destinations of kind `kind` that have a queue (running or not).
    pub fn destinations(&self, kind: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for row in self.queues.scan_prefix(&kind.to_owned(), crate::storage::Direction::Forward)? {
            let ((_, destination), _) = row?;
            out.push(destination);
        }
        Ok(out)
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
        if !self.is_leading() {
            if let Some(tell_leader) = self.tell_leader.get() {
                tell_leader(C::KIND, destination);
            }
            return;
        }
        let key = (C::KIND, destination.to_owned());
        let queue = {
            let mut running = self.lock();
            if let Some(queue) = running.get(&key) {
                queue.rung.store(true, Ordering::SeqCst);
                queue.bell.notify_one();
                return;
            }
            let queue = Arc::new(Queue {
                bell: Notify::new(),
                rung: AtomicBool::new(false),
                recheck: Notify::new(),
                ended: AtomicBool::new(false),
            });
            running.insert(key, Arc::clone(&queue));
            queue
        };
        self.tasks
            .spawn_on(Arc::clone(self).work(Arc::clone(courier), destination.to_owned(), queue), &runtime);
    }

    /// Run `destination`'s queue at start-up if this process delivers; otherwise nothing:
    /// a process gaining the lead runs every queue in the table anyway.
    pub fn resume<C: Courier>(self: &Arc<Self>, courier: &Arc<C>, destination: &str) {
        if self.is_leading() {
            self.run(courier, destination);
        }
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

    /// Ring the queues of kind `kind` after each change the stream commits that `wanted`
    /// picks (and after missed changes). The ring waits until the change's position is
    /// committed, so a queue, which reads only committed positions, finds it (and does not
    /// move past an earlier position still being written). The task holds the outbox weakly
    /// and ends with the stream.
    pub fn ring_on_commits(
        self: &Arc<Self>,
        stream: &Stream,
        kind: &'static str,
        wanted: impl Fn(&Change) -> bool + Send + 'static,
    ) {
        let mut listener = stream.listen();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let position = match listener.next().await {
                    // Only the leader runs queues: elsewhere there is nothing to ring.
                    Heard::Change(_) if !me.upgrade().is_some_and(|me| me.is_leading()) => continue,
                    Heard::Change(announced) if wanted(&announced.change) => Some(announced.position),
                    Heard::Change(_) => continue,
                    // Something may have been missed: look.
                    Heard::Missed => None,
                    Heard::Closed => return,
                };
                if let Some(position) = position {
                    listener.committed_to(position).await;
                }
                let Some(me) = me.upgrade() else { return };
                me.ring(kind, "");
            }
        });
    }

    /// Make `destination`'s queue ask its courier again at once, cutting short any backoff
    /// or delivery under way: its destination was removed, and the courier's answer that it
    /// is gone ends the queue now rather than after its wait. A destination whose queue does
    /// not run has its place dropped (nothing else would drop it).
    pub fn recheck(&self, kind: &'static str, destination: &str) {
        let running = self.lock();
        match running.get(&(kind, destination.to_owned())) {
            Some(queue) => {
                queue.rung.store(true, Ordering::SeqCst);
                queue.bell.notify_one();
                queue.recheck.notify_one();
            }
            None => {
                drop(running);
                self.close(kind, destination);
            }
        }
    }

    /// Whether `destination`'s queue runs now.
    pub fn is_running(&self, kind: &'static str, destination: &str) -> bool {
        self.lock().contains_key(&(kind, destination.to_owned()))
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
            if *stop.borrow() || queue.ended.load(Ordering::SeqCst) {
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
                        () = queue.recheck.notified() => continue,
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
            // A stop lets a delivery under way finish and its place be recorded (for
            // `STOP_WAIT` at most): cut off after the destination took it, it would be
            // delivered again by whichever process runs the queue next.
            let outcome = tokio::select! {
                outcome = courier.deliver(destination, &parcels) => outcome,
                () = queue.recheck.notified() => continue,
            };
            match outcome {
                Delivery::Done => self.count(kind, |s| &mut s.delivered),
                Delivery::Dropped(why) => {
                    self.count(kind, |s| &mut s.dropped);
                    tracing::warn!(kind, destination, reason = %why, "delivery refused for good; skipped");
                }
                Delivery::Gone(why) => {
                    self.count(kind, |s| &mut s.gone);
                    tracing::info!(kind, destination, reason = %why, "destination gone; its queue ends");
                    self.close(kind, destination);
                    return false;
                }
                Delivery::Retry(why) => {
                    self.count(kind, |s| &mut s.retried);
                    let now = self.clock.now_ms();
                    let since = *failing_since.get_or_insert(now);
                    if now.saturating_sub(since) < GIVE_UP_AFTER_MS {
                        let cap = courier.max_backoff_ms().unwrap_or(self.max_retry_ms).max(FIRST_RETRY_MS);
                        let wait = FIRST_RETRY_MS.saturating_mul(1 << failures.min(32)).min(cap);
                        failures = failures.saturating_add(1);
                        tracing::debug!(kind, destination, reason = %why, wait_ms = wait, "delivery failed; retrying");
                        tokio::select! {
                            () = self.clock.sleep_until(now.saturating_add(wait)) => continue,
                            () = queue.recheck.notified() => continue,
                            _ = stop.changed() => return true,
                        }
                    }
                    self.count(kind, |s| &mut s.given_up);
                    tracing::warn!(kind, destination, reason = %why, "failing for 24 hours; skipped");
                }
                Delivery::NotBefore(at_ms) => {
                    failing_since = None;
                    failures = 0;
                    // Never a busy loop, whatever the courier answers.
                    let at_ms = at_ms.max(self.clock.now_ms().saturating_add(1));
                    tokio::select! {
                        () = self.clock.sleep_until(at_ms) => continue,
                        () = queue.bell.notified() => continue,
                        _ = stop.changed() => return true,
                    }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::{
        service::clock::ManualClock,
        storage::{memory::MemoryStore, tables::ALL_TABLES},
    };

    /// A courier whose parcels are stream positions, due only from a given time: before it,
    /// `deliver` answers `NotBefore`.
    struct Timed {
        clock: Arc<ManualClock>,
        parcels: Mutex<Vec<u64>>,
        due_at: Mutex<u64>,
        delivered: Mutex<Vec<u64>>,
        asked: AtomicUsize,
    }

    impl Courier for Timed {
        type Parcel = ();
        const KIND: &'static str = "timed";
        const BATCH: usize = 10;

        fn pending(&self, _: &str, after: u64, limit: usize) -> Result<Option<Parcels<()>>> {
            let parcels = self.parcels.lock().unwrap();
            Ok(Some(parcels.iter().filter(|p| **p > after).take(limit).map(|p| (*p, ())).collect()))
        }

        fn deliver<'a>(&'a self, _: &'a str, parcels: &'a [(u64, ())]) -> Delivering<'a> {
            Box::pin(async move {
                self.asked.fetch_add(1, Ordering::SeqCst);
                let due_at = *self.due_at.lock().unwrap();
                if self.clock.now_ms() < due_at {
                    return Delivery::NotBefore(due_at);
                }
                self.delivered.lock().unwrap().extend(parcels.iter().map(|(p, _)| *p));
                Delivery::Done
            })
        }
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    #[tokio::test]
    async fn a_parcel_not_due_waits_for_the_clock_or_the_bell_without_failing() {
        let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new(ALL_TABLES));
        let clock = Arc::new(ManualClock::new());
        let outbox = Arc::new(Outbox::new(&store, clock.clone(), Duration::from_secs(3600)));
        let start = clock.now_ms();
        let courier = Arc::new(Timed {
            clock: Arc::clone(&clock),
            parcels: Mutex::new(vec![5, 7]),
            due_at: Mutex::new(start + 600_000),
            delivered: Mutex::new(Vec::new()),
            asked: AtomicUsize::new(0),
        });
        outbox.start().expect("the outbox starts");
        outbox.open(Timed::KIND, "d", 0, false).unwrap();
        outbox.run(&courier, "d");
        until("a first ask", || courier.asked.load(Ordering::SeqCst) >= 1).await;
        // Short of the time: still waiting, its place unmoved, and no retry backoff grew.
        clock.advance_ms(599_999);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(courier.delivered.lock().unwrap().is_empty());
        assert_eq!(outbox.delivered(Timed::KIND, "d").unwrap(), Some(0));
        clock.advance_ms(1);
        until("the delivery at its time", || courier.delivered.lock().unwrap().len() == 2).await;
        until("the place moved", || outbox.delivered(Timed::KIND, "d").unwrap() == Some(7)).await;

        // A new parcel due later; the bell (the write path) makes the queue ask again at
        // once, and a due time moved earlier is met without moving the clock.
        // (The count is read before the bell: the queue may answer it at once.)
        let asked = courier.asked.load(Ordering::SeqCst);
        *courier.due_at.lock().unwrap() = clock.now_ms() + 60_000;
        courier.parcels.lock().unwrap().push(9);
        outbox.ring(Timed::KIND, "d");
        until("an ask after the bell", || courier.asked.load(Ordering::SeqCst) > asked).await;
        assert_eq!(courier.delivered.lock().unwrap().len(), 2);
        *courier.due_at.lock().unwrap() = 0;
        outbox.ring(Timed::KIND, "d");
        until("the delivery after the bell", || courier.delivered.lock().unwrap().len() == 3).await;
        assert_eq!(*courier.delivered.lock().unwrap(), vec![5, 7, 9]);
        outbox.stop().await;
    }

    /// A courier whose deliveries finish when the test opens the gate.
    struct Gated {
        gate: tokio::sync::Semaphore,
        started: AtomicUsize,
        delivered: Mutex<Vec<u64>>,
    }

    impl Courier for Gated {
        type Parcel = ();
        const KIND: &'static str = "gated";
        const BATCH: usize = 10;

        fn pending(&self, _: &str, after: u64, _: usize) -> Result<Option<Parcels<()>>> {
            Ok(Some([3, 4].into_iter().filter(|p| *p > after).map(|p| (p, ())).collect()))
        }

        fn deliver<'a>(&'a self, _: &'a str, parcels: &'a [(u64, ())]) -> Delivering<'a> {
            Box::pin(async move {
                self.started.fetch_add(1, Ordering::SeqCst);
                let _open = self.gate.acquire().await;
                self.delivered.lock().unwrap().extend(parcels.iter().map(|(p, _)| *p));
                Delivery::Done
            })
        }
    }

    /// A stop in the middle of a delivery lets it finish and records the queue's place:
    /// cut off, the destination would have it again from the next process to run the queue
    /// (a push delivered twice across a rolling restart).
    #[tokio::test]
    async fn a_stop_lets_the_delivery_under_way_finish_and_records_its_place() {
        let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new(ALL_TABLES));
        let clock = Arc::new(ManualClock::new());
        let outbox = Arc::new(Outbox::new(&store, clock, Duration::from_secs(3600)));
        let courier = Arc::new(Gated {
            gate: tokio::sync::Semaphore::new(0),
            started: AtomicUsize::new(0),
            delivered: Mutex::new(Vec::new()),
        });
        outbox.start().expect("the outbox starts");
        outbox.open(Gated::KIND, "d", 0, false).unwrap();
        outbox.run(&courier, "d");
        until("the delivery under way", || courier.started.load(Ordering::SeqCst) == 1).await;
        let stopping = tokio::spawn({
            let outbox = Arc::clone(&outbox);
            async move { outbox.stop().await }
        });
        until("the stop begun", || *outbox.stop.borrow()).await;
        courier.gate.add_permits(1);
        stopping.await.unwrap();
        assert_eq!(*courier.delivered.lock().unwrap(), vec![3, 4]);
        assert_eq!(outbox.delivered(Gated::KIND, "d").unwrap(), Some(4));
        assert_eq!(courier.started.load(Ordering::SeqCst), 1, "nothing delivered after the stop");
    }

    /// A courier whose destination is down (every delivery fails for now) until it is
    /// removed; then it is gone.
    struct Failing {
        removed: AtomicBool,
        tries: AtomicUsize,
    }

    impl Courier for Failing {
        type Parcel = ();
        const KIND: &'static str = "failing";
        const BATCH: usize = 10;

        fn pending(&self, _: &str, _: u64, _: usize) -> Result<Option<Parcels<()>>> {
            Ok((!self.removed.load(Ordering::SeqCst)).then(|| vec![(1, ())]))
        }

        fn deliver<'a>(&'a self, _: &'a str, _: &'a [(u64, ())]) -> Delivering<'a> {
            Box::pin(async move {
                self.tries.fetch_add(1, Ordering::SeqCst);
                Delivery::Retry("down".to_owned())
            })
        }
    }

    #[tokio::test]
    async fn a_recheck_ends_a_removed_destination_s_queue_in_the_middle_of_its_backoff() {
        let store: Arc<dyn KvStore> = Arc::new(MemoryStore::new(ALL_TABLES));
        let clock = Arc::new(ManualClock::new());
        let outbox = Arc::new(Outbox::new(&store, clock.clone(), Duration::from_secs(3600)));
        let courier = Arc::new(Failing { removed: AtomicBool::new(false), tries: AtomicUsize::new(0) });
        outbox.start().expect("the outbox starts");
        outbox.open(Failing::KIND, "d", 0, false).unwrap();
        outbox.run(&courier, "d");
        until("a first try", || courier.tries.load(Ordering::SeqCst) >= 1).await;
        // In its backoff, which the clock never ends here: the recheck ends the queue.
        courier.removed.store(true, Ordering::SeqCst);
        outbox.recheck(Failing::KIND, "d");
        until("the queue ended", || !outbox.is_running(Failing::KIND, "d")).await;
        assert_eq!(outbox.delivered(Failing::KIND, "d").unwrap(), None, "its place is dropped");
        assert_eq!(courier.tries.load(Ordering::SeqCst), 1);
        // A destination without a running queue has its place dropped at once.
        outbox.open(Failing::KIND, "idle", 0, false).unwrap();
        outbox.recheck(Failing::KIND, "idle");
        assert_eq!(outbox.delivered(Failing::KIND, "idle").unwrap(), None);
        outbox.stop().await;
    }
}
