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

#[tokio::test]
async fn presets_set_join_rules_and_power_levels() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;

    // v12: creators hold power by the auth rules and are not listed in `users`.
    let trusted =
        create_room(&s, &alice, json!({"preset": "trusted_private_chat", "invite": [bob.user_id]})).await;
    let state = state_map(&s, &alice, &trusted).await;
    assert_eq!(state["m.room.join_rules|"]["content"]["join_rule"], "invite");
    assert_eq!(state["m.room.history_visibility|"]["content"]["history_visibility"], "shared");
    assert_eq!(state["m.room.guest_access|"]["content"]["guest_access"], "can_join");
    assert_eq!(state["m.room.power_levels|"]["content"]["users"], json!({}));
    assert_eq!(state["m.room.create|"]["content"]["additional_creators"], json!([bob.user_id]));
    assert_eq!(state["m.room.member|@bob:localhost"]["content"]["membership"], "invite");

    // v11: the creator is listed with 100, trusted invitees too.
    let v11 = create_room(
        &s,
        &alice,
        json!({"preset": "trusted_private_chat", "invite": [bob.user_id], "room_version": "11"}),
    )
    .await;
    let state = state_map(&s, &alice, &v11).await;
    assert_eq!(
        state["m.room.power_levels|"]["content"]["users"],
        json!({"@alice:localhost": 100, "@bob:localhost": 100})
    );
    assert!(state["m.room.create|"]["content"].get("creator").is_none(), "v11 drops creator");

    let private = create_room(
        &s,
        &alice,
        json!({"preset": "private_chat", "invite": [bob.user_id], "room_version": "10"}),
    )
    .await;
    let state = state_map(&s, &alice, &private).await;
    assert_eq!(state["m.room.power_levels|"]["content"]["users"], json!({"@alice:localhost": 100}));
    assert_eq!(state["m.room.create|"]["content"]["creator"], "@alice:localhost");
    let pl = &state["m.room.power_levels|"]["content"];
    assert_eq!(
        (pl["state_default"].clone(), pl["ban"].clone(), pl["invite"].clone()),
        (json!(50), json!(50), json!(0))
    );

    let public = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let state = state_map(&s, &alice, &public).await;
    assert_eq!(state["m.room.join_rules|"]["content"]["join_rule"], "public");
    assert_eq!(state["m.room.guest_access|"]["content"]["guest_access"], "forbidden");

    // No preset: visibility decides.
    let listed = create_room(&s, &alice, json!({"visibility": "public"})).await;
    let state = state_map(&s, &alice, &listed).await;
    assert_eq!(state["m.room.join_rules|"]["content"]["join_rule"], "public");
    let (_, vis) = s.get(&format!("{V3}/directory/list/room/{listed}"), None).await;
    assert_eq!(vis["visibility"], "public");
}

