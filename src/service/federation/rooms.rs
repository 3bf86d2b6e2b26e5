//! Rooms shared with other servers: what this server does with the room protocol's requests
//! and what it asks of other servers.
//!
//! - *Inbound transactions* (`PUT /send/{txnId}`): answered once per origin and transaction
//!   ID (a repeat gets the first answer); each PDU goes through the spec's checks in order:
//!   the format of the room's version (`matrix::federation::format`), the signatures of the
//!   servers that must sign it and the content hash (`verify`: a bad hash means the redacted
//!   copy is used), missing `prev_events` fetched with `get_missing_events` (bounded), auth
//!   events it cites that this server lacks fetched with `/event_auth` (stored as outliers),
//!   then the room engine (`Timeline::accept_event`: auth events, state before, current state →
//!   soft fail). Typing and read receipts EDUs of the origin's users are applied.
//! - *Resident server*: `make_join` (a join template at the room's forward extremities,
//!   checked against the auth rules; for a restricted room, naming the local member who
//!   authorises it) and `send_join` (the signed join accepted through the engine, co-signed
//!   first when this server authorised it, answered with the state before it and its auth
//!   chain); knocks and leaves likewise (`membership`).
//! - *Joining server*: a local user joins a room this server does not have through a server
//!   that has it (`make_join`, sign, `send_join` with the members left out:
//!   `membership::handshake`); the state before the join is checked and stored as outliers,
//!   and the room is seated with `Timeline::accept_first_event`, after the join is answered
//!   when the resident left the members out (`joining`); a knock goes through the same
//!   handshake.
//! - *Reads for servers in a room*: an event, the state (or its IDs) before an event, an
//!   event's auth chain, and the events between two points of the graph.

mod backfill;
mod joining;
mod membership;
mod spaces;

pub use membership::Handshake;
use membership::Handshaken;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
    events::{
        StateEventType, TimelineEventType,
        room::{member::MembershipState, server_acl::RoomServerAclEventContent},
    },
    presence::PresenceState,
    room_version_rules::RoomVersionRules,
    serde::Base64,
};
use serde_json::{Value as JsonValue, json, value::RawValue as RawJsonValue};

use super::{FederationClient, RemoteE2ee, RemoteKeys, sender::pdu_json};
use crate::{
    Error, Result,
    matrix::{
        federation::{
            format::{FormatError, WirePdu, claimed_room_id, oversized_event_id, parse_pdu},
            verify::{self, ServerKeys as VerifyKeys, Verdict, VerifyKey},
        },
        pdu::Pdu,
    },
    service::{
        clock::Clock,
        presence::Presence,
        rooms::{
            events::{Events, StoredEvent},
            hierarchy::RemoteLevel,
            history::History,
            members::Memberships,
            receipts::Receipts,
            remote_invites::RemoteInvites,
            state::{RoomStates, StateMap},
            timeline::{RoomLock, Timeline, rules_of},
            typing::Typing,
            visibility::Visibility,
        },
        server_keys::ServerKeys,
        users::Users,
    },
    storage::{
        KvStore, Table,
        locks::KeyedLocks,
        tables::{EventStatus, PENDING_JOINS, PendingJoinRecord},
    },
};

/// Transactions remembered per origin and ID, for answering a repeat.
const REMEMBERED_TXNS: usize = 1000;
/// PDUs and EDUs one transaction may carry (the spec's limits).
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;
/// Events asked for in one `get_missing_events` request, and taken at most from one answer.
const MISSING_EVENTS_LIMIT: u64 = 50;
const MAX_MISSING_EVENTS_ANSWER: usize = 50;
/// `get_missing_events` requests for one PDU whose ancestors are missing, and the events
/// fetched for it in all: a gap longer than that is refused.
const MISSING_EVENTS_ROUNDS: usize = 10;
const MAX_MISSING_EVENTS: usize = 500;
/// Events named in one request's `latest_events` at most.
const MISSING_EVENTS_FRONTIER: usize = 20;
/// Missing prev events of one PDU whose state is asked for (`/state_ids`) when
/// `get_missing_events` did not close the gap: a PDU citing more is refused.
const MAX_GAP_PREVS: usize = 5;
/// Events of one `/event_auth` answer taken at most (an auth chain grows with the power
/// level changes and the memberships of the senders involved, not with the room's history).
const MAX_AUTH_CHAIN: usize = 5_000;
/// Fewest PDUs checked by one task when many are checked at once: fewer are not worth a
/// thread of their own.
const MIN_CHECKS_PER_TASK: usize = 64;
/// How long a typing notification from another server lasts unless renewed.
const REMOTE_TYPING: Duration = Duration::from_secs(30);

/// The answer to a transaction: each PDU's event ID and why it was refused, if it was.
pub type PduResults = BTreeMap<OwnedEventId, std::result::Result<(), String>>;

/// A transaction's key: its origin and ID.
type TxnKey = (OwnedServerName, String);
/// Answers of recent transactions, and their keys oldest first.
type RememberedTxns = (HashMap<TxnKey, PduResults>, VecDeque<TxnKey>);
/// A state as PDUs, with its auth chain.
pub type StateAndChain = (Vec<Box<RawJsonValue>>, Vec<Box<RawJsonValue>>);

