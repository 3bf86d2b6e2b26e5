//! Check 1 on receipt of a PDU: "Is a valid event, otherwise it is dropped" — the event format
//! of the room version (`/rooms/v*` "Event format", the `pdu_v*` schemas), the size limits
//! ("Size limits" of room events) and canonical JSON (`/appendices#canonical-json`).
//!
//! What is checked, in this order, each failure a [`FormatError`] naming the check:
//! - the text is a JSON object nested at most [`MAX_JSON_DEPTH`] deep (a bound of this server:
//!   deeper content breaks clients reading it back, see `matrix::limits`);
//! - canonical JSON: no floats, integers within ±(2^53 − 1) (enforced in every room version:
//!   v1–v5 tolerated floats, but no event of this server's can hold one);
//! - `unsigned` is dropped (it is not signed and the origin's is not ours to pass on), and so
//!   is `event_id` from v3 on, where the ID is the reference hash and the field is not part of
//!   the format;
//! - the rest, as canonical JSON, is at most 65,536 bytes;
//! - the fields of the format with their types: `type`, `state_key`, `sender`, `room_id`,
//!   `origin_server_ts`, `depth` (non-negative), `content`, `hashes.sha256`, `signatures`,
//!   `prev_events` (≤ 20) and `auth_events` (≤ 10) in the version's reference format;
//! - the size of each ID and key: `type`, `state_key`, `sender`, `room_id`, `event_id` and
//!   every cited event ID at most 255 bytes;
//! - the ID formats: v1–v2 event IDs name a server, v3+ cited IDs are hash-shaped (`$` and 43
//!   characters of the version's base64 alphabet); v1–v11 room IDs name a server; in v12 a
//!   create event has no `room_id` (its room ID is its own event ID with `!`) and every other
//!   event's room ID is hash-shaped;
//! - the event ID: the `event_id` field in v1–v2, the reference hash from v3.
//!
//! Nothing here can panic on input: every access is checked, and ruma's hashing is given only
//! objects that passed the checks above.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, RoomId, UserId,
    room_version_rules::{
        EventIdFormatVersion, EventsReferenceFormatVersion, RoomIdFormatVersion, RoomVersionRules,
    },
};
use serde_json::Value as JsonValue;

use crate::matrix::{
    limits::{MAX_EVENT_TYPE_BYTES, MAX_JSON_DEPTH, MAX_STATE_KEY_BYTES, json_too_deep},
    pdu::{MAX_PDU_BYTES, MAX_PREV_EVENTS, Pdu, event_id_for, pdu_from_canonical},
};

/// The most `auth_events` a PDU may cite (the `pdu_v*` schemas: "less than or equal to 10").
pub const MAX_AUTH_EVENTS: usize = 10;
/// The longest user, room or event ID, in bytes (`/appendices`, the identifier grammars).
pub const MAX_ID_BYTES: usize = 255;
/// The longest text read at all. The canonical form is what the 65,536-byte limit applies to
/// and may be shorter than the text (whitespace), but no honest server pads an event 16-fold;
/// this bounds the work done before the exact check.
const MAX_TEXT_BYTES: usize = 16 * MAX_PDU_BYTES;
/// The length of an unpadded base64 SHA-256 hash, as in v3+ event IDs and v12 room IDs.
const HASH_CHARS: usize = 43;

/// Which format check a PDU failed. Any of them means the PDU is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("JSON nested deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep,
    #[error("not canonical JSON: {0}")]
    NotCanonical(String),
    #[error("the event is {0} bytes as canonical JSON, over the limit of {MAX_PDU_BYTES}")]
    TooLarge(usize),
    #[error("missing field `{0}`")]
    Missing(&'static str),
    #[error("`{field}` must be {expected}")]
    WrongType { field: &'static str, expected: &'static str },
    #[error("`{field}` is {bytes} bytes, over the limit of {limit}")]
    TooLong { field: &'static str, bytes: usize, limit: usize },
    #[error("{0} prev_events, over the limit of {MAX_PREV_EVENTS}")]
    TooManyPrevEvents(usize),
    #[error("{0} auth_events, over the limit of {MAX_AUTH_EVENTS}")]
    TooManyAuthEvents(usize),
    #[error("`{field}` is not a valid {kind} for this room version")]
    InvalidId { field: &'static str, kind: &'static str },
    #[error("a create event in this room version must not have a `room_id`")]
    CreateWithRoomId,
    #[error("the event ID cannot be computed: {0}")]
    EventId(String),
    #[error("malformed event: {0}")]
    Malformed(String),
}

/// A PDU as received, past the format checks: the signed object (without `unsigned`, and
/// without `event_id` from v3) with the event ID and room ID it stands for. Signatures and
/// hashes are not checked yet ([`super::verify`]).
#[derive(Clone, Debug, PartialEq)]
pub struct WirePdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub object: CanonicalJsonObject,
}

