//! Accepted events: storage by ID, each room's timeline (by position and by timestamp),
//! each room's latest position and bump stamp, and the global stream that orders every event
//! the server accepts. Owns the `pdus`, `timeline`, `backfill`, `stream`, `room_timestamps`
//! and `room_bumps` tables.
//!
//! A room's history is ordered by *position*, a signed number: an event that entered the
//! stream sits at its stream position (1 and up); an event fetched backwards from another
//! server (backfilled: older than anything the room had here) sits at minus its backfill
//! position, which counts down from -1 as history is fetched further back. Backfilled events
//! never enter the stream, so sync never announces them, and `/messages` paging backwards
//! reaches them after the room's first stream position.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId};
use serde_json::value::RawValue as RawJsonValue;

use crate::{
    Error, Result,
    matrix::{
        limits::{self, MAX_JSON_DEPTH},
        pdu::Pdu,
        sliding,
    },
    service::cache::BoundedCache,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        codec::KeyCodec,
        kv::KeyRange,
        tables::{
            BACKFILL, EventStatus, PDUS, PduRecord, ROOM_BUMPS, ROOM_TIMESTAMPS, STREAM, StreamRecord,
            TIMELINE, TxnOrigin,
        },
    },
};

/// Bytes an event kept parsed in memory is counted as, besides its content and `unsigned`:
/// its IDs, hashes, signature and the cache's own share.
const EVENT_OVERHEAD_BYTES: usize = 640;

/// The bytes a cached event holds, roughly.
fn event_weight(event: &Arc<StoredEvent>) -> usize {
    // State events carry the content they replaced (`prev_content`) in `unsigned`.
    let unsigned =
        event.pdu.unsigned.as_ref().map_or(0, |u| serde_json::to_string(u).map_or(0, |s| s.len() * 2));
    EVENT_OVERHEAD_BYTES + event.pdu.content.get().len() * 2 + unsigned
}

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
    /// The delayed event it was sent from, if any.
    pub delay_id: Option<String>,
    /// What the room engine decided about it (local sends: accepted).
    pub status: EventStatus,
    /// The state group after it, for a state event written since this was recorded.
    pub state_after: Option<u64>,
    /// The room's current state group just before it took its position, when that differs
    /// from `state_before` (it sits on a fork); see [`StoredEvent::head_before`].
    pub head_before: Option<u64>,
    /// For a backfilled event, its backfill position (its `stream` is then 0).
    pub backfill: Option<u64>,
}

impl StoredEvent {
    /// The event's place in its room's history (see the module's documentation): its stream
    /// position, or minus its backfill position.
    pub fn position(&self) -> i64 {
        match self.backfill {
            Some(backfill) => i64::try_from(backfill).map_or(i64::MIN, |b| -b),
            None => i64::try_from(self.stream).unwrap_or(i64::MAX),
        }
    }

    /// The room's current state just before this event in stream order: what a client that
    /// synced up to the previous position holds.
    pub fn head_before(&self) -> u64 {
        self.head_before.unwrap_or(self.state_before)
    }
}

pub struct Events {
    pdus: Table<OwnedEventId, PduRecord>,
    timeline: Table<(OwnedRoomId, u64), OwnedEventId>,
    backfill: Table<(OwnedRoomId, u64), OwnedEventId>,
    stream: Table<u64, StreamRecord>,
    timestamps: Table<(OwnedRoomId, u64, u64), OwnedEventId>,
    bumps: Table<OwnedRoomId, u64>,
    cache: BoundedCache<OwnedEventId, Arc<StoredEvent>>,
    /// Each room's latest stream position, filled on first ask and kept by commits.
    last_positions: Mutex<HashMap<OwnedRoomId, u64>>,
    /// Each room's bump stamp, the same way.
    bump_positions: Mutex<HashMap<OwnedRoomId, u64>>,
}

impl Events {
    /// The event cache's counters (for the metrics).
    pub fn cache_stats(&self) -> crate::service::cache::CacheStats {
        self.cache.stats()
    }

    /// `cache_bytes`: memory the parsed events kept in memory may hold.
    pub fn new(store: &Arc<dyn KvStore>, cache_bytes: usize) -> Self {
        Self {
            pdus: PDUS.open(store),
            timeline: TIMELINE.open(store),
            backfill: BACKFILL.open(store),
            stream: STREAM.open(store),
            timestamps: ROOM_TIMESTAMPS.open(store),
            bumps: ROOM_BUMPS.open(store),
            cache: BoundedCache::new(cache_bytes, event_weight),
            last_positions: Mutex::new(HashMap::new()),
            bump_positions: Mutex::new(HashMap::new()),
        }
    }

