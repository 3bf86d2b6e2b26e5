//! The outbound half of room federation: one outbox queue per destination server, each
//! following the server's stream from its place and sending, in order, the PDUs of the rooms
//! that server has joined members in, as `PUT /_matrix/federation/v1/send/{txnId}`
//! transactions of at most 50 PDUs and 100 EDUs (the spec's limits): the typing
//! notifications and read receipts of this server's users in those rooms ride along.
//!
//! What a destination is sent: every event of this server's users in a room where the
//! destination has a joined member, and member events of other servers' users too (a join
//! or leave another server made through this one with `send_join`/`send_leave`, which the
//! rest of the room learns from the resident server, as Synapse sends it), and member events
//! whose target is one of the destination's users (a kick, a ban). Never an event back to the
//! server of its sender.
//!
//! A queue is opened when a room change is committed while the destination has a joined
//! member there, at the position just before that change (so a server that just joined gets
//! the events from its join on), and it keeps its place across restarts: a server that was
//! down gets everything it missed, in order, once it answers again (the outbox's retries,
//! backoff capped by `federation_max_backoff_secs`). Events are signed and hashed PDUs:
//! local events are built that way (`matrix::pdu::build_pdu`), others are sent as received.
//!
//! EDUs of no room that must not be lost (to-device messages, device-list and signing-key
//! updates, local users' presence: `queue_edu`) are durable: each is stored in `federation_edus` under its
//! destination and a sequence number, rides in the destination's next transactions (the
//! queue's retries and backoff, as for PDUs), and is deleted once a transaction carrying it
//! is acknowledged (or refused for good). A restart of either server loses none of them.
//! While they wait, a device-list or signing-key update replaces an earlier one about the
//! same device or user, so a destination that stays down holds one per device rather than
//! one per change (it fetches the whole list on seeing the gap).
//!
//! Typing and receipts are not durable: the rooms whose typing or receipts changed are
//! remembered in memory per destination until a transaction carrying them is acknowledged;
//! typing notifications are sent as they are when the transaction is made (a stop for a user
//! no longer typing), receipts as changed since the room was last sent. A restart forgets
//! what was not sent, as typing expires anyway and the next receipt carries the latest read
//! position.
//!
//! Owns the `federation_edus` table.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use ruma::{
    OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId, events::TimelineEventType,
};
use serde_json::{Value as JsonValue, json, value::RawValue as RawJsonValue};

use super::FederationClient;
use crate::{
    Error, Result,
    service::{
        clock::Clock,
        outbox::{Courier, Delivering, Delivery, Outbox, Parcels},
        presence::Presence,
        rooms::{
            events::{Events, StoredEvent},
            members::Memberships,
            receipts::Receipts,
            state::RoomStates,
            timeline::rules_of,
            typing::Typing,
        },
        stream::{Change, Heard, Stream},
    },
    storage::{Direction, KvStore, Table, WriteBatch, tables::FEDERATION_EDUS},
};

/// Stream positions read per look at the stream.
const SCAN: usize = 1000;
/// EDUs per transaction (the spec's limit).
const MAX_EDUS: usize = 100;
/// How long a typing notification sent to another server lasts there unless renewed.
const TYPING_TIMEOUT_MS: u64 = 30_000;

/// A room whose ephemeral data changed for a destination: from which position its
/// receipts are unsent, and the position of its latest change.
#[derive(Clone, Copy)]
struct Dirty {
    since: u64,
    latest: u64,
}

/// One stream position for a destination: a PDU to send, or only a place to move past.
pub enum FederationParcel {
    Pdu(Box<RawJsonValue>),
    /// The EDUs due up to this position, the rooms they cover, and the durable EDUs
    /// (`queue_edu`) among them by sequence number.
    Edus(Vec<JsonValue>, Vec<OwnedRoomId>, Vec<u64>),
    Skip,
}

