//! The audit log through HTTP: each security-relevant action leaves a record naming its
//! actor, client address (through a trusted proxy's `X-Forwarded-For`), user agent and request
//! ID; admins query it with filters and paging; the hash chain verifies; the file copy holds
//! the same records; retention deletes old ones and leaves a chain that still verifies.

use conduit::service::clock::Clock as _;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Session, TestServer, expect_error, password_auth},
    keys::{cross_pair, cross_signing_key},
    rooms::{V3, create_room, join, send_text},
};

const LOG: &str = "/_conduit/admin/v1/audit_log";

async fn records(s: &TestServer, admin: &Session, query: &str) -> Vec<Value> {
    let (status, body) = s.get(&format!("{LOG}?limit=1000&{query}"), Some(&admin.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["records"].as_array().unwrap().clone()
}

fn actions(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("{}:{}", r["action"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect()
}

fn one<'a>(records: &'a [Value], action: &str, outcome: &str) -> &'a Value {
    let found: Vec<&Value> =
        records.iter().filter(|r| r["action"] == action && r["outcome"] == outcome).collect();
    assert_eq!(found.len(), 1, "one {action}:{outcome} in {:?}", actions(records));
    found[0]
}

#[tokio::test]
async fn security_actions_are_recorded_with_who_where_and_a_verified_chain() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let file_for_config = file.clone();
    let s = TestServer::start_with(move |c| c.audit.file = Some(file_for_config)).await;
    s.services.accounts.create_user("root", "pw-root-12345", true).await.unwrap();
    let root = s.login("root", "pw-root-12345", None).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;

    // A failed login through a proxy on loopback: the forwarded address and the user agent
    // are what the record keeps.
    let response = s
        .http
        .post(format!("{}{V3}/login", s.base))
        .header("X-Forwarded-For", "203.0.113.50")
        .header("User-Agent", "audit-test/1.0")
        .json(&json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "wrong"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(request_id.len(), 16, "every answer names its request ID");

    // Password change, device deletion, logout, a cross-signing reset, moderation in a room,
    // an admin API call and a deactivation.
    let second = s.login("alice", "pw-alice-123", Some("SECOND")).await;
    let path = format!("{V3}/account/password");
    let (status, challenge) = s
        .post(&path, Some(&alice.token), json!({"new_password": "pw-alice-456", "logout_devices": false}))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let auth = password_auth(&alice.user_id, "pw-alice-123", challenge["session"].as_str());
    let body = json!({"new_password": "pw-alice-456", "logout_devices": false, "auth": auth});
    assert_eq!(s.post(&path, Some(&alice.token), body).await.0, StatusCode::OK);
    let (status, challenge) =
        s.post(&format!("{V3}/delete_devices"), Some(&alice.token), json!({"devices": ["SECOND"]})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let auth = password_auth(&alice.user_id, "pw-alice-456", challenge["session"].as_str());
    let body = json!({"devices": ["SECOND"], "auth": auth});
    assert_eq!(s.post(&format!("{V3}/delete_devices"), Some(&alice.token), body).await.0, StatusCode::OK);
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(&second.token)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );

    let signing = format!("{V3}/keys/device_signing/upload");
    let first = cross_pair();
    let keys = json!({"master_key": cross_signing_key(&alice.user_id, &first, "master")});
    assert_eq!(s.post(&signing, Some(&alice.token), keys).await.0, StatusCode::OK);
    let replacement = cross_pair();
    let reset = json!({"master_key": cross_signing_key(&alice.user_id, &replacement, "master")});
    let (status, challenge) = s.post(&signing, Some(&alice.token), reset.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let mut with_auth = reset;
    with_auth["auth"] = password_auth(&alice.user_id, "pw-alice-456", challenge["session"].as_str());
    assert_eq!(s.post(&signing, Some(&alice.token), with_auth).await.0, StatusCode::OK);

    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&s, &bob, &room).await.0, StatusCode::OK);
    let bobs = send_text(&s, &bob, &room, "t1", "spam").await;
    let alices = send_text(&s, &alice, &room, "t2", "mine").await;
    let redact = |event: &str, txn: &str| format!("{V3}/rooms/{room}/redact/{event}/{txn}");
    assert_eq!(s.put(&redact(&alices, "r1"), Some(&alice.token), json!({})).await.0, StatusCode::OK);
    assert_eq!(
        s.put(&redact(&bobs, "r2"), Some(&alice.token), json!({"reason": "spam"})).await.0,
        StatusCode::OK
    );
    let kick = json!({"user_id": bob.user_id, "reason": "behave"});
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/kick"), Some(&alice.token), kick).await.0, StatusCode::OK);
    let ban = json!({"user_id": bob.user_id});
    assert_eq!(
        s.post(&format!("{V3}/rooms/{room}/ban"), Some(&alice.token), ban.clone()).await.0,
        StatusCode::OK
    );
    assert_eq!(s.post(&format!("{V3}/rooms/{room}/unban"), Some(&alice.token), ban).await.0, StatusCode::OK);
    // The creator is not listed: in room version 12 creators hold power beyond the levels.
    let power = json!({"users": {bob.user_id.clone(): 50}});
    let power_path = format!("{V3}/rooms/{room}/state/m.room.power_levels/");
    assert_eq!(s.put(&power_path, Some(&alice.token), power).await.0, StatusCode::OK);

    let flag = format!("/_synapse/admin/v1/users/{}/admin", bob.user_id);
    expect_error(
        s.put(&flag, Some(&bob.token), json!({"admin": true})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert_eq!(s.put(&flag, Some(&root.token), json!({"admin": true})).await.0, StatusCode::OK);
    assert_eq!(s.post(&format!("{V3}/logout"), Some(&bob.token), json!({})).await.0, StatusCode::OK);

    let path = format!("{V3}/account/deactivate");
    let (status, challenge) = s.post(&path, Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let auth = password_auth(&alice.user_id, "pw-alice-456", challenge["session"].as_str());
    assert_eq!(s.post(&path, Some(&alice.token), json!({"auth": auth})).await.0, StatusCode::OK);

    // Everything is there, newest first, each with its actor.
    let all = records(&s, &root, "").await;
    let seqs: Vec<u64> = all.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first: {seqs:?}");
    for action in [
        "register",
        "login",
        "password.change",
        "device.delete",
        "keys.cross_signing.reset",
        "account.deactivate",
        "logout",
    ] {
        assert!(all.iter().any(|r| r["action"] == action), "{action} missing from {:?}", actions(&all));
    }
    let failed = one(&all, "login", "failure");
    assert_eq!(failed["target"], "alice");
    assert_eq!(failed["actor"]["kind"], "anonymous");
    assert_eq!(failed["actor"]["ip"], "203.0.113.50", "the address behind the trusted proxy");
    assert_eq!(failed["actor"]["user_agent"], "audit-test/1.0");
    assert_eq!(failed["actor"]["request_id"], request_id.as_str());
    assert!(failed.to_string().find("wrong").is_none(), "no password in the record: {failed}");

    let change = one(&all, "password.change", "success");
    assert_eq!(change["actor"]["user_id"], alice.user_id.as_str());
    assert_eq!(change["actor"]["device_id"], alice.device_id.as_str());
    assert!(!change.to_string().contains("pw-alice-456"), "no password in the record");
    assert_eq!(one(&all, "device.delete", "success")["params"]["devices"], json!(["SECOND"]));
    let reset = one(&all, "keys.cross_signing.reset", "success");
    assert_eq!(reset["target"], alice.user_id.as_str());
    assert_eq!(one(&all, "logout", "success")["actor"]["user_id"], bob.user_id.as_str());

    let redaction = one(&all, "room.redact", "success");
    assert_eq!(redaction["params"]["redacts"], bobs.as_str(), "only the redaction of someone else's event");
    assert_eq!(redaction["actor"]["user_id"], alice.user_id.as_str());
    let kicked = one(&all, "room.kick", "success");
    assert_eq!(
        (kicked["target"].as_str(), kicked["params"]["user_id"].as_str()),
        (Some(room.as_str()), Some(bob.user_id.as_str()))
    );
    assert_eq!(kicked["params"]["reason"], "behave");
    one(&all, "room.ban", "success");
    one(&all, "room.unban", "success");
    assert_eq!(one(&all, "room.power_levels", "success")["params"]["users"][&bob.user_id], 50);

    // The admin API: the refused attempt and the granted call, with the route and body.
    let admin_calls = records(&s, &root, "action=admin.").await;
    assert_eq!(actions(&admin_calls), ["admin.request:success", "admin.request:failure"]);
    assert_eq!(admin_calls[1]["actor"]["user_id"], bob.user_id.as_str());
    assert_eq!(admin_calls[0]["target"], "/_synapse/admin/v1/users/{user_id}/admin");
    assert_eq!(admin_calls[0]["params"]["body"], json!({"admin": true}));
    assert_eq!(admin_calls[0]["params"]["status"], 200);
    one(&all, "user.admin", "success");

    // Filters and paging.
    let bobs_records = records(&s, &root, &format!("actor={}", urlencode(&bob.user_id))).await;
    assert!(
        !bobs_records.is_empty()
            && bobs_records.iter().all(|r| r["actor"]["user_id"] == bob.user_id.as_str())
    );
    let on_alice = records(&s, &root, &format!("target={}", urlencode(&alice.user_id))).await;
    assert!(on_alice.iter().any(|r| r["action"] == "account.deactivate"));
    let (_, page) = s.get(&format!("{LOG}?limit=3&dir=f"), Some(&root.token)).await;
    let first_page: Vec<u64> =
        page["records"].as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(first_page, [0, 1, 2]);
    let next = page["next_batch"].as_str().unwrap();
    let (_, page) = s.get(&format!("{LOG}?limit=3&dir=f&from={next}"), Some(&root.token)).await;
    assert_eq!(page["records"][0]["seq"], 3);
    let now = s.clock.now_ms();
    assert!(records(&s, &root, &format!("from_ts={}", now + 1)).await.is_empty());
    assert_eq!(records(&s, &root, &format!("to_ts={now}")).await.len(), all.len());

    // The chain holds, and links each record to the one before.
    let oldest_first: Vec<&Value> = all.iter().rev().collect();
    assert_eq!(oldest_first[0]["prev_hash"], "0".repeat(64));
    for pair in oldest_first.windows(2) {
        assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
    }
    let (status, verified) = s.get(&format!("{LOG}/verify"), Some(&root.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verified["valid"], true, "{verified}");
    assert_eq!(verified["records"], all.len() as u64);

    // Bad parameters are named.
    for bad in ["limit=many", "dir=sideways", "from_ts=-1", "from=abc"] {
        let answer = s.get(&format!("{LOG}?{bad}"), Some(&root.token)).await;
        expect_error(answer, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    }

    // Only admins read it.
    let carol = s.register("carol", "pw-carol-123").await;
    expect_error(s.get(LOG, Some(&carol.token)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // The file holds the same records, in order, as JSON lines.
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let stored: Vec<Value> = records(&s, &root, "dir=f").await;
    assert_eq!(lines, stored);
}

#[tokio::test]
async fn retention_deletes_old_records_and_the_rest_still_verifies() {
    let s = TestServer::start_with(|c| c.audit.retention_days = Some(30)).await;
    s.services.accounts.create_user("root", "pw-root-12345", true).await.unwrap();
    let root = s.login("root", "pw-root-12345", None).await;
    s.register("old", "pw-old-12345").await;
    s.clock.advance_ms(31 * 86_400_000);
    s.register("new", "pw-new-12345").await;
    let before = records(&s, &root, "dir=f").await;
    assert_eq!(s.services.audit.prune().unwrap(), 3, "user.create, root's login, old's register");
    let after = records(&s, &root, "dir=f").await;
    assert_eq!(after.len(), before.len() - 3);
    assert_eq!(after[0]["action"], "register");
    assert_eq!(after[0]["target"], "@new:localhost");
    let (_, verified) = s.get(&format!("{LOG}/verify"), Some(&root.token)).await;
    assert_eq!(verified["valid"], true, "{verified}");
    assert_eq!(verified["first_seq"], 3);
    // New records continue the chain after a restart.
    let s = s.restart_with(|c| c.audit.retention_days = Some(30)).await;
    let root = s.login("root", "pw-root-12345", None).await;
    let latest = records(&s, &root, "limit=2").await;
    assert_eq!(latest[0]["prev_hash"], latest[1]["hash"]);
    let (_, verified) = s.get(&format!("{LOG}/verify"), Some(&root.token)).await;
    assert_eq!(verified["valid"], true, "{verified}");
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
