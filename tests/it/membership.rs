//! Membership through HTTP: each join rule, invites, leave, kick, ban, knock, forget, lists.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error},
    rooms::{V3, create_room, join, send_text, state_map},
};

async fn post(s: &TestServer, who: &Session, path: &str, body: Value) -> (StatusCode, Value) {
    s.post(&format!("{V3}{path}"), Some(&who.token), body).await
}

async fn membership_of(s: &TestServer, reader: &Session, room: &str, user: &str) -> Option<String> {
    state_map(s, reader, room)
        .await
        .get(&format!("m.room.member|{user}"))
        .map(|e| e["content"]["membership"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn public_and_invite_join_rules() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let public = create_room(&s, &alice, json!({"preset": "public_chat", "room_alias_name": "pub"})).await;
    // By alias, with `via` and `server_name` accepted.
    let (status, body) =
        post(&s, &bob, "/join/%23pub:localhost?via=localhost&server_name=localhost", json!({})).await;
    assert_eq!((status, body["room_id"].as_str()), (StatusCode::OK, Some(public.as_str())));
    // Joining again is fine.
    assert_eq!(post(&s, &bob, &format!("/rooms/{public}/join"), json!({})).await.0, StatusCode::OK);

    let private = create_room(&s, &alice, json!({"preset": "private_chat"})).await;
    let refused = expect_error(join(&s, &bob, &private).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert!(refused["error"].as_str().unwrap().contains("join"), "{refused}");
    assert_eq!(membership_of(&s, &alice, &private, &bob.user_id).await, None);
    assert_eq!(
        post(&s, &alice, &format!("/rooms/{private}/invite"), json!({"user_id": bob.user_id})).await.0,
        StatusCode::OK
    );
    assert_eq!(membership_of(&s, &alice, &private, &bob.user_id).await.as_deref(), Some("invite"));
    assert_eq!(join(&s, &bob, &private).await.0, StatusCode::OK);
    assert_eq!(membership_of(&s, &alice, &private, &bob.user_id).await.as_deref(), Some("join"));

    expect_error(join(&s, &bob, "!unknown:localhost").await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    expect_error(join(&s, &bob, "%23nothere:localhost").await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    expect_error(
        post(&s, &alice, &format!("/rooms/{private}/invite"), json!({"user_id": "@ghost:localhost"})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        post(&s, &alice, &format!("/rooms/{private}/invite"), json!({"user_id": bob.user_id})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn restricted_rooms_admit_members_of_allowed_rooms() {
    for (version, rule) in [("9", "restricted"), ("12", "restricted"), ("10", "knock_restricted")] {
        let s = TestServer::start().await;
        let alice = s.register("alice", "pw-alice-123").await;
        let bob = s.register("bob", "pw-bob-12345").await;
        let carol = s.register("carol", "pw-carol-1234").await;
        let space = create_room(&s, &alice, json!({"preset": "public_chat", "room_version": version})).await;
        let room = create_room(
            &s,
            &alice,
            json!({
                "room_version": version,
                "initial_state": [{"type": "m.room.join_rules", "content": {
                    "join_rule": rule,
                    "allow": [{"type": "m.room_membership", "room_id": space}],
                }}],
            }),
        )
        .await;
        assert_eq!(join(&s, &bob, &space).await.0, StatusCode::OK);
        let (status, body) = join(&s, &bob, &room).await;
        assert_eq!(status, StatusCode::OK, "v{version} {rule}: {body}");
        let state = state_map(&s, &alice, &room).await;
        let member = &state[&format!("m.room.member|{}", bob.user_id)]["content"];
        assert_eq!(member["join_authorised_via_users_server"], alice.user_id);
        // Carol is in no allowed room.
        expect_error(join(&s, &carol, &room).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    }
}

#[tokio::test]
async fn knocking() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(
        &s,
        &alice,
        json!({"room_alias_name": "door", "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    let (status, body) = post(&s, &bob, "/knock/%23door:localhost", json!({"reason": "let me in"})).await;
    assert_eq!((status, body["room_id"].as_str()), (StatusCode::OK, Some(room.as_str())), "{body}");
    let state = state_map(&s, &alice, &room).await;
    let knock = &state[&format!("m.room.member|{}", bob.user_id)]["content"];
    assert_eq!((knock["membership"].as_str(), knock["reason"].as_str()), (Some("knock"), Some("let me in")));
    // A knock is not a join; an invite admits.
    expect_error(join(&s, &bob, &room).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(
        post(&s, &alice, &format!("/rooms/{room}/invite"), json!({"user_id": bob.user_id})).await.0,
        StatusCode::OK
    );
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);

    // Knocking where the join rule does not allow it, or in a version without knocking.
    let private = create_room(&s, &alice, json!({})).await;
    expect_error(
        post(&s, &bob, &format!("/knock/{private}"), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let v6 = create_room(
        &s,
        &alice,
        json!({"room_version": "6", "initial_state": [{"type": "m.room.join_rules", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    expect_error(
        post(&s, &bob, &format!("/knock/{v6}"), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn leave_kick_ban_unban_forget() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let user = |who: &Session| json!({"user_id": who.user_id, "reason": "testing"});

    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    // Bob has no power to kick or ban.
    expect_error(
        post(&s, &bob, &format!("/rooms/{room}/kick"), user(&alice)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(
        post(&s, &bob, &format!("/rooms/{room}/ban"), user(&alice)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    assert_eq!(post(&s, &alice, &format!("/rooms/{room}/kick"), user(&bob)).await.0, StatusCode::OK);
    let state = state_map(&s, &alice, &room).await;
    let kicked = &state[&format!("m.room.member|{}", bob.user_id)];
    assert_eq!(
        (kicked["content"]["membership"].as_str(), kicked["sender"].as_str()),
        (Some("leave"), Some(alice.user_id.as_str()))
    );
    assert_eq!(kicked["content"]["reason"], "testing");
    expect_error(
        post(&s, &alice, &format!("/rooms/{room}/kick"), user(&bob)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );

    assert_eq!(post(&s, &alice, &format!("/rooms/{room}/ban"), user(&bob)).await.0, StatusCode::OK);
    assert_eq!(membership_of(&s, &alice, &room, &bob.user_id).await.as_deref(), Some("ban"));
    expect_error(join(&s, &bob, &room).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(post(&s, &alice, &format!("/rooms/{room}/unban"), user(&bob)).await.0, StatusCode::OK);
    expect_error(
        post(&s, &alice, &format!("/rooms/{room}/unban"), user(&bob)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);

    // Forget needs the user to have left first.
    let (status, body) = post(&s, &bob, &format!("/rooms/{room}/forget"), json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_UNKNOWN")));
    assert_eq!(post(&s, &bob, &format!("/rooms/{room}/leave"), json!({})).await.0, StatusCode::OK);
    assert_eq!(membership_of(&s, &alice, &room, &bob.user_id).await.as_deref(), Some("leave"));
    assert_eq!(post(&s, &bob, &format!("/rooms/{room}/forget"), json!({})).await.0, StatusCode::OK);
    let (_, rooms) = s.get(&format!("{V3}/joined_rooms"), Some(&bob.token)).await;
    assert_eq!(rooms, json!({"joined_rooms": []}));
    // Leaving a room one was never in.
    let other = create_room(&s, &alice, json!({})).await;
    expect_error(
        post(&s, &bob, &format!("/rooms/{other}/leave"), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn member_lists() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat", "invite": [carol.user_id]})).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    // A stream position before Bob joined, taken from the event's... ordering: Bob's join is last.
    let (_, members) = s.get(&format!("{V3}/rooms/{room}/members"), Some(&alice.token)).await;
    let who = |v: &Value| -> Vec<String> {
        v["chunk"].as_array().unwrap().iter().map(|e| e["state_key"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(who(&members), ["@alice:localhost", "@bob:localhost", "@carol:localhost"]);
    let (_, joined) = s.get(&format!("{V3}/rooms/{room}/members?membership=join"), Some(&alice.token)).await;
    assert_eq!(who(&joined), ["@alice:localhost", "@bob:localhost"]);
    let (_, not_joined) =
        s.get(&format!("{V3}/rooms/{room}/members?not_membership=join"), Some(&alice.token)).await;
    assert_eq!(who(&not_joined), ["@carol:localhost"]);
    let (_, early) = s.get(&format!("{V3}/rooms/{room}/members?at=s2"), Some(&alice.token)).await;
    assert_eq!(who(&early), ["@alice:localhost"], "state at the second stream position");
    let (status, first) = s.get(&format!("{V3}/rooms/{room}/members?at=s1"), Some(&alice.token)).await;
    assert_eq!((status, who(&first)), (StatusCode::OK, Vec::<String>::new()), "right after the create event");
    expect_error(
        s.get(&format!("{V3}/rooms/{room}/members?at=garbage"), Some(&alice.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    let (status, joined) = s.get(&format!("{V3}/rooms/{room}/joined_members"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(joined["joined"]["@alice:localhost"], json!({"display_name": "alice", "avatar_url": null}));
    assert_eq!(joined["joined"].as_object().unwrap().len(), 2);
    expect_error(
        s.get(&format!("{V3}/rooms/{room}/joined_members"), Some(&carol.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // Members of a room one left: the state as it was when leaving.
    send_text(&s, &bob, &room, "t", "bye").await;
    assert_eq!(
        s.post(&format!("{V3}/rooms/{room}/leave"), Some(&bob.token), json!({})).await.0,
        StatusCode::OK
    );
    let dave = s.register("dave", "pw-dave-12345").await;
    assert_eq!(join(&s, &dave, &room).await.0, StatusCode::OK);
    let (status, members) = s.get(&format!("{V3}/rooms/{room}/members"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!who(&members).contains(&"@dave:localhost".to_owned()), "{members}");
}

#[tokio::test]
async fn writing_ones_own_member_event_joins_with_the_content_given() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;

    // As on Synapse: a join written as a state event, with a display name for this room.
    let path = format!("{V3}/rooms/{room}/state/m.room.member/{}", bob.user_id);
    let (status, body) = s
        .put(&path, Some(&bob.token), json!({"membership": "join", "displayname": "Bob here", "x": 1}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let event_id = body["event_id"].as_str().unwrap().to_owned();
    let members = state_map(&s, &alice, &room).await;
    let member = &members[&format!("m.room.member|{}", bob.user_id)];
    assert_eq!(member["event_id"], event_id.as_str());
    assert_eq!(member["content"], json!({"membership": "join", "displayname": "Bob here", "x": 1}));
    // The same again is the same event; nobody may join for someone else.
    let (_, again) = s
        .put(&path, Some(&bob.token), json!({"membership": "join", "displayname": "Bob here", "x": 1}))
        .await;
    assert_eq!(again["event_id"], event_id.as_str());
    expect_error(
        s.put(
            &format!("{V3}/rooms/{room}/state/m.room.member/{}", carol.user_id),
            Some(&bob.token),
            json!({"membership": "join"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // Leaving the same way; a kick by someone without the power is refused by the auth rules.
    let (status, _) = s.put(&path, Some(&bob.token), json!({"membership": "leave"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(membership_of(&s, &alice, &room, &bob.user_id).await.as_deref(), Some("leave"));
    assert_eq!(join(&s, &carol, &room).await.0, StatusCode::OK);
    expect_error(
        s.put(
            &format!("{V3}/rooms/{room}/state/m.room.member/{}", alice.user_id),
            Some(&carol.token),
            json!({"membership": "leave"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(
        s.put(&path, Some(&bob.token), json!({"displayname": "no membership"})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
}

#[tokio::test]
async fn extra_content_given_to_join_is_kept_in_the_member_event() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let (status, body) = post(
        &s,
        &bob,
        &format!("/join/{room}"),
        json!({"reason": "hello", "displayname": "Robert", "org.example.custom": true, "membership": "leave"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let members = state_map(&s, &alice, &room).await;
    let content = &members[&format!("m.room.member|{}", bob.user_id)]["content"];
    assert_eq!(
        content,
        &json!({"membership": "join", "reason": "hello", "displayname": "Robert", "org.example.custom": true}),
    );
    // A body that is not an object is refused.
    let resp = s
        .http
        .post(format!("{}{V3}/join/{room}", s.base))
        .bearer_auth(&bob.token)
        .body("[1]")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn events_of_rooms_one_is_not_in_are_not_found_and_members_list_null_avatars() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    for preset in ["public_chat", "private_chat"] {
        let room = create_room(&s, &alice, json!({"preset": preset})).await;
        let event = send_text(&s, &alice, &room, "t1", "hi").await;
        // Not 403: the answer must not tell a stranger which event IDs exist.
        expect_error(
            s.get(&format!("{V3}/rooms/{room}/event/{event}"), Some(&bob.token)).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
    }
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    let (status, _) = s
        .put(
            &format!("{V3}/profile/{}/avatar_url", alice.user_id),
            Some(&alice.token),
            json!({"avatar_url": "mxc://localhost/a"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s.get(&format!("{V3}/rooms/{room}/joined_members"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["joined"][&alice.user_id]["avatar_url"], "mxc://localhost/a", "{body}");
    // A member without an avatar has the key, as `null`, as on Synapse.
    let bob_entry = body["joined"][&bob.user_id].as_object().unwrap();
    assert_eq!(bob_entry.get("avatar_url"), Some(&Value::Null), "{body}");
    assert_eq!(bob_entry.get("display_name"), Some(&json!("bob")), "{body}");
}

#[tokio::test]
async fn create_room_inviting_an_unknown_local_user_still_creates_the_room() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let (status, body) = post(
        &s,
        &alice,
        "/createRoom",
        json!({"preset": "private_chat", "invite": ["@nosuchuser:localhost", bob.user_id]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let room = body["room_id"].as_str().unwrap();
    // The known invitee is invited; the unknown one left out.
    assert_eq!(membership_of(&s, &alice, room, &bob.user_id).await.as_deref(), Some("invite"));
    assert_eq!(membership_of(&s, &alice, room, "@nosuchuser:localhost").await, None);
    // Users of other servers still cannot be invited while federation is off.
    expect_error(
        post(&s, &alice, "/createRoom", json!({"invite": ["@someone:other.example"]})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn someone_who_never_set_a_presence_is_offline() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    for (reader, target) in [(&alice, &alice), (&bob, &alice)] {
        let (status, body) =
            s.get(&format!("{V3}/presence/{}/status", target.user_id), Some(&reader.token)).await;
        assert_eq!((status, &body["presence"]), (StatusCode::OK, &json!("offline")), "{body}");
    }
}
