//! History across servers, both ways.
//!
//! - *Serving* `GET /backfill`: from the events asked for, back through `prev_events`,
//!   newest (deepest) first, at most `MAX_BACKFILL_ANSWER`; an event the asking server may
//!   not see by the history visibility at it (`Visibility::server_may_see_event`) is sent
//!   redacted, so its place in the graph is still known.
//! - *Fetching*: `/messages` going backwards that reaches the start of the room's history
//!   here, while the room's oldest event here is not its create event, asks another server
//!   in the room for older events (`/backfill` from that oldest event), at most
//!   `MAX_FETCHES_PER_PAGE` times for one page. Each event is checked (format, signatures,
//!   hash), the state before it taken from that server (`/state_ids`, the events missing
//!   here fetched with `/event` and stored as outliers), and it is stored with
//!   `Timeline::backfill_event`: below every position of the stream, never announced, so a
//!   sync never shows it as new.

use std::collections::{BinaryHeap, HashMap, HashSet};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedServerName, RoomId, ServerName,
    api::client::filter::RoomEventFilter,
    canonical_json::redact_content_in_place,
    events::StateEventType,
    room_version_rules::{RedactionRules, RoomVersionRules},
};
use serde_json::{Value as JsonValue, value::RawValue as RawJsonValue};

use super::{RoomFederation, encode};
use crate::{
    Error, Result,
    matrix::{federation::verify::ServerKeys as VerifyKeys, pdu::Pdu},
    service::rooms::{history::MessagesPage, render::Viewer, state::StateMap, timeline::RoomLock},
    storage::{Direction, tables::EventStatus},
};

/// Events one `/backfill` answer carries at most, and what this server asks for.
const MAX_BACKFILL_ANSWER: usize = 100;
const BACKFILL_ASK: usize = 20;
/// `/backfill` requests one page of `/messages` may make.
const MAX_FETCHES_PER_PAGE: usize = 3;

impl RoomFederation {
    // ----- serving -----

    /// `GET /backfill` from `origin`: up to `limit` events of the room from `from` back.
    pub fn backfill(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        from: &[OwnedEventId],
        limit: u64,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        self.ensure_in_room(origin, room_id)?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(MAX_BACKFILL_ANSWER);
        let mut queue: BinaryHeap<(u64, OwnedEventId)> = BinaryHeap::new();
        let mut seen: HashSet<OwnedEventId> = HashSet::new();
        for id in from {
            if seen.insert(id.clone())
                && let Some(event) = self.events.get(id)?
                && event.pdu.room_id == room_id
            {
                queue.push((u64::from(event.pdu.depth), id.clone()));
            }
        }
        let (_, rules) = self.rules_of_room(room_id)?;
        let mut answer = Vec::new();
        while let Some((_, id)) = queue.pop() {
            if answer.len() >= limit {
                break;
            }
            let Some(event) = self.events.get(&id)? else { continue };
            if event.pdu.room_id != room_id || event.status != EventStatus::Accepted {
                continue;
            }
            for prev in &event.pdu.prev_events {
                if seen.insert(prev.clone())
                    && let Some(parent) = self.events.get(prev)?
                {
                    queue.push((u64::from(parent.pdu.depth), prev.clone()));
                }
            }
            let json = super::pdu_json(&self.states, &event)?;
            if self.visibility.server_may_see_event(origin, &event)? {
                answer.push(json);
            } else {
                answer.push(redacted(&json, &rules.redaction)?);
            }
        }
        Ok(answer)
    }

    // ----- fetching -----

