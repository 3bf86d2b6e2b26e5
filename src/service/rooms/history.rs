//! Reading a room's history as a client: windows of the timeline filtered by history
//! visibility, the client's filter and ignored users; the state at any stream position;
//! lazy-loaded members; and the endpoints built on them (`/messages`, `/context`,
//! `/timestamp_to_event`). Sync reads timelines through here too.
//!
//! Tokens name a point between positions: token `t` lies after position `t`, so a backward
//! read from `t` starts at `t` itself and a forward read at `t + 1`. Positions are stream
//! positions, and below them (as negative numbers) the positions of history backfilled from
//! other servers (see `events`): `/messages` and `/context` page through both; sync's windows
//! stay within the stream.

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
};

use ruma::{
    EventId, OwnedEventId, OwnedUserId, RoomId, UserId,
    api::client::filter::{LazyLoadOptions, RoomEventFilter},
    events::StateEventType,
};
use serde_json::value::RawValue as RawJsonValue;

use super::{
    events::{Events, StoredEvent},
    relations::Relations,
    render::{EventRenderer, Rendering, Viewer},
    state::{RoomStates, StateMap},
    visibility::Visibility,
};
use crate::{
    Error, Result,
    matrix::filter,
    service::{account_data::AccountData, stream::Stream},
    storage::{Direction, tables::EventStatus},
};

/// Rows read per storage scan while filling a window.
const SCAN_CHUNK: usize = 64;
/// Default and largest page of `/messages` and `/context`.
pub const DEFAULT_LIMIT: usize = 10;
pub const MAX_LIMIT: usize = 1000;

/// Which events a window admits.
pub struct WindowFilter<'a> {
    pub filter: &'a RoomEventFilter,
    pub ignored: &'a HashSet<OwnedUserId>,
}

/// Events read from a room in scan order.
pub struct Window {
    pub events: Vec<Arc<StoredEvent>>,
    /// Whether events remain in the range beyond this window.
    pub more: bool,
    /// The token to continue from in the same direction.
    pub next: u64,
}

/// Events read from a room by position, backfilled history included.
struct PositionWindow {
    events: Vec<Arc<StoredEvent>>,
    more: bool,
    next: i64,
}

/// A page of `/messages`.
pub struct MessagesPage {
    pub start: i64,
    pub end: Option<i64>,
    pub chunk: Vec<Box<RawJsonValue>>,
    pub state: Vec<Box<RawJsonValue>>,
}

/// Where a page of `/messages` starts and ends, which way it goes, and its size.
struct Page {
    from: Option<i64>,
    to: Option<i64>,
    direction: Direction,
    limit: usize,
}

/// The answer of `/context`.
pub struct ContextPage {
    pub start: i64,
    pub end: i64,
    pub before: Vec<Box<RawJsonValue>>,
    pub event: Box<RawJsonValue>,
    pub after: Vec<Box<RawJsonValue>>,
    pub state: Vec<Box<RawJsonValue>>,
}

pub struct History {
    events: Arc<Events>,
    states: Arc<RoomStates>,
    visibility: Arc<Visibility>,
    account_data: Arc<AccountData>,
    renderer: Arc<EventRenderer>,
    relations: Arc<Relations>,
    stream: Arc<Stream>,
}

/// A page of `/relations`.
pub struct RelationsPage {
    pub chunk: Vec<Box<RawJsonValue>>,
    pub next_batch: Option<u64>,
    pub recursion_depth: Option<u64>,
}

/// How deep `recurse` follows relations of relations, as Synapse does.
const MAX_RELATION_DEPTH: u64 = 3;

#[derive(serde::Deserialize)]
struct IgnoredUserList {
    #[serde(default)]
    ignored_users: std::collections::BTreeMap<OwnedUserId, serde_json::Value>,
}

impl History {
    pub fn new(
        events: Arc<Events>,
        states: Arc<RoomStates>,
        visibility: Arc<Visibility>,
        account_data: Arc<AccountData>,
        renderer: Arc<EventRenderer>,
        relations: Arc<Relations>,
        stream: Arc<Stream>,
    ) -> Self {
        Self { events, states, visibility, account_data, renderer, relations, stream }
    }

