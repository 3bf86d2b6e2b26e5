//! The deprecated endpoints old bots and scripts still call, through HTTP: the `/events`
//! stream (long-poll, peeking), `/events/{eventId}`, `/initialSync`,
//! `/rooms/{roomId}/initialSync`, `POST /send` without a transaction ID, and
//! `/admin/whois`. Bodies are compared with what Synapse answers.

use std::time::{Duration, Instant};

use conduit::service::clock::Clock;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error},
    rooms::{V3, create_room, join, send_text},
    sync::{bodies, list},
};

/// GET a path; panics unless it answers 200.
async fn get_ok(s: &TestServer, who: &Session, path: &str) -> Value {
    let (status, body) = s.get(path, Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

/// `/events` with a query; panics unless it answers 200.
async fn events(s: &TestServer, who: &Session, query: &str) -> Value {
    get_ok(s, who, &format!("{V3}/events?{query}")).await
}

/// The current `/events` position.
async fn events_token(s: &TestServer, who: &Session) -> String {
    let body = events(s, who, "timeout=0").await;
    assert_eq!(body["start"], body["end"], "{body}");
    body["end"].as_str().unwrap().to_owned()
}

/// The events of a list with this type.
fn of_type(events: &Value, kind: &str) -> Vec<Value> {
    list(events).into_iter().filter(|e| e["type"] == kind).collect()
}

/// The room with this ID in an `/initialSync` answer.
fn room_of<'a>(initial: &'a Value, room: &str) -> Option<&'a Value> {
    initial["rooms"].as_array().unwrap().iter().find(|r| r["room_id"] == room)
}

fn position(token: &Value) -> u64 {
    token.as_str().and_then(|t| t.strip_prefix('s')).and_then(|n| n.parse().ok()).expect("an s<n> token")
}