pub struct FederationSender {
    server_name: OwnedServerName,
    client: Arc<FederationClient>,
    outbox: Arc<Outbox>,
    events: Arc<Events>,
    states: Arc<RoomStates>,
    members: Arc<Memberships>,
    stream: Arc<Stream>,
    clock: Arc<dyn Clock>,
    typing: Arc<Typing>,
    receipts: Arc<Receipts>,
    presence: Arc<Presence>,
    max_backoff_ms: u64,
    me: Mutex<Weak<Self>>,
    /// Per destination, the rooms whose typing or receipts changed since last sent.
    dirty: Mutex<HashMap<OwnedServerName, HashMap<OwnedRoomId, Dirty>>>,
    /// Per destination and room, the local users last said to be typing there.
    typing_sent: Mutex<HashMap<(OwnedServerName, OwnedRoomId), BTreeSet<OwnedUserId>>>,
    /// Durable EDUs waiting for their destination's acknowledgement, by destination and
    /// sequence number, as JSON.
    durable: Table<(String, u64), String>,
    store: Arc<dyn KvStore>,
    /// The next durable EDU's sequence number (past every stored one).
    next_durable: AtomicU64,
    /// Tells apart transactions of this process made at the same clock time; `nonce`, chosen
    /// at start, tells them apart from those of an earlier run.
    next_txn: AtomicU64,
    nonce: u64,
}

