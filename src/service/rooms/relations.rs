//! Relations between events (`m.relates_to`: edits, threads, references, annotations):
//! the index written with each event, the `/relations` and `/threads` reads, and the
//! bundled aggregations served in `unsigned.m.relations`. Owns the `relations`,
//! `thread_activity` and `thread_latest` tables.

use std::sync::Arc;

use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId, UserId};
use serde_json::{Map, Value as JsonValue, json};

use super::{
    events::{Events, StoredEvent},
    visibility::Visibility,
};
use crate::{
    Error, Result,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        codec::KeyCodec,
        kv::KeyRange,
        tables::{RELATION_PARENTS, RELATIONS, RelationRecord, THREAD_ACTIVITY, THREAD_LATEST},
    },
};

pub const THREAD: &str = "m.thread";
pub const REPLACE: &str = "m.replace";
pub const REFERENCE: &str = "m.reference";
/// Most references listed in a bundle.
const MAX_BUNDLED_REFERENCES: usize = 50;

/// What an event's `m.relates_to` says, if it relates to another event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelatesTo {
    pub rel_type: String,
    pub parent: OwnedEventId,
}

/// Read `content.m.relates_to` (a relation with `rel_type`; a bare `m.in_reply_to` is a
/// reply, not a relation, and is not indexed).
pub fn relates_to(content: &JsonValue) -> Option<RelatesTo> {
    let relates = content.get("m.relates_to")?;
    let rel_type = relates.get("rel_type")?.as_str()?;
    let parent = EventId::parse(relates.get("event_id")?.as_str()?).ok()?;
    Some(RelatesTo { rel_type: rel_type.to_owned(), parent })
}

/// A child event found by a relations read, with where it sits.
pub struct Related {
    pub event_id: OwnedEventId,
    pub stream: u64,
}

pub struct Relations {
    relations: Table<(OwnedEventId, String, u64), RelationRecord>,
    /// Parents with relation rows, for a point read before the scans.
    parents: Table<OwnedEventId, ()>,
    /// Threads of a room by latest activity: (room, position of the latest reply) → root.
    thread_activity: Table<(OwnedRoomId, u64), OwnedEventId>,
    /// Each thread root's latest activity position, to move its activity row.
    thread_latest: Table<OwnedEventId, u64>,
    events: Arc<Events>,
    visibility: Arc<Visibility>,
}

impl Relations {
    pub fn new(store: &Arc<dyn KvStore>, events: Arc<Events>, visibility: Arc<Visibility>) -> Self {
        Self {
            relations: RELATIONS.open(store),
            parents: RELATION_PARENTS.open(store),
            thread_activity: THREAD_ACTIVITY.open(store),
            thread_latest: THREAD_LATEST.open(store),
            events,
            visibility,
        }
    }

    /// Queue the index rows of a new event (called by the append path, in its batch).
    pub fn index_in(&self, batch: &mut WriteBatch, event: &StoredEvent) -> Result<()> {
        let Some(relation) = relates_to(&event.pdu.content_value()) else { return Ok(()) };
        // A relation to an event of another room (or none) would let one room's members
        // attach replies and edits to another room's events.
        if self.events.get(&relation.parent)?.is_none_or(|parent| parent.pdu.room_id != event.pdu.room_id) {
            return Ok(());
        }
        let record = RelationRecord {
            event_id: event.pdu.event_id.clone(),
            kind: event.pdu.kind.to_string(),
            sender: event.pdu.sender.clone(),
        };
        self.relations.put(
            batch,
            &(relation.parent.clone(), relation.rel_type.clone(), event.stream),
            &record,
        )?;
        self.parents.put(batch, &relation.parent, &())?;
        if relation.rel_type == THREAD {
            let room = event.pdu.room_id.clone();
            if let Some(previous) = self.thread_latest.get(&relation.parent)? {
                self.thread_activity.delete(batch, &(room.clone(), previous));
            }
            self.thread_latest.put(batch, &relation.parent, &event.stream)?;
            self.thread_activity.put(batch, &(room, event.stream), &relation.parent)?;
        }
        Ok(())
    }

