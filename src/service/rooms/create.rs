//! `POST /createRoom`: validates the request up front, then sends the spec's event sequence
//! (create, creator's join, power levels, canonical alias, preset state, initial state, name,
//! topic, invites) under the new room's lock, and binds the alias and directory entry.

use std::{collections::HashSet, sync::Arc};

use ruma::{
    OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, UserId,
    api::{
        client::room::{Visibility, create_room::v3::Request as CreateRoomRequest},
        error::ErrorKind,
    },
    events::TimelineEventType,
};
use serde_json::{Map, Value as JsonValue, json};

use super::{
    aliases::Aliases,
    directory::Directory,
    membership::member_template,
    timeline::{RoomLock, Timeline},
};
use crate::{
    Error, Result,
    config::Config,
    matrix::{
        pdu::EventTemplate,
        room_presets::{default_power_levels, default_preset, preset_state},
        room_version,
    },
    service::{federation::RoomFederation, users::Users},
};

pub struct RoomCreation {
    config: Arc<Config>,
    timeline: Arc<Timeline>,
    users: Arc<Users>,
    aliases: Arc<Aliases>,
    directory: Arc<Directory>,
    /// Set when federation is on: invitees of other servers are invited through them.
    rooms: Option<Arc<RoomFederation>>,
}

/// One `initial_state` entry, parsed loosely (content is only required to be an object).
struct InitialState {
    kind: String,
    state_key: String,
    content: JsonValue,
}

impl RoomCreation {
    pub fn new(
        config: Arc<Config>,
        timeline: Arc<Timeline>,
        users: Arc<Users>,
        aliases: Arc<Aliases>,
        directory: Arc<Directory>,
        rooms: Option<Arc<RoomFederation>>,
    ) -> Self {
        Self { config, timeline, users, aliases, directory, rooms }
    }

