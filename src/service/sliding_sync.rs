//! Simplified sliding sync (MSC4186), the sync Element X uses: the user's rooms sorted by
//! recency (bump stamp), windows (`ranges`) of filtered lists of them, rooms subscribed to
//! by ID, and extensions for to-device messages, keys, account data, receipts and typing.
//!
//! A connection (user, device, `conn_id`) remembers, per response it gave (`pos`), which
//! rooms it sent up to which stream position and with which `required_state` and timeline
//! limit, so the next response carries only what changed: a room sent before comes back
//! only when something happened in it, with the events since. A connection keeps the position
//! the client last used and those answered since, so a client whose response was lost (or
//! that abandoned a long-poll) can go on from either; older or unknown positions answer
//! `M_UNKNOWN_POS` and the client starts over.
//! Connections live in memory: after a restart every client starts over once.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ruma::{
    JsOption, OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::{
        client::{
            filter::RoomEventFilter,
            sync::sync_events::{
                DeviceLists,
                v5::{Request, Response, request, response},
            },
        },
        error::ErrorKind,
    },
    events::{StateEventType, room::member::MembershipState},
    serde::Raw,
};
use serde_json::Value as JsonValue;
use tokio::time::Instant;

use crate::{
    Error, Result,
    matrix::sliding::{self, ListFilter, RequiredState, RoomFacts},
    service::{
        account_data::AccountData,
        keys::Keys,
        presence::Presence,
        push::Notifications,
        rooms::{
            events::Events,
            history::{History, WindowFilter},
            members::Memberships,
            remote_invites::RemoteInvites,
            render::{EventRenderer, Rendering, Shape, Viewer},
            state::StateMap,
            view::RoomViews,
        },
        stream::{Change, Stream},
        sync::{self, Sync},
        to_device::ToDevice,
    },
    storage::{Direction, tables::MembershipRecord},
};

/// Longest long-poll.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Connections one device may hold; opening one more forgets its least recently used.
const MAX_CONNECTIONS_PER_DEVICE: usize = 16;
/// Connections the server holds; past it, the least recently used go.
const MAX_CONNECTIONS: usize = 100_000;
/// Positions of one connection the client may continue from: the one it last used and
/// those answered since (long-polls the client abandoned still answer).
const MAX_POSITIONS: usize = 8;
/// Longest `conn_id`.
const MAX_CONN_ID_BYTES: usize = 64;

/// One sliding sync request, parsed.
pub struct SlidingRequest {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub body: Request,
    /// Each list's `filters.spaces` (ruma's filter type has no field for it).
    pub list_spaces: BTreeMap<String, Vec<OwnedRoomId>>,
}

/// What a connection sent of one room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sent {
    /// The stream position the client has the room up to.
    at: u64,
    /// The `required_state` it was sent under.
    required: u64,
    timeline_limit: usize,
    /// Whether it was an invite (stripped state) rather than a room the user is in.
    invite: bool,
}

/// A connection's state as of one response.
#[derive(Clone, Debug, Default)]
struct Snapshot {
    upto: u64,
    rooms: RoomsSent,
    counts: BTreeMap<String, usize>,
}

/// What a connection sent of each room, as a map shared between the connection's positions
/// plus what each position changed: a response usually changes a few rooms of hundreds, so
/// the positions a connection keeps cost one map, not one each.
#[derive(Clone, Debug, Default)]
struct RoomsSent {
    base: Arc<HashMap<OwnedRoomId, Sent>>,
    /// Changes over `base`; `None` removes a room.
    changes: HashMap<OwnedRoomId, Option<Sent>>,
}

impl RoomsSent {
    fn get(&self, room_id: &RoomId) -> Option<Sent> {
        match self.changes.get(room_id) {
            Some(changed) => *changed,
            None => self.base.get(room_id).copied(),
        }
    }

    fn contains_key(&self, room_id: &RoomId) -> bool {
        self.get(room_id).is_some()
    }

    fn insert(&mut self, room_id: &RoomId, sent: Sent) {
        if self.get(room_id) != Some(sent) {
            self.changes.insert(room_id.to_owned(), Some(sent));
        }
    }

    fn remove(&mut self, room_id: &RoomId) {
        if self.base.contains_key(room_id) {
            self.changes.insert(room_id.to_owned(), None);
        } else {
            self.changes.remove(room_id);
        }
    }

    /// Keep only the rooms `keep` says yes to.
    fn retain(&mut self, keep: impl Fn(&RoomId) -> bool) {
        let gone: Vec<OwnedRoomId> =
            self.base.keys().filter(|r| !keep(r) && self.changes.get(*r) != Some(&None)).cloned().collect();
        for room_id in gone {
            self.changes.insert(room_id, None);
        }
        self.changes.retain(|room_id, changed| changed.is_none() || keep(room_id));
    }

    /// Fold the changes into a new shared map once they are a sizeable part of it.
    fn settle(&mut self) {
        if self.changes.len() <= 16 || self.changes.len() * 4 <= self.base.len() {
            return;
        }
        let mut merged = (*self.base).clone();
        for (room_id, changed) in self.changes.drain() {
            match changed {
                Some(sent) => merged.insert(room_id, sent),
                None => merged.remove(&room_id),
            };
        }
        self.base = Arc::new(merged);
    }
}

