//! Push rules, notifications and pushers. Each user's rules live in their account data
//! (`m.push_rules`, the spec's server defaults until changed), so clients see changes
//! through sync.
//!
//! Every new event is evaluated for the room's joined members but its sender, in the
//! event's own write batch, at a cost that does not grow with the members notified: members
//! whose rules differ only in their own user ID form a class (`matrix::push`; most members
//! share the defaults, class 0), and each class present in the room is evaluated once, for a
//! neutral user; the members the event names, those of personal classes and those with
//! unusual IDs are evaluated on their own. What is stored per event is per class and per
//! member evaluated alone, never per member notified:
//! - the class's running totals in the room and thread (`push_class_counts`, with the
//!   latest in `push_class_heads`) when the event notifies the class;
//! - for a member evaluated alone (the sender too) whose outcome differs from their class's,
//!   a `push_counts` row with their running totals of both (their own, and what their class
//!   counted for them);
//! - one `push_log` row naming the actions of each notified class and the members evaluated
//!   alone, for `/notifications` and the push fan-out.
//!
//! A member's class over time is recorded in `push_epochs` when their rules change (under a
//! gate that no evaluation is inside, so every event on one side of the change's position
//! was evaluated with the old rules and every event on the other with the new). Unread
//! counts in a thread are the member's classes' totals between their read position and now,
//! plus their own totals and less what their class counted for them over the same span:
//! a few lookups per thread, however long the history and however big the room. A member's
//! counts in a room, once read, are kept in memory under the room's last event and receipt
//! positions, the epochs generation and their join (`UnreadKey`): a sync that finds none of
//! them moved (a device's initial sync after another's, a room synced again for typing or
//! account data) reads no rows for them.
//!
//! Pushers are stored here; their notifications (`notifications`, kept a day, highlights
//! thirty, as Synapse keeps them) are written after the event by the push fan-out
//! ([`Notifications::fan_out`]) for the members who have pushers, and delivered by
//! `PushGateways` and `EmailNotifier`.

use std::{
    collections::{BTreeMap, BinaryHeap, HashMap, HashSet},
    sync::{Arc, Mutex, RwLock, RwLockReadGuard},
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
    service::cache::GuardedCache,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        codec::KeyCodec,
        kv::{Durability, KeyRange, transaction},
        tables::{
            NOTIFICATIONS, NotificationRecord, PUSH_CLASS_COUNTS, PUSH_CLASS_HEADS, PUSH_CLASSES,
            PUSH_COUNT_BASES, PUSH_COUNTS, PUSH_EPOCHS, PUSH_LOG, PUSH_LOG_ORDER, PUSHERS, PushClassCount,
            PushClassHead, PushClassRecord, PushCountBase, PushCountRecord, PushEpochRecord, PushLogClass,
            PushLogMember, PushLogRecord, PusherRecord,
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
/// The class of the server-default rules (users without stored rules).
const DEFAULT_CLASS: u64 = 0;
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
#[derive(Clone)]
pub struct UnreadCounts {
    pub room: UnreadNotificationsCount,
    pub threads: BTreeMap<OwnedEventId, UnreadNotificationsCount>,
}

/// What evaluating an event gave, for [`Notifications::put_in`]: the outcome of each class
/// a joined member counts in, and the members evaluated on their own.
#[derive(Default)]
pub struct Evaluation {
    thread: Option<String>,
    /// By class: `None` when the event does not notify the class.
    classes: Vec<(u64, Option<Outcome>)>,
    alone: Vec<Alone>,
}

/// A member evaluated on their own.
struct Alone {
    user_id: OwnedUserId,
    /// The class their unread counts follow (`None`: none), whose outcome their own replaces.
    counted: Option<u64>,
    /// Their own outcome (`None`: not notified; always for the sender).
    own: Option<Outcome>,
    /// A joined member (not the invitee of an invite), whose unread counts this event may move.
    joined: bool,
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
    classes: Table<u64, PushClassRecord>,
    epochs: Table<(OwnedUserId, u64), PushEpochRecord>,
    class_counts: Table<(OwnedRoomId, u64, String, u64), PushClassCount>,
    class_heads: Table<(OwnedRoomId, u64, String), PushClassHead>,
    log: Table<(OwnedRoomId, u64), PushLogRecord>,
    log_order: Table<u64, OwnedRoomId>,
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
    /// Moves on at every rule change: room partitions made before are made again.
    rules_generation: std::sync::atomic::AtomicU64,
    /// Held (shared) by the append path from evaluating an event until it has its stream
    /// position, and (alone) by a rule change while it takes its position: events on either
    /// side of a change's position were evaluated with the rules of that side.
    gate: RwLock<()>,
    /// Each room's members' latest totals per thread, for the append path: read and changed
    /// only under the room's append lock (after the event's batch is written).
    totals: Mutex<TotalsCache>,
    /// Serialises the removal of one user's read rows (striped by user).
    read_locks: Vec<Mutex<()>>,
    /// Users' epochs as last read (every room's unread counts in a sync read them), with a
    /// generation that each epoch write moves on, so a read that raced a write is not kept.
    epochs_cache: GuardedCache<OwnedUserId, Epochs>,
    /// Users who have (or had, since start) a pusher: the push fan-out's candidates, each
    /// checked against the pushers table.
    pusher_users: Mutex<HashSet<OwnedUserId>>,
    /// Moves on after every epoch write (once the epochs cache has forgotten the user).
    epochs_generation: std::sync::atomic::AtomicU64,
    /// Per stripe of `read_locks`: moves on after each removal of read rows, so counts read
    /// while one was being written are not kept.
    read_generations: Vec<std::sync::atomic::AtomicU64>,
    /// Members' unread counts in rooms as last read, with what they were read under.
    known_unread: Mutex<HashMap<(OwnedUserId, OwnedRoomId), KnownUnread>>,
    /// Whether `known_unread` is used: not with several processes, whose rule changes and
    /// removals of read rows this process's generations do not see.
    keep_unread_counts: bool,
}

/// What a member's unread counts in a room were read under: the room's last event position
/// (an event's notification rows are written before its position is announced), its last
/// receipt position (a receipt is written before), the epochs generation, the removals of
/// read rows in the member's stripe (rows and bases are not read at one instant, so counts
/// read while a removal was written are not kept), and where the member's join began. Counts read after taking an unchanged key are the same counts: only
/// an appended event, a receipt, a rule change that moves the member's class, or a new
/// membership changes them (removing read rows keeps their totals in the bases), and each
/// moves one of these on after its rows are written.
#[derive(Clone, Copy, PartialEq, Eq)]
struct UnreadKey {
    events: u64,
    receipts: u64,
    epochs: u64,
    /// The member's stripe's removals of read rows.
    removals: u64,
    joined_since: u64,
}

struct KnownUnread {
    key: UnreadKey,
    counts: UnreadCounts,
}

/// Members' unread counts kept in memory at most (a few hundred bytes each, and only for
/// members who sync); past it they are all read again.
const MAX_KNOWN_UNREAD: usize = 50_000;

/// Notification and highlight totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Totals {
    notified: u64,
    highlighted: u64,
}

impl Totals {
    fn of(outcome: Option<&Outcome>) -> Self {
        match outcome {
            Some(o) => Totals { notified: 1, highlighted: u64::from(o.highlight) },
            None => Totals::default(),
        }
    }

    fn plus(self, other: Totals) -> Totals {
        Totals { notified: self.notified + other.notified, highlighted: self.highlighted + other.highlighted }
    }
}

/// What one thread key has for a member: their classes' heads in the room, and their base.
type ThreadRows = (Vec<(u64, PushClassHead)>, Option<PushCountBase>);

/// A member's running totals in a room and thread over the events they were evaluated alone
/// for: their own, and what their class counted for them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    own: Totals,
    class: Totals,
}

