//! Delayed events (MSC4140) through HTTP: scheduling with `?org.matrix.msc4140.delay` on
//! `PUT /send` and `PUT /state`, the timer (driven by the manual clock, and surviving a
//! restart), listing, the management actions with and without a token, the configured
//! limits, and cancellation by another user's state.
//!
//! A test waits for the timer to send an event with a long-polling `/sync`. To show an event
//! was *not* sent at a given time, it schedules a second event due by then (a sentinel):
//! the timer sends everything due in one pass, so once the sentinel arrives, anything not
//! sent with it was not due.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error, password_auth, test_config},
    rooms::{V3, create_room, join},
    sync::{list, sync, token},
};

const DELAYED: &str = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events";
const CALL_MEMBER: &str = "org.matrix.msc3401.call.member";
const HOUR_MS: u64 = 3_600_000;

/// A server with delayed events on: at most an hour of delay.
async fn server() -> TestServer {
    server_with(|_| {}).await
}

async fn server_with(adjust: impl FnOnce(&mut conduit::config::Config)) -> TestServer {
    TestServer::start_with(|c| {
        c.max_event_delay_duration = Some(conduit::config::parse_duration("1h").unwrap());
        adjust(c);
    })
    .await
}

/// A room of `who`'s, with a sync token taken after it was made.
async fn room_of(s: &TestServer, who: &Session) -> (String, String) {
    let room = create_room(s, who, json!({"preset": "public_chat"})).await;
    (room.clone(), token(s, who).await)
}

fn state_path(room: &str, kind: &str, key: &str, delay: &str) -> String {
    format!("{V3}/rooms/{room}/state/{kind}/{key}?org.matrix.msc4140.delay={delay}")
}

/// Schedule a delayed state event; panics unless it is accepted. Returns the delay ID.
async fn delay_state(
    s: &TestServer,
    who: &Session,
    room: &str,
    key: &str,
    content: Value,
    delay: u64,
) -> String {
    let (status, body) =
        s.put(&state_path(room, CALL_MEMBER, key, &delay.to_string()), Some(&who.token), content).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("event_id").is_none(), "{body}");
    body["delay_id"].as_str().expect("delay_id").to_owned()
}

