//! Application services through HTTP: a registration file written by the test, a fake
//! appservice (an axum server on loopback) that records the transactions, pings and queries
//! it receives and answers as the test asks, and the client-server API as an appservice and
//! its users use it. The real SDKs' bridges are in `appservice_sdk.rs`.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode as AxumStatus},
    response::IntoResponse,
    routing::{get, post, put},
};
use conduit::config::Config;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{
    harness::{TestServer, expect_error},
    rooms::{V3, create_room, join, send_text},
};

pub const AS_TOKEN: &str = "as-token-for-tests";
pub const HS_TOKEN: &str = "hs-token-for-tests";

/// How the fake appservice answers transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Accept,
    Unavailable,
    /// Never answers.
    Hang,
    /// Answers 200 with a body that is not JSON (still a success, as the spec counts it).
    Garbage,
}

#[derive(Default)]
struct Seen {
    /// Transactions accepted: (txn ID, body), in arrival order.
    transactions: Vec<(String, Value)>,
    attempts: usize,
    pings: Vec<Value>,
    alias_queries: Vec<String>,
    user_queries: Vec<String>,
    /// Requests without the right `hs_token`.
    unauthorized: usize,
}

#[derive(Clone)]
pub struct FakeAppservice {
    pub url: String,
    seen: Arc<Mutex<Seen>>,
    mode: Arc<Mutex<Mode>>,
    /// Where the fake creates rooms for alias queries.
    homeserver: Arc<Mutex<Option<String>>>,
    /// The token the server must send.
    hs_token: String,
}

impl FakeAppservice {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {}", self.hs_token))
    }
}

