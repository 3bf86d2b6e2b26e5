//! Simplified sliding sync (MSC4186) through HTTP: room lists sorted by bump stamp, ranges,
//! filters, `required_state`, incremental responses per connection, `pos` handling, invites,
//! long-polling and the extensions. The real client (matrix-sdk-ui) runs in `sdk.rs`.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error},
    rooms::{V3, create_room, join, send_text},
    sync::{bodies, list},
};

const SSS: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// A sliding sync request; panics unless it succeeds.
async fn sss(s: &TestServer, who: &Session, pos: Option<&str>, body: Value) -> Value {
    let (status, response) = sss_call(s, who, pos, body).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    response
}

async fn sss_call(s: &TestServer, who: &Session, pos: Option<&str>, body: Value) -> (StatusCode, Value) {
    let path = match pos {
        Some(pos) => format!("{SSS}?pos={pos}&timeout=0"),
        None => SSS.to_owned(),
    };
    s.post(&path, Some(&who.token), body).await
}

fn room_list(range_end: u64, timeline_limit: u64) -> Value {
    json!({
        "conn_id": "room-list",
        "lists": {"all": {
            "ranges": [[0, range_end]],
            "timeline_limit": timeline_limit,
            "required_state": [
                ["m.room.name", ""], ["m.room.avatar", ""], ["m.room.encryption", ""],
                ["m.room.member", "$LAZY"], ["m.room.member", "$ME"], ["m.room.create", ""]
            ]
        }}
    })
}

fn pos(response: &Value) -> String {
    response["pos"].as_str().expect("pos").to_owned()
}

/// The rooms of a response ordered as a client orders its list: by bump stamp, latest first.
fn by_bump(response: &Value) -> Vec<String> {
    let mut rooms: Vec<(u64, String)> = response["rooms"]
        .as_object()
        .map(|rooms| rooms.iter().map(|(id, r)| (r["bump_stamp"].as_u64().unwrap(), id.clone())).collect())
        .unwrap_or_default();
    rooms.sort_by(|a, b| b.cmp(a));
    rooms.into_iter().map(|(_, id)| id).collect()
}

