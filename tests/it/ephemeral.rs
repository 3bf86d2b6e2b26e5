//! Typing, receipts, read markers, account data, tags, ignored users and presence through
//! HTTP, as sync shows them.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    harness::{TestServer, expect_error},
    rooms::{V3, create_room, join, send_text},
    sync::{bodies, list, spawn_poll, sync, token},
};

fn ephemeral(body: &Value, room: &str, kind: &str) -> Option<Value> {
    list(&body["rooms"]["join"][room]["ephemeral"]["events"]).into_iter().find(|e| e["type"] == kind)
}

#[tokio::test]
async fn typing_shows_in_sync_and_expires() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    let since = token(&s, &bob).await;

    let path = format!("{V3}/rooms/{room}/typing/{}", alice.user_id);
    let (status, _) = s.put(&path, Some(&alice.token), json!({"typing": true, "timeout": 300})).await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    let typing = ephemeral(&body, &room, "m.typing").expect("typing event");
    assert_eq!(typing["content"]["user_ids"], json!(["@alice:localhost"]));

    // The notification expires by itself, and the expiry wakes a waiting sync.
    let since = body["next_batch"].as_str().unwrap();
    let body = sync(&s, &bob, &format!("since={since}&timeout=3000")).await;
    let typing = ephemeral(&body, &room, "m.typing").expect("typing stopped event");
    assert_eq!(typing["content"]["user_ids"], json!([]));

    // Others cannot type for you, and strangers cannot type at all.
    expect_error(
        s.put(&path, Some(&bob.token), json!({"typing": true, "timeout": 100})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let carol = s.register("carol", "pw-carol-1234").await;
    let carol_path = format!("{V3}/rooms/{room}/typing/{}", carol.user_id);
    expect_error(
        s.put(&carol_path, Some(&carol.token), json!({"typing": true, "timeout": 100})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // Stopping is explicit too.
    let (status, _) = s.put(&path, Some(&alice.token), json!({"typing": true, "timeout": 30000})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.put(&path, Some(&alice.token), json!({"typing": false})).await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&s, &bob, "").await;
    assert!(ephemeral(&body, &room, "m.typing").is_none_or(|t| t["content"]["user_ids"] == json!([])));
}

#[tokio::test]
async fn receipts_public_private_and_threaded() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    let first = send_text(&s, &alice, &room, "t1", "one").await;
    let second = send_text(&s, &alice, &room, "t2", "two").await;
    let since = token(&s, &alice).await;

    let receipt = |kind: &str, event: &str| format!("{V3}/rooms/{room}/receipt/{kind}/{event}");
    let (status, _) = s.post(&receipt("m.read", &second), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&s, &alice, &format!("since={since}&timeout=0")).await;
    let event = ephemeral(&body, &room, "m.receipt").expect("receipt");
    assert!(event["content"][&second]["m.read"]["@bob:localhost"]["ts"].is_u64(), "{event}");

    // A receipt never moves back.
    let (status, _) = s.post(&receipt("m.read", &first), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let initial = sync(&s, &alice, "").await;
    let event = ephemeral(&initial, &room, "m.receipt").unwrap();
    assert!(event["content"].get(&first).is_none(), "{event}");

    // Private receipts reach only their owner.
    let since = initial["next_batch"].as_str().unwrap();
    let third = send_text(&s, &alice, &room, "t3", "three").await;
    let (status, _) = s.post(&receipt("m.read.private", &third), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let for_alice = sync(&s, &alice, &format!("since={since}&timeout=0")).await;
    assert!(ephemeral(&for_alice, &room, "m.receipt").is_none_or(|e| e["content"].get(&third).is_none()));
    let for_bob = sync(&s, &bob, "").await;
    let event = ephemeral(&for_bob, &room, "m.receipt").unwrap();
    assert!(event["content"][&third]["m.read.private"]["@bob:localhost"].is_object(), "{event}");

    // Threaded receipts carry their thread.
    let (status, _) =
        s.post(&receipt("m.read", &third), Some(&bob.token), json!({"thread_id": "main"})).await;
    assert_eq!(status, StatusCode::OK);
    let event = ephemeral(&sync(&s, &alice, "").await, &room, "m.receipt").unwrap();
    assert_eq!(event["content"][&third]["m.read"]["@bob:localhost"]["thread_id"], "main");

    // Errors: unknown event, bad thread, not a member.
    expect_error(
        s.post(&receipt("m.read", "$nope"), Some(&bob.token), json!({})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let (status, _) = s.post(&receipt("m.read", &third), Some(&bob.token), json!({"thread_id": ""})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let carol = s.register("carol", "pw-carol-1234").await;
    expect_error(
        s.post(&receipt("m.read", &third), Some(&carol.token), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    // read_markers sets the fully-read marker (room account data) and a receipt at once.
    let (status, _) = s
        .post(
            &format!("{V3}/rooms/{room}/read_markers"),
            Some(&bob.token),
            json!({"m.fully_read": third, "m.read": third}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&s, &bob, "").await;
    let marker = list(&body["rooms"]["join"][&room]["account_data"]["events"])
        .into_iter()
        .find(|e| e["type"] == "m.fully_read");
    assert_eq!(marker.unwrap()["content"]["event_id"], third);
    let (status, got) = s
        .get(&format!("{V3}/user/{}/rooms/{room}/account_data/m.fully_read", bob.user_id), Some(&bob.token))
        .await;
    assert_eq!((status, got["event_id"].as_str()), (StatusCode::OK, Some(third.as_str())));
}

#[tokio::test]
async fn account_data_and_tags() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({})).await;
    let since = token(&s, &alice).await;
    let global = format!("{V3}/user/{}/account_data/org.example.settings", alice.user_id);
    expect_error(s.get(&global, Some(&alice.token)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (status, _) = s.put(&global, Some(&alice.token), json!({"theme": "dark"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, got) = s.get(&global, Some(&alice.token)).await;
    assert_eq!((status, got), (StatusCode::OK, json!({"theme": "dark"})));
    expect_error(s.get(&global, Some(&bob.token)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(s.put(&global, Some(&bob.token), json!({})).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let push_rules = format!("{V3}/user/{}/account_data/m.push_rules", alice.user_id);
    expect_error(
        s.put(&push_rules, Some(&alice.token), json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );

    let room_data = format!("{V3}/user/{}/rooms/{room}/account_data/org.example.draft", alice.user_id);
    let (status, _) = s.put(&room_data, Some(&alice.token), json!({"text": "hi"})).await;
    assert_eq!(status, StatusCode::OK);

    let tags = format!("{V3}/user/{}/rooms/{room}/tags", alice.user_id);
    let (status, _) = s.put(&format!("{tags}/m.favourite"), Some(&alice.token), json!({"order": 0.5})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.put(&format!("{tags}/u.work"), Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, got) = s.get(&tags, Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["tags"]["m.favourite"]["order"], 0.5);
    assert!(got["tags"]["u.work"].is_object());
    let (status, _) = s.call(Method::DELETE, &format!("{tags}/u.work"), Some(&alice.token), None).await;
    assert_eq!(status, StatusCode::OK);
    let (_, got) = s.get(&tags, Some(&alice.token)).await;
    assert!(got["tags"].get("u.work").is_none());
    let (status, _) = s.put(&format!("{tags}/bad"), Some(&alice.token), json!({"order": "high"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Sync sends each piece once, at its latest value.
    let body = sync(&s, &alice, &format!("since={since}&timeout=0")).await;
    let globals = list(&body["account_data"]["events"]);
    assert_eq!(globals.iter().filter(|e| e["type"] == "org.example.settings").count(), 1);
    let room_events = list(&body["rooms"]["join"][&room]["account_data"]["events"]);
    let tag = room_events.iter().find(|e| e["type"] == "m.tag").unwrap();
    assert!(tag["content"]["tags"].get("u.work").is_none());
    assert!(room_events.iter().any(|e| e["type"] == "org.example.draft"));
    let since = body["next_batch"].as_str().unwrap();
    let idle = sync(&s, &alice, &format!("since={since}&timeout=0")).await;
    assert!(list(&idle["account_data"]["events"]).is_empty());
}

#[tokio::test]
async fn ignored_users_are_hidden() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    let (status, _) = s
        .put(
            &format!("{V3}/user/{}/account_data/m.ignored_user_list", alice.user_id),
            Some(&alice.token),
            json!({"ignored_users": {"@bob:localhost": {}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    send_text(&s, &bob, &room, "b1", "from the ignored").await;
    send_text(&s, &alice, &room, "a1", "from alice").await;
    let body = sync(&s, &alice, "").await;
    assert_eq!(bodies(&body["rooms"]["join"][&room]["timeline"]["events"]), ["from alice"]);
    let (_, page) = s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=50"), Some(&alice.token)).await;
    assert_eq!(bodies(&page["chunk"]), ["from alice"]);

    // Invites from ignored users are not shown.
    let bobs_room = create_room(&s, &bob, json!({})).await;
    let (status, _) = s
        .post(&format!("{V3}/rooms/{bobs_room}/invite"), Some(&bob.token), json!({"user_id": alice.user_id}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&s, &alice, "").await;
    assert!(body["rooms"]["invite"].get(&bobs_room).is_none());
}

#[tokio::test]
async fn presence_is_set_read_and_synced() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    let since = token(&s, &bob).await;

    let path = format!("{V3}/presence/{}/status", alice.user_id);
    let (status, _) =
        s.put(&path, Some(&alice.token), json!({"presence": "unavailable", "status_msg": "lunch"})).await;
    assert_eq!(status, StatusCode::OK);
    s.clock.advance_ms(5_000);
    let (status, got) = s.get(&path, Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["presence"], "unavailable");
    assert_eq!(got["status_msg"], "lunch");
    assert!(got["last_active_ago"].as_u64().unwrap() >= 5_000);
    // Someone who shares no room cannot look.
    expect_error(s.get(&path, Some(&carol.token)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(
        s.put(&path, Some(&bob.token), json!({"presence": "online"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    let body = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    let event = list(&body["presence"]["events"])
        .into_iter()
        .find(|e| e["sender"] == "@alice:localhost")
        .expect("presence");
    assert_eq!(event["content"]["presence"], "unavailable");
    assert_eq!(event["content"]["status_msg"], "lunch");

    // Syncing marks the user online; presence changes wake long-polls of room mates.
    let since = body["next_batch"].as_str().unwrap().to_owned();
    let poll = spawn_poll(&s, &bob, &since);
    tokio::time::sleep(Duration::from_millis(100)).await;
    sync(&s, &alice, "set_presence=online&timeout=0").await;
    let body =
        tokio::time::timeout(Duration::from_secs(2), poll).await.expect("presence woke the poll").unwrap().1;
    let event =
        list(&body["presence"]["events"]).into_iter().find(|e| e["sender"] == "@alice:localhost").unwrap();
    assert_eq!(event["content"]["presence"], "online");
}

#[tokio::test]
async fn presence_can_be_switched_off() {
    let s = TestServer::start_with(|c| c.presence_enabled = false).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let path = format!("{V3}/presence/{}/status", alice.user_id);
    expect_error(
        s.put(&path, Some(&alice.token), json!({"presence": "online"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    sync(&s, &alice, "set_presence=online").await;
    // Nothing is tracked: everyone reads as offline, as on Synapse with presence off.
    let (status, body) = s.get(&path, Some(&alice.token)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"presence": "offline"})));
}

#[tokio::test]
async fn users_whose_clients_stop_syncing_go_offline() {
    let s = TestServer::start_with(|c| c.presence_offline_timeout_secs = 60).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let path = format!("{V3}/presence/{}/status", alice.user_id);
    sync(&s, &alice, "set_presence=online").await;
    let (_, got) = s.get(&path, Some(&alice.token)).await;
    assert_eq!(got["presence"], "online");
    assert_eq!(got["currently_active"], true);

    // Still within the timeout: the sweep leaves her online.
    s.clock.advance_ms(30_000);
    assert_eq!(s.services.presence.sweep().unwrap(), 0);
    let (_, got) = s.get(&path, Some(&alice.token)).await;
    assert_eq!(got["presence"], "online");
    // Past it, with no sync in between: offline, and last_active_ago keeps counting.
    s.clock.advance_ms(31_000);
    assert_eq!(s.services.presence.sweep().unwrap(), 1);
    let (_, got) = s.get(&path, Some(&alice.token)).await;
    assert_eq!(got["presence"], "offline");
    assert!(got["last_active_ago"].as_u64().unwrap() >= 61_000);
}

#[tokio::test]
async fn account_data_wakes_the_owners_long_poll() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let since = token(&s, &alice).await;
    let poll = spawn_poll(&s, &alice, &since);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = s
        .put(
            &format!("{V3}/user/{}/account_data/m.direct", alice.user_id),
            Some(&alice.token),
            json!({"@bob:localhost": ["!r:localhost"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = tokio::time::timeout(Duration::from_secs(2), poll)
        .await
        .expect("account data woke the poll")
        .unwrap()
        .1;
    let direct = list(&body["account_data"]["events"]).into_iter().find(|e| e["type"] == "m.direct").unwrap();
    assert_eq!(direct["content"]["@bob:localhost"], json!(["!r:localhost"]));
}
