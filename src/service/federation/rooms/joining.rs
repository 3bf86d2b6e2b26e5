//! Joining a room this server does not have, through a server that has it.
//!
//! `make_join`, sign, `send_join` asking the resident to leave the members out
//! (`omit_members`, `membership::handshake`). Then:
//! - a resident that answered with the whole state (it does not leave members out): the
//!   state and auth chain are checked, stored as outliers, and the room is seated with
//!   `Timeline::accept_first_event` before the join is answered;
//! - a resident that left the members out: the join is answered as soon as the resident has
//!   accepted it, and the room is seated after that. The state before the join
//!   (`/state?event_id=` the join, with its auth chain) is fetched from that server, or
//!   from another server in the room that it named. It is checked, stored and seated as
//!   above. The room's lock is held throughout, so meanwhile other servers' events, the
//!   joiner's requests (`Timeline::settled_for`, in the client API's extractor) and the
//!   EDUs of inbound transactions wait for the room rather than find it missing.
//!
//! With several processes (`multi_process`) the join is answered once the room is seated:
//! the joiner's next request may reach another process, which knows nothing of the seating.
//!
//! Until the room is seated the join is kept in `pending_joins`. A start-up takes up the
//! rows left there. If no server gives the state, the join stays there: the user joining
//! again tries once more, and leaving goes through the join's servers (`make_leave`,
//! `send_leave`) and drops it.

use std::{sync::Arc, time::Instant};

use ruma::{
    OwnedEventId, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId, events::StateEventType,
};
use serde_json::Value as JsonValue;

use super::{Handshake, Handshaken, RoomFederation, encode};
use crate::{
    Error, Result,
    matrix::{
        federation::{format::parse_pdu, verify::ServerKeys as VerifyKeys},
        pdu::Pdu,
    },
    service::rooms::{
        state::StateMap,
        timeline::{RoomLock, rules_of},
    },
    storage::{
        Direction,
        kv::KeyRange,
        tables::{EventStatus, PendingJoinRecord},
    },
};

/// What a join through one server came to.
enum Joined {
    /// The room is seated with the join.
    Seated(OwnedEventId),
    /// The resident accepted the join; the room is still to be seated.
    Pending(OwnedEventId, PendingJoinRecord),
}