/// Set presence; panics unless it succeeds.
async fn set_presence(s: &TestServer, who: &Session, presence: &str, status_msg: Option<&str>) {
    let mut body = json!({ "presence": presence });
    if let Some(msg) = status_msg {
        body["status_msg"] = json!(msg);
    }
    let (status, resp) =
        s.put(&format!("{V3}/presence/{}/status", who.user_id), Some(&who.token), body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
}

#[tokio::test]
async fn initial_sync_snapshots_every_room_of_the_user() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat", "name": "Lobby"})).await;
    join(&s, &bob, &room).await;
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        send_text(&s, &alice, &room, &format!("t{i}"), text).await;
    }
    let last = send_text(&s, &bob, &room, "b1", "four").await;
    let user = &alice.user_id;
    let (status, _) = s
        .put(&format!("{V3}/user/{user}/rooms/{room}/tags/u.work"), Some(&alice.token), json!({"order": 0.5}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s
        .put(
            &format!("{V3}/user/{user}/rooms/{room}/account_data/org.example.r"),
            Some(&alice.token),
            json!({"x": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s
        .put(&format!("{V3}/user/{user}/account_data/org.example.g"), Some(&alice.token), json!({"g": 1}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        s.post(&format!("{V3}/rooms/{room}/receipt/m.read/{last}"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    set_presence(&s, &alice, "online", Some("hi")).await;
    // An invite, and a room alice left.
    let secret = create_room(&s, &bob, json!({"preset": "private_chat", "name": "Secret"})).await;
    let (status, _) =
        s.post(&format!("{V3}/rooms/{secret}/invite"), Some(&bob.token), json!({"user_id": user})).await;
    assert_eq!(status, StatusCode::OK);
    let old = create_room(&s, &alice, json!({"name": "Old"})).await;
    send_text(&s, &alice, &old, "o1", "before leaving").await;
    let (status, _) = s.post(&format!("{V3}/rooms/{old}/leave"), Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);

    let initial = get_ok(&s, &alice, &format!("{V3}/initialSync?limit=2")).await;
    let joined = room_of(&initial, &room).expect("the joined room");
    assert_eq!(joined["membership"], "join");
    assert_eq!(joined["visibility"], "private");
    let chunk = &joined["messages"]["chunk"];
    assert_eq!(bodies(chunk), ["three", "four"], "the latest two, oldest first");
    // The pre-r0 format old clients read: `user_id` and `age` beside `sender` and `room_id`.
    let four = &list(chunk)[1];
    assert_eq!(
        (&four["sender"], &four["user_id"], &four["room_id"]),
        (&json!(bob.user_id), &json!(bob.user_id), &json!(room))
    );
    assert!(four["age"].is_u64(), "{four}");
    let state = list(&joined["state"]);
    let name = state.iter().find(|e| e["type"] == "m.room.name").expect("the room's name");
    assert_eq!(name["content"]["name"], "Lobby");
    assert_eq!(state.iter().filter(|e| e["type"] == "m.room.member").count(), 2);
    let account = list(&joined["account_data"]);
    assert!(
        account.contains(&json!({"type": "m.tag", "content": {"tags": {"u.work": {"order": 0.5}}}})),
        "{account:?}"
    );
    assert!(account.contains(&json!({"type": "org.example.r", "content": {"x": 1}})), "{account:?}");

    // `start` continues backwards with `/messages`, without a gap or a repeat.
    let start = joined["messages"]["start"].as_str().unwrap();
    let earlier = get_ok(&s, &alice, &format!("{V3}/rooms/{room}/messages?dir=b&limit=1&from={start}")).await;
    assert_eq!(bodies(&earlier["chunk"]), ["two"]);
    assert_eq!(joined["messages"]["end"], initial["end"]);

    let invite = room_of(&initial, &secret).expect("the invite");
    assert_eq!(invite["membership"], "invite");
    assert_eq!(invite["inviter"], json!(bob.user_id));
    assert_eq!(
        (&invite["invite"]["type"], &invite["invite"]["state_key"]),
        (&json!("m.room.member"), &json!(user))
    );
    for absent in ["messages", "state", "account_data"] {
        assert!(invite.get(absent).is_none(), "{invite}");
    }
    assert!(room_of(&initial, &old).is_none(), "left rooms only with archived=true");

    assert_eq!(initial["account_data"], json!([{"type": "org.example.g", "content": {"g": 1}}]));
    // Presence of room mates who are not offline: bob never set any.
    let presence = list(&initial["presence"]);
    assert_eq!(presence.len(), 1, "{presence:?}");
    assert_eq!(presence[0]["type"], "m.presence");
    let content = &presence[0]["content"];
    assert_eq!(
        (&content["user_id"], &content["presence"], &content["status_msg"]),
        (&json!(user), &json!("online"), &json!("hi"))
    );
    let receipts = list(&initial["receipts"]);
    assert_eq!(receipts.len(), 1, "{receipts:?}");
    assert_eq!(receipts[0]["room_id"], json!(room));
    assert!(receipts[0]["content"][&last]["m.read"][&bob.user_id]["ts"].is_u64(), "{receipts:?}");

    // Archived: the left room, up to the leave, with the state then.
    let archived = get_ok(&s, &alice, &format!("{V3}/initialSync?archived=true")).await;
    let left = room_of(&archived, &old).expect("the left room");
    assert_eq!(left["membership"], "leave");
    let chunk = list(&left["messages"]["chunk"]);
    let leave = chunk.last().unwrap();
    assert_eq!((&leave["type"], &leave["content"]["membership"]), (&json!("m.room.member"), &json!("leave")));
    assert!(bodies(&left["messages"]["chunk"]).contains(&"before leaving".to_owned()));
    let me =
        list(&left["state"]).into_iter().find(|e| e["state_key"] == json!(user)).expect("own member event");
    assert_eq!(me["content"]["membership"], "leave");
    // Without a limit, ten messages per room.
    assert_eq!(list(&room_of(&archived, &room).unwrap()["messages"]["chunk"]).len(), 10);
    expect_error(
        s.get(&format!("{V3}/initialSync?archived=maybe"), Some(&alice.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn room_initial_sync_for_members_former_members_and_strangers() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat", "name": "Lobby"})).await;
    join(&s, &bob, &room).await;
    let hello = send_text(&s, &alice, &room, "t1", "hello").await;
    let (status, _) =
        s.post(&format!("{V3}/rooms/{room}/receipt/m.read/{hello}"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    set_presence(&s, &alice, "online", None).await;
    let (status, _) = s
        .put(&format!("{V3}/directory/list/room/{room}"), Some(&alice.token), json!({"visibility": "public"}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let path = format!("{V3}/rooms/{room}/initialSync");
    let view = get_ok(&s, &alice, &path).await;
    assert_eq!(
        (&view["room_id"], &view["membership"], &view["visibility"]),
        (&json!(room), &json!("join"), &json!("public"))
    );
    assert_eq!(bodies(&view["messages"]["chunk"]), ["hello"]);
    // The sender's own device sees its transaction ID, as in every other timeline.
    let hello_event =
        list(&view["messages"]["chunk"]).into_iter().find(|e| e["event_id"] == json!(hello)).unwrap();
    assert_eq!(hello_event["unsigned"]["transaction_id"], "t1");
    assert!(
        list(&view["state"]).iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Lobby")
    );
    // Presence of every joined member; bob never set any, so he is offline.
    let mut presence: Vec<(Value, Value)> = list(&view["presence"])
        .iter()
        .map(|p| (p["content"]["user_id"].clone(), p["content"]["presence"].clone()))
        .collect();
    presence.sort_by_key(|(u, _)| u.to_string());
    assert_eq!(presence, [(json!(alice.user_id), json!("online")), (json!(bob.user_id), json!("offline"))]);
    let receipts = list(&view["receipts"]);
    assert_eq!(receipts.len(), 1);
    assert!(receipts[0]["content"][&hello]["m.read"][&bob.user_id].is_object(), "{receipts:?}");

    // A stranger to a room that is not world-readable, and an unknown room: 403.
    let refused = expect_error(s.get(&path, Some(&carol.token)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert!(refused["error"].as_str().unwrap().contains("room previews are disabled"), "{refused}");
    expect_error(
        s.get(&format!("{V3}/rooms/!nope:localhost/initialSync"), Some(&carol.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // An invitee is a stranger too (Synapse answers the same).
    let (status, _) = s
        .post(&format!("{V3}/rooms/{room}/invite"), Some(&alice.token), json!({"user_id": carol.user_id}))
        .await;
    assert_eq!(status, StatusCode::OK);
    expect_error(s.get(&path, Some(&carol.token)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // A former member sees the room as it was when they left.
    let (status, _) = s.post(&format!("{V3}/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    send_text(&s, &alice, &room, "t2", "after bob left").await;
    let parted = get_ok(&s, &bob, &path).await;
    assert_eq!(parted["membership"], "leave");
    let chunk = list(&parted["messages"]["chunk"]);
    assert_eq!(bodies(&parted["messages"]["chunk"]), ["hello"], "nothing after the leave");
    assert_eq!(chunk.last().unwrap()["content"]["membership"], "leave");
    let bob_state =
        list(&parted["state"]).into_iter().find(|e| e["state_key"] == json!(bob.user_id)).unwrap();
    assert_eq!(bob_state["content"]["membership"], "leave");
    assert_eq!((&parted["presence"], &parted["receipts"]), (&json!([]), &json!([])));
    // Once forgotten, the room is closed to them like to any stranger.
    let (status, _) = s.post(&format!("{V3}/rooms/{room}/forget"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    expect_error(s.get(&path, Some(&bob.token)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // A world-readable room: strangers peek, with no membership.
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.history_visibility"),
            Some(&alice.token),
            json!({"history_visibility": "world_readable"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    send_text(&s, &alice, &room, "t3", "for everyone").await;
    let dave = s.register("dave", "pw-dave-12345").await;
    let peek = get_ok(&s, &dave, &format!("{path}?limit=1")).await;
    assert!(peek.get("membership").is_none(), "{peek}");
    assert_eq!(bodies(&peek["messages"]["chunk"]), ["for everyone"]);
    // What was sent while the room was `shared` stays hidden from strangers.
    let all = get_ok(&s, &dave, &path).await;
    assert_eq!(bodies(&all["messages"]["chunk"]), ["for everyone"]);
    assert!(list(&peek["state"]).iter().any(|e| e["content"]["history_visibility"] == "world_readable"));
    assert_eq!(peek["account_data"], json!([]));
}

#[tokio::test]
async fn room_initial_sync_applies_history_visibility() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.history_visibility"),
            Some(&alice.token),
            json!({"history_visibility": "joined"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    send_text(&s, &alice, &room, "t1", "before bob").await;
    join(&s, &bob, &room).await;
    send_text(&s, &alice, &room, "t2", "after bob").await;

    let view = get_ok(&s, &bob, &format!("{V3}/rooms/{room}/initialSync")).await;
    assert_eq!(bodies(&view["messages"]["chunk"]), ["after bob"]);
    let alices = get_ok(&s, &alice, &format!("{V3}/rooms/{room}/initialSync")).await;
    assert_eq!(bodies(&alices["messages"]["chunk"]), ["before bob", "after bob"]);
}

#[tokio::test]
async fn events_returns_everything_since_a_token_in_one_list() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    let hello = send_text(&s, &alice, &room, "t1", "hello").await;
    let from = events_token(&s, &alice).await;

    let again = send_text(&s, &bob, &room, "b1", "bob again").await;
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{room}/typing/{}", bob.user_id),
            Some(&bob.token),
            json!({"typing": true, "timeout": 30000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) =
        s.post(&format!("{V3}/rooms/{room}/receipt/m.read/{hello}"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s
        .put(
            &format!("{V3}/user/{}/account_data/org.example.g", alice.user_id),
            Some(&alice.token),
            json!({"g": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    set_presence(&s, &bob, "unavailable", None).await;
    let elsewhere = create_room(&s, &carol, json!({})).await;
    let (status, _) = s
        .post(
            &format!("{V3}/rooms/{elsewhere}/invite"),
            Some(&carol.token),
            json!({"user_id": alice.user_id}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let page = events(&s, &alice, &format!("from={from}&timeout=0")).await;
    assert_eq!(page["start"], json!(from));
    let chunk = list(&page["chunk"]);
    // Room events first, in stream order: bob's message, then the invite from elsewhere.
    assert_eq!(chunk[0]["event_id"], json!(again));
    assert_eq!((&chunk[0]["room_id"], &chunk[0]["user_id"]), (&json!(room), &json!(bob.user_id)));
    assert_eq!(
        (&chunk[1]["room_id"], &chunk[1]["content"]["membership"]),
        (&json!(elsewhere), &json!("invite"))
    );
    let presence = of_type(&page["chunk"], "m.presence");
    assert!(
        presence
            .iter()
            .any(|p| p["content"]["user_id"] == json!(bob.user_id)
                && p["content"]["presence"] == "unavailable"),
        "{presence:?}"
    );
    let typing = of_type(&page["chunk"], "m.typing");
    assert_eq!(
        typing,
        [json!({"type": "m.typing", "room_id": room, "content": {"user_ids": [bob.user_id]}})]
    );
    let receipts = of_type(&page["chunk"], "m.receipt");
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0]["room_id"], json!(room));
    assert!(receipts[0]["content"][&hello]["m.read"][&bob.user_id].is_object(), "{receipts:?}");
    assert_eq!(
        of_type(&page["chunk"], "org.example.g"),
        [json!({"type": "org.example.g", "content": {"g": 2}})]
    );
    assert_eq!(chunk.len(), 2 + presence.len() + 3, "nothing else: {chunk:?}");

    // From its `end`, nothing new.
    let end = page["end"].as_str().unwrap();
    let idle = events(&s, &alice, &format!("from={end}&timeout=0")).await;
    assert_eq!((&idle["chunk"], &idle["start"], &idle["end"]), (&json!([]), &json!(end), &json!(end)));
    // The token is `/sync`'s: `/messages` pages back from it.
    let back = get_ok(&s, &alice, &format!("{V3}/rooms/{room}/messages?dir=b&limit=2&from={end}")).await;
    assert_eq!(bodies(&back["chunk"]), ["bob again", "hello"]);

    // Tokens are checked; a missing token is refused as for any endpoint.
    expect_error(
        s.get(&format!("{V3}/events?from=garbage&timeout=0"), Some(&alice.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.get(&format!("{V3}/events?timeout=soon"), Some(&alice.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.get(&format!("{V3}/events?timeout=0"), None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    // The `access_token` query parameter authenticates as it does elsewhere, on r0 too.
    let (status, body) =
        s.get(&format!("/_matrix/client/r0/events?timeout=0&access_token={}", alice.token), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn events_limit_cuts_the_list_without_losing_events() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let first = create_room(&s, &alice, json!({})).await;
    let second = create_room(&s, &alice, json!({})).await;
    let from = events_token(&s, &alice).await;
    send_text(&s, &alice, &first, "1", "a").await;
    send_text(&s, &alice, &second, "2", "b").await;
    send_text(&s, &alice, &first, "3", "c").await;

    let mut seen = Vec::new();
    let mut token = from;
    for _ in 0..5 {
        let page = events(&s, &alice, &format!("from={token}&timeout=0&limit=1")).await;
        let texts = bodies(&page["chunk"]);
        if texts.is_empty() {
            break;
        }
        assert_eq!(texts.len(), 1, "{page}");
        assert!(position(&page["end"]) > position(&page["start"]));
        seen.extend(texts);
        token = page["end"].as_str().unwrap().to_owned();
    }
    assert_eq!(seen, ["a", "b", "c"]);
}

#[tokio::test]
async fn events_long_polls_until_something_of_the_users_arrives() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    let unrelated = create_room(&s, &carol, json!({})).await;
    let from = events_token(&s, &alice).await;

    let http = s.http.clone();
    let url = format!("{}{V3}/events?from={from}&timeout=5000", s.base);
    let token = alice.token.clone();
    let poll = tokio::spawn(async move {
        let body: Value = http.get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap();
        (Instant::now(), body)
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Traffic in a room alice is not in must not end her poll.
    send_text(&s, &carol, &unrelated, "u1", "elsewhere").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "an unrelated send woke the long-poll");

    let sent_at = Instant::now();
    send_text(&s, &bob, &room, "b1", "wake up").await;
    let (answered, page) = poll.await.unwrap();
    let latency = answered.duration_since(sent_at);
    assert!(latency < Duration::from_millis(500), "long-poll took {latency:?}");
    assert_eq!(bodies(&page["chunk"]), ["wake up"]);
    assert_eq!(page["start"], json!(from));
}

#[tokio::test]
async fn events_peeks_only_into_world_readable_rooms() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let other = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let peek = format!("{V3}/events?timeout=0&room_id={room}");
    let refused = expect_error(s.get(&peek, Some(&carol.token)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(refused["error"], "Non-joined access not allowed");

    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.history_visibility"),
            Some(&alice.token),
            json!({"history_visibility": "world_readable"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let start = get_ok(&s, &carol, &peek).await;
    let from = start["end"].as_str().unwrap();
    send_text(&s, &alice, &room, "t1", "for the world").await;
    send_text(&s, &alice, &other, "t2", "not for carol").await;
    let page = get_ok(&s, &carol, &format!("{peek}&from={from}")).await;
    assert_eq!(bodies(&page["chunk"]), ["for the world"]);
    expect_error(
        s.get(&format!("{V3}/events?room_id=nonsense"), Some(&carol.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn single_event_by_id_follows_history_visibility() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let hello = send_text(&s, &alice, &room, "t1", "hello").await;

    let event = get_ok(&s, &alice, &format!("{V3}/events/{hello}")).await;
    assert_eq!(
        (&event["content"]["body"], &event["room_id"], &event["user_id"]),
        (&json!("hello"), &json!(room), &json!(alice.user_id))
    );
    assert_eq!(event["unsigned"]["transaction_id"], "t1");
    // A stranger to a `shared` room learns nothing, not even that the event exists.
    expect_error(
        s.get(&format!("{V3}/events/{hello}"), Some(&carol.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get(&format!("{V3}/events/$nope"), Some(&carol.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get(&format!("{V3}/events/nope"), Some(&carol.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // Events of a world-readable room are readable by anyone.
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.history_visibility"),
            Some(&alice.token),
            json!({"history_visibility": "world_readable"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let open = send_text(&s, &alice, &room, "t2", "for everyone").await;
    let seen = get_ok(&s, &carol, &format!("{V3}/events/{open}")).await;
    assert_eq!(seen["content"]["body"], "for everyone");
    assert!(seen["unsigned"].get("transaction_id").is_none(), "only the sender's device sees it");
    // Visibility is decided at the event: what was sent while the room was `shared` stays
    // hidden from strangers.
    expect_error(
        s.get(&format!("{V3}/events/{hello}"), Some(&carol.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn post_send_makes_a_new_event_on_every_call() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let path = format!("{V3}/rooms/{room}/send/m.room.message");
    let content = json!({"msgtype": "m.text", "body": "posted"});
    let (status, first) = s.post(&path, Some(&alice.token), content.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, second) = s.post(&path, Some(&alice.token), content).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(first["event_id"], second["event_id"]);
    let history = get_ok(&s, &alice, &format!("{V3}/rooms/{room}/messages?dir=b&limit=2")).await;
    assert_eq!(bodies(&history["chunk"]), ["posted", "posted"]);
    let sent =
        get_ok(&s, &alice, &format!("{V3}/rooms/{room}/event/{}", first["event_id"].as_str().unwrap())).await;
    assert_eq!((&sent["type"], &sent["sender"]), (&json!("m.room.message"), &json!(alice.user_id)));

    expect_error(
        s.post(&path, Some(&carol.token), json!({"body": "x"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(s.post(&path, Some(&alice.token), json!([1])).await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    let resp = s
        .http
        .post(format!("{}{path}", s.base))
        .bearer_auth(&alice.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    expect_error((status, body), StatusCode::BAD_REQUEST, "M_NOT_JSON");
}

#[tokio::test]
async fn whois_shows_devices_to_the_user_and_to_admins() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let laptop = s.login("alice", "pw-alice-123", Some("LAPTOP")).await;
    let path = format!("{V3}/admin/whois/{}", alice.user_id);
    let resp = s
        .http
        .get(format!("{}{path}", s.base))
        .bearer_auth(&laptop.token)
        .header("User-Agent", "legacy-test/1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let whois: Value = resp.json().await.unwrap();
    assert_eq!(whois["user_id"], json!(alice.user_id));
    let devices = whois["devices"].as_object().unwrap();
    let mut ids: Vec<&String> = devices.keys().collect();
    ids.sort();
    let mut expected = vec![&alice.device_id, &laptop.device_id];
    expected.sort();
    assert_eq!(ids, expected);
    // The device making the request was just seen, with its agent.
    let connection = &devices["LAPTOP"]["sessions"][0]["connections"][0];
    assert_eq!(
        (&connection["ip"], &connection["last_seen"], &connection["user_agent"]),
        (&json!("127.0.0.1"), &json!(s.clock.now_ms()), &json!("legacy-test/1.0"))
    );
    assert_eq!(devices[&alice.device_id]["sessions"][0]["connections"][0]["ip"], "127.0.0.1");

    // The agent outlives the in-memory buffer.
    s.services.devices.flush_last_seen().unwrap();
    s.clock.advance_ms(1000);
    let whois = get_ok(&s, &alice, &path).await;
    assert_eq!(whois["devices"]["LAPTOP"]["sessions"][0]["connections"][0]["user_agent"], "legacy-test/1.0");

    // Others may not look, unless they are server admins; admins look only at local users.
    let refused = expect_error(s.get(&path, Some(&bob.token)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(refused["error"], "You are not a server admin");
    s.services.accounts.create_user("boss", "pw-boss-12345", true).await.unwrap();
    let boss = s.login("boss", "pw-boss-12345", None).await;
    let seen = get_ok(&s, &boss, &path).await;
    assert_eq!(seen["devices"].as_object().unwrap().len(), 2);
    expect_error(
        s.get(&format!("{V3}/admin/whois/@x:elsewhere"), Some(&boss.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.get(&format!("{V3}/admin/whois/@x:elsewhere"), Some(&bob.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}
