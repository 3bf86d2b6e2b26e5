//! Per-user account data, global and per room (tags, `m.fully_read`, ignored users, direct
//! chats, push rules...), with a change feed so sync sends only what changed.
//! Owns the `account_data` and `account_data_changes` tables.
//!
//! What one user stores is bounded ([`MAX_BYTES_PER_USER`]), because an initial sync sends
//! all of it in one response; and what cannot be read back safely (stored by an older
//! version without the nesting limit) is left out of syncs with a log line rather than
//! failing them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Value as JsonValue, value::RawValue as RawJsonValue};

use crate::{
    Error, Result,
    matrix::limits::{self, MAX_EVENT_TYPE_BYTES, MAX_JSON_DEPTH, MAX_TAG_BYTES},
    service::stream::{Change, Stale, Stream},
    storage::{
        Direction, Durability, KvStore, Table, WriteBatch,
        codec::KeyCodec,
        kv::KeyRange,
        tables::{ACCOUNT_DATA, ACCOUNT_DATA_CHANGES, AccountDataChange, AccountDataRecord},
    },
};

/// Room account data holding a room's tags.
pub const TAGS: &str = "m.tag";

/// The room key of global account data (room IDs are never empty).
const GLOBAL: &str = "";

/// The most content one user may keep in account data, global and per room together, in
/// bytes. An initial sync carries all of it in one response, so without a bound one user
/// could make the server hold gigabytes for a single request. Synapse sets none; real
/// clients stay far below (a large `m.direct` is tens of kilobytes).
pub const MAX_BYTES_PER_USER: u64 = 16 * 1024 * 1024;

/// One piece of account data: where it lives, its type and content.
#[derive(Clone, Debug)]
pub struct AccountDataEntry {
    pub room_id: Option<OwnedRoomId>,
    pub kind: String,
    pub content: Box<RawJsonValue>,
}

impl AccountDataEntry {
    /// The entry as a sync response's event, its content written out as stored. `json!`
    /// would re-parse the content into a `Value` and panic (it unwraps) on content serde_json
    /// refuses to read, such as content nested 128 deep that older versions stored.
    pub fn sync_event<T>(&self) -> Result<ruma::serde::Raw<T>> {
        #[derive(serde::Serialize)]
        struct Event<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            content: &'a RawJsonValue,
        }
        let raw = serde_json::value::to_raw_value(&Event { kind: &self.kind, content: &self.content })
            .map_err(|e| Error::internal(format!("serialising account data: {e}")))?;
        Ok(ruma::serde::Raw::from_json(raw))
    }
}

pub struct AccountData {
    data: Table<(OwnedUserId, String, String), AccountDataRecord>,
    changes: Table<(OwnedUserId, u64), AccountDataChange>,
    stream: Arc<Stream>,
    store: Arc<dyn KvStore>,
    /// Serialises read-modify-write changes (tags), so concurrent ones do not lose each other.
    modify: std::sync::Mutex<()>,
    /// Bytes of content each user keeps, counted from the table the first time it is needed
    /// and kept current by every write here.
    usage: Mutex<HashMap<OwnedUserId, u64>>,
    /// Whether `usage` may be kept between writes: not when other processes share the
    /// database (their writes do not pass here), where it is counted at each write.
    keep_usage: bool,
}

fn room_key(room_id: Option<&RoomId>) -> String {
    room_id.map_or_else(|| GLOBAL.to_owned(), |r| r.as_str().to_owned())
}

impl AccountData {
    pub fn new(store: &Arc<dyn KvStore>, stream: Arc<Stream>) -> Self {
        Self {
            data: ACCOUNT_DATA.open(store),
            changes: ACCOUNT_DATA_CHANGES.open(store),
            stream,
            store: Arc::clone(store),
            modify: std::sync::Mutex::new(()),
            usage: Mutex::new(HashMap::new()),
            keep_usage: store.member().is_none(),
        }
    }

    /// The content stored for `kind`, globally (`room_id` None) or for one room.
    pub fn get(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
    ) -> Result<Option<Box<RawJsonValue>>> {
        let key = (user_id.to_owned(), room_key(room_id), kind.to_owned());
        Ok(self.data.get(&key)?.map(|record| record.content))
    }

    /// The content parsed as `T`; content that does not parse counts as absent, because
    /// clients may store anything under any type.
    pub fn get_as<T: serde::de::DeserializeOwned>(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
    ) -> Result<Option<T>> {
        Ok(self.get(user_id, room_id, kind)?.and_then(|raw| serde_json::from_str(raw.get()).ok()))
    }

