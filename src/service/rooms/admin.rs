//! What server admins do with rooms (Synapse's admin API, as synapse-admin and Draupnir call
//! it): list rooms with their details, read any room's members, state and history whatever
//! the admin's membership, block rooms, raise a local member to room admin, join local
//! users to rooms, and delete rooms (every local member made to leave, optionally a
//! replacement room for them with the aliases moved to it, optionally a block and a purge),
//! at once or as a background task whose status is kept (table `room_deletions`). Event
//! reports are read and resolved here too. Each admin action is one method.

use std::{cmp::Ordering, sync::Arc};

use ruma::{
    EventId, OwnedRoomAliasId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, RoomOrAliasId, UserId,
    api::client::{filter::RoomEventFilter, room::create_room},
    events::{
        StateEventType,
        room::{member::MembershipState, power_levels::UserPowerLevel},
    },
    serde::Raw,
};
use serde_json::{Map as JsonMap, Value as JsonValue, json, value::RawValue as RawJsonValue};

use super::{
    actions::RoomActions,
    aliases::Aliases,
    blocked::BlockedRooms,
    create::RoomCreation,
    directory::Directory,
    events::Events,
    history::{ContextPage, History, MessagesPage},
    members::Memberships,
    membership::MembershipActions,
    purge::RoomPurge,
    render::{EventRenderer, Rendering, Shape, Viewer},
    reports::Reports,
    state::RoomStates,
    timeline::Timeline,
};
use crate::{
    Error, Result,
    service::{clock::Clock, devices::Devices, passwords::random_string, users::Users},
    storage::{
        Direction, KvStore, Table,
        kv::KeyRange,
        tables::{ROOM_DELETIONS, RoomDeletionRecord},
    },
};

/// The sort keys of the room list. `alphabetical` and `size` are Synapse's deprecated
/// names for `name` and `joined_members`.
const ROOM_ORDERS: &[&str] = &[
    "name",
    "canonical_alias",
    "joined_members",
    "joined_local_members",
    "version",
    "creator",
    "encryption",
    "federatable",
    "public",
    "join_rules",
    "guest_access",
    "history_visibility",
    "state_events",
    "alphabetical",
    "size",
];

/// Synapse's defaults for the replacement room of a deletion.
const DEFAULT_ROOM_NAME: &str = "Content Violation Notification";
const DEFAULT_MESSAGE: &str =
    "Sharing illegal content on this server is not permitted and rooms in violation will be blocked.";

/// The action name of a room deletion in the scheduled task list, as Synapse names it.
pub const DELETE_ACTION: &str = "shutdown_and_purge_room";

/// What the room list asks for.
#[derive(Clone, Debug, Default)]
pub struct RoomListQuery {
    pub from: usize,
    pub limit: usize,
    pub order_by: Option<String>,
    pub backwards: bool,
    pub search_term: Option<String>,
    pub public_rooms: Option<bool>,
    pub empty_rooms: Option<bool>,
}

/// One page of the room list.
pub struct RoomList {
    pub rooms: Vec<JsonValue>,
    pub offset: usize,
    pub total: usize,
    pub next_batch: Option<usize>,
    pub prev_batch: Option<usize>,
}

/// The options of a room deletion, as Synapse takes them.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
pub struct DeleteOptions {
    #[serde(default)]
    pub block: bool,
    #[serde(default = "yes")]
    pub purge: bool,
    #[serde(default)]
    pub force_purge: bool,
    #[serde(default)]
    pub new_room_user_id: Option<OwnedUserId>,
    #[serde(default)]
    pub room_name: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

fn yes() -> bool {
    true
}

/// What a deletion did.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ShutdownOutcome {
    pub kicked_users: Vec<OwnedUserId>,
    pub failed_to_kick_users: Vec<OwnedUserId>,
    pub local_aliases: Vec<OwnedRoomAliasId>,
    pub new_room_id: Option<OwnedRoomId>,
}

/// A page of event reports.
pub struct ReportList {
    pub reports: Vec<JsonValue>,
    pub total: usize,
    pub next_token: Option<usize>,
}

/// What the event report list asks for.
#[derive(Clone, Debug, Default)]
pub struct ReportQuery {
    pub from: usize,
    pub limit: usize,
    pub forwards: bool,
    pub user_id: Option<String>,
    pub room_id: Option<String>,
    pub event_sender_user_id: Option<String>,
}

/// The scheduled task list's filters.
#[derive(Clone, Debug, Default)]
pub struct TaskQuery {
    pub action_name: Option<String>,
    pub resource_id: Option<String>,
    pub job_status: Option<String>,
    pub max_timestamp: Option<u64>,
}

