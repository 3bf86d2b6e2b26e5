//! The published room directory: the rooms published in the server's own list, the rooms
//! application services published in theirs (one list per appservice and third-party
//! network, the spec's application service room directory), and the `/publicRooms` listing
//! of either or both with search and pagination. Owns the `public_rooms` and
//! `appservice_rooms` tables. The lists of appservices no longer registered are kept (they
//! come back if it is registered again) but not listed.

use std::{collections::BTreeSet, sync::Arc};

use ruma::{
    OwnedRoomId, RoomId,
    events::{StateEventType, room::member::MembershipState},
};
use serde_json::{Map, Value as JsonValue, json};

use super::{events::Events, members::Memberships, state::RoomStates};
use crate::{
    Error, Result,
    matrix::appservice::parse_instance_id,
    service::appservices::Appservices,
    storage::{
        Direction, KvStore, Table,
        kv::KeyRange,
        tables::{APPSERVICE_ROOMS, PUBLIC_ROOMS},
    },
};

pub struct Directory {
    public: Table<OwnedRoomId, ()>,
    /// (appservice ID, network ID, room ID).
    appservice_rooms: Table<(String, String, OwnedRoomId), ()>,
    events: Arc<Events>,
    states: Arc<RoomStates>,
    members: Arc<Memberships>,
    appservices: Arc<Appservices>,
}

/// Which lists a listing shows (`/publicRooms`' `third_party_instance_id` and
/// `include_all_networks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network<'a> {
    /// The server's own list (the default).
    Matrix,
    /// The server's list and every registered appservice's.
    All,
    /// One appservice network's list, by its instance ID (`{appservice_id}|{network_id}`).
    Instance(&'a str),
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
        appservices: Arc<Appservices>,
    ) -> Self {
        Self {
            public: PUBLIC_ROOMS.open(store),
            appservice_rooms: APPSERVICE_ROOMS.open(store),
            events,
            states,
            members,
            appservices,
        }
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

    /// `PUT /directory/list/appservice/{networkId}/{roomId}`: publish (or withdraw) a room in
    /// `appservice_id`'s list for `network_id`. Only rooms the server knows may be published;
    /// withdrawing is always accepted.
    pub fn publish_for_appservice(
        &self,
        appservice_id: &str,
        network_id: &str,
        room_id: &RoomId,
        public: bool,
    ) -> Result<()> {
        let key = (appservice_id.to_owned(), network_id.to_owned(), room_id.to_owned());
        if !public {
            return Ok(self.appservice_rooms.remove(&key)?);
        }
        if self.states.room(room_id)?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        Ok(self.appservice_rooms.insert(&key, &())?)
    }

    /// Take a room off every list: the server's and each appservice's (a room shut down or
    /// purged).
    pub fn withdraw(&self, room_id: &RoomId) -> Result<()> {
        self.public.remove(&room_id.to_owned())?;
        let mut listed = Vec::new();
        for row in self.appservice_rooms.scan(KeyRange::all(), Direction::Forward)? {
            let (key, ()) = row?;
            if key.2 == room_id {
                listed.push(key);
            }
        }
        for key in listed {
            self.appservice_rooms.remove(&key)?;
        }
        Ok(())
    }

    /// The rooms on the lists `network` names. An instance ID that is not of the form
    /// `{appservice_id}|{network_id}` is refused; one of an appservice not registered (or a
    /// network it published nothing in) lists nothing.
    fn published(&self, network: Network<'_>) -> Result<BTreeSet<OwnedRoomId>> {
        let mut rooms = BTreeSet::new();
        let own = |rooms: &mut BTreeSet<OwnedRoomId>| -> Result<()> {
            for row in self.public.scan(KeyRange::all(), Direction::Forward)? {
                rooms.insert(row?.0);
            }
            Ok(())
        };
        match network {
            Network::Matrix => own(&mut rooms)?,
            Network::All => {
                own(&mut rooms)?;
                let registry = self.appservices.registry();
                for row in self.appservice_rooms.scan(KeyRange::all(), Direction::Forward)? {
                    let ((appservice_id, _, room_id), ()) = row?;
                    if registry.by_id(&appservice_id).is_some() {
                        rooms.insert(room_id);
                    }
                }
            }
            Network::Instance(instance_id) => {
                let (appservice_id, network_id) = parse_instance_id(instance_id).ok_or_else(|| {
                    Error::invalid_param(format!(
                        "Invalid third_party_instance_id {instance_id:?}: expected \"appservice|network\""
                    ))
                })?;
                if self.appservices.registry().by_id(appservice_id).is_some() {
                    let prefix = (appservice_id.to_owned(), network_id.to_owned());
                    for row in self.appservice_rooms.scan_prefix(&prefix, Direction::Forward)? {
                        rooms.insert(row?.0.2);
                    }
                }
            }
        }
        Ok(rooms)
    }

    /// Published rooms, most members first (then by room ID, so pages are stable), filtered
    /// by a case-insensitive search over name, topic and canonical alias and by room type.
    /// Tokens are offsets into that order.
    pub fn list(
        &self,
        network: Network<'_>,
        limit: Option<usize>,
        since: Option<&str>,
        search: Option<&str>,
        room_types: Option<&[Option<String>]>,
    ) -> Result<PublicRoomsPage> {
        let mut rooms = Vec::new();
        for room_id in self.published(network)? {
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