impl WirePdu {
    /// The event in the server's shape. Every field the server does not type (such as `origin`
    /// or legacy `membership`) is kept, so [`Pdu::to_federation_object`] gives back `object`.
    pub fn into_pdu(self, rules: &RoomVersionRules) -> Result<Pdu, FormatError> {
        pdu_from_canonical(self.object, self.event_id, self.room_id, rules).map_err(FormatError::Malformed)
    }
}

/// The room a PDU claims to be in, read without any other check, so the caller can find the
/// room's version before calling [`parse_pdu`] (a v12 create event names none).
pub fn claimed_room_id(json: &str) -> Option<OwnedRoomId> {
    #[derive(serde::Deserialize)]
    struct RoomOnly {
        room_id: Option<String>,
    }
    if json.len() > MAX_TEXT_BYTES || json_too_deep(json.as_bytes(), MAX_JSON_DEPTH) {
        return None;
    }
    let room: RoomOnly = serde_json::from_str(json).ok()?;
    RoomId::parse(room.room_id?).ok()
}

/// Parse and check a PDU received over federation, as text, in a room of version `rules`.
pub fn parse_pdu(json: &str, rules: &RoomVersionRules) -> Result<WirePdu, FormatError> {
    if json.len() > MAX_TEXT_BYTES {
        return Err(FormatError::TooLarge(json.len()));
    }
    if json_too_deep(json.as_bytes(), MAX_JSON_DEPTH) {
        return Err(FormatError::TooDeep);
    }
    let value: JsonValue = serde_json::from_str(json).map_err(|e| FormatError::NotJson(e.to_string()))?;
    if !value.is_object() {
        return Err(FormatError::NotJson("not an object".to_owned()));
    }
    let object = match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(object)) => object,
        Ok(_) => return Err(FormatError::NotJson("not an object".to_owned())),
        Err(e) => return Err(FormatError::NotCanonical(e.to_string())),
    };
    check_object(object, rules)
}

/// The checks of [`parse_pdu`] on an object already held as canonical JSON (an event this
/// server signed, or one fetched and parsed by ruma).
pub fn check_object(object: CanonicalJsonObject, rules: &RoomVersionRules) -> Result<WirePdu, FormatError> {
    check_fields(object, rules, true)
}

/// The event ID of a PDU [`parse_pdu`] refused as [`FormatError::TooLarge`] that is otherwise
/// well formed, so the answer to its transaction can name it; `None` for text past the
/// 16-fold bound (never read) or an event with any other fault.
pub fn oversized_event_id(json: &str, rules: &RoomVersionRules) -> Option<OwnedEventId> {
    if json.len() > MAX_TEXT_BYTES || json_too_deep(json.as_bytes(), MAX_JSON_DEPTH) {
        return None;
    }
    let value: JsonValue = serde_json::from_str(json).ok()?;
    let Ok(CanonicalJsonValue::Object(object)) = CanonicalJsonValue::try_from(value) else { return None };
    check_fields(object, rules, false).ok().map(|wire| wire.event_id)
}

