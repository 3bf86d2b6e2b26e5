//! Rate limits (Synapse's `rc_*`) through HTTP on a real server, on the manual clock: each
//! limiter refuses past its burst with `429 M_LIMIT_EXCEEDED`, `retry_after_ms` and a
//! `Retry-After` header, and lets the next action through once the clock has moved by the
//! wait; per-address limits key on the forwarded address; a flood of wrong passwords is cut
//! to the configured rate without slowing anyone else; admins and overrides are exempt.

use std::{future::Future, sync::Arc};

use conduit::config::{Config, Rate};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Session, TestServer, expect_error};

const V3: &str = "/_matrix/client/v3";
const ADMIN: &str = "/_synapse/admin/v1";

/// A limit tests can exhaust in a few requests: 2 at once, then one every 2 s.
const TIGHT: Rate = Rate::new(0.5, 2.0);

/// Limits on, every one far above what a test sends; each test tightens the one it checks.
fn limits_on(c: &mut Config) {
    let open = Rate::new(1e6, 1e6);
    c.rate_limiting = true;
    c.rc_message = open;
    c.rc_admin_redaction = None;
    c.rc_registration = open;
    c.rc_registration_token_validity = open;
    c.rc_login.address = open;
    c.rc_login.account = open;
    c.rc_login.failed_attempts = open;
    c.rc_joins.local = open;
    c.rc_joins.remote = open;
    c.rc_joins_per_room = open;
    c.rc_invites.per_room = open;
    c.rc_invites.per_user = open;
    c.rc_invites.per_issuer = open;
    c.rc_3pid_validation = open;
    c.rc_media_create = open;
    c.rc_presence.per_user = open;
    c.rc_delayed_event_mgmt = open;
    c.rc_reports = open;
    c.rc_room_creation = open;
    c.rc_user_directory = open;
    c.rc_key_requests = open;
}

async fn server(tighten: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(|c| {
        limits_on(c);
        tighten(c);
    })
    .await
}

/// One answer, with the header the harness's helpers leave out.
struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
}

/// Send a request, optionally through the loopback proxy on behalf of `forwarded_for`.
async fn send(
    s: &TestServer,
    method: Method,
    path: String,
    token: Option<&str>,
    body: Option<Value>,
    forwarded_for: Option<&str>,
) -> Answer {
    let mut req = s.http.request(method, format!("{}{path}", s.base));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    if let Some(address) = forwarded_for {
        req = req.header("X-Forwarded-For", address);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body = serde_json::from_slice(&resp.bytes().await.expect("body")).unwrap_or(Value::Null);
    Answer { status, retry_after, body }
}

/// Assert a refusal with both retry hints, which agree; returns the wait in milliseconds.
fn expect_limited(answer: &Answer) -> u64 {
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS, "{}", answer.body);
    assert_eq!(answer.body["errcode"], "M_LIMIT_EXCEEDED", "{}", answer.body);
    let wait = answer.body["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no retry_after_ms: {}", answer.body));
    assert!(wait > 0, "{}", answer.body);
    let header = answer.retry_after.as_deref().expect("Retry-After header");
    assert_eq!(header, wait.div_ceil(1000).to_string(), "Retry-After is the wait in seconds, rounded up");
    wait
}

/// `burst` actions are answered `expected`; the next is refused with both hints, and still
/// is a millisecond before the wait is over; once the clock has moved by the whole wait the
/// next action is answered `expected` again. `act` is told how many calls were made before
/// and how many of them were accepted (so a refused action can be tried again as it was).
async fn burst_then_wait<F, Fut>(s: &TestServer, burst: usize, expected: StatusCode, mut act: F)
where
    F: FnMut(usize, usize) -> Fut,
    Fut: Future<Output = Answer>,
{
    let mut call = 0;
    for accepted in 0..burst {
        let answer = act(call, accepted).await;
        call += 1;
        assert_eq!(answer.status, expected, "action {accepted} of the burst: {}", answer.body);
    }
    let wait = expect_limited(&act(call, burst).await);
    call += 1;
    s.clock.advance_ms(wait - 1);
    assert_eq!(expect_limited(&act(call, burst).await), 1, "the wait shrinks as the clock moves");
    call += 1;
    s.clock.advance_ms(1);
    let answer = act(call, burst).await;
    assert_eq!(answer.status, expected, "after the wait: {}", answer.body);
}

