//! What clients do inside a room besides membership: send messages and state, redact, read
//! events, state and member lists, manage aliases and directory visibility, and report.
//! Policy Synapse applies before the auth rules lives here (joined-sender checks, canonical
//! alias validation, state deduplication); what a redaction may target is checked on the
//! append path (`Timeline`), whichever endpoint sent it. Every read goes through `Visibility`.

use std::sync::Arc;

use ruma::{
    EventId, OwnedEventId, OwnedRoomAliasId, OwnedRoomId, RoomAliasId, RoomId, UserId,
    api::error::ErrorKind,
    events::{StateEventType, TimelineEventType, room::member::MembershipState},
};
use serde_json::{Value as JsonValue, json};

use super::{
    aliases::Aliases,
    directory::Directory,
    events::{Events, StoredEvent},
    members::Memberships,
    reports::Reports,
    state::{RoomStates, StateMap},
    timeline::{Timeline, Txn},
    visibility::Visibility,
};
use crate::{
    Error, Result,
    matrix::{
        pdu::EventTemplate,
        redaction::{self, TargetError},
    },
    service::{passwords::random_string, users::Users},
    storage::{Direction, tables::ReportRecord},
};

/// Where a state event comes from: a client now (an application service may set its
/// timestamp), or a delayed event coming due.
enum StateOrigin<'a> {
    Client { origin_server_ts: Option<u64> },
    Delay(&'a str),
}

pub struct RoomActions {
    timeline: Arc<Timeline>,
    events: Arc<Events>,
    states: Arc<RoomStates>,
    members: Arc<Memberships>,
    visibility: Arc<Visibility>,
    aliases: Arc<Aliases>,
    directory: Arc<Directory>,
    reports: Arc<Reports>,
    /// Account standing: suspended and shadow-banned senders.
    users: Arc<Users>,
}

/// An event ID for what a shadow-banned user sent: shaped like a real one, naming nothing
/// (as Synapse answers them).
pub fn fake_event_id() -> Result<OwnedEventId> {
    OwnedEventId::try_from(format!("${}", random_string(43)))
        .map_err(|e| Error::internal(format!("fake event ID: {e}")))
}

/// A joined member's profile as the room shows it.
pub struct JoinedMember {
    pub user_id: ruma::OwnedUserId,
    pub display_name: Option<String>,
    pub avatar_url: Option<String>,
}

