//! Delivery to push gateways (the spec's Push Gateway API): each HTTP pusher is an outbox
//! queue over its user's notifications. A notification goes to `POST {data.url}` with the
//! event's details (or only its ID, for `format: event_id_only`, which Element X uses), the
//! user's unread count as the app's badge, the pusher's device entry and the tweaks of the
//! rule that matched. A notification of a room the user has read since is not pushed. A read
//! receipt sends a count-only notification when the badge changed, so apps clear it. A push
//! key the gateway lists in `rejected` removes that pusher; a `4xx` drops the notification;
//! anything else failing (`5xx`, no answer in time, no connection) is retried by the outbox.
//! Every request goes through the outbound address guard, with the server-wide
//! `ip_range_denylist` / `ip_range_allowlist`. Pushers are set, checked and started here
//! whatever their kind; email pushers are delivered by `EmailNotifier`.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::{StatusCode, Url};
use ruma::{DeviceId, UserId, events::StateEventType};
use serde_json::{Map, Value as JsonValue, json, value::RawValue as RawJsonValue};
use tokio::sync::Semaphore;

use super::{
    clock::Clock,
    email_notifier::EmailNotifier,
    outbound::{self, UrlRefusal, ip_guard::Policy},
    outbox::{Courier, Delivering, Delivery, Outbox, Parcels},
    push::{Notifications, parse_pusher_queue, pusher_kind, pusher_queue, user_queues},
    push_fanout::PushFanout,
    rooms::{events::Events, state::RoomStates},
    stream::{Stale, Stream},
};
use crate::{
    Error, Result,
    config::Config,
    storage::tables::{NotificationRecord, PusherRecord},
};

/// The path every push gateway serves (the spec's Push Gateway API).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// Requests to gateways under way at once, over all pushers.
const CONCURRENT_DELIVERIES: usize = 64;
/// The most of a gateway's answer that is read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// The most of a pusher's `data` that is stored.
const MAX_DATA_BYTES: usize = 16 * 1024;
const USER_AGENT: &str = concat!("conduit/", env!("CARGO_PKG_VERSION"), " (Matrix push)");

/// The kinds of pusher delivered.
#[derive(Clone, Copy)]
enum PusherKind {
    Http,
    Email,
}

/// What one queue delivers.
pub enum PushParcel {
    /// A notification to push.
    Notify(NotificationRecord),
    /// A notification of a room read since: nothing to send, the queue moves past it.
    Read,
    /// The badge changed (a receipt): a count-only notification.
    Badge,
}

pub struct PushGateways {
    outbox: Arc<Outbox>,
    notifications: Arc<Notifications>,
    events: Arc<Events>,
    states: Arc<RoomStates>,
    stream: Arc<Stream>,
    clock: Arc<dyn Clock>,
    policy: Arc<Policy>,
    client: reqwest::Client,
    timeout: Duration,
    permits: Semaphore,
    /// Pushers owed a badge update (a receipt moved), by destination.
    badges_owed: Mutex<HashSet<String>>,
    /// The badge each pusher was last sent, so an unchanged one is not sent again.
    badges_sent: Mutex<HashMap<String, u64>>,
    /// Email pushers' delivery, when SMTP is configured.
    email: Option<Arc<EmailNotifier>>,
}

/// The parts of a stored pusher delivery needs.
struct HttpPusher {
    url: Url,
    event_id_only: bool,
    /// `data` without `url`, as gateways receive it.
    data: Map<String, JsonValue>,
    app_id: String,
    pushkey: String,
    pushkey_ts: u64,
}

fn http_pusher(record: &PusherRecord) -> Option<HttpPusher> {
    let pusher: JsonValue = serde_json::from_str(record.pusher.get()).ok()?;
    if pusher.get("kind").and_then(JsonValue::as_str) != Some("http") {
        return None;
    }
    let mut data = pusher.get("data")?.as_object()?.clone();
    let url = Url::parse(data.remove("url")?.as_str()?).ok()?;
    Some(HttpPusher {
        url,
        event_id_only: data.get("format").and_then(JsonValue::as_str) == Some("event_id_only"),
        data,
        app_id: pusher.get("app_id")?.as_str()?.to_owned(),
        pushkey: pusher.get("pushkey")?.as_str()?.to_owned(),
        pushkey_ts: record.created_ms / 1000,
    })
}

