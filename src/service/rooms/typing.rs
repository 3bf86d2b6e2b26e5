//! Who is typing in each room. Typing is ephemeral, so it lives in memory only; each change
//! still takes a stream position so syncs see it in order, and an expiry timer ends a
//! notification the client never cancelled.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::time::Instant;

use super::members::Memberships;
use crate::{
    Error, Result,
    service::stream::{Change, Stream},
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
    rooms: Arc<Mutex<HashMap<OwnedRoomId, RoomTyping>>>,
    members: Arc<Memberships>,
    stream: Arc<Stream>,
}

impl Typing {
    pub fn new(members: Arc<Memberships>, stream: Arc<Stream>) -> Self {
        Self { rooms: Arc::default(), members, stream }
    }

    /// Start (with a timeout) or stop the user's typing notification in the room.
    pub fn set(&self, user_id: &UserId, room_id: &RoomId, timeout: Option<Duration>) -> Result<()> {
        if !self.members.is_joined(room_id, user_id)? {
            return Err(Error::forbidden("You are not joined to this room"));
        }
        match timeout {
            Some(timeout) => {
                let timeout = timeout.min(MAX_TIMEOUT);
                let deadline = Instant::now() + timeout;
                let was_typing = update(&self.rooms, room_id, |room| {
                    room.users.insert(user_id.to_owned(), deadline).is_some()
                });
                if !was_typing {
                    self.changed(room_id)?;
                }
                let rooms = Arc::clone(&self.rooms);
                // Weak: a timer must not keep the stream (and with it the database) open
                // after the server stops.
                let stream = Arc::downgrade(&self.stream);
                let room_id = room_id.to_owned();
                tokio::spawn(async move {
                    tokio::time::sleep_until(deadline).await;
                    let Some(stream) = stream.upgrade() else { return };
                    let now = Instant::now();
                    let expired = update(&rooms, &room_id, |room| {
                        let before = room.users.len();
                        room.users.retain(|_, until| *until > now);
                        room.users.len() != before
                    });
                    if expired {
                        // A failure here means storage is failing; the next change retries.
                        if let Err(error) = record_change(&rooms, &stream, &room_id) {
                            tracing::warn!(%error, "typing expiry not recorded");
                        }
                    }
                });
            }
            None => {
                if update(&self.rooms, room_id, |room| room.users.remove(user_id).is_some()) {
                    self.changed(room_id)?;
                }
            }
        }
        Ok(())
    }

    fn changed(&self, room_id: &RoomId) -> Result<()> {
        record_change(&self.rooms, &self.stream, room_id)
    }

    /// The position of the room's last typing change (0 if none since start).
    pub fn last_position(&self, room_id: &RoomId) -> u64 {
        lock(&self.rooms).get(room_id).map_or(0, |room| room.position)
    }

    /// Users typing in the room now, sorted.
    pub fn typing_users(&self, room_id: &RoomId) -> Vec<OwnedUserId> {
        let now = Instant::now();
        let rooms = lock(&self.rooms);
        let mut users: Vec<_> = rooms
            .get(room_id)
            .map(|room| {
                room.users.iter().filter(|(_, until)| **until > now).map(|(u, _)| u.clone()).collect()
            })
            .unwrap_or_default();
        users.sort();
        users
    }
}

fn lock(
    rooms: &Mutex<HashMap<OwnedRoomId, RoomTyping>>,
) -> std::sync::MutexGuard<'_, HashMap<OwnedRoomId, RoomTyping>> {
    rooms.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn update<T>(
    rooms: &Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    room_id: &RoomId,
    f: impl FnOnce(&mut RoomTyping) -> T,
) -> T {
    f(lock(rooms).entry(room_id.to_owned()).or_default())
}

/// Give the room's typing set a new stream position and wake the room's syncs.
fn record_change(
    rooms: &Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    stream: &Stream,
    room_id: &RoomId,
) -> Result<()> {
    let reservation = stream.reserve()?;
    let position = reservation.position;
    update(rooms, room_id, |room| room.position = position);
    drop(reservation);
    stream.announce(position, [Change::Room(room_id.to_owned())]);
    Ok(())
}
