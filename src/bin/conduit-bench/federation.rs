//! Federation: conduit-bench plays other Matrix servers against the server under test.
//!
//! Each peer is a server named `127.0.0.1:<port>` on TLS (the certificate is given, signed by
//! a CA the server under test trusts), publishing a signing key of its own. A peer joins a
//! room of the server through `make_join`/`send_join` as any server would, then either sends
//! the server transactions of PDUs it built and signed (`fed-inbound`), or only listens for
//! the server's transactions and notes when each of its messages arrived (`fed-fan-out`).
//! A peer answers `get_missing_events` and `/event` from the events it built, as a real
//! server would for a server that fetches what it has not seen yet. Nothing here knows which
//! server it talks to: conduit and Synapse are driven alike.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    http::{Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use conduit::{
    config::{Config, ListenerConfig, ListenerResource},
    matrix::pdu::{EventTemplate, GraphPosition, Pdu, build_pdu, event_id_for},
    net::{Listeners, NetStats, Settings},
};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedServerName, OwnedUserId, RoomVersionId, UInt,
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
    room_version_rules::RoomVersionRules,
    signatures::Ed25519KeyPair,
};
use serde_json::{Value, json};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    appservice::Registration,
    bigroom,
    client::{CallResult, Http, User, encode, timed},
    report::{self, Outcome},
    scenarios::{self, Plan},
};

/// The TLS certificate and key every peer serves (for the IP address 127.0.0.1), and where
/// the server under test answers federation requests.
pub struct Setup {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// The server's federation API, e.g. `http://127.0.0.1:6167`.
    pub server_url: String,
}

/// The server under test as a federation peer sees it: its name and a client for its API.
pub struct Server {
    name: OwnedServerName,
    url: String,
    client: reqwest::Client,
}

impl Server {
    /// Ask the server its name (from its published keys).
    pub async fn discover(url: &str) -> CallResult<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("federation client: {e}"))?;
        let url = url.trim_end_matches('/').to_owned();
        let keys: Value = client
            .get(format!("{url}/_matrix/key/v2/server"))
            .send()
            .await
            .map_err(|e| format!("the server's keys: {e}"))?
            .json()
            .await
            .map_err(|e| format!("the server's keys: {e}"))?;
        let name = keys["server_name"]
            .as_str()
            .and_then(|n| OwnedServerName::try_from(n).ok())
            .ok_or_else(|| format!("the server's keys name no server: {keys}"))?;
        Ok(Self { name, url, client })
    }
}

/// What a peer noted of the server's transactions: when each message body first arrived.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

/// The events a peer built, by ID, as they travel.
type Built = Arc<Mutex<HashMap<String, Value>>>;

