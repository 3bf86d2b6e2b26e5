//! Membership changes a client asks for: join (by ID or alias, including restricted rooms),
//! invite, leave, kick, ban, unban, knock and forget. Each builds the member event and
//! leaves the verdict to the auth rules, after the checks Synapse makes first so clients get
//! the same answers.

use std::sync::Arc;

use ruma::{
    OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, RoomOrAliasId, UserId,
    events::{StateEventType, TimelineEventType, room::member::MembershipState},
};
use serde_json::{Map as JsonMap, Value as JsonValue, json};

use super::{
    aliases::Aliases,
    blocked::BlockedRooms,
    members::Memberships,
    timeline::{RoomLock, Timeline},
};
use crate::{
    Error, Result,
    matrix::pdu::EventTemplate,
    service::{
        appservices::Appservices,
        federation::{FederationClient, RoomFederation},
        users::Users,
    },
};
use ruma::OwnedEventId;

/// The `m.room.member` template for `user_id`, with their profile for joins and invites.
pub fn member_template(
    users: &Users,
    user_id: &UserId,
    membership: &str,
    reason: Option<&str>,
    is_direct: bool,
) -> Result<EventTemplate> {
    member_template_with(users, user_id, membership, reason, is_direct, JsonMap::new())
}

/// As `member_template`, starting from content the client gave: its keys are kept (a display
/// name or avatar for this room only, custom keys), as Synapse keeps them; the profile fills
/// in only the display name and avatar the client left out. The membership, and the
/// restricted-join authoriser (which only this server may choose), are never the client's.
pub fn member_template_with(
    users: &Users,
    user_id: &UserId,
    membership: &str,
    reason: Option<&str>,
    is_direct: bool,
    mut content: JsonMap<String, JsonValue>,
) -> Result<EventTemplate> {
    content.insert("membership".to_owned(), membership.into());
    content.remove(JOIN_AUTHORISER);
    if matches!(membership, "join" | "invite" | "knock")
        && let Some(profile) = users.profile(user_id)?
    {
        if let Some(name) = profile.displayname {
            content.entry("displayname").or_insert_with(|| name.into());
        }
        if let Some(url) = profile.avatar_url {
            content.entry("avatar_url").or_insert_with(|| url.as_str().into());
        }
    }
    if let Some(reason) = reason {
        content.insert("reason".to_owned(), reason.into());
    }
    if is_direct {
        content.insert("is_direct".to_owned(), true.into());
    }
    Ok(EventTemplate::state(TimelineEventType::RoomMember, user_id.as_str(), JsonValue::Object(content)))
}

/// The key naming who authorised a join to a restricted room.
pub const JOIN_AUTHORISER: &str = "join_authorised_via_users_server";

/// One page of the rooms two users share.
pub struct MutualRooms {
    /// How many rooms they share in all.
    pub count: u64,
    pub rooms: Vec<OwnedRoomId>,
    pub next_batch: Option<String>,
}

/// Rooms per page of `mutual_rooms`.
const MUTUAL_ROOMS_PAGE: usize = 100;

pub struct MembershipActions {
    server_name: OwnedServerName,
    timeline: Arc<Timeline>,
    members: Arc<Memberships>,
    users: Arc<Users>,
    aliases: Arc<Aliases>,
    blocked: Arc<BlockedRooms>,
    /// The server notices user, when notices are on: a room it is in is a server notices
    /// room, whose invite cannot be rejected (as Synapse).
    notices_user: Option<ruma::OwnedUserId>,
    appservices: Arc<Appservices>,
    /// Set when federation is on: remote aliases are looked up through their server.
    federation: Option<Arc<FederationClient>>,
    /// Set when federation is on: rooms on other servers are joined through them.
    rooms: Option<Arc<RoomFederation>>,
}

