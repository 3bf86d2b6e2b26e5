//! Who may read what in a room: the one place that applies history visibility to events and
//! decides which room state a user may read. Every read path of rooms asks here.

use std::sync::Arc;

use ruma::{
    RoomId, UserId,
    events::{
        StateEventType, TimelineEventType,
        room::{history_visibility::HistoryVisibility, member::MembershipState},
    },
};

use super::{
    events::{Events, StoredEvent},
    members::Memberships,
    state::{RoomStates, StateMap},
};
use crate::{
    Error, Result,
    matrix::visibility::{self, VisibilityInput},
};

pub struct Visibility {
    events: Arc<Events>,
    states: Arc<RoomStates>,
    members: Arc<Memberships>,
}

impl Visibility {
    pub fn new(events: Arc<Events>, states: Arc<RoomStates>, members: Arc<Memberships>) -> Self {
        Self { events, states, members }
    }

    /// Whether `user_id` may see `event`, by the history visibility at the event.
    pub fn may_see_event(&self, user_id: &UserId, event: &StoredEvent) -> Result<bool> {
        let joined_now = self.members.is_joined(&event.pdu.room_id, user_id)?;
        self.may_see_with(user_id, event, joined_now)
    }

    fn may_see_with(&self, user_id: &UserId, event: &StoredEvent, joined_now: bool) -> Result<bool> {
        let pdu = &event.pdu;
        let own_membership_event =
            pdu.kind == TimelineEventType::RoomMember && pdu.state_key.as_deref() == Some(user_id.as_str());
        if pdu.kind == TimelineEventType::RoomCreate {
            // The create event has no state before it; it is as visible as the room's start.
            return Ok(joined_now || own_membership_event || self.world_readable_now(&pdu.room_id)?);
        }
        let state = self.states.state_of_group(event.state_before)?;
        let mut history_visibility = self.history_visibility_in(&state)?;
        if pdu.kind == TimelineEventType::RoomHistoryVisibility
            && let Ok(content) = pdu.content_as::<VisibilityContent>()
        {
            history_visibility = visibility::more_open(history_visibility, content.history_visibility);
        }
        let membership_at_event = self.membership_in(&state, user_id)?;
        Ok(visibility::may_see_event(&VisibilityInput {
            history_visibility,
            membership_at_event,
            joined_now,
            own_membership_event,
        }))
    }

    /// Whether `user_id` may see an event of `room_id` sent in the state group `state_before`,
    /// for an event with no rule of its own: not the create event, not a history visibility
    /// change and not the user's own membership. It is the answer `may_see_event` gives for
    /// such an event, without loading it, so a caller deciding about many events (search)
    /// can ask once per state group.
    pub fn may_see_plain_event_in(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        state_before: u64,
    ) -> Result<bool> {
        let joined_now = self.members.is_joined(room_id, user_id)?;
        let state = self.states.state_of_group(state_before)?;
        Ok(visibility::may_see_event(&VisibilityInput {
            history_visibility: self.history_visibility_in(&state)?,
            membership_at_event: self.membership_in(&state, user_id)?,
            joined_now,
            own_membership_event: false,
        }))
    }

    /// The state `user_id` may read: the current state for members and world-readable rooms,
    /// the state when they left for former members. Others get `M_FORBIDDEN`.
    pub fn readable_state(&self, user_id: &UserId, room_id: &RoomId) -> Result<Arc<StateMap>> {
        let forbidden = || Error::forbidden("You don't have permission to view this room");
        if self.states.room(room_id)?.is_none() {
            return Err(forbidden());
        }
        let record = self.members.get(room_id, user_id)?;
        let membership = record.as_ref().map(|r| MembershipState::from(r.membership.as_str()));
        if membership == Some(MembershipState::Join) || self.world_readable_now(room_id)? {
            return self.states.current_state(room_id);
        }
        match (membership, record) {
            (Some(MembershipState::Leave | MembershipState::Ban), Some(record)) => {
                let leave = self
                    .events
                    .get(&record.event_id)?
                    .ok_or_else(|| Error::internal("membership event missing"))?;
                // The member must have been joined at some point to read the room's state.
                let before = self.states.state_of_group(leave.state_before)?;
                if self.membership_in(&before, user_id)? != Some(MembershipState::Join) {
                    return Err(forbidden());
                }
                let mut state = (*before).clone();
                state.insert((StateEventType::RoomMember, user_id.to_string()), leave.pdu.event_id.clone());
                Ok(Arc::new(state))
            }
            _ => Err(forbidden()),
        }
    }

    /// Whether `server` may see `event` (`matrix::visibility::server_may_see_event`): by the
    /// history visibility at the event and its users' memberships in the state before it.
    pub fn server_may_see_event(&self, server: &ruma::ServerName, event: &StoredEvent) -> Result<bool> {
        let state = self.states.state_of_group(event.state_before)?;
        let history_visibility = self.history_visibility_in(&state)?;
        let mut memberships = Vec::new();
        for ((kind, key), id) in state.iter() {
            if *kind != StateEventType::RoomMember
                || !UserId::parse(key.as_str()).is_ok_and(|user| user.server_name() == server)
            {
                continue;
            }
            if let Some(member) = self.events.get(id)?
                && let Ok(content) = member.pdu.content_as::<MembershipContent>()
            {
                memberships.push(content.membership);
            }
        }
        Ok(visibility::server_may_see_event(&history_visibility, memberships.iter()))
    }

    /// Whether the room's current history visibility is `world_readable`.
    pub fn world_readable_now(&self, room_id: &RoomId) -> Result<bool> {
        let id = self.states.current_state_event_id(room_id, &StateEventType::RoomHistoryVisibility, "")?;
        let Some(id) = id else { return Ok(false) };
        let Some(event) = self.events.get(&id)? else { return Ok(false) };
        Ok(event
            .pdu
            .content_as::<VisibilityContent>()
            .is_ok_and(|c| c.history_visibility == HistoryVisibility::WorldReadable))
    }

    fn history_visibility_in(&self, state: &StateMap) -> Result<HistoryVisibility> {
        let Some(id) = state.get(&(StateEventType::RoomHistoryVisibility, String::new())) else {
            // The spec's default when the room has no setting.
            return Ok(HistoryVisibility::Shared);
        };
        let event = self.events.get(id)?.ok_or_else(|| Error::internal("state event missing"))?;
        Ok(event
            .pdu
            .content_as::<VisibilityContent>()
            .map_or(HistoryVisibility::Shared, |c| c.history_visibility))
    }

    fn membership_in(&self, state: &StateMap, user_id: &UserId) -> Result<Option<MembershipState>> {
        let Some(id) = state.get(&(StateEventType::RoomMember, user_id.to_string())) else { return Ok(None) };
        let event = self.events.get(id)?.ok_or_else(|| Error::internal("state event missing"))?;
        Ok(event.pdu.content_as::<MembershipContent>().ok().map(|c| c.membership))
    }
}

/// Lenient views of state contents: a field that does not parse counts as absent.
#[derive(serde::Deserialize)]
struct VisibilityContent {
    history_visibility: HistoryVisibility,
}

#[derive(serde::Deserialize)]
struct MembershipContent {
    membership: MembershipState,
}
