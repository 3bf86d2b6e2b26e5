//! The room engine for an event graph: an event whose `prev_events` need not be the room's
//! forward extremities (an event on a fork, as other servers send them).
//!
//! Two steps, under the room's lock:
//! - *persist the event*: its state before is the resolution of the states after its
//!   `prev_events` (`matrix::state_resolution`), stored as a state group; it is checked
//!   against its auth events and that state (failing: stored as rejected), then against the
//!   room's current state (failing: stored as soft-failed, not part of the head);
//! - *advance the room's head*: the forward extremities lose the event's `prev_events` and
//!   gain the event; the new current state is the resolution of the extremities' states,
//!   applied to the current state rows, the membership indexes and the caches as a delta of
//!   puts and deletes, so a member event on a losing fork changes nobody's membership. The
//!   event is live: push rules are evaluated for it against the state before it, and a
//!   redaction takes effect on its target (when this server has it) by the power levels
//!   there.
//!
//! Local sends keep their own path (`Timeline::append`): they always cite every extremity,
//! so their state before is the current state, which is by construction the resolution of
//! the extremities' states.
//!
//! Besides the graph's own events, the engine stores:
//! - *outliers* ([`Timeline::store_outlier`]): events known only as another event's auth
//!   event or as part of a state another server sent, checked against their auth events
//!   only; no stream position, no place in the timeline or in any state of their own. One
//!   accepted later (as an ancestor fetched after all) becomes a normal event in place;
//! - *backfilled* events ([`Timeline::backfill_event`]): history older than anything the room
//!   has here, fetched backwards from another server with the state before each, placed
//!   below the room's first stream position (see `events`);
//! - a room's first event when another server runs the room
//!   ([`Timeline::accept_first_event`], the join that `send_join` answers with the state).
//!
//! State resolution reads the forks' auth chains from the `AuthChains` index rather than
//! walking `auth_events` through the stored events each time.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedUserId, RoomId, RoomVersionId, UserId,
    api::error::ErrorKind,
    events::{
        StateEventType, TimelineEventType,
        room::{
            join_rules::{AllowRule, JoinRule, RoomJoinRulesEventContent},
            member::MembershipState,
        },
    },
    room_version_rules::RoomVersionRules,
};
use serde_json::Value as JsonValue;

use super::{RoomLock, Timeline, rules_of, uint};
use crate::{
    Error, Result,
    matrix::{
        auth,
        pdu::{self, EventTemplate, GraphPosition, MAX_PREV_EVENTS, Pdu},
        room_version, state_resolution,
    },
    service::{
        push::Evaluation,
        rooms::{
            events::StoredEvent,
            state::{EMPTY_GROUP, StateKey, StateMap},
        },
        stream::{Change, Stale},
    },
    storage::{
        WriteBatch,
        tables::{EventStatus, MembershipRecord, RoomRecord},
    },
};

/// Events loaded for one resolution, by ID (the forks' state events and their auth chains).
type Loaded = HashMap<OwnedEventId, Arc<StoredEvent>>;

/// What happened to an event handed to [`Timeline::accept_event`].
#[derive(Debug)]
pub struct Outcome {
    pub status: EventStatus,
    pub event: Arc<StoredEvent>,
    /// For a rejected or soft-failed event, the rule it failed.
    pub reason: Option<String>,
}

impl Timeline {
    /// Build and sign an event of a local user on the room graph at `prev_events` rather than
    /// at the forward extremities, its auth events picked from the resolved state there.
    /// Hand it to [`Self::accept_event`]. This is how tests and tools make a fork; clients
    /// never choose `prev_events`.
    pub fn build_at(
        &self,
        lock: &RoomLock,
        sender: &UserId,
        template: &EventTemplate,
        prev_events: &[OwnedEventId],
        ts: MilliSecondsSinceUnixEpoch,
    ) -> Result<Pdu> {
        let room_id = lock.room_id();
        let room = self.states.room(room_id)?.ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = rules_of(&room.version)?;
        if prev_events.is_empty() || prev_events.len() > MAX_PREV_EVENTS {
            return Err(Error::invalid_param("An event needs between 1 and 20 prev_events"));
        }
        let prevs = self.known_prevs(prev_events)?;
        let (_, state) = self.state_before_prevs(&rules, &prevs, None)?;
        let depth = prevs.iter().map(|p| u64::from(p.pdu.depth)).max().unwrap_or(0).saturating_add(1);
        let auth_keys = super::checked_content(&rules, sender, template)?;
        let auth_events =
            auth::select_auth_events(&auth_keys, |kind, key| state.get(&(kind.clone(), key.to_owned())));
        let picks_id = pdu::origin_picks_event_id(&rules);
        let reference_hashes = if picks_id {
            let loaded: HashMap<OwnedEventId, Arc<StoredEvent>> = self
                .events
                .get_many(prev_events.iter().chain(&auth_events))?
                .into_iter()
                .map(|e| (e.pdu.event_id.clone(), e))
                .collect();
            self.reference_hashes(&rules, prev_events.iter().chain(&auth_events), &loaded)?
        } else {
            Default::default()
        };
        pdu::build_pdu(
            &rules,
            self.keys.server_name(),
            self.keys.key_pair(),
            sender,
            ts,
            template,
            GraphPosition {
                room_id: Some(room_id),
                event_id: self.new_event_id(&rules),
                prev_events: prev_events.to_vec(),
                auth_events,
                reference_hashes,
                depth: uint(depth),
            },
        )
        .map_err(super::build_error)
    }