    /// An accepted event or an outlier (an event known as another's auth event or as part
    /// of a state fetched from another server), if this server has it: the events a room's
    /// state may name. Rejected and soft-failed events are left out.
    pub fn get(&self, event_id: &EventId) -> Result<Option<Arc<StoredEvent>>> {
        Ok(self
            .get_any(event_id)?
            .filter(|e| matches!(e.status, EventStatus::Accepted | EventStatus::Outlier)))
    }

    /// An event this server stored, whatever its status (rejected, soft-failed, outlier):
    /// for the room engine, which must not fetch or judge such an event twice.
    pub fn get_any(&self, event_id: &EventId) -> Result<Option<Arc<StoredEvent>>> {
        if let Some(hit) = self.cache.get(event_id) {
            return Ok(Some(hit));
        }
        let key = event_id.to_owned();
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
        Ok(self.lookup(&ids.into_iter().collect::<Vec<_>>())?.into_iter().flatten().collect())
    }

    /// Events by ID, in order, as [`Self::get`] answers each: the cached ones under one lock,
    /// the others in one read.
    fn lookup(&self, ids: &[&OwnedEventId]) -> Result<Vec<Option<Arc<StoredEvent>>>> {
        let cached = self.cache.get_each(ids.iter().map(|id| -> &EventId { id }));
        let missing: Vec<&OwnedEventId> =
            ids.iter().zip(&cached).filter(|(_, hit)| hit.is_none()).map(|(id, _)| *id).collect();
        let mut read = Vec::with_capacity(missing.len());
        if !missing.is_empty() {
            for (id, record) in missing.iter().zip(self.pdus.get_many(missing.iter().copied())?) {
                let Some(record) = record else {
                    read.push(None);
                    continue;
                };
                let stored = Arc::new(decode(record)?);
                self.cache.insert((*id).clone(), Arc::clone(&stored));
                read.push(Some(stored));
            }
        }
        let mut read = read.into_iter();
        Ok(cached
            .into_iter()
            .map(|hit| match hit {
                Some(hit) => Some(hit),
                None => read.next().flatten(),
            })
            .map(|e| e.filter(|e| matches!(e.status, EventStatus::Accepted | EventStatus::Outlier)))
            .collect())
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
        if sliding::bumps_event(&event.pdu.kind) {
            self.bumps.put(batch, &event.pdu.room_id, &event.stream)?;
        }
        Ok(())
    }

    /// Queue a backfilled event's rows: the event and its backfill position (see the module's
    /// documentation). It takes no stream position.
    pub fn put_backfilled_in(&self, batch: &mut WriteBatch, event: &StoredEvent) -> Result<()> {
        let backfill =
            event.backfill.ok_or_else(|| Error::internal("a backfilled event needs a backfill position"))?;
        self.pdus.put(batch, &event.pdu.event_id, &encode(event)?)?;
        self.backfill.put(batch, &(event.pdu.room_id.clone(), backfill), &event.pdu.event_id)?;
        Ok(())
    }

    /// The room's highest backfill position (its oldest backfilled event), 0 if none.
    pub fn last_backfill(&self, room_id: &RoomId) -> Result<u64> {
        let room = room_id.to_owned();
        Ok(match self.backfill.scan(KeyRange::prefix(room.to_key_bytes()), Direction::Reverse)?.next() {
            Some(row) => row?.0.1,
            None => 0,
        })
    }