    /// `GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`: events relating
    /// to a parent the user may see, paged by position.
    #[allow(clippy::too_many_arguments)]
    pub fn relating(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        parent: &EventId,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        from: Option<u64>,
        to: Option<u64>,
        direction: Direction,
        limit: usize,
        recurse: bool,
    ) -> Result<RelationsPage> {
        let user_id = viewer.user_id;
        let parent_event = self.event_in(room_id, parent)?;
        if !self.visibility.may_see_event(user_id, &parent_event)? {
            return Err(Error::not_found("Event not found"));
        }
        let limit = limit.clamp(1, MAX_LIMIT);
        // Children are read one level at a time; with `recurse`, their children too.
        let mut parents = vec![parent.to_owned()];
        let mut found: Vec<(u64, OwnedEventId)> = Vec::new();
        let depth = if recurse { MAX_RELATION_DEPTH } else { 1 };
        let mut reached = 0;
        for _ in 0..depth {
            let mut next_parents = Vec::new();
            for p in &parents {
                // Read everything in range at this level; `limit` applies to the merged list.
                for child in self.relations.children(p, rel_type, from, to, direction, MAX_LIMIT * 4)? {
                    next_parents.push(child.event_id.clone());
                    found.push((child.stream, child.event_id));
                }
            }
            if next_parents.is_empty() {
                break;
            }
            reached += 1;
            parents = next_parents;
        }
        found.sort_by_key(|(stream, _)| *stream);
        found.dedup();
        if direction == Direction::Reverse {
            found.reverse();
        }
        let mut chunk = Vec::new();
        let mut next_batch = None;
        for (stream, id) in found {
            let Some(event) = self.events.get(&id)? else { continue };
            if event.pdu.is_redacted() || event_type.is_some_and(|t| event.pdu.kind.to_string() != t) {
                continue;
            }
            if !self.visibility.may_see_event(user_id, &event)? {
                continue;
            }
            if chunk.len() >= limit {
                // The first event not returned starts the next page.
                next_batch = Some(match direction {
                    Direction::Forward => stream - 1,
                    Direction::Reverse => stream,
                });
                break;
            }
            chunk.push(self.renderer.raw(viewer, &event, Rendering::CLIENT)?);
        }
        Ok(RelationsPage { chunk, next_batch, recursion_depth: recurse.then_some(reached) })
    }

    /// `GET /rooms/{roomId}/threads`: thread roots by latest activity, newest first.
    pub fn threads(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        participated_only: bool,
        from: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<Box<RawJsonValue>>, Option<u64>)> {
        let user_id = viewer.user_id;
        self.visibility.readable_state(user_id, room_id)?;
        let limit = limit.clamp(1, MAX_LIMIT);
        let mut chunk = Vec::new();
        let mut cursor = from;
        // Threads examined per page: `participated` can skip many.
        let mut budget = limit.saturating_mul(20).saturating_add(200);
        loop {
            let roots = self.relations.threads(room_id, cursor, SCAN_CHUNK)?;
            if roots.is_empty() {
                return Ok((chunk, None));
            }
            for (root_id, activity) in roots {
                if chunk.len() >= limit || budget == 0 {
                    return Ok((chunk, Some(activity + 1)));
                }
                budget -= 1;
                cursor = Some(activity);
                let Some(root) = self.events.get(&root_id)? else { continue };
                if root.pdu.room_id != room_id || !self.visibility.may_see_event(user_id, &root)? {
                    continue;
                }
                if participated_only && !self.relations.participated(user_id, &root)? {
                    continue;
                }
                chunk.push(self.renderer.raw(viewer, &root, Rendering::CLIENT)?);
            }
        }
    }

    /// An event of this room's history, or `M_NOT_FOUND` (also for an event of another room,
    /// or an outlier, which has no place in the history).
    fn event_in(&self, room_id: &RoomId, event_id: &EventId) -> Result<Arc<StoredEvent>> {
        self.events
            .get(event_id)?
            .filter(|e| e.pdu.room_id == room_id && e.status == EventStatus::Accepted)
            .ok_or_else(|| Error::not_found("Event not found"))
    }

    /// The users `user_id` ignores (`m.ignored_user_list`).
    pub fn ignored_users(&self, user_id: &UserId) -> Result<HashSet<OwnedUserId>> {
        let list: Option<IgnoredUserList> = self.account_data.get_as(user_id, None, "m.ignored_user_list")?;
        Ok(list.map(|l| l.ignored_users.into_keys().collect()).unwrap_or_default())
    }

