//! Limits on what clients send (nesting depth, sizes of messages, identifiers and queues),
//! each checked at the limit and one past it, and reads that survive what older versions
//! stored without those limits.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use ruma::{OwnedDeviceId, OwnedUserId};
use serde_json::{Value, json, value::RawValue};

use crate::{
    harness::{Session, TestServer, expect_error, test_config},
    rooms::{V3, create_room, join},
    sync::{list, sync},
};

/// `{"a":[[...]]}` nested `depth` levels in all (the object counts as one).
fn nested(depth: usize) -> String {
    format!("{{\"a\":{}{}}}", "[".repeat(depth - 1), "]".repeat(depth - 1))
}

/// Content of exactly `size` bytes: `{"p":"xxx..."}`.
fn sized(size: usize) -> String {
    format!("{{\"p\":\"{}\"}}", "x".repeat(size - 8))
}

/// The harness's calls with an owned path, so closures can build the path and return the call.
async fn put(s: &TestServer, path: String, token: &str, body: Value) -> (StatusCode, Value) {
    s.put(&path, Some(token), body).await
}

async fn post(s: &TestServer, path: String, token: Option<&str>, body: Value) -> (StatusCode, Value) {
    s.post(&path, token, body).await
}

async fn get(s: &TestServer, path: String, token: &str) -> (StatusCode, Value) {
    s.get(&path, Some(token)).await
}