async fn transaction(
    State(fake): State<FakeAppservice>,
    Path(txn_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    let mode = *fake.mode.lock().unwrap();
    {
        let mut seen = fake.seen.lock().unwrap();
        seen.attempts += 1;
        if !fake.authorized(&headers) {
            seen.unauthorized += 1;
            return (AxumStatus::FORBIDDEN, Json(json!({"errcode": "M_FORBIDDEN"}))).into_response();
        }
        match mode {
            Mode::Unavailable => return AxumStatus::SERVICE_UNAVAILABLE.into_response(),
            Mode::Hang => {}
            // A transaction seen before is acknowledged again without counting it twice.
            Mode::Accept | Mode::Garbage => {
                if !seen.transactions.iter().any(|(id, _)| *id == txn_id) {
                    seen.transactions.push((txn_id, body));
                }
            }
        }
    }
    match mode {
        Mode::Hang => std::future::pending().await,
        Mode::Garbage => (AxumStatus::OK, "<html>not json").into_response(),
        _ => Json(json!({})).into_response(),
    }
}

async fn ping(
    State(fake): State<FakeAppservice>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    if !fake.authorized(&headers) {
        fake.seen.lock().unwrap().unauthorized += 1;
        return (AxumStatus::FORBIDDEN, Json(json!({"errcode": "M_FORBIDDEN"})));
    }
    fake.seen.lock().unwrap().pings.push(body);
    (AxumStatus::OK, Json(json!({})))
}

/// The room alias query: `#bridge_…` aliases are created on demand, as the sender, in a new
/// room; any other answers 404.
async fn alias_query(
    State(fake): State<FakeAppservice>,
    Path(alias): Path<String>,
    headers: HeaderMap,
) -> axum::response::Response {
    if !fake.authorized(&headers) {
        return AxumStatus::FORBIDDEN.into_response();
    }
    fake.seen.lock().unwrap().alias_queries.push(alias.clone());
    let Some(localpart) = alias.strip_prefix("#bridge_").and_then(|a| a.strip_suffix(":localhost")) else {
        return (AxumStatus::NOT_FOUND, Json(json!({"errcode": "M_NOT_FOUND"}))).into_response();
    };
    let homeserver = fake.homeserver.lock().unwrap().clone().expect("homeserver URL set");
    let created = reqwest::Client::new()
        .post(format!("{homeserver}{V3}/createRoom"))
        .bearer_auth(AS_TOKEN)
        .json(&json!({"room_alias_name": format!("bridge_{localpart}"), "preset": "public_chat"}))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{:?}", created.text().await);
    Json(json!({})).into_response()
}

async fn user_query(
    State(fake): State<FakeAppservice>,
    Path(user_id): Path<String>,
) -> axum::response::Response {
    fake.seen.lock().unwrap().user_queries.push(user_id);
    (AxumStatus::NOT_FOUND, Json(json!({"errcode": "M_NOT_FOUND"}))).into_response()
}

impl FakeAppservice {
    pub async fn start() -> Self {
        Self::expecting(HS_TOKEN).await
    }

    /// A fake that accepts only `hs_token`.
    pub async fn expecting(hs_token: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let fake = FakeAppservice {
            url: format!("http://{addr}"),
            seen: Arc::default(),
            mode: Arc::new(Mutex::new(Mode::Accept)),
            homeserver: Arc::default(),
            hs_token: hs_token.to_owned(),
        };
        let app = Router::new()
            .route("/_matrix/app/v1/transactions/{txn}", put(transaction))
            .route("/_matrix/app/v1/ping", post(ping))
            .route("/_matrix/app/v1/rooms/{alias}", get(alias_query))
            .route("/_matrix/app/v1/users/{user}", get(user_query))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn attempts(&self) -> usize {
        self.seen.lock().unwrap().attempts
    }

    /// Every event of every accepted transaction, in order.
    pub fn events(&self) -> Vec<Value> {
        let seen = self.seen.lock().unwrap();
        seen.transactions
            .iter()
            .flat_map(|(_, body)| body["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    pub fn bodies_in(&self, room: &str) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e["room_id"] == room && e["type"] == "m.room.message")
            .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    pub async fn until(&self, what: &str, done: impl Fn(&Self) -> bool) {
        for _ in 0..500 {
            if done(self) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the appservice never saw {what}: {:?}", self.events());
    }
}

/// A registration for `url` with the bridge's namespaces: users `@bridge_*`, aliases
/// `#bridge_*` (both exclusive), sender `@bridgebot`.
pub fn registration(url: Option<&str>, rate_limited: bool) -> String {
    let url = url.map_or_else(|| "null".to_owned(), |u| format!("\"{u}\""));
    format!(
        "id: bridge\nurl: {url}\nas_token: {AS_TOKEN}\nhs_token: {HS_TOKEN}\nsender_localpart: bridgebot\n\
         rate_limited: {rate_limited}\nnamespaces:\n  users:\n    - exclusive: true\n      regex: '@bridge_.*:localhost'\n  \
         aliases:\n    - exclusive: true\n      regex: '#bridge_.*:localhost'\n  rooms: []\n"
    )
}

/// A second bridge beside `registration`'s: its own ID, tokens, sender and `@other_*` users.
pub fn other_registration(url: &str) -> String {
    registration(Some(url), true)
        .replace("id: bridge", "id: other")
        .replace(AS_TOKEN, "other-as-token")
        .replace(HS_TOKEN, "other-hs-token")
        .replace("bridgebot", "otherbot")
        .replace("@bridge_.*", "@other_.*")
        .replace("#bridge_.*", "#other_.*")
}

/// A server with `text` as its one registration file (kept in `dir`).
pub fn with_registration(dir: &tempfile::TempDir, text: &str) -> impl FnOnce(&mut Config) + use<> {
    let path: PathBuf = dir.path().join("bridge.yaml");
    std::fs::write(&path, text).unwrap();
    move |config: &mut Config| config.app_service_config_files = vec![path]
}

/// The appservice acting as `user_id` (its sender when `None`).
fn as_path(path: &str, user_id: Option<&str>) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    match user_id {
        Some(user) => format!("{path}{sep}user_id={}", user.replace('@', "%40").replace(':', "%3A")),
        None => path.to_owned(),
    }
}

async fn register_as(s: &TestServer, localpart: &str) -> (StatusCode, Value) {
    s.post(
        &format!("{V3}/register"),
        Some(AS_TOKEN),
        json!({"type": "m.login.application_service", "username": localpart, "inhibit_login": true}),
    )
    .await
}

#[tokio::test]
async fn registration_files_are_checked_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let broken =
        registration(Some("http://127.0.0.1:9"), true).replace("'@bridge_.*:localhost'", "'@bridge_(.*'");
    let adjust = with_registration(&dir, &broken);
    let data = tempfile::tempdir().unwrap();
    let mut config = crate::harness::test_config(data.path());
    adjust(&mut config);
    let error = conduit::server::Server::build(config).err().expect("a broken registration stops the start");
    let text = error.to_string();
    assert!(text.contains("bridge.yaml") && text.contains("namespaces.users[0].regex"), "{text}");

    // Two files with the same ID (or token) are refused together.
    let second = dir.path().join("again.yaml");
    std::fs::write(&second, registration(None, true)).unwrap();
    std::fs::write(dir.path().join("bridge.yaml"), registration(None, true)).unwrap();
    let mut config = crate::harness::test_config(data.path());
    config.app_service_config_files = vec![dir.path().join("bridge.yaml"), second];
    let text = conduit::server::Server::build(config).err().expect("duplicates refused").to_string();
    assert!(text.contains("id `bridge`"), "{text}");
}

#[tokio::test]
async fn the_as_token_acts_as_its_users_and_no_one_else() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(with_registration(&dir, &registration(None, true))).await;

    // The sender needs no registration; whoami has no device.
    let (status, me) = s.get(&format!("{V3}/account/whoami"), Some(AS_TOKEN)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["user_id"], "@bridgebot:localhost");
    assert!(me.get("device_id").is_none(), "{me}");

    // A namespaced user must be registered first, by the appservice, without UIA.
    let whoami_alice = as_path(&format!("{V3}/account/whoami"), Some("@bridge_alice:localhost"));
    expect_error(s.get(&whoami_alice, Some(AS_TOKEN)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    let (status, body) = register_as(&s, "bridge_alice").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user_id"], "@bridge_alice:localhost");
    assert!(body.get("access_token").is_none(), "inhibit_login: {body}");
    let (status, me) = s.get(&whoami_alice, Some(AS_TOKEN)).await;
    assert_eq!((status, me["user_id"].as_str()), (StatusCode::OK, Some("@bridge_alice:localhost")), "{me}");
    expect_error(register_as(&s, "bridge_alice").await, StatusCode::BAD_REQUEST, "M_USER_IN_USE");

    // Outside its namespace: refused, whether the user exists or not.
    let bob = s.register("bob", "pw-bob-123").await;
    for outside in ["@bob:localhost", "@nobody:localhost", "@bridge_x:elsewhere.org"] {
        let path = as_path(&format!("{V3}/account/whoami"), Some(outside));
        expect_error(s.get(&path, Some(AS_TOKEN)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    }
    expect_error(register_as(&s, "mallory").await, StatusCode::BAD_REQUEST, "M_EXCLUSIVE");
    // An unknown device of its user is refused too.
    let path = format!(
        "{}&device_id=NOPE",
        as_path(&format!("{V3}/account/whoami"), Some("@bridge_alice:localhost"))
    );
    expect_error(s.get(&path, Some(AS_TOKEN)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // The exclusive namespace is refused to everyone else, and checked as a name is chosen.
    expect_error(
        s.post(
            &format!("{V3}/register"),
            None,
            json!({"username": "bridge_mallory", "password": "pw-mallory-1"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_EXCLUSIVE",
    );
    expect_error(
        s.get(&format!("{V3}/register/available?username=bridge_mallory"), None).await,
        StatusCode::BAD_REQUEST,
        "M_EXCLUSIVE",
    );
    // The application service login type needs the as_token; with it, a device for its user.
    let login = json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "bridge_alice"}});
    expect_error(
        s.post(&format!("{V3}/login"), None, login.clone()).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    let (status, session) = s.post(&format!("{V3}/login"), Some(AS_TOKEN), login).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    assert_eq!(session["user_id"], "@bridge_alice:localhost");
    let device = session["device_id"].as_str().unwrap().to_owned();
    let path = format!(
        "{}&device_id={device}",
        as_path(&format!("{V3}/account/whoami"), Some("@bridge_alice:localhost"))
    );
    let (status, me) = s.get(&path, Some(AS_TOKEN)).await;
    assert_eq!((status, me["device_id"].as_str()), (StatusCode::OK, Some(device.as_str())), "{me}");
    let (_, types) = s.get(&format!("{V3}/login"), None).await;
    assert!(
        types["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.application_service"),
        "{types}"
    );

    // Aliases in the exclusive namespace are the appservice's alone.
    let room = create_room(&s, &bob, json!({})).await;
    expect_error(
        s.put(
            &format!("{V3}/directory/room/%23bridge_lobby:localhost"),
            Some(&bob.token),
            json!({"room_id": room}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_EXCLUSIVE",
    );
    expect_error(
        s.post(&format!("{V3}/createRoom"), Some(&bob.token), json!({"room_alias_name": "bridge_lobby"}))
            .await,
        StatusCode::BAD_REQUEST,
        "M_EXCLUSIVE",
    );
    let (status, body) =
        s.post(&format!("{V3}/createRoom"), Some(AS_TOKEN), json!({"room_alias_name": "bridge_lobby"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn the_appservice_may_set_timestamps_and_users_may_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(with_registration(&dir, &registration(None, true))).await;
    let bob = s.register("bob", "pw-bob-123").await;
    let room = create_room(&s, &bob, json!({"preset": "public_chat"})).await;
    assert_eq!(register_as(&s, "bridge_alice").await.0, StatusCode::OK);
    let alice = Some("@bridge_alice:localhost");
    let (status, body) =
        s.post(&as_path(&format!("{V3}/join/{room}"), alice), Some(AS_TOKEN), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let path = as_path(&format!("{V3}/rooms/{room}/send/m.room.message/t1?ts=1500000000000"), alice);
    let (status, sent) =
        s.put(&path, Some(AS_TOKEN), json!({"msgtype": "m.text", "body": "from 2017"})).await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let event_id = sent["event_id"].as_str().unwrap();
    let (_, event) = s.get(&format!("{V3}/rooms/{room}/event/{event_id}"), Some(&bob.token)).await;
    assert_eq!(event["origin_server_ts"], 1_500_000_000_000u64, "{event}");
    assert_eq!(event["sender"], "@bridge_alice:localhost");
    // The same transaction ID again answers the same event, scoped to the appservice.
    let (_, again) = s.put(&path, Some(AS_TOKEN), json!({"msgtype": "m.text", "body": "from 2017"})).await;
    assert_eq!(again["event_id"], sent["event_id"]);

    expect_error(
        s.put(
            &format!("{V3}/rooms/{room}/send/m.room.message/t2?ts=1500000000000"),
            Some(&bob.token),
            json!({"body": "x"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
}

#[tokio::test]
async fn transactions_carry_what_concerns_the_appservice_in_order_through_outages_and_restarts() {
    let fake = FakeAppservice::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(with_registration(&dir, &registration(Some(&fake.url), true))).await;
    let bob = s.register("bob", "pw-bob-123").await;
    let carol = s.register("carol", "pw-carol-123").await;

    // A room without the appservice's users: nothing is sent.
    let elsewhere = create_room(&s, &bob, json!({"preset": "public_chat"})).await;
    send_text(&s, &bob, &elsewhere, "e1", "not for the bridge").await;

    // Bob invites the bot: the invite goes out, and once the bot joins, everything in the room.
    let room = create_room(&s, &bob, json!({"preset": "public_chat"})).await;
    let (status, body) = s
        .post(
            &format!("{V3}/rooms/{room}/invite"),
            Some(&bob.token),
            json!({"user_id": "@bridgebot:localhost"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    fake.until("the invite", |f| {
        f.events().iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == "@bridgebot:localhost")
    })
    .await;
    assert_eq!(s.post(&format!("{V3}/join/{room}"), Some(AS_TOKEN), json!({})).await.0, StatusCode::OK);
    send_text(&s, &bob, &room, "m0", "hello bridge").await;
    fake.until("the message", |f| f.bodies_in(&room) == ["hello bridge"]).await;
    assert!(fake.bodies_in(&elsewhere).is_empty(), "{:?}", fake.events());
    let invite = fake.events().into_iter().find(|e| e["type"] == "m.room.member").unwrap();
    assert_eq!(invite["room_id"], room.as_str(), "client format with room_id: {invite}");

    // The appservice goes down: messages wait, retried on the server's clock.
    fake.set(Mode::Unavailable);
    assert_eq!(join(&s, &carol, &room).await.0, StatusCode::OK);
    for n in 1..=3 {
        send_text(&s, &carol, &room, &format!("m{n}"), &format!("message {n}")).await;
    }
    let before = fake.attempts();
    s.advance_until(60_000, "a retry", || fake.attempts() > before + 1).await;
    // A restart of the server keeps the queue's place.
    let s = s.restart_with(|c| c.app_service_config_files = vec![dir.path().join("bridge.yaml")]).await;
    let bob = s.login("bob", "pw-bob-123", None).await;
    for n in 4..=5 {
        send_text(&s, &bob, &room, &format!("m{n}"), &format!("message {n}")).await;
    }
    fake.set(Mode::Accept);
    let expected: Vec<String> =
        std::iter::once("hello bridge".to_owned()).chain((1..=5).map(|n| format!("message {n}"))).collect();
    s.advance_until(60_000, "everything in order", || fake.bodies_in(&room).len() >= expected.len()).await;
    assert_eq!(fake.bodies_in(&room), expected);
    assert_eq!(fake.seen.lock().unwrap().unauthorized, 0);
    let ids: BTreeSet<String> =
        fake.events().iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), fake.events().len(), "each event once");
}

#[tokio::test]
async fn the_ping_reaches_the_appservice_and_says_how_it_failed() {
    let fake = FakeAppservice::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(with_registration(&dir, &registration(Some(&fake.url), true))).await;
    let (status, body) = s
        .post(
            "/_matrix/client/v1/appservice/bridge/ping",
            Some(AS_TOKEN),
            json!({"transaction_id": "ping-1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["duration_ms"].is_u64(), "{body}");
    assert_eq!(fake.seen.lock().unwrap().pings, vec![json!({"transaction_id": "ping-1"})]);
    expect_error(
        s.post("/_matrix/client/v1/appservice/other/ping", Some(AS_TOKEN), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    let bob = s.register("bob", "pw-bob-123").await;
    // A user's token is refused, not unknown (clients log out on M_UNKNOWN_TOKEN).
    expect_error(
        s.post("/_matrix/client/v1/appservice/bridge/ping", Some(&bob.token), json!({})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(
        s.post("/_matrix/client/v1/appservice/bridge/ping", Some("no-such-token"), json!({})).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );

    // Nothing listening: the connection failed.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let down = format!("http://127.0.0.1:{port}");
    let s = TestServer::start_with(with_registration(&dir, &registration(Some(&down), true))).await;
    expect_error(
        s.post("/_matrix/client/v1/appservice/bridge/ping", Some(AS_TOKEN), json!({})).await,
        StatusCode::BAD_GATEWAY,
        "M_CONNECTION_FAILED",
    );
    // No URL: nothing to ping.
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(with_registration(&dir, &registration(None, true))).await;
    expect_error(
        s.post("/_matrix/client/v1/appservice/bridge/ping", Some(AS_TOKEN), json!({})).await,
        StatusCode::BAD_REQUEST,
        "M_URL_NOT_SET",
    );
}

#[tokio::test]
async fn an_unknown_alias_in_the_namespace_is_asked_of_the_appservice() {
    let fake = FakeAppservice::start().await;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(with_registration(&dir, &registration(Some(&fake.url), true))).await;
    *fake.homeserver.lock().unwrap() = Some(s.base.clone());
    let bob = s.register("bob", "pw-bob-123").await;

    let (status, found) =
        s.get(&format!("{V3}/directory/room/%23bridge_lobby:localhost"), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(fake.seen.lock().unwrap().alias_queries, vec!["#bridge_lobby:localhost".to_owned()]);
    let room = found["room_id"].as_str().unwrap();
    // Joining by the alias works; a known alias is not asked again.
    assert_eq!(
        s.post(&format!("{V3}/join/%23bridge_lobby:localhost"), Some(&bob.token), json!({})).await.0,
        StatusCode::OK
    );
    assert_eq!(fake.seen.lock().unwrap().alias_queries.len(), 1);
    let (_, joined) = s.get(&format!("{V3}/joined_rooms"), Some(&bob.token)).await;
    assert!(joined["joined_rooms"].as_array().unwrap().iter().any(|r| r == room), "{joined}");

    // Outside the namespace, or refused by the appservice: not found.
    expect_error(
        s.get(&format!("{V3}/directory/room/%23other:localhost"), Some(&bob.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get(&format!("{V3}/directory/room/%23bridgeless:localhost"), Some(&bob.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    assert_eq!(fake.seen.lock().unwrap().alias_queries.len(), 1);
}

#[tokio::test]
async fn an_appservice_registered_without_rate_limits_is_not_limited() {
    let dir = tempfile::tempdir().unwrap();
    let limited = |config: &mut Config| {
        config.rate_limiting = true;
        config.rc_message = conduit::matrix::rate_limit::Rate::new(0.001, 2.0);
    };
    let adjust = with_registration(&dir, &registration(None, false));
    let s = TestServer::start_with(|c| {
        adjust(c);
        limited(c);
    })
    .await;
    let room = {
        let (status, body) = s.post(&format!("{V3}/createRoom"), Some(AS_TOKEN), json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["room_id"].as_str().unwrap().to_owned()
    };
    for n in 0..10 {
        let (status, body) = s
            .put(
                &format!("{V3}/rooms/{room}/send/m.room.message/r{n}"),
                Some(AS_TOKEN),
                json!({"body": "x", "msgtype": "m.text"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "message {n}: {body}");
    }
    // A person on the same server is limited.
    let bob = s.register("bob", "pw-bob-123").await;
    let room = create_room(&s, &bob, json!({})).await;
    let mut limited_seen = false;
    for n in 0..5 {
        let (status, _) = s
            .put(
                &format!("{V3}/rooms/{room}/send/m.room.message/b{n}"),
                Some(&bob.token),
                json!({"body": "x", "msgtype": "m.text"}),
            )
            .await;
        limited_seen |= status == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(limited_seen, "bob was never limited");
}

#[tokio::test]
async fn a_hanging_appservice_holds_up_only_itself_and_garbage_counts_as_taken() {
    let hanging = FakeAppservice::start().await;
    hanging.set(Mode::Hang);
    let garbage = FakeAppservice::expecting("other-hs-token").await;
    garbage.set(Mode::Garbage);
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("bridge.yaml");
    let second = dir.path().join("other.yaml");
    std::fs::write(&first, registration(Some(&hanging.url), true)).unwrap();
    std::fs::write(&second, other_registration(&garbage.url)).unwrap();
    let s = TestServer::start_with(|c| c.app_service_config_files = vec![first, second]).await;
    let bob = s.register("bob", "pw-bob-123").await;
    let room = create_room(&s, &bob, json!({"preset": "public_chat"})).await;
    for bot in ["@bridgebot:localhost", "@otherbot:localhost"] {
        let (status, body) =
            s.post(&format!("{V3}/rooms/{room}/invite"), Some(&bob.token), json!({"user_id": bot})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(
        s.post(&format!("{V3}/join/{room}"), Some("other-as-token"), json!({})).await.0,
        StatusCode::OK
    );
    for n in 0..3 {
        send_text(&s, &bob, &room, &format!("g{n}"), &format!("message {n}")).await;
    }
    // The other bridge gets everything while the first hangs on its first transaction.
    garbage.until("all three", |f| f.bodies_in(&room).len() == 3).await;
    assert_eq!(garbage.bodies_in(&room), ["message 0", "message 1", "message 2"]);
    assert!(hanging.events().is_empty());
    assert!(hanging.attempts() >= 1, "the hanging bridge was tried");
}

#[tokio::test]
async fn a_reload_reads_the_files_again_and_a_bad_one_keeps_the_set_in_force() {
    use conduit::reload::LiveReload;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(with_registration(&dir, &registration(None, true))).await;
    let other = dir.path().join("other.yaml");
    let mut config = (*s.services.config).clone();
    config.app_service_config_files = vec![dir.path().join("bridge.yaml"), other.clone()];

    // A broken second file: refused, naming it and the field; the first stays in force.
    std::fs::write(
        &other,
        other_registration("http://127.0.0.1:9").replace("sender_localpart: otherbot\n", ""),
    )
    .unwrap();
    let error = s.services.appservice_sender.check(&config).unwrap_err();
    assert!(error.contains("other.yaml") && error.contains("sender_localpart"), "{error}");
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(AS_TOKEN)).await.0, StatusCode::OK);
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some("other-as-token")).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );

    // Mended: both serve, and the new sender's account exists.
    std::fs::write(&other, other_registration("http://127.0.0.1:9")).unwrap();
    s.services.appservice_sender.check(&config).unwrap();
    s.services.appservice_sender.apply(&config).unwrap();
    let (status, me) = s.get(&format!("{V3}/account/whoami"), Some("other-as-token")).await;
    assert_eq!((status, me["user_id"].as_str()), (StatusCode::OK, Some("@otherbot:localhost")), "{me}");
    let (status, _) = s.get(&format!("{V3}/profile/@otherbot:localhost"), Some(AS_TOKEN)).await;
    assert_eq!(status, StatusCode::OK);

    // Removed from the list: its token stops working at once.
    config.app_service_config_files = vec![dir.path().join("bridge.yaml")];
    s.services.appservice_sender.apply(&config).unwrap();
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some("other-as-token")).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
}

/// Every value of `key` in the accepted transactions, in order.
fn carried(fake: &FakeAppservice, key: &str) -> Vec<Value> {
    fake.seen.lock().unwrap().transactions.iter().filter_map(|(_, body)| body.get(key).cloned()).collect()
}

fn device_lists(fake: &FakeAppservice, which: &str) -> BTreeSet<String> {
    carried(fake, "org.matrix.msc3202.device_lists")
        .iter()
        .flat_map(|lists| lists[which].as_array().cloned().unwrap_or_default())
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn an_encrypting_appservice_manages_its_devices_and_gets_their_messages_keys_and_device_lists() {
    let fake = FakeAppservice::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = registration(Some(&fake.url), true) + "org.matrix.msc3202: true\nio.element.msc4190: true\n";
    let s = TestServer::start_with(with_registration(&dir, &text)).await;
    let bob = s.register("bob", "pw-bob-123").await;
    assert_eq!(register_as(&s, "bridge_alice").await.0, StatusCode::OK);
    let alice = "@bridge_alice:localhost";
    let as_alice = |path: &str| as_path(path, Some(alice));
    let as_device = |path: &str| format!("{}&device_id=BRIDGEDEV", as_path(path, Some(alice)));

    // The appservice creates a device for its user (201), renames it (200); a user cannot
    // create one.
    let path = as_alice(&format!("{V3}/devices/BRIDGEDEV"));
    let (status, body) = s.put(&path, Some(AS_TOKEN), json!({"display_name": "Bridge"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = s.put(&path, Some(AS_TOKEN), json!({"display_name": "Bridge 2"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s.get(&as_alice(&format!("{V3}/devices/BRIDGEDEV")), Some(AS_TOKEN)).await;
    assert_eq!((status, body["display_name"].as_str()), (StatusCode::OK, Some("Bridge 2")), "{body}");
    let (status, _) = s.put(&format!("{V3}/devices/NEWDEV"), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a user only updates devices");

    // Keys for the device, uploaded as it.
    let device_keys = json!({
        "user_id": alice, "device_id": "BRIDGEDEV",
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {"curve25519:BRIDGEDEV": "curve", "ed25519:BRIDGEDEV": "ed"},
        "signatures": {alice: {"ed25519:BRIDGEDEV": "sig"}},
    });
    let one_time: serde_json::Map<String, Value> =
        (1..=3).map(|n| (format!("signed_curve25519:k{n}"), json!({"key": format!("otk{n}")}))).collect();
    let upload = json!({
        "device_keys": device_keys,
        "one_time_keys": one_time,
        "fallback_keys": {"signed_curve25519:fb": {"key": "fallback", "fallback": true}},
    });
    let (status, body) = s.post(&as_device(&format!("{V3}/keys/upload")), Some(AS_TOKEN), upload).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Bob's room: when the bridge's user joins, Bob comes to share a room with it.
    let room = create_room(&s, &bob, json!({"preset": "public_chat"})).await;
    let (status, body) = s.post(&as_alice(&format!("{V3}/join/{room}")), Some(AS_TOKEN), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    fake.until("Bob's device list", |f| device_lists(f, "changed").contains(&bob.user_id)).await;
    assert!(!device_lists(&fake, "changed").contains(alice), "its own users are not news to it");

    // Bob claims a one-time key of the bridge's device and sends it a message: the
    // transaction carries the message, naming the device, and the device's key counts.
    let (status, body) = s
        .post(
            &format!("{V3}/keys/claim"),
            Some(&bob.token),
            json!({"one_time_keys": {alice: {"BRIDGEDEV": "signed_curve25519"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let message = json!({"messages": {alice: {"BRIDGEDEV": {"ciphertext": "for the bridge"}}}});
    let (status, body) =
        s.put(&format!("{V3}/sendToDevice/m.room.encrypted/t1"), Some(&bob.token), message).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let to_device = || {
        carried(&fake, "de.sorunome.msc2409.to_device")
            .into_iter()
            .flat_map(|l| l.as_array().cloned().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    fake.until("the to-device message", |_| !to_device().is_empty()).await;
    let delivered = to_device();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let m = &delivered[0];
    assert_eq!(
        (m["type"].as_str(), m["sender"].as_str(), m["to_user_id"].as_str(), m["to_device_id"].as_str()),
        (Some("m.room.encrypted"), Some(bob.user_id.as_str()), Some(alice), Some("BRIDGEDEV")),
        "{m}"
    );
    assert_eq!(m["content"]["ciphertext"], "for the bridge");
    let counts = carried(&fake, "org.matrix.msc3202.device_one_time_keys_count");
    let last = counts.last().expect("key counts with the message");
    assert_eq!(last[alice]["BRIDGEDEV"]["signed_curve25519"], 2, "{last}");
    let fallbacks = carried(&fake, "org.matrix.msc3202.device_unused_fallback_key_types");
    assert_eq!(fallbacks.last().unwrap()[alice]["BRIDGEDEV"], json!(["signed_curve25519"]));

    // Messages wait for the appservice through an outage and a restart, and come once.
    fake.set(Mode::Unavailable);
    for n in 2..=3 {
        let message = json!({"messages": {alice: {"BRIDGEDEV": {"n": n}}}});
        let path = format!("{V3}/sendToDevice/m.room.encrypted/t{n}");
        assert_eq!(s.put(&path, Some(&bob.token), message).await.0, StatusCode::OK);
    }
    let before = fake.attempts();
    s.advance_until(60_000, "a retry", || fake.attempts() > before).await;
    let s = s.restart_with(|c| c.app_service_config_files = vec![dir.path().join("bridge.yaml")]).await;
    let bob = s.login("bob", "pw-bob-123", None).await;
    fake.set(Mode::Accept);
    s.advance_until(60_000, "the waiting messages", || to_device().len() >= 3).await;
    let numbers: Vec<Value> = to_device().iter().skip(1).map(|m| m["content"]["n"].clone()).collect();
    assert_eq!(numbers, [json!(2), json!(3)]);

    // Bob's new device and his leaving are news for the bridge.
    let changed_before = carried(&fake, "org.matrix.msc3202.device_lists").len();
    assert_eq!(
        s.post(&format!("{V3}/rooms/{room}/leave"), Some(&bob.token), json!({})).await.0,
        StatusCode::OK
    );
    fake.until("Bob leaving", |f| device_lists(f, "left").contains(&bob.user_id)).await;
    assert!(carried(&fake, "org.matrix.msc3202.device_lists").len() > changed_before);

    // Its device goes without user-interactive auth, and so do cross-signing resets.
    let master =
        |k: &str| json!({"user_id": alice, "usage": ["master"], "keys": {format!("ed25519:{k}"): k}});
    for key in ["m1", "m2"] {
        let (status, body) = s
            .post(
                &as_alice(&format!("{V3}/keys/device_signing/upload")),
                Some(AS_TOKEN),
                json!({"master_key": master(key)}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{key}: {body}");
    }
    let (status, body) = s
        .call(
            reqwest::Method::DELETE,
            &as_alice(&format!("{V3}/devices/BRIDGEDEV")),
            Some(AS_TOKEN),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = s.get(&as_alice(&format!("{V3}/devices/BRIDGEDEV")), Some(AS_TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn presence_of_users_sharing_a_room_with_its_users_reaches_an_ephemeral_appservice() {
    let fake = FakeAppservice::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = registration(Some(&fake.url), true) + "receive_ephemeral: true\n";
    let s = TestServer::start_with(with_registration(&dir, &text)).await;
    let bob = s.register("bob", "pw-bob-123").await;
    let carol = s.register("carol", "pw-carol-123").await;
    assert_eq!(register_as(&s, "bridge_alice").await.0, StatusCode::OK);
    let alice = "@bridge_alice:localhost";
    let room = create_room(&s, &bob, json!({"preset": "public_chat"})).await;
    let (status, body) =
        s.post(&as_path(&format!("{V3}/join/{room}"), Some(alice)), Some(AS_TOKEN), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let presence = |fake: &FakeAppservice| -> Vec<Value> {
        carried(fake, "ephemeral")
            .iter()
            .flat_map(|batch| batch.as_array().cloned().unwrap_or_default())
            .filter(|e| e["type"] == "m.presence")
            .collect()
    };
    let status_path =
        |who: &str| format!("{V3}/presence/{}/status", who.replace('@', "%40").replace(':', "%3A"));
    let body = |state: &str| json!({"presence": state, "status_msg": "at work"});
    // Carol shares no room with the bridge's users; the bridge's own user is its own doing.
    let (status, _) = s.put(&status_path(&carol.user_id), Some(&carol.token), body("online")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, reply) =
        s.put(&as_path(&status_path(alice), Some(alice)), Some(AS_TOKEN), body("online")).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (status, _) = s.put(&status_path(&bob.user_id), Some(&bob.token), body("unavailable")).await;
    assert_eq!(status, StatusCode::OK);
    fake.until("Bob's presence", |f| !presence(f).is_empty()).await;
    let seen = presence(&fake);
    assert_eq!(seen.len(), 1, "only Bob's: {seen:?}");
    assert_eq!(seen[0]["sender"], bob.user_id.as_str());
    assert_eq!(seen[0]["content"]["presence"], "unavailable");
    assert_eq!(seen[0]["content"]["status_msg"], "at work");
    assert_eq!(carried(&fake, "de.sorunome.msc2409.ephemeral").len(), carried(&fake, "ephemeral").len());
}