    /// Whether an event passes the window's filter (visibility is checked separately).
    fn admits(&self, which: &WindowFilter<'_>, event: &StoredEvent) -> bool {
        let pdu = &event.pdu;
        // Ignored users' messages are hidden; their state changes still shape the room.
        if pdu.state_key.is_none() && which.ignored.contains(&pdu.sender) {
            return false;
        }
        filter::room_event_passes(which.filter, &pdu.room_id, &pdu.sender, &pdu.kind.to_string(), || {
            has_url(pdu)
        })
    }

    /// Up to `limit` events `user_id` may see, reading from token `from` in `direction` and
    /// stopping at token `stop` (exclusive for backward reads: events after it; inclusive for
    /// forward reads: events up to it). `more` says whether a further event the user may see
    /// passes the filter, so a limit of 0 asks only that. At most a budget of rows is
    /// examined, so a filter that matches little cannot make one request scan a whole room;
    /// running out of it counts as `more`.
    #[allow(clippy::too_many_arguments)]
    pub fn window(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        from: u64,
        stop: Option<u64>,
        direction: Direction,
        which: &WindowFilter<'_>,
        limit: usize,
    ) -> Result<Window> {
        // Within the stream: backward, at the stream's start (token 0); backfilled history
        // is for `/messages` to page into.
        let stop = match direction {
            Direction::Reverse => Some(stop.unwrap_or(0)),
            Direction::Forward => stop,
        };
        let window =
            self.window_by(room_id, position(from), stop.map(position), direction, which, limit, &|event| {
                self.visibility.may_see_event(user_id, event)
            })?;
        Ok(Window { events: window.events, more: window.more, next: u64::try_from(window.next).unwrap_or(0) })
    }

    /// As `window`, by position (backfilled history included), with `may_see` deciding which
    /// events the reader may see (every one, for a server admin).
    #[allow(clippy::too_many_arguments)]
    fn window_by(
        &self,
        room_id: &RoomId,
        from: i64,
        stop: Option<i64>,
        direction: Direction,
        which: &WindowFilter<'_>,
        limit: usize,
        may_see: &dyn Fn(&StoredEvent) -> Result<bool>,
    ) -> Result<PositionWindow> {
        let budget = limit.saturating_mul(20).saturating_add(200);
        let mut picked = Vec::new();
        let mut examined = 0;
        let mut cursor = match direction {
            Direction::Reverse => from.saturating_add(1),
            Direction::Forward => from,
        };
        let mut next = from;
        // The first read asks for what the window shows and one more (most windows, a sync's
        // timeline of ten, need no more); later reads for more at a time.
        let mut chunk = limit.saturating_add(1).clamp(1, SCAN_CHUNK);
        loop {
            let rows = self.events.room_events_by_position(room_id, Some(cursor), stop, direction, chunk)?;
            chunk = chunk.saturating_mul(4).min(SCAN_CHUNK);
            if rows.is_empty() {
                return Ok(PositionWindow { events: picked, more: false, next });
            }
            for event in rows {
                let at = event.position();
                let beyond = match (direction, stop) {
                    (Direction::Reverse, Some(stop)) => at <= stop,
                    (Direction::Forward, Some(stop)) => at > stop,
                    (_, None) => false,
                };
                if beyond {
                    return Ok(PositionWindow { events: picked, more: false, next });
                }
                if examined >= budget {
                    // Unknown: the next page will tell.
                    return Ok(PositionWindow { events: picked, more: true, next });
                }
                examined += 1;
                let wanted = self.admits(which, &event) && may_see(&event)?;
                if wanted && picked.len() >= limit {
                    // An event the window leaves out, so `more` is known, not guessed.
                    return Ok(PositionWindow { events: picked, more: true, next });
                }
                cursor = at;
                next = match direction {
                    Direction::Reverse => at - 1,
                    Direction::Forward => at,
                };
                if wanted {
                    picked.push(event);
                }
            }
        }
    }

    /// The room's state after every event at or before `position`.
    pub fn state_at(&self, room_id: &RoomId, position: u64) -> Result<Arc<StateMap>> {
        self.states.state_of_group(self.group_at(room_id, position)?)
    }

    /// The state group of the room after every event at or before `position`.
    pub fn group_at(&self, room_id: &RoomId, position: u64) -> Result<u64> {
        // Read the current group first: an event committed after this read shows up in the
        // scan below, whose state_before then answers.
        let room = self.states.room(room_id)?.ok_or_else(|| Error::not_found("Unknown room"))?;
        Ok(match self.events.room_events(room_id, Some(position), Direction::Forward, 1)?.first() {
            Some(next) => next.head_before(),
            None => room.state_group,
        })
    }

