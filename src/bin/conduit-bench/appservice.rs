//! The `appservice` scenario: conduit-bench acts as an application service whose registration
//! the server was started with (`--appservice FILE`; `scripts/bench-vs-synapse` writes one
//! for both servers). It times a history import (messages sent one after another with
//! `?user_id=` masquerading and `?ts=`), and how long events sent at a steady rate take to
//! reach it in transactions.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::put,
};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::Notify};

use crate::{
    client::{CallResult, Http, User, encode},
    report::Outcome,
    scenarios::Plan,
};

/// What the scenario needs of the registration: the namespace it registers users in is
/// `@bench_…`, which the registration must hold.
pub struct Registration {
    pub as_token: String,
    pub hs_token: String,
    pub listen: SocketAddr,
    pub server_name: String,
}

impl Registration {
    pub fn read(path: &std::path::Path, server_name: &str) -> CallResult<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let server = <&ruma::ServerName>::try_from(server_name).map_err(|e| format!("--server-name: {e}"))?;
        let reg = conduit::matrix::appservice::parse_registration(&text, server)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let probe = ruma::UserId::parse(format!("@bench_probe:{server_name}")).map_err(|e| e.to_string())?;
        if !reg.may_act_as(&probe) {
            return Err(format!("{}: the users namespace must hold @bench_…:{server_name}", path.display()));
        }
        let url = reg.url.ok_or_else(|| format!("{}: the registration needs a url", path.display()))?;
        let listen = url
            .socket_addrs(|| Some(80))
            .ok()
            .and_then(|addrs| addrs.into_iter().next())
            .ok_or_else(|| format!("{}: url {url} names no address", path.display()))?;
        Ok(Self {
            as_token: reg.as_token,
            hs_token: reg.hs_token,
            listen,
            server_name: server_name.to_owned(),
        })
    }
}

/// The appservice's listener: when each event first arrived, by event ID.
#[derive(Clone)]
pub struct Listener {
    arrived: Arc<Mutex<HashMap<String, Instant>>>,
    bell: Arc<Notify>,
    hs_token: Arc<str>,
}

async fn transaction(
    State(listener): State<Listener>,
    Path(_txn): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let now = Instant::now();
    let expected = format!("Bearer {}", listener.hs_token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (StatusCode::FORBIDDEN, Json(json!({"errcode": "M_FORBIDDEN"})));
    }
    {
        let mut arrived = listener.arrived.lock().unwrap_or_else(|p| p.into_inner());
        for event in body["events"].as_array().into_iter().flatten() {
            if let Some(id) = event["event_id"].as_str() {
                arrived.entry(id.to_owned()).or_insert(now);
            }
        }
    }
    listener.bell.notify_waiters();
    (StatusCode::OK, Json(json!({})))
}

impl Listener {
    pub async fn start(reg: &Registration) -> CallResult<Self> {
        let socket = TcpListener::bind(reg.listen)
            .await
            .map_err(|e| format!("appservice listener {}: {e}", reg.listen))?;
        let listener = Listener {
            arrived: Arc::default(),
            bell: Arc::new(Notify::new()),
            hs_token: reg.hs_token.as_str().into(),
        };
        let app = Router::new()
            .route("/_matrix/app/v1/transactions/{txn}", put(transaction))
            .with_state(listener.clone());
        tokio::spawn(async move {
            let _ = axum::serve(socket, app).await;
        });
        Ok(listener)
    }

    fn arrival(&self, event_id: &str) -> Option<Instant> {
        self.arrived.lock().unwrap_or_else(|p| p.into_inner()).get(event_id).copied()
    }

    /// Wait until every one of `ids` arrived, or `limit` passed; answers how many did.
    async fn wait_all(&self, ids: &[String], limit: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let rung = self.bell.notified();
            let count = ids.iter().filter(|id| self.arrival(id).is_some()).count();
            if count == ids.len() || tokio::time::timeout_at(deadline, rung).await.is_err() {
                return ids.iter().filter(|id| self.arrival(id).is_some()).count();
            }
        }
    }
}

/// The appservice's own calls: its token, acting as its sender or as one of its users.
struct Appservice {
    http: Http,
    token: String,
}

impl Appservice {
    async fn call(&self, method: Method, path: &str, body: &Value) -> CallResult<Value> {
        let (status, value) = self.http.call(method.clone(), path, Some(&self.token), Some(body)).await?;
        if !status.is_success() {
            return Err(format!("{method} {path} as the appservice: {status}: {value}"));
        }
        Ok(value)
    }

