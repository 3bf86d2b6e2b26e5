//! The deprecated endpoints old bots and scripts still call, through HTTP:
//! `/events/{eventId}`, `POST /send` without a transaction ID, and `/admin/whois`. Bodies are
//! compared with what Synapse answers.

use conduit::service::clock::Clock;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error},
    rooms::{V3, create_room, send_text},
    sync::bodies,
};

/// GET a path; panics unless it answers 200.
async fn get_ok(s: &TestServer, who: &Session, path: &str) -> Value {
    let (status, body) = s.get(path, Some(&who.token)).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

#[tokio::test]
async fn single_event_by_id_follows_history_visibility() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let hello = send_text(&s, &alice, &room, "t1", "hello").await;

    let event = get_ok(&s, &alice, &format!("{V3}/events/{hello}")).await;
    assert_eq!(
        (&event["content"]["body"], &event["room_id"], &event["user_id"]),
        (&json!("hello"), &json!(room), &json!(alice.user_id))
    );
    assert_eq!(event["unsigned"]["transaction_id"], "t1");
    // A stranger to a `shared` room learns nothing, not even that the event exists.
    expect_error(
        s.get(&format!("{V3}/events/{hello}"), Some(&carol.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get(&format!("{V3}/events/$nope"), Some(&carol.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get(&format!("{V3}/events/nope"), Some(&carol.token)).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // Events of a world-readable room are readable by anyone.
    let (status, _) = s
        .put(
            &format!("{V3}/rooms/{room}/state/m.room.history_visibility"),
            Some(&alice.token),
            json!({"history_visibility": "world_readable"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let open = send_text(&s, &alice, &room, "t2", "for everyone").await;
    let seen = get_ok(&s, &carol, &format!("{V3}/events/{open}")).await;
    assert_eq!(seen["content"]["body"], "for everyone");
    assert!(seen["unsigned"].get("transaction_id").is_none(), "only the sender's device sees it");
    // Visibility is decided at the event: what was sent while the room was `shared` stays
    // hidden from strangers.
    expect_error(
        s.get(&format!("{V3}/events/{hello}"), Some(&carol.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
}

#[tokio::test]
async fn post_send_makes_a_new_event_on_every_call() {
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let carol = s.register("carol", "pw-carol-1234").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let path = format!("{V3}/rooms/{room}/send/m.room.message");
    let content = json!({"msgtype": "m.text", "body": "posted"});
    let (status, first) = s.post(&path, Some(&alice.token), content.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, second) = s.post(&path, Some(&alice.token), content).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(first["event_id"], second["event_id"]);
    let history = get_ok(&s, &alice, &format!("{V3}/rooms/{room}/messages?dir=b&limit=2")).await;
    assert_eq!(bodies(&history["chunk"]), ["posted", "posted"]);
    let sent =
        get_ok(&s, &alice, &format!("{V3}/rooms/{room}/event/{}", first["event_id"].as_str().unwrap())).await;
    assert_eq!((&sent["type"], &sent["sender"]), (&json!("m.room.message"), &json!(alice.user_id)));

    expect_error(
        s.post(&path, Some(&carol.token), json!({"body": "x"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(s.post(&path, Some(&alice.token), json!([1])).await, StatusCode::BAD_REQUEST, "M_BAD_JSON");
    let resp = s
        .http
        .post(format!("{}{path}", s.base))
        .bearer_auth(&alice.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    expect_error((status, body), StatusCode::BAD_REQUEST, "M_NOT_JSON");
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
