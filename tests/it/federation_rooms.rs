//! Rooms shared by two conduit servers over federation (TLS with a test CA, as in
//! `federation.rs`): a user of B joins a room of A by its ID through A, messages go both ways
//! and show in `/sync` and `/messages` on each side, a leave reaches the other server, and a
//! server that was down gets what it missed once it is back (the sender's retries moved on
//! the manual clock); a forged PDU is refused by name, and a replayed transaction is answered
//! as the first time without being done again.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Pki, Session, TestServer},
    rooms::{V3, create_room, send_text},
    sync::sync,
};

pub(crate) fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The bodies of the text messages in a room's `/messages`, oldest first.
pub(crate) async fn message_bodies(s: &TestServer, who: &Session, room: &str) -> Vec<String> {
    let (status, page) =
        s.get(&format!("{V3}/rooms/{}/messages?dir=b&limit=100", encode(room)), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut bodies: Vec<String> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect();
    bodies.reverse();
    bodies
}

/// Wait (in wall-clock time: delivery is a background task, not a timer) until `check`
/// holds, for at most 15 s.
pub(crate) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never saw {what}");
}

/// The room's timeline bodies in a sync.
fn synced_bodies(body: &Value, room: &str) -> Vec<String> {
    body["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) async fn membership_on(s: &TestServer, who: &Session, room: &str, user: &str) -> Value {
    let (_, member) = s
        .get(&format!("{V3}/rooms/{}/state/m.room.member/{}", encode(room), encode(user)), Some(&who.token))
        .await;
    member["membership"].clone()
}

/// Two federating servers: A with Alice, B with Bob.
pub(crate) struct TwoServers {
    pub pki: Pki,
    pub a: TestServer,
    pub b: TestServer,
    pub alice: Session,
    pub bob: Session,
}

pub(crate) async fn two_servers() -> TwoServers {
    let pki = Pki::new();
    let a = TestServer::start_federating(&pki, |_| {}).await;
    let b = TestServer::start_federating(&pki, |_| {}).await;
    let alice = a.register("alice", "pw-alice-123").await;
    let bob = b.register("bob", "pw-bob-12345").await;
    TwoServers { pki, a, b, alice, bob }
}

/// A room of A that Bob of B joins through A.
pub(crate) async fn shared_room(a: &TestServer, b: &TestServer, alice: &Session, bob: &Session) -> String {
    let room = create_room(a, alice, json!({"preset": "public_chat", "name": "Shared"})).await;
    let (status, joined) = b
        .post(&format!("{V3}/join/{}?via={}", encode(&room), encode(&a.name())), Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["room_id"], json!(room));
    room
}

#[tokio::test]
async fn a_room_is_shared_both_ways_and_a_leave_propagates() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let room = shared_room(&a, &b, &alice, &bob).await;

    // Both servers know Bob is in, and B has the room's state from A.
    let (status, members) =
        a.get(&format!("{V3}/rooms/{}/joined_members", encode(&room)), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert!(members["joined"][&bob.user_id].is_object(), "{members}");
    let (status, name) =
        b.get(&format!("{V3}/rooms/{}/state/m.room.name", encode(&room)), Some(&bob.token)).await;
    assert_eq!((status, &name["name"]), (StatusCode::OK, &json!("Shared")), "{name}");
    assert_eq!(membership_on(&b, &bob, &room, &alice.user_id).await, json!("join"));

    // Bob's message reaches A; Alice's reaches B.
    send_text(&b, &bob, &room, "b1", "hello from B").await;
    eventually("Bob's message on A", || async {
        message_bodies(&a, &alice, &room).await.contains(&"hello from B".to_owned())
    })
    .await;
    send_text(&a, &alice, &room, "a1", "hello from A").await;
    eventually("Alice's message on B", || async {
        message_bodies(&b, &bob, &room).await.contains(&"hello from A".to_owned())
    })
    .await;
    // In the same order on both sides.
    let on_a = message_bodies(&a, &alice, &room).await;
    let on_b = message_bodies(&b, &bob, &room).await;
    assert_eq!(on_a, vec!["hello from B", "hello from A"]);
    assert_eq!(on_b, on_a);
    // And in each user's /sync.
    let synced = sync(&a, &alice, "").await;
    assert_eq!(synced_bodies(&synced, &room), vec!["hello from B", "hello from A"], "{synced}");
    let synced = sync(&b, &bob, "").await;
    assert!(synced_bodies(&synced, &room).contains(&"hello from A".to_owned()), "{synced}");

    // Bob leaves on B; A sees him gone, and A's later messages no longer go to B.
    let (status, body) =
        b.post(&format!("{V3}/rooms/{}/leave", encode(&room)), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Bob's leave on A", || async {
        membership_on(&a, &alice, &room, &bob.user_id).await == json!("leave")
    })
    .await;
    let (_, members) =
        a.get(&format!("{V3}/rooms/{}/joined_members", encode(&room)), Some(&alice.token)).await;
    assert!(members["joined"].get(&bob.user_id).is_none(), "{members}");
    assert_eq!(
        a.services.federation_sender.servers_in_room(room.as_str().try_into().unwrap()).unwrap().len(),
        0
    );
}

#[tokio::test]
async fn a_server_that_was_down_catches_up() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let room = shared_room(&a, &b, &alice, &bob).await;
    send_text(&a, &alice, &room, "a0", "before").await;
    eventually("the first message on B", || async {
        message_bodies(&b, &bob, &room).await.contains(&"before".to_owned())
    })
    .await;

    // B goes down; Alice keeps talking.
    let config = (*b.services.config).clone();
    let clock = std::sync::Arc::clone(&b.clock);
    let dir = b.stop().await;
    for i in 1..=3 {
        send_text(&a, &alice, &room, &format!("a{i}"), &format!("while down {i}")).await;
    }
    // A's deliveries fail and back off; give them time to fail at least once.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // B is back on the same port and database; A's next retry (on A's clock) delivers all.
    let b = TestServer::listen_on(config, dir, clock).await;
    let mut caught_up = false;
    for _ in 0..200 {
        a.clock.advance_ms(30_000);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let bodies = message_bodies(&b, &bob, &room).await;
        if bodies.len() >= 4 {
            assert_eq!(bodies, vec!["before", "while down 1", "while down 2", "while down 3"]);
            caught_up = true;
            break;
        }
    }
    assert!(caught_up, "B never caught up: {:?}", message_bodies(&b, &bob, &room).await);
    // Bob answers, and A gets it: the way back works after the outage too.
    send_text(&b, &bob, &room, "b1", "back").await;
    eventually("Bob's answer on A", || async {
        message_bodies(&a, &alice, &room).await.contains(&"back".to_owned())
    })
    .await;
}

/// A PDU as B would send it in `room` on A: Bob's message citing A's latest event, signed
/// (and hashed) with `key` under B's name.
pub(crate) async fn bobs_message(
    a: &TestServer,
    alice: &Session,
    room: &str,
    bob: &str,
    b_name: &str,
    key: &ruma::signatures::Ed25519KeyPair,
    text: &str,
) -> Value {
    let (_, state) = a.get(&format!("{V3}/rooms/{}/state", encode(room)), Some(&alice.token)).await;
    let state = state.as_array().unwrap();
    let id_of = |kind: &str, key: &str| {
        state.iter().find(|e| e["type"] == kind && e["state_key"] == key).unwrap()["event_id"].clone()
    };
    let (_, page) =
        a.get(&format!("{V3}/rooms/{}/messages?dir=b&limit=1", encode(room)), Some(&alice.token)).await;
    let latest = page["chunk"][0]["event_id"].clone();
    let event = json!({
        "room_id": room,
        "sender": bob,
        "type": "m.room.message",
        "content": {"msgtype": "m.text", "body": text},
        "origin_server_ts": 1_700_000_000_000_u64,
        "depth": 1000,
        "prev_events": [latest],
        "auth_events": [id_of("m.room.power_levels", ""), id_of("m.room.member", bob)],
    });
    let ruma::CanonicalJsonValue::Object(mut object) = ruma::CanonicalJsonValue::try_from(event).unwrap()
    else {
        unreachable!()
    };
    let rules = conduit::matrix::room_version::rules(&ruma::RoomVersionId::V12).unwrap();
    ruma::signatures::hash_and_sign_event(b_name, key, &mut object, &rules.redaction).unwrap();
    serde_json::to_value(&object).unwrap()
}

