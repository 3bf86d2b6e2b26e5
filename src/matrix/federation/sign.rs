//! Events this server sends over federation ("Adding hashes and signatures to outgoing
//! events"): the content hash over the full event, then this server's signature over the
//! redacted form; and co-signing an event another server made (the resident server of a
//! restricted join, the invited user's server), which adds a signature and touches nothing
//! else. The hashing and signing are ruma's; the result is held to the same format checks as
//! a received event, so this server never sends what it would drop.
//!
//! Events of this server's own rooms are built by `matrix::pdu::build_pdu`, which hashes and
//! signs the same way; [`hash_and_sign`] is for objects made elsewhere (a `make_join` or
//! `make_knock` template the joining server fills in).

use ruma::{
    CanonicalJsonObject, ServerName,
    room_version_rules::RoomVersionRules,
    signatures::{Ed25519KeyPair, JsonError, hash_and_sign_event, sign_event},
};

use super::format::{FormatError, WirePdu, check_object};
use crate::matrix::pdu::{MAX_PDU_BYTES, origin_picks_event_id};

/// Why an event could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The signed event would not pass the format checks (too large, a bad field...).
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("cannot sign the event: {0}")]
    Signing(String),
}

fn signing_error(error: JsonError) -> SignError {
    match error {
        JsonError::PduTooLarge => SignError::Format(FormatError::TooLarge(MAX_PDU_BYTES + 1)),
        other => SignError::Signing(other.to_string()),
    }
}

/// Hash and sign `object` as `origin` with `key`: any `hashes`, `signatures` and `unsigned` it
/// carries are replaced (and, from v3, `event_id` dropped: the ID is the reference hash). The
/// result has passed [`check_object`] and carries its event ID.
pub fn hash_and_sign(
    mut object: CanonicalJsonObject,
    origin: &ServerName,
    key: &Ed25519KeyPair,
    rules: &RoomVersionRules,
) -> Result<WirePdu, SignError> {
    for field in ["hashes", "signatures", "unsigned"] {
        object.remove(field);
    }
    if !origin_picks_event_id(rules) {
        object.remove("event_id");
    }
    hash_and_sign_event(origin.as_str(), key, &mut object, &rules.redaction).map_err(signing_error)?;
    Ok(check_object(object, rules)?)
}

/// Add `server`'s signature to an event another server hashed and signed, leaving its hashes,
/// other signatures and event ID as they are.
pub fn cosign(
    pdu: &mut WirePdu,
    server: &ServerName,
    key: &Ed25519KeyPair,
    rules: &RoomVersionRules,
) -> Result<(), SignError> {
    let mut object = pdu.object.clone();
    sign_event(server.as_str(), key, &mut object, &rules.redaction).map_err(signing_error)?;
    let signed = check_object(object, rules)?;
    if signed.event_id != pdu.event_id {
        return Err(SignError::Signing("signing changed the event ID".to_owned()));
    }
    *pdu = signed;
    Ok(())
}

#[cfg(test)]
mod tests {
    use ruma::{
        CanonicalJsonValue, RoomVersionId, server_name,
        signatures::{PublicKeyMap, Verified, verify_event},
    };
    use serde_json::{Value as JsonValue, json};

    use super::*;
    use crate::matrix::{
        federation::{
            format::parse_pdu,
            testing::{Builder, ORIGIN, key_from_seed, keys_of, new_key},
            verify::{Verdict, check_signatures_and_hash, decode_base64},
        },
        room_version::SUPPORTED,
    };

    fn object(json: JsonValue) -> CanonicalJsonObject {
        serde_json::from_value(json).unwrap()
    }

    /// The spec's test vector ("Cryptographic Test Vectors", `/appendices`): the minimal event
    /// signed by `domain` with the key from the given seed gives exactly the spec's hash and
    /// signature.
    #[test]
    fn the_spec_test_vector_signs_to_the_spec_signature() {
        // The seed's last character carries bits past the 32 bytes, which decoders ignore.
        let seed: [u8; 32] =
            decode_base64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1").unwrap().try_into().unwrap();
        let key = key_from_seed(&seed, "1");
        let event = object(json!({
            "room_id": "!x:domain",
            "sender": "@a:domain",
            "origin": "domain",
            "origin_server_ts": 1000000,
            "signatures": {},
            "hashes": {},
            "type": "X",
            "content": {},
            "prev_events": [],
            "auth_events": [],
            "depth": 3,
            "unsigned": { "age_ts": 1000000 },
        }));
        let rules = RoomVersionId::V3.rules().unwrap();
        let signed = hash_and_sign(event, server_name!("domain"), &key, &rules).unwrap();
        let json = JsonValue::from(CanonicalJsonValue::Object(signed.object.clone()));
        assert_eq!(json["hashes"], json!({ "sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos" }));
        assert_eq!(
            json["signatures"],
            json!({ "domain": { "ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg" } })
        );
        assert!(json.get("unsigned").is_none());
        let keys = keys_of("domain", &key, u64::MAX >> 12);
        assert!(matches!(check_signatures_and_hash(signed, &rules, &keys), Verdict::Accepted(_)));
    }

