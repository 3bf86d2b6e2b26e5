//! What a room looks like to one user in a sync response, whichever sync asks: its member
//! counts and heroes, its name and avatar, the stripped state an invitee sees, its typing and
//! receipt events, its unread counts. `/sync` (v3) and sliding sync render their responses
//! from these pieces.

use std::{collections::HashSet, sync::Arc};

use ruma::{
    OwnedMxcUri, OwnedUserId, RoomId, UInt, UserId,
    api::client::sync::sync_events::{UnreadNotificationsCount, v3::RoomSummary},
    events::StateEventType,
    serde::Raw,
};
use serde_json::{Value as JsonValue, json, value::RawValue as RawJsonValue};

use crate::{
    Error, Result,
    service::{
        push::Notifications,
        rooms::{
            events::{Events, StoredEvent},
            members::Memberships,
            receipts::{self, Receipts},
            state::{RoomStates, StateMap},
            typing::Typing,
        },
    },
};

/// State event types shown to invitees and knockers (stripped state).
pub const STRIPPED_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// A room's members as a summary counts them, and its heroes if it has no name.
pub struct Summary {
    pub joined: u64,
    pub invited: u64,
    /// Empty for a named room.
    pub heroes: Vec<OwnedUserId>,
}

impl Summary {
    /// As `/sync` v3 sends it.
    pub fn v3(&self) -> RoomSummary {
        let mut summary = RoomSummary::new();
        summary.joined_member_count = Some(UInt::new_saturating(self.joined));
        summary.invited_member_count = Some(UInt::new_saturating(self.invited));
        summary.heroes = self.heroes.clone();
        summary
    }
}

pub struct RoomViews {
    events: Arc<Events>,
    states: Arc<RoomStates>,
    members: Arc<Memberships>,
    receipts: Arc<Receipts>,
    typing: Arc<Typing>,
    notifications: Arc<Notifications>,
}

impl RoomViews {
    pub fn new(
        events: Arc<Events>,
        states: Arc<RoomStates>,
        members: Arc<Memberships>,
        receipts: Arc<Receipts>,
        typing: Arc<Typing>,
        notifications: Arc<Notifications>,
    ) -> Self {
        Self { events, states, members, receipts, typing, notifications }
    }

    /// Member counts, and heroes for a room that has no name in `state`. The counts come
    /// from the room's roster (in memory); only an unnamed room's heroes read its rows, once
    /// per change of its members.
    pub fn summary(&self, room_id: &RoomId, user_id: &UserId, state: &StateMap) -> Result<Summary> {
        let roster = self.members.roster(room_id)?;
        // The spec's heroes: the first members by stream order who are joined or invited;
        // the ones who left or were banned only when there is nobody else.
        let heroes =
            if self.is_named(state)? { Vec::new() } else { self.members.heroes(room_id, user_id)? };
        Ok(Summary { joined: roster.joined_count(), invited: roster.invited_count(), heroes })
    }

    /// Whether clients name the room from its state (a non-empty `m.room.name` or
    /// `m.room.canonical_alias`) rather than from its heroes.
    pub fn is_named(&self, state: &StateMap) -> Result<bool> {
        Ok(self.state_string(state, StateEventType::RoomName, "name")?.is_some()
            || self.state_string(state, StateEventType::RoomCanonicalAlias, "alias")?.is_some())
    }

    /// The room's `m.room.name`, if set and not empty.
    pub fn name(&self, state: &StateMap) -> Result<Option<String>> {
        self.state_string(state, StateEventType::RoomName, "name")
    }

    /// The room's avatar: `Some(None)` when the avatar event has no URL (removed), `None`
    /// without an avatar event.
    pub fn avatar(&self, state: &StateMap) -> Result<Option<Option<OwnedMxcUri>>> {
        let Some(id) = state.get(&(StateEventType::RoomAvatar, String::new())) else { return Ok(None) };
        let Some(event) = self.events.get(id)? else { return Ok(None) };
        let url = event.pdu.content_value().get("url").and_then(JsonValue::as_str).map(OwnedMxcUri::from);
        Ok(Some(url.filter(|u| !u.as_str().is_empty())))
    }

    /// A member's display name and avatar from their member event in `state`.
    pub fn member_profile(
        &self,
        state: &StateMap,
        user_id: &UserId,
    ) -> Result<(Option<String>, Option<OwnedMxcUri>)> {
        let Some(id) = state.get(&(StateEventType::RoomMember, user_id.to_string())) else {
            return Ok((None, None));
        };
        let Some(event) = self.events.get(id)? else { return Ok((None, None)) };
        let content = event.pdu.content_value();
        let name = content.get("displayname").and_then(JsonValue::as_str).map(str::to_owned);
        let avatar = content.get("avatar_url").and_then(JsonValue::as_str).map(OwnedMxcUri::from);
        Ok((name, avatar))
    }

    /// The type in the room's create event (`m.space`, …), `None` for a plain room.
    pub fn room_type(&self, state: &StateMap) -> Result<Option<String>> {
        self.state_string(state, StateEventType::RoomCreate, "type")
    }

    fn state_string(&self, state: &StateMap, kind: StateEventType, field: &str) -> Result<Option<String>> {
        let Some(id) = state.get(&(kind, String::new())) else { return Ok(None) };
        let Some(event) = self.events.get(id)? else { return Ok(None) };
        Ok(event
            .pdu
            .content_value()
            .get(field)
            .and_then(JsonValue::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_owned))
    }

