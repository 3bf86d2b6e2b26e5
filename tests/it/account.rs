//! Registration, availability, password change, deactivation.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Session, TestServer, expect_error, password_auth, race_posts};

const REGISTER: &str = "/_matrix/client/v3/register";

#[tokio::test]
async fn register_runs_the_dummy_flow_and_logs_in() {
    let s = TestServer::start().await;
    let (status, body) =
        s.post(REGISTER, None, json!({"username": "alice", "password": "pw-alice-123"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["flows"], json!([{"stages": ["m.login.dummy"]}]));
    assert_eq!(body["params"], json!({}));
    assert!(body["session"].is_string());

    let alice = s.register("alice2", "pw-alice-123").await;
    assert_eq!(alice.user_id, "@alice2:localhost");
    let (status, body) = s.get("/_matrix/client/v3/account/whoami", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user_id"], "@alice2:localhost");
    assert_eq!(body["device_id"], alice.device_id.as_str());
}

#[tokio::test]
async fn register_in_one_request_with_a_stage_and_no_session() {
    // matrix-nio registers this way.
    let s = TestServer::start().await;
    let (status, body) = s
        .post(
            REGISTER,
            None,
            json!({"username": "nio", "password": "pw-nio-1234", "auth": {"type": "m.login.dummy"},
            "device_id": "MYDEVICE", "initial_device_display_name": "Phone"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["device_id"], "MYDEVICE");
    let token = body["access_token"].as_str().unwrap();
    let (_, device) = s.get("/_matrix/client/v3/devices/MYDEVICE", Some(token)).await;
    assert_eq!(device["display_name"], "Phone");
}

#[tokio::test]
async fn register_rejects_bad_and_taken_names_before_authentication() {
    let s = TestServer::start().await;
    s.register("bob", "pw-bob-12345").await;
    for (name, errcode) in [
        ("bob", "M_USER_IN_USE"),
        ("Bob", "M_USER_IN_USE"),
        ("bad name!", "M_INVALID_USERNAME"),
        ("_bridge", "M_INVALID_USERNAME"),
        ("12345", "M_INVALID_USERNAME"),
        ("", "M_INVALID_USERNAME"),
    ] {
        let result = s.post(REGISTER, None, json!({"username": name, "password": "pw"})).await;
        expect_error(result, StatusCode::BAD_REQUEST, errcode);
    }
    // A body with no password still gets the flows (clients probe with `{}`); the password is
    // required once authentication is done.
    let (status, body) = s.post(REGISTER, None, json!({})).await;
    assert_eq!((status, &body["flows"]), (StatusCode::UNAUTHORIZED, &json!([{"stages": ["m.login.dummy"]}])));
    let dummy = json!({"type": "m.login.dummy"});
    let result = s.post(REGISTER, None, json!({"username": "carol", "auth": dummy})).await;
    expect_error(result, StatusCode::BAD_REQUEST, "M_MISSING_PARAM");
    let long = "x".repeat(600);
    let result = s.post(REGISTER, None, json!({"username": "carol", "password": long, "auth": dummy})).await;
    expect_error(result, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
}

#[tokio::test]
async fn register_without_username_generates_one_and_inhibit_login_issues_no_token() {
    let s = TestServer::start().await;
    let (status, body) = s
        .post(
            REGISTER,
            None,
            json!({"password": "pw-anon-123", "inhibit_login": true, "auth": {"type": "m.login.dummy"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let user_id = body["user_id"].as_str().unwrap();
    assert!(user_id.starts_with('@') && user_id.ends_with(":localhost"), "{user_id}");
    // Without a login there is no token and no device: the keys are left out (as Synapse),
    // not sent as `null`.
    let keys = body.as_object().unwrap();
    assert!(!keys.contains_key("access_token") && !keys.contains_key("device_id"), "{body}");
    // The account exists and can log in.
    s.login(user_id, "pw-anon-123", None).await;
}

#[tokio::test]
async fn registration_closed_and_guests_are_refused() {
    let s = TestServer::start_with(|c| c.allow_registration = false).await;
    let body = json!({"username": "dave", "password": "pw-dave-123", "auth": {"type": "m.login.dummy"}});
    expect_error(s.post(REGISTER, None, body).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(
        s.get("/_matrix/client/v1/register/m.login.registration_token/validity?token=x", None).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    // Availability is not answered either, so it cannot be used to list accounts.
    let available = s.get("/_matrix/client/v3/register/available?username=dave", None).await;
    expect_error(available, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    let s = TestServer::start().await;
    expect_error(
        s.post(&format!("{REGISTER}?kind=guest"), None, json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn registration_token_gates_registration() {
    let s = TestServer::start_with(|c| c.registration_token = Some("let-me-in".into())).await;
    let (status, body) = s.post(REGISTER, None, json!({"username": "erin", "password": "pw-erin-123"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["flows"], json!([{"stages": ["m.login.registration_token"]}]));
    let session = body["session"].as_str().unwrap();

    // The dummy stage is not offered, and a wrong token fails inside the UIA body.
    let (status, body) = s
        .post(
            REGISTER,
            None,
            json!({"username": "erin", "password": "pw-erin-123",
        "auth": {"type": "m.login.dummy", "session": session}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
    let (status, body) = s
        .post(
            REGISTER,
            None,
            json!({"username": "erin", "password": "pw-erin-123",
        "auth": {"type": "m.login.registration_token", "token": "wrong", "session": session}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["errcode"], "M_FORBIDDEN");
    assert_eq!(body["completed"], json!([]));
    assert_eq!(body["session"], session);

    let (status, body) = s
        .post(
            REGISTER,
            None,
            json!({"username": "erin", "password": "pw-erin-123",
        "auth": {"type": "m.login.registration_token", "token": "let-me-in", "session": session}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let validity = "/_matrix/client/v1/register/m.login.registration_token/validity";
    assert_eq!(s.get(&format!("{validity}?token=let-me-in"), None).await.1["valid"], true);
    assert_eq!(s.get(&format!("{validity}?token=nope"), None).await.1["valid"], false);
}

#[tokio::test]
async fn username_availability() {
    let s = TestServer::start().await;
    s.register("frank", "pw-frank-123").await;
    let (status, body) = s.get("/_matrix/client/v3/register/available?username=george", None).await;
    assert_eq!((status, &body["available"]), (StatusCode::OK, &json!(true)));
    expect_error(
        s.get("/_matrix/client/v3/register/available?username=frank", None).await,
        StatusCode::BAD_REQUEST,
        "M_USER_IN_USE",
    );
    expect_error(
        s.get("/_matrix/client/v3/register/available?username=no%20way", None).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_USERNAME",
    );
    expect_error(
        s.get("/_matrix/client/v3/register/available", None).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}

#[tokio::test]
async fn change_password_needs_the_old_password_and_logs_out_other_devices() {
    let s = TestServer::start().await;
    let first = s.register("hank", "old-password-1").await;
    let second = s.login("hank", "old-password-1", None).await;
    let path = "/_matrix/client/v3/account/password";

    let (status, body) = s.post(path, Some(&first.token), json!({"new_password": "new-password-2"})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["flows"], json!([{"stages": ["m.login.password"]}]));
    let session = body["session"].as_str().unwrap().to_owned();

    let (status, body) = s
        .post(
            path,
            Some(&first.token),
            json!({"new_password": "new-password-2",
        "auth": password_auth("hank", "wrong", Some(&session))}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_FORBIDDEN")), "{body}");

    let (status, body) = s
        .post(
            path,
            Some(&first.token),
            json!({"new_password": "new-password-2",
        "auth": password_auth("@hank:localhost", "old-password-1", Some(&session))}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&first.token)).await.0, StatusCode::OK);
    expect_error(
        s.get("/_matrix/client/v3/account/whoami", Some(&second.token)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    let bad = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "hank"}, "password": "old-password-1"}),
        )
        .await;
    expect_error(bad, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let third = s.login("hank", "new-password-2", None).await;

    // With logout_devices false, other devices survive.
    let (_, body) = s
        .post(path, Some(&first.token), json!({"new_password": "pw3-pw3-pw3", "logout_devices": false}))
        .await;
    let session = body["session"].as_str().unwrap();
    let (status, _) = s
        .post(
            path,
            Some(&first.token),
            json!({"new_password": "pw3-pw3-pw3", "logout_devices": false,
        "auth": password_auth("hank", "new-password-2", Some(session))}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&third.token)).await.0, StatusCode::OK);

    // Without a token there is no one to change the password of.
    expect_error(
        s.post(path, None, json!({"new_password": "x"})).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn uiaa_sessions_cannot_be_moved_between_endpoints_or_users() {
    let s = TestServer::start().await;
    let ivy = s.register("ivy", "pw-ivy-12345").await;
    let jack = s.register("jack", "pw-jack-1234").await;
    let (_, body) = s
        .post("/_matrix/client/v3/account/password", Some(&ivy.token), json!({"new_password": "x-x-x-x"}))
        .await;
    let session = body["session"].as_str().unwrap();
    let moved = s
        .post(
            "/_matrix/client/v3/delete_devices",
            Some(&ivy.token),
            json!({"devices": [], "auth": password_auth("ivy", "pw-ivy-12345", Some(session))}),
        )
        .await;
    expect_error(moved, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let other_user = s
        .post(
            "/_matrix/client/v3/account/password",
            Some(&jack.token),
            json!({"new_password": "x-x-x-x", "auth": password_auth("jack", "pw-jack-1234", Some(session))}),
        )
        .await;
    expect_error(other_user, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    // A password stage for someone else's account fails.
    let (_, body) = s
        .post("/_matrix/client/v3/account/password", Some(&jack.token), json!({"new_password": "y-y-y-y"}))
        .await;
    let session = body["session"].as_str().unwrap();
    let (status, body) = s
        .post(
            "/_matrix/client/v3/account/password",
            Some(&jack.token),
            json!({"new_password": "y-y-y-y", "auth": password_auth("ivy", "pw-wrong-999", Some(session))}),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_FORBIDDEN")));
    // With her right password it is no stage to retry: refused outright, as Synapse does.
    expect_error(
        s.post(
            "/_matrix/client/v3/account/password",
            Some(&jack.token),
            json!({"new_password": "y-y-y-y", "auth": password_auth("ivy", "pw-ivy-12345", Some(session))}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(
        s.post(
            "/_matrix/client/v3/account/password",
            Some(&jack.token),
            json!({"new_password": "y", "auth": {"type": "m.login.dummy", "session": "no-such-session"}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
    );
}

#[tokio::test]
async fn deactivation_is_final() {
    let s = TestServer::start().await;
    let kim = s.register("kim", "pw-kim-12345").await;
    let other = s.login("kim", "pw-kim-12345", None).await;
    let path = "/_matrix/client/v3/account/deactivate";
    let (status, body) = s.post(path, Some(&kim.token), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let session = body["session"].as_str().unwrap();
    let (status, body) = s
        .post(path, Some(&kim.token), json!({"auth": password_auth("kim", "pw-kim-12345", Some(session))}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id_server_unbind_result"], "success");

    for token in [&kim.token, &other.token] {
        expect_error(
            s.get("/_matrix/client/v3/account/whoami", Some(token)).await,
            StatusCode::UNAUTHORIZED,
            "M_UNKNOWN_TOKEN",
        );
    }
    let login = s
        .post(
            "/_matrix/client/v3/login",
            None,
            json!({"type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "kim"}, "password": "pw-kim-12345"}),
        )
        .await;
    expect_error(login, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(
        s.post(REGISTER, None, json!({"username": "kim", "password": "pw"})).await,
        StatusCode::BAD_REQUEST,
        "M_USER_IN_USE",
    );
    expect_error(
        s.get("/_matrix/client/v3/profile/@kim:localhost", None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn concurrent_registrations_of_one_name_create_one_account() {
    let s = std::sync::Arc::new(TestServer::start().await);
    let bodies = (0..8)
        .map(|i| json!({"username": "race", "password": format!("pw-race-{i}-xyz"), "auth": {"type": "m.login.dummy"}}))
        .collect();
    let won = race_posts(&s, REGISTER, bodies, "M_USER_IN_USE").await;
    assert_eq!(won, 1);
}

#[tokio::test]
async fn uiaa_sessions_expire_and_completed_ones_can_be_replayed() {
    let s = TestServer::start().await;
    let lee = s.register("lee", "pw-lee-12345").await;
    let extra = s.login("lee", "pw-lee-12345", Some("EXTRA")).await;
    let path = "/_matrix/client/v3/delete_devices";

    // A completed session answers again for a retried request (a lost response must not
    // strand the client), without asking for the password again.
    let (_, body) = s.post(path, Some(&lee.token), json!({"devices": ["EXTRA"]})).await;
    let session = body["session"].as_str().unwrap().to_owned();
    let auth = password_auth("lee", "pw-lee-12345", Some(&session));
    assert_eq!(
        s.post(path, Some(&lee.token), json!({"devices": ["EXTRA"], "auth": auth})).await.0,
        StatusCode::OK
    );
    let replay = json!({"devices": ["EXTRA"], "auth": {"session": session}});
    assert_eq!(s.post(path, Some(&lee.token), replay).await.0, StatusCode::OK);
    expect_error(
        s.get("/_matrix/client/v3/account/whoami", Some(&extra.token)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );

    // Past its lifetime (600 s by default) a session is unknown.
    let (_, body) = s.post(path, Some(&lee.token), json!({"devices": []})).await;
    let session = body["session"].as_str().unwrap().to_owned();
    s.clock.advance_ms(601_000);
    let late = json!({"devices": [], "auth": password_auth("lee", "pw-lee-12345", Some(&session))});
    expect_error(s.post(path, Some(&lee.token), late).await, StatusCode::BAD_REQUEST, "M_UNKNOWN");
}

async fn device_ids(s: &TestServer, who: &Session) -> Vec<String> {
    let (_, body) = s.get("/_matrix/client/v3/devices", Some(&who.token)).await;
    let mut ids: Vec<String> = body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Start a user-interactive auth session with `body`; returns its ID.
async fn start_session(s: &TestServer, who: &Session, method: Method, path: &str, body: Value) -> String {
    let (status, body) = s.call(method, path, Some(&who.token), Some(body)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    body["session"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn uiaa_sessions_are_bound_to_method_path_and_body() {
    let s = TestServer::start().await;
    let max = s.register("max", "pw-max-12345").await;
    for device in ["D1", "D2", "D3"] {
        s.login("max", "pw-max-12345", Some(device)).await;
    }
    let mut everyone = vec!["D1".to_owned(), "D2".to_owned(), "D3".to_owned(), max.device_id.clone()];
    everyone.sort();
    let changed = |result| {
        let body = expect_error(result, StatusCode::FORBIDDEN, "M_FORBIDDEN");
        assert!(body["error"].as_str().unwrap().contains("changed"), "{body}");
    };
    let auth = |session: &str| password_auth("max", "pw-max-12345", Some(session));

    // A session started to delete D1 does not delete D2 (another path).
    let session = start_session(&s, &max, Method::DELETE, "/_matrix/client/v3/devices/D1", json!({})).await;
    changed(
        s.call(
            Method::DELETE,
            "/_matrix/client/v3/devices/D2",
            Some(&max.token),
            Some(json!({"auth": auth(&session)})),
        )
        .await,
    );
    // Nor anything through `/delete_devices` (another method and path).
    let body = json!({"devices": ["D2"], "auth": auth(&session)});
    changed(s.post("/_matrix/client/v3/delete_devices", Some(&max.token), body).await);

    // A session started for `/delete_devices` of D1 does not delete D2 (another body)...
    let path = "/_matrix/client/v3/delete_devices";
    let session = start_session(&s, &max, Method::POST, path, json!({"devices": ["D1"]})).await;
    changed(s.post(path, Some(&max.token), json!({"devices": ["D2"], "auth": auth(&session)})).await);
    assert_eq!(device_ids(&s, &max).await, everyone);
    // ...and once completed for D1, its replay deletes D1 again but nothing else.
    let (status, body) =
        s.post(path, Some(&max.token), json!({"devices": ["D1"], "auth": auth(&session)})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    changed(s.post(path, Some(&max.token), json!({"devices": ["D3"], "auth": {"session": session}})).await);
    let replay =
        s.post(path, Some(&max.token), json!({"devices": ["D1"], "auth": {"session": session}})).await;
    assert_eq!(replay.0, StatusCode::OK, "{}", replay.1);
    let mut left = vec!["D2".to_owned(), "D3".to_owned(), max.device_id.clone()];
    left.sort();
    assert_eq!(device_ids(&s, &max).await, left);
}

#[tokio::test]
async fn another_users_password_is_refused_by_every_endpoint_that_asks_for_one() {
    let s = TestServer::start().await;
    let nora = s.register("nora", "pw-nora-12345").await;
    s.register("otto", "pw-otto-12345").await;
    s.login("nora", "pw-nora-12345", Some("SPARE")).await;
    // A master key, so that replacing it asks for the password.
    let signing = "/_matrix/client/v3/keys/device_signing/upload";
    let master = |key: &str| json!({"master_key": {"user_id": nora.user_id, "usage": ["master"], "keys": {format!("ed25519:{key}"): key}}});
    let (status, body) = s.post(signing, Some(&nora.token), master(&"A".repeat(43))).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let endpoints = [
        (Method::DELETE, "/_matrix/client/v3/devices/SPARE", json!({})),
        (Method::POST, "/_matrix/client/v3/delete_devices", json!({"devices": ["SPARE"]})),
        (Method::POST, "/_matrix/client/v3/account/password", json!({"new_password": "pw-new-123456"})),
        (Method::POST, "/_matrix/client/v3/account/deactivate", json!({})),
        (Method::POST, signing, master(&"B".repeat(43))),
    ];
    for (method, path, body) in endpoints {
        let with_auth = |user: &str, password: &str, session: &str| {
            let mut body = body.clone();
            body["auth"] = password_auth(user, password, Some(session));
            Some(body)
        };
        // Otto's right password: 403, not a stage to retry.
        let session = start_session(&s, &nora, method.clone(), path, body.clone()).await;
        let result = s
            .call(method.clone(), path, Some(&nora.token), with_auth("otto", "pw-otto-12345", &session))
            .await;
        expect_error(result, StatusCode::FORBIDDEN, "M_FORBIDDEN");
        // A wrong password (Otto's or an unknown user's) fails the stage: 401, try again.
        for user in ["otto", "nobody"] {
            let (status, failed) = s
                .call(method.clone(), path, Some(&nora.token), with_auth(user, "wrong-password", &session))
                .await;
            assert_eq!(
                (status, failed["errcode"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("M_FORBIDDEN")),
                "{path}"
            );
            assert_eq!(failed["session"], session.as_str(), "{path}");
        }
    }
    // Nothing happened: the device, the password, the account and the key are as they were.
    assert!(device_ids(&s, &nora).await.contains(&"SPARE".to_owned()));
    s.login("nora", "pw-nora-12345", None).await;
    let (_, keys) = s
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&nora.token),
            json!({"device_keys": {nora.user_id.clone(): []}}),
        )
        .await;
    assert_eq!(keys["master_keys"][&nora.user_id]["keys"], master(&"A".repeat(43))["master_key"]["keys"]);
}

#[tokio::test]
async fn registration_remembers_its_parameters_and_answers_a_retry_with_the_same_account() {
    let s = TestServer::start().await;
    // Everything in the first request; the stage alone in the second.
    let first = json!({"username": "Pia", "password": "pw-pia-12345", "device_id": "DEVX",
        "initial_device_display_name": "My Phone"});
    let (status, body) = s.post(REGISTER, None, first).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let session = body["session"].as_str().unwrap().to_owned();
    let dummy = json!({"auth": {"type": "m.login.dummy", "session": session}});
    let (status, body) = s.post(REGISTER, None, dummy.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["user_id"].as_str(), body["device_id"].as_str()),
        (Some("@pia:localhost"), Some("DEVX"))
    );
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (_, device) = s.get("/_matrix/client/v3/devices/DEVX", Some(&token)).await;
    assert_eq!(device["display_name"], "My Phone");
    s.login("pia", "pw-pia-12345", None).await;

    // A retry of the completed session answers the same account, logged in again.
    let (status, again) = s.post(REGISTER, None, dummy.clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        (again["user_id"].as_str(), again["device_id"].as_str()),
        (Some("@pia:localhost"), Some("DEVX"))
    );
    assert_ne!(again["access_token"], token.as_str());
    let with_name = json!({"username": "pia", "auth": {"type": "m.login.dummy", "session": session}});
    assert_eq!(s.post(REGISTER, None, with_name).await.1["user_id"], "@pia:localhost");
    // It cannot be turned into another registration.
    let other = json!({"username": "quinn", "password": "pw-quinn-1234", "auth": {"session": session}});
    expect_error(s.post(REGISTER, None, other).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let free = s.post(REGISTER, None, json!({"username": "quinn", "password": "pw-quinn-1234"})).await;
    assert_eq!(free.0, StatusCode::UNAUTHORIZED, "quinn was not registered: {}", free.1);

    // `inhibit_login` is remembered too, and a retry logs in no more than the first did.
    let (_, body) = s
        .post(REGISTER, None, json!({"username": "rex", "password": "pw-rex-12345", "inhibit_login": true}))
        .await;
    let dummy = json!({"auth": {"type": "m.login.dummy", "session": body["session"]}});
    for _ in 0..2 {
        let (status, body) = s.post(REGISTER, None, dummy.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["user_id"], "@rex:localhost");
        assert!(body["access_token"].is_null() && body["device_id"].is_null(), "{body}");
    }

    // A generated name is remembered as well.
    let (_, body) = s.post(REGISTER, None, json!({"password": "pw-anon-12345"})).await;
    let dummy = json!({"auth": {"type": "m.login.dummy", "session": body["session"]}});
    let generated = s.post(REGISTER, None, dummy.clone()).await.1["user_id"].clone();
    assert!(generated.is_string());
    assert_eq!(s.post(REGISTER, None, dummy).await.1["user_id"], generated);

    // A client may fill in the parameters after probing the flows with a bare request.
    let (_, body) = s.post(REGISTER, None, json!({"initial_device_display_name": "Web"})).await;
    let full = json!({"username": "sam", "password": "pw-sam-12345", "initial_device_display_name": "Web",
        "auth": {"type": "m.login.dummy", "session": body["session"]}});
    let (status, body) = s.post(REGISTER, None, full).await;
    assert_eq!((status, body["user_id"].as_str()), (StatusCode::OK, Some("@sam:localhost")), "{body}");

    // Without a password anywhere in the session there is no account.
    let (_, body) = s.post(REGISTER, None, json!({"username": "tia"})).await;
    let dummy = json!({"auth": {"type": "m.login.dummy", "session": body["session"]}});
    expect_error(s.post(REGISTER, None, dummy).await, StatusCode::BAD_REQUEST, "M_MISSING_PARAM");
}
