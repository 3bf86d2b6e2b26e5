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

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The bodies of the text messages in a room's `/messages`, oldest first.
async fn message_bodies(s: &TestServer, who: &Session, room: &str) -> Vec<String> {
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
async fn eventually<F, Fut>(what: &str, mut check: F)
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

async fn membership_on(s: &TestServer, who: &Session, room: &str, user: &str) -> Value {
    let (_, member) = s
        .get(&format!("{V3}/rooms/{}/state/m.room.member/{}", encode(room), encode(user)), Some(&who.token))
        .await;
    member["membership"].clone()
}

/// A room of A that Bob of B joins through A.
async fn shared_room(a: &TestServer, b: &TestServer, alice: &Session, bob: &Session) -> String {
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
    let pki = Pki::new();
    let a = TestServer::start_federating(&pki, |_| {}).await;
    let b = TestServer::start_federating(&pki, |_| {}).await;
    let alice = a.register("alice", "pw-alice-123").await;
    let bob = b.register("bob", "pw-bob-12345").await;
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
    let pki = Pki::new();
    let a = TestServer::start_federating(&pki, |_| {}).await;
    let b = TestServer::start_federating(&pki, |_| {}).await;
    let alice = a.register("alice", "pw-alice-123").await;
    let bob = b.register("bob", "pw-bob-12345").await;
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
async fn bobs_message(
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
async fn put_transaction(
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
    let pki = Pki::new();
    let a = TestServer::start_federating(&pki, |_| {}).await;
    let b = TestServer::start_federating(&pki, |_| {}).await;
    let alice = a.register("alice", "pw-alice-123").await;
    let bob = b.register("bob", "pw-bob-12345").await;
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
    let pki = Pki::new();
    let a = TestServer::start_federating(&pki, |_| {}).await;
    let b = TestServer::start_federating(&pki, |_| {}).await;
    let alice = a.register("alice", "pw-alice-123").await;
    let bob = b.register("bob", "pw-bob-12345").await;
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