impl From<&PushCountRecord> for Tally {
    fn from(r: &PushCountRecord) -> Self {
        Tally {
            own: Totals { notified: r.notified, highlighted: r.highlighted },
            class: Totals { notified: r.class_notified, highlighted: r.class_highlighted },
        }
    }
}

impl From<&PushCountBase> for Tally {
    fn from(b: &PushCountBase) -> Self {
        Tally {
            own: Totals { notified: b.notified, highlighted: b.highlighted },
            class: Totals { notified: b.class_notified, highlighted: b.class_highlighted },
        }
    }
}

#[derive(Default)]
struct TotalsCache {
    rooms: HashMap<OwnedRoomId, HashMap<(OwnedUserId, String), Tally>>,
    entries: usize,
}

/// The tallies an appended event's rows brought, to remember once its batch is written
/// ([`Notifications::counted`]).
#[must_use]
pub struct Counted {
    room_id: OwnedRoomId,
    totals: Vec<((OwnedUserId, String), Tally)>,
    /// Members whose rows in the room went (they left): their totals are forgotten.
    left: Option<OwnedUserId>,
}

/// Users' rules as evaluation reads them, and the classes they fall in.
struct RuleCache {
    users: HashMap<OwnedUserId, UserRules>,
    /// Templates to classes; `classes[DEFAULT_CLASS]` is the defaults'.
    templates: HashMap<Template, u64>,
    /// By durable class ID.
    classes: Vec<Class>,
}

/// One user's rules, as kept in memory.
#[derive(Clone)]
enum UserRules {
    /// The server defaults (no rules stored): the rules are made when needed.
    Default,
    /// Stored rules, and their class (`None`: evaluated on their own).
    Stored { ruleset: Arc<Ruleset>, class: Option<u64> },
}

/// Users whose rules share one template.
struct Class {
    /// The template's rules for the neutral user.
    rules: Ruleset,
    /// Its members are always evaluated on their own (`Template::personal`).
    personal: bool,
}

/// A room's joined local members as evaluation reads them: the classes they count in, and
/// those evaluated on their own whatever the event.
struct Partition {
    /// The rules generation it was made under.
    generation: u64,
    /// By class ID: how many members count in it.
    present: Vec<u32>,
    alone: Vec<(OwnedUserId, UserRules, Option<u64>)>,
}

impl Partition {
    /// Count a member in (or, `joined` false, out of) `class`, or among those evaluated on
    /// their own (`None`).
    fn place(&mut self, class: Option<u64>, user: &UserId, rules: UserRules, joined: bool) {
        match class {
            Some(class) => {
                let index = class as usize;
                if self.present.len() <= index {
                    self.present.resize(index + 1, 0);
                }
                let count = &mut self.present[index];
                *count = if joined { count.saturating_add(1) } else { count.saturating_sub(1) };
            }
            None => {
                self.alone.retain(|(u, _, _)| u != user);
                if joined {
                    self.alone.push((user.to_owned(), rules, None));
                }
            }
        }
    }
}

/// A user's classes over time: each from a stream position on, oldest first.
type Epochs = Arc<[(u64, Option<u64>)]>;

/// Users whose epochs are kept in memory at most; past it the cache starts over.
const MAX_CACHED_EPOCHS: usize = 50_000;

/// What evaluating an event gave one class or member: the actions, if they notify.
#[derive(Clone)]
struct Outcome {
    actions: JsonValue,
    highlight: bool,
}

