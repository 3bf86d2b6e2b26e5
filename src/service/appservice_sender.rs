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
//!
//! A registration with `org.matrix.msc3202: true` (an encrypting bridge whose devices do
//! not sync) also gets, in the same transactions and the same stream order: the to-device
//! messages for its users' devices (MSC2409, `de.sorunome.msc2409.to_device`, each naming
//! `to_user_id` and `to_device_id`); the users whose device lists changed or who came to
//! share, or stopped sharing, a room with its users (MSC3202,
//! `org.matrix.msc3202.device_lists`); and the one-time key counts and unused fallback key
//! types of the devices of its users the transaction concerns (to-device recipients and
//! senders of its events; `org.matrix.msc3202.device_one_time_keys_count` and
//! `org.matrix.msc3202.device_unused_fallback_key_types`), as Synapse sends them.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, Weak},
};

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::{TimelineEventType, room::member::MembershipState},
};
use serde_json::{Map, Value as JsonValue, json};

use super::{
    accounts::Accounts,
    appservices::Appservices,
    devices::Devices,
    keys::Keys,
    outbox::{Courier, Delivering, Delivery, Outbox, Parcels},
    rooms::{
        aliases::Aliases,
        events::{Events, StoredEvent},
        members::Memberships,
        render::{EventRenderer, Rendering, Viewer},
    },
    stream::{Change, Stream},
    to_device::ToDevice,
};
use crate::{Result, matrix::appservice::Registration};

/// Stream positions read per look at the stream: a queue that finds nothing of interest in
/// them still moves past them.
const SCAN: usize = 1000;

/// One stream position for an appservice: an event it is interested in, a to-device
/// message for one of its devices, the device-list changes up to a position, or only a
/// place to move past.
pub enum AppserviceParcel {
    Event(JsonValue),
    ToDevice(JsonValue),
    DeviceLists { changed: BTreeSet<OwnedUserId>, left: BTreeSet<OwnedUserId> },
    Skip,
}