/// The format checks, the size limit among them when `limit_size`.
fn check_fields(
    mut object: CanonicalJsonObject,
    rules: &RoomVersionRules,
    limit_size: bool,
) -> Result<WirePdu, FormatError> {
    object.remove("unsigned");
    let origin_picks_id = rules.event_id_format == EventIdFormatVersion::V1;
    if !origin_picks_id {
        object.remove("event_id");
    }
    if limit_size {
        let size = CanonicalJsonValue::Object(object.clone()).to_string().len();
        if size > MAX_PDU_BYTES {
            return Err(FormatError::TooLarge(size));
        }
    }

    let kind = required_string(&object, "type")?;
    check_len("type", kind, MAX_EVENT_TYPE_BYTES)?;
    match object.get("state_key") {
        None => {}
        Some(CanonicalJsonValue::String(key)) => check_len("state_key", key, MAX_STATE_KEY_BYTES)?,
        Some(_) => return Err(wrong_type("state_key", "a string")),
    }
    let sender = required_string(&object, "sender")?;
    check_len("sender", sender, MAX_ID_BYTES)?;
    UserId::parse(sender).map_err(|_| FormatError::InvalidId { field: "sender", kind: "user ID" })?;
    non_negative_integer(&object, "origin_server_ts")?;
    non_negative_integer(&object, "depth")?;
    match object.get("content") {
        Some(CanonicalJsonValue::Object(_)) => {}
        Some(_) => return Err(wrong_type("content", "an object")),
        None => return Err(FormatError::Missing("content")),
    }
    check_hashes(&object)?;
    check_signatures(&object)?;
    let prev = references(&object, "prev_events", rules)?;
    if prev > MAX_PREV_EVENTS {
        return Err(FormatError::TooManyPrevEvents(prev));
    }
    let auth = references(&object, "auth_events", rules)?;
    if auth > MAX_AUTH_EVENTS {
        return Err(FormatError::TooManyAuthEvents(auth));
    }
    if let (Some(redacts), false) = (object.get("redacts"), rules.redaction.content_field_redacts) {
        let CanonicalJsonValue::String(redacts) = redacts else {
            return Err(wrong_type("redacts", "a string"));
        };
        check_event_id("redacts", redacts, rules)?;
    }
    if origin_picks_id {
        let id = required_string(&object, "event_id")?;
        check_event_id("event_id", id, rules)?;
    }

    let is_create = kind == "m.room.create";
    let derived_room = is_create && rules.room_id_format == RoomIdFormatVersion::V2;
    let claimed_room = match object.get("room_id") {
        None if derived_room => None,
        None => return Err(FormatError::Missing("room_id")),
        Some(_) if derived_room => return Err(FormatError::CreateWithRoomId),
        Some(CanonicalJsonValue::String(room)) => Some(check_room_id(room, rules)?),
        Some(_) => return Err(wrong_type("room_id", "a string")),
    };

    let event_id = event_id_for(&object, rules).map_err(FormatError::EventId)?;
    let room_id = match claimed_room {
        Some(room) => room,
        None => {
            let hash = event_id.as_str().trim_start_matches('$');
            RoomId::new_v2(hash).map_err(|e| FormatError::EventId(e.to_string()))?
        }
    };
    Ok(WirePdu { event_id, room_id, object })
}

fn wrong_type(field: &'static str, expected: &'static str) -> FormatError {
    FormatError::WrongType { field, expected }
}

fn required_string<'a>(object: &'a CanonicalJsonObject, field: &'static str) -> Result<&'a str, FormatError> {
    match object.get(field) {
        Some(CanonicalJsonValue::String(value)) => Ok(value),
        Some(_) => Err(wrong_type(field, "a string")),
        None => Err(FormatError::Missing(field)),
    }
}

fn check_len(field: &'static str, value: &str, limit: usize) -> Result<(), FormatError> {
    if value.len() > limit { Err(FormatError::TooLong { field, bytes: value.len(), limit }) } else { Ok(()) }
}

fn non_negative_integer(object: &CanonicalJsonObject, field: &'static str) -> Result<(), FormatError> {
    match object.get(field) {
        Some(CanonicalJsonValue::Integer(n)) if i64::from(*n) >= 0 => Ok(()),
        Some(_) => Err(wrong_type(field, "a non-negative integer")),
        None => Err(FormatError::Missing(field)),
    }
}