struct Connection {
    /// The positions the client may continue from, oldest first.
    snapshots: Vec<(u64, Arc<Snapshot>)>,
    last_used: Instant,
}

type ConnectionKey = (OwnedUserId, OwnedDeviceId, String);

/// A device's connections, by `conn_id`.
type DeviceConnections = HashMap<String, Connection>;

/// The open connections by device: the per-device cap and forgetting a device look at that
/// device's connections only.
#[derive(Default)]
struct Open {
    devices: HashMap<(OwnedUserId, OwnedDeviceId), DeviceConnections>,
    count: usize,
}

impl Open {
    /// Forget the least recently used connection of all (the server holds too many).
    fn evict_oldest(&mut self) {
        let oldest = self
            .devices
            .iter()
            .flat_map(|(device, conns)| conns.iter().map(move |(id, c)| (device, id, c.last_used)))
            .min_by_key(|(_, _, used)| *used)
            .map(|(device, id, _)| (device.clone(), id.clone()));
        if let Some((device, conn_id)) = oldest {
            self.remove(&device, &conn_id);
        }
    }

    fn remove(&mut self, device: &(OwnedUserId, OwnedDeviceId), conn_id: &str) {
        if let Some(conns) = self.devices.get_mut(device) {
            if conns.remove(conn_id).is_some() {
                self.count -= 1;
            }
            if conns.is_empty() {
                self.devices.remove(device);
            }
        }
    }
}

impl Connections {
    /// Forget a device's connections (the device was deleted or logged out).
    pub fn forget_device(&self, user_id: &UserId, device_id: &ruma::DeviceId) {
        let mut open = self.lock();
        if let Some(conns) = open.devices.remove(&(user_id.to_owned(), device_id.to_owned())) {
            open.count -= conns.len();
        }
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.lock().count
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state a connection had when it answered with `pos`.
    fn snapshot(&self, key: &ConnectionKey, pos: &str) -> Result<(u64, Arc<Snapshot>)> {
        let unknown =
            || Error::new(ErrorKind::UnknownPos, "Unknown or expired position; start a new connection");
        let pos: u64 = pos.parse().map_err(|_| unknown())?;
        let (user, device, conn_id) = key;
        let mut open = self.lock();
        let connection = open
            .devices
            .get_mut(&(user.clone(), device.clone()))
            .and_then(|conns| conns.get_mut(conn_id))
            .ok_or_else(unknown)?;
        connection.last_used = Instant::now();
        let snapshot = connection.snapshots.iter().find(|(p, _)| *p == pos).ok_or_else(unknown)?;
        let snapshot = Arc::clone(&snapshot.1);
        // Using a position proves the client saw its response: older ones can go. Later ones
        // stay, for a response it never saw (an abandoned long-poll still answers).
        connection.snapshots.retain(|(p, _)| *p >= pos);
        Ok((pos, snapshot))
    }

    /// Record a response's state under a new position, keeping the one the client came
    /// from (in case this response is lost) and forgetting older ones.
    fn remember(&self, key: ConnectionKey, from: Option<u64>, snapshot: Snapshot) -> u64 {
        let pos = self.next_pos.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let (user, device, conn_id) = key;
        let device = (user, device);
        let mut open = self.lock();
        let known = open.devices.get(&device).is_some_and(|conns| conns.contains_key(&conn_id));
        if !known {
            let mine = open.devices.get(&device).map_or(0, HashMap::len);
            if mine >= MAX_CONNECTIONS_PER_DEVICE
                && let Some(oldest) =
                    open.devices[&device].iter().min_by_key(|(_, c)| c.last_used).map(|(id, _)| id.clone())
            {
                open.remove(&device, &oldest);
            }
            if open.count >= MAX_CONNECTIONS {
                open.evict_oldest();
            }
            open.count += 1;
        }
        let connection = open
            .devices
            .entry(device)
            .or_default()
            .entry(conn_id)
            .or_insert_with(|| Connection { snapshots: Vec::new(), last_used: now });
        connection.last_used = now;
        if from.is_none() {
            // A new connection (no `pos`) starts over.
            connection.snapshots.clear();
        }
        connection.snapshots.push((pos, Arc::new(snapshot)));
        if connection.snapshots.len() > MAX_POSITIONS {
            connection.snapshots.remove(0);
        }
        pos
    }
}

/// A room as the user's lists see it.
struct Candidate<'a> {
    room_id: &'a OwnedRoomId,
    record: &'a MembershipRecord,
    membership: MembershipState,
    bump: u64,
}

/// How a room is asked for: the union over the lists and subscriptions that show it.
#[derive(Default)]
struct RoomAsk {
    required: RequiredState,
    timeline_limit: usize,
}

pub struct SlidingSync {
    stream: Arc<Stream>,
    events: Arc<Events>,
    members: Arc<Memberships>,
    history: Arc<History>,
    account_data: Arc<AccountData>,
    presence: Arc<Presence>,
    notifications: Arc<Notifications>,
    renderer: Arc<EventRenderer>,
    keys: Arc<Keys>,
    to_device: Arc<ToDevice>,
    views: Arc<RoomViews>,
    sync: Arc<Sync>,
    connections: Arc<Connections>,
    remote_invites: Arc<RemoteInvites>,
}

