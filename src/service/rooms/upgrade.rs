//! Room upgrades (`POST /rooms/{roomId}/upgrade`), as the spec's server behaviour lists:
//! a replacement room whose create event names its predecessor, the transferable state,
//! bans and pending invites carried over, local aliases moved, then a tombstone and locked
//! power levels in the old room.

use std::sync::Arc;

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId,
    api::error::ErrorKind,
    events::{StateEventType, TimelineEventType, room::member::MembershipState},
};
use serde_json::{Value as JsonValue, json};

use super::{
    aliases::Aliases,
    members::Memberships,
    membership::member_template,
    state::RoomStates,
    timeline::{Timeline, rules_of},
};
use crate::{
    Error, Result,
    matrix::{pdu::EventTemplate, power_levels, room_version},
    service::users::Users,
};

/// State copied to the replacement room (the spec's recommended list, power levels last).
const TRANSFERRED: [&str; 8] = [
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
];

pub struct RoomUpgrades {
    timeline: Arc<Timeline>,
    states: Arc<RoomStates>,
    members: Arc<Memberships>,
    aliases: Arc<Aliases>,
    users: Arc<Users>,
    /// One upgrade at a time, so a room is never replaced twice by racing requests.
    running: tokio::sync::Mutex<()>,
}

impl RoomUpgrades {
    pub fn new(
        timeline: Arc<Timeline>,
        states: Arc<RoomStates>,
        members: Arc<Memberships>,
        aliases: Arc<Aliases>,
        users: Arc<Users>,
    ) -> Self {
        Self { timeline, states, members, aliases, users, running: tokio::sync::Mutex::new(()) }
    }

