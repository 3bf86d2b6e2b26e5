//! The persistent data unit: an event as the room graph holds it. Building one to a room
//! version's format (hashes, signature, reference-hash event ID, v12 room IDs), redacting it,
//! and rendering it in the client format. Hashing, signing and redaction are ruma's.

use std::collections::BTreeMap;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, ServerName, UInt, UserId,
    canonical_json::redact_content_in_place,
    events::TimelineEventType,
    room_version_rules::{EventIdFormatVersion, RoomIdFormatVersion, RoomVersionRules},
    signatures::{Ed25519KeyPair, hash_and_sign_event, reference_hash},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value as JsonValue, value::RawValue as RawJsonValue};

use super::limits::{MAX_EVENT_TYPE_BYTES, MAX_STATE_KEY_BYTES};

/// The most `prev_events` a new event names; the spec caps it at 20.
pub const MAX_PREV_EVENTS: usize = 20;
/// The spec's limit on a PDU's size in bytes, signatures included.
pub const MAX_PDU_BYTES: usize = 65_536;
/// Room left under the limit for the hashes and one signature added after the size check.
const SIGNING_OVERHEAD_BYTES: usize = 256;

/// Why an event could not be built.
#[derive(Debug)]
pub enum BuildError {
    /// The signed event would exceed [`MAX_PDU_BYTES`].
    TooLarge,
    /// A key the spec limits on its own (`type`, `state_key`) is longer than that.
    KeyTooLarge(&'static str),
    /// Anything else: malformed input or a failure in hashing or signing.
    Invalid(String),
}

/// An event of the room graph, with the fields the authorization rules read kept typed.
///
/// `event_id` and `room_id` are always present here even where the wire format derives them
/// (v3+ event IDs, v12 create events); [`Pdu::to_federation_object`] drops them again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    pub kind: TimelineEventType,
    pub content: Box<RawJsonValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: UInt,
    /// Top-level `redacts` (v1–v10); v11+ carry it in `content` and it is mirrored here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redacts: Option<OwnedEventId>,
    /// `hashes`, `signatures` and (pre-v11) `origin`: kept verbatim for federation.
    #[serde(default)]
    pub signed_extras: BTreeMap<String, JsonValue>,
    /// Server-local, unsigned data that travels with the event (`redacted_because`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsigned: Option<serde_json::Map<String, JsonValue>>,
}

/// What a caller asks to send; the builder adds the graph fields.
#[derive(Clone, Debug)]
pub struct EventTemplate {
    pub kind: TimelineEventType,
    pub content: JsonValue,
    pub state_key: Option<String>,
    pub redacts: Option<OwnedEventId>,
}

impl EventTemplate {
    pub fn message(kind: impl Into<TimelineEventType>, content: JsonValue) -> Self {
        Self { kind: kind.into(), content, state_key: None, redacts: None }
    }

    pub fn state(
        kind: impl Into<TimelineEventType>,
        state_key: impl Into<String>,
        content: JsonValue,
    ) -> Self {
        Self { kind: kind.into(), content, state_key: Some(state_key.into()), redacts: None }
    }
}

/// The graph position of a new event, chosen by the caller from the room's current state.
pub struct GraphPosition<'a> {
    /// `None` only for the create event of a v12+ room, whose ID derives from its hash.
    pub room_id: Option<&'a RoomId>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: UInt,
}