    /// A room's events by position (see the module's documentation), from `from` (exclusive;
    /// none: the newest, or the oldest going forwards) in `direction`, stopping at `until`
    /// as [`Self::room_events_until`] does, at most `limit`: the stream's events, then
    /// backwards the backfilled ones; forwards the other way round.
    pub fn room_events_by_position(
        &self,
        room_id: &RoomId,
        from: Option<i64>,
        until: Option<i64>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>> {
        // Stream positions are the positive positions; backfill position `b` is `-b`.
        let live = |p: i64| u64::try_from(p).unwrap_or(0);
        let back = |p: i64| p.checked_neg().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        let mut events = Vec::new();
        match direction {
            Direction::Reverse => {
                // Positions below `from`, above `until`: first those of the stream ...
                if from.is_none_or(|f| f > 1) {
                    let live_until = until.filter(|u| *u > 0).map(live);
                    events = self.room_events_until(room_id, from.map(live), live_until, direction, limit)?;
                }
                // ... then the backfilled ones, newest first.
                if events.len() < limit && until.is_none_or(|u| u < -1) {
                    let above = from.filter(|f| *f < 0).map_or(0, back);
                    let below = until.map(back);
                    let rest = limit - events.len();
                    events.extend(self.backfilled(room_id, above, below, Direction::Forward, rest)?);
                }
            }
            Direction::Forward => {
                // Positions above `from`, at or below `until`: first the backfilled ones,
                // oldest first ...
                if from.is_none_or(|f| f < -1) {
                    let lowest = until.filter(|u| *u < 0).map_or(1, back);
                    let below = from.map(back);
                    events = self.backfilled(room_id, lowest - 1, below, Direction::Reverse, limit)?;
                }
                // ... then those of the stream.
                if events.len() < limit && until.is_none_or(|u| u > 0) {
                    let start = from.map(|f| live(f.max(0)));
                    let rest = limit - events.len();
                    events.extend(self.room_events_until(
                        room_id,
                        start,
                        until.map(live),
                        direction,
                        rest,
                    )?);
                }
            }
        }
        Ok(events)
    }

    /// A room's backfilled events with backfill positions above `above` and below `below`
    /// (none: no bound), in `direction` of backfill position (forward: newest first).
    fn backfilled(
        &self,
        room_id: &RoomId,
        above: u64,
        below: Option<u64>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Arc<StoredEvent>>> {
        let room = room_id.to_owned();
        let mut range = KeyRange::prefix(room.to_key_bytes());
        range.start = std::ops::Bound::Excluded((room.clone(), above).to_key_bytes());
        if let Some(below) = below {
            range.end = std::ops::Bound::Excluded((room.clone(), below).to_key_bytes());
        }
        let mut events = Vec::new();
        for row in self.backfill.scan(range, direction)?.take(limit) {
            let (_, event_id) = row?;
            let event = self
                .get(&event_id)?
                .ok_or_else(|| Error::internal(format!("backfill names missing {event_id}")))?;
            events.push(event);
        }
        Ok(events)
    }

    /// Queue an event that takes no place in the timeline or the stream (rejected,
    /// soft-failed, outlier): only its row by ID.
    pub fn put_unlisted_in(&self, batch: &mut WriteBatch, event: &StoredEvent) -> Result<()> {
        Ok(self.pdus.put(batch, &event.pdu.event_id, &encode(event)?)?)
    }

    /// Queue a rewrite of an already stored event (redaction), keeping its place.
    pub fn replace_in(&self, batch: &mut WriteBatch, event: &StoredEvent) -> Result<()> {
        Ok(self.pdus.put(batch, &event.pdu.event_id, &encode(event)?)?)
    }

    /// Make a committed unlisted event (see [`Self::put_unlisted_in`]) visible to readers.
    pub fn committed_unlisted(&self, event: Arc<StoredEvent>) {
        self.cache.insert(event.pdu.event_id.clone(), event);
    }

    /// Make committed events visible to readers of the cache and of room positions.
    pub fn committed(&self, events: impl IntoIterator<Item = Arc<StoredEvent>>) {
        for event in events {
            {
                let mut last = self.lock_last();
                let entry = last.entry(event.pdu.room_id.clone()).or_insert(0);
                *entry = (*entry).max(event.stream);
            }
            if sliding::bumps_event(&event.pdu.kind) {
                let mut bumps = lock(&self.bump_positions);
                let entry = bumps.entry(event.pdu.room_id.clone()).or_insert(0);
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
        self.room_events_until(room_id, from, None, direction, limit)
    }

    /// As [`Self::room_events`], stopping at `until`: backwards, the events after it;
    /// forwards, those at or before it. A sync of a busy room reads only what is new.
    pub fn room_events_until(
        &self,
        room_id: &RoomId,
        from: Option<u64>,
        until: Option<u64>,
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
        let range = match (until, direction) {
            (None, _) => range,
            (Some(until), Direction::Reverse) => {
                KeyRange { start: std::ops::Bound::Excluded((room.clone(), until).to_key_bytes()), ..range }
            }
            (Some(until), Direction::Forward) => match until.checked_add(1) {
                Some(past) => {
                    KeyRange { end: std::ops::Bound::Excluded((room.clone(), past).to_key_bytes()), ..range }
                }
                None => range,
            },
        };
        let ids: Vec<OwnedEventId> = self
            .timeline
            .scan(range, direction)?
            .take(limit)
            .map(|row| row.map(|(_, event_id)| event_id))
            .collect::<Result<_, _>>()?;
        let found = self.lookup(&ids.iter().collect::<Vec<_>>())?;
        ids.iter()
            .zip(found)
            .map(|(id, event)| event.ok_or_else(|| Error::internal(format!("timeline names missing {id}"))))
            .collect()
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

    /// What a courier following the stream reads in one look: the events after `after` and
    /// up to the `committed` position, at most `limit`, and the position the look covers
    /// (everything committed, or up to the last event read when there may be more).
    pub fn committed_after(
        &self,
        after: u64,
        limit: usize,
        committed: u64,
    ) -> Result<(Vec<StoredEvent>, u64)> {
        let mut scanned = self.stream_events(after, limit)?;
        let upto = match scanned.last() {
            Some(last) if scanned.len() >= limit => last.stream.min(committed),
            _ => committed,
        };
        scanned.retain(|event| event.stream <= upto);
        Ok((scanned, upto))
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

    /// The room's bump stamp: the position of its latest event of a type that moves a room up
    /// a room list (see [`sliding::bumps`]), 0 if none. Answered from memory once known;
    /// rooms whose events predate the `room_bumps` table are looked up once in their
    /// latest events.
    pub fn bump_position(&self, room_id: &RoomId) -> Result<u64> {
        if let Some(known) = lock(&self.bump_positions).get(room_id) {
            return Ok(*known);
        }
        let room = room_id.to_owned();
        let stored = match self.bumps.get(&room)? {
            Some(position) => position,
            None => self.find_bump(room_id)?,
        };
        let mut known = lock(&self.bump_positions);
        let entry = known.entry(room).or_insert(stored);
        *entry = (*entry).max(stored);
        Ok(*entry)
    }

    /// The latest bumping event among a room's last events, for rooms without a stored bump
    /// stamp; past the look-back, the oldest event looked at stands in.
    fn find_bump(&self, room_id: &RoomId) -> Result<u64> {
        const LOOK_BACK: usize = 500;
        let mut oldest = 0;
        let mut cursor = None;
        let mut seen = 0;
        while seen < LOOK_BACK {
            let events = self.room_events(room_id, cursor, Direction::Reverse, 100)?;
            let Some(last) = events.last() else { break };
            cursor = Some(last.stream);
            seen += events.len();
            for event in &events {
                if sliding::bumps_event(&event.pdu.kind) {
                    return Ok(event.stream);
                }
                oldest = event.stream;
            }
        }
        Ok(oldest)
    }

    /// Queue the removal of one event of a purged room: its timeline, stream and timestamp
    /// rows, and (unless `keep_event`, for the leave a member's client must still be shown)
    /// the event itself.
    pub fn purge_event_in(&self, batch: &mut WriteBatch, event: &StoredEvent, keep_event: bool) {
        let room = event.pdu.room_id.clone();
        if !keep_event {
            self.pdus.delete(batch, &event.pdu.event_id);
        }
        if let Some(backfill) = event.backfill {
            self.backfill.delete(batch, &(room, backfill));
            return;
        }
        self.timeline.delete(batch, &(room.clone(), event.stream));
        self.stream.delete(batch, &event.stream);
        let ts = u64::from(event.pdu.origin_server_ts.get());
        self.timestamps.delete(batch, &(room, ts, event.stream));
    }

    /// Queue the removal of a purged room's own rows (its bump stamp, any timestamp rows
    /// left).
    pub fn purge_room_in(&self, batch: &mut WriteBatch, room_id: &RoomId) -> Result<()> {
        let room = room_id.to_owned();
        self.bumps.delete(batch, &room);
        self.timestamps.delete_prefix(batch, &room)?;
        self.timeline.delete_prefix(batch, &room)?;
        self.backfill.delete_prefix(batch, &room)?;
        Ok(())
    }

    /// Another process sharing the database wrote to `room` (`None`: anywhere): forget the
    /// positions kept for it. (Stored events do not change, except by a redaction, which
    /// comes as [`Self::rewritten_elsewhere`].)
    pub fn changed_elsewhere(&self, room_id: Option<&RoomId>) {
        match room_id {
            Some(room_id) => {
                self.lock_last().remove(room_id);
                lock(&self.bump_positions).remove(room_id);
            }
            None => {
                self.lock_last().clear();
                lock(&self.bump_positions).clear();
                // Lost messages may have named events rewritten (redacted).
                self.cache.clear();
            }
        }
    }

    /// Another process sharing the database rewrote a stored event (a redaction): forget
    /// the copy kept in memory.
    pub fn rewritten_elsewhere(&self, event_id: &EventId) {
        self.cache.remove(&event_id.to_owned());
    }

    /// A purge was committed: forget what memory holds of the room and its events.
    pub fn purged(&self, room_id: &RoomId, event_ids: &[OwnedEventId]) {
        self.lock_last().remove(room_id);
        lock(&self.bump_positions).remove(room_id);
        for id in event_ids {
            self.cache.remove(id);
        }
    }

    /// The highest position stored in the global stream, for opening the counter.
    pub fn last_stored_position(&self) -> Result<u64> {
        Ok(match self.stream.scan(KeyRange::all(), Direction::Reverse)?.next() {
            Some(row) => row?.0,
            None => 0,
        })
    }

    fn lock_last(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedRoomId, u64>> {
        lock(&self.last_positions)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn encode(event: &StoredEvent) -> Result<PduRecord> {
    let pdu = serde_json::value::to_raw_value(&event.pdu)
        .map_err(|e| Error::internal(format!("encode event: {e}")))?;
    Ok(PduRecord {
        stream: event.stream,
        state_before: event.state_before,
        pdu,
        txn: event.txn.clone(),
        delay_id: event.delay_id.clone(),
        status: event.status,
        state_after: event.state_after,
        head_before: event.head_before,
        backfill: event.backfill,
    })
}

fn decode(record: PduRecord) -> Result<StoredEvent> {
    let pdu = parse_pdu(record.pdu.get()).map_err(|e| Error::internal(format!("stored event: {e}")))?;
    Ok(StoredEvent {
        pdu,
        stream: record.stream,
        state_before: record.state_before,
        txn: record.txn,
        delay_id: record.delay_id,
        status: record.status,
        state_after: record.state_after,
        head_before: record.head_before,
        backfill: record.backfill,
    })
}

/// Parse a stored event. Before request bodies had a nesting limit, a state event's
/// `unsigned.prev_content` (the content it replaced, nested two levels down) could go past
/// the 128 levels serde_json reads, and the event then failed every read of it, breaking
/// the room's syncs for all its members. Such an event is read without the `unsigned`
/// entries nested beyond [`MAX_JSON_DEPTH`]: it still shows, without that extra.
fn parse_pdu(json: &str) -> Result<Pdu, serde_json::Error> {
    let parsed = serde_json::from_str(json);
    if parsed.is_ok() || !limits::json_too_deep(json.as_bytes(), MAX_JSON_DEPTH) {
        return parsed;
    }
    // Raw values are read without recursion, at any depth.
    let mut object: BTreeMap<String, Box<RawJsonValue>> = serde_json::from_str(json)?;
    if let Some(unsigned) = object.get("unsigned") {
        let mut entries: BTreeMap<String, Box<RawJsonValue>> = serde_json::from_str(unsigned.get())?;
        entries.retain(|key, value| {
            let keep = !limits::json_too_deep(value.get().as_bytes(), MAX_JSON_DEPTH);
            if !keep {
                tracing::warn!(key, "stored event: unsigned entry nested too deep left out");
            }
            keep
        });
        object.insert("unsigned".to_owned(), serde_json::value::to_raw_value(&entries)?);
    }
    serde_json::from_str(&serde_json::to_string(&object)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(unsigned: &str) -> String {
        format!(
            r#"{{"event_id":"$e","room_id":"!r:x","sender":"@a:x","origin_server_ts":1,"type":"m.x","content":{{}},"state_key":"","prev_events":[],"auth_events":[],"depth":2,"unsigned":{unsigned}}}"#
        )
    }

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn an_event_with_an_unreadably_deep_prev_content_is_read_without_it() {
        // 126 levels two levels down: 128, which serde_json refuses.
        let json = event(&format!(r#"{{"prev_content":{},"prev_sender":"@a:x"}}"#, nested(126)));
        assert!(serde_json::from_str::<Pdu>(&json).is_err());
        let pdu = parse_pdu(&json).unwrap();
        let unsigned = pdu.unsigned.unwrap();
        assert!(!unsigned.contains_key("prev_content"));
        assert_eq!(unsigned["prev_sender"], "@a:x");
    }

    #[test]
    fn readable_events_and_other_failures_are_unchanged() {
        let json = event(&format!(r#"{{"prev_content":{}}}"#, nested(60)));
        assert!(parse_pdu(&json).unwrap().unsigned.unwrap().contains_key("prev_content"));
        assert!(parse_pdu(r#"{"event_id":"$e"}"#).is_err());
    }
}
