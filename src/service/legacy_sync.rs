//! The deprecated sync endpoints that old bots and scripts still call: `/initialSync` (a
//! snapshot of every room of the user), `/rooms/{roomId}/initialSync` (one room; also how
//! clients peek into a world-readable room) and `/events` (the event stream before `/sync`:
//! a long-poll for everything after a token, as one flat list of room events, presence,
//! typing, receipts and account data).
//!
//! Nothing here has its own tables or rules. Timelines are read through `History::window`,
//! state through `Visibility`, events are rendered by `EventRenderer` (in the pre-r0 shape
//! these clients read), and the long-poll listens to the `Stream`'s change feed as `/sync`
//! does. Tokens are `/sync`'s: `s<n>`, a position of the one stream, so a token from
//! `/events` or `/initialSync` works as `from` for `/messages` and as `since` for `/sync`.

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
    time::Duration,
};

use ruma::{
    OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    api::{client::filter::RoomEventFilter, error::ErrorKind},
    events::{TimelineEventType, room::member::MembershipState},
    presence::PresenceState,
};
use serde::Serialize;
use serde_json::{Value as JsonValue, json};
use tokio::time::Instant;

use crate::{
    Error, Result,
    service::{
        account_data::{AccountData, AccountDataEntry},
        presence::{Presence, PresenceView},
        rooms::{
            directory::Directory,
            events::{Events, StoredEvent},
            history::{History, WindowFilter},
            members::Memberships,
            receipts::{self, Receipts},
            render::{EventRenderer, Rendering, Viewer},
            typing::Typing,
            visibility::Visibility,
        },
        stream::{Change, Heard, Stream},
    },
    storage::{Direction, tables::MembershipRecord},
};

/// Messages per room, and events per `/events` answer, when the client names no `limit`
/// (Synapse's default).
pub const DEFAULT_LIMIT: usize = 10;
/// The largest `limit` honoured.
pub const MAX_LIMIT: usize = 1000;
/// How long `/events` waits when the client names no `timeout` (Synapse's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest long-poll, whatever the client asks (as `/sync`).
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

/// `GET /initialSync`.
#[derive(Serialize)]
pub struct InitialSync {
    /// Where `/events` (or `/sync`) continues.
    pub end: String,
    pub rooms: Vec<RoomSnapshot>,
    pub presence: Vec<JsonValue>,
    pub account_data: Vec<JsonValue>,
    /// The receipts of the joined rooms, one `m.receipt` event per room (Synapse sends them;
    /// the spec does not list them).
    pub receipts: Vec<JsonValue>,
}

/// One room as `/initialSync` and `/rooms/{roomId}/initialSync` show it.
#[derive(Serialize)]
pub struct RoomSnapshot {
    pub room_id: OwnedRoomId,
    /// The requester's membership; absent when they are only peeking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub membership: Option<MembershipState>,
    /// `public` if the room is published in the directory, else `private`.
    pub visibility: &'static str,
    /// Who invited the requester, for invites.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inviter: Option<OwnedUserId>,
    /// The invite event, for invites.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invite: Option<JsonValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<PaginationChunk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Vec<JsonValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_data: Option<Vec<JsonValue>>,
    /// Presence of the joined members (`/rooms/{roomId}/initialSync` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence: Option<Vec<JsonValue>>,
    /// The room's receipts (`/rooms/{roomId}/initialSync` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipts: Option<Vec<JsonValue>>,
}

/// The latest events of a room, oldest first, with tokens for `/messages`.
#[derive(Serialize)]
pub struct PaginationChunk {
    pub chunk: Vec<JsonValue>,
    /// Before the first event of `chunk`: `/messages?dir=b` continues from here.
    pub start: String,
    /// After the last event of `chunk`.
    pub end: String,
}

/// One `GET /events` request, parsed.
pub struct EventsRequest {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// The token to read after; `None` starts at the current position (the first call).
    pub from: Option<u64>,
    pub timeout: Duration,
    /// Only this room's events: a joined room, or a world-readable one to peek into.
    pub room_id: Option<OwnedRoomId>,
    pub limit: usize,
}

/// `GET /events`.
#[derive(Serialize)]
pub struct EventsPage {
    pub chunk: Vec<JsonValue>,
    pub start: String,
    /// Where the next `/events` continues: after everything in `chunk`, and after every
    /// position examined when `chunk` was not cut short by `limit`.
    pub end: String,
}

