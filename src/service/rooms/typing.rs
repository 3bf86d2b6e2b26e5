//! Who is typing in each room. Typing is ephemeral, so it lives in memory; each change
//! still takes a stream position so syncs see it in order, and an expiry timer ends a
//! notification the client never cancelled.
//!
//! With other processes on the database (`multi_process`), a room's typing set is also
//! written to the `typing` table under the change's position, and a room another process
//! changed is forgotten here and read back from the table when next asked for: a user
//! typing through one process is shown to a room mate syncing through another. Owns the
//! `typing` table.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::time::Instant;

use super::members::Memberships;
use crate::{
    Error, Result,
    service::stream::{Change, Stream},
    storage::{
        KvStore, Table,
        tables::{TYPING, TypingRecord},
    },
};

/// Longest a typing notification may last without being renewed.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    /// Typing users and when their notification expires.
    users: HashMap<OwnedUserId, Instant>,
    /// Stream position of the last change.
    position: u64,
}

pub struct Typing {
    inner: Arc<Inner>,
    members: Arc<Memberships>,
}

struct Inner {
    rooms: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    /// Held weakly: an expiry timer must not keep the stream (and with it the database)
    /// open after the server stops.
    stream: Weak<Stream>,
    /// With other processes: the rooms' typing sets as written by any of them.
    shared: Option<Table<OwnedRoomId, TypingRecord>>,
}

impl Typing {
    /// `shared`: the store, when other processes share it.
    pub fn new(members: Arc<Memberships>, stream: &Arc<Stream>, shared: Option<&Arc<dyn KvStore>>) -> Self {
        let inner = Inner {
            rooms: Mutex::default(),
            stream: Arc::downgrade(stream),
            shared: shared.map(|store| TYPING.open(store)),
        };
        Self { inner: Arc::new(inner), members }
    }

    /// Start (with a timeout) or stop the user's typing notification in the room.
    pub fn set(&self, user_id: &UserId, room_id: &RoomId, timeout: Option<Duration>) -> Result<()> {
        if !self.members.is_joined(room_id, user_id)? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        let inner = &self.inner;
        match timeout {
            Some(timeout) => {
                let timeout = timeout.min(MAX_TIMEOUT);
                let deadline = Instant::now() + timeout;
                let was_typing = inner
                    .update(room_id, |room| room.users.insert(user_id.to_owned(), deadline).is_some())?;
                if !was_typing {
                    inner.record_change(room_id)?;
                }
                let timer = Arc::downgrade(inner);
                let room_id = room_id.to_owned();
                tokio::spawn(async move {
                    tokio::time::sleep_until(deadline).await;
                    let Some(inner) = timer.upgrade() else { return };
                    if let Err(error) = inner.expire(&room_id) {
                        // Storage is failing; the next change retries.
                        tracing::warn!(%error, "typing expiry not recorded");
                    }
                });
            }
            None => {
                if inner.update(room_id, |room| room.users.remove(user_id).is_some())? {
                    inner.record_change(room_id)?;
                }
            }
        }
        Ok(())
    }

    /// The position of the room's last typing change (0 if none since start).
    pub fn last_position(&self, room_id: &RoomId) -> u64 {
        self.inner.read(room_id, |room| room.position).unwrap_or_else(|e| {
            tracing::warn!(%room_id, error = %e, "reading the room's typing failed");
            0
        })
    }

    /// Users typing in the room now, sorted.
    pub fn typing_users(&self, room_id: &RoomId) -> Vec<OwnedUserId> {
        let now = Instant::now();
        let mut users: Vec<OwnedUserId> = self
            .inner
            .read(room_id, |room| {
                room.users.iter().filter(|(_, until)| **until > now).map(|(u, _)| u.clone()).collect()
            })
            .unwrap_or_else(|e| {
                tracing::warn!(%room_id, error = %e, "reading the room's typing failed");
                Vec::new()
            });
        users.sort();
        users
    }

    /// Another process changed the room's typing (`None`: perhaps any room's): what is held
    /// here is read again from the table when next asked for.
    pub fn changed_elsewhere(&self, room_id: Option<&RoomId>) {
        if self.inner.shared.is_none() {
            return;
        }
        let mut rooms = self.inner.lock();
        match room_id {
            Some(room_id) => {
                rooms.remove(room_id);
            }
            None => rooms.clear(),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<OwnedRoomId, RoomTyping>> {
        self.rooms.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The room's typing set as the table has it (another process may have written it).
    fn load(&self, room_id: &RoomId) -> Result<Option<RoomTyping>> {
        let Some(table) = &self.shared else { return Ok(None) };
        let Some(record) = table.get(&room_id.to_owned())? else { return Ok(None) };
        let (now, wall) = (Instant::now(), unix_ms());
        let users = record
            .users
            .into_iter()
            .filter(|(_, until)| *until > wall)
            .map(|(user, until)| (user, now + Duration::from_millis(until - wall)))
            .collect();
        Ok(Some(RoomTyping { users, position: record.position }))
    }

    /// Run `f` on the room's typing set, loaded first if another process changed it.
    fn read<T>(&self, room_id: &RoomId, f: impl FnOnce(&RoomTyping) -> T) -> Result<T> {
        if let Some(room) = self.lock().get(room_id) {
            return Ok(f(room));
        }
        match self.load(room_id)? {
            Some(loaded) => {
                let mut rooms = self.lock();
                Ok(f(rooms.entry(room_id.to_owned()).or_insert(loaded)))
            }
            None => Ok(f(&RoomTyping::default())),
        }
    }

    fn update<T>(&self, room_id: &RoomId, f: impl FnOnce(&mut RoomTyping) -> T) -> Result<T> {
        let loaded = if self.lock().contains_key(room_id) { None } else { self.load(room_id)? };
        let mut rooms = self.lock();
        let room = rooms.entry(room_id.to_owned()).or_insert_with(|| loaded.unwrap_or_default());
        Ok(f(room))
    }

    /// End the notifications past their deadline; a change if any ended.
    fn expire(&self, room_id: &RoomId) -> Result<()> {
        let now = Instant::now();
        let expired = self.update(room_id, |room| {
            let before = room.users.len();
            room.users.retain(|_, until| *until > now);
            room.users.len() != before
        })?;
        if expired { self.record_change(room_id) } else { Ok(()) }
    }

    /// Give the room's typing set a new stream position (written to the table with other
    /// processes) and wake the room's syncs.
    fn record_change(&self, room_id: &RoomId) -> Result<()> {
        let Some(stream) = self.stream.upgrade() else { return Ok(()) };
        let reservation = stream.reserve()?;
        let position = reservation.position;
        let record = self.update(room_id, |room| {
            room.position = position;
            let (now, wall) = (Instant::now(), unix_ms());
            let users = room
                .users
                .iter()
                .filter(|(_, until)| **until > now)
                .map(|(user, until)| (user.clone(), wall + duration_ms(until.saturating_duration_since(now))))
                .collect();
            TypingRecord { position, users }
        })?;
        if let Some(table) = &self.shared {
            table.insert(&room_id.to_owned(), &record)?;
        }
        reservation.announce([Change::Room(room_id.to_owned())]);
        Ok(())
    }
}

fn unix_ms() -> u64 {
    duration_ms(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