/// `hashes` must hold a `sha256` string (whether it matches is [`super::verify`]'s check).
fn check_hashes(object: &CanonicalJsonObject) -> Result<(), FormatError> {
    match object.get("hashes") {
        Some(CanonicalJsonValue::Object(hashes)) => match hashes.get("sha256") {
            Some(CanonicalJsonValue::String(_)) => Ok(()),
            Some(_) => Err(wrong_type("hashes.sha256", "a string")),
            None => Err(FormatError::Missing("hashes.sha256")),
        },
        Some(_) => Err(wrong_type("hashes", "an object")),
        None => Err(FormatError::Missing("hashes")),
    }
}

/// `signatures`: server name → key ID → signature, all strings.
fn check_signatures(object: &CanonicalJsonObject) -> Result<(), FormatError> {
    let Some(signatures) = object.get("signatures") else {
        return Err(FormatError::Missing("signatures"));
    };
    let CanonicalJsonValue::Object(servers) = signatures else {
        return Err(wrong_type("signatures", "an object"));
    };
    for keys in servers.values() {
        let CanonicalJsonValue::Object(keys) = keys else {
            return Err(wrong_type("signatures", "server names mapping to objects"));
        };
        if !keys.values().all(|s| matches!(s, CanonicalJsonValue::String(_))) {
            return Err(wrong_type("signatures", "key IDs mapping to strings"));
        }
    }
    Ok(())
}

/// Check the list `field` in the version's reference format and return its length: plain
/// event IDs, or in v1–v2 `[event_id, {"sha256": hash}]` pairs.
fn references(
    object: &CanonicalJsonObject,
    field: &'static str,
    rules: &RoomVersionRules,
) -> Result<usize, FormatError> {
    let Some(value) = object.get(field) else {
        return Err(FormatError::Missing(field));
    };
    let CanonicalJsonValue::Array(items) = value else {
        return Err(wrong_type(field, "a list"));
    };
    let pairs = rules.events_reference_format == EventsReferenceFormatVersion::V1;
    for item in items {
        let id = match (item, pairs) {
            (CanonicalJsonValue::String(id), false) => id,
            (CanonicalJsonValue::Array(pair), true) => match pair.as_slice() {
                [CanonicalJsonValue::String(id), CanonicalJsonValue::Object(hashes)]
                    if matches!(hashes.get("sha256"), Some(CanonicalJsonValue::String(_))) =>
                {
                    id
                }
                _ => return Err(wrong_type(field, "a list of [event ID, {\"sha256\": hash}] pairs")),
            },
            (_, false) => return Err(wrong_type(field, "a list of event IDs")),
            (_, true) => return Err(wrong_type(field, "a list of [event ID, {\"sha256\": hash}] pairs")),
        };
        check_event_id(field, id, rules)?;
    }
    Ok(items.len())
}

/// An event ID of the version's format: `$opaque:server` in v1–v2, else a reference hash.
fn check_event_id(
    field: &'static str,
    id: &str,
    rules: &RoomVersionRules,
) -> Result<OwnedEventId, FormatError> {
    check_len(field, id, MAX_ID_BYTES)?;
    let invalid = FormatError::InvalidId { field, kind: "event ID" };
    let parsed = EventId::parse(id).map_err(|_| invalid.clone())?;
    let well_formed = match rules.event_id_format {
        EventIdFormatVersion::V1 => parsed.server_name().is_some(),
        EventIdFormatVersion::V2 => is_hash(&id[1..], false),
        _ => is_hash(&id[1..], true),
    };
    if well_formed { Ok(parsed) } else { Err(invalid) }
}

/// A room ID of the version's format: `!opaque:server` before v12, a hash from v12.
fn check_room_id(id: &str, rules: &RoomVersionRules) -> Result<OwnedRoomId, FormatError> {
    check_len("room_id", id, MAX_ID_BYTES)?;
    let invalid = FormatError::InvalidId { field: "room_id", kind: "room ID" };
    let parsed = RoomId::parse(id).map_err(|_| invalid.clone())?;
    let well_formed = match rules.room_id_format {
        RoomIdFormatVersion::V1 => parsed.server_name().is_some(),
        _ => is_hash(&id[1..], true),
    };
    if well_formed { Ok(parsed) } else { Err(invalid) }
}

