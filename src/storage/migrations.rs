//! The stored schema version and the ordered list of migrations that bring an older database
//! up to date. A database newer than this build is refused, never guessed at.

use std::sync::Arc;

use serde_json::value::RawValue as RawJsonValue;

use super::{
    codec::KeyCodec,
    codec::{decode_value, encode_value},
    kv::{Direction, KeyRange, KvStore, StorageError, StorageResult, WriteBatch},
    tables::{
        COUNTERS, META, NOTIFICATIONS, NotificationRecord, PUSH_ACTIONS, PUSH_COUNT_BASES, PUSH_COUNTS,
        PUSH_LOG, PUSH_LOG_ORDER, PUSHERS, PushActionRecord, PushCountBase, PushCountRecord, PushLogMember,
        PushLogRecord, PusherRecord, RELATION_PARENTS, RELATIONS, REPORTS, SCHEMA_VERSION_KEY, SEQUENCES,
        STATE_GROUPS, STREAM, UIAA_SESSIONS,
    },
};

/// One step from `to_version - 1` to `to_version`. It returns the writes to make; they land in
/// the same atomic batch as the version bump, so a crash never leaves a half-migrated database.
pub struct Migration {
    pub to_version: u64,
    pub description: &'static str,
    pub run: fn(&dyn KvStore) -> StorageResult<WriteBatch>,
}

/// Every migration, oldest first. Version 1 is the initial layout and needs none.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        to_version: 2,
        description: "user-interactive auth sessions are bound to their request: drop sessions in progress",
        run: drop_uiaa_sessions,
    },
    Migration {
        to_version: 3,
        description: "pushers record the device that set them",
        run: pushers_with_devices,
    },
    Migration {
        to_version: 4,
        description: "notification rows carry running totals per room and thread (push_counts)",
        run: push_counts_from_actions,
    },
    Migration {
        to_version: 5,
        description: "stream positions, state-group IDs and report IDs come from durable sequences",
        run: sequences_from_stored_ids,
    },
    Migration {
        to_version: 6,
        description: "notifications are logged per room and event (push_log), not per member",
        run: push_log_from_notifications,
    },
    Migration {
        to_version: 7,
        description: "events with relations are listed (relation_parents) for bundling by point reads",
        run: relation_parents_from_relations,
    },
    Migration {
        to_version: 8,
        description: "federation EDUs that must not be lost are stored (federation_edus), and device lists are cached and tracked across servers (remote_device_lists, device_lists_sent), all starting empty",
        run: nothing_to_move,
    },
    Migration {
        to_version: 9,
        description: "other servers' media fetched over federation is cached (remote_media), and processes sharing a PostgreSQL database publish their stream positions (stream_writers), both starting empty",
        run: nothing_to_move,
    },
    Migration {
        to_version: 10,
        description: "processes sharing a PostgreSQL database share who is typing (typing), starting empty",
        run: nothing_to_move,
    },
];

/// The schema version this build writes.
pub const CURRENT_SCHEMA_VERSION: u64 = 10;

/// A version that adds tables starting empty: nothing stored moves.
fn nothing_to_move(_: &dyn KvStore) -> StorageResult<WriteBatch> {
    Ok(WriteBatch::new())
}

/// Version 7 lists every event that has relation rows under it, so that bundling an event
/// with none costs a point read rather than a scan.
fn relation_parents_from_relations(store: &dyn KvStore) -> StorageResult<WriteBatch> {
    let mut batch = WriteBatch::new();
    let mut last: Option<ruma::OwnedEventId> = None;
    for entry in store.scan(RELATIONS.name, KeyRange::all(), Direction::Forward)? {
        let (key, _) = entry?;
        let (parent, _, _) = <(ruma::OwnedEventId, String, u64)>::from_key_bytes(&key)
            .map_err(|detail| StorageError::Corrupt { table: RELATIONS.name, detail })?;
        if last.as_ref() != Some(&parent) {
            let value = encode_value(RELATION_PARENTS.value_version, &())
                .map_err(|detail| StorageError::Corrupt { table: RELATION_PARENTS.name, detail })?;
            batch.put(RELATION_PARENTS.name, parent.to_key_bytes(), value);
            last = Some(parent);
        }
    }
    Ok(batch)
}

