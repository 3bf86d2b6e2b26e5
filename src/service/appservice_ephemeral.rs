//! Typing notices, read receipts and presence for application services that ask for them
//! (`receive_ephemeral`, MSC2409): a listener on the stream's change feed turns each typing or
//! receipt change in a room an appservice is interested in, and each presence change of a
//! user sharing a room with its users, into an ephemeral event, queued in memory for that
//! appservice; a courier on the outbox (its own queue per appservice, so room
//! events never wait behind them) sends them in transactions of their own (`ephemeral` and
//! `de.sorunome.msc2409.ephemeral`, no `events`), with the outbox's retries. Unlike room
//! events they are not kept on disk: they describe a moment (who types now) or a state the
//! appservice can read again (receipts), so what is waiting when the server stops, or beyond
//! the last `MAX_WAITING` per appservice, is dropped. Their sequence numbers start again at
//! each start, and so do their queues' places.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use ruma::{RoomId, UserId, events::room::member::MembershipState};
use serde_json::{Value as JsonValue, json};

use super::{
    appservice_sender::AppserviceMates,
    appservices::Appservices,
    outbox::{Courier, Delivering, Delivery, Outbox, Parcels},
    presence::Presence,
    rooms::{
        members::Memberships,
        receipts::{READ, Receipts, receipt_content},
        typing::Typing,
    },
    stream::{Change, Heard, Stream},
};
use crate::{Result, matrix::appservice::Registration};

/// Ephemeral events kept per appservice while it does not take them.
const MAX_WAITING: usize = 1000;

pub struct AppserviceEphemeral {
    appservices: Arc<Appservices>,
    outbox: Arc<Outbox>,
    typing: Arc<Typing>,
    receipts: Arc<Receipts>,
    members: Arc<Memberships>,
    presence: Arc<Presence>,
    stream: Arc<Stream>,
    /// What waits for each appservice, by sequence number.
    waiting: Mutex<HashMap<String, VecDeque<(u64, JsonValue)>>>,
    /// The last sequence number handed out since start.
    sequence: AtomicU64,
    /// Random per start, so that transaction IDs are not reused across starts.
    run_id: String,
}

impl AppserviceEphemeral {
    pub fn new(
        appservices: Arc<Appservices>,
        outbox: Arc<Outbox>,
        typing: Arc<Typing>,
        receipts: Arc<Receipts>,
        members: Arc<Memberships>,
        presence: Arc<Presence>,
        stream: Arc<Stream>,
    ) -> Self {
        Self {
            appservices,
            outbox,
            typing,
            receipts,
            members,
            presence,
            stream,
            waiting: Mutex::default(),
            sequence: AtomicU64::new(0),
            run_id: super::passwords::random_string(8),
        }
    }

