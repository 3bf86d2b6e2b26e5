//! The persistent data unit: an event as the room graph holds it. Building one to a room
//! version's format (hashes, signature, event ID, v12 room IDs), redacting it, and rendering
//! it in the client format. Hashing, signing and redaction are ruma's.
//!
//! The formats by version: in v1 and v2 the origin server picks the event ID
//! (`$opaque:server`), which is a signed field of the event, and `prev_events`/`auth_events`
//! are `[event_id, {"sha256": reference hash}]` pairs; from v3 the event ID is the event's
//! reference hash (standard unpadded base64 in v3, URL-safe from v4) and the references are
//! plain IDs; from v12 the create event's ID is also the room ID.

use std::collections::BTreeMap;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomId, ServerName, UInt, UserId,
    canonical_json::redact_content_in_place,
    events::TimelineEventType,
    room_version_rules::{
        EventIdFormatVersion, EventsReferenceFormatVersion, RoomIdFormatVersion, RoomVersionRules,
    },
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
    /// The signed fields the typed ones do not carry verbatim, kept for federation:
    /// `hashes`, `signatures`, (pre-v11) `origin`, any other top-level field a remote server
    /// signed (legacy `membership`, `prev_state`...), and in v1–v2 the `prev_events` and
    /// `auth_events` as signed (`[event_id, hashes]` pairs; the typed fields hold the IDs).
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
    /// The event's `origin_server_ts` when the sender may choose it (an application
    /// service importing history with `ts`); otherwise the server's clock.
    pub origin_server_ts: Option<u64>,
}

impl EventTemplate {
    pub fn message(kind: impl Into<TimelineEventType>, content: JsonValue) -> Self {
        Self { kind: kind.into(), content, state_key: None, redacts: None, origin_server_ts: None }
    }

    pub fn state(
        kind: impl Into<TimelineEventType>,
        state_key: impl Into<String>,
        content: JsonValue,
    ) -> Self {
        Self {
            kind: kind.into(),
            content,
            state_key: Some(state_key.into()),
            redacts: None,
            origin_server_ts: None,
        }
    }
}

/// The graph position of a new event, chosen by the caller from the room's current state.
pub struct GraphPosition<'a> {
    /// `None` only for the create event of a v12+ room, whose ID derives from its hash.
    pub room_id: Option<&'a RoomId>,
    /// The ID the origin picked, in versions whose event IDs are not hashes (v1, v2, see
    /// [`origin_picks_event_id`]); `None` in the others.
    pub event_id: Option<OwnedEventId>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    /// In v1 and v2, the reference hash of each event in `prev_events` and `auth_events`
    /// ([`Pdu::reference_hash`]), which those versions sign next to the ID. Empty otherwise.
    pub reference_hashes: BTreeMap<OwnedEventId, String>,
    pub depth: UInt,
}

/// Whether the origin server picks the event ID (v1, v2: `$opaque:server`), rather than it
/// being derived from the event's hash. The caller picks it (randomly), so building stays
/// deterministic.
pub fn origin_picks_event_id(rules: &RoomVersionRules) -> bool {
    rules.event_id_format == EventIdFormatVersion::V1
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
    if let (Some(redacts), true) = (&template.redacts, content_field_redacts)
        && let JsonValue::Object(map) = &mut content
    {
        map.insert("redacts".to_owned(), JsonValue::String(redacts.to_string()));
    }
    let invalid = BuildError::Invalid;
    let references = |ids: &[OwnedEventId]| references_json(ids, &position.reference_hashes, rules);
    let mut object = serde_json::json!({
        "auth_events": references(&position.auth_events).map_err(invalid)?,
        "content": content,
        "depth": position.depth,
        "origin_server_ts": origin_server_ts,
        "prev_events": references(&position.prev_events).map_err(invalid)?,
        "sender": sender,
        "type": template.kind,
    });
    let map = object.as_object_mut().expect("json! object literal");
    match (&position.event_id, origin_picks_event_id(rules)) {
        (Some(event_id), true) if event_id.server_name() == Some(origin) => {
            map.insert("event_id".to_owned(), event_id.as_str().into());
        }
        (_, true) => return Err(invalid("this room version needs an event ID of this server".to_owned())),
        (Some(_), false) => {
            return Err(invalid("this room version derives event IDs from the event's hash".to_owned()));
        }
        (None, false) => {}
    }
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
    pdu_from_canonical(canonical, event_id, room_id, rules).map_err(invalid)
}