/// One simulated server.
pub struct Peer {
    name: OwnedServerName,
    key: Arc<Ed25519KeyPair>,
    arrivals: Arrivals,
    built: Built,
    _stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn unrecognized() -> Response {
    let body = json!({"errcode": "M_UNRECOGNIZED", "error": "conduit-bench does not serve this"});
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

impl Peer {
    pub async fn start(setup: &Setup) -> CallResult<Self> {
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port: {e}"))?
            .port();
        let name = OwnedServerName::try_from(format!("127.0.0.1:{port}")).map_err(|e| e.to_string())?;
        let der = Ed25519KeyPair::generate();
        let key = Arc::new(Ed25519KeyPair::from_der(&der, "bench".to_owned()).map_err(|e| e.to_string())?);

        let mut config = Config::default();
        let mut listener =
            ListenerConfig::plain(IpAddr::V4(Ipv4Addr::LOCALHOST), port, &[ListenerResource::Federation]);
        listener.tls_certificate_path = Some(setup.certificate.clone());
        listener.tls_private_key_path = Some(setup.private_key.clone());
        config.listeners = vec![listener];
        let listeners =
            Listeners::bind(&config, &[]).await.map_err(|e| format!("the peer's listener: {e}"))?;

        let keys = signed_keys(&name, &key)?;
        let arrivals = Arrivals::default();
        let built = Built::default();
        let (noted, served, origin) = (Arc::clone(&arrivals), Arc::clone(&built), name.to_string());
        let router = Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
            let (keys, noted, served, origin) =
                (keys.clone(), Arc::clone(&noted), Arc::clone(&served), origin.clone());
            async move {
                let at = Instant::now();
                let path = uri.path();
                match method {
                    Method::GET if path == "/_matrix/key/v2/server" => axum::Json(keys).into_response(),
                    Method::PUT if path.starts_with("/_matrix/federation/v1/send/") => {
                        note_arrivals(&noted, &body, at);
                        axum::Json(json!({"pdus": {}})).into_response()
                    }
                    Method::POST if path.starts_with("/_matrix/federation/v1/get_missing_events/") => {
                        let events = missing_events(&served, &body);
                        axum::Json(json!({"events": events})).into_response()
                    }
                    Method::GET if path.starts_with("/_matrix/federation/v1/event/") => {
                        let id = percent_decoded(&path["/_matrix/federation/v1/event/".len()..]);
                        match served.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
                            Some(event) => axum::Json(json!({
                                "origin": origin,
                                "origin_server_ts": MilliSecondsSinceUnixEpoch::now(),
                                "pdus": [event],
                            }))
                            .into_response(),
                            None => unrecognized(),
                        }
                    }
                    _ => unrecognized(),
                }
            }
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(conduit::net::serve(
            listeners,
            Settings::from_config(&config),
            Arc::new(NetStats::default()),
            move |_, _| router.clone(),
            stopped,
        ));
        Ok(Self { name, key, arrivals, built, _stop: stop, task })
    }

    fn user(&self, localpart: &str) -> CallResult<OwnedUserId> {
        OwnedUserId::try_from(format!("@{localpart}:{}", self.name)).map_err(|e| e.to_string())
    }

    /// When the message with `body` first reached this peer.
    fn arrived(&self, body: &str) -> Option<Instant> {
        self.arrivals.lock().unwrap_or_else(|p| p.into_inner()).get(body).copied()
    }

    /// A request to the server's federation API, signed with X-Matrix by this peer's key.
    async fn request(
        &self,
        server: &Server,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> CallResult<(StatusCode, Value)> {
        let bytes = body.map(serde_json::to_vec).transpose().map_err(|e| e.to_string())?.unwrap_or_default();
        let request = axum::http::Request::builder()
            .method(method.clone())
            .uri(path)
            .body(bytes.clone())
            .map_err(|e| e.to_string())?;
        let input = XMatrixSigningInput::new(self.name.clone(), server.name.clone(), &self.key);
        let header =
            XMatrix::sign_http_request(&request, input).map_err(|e| format!("signing {path}: {e}"))?;
        let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).map_err(|e| e.to_string())?;
        let mut call = server
            .client
            .request(method.clone(), format!("{}{path}", server.url))
            .header("authorization", header.to_string());
        if body.is_some() {
            call = call.header("content-type", "application/json").body(bytes);
        }
        let response = call.send().await.map_err(|e| format!("{method} {path}: {e}"))?;
        let status = StatusCode::from_u16(response.status().as_u16()).map_err(|e| e.to_string())?;
        let text = response.text().await.map_err(|e| format!("{method} {path}: {e}"))?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// Join `room_id` as `@<localpart>:<this peer>`, as a server joins a room it has never seen.
    async fn join(&self, server: &Server, room_id: &str, localpart: &str) -> CallResult<Chain> {
        let sender = self.user(localpart)?;
        let versions: String = (3..=12).map(|v| format!("&ver={v}")).collect();
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{}",
            encode(room_id),
            encode(sender.as_str()),
            &versions[1..]
        );
        let (status, made) = self.request(server, Method::GET, &path, None).await?;
        if status != StatusCode::OK {
            return Err(format!("make_join: {status}: {made}"));
        }
        let version = made["room_version"]
            .as_str()
            .and_then(|v| RoomVersionId::try_from(v).ok())
            .ok_or_else(|| format!("make_join: no room_version in {made}"))?;
        let rules = conduit::matrix::room_version::rules(&version)
            .ok_or_else(|| format!("make_join: room version {version} is not one conduit-bench builds"))?;
        let template = &made["event"];
        let ids = |field: &str| -> CallResult<Vec<OwnedEventId>> {
            serde_json::from_value(template[field].clone()).map_err(|e| format!("make_join {field}: {e}"))
        };
        let room = OwnedRoomId::try_from(room_id).map_err(|e| e.to_string())?;
        let depth = template["depth"].as_u64().ok_or_else(|| format!("make_join: no depth in {template}"))?;
        let member = EventTemplate::state("m.room.member", sender.as_str(), template["content"].clone());
        let join =
            self.build(&rules, &sender, &member, &room, ids("prev_events")?, ids("auth_events")?, depth)?;
        let object = self.keep(&join, &rules)?;
        let path = format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            encode(room_id),
            encode(join.event_id.as_str())
        );
        let (status, joined) = self.request(server, Method::PUT, &path, Some(&object)).await?;
        if status != StatusCode::OK {
            return Err(format!("send_join: {status}: {joined}"));
        }
        let state = joined["state"].as_array().ok_or_else(|| format!("send_join: no state in {joined}"))?;
        let find = |kind: &str| -> CallResult<OwnedEventId> {
            let event = state
                .iter()
                .find(|e| e["type"] == kind && e["state_key"] == "")
                .ok_or_else(|| format!("send_join: no {kind} in the state"))?;
            let object: CanonicalJsonObject =
                serde_json::from_value(event.clone()).map_err(|e| e.to_string())?;
            event_id_for(&object, &rules)
        };
        let mut auth = vec![find("m.room.power_levels")?, join.event_id.clone()];
        // From v12 the room ID stands for the create event, which is then not cited.
        if !rules.authorization.room_create_event_id_as_room_id {
            auth.insert(0, find("m.room.create")?);
        }
        Ok(Chain { rules, room, sender, last: join.event_id, depth: u64::from(join.depth), auth })
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        rules: &RoomVersionRules,
        sender: &OwnedUserId,
        template: &EventTemplate,
        room: &OwnedRoomId,
        prev_events: Vec<OwnedEventId>,
        auth_events: Vec<OwnedEventId>,
        depth: u64,
    ) -> CallResult<Pdu> {
        let position = GraphPosition {
            room_id: Some(room),
            event_id: None,
            prev_events,
            auth_events,
            reference_hashes: Default::default(),
            depth: UInt::new_saturating(depth),
        };
        build_pdu(rules, &self.name, &self.key, sender, MilliSecondsSinceUnixEpoch::now(), template, position)
            .map_err(|e| format!("building an event: {e:?}"))
    }

