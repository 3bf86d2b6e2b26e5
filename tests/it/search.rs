//! Server-side search (`POST /search`): matching, order, pagination, context, state, groups,
//! filters, and that nothing is found that the searcher may not see.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error},
    rooms::{V3, create_room, join, send_text},
};

/// Search with a `room_events` criteria object; returns the `room_events` result.
async fn search(s: &TestServer, who: &Session, criteria: Value) -> Value {
    search_page(s, who, criteria, None).await
}

async fn search_page(s: &TestServer, who: &Session, criteria: Value, next_batch: Option<&str>) -> Value {
    let path = match next_batch {
        Some(token) => format!("{V3}/search?next_batch={token}"),
        None => format!("{V3}/search"),
    };
    let (status, body) =
        s.post(&path, Some(&who.token), json!({"search_categories": {"room_events": criteria}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["search_categories"]["room_events"].clone()
}

/// The bodies of the results, in order.
fn bodies(room_events: &Value) -> Vec<String> {
    results(room_events).iter().map(|r| r["result"]["content"]["body"].as_str().unwrap().to_owned()).collect()
}

fn results(room_events: &Value) -> Vec<Value> {
    room_events["results"].as_array().cloned().unwrap_or_default()
}

fn event_ids(room_events: &Value) -> Vec<String> {
    results(room_events).iter().map(|r| r["result"]["event_id"].as_str().unwrap().to_owned()).collect()
}

async fn terms(s: &TestServer, who: &Session, term: &str) -> Vec<String> {
    bodies(&search(s, who, json!({"search_term": term, "order_by": "recent"})).await)
}

#[tokio::test]
async fn matches_words_all_of_them_and_the_start_of_the_last() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({"name": "Zoo Keepers", "topic": "Feeding the Animals"})).await;
    send_text(&s, &alice, &room, "1", "The quick brown fox").await;
    send_text(&s, &alice, &room, "2", "A lazy dog sleeps").await;
    send_text(&s, &alice, &room, "3", "quick-thinking, QUICK!").await;

    assert_eq!(terms(&s, &alice, "quick").await, ["quick-thinking, QUICK!", "The quick brown fox"]);
    assert_eq!(terms(&s, &alice, "FOX").await, ["The quick brown fox"]);
    assert_eq!(terms(&s, &alice, "brown quick").await, ["The quick brown fox"], "AND, any order");
    assert!(terms(&s, &alice, "quick dog").await.is_empty(), "every word must match");
    assert!(terms(&s, &alice, "cat").await.is_empty());
    assert!(terms(&s, &alice, "uick").await.is_empty(), "words match from their start");
    // The last word also matches as a prefix, as typed.
    assert_eq!(terms(&s, &alice, "lazy sle").await, ["A lazy dog sleeps"]);
    assert!(terms(&s, &alice, "sle lazy").await.is_empty(), "only the last word is a prefix");

    let found = search(&s, &alice, json!({"search_term": "thinking qui"})).await;
    assert_eq!(found["count"], 1);
    assert_eq!(found["highlights"], json!(["quick", "thinking"]));
    let result = &results(&found)[0];
    assert_eq!(result["result"]["room_id"], room);
    assert_eq!(result["result"]["sender"], alice.user_id);
    assert_eq!(result["result"]["type"], "m.room.message");
    assert!(result["rank"].as_f64().unwrap() > 0.0, "{result}");

    // Room names and topics are searched too, under their own keys.
    let names = search(&s, &alice, json!({"search_term": "keepers"})).await;
    assert_eq!(results(&names)[0]["result"]["content"]["name"], "Zoo Keepers");
    let topics = search(&s, &alice, json!({"search_term": "animals"})).await;
    assert_eq!(results(&topics)[0]["result"]["type"], "m.room.topic");
    let only_bodies = search(&s, &alice, json!({"search_term": "animals", "keys": ["content.body"]})).await;
    assert_eq!(only_bodies["count"], 0);
    let only_topics = search(&s, &alice, json!({"search_term": "the", "keys": ["content.topic"]})).await;
    assert_eq!(only_topics["count"], 1, "{only_topics}");

    // Nothing to search for finds nothing; the empty lists are there for clients that
    // iterate them without checking.
    for term in ["", "  ?! ", "absent"] {
        let none = search(&s, &alice, json!({"search_term": term})).await;
        assert_eq!(none, json!({"count": 0, "results": [], "highlights": []}), "{term:?}");
    }
}

#[tokio::test]
async fn rank_orders_by_relevance_and_recent_by_time() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({})).await;
    send_text(&s, &alice, &room, "1", "apple").await;
    send_text(&s, &alice, &room, "2", "we talked about apple and pears and plums for an hour").await;
    send_text(&s, &alice, &room, "3", "apple apple").await;
    send_text(&s, &alice, &room, "4", "apple").await;

    let ranked = search(&s, &alice, json!({"search_term": "apple"})).await;
    // Equal ranks (the two plain "apple") fall back to the most recent first.
    assert_eq!(
        event_ids(&ranked),
        event_ids(&search(&s, &alice, json!({"search_term": "apple", "order_by": "rank"})).await)
    );
    let ranks: Vec<f64> = results(&ranked).iter().map(|r| r["rank"].as_f64().unwrap()).collect();
    assert!(ranks.windows(2).all(|w| w[0] >= w[1]), "{ranks:?}");
    assert_eq!(bodies(&ranked)[0], "apple apple");
    assert_eq!(bodies(&ranked)[3], "we talked about apple and pears and plums for an hour");
    let plain: Vec<_> = results(&ranked)[1..3].iter().map(|r| r["result"]["event_id"].clone()).collect();
    let recent = search(&s, &alice, json!({"search_term": "apple", "order_by": "recent"})).await;
    assert_eq!(
        bodies(&recent),
        ["apple", "apple apple", "we talked about apple and pears and plums for an hour", "apple"]
    );
    assert_eq!(plain[0], results(&recent)[0]["result"]["event_id"], "rank ties go to the newest");
}

