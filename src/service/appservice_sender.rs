//! Transactions to application services (spec: Application Service API, "Pushing events"):
//! each registered appservice with a URL has a queue on the outbox that follows the server's
//! stream and hands it, in order, the room events it is interested in, `PUT` to
//! `{url}/_matrix/app/v1/transactions/{txnId}` with the `hs_token` as bearer token. A failed
//! transaction is retried with the outbox's backoff until the appservice takes it; one that
//! was down for a while gets everything it missed, in order, across restarts of either side.
//!
//! An appservice is interested in an event (as Synapse decides) when the room is in its
//! rooms namespace, the sender or the member event's target is one of its users, the room
//! has an alias in its aliases namespace, or one of its users is joined to the room.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
};

use ruma::{OwnedRoomId, RoomId, UserId, events::TimelineEventType};
use serde_json::{Value as JsonValue, json};

use super::{
    accounts::Accounts,
    appservices::Appservices,
    outbox::{Courier, Delivering, Delivery, Outbox, Parcels},
    rooms::{
        aliases::Aliases,
        events::{Events, StoredEvent},
        members::Memberships,
        render::{EventRenderer, Rendering, Viewer},
    },
    stream::Stream,
};
use crate::{Result, matrix::appservice::Registration};

/// Stream positions read per look at the stream: a queue that finds nothing of interest in
/// them still moves past them.
const SCAN: usize = 1000;

/// One stream position for an appservice: an event it is interested in, or only a place
/// to move past.
pub enum AppserviceParcel {
    Event(JsonValue),
    Skip,
}

pub struct AppserviceSender {
    appservices: Arc<Appservices>,
    accounts: Arc<Accounts>,
    outbox: Arc<Outbox>,
    events: Arc<Events>,
    members: Arc<Memberships>,
    aliases: Arc<Aliases>,
    renderer: Arc<EventRenderer>,
    stream: Arc<Stream>,
    /// Itself, for running queues from `&self` (a reload); set by `start`.
    me: Mutex<Weak<Self>>,
}

impl AppserviceSender {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        appservices: Arc<Appservices>,
        accounts: Arc<Accounts>,
        outbox: Arc<Outbox>,
        events: Arc<Events>,
        members: Arc<Memberships>,
        aliases: Arc<Aliases>,
        renderer: Arc<EventRenderer>,
        stream: Arc<Stream>,
    ) -> Self {
        Self {
            appservices,
            accounts,
            outbox,
            events,
            members,
            aliases,
            renderer,
            stream,
            me: Mutex::new(Weak::new()),
        }
    }

    /// The registrations this sender serves.
    pub fn appservices(&self) -> &Arc<Appservices> {
        &self.appservices
    }

    /// Start the queue of every registered appservice with a URL (at server start). One
    /// registered for the first time starts from now.
    pub fn start(self: &Arc<Self>) -> Result<()> {
        *self.me.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(self);
        self.open_queues()
    }

    /// Serve the registrations in force (after a reload too): each sender's account exists,
    /// and each appservice with a URL has its queue running.
    pub fn open_queues(&self) -> Result<()> {
        for appservice in &self.appservices.registry().list {
            self.accounts.ensure_appservice_sender(appservice)?;
        }
        let Some(me) = self.me.lock().unwrap_or_else(|p| p.into_inner()).upgrade() else { return Ok(()) };
        let now = self.stream.committed();
        for appservice in &self.appservices.registry().list {
            if appservice.url.is_some() {
                self.outbox.open(Self::KIND, &appservice.id, now, false)?;
                self.outbox.run(&me, &appservice.id);
            }
        }
        Ok(())
    }

    /// Events were committed (the write path, after the commit): ring the queues.
    pub fn committed(&self) {
        if self.appservices.any() {
            self.outbox.ring(Self::KIND, "");
        }
    }

    /// Whether `appservice` is interested in `event`; `rooms` caches the answer for the
    /// parts that depend on the room only.
    fn interested(
        &self,
        appservice: &Registration,
        event: &StoredEvent,
        rooms: &mut HashMap<OwnedRoomId, bool>,
    ) -> Result<bool> {
        let pdu = &event.pdu;
        if appservice.may_act_as(&pdu.sender) {
            return Ok(true);
        }
        if pdu.kind == TimelineEventType::RoomMember
            && let Some(target) = pdu.state_key.as_deref().and_then(|k| <&UserId>::try_from(k).ok())
            && appservice.may_act_as(target)
        {
            return Ok(true);
        }
        if let Some(known) = rooms.get(&pdu.room_id) {
            return Ok(*known);
        }
        let interested = self.interested_in_room(appservice, &pdu.room_id)?;
        rooms.insert(pdu.room_id.clone(), interested);
        Ok(interested)
    }

    fn interested_in_room(&self, appservice: &Registration, room_id: &RoomId) -> Result<bool> {
        if appservice.claims_room(room_id) {
            return Ok(true);
        }
        if !appservice.aliases.is_empty()
            && self.aliases.of_room(room_id)?.iter().any(|a| appservice.claims_alias(a))
        {
            return Ok(true);
        }
        Ok(self
            .members
            .members_with(room_id, &ruma::events::room::member::MembershipState::Join)?
            .iter()
            .any(|user| appservice.may_act_as(user)))
    }

    /// An event as the appservice sees it: the client format, with the legacy `user_id`
    /// (the sender) that Synapse still sends and older bridges read.
    fn render(&self, appservice: &Registration, event: &StoredEvent) -> Result<JsonValue> {
        let viewer = Viewer { user_id: &appservice.sender, device_id: None };
        let mut value = self.renderer.value(viewer, event, Rendering::CLIENT)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("user_id".to_owned(), event.pdu.sender.as_str().into());
        }
        Ok(value)
    }
}

