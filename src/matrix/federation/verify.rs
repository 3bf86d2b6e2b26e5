//! Checks 2 and 3 on receipt of a PDU ("Validating hashes and signatures on received events"):
//! the signatures the spec requires, on the event's redacted form, then the content hash.
//!
//! Whose signatures are required ([`required_servers`]), as the spec and Synapse have it:
//! - the sender's server, except for an invite made from a third-party invite (its sender must
//!   match the `m.room.third_party_invite` event, which the authorization rules check, and any
//!   server may send it);
//! - in v1–v2, also the server named in the `event_id`;
//! - from v8 (restricted joins), for a join whose content names
//!   `join_authorised_via_users_server`, also that user's server.
//!
//! For each required server, every signature by one of its known keys that was valid at the
//! event's `origin_server_ts` must verify, and there must be at least one: keys this server
//! does not know are skipped (policy server keys among them), as are old keys that expired
//! before the event and, from v5 (`enforce_key_validity`), keys whose `valid_until_ts` is
//! earlier than the event. A key's `valid_until_ts` is taken as given: capping it at seven days
//! from when it was fetched (v5's rule) is for whoever stores keys.
//!
//! Then the content hash: when it does not match, the event is not rejected but replaced by
//! its redacted form ([`Verdict::Redact`]), as the spec says. Hashing and signature primitives
//! are ruma's (`content_hash`, `verify_canonical_json_bytes`, the redaction algorithm); the
//! choice of servers and keys is made here, because ruma's `verify_event` requires the
//! authorising server for any event carrying `join_authorised_via_users_server`, not only joins.

use std::collections::{BTreeMap, BTreeSet};

use base64::{
    Engine, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use ruma::{
    CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedServerName, UserId,
    canonical_json::redact,
    room_version_rules::RoomVersionRules,
    serde::Base64,
    signatures::{content_hash, to_canonical_json_string_for_signing, verify_canonical_json_bytes},
};

use super::format::WirePdu;
use crate::matrix::pdu::origin_picks_event_id;

/// A verify key of a server, as learnt from its `/_matrix/key/v2/server` or a notary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyKey {
    pub public_key: Base64,
    /// The key response's `valid_until_ts` (already capped by whoever stored it).
    pub valid_until_ts: MilliSecondsSinceUnixEpoch,
    /// For an entry of `old_verify_keys`: its `expired_ts`.
    pub expired_ts: Option<MilliSecondsSinceUnixEpoch>,
}

/// The verify keys known for each server: server name → key ID (`ed25519:abc`) → key.
pub type ServerKeys = BTreeMap<OwnedServerName, BTreeMap<String, VerifyKey>>;

/// Why a PDU failed the signature checks. Any of them means it is dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No key of this server is known: fetch its keys and check again, or drop the event.
    #[error("no verify key of {0} is known")]
    NoKeys(OwnedServerName),
    #[error("the event carries no signature of {0}")]
    Unsigned(OwnedServerName),
    /// Signatures of the server are there, but none by a key known and valid at the event's
    /// `origin_server_ts`.
    #[error("no signature of {0} by a key known to be valid when the event was sent")]
    NoUsableKey(OwnedServerName),
    #[error("the signature of {server} with {key_id} does not verify")]
    BadSignature { server: OwnedServerName, key_id: String },
    #[error("malformed event: {0}")]
    Malformed(String),
}

/// The outcome of checks 2 and 3.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Signatures and content hash check out: the event as received.
    Accepted(WirePdu),
    /// The signatures check out but the content hash does not: the event is to be used in the
    /// redacted form given here (the same event ID; the hashes and signatures cover it).
    Redact(WirePdu),
    /// Dropped.
    Reject(Rejection),
}

