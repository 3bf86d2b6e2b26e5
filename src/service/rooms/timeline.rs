//! The append path: how an event joins a room. Under the room's lock it checks a redaction
//! against its target (`matrix::redaction`: every client path that sends one comes here),
//! picks the graph position and auth events from the current state, builds and signs the
//! event, checks it against the room version's authorization rules, evaluates push rules
//! for the members,
//! and commits the event, its stream position, the new state group, current state,
//! membership indexes, relation and search index rows, notification rows and any redaction
//! in one atomic batch (with, for an event sent from a delayed event, that delayed event's
//! removal). A rejected event is never written. Owns the `txn_ids` table. A state event
//! also cancels other users' delayed events for its state (`DelayedEvents`).
//!
//! The batch is written buffered under the lock, so the next event of the room can be built
//! on it at once; it becomes durable in a group sync shared with other writers, after the
//! lock is released and before the event is announced or acknowledged (`PendingEvent`).
//! On a store that prefers synced writes (PostgreSQL, where a synchronous commit costs no
//! more round trips than a buffered one and the server shares WAL flushes itself) the batch
//! is written synced instead, and there is nothing left to wait for.

mod engine;

pub use engine::Outcome;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use ruma::{
    DeviceId, EventId, MilliSecondsSinceUnixEpoch, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId,
    RoomId, RoomVersionId, UInt, UserId,
    api::error::ErrorKind,
    events::{
        StateEventType, TimelineEventType,
        room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource},
    },
    room_version_rules::RoomVersionRules,
};
use serde_json::Value as JsonValue;
use tokio::sync::OwnedMutexGuard;

use super::{
    auth_chains::AuthChains,
    events::{Events, StoredEvent},
    members::Memberships,
    relations::Relations,
    search::Search,
    state::{EMPTY_GROUP, RoomStates, StateKey, StateMap},
};
use crate::{
    Error, Result,
    matrix::{
        auth, limits, moderation,
        pdu::{self, BuildError, EventTemplate, GraphPosition, MAX_PREV_EVENTS, Pdu},
        power_levels,
        redaction::{self, LocalRefusal},
        room_version,
    },
    service::{
        audit::{self, Audit},
        clock::Clock,
        context::{Actor, RequestContext},
        delayed_events::DelayedEvents,
        push::{Evaluation, Notifications},
        server_keys::ServerKeys,
        stream::{Change, OwnedReservation, Stale, Stream},
    },
    storage::{
        GroupSync, KvStore, Table, WriteBatch,
        tables::{EventStatus, MembershipRecord, RoomRecord, TXN_IDS, TxnOrigin},
    },
};

/// Proof that the caller holds a room's append lock. Events of one room are appended one at
/// a time, so their stream order, depth and `prev_events` agree.
pub struct RoomLock {
    room_id: OwnedRoomId,
    _guard: OwnedMutexGuard<()>,
}

impl RoomLock {
    pub fn room_id(&self) -> &RoomId {
        &self.room_id
    }
}

/// An event written and visible in this process, not yet announced and, unless written
/// synced, not yet durable. Its stream position stays in flight, so no sync hands it out,
/// until `Timeline::finish` has made it durable and announced it.
#[must_use = "an appended event is announced only once it is made durable"]
pub struct PendingEvent {
    event: Arc<StoredEvent>,
    reservation: OwnedReservation,
    changes: Vec<Change>,
    /// The batch was written synced: durable already, no sync to wait for.
    durable: bool,
}

/// A client transaction: the device that sent it and its ID.
#[derive(Clone, Copy)]
pub struct Txn<'a> {
    pub device_id: &'a DeviceId,
    pub txn_id: &'a str,
    /// The request's path, which names the endpoint and the transaction: the spec scopes a
    /// transaction ID to one device and one endpoint (the same ID in another room, or for a
    /// redaction, is another request), and Synapse tells a retransmission by its path.
    pub path: &'a str,
}

