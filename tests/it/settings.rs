//! What Element's settings pages and start-up call besides the core API: third-party
//! identifiers, third-party protocols, TURN, the admin flag, room summaries and shared rooms.
//! Each answered 404 before, and Element then showed an error page or failed a panel.

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    harness::{TestServer, expect_error},
    rooms::{V3, create_room, join},
    sync::urlencode,
};

#[tokio::test]
async fn third_party_identifiers_are_an_empty_list_and_adding_one_says_why_not() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let token = Some(alice.token.as_str());
    expect_error(
        s.get(&format!("{V3}/account/3pid"), None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    let (status, body) = s.get(&format!("{V3}/account/3pid"), token).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"threepids": []})));

    let email = json!({"client_secret": "secret", "email": "alice@example.com", "send_attempt": 1});
    let phone =
        json!({"client_secret": "secret", "country": "GB", "phone_number": "07700900001", "send_attempt": 1});
    for (path, body, errcode) in [
        ("account/3pid/email/requestToken", &email, "M_THREEPID_MEDIUM_NOT_SUPPORTED"),
        ("account/3pid/msisdn/requestToken", &phone, "M_THREEPID_MEDIUM_NOT_SUPPORTED"),
        ("register/email/requestToken", &email, "M_THREEPID_MEDIUM_NOT_SUPPORTED"),
        ("register/msisdn/requestToken", &phone, "M_THREEPID_MEDIUM_NOT_SUPPORTED"),
        ("account/password/email/requestToken", &email, "M_THREEPID_NOT_FOUND"),
        ("account/password/msisdn/requestToken", &phone, "M_THREEPID_NOT_FOUND"),
    ] {
        expect_error(
            s.post(&format!("{V3}/{path}"), None, body.clone()).await,
            StatusCode::BAD_REQUEST,
            errcode,
        );
    }
    // Without a session validated by a token this server never sends, nothing can be added;
    // binding would need an identity server, and this server trusts none.
    expect_error(
        s.post(&format!("{V3}/account/3pid/add"), token, json!({"client_secret": "secret", "sid": "1"}))
            .await,
        StatusCode::BAD_REQUEST,
        "M_THREEPID_AUTH_FAILED",
    );
    let bind =
        json!({"client_secret": "secret", "sid": "1", "id_server": "id.example.com", "id_access_token": "t"});
    expect_error(
        s.post(&format!("{V3}/account/3pid/bind"), token, bind).await,
        StatusCode::BAD_REQUEST,
        "M_SERVER_NOT_TRUSTED",
    );
    for path in ["delete", "unbind"] {
        let (status, body) = s
            .post(
                &format!("{V3}/account/3pid/{path}"),
                token,
                json!({"medium": "email", "address": "alice@example.com"}),
            )
            .await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"id_server_unbind_result": "no-support"})),
            "{path}"
        );
    }
    // A request missing its fields is still a bad request, not a 200.
    expect_error(
        s.post(&format!("{V3}/account/3pid/add"), token, json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
}

#[tokio::test]
async fn third_party_protocols_are_none_and_lookups_find_nothing() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let token = Some(alice.token.as_str());
    let (status, body) = s.get(&format!("{V3}/thirdparty/protocols"), token).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    for path in [
        "thirdparty/protocol/irc",
        "thirdparty/location/irc",
        "thirdparty/user/irc",
        "thirdparty/location?alias=%23room:localhost",
        "thirdparty/user?userid=@alice:localhost",
    ] {
        expect_error(s.get(&format!("{V3}/{path}"), token).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    }
    expect_error(
        s.get(&format!("{V3}/thirdparty/protocols"), None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn turn_server_is_an_empty_object_when_none_is_configured() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (status, body) = s.get(&format!("{V3}/voip/turnServer"), Some(&alice.token)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    expect_error(
        s.get(&format!("{V3}/voip/turnServer"), None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn the_admin_flag_is_for_admins_to_read_and_set() {
    let s = TestServer::start().await;
    let admin_id = s.services.accounts.create_user("root", "pw-root-12345", true).await.unwrap();
    let root = s.login("root", "pw-root-12345", None).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let flag = |user: &str| format!("/_synapse/admin/v1/users/{user}/admin");

    // Element asks this for the logged-in user: a non-admin gets 403, as on Synapse.
    expect_error(
        s.get(&flag(&alice.user_id), Some(&alice.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(s.get(&flag(&alice.user_id), None).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    let (status, body) = s.get(&flag(admin_id.as_str()), Some(&root.token)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"admin": true})));
    let (status, body) = s.get(&flag(&alice.user_id), Some(&root.token)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"admin": false})));
    expect_error(
        s.get(&flag("@nobody:localhost"), Some(&root.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Only an admin may grant it; then alice is one.
    expect_error(
        s.put(&flag(&alice.user_id), Some(&alice.token), json!({"admin": true})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let (status, _) = s.put(&flag(&alice.user_id), Some(&root.token), json!({"admin": true})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s.get(&flag(&alice.user_id), Some(&alice.token)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"admin": true})));
    // No admin can demote themselves, so the last one cannot vanish by a slip.
    expect_error(
        s.put(&flag(admin_id.as_str()), Some(&root.token), json!({"admin": false})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.put(&flag(&alice.user_id), Some(&root.token), json!({"admin": "yes"})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
}

#[tokio::test]
async fn room_summaries_show_what_the_caller_may_preview() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let public = create_room(
        &s,
        &alice,
        json!({"preset": "public_chat", "name": "Town square", "room_alias_name": "square",
               "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
    )
    .await;
    let private = create_room(&s, &alice, json!({"preset": "private_chat", "name": "Secret"})).await;
    let summary = |room: &str| format!("/_matrix/client/v1/room_summary/{}", urlencode(room));

    // Anyone may preview a public room, by ID or alias, even without a token.
    for (room, token) in [(public.as_str(), None), ("#square:localhost", Some(bob.token.as_str()))] {
        let (status, body) = s.get(&summary(room), token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["room_id"], public);
        assert_eq!(body["name"], "Town square");
        assert_eq!(body["join_rule"], "public");
        assert_eq!(body["num_joined_members"], 1);
        assert_eq!(body["encryption"], "m.megolm.v1.aes-sha2");
        assert_eq!(body["room_version"], "12");
        assert_eq!(body["canonical_alias"], "#square:localhost");
        assert!(body.get("membership").is_none(), "{body}");
    }
    let (_, body) = s.get(&summary(&public), Some(&alice.token)).await;
    assert_eq!(body["membership"], "join", "{body}");
    // MSC3266's unstable path, which clients use when `im.nheko.summary` is advertised.
    let unstable = format!("/_matrix/client/unstable/im.nheko.summary/rooms/{}/summary", urlencode(&public));
    let (status, body) = s.get(&unstable, Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["room_id"].as_str(), body["membership"].as_str()),
        (Some(public.as_str()), Some("join"))
    );
    let (_, versions) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(versions["unstable_features"]["im.nheko.summary"], true, "{versions}");

    // A private room is previewed by its members and invitees only; to others it is unknown.
    expect_error(s.get(&summary(&private), Some(&bob.token)).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    expect_error(s.get(&summary(&private), None).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    let (status, _) = s
        .post(&format!("{V3}/rooms/{private}/invite"), Some(&alice.token), json!({"user_id": bob.user_id}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s.get(&summary(&private), Some(&bob.token)).await;
    assert_eq!(
        (status, &body["membership"], &body["name"]),
        (StatusCode::OK, &json!("invite"), &json!("Secret")),
        "{body}"
    );
    expect_error(
        s.get(&summary("#nowhere:localhost"), Some(&bob.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn mutual_rooms_are_the_rooms_both_users_joined() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let mut shared = Vec::new();
    for _ in 0..3 {
        let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
        assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
        shared.push(room);
    }
    // Rooms only one of them is in, or that bob left, are not shared.
    create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let left = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&s, &bob, &left).await.0, StatusCode::OK);
    let (status, _) = s.post(&format!("{V3}/rooms/{left}/leave"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    shared.sort();

    let (status, body) = s
        .get(
            &format!("/_matrix/client/v1/mutual_rooms?user_id={}", urlencode(&bob.user_id)),
            Some(&alice.token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["count"], 3);
    assert_eq!(body["joined"], json!(shared));
    assert!(body.get("next_batch").is_none(), "{body}");
    let (status, body) = s
        .get(
            &format!(
                "/_matrix/client/unstable/uk.half-shot.msc2666/user/mutual_rooms?user_id={}",
                urlencode(&alice.user_id)
            ),
            Some(&bob.token),
        )
        .await;
    assert_eq!((status, &body["joined"]), (StatusCode::OK, &json!(shared)), "{body}");
    expect_error(
        s.get(
            &format!("/_matrix/client/v1/mutual_rooms?user_id={}", urlencode(&alice.user_id)),
            Some(&alice.token),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let (status, body) = s
        .get(
            &format!("/_matrix/client/v1/mutual_rooms?user_id={}", urlencode("@ghost:localhost")),
            Some(&alice.token),
        )
        .await;
    assert_eq!((status, &body["joined"]), (StatusCode::OK, &json!([])), "{body}");
}