/// Version 5 hands out stream positions, state-group IDs and report IDs from durable
/// sequences (`sequences`) instead of counters kept in memory and seeded at start: each
/// sequence starts past every ID already used (for the stream, past the persisted
/// high-water mark, which covers positions of kinds never stored, such as typing).
fn sequences_from_stored_ids(store: &dyn KvStore) -> StorageResult<WriteBatch> {
    let last_key = |table: &'static str| -> StorageResult<u64> {
        match store.scan(table, KeyRange::all(), Direction::Reverse)?.next() {
            Some(row) => {
                u64::from_key_bytes(&row?.0).map_err(|detail| StorageError::Corrupt { table, detail })
            }
            None => Ok(0),
        }
    };
    let high_water = match store.get(COUNTERS.name, &"stream_high_water".to_owned().to_key_bytes())? {
        Some(bytes) => decode_value::<u64>(COUNTERS.value_version, &bytes)
            .map_err(|detail| StorageError::Corrupt { table: COUNTERS.name, detail })?,
        None => 0,
    };
    let mut batch = WriteBatch::new();
    for (name, last) in [
        ("stream", high_water.max(last_key(STREAM.name)?)),
        ("state_group", last_key(STATE_GROUPS.name)?),
        ("report", last_key(REPORTS.name)?),
    ] {
        let value = encode_value(SEQUENCES.value_version, &last)
            .map_err(|detail| StorageError::Corrupt { table: SEQUENCES.name, detail })?;
        batch.put(SEQUENCES.name, name.to_owned().to_key_bytes(), value);
    }
    Ok(batch)
}

/// Version 2 binds each user-interactive auth session to the method, path and parameters of
/// its request; a version-1 session names only its endpoint, so it cannot be bound. Sessions
/// live minutes, so they are dropped: a client that was in the middle of one is told the
/// session is unknown and starts again.
fn drop_uiaa_sessions(store: &dyn KvStore) -> StorageResult<WriteBatch> {
    let mut batch = WriteBatch::new();
    for entry in store.scan(UIAA_SESSIONS.name, KeyRange::all(), Direction::Forward)? {
        let (key, _) = entry?;
        batch.delete(UIAA_SESSIONS.name, key);
    }
    Ok(batch)
}

/// Bring the database to `CURRENT_SCHEMA_VERSION`, stamping a fresh database directly.
pub fn migrate(store: &Arc<dyn KvStore>) -> StorageResult<()> {
    migrate_with(store, MIGRATIONS, CURRENT_SCHEMA_VERSION)
}

fn migrate_with(store: &Arc<dyn KvStore>, migrations: &[Migration], current: u64) -> StorageResult<()> {
    let meta = META.open(store);
    let key = SCHEMA_VERSION_KEY.to_owned();
    let Some(mut version) = meta.get(&key)? else {
        tracing::info!(schema_version = current, "initialising a new database");
        return meta.insert(&key, &current);
    };
    if version > current {
        return Err(StorageError::Schema(format!(
            "the database has schema version {version}, but this conduit only understands up to \
             version {current}; it was written by a newer conduit. Run that version, or restore a \
             backup made before upgrading."
        )));
    }
    while version < current {
        let step = migrations.iter().find(|m| m.to_version == version + 1).ok_or_else(|| {
            StorageError::Schema(format!("no migration from schema version {version} to {}", version + 1))
        })?;
        tracing::info!(to = step.to_version, what = step.description, "migrating database");
        let mut batch = (step.run)(store.as_ref())?;
        meta.put(&mut batch, &key, &step.to_version)?;
        store.write(batch)?;
        version = step.to_version;
    }
    Ok(())
}

