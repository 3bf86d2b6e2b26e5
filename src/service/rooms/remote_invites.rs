//! `RemoteInvites`: invites of local users to rooms this server does not have, and their
//! knocks on such rooms (table `remote_invites`). Another server's user invites ours with
//! `PUT /invite`, or ours knocks through a resident server (`make_knock`/`send_knock`);
//! until our user joins, nothing of the room is here but the invite or knock and the
//! stripped state the other server sent, so neither can live in the membership indexes,
//! which belong to rooms the engine holds. An invite arriving after a knock replaces it. `/sync` and sliding sync read these rows beside the memberships; joining through
//! the inviting server removes the row (the room's own membership rows take over), and a
//! rejection or retraction made through that server (`make_leave`/`send_leave`) turns it into a `leave`
//! row that sync shows once as a left room. Each change takes a stream position and is
//! announced to the user, so a waiting sync wakes.

use std::sync::Arc;

use ruma::{
    EventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, ServerName, UserId,
    events::AnyStrippedStateEvent, serde::Raw,
};
use serde_json::{Value as JsonValue, json, value::RawValue as RawJsonValue};

use crate::{
    Result,
    service::stream::{Change, Stream},
    storage::{
        Direction, KvStore, Table, WriteBatch,
        tables::{REMOTE_INVITES, RemoteInviteRecord},
    },
};

pub struct RemoteInvites {
    store: Arc<dyn KvStore>,
    stream: Arc<Stream>,
    invites: Table<(ruma::OwnedUserId, OwnedRoomId), RemoteInviteRecord>,
}

impl RemoteInvites {
    pub fn new(store: &Arc<dyn KvStore>, stream: Arc<Stream>) -> Self {
        Self { store: Arc::clone(store), stream, invites: REMOTE_INVITES.open(store) }
    }

    /// Record an invite of `user_id` to `room_id` received from `via`, or their knock on it
    /// made through `via` (`membership`: `invite` or `knock`), with the room's stripped
    /// state that server sent (a repeat, or an invite after a knock, replaces the earlier
    /// row), and announce it to the user.
    #[allow(clippy::too_many_arguments)]
    pub fn arrived(
        &self,
        membership: &str,
        user_id: &UserId,
        room_id: &RoomId,
        room_version: &RoomVersionId,
        via: &ServerName,
        event_id: &EventId,
        event: Box<RawJsonValue>,
        invite_state: Vec<Box<RawJsonValue>>,
    ) -> Result<u64> {
        let record = RemoteInviteRecord {
            membership: membership.to_owned(),
            stream: 0,
            room_version: room_version.clone(),
            via: via.to_string(),
            event_id: event_id.to_owned(),
            event,
            invite_state,
        };
        self.write(user_id, room_id, record)
    }

    /// The invite was rejected (or the knock retracted) through its server with `leave` (the
    /// leave event).
    pub fn rejected(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        leave_id: &EventId,
        leave: Box<RawJsonValue>,
    ) -> Result<u64> {
        let Some(mut record) = self.get(user_id, room_id)? else {
            return Err(crate::Error::not_found(format!("No invite to {room_id}")));
        };
        record.membership = "leave".to_owned();
        record.event_id = leave_id.to_owned();
        record.event = leave;
        self.write(user_id, room_id, record)
    }

    fn write(&self, user_id: &UserId, room_id: &RoomId, mut record: RemoteInviteRecord) -> Result<u64> {
        let reservation = self.stream.reserve()?;
        let position = reservation.position;
        record.stream = position;
        let mut batch = WriteBatch::new();
        self.invites.put(&mut batch, &(user_id.to_owned(), room_id.to_owned()), &record)?;
        self.store.write(batch)?;
        reservation.announce([Change::User(user_id.to_owned())]);
        Ok(position)
    }

    /// The user's row for a room, if any.
    pub fn get(&self, user_id: &UserId, room_id: &RoomId) -> Result<Option<RemoteInviteRecord>> {
        Ok(self.invites.get(&(user_id.to_owned(), room_id.to_owned()))?)
    }

    /// The user's pending invite to a room, if any.
    pub fn pending(&self, user_id: &UserId, room_id: &RoomId) -> Result<Option<RemoteInviteRecord>> {
        Ok(self.get(user_id, room_id)?.filter(|r| r.membership == "invite"))
    }

    /// The user's pending invite to, or knock on, a room, if any.
    pub fn outstanding(&self, user_id: &UserId, room_id: &RoomId) -> Result<Option<RemoteInviteRecord>> {
        Ok(self.get(user_id, room_id)?.filter(|r| matches!(r.membership.as_str(), "invite" | "knock")))
    }

    /// Every row of the user, by room.
    pub fn of_user(&self, user_id: &UserId) -> Result<Vec<(OwnedRoomId, RemoteInviteRecord)>> {
        let mut rows = Vec::new();
        for row in self.invites.scan_prefix(&user_id.to_owned(), Direction::Forward)? {
            let ((_, room_id), record) = row?;
            rows.push((room_id, record));
        }
        Ok(rows)
    }

    /// What an invitee's sync shows of a pending invite: the stripped state its server sent
    /// and the invite itself (stripped), and who sent it.
    pub fn invite_state(
        &self,
        record: &RemoteInviteRecord,
    ) -> Result<(Vec<Raw<AnyStrippedStateEvent>>, Option<OwnedUserId>)> {
        let event: JsonValue = serde_json::from_str(record.event.get())
            .map_err(|e| crate::Error::internal(format!("remote invite: {e}")))?;
        let sender = event["sender"].as_str().and_then(|s| UserId::parse(s).ok());
        let mut state: Vec<Raw<AnyStrippedStateEvent>> =
            record.invite_state.iter().map(|e| Raw::from_json(e.clone())).collect();
        let own = json!({
            "type": event["type"],
            "state_key": event["state_key"],
            "sender": event["sender"],
            "content": event["content"],
        });
        let own = serde_json::value::to_raw_value(&own)
            .map_err(|e| crate::Error::internal(format!("remote invite: {e}")))?;
        state.push(Raw::from_json(own));
        Ok((state, sender))
    }

    /// Remove the user's row (joined the room, or forgot it).
    pub fn remove(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        Ok(self.invites.remove(&(user_id.to_owned(), room_id.to_owned()))?)
    }
}
