//! A small builder of signed events for the federation tests: a room of any version created by
//! `@alice:example.org` on `example.org`, events built by the server's own builder
//! (`matrix::pdu::build_pdu`, so real hashes, signatures and IDs), and helpers to make objects
//! by hand when a test needs one the builder would refuse.

use std::collections::BTreeMap;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId,
    RoomVersionId, UInt, room_version_rules::RoomVersionRules, server_name, signatures::Ed25519KeyPair,
    user_id,
};
use serde_json::{Value as JsonValue, json};

use super::verify::{ServerKeys, VerifyKey};
use crate::matrix::pdu::{EventTemplate, GraphPosition, Pdu, build_pdu, origin_picks_event_id};

pub const ORIGIN: &str = "example.org";
pub const ALICE: &str = "@alice:example.org";

/// An ed25519 key pair from a 32-byte seed, wrapped in the PKCS#8 v1 document ruma reads.
pub fn key_from_seed(seed: &[u8; 32], version: &str) -> Ed25519KeyPair {
    let mut der =
        vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
    der.extend_from_slice(seed);
    Ed25519KeyPair::from_der(&der, version.to_owned()).unwrap()
}

/// A fresh key pair named `ed25519:<version>`.
pub fn new_key(version: &str) -> Ed25519KeyPair {
    Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.to_owned()).unwrap()
}

/// The verify keys of `server`, valid until `valid_until_ts`.
pub fn keys_of(server: &str, key: &Ed25519KeyPair, valid_until_ts: u64) -> ServerKeys {
    let mut keys = ServerKeys::new();
    add_key(&mut keys, server, key, valid_until_ts, None);
    keys
}

/// Add `key` of `server` to `keys`, optionally as an old key that expired at `expired_ts`.
pub fn add_key(
    keys: &mut ServerKeys,
    server: &str,
    key: &Ed25519KeyPair,
    valid_until_ts: u64,
    expired_ts: Option<u64>,
) {
    let ts = |t: u64| MilliSecondsSinceUnixEpoch(UInt::new_saturating(t));
    keys.entry(server.try_into().unwrap()).or_default().insert(
        format!("ed25519:{}", key.version()),
        VerifyKey {
            public_key: ruma::serde::Base64::new(key.public_key().to_vec()),
            valid_until_ts: ts(valid_until_ts),
            expired_ts: expired_ts.map(ts),
        },
    );
}

/// One room, built event by event on a single line.
pub struct Builder {
    pub rules: RoomVersionRules,
    pub key: Ed25519KeyPair,
    pub create: Pdu,
    pub last: Pdu,
    counter: u32,
}

impl Builder {
    /// A room of `version` with its create event, signed by a fresh key `ed25519:t`.
    pub fn new(version: &RoomVersionId) -> Self {
        let rules = version.rules().unwrap();
        let key = new_key("t");
        let mut content = json!({ "room_version": version });
        if !rules.authorization.use_room_create_sender {
            content["creator"] = json!(ALICE);
        }
        let template = EventTemplate::state("m.room.create", "", content);
        let room = RoomId::parse("!room:example.org").unwrap();
        let room_id = (!rules.authorization.room_create_event_id_as_room_id).then_some(&*room);
        let create = build(&rules, &key, &template, room_id, "$create:example.org", &[], 1);
        Builder { rules, key, last: create.clone(), create, counter: 0 }
    }

    /// A message with `body`, following the last event and authorized by the create event
    /// (cited before v12).
    pub fn message(&mut self, body: &str) -> Pdu {
        let template = EventTemplate::message("m.room.message", json!({ "body": body }));
        self.add(&template)
    }

    /// A message with `body` as it travels between servers.
    pub fn message_json(&mut self, body: &str) -> JsonValue {
        let pdu = self.message(body);
        self.wire_json(&pdu)
    }

    /// An event of `template`, following the last event and authorized by the create event
    /// (cited before v12).
    pub fn add(&mut self, template: &EventTemplate) -> Pdu {
        self.counter += 1;
        let id = format!("${}:example.org", self.counter);
        let depth = u64::from(self.last.depth) + 1;
        let (room, last, create) = (self.create.room_id.clone(), self.last.clone(), self.create.clone());
        // From v12 the create event is implied by the room ID and not cited.
        let auth: &[&Pdu] =
            if self.rules.authorization.room_create_event_id_as_room_id { &[] } else { &[&create] };
        let pdu = build_cited(&self.rules, &self.key, template, Some(&room), &id, &[&last], auth, depth);
        self.last = pdu.clone();
        pdu
    }

    /// The event as it travels between servers, as JSON.
    pub fn wire_json(&self, pdu: &Pdu) -> JsonValue {
        JsonValue::from(CanonicalJsonValue::Object(pdu.to_federation_object(&self.rules).unwrap()))
    }

    /// An unsigned, unhashed object of the version's format following the last event, for
    /// tests that need one the builder would refuse.
    pub fn unsigned_object(
        &mut self,
        content: JsonValue,
        kind: &str,
        state_key: Option<&str>,
    ) -> CanonicalJsonObject {
        let template = match state_key {
            Some(key) => EventTemplate::state(kind, key, json!({})),
            None => EventTemplate::message(kind, json!({})),
        };
        let pdu = self.add(&template);
        let mut object = pdu.to_federation_object(&self.rules).unwrap();
        object.remove("hashes");
        object.remove("signatures");
        object.insert("content".to_owned(), serde_json::from_value(content).unwrap());
        object
    }

    /// `object` hashed and signed by this builder's server key, with ruma's function, as JSON.
    pub fn sign_object(&self, mut object: CanonicalJsonObject) -> JsonValue {
        ruma::signatures::hash_and_sign_event(ORIGIN, &self.key, &mut object, &self.rules.redaction).unwrap();
        JsonValue::from(CanonicalJsonValue::Object(object))
    }

    /// The verify keys of this builder's server, valid for ever.
    pub fn keys(&self) -> ServerKeys {
        keys_of(ORIGIN, &self.key, u64::MAX >> 12)
    }
}

/// Build `template` citing `cited` as both prev and auth events.
fn build(
    rules: &RoomVersionRules,
    key: &Ed25519KeyPair,
    template: &EventTemplate,
    room_id: Option<&RoomId>,
    event_id: &str,
    cited: &[&Pdu],
    depth: u64,
) -> Pdu {
    build_cited(rules, key, template, room_id, event_id, cited, cited, depth)
}

#[allow(clippy::too_many_arguments)]
fn build_cited(
    rules: &RoomVersionRules,
    key: &Ed25519KeyPair,
    template: &EventTemplate,
    room_id: Option<&RoomId>,
    event_id: &str,
    prev: &[&Pdu],
    auth: &[&Pdu],
    depth: u64,
) -> Pdu {
    let ids = |events: &[&Pdu]| -> Vec<OwnedEventId> { events.iter().map(|p| p.event_id.clone()).collect() };
    let reference_hashes: BTreeMap<OwnedEventId, String> = prev
        .iter()
        .chain(auth)
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
            prev_events: ids(prev),
            auth_events: ids(auth),
            reference_hashes,
            depth: UInt::new_saturating(depth),
        },
    )
    .unwrap()
}