/// The open connections, in memory. Accounts forget a device's connections with the device.
pub struct Connections {
    open: Mutex<Open>,
    next_pos: AtomicU64,
}

impl Default for Connections {
    fn default() -> Self {
        // Positions from before a restart must not name a new connection's state: they
        // start from the wall clock's microseconds (not the server's clock, which tests
        // hold still).
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2));
        Self { open: Mutex::new(Open::default()), next_pos: AtomicU64::new(start) }
    }
}

impl SlidingSync {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stream: Arc<Stream>,
        events: Arc<Events>,
        members: Arc<Memberships>,
        history: Arc<History>,
        account_data: Arc<AccountData>,
        presence: Arc<Presence>,
        notifications: Arc<Notifications>,
        renderer: Arc<EventRenderer>,
        keys: Arc<Keys>,
        to_device: Arc<ToDevice>,
        views: Arc<RoomViews>,
        sync: Arc<Sync>,
        connections: Arc<Connections>,
        remote_invites: Arc<RemoteInvites>,
    ) -> Self {
        Self {
            remote_invites,
            stream,
            events,
            members,
            history,
            account_data,
            presence,
            notifications,
            renderer,
            keys,
            to_device,
            views,
            sync,
            connections,
        }
    }

    /// Answer a request: at once for a new connection or when something changed since
    /// `pos`, else when something concerning the connection arrives or the timeout passes.
    pub async fn sync(&self, request: SlidingRequest) -> Result<Response> {
        check_request(&request)?;
        let body = &request.body;
        self.presence.syncing(&request.user_id, &body.set_presence)?;
        let conn_id = body.conn_id.clone().unwrap_or_default();
        let key = (request.user_id.clone(), request.device_id.clone(), conn_id);
        let from = match &body.pos {
            None => None,
            Some(pos) => Some(self.connections.snapshot(&key, pos)?),
        };
        let timeout = if from.is_some() {
            body.timeout.unwrap_or(Duration::ZERO).min(MAX_TIMEOUT)
        } else {
            Duration::ZERO
        };
        let deadline = Instant::now() + timeout;
        let mut listener = self.stream.listen();
        let mut last_round = timeout.is_zero();
        loop {
            let upto = self.stream.committed();
            let (mut response, snapshot, watched) =
                self.pass(&request, from.as_ref().map(|(_, s)| s.as_ref()), upto)?;
            let changed =
                from.as_ref().is_none_or(|(_, s)| !is_empty(&response) || s.counts != snapshot.counts);
            if changed || last_round {
                let pos = self.connections.remember(key, from.as_ref().map(|(p, _)| *p), snapshot);
                response.pos = pos.to_string();
                response.txn_id = body.txn_id.clone();
                return Ok(response);
            }
            let members = &self.members;
            let user_id = &request.user_id;
            let concerns = |change: &Change| sync::concerns(members, user_id, &watched, change);
            if !listener.wait_for_change(deadline, concerns).await? {
                // Timed out (or shutting down): one more look, then answer whatever it finds.
                last_round = true;
            }
        }
    }

    /// One pass: the response for the connection as of `upto`, its new state, and the rooms
    /// whose changes concern it.
    fn pass(
        &self,
        request: &SlidingRequest,
        from: Option<&Snapshot>,
        upto: u64,
    ) -> Result<(Response, Snapshot, HashSet<OwnedRoomId>)> {
        let user_id = request.user_id.as_ref();
        let body = &request.body;
        let since = from.map(|s| s.upto.min(upto));
        let mut snapshot = from.cloned().unwrap_or_default();
        snapshot.upto = upto;
        snapshot.counts.clear();

        // The user's rooms, most recent first.
        let mut candidates = Vec::new();
        let mut watched = HashSet::new();
        let memberships = self.members.user_memberships(user_id)?;
        // Invites to (and knocks on) rooms of other servers, which have no membership rows here.
        let remote: Vec<(OwnedRoomId, MembershipRecord)> = self
            .remote_invites
            .of_user(user_id)?
            .into_iter()
            .filter(|(room, invite)| {
                matches!(invite.membership.as_str(), "invite" | "knock")
                    && !memberships.iter().any(|(r, row)| r == room && row.stream >= invite.stream)
            })
            .map(|(room, invite)| {
                let record = MembershipRecord {
                    membership: invite.membership,
                    event_id: invite.event_id,
                    stream: invite.stream,
                    forgotten: false,
                    joined_at: None,
                };
                (room, record)
            })
            .collect();
        for (room_id, record) in memberships.iter().chain(remote.iter()) {
            let membership = MembershipState::from(record.membership.as_str());
            let bump = match membership {
                MembershipState::Join => {
                    if record.joined_since() > upto {
                        continue;
                    }
                    self.events.bump_position(room_id)?.max(record.stream.min(upto))
                }
                MembershipState::Invite | MembershipState::Knock if record.stream <= upto => record.stream,
                // A room the client knew that the user left since: once more, with the leave.
                MembershipState::Leave | MembershipState::Ban
                    if !record.forgotten
                        && record.stream <= upto
                        && since.is_some_and(|s| record.stream > s)
                        && snapshot.rooms.contains_key(room_id) =>
                {
                    record.stream
                }
                _ => continue,
            };
            if matches!(membership, MembershipState::Join | MembershipState::Invite | MembershipState::Knock)
            {
                watched.insert(room_id.clone());
            }
            candidates.push(Candidate { room_id, record, membership, bump: bump.min(upto) });
        }
        candidates.sort_by(|a, b| b.bump.cmp(&a.bump).then_with(|| a.room_id.cmp(b.room_id)));
        let by_id: HashMap<&RoomId, &Candidate> =
            candidates.iter().map(|c| (c.room_id.as_ref(), c)).collect();

        // Which rooms to show, and how.
        let mut asks: BTreeMap<OwnedRoomId, RoomAsk> = BTreeMap::new();
        let mut response = Response::new(String::new());
        let mut facts = FactsCache::new(self, user_id)?;
        for (name, list) in &body.lists {
            let filter = list_filter(list.filters.as_ref(), request.list_spaces.contains_key(name));
            let spaces = match request.list_spaces.get(name) {
                Some(spaces) => self.space_children(user_id, spaces)?,
                None => HashSet::new(),
            };
            let mut kept = Vec::new();
            for candidate in &candidates {
                if matches!(candidate.membership, MembershipState::Leave | MembershipState::Ban) {
                    // Shown once in the lists that showed it, to deliver the leave.
                    if snapshot.rooms.contains_key(candidate.room_id) {
                        kept.push(candidate);
                    }
                    continue;
                }
                if filter.is_dm.is_none()
                    && filter.is_encrypted.is_none()
                    && filter.is_invite.is_none()
                    && filter.room_types.is_none()
                    && filter.not_room_types.is_empty()
                    && !filter.spaces
                {
                    kept.push(candidate);
                    continue;
                }
                if filter.allows(&facts.of(candidate, &spaces)?) {
                    kept.push(candidate);
                }
            }
            let ranges = sliding::ranges(&list.ranges, kept.len()).map_err(|e| match e {
                sliding::BadRanges::TooMany => {
                    Error::invalid_param(format!("List {name} has too many ranges"))
                }
                sliding::BadRanges::Backwards => {
                    Error::invalid_param(format!("List {name} has a range whose start is after its end"))
                }
            })?;
            for range in ranges {
                for candidate in &kept[range] {
                    let ask = asks.entry(candidate.room_id.clone()).or_default();
                    add_ask(
                        ask,
                        &list.room_details.required_state,
                        list.room_details.timeline_limit,
                        user_id,
                    )?;
                }
            }
            snapshot.counts.insert(name.clone(), kept.len());
            let mut out = response::List::default();
            out.count = UInt::new_saturating(kept.len() as u64);
            response.lists.insert(name.clone(), out);
        }
        for (room_id, subscription) in &body.room_subscriptions {
            if by_id.contains_key(&**room_id) {
                let ask = asks.entry(room_id.clone()).or_default();
                add_ask(ask, &subscription.required_state, subscription.timeline_limit, user_id)?;
            }
        }

        // The rooms, each as far as the client lacks it.
        let viewer = Viewer { user_id, device_id: Some(request.device_id.as_ref()) };
        let ignored = self.history.ignored_users(user_id)?;
        let dms = facts.dms.clone();
        for (room_id, ask) in &asks {
            let Some(candidate) = by_id.get(&**room_id) else { continue };
            let sent = snapshot.rooms.get(room_id);
            let Some(room) = self.room(viewer, candidate, ask, sent, since, upto, &ignored, &dms)? else {
                // Unchanged: what the connection has of the room still holds.
                continue;
            };
            response.rooms.insert(room_id.clone(), room);
            let left = matches!(candidate.membership, MembershipState::Leave | MembershipState::Ban);
            if left {
                snapshot.rooms.remove(room_id);
            } else {
                snapshot.rooms.insert(
                    room_id,
                    Sent {
                        at: upto,
                        required: ask.required.fingerprint(),
                        timeline_limit: ask.timeline_limit,
                        invite: candidate.membership != MembershipState::Join,
                    },
                );
            }
        }
        // Rooms the user is no longer in are forgotten once delivered.
        snapshot.rooms.retain(|room_id| by_id.contains_key(room_id));
        snapshot.rooms.settle();

        self.extensions(request, &mut response, &asks, from, since, upto, &ignored, &watched)?;
        Ok((response, snapshot, watched))
    }

    /// One room of the response: all of it for a room the connection has not sent (or sent
    /// under a smaller `required_state` or timeline), what happened since for one it has,
    /// `None` for one that did not change.
    #[allow(clippy::too_many_arguments)]
    fn room(
        &self,
        viewer: Viewer<'_>,
        candidate: &Candidate,
        ask: &RoomAsk,
        sent: Option<Sent>,
        since: Option<u64>,
        upto: u64,
        ignored: &HashSet<OwnedUserId>,
        dms: &HashSet<OwnedRoomId>,
    ) -> Result<Option<response::Room>> {
        let room_id = candidate.room_id.as_ref();
        let user_id = viewer.user_id;
        let mut room = response::Room::new();
        room.bump_stamp = Some(UInt::new_saturating(candidate.bump));
        if matches!(candidate.membership, MembershipState::Invite | MembershipState::Knock) {
            if sent.is_some_and(|s| s.invite && s.at >= candidate.record.stream) {
                return Ok(None);
            }
            let Some(event) = self.events.get(&candidate.record.event_id)? else {
                return self.remote_invite_room(room, room_id, user_id, ignored);
            };
            if ignored.contains(&event.pdu.sender) {
                return Ok(None);
            }
            let stripped = self.views.stripped_state(&event)?;
            room.name = stripped_name(&stripped);
            room.invite_state = Some(stripped);
            room.initial = Some(true);
            room.is_dm = Some(
                event.pdu.content_value().get("is_direct").and_then(JsonValue::as_bool).unwrap_or(false)
                    || dms.contains(room_id),
            );
            return Ok(Some(room));
        }
        if !self.history.room_exists(room_id)? {
            // Purged by an admin after the user left: only the leave is left to deliver.
            let Some(event) = self.events.get(&candidate.record.event_id)? else { return Ok(None) };
            let rendering = Rendering { shape: Shape::Sync, fields: None };
            room.timeline =
                self.renderer.raw_all(viewer, [&event], rendering)?.into_iter().map(Raw::from_json).collect();
            room.limited = true;
            room.prev_batch = Some(format!("s{}", candidate.record.stream.saturating_sub(1)));
            return Ok(Some(room));
        }

        let required_fingerprint = ask.required.fingerprint();
        // How far back the client has the room: nowhere for a room not sent, or sent as an
        // invite, or now asked with a longer timeline.
        let room_since = sent.filter(|s| !s.invite && s.timeline_limit >= ask.timeline_limit).map(|s| s.at);
        let end = match candidate.membership {
            MembershipState::Join => upto,
            _ => candidate.record.stream.min(upto),
        };
        let state_changed_config = sent.is_some_and(|s| s.required != required_fingerprint);
        if let Some(at) = room_since {
            // Typing travels in an extension, not in the room.
            if !self.views.moved_since(room_id, at, end, false)? && !state_changed_config {
                return Ok(None);
            }
        }

        // Timeline: the latest events, after what the client has.
        let filter = RoomEventFilter::default();
        let which = WindowFilter { filter: &filter, ignored };
        let window = self.history.window(
            user_id,
            room_id,
            end,
            room_since,
            Direction::Reverse,
            &which,
            ask.timeline_limit,
        )?;
        let mut timeline = window.events;
        timeline.reverse();
        room.limited = window.more;
        room.prev_batch = Some(format!("s{}", timeline.first().map_or(end, |e| e.stream - 1)));
        room.num_live = Some(UInt::new_saturating(
            since.map_or(0, |s| timeline.iter().filter(|e| e.stream > s).count() as u64),
        ));

        // State: what is asked for, as of the timeline's end; for a room the client has,
        // only what changed (unless it now asks for other state).
        let state = self.history.state_at(room_id, end)?;
        let senders: BTreeSet<&str> = timeline.iter().map(|e| e.pdu.sender.as_str()).collect();
        let mut picked = ask.required.select(&state, &senders);
        let previous = match room_since {
            Some(at) if !state_changed_config => Some(self.history.state_at(room_id, at)?),
            _ => None,
        };
        if let Some(previous) = &previous {
            picked.retain(|(key, id)| {
                // Changed since, or the member event of a sender the client may lack.
                previous.get(*key) != Some(*id)
                    || (key.0 == StateEventType::RoomMember && senders.contains(key.1.as_str()))
            });
        }
        let mut state_events = self.events.get_many(picked.into_iter().map(|(_, id)| id))?;
        state_events.sort_by_key(|e| e.stream);

        let rendering = Rendering { shape: Shape::Sync, fields: None };
        room.timeline =
            self.renderer.raw_all(viewer, &timeline, rendering)?.into_iter().map(Raw::from_json).collect();
        room.required_state = self
            .renderer
            .raw_all(viewer, &state_events, rendering)?
            .into_iter()
            .map(Raw::from_json)
            .collect();

        // Name, avatar, heroes and counts: on first sight, or when members or names moved.
        let summary_moved = room_since.is_none()
            || timeline.iter().chain(&state_events).any(|e| {
                matches!(
                    e.pdu.kind,
                    ruma::events::TimelineEventType::RoomMember
                        | ruma::events::TimelineEventType::RoomName
                        | ruma::events::TimelineEventType::RoomCanonicalAlias
                        | ruma::events::TimelineEventType::RoomAvatar
                )
            });
        if room_since.is_none() {
            room.initial = Some(true);
        }
        if summary_moved {
            room.name = self.views.name(&state)?;
            room.avatar = match self.views.avatar(&state)? {
                Some(Some(url)) => JsOption::Some(url),
                Some(None) if room_since.is_some() => JsOption::Null,
                _ => JsOption::Undefined,
            };
            let summary = self.views.summary(room_id, user_id, &state)?;
            room.joined_count = Some(UInt::new_saturating(summary.joined));
            room.invited_count = Some(UInt::new_saturating(summary.invited));
            if !summary.heroes.is_empty() {
                let mut heroes = Vec::new();
                for hero in summary.heroes {
                    let (name, avatar) = self.views.member_profile(&state, &hero)?;
                    let mut entry = response::Hero::new(hero);
                    entry.name = name;
                    entry.avatar = avatar;
                    heroes.push(entry);
                }
                room.heroes = Some(heroes);
            }
            room.is_dm = Some(dms.contains(room_id));
        }
        let (counts, _) = self.views.unread(user_id, room_id, false)?;
        room.unread_notifications = counts;
        Ok(Some(room))
    }

    /// The children of the given spaces the user is joined to (`m.space.child` with `via`).
    fn space_children(&self, user_id: &UserId, spaces: &[OwnedRoomId]) -> Result<HashSet<OwnedRoomId>> {
        let mut children = HashSet::new();
        for space in spaces.iter().take(sliding::MAX_LISTS) {
            if !self.members.is_joined(space, user_id)? {
                continue;
            }
            let state = self.history.state_at(space, self.stream.committed())?;
            for ((kind, key), id) in state.iter() {
                if *kind != StateEventType::SpaceChild {
                    continue;
                }
                let Some(event) = self.events.get(id)? else { continue };
                let has_via = event
                    .pdu
                    .content_value()
                    .get("via")
                    .and_then(JsonValue::as_array)
                    .is_some_and(|v| !v.is_empty());
                if has_via && let Ok(child) = OwnedRoomId::try_from(key.as_str()) {
                    children.insert(child);
                }
            }
        }
        Ok(children)
    }

    /// The extensions the request enables.
    #[allow(clippy::too_many_arguments)]
    fn extensions(
        &self,
        request: &SlidingRequest,
        response: &mut Response,
        asks: &BTreeMap<OwnedRoomId, RoomAsk>,
        from: Option<&Snapshot>,
        since: Option<u64>,
        upto: u64,
        ignored: &HashSet<OwnedUserId>,
        watched: &HashSet<OwnedRoomId>,
    ) -> Result<()> {
        let user_id = request.user_id.as_ref();
        let device_id = request.device_id.as_ref();
        let extensions = &request.body.extensions;
        let out = &mut response.extensions;
        // Since when the client has a room's ephemeral data and account data: from the
        // connection's last position for rooms it had, from the start for new ones.
        let room_since = |room_id: &RoomId| -> Option<u64> {
            from.and_then(|f| f.rooms.get(room_id)).map(|_| since.unwrap_or_default())
        };

        if extensions.to_device.enabled == Some(true) {
            let to_device_since = match extensions.to_device.since.as_deref() {
                Some(token) => Some(
                    token.parse::<u64>().map_err(|_| Error::invalid_param("Bad to_device since token"))?,
                ),
                None => None,
            };
            // The client's `limit` is a wish: the queue hands out at most its own bound per
            // response (100 messages, about 1 MiB), the rest on the next.
            let events = self.to_device.take(user_id, device_id, to_device_since, upto)?;
            let mut to_device = response::ToDevice::default();
            to_device.next_batch = upto.to_string();
            to_device.events = events.into_iter().map(Raw::from_json).collect();
            out.to_device = Some(to_device);
        }

        if extensions.e2ee.enabled == Some(true) {
            let e2ee = &mut out.e2ee;
            if let Some(since) = since {
                let (changed, left) = self.sync.key_changes(user_id, since, upto)?;
                let mut lists = DeviceLists::new();
                lists.changed = changed;
                lists.left = left;
                e2ee.device_lists = lists;
            }
            for (algorithm, count) in self.keys.one_time_key_counts(user_id, device_id)? {
                e2ee.device_one_time_keys_count
                    .insert(algorithm.as_str().into(), UInt::new_saturating(count));
            }
            e2ee.device_unused_fallback_key_types = Some(
                self.keys
                    .unused_fallback_types(user_id, device_id)?
                    .iter()
                    .map(|a| a.as_str().into())
                    .collect(),
            );
        }

        if extensions.account_data.enabled == Some(true) {
            let changes = self.account_data.changes(user_id, since, upto)?;
            let mut pushed_rules = false;
            for entry in &changes {
                match &entry.room_id {
                    None => {
                        pushed_rules |= entry.kind == "m.push_rules";
                        out.account_data.global.push(entry.sync_event()?);
                    }
                    Some(room) if asks.contains_key(room) && room_since(room).is_some() => {
                        out.account_data.rooms.entry(room.clone()).or_default().push(entry.sync_event()?);
                    }
                    Some(_) => {}
                }
            }
            if since.is_none() && !pushed_rules {
                out.account_data.global.push(self.notifications.push_rules_event(user_id)?);
            }
            // Rooms new to the connection get all their account data.
            let new_rooms: Vec<&OwnedRoomId> = asks.keys().filter(|r| room_since(r).is_none()).collect();
            if !new_rooms.is_empty() {
                let all =
                    if since.is_none() { changes } else { self.account_data.changes(user_id, None, upto)? };
                for entry in all {
                    if let Some(room) = &entry.room_id
                        && new_rooms.contains(&room)
                    {
                        out.account_data.rooms.entry(room.clone()).or_default().push(entry.sync_event()?);
                    }
                }
            }
        }

        let receipts = extensions.receipts.enabled == Some(true);
        let typing = extensions.typing.enabled == Some(true);
        if receipts || typing {
            for room_id in asks.keys().filter(|r| watched.contains(*r)) {
                let since = room_since(room_id);
                if receipts
                    && let Some(event) = self.views.receipt_event(user_id, room_id, since, upto, ignored)?
                {
                    out.receipts.rooms.insert(room_id.clone(), event);
                }
                if typing && let Some(event) = self.views.typing_event(room_id, since)? {
                    out.typing.rooms.insert(room_id.clone(), event);
                }
            }
        }
        Ok(())
    }
}

