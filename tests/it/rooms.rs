//! The room engine through HTTP: createRoom, events, state, redaction, aliases, directory.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Session, TestServer, expect_error};

pub const V3: &str = "/_matrix/client/v3";

/// Create a room; panics unless it succeeds.
pub async fn create_room(s: &TestServer, who: &Session, body: Value) -> String {
    let (status, resp) = s.post(&format!("{V3}/createRoom"), Some(&who.token), body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp["room_id"].as_str().expect("room_id").to_owned()
}

/// Send a text message; panics unless it succeeds.
pub async fn send_text(s: &TestServer, who: &Session, room: &str, txn: &str, text: &str) -> String {
    let (status, resp) = s
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/{txn}"),
            Some(&who.token),
            json!({"msgtype": "m.text", "body": text}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp["event_id"].as_str().expect("event_id").to_owned()
}

/// The room's current state as a map from `type|state_key` to the event.
pub async fn state_map(
    s: &TestServer,
    who: &Session,
    room: &str,
) -> std::collections::BTreeMap<String, Value> {
    let (status, resp) = s.get(&format!("{V3}/rooms/{room}/state"), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp.as_array()
        .expect("state list")
        .iter()
        .map(|e| (format!("{}|{}", e["type"].as_str().unwrap(), e["state_key"].as_str().unwrap()), e.clone()))
        .collect()
}

pub async fn join(s: &TestServer, who: &Session, room: &str) -> (StatusCode, Value) {
    s.post(&format!("{V3}/join/{room}"), Some(&who.token), json!({})).await
}

#[tokio::test]
async fn create_send_read_round_trip() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({"name": "Lobby", "topic": "Hello"})).await;

    let state = state_map(&s, &alice, &room).await;
    assert_eq!(state["m.room.name|"]["content"]["name"], "Lobby");
    assert_eq!(state["m.room.topic|"]["content"]["topic"], "Hello");
    assert_eq!(state["m.room.member|@alice:localhost"]["content"]["membership"], "join");
    assert_eq!(state["m.room.create|"]["content"]["room_version"], "12");

    let event_id = send_text(&s, &alice, &room, "t1", "hi").await;
    let (status, event) = s.get(&format!("{V3}/rooms/{room}/event/{event_id}"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["content"]["body"], "hi");
    assert_eq!(event["sender"], "@alice:localhost");
    assert_eq!(event["room_id"], room);

    let (status, rooms) = s.get(&format!("{V3}/joined_rooms"), Some(&alice.token)).await;
    assert_eq!((status, rooms), (StatusCode::OK, json!({"joined_rooms": [room]})));
    let _ = expect_error;
}
