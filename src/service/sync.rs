//! `/sync`: everything that changed for one user and device since a token, or their whole
//! world on an initial sync, waiting (long-polling) until something relevant arrives.
//!
//! Cost follows what changed for this user: each of their rooms is first checked against
//! in-memory positions (latest event, receipt, typing change); only rooms that moved are
//! read. An idle incremental sync reads no timeline.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    DeviceId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::{
        filter::{FilterDefinition, LazyLoadOptions, RoomEventFilter},
        sync::sync_events::v3::{
            InviteState, InvitedRoom, JoinedRoom, KnockState, KnockedRoom, LeftRoom, Response, State,
            StateEvents, Timeline,
        },
    },
    events::{StateEventType, TimelineEventType, room::member::MembershipState},
    presence::PresenceState,
    serde::Raw,
};
use serde_json::{Value as JsonValue, json, value::RawValue as RawJsonValue};
use tokio::time::Instant;

use crate::{
    Result,
    matrix::filter,
    service::{
        account_data::{AccountData, AccountDataEntry},
        keys::Keys,
        presence::Presence,
        push::Notifications,
        rooms::{
            events::{Events, StoredEvent},
            history::{History, WindowFilter},
            members::{Memberships, Roster, UserMemberships},
            remote_invites::RemoteInvites,
            render::{EventRenderer, Rendering, Shape, Viewer},
            state::StateMap,
            view::RoomViews,
        },
        stream::{Change, Stream},
        to_device::ToDevice,
    },
    storage::{Direction, tables::MembershipRecord},
};

/// Timeline events per room when the filter sets no limit.
const DEFAULT_TIMELINE_LIMIT: usize = 10;
/// The most timeline events per room a filter may ask for.
const MAX_TIMELINE_LIMIT: usize = 500;
/// Longest long-poll.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

/// One `/sync` request, parsed.
pub struct SyncRequest {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub since: Option<u64>,
    pub filter: FilterDefinition,
    pub full_state: bool,
    pub timeout: Duration,
    pub set_presence: PresenceState,
    /// `use_state_after` (MSC4222, Matrix 1.16): each room's state section is the state at the
    /// end of its timeline (`state_after`) instead of at its start, and timeline events are
    /// not counted as state the client has.
    pub use_state_after: bool,
}

/// Which members' events each device has already been sent, per room, so lazy loading
/// can skip redundant ones. Memory only: after a restart they are sent again, which is
/// harmless.
type SentMembers =
    HashMap<(OwnedUserId, OwnedDeviceId), HashMap<OwnedRoomId, HashMap<OwnedUserId, OwnedEventId>>>;
/// Devices whose sent members are remembered before the memory is reset.
const SENT_MEMBERS_DEVICES: usize = 10_000;

pub struct Sync {
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
    remote_invites: Arc<RemoteInvites>,
    sent_members: Mutex<SentMembers>,
}

/// Members who joined or left the user's rooms in this pass, for device-list tracking.
#[derive(Default)]
struct MemberMoves {
    joined: BTreeSet<OwnedUserId>,
    left: BTreeSet<OwnedUserId>,
}

impl MemberMoves {
    /// Count the joins and leaves between two states of a room: each member entry that
    /// differs. Only changed entries are read, so a room whose members stayed costs a walk
    /// over its state map in memory.
    fn note_state_change(&mut self, before: &StateMap, after: &StateMap, events: &Events) -> Result<()> {
        for (key, id) in after {
            if key.0 != StateEventType::RoomMember || before.get(key) == Some(id) {
                continue;
            }
            if let Some(event) = events.get(id)? {
                self.note(std::iter::once(&event));
            }
        }
        Ok(())
    }

    /// Count the joins and leaves among member events. A join that follows a join is a
    /// profile change, not an arrival.
    fn note<'e>(&mut self, events: impl Iterator<Item = &'e Arc<StoredEvent>>) {
        for event in events {
            let Some(member) = member_of(event) else { continue };
            match membership_of(event).as_deref() {
                Some("join") if !was_joined_before(event) => self.joined.insert(member),
                Some("leave" | "ban") => self.left.insert(member),
                _ => false,
            };
        }
    }
}

/// The rooms a long-poll wakes for.
pub trait WatchedRooms {
    fn watches(&self, room_id: &RoomId) -> bool;
}

impl WatchedRooms for HashSet<OwnedRoomId> {
    fn watches(&self, room_id: &RoomId) -> bool {
        self.contains(room_id)
    }
}

/// A user's membership rows as one pass read them (shared with the membership cache, not
/// copied: a parked long-poll of a user in hundreds of rooms holds one pointer): the rooms
/// they joined, are invited to or knock on.
struct MembershipRows(UserMemberships);

impl WatchedRooms for MembershipRows {
    fn watches(&self, room_id: &RoomId) -> bool {
        self.0
            .binary_search_by(|(room, _)| room.as_str().cmp(room_id.as_str()))
            .is_ok_and(|i| matches!(self.0[i].1.membership.as_str(), "join" | "invite" | "knock"))
    }
}