impl Courier for AppserviceSender {
    type Parcel = AppserviceParcel;
    const KIND: &'static str = "appservice";
    /// Events per transaction (Synapse sends up to 100).
    const BATCH: usize = 100;

    fn pending(
        &self,
        destination: &str,
        after: u64,
        limit: usize,
    ) -> Result<Option<Parcels<AppserviceParcel>>> {
        let registry = self.appservices.registry();
        let Some(appservice) = registry.by_id(destination) else { return Ok(None) };
        if appservice.url.is_none() {
            return Ok(None);
        }
        let scanned = self.events.stream_events(after, SCAN)?;
        let mut rooms = HashMap::new();
        let mut parcels = Vec::new();
        for event in &scanned {
            if self.interested(appservice, event, &mut rooms)? {
                parcels.push((event.stream, AppserviceParcel::Event(self.render(appservice, event)?)));
                if parcels.len() >= limit {
                    return Ok(Some(parcels));
                }
            }
        }
        // Nothing more of interest in what was read: move past it all.
        if let Some(last) = scanned.last()
            && parcels.last().is_none_or(|(position, _)| *position < last.stream)
        {
            parcels.push((last.stream, AppserviceParcel::Skip));
        }
        Ok(Some(parcels))
    }

    fn deliver<'a>(&'a self, destination: &'a str, parcels: &'a [(u64, AppserviceParcel)]) -> Delivering<'a> {
        Box::pin(async move {
            let registry = self.appservices.registry();
            let Some(appservice) = registry.by_id(destination) else {
                return Delivery::Gone("the application service is no longer registered".to_owned());
            };
            let events: Vec<&JsonValue> = parcels
                .iter()
                .filter_map(|(_, parcel)| match parcel {
                    AppserviceParcel::Event(event) => Some(event),
                    AppserviceParcel::Skip => None,
                })
                .collect();
            let (Some((first, _)), Some((last, _))) = (parcels.first(), parcels.last()) else {
                return Delivery::Done;
            };
            if events.is_empty() {
                return Delivery::Done;
            }
            // The same positions make the same transaction, so a retry keeps its ID.
            let txn_id = format!("{first}.{last}");
            self.appservices.send_transaction(appservice, &txn_id, &json!({ "events": events })).await
        })
    }
}