/// What `send_join` answers.
pub struct JoinAnswer {
    pub state: Vec<Box<RawJsonValue>>,
    pub auth_chain: Vec<Box<RawJsonValue>>,
    pub servers_in_room: Vec<String>,
    /// The join as this server signed it too, when it authorised a restricted join.
    pub event: Option<Box<RawJsonValue>>,
    /// Member events were left out of `state` (asked for with `omit_members`).
    pub members_omitted: bool,
}

pub struct RoomFederation {
    server_name: OwnedServerName,
    client: Arc<FederationClient>,
    remote_keys: Arc<RemoteKeys>,
    server_keys: Arc<ServerKeys>,
    timeline: Arc<Timeline>,
    events: Arc<Events>,
    states: Arc<RoomStates>,
    members: Arc<Memberships>,
    typing: Arc<Typing>,
    receipts: Arc<Receipts>,
    presence: Arc<Presence>,
    clock: Arc<dyn Clock>,
    users: Arc<Users>,
    remote_invites: Arc<RemoteInvites>,
    history: Arc<History>,
    visibility: Arc<Visibility>,
    e2ee: Arc<RemoteE2ee>,
    /// Answers of recent transactions by (origin, transaction ID), oldest first in the queue.
    txns: Mutex<RememberedTxns>,
    /// One transaction of an origin at a time, as the spec has servers send them.
    origins: KeyedLocks<OwnedServerName>,
    /// Joins accepted by another server whose rooms are not seated yet (`joining`).
    pending_joins: Table<OwnedRoomId, PendingJoinRecord>,
    /// Several processes serve this server: a join is answered once its room is seated,
    /// since the joiner's next request may reach a process that cannot wait for the seating.
    seat_before_answer: bool,
    /// Levels of spaces this server does not have, as other servers answered them for a
    /// local user's walk, by (room, suggested only), until when.
    space_levels: Mutex<HashMap<(OwnedRoomId, bool), (RemoteLevel, u64)>>,
}

/// A membership event a server sends for one of its own users (`send_join`, `send_leave`):
/// the event the path names, an `m.room.member` of `membership`, by its own subject, from a
/// user of `origin`.
fn own_membership(
    pdu: &Pdu,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    membership: &str,
) -> Result<()> {
    if pdu.event_id != event_id || pdu.room_id != room_id {
        return Err(Error::invalid_param("The event is not the one the path names"));
    }
    let given = pdu.content_value().get("membership").and_then(JsonValue::as_str).map(str::to_owned);
    if pdu.kind != TimelineEventType::RoomMember
        || given.as_deref() != Some(membership)
        || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
        || pdu.sender.server_name() != origin
    {
        return Err(Error::invalid_param(format!("Not a {membership} of a user of the sending server")));
    }
    Ok(())
}

