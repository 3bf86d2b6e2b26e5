//! Push rules, notifications and pushers. Each user's rules live in their account data
//! (`m.push_rules`, the spec's server defaults until changed), so clients see changes
//! through sync. Every new event is evaluated against the rules of every joined member
//! but its sender, in the event's own write batch; the resulting notify/highlight rows
//! give unread counts (reset by receipts) and `/notifications`. Pushers are stored here;
//! `PushGateways` delivers the notifications to them. Owns the `push_actions`,
//! `notifications` and `pushers` tables.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
};

use ruma::{
    DeviceId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::sync::sync_events::UnreadNotificationsCount,
    events::{
        StateEventType, TimelineEventType,
        room::{member::MembershipState, power_levels::RoomPowerLevels},
    },
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    serde::Raw,
};
use serde_json::{Value as JsonValue, json, value::RawValue as RawJsonValue};

use super::{
    account_data::AccountData,
    rooms::{
        events::{Events, StoredEvent},
        members::Memberships,
        receipts::{self, Receipts},
        relations::{self, THREAD},
        state::StateMap,
    },
};
use crate::{
    Error, Result,
    matrix::{
        limits::{self, MAX_APP_ID_CHARS, MAX_PUSHKEY_BYTES},
        pdu::Pdu,
    },
    storage::{
        Direction, KvStore, Table, WriteBatch,
        codec::KeyCodec,
        kv::KeyRange,
        tables::{NOTIFICATIONS, NotificationRecord, PUSH_ACTIONS, PUSHERS, PushActionRecord, PusherRecord},
    },
};

pub const PUSH_RULES: &str = "m.push_rules";
/// Thread key of events outside any thread.
const MAIN: &str = "main";
/// Rulesets kept parsed; evaluation reads one per member per event.
const RULESET_CACHE_ENTRIES: usize = 10_000;

#[derive(serde::Serialize, serde::Deserialize)]
struct PushRulesContent {
    global: Ruleset,
}

/// Unread counts of a room: outside threads, and per thread root.
pub struct UnreadCounts {
    pub room: UnreadNotificationsCount,
    pub threads: BTreeMap<OwnedEventId, UnreadNotificationsCount>,
}

/// The outcome of evaluating an event for one user who is notified.
pub struct PendingNotification {
    pub user_id: OwnedUserId,
    highlight: bool,
    thread: Option<String>,
    actions: JsonValue,
}

/// One entry of `/notifications`.
pub struct NotificationEntry {
    pub stream: u64,
    pub room_id: OwnedRoomId,
    pub event_id: OwnedEventId,
    pub actions: Vec<Action>,
    pub ts: u64,
    pub read: bool,
}

pub struct Notifications {
    actions: Table<(OwnedUserId, OwnedRoomId, u64), PushActionRecord>,
    notifications: Table<(OwnedUserId, u64), NotificationRecord>,
    pushers: Table<(OwnedUserId, String, String), PusherRecord>,
    account_data: Arc<AccountData>,
    events: Arc<Events>,
    members: Arc<Memberships>,
    receipts: Arc<Receipts>,
    store: Arc<dyn KvStore>,
    rulesets: Mutex<HashMap<OwnedUserId, Arc<Ruleset>>>,
    /// Serialises rule changes with loads into the cache, so two changes cannot lose one
    /// another and a load cannot put back rules a change just replaced.
    rules_write: Mutex<()>,
}

impl Notifications {
    pub fn new(
        store: &Arc<dyn KvStore>,
        account_data: Arc<AccountData>,
        events: Arc<Events>,
        members: Arc<Memberships>,
        receipts: Arc<Receipts>,
    ) -> Self {
        Self {
            actions: PUSH_ACTIONS.open(store),
            notifications: NOTIFICATIONS.open(store),
            pushers: PUSHERS.open(store),
            account_data,
            events,
            members,
            receipts,
            store: Arc::clone(store),
            rulesets: Mutex::new(HashMap::new()),
            rules_write: Mutex::new(()),
        }
    }

    // ---- push rules ----