async fn create_room(s: &TestServer, who: &Session, body: Value) -> String {
    let (status, body) = s.post(&format!("{V3}/createRoom"), Some(&who.token), body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["room_id"].as_str().unwrap().to_owned()
}

async fn join(s: &TestServer, who: &Session, room: &str) -> Answer {
    send(s, Method::POST, format!("{V3}/rooms/{room}/join"), Some(&who.token), Some(json!({})), None).await
}

async fn message(s: &TestServer, who: &Session, room: &str, txn: &str) -> Answer {
    let body = json!({"msgtype": "m.text", "body": format!("message {txn}")});
    send(
        s,
        Method::PUT,
        format!("{V3}/rooms/{room}/send/m.room.message/{txn}"),
        Some(&who.token),
        Some(body),
        None,
    )
    .await
}

#[tokio::test]
async fn messages_state_and_redactions_are_limited_per_user() {
    let s = server(|c| {
        c.rc_message = TIGHT;
        c.rc_admin_redaction = Some(Rate::new(0.25, 2.0));
    })
    .await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    assert_eq!(join(&s, &bob, &room).await.status, StatusCode::OK);
    // Bob's three messages, for alice to redact below.
    let mut bob_events = Vec::new();
    for txn in ["b0", "b1", "wait", "b2"] {
        if txn == "wait" {
            s.clock.advance_ms(2_000);
            continue;
        }
        let answer = message(&s, &bob, &room, txn).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        bob_events.push(answer.body["event_id"].as_str().unwrap().to_owned());
    }
    expect_limited(&message(&s, &bob, &room, "b3").await);

    burst_then_wait(&s, 2, StatusCode::OK, |call, _| {
        let txn = format!("a{call}");
        let (s, alice, room) = (&s, &alice, &room);
        async move { message(s, alice, room, &txn).await }
    })
    .await;
    // State events share the bucket (membership aside).
    s.clock.advance_ms(2_000);
    let path = format!("{V3}/rooms/{room}/state/m.room.topic/");
    let first =
        send(&s, Method::PUT, path.clone(), Some(&alice.token), Some(json!({"topic": "one"})), None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    expect_limited(
        &send(&s, Method::PUT, path, Some(&alice.token), Some(json!({"topic": "two"})), None).await,
    );
    // Alice's messages are used up, but redacting bob's events (as the room's admin)
    // counts under rc_admin_redaction.
    burst_then_wait(&s, 2, StatusCode::OK, |call, accepted| {
        let target = &bob_events[accepted];
        send(
            &s,
            Method::PUT,
            format!("{V3}/rooms/{room}/redact/{target}/r{call}"),
            Some(&alice.token),
            Some(json!({})),
            None,
        )
    })
    .await;
}

#[tokio::test]
async fn registration_and_token_validity_are_limited_per_address() {
    let s = server(|c| {
        c.rc_registration = TIGHT;
        c.rc_registration_token_validity = TIGHT;
    })
    .await;
    s.register("first", "pw-first-123").await;
    s.register("second", "pw-second-12").await;
    // The address is full: the next /register is refused before its body is read, even the
    // first request of a session that only asks for the flows.
    let wait = expect_limited(
        &send(
            &s,
            Method::POST,
            format!("{V3}/register"),
            None,
            Some(json!({"username": "third", "password": "pw-third-123"})),
            None,
        )
        .await,
    );
    s.clock.advance_ms(wait);
    s.register("third", "pw-third-123").await;

    burst_then_wait(&s, 2, StatusCode::OK, |_, _| {
        send(
            &s,
            Method::GET,
            "/_matrix/client/v1/register/m.login.registration_token/validity?token=abc".to_owned(),
            None,
            None,
            None,
        )
    })
    .await;
}

fn login_body(user: &str, password: &str) -> Value {
    json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password})
}