    pub async fn create_room(&self, sender: &UserId, req: CreateRoomRequest) -> Result<OwnedRoomId> {
        let version = req.room_version.clone().unwrap_or_else(|| self.config.default_room_version.clone());
        let rules = room_version::rules(&version).ok_or_else(|| {
            Error::new(
                ErrorKind::UnsupportedRoomVersion,
                format!("This server does not support room version {version}"),
            )
        })?;
        let public = req.visibility == Visibility::Public;
        let preset = req.preset.clone().unwrap_or_else(|| default_preset(public));

        let alias = match &req.room_alias_name {
            Some(name) => Some(self.new_alias(name)?),
            None => None,
        };
        if !req.invite_3pid.is_empty() {
            return Err(Error::invalid_param("Third-party invites are not supported by this server"));
        }
        // Room creation writes events in the sender's name, which a suspended account may
        // not do (MSC3823).
        self.users.ensure_not_suspended(sender, "Creating rooms")?;
        let mut invitees = self.checked_invitees(sender, &req.invite)?;
        // A shadow-banned creator gets the room without its invites (as Synapse).
        if self.users.is_shadow_banned(sender)? {
            invitees.clear();
        }
        let initial_state = parse_initial_state(&req)?;

        // m.room.create content: the caller's extra fields, then what the server decides.
        let mut create = match &req.creation_content {
            Some(raw) => object(raw.json().get(), "creation_content")?,
            None => Map::new(),
        };
        create.insert("room_version".to_owned(), json!(version));
        if !rules.authorization.use_room_create_sender {
            create.insert("creator".to_owned(), json!(sender));
        } else {
            create.remove("creator");
        }
        let trusted = preset == ruma::api::client::room::create_room::v3::RoomPreset::TrustedPrivateChat;
        if rules.authorization.additional_room_creators && trusted && !invitees.is_empty() {
            let mut creators: Vec<JsonValue> =
                create.get("additional_creators").and_then(JsonValue::as_array).cloned().unwrap_or_default();
            creators.extend(invitees.iter().map(|u| json!(u)));
            create.insert("additional_creators".to_owned(), JsonValue::Array(creators));
        }
        let creators = creators_of(sender, &create, rules.authorization.explicitly_privilege_room_creators);

        // Power levels: initial_state's, or the defaults; then the override, key by key.
        let invitee_refs: Vec<&UserId> = invitees.iter().map(|u| u.as_ref()).collect();
        let mut power_levels = match initial_state.iter().find(|s| s.kind == "m.room.power_levels") {
            Some(given) => given.content.as_object().cloned().unwrap_or_default(),
            None => default_power_levels(&rules.authorization, sender, &preset, &invitee_refs)
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        if let Some(raw) = &req.power_level_content_override {
            power_levels.extend(object(raw.json().get(), "power_level_content_override")?);
        }
        if rules.authorization.explicitly_privilege_room_creators
            && let Some(users) = power_levels.get("users").and_then(JsonValue::as_object)
            && let Some(creator) = users.keys().find(|u| creators.contains(u.as_str()))
        {
            return Err(Error::new(
                ErrorKind::InvalidRoomState,
                format!(
                    "Room creators have unlimited power in room version {version}; {creator} cannot be listed in power levels"
                ),
            ));
        }

        let (lock, create_event) =
            self.timeline.create_room(sender, &version, JsonValue::Object(create)).await?;
        let room_id = create_event.pdu.room_id.clone();
        let send = |template: EventTemplate| -> Result<()> {
            self.timeline.append(&lock, sender, template, None).map(drop).map_err(invalid_room_state)
        };

        self.timeline.append(
            &lock,
            sender,
            member_template(&self.users, sender, "join", None, false)?,
            None,
        )?;
        send(EventTemplate::state(TimelineEventType::RoomPowerLevels, "", JsonValue::Object(power_levels)))?;
        if let Some(alias) = &alias {
            send(EventTemplate::state(TimelineEventType::RoomCanonicalAlias, "", json!({ "alias": alias })))?;
        }
        let overridden: HashSet<(&str, &str)> =
            initial_state.iter().map(|s| (s.kind.as_str(), s.state_key.as_str())).collect();
        for (kind, content) in preset_state(&preset) {
            if !overridden.contains(&(kind, "")) {
                send(EventTemplate::state(kind, "", content))?;
            }
        }
        for state in initial_state.iter().filter(|s| s.kind != "m.room.power_levels") {
            send(EventTemplate::state(state.kind.as_str(), state.state_key.clone(), state.content.clone()))?;
        }
        if let Some(name) = &req.name {
            send(EventTemplate::state(TimelineEventType::RoomName, "", json!({ "name": name })))?;
        }
        if let Some(topic) = &req.topic {
            let content = json!({
                "topic": topic,
                "m.topic": [{ "body": topic, "mimetype": "text/plain" }],
            });
            send(EventTemplate::state(TimelineEventType::RoomTopic, "", content))?;
        }
        self.invite_all(&lock, sender, &invitees, req.is_direct).await?;
        drop(lock);

        if let Some(alias) = &alias {
            self.aliases.create(alias, &room_id, sender)?;
        }
        if public {
            self.directory.publish(&room_id, true)?;
        }
        tracing::info!(room_id = %room_id, version = %version, "room created");
        Ok(room_id)
    }

    /// Invite each invitee; one of another server goes through its server, and one whose
    /// server refuses or cannot be reached is left out (logged), as an unknown local
    /// invitee is: the room is still created.
    async fn invite_all(
        &self,
        lock: &RoomLock,
        sender: &UserId,
        invitees: &[OwnedUserId],
        is_direct: bool,
    ) -> Result<()> {
        for invitee in invitees {
            let template = member_template(&self.users, invitee, "invite", None, is_direct)?;
            if invitee.server_name() != self.config.server_name
                && let Some(rooms) = &self.rooms
            {
                if let Err(error) = rooms.invite_remote(lock, sender, &template).await {
                    tracing::warn!(%sender, %invitee, %error, "createRoom: a remote invite failed");
                }
                continue;
            }
            self.timeline.append(lock, sender, template, None)?;
        }
        Ok(())
    }

    /// `#name:server` for a requested `room_alias_name`, if well-formed and free.
    fn new_alias(&self, name: &str) -> Result<OwnedRoomAliasId> {
        if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
            return Err(Error::invalid_param("Invalid characters in room alias name"));
        }
        let alias = RoomAliasId::parse(format!("#{name}:{}", self.config.server_name))
            .map_err(|e| Error::invalid_param(format!("Invalid room alias: {e}")))?;
        if self.aliases.get(&alias)?.is_some() {
            return Err(Error::new(ErrorKind::RoomInUse, "Room alias already taken"));
        }
        Ok(alias)
    }

