//! Membership indexes: room → members and user → rooms, each row the latest membership.
//! Written in the same batch as the member event, so they never disagree with the state.
//! Owns the `room_members` and `user_rooms` tables.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, OnceLock},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId, events::room::member::MembershipState};
use tokio::sync::broadcast;

use crate::{
    Result,
    service::cache::GuardedCache,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        tables::{MembershipRecord, ROOM_MEMBERS, USER_ROOMS},
    },
};

/// Who joined and who left a room within a range of stream positions.
#[derive(Default, Debug)]
pub struct MemberMoves {
    /// Members whose join (not a later profile change) falls in the range.
    pub joined: Vec<OwnedUserId>,
    /// Users who left or were kicked or banned in the range.
    pub left: Vec<OwnedUserId>,
}

/// One user's membership rows, sorted by room ID.
pub type UserMemberships = Arc<[(OwnedRoomId, MembershipRecord)]>;

/// Users whose rows are kept in memory at most; past it the cache starts over.
const MAX_CACHED_USERS: usize = 10_000;
/// Departures a slow listener may fall behind by before it must re-check everything.
const DEPARTURE_BACKLOG: usize = 1_024;
/// Heroes a room summary lists.
pub const MAX_HEROES: usize = 5;
/// Rooms whose membership changes are counted (for rosters being read) before the count
/// starts over.
const MAX_COUNTED_ROOMS: usize = 100_000;

/// A room's joined and invited members, as every sync, push evaluation and appservice
/// transaction reads them: kept in memory per room after a first read, and changed in place
/// by each committed membership change, so a big room's member list is decoded once, not
/// on every event or poll.
#[derive(Clone, Default, Debug)]
pub struct Roster {
    joined: HashSet<OwnedUserId>,
    invited: HashSet<OwnedUserId>,
    /// The first members by stream order, for heroes: read from the rows the first time an
    /// unnamed room's summary asks, forgotten at the next change.
    heroes: OnceLock<HeroCandidates>,
    /// Bytes the members' IDs take, roughly (kept up to date: a big room's roster is weighed
    /// at every change).
    member_bytes: usize,
    /// What another service derives from the members (push evaluation's members by class),
    /// made the first time it asks, forgotten at the next change.
    derived: Derived,
}

/// A value derived from a roster, of a type only its maker knows (a new roster starts with
/// none), and the changes to the joined members since it was made: a membership change
/// carries the value over with the change noted, so that its maker can bring it up to date
/// rather than make it again from every member.
#[derive(Clone, Default)]
struct Derived(Arc<Mutex<DerivedSlot>>);

#[derive(Default)]
struct DerivedSlot {
    value: Option<Arc<dyn std::any::Any + Send + Sync>>,
    since: Vec<JoinedChange>,
}

/// Changes carried with a derived value at most; past them it is made again.
const MAX_CARRIED_CHANGES: usize = 256;

/// A member who joined, or a joined member who no longer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedChange {
    pub user_id: OwnedUserId,
    pub joined: bool,
}

impl Derived {
    fn slot(&self) -> std::sync::MutexGuard<'_, DerivedSlot> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot of the roster after `change` (`None`: the joined members did not change).
    fn after(&self, change: Option<JoinedChange>) -> Self {
        let old = self.slot();
        let mut since = old.since.clone();
        since.extend(change);
        let value = if since.len() > MAX_CARRIED_CHANGES { None } else { old.value.clone() };
        if value.is_none() {
            since.clear();
        }
        Derived(Arc::new(Mutex::new(DerivedSlot { value, since })))
    }
}

impl std::fmt::Debug for Derived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Derived")
    }
}

/// Who a room's summary may name as heroes, in the spec's order.
#[derive(Clone, Debug, Default)]
struct HeroCandidates {
    /// The first joined or invited members by the position of their member event, and the
    /// first who left or were banned; `MAX_HEROES + 1` of each, so that leaving out the
    /// user asking still leaves enough.
    present: Vec<OwnedUserId>,
    gone: Vec<OwnedUserId>,
}

impl Roster {
    pub fn joined(&self) -> &HashSet<OwnedUserId> {
        &self.joined
    }

    pub fn is_joined(&self, user_id: &UserId) -> bool {
        self.joined.contains(user_id)
    }

    pub fn joined_count(&self) -> u64 {
        self.joined.len() as u64
    }

    pub fn invited_count(&self) -> u64 {
        self.invited.len() as u64
    }