    /// The user's push rules: as stored, or the spec's defaults.
    pub fn ruleset(&self, user_id: &UserId) -> Result<Arc<Ruleset>> {
        if let Some(cached) = self.lock_rulesets().get(user_id) {
            return Ok(Arc::clone(cached));
        }
        let _writing = self.rules_write.lock().unwrap_or_else(|p| p.into_inner());
        let ruleset = Arc::new(self.stored_ruleset(user_id)?);
        let mut cache = self.lock_rulesets();
        if cache.len() >= RULESET_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(user_id.to_owned(), Arc::clone(&ruleset));
        Ok(ruleset)
    }

    fn stored_ruleset(&self, user_id: &UserId) -> Result<Ruleset> {
        let stored: Option<PushRulesContent> = self.account_data.get_as(user_id, None, PUSH_RULES)?;
        Ok(stored.map_or_else(|| Ruleset::server_default(user_id), |c| c.global))
    }

    /// Change the user's rules with `change` and store the result (announced through sync).
    pub fn update_ruleset(
        &self,
        user_id: &UserId,
        change: impl FnOnce(&mut Ruleset) -> Result<()>,
    ) -> Result<()> {
        let _writing = self.rules_write.lock().unwrap_or_else(|p| p.into_inner());
        let mut ruleset = self.stored_ruleset(user_id)?;
        change(&mut ruleset)?;
        let content = serde_json::value::to_raw_value(&PushRulesContent { global: ruleset })
            .map_err(|e| Error::internal(format!("serialising push rules: {e}")))?;
        self.account_data.set(user_id, None, PUSH_RULES, content)?;
        self.lock_rulesets().remove(user_id);
        Ok(())
    }

    /// The `m.push_rules` account data event.
    pub fn push_rules_event<T>(&self, user_id: &UserId) -> Result<Raw<T>> {
        let value = json!({ "type": PUSH_RULES, "content": self.push_rules_content(user_id)? });
        Ok(Raw::from_json(crate::service::rooms::render::to_raw(&value)?))
    }

    /// The `m.push_rules` account data content: the user's rules, defaults included.
    pub fn push_rules_content(&self, user_id: &UserId) -> Result<Box<RawJsonValue>> {
        let ruleset = self.ruleset(user_id)?;
        crate::service::rooms::render::to_raw(&json!({ "global": &*ruleset }))
    }

