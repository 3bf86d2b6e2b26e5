//! Device listing, renaming and deletion.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{TestServer, expect_error, password_auth, test_config};

#[tokio::test]
async fn devices_are_listed_with_every_field_and_can_be_renamed() {
    let s = TestServer::start().await;
    let a = s.register("alice", "pw-alice-123").await;
    let b = s.login("alice", "pw-alice-123", Some("TABLET")).await;
    let (status, body) = s.get("/_matrix/client/v3/devices", Some(&a.token)).await;
    assert_eq!(status, StatusCode::OK);
    let devices = body["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2);
    for d in devices {
        // Clients such as matrix-nio require every key, even when null.
        for key in ["device_id", "display_name", "last_seen_ip", "last_seen_ts"] {
            assert!(d.get(key).is_some(), "{key} missing in {d}");
        }
        assert_eq!(d["last_seen_ip"], "127.0.0.1");
    }

    let (status, body) = s
        .put("/_matrix/client/v3/devices/TABLET", Some(&a.token), json!({"display_name": "Kitchen tablet"}))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (_, device) = s.get("/_matrix/client/v3/devices/TABLET", Some(&b.token)).await;
    assert_eq!(device["display_name"], "Kitchen tablet");
    // No display_name leaves it alone.
    assert_eq!(s.put("/_matrix/client/v3/devices/TABLET", Some(&a.token), json!({})).await.0, StatusCode::OK);
    assert_eq!(
        s.get("/_matrix/client/v3/devices/TABLET", Some(&b.token)).await.1["display_name"],
        "Kitchen tablet"
    );

    let long = "x".repeat(101);
    expect_error(
        s.put("/_matrix/client/v3/devices/TABLET", Some(&a.token), json!({"display_name": long})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.get("/_matrix/client/v3/devices/NOPE", Some(&a.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.put("/_matrix/client/v3/devices/NOPE", Some(&a.token), json!({"display_name": "x"})).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Another user's devices are invisible.
    let bob = s.register("bob", "pw-bob-12345").await;
    expect_error(
        s.get("/_matrix/client/v3/devices/TABLET", Some(&bob.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn deleting_devices_needs_the_password_and_revokes_their_tokens() {
    let s = TestServer::start().await;
    let a = s.register("carol", "pw-carol-123").await;
    let b = s.login("carol", "pw-carol-123", Some("OLD")).await;
    let c = s.login("carol", "pw-carol-123", Some("OLDER")).await;

    let (status, body) =
        s.call(Method::DELETE, "/_matrix/client/v3/devices/OLD", Some(&a.token), Some(json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["flows"], json!([{"stages": ["m.login.password"]}]));
    let session = body["session"].as_str().unwrap();
    let (status, body) = s
        .call(
            Method::DELETE,
            "/_matrix/client/v3/devices/OLD",
            Some(&a.token),
            Some(json!({"auth": password_auth("carol", "pw-carol-123", Some(session))})),
        )
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    expect_error(
        s.get("/_matrix/client/v3/account/whoami", Some(&b.token)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );

    let (_, body) = s
        .post("/_matrix/client/v3/delete_devices", Some(&a.token), json!({"devices": ["OLDER", "UNKNOWN"]}))
        .await;
    let session = body["session"].as_str().unwrap();
    let (status, _) = s.post("/_matrix/client/v3/delete_devices", Some(&a.token),
        json!({"devices": ["OLDER", "UNKNOWN"], "auth": password_auth("carol", "pw-carol-123", Some(session))})).await;
    assert_eq!(status, StatusCode::OK);
    expect_error(
        s.get("/_matrix/client/v3/account/whoami", Some(&c.token)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    let (_, body) = s.get("/_matrix/client/v3/devices", Some(&a.token)).await;
    let ids: Vec<&str> =
        body["devices"].as_array().unwrap().iter().map(|d| d["device_id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![a.device_id.as_str()]);
}

#[tokio::test]
async fn last_seen_is_kept_across_a_restart() {
    let s = TestServer::start().await;
    let a = s.register("dora", "pw-dora-1234").await;
    let seen_at_login = s.get(&format!("/_matrix/client/v3/devices/{}", a.device_id), Some(&a.token)).await.1
        ["last_seen_ts"]
        .as_u64()
        .unwrap();
    s.clock.advance_ms(60_000);
    // This request is the latest sighting; it is held in memory and written at shutdown.
    assert_eq!(s.get("/_matrix/client/v3/account/whoami", Some(&a.token)).await.0, StatusCode::OK);
    let dir = s.stop().await;

    let s = TestServer::boot(test_config(dir.path()), dir).await;
    let b = s.login("dora", "pw-dora-1234", None).await;
    let (_, device) = s.get(&format!("/_matrix/client/v3/devices/{}", a.device_id), Some(&b.token)).await;
    assert_eq!(device["last_seen_ts"].as_u64().unwrap(), seen_at_login + 60_000, "{device}");
}