    /// The value `make` derives from these members, made once and then brought up to date
    /// by `update` with the changes to the joined members since (in order); a kept value
    /// that `keep` refuses (derived under other conditions) is made again and replaces it.
    pub fn derived<T: std::any::Any + Send + Sync, E>(
        &self,
        keep: impl Fn(&T) -> bool,
        update: impl FnOnce(&T, &[JoinedChange]) -> std::result::Result<T, E>,
        make: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<Arc<T>, E> {
        {
            let mut slot = self.derived.slot();
            if let Some(value) = slot.value.clone()
                && let Ok(value) = value.downcast::<T>()
                && keep(&value)
            {
                if slot.since.is_empty() {
                    return Ok(value);
                }
                // Cheap next to making it: done under the slot's lock, once.
                let value = Arc::new(update(&value, &slot.since)?);
                slot.value = Some(Arc::clone(&value) as Arc<dyn std::any::Any + Send + Sync>);
                slot.since.clear();
                return Ok(value);
            }
        }
        let value = Arc::new(make()?);
        let mut slot = self.derived.slot();
        slot.value = Some(Arc::clone(&value) as Arc<dyn std::any::Any + Send + Sync>);
        slot.since.clear();
        Ok(value)
    }

    /// Bytes it holds, roughly (for the cache's bound).
    fn weight(&self) -> usize {
        64 + self.member_bytes
    }

    /// What one member adds to [`Self::weight`].
    fn member_weight(user_id: &UserId) -> usize {
        user_id.as_str().len() + 48
    }

    fn insert(&mut self, user_id: OwnedUserId, joined: bool) {
        let weight = Self::member_weight(&user_id);
        let set = if joined { &mut self.joined } else { &mut self.invited };
        if set.insert(user_id) {
            self.member_bytes += weight;
        }
    }

    /// Apply one member's new membership (idempotent: applying it twice changes nothing).
    fn apply(&mut self, user_id: &UserId, membership: &str) {
        let was_joined = self.joined.remove(user_id);
        if was_joined || self.invited.remove(user_id) {
            self.member_bytes -= Self::member_weight(user_id);
        }
        match membership {
            "join" => self.insert(user_id.to_owned(), true),
            "invite" => self.insert(user_id.to_owned(), false),
            _ => {}
        }
        self.heroes = OnceLock::new();
        let joined = membership == "join";
        let change = (joined != was_joined).then(|| JoinedChange { user_id: user_id.to_owned(), joined });
        self.derived = self.derived.after(change);
    }
}

pub struct Memberships {
    room_members: Table<(OwnedRoomId, OwnedUserId), MembershipRecord>,
    user_rooms: Table<(OwnedUserId, OwnedRoomId), MembershipRecord>,
    store: Arc<dyn KvStore>,
    /// Users' rows as last read: every sync reads all of a user's rooms, and they change
    /// rarely. Dropped for a user once a change to their rows is committed.
    by_user: GuardedCache<OwnedUserId, UserMemberships>,
    rosters: Mutex<RosterCache>,
    /// Bytes of rosters kept at most.
    roster_budget: usize,
    /// Committed membership changes away from `join` (or never to it), as (room, user),
    /// for those who keep something only while users share a room (`departures`).
    departures: broadcast::Sender<(OwnedRoomId, OwnedUserId)>,
}

#[derive(Default)]
struct RosterCache {
    rooms: HashMap<OwnedRoomId, (Arc<Roster>, usize)>,
    /// Bytes held by `rooms`.
    bytes: usize,
    /// Membership changes committed per room, so that a roster read from the rows while one
    /// was committed is not kept; `epoch` moves when these counts start over.
    changes: HashMap<OwnedRoomId, u64>,
    epoch: u64,
    hits: u64,
    misses: u64,
}

impl RosterCache {
    fn mark(&self, room_id: &RoomId) -> (u64, u64) {
        (self.epoch, self.changes.get(room_id).copied().unwrap_or(0))
    }

    fn note_change(&mut self, room_id: &RoomId) {
        if self.changes.len() >= MAX_COUNTED_ROOMS && !self.changes.contains_key(room_id) {
            self.changes.clear();
            self.epoch += 1;
        }
        *self.changes.entry(room_id.to_owned()).or_default() += 1;
    }

