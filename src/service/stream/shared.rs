//! The stream when several processes share one database (`multi_process`).
//!
//! Every position comes straight from the store's shared `stream` sequence, one at a time,
//! so positions taken anywhere later are higher than every position taken before. Each
//! process (a *member*, with an id the store gives it) publishes on the store's message bus
//! its *promise* `P`: every position it took at or below `P` is committed, and every
//! position it takes later is above `P`. While it has writes in flight, `P` is just below
//! the oldest; when it has none, `P` may be as high as any position it has heard of, since
//! its next position comes from the sequence. A reader's committed position is the least
//! promise of the live members. Promises only grow.
//!
//! A process counts its own promise only once it hears it back from the bus: the bus
//! delivers messages in the order they were sent, so by then it has heard every member
//! that joined before its own positions were taken (a member publishes its first promise
//! before it takes a position). Up to another member's promise just heard it need not wait
//! (`Shared::count_own_promise_up_to`). A member that dies stops holding the others back once the
//! store no longer sees a connection of it. Changes announced by a member travel with its
//! promises; the others drop what their caches hold about them and wake their long-polls.
//! The latest promise of each member is also kept in the `stream_writers` table for
//! processes that start later.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::broadcast;

use super::{Change, Elsewhere, SEQUENCE, Stale, Stream};
use crate::{
    Result,
    storage::{BusMessage, Direction, KvStore, WriteBatch, kv::KeyRange, tables::STREAM_WRITERS},
};

/// How often the publisher looks for members that died, when nothing else wakes it.
const LIVENESS_EVERY: Duration = Duration::from_secs(1);
/// How soon it looks again while one member's unchanged promise holds back the others: a
/// process killed between two writes stops publishing, and until it is seen gone no
/// process shows what the others wrote after its last promise (1.7 s after a SIGKILL with
/// only the 1 s check, in tests/it/scale_out.rs).
const LIVENESS_WHEN_HELD_BACK: Duration = Duration::from_millis(100);
/// The promise of a member's farewell: it takes no more positions, and the others forget it
/// (and ignore anything it sends after).
const DEPARTED: u64 = u64::MAX;
/// The largest message sent on the bus (the bus takes somewhat more).
const MAX_MESSAGE: usize = 3_000;

/// What travels on the bus: a member's promise, what it made stale and the changes it
/// committed (the stale entries are forgotten first).
#[derive(serde::Serialize, serde::Deserialize)]
struct Message {
    m: u64,
    p: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    s: Vec<Stale>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    c: Vec<(u64, Change)>,
}

