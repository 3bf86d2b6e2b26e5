//! `/sync` through HTTP: initial and incremental syncs, long-polling, limited timelines
//! and paging back, invites and leaves, filters and lazy-loaded members.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error},
    rooms::{V3, create_room, join, send_text},
};

/// Sync with a query string; panics unless it succeeds.
pub async fn sync(s: &TestServer, who: &Session, query: &str) -> Value {
    let (status, body) = s.get(&format!("{V3}/sync?{query}"), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Start a long-polling sync in the background; it yields the response body and when it
/// arrived.
pub fn spawn_poll(s: &TestServer, who: &Session, since: &str) -> tokio::task::JoinHandle<(Instant, Value)> {
    let http = s.http.clone();
    let url = format!("{}{V3}/sync?since={since}&timeout=5000", s.base);
    let token = who.token.clone();
    tokio::spawn(async move {
        let resp = http.get(url).bearer_auth(token).send().await.unwrap();
        let body = resp.json::<Value>().await.unwrap();
        (Instant::now(), body)
    })
}

/// An initial sync's `next_batch`.
pub async fn token(s: &TestServer, who: &Session) -> String {
    sync(s, who, "").await["next_batch"].as_str().unwrap().to_owned()
}

/// Bodies of the text messages in a list of events.
pub fn bodies(events: &Value) -> Vec<String> {
    list(events)
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

/// The elements of a JSON list; an absent list (ruma omits empty ones) is empty.
pub fn list(value: &Value) -> Vec<Value> {
    value.as_array().cloned().unwrap_or_default()
}

fn state_types(events: &Value) -> Vec<String> {
    let mut types: Vec<String> = list(events)
        .iter()
        .map(|e| format!("{}|{}", e["type"].as_str().unwrap(), e["state_key"].as_str().unwrap()))
        .collect();
    types.sort();
    types
}

#[tokio::test]
async fn initial_and_incremental_sync() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat", "name": "Lobby"})).await;
    join(&s, &bob, &room).await;
    send_text(&s, &alice, &room, "t1", "hello").await;

    let initial = sync(&s, &bob, "").await;
    let joined = &initial["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]["events"]), ["hello"]);
    // The timeline holds the whole (short) room, so nothing was left out.
    assert_ne!(joined["timeline"]["limited"], true);
    let state = state_types(&joined["state"]["events"]);
    let timeline_state = joined["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("state_key").is_some())
        .count();
    assert!(timeline_state + state.len() >= 6, "{state:?}");
    assert_eq!(joined["summary"]["m.joined_member_count"], 2);
    // The room has a name, so clients need no heroes to name it.
    assert!(joined["summary"].get("m.heroes").is_none(), "{}", joined["summary"]);
    // Sync events carry no room_id; the room is the key.
    assert!(joined["timeline"]["events"][0].get("room_id").is_none());
    assert!(
        initial["account_data"]["events"].as_array().unwrap().iter().any(|e| e["type"] == "m.push_rules")
    );

    // Nothing new: an incremental sync is empty and keeps the token.
    let since = initial["next_batch"].as_str().unwrap();
    let idle = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    assert!(idle["rooms"]["join"].as_object().is_none_or(|j| j.is_empty()), "{idle}");
    assert_eq!(idle["next_batch"], since);

    // One new message: exactly it, and no repeat of the state.
    send_text(&s, &alice, &room, "t2", "second").await;
    let next = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    let joined = &next["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]["events"]), ["second"]);
    assert_ne!(joined["timeline"]["limited"], true);
    assert!(joined["state"]["events"].as_array().is_none_or(|e| e.is_empty()), "{joined}");

    // full_state sends the whole state again with an incremental timeline.
    let full = sync(&s, &bob, &format!("since={since}&timeout=0&full_state=true")).await;
    assert!(!full["rooms"]["join"][&room]["state"]["events"].as_array().unwrap().is_empty());

    expect_error(
        s.get(&format!("{V3}/sync?since=nonsense"), Some(&bob.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn long_poll_wakes_for_its_rooms_only() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let shared = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &shared).await;
    let unrelated = create_room(&s, &carol, json!({})).await;
    let since = token(&s, &bob).await;

    let poll = spawn_poll(&s, &bob, &since);
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Traffic in a room bob is not in must not end his poll.
    send_text(&s, &carol, &unrelated, "u1", "elsewhere").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "an unrelated send woke the long-poll");

    let sent_at = Instant::now();
    send_text(&s, &alice, &shared, "s1", "for bob").await;
    let (returned_at, body) = poll.await.unwrap();
    let latency = returned_at.duration_since(sent_at);
    assert!(latency < Duration::from_millis(500), "long-poll took {latency:?}");
    assert_eq!(bodies(&body["rooms"]["join"][&shared]["timeline"]["events"]), ["for bob"]);
    assert!(body["rooms"]["join"].get(&unrelated).is_none());

    // An invite to a new room wakes the invitee's poll too.
    let since = body["next_batch"].as_str().unwrap().to_owned();
    let poll = spawn_poll(&s, &bob, &since);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = s
        .post(&format!("{V3}/rooms/{unrelated}/invite"), Some(&carol.token), json!({"user_id": bob.user_id}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) =
        tokio::time::timeout(Duration::from_secs(2), poll).await.expect("invite woke the poll").unwrap();
    assert!(body["rooms"]["invite"].get(&unrelated).is_some(), "{body}");
}

#[tokio::test]
async fn limited_timeline_pages_back_without_gaps_or_duplicates() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    let since = token(&s, &bob).await;
    let sent: Vec<String> = {
        let mut sent = Vec::new();
        for i in 0..25 {
            let body = format!("m{i}");
            send_text(&s, &alice, &room, &format!("t{i}"), &body).await;
            sent.push(body);
        }
        sent
    };
    let filter = json!({"room": {"timeline": {"limit": 5}}}).to_string();
    let next = sync(&s, &bob, &format!("since={since}&timeout=0&filter={}", urlencode(&filter))).await;
    let timeline = &next["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["limited"], true);
    assert_eq!(bodies(&timeline["events"]), sent[20..].to_vec());

    // Page back from prev_batch to the sync token: the rest, in order, exactly once.
    let mut seen: Vec<String> = bodies(&timeline["events"]);
    let mut from = timeline["prev_batch"].as_str().unwrap().to_owned();
    loop {
        let (status, page) = s
            .get(
                &format!("{V3}/rooms/{room}/messages?dir=b&from={from}&to={since}&limit=4"),
                Some(&bob.token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let mut older = bodies(&page["chunk"]);
        older.reverse();
        older.extend(seen);
        seen = older;
        match page["end"].as_str() {
            Some(end) => from = end.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, sent);

    // An initial sync of a long room is limited too, and pages back to the start.
    let initial = sync(&s, &bob, &format!("filter={}", urlencode(&filter))).await;
    let timeline = &initial["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["limited"], true);
    let (_, page) = s
        .get(
            &format!(
                "{V3}/rooms/{room}/messages?dir=b&from={}&limit=100",
                timeline["prev_batch"].as_str().unwrap()
            ),
            Some(&bob.token),
        )
        .await;
    let older = bodies(&page["chunk"]);
    assert_eq!(older.len(), 20);
    assert_eq!(older[0], "m19");
    assert!(page.get("end").is_none() || page["end"].is_null(), "{page}");
}

#[tokio::test]
async fn invites_knocks_and_leaves() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"name": "Secret", "preset": "private_chat"})).await;
    let since = token(&s, &bob).await;
    let (status, _) = s
        .post(&format!("{V3}/rooms/{room}/invite"), Some(&alice.token), json!({"user_id": bob.user_id}))
        .await;
    assert_eq!(status, StatusCode::OK);

    let next = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    let invite = &next["rooms"]["invite"][&room]["invite_state"]["events"];
    let types = state_types(invite);
    assert!(types.contains(&"m.room.name|".to_owned()), "{types:?}");
    assert!(types.contains(&"m.room.member|@bob:localhost".to_owned()));
    assert!(
        invite.as_array().unwrap().iter().all(|e| e.get("event_id").is_none()),
        "stripped state has no ids"
    );

    join(&s, &bob, &room).await;
    send_text(&s, &alice, &room, "t1", "welcome").await;
    let since = next["next_batch"].as_str().unwrap();
    let joined = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    // Joined after the token: the room comes whole, with its state.
    let room_sync = &joined["rooms"]["join"][&room];
    let seen = list(&room_sync["state"]["events"]).len() + list(&room_sync["timeline"]["events"]).len();
    assert!(seen > 5, "{room_sync}");
    assert!(joined["rooms"]["invite"].get(&room).is_none());

    let since = joined["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = s.post(&format!("{V3}/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    send_text(&s, &alice, &room, "t2", "after bob left").await;
    let left = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    let timeline = &left["rooms"]["leave"][&room]["timeline"]["events"];
    let last = timeline.as_array().unwrap().last().unwrap();
    assert_eq!(last["content"]["membership"], "leave");
    assert!(!bodies(timeline).contains(&"after bob left".to_owned()));
    assert!(left["rooms"]["join"].get(&room).is_none());

    // Knocking shows the room under `knock` with stripped state.
    let door = create_room(
        &s,
        &alice,
        json!({"name": "Door", "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    let since = left["next_batch"].as_str().unwrap().to_owned();
    let (status, body) = s.post(&format!("{V3}/knock/{door}"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let knocked = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    let types = state_types(&knocked["rooms"]["knock"][&door]["knock_state"]["events"]);
    assert!(
        types.contains(&"m.room.name|".to_owned())
            && types.contains(&"m.room.member|@bob:localhost".to_owned()),
        "{types:?}"
    );

    // Left rooms show in an initial sync only when the filter asks.
    let plain = sync(&s, &bob, "").await;
    assert!(plain["rooms"]["leave"].get(&room).is_none());
    let with_leave = sync(
        &s,
        &bob,
        &format!("filter={}", urlencode(&json!({"room": {"include_leave": true}}).to_string())),
    )
    .await;
    assert!(with_leave["rooms"]["leave"].get(&room).is_some());
}

#[tokio::test]
async fn filters_shape_the_sync() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let other = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    join(&s, &carol, &room).await;
    send_text(&s, &bob, &room, "b1", "from bob").await;
    send_text(&s, &alice, &room, "a1", "from alice").await;
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{room}/send/m.reaction/r1"),
            Some(&alice.token),
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$x", "key": "👍"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Saved filters round-trip and apply by ID.
    let filter = json!({
        "room": {
            "rooms": [room],
            "timeline": {"limit": 10, "types": ["m.room.message"], "not_senders": ["@bob:localhost"]},
            "state": {"lazy_load_members": true}
        },
        "event_fields": ["type", "content.body", "sender"]
    });
    let path = format!("{V3}/user/{}/filter", alice.user_id);
    let (status, created) = s.post(&path, Some(&alice.token), filter.clone()).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["filter_id"].as_str().unwrap();
    let (status, fetched) = s.get(&format!("{path}/{id}"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["room"]["timeline"]["types"], json!(["m.room.message"]));
    expect_error(
        s.get(&format!("{path}/{id}"), Some(&bob.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(
        s.get(&format!("{path}/nope"), Some(&alice.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    let body = sync(&s, &alice, &format!("filter={id}")).await;
    assert!(body["rooms"]["join"].get(&other).is_none(), "rooms filter");
    let joined = &body["rooms"]["join"][&room];
    let events = joined["timeline"]["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    // event_fields keeps only what was asked for.
    assert_eq!(
        events[0],
        json!({"type": "m.room.message", "content": {"body": "from alice"}, "sender": "@alice:localhost"})
    );
    // Lazy loading: members only for timeline senders (and the syncing user).
    let members: Vec<String> = list(&joined["state"]["events"])
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(!members.iter().any(|m| m.contains("carol")), "{members:?}");

    // An inline filter works the same; a bad one is refused.
    let inline = urlencode(&json!({"room": {"timeline": {"limit": 1}}}).to_string());
    let body = sync(&s, &alice, &format!("filter={inline}")).await;
    assert_eq!(body["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap().len(), 1);
    let (status, _) = s.get(&format!("{V3}/sync?filter=%7Bnot-json"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn own_transaction_ids_are_echoed_to_the_sending_device_only() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let other_device = s.login("alice", "pw-alice-123", Some("OTHER")).await;
    let room = create_room(&s, &alice, json!({})).await;
    send_text(&s, &alice, &room, "txn-42", "mine").await;
    let find = |body: &Value| {
        body["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "m.room.message")
            .cloned()
            .unwrap()
    };
    let mine = find(&sync(&s, &alice, "").await);
    assert_eq!(mine["unsigned"]["transaction_id"], "txn-42");
    assert!(mine["unsigned"]["age"].is_u64());
    let theirs = find(&sync(&s, &other_device, "").await);
    assert!(theirs["unsigned"].get("transaction_id").is_none());
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[tokio::test]
async fn filtered_state_changes_still_reach_the_client() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bot = s.register("bot", "pw-bot-123456").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat", "name": "Old name"})).await;
    join(&s, &bot, &room).await;
    // A bot that only wants messages in its timeline.
    let filter = urlencode(&json!({"room": {"timeline": {"types": ["m.room.message"]}}}).to_string());
    let since = sync(&s, &bot, &format!("filter={filter}")).await["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.name/"),
            Some(&alice.token),
            json!({"name": "New name"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&s, &bot, &format!("since={since}&timeout=0&filter={filter}")).await;
    let state = list(&body["rooms"]["join"][&room]["state"]["events"]);
    let name = state.iter().find(|e| e["type"] == "m.room.name").expect("the rename is in state");
    assert_eq!(name["content"]["name"], "New name");
}

#[tokio::test]
async fn a_profile_change_is_not_a_new_join() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({"name": "Lobby"})).await;
    send_text(&s, &alice, &room, "t1", "before").await;
    let since = token(&s, &alice).await;
    let (status, _) = s
        .put(
            &format!("{V3}/profile/{}/displayname", alice.user_id),
            Some(&alice.token),
            json!({"displayname": "Alice A."}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&s, &alice, &format!("since={since}&timeout=0")).await;
    let joined = &body["rooms"]["join"][&room];
    let timeline = list(&joined["timeline"]["events"]);
    // Only the new member event, carrying the new name: not the whole room again.
    assert_eq!(timeline.len(), 1, "{timeline:?}");
    assert_eq!(timeline[0]["type"], "m.room.member");
    assert_eq!(timeline[0]["content"]["displayname"], "Alice A.");
    assert_eq!(timeline[0]["content"]["membership"], "join");
    assert!(!bodies(&joined["timeline"]["events"]).contains(&"before".to_owned()));
    assert!(list(&joined["state"]["events"]).is_empty(), "{joined}");
}

#[tokio::test]
async fn lazy_loading_sends_changed_members_and_heroes() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    let lazy = urlencode(
        &json!({"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 1}}}).to_string(),
    );
    send_text(&s, &alice, &room, "a1", "from alice").await;
    // Alice's own member event is not a timeline sender here, but bob is a hero of the room.
    let body = sync(&s, &alice, &format!("filter={lazy}")).await;
    let members: Vec<String> = list(&body["rooms"]["join"][&room]["state"]["events"])
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect();
    assert!(members.contains(&"@bob:localhost".to_owned()), "hero's member event: {members:?}");
    let since = body["next_batch"].as_str().unwrap().to_owned();

    // Bob renames himself, then speaks: his new member event must go out although an older
    // one of his was sent before.
    let (status, _) = s
        .put(
            &format!("{V3}/profile/{}/displayname", bob.user_id),
            Some(&bob.token),
            json!({"displayname": "Bobby"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    for i in 0..3 {
        send_text(&s, &bob, &room, &format!("b{i}"), "hi").await;
    }
    let body = sync(&s, &alice, &format!("since={since}&timeout=0&filter={lazy}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true);
    let bob_member = list(&joined["state"]["events"])
        .into_iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == "@bob:localhost")
        .unwrap_or_else(|| panic!("bob's renamed member event: {joined}"));
    assert_eq!(bob_member["content"]["displayname"], "Bobby");
}

/// The events of a room section's timeline in a sync body, and whether it was limited
/// (`None` when the field is missing).
fn timeline_of(body: &Value, section: &str, room: &str) -> (Vec<Value>, Option<bool>) {
    let timeline = &body["rooms"][section][room]["timeline"];
    (list(&timeline["events"]), timeline["limited"].as_bool())
}

/// Member events in a list of events, as (user, event ID).
fn members_in(events: &Value) -> Vec<(String, String)> {
    list(events)
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| (e["state_key"].as_str().unwrap().to_owned(), e["event_id"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn limited_is_always_present() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    let initial = sync(&s, &bob, "").await;
    assert_eq!(timeline_of(&initial, "join", &room).1, Some(false), "{initial}");
    let since = initial["next_batch"].as_str().unwrap().to_owned();
    send_text(&s, &alice, &room, "t1", "one").await;
    let next = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    assert_eq!(timeline_of(&next, "join", &room).1, Some(false), "{next}");

    // A left room's timeline says it too.
    let since = next["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = s.post(&format!("{V3}/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let left = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    assert_eq!(timeline_of(&left, "leave", &room).1, Some(false), "{left}");
}

#[tokio::test]
async fn a_timeline_limit_of_zero_sends_no_events_but_says_some_were_left_out() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    send_text(&s, &alice, &room, "t1", "one").await;
    let zero = urlencode(&json!({"room": {"timeline": {"limit": 0}}}).to_string());
    let initial = sync(&s, &alice, &format!("filter={zero}")).await;
    assert_eq!(timeline_of(&initial, "join", &room), (vec![], Some(true)), "{initial}");
    // The state still comes, and prev_batch pages back to the events.
    let state = state_types(&initial["rooms"]["join"][&room]["state"]["events"]);
    assert!(state.contains(&"m.room.create|".to_owned()), "{state:?}");
    let prev = initial["rooms"]["join"][&room]["timeline"]["prev_batch"].as_str().unwrap();
    let (_, page) =
        s.get(&format!("{V3}/rooms/{room}/messages?dir=b&from={prev}&limit=1"), Some(&alice.token)).await;
    assert_eq!(bodies(&page["chunk"]), ["one"]);

    // An incremental sync with a new event shows the room, empty and limited.
    let since = initial["next_batch"].as_str().unwrap().to_owned();
    send_text(&s, &alice, &room, "t2", "two").await;
    let next = sync(&s, &alice, &format!("since={since}&timeout=0&filter={zero}")).await;
    assert_eq!(timeline_of(&next, "join", &room), (vec![], Some(true)), "{next}");
    // Nothing new: no room at all.
    let since = next["next_batch"].as_str().unwrap().to_owned();
    let idle = sync(&s, &alice, &format!("since={since}&timeout=0&filter={zero}")).await;
    assert!(idle["rooms"]["join"].get(&room).is_none(), "{idle}");
}

#[tokio::test]
async fn heroes_only_for_rooms_without_a_name() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let zoe = s.register("zoe", "pw-zoe-123456").await;
    let named = create_room(&s, &alice, json!({"preset": "public_chat", "name": "Named"})).await;
    let aliased =
        create_room(&s, &alice, json!({"preset": "public_chat", "room_alias_name": "aliased"})).await;
    let plain = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let blank = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let (status, _) = s
        .put(&format!("{V3}/rooms/{blank}/state/m.room.name/"), Some(&alice.token), json!({"name": ""}))
        .await;
    assert_eq!(status, StatusCode::OK);
    // Heroes come in the order members arrived, not by name.
    for room in [&named, &aliased, &plain, &blank] {
        join(&s, &zoe, room).await;
        join(&s, &carol, room).await;
        join(&s, &bob, room).await;
    }
    let body = sync(&s, &bob, "").await;
    let summary = |room: &str| body["rooms"]["join"][room]["summary"].clone();
    for room in [&named, &aliased] {
        assert!(summary(room).get("m.heroes").is_none(), "{}", summary(room));
        assert_eq!(summary(room)["m.joined_member_count"], 4);
    }
    for room in [&plain, &blank] {
        let heroes = json!(["@alice:localhost", "@zoe:localhost", "@carol:localhost"]);
        assert_eq!(summary(room)["m.heroes"], heroes, "{}", summary(room));
    }

    // Naming a room takes its heroes away in the next sync.
    let since = body["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{plain}/state/m.room.name/"),
            Some(&alice.token),
            json!({"name": "Now named"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let next = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    let summary = &next["rooms"]["join"][&plain]["summary"];
    assert_eq!(summary["m.joined_member_count"], 4, "{next}");
    assert!(summary.get("m.heroes").is_none(), "{summary}");
}

#[tokio::test]
async fn lazy_members_are_not_sent_twice() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let dave = s.register("dave", "pw-dave-12345").await;
    let erin = s.register("erin", "pw-erin-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat", "name": "Lazy"})).await;
    let lazy = urlencode(
        &json!({"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 2}}}).to_string(),
    );
    let since = sync(&s, &alice, &format!("filter={lazy}")).await["next_batch"].as_str().unwrap().to_owned();

    // Dave's join comes in a timeline...
    join(&s, &dave, &room).await;
    let body = sync(&s, &alice, &format!("since={since}&timeout=0&filter={lazy}")).await;
    let (timeline, _) = timeline_of(&body, "join", &room);
    let dave_join = timeline.iter().find(|e| e["state_key"] == dave.user_id.as_str()).expect("dave's join");
    let dave_join = dave_join["event_id"].as_str().unwrap().to_owned();
    // ...so when he then speaks after a gap, the same event is not sent again as state.
    let since = body["next_batch"].as_str().unwrap().to_owned();
    for i in 0..3 {
        send_text(&s, &dave, &room, &format!("d{i}"), "hi").await;
    }
    let body = sync(&s, &alice, &format!("since={since}&timeout=0&filter={lazy}")).await;
    assert_eq!(timeline_of(&body, "join", &room).1, Some(true));
    let state = members_in(&body["rooms"]["join"][&room]["state"]["events"]);
    assert!(!state.iter().any(|(_, id)| *id == dave_join), "dave's join sent twice: {state:?}");

    // Within one response: Erin renames herself and speaks; her new member event is in the
    // timeline, so the state does not repeat her as well.
    join(&s, &erin, &room).await;
    let (status, _) = s
        .put(
            &format!("{V3}/profile/{}/displayname", erin.user_id),
            Some(&erin.token),
            json!({"displayname": "Erin E."}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    send_text(&s, &erin, &room, "e1", "hello").await;
    let body = sync(&s, &alice, &format!("filter={lazy}")).await;
    let joined = &body["rooms"]["join"][&room];
    let in_timeline = members_in(&joined["timeline"]["events"]);
    assert!(in_timeline.iter().any(|(user, _)| *user == erin.user_id), "{joined}");
    let state = members_in(&joined["state"]["events"]);
    assert!(!state.iter().any(|(user, _)| *user == erin.user_id), "erin twice in one response: {state:?}");
    assert!(state.iter().any(|(user, _)| *user == alice.user_id), "{state:?}");
}

#[tokio::test]
async fn newcomers_presence_comes_with_their_join() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let carols = create_room(&s, &carol, json!({"preset": "public_chat"})).await;
    for (who, status) in [(&bob, "online"), (&carol, "unavailable")] {
        let (code, _) = s
            .put(
                &format!("{V3}/presence/{}/status", who.user_id),
                Some(&who.token),
                json!({"presence": status, "status_msg": format!("{status} msg")}),
            )
            .await;
        assert_eq!(code, StatusCode::OK);
    }
    let presence_of = |body: &Value, user: &str| {
        list(&body["presence"]["events"])
            .into_iter()
            .find(|e| e["sender"] == user)
            .map(|e| e["content"].clone())
    };
    let since = token(&s, &alice).await;
    // Their presence changed before the token, but alice shares no room with them yet.
    let idle = sync(&s, &alice, &format!("since={since}&timeout=0")).await;
    assert!(presence_of(&idle, &bob.user_id).is_none(), "{idle}");

    // Bob joins alice's room: his presence comes along.
    join(&s, &bob, &room).await;
    let body = sync(&s, &alice, &format!("since={since}&timeout=0")).await;
    let bobs = presence_of(&body, &bob.user_id).unwrap_or_else(|| panic!("bob's presence: {body}"));
    assert_eq!(bobs["presence"], "online");
    assert_eq!(bobs["status_msg"], "online msg");
    assert!(presence_of(&body, &carol.user_id).is_none());

    // Alice joins carol's room: carol's presence comes along.
    let since = body["next_batch"].as_str().unwrap().to_owned();
    join(&s, &alice, &carols).await;
    let body = sync(&s, &alice, &format!("since={since}&timeout=0")).await;
    let carols_presence =
        presence_of(&body, &carol.user_id).unwrap_or_else(|| panic!("carol's presence: {body}"));
    assert_eq!(carols_presence["presence"], "unavailable");
}

#[tokio::test]
async fn left_rooms_come_with_the_timeline_to_the_leave_and_the_state_that_changed() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat", "name": "Lobby"})).await;
    join(&s, &bob, &room).await;
    let since = token(&s, &bob).await;
    send_text(&s, &alice, &room, "t1", "between").await;
    let (status, _) = s.post(&format!("{V3}/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    send_text(&s, &alice, &room, "t2", "after").await;
    let body = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    let (timeline, limited) = timeline_of(&body, "leave", &room);
    assert_eq!(bodies(&json!(timeline)), ["between"]);
    assert_eq!(timeline.last().unwrap()["content"]["membership"], "leave");
    // The client had the room's state at the token and nothing changed since.
    assert!(list(&body["rooms"]["leave"][&room]["state"]["events"]).is_empty(), "{body}");
    assert_eq!(limited, Some(false));

    // After a gap, only what changed in it: the new topic, not the whole room again.
    let gap = create_room(&s, &alice, json!({"preset": "public_chat", "name": "Gap"})).await;
    join(&s, &bob, &gap).await;
    let since = token(&s, &bob).await;
    let (status, _) = s
        .put(&format!("{V3}/rooms/{gap}/state/m.room.topic/"), Some(&alice.token), json!({"topic": "new"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    for i in 0..4 {
        send_text(&s, &alice, &gap, &format!("g{i}"), &format!("g{i}")).await;
    }
    let (status, _) = s.post(&format!("{V3}/rooms/{gap}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let two = urlencode(&json!({"room": {"timeline": {"limit": 2}}}).to_string());
    let body = sync(&s, &bob, &format!("since={since}&timeout=0&filter={two}")).await;
    let (timeline, limited) = timeline_of(&body, "leave", &gap);
    assert_eq!(bodies(&json!(timeline)), ["g3"]);
    assert_eq!(state_types(&body["rooms"]["leave"][&gap]["state"]["events"]), ["m.room.topic|"], "{body}");
    assert_eq!(limited, Some(true));

    // Kicked and banned users see their room under `leave` too, ending with the kick or ban.
    for (action, membership) in [("kick", "leave"), ("ban", "ban")] {
        let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
        join(&s, &bob, &room).await;
        let since = token(&s, &bob).await;
        let (status, _) = s
            .post(&format!("{V3}/rooms/{room}/{action}"), Some(&alice.token), json!({"user_id": bob.user_id}))
            .await;
        assert_eq!(status, StatusCode::OK);
        let body = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
        let (timeline, _) = timeline_of(&body, "leave", &room);
        let last = timeline.last().unwrap_or_else(|| panic!("{action}: {body}"));
        assert_eq!(
            (last["content"]["membership"].as_str(), last["sender"].as_str()),
            (Some(membership), Some(alice.user_id.as_str()))
        );
    }

    // Joined and left again since the token: the room is new to the client, so it comes whole.
    let brief = create_room(&s, &alice, json!({"preset": "public_chat", "name": "Brief"})).await;
    let since = token(&s, &bob).await;
    join(&s, &bob, &brief).await;
    send_text(&s, &bob, &brief, "b1", "hello").await;
    let (status, _) = s.post(&format!("{V3}/rooms/{brief}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let body = sync(&s, &bob, &format!("since={since}&timeout=0")).await;
    let state = state_types(&body["rooms"]["leave"][&brief]["state"]["events"]);
    for kind in ["m.room.create|", "m.room.name|", "m.room.power_levels|"] {
        assert!(state.contains(&kind.to_owned()), "{kind}: {state:?}");
    }
    assert!(body["rooms"]["join"].get(&brief).is_none());
}

#[tokio::test]
async fn a_room_joined_since_the_token_comes_with_its_full_state() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room =
        create_room(&s, &alice, json!({"preset": "public_chat", "name": "Full", "topic": "old"})).await;
    for i in 0..3 {
        send_text(&s, &alice, &room, &format!("m{i}"), &format!("m{i}")).await;
    }
    let one = urlencode(&json!({"room": {"timeline": {"limit": 1}}}).to_string());
    let since = token(&s, &bob).await;
    join(&s, &bob, &room).await;
    let body = sync(&s, &bob, &format!("since={since}&timeout=0&filter={one}")).await;
    let state = state_types(&body["rooms"]["join"][&room]["state"]["events"]);
    for kind in ["m.room.create|", "m.room.name|", "m.room.topic|", "m.room.member|@alice:localhost"] {
        assert!(state.contains(&kind.to_owned()), "{kind}: {state:?}");
    }

    // Left and joined again within one range: full state again, with what changed meanwhile.
    let since = body["next_batch"].as_str().unwrap().to_owned();
    let (status, _) = s.post(&format!("{V3}/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s
        .put(&format!("{V3}/rooms/{room}/state/m.room.topic/"), Some(&alice.token), json!({"topic": "new"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    join(&s, &bob, &room).await;
    send_text(&s, &alice, &room, "m3", "m3").await;
    let body = sync(&s, &bob, &format!("since={since}&timeout=0&filter={one}")).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]["events"]), ["m3"]);
    let state = list(&joined["state"]["events"]);
    let topic = state.iter().find(|e| e["type"] == "m.room.topic").unwrap_or_else(|| panic!("{joined}"));
    assert_eq!(topic["content"]["topic"], "new");
    assert!(state.iter().any(|e| e["type"] == "m.room.create"), "{joined}");
    assert!(body["rooms"]["leave"].get(&room).is_none());
}

#[tokio::test]
async fn federation_format_applies_to_room_events_and_leaves_ephemeral_alone() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    let message = send_text(&s, &alice, &room, "t1", "hello").await;
    let (status, _) =
        s.post(&format!("{V3}/rooms/{room}/receipt/m.read/{message}"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{room}/typing/{}", alice.user_id),
            Some(&alice.token),
            json!({"typing": true, "timeout": 30000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let federation =
        urlencode(&json!({"event_format": "federation", "room": {"timeline": {"limit": 1}}}).to_string());
    let body = sync(&s, &bob, &format!("filter={federation}")).await;
    let joined = &body["rooms"]["join"][&room];
    // Room events, in the timeline and in the state, are PDUs.
    let event = &list(&joined["timeline"]["events"])[0];
    assert_eq!(event["content"]["body"], "hello");
    assert!(event["auth_events"].is_array() && event["room_id"] == room.as_str(), "{event}");
    let state = list(&joined["state"]["events"]);
    assert!(!state.is_empty());
    for event in &state {
        assert!(event["auth_events"].is_array() && event["room_id"] == room.as_str(), "{event}");
    }
    // Receipts and typing are not room events: they keep their one shape.
    let ephemeral = list(&joined["ephemeral"]["events"]);
    let typing = ephemeral.iter().find(|e| e["type"] == "m.typing").unwrap_or_else(|| panic!("{joined}"));
    assert_eq!(typing["content"]["user_ids"], json!([alice.user_id]));
    let receipt = ephemeral.iter().find(|e| e["type"] == "m.receipt").unwrap_or_else(|| panic!("{joined}"));
    assert!(receipt["content"][&message]["m.read"][&bob.user_id]["ts"].is_u64(), "{receipt}");
}

/// Member counts and heroes come from each room's roster, kept in memory once read and
/// changed in place by every membership change: each change shows in the next incremental
/// sync.
#[tokio::test]
async fn member_counts_and_heroes_follow_every_membership_change() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "private_chat"})).await;
    assert_eq!(
        s.post(&format!("{V3}/rooms/{room}/invite"), Some(&alice.token), json!({"user_id": bob.user_id}))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    let first = sync(&s, &bob, "").await;
    let summary = &first["rooms"]["join"][&room]["summary"];
    assert_eq!(
        (summary["m.joined_member_count"].as_u64(), summary["m.invited_member_count"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(summary["m.heroes"], json!([alice.user_id]));
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    let step = |from: String, expect_joined: u64, expect_invited: u64, heroes: Value| {
        let (s, bob, room) = (&s, bob.clone(), room.clone());
        async move {
            let next = sync(s, &bob, &format!("since={from}&timeout=0")).await;
            let summary = &next["rooms"]["join"][&room]["summary"];
            assert_eq!(summary["m.joined_member_count"].as_u64(), Some(expect_joined), "{next}");
            assert_eq!(summary["m.invited_member_count"].as_u64(), Some(expect_invited), "{next}");
            assert_eq!(summary["m.heroes"], heroes, "{next}");
            next["next_batch"].as_str().unwrap().to_owned()
        }
    };
    let invite = json!({"user_id": carol.user_id});
    assert_eq!(
        s.post(&format!("{V3}/rooms/{room}/invite"), Some(&alice.token), invite).await.0,
        StatusCode::OK
    );
    since = step(since.clone(), 2, 1, json!([alice.user_id, carol.user_id])).await;
    assert_eq!(join(&s, &carol, &room).await.0, StatusCode::OK);
    since = step(since.clone(), 3, 0, json!([alice.user_id, carol.user_id])).await;
    assert_eq!(
        s.post(&format!("{V3}/rooms/{room}/leave"), Some(&alice.token), json!({})).await.0,
        StatusCode::OK
    );
    since = step(since.clone(), 2, 0, json!([carol.user_id])).await;
    assert_eq!(
        s.post(&format!("{V3}/rooms/{room}/leave"), Some(&carol.token), json!({})).await.0,
        StatusCode::OK
    );
    // Alone, bob sees those who left, in the order they came.
    step(since.clone(), 1, 0, json!([alice.user_id, carol.user_id])).await;
}

/// A user in many rooms (enough that the server renders them over several threads) gets
/// every room whole in an initial sync: its own timeline, name, unread counts and member
/// moves, none mixed up with another room's; and the incremental sync after a message in
/// each of some rooms carries exactly those.
#[tokio::test]
async fn an_initial_sync_of_many_rooms_keeps_each_room_whole() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let mut rooms = Vec::new();
    for i in 0..80 {
        let room =
            create_room(&s, &alice, json!({"preset": "public_chat", "name": format!("Room {i}")})).await;
        assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
        for m in 0..=(i % 3) {
            send_text(&s, &alice, &room, &format!("t{i}-{m}"), &format!("room {i} message {m}")).await;
        }
        rooms.push(room);
    }
    let body = sync(&s, &bob, "").await;
    let joined = body["rooms"]["join"].as_object().unwrap();
    assert_eq!(joined.len(), rooms.len());
    for (i, room) in rooms.iter().enumerate() {
        let entry = &joined[room.as_str()];
        let expected: Vec<String> = (0..=(i % 3)).map(|m| format!("room {i} message {m}")).collect();
        assert_eq!(bodies(&entry["timeline"]["events"]), expected, "room {i}");
        // In the state section, or in the timeline when the room's whole history fits.
        let events = |section: &str| entry[section]["events"].as_array().cloned().unwrap_or_default();
        let name = events("state")
            .into_iter()
            .chain(events("timeline"))
            .find(|e| e["type"] == "m.room.name")
            .map(|e| e["content"]["name"].clone());
        assert_eq!(name, Some(json!(format!("Room {i}"))), "room {i}");
        assert_eq!(entry["unread_notifications"]["notification_count"], json!(i % 3 + 1), "room {i}");
        assert_eq!(entry["summary"]["m.joined_member_count"], json!(2), "room {i}");
    }
    // One more message in every fifth room: the incremental sync has those rooms only.
    let since = body["next_batch"].as_str().unwrap().to_owned();
    for (i, room) in rooms.iter().enumerate().filter(|(i, _)| i % 5 == 0) {
        send_text(&s, &alice, room, &format!("u{i}"), &format!("later in {i}")).await;
    }
    let next = sync(&s, &bob, &format!("since={since}")).await;
    let changed = next["rooms"]["join"].as_object().unwrap();
    assert_eq!(changed.len(), rooms.len() / 5);
    for (i, room) in rooms.iter().enumerate().filter(|(i, _)| i % 5 == 0) {
        assert_eq!(bodies(&changed[room.as_str()]["timeline"]["events"]), [format!("later in {i}")]);
    }
}
