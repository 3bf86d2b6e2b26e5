//! The rest of the application service API through HTTP: the application service room
//! directory and `/publicRooms` across networks, third-party lookups answered by
//! appservices over HTTP, and appservices registered, listed and removed through the admin
//! API without a restart.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path as AxumPath, Query, State},
    http::{HeaderMap, StatusCode as AxumStatus},
    response::IntoResponse,
    routing::get,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::{
    appservice::{AS_TOKEN, FakeAppservice, HS_TOKEN, Mode, other_registration, registration},
    cli::{conduit, run, run_beside},
    harness::{Session, TestServer, expect_error},
    rooms::{V3, create_room, send_text},
};

/// The room IDs of a `/publicRooms` answer, sorted.
fn rooms_of(body: &Value) -> Vec<String> {
    let mut rooms: Vec<String> = body["chunk"]
        .as_array()
        .unwrap_or_else(|| panic!("no chunk: {body}"))
        .iter()
        .map(|r| r["room_id"].as_str().unwrap().to_owned())
        .collect();
    rooms.sort();
    rooms
}

fn sorted(rooms: &[&String]) -> Vec<String> {
    let mut rooms: Vec<String> = rooms.iter().map(|r| (*r).clone()).collect();
    rooms.sort();
    rooms
}

fn appservice_list(network: &str, room: &str) -> String {
    format!("{V3}/directory/list/appservice/{network}/{room}")
}

