//! `RateLimits`: Synapse's `rc_*` limits, one leaky bucket (`matrix::rate_limit`) per limiter
//! and key (a user, a client address, a room), on the server's clock. Owns the
//! `ratelimit_overrides` table (Synapse's per-user overrides, set through the admin API).
//!
//! The hot path is one sharded map lookup and a little arithmetic: the limits themselves are
//! atomics (replaced live by `reload`), overrides are held in memory, and whether the actor
//! is an admin is read only when a bucket would refuse. Memory is bounded: a shard forgets
//! drained buckets when it has doubled since it last looked, and never holds more than its
//! share of `MAX_KEYS_PER_LIMITER`; past that, the buckets nearest to drained go first, so
//! the heaviest users stay counted.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use ruma::{OwnedUserId, UserId};

use crate::{
    Error, Result,
    config::Config,
    matrix::rate_limit::{Bucket, Rate},
    service::{appservices::Appservices, clock::Clock, users::Users},
    storage::{
        KvStore, Table,
        tables::{RATELIMIT_OVERRIDES, RateLimitOverrideRecord},
    },
};

/// Every limiter, in the order of `Config::rates`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limiter {
    Message,
    AdminRedaction,
    Registration,
    RegistrationTokenValidity,
    LoginAddress,
    LoginAccount,
    LoginFailedAttempts,
    JoinsLocal,
    JoinsRemote,
    JoinsPerRoom,
    InvitesPerRoom,
    InvitesPerUser,
    InvitesPerIssuer,
    ThreepidValidation,
    MediaCreate,
    Presence,
    DelayedEventMgmt,
    Reports,
    RoomCreation,
    UserDirectory,
    KeyRequests,
}

const LIMITERS: usize = 21;

impl Limiter {
    pub const ALL: [Limiter; LIMITERS] = [
        Limiter::Message,
        Limiter::AdminRedaction,
        Limiter::Registration,
        Limiter::RegistrationTokenValidity,
        Limiter::LoginAddress,
        Limiter::LoginAccount,
        Limiter::LoginFailedAttempts,
        Limiter::JoinsLocal,
        Limiter::JoinsRemote,
        Limiter::JoinsPerRoom,
        Limiter::InvitesPerRoom,
        Limiter::InvitesPerUser,
        Limiter::InvitesPerIssuer,
        Limiter::ThreepidValidation,
        Limiter::MediaCreate,
        Limiter::Presence,
        Limiter::DelayedEventMgmt,
        Limiter::Reports,
        Limiter::RoomCreation,
        Limiter::UserDirectory,
        Limiter::KeyRequests,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The configuration key, which is also the limiter's name in metrics.
    pub fn key(self) -> &'static str {
        match self {
            Limiter::Message => "rc_message",
            Limiter::AdminRedaction => "rc_admin_redaction",
            Limiter::Registration => "rc_registration",
            Limiter::RegistrationTokenValidity => "rc_registration_token_validity",
            Limiter::LoginAddress => "rc_login.address",
            Limiter::LoginAccount => "rc_login.account",
            Limiter::LoginFailedAttempts => "rc_login.failed_attempts",
            Limiter::JoinsLocal => "rc_joins.local",
            Limiter::JoinsRemote => "rc_joins.remote",
            Limiter::JoinsPerRoom => "rc_joins_per_room",
            Limiter::InvitesPerRoom => "rc_invites.per_room",
            Limiter::InvitesPerUser => "rc_invites.per_user",
            Limiter::InvitesPerIssuer => "rc_invites.per_issuer",
            Limiter::ThreepidValidation => "rc_3pid_validation",
            Limiter::MediaCreate => "rc_media_create",
            Limiter::Presence => "rc_presence.per_user",
            Limiter::DelayedEventMgmt => "rc_delayed_event_mgmt",
            Limiter::Reports => "rc_reports",
            Limiter::RoomCreation => "rc_room_creation",
            Limiter::UserDirectory => "rc_user_directory",
            Limiter::KeyRequests => "rc_key_requests",
        }
    }

    /// Whether the bucket's key is the acting user's own account (or device), so that a
    /// per-user override replaces its rate; the others count a room, an invitee or an
    /// address, which an override only exempts from (when it exempts).
    fn keyed_on_actor(self) -> bool {
        !matches!(
            self,
            Limiter::Registration
                | Limiter::RegistrationTokenValidity
                | Limiter::LoginAddress
                | Limiter::LoginAccount
                | Limiter::LoginFailedAttempts
                | Limiter::JoinsPerRoom
                | Limiter::InvitesPerRoom
                | Limiter::InvitesPerUser
                | Limiter::ThreepidValidation
        )
    }
}