    /// `pdu` as it travels, kept to be served to a server that asks for it.
    fn keep(&self, pdu: &Pdu, rules: &RoomVersionRules) -> CallResult<Value> {
        let json = canonical_json(pdu.to_federation_object(rules)?);
        self.built.lock().unwrap_or_else(|p| p.into_inner()).insert(pdu.event_id.to_string(), json.clone());
        Ok(json)
    }

    /// The next `count` messages of `chain`, each following the one before, as they travel.
    fn messages(&self, chain: &mut Chain, count: usize, label: &str) -> CallResult<Vec<Value>> {
        let mut pdus = Vec::with_capacity(count);
        for i in 0..count {
            let content = json!({"msgtype": "m.text", "body": format!("{label} {i}")});
            let template = EventTemplate::message("m.room.message", content);
            let pdu = self.build(
                &chain.rules,
                &chain.sender,
                &template,
                &chain.room,
                vec![chain.last.clone()],
                chain.auth.clone(),
                chain.depth + 1,
            )?;
            chain.last = pdu.event_id.clone();
            chain.depth += 1;
            pdus.push(self.keep(&pdu, &chain.rules)?);
        }
        Ok(pdus)
    }

    /// Send `pdus` in one transaction; an error unless the server took every one.
    async fn send_transaction(&self, server: &Server, txn: &str, pdus: Vec<Value>) -> CallResult<()> {
        let body = json!({
            "origin": self.name,
            "origin_server_ts": MilliSecondsSinceUnixEpoch::now(),
            "pdus": pdus,
        });
        let path = format!("/_matrix/federation/v1/send/{}", encode(txn));
        let (status, answer) = self.request(server, Method::PUT, &path, Some(&body)).await?;
        if status != StatusCode::OK {
            return Err(format!("send {txn}: {status}: {answer}"));
        }
        let refused: Vec<String> = answer["pdus"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, result)| result.get("error").is_some())
            .map(|(id, result)| format!("{id}: {}", result["error"]))
            .collect();
        if !refused.is_empty() {
            return Err(format!("send {txn}: {} PDUs refused, first {}", refused.len(), refused[0]));
        }
        Ok(())
    }
}