/// A room's facts for list filters, read once per pass.
struct RoomFactsOwned {
    invite: bool,
    dm: bool,
    encrypted: bool,
    room_type: Option<String>,
    in_spaces: bool,
}

impl RoomFactsOwned {
    fn facts(&self) -> RoomFacts<'_> {
        RoomFacts {
            invite: self.invite,
            dm: self.dm,
            encrypted: self.encrypted,
            room_type: self.room_type.as_deref(),
            in_spaces: self.in_spaces,
        }
    }
}

/// Facts about the user's rooms, read once per pass as list filters need them.
struct FactsCache<'s> {
    service: &'s SlidingSync,
    /// Rooms in the user's `m.direct`.
    dms: HashSet<OwnedRoomId>,
    known: HashMap<OwnedRoomId, RoomFactsOwned>,
}

impl<'s> FactsCache<'s> {
    fn new(service: &'s SlidingSync, user_id: &UserId) -> Result<Self> {
        let direct: Option<BTreeMap<String, Vec<String>>> =
            service.account_data.get_as(user_id, None, "m.direct")?;
        let dms = direct
            .unwrap_or_default()
            .into_values()
            .flatten()
            .filter_map(|room| OwnedRoomId::try_from(room).ok())
            .collect();
        Ok(Self { service, dms, known: HashMap::new() })
    }