/// Follow `next_batch` to the end; every page holds at most `limit` results.
async fn all_pages(s: &TestServer, who: &Session, criteria: Value, limit: usize) -> (Vec<String>, usize) {
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = search_page(s, who, criteria.clone(), token.as_deref()).await;
        pages += 1;
        let ids = event_ids(&page);
        assert!(ids.len() <= limit, "{page}");
        seen.extend(ids);
        match page["next_batch"].as_str() {
            Some(next) => token = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 50, "pagination does not end");
    }
    (seen, pages)
}

#[tokio::test]
async fn next_batch_pages_through_every_result_once() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let rooms = [create_room(&s, &alice, json!({})).await, create_room(&s, &alice, json!({})).await];
    let mut sent = BTreeSet::new();
    for i in 0..23 {
        // Lengths vary so ranks differ; some repeat so ties must break by recency.
        let text = format!("report {}", "word ".repeat(i % 5));
        sent.insert(send_text(&s, &alice, &rooms[i % 2], &format!("t{i}"), &text).await);
    }
    send_text(&s, &alice, &rooms[0], "other", "unrelated").await;

    for order in ["rank", "recent"] {
        let criteria = json!({"search_term": "report", "order_by": order, "filter": {"limit": 5}});
        let first = search(&s, &alice, criteria.clone()).await;
        assert_eq!(first["count"], 23);
        assert!(first["next_batch"].is_string());
        let (seen, pages) = all_pages(&s, &alice, criteria, 5).await;
        assert_eq!(pages, 5, "{order}");
        assert_eq!(seen.len(), 23, "{order}: duplicates or gaps");
        assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), sent, "{order}");
    }

    // A message sent between pages neither repeats nor hides older results.
    let criteria = json!({"search_term": "report", "order_by": "recent", "filter": {"limit": 10}});
    let first = search(&s, &alice, criteria.clone()).await;
    send_text(&s, &alice, &rooms[1], "late", "late report").await;
    let mut seen = event_ids(&first);
    let mut token = first["next_batch"].as_str().map(str::to_owned);
    while let Some(next) = token {
        let page = search_page(&s, &alice, criteria.clone(), Some(&next)).await;
        seen.extend(event_ids(&page));
        token = page["next_batch"].as_str().map(str::to_owned);
    }
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), sent);
    assert_eq!(seen.len(), 23);

    // Tokens are checked, not trusted.
    let path = format!("{V3}/search?next_batch=garbage");
    let body = json!({"search_categories": {"room_events": {"search_term": "report"}}});
    expect_error(s.post(&path, Some(&alice.token), body).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let rank_token = search(&s, &alice, json!({"search_term": "report", "filter": {"limit": 1}})).await;
    let path = format!("{V3}/search?next_batch={}", rank_token["next_batch"].as_str().unwrap());
    let body = json!({"search_categories": {"room_events": {"search_term": "report", "order_by": "recent"}}});
    expect_error(s.post(&path, Some(&alice.token), body).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
}

#[tokio::test]
async fn event_context_and_profiles() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    let a = send_text(&s, &alice, &room, "a", "one").await;
    let b = send_text(&s, &bob, &room, "b", "two").await;
    send_text(&s, &alice, &room, "c", "needle").await;
    let d = send_text(&s, &bob, &room, "d", "four").await;
    send_text(&s, &alice, &room, "e", "five").await;

    let found = search(
        &s,
        &alice,
        json!({"search_term": "needle", "event_context": {"before_limit": 2, "after_limit": 1, "include_profile": true}}),
    )
    .await;
    let context = &results(&found)[0]["context"];
    let ids = |key: &str| -> Vec<Value> {
        context[key].as_array().unwrap().iter().map(|e| e["event_id"].clone()).collect()
    };
    assert_eq!(ids("events_before"), [json!(b), json!(a)], "nearest first: {context}");
    assert_eq!(ids("events_after"), [json!(d)]);
    assert!(context["start"].is_string() && context["end"].is_string(), "{context}");
    assert_ne!(context["start"], context["end"]);
    assert_eq!(context["profile_info"][&alice.user_id]["displayname"], "alice");
    assert_eq!(context["profile_info"][&bob.user_id]["displayname"], "bob");

    let none = search(
        &s,
        &alice,
        json!({"search_term": "needle", "event_context": {"before_limit": 0, "after_limit": 0}}),
    )
    .await;
    let context = &results(&none)[0]["context"];
    assert!(context.get("events_before").is_none() && context.get("profile_info").is_none(), "{context}");
}