/// Where a peer's user stands in a room: what its next event cites.
struct Chain {
    rules: RoomVersionRules,
    room: OwnedRoomId,
    sender: OwnedUserId,
    last: OwnedEventId,
    depth: u64,
    auth: Vec<OwnedEventId>,
}

fn canonical_json(object: CanonicalJsonObject) -> Value {
    Value::from(CanonicalJsonValue::Object(object))
}

/// Note the first arrival of every message body in a transaction.
fn note_arrivals(arrivals: &Arrivals, body: &[u8], at: Instant) {
    let Ok(transaction) = serde_json::from_slice::<Value>(body) else { return };
    let mut arrivals = arrivals.lock().unwrap_or_else(|p| p.into_inner());
    for pdu in transaction["pdus"].as_array().into_iter().flatten() {
        if let Some(text) = pdu["content"]["body"].as_str() {
            arrivals.entry(text.to_owned()).or_insert(at);
        }
    }
}

/// A `get_missing_events` answer from the events a peer built: walking back from
/// `latest_events` through `prev_events`, stopping at `earliest_events` and at events the peer
/// did not build, at most `limit` (default 10), oldest first.
fn missing_events(built: &Built, body: &[u8]) -> Vec<Value> {
    let Ok(request) = serde_json::from_slice::<Value>(body) else { return Vec::new() };
    let ids = |field: &str| -> Vec<String> {
        request[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let limit = request["limit"].as_u64().unwrap_or(10).min(100) as usize;
    let earliest = ids("earliest_events");
    let built = built.lock().unwrap_or_else(|p| p.into_inner());
    let mut wanted: Vec<String> = ids("latest_events")
        .iter()
        .filter_map(|id| built.get(id))
        .flat_map(|event| event["prev_events"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let mut found = Vec::new();
    while let Some(id) = wanted.pop() {
        if found.len() >= limit || earliest.contains(&id) {
            continue;
        }
        let Some(event) = built.get(&id) else { continue };
        wanted.extend(
            event["prev_events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned)),
        );
        found.push(event.clone());
    }
    found.sort_by_key(|e| e["depth"].as_u64());
    found
}

/// A path segment with its `%XX` escapes decoded.
fn percent_decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The peer's `/_matrix/key/v2/server` answer, signed by its key.
fn signed_keys(name: &OwnedServerName, key: &Ed25519KeyPair) -> CallResult<Value> {
    use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
    let body = json!({
        "server_name": name,
        "valid_until_ts": u64::from(MilliSecondsSinceUnixEpoch::now().get()) + 86_400_000,
        "verify_keys": {format!("ed25519:{}", key.version()): {"key": STANDARD_NO_PAD.encode(key.public_key())}},
        "old_verify_keys": {},
    });
    let mut object: CanonicalJsonObject = serde_json::from_value(body).map_err(|e| e.to_string())?;
    ruma::signatures::sign_json(name.as_str(), key, &mut object).map_err(|e| format!("signing keys: {e}"))?;
    Ok(canonical_json(object))
}

/// `fed-inbound`: a room of `fed_members` local members (its creator included) that one peer
/// joins; the peer then sends `fed_transactions` transactions of `fed_pdus` messages each, one
/// after another, each timed from its request until the creator's long-polling `/sync` holds
/// its last message (a server may answer a transaction before it has processed it).
pub async fn inbound(plan: &Plan, setup: &Setup, creator: &User, members: &[User]) -> CallResult<Outcome> {
    let server = Server::discover(&setup.server_url).await?;
    let room = scenarios::public_room_with(plan, creator, members).await?;
    let peer = Peer::start(setup).await?;
    let mut chain = peer.join(&server, &room, "bench_sender").await?;
    let filter = encode(&json!({"room": {"rooms": [room], "timeline": {"limit": 5}}}).to_string());
    let mut since = creator.sync(&format!("filter={filter}&timeout=0")).await?["next_batch"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let mut latencies = Vec::with_capacity(plan.fed_transactions);
    let mut answers = Vec::with_capacity(plan.fed_transactions);
    let mut wall = Duration::ZERO;
    // The first transaction is not counted: whatever a server does on first use is not in the
    // figures.
    for t in 0..=plan.fed_transactions {
        let pdus = peer.messages(&mut chain, plan.fed_pdus, &format!("{} inbound {t}", plan.run_id))?;
        let last = chain.last.to_string();
        let watcher = tokio::spawn(seen_in_sync(creator.clone(), filter.clone(), since, room.clone(), last));
        // Give the long-poll time to reach the server and park there.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let started = Instant::now();
        let (sent, answered) =
            timed(peer.send_transaction(&server, &format!("{}t{t}", plan.run_id), pdus)).await;
        sent?;
        let (seen, next) = watcher.await.map_err(|e| e.to_string())??;
        since = next;
        if t > 0 {
            let took = seen.saturating_duration_since(started).max(answered);
            wall += took;
            latencies.push(took);
            answers.push(answered);
        }
    }
    answers.sort_unstable();
    let members = members.len() + 1;
    let note = format!(
        "{} PDUs (messages) a transaction, one at a time, into a room of {members} local members; {:.0} PDUs/s; the server's answer came after p50 {:.1} ms",
        plan.fed_pdus,
        (plan.fed_transactions * plan.fed_pdus) as f64 / wall.as_secs_f64(),
        report::percentile(&answers, 50.0).as_secs_f64() * 1000.0,
    );
    Ok(Outcome::new(
        &format!("federation: inbound transaction of {} PDUs, {members}-member room", plan.fed_pdus),
        &mut latencies,
        wall,
        note,
    ))
}

/// Long-poll `/sync` from `since` until a response holds `event_id` in `room`: when it came,
/// and the token to go on from.
async fn seen_in_sync(
    user: User,
    filter: String,
    mut since: String,
    room: String,
    event_id: String,
) -> CallResult<(Instant, String)> {
    let give_up = Instant::now() + Duration::from_secs(120);
    while Instant::now() < give_up {
        let response = user.sync(&format!("filter={filter}&timeout=30000&since={}", encode(&since))).await?;
        since = response["next_batch"].as_str().unwrap_or_default().to_owned();
        if scenarios::timeline_holds(&response, &room, &event_id) {
            return Ok((Instant::now(), since));
        }
    }
    Err(format!("{event_id} never reached a member's /sync"))
}

/// `fed-fan-out`: `fed_servers` peers each join a room of the server with one user; a local
/// member then sends `fed_rounds` messages one at a time, each timed from its send request to
/// its arrival at the last of the peers.
pub async fn fan_out(plan: &Plan, setup: &Setup, sender: &User) -> CallResult<Outcome> {
    let server = Server::discover(&setup.server_url).await?;
    let room = sender.create_public_room().await?;
    let mut peers = Vec::with_capacity(plan.fed_servers);
    for _ in 0..plan.fed_servers {
        let peer = Peer::start(setup).await?;
        peer.join(&server, &room, "bench_listener").await?;
        peers.push(peer);
    }
    // An untimed message first: the server's first transaction to each peer goes out after
    // the joins, on connections not yet open.
    let warm = format!("{} fan-out warm-up", plan.run_id);
    sender.send_text(&room, &format!("{}fw", plan.run_id), &warm).await?;
    all_arrived(&peers, &warm, Instant::now(), Duration::from_secs(60)).await?;

    let mut slowest = Vec::with_capacity(plan.fed_rounds);
    let mut each = Vec::with_capacity(plan.fed_rounds * peers.len());
    let started = Instant::now();
    for round in 0..plan.fed_rounds {
        let body = format!("{} fan-out {round}", plan.run_id);
        let sent_at = Instant::now();
        sender.send_text(&room, &format!("{}f{round}", plan.run_id), &body).await?;
        let arrivals = all_arrived(&peers, &body, sent_at, Duration::from_secs(60)).await?;
        slowest.push(arrivals.iter().copied().max().unwrap_or_default());
        each.extend(arrivals);
    }
    let wall = started.elapsed();
    each.sort_unstable();
    let ms = |p: f64| report::percentile(&each, p).as_secs_f64() * 1000.0;
    let note = format!(
        "{} peers, each a server with one member; timed from the send request to the last peer's transaction holding it; each peer's own arrival p50 {:.1} ms, p99 {:.1} ms",
        peers.len(),
        ms(50.0),
        ms(99.0)
    );
    Ok(Outcome::new(
        &format!("federation: a message reaches all {} servers", peers.len()),
        &mut slowest,
        wall,
        note,
    ))
}

/// Wait until every peer has received the message with `body`; how long after `since` each did.
async fn all_arrived(
    peers: &[Peer],
    body: &str,
    since: Instant,
    limit: Duration,
) -> CallResult<Vec<Duration>> {
    let give_up = Instant::now() + limit;
    loop {
        let arrived: Vec<Option<Instant>> = peers.iter().map(|p| p.arrived(body)).collect();
        if arrived.iter().all(Option::is_some) {
            return Ok(arrived.into_iter().flatten().map(|at| at.saturating_duration_since(since)).collect());
        }
        if Instant::now() >= give_up {
            let got = arrived.iter().filter(|a| a.is_some()).count();
            return Err(format!("{got} of {} servers received {body:?} within {limit:?}", peers.len()));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `fed-join`: another server (the host) runs rooms of `fed_members` members; a user of each
/// joining server joins one through the host, timed from the `/join` request to its answer,
/// then sends a message at once, timed from the `/join` request to the send's answer (a
/// server that answers the join before it has the room's whole state, as Synapse and conduit
/// both do, may make that send wait for it). Each round is a fresh room of the host, joined
/// by every joining server in turn, the first one changing from round to round.
pub struct JoinSetup {
    pub host: Http,
    pub host_name: String,
    pub host_appservice: Registration,
    /// Each joining server's name in the output and its client API.
    pub joiners: Vec<(String, Http)>,
}

pub async fn join_remote(plan: &Plan, setup: &JoinSetup) -> CallResult<Vec<Outcome>> {
    let mut joining = Vec::with_capacity(setup.joiners.len());
    for (label, http) in &setup.joiners {
        let (users, _) = scenarios::register_users(
            http,
            plan,
            bigroom::FED_JOIN_USERS,
            plan.fed_join_rounds,
            plan.clients,
        )
        .await
        .map_err(|e| format!("{label}: {e}"))?;
        joining.push(users);
    }
    let mut latencies = vec![Vec::with_capacity(plan.fed_join_rounds); setup.joiners.len()];
    let mut walls = vec![Duration::ZERO; setup.joiners.len()];
    let mut then_sent = latencies.clone();
    let mut sent_walls = walls.clone();
    for round in 0..plan.fed_join_rounds {
        let started = Instant::now();
        let first = bigroom::FED_JOIN_USERS + round * plan.fed_members;
        let mut members =
            bigroom::provision(&setup.host, plan, Some(&setup.host_appservice), first, plan.fed_members)
                .await?;
        let creator = members.remove(0);
        let room = scenarios::public_room_with(plan, &creator, &members).await?;
        eprintln!(
            "set-up: a room of {} members on {} in {:.1} s",
            plan.fed_members,
            setup.host_name,
            started.elapsed().as_secs_f64()
        );
        for k in 0..setup.joiners.len() {
            let j = (round + k) % setup.joiners.len();
            let user = joining[j].get(round).ok_or("a joining user per round")?;
            let (joined, took) = timed(user.join_via(&room, &setup.host_name)).await;
            joined.map_err(|e| format!("{} joining: {e}", setup.joiners[j].0))?;
            let (sent, send_took) = timed(user.send_text(&room, &format!("joined-{round}"), "hello")).await;
            sent.map_err(|e| format!("{} sending after its join: {e}", setup.joiners[j].0))?;
            latencies[j].push(took);
            walls[j] += took;
            then_sent[j].push(took + send_took);
            sent_walls[j] += took + send_took;
        }
    }
    let mut outcomes = Vec::new();
    for (j, (label, _)) in setup.joiners.iter().enumerate() {
        let joins: Vec<String> =
            latencies[j].iter().map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0)).collect();
        let note = format!("each join a fresh room of {}; joins {} ms", setup.host_name, joins.join("/"));
        outcomes.push(Outcome::new(
            &format!("federation: {label} joins a {}-member room of another server", plan.fed_members),
            &mut latencies[j],
            walls[j],
            note,
        ));
        let sends: Vec<String> =
            then_sent[j].iter().map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0)).collect();
        outcomes.push(Outcome::new(
            &format!(
                "federation: {label} joins a {}-member room and sends a message in it",
                plan.fed_members
            ),
            &mut then_sent[j],
            sent_walls[j],
            format!("from the /join request to the send's answer: {} ms", sends.join("/")),
        ));
    }
    Ok(outcomes)
}
