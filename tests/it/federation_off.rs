//! Federation off (`allow_federation = false`, the default): while users do everything that
//! would reach another server — invite and look up remote users, join and look up remote
//! rooms and aliases, ask for remote keys, profiles, directories and media — each gets a clear
//! Matrix error (or, where the spec says so, a per-server failure in a 200), and no connection
//! is ever opened; every federation route answers `404 M_UNRECOGNIZED`, except OpenID's
//! userinfo, which call services need.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::TestServer;

const V3: &str = "/_matrix/client/v3";

/// A port on loopback that counts every connection made to it: the "remote server"
/// `127.0.0.1:<port>` (an IP literal with a port, which discovery would connect to directly).
struct Tripwire {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl Tripwire {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Self { port, connections }
    }

    fn server(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A refusal a client can show: a 4xx (or a 502 naming federation) with an errcode and a
/// message.
fn assert_clear_error(what: &str, (status, body): &(StatusCode, Value)) {
    assert!(status.is_client_error(), "{what}: {status} {body}");
    assert!(body["errcode"].as_str().is_some_and(|c| c.starts_with("M_")), "{what}: {body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {body}");
}

#[tokio::test]
async fn nothing_federates_and_every_remote_request_is_refused_clearly() {
    let remote = Tripwire::start().await;
    let server = remote.server();
    let s = TestServer::start().await;
    let alice = s.register("alice", "pw-alice-123").await;
    let token = Some(alice.token.as_str());
    let bob = format!("@bob:{server}");
    let alias = format!("#room:{server}");
    let room_id = format!("!abcdef:{server}");

    let (status, created) = s.post(&format!("{V3}/createRoom"), token, json!({"name": "local"})).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let local_room = created["room_id"].as_str().unwrap().to_owned();

    let refusals = [
        (
            "createRoom inviting a remote user",
            s.post(&format!("{V3}/createRoom"), token, json!({"invite": [bob]})).await,
        ),
        (
            "inviting a remote user",
            s.post(&format!("{V3}/rooms/{local_room}/invite"), token, json!({"user_id": bob})).await,
        ),
        ("joining a remote alias", s.post(&format!("{V3}/join/{}", encode(&alias)), token, json!({})).await),
        (
            "joining a remote room by ID through its server",
            s.post(
                &format!("{V3}/join/{}?server_name={}", encode(&room_id), encode(&server)),
                token,
                json!({}),
            )
            .await,
        ),
        (
            "joining a remote room by ID",
            s.post(&format!("{V3}/rooms/{}/join", encode(&room_id)), token, json!({})).await,
        ),
        (
            "knocking on a remote alias",
            s.post(&format!("{V3}/knock/{}", encode(&alias)), token, json!({})).await,
        ),
        ("resolving a remote alias", s.get(&format!("{V3}/directory/room/{}", encode(&alias)), token).await),
        ("a remote user's profile", s.get(&format!("{V3}/profile/{}", encode(&bob)), token).await),
        (
            "a remote user's display name",
            s.get(&format!("{V3}/profile/{}/displayname", encode(&bob)), token).await,
        ),
        (
            "a remote server's room directory",
            s.get(&format!("{V3}/publicRooms?server={}", encode(&server)), token).await,
        ),
        (
            "a remote room's summary",
            s.get(&format!("/_matrix/client/v1/room_summary/{}", encode(&alias)), token).await,
        ),
        (
            "remote media",
            s.get(&format!("/_matrix/client/v1/media/download/{server}/abcdefghijkl"), token).await,
        ),
        (
            "a remote media thumbnail",
            s.get(
                &format!("/_matrix/client/v1/media/thumbnail/{server}/abcdefghijkl?width=32&height=32"),
                token,
            )
            .await,
        ),
        (
            "remote media (legacy path)",
            s.get(&format!("/_matrix/media/v3/download/{server}/abcdefghijkl"), None).await,
        ),
        (
            "a remote room's hierarchy",
            s.get(&format!("/_matrix/client/v1/rooms/{}/hierarchy", encode(&room_id)), token).await,
        ),
    ];
    for (what, answer) in &refusals {
        assert_clear_error(what, answer);
        // The message says why, except for a space's hierarchy, which answers as for any
        // room the user may not see.
        if !what.contains("hierarchy") {
            let message = answer.1["error"].as_str().unwrap_or_default();
            assert!(message.to_lowercase().contains("federat"), "{what}: {message}");
        }
    }

    // Key queries and claims answer 200 with the remote server among the failures.
    let (status, keys) =
        s.post(&format!("{V3}/keys/query"), token, json!({"device_keys": {bob.clone(): []}})).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert!(keys["failures"].get(&server).is_some(), "{keys}");
    let (status, claimed) = s
        .post(
            &format!("{V3}/keys/claim"),
            token,
            json!({"one_time_keys": {bob.clone(): {"DEVICE": "signed_curve25519"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert!(claimed["failures"].get(&server).is_some(), "{claimed}");
    // To-device messages to remote users go nowhere, and the sender is not told otherwise
    // than the spec allows (200).
    let (status, body) = s
        .put(
            &format!("{V3}/sendToDevice/m.test/t1"),
            token,
            json!({"messages": {bob.clone(): {"DEVICE": {"x": 1}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Mentioning a remote user in a message is just text.
    let (status, body) = s
        .put(
            &format!("{V3}/rooms/{local_room}/send/m.room.message/t2"),
            token,
            json!({"msgtype": "m.text", "body": format!("hi {bob}"), "m.mentions": {"user_ids": [bob]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Every federation route answers 404 M_UNRECOGNIZED; OpenID's userinfo is still served.
    let routes = [
        (Method::GET, "/_matrix/key/v2/server".to_owned()),
        (Method::GET, "/_matrix/key/v2/server/ed25519:abc".to_owned()),
        (Method::POST, "/_matrix/key/v2/query".to_owned()),
        (Method::GET, format!("/_matrix/key/v2/query/{server}")),
        (Method::GET, "/_matrix/federation/v1/version".to_owned()),
        (Method::PUT, "/_matrix/federation/v1/send/txn1".to_owned()),
        (Method::GET, format!("/_matrix/federation/v1/make_join/{}/{}", encode(&local_room), encode(&bob))),
        (Method::PUT, format!("/_matrix/federation/v2/send_join/{}/$e", encode(&local_room))),
        (Method::PUT, format!("/_matrix/federation/v2/invite/{}/$e", encode(&local_room))),
        (Method::GET, format!("/_matrix/federation/v1/state_ids/{}", encode(&local_room))),
        (Method::GET, format!("/_matrix/federation/v1/backfill/{}", encode(&local_room))),
        (Method::GET, "/_matrix/federation/v1/query/profile?user_id=%40alice%3Alocalhost".to_owned()),
        (Method::GET, "/_matrix/federation/v1/query/directory?room_alias=%23r%3Alocalhost".to_owned()),
        (Method::GET, "/_matrix/federation/v1/publicRooms".to_owned()),
        (Method::POST, "/_matrix/federation/v1/user/keys/query".to_owned()),
        (Method::GET, "/_matrix/federation/v1/media/download/abc".to_owned()),
    ];
    for (method, path) in routes {
        let body = (method != Method::GET).then(|| json!({}));
        let (status, answer) = s.call(method.clone(), &path, None, body).await;
        assert_eq!(
            (status, answer["errcode"].as_str()),
            (StatusCode::NOT_FOUND, Some("M_UNRECOGNIZED")),
            "{method} {path}: {answer}"
        );
    }
    let (status, userinfo) =
        s.get("/_matrix/federation/v1/openid/userinfo?access_token=nonsense", None).await;
    assert_eq!(
        (status, userinfo["errcode"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("M_UNKNOWN_TOKEN")),
        "{userinfo}"
    );

    // Nothing may have dialled the remote server, during the requests or from work they
    // queued (a short wait lets such work run before the count is read).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(remote.connections.load(Ordering::SeqCst), 0, "a connection was opened to {server}");
}
