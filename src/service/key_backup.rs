//! Server-side key backups (`/room_keys`): each user's backup versions and the encrypted room
//! keys stored in them. The server never reads the keys; it only decides which of two uploads
//! of the same session to keep, and counts. Owns the `backup_versions`,
//! `backup_last_versions` and `backup_keys` tables.
//!
//! Everything is keyed by the requesting user first, so one user's requests can only ever
//! reach their own rows.

use std::{cmp::Reverse, collections::BTreeMap, sync::Arc};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UInt, UserId};
use serde::{Deserialize, de::IgnoredAny};
use serde_json::value::RawValue as RawJsonValue;

use crate::{
    Error, Result,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        codec::KeyCodec,
        kv::KeyRange,
        locks::{KeyedMutexGuard, KeyedMutexes},
        tables::{BACKUP_KEYS, BACKUP_LAST_VERSIONS, BACKUP_VERSIONS, BackupKeyRecord, BackupVersionRecord},
    },
};

/// A backup version as clients see it.
#[derive(Debug)]
pub struct BackupVersion {
    pub version: String,
    pub algorithm: String,
    pub auth_data: Box<RawJsonValue>,
    pub count: u64,
    pub etag: u64,
}

/// The state of a version's keys after a change: how many, and the tag that moves with them.
#[derive(Clone, Copy, Debug)]
pub struct KeyCount {
    pub count: u64,
    pub etag: u64,
}

/// Which keys of a version a request addresses.
#[derive(Clone, Copy, Debug)]
pub enum KeyScope<'a> {
    All,
    Room(&'a RoomId),
    Session(&'a RoomId, &'a str),
}

/// Uploaded keys by room, then by session ID; the client's JSON for each.
pub type KeysByRoom = BTreeMap<OwnedRoomId, BTreeMap<String, Box<RawJsonValue>>>;

/// The body of `POST /room_keys/version` and `PUT /room_keys/version/{version}`.
#[derive(Deserialize)]
struct VersionBody {
    algorithm: String,
    auth_data: Box<RawJsonValue>,
    /// Only in updates: must then name the version in the path.
    #[serde(default)]
    version: Option<String>,
}

/// The parts of an uploaded key the server checks. `session_data` is algorithm-dependent
/// and opaque to the server; it only has to be an object.
#[derive(Deserialize)]
struct KeyBody {
    first_message_index: UInt,
    forwarded_count: UInt,
    is_verified: bool,
    #[allow(dead_code)] // Parsed only to check that it is an object.
    session_data: BTreeMap<String, IgnoredAny>,
}

pub struct KeyBackup {
    versions: Table<(OwnedUserId, u64), BackupVersionRecord>,
    last_versions: Table<OwnedUserId, u64>,
    keys: Table<(OwnedUserId, u64, OwnedRoomId, String), BackupKeyRecord>,
    store: Arc<dyn KvStore>,
    /// One writer at a time per user's backups (an upload reads the stored keys, then
    /// writes the better ones and the new count); other users' writes never wait.
    locks: KeyedMutexes<OwnedUserId>,
}

impl BackupKeyRecord {
    /// How good a copy of a session key this is, per the spec's order: a verified key beats
    /// an unverified one, then the lower first message index (it decrypts more), then the
    /// lower forwarded count (fewer hands it passed through).
    fn rank(&self) -> (bool, Reverse<u64>, Reverse<u64>) {
        (self.is_verified, Reverse(self.first_message_index), Reverse(self.forwarded_count))
    }
}

impl BackupVersionRecord {
    fn key_count(&self) -> KeyCount {
        KeyCount { count: self.count, etag: self.etag }
    }
}

/// The version number a client's string names. Only the canonical form of a number this
/// server handed out matches; anything else names no version.
fn parse_version(version: &str) -> Option<u64> {
    version.parse::<u64>().ok().filter(|n| n.to_string() == version)
}

fn unknown_version() -> Error {
    Error::not_found("Unknown backup version")
}

