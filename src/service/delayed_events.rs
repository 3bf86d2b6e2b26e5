//! Delayed events (MSC4140): events a user asks this server to send later, kept (across
//! restarts) until their timer runs out, and the rules on them: the configured limits, who
//! may act on which, and the cancellation of a delayed state event when another user writes
//! that state. Owns the `delayed_events`, `delayed_events_due`, `delayed_events_by_user`,
//! `delayed_events_by_state` and `delayed_event_txns` tables.
//!
//! Sending is not done here: `rooms::delayed::DelayedActions` sends through the room
//! services, and the append path (`Timeline`) calls back into this service (to remove a
//! delayed event in the batch of the event sent from it, and to cancel others' delayed
//! state when state is written), so this service depends on no room service.
//!
//! A delayed event being sent is "in flight": every other operation treats it as gone
//! (`404`), as Synapse does for events it has marked as processed. In-flight marks live in
//! memory; an event whose send a crash interrupted is still stored and is sent again at the
//! next start.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use ruma::{DeviceId, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::value::RawValue as RawJsonValue;
use tokio::sync::Notify;

use super::{clock::Clock, passwords::random_string};
use crate::{
    Error, Result,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        codec::KeyCodec,
        kv::KeyRange,
        tables::{
            DELAYED_EVENT_TXNS, DELAYED_EVENTS, DELAYED_EVENTS_BY_STATE, DELAYED_EVENTS_BY_USER,
            DELAYED_EVENTS_DUE, DelayedEventRecord,
        },
    },
};

/// Length of a delay ID: random alphanumerics, about 143 bits. The ID alone lets anyone
/// who knows it send, restart or cancel the event, so it must not be guessable.
const DELAY_ID_LEN: usize = 24;

/// The configured bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The longest delay allowed; `None` turns delayed events off.
    pub max_delay_ms: Option<u64>,
    /// How many delayed events one user may have waiting; 0 turns delayed events off.
    pub max_per_user: u64,
}

/// A delayed event to schedule.
pub struct NewDelayedEvent<'a> {
    pub user_id: &'a UserId,
    pub device_id: &'a DeviceId,
    pub room_id: &'a RoomId,
    pub kind: &'a str,
    pub state_key: Option<&'a str>,
    pub content: Box<RawJsonValue>,
    pub delay_ms: u64,
    /// The request path of a `PUT /send` with a transaction ID, which makes the request
    /// idempotent per device.
    pub txn_path: Option<&'a str>,
}

/// Who asks for an operation on a delayed event.
#[derive(Clone, Copy)]
pub enum Caller<'a> {
    /// An authenticated user: only their own delayed events exist for them.
    Owner(&'a UserId),
    /// Anyone holding the delay ID, which is the capability (the unauthenticated endpoints
    /// external services such as lk-jwt-service call).
    DelayId,
}

pub struct DelayedEvents {
    store: Arc<dyn KvStore>,
    clock: Arc<dyn Clock>,
    limits: Limits,
    records: Table<String, DelayedEventRecord>,
    due: Table<(u64, String), ()>,
    by_user: Table<(OwnedUserId, String), ()>,
    by_state: Table<(OwnedRoomId, String, String, String), OwnedUserId>,
    txns: Table<(OwnedUserId, OwnedDeviceId, String), String>,
    /// Delay IDs being sent now. The lock also serialises every read-check-write on the
    /// tables, so two operations never both act on one delayed event. Writes under it are
    /// buffered (visible at once); the fsync that makes them durable, before the caller is
    /// answered, happens after it is released, so the append path (which takes it for every
    /// state event) never waits for a disk.
    in_flight: Mutex<HashSet<String>>,
    /// Woken whenever the soonest due time may have changed.
    changed: Notify,
}

