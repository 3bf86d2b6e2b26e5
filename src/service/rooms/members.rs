//! Membership indexes: room → members and user → rooms, each row the latest membership.
//! Written in the same batch as the member event, so they never disagree with the state.
//! Owns the `room_members` and `user_rooms` tables.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, events::room::member::MembershipState};

use crate::{
    Result,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        tables::{MembershipRecord, ROOM_MEMBERS, USER_ROOMS},
    },
};

/// Who joined and who left a room within a range of stream positions.
#[derive(Default, Debug)]
pub struct MemberMoves {
    /// Members whose join (not a later profile change) falls in the range.
    pub joined: Vec<OwnedUserId>,
    /// Users who left or were kicked or banned in the range.
    pub left: Vec<OwnedUserId>,
}

/// One user's membership rows, by room.
pub type UserMemberships = Arc<[(OwnedRoomId, MembershipRecord)]>;

/// Users whose rows are kept in memory at most; past it the cache starts over.
const MAX_CACHED_USERS: usize = 10_000;

pub struct Memberships {
    room_members: Table<(OwnedRoomId, OwnedUserId), MembershipRecord>,
    user_rooms: Table<(OwnedUserId, OwnedRoomId), MembershipRecord>,
    store: Arc<dyn KvStore>,
    /// Users' rows as last read: every sync reads all of a user's rooms, and they change
    /// rarely. Dropped for a user once a change to their rows is committed.
    by_user: Mutex<UserCache>,
}

#[derive(Default)]
struct UserCache {
    rows: HashMap<OwnedUserId, UserMemberships>,
    /// Moves on every committed change: a read that began before a change does not fill
    /// the cache with what it read.
    generation: u64,
}