fn state_keys(room: &Value) -> Vec<String> {
    let mut keys: Vec<String> = list(&room["required_state"])
        .iter()
        .map(|e| format!("{}|{}", e["type"].as_str().unwrap(), e["state_key"].as_str().unwrap()))
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn room_list_sorted_by_bump_with_ranges_state_and_counts() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let (_, versions) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(versions["unstable_features"]["org.matrix.simplified_msc3575"], true);

    let first = create_room(&s, &alice, json!({"preset": "public_chat", "name": "First"})).await;
    let second = create_room(&s, &alice, json!({"preset": "public_chat", "name": "Second"})).await;
    let third = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    for room in [&first, &second, &third] {
        join(&s, &bob, room).await;
    }
    send_text(&s, &alice, &first, "f1", "first is the latest").await;

    let initial = sss(&s, &alice, None, room_list(1, 1)).await;
    assert_eq!(initial["lists"]["all"]["count"], 3);
    // Range 0–1: the two most recent rooms; `first` had the last message.
    assert_eq!(by_bump(&initial), [first.clone(), third.clone()]);
    let room = &initial["rooms"][&first];
    assert_eq!(room["initial"], true);
    assert_eq!(room["name"], "First");
    assert_eq!(room["joined_count"], 2);
    assert_eq!(room["invited_count"], 0);
    assert_eq!(bodies(&room["timeline"]), ["first is the latest"]);
    assert_eq!(room["limited"], true);
    assert!(room["prev_batch"].as_str().is_some());
    // $ME and $LAZY: alice's own member event (she also sent the timeline's only event).
    assert_eq!(
        state_keys(room),
        ["m.room.create|".to_owned(), format!("m.room.member|{}", alice.user_id), "m.room.name|".to_owned(),]
    );
    // An unnamed room comes with heroes, with their profile.
    let unnamed = &initial["rooms"][&third];
    assert!(unnamed.get("name").is_none(), "{unnamed}");
    assert_eq!(unnamed["heroes"][0]["user_id"], bob.user_id.as_str());
    assert_eq!(unnamed["heroes"][0]["displayname"], "bob");

    // A larger range brings the third room; the two already sent do not come again.
    let grown = sss(&s, &alice, Some(&pos(&initial)), room_list(9, 1)).await;
    assert_eq!(by_bump(&grown), std::slice::from_ref(&second));
    assert_eq!(grown["lists"]["all"]["count"], 3);

    // A message moves its room; only that room comes, with just the new event.
    send_text(&s, &bob, &second, "s1", "second now").await;
    let moved = sss(&s, &alice, Some(&pos(&grown)), room_list(9, 1)).await;
    assert_eq!(by_bump(&moved), std::slice::from_ref(&second));
    let room = &moved["rooms"][&second];
    assert_eq!(bodies(&room["timeline"]), ["second now"]);
    assert_eq!(room["num_live"], 1);
    assert!(room.get("initial").is_none());
    // bob's member event comes along for the new sender ($LAZY).
    assert!(state_keys(room).contains(&format!("m.room.member|{}", bob.user_id)), "{room}");
    let second_bump = room["bump_stamp"].as_u64().unwrap();
    let first_bump = initial["rooms"][&first]["bump_stamp"].as_u64().unwrap();
    assert!(second_bump > first_bump);

    // A reaction comes as an event of the room but does not move its bump stamp.
    let message = list(&initial["rooms"][&first]["timeline"])[0]["event_id"].as_str().unwrap().to_owned();
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{first}/send/m.reaction/r1"),
            Some(&bob.token),
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": message, "key": "👍"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let reacted = sss(&s, &alice, Some(&pos(&moved)), room_list(9, 1)).await;
    let room = &reacted["rooms"][&first];
    assert_eq!(list(&room["timeline"])[0]["type"], "m.reaction");
    assert_eq!(room["bump_stamp"].as_u64().unwrap(), first_bump, "a reaction moved the room");

    // Nothing new: no rooms at all.
    let idle = sss(&s, &alice, Some(&pos(&reacted)), room_list(9, 1)).await;
    assert!(idle.get("rooms").is_none(), "{idle}");
    assert_eq!(idle["lists"]["all"]["count"], 3);
}

