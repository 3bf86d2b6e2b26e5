//! Room state: each room's record (version, graph tip), current state, and state at any
//! event as deduplicated state groups. Owns the `rooms`, `state_groups` and `room_state`
//! tables.
//!
//! A state event makes a new group: its parent plus one change. Message events share the
//! group of the state they were sent in, so state is stored once per change, not per event.
//! Every `SNAPSHOT_INTERVAL` links a group is written whole, so loading one never walks a
//! long chain.

use std::sync::Arc;

use ruma::{OwnedEventId, OwnedRoomId, RoomId, events::StateEventType};

use crate::{
    Error, Result,
    service::cache::BoundedCache,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        kv::KeyRange,
        sequence::Sequence,
        tables::{ROOM_STATE, ROOMS, RoomRecord, STATE_GROUPS, StateGroupRecord},
    },
};

/// The store's sequence of state-group IDs, and how many this process takes at a time.
pub const GROUP_SEQUENCE: &str = "state_group";
const GROUP_ID_BLOCK: u64 = 100;

/// Deltas between full snapshots.
const SNAPSHOT_INTERVAL: u32 = 64;
/// Bytes one entry of a cached state map is counted as, besides its state key and event ID:
/// the key's type, the strings' headers and the map's own share.
const STATE_ENTRY_BYTES: usize = 112;
/// A typical state key (a user ID) and event ID together.
const TYPICAL_KEY_AND_ID_BYTES: usize = 80;

/// The bytes a cached state map holds, roughly. A room's state maps are kept in memory
/// because its current state is read on every event sent to it; a big room's maps are big
/// (one entry per member), so the cache is bounded by bytes, not by maps. Counted from the
/// number of entries (constant time: walking a 10,000-member map on every insert cost as
/// much as the join that made it), each as a typical state key and event ID; maps that
/// share entries are each counted whole, so the bound is conservative.
fn state_weight(state: &Arc<StateMap>) -> usize {
    64 + state.len() * (STATE_ENTRY_BYTES + TYPICAL_KEY_AND_ID_BYTES)
}

/// The state before a room's create event: no group is stored for it (IDs start at 1).
pub const EMPTY_GROUP: u64 = 0;

/// `(event type, state key)`.
pub type StateKey = (StateEventType, String);
/// A room state: which event holds each `(type, state_key)`. A persistent map: cloning it
/// costs nothing and a changed copy shares all unchanged entries with the original, so the
/// state after a change in a big room is not a copy of its member list.
pub type StateMap = imbl::HashMap<StateKey, OwnedEventId>;

/// Memory for the chain lengths of recently made groups.
const CHAIN_LENS_BYTES: usize = 256 * 1024;

pub struct RoomStates {
    rooms: Table<OwnedRoomId, RoomRecord>,
    groups: Table<u64, StateGroupRecord>,
    room_state: Table<(OwnedRoomId, String, String), OwnedEventId>,
    group_cache: BoundedCache<u64, Arc<StateMap>>,
    /// The delta chain length of groups made by this process, so a group can be made on a
    /// parent queued in the same batch (not readable from the table yet).
    chain_lens: BoundedCache<u64, u32>,
    /// State-group IDs, from the store's durable `state_group` sequence.
    group_ids: Sequence,
}

impl RoomStates {
    /// The state-group cache's counters (for the metrics).
    pub fn cache_stats(&self) -> crate::service::cache::CacheStats {
        self.group_cache.stats()
    }

    /// `cache_bytes`: memory the state maps kept in memory may hold.
    pub fn new(store: &Arc<dyn KvStore>, cache_bytes: usize) -> Result<Self> {
        let groups = STATE_GROUPS.open(store);
        Ok(Self {
            rooms: ROOMS.open(store),
            groups,
            room_state: ROOM_STATE.open(store),
            group_cache: BoundedCache::new(cache_bytes, state_weight),
            chain_lens: BoundedCache::new(CHAIN_LENS_BYTES, |_| 32),
            group_ids: Sequence::new(store, GROUP_SEQUENCE, GROUP_ID_BLOCK),
        })
    }

    /// The room's record, if this server knows the room.
    pub fn room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>> {
        Ok(self.rooms.get(&room_id.to_owned())?)
    }

    /// Every room this server knows, in room ID order.
    pub fn room_ids(&self) -> Result<Vec<OwnedRoomId>> {
        self.rooms.scan(KeyRange::all(), Direction::Forward)?.map(|row| Ok(row?.0)).collect()
    }

    pub fn put_room_in(&self, batch: &mut WriteBatch, room_id: &RoomId, record: &RoomRecord) -> Result<()> {
        Ok(self.rooms.put(batch, &room_id.to_owned(), record)?)
    }

    /// The current state of a room.
    pub fn current_state(&self, room_id: &RoomId) -> Result<Arc<StateMap>> {
        let room = self.room(room_id)?.ok_or_else(|| Error::not_found("Unknown room"))?;
        self.state_of_group(room.state_group)
    }

    /// One entry of a room's current state, read from the per-room table.
    pub fn current_state_event_id(
        &self,
        room_id: &RoomId,
        kind: &StateEventType,
        state_key: &str,
    ) -> Result<Option<OwnedEventId>> {
        Ok(self.room_state.get(&(room_id.to_owned(), kind.to_string(), state_key.to_owned()))?)
    }