/// The facts a room list entry shows, with what it sorts by.
struct RoomEntry {
    json: JsonMap<String, JsonValue>,
}

impl RoomEntry {
    fn get(&self, key: &str) -> &JsonValue {
        self.json.get(key).unwrap_or(&JsonValue::Null)
    }
}

/// Compare two JSON values of one column: numbers as numbers, strings as strings, booleans
/// false first, nulls last.
fn compare_json(a: &JsonValue, b: &JsonValue) -> Ordering {
    match (a, b) {
        (JsonValue::Null, JsonValue::Null) => Ordering::Equal,
        (JsonValue::Null, _) => Ordering::Greater,
        (_, JsonValue::Null) => Ordering::Less,
        (JsonValue::Number(x), JsonValue::Number(y)) => {
            x.as_f64().unwrap_or(0.0).partial_cmp(&y.as_f64().unwrap_or(0.0)).unwrap_or(Ordering::Equal)
        }
        (JsonValue::Bool(x), JsonValue::Bool(y)) => x.cmp(y),
        (JsonValue::String(x), JsonValue::String(y)) => x.cmp(y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

pub struct RoomAdmin {
    server_name: OwnedServerName,
    timeline: Arc<Timeline>,
    events: Arc<Events>,
    states: Arc<RoomStates>,
    members: Arc<Memberships>,
    aliases: Arc<Aliases>,
    directory: Arc<Directory>,
    history: Arc<History>,
    renderer: Arc<EventRenderer>,
    blocked: Arc<BlockedRooms>,
    reports: Arc<Reports>,
    creation: Arc<RoomCreation>,
    membership: Arc<MembershipActions>,
    actions: Arc<RoomActions>,
    purge: Arc<RoomPurge>,
    users: Arc<Users>,
    devices: Arc<Devices>,
    clock: Arc<dyn Clock>,
    deletions: Table<String, RoomDeletionRecord>,
    /// Serialises the read-modify-write of deletion records.
    deletions_write: std::sync::Mutex<()>,
}

impl RoomAdmin {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        server_name: OwnedServerName,
        store: &Arc<dyn KvStore>,
        timeline: Arc<Timeline>,
        events: Arc<Events>,
        states: Arc<RoomStates>,
        members: Arc<Memberships>,
        aliases: Arc<Aliases>,
        directory: Arc<Directory>,
        history: Arc<History>,
        renderer: Arc<EventRenderer>,
        blocked: Arc<BlockedRooms>,
        reports: Arc<Reports>,
        creation: Arc<RoomCreation>,
        membership: Arc<MembershipActions>,
        actions: Arc<RoomActions>,
        purge: Arc<RoomPurge>,
        users: Arc<Users>,
        devices: Arc<Devices>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let admin = Self {
            server_name,
            timeline,
            events,
            states,
            members,
            aliases,
            directory,
            history,
            renderer,
            blocked,
            reports,
            creation,
            membership,
            actions,
            purge,
            users,
            devices,
            clock,
            deletions: ROOM_DELETIONS.open(store),
            deletions_write: std::sync::Mutex::new(()),
        };
        admin.fail_interrupted_deletions()?;
        Ok(admin)
    }

    // ---- reading rooms ----

    /// The facts of a room as the room list shows them.
    fn entry(&self, room_id: &RoomId) -> Result<Option<RoomEntry>> {
        let Some(room) = self.states.room(room_id)? else { return Ok(None) };
        let state = self.states.state_of_group(room.state_group)?;
        let content = |kind: StateEventType| -> Result<Option<(OwnedUserId, JsonValue)>> {
            match state.get(&(kind, String::new())) {
                Some(id) => Ok(self.events.get(id)?.map(|e| (e.pdu.sender.clone(), e.pdu.content_value()))),
                None => Ok(None),
            }
        };
        let field = |kind: StateEventType, key: &str| -> Result<JsonValue> {
            Ok(content(kind)?
                .and_then(|(_, c)| c.get(key).cloned())
                .filter(|v| v.is_string())
                .unwrap_or(JsonValue::Null))
        };
        let joined = self.members.members_with(room_id, &MembershipState::Join)?;
        let local = joined.iter().filter(|u| u.server_name() == self.server_name).count();
        let create = content(StateEventType::RoomCreate)?;
        let creator = create.as_ref().map(|(sender, _)| json!(sender)).unwrap_or(JsonValue::Null);
        let create_content = create.map(|(_, c)| c).unwrap_or_default();
        let federatable = create_content.get("m.federate").and_then(JsonValue::as_bool).unwrap_or(true);
        let room_type =
            create_content.get("type").filter(|t| t.is_string()).cloned().unwrap_or(JsonValue::Null);
        let mut json = JsonMap::new();
        json.insert("room_id".to_owned(), json!(room_id));
        json.insert("name".to_owned(), field(StateEventType::RoomName, "name")?);
        json.insert("canonical_alias".to_owned(), field(StateEventType::RoomCanonicalAlias, "alias")?);
        json.insert("joined_members".to_owned(), json!(joined.len()));
        json.insert("joined_local_members".to_owned(), json!(local));
        json.insert("version".to_owned(), json!(room.version));
        json.insert("creator".to_owned(), creator);
        json.insert("encryption".to_owned(), field(StateEventType::RoomEncryption, "algorithm")?);
        json.insert("federatable".to_owned(), json!(federatable));
        json.insert("public".to_owned(), json!(self.directory.is_published(room_id)?));
        json.insert("join_rules".to_owned(), field(StateEventType::RoomJoinRules, "join_rule")?);
        json.insert("guest_access".to_owned(), field(StateEventType::RoomGuestAccess, "guest_access")?);
        json.insert(
            "history_visibility".to_owned(),
            field(StateEventType::RoomHistoryVisibility, "history_visibility")?,
        );
        json.insert("state_events".to_owned(), json!(state.len()));
        json.insert("room_type".to_owned(), room_type);
        Ok(Some(RoomEntry { json }))
    }

    /// `GET /_synapse/admin/v1/rooms`: every room this server knows, filtered, sorted and
    /// paged as Synapse does (counts and versions sort largest first unless `dir=b`; the rest ascending).
    pub fn list_rooms(&self, query: &RoomListQuery) -> Result<RoomList> {
        let order = query.order_by.as_deref().unwrap_or("name");
        if !ROOM_ORDERS.contains(&order) {
            return Err(Error::invalid_param(format!("Unknown value for order_by: {order}")));
        }
        let order = match order {
            "alphabetical" => "name",
            "size" => "joined_members",
            other => other,
        };
        let needle = query.search_term.as_deref().map(str::to_lowercase);
        let mut entries = Vec::new();
        for room_id in self.states.room_ids()? {
            let Some(entry) = self.entry(&room_id)? else { continue };
            if let Some(needle) = &needle {
                let has = |key: &str| {
                    entry.get(key).as_str().is_some_and(|v| v.to_lowercase().contains(needle.as_str()))
                };
                if !(has("name") || has("canonical_alias") || room_id.as_str().to_lowercase() == *needle) {
                    continue;
                }
            }
            if query.public_rooms.is_some_and(|public| entry.get("public").as_bool() != Some(public)) {
                continue;
            }
            if query
                .empty_rooms
                .is_some_and(|empty| (entry.get("joined_members").as_u64() == Some(0)) != empty)
            {
                continue;
            }
            entries.push(entry);
        }
        let descending =
            matches!(order, "joined_members" | "joined_local_members" | "state_events" | "version");
        entries.sort_by(|a, b| {
            let mut by = compare_json(a.get(order), b.get(order));
            if descending {
                by = by.reverse();
            }
            by.then_with(|| compare_json(a.get("room_id"), b.get("room_id")))
        });
        if query.backwards {
            entries.reverse();
        }
        let total = entries.len();
        let rooms: Vec<JsonValue> = entries
            .into_iter()
            .skip(query.from)
            .take(query.limit)
            .map(|e| JsonValue::Object(e.json))
            .collect();
        let end = query.from.saturating_add(rooms.len());
        Ok(RoomList {
            rooms,
            offset: query.from,
            total,
            next_batch: (end < total).then_some(end),
            prev_batch: (query.from > 0).then(|| query.from.saturating_sub(query.limit)),
        })
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}`: the list entry plus topic, avatar, the
    /// joined local users' device count, and whether every local user forgot the room.
    pub fn room_details(&self, room_id: &RoomId) -> Result<JsonValue> {
        let mut entry = self.entry(room_id)?.ok_or_else(|| Error::not_found("Room not found"))?.json;
        let state = self.states.current_state(room_id)?;
        let field = |kind: StateEventType, key: &str| -> Result<JsonValue> {
            Ok(match state.get(&(kind, String::new())) {
                Some(id) => self
                    .events
                    .get(id)?
                    .and_then(|e| e.pdu.content_value().get(key).cloned())
                    .filter(JsonValue::is_string)
                    .unwrap_or(JsonValue::Null),
                None => JsonValue::Null,
            })
        };
        entry.insert("topic".to_owned(), field(StateEventType::RoomTopic, "topic")?);
        entry.insert("avatar".to_owned(), field(StateEventType::RoomAvatar, "url")?);
        let mut devices = 0;
        for user in self.members.members_with(room_id, &MembershipState::Join)? {
            if user.server_name() == self.server_name {
                devices += self.devices.list(&user)?.len();
            }
        }
        entry.insert("joined_local_devices".to_owned(), json!(devices));
        let local_rows: Vec<_> = self
            .members
            .members(room_id)?
            .into_iter()
            .filter(|(user, _)| user.server_name() == self.server_name)
            .collect();
        let forgotten = !local_rows.is_empty() && local_rows.iter().all(|(_, record)| record.forgotten);
        entry.insert("forgotten".to_owned(), json!(forgotten));
        Ok(JsonValue::Object(entry))
    }

    fn ensure_room(&self, room_id: &RoomId) -> Result<()> {
        if self.states.room(room_id)?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        Ok(())
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/members`: the joined members.
    pub fn members(&self, room_id: &RoomId) -> Result<Vec<OwnedUserId>> {
        self.ensure_room(room_id)?;
        // In user ID order, as Synapse lists them (the roster keeps no order).
        let mut members = self.members.members_with(room_id, &MembershipState::Join)?;
        members.sort_unstable();
        Ok(members)
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/state`: the whole current state.
    pub fn state(&self, viewer: Viewer<'_>, room_id: &RoomId) -> Result<Vec<Box<RawJsonValue>>> {
        self.ensure_room(room_id)?;
        let state = self.states.current_state(room_id)?;
        let mut events = self.events.get_many(state.values())?;
        events.sort_by_key(|e| e.stream);
        self.renderer.raw_all(viewer, &events, Rendering::CLIENT)
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/messages`.
    #[allow(clippy::too_many_arguments)]
    pub fn messages(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        from: Option<i64>,
        to: Option<i64>,
        direction: Direction,
        limit: usize,
        filter: &RoomEventFilter,
    ) -> Result<MessagesPage> {
        self.history.admin_messages(viewer, room_id, from, to, direction, limit, filter)
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/context/{eventId}`.
    pub fn context(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        event_id: &EventId,
        limit: usize,
        filter: &RoomEventFilter,
    ) -> Result<ContextPage> {
        self.ensure_room(room_id)?;
        self.history.admin_context(viewer, room_id, event_id, limit, filter)
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/forward_extremities`: the events with no
    /// successor. Without federation a room's graph is one line, so there is exactly one.
    pub fn forward_extremities(&self, room_id: &RoomId) -> Result<Vec<JsonValue>> {
        let room = self.states.room(room_id)?.ok_or_else(|| Error::not_found("Room not found"))?;
        let mut results = Vec::new();
        for event_id in &room.forward_extremities {
            let Some(event) = self.events.get(event_id)? else { continue };
            results.push(json!({
                "event_id": event_id,
                // The state after the latest event is the room's current state.
                "state_group": room.state_group,
                "depth": event.pdu.depth,
                "received_ts": event.pdu.origin_server_ts,
            }));
        }
        Ok(results)
    }

    /// `DELETE /_synapse/admin/v1/rooms/{roomId}/forward_extremities`: Synapse removes all
    /// but the newest when there are several; here there is only ever one, so none goes.
    pub fn delete_forward_extremities(&self, room_id: &RoomId) -> Result<u64> {
        let room = self.states.room(room_id)?.ok_or_else(|| Error::not_found("Room not found"))?;
        if room.forward_extremities.len() > 1 {
            return Err(Error::internal("a room with several forward extremities"));
        }
        Ok(0)
    }

    // ---- blocking, joining, raising ----

    /// `GET /_synapse/admin/v1/rooms/{roomId}/block`: whether, and by whom.
    pub fn block_status(&self, room_id: &RoomId) -> Result<Option<OwnedUserId>> {
        self.blocked.blocked_by(room_id)
    }

    /// `PUT /_synapse/admin/v1/rooms/{roomId}/block`.
    pub fn set_block(&self, admin: &UserId, room_id: &RoomId, block: bool) -> Result<()> {
        self.blocked.set(admin, room_id, block)
    }

    fn local_user(&self, user_id: &UserId) -> Result<()> {
        if user_id.server_name() != self.server_name {
            return Err(Error::invalid_param("This endpoint can only be used with local users"));
        }
        if !self.users.exists(user_id)? {
            return Err(Error::not_found(format!("User {user_id} not found")));
        }
        Ok(())
    }

    fn join_rule(&self, room_id: &RoomId) -> Result<Option<String>> {
        Ok(self.timeline.state_event(room_id, &StateEventType::RoomJoinRules, "")?.and_then(|e| {
            e.pdu.content_value().get("join_rule").and_then(JsonValue::as_str).map(str::to_owned)
        }))
    }

    /// `POST /_synapse/admin/v1/join/{roomIdOrAlias}`: make a local user join a room. A
    /// room that is not public needs the calling admin joined with the power to invite:
    /// they invite the user first, as on Synapse.
    pub async fn join_user(
        &self,
        admin: &UserId,
        room: &RoomOrAliasId,
        user_id: &UserId,
    ) -> Result<OwnedRoomId> {
        self.local_user(user_id)?;
        let room_id = self.membership.resolve(room).await?;
        self.ensure_room(&room_id)?;
        if self.members.is_joined(&room_id, user_id)? {
            return Ok(room_id);
        }
        if self.join_rule(&room_id)?.as_deref() != Some("public")
            && self.members.membership(&room_id, user_id)? != Some(MembershipState::Invite)
        {
            if !self.members.is_joined(&room_id, admin)? {
                return Err(Error::forbidden(
                    "The room is not public: the server admin must be in it to invite the user",
                ));
            }
            self.membership.invite(admin, &room_id, user_id, None, JsonMap::new()).await?;
        }
        self.membership.join(user_id, &room_id, None, JsonMap::new()).await?;
        Ok(room_id)
    }

    /// `POST /_synapse/admin/v1/rooms/{roomId}/make_room_admin`: give a local user the
    /// power of the room's most powerful local member, who sends the power levels change
    /// (joining the user first, invited by that member if the room is not public), as
    /// Synapse does.
    pub async fn make_room_admin(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        self.local_user(user_id)?;
        self.ensure_room(room_id)?;
        let power = self.timeline.power_levels(room_id)?;
        let admin = self
            .members
            .members_with(room_id, &MembershipState::Join)?
            .into_iter()
            .filter(|member| {
                member.server_name() == self.server_name
                    && power.user_can_send_state(member, StateEventType::RoomPowerLevels)
            })
            .max_by_key(|member| power.for_user(member))
            .ok_or_else(|| Error::invalid_param("No local admin user in room"))?;
        if !self.members.is_joined(room_id, user_id)? {
            if self.join_rule(room_id)?.as_deref() != Some("public")
                && self.members.membership(room_id, user_id)? != Some(MembershipState::Invite)
            {
                self.membership.invite(&admin, room_id, user_id, None, JsonMap::new()).await?;
            }
            self.membership.join(user_id, room_id, None, JsonMap::new()).await?;
        }
        if admin == user_id {
            return Ok(());
        }
        let level: i64 = match power.for_user(&admin) {
            UserPowerLevel::Int(level) => level.into(),
            // A creator of a v12 room: above any level a user can hold; give the usual top.
            _ => 100,
        };
        let current = self.timeline.state_event(room_id, &StateEventType::RoomPowerLevels, "")?;
        let mut content = current.map(|e| e.pdu.content_value()).unwrap_or_else(|| json!({}));
        let Some(map) = content.as_object_mut() else {
            return Err(Error::internal("power levels content is not an object"));
        };
        let users = map.entry("users").or_insert_with(|| json!({}));
        if let Some(users) = users.as_object_mut() {
            users.insert(user_id.to_string(), json!(level));
        }
        self.actions.send_state(&admin, room_id, "m.room.power_levels", "", content, None).await?;
        Ok(())
    }

    // ---- deleting rooms ----

    /// `DELETE /_synapse/admin/v1/rooms/{roomId}`: delete a room now (see `shutdown`).
    pub async fn delete_room(
        &self,
        admin: &UserId,
        room_id: &RoomId,
        options: DeleteOptions,
    ) -> Result<ShutdownOutcome> {
        self.check_delete(room_id, &options)?;
        self.shutdown(admin, room_id, &options, None).await
    }

    fn check_delete(&self, room_id: &RoomId, options: &DeleteOptions) -> Result<()> {
        if let Some(user) = &options.new_room_user_id {
            self.local_user(user)?;
        }
        if self.states.room(room_id)?.is_none() && !options.block {
            return Err(Error::not_found("Unknown room id"));
        }
        Ok(())
    }

    /// The deletion itself: block the room if asked; take it out of the directory; create
    /// the replacement room if asked (public, members without power, the message sent in
    /// it); make every local member leave (and join the replacement room), move the local
    /// aliases to the replacement room; then purge, refused while a local user is still
    /// joined unless `force_purge`.
    async fn shutdown(
        &self,
        admin: &UserId,
        room_id: &RoomId,
        options: &DeleteOptions,
        task: Option<&str>,
    ) -> Result<ShutdownOutcome> {
        if options.block {
            self.blocked.set(admin, room_id, true)?;
        }
        let mut outcome = ShutdownOutcome::default();
        if self.states.room(room_id)?.is_none() {
            return Ok(outcome);
        }
        self.directory.withdraw(room_id)?;
        if let Some(owner) = &options.new_room_user_id {
            let mut request = create_room::v3::Request::new();
            request.preset = Some(create_room::v3::RoomPreset::PublicChat);
            request.name = Some(options.room_name.clone().unwrap_or_else(|| DEFAULT_ROOM_NAME.to_owned()));
            request.power_level_content_override = Some(
                Raw::new(&json!({ "users_default": -10 }))
                    .map_err(|e| Error::internal(e.to_string()))?
                    .cast_unchecked(),
            );
            let new_room = self.creation.create_room(owner, request).await?;
            let message = options.message.clone().unwrap_or_else(|| DEFAULT_MESSAGE.to_owned());
            self.actions
                .send_message(
                    owner,
                    &new_room,
                    "m.room.message",
                    json!({"msgtype": "m.text", "body": message}),
                    None,
                    None,
                )
                .await?;
            outcome.new_room_id = Some(new_room);
        }
        for (user_id, record) in self.members.members(room_id)? {
            if user_id.server_name() != self.server_name
                || !matches!(record.membership.as_str(), "join" | "invite" | "knock")
            {
                continue;
            }
            let left = self.membership.leave(&user_id, room_id, None, JsonMap::new()).await;
            let moved = match (&left, &outcome.new_room_id) {
                (Ok(_), Some(new_room)) if record.membership == "join" => {
                    self.membership.join(&user_id, new_room, None, JsonMap::new()).await.map(drop)
                }
                _ => Ok(()),
            };
            match (left, moved) {
                (Ok(_), Ok(())) => outcome.kicked_users.push(user_id),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(%room_id, %user_id, %error, "room deletion could not move a member");
                    outcome.failed_to_kick_users.push(user_id);
                }
            }
        }
        outcome.local_aliases = self.aliases.of_room(room_id)?;
        if let Some(new_room) = &outcome.new_room_id {
            self.aliases.move_all(room_id, new_room)?;
        }
        if options.purge {
            if !options.force_purge && !self.members.members_with(room_id, &MembershipState::Join)?.is_empty()
            {
                return Err(Error::invalid_param("Users are still joined to this room"));
            }
            if let Some(task) = task {
                self.update_deletion(task, |record| record.status = "purging".to_owned())?;
            }
            self.purge.purge(room_id).await?;
        }
        tracing::info!(%room_id, %admin, kicked = outcome.kicked_users.len(), purged = options.purge, "room deleted");
        Ok(outcome)
    }

    /// `DELETE /_synapse/admin/v2/rooms/{roomId}`: schedule a deletion and answer its ID at
    /// once; the deletion runs as a task whose progress `delete_status` reports.
    pub fn schedule_delete(
        self: &Arc<Self>,
        admin: &UserId,
        room_id: &RoomId,
        options: DeleteOptions,
    ) -> Result<String> {
        self.check_delete(room_id, &options)?;
        let delete_id = random_string(16);
        {
            let _guard = self.deletions_write.lock().unwrap_or_else(|p| p.into_inner());
            for row in self.deletions.scan(KeyRange::all(), Direction::Forward)? {
                let (_, record) = row?;
                if record.room_id == room_id && !matches!(record.status.as_str(), "complete" | "failed") {
                    return Err(Error::invalid_param(format!(
                        "History purge already in progress for {room_id}"
                    )));
                }
            }
            let record = RoomDeletionRecord {
                room_id: room_id.to_owned(),
                requested_by: admin.to_owned(),
                requested_ms: self.clock.now_ms(),
                status: "scheduled".to_owned(),
                error: None,
                options: serde_json::to_value(&options).map_err(|e| Error::internal(e.to_string()))?,
                outcome: json!({}),
            };
            self.deletions.insert(&delete_id, &record)?;
        }
        let this = Arc::clone(self);
        let (admin, room_id, id) = (admin.to_owned(), room_id.to_owned(), delete_id.clone());
        tokio::spawn(async move {
            let started = this.update_deletion(&id, |record| record.status = "shutting_down".to_owned());
            let result = match started {
                Ok(()) => this.shutdown(&admin, &room_id, &options, Some(&id)).await,
                Err(e) => Err(e),
            };
            let finished = this.update_deletion(&id, |record| match &result {
                Ok(outcome) => {
                    record.status = "complete".to_owned();
                    record.outcome = serde_json::to_value(outcome).unwrap_or_default();
                }
                Err(error) => {
                    record.status = "failed".to_owned();
                    record.error = Some(error.to_string());
                }
            });
            if let Err(error) = finished {
                tracing::error!(%room_id, %error, "could not record the end of a room deletion");
            }
        });
        Ok(delete_id)
    }

    fn update_deletion(&self, delete_id: &str, change: impl FnOnce(&mut RoomDeletionRecord)) -> Result<()> {
        let _guard = self.deletions_write.lock().unwrap_or_else(|p| p.into_inner());
        let key = delete_id.to_owned();
        let Some(mut record) = self.deletions.get(&key)? else { return Ok(()) };
        change(&mut record);
        Ok(self.deletions.insert(&key, &record)?)
    }

    /// Deletions that were running when the server stopped did not finish; say so.
    fn fail_interrupted_deletions(&self) -> Result<()> {
        let mut stale = Vec::new();
        for row in self.deletions.scan(KeyRange::all(), Direction::Forward)? {
            let (id, record) = row?;
            if !matches!(record.status.as_str(), "complete" | "failed") {
                stale.push(id);
            }
        }
        for id in stale {
            self.update_deletion(&id, |record| {
                record.status = "failed".to_owned();
                record.error = Some("The server stopped before the deletion finished".to_owned());
            })?;
        }
        Ok(())
    }

    fn deletion_json(id: &str, record: &RoomDeletionRecord) -> JsonValue {
        let status = match record.status.as_str() {
            "scheduled" => "shutting_down",
            other => other,
        };
        let mut shutdown = json!({
            "kicked_users": [],
            "failed_to_kick_users": [],
            "local_aliases": [],
            "new_room_id": null,
        });
        if let (Some(target), Some(found)) = (shutdown.as_object_mut(), record.outcome.as_object()) {
            target.extend(found.clone());
        }
        let mut out = json!({ "delete_id": id, "status": status, "shutdown_room": shutdown });
        if let Some(error) = &record.error {
            out["error"] = json!(error);
        }
        out
    }

    /// `GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`.
    pub fn delete_status(&self, delete_id: &str) -> Result<JsonValue> {
        let record = self
            .deletions
            .get(&delete_id.to_owned())?
            .ok_or_else(|| Error::not_found("delete id not found"))?;
        let mut status = Self::deletion_json(delete_id, &record);
        if let Some(map) = status.as_object_mut() {
            map.remove("delete_id");
        }
        Ok(status)
    }

    /// `GET /_synapse/admin/v2/rooms/{roomId}/delete_status`: every deletion of the room.
    pub fn delete_statuses(&self, room_id: &RoomId) -> Result<Vec<JsonValue>> {
        let mut found = Vec::new();
        for row in self.deletions.scan(KeyRange::all(), Direction::Forward)? {
            let (id, record) = row?;
            if record.room_id == room_id {
                found.push((record.requested_ms, Self::deletion_json(&id, &record)));
            }
        }
        if found.is_empty() {
            return Err(Error::not_found("No delete task for room"));
        }
        found.sort_by_key(|(ts, _)| *ts);
        Ok(found.into_iter().map(|(_, status)| status).collect())
    }

    /// `GET /_synapse/admin/v1/scheduled_tasks`: the room deletions, the only tasks this
    /// server schedules, in Synapse's task shape.
    pub fn scheduled_tasks(&self, query: &TaskQuery) -> Result<Vec<JsonValue>> {
        if query.action_name.as_deref().is_some_and(|a| a != DELETE_ACTION) {
            return Ok(Vec::new());
        }
        let mut tasks = Vec::new();
        for row in self.deletions.scan(KeyRange::all(), Direction::Forward)? {
            let (id, record) = row?;
            let status = match record.status.as_str() {
                "scheduled" => "scheduled",
                "shutting_down" | "purging" => "active",
                other => other,
            };
            if query.resource_id.as_deref().is_some_and(|r| r != record.room_id.as_str())
                || query.job_status.as_deref().is_some_and(|s| s != status)
                || query.max_timestamp.is_some_and(|max| record.requested_ms > max)
            {
                continue;
            }
            let result = (status == "complete").then(|| json!({ "shutdown_room": record.outcome }));
            tasks.push((
                record.requested_ms,
                json!({
                    "id": id,
                    "action": DELETE_ACTION,
                    "status": status,
                    "timestamp_ms": record.requested_ms,
                    "resource_id": record.room_id,
                    "result": result,
                    "error": record.error,
                }),
            ));
        }
        tasks.sort_by_key(|(ts, _)| *ts);
        Ok(tasks.into_iter().map(|(_, task)| task).collect())
    }

    // ---- event reports ----

    /// A report as the admin API shows it (`None` for room and user reports, which are
    /// not event reports).
    fn report_json(
        &self,
        id: u64,
        record: &crate::storage::tables::ReportRecord,
    ) -> Result<Option<JsonValue>> {
        let (Some(room_id), Some(event_id)) = (&record.room_id, &record.event_id) else { return Ok(None) };
        let (mut name, mut alias) = (JsonValue::Null, JsonValue::Null);
        if self.states.room(room_id)?.is_some() {
            let text = |kind: StateEventType, key: &str| -> Result<JsonValue> {
                Ok(self
                    .timeline
                    .state_event(room_id, &kind, "")?
                    .and_then(|e| e.pdu.content_value().get(key).cloned())
                    .filter(JsonValue::is_string)
                    .unwrap_or(JsonValue::Null))
            };
            name = text(StateEventType::RoomName, "name")?;
            alias = text(StateEventType::RoomCanonicalAlias, "alias")?;
        }
        Ok(Some(json!({
            "id": id,
            "received_ts": record.received_ms,
            "room_id": room_id,
            "name": name,
            "event_id": event_id,
            "user_id": record.reporter,
            "reason": record.reason,
            "score": record.score,
            // Reports keep the sender; the event itself may be purged since.
            "sender": record.user_id,
            "canonical_alias": alias,
        })))
    }

    /// `GET /_synapse/admin/v1/event_reports`: newest first unless `dir=f`, filtered by
    /// reporter, room or the reported event's sender (substrings of the IDs, as Synapse
    /// matches them).
    pub fn event_reports(&self, query: &ReportQuery) -> Result<ReportList> {
        let contains = |filter: &Option<String>, value: Option<&str>| {
            filter.as_deref().is_none_or(|f| value.is_some_and(|v| v.contains(f)))
        };
        let mut reports = Vec::new();
        for (id, record) in self.reports.all()? {
            if !contains(&query.user_id, Some(record.reporter.as_str()))
                || !contains(&query.room_id, record.room_id.as_ref().map(|r| r.as_str()))
                || !contains(&query.event_sender_user_id, record.user_id.as_ref().map(|u| u.as_str()))
            {
                continue;
            }
            if let Some(json) = self.report_json(id, &record)? {
                reports.push(json);
            }
        }
        if !query.forwards {
            reports.reverse();
        }
        let total = reports.len();
        let page: Vec<JsonValue> = reports.into_iter().skip(query.from).take(query.limit).collect();
        let end = query.from.saturating_add(page.len());
        Ok(ReportList { reports: page, total, next_token: (end < total).then_some(end) })
    }

    /// `GET /_synapse/admin/v1/event_reports/{reportId}`: with the event as stored
    /// (`event_json`, null if the room was purged since).
    pub fn event_report(&self, viewer: Viewer<'_>, id: u64) -> Result<JsonValue> {
        let not_found = || Error::not_found("Event report not found");
        let record = self.reports.get(id)?.ok_or_else(not_found)?;
        let mut json = self.report_json(id, &record)?.ok_or_else(not_found)?;
        let event = match &record.event_id {
            Some(event_id) => self.events.get(event_id)?,
            None => None,
        };
        json["event_json"] = match event {
            Some(event) => {
                self.renderer.value(viewer, &event, Rendering { shape: Shape::Federation, fields: None })?
            }
            None => JsonValue::Null,
        };
        Ok(json)
    }

    /// `DELETE /_synapse/admin/v1/event_reports/{reportId}`: the report is resolved.
    pub fn delete_event_report(&self, id: u64) -> Result<()> {
        let is_event_report = self.reports.get(id)?.is_some_and(|r| r.event_id.is_some());
        if !is_event_report || !self.reports.remove(id)? {
            return Err(Error::not_found("Event report not found"));
        }
        Ok(())
    }
}
