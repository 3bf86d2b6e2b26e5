//! Read receipts (`m.read`, `m.read.private`, threaded or not) and where each user has read
//! up to, with a per-room change feed for sync. Owns the `receipts` and `receipt_changes`
//! tables.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Value as JsonValue, json};

use super::{events::Events, members::Memberships};
use crate::{
    Error, Result,
    service::{
        account_data::AccountData,
        clock::Clock,
        stream::{Change, Stream},
    },
    storage::{
        Direction, Durability, KvStore, Table, WriteBatch,
        codec::KeyCodec,
        kv::KeyRange,
        tables::{RECEIPT_CHANGES, RECEIPTS, ReceiptChange, ReceiptRecord},
        transaction,
    },
};

pub const READ: &str = "m.read";
pub const READ_PRIVATE: &str = "m.read.private";
pub const FULLY_READ: &str = "m.fully_read";
/// The thread key of a receipt without `thread_id`.
const UNTHREADED: &str = "";

/// A user's receipt as stored.
#[derive(Clone, Debug)]
pub struct Receipt {
    pub user_id: OwnedUserId,
    pub receipt_type: String,
    /// `None` for an unthreaded receipt, else `main` or a thread root's event ID.
    pub thread_id: Option<String>,
    pub event_id: OwnedEventId,
    pub ts: u64,
    /// Stream position of the receipted event (for counting what is unread after it).
    pub event_stream: u64,
}

pub struct Receipts {
    receipts: Table<(OwnedRoomId, OwnedUserId, String, String), ReceiptRecord>,
    changes: Table<(OwnedRoomId, u64), ReceiptChange>,
    events: Arc<Events>,
    members: Arc<Memberships>,
    account_data: Arc<AccountData>,
    stream: Arc<Stream>,
    clock: Arc<dyn Clock>,
    store: Arc<dyn KvStore>,
    last_positions: Mutex<HashMap<OwnedRoomId, u64>>,
}