    fn insert(&mut self, room_id: OwnedRoomId, roster: Arc<Roster>, budget: usize) {
        let weight = roster.weight();
        if weight > budget {
            return;
        }
        if let Some((_, old)) = self.rooms.remove(&room_id) {
            self.bytes -= old;
        }
        if self.bytes + weight > budget {
            // Make room for a quarter of the budget at once: entries go in the map's own
            // (arbitrary) order, so no recency bookkeeping is paid on reads.
            let target = (budget - weight).min(budget / 4 * 3);
            let mut gone = Vec::new();
            let mut bytes = self.bytes;
            for (room, (_, w)) in &self.rooms {
                if bytes <= target {
                    break;
                }
                bytes -= w;
                gone.push(room.clone());
            }
            for room in gone {
                self.rooms.remove(&room);
            }
            self.bytes = bytes;
        }
        self.bytes += weight;
        self.rooms.insert(room_id, (roster, weight));
    }
}

impl Memberships {
    /// `roster_budget`: bytes of room rosters kept in memory at most.
    pub fn new(store: &Arc<dyn KvStore>, roster_budget: usize) -> Self {
        Self {
            room_members: ROOM_MEMBERS.open(store),
            user_rooms: USER_ROOMS.open(store),
            store: Arc::clone(store),
            by_user: GuardedCache::new(MAX_CACHED_USERS),
            rosters: Mutex::default(),
            roster_budget,
            departures: broadcast::channel(DEPARTURE_BACKLOG).0,
        }
    }

    /// Hear of committed membership changes to anything but `join` (leaves, kicks, bans,
    /// invites, knocks), as (room, user). A listener that falls behind gets `Lagged` and
    /// must re-check everything it keeps.
    pub fn departures(&self) -> broadcast::Receiver<(OwnedRoomId, OwnedUserId)> {
        self.departures.subscribe()
    }

    fn lock_rosters(&self) -> std::sync::MutexGuard<'_, RosterCache> {
        self.rosters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The roster cache's counters (for the metrics).
    pub fn cache_stats(&self) -> crate::service::cache::CacheStats {
        let rosters = self.lock_rosters();
        crate::service::cache::CacheStats {
            hits: rosters.hits,
            misses: rosters.misses,
            entries: rosters.rooms.len() as u64,
            capacity: 0,
            bytes: rosters.bytes as u64,
            budget: self.roster_budget as u64,
        }
    }

    /// Changes queued with [`Self::set_in`] for these users are committed: their rows are
    /// read afresh from now on. (A change to someone's membership of a room goes through
    /// [`Self::committed_member`], which also keeps the room's roster.)
    pub fn committed<'a>(&self, users: impl IntoIterator<Item = &'a UserId>) {
        self.by_user.invalidate(users);
    }

    /// A membership change queued with [`Self::set_in`] is committed: the user's rows are
    /// read afresh, and the room's roster, if kept, changes in place. Called by the room's
    /// only writer (under its lock), after the batch is written.
    pub fn committed_member(&self, room_id: &RoomId, user_id: &UserId, membership: &str) {
        self.committed([user_id]);
        if membership != "join" {
            // Nobody listening (federation off) is not an error.
            let _ = self.departures.send((room_id.to_owned(), user_id.to_owned()));
        }
        let mut rosters = self.lock_rosters();
        rosters.note_change(room_id);
        let budget = self.roster_budget;
        if let Some((roster, _)) = rosters.rooms.get_mut(room_id) {
            // Copied only when a reader still holds the old one.
            Arc::make_mut(roster).apply(user_id, membership);
            let roster = Arc::clone(roster);
            rosters.insert(room_id.to_owned(), roster, budget);
        }
    }

    /// Another process sharing the database changed memberships in `room` (`None`: in any
    /// room): whose, this one does not know, so every user's rows are read afresh, and the
    /// room's roster (or every roster) is forgotten.
    pub fn changed_elsewhere(&self, room_id: Option<&RoomId>) {
        self.by_user.clear();
        match room_id {
            Some(room_id) => self.purged_room(room_id),
            None => {
                let mut rosters = self.lock_rosters();
                let rooms: Vec<OwnedRoomId> = rosters.rooms.keys().cloned().collect();
                for room_id in rooms {
                    rosters.note_change(&room_id);
                    if let Some((_, weight)) = rosters.rooms.remove(&room_id) {
                        rosters.bytes -= weight;
                    }
                }
            }
        }
    }

    /// A user's rows were changed by another process (an invite, a knock): read afresh.
    pub fn user_changed_elsewhere(&self, user_id: &UserId) {
        self.committed([user_id]);
    }

    /// A room's rows were removed (purged): forget its roster.
    pub fn purged_room(&self, room_id: &RoomId) {
        let mut rosters = self.lock_rosters();
        rosters.note_change(room_id);
        if let Some((_, weight)) = rosters.rooms.remove(room_id) {
            rosters.bytes -= weight;
        }
    }

