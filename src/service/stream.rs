//! The server's one stream of positions and the change feed that wakes long-polls.
//!
//! Everything a client syncs — room events, receipts, typing, account data, presence — takes
//! its position from this one counter, so a sync token is a single number: "everything at or
//! below it has been seen". Positions are handed out in order but writers commit
//! independently, so the published `committed` position never passes a position still in
//! flight. The counter's high-water mark is persisted in blocks, so positions are never
//! reused after a restart even for kinds that are never stored (typing).
//!
//! Writers announce what they changed (`Change`) after committing; a long-polling sync
//! listens and wakes only for changes that concern its user. Owns the `counters` table.

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use ruma::{OwnedRoomId, OwnedUserId};
use tokio::sync::{broadcast, watch};

use crate::{
    Result,
    storage::{KvStore, Table, WriteBatch, tables::COUNTERS},
};

/// Positions reserved per persisted high-water step: one synced write per this many.
const BLOCK: u64 = 1_000;
const HIGH_WATER_KEY: &str = "stream_high_water";
/// Changes a slow listener may fall behind by before it must re-check from its token.
const CHANGE_BACKLOG: usize = 4_096;

/// What a committed write touched, for waking the syncs it concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// A change with the position it was committed at.
#[derive(Clone, Debug)]
pub struct Announced {
    pub position: u64,
    pub change: Change,
}

pub struct Stream {
    inner: Mutex<Inner>,
    committed: watch::Sender<u64>,
    changes: broadcast::Sender<Announced>,
    counters: Table<String, u64>,
    store: Arc<dyn KvStore>,
    /// Long-polls waiting for a change now (for the metrics).
    long_polls: Arc<AtomicU64>,
}

struct Inner {
    last_reserved: u64,
    /// Positions below this are covered by the persisted high-water mark.
    high_water: u64,
    in_flight: BTreeSet<u64>,
}

/// A reserved position; dropping it (after commit or on failure) releases it.
pub struct Reservation<'a> {
    stream: &'a Stream,
    pub position: u64,
}

impl Stream {
    /// Open the counter. `last_used` is the highest position found in stored data, for
    /// databases written before the high-water mark existed.
    pub fn new(store: &Arc<dyn KvStore>, last_used: u64) -> Result<Self> {
        let counters = COUNTERS.open(store);
        let persisted = counters.get(&HIGH_WATER_KEY.to_owned())?.unwrap_or(0);
        // Positions up to the persisted mark may have been handed out before a crash;
        // start after it so none is reused.
        let start = persisted.max(last_used);
        let stream = Self {
            inner: Mutex::new(Inner { last_reserved: start, high_water: start, in_flight: BTreeSet::new() }),
            committed: watch::channel(start).0,
            changes: broadcast::channel(CHANGE_BACKLOG).0,
            counters,
            store: Arc::clone(store),
            long_polls: Arc::new(AtomicU64::new(0)),
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
        let position = inner.last_reserved + 1;
        if position > inner.high_water {
            // Persist the next block's end before handing out any of it.
            let high_water = position + BLOCK;
            let mut batch = WriteBatch::new();
            self.counters.put(&mut batch, &HIGH_WATER_KEY.to_owned(), &high_water)?;
            self.store.write(batch)?;
            inner.high_water = high_water;
        }
        inner.last_reserved = position;
        inner.in_flight.insert(position);
        Ok(position)
    }

    fn release(&self, position: u64) {
        let mut inner = self.lock();
        inner.in_flight.remove(&position);
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

    /// Tell listeners what a committed write at `position` touched.
    pub fn announce(&self, position: u64, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            // No listener is fine: nobody is long-polling.
            let _ = self.changes.send(Announced { position, change });
        }
    }

    /// Listen for changes. Subscribe before reading `committed()`, so no change after the
    /// read can be missed.
    pub fn listen(&self) -> Listener {
        Listener {
            changes: self.changes.subscribe(),
            committed: self.committed.subscribe(),
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

impl Drop for OwnedReservation {
    fn drop(&mut self) {
        self.stream.release(self.position);
    }
}

/// One long-poll's view of the change feed.
pub struct Listener {
    changes: broadcast::Receiver<Announced>,
    committed: watch::Receiver<u64>,
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
    /// Changes were dropped because this listener fell behind: re-check everything.
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
        match self.changes.recv().await {
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
        let stream = Stream::new(&store(), 10).unwrap();
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
            let stream = Stream::new(&store, 0).unwrap();
            let reserved = stream.reserve().unwrap().position;
            stream.reserve().unwrap();
            reserved + 1
        };
        // Nothing that used these positions was stored, yet a new process must not hand
        // them out again (a client may hold a token naming them).
        let reopened = Stream::new(&store, 0).unwrap();
        assert!(reopened.reserve().unwrap().position > before);
        assert!(reopened.committed() >= before);
    }
}
