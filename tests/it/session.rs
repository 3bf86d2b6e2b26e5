//! Login, tokens, refresh and logout.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{TestServer, expect_error, race_posts};

const LOGIN: &str = "/_matrix/client/v3/login";
const WHOAMI: &str = "/_matrix/client/v3/account/whoami";

fn password_login(identifier: Value, password: &str) -> Value {
    json!({"type": "m.login.password", "identifier": identifier, "password": password})
}

#[tokio::test]
async fn login_flows_offer_password() {
    let s = TestServer::start().await;
    let (status, body) = s.get(LOGIN, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["flows"], json!([{"type": "m.login.password"}]));
}

#[tokio::test]
async fn login_accepts_every_way_of_naming_the_user() {
    let s = TestServer::start().await;
    s.register("alice", "pw-alice-123").await;
    for identifier in ["alice", "ALICE", "@alice:localhost", "@Alice:localhost"] {
        let (status, body) = s
            .post(
                LOGIN,
                None,
                password_login(json!({"type": "m.id.user", "user": identifier}), "pw-alice-123"),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{identifier}: {body}");
        assert_eq!(body["user_id"], "@alice:localhost");
    }
    // The deprecated top-level `user` field.
    let (status, body) = s
        .post(LOGIN, None, json!({"type": "m.login.password", "user": "alice", "password": "pw-alice-123"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn login_failures_look_the_same_whatever_the_reason() {
    let s = TestServer::start().await;
    s.register("bob", "pw-bob-12345").await;
    let wrong_password =
        s.post(LOGIN, None, password_login(json!({"type": "m.id.user", "user": "bob"}), "nope")).await;
    let unknown_user =
        s.post(LOGIN, None, password_login(json!({"type": "m.id.user", "user": "nobody"}), "nope")).await;
    let remote_user = s
        .post(LOGIN, None, password_login(json!({"type": "m.id.user", "user": "@bob:elsewhere.org"}), "nope"))
        .await;
    let a = expect_error(wrong_password, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(a, expect_error(unknown_user, StatusCode::FORBIDDEN, "M_FORBIDDEN"));
    assert_eq!(a, expect_error(remote_user, StatusCode::FORBIDDEN, "M_FORBIDDEN"));

    expect_error(
        s.post(LOGIN, None, json!({"type": "m.login.foo"})).await,
        StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
    );
    expect_error(
        s.post(LOGIN, None, json!({"type": "m.login.password", "password": "x"})).await,
        StatusCode::BAD_REQUEST,
        "M_MISSING_PARAM",
    );
    expect_error(
        s.post(LOGIN, None, json!({"type": "m.login.password", "user": "bob", "password": 5})).await,
        StatusCode::BAD_REQUEST,
        "M_BAD_JSON",
    );
}

#[tokio::test]
async fn logging_in_again_with_a_device_id_replaces_its_token() {
    let s = TestServer::start().await;
    s.register("carol", "pw-carol-123").await;
    let first = s.login("carol", "pw-carol-123", Some("LAPTOP")).await;
    let second = s.login("carol", "pw-carol-123", Some("LAPTOP")).await;
    assert_eq!(second.device_id, "LAPTOP");
    let body =
        expect_error(s.get(WHOAMI, Some(&first.token)).await, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    assert_eq!(body["soft_logout"], false);
    let (_, body) = s.get(WHOAMI, Some(&second.token)).await;
    assert_eq!(body["device_id"], "LAPTOP");
    let (_, devices) = s.get("/_matrix/client/v3/devices", Some(&second.token)).await;
    let laptops =
        devices["devices"].as_array().unwrap().iter().filter(|d| d["device_id"] == "LAPTOP").count();
    assert_eq!(laptops, 1);
}

#[tokio::test]
async fn refresh_tokens_renew_expiring_access_tokens() {
    let s = TestServer::start().await;
    s.register("dave", "pw-dave-1234").await;
    let (status, body) = s.post(LOGIN, None, json!({"type": "m.login.password", "user": "dave", "password": "pw-dave-1234", "refresh_token": true})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["expires_in_ms"], 300_000);
    let access = body["access_token"].as_str().unwrap().to_owned();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    assert!(access.len() >= 43 && refresh.len() >= 43, "tokens carry at least 32 random bytes");
    assert_eq!(s.get(WHOAMI, Some(&access)).await.0, StatusCode::OK);

    s.clock.advance_ms(300_001);
    let body = expect_error(s.get(WHOAMI, Some(&access)).await, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    assert_eq!(body["soft_logout"], true, "an expired token is a soft logout");

    let (status, body) = s.post("/_matrix/client/v3/refresh", None, json!({"refresh_token": refresh})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["expires_in_ms"], 300_000);
    let new_access = body["access_token"].as_str().unwrap();
    assert!(body["refresh_token"].is_string());
    assert_eq!(s.get(WHOAMI, Some(new_access)).await.0, StatusCode::OK);

    // A spent refresh token, or a made-up one, is refused.
    expect_error(
        s.post("/_matrix/client/v3/refresh", None, json!({"refresh_token": refresh})).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    expect_error(
        s.post("/_matrix/client/v3/refresh", None, json!({"refresh_token": "garbage"})).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
}

#[tokio::test]
async fn tokens_are_read_from_header_or_query_and_checked() {
    let s = TestServer::start().await;
    let erin = s.register("erin", "pw-erin-1234").await;
    let (status, body) = s.get(&format!("{WHOAMI}?access_token={}", erin.token), None).await;
    assert_eq!((status, &body["user_id"]), (StatusCode::OK, &json!("@erin:localhost")));
    expect_error(s.get(WHOAMI, None).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
    let body =
        expect_error(s.get(WHOAMI, Some("not-a-token")).await, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    assert_eq!(body["soft_logout"], false);
}

#[tokio::test]
async fn logout_ends_one_device_and_logout_all_ends_every_device() {
    let s = TestServer::start().await;
    let a = s.register("fay", "pw-fay-12345").await;
    let b = s.login("fay", "pw-fay-12345", None).await;
    let c = s.login("fay", "pw-fay-12345", None).await;

    assert_eq!(
        s.post("/_matrix/client/v3/logout", Some(&a.token), json!({})).await,
        (StatusCode::OK, json!({}))
    );
    expect_error(s.get(WHOAMI, Some(&a.token)).await, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    let (_, devices) = s.get("/_matrix/client/v3/devices", Some(&b.token)).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 2, "the logged-out device is gone");

    assert_eq!(s.post("/_matrix/client/v3/logout/all", Some(&b.token), json!({})).await.0, StatusCode::OK);
    for token in [&b.token, &c.token] {
        expect_error(s.get(WHOAMI, Some(token)).await, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    }
    // The account itself lives on.
    s.login("fay", "pw-fay-12345", None).await;
}

#[tokio::test]
async fn a_refresh_token_is_spent_once_even_when_raced() {
    let s = std::sync::Arc::new(TestServer::start().await);
    s.register("gil", "pw-gil-12345").await;
    let (_, body) = s.post(LOGIN, None, json!({"type": "m.login.password", "user": "gil", "password": "pw-gil-12345", "refresh_token": true})).await;
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let bodies = vec![json!({"refresh_token": refresh}); 6];
    let ok = race_posts(&s, "/_matrix/client/v3/refresh", bodies, "M_UNKNOWN_TOKEN").await;
    assert_eq!(ok, 1);
}

#[tokio::test]
async fn a_stale_token_does_not_stop_a_fresh_login() {
    // matrix-js-sdk sends its old (maybe expired) token along with /login.
    let s = TestServer::start().await;
    s.register("hal", "pw-hal-12345").await;
    let body = json!({"type": "m.login.password", "user": "hal", "password": "pw-hal-12345"});
    let (status, body) = s.post(LOGIN, Some("long-gone-token"), body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn logging_in_to_a_known_device_keeps_its_name() {
    // The spec ignores initial_device_display_name for a device that already exists.
    let s = TestServer::start().await;
    s.register("ida", "pw-ida-12345").await;
    let login = |name: &str| {
        json!({"type": "m.login.password", "user": "ida", "password": "pw-ida-12345",
            "device_id": "NAMED", "initial_device_display_name": name})
    };
    assert_eq!(s.post(LOGIN, None, login("First name")).await.0, StatusCode::OK);
    let (_, body) = s.post(LOGIN, None, login("Second name")).await;
    let token = body["access_token"].as_str().unwrap();
    let (_, device) = s.get("/_matrix/client/v3/devices/NAMED", Some(token)).await;
    assert_eq!(device["display_name"], "First name");
}
