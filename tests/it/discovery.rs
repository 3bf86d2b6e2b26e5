//! `/versions`, `/.well-known`, `/capabilities`.

use reqwest::StatusCode;

use crate::harness::{TestServer, expect_error};

#[tokio::test]
async fn versions_lists_implemented_spec_versions_without_auth() {
    let s = TestServer::start().await;
    let (status, body) = s.get("/_matrix/client/versions", None).await;
    assert_eq!(status, StatusCode::OK);
    let versions: Vec<&str> =
        body["versions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for version in ["v1.1", "v1.3", "v1.4", "v1.11", "v1.15"] {
        assert!(versions.contains(&version), "{version} missing: {versions:?}");
    }
    // Element offers cross-signing, verification and key backup only when it sees this flag;
    // clients probe the others too before they use the features.
    for flag in [
        "org.matrix.e2e_cross_signing",
        "org.matrix.msc3916.stable",
        "org.matrix.msc3440.stable",
        "org.matrix.msc2285.stable",
        "uk.half-shot.msc2666.query_mutual_rooms.stable",
    ] {
        assert_eq!(body["unstable_features"][flag], true, "{flag}: {body}");
    }
    // A token that is present must be valid.
    expect_error(
        s.get("/_matrix/client/versions", Some("nope")).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
}

#[tokio::test]
async fn well_known_is_served_only_when_configured() {
    let s = TestServer::start().await;
    expect_error(s.get("/.well-known/matrix/client", None).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");
    expect_error(s.get("/.well-known/matrix/server", None).await, StatusCode::NOT_FOUND, "M_NOT_FOUND");

    let s = TestServer::start_with(|c| {
        c.well_known.client = Some("https://matrix.example.com".into());
        c.well_known.server = Some("matrix.example.com:443".into());
    })
    .await;
    let (status, body) = s.get("/.well-known/matrix/client", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["m.homeserver"]["base_url"], "https://matrix.example.com");
    let (status, body) = s.get("/.well-known/matrix/server", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["m.server"], "matrix.example.com:443");
}

#[tokio::test]
async fn capabilities_need_a_token_and_describe_the_server() {
    let s = TestServer::start().await;
    expect_error(
        s.get("/_matrix/client/v3/capabilities", None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    let alice = s.register("alice", "secret-password").await;
    let (status, body) = s.get("/_matrix/client/v3/capabilities", Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let caps = &body["capabilities"];
    // Spelled out, though enabled is the default: Element reads it there.
    assert_eq!(caps["m.change_password"]["enabled"], true, "{caps}");
    assert_eq!(caps["m.3pid_changes"]["enabled"], false);
    assert_eq!(caps["m.room_versions"]["default"], "12", "{caps}");
}