impl Memberships {
    pub fn new(store: &Arc<dyn KvStore>) -> Self {
        Self {
            room_members: ROOM_MEMBERS.open(store),
            user_rooms: USER_ROOMS.open(store),
            store: Arc::clone(store),
            by_user: Mutex::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, UserCache> {
        self.by_user.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes queued with [`Self::set_in`] for these users are committed: their rows are
    /// read afresh from now on.
    pub fn committed<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        let mut cache = self.cache();
        cache.generation += 1;
        for user_id in users {
            cache.rows.remove(user_id);
        }
    }

    /// Queue a membership change in both indexes.
    pub fn set_in(
        &self,
        batch: &mut WriteBatch,
        room_id: &RoomId,
        user_id: &UserId,
        record: &MembershipRecord,
    ) -> Result<()> {
        self.room_members.put(batch, &(room_id.to_owned(), user_id.to_owned()), record)?;
        self.user_rooms.put(batch, &(user_id.to_owned(), room_id.to_owned()), record)?;
        Ok(())
    }

    /// Queue the removal of a user's rows in both indexes (a resolved state in which they
    /// have no member event at all).
    pub fn remove_in(&self, batch: &mut WriteBatch, room_id: &RoomId, user_id: &UserId) {
        self.room_members.delete(batch, &(room_id.to_owned(), user_id.to_owned()));
        self.user_rooms.delete(batch, &(user_id.to_owned(), room_id.to_owned()));
    }

    /// The user's latest membership record in the room.
    pub fn get(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<MembershipRecord>> {
        Ok(self.user_rooms.get(&(user_id.to_owned(), room_id.to_owned()))?)
    }

    /// The user's current membership in the room.
    pub fn membership(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<MembershipState>> {
        Ok(self.get(room_id, user_id)?.map(|r| MembershipState::from(r.membership.as_str())))
    }

    pub fn is_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        Ok(self.membership(room_id, user_id)? == Some(MembershipState::Join))
    }

    /// Rooms in which the user's latest membership is `membership`.
    pub fn rooms_of_user(&self, user_id: &UserId, membership: &MembershipState) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .user_memberships(user_id)?
            .iter()
            .filter(|(_, record)| record.membership == membership.as_str())
            .map(|(room_id, _)| room_id.clone())
            .collect())
    }

    /// Every room the user has a membership row in, with that row.
    pub fn memberships_of_user(&self, user_id: &UserId) -> Result<Vec<(OwnedRoomId, MembershipRecord)>> {
        Ok(self.user_memberships(user_id)?.to_vec())
    }

    /// [`Self::memberships_of_user`] shared, without copying the rows.
    pub fn user_memberships(&self, user_id: &UserId) -> Result<UserMemberships> {
        let generation = {
            let cache = self.cache();
            if let Some(rows) = cache.rows.get(user_id) {
                return Ok(Arc::clone(rows));
            }
            cache.generation
        };
        let rows: UserMemberships = self
            .user_rooms
            .scan_prefix(&user_id.to_owned(), Direction::Forward)?
            .map(|row| {
                let ((_, room_id), record) = row?;
                Ok((room_id, record))
            })
            .collect::<Result<Vec<_>>>()?
            .into();
        let mut cache = self.cache();
        if cache.generation == generation {
            if cache.rows.len() >= MAX_CACHED_USERS {
                cache.rows.clear();
            }
            cache.rows.insert(user_id.to_owned(), Arc::clone(&rows));
        }
        Ok(rows)
    }

    /// Every user with a membership row in the room, and that row.
    pub fn members(&self, room_id: &RoomId) -> Result<Vec<(OwnedUserId, MembershipRecord)>> {
        self.room_members
            .scan_prefix(&room_id.to_owned(), Direction::Forward)?
            .map(|row| {
                let ((_, user_id), record) = row?;
                Ok((user_id, record))
            })
            .collect()
    }

    /// Users whose latest membership is `membership`.
    pub fn members_with(&self, room_id: &RoomId, membership: &MembershipState) -> Result<Vec<OwnedUserId>> {
        Ok(self
            .members(room_id)?
            .into_iter()
            .filter(|(_, r)| r.membership == membership.as_str())
            .map(|(u, _)| u)
            .collect())
    }

    /// Who joined and who left `room_id` after `since` up to `upto`, from the indexes (so a
    /// client's filter cannot hide a move, as it can hide the member events themselves).
    /// Only the latest move of each user counts: one who joined and left again left.
    pub fn moves(&self, room_id: &RoomId, since: u64, upto: u64) -> Result<MemberMoves> {
        let in_range = |position: u64| position > since && position <= upto;
        let mut moves = MemberMoves::default();
        for (user_id, record) in self.members(room_id)? {
            match record.membership.as_str() {
                "join" if record.joined_at.is_some_and(in_range) => moves.joined.push(user_id),
                "leave" | "ban" if in_range(record.stream) => moves.left.push(user_id),
                _ => {}
            }
        }
        Ok(moves)
    }

    /// Queue the removal of a purged room's membership rows, except the user-side rows of
    /// `keep` (local users who left, whose clients must still be told). Returns every user
    /// whose rows changed, to pass to [`Self::committed`] once written.
    pub fn purge_room_in(
        &self,
        batch: &mut WriteBatch,
        room_id: &RoomId,
        keep: &std::collections::HashSet<OwnedUserId>,
    ) -> Result<Vec<OwnedUserId>> {
        let members = self.members(room_id)?;
        self.room_members.delete_prefix(batch, &room_id.to_owned())?;
        for (user_id, _) in &members {
            if !keep.contains(user_id) {
                self.user_rooms.delete(batch, &(user_id.clone(), room_id.to_owned()));
            }
        }
        Ok(members.into_iter().map(|(user_id, _)| user_id).collect())
    }

    /// Remove the user's last row of a purged room (they forgot it).
    pub fn remove_user_row(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        self.user_rooms.remove(&(user_id.to_owned(), room_id.to_owned()))?;
        self.committed([user_id]);
        Ok(())
    }

    /// Mark the room forgotten for the user (only meaningful after they left).
    pub fn forget(&self, room_id: &RoomId, user_id: &UserId, mut record: MembershipRecord) -> Result<()> {
        record.forgotten = true;
        let mut batch = WriteBatch::new();
        self.set_in(&mut batch, room_id, user_id, &record)?;
        self.store.write(batch)?;
        self.committed([user_id]);
        Ok(())
    }
}