/// How long a request waits for a room being seated by a join (`Timeline::settled_for`).
const SEATING_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Timeline {
    keys: Arc<ServerKeys>,
    stream: Arc<Stream>,
    events: Arc<Events>,
    auth_chains: Arc<AuthChains>,
    states: Arc<RoomStates>,
    members: Arc<Memberships>,
    relations: Arc<Relations>,
    notifications: Arc<Notifications>,
    search: Arc<Search>,
    delayed: Arc<DelayedEvents>,
    clock: Arc<dyn Clock>,
    store: Arc<dyn KvStore>,
    group_sync: Arc<GroupSync>,
    audit: Arc<Audit>,
    txn_ids: Table<(OwnedUserId, OwnedDeviceId, String), OwnedEventId>,
    room_locks: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>,
    /// Rooms a join through another server is seating (under the room's lock), with the
    /// joining user: the user's requests wait for it (`settled_for`).
    seating: Mutex<HashMap<OwnedRoomId, OwnedUserId>>,
}

impl Timeline {
    // Every service the append path writes through, passed in as the house style asks.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &Arc<dyn KvStore>,
        keys: Arc<ServerKeys>,
        stream: Arc<Stream>,
        events: Arc<Events>,
        auth_chains: Arc<AuthChains>,
        states: Arc<RoomStates>,
        members: Arc<Memberships>,
        relations: Arc<Relations>,
        notifications: Arc<Notifications>,
        search: Arc<Search>,
        delayed: Arc<DelayedEvents>,
        clock: Arc<dyn Clock>,
        group_sync: Arc<GroupSync>,
        audit: Arc<Audit>,
    ) -> Self {
        Self {
            keys,
            stream,
            events,
            auth_chains,
            states,
            members,
            relations,
            notifications,
            search,
            delayed,
            clock,
            store: Arc::clone(store),
            group_sync,
            audit,
            txn_ids: TXN_IDS.open(store),
            room_locks: Mutex::new(HashMap::new()),
            seating: Mutex::new(HashMap::new()),
        }
    }

    /// Wait for the room's append lock.
    pub async fn lock_room(&self, room_id: &RoomId) -> RoomLock {
        let mutex = {
            let mut locks = self.room_locks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            Arc::clone(locks.entry(room_id.to_owned()).or_default())
        };
        RoomLock { room_id: room_id.to_owned(), _guard: mutex.lock_owned().await }
    }

    /// Mark the room as being seated for `user` (`None`: no longer) by whoever holds `lock`.
    pub fn set_seating(&self, lock: &RoomLock, user: Option<&UserId>) {
        let mut rooms = self.seating.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match user {
            Some(user) => rooms.insert(lock.room_id.clone(), user.to_owned()),
            None => rooms.remove(&lock.room_id),
        };
    }

    /// Wait while any room is being seated (at most `SEATING_WAIT`): what other servers say
    /// of their users (presence, device lists, typing) is kept for users sharing a room with
    /// this server, so it waits for the rooms being joined.
    pub async fn settled_all(&self) {
        let rooms: Vec<OwnedRoomId> =
            self.seating.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).keys().cloned().collect();
        self.wait_for_seating(rooms).await;
    }

    /// Wait while rooms `user` joined through another server are being seated (at most
    /// `SEATING_WAIT`: a seating that takes longer, a slow resident, is not waited for, and
    /// the room shows once it is seated). Every request of the user waits here, so its
    /// syncs, reads and writes after the join's answer find the room.
    pub async fn settled_for(&self, user: &UserId) {
        let rooms: Vec<OwnedRoomId> = {
            let seating = self.seating.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            seating.iter().filter(|(_, joiner)| *joiner == user).map(|(room, _)| room.clone()).collect()
        };
        self.wait_for_seating(rooms).await;
    }

    async fn wait_for_seating(&self, rooms: Vec<OwnedRoomId>) {
        if rooms.is_empty() {
            return;
        }
        let wait = async {
            for room_id in rooms {
                drop(self.lock_room(&room_id).await);
            }
        };
        if tokio::time::timeout(SEATING_WAIT, wait).await.is_err() {
            tracing::info!("a room being joined takes long to seat; not waited for");
        }
    }

    /// The event a transaction already produced, if it was sent before.
    pub fn txn_event(&self, sender: &UserId, txn: Txn<'_>) -> Result<Option<OwnedEventId>> {
        Ok(self.txn_ids.get(&(sender.to_owned(), txn.device_id.to_owned(), txn.path.to_owned()))?)
    }

    /// Send an event: lock the room, answer a repeated transaction with its first event,
    /// otherwise append.
    pub async fn send(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        template: EventTemplate,
        txn: Option<Txn<'_>>,
    ) -> Result<OwnedEventId> {
        let lock = self.lock_room(room_id).await;
        if let Some(txn) = txn
            && let Some(event_id) = self.txn_event(sender, txn)?
        {
            return Ok(event_id);
        }
        let pending = self.append_pending(&lock, sender, template, txn, None)?;
        // The next event of the room is built while this one waits for its sync.
        drop(lock);
        Ok(self.finish(pending).await?.pdu.event_id.clone())
    }

    /// Send an event from the delayed event `delay_id`, which is removed in the event's
    /// batch; the event carries the delay ID for its sender to see.
    pub async fn send_from_delay(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        template: EventTemplate,
        delay_id: &str,
    ) -> Result<OwnedEventId> {
        let lock = self.lock_room(room_id).await;
        let pending = self.append_pending(&lock, sender, template, None, Some(delay_id))?;
        drop(lock);
        Ok(self.finish(pending).await?.pdu.event_id.clone())
    }

    /// Build, authorize and commit one event in a room whose lock the caller holds; durable
    /// and announced when this returns.
    pub fn append(
        &self,
        lock: &RoomLock,
        sender: &UserId,
        template: EventTemplate,
        txn: Option<Txn<'_>>,
    ) -> Result<Arc<StoredEvent>> {
        let pending = self.append_pending(lock, sender, template, txn, None)?;
        self.make_durable(&pending)?;
        Ok(self.announce(pending))
    }

    /// As `append`, for an event sent from the delayed event `delay_id` (see
    /// `send_from_delay`).
    pub fn append_from_delay(
        &self,
        lock: &RoomLock,
        sender: &UserId,
        template: EventTemplate,
        delay_id: &str,
    ) -> Result<Arc<StoredEvent>> {
        let pending = self.append_pending(lock, sender, template, None, Some(delay_id))?;
        self.make_durable(&pending)?;
        Ok(self.announce(pending))
    }

    /// Check an event a client wants sent later as far as it can be before it is sent: the
    /// room exists, and the type, state key and content pass the checks the append path
    /// makes before the auth rules (sizes, canonical JSON, integer power levels, content the
    /// auth rules read). Whether the sender may send it is decided when it is sent, against
    /// the state then (MSC4140). The size is checked without the event's references, which
    /// add a few hundred bytes when it is sent.
    pub fn check_template(&self, room_id: &RoomId, sender: &UserId, template: &EventTemplate) -> Result<()> {
        let room = self.states.room(room_id)?.ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = rules_of(&room.version)?;
        checked_content(&rules, sender, template)?;
        pdu::build_pdu(
            &rules,
            self.keys.server_name(),
            self.keys.key_pair(),
            sender,
            self.now(),
            template,
            GraphPosition {
                room_id: Some(room_id),
                event_id: self.new_event_id(&rules),
                prev_events: Vec::new(),
                auth_events: Vec::new(),
                reference_hashes: BTreeMap::new(),
                depth: uint(room.depth.saturating_add(1)),
            },
        )
        .map_err(build_error)?;
        Ok(())
    }

    /// Make an appended event durable in a group sync, then announce it.
    pub async fn finish(&self, pending: PendingEvent) -> Result<Arc<StoredEvent>> {
        if !pending.durable {
            self.group_sync.synced().await?;
        }
        Ok(self.announce(pending))
    }

    /// Make a pending event durable at once (for a caller that holds the room's lock).
    fn make_durable(&self, pending: &PendingEvent) -> Result<()> {
        if !pending.durable {
            self.store.sync()?;
        }
        Ok(())
    }

    /// Write an event's batch: buffered, to be synced after the room's lock is released,
    /// or synced at once where the store prefers that (see the module docs). Answers
    /// whether the batch is durable already.
    fn write_event_batch(&self, batch: WriteBatch) -> Result<bool> {
        if self.store.prefers_synced_writes() {
            self.store.write(batch)?;
            Ok(true)
        } else {
            self.store.write_buffered(batch)?;
            Ok(false)
        }
    }

    fn announce(&self, pending: PendingEvent) -> Arc<StoredEvent> {
        let PendingEvent { event, reservation, changes, durable: _ } = pending;
        reservation.announce(changes);
        event
    }

    /// Build, authorize and write one event in a room whose lock the caller holds.
    fn append_pending(
        &self,
        lock: &RoomLock,
        sender: &UserId,
        template: EventTemplate,
        txn: Option<Txn<'_>>,
        delay_id: Option<&str>,
    ) -> Result<PendingEvent> {
        if let Some(txn) = &txn {
            // Every transaction ID is stored; the spec sets no limit, clients use short ones.
            limits::check_len(txn.txn_id, limits::MAX_TXN_ID_BYTES, "The transaction ID")
                .map_err(Error::invalid_param)?;
        }
        let room_id = lock.room_id();
        let room = self.states.room(room_id)?.ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = rules_of(&room.version)?;
        let state = self.states.state_of_group(room.state_group)?;
        // A redaction is checked against its target before it is built, whichever endpoint
        // asked for it (`/redact`, or `/send` and `/state` with the redaction type).
        let redaction = match template.kind {
            TimelineEventType::RoomRedaction => {
                Some(self.check_local_redaction(&rules, lock, sender, &template, &state)?)
            }
            _ => None,
        };

        let auth_keys = checked_content(&rules, sender, &template)?;
        let auth_events =
            auth::select_auth_events(&auth_keys, |kind, key| state.get(&(kind.clone(), key.to_owned())));
        let mut prev_events = room.forward_extremities.clone();
        prev_events.truncate(MAX_PREV_EVENTS);
        // The checks read the auth events and the create event (not an auth event in v12);
        // v1–v2 events also sign the reference hashes of their prev events.
        let create_id = state.get(&(StateEventType::RoomCreate, String::new()));
        let picks_id = pdu::origin_picks_event_id(&rules);
        let prev_to_hash = prev_events.iter().filter(|_| picks_id);
        let loaded: HashMap<OwnedEventId, Arc<StoredEvent>> = self
            .events
            .get_many(auth_events.iter().chain(create_id).chain(prev_to_hash))?
            .into_iter()
            .map(|e| (e.pdu.event_id.clone(), e))
            .collect();
        let reference_hashes = if picks_id {
            self.reference_hashes(&rules, prev_events.iter().chain(&auth_events), &loaded)?
        } else {
            BTreeMap::new()
        };

        let depth = room.depth.saturating_add(1);
        let ts =
            template.origin_server_ts.map_or_else(|| self.now(), |ts| MilliSecondsSinceUnixEpoch(uint(ts)));
        let mut pdu = pdu::build_pdu(
            &rules,
            self.keys.server_name(),
            self.keys.key_pair(),
            sender,
            ts,
            &template,
            GraphPosition {
                room_id: Some(room_id),
                event_id: self.new_event_id(&rules),
                prev_events,
                auth_events,
                reference_hashes,
                depth: uint(depth),
            },
        )
        .map_err(build_error)?;

        auth::check_event(
            &rules.authorization,
            &pdu,
            |id| loaded.get(id).map(|e| &e.pdu),
            |kind, key| {
                state.get(&(kind.clone(), key.to_owned())).and_then(|id| loaded.get(id)).map(|e| &e.pdu)
            },
        )
        .map_err(|reason| Error::forbidden(format!("Event is not authorized: {reason}")))?;

        let replaced = match &pdu.state_key {
            Some(key) => state.get(&(pdu.kind.to_string().into(), key.clone())).cloned(),
            None => None,
        };
        if let Some(replaced) = replaced {
            let previous = self.events.get(&replaced)?;
            let unsigned = pdu.unsigned.get_or_insert_with(Default::default);
            unsigned.insert("replaces_state".to_owned(), replaced.as_str().into());
            if let Some(previous) = previous {
                // Content stored before the nesting limit may be too deep to carry two levels
                // further down: serde_json (here, in push rule evaluation, in clients) stops
                // reading at 128.
                if !limits::json_too_deep(previous.pdu.content.get().as_bytes(), limits::MAX_JSON_DEPTH) {
                    unsigned.insert("prev_content".to_owned(), previous.pdu.content_value());
                }
                unsigned.insert("prev_sender".to_owned(), previous.pdu.sender.as_str().into());
            }
        }

        let redacted = match redaction {
            Some(RedactionCheck { target: Some(target), power }) => {
                redacted_target(&rules, &target, &pdu, &power)?
            }
            _ => None,
        };

        let record = RoomRecord { forward_extremities: vec![pdu.event_id.clone()], depth, ..room };
        self.commit(room_id, record, pdu, txn, delay_id, redacted)
    }

    /// Create a room: build and commit its `m.room.create` event. Returns the room's lock
    /// (held, so the caller can append the initial events before anyone else) and the event.
    pub async fn create_room(
        &self,
        sender: &UserId,
        version: &RoomVersionId,
        content: JsonValue,
    ) -> Result<(RoomLock, Arc<StoredEvent>)> {
        let rules = room_version::rules(version).ok_or_else(|| {
            Error::new(ErrorKind::UnsupportedRoomVersion, "This server does not support that room version")
        })?;
        let template = EventTemplate::state(TimelineEventType::RoomCreate, "", content);
        let mut ts = self.now();
        loop {
            // Before v12 the room ID is random; from v12 it is the create event's hash, so a
            // clash means an identical create event in the same millisecond: move the clock on.
            let chosen_id = (!rules.authorization.room_create_event_id_as_room_id)
                .then(|| RoomId::new_v1(self.keys.server_name()));
            let pdu = pdu::build_pdu(
                &rules,
                self.keys.server_name(),
                self.keys.key_pair(),
                sender,
                ts,
                &template,
                GraphPosition {
                    room_id: chosen_id.as_deref(),
                    event_id: self.new_event_id(&rules),
                    prev_events: vec![],
                    auth_events: vec![],
                    reference_hashes: BTreeMap::new(),
                    depth: uint(1),
                },
            )
            .map_err(build_error)?;
            auth::check_event(&rules.authorization, &pdu, |_| None, |_, _| None).map_err(|reason| {
                Error::new(ErrorKind::InvalidParam, format!("Invalid creation content: {reason}"))
            })?;

            let lock = self.lock_room(&pdu.room_id).await;
            if self.states.room(&pdu.room_id)?.is_some() {
                ts = MilliSecondsSinceUnixEpoch(ts.0.saturating_add(UInt::from(1u32)));
                continue;
            }
            let record = RoomRecord {
                version: version.clone(),
                forward_extremities: vec![pdu.event_id.clone()],
                depth: 1,
                state_group: EMPTY_GROUP,
            };
            let room_id = pdu.room_id.clone();
            let pending = self.commit(&room_id, record, pdu, None, None, None)?;
            self.make_durable(&pending)?;
            return Ok((lock, self.announce(pending)));
        }
    }

    /// Write an authorized event and everything that follows from it in one batch.
    fn commit(
        &self,
        room_id: &RoomId,
        mut record: RoomRecord,
        pdu: Pdu,
        txn: Option<Txn<'_>>,
        delay_id: Option<&str>,
        redacted: Option<Arc<StoredEvent>>,
    ) -> Result<PendingEvent> {
        let is_create = pdu.kind == TimelineEventType::RoomCreate;
        // Push rule changes wait until the event has its position (see `evaluating`).
        let evaluating = self.notifications.evaluating();
        let notified = if is_create {
            Evaluation::default()
        } else {
            // The state before the event is cached; reading power levels from it saves the
            // current-state reads on every send.
            let state_before = self.states.state_of_group(record.state_group)?;
            let power_levels = self.power_levels_in(&rules_of(&record.version)?, &state_before)?;
            let roster = self.members.roster(room_id)?;
            self.notifications.evaluate(&pdu, &state_before, power_levels, &roster)?
        };
        let reservation = self.stream.reserve_owned()?;
        drop(evaluating);
        let state_before = if is_create { EMPTY_GROUP } else { record.state_group };
        let origin =
            txn.map(|t| TxnOrigin { device_id: t.device_id.to_owned(), txn_id: t.txn_id.to_owned() });
        let mut batch = WriteBatch::new();
        // A state event's group is the state after it, and (on this single line) the room's
        // new current state.
        let mut new_group: Option<(u64, Arc<StateMap>)> = None;
        if let Some(state_key) = &pdu.state_key {
            let change: [(StateKey, OwnedEventId); 1] =
                [((pdu.kind.to_string().into(), state_key.clone()), pdu.event_id.clone())];
            let parent = (!is_create).then_some(record.state_group);
            let (group, state) = self.states.new_group_in(&mut batch, parent, &change)?;
            self.states.set_current_in(&mut batch, room_id, &change)?;
            record.state_group = group;
            new_group = Some((group, state));
        }
        let event = Arc::new(StoredEvent {
            pdu,
            stream: reservation.position,
            state_before,
            txn: origin,
            delay_id: delay_id.map(str::to_owned),
            status: EventStatus::Accepted,
            state_after: new_group.as_ref().map(|(group, _)| *group),
            head_before: None,
            backfill: None,
        });
        let pdu = &event.pdu;
        self.events.put_in(&mut batch, &event)?;
        self.relations.index_in(&mut batch, &event)?;
        self.search.index_in(&mut batch, &event)?;

        let mut member_change: Option<(OwnedUserId, String)> = None;
        let mut changes = vec![Change::Room(room_id.to_owned())];
        if let Some(state_key) = &pdu.state_key
            && pdu.kind == TimelineEventType::RoomMember
        {
            let user_id = UserId::parse(state_key.as_str())
                .map_err(|_| Error::bad_json("The state key of a member event must be a user ID"))?;
            let membership = pdu
                .content_value()
                .get("membership")
                .and_then(JsonValue::as_str)
                .unwrap_or_default()
                .to_owned();
            let joined_at = if membership == "join" {
                match self.members.get(room_id, &user_id)? {
                    Some(previous) if previous.membership == "join" => Some(previous.joined_since()),
                    _ => Some(event.stream),
                }
            } else {
                None
            };
            let row = MembershipRecord {
                membership,
                event_id: pdu.event_id.clone(),
                stream: event.stream,
                forgotten: false,
                joined_at,
            };
            self.members.set_in(&mut batch, room_id, &user_id, &row)?;
            member_change = Some((user_id.clone(), row.membership.clone()));
            // The member's own syncs may not be watching this room yet (an invite, a
            // join from elsewhere).
            changes.push(Change::User(user_id));
        }
        if let Some(redacted) = &redacted {
            self.events.replace_in(&mut batch, redacted)?;
            self.search.remove_in(&mut batch, &redacted.pdu.event_id)?;
        }
        let left = member_change
            .as_ref()
            .filter(|(_, membership)| matches!(membership.as_str(), "leave" | "ban"))
            .map(|(user, _)| user.as_ref());
        let counted = self.notifications.put_in(&mut batch, &event, notified, left)?;
        if let Some(txn) = txn {
            let key = (pdu.sender.clone(), txn.device_id.to_owned(), txn.path.to_owned());
            self.txn_ids.put(&mut batch, &key, &pdu.event_id)?;
        }
        if let Some(delay_id) = delay_id {
            self.delayed.remove_in(&mut batch, delay_id)?;
        }
        self.states.put_room_in(&mut batch, room_id, &record)?;
        // Moderation is audited in the event's own batch.
        let audited = match moderation_entry(room_id, pdu, redacted.as_deref()) {
            Some(entry) => {
                let actor = Actor::User {
                    user_id: pdu.sender.clone(),
                    device_id: event.txn.as_ref().map(|t| t.device_id.clone()),
                };
                Some(self.audit.stage(&mut batch, &RequestContext::internal(actor, "room event"), entry)?)
            }
            None => None,
        };
        let mut durable = self.write_event_batch(batch)?;
        self.notifications.counted(counted);
        if let Some(audited) = audited {
            audited.committed();
        }
        if let Some(state_key) = &pdu.state_key
            && !is_create
        {
            // The cancellations are a buffered batch of their own, made durable by the
            // event's sync: the event waits for one even when its own batch was synced.
            durable = false;
            // The event is written; failing to cancel delayed events must not fail it.
            if let Err(e) =
                self.delayed.state_written(room_id, pdu.kind.to_string().as_str(), state_key, &pdu.sender)
            {
                tracing::warn!(room_id = %room_id, error = %e, "cancelling delayed events for overwritten state failed");
            }
        }

        if let Some((group, state)) = new_group {
            self.states.committed_group(group, state);
        }
        // Pushers learn of it from the push fan-out, which the commit rings.
        if let Some(redacted) = &redacted {
            // Other processes forget their copy before the position is released.
            self.stream.stale_elsewhere(Stale::Event(redacted.pdu.event_id.clone()));
        }
        self.events.committed([Some(Arc::clone(&event)), redacted].into_iter().flatten());
        if let Some((member, membership)) = &member_change {
            self.members.committed_member(room_id, member, membership);
        }
        tracing::debug!(room_id = %room_id, event_id = %event.pdu.event_id, stream = event.stream, "event appended");
        Ok(PendingEvent { event, reservation, changes, durable })
    }

    /// Refuse a local user's redaction that this server would not let them make (another
    /// user's event without the `redact` level, another room's event, an unknown event
    /// without that level, the create event or server ACL), as Synapse answers its users.
    /// Returns the target, if known, and the power levels in force, for applying it.
    fn check_local_redaction(
        &self,
        rules: &RoomVersionRules,
        lock: &RoomLock,
        sender: &UserId,
        template: &EventTemplate,
        state: &StateMap,
    ) -> Result<RedactionCheck> {
        let target_id =
            template.redacts.as_deref().ok_or_else(|| Error::missing_param("A redaction needs `redacts`"))?;
        let target = self.events.get(target_id)?;
        let power = self.power_levels_in(rules, state)?;
        redaction::check_local_redaction(sender, lock.room_id(), target.as_ref().map(|t| &t.pdu), &power)
            .map_err(|refusal| match refusal {
                LocalRefusal::UnknownTarget => Error::not_found(format!("Could not find event {target_id}")),
                LocalRefusal::OtherRoom => Error::unknown("Cannot redact event from a different room"),
                LocalRefusal::Forbidden(reason) => Error::forbidden(reason),
            })?;
        Ok(RedactionCheck { target, power })
    }

    /// The event holding `(kind, state_key)` in the room's current state.
    pub fn state_event(
        &self,
        room_id: &RoomId,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<Arc<StoredEvent>>> {
        match self.states.current_state_event_id(room_id, kind, state_key)? {
            Some(id) => self.events.get(&id),
            None => Ok(None),
        }
    }

    /// The room's current power levels, with the version's creator rules applied.
    pub fn power_levels(&self, room_id: &RoomId) -> Result<RoomPowerLevels> {
        let room = self.states.room(room_id)?.ok_or_else(|| Error::not_found("Unknown room"))?;
        let state = self.states.state_of_group(room.state_group)?;
        self.power_levels_in(&rules_of(&room.version)?, &state)
    }

    /// The power levels a room state gives, with the version's creator rules applied.
    fn power_levels_in(&self, rules: &RoomVersionRules, state: &StateMap) -> Result<RoomPowerLevels> {
        let event_of = |kind: StateEventType| -> Result<Option<Arc<StoredEvent>>> {
            match state.get(&(kind, String::new())) {
                Some(id) => self.events.get(id),
                None => Ok(None),
            }
        };
        let create = event_of(StateEventType::RoomCreate)?
            .ok_or_else(|| Error::internal("room without create event"))?;
        let mut creators = vec![create.pdu.sender.clone()];
        if rules.authorization.additional_room_creators
            && let Ok(content) = create.pdu.content_as::<AdditionalCreators>()
        {
            creators.extend(content.additional_creators);
        }
        let source = match event_of(StateEventType::RoomPowerLevels)? {
            Some(event) => match event.pdu.content_as::<RoomPowerLevelsEventContent>() {
                Ok(content) => RoomPowerLevelsSource::Original(content),
                Err(_) => RoomPowerLevelsSource::None,
            },
            None => RoomPowerLevelsSource::None,
        };
        Ok(RoomPowerLevels::new(source, &rules.authorization, creators))
    }

    /// A fresh `$opaque:server` ID for versions whose origin picks event IDs (v1, v2).
    fn new_event_id(&self, rules: &RoomVersionRules) -> Option<OwnedEventId> {
        pdu::origin_picks_event_id(rules).then(|| EventId::new_v1(self.keys.server_name()))
    }

    /// The reference hashes of `ids`, which v1–v2 events sign next to the IDs they cite.
    fn reference_hashes<'a>(
        &self,
        rules: &RoomVersionRules,
        ids: impl Iterator<Item = &'a OwnedEventId>,
        loaded: &HashMap<OwnedEventId, Arc<StoredEvent>>,
    ) -> Result<BTreeMap<OwnedEventId, String>> {
        ids.map(|id| {
            let event = loaded.get(id).ok_or_else(|| Error::internal(format!("missing event {id}")))?;
            Ok((id.clone(), event.pdu.reference_hash(rules).map_err(Error::internal)?))
        })
        .collect()
    }

    fn now(&self) -> MilliSecondsSinceUnixEpoch {
        MilliSecondsSinceUnixEpoch(uint(self.clock.now_ms()))
    }
}

