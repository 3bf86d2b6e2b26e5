//! Bad input over federation, end to end: a PDU whose content does not match its hash is
//! kept redacted and served so; a PDU over 65,536 bytes is refused by name, a transaction
//! over 50 PDUs or 100 EDUs and a body over `max_request_size` are refused whole; a PDU
//! whose `prev_events` lead back through 10,000 events the server does not have costs a
//! bounded number of fetches from a peer (whether it floods, stalls or answers garbage) and
//! leaves the room as it was; a peer that never answers is given up on after `federation_timeout_secs`
//! and one that answers garbage is a clean `502` to the local client. The misbehaving peers
//! are scripted (`fake_peer`); forged signatures and replays are in `federation_rooms`.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use axum::response::IntoResponse;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    fake_peer::{FakePeer, answer},
    federation_rooms::{
        TwoServers, bobs_message, encode, message_bodies, put_transaction, shared_room, signed_request,
        two_servers,
    },
    harness::{Pki, Session, TestServer, expect_error},
    rooms::{V3, create_room, send_text},
};

/// The only key of a transaction's answer, and its result.
fn only_result(answer: &Value) -> (String, Value) {
    let results = answer["pdus"].as_object().unwrap_or_else(|| panic!("no pdus in {answer}"));
    assert_eq!(results.len(), 1, "{answer}");
    let (id, result) = results.iter().next().unwrap();
    (id.clone(), result.clone())
}

