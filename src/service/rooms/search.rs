//! Server-side search of room events: an inverted index kept in the KV store and the
//! `/search` query over it. Owns the `search_terms` and `search_events` tables.
//!
//! `Timeline` calls [`Search::index_in`] and [`Search::remove_in`] inside the batch that
//! commits an event or a redaction, so the index never disagrees with the events: a search is
//! a prefix scan of `(room, term)` per query word and room, never a scan of events. Each index
//! row carries the sender, type and state group of its event, so filtering, ranking and the
//! visibility decision (asked once per state group) need no event loads; only the events of
//! the page returned are loaded, and each goes through `Visibility::may_see_event` again.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use base64::Engine;
use ruma::{
    OwnedEventId, OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, UInt,
    api::client::search::search_events::v3::{
        Criteria, EventContextResult, GroupingKey, OrderBy, ResultGroup, ResultGroupMap, ResultRoomEvents,
        SearchResult, UserProfile,
    },
    events::{StateEventType, room::member::MembershipState},
    serde::Raw,
};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::{
    events::{Events, StoredEvent},
    members::Memberships,
    render::{EventRenderer, Rendering, Viewer},
    state::RoomStates,
    visibility::Visibility,
};
use crate::{
    Error, Result,
    matrix::{
        filter,
        search::{self, Query, SearchKey},
    },
    storage::{
        Direction, KvStore, Table, WriteBatch,
        codec::KeyCodec,
        kv::KeyRange,
        tables::{
            META, SEARCH_EVENTS, SEARCH_INDEX_VERSION_KEY, SEARCH_TERMS, SearchPostingRecord,
            SearchedEventRecord,
        },
    },
};

/// The format of the index rows and the tokenizer that made them. Raise it whenever either
/// changes: a server starting with an index of another version rebuilds it from the events.
const SEARCH_INDEX_VERSION: u64 = 1;
/// Events indexed per batch while rebuilding.
const REBUILD_CHUNK: usize = 1_000;
/// Results per page when the filter names no limit (as Synapse), and the most one page holds.
const DEFAULT_LIMIT: u64 = 10;
const MAX_LIMIT: u64 = 100;
/// The most context events on either side of a result.
const MAX_CONTEXT: u64 = 50;

pub struct Search {
    terms: Table<(OwnedRoomId, String, u64), SearchPostingRecord>,
    indexed: Table<OwnedEventId, SearchedEventRecord>,
    events: Arc<Events>,
    states: Arc<RoomStates>,
    members: Arc<Memberships>,
    visibility: Arc<Visibility>,
    renderer: Arc<EventRenderer>,
}

/// One event that matched every query word.
struct Candidate {
    room_id: OwnedRoomId,
    stream: u64,
    posting: SearchPostingRecord,
    /// Per query word, the occurrences of the terms it matched.
    occurrences: Vec<u32>,
    /// The index terms that matched (more than the words when the last word is a prefix).
    terms: BTreeSet<String>,
    rank: f64,
}

impl Candidate {
    fn position(&self, order: Order) -> Position {
        Position { rank: if order == Order::Rank { self.rank } else { 0.0 }, stream: self.stream }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Order {
    #[serde(rename = "k")]
    Rank,
    #[serde(rename = "t")]
    Recent,
}

/// A place in the result order: results are sorted by descending position, rank first
/// (always 0 when ordering by recency), then stream position. Stream positions are unique,
/// so the order is total and a position says exactly where the next page starts.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Position {
    rank: f64,
    stream: u64,
}

impl Position {
    fn compare(&self, other: &Self) -> std::cmp::Ordering {
        self.rank.total_cmp(&other.rank).then(self.stream.cmp(&other.stream))
    }
}

/// What a group's `next_batch` narrows the search to.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Scope {
    #[serde(rename = "r")]
    Room(OwnedRoomId),
    #[serde(rename = "s")]
    Sender(OwnedUserId),
}

/// The `next_batch` token: the order it belongs to, the position of the last result given,
/// and the group it is scoped to, if any. Opaque to clients (base64 of JSON); the rank is kept
/// as its bits so the position survives the round trip exactly.
#[derive(Debug, Serialize, Deserialize)]
struct Cursor {
    o: Order,
    r: u64,
    s: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    g: Option<Scope>,
}

impl Cursor {
    fn new(order: Order, position: Position, scope: Option<Scope>) -> Self {
        Self { o: order, r: position.rank.to_bits(), s: position.stream, g: scope }
    }

    fn position(&self) -> Position {
        Position { rank: f64::from_bits(self.r), stream: self.s }
    }

