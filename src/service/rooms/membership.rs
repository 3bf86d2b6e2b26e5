//! Membership changes a client asks for: join (by ID or alias, including restricted rooms),
//! invite, leave, kick, ban, unban, knock and forget. Each builds the member event and
//! leaves the verdict to the auth rules, after the checks Synapse makes first so clients get
//! the same answers.

use std::sync::Arc;

use ruma::{
    OwnedRoomId, OwnedServerName, RoomId, RoomOrAliasId, UserId,
    events::{
        StateEventType, TimelineEventType,
        room::{
            join_rules::{AllowRule, JoinRule, RoomJoinRulesEventContent},
            member::MembershipState,
        },
    },
};
use serde_json::json;

use super::{
    aliases::Aliases,
    members::Memberships,
    timeline::{RoomLock, Timeline},
};
use crate::{Error, Result, matrix::pdu::EventTemplate, service::users::Users};

/// The `m.room.member` template for `user_id`, with their profile for joins and invites.
pub fn member_template(
    users: &Users,
    user_id: &UserId,
    membership: &str,
    reason: Option<&str>,
    is_direct: bool,
) -> Result<EventTemplate> {
    let mut content = json!({ "membership": membership });
    let map = content.as_object_mut().expect("json! object literal");
    if matches!(membership, "join" | "invite" | "knock") {
        if let Some(profile) = users.profile(user_id)? {
            if let Some(name) = profile.displayname {
                map.insert("displayname".to_owned(), name.into());
            }
            if let Some(url) = profile.avatar_url {
                map.insert("avatar_url".to_owned(), url.as_str().into());
            }
        }
    }
    if let Some(reason) = reason {
        map.insert("reason".to_owned(), reason.into());
    }
    if is_direct {
        map.insert("is_direct".to_owned(), true.into());
    }
    Ok(EventTemplate::state(TimelineEventType::RoomMember, user_id.as_str(), content))
}

pub struct MembershipActions {
    server_name: OwnedServerName,
    timeline: Arc<Timeline>,
    members: Arc<Memberships>,
    users: Arc<Users>,
    aliases: Arc<Aliases>,
}

impl MembershipActions {
    pub fn new(
        server_name: OwnedServerName,
        timeline: Arc<Timeline>,
        members: Arc<Memberships>,
        users: Arc<Users>,
        aliases: Arc<Aliases>,
    ) -> Self {
        Self { server_name, timeline, members, users, aliases }
    }

    /// The room an ID or alias names. Rooms this server is not in would need federation.
    pub fn resolve(&self, room: &RoomOrAliasId) -> Result<OwnedRoomId> {
        match <&RoomId>::try_from(room) {
            Ok(room_id) => Ok(room_id.to_owned()),
            Err(alias) => self.aliases.resolve(alias),
        }
    }

    /// Join a room. Joining again is a no-op that answers the room ID.
    pub async fn join(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        reason: Option<&str>,
    ) -> Result<OwnedRoomId> {
        let lock = self.timeline.lock_room(room_id).await;
        if self.timeline.state_event(room_id, &StateEventType::RoomCreate, "")?.is_none() {
            // The room is unknown here; joining it would need another server.
            return Err(Error::not_found("No known servers to join this room through"));
        }
        let membership = self.members.membership(room_id, user_id)?;
        if membership == Some(MembershipState::Join) {
            return Ok(room_id.to_owned());
        }
        let mut template = member_template(&self.users, user_id, "join", reason, false)?;
        if membership != Some(MembershipState::Invite) {
            if let Some(authoriser) = self.restricted_join_authoriser(room_id, user_id)? {
                template.content["join_authorised_via_users_server"] = json!(authoriser);
            }
        }
        self.timeline.append(&lock, user_id, template, None)?;
        Ok(room_id.to_owned())
    }