/// `PUT /send/{txnId}` to A, signed as B with B's real key.
pub(crate) async fn put_transaction(
    pki: &Pki,
    a: &TestServer,
    b: &TestServer,
    txn: &str,
    pdus: Vec<Value>,
) -> (StatusCode, Value) {
    use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
    let path = format!("/_matrix/federation/v1/send/{txn}");
    let body = serde_json::to_vec(&json!({"origin": b.name(), "origin_server_ts": 1, "pdus": pdus})).unwrap();
    let request = axum::http::Request::builder().method("PUT").uri(&path).body(body.clone()).unwrap();
    let header = XMatrix::sign_http_request(
        &request,
        XMatrixSigningInput::new(
            b.name().try_into().unwrap(),
            a.name().try_into().unwrap(),
            b.services.server_keys.key_pair(),
        ),
    )
    .unwrap()
    .to_string();
    let response = pki
        .client()
        .put(format!("{}{path}", a.federation_base()))
        .header("authorization", header)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_forged_pdu_is_refused_by_name_and_a_replayed_transaction_is_answered_once() {
    let TwoServers { pki, a, b, alice, bob } = two_servers().await;
    let room = shared_room(&a, &b, &alice, &bob).await;

    // Signed under B's key ID by another key: refused, named in the answer, not stored.
    let b_key = b.services.server_keys.key_pair();
    let forger = ruma::signatures::Ed25519KeyPair::from_der(
        &ruma::signatures::Ed25519KeyPair::generate(),
        b_key.version().to_owned(),
    )
    .unwrap();
    let forged = bobs_message(&a, &alice, &room, &bob.user_id, &b.name(), &forger, "forged").await;
    let (status, answer) = put_transaction(&pki, &a, &b, "t1", vec![forged]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let results = answer["pdus"].as_object().unwrap();
    assert_eq!(results.len(), 1, "{answer}");
    let (_, result) = results.iter().next().unwrap();
    assert!(result["error"].as_str().unwrap().contains("does not verify"), "{answer}");
    assert!(!message_bodies(&a, &alice, &room).await.contains(&"forged".to_owned()));

    // The same transaction ID again, now with a genuine PDU: answered as the first time,
    // and nothing of it is done.
    let genuine = bobs_message(&a, &alice, &room, &bob.user_id, &b.name(), b_key, "genuine").await;
    let (status, replayed) = put_transaction(&pki, &a, &b, "t1", vec![genuine.clone()]).await;
    assert_eq!((status, &replayed), (StatusCode::OK, &answer));
    assert!(!message_bodies(&a, &alice, &room).await.contains(&"genuine".to_owned()));

    // Under a new ID the genuine PDU is accepted and Alice reads it.
    let (status, accepted) = put_transaction(&pki, &a, &b, "t2", vec![genuine]).await;
    assert_eq!(status, StatusCode::OK, "{accepted}");
    let (_, result) = accepted["pdus"].as_object().unwrap().iter().next().unwrap();
    assert!(result.get("error").is_none(), "{accepted}");
    assert!(message_bodies(&a, &alice, &room).await.contains(&"genuine".to_owned()));
}

#[tokio::test]
async fn a_server_the_rooms_acl_denies_is_refused_in_that_room() {
    let TwoServers { pki, a, b, alice, bob } = two_servers().await;
    let room = shared_room(&a, &b, &alice, &bob).await;
    let b_key = b.services.server_keys.key_pair();
    // A message of Bob's before any ACL is accepted.
    let before = bobs_message(&a, &alice, &room, &bob.user_id, &b.name(), b_key, "before the ACL").await;
    let (status, answer) = put_transaction(&pki, &a, &b, "t1", vec![before]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["pdus"].as_object().unwrap().values().all(|r| r.get("error").is_none()), "{answer}");

    // Alice denies B's host (the test servers are IP literals with ports; the ACL matches
    // the host). A's own requests are not checked against it.
    let host = b.name().rsplit_once(':').map(|(host, _)| host.to_owned()).unwrap();
    let (status, body) = a
        .put(
            &format!("{V3}/rooms/{}/state/m.room.server_acl/", encode(&room)),
            Some(&alice.token),
            json!({"allow": ["*"], "deny": [host], "allow_ip_literals": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room_id: ruma::OwnedRoomId = room.as_str().try_into().unwrap();
    let b_name: ruma::OwnedServerName = b.name().try_into().unwrap();
    assert!(!a.services.room_federation.acl_allows(&b_name, &room_id).unwrap());

    // B's PDUs in the room are refused by name, and not stored.
    let after = bobs_message(&a, &alice, &room, &bob.user_id, &b.name(), b_key, "after the ACL").await;
    let (status, answer) = put_transaction(&pki, &a, &b, "t2", vec![after]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (_, result) = answer["pdus"].as_object().unwrap().iter().next().unwrap();
    assert!(result["error"].as_str().unwrap().contains("server ACL"), "{answer}");
    let bodies = message_bodies(&a, &alice, &room).await;
    assert!(bodies.contains(&"before the ACL".to_owned()) && !bodies.contains(&"after the ACL".to_owned()));

    // Reads and joins about the room are refused too.
    let (_, page) =
        a.get(&format!("{V3}/rooms/{}/messages?dir=b&limit=1", encode(&room)), Some(&alice.token)).await;
    let latest = page["chunk"][0]["event_id"].as_str().unwrap().to_owned();
    let reads = [
        format!("/_matrix/federation/v1/state_ids/{}?event_id={}", encode(&room), encode(&latest)),
        format!("/_matrix/federation/v1/make_join/{}/{}?ver=12", encode(&room), encode(&bob.user_id)),
        format!("/_matrix/federation/v1/backfill/{}?v={}&limit=5", encode(&room), encode(&latest)),
    ];
    for path in reads {
        let (status, body) = signed_request(&pki, &a, &b, "GET", &path, None).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
            "{path}: {body}"
        );
    }

    // Bob's typing in the room is dropped.
    let typing =
        json!({"edu_type": "m.typing", "content": {"room_id": room, "user_id": bob.user_id, "typing": true}});
    let (status, answer) = put_edus(&pki, &a, &b, "t3", vec![typing]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let seen = ephemeral(&a, &alice, &room, "m.typing").await;
    assert!(
        !seen["content"]["user_ids"].as_array().is_some_and(|u| u.contains(&json!(bob.user_id))),
        "{seen}"
    );
}

#[tokio::test]
async fn another_servers_public_rooms_are_listed_paged_and_searched_over_federation() {
    let pki = Pki::new();
    let closed = TestServer::start_federating(&pki, |_| {}).await;
    let a = TestServer::start_federating(&pki, |c| c.allow_public_rooms_over_federation = true).await;
    let b = TestServer::start_federating(&pki, |_| {}).await;
    let alice = a.register("alice", "pw-alice-123").await;
    let bob = b.register("bob", "pw-bob-12345").await;

    // A server that does not list its directory over federation (the default) refuses.
    let (status, refused) =
        signed_request(&pki, &closed, &b, "GET", "/_matrix/federation/v1/publicRooms", None).await;
    assert_eq!(
        (status, refused["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
        "{refused}"
    );
    // Bob asking B for that server's directory hears the refusal, as Synapse passes it on
    // (not as a failure of B's: 502).
    let (status, refused) =
        b.get(&format!("{V3}/publicRooms?server={}", encode(&closed.name())), Some(&bob.token)).await;
    assert_eq!(
        (status, refused["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
        "{refused}"
    );
    assert!(refused["error"].as_str().unwrap().contains(&closed.name()), "{refused}");

    let square = create_room(
        &a,
        &alice,
        json!({"preset": "public_chat", "name": "Town square", "visibility": "public"}),
    )
    .await;
    let yard = create_room(
        &a,
        &alice,
        json!({"preset": "public_chat", "name": "Back yard", "visibility": "public"}),
    )
    .await;
    let _hidden = create_room(&a, &alice, json!({"preset": "public_chat", "name": "Unlisted"})).await;
    let server = encode(&a.name());
    let ids = |page: &Value| -> Vec<String> {
        page["chunk"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap().to_owned()).collect()
    };

    // Bob on B lists A's directory: the two published rooms, with their names.
    let (status, page) = b.get(&format!("{V3}/publicRooms?server={server}"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut listed = ids(&page);
    listed.sort();
    let mut published = vec![square.clone(), yard.clone()];
    published.sort();
    assert_eq!(listed, published, "{page}");
    assert_eq!(page["total_room_count_estimate"], json!(2), "{page}");

    // One at a time, with A's paging token.
    let (_, first) = b.get(&format!("{V3}/publicRooms?server={server}&limit=1"), Some(&bob.token)).await;
    let since = first["next_batch"].as_str().expect("a next page").to_owned();
    let (_, second) = b
        .get(&format!("{V3}/publicRooms?server={server}&limit=1&since={}", encode(&since)), Some(&bob.token))
        .await;
    let mut both = [ids(&first), ids(&second)].concat();
    both.sort();
    assert_eq!(both, published);

    // Searched with the filter A applies.
    let (status, found) = b
        .post(
            &format!("{V3}/publicRooms?server={server}"),
            Some(&bob.token),
            json!({"filter": {"generic_search_term": "town"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(ids(&found), vec![square.clone()], "{found}");
    assert_eq!(found["chunk"][0]["name"], json!("Town square"), "{found}");
}

/// The room's ephemeral event of `kind` in a fresh sync.
async fn ephemeral(s: &TestServer, who: &Session, room: &str, kind: &str) -> Value {
    let synced = sync(s, who, "").await;
    synced["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["type"] == kind).cloned())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn typing_and_read_receipts_cross_to_the_other_server() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let room = shared_room(&a, &b, &alice, &bob).await;
    let message = send_text(&b, &bob, &room, "b1", "read me").await;
    eventually("Bob's message on A", || async {
        message_bodies(&a, &alice, &room).await.contains(&"read me".to_owned())
    })
    .await;

    // Alice types on A: Bob's sync on B shows it; she stops: it goes away.
    let typing = |on: bool| json!({"typing": on, "timeout": 30000});
    let path = format!("{V3}/rooms/{}/typing/{}", encode(&room), encode(&alice.user_id));
    let (status, body) = a.put(&path, Some(&alice.token), typing(true)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Alice typing on B", || async {
        ephemeral(&b, &bob, &room, "m.typing").await["content"]["user_ids"] == json!([alice.user_id])
    })
    .await;
    let (status, body) = a.put(&path, Some(&alice.token), typing(false)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Alice no longer typing on B", || async {
        let typing = ephemeral(&b, &bob, &room, "m.typing").await;
        typing.is_null() || typing["content"]["user_ids"] == json!([])
    })
    .await;

    // Bob types on B: Alice's sync on A shows it.
    let path = format!("{V3}/rooms/{}/typing/{}", encode(&room), encode(&bob.user_id));
    let (status, body) = b.put(&path, Some(&bob.token), typing(true)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Bob typing on A", || async {
        ephemeral(&a, &alice, &room, "m.typing").await["content"]["user_ids"] == json!([bob.user_id])
    })
    .await;

    // Alice reads Bob's message: B learns her read receipt.
    let (status, body) = a
        .post(
            &format!("{V3}/rooms/{}/receipt/m.read/{}", encode(&room), encode(&message)),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Alice's receipt on B", || async {
        ephemeral(&b, &bob, &room, "m.receipt").await["content"][&message]["m.read"][&alice.user_id]
            .is_object()
    })
    .await;
}

async fn set_presence(s: &TestServer, who: &Session, state: &str, msg: &str) {
    let path = format!("{V3}/presence/{}/status", encode(&who.user_id));
    let (status, body) = s.put(&path, Some(&who.token), json!({"presence": state, "status_msg": msg})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// `who`'s presence of `user` as a fresh sync on `s` shows it.
async fn synced_presence(s: &TestServer, who: &Session, user: &str) -> Value {
    let synced = sync(s, who, "").await;
    synced["presence"]["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["sender"] == user).cloned())
        .map_or(Value::Null, |e| e["content"].clone())
}

#[tokio::test]
async fn presence_crosses_to_room_mates_on_the_other_server_and_only_from_its_own_users() {
    let TwoServers { pki, a, b, alice, bob } = two_servers().await;
    let _room = shared_room(&a, &b, &alice, &bob).await;
    // Alice on A: Bob's sync on B shows it, and her later change replaces it.
    set_presence(&a, &alice, "online", "in the office").await;
    eventually("Alice online on B", || async {
        let p = synced_presence(&b, &bob, &alice.user_id).await;
        p["presence"] == "online" && p["status_msg"] == "in the office"
    })
    .await;
    set_presence(&a, &alice, "unavailable", "lunch").await;
    eventually("Alice away on B", || async {
        let p = synced_presence(&b, &bob, &alice.user_id).await;
        p["presence"] == "unavailable" && p["status_msg"] == "lunch"
    })
    .await;
    let (status, body) =
        b.get(&format!("{V3}/presence/{}/status", encode(&alice.user_id)), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["presence"].clone(), body["status_msg"].clone()),
        (json!("unavailable"), json!("lunch"))
    );
    // Bob on B: Alice's sync on A.
    set_presence(&b, &bob, "online", "remote").await;
    eventually("Bob online on A", || async {
        synced_presence(&a, &alice, &bob.user_id).await["presence"] == "online"
    })
    .await;

    // B may speak for its own users only; a user sharing no room is not kept.
    let edu = |user: &str| json!({"edu_type": "m.presence", "content": {"push": [{"user_id": user, "presence": "offline", "last_active_ago": 5}]}});
    let stranger = format!("@stranger:{}", b.name());
    let (status, body) =
        put_edus(&pki, &a, &b, "presence-forged", vec![edu(&alice.user_id), edu(&stranger)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Then one it may send, so that the ones before were surely handled.
    let (status, body) = put_edus(&pki, &a, &b, "presence-real", vec![edu(&bob.user_id)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Bob offline on A", || async {
        synced_presence(&a, &alice, &bob.user_id).await["presence"] == "offline"
    })
    .await;
    assert!(a.services.presence.get(&ruma::UserId::parse(&stranger).unwrap()).unwrap().is_none());
    let (status, body) =
        a.get(&format!("{V3}/presence/{}/status", encode(&alice.user_id)), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // (Her own syncs above set her online again; B's forged update would have said offline.)
    assert_eq!(body["presence"], "online", "B changed Alice's presence: {body}");
    assert_eq!(body["status_msg"], "lunch", "{body}");
}

/// A request to `to`, signed as `from` with its real key (X-Matrix).
pub(crate) async fn signed_request(
    pki: &Pki,
    to: &TestServer,
    from: &TestServer,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let response = signed_send(pki, to, from, method, path, body).await;
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A request from `from` to `to`'s federation API, signed with X-Matrix; the raw response.
pub(crate) async fn signed_send(
    pki: &Pki,
    to: &TestServer,
    from: &TestServer,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
    let bytes = body.as_ref().map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
    let request = axum::http::Request::builder().method(method).uri(path).body(bytes.clone()).unwrap();
    let header = XMatrix::sign_http_request(
        &request,
        XMatrixSigningInput::new(
            from.name().try_into().unwrap(),
            to.name().try_into().unwrap(),
            from.services.server_keys.key_pair(),
        ),
    )
    .unwrap()
    .to_string();
    let mut builder = pki
        .client()
        .request(method.parse().unwrap(), format!("{}{path}", to.federation_base()))
        .header("authorization", header);
    if body.is_some() {
        builder = builder.header("content-type", "application/json").body(bytes);
    }
    builder.send().await.unwrap()
}

/// Invite `user` (of another server) into `room`.
pub(crate) async fn invite(s: &TestServer, who: &Session, room: &str, user: &str) {
    let (status, body) = s
        .post(&format!("{V3}/rooms/{}/invite", encode(room)), Some(&who.token), json!({"user_id": user}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Bob (of B) joins `room` of A with no `via` (so through the server that invited him), and
/// A comes to see him joined.
pub(crate) async fn accept_invite(
    a: &TestServer,
    b: &TestServer,
    alice: &Session,
    bob: &Session,
    room: &str,
) {
    let (status, joined) = b.post(&format!("{V3}/join/{}", encode(room)), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    eventually("Bob's join on A", || async {
        membership_on(a, alice, room, &bob.user_id).await == json!("join")
    })
    .await;
}

/// `who`'s sliding sync lists `room` as invited (or knocked), named `name`, with its
/// stripped state.
pub(crate) async fn sliding_lists_invited(s: &TestServer, who: &Session, room: &str, name: &str) {
    let (status, sliding) = s
        .post(
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            Some(&who.token),
            json!({"lists": {"all": {"ranges": [[0, 10]], "timeline_limit": 1}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sliding}");
    assert_eq!(sliding["rooms"][room]["name"], name, "{sliding}");
    assert!(sliding["rooms"][room]["invite_state"].as_array().is_some_and(|s| !s.is_empty()), "{sliding}");
}

/// The stripped state of an invite in a sync, as (type, state_key) pairs.
fn invite_state(body: &Value, room: &str) -> Vec<(String, String)> {
    body["rooms"]["invite"][room]["invite_state"]["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    (
                        e["type"].as_str().unwrap_or_default().to_owned(),
                        e["state_key"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_user_of_another_server_is_invited_and_joins_through_the_inviting_server() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    // A private room: only an invite lets Bob in.
    let room = create_room(&a, &alice, json!({"preset": "private_chat", "name": "Secret"})).await;
    let before = sync(&b, &bob, "").await["next_batch"].as_str().unwrap().to_owned();

    invite(&a, &alice, &room, &bob.user_id).await;
    assert_eq!(membership_on(&a, &alice, &room, &bob.user_id).await, json!("invite"));
    // Bob's sync on B shows the invite with the room's name, the inviter and the invite.
    let synced = sync(&b, &bob, &format!("since={before}")).await;
    let state = invite_state(&synced, &room);
    assert!(state.contains(&("m.room.name".to_owned(), String::new())), "{synced}");
    assert!(state.contains(&("m.room.member".to_owned(), alice.user_id.clone())), "{synced}");
    assert!(state.contains(&("m.room.member".to_owned(), bob.user_id.clone())), "{synced}");
    let own = synced["rooms"]["invite"][&room]["invite_state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["state_key"] == json!(bob.user_id))
        .unwrap()
        .clone();
    assert_eq!(
        (own["content"]["membership"].clone(), own["sender"].clone()),
        (json!("invite"), json!(alice.user_id))
    );
    // An initial sync shows it too; an incremental one from after it does not again.
    let initial = sync(&b, &bob, "").await;
    assert!(initial["rooms"]["invite"][&room].is_object(), "{initial}");
    let again = sync(&b, &bob, &format!("since={}", synced["next_batch"].as_str().unwrap())).await;
    assert!(again["rooms"]["invite"].get(&room).is_none(), "{again}");
    // Sliding sync lists it as an invited room with its name.
    sliding_lists_invited(&b, &bob, &room, "Secret").await;

    // Bob accepts: the join goes through A (no via given), and the room works both ways.
    accept_invite(&a, &b, &alice, &bob, &room).await;
    let synced = sync(&b, &bob, "").await;
    assert!(synced["rooms"]["join"][&room].is_object(), "{synced}");
    assert!(synced["rooms"]["invite"].get(&room).is_none(), "{synced}");
    send_text(&b, &bob, &room, "b1", "thanks for the invite").await;
    eventually("Bob's message on A", || async {
        message_bodies(&a, &alice, &room).await.contains(&"thanks for the invite".to_owned())
    })
    .await;

    // createRoom's invite list reaches another server's user too.
    let direct = create_room(
        &a,
        &alice,
        json!({"preset": "trusted_private_chat", "invite": [bob.user_id], "is_direct": true}),
    )
    .await;
    assert_eq!(membership_on(&a, &alice, &direct, &bob.user_id).await, json!("invite"));
    let synced = sync(&b, &bob, "").await;
    assert!(synced["rooms"]["invite"][&direct].is_object(), "{synced}");
}

#[tokio::test]
async fn a_remote_invite_is_rejected_through_the_inviting_server() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let room = create_room(&a, &alice, json!({"preset": "private_chat", "name": "Unwanted"})).await;
    invite(&a, &alice, &room, &bob.user_id).await;
    let invited = sync(&b, &bob, "").await;
    assert!(invited["rooms"]["invite"][&room].is_object(), "{invited}");
    let since = invited["next_batch"].as_str().unwrap().to_owned();

    // Bob declines on B: B asks A for a leave (make_leave/send_leave), A takes it.
    let (status, body) =
        b.post(&format!("{V3}/rooms/{}/leave", encode(&room)), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(membership_on(&a, &alice, &room, &bob.user_id).await, json!("leave"));
    // Bob's next sync shows the room left, with his leave; the invite is gone.
    let synced = sync(&b, &bob, &format!("since={since}")).await;
    let timeline =
        synced["rooms"]["leave"][&room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
    assert!(
        timeline.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == json!(bob.user_id)
            && e["content"]["membership"] == "leave"),
        "{synced}"
    );
    let initial = sync(&b, &bob, "").await;
    assert!(initial["rooms"]["invite"].get(&room).is_none(), "{initial}");
    // He cannot join on the strength of the old invite any more.
    let (status, _) = b.post(&format!("{V3}/join/{}", encode(&room)), Some(&bob.token), json!({})).await;
    assert_ne!(status, StatusCode::OK);

    // A joined member of another server leaves: the other side sees it (send_leave as the
    // resident server is what the rejection above used; a joined user's leave goes out as
    // an event of the room).
    invite(&a, &alice, &room, &bob.user_id).await;
    let (status, joined) = b.post(&format!("{V3}/join/{}", encode(&room)), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let (status, body) =
        b.post(&format!("{V3}/rooms/{}/leave", encode(&room)), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Bob's leave on A", || async {
        membership_on(&a, &alice, &room, &bob.user_id).await == json!("leave")
    })
    .await;
}

#[tokio::test]
async fn an_invite_from_another_server_is_checked() {
    let pki = Pki::new();
    let a = TestServer::start_federating(&pki, |_| {}).await;
    let b = TestServer::start_federating(&pki, |_| {}).await;
    let _bob = b.register("bob", "pw-bob-12345").await;
    let room = format!("!abcdefghijklmnop:{}", a.name());
    let path = |event: &str| format!("/_matrix/federation/v2/invite/{}/{}", encode(&room), encode(event));
    let event = json!({"type": "m.room.member"});

    // A room version B does not know.
    let (status, body) = signed_request(
        &pki,
        &b,
        &a,
        "PUT",
        &path("$x"),
        Some(json!({"room_version": "org.example.v99", "event": event, "invite_room_state": []})),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_INCOMPATIBLE_ROOM_VERSION")),
        "{body}"
    );
    // A malformed event.
    let (status, body) = signed_request(
        &pki,
        &b,
        &a,
        "PUT",
        &path("$x"),
        Some(json!({"room_version": "11", "event": event, "invite_room_state": []})),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")),
        "{body}"
    );
    // A well-formed, signed invite of a user B does not have.
    let alice = a.register("alice", "pw-alice-123").await;
    let real = create_room(&a, &alice, json!({"preset": "private_chat"})).await;
    let (_, state) = a.get(&format!("{V3}/rooms/{}/state", encode(&real)), Some(&alice.token)).await;
    let state = state.as_array().unwrap();
    let id_of = |kind: &str, key: &str| {
        state.iter().find(|e| e["type"] == kind && e["state_key"] == key).unwrap()["event_id"].clone()
    };
    let nobody = format!("@nobody:{}", b.name());
    let invite = json!({
        "room_id": real,
        "sender": alice.user_id,
        "type": "m.room.member",
        "state_key": nobody,
        "content": {"membership": "invite"},
        "origin_server_ts": 1_700_000_000_000_u64,
        "depth": 10,
        "prev_events": [id_of("m.room.join_rules", "")],
        "auth_events": [id_of("m.room.power_levels", ""), id_of("m.room.join_rules", ""), id_of("m.room.member", &alice.user_id)],
    });
    let ruma::CanonicalJsonValue::Object(mut object) = ruma::CanonicalJsonValue::try_from(invite).unwrap()
    else {
        unreachable!()
    };
    let rules = conduit::matrix::room_version::rules(&ruma::RoomVersionId::V12).unwrap();
    ruma::signatures::hash_and_sign_event(
        &a.name(),
        a.services.server_keys.key_pair(),
        &mut object,
        &rules.redaction,
    )
    .unwrap();
    let event_id = conduit::matrix::pdu::event_id_for(&object, &rules).unwrap();
    let (status, body) = signed_request(
        &pki,
        &b,
        &a,
        "PUT",
        &format!("/_matrix/federation/v2/invite/{}/{}", encode(&real), encode(event_id.as_str())),
        Some(json!({"room_version": "12", "event": object, "invite_room_state": []})),
    )
    .await;
    assert_eq!((status, body["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")), "{body}");
}

#[tokio::test]
async fn history_from_before_the_join_is_backfilled_on_demand_and_is_not_new_in_sync() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let room = create_room(&a, &alice, json!({"preset": "public_chat", "name": "Old talk"})).await;
    for i in 1..=5 {
        send_text(&a, &alice, &room, &format!("e{i}"), &format!("early {i}")).await;
    }
    let (status, joined) = b
        .post(&format!("{V3}/join/{}?via={}", encode(&room), encode(&a.name())), Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let token = sync(&b, &bob, "").await["next_batch"].as_str().unwrap().to_owned();

    // B has only the room from Bob's join on; paging back fetches the rest from A.
    let bodies = message_bodies(&b, &bob, &room).await;
    assert_eq!(bodies, vec!["early 1", "early 2", "early 3", "early 4", "early 5"]);
    let (_, page) =
        b.get(&format!("{V3}/rooms/{}/messages?dir=b&limit=100", encode(&room)), Some(&bob.token)).await;
    let chunk = page["chunk"].as_array().unwrap();
    assert_eq!(chunk.last().unwrap()["type"], "m.room.create", "{page}");
    assert!(page.get("end").is_none(), "the room's start was reached: {page}");

    // Backfilled history is old: a sync from before it shows none of it as new.
    let synced = sync(&b, &bob, &format!("since={token}")).await;
    assert!(synced_bodies(&synced, &room).is_empty(), "{synced}");
    // A message after it arrives as usual.
    send_text(&a, &alice, &room, "late", "late").await;
    eventually("the late message in Bob's sync", || async {
        synced_bodies(&sync(&b, &bob, &format!("since={token}")).await, &room) == vec!["late".to_owned()]
    })
    .await;
}

/// Upload a device's keys and one one-time key (the server stores them by shape).
async fn upload_keys(s: &TestServer, who: &Session, tag: &str) {
    let body = json!({
        "device_keys": {
            "user_id": who.user_id, "device_id": who.device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {format!("curve25519:{}", who.device_id): format!("curve-{tag}"), format!("ed25519:{}", who.device_id): format!("ed-{tag}")},
            "signatures": {who.user_id.clone(): {format!("ed25519:{}", who.device_id): "sig"}},
        },
        "one_time_keys": {format!("signed_curve25519:{tag}"): {"key": format!("otk-{tag}"), "signatures": {who.user_id.clone(): {format!("ed25519:{}", who.device_id): "sig"}}}},
    });
    let (status, answer) = s.post(&format!("{V3}/keys/upload"), Some(&who.token), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn keys_to_device_messages_and_device_lists_cross_servers() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let room = shared_room(&a, &b, &alice, &bob).await;
    upload_keys(&b, &bob, "one").await;

    // Alice's server asks Bob's for his keys; an unreachable server is a failure.
    let nowhere = format!("@ghost:127.0.0.1:{}", crate::harness::free_port());
    let (status, keys) = a
        .post(
            &format!("{V3}/keys/query"),
            Some(&alice.token),
            json!({"device_keys": {bob.user_id.clone(): [], nowhere.clone(): []}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    let device = &keys["device_keys"][&bob.user_id][&bob.device_id];
    assert_eq!(device["keys"][format!("curve25519:{}", bob.device_id)], "curve-one", "{keys}");
    assert!(keys["failures"][nowhere.split_once(':').unwrap().1].is_object(), "{keys}");
    assert!(keys["failures"].get(b.name()).is_none(), "{keys}");

    // And claims one of his one-time keys through it, once.
    let claim = json!({"one_time_keys": {bob.user_id.clone(): {bob.device_id.clone(): "signed_curve25519"}}});
    let (status, claimed) = a.post(&format!("{V3}/keys/claim"), Some(&alice.token), claim.clone()).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!(
        claimed["one_time_keys"][&bob.user_id][&bob.device_id]["signed_curve25519:one"]["key"], "otk-one",
        "{claimed}"
    );
    let (_, again) = a.post(&format!("{V3}/keys/claim"), Some(&alice.token), claim).await;
    assert!(again["one_time_keys"][&bob.user_id].get(&bob.device_id).is_none(), "{again}");

    // A to-device message from Alice reaches Bob's device on B.
    let (status, body) = a
        .put(
            &format!("{V3}/sendToDevice/m.test.ping/t1"),
            Some(&alice.token),
            json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"hello": "from A"}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Alice's to-device message on B", || async {
        let synced = sync(&b, &bob, "").await;
        synced["to_device"]["events"].as_array().is_some_and(|events| {
            events.iter().any(|e| {
                e["type"] == "m.test.ping"
                    && e["sender"] == json!(alice.user_id)
                    && e["content"]["hello"] == "from A"
            })
        })
    })
    .await;

    // Bob's new keys show on A as a device-list change in Alice's sync.
    let since = sync(&a, &alice, "").await["next_batch"].as_str().unwrap().to_owned();
    let bob2 = b.login("bob", "pw-bob-12345", Some("BOBTWO")).await;
    upload_keys(&b, &bob2, "two").await;
    eventually("Bob's device-list change in Alice's sync", || async {
        let synced = sync(&a, &alice, &format!("since={since}")).await;
        synced["device_lists"]["changed"].as_array().is_some_and(|c| c.contains(&json!(bob.user_id)))
    })
    .await;
    let (_, keys) = a
        .post(
            &format!("{V3}/keys/query"),
            Some(&alice.token),
            json!({"device_keys": {bob.user_id.clone(): []}}),
        )
        .await;
    assert!(keys["device_keys"][&bob.user_id]["BOBTWO"].is_object(), "{keys}");
    let _ = room;
}

/// Whether Bob's sync on B has Alice's to-device message of type `kind`.
async fn has_to_device(b: &TestServer, bob: &Session, kind: &str, sender: &str) -> bool {
    let synced = sync(b, bob, "").await;
    synced["to_device"]["events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e["type"] == kind && e["sender"] == json!(sender)))
}

#[tokio::test]
async fn a_to_device_message_to_a_server_that_is_down_survives_a_restart_of_the_sender() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;

    // B goes down; Alice sends Bob's device a message, which A cannot deliver.
    let b_config = (*b.services.config).clone();
    let b_clock = std::sync::Arc::clone(&b.clock);
    let b_dir = b.stop().await;
    let (status, body) = a
        .put(
            &format!("{V3}/sendToDevice/m.test.durable/t1"),
            Some(&alice.token),
            json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"kept": true}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let b_name: ruma::OwnedServerName = b_config.server_name.clone();
    assert_eq!(a.services.federation_sender.durable_waiting(&b_name).unwrap(), 1);
    // Give A's first delivery time to fail.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A restarts (losing all it held in memory), then B comes back.
    let a_config = (*a.services.config).clone();
    let a_clock = std::sync::Arc::clone(&a.clock);
    let a_dir = a.stop().await;
    let a = TestServer::listen_on(a_config, a_dir, a_clock).await;
    assert_eq!(
        a.services.federation_sender.durable_waiting(&b_name).unwrap(),
        1,
        "still waiting after a restart"
    );
    let b = TestServer::listen_on(b_config, b_dir, b_clock).await;
    let mut arrived = false;
    for _ in 0..200 {
        a.clock.advance_ms(30_000);
        tokio::time::sleep(Duration::from_millis(50)).await;
        if has_to_device(&b, &bob, "m.test.durable", &alice.user_id).await {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "Alice's to-device message never reached Bob after the outage");
    // Once acknowledged, it is no longer kept.
    eventually("the acknowledged EDU forgotten", || async {
        a.services.federation_sender.durable_waiting(&b_name).unwrap() == 0
    })
    .await;
}

#[tokio::test]
async fn device_list_updates_for_a_server_that_is_down_are_kept_one_per_device_not_one_per_change() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let _room = shared_room(&a, &b, &alice, &bob).await;
    upload_keys(&a, &alice, "one").await;
    let keys = query_keys(&b, &bob, &[&alice.user_id]).await;
    assert!(keys["device_keys"][&alice.user_id][&alice.device_id].is_object(), "{keys}");
    let b_name: ruma::OwnedServerName = b.services.config.server_name.clone();
    eventually("A's updates to B delivered", || async {
        a.services.federation_sender.durable_waiting(&b_name).unwrap() == 0
    })
    .await;

    // B goes down; Alice renames her device ten times and sets up cross-signing: eleven
    // changes for B.
    let b_config = (*b.services.config).clone();
    let b_clock = std::sync::Arc::clone(&b.clock);
    let b_dir = b.stop().await;
    for i in 0..10 {
        let (status, body) = a
            .put(
                &format!("{V3}/devices/{}", alice.device_id),
                Some(&alice.token),
                json!({"display_name": format!("Phone {i}")}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let master = upload_cross_signing(&a, &alice).await;
    let alice_id = ruma::OwnedUserId::try_from(alice.user_id.as_str()).unwrap();
    let latest =
        a.services.keys.changes_between(0, u64::MAX).unwrap().into_iter().find(|(_, u)| *u == alice_id);
    let latest = latest.expect("Alice's list changed").0;
    eventually("A's sender handled Alice's last change", || async {
        a.services.remote_e2ee.serve_devices(&alice_id).unwrap().stream_id == latest
    })
    .await;
    // Only the last of each waits: her device's update and her keys' update.
    assert_eq!(a.services.federation_sender.durable_waiting(&b_name).unwrap(), 2);

    // B comes back: it sees the gap, fetches her list and has it as it is now.
    let b = TestServer::listen_on(b_config, b_dir, b_clock).await;
    let mut delivered = false;
    for _ in 0..200 {
        a.clock.advance_ms(30_000);
        tokio::time::sleep(Duration::from_millis(50)).await;
        if a.services.federation_sender.durable_waiting(&b_name).unwrap() == 0 {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "A's waiting updates never reached B");
    eventually("Alice's list on B as it is now", || async {
        cached(&b, &alice.user_id).is_some_and(|list| {
            !list.stale
                && list.devices.get(&alice.device_id).is_some_and(|keys| keys.contains("Phone 9"))
                && list
                    .master_key
                    .is_some_and(|key| serde_json::from_str::<Value>(&key).unwrap()["keys"] == master["keys"])
        })
    })
    .await;
    let keys = query_keys(&b, &bob, &[&alice.user_id]).await;
    assert_eq!(
        keys["device_keys"][&alice.user_id][&alice.device_id]["unsigned"]["device_display_name"],
        json!("Phone 9"),
        "{keys}"
    );
    assert_eq!(keys["master_keys"][&alice.user_id]["keys"], master["keys"], "{keys}");
}

/// Alice's `/keys/query` for `users` on A.
async fn query_keys(a: &TestServer, alice: &Session, users: &[&str]) -> Value {
    let wanted: serde_json::Map<String, Value> = users.iter().map(|u| ((*u).to_owned(), json!([]))).collect();
    let (status, keys) =
        a.post(&format!("{V3}/keys/query"), Some(&alice.token), json!({"device_keys": wanted})).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    keys
}

/// Upload a master and a self-signing key for `who`; answers the master key.
async fn upload_cross_signing(s: &TestServer, who: &Session) -> Value {
    use crate::keys::{cross_pair, cross_signing_key, signed};
    let master = cross_pair();
    let self_signing = cross_pair();
    let master_key = cross_signing_key(&who.user_id, &master, "master");
    let self_key =
        signed(&who.user_id, &master, cross_signing_key(&who.user_id, &self_signing, "self_signing"));
    let (status, body) = s
        .post(
            &format!("{V3}/keys/device_signing/upload"),
            Some(&who.token),
            json!({"master_key": master_key, "self_signing_key": self_key}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    master_key
}

fn cached(s: &TestServer, user: &str) -> Option<conduit::storage::tables::RemoteDeviceListRecord> {
    s.services.remote_e2ee.cached_device_list(&ruma::OwnedUserId::try_from(user).unwrap()).unwrap()
}

#[tokio::test]
async fn a_remote_device_list_is_cached_kept_current_by_updates_and_answers_while_its_server_is_down() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let _room = shared_room(&a, &b, &alice, &bob).await;
    upload_keys(&b, &bob, "one").await;

    // Alice's query fills A's copy of Bob's list (he shares a room with her).
    let keys = query_keys(&a, &alice, &[&bob.user_id]).await;
    assert!(keys["device_keys"][&bob.user_id][&bob.device_id].is_object(), "{keys}");
    eventually("Bob's list cached on A", || async {
        cached(&a, &bob.user_id).is_some_and(|list| !list.stale && list.devices.contains_key(&bob.device_id))
    })
    .await;

    // Bob's new device reaches the copy through his server's update, and Alice's sync lists
    // him changed.
    let since = sync(&a, &alice, "").await["next_batch"].as_str().unwrap().to_owned();
    let bob2 = b.login("bob", "pw-bob-12345", Some("BOBTWO")).await;
    upload_keys(&b, &bob2, "two").await;
    eventually("Bob's second device in A's copy", || async {
        cached(&a, &bob.user_id).is_some_and(|list| !list.stale && list.devices.contains_key("BOBTWO"))
    })
    .await;
    eventually("Bob changed in Alice's sync", || async {
        let synced = sync(&a, &alice, &format!("since={since}")).await;
        synced["device_lists"]["changed"].as_array().is_some_and(|c| c.contains(&json!(bob.user_id)))
    })
    .await;

    // His cross-signing keys arrive as an m.signing_key_update.
    let master = upload_cross_signing(&b, &bob).await;
    eventually("Bob's master key in A's copy", || async {
        cached(&a, &bob.user_id)
            .and_then(|list| list.master_key)
            .is_some_and(|key| serde_json::from_str::<Value>(&key).unwrap()["keys"] == master["keys"])
    })
    .await;

    // A deleted device leaves the copy.
    let (status, body) = b
        .post(
            &format!("{V3}/delete_devices"),
            Some(&bob.token),
            json!({"devices": ["BOBTWO"], "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "pw-bob-12345"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Bob's deleted device gone from A's copy", || async {
        cached(&a, &bob.user_id).is_some_and(|list| !list.stale && !list.devices.contains_key("BOBTWO"))
    })
    .await;

    // With B down, Alice's query is answered from the copy, with no failure.
    let _b_dir = b.stop().await;
    let keys = query_keys(&a, &alice, &[&bob.user_id]).await;
    assert!(keys["device_keys"][&bob.user_id][&bob.device_id].is_object(), "{keys}");
    assert!(keys["device_keys"][&bob.user_id].get("BOBTWO").is_none(), "{keys}");
    assert_eq!(keys["master_keys"][&bob.user_id]["keys"], master["keys"], "{keys}");
    assert!(keys["self_signing_keys"][&bob.user_id].is_object(), "{keys}");
    assert!(keys["failures"].as_object().is_none_or(|f| f.is_empty()), "{keys}");
}

#[tokio::test]
async fn a_remote_device_list_is_forgotten_once_no_room_is_shared_and_fetched_afresh_after() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let first = shared_room(&a, &b, &alice, &bob).await;
    upload_keys(&b, &bob, "one").await;
    query_keys(&a, &alice, &[&bob.user_id]).await;
    eventually("Bob's list cached on A", || async { cached(&a, &bob.user_id).is_some() }).await;

    // Alice, A's only user in the room, leaves it: A no longer tracks Bob.
    let (status, body) =
        a.post(&format!("{V3}/rooms/{}/leave", encode(&first)), Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Bob's list forgotten after Alice left", || async { cached(&a, &bob.user_id).is_none() })
        .await;

    // Bob adds a device while untracked; a new shared room's first query has it.
    let bob2 = b.login("bob", "pw-bob-12345", Some("BOBTWO")).await;
    upload_keys(&b, &bob2, "two").await;
    let second = shared_room(&a, &b, &alice, &bob).await;
    let keys = query_keys(&a, &alice, &[&bob.user_id]).await;
    assert!(keys["device_keys"][&bob.user_id]["BOBTWO"].is_object(), "{keys}");
    eventually("Bob's list cached again", || async {
        cached(&a, &bob.user_id).is_some_and(|list| list.devices.contains_key("BOBTWO"))
    })
    .await;

    // This time Bob leaves: forgotten too.
    let (status, body) =
        b.post(&format!("{V3}/rooms/{}/leave", encode(&second)), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Bob's list forgotten after he left", || async { cached(&a, &bob.user_id).is_none() }).await;
}

/// `PUT /send/{txnId}` to A carrying `edus`, signed as B.
async fn put_edus(
    pki: &Pki,
    a: &TestServer,
    b: &TestServer,
    txn: &str,
    edus: Vec<Value>,
) -> (StatusCode, Value) {
    let path = format!("/_matrix/federation/v1/send/{txn}");
    signed_request(
        pki,
        a,
        b,
        "PUT",
        &path,
        Some(json!({"origin": b.name(), "origin_server_ts": 1, "pdus": [], "edus": edus})),
    )
    .await
}

#[tokio::test]
async fn device_list_updates_that_do_not_belong_to_their_server_are_refused_and_change_nothing() {
    let TwoServers { pki, a, b, alice, bob } = two_servers().await;
    let _room = shared_room(&a, &b, &alice, &bob).await;
    upload_keys(&b, &bob, "one").await;
    // B has sent its update for Bob's keys and A acknowledged it (so nothing of it comes
    // later), then Alice's query leaves A with a fresh copy.
    let bob_id = ruma::OwnedUserId::try_from(bob.user_id.as_str()).unwrap();
    let a_name = ruma::OwnedServerName::try_from(a.name()).unwrap();
    eventually("B's update for Bob's keys acknowledged", || async {
        b.services.remote_e2ee.serve_devices(&bob_id).unwrap().stream_id > 0
            && b.services.federation_sender.durable_waiting(&a_name).unwrap() == 0
    })
    .await;
    query_keys(&a, &alice, &[&bob.user_id]).await;
    eventually("Bob's list cached on A", || async {
        cached(&a, &bob.user_id).is_some_and(|list| !list.stale && list.devices.contains_key(&bob.device_id))
    })
    .await;
    let before = cached(&a, &bob.user_id).unwrap();
    let update = |content: Value| json!({"edu_type": "m.device_list_update", "content": content});
    let stream_id = before.stream_id + 1;
    let keys_of = |user: &str, device: &str| json!({"user_id": user, "device_id": device, "algorithms": [], "keys": {format!("ed25519:{device}"): "x"}});
    let edus = vec![
        // A user of A, sent by B.
        update(
            json!({"user_id": alice.user_id, "device_id": "EVIL", "stream_id": stream_id, "prev_id": [before.stream_id], "keys": keys_of(&alice.user_id, "EVIL")}),
        ),
        // Bob, with keys of another user.
        update(
            json!({"user_id": bob.user_id, "device_id": "EVIL", "stream_id": stream_id, "prev_id": [before.stream_id], "keys": keys_of(&alice.user_id, "EVIL")}),
        ),
        // Bob, with keys of another device.
        update(
            json!({"user_id": bob.user_id, "device_id": "EVIL", "stream_id": stream_id, "prev_id": [before.stream_id], "keys": keys_of(&bob.user_id, "OTHER")}),
        ),
        // Malformed: no stream ID, a prev_id that is not a list, an object for a user.
        update(
            json!({"user_id": bob.user_id, "device_id": "EVIL", "stream_id": "soon", "prev_id": [before.stream_id]}),
        ),
        update(
            json!({"user_id": bob.user_id, "device_id": "EVIL", "stream_id": stream_id, "prev_id": "all"}),
        ),
        update(json!({"user_id": {"not": "a user"}, "device_id": "EVIL", "stream_id": stream_id})),
        json!({"edu_type": "m.device_list_update", "content": "nothing"}),
        // A master key of another user.
        json!({"edu_type": "m.signing_key_update", "content": {"user_id": bob.user_id, "master_key": {"user_id": alice.user_id, "usage": ["master"], "keys": {"ed25519:x": "x"}}}}),
    ];
    let (status, answer) = put_edus(&pki, &a, &b, "bad-edus", edus).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // Nothing changed: Bob's copy is as before (not even marked stale), Alice has no copy.
    let after = cached(&a, &bob.user_id).unwrap();
    assert_eq!(after.devices, before.devices);
    assert_eq!((after.stream_id, after.stale, &after.master_key), (before.stream_id, false, &None));
    assert!(cached(&a, &alice.user_id).is_none());
    let keys = query_keys(&a, &alice, &[&bob.user_id, &alice.user_id]).await;
    assert!(keys["device_keys"][&bob.user_id].get("EVIL").is_none(), "{keys}");
    assert!(keys["device_keys"][&alice.user_id].get("EVIL").is_none(), "{keys}");

    // A well-formed update that follows on is still applied.
    let good = update(
        json!({"user_id": bob.user_id, "device_id": "NEWDEV", "stream_id": stream_id, "prev_id": [before.stream_id], "keys": keys_of(&bob.user_id, "NEWDEV"), "device_display_name": "new"}),
    );
    let (status, answer) = put_edus(&pki, &a, &b, "good-edu", vec![good]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let after = cached(&a, &bob.user_id).unwrap();
    assert!(!after.stale && after.devices.contains_key("NEWDEV"), "{after:?}");
    assert_eq!(after.stream_id, stream_id);
}

/// The (type, state_key) pairs of the state events a room shows in a sync: its `state`
/// (or `state_after`) section and the state events of its timeline.
fn synced_state(body: &Value, room: &str) -> Vec<(String, String)> {
    let joined = &body["rooms"]["join"][room];
    ["state", "state_after"]
        .iter()
        .filter_map(|section| joined[section]["events"].as_array())
        .chain(joined["timeline"]["events"].as_array())
        .flatten()
        .filter_map(|e| Some((e["type"].as_str()?.to_owned(), e["state_key"].as_str()?.to_owned())))
        .collect()
}

#[tokio::test]
async fn a_room_joined_over_federation_shows_its_state_in_the_joiners_sync() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let encryption = json!({"type": "m.room.encryption", "state_key": "",
        "content": {"algorithm": "m.megolm.v1.aes-sha2"}});
    // One room Bob joins by ID through A, one he is invited to first (as matrix-nio does).
    let open = create_room(
        &a,
        &alice,
        json!({"preset": "public_chat", "name": "Open", "initial_state": [encryption]}),
    )
    .await;
    let invited = create_room(
        &a,
        &alice,
        json!({"preset": "private_chat", "name": "Invited", "initial_state": [encryption], "invite": [bob.user_id]}),
    )
    .await;
    let before = sync(&b, &bob, "").await["next_batch"].as_str().unwrap().to_owned();
    assert!(sync(&b, &bob, "").await["rooms"]["invite"][&invited].is_object());
    let after_invite = sync(&b, &bob, "").await["next_batch"].as_str().unwrap().to_owned();

    for (room, name) in [(&open, "Open"), (&invited, "Invited")] {
        let (status, joined) = b
            .post(
                &format!("{V3}/join/{}?via={}", encode(room), encode(&a.name())),
                Some(&bob.token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{joined}");
        let (status, state) =
            b.get(&format!("{V3}/rooms/{}/state/m.room.encryption/", encode(room)), Some(&bob.token)).await;
        assert_eq!(
            (status, &state["algorithm"]),
            (StatusCode::OK, &json!("m.megolm.v1.aes-sha2")),
            "{state}"
        );
        let (status, state) =
            b.get(&format!("{V3}/rooms/{}/state/m.room.name", encode(room)), Some(&bob.token)).await;
        assert_eq!((status, &state["name"]), (StatusCode::OK, &json!(name)), "{state}");
        let wanted = [
            ("m.room.encryption".to_owned(), String::new()),
            ("m.room.name".to_owned(), String::new()),
            ("m.room.create".to_owned(), String::new()),
            ("m.room.member".to_owned(), alice.user_id.clone()),
            ("m.room.member".to_owned(), bob.user_id.clone()),
        ];
        for (what, query) in [
            ("initial", String::new()),
            ("incremental from before the invites", format!("since={before}")),
            ("incremental from after the invite", format!("since={after_invite}")),
            ("initial with state_after", "use_state_after=true".to_owned()),
            ("incremental with state_after", format!("since={after_invite}&use_state_after=true")),
        ] {
            let synced = sync(&b, &bob, &query).await;
            let state = synced_state(&synced, room);
            for pair in &wanted {
                assert!(state.contains(pair), "{name}, {what} sync lacks {pair:?}: {synced}");
            }
        }
    }
}

#[tokio::test]
async fn matrix_nio_users_on_two_servers_decrypt_each_other_in_an_encrypted_room() {
    let python = crate::sdk::provided_by_scripts_test("CONDUIT_TEST_PYTHON", "a Python with matrix-nio");
    let pki = Pki::new();
    let a = TestServer::start_federating(&pki, |_| {}).await;
    let b = TestServer::start_federating(&pki, |_| {}).await;
    crate::sdk::run_client_check(
        "matrix-nio across two conduit servers",
        python,
        vec![
            crate::sdk::script("sdk/nio_e2ee_federated.py"),
            a.base.clone().into(),
            a.name().into(),
            b.base.clone().into(),
            b.name().into(),
        ],
    )
    .await;
}

#[tokio::test]
async fn another_server_is_answered_one_level_of_a_space_with_what_its_users_could_see() {
    let TwoServers { pki, a, b, alice, bob: _ } = two_servers().await;
    let space =
        create_room(&a, &alice, json!({"preset": "public_chat", "creation_content": {"type": "m.space"}}))
            .await;
    let public = create_room(&a, &alice, json!({"preset": "public_chat"})).await;
    let private = create_room(&a, &alice, json!({"preset": "private_chat"})).await;
    let restricted = create_room(
        &a,
        &alice,
        json!({"room_version": "10", "initial_state": [{"type": "m.room.join_rules", "state_key": "",
            "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}}]}),
    )
    .await;
    let elsewhere = format!("!not-here:{}", b.name());
    for (child, suggested) in [(&public, true), (&private, false), (&restricted, false), (&elsewhere, false)]
    {
        let (status, body) = a
            .put(
                &format!("{V3}/rooms/{}/state/m.space.child/{}", encode(&space), encode(child)),
                Some(&alice.token),
                json!({"via": [a.name()], "suggested": suggested}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let ask = |room: &str, query: &str| {
        let path = format!("/_matrix/federation/v1/hierarchy/{}{query}", encode(room));
        let (pki, a, b) = (&pki, &a, &b);
        async move { signed_request(pki, a, b, "GET", &path, None).await }
    };

    let (status, level) = ask(&space, "").await;
    assert_eq!(status, StatusCode::OK, "{level}");
    assert_eq!(
        (level["room"]["room_id"].as_str(), level["room"]["room_type"].as_str()),
        (Some(space.as_str()), Some("m.space"))
    );
    let children_state: Vec<&str> = level["room"]["children_state"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(children_state.len(), 4, "{level}");
    // Summaries of the children B's users could see or join; the private one by ID only;
    // the room A does not have, not at all.
    let mut children: Vec<&str> =
        level["children"].as_array().unwrap().iter().filter_map(|c| c["room_id"].as_str()).collect();
    children.sort_unstable();
    let mut want = vec![public.as_str(), restricted.as_str()];
    want.sort_unstable();
    assert_eq!(children, want, "{level}");
    assert_eq!(level["inaccessible_children"], json!([private]), "{level}");
    let summary = level["children"].as_array().unwrap().iter().find(|c| c["room_id"] == restricted).unwrap();
    assert_eq!(summary["allowed_room_ids"], json!([space]), "{level}");

    // Suggested children only.
    let (status, level) = ask(&space, "?suggested_only=true").await;
    assert_eq!(status, StatusCode::OK, "{level}");
    assert_eq!(level["room"]["children_state"].as_array().unwrap().len(), 1, "{level}");
    assert_eq!(level["room"]["children_state"][0]["state_key"], json!(public), "{level}");

    // A room B's users could not see, and one A does not have: unknown alike.
    for room in [&private, &elsewhere] {
        let (status, body) = ask(room, "").await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")),
            "{body}"
        );
    }

    // A public child whose server ACL bans B: B's users could not join it, so by ID only.
    let host = b.name().rsplit_once(':').map(|(host, _)| host.to_owned()).unwrap();
    let acl = json!({"allow": ["*"], "deny": [host], "allow_ip_literals": true});
    let (status, body) = a
        .put(
            &format!("{V3}/rooms/{}/state/m.room.server_acl/", encode(&public)),
            Some(&alice.token),
            acl.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, level) = ask(&space, "").await;
    assert_eq!(status, StatusCode::OK, "{level}");
    let children: Vec<&str> =
        level["children"].as_array().unwrap().iter().filter_map(|c| c["room_id"].as_str()).collect();
    assert_eq!(children, [restricted.as_str()], "{level}");
    let mut inaccessible: Vec<&str> =
        level["inaccessible_children"].as_array().unwrap().iter().filter_map(|c| c.as_str()).collect();
    inaccessible.sort_unstable();
    let mut want = vec![private.as_str(), public.as_str()];
    want.sort_unstable();
    assert_eq!(inaccessible, want, "{level}");

    // A space whose server ACL bans B refuses it.
    let (status, body) = a
        .put(&format!("{V3}/rooms/{}/state/m.room.server_acl/", encode(&space)), Some(&alice.token), acl)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = ask(&space, "").await;
    assert_eq!((status, body["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")), "{body}");
}

#[tokio::test]
async fn a_space_walk_asks_the_other_server_for_the_rooms_this_one_does_not_have() {
    let TwoServers { pki: _pki, a, b, alice, bob } = two_servers().await;
    let space_of =
        |name: &str| json!({"preset": "public_chat", "name": name, "creation_content": {"type": "m.space"}});
    let space = create_room(&a, &alice, space_of("Company")).await;
    let team = create_room(&a, &alice, space_of("Team")).await;
    let lobby = create_room(&a, &alice, json!({"preset": "public_chat", "name": "Lobby"})).await;
    let standup = create_room(&a, &alice, json!({"preset": "public_chat", "name": "Standup"})).await;
    let secret = create_room(&a, &alice, json!({"preset": "private_chat", "name": "Secret"})).await;
    let add = |parent: String, child: String| {
        let (a, alice) = (&a, &alice);
        async move {
            let (status, body) = a
                .put(
                    &format!("{V3}/rooms/{}/state/m.space.child/{}", encode(&parent), encode(&child)),
                    Some(&alice.token),
                    json!({"via": [a.name()]}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    add(space.clone(), team.clone()).await;
    add(space.clone(), lobby.clone()).await;
    add(space.clone(), secret.clone()).await;
    add(team.clone(), standup.clone()).await;
    // Bob joins the space only: B has none of its rooms.
    let (status, body) = b
        .post(&format!("{V3}/join/{}?via={}", encode(&space), encode(&a.name())), Some(&bob.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let walk = |query: &'static str| {
        let (b, bob, space) = (&b, &bob, &space);
        async move {
            let (status, body) = b
                .get(
                    &format!("/_matrix/client/v1/rooms/{}/hierarchy{query}", encode(space)),
                    Some(&bob.token),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    let body = walk("").await;
    let rooms = body["rooms"].as_array().unwrap();
    let names: Vec<&str> = rooms.iter().map(|r| r["name"].as_str().unwrap_or_default()).collect();
    // The space from B, then its children from A (the private one left out), then the team's.
    assert_eq!(names[0], "Company", "{body}");
    let mut rest: Vec<&str> = names[1..].to_vec();
    rest.sort_unstable();
    assert_eq!(rest, vec!["Lobby", "Standup", "Team"], "{body}");
    let team_entry = rooms.iter().find(|r| r["room_id"] == json!(team)).unwrap();
    assert_eq!(team_entry["room_type"], json!("m.space"), "{body}");
    assert_eq!(team_entry["num_joined_members"], json!(1), "{body}");
    assert_eq!(team_entry["children_state"][0]["state_key"], json!(standup), "{body}");
    let lobby_entry = rooms.iter().find(|r| r["room_id"] == json!(lobby)).unwrap();
    // A public room's summary says so by leaving `join_rule` out, as ruma writes it.
    assert_eq!(
        (lobby_entry["num_joined_members"].clone(), lobby_entry.get("join_rule")),
        (json!(1), None),
        "{body}"
    );
    // One page at a time: the rooms from A page like the rest.
    let first = walk("?limit=2").await;
    assert_eq!(first["rooms"].as_array().unwrap().len(), 2, "{first}");
    assert_eq!(first["next_batch"], json!("h2"), "{first}");
}

/// A PDU citing an auth event this server never saw (a sibling branch of the sender's
/// server): the auth chain is fetched with `/event_auth`, the missing event stored as an
/// outlier, and the PDU accepted, where before it was rejected for good; while the auth chain
/// cannot be had, the PDU is refused without being stored.
#[tokio::test]
async fn auth_events_a_pdu_cites_that_this_server_lacks_are_fetched_with_event_auth() {
    use std::sync::{Arc, OnceLock};

    use crate::fake_peer::{FakePeer, answer};

    let pki = Pki::new();
    // The peer answers `/event_auth` with the auth chain it is given below.
    let chain: Arc<OnceLock<Value>> = Arc::new(OnceLock::new());
    let served = Arc::clone(&chain);
    let peer = FakePeer::start(&pki, move |_, path, _| {
        let served = Arc::clone(&served);
        async move {
            match (path.starts_with("/_matrix/federation/v1/event_auth/"), served.get()) {
                (true, Some(chain)) => answer(StatusCode::OK, json!({"auth_chain": chain})),
                _ => answer(StatusCode::NOT_FOUND, json!({"errcode": "M_NOT_FOUND", "error": "none"})),
            }
        }
    })
    .await;
    let a = TestServer::start_federating(&pki, |_| {}).await;
    let alice = a.register("alice", "pw-alice-123").await;
    let room = create_room(&a, &alice, json!({"preset": "public_chat", "room_version": "12"})).await;
    let version = ruma::RoomVersionId::V12;

    // Mallory of the peer joins through A.
    let mallory = peer.user("mallory");
    let path = format!("/_matrix/federation/v1/make_join/{}/{}?ver=12", encode(&room), encode(&mallory));
    let (status, template) = peer.send_to(&pki, &a, "GET", &path, Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{template}");
    let (join_event, join_id) = peer.sign_event(template["event"].clone(), &version);
    let path = format!("/_matrix/federation/v2/send_join/{}/{}", encode(&room), encode(&join_id));
    let (status, body) = peer.send_to(&pki, &a, "PUT", &path, join_event.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, state) = a.get(&format!("{V3}/rooms/{}/state", encode(&room)), Some(&alice.token)).await;
    let id_of = |kind: &str| {
        state.as_array().unwrap().iter().find(|e| e["type"] == kind).unwrap()["event_id"].clone()
    };
    let depth = join_event["depth"].as_u64().unwrap();

    // On the peer, after the join: a new display name (never sent to A) and a message
    // citing it as the sender's membership, both after the join.
    let (renamed, renamed_id) = peer.sign_event(
        json!({
            "room_id": room, "sender": mallory, "type": "m.room.member", "state_key": mallory,
            "content": {"membership": "join", "displayname": "Mallory the Second"},
            "origin_server_ts": 1_700_000_000_000_u64, "depth": depth + 1,
            "prev_events": [join_id],
            "auth_events": [id_of("m.room.power_levels"), id_of("m.room.join_rules"), join_id],
        }),
        &version,
    );
    let (message, message_id) = peer.sign_event(
        json!({
            "room_id": room, "sender": mallory, "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": "cites a member event A lacks"},
            "origin_server_ts": 1_700_000_000_001_u64, "depth": depth + 1,
            "prev_events": [join_id],
            "auth_events": [id_of("m.room.power_levels"), renamed_id],
        }),
        &version,
    );
    let send = |txn: &'static str| {
        let body = json!({"origin": peer.name, "origin_server_ts": 1, "pdus": [message]});
        let (pki, a, peer) = (&pki, &a, &peer);
        async move {
            let path = format!("/_matrix/federation/v1/send/{txn}");
            let (status, answered) = peer.send_to(pki, a, "PUT", &path, body).await;
            assert_eq!(status, StatusCode::OK, "{answered}");
            answered
        }
    };

    // While the peer cannot say, the PDU is refused naming the auth event, not rejected.
    let answered = send("t1").await;
    let error = answered["pdus"][&message_id]["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("auth_events not found") && error.contains(&renamed_id), "{answered}");
    // Once it answers, the same PDU (sent again) is accepted.
    chain.set(json!([renamed, join_event])).unwrap();
    let answered = send("t2").await;
    assert_eq!(answered["pdus"][&message_id], json!({}), "{answered}");
    assert_eq!(peer.count("/_matrix/federation/v1/event_auth/"), 2, "{:?}", peer.requests());
    let (status, event) = a
        .get(&format!("{V3}/rooms/{}/event/{}", encode(&room), encode(&message_id)), Some(&alice.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["content"]["body"], json!("cites a member event A lacks"));
    // The member event came as an outlier: not in the room's history or its current state.
    let (_, member) = a
        .get(
            &format!("{V3}/rooms/{}/state/m.room.member/{}", encode(&room), encode(&mallory)),
            Some(&alice.token),
        )
        .await;
    assert!(member.get("displayname").is_none(), "{member}");
}