impl MembershipActions {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        server_name: OwnedServerName,
        timeline: Arc<Timeline>,
        members: Arc<Memberships>,
        users: Arc<Users>,
        aliases: Arc<Aliases>,
        blocked: Arc<BlockedRooms>,
        notices_user: Option<ruma::OwnedUserId>,
        appservices: Arc<Appservices>,
        federation: Option<Arc<FederationClient>>,
        rooms: Option<Arc<RoomFederation>>,
    ) -> Self {
        Self {
            rooms,
            server_name,
            timeline,
            members,
            users,
            aliases,
            blocked,
            notices_user,
            appservices,
            federation,
        }
    }

    /// The room an ID or alias names. Rooms this server is not in would need federation.
    pub async fn resolve(&self, room: &RoomOrAliasId) -> Result<OwnedRoomId> {
        match <&RoomId>::try_from(room) {
            Ok(room_id) => Ok(room_id.to_owned()),
            Err(alias) => self.resolve_alias(alias).await,
        }
    }

    /// The room an ID or alias names, with the servers to join it through: those given
    /// (`via`), and for a remote alias those its server answered.
    pub async fn resolve_with_servers(
        &self,
        room: &RoomOrAliasId,
        via: &[OwnedServerName],
    ) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        let mut servers = via.to_vec();
        let room_id = match <&RoomId>::try_from(room) {
            Ok(room_id) => room_id.to_owned(),
            Err(alias) => match self.aliases.get(alias)? {
                None if alias.server_name() != self.server_name
                    && let Some(federation) = &self.federation =>
                {
                    let (room_id, found) = federation.query_directory(alias).await?;
                    servers.extend(found);
                    servers.push(alias.server_name().to_owned());
                    room_id
                }
                _ => self.resolve_alias(alias).await?,
            },
        };
        Ok((room_id, servers))
    }

    /// The room an alias names. An unknown alias in an application service's namespace is
    /// asked of the appservice, which may create the room there and then (the spec's room
    /// alias query).
    pub async fn resolve_alias(&self, alias: &RoomAliasId) -> Result<OwnedRoomId> {
        match self.aliases.get(alias)? {
            Some(record) => Ok(record.room_id),
            None if alias.server_name() == self.server_name && self.appservices.query_alias(alias).await => {
                self.aliases.resolve(alias)
            }
            None if alias.server_name() != self.server_name
                && let Some(federation) = &self.federation =>
            {
                Ok(federation.query_directory(alias).await?.0)
            }
            None => Err(self.aliases.missing(alias)),
        }
    }

    /// Join a room. `content` is what the client gave for the member event beyond the
    /// membership (kept, see `member_template_with`). Joining again with the same content is
    /// a no-op; with other content (a new display name for this room) it is a new event, as
    /// on Synapse. Answers the join event's ID.
    pub async fn join(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        reason: Option<&str>,
        content: JsonMap<String, JsonValue>,
    ) -> Result<OwnedEventId> {
        self.join_via(user_id, room_id, &[], reason, content).await
    }

    /// `join`, with the servers to join through when the room is on another server (the
    /// client's `via`, a remote alias's servers; the server the room ID names is tried last).
    pub async fn join_via(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        reason: Option<&str>,
        content: JsonMap<String, JsonValue>,
    ) -> Result<OwnedEventId> {
        self.blocked.ensure_not_blocked(room_id)?;
        self.users.ensure_not_suspended(user_id, "Joining rooms")?;
        let lock = self.timeline.lock_room(room_id).await;
        if self.timeline.state_event(room_id, &StateEventType::RoomCreate, "")?.is_none() {
            // The room is unknown here: join it through a server that has it.
            let Some(rooms) = &self.rooms else {
                return Err(Error::on_another_server(format!("Room {room_id}")));
            };
            let template = member_template_with(&self.users, user_id, "join", reason, false, content)?;
            // The remote join takes the room's lock itself, for as long as it seats the room.
            drop(lock);
            return rooms.join_remote(user_id, room_id, via, &template.content).await;
        }
        let membership = self.members.membership(room_id, user_id)?;
        let mut template = member_template_with(&self.users, user_id, "join", reason, false, content)?;
        if membership == Some(MembershipState::Join) {
            let current =
                self.timeline.state_event(room_id, &StateEventType::RoomMember, user_id.as_str())?;
            if let Some(current) = current {
                let mut current_content = current.pdu.content_value();
                if let Some(map) = current_content.as_object_mut() {
                    map.remove(JOIN_AUTHORISER);
                }
                if current_content == template.content {
                    return Ok(current.pdu.event_id.clone());
                }
            }
        } else if let Some(authoriser) = self.timeline.join_authoriser(room_id, user_id)? {
            template.content[JOIN_AUTHORISER] = json!(authoriser);
        }
        Ok(self.timeline.append(&lock, user_id, template, None)?.pdu.event_id.clone())
    }

    /// `PUT /rooms/{roomId}/state/m.room.member/{userId}`: a membership change written as a
    /// state event, taken through the same flow as the dedicated endpoint for its
    /// `membership`, with the rest of `content` kept in the event (as Synapse does). Answers
    /// the member event's ID.
    pub async fn set_member_state(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        content: JsonValue,
    ) -> Result<OwnedEventId> {
        let JsonValue::Object(mut content) = content else {
            return Err(Error::bad_json("Member event content must be an object"));
        };
        let membership = match content.remove("membership") {
            Some(JsonValue::String(membership)) => membership,
            _ => return Err(Error::bad_json("Member event content needs a membership string")),
        };
        let own = sender == target;
        match membership.as_str() {
            "join" if own => self.join(sender, room_id, None, content).await,
            "knock" if own => self.knock(sender, room_id, &[], None, content).await,
            "join" | "knock" => {
                Err(Error::forbidden(format!("Only {target} can {membership} for themselves")))
            }
            "invite" => self.invite(sender, room_id, target, None, content).await,
            "leave" if own => self.leave(sender, room_id, None, content).await,
            "leave" => match self.members.membership(room_id, target)? {
                Some(MembershipState::Ban) => self.unban(sender, room_id, target, None, content).await,
                _ => self.kick(sender, room_id, target, None, content).await,
            },
            "ban" => self.ban(sender, room_id, target, None, content).await,
            other => Err(Error::bad_json(format!("Unknown membership {other:?}"))),
        }
    }

    /// Invite `target`. Only local accounts can be invited while federation is off.
    pub async fn invite(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
        content: JsonMap<String, JsonValue>,
    ) -> Result<OwnedEventId> {
        let remote = target.server_name() != self.server_name;
        if remote && self.rooms.is_none() {
            return Err(Error::forbidden(format!("Cannot invite {target}: federation is disabled")));
        }
        // An unknown user in an application service's namespace is asked of the appservice
        // (the user query), which may register it there and then. A user of another server
        // is its server's to know.
        let known = remote
            || self.users.exists(target)?
            || (self.appservices.query_user(target).await && self.users.exists(target)?);
        if !known {
            return Err(Error::not_found(format!("Unknown user {target}")));
        }
        self.blocked.ensure_not_blocked(room_id)?;
        self.users.ensure_not_suspended(sender, "Sending invites")?;
        let lock = self.timeline.lock_room(room_id).await;
        self.ensure_joined(room_id, sender)?;
        if self.users.is_shadow_banned(sender)? {
            // It seems to work; nobody is invited.
            return super::actions::fake_event_id();
        }
        match self.members.membership(room_id, target)? {
            Some(MembershipState::Join) => {
                return Err(Error::forbidden(format!("{target} is already in the room")));
            }
            Some(MembershipState::Ban) => {
                return Err(Error::forbidden(format!("{target} is banned from the room")));
            }
            Some(MembershipState::Invite) => return self.current_member_event(room_id, target),
            _ => {}
        }
        if remote && let Some(rooms) = &self.rooms {
            // The invitee's server co-signs the invite before the room takes it.
            let template = member_template_with(&self.users, target, "invite", reason, false, content)?;
            return rooms.invite_remote(&lock, sender, &template).await;
        }
        self.set_membership(&lock, sender, target, "invite", reason, content)
    }

    /// Leave a room, reject an invite or retract a knock. Like every membership change
    /// here, it takes the content the client gave beyond the membership (kept in the event,
    /// see `member_template_with`) and answers the member event's ID.
    pub async fn leave(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        reason: Option<&str>,
        content: JsonMap<String, JsonValue>,
    ) -> Result<OwnedEventId> {
        let lock = self.timeline.lock_room(room_id).await;
        let membership = self.members.membership(room_id, user_id)?;
        if membership == Some(MembershipState::Invite)
            && let Some(notices) = &self.notices_user
            && self.members.is_joined(room_id, notices)?
        {
            return Err(Error::new(
                ruma::api::error::ErrorKind::CannotLeaveServerNoticeRoom,
                "You cannot reject this invite",
            ));
        }
        if !matches!(
            membership,
            Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock)
        ) && let Some(rooms) = &self.rooms
            && rooms.has_remote_invite(user_id, room_id)?
        {
            // An invite to a room of another server: rejected through the inviting server.
            drop(lock);
            return rooms.reject_remote_invite(user_id, room_id).await;
        }
        if membership.is_none()
            && let Some(rooms) = &self.rooms
            && rooms.has_pending_join(user_id, room_id)?
        {
            // A join another server took whose room could not be seated: left through it.
            drop(lock);
            return rooms.leave_pending_join(user_id, room_id).await;
        }
        match membership {
            Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {}
            Some(MembershipState::Leave | MembershipState::Ban) => {
                return self.current_member_event(room_id, user_id);
            }
            _ => return Err(Error::forbidden(format!("{user_id} is not in room {room_id}"))),
        }
        self.set_membership(&lock, user_id, user_id, "leave", reason, content)
    }

    /// Kick `target` (who must be in the room, invited or knocking).
    pub async fn kick(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
        content: JsonMap<String, JsonValue>,
    ) -> Result<OwnedEventId> {
        let lock = self.timeline.lock_room(room_id).await;
        self.ensure_joined(room_id, sender)?;
        if !matches!(
            self.members.membership(room_id, target)?,
            Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock)
        ) {
            return Err(Error::forbidden(format!("{target} is not in the room")));
        }
        self.set_membership(&lock, sender, target, "leave", reason, content)
    }

    /// Ban `target`, whether or not they are in the room.
    pub async fn ban(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
        content: JsonMap<String, JsonValue>,
    ) -> Result<OwnedEventId> {
        let lock = self.timeline.lock_room(room_id).await;
        self.ensure_joined(room_id, sender)?;
        self.set_membership(&lock, sender, target, "ban", reason, content)
    }

    /// Lift a ban; `target` must be banned.
    pub async fn unban(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
        content: JsonMap<String, JsonValue>,
    ) -> Result<OwnedEventId> {
        let lock = self.timeline.lock_room(room_id).await;
        self.ensure_joined(room_id, sender)?;
        if self.members.membership(room_id, target)? != Some(MembershipState::Ban) {
            return Err(Error::forbidden(format!("{target} is not banned")));
        }
        self.set_membership(&lock, sender, target, "leave", reason, content)
    }

    /// Ask to join a room whose join rule is `knock` or `knock_restricted`; a room on
    /// another server is knocked on through `via` (the client's, a remote alias's servers;
    /// the server the room ID names is tried last).
    pub async fn knock(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        reason: Option<&str>,
        content: JsonMap<String, JsonValue>,
    ) -> Result<OwnedEventId> {
        self.blocked.ensure_not_blocked(room_id)?;
        self.users.ensure_not_suspended(user_id, "Knocking on rooms")?;
        let lock = self.timeline.lock_room(room_id).await;
        if self.timeline.state_event(room_id, &StateEventType::RoomCreate, "")?.is_none() {
            let Some(rooms) = &self.rooms else {
                return Err(Error::not_found("No known servers to knock on this room through"));
            };
            drop(lock);
            let template = member_template_with(&self.users, user_id, "knock", reason, false, content)?;
            return rooms.knock_remote(user_id, room_id, via, &template.content).await;
        }
        match self.members.membership(room_id, user_id)? {
            Some(MembershipState::Join) => return Err(Error::forbidden("You are already in the room")),
            Some(MembershipState::Invite) => {
                return Err(Error::forbidden("You are already invited to the room"));
            }
            Some(MembershipState::Ban) => return Err(Error::forbidden("You are banned from the room")),
            Some(MembershipState::Knock) => return self.current_member_event(room_id, user_id),
            _ => {}
        }
        self.set_membership(&lock, user_id, user_id, "knock", reason, content)
    }

    /// The rooms `user_id` and `other` are both joined to, ordered by room ID, a page at a
    /// time; `from` is the room ID a previous page ended after. Asking about oneself is
    /// refused, as the spec says; an unknown user shares no room.
    pub fn mutual_rooms(&self, user_id: &UserId, other: &UserId, from: Option<&str>) -> Result<MutualRooms> {
        if user_id == other {
            return Err(Error::invalid_param("You cannot ask which rooms you share with yourself"));
        }
        let after = from
            .map(|token| RoomId::parse(token).map_err(|_| Error::invalid_param("Invalid pagination token")))
            .transpose()?;
        let theirs: std::collections::HashSet<OwnedRoomId> =
            self.members.rooms_of_user(other, &MembershipState::Join)?.into_iter().collect();
        let mut shared: Vec<OwnedRoomId> = self
            .members
            .rooms_of_user(user_id, &MembershipState::Join)?
            .into_iter()
            .filter(|room| theirs.contains(room))
            .collect();
        shared.sort();
        let count = shared.len() as u64;
        let start = after.map_or(0, |after| shared.partition_point(|room| *room <= after));
        let rooms: Vec<OwnedRoomId> = shared.iter().skip(start).take(MUTUAL_ROOMS_PAGE).cloned().collect();
        let next_batch =
            (start + rooms.len() < shared.len()).then(|| rooms.last().map(ToString::to_string)).flatten();
        Ok(MutualRooms { count, rooms, next_batch })
    }

    /// Forget a room the user has left: it stops appearing to them.
    pub fn forget(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        if let Some(rooms) = &self.rooms {
            rooms.forget_remote_invite(user_id, room_id)?;
        }
        let Some(record) = self.members.get(room_id, user_id)? else { return Ok(()) };
        if self.timeline.state_event(room_id, &StateEventType::RoomCreate, "")?.is_none() {
            // A purged room: the row that told the user's clients of the leave was all that
            // was left of it.
            return self.members.remove_user_row(room_id, user_id);
        }
        match MembershipState::from(record.membership.as_str()) {
            MembershipState::Leave | MembershipState::Ban => self.members.forget(room_id, user_id, record),
            _ => Err(Error::new(
                ruma::api::error::ErrorKind::Unknown,
                "You must leave the room before forgetting it",
            )),
        }
    }

    /// Carry a changed profile into every room the user is joined to: a new member event
    /// with the current display name and avatar, as Synapse does, so members see the change.
    /// A room that refuses the event is skipped (logged), not a failure of the change.
    pub async fn profile_changed(&self, user_id: &UserId) -> Result<()> {
        let profile = self.users.profile(user_id)?.unwrap_or_default();
        for room_id in self.members.rooms_of_user(user_id, &MembershipState::Join)? {
            let lock = self.timeline.lock_room(&room_id).await;
            let Some(current) =
                self.timeline.state_event(&room_id, &StateEventType::RoomMember, user_id.as_str())?
            else {
                continue;
            };
            let mut content = current.pdu.content_value();
            let Some(map) = content.as_object_mut() else { continue };
            if map.get("membership").and_then(|m| m.as_str()) != Some("join") {
                continue;
            }
            let name = profile.displayname.clone().map(serde_json::Value::from);
            let avatar = profile.avatar_url.as_ref().map(|u| serde_json::Value::from(u.as_str()));
            if map.get("displayname") == name.as_ref() && map.get("avatar_url") == avatar.as_ref() {
                continue;
            }
            for (key, value) in [("displayname", name), ("avatar_url", avatar)] {
                match value {
                    Some(value) => map.insert(key.to_owned(), value),
                    None => map.remove(key),
                };
            }
            // The join reason belongs to the join, not to the profile change.
            map.remove("reason");
            let template = EventTemplate::state(TimelineEventType::RoomMember, user_id.as_str(), content);
            if let Err(error) = self.timeline.append(&lock, user_id, template, None) {
                tracing::warn!(%room_id, %error, "profile change not carried into room");
            }
        }
        Ok(())
    }

    /// Append `target`'s member event with `membership`, sent by `sender`.
    fn set_membership(
        &self,
        lock: &RoomLock,
        sender: &UserId,
        target: &UserId,
        membership: &str,
        reason: Option<&str>,
        content: JsonMap<String, JsonValue>,
    ) -> Result<OwnedEventId> {
        let template = member_template_with(&self.users, target, membership, reason, false, content)?;
        Ok(self.timeline.append(lock, sender, template, None)?.pdu.event_id.clone())
    }

    /// The ID of `user_id`'s member event, for a change that was already in place.
    fn current_member_event(&self, room_id: &RoomId, user_id: &UserId) -> Result<OwnedEventId> {
        self.timeline
            .state_event(room_id, &StateEventType::RoomMember, user_id.as_str())?
            .map(|event| event.pdu.event_id.clone())
            .ok_or_else(|| Error::internal(format!("membership of {user_id} without a member event")))
    }

    fn ensure_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        if !self.members.is_joined(room_id, user_id)? {
            return Err(Error::forbidden(format!("{user_id} is not in room {room_id}")));
        }
        Ok(())
    }
}
