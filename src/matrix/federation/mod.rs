//! The protocol pieces of federation that need no I/O: what the inbound path checks on every
//! PDU a remote server sends, and what the outbound path does to every PDU this server sends.
//!
//! The spec's checks on receipt of a PDU ("Checks performed on receipt of a PDU", server-server
//! API), in its order, and where each lives:
//!
//! 1. a valid event of the room version's format, else dropped: [`format::parse_pdu`];
//! 2. the signatures the spec requires, else dropped, and
//! 3. the content hash, else the redacted copy is used: [`verify::check_signatures_and_hash`];
//! 4. to 6. the authorization rules against the auth events, the state before, the current
//!    state: `matrix::auth::check_event`, with the state from `matrix::state_resolution`;
//!
//! plus [`ancestors::AncestorWalk`], the bounded walk over missing `prev_events`, and
//! [`sign`], hashing and signing events this server sends (or co-signs).

pub mod ancestors;
pub mod format;
pub mod sign;
pub mod verify;

#[cfg(test)]
pub(crate) mod testing;

/// The inbound pipeline end to end: the checks in the spec's order, and every kind of odd
/// value in every field, in every room version, answered without a panic.
#[cfg(test)]
mod tests {
    use ruma::{EventId, events::StateEventType};
    use serde_json::{Value as JsonValue, json};

    use super::{
        format::parse_pdu,
        testing::{ALICE, Builder},
        verify::{Verdict, check_signatures_and_hash, required_servers},
    };
    use crate::matrix::{auth::check_event, pdu::Pdu, room_version::SUPPORTED};

    fn odd_values() -> Vec<JsonValue> {
        vec![
            json!(null),
            json!(true),
            json!(-1),
            json!(0),
            json!(9_007_199_254_740_991_i64),
            json!(""),
            json!("x".repeat(300)),
            json!("$"),
            json!("!"),
            json!("@"),
            json!("@:"),
            json!("$x:"),
            json!("!x:y"),
            json!("@x:y"),
            json!("ed25519:"),
            json!([]),
            json!([[]]),
            json!([null]),
            json!([["$a:b", { "sha256": 1 }]]),
            json!({}),
            json!({ "sha256": "" }),
            json!({ "": {} }),
            json!({ "membership": "join", "join_authorised_via_users_server": 5 }),
            json!({ "membership": "invite", "third_party_invite": [] }),
            json!({ "membership": 1 }),
            json!({ "redacts": {} }),
        ]
    }

    /// Every place a value can be put: top-level fields, nested ones, and a few shapes of
    /// membership content under an `m.room.member` type.
    fn mutations(event: &JsonValue) -> Vec<JsonValue> {
        let mut out = Vec::new();
        let fields: Vec<String> = event.as_object().unwrap().keys().cloned().collect();
        let extra = ["state_key", "redacts", "event_id", "room_id", "origin", "unsigned"];
        for field in fields.iter().map(String::as_str).chain(extra) {
            let mut removed = event.clone();
            removed.as_object_mut().unwrap().remove(field);
            out.push(removed);
            for value in odd_values() {
                let mut changed = event.clone();
                changed[field] = value;
                out.push(changed);
            }
        }
        for value in odd_values() {
            for path in [&["content", "body"][..], &["hashes", "sha256"], &["signatures", "example.org"]] {
                let mut changed = event.clone();
                changed[path[0]][path[1]] = value.clone();
                out.push(changed);
            }
            let mut member = event.clone();
            member["type"] = json!("m.room.member");
            member["state_key"] = json!("@alice:example.org");
            member["content"] = value.clone();
            out.push(member.clone());
            member["type"] = json!("m.room.create");
            out.push(member);
            let mut keyed = event.clone();
            keyed["signatures"]["example.org"]["ed25519:t"] = value;
            out.push(keyed);
        }
        out
    }

    /// Checks 1 to 4 in the spec's order on a room's first join, in every version: the creator's
    /// join passes all four; Bob's join, properly signed, passes 1 to 3 and fails 4 (the room
    /// has no join rule, so it is invite-only); a forged copy of the creator's join stops at 2.
    #[test]
    fn checks_one_to_four_in_order() {
        for version in SUPPORTED {
            let mut builder = Builder::new(&version);
            let rules = builder.rules.clone();
            let create = builder.create.clone();
            let keys = builder.keys();
            let join = |user: &str, builder: &mut Builder| {
                let content = json!({ "membership": "join" });
                let mut object = builder.unsigned_object(content, "m.room.member", Some(user));
                object.insert("sender".to_owned(), user.to_owned().into());
                builder.sign_object(object)
            };
            let receive = |json: &JsonValue| -> Result<Pdu, String> {
                let wire = parse_pdu(&json.to_string(), &rules).map_err(|e| format!("1: {e}"))?;
                let wire = match check_signatures_and_hash(wire, &rules, &keys) {
                    Verdict::Accepted(wire) => wire,
                    other => return Err(format!("2/3: {other:?}")),
                };
                let pdu = wire.into_pdu(&rules).map_err(|e| format!("1: {e}"))?;
                let known = |id: &EventId| (id == create.event_id).then_some(&create);
                let state_before = |kind: &StateEventType, key: &str| {
                    (*kind == StateEventType::RoomCreate && key.is_empty()).then_some(&create)
                };
                check_event(&rules.authorization, &pdu, known, state_before)
                    .map_err(|e| format!("4: {e}"))?;
                Ok(pdu)
            };
            let alice = join(ALICE, &mut builder);
            assert!(receive(&alice).is_ok(), "v{version}: {:?}", receive(&alice));
            let bob = join("@bob:example.org", &mut builder);
            let refused = receive(&bob).unwrap_err();
            assert!(refused.starts_with("4:"), "v{version}: {refused}");
            let mut forged = alice.clone();
            forged["origin_server_ts"] = json!(5);
            let refused = receive(&forged).unwrap_err();
            assert!(refused.starts_with("2/3:"), "v{version}: {refused}");
        }
    }

    #[test]
    fn odd_values_in_any_field_never_panic() {
        for version in SUPPORTED {
            let mut builder = Builder::new(&version);
            let event = builder.message_json("hi");
            let keys = builder.keys();
            let (mut parsed, mut accepted) = (0, 0);
            for candidate in mutations(&event) {
                let Ok(wire) = parse_pdu(&candidate.to_string(), &builder.rules) else { continue };
                parsed += 1;
                let _ = required_servers(&wire, &builder.rules);
                let pdu = match check_signatures_and_hash(wire, &builder.rules, &keys) {
                    Verdict::Accepted(pdu) | Verdict::Redact(pdu) => pdu,
                    Verdict::Reject(_) => continue,
                };
                accepted += 1;
                if let Ok(pdu) = pdu.into_pdu(&builder.rules) {
                    let _ = pdu.to_federation_object(&builder.rules);
                    let _ = pdu.to_client_event(None);
                }
            }
            // The sweep reached every stage: some mutations parse, some of those verify.
            assert!(parsed > 10 && accepted > 0, "v{version}: {parsed} parsed, {accepted} accepted");
        }
    }
}