    fn of(&mut self, candidate: &Candidate, spaces: &HashSet<OwnedRoomId>) -> Result<RoomFacts<'_>> {
        if !self.known.contains_key(candidate.room_id) {
            let facts = self.read(candidate)?;
            self.known.insert(candidate.room_id.clone(), facts);
        }
        let mut facts = self.known[candidate.room_id].facts();
        facts.in_spaces = spaces.contains(candidate.room_id);
        Ok(facts)
    }

    fn read(&self, candidate: &Candidate) -> Result<RoomFactsOwned> {
        let service = self.service;
        let invite = matches!(candidate.membership, MembershipState::Invite | MembershipState::Knock);
        let state: Arc<StateMap> = if invite {
            match service.events.get(&candidate.record.event_id)? {
                Some(event) => service.history.state_before(&event)?,
                None => Arc::default(),
            }
        } else {
            service.views.current_state(candidate.room_id)?
        };
        let mut dm = self.dms.contains(candidate.room_id);
        if invite && let Some(event) = service.events.get(&candidate.record.event_id)? {
            dm |= event.pdu.content_value().get("is_direct").and_then(JsonValue::as_bool).unwrap_or(false);
        }
        Ok(RoomFactsOwned {
            invite,
            dm,
            encrypted: state.contains_key(&(StateEventType::RoomEncryption, String::new())),
            room_type: service.views.room_type(&state)?,
            in_spaces: false,
        })
    }
}