async fn put_raw(s: &TestServer, path: &str, who: &Session, body: String) -> (StatusCode, Value) {
    let resp =
        s.http.put(format!("{}{path}", s.base)).bearer_auth(&who.token).body(body).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn to_device_body(to: &Session, device: &str, content: &str) -> String {
    format!("{{\"messages\":{{\"{}\":{{\"{device}\":{content}}}}}}}", to.user_id)
}

/// Sync until no to-device messages are left; each response's batch, in order.
async fn drain_to_device(s: &TestServer, who: &Session, mut since: String) -> Vec<Vec<Value>> {
    let mut batches = Vec::new();
    loop {
        let body = sync(s, who, &format!("since={since}&timeout=0")).await;
        let events = list(&body["to_device"]["events"]);
        since = body["next_batch"].as_str().unwrap().to_owned();
        if events.is_empty() {
            return batches;
        }
        batches.push(events);
    }
}

#[tokio::test]
async fn json_nested_past_the_limit_is_refused_before_it_is_stored() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &bob, json!({})).await;
    // The to-device body wraps its content three levels deep: messages, user, device.
    let path = format!("{V3}/sendToDevice/m.test/deep-ok");
    let (status, body) = put_raw(&s, &path, &alice, to_device_body(&bob, &bob.device_id, &nested(61))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let path = format!("{V3}/sendToDevice/m.test/deep-refused");
    let refused = put_raw(&s, &path, &alice, to_device_body(&bob, &bob.device_id, &nested(62))).await;
    let body = expect_error(refused, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    assert!(body["error"].as_str().unwrap().contains("64 levels"), "{body}");

    let account = format!("{V3}/user/{}/account_data/m.deep", bob.user_id);
    assert_eq!(put_raw(&s, &account, &bob, nested(64)).await.0, StatusCode::OK);
    expect_error(put_raw(&s, &account, &bob, nested(65)).await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    let room_account = format!("{V3}/user/{}/rooms/{room}/account_data/m.deep", bob.user_id);
    assert_eq!(put_raw(&s, &room_account, &bob, nested(64)).await.0, StatusCode::OK);
    expect_error(put_raw(&s, &room_account, &bob, nested(65)).await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    let state = format!("{V3}/rooms/{room}/state/m.deep/k");
    assert_eq!(put_raw(&s, &state, &bob, nested(64)).await.0, StatusCode::OK);
    expect_error(put_raw(&s, &state, &bob, nested(65)).await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    // Brackets inside strings are not nesting.
    let text = json!({"msgtype": "m.text", "body": "[".repeat(500)}).to_string();
    let send = format!("{V3}/rooms/{room}/send/m.room.message/brackets");
    assert_eq!(put_raw(&s, &send, &bob, text).await.0, StatusCode::OK);

    // What was accepted reads back, to the recipient and the owner.
    let body = sync(&s, &bob, "").await;
    let events = list(&body["to_device"]["events"]);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "m.test");
    assert!(list(&body["account_data"]["events"]).iter().any(|e| e["type"] == "m.deep"));
    let joined = &body["rooms"]["join"][&room];
    assert!(list(&joined["account_data"]["events"]).iter().any(|e| e["type"] == "m.deep"));
}

/// Messages and account data nested too deep to re-read, as versions before the limit stored
/// them: the owner's syncs still answer, across a restart, without the unreadable parts.
fn urlencoding(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

#[tokio::test]
async fn login_without_a_type_is_bad_json_not_a_panic() {
    let s = TestServer::start().await;
    for body in [json!({}), json!({"identifier": {"type": "m.id.user", "user": "x"}, "password": "p"})] {
        let body = expect_error(
            s.post(&format!("{V3}/login"), None, body).await,
            StatusCode::BAD_REQUEST,
            "M_BAD_JSON",
        );
        assert_eq!(body["error"], "missing field `type`");
    }
}

/// Register with a chosen device ID, through the dummy stage as clients do; the last answer.
async fn register(s: &TestServer, name: &str, device: String) -> (StatusCode, Value) {
    let mut body = json!({"username": name, "password": "pw-12345678", "device_id": device});
    let (status, challenge) = s.post(&format!("{V3}/register"), None, body.clone()).await;
    if status != StatusCode::UNAUTHORIZED {
        return (status, challenge);
    }
    body["auth"] = json!({"type": "m.login.dummy", "session": challenge["session"]});
    s.post(&format!("{V3}/register"), None, body).await
}

#[tokio::test]
async fn tags_written_whole_in_a_wrong_shape_do_not_break_reading_tags() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({})).await;
    let path = format!("{V3}/user/{}/rooms/{room}/account_data/m.tag", alice.user_id);
    let content = json!({"tags": {"u.fine": {"order": 0.25}, "u.odd": {"order": "first"}}});
    assert_eq!(s.put(&path, Some(&alice.token), content).await.0, StatusCode::OK);
    let (status, tags) =
        s.get(&format!("{V3}/user/{}/rooms/{room}/tags", alice.user_id), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{tags}");
    assert_eq!(tags["tags"], json!({"u.fine": {"order": 0.25}}));
}

#[tokio::test]
async fn a_state_event_too_deep_to_carry_is_replaced_without_it() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    let alice_id: OwnedUserId = alice.user_id.parse().unwrap();
    let room_id: ruma::OwnedRoomId = room.parse().unwrap();
    // Content nested 126 deep, as versions before the limit accepted (past the edge here).
    let content: Value = serde_json::from_str(&nested(126)).unwrap();
    s.services.room_actions.send_state(&alice_id, &room_id, "m.deep", "", content).await.unwrap();
    let (status, body) =
        s.put(&format!("{V3}/rooms/{room}/state/m.deep"), Some(&alice.token), json!({"x": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let replacement = body["event_id"].as_str().unwrap().to_owned();

    let dir = s.stop().await;
    let s = TestServer::boot(test_config(dir.path()), dir).await;
    // The deep event itself stays out of the response (the test client's parser would stop
    // at 128 levels too): state filtered, timeline cut to the replacement.
    let filter = json!({"room": {"timeline": {"limit": 1}, "state": {"not_types": ["m.deep"]}}});
    let body = sync(&s, &bob, &format!("filter={}", urlencoding(&filter.to_string()))).await;
    let timeline = list(&body["rooms"]["join"][&room]["timeline"]["events"]);
    assert_eq!(timeline.len(), 1);
    assert_eq!(timeline[0]["event_id"], replacement.as_str());
    assert_eq!(timeline[0]["content"], json!({"x": 1}));
    assert!(timeline[0]["unsigned"].get("prev_content").is_none(), "{}", timeline[0]);
    assert!(timeline[0]["unsigned"]["replaces_state"].is_string(), "{}", timeline[0]);
}