    /// For a restricted room the user is not invited to: a local member who may invite, if
    /// the user is joined to one of the rooms the join rule allows. `None` for other rooms;
    /// `M_FORBIDDEN` when no allow rule is met.
    fn restricted_join_authoriser(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<String>> {
        let Some(event) = self.timeline.state_event(room_id, &StateEventType::RoomJoinRules, "")? else {
            return Ok(None);
        };
        let Ok(content) = event.pdu.content_as::<RoomJoinRulesEventContent>() else { return Ok(None) };
        let allow = match &content.join_rule {
            JoinRule::Restricted(r) | JoinRule::KnockRestricted(r) => &r.allow,
            _ => return Ok(None),
        };
        let mut allowed = false;
        for rule in allow {
            if let AllowRule::RoomMembership(membership) = rule {
                if self.members.is_joined(&membership.room_id, user_id)? {
                    allowed = true;
                    break;
                }
            }
        }
        if !allowed {
            return Err(Error::forbidden(
                "You do not belong to any of the rooms this room's join rule allows",
            ));
        }
        let power = self.timeline.power_levels(room_id)?;
        let authoriser = self
            .members
            .members_with(room_id, &MembershipState::Join)?
            .into_iter()
            .filter(|member| member.server_name() == self.server_name && power.user_can_invite(member))
            .max_by_key(|member| power.for_user(member))
            .ok_or_else(|| Error::forbidden("No member of this server can authorise the join"))?;
        Ok(Some(authoriser.to_string()))
    }

    /// Invite `target`. Only local accounts can be invited while federation is off.
    pub async fn invite(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        if target.server_name() != self.server_name {
            return Err(Error::forbidden(format!("Cannot invite {target}: federation is disabled")));
        }
        if !self.users.exists(target)? {
            return Err(Error::not_found(format!("Unknown user {target}")));
        }
        let lock = self.timeline.lock_room(room_id).await;
        self.ensure_joined(room_id, sender)?;
        match self.members.membership(room_id, target)? {
            Some(MembershipState::Join) => {
                return Err(Error::forbidden(format!("{target} is already in the room")));
            }
            Some(MembershipState::Ban) => {
                return Err(Error::forbidden(format!("{target} is banned from the room")));
            }
            Some(MembershipState::Invite) => return Ok(()),
            _ => {}
        }
        self.set_membership(&lock, sender, target, "invite", reason)
    }

    /// Leave a room, reject an invite or retract a knock.
    pub async fn leave(&self, user_id: &UserId, room_id: &RoomId, reason: Option<&str>) -> Result<()> {
        let lock = self.timeline.lock_room(room_id).await;
        match self.members.membership(room_id, user_id)? {
            Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock) => {}
            Some(MembershipState::Leave | MembershipState::Ban) => return Ok(()),
            _ => return Err(Error::forbidden(format!("{user_id} is not in room {room_id}"))),
        }
        self.set_membership(&lock, user_id, user_id, "leave", reason)
    }

    /// Kick `target` (who must be in the room, invited or knocking).
    pub async fn kick(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let lock = self.timeline.lock_room(room_id).await;
        self.ensure_joined(room_id, sender)?;
        if !matches!(
            self.members.membership(room_id, target)?,
            Some(MembershipState::Join | MembershipState::Invite | MembershipState::Knock)
        ) {
            return Err(Error::forbidden(format!("{target} is not in the room")));
        }
        self.set_membership(&lock, sender, target, "leave", reason)
    }

    /// Ban `target`, whether or not they are in the room.
    pub async fn ban(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let lock = self.timeline.lock_room(room_id).await;
        self.ensure_joined(room_id, sender)?;
        self.set_membership(&lock, sender, target, "ban", reason)
    }

    /// Lift a ban; `target` must be banned.
    pub async fn unban(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let lock = self.timeline.lock_room(room_id).await;
        self.ensure_joined(room_id, sender)?;
        if self.members.membership(room_id, target)? != Some(MembershipState::Ban) {
            return Err(Error::forbidden(format!("{target} is not banned")));
        }
        self.set_membership(&lock, sender, target, "leave", reason)
    }

    /// Ask to join a room whose join rule is `knock` or `knock_restricted`.
    pub async fn knock(&self, user_id: &UserId, room_id: &RoomId, reason: Option<&str>) -> Result<()> {
        let lock = self.timeline.lock_room(room_id).await;
        if self.timeline.state_event(room_id, &StateEventType::RoomCreate, "")?.is_none() {
            return Err(Error::not_found("No known servers to knock on this room through"));
        }
        match self.members.membership(room_id, user_id)? {
            Some(MembershipState::Join) => return Err(Error::forbidden("You are already in the room")),
            Some(MembershipState::Invite) => {
                return Err(Error::forbidden("You are already invited to the room"));
            }
            Some(MembershipState::Ban) => return Err(Error::forbidden("You are banned from the room")),
            Some(MembershipState::Knock) => return Ok(()),
            _ => {}
        }
        self.set_membership(&lock, user_id, user_id, "knock", reason)
    }

    /// Forget a room the user has left: it stops appearing to them.
    pub fn forget(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        let Some(record) = self.members.get(room_id, user_id)? else { return Ok(()) };
        match MembershipState::from(record.membership.as_str()) {
            MembershipState::Leave | MembershipState::Ban => self.members.forget(room_id, user_id, record),
            _ => Err(Error::new(
                ruma::api::error::ErrorKind::Unknown,
                "You must leave the room before forgetting it",
            )),
        }
    }

    /// Append `target`'s member event with `membership`, sent by `sender`.
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

    fn set_membership(
        &self,
        lock: &RoomLock,
        sender: &UserId,
        target: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        let template = member_template(&self.users, target, membership, reason, false)?;
        self.timeline.append(lock, sender, template, None)?;
        Ok(())
    }

    fn ensure_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        if !self.members.is_joined(room_id, user_id)? {
            return Err(Error::forbidden(format!("{user_id} is not in room {room_id}")));
        }
        Ok(())
    }
}
