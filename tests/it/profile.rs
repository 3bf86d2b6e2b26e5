//! Display names and avatars.

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{TestServer, expect_error};

#[tokio::test]
async fn profile_fields_can_be_read_by_anyone_and_set_by_their_owner() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let base = "/_matrix/client/v3/profile/@alice:localhost";

    // Registration sets the localpart as display name, as Synapse does.
    assert_eq!(
        s.get(&format!("{base}/displayname"), None).await,
        (StatusCode::OK, json!({"displayname": "alice"}))
    );
    assert_eq!(s.get(&format!("{base}/avatar_url"), None).await, (StatusCode::OK, json!({})));

    assert_eq!(
        s.put(&format!("{base}/displayname"), Some(&alice.token), json!({"displayname": "Alice A."})).await,
        (StatusCode::OK, json!({}))
    );
    assert_eq!(
        s.put(
            &format!("{base}/avatar_url"),
            Some(&alice.token),
            json!({"avatar_url": "mxc://localhost/abc"})
        )
        .await
        .0,
        StatusCode::OK
    );
    let (status, body) = s.get(base, Some(&bob.token)).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"displayname": "Alice A.", "avatar_url": "mxc://localhost/abc"}))
    );

    expect_error(
        s.put(&format!("{base}/displayname"), Some(&bob.token), json!({"displayname": "hijack"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(
        s.put(&format!("{base}/displayname"), None, json!({"displayname": "x"})).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    let long = "n".repeat(300);
    expect_error(
        s.put(&format!("{base}/displayname"), Some(&alice.token), json!({"displayname": long})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    // Clearing.
    assert_eq!(
        s.put(&format!("{base}/displayname"), Some(&alice.token), json!({"displayname": null})).await.0,
        StatusCode::OK
    );
    assert_eq!(s.get(&format!("{base}/displayname"), None).await, (StatusCode::OK, json!({})));
}

#[tokio::test]
async fn unknown_users_have_no_profile() {
    let s = TestServer::start().await;
    expect_error(
        s.get("/_matrix/client/v3/profile/@nobody:localhost", None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get("/_matrix/client/v3/profile/@nobody:localhost/displayname", None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get("/_matrix/client/v3/profile/not-a-user-id", None).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
}
