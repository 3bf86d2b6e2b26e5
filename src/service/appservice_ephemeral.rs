//! Typing notices and read receipts for application services that ask for them
//! (`receive_ephemeral`, MSC2409): a listener on the stream's change feed turns each typing or
//! receipt change in a room an appservice is interested in into an ephemeral event, and a
//! task per appservice sends them in transactions of their own (`ephemeral` and
//! `de.sorunome.msc2409.ephemeral`, no `events`), retried on the server's clock while the
//! appservice is down. Unlike room events they are not kept on disk: they describe a moment
//! (who types now) or a state the appservice can read again (receipts), so what is waiting
//! when the server stops, or beyond the last `MAX_WAITING` per appservice, is dropped.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use ruma::{RoomId, events::room::member::MembershipState};
use serde_json::{Value as JsonValue, json};
use tokio::sync::{Notify, watch};

use super::{
    appservices::{Appservices, encode_segment},
    clock::Clock,
    rooms::{
        members::Memberships,
        receipts::{Receipts, receipt_content},
        typing::Typing,
    },
    stream::{Change, Heard, Stream},
};
use crate::matrix::appservice::Registration;

/// Ephemeral events kept per appservice while it does not take them.
const MAX_WAITING: usize = 1000;
/// Ephemeral events per transaction.
const BATCH: usize = 100;
const FIRST_RETRY_MS: u64 = 1000;
const MAX_RETRY_MS: u64 = 60_000;

#[derive(Default)]
struct Waiting {
    events: VecDeque<JsonValue>,
    /// Whether a task sends for this appservice.
    running: bool,
}

pub struct AppserviceEphemeral {
    appservices: Arc<Appservices>,
    typing: Arc<Typing>,
    receipts: Arc<Receipts>,
    members: Arc<Memberships>,
    stream: Arc<Stream>,
    clock: Arc<dyn Clock>,
    waiting: Mutex<HashMap<String, Waiting>>,
    bell: Arc<Notify>,
    /// Transactions sent since start, for unique transaction IDs.
    sent: std::sync::atomic::AtomicU64,
    started_ms: u64,
    /// Set when the server stops: the listener and the sending tasks end.
    stop: watch::Sender<bool>,
}

impl AppserviceEphemeral {
    pub fn new(
        appservices: Arc<Appservices>,
        typing: Arc<Typing>,
        receipts: Arc<Receipts>,
        members: Arc<Memberships>,
        stream: Arc<Stream>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let started_ms = clock.now_ms();
        Self {
            appservices,
            typing,
            receipts,
            members,
            stream,
            clock,
            waiting: Mutex::default(),
            bell: Arc::new(Notify::new()),
            sent: Default::default(),
            started_ms,
            stop: watch::channel(false).0,
        }
    }

