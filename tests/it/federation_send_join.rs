//! `send_join` as the resident server, asked directly by another server's requests (signed
//! as B with B's key): with `omit_members`, the state leaves out member events but the
//! heroes' of a room without a name, the auth chain leaves out what the state holds, and
//! `members_omitted` and `servers_in_room` say so; without it, the whole state.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    federation_rooms::{TwoServers, encode, signed_request, two_servers},
    harness::{Pki, TestServer},
    rooms::{V3, create_room, join},
};

/// `user` (of B) joins `room` by asking A directly: `make_join`, the template signed with
/// B's key, `send_join` (v2, with `omit_members` when asked). Answers `send_join`'s body.
async fn join_directly(
    pki: &Pki,
    a: &TestServer,
    b: &TestServer,
    room: &str,
    user: &str,
    omit: bool,
) -> Value {
    let path = format!("/_matrix/federation/v1/make_join/{}/{}?ver=12", encode(room), encode(user));
    let (status, template) = signed_request(pki, a, b, "GET", &path, None).await;
    assert_eq!(status, StatusCode::OK, "{template}");
    let ruma::CanonicalJsonValue::Object(mut object) =
        ruma::CanonicalJsonValue::try_from(template["event"].clone()).unwrap()
    else {
        unreachable!()
    };
    let rules = conduit::matrix::room_version::rules(&ruma::RoomVersionId::V12).unwrap();
    let key = b.services.server_keys.key_pair();
    ruma::signatures::hash_and_sign_event(&b.name(), key, &mut object, &rules.redaction).unwrap();
    let id = conduit::matrix::pdu::event_id_for(&object, &rules).unwrap();
    let query = if omit { "?omit_members=true" } else { "" };
    let path = format!("/_matrix/federation/v2/send_join/{}/{}{query}", encode(room), encode(id.as_str()));
    let (status, answer) =
        signed_request(pki, a, b, "PUT", &path, Some(serde_json::to_value(&object).unwrap())).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

/// The `(type, state_key)` of each event in `events`, and their event IDs.
fn keys_and_ids(events: &Value) -> (HashSet<(String, String)>, HashSet<String>) {
    let events = events.as_array().unwrap();
    let keys = events
        .iter()
        .map(|e| {
            (e["type"].as_str().unwrap().to_owned(), e["state_key"].as_str().unwrap_or_default().to_owned())
        })
        .collect();
    let ids = events
        .iter()
        .map(|e| {
            let ruma::CanonicalJsonValue::Object(object) =
                ruma::CanonicalJsonValue::try_from(e.clone()).unwrap()
            else {
                unreachable!()
            };
            let rules = conduit::matrix::room_version::rules(&ruma::RoomVersionId::V12).unwrap();
            conduit::matrix::pdu::event_id_for(&object, &rules).unwrap().to_string()
        })
        .collect();
    (keys, ids)
}

#[tokio::test]
async fn send_join_with_omit_members_leaves_out_member_events_but_the_heroes_and_what_authorises() {
    let TwoServers { pki, a, b, alice, bob: _ } = two_servers().await;
    // Seven members of A in a room without a name: five of them are its heroes.
    let room = create_room(&a, &alice, json!({"preset": "public_chat", "room_version": "12"})).await;
    let mut members = vec![alice.user_id.clone()];
    for i in 0..6 {
        let user = a.register(&format!("member{i}"), &format!("pw-member{i}-123")).await;
        assert_eq!(join(&a, &user, &room).await.0, StatusCode::OK);
        members.push(user.user_id);
    }
    let heroes = &members[..5];

    // Without omit_members: every member's event.
    let full = join_directly(&pki, &a, &b, &room, &format!("@full:{}", b.name()), false).await;
    let (state, _) = keys_and_ids(&full["state"]);
    for member in &members {
        assert!(state.contains(&("m.room.member".to_owned(), member.clone())), "{member} missing: {full}");
    }
    assert_ne!(full["members_omitted"], json!(true), "{full}");

    // With it: the heroes' member events only (not the two other members', nor that of the
    // user of B who joined first), the rest of the state whole.
    let partial = join_directly(&pki, &a, &b, &room, &format!("@partial:{}", b.name()), true).await;
    assert_eq!(partial["members_omitted"], json!(true), "{partial}");
    let servers: HashSet<&str> =
        partial["servers_in_room"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(servers, HashSet::from([a.name().as_str(), b.name().as_str()]), "{partial}");
    let (state, state_ids) = keys_and_ids(&partial["state"]);
    let members_in_state: HashSet<String> =
        state.iter().filter(|(kind, _)| kind == "m.room.member").map(|(_, key)| key.clone()).collect();
    assert_eq!(members_in_state, heroes.iter().cloned().collect::<HashSet<_>>(), "{partial}");
    for kind in ["m.room.create", "m.room.power_levels", "m.room.join_rules", "m.room.history_visibility"] {
        assert!(state.contains(&(kind.to_owned(), String::new())), "{kind} missing: {partial}");
    }
    // The auth chain holds nothing the state holds, and everything that authorises the
    // state and the join: the creator's join (which authorised the power levels) included.
    let (_, chain_ids) = keys_and_ids(&partial["auth_chain"]);
    assert!(chain_ids.is_disjoint(&state_ids), "{partial}");
    let everything: HashSet<&String> = state_ids.iter().chain(chain_ids.iter()).collect();
    for event in partial["state"].as_array().unwrap().iter().chain(partial["auth_chain"].as_array().unwrap())
    {
        for auth in event["auth_events"].as_array().unwrap() {
            assert!(everything.contains(&auth.as_str().unwrap().to_owned()), "{auth} missing: {partial}");
        }
    }

    // A room with a name needs no heroes: no member events at all.
    let (status, body) = a
        .put(
            &format!("{V3}/rooms/{}/state/m.room.name/", encode(&room)),
            Some(&alice.token),
            json!({"name": "Named"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let named = join_directly(&pki, &a, &b, &room, &format!("@named:{}", b.name()), true).await;
    let (state, _) = keys_and_ids(&named["state"]);
    assert!(state.iter().all(|(kind, _)| kind != "m.room.member"), "{named}");
    assert!(state.contains(&("m.room.name".to_owned(), String::new())), "{named}");

    // Each join took: A lists the three users of B as members.
    let (status, joined) =
        a.get(&format!("{V3}/rooms/{}/joined_members", encode(&room)), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    for user in ["full", "partial", "named"] {
        assert!(joined["joined"].get(format!("@{user}:{}", b.name())).is_some(), "{user}: {joined}");
    }
}