async fn login(s: &TestServer, user: &str, password: &str, forwarded_for: Option<&str>) -> Answer {
    send(s, Method::POST, format!("{V3}/login"), None, Some(login_body(user, password)), forwarded_for).await
}

#[tokio::test]
async fn logins_are_limited_per_address_per_account_and_per_failed_attempt() {
    let s = server(|c| c.rc_login.address = TIGHT).await;
    s.register("alice", "pw-alice-123").await;
    burst_then_wait(&s, 2, StatusCode::FORBIDDEN, |_, _| login(&s, "alice", "wrong-password", None)).await;

    let s = server(|c| c.rc_login.account = TIGHT).await;
    s.register("alice", "pw-alice-123").await;
    s.register("bob", "pw-bob-12345").await;
    burst_then_wait(&s, 2, StatusCode::OK, |_, _| login(&s, "alice", "pw-alice-123", None)).await;
    // Another account is not affected; its names in any spelling are one account.
    assert_eq!(login(&s, "bob", "pw-bob-12345", None).await.status, StatusCode::OK);
    assert_eq!(login(&s, "@bob:localhost", "pw-bob-12345", None).await.status, StatusCode::OK);
    expect_limited(&login(&s, "BOB", "pw-bob-12345", None).await);

    let s = server(|c| c.rc_login.failed_attempts = TIGHT).await;
    s.register("alice", "pw-alice-123").await;
    burst_then_wait(&s, 2, StatusCode::FORBIDDEN, |_, _| login(&s, "alice", "wrong-password", None)).await;
    // Once the failures are full, even the right password waits: it is not checked.
    expect_limited(&login(&s, "alice", "pw-alice-123", None).await);
    // Right passwords do not count as failures.
    s.clock.advance_ms(4_000);
    for _ in 0..3 {
        assert_eq!(login(&s, "alice", "pw-alice-123", None).await.status, StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(login(&s, "alice", "wrong-password", None).await.status, StatusCode::FORBIDDEN);
    }
    expect_limited(&login(&s, "alice", "wrong-password", None).await);
}

#[tokio::test]
async fn joins_are_limited_per_user_and_per_room() {
    let s = server(|c| c.rc_joins.local = TIGHT).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let mut rooms = Vec::new();
    for _ in 0..3 {
        rooms.push(create_room(&s, &alice, json!({"preset": "public_chat"})).await);
    }
    burst_then_wait(&s, 2, StatusCode::OK, |_, accepted| join(&s, &bob, &rooms[accepted])).await;

    let s = server(|c| c.rc_joins_per_room = TIGHT).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({"preset": "public_chat"})).await;
    let mut users = Vec::new();
    for i in 0..3 {
        users.push(s.register(&format!("user{i}"), "pw-user-12345").await);
    }
    burst_then_wait(&s, 2, StatusCode::OK, |_, accepted| join(&s, &users[accepted], &room)).await;
}

async fn invite(s: &TestServer, who: &Session, room: &str, user: &str) -> Answer {
    let body = json!({"user_id": user});
    send(s, Method::POST, format!("{V3}/rooms/{room}/invite"), Some(&who.token), Some(body), None).await
}

#[tokio::test]
async fn invites_are_limited_per_room_per_invitee_and_per_inviter() {
    // Per room: several users invited into one room.
    let s = server(|c| c.rc_invites.per_room = TIGHT).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let room = create_room(&s, &alice, json!({})).await;
    let mut guests = Vec::new();
    for i in 0..3 {
        guests.push(s.register(&format!("guest{i}"), "pw-guest-1234").await.user_id);
    }
    burst_then_wait(&s, 2, StatusCode::OK, |_, accepted| invite(&s, &alice, &room, &guests[accepted])).await;

    // Per invitee: one user invited into several rooms by several inviters.
    let s = server(|c| c.rc_invites.per_user = TIGHT).await;
    let popular = s.register("popular", "pw-popular-12").await;
    let mut hosts = Vec::new();
    for i in 0..3 {
        let who = s.register(&format!("host{i}"), "pw-host-12345").await;
        let room = create_room(&s, &who, json!({})).await;
        hosts.push((who, room));
    }
    burst_then_wait(&s, 2, StatusCode::OK, |_, accepted| {
        let (who, room) = &hosts[accepted];
        invite(&s, who, room, &popular.user_id)
    })
    .await;

    // Per inviter: one user inviting into several rooms.
    let s = server(|c| c.rc_invites.per_issuer = TIGHT).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let guest = s.register("guest", "pw-guest-1234").await;
    let mut rooms = Vec::new();
    for _ in 0..3 {
        rooms.push(create_room(&s, &alice, json!({})).await);
    }
    burst_then_wait(&s, 2, StatusCode::OK, |_, accepted| {
        invite(&s, &alice, &rooms[accepted], &guest.user_id)
    })
    .await;
}