    async fn register(&self, localpart: &str) -> CallResult<()> {
        let body =
            json!({"type": "m.login.application_service", "username": localpart, "inhibit_login": true});
        self.call(Method::POST, "/register", &body).await.map(drop)
    }
}

/// A history import: `plan.import_messages` messages sent one after another by a user of the
/// appservice (`?user_id=`), each with its own `?ts=` in the past, into one room.
pub async fn import(http: &Http, plan: &Plan, reg: &Registration) -> CallResult<Outcome> {
    let appservice = Appservice { http: http.clone(), token: reg.as_token.clone() };
    let localpart = format!("bench_{}i", plan.run_id);
    appservice.register(&localpart).await?;
    let user = encode(&format!("@{localpart}:{}", reg.server_name));
    let created = appservice.call(Method::POST, &format!("/createRoom?user_id={user}"), &json!({})).await?;
    let room = encode(created["room_id"].as_str().ok_or("createRoom: no room_id")?);
    // A year ago, a second apart.
    let first_ts: u64 = 1_700_000_000_000;
    let mut latencies = Vec::with_capacity(plan.import_messages);
    let started = Instant::now();
    for i in 0..plan.import_messages {
        let path = format!(
            "/rooms/{room}/send/m.room.message/{}i{i}?user_id={user}&ts={}",
            plan.run_id,
            first_ts + (i as u64) * 1000
        );
        let body = json!({"msgtype": "m.text", "body": format!("imported message {i}")});
        let sent = Instant::now();
        appservice.call(Method::PUT, &path, &body).await?;
        latencies.push(sent.elapsed());
    }
    Ok(Outcome::new(
        "appservice import, 1 client",
        &mut latencies,
        started.elapsed(),
        "sequential, ?user_id= and ?ts=".to_owned(),
    ))
}

/// Transaction delivery: `plan.clients` users send `plan.as_rate` messages a second in all
/// for `plan.as_seconds` seconds into a room a user of the appservice is in; each message's
/// lag is from its send request to its arrival at the appservice.
pub async fn delivery(
    http: &Http,
    plan: &Plan,
    reg: &Registration,
    listener: &Listener,
    users: &[User],
) -> CallResult<Outcome> {
    let appservice = Appservice { http: http.clone(), token: reg.as_token.clone() };
    let localpart = format!("bench_{}d", plan.run_id);
    appservice.register(&localpart).await?;
    let senders = &users[..plan.clients.min(users.len())];
    let room = senders[0].create_public_room().await?;
    for user in &senders[1..] {
        user.join(&room).await?;
    }
    let ghost = encode(&format!("@{localpart}:{}", reg.server_name));
    appservice.call(Method::POST, &format!("/join/{}?user_id={ghost}", encode(&room)), &json!({})).await?;

    let total = (plan.as_rate as f64 * plan.as_seconds) as usize;
    let per_sender = total.div_ceil(senders.len());
    let interval = Duration::from_secs_f64(senders.len() as f64 / plan.as_rate as f64);
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (s, user) in senders.iter().cloned().enumerate() {
        let (room, run_id) = (room.clone(), plan.run_id.clone());
        set.spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sent = Vec::with_capacity(per_sender);
            for m in 0..per_sender {
                ticks.tick().await;
                let at = Instant::now();
                let id =
                    user.send_text(&room, &format!("{run_id}d{s}-{m}"), "delivered to the bridge").await?;
                sent.push((id, at));
            }
            Ok::<_, String>(sent)
        });
    }
    let mut sent = Vec::with_capacity(total);
    while let Some(joined) = set.join_next().await {
        sent.extend(joined.map_err(|e| e.to_string())??);
    }
    let sending = started.elapsed();
    let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    let arrived = listener.wait_all(&ids, Duration::from_secs(60)).await;
    let mut lags: Vec<Duration> = sent
        .iter()
        .filter_map(|(id, at)| listener.arrival(id).map(|arrival| arrival.saturating_duration_since(*at)))
        .collect();
    let note = format!(
        "{} senders at {} msg/s offered, sent at {:.0}/s; {arrived} of {} arrived; latency = send request → transaction",
        senders.len(),
        plan.as_rate,
        sent.len() as f64 / sending.as_secs_f64(),
        sent.len()
    );
    Ok(Outcome::new("appservice delivery", &mut lags, sending, note))
}
