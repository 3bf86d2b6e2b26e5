//! How an event is shown to one client: the client format (or the federation format when a
//! filter asks), `unsigned.age`, the sending device's `transaction_id`, the sender's
//! `org.matrix.msc4140.delay_id` (events sent from a delayed event), bundled
//! aggregations of its relations, and the filter's `event_fields`. Every path that serves
//! events to clients renders through here so they all agree.

use std::sync::Arc;

use ruma::{DeviceId, UserId};
use serde_json::{Map, Value as JsonValue, value::RawValue as RawJsonValue};

use super::{events::StoredEvent, relations::Relations};
use crate::{Error, Result, matrix::filter, service::clock::Clock};

/// Who an event is rendered for.
#[derive(Clone, Copy)]
pub struct Viewer<'a> {
    pub user_id: &'a UserId,
    /// The requesting device, which alone sees its own transaction IDs.
    pub device_id: Option<&'a DeviceId>,
}

/// The shape of a rendered event.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The client format, with `room_id`.
    Client,
    /// The client format without `room_id` (sync, where the room is the key).
    Sync,
    /// The event as the room graph holds it (`event_format: federation`).
    Federation,
    /// The client format with the pre-r0 fields that clients of the deprecated endpoints
    /// (`/events`, `/initialSync`) read, as Synapse serves them: `user_id` (the sender) and
    /// `age`, `prev_content`, `replaces_state` and `redacted_because` copied up from
    /// `unsigned`.
    Legacy,
}

/// The `unsigned` fields the pre-r0 format also carries at the top level.
const LEGACY_TOP_LEVEL: &[&str] = &["age", "prev_content", "replaces_state", "redacted_because"];

/// How a list of events should be rendered.
#[derive(Clone, Copy)]
pub struct Rendering<'a> {
    pub shape: Shape,
    pub fields: Option<&'a [String]>,
}

impl Rendering<'_> {
    pub const CLIENT: Rendering<'static> = Rendering { shape: Shape::Client, fields: None };
    pub const LEGACY: Rendering<'static> = Rendering { shape: Shape::Legacy, fields: None };
}

pub struct EventRenderer {
    relations: Arc<Relations>,
    clock: Arc<dyn Clock>,
}

impl EventRenderer {
    pub fn new(relations: Arc<Relations>, clock: Arc<dyn Clock>) -> Self {
        Self { relations, clock }
    }

    /// One event as JSON for `viewer`.
    pub fn value(&self, viewer: Viewer<'_>, event: &StoredEvent, how: Rendering<'_>) -> Result<JsonValue> {
        let unsigned = self.unsigned(viewer, event)?;
        self.shaped(event, unsigned, how)
    }

    /// The `unsigned` fields the server adds for `viewer`.
    fn unsigned(&self, viewer: Viewer<'_>, event: &StoredEvent) -> Result<Map<String, JsonValue>> {
        self.unsigned_with(viewer, event, None)
    }

    /// [`Self::unsigned`], with whether the event has relations when already known.
    fn unsigned_with(
        &self,
        viewer: Viewer<'_>,
        event: &StoredEvent,
        related: Option<bool>,
    ) -> Result<Map<String, JsonValue>> {
        let pdu = &event.pdu;
        let mut unsigned = Map::new();
        unsigned.insert(
            "age".to_owned(),
            self.clock.now_ms().saturating_sub(pdu.origin_server_ts.get().into()).into(),
        );
        if let Some(origin) = &event.txn
            && pdu.sender == viewer.user_id
            && viewer.device_id == Some(origin.device_id.as_ref())
        {
            unsigned.insert("transaction_id".to_owned(), origin.txn_id.as_str().into());
        }
        // MSC4140: the delay ID is shown to the event's sender (any of their devices) only.
        if let Some(delay_id) = &event.delay_id
            && pdu.sender == viewer.user_id
        {
            unsigned.insert("org.matrix.msc4140.delay_id".to_owned(), delay_id.as_str().into());
        }
        let bundle = match related {
            None => self.relations.bundle(viewer.user_id, event)?,
            Some(true) => self.relations.bundle_of_parent(viewer.user_id, event)?,
            Some(false) => None,
        };
        if let Some(bundle) = bundle {
            unsigned.insert("m.relations".to_owned(), bundle);
        }
        Ok(unsigned)
    }

