//! Presence of users: online, unavailable or offline, a status message and when they were
//! last active. Local users' is set by their clients (`PUT /presence`, `set_presence` on
//! sync), and a user whose clients stop syncing goes offline after the configured timeout;
//! other servers' users' arrives in `m.presence` EDUs (`set_remote`). Owns the `presence`
//! and `presence_changes` tables.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{OwnedUserId, UserId, presence::PresenceState};
use serde_json::{Value as JsonValue, json};

use crate::{
    Error, Result,
    service::{
        clock::Clock,
        stream::{Change, Stream},
    },
    storage::{
        Direction, Durability, KvStore, Table,
        codec::KeyCodec,
        kv::KeyRange,
        tables::{PRESENCE, PRESENCE_CHANGES, PresenceRecord},
    },
};

/// How often `last_active` is refreshed while nothing else changes: every sync would
/// otherwise be a write.
const ACTIVE_REFRESH_MS: u64 = 60_000;
/// Longest status message kept.
const MAX_STATUS_MSG: usize = 1024;

/// A user's presence as clients see it.
#[derive(Clone, Debug)]
pub struct PresenceView {
    pub user_id: OwnedUserId,
    pub state: PresenceState,
    pub status_msg: Option<String>,
    pub last_active_ago_ms: u64,
    pub currently_active: bool,
}

impl PresenceView {
    /// The content of the user's `m.presence` event: `presence`, `last_active_ago`,
    /// `currently_active` and, when set, `status_msg`.
    pub fn event_content(&self) -> JsonValue {
        let mut content = json!({
            "presence": self.state.as_str(),
            "last_active_ago": self.last_active_ago_ms,
            "currently_active": self.currently_active,
        });
        if let Some(msg) = &self.status_msg {
            content["status_msg"] = msg.as_str().into();
        }
        content
    }
}

pub struct Presence {
    records: Table<OwnedUserId, PresenceRecord>,
    changes: Table<u64, OwnedUserId>,
    stream: Arc<Stream>,
    clock: Arc<dyn Clock>,
    store: Arc<dyn KvStore>,
    enabled: bool,
    offline_after_ms: u64,
    /// When each user's clients last synced (or set presence), for the offline sweep.
    last_seen: Mutex<HashMap<OwnedUserId, u64>>,
}

impl Presence {
    pub fn new(
        store: &Arc<dyn KvStore>,
        stream: Arc<Stream>,
        clock: Arc<dyn Clock>,
        enabled: bool,
        offline_after_secs: u64,
    ) -> Self {
        Self {
            records: PRESENCE.open(store),
            changes: PRESENCE_CHANGES.open(store),
            stream,
            clock,
            store: Arc::clone(store),
            enabled,
            offline_after_ms: offline_after_secs.saturating_mul(1000),
            last_seen: Mutex::new(HashMap::new()),
        }
    }

    /// Set the user's presence (`PUT /presence/{userId}/status`).
    pub fn set(&self, user_id: &UserId, state: &PresenceState, status_msg: Option<String>) -> Result<()> {
        if !self.enabled {
            return Err(Error::forbidden("Presence is disabled on this server"));
        }
        let state = known_state(state)?;
        if status_msg.as_ref().is_some_and(|m| m.len() > MAX_STATUS_MSG) {
            return Err(Error::invalid_param("status_msg is too long"));
        }
        let now = self.clock.now_ms();
        self.seen(user_id, now);
        self.write(user_id, state, status_msg, now)
    }

    /// A client of the user is syncing with `set_presence`: keep them online (or mark them
    /// unavailable) without a write on every sync.
    pub fn syncing(&self, user_id: &UserId, set_presence: &PresenceState) -> Result<()> {
        if !self.enabled || *set_presence == PresenceState::Offline {
            return Ok(());
        }
        let state = known_state(set_presence)?;
        let now = self.clock.now_ms();
        self.seen(user_id, now);
        let current = self.records.get(&user_id.to_owned())?;
        let unchanged = current.as_ref().is_some_and(|c| {
            c.state == state
                && (state != "online" || now.saturating_sub(c.last_active_ms) < ACTIVE_REFRESH_MS)
        });
        if unchanged {
            return Ok(());
        }
        // A refresh of `last_active` alone is written quietly: it wakes nobody's long-poll
        // (it would, for every room mate, once a minute per online user).
        let announce = current.as_ref().is_none_or(|c| c.state != state);
        let status_msg = current.and_then(|c| c.status_msg);
        self.write_with(user_id, state, status_msg, now, announce)
    }