/// `prev_events` or `auth_events` in the version's format: plain IDs, or in v1–v2
/// `[event_id, {"sha256": reference hash}]` pairs.
fn references_json(
    ids: &[OwnedEventId],
    hashes: &BTreeMap<OwnedEventId, String>,
    rules: &RoomVersionRules,
) -> Result<JsonValue, String> {
    if rules.events_reference_format != EventsReferenceFormatVersion::V1 {
        return Ok(serde_json::json!(ids));
    }
    ids.iter()
        .map(|id| {
            let hash = hashes.get(id).ok_or_else(|| format!("no reference hash for {id}"))?;
            Ok(serde_json::json!([id, { "sha256": hash }]))
        })
        .collect()
}

/// The event ID of a signed event per the room version's format: the `event_id` field the
/// origin picked (v1, v2), or the reference hash (v3+, in the version's base64 alphabet).
pub fn event_id_for(object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId, String> {
    if origin_picks_event_id(rules) {
        return match object.get("event_id") {
            Some(CanonicalJsonValue::String(id)) => EventId::parse(id).map_err(|e| e.to_string()),
            _ => Err("event has no event_id".to_owned()),
        };
    }
    let hash = reference_hash(object, rules).map_err(|e| format!("cannot hash event: {e}"))?;
    EventId::parse(format!("${hash}")).map_err(|e| e.to_string())
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

/// The top-level fields [`Pdu`] holds typed; every other field of a signed event is kept as
/// it was signed in [`Pdu::signed_extras`].
const TYPED_FIELDS: [&str; 12] = [
    "event_id",
    "room_id",
    "sender",
    "origin_server_ts",
    "type",
    "content",
    "state_key",
    "prev_events",
    "auth_events",
    "depth",
    "redacts",
    "unsigned",
];

/// Split a signed canonical object into a [`Pdu`]. Fields the `Pdu` does not type (`hashes`,
/// `signatures`, `origin`, and whatever else a remote server signed, such as the legacy
/// `membership` and `prev_state`) are kept in `signed_extras`, so the event can be served
/// again exactly as signed. `unsigned` is dropped.
pub(crate) fn pdu_from_canonical(
    mut object: CanonicalJsonObject,
    event_id: OwnedEventId,
    room_id: OwnedRoomId,
    rules: &RoomVersionRules,
) -> Result<Pdu, String> {
    object.remove("unsigned");
    // From v11 a redaction's target is in its content; a top-level `redacts` is then just
    // another signed field (the typed one is mirrored from the content below).
    let content_field_redacts = rules.redaction.content_field_redacts;
    let typed = |key: &str| TYPED_FIELDS.contains(&key) && !(content_field_redacts && key == "redacts");
    let extra_keys: Vec<String> = object.keys().filter(|k| !typed(k)).cloned().collect();
    let mut signed_extras = BTreeMap::new();
    for key in extra_keys {
        if let Some(value) = object.remove(&key) {
            signed_extras.insert(key, JsonValue::from(value));
        }
    }
    let mut value = JsonValue::from(CanonicalJsonValue::Object(object));
    let map = value.as_object_mut().ok_or("event is not an object")?;
    if rules.events_reference_format == EventsReferenceFormatVersion::V1 {
        // The pairs are kept as signed; the typed fields get the IDs.
        for key in ["prev_events", "auth_events"] {
            let pairs = map.remove(key).unwrap_or(JsonValue::Array(Vec::new()));
            let ids = pairs
                .as_array()
                .ok_or_else(|| format!("{key} is not a list"))?
                .iter()
                .map(|pair| pair.get(0).cloned().ok_or_else(|| format!("{key} holds a malformed reference")))
                .collect::<Result<Vec<_>, _>>()?;
            map.insert(key.to_owned(), JsonValue::Array(ids));
            signed_extras.insert(key.to_owned(), pairs);
        }
    }
    map.insert("event_id".to_owned(), event_id.as_str().into());
    map.insert("room_id".to_owned(), room_id.as_str().into());
    // Only a redaction names its target: `redacts` in another event's content is just content.
    if map.get("redacts").is_none()
        && map.get("type").and_then(JsonValue::as_str) == Some("m.room.redaction")
        && let Some(redacts) = map.get("content").and_then(|c| c.get("redacts")).cloned()
    {
        map.insert("redacts".to_owned(), redacts);
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
        if !origin_picks_event_id(rules) {
            map.remove("event_id");
        }
        map.remove("unsigned");
        if rules.redaction.content_field_redacts {
            // The typed copy of `content.redacts`; a signed top-level one is among the extras.
            map.remove("redacts");
        }
        let extras = map.remove("signed_extras");
        if let Some(JsonValue::Object(extras)) = extras {
            map.extend(extras);
        }
        if self.kind == TimelineEventType::RoomCreate && rules.authorization.room_create_event_id_as_room_id {
            map.remove("room_id");
        }
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    /// The event's reference hash (what v1–v2 events sign next to the IDs they cite, and
    /// what v3+ event IDs are made of).
    pub fn reference_hash(&self, rules: &RoomVersionRules) -> Result<String, String> {
        reference_hash(&self.to_federation_object(rules)?, rules)
            .map_err(|e| format!("cannot hash event: {e}"))
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

    /// The event in the client-server format as JSON text, written without parsing its
    /// content (the same object as [`Self::to_client_event`], keys in sorted order);
    /// `with_room_id` false leaves `room_id` out, as sync does.
    pub fn to_client_raw(
        &self,
        with_room_id: bool,
        extra_unsigned: Option<serde_json::Map<String, JsonValue>>,
    ) -> Result<Box<serde_json::value::RawValue>, String> {
        #[derive(Serialize)]
        struct ClientEvent<'a> {
            content: &'a serde_json::value::RawValue,
            event_id: &'a EventId,
            origin_server_ts: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            redacts: Option<&'a EventId>,
            #[serde(skip_serializing_if = "Option::is_none")]
            room_id: Option<&'a RoomId>,
            sender: &'a UserId,
            #[serde(skip_serializing_if = "Option::is_none")]
            state_key: Option<&'a str>,
            #[serde(rename = "type")]
            kind: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            unsigned: Option<serde_json::Map<String, JsonValue>>,
        }
        let unsigned = match (&self.unsigned, extra_unsigned) {
            (Some(own), Some(extra)) => {
                let mut merged = own.clone();
                merged.extend(extra);
                Some(merged)
            }
            (None, extra) => extra,
            (Some(own), None) => Some(own.clone()),
        };
        let event = ClientEvent {
            content: &self.content,
            event_id: &self.event_id,
            origin_server_ts: u64::from(self.origin_server_ts.get()),
            redacts: self.redacts.as_deref(),
            room_id: with_room_id.then_some(&*self.room_id),
            sender: &self.sender,
            state_key: self.state_key.as_deref(),
            kind: self.kind.to_string(),
            unsigned: unsigned.filter(|u| !u.is_empty()),
        };
        // Written once, not parsed again.
        serde_json::value::to_raw_value(&event).map_err(|e| e.to_string())
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

/// Event IDs, reference formats and the redaction algorithm, per room version. The event IDs
/// are checked against a reference hash computed here from the spec's steps, not ruma's.
#[cfg(test)]
mod tests {
    use base64::{
        Engine,
        engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD},
    };
    use ruma::{
        RoomVersionId,
        canonical_json::redact,
        room_id,
        serde::Base64,
        server_name,
        signatures::{PublicKeyMap, Verified, verify_event},
        user_id,
    };
    use serde_json::json;
    use sha2::{Digest, Sha256};

    use super::*;
    use crate::matrix::room_version::SUPPORTED;

    const ORIGIN: &str = "example.org";

    fn key() -> Ed25519KeyPair {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "t".into()).unwrap()
    }

    fn number(version: &RoomVersionId) -> u32 {
        version.as_str().parse().unwrap()
    }

    /// Build `template` at depth `depth`, citing `cited` as both prev and auth events.
    fn build(
        rules: &RoomVersionRules,
        key: &Ed25519KeyPair,
        template: &EventTemplate,
        room_id: Option<&RoomId>,
        event_id: &str,
        cited: &[&Pdu],
    ) -> Result<Pdu, BuildError> {
        let ids: Vec<OwnedEventId> = cited.iter().map(|p| p.event_id.clone()).collect();
        let reference_hashes = cited
            .iter()
            .filter(|_| origin_picks_event_id(rules))
            .map(|p| (p.event_id.clone(), p.reference_hash(rules).unwrap()))
            .collect();
        build_pdu(
            rules,
            server_name!("example.org"),
            key,
            user_id!("@alice:example.org"),
            MilliSecondsSinceUnixEpoch(UInt::from(1_000u32)),
            template,
            GraphPosition {
                room_id,
                event_id: origin_picks_event_id(rules).then(|| EventId::parse(event_id).unwrap()),
                prev_events: ids.clone(),
                auth_events: ids,
                reference_hashes,
                depth: UInt::from(cited.len() as u32 + 1),
            },
        )
    }

    /// A create event and a message citing it, as the server would build them.
    fn create_and_message(version: &RoomVersionId, key: &Ed25519KeyPair) -> (Pdu, Pdu) {
        let rules = version.rules().unwrap();
        let mut content = json!({ "room_version": version });
        if !rules.authorization.use_room_create_sender {
            content["creator"] = json!("@alice:example.org");
        }
        let create_template = EventTemplate::state("m.room.create", "", content);
        let chosen_room = room_id!("!room:example.org");
        let room_id = (!rules.authorization.room_create_event_id_as_room_id).then_some(chosen_room);
        let create = build(&rules, key, &create_template, room_id, "$create:example.org", &[]).unwrap();
        let message = EventTemplate::message("m.room.message", json!({ "body": "hi" }));
        let message =
            build(&rules, key, &message, Some(&create.room_id), "$message:example.org", &[&create]).unwrap();
        (create, message)
    }

    /// The reference hash by the spec's steps: redact, drop `signatures` and `unsigned`,
    /// canonical JSON, SHA-256, unpadded base64 in the version's alphabet.
    fn spec_reference_hash(object: &CanonicalJsonObject, version: &RoomVersionId) -> String {
        let rules = version.rules().unwrap();
        let mut redacted = redact(object.clone(), &rules.redaction, None).unwrap();
        redacted.remove("signatures");
        redacted.remove("unsigned");
        let digest = Sha256::digest(CanonicalJsonValue::Object(redacted).to_string().as_bytes());
        if number(version) <= 3 { STANDARD_NO_PAD.encode(digest) } else { URL_SAFE_NO_PAD.encode(digest) }
    }

    fn public_keys(key: &Ed25519KeyPair) -> PublicKeyMap {
        let set = BTreeMap::from([("ed25519:t".to_owned(), Base64::new(key.public_key().to_vec()))]);
        PublicKeyMap::from([(ORIGIN.to_owned(), set)])
    }

    #[test]
    fn event_ids_and_references_follow_each_versions_format() {
        let key = key();
        for version in SUPPORTED {
            let rules = version.rules().unwrap();
            let (create, message) = create_and_message(&version, &key);
            let object = message.to_federation_object(&rules).unwrap();
            let verified = verify_event(&public_keys(&key), &object, &rules);
            assert!(matches!(verified, Ok(Verified::All)), "v{version}: {verified:?}");
            let hash = spec_reference_hash(&object, &version);
            assert_eq!(message.reference_hash(&rules).unwrap(), hash, "v{version}");
            assert_eq!(message.prev_events, std::slice::from_ref(&create.event_id), "v{version}");
            let as_json = JsonValue::from(CanonicalJsonValue::Object(object.clone()));
            match number(&version) {
                1 | 2 => {
                    // The origin's ID, signed as part of the event; references are pairs.
                    assert_eq!(message.event_id, "$message:example.org");
                    assert_eq!(as_json["event_id"], "$message:example.org", "v{version}");
                    let create_hash = create.reference_hash(&rules).unwrap();
                    let pair = json!([[create.event_id, { "sha256": create_hash }]]);
                    assert_eq!(as_json["prev_events"], pair, "v{version}");
                    assert_eq!(as_json["auth_events"], pair, "v{version}");
                    let mut renamed = object.clone();
                    renamed.insert("event_id".to_owned(), "$other:example.org".to_owned().into());
                    assert!(verify_event(&public_keys(&key), &renamed, &rules).is_err(), "v{version}");
                }
                3 => {
                    // Standard base64 (`spec_reference_hash` picks the alphabet by version).
                    assert_eq!(message.event_id.as_str(), format!("${hash}"));
                    assert!(as_json.get("event_id").is_none());
                    assert_eq!(as_json["prev_events"], json!([create.event_id]));
                }
                _ => {
                    // URL-safe: no `/` or `+` to escape in paths.
                    assert_eq!(message.event_id.as_str(), format!("${hash}"), "v{version}");
                    assert!(!hash.contains(['/', '+']), "v{version}");
                    assert!(as_json.get("event_id").is_none(), "v{version}");
                    assert_eq!(as_json["prev_events"], json!([create.event_id]), "v{version}");
                }
            }
            // v12 create events are the room ID; before, the room ID is the one chosen.
            let derived = create.room_id.as_str() == format!("!{}", &create.event_id.as_str()[1..]);
            assert_eq!(derived, number(&version) >= 12, "v{version}");

            // What is stored reads back to the same signed event.
            let stored: Pdu = serde_json::from_value(serde_json::to_value(&message).unwrap()).unwrap();
            assert_eq!(stored.to_federation_object(&rules).unwrap(), object, "v{version}");
        }
    }

    #[test]
    fn event_ids_come_from_the_right_source() {
        let key = key();
        let message = EventTemplate::message("m.room.message", json!({ "body": "hi" }));
        let room = room_id!("!room:example.org");
        let v1 = RoomVersionId::V1.rules().unwrap();
        let v3 = RoomVersionId::V3.rules().unwrap();
        let (create, _) = create_and_message(&RoomVersionId::V1, &key);
        // v1 needs an ID of this server, and a reference hash for each cited event.
        let position = |event_id: Option<&str>, hashes: bool| GraphPosition {
            room_id: Some(room),
            event_id: event_id.map(|id| EventId::parse(id).unwrap()),
            prev_events: vec![create.event_id.clone()],
            auth_events: vec![],
            reference_hashes: if hashes {
                BTreeMap::from([(create.event_id.clone(), create.reference_hash(&v1).unwrap())])
            } else {
                BTreeMap::new()
            },
            depth: UInt::from(2u32),
        };
        let sender = user_id!("@alice:example.org");
        let ts = MilliSecondsSinceUnixEpoch(UInt::from(1u32));
        let origin = server_name!("example.org");
        let attempt = |rules: &RoomVersionRules, event_id: Option<&str>, hashes: bool| {
            build_pdu(rules, origin, &key, sender, ts, &message, position(event_id, hashes)).is_ok()
        };
        assert!(attempt(&v1, Some("$ok:example.org"), true));
        assert!(!attempt(&v1, None, true), "v1 without an ID");
        assert!(!attempt(&v1, Some("$ok:elsewhere.org"), true), "v1 with another server's ID");
        assert!(!attempt(&v1, Some("$ok:example.org"), false), "v1 without reference hashes");
        assert!(!attempt(&v3, Some("$ok:example.org"), false), "v3 derives its ID");
        assert!(attempt(&v3, None, false));
    }

    #[test]
    fn content_must_be_canonical_json_in_every_version() {
        let key = key();
        for version in SUPPORTED {
            let rules = version.rules().unwrap();
            let room = Some(room_id!("!room:example.org"));
            for content in [json!({ "n": 1.5 }), json!({ "n": 9_007_199_254_740_992_u64 })] {
                let template = EventTemplate::message("m.room.message", content.clone());
                let built = build(&rules, &key, &template, room, "$e:example.org", &[]);
                assert!(matches!(built, Err(BuildError::Invalid(_))), "{content} in v{version}");
            }
        }
    }

    #[test]
    fn redaction_keeps_what_each_version_keeps() {
        let key = key();
        let alice = "@alice:example.org";
        // (type, content, the content kept in version n)
        type Kept = fn(u32) -> JsonValue;
        let cases: [(&str, JsonValue, Kept); 8] = [
            ("m.room.message", json!({ "body": "secret", "msgtype": "m.text" }), |_| json!({})),
            ("m.room.aliases", json!({ "aliases": ["#a:example.org"] }), |n| {
                if n <= 5 { json!({ "aliases": ["#a:example.org"] }) } else { json!({}) }
            }),
            (
                "m.room.create",
                json!({ "creator": "@alice:example.org", "room_version": "1", "m.federate": false }),
                |n| {
                    if n <= 10 {
                        json!({ "creator": "@alice:example.org" })
                    } else {
                        json!({ "creator": "@alice:example.org", "room_version": "1", "m.federate": false })
                    }
                },
            ),
            (
                "m.room.join_rules",
                json!({ "join_rule": "restricted", "allow": [{ "type": "m.room_membership" }] }),
                |n| {
                    if n <= 7 {
                        json!({ "join_rule": "restricted" })
                    } else {
                        json!({ "join_rule": "restricted", "allow": [{ "type": "m.room_membership" }] })
                    }
                },
            ),
            (
                "m.room.power_levels",
                json!({ "ban": 50, "invite": 0, "notifications": { "room": 50 }, "users": {} }),
                |n| {
                    if n <= 10 {
                        json!({ "ban": 50, "users": {} })
                    } else {
                        json!({ "ban": 50, "invite": 0, "users": {} })
                    }
                },
            ),
            (
                "m.room.member",
                json!({ "membership": "join", "displayname": "A", "join_authorised_via_users_server": "@bob:example.org" }),
                |n| {
                    if n <= 8 {
                        json!({ "membership": "join" })
                    } else {
                        json!({ "membership": "join", "join_authorised_via_users_server": "@bob:example.org" })
                    }
                },
            ),
            (
                "m.room.history_visibility",
                json!({ "history_visibility": "shared", "extra": 1 }),
                |_| json!({ "history_visibility": "shared" }),
            ),
            ("m.room.topic", json!({ "topic": "t" }), |_| json!({})),
        ];
        for version in SUPPORTED {
            let rules = version.rules().unwrap();
            let room = Some(room_id!("!room:example.org"));
            let redaction_template = EventTemplate {
                kind: TimelineEventType::RoomRedaction,
                content: json!({ "reason": "r" }),
                state_key: None,
                redacts: Some(EventId::parse("$target:example.org").unwrap()),
                origin_server_ts: None,
            };
            let redaction = build(&rules, &key, &redaction_template, room, "$r:example.org", &[]).unwrap();
            for (kind, content, kept) in &cases {
                let key_of = if *kind == "m.room.member" { alice } else { "" };
                let template = if *kind == "m.room.message" {
                    EventTemplate::message(*kind, content.clone())
                } else {
                    EventTemplate::state(*kind, key_of, content.clone())
                };
                // A v12 create event names no room: its ID becomes the room's.
                let derived_room =
                    *kind == "m.room.create" && rules.authorization.room_create_event_id_as_room_id;
                let room = if derived_room { None } else { room };
                let mut pdu = build(&rules, &key, &template, room, "$e:example.org", &[]).unwrap();
                let signed = pdu.to_federation_object(&rules).unwrap();
                pdu.redact(&rules, &redaction).unwrap();
                assert_eq!(pdu.content_value(), kept(number(&version)), "{kind} in v{version}");
                assert!(pdu.is_redacted());
                // The hashes and signatures stay: the signatures cover the redacted form.
                let verified =
                    verify_event(&public_keys(&key), &pdu.to_federation_object(&rules).unwrap(), &rules);
                assert!(verified.is_ok(), "{kind} in v{version}: {verified:?}");
                assert_eq!(pdu.reference_hash(&rules).unwrap(), spec_reference_hash(&signed, &version));
            }
            // A redaction keeps `redacts` in its content from v11, where it moved there.
            let mut redacted_redaction = redaction.clone();
            redacted_redaction.redact(&rules, &redaction).unwrap();
            let kept =
                if number(&version) >= 11 { json!({ "redacts": "$target:example.org" }) } else { json!({}) };
            assert_eq!(redacted_redaction.content_value(), kept, "v{version}");
            assert_eq!(
                redacted_redaction.redacts.as_ref().map(|id| id.as_str()),
                Some("$target:example.org")
            );
        }
    }
}
