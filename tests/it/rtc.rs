//! What Element Call needs besides sync and delayed events: the MatrixRTC transports
//! (endpoint, well-known, `/versions` flag), OpenID tokens and their federation `userinfo`
//! check, and TURN credentials for VoIP.

use conduit::service::clock::Clock as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{TestServer, expect_error},
    rooms::V3,
    sync::urlencode,
};

const UNSTABLE_TRANSPORTS: &str = "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports";
const STABLE_TRANSPORTS: &str = "/_matrix/client/v1/rtc/transports";
const USERINFO: &str = "/_matrix/federation/v1/openid/userinfo";

fn livekit_and_custom() -> Vec<conduit::config::RtcTransportConfig> {
    let transports = json!([
        {"type": "livekit", "livekit_service_url": "https://rtc.example.com/livekit/jwt", "extra": "kept"},
        {"type": "org.example.sfu", "url": "wss://sfu.example.com", "regions": ["eu", "us"], "weight": 2},
    ]);
    serde_json::from_value(transports).unwrap()
}

#[tokio::test]
async fn transports_are_served_from_the_configured_list() {
    let s = TestServer::start_with(|c| {
        c.matrix_rtc.transports = livekit_and_custom();
        c.well_known.client = Some("https://matrix.example.com".into());
    })
    .await;
    let alice = s.register("alice", "pw-alice-123").await;

    let expected = json!([
        {"type": "livekit", "livekit_service_url": "https://rtc.example.com/livekit/jwt", "extra": "kept"},
        {"type": "org.example.sfu", "url": "wss://sfu.example.com", "regions": ["eu", "us"], "weight": 2},
    ]);
    for path in [UNSTABLE_TRANSPORTS, STABLE_TRANSPORTS] {
        // Authenticated, as MSC4143 and Synapse have it.
        expect_error(s.get(path, None).await, StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN");
        let (status, body) = s.get(path, Some(&alice.token)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body, json!({"rtc_transports": expected}), "{path}");
    }

    // The same list for clients that look in the well-known (matrix-rust-sdk's fallback).
    let (status, body) = s.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["m.homeserver"]["base_url"], "https://matrix.example.com");
    assert_eq!(body["org.matrix.msc4143.rtc_foci"], expected, "{body}");

    let (_, versions) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(versions["unstable_features"]["org.matrix.msc4143"], true, "{versions}");
}

#[tokio::test]
async fn without_transports_the_answer_is_empty_and_the_well_known_has_none() {
    let s = TestServer::start_with(|c| c.well_known.client = Some("https://matrix.example.com".into())).await;
    let alice = s.register("alice", "pw-alice-123").await;
    for path in [UNSTABLE_TRANSPORTS, STABLE_TRANSPORTS] {
        let (status, body) = s.get(path, Some(&alice.token)).await;
        assert_eq!((status, body), (StatusCode::OK, json!({})), "{path}");
    }
    let (_, body) = s.get("/.well-known/matrix/client", None).await;
    assert_eq!(body, json!({"m.homeserver": {"base_url": "https://matrix.example.com"}}));
}

async fn request_openid(s: &TestServer, token: &str, user_id: &str) -> (StatusCode, Value) {
    s.post(&format!("{V3}/user/{user_id}/openid/request_token"), Some(token), json!({})).await
}

fn userinfo_path(token: &str) -> String {
    format!("{USERINFO}?access_token={}", urlencode(token))
}