    /// Invitees must not be the sender, and with federation off must be local accounts. An invitee
    /// with no account here is left out and logged, and the room is still created, as
    /// Synapse does: one mistyped name must not cost the client the whole room.
    fn checked_invitees(&self, sender: &UserId, invite: &[OwnedUserId]) -> Result<Vec<OwnedUserId>> {
        let mut seen = HashSet::new();
        let mut invitees = Vec::new();
        for user in invite {
            if user == sender || !seen.insert(user.clone()) {
                continue;
            }
            if user.server_name() != self.config.server_name {
                if self.rooms.is_none() {
                    return Err(Error::forbidden(format!("Cannot invite {user}: federation is disabled")));
                }
                invitees.push(user.clone());
                continue;
            }
            if !self.users.exists(user)? {
                tracing::warn!(%sender, invitee = %user, "createRoom: not inviting an unknown user");
                continue;
            }
            invitees.push(user.clone());
        }
        Ok(invitees)
    }
}

/// The room's creators: the sender plus `additional_creators` (v12+ only).
fn creators_of(sender: &UserId, create: &Map<String, JsonValue>, v12: bool) -> HashSet<String> {
    let mut creators = HashSet::from([sender.to_string()]);
    if v12 && let Some(extra) = create.get("additional_creators").and_then(JsonValue::as_array) {
        creators.extend(extra.iter().filter_map(|u| u.as_str().map(str::to_owned)));
    }
    creators
}

fn parse_initial_state(req: &CreateRoomRequest) -> Result<Vec<InitialState>> {
    let mut states = Vec::new();
    for raw in &req.initial_state {
        let value: JsonValue = serde_json::from_str(raw.json().get())
            .map_err(|e| Error::bad_json(format!("initial_state: {e}")))?;
        let kind = value
            .get("type")
            .and_then(JsonValue::as_str)
            .ok_or_else(|| Error::bad_json("initial_state: missing type"))?;
        if kind == "m.room.create" || kind == "m.room.member" {
            return Err(Error::new(
                ErrorKind::InvalidRoomState,
                format!("{kind} cannot be set in initial_state"),
            ));
        }
        let state_key = match value.get("state_key") {
            None => String::new(),
            Some(JsonValue::String(key)) => key.clone(),
            Some(_) => return Err(Error::bad_json("initial_state: state_key must be a string")),
        };
        let content = value.get("content").cloned().unwrap_or_else(|| json!({}));
        if !content.is_object() {
            return Err(Error::bad_json("initial_state: content must be an object"));
        }
        states.push(InitialState { kind: kind.to_owned(), state_key, content });
    }
    Ok(states)
}

fn object(json: &str, field: &str) -> Result<Map<String, JsonValue>> {
    match serde_json::from_str(json) {
        Ok(JsonValue::Object(map)) => Ok(map),
        _ => Err(Error::bad_json(format!("{field} must be a JSON object"))),
    }
}

/// A refusal while sending the requested state means the request asked for invalid state.
fn invalid_room_state(error: Error) -> Error {
    match error {
        Error::Matrix { kind: ErrorKind::Forbidden | ErrorKind::BadJson, message } => {
            Error::new(ErrorKind::InvalidRoomState, message)
        }
        other => other,
    }
}