impl RoomFederation {
    /// Join `user_id` to a room this server does not have, through the first of `via` (or
    /// the server the room ID names) that lets it: `make_join`, sign, `send_join`, then the
    /// room seated with the state before the join, now or (members left out) just after the
    /// answer. `content` is the member event's content (membership, display name ...).
    pub async fn join_remote(
        self: &Arc<Self>,
        user_id: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        content: &JsonValue,
    ) -> Result<OwnedEventId> {
        // An invite's (or a knock's) server first: it has the room and let the user in.
        let invited_by = self
            .remote_invites
            .outstanding(user_id, room_id)?
            .and_then(|invite| OwnedServerName::try_from(invite.via).ok());
        let servers = self.servers_to_ask(room_id, invited_by, via)?;
        // Held until the room is seated: events the resident server sends meanwhile wait.
        let lock = self.timeline.lock_room(room_id).await;
        if self.states.room(room_id)?.is_some() {
            return Err(Error::invalid_param("This server has joined the room meanwhile; join again"));
        }
        // The user's join was accepted before but the room never seated: seated now.
        if let Some(pending) = self.pending_join(user_id, room_id)? {
            let join = pending_pdu(&pending)?;
            self.seat_pending(&lock, &pending).await?;
            return Ok(join.event_id);
        }
        let mut last = None;
        for server in &servers {
            match self.join_through(&lock, server, user_id, content).await {
                Ok(Joined::Seated(event_id)) => {
                    // The room's own membership rows speak for the user from now on.
                    self.remote_invites.remove(user_id, room_id)?;
                    return Ok(event_id);
                }
                Ok(Joined::Pending(event_id, pending)) if self.seat_before_answer => {
                    self.seat_pending(&lock, &pending).await?;
                    return Ok(event_id);
                }
                Ok(Joined::Pending(event_id, pending)) => {
                    self.seat_later(lock, pending);
                    return Ok(event_id);
                }
                Err(e) => {
                    tracing::info!(%server, %room_id, error = %e, "joining through a server failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::not_found("No server could be asked")))
    }

    /// Whether `user_id`'s join of `room_id` was accepted by another server and the room is
    /// not seated here (its state could not be had).
    pub fn has_pending_join(&self, user_id: &UserId, room_id: &RoomId) -> Result<bool> {
        Ok(self.pending_join(user_id, room_id)?.is_some())
    }

    /// `user_id`'s pending join of `room_id`, if it has one.
    fn pending_join(&self, user_id: &UserId, room_id: &RoomId) -> Result<Option<PendingJoinRecord>> {
        Ok(self.pending_joins.get(&room_id.to_owned())?.filter(|pending| pending.user_id == user_id))
    }

    /// Leave a room whose join was accepted but never seated: `make_leave`, sign,
    /// `send_leave` through the join's servers in turn; the pending join is then dropped.
    pub async fn leave_pending_join(&self, user_id: &UserId, room_id: &RoomId) -> Result<OwnedEventId> {
        let _lock = self.timeline.lock_room(room_id).await;
        let Some(pending) = self.pending_join(user_id, room_id)? else {
            return Err(Error::forbidden(format!("{user_id} is not in room {room_id}")));
        };
        if self.states.room(room_id)?.is_some() {
            return Err(Error::invalid_param("The room was seated meanwhile; leave again"));
        }
        let mut last = None;
        for server in servers_of(&pending) {
            match self.leave_through(&server, user_id, room_id).await {
                Ok((event_id, _)) => {
                    self.pending_joins.remove(&room_id.to_owned())?;
                    return Ok(event_id);
                }
                Err(e) => {
                    tracing::info!(%server, %room_id, error = %e, "leaving through a server failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Upstream("No server of the room was named".to_owned())))
    }

    /// Take up the joins left in `pending_joins` by a server that stopped before it seated
    /// their rooms, each in a task of its own.
    pub fn resume_joins(self: &Arc<Self>) -> Result<()> {
        let mut rows = Vec::new();
        for row in self.pending_joins.scan(KeyRange::all(), Direction::Forward)? {
            rows.push(row?);
        }
        for (room_id, pending) in rows {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let lock = this.timeline.lock_room(&room_id).await;
                this.seat_later(lock, pending);
            });
        }
        Ok(())
    }

    /// Seat the room of an accepted join in a task that holds the room's lock until done;
    /// reads of the room wait meanwhile.
    fn seat_later(self: &Arc<Self>, lock: RoomLock, pending: PendingJoinRecord) {
        self.timeline.set_seating(&lock, Some(&pending.user_id));
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = this.seat_pending(&lock, &pending).await {
                tracing::warn!(
                    room_id = %lock.room_id(),
                    user_id = %pending.user_id,
                    error = %e,
                    "a joined room could not be seated; joining again tries once more"
                );
            }
            this.timeline.set_seating(&lock, None);
        });
    }

    /// The servers to ask for a room this server does not have: `first` (an invite's
    /// server), then `via`, then the server the room ID names; this one left out.
    pub(super) fn servers_to_ask(
        &self,
        room_id: &RoomId,
        first: Option<OwnedServerName>,
        via: &[OwnedServerName],
    ) -> Result<Vec<OwnedServerName>> {
        let mut servers: Vec<OwnedServerName> = Vec::new();
        for server in
            first.into_iter().chain(via.iter().cloned()).chain(room_id.server_name().map(ToOwned::to_owned))
        {
            if server != self.server_name && !servers.contains(&server) {
                servers.push(server);
            }
        }
        if servers.is_empty() {
            return Err(Error::not_found(format!(
                "Room {room_id} is not known here and no server to reach it through was given (`via`)"
            )));
        }
        Ok(servers)
    }

    async fn join_through(
        &self,
        lock: &RoomLock,
        server: &ServerName,
        user_id: &UserId,
        content: &JsonValue,
    ) -> Result<Joined> {
        let room_id = lock.room_id();
        let Handshaken { version, rules, wire, answer, sent } =
            self.handshake(Handshake::Join, server, user_id, room_id, Some(content)).await?;
        let event_id = wire.event_id.clone();
        let mut keys = VerifyKeys::new();
        // The resident server's copy when it signed it too (restricted joins), else ours.
        let (join, join_json) = match answer.get("event") {
            Some(event) if event.is_object() => {
                let signed =
                    self.checked_pdu(&event.to_string(), &rules, &mut keys).await.map_err(|(_, why)| {
                        Error::Upstream(format!("{server} answered a join that does not check: {why}"))
                    })?;
                if signed.event_id != event_id {
                    return Err(Error::Upstream(format!("{server} answered another join event")));
                }
                (signed, event)
            }
            _ => (wire.into_pdu(&rules).map_err(|e| Error::internal(e.to_string()))?, &sent),
        };
        if answer.get("members_omitted").and_then(JsonValue::as_bool) == Some(true) {
            let mut servers = vec![server.to_string()];
            let named = answer.get("servers_in_room").and_then(JsonValue::as_array);
            for name in named.into_iter().flatten().filter_map(JsonValue::as_str) {
                if name != self.server_name.as_str() && !servers.iter().any(|s| s == name) {
                    servers.push(name.to_owned());
                }
            }
            let event =
                serde_json::value::to_raw_value(join_json).map_err(|e| Error::internal(e.to_string()))?;
            let pending =
                PendingJoinRecord { user_id: user_id.to_owned(), room_version: version, event, servers };
            self.pending_joins.insert(&room_id.to_owned(), &pending)?;
            return Ok(Joined::Pending(event_id, pending));
        }
        let list = |key: &str| answer.get(key).and_then(JsonValue::as_array).cloned().unwrap_or_default();
        self.seat(lock, &version, join, &list("state"), &list("auth_chain"), &mut keys).await?;
        Ok(Joined::Seated(event_id))
    }

    /// Seat the room of an accepted join with the state before it, fetched from the first
    /// of the join's servers that gives it; the join is then no longer pending.
    async fn seat_pending(&self, lock: &RoomLock, pending: &PendingJoinRecord) -> Result<()> {
        let room_id = lock.room_id().to_owned();
        if self.states.room(&room_id)?.is_some() {
            // Seated by another process of this server, or by the user's next join.
            return self.pending_joins.remove(&room_id).map_err(Into::into);
        }
        let join = pending_pdu(pending)?;
        let mut keys = VerifyKeys::new();
        let mut last = None;
        let path = format!(
            "/_matrix/federation/v1/state/{}?event_id={}",
            encode(room_id.as_str()),
            encode(join.event_id.as_str())
        );
        for server in servers_of(pending) {
            let asked = Instant::now();
            let seated = match self.client.get_json(&server, &path).await {
                Ok(answer) => {
                    let list = |key: &str| {
                        answer.get(key).and_then(JsonValue::as_array).cloned().unwrap_or_default()
                    };
                    self.seat(
                        lock,
                        &pending.room_version,
                        join.clone(),
                        &list("pdus"),
                        &list("auth_chain"),
                        &mut keys,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            match seated {
                Ok(()) => {
                    tracing::info!(
                        %room_id, %server, ms = asked.elapsed().as_millis(),
                        "a room joined through another server is seated"
                    );
                    self.pending_joins.remove(&room_id)?;
                    self.remote_invites.remove(&pending.user_id, &room_id)?;
                    return Ok(());
                }
                Err(e) => {
                    tracing::info!(%server, %room_id, error = %e, "the state of a joined room was not had");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Upstream("No server of the room was named".to_owned())))
    }

    /// Seat a room with its first event, the join: `state` (the state before the join, as
    /// PDUs) and `chain` (its auth chain) checked and stored as outliers, each after its
    /// auth events; events that do not check are left out, and the join must pass the auth
    /// rules against what is left.
    async fn seat(
        &self,
        lock: &RoomLock,
        version: &RoomVersionId,
        join: Pdu,
        state: &[JsonValue],
        chain: &[JsonValue],
        keys: &mut VerifyKeys,
    ) -> Result<()> {
        let room_id = lock.room_id();
        let rules = rules_of(version)?;
        let started = Instant::now();
        let jsons: Vec<String> = state.iter().chain(chain).map(JsonValue::to_string).collect();
        let mut received = std::collections::HashMap::new();
        // The state's entries, taken before the events go to the store.
        let mut state_entries = Vec::new();
        let count = jsons.len();
        for (i, checked) in self.checked_pdus(jsons, &rules, keys).await.into_iter().enumerate() {
            match checked {
                Ok(pdu) if pdu.room_id == room_id => {
                    if i < state.len()
                        && let Some(key) = &pdu.state_key
                    {
                        let kind: StateEventType = pdu.kind.to_string().into();
                        state_entries.push(((kind, key.clone()), pdu.event_id.clone()));
                    }
                    received.insert(pdu.event_id.clone(), pdu);
                }
                Ok(_) => {}
                Err((id, why)) => tracing::info!(?id, %why, "an event of the room's state was dropped"),
            }
        }
        let checked = started.elapsed();
        self.store_outliers(lock, received)?;
        let mut state_before = StateMap::new();
        for (key, id) in state_entries {
            if self.events.get_any(&id)?.is_some_and(|e| e.status != EventStatus::Rejected) {
                state_before.insert(key, id);
            }
        }
        self.timeline.accept_first_event(lock, version, join, &state_before).await?;
        tracing::debug!(
            %room_id,
            events = count,
            checked_ms = checked.as_millis(),
            stored_ms = (started.elapsed() - checked).as_millis(),
            "a room's state checked and stored"
        );
        Ok(())
    }
}

/// The servers a pending join names to reach the room through, the one that took it first.
fn servers_of(pending: &PendingJoinRecord) -> impl Iterator<Item = OwnedServerName> + '_ {
    pending.servers.iter().filter_map(|name| OwnedServerName::try_from(name.as_str()).ok())
}

/// The join event of a pending join, as accepted (its signatures were checked, or made
/// here, when it was).
fn pending_pdu(pending: &PendingJoinRecord) -> Result<Pdu> {
    let rules = rules_of(&pending.room_version)?;
    parse_pdu(pending.event.get(), &rules)
        .map_err(|e| Error::internal(format!("pending join: {e}")))?
        .into_pdu(&rules)
        .map_err(|e| Error::internal(format!("pending join: {e}")))
}