impl Notifications {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &Arc<dyn KvStore>,
        clock: Arc<dyn crate::service::clock::Clock>,
        server_name: OwnedServerName,
        account_data: Arc<AccountData>,
        events: Arc<Events>,
        members: Arc<Memberships>,
        receipts: Arc<Receipts>,
        keep_unread_counts: bool,
    ) -> Result<Self> {
        let neutral = UserId::parse(format!("@conduit-push-{:016x}:{server_name}", rand::random::<u64>()))
            .unwrap_or_else(|_| UserId::parse("@conduit-push-neutral:invalid").expect("a valid user ID"));
        let default_template = rules::template_of(&Ruleset::server_default(&neutral), &neutral);
        let default_class = Class {
            rules: rules::instantiate(&default_template, &neutral)
                .unwrap_or_else(|| Ruleset::server_default(&neutral)),
            personal: default_template.personal,
        };
        let classes_table = PUSH_CLASSES.open(store);
        // The stored classes keep their IDs: notification rows name them. Class 0, the
        // defaults, is whatever this build's defaults are, and is not stored.
        let mut cache =
            RuleCache { users: HashMap::new(), templates: HashMap::new(), classes: vec![default_class] };
        for row in classes_table.scan(KeyRange::all(), Direction::Forward)? {
            let (id, record) = row?;
            let template = Template { text: record.template, personal: record.personal };
            if id != cache.classes.len() as u64 {
                return Err(Error::internal(format!("push class {id} is out of sequence")));
            }
            let rules = rules::instantiate(&template, &neutral)
                .ok_or_else(|| Error::internal(format!("push class {id} is not a ruleset")))?;
            cache.classes.push(Class { rules, personal: template.personal });
            cache.templates.insert(template, id);
        }
        let pushers = PUSHERS.open(store);
        let mut pusher_users = HashSet::new();
        for row in pushers.scan(KeyRange::all(), Direction::Forward)? {
            let ((user, _, _), _) = row?;
            pusher_users.insert(user);
        }
        Ok(Self {
            counts: PUSH_COUNTS.open(store),
            bases: PUSH_COUNT_BASES.open(store),
            classes: classes_table,
            epochs: PUSH_EPOCHS.open(store),
            class_counts: PUSH_CLASS_COUNTS.open(store),
            class_heads: PUSH_CLASS_HEADS.open(store),
            log: PUSH_LOG.open(store),
            log_order: PUSH_LOG_ORDER.open(store),
            notifications: NOTIFICATIONS.open(store),
            pushers,
            account_data,
            events,
            members,
            receipts,
            store: Arc::clone(store),
            clock,
            server_name,
            neutral,
            rules: Mutex::new(cache),
            rules_write: Mutex::new(()),
            gate: RwLock::new(()),
            rules_generation: std::sync::atomic::AtomicU64::new(0),
            totals: Mutex::default(),
            read_locks: (0..READ_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            pusher_users: Mutex::new(pusher_users),
            epochs_cache: GuardedCache::new(MAX_CACHED_EPOCHS),
            epochs_generation: std::sync::atomic::AtomicU64::new(0),
            read_generations: (0..READ_LOCK_STRIPES).map(|_| std::sync::atomic::AtomicU64::new(0)).collect(),
            known_unread: Mutex::default(),
            keep_unread_counts,
        })
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
        let rules = match stored {
            None => UserRules::Default,
            Some(ruleset) => {
                let class = self.class_of(&ruleset, user_id)?;
                UserRules::Stored { ruleset: Arc::new(ruleset), class }
            }
        };
        let mut cache = self.lock_rules();
        if cache.users.len() >= RULE_CACHE_USERS {
            cache.users.clear();
        }
        cache.users.insert(user_id.to_owned(), rules.clone());
        Ok(rules)
    }

    /// The class of a user's stored rules, made (and stored, for good) if new; `None` when
    /// there are too many. Called under `rules_write`. The next ID is taken in a
    /// transaction: when another process sharing the database took it first (for its own
    /// new template), its class is learnt from the table and the template looked up again,
    /// so every process gives a template the same ID.
    fn class_of(&self, ruleset: &Ruleset, user_id: &UserId) -> Result<Option<u64>> {
        let template = rules::template_of(ruleset, user_id);
        let mut cache = self.lock_rules();
        loop {
            if let Some(class) = cache.templates.get(&template) {
                return Ok(Some(*class));
            }
            if cache.classes.len() >= MAX_CLASSES {
                return Ok(None);
            }
            let Some(rules) = rules::instantiate(&template, &self.neutral) else { return Ok(None) };
            let id = cache.classes.len() as u64;
            let record = PushClassRecord { template: template.text.clone(), personal: template.personal };
            let theirs = transaction(self.classes.store(), Durability::Synced, |tx| {
                Ok::<_, Error>(match self.classes.get_in(tx, &id)? {
                    Some(theirs) => (Some(theirs), false),
                    None => {
                        self.classes.put_in(tx, &id, &record)?;
                        (None, true)
                    }
                })
            })?;
            match theirs {
                None => {
                    cache.classes.push(Class { rules, personal: template.personal });
                    cache.templates.insert(template, id);
                    return Ok(Some(id));
                }
                Some(theirs) => {
                    let known = Template { text: theirs.template, personal: theirs.personal };
                    let rules = rules::instantiate(&known, &self.neutral)
                        .ok_or_else(|| Error::internal(format!("push class {id} is not a ruleset")))?;
                    cache.classes.push(Class { rules, personal: known.personal });
                    cache.templates.insert(known, id);
                }
            }
        }
    }

    /// The class a user's unread counts follow with these rules: `None` for a user of
    /// another server, one whose ID a lowercased name does not stand for, or one whose rules
    /// are evaluated on their own.
    fn counted_class(&self, cache: &RuleCache, user_id: &UserId, rules: &UserRules) -> Option<u64> {
        if user_id.server_name() != self.server_name
            || user_id.localpart().bytes().any(|b| b.is_ascii_uppercase())
        {
            return None;
        }
        match rules {
            UserRules::Default => Some(DEFAULT_CLASS),
            UserRules::Stored { class: Some(class), .. } => {
                (!cache.classes[*class as usize].personal).then_some(*class)
            }
            UserRules::Stored { class: None, .. } => None,
        }
    }

    /// The class the user's unread counts follow now.
    fn class_now(&self, user_id: &UserId) -> Result<Option<u64>> {
        let rules = self.user_rules(user_id)?;
        Ok(self.counted_class(&self.lock_rules(), user_id, &rules))
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
    /// When the class their counts follow changes, the change's position starts a new epoch.
    pub fn update_ruleset(
        &self,
        user_id: &UserId,
        change: impl FnOnce(&mut Ruleset) -> Result<()>,
    ) -> Result<()> {
        // No event is between its evaluation and its position while the change takes its own.
        let _gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let before = self.class_now(user_id)?;
        let position = {
            let _writing = self.rules_write.lock().unwrap_or_else(|p| p.into_inner());
            let mut ruleset = self.stored_ruleset(user_id)?;
            change(&mut ruleset)?;
            let content = serde_json::value::to_raw_value(&PushRulesContent { global: ruleset })
                .map_err(|e| Error::internal(format!("serialising push rules: {e}")))?;
            let position = self.account_data.set(user_id, None, PUSH_RULES, content)?;
            // The next event is evaluated with the new rules.
            self.lock_rules().users.remove(user_id);
            self.rules_generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            position
        };
        let after = self.class_now(user_id)?;
        if before != after {
            let mut batch = WriteBatch::new();
            if !self.epochs.has_prefix(&user_id.to_owned())? {
                self.epochs.put(&mut batch, &(user_id.to_owned(), 0), &PushEpochRecord { class: before })?;
            }
            self.epochs.put(
                &mut batch,
                &(user_id.to_owned(), position),
                &PushEpochRecord { class: after },
            )?;
            self.store.write(batch)?;
            self.epochs_cache.invalidate([user_id]);
            // After the cache forgot the user: counts read under the new generation read the
            // new epochs.
            self.epochs_generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    /// The classes the user's counts followed: each from a position on (after it), oldest
    /// first.
    fn epochs_of(&self, user_id: &UserId) -> Result<Epochs> {
        let load = || {
            let mut epochs = Vec::new();
            for row in self.epochs.scan_prefix(&user_id.to_owned(), Direction::Forward)? {
                let ((_, from), record) = row?;
                epochs.push((from, record.class));
            }
            if epochs.is_empty() {
                epochs.push((0, self.class_now(user_id)?));
            }
            Ok(epochs.into())
        };
        // Other processes write epochs this one would not hear of in time: read them.
        if self.keep_unread_counts { self.epochs_cache.get_or_load(user_id, load) } else { load() }
    }

    /// Another process sharing the database changed `user_id`'s push rules (`None`: maybe
    /// anyone's): the next event is evaluated with the stored rules, and rooms' partitions
    /// are made again.
    pub fn rules_changed_elsewhere(&self, user_id: Option<&UserId>) {
        {
            let _writing = self.rules_write.lock().unwrap_or_else(|p| p.into_inner());
            let mut cache = self.lock_rules();
            match user_id {
                Some(user_id) => {
                    cache.users.remove(user_id);
                }
                None => cache.users.clear(),
            }
        }
        self.rules_generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match user_id {
            Some(user_id) => self.epochs_cache.invalidate([user_id]),
            None => self.epochs_cache.clear(),
        }
        self.epochs_generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Another process sharing the database stored a pusher for `user_id` (`None`: maybe
    /// for anyone, read again from the table): the fan-out considers them from now on.
    pub fn pusher_set_elsewhere(&self, user_id: Option<&UserId>) -> Result<()> {
        let mut users = HashSet::new();
        match user_id {
            Some(user_id) => {
                users.insert(user_id.to_owned());
            }
            None => {
                for row in self.pushers.scan(KeyRange::all(), Direction::Forward)? {
                    let ((user, _, _), _) = row?;
                    users.insert(user);
                }
            }
        }
        self.pusher_users.lock().unwrap_or_else(|p| p.into_inner()).extend(users);
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

    /// Held by the append path from evaluating an event until the event has its stream
    /// position (see `gate`).
    pub fn evaluating(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The joined local members of a room by class (the sender of an event included), as
    /// evaluation reads them: kept with the roster, brought up to date with each membership
    /// change, and made again when any member's rules change.
    fn partition(&self, roster: &Roster) -> Result<Arc<Partition>> {
        let generation = self.rules_generation.load(std::sync::atomic::Ordering::SeqCst);
        roster.derived(
            |known: &Partition| known.generation == generation,
            |known, changes| {
                let mut partition =
                    Partition { generation, present: known.present.clone(), alone: known.alone.clone() };
                for change in changes {
                    if change.user_id.server_name() != self.server_name {
                        continue;
                    }
                    let rules = self.user_rules(&change.user_id)?;
                    partition.place(
                        self.counted_class(&self.lock_rules(), &change.user_id, &rules),
                        &change.user_id,
                        rules,
                        change.joined,
                    );
                }
                Ok(partition)
            },
            || {
                let mut partition = Partition { generation, present: Vec::new(), alone: Vec::new() };
                // Every member under one lock of the rules cache; those whose rules are not
                // in memory yet are read from storage afterwards (outside the lock).
                let mut missing: Vec<OwnedUserId> = Vec::new();
                {
                    let cache = self.lock_rules();
                    for user in roster.joined() {
                        if user.server_name() != self.server_name {
                            continue;
                        }
                        match cache.users.get(user) {
                            Some(rules) => partition.place(
                                self.counted_class(&cache, user, rules),
                                user,
                                rules.clone(),
                                true,
                            ),
                            None => missing.push(user.clone()),
                        }
                    }
                }
                for user in missing {
                    let rules = self.user_rules(&user)?;
                    let class = self.counted_class(&self.lock_rules(), &user, &rules);
                    partition.place(class, &user, rules, true);
                }
                Ok::<_, Error>(partition)
            },
        )
    }

    /// Evaluate an event about to be appended for the room's joined local members but its
    /// sender (and for the invitee of an invite), with the room state before it and its
    /// roster (joined members). Each class present among the members is evaluated once, for
    /// a neutral user; the members the event names (`@<localpart>:` in any of its strings),
    /// the members of personal classes and members with unusual IDs are evaluated with
    /// their own rules. Done before the event takes a stream position (under
    /// [`Self::evaluating`]), so a large room's evaluation holds back no one's sync.
    pub fn evaluate(
        &self,
        pdu: &Pdu,
        state: &StateMap,
        power_levels: RoomPowerLevels,
        roster: &Roster,
    ) -> Result<Evaluation> {
        let member_count = UInt::new_saturating(roster.joined_count());
        let local = |user: &UserId| user.server_name() == self.server_name;
        let mut invitee = None;
        if pdu.kind == TimelineEventType::RoomMember
            && pdu.content_value().get("membership").and_then(JsonValue::as_str) == Some("invite")
            && let Some(user) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
            && !roster.is_joined(&user)
            && user != pdu.sender
            && local(&user)
        {
            invitee = Some(user);
        }
        let thread = relations::relates_to(&pdu.content_value())
            .filter(|r| r.rel_type == THREAD)
            .map(|r| r.parent.to_string());
        let sender_joined = roster.is_joined(&pdu.sender);
        if roster.joined_count() == u64::from(sender_joined) && invitee.is_none() {
            return Ok(Evaluation { thread, ..Evaluation::default() });
        }
        let value = pdu.to_client_event(None).map_err(Error::internal)?;
        let raw: Raw<JsonValue> = Raw::from_json(crate::service::rooms::render::to_raw(&value)?);
        // Flattened once for every member, rather than once per member inside ruma.
        let flattened = FlattenedJson::from_raw(&raw);
        let power: PushConditionPowerLevelsCtx = power_levels.into();
        // The members the event names (by lowercased localpart: `event_match` ignores case).
        let mut named: HashSet<OwnedUserId> = HashSet::new();
        for localpart in rules::named_localparts(&value) {
            if let Ok(user) = UserId::parse(format!("@{localpart}:{}", self.server_name))
                && roster.is_joined(&user)
            {
                named.insert(user);
            }
        }

        // The room's members by class, made once per roster and rules (in a big room the
        // walk over the members is most of the cost of an event); the members the event
        // names leave their class for this event.
        let partition = self.partition(roster)?;
        let mut present: Vec<bool> = partition.present.iter().map(|count| *count > 0).collect();
        let mut alone: Vec<(OwnedUserId, UserRules, Option<u64>)> =
            partition.alone.iter().filter(|(user, _, _)| *user != pdu.sender).cloned().collect();
        for user in named {
            if user == pdu.sender || partition.alone.iter().any(|(u, _, _)| *u == user) {
                continue;
            }
            let rules = self.user_rules(&user)?;
            let counted = self.counted_class(&self.lock_rules(), &user, &rules);
            alone.push((user, rules, counted));
        }
        // The sender is not notified, but their class counts the event for everyone in it:
        // their own row takes it back.
        let mut evaluation = Evaluation { thread, ..Evaluation::default() };
        if sender_joined && local(&pdu.sender) {
            let counted = self.class_now(&pdu.sender)?;
            if let Some(class) = counted {
                let index = class as usize;
                if present.len() <= index {
                    present.resize(index + 1, false);
                }
                present[index] = true;
                evaluation.alone.push(Alone {
                    user_id: pdu.sender.clone(),
                    counted,
                    own: None,
                    joined: true,
                });
            }
        }

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
        {
            let cache = self.lock_rules();
            for (class, _) in present.iter().enumerate().filter(|(_, here)| **here) {
                // `None` also when a condition would wait (thread subscriptions, which are
                // not configured): nobody of the class is notified.
                let outcome =
                    match rules::first_match(&cache.classes[class].rules, &flattened, &neutral_context) {
                        Some(actions) => outcome_of(actions)?,
                        None => None,
                    };
                evaluation.classes.push((class as u64, outcome));
            }
        }
        let members = alone.into_iter().map(|(user, rules, counted)| (user, rules, counted, true));
        let invited = invitee.map(|user| (user, UserRules::Default, None, false));
        for (user_id, rules, counted, joined) in members.chain(invited) {
            let ruleset = match rules {
                UserRules::Default => match self.user_rules(&user_id)? {
                    UserRules::Default => Arc::new(Ruleset::server_default(&user_id)),
                    UserRules::Stored { ruleset, .. } => ruleset,
                },
                UserRules::Stored { ruleset, .. } => ruleset,
            };
            let context = context_for(&user_id, self.display_name(state, &user_id)?);
            let own = match rules::first_match(&ruleset, &flattened, &context) {
                Some(actions) => outcome_of(actions)?,
                None => None,
            };
            evaluation.alone.push(Alone { user_id, counted, own, joined });
        }
        Ok(evaluation)
    }

    /// Queue the notification rows of an appended event (in the event's batch): its
    /// classes' running totals, the rows of members evaluated alone whose outcome differs
    /// from their class's, and its `push_log` row; `left` is a member the event takes out of
    /// the room, whose rows there go. The caller holds the room's append lock and passes the
    /// answer to [`Self::counted`] once the batch is written.
    pub fn put_in(
        &self,
        batch: &mut WriteBatch,
        event: &StoredEvent,
        evaluation: Evaluation,
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
        let thread_key = evaluation.thread.clone().unwrap_or_else(|| MAIN.to_owned());
        let class_outcome = |class: Option<u64>| {
            class
                .and_then(|c| evaluation.classes.iter().find(|(id, _)| *id == c))
                .and_then(|(_, o)| o.as_ref())
        };
        let mut logged_classes = Vec::new();
        let notified: Vec<_> = evaluation
            .classes
            .iter()
            .filter_map(|(class, outcome)| outcome.as_ref().map(|o| (*class, o)))
            .collect();
        let keys: Vec<_> =
            notified.iter().map(|(class, _)| (room_id.clone(), *class, thread_key.clone())).collect();
        // Every class's head in one read (one round trip on PostgreSQL, however many classes).
        let heads = self.class_heads.get_many(&keys)?;
        for (((class, outcome), key), head) in notified.into_iter().zip(keys).zip(heads) {
            let head = head.unwrap_or_default();
            let totals = PushClassCount {
                notified: head.notified + 1,
                highlighted: head.highlighted + u64::from(outcome.highlight),
            };
            self.class_counts.put(
                batch,
                &(room_id.clone(), class, thread_key.clone(), event.stream),
                &totals,
            )?;
            let head = PushClassHead {
                stream: event.stream,
                notified: totals.notified,
                highlighted: totals.highlighted,
            };
            self.class_heads.put(batch, &key, &head)?;
            logged_classes.push(PushLogClass {
                class,
                actions: outcome.actions.clone(),
                highlight: outcome.highlight,
            });
        }
        let mut logged_members = Vec::new();
        for member in &evaluation.alone {
            let by_class = class_outcome(member.counted);
            if member.own.is_some() || by_class.is_some() {
                logged_members.push(PushLogMember {
                    user_id: member.user_id.clone(),
                    actions: member.own.as_ref().map(|o| o.actions.clone()),
                    highlight: member.own.as_ref().is_some_and(|o| o.highlight),
                });
            }
            let (own, class) = (Totals::of(member.own.as_ref()), Totals::of(by_class));
            if !member.joined || own == class {
                continue;
            }
            let user = &member.user_id;
            let previous = self.latest_tally(batch, room_id, user, &thread_key)?;
            let tally = Tally { own: previous.own.plus(own), class: previous.class.plus(class) };
            let record = PushCountRecord {
                event_id: pdu.event_id.clone(),
                highlight: member.own.as_ref().is_some_and(|o| o.highlight),
                notified: tally.own.notified,
                highlighted: tally.own.highlighted,
                class_notified: tally.class.notified,
                class_highlighted: tally.class.highlighted,
            };
            self.counts.put(
                batch,
                &(user.clone(), room_id.clone(), thread_key.clone(), event.stream),
                &record,
            )?;
            counted.totals.push(((user.clone(), thread_key.clone()), tally));
        }
        if !logged_classes.is_empty() || logged_members.iter().any(|m| m.actions.is_some()) {
            let record = PushLogRecord {
                event_id: pdu.event_id.clone(),
                sender: Some(pdu.sender.clone()),
                thread: evaluation.thread,
                ts: pdu.origin_server_ts.get().into(),
                classes: logged_classes,
                alone: logged_members,
            };
            self.log.put(batch, &(room_id.clone(), event.stream), &record)?;
            self.log_order.put(batch, &event.stream, room_id)?;
        }
        Ok(counted)
    }

    /// An appended event's batch is written: remember the totals its rows brought.
    pub fn counted(&self, counted: Counted) {
        let mut cache = self.lock_totals();
        if cache.entries + counted.totals.len() > TOTALS_CACHE_ENTRIES {
            *cache = TotalsCache::default();
        }
        let TotalsCache { rooms, entries } = &mut *cache;
        if counted.totals.is_empty() && counted.left.is_none() {
            return;
        }
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

    /// The member's latest tally in the room and thread: remembered, or read from their
    /// last row (or the base, when every row was read and removed); a thread without either
    /// gets its zero base in `batch`. Called under the room's append lock.
    fn latest_tally(
        &self,
        batch: &mut WriteBatch,
        room_id: &RoomId,
        user_id: &UserId,
        thread: &str,
    ) -> Result<Tally> {
        let key = (user_id.to_owned(), thread.to_owned());
        if let Some(known) = self.lock_totals().rooms.get(room_id).and_then(|r| r.get(&key)) {
            return Ok(*known);
        }
        let prefix = (user_id.to_owned(), room_id.to_owned(), thread.to_owned());
        // The rows before the base: a removal writes both in one batch.
        if let Some(row) = self.counts.scan_prefix(&prefix, Direction::Reverse)?.next() {
            let (_, record) = row?;
            return Ok(Tally::from(&record));
        }
        Ok(match self.bases.get(&prefix)? {
            Some(base) => Tally::from(&base),
            None => {
                self.bases.put(batch, &prefix, &PushCountBase::default())?;
                Tally::default()
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
        self.read_positions_from(user_id, room_id, self.joined_since(user_id, room_id)?)
    }

    /// Where the user's present join in the room began; 0 when not joined.
    fn joined_since(&self, user_id: &UserId, room_id: &RoomId) -> Result<u64> {
        // Nothing from before the user joined counts (their invite, say), as in Synapse.
        Ok(match self.members.get(room_id, user_id)? {
            Some(record) if record.membership == "join" => record.joined_since(),
            _ => 0,
        })
    }

    /// [`Self::read_positions`] for a member whose join began at `joined_since`.
    fn read_positions_from(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        joined_since: u64,
    ) -> Result<(u64, HashMap<String, u64>)> {
        let mut unthreaded = joined_since;
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
    /// thread. Answered from memory when nothing that moves them happened since they were
    /// last read (see [`UnreadKey`]); otherwise read from the rows, in a few lookups per
    /// thread however long the room's history.
    pub fn unread_counts(&self, user_id: &UserId, room_id: &RoomId) -> Result<UnreadCounts> {
        if !self.keep_unread_counts {
            let joined_since = self.joined_since(user_id, room_id)?;
            return self.read_unread_counts(user_id, room_id, joined_since);
        }
        // The key is taken before anything it stands for is read.
        let epochs_generation = self.epochs_generation.load(std::sync::atomic::Ordering::SeqCst);
        let removals = self.read_generations[read_stripe(user_id)].load(std::sync::atomic::Ordering::SeqCst);
        let events = self.events.last_position(room_id)?;
        let receipts = self.receipts.last_position(room_id)?;
        let joined_since = self.joined_since(user_id, room_id)?;
        let key = UnreadKey { events, receipts, epochs: epochs_generation, removals, joined_since };
        let memo_key = (user_id.to_owned(), room_id.to_owned());
        if let Some(known) = self.lock_known_unread().get(&memo_key)
            && known.key == key
        {
            return Ok(known.counts.clone());
        }
        let counts = self.read_unread_counts(user_id, room_id, joined_since)?;
        let mut known = self.lock_known_unread();
        if known.len() >= MAX_KNOWN_UNREAD {
            known.clear();
        }
        known.insert(memo_key, KnownUnread { key, counts: counts.clone() });
        Ok(counts)
    }

    fn lock_known_unread(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(OwnedUserId, OwnedRoomId), KnownUnread>> {
        self.known_unread.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The unread counts as the rows have them.
    fn read_unread_counts(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        joined_since: u64,
    ) -> Result<UnreadCounts> {
        let (unthreaded, threads) = self.read_positions_from(user_id, room_id, joined_since)?;
        let epochs = self.epochs_of(user_id)?;
        let mut room = (0u64, 0u64);
        let mut per_thread: BTreeMap<OwnedEventId, (u64, u64)> = BTreeMap::new();
        for (thread, unread) in
            self.unread_by_thread(user_id, room_id, &epochs, unthreaded, &threads, false)?
        {
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

    /// A class's totals in a room and thread at position `at` (its last row at or before).
    fn class_totals_at(&self, room_id: &RoomId, class: u64, thread: &str, at: u64) -> Result<Totals> {
        let prefix = (room_id.to_owned(), class, thread.to_owned());
        let range = KeyRange::prefix(prefix.to_key_bytes())
            .up_to((room_id.to_owned(), class, thread.to_owned(), at).to_key_bytes());
        Ok(match self.class_counts.scan(range, Direction::Reverse)?.next() {
            Some(row) => {
                let (_, c) = row?;
                Totals { notified: c.notified, highlighted: c.highlighted }
            }
            None => Totals::default(),
        })
    }

    /// The member's tally in a room and thread at position `at`: their last row at or
    /// before it, or the base.
    fn tally_at(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        thread: &str,
        at: u64,
        base: Tally,
    ) -> Result<Tally> {
        let prefix = (user_id.to_owned(), room_id.to_owned(), thread.to_owned());
        let range = KeyRange::prefix(prefix.to_key_bytes())
            .up_to((user_id.to_owned(), room_id.to_owned(), thread.to_owned(), at).to_key_bytes());
        Ok(match self.counts.scan(range, Direction::Reverse)?.next() {
            Some(row) => Tally::from(&row?.1),
            None => base,
        })
    }

    /// The member's latest tally in a room and thread, and their tally at `read_to`: one
    /// walk back from their last row when the read position is among their last few rows
    /// (the usual case: their own messages since they last read), a second look-up
    /// otherwise, so the cost never grows with the history.
    fn tallies(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        thread: &str,
        read_to: u64,
        base: Tally,
    ) -> Result<(Tally, Tally)> {
        /// Rows walked back from the latest before looking the read position up instead.
        const NEAR_ROWS: usize = 4;
        let prefix = (user_id.to_owned(), room_id.to_owned(), thread.to_owned());
        let mut rows = self.counts.scan(KeyRange::prefix(prefix.to_key_bytes()), Direction::Reverse)?;
        let latest = match rows.next() {
            None => return Ok((base, base)),
            Some(row) => {
                let ((_, _, _, stream), record) = row?;
                let latest = Tally::from(&record);
                if stream <= read_to {
                    return Ok((latest, latest));
                }
                latest
            }
        };
        for _ in 0..NEAR_ROWS {
            match rows.next() {
                None => return Ok((latest, base)),
                Some(row) => {
                    let ((_, _, _, stream), record) = row?;
                    if stream <= read_to {
                        return Ok((latest, Tally::from(&record)));
                    }
                }
            }
        }
        drop(rows);
        Ok((latest, self.tally_at(user_id, room_id, thread, read_to, base)?))
    }

    /// Per thread key with notifications after the read positions, how many (and
    /// highlights); with `first_only`, stop at the first such thread. Per thread: the
    /// totals of the member's classes over the unread span (one class, usually), plus their
    /// own rows' totals over it less what their class counted in those rows.
    fn unread_by_thread(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        epochs: &[(u64, Option<u64>)],
        unthreaded: u64,
        threads: &HashMap<String, u64>,
        first_only: bool,
    ) -> Result<Vec<(String, Totals)>> {
        // Every thread key the member's classes or own rows have, with the heads and base.
        let mut keys: BTreeMap<String, ThreadRows> = BTreeMap::new();
        let mut classes: Vec<u64> = epochs.iter().filter_map(|(_, class)| *class).collect();
        classes.sort_unstable();
        classes.dedup();
        for class in classes {
            for row in self.class_heads.scan_prefix(&(room_id.to_owned(), class), Direction::Forward)? {
                let ((_, _, thread), head) = row?;
                keys.entry(thread).or_default().0.push((class, head));
            }
        }
        for row in self.bases.scan_prefix(&(user_id.to_owned(), room_id.to_owned()), Direction::Forward)? {
            let ((_, _, thread), base) = row?;
            keys.entry(thread).or_default().1 = Some(base);
        }
        let mut found = Vec::new();
        for (thread, (heads, base)) in keys {
            let read_to = unthreaded.max(threads.get(&thread).copied().unwrap_or(0));
            let (mut notified, mut highlighted) = (0i128, 0i128);
            for (index, (from, class)) in epochs.iter().enumerate() {
                let to = epochs.get(index + 1).map(|(next, _)| *next);
                let Some(class) = class else { continue };
                let Some((_, head)) = heads.iter().find(|(c, _)| c == class) else { continue };
                let low = (*from).max(read_to);
                let high = to.unwrap_or(u64::MAX).min(head.stream);
                if high <= low {
                    continue;
                }
                let at_high = match to {
                    Some(to) if to < head.stream => self.class_totals_at(room_id, *class, &thread, to)?,
                    _ => Totals { notified: head.notified, highlighted: head.highlighted },
                };
                let at_low = self.class_totals_at(room_id, *class, &thread, low)?;
                notified += i128::from(at_high.notified) - i128::from(at_low.notified);
                highlighted += i128::from(at_high.highlighted) - i128::from(at_low.highlighted);
            }
            if let Some(base) = base {
                let base = Tally::from(&base);
                let (latest, at_read) = self.tallies(user_id, room_id, &thread, read_to, base)?;
                notified += i128::from(latest.own.notified) - i128::from(at_read.own.notified);
                notified -= i128::from(latest.class.notified) - i128::from(at_read.class.notified);
                highlighted += i128::from(latest.own.highlighted) - i128::from(at_read.own.highlighted);
                highlighted -= i128::from(latest.class.highlighted) - i128::from(at_read.class.highlighted);
            }
            let unread = Totals {
                notified: u64::try_from(notified.max(0)).unwrap_or(u64::MAX),
                highlighted: u64::try_from(highlighted.max(0)).unwrap_or(u64::MAX),
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
    /// each thread's base taking the tally of its last removed row. Rows after the read
    /// positions are untouched, and appends only add rows after them (the receipted event is
    /// committed, and the room appends in order), so this runs beside the append path.
    fn remove_read(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        let stripe = read_stripe(user_id);
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
                let base = PushCountBase {
                    notified: last.notified,
                    highlighted: last.highlighted,
                    class_notified: last.class_notified,
                    class_highlighted: last.class_highlighted,
                    upto: read_to,
                };
                self.bases.put(&mut batch, &prefix, &base)?;
            }
        }
        if !batch.is_empty() {
            self.store.write_buffered(batch)?;
            // Counts read while the rows were going may have seen a part of the change.
            self.read_generations[stripe].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }

    /// A purged room's rows are gone: forget its members' totals.
    pub fn purged_room(&self, room_id: &RoomId) {
        let mut cache = self.lock_totals();
        if let Some(room) = cache.rooms.remove(room_id) {
            cache.entries -= room.len();
        }
        drop(cache);
        self.lock_known_unread().retain(|(_, room), _| room != room_id);
    }

    /// Remove `/notifications` rows past their keeping time (a day, a month for highlights,
    /// as Synapse keeps them), at most `budget` rows a call; answers how many went. Each
    /// user's rows are in position order, so the walk leaves a user at their first row
    /// young enough to keep and seeks to the next user. The push log's rows go after a month.
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
        // The log in position order: it stops at the first row young enough to keep (near
        // enough: origin timestamps are not quite in position order).
        for row in self.log_order.scan(KeyRange::all(), Direction::Forward)? {
            if removed >= budget {
                break;
            }
            let (stream, room_id) = row?;
            if let Some(record) = self.log.get(&(room_id.clone(), stream))?
                && record.ts >= highlight_before
            {
                break;
            }
            self.log.delete(&mut batch, &(room_id, stream));
            self.log_order.delete(&mut batch, &stream);
            removed += 1;
        }
        if !batch.is_empty() {
            self.store.write(batch)?;
        }
        Ok(removed)
    }

    /// Queue the removal of a purged room's notification rows: its classes' totals, its
    /// log, and each of `users`' rows in it.
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
        self.class_counts.delete_prefix(batch, &room_id.to_owned())?;
        self.class_heads.delete_prefix(batch, &room_id.to_owned())?;
        for row in self.log.scan_prefix(&room_id.to_owned(), Direction::Forward)? {
            let (key, _) = row?;
            self.log_order.delete(batch, &key.1);
            self.log.delete(batch, &key);
        }
        Ok(())
    }

    /// What a logged event does for `user_id`: the actions and whether it highlights, if
    /// it notifies them. `joined_since` is where their present membership began (`None`: not
    /// joined), `epochs` their classes over time.
    fn outcome_for(
        user_id: &UserId,
        stream: u64,
        record: &PushLogRecord,
        joined_since: Option<u64>,
        epochs: &[(u64, Option<u64>)],
    ) -> Option<(JsonValue, bool)> {
        if let Some(member) = record.alone.iter().find(|m| m.user_id == user_id) {
            return member.actions.clone().map(|actions| (actions, member.highlight));
        }
        if record.sender.as_deref() == Some(user_id) || joined_since.is_none_or(|since| since >= stream) {
            return None;
        }
        let class = epochs.iter().rev().find(|(from, _)| *from < stream).and_then(|(_, class)| *class)?;
        let logged = record.classes.iter().find(|c| c.class == class)?;
        Some((logged.actions.clone(), logged.highlight))
    }

    /// The user's notifications, newest first, before position `from`: the push log of
    /// their joined and invited rooms, merged by position.
    pub fn list(
        &self,
        user_id: &UserId,
        from: Option<u64>,
        limit: usize,
        only_highlight: bool,
    ) -> Result<(Vec<NotificationEntry>, Option<u64>)> {
        let now_ms = self.clock.now_ms();
        let epochs = self.epochs_of(user_id)?;
        let mut rooms: Vec<(OwnedRoomId, Option<u64>)> = Vec::new();
        for room_id in self.members.rooms_of_user(user_id, &MembershipState::Join)? {
            let since = self.members.get(&room_id, user_id)?.map(|r| r.joined_since());
            rooms.push((room_id, since));
        }
        for room_id in self.members.rooms_of_user(user_id, &MembershipState::Invite)? {
            rooms.push((room_id, None));
        }
        let mut cursors = Vec::with_capacity(rooms.len());
        let mut heap = BinaryHeap::new();
        for (index, (room_id, _)) in rooms.iter().enumerate() {
            let mut range = KeyRange::prefix(room_id.to_key_bytes());
            if let Some(from) = from {
                range = range.before((room_id.clone(), from).to_key_bytes());
            }
            let mut rows = self.log.scan(range, Direction::Reverse)?;
            if let Some(row) = rows.next() {
                let ((_, stream), record) = row?;
                heap.push((stream, index));
                cursors.push((rows, Some(record)));
            } else {
                cursors.push((rows, None));
            }
        }
        let mut read_cache: HashMap<usize, (u64, HashMap<String, u64>)> = HashMap::new();
        let mut found = Vec::new();
        let mut next = None;
        // A page examines a bounded number of rows (only=highlight or events that notify
        // others can skip many); a short page with a `next_token` is valid and the client
        // continues.
        let budget = limit.saturating_mul(20).saturating_add(200);
        let mut examined = 0;
        while let Some((stream, index)) = heap.pop() {
            if found.len() >= limit || examined >= budget {
                next = Some(stream + 1);
                break;
            }
            examined += 1;
            let (rows, current) = &mut cursors[index];
            let record = current.take().ok_or_else(|| Error::internal("push log cursor out of step"))?;
            if let Some(row) = rows.next() {
                let ((_, later), next_record) = row?;
                *current = Some(next_record);
                heap.push((later, index));
            }
            let (room_id, joined_since) = &rooms[index];
            let Some((actions, highlight)) =
                Self::outcome_for(user_id, stream, &record, *joined_since, &epochs)
            else {
                continue;
            };
            if only_highlight && !highlight {
                continue;
            }
            let keep_ms = if highlight { KEEP_HIGHLIGHT_MS } else { KEEP_NOTIFICATION_MS };
            if record.ts < now_ms.saturating_sub(keep_ms) {
                continue;
            }
            if let std::collections::hash_map::Entry::Vacant(entry) = read_cache.entry(index) {
                entry.insert(self.read_positions(user_id, room_id)?);
            }
            let (unthreaded, threads) = &read_cache[&index];
            let thread_key = record.thread.clone().unwrap_or_else(|| MAIN.to_owned());
            let read_to = (*unthreaded).max(threads.get(&thread_key).copied().unwrap_or(0));
            let actions: Vec<Action> = serde_json::from_value(actions).unwrap_or_default();
            found.push(NotificationEntry {
                stream,
                room_id: room_id.clone(),
                event_id: record.event_id,
                actions,
                ts: record.ts,
                read: stream <= read_to,
            });
        }
        Ok((found, next))
    }

    // ---- the push fan-out ----

    /// Positions of logged events after `after`, oldest first, at most `limit`.
    pub fn logged_after(&self, after: u64, limit: usize) -> Result<Vec<u64>> {
        let range = KeyRange::all().after(after.to_key_bytes());
        self.log_order
            .scan(range, Direction::Forward)?
            .take(limit)
            .map(|row| row.map(|(stream, _)| stream).map_err(Into::into))
            .collect()
    }

    /// Write the `notifications` rows of the logged event at `stream` for the members it
    /// notifies who have pushers (members then and now), and answer who they are. Run after
    /// the event by the push fan-out, so an event in a big room costs its sender nothing per
    /// member; a member who left since is not pushed.
    pub fn fan_out(&self, stream: u64) -> Result<Vec<OwnedUserId>> {
        // With nobody holding a pusher there is no candidate: the event is not even read
        // (two round trips per event on PostgreSQL).
        if self.pusher_users.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            return Ok(Vec::new());
        }
        let Some(room_id) = self.log_order.get(&stream)? else { return Ok(Vec::new()) };
        let Some(record) = self.log.get(&(room_id.clone(), stream))? else { return Ok(Vec::new()) };
        let roster = self.members.roster(&room_id)?;
        let candidates: Vec<OwnedUserId> = {
            let with_pushers = self.pusher_users.lock().unwrap_or_else(|p| p.into_inner());
            let invited = record.alone.iter().map(|m| &m.user_id).filter(|u| !roster.is_joined(u));
            if with_pushers.len() < roster.joined().len() {
                let joined = with_pushers.iter().filter(|u| roster.is_joined(u));
                joined.chain(invited.filter(|u| with_pushers.contains(*u))).cloned().collect()
            } else {
                let joined = roster.joined().iter().filter(|u| with_pushers.contains(*u));
                joined.chain(invited.filter(|u| with_pushers.contains(*u))).cloned().collect()
            }
        };
        let mut batch = WriteBatch::new();
        let mut notified = Vec::new();
        for user_id in candidates {
            if !self.pushers.has_prefix(&user_id)? {
                continue;
            }
            let joined_since = match self.members.get(&room_id, &user_id)? {
                Some(m) if m.membership == "join" => Some(m.joined_since()),
                _ => None,
            };
            let epochs = match record.alone.iter().any(|m| m.user_id == user_id) {
                true => Arc::from([]),
                false => self.epochs_of(&user_id)?,
            };
            let Some((actions, highlight)) =
                Self::outcome_for(&user_id, stream, &record, joined_since, &epochs)
            else {
                continue;
            };
            let entry = NotificationRecord {
                room_id: room_id.clone(),
                event_id: record.event_id.clone(),
                actions,
                highlight,
                ts: record.ts,
            };
            self.notifications.put(&mut batch, &(user_id.clone(), stream), &entry)?;
            notified.push(user_id);
        }
        if !batch.is_empty() {
            self.store.write(batch)?;
        }
        Ok(notified)
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
        let epochs = self.epochs_of(user_id)?;
        let mut rooms = 0;
        for room_id in self.members.rooms_of_user(user_id, &MembershipState::Join)? {
            let (unthreaded, threads) = self.read_positions(user_id, &room_id)?;
            let first = self.unread_by_thread(user_id, &room_id, &epochs, unthreaded, &threads, true)?;
            rooms += u64::from(!first.is_empty());
        }
        Ok(rooms)
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
                self.pusher_users.lock().unwrap_or_else(|p| p.into_inner()).insert(user_id.to_owned());
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

/// The stripe of `read_locks` (and `read_generations`) of a user.
fn read_stripe(user_id: &UserId) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    user_id.hash(&mut hasher);
    (hasher.finish() as usize) % READ_LOCK_STRIPES
}

fn counts((notify, highlight): (u64, u64)) -> UnreadNotificationsCount {
    let mut count = UnreadNotificationsCount::new();
    count.notification_count = Some(UInt::new_saturating(notify));
    count.highlight_count = Some(UInt::new_saturating(highlight));
    count
}