/// The tweaks of a rule's actions (`set_tweak` entries), as gateways receive them.
fn tweaks(actions: &JsonValue) -> Map<String, JsonValue> {
    let mut tweaks = Map::new();
    for action in actions.as_array().into_iter().flatten() {
        if let Some(name) = action.get("set_tweak").and_then(JsonValue::as_str) {
            let value = action.get("value").cloned().unwrap_or(JsonValue::Bool(true));
            tweaks.insert(name.to_owned(), value);
        }
    }
    tweaks
}

impl PushGateways {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        outbox: Arc<Outbox>,
        notifications: Arc<Notifications>,
        events: Arc<Events>,
        states: Arc<RoomStates>,
        stream: Arc<Stream>,
        clock: Arc<dyn Clock>,
        email: Option<Arc<EmailNotifier>>,
    ) -> Result<Self> {
        let policy = Arc::new(Policy {
            deny_ranges: config.ip_range_denylist.clone(),
            allow_ranges: config.ip_range_allowlist.clone(),
            ..Policy::default()
        });
        let timeout = Duration::from_secs(config.push_timeout_secs.max(1));
        let client = outbound::guarded_client(&policy, timeout, USER_AGENT)
            .map_err(|e| Error::internal(format!("building the push HTTP client: {e}")))?;
        Ok(Self {
            outbox,
            notifications,
            events,
            states,
            stream,
            clock,
            policy,
            client,
            timeout,
            permits: Semaphore::new(CONCURRENT_DELIVERIES),
            badges_owed: Mutex::new(HashSet::new()),
            badges_sent: Mutex::new(HashMap::new()),
            email,
        })
    }

    /// Start every pusher's queue (at server start): HTTP pushers here, email pushers in
    /// `EmailNotifier` (unless SMTP is off, when they wait). Pushers from before queues
    /// existed start from now.
    pub fn start(self: &Arc<Self>) -> Result<()> {
        self.outbox.start()?;
        self.outbox.serve(self);
        if let Some(email) = &self.email {
            self.outbox.serve(email);
        }
        // The queue that writes pushers' notification rows; it rings their queues.
        PushFanout::start(Arc::clone(&self.notifications), Arc::clone(self), &self.outbox, &self.stream)?;
        let now = self.stream.committed();
        for (user_id, app_id, pushkey) in self.notifications.all_pushers()? {
            let Some(record) = self.notifications.pusher(&user_id, &app_id, &pushkey)? else { continue };
            match (pusher_kind(&record).as_deref(), &self.email) {
                (Some("http"), _) => {
                    let destination = pusher_queue(&user_id, &app_id, &pushkey);
                    self.outbox.open(Self::KIND, &destination, now, false)?;
                    self.outbox.resume(self, &destination);
                }
                (Some("email"), Some(email)) => email.open(&user_id, &app_id, &pushkey, false)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Check, store and start a pusher set by a client (`POST /pushers/set`), or delete one.
    #[allow(clippy::too_many_arguments)]
    pub fn set_pusher(
        self: &Arc<Self>,
        user_id: &UserId,
        device_id: &DeviceId,
        app_id: &str,
        pushkey: &str,
        pusher: Option<Box<RawJsonValue>>,
        append: bool,
    ) -> Result<()> {
        let kind = match &pusher {
            Some(pusher) => Some(self.check(pushkey, pusher)?),
            None => None,
        };
        let added = self.notifications.set_pusher(
            user_id,
            device_id,
            app_id,
            pushkey,
            pusher,
            append,
            self.clock.now_ms(),
        )?;
        if kind.is_some() {
            self.stream.stale_elsewhere(Stale::Pusher(user_id.to_owned()));
        }
        let destination = pusher_queue(user_id, app_id, pushkey);
        // A new pusher gets what is notified from now on; an updated one keeps its place.
        // A queue of another kind (the pusher deleted, or changed kind) finds it gone and
        // ends.
        match kind {
            Some(PusherKind::Http) => {
                self.outbox.open(Self::KIND, &destination, self.stream.committed(), added)?;
                self.outbox.run(self, &destination);
            }
            _ => {
                self.outbox.ring(Self::KIND, &destination);
            }
        }
        if let Some(email) = &self.email {
            match kind {
                Some(PusherKind::Email) => email.open(user_id, app_id, pushkey, added)?,
                _ => email.ring(user_id, app_id, pushkey),
            }
        }
        Ok(())
    }

    /// What `POST /pushers/set` refuses: a kind this server does not deliver, an HTTP
    /// pusher without a gateway URL it may call, an email pusher whose push key is not an
    /// address, `data` beyond its bound.
    fn check(&self, pushkey: &str, pusher: &RawJsonValue) -> Result<PusherKind> {
        let value: JsonValue =
            serde_json::from_str(pusher.get()).map_err(|e| Error::bad_json(e.to_string()))?;
        let data = value.get("data").cloned().unwrap_or_default();
        if data.to_string().len() > MAX_DATA_BYTES {
            return Err(Error::invalid_param(format!("Pusher data is larger than {MAX_DATA_BYTES} bytes")));
        }
        match value.get("kind").and_then(JsonValue::as_str) {
            Some("http") => {}
            Some("email") => {
                let Some(email) = &self.email else {
                    return Err(Error::invalid_param(
                        "Email notifications are not available: this server has no SMTP server configured",
                    ));
                };
                email.check(pushkey)?;
                return Ok(PusherKind::Email);
            }
            _ => return Err(Error::invalid_param("Unsupported pusher kind")),
        }
        let url = data
            .get("url")
            .and_then(JsonValue::as_str)
            .ok_or_else(|| Error::invalid_param("An HTTP pusher needs data.url"))?;
        let url = Url::parse(url).map_err(|e| Error::invalid_param(format!("data.url is not a URL: {e}")))?;
        if url.path() != NOTIFY_PATH {
            return Err(Error::invalid_param(format!("The pusher URL's path must be {NOTIFY_PATH}")));
        }
        outbound::check_url(&self.policy, &url).map_err(|refusal| match refusal {
            UrlRefusal::Scheme => Error::invalid_param("The pusher URL must be http or https"),
            UrlRefusal::NoHost => Error::invalid_param("The pusher URL has no host"),
            UrlRefusal::Guard(refusal) => {
                Error::invalid_param(format!("The server may not send to this push gateway: {refusal}"))
            }
        })?;
        Ok(PusherKind::Http)
    }

    /// Events notified these users (the write path, after the commit): ring their queues.
    pub fn notified<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        for user_id in users {
            self.outbox.ring(Self::KIND, &user_queues(user_id));
            if let Some(email) = &self.email {
                email.notified(user_id);
            }
        }
    }

    /// The user's read receipt moved: their pushers owe the app a badge update.
    pub fn read_moved(self: &Arc<Self>, user_id: &UserId) -> Result<()> {
        let ids = self.notifications.pusher_ids(user_id)?;
        if ids.is_empty() {
            return Ok(());
        }
        {
            let mut owed = self.badges_owed.lock().unwrap_or_else(|p| p.into_inner());
            for (app_id, pushkey) in &ids {
                owed.insert(pusher_queue(user_id, app_id, pushkey));
            }
        }
        self.outbox.ring(Self::KIND, &user_queues(user_id));
        Ok(())
    }

    fn badge_owed(&self, destination: &str) -> bool {
        self.badges_owed.lock().unwrap_or_else(|p| p.into_inner()).contains(destination)
    }

    /// The notification object for one pushed event.
    fn notification(
        &self,
        user_id: &UserId,
        pusher: &HttpPusher,
        record: &NotificationRecord,
        badge: u64,
    ) -> Result<Option<JsonValue>> {
        let Some(event) = self.events.get(&record.event_id)? else { return Ok(None) };
        let pdu = &event.pdu;
        let tweaks = tweaks(&record.actions);
        let high = tweaks.contains_key("sound")
            || tweaks.get("highlight").is_some_and(|h| h.as_bool() != Some(false))
            || pdu.kind.to_string() == "m.room.encrypted";
        let device = json!({
            "app_id": pusher.app_id,
            "pushkey": pusher.pushkey,
            "pushkey_ts": pusher.pushkey_ts,
            "data": pusher.data,
            "tweaks": tweaks,
        });
        let mut notification = json!({
            "event_id": pdu.event_id,
            "room_id": pdu.room_id,
            "prio": if high { "high" } else { "low" },
            "counts": {"unread": badge},
            "devices": [device],
        });
        if pusher.event_id_only {
            return Ok(Some(notification));
        }
        let state = self.states.current_state(&pdu.room_id)?;
        let string_of = |kind: StateEventType, key: &str, field: &str| -> Result<Option<String>> {
            let Some(id) = state.get(&(kind, key.to_owned())) else { return Ok(None) };
            Ok(self.events.get(id)?.and_then(|e| {
                e.pdu.content_value().get(field).and_then(JsonValue::as_str).map(str::to_owned)
            }))
        };
        let fields = notification.as_object_mut().expect("an object");
        fields.insert("type".to_owned(), json!(pdu.kind));
        fields.insert("sender".to_owned(), json!(pdu.sender));
        fields.insert("content".to_owned(), pdu.content_value());
        if let Some(name) = string_of(StateEventType::RoomMember, pdu.sender.as_str(), "displayname")? {
            fields.insert("sender_display_name".to_owned(), json!(name));
        }
        if let Some(name) = string_of(StateEventType::RoomName, "", "name")? {
            fields.insert("room_name".to_owned(), json!(name));
        }
        if let Some(alias) = string_of(StateEventType::RoomCanonicalAlias, "", "alias")? {
            fields.insert("room_alias".to_owned(), json!(alias));
        }
        if pdu.kind.to_string() == "m.room.member" {
            fields.insert(
                "user_is_target".to_owned(),
                json!(pdu.state_key.as_deref() == Some(user_id.as_str())),
            );
        }
        Ok(Some(notification))
    }

    /// POST one notification; what the gateway's answer means for the queue.
    async fn post(&self, user_id: &UserId, pusher: &HttpPusher, notification: JsonValue) -> Delivery {
        if let Err(refusal) = outbound::check_url(&self.policy, &pusher.url) {
            return Delivery::Dropped(format!("gateway refused by the address guard: {refusal}"));
        }
        let Ok(_permit) = self.permits.acquire().await else {
            return Delivery::Retry("shutting down".to_owned());
        };
        let sent = self
            .client
            .post(pusher.url.clone())
            .json(&json!({ "notification": notification }))
            .timeout(self.timeout)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => {
                return match outbound::blocked_cause(&e) {
                    Some(refusal) => {
                        Delivery::Dropped(format!("gateway refused by the address guard: {refusal}"))
                    }
                    None => Delivery::Retry(format!("gateway unreachable: {e}")),
                };
            }
        };
        let status = response.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Delivery::Retry(format!("gateway answered {status}"));
        }
        if !status.is_success() {
            return Delivery::Dropped(format!("gateway answered {status}"));
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_ANSWER_BYTES.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() >= MAX_ANSWER_BYTES {
                        break;
                    }
                }
                Ok(None) => break,
                // Delivered: the gateway said 2xx; only its list of rejections is lost.
                Err(_) => break,
            }
        }
        let rejected = serde_json::from_slice::<JsonValue>(&body)
            .ok()
            .and_then(|answer| answer.get("rejected").and_then(JsonValue::as_array).cloned())
            .unwrap_or_default();
        if rejected.iter().any(|key| key.as_str() == Some(pusher.pushkey.as_str())) {
            if let Err(e) = self.notifications.remove_pusher(user_id, &pusher.app_id, &pusher.pushkey) {
                return Delivery::Retry(format!("removing the rejected pusher failed: {e}"));
            }
            return Delivery::Gone("the gateway rejected the push key".to_owned());
        }
        Delivery::Done
    }
}