#[tokio::test]
async fn openid_tokens_name_their_user_until_they_expire() {
    // Federation stays off (the default): the userinfo check is served anyway.
    let s = TestServer::start().await;
    assert!(!s.services.config.allow_federation);
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;

    let (status, body) = request_openid(&s, &alice.token, &alice.user_id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["matrix_server_name"], "localhost");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().unwrap().to_owned();
    assert!(token.len() >= 32, "{token}");
    // It is not an access token.
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&token)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );

    // Only for oneself; a token is needed.
    expect_error(request_openid(&s, &bob.token, &alice.user_id).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(
        s.post(&format!("{V3}/user/{}/openid/request_token", alice.user_id), None, json!({})).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );

    // The check the LiveKit JWT service makes, without any access token of its own.
    let (status, body) = s.get(&userinfo_path(&token), None).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"sub": alice.user_id})));
    // Twice: checking does not use a token up.
    let (status, _) = s.get(&userinfo_path(&token), None).await;
    assert_eq!(status, StatusCode::OK);

    let (_, body) = request_openid(&s, &bob.token, &bob.user_id).await;
    let bobs = body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(bobs, token);
    let (_, body) = s.get(&userinfo_path(&bobs), None).await;
    assert_eq!(body["sub"], bob.user_id);

    expect_error(
        s.get(&userinfo_path("not-a-token"), None).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    // Nor does an access token work here.
    expect_error(
        s.get(&userinfo_path(&alice.token), None).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    expect_error(s.get(USERINFO, None).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");

    // An hour later both are gone; the one asked for later lives a little longer.
    s.clock.advance_ms(3_599_000);
    let (status, _) = s.get(&userinfo_path(&token), None).await;
    assert_eq!(status, StatusCode::OK, "still valid a second before the hour");
    let (_, body) = request_openid(&s, &alice.token, &alice.user_id).await;
    let later = body["access_token"].as_str().unwrap().to_owned();
    s.clock.advance_ms(1_000);
    expect_error(s.get(&userinfo_path(&token), None).await, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    let (_, body) = s.get(&userinfo_path(&later), None).await;
    assert_eq!(body["sub"], alice.user_id);

    // The expired token the check found was deleted then; the sweep takes bob's.
    assert_eq!(s.services.openid.stored_tokens().unwrap(), 2);
    assert_eq!(s.services.openid.remove_expired().unwrap(), 1);
    assert_eq!(s.services.openid.stored_tokens().unwrap(), 1);
    expect_error(s.get(&userinfo_path(&bobs), None).await, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
    s.clock.advance_ms(3_600_000);
    assert_eq!(s.services.openid.remove_expired().unwrap(), 1);
    assert_eq!(s.services.openid.stored_tokens().unwrap(), 0);
}

#[tokio::test]
async fn a_deactivated_users_openid_token_stops_working() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (_, body) = request_openid(&s, &alice.token, &alice.user_id).await;
    let token = body["access_token"].as_str().unwrap().to_owned();
    let (status, _) = s.get(&userinfo_path(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s
        .post(
            &format!("{V3}/account/deactivate"),
            Some(&alice.token),
            json!({"auth": crate::harness::password_auth("alice", "pw-alice-123", None)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    expect_error(s.get(&userinfo_path(&token), None).await, StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN");
}

/// 2100-01-01T00:00:00Z: the manual clock is moved here so credentials are fixed values.
const FIXED_NOW_MS: u64 = 4_102_444_800_000;

#[tokio::test]
async fn turn_credentials_from_a_shared_secret() {
    let s = TestServer::start_with(|c| {
        c.turn_uris =
            vec!["turn:turn.example.com:3478?transport=udp".into(), "turns:turn.example.com:5349".into()];
        c.turn_secret = Some("turn-shared-secret".into());
    })
    .await;
    s.clock.advance_ms(FIXED_NOW_MS - s.clock.now_ms());
    let alice = s.register("alice", "pw-alice-123").await;

    for version in ["r0", "v3"] {
        let (status, body) =
            s.get(&format!("/_matrix/client/{version}/voip/turnServer"), Some(&alice.token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        // Expiry = now + turn_ttl (a day). The password was computed apart from the server:
        // printf %s '4102531200:@alice:localhost' | openssl dgst -sha1 -hmac turn-shared-secret -binary | base64
        assert_eq!(
            body,
            json!({
                "username": "4102531200:@alice:localhost",
                "password": "B9+T6z2l7IQcxnqF3SenNzKBSbs=",
                "uris": ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"],
                "ttl": 86400,
            }),
            "{version}"
        );
    }

    // An hour on, the credentials are new ones ending an hour later.
    s.clock.advance_ms(3_600_000);
    let (_, body) = s.get(&format!("{V3}/voip/turnServer"), Some(&alice.token)).await;
    assert_eq!(body["username"], "4102534800:@alice:localhost");
    // python3 -c "import hmac,hashlib,base64; print(base64.b64encode(hmac.new(b'turn-shared-secret',
    //   b'4102534800:@alice:localhost', hashlib.sha1).digest()).decode())"
    assert_eq!(body["password"], "atqKjt0Y5XGBQm9mcgUyYoqGUAU=");

    expect_error(
        s.get(&format!("{V3}/voip/turnServer"), None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

#[tokio::test]
async fn turn_credentials_fixed_or_none() {
    let s = TestServer::start_with(|c| {
        c.turn_uris = vec!["turn:turn.example.com".into()];
        c.turn_username = Some("conduit".into());
        c.turn_password = Some("static-password".into());
        c.turn_ttl = 600;
    })
    .await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (status, body) = s.get(&format!("{V3}/voip/turnServer"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"username": "conduit", "password": "static-password", "uris": ["turn:turn.example.com"], "ttl": 600})
    );

    // No TURN server configured: `{}`, as Synapse answers.
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let (status, body) = s.get(&format!("{V3}/voip/turnServer"), Some(&alice.token)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
}
