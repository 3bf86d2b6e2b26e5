//! The public room directory: which rooms are published, and the `/publicRooms` listing with
//! search and pagination. Owns the `public_rooms` table.

use std::sync::Arc;

use ruma::{
    OwnedRoomId, RoomId,
    events::{StateEventType, room::member::MembershipState},
};
use serde_json::{Map, Value as JsonValue, json};

use super::{events::Events, members::Memberships, state::RoomStates};
use crate::{
    Result,
    storage::{Direction, KvStore, Table, kv::KeyRange, tables::PUBLIC_ROOMS},
};

pub struct Directory {
    public: Table<OwnedRoomId, ()>,
    events: Arc<Events>,
    states: Arc<RoomStates>,
    members: Arc<Memberships>,
}

/// One page of the listing.
pub struct PublicRoomsPage {
    pub chunk: Vec<JsonValue>,
    pub next_batch: Option<String>,
    pub prev_batch: Option<String>,
    pub total: usize,
}

impl Directory {
    pub fn new(
        store: &Arc<dyn KvStore>,
        events: Arc<Events>,
        states: Arc<RoomStates>,
        members: Arc<Memberships>,
    ) -> Self {
        Self { public: PUBLIC_ROOMS.open(store), events, states, members }
    }

    pub fn is_published(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.public.contains(&room_id.to_owned())?)
    }

    pub fn publish(&self, room_id: &RoomId, public: bool) -> Result<()> {
        if public {
            Ok(self.public.insert(&room_id.to_owned(), &())?)
        } else {
            Ok(self.public.remove(&room_id.to_owned())?)
        }
    }

    /// Published rooms, most members first (then by room ID, so pages are stable), filtered
    /// by a case-insensitive search over name, topic and canonical alias and by room type.
    /// Tokens are offsets into that order.
    pub fn list(
        &self,
        limit: Option<usize>,
        since: Option<&str>,
        search: Option<&str>,
        room_types: Option<&[Option<String>]>,
    ) -> Result<PublicRoomsPage> {
        let mut rooms = Vec::new();
        for row in self.public.scan(KeyRange::all(), Direction::Forward)? {
            let (room_id, ()) = row?;
            if self.states.room(&room_id)?.is_none() {
                continue;
            }
            rooms.push(self.summary(&room_id)?);
        }
        if let Some(term) = search.map(str::to_lowercase).filter(|t| !t.is_empty()) {
            rooms.retain(|room| {
                ["name", "topic", "canonical_alias"].iter().any(|field| {
                    room.get(*field)
                        .and_then(JsonValue::as_str)
                        .is_some_and(|v| v.to_lowercase().contains(&term))
                })
            });
        }
        if let Some(types) = room_types {
            rooms.retain(|room| {
                let kind = room.get("room_type").and_then(JsonValue::as_str).map(str::to_owned);
                types.contains(&kind)
            });
        }
        rooms.sort_by(|a, b| {
            let members = |r: &JsonValue| r["num_joined_members"].as_u64().unwrap_or(0);
            members(b).cmp(&members(a)).then_with(|| a["room_id"].as_str().cmp(&b["room_id"].as_str()))
        });
        let total = rooms.len();
        let start = since.and_then(parse_token).unwrap_or(0).min(total);
        let end = limit.map_or(total, |l| start.saturating_add(l).min(total));
        Ok(PublicRoomsPage {
            chunk: rooms[start..end].to_vec(),
            next_batch: (end < total).then(|| token(end)),
            prev_batch: (start > 0).then(|| token(start.saturating_sub(limit.unwrap_or(start)))),
            total,
        })
    }

    /// The directory entry of a room, from its current state (also the summary the space
    /// hierarchy shows).
    pub fn summary(&self, room_id: &RoomId) -> Result<JsonValue> {
        let state = self.states.current_state(room_id)?;
        let content = |kind: StateEventType| -> Result<Option<JsonValue>> {
            match state.get(&(kind, String::new())) {
                Some(id) => Ok(self.events.get(id)?.map(|e| e.pdu.content_value())),
                None => Ok(None),
            }
        };
        let field = |value: Option<JsonValue>, key: &str| {
            value.and_then(|c| c.get(key).cloned()).filter(|v| !v.is_null())
        };
        let mut entry = Map::new();
        entry.insert("room_id".to_owned(), json!(room_id));
        let joined = self.members.members_with(room_id, &MembershipState::Join)?.len();
        entry.insert("num_joined_members".to_owned(), json!(joined));
        let visibility = field(content(StateEventType::RoomHistoryVisibility)?, "history_visibility");
        entry.insert("world_readable".to_owned(), json!(visibility == Some(json!("world_readable"))));
        let guest = field(content(StateEventType::RoomGuestAccess)?, "guest_access");
        entry.insert("guest_can_join".to_owned(), json!(guest == Some(json!("can_join"))));
        let join_rule =
            field(content(StateEventType::RoomJoinRules)?, "join_rule").unwrap_or(json!("public"));
        entry.insert("join_rule".to_owned(), join_rule);
        for (kind, key, name) in [
            (StateEventType::RoomName, "name", "name"),
            (StateEventType::RoomTopic, "topic", "topic"),
            (StateEventType::RoomCanonicalAlias, "alias", "canonical_alias"),
            (StateEventType::RoomAvatar, "url", "avatar_url"),
            (StateEventType::RoomCreate, "type", "room_type"),
        ] {
            if let Some(value) = field(content(kind)?, key).filter(JsonValue::is_string) {
                entry.insert(name.to_owned(), value);
            }
        }
        Ok(JsonValue::Object(entry))
    }
}

fn token(offset: usize) -> String {
    format!("o{offset}")
}

fn parse_token(token: &str) -> Option<usize> {
    token.strip_prefix('o')?.parse().ok()
}
