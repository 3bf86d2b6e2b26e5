//! Federation between two conduit servers on loopback, each named by an IP literal with a
//! port and serving federation over TLS with a certificate from a CA the test makes: keys
//! published, fetched and notarised, key rotation, profile and alias queries both ways,
//! X-Matrix refusals (forged, unknown key, another destination, none), the outbound address
//! guard and the domain lists, joining a room through a remote alias, the clear refusal
//! of inviting a user of another server, and requests that arrive while a peer's keys are
//! being fetched waiting for that one fetch.

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
    let (status, room) = a
        .post(
            &format!("{V3}/createRoom"),
            Some(&alice.token),
            json!({"room_alias_name": "lobby", "preset": "public_chat"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{room}");
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