#[tokio::test]
async fn per_user_actions_are_limited() {
    let s = server(|c| {
        c.rc_room_creation = TIGHT;
        c.rc_media_create = TIGHT;
        c.rc_reports = TIGHT;
        c.rc_user_directory = TIGHT;
        c.rc_delayed_event_mgmt = TIGHT;
        c.rc_presence.per_user = Rate::new(0.5, 1.0);
    })
    .await;
    let alice = s.register("alice", "pw-alice-123").await;
    let token = Some(alice.token.as_str());
    burst_then_wait(&s, 2, StatusCode::OK, |_, _| {
        send(&s, Method::POST, format!("{V3}/createRoom"), token, Some(json!({})), None)
    })
    .await;
    burst_then_wait(&s, 2, StatusCode::OK, |_, _| {
        send(&s, Method::POST, "/_matrix/media/v1/create".to_owned(), token, Some(json!({})), None)
    })
    .await;
    s.register("bob", "pw-bob-12345").await;
    burst_then_wait(&s, 2, StatusCode::OK, |_, _| {
        let body = json!({"reason": "spam"});
        send(&s, Method::POST, format!("{V3}/users/@bob:localhost/report"), token, Some(body), None)
    })
    .await;
    burst_then_wait(&s, 2, StatusCode::OK, |_, _| {
        let body = json!({"search_term": "bob"});
        send(&s, Method::POST, format!("{V3}/user_directory/search"), token, Some(body), None)
    })
    .await;
    burst_then_wait(&s, 2, StatusCode::OK, |_, _| {
        send(
            &s,
            Method::GET,
            "/_matrix/client/unstable/org.matrix.msc4140/delayed_events".to_owned(),
            token,
            None,
            None,
        )
    })
    .await;
    burst_then_wait(&s, 1, StatusCode::OK, |_, _| {
        let body = json!({"presence": "online"});
        send(&s, Method::PUT, format!("{V3}/presence/{}/status", alice.user_id), token, Some(body), None)
    })
    .await;
}

/// Presence set by `/sync` past the limit is dropped without an error, and the sync goes on.
#[tokio::test]
async fn presence_from_sync_past_the_limit_is_ignored() {
    let s = server(|c| c.rc_presence.per_user = Rate::new(0.5, 1.0)).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let presence_path = format!("{V3}/presence/{}/status", alice.user_id);
    let (status, _) = s.put(&presence_path, Some(&alice.token), json!({"presence": "online"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) =
        s.get(&format!("{V3}/sync?timeout=0&set_presence=unavailable"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, now) = s.get(&presence_path, Some(&alice.token)).await;
    assert_eq!(now["presence"], "online", "the sync's presence was dropped");
    s.clock.advance_ms(2_000);
    let (status, _) =
        s.get(&format!("{V3}/sync?timeout=0&set_presence=unavailable"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, now) = s.get(&presence_path, Some(&alice.token)).await;
    assert_eq!(now["presence"], "unavailable", "once the bucket drained, the sync sets it");
}

/// Room key requests to other users past `rc_key_requests` are dropped, as Synapse drops
/// them: the sender gets 200, the recipient only what fit.
#[tokio::test]
async fn room_key_requests_past_the_limit_are_dropped() {
    let s = server(|c| c.rc_key_requests = TIGHT).await;
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-12345").await;
    let (_, first) = s.get(&format!("{V3}/sync?timeout=0"), Some(&bob.token)).await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    for n in 0..4 {
        let body = json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"n": n}}}});
        let (status, _) =
            s.put(&format!("{V3}/sendToDevice/m.room_key_request/k{n}"), Some(&alice.token), body).await;
        assert_eq!(status, StatusCode::OK);
    }
    s.clock.advance_ms(2_000);
    let body = json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"n": 4}}}});
    let (status, _) =
        s.put(&format!("{V3}/sendToDevice/m.room_key_request/k4"), Some(&alice.token), body).await;
    assert_eq!(status, StatusCode::OK);
    let (_, sync) = s.get(&format!("{V3}/sync?timeout=0&since={since}"), Some(&bob.token)).await;
    let ns: Vec<u64> = sync["to_device"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(ns, [0, 1, 4]);
}

