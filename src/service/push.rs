//! Push rules, notifications and pushers. Each user's rules live in their account data
//! (`m.push_rules`, the spec's server defaults until changed), so clients see changes
//! through sync. Every new event is evaluated for every joined member but its sender, in
//! the event's own write batch: once per class of members whose rules differ only in their
//! own user ID (`matrix::push`; most members share the defaults), and on their own for the
//! members the event names. Each notification is a row with the user's running totals in
//! its room and thread (unread counts are the latest totals less those at the read position:
//! two lookups per thread, however long the history; rows a receipt passes are removed, and
//! a room's when the user leaves it), and a row for `/notifications` and the pushers (kept a
//! day, highlights thirty, as Synapse keeps them). Pushers are stored here; `PushGateways`
//! delivers the notifications to them. Owns the `push_counts`, `push_count_bases`,
//! `notifications` and `pushers` tables.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
};

use ruma::{
    DeviceId, OwnedDeviceId, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, UInt, UserId,
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
        members::{Memberships, Roster},
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
        push::{self as rules, Template},
    },
    storage::{
        Direction, KvStore, Table, WriteBatch,
        codec::KeyCodec,
        kv::KeyRange,
        tables::{
            NOTIFICATIONS, NotificationRecord, PUSH_COUNT_BASES, PUSH_COUNTS, PUSHERS, PushCountBase,
            PushCountRecord, PusherRecord,
        },
    },
};

pub const PUSH_RULES: &str = "m.push_rules";
/// Thread key of events outside any thread.
const MAIN: &str = "main";
/// Users whose rules (or the fact that they have the defaults) are kept in memory: every
/// event reads every member's. A user with the defaults costs an entry of about 80 bytes.
const RULE_CACHE_USERS: usize = 200_000;
/// Distinct rule templates shared by classes of users; users whose rules would make more are
/// evaluated on their own.
const MAX_CLASSES: usize = 1_024;
/// The class of the server-default rules.
const DEFAULT_CLASS: usize = 0;
/// Members' latest notification totals kept in memory for the append path (about 120 bytes
/// each); past it they are read again from the rows.
const TOTALS_CACHE_ENTRIES: usize = 200_000;
/// Stripes of the lock that serialises removing a user's read rows.
const READ_LOCK_STRIPES: usize = 64;
/// How long `/notifications` keeps a notification that does not highlight, and one that
/// does (Synapse's day and month).
const KEEP_NOTIFICATION_MS: u64 = 24 * 3600 * 1000;
const KEEP_HIGHLIGHT_MS: u64 = 30 * 24 * 3600 * 1000;

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
    counts: Table<(OwnedUserId, OwnedRoomId, String, u64), PushCountRecord>,
    bases: Table<(OwnedUserId, OwnedRoomId, String), PushCountBase>,
    notifications: Table<(OwnedUserId, u64), NotificationRecord>,
    pushers: Table<(OwnedUserId, String, String), PusherRecord>,
    account_data: Arc<AccountData>,
    events: Arc<Events>,
    members: Arc<Memberships>,
    receipts: Arc<Receipts>,
    store: Arc<dyn KvStore>,
    clock: Arc<dyn crate::service::clock::Clock>,
    server_name: OwnedServerName,
    /// A user ID no event names (random per process), for whom each class's rules are
    /// evaluated.
    neutral: OwnedUserId,
    rules: Mutex<RuleCache>,
    /// Serialises rule changes with loads into the cache, so two changes cannot lose one
    /// another and a load cannot put back rules a change just replaced.
    rules_write: Mutex<()>,
    /// Each room's members' latest totals per thread, for the append path: read and changed
    /// only under the room's append lock (after the event's batch is written).
    totals: Mutex<TotalsCache>,
    /// Serialises the removal of one user's read rows (striped by user).
    read_locks: Vec<Mutex<()>>,
}

/// A user's notification totals in a room and thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    notified: u64,
    highlighted: u64,
}

