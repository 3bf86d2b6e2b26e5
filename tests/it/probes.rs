//! What Element X (matrix-rust-sdk) asks a server before and at login, and what it makes of
//! the answers: OAuth 2.0 discovery must say "not offered" the way the SDK understands, the
//! login flows must offer a password (Element X refuses servers with SSO alone), and the
//! login answer carries the client base URL when one is configured.

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    harness::{TestServer, expect_error},
    rooms::V3,
};

#[tokio::test]
async fn oauth_discovery_answers_unrecognized_while_no_authorization_server_is_offered() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    // The SDK's `supports_oauth_login` is true only if one of these succeeds; Synapse without
    // MAS answers 404 M_UNRECOGNIZED, with or without a token.
    for path in [
        "/_matrix/client/v1/auth_metadata",
        "/_matrix/client/unstable/org.matrix.msc2965/auth_metadata",
        "/_matrix/client/v1/auth_issuer",
        "/_matrix/client/unstable/org.matrix.msc2965/auth_issuer",
    ] {
        expect_error(s.get(path, None).await, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
        expect_error(s.get(path, Some(&alice.token)).await, StatusCode::NOT_FOUND, "M_UNRECOGNIZED");
    }
    // So Element X needs the password flow.
    let (status, body) = s.get(&format!("{V3}/login"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.password"), "{body}");
}

#[tokio::test]
async fn login_answers_the_configured_client_base_url() {
    let password_login = json!({
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": "alice"},
        "password": "pw-alice-123",
    });

    let s = TestServer::start_with(|c| c.well_known.client = Some("https://matrix.example.com".into())).await;
    s.register("alice", "pw-alice-123").await;
    let (status, body) = s.post(&format!("{V3}/login"), None, password_login.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["well_known"], json!({"m.homeserver": {"base_url": "https://matrix.example.com"}}));
    // The same on r0, which older clients use.
    let (_, body) = s.post("/_matrix/client/r0/login", None, password_login.clone()).await;
    assert_eq!(body["well_known"]["m.homeserver"]["base_url"], "https://matrix.example.com");

    // Without one there is nothing to say, and the key is left out.
    let s = TestServer::start().await;
    s.register("alice", "pw-alice-123").await;
    let (status, body) = s.post(&format!("{V3}/login"), None, password_login).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("well_known").is_none(), "{body}");
}
