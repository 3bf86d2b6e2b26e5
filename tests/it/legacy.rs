//! The deprecated endpoints old bots and scripts still call, through HTTP: `/admin/whois`.
//! Bodies are compared with what Synapse answers.

use conduit::service::clock::Clock;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error},
    rooms::V3,
};

/// GET a path; panics unless it answers 200.
async fn get_ok(s: &TestServer, who: &Session, path: &str) -> Value {
    let (status, body) = s.get(path, Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

#[tokio::test]
async fn whois_shows_devices_to_the_user_and_to_admins() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let laptop = s.login("alice", "pw-alice-123", Some("LAPTOP")).await;
    let path = format!("{V3}/admin/whois/{}", alice.user_id);
    let resp = s
        .http
        .get(format!("{}{path}", s.base))
        .bearer_auth(&laptop.token)
        .header("User-Agent", "legacy-test/1.0")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let whois: Value = resp.json().await.unwrap();
    assert_eq!(whois["user_id"], json!(alice.user_id));
    let devices = whois["devices"].as_object().unwrap();
    let mut ids: Vec<&String> = devices.keys().collect();
    ids.sort();
    let mut expected = vec![&alice.device_id, &laptop.device_id];
    expected.sort();
    assert_eq!(ids, expected);
    // The device making the request was just seen, with its agent.
    let connection = &devices["LAPTOP"]["sessions"][0]["connections"][0];
    assert_eq!(
        (&connection["ip"], &connection["last_seen"], &connection["user_agent"]),
        (&json!("127.0.0.1"), &json!(s.clock.now_ms()), &json!("legacy-test/1.0"))
    );
    assert_eq!(devices[&alice.device_id]["sessions"][0]["connections"][0]["ip"], "127.0.0.1");

    // The agent outlives the in-memory buffer.
    s.services.devices.flush_last_seen().unwrap();
    s.clock.advance_ms(1000);
    let whois = get_ok(&s, &alice, &path).await;
    assert_eq!(whois["devices"]["LAPTOP"]["sessions"][0]["connections"][0]["user_agent"], "legacy-test/1.0");

    // Others may not look, unless they are server admins; admins look only at local users.
    let refused = expect_error(s.get(&path, Some(&bob.token)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert_eq!(refused["error"], "You are not a server admin");
    s.services.accounts.create_user("boss", "pw-boss-12345", true).await.unwrap();
    let boss = s.login("boss", "pw-boss-12345", None).await;
    let seen = get_ok(&s, &boss, &path).await;
    assert_eq!(seen["devices"].as_object().unwrap().len(), 2);
    expect_error(
        s.get(&format!("{V3}/admin/whois/@x:elsewhere"), Some(&boss.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.get(&format!("{V3}/admin/whois/@x:elsewhere"), Some(&bob.token)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}
