//! Who sees what: history visibility on single events and state, and redaction.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error},
    room_versions::enc,
    rooms::{V3, create_room, join, send_text},
};

async fn event_status(s: &TestServer, who: &Session, room: &str, event: &str) -> StatusCode {
    s.get(&format!("{V3}/rooms/{room}/event/{event}"), Some(&who.token)).await.0
}

/// A public room with the given history visibility; Alice sends one message before Bob is
/// invited, one while he is invited, one after he joined and one after he left.
async fn scenario(visibility: &str) -> (TestServer, Session, Session, String, [String; 4]) {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(
        &s,
        &alice,
        json!({"initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": visibility}}]}),
    )
    .await;
    let before = send_text(&s, &alice, &room, "1", "before").await;
    s.post(&format!("{V3}/rooms/{room}/invite"), Some(&alice.token), json!({"user_id": bob.user_id})).await;
    let invited = send_text(&s, &alice, &room, "2", "invited").await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    let joined = send_text(&s, &alice, &room, "3", "joined").await;
    (s, alice, bob, room, [before, invited, joined, String::new()])
}

async fn leave(s: &TestServer, who: &Session, room: &str) {
    assert_eq!(
        s.post(&format!("{V3}/rooms/{room}/leave"), Some(&who.token), json!({})).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn each_history_visibility_setting() {
    use StatusCode as S;
    // (setting, [before invite, while invited, while joined, after leaving]) as Bob sees them
    // once he has left, and while joined.
    let expectations = [
        ("world_readable", [S::OK, S::OK, S::OK, S::OK], [S::OK, S::OK, S::OK]),
        ("shared", [S::NOT_FOUND, S::NOT_FOUND, S::OK, S::NOT_FOUND], [S::OK, S::OK, S::OK]),
        ("invited", [S::NOT_FOUND, S::OK, S::OK, S::NOT_FOUND], [S::NOT_FOUND, S::OK, S::OK]),
        ("joined", [S::NOT_FOUND, S::NOT_FOUND, S::OK, S::NOT_FOUND], [S::NOT_FOUND, S::NOT_FOUND, S::OK]),
    ];
    for (setting, after_leaving, while_joined) in expectations {
        let (s, alice, bob, room, mut events) = scenario(setting).await;
        for (event, expected) in events[..3].iter().zip(while_joined) {
            assert_eq!(event_status(&s, &bob, &room, event).await, expected, "{setting}, joined, {event}");
        }
        leave(&s, &bob, &room).await;
        events[3] = send_text(&s, &alice, &room, "4", "after").await;
        for (event, expected) in events.iter().zip(after_leaving) {
            assert_eq!(event_status(&s, &bob, &room, event).await, expected, "{setting}, left, {event}");
        }
        // A stranger: only world_readable rooms can be read at all.
        let eve = s.register("eve", "pw-eve-123456").await;
        let stranger = event_status(&s, &eve, &room, &events[0]).await;
        let state = s.get(&format!("{V3}/rooms/{room}/state"), Some(&eve.token)).await.0;
        if setting == "world_readable" {
            assert_eq!((stranger, state), (S::OK, S::OK));
        } else {
            // The event is unknown to a stranger (as on Synapse); the state is refused.
            assert_eq!((stranger, state), (S::NOT_FOUND, S::FORBIDDEN), "{setting}");
        }
    }
}

#[tokio::test]
async fn former_members_read_state_as_it_was_when_they_left() {
    let (s, alice, bob, room, _) = scenario("shared").await;
    leave(&s, &bob, &room).await;
    s.put(&format!("{V3}/rooms/{room}/state/m.room.topic/"), Some(&alice.token), json!({"topic": "later"}))
        .await;
    let (status, state) = s.get(&format!("{V3}/rooms/{room}/state"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
    let types: Vec<&str> = state.as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(!types.contains(&"m.room.topic"), "{types:?}");
    expect_error(
        s.get(&format!("{V3}/rooms/{room}/state/m.room.topic/"), Some(&bob.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

async fn redact(s: &TestServer, who: &Session, room: &str, event: &str, txn: &str) -> (StatusCode, Value) {
    let event = enc(event);
    s.put(&format!("{V3}/rooms/{room}/redact/{event}/{txn}"), Some(&who.token), json!({"reason": "spam"}))
        .await
}

#[tokio::test]
async fn redaction_strips_content_per_room_version() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    for version in ["1", "3", "5", "6", "10", "11", "12"] {
        let room = create_room(&s, &alice, json!({"preset": "public_chat", "room_version": version})).await;
        assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
        let message = send_text(&s, &bob, &room, &format!("m{version}"), "secret").await;

        // Bob may not redact Alice's events; Alice (a moderator) may redact Bob's.
        let alices = send_text(&s, &alice, &room, &format!("a{version}"), "mine").await;
        expect_error(redact(&s, &bob, &room, &alices, "r0").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
        let (status, body) = redact(&s, &alice, &room, &message, &format!("r{version}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let redaction = body["event_id"].as_str().unwrap().to_owned();
        // The same transaction answers the same redaction.
        assert_eq!(
            redact(&s, &alice, &room, &message, &format!("r{version}")).await.1["event_id"],
            redaction
        );

        let (_, event) = s.get(&format!("{V3}/rooms/{room}/event/{}", enc(&message)), Some(&bob.token)).await;
        assert_eq!(event["content"], json!({}), "v{version}: {event}");
        assert_eq!(event["unsigned"]["redacted_because"]["event_id"], redaction);
        let (_, redaction_event) =
            s.get(&format!("{V3}/rooms/{room}/event/{}", enc(&redaction)), Some(&bob.token)).await;
        assert_eq!(
            redaction_event["redacts"], message,
            "clients read the top-level `redacts` in every version"
        );
        let in_content = redaction_event["content"].get("redacts").is_some();
        assert_eq!(in_content, version == "11" || version == "12", "v{version}: {redaction_event}");

        // The redaction algorithm keeps what the version keeps: join_rule `allow` from v8 on,
        // and all of a create event's content from v11 on.
        let (_, pl) = s
            .get(&format!("{V3}/rooms/{room}/state/m.room.power_levels/?format=event"), Some(&alice.token))
            .await;
        let pl_id = pl["event_id"].as_str().unwrap().to_owned();
        assert_eq!(redact(&s, &alice, &room, &pl_id, &format!("pl{version}")).await.0, StatusCode::OK);
        let (_, pl) = s.get(&format!("{V3}/rooms/{room}/event/{}", enc(&pl_id)), Some(&alice.token)).await;
        assert!(pl["content"].get("users").is_some(), "users survive redaction: {pl}");
        let invite_kept = pl["content"].get("invite").is_some();
        assert_eq!(invite_kept, version == "11" || version == "12", "v{version} invite: {pl}");
    }
}

async fn content_of(s: &TestServer, who: &Session, room: &str, event: &str) -> Value {
    let (status, event) = s.get(&format!("{V3}/rooms/{room}/event/{event}"), Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    event["content"].clone()
}

#[tokio::test]
async fn every_way_of_sending_a_redaction_is_held_to_the_same_rule() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    for version in ["10", "11"] {
        let room = create_room(&s, &alice, json!({"preset": "public_chat", "room_version": version})).await;
        assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
        let alices = send_text(&s, &alice, &room, &format!("a{version}"), "mine").await;
        let send = |who: &Session, txn: &str, content: Value| {
            let path = format!("{V3}/rooms/{room}/send/m.room.redaction/{txn}{version}");
            let token = who.token.clone();
            let s = &s;
            async move { s.put(&path, Some(&token), content).await }
        };

        // Bob (power 0) may not redact Alice's event through `/send` either, and it stays.
        expect_error(
            send(&bob, "b1", json!({"redacts": &alices})).await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
        assert_eq!(content_of(&s, &alice, &room, &alices).await["body"], "mine");
        // Nor through `/state`, even where he may send state but not redact (50 < 100).
        let (_, mut levels) =
            s.get(&format!("{V3}/rooms/{room}/state/m.room.power_levels/"), Some(&alice.token)).await;
        levels["users"][&bob.user_id] = json!(50);
        levels["redact"] = json!(100);
        let path = format!("{V3}/rooms/{room}/state/m.room.power_levels/");
        assert_eq!(s.put(&path, Some(&alice.token), levels).await.0, StatusCode::OK);
        let state = s
            .put(
                &format!("{V3}/rooms/{room}/state/m.room.redaction/x"),
                Some(&bob.token),
                json!({"redacts": &alices}),
            )
            .await;
        expect_error(state, StatusCode::FORBIDDEN, "M_FORBIDDEN");
        assert_eq!(content_of(&s, &alice, &room, &alices).await["body"], "mine");

        // His own event he may redact through `/send`; before v11 `redacts` moves to the top.
        let bobs = send_text(&s, &bob, &room, &format!("b{version}"), "oops").await;
        let (status, body) = send(&bob, "b2", json!({"redacts": &bobs, "reason": "typo"})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(content_of(&s, &alice, &room, &bobs).await, json!({}));
        let redaction = body["event_id"].as_str().unwrap();
        let (_, event) = s.get(&format!("{V3}/rooms/{room}/event/{redaction}"), Some(&alice.token)).await;
        assert_eq!(event["redacts"], bobs, "{event}");
        let expected_content = match version {
            "10" => json!({"reason": "typo"}),
            _ => json!({"reason": "typo", "redacts": &bobs}),
        };
        assert_eq!(event["content"], expected_content, "v{version}");

        // An event of another room is refused (400), even to its room's moderator.
        let other = create_room(&s, &alice, json!({"room_version": version})).await;
        let elsewhere = send_text(&s, &alice, &other, &format!("e{version}"), "elsewhere").await;
        let refused = expect_error(
            redact(&s, &alice, &room, &elsewhere, &format!("o{version}")).await,
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
        );
        assert!(refused["error"].as_str().unwrap().contains("different room"), "{refused}");
        expect_error(
            send(&alice, "a1", json!({"redacts": &elsewhere})).await,
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
        );
        assert_eq!(content_of(&s, &alice, &other, &elsewhere).await["body"], "elsewhere");

        // An unknown event: not found for Bob; a moderator's redaction is stored and changes nothing.
        let unknown = "$unknown-event";
        expect_error(
            send(&bob, "b3", json!({"redacts": unknown})).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
        let (status, body) = send(&alice, "a2", json!({"redacts": unknown})).await;
        assert_eq!(status, StatusCode::OK, "{body}");

        // A redaction must name its target, and the create event cannot be redacted.
        expect_error(
            send(&alice, "a3", json!({"reason": "x"})).await,
            StatusCode::BAD_REQUEST,
            "M_MISSING_PARAM",
        );
        let (_, create) =
            s.get(&format!("{V3}/rooms/{room}/state/m.room.create/?format=event"), Some(&alice.token)).await;
        let create = create["event_id"].as_str().unwrap().to_owned();
        expect_error(
            redact(&s, &alice, &room, &create, &format!("c{version}")).await,
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
        );
    }
}

#[tokio::test]
async fn a_history_visibility_change_is_seen_by_whoever_either_setting_lets_see() {
    use StatusCode as S;
    let (s, alice, _bob, room, _) = scenario("joined").await;
    let eve = s.register("eve", "pw-eve-123456").await;
    let set = |visibility: &'static str| {
        let (s, alice, room) = (&s, &alice, room.clone());
        async move {
            let path = format!("{V3}/rooms/{room}/state/m.room.history_visibility/");
            let (status, body) =
                s.put(&path, Some(&alice.token), json!({"history_visibility": visibility})).await;
            assert_eq!(status, S::OK, "{body}");
            body["event_id"].as_str().unwrap().to_owned()
        }
    };
    // joined → world_readable: the setting after it lets a stranger see it (the spec's
    // example); so does world_readable → joined, by the setting before it.
    let opened = set("world_readable").await;
    let closed = set("joined").await;
    for event in [&opened, &closed] {
        assert_eq!(event_status(&s, &eve, &room, event).await, S::NOT_FOUND, "not world-readable now");
    }
    set("world_readable").await;
    for event in [&opened, &closed] {
        assert_eq!(event_status(&s, &eve, &room, event).await, S::OK, "{event}");
    }
    // An event sent while the room was `joined` stays hidden.
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.history_visibility/"),
            Some(&alice.token),
            json!({"history_visibility": "joined"}),
        )
        .await;
    assert_eq!(status, S::OK);
    let hidden = send_text(&s, &alice, &room, "h1", "members only").await;
    set("world_readable").await;
    assert_eq!(event_status(&s, &eve, &room, &hidden).await, S::NOT_FOUND);
}

#[tokio::test]
async fn redacts_in_the_content_of_another_event_type_is_only_content() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({"preset": "private_chat"})).await;
    let target = send_text(&s, &alice, &room, "t1", "keep me").await;
    let (status, body) = s
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/t2"),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "not a redaction", "redacts": target}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["event_id"].as_str().unwrap();
    let (_, event) = s.get(&format!("{V3}/rooms/{room}/event/{id}"), Some(&alice.token)).await;
    assert!(event.get("redacts").is_none(), "{event}");
    assert_eq!(event["content"]["redacts"], target.as_str());
    let (_, kept) = s.get(&format!("{V3}/rooms/{room}/event/{target}"), Some(&alice.token)).await;
    assert_eq!(kept["content"]["body"], "keep me");
}