/// Version 3 stores each pusher with the device that set it, so the pusher goes when the
/// device does. Which device set an older pusher is unknown: it is kept with no device, and
/// goes when all of the user's other devices are logged out.
fn pushers_with_devices(store: &dyn KvStore) -> StorageResult<WriteBatch> {
    let mut batch = WriteBatch::new();
    for entry in store.scan(PUSHERS.name, KeyRange::all(), Direction::Forward)? {
        let (key, value) = entry?;
        let corrupt = |detail: String| StorageError::Corrupt { table: PUSHERS.name, detail };
        let pusher: Box<RawJsonValue> = decode_value(1, &value).map_err(corrupt)?;
        let record = PusherRecord { device_id: None, created_ms: 0, pusher };
        batch.put(PUSHERS.name, key, encode_value(PUSHERS.value_version, &record).map_err(corrupt)?);
    }
    Ok(batch)
}

/// Version 4 counts unread notifications from running totals: each `push_actions` row
/// becomes a `push_counts` row under its thread key with the user's totals in its room and
/// thread up to it (rows are read in position order per user and room), and each user, room
/// and thread with rows gets its zero base.
fn push_counts_from_actions(store: &dyn KvStore) -> StorageResult<WriteBatch> {
    let mut batch = WriteBatch::new();
    let corrupt = |table: &'static str| move |detail: String| StorageError::Corrupt { table, detail };
    let mut totals: std::collections::HashMap<(ruma::OwnedUserId, ruma::OwnedRoomId, String), (u64, u64)> =
        std::collections::HashMap::new();
    for entry in store.scan(PUSH_ACTIONS.name, KeyRange::all(), Direction::Forward)? {
        let (key, value) = entry?;
        let (user, room, stream) = <(ruma::OwnedUserId, ruma::OwnedRoomId, u64)>::from_key_bytes(&key)
            .map_err(corrupt(PUSH_ACTIONS.name))?;
        let record: PushActionRecord =
            decode_value(PUSH_ACTIONS.value_version, &value).map_err(corrupt(PUSH_ACTIONS.name))?;
        let thread = record.thread.unwrap_or_else(|| "main".to_owned());
        let total = totals.entry((user.clone(), room.clone(), thread.clone())).or_default();
        total.0 += 1;
        total.1 += u64::from(record.highlight);
        let row = PushCountRecord {
            event_id: record.event_id,
            highlight: record.highlight,
            notified: total.0,
            highlighted: total.1,
            class_notified: 0,
            class_highlighted: 0,
        };
        batch.put(
            PUSH_COUNTS.name,
            (user, room, thread, stream).to_key_bytes(),
            encode_value(PUSH_COUNTS.value_version, &row).map_err(corrupt(PUSH_COUNTS.name))?,
        );
        batch.delete(PUSH_ACTIONS.name, key);
    }
    for key in totals.into_keys() {
        batch.put(
            PUSH_COUNT_BASES.name,
            key.to_key_bytes(),
            encode_value(PUSH_COUNT_BASES.value_version, &PushCountBase::default())
                .map_err(corrupt(PUSH_COUNT_BASES.name))?,
        );
    }
    Ok(batch)
}

