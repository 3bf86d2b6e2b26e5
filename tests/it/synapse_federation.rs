//! conduit ↔ Synapse (from PyPI, installed by `scripts/test`): both on loopback, each named by
//! an IP literal with a port, federating over TLS with certificates from a CA the test makes
//! (Synapse trusts it through `federation_custom_ca_list`, conduit through
//! `federation_ca_file`; both allow loopback as an outbound address). Synapse fetches
//! conduit's keys and queries a conduit profile and alias; conduit fetches Synapse's keys
//! (to check its signed requests, and as a notary) and queries a Synapse profile and alias,
//! each through the client API a user has. Rooms: a Synapse user joins a conduit room and a
//! conduit user a Synapse room, messages go both ways, and a conduit user's typing shows
//! on Synapse.

use std::{process::Stdio, time::Duration};

use conduit::matrix::server_keys::check_key_response;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    harness::{Pki, Session, TestServer, free_port},
    sdk::provided_by_scripts_test,
};

const V3: &str = "/_matrix/client/v3";

impl Drop for Synapse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A Synapse running in a temp dir, stopped (killed) when dropped.
pub(crate) struct Synapse {
    child: std::process::Child,
    pub(crate) name: String,
    client_base: String,
    federation_base: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Synapse {
    pub(crate) async fn start(pki: &Pki) -> Self {
        let python = provided_by_scripts_test("CONDUIT_TEST_SYNAPSE_PYTHON", "a Python with matrix-synapse");
        let dir = tempfile::tempdir().unwrap();
        let (fed_port, client_port) = (free_port(), free_port());
        let name = format!("127.0.0.1:{fed_port}");
        let (cert, key) = pki.server_cert("127.0.0.1");
        let d = dir.path();
        std::fs::write(
            d.join("log.yaml"),
            format!(
                "version: 1\nformatters:\n  f:\n    format: '%(asctime)s %(name)s %(levelname)s %(message)s'\n\
                 handlers:\n  file:\n    class: logging.FileHandler\n    filename: {}\n    formatter: f\n\
                 root:\n  level: INFO\n  handlers: [file]\ndisable_existing_loggers: false\n",
                d.join("synapse.log").display()
            ),
        )
        .unwrap();
        let config = json!({
            "server_name": name,
            "pid_file": d.join("homeserver.pid"),
            "listeners": [
                {"port": fed_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": true,
                 "resources": [{"names": ["federation"], "compress": false}]},
                {"port": client_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": false,
                 "resources": [{"names": ["client"], "compress": false}]},
            ],
            "tls_certificate_path": cert,
            "tls_private_key_path": key,
            "federation_custom_ca_list": [pki.ca_path],
            "federation_verify_certificates": true,
            "ip_range_whitelist": ["127.0.0.0/8"],
            "federation_ip_range_blacklist": [],
            "trusted_key_servers": [],
            "allow_public_rooms_over_federation": true,
            "room_list_publication_rules": [{"action": "allow"}],
            "suppress_key_server_warning": true,
            "database": {"name": "sqlite3", "args": {"database": d.join("homeserver.db")}},
            "log_config": d.join("log.yaml"),
            "media_store_path": d.join("media"),
            "signing_key_path": d.join("signing.key"),
            "report_stats": false,
            "enable_registration": true,
            "enable_registration_without_verification": true,
            "macaroon_secret_key": "conduit-test-macaroon",
            "form_secret": "conduit-test-form",
            "rc_registration": {"per_second": 1000, "burst_count": 1000},
            "rc_login": {"address": {"per_second": 1000, "burst_count": 1000}},
            "rc_message": {"per_second": 1000, "burst_count": 1000},
        });
        // JSON is YAML.
        let config_path = d.join("homeserver.yaml");
        std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        let generated = std::process::Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--generate-keys", "-c"])
            .arg(&config_path)
            .output()
            .expect("running Synapse to generate its signing key");
        assert!(
            generated.status.success(),
            "Synapse could not generate its keys: {}{}",
            String::from_utf8_lossy(&generated.stdout),
            String::from_utf8_lossy(&generated.stderr)
        );
        let child = std::process::Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(&config_path)
            .stdout(Stdio::from(std::fs::File::create(d.join("stdout")).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(d.join("stderr")).unwrap()))
            .spawn()
            .expect("Synapse starts");
        let mut synapse = Self {
            child,
            name,
            client_base: format!("http://127.0.0.1:{client_port}"),
            federation_base: format!("https://127.0.0.1:{fed_port}"),
            dir,
            http: reqwest::Client::new(),
        };
        synapse.wait_until_up().await;
        synapse
    }

    /// Whether Synapse's whole log holds `needle` (its access log lines name each request).
    pub(crate) fn log_contains(&self, needle: &str) -> bool {
        std::fs::read_to_string(self.dir.path().join("synapse.log")).unwrap_or_default().contains(needle)
    }

    pub(crate) fn logs(&self) -> String {
        // (Synapse's own log, its stderr: what a failure needs.)
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        let log = read("synapse.log");
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        format!(
            "stderr:\n{}\nlog (last lines):\n{}",
            read("stderr"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    async fn wait_until_up(&mut self) {
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Synapse exited ({status}) before answering:\n{}", self.logs());
            }
            let url = format!("{}/_matrix/client/versions", self.client_base);
            if self.http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("Synapse did not answer within 60 s:\n{}", self.logs());
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.client_base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Register `name` (the dummy stage); answers (user ID, access token).
    pub(crate) async fn register(&self, name: &str) -> (String, String) {
        let body =
            json!({"username": name, "password": "pw-synapse-1234", "auth": {"type": "m.login.dummy"}});
        let (status, answer) =
            self.call(reqwest::Method::POST, &format!("{V3}/register"), None, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "registering on Synapse: {answer}\n{}", self.logs());
        (answer["user_id"].as_str().unwrap().to_owned(), answer["access_token"].as_str().unwrap().to_owned())
    }
}

#[tokio::test]
async fn conduit_and_synapse_fetch_each_others_keys_and_query_profiles_and_aliases() {
    let pki = Pki::new();
    let synapse = Synapse::start(&pki).await;
    let conduit = TestServer::start_federating(&pki, |_| {}).await;

    let alice = conduit.register("alice", "pw-alice-123").await;
    let (status, body) = conduit
        .put(
            &format!("{V3}/profile/{}/displayname", encode(&alice.user_id)),
            Some(&alice.token),
            json!({"displayname": "Alice on conduit"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, room) = conduit
        .post(&format!("{V3}/createRoom"), Some(&alice.token), json!({"room_alias_name": "conduit-lobby"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{room}");

    let (bob, bob_token) = synapse.register("bob").await;
    let (status, body) = synapse
        .call(
            reqwest::Method::PUT,
            &format!("{V3}/profile/{}/displayname", encode(&bob)),
            Some(&bob_token),
            Some(json!({"displayname": "Bob on Synapse"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, synapse_room) = synapse
        .call(
            reqwest::Method::POST,
            &format!("{V3}/createRoom"),
            Some(&bob_token),
            Some(json!({"room_alias_name": "synapse-lobby"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{synapse_room}");

    // Synapse's user asks for conduit's user: Synapse queries conduit (signed), conduit
    // fetches Synapse's keys to check the signature.
    let (status, profile) = synapse
        .call(
            reqwest::Method::GET,
            &format!("{V3}/profile/{}", encode(&alice.user_id)),
            Some(&bob_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{profile}\n{}", synapse.logs());
    assert_eq!(profile["displayname"], json!("Alice on conduit"), "{profile}");
    let alias = format!("#conduit-lobby:{}", conduit.name());
    let (status, found) = synapse
        .call(
            reqwest::Method::GET,
            &format!("{V3}/directory/room/{}", encode(&alias)),
            Some(&bob_token),
            None,
        )
        .await;
    assert_eq!(
        (status, &found["room_id"]),
        (StatusCode::OK, &room["room_id"]),
        "{found}\n{}",
        synapse.logs()
    );

    // Conduit's user asks for Synapse's user and alias: Synapse fetches conduit's keys to
    // check conduit's signature.
    let (status, profile) = conduit.get(&format!("{V3}/profile/{}", encode(&bob)), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{profile}\n{}", synapse.logs());
    assert_eq!(profile["displayname"], json!("Bob on Synapse"), "{profile}");
    let synapse_alias = format!("#synapse-lobby:{}", synapse.name);
    let (status, found) =
        conduit.get(&format!("{V3}/directory/room/{}", encode(&synapse_alias)), Some(&alice.token)).await;
    assert_eq!((status, &found["room_id"]), (StatusCode::OK, &synapse_room["room_id"]), "{found}");

    // Each holds the other's keys: Synapse as a notary answers conduit's keys (from its
    // cache, or fetched now), conduit as a notary answers Synapse's, each signed by both.
    let https = pki.client();
    let url = format!(
        "{}/_matrix/key/v2/query/{}?minimum_valid_until_ts=0",
        synapse.federation_base,
        conduit.name()
    );
    let answer: Value = https.get(&url).send().await.unwrap().json().await.unwrap();
    let entry = &answer["server_keys"][0];
    check_key_response(&conduit.name(), entry).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert!(entry["signatures"][&synapse.name].is_object(), "{answer}");
    let url = format!(
        "{}/_matrix/key/v2/query/{}?minimum_valid_until_ts=0",
        conduit.federation_base(),
        synapse.name
    );
    let answer: Value = https.get(&url).send().await.unwrap().json().await.unwrap();
    let entry = &answer["server_keys"][0];
    check_key_response(&synapse.name, entry).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert!(entry["signatures"][conduit.name()].is_object(), "{answer}");
}

impl Synapse {
    /// The bodies of the text messages of a room as a Synapse user reads them, oldest first.
    pub(crate) async fn message_bodies(&self, token: &str, room: &str) -> Vec<String> {
        let (status, page) = self
            .call(
                reqwest::Method::GET,
                &format!("{V3}/rooms/{}/messages?dir=b&limit=100", encode(room)),
                Some(token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        bodies_of(&page)
    }

    /// A room `token`'s user creates on Synapse with `body` (`createRoom`'s): its ID.
    pub(crate) async fn create_room(&self, token: &str, body: Value) -> String {
        let (status, created) =
            self.call(reqwest::Method::POST, &format!("{V3}/createRoom"), Some(token), Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{created}\n{}", self.logs());
        created["room_id"].as_str().unwrap().to_owned()
    }

    /// `who` of `conduit` joins `room`, a room of this Synapse, through it.
    pub(crate) async fn join_from(&self, conduit: &TestServer, who: &Session, room: &str) {
        let (status, joined) = conduit
            .post(
                &format!("{V3}/join/{}?via={}", encode(room), encode(&self.name)),
                Some(&who.token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{joined}\n{}", self.logs());
    }

    pub(crate) async fn send_text(&self, token: &str, room: &str, txn: &str, text: &str) {
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("{V3}/rooms/{}/send/m.room.message/{txn}", encode(room)),
                Some(token),
                Some(json!({"msgtype": "m.text", "body": text})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}\n{}", self.logs());
    }
}

fn bodies_of(page: &Value) -> Vec<String> {
    let mut bodies: Vec<String> = page["chunk"]
        .as_array()
        .map(|chunk| {
            chunk
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    bodies.reverse();
    bodies
}

async fn conduit_bodies(conduit: &TestServer, token: &str, room: &str) -> Vec<String> {
    let (status, page) =
        conduit.get(&format!("{V3}/rooms/{}/messages?dir=b&limit=100", encode(room)), Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    bodies_of(&page)
}

/// Sam (`sam_token`) sends `from_sam` on Synapse and it reaches Alice on conduit; then Alice
/// sends `from_alice` and it reaches Sam.
async fn messages_cross_both_ways(
    synapse: &Synapse,
    sam_token: &str,
    conduit: &TestServer,
    alice: &Session,
    room: &str,
    from_sam: &str,
    from_alice: &str,
) {
    let txn = |prefix: &str, text: &str| -> String {
        prefix.chars().chain(text.chars().filter(char::is_ascii_alphanumeric)).collect()
    };
    synapse.send_text(sam_token, room, &txn("s-", from_sam), from_sam).await;
    eventually(&format!("Sam's {from_sam:?} on conduit"), synapse, || async {
        conduit_bodies(conduit, &alice.token, room).await.iter().any(|b| b == from_sam)
    })
    .await;
    crate::rooms::send_text(conduit, alice, room, &txn("a-", from_alice), from_alice).await;
    eventually(&format!("Alice's {from_alice:?} on Synapse"), synapse, || async {
        synapse.message_bodies(sam_token, room).await.iter().any(|b| b == from_alice)
    })
    .await;
}

/// Wait (wall-clock: delivery runs in the background on both sides) until `check` holds,
/// for about 20 s.
pub(crate) async fn eventually<F, Fut>(what: &str, synapse: &Synapse, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, synapse, Duration::from_secs(20), check).await;
}

/// As [`eventually`], for work whose time grows with what the test made (hundreds of events
/// fetched and checked), which a full test run on two cores slows several times over.
pub(crate) async fn eventually_within<F, Fut>(what: &str, synapse: &Synapse, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..limit.as_millis() / 50 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never saw {what}\n{}", synapse.logs());
}

#[tokio::test]
async fn a_synapse_user_joins_a_conduit_room_and_a_conduit_user_a_synapse_room() {
    let pki = Pki::new();
    let synapse = Synapse::start(&pki).await;
    let conduit = TestServer::start_federating(&pki, |_| {}).await;
    let alice = conduit.register("alice", "pw-alice-123").await;
    let (sam, sam_token) = synapse.register("sam").await;

    // Sam (Synapse) joins Alice's conduit room through conduit.
    let (status, room) =
        conduit.post(&format!("{V3}/createRoom"), Some(&alice.token), json!({"preset": "public_chat"})).await;
    assert_eq!(status, StatusCode::OK, "{room}");
    let room = room["room_id"].as_str().unwrap().to_owned();
    let (status, joined) = synapse
        .call(
            reqwest::Method::POST,
            &format!(
                "{V3}/join/{}?server_name={}&via={}",
                encode(&room),
                encode(&conduit.name()),
                encode(&conduit.name())
            ),
            Some(&sam_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}\n{}", synapse.logs());
    let (_, members) =
        conduit.get(&format!("{V3}/rooms/{}/joined_members", encode(&room)), Some(&alice.token)).await;
    assert!(members["joined"][&sam].is_object(), "{members}");

    messages_cross_both_ways(
        &synapse,
        &sam_token,
        &conduit,
        &alice,
        &room,
        "hello from Synapse",
        "hello from conduit",
    )
    .await;
    // Alice types on conduit: Sam's sync on Synapse shows it. Synapse answers a repeated
    // initial sync from its response cache for minutes, so Sam follows incremental syncs.
    let mut since = synapse.since(&sam_token).await;
    let (status, body) = conduit
        .put(
            &format!("{V3}/rooms/{}/typing/{}", encode(&room), encode(&alice.user_id)),
            Some(&alice.token),
            json!({"typing": true, "timeout": 30000}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    synapse
        .sync_until("Alice typing", &sam_token, &mut since, |synced| {
            synced["rooms"]["join"][&room]["ephemeral"]["events"].as_array().is_some_and(|events| {
                events
                    .iter()
                    .any(|e| e["type"] == "m.typing" && e["content"]["user_ids"] == json!([alice.user_id]))
            })
        })
        .await;

    // Alice (conduit) joins Sam's Synapse room through Synapse.
    let synapse_room = synapse.create_room(&sam_token, json!({"preset": "public_chat"})).await;
    synapse.join_from(&conduit, &alice, &synapse_room).await;
    eventually("Alice joined on Synapse", &synapse, || async {
        let (_, members) = synapse
            .call(
                reqwest::Method::GET,
                &format!("{V3}/rooms/{}/joined_members", encode(&synapse_room)),
                Some(&sam_token),
                None,
            )
            .await;
        members["joined"][&alice.user_id].is_object()
    })
    .await;
    crate::rooms::send_text(&conduit, &alice, &synapse_room, "a2", "conduit in Synapse's room").await;
    eventually("Alice's message in Synapse's room", &synapse, || async {
        synapse
            .message_bodies(&sam_token, &synapse_room)
            .await
            .contains(&"conduit in Synapse's room".to_owned())
    })
    .await;
    synapse.send_text(&sam_token, &synapse_room, "s2", "Synapse answers").await;
    eventually("Sam's answer on conduit", &synapse, || async {
        conduit_bodies(&conduit, &alice.token, &synapse_room).await.contains(&"Synapse answers".to_owned())
    })
    .await;
}

#[tokio::test]
async fn invites_cross_between_conduit_and_synapse_both_ways() {
    let pki = Pki::new();
    let synapse = Synapse::start(&pki).await;
    let conduit = TestServer::start_federating(&pki, |_| {}).await;
    let alice = conduit.register("alice", "pw-alice-123").await;
    let (sam, sam_token) = synapse.register("sam").await;

    // Alice invites Sam into a private conduit room: Sam's sync on Synapse shows the invite
    // (Synapse answers a repeated initial sync from a cache, so Sam follows incremental
    // syncs), and his join goes through conduit.
    let mut since = synapse.since(&sam_token).await;
    let room = crate::rooms::create_room(
        &conduit,
        &alice,
        json!({"preset": "private_chat", "name": "From conduit"}),
    )
    .await;
    let (status, body) = conduit
        .post(&format!("{V3}/rooms/{}/invite", encode(&room)), Some(&alice.token), json!({"user_id": sam}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.logs());
    synapse
        .sync_until("Alice's invite", &sam_token, &mut since, |synced| {
            synced["rooms"]["invite"][&room].is_object()
        })
        .await;
    let (status, joined) = synapse
        .call(
            reqwest::Method::POST,
            &format!("{V3}/join/{}", encode(&room)),
            Some(&sam_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}\n{}", synapse.logs());
    let (_, members) =
        conduit.get(&format!("{V3}/rooms/{}/joined_members", encode(&room)), Some(&alice.token)).await;
    assert!(members["joined"][&sam].is_object(), "{members}");

    // Sam invites Alice into a private Synapse room: her sync on conduit shows it, and she
    // joins through Synapse.
    let synapse_room = synapse
        .create_room(
            &sam_token,
            json!({"preset": "private_chat", "name": "From Synapse", "invite": [alice.user_id]}),
        )
        .await;
    eventually("Sam's invite in Alice's sync", &synapse, || async {
        crate::sync::sync(&conduit, &alice, "").await["rooms"]["invite"][&synapse_room].is_object()
    })
    .await;
    let (status, joined) =
        conduit.post(&format!("{V3}/join/{}", encode(&synapse_room)), Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{joined}\n{}", synapse.logs());
    eventually("Alice joined on Synapse", &synapse, || async {
        let (_, members) = synapse
            .call(
                reqwest::Method::GET,
                &format!("{V3}/rooms/{}/joined_members", encode(&synapse_room)),
                Some(&sam_token),
                None,
            )
            .await;
        members["joined"][&alice.user_id].is_object()
    })
    .await;
}

/// A device's keys and one one-time key, in the shapes both servers store (neither checks
/// the signatures: clients do).
fn key_upload(user: &str, device: &str, tag: &str) -> Value {
    let signatures = json!({user: {format!("ed25519:{device}"): format!("sig-{tag}")}});
    json!({
        "device_keys": {
            "user_id": user, "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {format!("curve25519:{device}"): format!("curve-{tag}"), format!("ed25519:{device}"): format!("ed-{tag}")},
            "signatures": signatures,
        },
        "one_time_keys": {format!("signed_curve25519:{tag}"): {"key": format!("otk-{tag}"), "signatures": signatures}},
    })
}

impl Synapse {
    /// Register `name`; answers (user ID, access token, device ID).
    async fn register_device(&self, name: &str) -> (String, String, String) {
        let body =
            json!({"username": name, "password": "pw-synapse-1234", "auth": {"type": "m.login.dummy"}});
        let (status, answer) =
            self.call(reqwest::Method::POST, &format!("{V3}/register"), None, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "registering on Synapse: {answer}\n{}", self.logs());
        let field = |f: &str| answer[f].as_str().unwrap().to_owned();
        (field("user_id"), field("access_token"), field("device_id"))
    }

    /// Log `name` in on a new device; answers (access token, device ID).
    async fn login(&self, name: &str, device: &str) -> (String, String) {
        let body = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": "pw-synapse-1234", "device_id": device});
        let (status, answer) =
            self.call(reqwest::Method::POST, &format!("{V3}/login"), None, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "logging in on Synapse: {answer}\n{}", self.logs());
        (
            answer["access_token"].as_str().unwrap().to_owned(),
            answer["device_id"].as_str().unwrap().to_owned(),
        )
    }

    /// Follow `token`'s incremental syncs from `since` until one satisfies `check` (Synapse
    /// answers a repeated initial sync from a cache).
    pub(crate) async fn sync_until(
        &self,
        what: &str,
        token: &str,
        since: &mut String,
        check: impl Fn(&Value) -> bool,
    ) {
        for _ in 0..20 {
            let path = format!("{V3}/sync?timeout=1000&since={}", encode(since));
            let (_, synced) = self.call(reqwest::Method::GET, &path, Some(token), None).await;
            if check(&synced) {
                return;
            }
            if let Some(next) = synced["next_batch"].as_str() {
                *since = next.to_owned();
            }
        }
        panic!("never saw {what} on Synapse\n{}", self.logs());
    }

    pub(crate) async fn since(&self, token: &str) -> String {
        let (_, first) = self.call(reqwest::Method::GET, &format!("{V3}/sync"), Some(token), None).await;
        first["next_batch"].as_str().expect("a next_batch from Synapse").to_owned()
    }
}

#[tokio::test]
async fn keys_to_device_messages_and_device_lists_cross_between_conduit_and_synapse() {
    let pki = Pki::new();
    let synapse = Synapse::start(&pki).await;
    let conduit = TestServer::start_federating(&pki, |_| {}).await;
    let alice = conduit.register("alice", "pw-alice-123").await;
    let (sam, sam_token, sam_device) = synapse.register_device("sam").await;
    let post = reqwest::Method::POST;

    // Alice and Sam share a conduit room; each uploads keys.
    let room = crate::rooms::create_room(&conduit, &alice, json!({"preset": "public_chat"})).await;
    let (status, joined) = synapse
        .call(
            post.clone(),
            &format!("{V3}/join/{}?server_name={}", encode(&room), encode(&conduit.name())),
            Some(&sam_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}\n{}", synapse.logs());
    let (status, body) = conduit
        .post(
            &format!("{V3}/keys/upload"),
            Some(&alice.token),
            key_upload(&alice.user_id, &alice.device_id, "a1"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = synapse
        .call(
            post.clone(),
            &format!("{V3}/keys/upload"),
            Some(&sam_token),
            Some(key_upload(&sam, &sam_device, "s1")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.logs());

    // Each queries the other's keys through their server.
    let query = json!({"device_keys": {sam.clone(): []}});
    let (status, keys) = conduit.post(&format!("{V3}/keys/query"), Some(&alice.token), query).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(
        keys["device_keys"][&sam][&sam_device]["keys"][format!("curve25519:{sam_device}")],
        "curve-s1",
        "{keys}\n{}",
        synapse.logs()
    );
    let query = json!({"device_keys": {alice.user_id.clone(): []}});
    let (status, keys) =
        synapse.call(post.clone(), &format!("{V3}/keys/query"), Some(&sam_token), Some(query)).await;
    assert_eq!(status, StatusCode::OK, "{keys}");
    assert_eq!(
        keys["device_keys"][&alice.user_id][&alice.device_id]["keys"]
            [format!("curve25519:{}", alice.device_id)],
        "curve-a1",
        "{keys}\n{}",
        synapse.logs()
    );

    // And claims one of the other's one-time keys.
    let claim = json!({"one_time_keys": {sam.clone(): {sam_device.clone(): "signed_curve25519"}}});
    let (status, claimed) = conduit.post(&format!("{V3}/keys/claim"), Some(&alice.token), claim).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!(
        claimed["one_time_keys"][&sam][&sam_device]["signed_curve25519:s1"]["key"],
        "otk-s1",
        "{claimed}\n{}",
        synapse.logs()
    );
    let claim =
        json!({"one_time_keys": {alice.user_id.clone(): {alice.device_id.clone(): "signed_curve25519"}}});
    let (status, claimed) =
        synapse.call(post.clone(), &format!("{V3}/keys/claim"), Some(&sam_token), Some(claim)).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!(
        claimed["one_time_keys"][&alice.user_id][&alice.device_id]["signed_curve25519:a1"]["key"],
        "otk-a1",
        "{claimed}\n{}",
        synapse.logs()
    );

    // To-device messages both ways.
    let mut since = synapse.since(&sam_token).await;
    let (status, body) = conduit
        .put(
            &format!("{V3}/sendToDevice/m.test.ping/t1"),
            Some(&alice.token),
            json!({"messages": {sam.clone(): {sam_device.clone(): {"hello": "from conduit"}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    synapse
        .sync_until("Alice's to-device message", &sam_token, &mut since, |synced| {
            synced["to_device"]["events"].as_array().is_some_and(|events| {
                events.iter().any(|e| {
                    e["type"] == "m.test.ping"
                        && e["sender"] == json!(alice.user_id)
                        && e["content"]["hello"] == "from conduit"
                })
            })
        })
        .await;
    let (status, body) = synapse
        .call(
            reqwest::Method::PUT,
            &format!("{V3}/sendToDevice/m.test.pong/s1"),
            Some(&sam_token),
            Some(json!({"messages": {alice.user_id.clone(): {alice.device_id.clone(): {"hello": "from Synapse"}}}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Sam's to-device message on conduit", &synapse, || async {
        let synced = crate::sync::sync(&conduit, &alice, "").await;
        synced["to_device"]["events"].as_array().is_some_and(|events| {
            events.iter().any(|e| {
                e["type"] == "m.test.pong"
                    && e["sender"] == json!(sam)
                    && e["content"]["hello"] == "from Synapse"
            })
        })
    })
    .await;

    // Alice's new device: Sam's sync lists her changed, and his query finds the device.
    let alice2 = conduit.login("alice", "pw-alice-123", Some("ALICETWO")).await;
    let (status, body) = conduit
        .post(&format!("{V3}/keys/upload"), Some(&alice2.token), key_upload(&alice.user_id, "ALICETWO", "a2"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    synapse
        .sync_until("Alice's device-list change", &sam_token, &mut since, |synced| {
            synced["device_lists"]["changed"].as_array().is_some_and(|c| c.contains(&json!(alice.user_id)))
        })
        .await;
    let query = json!({"device_keys": {alice.user_id.clone(): []}});
    let (_, keys) =
        synapse.call(post.clone(), &format!("{V3}/keys/query"), Some(&sam_token), Some(query)).await;
    assert!(keys["device_keys"][&alice.user_id]["ALICETWO"].is_object(), "{keys}\n{}", synapse.logs());

    // Sam's new device: Alice's sync lists him changed, and her query finds the device.
    let conduit_since =
        crate::sync::sync(&conduit, &alice, "").await["next_batch"].as_str().unwrap().to_owned();
    let (sam2_token, sam2_device) = synapse.login("sam", "SAMTWO").await;
    let (status, body) = synapse
        .call(
            post.clone(),
            &format!("{V3}/keys/upload"),
            Some(&sam2_token),
            Some(key_upload(&sam, &sam2_device, "s2")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}\n{}", synapse.logs());
    eventually("Sam's device-list change in Alice's sync", &synapse, || async {
        let synced = crate::sync::sync(&conduit, &alice, &format!("since={conduit_since}")).await;
        synced["device_lists"]["changed"].as_array().is_some_and(|c| c.contains(&json!(sam)))
    })
    .await;
    eventually("Sam's second device in Alice's query", &synapse, || async {
        let query = json!({"device_keys": {sam.clone(): []}});
        let (_, keys) = conduit.post(&format!("{V3}/keys/query"), Some(&alice.token), query).await;
        keys["device_keys"][&sam]["SAMTWO"].is_object()
    })
    .await;
}

#[tokio::test]
async fn matrix_nio_users_on_conduit_and_synapse_decrypt_each_other_in_an_encrypted_room() {
    let python = provided_by_scripts_test("CONDUIT_TEST_PYTHON", "a Python with matrix-nio");
    let pki = Pki::new();
    let synapse = Synapse::start(&pki).await;
    let conduit = TestServer::start_federating(&pki, |_| {}).await;
    let args = vec![
        crate::sdk::script("sdk/nio_e2ee_federated.py"),
        conduit.base.clone().into(),
        conduit.name().into(),
        synapse.client_base.clone().into(),
        synapse.name.clone().into(),
    ];
    if let Err(failure) =
        crate::sdk::client_check("matrix-nio across conduit and Synapse", python, args).await
    {
        panic!("{failure}\nSynapse:\n{}", synapse.logs());
    }
}

#[tokio::test]
async fn media_crosses_between_conduit_and_synapse_both_ways() {
    use image::ImageFormat;
    let pki = Pki::new();
    let synapse = Synapse::start(&pki).await;
    let conduit = TestServer::start_federating(&pki, |_| {}).await;
    let alice = conduit.register("alice", "pw-alice-123").await;
    let (_sam, sam_token) = synapse.register("sam").await;

    // Alice's image on conduit, downloaded by Sam through Synapse (which fetches it from
    // conduit's federation media endpoint).
    let from_conduit = crate::media::image_bytes(ImageFormat::Png, 200, 150);
    let mxc = crate::media::upload(&conduit, &alice, from_conduit.clone(), "image/png", Some("a.png")).await;
    let path = mxc.strip_prefix("mxc://").unwrap();
    let response = synapse
        .http
        .get(format!("{}/_matrix/client/v1/media/download/{path}", synapse.client_base))
        .bearer_auth(&sam_token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.bytes().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{}\n{}", String::from_utf8_lossy(&bytes), synapse.logs());
    assert_eq!(bytes.as_ref(), from_conduit.as_slice());

    // Sam's image on Synapse, downloaded and thumbnailed by Alice through conduit.
    let from_synapse = crate::media::image_bytes(ImageFormat::Png, 300, 300);
    let response = synapse
        .http
        .post(format!("{}/_matrix/media/v3/upload?filename=s.png", synapse.client_base))
        .bearer_auth(&sam_token)
        .header(reqwest::header::CONTENT_TYPE, "image/png")
        .body(from_synapse.clone())
        .send()
        .await
        .unwrap();
    let uploaded: Value = response.json().await.unwrap();
    let path =
        uploaded["content_uri"].as_str().expect("Synapse's content_uri").strip_prefix("mxc://").unwrap();
    let response = conduit
        .http
        .get(format!("{}/_matrix/client/v1/media/download/{path}", conduit.base))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let content_type = response.headers().get(reqwest::header::CONTENT_TYPE).cloned();
    let bytes = response.bytes().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{}\n{}", String::from_utf8_lossy(&bytes), synapse.logs());
    assert_eq!(bytes.as_ref(), from_synapse.as_slice());
    assert_eq!(content_type.unwrap(), "image/png");
    let response = conduit
        .http
        .get(format!(
            "{}/_matrix/client/v1/media/thumbnail/{path}?width=32&height=32&method=crop",
            conduit.base
        ))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let thumb = image::load_from_memory(&response.bytes().await.unwrap()).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (32, 32));
}

#[tokio::test]
async fn public_room_directories_cross_between_conduit_and_synapse_both_ways() {
    let pki = Pki::new();
    let synapse = Synapse::start(&pki).await;
    let conduit = TestServer::start_federating(&pki, |c| c.allow_public_rooms_over_federation = true).await;
    let alice = conduit.register("alice", "pw-alice-123").await;
    let (_sam, sam_token) = synapse.register("sam").await;
    let on_conduit = crate::rooms::create_room(
        &conduit,
        &alice,
        json!({"preset": "public_chat", "name": "Conduit lobby", "visibility": "public"}),
    )
    .await;
    let on_synapse = synapse
        .create_room(
            &sam_token,
            json!({"preset": "public_chat", "name": "Synapse lobby", "visibility": "public"}),
        )
        .await;
    let ids = |page: &Value| -> Vec<String> {
        page["chunk"].as_array().map_or_else(Vec::new, |rooms| {
            rooms.iter().filter_map(|r| r["room_id"].as_str().map(str::to_owned)).collect()
        })
    };

    // Sam lists conduit's directory through Synapse, with and without a search.
    let conduit_name = encode(&conduit.name());
    let (status, page) = synapse
        .call(
            reqwest::Method::GET,
            &format!("{V3}/publicRooms?server={conduit_name}"),
            Some(&sam_token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}\n{}", synapse.logs());
    assert_eq!(ids(&page), vec![on_conduit.clone()], "{page}");
    let (status, found) = synapse
        .call(
            reqwest::Method::POST,
            &format!("{V3}/publicRooms?server={conduit_name}"),
            Some(&sam_token),
            Some(json!({"filter": {"generic_search_term": "lobby"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}\n{}", synapse.logs());
    assert_eq!(ids(&found), vec![on_conduit], "{found}");

    // Alice lists Synapse's through conduit, once Synapse lists the room itself (its room
    // statistics, which its directory reads, are updated in the background).
    eventually("Sam's room in Synapse's own directory", &synapse, || async {
        let (_, page) =
            synapse.call(reqwest::Method::GET, &format!("{V3}/publicRooms"), Some(&sam_token), None).await;
        ids(&page).contains(&on_synapse)
    })
    .await;
    let synapse_name = encode(&synapse.name);
    let (status, page) =
        conduit.get(&format!("{V3}/publicRooms?server={synapse_name}"), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{page}\n{}", synapse.logs());
    assert_eq!(ids(&page), vec![on_synapse.clone()], "{page}");
    assert_eq!(page["chunk"][0]["name"], json!("Synapse lobby"), "{page}");
    let (status, found) = conduit
        .post(
            &format!("{V3}/publicRooms?server={synapse_name}"),
            Some(&alice.token),
            json!({"filter": {"generic_search_term": "lobby"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}\n{}", synapse.logs());
    assert_eq!(ids(&found), vec![on_synapse], "{found}");
}

/// The content of `user`'s presence event in a sync answer, if any.
fn presence_of(synced: &Value, user: &str) -> Value {
    synced["presence"]["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["sender"] == user).cloned())
        .map_or(Value::Null, |e| e["content"].clone())
}

#[tokio::test]
async fn presence_crosses_between_conduit_and_synapse_both_ways() {
    let pki = Pki::new();
    let synapse = Synapse::start(&pki).await;
    let conduit = TestServer::start_federating(&pki, |_| {}).await;
    let alice = conduit.register("alice", "pw-alice-123").await;
    let (sam, sam_token) = synapse.register("sam").await;
    let room = crate::rooms::create_room(&conduit, &alice, json!({"preset": "public_chat"})).await;
    let (status, joined) = synapse
        .call(
            reqwest::Method::POST,
            &format!("{V3}/join/{}?server_name={}", encode(&room), encode(&conduit.name())),
            Some(&sam_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{joined}\n{}", synapse.logs());
    let (_, first) = synapse.call(reqwest::Method::GET, &format!("{V3}/sync"), Some(&sam_token), None).await;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();

    // Alice sets hers on conduit: Sam's sync on Synapse shows it.
    let (status, body) = conduit
        .put(
            &format!("{V3}/presence/{}/status", encode(&alice.user_id)),
            Some(&alice.token),
            json!({"presence": "unavailable", "status_msg": "from conduit"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    synapse
        .sync_until("Alice's presence on Synapse", &sam_token, &mut since, |synced| {
            let p = presence_of(synced, &alice.user_id);
            p["presence"] == "unavailable" && p["status_msg"] == "from conduit"
        })
        .await;

    // Sam sets his on Synapse: Alice's sync on conduit shows it.
    let (status, body) = synapse
        .call(
            reqwest::Method::PUT,
            &format!("{V3}/presence/{}/status", encode(&sam)),
            Some(&sam_token),
            Some(json!({"presence": "online", "status_msg": "from synapse"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Sam's presence on conduit", &synapse, || async {
        let (_, synced) = conduit.get(&format!("{V3}/sync"), Some(&alice.token)).await;
        let p = presence_of(&synced, &sam);
        p["presence"] == "online" && p["status_msg"] == "from synapse"
    })
    .await;
}

/// A conduit server stopped, and what starts it again on the same port and database.
struct Stopped {
    config: conduit::config::Config,
    clock: std::sync::Arc<conduit::service::clock::ManualClock>,
    dir: tempfile::TempDir,
}

impl Stopped {
    async fn start(self) -> TestServer {
        TestServer::listen_on(self.config, self.dir, self.clock).await
    }
}

/// Sam's room on Synapse, which Alice of conduit joined and where Sam's first message
/// ("before the outage") reached conduit, with conduit stopped since.
struct ConduitDown {
    pki: Pki,
    synapse: Synapse,
    alice: Session,
    sam_token: String,
    room: String,
    stopped: Stopped,
}

async fn a_synapse_room_with_conduit_down() -> ConduitDown {
    let pki = Pki::new();
    let synapse = Synapse::start(&pki).await;
    let conduit = TestServer::start_federating(&pki, |_| {}).await;
    let alice = conduit.register("alice", "pw-alice-123").await;
    let (_sam, sam_token) = synapse.register("sam").await;
    let room = synapse.create_room(&sam_token, json!({"preset": "public_chat"})).await;
    synapse.join_from(&conduit, &alice, &room).await;
    synapse.send_text(&sam_token, &room, "s0", "before the outage").await;
    eventually("Sam's first message on conduit", &synapse, || async {
        conduit_bodies(&conduit, &alice.token, &room).await.contains(&"before the outage".to_owned())
    })
    .await;
    let config = (*conduit.services.config).clone();
    let clock = std::sync::Arc::clone(&conduit.clock);
    let dir = conduit.stop().await;
    ConduitDown { pki, synapse, alice, sam_token, room, stopped: Stopped { config, clock, dir } }
}

#[tokio::test]
async fn conduit_gets_what_it_missed_while_down_from_synapse_and_a_leave_reaches_synapse() {
    let ConduitDown { pki: _pki, synapse, alice, sam_token, room, stopped } =
        a_synapse_room_with_conduit_down().await;
    // conduit is down while Sam talks: Synapse's sends to it fail.
    // More than one get_missing_events answer holds (conduit asks for 50, Synapse answers
    // at most what it is asked): conduit asks again from where the gap goes on.
    let missed: Vec<String> = (1..=70).map(|i| format!("while conduit was down {i}")).collect();
    for (i, text) in missed.iter().enumerate() {
        synapse.send_text(&sam_token, &room, &format!("d{i}"), text).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Back on the same port and database. Alice speaks: Synapse hears from conduit again,
    // catches it up (with its latest event), and conduit fetches the rest it is missing.
    let conduit = stopped.start().await;
    crate::rooms::send_text(&conduit, &alice, &room, "a1", "conduit is back").await;
    eventually("conduit is back, on Synapse", &synapse, || async {
        synapse.message_bodies(&sam_token, &room).await.contains(&"conduit is back".to_owned())
    })
    .await;
    let mut want = vec!["before the outage".to_owned()];
    want.extend(missed.iter().cloned());
    eventually("every message Sam sent while conduit was down, on conduit", &synapse, || async {
        let bodies = conduit_bodies(&conduit, &alice.token, &room).await;
        want.iter().all(|w| bodies.contains(w))
    })
    .await;
    let bodies = conduit_bodies(&conduit, &alice.token, &room).await;
    let sams: Vec<&String> = bodies.iter().filter(|b| want.contains(b)).collect();
    assert_eq!(sams, want.iter().collect::<Vec<_>>(), "in order, once each: {bodies:?}");

    // Alice leaves on conduit: Synapse sees her gone.
    let (status, body) =
        conduit.post(&format!("{V3}/rooms/{}/leave", encode(&room)), Some(&alice.token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("Alice's leave on Synapse", &synapse, || async {
        let (_, members) = synapse
            .call(
                reqwest::Method::GET,
                &format!("{V3}/rooms/{}/joined_members", encode(&room)),
                Some(&sam_token),
                None,
            )
            .await;
        members["joined"].is_object() && members["joined"].get(&alice.user_id).is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conduit_takes_a_synapse_event_across_a_gap_too_long_to_fetch_with_the_state_synapse_has() {
    let ConduitDown { pki: _pki, synapse, alice, sam_token, room, stopped } =
        a_synapse_room_with_conduit_down().await;
    // conduit is down while Sam sends more than ten get_missing_events answers hold, and
    // changes the topic early on.
    const MISSED: usize = 520;
    for i in 0..MISSED {
        if i == 10 {
            let (status, body) = synapse
                .call(
                    reqwest::Method::PUT,
                    &format!("{V3}/rooms/{}/state/m.room.topic/", encode(&room)),
                    Some(&sam_token),
                    Some(json!({"topic": "set while conduit was down"})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        synapse.send_text(&sam_token, &room, &format!("d{i}"), &format!("while conduit was down {i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Back: Synapse catches conduit up with its latest event, whose ancestors conduit cannot
    // all fetch; it takes the event with the state before it as Synapse has it.
    let conduit = stopped.start().await;
    crate::rooms::send_text(&conduit, &alice, &room, "a1", "conduit is back").await;
    let latest = format!("while conduit was down {}", MISSED - 1);
    // Ten get_missing_events rounds, /state_ids and the state's events: once longer than
    // the default 20 s wait in a full run on two cores.
    eventually_within("Sam's latest message on conduit", &synapse, Duration::from_secs(90), || async {
        conduit_bodies(&conduit, &alice.token, &room).await.contains(&latest)
    })
    .await;
    let (status, topic) =
        conduit.get(&format!("{V3}/rooms/{}/state/m.room.topic/", encode(&room)), Some(&alice.token)).await;
    assert_eq!(status, StatusCode::OK, "{topic}");
    assert_eq!(topic["topic"], "set while conduit was down", "{topic}");
    // It crossed the gap: it asked Synapse for the state at the event before it.
    assert!(synapse.log_contains("/_matrix/federation/v1/state_ids/"), "no /state_ids request");

    // The room goes on from there, both ways.
    messages_cross_both_ways(
        &synapse,
        &sam_token,
        &conduit,
        &alice,
        &room,
        "after the gap",
        "alice after the gap",
    )
    .await;
}
