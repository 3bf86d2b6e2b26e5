//! A federation peer the test scripts: a server named `127.0.0.1:<port>` on TLS with a
//! certificate from the test's `Pki`, publishing a signing key of its own at
//! `/_matrix/key/v2/server` (signed, as a real server's), and answering every other request
//! with whatever the test's handler gives: a slow answer, garbage, or events it built. Every
//! request it gets is recorded, so a test can count what the server under test asked.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use conduit::{
    config::{ListenerConfig, ListenerResource},
    net::{Listeners, NetStats, Settings},
};
use ruma::signatures::Ed25519KeyPair;
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinHandle};

use crate::harness::{Pki, TestServer, free_port, test_config};

/// What the peer answers to a request (method, path with query, body).
pub type Answer = Pin<Box<dyn Future<Output = Response> + Send>>;
type Handler = Arc<dyn Fn(Method, String, Bytes) -> Answer + Send + Sync>;

pub struct FakePeer {
    /// Its server name, `127.0.0.1:<port>`.
    pub name: String,
    /// The key it signs with, published as `ed25519:fake`.
    pub key: Arc<Ed25519KeyPair>,
    requests: Arc<Mutex<Vec<String>>>,
    /// How long its key server takes to answer, in milliseconds.
    key_delay_ms: Arc<AtomicU64>,
    _stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for FakePeer {
    fn drop(&mut self) {
        // A handler that never answers would hold a graceful stop forever.
        self.task.abort();
    }
}

/// A JSON answer.
pub fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

impl FakePeer {
    /// Start a peer answering with `handler` (its key server aside).
    pub async fn start<F, Fut>(pki: &Pki, handler: F) -> Self
    where
        F: Fn(Method, String, Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |method, path, body| Box::pin(handler(method, path, body)));
        let port = free_port();
        let name = format!("127.0.0.1:{port}");
        let key = Arc::new(
            Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "fake".to_owned()).expect("a key pair"),
        );
        let requests = Arc::new(Mutex::new(Vec::new()));

        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = test_config(dir.path());
        let (cert, private_key) = pki.server_cert("127.0.0.1");
        let mut listener = ListenerConfig::plain(
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            port,
            &[ListenerResource::Federation],
        );
        listener.tls_certificate_path = Some(cert);
        listener.tls_private_key_path = Some(private_key);
        config.listeners = vec![listener];
        let listeners = Listeners::bind(&config, &[]).await.expect("the fake peer's listener binds");

        let keys = signed_keys(&name, &key);
        let recorded = Arc::clone(&requests);
        let key_delay_ms = Arc::new(AtomicU64::new(0));
        let delay = Arc::clone(&key_delay_ms);
        let router = Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
            let (keys, handler, recorded) = (keys.clone(), Arc::clone(&handler), Arc::clone(&recorded));
            let delay = Duration::from_millis(delay.load(Ordering::SeqCst));
            async move {
                let path = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.to_string());
                recorded.lock().unwrap().push(format!("{method} {path}"));
                if uri.path() == "/_matrix/key/v2/server" {
                    tokio::time::sleep(delay).await;
                    return answer(StatusCode::OK, keys);
                }
                handler(method, path, body).await
            }
        });
        let (stop, stopped) = watch::channel(false);
        let settings = Settings::from_config(&config);
        let task = tokio::spawn(conduit::net::serve(
            listeners,
            settings,
            Arc::new(NetStats::default()),
            move |_, _| router.clone(),
            stopped,
        ));
        Self { name, key, requests, key_delay_ms, _stop: stop, task, _dir: dir }
    }

    /// Make its key server answer only after `delay` (a slow peer, so that requests can
    /// arrive while a server fetches its keys).
    pub fn set_key_delay(&self, delay: Duration) {
        self.key_delay_ms.store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// The requests received so far (`METHOD /path?query`), oldest first.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// How many requests received so far have a path starting with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.requests().iter().filter(|r| r.split(' ').nth(1).is_some_and(|p| p.starts_with(prefix))).count()
    }

    /// A request from this peer to `to`'s federation API, signed with X-Matrix by its key.
    pub async fn send_to(
        &self,
        pki: &Pki,
        to: &TestServer,
        method: &str,
        path: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
        let bytes = serde_json::to_vec(&body).unwrap();
        let request = axum::http::Request::builder().method(method).uri(path).body(bytes.clone()).unwrap();
        let input = XMatrixSigningInput::new(
            self.name.as_str().try_into().unwrap(),
            to.name().try_into().unwrap(),
            &self.key,
        );
        let header = XMatrix::sign_http_request(&request, input).unwrap().to_string();
        let response = pki
            .client()
            .request(method.parse().unwrap(), format!("{}{path}", to.federation_base()))
            .header("authorization", header)
            .header("content-type", "application/json")
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A user ID of this peer.
    pub fn user(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.name)
    }

    /// `event` (federation format, without hashes or signatures) hashed and signed by this
    /// peer for a room of `version`: the signed event and its ID.
    pub fn sign_event(&self, event: Value, version: &ruma::RoomVersionId) -> (Value, String) {
        let rules = conduit::matrix::room_version::rules(version).expect("a supported version");
        let ruma::CanonicalJsonValue::Object(mut object) =
            ruma::CanonicalJsonValue::try_from(event).expect("canonical JSON")
        else {
            panic!("an event is an object")
        };
        ruma::signatures::hash_and_sign_event(&self.name, &*self.key, &mut object, &rules.redaction)
            .expect("the event signs");
        let id = conduit::matrix::pdu::event_id_for(&object, &rules).expect("an event ID");
        (serde_json::to_value(&object).unwrap(), id.to_string())
    }
}

/// The peer's `/_matrix/key/v2/server` answer, signed by its key.
fn signed_keys(name: &str, key: &Ed25519KeyPair) -> Value {
    use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
    let body = json!({
        "server_name": name,
        "valid_until_ts": 4_000_000_000_000_u64,
        "verify_keys": {"ed25519:fake": {"key": STANDARD_NO_PAD.encode(key.public_key())}},
        "old_verify_keys": {},
    });
    let ruma::CanonicalJsonValue::Object(mut object) = ruma::CanonicalJsonValue::try_from(body).unwrap()
    else {
        unreachable!()
    };
    ruma::signatures::sign_json(name, key, &mut object).expect("the keys sign");
    serde_json::to_value(&object).unwrap()
}