/// The servers whose signatures `pdu` must carry (see the module's comment). Fails only on a
/// `join_authorised_via_users_server` that is not a user ID.
pub fn required_servers(
    pdu: &WirePdu,
    rules: &RoomVersionRules,
) -> Result<BTreeSet<OwnedServerName>, Rejection> {
    let object = &pdu.object;
    let text = |value: Option<&CanonicalJsonValue>| match value {
        Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let content = match object.get("content") {
        Some(CanonicalJsonValue::Object(content)) => Some(content),
        _ => None,
    };
    let is_member = text(object.get("type")).as_deref() == Some("m.room.member");
    let membership = content.and_then(|c| text(c.get("membership")));
    let mut servers = BTreeSet::new();

    let third_party_invite = is_member
        && membership.as_deref() == Some("invite")
        && matches!(content.and_then(|c| c.get("third_party_invite")), Some(CanonicalJsonValue::Object(_)));
    if !third_party_invite {
        let sender = text(object.get("sender")).unwrap_or_default();
        let sender =
            UserId::parse(sender).map_err(|_| Rejection::Malformed("sender is not a user ID".to_owned()))?;
        servers.insert(sender.server_name().to_owned());
    }
    if origin_picks_event_id(rules) {
        let id = text(object.get("event_id")).unwrap_or_default();
        let server = EventId::parse(id).ok().and_then(|id| id.server_name().map(ToOwned::to_owned));
        servers.insert(server.ok_or_else(|| Rejection::Malformed("event_id names no server".to_owned()))?);
    }
    if rules.signatures.check_join_authorised_via_users_server
        && is_member
        && membership.as_deref() == Some("join")
        && let Some(authoriser) = content.and_then(|c| c.get("join_authorised_via_users_server"))
    {
        let authoriser =
            text(Some(authoriser)).and_then(|user| UserId::parse(user).ok()).ok_or_else(|| {
                Rejection::Malformed("join_authorised_via_users_server is not a user ID".to_owned())
            })?;
        servers.insert(authoriser.server_name().to_owned());
    }
    Ok(servers)
}

/// Check the signatures of `pdu` against `keys`, then its content hash.
pub fn check_signatures_and_hash(pdu: WirePdu, rules: &RoomVersionRules, keys: &ServerKeys) -> Verdict {
    match check(&pdu, rules, keys) {
        Ok(true) => Verdict::Accepted(pdu),
        Ok(false) => match redact(pdu.object, &rules.redaction, None) {
            Ok(object) => Verdict::Redact(WirePdu { object, ..pdu }),
            Err(e) => Verdict::Reject(Rejection::Malformed(e.to_string())),
        },
        Err(rejection) => Verdict::Reject(rejection),
    }
}

/// Whether the content hash matches, once the signatures verified.
fn check(pdu: &WirePdu, rules: &RoomVersionRules, keys: &ServerKeys) -> Result<bool, Rejection> {
    let malformed = |e: &dyn std::fmt::Display| Rejection::Malformed(e.to_string());
    let object = &pdu.object;
    let origin_server_ts = match object.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => i64::from(*ts).max(0).unsigned_abs(),
        _ => return Err(Rejection::Malformed("origin_server_ts is not an integer".to_owned())),
    };
    let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
        return Err(Rejection::Malformed("signatures is not an object".to_owned()));
    };
    // What the origin signed: the redacted event without `signatures` and `unsigned`.
    let redacted = redact(object.clone(), &rules.redaction, None).map_err(|e| malformed(&e))?;
    let signed = to_canonical_json_string_for_signing(&redacted).map_err(|e| malformed(&e))?;

    for server in required_servers(pdu, rules)? {
        let known = keys.get(&server).ok_or_else(|| Rejection::NoKeys(server.clone()))?;
        let Some(CanonicalJsonValue::Object(by_key)) = signatures.get(server.as_str()) else {
            return Err(Rejection::Unsigned(server));
        };
        let mut verified = 0;
        for (key_id, signature) in by_key {
            let Some(key) = known.get(key_id) else { continue };
            let expired = key.expired_ts.is_some_and(|t| u64::from(t.get()) < origin_server_ts);
            let lapsed = rules.enforce_key_validity && u64::from(key.valid_until_ts.get()) < origin_server_ts;
            if expired || lapsed || !key_id.starts_with("ed25519:") {
                continue;
            }
            let bad = || Rejection::BadSignature { server: server.clone(), key_id: key_id.clone() };
            let CanonicalJsonValue::String(signature) = signature else { return Err(bad()) };
            let signature = decode_base64(signature).ok_or_else(bad)?;
            verify_canonical_json_bytes(
                &ruma::SigningKeyAlgorithm::Ed25519,
                key.public_key.as_bytes(),
                &signature,
                signed.as_bytes(),
            )
            .map_err(|_| bad())?;
            verified += 1;
        }
        if verified == 0 {
            return Err(Rejection::NoUsableKey(server));
        }
    }

    let claimed = match object.get("hashes") {
        Some(CanonicalJsonValue::Object(hashes)) => match hashes.get("sha256") {
            Some(CanonicalJsonValue::String(hash)) => decode_base64(hash),
            _ => None,
        },
        _ => None,
    };
    let computed = content_hash(object).map_err(|e| malformed(&e))?;
    Ok(claimed.as_deref() == Some(computed.as_bytes()))
}

