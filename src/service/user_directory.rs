//! The user directory: finding local users by user ID or display name. Owns no table: the
//! users a requester may find come from the membership indexes (users sharing a room with
//! them, users joined to public or world-readable rooms) or, when the operator
//! makes every local user searchable, from the profiles; names come from the profiles.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    OwnedServerName, OwnedUserId, UserId,
    api::client::user_directory::search_users::v3::User,
    events::{StateEventType, room::member::MembershipState},
};
use serde_json::Value as JsonValue;

use super::{
    rooms::{events::Events, members::Memberships, state::RoomStates, visibility::Visibility},
    users::Users,
};
use crate::{
    Result,
    matrix::search::{directory_match, tokenize},
    storage::tables::ProfileRecord,
};

/// The most results one search returns, whatever the client asks.
const MAX_LIMIT: u64 = 100;

pub struct UserDirectory {
    server_name: OwnedServerName,
    search_all_local_users: bool,
    users: Arc<Users>,
    members: Arc<Memberships>,
    states: Arc<RoomStates>,
    events: Arc<Events>,
    visibility: Arc<Visibility>,
}

/// Found users and whether more matched than were returned.
pub struct DirectoryPage {
    pub users: Vec<User>,
    pub limited: bool,
}

/// A user that matched, with what orders the results.
struct Found {
    user_id: OwnedUserId,
    profile: ProfileRecord,
    /// How many query words equal a whole word of the name.
    exact_words: usize,
    shares_room: bool,
}

impl UserDirectory {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        server_name: OwnedServerName,
        search_all_local_users: bool,
        users: Arc<Users>,
        members: Arc<Memberships>,
        states: Arc<RoomStates>,
        events: Arc<Events>,
        visibility: Arc<Visibility>,
    ) -> Self {
        Self { server_name, search_all_local_users, users, members, states, events, visibility }
    }

    /// `POST /user_directory/search`: local, live users whose localpart or display name has a
    /// word starting with each query word. Ordered by whole-word matches, then users sharing
    /// a room with the requester, then those with a display name, then by name.
    pub fn search(&self, requester: &UserId, search_term: &str, limit: u64) -> Result<DirectoryPage> {
        let query = Query { words: tokenize(search_term), user_id: search_term.trim().to_lowercase() };
        if query.words.is_empty() {
            return Ok(DirectoryPage { users: Vec::new(), limited: false });
        }
        let limit = usize::try_from(limit.min(MAX_LIMIT)).unwrap_or(0);

        // Candidates, and whether each shares a room with the requester.
        let mut candidates: BTreeMap<OwnedUserId, bool> = BTreeMap::new();
        candidates.insert(requester.to_owned(), true);
        for room in self.members.rooms_of_user(requester, &MembershipState::Join)? {
            for member in self.members.members_with(&room, &MembershipState::Join)? {
                candidates.insert(member, true);
            }
        }
        let mut found = Vec::new();
        if self.search_all_local_users {
            // Every live local account: one pass over the profiles, accounts read for matches only.
            for (user_id, profile) in self.users.all_profiles()? {
                if let Some(exact_words) = matches(&query, &user_id, &profile)
                    && self.users.get(&user_id)?.is_some_and(|account| !account.deactivated)
                {
                    let shares_room = candidates.contains_key(&user_id);
                    found.push(Found { user_id, profile, exact_words, shares_room });
                }
            }
        } else {
            for room in self.states.room_ids()? {
                if self.is_public(&room)? {
                    for member in self.members.members_with(&room, &MembershipState::Join)? {
                        candidates.entry(member).or_insert(false);
                    }
                }
            }
            for (user_id, shares_room) in candidates {
                if user_id.server_name() != self.server_name {
                    continue;
                }
                // `None` for deactivated accounts: they are never found.
                let Some(profile) = self.users.profile(&user_id)? else { continue };
                if let Some(exact_words) = matches(&query, &user_id, &profile) {
                    found.push(Found { user_id, profile, exact_words, shares_room });
                }
            }
        }

        found.sort_by(|a, b| {
            b.exact_words
                .cmp(&a.exact_words)
                .then(b.shares_room.cmp(&a.shares_room))
                .then(b.profile.displayname.is_some().cmp(&a.profile.displayname.is_some()))
                .then_with(|| sort_name(a).cmp(&sort_name(b)))
                .then_with(|| a.user_id.cmp(&b.user_id))
        });
        let limited = found.len() > limit;
        let users = found
            .into_iter()
            .take(limit)
            .map(|f| {
                let mut user = User::new(f.user_id);
                user.display_name = f.profile.displayname;
                user.avatar_url = f.profile.avatar_url;
                user
            })
            .collect();
        Ok(DirectoryPage { users, limited })
    }

    /// Whether the room is public for the directory, as the spec defines it (Matrix 1.15):
    /// anyone may join it, or its history is world-readable. Being published in the room
    /// directory does not count: a published room whose join rule became `invite` stops
    /// exposing its members, as on Synapse. Decided from current state on every search, so
    /// users drop out as soon as they leave the room or it stops being public.
    fn is_public(&self, room: &ruma::RoomId) -> Result<bool> {
        if self.visibility.world_readable_now(room)? {
            return Ok(true);
        }
        let Some(id) = self.states.current_state_event_id(room, &StateEventType::RoomJoinRules, "")? else {
            return Ok(false);
        };
        let Some(event) = self.events.get(&id)? else { return Ok(false) };
        Ok(event.pdu.content_value().get("join_rule").and_then(JsonValue::as_str) == Some("public"))
    }
}

/// A directory query: its words, and the whole term, which may be a full user ID.
struct Query {
    words: Vec<String>,
    user_id: String,
}

/// Whether the user matches, and how well (see `directory_match`); a query that is the
/// user's full ID matches as well as a query can.
fn matches(query: &Query, user_id: &UserId, profile: &ProfileRecord) -> Option<usize> {
    if user_id.as_str().to_lowercase() == query.user_id {
        return Some(query.words.len());
    }
    directory_match(&query.words, user_id.localpart(), profile.displayname.as_deref())
}

fn sort_name(found: &Found) -> String {
    found.profile.displayname.as_deref().unwrap_or(found.user_id.localpart()).to_lowercase()
}