fn list_filter(filters: Option<&request::ListFilters>, spaces: bool) -> ListFilter {
    let Some(filters) = filters else { return ListFilter { spaces, ..Default::default() } };
    let types = |list: &[ruma::directory::RoomTypeFilter]| -> Vec<Option<String>> {
        list.iter().map(|t| t.as_str().map(str::to_owned)).collect()
    };
    ListFilter {
        is_dm: filters.is_dm,
        is_encrypted: filters.is_encrypted,
        is_invite: filters.is_invite,
        room_types: (!filters.room_types.is_empty()).then(|| types(&filters.room_types)),
        not_room_types: types(&filters.not_room_types),
        spaces,
    }
}

fn add_ask(
    ask: &mut RoomAsk,
    required_state: &[(StateEventType, String)],
    timeline_limit: UInt,
    user_id: &UserId,
) -> Result<()> {
    ask.required.add(required_state, user_id).map_err(|_| {
        Error::invalid_param(format!("At most {} required_state entries", sliding::MAX_REQUIRED_STATE))
    })?;
    ask.timeline_limit = ask.timeline_limit.max(sliding::timeline_limit(timeline_limit));
    Ok(())
}

/// The name of an invited room from its stripped state.
impl SlidingSync {
    /// A pending invite to (or knock on) a room of another server (`RemoteInvites`), as an
    /// invited room with the stripped state that server sent.
    fn remote_invite_room(
        &self,
        mut room: response::Room,
        room_id: &RoomId,
        user_id: &UserId,
        ignored: &HashSet<OwnedUserId>,
    ) -> Result<Option<response::Room>> {
        let Some(invite) = self.remote_invites.outstanding(user_id, room_id)? else { return Ok(None) };
        let (stripped, sender) = self.remote_invites.invite_state(&invite)?;
        if sender.is_some_and(|s| ignored.contains(&s)) {
            return Ok(None);
        }
        room.name = stripped_name(&stripped);
        room.invite_state = Some(stripped);
        room.initial = Some(true);
        Ok(Some(room))
    }
}

