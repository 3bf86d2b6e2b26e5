//! The space hierarchy (`GET /rooms/{roomId}/hierarchy`): a breadth-first walk of
//! `m.space.child` events from a space, showing only rooms the requester may see or join
//! (rooms this server does not have are asked of the servers the child events name);
//! the summary of one such room (`GET /room_summary/{roomIdOrAlias}`); and one level of it
//! for another server (`GET /_matrix/federation/v1/hierarchy/{roomId}`).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    pin::Pin,
    sync::Arc,
};

use ruma::{
    OwnedRoomId, OwnedServerName, RoomId, UserId,
    events::{StateEventType, room::member::MembershipState},
};
use serde_json::{Value as JsonValue, json};

use super::{
    directory::Directory, events::Events, members::Memberships, state::RoomStates, visibility::Visibility,
};
use crate::{Error, Result};

/// Rooms per page when the client sets no limit, and the most it may ask for.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 1_000;
/// How deep the walk goes at most, whatever the client asks.
const MAX_DEPTH: usize = 32;

/// The servers an `m.space.child` event names to reach the child through.
fn via_of(event: &JsonValue) -> Vec<OwnedServerName> {
    let via = event["content"].get("via").and_then(JsonValue::as_array);
    via.into_iter()
        .flatten()
        .filter_map(|v| v.as_str().and_then(|v| OwnedServerName::try_from(v).ok()))
        .collect()
}

pub struct Hierarchy {
    events: Arc<Events>,
    states: Arc<RoomStates>,
    members: Arc<Memberships>,
    visibility: Arc<Visibility>,
    directory: Arc<Directory>,
}

/// One level of the hierarchy as another server is answered it.
pub struct ServerHierarchy {
    /// The room's summary with its children's `m.space.child` events.
    pub room: JsonValue,
    /// The summaries of the children known here that the server's users could see or join.
    pub children: Vec<JsonValue>,
    /// The children known here that they could not.
    pub inaccessible_children: Vec<OwnedRoomId>,
}

/// One level of a space as another server answered it (its `/hierarchy`), for a room this
/// server does not have.
#[derive(Clone, Debug)]
pub struct RemoteLevel {
    /// The room's summary with its `children_state`.
    pub room: JsonValue,
    /// Summaries of the children that server has and lets this server's users see.
    pub children: Vec<JsonValue>,
}

/// Asks other servers for one level of a space this server does not have: through the
/// servers a parent's `m.space.child` names (`via`).
pub trait RemoteSpaces: Send + Sync {
    fn level<'a>(
        &'a self,
        room_id: &'a RoomId,
        via: &'a [OwnedServerName],
        suggested_only: bool,
    ) -> Pin<Box<dyn Future<Output = Option<RemoteLevel>> + Send + 'a>>;
}

/// One page of the walk.
pub struct HierarchyPage {
    pub rooms: Vec<JsonValue>,
    pub next_batch: Option<String>,
}

impl Hierarchy {
    pub fn new(
        events: Arc<Events>,
        states: Arc<RoomStates>,
        members: Arc<Memberships>,
        visibility: Arc<Visibility>,
        directory: Arc<Directory>,
    ) -> Self {
        Self { events, states, members, visibility, directory }
    }

    /// The rooms under `root` (which this server has) that the user may see, breadth
    /// first. A room this server does not have is asked of the servers its parent's
    /// `m.space.child` names, through `remote` (none: such rooms are left out).
    #[allow(clippy::too_many_arguments)]
    pub async fn walk(
        &self,
        user_id: &UserId,
        root: &RoomId,
        from: Option<&str>,
        limit: Option<usize>,
        max_depth: Option<usize>,
        suggested_only: bool,
        remote: Option<&dyn RemoteSpaces>,
    ) -> Result<HierarchyPage> {
        if self.states.room(root)?.is_none() || !self.may_preview(Some(user_id), root)? {
            return Err(Error::forbidden("You may not view this space"));
        }
        let skip = match from {
            Some(token) => token
                .strip_prefix('h')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| Error::invalid_param("Invalid pagination token"))?,
            None => 0,
        };
        let limit = limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let max_depth = max_depth.unwrap_or(MAX_DEPTH).min(MAX_DEPTH);