    /// The stripped state an invitee or knocker sees: a few state events of the room as of
    /// their membership event, the membership of whoever sent it (an inviter: clients show
    /// "Bob invited you" from it, as Synapse provides), and the membership event itself.
    pub fn stripped_state(
        &self,
        membership_event: &StoredEvent,
    ) -> Result<Vec<Raw<ruma::events::AnyStrippedStateEvent>>> {
        let state = self.states.state_of_group(membership_event.state_before)?;
        let mut events: Vec<Arc<StoredEvent>> = Vec::new();
        for kind in STRIPPED_STATE_TYPES {
            if let Some(id) = state.get(&(StateEventType::from(*kind), String::new())) {
                events.extend(self.events.get(id)?);
            }
        }
        let sender = membership_event.pdu.sender.as_str();
        if membership_event.pdu.state_key.as_deref() != Some(sender)
            && let Some(id) = state.get(&(StateEventType::RoomMember, sender.to_owned()))
        {
            events.extend(self.events.get(id)?);
        }
        let mut stripped = Vec::new();
        for event in events.iter().map(Arc::as_ref).chain([membership_event]) {
            let pdu = &event.pdu;
            // The content is written out as stored, never re-parsed.
            #[derive(serde::Serialize)]
            struct Stripped<'a> {
                #[serde(rename = "type")]
                kind: &'a ruma::events::TimelineEventType,
                state_key: &'a Option<String>,
                sender: &'a ruma::UserId,
                content: &'a RawJsonValue,
            }
            let value = Stripped {
                kind: &pdu.kind,
                state_key: &pdu.state_key,
                sender: &pdu.sender,
                content: &pdu.content,
            };
            stripped.push(Raw::from_json(raw_of(&value)?));
        }
        Ok(stripped)
    }

    /// The room's `m.typing` event if typing changed after `since` (always on a first sight
    /// of the room, unless nobody types).
    pub fn typing_event<T>(&self, room_id: &RoomId, since: Option<u64>) -> Result<Option<Raw<T>>> {
        if since.is_some_and(|s| self.typing.last_position(room_id) <= s) {
            return Ok(None);
        }
        let users = self.typing.typing_users(room_id);
        if since.is_none() && users.is_empty() {
            return Ok(None);
        }
        let event = json!({ "type": "m.typing", "content": { "user_ids": users } });
        Ok(Some(Raw::from_json(raw_of(&event)?)))
    }

    /// The room's `m.receipt` event with the receipts that changed in `(since, upto]`, those
    /// of `ignored` users left out.
    pub fn receipt_event<T>(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        since: Option<u64>,
        upto: u64,
        ignored: &HashSet<OwnedUserId>,
    ) -> Result<Option<Raw<T>>> {
        if since.is_some_and(|s| self.receipts.last_position(room_id).is_ok_and(|last| last <= s)) {
            return Ok(None);
        }
        let changed = self.receipts.changed(user_id, room_id, since, upto)?;
        let changed: Vec<_> = changed.into_iter().filter(|r| !ignored.contains(&r.user_id)).collect();
        if changed.is_empty() {
            return Ok(None);
        }
        let event = json!({ "type": "m.receipt", "content": receipts::receipt_content(&changed) });
        Ok(Some(Raw::from_json(raw_of(&event)?)))
    }

    /// The room's current state.
    pub fn current_state(&self, room_id: &RoomId) -> Result<Arc<StateMap>> {
        self.states.current_state(room_id)
    }

    /// Whether a room a client has up to `at` has something new up to `upto`: an event, a
    /// receipt (a read changes unread counts) or, when the client shows it in the room,
    /// typing. Both syncs ask this of every room before rendering any.
    pub fn moved_since(&self, room_id: &RoomId, at: u64, upto: u64, typing: bool) -> Result<bool> {
        Ok(self.events.last_position(room_id)?.min(upto) > at
            || self.receipts.last_position(room_id)? > at
            || (typing && self.typing.last_position(room_id) > at))
    }

    /// The room's unread counts; with `per_thread`, threads apart (as the room's and each
    /// thread's), else threads counted in the room's.
    pub fn unread(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        per_thread: bool,
    ) -> Result<(
        UnreadNotificationsCount,
        std::collections::BTreeMap<ruma::OwnedEventId, UnreadNotificationsCount>,
    )> {
        let counts = self.notifications.unread_counts(user_id, room_id)?;
        if per_thread {
            return Ok((counts.room, counts.threads));
        }
        let mut total = UnreadNotificationsCount::new();
        total.notification_count = Some(sum(
            &counts.room.notification_count,
            counts.threads.values().map(|c| &c.notification_count),
        ));
        total.highlight_count =
            Some(sum(&counts.room.highlight_count, counts.threads.values().map(|c| &c.highlight_count)));
        Ok((total, Default::default()))
    }
}

fn sum<'a>(base: &Option<UInt>, more: impl Iterator<Item = &'a Option<UInt>>) -> UInt {
    let mut total = base.unwrap_or_default();
    for count in more {
        total = total.saturating_add(count.unwrap_or_default());
    }
    total
}

fn raw_of(value: &impl serde::Serialize) -> Result<Box<RawJsonValue>> {
    serde_json::value::to_raw_value(value).map_err(|e| Error::internal(format!("serialising: {e}")))
}
