//! Federation between two conduit servers on loopback, each named by an IP literal with a
//! port and serving federation over TLS with a certificate from a CA the test makes: keys
//! published, fetched and notarised, key rotation, profile and alias queries both ways,
//! X-Matrix refusals (forged, unknown key, another destination, none), the outbound address
//! guard and the domain lists, joining a room through a remote alias, the clear refusal
//! of inviting a user of another server, requests that arrive while a peer's keys are
//! being fetched waiting for that one fetch, and federation through a CONNECT proxy.

use axum::http;
use conduit::{control, matrix::server_keys::check_key_response, service::clock::Clock};
use reqwest::StatusCode;
use ruma::{
    OwnedServerName,
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
    signatures::Ed25519KeyPair,
};
use serde_json::{Value, json};

use crate::harness::{Pki, TestServer, expect_error};

const V3: &str = "/_matrix/client/v3";

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn get_json(client: &reqwest::Client, url: &str, authorization: Option<String>) -> (StatusCode, Value) {
    let mut request = client.get(url);
    if let Some(header) = authorization {
        request = request.header(http::header::AUTHORIZATION, header);
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{url}: {e:?}"));
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A public room on `s` made by `who`, with the alias `#lobby`.
async fn lobby_on(s: &TestServer, who: &crate::harness::Session) -> Value {
    let body = json!({"room_alias_name": "lobby", "preset": "public_chat"});
    let (status, room) = s.post(&format!("{V3}/createRoom"), Some(&who.token), body).await;
    assert_eq!(status, StatusCode::OK, "{room}");
    room
}

/// An X-Matrix header for GET `path` from `origin` to `destination`, signed with `key`.
fn x_matrix(origin: &str, destination: &str, key: &Ed25519KeyPair, path: &str) -> String {
    let request = http::Request::builder().method("GET").uri(path).body(Vec::<u8>::new()).unwrap();
    let origin: OwnedServerName = origin.try_into().unwrap();
    let destination: OwnedServerName = destination.try_into().unwrap();
    XMatrix::sign_http_request(&request, XMatrixSigningInput::new(origin, destination, key))
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn keys_are_published_fetched_notarised_and_rotated() {
    let pki = Pki::new();
    let a = TestServer::start_federating(&pki, |_| {}).await;
    let b = TestServer::start_federating(&pki, |_| {}).await;
    let https = pki.client();

    let (status, keys) =
        get_json(&https, &format!("{}/_matrix/key/v2/server", a.federation_base()), None).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    let set = check_key_response(&a.name(), &keys).expect("A's keys check");
    assert_eq!(set.verify_keys.len(), 1);
    assert!(set.valid_until_ms > a.clock.now_ms());
    let first_key = set.verify_keys.keys().next().unwrap().clone();

    // B as a notary: fetches A's keys from A and answers them signed by A and by B.
    let url = format!("{}/_matrix/key/v2/query/{}?minimum_valid_until_ts=0", b.federation_base(), a.name());
    let (status, answer) = get_json(&https, &url, None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let entry = &answer["server_keys"][0];
    check_key_response(&a.name(), entry).expect("A's keys through the notary");
    assert!(entry["signatures"][b.name()].is_object(), "not signed by the notary: {entry}");
    let (status, batch) = {
        let response = https
            .post(format!("{}/_matrix/key/v2/query", b.federation_base()))
            .json(&json!({"server_keys": {a.name(): {}}}))
            .send()
            .await
            .unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    };
    assert_eq!(status, StatusCode::OK, "{batch}");
    assert_eq!(batch["server_keys"][0]["server_name"], json!(a.name()), "{batch}");
    assert!(batch["server_keys"][0]["signatures"][b.name()].is_object(), "{batch}");

    // `conduit rotate-signing-key` (the control command): the new key signs, the old one
    // is published as expired.
    let message = control::execute(&a.services, control::Request::RotateSigningKey).await.unwrap();
    assert!(message.contains(&first_key), "{message}");
    let (_, keys) = get_json(&https, &format!("{}/_matrix/key/v2/server", a.federation_base()), None).await;
    let set = check_key_response(&a.name(), &keys).expect("rotated keys check");
    assert!(!set.verify_keys.contains_key(&first_key), "{keys}");
    assert_eq!(set.old_verify_keys[&first_key].1, a.clock.now_ms(), "{keys}");

    // The version endpoint.
    let (status, version) =
        get_json(&https, &format!("{}/_matrix/federation/v1/version", a.federation_base()), None).await;
    assert_eq!((status, &version["server"]["name"]), (StatusCode::OK, &json!("conduit")), "{version}");
}

#[tokio::test]
async fn profiles_and_aliases_are_queried_both_ways_and_a_remote_alias_joins() {
    let pki = Pki::new();
    let a = TestServer::start_federating(&pki, |_| {}).await;
    let b = TestServer::start_federating(&pki, |_| {}).await;
    let alice = a.register("alice", "pw-alice-123").await;
    let bob = b.register("bob", "pw-bob-12345").await;
    let (status, body) = a
        .put(
            &format!("{V3}/profile/{}/displayname", encode(&alice.user_id)),
            Some(&alice.token),
            json!({"displayname": "Alice A"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = b
        .put(
            &format!("{V3}/profile/{}/displayname", encode(&bob.user_id)),
            Some(&bob.token),
            json!({"displayname": "Bob B"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Each asks the other through its own client API.
    let (status, profile) =
        b.get(&format!("{V3}/profile/{}", encode(&alice.user_id)), Some(&bob.token)).await;
    assert_eq!((status, &profile["displayname"]), (StatusCode::OK, &json!("Alice A")), "{profile}");
    let (status, name) =
        a.get(&format!("{V3}/profile/{}/displayname", encode(&bob.user_id)), Some(&alice.token)).await;
    assert_eq!((status, &name["displayname"]), (StatusCode::OK, &json!("Bob B")), "{name}");
    let nobody = format!("@nobody:{}", b.name());
    expect_error(
        a.get(&format!("{V3}/profile/{}", encode(&nobody)), Some(&alice.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );

    // An alias on A, looked up from B; joining through it is refused with the reason.
    let room = lobby_on(&a, &alice).await;
    let alias = format!("#lobby:{}", a.name());
    let (status, found) = b.get(&format!("{V3}/directory/room/{}", encode(&alias)), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["room_id"], room["room_id"]);
    assert_eq!(found["servers"], json!([a.name()]));
    let missing = format!("#missing:{}", a.name());
    expect_error(
        b.get(&format!("{V3}/directory/room/{}", encode(&missing)), Some(&bob.token)).await,
        StatusCode::NOT_FOUND,
        "M_NOT_FOUND",
    );
    // Joining through the remote alias works: B asks A's directory, then joins through A.
    let (status, joined) =
        b.post(&format!("{V3}/join/{}", encode(&alias)), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(joined["room_id"], room["room_id"]);
    let room_id = room["room_id"].as_str().unwrap();
    let (status, members) =
        a.get(&format!("{V3}/rooms/{}/joined_members", encode(room_id)), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert!(members["joined"][&bob.user_id].is_object(), "{members}");
    // Inviting a user the other server does not have is refused with its words.
    let refused = expect_error(
        a.post(
            &format!("{V3}/rooms/{}/invite", encode(room_id)),
            Some(&alice.token),
            json!({"user_id": format!("@carol:{}", b.name())}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert!(refused["error"].as_str().unwrap().contains("is not a user of this server"), "{refused}");
}

#[tokio::test]
async fn forged_misdirected_and_unsigned_requests_are_refused() {
    let pki = Pki::new();
    let a = TestServer::start_federating(&pki, |_| {}).await;
    let b = TestServer::start_federating(&pki, |_| {}).await;
    a.register("alice", "pw-alice-123").await;
    let https = pki.client();
    let path =
        format!("/_matrix/federation/v1/query/profile?user_id={}", encode(&format!("@alice:{}", a.name())));
    let url = format!("{}{path}", a.federation_base());
    let b_key = b.services.server_keys.key_pair();

    // B's real key, for A: served.
    let (status, body) = get_json(&https, &url, Some(x_matrix(&b.name(), &a.name(), b_key, &path))).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Signed for another destination.
    let body = expect_error(
        get_json(&https, &url, Some(x_matrix(&b.name(), "other.example", b_key, &path))).await,
        StatusCode::UNAUTHORIZED,
        "M_UNAUTHORIZED",
    );
    assert!(body["error"].as_str().unwrap().contains("destination"), "{body}");

    // Claiming to be B under B's key ID, signed by another key.
    let forger = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), b_key.version().to_owned()).unwrap();
    let body = expect_error(
        get_json(&https, &url, Some(x_matrix(&b.name(), &a.name(), &forger, &path))).await,
        StatusCode::UNAUTHORIZED,
        "M_UNAUTHORIZED",
    );
    assert!(body["error"].as_str().unwrap().contains("does not verify"), "{body}");

    // A key B never published.
    let unknown = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "nope".to_owned()).unwrap();
    let body = expect_error(
        get_json(&https, &url, Some(x_matrix(&b.name(), &a.name(), &unknown, &path))).await,
        StatusCode::UNAUTHORIZED,
        "M_UNAUTHORIZED",
    );
    assert!(body["error"].as_str().unwrap().contains("ed25519:nope"), "{body}");

    // The signature covers the path: the same header on another query fails.
    let other = format!("{url}&field=displayname");
    expect_error(
        get_json(&https, &other, Some(x_matrix(&b.name(), &a.name(), b_key, &path))).await,
        StatusCode::UNAUTHORIZED,
        "M_UNAUTHORIZED",
    );

    // No signature at all.
    expect_error(get_json(&https, &url, None).await, StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED");
}

#[tokio::test]
async fn the_guard_refuses_loopback_unless_allowed_and_domain_lists_hold() {
    let pki = Pki::new();
    let a = TestServer::start_federating(&pki, |_| {}).await;
    let alice = a.register("alice", "pw-alice-123").await;
    let alice_url = format!("{V3}/profile/{}", encode(&alice.user_id));

    // The default denylist (loopback among the built-in ranges), no allowlist.
    let guarded = TestServer::start_federating(&pki, |config| config.ip_range_allowlist = Vec::new()).await;
    let carol = guarded.register("carol", "pw-carol-123").await;
    let (status, body) = guarded.get(&alice_url, Some(&carol.token)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not a public address"), "{body}");

    // Denied by domain.
    let denying = TestServer::start_federating(&pki, |config| {
        config.federation_domain_denylist = vec!["127.0.0.1".into()]
    })
    .await;
    let dave = denying.register("dave", "pw-dave-1234").await;
    let body =
        expect_error(denying.get(&alice_url, Some(&dave.token)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
    assert!(body["error"].as_str().unwrap().contains("does not federate with"), "{body}");
    // Inbound too: A's correctly signed request is refused by the server that denies A.
    let path = format!("/_matrix/federation/v1/query/profile?user_id={}", encode(&dave.user_id));
    let header = x_matrix(&a.name(), &denying.name(), a.services.server_keys.key_pair(), &path);
    let body = expect_error(
        get_json(&pki.client(), &format!("{}{path}", denying.federation_base()), Some(header)).await,
        StatusCode::FORBIDDEN,
        "M_FORBIDDEN",
    );
    assert!(body["error"].as_str().unwrap().contains("does not federate with"), "{body}");

    // An allowlist naming another domain refuses the rest too.
    let partial = TestServer::start_federating(&pki, |config| {
        config.federation_domain_allowlist = vec!["partner.example".into()]
    })
    .await;
    let erin = partial.register("erin", "pw-erin-1234").await;
    expect_error(partial.get(&alice_url, Some(&erin.token)).await, StatusCode::FORBIDDEN, "M_FORBIDDEN");
}

#[tokio::test]
async fn requests_that_arrive_while_a_peers_keys_are_fetched_wait_for_the_fetch() {
    let pki = Pki::new();
    let peer = crate::fake_peer::FakePeer::start(&pki, |_, _, _| async {
        crate::fake_peer::answer(StatusCode::NOT_FOUND, json!({"errcode": "M_UNRECOGNIZED", "error": "none"}))
    })
    .await;
    // The peer's keys take a while: the three transactions below all arrive meanwhile.
    peer.set_key_delay(std::time::Duration::from_millis(500));
    let a = TestServer::start_federating(&pki, |_| {}).await;
    let send = |txn: &'static str| {
        let (peer, pki, a) = (&peer, &pki, &a);
        async move {
            let body = json!({"origin": peer.name, "origin_server_ts": 1_700_000_000_000_u64, "pdus": [], "edus": []});
            peer.send_to(pki, a, "PUT", &format!("/_matrix/federation/v1/send/{txn}"), body).await
        }
    };
    let (first, second, third) = tokio::join!(send("t1"), send("t2"), send("t3"));
    for (status, body) in [first, second, third] {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // One fetch served them all.
    assert_eq!(peer.count("/_matrix/key/v2/server"), 1, "{:?}", peer.requests());
}

/// A forward proxy answering `CONNECT` (and nothing else) when the `Proxy-Authorization` is
/// Basic `conduit:proxy-secret`; it notes the target of each tunnel it opens.
struct ConnectProxy {
    url_host: String,
    targets: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ConnectProxy {
    async fn start() -> Self {
        use base64::Engine;
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url_host = listener.local_addr().unwrap().to_string();
        let targets = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let expected =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("conduit:proxy-secret"));
        let (noted, refusals) = (targets.clone(), refused.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                let (noted, refusals, expected) = (noted.clone(), refusals.clone(), expected.clone());
                tokio::spawn(async move {
                    let mut client = tokio::io::BufReader::new(client);
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        if client.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push(line.trim_end().to_owned());
                    }
                    let target = match head[0].split(' ').collect::<Vec<_>>()[..] {
                        ["CONNECT", target, _] => target.to_owned(),
                        _ => {
                            let _ =
                                client.get_mut().write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n").await;
                            return;
                        }
                    };
                    let authorized = head
                        .iter()
                        .any(|h| h.eq_ignore_ascii_case(&format!("proxy-authorization: {expected}")));
                    if !authorized {
                        refusals.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let answer =
                            "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n";
                        let _ = client.get_mut().write_all(answer.as_bytes()).await;
                        return;
                    }
                    noted.lock().unwrap().push(target.clone());
                    let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                        let _ = client.get_mut().write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    let _ = client.get_mut().write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
                    let mut client = client.into_inner();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        Self { url_host, targets, refused }
    }

    fn url(&self, login: &str) -> String {
        format!("http://{login}@{}", self.url_host)
    }

    fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_server_behind_a_connect_proxy_federates_through_it_with_the_guard_and_tls_kept() {
    let pki = Pki::new();
    let proxy = ConnectProxy::start().await;
    let a = TestServer::start_federating(&pki, |_| {}).await;
    let b = TestServer::start_federating(&pki, |config| {
        config.federation_proxy = Some(proxy.url("conduit:proxy-secret"));
    })
    .await;
    let alice = a.register("alice", "pw-alice-123").await;
    let bob = b.register("bob", "pw-bob-12345").await;
    let room = lobby_on(&a, &alice).await;
    let room_id = room["room_id"].as_str().unwrap();

    // B reaches A only through the proxy: a profile, A's keys, the alias, the join.
    let (status, profile) =
        b.get(&format!("{V3}/profile/{}", encode(&alice.user_id)), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    let alias = format!("#lobby:{}", a.name());
    let (status, joined) =
        b.post(&format!("{V3}/join/{}", encode(&alias)), Some(&bob.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    let (status, members) =
        a.get(&format!("{V3}/rooms/{}/joined_members", encode(room_id)), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{members}");
    assert!(members["joined"][&bob.user_id].is_object(), "{members}");
    // Bob's message leaves B through the proxy too, and reaches Alice.
    let (status, sent) = b
        .put(
            &format!("{V3}/rooms/{}/send/m.room.message/t1", encode(room_id)),
            Some(&bob.token),
            json!({"msgtype": "m.text", "body": "through the proxy"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{sent}");
    let event_path =
        format!("{V3}/rooms/{}/event/{}", encode(room_id), encode(sent["event_id"].as_str().unwrap()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, event) = a.get(&event_path, Some(&alice.token)).await;
        if status == StatusCode::OK {
            assert_eq!(event["content"]["body"], json!("through the proxy"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the message never reached A: {event}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Every tunnel was asked for by address: the one B resolved and vetted, A's.
    let port = a.name().rsplit(':').next().unwrap().to_owned();
    let tunnels = proxy.targets();
    assert!(!tunnels.is_empty());
    assert!(tunnels.iter().all(|t| *t == format!("127.0.0.1:{port}")), "{tunnels:?}");

    // The guard still holds behind the proxy: loopback refused before any tunnel is asked.
    let guarded_proxy = ConnectProxy::start().await;
    let guarded = TestServer::start_federating(&pki, |config| {
        config.federation_proxy = Some(guarded_proxy.url("conduit:proxy-secret"));
        config.ip_range_allowlist = Vec::new();
    })
    .await;
    let carol = guarded.register("carol", "pw-carol-123").await;
    let (status, body) =
        guarded.get(&format!("{V3}/profile/{}", encode(&alice.user_id)), Some(&carol.token)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("not a public address"), "{body}");
    assert!(guarded_proxy.targets().is_empty(), "{:?}", guarded_proxy.targets());

    // A proxy that refuses the login: the request fails with the proxy's answer.
    let refusing = TestServer::start_federating(&pki, |config| {
        config.federation_proxy = Some(proxy.url("conduit:wrong"));
    })
    .await;
    let dave = refusing.register("dave", "pw-dave-1234").await;
    let (status, body) =
        refusing.get(&format!("{V3}/profile/{}", encode(&alice.user_id)), Some(&dave.token)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("407"), "{body}");
    assert!(proxy.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[tokio::test]
async fn a_well_known_delegation_behind_a_redirect_is_followed() {
    use axum::{Router, http::header, response::IntoResponse, routing::get};
    use conduit::{
        config::{ListenerConfig, ListenerResource},
        net::{Listeners, NetStats, Settings},
    };

    let pki = Pki::new();
    // The server named `localhost`, its federation on another port of 127.0.0.1.
    let home =
        TestServer::start_federating(&pki, |config| config.server_name = "localhost".try_into().unwrap())
            .await;
    let delegated = home.federation_base().trim_start_matches("https://").to_owned();
    let alice = home.register("alice", "pw-alice-123").await;
    let (status, body) = home
        .put(
            &format!("{V3}/profile/{}/displayname", encode(&alice.user_id)),
            Some(&alice.token),
            json!({"displayname": "Alice at home"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // `https://localhost/.well-known/matrix/server` (port 443) redirects once, then delegates.
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (first, second) = (asked.clone(), asked.clone());
    let router = Router::new()
        .route(
            "/.well-known/matrix/server",
            get(move || async move {
                first.lock().unwrap().push("server".into());
                (StatusCode::FOUND, [(header::LOCATION, "/.well-known/matrix/moved")]).into_response()
            }),
        )
        .route(
            "/.well-known/matrix/moved",
            get(move || {
                let delegated = delegated.clone();
                async move {
                    second.lock().unwrap().push("moved".into());
                    axum::Json(json!({"m.server": delegated})).into_response()
                }
            }),
        );
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::harness::test_config(dir.path());
    let (cert, key) = pki.server_cert("localhost");
    let loopback = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let mut listener = ListenerConfig::plain(loopback, 443, &[ListenerResource::Client]);
    listener.tls_certificate_path = Some(cert);
    listener.tls_private_key_path = Some(key);
    config.listeners = vec![listener];
    let listeners = Listeners::bind(&config, &[])
        .await
        .expect("this test serves https://localhost/.well-known on 127.0.0.1:443 (it needs that port)");
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(conduit::net::serve(
        listeners,
        Settings::from_config(&config),
        std::sync::Arc::new(NetStats::default()),
        move |_, _| router.clone(),
        stopped,
    ));

    // Another server asks for Alice's profile: discovery follows the redirect.
    let a = TestServer::start_federating(&pki, |config| {
        // `localhost` also resolves to ::1, which the guard would refuse otherwise.
        config.ip_range_allowlist.push("::1/128".parse().unwrap());
    })
    .await;
    let bob = a.register("bob", "pw-bob-12345").await;
    let (status, profile) =
        a.get(&format!("{V3}/profile/{}", encode(&alice.user_id)), Some(&bob.token)).await;
    assert_eq!(status, StatusCode::OK, "{profile}");
    assert_eq!(profile["displayname"], json!("Alice at home"));
    assert_eq!(*asked.lock().unwrap(), vec!["server".to_owned(), "moved".to_owned()]);
}