/// Where the encryption parts of transactions come from (MSC2409 and MSC3202).
pub struct DeviceSources {
    pub keys: Arc<Keys>,
    pub devices: Arc<Devices>,
    pub to_device: Arc<ToDevice>,
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
    device_sources: DeviceSources,
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
        device_sources: DeviceSources,
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
            device_sources,
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
        self.outbox.serve(self);
        self.listen();
        self.open_queues()
    }

    /// Ring the queues for what the stream commits (once committed): room events for every
    /// appservice, to-device messages and device-list changes for those that take them.
    fn listen(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let wanted = move |change: &Change| me.upgrade().is_some_and(|me| me.rings_for(change));
        self.outbox.ring_on_commits(&self.stream, Self::KIND, wanted);
    }

    /// Whether a change may concern an appservice's queue.
    fn rings_for(&self, change: &Change) -> bool {
        let registry = self.appservices.registry();
        let mut serving = registry.list.iter().filter(|a| a.url.is_some());
        match change {
            Change::Room(_) => serving.next().is_some(),
            Change::User(user) => serving.any(|a| a.msc3202 && a.may_act_as(user)),
            Change::RoomMates(_) => serving.any(|a| a.msc3202),
        }
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
    /// The device-list news for an encrypting appservice after `after` up to `upto`: users
    /// sharing a room with its users whose device lists changed, users who came to share one
    /// (they joined a room of its users, or one of its users joined theirs), and users who
    /// left such a room and share none any more. `events` are the room events in the range.
    fn device_list_changes<'e>(
        &self,
        appservice: &Registration,
        after: u64,
        upto: u64,
        events: impl Iterator<Item = &'e StoredEvent>,
    ) -> Result<(BTreeSet<OwnedUserId>, BTreeSet<OwnedUserId>)> {
        let mut mates = AppserviceMates::new(&self.members, appservice);
        let mut came = Vec::new();
        let mut went = Vec::new();
        for event in events {
            let pdu = &event.pdu;
            if pdu.kind != TimelineEventType::RoomMember {
                continue;
            }
            let Some(target) = pdu.state_key.as_deref().and_then(|k| <&UserId>::try_from(k).ok()) else {
                continue;
            };
            let content = pdu.content_value();
            match content.get("membership").and_then(JsonValue::as_str) {
                Some("join") if appservice.may_act_as(target) => {
                    came.extend(self.members.members_with(&pdu.room_id, &MembershipState::Join)?);
                }
                Some("join") => came.push(target.to_owned()),
                Some("leave" | "ban") if appservice.may_act_as(target) => {
                    went.extend(self.members.members_with(&pdu.room_id, &MembershipState::Join)?);
                }
                Some("leave" | "ban") => went.push(target.to_owned()),
                _ => {}
            }
        }
        let mut changed = BTreeSet::new();
        let keys = self.device_sources.keys.changes_between(after, upto)?.into_iter().map(|(_, user)| user);
        for user in keys.chain(came) {
            if !appservice.may_act_as(&user) && !changed.contains(&user) && mates.share(&user)? {
                changed.insert(user);
            }
        }
        let mut left = BTreeSet::new();
        for user in went {
            if !appservice.may_act_as(&user) && !changed.contains(&user) && !mates.share(&user)? {
                left.insert(user);
            }
        }
        Ok((changed, left))
    }

    /// The body of the transaction carrying `parcels`, or `None` when they carry nothing.
    fn transaction(
        &self,
        appservice: &Registration,
        parcels: &[(u64, AppserviceParcel)],
    ) -> Result<Option<JsonValue>> {
        let mut events = Vec::new();
        let mut to_device = Vec::new();
        let mut changed = BTreeSet::new();
        let mut left = BTreeSet::new();
        // The users whose devices' key counts the transaction carries.
        let mut concerned = BTreeSet::new();
        for (_, parcel) in parcels {
            match parcel {
                AppserviceParcel::Event(event) => {
                    if let Some(sender) = event.get("sender").and_then(JsonValue::as_str)
                        && let Ok(sender) = <&UserId>::try_from(sender)
                        && appservice.may_act_as(sender)
                    {
                        concerned.insert(sender.to_owned());
                    }
                    events.push(event);
                }
                AppserviceParcel::ToDevice(message) => {
                    if let Some(user) = message.get("to_user_id").and_then(JsonValue::as_str)
                        && let Ok(user) = <&UserId>::try_from(user)
                    {
                        concerned.insert(user.to_owned());
                    }
                    to_device.push(message);
                }
                AppserviceParcel::DeviceLists { changed: c, left: l } => {
                    changed.extend(c.iter().cloned());
                    left.extend(l.iter().cloned());
                }
                AppserviceParcel::Skip => {}
            }
        }
        left.retain(|user| !changed.contains(user));
        if events.is_empty() && to_device.is_empty() && changed.is_empty() && left.is_empty() {
            return Ok(None);
        }
        let mut body = Map::new();
        body.insert("events".to_owned(), json!(events));
        if appservice.msc3202 {
            let mut counts = Map::new();
            let mut fallbacks = Map::new();
            for user in &concerned {
                let mut user_counts = Map::new();
                let mut user_fallbacks = Map::new();
                for device in self.device_sources.devices.list(user)? {
                    let device_id = &device.device_id;
                    let count = self.device_sources.keys.one_time_key_counts(user, device_id)?;
                    user_counts.insert(device_id.to_string(), json!(count));
                    let unused = self.device_sources.keys.unused_fallback_types(user, device_id)?;
                    user_fallbacks.insert(device_id.to_string(), json!(unused));
                }
                if !user_counts.is_empty() {
                    counts.insert(user.to_string(), user_counts.into());
                    fallbacks.insert(user.to_string(), user_fallbacks.into());
                }
            }
            body.insert("de.sorunome.msc2409.to_device".to_owned(), json!(to_device));
            body.insert(
                "org.matrix.msc3202.device_lists".to_owned(),
                json!({ "changed": changed, "left": left }),
            );
            body.insert("org.matrix.msc3202.device_one_time_keys_count".to_owned(), counts.into());
            body.insert("org.matrix.msc3202.device_unused_fallback_key_types".to_owned(), fallbacks.into());
        }
        Ok(Some(body.into()))
    }
}