/// Schedule a delayed text message; panics unless it is accepted. Returns the delay ID.
async fn delay_text(s: &TestServer, who: &Session, room: &str, txn: &str, text: &str, delay: u64) -> String {
    let (status, body) = s
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/{txn}?org.matrix.msc4140.delay={delay}"),
            Some(&who.token),
            json!({"msgtype": "m.text", "body": text}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["delay_id"].as_str().expect("delay_id").to_owned()
}

/// Long-poll `/sync` from `since` until an event of `room` that `pred` accepts arrives;
/// returns it and the next token. Fails if none arrives within about half a minute.
async fn wait_for(
    s: &TestServer,
    who: &Session,
    room: &str,
    since: &str,
    pred: impl Fn(&Value) -> bool,
) -> (Value, String) {
    let mut since = since.to_owned();
    for _ in 0..6 {
        let body = sync(s, who, &format!("since={since}&timeout=5000")).await;
        since = body["next_batch"].as_str().unwrap().to_owned();
        if let Some(event) = list(&body["rooms"]["join"][room]["timeline"]["events"]).into_iter().find(&pred)
        {
            return (event, since);
        }
    }
    panic!("the awaited event did not arrive in {room}");
}

fn text_is(text: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["type"] == "m.room.message" && e["content"]["body"] == text
}

fn state_is(key: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["type"] == CALL_MEMBER && e["state_key"] == key
}

/// The content of the call member state `key`, if set.
async fn call_member(s: &TestServer, who: &Session, room: &str, key: &str) -> Option<Value> {
    let (status, body) =
        s.get(&format!("{V3}/rooms/{room}/state/{CALL_MEMBER}/{key}"), Some(&who.token)).await;
    match status {
        StatusCode::OK => Some(body),
        StatusCode::NOT_FOUND => None,
        other => panic!("{other}: {body}"),
    }
}

/// The delay IDs of `who`'s waiting delayed events, in the listed order.
async fn listed(s: &TestServer, who: &Session) -> Vec<String> {
    let (status, body) = s.get(DELAYED, Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    list(&body["delayed_events"]).iter().map(|e| e["delay_id"].as_str().unwrap().to_owned()).collect()
}

async fn act(s: &TestServer, delay_id: &str, action: &str) -> (StatusCode, Value) {
    s.post(&format!("{DELAYED}/{delay_id}/{action}"), None, json!({})).await
}

#[tokio::test]
async fn a_delayed_state_event_is_sent_when_due_as_its_owner() {
    let s = server().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let (room, since) = room_of(&s, &alice).await;
    join(&s, &bob, &room).await;
    let bob_since = token(&s, &bob).await;

    let key = "_@alice:localhost_DEV";
    let delay_id = delay_state(&s, &alice, &room, key, json!({"left": true}), 10_000).await;
    assert_eq!(call_member(&s, &alice, &room, key).await, None, "sent before its time");

    // The owner's list shows it with the fields Synapse sends (old and new names).
    let (status, body) = s.get(DELAYED, Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    let entry = &body["delayed_events"][0];
    assert_eq!(entry["delay_id"], delay_id.as_str());
    assert_eq!(entry["room_id"], room.as_str());
    assert_eq!((entry["type"].as_str(), entry["state_key"].as_str()), (Some(CALL_MEMBER), Some(key)));
    assert_eq!((entry["delay"].as_u64(), entry["delay_ms"].as_u64()), (Some(10_000), Some(10_000)));
    let since_ts = entry["running_since"].as_u64().unwrap();
    assert_eq!(entry["delayed_since_ts"].as_u64(), Some(since_ts));
    assert_eq!(since_ts, conduit::service::clock::Clock::now_ms(s.clock.as_ref()));
    assert_eq!(entry["content"], json!({"left": true}));
    // So does the single lookup; nobody else sees it.
    let (status, one) = s.get(&format!("{DELAYED}/{delay_id}"), Some(&alice.token)).await;
    assert_eq!(
        (status, &one["delay_id"], &one["delay_ms"]),
        (StatusCode::OK, &json!(delay_id), &json!(10_000))
    );
    expect_error(
        s.get(&format!("{DELAYED}/{delay_id}"), Some(&bob.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert!(listed(&s, &bob).await.is_empty());

    s.clock.advance_ms(10_000);
    let (event, _) = wait_for(&s, &alice, &room, &since, state_is(key)).await;
    assert_eq!(event["sender"], alice.user_id.as_str());
    assert_eq!(event["content"], json!({"left": true}));
    // The owner sees the delay ID in `unsigned`; another member does not.
    assert_eq!(event["unsigned"]["org.matrix.msc4140.delay_id"], delay_id.as_str());
    let (seen_by_bob, _) = wait_for(&s, &bob, &room, &bob_since, state_is(key)).await;
    assert!(seen_by_bob["unsigned"].get("org.matrix.msc4140.delay_id").is_none(), "{seen_by_bob}");
    assert_eq!(call_member(&s, &alice, &room, key).await, Some(json!({"left": true})));
    assert!(listed(&s, &alice).await.is_empty());
    // Sent and gone: every action on it is now a 404.
    for action in ["cancel", "restart", "send"] {
        expect_error(act(&s, &delay_id, action).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
}

#[tokio::test]
async fn restart_postpones_and_send_sends_now() {
    let s = server().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (room, since) = room_of(&s, &alice).await;

    let heartbeat = delay_state(&s, &alice, &room, "hb", json!({"gone": true}), 10_000).await;
    s.clock.advance_ms(6_000);
    // Unauthenticated, as lk-jwt-service calls it: due 10 s from now (t = 16 s).
    assert_eq!(act(&s, &heartbeat, "restart").await, (StatusCode::OK, json!({})));
    let sentinel = delay_text(&s, &alice, &room, "sentinel", "t=11", 5_000).await;
    s.clock.advance_ms(6_000);
    // t = 12 s: the sentinel went out; the restarted event, due at 16 s, did not.
    let (_, since) = wait_for(&s, &alice, &room, &since, text_is("t=11")).await;
    assert_eq!(call_member(&s, &alice, &room, "hb").await, None, "restart did not postpone it");
    assert_eq!(listed(&s, &alice).await, vec![heartbeat.clone()]);
    expect_error(act(&s, &sentinel, "restart").await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    s.clock.advance_ms(4_000);
    let (_, since) = wait_for(&s, &alice, &room, &since, state_is("hb")).await;

    // `send` sends at once, whatever its delay; the authenticated form works as well.
    let later = delay_text(&s, &alice, &room, "later", "right away", HOUR_MS).await;
    assert_eq!(act(&s, &later, "send").await, (StatusCode::OK, json!({})));
    let (event, since) = wait_for(&s, &alice, &room, &since, text_is("right away")).await;
    assert_eq!(event["unsigned"]["org.matrix.msc4140.delay_id"], later.as_str());
    expect_error(act(&s, &later, "send").await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let again = delay_text(&s, &alice, &room, "again", "by body", HOUR_MS).await;
    let (status, body) =
        s.post(&format!("{DELAYED}/{again}"), Some(&alice.token), json!({"action": "send"})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    wait_for(&s, &alice, &room, &since, text_is("by body")).await;
    assert!(listed(&s, &alice).await.is_empty());
}

#[tokio::test]
async fn cancel_means_never_sent() {
    let s = server().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (room, since) = room_of(&s, &alice).await;
    let by_path = delay_state(&s, &alice, &room, "a", json!({"n": 1}), 10_000).await;
    let by_body = delay_state(&s, &alice, &room, "b", json!({"n": 2}), 10_000).await;
    delay_text(&s, &alice, &room, "sentinel", "t=10", 10_000).await;
    assert_eq!(act(&s, &by_path, "cancel").await, (StatusCode::OK, json!({})));
    let (status, body) =
        s.post(&format!("{DELAYED}/{by_body}"), Some(&alice.token), json!({"action": "cancel"})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    assert_eq!(listed(&s, &alice).await.len(), 1, "only the sentinel is left");
    s.clock.advance_ms(10_000);
    wait_for(&s, &alice, &room, &since, text_is("t=10")).await;
    assert_eq!(call_member(&s, &alice, &room, "a").await, None);
    assert_eq!(call_member(&s, &alice, &room, "b").await, None);
    for id in [&by_path, &by_body] {
        expect_error(act(&s, id, "cancel").await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
}

#[tokio::test]
async fn management_endpoints_check_their_callers_and_input() {
    let s = server().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let (room, _) = room_of(&s, &alice).await;
    let delay_id = delay_state(&s, &alice, &room, "k", json!({}), HOUR_MS).await;

    // Unknown IDs: 404 on every path, with or without a token.
    for action in ["cancel", "restart", "send"] {
        expect_error(act(&s, "nosuchdelay", action).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
        expect_error(
            s.post(&format!("{DELAYED}/nosuchdelay"), Some(&alice.token), json!({"action": action})).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
    }
    // The body form needs a token, and acts on the caller's own events only.
    expect_error(
        s.post(&format!("{DELAYED}/{delay_id}"), None, json!({"action": "cancel"})).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    expect_error(
        s.post(&format!("{DELAYED}/{delay_id}"), Some(&bob.token), json!({"action": "cancel"})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.post(&format!("{DELAYED}/{delay_id}"), Some(&alice.token), json!({"action": "explode"})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let (status, _) = s.post(&format!("{DELAYED}/{delay_id}"), Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a missing action");
    // No other action paths exist.
    expect_error(act(&s, &delay_id, "explode").await, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
    // The list needs a token.
    expect_error(s.get(DELAYED, None).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    // Nothing above touched the event.
    assert_eq!(listed(&s, &alice).await, vec![delay_id.clone()]);
    // Knowing the ID is enough for the path form, whoever calls.
    let (status, _) = s.post(&format!("{DELAYED}/{delay_id}/restart"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(act(&s, &delay_id, "cancel").await.0, StatusCode::OK);
    assert!(listed(&s, &alice).await.is_empty());
}

#[tokio::test]
async fn off_unless_configured() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({})).await;
    expect_error(
        s.put(&state_path(&room, CALL_MEMBER, "k", "1000"), Some(&alice.token), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let (status, body) = s
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/t1?org.matrix.msc4140.delay=5"),
            Some(&alice.token),
            json!({"body": "x", "msgtype": "m.text"}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")), "{body}");
    let (_, versions) = s.get("/_matrix/client/versions", None).await;
    assert!(versions["unstable_features"].get("org.matrix.msc4140").is_none(), "{versions}");
    let (_, caps) = s.get(&format!("{V3}/capabilities"), Some(&alice.token)).await;
    assert_eq!(caps["capabilities"]["org.matrix.msc4140.delayed_events"]["max_delay_ms"], 0);
    // The same transaction ID without the parameter still sends at once.
    let (status, body) = s
        .put(&format!("{V3}/rooms/{room}/send/m.room.message/t1"), Some(&alice.token), json!({"body": "x"}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["event_id"].is_string());

    // A per-user limit of 0 turns them off too, as in Synapse.
    let s = server_with(|c| c.max_delayed_events_per_user = 0).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({})).await;
    expect_error(
        s.put(&state_path(&room, CALL_MEMBER, "k", "1000"), Some(&alice.token), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    // Configured: advertised in /versions and /capabilities.
    let s = server_with(|c| c.max_delayed_events_per_user = 7).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (_, versions) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4140"], true);
    let (_, caps) = s.get(&format!("{V3}/capabilities"), Some(&alice.token)).await;
    assert_eq!(
        caps["capabilities"]["org.matrix.msc4140.delayed_events"],
        json!({"max_delay_ms": HOUR_MS, "max_scheduled": 7})
    );
}

#[tokio::test]
async fn bad_delays_and_bad_events_are_refused_when_scheduled() {
    let s = server().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (room, _) = room_of(&s, &alice).await;
    let put_state = |kind: &str, key: &str, delay: &str, content: Value| {
        let path = state_path(&room, kind, key, delay);
        let token = alice.token.clone();
        let s = &s;
        async move { s.put(&path, Some(&token), content).await }
    };

    // The delay: an integer of at most the configured maximum.
    let too_long = expect_error(
        put_state(CALL_MEMBER, "k", &(HOUR_MS + 1).to_string(), json!({})).await,
        StatusCode::BAD_REQUEST,
        "ORG.MATRIX.MSC4140_DELAY_TOO_LARGE",
    );
    assert_eq!(too_long["org.matrix.msc4140.max_delay"], HOUR_MS);
    expect_error(
        put_state(CALL_MEMBER, "k", "99999999999999999999999999", json!({})).await,
        StatusCode::BAD_REQUEST,
        "ORG.MATRIX.MSC4140_DELAY_TOO_LARGE",
    );
    for bad in ["soon", "-5", "1.5", ""] {
        expect_error(
            put_state(CALL_MEMBER, "k", bad, json!({})).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
    }
    // A delay of exactly the maximum is fine.
    assert_eq!(put_state(CALL_MEMBER, "max", &HOUR_MS.to_string(), json!({})).await.0, StatusCode::OK);

    // The event: the answers an immediate send gives.
    let long_key = "k".repeat(256);
    for (kind, key, content, status, errcode) in [
        (CALL_MEMBER, long_key.as_str(), json!({}), StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
        (CALL_MEMBER, "big", json!({"x": "y".repeat(70_000)}), StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
        ("m.room.power_levels", "", json!({"users_default": "0"}), StatusCode::BAD_REQUEST, "M_BAD_JSON"),
        (CALL_MEMBER, "float", json!({"x": 1.5}), StatusCode::BAD_REQUEST, "M_BAD_JSON"),
        (
            "m.room.member",
            "not-a-user",
            json!({"membership": "leave"}),
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        ),
        ("m.room.member", "@alice:localhost", json!({}), StatusCode::BAD_REQUEST, "M_BAD_JSON"),
    ] {
        let immediate = s
            .put(&format!("{V3}/rooms/{room}/state/{kind}/{key}"), Some(&alice.token), content.clone())
            .await;
        assert_eq!(
            (immediate.0, immediate.1["errcode"].as_str()),
            (status, Some(errcode)),
            "{kind} now: {}",
            immediate.1
        );
        expect_error(put_state(kind, key, "1000", content).await, status, errcode);
    }
    // A room that does not exist, and a redaction without a target.
    expect_error(
        s.put(&state_path("!nowhere:localhost", CALL_MEMBER, "k", "1000"), Some(&alice.token), json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.put(
            &format!("{V3}/rooms/{room}/send/m.room.redaction/r1?org.matrix.msc4140.delay=1000"),
            Some(&alice.token),
            json!({}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
    );
    // Only the one good request was scheduled.
    assert_eq!(listed(&s, &alice).await.len(), 1);
}

#[tokio::test]
async fn each_user_may_have_a_bounded_number_waiting() {
    let s = server_with(|c| c.max_delayed_events_per_user = 2).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let (room, _) = room_of(&s, &alice).await;
    join(&s, &bob, &room).await;
    let first = delay_state(&s, &alice, &room, "a", json!({}), 10_000).await;
    delay_text(&s, &alice, &room, "t2", "second", 20_000).await;

    // The third is refused until the soonest is sent, and says when that is.
    let response = s
        .http
        .put(format!("{}{}", s.base, state_path(&room, CALL_MEMBER, "c", "1000")))
        .bearer_auth(&alice.token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "10");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["errcode"].as_str(), body["retry_after_ms"].as_u64()),
        (Some("M_LIMIT_EXCEEDED"), Some(10_000))
    );
    // The limit is per user.
    delay_text(&s, &bob, &room, "b1", "bob's", 10_000).await;
    // A place frees up when one is cancelled.
    assert_eq!(act(&s, &first, "cancel").await.0, StatusCode::OK);
    delay_state(&s, &alice, &room, "c", json!({}), 1_000).await;
    assert_eq!(listed(&s, &alice).await.len(), 2);
}

#[tokio::test]
async fn a_retransmitted_transaction_gets_the_same_delay_id() {
    let s = server().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (room, since) = room_of(&s, &alice).await;
    let first = delay_text(&s, &alice, &room, "txn1", "once", 5_000).await;
    assert_eq!(delay_text(&s, &alice, &room, "txn1", "once", 5_000).await, first);
    assert_eq!(listed(&s, &alice).await, vec![first.clone()]);
    // Another transaction, or another device with the same ID, is another request.
    let second = delay_text(&s, &alice, &room, "txn2", "twice", 5_000).await;
    let laptop = s.login("alice", "pw-alice-123", Some("LAPTOP")).await;
    let third = delay_text(&s, &laptop, &room, "txn1", "thrice", 5_000).await;
    assert_eq!([&first, &second, &third].map(String::len), [24; 3]);
    assert!(first != second && first != third && second != third);
    // Still the same answer after it was sent, and nothing new is scheduled.
    s.clock.advance_ms(5_000);
    wait_for(&s, &alice, &room, &since, text_is("thrice")).await;
    assert_eq!(delay_text(&s, &alice, &room, "txn1", "once", 5_000).await, first);
    assert!(listed(&s, &alice).await.is_empty());
    // A transaction ID already used to send at once answers with that event.
    let (_, sent) = s
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/now1"),
            Some(&alice.token),
            json!({"body": "now"}),
        )
        .await;
    let (status, again) = s
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/now1?org.matrix.msc4140.delay=5000"),
            Some(&alice.token),
            json!({"body": "now"}),
        )
        .await;
    assert_eq!((status, &again["event_id"]), (StatusCode::OK, &sent["event_id"]));
    assert!(listed(&s, &alice).await.is_empty());
}

#[tokio::test]
async fn delayed_events_survive_a_restart_and_overdue_ones_go_out_at_start() {
    let clock = Arc::new(conduit::service::clock::ManualClock::new());
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_event_delay_duration = Some(conduit::config::parse_duration("1h").unwrap());
    let s = TestServer::boot_with_clock(config.clone(), dir, Arc::clone(&clock)).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (room, since) = room_of(&s, &alice).await;
    let early = delay_state(&s, &alice, &room, "early", json!({"n": 1}), 60_000).await;
    let late = delay_state(&s, &alice, &room, "late", json!({"n": 2}), 120_000).await;
    let dir = s.stop().await;

    // The first fell due while the server was down: it goes out as the server starts.
    clock.advance_ms(90_000);
    let s = TestServer::boot_with_clock(config, dir, Arc::clone(&clock)).await;
    let (event, since) = wait_for(&s, &alice, &room, &since, state_is("early")).await;
    assert_eq!(event["unsigned"]["org.matrix.msc4140.delay_id"], early.as_str());
    assert_eq!(call_member(&s, &alice, &room, "late").await, None);
    assert_eq!(listed(&s, &alice).await, vec![late]);
    // The second keeps its time.
    clock.advance_ms(30_000);
    wait_for(&s, &alice, &room, &since, state_is("late")).await;
    assert!(listed(&s, &alice).await.is_empty());
}

#[tokio::test]
async fn another_users_state_cancels_a_delayed_state_event_but_ones_own_does_not() {
    let s = server().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    // Bob may write the state too (Alice, the creator, may anyway).
    let power = json!({"users": {"@bob:localhost": 100}});
    let room =
        create_room(&s, &alice, json!({"preset": "public_chat", "power_level_content_override": power}))
            .await;
    join(&s, &bob, &room).await;
    let since = token(&s, &alice).await;
    let path = |key: &str| format!("{V3}/rooms/{room}/state/{CALL_MEMBER}/{key}");

    let mine = delay_state(&s, &alice, &room, "shared", json!({"by": "alice, later"}), 10_000).await;
    let other = delay_state(&s, &alice, &room, "other", json!({"by": "alice, later"}), 10_000).await;
    // Alice's own write leaves her delayed event waiting (MSC4140: she controls it).
    assert_eq!(
        s.put(&path("shared"), Some(&alice.token), json!({"by": "alice, now"})).await.0,
        StatusCode::OK
    );
    assert_eq!(listed(&s, &alice).await.len(), 2);
    // Bob's write to the same state cancels it (Synapse); the other key is untouched.
    assert_eq!(s.put(&path("shared"), Some(&bob.token), json!({"by": "bob"})).await.0, StatusCode::OK);
    assert_eq!(listed(&s, &alice).await, vec![other]);
    expect_error(act(&s, &mine, "send").await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    s.clock.advance_ms(10_000);
    wait_for(&s, &alice, &room, &since, state_is("other")).await;
    assert_eq!(call_member(&s, &alice, &room, "shared").await, Some(json!({"by": "bob"})));
}

#[tokio::test]
async fn an_event_that_can_no_longer_be_sent_is_dropped() {
    let s = server().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (room, _) = room_of(&s, &alice).await;
    let (other_room, since) = room_of(&s, &alice).await;
    let stale = delay_text(&s, &alice, &room, "t1", "from beyond", 10_000).await;
    let by_send = delay_text(&s, &alice, &room, "t2", "sent by hand", HOUR_MS).await;
    delay_text(&s, &alice, &other_room, "t3", "sentinel", 10_000).await;
    let (status, _) = s.post(&format!("{V3}/rooms/{room}/leave"), Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    // Sent now: the send's own error, and the delayed event is gone (as on Synapse).
    expect_error(act(&s, &by_send, "send").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(act(&s, &by_send, "send").await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    // Sent by the timer: dropped.
    s.clock.advance_ms(10_000);
    wait_for(&s, &alice, &other_room, &since, text_is("sentinel")).await;
    assert!(listed(&s, &alice).await.is_empty());
    expect_error(act(&s, &stale, "send").await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}

#[tokio::test]
async fn deactivation_cancels_an_accounts_delayed_events() {
    let s = server().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (room, _) = room_of(&s, &alice).await;
    let delay_id = delay_state(&s, &alice, &room, "k", json!({}), HOUR_MS).await;
    let path = "/_matrix/client/v3/account/deactivate";
    let (_, body) = s.post(path, Some(&alice.token), json!({})).await;
    let session = body["session"].as_str().unwrap();
    let auth = password_auth("alice", "pw-alice-123", Some(session));
    assert_eq!(s.post(path, Some(&alice.token), json!({"auth": auth})).await.0, StatusCode::OK);
    expect_error(act(&s, &delay_id, "send").await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}