#[derive(Default)]
struct TotalsCache {
    rooms: HashMap<OwnedRoomId, HashMap<(OwnedUserId, String), Totals>>,
    entries: usize,
}

/// The totals an appended event's notifications brought, to remember once its batch is
/// written ([`Notifications::counted`]).
#[must_use]
pub struct Counted {
    room_id: OwnedRoomId,
    totals: Vec<((OwnedUserId, String), Totals)>,
    /// Members whose rows in the room went (they left): their totals are forgotten.
    left: Option<OwnedUserId>,
}

/// Users' rules as evaluation reads them, and the classes they fall in.
struct RuleCache {
    users: HashMap<OwnedUserId, UserRules>,
    /// Templates to classes; `classes[DEFAULT_CLASS]` is the defaults'.
    templates: HashMap<Template, usize>,
    classes: Vec<Class>,
}

/// One user's rules, as kept in memory.
#[derive(Clone)]
enum UserRules {
    /// The server defaults (no rules stored): the rules are made when needed.
    Default,
    /// Stored rules, and their class (`None`: evaluated on their own).
    Stored { ruleset: Arc<Ruleset>, class: Option<usize> },
}

/// Users whose rules share one template.
struct Class {
    /// The template's rules for the neutral user.
    rules: Ruleset,
    /// Its members are always evaluated on their own (`Template::personal`).
    personal: bool,
}

/// What evaluating an event gave one class or member: the actions, if they notify.
#[derive(Clone)]
struct Outcome {
    actions: JsonValue,
    highlight: bool,
}

impl RuleCache {
    /// The class of a user's stored rules, made if new; `None` when there are too many.
    fn class_of(&mut self, ruleset: &Ruleset, user_id: &UserId, neutral: &UserId) -> Option<usize> {
        let template = rules::template_of(ruleset, user_id);
        if let Some(class) = self.templates.get(&template) {
            return Some(*class);
        }
        if self.classes.len() >= MAX_CLASSES {
            return None;
        }
        let class = Class { rules: rules::instantiate(&template, neutral)?, personal: template.personal };
        self.classes.push(class);
        self.templates.insert(template, self.classes.len() - 1);
        Some(self.classes.len() - 1)
    }
}