    fn shaped(
        &self,
        event: &StoredEvent,
        unsigned: Map<String, JsonValue>,
        how: Rendering<'_>,
    ) -> Result<JsonValue> {
        let pdu = &event.pdu;
        let mut value = match how.shape {
            Shape::Client | Shape::Sync | Shape::Legacy => {
                pdu.to_client_event(Some(unsigned)).map_err(Error::internal)?
            }
            Shape::Federation => {
                let mut value = serde_json::to_value(pdu)
                    .map_err(|e| Error::internal(format!("serialising event: {e}")))?;
                if let Some(map) = value.as_object_mut() {
                    // hashes, signatures and origin sit at the top level of a PDU.
                    if let Some(JsonValue::Object(extras)) = map.remove("signed_extras") {
                        map.extend(extras);
                    }
                    let mut merged =
                        map.remove("unsigned").and_then(|u| u.as_object().cloned()).unwrap_or_default();
                    merged.extend(unsigned);
                    map.insert("unsigned".to_owned(), JsonValue::Object(merged));
                }
                value
            }
        };
        if let Some(map) = value.as_object_mut() {
            match how.shape {
                Shape::Sync => {
                    map.remove("room_id");
                }
                Shape::Legacy => {
                    let copied: Vec<(String, JsonValue)> = map
                        .get("unsigned")
                        .and_then(JsonValue::as_object)
                        .map(|unsigned| {
                            LEGACY_TOP_LEVEL
                                .iter()
                                .filter_map(|key| Some(((*key).to_owned(), unsigned.get(*key)?.clone())))
                                .collect()
                        })
                        .unwrap_or_default();
                    map.extend(copied);
                    map.insert("user_id".to_owned(), pdu.sender.as_str().into());
                }
                Shape::Client | Shape::Federation => {}
            }
        }
        Ok(filter::select_fields(value, how.fields))
    }

    /// One event as raw JSON for a ruma response.
    pub fn raw(
        &self,
        viewer: Viewer<'_>,
        event: &StoredEvent,
        how: Rendering<'_>,
    ) -> Result<Box<RawJsonValue>> {
        self.raw_with(viewer, event, how, None)
    }

    fn raw_with(
        &self,
        viewer: Viewer<'_>,
        event: &StoredEvent,
        how: Rendering<'_>,
        related: Option<bool>,
    ) -> Result<Box<RawJsonValue>> {
        let unsigned = self.unsigned_with(viewer, event, related)?;
        match (how.shape, how.fields) {
            // The common shapes are written straight from the stored content, unparsed.
            (Shape::Client | Shape::Sync, None) => {
                event.pdu.to_client_raw(how.shape == Shape::Client, Some(unsigned)).map_err(Error::internal)
            }
            _ => to_raw(&self.shaped(event, unsigned, how)?),
        }
    }

    /// Several events, in order.
    pub fn raw_all<'e>(
        &self,
        viewer: Viewer<'_>,
        events: impl IntoIterator<Item = &'e Arc<StoredEvent>>,
        how: Rendering<'_>,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        let events: Vec<&StoredEvent> = events.into_iter().map(AsRef::as_ref).collect();
        // Which have relations, in one read rather than one per event.
        let related = self.relations.have_relations(&events)?;
        events.iter().zip(related).map(|(e, related)| self.raw_with(viewer, e, how, Some(related))).collect()
    }
}

/// JSON to raw JSON.
pub fn to_raw(value: &JsonValue) -> Result<Box<RawJsonValue>> {
    serde_json::value::to_raw_value(value).map_err(|e| Error::internal(format!("serialising event: {e}")))
}