impl RoomActions {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        timeline: Arc<Timeline>,
        events: Arc<Events>,
        states: Arc<RoomStates>,
        members: Arc<Memberships>,
        visibility: Arc<Visibility>,
        aliases: Arc<Aliases>,
        directory: Arc<Directory>,
        reports: Arc<Reports>,
        users: Arc<Users>,
    ) -> Self {
        Self { timeline, events, states, members, visibility, aliases, directory, reports, users }
    }

    /// `PUT /send`: a message event, idempotent per device and transaction ID; or, without
    /// a transaction (the deprecated `POST /send`), a new event on every call.
    pub async fn send_message(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        kind: &str,
        content: JsonValue,
        txn: Option<Txn<'_>>,
        origin_server_ts: Option<u64>,
    ) -> Result<OwnedEventId> {
        ensure_object(&content)?;
        let checked = (|| {
            self.ensure_joined(room_id, sender)?;
            let standing = self.users.standing(sender)?;
            // A suspended account may still redact (its own events: checked in `redact`).
            if kind != "m.room.redaction" {
                standing.ensure_not_suspended("Sending messages")?;
            }
            Ok::<_, Error>(standing.shadow_banned)
        })();
        if !matches!(checked, Ok(false)) {
            // A retried transaction is answered whatever the checks say, so a client that
            // retries after leaving still learns its event ID. One that passes them is
            // looked up once, by `send`, under the room's lock.
            if let Some(txn) = txn
                && let Some(event_id) = self.timeline.txn_event(sender, txn)?
            {
                return Ok(event_id);
            }
            if checked? {
                return fake_event_id();
            }
        }
        let mut template = client_template(kind, None, content)?;
        template.origin_server_ts = origin_server_ts;
        self.timeline.send(room_id, sender, template, txn).await
    }

    /// `PUT /state`: a state event. Sending the content already in place answers the
    /// existing event instead of adding a duplicate, as Synapse does.
    pub async fn send_state(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
        content: JsonValue,
        origin_server_ts: Option<u64>,
    ) -> Result<OwnedEventId> {
        self.users.ensure_not_suspended(sender, "Sending messages")?;
        if self.users.is_shadow_banned(sender)? {
            ensure_object(&content)?;
            self.ensure_joined(room_id, sender)?;
            return fake_event_id();
        }
        self.send_state_from(
            sender,
            room_id,
            kind,
            state_key,
            content,
            StateOrigin::Client { origin_server_ts },
        )
        .await
    }

    /// A message or (non-member) state event from the delayed event `delay_id`, by the same
    /// checks as `PUT /send` and `PUT /state` (MSC4140: they apply when it is sent); the
    /// delayed event is removed in the event's batch.
    pub async fn send_from_delay(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        kind: &str,
        state_key: Option<&str>,
        content: JsonValue,
        delay_id: &str,
    ) -> Result<OwnedEventId> {
        if let Some(state_key) = state_key {
            return self
                .send_state_from(sender, room_id, kind, state_key, content, StateOrigin::Delay(delay_id))
                .await;
        }
        ensure_object(&content)?;
        self.ensure_joined(room_id, sender)?;
        let template = client_template(kind, None, content)?;
        self.timeline.send_from_delay(room_id, sender, template, delay_id).await
    }

    /// Check what a client wants sent later, as far as it can be before it is sent (see
    /// `Timeline::check_template`): bad content gets the answer `PUT /send` or `PUT /state`
    /// would give it now.
    pub fn check_delayed(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        kind: &str,
        state_key: Option<&str>,
        content: JsonValue,
    ) -> Result<()> {
        ensure_object(&content)?;
        self.timeline.check_template(room_id, sender, &client_template(kind, state_key, content)?)
    }

    async fn send_state_from(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
        content: JsonValue,
        origin: StateOrigin<'_>,
    ) -> Result<OwnedEventId> {
        ensure_object(&content)?;
        self.ensure_joined(room_id, sender)?;
        if kind == "m.room.canonical_alias" {
            self.check_canonical_alias(room_id, &content)?;
        }
        let lock = self.timeline.lock_room(room_id).await;
        if let Some(current) = self.timeline.state_event(room_id, &kind.into(), state_key)?
            && current.pdu.sender == sender
            && current.pdu.content_value() == content
        {
            return Ok(current.pdu.event_id.clone());
        }
        let mut template = client_template(kind, Some(state_key), content)?;
        let event = match origin {
            StateOrigin::Delay(delay_id) => {
                self.timeline.append_from_delay(&lock, sender, template, delay_id)?
            }
            StateOrigin::Client { origin_server_ts } => {
                template.origin_server_ts = origin_server_ts;
                self.timeline.append(&lock, sender, template, None)?
            }
        };
        Ok(event.pdu.event_id.clone())
    }

    /// `PUT /redact`: redact an event. What may be redacted is checked on the append path,
    /// for every way of sending a redaction.
    pub async fn redact(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &EventId,
        reason: Option<&str>,
        txn: Txn<'_>,
    ) -> Result<OwnedEventId> {
        if let Some(event_id) = self.timeline.txn_event(sender, txn)? {
            return Ok(event_id);
        }
        self.ensure_joined(room_id, sender)?;
        if let Some(event) = self.events.get(target)?
            && event.pdu.sender != sender
        {
            self.users.ensure_not_suspended(sender, "Redacting others' events")?;
        }
        let content = match reason {
            Some(reason) => json!({ "reason": reason }),
            None => json!({}),
        };
        let template = EventTemplate {
            kind: TimelineEventType::RoomRedaction,
            content,
            state_key: None,
            redacts: Some(target.to_owned()),
            origin_server_ts: None,
        };
        self.timeline.send(room_id, sender, template, Some(txn)).await
    }

    /// Whether a redaction by `sender` would remove another user's event (which only room
    /// admins and moderators may do, so Synapse counts it under `rc_admin_redaction`).
    pub fn redacts_others(&self, sender: &UserId, target: &EventId) -> Result<bool> {
        Ok(self.events.get(target)?.is_some_and(|event| event.pdu.sender != sender))
    }

    /// `GET /event/{eventId}`: the event, if the user may see it.
    /// Someone who may not see the event (a non-member of a room that is not
    /// world-readable included) gets the answer for an unknown event, as on Synapse, so the
    /// answer does not tell which event IDs exist.
    pub fn event(&self, user_id: &UserId, room_id: &RoomId, event_id: &EventId) -> Result<Arc<StoredEvent>> {
        let not_found = || Error::not_found("Event not found");
        if !self.can_peek(room_id, user_id)? {
            return Err(not_found());
        }
        // An outlier has no place in the history to be seen at.
        let event = self.events.get(event_id)?.filter(|e| e.status.is_accepted()).ok_or_else(not_found)?;
        if event.pdu.room_id != room_id || !self.visibility.may_see_event(user_id, &event)? {
            return Err(not_found());
        }
        Ok(event)
    }

    /// `GET /events/{eventId}` (deprecated): an event of any room, by the same rules as
    /// `event`. Every refusal is `M_NOT_FOUND`, as the spec gives this endpoint no other
    /// answer, so it tells a stranger nothing about which events exist.
    pub fn event_by_id(&self, user_id: &UserId, event_id: &EventId) -> Result<Arc<StoredEvent>> {
        let not_found = || Error::not_found("Event not found");
        let event = self.events.get(event_id)?.filter(|e| e.status.is_accepted()).ok_or_else(not_found)?;
        if !self.can_peek(&event.pdu.room_id, user_id)? || !self.visibility.may_see_event(user_id, &event)? {
            return Err(not_found());
        }
        Ok(event)
    }

    /// `GET /state`: the state the user may read, as events.
    pub fn state(&self, user_id: &UserId, room_id: &RoomId) -> Result<Vec<Arc<StoredEvent>>> {
        let state = self.visibility.readable_state(user_id, room_id)?;
        self.events.get_many(state.values())
    }

    /// `GET /state/{type}/{stateKey}`.
    pub fn state_event(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Arc<StoredEvent>> {
        let state = self.visibility.readable_state(user_id, room_id)?;
        let not_found =
            || Error::not_found(format!("Event not found for {kind} and state key {state_key:?}"));
        let id = state.get(&(StateEventType::from(kind), state_key.to_owned())).ok_or_else(not_found)?;
        self.events.get(id)?.ok_or_else(not_found)
    }

    /// `GET /members`: member events of the readable state (or of the state at the `at`
    /// stream position), filtered by membership.
    pub fn members(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        at: Option<u64>,
        membership: Option<&MembershipState>,
        not_membership: Option<&MembershipState>,
    ) -> Result<Vec<Arc<StoredEvent>>> {
        let readable = self.visibility.readable_state(user_id, room_id)?;
        let state = match at {
            Some(position) => self.state_at_position(room_id, position)?.unwrap_or(readable),
            None => readable,
        };
        let ids = state.iter().filter(|((kind, _), _)| *kind == StateEventType::RoomMember).map(|(_, id)| id);
        let mut events = self.events.get_many(ids)?;
        events.retain(|event| {
            let current = event
                .pdu
                .content_value()
                .get("membership")
                .and_then(JsonValue::as_str)
                .map(MembershipState::from);
            membership.is_none_or(|m| current.as_ref() == Some(m))
                && not_membership.is_none_or(|m| current.as_ref() != Some(m))
        });
        events.sort_by(|a, b| a.pdu.state_key.cmp(&b.pdu.state_key));
        Ok(events)
    }

    /// The room state right after the last event at or before `position`.
    fn state_at_position(&self, room_id: &RoomId, position: u64) -> Result<Option<Arc<StateMap>>> {
        let last =
            self.events.room_events(room_id, Some(position.saturating_add(1)), Direction::Reverse, 1)?;
        let Some(event) = last.into_iter().next() else { return Ok(None) };
        let mut state = (*self.states.state_of_group(event.state_before)?).clone();
        if let Some(key) = &event.pdu.state_key {
            state.insert((event.pdu.kind.to_string().into(), key.clone()), event.pdu.event_id.clone());
        }
        Ok(Some(Arc::new(state)))
    }

    /// `GET /joined_members`: joined users and their room profile.
    pub fn joined_members(&self, user_id: &UserId, room_id: &RoomId) -> Result<Vec<JoinedMember>> {
        if !self.members.is_joined(room_id, user_id)? && !self.visibility.world_readable_now(room_id)? {
            return Err(Error::forbidden("You aren't a member of the room"));
        }
        let mut joined = Vec::new();
        for member in self.members.members_with(room_id, &MembershipState::Join)? {
            let event = self.timeline.state_event(room_id, &StateEventType::RoomMember, member.as_str())?;
            let content = event.map(|e| e.pdu.content_value()).unwrap_or_default();
            let text = |key: &str| content.get(key).and_then(JsonValue::as_str).map(str::to_owned);
            joined.push(JoinedMember {
                display_name: text("displayname"),
                avatar_url: text("avatar_url"),
                user_id: member,
            });
        }
        Ok(joined)
    }

    /// `GET /joined_rooms`.
    /// Whether two users are both joined to some room.
    pub fn share_a_room(&self, user_id: &UserId, other: &UserId) -> Result<bool> {
        let mine = self.members.rooms_of_user(user_id, &MembershipState::Join)?;
        for room in mine {
            if self.members.is_joined(&room, other)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn joined_rooms(&self, user_id: &UserId) -> Result<Vec<OwnedRoomId>> {
        self.members.rooms_of_user(user_id, &MembershipState::Join)
    }

    /// `PUT /directory/room/{alias}`: members may add local aliases to their room.
    pub fn create_alias(&self, user_id: &UserId, alias: &RoomAliasId, room_id: &RoomId) -> Result<()> {
        self.aliases.ensure_local(alias)?;
        if self.states.room(room_id)?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        self.ensure_joined(room_id, user_id)?;
        self.aliases.create(alias, room_id, user_id)
    }

    /// `DELETE /directory/room/{alias}`: by the alias's creator or a user who may change the
    /// room's canonical alias. The alias also leaves `m.room.canonical_alias` if it was there.
    pub async fn delete_alias(&self, user_id: &UserId, alias: &RoomAliasId) -> Result<()> {
        let record = self.aliases.get(alias)?.ok_or_else(|| Error::not_found("Room alias not found"))?;
        let room_id = record.room_id;
        let may_edit_canonical = self.members.is_joined(&room_id, user_id)?
            && self
                .timeline
                .power_levels(&room_id)?
                .user_can_send_state(user_id, StateEventType::RoomCanonicalAlias);
        if record.creator != user_id && !may_edit_canonical {
            return Err(Error::forbidden("You may not delete this alias"));
        }
        self.aliases.delete(alias)?;
        if may_edit_canonical {
            self.remove_from_canonical_alias(user_id, &room_id, alias).await?;
        }
        Ok(())
    }

    async fn remove_from_canonical_alias(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        alias: &RoomAliasId,
    ) -> Result<()> {
        let Some(event) = self.timeline.state_event(room_id, &StateEventType::RoomCanonicalAlias, "")? else {
            return Ok(());
        };
        let mut content = event.pdu.content_value();
        let mut changed = false;
        if content.get("alias").and_then(JsonValue::as_str) == Some(alias.as_str()) {
            content.as_object_mut().map(|c| c.remove("alias"));
            changed = true;
        }
        if let Some(alt) = content.get_mut("alt_aliases").and_then(JsonValue::as_array_mut) {
            let before = alt.len();
            alt.retain(|a| a.as_str() != Some(alias.as_str()));
            changed |= alt.len() != before;
        }
        if changed {
            self.send_state(user_id, room_id, "m.room.canonical_alias", "", content, None).await?;
        }
        Ok(())
    }

    /// `GET /rooms/{roomId}/aliases`: for members and world-readable rooms.
    pub fn room_aliases(&self, user_id: &UserId, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        if !self.members.is_joined(room_id, user_id)? && !self.visibility.world_readable_now(room_id)? {
            return Err(Error::forbidden("You aren't a member of the room"));
        }
        self.aliases.of_room(room_id)
    }

    /// `GET /directory/list/room/{roomId}`.
    pub fn is_published(&self, room_id: &RoomId) -> Result<bool> {
        if self.states.room(room_id)?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        self.directory.is_published(room_id)
    }

    /// `PUT /directory/list/room/{roomId}`: members who may change the canonical alias.
    pub fn set_published(&self, user_id: &UserId, room_id: &RoomId, public: bool) -> Result<()> {
        if self.states.room(room_id)?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        self.ensure_joined(room_id, user_id)?;
        if !self
            .timeline
            .power_levels(room_id)?
            .user_can_send_state(user_id, StateEventType::RoomCanonicalAlias)
        {
            return Err(Error::forbidden("You may not change this room's directory visibility"));
        }
        self.directory.publish(room_id, public)
    }

    /// `POST /rooms/{roomId}/report/{eventId}`: the reporter must be able to see the event.
    pub fn report_event(
        &self,
        reporter: &UserId,
        room_id: &RoomId,
        event_id: &EventId,
        reason: Option<String>,
        score: Option<i64>,
    ) -> Result<()> {
        if score.is_some_and(|s| !(-100..=0).contains(&s)) {
            return Err(Error::invalid_param("score must be between -100 and 0"));
        }
        let event = self.event(reporter, room_id, event_id)?;
        self.reports.file(ReportRecord {
            reporter: reporter.to_owned(),
            room_id: Some(room_id.to_owned()),
            event_id: Some(event.pdu.event_id.clone()),
            user_id: Some(event.pdu.sender.clone()),
            reason,
            score,
            received_ms: 0,
        })?;
        Ok(())
    }

    /// `POST /rooms/{roomId}/report`: any room this server knows.
    pub fn report_room(&self, reporter: &UserId, room_id: &RoomId, reason: Option<String>) -> Result<()> {
        if self.states.room(room_id)?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        self.reports.file(ReportRecord {
            reporter: reporter.to_owned(),
            room_id: Some(room_id.to_owned()),
            event_id: None,
            user_id: None,
            reason,
            score: None,
            received_ms: 0,
        })?;
        Ok(())
    }

    /// `POST /users/{userId}/report`: the caller checked the user exists.
    pub fn report_user(&self, reporter: &UserId, user_id: &UserId, reason: Option<String>) -> Result<()> {
        self.reports.file(ReportRecord {
            reporter: reporter.to_owned(),
            room_id: None,
            event_id: None,
            user_id: Some(user_id.to_owned()),
            reason,
            score: None,
            received_ms: 0,
        })?;
        Ok(())
    }

    /// The alias and alt aliases must be valid, and local ones must point at this room.
    fn check_canonical_alias(&self, room_id: &RoomId, content: &JsonValue) -> Result<()> {
        let mut aliases = Vec::new();
        match content.get("alias") {
            None | Some(JsonValue::Null) => {}
            Some(JsonValue::String(alias)) => aliases.push(alias.as_str()),
            Some(_) => return Err(Error::invalid_param("alias must be a string")),
        }
        match content.get("alt_aliases") {
            None => {}
            Some(JsonValue::Array(alt)) => {
                for alias in alt {
                    aliases.push(
                        alias.as_str().ok_or_else(|| Error::invalid_param("alt_aliases must be strings"))?,
                    );
                }
            }
            Some(_) => return Err(Error::invalid_param("alt_aliases must be a list")),
        }
        for alias in aliases {
            let bad = |why: &str| Error::new(ErrorKind::BadAlias, format!("{alias}: {why}"));
            let alias = RoomAliasId::parse(alias).map_err(|_| bad("not a valid room alias"))?;
            match self.aliases.get(&alias)? {
                Some(record) if record.room_id == room_id => {}
                Some(_) => return Err(bad("points to another room")),
                None => return Err(bad("does not exist on this server")),
            }
        }
        Ok(())
    }

    fn ensure_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        if !self.members.is_joined(room_id, user_id)? {
            return Err(Error::forbidden(format!("{user_id} is not in room {room_id}")));
        }
        Ok(())
    }

    /// Readers of single events: anyone who ever had a membership, or anyone at all in a
    /// world-readable room. Which events they see is then up to `Visibility`.
    fn can_peek(&self, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        Ok(self.members.get(room_id, user_id)?.is_some() || self.visibility.world_readable_now(room_id)?)
    }
}

/// The template for an event a client sends; a redaction must name its target.
fn client_template(kind: &str, state_key: Option<&str>, content: JsonValue) -> Result<EventTemplate> {
    redaction::client_template(kind, state_key, content).map_err(|e| match e {
        TargetError::Missing => Error::missing_param("A redaction needs `redacts`"),
        TargetError::Invalid => Error::invalid_param("`redacts` must be an event ID"),
    })
}

fn ensure_object(content: &JsonValue) -> Result<()> {
    if !content.is_object() {
        return Err(Error::bad_json("Event content must be a JSON object"));
    }
    Ok(())
}
