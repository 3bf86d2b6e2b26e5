//! Accepted events: storage by ID, each room's timeline (by position and by timestamp),
//! each room's latest position, and the global stream that orders every event the server
//! accepts. Owns the `pdus`, `timeline`, `stream` and `room_timestamps` tables.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId};

use crate::{
    Error, Result,
    matrix::pdu::Pdu,
    service::cache::BoundedCache,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        codec::KeyCodec,
        kv::KeyRange,
        tables::{PDUS, PduRecord, ROOM_TIMESTAMPS, STREAM, StreamRecord, TIMELINE, TxnOrigin},
    },
};

/// Events kept parsed in memory; state events are read on every append for auth.
const EVENT_CACHE_ENTRIES: usize = 20_000;

/// An accepted event with where it sits.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub pdu: Pdu,
    /// Position in the global stream.
    pub stream: u64,
    /// The state group of the room state just before the event.
    pub state_before: u64,
    /// The device and transaction that sent it, if sent by a local client with one.
    pub txn: Option<TxnOrigin>,
}

pub struct Events {
    pdus: Table<OwnedEventId, PduRecord>,
    timeline: Table<(OwnedRoomId, u64), OwnedEventId>,
    stream: Table<u64, StreamRecord>,
    timestamps: Table<(OwnedRoomId, u64, u64), OwnedEventId>,
    cache: BoundedCache<OwnedEventId, Arc<StoredEvent>>,
    /// Each room's latest stream position, filled on first ask and kept by commits.
    last_positions: Mutex<HashMap<OwnedRoomId, u64>>,
}

impl Events {
    pub fn new(store: &Arc<dyn KvStore>) -> Self {
        Self {
            pdus: PDUS.open(store),
            timeline: TIMELINE.open(store),
            stream: STREAM.open(store),
            timestamps: ROOM_TIMESTAMPS.open(store),
            cache: BoundedCache::new(EVENT_CACHE_ENTRIES),
            last_positions: Mutex::new(HashMap::new()),
        }
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
        let ts = u64::from(event.pdu.origin_server_ts.get());
        self.timestamps.put(batch, &(event.pdu.room_id.clone(), ts, event.stream), &event.pdu.event_id)?;
        Ok(())
    }

    /// Queue a rewrite of an already stored event (redaction), keeping its place.
    pub fn replace_in(&self, batch: &mut WriteBatch, event: &StoredEvent) -> Result<()> {
        Ok(self.pdus.put(batch, &event.pdu.event_id, &encode(event)?)?)
    }

    /// Make committed events visible to readers of the cache and of room positions.
    pub fn committed(&self, events: impl IntoIterator<Item = Arc<StoredEvent>>) {
        for event in events {
            {
                let mut last = self.lock_last();
                let entry = last.entry(event.pdu.room_id.clone()).or_insert(0);
                *entry = (*entry).max(event.stream);
            }
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

    /// The room's events by origin timestamp: at or after `ts` (Forward) or at or before it
    /// (Reverse), nearest first, at most `limit`.
    pub fn events_near_timestamp(
        &self,
        room_id: &RoomId,
        ts: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<OwnedEventId>> {
        let room = room_id.to_owned();
        let range = match direction {
            Direction::Forward => {
                let mut range = KeyRange::prefix(room.to_key_bytes());
                range.start = std::ops::Bound::Included((room.clone(), ts).to_key_bytes());
                range
            }
            Direction::Reverse => KeyRange::prefix(room.to_key_bytes())
                .before((room.clone(), ts.saturating_add(1)).to_key_bytes()),
        };
        self.timestamps
            .scan(range, direction)?
            .take(limit)
            .map(|row| row.map(|(_, id)| id).map_err(Into::into))
            .collect()
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

    /// The stream position of the room's latest event, 0 if none (or no such room).
    /// Sync asks this for every room of a user, so it is answered from memory once known.
    pub fn last_position(&self, room_id: &RoomId) -> Result<u64> {
        if let Some(known) = self.lock_last().get(room_id) {
            return Ok(*known);
        }
        let room = room_id.to_owned();
        let last = match self.timeline.scan(KeyRange::prefix(room.to_key_bytes()), Direction::Reverse)?.next()
        {
            Some(row) => row?.0.1,
            None => 0,
        };
        // A commit may have raced this read; keep whichever is newer.
        let mut known = self.lock_last();
        let entry = known.entry(room).or_insert(last);
        *entry = (*entry).max(last);
        Ok(*entry)
    }

    /// The highest position stored in the global stream, for opening the counter.
    pub fn last_stored_position(&self) -> Result<u64> {
        Ok(match self.stream.scan(KeyRange::all(), Direction::Reverse)?.next() {
            Some(row) => row?.0,
            None => 0,
        })
    }

    fn lock_last(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedRoomId, u64>> {
        self.last_positions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn encode(event: &StoredEvent) -> Result<PduRecord> {
    let pdu = serde_json::value::to_raw_value(&event.pdu)
        .map_err(|e| Error::internal(format!("encode event: {e}")))?;
    Ok(PduRecord { stream: event.stream, state_before: event.state_before, pdu, txn: event.txn.clone() })
}

fn decode(record: PduRecord) -> Result<StoredEvent> {
    let pdu =
        serde_json::from_str(record.pdu.get()).map_err(|e| Error::internal(format!("stored event: {e}")))?;
    Ok(StoredEvent { pdu, stream: record.stream, state_before: record.state_before, txn: record.txn })
}