    /// Queue the removal of a purged room's relation rows: those under each of its events
    /// (as parent or thread root), and its thread list.
    pub fn purge_room_in<'a>(
        &self,
        batch: &mut WriteBatch,
        room_id: &RoomId,
        event_ids: impl IntoIterator<Item = &'a OwnedEventId>,
    ) -> Result<()> {
        for event_id in event_ids {
            self.relations.delete_prefix(batch, event_id)?;
            self.parents.delete(batch, event_id);
            self.thread_latest.delete(batch, event_id);
        }
        self.thread_activity.delete_prefix(batch, &room_id.to_owned())?;
        Ok(())
    }

    /// Children of `parent` (optionally of one relation type), paged by stream token (a
    /// token lies after its position): forward, those after `from` up to `to`; backward,
    /// those at or before `from` and after `to`; at most `limit`.
    pub fn children(
        &self,
        parent: &EventId,
        rel_type: Option<&str>,
        from: Option<u64>,
        to: Option<u64>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Related>> {
        let mut found = Vec::new();
        match rel_type {
            Some(rel_type) => {
                let prefix = (parent.to_owned(), rel_type.to_owned());
                let mut range = KeyRange::prefix(prefix.to_key_bytes());
                let bound = |p: u64| (parent.to_owned(), rel_type.to_owned(), p).to_key_bytes();
                match direction {
                    Direction::Forward => {
                        if let Some(from) = from {
                            range = range.after(bound(from));
                        }
                        if let Some(to) = to {
                            range = range.up_to(bound(to));
                        }
                    }
                    Direction::Reverse => {
                        if let Some(from) = from {
                            range = range.before(bound(from.saturating_add(1)));
                        }
                        if let Some(to) = to {
                            range = range.after(bound(to));
                        }
                    }
                }
                for row in self.relations.scan(range, direction)?.take(limit) {
                    let ((_, _, stream), record) = row?;
                    found.push(Related { event_id: record.event_id, stream });
                }
            }
            None => {
                // Across relation types the rows are grouped by type: merge them by position.
                let mut all: Vec<Related> = self
                    .relations
                    .scan_prefix(&parent.to_owned(), Direction::Forward)?
                    .map(|row| {
                        row.map(|((_, _, stream), record)| Related { event_id: record.event_id, stream })
                    })
                    .collect::<Result<_, _>>()?;
                all.sort_by_key(|r| r.stream);
                if direction == Direction::Reverse {
                    all.reverse();
                }
                found = all
                    .into_iter()
                    .filter(|r| match direction {
                        Direction::Forward => {
                            from.is_none_or(|f| r.stream > f) && to.is_none_or(|t| r.stream <= t)
                        }
                        Direction::Reverse => {
                            from.is_none_or(|f| r.stream <= f) && to.is_none_or(|t| r.stream > t)
                        }
                    })
                    .take(limit)
                    .collect();
            }
        }
        Ok(found)
    }

    /// Thread roots of a room by latest activity, newest first, before position `from`.
    pub fn threads(
        &self,
        room_id: &RoomId,
        from: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(OwnedEventId, u64)>> {
        let room = room_id.to_owned();
        let mut range = KeyRange::prefix(room.to_key_bytes());
        if let Some(from) = from {
            range = range.before((room.clone(), from).to_key_bytes());
        }
        self.thread_activity
            .scan(range, Direction::Reverse)?
            .take(limit)
            .map(|row| row.map(|((_, stream), root)| (root, stream)).map_err(Into::into))
            .collect()
    }

    /// Whether `user_id` wrote the thread's root or any reply in it.
    pub fn participated(&self, user_id: &UserId, root: &StoredEvent) -> Result<bool> {
        if root.pdu.sender == user_id {
            return Ok(true);
        }
        for row in
            self.relations.scan_prefix(&(root.pdu.event_id.clone(), THREAD.to_owned()), Direction::Forward)?
        {
            if row?.1.sender == user_id {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The bundled aggregations of an event (`unsigned.m.relations`), if it has any, as
    /// `viewer` may see them: the latest edit and the latest thread reply are ones they may
    /// see. Bounded work: relation rows carry sender and type, so only the events shown are
    /// loaded.
    pub fn bundle(&self, viewer: &UserId, event: &StoredEvent) -> Result<Option<JsonValue>> {
        // Most events have no relations: one point read says so before the scans below.
        if event.pdu.is_redacted() || self.parents.get(&event.pdu.event_id)?.is_none() {
            return Ok(None);
        }
        self.bundle_of_parent(viewer, event)
    }

    /// Which of `events` have relations to bundle (the rest have none), in one read.
    pub fn have_relations(&self, events: &[&StoredEvent]) -> Result<Vec<bool>> {
        let ids: Vec<&OwnedEventId> =
            events.iter().filter(|e| !e.pdu.is_redacted()).map(|e| &e.pdu.event_id).collect();
        if ids.is_empty() {
            return Ok(vec![false; events.len()]);
        }
        let mut found = self.parents.get_many(ids)?.into_iter();
        Ok(events.iter().map(|e| !e.pdu.is_redacted() && found.next().flatten().is_some()).collect())
    }

    /// [`Self::bundle`] for an event known to have relations ([`Self::have_relations`]).
    pub fn bundle_of_parent(&self, viewer: &UserId, event: &StoredEvent) -> Result<Option<JsonValue>> {
        let mut bundle = Map::new();
        if let Some(edit) = self.latest_edit(viewer, event)? {
            bundle.insert(REPLACE.to_owned(), edit.pdu.to_client_event(None).map_err(Error::internal)?);
        }
        let parent = event.pdu.event_id.clone();
        let mut count = 0u64;
        let mut participated = event.pdu.sender == viewer;
        for row in self.relations.scan_prefix(&(parent.clone(), THREAD.to_owned()), Direction::Forward)? {
            let (_, record) = row?;
            count += 1;
            participated |= record.sender == viewer;
        }
        if count > 0 {
            let mut latest_json = None;
            for row in self.relations.scan_prefix(&(parent.clone(), THREAD.to_owned()), Direction::Reverse)? {
                let (_, record) = row?;
                let Some(reply) = self.events.get(&record.event_id)? else { continue };
                if reply.pdu.is_redacted() || !self.visibility.may_see_event(viewer, &reply)? {
                    continue;
                }
                let mut json = reply.pdu.to_client_event(None).map_err(Error::internal)?;
                // The reply shows with its own latest edit; one level, never further.
                if let Some(edit) = self.latest_edit(viewer, &reply)? {
                    let edit = edit.pdu.to_client_event(None).map_err(Error::internal)?;
                    json["unsigned"]["m.relations"] = json!({ REPLACE: edit });
                }
                latest_json = Some(json);
                break;
            }
            if let Some(latest) = latest_json {
                bundle.insert(
                    THREAD.to_owned(),
                    json!({ "latest_event": latest, "count": count, "current_user_participated": participated }),
                );
            }
        }
        let mut references = Vec::new();
        for row in self.relations.scan_prefix(&(parent, REFERENCE.to_owned()), Direction::Forward)? {
            if references.len() >= MAX_BUNDLED_REFERENCES {
                break;
            }
            references.push(json!({ "event_id": row?.1.event_id }));
        }
        if !references.is_empty() {
            bundle.insert(REFERENCE.to_owned(), json!({ "chunk": references }));
        }
        Ok((!bundle.is_empty()).then_some(JsonValue::Object(bundle)))
    }

    /// The newest edit of `event` by its own sender, of its own type, that the viewer may see.
    fn latest_edit(&self, viewer: &UserId, event: &StoredEvent) -> Result<Option<Arc<StoredEvent>>> {
        let kind = event.pdu.kind.to_string();
        for row in self
            .relations
            .scan_prefix(&(event.pdu.event_id.clone(), REPLACE.to_owned()), Direction::Reverse)?
        {
            let (_, record) = row?;
            if record.sender != event.pdu.sender || record.kind != kind {
                continue;
            }
            let Some(edit) = self.events.get(&record.event_id)? else { continue };
            if !edit.pdu.is_redacted() && self.visibility.may_see_event(viewer, &edit)? {
                return Ok(Some(edit));
            }
        }
        Ok(None)
    }
}