#[tokio::test]
async fn include_state_and_groupings() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let first = create_room(&s, &alice, json!({"preset": "public_chat", "name": "First"})).await;
    let second = create_room(&s, &alice, json!({"preset": "public_chat", "name": "Second"})).await;
    assert_eq!(join(&s, &bob, &first).await.0, StatusCode::OK);
    for i in 0..3 {
        send_text(&s, &alice, &second, &format!("s{i}"), "budget second").await;
    }
    let in_first = [
        send_text(&s, &alice, &first, "f1", "budget first").await,
        send_text(&s, &bob, &first, "f2", "budget first").await,
    ];

    let found = search(
        &s,
        &alice,
        json!({
            "search_term": "budget",
            "order_by": "recent",
            "include_state": true,
            "filter": {"limit": 4},
            "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]},
        }),
    )
    .await;
    assert_eq!(found["count"], 5);
    let state = &found["state"];
    assert_eq!(state.as_object().unwrap().len(), 2, "{state}");
    let name_of = |room: &str| {
        state[room].as_array().unwrap().iter().find(|e| e["type"] == "m.room.name").unwrap()["content"]["name"]
            .clone()
    };
    assert_eq!((name_of(&first), name_of(&second)), (json!("First"), json!("Second")));

    let by_room = &found["groups"]["room_id"];
    assert_eq!(by_room[&first]["results"], json!([in_first[1], in_first[0]]));
    assert_eq!(by_room[&first]["order"], 1, "the newest result is in the first room");
    assert_eq!(by_room[&second]["order"], 2);
    assert_eq!(by_room[&second]["results"].as_array().unwrap().len(), 2);
    assert!(by_room[&first].get("next_batch").is_none(), "nothing more in the first room");
    let by_sender = &found["groups"]["sender"];
    assert_eq!(by_sender[&bob.user_id]["results"], json!([in_first[1]]));
    assert_eq!(by_sender[&alice.user_id]["results"].as_array().unwrap().len(), 3);

    // The second room's group token pages on within that room only.
    let token = by_room[&second]["next_batch"].as_str().expect("more in the second room");
    let more = search_page(
        &s,
        &alice,
        json!({"search_term": "budget", "order_by": "recent", "filter": {"limit": 4}}),
        Some(token),
    )
    .await;
    assert_eq!(bodies(&more), ["budget second"]);
    assert!(more.get("next_batch").is_none(), "{more}");
}