    /// The room's joined and invited members.
    pub fn roster(&self, room_id: &RoomId) -> Result<Arc<Roster>> {
        let mark = {
            let mut rosters = self.lock_rosters();
            if let Some((roster, _)) = rosters.rooms.get(room_id) {
                let roster = Arc::clone(roster);
                rosters.hits += 1;
                return Ok(roster);
            }
            rosters.misses += 1;
            rosters.mark(room_id)
        };
        let mut roster = Roster::default();
        for row in self.room_members.scan_prefix(&room_id.to_owned(), Direction::Forward)? {
            let ((_, user_id), record) = row?;
            match record.membership.as_str() {
                "join" => roster.insert(user_id, true),
                "invite" => roster.insert(user_id, false),
                _ => {}
            }
        }
        let roster = Arc::new(roster);
        let mut rosters = self.lock_rosters();
        // A change committed while the rows were read may be missing from them.
        if rosters.mark(room_id) == mark {
            rosters.insert(room_id.to_owned(), Arc::clone(&roster), self.roster_budget);
        }
        Ok(roster)
    }

    /// The heroes a summary of the room names for `user_id`: the first members by the
    /// position of their member event who are joined or invited, or, when there are none
    /// besides the user, the first who left or were banned; `MAX_HEROES` at most.
    pub fn heroes(&self, room_id: &RoomId, user_id: &UserId) -> Result<Vec<OwnedUserId>> {
        let roster = self.roster(room_id)?;
        let candidates = match roster.heroes.get() {
            Some(candidates) => candidates.clone(),
            None => {
                // (whether they are gone, position of their member event, user)
                let mut rows = Vec::new();
                for (member, record) in self.members(room_id)? {
                    let gone = match record.membership.as_str() {
                        "join" | "invite" => false,
                        "leave" | "ban" => true,
                        _ => continue,
                    };
                    rows.push((gone, record.stream, member));
                }
                rows.sort();
                let mut candidates = HeroCandidates::default();
                for (gone, _, member) in rows {
                    let list = if gone { &mut candidates.gone } else { &mut candidates.present };
                    if list.len() <= MAX_HEROES {
                        list.push(member);
                    }
                }
                // Kept only if the roster is still the room's (no change since).
                let _ = roster.heroes.set(candidates.clone());
                candidates
            }
        };
        let others = |list: Vec<OwnedUserId>| -> Vec<OwnedUserId> {
            list.into_iter().filter(|u| u != user_id).take(MAX_HEROES).collect()
        };
        let present = others(candidates.present);
        Ok(if present.is_empty() { others(candidates.gone) } else { present })
    }

    /// Queue a membership change in both indexes.
    pub fn set_in(
        &self,
        batch: &mut WriteBatch,
        room_id: &RoomId,
        user_id: &UserId,
        record: &MembershipRecord,
    ) -> Result<()> {
        self.room_members.put(batch, &(room_id.to_owned(), user_id.to_owned()), record)?;
        self.user_rooms.put(batch, &(user_id.to_owned(), room_id.to_owned()), record)?;
        Ok(())
    }

    /// Queue the removal of a user's rows in both indexes (a resolved state in which they
    /// have no member event at all).
    pub fn remove_in(&self, batch: &mut WriteBatch, room_id: &RoomId, user_id: &UserId) {
        self.room_members.delete(batch, &(room_id.to_owned(), user_id.to_owned()));
        self.user_rooms.delete(batch, &(user_id.to_owned(), room_id.to_owned()));
    }