    fn encode(&self) -> Result<String> {
        let json = serde_json::to_vec(self).map_err(|e| Error::internal(format!("search token: {e}")))?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json))
    }

    fn decode(token: &str) -> Result<Self> {
        let invalid = || Error::invalid_param("Invalid next_batch token");
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        serde_json::from_slice(&json).map_err(|_| invalid())
    }
}

impl Search {
    /// Open the index; if it was written by another index version (or never, on a database
    /// older than search), rebuild it from every stored event before the server serves.
    pub fn new(
        store: &Arc<dyn KvStore>,
        events: Arc<Events>,
        states: Arc<RoomStates>,
        members: Arc<Memberships>,
        visibility: Arc<Visibility>,
        renderer: Arc<EventRenderer>,
    ) -> Result<Self> {
        let search = Self {
            terms: SEARCH_TERMS.open(store),
            indexed: SEARCH_EVENTS.open(store),
            events,
            states,
            members,
            renderer,
            visibility,
        };
        search.rebuild_if_stale(store)?;
        Ok(search)
    }

    /// Queue the index rows of an event (nothing for events with no searchable text).
    pub fn index_in(&self, batch: &mut WriteBatch, event: &StoredEvent) -> Result<()> {
        let pdu = &event.pdu;
        if pdu.is_redacted() {
            return Ok(());
        }
        let kind = pdu.kind.to_string();
        let Some((_, text)) = search::searchable_text(&kind, pdu.state_key.as_deref(), &pdu.content_value())
        else {
            return Ok(());
        };
        let indexed = search::index_text(&text);
        if indexed.terms.is_empty() {
            return Ok(());
        }
        for (term, occurrences) in &indexed.terms {
            let posting = SearchPostingRecord {
                event_id: pdu.event_id.clone(),
                kind: kind.clone(),
                sender: pdu.sender.clone(),
                state_before: event.state_before,
                occurrences: *occurrences,
                length: indexed.length,
            };
            self.terms.put(batch, &(pdu.room_id.clone(), term.clone(), event.stream), &posting)?;
        }
        let record = SearchedEventRecord {
            room_id: pdu.room_id.clone(),
            stream: event.stream,
            terms: indexed.terms.into_keys().collect(),
        };
        self.indexed.put(batch, &pdu.event_id, &record)?;
        Ok(())
    }

    /// Queue the removal of an event's index rows (a redaction: its text must no longer
    /// be found).
    pub fn remove_in(&self, batch: &mut WriteBatch, event_id: &ruma::EventId) -> Result<()> {
        let event_id = event_id.to_owned();
        let Some(record) = self.indexed.get(&event_id)? else { return Ok(()) };
        for term in record.terms {
            self.terms.delete(batch, &(record.room_id.clone(), term, record.stream));
        }
        self.indexed.delete(batch, &event_id);
        Ok(())
    }