/// Unpadded base64 as the spec writes it, accepting padding and the URL-safe alphabet too
/// (`/appendices#unpadded-base64`: implementations should accept both).
/// Trailing bits are ignored, as Python's decoder (Synapse's) ignores them.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let config = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    let standard = GeneralPurpose::new(&alphabet::STANDARD, config);
    let url_safe = GeneralPurpose::new(&alphabet::URL_SAFE, config);
    standard.decode(text).or_else(|_| url_safe.decode(text)).ok()
}

#[cfg(test)]
mod tests {
    use ruma::{
        RoomVersionId, ServerName,
        signatures::{PublicKeyMap, Verified, verify_event},
    };
    use serde_json::{Value as JsonValue, json};

    use super::*;
    use crate::matrix::{
        federation::{
            format::{WirePdu, parse_pdu},
            sign::cosign,
            testing::{Builder, ORIGIN, add_key, keys_of, new_key},
        },
        room_version::SUPPORTED,
    };

    fn wire(json: &JsonValue, rules: &RoomVersionRules) -> WirePdu {
        parse_pdu(&json.to_string(), rules).unwrap()
    }

    fn verdict(json: &JsonValue, rules: &RoomVersionRules, keys: &ServerKeys) -> Verdict {
        check_signatures_and_hash(wire(json, rules), rules, keys)
    }

