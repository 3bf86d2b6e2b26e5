//! `use_state_after` on `/sync` (MSC4222, Matrix 1.16): each room's state section is the
//! state at the end of its timeline (`state_after`), never `state`; for an incremental sync,
//! every state change since the token, those inside the timeline included. The unstable
//! parameter (which matrix-js-sdk sends on every sync) gets the unstable field name.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error},
    rooms::{V3, create_room, join, send_text},
    sync::{list, sync, urlencode},
};

const UNSTABLE: &str = "org.matrix.msc4222.use_state_after=true";
const UNSTABLE_FIELD: &str = "org.matrix.msc4222.state_after";

async fn set_state(s: &TestServer, who: &Session, room: &str, kind: &str, content: Value) -> String {
    let (status, body) = s.put(&format!("{V3}/rooms/{room}/state/{kind}/"), Some(&who.token), content).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

/// `type|state_key` → event ID of each event in a state section.
fn state_ids(section: &Value) -> Vec<(String, String)> {
    let mut ids: Vec<(String, String)> = list(&section["events"])
        .iter()
        .map(|e| {
            (
                format!("{}|{}", e["type"].as_str().unwrap(), e["state_key"].as_str().unwrap()),
                e["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    ids.sort();
    ids
}

fn keys(section: &[(String, String)]) -> Vec<&str> {
    section.iter().map(|(k, _)| k.as_str()).collect()
}

fn limit(n: u32) -> String {
    urlencode(&json!({"room": {"timeline": {"limit": n}}}).to_string())
}

#[tokio::test]
async fn initial_sync_sends_the_state_at_the_end_of_the_timeline() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({"name": "Lobby"})).await;
    send_text(&s, &alice, &room, "t1", "hello").await;
    let topic = set_state(&s, &alice, &room, "m.room.topic", json!({"topic": "Plans"})).await;
    let filter = limit(2);

    // Without the parameter: the state before the timeline, which holds the topic.
    let before = sync(&s, &alice, &format!("filter={filter}")).await;
    let joined = &before["rooms"]["join"][&room];
    assert!(joined.get(UNSTABLE_FIELD).is_none() && joined.get("state_after").is_none(), "{joined}");
    let before_state = state_ids(&joined["state"]);
    assert!(!keys(&before_state).contains(&"m.room.topic|"), "{before_state:?}");

    // With it: the state after the timeline, under the name that matches the parameter.
    for (query, field) in [(UNSTABLE, UNSTABLE_FIELD), ("use_state_after=true", "state_after")] {
        let body = sync(&s, &alice, &format!("filter={filter}&{query}")).await;
        let joined = &body["rooms"]["join"][&room];
        assert!(joined.get("state").is_none(), "{query}: {joined}");
        let other = if field == "state_after" { UNSTABLE_FIELD } else { "state_after" };
        assert!(joined.get(other).is_none(), "{query}: {joined}");
        let after = state_ids(&joined[field]);
        let mut expected = before_state.clone();
        expected.push(("m.room.topic|".to_owned(), topic.clone()));
        expected.sort();
        assert_eq!(after, expected, "{query}");
        // The timeline itself is unchanged.
        assert_eq!(joined["timeline"]["events"].as_array().unwrap().len(), 2);
        assert_eq!(joined["timeline"]["limited"], true);
    }

    // Both at once: the stable name wins. A value other than true or false is refused.
    let body = sync(&s, &alice, &format!("filter={filter}&use_state_after=true&{UNSTABLE}")).await;
    assert!(body["rooms"]["join"][&room].get("state_after").is_some(), "{body}");
    expect_error(
        s.get(&format!("{V3}/sync?org.matrix.msc4222.use_state_after=yes"), Some(&alice.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let (_, versions) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4222"], true, "{versions}");
}

#[tokio::test]
async fn incremental_sync_sends_every_change_since_the_token() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat", "name": "Lobby"})).await;
    join(&s, &bob, &room).await;
    let since = sync(&s, &bob, UNSTABLE).await["next_batch"].as_str().unwrap().to_owned();

    // A change the timeline will not show (three messages push it out) and one it will.
    let name = set_state(&s, &alice, &room, "m.room.name", json!({"name": "Renamed"})).await;
    for i in 0..3 {
        send_text(&s, &alice, &room, &format!("m{i}"), "chatter").await;
    }
    let topic = set_state(&s, &alice, &room, "m.room.topic", json!({"topic": "Plans"})).await;
    let filter = limit(2);
    let query = format!("since={since}&timeout=0&filter={filter}");

    let body = sync(&s, &bob, &format!("{query}&{UNSTABLE}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true, "{joined}");
    let timeline_ids: Vec<&str> = joined["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert!(timeline_ids.contains(&topic.as_str()) && !timeline_ids.contains(&name.as_str()));
    assert!(joined.get("state").is_none(), "{joined}");
    assert_eq!(
        state_ids(&joined[UNSTABLE_FIELD]),
        [("m.room.name|".to_owned(), name.clone()), ("m.room.topic|".to_owned(), topic.clone())],
        "{joined}"
    );

    // The same token without the parameter: only the change before the timeline.
    let body = sync(&s, &bob, &query).await;
    assert_eq!(state_ids(&body["rooms"]["join"][&room]["state"]), [("m.room.name|".to_owned(), name)]);

    // A message alone changes no state: `state_after` is there, and empty.
    let since = body["next_batch"].as_str().unwrap().to_owned();
    send_text(&s, &alice, &room, "m9", "more").await;
    let body = sync(&s, &bob, &format!("since={since}&timeout=0&{UNSTABLE}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(joined[UNSTABLE_FIELD], json!({}), "{joined}");
    assert!(joined.get("state").is_none(), "{joined}");
}

#[tokio::test]
async fn a_left_room_carries_the_state_after_the_leave() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    let since = sync(&s, &bob, UNSTABLE).await["next_batch"].as_str().unwrap().to_owned();
    let topic = set_state(&s, &alice, &room, "m.room.topic", json!({"topic": "Bye"})).await;
    let (status, body) = s.post(&format!("{V3}/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let body = sync(&s, &bob, &format!("since={since}&timeout=0&{UNSTABLE}")).await;
    let left = &body["rooms"]["leave"][&room];
    assert!(left.get("state").is_none(), "{left}");
    let after = state_ids(&left[UNSTABLE_FIELD]);
    assert_eq!(keys(&after), ["m.room.member|@bob:localhost", "m.room.topic|"], "{left}");
    assert_eq!(after[1].1, topic);
    let leave =
        list(&left[UNSTABLE_FIELD]["events"]).into_iter().find(|e| e["type"] == "m.room.member").unwrap();
    assert_eq!(leave["content"]["membership"], "leave");
}

#[tokio::test]
async fn lazy_members_in_the_timeline_are_still_sent_as_state() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let lazy = urlencode(&json!({"room": {"state": {"lazy_load_members": true}}}).to_string());
    let since = sync(&s, &alice, &format!("filter={lazy}&{UNSTABLE}")).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Bob's join is in the timeline. Without state_after it counts as the client's state;
    // with it the client takes no state from the timeline, so it must come in state_after.
    join(&s, &bob, &room).await;
    send_text(&s, &bob, &room, "b1", "hi").await;
    let body = sync(&s, &alice, &format!("since={since}&timeout=0&filter={lazy}&{UNSTABLE}")).await;
    let joined = &body["rooms"]["join"][&room];
    let members: Vec<Value> = list(&joined[UNSTABLE_FIELD]["events"])
        .into_iter()
        .filter(|e| e["type"] == "m.room.member")
        .collect();
    assert_eq!(members.len(), 1, "{joined}");
    assert_eq!(members[0]["state_key"], "@bob:localhost");
    assert_eq!(members[0]["content"]["membership"], "join");
    // And again on the next sync only if it changed: nothing new here.
    let since = body["next_batch"].as_str().unwrap().to_owned();
    send_text(&s, &bob, &room, "b2", "again").await;
    let body = sync(&s, &alice, &format!("since={since}&timeout=0&filter={lazy}&{UNSTABLE}")).await;
    assert_eq!(body["rooms"]["join"][&room][UNSTABLE_FIELD], json!({}), "{body}");
}
