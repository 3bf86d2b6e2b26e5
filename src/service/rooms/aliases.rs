//! Local room aliases: creation, resolution, deletion and listing by room. Owns the
//! `room_aliases` and `aliases_by_room` tables. Aliases of other servers would need
//! federation, so they resolve to "not found".

use std::sync::{Arc, Mutex};

use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, UserId};

use crate::{
    Error, Result,
    storage::{
        Direction, KvStore, Table, WriteBatch,
        tables::{ALIASES_BY_ROOM, AliasRecord, ROOM_ALIASES},
    },
};

pub struct Aliases {
    server_name: OwnedServerName,
    aliases: Table<OwnedRoomAliasId, AliasRecord>,
    by_room: Table<(OwnedRoomId, OwnedRoomAliasId), ()>,
    store: Arc<dyn KvStore>,
    /// Serializes check-then-write of alias rows.
    writes: Mutex<()>,
}

impl Aliases {
    pub fn new(store: &Arc<dyn KvStore>, server_name: OwnedServerName) -> Self {
        Self {
            server_name,
            aliases: ROOM_ALIASES.open(store),
            by_room: ALIASES_BY_ROOM.open(store),
            store: Arc::clone(store),
            writes: Mutex::new(()),
        }
    }

    /// Refuse aliases of other servers.
    pub fn ensure_local(&self, alias: &RoomAliasId) -> Result<()> {
        if alias.server_name() != self.server_name {
            return Err(Error::invalid_param("Room alias must be on this server"));
        }
        Ok(())
    }

    /// Bind `alias` to `room_id`; `M_ROOM_IN_USE`-style conflict if it is taken.
    pub fn create(&self, alias: &RoomAliasId, room_id: &RoomId, creator: &UserId) -> Result<()> {
        self.ensure_local(alias)?;
        let _guard = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        if self.aliases.contains(&alias.to_owned())? {
            return Err(Error::Conflict("Room alias already exists".to_owned()));
        }
        let mut batch = WriteBatch::new();
        let record = AliasRecord { room_id: room_id.to_owned(), creator: creator.to_owned() };
        self.aliases.put(&mut batch, &alias.to_owned(), &record)?;
        self.by_room.put(&mut batch, &(room_id.to_owned(), alias.to_owned()), &())?;
        Ok(self.store.write(batch)?)
    }

    /// The alias's record, if it is a local alias that exists.
    pub fn get(&self, alias: &RoomAliasId) -> Result<Option<AliasRecord>> {
        if alias.server_name() != self.server_name {
            return Ok(None);
        }
        Ok(self.aliases.get(&alias.to_owned())?)
    }

    /// The room an alias names, or `M_NOT_FOUND`.
    pub fn resolve(&self, alias: &RoomAliasId) -> Result<OwnedRoomId> {
        self.get(alias)?.map(|r| r.room_id).ok_or_else(|| self.missing(alias))
    }

    /// The error for an alias that names no room here: another server's alias says so.
    pub fn missing(&self, alias: &RoomAliasId) -> Error {
        if alias.server_name() == self.server_name {
            Error::not_found("Room alias not found")
        } else {
            Error::on_another_server(alias)
        }
    }

    /// Remove an alias (the caller checked permission).
    pub fn delete(&self, alias: &RoomAliasId) -> Result<()> {
        let _guard = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let Some(record) = self.aliases.get(&alias.to_owned())? else {
            return Err(Error::not_found("Room alias not found"));
        };
        let mut batch = WriteBatch::new();
        self.aliases.delete(&mut batch, &alias.to_owned());
        self.by_room.delete(&mut batch, &(record.room_id, alias.to_owned()));
        Ok(self.store.write(batch)?)
    }

    /// Local aliases of a room.
    pub fn of_room(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        self.by_room.scan_prefix(&room_id.to_owned(), Direction::Forward)?.map(|row| Ok(row?.0.1)).collect()
    }

    /// Remove every local alias of a room; answers them.
    pub fn delete_all(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        let _guard = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let aliases = self.of_room(room_id)?;
        let mut batch = WriteBatch::new();
        for alias in &aliases {
            self.aliases.delete(&mut batch, alias);
            self.by_room.delete(&mut batch, &(room_id.to_owned(), alias.clone()));
        }
        self.store.write(batch)?;
        Ok(aliases)
    }

    /// Point every local alias of `from` at `to` (room upgrades).
    pub fn move_all(&self, from: &RoomId, to: &RoomId) -> Result<()> {
        let _guard = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let mut batch = WriteBatch::new();
        for alias in self.of_room(from)? {
            let Some(mut record) = self.aliases.get(&alias)? else { continue };
            record.room_id = to.to_owned();
            self.aliases.put(&mut batch, &alias, &record)?;
            self.by_room.delete(&mut batch, &(from.to_owned(), alias.clone()));
            self.by_room.put(&mut batch, &(to.to_owned(), alias), &())?;
        }
        Ok(self.store.write(batch)?)
    }
}