/// A redaction's target as it was before the redaction, and the power levels in force for it.
struct RedactionCheck {
    target: Option<Arc<StoredEvent>>,
    power: RoomPowerLevels,
}

/// The redaction target rewritten to its redacted form, if the room version's rule lets the
/// redaction take effect and the target is not redacted yet. A redaction that may not take
/// effect is stored all the same and changes nothing: the auth rules accepted it.
fn redacted_target(
    rules: &RoomVersionRules,
    original: &Arc<StoredEvent>,
    redaction: &Pdu,
    power: &RoomPowerLevels,
) -> Result<Option<Arc<StoredEvent>>> {
    if original.pdu.is_redacted()
        || !redaction::redaction_applies(&rules.authorization, redaction, &original.pdu, power)
    {
        return Ok(None);
    }
    let mut pdu = original.pdu.clone();
    pdu.redact(rules, redaction).map_err(Error::internal)?;
    Ok(Some(Arc::new(StoredEvent { pdu, ..StoredEvent::clone(original) })))
}

/// The checks on a template's content made before it is built: integer power levels and
/// content the auth rules read. Returns the auth events it needs.
fn checked_content(
    rules: &RoomVersionRules,
    sender: &UserId,
    template: &EventTemplate,
) -> Result<Vec<(StateEventType, String)>> {
    if template.kind == TimelineEventType::RoomPowerLevels {
        // The v1–v9 auth rules would take string levels; local users send integers.
        power_levels::check_integers(&template.content)
            .map_err(|reason| Error::bad_json(format!("Invalid power levels: {reason}")))?;
    }
    let content = serde_json::value::to_raw_value(&template.content)
        .map_err(|e| Error::bad_json(format!("content: {e}")))?;
    auth::auth_event_keys(
        &rules.authorization,
        &template.kind,
        sender,
        template.state_key.as_deref(),
        &content,
    )
    .map_err(|reason| Error::bad_json(format!("Invalid event content: {reason}")))
}