/// Whether a change announced on the stream concerns a long-poll of `user_id` watching the
/// rooms `watched`: one of those rooms, the user, or a room mate (someone joined to one of
/// them, whose keys or presence changed).
pub fn concerns(
    members: &Memberships,
    user_id: &UserId,
    watched: &impl WatchedRooms,
    change: &Change,
) -> Result<bool> {
    Ok(match change {
        Change::Room(room_id) => watched.watches(room_id),
        Change::User(other) => other == user_id,
        // The user's own changes come as `User` too.
        Change::RoomMates(other) => {
            other != user_id
                && members.user_memberships(other)?.iter().any(|(room, record)| {
                    record.membership == MembershipState::Join.as_str() && watched.watches(room)
                })
        }
    })
}

/// A room's timeline window and the state sent with it.
struct Slice {
    /// Oldest first.
    timeline: Vec<Arc<StoredEvent>>,
    /// Whether events were left out before the timeline.
    limited: bool,
    /// The token the timeline starts after.
    prev_batch: u64,
    /// The state the client lacks: what changed since the token, or all of it.
    state: Vec<Arc<StoredEvent>>,
    /// With lazy loading and a state delta: the member events of the timeline's senders,
    /// which the client may lack although they did not change.
    senders_members: Vec<Arc<StoredEvent>>,
    /// The room state `state` is taken from: at the timeline's start, or with
    /// `use_state_after` at its end.
    state_at_start: Arc<StateMap>,
}

/// Rooms of the syncing user up to which a room mate is looked up in the rooms' rosters;
/// past it, in the other user's rooms.
const FEW_ROOMS: usize = 8;

/// Whether other users share a room with the syncing user: looked up in the rosters (joined
/// members, kept in memory) of the user's rooms when they are few, else in the other user's
/// rooms (kept in memory too). No member list is read from storage per question.
struct RoomMates<'a> {
    members: &'a Memberships,
    me: &'a UserId,
    rooms: &'a HashSet<OwnedRoomId>,
    rosters: Option<Vec<Arc<Roster>>>,
}

impl<'a> RoomMates<'a> {
    fn new(members: &'a Memberships, me: &'a UserId, rooms: &'a HashSet<OwnedRoomId>) -> Self {
        Self { members, me, rooms, rosters: None }
    }

    fn share(&mut self, user: &UserId) -> Result<bool> {
        if user == self.me {
            return Ok(true);
        }
        if self.rooms.len() <= FEW_ROOMS {
            if self.rosters.is_none() {
                let rosters = self.rooms.iter().map(|r| self.members.roster(r)).collect::<Result<_>>()?;
                self.rosters = Some(rosters);
            }
            return Ok(self.rosters.iter().flatten().any(|r| r.is_joined(user)));
        }
        Ok(self.members.user_memberships(user)?.iter().any(|(room, record)| {
            record.membership == MembershipState::Join.as_str() && self.rooms.contains(room)
        }))
    }
}

/// What one pass over the user's rooms found.
struct Pass {
    response: Response,
    /// Rooms whose changes concern this user (joined, invited, knocked).
    watched: MembershipRows,
}

/// Joined rooms in one pass from which their rendering is split over threads.
const PARALLEL_ROOMS: usize = 64;
/// Threads one sync pass renders rooms on at most.
const MAX_SYNC_THREADS: usize = 4;