    fn rejection(verdict: Verdict) -> Rejection {
        match verdict {
            Verdict::Reject(rejection) => rejection,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn server(name: &str) -> OwnedServerName {
        ServerName::parse(name).unwrap()
    }

    /// ruma's own verdict on the same event with the same keys, for comparison.
    fn ruma_verdict(json: &JsonValue, rules: &RoomVersionRules, keys: &ServerKeys) -> Option<Verified> {
        let map: PublicKeyMap = keys
            .iter()
            .map(|(s, k)| {
                (s.to_string(), k.iter().map(|(id, k)| (id.clone(), k.public_key.clone())).collect())
            })
            .collect();
        let object = wire(json, rules).object;
        verify_event(&map, &object, rules).ok()
    }

    #[test]
    fn events_signed_by_the_server_and_by_ruma_are_accepted_in_every_version() {
        for version in SUPPORTED {
            let mut builder = Builder::new(&version);
            let event = builder.message("hi");
            let json = builder.wire_json(&event);
            let keys = builder.keys();
            let verdict = verdict(&json, &builder.rules, &keys);
            assert_eq!(verdict, Verdict::Accepted(wire(&json, &builder.rules)), "v{version}");
            assert_eq!(ruma_verdict(&json, &builder.rules, &keys), Some(Verified::All));

            // Hashed and signed by ruma's `hash_and_sign_event` directly.
            let object = builder.unsigned_object(json!({ "body": "by ruma" }), "m.room.message", None);
            let json = builder.sign_object(object);
            assert!(
                matches!(
                    super::check_signatures_and_hash(wire(&json, &builder.rules), &builder.rules, &keys),
                    Verdict::Accepted(_)
                ),
                "v{version}"
            );
        }
    }

    #[test]
    fn a_forged_signature_is_rejected() {
        let version = RoomVersionId::V11;
        let mut builder = Builder::new(&version);
        let json = builder.message_json("hi");
        let keys = builder.keys();
        let key_id = "ed25519:t".to_owned();
        // Another key under the same key ID: a forger's signature.
        let forger = Builder::new(&version);
        let mut forged = json.clone();
        forged["signatures"][ORIGIN] = forger.wire_json(&forger.create)["signatures"][ORIGIN].clone();
        let expected = Rejection::BadSignature { server: server(ORIGIN), key_id: key_id.clone() };
        assert_eq!(rejection(verdict(&forged, &builder.rules, &keys)), expected);
        // A flipped bit, and a signature that is not base64.
        let signature = json["signatures"][ORIGIN]["ed25519:t"].as_str().unwrap();
        let flipped = if signature.starts_with('A') { "B" } else { "A" }.to_owned() + &signature[1..];
        for bad in [flipped, "***".to_owned(), String::new()] {
            let mut forged = json.clone();
            forged["signatures"][ORIGIN]["ed25519:t"] = json!(bad);
            assert_eq!(rejection(verdict(&forged, &builder.rules, &keys)), expected, "{bad}");
            assert_eq!(ruma_verdict(&forged, &builder.rules, &keys), None);
        }
        // A change to a field the signature covers (the sender, the type).
        for (field, value) in [("type", json!("m.room.topic")), ("origin_server_ts", json!(5))] {
            let mut changed = json.clone();
            changed[field] = value;
            assert_eq!(rejection(verdict(&changed, &builder.rules, &keys)), expected, "{field}");
        }
    }

    #[test]
    fn a_wrong_content_hash_means_the_redacted_form() {
        for version in [RoomVersionId::V1, RoomVersionId::V6, RoomVersionId::V11, RoomVersionId::V12] {
            let mut builder = Builder::new(&version);
            let json = builder.message_json("hi");
            let keys = builder.keys();
            let original = wire(&json, &builder.rules);
            // What the redaction algorithm strips is covered by the content hash only.
            for tamper in [
                |j: &mut JsonValue| j["content"]["body"] = json!("changed"),
                |j: &mut JsonValue| j["extra_top_level"] = json!(1),
            ] {
                let mut changed = json.clone();
                tamper(&mut changed);
                let Verdict::Redact(redacted) = verdict(&changed, &builder.rules, &keys) else {
                    panic!("v{version}: {changed}");
                };
                assert_eq!(redacted.event_id, original.event_id, "v{version}");
                assert_eq!(redacted.object["content"], CanonicalJsonValue::Object(Default::default()));
                assert!(!redacted.object.contains_key("extra_top_level"));
                assert_eq!(ruma_verdict(&changed, &builder.rules, &keys), Some(Verified::Signatures));
                // The redacted copy is what the origin signed: it still verifies.
                let pdu = redacted.clone().into_pdu(&builder.rules).unwrap();
                assert_eq!(pdu.content_value(), json!({}));
            }
            // The hashes themselves are signed: changing them is a forgery.
            for hash in ["AAAA", "not base64 at all!"] {
                let mut changed = json.clone();
                changed["hashes"]["sha256"] = json!(hash);
                let rejected = rejection(verdict(&changed, &builder.rules, &keys));
                assert!(matches!(rejected, Rejection::BadSignature { .. }), "v{version}: {rejected:?}");
            }
        }
    }

    #[test]
    fn missing_keys_and_signatures_are_named() {
        let version = RoomVersionId::V11;
        let mut builder = Builder::new(&version);
        let json = builder.message_json("hi");
        assert_eq!(
            rejection(verdict(&json, &builder.rules, &ServerKeys::new())),
            Rejection::NoKeys(server(ORIGIN))
        );
        let mut unsigned = json.clone();
        unsigned["signatures"] = json!({ "other.example": { "ed25519:t": "AAAA" } });
        assert_eq!(
            rejection(verdict(&unsigned, &builder.rules, &builder.keys())),
            Rejection::Unsigned(server(ORIGIN))
        );
        // Only keys this server does not know (a policy server's, a rotated one).
        let mut unknown = json.clone();
        let signature = json["signatures"][ORIGIN]["ed25519:t"].clone();
        unknown["signatures"][ORIGIN] =
            json!({ "ed25519:unknown": signature, "ed25519:policy_server": "AAAA" });
        assert_eq!(
            rejection(verdict(&unknown, &builder.rules, &builder.keys())),
            Rejection::NoUsableKey(server(ORIGIN))
        );
        // An unknown key next to a good one is skipped.
        let mut extra = json.clone();
        extra["signatures"][ORIGIN]["ed25519:unknown"] = json!("AAAA");
        assert!(matches!(verdict(&extra, &builder.rules, &builder.keys()), Verdict::Accepted(_)));
    }

    /// From v5 a key must be valid at the event's `origin_server_ts` (1000 in the builder); in
    /// every version an old key that expired before it is ignored.
    #[test]
    fn key_validity_follows_the_version() {
        for version in [RoomVersionId::V4, RoomVersionId::V5, RoomVersionId::V12] {
            let mut builder = Builder::new(&version);
            let json = builder.message_json("hi");
            let lapsed = keys_of(ORIGIN, &builder.key, 999);
            let result = verdict(&json, &builder.rules, &lapsed);
            if version == RoomVersionId::V4 {
                assert!(matches!(result, Verdict::Accepted(_)), "v{version}");
            } else {
                assert_eq!(rejection(result), Rejection::NoUsableKey(server(ORIGIN)), "v{version}");
            }
            assert!(matches!(
                verdict(&json, &builder.rules, &keys_of(ORIGIN, &builder.key, 1000)),
                Verdict::Accepted(_)
            ));
            for (expired_ts, accepted) in [(999, false), (1000, true)] {
                let mut old = ServerKeys::new();
                add_key(&mut old, ORIGIN, &builder.key, 5000, Some(expired_ts));
                let result = verdict(&json, &builder.rules, &old);
                assert_eq!(
                    matches!(result, Verdict::Accepted(_)),
                    accepted,
                    "v{version} expired at {expired_ts}"
                );
            }
        }
    }

    /// In v1 and v2 the server of the event ID signs too.
    #[test]
    fn v1_events_need_the_event_id_servers_signature() {
        let version = RoomVersionId::V1;
        let mut builder = Builder::new(&version);
        let mut object = builder.unsigned_object(json!({ "body": "x" }), "m.room.message", None);
        object.insert("event_id".to_owned(), CanonicalJsonValue::String("$e:other.example".to_owned()));
        let json = builder.sign_object(object);
        let mut keys = builder.keys();
        let other = new_key("o");
        add_key(&mut keys, "other.example", &other, u64::MAX >> 12, None);
        let pdu = wire(&json, &builder.rules);
        assert_eq!(
            required_servers(&pdu, &builder.rules).unwrap(),
            BTreeSet::from([server(ORIGIN), server("other.example")])
        );
        assert_eq!(
            rejection(verdict(&json, &builder.rules, &keys)),
            Rejection::Unsigned(server("other.example"))
        );
        let mut cosigned = pdu.clone();
        cosign(&mut cosigned, &server("other.example"), &other, &builder.rules).unwrap();
        assert!(matches!(check_signatures_and_hash(cosigned, &builder.rules, &keys), Verdict::Accepted(_)));
    }

    /// A restricted join (v8+) authorised through another server's user needs that server's
    /// signature; a leave carrying the field, or a join before v8, does not.
    #[test]
    fn restricted_joins_need_the_authorising_servers_signature() {
        for version in [RoomVersionId::V7, RoomVersionId::V8, RoomVersionId::V12] {
            let mut builder = Builder::new(&version);
            let resident = new_key("r");
            let mut keys = builder.keys();
            add_key(&mut keys, "resident.example", &resident, u64::MAX >> 12, None);
            let member = |builder: &mut Builder, membership: &str, via: JsonValue| {
                let content = json!({ "membership": membership, "join_authorised_via_users_server": via });
                let object = builder.unsigned_object(content, "m.room.member", Some("@alice:example.org"));
                wire(&builder.sign_object(object), &builder.rules)
            };
            let join = member(&mut builder, "join", json!("@bob:resident.example"));
            let restricted = version != RoomVersionId::V7;
            let expected: BTreeSet<_> = if restricted {
                [server(ORIGIN), server("resident.example")].into()
            } else {
                [server(ORIGIN)].into()
            };
            assert_eq!(required_servers(&join, &builder.rules).unwrap(), expected, "v{version}");
            let result = check_signatures_and_hash(join.clone(), &builder.rules, &keys);
            if restricted {
                assert_eq!(rejection(result), Rejection::Unsigned(server("resident.example")), "v{version}");
                let mut cosigned = join.clone();
                cosign(&mut cosigned, &server("resident.example"), &resident, &builder.rules).unwrap();
                assert_eq!(cosigned.event_id, join.event_id);
                let result = check_signatures_and_hash(cosigned.clone(), &builder.rules, &keys);
                assert!(matches!(result, Verdict::Accepted(_)), "v{version}: {result:?}");
                // A resident signature made with another key is a forgery.
                let mut forged = join.clone();
                cosign(&mut forged, &server("resident.example"), &new_key("r"), &builder.rules).unwrap();
                assert!(matches!(
                    rejection(check_signatures_and_hash(forged, &builder.rules, &keys)),
                    Rejection::BadSignature { .. }
                ));
            } else {
                assert!(matches!(result, Verdict::Accepted(_)), "v{version}");
            }
            let leave = member(&mut builder, "leave", json!("@bob:resident.example"));
            assert_eq!(required_servers(&leave, &builder.rules).unwrap(), [server(ORIGIN)].into());
            let bad = member(&mut builder, "join", json!("not a user"));
            if restricted {
                assert!(matches!(required_servers(&bad, &builder.rules), Err(Rejection::Malformed(_))));
                assert!(matches!(
                    rejection(check_signatures_and_hash(bad, &builder.rules, &keys)),
                    Rejection::Malformed(_)
                ));
            }
        }
    }

    /// An invite made from a third-party invite may come from any server: the sender's server's
    /// signature is not required (the authorization rules check the invite's own signature).
    #[test]
    fn third_party_invites_are_exempt_from_the_senders_signature() {
        let version = RoomVersionId::V11;
        let mut builder = Builder::new(&version);
        let content = json!({
            "membership": "invite",
            "third_party_invite": { "display_name": "c...", "signed": { "mxid": "@carol:elsewhere.example", "token": "t", "signatures": {} } },
        });
        let mut object = builder.unsigned_object(content, "m.room.member", Some("@carol:elsewhere.example"));
        // Signed by another server than the sender's.
        ruma::signatures::hash_and_sign_event(
            "elsewhere.example",
            &builder.key,
            &mut object,
            &builder.rules.redaction,
        )
        .unwrap();
        let json = JsonValue::from(CanonicalJsonValue::Object(object));
        let pdu = wire(&json, &builder.rules);
        assert!(required_servers(&pdu, &builder.rules).unwrap().is_empty());
        assert!(matches!(
            check_signatures_and_hash(pdu, &builder.rules, &ServerKeys::new()),
            Verdict::Accepted(_)
        ));
        // An ordinary invite still needs the sender's server.
        let object = builder.unsigned_object(
            json!({ "membership": "invite" }),
            "m.room.member",
            Some("@carol:elsewhere.example"),
        );
        let pdu = wire(&builder.sign_object(object), &builder.rules);
        assert_eq!(required_servers(&pdu, &builder.rules).unwrap(), [server(ORIGIN)].into());
    }
}