    /// Who authorises `user_id`'s join to a restricted room (`restricted` or
    /// `knock_restricted`, in a room version that has them) when they are neither joined nor
    /// invited: the local member with the highest power level who may invite, put in the
    /// join's `join_authorised_via_users_server`. `None` for other rooms and members. As
    /// Synapse: `M_FORBIDDEN` when the user is joined to none of the allowed rooms this
    /// server knows; for another server's user, when this server is not in every allowed room
    /// and so cannot tell, `M_UNABLE_TO_AUTHORISE_JOIN`; `M_UNABLE_TO_GRANT_JOIN` when no
    /// local member may invite (another server may do better).
    pub fn join_authoriser(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<OwnedUserId>> {
        if matches!(
            self.members.membership(room_id, user_id)?,
            Some(MembershipState::Join | MembershipState::Invite)
        ) {
            return Ok(None);
        }
        let Some(room) = self.states.room(room_id)? else { return Ok(None) };
        let rules = rules_of(&room.version)?.authorization;
        let Some(event) = self.state_event(room_id, &StateEventType::RoomJoinRules, "")? else {
            return Ok(None);
        };
        let Ok(content) = event.pdu.content_as::<RoomJoinRulesEventContent>() else { return Ok(None) };
        let allow = match &content.join_rule {
            JoinRule::Restricted(r) if rules.restricted_join_rule => &r.allow,
            JoinRule::KnockRestricted(r) if rules.knock_restricted_join_rule => &r.allow,
            _ => return Ok(None),
        };
        let local = user_id.server_name() == self.keys.server_name();
        let mut unknown_room = false;
        let mut allowed = false;
        for rule in allow {
            let AllowRule::RoomMembership(membership) = rule else { continue };
            if self.members.is_joined(&membership.room_id, user_id)? {
                allowed = true;
                break;
            }
            let here = self
                .members
                .members_with(&membership.room_id, &MembershipState::Join)?
                .iter()
                .any(|member| member.server_name() == self.keys.server_name());
            unknown_room |= !here;
        }
        if !allowed && unknown_room && !local {
            return Err(Error::new(
                ErrorKind::UnableToAuthorizeJoin,
                format!("This server cannot tell whether {user_id} is in the rooms the join rule allows"),
            ));
        }
        if !allowed {
            return Err(Error::forbidden(
                "You do not belong to any of the rooms this room's join rule allows",
            ));
        }
        let power = self.power_levels(room_id)?;
        let authoriser = self
            .members
            .members_with(room_id, &MembershipState::Join)?
            .into_iter()
            .filter(|member| member.server_name() == self.keys.server_name() && power.user_can_invite(member))
            .max_by_key(|member| power.for_user(member))
            .ok_or_else(|| {
                Error::new(ErrorKind::UnableToGrantJoin, "No member of this server can authorise the join")
            })?;
        Ok(Some(authoriser))
    }

    /// The template of a member event another server's user asks this server to make
    /// (`make_join`, `make_knock`, `make_leave`): the event built at the room's forward extremities with
    /// its auth events picked from the current state, checked against the auth rules there
    /// (so a user who may not join hears why now), and answered without hashes and
    /// signatures, for the user's server to sign and send back. Answers the room's version.
    pub fn member_template(
        &self,
        lock: &RoomLock,
        sender: &UserId,
        template: &EventTemplate,
    ) -> Result<(RoomVersionId, ruma::CanonicalJsonObject)> {
        let (version, pdu) = self.build_checked(lock, sender, template)?;
        let rules = rules_of(&version)?;
        let mut object = pdu.to_federation_object(&rules).map_err(Error::internal)?;
        object.remove("hashes");
        object.remove("signatures");
        Ok((version, object))
    }

    /// An event of `sender` built and signed by this server at the room's forward
    /// extremities, checked against the auth rules and the current state, but not stored:
    /// an invite of another server's user goes to that server to be co-signed before it is
    /// handed to [`Self::accept_event`]. Answers the room's version with it.
    pub fn build_checked(
        &self,
        lock: &RoomLock,
        sender: &UserId,
        template: &EventTemplate,
    ) -> Result<(RoomVersionId, Pdu)> {
        let room_id = lock.room_id();
        let room = self.states.room(room_id)?.ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = rules_of(&room.version)?;
        let mut prevs = room.forward_extremities.clone();
        prevs.truncate(MAX_PREV_EVENTS);
        let pdu = self.build_at(lock, sender, template, &prevs, self.now())?;
        let current = self.states.state_of_group(room.state_group)?;
        let mut loaded = self.auth_events_of(&rules, &pdu)?;
        self.load_state_for_auth(&rules, &pdu, &current, &mut loaded)?;
        auth::check_event(
            &rules.authorization,
            &pdu,
            |id| loaded.get(id).map(|e| &e.pdu),
            |kind, key| {
                current.get(&(kind.clone(), key.to_owned())).and_then(|id| loaded.get(id)).map(|e| &e.pdu)
            },
        )
        .map_err(|reason| Error::forbidden(format!("The room's rules refuse it: {reason}")))?;
        Ok((room.version, pdu))
    }

    /// Persist an event of the room's graph and advance the room's head (see the module's
    /// documentation). The event's `prev_events` must all be stored already (missing
    /// ancestors are fetched before). An event stored before is answered as it was.
    pub async fn accept_event(&self, lock: &RoomLock, pdu: Pdu) -> Result<Outcome> {
        self.accept_event_with(lock, pdu, None).await
    }

    /// As [`Self::accept_event`], for an event some of whose `prev_events` are not in the
    /// graph here (a gap in the history that could not be fetched): `gap_states` holds the
    /// state after each of those, as another server has it (every event named stored, as
    /// outliers or otherwise). The state before the event is the resolution of those and of
    /// the states after its prevs that are here. The missing prevs stay out of the graph,
    /// so the room's other forward extremities stay until an event cites them.
    pub async fn accept_event_across_gap(
        &self,
        lock: &RoomLock,
        pdu: Pdu,
        gap_states: &[StateMap],
    ) -> Result<Outcome> {
        self.accept_event_with(lock, pdu, Some(gap_states)).await
    }

    async fn accept_event_with(
        &self,
        lock: &RoomLock,
        pdu: Pdu,
        gap_states: Option<&[StateMap]>,
    ) -> Result<Outcome> {
        let (room, rules) = match self.graph_entry(lock, &pdu)? {
            Entry::Known(outcome) => return Ok(outcome),
            Entry::New(room, rules) => (room, rules),
        };
        if pdu.kind == TimelineEventType::RoomCreate || pdu.prev_events.is_empty() {
            return Err(Error::invalid_param("The room already has its create event"));
        }
        let mut batch = WriteBatch::new();
        let (before_group, before) = match gap_states {
            None => {
                let prevs = self.known_prevs(&pdu.prev_events)?;
                self.state_before_prevs(&rules, &prevs, Some(&mut batch))?
            }
            Some(gap_states) => self.state_across_gap(&rules, &room, &pdu, gap_states, &mut batch)?,
        };

        // The auth events the event cites (outliers too), and the events of the state before it.
        let mut loaded = self.auth_events_of(&rules, &pdu)?;
        self.load_state_for_auth(&rules, &pdu, &before, &mut loaded)?;
        let checked = auth::check_event(
            &rules.authorization,
            &pdu,
            |id| loaded.get(id).map(|e| &e.pdu),
            |kind, key| {
                before.get(&(kind.clone(), key.to_owned())).and_then(|id| loaded.get(id)).map(|e| &e.pdu)
            },
        );
        if let Err(reason) = checked {
            return self.store_unlisted(batch, pdu, before_group, EventStatus::Rejected, reason);
        }
        let current = self.states.state_of_group(room.state_group)?;
        self.load_state_for_auth(&rules, &pdu, &current, &mut loaded)?;
        let soft =
            ruma::state_res::check_state_dependent_auth_rules(&rules.authorization, &pdu, |kind, key| {
                current.get(&(kind.clone(), key.to_owned())).and_then(|id| loaded.get(id)).map(|e| &e.pdu)
            });
        if let Err(reason) = soft {
            return self.store_unlisted(batch, pdu, before_group, EventStatus::SoftFailed, reason);
        }
        let pending = self.advance(lock, &rules, room, batch, pdu, before_group)?;
        let event = self.finish(pending).await?;
        Ok(Outcome { status: EventStatus::Accepted, event, reason: None })
    }

    /// Store an event as an outlier: an event this server needs as another event's auth event,
    /// or as part of a room state another server sent (`/state`, `send_join`), without its
    /// place in the graph. It is checked against its auth events alone (the spec's checks on
    /// receipt up to the fourth), and stored rejected when it fails them; it takes no stream
    /// position and no place in the timeline, changes no state, and is not announced. Its auth
    /// events must be stored first (an auth chain is stored oldest first). An event stored
    /// before is answered as it was.
    pub fn store_outlier(&self, lock: &RoomLock, pdu: Pdu) -> Result<Outcome> {
        self.store_outlier_with(lock, pdu, true)
    }

    /// Store events received together as a room's state and auth chain (`send_join`,
    /// `/state`, a backfilled event's state) as outliers, each after its auth events; an event
    /// whose auth events never arrive is left out, and so is one that cannot be stored (both
    /// logged). They are written without waiting for stable storage one by one, and made
    /// durable together before this returns: a join brings a thousand member events, and an
    /// fsync each was most of its time.
    pub fn store_outliers(&self, lock: &RoomLock, mut pending: HashMap<OwnedEventId, Pdu>) -> Result<()> {
        // The create event first: from v12 every other event's rules read it without citing it.
        let creates: Vec<OwnedEventId> = pending
            .values()
            .filter(|p| p.kind == TimelineEventType::RoomCreate)
            .map(|p| p.event_id.clone())
            .collect();
        let store = |id: &OwnedEventId, pdu: Pdu| {
            if let Err(e) = self.store_outlier_with(lock, pdu, false) {
                tracing::info!(event_id = %id, error = %e, "an event of the room's state was not stored");
            }
        };
        for id in creates {
            if let Some(pdu) = pending.remove(&id) {
                store(&id, pdu);
            }
        }
        loop {
            let ready: Vec<OwnedEventId> = pending
                .values()
                .filter(|pdu| {
                    pdu.auth_events.iter().all(|id| self.events.get_any(id).is_ok_and(|e| e.is_some()))
                })
                .map(|pdu| pdu.event_id.clone())
                .collect();
            if ready.is_empty() {
                break;
            }
            for id in ready {
                if let Some(pdu) = pending.remove(&id) {
                    store(&id, pdu);
                }
            }
        }
        if !pending.is_empty() {
            tracing::info!(
                count = pending.len(),
                "events of the room's state lack auth events and were left out"
            );
        }
        self.store.sync()?;
        Ok(())
    }

    fn store_outlier_with(&self, lock: &RoomLock, pdu: Pdu, synced: bool) -> Result<Outcome> {
        of_locked_room(lock, &pdu)?;
        if let Some(known) = self.events.get_any(&pdu.event_id)? {
            return Ok(Outcome { status: known.status, event: known, reason: None });
        }
        let rules = self.rules_for(&pdu)?;
        let loaded = self.auth_events_of(&rules, &pdu)?;
        if let Some(missing) =
            pdu.auth_events.iter().find(|id| !self.events.get_any(id).is_ok_and(|e| e.is_some()))
        {
            return Err(Error::not_found(format!("Unknown auth event {missing}")));
        }
        let mut batch = WriteBatch::new();
        let (status, reason) = match check_against_auth_events(&rules, &pdu, &loaded) {
            Ok(()) => (EventStatus::Outlier, None),
            Err(reason) => (EventStatus::Rejected, Some(reason)),
        };
        let chain = self.auth_chains.put_in(&mut batch, &pdu)?;
        let event = Arc::new(StoredEvent {
            pdu,
            stream: 0,
            state_before: EMPTY_GROUP,
            txn: None,
            delay_id: None,
            status,
            state_after: None,
            head_before: None,
            backfill: None,
        });
        self.events.put_unlisted_in(&mut batch, &event)?;
        match synced {
            true => self.store.write(batch)?,
            false => self.store.write_buffered(batch)?,
        }
        self.events.committed_unlisted(Arc::clone(&event));
        self.auth_chains.committed(&event.pdu.event_id, chain);
        if let Some(reason) = &reason {
            tracing::info!(event_id = %event.pdu.event_id, %reason, "outlier rejected");
        }
        Ok(Outcome { status, event, reason })
    }

    /// The auth chain of `event_ids`: every event reachable from them through `auth_events`,
    /// recursively (themselves not included unless one authorizes another), as `/event_auth`
    /// and `/state_ids` answer it. Events this server does not have end the chain there.
    pub fn auth_chain(&self, event_ids: &[OwnedEventId]) -> Result<Vec<OwnedEventId>> {
        let mut ids: Vec<OwnedEventId> = self.auth_chains.chain_of_all(event_ids)?.into_iter().collect();
        ids.sort();
        Ok(ids)
    }

    /// The room's first event here when another server runs the room: the join (or
    /// knock) that `send_join` answers, with `state_before`, the room state before it as that
    /// server sent it (event IDs, stored as outliers first). The event is checked against
    /// its auth events and that state; accepted, it takes a stream position, and the room is
    /// created here with the state after it as current state (membership indexes included)
    /// and the event as its forward extremity. A room this server already has is refused.
    pub async fn accept_first_event(
        &self,
        lock: &RoomLock,
        version: &RoomVersionId,
        pdu: Pdu,
        state_before: &StateMap,
    ) -> Result<Outcome> {
        of_locked_room(lock, &pdu)?;
        let room_id = lock.room_id();
        if self.states.room(room_id)?.is_some() {
            return Err(Error::invalid_param("This server already has the room"));
        }
        let rules = rules_of(version)?;
        let mut batch = WriteBatch::new();
        let (before_group, loaded) = self.given_state_in(&mut batch, &rules, &pdu, None, state_before)?;
        let checked = auth::check_event(
            &rules.authorization,
            &pdu,
            |id| loaded.get(id).map(|e| &e.pdu),
            |kind, key| {
                state_before
                    .get(&(kind.clone(), key.to_owned()))
                    .and_then(|id| loaded.get(id))
                    .map(|e| &e.pdu)
            },
        );
        if let Err(reason) = checked {
            return Err(Error::forbidden(format!("The event is not authorized: {reason}")));
        }
        // An empty room (no state, no extremities) that the event's state then fills.
        let room = RoomRecord {
            version: version.clone(),
            forward_extremities: Vec::new(),
            depth: 0,
            state_group: EMPTY_GROUP,
        };
        let pending = self.advance(lock, &rules, room, batch, pdu, before_group)?;
        let event = self.finish(pending).await?;
        Ok(Outcome { status: EventStatus::Accepted, event, reason: None })
    }

    /// Store an event fetched backwards from another server (`/backfill`): history older
    /// than every event the room has here, with `state_before`, the state before it as that
    /// server sent it (event IDs, stored first, as outliers or otherwise). It is checked
    /// against its auth events and that state (failing: stored as rejected), never against
    /// the current state: it is history. It takes the next backfill position, below every
    /// event of the room known so far, so events are backfilled newest first, as they are
    /// fetched. It changes no current state, membership or forward extremity, is not
    /// announced (sync never shows it as new), and notifies nobody. An outlier becomes a
    /// backfilled event in place; any other stored event is answered as it was.
    pub fn backfill_event(&self, lock: &RoomLock, pdu: Pdu, state_before: &StateMap) -> Result<Outcome> {
        let room_id = lock.room_id();
        let (room, rules) = match self.graph_entry(lock, &pdu)? {
            Entry::Known(outcome) => return Ok(outcome),
            Entry::New(room, rules) => (room, rules),
        };
        let mut batch = WriteBatch::new();
        let (before_group, loaded) =
            self.given_state_in(&mut batch, &rules, &pdu, Some(room.state_group), state_before)?;
        let checked = auth::check_event(
            &rules.authorization,
            &pdu,
            |id| loaded.get(id).map(|e| &e.pdu),
            |kind, key| {
                state_before
                    .get(&(kind.clone(), key.to_owned()))
                    .and_then(|id| loaded.get(id))
                    .map(|e| &e.pdu)
            },
        );
        if let Err(reason) = checked {
            return self.store_unlisted(batch, pdu, before_group, EventStatus::Rejected, reason);
        }
        let state_after = match &pdu.state_key {
            Some(key) => {
                let change = [((pdu.kind.to_string().into(), key.clone()), pdu.event_id.clone())];
                let (group, state) = self.states.new_group_in(&mut batch, Some(before_group), &change)?;
                self.states.committed_group(group, state);
                Some(group)
            }
            None => None,
        };
        let chain = match &pdu.state_key {
            Some(_) => Some(self.auth_chains.put_in(&mut batch, &pdu)?),
            None => None,
        };
        let event = Arc::new(StoredEvent {
            pdu,
            stream: 0,
            state_before: before_group,
            txn: None,
            delay_id: None,
            status: EventStatus::Accepted,
            state_after,
            head_before: None,
            backfill: Some(self.events.last_backfill(room_id)?.saturating_add(1)),
        });
        self.events.put_backfilled_in(&mut batch, &event)?;
        self.store.write(batch)?;
        self.events.committed_unlisted(Arc::clone(&event));
        if let Some(chain) = chain {
            self.auth_chains.committed(&event.pdu.event_id, chain);
        }
        tracing::debug!(room_id = %room_id, event_id = %event.pdu.event_id, backfill = ?event.backfill, "event backfilled");
        Ok(Outcome { status: EventStatus::Accepted, event, reason: None })
    }

    /// A state another server sent for an event (`state_before`), checked to name only
    /// stored events of the room, stored as a state group (its changes against `base`, a
    /// group of the room's near it), with the events it names and the event's auth events
    /// loaded for the checks.
    fn given_state_in(
        &self,
        batch: &mut WriteBatch,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        base: Option<u64>,
        state_before: &StateMap,
    ) -> Result<(u64, Loaded)> {
        let mut loaded = self.auth_events_of(rules, pdu)?;
        for ((kind, key), id) in state_before {
            let event = self
                .events
                .get(id)?
                .filter(|e| e.pdu.room_id == pdu.room_id)
                .ok_or_else(|| Error::not_found(format!("Unknown state event {id}")))?;
            if event.pdu.kind.to_string() != kind.to_string() || event.pdu.state_key.as_ref() != Some(key) {
                return Err(Error::invalid_param(format!("State event {id} is not at ({kind}, {key})")));
            }
            loaded.insert(id.clone(), event);
        }
        let base_state = match base {
            Some(group) => self.states.state_of_group(group)?,
            None => Arc::new(StateMap::new()),
        };
        let (changes, removed) = delta(&base_state, state_before);
        let (group, stored) = self.states.new_group_with_removals_in(batch, base, &changes, &removed)?;
        self.states.committed_group(group, stored);
        Ok((group, loaded))
    }

    /// The room version's rules for an event of a room this server may not have yet (an
    /// outlier of a room being joined): the room's, else those its create event names.
    fn rules_for(&self, pdu: &Pdu) -> Result<RoomVersionRules> {
        if let Some(room) = self.states.room(&pdu.room_id)? {
            return rules_of(&room.version);
        }
        let create = if pdu.kind == TimelineEventType::RoomCreate {
            Some(pdu.clone())
        } else {
            let mut found = None;
            for id in &pdu.auth_events {
                if let Some(event) = self.events.get_any(id)?
                    && event.pdu.kind == TimelineEventType::RoomCreate
                {
                    found = Some(event.pdu.clone());
                }
            }
            if found.is_none()
                && let Ok(id) = EventId::parse(format!("${}", pdu.room_id.strip_sigil()))
                && let Some(event) = self.events.get_any(&id)?
            {
                found = Some(event.pdu.clone());
            }
            found
        };
        let version = create
            .and_then(|c| {
                c.content_value().get("room_version").and_then(JsonValue::as_str).map(str::to_owned)
            })
            .unwrap_or_else(|| "1".to_owned());
        let version = RoomVersionId::try_from(version.as_str())
            .map_err(|_| Error::invalid_param("Unknown room version"))?;
        room_version::rules(&version).ok_or_else(|| Error::invalid_param("Unsupported room version"))
    }

    /// Where accepting and backfilling start: the event must be of the locked room; an
    /// event stored before is answered as it was, except an outlier, which takes its place
    /// in the graph now; otherwise the room's record and rules.
    fn graph_entry(&self, lock: &RoomLock, pdu: &Pdu) -> Result<Entry> {
        of_locked_room(lock, pdu)?;
        if let Some(known) = self.events.get_any(&pdu.event_id)?
            && known.status != EventStatus::Outlier
        {
            return Ok(Entry::Known(Outcome { status: known.status, event: known, reason: None }));
        }
        let room = self.states.room(lock.room_id())?.ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = rules_of(&room.version)?;
        Ok(Entry::New(room, rules))
    }

    /// An event's auth events that this server has, rejected ones left out (outliers and
    /// soft-failed ones in), and for versions whose room ID names the create event, that event.
    fn auth_events_of(&self, rules: &RoomVersionRules, pdu: &Pdu) -> Result<Loaded> {
        let mut loaded = Loaded::new();
        let create = rules
            .authorization
            .room_create_event_id_as_room_id
            .then(|| EventId::parse(format!("${}", pdu.room_id.strip_sigil())).ok())
            .flatten();
        for id in pdu.auth_events.iter().chain(&create) {
            if let Some(event) = self.events.get_any(id)?
                && event.status != EventStatus::Rejected
            {
                loaded.insert(id.clone(), event);
            }
        }
        Ok(loaded)
    }

    /// Add to `loaded` the events of `state` that the authorization rules may read for `pdu`:
    /// those at the keys the rules name for it (the create event, power levels, the members
    /// involved, join rules, a third-party invite), not the whole state, whose size grows with
    /// the room's members. Content the rules cannot read loads the whole state, and the check
    /// then says what is wrong with it.
    fn load_state_for_auth(
        &self,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        state: &StateMap,
        loaded: &mut Loaded,
    ) -> Result<()> {
        let wanted: Vec<&OwnedEventId> = match auth::auth_event_keys(
            &rules.authorization,
            &pdu.kind,
            &pdu.sender,
            pdu.state_key.as_deref(),
            &pdu.content,
        ) {
            Ok(mut keys) => {
                keys.push((StateEventType::RoomCreate, String::new()));
                keys.iter().filter_map(|key| state.get(key)).collect()
            }
            Err(_) => state.values().collect(),
        };
        for event in self.events.get_many(wanted.into_iter().filter(|id| !loaded.contains_key(*id)))? {
            loaded.insert(event.pdu.event_id.clone(), event);
        }
        Ok(())
    }

    /// The stored events `ids` names, all of them, or an error naming the first missing.
    fn known_prevs(&self, ids: &[OwnedEventId]) -> Result<Vec<Arc<StoredEvent>>> {
        ids.iter()
            .map(|id| match self.events.get_any(id)? {
                Some(event) if matches!(event.status, EventStatus::Accepted | EventStatus::SoftFailed) => {
                    Ok(event)
                }
                _ => Err(Error::not_found(format!("Unknown prev event {id}"))),
            })
            .collect()
    }

    /// The group and state after an event: its own group for a state event written since it
    /// was recorded, `state_before` for a message; otherwise the state computed, without a
    /// group.
    fn state_after(&self, event: &StoredEvent) -> Result<(Option<u64>, Arc<StateMap>)> {
        match (&event.pdu.state_key, event.state_after) {
            (_, Some(group)) => Ok((Some(group), self.states.state_of_group(group)?)),
            (None, None) => Ok((Some(event.state_before), self.states.state_of_group(event.state_before)?)),
            (Some(key), None) => {
                let mut state = (*self.states.state_of_group(event.state_before)?).clone();
                state.insert((event.pdu.kind.to_string().into(), key.clone()), event.pdu.event_id.clone());
                Ok((None, Arc::new(state)))
            }
        }
    }

    /// The state before an event citing `prevs`: the resolution of the states after them.
    /// With `batch`, the state is given a group (an existing one when it is one prev's),
    /// written into it and remembered by the cache once the batch is committed.
    fn state_before_prevs(
        &self,
        rules: &RoomVersionRules,
        prevs: &[Arc<StoredEvent>],
        batch: Option<&mut WriteBatch>,
    ) -> Result<(u64, Arc<StateMap>)> {
        let afters = prevs.iter().map(|p| self.state_after(p)).collect::<Result<Vec<_>>>()?;
        let forks: Vec<Arc<StateMap>> = afters.iter().map(|(_, s)| Arc::clone(s)).collect();
        let state = self.resolve(rules, &forks, &HashMap::new())?;
        // Reuse the group of a fork whose state is the resolved one (the same map when there
        // was nothing to resolve, compared without walking a state of every member).
        if let Some((Some(group), _)) = afters.iter().find(|(_, s)| same_state(s, &state)) {
            return Ok((*group, state));
        }
        let Some(batch) = batch else { return Ok((0, state)) };
        let (base_group, base) = match afters.iter().find_map(|(g, s)| g.map(|g| (g, s))) {
            Some((g, s)) => (Some(g), Arc::clone(s)),
            None => (None, Arc::new(StateMap::new())),
        };
        let (changes, removed) = delta(&base, &state);
        let (group, stored) =
            self.states.new_group_with_removals_in(batch, base_group, &changes, &removed)?;
        // Cached now: the event and its group are written in the same batch, and a failure
        // to write it fails the whole acceptance, leaving an unreferenced cache entry only.
        self.states.committed_group(group, Arc::clone(&stored));
        Ok((group, stored))
    }

    /// The state before an event across a gap: the resolution of the states after its
    /// prevs that are in the graph and of `gap_states`, given a group (its changes against
    /// the state before the first prev here, or the room's current state).
    fn state_across_gap(
        &self,
        rules: &RoomVersionRules,
        room: &RoomRecord,
        pdu: &Pdu,
        gap_states: &[StateMap],
        batch: &mut WriteBatch,
    ) -> Result<(u64, Arc<StateMap>)> {
        let mut forks = Vec::new();
        let mut base = room.state_group;
        for id in &pdu.prev_events {
            if let Some(prev) = self.events.get_any(id)?
                && matches!(prev.status, EventStatus::Accepted | EventStatus::SoftFailed)
            {
                if forks.is_empty() {
                    base = prev.state_before;
                }
                forks.push(self.state_after(&prev)?.1);
            }
        }
        forks.extend(gap_states.iter().map(|state| Arc::new(state.clone())));
        let state = self.resolve(rules, &forks, &HashMap::new())?;
        let (changes, removed) = delta(&*self.states.state_of_group(base)?, &state);
        let (group, stored) =
            self.states.new_group_with_removals_in(batch, Some(base), &changes, &removed)?;
        self.states.committed_group(group, Arc::clone(&stored));
        Ok((group, stored))
    }

    /// Resolve `forks` by the room version's rules, loading their events and auth chains;
    /// `extra` holds events not yet stored (the one being accepted).
    fn resolve(
        &self,
        rules: &RoomVersionRules,
        forks: &[Arc<StateMap>],
        extra: &Loaded,
    ) -> Result<Arc<StateMap>> {
        match forks {
            [] => return Ok(Arc::new(StateMap::new())),
            [first, rest @ ..] if rest.iter().all(|f| same_state(f, first)) => return Ok(Arc::clone(first)),
            _ => {}
        }
        // The forks' auth chains, from the index.
        let chain_of = |id: &OwnedEventId| match extra.get(id) {
            Some(event) => self.auth_chains.chain_of_pdu(&event.pdu),
            None => self.auth_chains.chain_of(id),
        };
        let mut chains: Vec<HashSet<OwnedEventId>> = Vec::with_capacity(forks.len());
        for fork in forks {
            let mut chain = HashSet::new();
            for id in fork.values() {
                chain.extend(chain_of(id)?.iter().cloned());
            }
            chains.push(chain);
        }
        // The events the algorithm reads: the forks' state events; the full conflicted set
        // (conflicted events and the auth difference) and the auth chains of its events, which
        // the ordering and the iterative auth checks walk; and the auth chains of the power
        // levels events, whose mainline orders the rest.
        let mut wanted: HashSet<OwnedEventId> = forks.iter().flat_map(|f| f.values().cloned()).collect();
        let conflicted: HashSet<OwnedEventId> = forks[0]
            .keys()
            .chain(forks[1..].iter().flat_map(|f| f.keys()))
            .filter(|key| {
                let first = forks[0].get(*key);
                forks[1..].iter().any(|f| f.get(*key) != first)
            })
            .flat_map(|key| forks.iter().filter_map(|f| f.get(key).cloned()))
            .collect();
        let union: HashSet<&OwnedEventId> = chains.iter().flatten().collect();
        let difference: Vec<OwnedEventId> =
            union.into_iter().filter(|id| !chains.iter().all(|c| c.contains(*id))).cloned().collect();
        let power_levels =
            forks.iter().filter_map(|f| f.get(&(StateEventType::RoomPowerLevels, String::new())).cloned());
        let walked: Vec<OwnedEventId> =
            conflicted.iter().cloned().chain(difference.iter().cloned()).chain(power_levels).collect();
        wanted.extend(difference);
        for id in &walked {
            wanted.extend(chain_of(id)?.iter().cloned());
        }
        let mut loaded: Loaded = extra.clone();
        for id in wanted {
            if loaded.contains_key(&id) {
                continue;
            }
            if let Some(event) = self.events.get_any(&id)? {
                loaded.insert(id, event);
            }
        }
        let fetch =
            |id: &EventId| loaded.get(id).filter(|e| e.status != EventStatus::Rejected).map(|e| &e.pdu);
        // ruma's algorithm takes standard maps.
        let maps: Vec<HashMap<StateKey, OwnedEventId>> =
            forks.iter().map(|f| f.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).collect();
        let resolved = state_resolution::resolve(rules, &maps, &chains, fetch)
            .map_err(|e| Error::internal(format!("state resolution failed: {e:?}")))?;
        Ok(Arc::new(resolved.into_iter().collect()))
    }

    /// Store an event that takes no place in the timeline (rejected, soft-failed).
    fn store_unlisted(
        &self,
        mut batch: WriteBatch,
        pdu: Pdu,
        before_group: u64,
        status: EventStatus,
        reason: String,
    ) -> Result<Outcome> {
        let event = Arc::new(StoredEvent {
            pdu,
            stream: 0,
            state_before: before_group,
            txn: None,
            delay_id: None,
            status,
            state_after: None,
            head_before: None,
            backfill: None,
        });
        self.events.put_unlisted_in(&mut batch, &event)?;
        self.store.write(batch)?;
        self.events.committed_unlisted(Arc::clone(&event));
        tracing::info!(event_id = %event.pdu.event_id, ?status, %reason, "event not accepted");
        Ok(Outcome { status, event, reason: Some(reason) })
    }

    /// Persist an accepted event and advance the room's head to the resolution of the new
    /// forward extremities, applied as a delta to the current state and membership.
    fn advance(
        &self,
        lock: &RoomLock,
        rules: &RoomVersionRules,
        room: RoomRecord,
        mut batch: WriteBatch,
        pdu: Pdu,
        before_group: u64,
    ) -> Result<super::PendingEvent> {
        let room_id = lock.room_id();
        let event_key: Option<StateKey> =
            pdu.state_key.as_ref().map(|k| (pdu.kind.to_string().into(), k.clone()));
        let (after_group, after) = match &event_key {
            Some(key) => {
                let change = [(key.clone(), pdu.event_id.clone())];
                let (group, state) = self.states.new_group_in(&mut batch, Some(before_group), &change)?;
                self.states.committed_group(group, Arc::clone(&state));
                (group, state)
            }
            None => (before_group, self.states.state_of_group(before_group)?),
        };

        // The new extremities: the old ones the event does not cite, and the event.
        let cited: HashSet<&OwnedEventId> = pdu.prev_events.iter().collect();
        let mut extremities: Vec<OwnedEventId> =
            room.forward_extremities.iter().filter(|id| !cited.contains(id)).cloned().collect();
        extremities.push(pdu.event_id.clone());

        let head = if extremities.len() == 1 {
            Arc::clone(&after)
        } else {
            let others = self.events.get_many(extremities.iter().filter(|id| **id != pdu.event_id))?;
            let mut forks = vec![Arc::clone(&after)];
            for other in &others {
                forks.push(self.state_after(other)?.1);
            }
            let mut extra = Loaded::new();
            // The event is not stored yet; resolution may need it as a state event.
            extra.insert(
                pdu.event_id.clone(),
                Arc::new(StoredEvent {
                    pdu: pdu.clone(),
                    stream: 0,
                    state_before: before_group,
                    txn: None,
                    delay_id: None,
                    status: EventStatus::Accepted,
                    state_after: Some(after_group),
                    head_before: None,
                    backfill: None,
                }),
            );
            self.resolve(rules, &forks, &extra)?
        };

        let current = self.states.state_of_group(room.state_group)?;
        let (puts, removed) = delta(&current, &head);
        let head_group = if same_state(&head, &after) {
            after_group
        } else if puts.is_empty() && removed.is_empty() {
            room.state_group
        } else {
            let (group, state) = self.states.new_group_with_removals_in(
                &mut batch,
                Some(room.state_group),
                &puts,
                &removed,
            )?;
            self.states.committed_group(group, state);
            group
        };
        self.states.set_current_in(&mut batch, room_id, &puts)?;
        self.states.remove_current_in(&mut batch, room_id, &removed);

        // The event is live (backfilled history never comes here): push rules are evaluated
        // for the room's members against the state before it, and a redaction takes effect on
        // its target by the power levels there.
        let state_before = self.states.state_of_group(before_group)?;
        let power = match state_before.contains_key(&(StateEventType::RoomCreate, String::new())) {
            true => Some(self.power_levels_in(rules, &state_before)?),
            false => None,
        };
        // Push rule changes wait until the event has its position (see `evaluating`).
        let evaluating = self.notifications.evaluating();
        let notified = match &power {
            Some(power) => {
                let roster = self.members.roster(room_id)?;
                self.notifications.evaluate(&pdu, &state_before, power.clone(), &roster)?
            }
            None => Evaluation::default(),
        };
        let redacted = match (&pdu.redacts, &power) {
            (Some(target_id), Some(power)) if pdu.kind == TimelineEventType::RoomRedaction => {
                match self.events.get(target_id)? {
                    Some(target) if target.pdu.room_id == room_id && target.status.is_accepted() => {
                        super::redacted_target(rules, &target, &pdu, power)?
                    }
                    _ => None,
                }
            }
            _ => None,
        };

        let reservation = self.stream.reserve_owned()?;
        drop(evaluating);
        let event = Arc::new(StoredEvent {
            pdu,
            stream: reservation.position,
            state_before: before_group,
            txn: None,
            delay_id: None,
            status: EventStatus::Accepted,
            state_after: event_key.is_some().then_some(after_group),
            // A room's first event here (a remote join) has no head before it: the state
            // the resident server sent is where a joiner's sync starts, not the empty room.
            head_before: (room.state_group != before_group && !room.forward_extremities.is_empty())
                .then_some(room.state_group),
            backfill: None,
        });
        self.events.put_in(&mut batch, &event)?;
        // A state event's auth chain is kept for the resolutions to come.
        let chain = match &event_key {
            Some(_) => Some(self.auth_chains.put_in(&mut batch, &event.pdu)?),
            None => None,
        };
        self.relations.index_in(&mut batch, &event)?;
        self.search.index_in(&mut batch, &event)?;

        // Membership follows the change of current state, not the event.
        let mut changes = vec![Change::Room(room_id.to_owned())];
        let mut moved: Vec<(OwnedUserId, String)> = Vec::new();
        for ((kind, state_key), event_id) in &puts {
            if *kind != StateEventType::RoomMember {
                continue;
            }
            let Ok(user_id) = UserId::parse(state_key.as_str()) else { continue };
            let member = if *event_id == event.pdu.event_id {
                Arc::clone(&event)
            } else {
                self.events
                    .get(event_id)?
                    .ok_or_else(|| Error::internal(format!("missing member event {event_id}")))?
            };
            let membership = member
                .pdu
                .content_value()
                .get("membership")
                .and_then(JsonValue::as_str)
                .unwrap_or_default()
                .to_owned();
            let joined_at = match (membership.as_str(), self.members.get(room_id, &user_id)?) {
                ("join", Some(previous)) if previous.membership == "join" => Some(previous.joined_since()),
                ("join", _) => Some(event.stream),
                _ => None,
            };
            let row = MembershipRecord {
                membership,
                event_id: member.pdu.event_id.clone(),
                stream: event.stream,
                forgotten: false,
                joined_at,
            };
            self.members.set_in(&mut batch, room_id, &user_id, &row)?;
            moved.push((user_id, row.membership));
        }
        for (kind, state_key) in &removed {
            if *kind == StateEventType::RoomMember
                && let Ok(user_id) = UserId::parse(state_key.as_str())
            {
                // No member event at all (a state reset): neither joined nor invited. The row
                // says `leave` at this event, so the member's sync shows the room left.
                let row = MembershipRecord {
                    membership: "leave".to_owned(),
                    event_id: event.pdu.event_id.clone(),
                    stream: event.stream,
                    forgotten: false,
                    joined_at: None,
                };
                self.members.set_in(&mut batch, room_id, &user_id, &row)?;
                moved.push((user_id, row.membership));
            }
        }
        if let Some(redacted) = &redacted {
            self.events.replace_in(&mut batch, redacted)?;
            self.search.remove_in(&mut batch, &redacted.pdu.event_id)?;
        }
        // A member who left with this event has their counts in the room dropped.
        let left = moved
            .iter()
            .find(|(user, membership)| {
                matches!(membership.as_str(), "leave" | "ban")
                    && event.pdu.state_key.as_deref() == Some(user.as_str())
            })
            .map(|(user, _)| user.clone());
        let counted = self.notifications.put_in(&mut batch, &event, notified, left.as_deref())?;
        let depth = room.depth.max(u64::from(event.pdu.depth));
        let record = RoomRecord { forward_extremities: extremities, depth, state_group: head_group, ..room };
        self.states.put_room_in(&mut batch, room_id, &record)?;
        let durable = self.write_event_batch(batch)?;

        self.notifications.counted(counted);
        if let Some(redacted) = &redacted {
            // Other processes forget their copy before the position is released.
            self.stream.stale_elsewhere(Stale::Event(redacted.pdu.event_id.clone()));
        }
        self.events.committed([Some(Arc::clone(&event)), redacted].into_iter().flatten());
        if let Some(chain) = chain {
            self.auth_chains.committed(&event.pdu.event_id, chain);
        }
        if !moved.is_empty() {
            for (user_id, membership) in &moved {
                self.members.committed_member(room_id, user_id, membership);
            }
            changes.extend(moved.into_iter().map(|(user_id, _)| Change::User(user_id)));
        }
        tracing::debug!(room_id = %room_id, event_id = %event.pdu.event_id, stream = event.stream, "event accepted on the graph");
        Ok(super::PendingEvent { event, reservation, changes, durable })
    }
}

/// What [`Timeline::graph_entry`] found.
enum Entry {
    Known(Outcome),
    New(RoomRecord, RoomVersionRules),
}

/// Refuse an event of another room than the one whose lock is held.
fn of_locked_room(lock: &RoomLock, pdu: &Pdu) -> Result<()> {
    if pdu.room_id != lock.room_id() {
        return Err(Error::invalid_param("The event belongs to another room"));
    }
    Ok(())
}

/// The changes turning `from` into `to`: entries to put, keys to delete.
fn delta(from: &StateMap, to: &StateMap) -> (Vec<(StateKey, OwnedEventId)>, Vec<StateKey>) {
    if from.ptr_eq(to) {
        return (Vec::new(), Vec::new());
    }
    let puts =
        to.iter().filter(|(k, v)| from.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
    let removed = from.keys().filter(|k| !to.contains_key(*k)).cloned().collect();
    (puts, removed)
}

/// Whether two states are equal, at once when they share their root (a state passed on
/// unchanged), else by walking them: a room's state holds a member event per member.
fn same_state(a: &StateMap, b: &StateMap) -> bool {
    a.ptr_eq(b) || a == b
}

/// The spec's fourth check on receipt of a PDU: the authorization rules with the event's auth
/// events as the state (for an outlier, which has no state of its own).
fn check_against_auth_events(rules: &RoomVersionRules, pdu: &Pdu, loaded: &Loaded) -> Result<(), String> {
    // The auth events, and from v12 the create event the room ID names (in `loaded` too).
    let by_key: HashMap<(String, String), &Pdu> = loaded
        .values()
        .filter_map(|e| e.pdu.state_key.clone().map(|key| ((e.pdu.kind.to_string(), key), &e.pdu)))
        .collect();
    auth::check_event(
        &rules.authorization,
        pdu,
        |id| loaded.get(id).map(|e| &e.pdu),
        |kind, key| by_key.get(&(kind.to_string(), key.to_owned())).copied(),
    )
}