#[tokio::test]
async fn filters_by_room_sender_and_type() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let one = create_room(&s, &alice, json!({"preset": "public_chat", "name": "Launch planning"})).await;
    let two = create_room(&s, &alice, json!({})).await;
    assert_eq!(join(&s, &bob, &one).await.0, StatusCode::OK);
    send_text(&s, &alice, &one, "1", "launch alice one").await;
    send_text(&s, &bob, &one, "2", "launch bob one").await;
    send_text(&s, &alice, &two, "3", "launch alice two").await;

    let find = |filter: Value| {
        let alice = alice.clone();
        let s = &s;
        async move {
            let mut found = bodies(
                &search(
                    s,
                    &alice,
                    json!({"search_term": "launch", "filter": filter, "keys": ["content.body"]}),
                )
                .await,
            );
            found.sort();
            found
        }
    };
    assert_eq!(find(json!({"rooms": [one]})).await, ["launch alice one", "launch bob one"]);
    assert_eq!(find(json!({"not_rooms": [one]})).await, ["launch alice two"]);
    assert_eq!(find(json!({"senders": [bob.user_id]})).await, ["launch bob one"]);
    assert_eq!(find(json!({"not_senders": [bob.user_id], "rooms": [one]})).await, ["launch alice one"]);
    assert!(find(json!({"types": ["m.room.name"]})).await.is_empty());
    assert_eq!(find(json!({"types": ["m.room.*"]})).await.len(), 3);
    assert!(find(json!({"not_types": ["m.room.message"]})).await.is_empty());

    let names =
        search(&s, &alice, json!({"search_term": "launch", "filter": {"types": ["m.room.name"]}})).await;
    assert_eq!(names["count"], 1);
    assert_eq!(results(&names)[0]["result"]["content"]["name"], "Launch planning");

    // Unknown keys match nothing and do not fail the request (as Synapse).
    let other = search(&s, &alice, json!({"search_term": "launch", "keys": ["content.other"]})).await;
    assert_eq!(other["count"], 0);
    let mixed =
        search(&s, &alice, json!({"search_term": "launch", "keys": ["content.other", "content.name"]})).await;
    assert_eq!(mixed["count"], 1);
    expect_error(
        s.post(&format!("{V3}/search"), None, json!({"search_categories": {}})).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    // No category asked, no results.
    let (status, body) =
        s.post(&format!("{V3}/search"), Some(&alice.token), json!({"search_categories": {}})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"search_categories": {}})));
}