    /// The full state a group stands for.
    pub fn state_of_group(&self, group: u64) -> Result<Arc<StateMap>> {
        if group == EMPTY_GROUP {
            return Ok(Arc::new(StateMap::new()));
        }
        if let Some(hit) = self.group_cache.get(&group) {
            return Ok(hit);
        }
        // Walk to the nearest snapshot (or cached group), then replay the deltas forward.
        let mut chain = Vec::new();
        let mut next = Some(group);
        let mut base = StateMap::new();
        while let Some(id) = next {
            if let Some(hit) = self.group_cache.get(&id) {
                base = (*hit).clone();
                break;
            }
            let record =
                self.groups.get(&id)?.ok_or_else(|| Error::internal(format!("missing state group {id}")))?;
            next = record.parent;
            chain.push(record);
        }
        for record in chain.into_iter().rev() {
            for (kind, state_key) in record.removed {
                base.remove(&(kind.into(), state_key));
            }
            for (kind, state_key, event_id) in record.changes {
                base.insert((kind.into(), state_key), event_id);
            }
        }
        let state = Arc::new(base);
        self.group_cache.insert(group, Arc::clone(&state));
        Ok(state)
    }

    /// Queue a new group: `parent`'s state with `changes` applied. Returns the group's ID and
    /// state; call [`Self::committed_group`] once the batch is written.
    pub fn new_group_in(
        &self,
        batch: &mut WriteBatch,
        parent: Option<u64>,
        changes: &[(StateKey, OwnedEventId)],
    ) -> Result<(u64, Arc<StateMap>)> {
        self.new_group_with_removals_in(batch, parent, changes, &[])
    }

    /// As [`Self::new_group_in`], also dropping `removed` keys of the parent (a resolved
    /// state stored as a delta against one fork).
    pub fn new_group_with_removals_in(
        &self,
        batch: &mut WriteBatch,
        parent: Option<u64>,
        changes: &[(StateKey, OwnedEventId)],
        removed: &[StateKey],
    ) -> Result<(u64, Arc<StateMap>)> {
        let (mut state, parent_chain) = match parent {
            Some(parent) => {
                let chain_len = match self.chain_lens.get(&parent) {
                    Some(len) => len,
                    None => {
                        self.groups
                            .get(&parent)?
                            .ok_or_else(|| Error::internal(format!("missing state group {parent}")))?
                            .chain_len
                    }
                };
                ((*self.state_of_group(parent)?).clone(), Some((parent, chain_len)))
            }
            None => (StateMap::new(), None),
        };
        for key in removed {
            state.remove(key);
        }
        for (key, event_id) in changes {
            state.insert(key.clone(), event_id.clone());
        }
        let id = self.group_ids.next()?;
        let record = match parent_chain {
            Some((parent, chain_len)) if chain_len + 1 < SNAPSHOT_INTERVAL => StateGroupRecord {
                parent: Some(parent),
                chain_len: chain_len + 1,
                changes: changes.iter().map(|((k, s), e)| (k.to_string(), s.clone(), e.clone())).collect(),
                removed: removed.iter().map(|(k, s)| (k.to_string(), s.clone())).collect(),
            },
            _ => StateGroupRecord {
                parent: None,
                chain_len: 0,
                changes: state.iter().map(|((k, s), e)| (k.to_string(), s.clone(), e.clone())).collect(),
                removed: Vec::new(),
            },
        };
        self.groups.put(batch, &id, &record)?;
        self.chain_lens.insert(id, record.chain_len);
        Ok((id, Arc::new(state)))
    }

    /// Queue the change of current-state rows of a room.
    pub fn set_current_in(
        &self,
        batch: &mut WriteBatch,
        room_id: &RoomId,
        changes: &[(StateKey, OwnedEventId)],
    ) -> Result<()> {
        for ((kind, state_key), event_id) in changes {
            self.room_state.put(
                batch,
                &(room_id.to_owned(), kind.to_string(), state_key.clone()),
                event_id,
            )?;
        }
        Ok(())
    }

    /// Queue the removal of current-state rows of a room (keys a resolved state dropped).
    pub fn remove_current_in(&self, batch: &mut WriteBatch, room_id: &RoomId, removed: &[StateKey]) {
        for (kind, state_key) in removed {
            self.room_state.delete(batch, &(room_id.to_owned(), kind.to_string(), state_key.clone()));
        }
    }

    /// Queue the removal of a purged room's record, current state rows and state groups.
    /// Group IDs are never reused, so cached maps of removed groups are never asked for.
    pub fn purge_room_in(
        &self,
        batch: &mut WriteBatch,
        room_id: &RoomId,
        groups: impl IntoIterator<Item = u64>,
    ) -> Result<()> {
        let room = room_id.to_owned();
        self.rooms.delete(batch, &room);
        self.room_state.delete_prefix(batch, &room)?;
        for group in groups {
            if group != EMPTY_GROUP {
                self.groups.delete(batch, &group);
            }
        }
        Ok(())
    }

    /// Remember a group written by a committed batch.
    pub fn committed_group(&self, id: u64, state: Arc<StateMap>) {
        self.group_cache.insert(id, state);
    }
}