#[tokio::test]
async fn positions_repeat_once_and_are_per_connection() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let other_device = s.login("alice", "pw-alice-123", Some("OTHER")).await;
    let room = create_room(&s, &alice, json!({"name": "Room"})).await;

    let first = sss(&s, &alice, None, room_list(9, 1)).await;
    send_text(&s, &alice, &room, "m1", "one").await;
    let second = sss(&s, &alice, Some(&pos(&first)), room_list(9, 1)).await;
    assert_eq!(bodies(&second["rooms"][&room]["timeline"]), ["one"]);
    // The response was lost: the same request again gets the same room again.
    let again = sss(&s, &alice, Some(&pos(&first)), room_list(9, 1)).await;
    assert_eq!(bodies(&again["rooms"][&room]["timeline"]), ["one"]);
    // A response the client abandoned does not take away the one it goes on from (Element X
    // cancels its long-poll when it opens a room and repeats the request).
    sss(&s, &alice, Some(&pos(&first)), room_list(9, 1)).await;
    sss(&s, &alice, Some(&pos(&again)), room_list(9, 1)).await;
    // Once the client moved on, the older position is gone.
    expect_error(
        sss_call(&s, &alice, Some(&pos(&first)), room_list(9, 1)).await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN_POS",
    );
    // Unknown, malformed, another device's or another connection's positions.
    for bad in ["123", "not-a-number", ""] {
        expect_error(
            sss_call(&s, &alice, Some(bad), room_list(9, 1)).await,
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN_POS",
        );
    }
    expect_error(
        sss_call(&s, &other_device, Some(&pos(&again)), room_list(9, 1)).await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN_POS",
    );
    let mut other_conn = room_list(9, 1);
    other_conn["conn_id"] = json!("encryption");
    expect_error(
        sss_call(&s, &alice, Some(&pos(&again)), other_conn).await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN_POS",
    );

    // A connection goes with its device: logged out and back in with the same device ID,
    // the old position is unknown.
    let on_other = sss(&s, &other_device, None, room_list(9, 1)).await;
    sss(&s, &other_device, Some(&pos(&on_other)), room_list(9, 1)).await;
    let (status, _) = s.post(&format!("{V3}/logout"), Some(&other_device.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let back = s.login("alice", "pw-alice-123", Some("OTHER")).await;
    expect_error(
        sss_call(&s, &back, Some(&pos(&on_other)), room_list(9, 1)).await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN_POS",
    );

    // After a restart every connection starts over: the same device's last position is
    // unknown, and a new connection sends every room whole.
    let current = sss(&s, &alice, Some(&pos(&again)), room_list(9, 1)).await;
    let s = s.restart().await;
    expect_error(
        sss_call(&s, &alice, Some(&pos(&current)), room_list(9, 1)).await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN_POS",
    );
    let fresh = sss(&s, &alice, None, room_list(9, 1)).await;
    assert_eq!(fresh["rooms"][&room]["initial"], true);
}

#[tokio::test]
async fn invites_filters_and_subscriptions() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let plain = create_room(&s, &bob, json!({"name": "Plain"})).await;
    let space =
        create_room(&s, &bob, json!({"name": "Space", "creation_content": {"type": "m.space"}})).await;
    let encrypted = create_room(
        &s,
        &bob,
        json!({"name": "Secret", "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
    )
    .await;
    let dm = create_room(&s, &bob, json!({"is_direct": true, "invite": [alice.user_id]})).await;
    let (status, _) = s
        .put(
            &format!("{V3}/user/{}/account_data/m.direct", bob.user_id),
            Some(&bob.token),
            json!({ alice.user_id.as_str(): [dm] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Alice is invited to the DM; bob's lists filter his rooms.
    let lists = json!({
        "lists": {
            "dms": {"ranges": [[0, 9]], "timeline_limit": 0, "filters": {"is_dm": true}},
            "no_spaces": {"ranges": [[0, 9]], "timeline_limit": 0, "filters": {"not_room_types": ["m.space"]}},
            "spaces": {"ranges": [[0, 9]], "timeline_limit": 0, "filters": {"room_types": ["m.space"]}},
            "encrypted": {"ranges": [[0, 9]], "timeline_limit": 0, "filters": {"is_encrypted": true}},
            "invites": {"ranges": [[0, 9]], "timeline_limit": 0, "filters": {"is_invite": true}}
        }
    });
    let bobs = sss(&s, &bob, None, lists.clone()).await;
    assert_eq!(bobs["lists"]["dms"]["count"], 1);
    assert_eq!(bobs["lists"]["no_spaces"]["count"], 3);
    assert_eq!(bobs["lists"]["spaces"]["count"], 1);
    assert_eq!(bobs["lists"]["encrypted"]["count"], 1);
    assert_eq!(bobs["lists"]["invites"]["count"], 0);
    assert_eq!(bobs["rooms"][&dm]["is_dm"], true);
    assert_eq!(bobs["rooms"][&plain]["is_dm"], false);
    assert!(bobs["rooms"].get(&encrypted).is_some() && bobs["rooms"].get(&space).is_some());

    // Alice sees the invite with its inviter and state, flagged as a DM.
    let alices = sss(&s, &alice, None, lists).await;
    assert_eq!(alices["lists"]["invites"]["count"], 1);
    assert_eq!(alices["lists"]["dms"]["count"], 1);
    let invite = &alices["rooms"][&dm];
    assert_eq!(invite["is_dm"], true);
    let stripped = list(&invite["invite_state"]);
    let member_of =
        |user: &str| stripped.iter().find(|e| e["type"] == "m.room.member" && e["state_key"] == user);
    let member = member_of(&alice.user_id).expect("invite member event");
    assert_eq!(member["sender"], bob.user_id.as_str());
    assert_eq!(member["content"]["membership"], "invite");
    // The inviter's own membership, for "Bob invited you" with Bob's name.
    let inviter = member_of(&bob.user_id).expect("the inviter's member event");
    assert_eq!(inviter["content"]["membership"], "join");
    assert!(invite.get("timeline").is_none());

    // Joining turns it into a joined room, sent whole.
    join(&s, &alice, &dm).await;
    let mut same_connection = room_list(9, 5);
    same_connection.as_object_mut().unwrap().remove("conn_id");
    let joined = sss(&s, &alice, Some(&pos(&alices)), same_connection).await;
    let room = &joined["rooms"][&dm];
    assert_eq!(room["initial"], true, "{room}");
    assert!(room.get("invite_state").is_none());
    assert_eq!(room["joined_count"], 2);

    // A subscription shows a room outside any list's range; one the user is not in is
    // left out.
    let subscribed = sss(
        &s,
        &bob,
        None,
        json!({"room_subscriptions": {
            plain.clone(): {"timeline_limit": 1, "required_state": [["*", "*"]]},
            "!nowhere:localhost": {"timeline_limit": 1}
        }}),
    )
    .await;
    let rooms = subscribed["rooms"].as_object().unwrap();
    assert_eq!(rooms.keys().collect::<Vec<_>>(), [&plain]);
    assert!(state_keys(&rooms[&plain]).contains(&"m.room.power_levels|".to_owned()));
}

#[tokio::test]
async fn long_poll_wakes_for_the_connection_only() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let mine = create_room(&s, &alice, json!({})).await;
    let unrelated = create_room(&s, &carol, json!({})).await;
    let first = sss(&s, &alice, None, room_list(9, 1)).await;

    let http = s.http.clone();
    let url = format!("{}{SSS}?pos={}&timeout=5000", s.base, pos(&first));
    let token = alice.token.clone();
    let body = room_list(9, 1);
    let poll = tokio::spawn(async move {
        let response = http.post(url).bearer_auth(token).json(&body).send().await.unwrap();
        (Instant::now(), response.json::<Value>().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    send_text(&s, &carol, &unrelated, "u1", "elsewhere").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "an unrelated send woke the long-poll");
    let sent_at = Instant::now();
    send_text(&s, &alice, &mine, "m1", "mine").await;
    let (returned_at, body) = poll.await.unwrap();
    assert!(returned_at.duration_since(sent_at) < Duration::from_millis(500));
    assert_eq!(bodies(&body["rooms"][&mine]["timeline"]), ["mine"]);
}

#[tokio::test]
async fn extensions_to_device_e2ee_account_data_receipts_typing() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    let extensions = |since: Option<&str>| {
        let mut to_device = json!({"enabled": true});
        if let Some(since) = since {
            to_device["since"] = json!(since);
        }
        json!({
            "conn_id": "encryption",
            "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 1}},
            "extensions": {
                "to_device": to_device, "e2ee": {"enabled": true}, "account_data": {"enabled": true},
                "receipts": {"enabled": true}, "typing": {"enabled": true}
            }
        })
    };
    let initial = sss(&s, &alice, None, extensions(None)).await;
    let ext = &initial["extensions"];
    let global: Vec<String> =
        list(&ext["account_data"]["global"]).iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    assert!(global.contains(&"m.push_rules".to_owned()), "{ext}");
    assert!(ext["e2ee"]["device_unused_fallback_key_types"].is_array(), "{ext}");
    let since = ext["to_device"]["next_batch"].as_str().unwrap().to_owned();

    // A to-device message arrives, and again if the client comes back with the same since
    // (its response was lost); acknowledged by the next since.
    let (status, _) = s
        .put(
            &format!("{V3}/sendToDevice/m.test/t1"),
            Some(&bob.token),
            json!({"messages": {alice.user_id.as_str(): {"*": {"n": 1}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = sss(&s, &alice, Some(&pos(&initial)), extensions(Some(&since))).await;
    let messages = list(&got["extensions"]["to_device"]["events"]);
    assert_eq!(messages.len(), 1, "{got}");
    assert_eq!(messages[0]["content"]["n"], 1);
    let again = sss(&s, &alice, Some(&pos(&initial)), extensions(Some(&since))).await;
    assert_eq!(list(&again["extensions"]["to_device"]["events"]).len(), 1, "the message was lost");
    let next = again["extensions"]["to_device"]["next_batch"].as_str().unwrap().to_owned();
    let acked = sss(&s, &alice, Some(&pos(&again)), extensions(Some(&next))).await;
    assert!(list(&acked["extensions"]["to_device"]["events"]).is_empty());

    // Bob's new device keys show in alice's device-list changes; receipts, typing and room
    // account data come for the rooms in her list.
    let (status, _) = s
        .post(
            &format!("{V3}/keys/upload"),
            Some(&bob.token),
            json!({"device_keys": {
                "user_id": bob.user_id, "device_id": bob.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                "keys": {format!("curve25519:{}", bob.device_id): "key", format!("ed25519:{}", bob.device_id): "key"},
                "signatures": {}
            }}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let event = send_text(&s, &bob, &room, "b1", "read me").await;
    let (status, _) =
        s.post(&format!("{V3}/rooms/{room}/receipt/m.read/{event}"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{room}/typing/{}", bob.user_id),
            Some(&bob.token),
            json!({"typing": true, "timeout": 30000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s
        .put(
            &format!("{V3}/user/{}/rooms/{room}/account_data/m.test", alice.user_id),
            Some(&alice.token),
            json!({"x": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let later = sss(&s, &alice, Some(&pos(&acked)), extensions(Some(&next))).await;
    let ext = &later["extensions"];
    assert!(list(&ext["e2ee"]["device_lists"]["changed"]).contains(&json!(bob.user_id)), "{ext}");
    assert!(ext["receipts"]["rooms"][&room]["content"][&event]["m.read"][&bob.user_id].is_object(), "{ext}");
    assert_eq!(ext["typing"]["rooms"][&room]["content"]["user_ids"], json!([bob.user_id]));
    assert_eq!(list(&ext["account_data"]["rooms"][&room])[0]["type"], "m.test");
}

#[tokio::test]
async fn bad_requests_get_clear_errors() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    create_room(&s, &alice, json!({})).await;
    let backwards = json!({"lists": {"a": {"ranges": [[5, 1]], "timeline_limit": 1}}});
    expect_error(sss_call(&s, &alice, None, backwards).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let many_ranges = json!({"lists": {"a": {"ranges": vec![[0, 1]; 101], "timeline_limit": 1}}});
    expect_error(sss_call(&s, &alice, None, many_ranges).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let lists: serde_json::Map<String, Value> =
        (0..101).map(|i| (format!("l{i}"), json!({"ranges": [[0, 0]], "timeline_limit": 1}))).collect();
    expect_error(
        sss_call(&s, &alice, None, json!({"lists": lists})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let state: Vec<Value> = (0..101).map(|i| json!([format!("t{i}"), ""])).collect();
    let big_state =
        json!({"lists": {"a": {"ranges": [[0, 0]], "timeline_limit": 1, "required_state": state}}});
    expect_error(sss_call(&s, &alice, None, big_state).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let malformed_state =
        json!({"lists": {"a": {"ranges": [[0, 0]], "timeline_limit": 1, "required_state": [["only-type"]]}}});
    expect_error(sss_call(&s, &alice, None, malformed_state).await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    let long_conn = json!({"conn_id": "x".repeat(65)});
    expect_error(sss_call(&s, &alice, None, long_conn).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let subscriptions: serde_json::Map<String, Value> =
        (0..1001).map(|i| (format!("!r{i}:localhost"), json!({"timeline_limit": 1}))).collect();
    expect_error(
        sss_call(&s, &alice, None, json!({"room_subscriptions": subscriptions})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // A refused request costs the connection nothing: its position still answers.
    let good = sss(&s, &alice, None, room_list(9, 1)).await;
    let backwards =
        json!({"conn_id": "room-list", "lists": {"all": {"ranges": [[5, 1]], "timeline_limit": 1}}});
    expect_error(
        sss_call(&s, &alice, Some(&pos(&good)), backwards).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let next = sss(&s, &alice, Some(&pos(&good)), room_list(9, 1)).await;
    assert_eq!(next["lists"]["all"]["count"], 1);
    // A huge range is clamped to the rooms there are; a huge timeline limit is lowered.
    let huge = sss(
        &s,
        &alice,
        None,
        json!({"lists": {"a": {"ranges": [[0, 9_007_199_254_740_991u64]], "timeline_limit": 1_000_000}}}),
    )
    .await;
    assert_eq!(huge["lists"]["a"]["count"], 1);
}
