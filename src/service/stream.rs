//! The server's one stream of positions and the change feed that wakes long-polls.
//!
//! Everything a client syncs — room events, receipts, typing, account data, presence — takes
//! its position from this one counter, so a sync token is a single number: "everything at or
//! below it has been seen". Positions are handed out in order but writers commit
//! independently, so the published `committed` position never passes a position still in
//! flight. Positions come from the store's durable `stream` sequence in blocks, so they are
//! never reused after a restart even for kinds that are never stored (typing), and a second
//! process sharing the database would take blocks of its own.
//!
//! Writers announce what they changed (`Change`) after committing; a long-polling sync
//! listens and wakes only for changes that concern its user. Owns the `stream` sequence (the
//! `counters` table's `stream_high_water`, its predecessor, is read only by migration 5).

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use tokio::sync::{broadcast, watch};

use crate::{Error, Result, storage::KvStore};

mod shared;
pub use shared::Invalidate;

/// Positions taken from the sequence at a time: one synced transaction per this many.
const BLOCK: u64 = 1_000;
/// The store's sequence of stream positions.
pub const SEQUENCE: &str = "stream";
/// Changes a slow listener may fall behind by before it must re-check from its token.
const CHANGE_BACKLOG: usize = 4_096;
/// Why a process out of touch with the others answers no client request.
const OUT_OF_TOUCH: &str =
    "this server process has lost touch with the others sharing its database; retry (through another)";

/// What a committed write touched, for waking the syncs it concerns.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Change {
    /// Something every member of (or invitee to) the room may need: an event, a receipt,
    /// typing.
    Room(OwnedRoomId),
    /// Something for one user only: their account data, an invite or knock, their presence
    /// as seen by themselves.
    User(OwnedUserId),
    /// Something about a user that everyone sharing a room with them needs: their
    /// presence, their device list.
    RoomMates(OwnedUserId),
}

/// Something other processes sharing the database must forget from their caches: a write
/// that the `Change`s it announces do not name (a rewrite in place).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Stale {
    /// A stored event rewritten in place (redacted).
    Event(OwnedEventId),
    /// A user's account data of one type rewritten (`kind`).
    AccountData(OwnedUserId, String),
    /// A user set a pusher: the process that fans notifications out counts them among the
    /// users with pushers.
    Pusher(OwnedUserId),
    /// An outbox queue (kind, destination) opened or given work by a process that does not
    /// deliver: the one that does (the leader) runs it.
    Queue(String, String),
}

/// What another process sharing the database did, as the callback of
/// [`Stream::start_sharing`] hears it, before it is visible here.
pub enum Elsewhere<'a> {
    Change(&'a Change),
    Stale(&'a Stale),
    /// Messages were lost (the listening connection was made again): anything may have
    /// changed.
    Lost,
}

/// A change with the position it was committed at.
#[derive(Clone, Debug)]
pub struct Announced {
    pub position: u64,
    pub change: Change,
}

pub struct Stream {
    inner: Mutex<Inner>,
    committed: watch::Sender<u64>,
    /// Moves on when messages from other processes were lost: every long-poll re-checks.
    lost: watch::Sender<u64>,
    /// After lost messages, the position the committed one must reach before the
    /// long-polls re-check (what the other processes had published meanwhile).
    wake_at: Mutex<Option<u64>>,
    changes: broadcast::Sender<Announced>,
    store: Arc<dyn KvStore>,
    /// Long-polls waiting for a change now (for the metrics).
    long_polls: Arc<AtomicU64>,
    /// When other processes share the database (`multi_process`).
    shared: Option<shared::Shared>,
}

struct Inner {
    last_reserved: u64,
    /// The last position of the block taken from the sequence.
    block_end: u64,
    in_flight: BTreeSet<u64>,
}

/// A reserved position; dropping it (after commit or on failure) releases it.
pub struct Reservation<'a> {
    stream: &'a Stream,
    pub position: u64,
}