impl Courier for PushGateways {
    type Parcel = PushParcel;
    const KIND: &'static str = "push";
    /// One notification per request, as the Push Gateway API defines it.
    const BATCH: usize = 1;

    fn pending(&self, destination: &str, after: u64, limit: usize) -> Result<Option<Parcels<PushParcel>>> {
        let Some((user_id, app_id, pushkey)) = parse_pusher_queue(destination) else { return Ok(None) };
        let Some(record) = self.notifications.pusher(&user_id, &app_id, &pushkey)? else { return Ok(None) };
        if http_pusher(&record).is_none() {
            return Ok(None);
        }
        let pending: Vec<(u64, PushParcel)> = self
            .notifications
            .pending_after(&user_id, after, limit)?
            .into_iter()
            .map(|(stream, record, read)| {
                (stream, if read { PushParcel::Read } else { PushParcel::Notify(record) })
            })
            .collect();
        if pending.is_empty() && self.badge_owed(destination) {
            return Ok(Some(vec![(after, PushParcel::Badge)]));
        }
        Ok(Some(pending))
    }

    fn deliver<'a>(&'a self, destination: &'a str, parcels: &'a [(u64, PushParcel)]) -> Delivering<'a> {
        Box::pin(async move {
            let Some((user_id, app_id, pushkey)) = parse_pusher_queue(destination) else {
                return Delivery::Gone("not a pusher".to_owned());
            };
            let pusher = match self.notifications.pusher(&user_id, &app_id, &pushkey) {
                Ok(Some(record)) => match http_pusher(&record) {
                    Some(pusher) => pusher,
                    None => return Delivery::Gone("not an HTTP pusher".to_owned()),
                },
                Ok(None) => return Delivery::Gone("pusher removed".to_owned()),
                Err(e) => return Delivery::Retry(format!("reading the pusher failed: {e}")),
            };
            for (_, parcel) in parcels {
                let outcome = match parcel {
                    PushParcel::Read => Delivery::Done,
                    PushParcel::Notify(record) => {
                        let built = self.notifications.unread_rooms(&user_id).and_then(|badge| {
                            Ok((badge, self.notification(&user_id, &pusher, record, badge)?))
                        });
                        match built {
                            Ok((badge, Some(notification))) => {
                                let outcome = self.post(&user_id, &pusher, notification).await;
                                if matches!(outcome, Delivery::Done) {
                                    self.badge_sent(destination, badge);
                                }
                                outcome
                            }
                            Ok((_, None)) => Delivery::Done,
                            Err(e) => Delivery::Retry(format!("building the notification failed: {e}")),
                        }
                    }
                    PushParcel::Badge => self.deliver_badge(destination, &user_id, &pusher).await,
                };
                if !matches!(outcome, Delivery::Done) {
                    return outcome;
                }
            }
            Delivery::Done
        })
    }
}