impl DelayedEvents {
    pub fn new(store: &Arc<dyn KvStore>, clock: Arc<dyn Clock>, limits: Limits) -> Self {
        Self {
            store: Arc::clone(store),
            clock,
            limits,
            records: DELAYED_EVENTS.open(store),
            due: DELAYED_EVENTS_DUE.open(store),
            by_user: DELAYED_EVENTS_BY_USER.open(store),
            by_state: DELAYED_EVENTS_BY_STATE.open(store),
            txns: DELAYED_EVENT_TXNS.open(store),
            in_flight: Mutex::new(HashSet::new()),
            changed: Notify::new(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether users may schedule delayed events (both limits configured and not zero).
    pub fn enabled(&self) -> bool {
        self.limits.max_delay_ms.is_some() && self.limits.max_per_user > 0
    }

    /// Refuse a delay this server does not allow: any, when delayed events are off
    /// (`403 M_FORBIDDEN`), or one past the maximum (`400`, with Synapse's error code and
    /// MSC4140's `max_delay` field under its unstable name).
    pub fn check_delay(&self, delay_ms: u64) -> Result<()> {
        let max = match self.limits.max_delay_ms {
            Some(max) if self.limits.max_per_user > 0 => max,
            _ => return Err(Error::forbidden("Sending delayed events has been disallowed")),
        };
        if delay_ms > max {
            let mut fields = serde_json::Map::new();
            fields.insert("org.matrix.msc4140.max_delay".to_owned(), max.into());
            return Err(Error::unstable_code(
                "ORG.MATRIX.MSC4140_DELAY_TOO_LARGE",
                format!("The requested delay ({delay_ms}ms) exceeds the allowed maximum ({max}ms)"),
                fields,
            ));
        }
        Ok(())
    }

    /// The delay ID a transaction already produced, if this is a retransmission.
    pub fn txn_delay_id(&self, user_id: &UserId, device_id: &DeviceId, path: &str) -> Result<Option<String>> {
        Ok(self.txns.get(&(user_id.to_owned(), device_id.to_owned(), path.to_owned()))?)
    }

    /// Store a delayed event and start its timer; returns its delay ID. A retransmitted
    /// transaction gets the delay ID it got the first time. Past the per-user limit, `429`
    /// with the time until the user's next event is due (Synapse's answer, and MSC4140's).
    pub fn schedule(&self, new: NewDelayedEvent<'_>) -> Result<String> {
        self.check_delay(new.delay_ms)?;
        let in_flight = self.lock();
        let txn_key = new.txn_path.map(|p| (new.user_id.to_owned(), new.device_id.to_owned(), p.to_owned()));
        if let Some(key) = &txn_key
            && let Some(delay_id) = self.txns.get(key)?
        {
            return Ok(delay_id);
        }
        let now = self.clock.now_ms();
        let mut send_times: Vec<u64> =
            self.user_records(new.user_id)?.iter().map(|(_, record)| record.send_ts()).collect();
        let limit = usize::try_from(self.limits.max_per_user).unwrap_or(usize::MAX);
        if send_times.len() >= limit {
            // The user is back under the limit once enough of their events have been sent:
            // the one that frees a place is the (n - limit + 1)-th soonest.
            send_times.sort_unstable();
            let freeing = send_times[send_times.len() - limit];
            let message = "The maximum number of delayed events has been reached.";
            return Err(match freeing.checked_sub(now).filter(|wait| *wait > 0) {
                Some(wait) => Error::limit_exceeded_for(message, Duration::from_millis(wait)),
                None => Error::limit_exceeded(message),
            });
        }
        let delay_id = random_string(DELAY_ID_LEN);
        let record = DelayedEventRecord {
            user_id: new.user_id.to_owned(),
            device_id: Some(new.device_id.to_owned()),
            room_id: new.room_id.to_owned(),
            kind: new.kind.to_owned(),
            state_key: new.state_key.map(str::to_owned),
            content: new.content,
            delay_ms: new.delay_ms,
            running_since_ms: now,
        };
        let mut batch = WriteBatch::new();
        self.put_in(&mut batch, &delay_id, &record)?;
        if let Some(key) = &txn_key {
            self.txns.put(&mut batch, key, &delay_id)?;
        }
        self.store.write_buffered(batch)?;
        drop(in_flight);
        self.store.sync()?;
        tracing::debug!(user_id = %new.user_id, room_id = %new.room_id, delay_ms = new.delay_ms, "delayed event scheduled");
        self.changed.notify_one();
        Ok(delay_id)
    }

    /// A user's waiting delayed events, soonest first (those being sent left out).
    pub fn list(&self, user_id: &UserId) -> Result<Vec<(String, DelayedEventRecord)>> {
        let in_flight = self.lock();
        let mut records: Vec<_> =
            self.user_records(user_id)?.into_iter().filter(|(id, _)| !in_flight.contains(id)).collect();
        records.sort_by_key(|(id, record)| (record.send_ts(), id.clone()));
        Ok(records)
    }

    /// One of a user's waiting delayed events.
    pub fn get(&self, user_id: &UserId, delay_id: &str) -> Result<DelayedEventRecord> {
        let in_flight = self.lock();
        self.waiting(&in_flight, delay_id, Caller::Owner(user_id))
    }

    /// Cancel a waiting delayed event: it is never sent.
    pub fn cancel(&self, delay_id: &str, caller: Caller<'_>) -> Result<()> {
        let in_flight = self.lock();
        let record = self.waiting(&in_flight, delay_id, caller)?;
        let mut batch = WriteBatch::new();
        self.delete_in(&mut batch, delay_id, &record);
        self.store.write_buffered(batch)?;
        drop(in_flight);
        self.store.sync()?;
        self.changed.notify_one();
        Ok(())
    }

    /// Restart a waiting delayed event's timer: it is due its delay from now.
    pub fn restart(&self, delay_id: &str, caller: Caller<'_>) -> Result<()> {
        let in_flight = self.lock();
        let mut record = self.waiting(&in_flight, delay_id, caller)?;
        let mut batch = WriteBatch::new();
        self.due.delete(&mut batch, &(record.send_ts(), delay_id.to_owned()));
        record.running_since_ms = self.clock.now_ms();
        self.records.put(&mut batch, &delay_id.to_owned(), &record)?;
        self.due.put(&mut batch, &(record.send_ts(), delay_id.to_owned()), &())?;
        self.store.write_buffered(batch)?;
        drop(in_flight);
        self.store.sync()?;
        self.changed.notify_one();
        Ok(())
    }

    /// Take a waiting delayed event out to send it now (the `send` action). The caller
    /// must `finish` it, whether the send worked or not.
    pub fn claim(&self, delay_id: &str, caller: Caller<'_>) -> Result<DelayedEventRecord> {
        let mut in_flight = self.lock();
        let record = self.waiting(&in_flight, delay_id, caller)?;
        in_flight.insert(delay_id.to_owned());
        Ok(record)
    }

    /// Take out up to `max` delayed events that are due now, soonest first. The caller must
    /// `finish` each.
    pub fn claim_due(&self, max: usize) -> Result<Vec<(String, DelayedEventRecord)>> {
        let now = self.clock.now_ms();
        let mut in_flight = self.lock();
        // Every key due by now sorts before the first key of the next millisecond.
        let range = KeyRange::all().before(now.saturating_add(1).to_key_bytes());
        let mut claimed = Vec::new();
        let mut orphans = WriteBatch::new();
        for row in self.due.scan(range, Direction::Forward)? {
            let ((send_ts, delay_id), ()) = row?;
            if in_flight.contains(&delay_id) {
                continue;
            }
            match self.records.get(&delay_id)? {
                Some(record) => {
                    in_flight.insert(delay_id.clone());
                    claimed.push((delay_id, record));
                }
                // A timer without its event (not written by this code, but harmless):
                // drop it so it is not found again.
                None => self.due.delete(&mut orphans, &(send_ts, delay_id)),
            }
            if claimed.len() >= max {
                break;
            }
        }
        if !orphans.is_empty() {
            self.store.write_buffered(orphans)?;
        }
        Ok(claimed)
    }

    /// When the soonest delayed event not being sent is due, if any is waiting.
    pub fn next_due(&self) -> Result<Option<u64>> {
        let in_flight = self.lock();
        for row in self.due.scan(KeyRange::all(), Direction::Forward)? {
            let ((send_ts, delay_id), ()) = row?;
            if !in_flight.contains(&delay_id) {
                return Ok(Some(send_ts));
            }
        }
        Ok(None)
    }

    /// Wait until the soonest due time may have changed (an event scheduled, restarted,
    /// cancelled or finished). A change made while nobody waits wakes the next wait.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Queue, into the batch of the event sent from a delayed event, that event's removal:
    /// the event and the end of its delayed event are written together.
    pub fn remove_in(&self, batch: &mut WriteBatch, delay_id: &str) -> Result<()> {
        if let Some(record) = self.records.get(&delay_id.to_owned())? {
            self.delete_in(batch, delay_id, &record);
        }
        Ok(())
    }

    /// End the send of a claimed delayed event: it is removed (unless its event's batch
    /// already removed it) and no longer in flight.
    pub fn finish(&self, delay_id: &str) -> Result<()> {
        let mut in_flight = self.lock();
        let removed = match self.records.get(&delay_id.to_owned()) {
            Ok(Some(record)) => {
                let mut batch = WriteBatch::new();
                self.delete_in(&mut batch, delay_id, &record);
                self.store.write_buffered(batch).map_err(Error::from)
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e.into()),
        };
        // Released even when the removal failed: the event is then found again and retried.
        in_flight.remove(delay_id);
        drop(in_flight);
        self.changed.notify_one();
        removed?;
        Ok(self.store.sync()?)
    }

    /// State `(kind, state_key)` of a room was just written by `sender`: cancel other users'
    /// waiting delayed events for that state, as Synapse does, so a delayed event does not
    /// undo a change someone else made. A user's own write leaves their delayed events be
    /// (MSC4140: they are in control of those). Called on the append path under the room's
    /// lock; written buffered, made durable by the event's own sync. Returns how many.
    pub fn state_written(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
        sender: &UserId,
    ) -> Result<usize> {
        let prefix = (room_id.to_owned(), kind.to_owned(), state_key.to_owned());
        let in_flight = self.lock();
        let mut cancelled = Vec::new();
        // With nothing waiting for this state this is one seek.
        for row in self.by_state.scan_prefix(&prefix, Direction::Forward)? {
            let ((_, _, _, delay_id), owner) = row?;
            if owner != sender && !in_flight.contains(&delay_id) {
                cancelled.push(delay_id);
            }
        }
        if cancelled.is_empty() {
            return Ok(0);
        }
        let mut batch = WriteBatch::new();
        for delay_id in &cancelled {
            if let Some(record) = self.records.get(delay_id)? {
                self.delete_in(&mut batch, delay_id, &record);
            }
        }
        self.store.write_buffered(batch)?;
        drop(in_flight);
        tracing::info!(room_id = %room_id, kind, count = cancelled.len(), "state written by another user cancelled delayed events");
        self.changed.notify_one();
        Ok(cancelled.len())
    }

    /// Cancel every waiting delayed event of a user (their account is deactivated).
    pub fn cancel_all_for_user(&self, user_id: &UserId) -> Result<usize> {
        let in_flight = self.lock();
        let mut batch = WriteBatch::new();
        let mut count = 0;
        for (delay_id, record) in self.user_records(user_id)? {
            if !in_flight.contains(&delay_id) {
                self.delete_in(&mut batch, &delay_id, &record);
                count += 1;
            }
        }
        self.store.write_buffered(batch)?;
        drop(in_flight);
        self.store.sync()?;
        self.changed.notify_one();
        Ok(count)
    }

    /// Drop every waiting delayed event for a room that is being purged.
    pub fn cancel_all_for_room(&self, room_id: &RoomId) -> Result<usize> {
        let in_flight = self.lock();
        let mut batch = WriteBatch::new();
        let mut count = 0;
        for row in self.records.scan(crate::storage::kv::KeyRange::all(), Direction::Forward)? {
            let (delay_id, record) = row?;
            if record.room_id == room_id && !in_flight.contains(&delay_id) {
                self.delete_in(&mut batch, &delay_id, &record);
                count += 1;
            }
        }
        self.store.write_buffered(batch)?;
        drop(in_flight);
        self.store.sync()?;
        self.changed.notify_one();
        Ok(count)
    }

    /// A waiting delayed event the caller may act on; `404` otherwise (unknown, being
    /// sent, or another user's), as Synapse answers for all three.
    fn waiting(
        &self,
        in_flight: &HashSet<String>,
        delay_id: &str,
        caller: Caller<'_>,
    ) -> Result<DelayedEventRecord> {
        let not_found = || Error::not_found("Delayed event not found");
        if in_flight.contains(delay_id) {
            return Err(not_found());
        }
        let record = self.records.get(&delay_id.to_owned())?.ok_or_else(not_found)?;
        match caller {
            Caller::Owner(user_id) if record.user_id != user_id => Err(not_found()),
            _ => Ok(record),
        }
    }

    /// Every stored delayed event of a user, in flight or not.
    fn user_records(&self, user_id: &UserId) -> Result<Vec<(String, DelayedEventRecord)>> {
        let ids: Vec<String> = self
            .by_user
            .scan_prefix(&user_id.to_owned(), Direction::Forward)?
            .map(|row| row.map(|((_, delay_id), ())| delay_id))
            .collect::<Result<_, _>>()?;
        let records = self.records.get_many(&ids)?;
        Ok(ids.into_iter().zip(records).filter_map(|(id, record)| Some((id, record?))).collect())
    }

    fn put_in(&self, batch: &mut WriteBatch, delay_id: &str, record: &DelayedEventRecord) -> Result<()> {
        let id = delay_id.to_owned();
        self.records.put(batch, &id, record)?;
        self.due.put(batch, &(record.send_ts(), id.clone()), &())?;
        self.by_user.put(batch, &(record.user_id.clone(), id.clone()), &())?;
        if let Some(state_key) = &record.state_key {
            let key = (record.room_id.clone(), record.kind.clone(), state_key.clone(), id);
            self.by_state.put(batch, &key, &record.user_id)?;
        }
        Ok(())
    }

    /// Every row of one delayed event (the transaction row stays, so a retransmission still
    /// gets its delay ID).
    fn delete_in(&self, batch: &mut WriteBatch, delay_id: &str, record: &DelayedEventRecord) {
        let id = delay_id.to_owned();
        self.records.delete(batch, &id);
        self.due.delete(batch, &(record.send_ts(), id.clone()));
        self.by_user.delete(batch, &(record.user_id.clone(), id.clone()));
        if let Some(state_key) = &record.state_key {
            self.by_state
                .delete(batch, &(record.room_id.clone(), record.kind.clone(), state_key.clone(), id));
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