impl FederationSender {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &Arc<dyn KvStore>,
        server_name: OwnedServerName,
        client: Arc<FederationClient>,
        outbox: Arc<Outbox>,
        events: Arc<Events>,
        states: Arc<RoomStates>,
        members: Arc<Memberships>,
        stream: Arc<Stream>,
        clock: Arc<dyn Clock>,
        typing: Arc<Typing>,
        receipts: Arc<Receipts>,
        presence: Arc<Presence>,
        max_backoff_secs: u64,
    ) -> Result<Self> {
        let durable = FEDERATION_EDUS.open(store);
        let mut last = 0;
        for row in durable.scan(crate::storage::kv::KeyRange::all(), Direction::Forward)? {
            let ((_, number), _) = row?;
            last = last.max(number);
        }
        Ok(Self {
            server_name,
            client,
            outbox,
            events,
            states,
            members,
            stream,
            clock,
            typing,
            receipts,
            presence,
            max_backoff_ms: max_backoff_secs.saturating_mul(1000),
            me: Mutex::new(Weak::new()),
            dirty: Mutex::new(HashMap::new()),
            typing_sent: Mutex::new(HashMap::new()),
            durable,
            store: Arc::clone(store),
            next_durable: AtomicU64::new(last.saturating_add(1)),
            next_txn: AtomicU64::new(1),
            nonce: rand::random::<u32>().into(),
        })
    }

    /// Start sending (at server start, with federation on): every destination with a queue
    /// resumes from its place, and room changes open and ring the queues of the servers in
    /// the room.
    pub fn start(self: &Arc<Self>) -> Result<()> {
        if !self.client.enabled() {
            return Ok(());
        }
        *self.me.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(self);
        self.outbox.serve(self);
        self.listen();
        // A destination with durable EDUs waiting has a queue (opened when they were queued;
        // made sure of here).
        let mut waiting = BTreeSet::new();
        for row in self.durable.scan(crate::storage::kv::KeyRange::all(), Direction::Forward)? {
            let ((destination, _), _) = row?;
            waiting.insert(destination);
        }
        for destination in waiting {
            self.outbox.open(Self::KIND, &destination, self.stream.committed(), false)?;
        }
        for destination in self.outbox.destinations(Self::KIND)? {
            self.outbox.resume(self, &destination);
        }
        Ok(())
    }

    /// Whether this process delivers to other servers now (it leads, with several).
    pub fn is_leading(&self) -> bool {
        self.outbox.is_leading()
    }

    /// The other servers with a joined member in the room.
    pub fn servers_in_room(&self, room_id: &RoomId) -> Result<BTreeSet<OwnedServerName>> {
        Ok(self
            .members
            .members_with(room_id, &ruma::events::room::member::MembershipState::Join)?
            .iter()
            .map(|user| user.server_name().to_owned())
            .filter(|server| *server != self.server_name)
            .collect())
    }

    /// A change about local `user_id` at `position`: if it was their presence, an
    /// `m.presence` EDU to every server in a room with them. Queued durably, a later update
    /// about the user replacing a waiting one.
    fn presence_changed(&self, user_id: &UserId, position: u64) -> Result<()> {
        let Some(view) = self.presence.changed_at(user_id, position)? else { return Ok(()) };
        let mut servers = BTreeSet::new();
        for room_id in
            self.members.rooms_of_user(user_id, &ruma::events::room::member::MembershipState::Join)?
        {
            servers.extend(self.servers_in_room(&room_id)?);
        }
        if servers.is_empty() {
            return Ok(());
        }
        let mut update = view.event_content();
        update["user_id"] = user_id.as_str().into();
        let edu = json!({"edu_type": "m.presence", "content": {"push": [update]}});
        for server in servers {
            self.queue_edu(&server, edu.clone())?;
        }
        Ok(())
    }

    /// Open and ring the queues of the servers in a room whose change was committed at
    /// `position`.
    fn room_changed(self: &Arc<Self>, room_id: &RoomId, position: u64) -> Result<()> {
        for server in self.servers_in_room(room_id)? {
            {
                let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
                let entry = dirty
                    .entry(server.clone())
                    .or_default()
                    .entry(room_id.to_owned())
                    .or_insert(Dirty { since: position.saturating_sub(1), latest: position });
                entry.latest = entry.latest.max(position);
            }
            self.outbox.open(Self::KIND, server.as_str(), position.saturating_sub(1), false)?;
            self.outbox.run(self, server.as_str());
        }
        Ok(())
    }

    /// Queue an EDU of no room that must not be lost for `destination` and ring its queue
    /// (with federation on; otherwise nothing is sent). Stored until a transaction carrying
    /// it is acknowledged.
    pub fn queue_edu(&self, destination: &ServerName, edu: JsonValue) -> Result<()> {
        self.queue_edus(destination, std::slice::from_ref(&edu))
    }

    /// Queue several such EDUs for `destination`, in order, in one write.
    pub fn queue_edus(&self, destination: &ServerName, edus: &[JsonValue]) -> Result<()> {
        let Some(me) = self.me.lock().unwrap_or_else(|p| p.into_inner()).upgrade() else {
            return Ok(());
        };
        if edus.is_empty() || destination == self.server_name {
            return Ok(());
        }
        let mut batch = WriteBatch::new();
        // A device-list or signing-key update a later one replaces is dropped while it
        // waits, so a destination that stays down holds one per device, not one per change.
        let replaced: BTreeSet<SupersedeKey> = edus.iter().filter_map(supersede_key).collect();
        if !replaced.is_empty() {
            for row in self.durable.scan_prefix(&destination.to_string(), Direction::Forward)? {
                let (key, edu) = row?;
                let waiting = serde_json::from_str(&edu).ok();
                if waiting.as_ref().and_then(supersede_key).is_some_and(|k| replaced.contains(&k)) {
                    self.durable.delete(&mut batch, &key);
                }
            }
        }
        for edu in edus {
            let number = self.next_durable.fetch_add(1, Ordering::Relaxed);
            self.durable.put(&mut batch, &(destination.to_string(), number), &edu.to_string())?;
        }
        self.store.write(batch)?;
        self.outbox.open(Self::KIND, destination.as_str(), self.stream.committed(), false)?;
        self.outbox.run(&me, destination.as_str());
        Ok(())
    }

    /// Durable EDUs waiting for `destination`, oldest first, at most `limit`. One that does
    /// not read back as JSON (it always does) is skipped with its number, so it is deleted.
    fn durable_edus(&self, destination: &ServerName, limit: usize) -> Result<Vec<(u64, Option<JsonValue>)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for row in self.durable.scan_prefix(&destination.to_string(), Direction::Forward)? {
            let ((_, number), edu) = row?;
            out.push((number, serde_json::from_str(&edu).ok()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// How many durable EDUs wait for `destination`.
    pub fn durable_waiting(&self, destination: &ServerName) -> Result<usize> {
        Ok(self.durable.scan_prefix(&destination.to_string(), Direction::Forward)?.count())
    }

    /// Follow the stream's change feed: a room change rings (and if need be opens) the
    /// queues of the servers in the room once the change is committed, so the queue, which
    /// reads committed positions only, finds it. Every process's changes are heard; only
    /// the process that delivers (the leader, with several) acts on them.
    fn listen(self: &Arc<Self>) {
        let mut listener = self.stream.listen();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let heard = listener.next().await;
                match heard {
                    Heard::Change(announced) => match &announced.change {
                        Change::Room(room_id) => {
                            if !me.upgrade().is_some_and(|me| me.outbox.is_leading()) {
                                continue;
                            }
                            listener.committed_to(announced.position).await;
                            let Some(me) = me.upgrade() else { return };
                            if let Err(e) = me.room_changed(room_id, announced.position) {
                                tracing::warn!(%room_id, error = %e, "opening federation queues failed");
                            }
                        }
                        Change::RoomMates(user_id) => {
                            let Some(me) = me.upgrade() else { return };
                            if user_id.server_name() != me.server_name || !me.outbox.is_leading() {
                                continue;
                            }
                            listener.committed_to(announced.position).await;
                            if let Err(e) = me.presence_changed(user_id, announced.position) {
                                tracing::warn!(%user_id, error = %e, "queueing a presence update failed");
                            }
                        }
                        Change::User(_) => {}
                    },
                    Heard::Missed => {
                        let Some(me) = me.upgrade() else { return };
                        me.outbox.ring(Self::KIND, "");
                    }
                    Heard::Closed => return,
                }
            }
        });
    }

    /// Whether `destination` is sent `event`; `rooms` caches the servers of each room for
    /// one look at the stream.
    fn sends(
        &self,
        destination: &ServerName,
        event: &StoredEvent,
        rooms: &mut HashMap<OwnedRoomId, BTreeSet<OwnedServerName>>,
    ) -> Result<bool> {
        let pdu = &event.pdu;
        if pdu.sender.server_name() == destination {
            return Ok(false);
        }
        let is_member = pdu.kind == TimelineEventType::RoomMember;
        if pdu.sender.server_name() != self.server_name && !is_member {
            return Ok(false);
        }
        if is_member
            && let Some(target) = pdu.state_key.as_deref().and_then(|k| <&UserId>::try_from(k).ok())
            && target.server_name() == destination
        {
            return Ok(true);
        }
        let servers = match rooms.get(&pdu.room_id) {
            Some(servers) => servers,
            None => {
                let servers = self.servers_in_room(&pdu.room_id)?;
                rooms.entry(pdu.room_id.clone()).or_insert(servers)
            }
        };
        Ok(servers.contains(destination))
    }

    /// The typing and receipt EDUs of this server's users due to `destination` up to
    /// `upto`, and the rooms they cover.
    fn edus(
        &self,
        destination: &ServerName,
        upto: u64,
    ) -> Result<(Vec<JsonValue>, Vec<OwnedRoomId>, Vec<u64>)> {
        let rooms: Vec<(OwnedRoomId, Dirty)> = self
            .dirty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(destination)
            .map(|rooms| rooms.iter().map(|(room, dirty)| (room.clone(), *dirty)).collect())
            .unwrap_or_default();
        // Private receipts are nobody else's: a viewer of the destination sees none.
        let viewer = UserId::parse(format!("@_conduit_federation:{destination}"))
            .map_err(|e| Error::internal(format!("viewer of {destination}: {e}")))?;
        let mut edus = Vec::new();
        let mut covered = Vec::new();
        for (room_id, dirty) in rooms {
            if edus.len() >= MAX_EDUS {
                break;
            }
            let local = |user: &UserId| user.server_name() == self.server_name;
            let typing: BTreeSet<OwnedUserId> =
                self.typing.typing_users(&room_id).into_iter().filter(|u| local(u)).collect();
            let key = (destination.to_owned(), room_id.clone());
            let before = self
                .typing_sent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned()
                .unwrap_or_default();
            for user in typing.iter() {
                edus.push(json!({"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": user, "typing": true, "timeout": TYPING_TIMEOUT_MS}}));
            }
            for user in before.difference(&typing) {
                edus.push(json!({"edu_type": "m.typing", "content": {"room_id": room_id, "user_id": user, "typing": false}}));
            }
            self.typing_sent.lock().unwrap_or_else(|p| p.into_inner()).insert(key, typing);
            let mut read = serde_json::Map::new();
            for receipt in self.receipts.changed(&viewer, &room_id, Some(dirty.since), upto)? {
                if receipt.receipt_type != "m.read" || !local(&receipt.user_id) {
                    continue;
                }
                let mut data = json!({"ts": receipt.ts});
                if let Some(thread) = &receipt.thread_id {
                    data["thread_id"] = thread.as_str().into();
                }
                read.insert(
                    receipt.user_id.to_string(),
                    json!({"event_ids": [receipt.event_id], "data": data}),
                );
            }
            if !read.is_empty() {
                edus.push(json!({"edu_type": "m.receipt", "content": {room_id.as_str(): {"m.read": read}}}));
            }
            covered.push(room_id);
        }
        edus.truncate(MAX_EDUS);
        let mut numbers = Vec::new();
        for (number, edu) in self.durable_edus(destination, MAX_EDUS.saturating_sub(edus.len()))? {
            numbers.push(number);
            edus.extend(edu);
        }
        Ok((edus, covered, numbers))
    }

    /// A transaction carrying the EDUs of `rooms` up to `upto` was acknowledged: those
    /// rooms are clean unless they changed after it.
    fn edus_sent(&self, destination: &ServerName, rooms: &[OwnedRoomId], upto: u64, durable: &[u64]) {
        if !durable.is_empty() {
            let mut batch = WriteBatch::new();
            for number in durable {
                self.durable.delete(&mut batch, &(destination.to_string(), *number));
            }
            if let Err(e) = self.store.write(batch) {
                // They are sent again: at least once.
                tracing::warn!(%destination, error = %e, "forgetting delivered EDUs failed");
            }
        }
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        let Some(of_server) = dirty.get_mut(destination) else { return };
        for room in rooms {
            if let Some(entry) = of_server.get_mut(room) {
                if entry.latest <= upto {
                    of_server.remove(room);
                } else {
                    entry.since = upto;
                }
            }
        }
    }

    /// An event as it travels between servers.
    fn federation_json(&self, event: &StoredEvent) -> Result<Box<RawJsonValue>> {
        pdu_json(&self.states, event)
    }
}

