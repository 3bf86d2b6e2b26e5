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
#[tokio::test]
async fn deep_data_stored_before_the_limit_does_not_break_sync() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let bob_id: OwnedUserId = bob.user_id.parse().unwrap();
    let alice_id: OwnedUserId = alice.user_id.parse().unwrap();
    let alice_device: OwnedDeviceId = alice.device_id.as_str().into();
    let bob_device: OwnedDeviceId = bob.device_id.as_str().into();

    // Straight into the services, past the edge: 200 levels, which serde_json cannot read
    // into a value (it stops at 128).
    let deep = RawValue::from_string(nested(200)).unwrap();
    let to_bob = |content: Box<RawValue>| {
        BTreeMap::from([(
            bob_id.clone(),
            vec![(conduit::service::to_device::Target::Device(bob_device.clone()), content)],
        )])
    };
    s.services.to_device.send(&alice_id, &alice_device, "m.deep", "old-1", to_bob(deep.clone())).unwrap();
    s.services.account_data.set(&bob_id, None, "m.deep", deep).unwrap();
    // A readable message after them.
    let path = format!("{V3}/sendToDevice/m.fine/new-1");
    assert_eq!(
        s.put(&path, Some(&alice.token), json!({"messages": {&bob.user_id: {&bob.device_id: {"ok": 1}}}}))
            .await
            .0,
        StatusCode::OK
    );

    let dir = s.stop().await;
    let s = TestServer::boot(test_config(dir.path()), dir).await;
    let body = sync(&s, &bob, "").await;
    let events = list(&body["to_device"]["events"]);
    assert_eq!(events.iter().map(|e| e["type"].clone()).collect::<Vec<_>>(), [json!("m.fine")]);
    assert!(!list(&body["account_data"]["events"]).iter().any(|e| e["type"] == "m.deep"), "{body}");
    // The unreadable message is acknowledged with the rest, and the next sync is empty.
    let next = body["next_batch"].as_str().unwrap();
    let after = sync(&s, &bob, &format!("since={next}&timeout=0")).await;
    assert!(list(&after["to_device"]["events"]).is_empty());
    // The account data itself is still there for the owner to read or replace.
    let (status, _) =
        s.get(&format!("{V3}/user/{}/account_data/m.deep", bob.user_id), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
}

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

#[tokio::test]
async fn to_device_messages_are_limited_to_64_kib() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let since = crate::sync::token(&s, &bob).await;
    let path = format!("{V3}/sendToDevice/m.test/at-limit");
    assert_eq!(
        put_raw(&s, &path, &alice, to_device_body(&bob, &bob.device_id, &sized(65_536))).await.0,
        StatusCode::OK
    );
    let path = format!("{V3}/sendToDevice/m.test/past-limit");
    let refused = put_raw(&s, &path, &alice, to_device_body(&bob, "*", &sized(65_537))).await;
    let body = expect_error(refused, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    assert!(body["error"].as_str().unwrap().contains("65537 > 65536"), "{body}");
    let batches = drain_to_device(&s, &bob, since).await;
    assert_eq!(batches.concat().len(), 1);
    assert_eq!(batches[0][0]["content"]["p"].as_str().unwrap().len(), 65_528);
}

#[tokio::test]
async fn one_sync_carries_at_most_100_to_device_messages_and_loses_none() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let since = crate::sync::token(&s, &bob).await;
    for n in 0..101 {
        let body = json!({"messages": {&bob.user_id: {&bob.device_id: {"n": n}}}});
        assert_eq!(
            s.put(&format!("{V3}/sendToDevice/m.test/t{n}"), Some(&alice.token), body).await.0,
            StatusCode::OK
        );
    }
    let first = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    assert_eq!(list(&first["to_device"]["events"]).len(), 100);
    // A lost response: the same token gets the same messages again.
    let again = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    assert_eq!(again["to_device"], first["to_device"]);
    // Across a restart too; then the token acknowledges the hundred, and the last one comes.
    let dir = s.stop().await;
    let s = TestServer::boot(test_config(dir.path()), dir).await;
    let next = again["next_batch"].as_str().unwrap().to_owned();
    let rest = drain_to_device(&s, &bob, next).await;
    let ns: Vec<u64> = list(&first["to_device"]["events"])
        .iter()
        .chain(rest.concat().iter())
        .map(|e| e["content"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, (0..101).collect::<Vec<_>>());
    assert_eq!(rest.len(), 1);
}