    /// Store (replace) a piece of account data the server manages (push rules, the
    /// fully-read marker) and announce it to the user's syncs. It counts towards the user's
    /// bound but is never refused by it: the client did not choose its size.
    pub fn set(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
        content: Box<RawJsonValue>,
    ) -> Result<u64> {
        self.write(user_id, room_id, kind, content, false)
    }

    fn write(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
        content: Box<RawJsonValue>,
        bounded: bool,
    ) -> Result<u64> {
        if !content.get().trim_start().starts_with('{') {
            return Err(Error::bad_json("Account data content must be a JSON object"));
        }
        let key = (user_id.to_owned(), room_key(room_id), kind.to_owned());
        let previous = self.data.get(&key)?;
        let old_size = previous.as_ref().map_or(0, |p| p.content.get().len() as u64);
        let new_size = content.get().len() as u64;
        {
            let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
            let total = self.usage_of(&mut usage, user_id)?;
            let after = total.saturating_sub(old_size).saturating_add(new_size);
            if bounded && new_size > old_size && after > MAX_BYTES_PER_USER {
                return Err(Error::too_large(format!(
                    "Account data is limited to {MAX_BYTES_PER_USER} bytes per user"
                )));
            }
            *total = after;
        }
        let written = self.commit(user_id, key, content);
        if written.is_err() {
            // Counted again from the table next time.
            self.usage.lock().unwrap_or_else(|p| p.into_inner()).remove(user_id);
        }
        written
    }

    /// Write `content` under `key` with a new position, replacing the previous change row.
    /// The read of the previous record and the write are one transaction, so two writes
    /// racing on one key leave one change row (the later one's), never a stale duplicate.
    fn commit(
        &self,
        user_id: &UserId,
        key: (OwnedUserId, String, String),
        content: Box<RawJsonValue>,
    ) -> Result<u64> {
        let mut reservation = None;
        let position =
            crate::storage::transaction::<_, crate::Error>(self.store.as_ref(), Durability::Synced, |tx| {
                let previous = self.data.get_in(tx, &key)?;
                let reserved = self.stream.reserve()?;
                let position = reserved.position;
                if let Some(previous) = previous {
                    // The feed keeps one row per piece of data: its latest change.
                    self.changes.delete_in(tx, &(user_id.to_owned(), previous.stream));
                }
                self.data.put_in(
                    tx,
                    &key,
                    &AccountDataRecord { content: content.clone(), stream: position },
                )?;
                let change = AccountDataChange { room: key.1.clone(), kind: key.2.clone() };
                self.changes.put_in(tx, &(user_id.to_owned(), position), &change)?;
                reservation = Some(reserved);
                Ok((position, true))
            })?;
        // Other processes forget what they derived from it (push rules) before the
        // position is released.
        self.stream.stale_elsewhere(Stale::AccountData(user_id.to_owned(), key.2.clone()));
        if let Some(reservation) = reservation {
            reservation.announce([Change::User(user_id.to_owned())]);
        }
        Ok(position)
    }

    /// Delete every piece of the user's account data (global and per room, push rules and
    /// tags included), as deactivation does on Synapse. Nothing is announced: the account
    /// has no device left to sync.
    pub fn remove_all(&self, user_id: &UserId) -> Result<()> {
        let _modifying = self.modify.lock().unwrap_or_else(|p| p.into_inner());
        let user = user_id.to_owned();
        let mut batch = WriteBatch::new();
        self.data.delete_prefix(&mut batch, &user)?;
        self.changes.delete_prefix(&mut batch, &user)?;
        self.store.write(batch)?;
        self.usage.lock().unwrap_or_else(|p| p.into_inner()).remove(user_id);
        Ok(())
    }

    /// Store account data a client sent. Types the server manages through their own
    /// endpoints are refused, as Synapse does.
    pub fn set_by_client(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        kind: &str,
        content: Box<RawJsonValue>,
    ) -> Result<()> {
        // The type goes out as an event's `type`, which the spec limits.
        limits::check_len(kind, MAX_EVENT_TYPE_BYTES, "The account data type")
            .map_err(Error::invalid_param)?;
        match (room_id, kind) {
            (None, "m.push_rules") => Err(Error::bad_json("Push rules are changed through /pushrules")),
            (Some(_), "m.fully_read") => {
                Err(Error::bad_json("The fully-read marker is set through /read_markers"))
            }
            _ => self.write(user_id, room_id, kind, content, true).map(drop),
        }
    }