/// Build, hash and sign a new event; returns it with its event ID (and room ID) filled in.
pub fn build_pdu(
    rules: &RoomVersionRules,
    origin: &ServerName,
    signing_key: &Ed25519KeyPair,
    sender: &UserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    template: &EventTemplate,
    position: GraphPosition<'_>,
) -> Result<Pdu, BuildError> {
    if template.kind.to_string().len() > MAX_EVENT_TYPE_BYTES {
        return Err(BuildError::KeyTooLarge("type"));
    }
    if template.state_key.as_ref().is_some_and(|key| key.len() > MAX_STATE_KEY_BYTES) {
        return Err(BuildError::KeyTooLarge("state_key"));
    }
    let mut content = template.content.clone();
    let content_field_redacts = rules.redaction.content_field_redacts;
    if let (Some(redacts), true) = (&template.redacts, content_field_redacts) {
        if let JsonValue::Object(map) = &mut content {
            map.insert("redacts".to_owned(), JsonValue::String(redacts.to_string()));
        }
    }
    let mut object = serde_json::json!({
        "auth_events": position.auth_events,
        "content": content,
        "depth": position.depth,
        "origin_server_ts": origin_server_ts,
        "prev_events": position.prev_events,
        "sender": sender,
        "type": template.kind,
    });
    let map = object.as_object_mut().expect("json! object literal");
    if let Some(room_id) = position.room_id {
        map.insert("room_id".to_owned(), room_id.as_str().into());
    }
    if let Some(state_key) = &template.state_key {
        map.insert("state_key".to_owned(), state_key.as_str().into());
    }
    if let (Some(redacts), false) = (&template.redacts, content_field_redacts) {
        map.insert("redacts".to_owned(), redacts.as_str().into());
    }
    // `origin` left the redaction algorithm's kept keys in v11; older versions still expect it.
    if !rules.authorization.use_room_create_sender {
        map.insert("origin".to_owned(), origin.as_str().into());
    }
    let invalid = BuildError::Invalid;
    let size = serde_json::to_vec(&object).map_err(|e| invalid(e.to_string()))?.len();
    if size + SIGNING_OVERHEAD_BYTES > MAX_PDU_BYTES {
        return Err(BuildError::TooLarge);
    }
    let mut canonical: CanonicalJsonObject =
        serde_json::from_value(object).map_err(|e| invalid(format!("event is not canonical JSON: {e}")))?;

    hash_and_sign_event(origin.as_str(), signing_key, &mut canonical, &rules.redaction)
        .map_err(|e| invalid(format!("cannot sign event: {e}")))?;
    let event_id = event_id_for(&canonical, rules).map_err(invalid)?;
    let room_id = match position.room_id {
        Some(room_id) => room_id.to_owned(),
        None => room_id_from_create(&event_id, rules).map_err(invalid)?,
    };
    from_canonical(canonical, event_id, room_id).map_err(invalid)
}