/// How many keys one limiter tracks at most (a few MiB each at worst): an attacker cycling
/// through addresses or account names cannot make the server grow without bound.
pub const MAX_KEYS_PER_LIMITER: usize = 65_536;
const SHARDS: usize = 16;
const MAX_KEYS_PER_SHARD: usize = MAX_KEYS_PER_LIMITER / SHARDS;
/// A shard looks for drained buckets when it has doubled since it last looked, and not
/// before it holds this many.
const MIN_SWEEP_LEN: usize = 64;
/// The longest key kept; longer ones (account names a client made up) are cut.
const MAX_KEY_LEN: usize = 255;

/// A per-user override (Synapse's `ratelimit_override`): exempt, or a rate of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override {
    pub messages_per_second: u64,
    pub burst_count: u64,
}

impl Override {
    fn exempts(self) -> bool {
        self.messages_per_second == 0
    }

    fn rate(self) -> Rate {
        Rate::new(self.messages_per_second as f64, self.burst_count as f64)
    }
}

/// One limiter's rate, stored so a reload replaces it without a lock.
struct LiveRate {
    per_second: AtomicU64,
    burst_count: AtomicU64,
}

impl LiveRate {
    fn new(rate: Rate) -> Self {
        Self {
            per_second: AtomicU64::new(rate.per_second.to_bits()),
            burst_count: AtomicU64::new(rate.burst_count.to_bits()),
        }
    }

    fn get(&self) -> Rate {
        Rate::new(
            f64::from_bits(self.per_second.load(Ordering::Relaxed)),
            f64::from_bits(self.burst_count.load(Ordering::Relaxed)),
        )
    }

    fn set(&self, rate: Rate) {
        self.per_second.store(rate.per_second.to_bits(), Ordering::Relaxed);
        self.burst_count.store(rate.burst_count.to_bits(), Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<Box<str>, Bucket>,
    /// The length at which to look for drained buckets next.
    sweep_at: usize,
}

impl Shard {
    /// Make room for one more key: forget drained buckets when the shard has grown enough
    /// since it last looked (or is full); if it is still full, forget the eighth of it that
    /// drains soonest.
    fn make_room(&mut self, rate: Rate, now_ms: u64) {
        let len = self.buckets.len();
        if len < self.sweep_at.max(MIN_SWEEP_LEN) && len < MAX_KEYS_PER_SHARD {
            return;
        }
        self.buckets.retain(|_, bucket| bucket.drained_at(rate) > now_ms);
        if self.buckets.len() >= MAX_KEYS_PER_SHARD {
            let mut drain_times: Vec<u64> = self.buckets.values().map(|b| b.drained_at(rate)).collect();
            let cut = MAX_KEYS_PER_SHARD / 8;
            let (_, threshold, _) = drain_times.select_nth_unstable(cut);
            let threshold = *threshold;
            self.buckets.retain(|_, bucket| bucket.drained_at(rate) > threshold);
        }
        self.sweep_at = self.buckets.len() * 2;
    }
}

/// What a check does with the bucket.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Count the action if it fits.
    Take,
    /// Only ask whether it would fit.
    Peek,
}

pub struct RateLimits {
    clock: Arc<dyn Clock>,
    users: Arc<Users>,
    appservices: Arc<Appservices>,
    enabled: AtomicBool,
    exempt_admins: AtomicBool,
    rates: [LiveRate; LIMITERS],
    buckets: [Box<[Mutex<Shard>]>; LIMITERS],
    hasher: std::hash::RandomState,
    overrides_table: Table<OwnedUserId, RateLimitOverrideRecord>,
    overrides: RwLock<HashMap<OwnedUserId, Override>>,
    /// Whether any override exists, so the common case skips the lock.
    any_override: AtomicBool,
    rejections: [AtomicU64; LIMITERS],
}

impl RateLimits {
    pub fn new(
        store: &Arc<dyn KvStore>,
        config: &Config,
        clock: Arc<dyn Clock>,
        users: Arc<Users>,
        appservices: Arc<Appservices>,
    ) -> Result<Self> {
        let overrides_table = RATELIMIT_OVERRIDES.open(store);
        let mut overrides = HashMap::new();
        for row in
            overrides_table.scan(crate::storage::kv::KeyRange::all(), crate::storage::Direction::Forward)?
        {
            let (user_id, record) = row?;
            overrides.insert(
                user_id,
                Override { messages_per_second: record.messages_per_second, burst_count: record.burst_count },
            );
        }
        let rates = config.rates();
        let limits = Self {
            clock,
            users,
            appservices,
            enabled: AtomicBool::new(config.rate_limiting),
            exempt_admins: AtomicBool::new(config.rate_limit_exempt_admins),
            rates: std::array::from_fn(|i| LiveRate::new(rates[i].1)),
            buckets: std::array::from_fn(|_| (0..SHARDS).map(|_| Mutex::default()).collect()),
            hasher: std::hash::RandomState::new(),
            overrides_table,
            any_override: AtomicBool::new(!overrides.is_empty()),
            overrides: RwLock::new(overrides),
            rejections: std::array::from_fn(|_| AtomicU64::new(0)),
        };
        Ok(limits)
    }