impl Notifications {
    pub fn new(
        store: &Arc<dyn KvStore>,
        clock: Arc<dyn crate::service::clock::Clock>,
        server_name: OwnedServerName,
        account_data: Arc<AccountData>,
        events: Arc<Events>,
        members: Arc<Memberships>,
        receipts: Arc<Receipts>,
    ) -> Self {
        let neutral = UserId::parse(format!("@conduit-push-{:016x}:{server_name}", rand::random::<u64>()))
            .unwrap_or_else(|_| UserId::parse("@conduit-push-neutral:invalid").expect("a valid user ID"));
        let default_template = rules::template_of(&Ruleset::server_default(&neutral), &neutral);
        let default_class = Class {
            rules: rules::instantiate(&default_template, &neutral)
                .unwrap_or_else(|| Ruleset::server_default(&neutral)),
            personal: default_template.personal,
        };
        Self {
            counts: PUSH_COUNTS.open(store),
            bases: PUSH_COUNT_BASES.open(store),
            notifications: NOTIFICATIONS.open(store),
            pushers: PUSHERS.open(store),
            account_data,
            events,
            members,
            receipts,
            store: Arc::clone(store),
            clock,
            server_name,
            neutral,
            rules: Mutex::new(RuleCache {
                users: HashMap::new(),
                templates: HashMap::from([(default_template, DEFAULT_CLASS)]),
                classes: vec![default_class],
            }),
            rules_write: Mutex::new(()),
            totals: Mutex::default(),
            read_locks: (0..READ_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    // ---- push rules ----

    /// The user's push rules: as stored, or the spec's defaults.
    pub fn ruleset(&self, user_id: &UserId) -> Result<Arc<Ruleset>> {
        Ok(match self.user_rules(user_id)? {
            UserRules::Default => Arc::new(Ruleset::server_default(user_id)),
            UserRules::Stored { ruleset, .. } => ruleset,
        })
    }

    /// The user's rules as evaluation reads them, from memory or read and classed.
    fn user_rules(&self, user_id: &UserId) -> Result<UserRules> {
        if let Some(cached) = self.lock_rules().users.get(user_id) {
            return Ok(cached.clone());
        }
        let _writing = self.rules_write.lock().unwrap_or_else(|p| p.into_inner());
        let stored = self.stored(user_id)?;
        let mut cache = self.lock_rules();
        let rules = match stored {
            None => UserRules::Default,
            Some(ruleset) => {
                let class = cache.class_of(&ruleset, user_id, &self.neutral);
                UserRules::Stored { ruleset: Arc::new(ruleset), class }
            }
        };
        if cache.users.len() >= RULE_CACHE_USERS {
            cache.users.clear();
        }
        cache.users.insert(user_id.to_owned(), rules.clone());
        Ok(rules)
    }

    /// The user's stored rules; `None` for the defaults.
    fn stored(&self, user_id: &UserId) -> Result<Option<Ruleset>> {
        let stored: Option<PushRulesContent> = self.account_data.get_as(user_id, None, PUSH_RULES)?;
        Ok(stored.map(|c| c.global))
    }

    fn stored_ruleset(&self, user_id: &UserId) -> Result<Ruleset> {
        Ok(self.stored(user_id)?.unwrap_or_else(|| Ruleset::server_default(user_id)))
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
        // The next event is evaluated with the new rules.
        self.lock_rules().users.remove(user_id);
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

    fn lock_rules(&self) -> std::sync::MutexGuard<'_, RuleCache> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    // ---- evaluation ----

    /// Evaluate an event about to be appended for every joined member but its sender (and
    /// for the invitee of an invite), with the room state before it and its roster (joined
    /// members). Each class of members (the same rules but for their own user ID) is
    /// evaluated once, for a neutral user; the members the event names (`@<localpart>:` in
    /// any of its strings), the members of personal classes and members with unusual IDs are
    /// evaluated with their own rules. Done before the event takes a stream position, so a
    /// large room's evaluation holds back no one's sync.
    pub fn evaluate(
        &self,
        pdu: &Pdu,
        state: &StateMap,
        power_levels: RoomPowerLevels,
        roster: &Roster,
    ) -> Result<Vec<PendingNotification>> {
        let member_count = UInt::new_saturating(roster.joined_count());
        let mut invitee = None;
        if pdu.kind == TimelineEventType::RoomMember
            && pdu.content_value().get("membership").and_then(JsonValue::as_str) == Some("invite")
            && let Some(user) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
            && !roster.is_joined(&user)
            && user != pdu.sender
        {
            invitee = Some(user);
        }
        if roster.joined_count() == u64::from(roster.is_joined(&pdu.sender)) && invitee.is_none() {
            return Ok(Vec::new());
        }
        let value = pdu.to_client_event(None).map_err(Error::internal)?;
        let raw: Raw<JsonValue> = Raw::from_json(crate::service::rooms::render::to_raw(&value)?);
        // Flattened once for every member, rather than once per member inside ruma.
        let flattened = FlattenedJson::from_raw(&raw);
        let power: PushConditionPowerLevelsCtx = power_levels.into();
        let thread = relations::relates_to(&pdu.content_value())
            .filter(|r| r.rel_type == THREAD)
            .map(|r| r.parent.to_string());
        // The members the event names (by lowercased localpart: `event_match` ignores case).
        let mut alone: HashSet<OwnedUserId> = HashSet::new();
        for localpart in rules::named_localparts(&value) {
            if let Ok(user) = UserId::parse(format!("@{localpart}:{}", self.server_name))
                && roster.is_joined(&user)
            {
                alone.insert(user);
            }
        }
        alone.extend(invitee.iter().cloned());

        let context_for = |user: &UserId, name: String| {
            let mut context =
                PushConditionRoomCtx::new(pdu.room_id.clone(), member_count, user.to_owned(), name);
            context.power_levels = Some(power.clone());
            context
        };
        let outcome_of = |actions: &[Action]| -> Result<Option<Outcome>> {
            if !actions.iter().any(Action::should_notify) {
                return Ok(None);
            }
            let highlight = actions.iter().any(|a| a.is_highlight());
            let actions = serde_json::to_value(actions)
                .map_err(|e| Error::internal(format!("serialising actions: {e}")))?;
            Ok(Some(Outcome { actions, highlight }))
        };
        let neutral_context = context_for(&self.neutral, self.neutral.localpart().to_owned());
        // Per class (by index): not evaluated yet, or its outcome.
        let mut class_outcomes: Vec<Option<Option<Outcome>>> = Vec::new();
        let mut own: Vec<(OwnedUserId, UserRules)> = Vec::new();
        let mut pending = Vec::new();
        // Give a recipient whose rules are known their class's outcome, or set them aside to
        // be evaluated on their own. One lookup per recipient: in a big room this loop is
        // most of the cost of an event that notifies nobody (a join).
        let mut place = |cache: &RuleCache, user: &OwnedUserId, rules: &UserRules| -> Result<()> {
            let class = match rules {
                UserRules::Default => Some(DEFAULT_CLASS),
                UserRules::Stored { class, .. } => *class,
            };
            // Members with an ID a lowercased name does not stand for (capitals, another
            // server) are evaluated on their own too.
            let unusual = user.server_name() != self.server_name
                || user.localpart().bytes().any(|b| b.is_ascii_uppercase());
            let shared = class.filter(|c| {
                !unusual && (alone.is_empty() || !alone.contains(user)) && !cache.classes[*c].personal
            });
            let Some(class) = shared else {
                own.push((user.clone(), rules.clone()));
                return Ok(());
            };
            if class_outcomes.len() <= class {
                class_outcomes.resize(class + 1, None);
            }
            if class_outcomes[class].is_none() {
                // `None` also when a condition would wait (thread subscriptions, which are
                // not configured): nobody of the class is notified.
                let outcome =
                    match rules::first_match(&cache.classes[class].rules, &flattened, &neutral_context) {
                        Some(actions) => outcome_of(actions)?,
                        None => None,
                    };
                class_outcomes[class] = Some(outcome);
            }
            if let Some(Some(outcome)) = &class_outcomes[class] {
                pending.push(PendingNotification {
                    user_id: user.clone(),
                    highlight: outcome.highlight,
                    thread: thread.clone(),
                    actions: outcome.actions.clone(),
                });
            }
            Ok(())
        };
        // Every recipient under one lock of the rules cache; those whose rules are not in
        // memory yet are read from storage afterwards (outside the lock) and placed then.
        let mut missing: Vec<OwnedUserId> = Vec::new();
        {
            let cache = self.lock_rules();
            for user in roster.joined().iter().chain(invitee.iter()) {
                if *user == pdu.sender {
                    continue;
                }
                match cache.users.get(user) {
                    Some(rules) => place(&cache, user, rules)?,
                    None => missing.push(user.clone()),
                }
            }
        }
        for user in missing {
            let rules = self.user_rules(&user)?;
            let cache = self.lock_rules();
            place(&cache, &user, &rules)?;
        }
        for (user_id, rules) in own {
            let ruleset = match rules {
                UserRules::Default => match self.user_rules(&user_id)? {
                    UserRules::Default => Arc::new(Ruleset::server_default(&user_id)),
                    UserRules::Stored { ruleset, .. } => ruleset,
                },
                UserRules::Stored { ruleset, .. } => ruleset,
            };
            let context = context_for(&user_id, self.display_name(state, &user_id)?);
            let Some(actions) = rules::first_match(&ruleset, &flattened, &context) else { continue };
            if let Some(outcome) = outcome_of(actions)? {
                pending.push(PendingNotification {
                    user_id,
                    highlight: outcome.highlight,
                    thread: thread.clone(),
                    actions: outcome.actions,
                });
            }
        }
        Ok(pending)
    }

    /// Queue the notification rows of an appended event (in the event's batch), each with
    /// the member's totals in the room and thread; `left` is a member the event takes out
    /// of the room, whose rows there go. The caller holds the room's append lock and passes
    /// the answer to [`Self::counted`] once the batch is written.
    pub fn put_in(
        &self,
        batch: &mut WriteBatch,
        event: &StoredEvent,
        pending: Vec<PendingNotification>,
        left: Option<&UserId>,
    ) -> Result<Counted> {
        let pdu = &event.pdu;
        let room_id = &pdu.room_id;
        let mut counted =
            Counted { room_id: room_id.clone(), totals: Vec::new(), left: left.map(ToOwned::to_owned) };
        if let Some(user) = left {
            // Counts show for joined rooms only, and a later join starts after every row.
            self.counts.delete_prefix(batch, &(user.to_owned(), room_id.clone()))?;
            self.bases.delete_prefix(batch, &(user.to_owned(), room_id.clone()))?;
        }
        for notification in pending {
            let user = notification.user_id;
            let thread_key = notification.thread.unwrap_or_else(|| MAIN.to_owned());
            let previous = self.latest_totals(batch, room_id, &user, &thread_key)?;
            let totals = Totals {
                notified: previous.notified + 1,
                highlighted: previous.highlighted + u64::from(notification.highlight),
            };
            let record = PushCountRecord {
                event_id: pdu.event_id.clone(),
                highlight: notification.highlight,
                notified: totals.notified,
                highlighted: totals.highlighted,
            };
            self.counts.put(
                batch,
                &(user.clone(), room_id.clone(), thread_key.clone(), event.stream),
                &record,
            )?;
            counted.totals.push(((user.clone(), thread_key), totals));
            let entry = NotificationRecord {
                room_id: pdu.room_id.clone(),
                event_id: pdu.event_id.clone(),
                actions: notification.actions,
                highlight: notification.highlight,
                ts: pdu.origin_server_ts.get().into(),
            };
            self.notifications.put(batch, &(user, event.stream), &entry)?;
        }
        Ok(counted)
    }

    /// An appended event's batch is written: remember the totals its notifications brought.
    pub fn counted(&self, counted: Counted) {
        let mut cache = self.lock_totals();
        if cache.entries + counted.totals.len() > TOTALS_CACHE_ENTRIES {
            *cache = TotalsCache::default();
        }
        let TotalsCache { rooms, entries } = &mut *cache;
        let room = rooms.entry(counted.room_id).or_default();
        if let Some(user) = &counted.left {
            let before = room.len();
            room.retain(|(member, _), _| member != user);
            *entries -= before - room.len();
        }
        for (key, totals) in counted.totals {
            if room.insert(key, totals).is_none() {
                *entries += 1;
            }
        }
    }

    fn lock_totals(&self) -> std::sync::MutexGuard<'_, TotalsCache> {
        self.totals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The member's latest totals in the room and thread: remembered, or read from their
    /// last row (or the base, when every row was read and removed); a thread without either
    /// gets its zero base in `batch`. Called under the room's append lock.
    fn latest_totals(
        &self,
        batch: &mut WriteBatch,
        room_id: &RoomId,
        user_id: &UserId,
        thread: &str,
    ) -> Result<Totals> {
        let key = (user_id.to_owned(), thread.to_owned());
        if let Some(known) = self.lock_totals().rooms.get(room_id).and_then(|r| r.get(&key)) {
            return Ok(*known);
        }
        let prefix = (user_id.to_owned(), room_id.to_owned(), thread.to_owned());
        // The rows before the base: a removal writes both in one batch.
        if let Some(row) = self.counts.scan_prefix(&prefix, Direction::Reverse)?.next() {
            let (_, record) = row?;
            return Ok(Totals { notified: record.notified, highlighted: record.highlighted });
        }
        Ok(match self.bases.get(&prefix)? {
            Some(base) => Totals { notified: base.notified, highlighted: base.highlighted },
            None => {
                self.bases.put(batch, &prefix, &PushCountBase::default())?;
                Totals::default()
            }
        })
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
    /// thread: per thread the latest totals less the totals at the read position.
    pub fn unread_counts(&self, user_id: &UserId, room_id: &RoomId) -> Result<UnreadCounts> {
        let (unthreaded, threads) = self.read_positions(user_id, room_id)?;
        let mut room = (0u64, 0u64);
        let mut per_thread: BTreeMap<OwnedEventId, (u64, u64)> = BTreeMap::new();
        for (thread, unread) in self.unread_by_thread(user_id, room_id, unthreaded, &threads, false)? {
            let counter = match ruma::EventId::parse(&thread).ok().filter(|_| thread != MAIN) {
                Some(root) => per_thread.entry(root).or_default(),
                None => &mut room,
            };
            counter.0 += unread.notified;
            counter.1 += unread.highlighted;
        }
        Ok(UnreadCounts {
            room: counts(room),
            threads: per_thread.into_iter().map(|(root, c)| (root, counts(c))).collect(),
        })
    }

    /// Per thread key with notifications after the read positions, how many (and highlights);
    /// with `first_only`, stop at the first such thread.
    fn unread_by_thread(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        unthreaded: u64,
        threads: &HashMap<String, u64>,
        first_only: bool,
    ) -> Result<Vec<(String, Totals)>> {
        let mut found = Vec::new();
        for row in self.bases.scan_prefix(&(user_id.to_owned(), room_id.to_owned()), Direction::Forward)? {
            let ((_, _, thread), base) = row?;
            let read_to = unthreaded.max(threads.get(&thread).copied().unwrap_or(0));
            let prefix = (user_id.to_owned(), room_id.to_owned(), thread.clone());
            let from_base = Totals { notified: base.notified, highlighted: base.highlighted };
            let latest = match self.counts.scan_prefix(&prefix, Direction::Reverse)?.next() {
                Some(row) => {
                    let ((_, _, _, stream), record) = row?;
                    if stream <= read_to {
                        continue;
                    }
                    Totals { notified: record.notified, highlighted: record.highlighted }
                }
                None => continue,
            };
            let at_read = KeyRange::prefix(prefix.to_key_bytes())
                .up_to((user_id.to_owned(), room_id.to_owned(), thread.clone(), read_to).to_key_bytes());
            let read = match self.counts.scan(at_read, Direction::Reverse)?.next() {
                Some(row) => {
                    let (_, record) = row?;
                    Totals { notified: record.notified, highlighted: record.highlighted }
                }
                None => from_base,
            };
            let unread = Totals {
                notified: latest.notified.saturating_sub(read.notified),
                highlighted: latest.highlighted.saturating_sub(read.highlighted),
            };
            if unread.notified > 0 || unread.highlighted > 0 {
                found.push((thread, unread));
                if first_only {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// Record a read receipt (`Receipts::set`), then remove the user's notification rows the
    /// receipts now cover, keeping their totals in the bases.
    pub fn read(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        receipt_type: &str,
        event_id: &ruma::EventId,
        thread_id: Option<&str>,
    ) -> Result<()> {
        self.receipts.set(user_id, room_id, receipt_type, event_id, thread_id)?;
        // The receipt is stored: failing to tidy up only leaves rows for the next receipt.
        if let Err(e) = self.remove_read(user_id, room_id) {
            tracing::warn!(%user_id, %room_id, error = %e, "removing read notification rows failed");
        }
        Ok(())
    }

    /// Remove the user's notification rows at or before their read positions in the room,
    /// each thread's base taking the totals of its last removed row. Rows after the read
    /// positions are untouched, and appends only add rows after them (the receipted event is
    /// committed, and the room appends in order), so this runs beside the append path.
    fn remove_read(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        let stripe = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            user_id.hash(&mut hasher);
            (hasher.finish() as usize) % READ_LOCK_STRIPES
        };
        let _removing = self.read_locks[stripe].lock().unwrap_or_else(|p| p.into_inner());
        let (unthreaded, threads) = self.read_positions(user_id, room_id)?;
        let mut batch = WriteBatch::new();
        for row in self.bases.scan_prefix(&(user_id.to_owned(), room_id.to_owned()), Direction::Forward)? {
            let ((_, _, thread), base) = row?;
            let read_to = unthreaded.max(threads.get(&thread).copied().unwrap_or(0));
            if read_to <= base.upto {
                continue;
            }
            let prefix = (user_id.to_owned(), room_id.to_owned(), thread.clone());
            let covered = KeyRange::prefix(prefix.to_key_bytes())
                .up_to((user_id.to_owned(), room_id.to_owned(), thread.clone(), read_to).to_key_bytes());
            let mut last = None;
            for row in self.counts.scan(covered, Direction::Forward)? {
                let (key, record) = row?;
                self.counts.delete(&mut batch, &key);
                last = Some(record);
            }
            if let Some(last) = last {
                let base =
                    PushCountBase { notified: last.notified, highlighted: last.highlighted, upto: read_to };
                self.bases.put(&mut batch, &prefix, &base)?;
            }
        }
        if !batch.is_empty() {
            self.store.write_buffered(batch)?;
        }
        Ok(())
    }

    /// A purged room's rows are gone: forget its members' totals.
    pub fn purged_room(&self, room_id: &RoomId) {
        let mut cache = self.lock_totals();
        if let Some(room) = cache.rooms.remove(room_id) {
            cache.entries -= room.len();
        }
    }

    /// Remove `/notifications` rows past their keeping time (a day, a month for highlights,
    /// as Synapse keeps them), at most `budget` rows a call; answers how many went. Each
    /// user's rows are in position order, so the walk leaves a user at their first row
    /// young enough to keep and seeks to the next user.
    pub fn expire(&self, budget: usize) -> Result<usize> {
        let now_ms = self.clock.now_ms();
        let plain_before = now_ms.saturating_sub(KEEP_NOTIFICATION_MS);
        let highlight_before = now_ms.saturating_sub(KEEP_HIGHLIGHT_MS);
        let mut removed = 0;
        let mut batch = WriteBatch::new();
        let mut from = KeyRange::all();
        'users: loop {
            let mut rows = self.notifications.scan(from.clone(), Direction::Forward)?;
            let Some(first) = rows.next() else { break };
            let first = first?;
            let user = first.0.0.clone();
            let next_user = KeyRange::prefix(user.to_key_bytes()).end;
            for row in std::iter::once(Ok(first)).chain(rows) {
                let ((owner, stream), record) = row?;
                if owner != user {
                    break;
                }
                if record.ts >= plain_before {
                    // Every later row of this user is at least as young.
                    break;
                }
                if !record.highlight || record.ts < highlight_before {
                    self.notifications.delete(&mut batch, &(owner, stream));
                    removed += 1;
                    if removed >= budget {
                        break 'users;
                    }
                }
            }
            match next_user {
                std::ops::Bound::Excluded(next) => {
                    from = KeyRange { start: std::ops::Bound::Included(next), ..KeyRange::all() }
                }
                _ => break,
            }
        }
        if !batch.is_empty() {
            self.store.write(batch)?;
        }
        Ok(removed)
    }

    /// Queue the removal of a purged room's notification rows for each of `users`.
    pub fn purge_room_in(
        &self,
        batch: &mut WriteBatch,
        room_id: &RoomId,
        users: &[OwnedUserId],
    ) -> Result<()> {
        for user_id in users {
            self.counts.delete_prefix(batch, &(user_id.clone(), room_id.to_owned()))?;
            self.bases.delete_prefix(batch, &(user_id.clone(), room_id.to_owned()))?;
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
        Ok(!self.unread_by_thread(user_id, room_id, unthreaded, &threads, true)?.is_empty())
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