    /// Listen to the change feed (called once the server serves, inside its runtime). The
    /// task holds the service weakly and ends with the stream.
    pub fn start(self: &Arc<Self>) {
        self.outbox.serve(self);
        // Every process's changes, queued by the one that delivers (the leader).
        let mut listener = self.stream.listen();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let heard = listener.next().await;
                let Some(me) = me.upgrade() else { return };
                match heard {
                    Heard::Change(_) if !me.outbox.is_leading() => {}
                    Heard::Change(announced) => match announced.change {
                        Change::Room(room_id) => me.room_changed(&room_id, announced.position),
                        Change::RoomMates(user_id) => me.room_mate_changed(&user_id, announced.position),
                        Change::User(_) => {}
                    },
                    Heard::Missed => tracing::debug!("appservice ephemeral listener fell behind"),
                    Heard::Closed => return,
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<(u64, JsonValue)>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A change at `position` in `room_id`: if it was a typing or receipt change, queue it
    /// for each appservice that wants it.
    fn room_changed(self: &Arc<Self>, room_id: &RoomId, position: u64) {
        let registry = self.appservices.registry();
        let wanting: Vec<&Arc<Registration>> =
            registry.list.iter().filter(|a| a.receive_ephemeral && a.url.is_some()).collect();
        if wanting.is_empty() {
            return;
        }
        let mut edus = Vec::new();
        if self.typing.last_position(room_id) == position {
            edus.push(json!({
                "type": "m.typing",
                "room_id": room_id,
                "content": { "user_ids": self.typing.typing_users(room_id) },
            }));
        }
        for appservice in wanting {
            let interested = match self.interested(appservice, room_id) {
                Ok(interested) => interested,
                Err(e) => {
                    tracing::warn!(room_id = %room_id, error = %e, "reading a room's members for an appservice failed");
                    false
                }
            };
            if !interested {
                continue;
            }
            let mut these = edus.clone();
            // Private receipts are for their owner alone: an appservice sees public ones.
            match self.receipts.changed(
                &appservice.sender,
                room_id,
                Some(position.saturating_sub(1)),
                position,
            ) {
                Ok(receipts) => {
                    let public: Vec<_> = receipts.into_iter().filter(|r| r.receipt_type == READ).collect();
                    if !public.is_empty() {
                        these.push(json!({ "type": "m.receipt", "room_id": room_id, "content": receipt_content(&public) }));
                    }
                }
                Err(e) => {
                    tracing::warn!(room_id = %room_id, error = %e, "reading receipts for an appservice failed")
                }
            }
            if !these.is_empty() {
                self.queue(appservice, these);
            }
        }
    }

    /// A change at `position` that the user's room mates see: if it was their presence, queue
    /// it for each appservice that wants it and has a user sharing a room with them (its own
    /// users' presence is its own doing, and is not sent back).
    fn room_mate_changed(self: &Arc<Self>, user_id: &UserId, position: u64) {
        let registry = self.appservices.registry();
        let wanting: Vec<&Arc<Registration>> = registry
            .list
            .iter()
            .filter(|a| a.receive_ephemeral && a.url.is_some() && !a.may_act_as(user_id))
            .collect();
        if wanting.is_empty() {
            return;
        }
        // A device-list change is announced the same way: only a presence change at this
        // position is news here.
        let view = match self.presence.changes(Some(position.saturating_sub(1)), position) {
            Ok(changes) => changes.into_iter().find(|view| view.user_id == user_id),
            Err(e) => {
                tracing::warn!(%user_id, error = %e, "reading presence for an appservice failed");
                return;
            }
        };
        let Some(view) = view else { return };
        let event = json!({ "type": "m.presence", "sender": user_id, "content": view.event_content() });
        for appservice in wanting {
            match AppserviceMates::new(&self.members, appservice).share(user_id) {
                Ok(true) => self.queue(appservice, vec![event.clone()]),
                Ok(false) => {}
                Err(e) => tracing::warn!(%user_id, error = %e, "reading rooms for an appservice failed"),
            }
        }
    }

    fn interested(&self, appservice: &Registration, room_id: &RoomId) -> Result<bool> {
        if appservice.claims_room(room_id) {
            return Ok(true);
        }
        Ok(self
            .members
            .members_with(room_id, &MembershipState::Join)?
            .iter()
            .any(|u| appservice.may_act_as(u)))
    }

    fn queue(self: &Arc<Self>, appservice: &Registration, events: Vec<JsonValue>) {
        let first_for_it = {
            let mut waiting = self.lock();
            let first_for_it = !waiting.contains_key(&appservice.id);
            let queue = waiting.entry(appservice.id.clone()).or_default();
            for event in events {
                if queue.len() >= MAX_WAITING {
                    queue.pop_front();
                }
                queue.push_back((self.sequence.fetch_add(1, Ordering::Relaxed) + 1, event));
            }
            first_for_it
        };
        // The first event for an appservice since start opens its queue from nothing (a place
        // kept from an earlier run counted sequence numbers that are gone).
        if first_for_it && let Err(e) = self.outbox.open(Self::KIND, &appservice.id, 0, true) {
            tracing::warn!(appservice = %appservice.id, error = %e, "opening an ephemeral queue failed");
            return;
        }
        self.outbox.run(self, &appservice.id);
    }
}

impl Courier for AppserviceEphemeral {
    type Parcel = JsonValue;
    const KIND: &'static str = "appservice-ephemeral";
    const BATCH: usize = 100;

    fn pending(&self, destination: &str, after: u64, limit: usize) -> Result<Option<Parcels<JsonValue>>> {
        let registry = self.appservices.registry();
        if !registry.by_id(destination).is_some_and(|a| a.receive_ephemeral && a.url.is_some()) {
            self.lock().remove(destination);
            return Ok(None);
        }
        let mut waiting = self.lock();
        let Some(queue) = waiting.get_mut(destination) else { return Ok(Some(Vec::new())) };
        // What the queue has moved past was delivered.
        while queue.front().is_some_and(|(seq, _)| *seq <= after) {
            queue.pop_front();
        }
        Ok(Some(queue.iter().take(limit).cloned().collect()))
    }

    fn deliver<'a>(&'a self, destination: &'a str, parcels: &'a [(u64, JsonValue)]) -> Delivering<'a> {
        Box::pin(async move {
            let registry = self.appservices.registry();
            let Some(appservice) = registry.by_id(destination) else {
                return Delivery::Gone("the application service is no longer registered".to_owned());
            };
            let (Some((first, _)), Some((last, _))) = (parcels.first(), parcels.last()) else {
                return Delivery::Done;
            };
            let events: Vec<&JsonValue> = parcels.iter().map(|(_, event)| event).collect();
            let body = json!({
                "events": [],
                "ephemeral": events,
                "de.sorunome.msc2409.ephemeral": events,
            });
            // Sequence numbers start again at each start: the run's ID keeps IDs apart.
            let txn_id = format!("ephemeral.{}.{first}.{last}", self.run_id);
            self.appservices.send_transaction(appservice, &txn_id, &body).await
        })
    }
}