    /// The user's latest membership record in the room.
    pub fn get(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<MembershipRecord>> {
        // A user whose rows are kept (one syncing, whose every event's visibility asks)
        // is answered from them.
        let kept = self.by_user.peek(user_id);
        if let Some(rows) = kept {
            let found = rows.binary_search_by(|(room, _)| room.as_str().cmp(room_id.as_str()));
            return Ok(found.ok().map(|index| rows[index].1.clone()));
        }
        Ok(self.user_rooms.get(&(user_id.to_owned(), room_id.to_owned()))?)
    }

    /// The user's current membership in the room.
    pub fn membership(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<MembershipState>> {
        Ok(self.get(room_id, user_id)?.map(|r| MembershipState::from(r.membership.as_str())))
    }

    pub fn is_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        Ok(self.membership(room_id, user_id)? == Some(MembershipState::Join))
    }

    /// Rooms in which the user's latest membership is `membership`.
    pub fn rooms_of_user(&self, user_id: &UserId, membership: &MembershipState) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .user_memberships(user_id)?
            .iter()
            .filter(|(_, record)| record.membership == membership.as_str())
            .map(|(room_id, _)| room_id.clone())
            .collect())
    }

    /// Every room the user has a membership row in, with that row.
    pub fn memberships_of_user(&self, user_id: &UserId) -> Result<Vec<(OwnedRoomId, MembershipRecord)>> {
        Ok(self.user_memberships(user_id)?.to_vec())
    }

    /// [`Self::memberships_of_user`] shared, without copying the rows.
    pub fn user_memberships(&self, user_id: &UserId) -> Result<UserMemberships> {
        self.by_user.get_or_load(user_id, || {
            let mut rows = self
                .user_rooms
                .scan_prefix(&user_id.to_owned(), Direction::Forward)?
                .map(|row| {
                    let ((_, room_id), record) = row?;
                    Ok((room_id, record))
                })
                .collect::<Result<Vec<_>>>()?;
            // By room ID, for `get`'s binary search.
            rows.sort_unstable_by(|(a, _), (b, _)| a.as_str().cmp(b.as_str()));
            Ok(rows.into())
        })
    }

    /// Every user with a membership row in the room, and that row.
    pub fn members(&self, room_id: &RoomId) -> Result<Vec<(OwnedUserId, MembershipRecord)>> {
        self.room_members
            .scan_prefix(&room_id.to_owned(), Direction::Forward)?
            .map(|row| {
                let ((_, user_id), record) = row?;
                Ok((user_id, record))
            })
            .collect()
    }

    /// Users whose latest membership is `membership`.
    pub fn members_with(&self, room_id: &RoomId, membership: &MembershipState) -> Result<Vec<OwnedUserId>> {
        match membership {
            MembershipState::Join => return Ok(self.roster(room_id)?.joined.iter().cloned().collect()),
            MembershipState::Invite => return Ok(self.roster(room_id)?.invited.iter().cloned().collect()),
            _ => {}
        }
        Ok(self
            .members(room_id)?
            .into_iter()
            .filter(|(_, r)| r.membership == membership.as_str())
            .map(|(u, _)| u)
            .collect())
    }

    /// Who joined and who left `room_id` after `since` up to `upto`, from the indexes (so a
    /// client's filter cannot hide a move, as it can hide the member events themselves).
    /// Only the latest move of each user counts: one who joined and left again left.
    pub fn moves(&self, room_id: &RoomId, since: u64, upto: u64) -> Result<MemberMoves> {
        let in_range = |position: u64| position > since && position <= upto;
        let mut moves = MemberMoves::default();
        for (user_id, record) in self.members(room_id)? {
            match record.membership.as_str() {
                "join" if record.joined_at.is_some_and(in_range) => moves.joined.push(user_id),
                "leave" | "ban" if in_range(record.stream) => moves.left.push(user_id),
                _ => {}
            }
        }
        Ok(moves)
    }

    /// Queue the removal of a purged room's membership rows, except the user-side rows of
    /// `keep` (local users who left, whose clients must still be told). Returns every user
    /// whose rows changed, to pass to [`Self::committed`] once written.
    pub fn purge_room_in(
        &self,
        batch: &mut WriteBatch,
        room_id: &RoomId,
        keep: &std::collections::HashSet<OwnedUserId>,
    ) -> Result<Vec<OwnedUserId>> {
        let members = self.members(room_id)?;
        self.room_members.delete_prefix(batch, &room_id.to_owned())?;
        for (user_id, _) in &members {
            if !keep.contains(user_id) {
                self.user_rooms.delete(batch, &(user_id.clone(), room_id.to_owned()));
            }
        }
        Ok(members.into_iter().map(|(user_id, _)| user_id).collect())
    }

    /// Remove the user's last row of a purged room (they forgot it).
    pub fn remove_user_row(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        self.user_rooms.remove(&(user_id.to_owned(), room_id.to_owned()))?;
        self.committed([user_id]);
        Ok(())
    }

    /// Mark the room forgotten for the user (only meaningful after they left).
    pub fn forget(&self, room_id: &RoomId, user_id: &UserId, mut record: MembershipRecord) -> Result<()> {
        record.forgotten = true;
        let mut batch = WriteBatch::new();
        self.set_in(&mut batch, room_id, user_id, &record)?;
        self.store.write(batch)?;
        self.committed([user_id]);
        Ok(())
    }
}