fn parse_version_body(body: &RawJsonValue) -> Result<VersionBody> {
    let parsed: VersionBody = serde_json::from_str(body.get())
        .map_err(|e| Error::bad_json(format!("Invalid backup version: {e}")))?;
    if !parsed.auth_data.get().trim_start().starts_with('{') {
        return Err(Error::bad_json("auth_data must be a JSON object"));
    }
    Ok(parsed)
}

/// Check an uploaded key and keep what deciding between two copies needs next to it.
fn parse_key(room_id: &RoomId, session_id: &str, data: Box<RawJsonValue>) -> Result<BackupKeyRecord> {
    let body: KeyBody = serde_json::from_str(data.get()).map_err(|e| {
        Error::bad_json(format!("Invalid key for session {session_id:?} in room {room_id}: {e}"))
    })?;
    Ok(BackupKeyRecord {
        first_message_index: body.first_message_index.into(),
        forwarded_count: body.forwarded_count.into(),
        is_verified: body.is_verified,
        data,
    })
}

impl KeyBackup {
    pub fn new(store: &Arc<dyn KvStore>) -> Self {
        Self {
            versions: BACKUP_VERSIONS.open(store),
            last_versions: BACKUP_LAST_VERSIONS.open(store),
            keys: BACKUP_KEYS.open(store),
            store: Arc::clone(store),
            locks: KeyedMutexes::new(),
        }
    }