async fn public_rooms(s: &TestServer, token: &str, body: Value) -> Vec<String> {
    let (status, answer) = s.post(&format!("{V3}/publicRooms"), Some(token), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    rooms_of(&answer)
}

#[tokio::test]
async fn appservices_publish_rooms_per_network_and_public_rooms_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("bridge.yaml");
    let second = dir.path().join("other.yaml");
    std::fs::write(&first, registration(None, true)).unwrap();
    std::fs::write(&second, other_registration("http://127.0.0.1:9")).unwrap();
    let files = vec![first, second];
    let kept = files.clone();
    let s = TestServer::start_with(move |c| c.app_service_config_files = files).await;
    let bob = s.register("bob", "pw-bob-123").await;
    let main = create_room(&s, &bob, json!({"visibility": "public", "name": "main list"})).await;
    let libera = create_room(&s, &bob, json!({"name": "bridged from libera"})).await;
    let oftc = create_room(&s, &bob, json!({"name": "bridged from oftc"})).await;

    // The appservice publishes rooms in its lists, one per network.
    for (network, room) in [("libera", &libera), ("oftc", &oftc)] {
        let (status, body) =
            s.put(&appservice_list(network, room), Some(AS_TOKEN), json!({"visibility": "public"})).await;
        assert_eq!((status, &body), (StatusCode::OK, &json!({})), "{body}");
    }
    // Another appservice's list of the same network name is its own.
    let (status, body) = s
        .put(&appservice_list("libera", &oftc), Some("other-as-token"), json!({"visibility": "public"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Only appservices: a user is refused (not told the token is unknown), no token is missing.
    expect_error(
        s.put(&appservice_list("libera", &main), Some(&bob.token), json!({"visibility": "public"})).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    expect_error(
        s.put(&appservice_list("libera", &main), None, json!({"visibility": "public"})).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
    // Bad input: an unknown room, a visibility that is neither, no visibility.
    expect_error(
        s.put(
            &appservice_list("libera", "!nowhere:localhost"),
            Some(AS_TOKEN),
            json!({"visibility": "public"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.put(&appservice_list("libera", &main), Some(AS_TOKEN), json!({"visibility": "secret"})).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let (status, body) = s.put(&appservice_list("libera", &main), Some(AS_TOKEN), json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The server's list alone by default; one network's by instance ID; all with
    // include_all_networks.
    assert_eq!(public_rooms(&s, &bob.token, json!({})).await, vec![main.clone()]);
    let (status, listed) = s.get(&format!("{V3}/publicRooms"), Some(&bob.token)).await;
    assert_eq!((status, rooms_of(&listed)), (StatusCode::OK, vec![main.clone()]));
    assert_eq!(
        public_rooms(&s, &bob.token, json!({"third_party_instance_id": "bridge|libera"})).await,
        vec![libera.clone()]
    );
    assert_eq!(
        public_rooms(&s, &bob.token, json!({"third_party_instance_id": "other|libera"})).await,
        vec![oftc.clone()]
    );
    assert_eq!(
        public_rooms(&s, &bob.token, json!({"include_all_networks": true})).await,
        sorted(&[&main, &libera, &oftc])
    );
    // With a search term and paging, as for the server's list.
    let (status, page) = s
        .post(
            &format!("{V3}/publicRooms"),
            Some(&bob.token),
            json!({"include_all_networks": true, "filter": {"generic_search_term": "bridged"}, "limit": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total_room_count_estimate"], 2, "{page}");
    assert!(page["next_batch"].is_string(), "{page}");
    // A network nobody published in lists nothing; an instance ID that is not one is refused,
    // and so is asking for one network and all of them at once.
    assert!(
        public_rooms(&s, &bob.token, json!({"third_party_instance_id": "bridge|efnet"})).await.is_empty()
    );
    assert!(
        public_rooms(&s, &bob.token, json!({"third_party_instance_id": "nobody|libera"})).await.is_empty()
    );
    expect_error(
        s.post(&format!("{V3}/publicRooms"), Some(&bob.token), json!({"third_party_instance_id": "libera"}))
            .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    let (status, body) = s
        .post(
            &format!("{V3}/publicRooms"),
            Some(&bob.token),
            json!({"third_party_instance_id": "bridge|libera", "include_all_networks": true}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Withdrawn: off that list only.
    let (status, _) =
        s.put(&appservice_list("oftc", &oftc), Some(AS_TOKEN), json!({"visibility": "private"})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(public_rooms(&s, &bob.token, json!({"third_party_instance_id": "bridge|oftc"})).await.is_empty());
    assert_eq!(
        public_rooms(&s, &bob.token, json!({"third_party_instance_id": "other|libera"})).await,
        vec![oftc.clone()]
    );

    // The lists are kept across a restart; those of an appservice no longer registered are
    // not listed.
    let s = s.restart_with(move |c| c.app_service_config_files = vec![kept[0].clone()]).await;
    assert_eq!(
        public_rooms(&s, &bob.token, json!({"third_party_instance_id": "bridge|libera"})).await,
        vec![libera.clone()]
    );
    assert!(
        public_rooms(&s, &bob.token, json!({"third_party_instance_id": "other|libera"})).await.is_empty()
    );
    assert_eq!(
        public_rooms(&s, &bob.token, json!({"include_all_networks": true})).await,
        sorted(&[&main, &libera])
    );
}

/// An appservice that answers third-party lookups over HTTP, as a bridge to the `chat`
/// network would: its protocol's metadata with one instance named `network`, portal rooms
/// for `?channel=`, users for `?nick=`, and the reverse lookups for its own aliases and
/// users. It checks the `hs_token` and records what it was asked.
#[derive(Clone)]
struct LookupBridge {
    url: String,
    hs_token: String,
    network: String,
    behaviour: Arc<Mutex<Behaviour>>,
    asked: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Answer,
    /// Never answers.
    Hang,
    /// Answers 500 to everything.
    Fail,
}

impl LookupBridge {
    async fn start(hs_token: &str, network: &str, behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bridge = Self {
            url: format!("http://{}", listener.local_addr().unwrap()),
            hs_token: hs_token.to_owned(),
            network: network.to_owned(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            asked: Arc::default(),
        };
        let app = Router::new()
            .route("/_matrix/app/v1/thirdparty/protocol/{protocol}", get(protocol_metadata))
            .route("/_matrix/app/v1/thirdparty/location/{protocol}", get(find_locations))
            .route("/_matrix/app/v1/thirdparty/user/{protocol}", get(find_users))
            .route("/_matrix/app/v1/thirdparty/location", get(location_of_alias))
            .route("/_matrix/app/v1/thirdparty/user", get(user_of_user_id))
            .with_state(bridge.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        bridge
    }

    /// Records the request; `None` when the answer is to be refused or never given.
    async fn heard(&self, headers: &HeaderMap, what: String) -> Option<axum::response::Response> {
        self.asked.lock().unwrap().push(what);
        let behaviour = *self.behaviour.lock().unwrap();
        match behaviour {
            Behaviour::Hang => std::future::pending::<()>().await,
            Behaviour::Fail => return Some(AxumStatus::INTERNAL_SERVER_ERROR.into_response()),
            Behaviour::Answer => {}
        }
        let authorized = headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {}", self.hs_token));
        (!authorized)
            .then(|| (AxumStatus::FORBIDDEN, Json(json!({"errcode": "M_FORBIDDEN"}))).into_response())
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn not_found() -> axum::response::Response {
    (AxumStatus::NOT_FOUND, Json(json!({"errcode": "M_NOT_FOUND", "error": "nothing"}))).into_response()
}

async fn protocol_metadata(
    State(bridge): State<LookupBridge>,
    AxumPath(protocol): AxumPath<String>,
    headers: HeaderMap,
) -> axum::response::Response {
    if let Some(refused) = bridge.heard(&headers, format!("protocol {protocol}")).await {
        return refused;
    }
    if protocol != "chat" {
        return not_found();
    }
    Json(json!({
        "user_fields": ["nick"],
        "location_fields": ["channel"],
        "icon": "mxc://localhost/chat",
        "field_types": {
            "nick": {"regexp": "[a-z]+", "placeholder": "nick"},
            "channel": {"regexp": "#[a-z]+", "placeholder": "#channel"},
        },
        "instances": [{
            "network_id": bridge.network,
            "desc": format!("the {} network", bridge.network),
            "fields": {"network": bridge.network},
        }],
        // A field the spec does not name is passed on as the appservice sent it.
        "org.example.extra": true,
    }))
    .into_response()
}

async fn find_locations(
    State(bridge): State<LookupBridge>,
    AxumPath(protocol): AxumPath<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> axum::response::Response {
    if let Some(refused) = bridge.heard(&headers, format!("location {protocol} {query:?}")).await {
        return refused;
    }
    let Some(channel) = query.get("channel") else { return not_found() };
    let name = channel.trim_start_matches('#');
    Json(json!([
        {"alias": format!("#bridge_{name}:localhost"), "protocol": protocol, "fields": {"channel": channel}},
        // A result of the wrong shape, which the server leaves out.
        {"alias": 42, "protocol": protocol, "fields": {}},
    ]))
    .into_response()
}

async fn find_users(
    State(bridge): State<LookupBridge>,
    AxumPath(protocol): AxumPath<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> axum::response::Response {
    if let Some(refused) = bridge.heard(&headers, format!("user {protocol} {query:?}")).await {
        return refused;
    }
    let Some(nick) = query.get("nick") else { return not_found() };
    Json(json!([{"userid": format!("@bridge_{nick}:localhost"), "protocol": protocol, "fields": {"nick": nick}}]))
        .into_response()
}

async fn location_of_alias(
    State(bridge): State<LookupBridge>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let alias = query.get("alias").cloned().unwrap_or_default();
    if let Some(refused) = bridge.heard(&headers, format!("alias {alias}")).await {
        return refused;
    }
    let Some(name) = alias.strip_prefix("#bridge_").and_then(|a| a.strip_suffix(":localhost")) else {
        return not_found();
    };
    Json(json!([{"alias": alias, "protocol": "chat", "fields": {"channel": format!("#{name}")}}]))
        .into_response()
}

async fn user_of_user_id(
    State(bridge): State<LookupBridge>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> axum::response::Response {
    let user_id = query.get("userid").cloned().unwrap_or_default();
    if let Some(refused) = bridge.heard(&headers, format!("userid {user_id}")).await {
        return refused;
    }
    let Some(nick) = user_id.strip_prefix("@bridge_").and_then(|u| u.strip_suffix(":localhost")) else {
        return not_found();
    };
    Json(json!([{"userid": user_id, "protocol": "chat", "fields": {"nick": nick}}])).into_response()
}

/// `text` (a registration) offering `protocols`.
fn offering(text: String, protocols: &str) -> String {
    format!("{text}protocols: [{protocols}]\n")
}

#[tokio::test]
async fn third_party_lookups_ask_the_bridges_and_merge_their_answers() {
    let bridge = LookupBridge::start(HS_TOKEN, "libera", Behaviour::Answer).await;
    let other = LookupBridge::start("other-hs-token", "oftc", Behaviour::Answer).await;
    let hanging = LookupBridge::start("slow-hs-token", "efnet", Behaviour::Hang).await;
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = [
        ("bridge.yaml", offering(registration(Some(&bridge.url), true), "chat, gateway")),
        ("other.yaml", offering(other_registration(&other.url), "chat")),
        (
            "slow.yaml",
            offering(
                other_registration(&hanging.url)
                    .replace("id: other", "id: slow")
                    .replace("other-as-token", "slow-as-token")
                    .replace("other-hs-token", "slow-hs-token")
                    .replace("otherbot", "slowbot")
                    .replace("@other_.*", "@slow_.*")
                    .replace("#other_.*", "#slow_.*"),
                "chat",
            ),
        ),
    ]
    .into_iter()
    .map(|(name, text)| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    })
    .collect();
    let s = TestServer::start_with(move |c| c.app_service_config_files = files).await;
    let bob = s.register("bob", "pw-bob-123").await;
    let token = Some(bob.token.as_str());

    // Every protocol: `chat` merged from both bridges that answer, each instance named
    // `{appservice}|{network}`; `gateway`, which no bridge knows, is left out. The hanging
    // bridge holds the answer up by the query timeout and no more.
    let started = std::time::Instant::now();
    let (status, protocols) = s.get(&format!("{V3}/thirdparty/protocols"), token).await;
    assert_eq!(status, StatusCode::OK, "{protocols}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
    assert_eq!(protocols.as_object().unwrap().keys().collect::<Vec<_>>(), ["chat"], "{protocols}");
    let chat = &protocols["chat"];
    assert_eq!(chat["location_fields"], json!(["channel"]), "{chat}");
    assert_eq!(chat["org.example.extra"], true, "{chat}");
    let instances: Vec<(&str, &str)> = chat["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["instance_id"].as_str().unwrap(), i["network_id"].as_str().unwrap()))
        .collect();
    assert_eq!(instances, [("bridge|libera", "libera"), ("other|oftc", "oftc")], "{chat}");
    assert!(hanging.asked().contains(&"protocol chat".to_owned()), "the hanging bridge was asked");
    assert!(bridge.asked().contains(&"protocol gateway".to_owned()));
    // From here on it fails at once instead: left out the same way.
    *hanging.behaviour.lock().unwrap() = Behaviour::Fail;

    // One protocol; an unknown one, and one no bridge answers for, are not found.
    let (status, one) = s.get(&format!("{V3}/thirdparty/protocol/chat"), token).await;
    assert_eq!((status, &one["instances"]), (StatusCode::OK, &chat["instances"]), "{one}");
    for unknown in ["irc", "gateway"] {
        expect_error(
            s.get(&format!("{V3}/thirdparty/protocol/{unknown}"), token).await,
            StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
        );
    }

    // Lookups pass the fields on and list what the bridges found, in their shape.
    let (status, rooms) = s.get(&format!("{V3}/thirdparty/location/chat?channel=%23lobby"), token).await;
    assert_eq!(status, StatusCode::OK, "{rooms}");
    let aliases: Vec<&str> = rooms.as_array().unwrap().iter().map(|r| r["alias"].as_str().unwrap()).collect();
    assert_eq!(aliases, ["#bridge_lobby:localhost", "#bridge_lobby:localhost"], "both bridges: {rooms}");
    assert_eq!(
        rooms[0],
        json!({"alias": "#bridge_lobby:localhost", "protocol": "chat", "fields": {"channel": "#lobby"}})
    );
    assert!(
        bridge.asked().iter().any(|a| a.contains("location chat") && a.contains("\"channel\": \"#lobby\""))
    );
    assert!(hanging.asked().iter().any(|a| a.starts_with("location chat")), "the failing bridge was asked");
    let (status, users) = s.get(&format!("{V3}/thirdparty/user/chat?nick=alice"), token).await;
    assert_eq!(status, StatusCode::OK, "{users}");
    assert_eq!(users[0]["userid"], "@bridge_alice:localhost", "{users}");
    // Nothing found, or a protocol nobody offers: not found.
    expect_error(
        s.get(&format!("{V3}/thirdparty/location/chat"), token).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get(&format!("{V3}/thirdparty/user/irc?nick=alice"), token).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Reverse lookups ask the bridge whose namespace holds the alias or user.
    let (status, found) =
        s.get(&format!("{V3}/thirdparty/location?alias=%23bridge_lobby:localhost"), token).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(
        found,
        json!([{"alias": "#bridge_lobby:localhost", "protocol": "chat", "fields": {"channel": "#lobby"}}])
    );
    assert!(bridge.asked().contains(&"alias #bridge_lobby:localhost".to_owned()));
    assert!(!other.asked().iter().any(|a| a.starts_with("alias")), "{:?}", other.asked());
    let (status, found) =
        s.get(&format!("{V3}/thirdparty/user?userid=%40bridge_alice:localhost"), token).await;
    assert_eq!((status, &found[0]["fields"]), (StatusCode::OK, &json!({"nick": "alice"})), "{found}");
    expect_error(
        s.get(&format!("{V3}/thirdparty/user?userid=%40bob:localhost"), token).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    expect_error(
        s.get(&format!("{V3}/thirdparty/location?alias=not-an-alias"), token).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    // Only for users of the server.
    expect_error(
        s.get(&format!("{V3}/thirdparty/protocols"), None).await,
        StatusCode::UNAUTHORIZED,
        "M_MISSING_TOKEN",
    );
}

const APPSERVICES: &str = "/_conduit/admin/v1/appservices";

async fn server_admin(s: &TestServer) -> Session {
    s.services.accounts.create_user("root", "pw-root-12345", true).await.unwrap();
    s.login("root", "pw-root-12345", None).await
}

/// `POST` a registration as its text (YAML or JSON), as an operator's script sends a file.
async fn post_registration(s: &TestServer, token: &str, text: &str) -> (StatusCode, Value) {
    let response = s
        .http
        .post(format!("{}{APPSERVICES}", s.base))
        .bearer_auth(token)
        .body(text.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn ids(listed: &Value) -> Vec<(String, String, bool)> {
    listed["appservices"]
        .as_array()
        .unwrap_or_else(|| panic!("no list: {listed}"))
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_owned(),
                a["source"].as_str().unwrap().to_owned(),
                a["in_force"] == true,
            )
        })
        .collect()
}

fn third_registration(url: &str) -> String {
    other_registration(url)
        .replace("id: other", "id: third")
        .replace("other-as-token", "third-as-token")
        .replace("other-hs-token", "third-hs-token")
        .replace("otherbot", "thirdbot")
        .replace("@other_.*", "@third_.*")
        .replace("#other_.*", "#third_.*")
}

#[tokio::test]
async fn appservices_are_added_listed_and_removed_through_the_admin_api_without_a_restart() {
    let fake = FakeAppservice::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("other.yaml");
    std::fs::write(&file, other_registration("http://127.0.0.1:9")).unwrap();
    let files = vec![file.clone()];
    let s = TestServer::start_with({
        let files = files.clone();
        move |c| c.app_service_config_files = files
    })
    .await;
    let root = server_admin(&s).await;
    let bob = s.register("bob", "pw-bob-123").await;
    // Before it is added, its token is unknown; only admins may add it.
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(AS_TOKEN)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    let text = registration(Some(&fake.url), true);
    expect_error(post_registration(&s, &bob.token, &text).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    expect_error(s.get(APPSERVICES, Some(&bob.token)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");

    // Added (as YAML): in force at once, its sender exists, its token acts, and transactions
    // start; the answer never shows its tokens.
    let (status, added) = post_registration(&s, &root.token, &text).await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(
        (added["id"].as_str(), added["source"].as_str()),
        (Some("bridge"), Some("admin_api")),
        "{added}"
    );
    assert_eq!(added["namespaces"]["users"][0]["regex"], "@bridge_.*:localhost", "{added}");
    assert!(!added.to_string().contains(AS_TOKEN) && !added.to_string().contains(HS_TOKEN), "{added}");
    let (status, me) = s.get(&format!("{V3}/account/whoami"), Some(AS_TOKEN)).await;
    assert_eq!((status, me["user_id"].as_str()), (StatusCode::OK, Some("@bridgebot:localhost")), "{me}");
    let room = create_room(&s, &bob, json!({"preset": "public_chat"})).await;
    let (status, body) = s
        .post(
            &format!("{V3}/rooms/{room}/invite"),
            Some(&bob.token),
            json!({"user_id": "@bridgebot:localhost"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(s.post(&format!("{V3}/join/{room}"), Some(AS_TOKEN), json!({})).await.0, StatusCode::OK);
    send_text(&s, &bob, &room, "t1", "hello added bridge").await;
    fake.until("the message", |f| f.bodies_in(&room) == ["hello added bridge"]).await;

    // Listed beside the file's, and one by one.
    let (status, listed) = s.get(APPSERVICES, Some(&root.token)).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(
        ids(&listed),
        [("other".to_owned(), "file".to_owned(), true), ("bridge".to_owned(), "admin_api".to_owned(), true)]
    );
    assert_eq!(listed["appservices"][0]["file"], file.display().to_string());
    assert!(!listed.to_string().contains("other-as-token"), "{listed}");
    let (status, one) = s.get(&format!("{APPSERVICES}/bridge"), Some(&root.token)).await;
    assert_eq!((status, &one["sender"]), (StatusCode::OK, &json!("@bridgebot:localhost")), "{one}");
    assert!(one["added_ts"].is_u64(), "{one}");
    expect_error(
        s.get(&format!("{APPSERVICES}/nobody"), Some(&root.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // Refused with the same checks and errors as a file, and conflicts named.
    let broken = third_registration("http://127.0.0.1:9").replace("'@third_.*:localhost'", "'@third_(.*'");
    let error = expect_error(
        post_registration(&s, &root.token, &broken).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert!(error["error"].as_str().unwrap().contains("namespaces.users[0].regex"), "{error}");
    let error = expect_error(
        post_registration(
            &s,
            &root.token,
            &third_registration("http://127.0.0.1:9").replace("id: third", "id: other"),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert!(error["error"].as_str().unwrap().contains("other.yaml"), "names the file: {error}");
    let error = expect_error(
        post_registration(
            &s,
            &root.token,
            &third_registration("http://127.0.0.1:9").replace("third-as-token", AS_TOKEN),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert!(error["error"].as_str().unwrap().contains("token"), "{error}");
    expect_error(post_registration(&s, &root.token, &text).await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");
    expect_error(post_registration(&s, &root.token, "").await, StatusCode::BAD_REQUEST, "M_INVALID_PARAM");

    // JSON is taken too (a registration is YAML, which JSON is).
    let json_registration = json!({
        "id": "third", "url": null, "as_token": "third-as-token", "hs_token": "third-hs-token",
        "sender_localpart": "thirdbot", "namespaces": {"users": [{"exclusive": true, "regex": "@third_.*:localhost"}]},
    });
    let (status, added) = post_registration(&s, &root.token, &json_registration.to_string()).await;
    assert_eq!((status, added["id"].as_str()), (StatusCode::OK, Some("third")), "{added}");
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some("third-as-token")).await.0, StatusCode::OK);

    // A file's registration cannot be removed here; it says which file.
    let error = expect_error(
        s.call(Method::DELETE, &format!("{APPSERVICES}/other"), Some(&root.token), None).await,
        StatusCode::BAD_REQUEST,
        "M_INVALID_PARAM",
    );
    assert!(error["error"].as_str().unwrap().contains("other.yaml"), "{error}");

    // Each change is audited, by whom and to what, and no token reaches the log.
    let (status, log) = s.get("/_conduit/admin/v1/audit_log?limit=1000", Some(&root.token)).await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let records = log["records"].as_array().unwrap();
    let added: Vec<&Value> = records.iter().filter(|r| r["action"] == "appservice.add").collect();
    assert_eq!(added.len(), 2, "{log}");
    assert!(added.iter().any(|r| r["target"] == "bridge" && r["actor"]["user_id"] == root.user_id.as_str()));
    assert!(
        records.iter().any(|r| r["action"] == "admin.request"
            && r["target"] == APPSERVICES
            && r["params"]["method"] == "POST"),
        "the calls themselves: {log}"
    );
    for secret in [AS_TOKEN, HS_TOKEN, "third-as-token", "third-hs-token"] {
        assert!(!log.to_string().contains(secret), "{secret} in the audit log");
    }

    // A restart keeps what was added.
    let s = s.restart_with(move |c| c.app_service_config_files = files).await;
    let (_, listed) = s.get(APPSERVICES, Some(&root.token)).await;
    assert_eq!(ids(&listed).len(), 3, "{listed}");
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(AS_TOKEN)).await.0, StatusCode::OK);
    send_text(&s, &bob, &room, "t2", "after the restart").await;
    fake.until("the message after the restart", |f| f.bodies_in(&room).len() == 2).await;

    // Removed while it is down: its token stops working at once, and its queue ends without
    // waiting for its backoff, so nothing more is sent to it.
    fake.set(Mode::Unavailable);
    send_text(&s, &bob, &room, "t3", "while it is down").await;
    let tried = fake.attempts();
    s.advance_until(1_000, "a failed delivery", || fake.attempts() > tried).await;
    let (status, body) =
        s.call(Method::DELETE, &format!("{APPSERVICES}/bridge"), Some(&root.token), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(AS_TOKEN)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    for _ in 0..500 {
        if !s.services.outbox.is_running("appservice", "bridge") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!s.services.outbox.is_running("appservice", "bridge"), "its queue still runs");
    let tried = fake.attempts();
    s.clock.advance_ms(3_600_000);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(fake.attempts(), tried, "nothing is sent to a removed appservice");
    expect_error(
        s.call(Method::DELETE, &format!("{APPSERVICES}/bridge"), Some(&root.token), None).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    let (_, listed) = s.get(APPSERVICES, Some(&root.token)).await;
    assert_eq!(ids(&listed).iter().map(|(id, _, _)| id.as_str()).collect::<Vec<_>>(), ["other", "third"]);

    // Added again, it starts from now: what it missed while removed is not sent.
    fake.set(Mode::Accept);
    assert_eq!(post_registration(&s, &root.token, &text).await.0, StatusCode::OK);
    send_text(&s, &bob, &room, "t4", "after adding it again").await;
    fake.until("the message after adding it again", |f| f.bodies_in(&room).len() == 3).await;
    assert_eq!(fake.bodies_in(&room), ["hello added bridge", "after the restart", "after adding it again"]);
}

#[tokio::test]
async fn an_added_registration_and_a_file_that_conflict_never_stop_the_server() {
    use conduit::reload::LiveReload;
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start().await;
    let root = server_admin(&s).await;
    assert_eq!(post_registration(&s, &root.token, &registration(None, true)).await.0, StatusCode::OK);

    // A reload that brings a file with the same ID is refused; the added one stays.
    let clash = dir.path().join("clash.yaml");
    std::fs::write(&clash, third_registration("http://127.0.0.1:9").replace("id: third", "id: bridge"))
        .unwrap();
    let mut config = (*s.services.config).clone();
    config.app_service_config_files = vec![clash.clone()];
    let error = s.services.appservice_sender.check(&config).unwrap_err();
    assert!(error.contains("bridge") && error.contains("admin API"), "{error}");
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(AS_TOKEN)).await.0, StatusCode::OK);

    // Started with that file anyway: the server starts, the file's registration serves, and
    // the added one is listed as not in force, with why, until one of them goes.
    let s = s.restart_with(move |c| c.app_service_config_files = vec![clash]).await;
    let (status, listed) = s.get(APPSERVICES, Some(&root.token)).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(
        ids(&listed),
        [
            ("bridge".to_owned(), "file".to_owned(), true),
            ("bridge".to_owned(), "admin_api".to_owned(), false)
        ]
    );
    assert!(listed["appservices"][1]["problem"].as_str().unwrap().contains("id `bridge`"), "{listed}");
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(AS_TOKEN)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some("third-as-token")).await.0, StatusCode::OK);

    // The file goes (a reload): the added one is in force again.
    let mut config = (*s.services.config).clone();
    config.app_service_config_files = Vec::new();
    s.services.appservice_sender.check(&config).unwrap();
    s.services.appservice_sender.apply(&config).unwrap();
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(AS_TOKEN)).await.0, StatusCode::OK);
    let (_, listed) = s.get(APPSERVICES, Some(&root.token)).await;
    assert_eq!(ids(&listed), [("bridge".to_owned(), "admin_api".to_owned(), true)]);
}

#[tokio::test]
async fn the_command_line_adds_lists_and_removes_appservices_on_the_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let registration_file = dir.path().join("bridge.yaml");
    std::fs::write(&registration_file, registration(None, true)).unwrap();
    let mut config = crate::harness::test_config(dir.path());
    config.database_path = db.clone();
    let s = TestServer::boot(config.clone(), tempfile::tempdir().unwrap()).await;

    let mut cmd = conduit(&db);
    cmd.args(["appservice", "add"]).arg(&registration_file);
    let (ok, text) = run_beside(cmd).await;
    assert!(ok && text.contains("registered bridge: added at run time"), "{text}");
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(AS_TOKEN)).await.0, StatusCode::OK);
    let mut cmd = conduit(&db);
    cmd.args(["appservice", "list"]);
    let (ok, text) = run_beside(cmd).await;
    assert!(
        ok && text.contains("bridge: added at run time") && text.contains("@bridge_.*:localhost (exclusive)"),
        "{text}"
    );
    let mut cmd = conduit(&db);
    cmd.args(["appservice", "add"]).arg(&registration_file);
    let (ok, text) = run_beside(cmd).await;
    assert!(!ok && text.contains("id `bridge`"), "errors come back from the server: {text}");
    let mut cmd = conduit(&db);
    cmd.args(["appservice", "remove", "bridge"]);
    let (ok, text) = run_beside(cmd).await;
    assert!(ok && text.contains("removed bridge"), "{text}");
    expect_error(
        s.get(&format!("{V3}/account/whoami"), Some(AS_TOKEN)).await,
        StatusCode::UNAUTHORIZED,
        "M_UNKNOWN_TOKEN",
    );
    s.stop().await;

    // With no server running, on the database itself.
    let (ok, text) = run(conduit(&db).args(["appservice", "add"]).arg(&registration_file));
    assert!(ok && text.contains("registered bridge"), "{text}");
    let (ok, text) = run(conduit(&db).args(["appservice", "list"]));
    assert!(ok && text.contains("bridge: added at run time"), "{text}");
    let s = TestServer::boot(config, tempfile::tempdir().unwrap()).await;
    assert_eq!(s.get(&format!("{V3}/account/whoami"), Some(AS_TOKEN)).await.0, StatusCode::OK);
}