#[tokio::test]
async fn a_pdu_whose_content_does_not_match_its_hash_is_kept_redacted_and_served_so() {
    let TwoServers { pki, a, b, alice, bob } = two_servers().await;
    let room = shared_room(&a, &b, &alice, &bob).await;

    // Signed by B, then its content swapped: the signature (over the redacted form) still
    // holds, the content hash does not.
    let key = b.services.server_keys.key_pair();
    let mut tampered = bobs_message(&a, &alice, &room, &bob.user_id, &b.name(), key, "as signed").await;
    tampered["content"]["body"] = json!("swapped in after signing");
    let (status, answer) = put_transaction(&pki, &a, &b, "hash-1", vec![tampered]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (event_id, result) = only_result(&answer);
    assert!(result.get("error").is_none(), "a redacted event is still accepted: {answer}");

    // Alice sees the event, stripped of its content.
    let (status, event) =
        a.get(&format!("{V3}/rooms/{}/event/{}", encode(&room), encode(&event_id)), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["type"], "m.room.message", "{event}");
    assert_eq!(event["sender"], json!(bob.user_id), "{event}");
    assert_eq!(event["content"], json!({}), "{event}");
    let bodies = message_bodies(&a, &alice, &room).await;
    assert!(!bodies.iter().any(|b| b == "as signed" || b == "swapped in after signing"), "{bodies:?}");

    // Served redacted over federation too.
    let path = format!("/_matrix/federation/v1/event/{}", encode(&event_id));
    let (status, served) = signed_request(&pki, &a, &b, "GET", &path, None).await;
    assert_eq!(status, StatusCode::OK, "{served}");
    assert_eq!(served["pdus"][0]["content"], json!({}), "{served}");
    assert_eq!(served["pdus"][0]["type"], "m.room.message", "{served}");
}

#[tokio::test]
async fn oversized_pdus_transactions_and_bodies_are_refused_with_the_spec_limits() {
    let pki = Pki::new();
    let a = TestServer::start_federating(&pki, |c| c.max_request_size = 100_000).await;
    let b = TestServer::start_federating(&pki, |_| {}).await;
    let alice = a.register("alice", "pw-alice-123").await;
    let bob = b.register("bob", "pw-bob-12345").await;
    let room = shared_room(&a, &b, &alice, &bob).await;
    let key = b.services.server_keys.key_pair();
    let message =
        async |text: String| bobs_message(&a, &alice, &room, &bob.user_id, &b.name(), key, &text).await;

    // Under 65,536 bytes is accepted.
    let fits = "f".repeat(60_000);
    let (status, answer) = put_transaction(&pki, &a, &b, "size-1", vec![message(fits.clone()).await]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(only_result(&answer).1.get("error").is_none(), "{answer}");

    // Over it: refused, named by the ID the event would have, and not stored.
    // (ruma will not sign an event that large: signed small, then grown; the size is
    // checked before the hash.)
    let mut big = message("b".to_owned()).await;
    big["content"]["body"] = json!("b".repeat(70_000));
    let rules = conduit::matrix::room_version::rules(&ruma::RoomVersionId::V12).unwrap();
    let object: ruma::CanonicalJsonObject = serde_json::from_value(big.clone()).unwrap();
    let big_id = conduit::matrix::pdu::event_id_for(&object, &rules).unwrap().to_string();
    let (status, answer) = put_transaction(&pki, &a, &b, "size-2", vec![big.clone()]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (id, result) = only_result(&answer);
    assert_eq!(id, big_id, "{answer}");
    assert!(result["error"].as_str().unwrap().contains("over the limit of 65536"), "{answer}");
    expect_error(
        a.get(&format!("{V3}/rooms/{}/event/{}", encode(&room), encode(&big_id)), Some(&alice.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // More than 50 PDUs, or more than 100 EDUs, in one transaction: refused whole.
    let tiny = message("tiny".to_owned()).await;
    let (status, answer) = put_transaction(&pki, &a, &b, "count-1", vec![tiny; 51]).await;
    assert_eq!((status, answer["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")));
    let typing = json!({"edu_type": "m.typing", "content": {
        "room_id": room, "user_id": bob.user_id, "typing": true}});
    let body = json!({"origin": b.name(), "origin_server_ts": 1, "pdus": [], "edus": vec![typing; 101]});
    let (status, answer) =
        signed_request(&pki, &a, &b, "PUT", "/_matrix/federation/v1/send/count-2", Some(body)).await;
    assert_eq!((status, answer["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")));

    // A body over `max_request_size` is refused before it is read.
    let (status, answer) = put_transaction(&pki, &a, &b, "body-1", vec![big.clone(), big]).await;
    assert_eq!((status, answer["errcode"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("M_TOO_LARGE")));

    // Of all that, only the message that fits reached the room.
    let bodies = message_bodies(&a, &alice, &room).await;
    assert_eq!(bodies, vec![fits], "the room's history holds the accepted message only");
}

/// Event IDs of a room's `/messages` (newest first) and its state (sorted), as Alice reads them.
async fn history_and_state(s: &TestServer, who: &Session, room: &str) -> (Vec<String>, Vec<String>) {
    let (status, page) =
        s.get(&format!("{V3}/rooms/{}/messages?dir=b&limit=100", encode(room)), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ids = |list: &Value| -> Vec<String> {
        list.as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect()
    };
    let (status, state) = s.get(&format!("{V3}/rooms/{}/state", encode(room)), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{state}");
    let mut state = ids(&state);
    state.sort();
    (ids(&page["chunk"]), state)
}

/// How the peer answers `get_missing_events`.
const FLOOD: u8 = 0;
const STALL: u8 = 1;
const GARBAGE: u8 = 2;
const CHAIN: usize = 10_000;

#[tokio::test]
async fn a_prev_events_chain_ten_thousand_deep_costs_a_bounded_number_of_fetches_and_changes_nothing() {
    let pki = Pki::new();
    // The peer's events, built once it has a key; and how it answers.
    let chain: Arc<OnceLock<Vec<(Value, String)>>> = Arc::new(OnceLock::new());
    let mode = Arc::new(AtomicU8::new(FLOOD));
    let (events, how) = (Arc::clone(&chain), Arc::clone(&mode));
    let peer = FakePeer::start(&pki, move |_, path, body| {
        let (events, how) = (Arc::clone(&events), how.load(Ordering::SeqCst));
        async move {
            if !path.starts_with("/_matrix/federation/v1/get_missing_events/") {
                return answer(StatusCode::NOT_FOUND, json!({"errcode": "M_NOT_FOUND", "error": "none"}));
            }
            match how {
                // Ignores `limit`: the 200 events before the latest asked for.
                FLOOD => {
                    let asked: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let chain = events.get().unwrap();
                    let latest = asked["latest_events"][0].as_str().unwrap_or_default();
                    let at = chain.iter().position(|(_, id)| id == latest).unwrap_or(chain.len());
                    let found: Vec<&Value> =
                        chain[at.saturating_sub(200)..at].iter().map(|(e, _)| e).collect();
                    answer(StatusCode::OK, json!({"events": found}))
                }
                STALL => std::future::pending().await,
                _ => (StatusCode::OK, r#"{"events": [1, "two", {"three": 3}], "#).into_response(),
            }
        }
    })
    .await;
    let a = TestServer::start_federating(&pki, |c| c.federation_timeout_secs = 2).await;
    let alice = a.register("alice", "pw-alice-123").await;
    let room = create_room(&a, &alice, json!({"preset": "public_chat"})).await;
    send_text(&a, &alice, &room, "t-before", "before").await;
    let (history, state) = history_and_state(&a, &alice, &room).await;

    // 10,000 events of the peer's user, each citing the one before, the first citing the
    // room's latest event: A has none of them.
    let (_, state_events) = a.get(&format!("{V3}/rooms/{}/state", encode(&room)), Some(&alice.token)).await;
    let id_of = |kind: &str| {
        state_events.as_array().unwrap().iter().find(|e| e["type"] == kind).unwrap()["event_id"].clone()
    };
    let auth = json!([id_of("m.room.create"), id_of("m.room.power_levels")]);
    let mallory = peer.user("mallory");
    let mut prev = history[0].clone();
    let mut built = Vec::with_capacity(CHAIN);
    for i in 0..CHAIN {
        let event = json!({
            "room_id": room,
            "sender": mallory,
            "type": "m.room.message",
            "content": {"msgtype": "m.text", "body": format!("deep {i}")},
            "origin_server_ts": 1_700_000_000_000_u64 + i as u64,
            "depth": 100 + i,
            "prev_events": [prev],
            "auth_events": auth,
        });
        let (signed, id) = peer.sign_event(event, &ruma::RoomVersionId::V12);
        prev = id.clone();
        built.push((signed, id));
    }
    chain.set(built).unwrap();
    let chain = chain.get().unwrap();

    let send = |txn: &'static str, index: usize| {
        let body = json!({"origin": peer.name, "origin_server_ts": 1, "pdus": [chain[index].0]});
        let (pki, a, peer) = (&pki, &a, &peer);
        async move {
            let started = Instant::now();
            let (status, answer) =
                peer.send_to(pki, a, "PUT", &format!("/_matrix/federation/v1/send/{txn}"), body).await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            let (id, result) = only_result(&answer);
            assert_eq!(id, chain[index].1);
            let error = result["error"].as_str().unwrap_or_else(|| panic!("accepted: {answer}"));
            assert!(error.contains("prev_events not found"), "{answer}");
            started.elapsed()
        }
    };
    let asked = || peer.requests().iter().filter(|r| !r.contains("/_matrix/key/")).count();

    // A flood of events that never reach the room: at most ten fetches (each from where the
    // last left the gap, 50 events taken of each answer; this peer answers the same flood
    // again, which ends them), then the missing prev asked for (`/event`, which this peer
    // does not answer), and the PDU refused, in bounded time.
    let took = send("deep-1", CHAIN - 1).await;
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let fetches = peer.count("/_matrix/federation/v1/get_missing_events/");
    assert!((1..=10).contains(&fetches), "{:?}", peer.requests());
    assert_eq!(peer.count("/_matrix/federation/v1/event/"), 1, "{:?}", peer.requests());
    assert_eq!(asked(), fetches + 1, "{:?}", peer.requests());

    // A peer that stalls is given up on after the federation timeout (2 s here).
    mode.store(STALL, Ordering::SeqCst);
    let took = send("deep-2", CHAIN - 2).await;
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(asked(), fetches + 3, "{:?}", peer.requests());

    // Garbage in place of events is no answer at all.
    mode.store(GARBAGE, Ordering::SeqCst);
    send("deep-3", CHAIN - 3).await;
    assert_eq!(asked(), fetches + 5, "{:?}", peer.requests());

    // The room is as it was: same history, same state, none of the chain, and it goes on.
    assert_eq!(history_and_state(&a, &alice, &room).await, (history, state));
    for (_, id) in [&chain[0], &chain[CHAIN - 50], &chain[CHAIN - 1]] {
        expect_error(
            a.get(&format!("{V3}/rooms/{}/event/{}", encode(&room), encode(id)), Some(&alice.token)).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
    }
    send_text(&a, &alice, &room, "t-after", "after").await;
    assert_eq!(message_bodies(&a, &alice, &room).await, vec!["before".to_owned(), "after".to_owned()]);
}

/// How the peer answers `make_join`.
const SILENT: u8 = 0;
const NOT_JSON: u8 = 1;
const WRONG_TYPES: u8 = 2;

#[tokio::test]
async fn a_peer_that_never_answers_times_out_and_one_that_answers_garbage_is_a_clean_502() {
    let pki = Pki::new();
    let mode = Arc::new(AtomicU8::new(SILENT));
    let how = Arc::clone(&mode);
    let peer = FakePeer::start(&pki, move |_, path, _| {
        let how = how.load(Ordering::SeqCst);
        async move {
            if path.starts_with("/_matrix/federation/v1/query/directory") {
                return answer(StatusCode::OK, json!({"room_id": 12, "servers": "everywhere"}));
            }
            if !path.starts_with("/_matrix/federation/v1/make_join/") {
                return answer(StatusCode::NOT_FOUND, json!({"errcode": "M_NOT_FOUND", "error": "none"}));
            }
            match how {
                SILENT => std::future::pending().await,
                NOT_JSON => (StatusCode::OK, "<html>surprise</html>").into_response(),
                _ => answer(StatusCode::OK, json!({"room_version": 12, "event": "a join, honestly"})),
            }
        }
    })
    .await;
    let a = TestServer::start_federating(&pki, |c| c.federation_timeout_secs = 2).await;
    let alice = a.register("alice", "pw-alice-123").await;
    let room = format!("!somewhere:{}", peer.name);
    let join_path = format!("{V3}/join/{}?via={}", encode(&room), encode(&peer.name));
    let join = || a.post(&join_path, Some(&alice.token), json!({}));

    // Silence: the join fails after the federation timeout, not never.
    let started = Instant::now();
    let body = expect_error(join().await, StatusCode::BAD_GATEWAY, "M_UNKNOWN");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500) && took < Duration::from_secs(10), "took {took:?}: {body}");
    assert_eq!(peer.count("/_matrix/federation/v1/make_join/"), 1, "{:?}", peer.requests());

    // Not JSON, and JSON of the wrong shape: each a 502 naming the peer.
    for how in [NOT_JSON, WRONG_TYPES] {
        mode.store(how, Ordering::SeqCst);
        let body = expect_error(join().await, StatusCode::BAD_GATEWAY, "M_UNKNOWN");
        assert!(body["error"].as_str().unwrap().contains(&peer.name), "{body}");
    }
    assert_eq!(peer.count("/_matrix/federation/v1/make_join/"), 3, "{:?}", peer.requests());
    let alias = format!("#lobby:{}", peer.name);
    let body = expect_error(
        a.get(&format!("{V3}/directory/room/{}", encode(&alias)), Some(&alice.token)).await,
        StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
    );
    assert!(body["error"].as_str().unwrap().contains(&peer.name), "{body}");

    // Nothing of it stuck: Alice is in no room, and the server goes on.
    let (status, joined) = a.get(&format!("{V3}/joined_rooms"), Some(&alice.token)).await;
    assert_eq!((status, joined["joined_rooms"].clone()), (StatusCode::OK, json!([])));
    create_room(&a, &alice, json!({})).await;
}
