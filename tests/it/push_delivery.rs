//! Delivery to push gateways through HTTP: a gateway started by the test records what it
//! receives and answers as each test asks (accept, reject the push key, fail with 503, never
//! answer, answer garbage).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router, extract::State, http::StatusCode as AxumStatus, response::IntoResponse, routing::post,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{
    harness::{Session, TestServer, expect_error},
    rooms::{V3, create_room, join, send_text},
};

/// How the test gateway answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Accept,
    Reject,
    Unavailable,
    Hang,
    Garbage,
    /// A 10 MB answer.
    Huge,
    /// Accept after 300 ms: deliveries are under way long enough for two deliverers of one
    /// queue to overlap.
    Slow,
}

#[derive(Default)]
struct Seen {
    /// Notifications answered with success, in arrival order.
    accepted: Vec<Value>,
    /// Every request, whatever the answer.
    attempts: usize,
}

#[derive(Clone)]
pub(crate) struct Gateway {
    pub(crate) url: String,
    seen: Arc<Mutex<Seen>>,
    mode: Arc<Mutex<Mode>>,
}

async fn notify(State(gateway): State<Gateway>, Json(body): Json<Value>) -> axum::response::Response {
    let mode = *gateway.mode.lock().unwrap();
    gateway.seen.lock().unwrap().attempts += 1;
    match mode {
        Mode::Accept => {
            gateway.seen.lock().unwrap().accepted.push(body["notification"].clone());
            Json(json!({"rejected": []})).into_response()
        }
        Mode::Slow => {
            tokio::time::sleep(Duration::from_millis(300)).await;
            gateway.seen.lock().unwrap().accepted.push(body["notification"].clone());
            Json(json!({"rejected": []})).into_response()
        }
        Mode::Reject => {
            let pushkey = body["notification"]["devices"][0]["pushkey"].clone();
            Json(json!({"rejected": [pushkey]})).into_response()
        }
        Mode::Unavailable => AxumStatus::SERVICE_UNAVAILABLE.into_response(),
        Mode::Hang => std::future::pending().await,
        Mode::Garbage => {
            gateway.seen.lock().unwrap().accepted.push(body["notification"].clone());
            (AxumStatus::OK, "<html>not json".repeat(10_000)).into_response()
        }
        Mode::Huge => {
            gateway.seen.lock().unwrap().accepted.push(body["notification"].clone());
            (AxumStatus::OK, vec![b'x'; 10 * 1024 * 1024]).into_response()
        }
    }
}