/// Whether users share a joined room with an appservice's users, with the answer per room
/// kept while it lives (one look at the stream).
pub(super) struct AppserviceMates<'a> {
    members: &'a Memberships,
    appservice: &'a Registration,
    rooms: HashMap<OwnedRoomId, bool>,
}

impl<'a> AppserviceMates<'a> {
    pub(super) fn new(members: &'a Memberships, appservice: &'a Registration) -> Self {
        Self { members, appservice, rooms: HashMap::new() }
    }

    pub(super) fn share(&mut self, user: &UserId) -> Result<bool> {
        for (room_id, record) in self.members.memberships_of_user(user)? {
            if record.membership != "join" {
                continue;
            }
            let shared = match self.rooms.get(&room_id) {
                Some(known) => *known,
                None => {
                    let joined = self.members.members_with(&room_id, &MembershipState::Join)?;
                    let shared = joined.iter().any(|member| self.appservice.may_act_as(member));
                    self.rooms.insert(room_id, shared);
                    shared
                }
            };
            if shared {
                return Ok(true);
            }
        }
        Ok(false)
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
        if appservice.msc3202 {
            // What the queue has moved past was delivered.
            self.device_sources.to_device.appservice_took(&appservice.id, after)?;
        }
        let (scanned, mut upto) = self.events.committed_after(after, SCAN, self.stream.committed())?;
        let mut rooms = HashMap::new();
        let mut parcels = Vec::new();
        for event in &scanned {
            if self.interested(appservice, event, &mut rooms)? {
                parcels.push((event.stream, AppserviceParcel::Event(self.render(appservice, event)?)));
                if parcels.len() >= limit {
                    upto = event.stream;
                    break;
                }
            }
        }
        if appservice.msc3202 {
            let to_device =
                self.device_sources.to_device.for_appservice(&appservice.id, after, upto, limit)?;
            if to_device.len() >= limit
                && let Some((last, _)) = to_device.last()
            {
                upto = *last;
                parcels.retain(|(position, _)| *position <= upto);
            }
            parcels.extend(
                to_device.into_iter().map(|(position, event)| (position, AppserviceParcel::ToDevice(event))),
            );
            parcels.sort_by_key(|(position, _)| *position);
            let scanned = scanned.iter().filter(|event| event.stream <= upto);
            let (changed, left) = self.device_list_changes(appservice, after, upto, scanned)?;
            if !changed.is_empty() || !left.is_empty() {
                parcels.push((upto, AppserviceParcel::DeviceLists { changed, left }));
            }
        }
        // Nothing more of interest up to `upto`: move past it all.
        if upto > after && parcels.last().is_none_or(|(position, _)| *position < upto) {
            parcels.push((upto, AppserviceParcel::Skip));
        }
        Ok(Some(parcels))
    }

    fn deliver<'a>(&'a self, destination: &'a str, parcels: &'a [(u64, AppserviceParcel)]) -> Delivering<'a> {
        Box::pin(async move {
            let registry = self.appservices.registry();
            let Some(appservice) = registry.by_id(destination) else {
                return Delivery::Gone("the application service is no longer registered".to_owned());
            };
            let (Some((first, _)), Some((last, _))) = (parcels.first(), parcels.last()) else {
                return Delivery::Done;
            };
            let body = match self.transaction(appservice, parcels) {
                Ok(Some(body)) => body,
                Ok(None) => return Delivery::Done,
                Err(e) => return Delivery::Retry(format!("reading what the transaction carries: {e}")),
            };
            // The same positions make the same transaction, so a retry keeps its ID.
            let txn_id = format!("{first}.{last}");
            self.appservices.send_transaction(appservice, &txn_id, &body).await
        })
    }
}