/// A stored event as it travels between servers: the signed PDU of the room's version.
pub fn pdu_json(states: &RoomStates, event: &StoredEvent) -> Result<Box<RawJsonValue>> {
    let room = states
        .room(&event.pdu.room_id)?
        .ok_or_else(|| Error::internal(format!("no room record for {}", event.pdu.room_id)))?;
    let rules = rules_of(&room.version)?;
    let object = event.pdu.to_federation_object(&rules).map_err(Error::internal)?;
    serde_json::value::to_raw_value(&object).map_err(|e| Error::internal(e.to_string()))
}

impl Courier for FederationSender {
    type Parcel = FederationParcel;
    const KIND: &'static str = "federation";
    /// PDUs per transaction (the spec's limit).
    const BATCH: usize = 50;

    fn pending(
        &self,
        destination: &str,
        after: u64,
        limit: usize,
    ) -> Result<Option<Parcels<FederationParcel>>> {
        let Ok(server) = <&ServerName>::try_from(destination) else { return Ok(None) };
        let (scanned, mut upto) = self.events.committed_after(after, SCAN, self.stream.committed())?;
        let mut rooms = HashMap::new();
        let mut parcels = Vec::new();
        for event in &scanned {
            if self.sends(server, event, &mut rooms)? {
                parcels.push((event.stream, FederationParcel::Pdu(self.federation_json(event)?)));
                if parcels.len() >= limit {
                    upto = event.stream;
                    break;
                }
            }
        }
        let (edus, rooms, numbers) = self.edus(server, upto)?;
        if !rooms.is_empty() || !numbers.is_empty() {
            parcels.push((upto.max(after), FederationParcel::Edus(edus, rooms, numbers)));
        } else if upto > after && parcels.last().is_none_or(|(position, _)| *position < upto) {
            parcels.push((upto, FederationParcel::Skip));
        }
        Ok(Some(parcels))
    }