/// `work` on each of `items`, spread over the cores in blocking tasks of at least
/// `MIN_CHECKS_PER_TASK` items; the results in the items' order, `None` for the items of a
/// task that failed.
async fn spread<T, R>(mut items: Vec<T>, work: impl Fn(T) -> R + Clone + Send + 'static) -> Vec<Option<R>>
where
    T: Send + 'static,
    R: Send + 'static,
{
    let workers = std::thread::available_parallelism().map_or(1, std::num::NonZero::get).min(8);
    let per_task = items.len().div_ceil(workers).max(MIN_CHECKS_PER_TASK);
    let mut tasks = Vec::new();
    while !items.is_empty() {
        let rest = items.split_off(per_task.min(items.len()));
        let part = std::mem::replace(&mut items, rest);
        let (work, count) = (work.clone(), part.len());
        let task = tokio::task::spawn_blocking(move || part.into_iter().map(work).collect::<Vec<R>>());
        tasks.push((task, count));
    }
    let mut results = Vec::new();
    for (task, count) in tasks {
        match task.await {
            Ok(part) => results.extend(part.into_iter().map(Some)),
            Err(e) => {
                tracing::error!(error = %e, "a spread task failed");
                results.extend(std::iter::repeat_with(|| None).take(count));
            }
        }
    }
    results
}

/// The first `limit` PDUs of `answer`'s array `key`, as text for `checked_pdus`.
fn pdu_texts(answer: &JsonValue, key: &str, limit: usize) -> Vec<String> {
    answer
        .get(key)
        .and_then(JsonValue::as_array)
        .into_iter()
        .flatten()
        .take(limit)
        .map(JsonValue::to_string)
        .collect()
}

/// A PDU checked (format, signatures, hash), or its event ID when known and why it failed.
type Checked = std::result::Result<Pdu, (Option<OwnedEventId>, String)>;

/// Check 1, the format of the room's version, and the servers whose signatures it needs.
fn parsed_pdu(
    json: &str,
    rules: &RoomVersionRules,
) -> std::result::Result<(WirePdu, BTreeSet<OwnedServerName>), (Option<OwnedEventId>, String)> {
    let wire = parse_pdu(json, rules).map_err(|e| {
        // Too large but otherwise an event: dropped all the same, and named in the answer.
        let named = match e {
            FormatError::TooLarge(_) => oversized_event_id(json, rules),
            _ => None,
        };
        (named, format!("malformed PDU: {e}"))
    })?;
    let servers =
        verify::required_servers(&wire, rules).map_err(|e| (Some(wire.event_id.clone()), e.to_string()))?;
    Ok((wire, servers))
}

/// Checks 2 and 3 with the keys held: the signatures, the content hash (a mismatch gives the
/// redacted copy).
fn verified_pdu(wire: WirePdu, rules: &RoomVersionRules, keys: &VerifyKeys) -> Checked {
    let event_id = wire.event_id.clone();
    let wire = match verify::check_signatures_and_hash(wire, rules, keys) {
        Verdict::Accepted(wire) => wire,
        Verdict::Redact(wire) => {
            tracing::info!(%event_id, "content hash mismatch: the event is used redacted");
            wire
        }
        Verdict::Reject(why) => return Err((Some(event_id), why.to_string())),
    };
    wire.into_pdu(rules).map_err(|e| (Some(event_id), e.to_string()))
}

impl RoomFederation {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &Arc<dyn KvStore>,
        multi_process: bool,
        client: Arc<FederationClient>,
        remote_keys: Arc<RemoteKeys>,
        server_keys: Arc<ServerKeys>,
        timeline: Arc<Timeline>,
        events: Arc<Events>,
        states: Arc<RoomStates>,
        members: Arc<Memberships>,
        typing: Arc<Typing>,
        receipts: Arc<Receipts>,
        presence: Arc<Presence>,
        clock: Arc<dyn Clock>,
        users: Arc<Users>,
        remote_invites: Arc<RemoteInvites>,
        history: Arc<History>,
        visibility: Arc<Visibility>,
        e2ee: Arc<RemoteE2ee>,
    ) -> Self {
        Self {
            server_name: server_keys.server_name().to_owned(),
            client,
            remote_keys,
            server_keys,
            timeline,
            events,
            states,
            members,
            typing,
            receipts,
            presence,
            clock,
            users,
            remote_invites,
            history,
            visibility,
            e2ee,
            txns: Mutex::new((HashMap::new(), VecDeque::new())),
            origins: KeyedLocks::new(),
            pending_joins: PENDING_JOINS.open(store),
            seat_before_answer: multi_process,
            space_levels: Mutex::new(HashMap::new()),
        }
    }

    /// The servers with a joined member in the room, this one included when it has one.
    fn servers_in_room(&self, room_id: &RoomId) -> Result<BTreeSet<OwnedServerName>> {
        Ok(self
            .members
            .members_with(room_id, &MembershipState::Join)?
            .iter()
            .map(|user| user.server_name().to_owned())
            .collect())
    }

    /// Refuse a server that has no joined member in the room (or a room this server does
    /// not have).
    fn ensure_in_room(&self, origin: &ServerName, room_id: &RoomId) -> Result<()> {
        if self.states.room(room_id)?.is_none() {
            return Err(Error::not_found(format!("This server does not have room {room_id}")));
        }
        self.ensure_acl_allows(origin, room_id)?;
        if !self.servers_in_room(room_id)?.contains(origin) {
            return Err(Error::forbidden(format!("{origin} is not in room {room_id}")));
        }
        Ok(())
    }

    /// Whether the room's `m.room.server_acl` lets `origin` take part (no ACL, or one that
    /// cannot be read, lets everyone, as in Synapse).
    pub fn acl_allows(&self, origin: &ServerName, room_id: &RoomId) -> Result<bool> {
        let Some(id) = self.states.current_state_event_id(room_id, &StateEventType::RoomServerAcl, "")?
        else {
            return Ok(true);
        };
        let Some(event) = self.events.get(&id)? else { return Ok(true) };
        Ok(match event.pdu.content_as::<RoomServerAclEventContent>() {
            Ok(acl) => acl.is_allowed(origin),
            Err(e) => {
                tracing::info!(%room_id, error = %e, "an unreadable server ACL is not applied");
                true
            }
        })
    }

    /// `M_FORBIDDEN` when the room's server ACL denies `origin`: every request of a server
    /// about a room is checked, as the spec requires.
    fn ensure_acl_allows(&self, origin: &ServerName, room_id: &RoomId) -> Result<()> {
        if self.acl_allows(origin, room_id)? {
            Ok(())
        } else {
            Err(Error::forbidden(format!("Server {origin} is banned from room {room_id} by its server ACL")))
        }
    }

    fn rules_of_room(&self, room_id: &RoomId) -> Result<(RoomVersionId, RoomVersionRules)> {
        let room = self
            .states
            .room(room_id)?
            .ok_or_else(|| Error::not_found(format!("This server does not have room {room_id}")))?;
        let rules = rules_of(&room.version)?;
        Ok((room.version, rules))
    }

    // ----- checks on a received PDU -----

    /// Fetch the keys of `servers` not yet in `keys` (a failure leaves them out: the
    /// signature check then names the server).
    async fn fetch_keys(&self, servers: &BTreeSet<OwnedServerName>, keys: &mut VerifyKeys) {
        for server in servers {
            if keys.contains_key(server) {
                continue;
            }
            match self.remote_keys.keys_of(server, None, 0).await {
                Ok(set) => {
                    let mut entry = BTreeMap::new();
                    for (id, key) in &set.verify_keys {
                        if let Ok(public_key) = Base64::parse(key) {
                            entry.insert(
                                id.clone(),
                                VerifyKey {
                                    public_key,
                                    valid_until_ts: ms(set.valid_until_ms),
                                    expired_ts: None,
                                },
                            );
                        }
                    }
                    for (id, (key, expired)) in &set.old_verify_keys {
                        if let Ok(public_key) = Base64::parse(key) {
                            entry.insert(
                                id.clone(),
                                VerifyKey {
                                    public_key,
                                    valid_until_ts: ms(*expired),
                                    expired_ts: Some(ms(*expired)),
                                },
                            );
                        }
                    }
                    keys.insert(server.clone(), entry);
                }
                Err(e) => tracing::info!(%server, error = %e, "keys for a PDU could not be fetched"),
            }
        }
    }

    /// Checks 1 to 3 on a PDU received as text in a room of `rules`: the format, the
    /// signatures, the content hash (a mismatch gives the redacted copy). Fails with the
    /// event ID when it is known, and why.
    async fn checked_pdu(&self, json: &str, rules: &RoomVersionRules, keys: &mut VerifyKeys) -> Checked {
        let (wire, servers) = parsed_pdu(json, rules)?;
        self.fetch_keys(&servers, keys).await;
        verified_pdu(wire, rules, keys)
    }

    /// `checked_pdu` for many PDUs (a room's state and auth chain), in their order: parsed
    /// and then checked spread over the cores, the keys fetched once for all of them.
    async fn checked_pdus(
        &self,
        jsons: Vec<String>,
        rules: &RoomVersionRules,
        keys: &mut VerifyKeys,
    ) -> Vec<Checked> {
        let failed = || (None, "the check failed".to_owned());
        let parsing_rules = rules.clone();
        let parsed: Vec<_> = spread(jsons, move |json| parsed_pdu(&json, &parsing_rules))
            .await
            .into_iter()
            .map(|parsed| parsed.unwrap_or_else(|| Err(failed())))
            .collect();
        let servers: BTreeSet<OwnedServerName> = parsed
            .iter()
            .filter_map(|p| p.as_ref().ok())
            .flat_map(|(_, servers)| servers.iter().cloned())
            .collect();
        self.fetch_keys(&servers, keys).await;
        let (rules, keys) = (rules.clone(), keys.clone());
        spread(parsed, move |parsed| parsed.and_then(|(wire, _)| verified_pdu(wire, &rules, &keys)))
            .await
            .into_iter()
            .map(|checked| checked.unwrap_or_else(|| Err(failed())))
            .collect()
    }

    /// Whether an event has its place in the room's graph here (accepted or soft-failed).
    fn in_graph(&self, event_id: &EventId) -> Result<bool> {
        Ok(self
            .events
            .get_any(event_id)?
            .is_some_and(|e| matches!(e.status, EventStatus::Accepted | EventStatus::SoftFailed)))
    }

    fn missing_prevs(&self, pdu: &Pdu) -> Result<Vec<OwnedEventId>> {
        let mut missing = Vec::new();
        for id in &pdu.prev_events {
            if !self.in_graph(id)? {
                missing.push(id.clone());
            }
        }
        Ok(missing)
    }

    // ----- inbound transactions -----

    /// `PUT /send/{txnId}` from `origin`: each PDU's outcome. A transaction seen before is
    /// answered as it was the first time, without doing anything again.
    pub async fn receive_transaction(
        &self,
        origin: &ServerName,
        txn_id: &str,
        pdus: &[Box<RawJsonValue>],
        edus: &[&RawJsonValue],
    ) -> Result<PduResults> {
        if pdus.len() > MAX_PDUS || edus.len() > MAX_EDUS {
            return Err(Error::invalid_param(format!(
                "A transaction carries at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
            )));
        }
        let _serial = self.origins.lock(&origin.to_owned()).await;
        let key = (origin.to_owned(), txn_id.to_owned());
        if let Some(answer) = self.txns.lock().unwrap_or_else(|p| p.into_inner()).0.get(&key) {
            return Ok(answer.clone());
        }
        let mut keys = VerifyKeys::new();
        let mut results = PduResults::new();
        for pdu in pdus {
            if let Some((event_id, result)) = self.receive_pdu(origin, pdu.get(), &mut keys).await {
                results.insert(event_id, result);
            }
        }
        if !edus.is_empty() {
            self.timeline.settled_all().await;
        }
        for edu in edus {
            self.receive_edu(origin, edu.get());
        }
        let mut txns = self.txns.lock().unwrap_or_else(|p| p.into_inner());
        txns.0.insert(key.clone(), results.clone());
        txns.1.push_back(key);
        while txns.1.len() > REMEMBERED_TXNS {
            if let Some(old) = txns.1.pop_front() {
                txns.0.remove(&old);
            }
        }
        Ok(results)
    }

    /// One PDU of a transaction: its event ID and outcome, or `None` when it names no room
    /// this server has or is not a valid event (logged; the answer cannot name it).
    async fn receive_pdu(
        &self,
        origin: &ServerName,
        json: &str,
        keys: &mut VerifyKeys,
    ) -> Option<(OwnedEventId, std::result::Result<(), String>)> {
        let Some(room_id) = claimed_room_id(json) else {
            tracing::info!(%origin, "a PDU naming no room was dropped");
            return None;
        };
        // The room's lock for the whole PDU: a join of this server under way holds it until
        // the room is seated, so the room's first events wait for it rather than miss it.
        let lock = self.timeline.lock_room(&room_id).await;
        let rules = match self.rules_of_room(&room_id) {
            Ok((_, rules)) => rules,
            Err(e) => {
                tracing::info!(%origin, %room_id, error = %e, "a PDU of an unknown room was dropped");
                return None;
            }
        };
        let pdu = match self.checked_pdu(json, &rules, keys).await {
            Ok(pdu) => pdu,
            Err((Some(event_id), why)) => return Some((event_id, Err(why))),
            Err((None, why)) => {
                tracing::info!(%origin, %room_id, %why, "a PDU was dropped");
                return None;
            }
        };
        let event_id = pdu.event_id.clone();
        match self.acl_allows(origin, &room_id) {
            Ok(true) => {}
            Ok(false) => {
                return Some((event_id, Err(format!("{origin} is banned from the room by its server ACL"))));
            }
            Err(e) => return Some((event_id, Err(e.to_string()))),
        }
        Some((event_id, self.accept(&lock, origin, &rules, pdu, keys).await))
    }

    /// Checks 4 to 6 through the room engine, after fetching missing `prev_events`.
    async fn accept(
        &self,
        lock: &RoomLock,
        origin: &ServerName,
        rules: &RoomVersionRules,
        pdu: Pdu,
        keys: &mut VerifyKeys,
    ) -> std::result::Result<(), String> {
        let reason = |e: Error| e.to_string();
        if self.in_graph(&pdu.event_id).map_err(reason)? {
            return Ok(());
        }
        let mut gap_states = None;
        if !self.missing_prevs(&pdu).map_err(reason)?.is_empty() {
            self.fetch_missing(lock, origin, rules, &pdu, keys).await;
            let missing = self.missing_prevs(&pdu).map_err(reason)?;
            if !missing.is_empty() {
                match self.states_across_gap(lock, origin, &missing, keys).await {
                    Ok(states) => gap_states = Some(states),
                    Err(e) => return Err(format!("prev_events not found: {missing:?} ({e})")),
                }
            }
        }
        let unknown = self.fetch_missing_auth(lock, origin, rules, &pdu, keys).await.map_err(reason)?;
        if !unknown.is_empty() {
            // Not rejected for good: it may be taken again once its auth events can be had
            // (as a prev event of a later PDU, say).
            return Err(format!("auth_events not found: {unknown:?}"));
        }
        let outcome = match gap_states {
            None => self.timeline.accept_event(lock, pdu).await,
            Some(states) => self.timeline.accept_event_across_gap(lock, pdu, &states).await,
        }
        .map_err(reason)?;
        match outcome.status {
            EventStatus::Rejected => Err(outcome.reason.unwrap_or_else(|| "rejected".to_owned())),
            EventStatus::SoftFailed => {
                tracing::info!(event_id = %outcome.event.pdu.event_id, reason = ?outcome.reason, "soft-failed");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Ask `origin` for the events between the room's forward extremities and `pdu`
    /// (`get_missing_events`), again from the oldest events fetched whose parents are still
    /// missing until none is (a server answers a bounded number per request, nearest to
    /// `latest_events` first), and accept those whose ancestors are then all here, oldest
    /// first. At most `MISSING_EVENTS_ROUNDS` requests and `MAX_MISSING_EVENTS` events.
    async fn fetch_missing(
        &self,
        lock: &RoomLock,
        origin: &ServerName,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        keys: &mut VerifyKeys,
    ) {
        let room_id = lock.room_id();
        let Ok(Some(room)) = self.states.room(room_id) else { return };
        let mut fetched: HashMap<OwnedEventId, Pdu> = HashMap::new();
        let mut latest = vec![pdu.event_id.clone()];
        for _ in 0..MISSING_EVENTS_ROUNDS {
            let body = json!({
                "earliest_events": room.forward_extremities,
                "latest_events": latest,
                "limit": MISSING_EVENTS_LIMIT,
                "min_depth": 0,
            });
            let path = format!("/_matrix/federation/v1/get_missing_events/{}", encode(room_id.as_str()));
            let answer = match self.client.request(origin, http::Method::POST, &path, Some(&body), true).await
            {
                Ok(Ok(answer)) => answer,
                Ok(Err(refusal)) => {
                    tracing::info!(%origin, status = refusal.status, "get_missing_events refused");
                    break;
                }
                Err(e) => {
                    tracing::info!(%origin, error = %e, "get_missing_events failed");
                    break;
                }
            };
            let before = fetched.len();
            for event in answer
                .get("events")
                .and_then(JsonValue::as_array)
                .into_iter()
                .flatten()
                .take(MAX_MISSING_EVENTS_ANSWER)
            {
                match self.checked_pdu(&event.to_string(), rules, keys).await {
                    Ok(found) if found.room_id == room_id => {
                        fetched.entry(found.event_id.clone()).or_insert(found);
                    }
                    Ok(_) => {}
                    Err((id, why)) => tracing::info!(?id, %why, "a missing event fetched was dropped"),
                }
            }
            if fetched.len() == before || fetched.len() >= MAX_MISSING_EVENTS {
                break;
            }
            // The events whose parents are neither here nor fetched: where the gap goes on.
            latest = std::iter::once(pdu)
                .chain(fetched.values())
                .filter(|event| {
                    self.missing_prevs(event)
                        .is_ok_and(|missing| missing.iter().any(|id| !fetched.contains_key(id)))
                })
                .map(|event| event.event_id.clone())
                .take(MISSING_EVENTS_FRONTIER)
                .collect();
            if latest.is_empty() {
                break;
            }
        }
        let mut fetched: Vec<Pdu> = fetched.into_values().collect();
        fetched.sort_by_key(|p| u64::from(p.depth));
        // Accept in rounds: each round takes the events whose parents are all here.
        loop {
            let mut progress = false;
            let mut left = Vec::new();
            for found in fetched {
                let ready = self.missing_prevs(&found).is_ok_and(|m| m.is_empty());
                if !ready {
                    left.push(found);
                    continue;
                }
                if self.in_graph(&found.event_id).unwrap_or(false) {
                    continue;
                }
                let id = found.event_id.clone();
                match self.fetch_missing_auth(lock, origin, rules, &found, keys).await {
                    Ok(unknown) if unknown.is_empty() => {}
                    Ok(unknown) => {
                        tracing::info!(event_id = %id, ?unknown, "missing event's auth events not found");
                        continue;
                    }
                    Err(e) => {
                        tracing::info!(event_id = %id, error = %e, "missing event's auth events not read");
                        continue;
                    }
                }
                match self.timeline.accept_event(lock, found).await {
                    Ok(outcome) => {
                        tracing::debug!(event_id = %id, status = ?outcome.status, "missing event accepted")
                    }
                    Err(e) => tracing::info!(event_id = %id, error = %e, "missing event not accepted"),
                }
                progress = true;
            }
            fetched = left;
            if !progress || fetched.is_empty() {
                break;
            }
        }
    }

    /// The auth events `pdu` cites that this server has not stored.
    fn missing_auth(&self, pdu: &Pdu) -> Result<Vec<OwnedEventId>> {
        let mut missing = Vec::new();
        for id in &pdu.auth_events {
            if self.events.get_any(id)?.is_none() {
                missing.push(id.clone());
            }
        }
        Ok(missing)
    }

    /// When `pdu` cites auth events this server lacks (events of a branch it never saw),
    /// ask `origin` for the PDU's auth chain (`/event_auth`), check what comes (format,
    /// signatures, hashes) and store the events of the room not here yet as outliers, each
    /// after its own auth events. Answers the auth events still missing.
    async fn fetch_missing_auth(
        &self,
        lock: &RoomLock,
        origin: &ServerName,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        keys: &mut VerifyKeys,
    ) -> Result<Vec<OwnedEventId>> {
        if self.missing_auth(pdu)?.is_empty() {
            return Ok(Vec::new());
        }
        let room_id = lock.room_id();
        let path = format!(
            "/_matrix/federation/v1/event_auth/{}/{}",
            encode(room_id.as_str()),
            encode(pdu.event_id.as_str())
        );
        match self.client.get_json(origin, &path).await {
            Ok(answer) => {
                let jsons = pdu_texts(&answer, "auth_chain", MAX_AUTH_CHAIN);
                let mut pending = HashMap::new();
                for checked in self.checked_pdus(jsons, rules, keys).await {
                    match checked {
                        Ok(event)
                            if event.room_id == room_id
                                && self.events.get_any(&event.event_id)?.is_none() =>
                        {
                            pending.insert(event.event_id.clone(), event);
                        }
                        Ok(_) => {}
                        Err((id, why)) => tracing::info!(?id, %why, "an auth event fetched was dropped"),
                    }
                }
                if !pending.is_empty() {
                    self.store_outliers(lock, pending)?;
                }
            }
            Err(e) => tracing::info!(%origin, event_id = %pdu.event_id, error = %e, "event_auth failed"),
        }
        self.missing_auth(pdu)
    }

    /// A gap `get_missing_events` did not close: for each of `missing` (prev events not
    /// here), the event itself (`/event`) and the state before it (`/state_ids`, with the
    /// events named fetched), as `origin` has them, stored as outliers; answers the state
    /// after each. At most `MAX_GAP_PREVS` missing prevs.
    async fn states_across_gap(
        &self,
        lock: &RoomLock,
        origin: &ServerName,
        missing: &[OwnedEventId],
        keys: &mut VerifyKeys,
    ) -> Result<Vec<StateMap>> {
        if missing.len() > MAX_GAP_PREVS {
            return Err(Error::invalid_param(format!("more than {MAX_GAP_PREVS} prev events missing")));
        }
        let room_id = lock.room_id();
        let (_, rules) = self.rules_of_room(room_id)?;
        let mut states = Vec::with_capacity(missing.len());
        for id in missing {
            let prev = self
                .remote_event(origin, room_id, id, &rules, keys)
                .await?
                .ok_or_else(|| Error::Upstream(format!("{origin} did not send {id} as asked")))?;
            let mut state = self.remote_state_before(origin, room_id, id, keys, Some(lock)).await?;
            let key = prev.state_key.clone().map(|key| (StateEventType::from(prev.kind.to_string()), key));
            self.store_outliers(lock, HashMap::from([(id.clone(), prev)]))?;
            let stored = self.events.get_any(id)?;
            if let (Some(key), Some(prev)) = (key, stored)
                && prev.status != EventStatus::Rejected
            {
                state.insert(key, id.clone());
            }
            states.push(state);
        }
        Ok(states)
    }

    /// An EDU of `origin`: typing and read receipts of its users are applied, to-device
    /// messages queued for local devices, device-list and signing-key updates mark the user's
    /// keys changed (`RemoteE2ee`), presence of its users in a room with this server is kept;
    /// other kinds and anything malformed are ignored.
    fn receive_edu(&self, origin: &ServerName, json: &str) {
        let Ok(edu) = serde_json::from_str::<JsonValue>(json) else { return };
        let content = &edu["content"];
        let from_origin = |user: &str| UserId::parse(user).ok().filter(|u| u.server_name() == origin);
        match edu.get("edu_type").and_then(JsonValue::as_str) {
            Some("m.typing") => {
                let room = content["room_id"].as_str().and_then(|r| RoomId::parse(r).ok());
                let user = content["user_id"].as_str().and_then(from_origin);
                if let (Some(room), Some(user)) = (room, user)
                    && self.acl_allows(origin, &room).unwrap_or(false)
                {
                    let typing = content["typing"].as_bool().unwrap_or(false);
                    if let Err(e) = self.typing.set(&user, &room, typing.then_some(REMOTE_TYPING)) {
                        tracing::debug!(%user, %room, error = %e, "typing EDU ignored");
                    }
                }
            }
            Some("m.receipt") => {
                let Some(rooms) = content.as_object() else { return };
                for (room, kinds) in rooms {
                    let Ok(room) = RoomId::parse(room) else { continue };
                    if !self.acl_allows(origin, &room).unwrap_or(false) {
                        continue;
                    }
                    let Some(users) = kinds.get("m.read").and_then(JsonValue::as_object) else { continue };
                    for (user, receipt) in users {
                        let Some(user) = from_origin(user) else { continue };
                        let thread = receipt["data"]["thread_id"].as_str();
                        let last = receipt["event_ids"]
                            .as_array()
                            .and_then(|ids| ids.last())
                            .and_then(JsonValue::as_str)
                            .and_then(|id| EventId::parse(id).ok());
                        if let Some(event_id) = last
                            && let Err(e) = self.receipts.set(&user, &room, "m.read", &event_id, thread)
                        {
                            tracing::debug!(%user, %room, error = %e, "receipt EDU ignored");
                        }
                    }
                }
            }
            Some("m.presence") => {
                let Some(updates) = content["push"].as_array() else { return };
                for update in updates {
                    let Some(user) = update["user_id"].as_str().and_then(from_origin) else { continue };
                    if let Err(e) = self.receive_presence(&user, update) {
                        tracing::debug!(%user, error = %e, "presence update ignored");
                    }
                }
            }
            Some("m.direct_to_device") => {
                if let Err(e) = self.e2ee.receive_to_device(origin, content) {
                    tracing::info!(%origin, error = %e, "to-device EDU ignored");
                }
            }
            Some("m.device_list_update") => {
                if let Err(e) = self.e2ee.receive_device_list_update(origin, content) {
                    tracing::info!(%origin, error = %e, "device-list EDU refused");
                }
            }
            Some("m.signing_key_update") => {
                if let Err(e) = self.e2ee.receive_signing_key_update(origin, content) {
                    tracing::info!(%origin, error = %e, "signing-key EDU refused");
                }
            }
            _ => {}
        }
    }

    /// One user's update of an `m.presence` EDU, kept if the user is in a room with this
    /// server (their presence is of no use to anyone here otherwise).
    fn receive_presence(&self, user: &UserId, update: &JsonValue) -> Result<()> {
        let state = match update["presence"].as_str() {
            Some(state @ ("online" | "unavailable" | "offline")) => PresenceState::from(state),
            _ => return Err(Error::invalid_param("unknown presence state")),
        };
        if self.members.rooms_of_user(user, &MembershipState::Join)?.is_empty() {
            return Ok(());
        }
        let status_msg = update["status_msg"].as_str().map(str::to_owned);
        let ago = update["last_active_ago"].as_u64().unwrap_or(0);
        self.presence.set_remote(user, &state, status_msg, ago)
    }

    // ----- resident server: joins -----

    /// `send_join` (v2): the join `origin` signed, accepted through the room engine (see
    /// `receive_membership`), and the state before it with its auth chain.
    ///
    /// With `omit_members` (a joining server that fills in the members later, as the spec
    /// allows since v1.6), the state leaves out member events but those of the room's heroes
    /// when it has neither a name nor a canonical alias (what the joining server needs to
    /// name it), and the auth chain leaves out what the state holds; whatever authorises
    /// an event sent stays in one or the other.
    pub async fn send_join(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        pdu: &RawJsonValue,
        omit_members: bool,
    ) -> Result<JoinAnswer> {
        let (join, event) = self.receive_membership(Handshake::Join, origin, room_id, event_id, pdu).await?;
        let state = self.states.state_of_group(join.state_before)?;
        let kept_members: HashSet<String> = if omit_members {
            let named = [StateEventType::RoomName, StateEventType::RoomCanonicalAlias]
                .into_iter()
                .any(|kind| state.contains_key(&(kind, String::new())));
            if named {
                HashSet::new()
            } else {
                self.members.heroes(room_id, &join.pdu.sender)?.into_iter().map(String::from).collect()
            }
        } else {
            HashSet::new()
        };
        let state_ids: Vec<OwnedEventId> = state
            .iter()
            .filter(|((kind, key), _)| {
                !omit_members || *kind != StateEventType::RoomMember || kept_members.contains(key)
            })
            .map(|(_, id)| id.clone())
            .collect();
        let state_events = self.pdus_of(&state_ids)?;
        let mut chain = self
            .timeline
            .auth_chain(&[state_ids.as_slice(), std::slice::from_ref(&join.pdu.event_id)].concat())?;
        if omit_members {
            let in_state: HashSet<&OwnedEventId> = state_ids.iter().collect();
            chain.retain(|id| !in_state.contains(id));
        }
        let auth_chain = self.pdus_of(&chain)?;
        let servers_in_room = self.servers_in_room(room_id)?.into_iter().map(|s| s.to_string()).collect();
        Ok(JoinAnswer {
            state: state_events,
            auth_chain,
            servers_in_room,
            event,
            members_omitted: omit_members,
        })
    }

    /// The stored events `ids` names, as PDUs (those not stored left out).
    fn pdus_of(&self, ids: &[OwnedEventId]) -> Result<Vec<Box<RawJsonValue>>> {
        self.events.get_many(ids)?.iter().map(|event| pdu_json(&self.states, event)).collect()
    }

    /// Store events received as a room's state and auth chain, each after its auth events
    /// (an event whose auth events never arrive is left out).
    fn store_outliers(&self, lock: &RoomLock, pending: HashMap<OwnedEventId, Pdu>) -> Result<()> {
        self.timeline.store_outliers(lock, pending)
    }

    // ----- reads for servers in a room -----

    /// An event, for a server in its room.
    pub fn event(&self, origin: &ServerName, event_id: &EventId) -> Result<Box<RawJsonValue>> {
        let event = self.readable_event(event_id)?;
        self.ensure_in_room(origin, &event.pdu.room_id)?;
        pdu_json(&self.states, &event)
    }

    fn readable_event(&self, event_id: &EventId) -> Result<Arc<StoredEvent>> {
        self.events
            .get(event_id)?
            .ok_or_else(|| Error::not_found(format!("Event {event_id} is not known here")))
    }

    /// The state before an event (IDs), and the auth chain of that state.
    pub fn state_ids(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>)> {
        self.ensure_in_room(origin, room_id)?;
        let event = self.readable_event(event_id)?;
        if event.pdu.room_id != room_id || event.status == EventStatus::Outlier {
            return Err(Error::not_found(format!("Event {event_id} has no known state in {room_id}")));
        }
        let state: Vec<OwnedEventId> =
            self.states.state_of_group(event.state_before)?.values().cloned().collect();
        let chain = self.timeline.auth_chain(&state)?;
        Ok((state, chain))
    }

    /// The state before an event and its auth chain, as PDUs.
    pub fn state(&self, origin: &ServerName, room_id: &RoomId, event_id: &EventId) -> Result<StateAndChain> {
        let (state, chain) = self.state_ids(origin, room_id, event_id)?;
        Ok((self.pdus_of(&state)?, self.pdus_of(&chain)?))
    }

    /// An event's auth chain, as PDUs.
    pub fn event_auth(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        self.ensure_in_room(origin, room_id)?;
        let event = self.readable_event(event_id)?;
        if event.pdu.room_id != room_id {
            return Err(Error::not_found(format!("Event {event_id} is not in {room_id}")));
        }
        self.pdus_of(&self.timeline.auth_chain(std::slice::from_ref(&event.pdu.event_id))?)
    }

    /// The events before `latest` back to `earliest` (not included), walking `prev_events`,
    /// at most `limit` (capped at 50) of depth `min_depth` or more, oldest first.
    pub fn missing_events(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        earliest: &[OwnedEventId],
        latest: &[OwnedEventId],
        limit: u64,
        min_depth: u64,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        self.ensure_in_room(origin, room_id)?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(MAX_MISSING_EVENTS_ANSWER);
        let stop: HashSet<&OwnedEventId> = earliest.iter().collect();
        let mut seen: HashSet<OwnedEventId> = latest.iter().cloned().collect();
        let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
        for id in latest {
            if let Some(event) = self.events.get(id)?
                && event.pdu.room_id == room_id
            {
                queue.extend(event.pdu.prev_events.iter().cloned());
            }
        }
        let mut found: Vec<Arc<StoredEvent>> = Vec::new();
        while let Some(id) = queue.pop_front() {
            if found.len() >= limit {
                break;
            }
            if stop.contains(&id) || !seen.insert(id.clone()) {
                continue;
            }
            let Some(event) = self.events.get(&id)? else { continue };
            if event.pdu.room_id != room_id
                || event.status != EventStatus::Accepted
                || u64::from(event.pdu.depth) < min_depth
            {
                continue;
            }
            queue.extend(event.pdu.prev_events.iter().cloned());
            found.push(event);
        }
        found.sort_by_key(|e| u64::from(e.pdu.depth));
        found.iter().map(|event| pdu_json(&self.states, event)).collect()
    }

    /// Another server's public room directory (`POST /publicRooms` with `wanted`, the
    /// client's limit, token and filter): its answer as sent.
    pub async fn public_rooms(&self, server: &ServerName, wanted: &JsonValue) -> Result<JsonValue> {
        let path = "/_matrix/federation/v1/publicRooms";
        match self.client.request(server, http::Method::POST, path, Some(wanted), true).await? {
            Ok(answer) => Ok(answer),
            Err(refusal) => Err(super::client::refusal_error(server, &refusal)),
        }
    }

    /// Whether `user_id` is a user of this server.
    pub fn is_local(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.server_name
    }
}

fn ms(value: u64) -> ruma::MilliSecondsSinceUnixEpoch {
    ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::new_saturating(value))
}

/// A path segment, percent-encoded.
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}