/// Which rooms an `/events` request reads.
struct Scope {
    /// Rooms whose events, typing and receipts it returns.
    rooms: BTreeSet<OwnedRoomId>,
    /// Whether it peeks into a room the user has not joined.
    peeking: bool,
}

/// What one pass of `/events` found.
struct EventsPass {
    chunk: Vec<JsonValue>,
    end: u64,
    /// Rooms whose changes would concern this request.
    watched: HashSet<OwnedRoomId>,
}

pub struct LegacySync {
    stream: Arc<Stream>,
    events: Arc<Events>,
    members: Arc<Memberships>,
    visibility: Arc<Visibility>,
    history: Arc<History>,
    account_data: Arc<AccountData>,
    receipts: Arc<Receipts>,
    typing: Arc<Typing>,
    presence: Arc<Presence>,
    directory: Arc<Directory>,
    renderer: Arc<EventRenderer>,
}

impl LegacySync {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stream: Arc<Stream>,
        events: Arc<Events>,
        members: Arc<Memberships>,
        visibility: Arc<Visibility>,
        history: Arc<History>,
        account_data: Arc<AccountData>,
        receipts: Arc<Receipts>,
        typing: Arc<Typing>,
        presence: Arc<Presence>,
        directory: Arc<Directory>,
        renderer: Arc<EventRenderer>,
    ) -> Self {
        Self {
            stream,
            events,
            members,
            visibility,
            history,
            account_data,
            receipts,
            typing,
            presence,
            directory,
            renderer,
        }
    }

    /// `GET /initialSync`: every room the user has joined or is invited to (and, with
    /// `archived`, has left or been banned from, unless forgotten), each with its latest
    /// `limit` messages and its state; the presence of everyone sharing a room with the user
    /// who is not offline; the user's global account data.
    pub fn initial_sync(&self, viewer: Viewer<'_>, limit: usize, archived: bool) -> Result<InitialSync> {
        let user_id = viewer.user_id;
        let upto = self.stream.committed();
        let limit = limit.min(MAX_LIMIT);
        let ignored = self.history.ignored_users(user_id)?;
        let account = self.account_data.changes(user_id, None, upto)?;
        let mut rooms = Vec::new();
        let mut receipts = Vec::new();
        let mut joined = BTreeSet::new();
        for (room_id, record) in self.members.memberships_of_user(user_id)? {
            let snapshot = match MembershipState::from(record.membership.as_str()) {
                // A join committed after `upto` shows from the next token on.
                MembershipState::Join if record.joined_since() <= upto => {
                    joined.insert(room_id.clone());
                    receipts.extend(self.receipt_event(user_id, &room_id, &ignored, None, upto)?);
                    self.joined_snapshot(
                        viewer,
                        &room_id,
                        Some(MembershipState::Join),
                        upto,
                        limit,
                        &ignored,
                    )?
                }
                MembershipState::Invite if record.stream <= upto => {
                    match self.invite_snapshot(viewer, &room_id, &record, &ignored)? {
                        Some(snapshot) => snapshot,
                        None => continue,
                    }
                }
                membership @ (MembershipState::Leave | MembershipState::Ban)
                    if archived
                        && !record.forgotten
                        && record.stream <= upto
                        && self.history.room_exists(&room_id)? =>
                {
                    self.left_snapshot(viewer, &room_id, membership, &record, limit, &ignored)?
                }
                _ => continue,
            };
            // Invites come without the room's account data, as Synapse sends them.
            let account_data = snapshot.messages.is_some().then(|| room_account_data(&account, &room_id));
            rooms.push(RoomSnapshot { account_data, ..snapshot });
        }

        // Everyone sharing a joined room, and the user themselves, unless offline.
        let mut mates = BTreeSet::from([user_id.to_owned()]);
        for room_id in &joined {
            mates.extend(self.members.members_with(room_id, &MembershipState::Join)?);
        }
        let mut presence = Vec::new();
        for mate in &mates {
            if let Some(view) = self.presence.get(mate)?
                && view.state != PresenceState::Offline
            {
                presence.push(presence_event(&view));
            }
        }
        let account_data = account
            .iter()
            .filter(|entry| entry.room_id.is_none())
            .map(|entry| json!({ "type": entry.kind, "content": entry.content }))
            .collect();
        Ok(InitialSync { end: token(upto), rooms, presence, account_data, receipts })
    }

    /// `GET /rooms/{roomId}/initialSync`, as Synapse answers it: a joined member sees the room
    /// now, with its joined members' presence and its receipts; a former member (left, not
    /// forgotten) sees it as it was when they left; anyone else may peek into a world-readable
    /// room (no `membership` then). Invitees and banned users peek or are refused like
    /// strangers. History visibility applies to the messages either way.
    pub fn room_initial_sync(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        limit: usize,
    ) -> Result<RoomSnapshot> {
        let user_id = viewer.user_id;
        let upto = self.stream.committed();
        let limit = limit.min(MAX_LIMIT);
        let ignored = self.history.ignored_users(user_id)?;
        let record = self.members.get(room_id, user_id)?;
        let membership = record.as_ref().map(|r| MembershipState::from(r.membership.as_str()));
        let refused = || {
            Error::forbidden(format!("User {user_id} not in room {room_id}, and room previews are disabled"))
        };
        // A former member who never joined (a rejected invite) has no past view of the room.
        let parted = match (&membership, &record) {
            (Some(MembershipState::Leave), Some(record)) if !record.forgotten => {
                match self.visibility.readable_state(user_id, room_id) {
                    Ok(_) => true,
                    Err(Error::Matrix { kind: ErrorKind::Forbidden, .. }) => false,
                    Err(e) => return Err(e),
                }
            }
            _ => false,
        };
        let snapshot = match (membership, &record) {
            (Some(MembershipState::Join), _) => {
                self.room_view(viewer, room_id, Some(MembershipState::Join), upto, limit, &ignored)?
            }
            (Some(MembershipState::Leave), Some(record)) if parted => {
                let snapshot =
                    self.left_snapshot(viewer, room_id, MembershipState::Leave, record, limit, &ignored)?;
                RoomSnapshot { presence: Some(Vec::new()), receipts: Some(Vec::new()), ..snapshot }
            }
            _ if self.visibility.world_readable_now(room_id)? => {
                self.room_view(viewer, room_id, None, upto, limit, &ignored)?
            }
            _ => return Err(refused()),
        };
        let account = self.account_data.changes(user_id, None, upto)?;
        Ok(RoomSnapshot { account_data: Some(room_account_data(&account, room_id)), ..snapshot })
    }

    /// `GET /events`: everything after `from` that concerns the user, at once if there is
    /// anything, else as soon as something arrives or the timeout passes. Room events of the
    /// user's joined rooms (or of the one room asked for) in stream order, and the user's own
    /// membership changes elsewhere (invites, leaves); then presence of room mates (and of
    /// members who just joined), typing, receipts and the user's account data.
    pub async fn events(&self, request: EventsRequest) -> Result<EventsPage> {
        let user_id = request.user_id.as_ref();
        // Checked once: a peek that becomes a join keeps reading the same room.
        let explicit = match &request.room_id {
            None => None,
            Some(room) if self.members.is_joined(room, user_id)? => Some((room.clone(), false)),
            Some(room) if self.visibility.world_readable_now(room)? => Some((room.clone(), true)),
            Some(_) => return Err(Error::forbidden("Non-joined access not allowed")),
        };
        // Polling the stream keeps a user online, as syncing does.
        self.presence.syncing(user_id, &PresenceState::Online)?;
        let deadline = Instant::now() + request.timeout.min(MAX_TIMEOUT);
        // Listen before reading the committed position, so no later change is missed.
        let mut listener = self.stream.listen();
        let from = request.from.map_or_else(|| self.stream.committed(), |f| f.min(self.stream.committed()));
        let limit = request.limit.clamp(1, MAX_LIMIT);
        loop {
            let upto = self.stream.committed();
            let scope = match &explicit {
                Some((room, peeking)) => Scope { rooms: BTreeSet::from([room.clone()]), peeking: *peeking },
                None => Scope {
                    rooms: self.members.rooms_of_user(user_id, &MembershipState::Join)?.into_iter().collect(),
                    peeking: false,
                },
            };
            let pass = self.events_pass(&request, &scope, from, upto, limit)?;
            let page = || EventsPage { chunk: pass.chunk.clone(), start: token(from), end: token(pass.end) };
            if !pass.chunk.is_empty() || Instant::now() >= deadline {
                return Ok(page());
            }
            // Wait for a change that concerns this request, then look again.
            let _waiting = listener.waiting();
            loop {
                let heard = tokio::select! {
                    heard = listener.next() => heard,
                    () = tokio::time::sleep_until(deadline) => return Ok(page()),
                };
                match heard {
                    Heard::Change(announced) => {
                        if self.concerns(user_id, &pass.watched, &announced.change)? {
                            tokio::select! {
                                () = listener.committed_to(announced.position) => {}
                                () = tokio::time::sleep_until(deadline) => {}
                            }
                            break;
                        }
                    }
                    Heard::Missed => break,
                    Heard::Closed => return Ok(page()),
                }
            }
        }
    }

    fn concerns(&self, user_id: &UserId, watched: &HashSet<OwnedRoomId>, change: &Change) -> Result<bool> {
        Ok(match change {
            Change::Room(room_id) => watched.contains(room_id),
            Change::User(other) => other == user_id,
            Change::RoomMates(other) => {
                other != user_id
                    && self
                        .members
                        .rooms_of_user(other, &MembershipState::Join)?
                        .iter()
                        .any(|room| watched.contains(room))
            }
        })
    }

    fn events_pass(
        &self,
        request: &EventsRequest,
        scope: &Scope,
        from: u64,
        upto: u64,
        limit: usize,
    ) -> Result<EventsPass> {
        let user_id = request.user_id.as_ref();
        let viewer = Viewer { user_id, device_id: Some(request.device_id.as_ref()) };
        let ignored = self.history.ignored_users(user_id)?;
        let filter = RoomEventFilter::default();
        let which = WindowFilter { filter: &filter, ignored: &ignored };
        let mut watched: HashSet<OwnedRoomId> = scope.rooms.iter().cloned().collect();

        // Room events. `end` stops before the first position a room's window did not examine,
        // so nothing is skipped when the next call starts there.
        let mut end = upto;
        let mut found: Vec<Arc<StoredEvent>> = Vec::new();
        for room_id in &scope.rooms {
            if self.events.last_position(room_id)? <= from {
                continue;
            }
            let window =
                self.history.window(user_id, room_id, from, Some(upto), Direction::Forward, &which, limit)?;
            if window.more {
                end = end.min(window.next);
            }
            found.extend(window.events);
        }
        if !scope.peeking && request.room_id.is_none() {
            // The user's own membership changes in rooms they are not joined to: an invite, or
            // the leave, kick or ban that took them out.
            for (room_id, record) in self.members.memberships_of_user(user_id)? {
                if scope.rooms.contains(&room_id) {
                    continue;
                }
                let membership = MembershipState::from(record.membership.as_str());
                if matches!(membership, MembershipState::Invite | MembershipState::Knock) {
                    watched.insert(room_id.clone());
                }
                if record.stream <= from || record.stream > upto {
                    continue;
                }
                let Some(event) = self.events.get(&record.event_id)? else { continue };
                let from_ignored =
                    membership == MembershipState::Invite && ignored.contains(&event.pdu.sender);
                if !from_ignored && self.visibility.may_see_event(user_id, &event)? {
                    found.push(event);
                }
            }
        }
        found.retain(|event| event.stream <= end);
        found.sort_by_key(|event| event.stream);
        found.dedup_by_key(|event| event.stream);
        if found.len() > limit {
            found.truncate(limit);
            end = found.last().map_or(end, |event| event.stream);
        }
        let mut chunk: Vec<JsonValue> = found
            .iter()
            .map(|event| self.renderer.value(viewer, event, Rendering::LEGACY))
            .collect::<Result<_>>()?;

        // Presence: room mates whose presence changed, then the members who just joined (all
        // of a room's members when the user is the one who joined).
        if self.presence.is_enabled() {
            let mut mate_rooms: BTreeSet<OwnedRoomId> =
                self.members.rooms_of_user(user_id, &MembershipState::Join)?.into_iter().collect();
            mate_rooms.extend(scope.rooms.iter().cloned());
            let mut mates = BTreeSet::from([user_id.to_owned()]);
            for room_id in &mate_rooms {
                mates.extend(self.members.members_with(room_id, &MembershipState::Join)?);
            }
            let mut sent = BTreeSet::new();
            for view in self.presence.changes(Some(from), end)? {
                if mates.contains(&view.user_id) && sent.insert(view.user_id.clone()) {
                    chunk.push(presence_event(&view));
                }
            }
            for event in &found {
                for user in self.joined_by(user_id, event)? {
                    if sent.insert(user.clone()) {
                        chunk.push(self.presence_or_offline(&user)?);
                    }
                }
            }
        }

        for room_id in &scope.rooms {
            let typing_at = self.typing.last_position(room_id);
            if typing_at > from && typing_at <= end {
                let users = self.typing.typing_users(room_id);
                chunk.push(
                    json!({ "type": "m.typing", "room_id": room_id, "content": { "user_ids": users } }),
                );
            }
            if self.receipts.last_position(room_id)? > from {
                chunk.extend(self.receipt_event(user_id, room_id, &ignored, Some(from), end)?);
            }
        }

        for entry in self.account_data.changes(user_id, Some(from), end)? {
            chunk.push(account_data_event(&entry, true));
        }
        Ok(EventsPass { chunk, end, watched })
    }

    /// The users whose presence a client learns because `event` is a join: the joiner, or
    /// everyone in the room when the joiner is the user.
    fn joined_by(&self, user_id: &UserId, event: &StoredEvent) -> Result<Vec<OwnedUserId>> {
        let pdu = &event.pdu;
        if pdu.kind != TimelineEventType::RoomMember
            || pdu.content_value().get("membership").and_then(JsonValue::as_str) != Some("join")
        {
            return Ok(Vec::new());
        }
        let Some(joiner) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok()) else {
            return Ok(Vec::new());
        };
        if joiner == user_id {
            return self.members.members_with(&pdu.room_id, &MembershipState::Join);
        }
        Ok(vec![joiner])
    }

    /// A joined room now: the latest messages, the current state, its joined members'
    /// presence and its receipts (`/rooms/{roomId}/initialSync`).
    fn room_view(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        membership: Option<MembershipState>,
        upto: u64,
        limit: usize,
        ignored: &HashSet<OwnedUserId>,
    ) -> Result<RoomSnapshot> {
        let snapshot = self.joined_snapshot(viewer, room_id, membership, upto, limit, ignored)?;
        let mut presence = Vec::new();
        if self.presence.is_enabled() {
            for member in self.members.members_with(room_id, &MembershipState::Join)? {
                presence.push(self.presence_or_offline(&member)?);
            }
        }
        let receipts =
            self.receipt_event(viewer.user_id, room_id, ignored, None, upto)?.into_iter().collect();
        Ok(RoomSnapshot { presence: Some(presence), receipts: Some(receipts), ..snapshot })
    }

    /// A room the user has joined (or peeks into): its latest messages up to `upto` and the
    /// state the user may read.
    fn joined_snapshot(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        membership: Option<MembershipState>,
        upto: u64,
        limit: usize,
        ignored: &HashSet<OwnedUserId>,
    ) -> Result<RoomSnapshot> {
        let state = self.visibility.readable_state(viewer.user_id, room_id)?;
        let mut state_events = self.events.get_many(state.values())?;
        state_events.sort_by_key(|event| event.stream);
        Ok(RoomSnapshot {
            membership,
            messages: Some(self.latest_messages(viewer, room_id, upto, limit, ignored)?),
            state: Some(self.render(viewer, &state_events)?),
            ..self.bare_snapshot(room_id)?
        })
    }

    /// A room the user left or was banned from: the messages up to their departure and the
    /// state then.
    fn left_snapshot(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        membership: MembershipState,
        record: &MembershipRecord,
        limit: usize,
        ignored: &HashSet<OwnedUserId>,
    ) -> Result<RoomSnapshot> {
        let state_events = match self.visibility.readable_state(viewer.user_id, room_id) {
            Ok(state) => {
                let mut events = self.events.get_many(state.values())?;
                events.sort_by_key(|event| event.stream);
                self.render(viewer, &events)?
            }
            // Left without ever joining (a rejected invite): no state of the room to show.
            Err(Error::Matrix { kind: ErrorKind::Forbidden, .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(RoomSnapshot {
            membership: Some(membership),
            messages: Some(self.latest_messages(viewer, room_id, record.stream, limit, ignored)?),
            state: Some(state_events),
            ..self.bare_snapshot(room_id)?
        })
    }

    /// An invite: the invite event and who sent it. Invites from ignored users are hidden.
    fn invite_snapshot(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        record: &MembershipRecord,
        ignored: &HashSet<OwnedUserId>,
    ) -> Result<Option<RoomSnapshot>> {
        let Some(invite) = self.events.get(&record.event_id)? else { return Ok(None) };
        if ignored.contains(&invite.pdu.sender) {
            return Ok(None);
        }
        Ok(Some(RoomSnapshot {
            membership: Some(MembershipState::Invite),
            inviter: Some(invite.pdu.sender.clone()),
            invite: Some(self.renderer.value(viewer, &invite, Rendering::LEGACY)?),
            ..self.bare_snapshot(room_id)?
        }))
    }

    fn bare_snapshot(&self, room_id: &RoomId) -> Result<RoomSnapshot> {
        Ok(RoomSnapshot {
            room_id: room_id.to_owned(),
            membership: None,
            visibility: if self.directory.is_published(room_id)? { "public" } else { "private" },
            inviter: None,
            invite: None,
            messages: None,
            state: None,
            account_data: None,
            presence: None,
            receipts: None,
        })
    }

    /// The latest `limit` events up to token `upto` that the user may see, oldest first.
    fn latest_messages(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        upto: u64,
        limit: usize,
        ignored: &HashSet<OwnedUserId>,
    ) -> Result<PaginationChunk> {
        let filter = RoomEventFilter::default();
        let which = WindowFilter { filter: &filter, ignored };
        let window =
            self.history.window(viewer.user_id, room_id, upto, None, Direction::Reverse, &which, limit)?;
        let mut events = window.events;
        events.reverse();
        // A backward read from `start` continues right before the first event shown.
        let start = events.first().map_or(upto, |first| first.stream - 1);
        Ok(PaginationChunk { chunk: self.render(viewer, &events)?, start: token(start), end: token(upto) })
    }

    fn render(&self, viewer: Viewer<'_>, events: &[Arc<StoredEvent>]) -> Result<Vec<JsonValue>> {
        events.iter().map(|event| self.renderer.value(viewer, event, Rendering::LEGACY)).collect()
    }

    /// The room's receipts changed after `since` up to `upto` (all when `since` is None) as
    /// one `m.receipt` event, if there are any; ignored users' are left out.
    fn receipt_event(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        ignored: &HashSet<OwnedUserId>,
        since: Option<u64>,
        upto: u64,
    ) -> Result<Option<JsonValue>> {
        let mut changed = self.receipts.changed(user_id, room_id, since, upto)?;
        changed.retain(|receipt| !ignored.contains(&receipt.user_id));
        if changed.is_empty() {
            return Ok(None);
        }
        Ok(Some(json!({
            "type": "m.receipt",
            "room_id": room_id,
            "content": receipts::receipt_content(&changed),
        })))
    }

    /// A user's presence event; users who never set one are offline.
    fn presence_or_offline(&self, user_id: &UserId) -> Result<JsonValue> {
        Ok(match self.presence.get(user_id)? {
            Some(view) => presence_event(&view),
            None => json!({ "type": "m.presence", "content": { "presence": "offline", "user_id": user_id } }),
        })
    }
}

/// An `m.presence` event as the old endpoints send it: the user in `content.user_id`, and
/// `currently_active` only for online users (Synapse's format).
fn presence_event(view: &PresenceView) -> JsonValue {
    let mut content = view.event_content();
    content["user_id"] = view.user_id.as_str().into();
    if view.state != PresenceState::Online
        && let Some(fields) = content.as_object_mut()
    {
        fields.remove("currently_active");
    }
    json!({ "type": "m.presence", "content": content })
}

/// A room's account data (its tags among them, as `m.tag`), without `room_id`.
fn room_account_data(account: &[AccountDataEntry], room_id: &RoomId) -> Vec<JsonValue> {
    account
        .iter()
        .filter(|entry| entry.room_id.as_deref() == Some(room_id))
        .map(|entry| account_data_event(entry, false))
        .collect()
}

/// An account data event; with `with_room`, room data names its room (the flat `/events`
/// list has no other place to say it).
fn account_data_event(entry: &AccountDataEntry, with_room: bool) -> JsonValue {
    let mut event = json!({ "type": entry.kind, "content": entry.content });
    if let (true, Some(room_id)) = (with_room, &entry.room_id) {
        event["room_id"] = room_id.as_str().into();
    }
    event
}

fn token(position: u64) -> String {
    format!("s{position}")
}