    /// A state group's map.
    pub fn state_of_group(&self, group: u64) -> Result<Arc<StateMap>> {
        self.states.state_of_group(group)
    }

    /// The state just before `event`.
    pub fn state_before(&self, event: &StoredEvent) -> Result<Arc<StateMap>> {
        self.states.state_of_group(event.state_before)
    }

    /// The member events of `users` in `state` that the filter lets through, oldest first:
    /// looked up one by one, so a big room's member list is not walked for a few senders.
    pub fn member_events<'u>(
        &self,
        state: &StateMap,
        state_filter: &RoomEventFilter,
        users: impl IntoIterator<Item = &'u OwnedUserId>,
    ) -> Result<Vec<Arc<StoredEvent>>> {
        let ids: Vec<&OwnedEventId> = users
            .into_iter()
            .filter_map(|user| state.get(&(StateEventType::RoomMember, user.to_string())))
            .collect();
        let mut events = self.events.get_many(ids)?;
        events.retain(|e| {
            filter::room_event_passes(
                state_filter,
                &e.pdu.room_id,
                &e.pdu.sender,
                &e.pdu.kind.to_string(),
                || has_url(&e.pdu),
            )
        });
        events.sort_by_key(|e| e.stream);
        events.dedup_by(|a, b| a.pdu.event_id == b.pdu.event_id);
        Ok(events)
    }

    /// The events of a state map, optionally only those differing from `previous`, passing
    /// the state filter; with lazy loading, members only for `senders`.
    pub fn state_events(
        &self,
        state: &StateMap,
        previous: Option<&StateMap>,
        state_filter: &RoomEventFilter,
        senders: &BTreeSet<OwnedUserId>,
    ) -> Result<Vec<Arc<StoredEvent>>> {
        let lazy = matches!(state_filter.lazy_load_options, LazyLoadOptions::Enabled { .. });
        let mut ids: Vec<&OwnedEventId> = Vec::new();
        for (key, id) in state {
            if previous.is_some_and(|p| p.get(key) == Some(id)) {
                continue;
            }
            if lazy && key.0 == StateEventType::RoomMember && !senders.iter().any(|s| s.as_str() == key.1) {
                continue;
            }
            ids.push(id);
        }
        let mut events = self.events.get_many(ids)?;
        events.retain(|e| {
            filter::room_event_passes(
                state_filter,
                &e.pdu.room_id,
                &e.pdu.sender,
                &e.pdu.kind.to_string(),
                || has_url(&e.pdu),
            )
        });
        events.sort_by_key(|e| e.stream);
        Ok(events)
    }

    /// `GET /rooms/{roomId}/messages`.
    #[allow(clippy::too_many_arguments)]
    pub fn messages(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        from: Option<i64>,
        to: Option<i64>,
        direction: Direction,
        limit: usize,
        room_filter: &RoomEventFilter,
    ) -> Result<MessagesPage> {
        let user_id = viewer.user_id;
        // Strangers to a room that is not world-readable learn nothing, not even its size.
        self.visibility.readable_state(user_id, room_id)?;
        let ignored = self.ignored_users(user_id)?;
        let which = WindowFilter { filter: room_filter, ignored: &ignored };
        let page = Page { from, to, direction, limit };
        self.messages_page(viewer, room_id, page, &which, &|event| {
            self.visibility.may_see_event(user_id, event)
        })
    }

    /// One page of `/messages` (or of the admin API's messages) over the events `which` admits
    /// and `may_see` lets the reader see.
    fn messages_page(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        page: Page,
        which: &WindowFilter<'_>,
        may_see: &dyn Fn(&StoredEvent) -> Result<bool>,
    ) -> Result<MessagesPage> {
        let Page { from, to, direction, limit } = page;
        let limit = limit.clamp(1, MAX_LIMIT);
        let from = match (from, direction) {
            (Some(from), _) => from,
            (None, Direction::Reverse) => position(self.stream.committed()),
            // The room's start: before the oldest backfilled event, if any.
            (None, Direction::Forward) => match self.events.last_backfill(room_id)? {
                0 => 0,
                oldest => -position(oldest) - 1,
            },
        };
        let window = self.window_by(room_id, from, to, direction, which, limit, may_see)?;
        let state = self.lazy_members_for(&window.events, which.filter, viewer)?;
        // Backward, `end` is left out once nothing is left (the room's start, or history the
        // user may not see). Forward, events may still arrive after the last one: a page with
        // events always says where to continue, as Synapse's does.
        let open_ended = direction == Direction::Forward && !window.events.is_empty();
        Ok(MessagesPage {
            start: from,
            end: (window.more || open_ended).then_some(window.next),
            chunk: self.renderer.raw_all(viewer, &window.events, Rendering::CLIENT)?,
            state,
        })
    }

    /// Member events of the senders of `events`, as of the earliest of them, when the
    /// filter asks for lazy loading.
    fn lazy_members_for(
        &self,
        events: &[Arc<StoredEvent>],
        room_filter: &RoomEventFilter,
        viewer: Viewer<'_>,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        if !matches!(room_filter.lazy_load_options, LazyLoadOptions::Enabled { .. }) || events.is_empty() {
            return Ok(Vec::new());
        }
        let senders: BTreeSet<OwnedUserId> = events.iter().map(|e| e.pdu.sender.clone()).collect();
        let earliest = events.iter().min_by_key(|e| e.position()).expect("events is not empty");
        let state = self.state_before(earliest)?;
        let mut members = Vec::new();
        for sender in &senders {
            let key = (StateEventType::RoomMember, sender.to_string());
            // Only the state within the page: a later member event could postdate what the
            // user may see.
            if let Some(event) = state.get(&key).map(|id| self.events.get(id)).transpose()?.flatten() {
                members.push(self.renderer.raw(viewer, &event, Rendering::CLIENT)?);
            }
        }
        Ok(members)
    }

    /// `GET /rooms/{roomId}/context/{eventId}`: the event, some events around it, and the
    /// room state at it.
    pub fn context(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        event_id: &EventId,
        limit: usize,
        room_filter: &RoomEventFilter,
    ) -> Result<ContextPage> {
        let user_id = viewer.user_id;
        let event = self.event_in(room_id, event_id)?;
        if !self.visibility.may_see_event(user_id, &event)? {
            return Err(Error::forbidden("You don't have permission to view this event"));
        }
        let limit = limit.min(MAX_LIMIT);
        let ignored = self.ignored_users(user_id)?;
        let which = WindowFilter { filter: room_filter, ignored: &ignored };
        let may_see = |e: &StoredEvent| self.visibility.may_see_event(user_id, e);
        let (before, after) = self.around(room_id, &event, &which, limit, &may_see)?;
        // The state at the last event returned.
        let last = after.events.last().unwrap_or(&event);
        let state_map = self.state_after_event(room_id, last)?;
        let mut around: Vec<Arc<StoredEvent>> = before.events.clone();
        around.push(Arc::clone(&event));
        around.extend(after.events.iter().cloned());
        let senders: BTreeSet<OwnedUserId> = around.iter().map(|e| e.pdu.sender.clone()).collect();
        let state = self.state_events(&state_map, None, room_filter, &senders)?;
        Ok(ContextPage {
            start: before.next,
            end: after.next,
            before: self.renderer.raw_all(viewer, &before.events, Rendering::CLIENT)?,
            event: self.renderer.raw(viewer, &event, Rendering::CLIENT)?,
            after: self.renderer.raw_all(viewer, &after.events, Rendering::CLIENT)?,
            state: self.renderer.raw_all(viewer, &state, Rendering::CLIENT)?,
        })
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/messages`: `/messages` for a server admin,
    /// whatever their membership: every event of the room, paged the same way (the
    /// client's filter applies; history visibility and ignored users do not).
    #[allow(clippy::too_many_arguments)]
    pub fn admin_messages(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        from: Option<i64>,
        to: Option<i64>,
        direction: Direction,
        limit: usize,
        room_filter: &RoomEventFilter,
    ) -> Result<MessagesPage> {
        if self.states.room(room_id)?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        let ignored = HashSet::new();
        let which = WindowFilter { filter: room_filter, ignored: &ignored };
        let page = Page { from, to, direction, limit };
        self.messages_page(viewer, room_id, page, &which, &|_| Ok(true))
    }

    /// `GET /_synapse/admin/v1/rooms/{roomId}/context/{eventId}`: `/context` for a server
    /// admin, whatever their membership.
    pub fn admin_context(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        event_id: &EventId,
        limit: usize,
        room_filter: &RoomEventFilter,
    ) -> Result<ContextPage> {
        let event = self.event_in(room_id, event_id)?;
        let limit = limit.min(MAX_LIMIT);
        let ignored = HashSet::new();
        let which = WindowFilter { filter: room_filter, ignored: &ignored };
        let all = |_: &StoredEvent| -> Result<bool> { Ok(true) };
        let (before, after) = self.around(room_id, &event, &which, limit, &all)?;
        let last = after.events.last().unwrap_or(&event);
        let state_map = self.state_after_event(room_id, last)?;
        let mut around: Vec<Arc<StoredEvent>> = before.events.clone();
        around.push(Arc::clone(&event));
        around.extend(after.events.iter().cloned());
        let senders: BTreeSet<OwnedUserId> = around.iter().map(|e| e.pdu.sender.clone()).collect();
        let state = self.state_events(&state_map, None, room_filter, &senders)?;
        Ok(ContextPage {
            start: before.next,
            end: after.next,
            before: self.renderer.raw_all(viewer, &before.events, Rendering::CLIENT)?,
            event: self.renderer.raw(viewer, &event, Rendering::CLIENT)?,
            after: self.renderer.raw_all(viewer, &after.events, Rendering::CLIENT)?,
            state: self.renderer.raw_all(viewer, &state, Rendering::CLIENT)?,
        })
    }

    /// The windows before and after `event` for `/context`, half of `limit` each.
    fn around(
        &self,
        room_id: &RoomId,
        event: &StoredEvent,
        which: &WindowFilter<'_>,
        limit: usize,
        may_see: &dyn Fn(&StoredEvent) -> Result<bool>,
    ) -> Result<(PositionWindow, PositionWindow)> {
        let at = event.position();
        let before_limit = limit / 2;
        let after_limit = limit - before_limit;
        let before = if before_limit == 0 {
            PositionWindow { events: Vec::new(), more: true, next: at - 1 }
        } else {
            self.window_by(room_id, at - 1, None, Direction::Reverse, which, before_limit, may_see)?
        };
        let after = if after_limit == 0 {
            PositionWindow { events: Vec::new(), more: true, next: at }
        } else {
            let upto = Some(position(self.stream.committed()));
            self.window_by(room_id, at, upto, Direction::Forward, which, after_limit, may_see)?
        };
        Ok((before, after))
    }

    /// The room's state after `event`, as clients are shown it around the event: the room's
    /// state after everything up to its stream position, or for a backfilled event its own.
    fn state_after_event(&self, room_id: &RoomId, event: &StoredEvent) -> Result<Arc<StateMap>> {
        match event.backfill {
            Some(_) => self.states.state_of_group(event.state_after.unwrap_or(event.state_before)),
            None => self.state_at(room_id, event.stream),
        }
    }

    /// Whether the room is known here (a purged room is not, though its members may still
    /// hold a row naming their leave).
    pub fn room_exists(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.states.room(room_id)?.is_some())
    }

    /// `GET /rooms/{roomId}/timestamp_to_event`: the visible event nearest to `ts` in
    /// `direction` (at or after it going forward, at or before it going backward).
    pub fn event_at_timestamp(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        ts: u64,
        direction: Direction,
    ) -> Result<Arc<StoredEvent>> {
        self.visibility.readable_state(user_id, room_id)?;
        let mut cursor = ts;
        loop {
            let ids = self.events.events_near_timestamp(room_id, cursor, direction, SCAN_CHUNK)?;
            if ids.is_empty() {
                return Err(Error::not_found("No event found in that direction"));
            }
            for id in &ids {
                if let Some(event) = self.events.get(id)? {
                    if self.visibility.may_see_event(user_id, &event)? {
                        return Ok(event);
                    }
                    cursor = event.pdu.origin_server_ts.get().into();
                }
            }
            // Continue past the timestamps just read.
            cursor = match direction {
                Direction::Forward => cursor.saturating_add(1),
                Direction::Reverse => match cursor.checked_sub(1) {
                    Some(c) => c,
                    None => return Err(Error::not_found("No event found in that direction")),
                },
            };
        }
    }
}

/// A stream position as a position of the room's history.
fn position(stream: u64) -> i64 {
    i64::try_from(stream).unwrap_or(i64::MAX)
}

/// Whether an event's content has a string `url` (what a filter's `contains_url` asks),
/// read only when a filter asks.
fn has_url(pdu: &crate::matrix::pdu::Pdu) -> bool {
    pdu.content_value().get("url").is_some_and(serde_json::Value::is_string)
}