    /// Take the limits from a new configuration (the reload on SIGHUP): the master switch,
    /// the admin exemption and every rate. Counts already made are kept and drain at the new
    /// rates.
    pub fn reload(&self, config: &Config) {
        self.enabled.store(config.rate_limiting, Ordering::Relaxed);
        self.exempt_admins.store(config.rate_limit_exempt_admins, Ordering::Relaxed);
        for (live, (_, rate)) in self.rates.iter().zip(config.rates()) {
            live.set(rate);
        }
    }

    /// Count one action of `actor` (if a user acts) against `limiter`'s bucket for `key`, or
    /// refuse it with `429 M_LIMIT_EXCEEDED` and the wait.
    pub fn check(&self, limiter: Limiter, key: &str, actor: Option<&UserId>) -> Result<()> {
        self.apply(limiter, key, actor, Mode::Take)
    }

    /// `check` for limits keyed on the acting user.
    pub fn check_user(&self, limiter: Limiter, user_id: &UserId) -> Result<()> {
        self.apply(limiter, user_id.as_str(), Some(user_id), Mode::Take)
    }

    /// Whether an action would be refused, without counting it.
    pub fn peek(&self, limiter: Limiter, key: &str, actor: Option<&UserId>) -> Result<()> {
        self.apply(limiter, key, actor, Mode::Peek)
    }

    /// `check` that answers whether the action may go ahead instead of an error, for
    /// actions that are dropped silently when limited (presence set by `/sync`).
    pub fn allows(&self, limiter: Limiter, key: &str, actor: Option<&UserId>) -> bool {
        self.apply(limiter, key, actor, Mode::Take).is_ok()
    }

    /// Give back one action counted by `check` that turned out not to be one of its kind
    /// (a reserved failed-login attempt whose password was right).
    pub fn give_back(&self, limiter: Limiter, key: &str) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let key = cut_key(key);
        let mut shard = self.shard(limiter, key);
        if let Some(bucket) = shard.buckets.get_mut(key) {
            bucket.give_back(1.0);
        }
    }

    fn shard(&self, limiter: Limiter, key: &str) -> std::sync::MutexGuard<'_, Shard> {
        let shards = &self.buckets[limiter.index()];
        let index = (self.hasher.hash_one(key) as usize) % shards.len();
        shards[index].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn apply(&self, limiter: Limiter, key: &str, actor: Option<&UserId>, mode: Mode) -> Result<()> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut rate = self.rates[limiter.index()].get();
        if let Some(user_id) = actor
            && let Some(over) = self.override_for(user_id)
        {
            if over.exempts() {
                return Ok(());
            }
            if limiter.keyed_on_actor() {
                rate = over.rate();
            }
        }
        let key = cut_key(key);
        let now_ms = self.clock.now_ms();
        let outcome = {
            let mut shard = self.shard(limiter, key);
            match shard.buckets.get_mut(key) {
                Some(bucket) => bucket.take(rate, now_ms, 1.0, mode == Mode::Peek),
                None => {
                    let mut bucket = Bucket::empty(now_ms);
                    let outcome = bucket.take(rate, now_ms, 1.0, mode == Mode::Peek);
                    if mode == Mode::Take {
                        shard.make_room(rate, now_ms);
                        shard.buckets.insert(key.into(), bucket);
                    }
                    outcome
                }
            }
        };
        let Err(wait_ms) = outcome else { return Ok(()) };
        // Refused: only now is it worth asking whether the actor is exempt.
        if let Some(user_id) = actor
            && self.exempt(user_id)
        {
            return Ok(());
        }
        self.rejections[limiter.index()].fetch_add(1, Ordering::Relaxed);
        Err(Error::limit_exceeded_for("Too Many Requests", Duration::from_millis(wait_ms)))
    }

    /// Whether a user is exempt from every limit whatever their buckets say: an admin while
    /// `rate_limit_exempt_admins` is on, or a user of an application service registered
    /// with `rate_limited: false` (its sender or a user in its namespaces).
    fn exempt(&self, user_id: &UserId) -> bool {
        if self.appservices.any()
            && self.appservices.registry().list.iter().any(|a| !a.rate_limited && a.may_act_as(user_id))
        {
            return true;
        }
        if self.exempt_admins.load(Ordering::Relaxed) {
            match self.users.get(user_id) {
                Ok(Some(record)) if record.admin && !record.deactivated => return true,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reading the admin flag for a rate limit failed"),
            }
        }
        false
    }

    fn override_for(&self, user_id: &UserId) -> Option<Override> {
        if !self.any_override.load(Ordering::Relaxed) {
            return None;
        }
        self.overrides.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(user_id).copied()
    }

    /// A user's override, if one is set.
    pub fn get_override(&self, user_id: &UserId) -> Option<Override> {
        self.overrides.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(user_id).copied()
    }

    /// Set a user's override (the caller checked that the user is a local account).
    pub fn set_override(&self, user_id: &UserId, over: Override) -> Result<()> {
        let mut overrides = self.overrides.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let record = RateLimitOverrideRecord {
            messages_per_second: over.messages_per_second,
            burst_count: over.burst_count,
        };
        self.overrides_table.insert(&user_id.to_owned(), &record)?;
        overrides.insert(user_id.to_owned(), over);
        self.any_override.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Remove a user's override; the configured limits apply to them again.
    pub fn delete_override(&self, user_id: &UserId) -> Result<()> {
        let mut overrides = self.overrides.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.overrides_table.remove(&user_id.to_owned())?;
        overrides.remove(user_id);
        self.any_override.store(!overrides.is_empty(), Ordering::Relaxed);
        Ok(())
    }

    /// Requests refused so far, per limiter (by its configuration key), for metrics.
    pub fn rejections(&self) -> Vec<(&'static str, u64)> {
        Limiter::ALL.iter().map(|l| (l.key(), self.rejections[l.index()].load(Ordering::Relaxed))).collect()
    }

    /// Keys tracked now, per limiter, for metrics.
    pub fn tracked_keys(&self) -> Vec<(&'static str, usize)> {
        Limiter::ALL
            .iter()
            .map(|l| {
                let count = self.buckets[l.index()]
                    .iter()
                    .map(|s| s.lock().unwrap_or_else(std::sync::PoisonError::into_inner).buckets.len())
                    .sum();
                (l.key(), count)
            })
            .collect()
    }
}