    /// Listen to the change feed (called once the server serves, inside its runtime).
    pub fn start(self: &Arc<Self>) {
        let mut listener = self.stream.listen();
        let me = Arc::downgrade(self);
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            loop {
                let heard = tokio::select! {
                    heard = listener.next() => heard,
                    _ = stop.changed() => return,
                };
                let Some(me) = me.upgrade() else { return };
                match heard {
                    Heard::Change(announced) => {
                        if let Change::Room(room_id) = announced.change {
                            me.room_changed(&room_id, announced.position);
                        }
                    }
                    Heard::Missed => tracing::debug!("appservice ephemeral listener fell behind"),
                    Heard::Closed => return,
                }
            }
        });
    }

    /// End the listener and the sending tasks (at shutdown): what waits is dropped, and
    /// nothing of theirs holds the database any more.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A change at `position` in `room_id`: if it was a typing or receipt change, queue it
    /// for each appservice that wants it.
    fn room_changed(self: &Arc<Self>, room_id: &RoomId, position: u64) {
        let registry = self.appservices.registry();
        let wanting: Vec<&Arc<Registration>> =
            registry.list.iter().filter(|a| a.receive_ephemeral && a.url.is_some()).collect();
        if wanting.is_empty() {
            return;
        }
        let mut edus = Vec::new();
        if self.typing.last_position(room_id) == position {
            edus.push(json!({
                "type": "m.typing",
                "room_id": room_id,
                "content": { "user_ids": self.typing.typing_users(room_id) },
            }));
        }
        for appservice in wanting {
            let interested = match self.interested(appservice, room_id) {
                Ok(interested) => interested,
                Err(e) => {
                    tracing::warn!(room_id = %room_id, error = %e, "reading a room's members for an appservice failed");
                    false
                }
            };
            if !interested {
                continue;
            }
            let mut these = edus.clone();
            // Private receipts are for their owner alone: an appservice sees public ones.
            match self.receipts.changed(
                &appservice.sender,
                room_id,
                Some(position.saturating_sub(1)),
                position,
            ) {
                Ok(receipts) => {
                    let public: Vec<_> = receipts
                        .into_iter()
                        .filter(|r| r.receipt_type == super::rooms::receipts::READ)
                        .collect();
                    if !public.is_empty() {
                        these.push(json!({ "type": "m.receipt", "room_id": room_id, "content": receipt_content(&public) }));
                    }
                }
                Err(e) => {
                    tracing::warn!(room_id = %room_id, error = %e, "reading receipts for an appservice failed")
                }
            }
            if !these.is_empty() {
                self.queue(appservice, these);
            }
        }
    }

    fn interested(&self, appservice: &Registration, room_id: &RoomId) -> crate::Result<bool> {
        if appservice.claims_room(room_id) {
            return Ok(true);
        }
        Ok(self
            .members
            .members_with(room_id, &MembershipState::Join)?
            .iter()
            .any(|u| appservice.may_act_as(u)))
    }

    fn queue(self: &Arc<Self>, appservice: &Arc<Registration>, events: Vec<JsonValue>) {
        let spawn = {
            let mut waiting = self.lock();
            let entry = waiting.entry(appservice.id.clone()).or_default();
            for event in events {
                if entry.events.len() >= MAX_WAITING {
                    entry.events.pop_front();
                }
                entry.events.push_back(event);
            }
            !std::mem::replace(&mut entry.running, true)
        };
        if spawn {
            tokio::spawn(Self::send_for(Arc::downgrade(self), self.stop.subscribe(), appservice.id.clone()));
        } else {
            self.bell.notify_waiters();
        }
    }

    /// Send what waits for one appservice until nothing does, or the server stops. It holds
    /// the service only while it works, never while it waits.
    async fn send_for(me: std::sync::Weak<Self>, mut stop: watch::Receiver<bool>, id: String) {
        let mut failures: u32 = 0;
        loop {
            if *stop.borrow() {
                return;
            }
            let Some(this) = me.upgrade() else { return };
            let Some(wait) = this.send_once(&id, &mut failures).await else { return };
            let (clock, bell, at) = (Arc::clone(&this.clock), Arc::clone(&this.bell), wait);
            drop(this);
            if at == 0 {
                continue;
            }
            tokio::select! {
                () = clock.sleep_until(at) => {}
                () = bell.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One transaction of what waits for `id`: `None` when nothing waits (the task ends),
    /// `Some(0)` to go on at once, `Some(at)` to try again at `at` on the server's clock.
    async fn send_once(&self, id: &str, failures: &mut u32) -> Option<u64> {
        let id = id.to_owned();
        {
            let batch: Vec<JsonValue> = {
                let mut waiting = self.lock();
                let entry = waiting.get_mut(&id)?;
                if entry.events.is_empty() {
                    entry.running = false;
                    return None;
                }
                let n = entry.events.len().min(BATCH);
                entry.events.iter().take(n).cloned().collect()
            };
            let registry = self.appservices.registry();
            let Some(appservice) = registry.by_id(&id).cloned() else {
                self.lock().remove(&id);
                return None;
            };
            drop(registry);
            if self.put(&appservice, &batch).await {
                *failures = 0;
                let mut waiting = self.lock();
                if let Some(entry) = waiting.get_mut(&id) {
                    // What was sent is at the front, unless the queue overflowed meanwhile
                    // and dropped it already.
                    let n = batch.len().min(entry.events.len());
                    entry.events.drain(..n);
                }
                return Some(0);
            }
            let wait = FIRST_RETRY_MS.saturating_mul(1 << (*failures).min(16)).min(MAX_RETRY_MS);
            *failures = failures.saturating_add(1);
            Some(self.clock.now_ms().saturating_add(wait))
        }
    }

    async fn put(&self, appservice: &Registration, events: &[JsonValue]) -> bool {
        let n = self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let txn_id = format!("ephemeral-{}-{n}", self.started_ms);
        let path = format!("/_matrix/app/v1/transactions/{}", encode_segment(&txn_id));
        let Some(url) = Appservices::endpoint(appservice, &path) else { return true };
        let body = json!({
            "events": [],
            "ephemeral": events,
            "de.sorunome.msc2409.ephemeral": events,
        });
        match self
            .appservices
            .http()
            .put(url)
            .bearer_auth(&appservice.hs_token)
            .json(&body)
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => true,
            Ok(response) => {
                tracing::debug!(appservice = %appservice.id, status = %response.status(), "ephemeral transaction refused");
                false
            }
            Err(e) => {
                tracing::debug!(appservice = %appservice.id, error = %e, "ephemeral transaction failed");
                false
            }
        }
    }
}
