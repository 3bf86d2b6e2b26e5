//! Relations and threads: `/relations`, `/threads` and bundled aggregations wherever events
//! are served.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error},
    rooms::{V3, create_room, join, send_text},
    sync::{list, sync},
};

const V1: &str = "/_matrix/client/v1";

async fn send(s: &TestServer, who: &Session, room: &str, txn: &str, kind: &str, content: Value) -> String {
    let (status, resp) =
        s.put(&format!("{V3}/rooms/{room}/send/{kind}/{txn}"), Some(&who.token), content).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp["event_id"].as_str().unwrap().to_owned()
}

fn edit(target: &str, body: &str) -> Value {
    json!({
        "msgtype": "m.text", "body": format!("* {body}"),
        "m.new_content": {"msgtype": "m.text", "body": body},
        "m.relates_to": {"rel_type": "m.replace", "event_id": target}
    })
}

fn reply_in_thread(root: &str, body: &str) -> Value {
    json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}})
}

#[tokio::test]
async fn edits_are_bundled_everywhere_events_are_served() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    let original = send_text(&s, &alice, &room, "o", "tpyo").await;
    send(&s, &alice, &room, "e1", "m.room.message", edit(&original, "typo?")).await;
    let latest = send(&s, &alice, &room, "e2", "m.room.message", edit(&original, "typo fixed")).await;
    // Someone else's "edit" does not replace alice's content.
    send(&s, &bob, &room, "e3", "m.room.message", edit(&original, "hijacked")).await;

    let check = |event: &Value| {
        let replace = &event["unsigned"]["m.relations"]["m.replace"];
        assert_eq!(replace["event_id"], latest, "{event}");
        assert_eq!(replace["content"]["m.new_content"]["body"], "typo fixed");
    };
    let (status, event) = s.get(&format!("{V3}/rooms/{room}/event/{original}"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
    check(&event);
    let (_, page) = s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=50"), Some(&bob.token)).await;
    check(page["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == original).unwrap());
    let (_, context) =
        s.get(&format!("{V3}/rooms/{room}/context/{original}?limit=2"), Some(&bob.token)).await;
    check(&context["event"]);
    let body = sync(&s, &bob, "").await;
    let timeline = list(&body["rooms"]["join"][&room]["timeline"]["events"]);
    check(timeline.iter().find(|e| e["event_id"] == original).unwrap());

    // Redacting the latest edit falls back to the previous one.
    let (status, _) =
        s.put(&format!("{V3}/rooms/{room}/redact/{latest}/r1"), Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, event) = s.get(&format!("{V3}/rooms/{room}/event/{original}"), Some(&bob.token)).await;
    assert_eq!(event["unsigned"]["m.relations"]["m.replace"]["content"]["m.new_content"]["body"], "typo?");
}

#[tokio::test]
async fn threads_summaries_relations_and_thread_list() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    let root = send_text(&s, &alice, &room, "root", "let's discuss").await;
    let other_root = send_text(&s, &bob, &room, "root2", "another topic").await;
    let mut replies = Vec::new();
    for i in 0..5 {
        let who = if i % 2 == 0 { &alice } else { &bob };
        replies.push(
            send(
                &s,
                who,
                &room,
                &format!("r{i}"),
                "m.room.message",
                reply_in_thread(&root, &format!("reply {i}")),
            )
            .await,
        );
    }
    send(&s, &bob, &room, "x1", "m.room.message", reply_in_thread(&other_root, "only bob")).await;
    let reference = send(&s, &bob, &room, "ref", "m.room.message", json!({"msgtype": "m.text", "body": "see above", "m.relates_to": {"rel_type": "m.reference", "event_id": root}})).await;

    // The thread summary on the root.
    let (_, event) = s.get(&format!("{V3}/rooms/{room}/event/{root}"), Some(&alice.token)).await;
    let thread = &event["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(thread["count"], 5, "{event}");
    assert_eq!(thread["latest_event"]["event_id"], replies[4]);
    assert_eq!(thread["current_user_participated"], true);
    assert_eq!(event["unsigned"]["m.relations"]["m.reference"]["chunk"][0]["event_id"], reference);
    // Alice never wrote in bob's thread.
    let (_, event) = s.get(&format!("{V3}/rooms/{room}/event/{other_root}"), Some(&alice.token)).await;
    assert_eq!(event["unsigned"]["m.relations"]["m.thread"]["current_user_participated"], false);

    // /relations pages the replies, newest first by default, without gaps or repeats.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!("{V1}/rooms/{room}/relations/{root}/m.thread?limit=2");
        if let Some(f) = &from {
            path.push_str(&format!("&from={f}"));
        }
        let (status, page) = s.get(&path, Some(&bob.token)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(
            page["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().to_owned()),
        );
        match page["next_batch"].as_str() {
            Some(next) => from = Some(next.to_owned()),
            None => break,
        }
    }
    let mut expected = replies.clone();
    expected.reverse();
    assert_eq!(seen, expected);
    // Forward, all relation types, filtered by event type.
    let (_, page) =
        s.get(&format!("{V1}/rooms/{room}/relations/{root}?dir=f&limit=10"), Some(&bob.token)).await;
    let ids: Vec<&str> =
        page["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 6);
    assert_eq!(ids[0], replies[0]);
    assert_eq!(ids[5], reference);
    let (_, page) =
        s.get(&format!("{V1}/rooms/{room}/relations/{root}/m.thread/m.reaction"), Some(&bob.token)).await;
    assert_eq!(page["chunk"], json!([]));
    // recurse follows relations of relations.
    let edit_of_reply =
        send(&s, &alice, &room, "er", "m.room.message", edit(&replies[0], "reply 0 edited")).await;
    let (_, page) =
        s.get(&format!("{V1}/rooms/{room}/relations/{root}?recurse=true&limit=50"), Some(&bob.token)).await;
    assert!(page["chunk"].as_array().unwrap().iter().any(|e| e["event_id"] == edit_of_reply), "{page}");
    assert!(page["recursion_depth"].is_u64());

    // /threads: by latest activity; participated filters.
    let (status, list_all) = s.get(&format!("{V1}/rooms/{room}/threads"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{list_all}");
    let roots: Vec<&str> =
        list_all["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(roots, [other_root.as_str(), root.as_str()]);
    let (_, mine) =
        s.get(&format!("{V1}/rooms/{room}/threads?include=participated"), Some(&alice.token)).await;
    let roots: Vec<&str> =
        mine["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(roots, [root.as_str()]);
    let (_, first) = s.get(&format!("{V1}/rooms/{room}/threads?limit=1"), Some(&alice.token)).await;
    let next = first["next_batch"].as_str().unwrap();
    let (_, second) =
        s.get(&format!("{V1}/rooms/{room}/threads?limit=1&from={next}"), Some(&alice.token)).await;
    assert_eq!(second["chunk"][0]["event_id"], root);

    // Strangers to a private room get nothing.
    let carol = s.register("carol", "pw-carol-1234").await;
    let private = create_room(&s, &alice, json!({})).await;
    let secret = send_text(&s, &alice, &private, "s", "secret").await;
    expect_error(
        s.get(&format!("{V1}/rooms/{private}/relations/{secret}"), Some(&carol.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get(&format!("{V1}/rooms/{private}/threads"), Some(&carol.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn bundles_show_only_what_the_viewer_may_see() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}]})).await;
    join(&s, &bob, &room).await;
    let root = send_text(&s, &alice, &room, "root", "root").await;
    let seen =
        send(&s, &alice, &room, "r1", "m.room.message", reply_in_thread(&root, "while bob was here")).await;
    let (status, _) = s.post(&format!("{V3}/rooms/{room}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    send(&s, &alice, &room, "r2", "m.room.message", reply_in_thread(&root, "after bob left")).await;
    // Bob may still read the root, but the thread's latest reply he may see is the first.
    let (status, event) = s.get(&format!("{V3}/rooms/{room}/event/{root}"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"], seen);

    // A "reply" in another room to this room's event is not a relation of it.
    let elsewhere = create_room(&s, &bob, json!({})).await;
    send(&s, &bob, &elsewhere, "x", "m.room.message", json!({"msgtype": "m.text", "body": "fake", "m.relates_to": {"rel_type": "m.reference", "event_id": root}})).await;
    let (_, event) = s.get(&format!("{V3}/rooms/{room}/event/{root}"), Some(&alice.token)).await;
    assert!(event["unsigned"]["m.relations"].get("m.reference").is_none(), "{event}");
}