    pub async fn upgrade(
        &self,
        sender: &UserId,
        old_room: &RoomId,
        new_version: &RoomVersionId,
        additional_creators: Vec<OwnedUserId>,
    ) -> Result<OwnedRoomId> {
        let _running = self.running.lock().await;
        let new_rules = room_version::rules(new_version).ok_or_else(|| {
            Error::new(
                ErrorKind::UnsupportedRoomVersion,
                format!("This server does not support room version {new_version}"),
            )
        })?;
        let old_record = self.states.room(old_room)?.ok_or_else(|| Error::not_found("Unknown room"))?;
        if !self.members.is_joined(old_room, sender)? {
            return Err(Error::forbidden(format!("{sender} is not in room {old_room}")));
        }
        let old_power = self.timeline.power_levels(old_room)?;
        if !old_power.user_can_send_state(sender, StateEventType::RoomTombstone) {
            return Err(Error::forbidden("You don't have permission to upgrade this room"));
        }
        if self.timeline.state_event(old_room, &StateEventType::RoomTombstone, "")?.is_some() {
            return Err(Error::bad_json("This room has already been upgraded"));
        }
        let old_rules = rules_of(&old_record.version)?;
        let content_of = |kind: &str| -> Result<Option<JsonValue>> {
            Ok(self.timeline.state_event(old_room, &kind.into(), "")?.map(|e| e.pdu.content_value()))
        };

        // The create event: predecessor, and the type and federation flag of the old room.
        let old_create = content_of("m.room.create")?.unwrap_or_default();
        let mut predecessor = json!({ "room_id": old_room });
        if !new_rules.authorization.room_create_event_id_as_room_id
            && let Some(last) = old_record.forward_extremities.first()
        {
            predecessor["event_id"] = json!(last);
        }
        let mut create = json!({ "room_version": new_version, "predecessor": predecessor });
        for key in ["type", "m.federate"] {
            if let Some(value) = old_create.get(key) {
                create[key] = value.clone();
            }
        }
        if !new_rules.authorization.use_room_create_sender {
            create["creator"] = json!(sender);
        }
        let mut creators = vec![sender.to_owned()];
        if new_rules.authorization.additional_room_creators && !additional_creators.is_empty() {
            create["additional_creators"] = json!(additional_creators);
            creators.extend(additional_creators);
        }

        // Power levels: the old ones, with creators unlisted where the version privileges
        // them, and the upgrader listed where it does not.
        // Older rooms may hold levels written as strings, which the new version may refuse.
        let old_power_levels = match content_of("m.room.power_levels")? {
            Some(content) => Some(power_levels::to_integers(&content).map_err(|reason| {
                Error::new(
                    ErrorKind::InvalidRoomState,
                    format!("The room's power levels cannot be carried over: {reason}"),
                )
            })?),
            None => None,
        };
        let mut power_levels = old_power_levels.clone().unwrap_or_else(|| json!({}));
        let users = power_levels.as_object_mut().map(|pl| pl.entry("users").or_insert_with(|| json!({})));
        if let Some(JsonValue::Object(users)) = users {
            if new_rules.authorization.explicitly_privilege_room_creators {
                for creator in &creators {
                    users.remove(creator.as_str());
                }
            } else if old_rules.authorization.explicitly_privilege_room_creators {
                users.insert(sender.to_string(), json!(100));
            }
        }

        let (lock, create_event) = self.timeline.create_room(sender, new_version, create).await?;
        let new_room = create_event.pdu.room_id.clone();
        self.timeline.append(
            &lock,
            sender,
            member_template(&self.users, sender, "join", None, false)?,
            None,
        )?;
        // Before the power levels arrive the creator may send anything, so the copied state
        // never fails on the upgrader's level in the new room.
        for kind in TRANSFERRED {
            if let Some(content) = content_of(kind)? {
                self.timeline.append(&lock, sender, EventTemplate::state(kind, "", content), None)?;
            }
        }
        for (user, record) in self.members.members(old_room)? {
            let carried = match MembershipState::from(record.membership.as_str()) {
                MembershipState::Ban => "ban",
                MembershipState::Invite if self.users.exists(&user)? => "invite",
                _ => continue,
            };
            if user != sender {
                self.timeline.append(
                    &lock,
                    sender,
                    member_template(&self.users, &user, carried, None, false)?,
                    None,
                )?;
            }
        }
        self.timeline.append(
            &lock,
            sender,
            EventTemplate::state(TimelineEventType::RoomPowerLevels, "", power_levels.clone()),
            None,
        )?;

        self.aliases.move_all(old_room, &new_room)?;
        let canonical = content_of("m.room.canonical_alias")?;
        if let Some(canonical) = &canonical {
            self.timeline.append(
                &lock,
                sender,
                EventTemplate::state("m.room.canonical_alias", "", canonical.clone()),
                None,
            )?;
        }
        drop(lock);

        // Close the old room: tombstone, then power levels that stop ordinary members.
        let old_lock = self.timeline.lock_room(old_room).await;
        let tombstone = json!({ "body": "This room has been replaced", "replacement_room": new_room });
        self.timeline.append(
            &old_lock,
            sender,
            EventTemplate::state(TimelineEventType::RoomTombstone, "", tombstone),
            None,
        )?;
        if canonical.is_some() {
            self.timeline.append(
                &old_lock,
                sender,
                EventTemplate::state("m.room.canonical_alias", "", json!({})),
                None,
            )?;
        }
        if let Some(mut old_pl) = old_power_levels {
            let users_default = old_pl.get("users_default").and_then(JsonValue::as_i64).unwrap_or(0);
            let restricted = std::cmp::max(50, users_default + 1);
            old_pl["events_default"] = json!(restricted);
            old_pl["invite"] = json!(restricted);
            let appended = self.timeline.append(
                &old_lock,
                sender,
                EventTemplate::state(TimelineEventType::RoomPowerLevels, "", old_pl),
                None,
            );
            if let Err(e) = appended {
                // The upgrader may lack the power to change power levels; the tombstone stands.
                tracing::info!(room_id = %old_room, error = %e, "could not restrict the old room's power levels");
            }
        }
        tracing::info!(old = %old_room, new = %new_room, version = %new_version, "room upgraded");
        Ok(new_room)
    }
}