impl Stream {
    /// Open the stream: its first block is taken now, and everything before it counts as
    /// committed (every position handed out before lies below it). When the store is
    /// shared with other processes, the stream joins theirs instead (see [`shared`]); call
    /// [`Self::start_sharing`] once it is in its `Arc`.
    pub fn new(store: &Arc<dyn KvStore>) -> Result<Self> {
        if let Some(member) = store.member() {
            let (shared, start, committed) = shared::Shared::join(store, member)?;
            return Ok(Self {
                inner: Mutex::new(Inner { last_reserved: start, block_end: 0, in_flight: BTreeSet::new() }),
                committed: watch::channel(committed).0,
                lost: watch::channel(0).0,
                wake_at: Mutex::new(None),
                changes: broadcast::channel(CHANGE_BACKLOG).0,
                store: Arc::clone(store),
                long_polls: Arc::new(AtomicU64::new(0)),
                shared: Some(shared),
            });
        }
        let block = store.next_ids(SEQUENCE, BLOCK)?;
        let start = block.start - 1;
        let stream = Self {
            inner: Mutex::new(Inner {
                last_reserved: start,
                block_end: block.end - 1,
                in_flight: BTreeSet::new(),
            }),
            committed: watch::channel(start).0,
            lost: watch::channel(0).0,
            wake_at: Mutex::new(None),
            changes: broadcast::channel(CHANGE_BACKLOG).0,
            store: Arc::clone(store),
            long_polls: Arc::new(AtomicU64::new(0)),
            shared: None,
        };
        Ok(stream)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reserve the next position for a write about to be committed.
    pub fn reserve(&self) -> Result<Reservation<'_>> {
        Ok(Reservation { stream: self, position: self.take_position()? })
    }

    /// Reserve a position that may outlive the caller's borrow of the stream: a write
    /// that finishes after its lock is released (the append path's group commit).
    pub fn reserve_owned(self: &Arc<Self>) -> Result<OwnedReservation> {
        Ok(OwnedReservation { stream: Arc::clone(self), position: self.take_position()? })
    }

    fn take_position(&self) -> Result<u64> {
        let mut inner = self.lock();
        if self.shared.is_some() {
            // One at a time from the shared sequence, under the lock: a position is in
            // flight here from the moment it exists, so the position this process publishes
            // never passes it (see `shared`).
            let position = self.store.next_ids(SEQUENCE, 1)?.start;
            inner.last_reserved = position;
            inner.in_flight.insert(position);
            return Ok(position);
        }
        let mut position = inner.last_reserved + 1;
        if position > inner.block_end {
            // The next block; another process sharing the store may have taken the ones
            // between, so positions jump to its start.
            let block = self.store.next_ids(SEQUENCE, BLOCK)?;
            position = block.start;
            inner.block_end = block.end - 1;
        }
        inner.last_reserved = position;
        inner.in_flight.insert(position);
        Ok(position)
    }

    fn release(&self, position: u64) {
        let mut inner = self.lock();
        inner.in_flight.remove(&position);
        if let Some(shared) = &self.shared {
            // Readers here, as elsewhere, see the write once this process's published
            // position, heard back from the bus, covers it.
            drop(inner);
            shared.poke();
            return;
        }
        // A released position whose write failed is a hole, which readers simply skip.
        let safe = inner.in_flight.first().map_or(inner.last_reserved, |oldest| oldest - 1);
        self.committed.send_if_modified(|current| {
            let moved = *current != safe;
            *current = safe;
            moved
        });
    }

    /// Every write at or below this position is committed and visible; tokens stop here.
    pub fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Tell listeners what a committed write at `position` touched (in every process
    /// sharing the database). Only through a reservation, before it is released: another
    /// process must hear the changes (and drop what its caches hold of them) no later than
    /// this process's published position covers the write.
    fn announce(&self, position: u64, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            if let Some(shared) = &self.shared {
                shared.send_change(position, change.clone());
            }
            // No listener is fine: nobody is long-polling.
            let _ = self.changes.send(Announced { position, change });
        }
    }

    /// Tell the other processes sharing the database to forget what their caches hold of
    /// `stale` (nothing when the process is alone). Call it before the write's position is
    /// released: the others then forget it before their committed position covers the write.
    pub fn stale_elsewhere(&self, stale: Stale) {
        if let Some(shared) = &self.shared {
            shared.send_stale(stale);
        }
    }

    /// Wait (until `deadline` at most) for the committed position to reach `position`: a
    /// token another process handed out may be ahead of this one for a moment. Answers at
    /// once for a process that holds the database alone (its tokens are its own).
    pub async fn caught_up_to(&self, position: u64, deadline: tokio::time::Instant) {
        if self.shared.is_none() || self.committed() >= position {
            return;
        }
        let mut committed = self.committed.subscribe();
        let _ = tokio::time::timeout_at(deadline, committed.wait_for(|c| *c >= position)).await;
    }

    /// This process's id among those sharing the database (`None` for a process alone);
    /// its connections carry it in their `application_name`, as `conduit-{id:x}`.
    pub fn member(&self) -> Option<u64> {
        self.shared.as_ref().map(|shared| shared.member)
    }

    /// Whether this process hears every write of the other processes on the database now
    /// (always, for a process alone).
    pub fn in_touch(&self) -> bool {
        self.shared.as_ref().is_none_or(|shared| shared.in_touch())
    }

    /// `Error::Unavailable` (503) unless [`Self::in_touch`]: what a process out of touch
    /// answers, since what it holds may be stale.
    pub fn ensure_in_touch(&self) -> Result<()> {
        match self.in_touch() {
            true => Ok(()),
            false => Err(Error::Unavailable(OUT_OF_TOUCH.to_owned())),
        }
    }