/// The event ID of a signed event per the room version's format (reference hash for v3+).
pub fn event_id_for(object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId, String> {
    match rules.event_id_format {
        EventIdFormatVersion::V1 => {
            Err("room versions with server-chosen event IDs are not supported".to_owned())
        }
        _ => {
            let hash = reference_hash(object, rules).map_err(|e| format!("cannot hash event: {e}"))?;
            EventId::parse(format!("${hash}")).map_err(|e| e.to_string())
        }
    }
}

/// The room ID a create event names: its own reference hash for v12+ rooms.
fn room_id_from_create(create_event_id: &EventId, rules: &RoomVersionRules) -> Result<OwnedRoomId, String> {
    match rules.room_id_format {
        RoomIdFormatVersion::V2 => {
            let hash = create_event_id.as_str().trim_start_matches('$');
            RoomId::new_v2(hash).map_err(|e| e.to_string())
        }
        _ => Err("this room version needs a room ID chosen before the create event".to_owned()),
    }
}

/// Split a signed canonical object into a [`Pdu`].
fn from_canonical(
    mut object: CanonicalJsonObject,
    event_id: OwnedEventId,
    room_id: OwnedRoomId,
) -> Result<Pdu, String> {
    let mut signed_extras = BTreeMap::new();
    for key in ["hashes", "signatures", "origin"] {
        if let Some(value) = object.remove(key) {
            signed_extras.insert(key.to_owned(), JsonValue::from(value));
        }
    }
    let mut value = JsonValue::from(CanonicalJsonValue::Object(object));
    let map = value.as_object_mut().ok_or("event is not an object")?;
    map.insert("event_id".to_owned(), event_id.as_str().into());
    map.insert("room_id".to_owned(), room_id.as_str().into());
    if map.get("redacts").is_none() {
        if let Some(redacts) = map.get("content").and_then(|c| c.get("redacts")).cloned() {
            map.insert("redacts".to_owned(), redacts);
        }
    }
    let mut pdu: Pdu = serde_json::from_value(value).map_err(|e| format!("malformed event: {e}"))?;
    pdu.signed_extras = signed_extras;
    Ok(pdu)
}

impl Pdu {
    /// The event as it travels between servers: the signed fields only, without the derived
    /// `event_id` (v3+) and, for v12+ create events, without `room_id`.
    pub fn to_federation_object(&self, rules: &RoomVersionRules) -> Result<CanonicalJsonObject, String> {
        let mut value = serde_json::to_value(self).map_err(|e| e.to_string())?;
        let map = value.as_object_mut().ok_or("event is not an object")?;
        map.remove("event_id");
        map.remove("unsigned");
        let extras = map.remove("signed_extras");
        if let Some(JsonValue::Object(extras)) = extras {
            map.extend(extras);
        }
        if rules.redaction.content_field_redacts {
            map.remove("redacts");
        }
        if self.kind == TimelineEventType::RoomCreate && rules.authorization.room_create_event_id_as_room_id {
            map.remove("room_id");
        }
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    /// Strip the content to what the room version's redaction algorithm keeps, and record
    /// the redaction in `unsigned`. The hashes and signatures stay: they cover the redacted form.
    pub fn redact(&mut self, rules: &RoomVersionRules, redaction: &Pdu) -> Result<(), String> {
        let mut content: CanonicalJsonObject =
            serde_json::from_str(self.content.get()).map_err(|e| format!("content is not canonical: {e}"))?;
        redact_content_in_place(&mut content, &rules.redaction, self.kind.to_string());
        self.content = serde_json::value::to_raw_value(&content).map_err(|e| e.to_string())?;
        let because = redaction.to_client_event(None)?;
        self.unsigned.get_or_insert_with(Default::default).insert("redacted_because".to_owned(), because);
        Ok(())
    }

    /// Whether this event has been redacted.
    pub fn is_redacted(&self) -> bool {
        self.unsigned.as_ref().is_some_and(|u| u.contains_key("redacted_because"))
    }

    /// The event in the client-server format. `unsigned` extras (such as `prev_content`) are
    /// merged over what the event carries. Fails (where `json!` would panic) on content
    /// serde_json cannot read into a value, such as content nested 128 levels deep.
    pub fn to_client_event(
        &self,
        extra_unsigned: Option<serde_json::Map<String, JsonValue>>,
    ) -> Result<JsonValue, String> {
        let content: JsonValue =
            serde_json::from_str(self.content.get()).map_err(|e| format!("event content: {e}"))?;
        let mut map = serde_json::Map::new();
        map.insert("content".to_owned(), content);
        map.insert("event_id".to_owned(), self.event_id.as_str().into());
        map.insert("origin_server_ts".to_owned(), u64::from(self.origin_server_ts.get()).into());
        map.insert("room_id".to_owned(), self.room_id.as_str().into());
        map.insert("sender".to_owned(), self.sender.as_str().into());
        map.insert("type".to_owned(), self.kind.to_string().into());
        if let Some(state_key) = &self.state_key {
            map.insert("state_key".to_owned(), state_key.as_str().into());
        }
        if let Some(redacts) = &self.redacts {
            map.insert("redacts".to_owned(), redacts.as_str().into());
        }
        let mut unsigned = self.unsigned.clone().unwrap_or_default();
        unsigned.extend(extra_unsigned.unwrap_or_default());
        if !unsigned.is_empty() {
            map.insert("unsigned".to_owned(), JsonValue::Object(unsigned));
        }
        Ok(JsonValue::Object(map))
    }

    /// The content parsed as a generic JSON object.
    pub fn content_value(&self) -> JsonValue {
        serde_json::from_str(self.content.get()).unwrap_or(JsonValue::Null)
    }

    /// Parse the content into a typed struct (lenient callers treat `Err` as absent).
    pub fn content_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.content.get())
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        // A v12+ create event has no `room_id` on the wire (the room ID is derived from it),
        // and the auth rules reject one that claims to.
        let derived = self.kind == TimelineEventType::RoomCreate && self.room_id.server_name().is_none();
        (!derived).then_some(&*self.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawJsonValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        // Rejected events are never stored, so none is ever handed to the auth rules.
        false
    }
}