        // Walk in a fixed order so a token (a count of rooms already returned) resumes it.
        let mut queue = VecDeque::from([(root.to_owned(), 0usize, Vec::new())]);
        let mut seen = HashSet::from([root.to_owned()]);
        // Summaries of rooms not here that another server gave with their parent's level.
        let mut given = HashMap::new();
        let mut rooms = Vec::new();
        let mut visible = 0usize;
        while let Some((room_id, depth, via)) = queue.pop_front() {
            let Some((entry, children)) =
                self.level(user_id, &room_id, &via, suggested_only, remote, &mut given).await?
            else {
                continue;
            };
            if visible >= skip && rooms.len() < limit {
                rooms.push(entry);
            }
            visible += 1;
            if rooms.len() == limit && visible > skip + limit {
                break;
            }
            if depth < max_depth {
                for (child, event) in children {
                    if seen.insert(child.clone()) {
                        queue.push_back((child, depth + 1, via_of(&event)));
                    }
                }
            }
        }
        let next_batch = (visible > skip + rooms.len()).then(|| format!("h{}", skip + rooms.len()));
        Ok(HierarchyPage { rooms, next_batch })
    }

    /// A room of the walk, with its `children_state`, and its children; `None` when the
    /// user may not see it or no server gave it.
    async fn level(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        suggested_only: bool,
        remote: Option<&dyn RemoteSpaces>,
        given: &mut HashMap<OwnedRoomId, JsonValue>,
    ) -> Result<Option<(JsonValue, Vec<(OwnedRoomId, JsonValue)>)>> {
        if self.states.room(room_id)?.is_some() {
            if !self.may_preview(Some(user_id), room_id)? {
                return Ok(None);
            }
            let children = self.children(room_id, suggested_only)?;
            let mut entry = self.detailed_summary(room_id)?;
            entry["children_state"] =
                JsonValue::Array(children.iter().map(|(_, event)| event.clone()).collect());
            return Ok(Some((entry, children)));
        }
        // A room that is no space, summarised with its parent's level: no need to ask.
        if let Some(summary) = given.remove(room_id)
            && summary.get("room_type").and_then(JsonValue::as_str) != Some("m.space")
        {
            let mut entry = summary;
            entry["children_state"] = json!([]);
            return Ok(self.may_see_remote(user_id, &entry)?.then_some((entry, Vec::new())));
        }
        let Some(remote) = remote else { return Ok(None) };
        let Some(level) = remote.level(room_id, via, suggested_only).await else { return Ok(None) };
        if level.room.get("room_id").and_then(JsonValue::as_str) != Some(room_id.as_str())
            || !self.may_see_remote(user_id, &level.room)?
        {
            return Ok(None);
        }
        for child in level.children {
            if let Some(Ok(id)) = child.get("room_id").and_then(JsonValue::as_str).map(RoomId::parse) {
                given.insert(id, child);
            }
        }
        let mut children = Vec::new();
        for event in level.room.get("children_state").and_then(JsonValue::as_array).into_iter().flatten() {
            let suggested = event["content"].get("suggested").and_then(JsonValue::as_bool).unwrap_or(false);
            if let Some(Ok(child)) = event.get("state_key").and_then(JsonValue::as_str).map(RoomId::parse)
                && !via_of(event).is_empty()
                && (!suggested_only || suggested)
            {
                children.push((child, event.clone()));
            }
        }
        Ok(Some((level.room, children)))
    }

    /// Whether the user may see a room of another server by its summary: world-readable,
    /// or a join rule that lets anyone join or knock (a summary without one is public, as
    /// the spec reads it), or restricted to rooms the user is in.
    fn may_see_remote(&self, user_id: &UserId, summary: &JsonValue) -> Result<bool> {
        if summary.get("world_readable").and_then(JsonValue::as_bool) == Some(true) {
            return Ok(true);
        }
        match summary.get("join_rule").and_then(JsonValue::as_str) {
            None | Some("public" | "knock" | "knock_restricted") => Ok(true),
            Some("restricted") => {
                for allowed in
                    summary.get("allowed_room_ids").and_then(JsonValue::as_array).into_iter().flatten()
                {
                    if let Some(Ok(allowed)) = allowed.as_str().map(RoomId::parse)
                        && self.members.is_joined(&allowed, user_id)?
                    {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// The room and its children for another server walking a space (its users' walk goes
    /// on there, asking again for the children it does not have). A room another server's
    /// users could not see or join is unknown to it (`M_NOT_FOUND`), as one that is not
    /// here. Children this server does not have are left out.
    pub fn for_server(
        &self,
        room_id: &RoomId,
        suggested_only: bool,
        acl_allows: impl Fn(&RoomId) -> Result<bool>,
    ) -> Result<ServerHierarchy> {
        if self.states.room(room_id)?.is_none() || !self.server_may_preview(room_id)? {
            return Err(Error::not_found("Room not found"));
        }
        let children = self.children(room_id, suggested_only)?;
        let mut room = self.detailed_summary(room_id)?;
        room["children_state"] = JsonValue::Array(children.iter().map(|(_, event)| event.clone()).collect());
        let mut summaries = Vec::new();
        let mut inaccessible_children = Vec::new();
        for (child, _) in children {
            if self.states.room(&child)?.is_none() {
                continue;
            }
            // A child whose server ACL bans the asking server is one it cannot join or peek.
            if self.server_may_preview(&child)? && acl_allows(&child)? {
                summaries.push(self.detailed_summary(&child)?);
            } else {
                inaccessible_children.push(child);
            }
        }
        Ok(ServerHierarchy { room, children: summaries, inaccessible_children })
    }

    /// Whether another server's users may see a room's summary: anyone may (see
    /// `may_preview`), or its join rule lets in members of other rooms, which that server
    /// checks for its users from `allowed_room_ids`.
    fn server_may_preview(&self, room_id: &RoomId) -> Result<bool> {
        if self.visibility.world_readable_now(room_id)? {
            return Ok(true);
        }
        let rules = self.state_content(room_id, StateEventType::RoomJoinRules)?;
        let rule = rules.as_ref().and_then(|c| c.get("join_rule")).and_then(JsonValue::as_str);
        Ok(matches!(rule, Some("public" | "knock" | "knock_restricted" | "restricted")))
    }

    /// The content of the room's current `(kind, "")` state event, if it has one.
    fn state_content(&self, room_id: &RoomId, kind: StateEventType) -> Result<Option<JsonValue>> {
        let id = self.states.current_state_event_id(room_id, &kind, "")?;
        Ok(id.map(|id| self.events.get(&id)).transpose()?.flatten().map(|e| e.pdu.content_value()))
    }

    /// `GET /room_summary`: the summary of a room the caller may preview, and the caller's
    /// membership in it. `None` is an unauthenticated caller, who may preview rooms anyone
    /// may join, knock on or read. A room that does not exist and one the caller may not
    /// preview answer alike, so the answer does not reveal which rooms exist.
    pub fn room_summary(
        &self,
        viewer: Option<&UserId>,
        room_id: &RoomId,
    ) -> Result<(JsonValue, Option<MembershipState>)> {
        if self.states.room(room_id)?.is_none() || !self.may_preview(viewer, room_id)? {
            return Err(Error::not_found("Room not found"));
        }
        let membership = viewer.map(|user| self.members.membership(room_id, user)).transpose()?.flatten();
        Ok((self.detailed_summary(room_id)?, membership))
    }

    /// The directory's summary of a room plus what the hierarchy and room summaries add
    /// (Matrix 1.15): the room version, the encryption algorithm and, for restricted join
    /// rules, the rooms whose members may join.
    fn detailed_summary(&self, room_id: &RoomId) -> Result<JsonValue> {
        let mut entry = self.directory.summary(room_id)?;
        if let Some(record) = self.states.room(room_id)? {
            entry["room_version"] = json!(record.version);
        }
        let content = |kind| self.state_content(room_id, kind);
        if let Some(algorithm) = content(StateEventType::RoomEncryption)?
            .and_then(|c| c.get("algorithm").filter(|a| a.is_string()).cloned())
        {
            entry["encryption"] = algorithm;
        }
        let allowed: Vec<JsonValue> = content(StateEventType::RoomJoinRules)?
            .and_then(|c| c.get("allow").and_then(JsonValue::as_array).cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|rule| rule.get("room_id").filter(|r| r.is_string()).cloned())
            .collect();
        if matches!(entry["join_rule"].as_str(), Some("restricted" | "knock_restricted")) {
            entry["allowed_room_ids"] = JsonValue::Array(allowed);
        }
        Ok(entry)
    }

    /// A room's `m.space.child` events with a non-empty `via`, ordered by `order` then
    /// room ID, as stripped events with their timestamp.
    fn children(&self, room_id: &RoomId, suggested_only: bool) -> Result<Vec<(OwnedRoomId, JsonValue)>> {
        let state = self.states.current_state(room_id)?;
        let mut children = Vec::new();
        for ((kind, key), id) in state.iter() {
            if *kind != StateEventType::SpaceChild {
                continue;
            }
            let (Ok(child), Some(event)) = (RoomId::parse(key.as_str()), self.events.get(id)?) else {
                continue;
            };
            let content = event.pdu.content_value();
            let has_via = content.get("via").and_then(JsonValue::as_array).is_some_and(|v| !v.is_empty());
            let suggested = content.get("suggested").and_then(JsonValue::as_bool).unwrap_or(false);
            if !has_via || (suggested_only && !suggested) {
                continue;
            }
            let order = content.get("order").and_then(JsonValue::as_str).map(str::to_owned);
            let stripped = json!({
                "type": "m.space.child",
                "state_key": key,
                "content": content,
                "sender": event.pdu.sender,
                "origin_server_ts": event.pdu.origin_server_ts,
            });
            children.push((order, child, stripped));
        }
        // Rooms with an `order` come first, by it; the rest by room ID.
        children.sort_by(|a, b| match (&a.0, &b.0) {
            (Some(x), Some(y)) => x.cmp(y).then_with(|| a.1.cmp(&b.1)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.1.cmp(&b.1),
        });
        Ok(children.into_iter().map(|(_, room, event)| (room, event)).collect())
    }

    /// Whether the requester may see a room's summary: they are in it or invited, it is
    /// world-readable, or its join rule would let them in or knock. An unauthenticated
    /// requester (`None`) may see rooms that are world-readable or that anyone may join or
    /// knock on.
    fn may_preview(&self, user_id: Option<&UserId>, room_id: &RoomId) -> Result<bool> {
        let membership = user_id.map(|user| self.members.membership(room_id, user)).transpose()?.flatten();
        if matches!(membership, Some(MembershipState::Join | MembershipState::Invite))
            || self.visibility.world_readable_now(room_id)?
        {
            return Ok(true);
        }
        let Some(content) = self.state_content(room_id, StateEventType::RoomJoinRules)? else {
            return Ok(false);
        };
        match content.get("join_rule").and_then(JsonValue::as_str) {
            Some("public" | "knock" | "knock_restricted") => Ok(true),
            Some("restricted") => {
                let Some(user_id) = user_id else { return Ok(false) };
                let allow = content.get("allow").and_then(JsonValue::as_array).cloned().unwrap_or_default();
                for rule in allow {
                    let Some(allowed) = rule.get("room_id").and_then(JsonValue::as_str) else { continue };
                    if let Ok(allowed) = RoomId::parse(allowed)
                        && self.members.is_joined(&allowed, user_id)?
                    {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }
}