    /// This process stops: the others need not wait for its positions any more (nothing
    /// for a process alone). Called once nothing writes any more.
    pub fn leave(&self) -> Result<()> {
        match &self.shared {
            Some(shared) => shared.leave(),
            None => Ok(()),
        }
    }

    /// With other processes on the database: wait (until `deadline` at most) until this
    /// process has heard every write that any process took a position for before now, so
    /// that a request sees what its client did through another process just before (a
    /// join there, then a send here). One read of the shared sequence, and usually a wait
    /// of a few bus messages when another process wrote meanwhile. Nothing for a process
    /// alone.
    /// A process out of touch with the others (its bus connection lost, or messages missed
    /// and not yet made up for) answers with an error instead: what it holds may be stale.
    pub async fn catch_up_with_others(&self, deadline: tokio::time::Instant) -> Result<()> {
        if self.shared.is_none() {
            return Ok(());
        }
        self.ensure_in_touch()?;
        let last = self.store.last_id(SEQUENCE)?;
        self.caught_up_to(last, deadline).await;
        Ok(())
    }

    /// Start the threads that publish this process's position and hear the others'
    /// (multi-process only); `invalidate` runs for each change and stale entry another
    /// process announces, before it is visible here, to drop what the caches hold about it.
    pub fn start_sharing(self: &Arc<Self>, invalidate: impl Fn(Elsewhere<'_>) + Send + Sync + 'static) {
        if let Some(shared) = &self.shared {
            shared.start(Arc::downgrade(self), Box::new(invalidate));
        }
    }

    /// The position this process may publish: below its oldest write in flight, or when it
    /// has none, as high as anything it has heard (its next position comes from the shared
    /// sequence, above every position taken so far).
    fn promise(&self, heard_high: u64) -> u64 {
        let inner = self.lock();
        match inner.in_flight.first() {
            Some(oldest) => oldest - 1,
            None => inner.last_reserved.max(heard_high),
        }
    }

    /// Raise the committed position to `position` (it never goes back).
    fn raise_committed(&self, position: u64) {
        self.committed.send_if_modified(|current| {
            let moved = position > *current;
            if moved {
                *current = position;
            }
            moved
        });
        self.wake_if_caught_up();
    }

    /// Messages from other processes were lost, and they had published positions up to
    /// `position` meanwhile: once the committed position reaches it, every long-poll
    /// re-checks from its token (as after missed changes), since the changes that would have
    /// woken it were not heard.
    fn wake_when_committed(&self, position: u64) {
        {
            let mut wake_at = self.wake_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *wake_at = Some(wake_at.map_or(position, |at| at.max(position)));
        }
        self.wake_if_caught_up();
    }

    fn wake_if_caught_up(&self) {
        let due = {
            let mut wake_at = self.wake_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match *wake_at {
                Some(at) if self.committed() >= at => wake_at.take().is_some(),
                _ => false,
            }
        };
        if due {
            tracing::debug!("messages from other processes were lost: every long-poll re-checks");
            self.lost.send_modify(|n| *n += 1);
        }
    }

    /// Announce a change another process committed.
    fn announce_local(&self, position: u64, change: Change) {
        let _ = self.changes.send(Announced { position, change });
    }

    /// Listen for changes. Subscribe before reading `committed()`, so no change after the
    /// read can be missed.
    pub fn listen(&self) -> Listener {
        let mut lost = self.lost.subscribe();
        lost.mark_unchanged();
        Listener {
            changes: self.changes.subscribe(),
            committed: self.committed.subscribe(),
            lost: Some(lost),
            long_polls: Arc::clone(&self.long_polls),
        }
    }

    /// The last position handed out and the committed one (the difference is the writes in
    /// flight), for the metrics.
    pub fn positions(&self) -> (u64, u64) {
        let reserved = self.lock().last_reserved;
        (reserved, self.committed())
    }

    /// How many long-polls wait for a change now.
    pub fn long_polls_waiting(&self) -> u64 {
        self.long_polls.load(Ordering::Relaxed)
    }
}

impl Reservation<'_> {
    /// The write at this position is committed: tell listeners what it touched, then
    /// release the position.
    pub fn announce(self, changes: impl IntoIterator<Item = Change>) {
        self.stream.announce(self.position, changes);
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.stream.release(self.position);
    }
}

/// A reserved position holding its own handle on the stream; released when dropped.
pub struct OwnedReservation {
    stream: Arc<Stream>,
    pub position: u64,
}

impl OwnedReservation {
    /// As [`Reservation::announce`].
    pub fn announce(self, changes: impl IntoIterator<Item = Change>) {
        self.stream.announce(self.position, changes);
    }
}