#[tokio::test]
async fn only_rooms_joined_now_and_only_visible_history() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let open = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    send_text(&s, &alice, &open, "1", "quarterly numbers").await;
    // Not a member: nothing, not even a count.
    let none = search(&s, &bob, json!({"search_term": "quarterly"})).await;
    assert_eq!(none["count"], 0, "{none}");
    // Joined: shared history is visible.
    assert_eq!(join(&s, &bob, &open).await.0, StatusCode::OK);
    assert_eq!(terms(&s, &bob, "quarterly").await, ["quarterly numbers"]);
    // Left: gone again.
    s.post(&format!("{V3}/rooms/{open}/leave"), Some(&bob.token), json!({})).await;
    assert!(terms(&s, &bob, "quarterly").await.is_empty());

    // History visible to joined members only: what was said before Bob joined stays hidden.
    let closed = create_room(
        &s,
        &alice,
        json!({"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}
        ]}),
    )
    .await;
    send_text(&s, &alice, &closed, "2", "secret plan").await;
    assert_eq!(join(&s, &bob, &closed).await.0, StatusCode::OK);
    send_text(&s, &alice, &closed, "3", "secret party").await;
    let found =
        search(&s, &bob, json!({"search_term": "secret", "event_context": {"before_limit": 5}})).await;
    assert_eq!(bodies(&found), ["secret party"]);
    assert_eq!(found["count"], 1, "the hidden match is not counted: {found}");
    assert_eq!(found["highlights"], json!(["secret"]));
    let context = results(&found)[0]["context"].clone();
    let before = context["events_before"].as_array().unwrap();
    assert!(!before.iter().any(|e| e["content"]["body"] == "secret plan"), "context hides it too: {context}");
    assert_eq!(before[0]["sender"], bob.user_id, "Bob's own join is the nearest event he may see");
    // Alice, there all along, finds both.
    assert_eq!(terms(&s, &alice, "secret").await, ["secret party", "secret plan"]);
}

#[tokio::test]
async fn redacted_events_are_no_longer_found() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({})).await;
    let gone = send_text(&s, &alice, &room, "1", "classified briefing").await;
    send_text(&s, &alice, &room, "2", "public briefing").await;
    assert_eq!(terms(&s, &alice, "briefing").await.len(), 2);

    let (status, body) = s
        .put(&format!("{V3}/rooms/{room}/redact/{gone}/r1"), Some(&alice.token), json!({"reason": "oops"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(terms(&s, &alice, "classified").await.is_empty());
    assert_eq!(terms(&s, &alice, "briefing").await, ["public briefing"]);
    assert_eq!(search(&s, &alice, json!({"search_term": "classified"})).await["count"], 0);
}

#[tokio::test]
async fn index_is_rebuilt_when_missing() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({})).await;
    send_text(&s, &alice, &room, "1", "persistent memory").await;
    let redacted = send_text(&s, &alice, &room, "2", "persistent mistake").await;
    s.put(&format!("{V3}/rooms/{room}/redact/{redacted}/r"), Some(&alice.token), json!({})).await;
    let config = s.dir.path().join("db");
    let dir = s.stop().await;

    // An index lost (or written by an older build): clear it and forget its version.
    {
        use conduit::storage::{
            Direction, WriteBatch,
            kv::KeyRange,
            tables::{META, SEARCH_EVENTS, SEARCH_INDEX_VERSION_KEY, SEARCH_TERMS},
        };
        let store = conduit::storage::open_rocksdb(&config).expect("open");
        let mut batch = WriteBatch::new();
        let terms = SEARCH_TERMS.open(&store);
        for row in terms.scan(KeyRange::all(), Direction::Forward).unwrap() {
            terms.delete(&mut batch, &row.unwrap().0);
        }
        let events = SEARCH_EVENTS.open(&store);
        for row in events.scan(KeyRange::all(), Direction::Forward).unwrap() {
            events.delete(&mut batch, &row.unwrap().0);
        }
        META.open(&store).delete(&mut batch, &SEARCH_INDEX_VERSION_KEY.to_owned());
        store.write(batch).unwrap();
    }

    let config = crate::harness::test_config(dir.path());
    let s = TestServer::boot(config, dir).await;
    let alice = s.login("alice", "pw-alice-123", None).await;
    assert_eq!(terms(&s, &alice, "persistent").await, ["persistent memory"], "rebuilt, redaction respected");
    // And kept up to date afterwards.
    send_text(&s, &alice, &room, "3", "persistent again").await;
    assert_eq!(terms(&s, &alice, "persistent").await, ["persistent again", "persistent memory"]);
}