/// Version 6 logs who an event notifies once per room and event (`push_log`) and keeps
/// per-member rows only for members with pushers. `/notifications` reads the log, so each
/// event's per-member rows of version 4 become one log row naming those members (the
/// thread is not in those rows: their read state follows the room's receipt). The rows
/// stay as they are for the pushers' queues; `push_counts` needs nothing (its rows count
/// the members' own notifications, with nothing counted by a class).
fn push_log_from_notifications(store: &dyn KvStore) -> StorageResult<WriteBatch> {
    let mut batch = WriteBatch::new();
    let corrupt = |table: &'static str| move |detail: String| StorageError::Corrupt { table, detail };
    let mut logged: std::collections::BTreeMap<(ruma::OwnedRoomId, u64), PushLogRecord> =
        std::collections::BTreeMap::new();
    for entry in store.scan(NOTIFICATIONS.name, KeyRange::all(), Direction::Forward)? {
        let (key, value) = entry?;
        let (user, stream) =
            <(ruma::OwnedUserId, u64)>::from_key_bytes(&key).map_err(corrupt(NOTIFICATIONS.name))?;
        let record: NotificationRecord =
            decode_value(NOTIFICATIONS.value_version, &value).map_err(corrupt(NOTIFICATIONS.name))?;
        let row = logged.entry((record.room_id.clone(), stream)).or_insert_with(|| PushLogRecord {
            event_id: record.event_id.clone(),
            sender: None,
            thread: None,
            ts: record.ts,
            classes: Vec::new(),
            alone: Vec::new(),
        });
        row.alone.push(PushLogMember {
            user_id: user,
            actions: Some(record.actions),
            highlight: record.highlight,
        });
    }
    for ((room, stream), row) in logged {
        batch.put(
            PUSH_LOG_ORDER.name,
            stream.to_key_bytes(),
            encode_value(PUSH_LOG_ORDER.value_version, &room).map_err(corrupt(PUSH_LOG_ORDER.name))?,
        );
        batch.put(
            PUSH_LOG.name,
            (room, stream).to_key_bytes(),
            encode_value(PUSH_LOG.value_version, &row).map_err(corrupt(PUSH_LOG.name))?,
        );
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{memory::MemoryStore, tables::ALL_TABLES};

    fn store() -> Arc<dyn KvStore> {
        Arc::new(MemoryStore::new(ALL_TABLES))
    }

    fn version(store: &Arc<dyn KvStore>) -> Option<u64> {
        META.open(store).get(&SCHEMA_VERSION_KEY.to_owned()).unwrap()
    }

    #[test]
    fn fresh_database_is_stamped_current() {
        let s = store();
        migrate(&s).unwrap();
        assert_eq!(version(&s), Some(CURRENT_SCHEMA_VERSION));
        migrate(&s).unwrap();
    }

    #[test]
    fn newer_database_is_refused_with_a_clear_message() {
        let s = store();
        META.open(&s).insert(&SCHEMA_VERSION_KEY.to_owned(), &(CURRENT_SCHEMA_VERSION + 1)).unwrap();
        let err = migrate(&s).unwrap_err().to_string();
        assert!(err.contains("newer conduit"), "{err}");
    }

    #[test]
    fn version_2_drops_sessions_bound_only_to_an_endpoint() {
        let s = store();
        META.open(&s).insert(&SCHEMA_VERSION_KEY.to_owned(), &1).unwrap();
        let old =
            serde_json::json!({"user_id": null, "endpoint": "register", "completed": [], "expires_ms": 1});
        let mut batch = WriteBatch::new();
        batch.put(UIAA_SESSIONS.name, b"session".to_vec(), encode_value(1, &old).unwrap());
        s.write(batch).unwrap();
        migrate(&s).unwrap();
        assert_eq!(version(&s), Some(CURRENT_SCHEMA_VERSION));
        assert_eq!(UIAA_SESSIONS.open(&s).get(&"session".to_owned()).unwrap(), None);
    }

    #[test]
    fn version_5_starts_each_sequence_past_the_ids_in_use() {
        let s = store();
        META.open(&s).insert(&SCHEMA_VERSION_KEY.to_owned(), &4).unwrap();
        let mut batch = WriteBatch::new();
        COUNTERS.open(&s).put(&mut batch, &"stream_high_water".to_owned(), &2_000).unwrap();
        batch.put(STREAM.name, 1_500u64.to_key_bytes(), Vec::new());
        batch.put(STATE_GROUPS.name, 41u64.to_key_bytes(), Vec::new());
        batch.put(STATE_GROUPS.name, 7u64.to_key_bytes(), Vec::new());
        s.write(batch).unwrap();
        migrate(&s).unwrap();
        assert_eq!(version(&s), Some(CURRENT_SCHEMA_VERSION));
        assert_eq!(s.next_ids("stream", 1).unwrap().start, 2_001);
        assert_eq!(s.next_ids("state_group", 1).unwrap().start, 42);
        assert_eq!(s.next_ids("report", 1).unwrap().start, 1);
    }

    #[test]
    fn version_3_keeps_pushers_with_no_device() {
        let s = store();
        META.open(&s).insert(&SCHEMA_VERSION_KEY.to_owned(), &2).unwrap();
        let pusher = serde_json::json!({"app_id": "a", "pushkey": "k", "kind": "http"});
        let key = (ruma::owned_user_id!("@u:example.org"), "a".to_owned(), "k".to_owned());
        let mut batch = WriteBatch::new();
        batch.put(
            PUSHERS.name,
            crate::storage::codec::KeyCodec::to_key_bytes(&key),
            encode_value(1, &pusher).unwrap(),
        );
        s.write(batch).unwrap();
        migrate(&s).unwrap();
        let record = PUSHERS.open(&s).get(&key).unwrap().unwrap();
        assert_eq!(record.device_id, None);
        assert_eq!(serde_json::from_str::<serde_json::Value>(record.pusher.get()).unwrap(), pusher);
    }

    #[test]
    fn version_4_gives_notification_rows_running_totals_per_thread() {
        let s = store();
        META.open(&s).insert(&SCHEMA_VERSION_KEY.to_owned(), &3).unwrap();
        let user = ruma::owned_user_id!("@u:example.org");
        let room = ruma::owned_room_id!("!r:example.org");
        let root = "$root".to_owned();
        let rows = [(5u64, None, false), (6, Some(root.clone()), true), (7, None, true), (9, None, false)];
        let mut batch = WriteBatch::new();
        for (stream, thread, highlight) in &rows {
            let record = PushActionRecord {
                event_id: ruma::OwnedEventId::try_from(format!("$e{stream}")).unwrap(),
                highlight: *highlight,
                thread: thread.clone(),
            };
            batch.put(
                PUSH_ACTIONS.name,
                (user.clone(), room.clone(), *stream).to_key_bytes(),
                encode_value(1, &record).unwrap(),
            );
        }
        s.write(batch).unwrap();
        migrate(&s).unwrap();
        let counts = PUSH_COUNTS.open(&s);
        let totals = |thread: &str, stream: u64| {
            let row = counts.get(&(user.clone(), room.clone(), thread.to_owned(), stream)).unwrap().unwrap();
            (row.notified, row.highlighted)
        };
        assert_eq!([totals("main", 5), totals("main", 7), totals("main", 9)], [(1, 0), (2, 1), (3, 1)]);
        assert_eq!(totals(&root, 6), (1, 1));
        let bases = PUSH_COUNT_BASES.open(&s);
        assert!(bases.get(&(user.clone(), room.clone(), "main".to_owned())).unwrap().is_some());
        assert!(bases.get(&(user.clone(), room.clone(), root)).unwrap().is_some());
        assert!(s.scan(PUSH_ACTIONS.name, KeyRange::all(), Direction::Forward).unwrap().next().is_none());
    }

    #[test]
    fn version_6_logs_each_notified_event_once_with_its_members() {
        let s = store();
        META.open(&s).insert(&SCHEMA_VERSION_KEY.to_owned(), &5).unwrap();
        let (u, v) = (ruma::owned_user_id!("@u:example.org"), ruma::owned_user_id!("@v:example.org"));
        let room = ruma::owned_room_id!("!r:example.org");
        let row = |event: &str, highlight: bool| NotificationRecord {
            room_id: room.clone(),
            event_id: ruma::OwnedEventId::try_from(event).unwrap(),
            actions: serde_json::json!(["notify"]),
            highlight,
            ts: 1_000,
        };
        let notifications = NOTIFICATIONS.open(&s);
        let mut batch = WriteBatch::new();
        notifications.put(&mut batch, &(u.clone(), 7), &row("$seven", false)).unwrap();
        notifications.put(&mut batch, &(v.clone(), 7), &row("$seven", true)).unwrap();
        notifications.put(&mut batch, &(v.clone(), 9), &row("$nine", false)).unwrap();
        s.write(batch).unwrap();
        migrate(&s).unwrap();
        let log = PUSH_LOG.open(&s);
        let seven = log.get(&(room.clone(), 7)).unwrap().unwrap();
        let members: Vec<_> = seven.alone.iter().map(|m| (m.user_id.clone(), m.highlight)).collect();
        assert_eq!(members, [(u.clone(), false), (v.clone(), true)]);
        assert!(seven.classes.is_empty() && seven.sender.is_none());
        assert_eq!(log.get(&(room.clone(), 9)).unwrap().unwrap().alone.len(), 1);
        assert_eq!(PUSH_LOG_ORDER.open(&s).get(&9).unwrap(), Some(room.clone()));
        // The pushers' rows stay.
        assert!(notifications.get(&(u, 7)).unwrap().is_some());
    }

    #[test]
    fn version_7_lists_each_parent_with_relations_once() {
        let s = store();
        META.open(&s).insert(&SCHEMA_VERSION_KEY.to_owned(), &6).unwrap();
        let relations = RELATIONS.open(&s);
        let parent = ruma::OwnedEventId::try_from("$parent").unwrap();
        let other = ruma::OwnedEventId::try_from("$other").unwrap();
        let record = |child: &str| crate::storage::tables::RelationRecord {
            event_id: ruma::OwnedEventId::try_from(child).unwrap(),
            kind: "m.room.message".to_owned(),
            sender: ruma::owned_user_id!("@u:example.org"),
        };
        let mut batch = WriteBatch::new();
        relations.put(&mut batch, &(parent.clone(), "m.thread".to_owned(), 3), &record("$a")).unwrap();
        relations.put(&mut batch, &(parent.clone(), "m.replace".to_owned(), 4), &record("$b")).unwrap();
        relations.put(&mut batch, &(other.clone(), "m.reference".to_owned(), 5), &record("$c")).unwrap();
        s.write(batch).unwrap();
        migrate(&s).unwrap();
        let parents = RELATION_PARENTS.open(&s);
        let listed: Vec<_> =
            parents.scan(KeyRange::all(), Direction::Forward).unwrap().map(|r| r.unwrap().0).collect();
        assert_eq!(listed, [other, parent]);
        assert!(parents.get(&ruma::OwnedEventId::try_from("$a").unwrap()).unwrap().is_none());
    }

    #[test]
    fn migrations_run_in_order_with_their_writes() {
        fn add_marker(_: &dyn KvStore) -> StorageResult<WriteBatch> {
            let mut b = WriteBatch::new();
            b.put("meta", b"marker".to_vec(), vec![1]);
            Ok(b)
        }
        let steps = [
            Migration { to_version: 2, description: "two", run: add_marker },
            Migration { to_version: 3, description: "three", run: |_| Ok(WriteBatch::new()) },
        ];
        let s = store();
        META.open(&s).insert(&SCHEMA_VERSION_KEY.to_owned(), &1).unwrap();
        migrate_with(&s, &steps, 3).unwrap();
        assert_eq!(version(&s), Some(3));
        assert_eq!(s.get("meta", b"marker").unwrap(), Some(vec![1]));
        // A gap in the list is an error, not a silent skip.
        META.open(&s).insert(&SCHEMA_VERSION_KEY.to_owned(), &1).unwrap();
        assert!(migrate_with(&s, &steps[1..], 3).is_err());
    }
}