/// A key cut to `MAX_KEY_LEN` bytes, at a character boundary.
fn cut_key(key: &str) -> &str {
    if key.len() <= MAX_KEY_LEN {
        return key;
    }
    let mut end = MAX_KEY_LEN;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(now_ms: u64, rate: Rate, actions: u32) -> Bucket {
        let mut bucket = Bucket::empty(now_ms);
        for _ in 0..actions {
            let _ = bucket.take(rate, now_ms, 1.0, false);
        }
        bucket
    }

    #[test]
    fn a_shard_forgets_drained_buckets_once_it_has_doubled() {
        let rate = Rate::new(1.0, 10.0);
        let mut shard = Shard::default();
        for i in 0..MIN_SWEEP_LEN {
            shard.make_room(rate, 0);
            shard.buckets.insert(format!("old{i}").into(), counted(0, rate, 1));
        }
        // A second later every one of them has drained: the next insertion sweeps them.
        shard.make_room(rate, 1_000);
        assert!(shard.buckets.is_empty(), "{} left", shard.buckets.len());
        assert_eq!(shard.sweep_at, 0);
    }

    #[test]
    fn a_full_shard_keeps_its_heaviest_buckets() {
        let rate = Rate::new(1.0, 100.0);
        let mut shard = Shard::default();
        for i in 0..MAX_KEYS_PER_SHARD {
            // Bucket i drains after i % 50 + 1 seconds; none has drained at time 0.
            shard.buckets.insert(format!("k{i}").into(), counted(0, rate, (i % 50 + 1) as u32));
        }
        shard.buckets.insert("heavy".into(), counted(0, rate, 100));
        shard.make_room(rate, 0);
        let len = shard.buckets.len();
        assert!(len <= MAX_KEYS_PER_SHARD - MAX_KEYS_PER_SHARD / 8, "{len} kept");
        assert!(shard.buckets.contains_key("heavy"), "the heaviest bucket stays");
        assert!(shard.buckets.values().all(|b| b.drained_at(rate) > 1_000), "the lightest went first");
    }

    #[test]
    fn limiters_are_in_the_order_of_the_config() {
        let names: Vec<&str> = Config::default().rates().iter().map(|(key, _)| *key).collect();
        let keys: Vec<&str> = Limiter::ALL.iter().map(|l| l.key()).collect();
        assert_eq!(names, keys);
        assert!(Limiter::ALL.iter().enumerate().all(|(i, l)| l.index() == i));
    }

    #[test]
    fn long_keys_are_cut_at_a_character_boundary() {
        let key = "é".repeat(200);
        let cut = cut_key(&key);
        assert!(cut.len() <= MAX_KEY_LEN && key.starts_with(cut));
        assert_eq!(cut_key("short"), "short");
    }
}