#[tokio::test]
async fn one_sync_carries_about_a_mebibyte_of_to_device_messages() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let since = crate::sync::token(&s, &bob).await;
    // 60,000 bytes each: 17 fit in 1 MiB (1,020,000 bytes), 18 do not.
    for n in 0..20 {
        let path = format!("{V3}/sendToDevice/m.test/big{n}");
        let body = to_device_body(&bob, &bob.device_id, &sized(60_000));
        assert_eq!(put_raw(&s, &path, &alice, body).await.0, StatusCode::OK);
    }
    let batches = drain_to_device(&s, &bob, since).await;
    assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [17, 3]);
}

#[tokio::test]
async fn a_full_queue_drops_what_would_overflow_it() {
    let s = TestServer::start_with(|c| {
        c.to_device_queue_max_messages = 3;
        c.to_device_queue_max_bytes = 100_000;
    })
    .await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let bob_phone = s.login("bob", "pw-bob-12345", Some("PHONE")).await;
    let since = crate::sync::token(&s, &bob).await;
    let phone_since = crate::sync::token(&s, &bob_phone).await;
    for n in 0..4 {
        let body = json!({"messages": {&bob.user_id: {&bob.device_id: {"n": n}}}});
        assert_eq!(
            s.put(&format!("{V3}/sendToDevice/m.test/n{n}"), Some(&alice.token), body).await.0,
            StatusCode::OK
        );
    }
    // The phone's queue is separate; by bytes, 100,000 hold one message of 60,000, not two.
    for n in 0..2 {
        let path = format!("{V3}/sendToDevice/m.test/big{n}");
        let body = to_device_body(&bob, "PHONE", &sized(60_000));
        assert_eq!(put_raw(&s, &path, &alice, body).await.0, StatusCode::OK);
    }
    let got: Vec<Value> = drain_to_device(&s, &bob, since).await.concat();
    assert_eq!(got.iter().map(|e| e["content"]["n"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(drain_to_device(&s, &bob_phone, phone_since).await.concat().len(), 1);
    // Acknowledged messages free the queue again.
    let body = json!({"messages": {&bob.user_id: {&bob.device_id: {"n": 4}}}});
    assert_eq!(
        s.put(&format!("{V3}/sendToDevice/m.test/n4"), Some(&alice.token), body).await.0,
        StatusCode::OK
    );
    let latest = sync(&s, &bob, "").await;
    assert_eq!(list(&latest["to_device"]["events"]).len(), 1);
}

#[tokio::test]
async fn to_device_messages_for_unknown_devices_are_not_kept() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let body = json!({"messages": {&bob.user_id: {"LATER": {"early": true}}}});
    assert_eq!(
        s.put(&format!("{V3}/sendToDevice/m.test/early"), Some(&alice.token), body).await.0,
        StatusCode::OK
    );
    // A device that logs in later under that ID never had those messages waiting.
    let later = s.login("bob", "pw-bob-12345", Some("LATER")).await;
    assert!(list(&sync(&s, &later, "").await["to_device"]["events"]).is_empty());
}

#[tokio::test]
async fn event_types_and_state_keys_are_limited_to_255_bytes() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({})).await;
    let (ok, long) = ("k".repeat(255), "k".repeat(256));
    let put = |path: String| put(&s, path, &alice.token, json!({}));
    assert_eq!(put(format!("{V3}/rooms/{room}/state/m.test/{ok}")).await.0, StatusCode::OK);
    let body = expect_error(
        put(format!("{V3}/rooms/{room}/state/m.test/{long}")).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    assert_eq!(body["error"], "'state_key' too large");
    assert_eq!(put(format!("{V3}/rooms/{room}/state/{ok}")).await.0, StatusCode::OK);
    let body = expect_error(
        put(format!("{V3}/rooms/{room}/state/{long}")).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    assert_eq!(body["error"], "'type' too large");
    assert_eq!(put(format!("{V3}/rooms/{room}/send/{ok}/t1")).await.0, StatusCode::OK);
    expect_error(
        put(format!("{V3}/rooms/{room}/send/{long}/t2")).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    // Initial state of a new room goes through the same check.
    let initial = |key: &str| json!({"initial_state": [{"type": "m.test", "state_key": key, "content": {}}]});
    let (status, _) = s.post(&format!("{V3}/createRoom"), Some(&alice.token), initial(&ok)).await;
    assert_eq!(status, StatusCode::OK);
    expect_error(
        s.post(&format!("{V3}/createRoom"), Some(&alice.token), initial(&long)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    // Nothing of the refused ones was stored.
    let (status, _) = s.get(&format!("{V3}/rooms/{room}/state/m.test/{long}"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn device_ids_and_initial_names_chosen_by_clients_are_bounded() {
    let s = TestServer::start().await;
    s.register("alice", "pw-alice-123").await;
    let login = |device: String, name: String| {
        let body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "alice"},
            "password": "pw-alice-123",
            "device_id": device,
            "initial_device_display_name": name,
        });
        post(&s, format!("{V3}/login"), None, body)
    };
    let (status, body) = login("D".repeat(512), "n".repeat(100)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["device_id"].as_str().unwrap().len(), 512);
    let body =
        expect_error(login("D".repeat(513), "n".into()).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    assert!(body["error"].as_str().unwrap().contains("device_id"), "{body}");
    expect_error(login("D".repeat(100_000), "n".into()).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    expect_error(login("E".into(), "n".repeat(101)).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");

    let (status, body) = register(&s, "bob", "D".repeat(512)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    expect_error(register(&s, "carol", "D".repeat(513)).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    // Refused before the account was made: the name is still free.
    let (status, body) = register(&s, "carol", "D".into()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
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
async fn transaction_ids_are_limited_to_255_bytes() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({})).await;
    let (ok, long) = ("t".repeat(255), "t".repeat(256));
    let message = json!({"msgtype": "m.text", "body": "hi"});
    let send = |txn: &str| {
        put(&s, format!("{V3}/rooms/{room}/send/m.room.message/{txn}"), &alice.token, message.clone())
    };
    let (status, sent) = send(&ok).await;
    assert_eq!(status, StatusCode::OK);
    // The stored transaction still answers a retry with the same event.
    assert_eq!(send(&ok).await.1["event_id"], sent["event_id"]);
    expect_error(send(&long).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let event = sent["event_id"].as_str().unwrap();
    let redact =
        |txn: &str| put(&s, format!("{V3}/rooms/{room}/redact/{event}/{txn}"), &alice.token, json!({}));
    expect_error(redact(&long).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    assert_eq!(redact(&ok).await.0, StatusCode::OK);
    let to_device = |txn: &str| {
        let body = json!({"messages": {&alice.user_id: {&alice.device_id: {}}}});
        put(&s, format!("{V3}/sendToDevice/m.test/{txn}"), &alice.token, body)
    };
    assert_eq!(to_device(&ok).await.0, StatusCode::OK);
    expect_error(to_device(&long).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
}

#[tokio::test]
async fn filter_ids_tags_and_data_types_are_limited_to_255_bytes() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({})).await;
    let user = &alice.user_id;
    let (ok, long) = ("f".repeat(255), "f".repeat(256));
    let token = alice.token.as_str();

    let filter = |id: &str| get(&s, format!("{V3}/user/{user}/filter/{id}"), token);
    expect_error(filter(&ok).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    expect_error(filter(&long).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let body = expect_error(
        get(&s, format!("{V3}/sync?filter={long}"), token).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert!(body["error"].as_str().unwrap().contains("255"), "{body}");

    let tag = |name: &str| {
        put(&s, format!("{V3}/user/{user}/rooms/{room}/tags/{name}"), token, json!({"order": 0.5}))
    };
    assert_eq!(tag(&ok).await.0, StatusCode::OK);
    expect_error(tag(&long).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let (_, tags) = get(&s, format!("{V3}/user/{user}/rooms/{room}/tags"), token).await;
    assert_eq!(tags["tags"].as_object().unwrap().keys().collect::<Vec<_>>(), [&ok]);

    let global =
        |kind: &str| put(&s, format!("{V3}/user/{user}/account_data/{kind}"), token, json!({"a": 1}));
    assert_eq!(global(&ok).await.0, StatusCode::OK);
    expect_error(global(&long).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let in_room = |kind: &str| {
        put(&s, format!("{V3}/user/{user}/rooms/{room}/account_data/{kind}"), token, json!({"a": 1}))
    };
    assert_eq!(in_room(&ok).await.0, StatusCode::OK);
    expect_error(in_room(&long).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");

    let to_device = |kind: &str| {
        let body = json!({"messages": {user: {&alice.device_id: {}}}});
        put(&s, format!("{V3}/sendToDevice/{kind}/{}", kind.len()), token, body)
    };
    assert_eq!(to_device(&ok).await.0, StatusCode::OK);
    expect_error(to_device(&long).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
}

#[tokio::test]
async fn room_aliases_are_limited_to_255_bytes() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    // `#` + localpart + `:localhost` (10 bytes): 244 bytes of localpart make 255.
    let server = alice.user_id.split(':').nth(1).unwrap().to_owned();
    let fits = 255 - 2 - server.len();
    let create = |name: String| {
        post(&s, format!("{V3}/createRoom"), Some(&alice.token), json!({"room_alias_name": name}))
    };
    let (status, body) = create("a".repeat(fits)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    expect_error(create("b".repeat(fits + 1)).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let room = body["room_id"].as_str().unwrap();
    let alias = |localpart: String| format!("{V3}/directory/room/%23{localpart}:{server}");
    let put_alias = |localpart: String| put(&s, alias(localpart), &alice.token, json!({"room_id": room}));
    assert_eq!(put_alias("c".repeat(fits)).await.0, StatusCode::OK);
    let (status, _) = put_alias("d".repeat(fits + 1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn pusher_keys_and_avatar_urls_have_the_lengths_the_spec_and_synapse_give() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let pusher = |app_id: String, pushkey: String| {
        let body = json!({
            "kind": "http", "app_id": app_id, "pushkey": pushkey, "app_display_name": "App",
            "device_display_name": "Phone", "lang": "en",
            "data": {"url": "https://push.example.org/_matrix/push/v1/notify"},
        });
        post(&s, format!("{V3}/pushers/set"), Some(&alice.token), body)
    };
    // app_id: 64 characters (two bytes each here).
    assert_eq!(pusher("é".repeat(64), "k".into()).await.0, StatusCode::OK);
    expect_error(pusher("é".repeat(65), "k".into()).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    assert_eq!(pusher("a".into(), "k".repeat(512)).await.0, StatusCode::OK);
    expect_error(pusher("a".into(), "k".repeat(513)).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let (_, pushers) = s.get(&format!("{V3}/pushers"), Some(&alice.token)).await;
    assert_eq!(list(&pushers["pushers"]).len(), 2);

    let avatar = |len: usize| {
        let url = format!("mxc://localhost/{}", "m".repeat(len - "mxc://localhost/".len()));
        put(
            &s,
            format!("{V3}/profile/{}/avatar_url", alice.user_id),
            &alice.token,
            json!({"avatar_url": url}),
        )
    };
    assert_eq!(avatar(1000).await.0, StatusCode::OK);
    expect_error(avatar(1001).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
}

#[tokio::test]
async fn account_data_is_limited_per_user() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let mib = 1024 * 1024;
    async fn put_sized(s: &TestServer, who: &Session, kind: &str, size: usize) -> (StatusCode, Value) {
        let path = format!("{V3}/user/{}/account_data/{kind}", who.user_id);
        put_raw(s, &path, who, sized(size)).await
    }
    // 16 MiB in all, exactly.
    for n in 0..15 {
        assert_eq!(put_sized(&s, &alice, &format!("big.{n}"), mib).await.0, StatusCode::OK);
    }
    assert_eq!(put_sized(&s, &alice, "big.15", mib).await.0, StatusCode::OK);
    let refused = put_sized(&s, &alice, "one.more", 8 + 1).await;
    let body = expect_error(refused, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    assert!(body["error"].as_str().unwrap().contains("per user"), "{body}");
    // Replacing a piece with a smaller one is always possible, and frees room.
    assert_eq!(put_sized(&s, &alice, "big.0", 1024).await.0, StatusCode::OK);
    assert_eq!(put_sized(&s, &alice, "one.more", 9).await.0, StatusCode::OK);
    // The bound is per user.
    assert_eq!(put_sized(&s, &bob, "big.0", mib).await.0, StatusCode::OK);
    // And it is counted from what is stored after a restart.
    let dir = s.stop().await;
    let s = TestServer::boot(test_config(dir.path()), dir).await;
    let path = format!("{V3}/user/{}/account_data/big.0", alice.user_id);
    expect_error(put_raw(&s, &path, &alice, sized(mib)).await, StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE");
    assert_eq!(put_raw(&s, &path, &alice, sized(mib - 9)).await.0, StatusCode::OK);
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
    s.services.room_actions.send_state(&alice_id, &room_id, "m.deep", "", content, None).await.unwrap();
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
