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

/// The inbound pipeline (parse, then signatures and hash, then the server's shape and back)
/// on every kind of odd value in every field, in every room version: it answers, never panics.
#[cfg(test)]
mod tests {
    use serde_json::{Value as JsonValue, json};

    use super::{
        format::parse_pdu,
        testing::Builder,
        verify::{Verdict, check_signatures_and_hash, required_servers},
    };
    use crate::matrix::room_version::SUPPORTED;

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