#[tokio::test]
async fn create_room_options_and_errors() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;

    let room = create_room(
        &s,
        &alice,
        json!({
            "room_alias_name": "team",
            "initial_state": [
                {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}},
                {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}},
            ],
            "power_level_content_override": {"events_default": 10},
            "creation_content": {"m.federate": false, "type": "m.space"},
            "invite": [bob.user_id],
            "is_direct": true,
        }),
    )
    .await;
    let state = state_map(&s, &alice, &room).await;
    assert_eq!(state["m.room.canonical_alias|"]["content"]["alias"], "#team:localhost");
    assert_eq!(state["m.room.encryption|"]["content"]["algorithm"], "m.megolm.v1.aes-sha2");
    // initial_state wins over the preset.
    assert_eq!(state["m.room.history_visibility|"]["content"]["history_visibility"], "joined");
    assert_eq!(state["m.room.power_levels|"]["content"]["events_default"], 10);
    assert_eq!(state["m.room.create|"]["content"]["m.federate"], false);
    assert_eq!(state["m.room.create|"]["content"]["type"], "m.space");
    assert_eq!(state["m.room.member|@bob:localhost"]["content"]["is_direct"], true);
    let (status, resolved) = s.get(&format!("{V3}/directory/room/%23team:localhost"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resolved["room_id"], room);
    assert_eq!(resolved["servers"], json!(["localhost"]));

    let create_path = format!("{V3}/createRoom");
    let create = |body: Value| s.post(&create_path, Some(&alice.token), body);
    expect_error(create(json!({"room_alias_name": "team"})).await, StatusCode::BAD_REQUEST, "M_ROOM_IN_USE");
    expect_error(create(json!({"room_alias_name": "a:b"})).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    expect_error(
        create(json!({"room_version": "13"})).await,
        StatusCode::BAD_REQUEST,
        "M_UNSUPPORTED_ROOM_VERSION",
    );
    expect_error(
        create(json!({"room_version": "999"})).await,
        StatusCode::BAD_REQUEST,
        "M_UNSUPPORTED_ROOM_VERSION",
    );
    expect_error(
        create(json!({"power_level_content_override": {"users": {"@alice:localhost": 100}}})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_ROOM_STATE",
    );
    expect_error(
        create(json!({"initial_state": [{"type": "m.room.create", "content": {}}]})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_ROOM_STATE",
    );
    expect_error(create(json!({"creation_content": 5})).await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    expect_error(create(json!({"invite": ["@x:elsewhere.org"]})).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(
        s.post(&format!("{V3}/createRoom"), None, json!({})).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    // None of the refused requests left a room behind.
    let (_, rooms) = s.get(&format!("{V3}/joined_rooms"), Some(&alice.token)).await;
    assert_eq!(rooms["joined_rooms"].as_array().unwrap().len(), 1, "{rooms}");
}

#[tokio::test]
async fn every_supported_room_version_creates_and_runs() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (_, caps) = s.get(&format!("{V3}/capabilities"), Some(&alice.token)).await;
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "12");
    let available = caps["capabilities"]["m.room_versions"]["available"].as_object().unwrap();
    let versions: Vec<&str> = available.keys().map(String::as_str).collect();
    assert_eq!(versions.len(), 12, "{available:?}");
    for version in ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"] {
        assert_eq!(available[version], "stable");
        let room =
            create_room(&s, &alice, json!({"room_version": version, "name": format!("v{version}")})).await;
        if version == "12" {
            assert!(!room.contains(':'), "v12 room IDs carry no server name: {room}");
        } else {
            assert!(room.ends_with(":localhost"), "{room}");
        }
        let event_id = send_text(&s, &alice, &room, &format!("v{version}"), "hello").await;
        // v1–v2 event IDs are the server's `$opaque:server`; later ones are reference hashes.
        let server_chosen = version == "1" || version == "2";
        assert!(event_id.starts_with('$'), "{event_id}");
        assert_eq!(event_id.ends_with(":localhost"), server_chosen, "v{version}: {event_id}");
        let state = state_map(&s, &alice, &room).await;
        assert_eq!(state["m.room.create|"]["content"]["room_version"], version);
    }
}

#[tokio::test]
async fn default_room_version_is_configurable() {
    let s = TestServer::start_with(|c| c.default_room_version = ruma::RoomVersionId::V10).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (_, caps) = s.get(&format!("{V3}/capabilities"), Some(&alice.token)).await;
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "10");
    let room = create_room(&s, &alice, json!({})).await;
    assert_eq!(state_map(&s, &alice, &room).await["m.room.create|"]["content"]["room_version"], "10");
}

#[tokio::test]
async fn send_is_idempotent_per_device_and_transaction() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let other_device = s.login("alice", "pw-alice-123", None).await;
    let room = create_room(&s, &alice, json!({})).await;
    let first = send_text(&s, &alice, &room, "txn1", "once").await;
    assert_eq!(send_text(&s, &alice, &room, "txn1", "once").await, first);
    // Another device with the same transaction ID is a different transaction.
    assert_ne!(send_text(&s, &other_device, &room, "txn1", "once").await, first);
    assert_ne!(send_text(&s, &alice, &room, "txn2", "once").await, first);

    // Bad content is refused and nothing is stored under the transaction.
    let path = format!("{V3}/rooms/{room}/send/m.room.message/bad");
    expect_error(s.put(&path, Some(&alice.token), json!([1])).await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    let too_big = "x".repeat(70_000);
    expect_error(
        s.put(&path, Some(&alice.token), json!({"body": too_big})).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "M_TOO_LARGE",
    );
    send_text(&s, &alice, &room, "bad", "now fine").await;
}

#[tokio::test]
async fn state_endpoints_with_and_without_state_key() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;

    for path in ["m.room.name", "m.room.name/"] {
        let (status, resp) = s
            .put(&format!("{V3}/rooms/{room}/state/{path}"), Some(&alice.token), json!({"name": path}))
            .await;
        assert_eq!(status, StatusCode::OK, "{resp}");
        let (status, content) = s.get(&format!("{V3}/rooms/{room}/state/{path}"), Some(&alice.token)).await;
        assert_eq!((status, content), (StatusCode::OK, json!({"name": path})));
    }
    // Re-sending the same content answers the existing event.
    let custom = format!("{V3}/rooms/{room}/state/org.example.custom/key");
    let put = |body: Value| s.put(&custom, Some(&alice.token), body);
    let first = put(json!({"a": 1})).await.1["event_id"].clone();
    assert_eq!(put(json!({"a": 1})).await.1["event_id"], first);
    assert_ne!(put(json!({"a": 2})).await.1["event_id"], first);
    let (_, event) = s
        .get(&format!("{V3}/rooms/{room}/state/org.example.custom/key?format=event"), Some(&alice.token))
        .await;
    assert_eq!(event["content"], json!({"a": 2}));
    assert_eq!(event["unsigned"]["prev_content"], json!({"a": 1}));
    assert_eq!(event["unsigned"]["replaces_state"], first);

    expect_error(
        s.get(&format!("{V3}/rooms/{room}/state/m.room.topic/"), Some(&alice.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // A non-member cannot read or write state of a room that is not world-readable.
    expect_error(
        s.get(&format!("{V3}/rooms/{room}/state"), Some(&bob.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(
        s.put(&format!("{V3}/rooms/{room}/state/m.room.name/"), Some(&bob.token), json!({"name": "x"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // A member without power is refused by the auth rules, with the reason.
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    let refused = expect_error(
        s.put(&format!("{V3}/rooms/{room}/state/m.room.name/"), Some(&bob.token), json!({"name": "x"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert!(refused["error"].as_str().unwrap().contains("power"), "{refused}");
    assert_eq!(state_map(&s, &alice, &room).await["m.room.name|"]["content"]["name"], "m.room.name/");
    expect_error(
        s.put(&format!("{V3}/rooms/{room}/state/m.room.name/"), Some(&alice.token), json!("text")).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
}

#[tokio::test]
async fn a_transaction_id_is_scoped_to_its_endpoint() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let first = create_room(&s, &alice, json!({"preset": "private_chat"})).await;
    let second = create_room(&s, &alice, json!({"preset": "private_chat"})).await;
    // The same ID in two rooms is two requests (the spec: one device, one endpoint).
    let a = send_text(&s, &alice, &first, "same-txn", "one").await;
    let b = send_text(&s, &alice, &second, "same-txn", "two").await;
    assert_ne!(a, b);
    let (_, event) = s.get(&format!("{V3}/rooms/{second}/event/{b}"), Some(&alice.token)).await;
    assert_eq!(event["content"]["body"], "two", "{event}");
    // A retry is still the same event.
    assert_eq!(send_text(&s, &alice, &first, "same-txn", "one").await, a);
    // And a redaction with that ID is a redaction, not the message sent with it.
    let (status, body) =
        s.put(&format!("{V3}/rooms/{first}/redact/{a}/same-txn"), Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_ne!(body["event_id"], a.as_str());
    let (_, redacted) = s.get(&format!("{V3}/rooms/{first}/event/{a}"), Some(&alice.token)).await;
    assert_eq!(redacted["content"], json!({}), "{redacted}");
}