    /// `/messages` with history fetched from other servers when the page reaches the start
    /// of what this server has (see the module's documentation).
    #[allow(clippy::too_many_arguments)]
    pub async fn messages(
        &self,
        viewer: Viewer<'_>,
        room_id: &RoomId,
        from: Option<i64>,
        to: Option<i64>,
        direction: Direction,
        limit: usize,
        filter: &RoomEventFilter,
    ) -> Result<MessagesPage> {
        let mut page = self.history.messages(viewer, room_id, from, to, direction, limit, filter)?;
        if direction != Direction::Reverse || to.is_some() || !self.client.enabled() {
            return Ok(page);
        }
        let mut fetches = 0;
        while page.end.is_none() && fetches < MAX_FETCHES_PER_PAGE {
            let fetched = self.backfill_once(room_id, &mut fetches).await?;
            if fetched == 0 {
                break;
            }
            page = self.history.messages(viewer, room_id, from, to, direction, limit, filter)?;
        }
        Ok(page)
    }

    /// One round of backfill of `room_id` from a server in it, counted in `fetches`: the
    /// number of events stored (0 when there was nothing to fetch or nobody answered).
    async fn backfill_once(&self, room_id: &RoomId, fetches: &mut usize) -> Result<usize> {
        let Some(oldest) =
            self.events.room_events_by_position(room_id, None, None, Direction::Forward, 1)?.pop()
        else {
            return Ok(0);
        };
        if oldest.pdu.kind == ruma::events::TimelineEventType::RoomCreate || oldest.pdu.prev_events.is_empty()
        {
            return Ok(0);
        }
        let servers: Vec<OwnedServerName> =
            self.servers_in_room(room_id)?.into_iter().filter(|s| *s != self.server_name).collect();
        for server in servers {
            if *fetches >= MAX_FETCHES_PER_PAGE {
                break;
            }
            *fetches += 1;
            match self.backfill_from(&server, room_id, &oldest.pdu.event_id).await {
                Ok(stored) => return Ok(stored),
                Err(e) => tracing::info!(%server, %room_id, error = %e, "backfill failed"),
            }
        }
        Ok(0)
    }

    /// Ask `server` for the events before `oldest` and store those it sends, newest first.
    async fn backfill_from(&self, server: &ServerName, room_id: &RoomId, oldest: &EventId) -> Result<usize> {
        let (_, rules) = self.rules_of_room(room_id)?;
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("v", oldest.as_str())
            .append_pair("limit", &BACKFILL_ASK.to_string())
            .finish();
        let path = format!("/_matrix/federation/v1/backfill/{}?{query}", encode(room_id.as_str()));
        let answer = self.client.get_json(server, &path).await?;
        let mut keys = VerifyKeys::new();
        let mut fetched: Vec<Pdu> = Vec::new();
        let jsons = super::pdu_texts(&answer, "pdus", BACKFILL_ASK);
        for checked in self.checked_pdus(jsons, &rules, &mut keys).await {
            match checked {
                Ok(pdu) if pdu.room_id == room_id => fetched.push(pdu),
                Ok(_) => {}
                Err((id, why)) => tracing::info!(?id, %why, "a backfilled event was dropped"),
            }
        }
        // Newest first: each is stored below the ones before it.
        fetched.sort_by_key(|p| std::cmp::Reverse(u64::from(p.depth)));
        let mut stored = 0;
        for pdu in fetched {
            if self.events.get_any(&pdu.event_id)?.is_some_and(|e| e.status != EventStatus::Outlier) {
                continue;
            }
            let state = match self.remote_state_before(server, room_id, &pdu.event_id, &mut keys, None).await
            {
                Ok(state) => state,
                Err(e) => {
                    tracing::info!(event_id = %pdu.event_id, error = %e, "no state for a backfilled event");
                    continue;
                }
            };
            let lock = self.timeline.lock_room(room_id).await;
            let id = pdu.event_id.clone();
            match self.timeline.backfill_event(&lock, pdu, &state) {
                Ok(outcome) if outcome.status == EventStatus::Accepted => stored += 1,
                Ok(outcome) => {
                    tracing::info!(event_id = %id, reason = ?outcome.reason, "backfilled event refused")
                }
                Err(e) => tracing::info!(event_id = %id, error = %e, "backfilled event not stored"),
            }
        }
        Ok(stored)
    }

