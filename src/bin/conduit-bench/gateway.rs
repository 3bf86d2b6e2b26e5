//! A push gateway for the `push` scenario: it accepts every notification at
//! `/_matrix/push/v1/notify` on loopback and counts them per event, so the scenario can time
//! how long a message takes to reach every member's pusher.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::post};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::Notify};

#[derive(Default)]
struct Counts {
    per_event: HashMap<String, usize>,
    total: usize,
}

#[derive(Clone, Default)]
pub struct Gateway {
    counts: Arc<Mutex<Counts>>,
    arrived: Arc<Notify>,
}

async fn notify(State(gateway): State<Gateway>, Json(body): Json<Value>) -> Json<Value> {
    let event = body["notification"]["event_id"].as_str().unwrap_or_default().to_owned();
    {
        let mut counts = gateway.counts.lock().unwrap_or_else(|p| p.into_inner());
        *counts.per_event.entry(event).or_default() += 1;
        counts.total += 1;
    }
    gateway.arrived.notify_waiters();
    Json(json!({"rejected": []}))
}

impl Gateway {
    /// Listen on a free loopback port; answers the notify URL.
    pub async fn start() -> Result<(Self, String), String> {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("gateway: {e}"))?;
        let addr: SocketAddr = listener.local_addr().map_err(|e| format!("gateway: {e}"))?;
        let gateway = Gateway::default();
        let app = Router::new().route("/_matrix/push/v1/notify", post(notify)).with_state(gateway.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((gateway, format!("http://{addr}/_matrix/push/v1/notify")))
    }

    pub fn total(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    fn of(&self, event_id: &str) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).per_event.get(event_id).copied().unwrap_or(0)
    }

    /// Wait until `event_id` was pushed `count` times, or `limit` passed; answers whether it was.
    pub async fn wait_for(&self, event_id: &str, count: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let arrived = self.arrived.notified();
            if self.of(event_id) >= count {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.of(event_id) >= count;
            }
        }
    }

    /// Wait until `total` notifications arrived in all, or `limit` passed.
    pub async fn wait_total(&self, total: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let arrived = self.arrived.notified();
            if self.total() >= total {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.total() >= total;
            }
        }
    }
}