    fn lock_rulesets(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedUserId, Arc<Ruleset>>> {
        self.rulesets.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- evaluation ----

    /// Evaluate an event about to be appended for every joined member but its sender (and
    /// for the invitee of an invite), with the room state before it and its joined members. Done before the event
    /// takes a stream position, so a large room's evaluation holds back no one's sync.
    pub fn evaluate(
        &self,
        pdu: &Pdu,
        state: &StateMap,
        power_levels: RoomPowerLevels,
        joined: &[OwnedUserId],
    ) -> Result<Vec<PendingNotification>> {
        let mut recipients = joined.to_vec();
        let member_count = UInt::new_saturating(recipients.len() as u64);
        if pdu.kind == TimelineEventType::RoomMember {
            let invited = pdu.content_value().get("membership").and_then(JsonValue::as_str) == Some("invite");
            if let Some(invitee) =
                pdu.state_key.as_deref().filter(|_| invited).and_then(|k| UserId::parse(k).ok())
                && !recipients.contains(&invitee)
            {
                recipients.push(invitee);
            }
        }
        recipients.retain(|user| *user != pdu.sender);
        if recipients.is_empty() {
            return Ok(Vec::new());
        }
        let raw: Raw<JsonValue> = Raw::from_json(crate::service::rooms::render::to_raw(
            &pdu.to_client_event(None).map_err(Error::internal)?,
        )?);
        // Flattened once for every member, rather than once per member inside ruma.
        let flattened = FlattenedJson::from_raw(&raw);
        let power: PushConditionPowerLevelsCtx = power_levels.into();
        let thread = relations::relates_to(&pdu.content_value())
            .filter(|r| r.rel_type == THREAD)
            .map(|r| r.parent.to_string());
        let mut pending = Vec::new();
        for user_id in recipients {
            let ruleset = self.ruleset(&user_id)?;
            let display_name = self.display_name(state, &user_id)?;
            let mut context =
                PushConditionRoomCtx::new(pdu.room_id.clone(), member_count, user_id.clone(), display_name);
            context.power_levels = Some(power.clone());
            let Some(actions) = now_or_never(first_match(&ruleset, &flattened, &context)) else {
                // Only thread-subscription conditions suspend, and none is configured.
                continue;
            };
            if !actions.iter().any(Action::should_notify) {
                continue;
            }
            let highlight = actions.iter().any(|a| a.is_highlight());
            let actions = serde_json::to_value(actions)
                .map_err(|e| Error::internal(format!("serialising actions: {e}")))?;
            pending.push(PendingNotification { user_id, highlight, thread: thread.clone(), actions });
        }
        Ok(pending)
    }

    /// Queue the notification rows of an appended event (in the event's batch).
    pub fn put_in(
        &self,
        batch: &mut WriteBatch,
        event: &StoredEvent,
        pending: Vec<PendingNotification>,
    ) -> Result<()> {
        let pdu = &event.pdu;
        for notification in pending {
            let record = PushActionRecord {
                event_id: pdu.event_id.clone(),
                highlight: notification.highlight,
                thread: notification.thread,
            };
            let user = notification.user_id;
            self.actions.put(batch, &(user.clone(), pdu.room_id.clone(), event.stream), &record)?;
            let entry = NotificationRecord {
                room_id: pdu.room_id.clone(),
                event_id: pdu.event_id.clone(),
                actions: notification.actions,
                highlight: notification.highlight,
                ts: pdu.origin_server_ts.get().into(),
            };
            self.notifications.put(batch, &(user, event.stream), &entry)?;
        }
        Ok(())
    }

    fn display_name(&self, state: &StateMap, user_id: &UserId) -> Result<String> {
        #[derive(serde::Deserialize)]
        struct MemberName {
            displayname: Option<String>,
        }
        let name = match state.get(&(StateEventType::RoomMember, user_id.to_string())) {
            Some(id) => self
                .events
                .get(id)?
                .and_then(|e| e.pdu.content_as::<MemberName>().ok())
                .and_then(|m| m.displayname),
            None => None,
        };
        Ok(name.unwrap_or_else(|| user_id.localpart().to_owned()))
    }

    // ---- counts and the notification list ----

    /// Where the user has read up to in a room: the unthreaded receipt, and per thread.
    fn read_positions(&self, user_id: &UserId, room_id: &RoomId) -> Result<(u64, HashMap<String, u64>)> {
        // Nothing from before the user joined counts (their invite, say), as in Synapse.
        let mut unthreaded = match self.members.get(room_id, user_id)? {
            Some(record) if record.membership == "join" => record.joined_since(),
            _ => 0,
        };
        let mut threads: HashMap<String, u64> = HashMap::new();
        for receipt in self.receipts.of_user(room_id, user_id)? {
            if receipt.receipt_type != receipts::READ && receipt.receipt_type != receipts::READ_PRIVATE {
                continue;
            }
            match receipt.thread_id {
                None => unthreaded = unthreaded.max(receipt.event_stream),
                Some(thread) => {
                    let entry = threads.entry(thread).or_default();
                    *entry = (*entry).max(receipt.event_stream);
                }
            }
        }
        Ok((unthreaded, threads))
    }

    /// Notifying and highlighting events after the user's receipts, outside threads and per
    /// thread.
    pub fn unread_counts(&self, user_id: &UserId, room_id: &RoomId) -> Result<UnreadCounts> {
        let (unthreaded, threads) = self.read_positions(user_id, room_id)?;
        let lowest = threads.values().copied().chain([unthreaded]).min().unwrap_or(0).min(unthreaded);
        let prefix = (user_id.to_owned(), room_id.to_owned());
        let range = KeyRange::prefix(prefix.to_key_bytes())
            .after((user_id.to_owned(), room_id.to_owned(), lowest).to_key_bytes());
        let mut room = (0u64, 0u64);
        let mut per_thread: BTreeMap<OwnedEventId, (u64, u64)> = BTreeMap::new();
        for row in self.actions.scan(range, Direction::Forward)? {
            let ((_, _, stream), record) = row?;
            let thread_key = record.thread.as_deref().unwrap_or(MAIN);
            let read_to = unthreaded.max(threads.get(thread_key).copied().unwrap_or(0));
            if stream <= read_to {
                continue;
            }
            let counter = match record.thread.as_deref().and_then(|t| ruma::EventId::parse(t).ok()) {
                Some(root) => per_thread.entry(root).or_default(),
                None => &mut room,
            };
            counter.0 += 1;
            counter.1 += u64::from(record.highlight);
        }
        Ok(UnreadCounts {
            room: counts(room),
            threads: per_thread.into_iter().map(|(root, c)| (root, counts(c))).collect(),
        })
    }

    /// Queue the removal of a purged room's notification rows for each of `users`.
    pub fn purge_room_in(
        &self,
        batch: &mut WriteBatch,
        room_id: &RoomId,
        users: &[OwnedUserId],
    ) -> Result<()> {
        for user_id in users {
            self.actions.delete_prefix(batch, &(user_id.clone(), room_id.to_owned()))?;
            for row in self.notifications.scan_prefix(user_id, Direction::Forward)? {
                let (key, record) = row?;
                if record.room_id == room_id {
                    self.notifications.delete(batch, &key);
                }
            }
        }
        Ok(())
    }

    /// The user's notifications, newest first, before position `from`.
    pub fn list(
        &self,
        user_id: &UserId,
        from: Option<u64>,
        limit: usize,
        only_highlight: bool,
    ) -> Result<(Vec<NotificationEntry>, Option<u64>)> {
        let user = user_id.to_owned();
        let mut range = KeyRange::prefix(user.to_key_bytes());
        if let Some(from) = from {
            range = range.before((user.clone(), from).to_key_bytes());
        }
        let mut read_cache: HashMap<OwnedRoomId, (u64, HashMap<String, u64>)> = HashMap::new();
        let mut found = Vec::new();
        let mut next = None;
        // A page examines a bounded number of rows (only=highlight or left rooms can skip
        // many); a short page with a `next_token` is valid and the client continues.
        let budget = limit.saturating_mul(20).saturating_add(200);
        for (examined, row) in self.notifications.scan(range, Direction::Reverse)?.enumerate() {
            let ((_, stream), record) = row?;
            if found.len() >= limit || examined >= budget {
                next = Some(stream + 1);
                break;
            }
            if only_highlight && !record.highlight {
                continue;
            }
            let membership = self.members.membership(&record.room_id, user_id)?;
            if !matches!(membership, Some(MembershipState::Join | MembershipState::Invite)) {
                continue;
            }
            if !read_cache.contains_key(&record.room_id) {
                let positions = self.read_positions(user_id, &record.room_id)?;
                read_cache.insert(record.room_id.clone(), positions);
            }
            let (unthreaded, threads) = &read_cache[&record.room_id];
            let event = self.events.get(&record.event_id)?;
            let thread_key = event
                .as_ref()
                .and_then(|e| relations::relates_to(&e.pdu.content_value()))
                .filter(|r| r.rel_type == THREAD)
                .map_or_else(|| MAIN.to_owned(), |r| r.parent.to_string());
            let read_to = (*unthreaded).max(threads.get(&thread_key).copied().unwrap_or(0));
            let actions: Vec<Action> = serde_json::from_value(record.actions).unwrap_or_default();
            found.push(NotificationEntry {
                stream,
                room_id: record.room_id,
                event_id: record.event_id,
                actions,
                ts: record.ts,
                read: stream <= read_to,
            });
        }
        Ok((found, next))
    }

    /// The user's notifications after `after`, oldest first, at most `limit`, each with
    /// whether the user has read its room past it (a push for it would be stale).
    pub fn pending_after(
        &self,
        user_id: &UserId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, NotificationRecord, bool)>> {
        let user = user_id.to_owned();
        let range = KeyRange::prefix(user.to_key_bytes()).after((user.clone(), after).to_key_bytes());
        let mut read: HashMap<OwnedRoomId, u64> = HashMap::new();
        let mut found = Vec::new();
        for row in self.notifications.scan(range, Direction::Forward)?.take(limit) {
            let ((_, stream), record) = row?;
            let read_to = match read.get(&record.room_id) {
                Some(position) => *position,
                None => {
                    let (unthreaded, _) = self.read_positions(user_id, &record.room_id)?;
                    read.insert(record.room_id.clone(), unthreaded);
                    unthreaded
                }
            };
            found.push((stream, record, stream <= read_to));
        }
        Ok(found)
    }

    /// How many of the user's joined rooms have unread notifications (an app's badge, as
    /// Synapse counts it by default).
    pub fn unread_rooms(&self, user_id: &UserId) -> Result<u64> {
        let mut rooms = 0;
        for room_id in self.members.rooms_of_user(user_id, &MembershipState::Join)? {
            rooms += u64::from(self.has_unread(user_id, &room_id)?);
        }
        Ok(rooms)
    }

    /// Whether the room has a notification the user has not read: the first one after
    /// their receipts answers, without counting the rest (every push computes the badge).
    fn has_unread(&self, user_id: &UserId, room_id: &RoomId) -> Result<bool> {
        let (unthreaded, threads) = self.read_positions(user_id, room_id)?;
        let lowest = threads.values().copied().chain([unthreaded]).min().unwrap_or(0).min(unthreaded);
        let prefix = (user_id.to_owned(), room_id.to_owned());
        let range = KeyRange::prefix(prefix.to_key_bytes())
            .after((user_id.to_owned(), room_id.to_owned(), lowest).to_key_bytes());
        for row in self.actions.scan(range, Direction::Forward)? {
            let ((_, _, stream), record) = row?;
            let thread_key = record.thread.as_deref().unwrap_or(MAIN);
            if stream > unthreaded.max(threads.get(thread_key).copied().unwrap_or(0)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    // ---- pushers ----

    /// One pusher of the user, with the device that set it.
    pub fn pusher(&self, user_id: &UserId, app_id: &str, pushkey: &str) -> Result<Option<PusherRecord>> {
        Ok(self.pushers.get(&(user_id.to_owned(), app_id.to_owned(), pushkey.to_owned()))?)
    }

    /// Every pusher on the server: user, app ID and push key.
    pub fn all_pushers(&self) -> Result<Vec<(OwnedUserId, String, String)>> {
        self.pushers
            .scan(KeyRange::all(), Direction::Forward)?
            .map(|row| row.map(|(key, _)| key).map_err(Into::into))
            .collect()
    }

    /// The user's pushers' app IDs and push keys.
    pub fn pusher_ids(&self, user_id: &UserId) -> Result<Vec<(String, String)>> {
        self.pushers
            .scan_prefix(&user_id.to_owned(), Direction::Forward)?
            .map(|row| row.map(|((_, app, key), _)| (app, key)).map_err(Into::into))
            .collect()
    }

    /// The user's pushers, as clients set them.
    pub fn pushers(&self, user_id: &UserId) -> Result<Vec<Box<RawJsonValue>>> {
        self.pushers
            .scan_prefix(&user_id.to_owned(), Direction::Forward)?
            .map(|row| row.map(|(_, record)| record.pusher).map_err(Into::into))
            .collect()
    }

    /// Add or replace a pusher, recording the device that set it and when (`append` false
    /// also removes other users' pushers with the same app ID and push key), or delete one.
    /// Answers whether a new pusher was added (not one replaced or deleted).
    #[allow(clippy::too_many_arguments)]
    pub fn set_pusher(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        app_id: &str,
        pushkey: &str,
        pusher: Option<Box<RawJsonValue>>,
        append: bool,
        now_ms: u64,
    ) -> Result<bool> {
        if pusher.is_some() {
            // The spec's limits; deleting stays possible for pushers stored before them.
            if app_id.chars().count() > MAX_APP_ID_CHARS {
                return Err(Error::invalid_param(format!(
                    "app_id is longer than {MAX_APP_ID_CHARS} characters"
                )));
            }
            limits::check_len(pushkey, MAX_PUSHKEY_BYTES, "pushkey").map_err(Error::invalid_param)?;
        }
        let key = (user_id.to_owned(), app_id.to_owned(), pushkey.to_owned());
        let existing = self.pushers.get(&key)?;
        let mut batch = WriteBatch::new();
        let added = pusher.is_some() && existing.is_none();
        match pusher {
            None => self.pushers.delete(&mut batch, &key),
            Some(pusher) => {
                if !append {
                    for row in self.pushers.scan(KeyRange::all(), Direction::Forward)? {
                        let ((other, other_app, other_key), _) = row?;
                        if other != user_id && other_app == app_id && other_key == pushkey {
                            self.pushers.delete(&mut batch, &(other, other_app, other_key));
                        }
                    }
                }
                // An update keeps the time the pusher was first set (`pushkey_ts`).
                let created_ms = existing.map_or(now_ms, |e| e.created_ms);
                let record = PusherRecord { device_id: Some(device_id.to_owned()), created_ms, pusher };
                self.pushers.put(&mut batch, &key, &record)?;
            }
        }
        self.store.write(batch)?;
        Ok(added)
    }

    /// Remove a pusher a push gateway rejected.
    pub fn remove_pusher(&self, user_id: &UserId, app_id: &str, pushkey: &str) -> Result<()> {
        Ok(self.pushers.remove(&(user_id.to_owned(), app_id.to_owned(), pushkey.to_owned()))?)
    }

    /// Queue the removal of the user's pushers that go with removed devices: those set by one
    /// of `devices`, or, when `devices` is `None` (every device but `keep` is going), every
    /// pusher not set by `keep` — pushers of unknown origin included. Pushers follow their
    /// device's access token, as Synapse's do.
    pub fn remove_device_pushers_in(
        &self,
        batch: &mut WriteBatch,
        user_id: &UserId,
        devices: Option<&[OwnedDeviceId]>,
        keep: Option<&DeviceId>,
    ) -> Result<()> {
        for row in self.pushers.scan_prefix(&user_id.to_owned(), Direction::Forward)? {
            let (key, record) = row?;
            let set_by = record.device_id.as_deref();
            let goes = match devices {
                Some(devices) => set_by.is_some_and(|d| devices.iter().any(|r| r == d)),
                None => set_by.is_none() || set_by != keep,
            };
            if goes {
                self.pushers.delete(batch, &key);
            }
        }
        Ok(())
    }
}

/// A pusher's outbox queue name: its user, app ID and push key, as a JSON array
/// (unambiguous whatever the IDs hold, and starting with the user's part, so a user's queues
/// share a prefix). Every kind of pusher delivery names its queues so.
pub fn pusher_queue(user_id: &UserId, app_id: &str, pushkey: &str) -> String {
    json!([user_id, app_id, pushkey]).to_string()
}

/// The prefix of every pusher queue of `user_id`.
pub fn user_queues(user_id: &UserId) -> String {
    let mut prefix = json!([user_id]).to_string();
    prefix.pop(); // the closing bracket
    prefix.push(',');
    prefix
}

/// The user, app ID and push key a [`pusher_queue`] name stands for.
pub fn parse_pusher_queue(queue: &str) -> Option<(OwnedUserId, String, String)> {
    let (user, app_id, pushkey): (String, String, String) = serde_json::from_str(queue).ok()?;
    Some((UserId::parse(user).ok()?, app_id, pushkey))
}

/// A stored pusher's `kind` (`http`, `email`).
pub fn pusher_kind(record: &PusherRecord) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Kind {
        kind: String,
    }
    serde_json::from_str::<Kind>(record.pusher.get()).ok().map(|k| k.kind)
}

fn counts((notify, highlight): (u64, u64)) -> UnreadNotificationsCount {
    let mut count = UnreadNotificationsCount::new();
    count.notification_count = Some(UInt::new_saturating(notify));
    count.highlight_count = Some(UInt::new_saturating(highlight));
    count
}

/// The actions of the first enabled rule that matches, as ruma's `get_actions` does, over an
/// event flattened once. The event's sender never gets here (the caller skips them).
async fn first_match<'r>(
    ruleset: &'r Ruleset,
    event: &FlattenedJson,
    context: &PushConditionRoomCtx,
) -> &'r [Action] {
    for rule in ruleset {
        if rule.applies(event, context).await {
            return rule.actions();
        }
    }
    &[]
}

/// Run a future that does not wait on anything to completion (push rule evaluation is
/// async only for conditions this server does not configure).
fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}