    /// Event `id` of `room_id` as `server` sends it (`/event`), checked (format, signatures,
    /// hash): `None` when the answer holds no such event or it fails the checks (logged);
    /// an error when the request fails.
    pub(super) async fn remote_event(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        id: &EventId,
        rules: &RoomVersionRules,
        keys: &mut VerifyKeys,
    ) -> Result<Option<Pdu>> {
        let path = format!("/_matrix/federation/v1/event/{}", encode(id.as_str()));
        let answer = self.client.get_json(server, &path).await?;
        let Some(event) = answer.get("pdus").and_then(JsonValue::as_array).and_then(|p| p.first()) else {
            tracing::info!(%server, event_id = %id, "an event asked for was not sent");
            return Ok(None);
        };
        match self.checked_pdu(&event.to_string(), rules, keys).await {
            Ok(pdu) if pdu.event_id == *id && pdu.room_id == room_id => Ok(Some(pdu)),
            Ok(_) => {
                tracing::info!(%server, event_id = %id, "another event was sent for one asked for");
                Ok(None)
            }
            Err((_, why)) => {
                tracing::info!(%server, event_id = %id, %why, "an event fetched was dropped");
                Ok(None)
            }
        }
    }

    /// The state before `event_id` as `server` has it (`/state_ids`), with every event of it
    /// and of its auth chain stored here (fetched with `/event` when missing, as outliers,
    /// under `lock` when the caller holds the room's lock, else under the room's lock taken).
    pub(super) async fn remote_state_before(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        keys: &mut VerifyKeys,
        lock: Option<&RoomLock>,
    ) -> Result<StateMap> {
        let path = format!(
            "/_matrix/federation/v1/state_ids/{}?event_id={}",
            encode(room_id.as_str()),
            encode(event_id.as_str())
        );
        let answer = self.client.get_json(server, &path).await?;
        let ids = |key: &str| -> Vec<OwnedEventId> {
            answer
                .get(key)
                .and_then(JsonValue::as_array)
                .into_iter()
                .flatten()
                .filter_map(|id| id.as_str().and_then(|s| OwnedEventId::try_from(s).ok()))
                .collect()
        };
        let (state_ids, chain_ids) = (ids("pdu_ids"), ids("auth_chain_ids"));
        let (_, rules) = self.rules_of_room(room_id)?;
        let mut missing: HashMap<OwnedEventId, Pdu> = HashMap::new();
        for id in state_ids.iter().chain(&chain_ids) {
            if missing.contains_key(id) || self.events.get_any(id)?.is_some() {
                continue;
            }
            if let Some(pdu) = self.remote_event(server, room_id, id, &rules, keys).await? {
                missing.insert(id.clone(), pdu);
            }
        }
        if !missing.is_empty() {
            match lock {
                Some(lock) => self.store_outliers(lock, missing)?,
                None => self.store_outliers(&self.timeline.lock_room(room_id).await, missing)?,
            }
        }
        let mut state = StateMap::new();
        for id in &state_ids {
            let Some(event) = self.events.get(id)? else {
                return Err(Error::Upstream(format!(
                    "{server} named state event {id} that could not be had"
                )));
            };
            if let Some(key) = &event.pdu.state_key {
                let kind: StateEventType = event.pdu.kind.to_string().into();
                state.insert((kind, key.clone()), id.clone());
            }
        }
        Ok(state)
    }
}

/// The redacted form of an event's PDU JSON (its content cut to what the room version's
/// redaction keeps; hashes and signatures stay valid for it).
fn redacted(json: &RawJsonValue, rules: &RedactionRules) -> Result<Box<RawJsonValue>> {
    let mut object: CanonicalJsonObject =
        serde_json::from_str(json.get()).map_err(|e| Error::internal(format!("stored PDU: {e}")))?;
    let kind = match object.get("type") {
        Some(CanonicalJsonValue::String(kind)) => kind.clone(),
        _ => String::new(),
    };
    if let Some(CanonicalJsonValue::Object(content)) = object.get_mut("content") {
        redact_content_in_place(content, rules, kind);
    }
    serde_json::value::to_raw_value(&object).map_err(|e| Error::internal(e.to_string()))
}
