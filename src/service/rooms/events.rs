//! Accepted events: storage by ID, each room's timeline, and the global stream that orders
//! every event the server accepts. Owns the `pdus`, `timeline` and `stream` tables.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
};

use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId};
use tokio::sync::watch;

use crate::{
    Error, Result,
    matrix::pdu::Pdu,
    service::cache::BoundedCache,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        codec::KeyCodec,
        kv::KeyRange,
        tables::{PDUS, PduRecord, STREAM, StreamRecord, TIMELINE},
    },
};

/// Events kept parsed in memory; state events are read on every append for auth.
const EVENT_CACHE_ENTRIES: usize = 20_000;

/// An accepted event with where it sits.
#[derive(Debug)]
pub struct StoredEvent {
    pub pdu: Pdu,
    /// Position in the global stream.
    pub stream: u64,
    /// The state group of the room state just before the event.
    pub state_before: u64,
}

pub struct Events {
    pdus: Table<OwnedEventId, PduRecord>,
    timeline: Table<(OwnedRoomId, u64), OwnedEventId>,
    stream: Table<u64, StreamRecord>,
    cache: BoundedCache<OwnedEventId, Arc<StoredEvent>>,
    positions: StreamPositions,
}

impl Events {
    pub fn new(store: &Arc<dyn KvStore>) -> Result<Self> {
        let stream = STREAM.open(store);
        let last = match stream.scan(KeyRange::all(), Direction::Reverse)?.next() {
            Some(row) => row?.0,
            None => 0,
        };
        Ok(Self {
            pdus: PDUS.open(store),
            timeline: TIMELINE.open(store),
            stream,
            cache: BoundedCache::new(EVENT_CACHE_ENTRIES),
            positions: StreamPositions::new(last),
        })
    }

    /// An accepted event, if this server has it.
    pub fn get(&self, event_id: &EventId) -> Result<Option<Arc<StoredEvent>>> {
        let key = event_id.to_owned();
        if let Some(hit) = self.cache.get(&key) {
            return Ok(Some(hit));
        }
        let Some(record) = self.pdus.get(&key)? else { return Ok(None) };
        let stored = Arc::new(decode(record)?);
        self.cache.insert(key, Arc::clone(&stored));
        Ok(Some(stored))
    }

    /// Several events by ID; missing ones are left out.
    pub fn get_many<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a OwnedEventId>,
    ) -> Result<Vec<Arc<StoredEvent>>> {
        let mut found = Vec::new();
        for id in ids {
            if let Some(event) = self.get(id)? {
                found.push(event);
            }
        }
        Ok(found)
    }

    /// Queue an event's rows: the event, its timeline slot and its stream position.
    pub fn put_in(&self, batch: &mut WriteBatch, event: &StoredEvent) -> Result<()> {
        self.pdus.put(batch, &event.pdu.event_id, &encode(event)?)?;
        self.timeline.put(batch, &(event.pdu.room_id.clone(), event.stream), &event.pdu.event_id)?;
        let position =
            StreamRecord { room_id: event.pdu.room_id.clone(), event_id: event.pdu.event_id.clone() };
        self.stream.put(batch, &event.stream, &position)?;
        Ok(())
    }

    /// Queue a rewrite of an already stored event (redaction), keeping its place.
    pub fn replace_in(&self, batch: &mut WriteBatch, event: &StoredEvent) -> Result<()> {
        Ok(self.pdus.put(batch, &event.pdu.event_id, &encode(event)?)?)
    }

    /// Make committed events visible to readers of the cache.
    pub fn committed(&self, events: impl IntoIterator<Item = Arc<StoredEvent>>) {
        for event in events {
            self.cache.insert(event.pdu.event_id.clone(), event);
        }
    }

    /// A room's events in stream order from `from` (exclusive) in `direction`, at most `limit`.
    pub fn room_events(
        &self,
        room_id: &RoomId,
        from: Option<u64>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>> {
        let room = room_id.to_owned();
        let range = match (from, direction) {
            (None, _) => KeyRange::prefix(room.to_key_bytes()),
            (Some(from), Direction::Forward) => {
                let mut range = KeyRange::prefix(room.to_key_bytes());
                range.start = std::ops::Bound::Excluded((room.clone(), from).to_key_bytes());
                range
            }
            (Some(from), Direction::Reverse) => {
                let mut range = KeyRange::prefix(room.to_key_bytes());
                range.end = std::ops::Bound::Excluded((room.clone(), from).to_key_bytes());
                range
            }
        };
        let mut events = Vec::new();
        for row in self.timeline.scan(range, direction)?.take(limit) {
            let (_, event_id) = row?;
            let event = self
                .get(&event_id)?
                .ok_or_else(|| Error::internal(format!("timeline names missing {event_id}")))?;
            events.push(event);
        }
        Ok(events)
    }

    /// Events of every room in stream order after position `after`, at most `limit`, read
    /// past the cache: for rebuilding a derived index (search) from all events.
    pub fn stream_events(&self, after: u64, limit: usize) -> Result<Vec<StoredEvent>> {
        let range = KeyRange {
            start: std::ops::Bound::Excluded(after.to_key_bytes()),
            end: std::ops::Bound::Unbounded,
        };
        let mut events = Vec::new();
        for row in self.stream.scan(range, Direction::Forward)?.take(limit) {
            let (_, position) = row?;
            let record = self
                .pdus
                .get(&position.event_id)?
                .ok_or_else(|| Error::internal(format!("stream names missing {}", position.event_id)))?;
            events.push(decode(record)?);
        }
        Ok(events)
    }

    /// Reserve the next stream position for an event about to be committed.
    pub fn reserve_position(&self) -> Reservation<'_> {
        self.positions.reserve()
    }

    /// Every event at or below this position is committed; later sync tokens stop here.
    pub fn committed_position(&self) -> u64 {
        *self.positions.committed.borrow()
    }
}