    /// Queue the removal of a purged room's index: every term row of the room, and the
    /// per-event records of `event_ids`.
    pub fn purge_room_in<'a>(
        &self,
        batch: &mut WriteBatch,
        room_id: &ruma::RoomId,
        event_ids: impl IntoIterator<Item = &'a ruma::OwnedEventId>,
    ) -> Result<()> {
        self.terms.delete_prefix(batch, &room_id.to_owned())?;
        for event_id in event_ids {
            self.indexed.delete(batch, event_id);
        }
        Ok(())
    }

    fn rebuild_if_stale(&self, store: &Arc<dyn KvStore>) -> Result<()> {
        let meta = META.open(store);
        let key = SEARCH_INDEX_VERSION_KEY.to_owned();
        let found = meta.get(&key)?;
        if found == Some(SEARCH_INDEX_VERSION) {
            return Ok(());
        }
        tracing::info!(from = ?found, to = SEARCH_INDEX_VERSION, "rebuilding the search index");
        // Clear old rows first: a row of an older format must not be misread.
        let mut batch = WriteBatch::new();
        for row in self.terms.scan(KeyRange::all(), Direction::Forward)? {
            self.terms.delete(&mut batch, &row?.0);
        }
        for row in self.indexed.scan(KeyRange::all(), Direction::Forward)? {
            self.indexed.delete(&mut batch, &row?.0);
        }
        store.write(batch)?;
        // No event is appended while services are built, so the stream is complete here.
        let (mut after, mut count) = (0, 0usize);
        loop {
            let chunk = self.events.stream_events(after, REBUILD_CHUNK)?;
            let Some(last) = chunk.last() else { break };
            after = last.stream;
            let mut batch = WriteBatch::new();
            for event in &chunk {
                self.index_in(&mut batch, event)?;
            }
            store.write(batch)?;
            count += chunk.len();
        }
        meta.insert(&key, &SEARCH_INDEX_VERSION)?;
        tracing::info!(events = count, "search index rebuilt");
        Ok(())
    }

    /// `POST /search`, room events: every matching event the user may see in the rooms they
    /// are joined to now, in the requested order, one page per call.
    pub fn search(
        &self,
        viewer: Viewer<'_>,
        criteria: &Criteria,
        next_batch: Option<&str>,
    ) -> Result<ResultRoomEvents> {
        let user_id = viewer.user_id;
        let order = match &criteria.order_by {
            None | Some(OrderBy::Rank) => Order::Rank,
            Some(OrderBy::Recent) => Order::Recent,
            Some(other) => {
                return Err(Error::invalid_param(format!("Unknown order_by {:?}", other.as_str())));
            }
        };
        let cursor = next_batch.map(Cursor::decode).transpose()?;
        if cursor.as_ref().is_some_and(|c| c.o != order) {
            return Err(Error::invalid_param("next_batch belongs to a search in another order"));
        }
        let scope = cursor.as_ref().and_then(|c| c.g.clone());
        // Keys the spec does not name match nothing (as in Synapse) rather than fail the
        // request, so a client asking for a newer key still gets the others.
        let keys: BTreeSet<SearchKey> = match &criteria.keys {
            None => SearchKey::ALL.into_iter().collect(),
            Some(keys) => keys.iter().filter_map(|k| SearchKey::parse(k.as_str())).collect(),
        };
        let filter = &criteria.filter;
        let limit = filter.limit.map_or(DEFAULT_LIMIT, u64::from).clamp(1, MAX_LIMIT);
        let limit = usize::try_from(limit).unwrap_or(1);
        let query = Query::parse(&criteria.search_term);

        let mut rooms = self.members.rooms_of_user(user_id, &MembershipState::Join)?;
        rooms.retain(|room| {
            filter.rooms.as_ref().is_none_or(|only| only.contains(room))
                && !filter.not_rooms.contains(room)
                && !matches!(&scope, Some(Scope::Room(r)) if r != room)
        });

        let mut visible = Vec::new();
        let mut decided: HashMap<(OwnedRoomId, u64), bool> = HashMap::new();
        if !query.is_empty() {
            for room in &rooms {
                for candidate in self.matches_in_room(room, &query)? {
                    let posting = &candidate.posting;
                    let kind = posting.kind.as_str();
                    let wanted = SearchKey::of_event_type(kind).is_some_and(|k| keys.contains(&k))
                        && filter
                            .types
                            .as_ref()
                            .is_none_or(|t| t.iter().any(|p| filter::type_matches(p, kind)))
                        && !filter.not_types.iter().any(|p| filter::type_matches(p, kind))
                        && filter.senders.as_ref().is_none_or(|s| s.contains(&posting.sender))
                        && !filter.not_senders.contains(&posting.sender)
                        && !matches!(&scope, Some(Scope::Sender(s)) if *s != posting.sender);
                    if !wanted {
                        continue;
                    }
                    let group = (room.clone(), posting.state_before);
                    let may_see = match decided.get(&group) {
                        Some(answer) => *answer,
                        None => {
                            let answer = self.visibility.may_see_plain_event_in(
                                user_id,
                                room,
                                posting.state_before,
                            )?;
                            decided.insert(group, answer);
                            answer
                        }
                    };
                    if may_see {
                        visible.push(candidate);
                    }
                }
            }
        }
        visible.sort_by(|a, b| b.position(order).compare(&a.position(order)));

        let start = cursor.as_ref().map(Cursor::position);
        let after_cursor = |c: &Candidate| start.is_none_or(|p| c.position(order).compare(&p).is_lt());
        let remaining: Vec<&Candidate> = visible.iter().filter(|&c| after_cursor(c)).collect();
        let page = &remaining[..remaining.len().min(limit)];

        let mut response = ResultRoomEvents::new();
        response.count = Some(UInt::new_saturating(visible.len() as u64));
        if remaining.len() > page.len()
            && let Some(last) = page.last()
        {
            response.next_batch = Some(Cursor::new(order, last.position(order), scope.clone()).encode()?);
        }

        // Load the page's events; each passes the full visibility rule before it is shown.
        let mut shown: Vec<(&Candidate, Arc<StoredEvent>)> = Vec::new();
        for &candidate in page {
            let Some(event) = self.events.get(&candidate.posting.event_id)? else { continue };
            if event.pdu.is_redacted() || !self.visibility.may_see_event(user_id, &event)? {
                continue;
            }
            shown.push((candidate, event));
        }

        let context = &criteria.event_context;
        let before_limit = usize::try_from(u64::from(context.before_limit).min(MAX_CONTEXT)).unwrap_or(0);
        let after_limit = usize::try_from(u64::from(context.after_limit).min(MAX_CONTEXT)).unwrap_or(0);
        let mut highlights = BTreeSet::new();
        for (candidate, event) in &shown {
            highlights.extend(candidate.terms.iter().cloned());
            let mut result = SearchResult::new();
            result.rank = Some(candidate.rank);
            result.result = Some(Raw::from_json(self.renderer.raw(viewer, event, Rendering::CLIENT)?));
            result.context =
                self.context(viewer, event, before_limit, after_limit, context.include_profile)?;
            response.results.push(result);
        }
        response.highlights = highlights.into_iter().collect();

        for grouping in &criteria.groupings.group_by {
            match &grouping.key {
                Some(GroupingKey::RoomId) => {
                    let groups = group_by(order, &shown, &remaining, |c| c.room_id.clone(), Scope::Room)?;
                    response.groups.insert(ResultGroupMap::RoomId(groups));
                }
                Some(GroupingKey::Sender) => {
                    let groups =
                        group_by(order, &shown, &remaining, |c| c.posting.sender.clone(), Scope::Sender)?;
                    response.groups.insert(ResultGroupMap::Sender(groups));
                }
                // Keys the spec does not define group nothing.
                _ => {}
            }
        }

        if criteria.include_state == Some(true) {
            let rooms: BTreeSet<&OwnedRoomId> = shown.iter().map(|(c, _)| &c.room_id).collect();
            for room in rooms {
                let state = self.visibility.readable_state(user_id, room)?;
                let events = self.events.get_many(state.values())?;
                let raw = events
                    .iter()
                    .map(|e| self.renderer.raw(viewer, e, Rendering::CLIENT).map(Raw::from_json))
                    .collect::<Result<_>>()?;
                response.state.insert(room.clone(), raw);
            }
        }
        Ok(response)
    }

    /// Every event of `room` that contains all query words, with its rank. Each word is one
    /// prefix scan of the index; the sets are intersected by stream position.
    fn matches_in_room(&self, room: &RoomId, query: &Query) -> Result<Vec<Candidate>> {
        let room = room.to_owned();
        let mut found: Option<BTreeMap<u64, Candidate>> = None;
        for word in &query.words {
            let range = if word.prefix {
                // Terms hold no NUL byte, so the escaped key of a term starts with the term's
                // own bytes: this range is every term that starts with the word.
                let mut prefix = room.to_key_bytes();
                prefix.extend_from_slice(word.word.as_bytes());
                KeyRange::prefix(prefix)
            } else {
                KeyRange::prefix((room.clone(), word.word.clone()).to_key_bytes())
            };
            let mut hits: BTreeMap<u64, (SearchPostingRecord, u32, Vec<String>)> = BTreeMap::new();
            for row in self.terms.scan(range, Direction::Forward)? {
                let ((_, term, stream), posting) = row?;
                if found.as_ref().is_some_and(|f| !f.contains_key(&stream)) {
                    continue;
                }
                let occurrences = posting.occurrences;
                let hit = hits.entry(stream).or_insert_with(|| (posting, 0, Vec::new()));
                hit.1 = hit.1.saturating_add(occurrences);
                hit.2.push(term);
            }
            let next = match found {
                None => hits
                    .into_iter()
                    .map(|(stream, (posting, occurrences, terms))| {
                        let candidate = Candidate {
                            room_id: room.clone(),
                            stream,
                            posting,
                            occurrences: vec![occurrences],
                            terms: terms.into_iter().collect(),
                            rank: 0.0,
                        };
                        (stream, candidate)
                    })
                    .collect(),
                Some(mut previous) => {
                    previous.retain(|stream, _| hits.contains_key(stream));
                    for (stream, candidate) in &mut previous {
                        if let Some((_, occurrences, terms)) = hits.remove(stream) {
                            candidate.occurrences.push(occurrences);
                            candidate.terms.extend(terms);
                        }
                    }
                    previous
                }
            };
            let done = next.is_empty();
            found = Some(next);
            if done {
                break;
            }
        }
        Ok(found
            .unwrap_or_default()
            .into_values()
            .map(|mut c| {
                c.rank = search::rank(&c.occurrences, c.posting.length);
                c
            })
            .collect())
    }

    /// The events around a result that the user may see, nearest first before it and in
    /// order after it, with stream tokens bounding them and, if asked, the senders' profiles
    /// as they were at the result.
    fn context(
        &self,
        viewer: Viewer<'_>,
        event: &StoredEvent,
        before_limit: usize,
        after_limit: usize,
        include_profile: bool,
    ) -> Result<EventContextResult> {
        let user_id = viewer.user_id;
        let room_id = &event.pdu.room_id;
        let mut context = EventContextResult::new();
        let mut senders: BTreeSet<OwnedUserId> = BTreeSet::from([event.pdu.sender.clone()]);
        let (mut first, mut last) = (event.stream, event.stream);
        for (direction, limit) in [(Direction::Reverse, before_limit), (Direction::Forward, after_limit)] {
            if limit == 0 {
                continue;
            }
            for around in self.events.room_events(room_id, Some(event.stream), direction, limit)? {
                if !self.visibility.may_see_event(user_id, &around)? {
                    continue;
                }
                first = first.min(around.stream);
                last = last.max(around.stream);
                senders.insert(around.pdu.sender.clone());
                let raw = Raw::from_json(self.renderer.raw(viewer, &around, Rendering::CLIENT)?);
                match direction {
                    Direction::Reverse => context.events_before.push(raw),
                    Direction::Forward => context.events_after.push(raw),
                }
            }
        }
        // Tokens lie between positions: backward paging from `start` begins before `first`.
        context.start = Some(format!("s{}", first.saturating_sub(1)));
        context.end = Some(format!("s{last}"));
        if include_profile {
            // The state at the result, which the user may see since they may see the result.
            let state = self.states.state_of_group(event.state_before)?;
            for sender in senders {
                let Some(id) = state.get(&(StateEventType::RoomMember, sender.to_string())) else { continue };
                let Some(member) = self.events.get(id)? else { continue };
                let content = member.pdu.content_value();
                let text = |key: &str| content.get(key).and_then(JsonValue::as_str).map(str::to_owned);
                let mut profile = UserProfile::new();
                profile.displayname = text("displayname");
                profile.avatar_url = text("avatar_url").map(OwnedMxcUri::from).filter(|url| url.is_valid());
                context.profile_info.insert(sender, profile);
            }
        }
        Ok(context)
    }
}