/// The delayed-event endpoints without a token are limited per address before their body
/// is read.
#[tokio::test]
async fn unauthenticated_delayed_event_management_is_limited_per_address() {
    let s = server(|c| c.rc_delayed_event_mgmt = TIGHT).await;
    burst_then_wait(&s, 2, StatusCode::NOT_FOUND, |_, _| {
        send(
            &s,
            Method::POST,
            "/_matrix/client/unstable/org.matrix.msc4140/delayed_events/nosuchid/cancel".to_owned(),
            None,
            Some(json!({})),
            None,
        )
    })
    .await;
}

/// A flood of 1,000 wrong passwords for one account, sent at once, gets at most
/// `burst_count` password checks (403) and 429 for the rest, and another user's sends made
/// meanwhile all succeed.
#[tokio::test]
async fn a_flood_of_wrong_passwords_is_cut_to_the_rate_and_slows_no_one_else() {
    let s = Arc::new(server(|c| c.rc_login.failed_attempts = Rate::new(0.17, 3.0)).await);
    s.register("victim", "pw-victim-123").await;
    let busy = s.register("busy", "pw-busy-12345").await;
    let room = create_room(&s, &busy, json!({})).await;

    let flood: Vec<_> = (0..1_000)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move { login(&s, "victim", "not-the-password", None).await.status })
        })
        .collect();
    let sender = {
        let (s, busy, room) = (Arc::clone(&s), busy.clone(), room.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..50 {
                let body = json!({"msgtype": "m.text", "body": format!("still here {i}")});
                let path = format!("{V3}/rooms/{room}/send/m.room.message/busy{i}");
                statuses.push(send(&s, Method::PUT, path, Some(&busy.token), Some(body), None).await.status);
            }
            statuses
        })
    };
    let (mut checked, mut refused) = (0, 0);
    for attempt in flood {
        match attempt.await.unwrap() {
            StatusCode::FORBIDDEN => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("unexpected answer {other}"),
        }
    }
    assert!((1..=3).contains(&checked), "{checked} passwords were checked");
    assert_eq!(checked + refused, 1_000);
    let statuses = sender.await.unwrap();
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    let rejections = s.services.rate_limits.rejections();
    let failed = rejections.iter().find(|(key, _)| *key == "rc_login.failed_attempts").unwrap().1;
    assert_eq!(failed, refused as u64, "the counter for metrics counts the refusals");
}

