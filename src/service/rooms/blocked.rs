//! Rooms a server admin blocked: local users may not join them, be invited to them or knock
//! on them (leaving and bans still work). Owns the `blocked_rooms` table.

use std::sync::Arc;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

use crate::{
    Error, Result,
    service::clock::Clock,
    storage::{
        KvStore, Table,
        tables::{BLOCKED_ROOMS, BlockedRoomRecord},
    },
};

pub struct BlockedRooms {
    blocked: Table<OwnedRoomId, BlockedRoomRecord>,
    clock: Arc<dyn Clock>,
}

impl BlockedRooms {
    pub fn new(store: &Arc<dyn KvStore>, clock: Arc<dyn Clock>) -> Self {
        Self { blocked: BLOCKED_ROOMS.open(store), clock }
    }

    /// Who blocked the room, if it is blocked.
    pub fn blocked_by(&self, room_id: &RoomId) -> Result<Option<OwnedUserId>> {
        Ok(self.blocked.get(&room_id.to_owned())?.map(|r| r.user_id))
    }

    /// Block or unblock a room (it need not be known here: a room can be blocked before
    /// anyone tries to join it).
    pub fn set(&self, admin: &UserId, room_id: &RoomId, block: bool) -> Result<()> {
        let key = room_id.to_owned();
        if block {
            if !self.blocked.contains(&key)? {
                let record = BlockedRoomRecord { user_id: admin.to_owned(), blocked_ms: self.clock.now_ms() };
                self.blocked.insert(&key, &record)?;
            }
        } else {
            self.blocked.remove(&key)?;
        }
        Ok(())
    }

    /// `M_FORBIDDEN` for a blocked room, as Synapse answers a join, invite or knock.
    pub fn ensure_not_blocked(&self, room_id: &RoomId) -> Result<()> {
        if self.blocked.contains(&room_id.to_owned())? {
            return Err(Error::forbidden("This room has been blocked on this server"));
        }
        Ok(())
    }
}