    /// The write lock of a user's backups. Held only around synchronous storage work.
    fn lock(&self, user_id: &UserId) -> KeyedMutexGuard<'_, OwnedUserId> {
        self.locks.lock(&user_id.to_owned())
    }

    /// The user's current version: the newest one not deleted.
    fn current(&self, user_id: &UserId) -> Result<Option<(u64, BackupVersionRecord)>> {
        let mut rows = self.versions.scan_prefix(&user_id.to_owned(), Direction::Reverse)?;
        Ok(rows.next().transpose()?.map(|((_, number), record)| (number, record)))
    }

    /// A version that exists (deleted ones do not), or `M_NOT_FOUND`.
    fn existing(&self, user_id: &UserId, version: &str) -> Result<(u64, BackupVersionRecord)> {
        let number = parse_version(version).ok_or_else(unknown_version)?;
        let record = self.versions.get(&(user_id.to_owned(), number))?.ok_or_else(unknown_version)?;
        Ok((number, record))
    }

    /// Start a new backup version, which becomes the current one: keys may only be written
    /// to it from now on. Returns its version string.
    pub fn create_version(&self, user_id: &UserId, body: &RawJsonValue) -> Result<String> {
        let body = parse_version_body(body)?;
        let _guard = self.lock(user_id);
        let last = self.last_versions.get(&user_id.to_owned())?.unwrap_or(0);
        let number =
            last.checked_add(1).ok_or_else(|| Error::internal("backup version numbers exhausted"))?;
        let record =
            BackupVersionRecord { algorithm: body.algorithm, auth_data: body.auth_data, count: 0, etag: 0 };
        let mut batch = WriteBatch::new();
        self.last_versions.put(&mut batch, &user_id.to_owned(), &number)?;
        self.versions.put(&mut batch, &(user_id.to_owned(), number), &record)?;
        self.store.write(batch)?;
        Ok(number.to_string())
    }

    /// A version's information; `None` asks for the current version.
    pub fn version_info(&self, user_id: &UserId, version: Option<&str>) -> Result<BackupVersion> {
        let (number, record) = match version {
            Some(version) => self.existing(user_id, version)?,
            None => self.current(user_id)?.ok_or_else(|| Error::not_found("No backup found"))?,
        };
        Ok(BackupVersion {
            version: number.to_string(),
            algorithm: record.algorithm,
            auth_data: record.auth_data,
            count: record.count,
            etag: record.etag,
        })
    }

    /// Replace a version's `auth_data` (a new signature on the backup key, typically). The
    /// algorithm cannot change: keys already stored were encrypted for it.
    pub fn update_version(&self, user_id: &UserId, version: &str, body: &RawJsonValue) -> Result<()> {
        let body = parse_version_body(body)?;
        if body.version.as_deref().is_some_and(|v| v != version) {
            return Err(Error::invalid_param("Version in body does not match"));
        }
        let _guard = self.lock(user_id);
        let (number, mut record) = self.existing(user_id, version)?;
        if record.algorithm != body.algorithm {
            return Err(Error::invalid_param("Algorithm does not match"));
        }
        record.auth_data = body.auth_data;
        self.versions.insert(&(user_id.to_owned(), number), &record)?;
        Ok(())
    }

    /// Delete a version and every key in it, in one batch. Deleting a version that was
    /// already deleted succeeds, as the spec asks; one never created is `M_NOT_FOUND`.
    pub fn delete_version(&self, user_id: &UserId, version: &str) -> Result<()> {
        let number = parse_version(version).ok_or_else(unknown_version)?;
        let _guard = self.lock(user_id);
        let key = (user_id.to_owned(), number);
        if !self.versions.contains(&key)? {
            let last = self.last_versions.get(&user_id.to_owned())?.unwrap_or(0);
            return if (1..=last).contains(&number) { Ok(()) } else { Err(unknown_version()) };
        }
        let mut batch = WriteBatch::new();
        self.versions.delete(&mut batch, &key);
        self.keys.delete_prefix(&mut batch, &key)?;
        self.store.write(batch)?;
        Ok(())
    }

    /// Queue removal of every backup of a user (deactivation): versions and keys. The
    /// version counter stays, so numbers are never reused.
    pub fn remove_user_in(&self, batch: &mut WriteBatch, user_id: &UserId) -> Result<()> {
        let user = user_id.to_owned();
        self.versions.delete_prefix(batch, &user)?;
        self.keys.delete_prefix(batch, &user)?;
        Ok(())
    }

    /// Store uploaded keys in the current version. A session already backed up keeps its
    /// stored key unless the new one ranks higher; the etag moves only if something was
    /// written. Writing to an older version is `M_WRONG_ROOM_KEYS_VERSION`, naming the
    /// current one.
    pub fn add_keys(&self, user_id: &UserId, version: &str, uploads: KeysByRoom) -> Result<KeyCount> {
        // Checked before taking the lock: a malformed key rejects the whole upload.
        let mut parsed = Vec::new();
        for (room_id, sessions) in uploads {
            for (session_id, data) in sessions {
                let record = parse_key(&room_id, &session_id, data)?;
                parsed.push((room_id.clone(), session_id, record));
            }
        }

        let _guard = self.lock(user_id);
        let (number, mut version_record) = self.writable(user_id, version)?;
        let candidates: Vec<_> = parsed
            .into_iter()
            .map(|(room_id, session_id, record)| ((user_id.to_owned(), number, room_id, session_id), record))
            .collect();
        let stored = self.keys.get_many(candidates.iter().map(|(key, _)| key))?;
        let mut batch = WriteBatch::new();
        let mut changed = false;
        for ((key, new), old) in candidates.iter().zip(stored) {
            match old {
                Some(old) if new.rank() <= old.rank() => continue,
                Some(_) => {}
                None => version_record.count += 1,
            }
            self.keys.put(&mut batch, key, new)?;
            changed = true;
        }
        if changed {
            version_record.etag += 1;
            self.versions.put(&mut batch, &(user_id.to_owned(), number), &version_record)?;
            self.store.write(batch)?;
        }
        Ok(version_record.key_count())
    }

    /// The version keys may be written to: it must be the current one.
    fn writable(&self, user_id: &UserId, version: &str) -> Result<(u64, BackupVersionRecord)> {
        let Some((current, record)) = self.current(user_id)? else {
            return Err(unknown_version());
        };
        if parse_version(version) == Some(current) {
            return Ok((current, record));
        }
        // An older version that still exists is the client's mistake to correct; one that
        // does not exist is simply not there.
        self.existing(user_id, version)?;
        Err(Error::wrong_room_keys_version(current.to_string()))
    }

    /// The stored keys of a version, of all rooms or of one (a room without keys is an
    /// empty map, not an error).
    pub fn keys(&self, user_id: &UserId, version: &str, room_id: Option<&RoomId>) -> Result<KeysByRoom> {
        let (number, _) = self.existing(user_id, version)?;
        let prefix = match room_id {
            Some(room_id) => (user_id.to_owned(), number, room_id.to_owned()).to_key_bytes(),
            None => (user_id.to_owned(), number).to_key_bytes(),
        };
        let mut rooms = KeysByRoom::new();
        for row in self.keys.scan(KeyRange::prefix(prefix), Direction::Forward)? {
            let ((_, _, room_id, session_id), record) = row?;
            rooms.entry(room_id).or_default().insert(session_id, record.data);
        }
        Ok(rooms)
    }

    /// One session's stored key, or `M_NOT_FOUND`.
    pub fn session_key(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: &RoomId,
        session_id: &str,
    ) -> Result<Box<RawJsonValue>> {
        let (number, _) = self.existing(user_id, version)?;
        let key = (user_id.to_owned(), number, room_id.to_owned(), session_id.to_owned());
        let record = self.keys.get(&key)?.ok_or_else(|| Error::not_found("No room_keys found"))?;
        Ok(record.data)
    }

    /// Delete keys from a version (any version, not only the current one). The etag moves
    /// only if a key was actually there.
    pub fn delete_keys(&self, user_id: &UserId, version: &str, scope: KeyScope<'_>) -> Result<KeyCount> {
        let _guard = self.lock(user_id);
        let (number, mut record) = self.existing(user_id, version)?;
        let mut batch = WriteBatch::new();
        let deleted = match scope {
            KeyScope::All => self.keys.delete_prefix(&mut batch, &(user_id.to_owned(), number))?,
            KeyScope::Room(room_id) => {
                self.keys.delete_prefix(&mut batch, &(user_id.to_owned(), number, room_id.to_owned()))?
            }
            KeyScope::Session(room_id, session_id) => {
                let key = (user_id.to_owned(), number, room_id.to_owned(), session_id.to_owned());
                if self.keys.contains(&key)? {
                    self.keys.delete(&mut batch, &key);
                    1
                } else {
                    0
                }
            }
        };
        if deleted > 0 {
            record.count = record.count.saturating_sub(deleted);
            record.etag += 1;
            self.versions.put(&mut batch, &(user_id.to_owned(), number), &record)?;
            self.store.write(batch)?;
        }
        Ok(record.key_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(is_verified: bool, first_message_index: u64, forwarded_count: u64) -> BackupKeyRecord {
        BackupKeyRecord {
            first_message_index,
            forwarded_count,
            is_verified,
            data: serde_json::value::to_raw_value(&serde_json::json!({})).unwrap(),
        }
    }

    /// `(stored, uploaded, replaced)` per the spec's order of preference.
    #[test]
    fn better_keys_replace_stored_ones() {
        let cases = [
            (key(false, 0, 0), key(true, 5, 5), true),
            (key(true, 5, 5), key(false, 0, 0), false),
            (key(false, 5, 0), key(false, 4, 9), true),
            (key(false, 4, 0), key(false, 5, 0), false),
            (key(true, 3, 2), key(true, 3, 1), true),
            (key(true, 3, 1), key(true, 3, 2), false),
            (key(true, 3, 1), key(true, 3, 1), false),
        ];
        for (stored, uploaded, replaced) in cases {
            assert_eq!(uploaded.rank() > stored.rank(), replaced, "{stored:?} then {uploaded:?}");
        }
    }

    #[test]
    fn only_canonical_version_strings_name_a_version() {
        assert_eq!(parse_version("7"), Some(7));
        for bad in ["", "07", "+7", "-1", "7 ", "x", "18446744073709551616"] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }
}