#[derive(serde::Deserialize)]
struct AdditionalCreators {
    #[serde(default)]
    additional_creators: Vec<OwnedUserId>,
}

/// The rules of a stored room's version; a stored room always has a supported one.
pub fn rules_of(version: &RoomVersionId) -> Result<RoomVersionRules> {
    room_version::rules(version)
        .ok_or_else(|| Error::internal(format!("room of unsupported version {version}")))
}

fn uint(n: u64) -> UInt {
    UInt::new_saturating(n)
}

fn build_error(error: BuildError) -> Error {
    match error {
        BuildError::TooLarge => Error::new(ErrorKind::TooLarge, "Event is too large"),
        // 413, as Synapse answers.
        BuildError::KeyTooLarge(key) => Error::new(ErrorKind::TooLarge, format!("'{key}' too large")),
        BuildError::Invalid(reason) => Error::bad_json(format!("Cannot build event: {reason}")),
    }
}

/// The audit record of an event that moderates the room (a kick, ban, unban, power change,
/// or redaction of someone else's event), if it is one.
fn moderation_entry(room_id: &RoomId, pdu: &Pdu, redacted: Option<&StoredEvent>) -> Option<audit::Entry> {
    let content = pdu.content_value();
    let unsigned = pdu.unsigned.as_ref();
    let previous_membership = unsigned
        .and_then(|u| u.get("prev_content"))
        .and_then(|c| c.get("membership"))
        .and_then(JsonValue::as_str);
    let kind = pdu.kind.to_string();
    let facts = moderation::EventFacts {
        kind: &kind,
        sender: pdu.sender.as_str(),
        state_key: pdu.state_key.as_deref(),
        membership: content.get("membership").and_then(JsonValue::as_str),
        previous_membership,
        redacted_sender: redacted.map(|r| r.pdu.sender.as_str()),
        first_of_its_kind: unsigned.is_none_or(|u| !u.contains_key("replaces_state")),
    };
    let action = moderation::classify(&facts)?;
    let mut params = serde_json::Map::new();
    params.insert("event_id".to_owned(), pdu.event_id.as_str().into());
    if let Some(key) = pdu.state_key.as_deref().filter(|k| !k.is_empty()) {
        params.insert("user_id".to_owned(), key.into());
    }
    if let Some(redacted) = redacted {
        params.insert("redacts".to_owned(), redacted.pdu.event_id.as_str().into());
        params.insert("redacted_sender".to_owned(), redacted.pdu.sender.as_str().into());
    }
    if let Some(reason) = content.get("reason").and_then(JsonValue::as_str) {
        params.insert("reason".to_owned(), reason.into());
    }
    if action == moderation::Moderation::PowerLevels {
        params.insert("users".to_owned(), content.get("users").cloned().unwrap_or_default());
    }
    Some(audit::Entry::success(action.action()).target(room_id).params(JsonValue::Object(params)))
}