#[tokio::test]
async fn admins_are_exempt_unless_configured_otherwise() {
    let s = server(|c| c.rc_message = TIGHT).await;
    s.services.accounts.create_user("boss", "pw-boss-12345", true).await.unwrap();
    let boss = s.login("boss", "pw-boss-12345", None).await;
    let room = create_room(&s, &boss, json!({})).await;
    let send_one = |n: usize| {
        let txn = format!("t{n}");
        let (s, boss, room) = (&s, &boss, &room);
        async move { message(s, boss, room, &txn).await }
    };
    for n in 0..10 {
        assert_eq!(send_one(n).await.status, StatusCode::OK);
    }
    // The setting off (through the reload a SIGHUP makes): the admin is counted like anyone.
    let mut config = (*s.services.config).clone();
    limits_on(&mut config);
    config.rc_message = TIGHT;
    config.rate_limit_exempt_admins = false;
    s.services.rate_limits.reload(&config);
    expect_limited(&send_one(10).await);
    // And the master switch off lets everything through again.
    config.rate_limiting = false;
    s.services.rate_limits.reload(&config);
    for n in 11..20 {
        assert_eq!(send_one(n).await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn overrides_set_through_the_admin_api_exempt_or_rate_a_user() {
    let s = server(|c| c.rc_message = TIGHT).await;
    s.services.accounts.create_user("root", "pw-root-12345", true).await.unwrap();
    let root = s.login("root", "pw-root-12345", None).await;
    let bot = s.register("bot", "pw-bot-12345").await;
    let room = create_room(&s, &bot, json!({})).await;
    let path = format!("{ADMIN}/users/@bot:localhost/override_ratelimit");

    let (status, body) = s.get(&path, Some(&root.token)).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    // Only admins may read or set overrides; only of local accounts that exist.
    expect_error(s.get(&path, Some(&bot.token)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(
        s.post(
            &format!("{ADMIN}/users/@bot:elsewhere.example/override_ratelimit"),
            Some(&root.token),
            json!({}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    expect_error(
        s.post(&format!("{ADMIN}/users/@nobody:localhost/override_ratelimit"), Some(&root.token), json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.post(&path, Some(&root.token), json!({"messages_per_second": -1})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );

    // An empty override (0 messages a second) exempts the bot.
    let (status, body) = s.post(&path, Some(&root.token), json!({})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"messages_per_second": 0, "burst_count": 0})));
    for n in 0..10 {
        assert_eq!(message(&s, &bot, &room, &format!("free{n}")).await.status, StatusCode::OK);
    }
    // A rate of its own replaces the configured one for the bot's own buckets.
    let (status, body) =
        s.post(&path, Some(&root.token), json!({"messages_per_second": 1, "burst_count": 5})).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"messages_per_second": 1, "burst_count": 5})));
    let (_, body) = s.get(&path, Some(&root.token)).await;
    assert_eq!(body, json!({"messages_per_second": 1, "burst_count": 5}));
    burst_then_wait(&s, 5, StatusCode::OK, |call, _| {
        let txn = format!("own{call}");
        let (s, bot, room) = (&s, &bot, &room);
        async move { message(s, bot, room, &txn).await }
    })
    .await;
    // Overrides survive a restart.
    let s = s.restart_with(limits_on_tight_messages).await;
    let (_, body) = s.get(&path, Some(&root.token)).await;
    assert_eq!(body, json!({"messages_per_second": 1, "burst_count": 5}));

    // Deleted: the configured limits apply again.
    let (status, body) = s.call(Method::DELETE, &path, Some(&root.token), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (_, body) = s.get(&path, Some(&root.token)).await;
    assert_eq!(body, json!({}));
    burst_then_wait(&s, 2, StatusCode::OK, |call, _| {
        let txn = format!("after{call}");
        let (s, bot, room) = (&s, &bot, &room);
        async move { message(s, bot, room, &txn).await }
    })
    .await;
}

fn limits_on_tight_messages(c: &mut Config) {
    limits_on(c);
    c.rc_message = TIGHT;
}

#[tokio::test]
async fn rate_limiting_off_turns_every_limit_off() {
    let one = Rate::new(0.001, 1.0);
    let s = TestServer::start_with(|c| {
        c.rate_limiting = false;
        c.rc_message = one;
        c.rc_registration = one;
        c.rc_login.address = one;
        c.rc_login.failed_attempts = one;
        c.rc_room_creation = one;
    })
    .await;
    let alice = s.register("alice", "pw-alice-123").await;
    s.register("bob", "pw-bob-12345").await;
    for _ in 0..5 {
        assert_eq!(login(&s, "alice", "wrong-password", None).await.status, StatusCode::FORBIDDEN);
    }
    let room = create_room(&s, &alice, json!({})).await;
    create_room(&s, &alice, json!({})).await;
    for n in 0..20 {
        let body = json!({"msgtype": "m.text", "body": "free"});
        let (status, _) =
            s.put(&format!("{V3}/rooms/{room}/send/m.room.message/t{n}"), Some(&alice.token), body).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(s.services.rate_limits.rejections().iter().all(|(_, n)| *n == 0));
}