/// Runs for every change and stale entry another process announced (or for lost
/// messages), before it is visible here.
pub type Invalidate = Box<dyn Fn(Elsewhere<'_>) + Send + Sync>;

pub(super) struct Shared {
    pub(super) member: u64,
    store: Arc<dyn KvStore>,
    state: Mutex<State>,
    wake: Condvar,
    /// The bus receiver, until the listening thread takes it.
    bus: Mutex<Option<broadcast::Receiver<BusMessage>>>,
    /// The bus generation ([`KvStore::bus_generation`]) whose messages this process has
    /// heard since it last read the promises, or `OUT_OF_TOUCH` while it has missed some.
    in_touch_with: AtomicU64,
}

/// `Shared::in_touch_with` while messages were missed and not made up for.
const OUT_OF_TOUCH: u64 = u64::MAX;

struct State {
    /// The promise heard from each live member, and the liveness round in which it was
    /// first heard (a member is dropped only by a check that began after it).
    heard: HashMap<u64, (u64, u64)>,
    /// Members that said farewell: whatever they send after is ignored.
    departed: HashSet<u64>,
    /// Liveness checks begun.
    round: u64,
    /// Changes this process announced, to send.
    outbox: Vec<(u64, Change)>,
    /// What this process made stale, to send (before the changes taken with it).
    stale: Vec<Stale>,
    /// Something to publish may have changed.
    poked: bool,
    /// The promise last published.
    published: u64,
    /// The member whose promise is the least while a higher one was heard, that promise,
    /// and since when it has held the others back.
    held_back_by: Option<(u64, u64, Instant)>,
}

impl Shared {
    /// Join the members of `store`: read their promises, take a first position and publish
    /// it as this member's first promise. Answers the shared part, the position taken (the
    /// stream's last reserved) and the committed position to start from.
    pub(super) fn join(store: &Arc<dyn KvStore>, member: u64) -> Result<(Self, u64, u64)> {
        // Listening since the store opened: anything published after the read below is heard.
        let bus = store.subscribe();
        let generation = store.bus_generation().unwrap_or(OUT_OF_TOUCH);
        let table = STREAM_WRITERS.open(store);
        let live: HashSet<u64> = store.live_members()?.into_iter().collect();
        let mut heard = HashMap::new();
        for row in table.scan(KeyRange::all(), Direction::Forward)? {
            let (other, promise) = row?;
            if other != member && live.contains(&other) {
                heard.insert(other, (promise, 0));
            }
        }
        let start = store.next_ids(SEQUENCE, 1)?.start;
        let mut row = WriteBatch::new();
        table.put(&mut row, &member, &start)?;
        store.publish(&encode(&Message { m: member, p: start, s: Vec::new(), c: Vec::new() })?, row)?;
        heard.insert(member, (start, 0));
        let committed = heard.values().map(|(p, _)| *p).min().unwrap_or(start);
        let shared = Self {
            member,
            store: Arc::clone(store),
            state: Mutex::new(State {
                heard,
                round: 0,
                outbox: Vec::new(),
                stale: Vec::new(),
                poked: false,
                published: start,
                held_back_by: None,
                departed: HashSet::new(),
            }),
            wake: Condvar::new(),
            bus: Mutex::new(bus),
            in_touch_with: AtomicU64::new(generation),
        };
        Ok((shared, start, committed))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wake the publisher: this process's promise may have moved.
    pub(super) fn poke(&self) {
        self.lock().poked = true;
        self.wake.notify_one();
    }

    /// Queue a change for the others. It does not wake the publisher: its write's position
    /// is released next, and that wakes it to send the change with the promise covering it
    /// in one message (woken now, it would send the change under the old promise first, a
    /// round trip more on the way of every cross-process wake-up).
    pub(super) fn send_change(&self, position: u64, change: Change) {
        self.lock().outbox.push((position, change));
    }

    /// This process takes no more positions (it stops): once what it has to send is sent
    /// (waiting a second at most), a farewell (the promise `DEPARTED`) tells the others to
    /// forget it at once, rather than after they see its connections gone. Without it
    /// every process would hold back for a moment at each stop of a rolling restart.
    pub(super) fn leave(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            {
                let state = self.lock();
                if state.outbox.is_empty() && state.stale.is_empty() {
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            self.wake.notify_one();
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut row = WriteBatch::new();
        STREAM_WRITERS.open(&self.store).delete(&mut row, &self.member);
        let farewell = Message { m: self.member, p: DEPARTED, s: Vec::new(), c: Vec::new() };
        self.store.publish(&encode(&farewell)?, row)?;
        Ok(())
    }

    pub(super) fn send_stale(&self, stale: Stale) {
        self.lock().stale.push(stale);
        self.wake.notify_one();
    }

    /// Whether this process hears the others now: its bus connection is up and nothing
    /// published since it was made has been missed. Out of touch, what it holds in memory
    /// may be stale and its committed position does not move.
    pub(super) fn in_touch(&self) -> bool {
        let heard = self.in_touch_with.load(Ordering::Acquire);
        heard != OUT_OF_TOUCH && self.store.bus_generation() == Some(heard)
    }

    /// Messages were missed: forget what may be stale and read the promises again, until
    /// that succeeds or the bus connection is lost again (its return brings another
    /// `Lost`).
    fn make_up_for_lost_messages(&self, stream: &Stream, invalidate: &Invalidate) {
        self.in_touch_with.store(OUT_OF_TOUCH, Ordering::Release);
        invalidate(Elsewhere::Lost);
        loop {
            let Some(generation) = self.store.bus_generation() else { return };
            match STREAM_WRITERS.open(&self.store).scan(KeyRange::all(), Direction::Forward) {
                Ok(rows) => {
                    let rows: Vec<_> = rows.filter_map(std::result::Result::ok).collect();
                    let highest = rows.iter().map(|(_, promise)| *promise).max();
                    let least = {
                        let mut state = self.lock();
                        // A member that died meanwhile is dropped again by the next check.
                        for (member, promise) in rows {
                            self.heard(&mut state, member, promise);
                        }
                        Shared::least(&state)
                    };
                    if let Some(least) = least {
                        stream.raise_committed(least);
                    }
                    // Changes announced meanwhile were not heard: every long-poll re-checks
                    // from its token once the committed position covers what was published
                    // (this process's own promise rises to it first).
                    if let Some(highest) = highest {
                        stream.wake_when_committed(highest);
                    }
                    self.in_touch_with.store(generation, Ordering::Release);
                    self.poke();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the stream positions again failed; retrying");
                    self.poke();
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// The least promise of the members heard.
    fn least(state: &State) -> Option<u64> {
        state.heard.values().map(|(p, _)| *p).min()
    }

    /// How long another member's unchanged promise has held back the committed position
    /// (zero when none does).
    fn held_back(&self, state: &mut State) -> Duration {
        let highest = state.heard.values().map(|(p, _)| *p).max();
        let laggard = state
            .heard
            .iter()
            .filter(|(m, _)| **m != self.member)
            .min_by_key(|(_, (p, _))| *p)
            .map(|(m, (p, _))| (*m, *p))
            .filter(|(_, p)| Some(*p) < highest);
        state.held_back_by = match (laggard, state.held_back_by) {
            (Some((m, p)), Some((held_m, held_p, since))) if (m, p) == (held_m, held_p) => {
                Some((m, p, since))
            }
            (Some((m, p)), _) => Some((m, p, Instant::now())),
            (None, _) => None,
        };
        state.held_back_by.map_or(Duration::ZERO, |(_, _, since)| since.elapsed())
    }

    /// Start the publishing and listening threads; they hold the stream weakly and end
    /// when it is gone (the listener when the store's bus closes).
    pub(super) fn start(&self, stream: Weak<Stream>, invalidate: Invalidate) {
        let Some(bus) = self.bus.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() else {
            return;
        };
        let publisher = stream.clone();
        let spawned = std::thread::Builder::new()
            .name("conduit-stream-publish".into())
            .spawn(move || publish_loop(&publisher))
            .and_then(|_| {
                std::thread::Builder::new()
                    .name("conduit-stream-listen".into())
                    .spawn(move || listen_loop(&stream, bus, &invalidate))
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the stream's threads");
        }
    }

    /// Count `promise` as this process's own without waiting to hear it back from the bus,
    /// when it is no higher than the promise of another member just heard: that lets a
    /// long-poll here see another process's write as soon as its promise arrives, rather
    /// than a publish and a bus round trip later.
    ///
    /// Hearing its own promise back is what guarantees a process has heard every member
    /// whose writes the promise could pass (a member announces itself before it takes a
    /// position). A promise no higher than one heard from another member `o` needs no such
    /// echo: every promise is at most a position handed out before the message carrying it
    /// was sent, and any member not heard of yet announced itself after `o`'s message (the
    /// bus delivers in commit order), so took all its positions after that one and above
    /// it. This process's own writes in flight are in `promise` already.
    fn count_own_promise_up_to(&self, promise: u64) {
        let mut state = self.lock();
        self.heard(&mut state, self.member, promise);
    }

    /// Take a heard promise of `member` (promises only grow).
    fn heard(&self, state: &mut State, member: u64, promise: u64) {
        if promise == DEPARTED {
            state.heard.remove(&member);
            state.departed.insert(member);
            return;
        }
        if state.departed.contains(&member) {
            return;
        }
        let round = state.round;
        let entry = state.heard.entry(member).or_insert((promise, round));
        entry.0 = entry.0.max(promise);
    }
}

fn publish_loop(stream: &Weak<Stream>) {
    let mut last_check = Instant::now();
    loop {
        let Some(stream) = stream.upgrade() else { return };
        let Some(shared) = stream.shared.as_ref() else { return };
        let (high, published) = {
            let mut state = shared.lock();
            if !state.poked && state.outbox.is_empty() && state.stale.is_empty() {
                let wait =
                    if state.held_back_by.is_some() { LIVENESS_WHEN_HELD_BACK } else { LIVENESS_EVERY };
                let (woken, _) =
                    shared.wake.wait_timeout(state, wait).unwrap_or_else(std::sync::PoisonError::into_inner);
                state = woken;
            }
            state.poked = false;
            let high = state.heard.iter().filter(|(m, _)| **m != shared.member).map(|(_, (p, _))| *p).max();
            (high.unwrap_or(0), state.published)
        };
        // The promise first, then what to send with it: a write queues what it made stale
        // and its changes before it releases its position, so everything a promise covers
        // is queued by the time the promise is read, and goes in the same message (or an
        // earlier one). Taken the other way round, a write landing in between would be
        // promised without them, and another process could serve a request from a cache
        // still holding what the write changed.
        let promise = stream.promise(high).max(published);
        let (stale, outbox) = {
            let mut state = shared.lock();
            (std::mem::take(&mut state.stale), std::mem::take(&mut state.outbox))
        };
        if promise > published || !outbox.is_empty() || !stale.is_empty() {
            match publish(shared, promise, published, stale, outbox) {
                Ok(()) => shared.lock().published = promise,
                Err(e) => {
                    tracing::error!(error = %e, "publishing the stream position failed; retrying");
                    shared.lock().poked = true;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        let held_back = shared.held_back(&mut shared.lock());
        let since_check = last_check.elapsed();
        if since_check >= LIVENESS_EVERY
            || (held_back >= LIVENESS_WHEN_HELD_BACK && since_check >= LIVENESS_WHEN_HELD_BACK)
        {
            last_check = Instant::now();
            if let Err(e) = drop_the_dead(&stream, shared) {
                tracing::warn!(error = %e, "checking which processes are live failed");
            }
        }
    }
}

/// Publish `promise` (kept in the table, in the same transaction, when it moved past
/// `published`), what was made `stale` and `changes`, in messages small enough for the bus,
/// the stale entries before the changes. Only the last message carries the new promise (the
/// others the one published before): a process hearing the first of several must not count
/// the writes covered before it has heard their changes in the messages after.
fn publish(
    shared: &Shared,
    promise: u64,
    published: u64,
    stale: Vec<Stale>,
    changes: Vec<(u64, Change)>,
) -> Result<()> {
    let mut message = Message { m: shared.member, p: published, s: Vec::new(), c: Vec::new() };
    let mut size = 0;
    let items = stale.into_iter().map(Ok).chain(changes.into_iter().map(Err));
    for item in items {
        let one = match &item {
            Ok(stale) => encode(stale)?,
            Err(change) => encode(change)?,
        }
        .len()
            + 2;
        if !(message.s.is_empty() && message.c.is_empty()) && size + one > MAX_MESSAGE {
            shared.store.publish(&encode(&message)?, WriteBatch::new())?;
            message.s.clear();
            message.c.clear();
            size = 0;
        }
        size += one;
        match item {
            Ok(stale) => message.s.push(stale),
            Err(change) => message.c.push(change),
        }
    }
    message.p = promise;
    let mut row = WriteBatch::new();
    if promise > published {
        STREAM_WRITERS.open(&shared.store).put(&mut row, &shared.member, &promise)?;
    }
    shared.store.publish(&encode(&message)?, row)?;
    Ok(())
}

fn encode(value: &impl serde::Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| crate::Error::Internal(format!("encoding a stream message: {e}")))
}

/// Forget the members the store sees no connection of (heard before this check began).
fn drop_the_dead(stream: &Stream, shared: &Shared) -> Result<()> {
    let round = {
        let mut state = shared.lock();
        state.round += 1;
        state.round
    };
    let live: HashSet<u64> = shared.store.live_members()?.into_iter().collect();
    let least = {
        let mut state = shared.lock();
        let me = shared.member;
        state.heard.retain(|member, (_, since)| *member == me || live.contains(member) || *since >= round);
        Shared::least(&state)
    };
    if let Some(least) = least {
        stream.raise_committed(least);
    }
    Ok(())
}

fn listen_loop(stream: &Weak<Stream>, mut bus: broadcast::Receiver<BusMessage>, invalidate: &Invalidate) {
    loop {
        let message = match bus.blocking_recv() {
            Ok(BusMessage::Payload(bytes)) => match serde_json::from_slice::<Message>(&bytes) {
                Ok(message) => Some(message),
                Err(e) => {
                    tracing::warn!(error = %e, "an unreadable message on the stream bus");
                    continue;
                }
            },
            Ok(BusMessage::Lost) | Err(broadcast::error::RecvError::Lagged(_)) => None,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(stream) = stream.upgrade() else { return };
        let Some(shared) = stream.shared.as_ref() else { return };
        match message {
            Some(message) => {
                let remote = message.m != shared.member;
                if remote {
                    for stale in &message.s {
                        invalidate(Elsewhere::Stale(stale));
                    }
                    for (_, change) in &message.c {
                        invalidate(Elsewhere::Change(change));
                    }
                }
                let highest_elsewhere = {
                    let mut state = shared.lock();
                    shared.heard(&mut state, message.m, message.p);
                    state.heard.iter().filter(|(m, _)| **m != shared.member).map(|(_, (p, _))| *p).max()
                };
                if remote && let Some(highest) = highest_elsewhere {
                    // This process's own promise may count up to what it would publish now,
                    // but no higher than another's promise, before it hears it back (see
                    // `count_own_promise_up_to`).
                    shared.count_own_promise_up_to(stream.promise(highest).min(highest));
                }
                let least = Shared::least(&shared.lock());
                if let Some(least) = least {
                    stream.raise_committed(least);
                }
                if remote {
                    // This process's promise may rise with what it heard.
                    shared.poke();
                    for (position, change) in message.c {
                        stream.announce_local(position, change);
                    }
                }
            }
            None => shared.make_up_for_lost_messages(&stream, invalidate),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use crate::{
        service::stream::Stream,
        storage::{
            KvStore,
            pg_cluster::PgCluster,
            postgres::{PgOptions, PgStore},
            tables::ALL_TABLES,
        },
    };

    fn member(url: &str) -> Arc<dyn KvStore> {
        let options =
            PgOptions { url: url.to_owned(), pool_size: 4, statement_timeout_ms: None, multi_process: true };
        PgStore::open_with(&options, ALL_TABLES, crate::storage::migrations::migrate).expect("store opens")
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "never saw {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_write_in_flight_elsewhere_holds_the_committed_position_until_it_lands_or_its_process_dies() {
        let cluster = PgCluster::start().expect("a PostgreSQL cluster");
        let url = cluster.create_database("members").expect("database created");
        let (store_a, store_b) = (member(&url), member(&url));
        let a = Arc::new(Stream::new(&store_a).unwrap());
        a.start_sharing(|_| {});
        let b = Arc::new(Stream::new(&store_b).unwrap());
        b.start_sharing(|_| {});
        // A takes a position and holds it in flight; B commits two later ones.
        let held = a.reserve_owned().unwrap();
        let (first, second) = (b.reserve().unwrap().position, b.reserve().unwrap().position);
        assert!(held.position < first && first < second);
        // B's own writes are committed, yet B's readers stop below A's write in flight.
        wait_until("B publishing its promise", || a.committed() >= held.position - 1);
        std::thread::sleep(Duration::from_millis(300));
        assert!(b.committed() < held.position, "{} passed {}", b.committed(), held.position);
        // A's write lands: both move past all three.
        drop(held);
        wait_until("A's write seen on B", || b.committed() >= second);
        wait_until("B's writes seen on A", || a.committed() >= second);
        // A takes another position and dies with it in flight: B moves on once A is gone.
        // (Forgotten, the reservation is never released, as in a killed process.)
        let stuck = a.reserve().unwrap();
        let later = b.reserve().unwrap().position;
        std::mem::forget(stuck);
        std::thread::sleep(Duration::from_millis(300));
        assert!(b.committed() < later);
        drop(a);
        drop(store_a);
        wait_until("B moving past the dead member", || b.committed() >= later);
    }

    /// Another process drops what its caches hold of a write when it hears the write's
    /// changes; had it heard the position covering the write first, a request there could
    /// be served from the stale cache in between (a leave still listed, in
    /// tests/it/multi_process.rs). Stressed: many writes on A, and B notes each change of A
    /// it hears while its committed position already covers it.
    #[test]
    fn changes_are_heard_elsewhere_no_later_than_the_position_covering_them() {
        use std::sync::Mutex;

        use ruma::RoomId;

        use crate::service::stream::{Change, Elsewhere};

        const WRITES: u64 = 1_500;
        let cluster = PgCluster::start().expect("a PostgreSQL cluster");
        let url = cluster.create_database("ordering").expect("database created");
        let (store_a, store_b) = (member(&url), member(&url));
        let a = Arc::new(Stream::new(&store_a).unwrap());
        a.start_sharing(|_| {});
        let b = Arc::new(Stream::new(&store_b).unwrap());
        let late: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let heard: Arc<Mutex<u64>> = Arc::default();
        b.start_sharing({
            let (late, heard, committed) = (Arc::clone(&late), Arc::clone(&heard), b.committed.subscribe());
            move |elsewhere| {
                if let Elsewhere::Change(Change::Room(room)) = elsewhere {
                    let digits = room.as_str().trim_start_matches("!p").split('-').next().unwrap();
                    let position: u64 = digits.parse().unwrap();
                    let covered = *committed.borrow();
                    if covered >= position {
                        late.lock().unwrap().push((position, covered));
                    }
                    *heard.lock().unwrap() += 1;
                }
            }
        });
        let mut last = 0;
        for _ in 0..WRITES / 30 {
            // Writes in flight together, then landing at once: their changes are many for
            // one bus message (with long IDs), and the publisher wakes amid them.
            let reservations: Vec<_> = (0..30).map(|_| a.reserve().unwrap()).collect();
            for reservation in reservations {
                last = reservation.position;
                let room = RoomId::parse(format!("!p{last}-{}:test", "x".repeat(200))).unwrap();
                reservation.announce([Change::Room(room)]);
            }
        }
        wait_until("B hearing all of A's writes", || {
            b.committed() >= last && *heard.lock().unwrap() == WRITES
        });
        let late = late.lock().unwrap();
        assert!(late.is_empty(), "changes heard after the position covering them: {late:?}");
    }
}