fn encode(event: &StoredEvent) -> Result<PduRecord> {
    let pdu = serde_json::value::to_raw_value(&event.pdu)
        .map_err(|e| Error::internal(format!("encode event: {e}")))?;
    Ok(PduRecord { stream: event.stream, state_before: event.state_before, pdu })
}

fn decode(record: PduRecord) -> Result<StoredEvent> {
    let pdu =
        serde_json::from_str(record.pdu.get()).map_err(|e| Error::internal(format!("stored event: {e}")))?;
    Ok(StoredEvent { pdu, stream: record.stream, state_before: record.state_before })
}

/// Hands out stream positions and tracks which are committed. Positions are reserved in
/// order but rooms commit independently, so a reader may only trust positions below the
/// oldest one still in flight: `committed` never moves past a gap.
struct StreamPositions {
    inner: Mutex<PositionsInner>,
    committed: watch::Sender<u64>,
}

struct PositionsInner {
    last_reserved: u64,
    in_flight: BTreeSet<u64>,
}

/// A reserved position; dropping it (after commit or on failure) releases it.
pub struct Reservation<'a> {
    positions: &'a StreamPositions,
    pub position: u64,
}

impl StreamPositions {
    fn new(last: u64) -> Self {
        Self {
            inner: Mutex::new(PositionsInner { last_reserved: last, in_flight: BTreeSet::new() }),
            committed: watch::channel(last).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PositionsInner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn reserve(&self) -> Reservation<'_> {
        let mut inner = self.lock();
        inner.last_reserved += 1;
        let position = inner.last_reserved;
        inner.in_flight.insert(position);
        Reservation { positions: self, position }
    }

    fn release(&self, position: u64) {
        let mut inner = self.lock();
        inner.in_flight.remove(&position);
        // A released but failed position is simply a hole in the stream, which readers skip.
        let safe = inner.in_flight.first().map_or(inner.last_reserved, |oldest| oldest - 1);
        self.committed.send_if_modified(|current| {
            let moved = *current != safe;
            *current = safe;
            moved
        });
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.positions.release(self.position);
    }
}

#[cfg(test)]
mod tests {
    use super::StreamPositions;

    #[test]
    fn committed_position_never_passes_an_append_in_flight() {
        let positions = StreamPositions::new(10);
        let first = positions.reserve();
        let second = positions.reserve();
        assert_eq!((first.position, second.position), (11, 12));
        // The later append finishes first: readers must still stop before the earlier one.
        drop(second);
        assert_eq!(*positions.committed.borrow(), 10);
        drop(first);
        assert_eq!(*positions.committed.borrow(), 12);
    }
}