/// Whether `text` is an unpadded base64 SHA-256 hash, URL-safe or standard alphabet.
fn is_hash(text: &str, url_safe: bool) -> bool {
    let (a, b) = if url_safe { (b'-', b'_') } else { (b'+', b'/') };
    text.len() == HASH_CHARS && text.bytes().all(|c| c.is_ascii_alphanumeric() || c == a || c == b)
}

#[cfg(test)]
mod tests {
    use ruma::{RoomVersionId, canonical_json::CanonicalJsonValue};
    use serde_json::json;

    use super::*;
    use crate::matrix::{federation::testing::Builder, room_version::SUPPORTED};

    fn v(version: RoomVersionId) -> RoomVersionRules {
        version.rules().unwrap()
    }

    /// A signed message of `version` as JSON, from the test builder.
    fn message(version: &RoomVersionId) -> (Builder, JsonValue) {
        let mut builder = Builder::new(version);
        let event = builder.message("hi");
        let json = builder.wire_json(&event);
        (builder, json)
    }

    fn parse(json: &JsonValue, version: &RoomVersionId) -> Result<WirePdu, FormatError> {
        parse_pdu(&json.to_string(), &v(version.clone()))
    }

    #[test]
    fn events_the_server_builds_parse_back_in_every_version() {
        for version in SUPPORTED {
            let mut builder = Builder::new(&version);
            let create = builder.create.clone();
            let event = builder.message("hi");
            for pdu in [&create, &event] {
                let json = builder.wire_json(pdu);
                let wire = parse(&json, &version).unwrap_or_else(|e| panic!("v{version}: {e}"));
                assert_eq!(wire.event_id, pdu.event_id, "v{version}");
                assert_eq!(wire.room_id, pdu.room_id, "v{version}");
                let back = wire.clone().into_pdu(&builder.rules).unwrap();
                assert_eq!(back.to_federation_object(&builder.rules).unwrap(), wire.object, "v{version}");
            }
        }
    }

    #[test]
    fn unsigned_is_dropped_and_v3_event_ids_are_derived() {
        for version in [RoomVersionId::V1, RoomVersionId::V3, RoomVersionId::V11] {
            let (_, mut json) = message(&version);
            let expected = parse(&json, &version).unwrap();
            json["unsigned"] = json!({ "age": 5, "big": "x".repeat(MAX_PDU_BYTES) });
            if version != RoomVersionId::V1 {
                json["event_id"] = json!("$forged:elsewhere.example");
            }
            assert_eq!(parse(&json, &version).unwrap(), expected, "v{version}");
        }
    }

    #[test]
    fn unknown_top_level_fields_are_kept_for_the_hashes() {
        // Legacy `membership` and `prev_state` are signed fields of v1–v10 events.
        let version = RoomVersionId::V10;
        let mut builder = Builder::new(&version);
        let mut object = builder.unsigned_object(json!({ "body": "x" }), "m.room.message", None);
        object.insert("prev_state".to_owned(), CanonicalJsonValue::Array(vec![]));
        let json = builder.sign_object(object);
        let wire = parse(&json, &version).unwrap();
        let pdu = wire.clone().into_pdu(&builder.rules).unwrap();
        let back = pdu.to_federation_object(&builder.rules).unwrap();
        assert_eq!(back, wire.object);
        assert!(back.contains_key("prev_state"));

        // From v11 a top-level `redacts` is an ordinary signed field; the target a redaction
        // names is the one in its content.
        let version = RoomVersionId::V11;
        let mut builder = Builder::new(&version);
        let content = json!({ "redacts": builder.create.event_id });
        let mut object = builder.unsigned_object(content, "m.room.redaction", None);
        object.insert("redacts".to_owned(), CanonicalJsonValue::String("$elsewhere:example.org".to_owned()));
        let json = builder.sign_object(object);
        let wire = parse(&json, &version).unwrap();
        let pdu = wire.clone().into_pdu(&builder.rules).unwrap();
        assert_eq!(pdu.redacts.as_ref(), Some(&builder.create.event_id));
        assert_eq!(pdu.to_federation_object(&builder.rules).unwrap(), wire.object);
    }