impl Receipts {
    pub fn new(
        store: &Arc<dyn KvStore>,
        events: Arc<Events>,
        members: Arc<Memberships>,
        account_data: Arc<AccountData>,
        stream: Arc<Stream>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            receipts: RECEIPTS.open(store),
            changes: RECEIPT_CHANGES.open(store),
            events,
            members,
            account_data,
            stream,
            clock,
            store: Arc::clone(store),
            last_positions: Mutex::new(HashMap::new()),
        }
    }

    /// Record that `user_id` read up to `event_id`. A receipt never moves backwards: one for
    /// an event older than the user's current one (same type and thread) is accepted and
    /// ignored, as Synapse does.
    pub fn set(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        receipt_type: &str,
        event_id: &EventId,
        thread_id: Option<&str>,
    ) -> Result<()> {
        if receipt_type != READ && receipt_type != READ_PRIVATE {
            return Err(Error::invalid_param(format!("Unsupported receipt type {receipt_type}")));
        }
        if let Some(thread) = thread_id
            && (thread.is_empty() || (thread != "main" && EventId::parse(thread).is_err()))
        {
            return Err(Error::invalid_param("thread_id must be \"main\" or an event ID"));
        }
        if !self.members.is_joined(room_id, user_id)? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        let event = self
            .events
            .get(event_id)?
            .filter(|e| e.pdu.room_id == room_id)
            .ok_or_else(|| Error::not_found("Unknown event in this room"))?;
        let key = (
            room_id.to_owned(),
            user_id.to_owned(),
            receipt_type.to_owned(),
            thread_id.unwrap_or(UNTHREADED).to_owned(),
        );
        // Read, check and write in one transaction: of two receipts racing (two devices),
        // the one that commits second sees the first and never moves the receipt back, and
        // each change row it replaces is the one really stored.
        let mut reservation = None;
        let written = transaction::<_, crate::Error>(self.store.as_ref(), Durability::Synced, |tx| {
            let previous = self.receipts.get_in(tx, &key)?;
            if previous.as_ref().is_some_and(|current| current.event_stream >= event.stream) {
                return Ok((None, false));
            }
            let reserved = self.stream.reserve()?;
            let position = reserved.position;
            let record = ReceiptRecord {
                event_id: event_id.to_owned(),
                ts: self.clock.now_ms(),
                stream: position,
                event_stream: event.stream,
            };
            if let Some(previous) = previous {
                self.changes.delete_in(tx, &(room_id.to_owned(), previous.stream));
            }
            self.receipts.put_in(tx, &key, &record)?;
            let change =
                ReceiptChange { user_id: key.1.clone(), receipt_type: key.2.clone(), thread: key.3.clone() };
            self.changes.put_in(tx, &(room_id.to_owned(), position), &change)?;
            // A run that conflicts drops its position here (a hole readers skip).
            reservation = Some(reserved);
            Ok((Some(position), true))
        })?;
        let Some(position) = written else { return Ok(()) };
        {
            let mut last = self.lock_last();
            let entry = last.entry(room_id.to_owned()).or_insert(0);
            *entry = (*entry).max(position);
        }
        if let Some(reservation) = reservation {
            reservation.announce([Change::Room(room_id.to_owned())]);
        }
        Ok(())
    }

    /// Move the user's fully-read marker (room account data `m.fully_read`) to an event of
    /// the room.
    pub fn set_fully_read(&self, user_id: &UserId, room_id: &RoomId, event_id: &EventId) -> Result<()> {
        if !self.members.is_joined(room_id, user_id)? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        if self.events.get(event_id)?.is_none_or(|e| e.pdu.room_id != room_id) {
            return Err(Error::not_found("Unknown event in this room"));
        }
        let content = serde_json::value::to_raw_value(&json!({ "event_id": event_id }))
            .map_err(|e| Error::internal(format!("serialising marker: {e}")))?;
        self.account_data.set(user_id, Some(room_id), FULLY_READ, content)?;
        Ok(())
    }

    /// Queue the removal of a purged room's receipts and receipt feed.
    pub fn purge_room_in(&self, batch: &mut WriteBatch, room_id: &RoomId) -> Result<()> {
        let room = room_id.to_owned();
        self.receipts.delete_prefix(batch, &room)?;
        self.changes.delete_prefix(batch, &room)?;
        Ok(())
    }

    /// A purge was committed: forget the room's receipt position.
    pub fn purged(&self, room_id: &RoomId) {
        self.lock_last().remove(room_id);
    }

    /// The position of the room's latest receipt change, 0 if none.
    pub fn last_position(&self, room_id: &RoomId) -> Result<u64> {
        if let Some(known) = self.lock_last().get(room_id) {
            return Ok(*known);
        }
        let room = room_id.to_owned();
        let last = match self.changes.scan(KeyRange::prefix(room.to_key_bytes()), Direction::Reverse)?.next()
        {
            Some(row) => row?.0.1,
            None => 0,
        };
        let mut known = self.lock_last();
        let entry = known.entry(room).or_insert(last);
        *entry = (*entry).max(last);
        Ok(*entry)
    }

    /// Receipts in the room changed after `since` up to `upto` (all when `since` is None),
    /// as `viewer` may see them: private receipts only their own.
    pub fn changed(
        &self,
        viewer: &UserId,
        room_id: &RoomId,
        since: Option<u64>,
        upto: u64,
    ) -> Result<Vec<Receipt>> {
        let room = room_id.to_owned();
        let mut range = KeyRange::prefix(room.to_key_bytes()).up_to((room.clone(), upto).to_key_bytes());
        if let Some(since) = since {
            range = range.after((room.clone(), since).to_key_bytes());
        }
        let mut found = Vec::new();
        for row in self.changes.scan(range, Direction::Forward)? {
            let (_, change) = row?;
            if change.receipt_type == READ_PRIVATE && change.user_id != viewer {
                continue;
            }
            let key =
                (room.clone(), change.user_id.clone(), change.receipt_type.clone(), change.thread.clone());
            let Some(record) = self.receipts.get(&key)? else { continue };
            found.push(to_receipt(key, record));
        }
        Ok(found)
    }

    /// The user's receipts in a room (every type and thread).
    pub fn of_user(&self, room_id: &RoomId, user_id: &UserId) -> Result<Vec<Receipt>> {
        let prefix = (room_id.to_owned(), user_id.to_owned());
        self.receipts
            .scan_prefix(&prefix, Direction::Forward)?
            .map(|row| {
                let (key, record) = row?;
                Ok(to_receipt(key, record))
            })
            .collect()
    }

    /// Another process sharing the database wrote to `room` (`None`: anywhere): forget the
    /// receipt position kept for it.
    pub fn changed_elsewhere(&self, room_id: Option<&RoomId>) {
        match room_id {
            Some(room_id) => {
                self.lock_last().remove(room_id);
            }
            None => self.lock_last().clear(),
        }
    }

    fn lock_last(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedRoomId, u64>> {
        self.last_positions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn to_receipt(key: (OwnedRoomId, OwnedUserId, String, String), record: ReceiptRecord) -> Receipt {
    let (_, user_id, receipt_type, thread) = key;
    Receipt {
        user_id,
        receipt_type,
        thread_id: (thread != UNTHREADED).then_some(thread),
        event_id: record.event_id,
        ts: record.ts,
        event_stream: record.event_stream,
    }
}

/// The `m.receipt` ephemeral event content for a set of receipts:
/// `{event_id: {receipt_type: {user_id: {ts, thread_id?}}}}`.
pub fn receipt_content(receipts: &[Receipt]) -> JsonValue {
    let mut content: BTreeMap<&str, BTreeMap<&str, serde_json::Map<String, JsonValue>>> = BTreeMap::new();
    for receipt in receipts {
        let mut body = json!({ "ts": receipt.ts });
        if let Some(thread) = &receipt.thread_id {
            body["thread_id"] = thread.as_str().into();
        }
        content
            .entry(receipt.event_id.as_str())
            .or_default()
            .entry(receipt.receipt_type.as_str())
            .or_default()
            .insert(receipt.user_id.to_string(), body);
    }
    json!(content)
}