fn stripped_name(stripped: &[Raw<ruma::events::AnyStrippedStateEvent>]) -> Option<String> {
    stripped.iter().find_map(|event| {
        let value: JsonValue = serde_json::from_str(event.json().get()).ok()?;
        (value.get("type")?.as_str()? == "m.room.name")
            .then(|| value.get("content")?.get("name")?.as_str().map(str::to_owned))
            .flatten()
            .filter(|name| !name.is_empty())
    })
}

fn check_request(request: &SlidingRequest) -> Result<()> {
    let body = &request.body;
    if body.conn_id.as_ref().is_some_and(|c| c.len() > MAX_CONN_ID_BYTES) {
        return Err(Error::invalid_param(format!("conn_id is longer than {MAX_CONN_ID_BYTES} bytes")));
    }
    if body.lists.len() > sliding::MAX_LISTS {
        return Err(Error::invalid_param(format!("At most {} lists", sliding::MAX_LISTS)));
    }
    if body.room_subscriptions.len() > sliding::MAX_SUBSCRIPTIONS {
        return Err(Error::invalid_param(format!(
            "At most {} room subscriptions",
            sliding::MAX_SUBSCRIPTIONS
        )));
    }
    if request.list_spaces.values().any(|spaces| spaces.len() > sliding::MAX_LISTS) {
        return Err(Error::invalid_param(format!("At most {} spaces per list", sliding::MAX_LISTS)));
    }
    Ok(())
}