impl Gateway {
    pub(crate) async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let gateway = Gateway {
            url: format!("http://{addr}/_matrix/push/v1/notify"),
            seen: Arc::default(),
            mode: Arc::new(Mutex::new(mode)),
        };
        let app = Router::new().route("/_matrix/push/v1/notify", post(notify)).with_state(gateway.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        gateway
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub(crate) fn accepted(&self) -> Vec<Value> {
        self.seen.lock().unwrap().accepted.clone()
    }

    fn attempts(&self) -> usize {
        self.seen.lock().unwrap().attempts
    }

    /// Wait (on the wall clock, as a deadline only) until `done` holds.
    pub(crate) async fn until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        for _ in 0..500 {
            if done(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the gateway never saw {what}: {:?} after {} attempts", self.accepted(), self.attempts());
    }
}

/// A server that may reach the gateway on loopback.
async fn server() -> TestServer {
    TestServer::start_with(allow_loopback).await
}

pub(crate) fn allow_loopback(config: &mut conduit::config::Config) {
    config.ip_range_allowlist = vec!["127.0.0.0/8".parse().unwrap()];
    config.push_timeout_secs = 1;
}

pub(crate) async fn set_pusher(
    s: &TestServer,
    who: &Session,
    app_id: &str,
    url: &str,
    data: Value,
) -> (StatusCode, Value) {
    let mut data = data;
    data["url"] = json!(url);
    s.post(
        &format!("{V3}/pushers/set"),
        Some(&who.token),
        json!({
            "kind": "http", "app_id": app_id, "pushkey": format!("key-{app_id}"),
            "app_display_name": "App", "device_display_name": "Phone", "lang": "en",
            "data": data,
        }),
    )
    .await
}

/// Alice and Bob in a DM-like room Bob joined, with Bob's display name set.
async fn dm(s: &TestServer) -> (Session, Session, String) {
    let alice = s.register("alice", "pw-alice-123").await;
    let bob = s.register("bob", "pw-bob-123").await;
    let (status, _) = s
        .put(
            &format!("{V3}/profile/{}/displayname", alice.user_id),
            Some(&alice.token),
            json!({"displayname": "Alice A"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let room = create_room(
        s,
        &alice,
        json!({"is_direct": true, "invite": [bob.user_id], "name": "Lunch", "preset": "trusted_private_chat"}),
    )
    .await;
    assert_eq!(join(s, &bob, &room).await.0, StatusCode::OK);
    (alice, bob, room)
}

#[tokio::test]
async fn a_message_reaches_the_gateway_in_both_formats() {
    let s = server().await;
    let gateway = Gateway::start(Mode::Accept).await;
    let (alice, bob, room) = dm(&s).await;
    let (status, body) = set_pusher(&s, &bob, "full", &gateway.url, json!({"extra": 1})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = set_pusher(&s, &bob, "min", &gateway.url, json!({"format": "event_id_only"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let event_id = send_text(&s, &alice, &room, "t1", "hello bob").await;
    gateway.until("two notifications", |g| g.accepted().len() >= 2).await;
    let seen = gateway.accepted();
    let full = seen.iter().find(|n| n["devices"][0]["app_id"] == "full").expect("full format");
    let min = seen.iter().find(|n| n["devices"][0]["app_id"] == "min").expect("event_id_only format");

    assert_eq!(full["event_id"], event_id);
    assert_eq!(full["room_id"], room);
    assert_eq!(full["type"], "m.room.message");
    assert_eq!(full["sender"], alice.user_id);
    assert_eq!(full["sender_display_name"], "Alice A");
    assert_eq!(full["room_name"], "Lunch");
    assert_eq!(full["content"]["body"], "hello bob");
    assert_eq!(full["prio"], "high", "a DM message rings: {full}");
    assert_eq!(full["counts"]["unread"], 1);
    let device = &full["devices"][0];
    assert_eq!(device["pushkey"], "key-full");
    assert_eq!(device["data"], json!({"extra": 1}), "data without url: {device}");
    assert!(device["pushkey_ts"].as_u64().is_some(), "{device}");
    assert_eq!(device["tweaks"]["sound"], "default", "{device}");

    assert_eq!(min["event_id"], event_id);
    assert_eq!(min["room_id"], room);
    assert_eq!(min["counts"]["unread"], 1);
    assert!(min.get("content").is_none() && min.get("sender").is_none(), "event_id_only: {min}");
    assert_eq!(min["devices"][0]["data"], json!({"format": "event_id_only"}));

    // Bob's own messages do not notify him.
    send_text(&s, &bob, &room, "t2", "my own").await;
    send_text(&s, &alice, &room, "t3", "second").await;
    gateway.until("the second message", |g| g.accepted().len() >= 4).await;
    assert!(gateway.accepted().iter().all(|n| n["content"]["body"] != "my own"));
}

#[tokio::test]
async fn a_muted_room_sends_nothing_and_a_receipt_clears_the_badge() {
    let s = server().await;
    let gateway = Gateway::start(Mode::Accept).await;
    let (alice, bob, room) = dm(&s).await;
    let muted = create_room(&s, &alice, json!({"invite": [bob.user_id], "is_direct": true})).await;
    assert_eq!(join(&s, &bob, &muted).await.0, StatusCode::OK);
    let (status, body) =
        s.put(&format!("{V3}/pushrules/global/room/{muted}"), Some(&bob.token), json!({"actions": []})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(set_pusher(&s, &bob, "app", &gateway.url, json!({})).await.0, StatusCode::OK);

    send_text(&s, &alice, &muted, "m1", "in the muted room").await;
    let event_id = send_text(&s, &alice, &room, "m2", "in the loud room").await;
    gateway.until("the loud room's message", |g| !g.accepted().is_empty()).await;
    let seen = gateway.accepted();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["event_id"], event_id);
    assert_eq!(seen[0]["counts"]["unread"], 1);

    // Bob reads the room: his app is told the badge is now 0.
    let (status, _) =
        s.post(&format!("{V3}/rooms/{room}/receipt/m.read/{event_id}"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    gateway.until("the badge update", |g| g.accepted().len() >= 2).await;
    let badge = &gateway.accepted()[1];
    assert_eq!(badge["counts"]["unread"], 0, "{badge}");
    assert!(badge.get("event_id").is_none(), "count only: {badge}");
    assert_eq!(badge["devices"][0]["pushkey"], "key-app");
}

#[tokio::test]
async fn a_gateway_down_for_a_while_gets_everything_in_order() {
    let s = server().await;
    let gateway = Gateway::start(Mode::Unavailable).await;
    let (alice, bob, room) = dm(&s).await;
    assert_eq!(set_pusher(&s, &bob, "app", &gateway.url, json!({})).await.0, StatusCode::OK);
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(send_text(&s, &alice, &room, &format!("d{n}"), &format!("message {n}")).await);
    }
    gateway.until("a first attempt", |g| g.attempts() >= 1).await;
    // Retries wait on the server's clock: 1 s, 2 s, 4 s ...
    for _ in 0..3 {
        let before = gateway.attempts();
        s.advance_until(60_000, "a retry", || gateway.attempts() > before).await;
    }
    assert!(gateway.accepted().is_empty());
    gateway.set(Mode::Accept);
    // Moved on again and again, not once: the last failure's retry is scheduled from the
    // clock when the server has handled the 503, which may come after a single move.
    s.advance_until(60_000, "all three", || gateway.accepted().len() >= 3).await;
    let order: Vec<Value> = gateway.accepted().iter().map(|n| n["event_id"].clone()).collect();
    assert_eq!(order, sent.iter().map(|e| json!(e)).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_rejected_push_key_removes_the_pusher() {
    let s = server().await;
    let gateway = Gateway::start(Mode::Reject).await;
    let (alice, bob, room) = dm(&s).await;
    assert_eq!(set_pusher(&s, &bob, "app", &gateway.url, json!({})).await.0, StatusCode::OK);
    send_text(&s, &alice, &room, "r1", "hello").await;
    gateway.until("the notification", |g| g.attempts() >= 1).await;
    for _ in 0..500 {
        let (_, body) = s.get(&format!("{V3}/pushers"), Some(&bob.token)).await;
        if body["pushers"].as_array().is_some_and(Vec::is_empty) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the rejected pusher is still there");
}

#[tokio::test]
async fn a_delivery_under_way_at_a_stop_is_made_after_the_restart() {
    let s = server().await;
    let gateway = Gateway::start(Mode::Hang).await;
    let (alice, bob, room) = dm(&s).await;
    assert_eq!(set_pusher(&s, &bob, "app", &gateway.url, json!({})).await.0, StatusCode::OK);
    let event_id = send_text(&s, &alice, &room, "k1", "while the gateway hangs").await;
    gateway.until("the delivery under way", |g| g.attempts() >= 1).await;
    gateway.set(Mode::Accept);
    let _s = s.restart_with(allow_loopback).await;
    gateway.until("the delivery after the restart", |g| !g.accepted().is_empty()).await;
    assert_eq!(gateway.accepted()[0]["event_id"], event_id);
}

#[tokio::test]
async fn a_gateway_answering_garbage_or_10_mb_still_counts_as_delivered() {
    let s = server().await;
    let gateway = Gateway::start(Mode::Garbage).await;
    let (alice, bob, room) = dm(&s).await;
    assert_eq!(set_pusher(&s, &bob, "app", &gateway.url, json!({})).await.0, StatusCode::OK);
    send_text(&s, &alice, &room, "g1", "one").await;
    send_text(&s, &alice, &room, "g2", "two").await;
    gateway.until("both", |g| g.accepted().len() >= 2).await;
    assert_eq!(gateway.attempts(), 2, "no retries for a 200 with a body that is not JSON");
    // A 10 MB answer is read no further than its first 64 KiB, and the queue goes on.
    gateway.set(Mode::Huge);
    send_text(&s, &alice, &room, "g3", "three").await;
    send_text(&s, &alice, &room, "g4", "four").await;
    gateway.until("the two after the huge answers", |g| g.accepted().len() >= 4).await;
    assert_eq!(gateway.attempts(), 4);
}

#[tokio::test]
async fn pushers_are_checked_when_set() {
    let guarded = TestServer::start().await;
    let bob = guarded.register("bob", "pw-bob-123").await;
    // Loopback and private ranges are refused unless the operator allows them.
    for url in ["http://127.0.0.1:9/_matrix/push/v1/notify", "http://10.1.2.3/_matrix/push/v1/notify"] {
        expect_error(
            set_pusher(&guarded, &bob, "app", url, json!({})).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
    }
    let allowed =
        TestServer::start_with(|c| c.ip_range_allowlist = vec!["10.1.2.0/24".parse().unwrap()]).await;
    let carol = allowed.register("carol", "pw-carol-123").await;
    let (status, body) =
        set_pusher(&allowed, &carol, "app", "http://10.1.2.3/_matrix/push/v1/notify", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    for url in
        ["http://push.example.org/wrong/path", "ftp://push.example.org/_matrix/push/v1/notify", "not a url"]
    {
        expect_error(
            set_pusher(&guarded, &bob, "app", url, json!({})).await,
            StatusCode::BAD_REQUEST,
            "M_INVALID_PARAM",
        );
    }
    let huge = json!({"blob": "x".repeat(20_000)});
    expect_error(
        set_pusher(&guarded, &bob, "app", "https://push.example.org/_matrix/push/v1/notify", huge).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let email = guarded
        .post(
            &format!("{V3}/pushers/set"),
            Some(&bob.token),
            json!({"kind": "email", "app_id": "m.email", "pushkey": "bob@example.org", "app_display_name": "Email",
                   "device_display_name": "Email", "lang": "en", "data": {}}),
        )
        .await;
    expect_error(email, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    let (_, body) = guarded.get(&format!("{V3}/pushers"), Some(&bob.token)).await;
    assert_eq!(body["pushers"], json!([]), "nothing refused was stored");
}

/// The binary, killed with SIGKILL while a delivery is under way, delivers it after it starts
/// again: the queue's place moves only after the gateway answered.
#[tokio::test]
async fn a_delivery_under_way_at_a_kill_9_is_made_after_the_restart() {
    let gateway = Gateway::start(Mode::Hang).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let env = [("CONDUIT_IP_RANGE_ALLOWLIST", "[\"127.0.0.0/8\"]"), ("CONDUIT_PUSH_TIMEOUT_SECS", "60")];
    let serve = |db: std::path::PathBuf| {
        let (child, addr, lines) = crate::cli::spawn_serving_with(&db, &env);
        std::thread::spawn(move || lines.for_each(drop));
        (child, format!("http://{addr}/_matrix/client/v3"))
    };
    let (mut child, api) = serve(db.clone());
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, url: String, token: Option<String>, body: Value| {
        let request = http.request(method, url).json(&body);
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    let mut tokens = Vec::new();
    for name in ["alice", "bob"] {
        let body = json!({"username": name, "password": format!("pw-{name}-123"), "auth": {"type": "m.login.dummy"}});
        let registered = call(reqwest::Method::POST, format!("{api}/register"), None, body).await;
        tokens.push(registered["access_token"].as_str().unwrap().to_owned());
    }
    let (alice, bob) = (tokens[0].clone(), tokens[1].clone());
    let created = call(
        reqwest::Method::POST,
        format!("{api}/createRoom"),
        Some(alice.clone()),
        json!({"invite": ["@bob:localhost"], "is_direct": true}),
    )
    .await;
    let room = created["room_id"].as_str().unwrap().to_owned();
    call(reqwest::Method::POST, format!("{api}/join/{room}"), Some(bob.clone()), json!({})).await;
    let pusher = json!({"kind": "http", "app_id": "app", "pushkey": "key", "app_display_name": "App",
        "device_display_name": "Phone", "lang": "en", "data": {"url": gateway.url}});
    call(reqwest::Method::POST, format!("{api}/pushers/set"), Some(bob.clone()), pusher).await;
    let sent = call(
        reqwest::Method::PUT,
        format!("{api}/rooms/{room}/send/m.room.message/k9"),
        Some(alice.clone()),
        json!({"msgtype": "m.text", "body": "before the kill"}),
    )
    .await;
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    gateway.until("the delivery under way", |g| g.attempts() >= 1).await;

    child.kill().unwrap(); // SIGKILL
    tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    gateway.set(Mode::Accept);
    let (mut child, _) = serve(db);
    gateway.until("the delivery after the restart", |g| !g.accepted().is_empty()).await;
    assert_eq!(gateway.accepted()[0]["event_id"], json!(event_id));
    child.kill().unwrap();
    let _ = child.wait();
}

/// A gateway that never answers holds up its own pusher only: another user's notification of
/// the same message arrives meanwhile.
#[tokio::test]
async fn a_hanging_gateway_does_not_hold_up_other_pushers() {
    let s = server().await;
    let hanging = Gateway::start(Mode::Hang).await;
    let working = Gateway::start(Mode::Accept).await;
    let (alice, bob, room) = dm(&s).await;
    let carol = s.register("carol", "pw-carol-123").await;
    let (status, _) = s
        .post(&format!("{V3}/rooms/{room}/invite"), Some(&alice.token), json!({"user_id": carol.user_id}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(join(&s, &carol, &room).await.0, StatusCode::OK);
    // Different push keys: one pusher set with `append: false` removes other users' pushers
    // with the same app ID and key (the spec's rule).
    assert_eq!(set_pusher(&s, &bob, "bob-app", &hanging.url, json!({})).await.0, StatusCode::OK);
    assert_eq!(set_pusher(&s, &carol, "carol-app", &working.url, json!({})).await.0, StatusCode::OK);
    for n in 0..3 {
        let event_id = send_text(&s, &alice, &room, &format!("h{n}"), "hello both").await;
        working
            .until("carol's notification", |g| g.accepted().iter().any(|x| x["event_id"] == event_id))
            .await;
    }
    hanging.until("bob's first delivery", |g| g.attempts() >= 1).await;
    assert_eq!(hanging.attempts(), 1, "bob's queue is still on its first delivery");
}
