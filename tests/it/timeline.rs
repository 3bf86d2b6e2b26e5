//! History reads: `/messages`, `/context` and `/timestamp_to_event`, with history
//! visibility applied.

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    harness::{TestServer, expect_error},
    rooms::{V3, create_room, join, send_text},
    sync::{bodies, list, sync, urlencode},
};

#[tokio::test]
async fn messages_page_both_ways_with_filters_and_lazy_members() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    join(&s, &bob, &room).await;
    for i in 0..6 {
        let who = if i % 2 == 0 { &alice } else { &bob };
        send_text(&s, who, &room, &format!("t{i}"), &format!("m{i}")).await;
    }
    // Forward from the start, in pages.
    let (status, page) = s.get(&format!("{V3}/rooms/{room}/messages?dir=f&limit=3"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["chunk"][0]["type"], "m.room.create");
    let filter = urlencode(&json!({"types": ["m.room.message"], "lazy_load_members": true}).to_string());
    let (_, page) =
        s.get(&format!("{V3}/rooms/{room}/messages?dir=f&limit=4&filter={filter}"), Some(&bob.token)).await;
    assert_eq!(bodies(&page["chunk"]), ["m0", "m1", "m2", "m3"]);
    let members: Vec<String> =
        list(&page["state"]).iter().map(|e| e["state_key"].as_str().unwrap().to_owned()).collect();
    assert_eq!(members.len(), 2, "{members:?}");
    let end = page["end"].as_str().unwrap();
    let (_, rest) = s
        .get(
            &format!("{V3}/rooms/{room}/messages?dir=f&from={end}&limit=4&filter={filter}"),
            Some(&bob.token),
        )
        .await;
    assert_eq!(bodies(&rest["chunk"]), ["m4", "m5"]);
    // senders filter.
    let only_bob =
        urlencode(&json!({"senders": ["@bob:localhost"], "types": ["m.room.message"]}).to_string());
    let (_, page) =
        s.get(&format!("{V3}/rooms/{room}/messages?dir=b&filter={only_bob}"), Some(&bob.token)).await;
    assert_eq!(bodies(&page["chunk"]), ["m5", "m3", "m1"]);
    // Bad input.
    let (status, _) = s.get(&format!("{V3}/rooms/{room}/messages?dir=x"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    expect_error(
        s.get(&format!("{V3}/rooms/{room}/messages?dir=b&from=zzz"), Some(&bob.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn context_and_timestamp_lookup() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({})).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        s.clock.advance_ms(1_000);
        ids.push(send_text(&s, &alice, &room, &format!("t{i}"), &format!("m{i}")).await);
    }
    let (status, ctx) =
        s.get(&format!("{V3}/rooms/{room}/context/{}?limit=4", ids[3]), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{ctx}");
    assert_eq!(ctx["event"]["content"]["body"], "m3");
    assert_eq!(bodies(&ctx["events_before"]), ["m2", "m1"]);
    assert_eq!(bodies(&ctx["events_after"]), ["m4", "m5"]);
    assert!(list(&ctx["state"]).iter().any(|e| e["type"] == "m.room.create"));
    // The tokens continue where the context ends.
    let (_, older) = s
        .get(
            &format!("{V3}/rooms/{room}/messages?dir=b&from={}&limit=1", ctx["start"].as_str().unwrap()),
            Some(&alice.token),
        )
        .await;
    assert_eq!(bodies(&older["chunk"]), ["m0"]);
    let (_, newer) = s
        .get(
            &format!("{V3}/rooms/{room}/messages?dir=f&from={}&limit=5", ctx["end"].as_str().unwrap()),
            Some(&alice.token),
        )
        .await;
    assert_eq!(bodies(&newer["chunk"]), ["m6"]);
    expect_error(
        s.get(&format!("{V3}/rooms/{room}/context/$missing"), Some(&alice.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Timestamps: events were sent one second apart.
    let (_, at) = s.get(&format!("{V3}/rooms/{room}/event/{}", ids[2]), Some(&alice.token)).await;
    let ts = at["origin_server_ts"].as_u64().unwrap();
    let lookup =
        |dir: &str, ts: u64| format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event?dir={dir}&ts={ts}");
    let (status, found) = s.get(&lookup("f", ts - 500), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["event_id"], ids[2]);
    assert_eq!(found["origin_server_ts"], ts);
    let (_, found) = s.get(&lookup("b", ts + 500), Some(&alice.token)).await;
    assert_eq!(found["event_id"], ids[2]);
    expect_error(
        s.get(&lookup("f", ts + 1_000_000), Some(&alice.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn history_visibility_applies_to_every_read() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(
        &s,
        &alice,
        json!({"preset": "public_chat", "initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}]}),
    )
    .await;
    let before = send_text(&s, &alice, &room, "b", "before bob").await;
    let (status, _) = s
        .put(&format!("{V3}/rooms/{room}/send/m.room.message/th"), Some(&alice.token), json!({"msgtype": "m.text", "body": "thread before", "m.relates_to": {"rel_type": "m.thread", "event_id": before}}))
        .await;
    assert_eq!(status, StatusCode::OK);
    join(&s, &bob, &room).await;
    send_text(&s, &alice, &room, "a", "after bob").await;

    // sync
    let body = sync(&s, &bob, "").await;
    let seen = bodies(&body["rooms"]["join"][&room]["timeline"]["events"]);
    assert_eq!(seen, ["after bob"]);
    // messages
    let (_, page) = s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=50"), Some(&bob.token)).await;
    assert_eq!(bodies(&page["chunk"]), ["after bob"]);
    // context
    expect_error(
        s.get(&format!("{V3}/rooms/{room}/context/{before}"), Some(&bob.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // relations
    expect_error(
        s.get(&format!("/_matrix/client/v1/rooms/{room}/relations/{before}"), Some(&bob.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // A stranger gets nothing from messages.
    expect_error(
        s.get(&format!("{V3}/rooms/{room}/messages?dir=b"), Some(&carol.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn forward_pages_say_where_to_continue() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({})).await;
    send_text(&s, &alice, &room, "t1", "one").await;
    // From the start (no `from`), the whole room in one page: still an `end`, since events
    // may come after it.
    let (status, page) =
        s.get(&format!("{V3}/rooms/{room}/messages?dir=f&limit=100"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["start"], "s0");
    assert_eq!(bodies(&page["chunk"]), ["one"]);
    let end = page["end"].as_str().unwrap_or_else(|| panic!("no end: {page}")).to_owned();
    // Nothing newer yet: an empty page without `end`.
    let (_, empty) =
        s.get(&format!("{V3}/rooms/{room}/messages?dir=f&from={end}&limit=100"), Some(&alice.token)).await;
    assert!(list(&empty["chunk"]).is_empty() && empty.get("end").is_none(), "{empty}");
    assert_eq!(empty["start"], end.as_str());
    // Then a newer event is found from the same token.
    send_text(&s, &alice, &room, "t2", "two").await;
    let (_, newer) =
        s.get(&format!("{V3}/rooms/{room}/messages?dir=f&from={end}&limit=100"), Some(&alice.token)).await;
    assert_eq!(bodies(&newer["chunk"]), ["two"]);

    // Backward from the present (no `from`): the room's start ends the paging, no `end`.
    let (_, back) = s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=100"), Some(&alice.token)).await;
    assert_eq!(bodies(&back["chunk"]), ["two", "one"]);
    assert_eq!(list(&back["chunk"]).last().unwrap()["type"], "m.room.create");
    assert!(back.get("end").is_none(), "{back}");
    // A page that stops short of the start carries `end`.
    let (_, short) = s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=1"), Some(&alice.token)).await;
    assert_eq!(bodies(&short["chunk"]), ["two"]);
    assert!(short["end"].is_string(), "{short}");
}