    /// Presence of another server's user, from an `m.presence` EDU: kept and shown to local
    /// room mates as it is for local users; never swept here (their server sends
    /// `offline`). Ignored when presence is off.
    pub fn set_remote(
        &self,
        user_id: &UserId,
        state: &PresenceState,
        status_msg: Option<String>,
        last_active_ago_ms: u64,
    ) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let state = known_state(state)?;
        let status_msg = status_msg.filter(|m| m.len() <= MAX_STATUS_MSG);
        let last_active_ms = self.clock.now_ms().saturating_sub(last_active_ago_ms);
        let unchanged = self.records.get(&user_id.to_owned())?.is_some_and(|c| {
            c.state == state
                && c.status_msg == status_msg
                && c.last_active_ms.abs_diff(last_active_ms) < ACTIVE_REFRESH_MS
        });
        if unchanged {
            return Ok(());
        }
        self.write(user_id, state, status_msg, last_active_ms)
    }

    /// The user's presence if its last change is the one at stream `position` (what the
    /// federation sender asks of each change about a user it hears).
    pub fn changed_at(&self, user_id: &UserId, position: u64) -> Result<Option<PresenceView>> {
        if !self.enabled {
            return Ok(None);
        }
        Ok(self
            .records
            .get(&user_id.to_owned())?
            .filter(|r| r.stream == position)
            .map(|r| self.view(user_id.to_owned(), r)))
    }

    /// Whether the server tracks presence at all (`presence_enabled`).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The user's presence; `None` if it was never set (or presence is off).
    pub fn get(&self, user_id: &UserId) -> Result<Option<PresenceView>> {
        if !self.enabled {
            return Ok(None);
        }
        Ok(self.records.get(&user_id.to_owned())?.map(|r| self.view(user_id.to_owned(), r)))
    }

    /// Users whose presence changed after `since` up to `upto`, with their presence.
    pub fn changes(&self, since: Option<u64>, upto: u64) -> Result<Vec<PresenceView>> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        let mut range = KeyRange::all().up_to(upto.to_key_bytes());
        if let Some(since) = since {
            range = range.after(since.to_key_bytes());
        }
        let mut found = Vec::new();
        for row in self.changes.scan(range, Direction::Forward)? {
            let (_, user_id) = row?;
            if let Some(record) = self.records.get(&user_id)? {
                found.push(self.view(user_id, record));
            }
        }
        Ok(found)
    }

    /// Mark offline the users whose clients stopped syncing; run periodically.
    pub fn sweep(&self) -> Result<usize> {
        if !self.enabled {
            return Ok(0);
        }
        let now = self.clock.now_ms();
        let stale: Vec<OwnedUserId> = {
            let mut seen = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            let stale: Vec<_> = seen
                .iter()
                .filter(|(_, at)| now.saturating_sub(**at) >= self.offline_after_ms)
                .map(|(u, _)| u.clone())
                .collect();
            for user in &stale {
                seen.remove(user);
            }
            stale
        };
        let mut marked = 0;
        for user_id in stale {
            // Another process sharing the database may have served them since: their record's
            // `last_active`, refreshed at least once a minute while they sync online through
            // any process, says so.
            if let Some(record) = self.records.get(&user_id)?
                && record.state != "offline"
                && now.saturating_sub(record.last_active_ms) >= self.offline_after_ms
            {
                self.write(&user_id, "offline", record.status_msg, record.last_active_ms)?;
                marked += 1;
            }
        }
        Ok(marked)
    }

    fn seen(&self, user_id: &UserId, now: u64) {
        self.last_seen.lock().unwrap_or_else(|p| p.into_inner()).insert(user_id.to_owned(), now);
    }

    fn write(
        &self,
        user_id: &UserId,
        state: &str,
        status_msg: Option<String>,
        last_active_ms: u64,
    ) -> Result<()> {
        self.write_with(user_id, state, status_msg, last_active_ms, true)
    }

    fn write_with(
        &self,
        user_id: &UserId,
        state: &str,
        status_msg: Option<String>,
        last_active_ms: u64,
        announce: bool,
    ) -> Result<()> {
        let user = user_id.to_owned();
        // One transaction from the read of the previous record to the write: two updates
        // racing leave one change row (the later one's), not a stale duplicate.
        let mut reservation = None;
        crate::storage::transaction::<_, crate::Error>(self.store.as_ref(), Durability::Synced, |tx| {
            let previous = self.records.get_in(tx, &user)?;
            let reserved = self.stream.reserve()?;
            let position = reserved.position;
            if let Some(previous) = previous {
                self.changes.delete_in(tx, &previous.stream);
            }
            let record = PresenceRecord {
                state: state.to_owned(),
                status_msg: status_msg.clone(),
                last_active_ms,
                stream: position,
            };
            self.records.put_in(tx, &user, &record)?;
            self.changes.put_in(tx, &position, &user)?;
            reservation = Some(reserved);
            Ok((position, true))
        })?;
        if let Some(reservation) = reservation
            && announce
        {
            reservation.announce([Change::RoomMates(user.clone()), Change::User(user)]);
        }
        Ok(())
    }

    fn view(&self, user_id: OwnedUserId, record: PresenceRecord) -> PresenceView {
        let ago = self.clock.now_ms().saturating_sub(record.last_active_ms);
        let state = PresenceState::from(record.state.as_str());
        PresenceView {
            currently_active: state == PresenceState::Online && ago < ACTIVE_REFRESH_MS * 2,
            user_id,
            state,
            status_msg: record.status_msg,
            last_active_ago_ms: ago,
        }
    }
}

fn known_state(state: &PresenceState) -> Result<&'static str> {
    match state {
        PresenceState::Online => Ok("online"),
        PresenceState::Unavailable => Ok("unavailable"),
        PresenceState::Offline => Ok("offline"),
        other => Err(Error::invalid_param(format!("Unknown presence state {}", other.as_str()))),
    }
}