/// The groups of one grouping key over the page shown: each group's results in page order,
/// its `order` (1 for the group of the first result), and a `next_batch` scoped to the group
/// when it has more results after its last one on this page.
fn group_by<V: Ord + Clone>(
    order: Order,
    shown: &[(&Candidate, Arc<StoredEvent>)],
    remaining: &[&Candidate],
    value_of: impl Fn(&Candidate) -> V,
    scope_of: impl Fn(V) -> Scope,
) -> Result<BTreeMap<V, ResultGroup>> {
    let mut groups: BTreeMap<V, (ResultGroup, Position)> = BTreeMap::new();
    for &(candidate, ref event) in shown {
        let value = value_of(candidate);
        let next_order = UInt::new_saturating(groups.len() as u64 + 1);
        let (group, last) = groups.entry(value).or_insert_with(|| {
            let mut group = ResultGroup::new();
            group.order = Some(next_order);
            (group, candidate.position(order))
        });
        group.results.push(event.pdu.event_id.clone());
        *last = candidate.position(order);
    }
    let mut result = BTreeMap::new();
    for (value, (mut group, last)) in groups {
        let more =
            remaining.iter().any(|&c| value_of(c) == value && c.position(order).compare(&last).is_lt());
        if more {
            group.next_batch = Some(Cursor::new(order, last, Some(scope_of(value.clone()))).encode()?);
        }
        result.insert(value, group);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_exactly_and_refuses_garbage() {
        let position = Position { rank: 0.1 + 0.2, stream: 42 };
        let room: OwnedRoomId = "!r:example.org".try_into().unwrap();
        let token = Cursor::new(Order::Rank, position, Some(Scope::Room(room.clone()))).encode().unwrap();
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "URL-safe");
        let back = Cursor::decode(&token).unwrap();
        assert_eq!(back.position(), position);
        assert_eq!(back.o, Order::Rank);
        assert!(matches!(back.g, Some(Scope::Room(r)) if r == room));
        for bad in ["", "!!!", "e30", "bm90IGpzb24"] {
            assert!(Cursor::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn positions_order_by_rank_then_stream() {
        let p = |rank, stream| Position { rank, stream };
        assert!(p(1.0, 1).compare(&p(0.5, 9)).is_gt());
        assert!(p(0.5, 2).compare(&p(0.5, 1)).is_gt());
        assert!(p(0.5, 1).compare(&p(0.5, 1)).is_eq());
    }
}