impl Drop for OwnedReservation {
    fn drop(&mut self) {
        self.stream.release(self.position);
    }
}

/// One long-poll's view of the change feed.
pub struct Listener {
    changes: broadcast::Receiver<Announced>,
    committed: watch::Receiver<u64>,
    /// Moves on when messages from other processes were lost (`listen` only).
    lost: Option<watch::Receiver<u64>>,
    long_polls: Arc<AtomicU64>,
}

/// A long-poll counted as waiting while this lives.
pub struct Waiting(Arc<AtomicU64>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a listener heard.
pub enum Heard {
    Change(Announced),
    /// Changes were dropped because this listener fell behind, or messages from other
    /// processes were lost: re-check everything.
    Missed,
    Closed,
}

impl Listener {
    /// Count this listener as a waiting long-poll until the answer is dropped.
    pub fn waiting(&self) -> Waiting {
        self.long_polls.fetch_add(1, Ordering::Relaxed);
        Waiting(Arc::clone(&self.long_polls))
    }

    /// The next announced change.
    pub async fn next(&mut self) -> Heard {
        let lost = async {
            match self.lost.as_mut() {
                Some(lost) => {
                    if lost.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        let heard = tokio::select! {
            heard = self.changes.recv() => heard,
            () = lost => return Heard::Missed,
        };
        match heard {
            Ok(announced) => Heard::Change(announced),
            Err(broadcast::error::RecvError::Lagged(_)) => Heard::Missed,
            Err(broadcast::error::RecvError::Closed) => Heard::Closed,
        }
    }

    /// Wait until `position` is committed (an announced change may precede the commit of
    /// an earlier position still in flight).
    pub async fn committed_to(&mut self, position: u64) {
        // An error means the stream is gone (shutdown): stop waiting.
        let _ = self.committed.wait_for(|committed| *committed >= position).await;
    }

    /// A long-poll's wait: until a change `concerns` accepts is committed (or changes were
    /// missed, which may hide one), answering true; false when `deadline` passes or the
    /// stream closes first.
    pub async fn wait_for_change(
        &mut self,
        deadline: tokio::time::Instant,
        mut concerns: impl FnMut(&Change) -> crate::Result<bool>,
    ) -> crate::Result<bool> {
        let _waiting = self.waiting();
        loop {
            let heard = tokio::select! {
                heard = self.next() => heard,
                () = tokio::time::sleep_until(deadline) => return Ok(false),
            };
            match heard {
                Heard::Change(announced) => {
                    if concerns(&announced.change)? {
                        tokio::select! {
                            () = self.committed_to(announced.position) => {}
                            () = tokio::time::sleep_until(deadline) => {}
                        }
                        return Ok(true);
                    }
                }
                Heard::Missed => return Ok(true),
                Heard::Closed => return Ok(false),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Stream;
    use crate::storage::{KvStore, memory::MemoryStore, tables::ALL_TABLES};

    fn store() -> Arc<dyn KvStore> {
        Arc::new(MemoryStore::new(ALL_TABLES))
    }

    #[test]
    fn committed_position_never_passes_a_write_in_flight() {
        let store = store();
        store.raise_sequence(super::SEQUENCE, 10).unwrap();
        let stream = Stream::new(&store).unwrap();
        let first = stream.reserve().unwrap();
        let second = stream.reserve().unwrap();
        assert_eq!((first.position, second.position), (11, 12));
        // The later write finishes first: readers must still stop before the earlier one.
        drop(second);
        assert_eq!(stream.committed(), 10);
        drop(first);
        assert_eq!(stream.committed(), 12);
    }

    #[test]
    fn positions_are_not_reused_after_a_restart() {
        let store = store();
        let before = {
            let stream = Stream::new(&store).unwrap();
            let reserved = stream.reserve().unwrap().position;
            stream.reserve().unwrap();
            reserved + 1
        };
        // Nothing that used these positions was stored, yet a new process must not hand
        // them out again (a client may hold a token naming them).
        let reopened = Stream::new(&store).unwrap();
        assert!(reopened.reserve().unwrap().position > before);
        assert!(reopened.committed() >= before);
    }

    #[test]
    fn a_block_used_up_moves_on_to_the_next() {
        let store = store();
        let stream = Stream::new(&store).unwrap();
        let mut last = 0;
        for _ in 0..super::BLOCK + 5 {
            let position = stream.reserve().unwrap().position;
            assert!(position > last);
            last = position;
        }
        assert_eq!(last, super::BLOCK + 5);
        // Another writer on the same store gets positions of its own.
        let other = Stream::new(&store).unwrap();
        assert!(other.reserve().unwrap().position > 2 * super::BLOCK);
    }
}
