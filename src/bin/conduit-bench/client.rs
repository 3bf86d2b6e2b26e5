//! A minimal Matrix client over HTTP: just the calls the scenarios make, against any
//! homeserver (conduit or Synapse), with no knowledge of either.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// One HTTP connection pool shared by every simulated user.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    base: String,
}

/// A logged-in user: the pool plus their access token.
#[derive(Clone)]
pub struct User {
    http: Http,
    token: String,
}

pub type CallResult<T> = Result<T, String>;

impl Http {
    pub fn new(base: &str) -> CallResult<Self> {
        let client = reqwest::Client::builder()
            // Long-polls wait up to 30 s; anything slower than this is a failure.
            .timeout(Duration::from_secs(300))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Self { client, base: base.trim_end_matches('/').to_owned() })
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> CallResult<(StatusCode, Value)> {
        // Paths are under the client-server API's v3 unless they name their own prefix.
        let url = if path.starts_with("/_matrix/") {
            format!("{}{path}", self.base)
        } else {
            format!("{}/_matrix/client/v3{path}", self.base)
        };
        let mut request = self.client.request(method.clone(), url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| format!("{method} {path}: reading body: {e}"))?;
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, value))
    }

    /// Register through user-interactive auth: the first request returns a session, the
    /// second completes `m.login.dummy` in it, as Element does.
    pub async fn register(&self, username: &str, password: &str) -> CallResult<User> {
        let mut body = json!({
            "username": username,
            "password": password,
            "initial_device_display_name": "conduit-bench",
        });
        let (status, challenge) = self.call(Method::POST, "/register", None, Some(&body)).await?;
        if status != StatusCode::UNAUTHORIZED {
            return Err(format!("register {username}: expected a 401 challenge, got {status}: {challenge}"));
        }
        let session = challenge["session"].as_str().unwrap_or_default().to_owned();
        body["auth"] = json!({"type": "m.login.dummy", "session": session});
        let (status, done) = self.call(Method::POST, "/register", None, Some(&body)).await?;
        if status != StatusCode::OK {
            return Err(format!("register {username}: {status}: {done}"));
        }
        Ok(User { http: self.clone(), token: done["access_token"].as_str().unwrap_or_default().to_owned() })
    }

    pub async fn login(&self, username: &str, password: &str) -> CallResult<User> {
        let body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": username},
            "password": password,
        });
        let (status, done) = self.call(Method::POST, "/login", None, Some(&body)).await?;
        if status != StatusCode::OK {
            return Err(format!("login {username}: {status}: {done}"));
        }
        Ok(User { http: self.clone(), token: done["access_token"].as_str().unwrap_or_default().to_owned() })
    }
}

impl User {
    /// A user whose access token was obtained elsewhere (an appservice registration).
    pub fn with_token(http: &Http, token: String) -> Self {
        Self { http: http.clone(), token }
    }

    /// The same user (the same access token) through another base URL: another process
    /// sharing the server's database.
    pub fn through(&self, http: &Http) -> Self {
        Self { http: http.clone(), token: self.token.clone() }
    }

    async fn ok(&self, method: Method, path: &str, body: Option<&Value>) -> CallResult<Value> {
        let (status, value) = self.http.call(method.clone(), path, Some(&self.token), body).await?;
        if status != StatusCode::OK {
            return Err(format!("{method} {path}: {status}: {value}"));
        }
        Ok(value)
    }

    pub async fn whoami(&self) -> CallResult<()> {
        self.ok(Method::GET, "/account/whoami", None).await.map(drop)
    }

    pub async fn create_public_room(&self) -> CallResult<String> {
        let created = self.ok(Method::POST, "/createRoom", Some(&json!({"preset": "public_chat"}))).await?;
        created["room_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("createRoom: no room_id in {created}"))
    }

    pub async fn join(&self, room_id: &str) -> CallResult<()> {
        self.ok(Method::POST, &format!("/join/{}", encode(room_id)), Some(&json!({}))).await.map(drop)
    }

    /// Join a room this server may not have yet, through `server`.
    pub async fn join_via(&self, room_id: &str, server: &str) -> CallResult<()> {
        let path = format!("/join/{}?server_name={}", encode(room_id), encode(server));
        self.ok(Method::POST, &path, Some(&json!({}))).await.map(drop)
    }

    /// Send one text message; returns its event ID.
    pub async fn send_text(&self, room_id: &str, txn_id: &str, body: &str) -> CallResult<String> {
        let path = format!("/rooms/{}/send/m.room.message/{}", encode(room_id), encode(txn_id));
        let sent = self.ok(Method::PUT, &path, Some(&json!({"msgtype": "m.text", "body": body}))).await?;
        sent["event_id"].as_str().map(str::to_owned).ok_or_else(|| format!("send: no event_id in {sent}"))
    }

    /// Create a room with a name.
    pub async fn create_named_room(&self, name: &str) -> CallResult<String> {
        let created = self.ok(Method::POST, "/createRoom", Some(&json!({"name": name}))).await?;
        created["room_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("createRoom: no room_id in {created}"))
    }

    /// Set an HTTP pusher sending to `url` (`event_id_only`, as Element X asks).
    pub async fn set_pusher(&self, url: &str, pushkey: &str) -> CallResult<()> {
        let body = json!({
            "kind": "http", "app_id": "org.example.bench", "pushkey": pushkey,
            "app_display_name": "bench", "device_display_name": "bench", "lang": "en",
            "data": {"url": url, "format": "event_id_only"},
        });
        self.ok(Method::POST, "/pushers/set", Some(&body)).await.map(drop)
    }

    /// A simplified sliding sync request (MSC4186) from `pos`, answering at once.
    pub async fn sliding_sync(&self, pos: Option<&str>, body: &Value) -> CallResult<Value> {
        let mut path = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0".to_owned();
        if let Some(pos) = pos {
            path.push_str("&pos=");
            path.push_str(&encode(pos));
        }
        self.ok(Method::POST, &path, Some(body)).await
    }

    /// `GET /sync` with the given query string (already encoded).
    pub async fn sync(&self, query: &str) -> CallResult<Value> {
        self.ok(Method::GET, &format!("/sync?{query}"), None).await
    }

    /// One page of `GET /messages` backwards from `from` (the end of the room when `None`).
    pub async fn messages_back(&self, room_id: &str, from: Option<&str>, limit: u32) -> CallResult<Value> {
        let mut path = format!("/rooms/{}/messages?dir=b&limit={limit}", encode(room_id));
        if let Some(from) = from {
            path.push_str("&from=");
            path.push_str(&encode(from));
        }
        self.ok(Method::GET, &path, None).await
    }
}

/// Percent-encode everything outside the unreserved set (room IDs carry `!` and `:`).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Run `f`, returning its result and how long it took.
pub async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}
