//! Purging a room: removing it from storage so it is gone from sync, search, the directory
//! and every list. Each table keyed by the room (or by its events) is cleared through the
//! service that owns it: events, timeline, stream and timestamp rows (`Events`), the room
//! record, current state and state groups (`RoomStates`), memberships (`Memberships`),
//! receipts (`Receipts`), relations and threads (`Relations`), the search index (`Search`),
//! notifications (`Notifications`), room account data and tags (`AccountData`), aliases
//! (`Aliases`), the directory entry (`Directory`) and waiting delayed events
//! (`DelayedEvents`). No table of its own.
//!
//! One thing stays: for each local user who had left (or been kicked from or banned from)
//! the room, their own membership row and that one member event, so their clients, syncing
//! from before the leave, are still told of it. Forgetting the room removes the row.
//! Transaction IDs of the room's events stay too (a retransmission is answered with the
//! event ID it had), and reports stay for admins.
//!
//! The room's lock is held throughout, so nothing is appended meanwhile; sends waiting for
//! it then find the room unknown. The room-wide rows go in one batch first (after it the
//! room no longer exists for any reader), then the events in batches of `CHUNK`.

use std::{collections::HashSet, sync::Arc};

use ruma::{OwnedEventId, OwnedServerName, OwnedUserId, RoomId};

use super::{
    aliases::Aliases, directory::Directory, events::Events, members::Memberships, receipts::Receipts,
    relations::Relations, search::Search, state::RoomStates, timeline::Timeline,
};
use crate::{
    Result,
    service::{account_data::AccountData, delayed_events::DelayedEvents, push::Notifications},
    storage::{Direction, KvStore, WriteBatch},
};

/// Events removed per batch.
const CHUNK: usize = 512;

pub struct RoomPurge {
    server_name: OwnedServerName,
    store: Arc<dyn KvStore>,
    timeline: Arc<Timeline>,
    events: Arc<Events>,
    states: Arc<RoomStates>,
    members: Arc<Memberships>,
    receipts: Arc<Receipts>,
    relations: Arc<Relations>,
    search: Arc<Search>,
    notifications: Arc<Notifications>,
    account_data: Arc<AccountData>,
    aliases: Arc<Aliases>,
    directory: Arc<Directory>,
    delayed: Arc<DelayedEvents>,
}

impl RoomPurge {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        server_name: OwnedServerName,
        store: &Arc<dyn KvStore>,
        timeline: Arc<Timeline>,
        events: Arc<Events>,
        states: Arc<RoomStates>,
        members: Arc<Memberships>,
        receipts: Arc<Receipts>,
        relations: Arc<Relations>,
        search: Arc<Search>,
        notifications: Arc<Notifications>,
        account_data: Arc<AccountData>,
        aliases: Arc<Aliases>,
        directory: Arc<Directory>,
        delayed: Arc<DelayedEvents>,
    ) -> Self {
        Self {
            server_name,
            store: Arc::clone(store),
            timeline,
            events,
            states,
            members,
            receipts,
            relations,
            search,
            notifications,
            account_data,
            aliases,
            directory,
            delayed,
        }
    }

    /// Remove the room from storage; answers how many events were removed (0 for a room
    /// this server does not know).
    pub async fn purge(&self, room_id: &RoomId) -> Result<u64> {
        let _lock = self.timeline.lock_room(room_id).await;
        let Some(room) = self.states.room(room_id)? else { return Ok(0) };

        let members = self.members.members(room_id)?;
        let mut kept_users = HashSet::new();
        let mut kept_events = HashSet::new();
        for (user_id, record) in &members {
            if user_id.server_name() == self.server_name
                && matches!(record.membership.as_str(), "leave" | "ban")
                && !record.forgotten
            {
                kept_users.insert(user_id.clone());
                kept_events.insert(record.event_id.clone());
            }
        }
        let users: Vec<OwnedUserId> = members.into_iter().map(|(user_id, _)| user_id).collect();

        // The room itself: once this is written, no reader finds it.
        let mut batch = WriteBatch::new();
        self.states.purge_room_in(&mut batch, room_id, [room.state_group])?;
        let changed = self.members.purge_room_in(&mut batch, room_id, &kept_users)?;
        self.receipts.purge_room_in(&mut batch, room_id)?;
        self.notifications.purge_room_in(&mut batch, room_id, &users)?;
        self.account_data.purge_room_in(&mut batch, room_id, &users)?;
        self.store.write(batch)?;
        self.members.committed(changed.iter().map(AsRef::as_ref));
        self.members.purged_room(room_id);
        self.notifications.purged_room(room_id);
        self.receipts.purged(room_id);
        self.aliases.delete_all(room_id)?;
        self.directory.withdraw(room_id)?;
        self.delayed.cancel_all_for_room(room_id)?;

        // Its events, a batch at a time; each scan starts afresh, as the last one's rows
        // are gone.
        let mut groups = HashSet::new();
        let mut removed = 0u64;
        loop {
            // Backfilled history first, then the stream's events.
            let events =
                self.events.room_events_by_position(room_id, None, None, Direction::Forward, CHUNK)?;
            if events.is_empty() {
                break;
            }
            let mut batch = WriteBatch::new();
            let ids: Vec<OwnedEventId> = events.iter().map(|e| e.pdu.event_id.clone()).collect();
            for event in &events {
                groups.insert(event.state_before);
                groups.extend(event.state_after);
                self.events.purge_event_in(&mut batch, event, kept_events.contains(&event.pdu.event_id));
            }
            self.relations.purge_room_in(&mut batch, room_id, &ids)?;
            self.search.purge_room_in(&mut batch, room_id, &ids)?;
            self.store.write(batch)?;
            let gone: Vec<OwnedEventId> = ids.into_iter().filter(|id| !kept_events.contains(id)).collect();
            self.events.purged(room_id, &gone);
            removed += events.len() as u64;
        }

        let mut batch = WriteBatch::new();
        self.states.purge_room_in(&mut batch, room_id, groups)?;
        self.events.purge_room_in(&mut batch, room_id)?;
        self.relations.purge_room_in(&mut batch, room_id, &[])?;
        self.search.purge_room_in(&mut batch, room_id, &[])?;
        self.store.write(batch)?;
        self.events.purged(room_id, &[]);
        tracing::info!(%room_id, events = removed, "room purged");
        Ok(removed)
    }
}