    /// What this server signs passes its own checks and ruma's `verify_event`, in every version.
    #[test]
    fn signed_events_round_trip_through_the_checks() {
        for version in SUPPORTED {
            let mut builder = Builder::new(&version);
            let unsigned = builder.unsigned_object(json!({ "body": "out" }), "m.room.message", None);
            let key = new_key("out");
            let signed = hash_and_sign(unsigned, server_name!("example.org"), &key, &builder.rules).unwrap();
            let keys = keys_of(ORIGIN, &key, u64::MAX >> 12);
            // Through the text form, as the receiving server sees it.
            let json = JsonValue::from(CanonicalJsonValue::Object(signed.object.clone()));
            let received = parse_pdu(&json.to_string(), &builder.rules).unwrap();
            assert_eq!(received, signed, "v{version}");
            let verdict = check_signatures_and_hash(received, &builder.rules, &keys);
            assert_eq!(verdict, Verdict::Accepted(signed.clone()), "v{version}");
            let map: PublicKeyMap = [(
                ORIGIN.to_owned(),
                [("ed25519:out".to_owned(), ruma::serde::Base64::new(key.public_key().to_vec()))].into(),
            )]
            .into();
            assert_eq!(
                verify_event(&map, &signed.object, &builder.rules).unwrap(),
                Verified::All,
                "v{version}"
            );
            // The ID is the reference hash (v3+) or the one chosen (v1, v2).
            let pdu = signed.clone().into_pdu(&builder.rules).unwrap();
            assert_eq!(pdu.event_id, signed.event_id);
            assert_eq!(pdu.to_federation_object(&builder.rules).unwrap(), signed.object);
        }
    }

    /// Old hashes, signatures and `unsigned` are replaced, not kept: a forged signature handed
    /// in does not survive signing.
    #[test]
    fn signing_replaces_what_was_there() {
        let mut builder = Builder::new(&RoomVersionId::V12);
        let mut unsigned = builder.unsigned_object(json!({ "body": "x" }), "m.room.message", None);
        unsigned.insert("hashes".to_owned(), object(json!({ "sha256": "forged" })).into());
        unsigned.insert(
            "signatures".to_owned(),
            object(json!({ "evil.example": { "ed25519:x": "forged" } })).into(),
        );
        unsigned.insert("unsigned".to_owned(), object(json!({ "age": 1 })).into());
        unsigned.insert("event_id".to_owned(), CanonicalJsonValue::String("$chosen:example.org".to_owned()));
        let signed =
            hash_and_sign(unsigned, server_name!("example.org"), &builder.key, &builder.rules).unwrap();
        let json = JsonValue::from(CanonicalJsonValue::Object(signed.object.clone()));
        assert_eq!(json["signatures"].as_object().unwrap().keys().collect::<Vec<_>>(), vec!["example.org"]);
        assert_ne!(json["hashes"]["sha256"], "forged");
        assert!(json.get("unsigned").is_none() && json.get("event_id").is_none());
    }

    /// Events too large, or not of the version's format, are refused rather than signed.
    #[test]
    fn what_the_checks_would_drop_is_not_signed() {
        let mut builder = Builder::new(&RoomVersionId::V11);
        let big =
            builder.unsigned_object(json!({ "body": "x".repeat(MAX_PDU_BYTES) }), "m.room.message", None);
        let result = hash_and_sign(big, server_name!("example.org"), &builder.key, &builder.rules);
        assert!(matches!(result, Err(SignError::Format(FormatError::TooLarge(_)))), "{result:?}");
        // Under the limit before signing, over it with the hash and signature.
        let empty = builder.unsigned_object(json!({ "body": "" }), "m.room.message", None);
        let base = CanonicalJsonValue::Object(empty).to_string().len();
        let almost = json!({ "body": "x".repeat(MAX_PDU_BYTES - 50 - base) });
        let almost = builder.unsigned_object(almost, "m.room.message", None);
        assert!(CanonicalJsonValue::Object(almost.clone()).to_string().len() < MAX_PDU_BYTES);
        let result = hash_and_sign(almost, server_name!("example.org"), &builder.key, &builder.rules);
        assert!(matches!(result, Err(SignError::Format(FormatError::TooLarge(_)))), "{result:?}");
        let mut no_sender = builder.unsigned_object(json!({}), "m.room.message", None);
        no_sender.remove("sender");
        let result = hash_and_sign(no_sender, server_name!("example.org"), &builder.key, &builder.rules);
        assert!(matches!(result, Err(SignError::Format(FormatError::Missing("sender")))), "{result:?}");
        let mut too_many = builder.unsigned_object(json!({}), "m.room.message", None);
        too_many.insert(
            "prev_events".to_owned(),
            CanonicalJsonValue::Array((0..21).map(|i| format!("${i:0>43}").into()).collect()),
        );
        let result = hash_and_sign(too_many, server_name!("example.org"), &builder.key, &builder.rules);
        assert!(matches!(result, Err(SignError::Format(FormatError::TooManyPrevEvents(21)))), "{result:?}");
    }

    /// Co-signing adds a signature and changes neither the hashes nor the event ID; it refuses
    /// an event that has become too large.
    #[test]
    fn cosigning_keeps_the_event() {
        let mut builder = Builder::new(&RoomVersionId::V12);
        let event = builder.message("hi");
        let json = builder.wire_json(&event);
        let mut pdu = parse_pdu(&json.to_string(), &builder.rules).unwrap();
        let before = pdu.clone();
        cosign(&mut pdu, server_name!("resident.example"), &new_key("r"), &builder.rules).unwrap();
        assert_eq!(pdu.event_id, before.event_id);
        assert_eq!(pdu.object["hashes"], before.object["hashes"]);
        let CanonicalJsonValue::Object(signatures) = &pdu.object["signatures"] else { panic!() };
        assert!(signatures.contains_key("resident.example") && signatures.contains_key(ORIGIN));
    }
}
