//! The user directory (`POST /user_directory/search`): who can be found by whom.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error, password_auth},
    rooms::{V3, create_room, join},
};

async fn find(s: &TestServer, who: &Session, term: &str, limit: Option<u64>) -> Value {
    let mut body = json!({"search_term": term});
    if let Some(limit) = limit {
        body["limit"] = json!(limit);
    }
    let (status, resp) = s.post(&format!("{V3}/user_directory/search"), Some(&who.token), body).await;
    assert_eq!(status, StatusCode::OK, "{resp}");
    resp
}

async fn found_ids(s: &TestServer, who: &Session, term: &str) -> Vec<String> {
    let resp = find(s, who, term, None).await;
    resp["results"].as_array().unwrap().iter().map(|u| u["user_id"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn finds_users_sharing_a_room_or_in_public_rooms_only() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let dave = s.register("dave", "pw-dave-12345").await;
    let erin = s.register("erin", "pw-erin-12345").await;

    // Alice and Bob share a private room; Carol is alone in hers.
    let private = create_room(&s, &alice, json!({"invite": [bob.user_id]})).await;
    assert_eq!(join(&s, &bob, &private).await.0, StatusCode::OK);
    create_room(&s, &carol, json!({})).await;
    // Dave is in a room published in the directory; Erin in a public (joinable) room.
    create_room(&s, &dave, json!({"preset": "public_chat", "visibility": "public"})).await;
    create_room(&s, &erin, json!({"preset": "public_chat"})).await;

    s.put(
        &format!("{V3}/profile/{}/displayname", bob.user_id),
        Some(&bob.token),
        json!({"displayname": "Robert Tables"}),
    )
    .await;
    s.put(
        &format!("{V3}/profile/{}/avatar_url", bob.user_id),
        Some(&bob.token),
        json!({"avatar_url": "mxc://localhost/bobby"}),
    )
    .await;

    // By display name (word prefix, any case) and by localpart.
    let found = find(&s, &alice, "TAB", None).await;
    assert_eq!(
        found,
        json!({"limited": false, "results": [{
            "user_id": bob.user_id, "display_name": "Robert Tables", "avatar_url": "mxc://localhost/bobby"
        }]})
    );
    assert_eq!(found_ids(&s, &alice, "bo").await, [bob.user_id.as_str()]);
    assert_eq!(found_ids(&s, &alice, "robert tab").await, [bob.user_id.as_str()], "every word must match");
    assert!(found_ids(&s, &alice, "robert smith").await.is_empty());
    assert!(found_ids(&s, &alice, "obert").await.is_empty(), "prefixes of words, not substrings");
    assert_eq!(found_ids(&s, &alice, "@bob:localhost").await, [bob.user_id.as_str()]);

    // A stranger in a private room is not found; members of public rooms are.
    assert!(found_ids(&s, &alice, "carol").await.is_empty());
    assert_eq!(found_ids(&s, &alice, "dave").await, [dave.user_id.as_str()]);
    assert_eq!(found_ids(&s, &alice, "erin").await, [erin.user_id.as_str()]);
    // Carol shares no room with Bob, but finds the public rooms' members.
    assert!(found_ids(&s, &carol, "robert").await.is_empty());
    assert_eq!(found_ids(&s, &carol, "dave").await, [dave.user_id.as_str()]);
    // Once Bob leaves the shared room, Alice no longer finds him.
    s.post(&format!("{V3}/rooms/{private}/leave"), Some(&bob.token), json!({})).await;
    assert!(found_ids(&s, &alice, "robert").await.is_empty());

    assert!(found_ids(&s, &alice, "").await.is_empty());
    expect_error(
        s.post(&format!("{V3}/user_directory/search"), None, json!({"search_term": "a"})).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn limit_and_limited() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    for name in ["team1", "team2", "team3"] {
        let member = s.register(name, "pw-team-12345").await;
        assert_eq!(join(&s, &member, &room).await.0, StatusCode::OK);
    }
    let two = find(&s, &alice, "team", Some(2)).await;
    assert_eq!(two["results"].as_array().unwrap().len(), 2);
    assert_eq!(two["limited"], true);
    let all = find(&s, &alice, "team", None).await;
    assert_eq!(all["results"].as_array().unwrap().len(), 3);
    assert_eq!(all["limited"], false);
    // A whole localpart finds just that user.
    let exact = found_ids(&s, &alice, "team2").await;
    assert_eq!(exact, ["@team2:localhost"]);
}

#[tokio::test]
async fn search_all_local_users_finds_everyone_but_the_deactivated() {
    let s = TestServer::start_with(|c| c.user_directory_search_all_local_users = true).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let caroline = s.register("caroline", "pw-caroline-12").await;
    create_room(&s, &carol, json!({})).await;
    // Carol, in no room with Alice, is found; whole-word before prefix.
    assert_eq!(found_ids(&s, &alice, "carol").await, [carol.user_id.as_str(), caroline.user_id.as_str()]);

    let path = format!("{V3}/account/deactivate");
    let (_, body) = s.post(&path, Some(&caroline.token), json!({})).await;
    let session = body["session"].as_str().unwrap();
    let auth = password_auth("caroline", "pw-caroline-12", Some(session));
    assert_eq!(s.post(&path, Some(&caroline.token), json!({"auth": auth})).await.0, StatusCode::OK);
    assert_eq!(found_ids(&s, &alice, "carol").await, [carol.user_id.as_str()]);
}

#[tokio::test]
async fn users_drop_out_when_they_leave_the_public_room_or_it_stops_being_public() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    // Bob is in one public room (published in the directory too); Carol in another.
    let bobs = create_room(&s, &bob, json!({"preset": "public_chat", "visibility": "public"})).await;
    let carols = create_room(&s, &carol, json!({"preset": "public_chat"})).await;
    assert_eq!(found_ids(&s, &alice, "bob").await, [bob.user_id.as_str()]);
    assert_eq!(found_ids(&s, &alice, "carol").await, [carol.user_id.as_str()]);

    // Carol leaves her public room: nobody outside her rooms finds her any more.
    let (status, _) = s.post(&format!("{V3}/rooms/{carols}/leave"), Some(&carol.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(found_ids(&s, &alice, "carol").await.is_empty());

    // Bob's room turns invite-only, though it is still listed in the directory: by the
    // spec's definition (join rule and history visibility) it is no longer public.
    let (status, body) = s
        .put(
            &format!("{V3}/rooms/{bobs}/state/m.room.join_rules"),
            Some(&bob.token),
            json!({"join_rule": "invite"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(found_ids(&s, &alice, "bob").await.is_empty());
    // World-readable history makes it public again.
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{bobs}/state/m.room.history_visibility"),
            Some(&bob.token),
            json!({"history_visibility": "world_readable"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found_ids(&s, &alice, "bob").await, [bob.user_id.as_str()]);
}