    #[test]
    fn floats_and_big_integers_are_not_canonical() {
        for content in [
            r#"{"n": 1.5}"#,
            r#"{"n": 1e3}"#,
            r#"{"n": 9007199254740992}"#,
            r#"{"n": -9007199254740992}"#,
            r#"{"n": 18446744073709551616}"#,
        ] {
            for version in [RoomVersionId::V1, RoomVersionId::V6, RoomVersionId::V12] {
                let (_, json) = message(&version);
                let text = json
                    .to_string()
                    .replace(r#""content":{"body":"hi"}"#, &format!(r#""content":{content}"#));
                assert!(text.contains(content), "{text}");
                let result = parse_pdu(&text, &v(version.clone()));
                assert!(
                    matches!(result, Err(FormatError::NotCanonical(_))),
                    "{content} v{version}: {result:?}"
                );
            }
        }
        // The largest integer the spec allows is fine.
        let (_, mut json) = message(&RoomVersionId::V12);
        json["content"]["n"] = json!(9_007_199_254_740_991_i64);
        assert!(!matches!(parse(&json, &RoomVersionId::V12), Err(FormatError::NotCanonical(_))));
    }

    #[test]
    fn garbage_is_not_json() {
        let rules = v(RoomVersionId::V12);
        for text in ["", "[]", "null", "\"x\"", "{", "{\"a\":1}}", "\u{0}", "{\"type\": \"\\ud800\"}"] {
            let result = parse_pdu(text, &rules);
            assert!(
                matches!(result, Err(FormatError::NotJson(_)) | Err(FormatError::NotCanonical(_))),
                "{text:?}: {result:?}"
            );
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let text = format!(r#"{{"content": {deep}}}"#);
        assert_eq!(parse_pdu(&text, &rules), Err(FormatError::TooDeep));
        assert_eq!(claimed_room_id(&text), None);
    }

    #[test]
    fn size_limit_counts_the_canonical_form() {
        let version = RoomVersionId::V11;
        let mut builder = Builder::new(&version);
        // A signed event of 60,000 bytes fits; the same grown past 65,536 bytes does not
        // (the size is checked before the signatures).
        let object = builder.unsigned_object(json!({ "body": "x".repeat(60_000) }), "m.room.message", None);
        let mut json = builder.sign_object(object);
        assert!(parse(&json, &version).is_ok());
        json["content"]["body"] = json!("x".repeat(MAX_PDU_BYTES));
        assert!(matches!(parse(&json, &version), Err(FormatError::TooLarge(n)) if n > MAX_PDU_BYTES));
        // Refused, but named: the ID is the one the event would have had under the limit.
        let text = json.to_string();
        let id = oversized_event_id(&text, &v(version.clone())).expect("an ID for an oversized event");
        json["content"]["body"] = json!("x");
        let small = parse(&json, &version).unwrap();
        assert_eq!(id, small.event_id, "the reference hash leaves the content out");
        json["sender"] = json!("not a user");
        json["content"]["body"] = json!("x".repeat(MAX_PDU_BYTES));
        assert_eq!(oversized_event_id(&json.to_string(), &v(version.clone())), None);
        // Whitespace does not count, but a text 16 times the limit is not read at all.
        let padded = format!(r#"{{"content":{}{{}}}}"#, " ".repeat(MAX_PDU_BYTES * 16));
        assert!(matches!(parse_pdu(&padded, &v(version)), Err(FormatError::TooLarge(_))));
        let spaced = format!(r#"{{"content":{}{{}}}}"#, " ".repeat(MAX_PDU_BYTES * 2));
        assert_eq!(parse_pdu(&spaced, &v(RoomVersionId::V11)), Err(FormatError::Missing("type")));
    }

    #[test]
    fn every_required_field_is_required() {
        for version in [RoomVersionId::V1, RoomVersionId::V4, RoomVersionId::V12] {
            let (_, json) = message(&version);
            let mut fields = vec![
                "type",
                "sender",
                "origin_server_ts",
                "depth",
                "content",
                "hashes",
                "signatures",
                "prev_events",
                "auth_events",
                "room_id",
            ];
            if version == RoomVersionId::V1 {
                fields.push("event_id");
            }
            for field in fields {
                let mut json = json.clone();
                json.as_object_mut().unwrap().remove(field);
                assert_eq!(parse(&json, &version), Err(FormatError::Missing(field)), "{field} in v{version}");
            }
            let mut json = json.clone();
            json["hashes"] = json!({});
            assert_eq!(parse(&json, &version), Err(FormatError::Missing("hashes.sha256")));
        }
    }

    #[test]
    fn fields_of_the_wrong_type_are_refused() {
        let version = RoomVersionId::V11;
        let (_, json) = message(&version);
        let cases = [
            ("type", json!(5)),
            ("state_key", json!(null)),
            ("sender", json!(["@a:b"])),
            ("origin_server_ts", json!("1")),
            ("origin_server_ts", json!(-1)),
            ("depth", json!(-1)),
            ("depth", json!(true)),
            ("content", json!("text")),
            ("hashes", json!("h")),
            ("hashes", json!({ "sha256": 1 })),
            ("signatures", json!([])),
            ("signatures", json!({ "example.org": "sig" })),
            ("signatures", json!({ "example.org": { "ed25519:a": 1 } })),
            ("prev_events", json!("$e")),
            ("prev_events", json!([1])),
            ("auth_events", json!([["$a:b", { "sha256": "x" }]])),
            ("room_id", json!(1)),
        ];
        for (field, value) in cases {
            let mut bad = json.clone();
            bad[field] = value.clone();
            let result = parse(&bad, &version);
            assert!(matches!(result, Err(FormatError::WrongType { .. })), "{field} = {value}: {result:?}");
        }
        // v1 references are pairs; a plain ID is the wrong shape there.
        let (_, json) = message(&RoomVersionId::V1);
        let mut bad = json.clone();
        bad["redacts"] = json!(1);
        assert!(matches!(parse(&bad, &RoomVersionId::V1), Err(FormatError::WrongType { .. })));
        let mut bad = json.clone();
        bad["prev_events"] = json!(["$a:example.org"]);
        assert!(matches!(parse(&bad, &RoomVersionId::V1), Err(FormatError::WrongType { .. })));
        bad["prev_events"] = json!([["$a:example.org", {}]]);
        assert!(matches!(parse(&bad, &RoomVersionId::V1), Err(FormatError::WrongType { .. })));
    }

    #[test]
    fn keys_and_ids_over_255_bytes_are_refused() {
        let version = RoomVersionId::V11;
        let (_, json) = message(&version);
        let long = "a".repeat(250);
        let cases = [
            ("type", json!("t".repeat(256))),
            ("state_key", json!("k".repeat(256))),
            ("sender", json!(format!("@{long}:example.org"))),
            ("room_id", json!(format!("!{long}:example.org"))),
            ("prev_events", json!([format!("${long}{long}")])),
        ];
        for (field, value) in cases {
            let mut bad = json.clone();
            bad[field] = value;
            let result = parse(&bad, &version);
            assert!(
                matches!(result, Err(FormatError::TooLong { field: f, .. }) if f == field),
                "{field}: {result:?}"
            );
        }
        // 255 bytes exactly is allowed.
        let mut ok = json.clone();
        ok["type"] = json!("t".repeat(255));
        ok["state_key"] = json!("k".repeat(255));
        assert!(parse(&ok, &version).is_ok());
    }

    #[test]
    fn prev_and_auth_events_are_capped() {
        let version = RoomVersionId::V11;
        let (_, json) = message(&version);
        let ids = |n: usize| -> Vec<String> { (0..n).map(|i| format!("${:0>43}", i)).collect() };
        let mut bad = json.clone();
        bad["prev_events"] = json!(ids(21));
        assert_eq!(parse(&bad, &version), Err(FormatError::TooManyPrevEvents(21)));
        bad["prev_events"] = json!(ids(20));
        bad["auth_events"] = json!(ids(11));
        assert_eq!(parse(&bad, &version), Err(FormatError::TooManyAuthEvents(11)));
        bad["auth_events"] = json!(ids(10));
        assert!(parse(&bad, &version).is_ok());
    }

    #[test]
    fn ids_follow_the_versions_formats() {
        let hash = "A".repeat(43);
        // (version, field, value, valid)
        let cases = [
            (RoomVersionId::V1, "prev_events", json!([["$x:example.org", { "sha256": "h" }]]), true),
            (RoomVersionId::V1, "prev_events", json!([[format!("${hash}"), { "sha256": "h" }]]), false),
            (RoomVersionId::V1, "event_id", json!("$no_server"), false),
            (RoomVersionId::V3, "prev_events", json!([format!("${}", "a+/".repeat(14) + "b")]), true),
            (RoomVersionId::V3, "prev_events", json!([format!("${}", "a-_".repeat(14) + "b")]), false),
            (RoomVersionId::V4, "prev_events", json!([format!("${}", "a-_".repeat(14) + "b")]), true),
            (RoomVersionId::V4, "prev_events", json!([format!("${}", "a+/".repeat(14) + "b")]), false),
            (RoomVersionId::V4, "prev_events", json!(["$x:example.org"]), false),
            (RoomVersionId::V4, "prev_events", json!([format!("${}", &hash[1..])]), false),
            (RoomVersionId::V11, "room_id", json!(format!("!{hash}")), false),
            (RoomVersionId::V11, "room_id", json!("not a room"), false),
            (RoomVersionId::V12, "room_id", json!(format!("!{hash}")), true),
            (RoomVersionId::V12, "room_id", json!("!room:example.org"), false),
            (RoomVersionId::V10, "redacts", json!("$x:example.org"), false),
            (RoomVersionId::V1, "redacts", json!("$x:example.org"), true),
            (RoomVersionId::V11, "sender", json!("alice"), false),
        ];
        for (version, field, value, valid) in cases {
            let (_, json) = message(&version);
            let mut changed = json.clone();
            changed[field] = value.clone();
            let result = parse(&changed, &version);
            if valid {
                assert!(result.is_ok(), "{field} = {value} in v{version}: {result:?}");
            } else {
                assert!(
                    matches!(result, Err(FormatError::InvalidId { field: f, .. }) if f == field),
                    "{field} = {value} in v{version}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn v12_create_events_name_no_room_and_are_the_room_id() {
        let version = RoomVersionId::V12;
        let builder = Builder::new(&version);
        let create = builder.create.clone();
        let json = builder.wire_json(&create);
        assert!(json.get("room_id").is_none());
        let wire = parse(&json, &version).unwrap();
        assert_eq!(wire.room_id.as_str(), format!("!{}", &wire.event_id.as_str()[1..]));
        assert_eq!(claimed_room_id(&json.to_string()), None);
        let mut with_room = json.clone();
        with_room["room_id"] = json!(wire.room_id);
        assert_eq!(parse(&with_room, &version), Err(FormatError::CreateWithRoomId));
        // Before v12 a create event names its room like any other.
        let v11 = Builder::new(&RoomVersionId::V11);
        let mut json = v11.wire_json(&v11.create);
        assert_eq!(claimed_room_id(&json.to_string()), Some(v11.create.room_id.clone()));
        json.as_object_mut().unwrap().remove("room_id");
        assert_eq!(parse(&json, &RoomVersionId::V11), Err(FormatError::Missing("room_id")));
    }

    #[test]
    fn event_ids_are_the_reference_hash_of_what_was_received() {
        let version = RoomVersionId::V11;
        let (_, json) = message(&version);
        let first = parse(&json, &version).unwrap();
        let mut changed = json.clone();
        changed["origin_server_ts"] = json!(1);
        let second = parse(&changed, &version).unwrap();
        assert_ne!(first.event_id, second.event_id);
        // Content is covered through the content hash, so the ID does not change with it
        // (the hash check in `verify` catches that).
        let mut changed = json.clone();
        changed["content"]["body"] = json!("other");
        assert_eq!(parse(&changed, &version).unwrap().event_id, first.event_id);
    }
}