    /// Change a room's tags (`m.tag`): add or replace one (`info` Some) or remove it.
    pub fn set_tag(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        tag: &str,
        info: Option<JsonValue>,
    ) -> Result<()> {
        if info.is_some() {
            // Removing stays possible for tags stored before the limit.
            limits::check_len(tag, MAX_TAG_BYTES, "The tag").map_err(Error::invalid_param)?;
        }
        let _modifying = self.modify.lock().unwrap_or_else(|p| p.into_inner());
        let mut tags = self.tags(user_id, room_id)?;
        match info {
            Some(info) => {
                if !info.is_object() {
                    return Err(Error::bad_json("Tag info must be an object"));
                }
                if info.get("order").is_some_and(|o| !o.is_number()) {
                    return Err(Error::bad_json("Tag order must be a number"));
                }
                tags.insert(tag.to_owned(), info);
            }
            None => {
                tags.remove(tag);
            }
        }
        let content = serde_json::value::to_raw_value(&serde_json::json!({ "tags": tags }))
            .map_err(|e| Error::internal(format!("serialising tags: {e}")))?;
        self.write(user_id, Some(room_id), TAGS, content, true).map(drop)
    }

    /// A room's tags for the user, by name.
    pub fn tags(&self, user_id: &UserId, room_id: &RoomId) -> Result<serde_json::Map<String, JsonValue>> {
        let content: Option<JsonValue> = self.get_as(user_id, Some(room_id), TAGS)?;
        Ok(content.and_then(|c| c.get("tags").and_then(JsonValue::as_object).cloned()).unwrap_or_default())
    }

    /// The bytes of content the user keeps, counted from the table on first use.
    fn usage_of<'u>(
        &self,
        usage: &'u mut HashMap<OwnedUserId, u64>,
        user_id: &UserId,
    ) -> Result<&'u mut u64> {
        if !self.keep_usage || !usage.contains_key(user_id) {
            let mut total = 0u64;
            for row in self.data.scan_prefix(&user_id.to_owned(), Direction::Forward)? {
                total = total.saturating_add(row?.1.content.get().len() as u64);
            }
            usage.insert(user_id.to_owned(), total);
        }
        Ok(usage.entry(user_id.to_owned()).or_default())
    }

    /// Queue the removal of what `users` keep for a purged room (tags, read markers, any
    /// room account data). Their change feeds may still name it; sync skips what is gone.
    pub fn purge_room_in(
        &self,
        batch: &mut WriteBatch,
        room_id: &RoomId,
        users: &[OwnedUserId],
    ) -> Result<()> {
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        for user_id in users {
            self.data.delete_prefix(batch, &(user_id.clone(), room_key(Some(room_id))))?;
            // Counted again from the table when next needed.
            usage.remove(user_id);
        }
        Ok(())
    }

    /// Account data changed after `since` up to `upto` (inclusive), each with its latest
    /// content; every piece when `since` is None.
    pub fn changes(&self, user_id: &UserId, since: Option<u64>, upto: u64) -> Result<Vec<AccountDataEntry>> {
        let user = user_id.to_owned();
        let mut range = KeyRange::prefix(user.to_key_bytes()).up_to((user.clone(), upto).to_key_bytes());
        if let Some(since) = since {
            range = range.after((user.clone(), since).to_key_bytes());
        }
        let mut entries = Vec::new();
        for row in self.changes.scan(range, Direction::Forward)? {
            let (_, change) = row?;
            let key = (user.clone(), change.room.clone(), change.kind.clone());
            let Some(record) = self.data.get(&key)? else { continue };
            if limits::json_too_deep(record.content.get().as_bytes(), MAX_JSON_DEPTH) {
                // Stored before the nesting limit; clients that parse it would fail as this
                // server once did. Still readable on its own through GET account_data.
                tracing::warn!(
                    %user_id, room = %change.room, kind = %change.kind,
                    "account data nested more than {MAX_JSON_DEPTH} levels deep left out of sync"
                );
                continue;
            }
            let room_id = if change.room == GLOBAL {
                None
            } else {
                Some(
                    RoomId::parse(&change.room)
                        .map_err(|e| Error::internal(format!("stored room id: {e}")))?,
                )
            };
            entries.push(AccountDataEntry { room_id, kind: change.kind, content: record.content });
        }
        Ok(entries)
    }
}
