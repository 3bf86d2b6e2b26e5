//! Synapse's admin API for users, devices, registration tokens and server notices, through
//! HTTP as synapse-admin and Draupnir call it; answers compared with Synapse's.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error},
    rooms::{V3, create_room, join, send_text},
    sync::sync,
};

const V1: &str = "/_synapse/admin/v1";
const V2: &str = "/_synapse/admin/v2";

/// A server with an admin `root` logged in.
async fn with_admin() -> (TestServer, Session) {
    with_admin_config(|_| {}).await
}

async fn with_admin_config(adjust: impl FnOnce(&mut conduit::config::Config)) -> (TestServer, Session) {
    let s = TestServer::start_with(adjust).await;
    s.services.accounts.create_user("root", "pw-root-12345", true).await.unwrap();
    let root = s.login("root", "pw-root-12345", None).await;
    (s, root)
}

fn now(s: &TestServer) -> u64 {
    use conduit::service::clock::Clock as _;
    s.clock.now_ms()
}

fn ok(result: (StatusCode, Value)) -> Value {
    assert_eq!(result.0, StatusCode::OK, "{}", result.1);
    result.1
}

#[tokio::test]
async fn server_version_names_conduit() {
    let (s, _root) = with_admin().await;
    // As on Synapse, without authentication: tools ask before logging in.
    let body = ok(s.get(&format!("{V1}/server_version"), None).await);
    let version = body["server_version"].as_str().unwrap();
    assert!(version.starts_with("conduit "), "{version}");
    assert_eq!(version, format!("conduit {}", env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn every_route_refuses_non_admins() {
    let (s, _root) = with_admin().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let u = "@alice:localhost";
    let routes: Vec<(Method, String)> = vec![
        (Method::GET, format!("{V2}/users")),
        (Method::GET, "/_synapse/admin/v3/users".to_owned()),
        (Method::GET, format!("{V2}/users/{u}")),
        (Method::PUT, format!("{V2}/users/{u}")),
        (Method::POST, format!("{V1}/deactivate/{u}")),
        (Method::POST, format!("{V1}/reset_password/{u}")),
        (Method::GET, format!("{V1}/whois/{u}")),
        (Method::POST, format!("{V1}/users/{u}/login")),
        (Method::GET, format!("{V1}/users/{u}/joined_rooms")),
        (Method::GET, format!("{V1}/users/{u}/memberships")),
        (Method::GET, format!("{V1}/users/{u}/pushers")),
        (Method::GET, format!("{V1}/users/{u}/accountdata")),
        (Method::GET, format!("{V1}/users/{u}/admin")),
        (Method::PUT, format!("{V1}/users/{u}/admin")),
        (Method::GET, format!("{V1}/username_available?username=bob")),
        (Method::POST, format!("{V1}/users/{u}/shadow_ban")),
        (Method::DELETE, format!("{V1}/users/{u}/shadow_ban")),
        (Method::PUT, format!("{V1}/suspend/{u}")),
        (Method::GET, format!("{V2}/users/{u}/devices")),
        (Method::GET, format!("{V2}/users/{u}/devices/{}", alice.device_id)),
        (Method::PUT, format!("{V2}/users/{u}/devices/{}", alice.device_id)),
        (Method::DELETE, format!("{V2}/users/{u}/devices/{}", alice.device_id)),
        (Method::POST, format!("{V2}/users/{u}/delete_devices")),
        (Method::GET, format!("{V1}/registration_tokens")),
        (Method::POST, format!("{V1}/registration_tokens/new")),
        (Method::GET, format!("{V1}/registration_tokens/abc")),
        (Method::PUT, format!("{V1}/registration_tokens/abc")),
        (Method::DELETE, format!("{V1}/registration_tokens/abc")),
        (Method::POST, format!("{V1}/send_server_notice")),
        (Method::PUT, format!("{V1}/send_server_notice/txn1")),
    ];
    for (method, path) in routes {
        let result = s.call(method.clone(), &path, Some(&alice.token), Some(json!({}))).await;
        let body = expect_error(result, StatusCode::FORBIDDEN, "M_FORBIDDEN");
        assert_eq!(body["error"], "You are not a server admin", "{method} {path}");
        // And without a token, the usual 401.
        let result = s.call(method.clone(), &path, None, Some(json!({}))).await;
        expect_error(result, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    }
    // Nothing happened to alice along the way.
    let (status, _) = s.get(&format!("{V3}/account/whoami"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn users_are_listed_filtered_sorted_and_paged() {
    let (s, root) = with_admin().await;
    let t = Some(root.token.as_str());
    for name in ["carol", "bob", "dave"] {
        s.register(name, "pw-some-12345").await;
    }
    s.clock.advance_ms(5000);
    let eve = s.register("eve", "pw-some-12345").await;
    ok(s.put(&format!("{V2}/users/@bob:localhost"), t, json!({"displayname": "zed Bobson"})).await);
    ok(s.post(&format!("{V1}/deactivate/@dave:localhost"), t, json!({})).await);
    ok(s.put(&format!("{V2}/users/{}", eve.user_id), t, json!({"locked": true})).await);

    let names = |body: &Value| -> Vec<String> {
        body["users"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap().to_owned()).collect()
    };
    // v2: deactivated and locked accounts are left out unless asked for.
    let all = ok(s.get(&format!("{V2}/users"), t).await);
    assert_eq!(names(&all), ["@bob:localhost", "@carol:localhost", "@root:localhost"]);
    assert_eq!(all["total"], 3);
    assert!(all.get("next_token").is_none());
    let bob = &all["users"][0];
    assert_eq!(bob["displayname"], "zed Bobson");
    for key in ["is_guest", "admin", "deactivated", "shadow_banned", "erased", "locked"] {
        assert_eq!(bob[key], false, "{key}: {bob}");
    }
    assert!(bob["creation_ts"].as_u64().is_some() && bob["last_seen_ts"].as_u64().is_some(), "{bob}");
    assert_eq!(bob["user_type"], Value::Null);
    assert_eq!(all["users"][2]["admin"], true);

    let with = ok(s.get(&format!("{V2}/users?deactivated=true&locked=true"), t).await);
    assert_eq!(with["total"], 5);
    // v3: deactivated is tri-state.
    let only = ok(s.get(&format!("/_synapse/admin/v3/users?deactivated=true"), t).await);
    assert_eq!(names(&only), ["@dave:localhost"]);
    assert_eq!(only["users"][0]["deactivated"], true);
    let none = ok(s.get(&format!("/_synapse/admin/v3/users?deactivated=false&locked=true"), t).await);
    assert_eq!(names(&none), ["@bob:localhost", "@carol:localhost", "@eve:localhost", "@root:localhost"]);

    // Filters: admins, name (localpart or display name), user_id.
    assert_eq!(names(&ok(s.get(&format!("{V2}/users?admins=true"), t).await)), ["@root:localhost"]);
    assert_eq!(
        names(&ok(s.get(&format!("{V2}/users?admins=false"), t).await)),
        ["@bob:localhost", "@carol:localhost"]
    );
    assert_eq!(names(&ok(s.get(&format!("{V2}/users?name=zed"), t).await)), ["@bob:localhost"]);
    assert_eq!(names(&ok(s.get(&format!("{V2}/users?user_id=aro"), t).await)), ["@carol:localhost"]);

    // Sorting and paging.
    let by_name_back = ok(s.get(&format!("{V2}/users?dir=b"), t).await);
    assert_eq!(names(&by_name_back), ["@root:localhost", "@carol:localhost", "@bob:localhost"]);
    let by_display = ok(s.get(&format!("{V2}/users?order_by=displayname"), t).await);
    assert_eq!(names(&by_display), ["@carol:localhost", "@root:localhost", "@bob:localhost"]);
    let newest = ok(s.get(&format!("{V2}/users?order_by=creation_ts&dir=b&locked=true"), t).await);
    assert_eq!(names(&newest)[0], "@eve:localhost");
    let page = ok(s.get(&format!("{V2}/users?limit=2"), t).await);
    assert_eq!((names(&page).len(), &page["next_token"], &page["total"]), (2, &json!("2"), &json!(3)));
    let rest = ok(s.get(&format!("{V2}/users?limit=2&from=2"), t).await);
    assert_eq!(names(&rest), ["@root:localhost"]);
    assert!(rest.get("next_token").is_none());
    expect_error(
        s.get(&format!("{V2}/users?order_by=shoe_size"), t).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(s.get(&format!("{V2}/users?dir=up"), t).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    expect_error(s.get(&format!("{V2}/users?limit=-1"), t).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
}

#[tokio::test]
async fn put_user_creates_with_201_and_changes_with_200() {
    let (s, root) = with_admin().await;
    let t = Some(root.token.as_str());
    let path = format!("{V2}/users/@frank:localhost");
    expect_error(s.get(&path, t).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    expect_error(
        s.get(&format!("{V2}/users/@frank:elsewhere"), t).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.put(&format!("{V2}/users/@frank:elsewhere"), t, json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    let (status, created) = s
        .put(
            &path,
            t,
            json!({"password": "pw-frank-123", "displayname": "Frank", "admin": false, "user_type": "bot",
                   "avatar_url": "mxc://localhost/frank"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], "@frank:localhost");
    assert_eq!(created["displayname"], "Frank");
    assert_eq!(created["avatar_url"], "mxc://localhost/frank");
    assert_eq!(created["user_type"], "bot");
    assert_eq!(
        (&created["admin"], &created["deactivated"], &created["suspended"]),
        (&json!(false), &json!(false), &json!(false))
    );
    assert_eq!(created["threepids"], json!([]));
    assert_eq!(created["external_ids"], json!([]));
    assert!(created["creation_ts"].as_u64().is_some());
    let frank = s.login("frank", "pw-frank-123", None).await;

    // Changes: profile, admin, password (logging out by default), user type.
    let (status, changed) =
        s.put(&path, t, json!({"displayname": "Franklin", "admin": true, "user_type": null})).await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(
        (&changed["displayname"], &changed["admin"], &changed["user_type"]),
        (&json!("Franklin"), &json!(true), &Value::Null)
    );
    let (status, profile) = s.get(&format!("{V3}/profile/@frank:localhost"), Some(&frank.token)).await;
    assert_eq!((status, &profile["displayname"]), (StatusCode::OK, &json!("Franklin")));
    ok(s.put(&path, t, json!({"password": "pw-frank-456", "logout_devices": false})).await);
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(&frank.token)).await.0, StatusCode::OK);
    ok(s.put(&path, t, json!({"password": "pw-frank-789"})).await);
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&frank.token)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    s.login("frank", "pw-frank-789", None).await;

    // Bad input.
    expect_error(
        s.put(&path, t, json!({"deactivated": true, "locked": true})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.put(&path, t, json!({"user_type": "wizard"})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(s.put(&path, t, json!({"admin": "yes"})).await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    expect_error(s.put(&path, t, json!({"password": 5})).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    expect_error(
        s.put(&format!("{V2}/users/{}", root.user_id), t, json!({"admin": false})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    // Deactivate through PUT, and back.
    let gone = ok(s.put(&path, t, json!({"deactivated": true})).await);
    assert_eq!(gone["deactivated"], true);
    let back = ok(s.put(&path, t, json!({"deactivated": false, "password": "pw-frank-again"})).await);
    assert_eq!(back["deactivated"], false);
    s.login("frank", "pw-frank-again", None).await;
}

#[tokio::test]
async fn deactivate_with_erase_clears_the_profile_and_leaves_rooms() {
    let (s, root) = with_admin().await;
    let t = Some(root.token.as_str());
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({})).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);

    expect_error(
        s.post(&format!("{V1}/deactivate/@nobody:localhost"), t, json!({})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.post(&format!("{V1}/deactivate/@bob:elsewhere"), t, json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.post(&format!("{V1}/deactivate/{}", bob.user_id), t, json!({"erase": "yes"})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
    let body = ok(s.post(&format!("{V1}/deactivate/{}", bob.user_id), t, json!({"erase": true})).await);
    assert_eq!(body, json!({"id_server_unbind_result": "success"}));

    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&bob.token)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    let details = ok(s.get(&format!("{V2}/users/{}", bob.user_id), t).await);
    assert_eq!(
        (&details["deactivated"], &details["erased"], &details["displayname"]),
        (&json!(true), &json!(true), &Value::Null)
    );
    // Bob left the room; alice sees his leave.
    let (status, members) = s.get(&format!("{V3}/rooms/{room}/joined_members"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(members["joined"].get(&bob.user_id).is_none(), "{members}");
    let rooms = ok(s.get(&format!("{V1}/users/{}/joined_rooms", bob.user_id), t).await);
    assert_eq!(rooms, json!({"joined_rooms": [], "total": 0}));
    let logged = s
        .post(
            &format!("{V3}/login"),
            None,
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "pw-bob-12345"}),
        )
        .await;
    expect_error(logged, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // Without erase, the profile stays for the record.
    let carol = s.register("carol", "pw-carol-123").await;
    ok(s.post(&format!("{V1}/deactivate/{}", carol.user_id), t, json!({})).await);
    let details = ok(s.get(&format!("{V2}/users/{}", carol.user_id), t).await);
    assert_eq!((&details["erased"], &details["displayname"]), (&json!(false), &json!("carol")));
}

#[tokio::test]
async fn reset_password_logs_out_unless_asked_not_to() {
    let (s, root) = with_admin().await;
    let t = Some(root.token.as_str());
    let alice = s.register("alice", "pw-alice-123").await;
    let path = format!("{V1}/reset_password/{}", alice.user_id);
    ok(s.post(&path, t, json!({"new_password": "pw-new-12345", "logout_devices": false})).await);
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(&alice.token)).await.0, StatusCode::OK);
    ok(s.post(&path, t, json!({"new_password": "pw-newer-12345"})).await);
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&alice.token)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    s.login("alice", "pw-newer-12345", None).await;
    expect_error(s.post(&path, t, json!({})).await, StatusCode::BAD_REQUEST, "M_MISSING_PARAM");
    expect_error(
        s.post(&format!("{V1}/reset_password/@nobody:localhost"), t, json!({"new_password": "x-12345678"}))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn whois_and_devices_are_shown_renamed_and_deleted() {
    let (s, root) = with_admin().await;
    let t = Some(root.token.as_str());
    let alice = s.register("alice", "pw-alice-123").await;
    let second = s.login("alice", "pw-alice-123", Some("SECOND")).await;
    let third = s.login("alice", "pw-alice-123", Some("THIRD")).await;

    let whois = ok(s.get(&format!("{V1}/whois/{}", alice.user_id), t).await);
    assert_eq!(whois["user_id"], alice.user_id);
    assert!(whois["devices"]["SECOND"]["sessions"][0]["connections"][0]["ip"].is_string(), "{whois}");
    expect_error(
        s.get(&format!("{V1}/whois/@nobody:localhost"), t).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get(&format!("{V1}/whois/@x:elsewhere"), t).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    let devices = ok(s.get(&format!("{V2}/users/{}/devices", alice.user_id), t).await);
    assert_eq!(devices["total"], 3);
    let one =
        &devices["devices"].as_array().unwrap().iter().find(|d| d["device_id"] == "SECOND").unwrap().clone();
    assert_eq!(one["user_id"], alice.user_id);
    assert!(
        one["last_seen_ts"].is_u64()
            && one.get("last_seen_ip").is_some()
            && one.get("display_name").is_some()
    );

    let device = format!("{V2}/users/{}/devices/SECOND", alice.user_id);
    ok(s.put(&device, t, json!({"display_name": "Named by the admin"})).await);
    assert_eq!(ok(s.get(&device, t).await)["display_name"], "Named by the admin");
    expect_error(
        s.get(&format!("{V2}/users/{}/devices/NOPE", alice.user_id), t).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get(&format!("{V2}/users/@nobody:localhost/devices"), t).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    ok(s.call(Method::DELETE, &device, t, None).await);
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&second.token)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    ok(s.post(
        &format!("{V2}/users/{}/delete_devices", alice.user_id),
        t,
        json!({"devices": ["THIRD", "UNKNOWN"]}),
    )
    .await);
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&third.token)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(&alice.token)).await.0, StatusCode::OK);
    assert_eq!(ok(s.get(&format!("{V2}/users/{}/devices", alice.user_id), t).await)["total"], 1);
    expect_error(
        s.post(&format!("{V2}/users/{}/delete_devices", alice.user_id), t, json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
    );
}

#[tokio::test]
async fn login_as_gives_a_hidden_session_that_expires() {
    let (s, root) = with_admin().await;
    let t = Some(root.token.as_str());
    let alice = s.register("alice", "pw-alice-123").await;
    let path = format!("{V1}/users/{}/login", alice.user_id);
    let until = now(&s) + 60_000;
    let body = ok(s.post(&path, t, json!({"valid_until_ms": until})).await);
    let token = body["access_token"].as_str().unwrap().to_owned();
    let me = ok(s.get(&format!("{V3}/account/whoami"), Some(&token)).await);
    assert_eq!(me["user_id"], alice.user_id);

    // The puppet session is not among alice's devices, nor the admin's view of them.
    let own = ok(s.get(&format!("{V3}/devices"), Some(&alice.token)).await);
    assert_eq!(own["devices"].as_array().unwrap().len(), 1, "{own}");
    assert_eq!(ok(s.get(&format!("{V2}/users/{}/devices", alice.user_id), t).await)["total"], 1);

    // It ends at valid_until_ms.
    s.clock.advance_ms(61000);
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&token)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );

    // Without an expiry it lasts, and ends with alice's logout of everything.
    let token = ok(s.post(&path, t, json!({})).await)["access_token"].as_str().unwrap().to_owned();
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(&token)).await.0, StatusCode::OK);
    ok(s.post(&format!("{V3}/logout/all"), Some(&alice.token), json!({})).await);
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&token)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );

    expect_error(
        s.post(&format!("{V1}/users/{}/login", root.user_id), t, json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.post(&format!("{V1}/users/@nobody:localhost/login"), t, json!({})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.post(&format!("{V1}/users/@x:elsewhere/login"), t, json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.post(&path, t, json!({"valid_until_ms": "soon"})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn rooms_memberships_pushers_and_account_data_of_a_user() {
    let (s, root) = with_admin().await;
    let t = Some(root.token.as_str());
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let joined = create_room(&s, &alice, json!({})).await;
    let invited = create_room(&s, &bob, json!({"invite": [alice.user_id]})).await;
    ok(s.put(
        &format!("{V3}/user/{}/account_data/org.example.setting", alice.user_id),
        Some(&alice.token),
        json!({"on": true}),
    )
    .await);
    ok(s.put(
        &format!("{V3}/user/{}/rooms/{joined}/tags/u.work", alice.user_id),
        Some(&alice.token),
        json!({}),
    )
    .await);
    ok(s
        .post(
            &format!("{V3}/pushers/set"),
            Some(&alice.token),
            json!({"kind": "http", "app_id": "org.example.app", "pushkey": "key-1", "app_display_name": "App",
                   "device_display_name": "Phone", "lang": "en", "data": {"url": "https://push.example.org/_matrix/push/v1/notify"}}),
        )
        .await);

    let rooms = ok(s.get(&format!("{V1}/users/{}/joined_rooms", alice.user_id), t).await);
    assert_eq!(rooms, json!({"joined_rooms": [joined], "total": 1}));
    let memberships = ok(s.get(&format!("{V1}/users/{}/memberships", alice.user_id), t).await);
    assert_eq!(memberships["memberships"][&joined], "join");
    assert_eq!(memberships["memberships"][&invited], "invite");
    let pushers = ok(s.get(&format!("{V1}/users/{}/pushers", alice.user_id), t).await);
    assert_eq!(pushers["total"], 1);
    assert_eq!(pushers["pushers"][0]["pushkey"], "key-1");
    assert_eq!(pushers["pushers"][0]["app_display_name"], "App");
    let data = ok(s.get(&format!("{V1}/users/{}/accountdata", alice.user_id), t).await);
    assert_eq!(data["account_data"]["global"]["org.example.setting"], json!({"on": true}));
    assert!(data["account_data"]["rooms"][&joined]["m.tag"]["tags"]["u.work"].is_object(), "{data}");

    for what in ["joined_rooms", "memberships", "pushers", "accountdata"] {
        expect_error(
            s.get(&format!("{V1}/users/@nobody:localhost/{what}"), t).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
        expect_error(
            s.get(&format!("{V1}/users/@x:elsewhere/{what}"), t).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
    }
}

#[tokio::test]
async fn username_availability_ignores_the_registration_policy() {
    let (s, root) = with_admin_config(|c| c.allow_registration = false).await;
    let t = Some(root.token.as_str());
    let path = |name: &str| format!("{V1}/username_available?username={name}");
    assert_eq!(ok(s.get(&path("newbie"), t).await), json!({"available": true}));
    expect_error(s.get(&path("root"), t).await, StatusCode::BAD_REQUEST, "M_USER_IN_USE");
    expect_error(s.get(&path("bad%20name"), t).await, StatusCode::BAD_REQUEST, "M_INVALID_USERNAME");
    expect_error(
        s.get(&format!("{V1}/username_available"), t).await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
    );
}

#[tokio::test]
async fn shadow_banned_users_see_success_and_others_see_nothing() {
    let (s, root) = with_admin().await;
    let t = Some(root.token.as_str());
    let alice = s.register("alice", "pw-alice-123").await;
    let mallory = s.register("mallory", "pw-mallory-123").await;
    let carol = s.register("carol", "pw-carol-123").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&s, &mallory, &room).await.0, StatusCode::OK);
    expect_error(
        s.post(&format!("{V1}/users/@x:elsewhere/shadow_ban"), t, json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.post(&format!("{V1}/users/@nobody:localhost/shadow_ban"), t, json!({})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_eq!(
        ok(s.post(&format!("{V1}/users/{}/shadow_ban", mallory.user_id), t, json!({})).await),
        json!({})
    );
    assert_eq!(ok(s.get(&format!("{V2}/users/{}", mallory.user_id), t).await)["shadow_banned"], true);

    // A message, a state event and an invite all answer as if they worked.
    let fake = send_text(&s, &mallory, &room, "t1", "spam").await;
    assert!(fake.starts_with('$'));
    let state = ok(s
        .put(&format!("{V3}/rooms/{room}/state/org.example.spam/"), Some(&mallory.token), json!({"x": 1}))
        .await);
    assert!(state["event_id"].as_str().unwrap().starts_with('$'));
    ok(s.post(&format!("{V3}/rooms/{room}/invite"), Some(&mallory.token), json!({"user_id": carol.user_id}))
        .await);
    // A room with invites is made without them.
    let own = create_room(&s, &mallory, json!({"invite": [carol.user_id]})).await;

    // Nobody else sees any of it.
    let seen = sync(&s, &alice, "").await;
    let timeline = seen["rooms"]["join"][&room]["timeline"]["events"].to_string();
    assert!(!timeline.contains("spam") && !timeline.contains(&fake), "{timeline}");
    let carols = sync(&s, &carol, "").await;
    assert!(
        carols["rooms"]["invite"].get(&room).is_none() && carols["rooms"]["invite"].get(&own).is_none(),
        "{carols}"
    );
    expect_error(
        s.get(&format!("{V3}/rooms/{room}/event/{fake}"), Some(&alice.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Lifted, mallory is heard again.
    ok(s.call(Method::DELETE, &format!("{V1}/users/{}/shadow_ban", mallory.user_id), t, None).await);
    send_text(&s, &mallory, &room, "t2", "hello again").await;
    let seen = sync(&s, &alice, "").await;
    assert!(seen["rooms"]["join"][&room]["timeline"]["events"].to_string().contains("hello again"));
}

#[tokio::test]
async fn suspended_users_get_m_user_suspended_and_can_still_read_and_leave() {
    let (s, root) = with_admin().await;
    let t = Some(root.token.as_str());
    let alice = s.register("alice", "pw-alice-123").await;
    let sam = s.register("sam", "pw-sam-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let other = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&s, &sam, &room).await.0, StatusCode::OK);
    let mine = send_text(&s, &sam, &room, "t0", "before").await;
    let theirs = send_text(&s, &alice, &room, "t0", "hers").await;

    let body = ok(s.put(&format!("{V1}/suspend/{}", sam.user_id), t, json!({"suspend": true})).await);
    assert_eq!(body, json!({"user_@sam:localhost_suspended": true}));
    assert_eq!(ok(s.get(&format!("{V2}/users/{}", sam.user_id), t).await)["suspended"], true);
    expect_error(
        s.put(&format!("{V1}/suspend/@nobody:localhost"), t, json!({"suspend": true})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.put(&format!("{V1}/suspend/@x:elsewhere"), t, json!({"suspend": true})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.put(&format!("{V1}/suspend/{}", sam.user_id), t, json!({"suspend": "yes"})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );

    let suspended = |r: (StatusCode, Value)| expect_error(r, StatusCode::FORBIDDEN, "M_USER_SUSPENDED");
    let tok = Some(sam.token.as_str());
    suspended(
        s.put(
            &format!("{V3}/rooms/{room}/send/m.room.message/t1"),
            tok,
            json!({"msgtype": "m.text", "body": "x"}),
        )
        .await,
    );
    suspended(s.put(&format!("{V3}/rooms/{room}/state/org.example/"), tok, json!({})).await);
    suspended(join(&s, &sam, &other).await);
    suspended(s.post(&format!("{V3}/rooms/{room}/invite"), tok, json!({"user_id": root.user_id})).await);
    suspended(s.post(&format!("{V3}/createRoom"), tok, json!({})).await);
    suspended(
        s.put(&format!("{V3}/profile/{}/displayname", sam.user_id), tok, json!({"displayname": "S"})).await,
    );
    suspended(s.put(&format!("{V3}/rooms/{room}/redact/{theirs}/r1"), tok, json!({})).await);

    // Reading, redacting their own events and leaving still work.
    let seen = sync(&s, &sam, "").await;
    assert!(seen["rooms"]["join"][&room]["timeline"]["events"].to_string().contains("hers"));
    ok(s.get(&format!("{V3}/rooms/{room}/messages?dir=b"), tok).await);
    ok(s.put(&format!("{V3}/rooms/{room}/redact/{mine}/r2"), tok, json!({})).await);
    ok(s.post(&format!("{V3}/rooms/{room}/leave"), tok, json!({})).await);

    ok(s.put(&format!("{V1}/suspend/{}", sam.user_id), t, json!({"suspend": false})).await);
    assert_eq!(join(&s, &sam, &other).await.0, StatusCode::OK);

    // The spec's endpoints (v1.18) do the same, for admins only, checked before the lookup.
    let spec = format!("/_matrix/client/v1/admin/suspend/{}", sam.user_id);
    assert_eq!(ok(s.get(&spec, t).await), json!({"suspended": false}));
    assert_eq!(ok(s.put(&spec, t, json!({"suspended": true})).await), json!({"suspended": true}));
    suspended(
        s.put(
            &format!("{V3}/rooms/{other}/send/m.room.message/t9"),
            tok,
            json!({"msgtype": "m.text", "body": "x"}),
        )
        .await,
    );
    let unstable = format!("/_matrix/client/unstable/uk.timedout.msc4323/admin/suspend/{}", sam.user_id);
    assert_eq!(ok(s.get(&unstable, t).await), json!({"suspended": true}));
    expect_error(s.get(&spec, tok).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(
        s.get("/_matrix/client/v1/admin/suspend/@nobody:localhost", tok).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(
        s.get("/_matrix/client/v1/admin/suspend/@nobody:localhost", t).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn locked_users_get_m_user_locked_with_soft_logout() {
    let (s, root) = with_admin().await;
    let t = Some(root.token.as_str());
    let alice = s.register("alice", "pw-alice-123").await;
    let second = s.login("alice", "pw-alice-123", None).await;
    let path = format!("{V2}/users/{}", alice.user_id);
    assert_eq!(ok(s.put(&path, t, json!({"locked": true})).await)["locked"], true);

    for (method, url) in [
        (Method::GET, format!("{V3}/account/whoami")),
        (Method::GET, format!("{V3}/sync")),
        (Method::GET, format!("{V3}/devices")),
    ] {
        let body = expect_error(
            s.call(method, &url, Some(&alice.token), None).await,
            StatusCode::UNAUTHORIZED,
            "M_USER_LOCKED",
        );
        assert_eq!(body["soft_logout"], true, "{body}");
    }
    // Logging in again is refused too, and so says why only to whoever knows the password.
    let login = |password: &str| json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": password});
    expect_error(
        s.post(&format!("{V3}/login"), None, login("pw-alice-123")).await,
        StatusCode::UNAUTHORIZED,
        "M_USER_LOCKED",
    );
    expect_error(
        s.post(&format!("{V3}/login"), None, login("wrong-password")).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // Logging out is allowed.
    ok(s.post(&format!("{V3}/logout"), Some(&second.token), json!({})).await);

    // Unlocked, the same session works again: it was never ended.
    assert_eq!(ok(s.put(&path, t, json!({"locked": false})).await)["locked"], false);
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(&alice.token)).await.0, StatusCode::OK);

    // The spec's endpoint (v1.18) locks too.
    let spec = format!("/_matrix/client/v1/admin/lock/{}", alice.user_id);
    assert_eq!(ok(s.put(&spec, t, json!({"locked": true})).await), json!({"locked": true}));
    assert_eq!(ok(s.get(&spec, t).await), json!({"locked": true}));
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&alice.token)).await,
        StatusCode::UNAUTHORIZED,
        "M_USER_LOCKED",
    );
    assert_eq!(ok(s.put(&spec, t, json!({"locked": false})).await), json!({"locked": false}));
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(&alice.token)).await.0, StatusCode::OK);
}

/// Register `name` with a registration token, as clients do (flows probe, then the stage).
async fn register_with_token(s: &TestServer, name: &str, token: &str) -> (StatusCode, Value) {
    let (status, body) =
        s.post(&format!("{V3}/register"), None, json!({"username": name, "password": "pw-new-12345"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["flows"][0]["stages"][0], "m.login.registration_token", "{body}");
    let session = body["session"].as_str().unwrap().to_owned();
    s.post(
        &format!("{V3}/register"),
        None,
        json!({"username": name, "password": "pw-new-12345",
               "auth": {"type": "m.login.registration_token", "token": token, "session": session}}),
    )
    .await
}

#[tokio::test]
async fn registration_tokens_are_made_changed_and_deleted() {
    let (s, root) = with_admin().await;
    let t = Some(root.token.as_str());
    let tokens = format!("{V1}/registration_tokens");
    assert_eq!(ok(s.get(&tokens, t).await), json!({"registration_tokens": []}));

    let made = ok(s.post(&format!("{tokens}/new"), t, json!({"token": "abcd", "uses_allowed": 3})).await);
    assert_eq!(
        made,
        json!({"token": "abcd", "uses_allowed": 3, "pending": 0, "completed": 0, "expiry_time": null})
    );
    let random = ok(s.post(&format!("{tokens}/new"), t, json!({"length": 20})).await);
    assert_eq!(random["token"].as_str().unwrap().len(), 20);
    let default = ok(s.post(&format!("{tokens}/new"), t, json!({})).await);
    assert_eq!(default["token"].as_str().unwrap().len(), 16);
    assert_eq!(default["uses_allowed"], Value::Null);

    expect_error(
        s.post(&format!("{tokens}/new"), t, json!({"token": "abcd"})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.post(&format!("{tokens}/new"), t, json!({"token": "no spaces"})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.post(&format!("{tokens}/new"), t, json!({"length": 65})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.post(&format!("{tokens}/new"), t, json!({"uses_allowed": -1})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let past = now(&s) - 1;
    expect_error(
        s.post(&format!("{tokens}/new"), t, json!({"expiry_time": past})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    assert_eq!(ok(s.get(&format!("{tokens}/abcd"), t).await)["uses_allowed"], 3);
    let future = now(&s) + 3_600_000;
    let changed =
        ok(s.put(&format!("{tokens}/abcd"), t, json!({"uses_allowed": null, "expiry_time": future})).await);
    assert_eq!((&changed["uses_allowed"], &changed["expiry_time"]), (&Value::Null, &json!(future)));
    expect_error(s.get(&format!("{tokens}/nope"), t).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    expect_error(s.put(&format!("{tokens}/nope"), t, json!({})).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    assert_eq!(ok(s.get(&tokens, t).await)["registration_tokens"].as_array().unwrap().len(), 3);

    // `valid` filters: a used-up token is not valid.
    ok(s.put(&format!("{tokens}/abcd"), t, json!({"uses_allowed": 0})).await);
    let valid = ok(s.get(&format!("{tokens}?valid=true"), t).await);
    assert_eq!(valid["registration_tokens"].as_array().unwrap().len(), 2);
    let invalid = ok(s.get(&format!("{tokens}?valid=false"), t).await);
    assert_eq!(invalid["registration_tokens"][0]["token"], "abcd");

    ok(s.call(Method::DELETE, &format!("{tokens}/abcd"), t, None).await);
    expect_error(
        s.call(Method::DELETE, &format!("{tokens}/abcd"), t, None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn registration_counts_token_uses_and_refuses_used_up_or_expired_tokens() {
    let (s, root) = with_admin_config(|c| {
        c.registration_requires_token = true;
        c.uiaa_session_lifetime_secs = 600;
    })
    .await;
    let t = Some(root.token.as_str());
    let tokens = format!("{V1}/registration_tokens");
    ok(s.post(&format!("{tokens}/new"), t, json!({"token": "twice", "uses_allowed": 2})).await);
    let validity = |token: &str| {
        format!("/_matrix/client/v1/register/m.login.registration_token/validity?token={token}")
    };
    assert_eq!(ok(s.get(&validity("twice"), None).await), json!({"valid": true}));
    assert_eq!(ok(s.get(&validity("other"), None).await), json!({"valid": false}));

    let (status, body) = register_with_token(&s, "first", "twice").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let counts = ok(s.get(&format!("{tokens}/twice"), t).await);
    assert_eq!((&counts["pending"], &counts["completed"]), (&json!(0), &json!(1)));

    // A session that passed the stage holds a pending use until it registers or expires.
    // (No password in any of its requests, so it cannot finish.)
    let (status, body) = s.post(&format!("{V3}/register"), None, json!({"username": "second"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let session = body["session"].as_str().unwrap().to_owned();
    // The stage is passed; the registration cannot finish without a password.
    let (status, body) = s
        .post(
            &format!("{V3}/register"),
            None,
            json!({"username": "second", "auth": {"type": "m.login.registration_token", "token": "twice", "session": session}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let counts = ok(s.get(&format!("{tokens}/twice"), t).await);
    assert_eq!((&counts["pending"], &counts["completed"]), (&json!(1), &json!(1)));
    // Both uses are taken: a third registration is refused.
    assert_eq!(ok(s.get(&validity("twice"), None).await), json!({"valid": false}));
    let (status, body) = register_with_token(&s, "third", "twice").await;
    assert_eq!((status, &body["errcode"]), (StatusCode::UNAUTHORIZED, &json!("M_FORBIDDEN")), "{body}");
    // When the pending session expires, its use comes back.
    s.clock.advance_ms(601000);
    s.services.uiaa.remove_expired().unwrap();
    assert_eq!(ok(s.get(&format!("{tokens}/twice"), t).await)["pending"], 0);
    let (status, body) = register_with_token(&s, "third", "twice").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(ok(s.get(&format!("{tokens}/twice"), t).await)["completed"], 2);

    // An expired token is refused.
    let soon = now(&s) + 1_000;
    ok(s.post(&format!("{tokens}/new"), t, json!({"token": "brief", "expiry_time": soon})).await);
    s.clock.advance_ms(2000);
    assert_eq!(ok(s.get(&validity("brief"), None).await), json!({"valid": false}));
    let (status, _) = register_with_token(&s, "fourth", "brief").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_configured_token_still_works_beside_stored_ones() {
    let (s, root) = with_admin_config(|c| c.registration_token = Some("from-config".to_owned())).await;
    let t = Some(root.token.as_str());
    ok(s.post(&format!("{V1}/registration_tokens/new"), t, json!({"token": "stored", "uses_allowed": 1}))
        .await);
    assert_eq!(register_with_token(&s, "one", "from-config").await.0, StatusCode::OK);
    assert_eq!(register_with_token(&s, "two", "from-config").await.0, StatusCode::OK);
    assert_eq!(register_with_token(&s, "three", "stored").await.0, StatusCode::OK);
    assert_eq!(register_with_token(&s, "four", "stored").await.0, StatusCode::UNAUTHORIZED);
    // The configured token is not listed: it is not the admin API's.
    let listed = ok(s.get(&format!("{V1}/registration_tokens"), t).await);
    assert_eq!(listed["registration_tokens"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn server_notices_arrive_in_a_tagged_room_the_user_cannot_send_into() {
    let (s, root) = with_admin_config(|c| {
        c.server_notices.system_mxid_localpart = Some("notices".to_owned());
        c.server_notices.system_mxid_display_name = Some("Server Notices".to_owned());
    })
    .await;
    let t = Some(root.token.as_str());
    let alice = s.register("alice", "pw-alice-123").await;
    let notice =
        |text: &str| json!({"user_id": alice.user_id, "content": {"msgtype": "m.text", "body": text}});
    let first = ok(s.post(&format!("{V1}/send_server_notice"), t, notice("Maintenance tonight")).await);
    assert!(first["event_id"].as_str().unwrap().starts_with('$'));

    // Alice is invited to a room tagged m.server_notice, cannot reject the invite, joins it
    // and sees the notice.
    let seen = sync(&s, &alice, "").await;
    let invites = seen["rooms"]["invite"].as_object().expect("an invite");
    assert_eq!(invites.len(), 1, "{seen}");
    let room = invites.keys().next().unwrap().clone();
    expect_error(
        s.post(&format!("{V3}/rooms/{room}/leave"), Some(&alice.token), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_CANNOT_LEAVE_SERVER_NOTICE_ROOM",
    );
    assert_eq!(join(&s, &alice, &room).await.0, StatusCode::OK);
    let seen = sync(&s, &alice, "").await;
    let joined = &seen["rooms"]["join"][&room];
    assert!(joined["account_data"]["events"].to_string().contains("m.server_notice"), "{joined}");
    let messages = ok(s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=50"), Some(&alice.token)).await);
    let notice_event = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["content"]["body"] == "Maintenance tonight")
        .expect("the notice")
        .clone();
    assert_eq!(
        (&notice_event["sender"], &notice_event["event_id"]),
        (&json!("@notices:localhost"), &first["event_id"])
    );

    // She cannot send into it.
    let (status, body) = s
        .put(
            &format!("{V3}/rooms/{room}/send/m.room.message/t1"),
            Some(&alice.token),
            json!({"msgtype": "m.text", "body": "hi"}),
        )
        .await;
    assert_eq!((status, &body["errcode"]), (StatusCode::FORBIDDEN, &json!("M_FORBIDDEN")), "{body}");

    // The next notice goes to the same room; the PUT form is idempotent.
    let path = format!("{V1}/send_server_notice/txn-1");
    let second = ok(s.put(&path, t, notice("Done")).await);
    assert_eq!(ok(s.put(&path, t, notice("Done")).await), second);
    let messages = ok(s.get(&format!("{V3}/rooms/{room}/messages?dir=b&limit=50"), Some(&alice.token)).await);
    let dones =
        messages["chunk"].as_array().unwrap().iter().filter(|e| e["content"]["body"] == "Done").count();
    assert_eq!(dones, 1);
    let profile = ok(s.get(&format!("{V3}/profile/@notices:localhost"), Some(&alice.token)).await);
    assert_eq!(profile["displayname"], "Server Notices");

    expect_error(
        s.post(
            &format!("{V1}/send_server_notice"),
            t,
            json!({"user_id": "@nobody:localhost", "content": {}}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.post(&format!("{V1}/send_server_notice"), t, json!({"user_id": "@x:elsewhere", "content": {}}))
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.post(&format!("{V1}/send_server_notice"), t, json!({"content": {}})).await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
    );
}

#[tokio::test]
async fn server_notices_are_off_unless_configured() {
    let (s, root) = with_admin().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let body = json!({"user_id": alice.user_id, "content": {"msgtype": "m.text", "body": "x"}});
    expect_error(
        s.post(&format!("{V1}/send_server_notice"), Some(&root.token), body).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}