/// Whether a response carries nothing new (rooms, or extension data).
fn is_empty(response: &Response) -> bool {
    let ext = &response.extensions;
    response.rooms.is_empty()
        && ext.to_device.as_ref().is_none_or(|t| t.events.is_empty())
        && ext.e2ee.device_lists.is_empty()
        && ext.account_data.global.is_empty()
        && ext.account_data.rooms.is_empty()
        && ext.receipts.rooms.is_empty()
        && ext.typing.rooms.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(at: u64) -> Sent {
        Sent { at, required: 7, timeline_limit: 1, invite: false }
    }

    fn room(n: usize) -> OwnedRoomId {
        OwnedRoomId::try_from(format!("!r{n}:example.org")).unwrap()
    }

    #[test]
    fn positions_share_one_room_map_and_see_their_own_changes() {
        let mut first = RoomsSent::default();
        for n in 0..100 {
            first.insert(&room(n), sent(1));
        }
        first.settle();
        assert!(first.changes.is_empty(), "100 new rooms are folded into the shared map");

        let mut second = first.clone();
        assert!(Arc::ptr_eq(&first.base, &second.base));
        second.insert(&room(3), sent(2));
        second.remove(&room(4));
        second.insert(&room(200), sent(2));
        second.remove(&room(201)); // never there
        second.settle();
        assert_eq!(second.changes.len(), 3, "a few changes stay beside the shared map");
        assert_eq!(second.get(&room(3)), Some(sent(2)));
        assert_eq!(second.get(&room(4)), None);
        assert_eq!(second.get(&room(200)), Some(sent(2)));
        assert_eq!(first.get(&room(3)), Some(sent(1)), "the earlier position is untouched");
        assert!(first.contains_key(&room(4)));

        // Inserting what is already there changes nothing.
        let mut third = second.clone();
        third.insert(&room(5), sent(1));
        assert_eq!(third.changes.len(), 3);

        third.retain(|r| r != room(6) && r != room(200));
        assert!(!third.contains_key(&room(6)) && !third.contains_key(&room(200)));
        assert!(third.contains_key(&room(7)));
        assert!(second.contains_key(&room(6)));

        // Many changes are folded into a new map for that position alone.
        for n in 0..60 {
            third.insert(&room(n), sent(3));
        }
        third.settle();
        assert!(third.changes.is_empty());
        assert!(!Arc::ptr_eq(&third.base, &second.base));
        assert_eq!(third.get(&room(10)), Some(sent(3)));
        assert_eq!(third.get(&room(4)), Some(sent(3)));
        assert_eq!(third.get(&room(6)), Some(sent(3)), "inserted again after it went");
        assert_eq!(third.get(&room(200)), None);
        assert_eq!(third.get(&room(99)), Some(sent(1)));
        assert_eq!(second.get(&room(10)), Some(sent(1)));
    }

    #[test]
    fn a_device_holds_a_bounded_number_of_connections_and_goes_with_them() {
        let connections = Connections::default();
        let user = OwnedUserId::try_from("@a:example.org").unwrap();
        let key = |device: &str, conn: usize| (user.clone(), OwnedDeviceId::from(device), format!("c{conn}"));
        let mut first_pos = None;
        for conn in 0..MAX_CONNECTIONS_PER_DEVICE + 3 {
            let pos = connections.remember(key("D1", conn), None, Snapshot::default());
            first_pos.get_or_insert(pos);
        }
        connections.remember(key("D2", 0), None, Snapshot::default());
        assert_eq!(connections.connection_count(), MAX_CONNECTIONS_PER_DEVICE + 1);
        // The least recently used of D1 went.
        let oldest = first_pos.unwrap().to_string();
        assert!(connections.snapshot(&key("D1", 0), &oldest).is_err());

        connections.forget_device(&user, "D1".into());
        assert_eq!(connections.connection_count(), 1);
        let pos = connections.remember(key("D1", 0), None, Snapshot::default());
        assert!(connections.snapshot(&key("D1", 0), &pos.to_string()).is_ok());
        assert_eq!(connections.connection_count(), 2);
    }
}
