//! Room upgrades and the space hierarchy.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error},
    rooms::{V3, create_room, join, send_text, state_map},
};

async fn upgrade(s: &TestServer, who: &Session, room: &str, version: &str) -> (StatusCode, Value) {
    s.post(&format!("{V3}/rooms/{room}/upgrade"), Some(&who.token), json!({"new_version": version})).await
}

#[tokio::test]
async fn upgrade_carries_state_bans_invites_and_aliases() {
    for (from, to) in [("1", "12"), ("5", "12"), ("10", "11"), ("11", "12"), ("12", "12"), ("12", "3")] {
        let s = TestServer::start().await;
        let alice = s.register("alice", "pw-alice-123").await;
        let bob = s.register("bob", "pw-bob-12345").await;
        let carol = s.register("carol", "pw-carol-1234").await;
        let old = create_room(
            &s,
            &alice,
            json!({
                "room_version": from,
                "name": "Team",
                "topic": "Plans",
                "room_alias_name": "team",
                "initial_state": [{"type": "m.room.encryption", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
                "invite": [carol.user_id],
                "power_level_content_override": {"users_default": 10},
            }),
        )
        .await;
        s.post(&format!("{V3}/rooms/{old}/ban"), Some(&alice.token), json!({"user_id": bob.user_id})).await;
        send_text(&s, &alice, &old, "1", "before the upgrade").await;

        let (status, body) = upgrade(&s, &alice, &old, to).await;
        assert_eq!(status, StatusCode::OK, "{from}->{to}: {body}");
        let new = body["replacement_room"].as_str().unwrap().to_owned();

        let state = state_map(&s, &alice, &new).await;
        let create = &state["m.room.create|"]["content"];
        assert_eq!(create["room_version"], to);
        assert_eq!(create["predecessor"]["room_id"], old);
        assert_eq!(state["m.room.name|"]["content"]["name"], "Team");
        assert_eq!(state["m.room.topic|"]["content"]["topic"], "Plans");
        assert_eq!(state["m.room.encryption|"]["content"]["algorithm"], "m.megolm.v1.aes-sha2");
        assert_eq!(state["m.room.join_rules|"]["content"]["join_rule"], "invite");
        assert_eq!(state["m.room.power_levels|"]["content"]["users_default"], 10);
        let creator_listed = state["m.room.power_levels|"]["content"]["users"].get(&alice.user_id).is_some();
        assert_eq!(creator_listed, to != "12", "{from}->{to}");
        assert_eq!(state[&format!("m.room.member|{}", bob.user_id)]["content"]["membership"], "ban");
        assert_eq!(state[&format!("m.room.member|{}", carol.user_id)]["content"]["membership"], "invite");
        assert_eq!(state["m.room.canonical_alias|"]["content"]["alias"], "#team:localhost");
        let (_, alias) = s.get(&format!("{V3}/directory/room/%23team:localhost"), None).await;
        assert_eq!(alias["room_id"], new);

        let old_state = state_map(&s, &alice, &old).await;
        assert_eq!(old_state["m.room.tombstone|"]["content"]["replacement_room"], new);
        assert_eq!(old_state["m.room.power_levels|"]["content"]["events_default"], 50);
        assert_eq!(old_state["m.room.power_levels|"]["content"]["invite"], 50);
        assert_eq!(old_state["m.room.canonical_alias|"]["content"], json!({}));
        // Carol can follow the invite into the new room.
        assert_eq!(join(&s, &carol, &new).await.0, StatusCode::OK);
        // A room is upgraded once.
        expect_error(upgrade(&s, &alice, &old, to).await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    }
}

#[tokio::test]
async fn upgrade_errors() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    expect_error(
        upgrade(&s, &alice, &room, "13").await,
        StatusCode::BAD_REQUEST,
        "M_UNSUPPORTED_ROOM_VERSION",
    );
    expect_error(upgrade(&s, &bob, &room, "12").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    expect_error(upgrade(&s, &bob, &room, "12").await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(upgrade(&s, &alice, "!nope:localhost", "12").await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
}

async fn add_child(s: &TestServer, who: &Session, space: &str, child: &str, extra: Value) {
    let mut content = json!({"via": ["localhost"]});
    content.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, body) =
        s.put(&format!("{V3}/rooms/{space}/state/m.space.child/{child}"), Some(&who.token), content).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn space_hierarchy() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let space = create_room(
        &s,
        &alice,
        json!({"preset": "public_chat", "name": "Company", "creation_content": {"type": "m.space"}}),
    )
    .await;
    let general = create_room(&s, &alice, json!({"preset": "public_chat", "name": "General"})).await;
    let secret = create_room(&s, &alice, json!({"preset": "private_chat", "name": "Secret"})).await;
    let sub = create_room(
        &s,
        &alice,
        json!({"preset": "public_chat", "name": "Team", "creation_content": {"type": "m.space"}}),
    )
    .await;
    let deep = create_room(&s, &alice, json!({"preset": "public_chat", "name": "Deep"})).await;
    add_child(&s, &alice, &space, &general, json!({"suggested": true, "order": "a"})).await;
    add_child(&s, &alice, &space, &secret, json!({})).await;
    add_child(&s, &alice, &space, &sub, json!({"order": "b"})).await;
    add_child(&s, &alice, &sub, &deep, json!({})).await;
    // A child without `via` is not a child.
    s.put(&format!("{V3}/rooms/{space}/state/m.space.child/!gone:localhost"), Some(&alice.token), json!({}))
        .await;

    let url = |query: &str| format!("/_matrix/client/v1/rooms/{space}/hierarchy{query}");
    let names = |body: &Value| -> Vec<String> {
        body["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    let (status, body) = s.get(&url(""), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(names(&body), ["Company", "General", "Team", "Secret", "Deep"]);
    assert_eq!(body["rooms"][0]["room_type"], "m.space");
    assert_eq!(body["rooms"][0]["children_state"].as_array().unwrap().len(), 3);
    assert_eq!(body["rooms"][0]["children_state"][0]["type"], "m.space.child");
    assert!(body["rooms"][0]["children_state"][0]["origin_server_ts"].is_number());

    // Bob sees what he could join: not the private room.
    let (_, body) = s.get(&url(""), Some(&bob.token)).await;
    assert_eq!(names(&body), ["Company", "General", "Team", "Deep"]);
    let (_, body) = s.get(&url("?max_depth=1"), Some(&bob.token)).await;
    assert_eq!(names(&body), ["Company", "General", "Team"]);
    let (_, body) = s.get(&url("?suggested_only=true"), Some(&bob.token)).await;
    assert_eq!(names(&body), ["Company", "General"]);

    // Pagination walks the same order.
    let (_, first) = s.get(&url("?limit=2"), Some(&alice.token)).await;
    assert_eq!(names(&first), ["Company", "General"]);
    let next = first["next_batch"].as_str().unwrap();
    let (_, second) = s.get(&url(&format!("?limit=2&from={next}")), Some(&alice.token)).await;
    assert_eq!(names(&second), ["Team", "Secret"]);
    let next = second["next_batch"].as_str().unwrap();
    let (_, last) = s.get(&url(&format!("?limit=2&from={next}")), Some(&alice.token)).await;
    assert_eq!(names(&last), ["Deep"]);
    assert!(last.get("next_batch").is_none(), "{last}");
    expect_error(
        s.get(&url("?from=bogus"), Some(&alice.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    // A private space is not visible to outsiders at all.
    let hidden = create_room(&s, &alice, json!({"creation_content": {"type": "m.space"}})).await;
    expect_error(
        s.get(&format!("/_matrix/client/v1/rooms/{hidden}/hierarchy"), Some(&bob.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}