impl Sync {
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
            sent_members: Mutex::new(HashMap::new()),
        }
    }

    /// Answer a sync: at once if anything changed (or on an initial sync), else when a
    /// relevant change arrives or the timeout passes.
    pub async fn sync(&self, request: Box<SyncRequest>) -> Result<Response> {
        self.presence.syncing(&request.user_id, &request.set_presence)?;
        let deadline = Instant::now() + request.timeout.min(MAX_TIMEOUT);
        // A token from another process sharing the database may be ahead of this one for a
        // moment: answering from below it would send the client events it has seen.
        if let Some(since) = request.since {
            self.stream.caught_up_to(since, deadline).await;
        }
        // Listen before reading the committed position, so no later change is missed.
        let mut listener = self.stream.listen();
        loop {
            let upto = self.stream.committed();
            let pass = self.pass(&request, upto)?;
            if request.since.is_none() || !is_empty(&pass.response) || Instant::now() >= deadline {
                return Ok(pass.response);
            }
            // Wait for a change that concerns this user, then look again.
            let concerns = |change: &Change| concerns(&self.members, &request.user_id, &pass.watched, change);
            if !listener.wait_for_change(deadline, concerns).await? {
                return Ok(pass.response);
            }
        }
    }

    /// `GET /keys/changes`: between two sync tokens, the users sharing a room with `user_id`
    /// (or themselves) whose devices or cross-signing keys changed or who came to share a
    /// room with them (they joined one of its rooms, or it joined theirs: their keys are
    /// new to it), and the users who no longer share any room with it (`left`).
    pub fn key_changes(
        &self,
        user_id: &UserId,
        from: u64,
        to: u64,
    ) -> Result<(Vec<OwnedUserId>, Vec<OwnedUserId>)> {
        let to = to.min(self.stream.committed());
        let in_range = |position: u64| position > from && position <= to;
        let mut rooms = HashSet::new();
        let mut came = BTreeSet::new();
        let mut went = BTreeSet::new();
        for (room_id, record) in self.members.memberships_of_user(user_id)? {
            match record.membership.as_str() {
                "join" if record.joined_at.is_some_and(in_range) => {
                    came.extend(self.members.members_with(&room_id, &MembershipState::Join)?);
                    rooms.insert(room_id);
                }
                "join" => {
                    if self.events.last_position(&room_id)? > from {
                        let moves = self.members.moves(&room_id, from, to)?;
                        came.extend(moves.joined);
                        went.extend(moves.left);
                    }
                    rooms.insert(room_id);
                }
                "leave" | "ban" if in_range(record.stream) => {
                    went.extend(self.members.members_with(&room_id, &MembershipState::Join)?);
                }
                _ => {}
            }
        }
        let changed_keys = self.keys.changed_users(from, to)?;
        let mut mates = RoomMates::new(&self.members, user_id, &rooms);
        let mut changed = BTreeSet::new();
        for user in changed_keys.into_iter().chain(came) {
            if mates.share(&user)? {
                changed.insert(user);
            }
        }
        let mut left = Vec::new();
        for user in went {
            if !mates.share(&user)? {
                left.push(user);
            }
        }
        Ok((changed.into_iter().collect(), left))
    }

    fn pass(&self, request: &SyncRequest, upto: u64) -> Result<Pass> {
        let user_id = request.user_id.as_ref();
        let since = request.since.map(|s| s.min(upto));
        let viewer = Viewer { user_id, device_id: Some(request.device_id.as_ref()) };
        let filter = &request.filter;
        let room_filter = &filter.room;
        if since.is_none() {
            self.forget_sent_members(user_id, &request.device_id);
        }

        let account_changes = self.account_data.changes(user_id, since, upto)?;
        let mut room_account_data: HashMap<OwnedRoomId, Vec<&AccountDataEntry>> = HashMap::new();
        let mut global_account_data = Vec::new();
        for entry in &account_changes {
            match &entry.room_id {
                Some(room) => room_account_data.entry(room.clone()).or_default().push(entry),
                None => {
                    if filter::event_allowed(&filter.account_data, None, &entry.kind) {
                        global_account_data.push(entry.sync_event()?);
                    }
                }
            }
        }
        if since.is_none() && !account_changes.iter().any(|e| e.room_id.is_none() && e.kind == "m.push_rules")
        {
            // Clients read their push rules from account data; the defaults count as set.
            let rules = self.notifications.push_rules_event(user_id)?;
            if filter::event_allowed(&filter.account_data, None, "m.push_rules") {
                global_account_data.push(rules);
            }
        }

        let ignored = self.history.ignored_users(user_id)?;
        let mut response = Response::new(format!("s{upto}"));
        let mut moves = MemberMoves::default();
        let mut joined_rooms = HashSet::new();
        // Joined rooms are rendered after the loop, several at once when there are many.
        let mut to_render: Vec<(OwnedRoomId, MembershipRecord, Vec<&AccountDataEntry>)> = Vec::new();
        let rows = self.members.user_memberships(user_id)?;
        for (room_id, record) in rows.iter().cloned() {
            let membership = MembershipState::from(record.membership.as_str());
            if membership == MembershipState::Join {
                joined_rooms.insert(room_id.clone());
            }
            if !filter::room_allowed(room_filter.rooms.as_deref(), &room_filter.not_rooms, &room_id) {
                continue;
            }
            let changed_since_token = since.is_none_or(|s| record.stream > s);
            match membership {
                // A join committed after `upto` shows on the next pass, with its join event.
                MembershipState::Join if record.joined_since() <= upto => {
                    let account = room_account_data.remove(&room_id).unwrap_or_default();
                    // Only rooms with something new are rendered (and counted towards
                    // rendering on several threads): an incremental sync of a user in
                    // hundreds of quiet rooms stays on this thread.
                    if self.joined_room_moved(request, &room_id, &record, since, upto, &account)? {
                        to_render.push((room_id, record, account));
                    }
                }
                MembershipState::Invite if changed_since_token && record.stream <= upto => {
                    let invite = self.events.get(&record.event_id)?;
                    if let Some(invite) = invite.filter(|i| !ignored.contains(&i.pdu.sender)) {
                        let state = self.views.stripped_state(&invite)?;
                        response.rooms.invite.insert(room_id, InvitedRoom::from(InviteState::from(state)));
                    }
                }
                MembershipState::Knock if changed_since_token && record.stream <= upto => {
                    if let Some(knock) = self.events.get(&record.event_id)? {
                        let mut state = KnockState::new();
                        state.events = self.views.stripped_state(&knock)?;
                        response.rooms.knock.insert(room_id, KnockedRoom::from(state));
                    }
                }
                MembershipState::Leave | MembershipState::Ban
                    if !record.forgotten
                        && record.stream <= upto
                        && match since {
                            Some(s) => record.stream > s,
                            None => room_filter.include_leave,
                        } =>
                {
                    let left = self.left_room(request, viewer, &room_id, &record, since, &ignored)?;
                    moves.left.extend(self.members.members_with(&room_id, &MembershipState::Join)?);
                    response.rooms.leave.insert(room_id, left);
                }
                _ => {}
            }
        }

        self.remote_invites_in(&mut response, user_id, since, upto, room_filter, &ignored)?;

        for (room_id, joined, room_moves) in
            self.joined_rooms(request, viewer, since, upto, &ignored, to_render)?
        {
            moves.joined.extend(room_moves.joined);
            moves.left.extend(room_moves.left);
            if let Some(joined) = joined {
                response.rooms.join.insert(room_id, joined);
            }
        }

        response.account_data.events = global_account_data;
        let mut mates = RoomMates::new(&self.members, user_id, &joined_rooms);
        response.presence.events =
            self.presence_events(&filter.presence, since, upto, &mut mates, &moves.joined)?;
        // End-to-end encryption: this device's messages and key counts, and whose devices
        // to re-fetch.
        response.to_device.events = self
            .to_device
            .take(user_id, &request.device_id, since, upto)?
            .into_iter()
            .map(Raw::from_json)
            .collect();
        for (algorithm, count) in self.keys.one_time_key_counts(user_id, &request.device_id)? {
            response
                .device_one_time_keys_count
                .insert(algorithm.as_str().into(), UInt::new_saturating(count));
        }
        response.device_unused_fallback_key_types = Some(
            self.keys
                .unused_fallback_types(user_id, &request.device_id)?
                .iter()
                .map(|a| a.as_str().into())
                .collect(),
        );
        if let Some(since) = since {
            let changed_keys = self.keys.changed_users(since, upto)?;
            let mut changed = BTreeSet::new();
            for user in changed_keys.into_iter().chain(moves.joined) {
                if mates.share(&user)? {
                    changed.insert(user);
                }
            }
            let mut left = BTreeSet::new();
            for user in moves.left {
                if !mates.share(&user)? {
                    left.insert(user);
                }
            }
            response.device_lists.changed = changed.into_iter().collect();
            response.device_lists.left = left.into_iter().collect();
        }
        Ok(Pass { response, watched: MembershipRows(rows) })
    }

    /// Presence of the user's room mates: those whose presence changed since the token, and
    /// those who came to share a room with the user since (`newcomers`), whatever the age
    /// of their presence, as Synapse sends them.
    fn presence_events(
        &self,
        filter: &ruma::api::client::filter::Filter,
        since: Option<u64>,
        upto: u64,
        mates: &mut RoomMates<'_>,
        newcomers: &BTreeSet<OwnedUserId>,
    ) -> Result<Vec<Raw<ruma::events::presence::PresenceEvent>>> {
        // A client that filters presence out (or a server without it) costs nothing here.
        if !self.presence.is_enabled() || !filter::event_allowed(filter, None, "m.presence") {
            return Ok(Vec::new());
        }
        let mut views = self.presence.changes(since, upto)?;
        let changed: HashSet<OwnedUserId> = views.iter().map(|v| v.user_id.clone()).collect();
        for newcomer in newcomers {
            if newcomer != mates.me && !changed.contains(newcomer) {
                views.extend(self.presence.get(newcomer)?);
            }
        }
        let mut events = Vec::new();
        for view in views {
            if !mates.share(&view.user_id)?
                || !filter::event_allowed(filter, Some(&view.user_id), "m.presence")
            {
                continue;
            }
            let event = json!({
                "type": "m.presence",
                "sender": view.user_id,
                "content": view.event_content(),
            });
            events.push(Raw::from_json(to_raw(&event)?));
        }
        Ok(events)
    }

    /// [`Self::joined_room`] for each room, with the moves each saw. Many rooms (an initial
    /// sync) are split over scoped threads, one per core: the work is independent per room
    /// and is the whole of a large initial sync, so the response comes that much sooner.
    #[allow(clippy::type_complexity)]
    fn joined_rooms(
        &self,
        request: &SyncRequest,
        viewer: Viewer<'_>,
        since: Option<u64>,
        upto: u64,
        ignored: &HashSet<OwnedUserId>,
        rooms: Vec<(OwnedRoomId, MembershipRecord, Vec<&AccountDataEntry>)>,
    ) -> Result<Vec<(OwnedRoomId, Option<JoinedRoom>, MemberMoves)>> {
        let render = |part: &[(OwnedRoomId, MembershipRecord, Vec<&AccountDataEntry>)]| {
            part.iter()
                .map(|(room_id, record, account)| {
                    let mut moves = MemberMoves::default();
                    let joined = self.joined_room(
                        request, viewer, room_id, record, since, upto, ignored, account, &mut moves,
                    )?;
                    Ok((room_id.clone(), joined, moves))
                })
                .collect::<Result<Vec<_>>>()
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_SYNC_THREADS);
        if threads < 2 || rooms.len() < PARALLEL_ROOMS {
            return render(&rooms);
        }
        let chunk = rooms.len().div_ceil(threads);
        // Storage and other services may ask for the runtime's handle: each thread enters it.
        let handle = tokio::runtime::Handle::try_current().ok();
        std::thread::scope(|scope| {
            let workers: Vec<_> = rooms
                .chunks(chunk)
                .skip(1)
                .map(|part| {
                    let handle = handle.clone();
                    scope.spawn(move || {
                        let _entered = handle.as_ref().map(tokio::runtime::Handle::enter);
                        render(part)
                    })
                })
                .collect();
            // The first part on this thread.
            let mut rendered = render(rooms.chunks(chunk).next().unwrap_or_default())?;
            for worker in workers {
                let part =
                    worker.join().map_err(|_| crate::Error::internal("a sync worker thread panicked"))??;
                rendered.extend(part);
            }
            Ok(rendered)
        })
    }

    /// Whether a joined room has anything for this sync: always on an initial sync, with
    /// `full_state`, or when the room was joined after the token; otherwise when its timeline,
    /// receipts, typing or room account data moved after the token.
    fn joined_room_moved(
        &self,
        request: &SyncRequest,
        room_id: &RoomId,
        record: &MembershipRecord,
        since: Option<u64>,
        upto: u64,
        account: &[&AccountDataEntry],
    ) -> Result<bool> {
        let Some(s) = since.filter(|s| record.joined_since() <= *s) else {
            return Ok(true);
        };
        Ok(request.full_state || !account.is_empty() || self.views.moved_since(room_id, s, upto, true)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn joined_room(
        &self,
        request: &SyncRequest,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        record: &MembershipRecord,
        since: Option<u64>,
        upto: u64,
        ignored: &HashSet<OwnedUserId>,
        account: &[&AccountDataEntry],
        moves: &mut MemberMoves,
    ) -> Result<Option<JoinedRoom>> {
        let user_id = viewer.user_id;
        let room_filter = &request.filter.room;
        // A room joined after the token is new to the client: send it whole.
        let room_since = since.filter(|s| record.joined_since() <= *s);

        let Slice {
            timeline: timeline_events,
            limited,
            prev_batch,
            state: mut state_events,
            senders_members,
            state_at_start,
        } = self.slice(request, user_id, room_id, upto, room_since, ignored)?;
        let lazy = matches!(room_filter.state.lazy_load_options, LazyLoadOptions::Enabled { .. });

        if since.is_some() {
            if room_since.is_none() {
                // Newly joined: everyone in it may be someone to encrypt for.
                moves.joined.extend(self.members.members_with(room_id, &MembershipState::Join)?);
            }
            // Every member who came or went since the token, from the room's state rather than
            // from the events sent: filters and lazy loading hide member events, not the moves
            // a client must follow to encrypt for the right devices.
            if let Some(room_since) = room_since {
                let before = self.history.group_at(room_id, room_since)?;
                let after = self.history.group_at(room_id, upto)?;
                if before != after {
                    let (before, after) =
                        (self.history.state_of_group(before)?, self.history.state_of_group(after)?);
                    moves.note_state_change(&before, &after, &self.events)?;
                }
            }
        }

        // Counts follow membership; heroes also come and go with the room's name.
        let summary_changed = room_since.is_none()
            || timeline_events.iter().chain(&state_events).any(|e| {
                matches!(
                    e.pdu.kind,
                    TimelineEventType::RoomMember
                        | TimelineEventType::RoomName
                        | TimelineEventType::RoomCanonicalAlias
                )
            });
        let summary = if summary_changed {
            Some(self.views.summary(room_id, user_id, &*self.history.state_at(room_id, upto)?)?.v3())
        } else {
            None
        };
        add_missing(&mut state_events, senders_members);
        if let Some(summary) = summary.as_ref().filter(|_| lazy) {
            // Clients name rooms after their heroes, so their member events must be there.
            add_missing(
                &mut state_events,
                self.history.member_events(&state_at_start, &room_filter.state, &summary.heroes)?,
            );
        }
        let state_events = self.drop_redundant_members(request, room_id, &timeline_events, state_events);

        let mut joined = JoinedRoom::new();
        let rendering = self.rendering(&request.filter);
        joined.timeline =
            timeline(self.renderer.raw_all(viewer, &timeline_events, rendering)?, limited, prev_batch);
        joined.state = self.render_state(request, viewer, &state_events, rendering)?;

        // Ephemeral: typing and receipts.
        let ephemeral_filter = &room_filter.ephemeral;
        let ephemeral_ok = |kind: &str| {
            filter::room_event_allowed(ephemeral_filter, room_id, user_id, kind, &JsonValue::Null)
        };
        if ephemeral_ok("m.typing") {
            joined.ephemeral.events.extend(self.views.typing_event(room_id, room_since)?);
        }
        if ephemeral_ok("m.receipt") {
            joined
                .ephemeral
                .events
                .extend(self.views.receipt_event(user_id, room_id, room_since, upto, ignored)?);
        }

        // Room account data: what changed, or everything on a first sight of the room.
        let entries: Vec<AccountDataEntry> = if room_since.is_none() && since.is_some() {
            self.account_data
                .changes(user_id, None, upto)?
                .into_iter()
                .filter(|e| e.room_id.as_deref() == Some(room_id))
                .collect()
        } else {
            account.iter().map(|e| (*e).clone()).collect()
        };
        for entry in entries {
            if filter::room_event_allowed(
                &room_filter.account_data,
                room_id,
                user_id,
                &entry.kind,
                &JsonValue::Null,
            ) {
                joined.account_data.events.push(entry.sync_event()?);
            }
        }

        if let Some(summary) = summary {
            joined.summary = summary;
        }

        let per_thread = room_filter.timeline.unread_thread_notifications;
        (joined.unread_notifications, joined.unread_thread_notifications) =
            self.views.unread(user_id, room_id, per_thread)?;

        if room_since.is_some()
            && joined.timeline.events.is_empty()
            && !joined.timeline.limited
            && joined.state.is_empty()
            && joined.ephemeral.events.is_empty()
            && joined.account_data.events.is_empty()
            && !request.full_state
        {
            // The change that woke this room was filtered out.
            return Ok(None);
        }
        Ok(Some(joined))
    }

    /// Invites to and knocks on rooms of other servers (`RemoteInvites`) that changed in the
    /// window: a pending one as an invited (or knocked) room with the stripped state the
    /// other server sent, a rejected (or retracted) one as a left room with the leave (in an initial sync only with `include_leave`). A
    /// room the engine holds where the user has a membership row of its own is shown from
    /// that row instead.
    fn remote_invites_in(
        &self,
        response: &mut Response,
        user_id: &UserId,
        since: Option<u64>,
        upto: u64,
        room_filter: &ruma::api::client::filter::RoomFilter,
        ignored: &HashSet<OwnedUserId>,
    ) -> Result<()> {
        for (room_id, record) in self.remote_invites.of_user(user_id)? {
            if record.stream > upto || since.is_some_and(|s| record.stream <= s) {
                continue;
            }
            if !filter::room_allowed(room_filter.rooms.as_deref(), &room_filter.not_rooms, &room_id)
                || self.members.get(&room_id, user_id)?.is_some_and(|row| row.stream >= record.stream)
            {
                continue;
            }
            match record.membership.as_str() {
                "invite" => {
                    let (state, sender) = self.remote_invites.invite_state(&record)?;
                    if sender.is_some_and(|s| ignored.contains(&s)) {
                        continue;
                    }
                    response.rooms.invite.insert(room_id, InvitedRoom::from(InviteState::from(state)));
                }
                "knock" => {
                    let (state, _) = self.remote_invites.invite_state(&record)?;
                    let mut knock = KnockState::new();
                    knock.events = state;
                    response.rooms.knock.insert(room_id, KnockedRoom::from(knock));
                }
                "leave" if since.is_some() || room_filter.include_leave => {
                    let internal =
                        |e: serde_json::Error| crate::Error::internal(format!("remote invite: {e}"));
                    let event: JsonValue = serde_json::from_str(record.event.get()).map_err(internal)?;
                    let leave = json!({
                        "type": event["type"],
                        "state_key": event["state_key"],
                        "sender": event["sender"],
                        "content": event["content"],
                        "origin_server_ts": event["origin_server_ts"],
                        "event_id": record.event_id,
                        "unsigned": {},
                    });
                    let mut left = LeftRoom::new();
                    left.timeline.events =
                        vec![Raw::from_json(serde_json::value::to_raw_value(&leave).map_err(internal)?)];
                    response.rooms.leave.insert(room_id, left);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A room the user left (or was kicked or banned from): the timeline up to their leave
    /// and the state before it, as a delta when the client knew the room at the token.
    fn left_room(
        &self,
        request: &SyncRequest,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        record: &MembershipRecord,
        since: Option<u64>,
        ignored: &HashSet<OwnedUserId>,
    ) -> Result<LeftRoom> {
        if !self.history.room_exists(room_id)? {
            // Purged by an admin: all that is left is the user's leave, which the client
            // still needs to hear of.
            let mut left = LeftRoom::new();
            if let Some(event) = self.events.get(&record.event_id)? {
                let rendering = self.rendering(&request.filter);
                left.timeline =
                    timeline(self.renderer.raw_all(viewer, [&event], rendering)?, true, record.stream);
            }
            return Ok(left);
        }
        let user_id = viewer.user_id;
        // A room the user joined after the token and left again is new to the client: it
        // comes whole. Otherwise (left after being joined at the token, an invite declined,
        // a ban after leaving) the state is what changed since the token.
        let room_since = match since {
            Some(s) if self.left_a_join(record)? && !self.was_joined_at(room_id, user_id, s)? => None,
            since => since,
        };
        // The timeline runs up to the leave, never past it.
        let slice = self.slice(request, user_id, room_id, record.stream, room_since, ignored)?;
        let mut state = slice.state;
        add_missing(&mut state, slice.senders_members);
        let state = self.drop_redundant_members(request, room_id, &slice.timeline, state);
        let rendering = self.rendering(&request.filter);
        let mut left = LeftRoom::new();
        left.timeline = timeline(
            self.renderer.raw_all(viewer, &slice.timeline, rendering)?,
            slice.limited,
            slice.prev_batch,
        );
        left.state = self.render_state(request, viewer, &state, rendering)?;
        Ok(left)
    }

    /// Whether the membership event of `record` ended a join (a leave or kick, not a declined
    /// invite or a ban after leaving).
    fn left_a_join(&self, record: &MembershipRecord) -> Result<bool> {
        Ok(self.events.get(&record.event_id)?.is_some_and(|e| was_joined_before(&e)))
    }

    /// Whether the user's membership in the room was `join` at stream position `at`.
    fn was_joined_at(&self, room_id: &RoomId, user_id: &UserId, at: u64) -> Result<bool> {
        let state = self.history.state_at(room_id, at)?;
        let Some(id) = state.get(&(StateEventType::RoomMember, user_id.to_string())) else {
            return Ok(false);
        };
        Ok(self.events.get(id)?.is_some_and(|e| membership_of(&e).as_deref() == Some("join")))
    }

    /// The timeline window ending at `end` and the state before it: what changed since
    /// `room_since`, or all of it for a room new to the client (or a full-state sync).
    fn slice(
        &self,
        request: &SyncRequest,
        user_id: &UserId,
        room_id: &RoomId,
        end: u64,
        room_since: Option<u64>,
        ignored: &HashSet<OwnedUserId>,
    ) -> Result<Slice> {
        let room_filter = &request.filter.room;
        let limit = timeline_limit(&room_filter.timeline);
        let which = WindowFilter { filter: &room_filter.timeline, ignored };
        let window =
            self.history.window(user_id, room_id, end, room_since, Direction::Reverse, &which, limit)?;
        let mut timeline_events = window.events;
        timeline_events.reverse();

        let senders: BTreeSet<OwnedUserId> =
            timeline_events.iter().map(|e| e.pdu.sender.clone()).chain([user_id.to_owned()]).collect();
        if request.use_state_after {
            let (state, state_at_end) =
                self.state_after(request, room_id, end, room_since, &timeline_events, &senders)?;
            return Ok(Slice {
                prev_batch: timeline_events.first().map_or(end, |e| e.stream - 1),
                timeline: timeline_events,
                limited: window.more,
                state,
                senders_members: Vec::new(),
                state_at_start: state_at_end,
            });
        }
        let (start_group, state_at_start) = match timeline_events.first() {
            Some(first) => (first.head_before(), self.history.state_of_group(first.head_before())?),
            None => {
                let group = self.history.group_at(room_id, end)?;
                (group, self.history.state_of_group(group)?)
            }
        };
        let lazy = matches!(room_filter.state.lazy_load_options, LazyLoadOptions::Enabled { .. });
        let (state, senders_members) = match room_since {
            Some(s) if !request.full_state => {
                // What changed between the token and the timeline's start: state events the
                // timeline left out (limited, or filtered away). The usual case, a complete
                // timeline starting right after the token, shares the token's state group.
                let token_group = self.history.group_at(room_id, s)?;
                let changed = if token_group == start_group {
                    Vec::new()
                } else {
                    let at_token = self.history.state_of_group(token_group)?;
                    self.history.state_events(
                        &state_at_start,
                        Some(&at_token),
                        &room_filter.state,
                        &senders,
                    )?
                };
                // Lazy clients may lack the members of this timeline's senders even when
                // those did not change; the redundancy check drops known ones.
                let members = if lazy {
                    self.senders_members(&state_at_start, &room_filter.state, &timeline_events)?
                } else {
                    Vec::new()
                };
                (changed, members)
            }
            _ => {
                (self.history.state_events(&state_at_start, None, &room_filter.state, &senders)?, Vec::new())
            }
        };
        Ok(Slice {
            prev_batch: timeline_events.first().map_or(end, |e| e.stream - 1),
            timeline: timeline_events,
            limited: window.more,
            state,
            senders_members,
            state_at_start,
        })
    }

    /// `use_state_after`: the state at the end of the timeline (after every event up to
    /// `end`), whole for a room new to the client or a full-state sync, otherwise what differs
    /// from the state at the token, state events in the timeline included (the client takes
    /// no state from the timeline). With lazy loading, members only for the timeline's
    /// senders and the user, and every sender's member event, changed or not (the redundancy
    /// check drops those the device has). Also returns the state at the end.
    fn state_after(
        &self,
        request: &SyncRequest,
        room_id: &RoomId,
        end: u64,
        room_since: Option<u64>,
        timeline_events: &[Arc<StoredEvent>],
        senders: &BTreeSet<OwnedUserId>,
    ) -> Result<(Vec<Arc<StoredEvent>>, Arc<StateMap>)> {
        let state_filter = &request.filter.room.state;
        let end_group = self.history.group_at(room_id, end)?;
        let state_at_end = self.history.state_of_group(end_group)?;
        let Some(since) = room_since.filter(|_| !request.full_state) else {
            let state = self.history.state_events(&state_at_end, None, state_filter, senders)?;
            return Ok((state, state_at_end));
        };
        let token_group = self.history.group_at(room_id, since)?;
        let mut state = if token_group == end_group {
            Vec::new()
        } else {
            let at_token = self.history.state_of_group(token_group)?;
            self.history.state_events(&state_at_end, Some(&at_token), state_filter, senders)?
        };
        if matches!(state_filter.lazy_load_options, LazyLoadOptions::Enabled { .. }) {
            let timeline_senders: BTreeSet<OwnedUserId> =
                timeline_events.iter().map(|e| e.pdu.sender.clone()).collect();
            add_missing(
                &mut state,
                self.history.member_events(&state_at_end, state_filter, &timeline_senders)?,
            );
        }
        Ok((state, state_at_end))
    }

    /// State events as a sync response carries them: `state`, or `state_after` with
    /// `use_state_after`.
    fn render_state(
        &self,
        request: &SyncRequest,
        viewer: Viewer<'_>,
        events: &[Arc<StoredEvent>],
        rendering: Rendering<'_>,
    ) -> Result<State> {
        let raw = self.renderer.raw_all(viewer, events, rendering)?;
        let events = StateEvents::from(raw.into_iter().map(Raw::from_json).collect::<Vec<_>>());
        Ok(if request.use_state_after { State::After(events) } else { State::Before(events) })
    }

    /// The member events, as of the timeline's start, of the timeline's senders whose
    /// member event is not in the timeline itself.
    fn senders_members(
        &self,
        state_at_start: &StateMap,
        state_filter: &RoomEventFilter,
        timeline_events: &[Arc<StoredEvent>],
    ) -> Result<Vec<Arc<StoredEvent>>> {
        let senders: BTreeSet<OwnedUserId> = timeline_events
            .iter()
            .filter(|e| {
                !timeline_events.iter().any(|m| {
                    m.pdu.kind == TimelineEventType::RoomMember
                        && m.pdu.state_key.as_deref() == Some(e.pdu.sender.as_str())
                })
            })
            .map(|e| e.pdu.sender.clone())
            .collect();
        self.history.member_events(state_at_start, state_filter, &senders)
    }

    /// With lazy loading, drop from `state_events` the member events this device already
    /// has: those of members whose member event is in this timeline (within one response),
    /// and, unless the filter wants them again, those it was sent before (the same event: a
    /// changed membership or profile is a new event and goes out). Remember the members of
    /// both the state and the timeline being sent. With `use_state_after` the client takes no
    /// state from the timeline, so the timeline neither replaces nor counts as sent state.
    fn drop_redundant_members(
        &self,
        request: &SyncRequest,
        room_id: &RoomId,
        timeline_events: &[Arc<StoredEvent>],
        state_events: Vec<Arc<StoredEvent>>,
    ) -> Vec<Arc<StoredEvent>> {
        let LazyLoadOptions::Enabled { include_redundant_members } =
            request.filter.room.state.lazy_load_options
        else {
            return state_events;
        };
        let in_timeline: HashSet<OwnedUserId> = timeline_events.iter().filter_map(|e| member_of(e)).collect();
        let mut sent = self.sent_members.lock().unwrap_or_else(|p| p.into_inner());
        let key = (request.user_id.clone(), request.device_id.clone());
        if !sent.contains_key(&key) && sent.len() >= SENT_MEMBERS_DEVICES {
            // Bounded memory: forgetting only means sending some members again.
            sent.clear();
        }
        let room = sent.entry(key).or_default().entry(room_id.to_owned()).or_default();
        let kept = state_events
            .into_iter()
            .filter(|event| {
                let Some(member) = member_of(event) else { return true };
                if in_timeline.contains(&member) && !request.use_state_after {
                    return false;
                }
                let known =
                    room.insert(member, event.pdu.event_id.clone()).as_ref() == Some(&event.pdu.event_id);
                !known || include_redundant_members
            })
            .collect();
        if !request.use_state_after {
            for event in timeline_events {
                if let Some(member) = member_of(event) {
                    room.insert(member, event.pdu.event_id.clone());
                }
            }
        }
        kept
    }

    fn forget_sent_members(&self, user_id: &UserId, device_id: &DeviceId) {
        let mut sent = self.sent_members.lock().unwrap_or_else(|p| p.into_inner());
        sent.remove(&(user_id.to_owned(), device_id.to_owned()));
    }

    fn rendering<'f>(&self, filter: &'f FilterDefinition) -> Rendering<'f> {
        let shape = match filter.event_format {
            ruma::api::client::filter::EventFormat::Federation => Shape::Federation,
            _ => Shape::Sync,
        };
        Rendering { shape, fields: filter.event_fields.as_deref() }
    }
}

/// Timeline events per room the filter asks for. 0 is allowed, as Synapse allows it: an empty
/// timeline whose `limited` says whether events were left out.
fn timeline_limit(filter: &RoomEventFilter) -> usize {
    filter
        .limit
        .map_or(DEFAULT_TIMELINE_LIMIT, |l| usize::try_from(u64::from(l)).unwrap_or(MAX_TIMELINE_LIMIT))
        .min(MAX_TIMELINE_LIMIT)
}

fn timeline(events: Vec<Box<RawJsonValue>>, limited: bool, prev: u64) -> Timeline {
    let mut timeline = Timeline::new();
    timeline.events = events.into_iter().map(Raw::from_json).collect();
    timeline.limited = limited;
    timeline.prev_batch = Some(format!("s{prev}"));
    timeline
}

fn to_raw(value: &JsonValue) -> Result<Box<RawJsonValue>> {
    crate::service::rooms::render::to_raw(value)
}

fn is_empty(response: &Response) -> bool {
    let rooms = &response.rooms;
    rooms.join.is_empty()
        && rooms.invite.is_empty()
        && rooms.leave.is_empty()
        && rooms.knock.is_empty()
        && response.account_data.events.is_empty()
        && response.presence.events.is_empty()
        && response.to_device.events.is_empty()
        && response.device_lists.changed.is_empty()
        && response.device_lists.left.is_empty()
}

/// Append the events of `more` that `events` does not hold yet.
fn add_missing(events: &mut Vec<Arc<StoredEvent>>, more: Vec<Arc<StoredEvent>>) {
    for event in more {
        if !events.iter().any(|e| e.pdu.event_id == event.pdu.event_id) {
            events.push(event);
        }
    }
}

/// The user a member event is about; `None` for other events.
fn member_of(event: &StoredEvent) -> Option<OwnedUserId> {
    if event.pdu.kind != TimelineEventType::RoomMember {
        return None;
    }
    event.pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
}

/// The `membership` of a member event.
fn membership_of(event: &StoredEvent) -> Option<String> {
    event.pdu.content_value().get("membership").and_then(JsonValue::as_str).map(str::to_owned)
}

/// Whether a member event replaced a join (from `unsigned.prev_content`, which local events
/// carry; without it, the event counts as a new join).
fn was_joined_before(event: &StoredEvent) -> bool {
    event
        .pdu
        .unsigned
        .as_ref()
        .and_then(|u| u.get("prev_content"))
        .and_then(|c| c.get("membership"))
        .and_then(JsonValue::as_str)
        == Some("join")
}