    fn deliver<'a>(&'a self, destination: &'a str, parcels: &'a [(u64, FederationParcel)]) -> Delivering<'a> {
        Box::pin(async move {
            let Ok(server) = <&ServerName>::try_from(destination) else {
                return Delivery::Gone("not a server name".to_owned());
            };
            let mut pdus: Vec<&RawJsonValue> = Vec::new();
            let mut edus: Vec<&JsonValue> = Vec::new();
            let mut rooms: Vec<OwnedRoomId> = Vec::new();
            let mut numbers: Vec<u64> = Vec::new();
            for (_, parcel) in parcels {
                match parcel {
                    FederationParcel::Pdu(pdu) => pdus.push(pdu),
                    FederationParcel::Edus(list, covered, queued) => {
                        edus.extend(list);
                        rooms.extend(covered.iter().cloned());
                        numbers.extend(queued);
                    }
                    FederationParcel::Skip => {}
                }
            }
            let (Some((first, _)), Some((last, _))) = (parcels.first(), parcels.last()) else {
                return Delivery::Done;
            };
            if pdus.is_empty() && edus.is_empty() {
                self.edus_sent(server, &rooms, *last, &numbers);
                return Delivery::Done;
            }
            let body = json!({
                "origin": self.server_name,
                "origin_server_ts": self.clock.now_ms(),
                "pdus": pdus,
                "edus": edus,
            });
            // The same positions make the same transaction, so a retry keeps its ID and the
            // receiver answers it once; EDUs sent again at the same positions get a new one.
            let path = if edus.is_empty() {
                format!("/_matrix/federation/v1/send/{first}.{last}")
            } else {
                // The clock alone may not move between two such transactions (a manual
                // clock): a number of this process's own tells them apart, and the run's
                // nonce those of a run before a restart (the receiver would take one with
                // an ID it has seen for a replay and drop its EDUs).
                let number = self.next_txn.fetch_add(1, Ordering::Relaxed);
                format!(
                    "/_matrix/federation/v1/send/{first}.{last}.{}.{}.{number}",
                    self.clock.now_ms(),
                    self.nonce
                )
            };
            match self.client.request(server, http::Method::PUT, &path, Some(&body), true).await {
                Ok(Ok(answer)) => {
                    if let Some(results) = answer.get("pdus").and_then(JsonValue::as_object) {
                        for (event_id, result) in results {
                            if let Some(error) = result.get("error") {
                                tracing::info!(destination, %event_id, %error, "a PDU was refused");
                            }
                        }
                    }
                    self.edus_sent(server, &rooms, *last, &numbers);
                    Delivery::Done
                }
                Ok(Err(refusal)) if refusal.status >= 500 || matches!(refusal.status, 401 | 408 | 429) => {
                    Delivery::Retry(format!("{destination} answered {}: {}", refusal.status, refusal.body))
                }
                Ok(Err(refusal)) => {
                    // Refused for good: its EDUs are not offered again either.
                    self.edus_sent(server, &rooms, *last, &numbers);
                    Delivery::Dropped(format!("{destination} refused ({}): {}", refusal.status, refusal.body))
                }
                // Refused here before any request: the domain lists, federation off.
                Err(Error::Matrix { kind: ruma::api::error::ErrorKind::Forbidden, message }) => {
                    self.edus_sent(server, &rooms, *last, &numbers);
                    Delivery::Dropped(message)
                }
                Err(e) => Delivery::Retry(e.to_string()),
            }
        })
    }

    fn max_backoff_ms(&self) -> Option<u64> {
        Some(self.max_backoff_ms)
    }
}

/// What a waiting durable EDU is about, when a later EDU about the same makes it moot: a
/// device's update (the later one carries the device's keys as they are then, or its
/// deletion), a user's cross-signing keys (the later one carries both as they are then) or
/// a user's presence.
/// The receiver, missing the dropped update's `stream_id` in the later one's `prev_id`,
/// fetches the user's whole list, as the spec has it after any gap. To-device messages are
/// never dropped.
type SupersedeKey = (&'static str, String, String);

fn supersede_key(edu: &JsonValue) -> Option<SupersedeKey> {
    let content = &edu["content"];
    let user = |value: &JsonValue| value["user_id"].as_str().map(str::to_owned);
    match edu["edu_type"].as_str()? {
        "m.device_list_update" => Some(("device", user(content)?, content["device_id"].as_str()?.to_owned())),
        "m.signing_key_update" => Some(("signing keys", user(content)?, String::new())),
        // Presence EDUs are queued one user each; the latest is the user's presence.
        "m.presence" => match content["push"].as_array()?.as_slice() {
            [one] => Some(("presence", user(one)?, String::new())),
            _ => None,
        },
        _ => None,
    }
}