impl PushGateways {
    fn badge_sent(&self, destination: &str, badge: u64) {
        self.badges_sent.lock().unwrap_or_else(|p| p.into_inner()).insert(destination.to_owned(), badge);
    }

    /// The count-only notification a receipt owes, unless the app has that badge already.
    async fn deliver_badge(&self, destination: &str, user_id: &UserId, pusher: &HttpPusher) -> Delivery {
        let badge = match self.notifications.unread_rooms(user_id) {
            Ok(badge) => badge,
            Err(e) => return Delivery::Retry(format!("counting unread rooms failed: {e}")),
        };
        let known = self.badges_sent.lock().unwrap_or_else(|p| p.into_inner()).get(destination).copied();
        let outcome = if known == Some(badge) {
            Delivery::Done
        } else {
            let notification = json!({
                "prio": "high",
                "counts": {"unread": badge},
                "devices": [{
                    "app_id": pusher.app_id,
                    "pushkey": pusher.pushkey,
                    "pushkey_ts": pusher.pushkey_ts,
                    "data": pusher.data,
                    "tweaks": {},
                }],
            });
            self.post(user_id, pusher, notification).await
        };
        if matches!(outcome, Delivery::Done) {
            self.badge_sent(destination, badge);
        }
        if !matches!(outcome, Delivery::Retry(_)) {
            self.badges_owed.lock().unwrap_or_else(|p| p.into_inner()).remove(destination);
        }
        outcome
    }
}
