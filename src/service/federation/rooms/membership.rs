//! Invites and leaves across servers, both ways.
//!
//! - *Inviting another server's user*: the invite is built at the room's forward
//!   extremities and checked against the current state (`Timeline::build_checked`), sent to
//!   the invitee's server (`PUT /v2/invite`) with the room's stripped state as PDUs, and the
//!   copy it answers (co-signed by it) goes through the room engine like any event of the
//!   room (`Timeline::accept_event`), under the room's lock the whole time.
//! - *Invited by another server*: the event is checked (room version, format, the inviting
//!   server's signature, a local user as target), co-signed and answered. A room this server
//!   has takes it through the engine; for any other room it is kept in `RemoteInvites` with
//!   the stripped state sent, for sync, until the user joins through the inviting server
//!   (`join_remote` tries it first) or rejects it through that server (`make_leave`,
//!   `send_leave`).
//! - *Resident server for leaves*: `make_leave` and `send_leave` (v2) for another server's
//!   user, as for joins.

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedServerName, RoomId, RoomVersionId,
    ServerName, UserId,
    api::error::{ErrorKind, IncompatibleRoomVersionErrorData},
    events::{
        StateEventType, TimelineEventType,
        room::join_rules::{JoinRule, RoomJoinRulesEventContent},
    },
    room_version_rules::RoomVersionRules,
};
use serde_json::{Value as JsonValue, json, value::RawValue as RawJsonValue};

use super::{RoomFederation, encode, ms};
use crate::{
    Error, Result,
    matrix::{
        federation::{
            format::{WirePdu, parse_pdu},
            sign,
            verify::{self, ServerKeys as VerifyKeys, Verdict},
        },
        pdu::{EventTemplate, Pdu},
        room_version,
    },
    service::{
        federation::client::{RemoteRefusal, refusal_error},
        rooms::{
            events::StoredEvent, membership::JOIN_AUTHORISER, timeline::RoomLock, view::STRIPPED_STATE_TYPES,
        },
    },
    storage::tables::EventStatus,
};

/// The membership handshakes a server makes with a resident server of a room for one of
/// its users (`make_*` then `send_*`), each answered here too as the resident server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    Join,
    Knock,
    Leave,
}

impl Handshake {
    fn membership(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Knock => "knock",
            Self::Leave => "leave",
        }
    }
}

/// What a handshake gave: the room's version, the event as signed and sent, and the
/// resident server's answer to `send_*`.
pub(super) struct Handshaken {
    pub version: RoomVersionId,
    pub rules: RoomVersionRules,
    pub wire: WirePdu,
    pub sent: JsonValue,
    pub answer: JsonValue,
}

/// A resident server's refusal of a handshake, as the user hears it: with the resident's
/// error code when it is one a client acts on, else as a failure of the other server.
fn passed_on(server: &ServerName, refusal: &RemoteRefusal) -> Error {
    let message = refusal.body.get("error").and_then(JsonValue::as_str).unwrap_or("no reason given");
    let kind = match refusal.body.get("errcode").and_then(JsonValue::as_str) {
        Some("M_FORBIDDEN") => ErrorKind::Forbidden,
        Some("M_UNABLE_TO_AUTHORISE_JOIN") => ErrorKind::UnableToAuthorizeJoin,
        Some("M_UNABLE_TO_GRANT_JOIN") => ErrorKind::UnableToGrantJoin,
        Some("M_INCOMPATIBLE_ROOM_VERSION") => {
            let version = refusal.body.get("room_version").and_then(JsonValue::as_str).unwrap_or("1");
            match RoomVersionId::try_from(version) {
                Ok(version) => {
                    ErrorKind::IncompatibleRoomVersion(IncompatibleRoomVersionErrorData::new(version))
                }
                Err(_) => return refusal_error(server, refusal),
            }
        }
        _ => return refusal_error(server, refusal),
    };
    Error::new(kind, format!("{server} refused: {message}"))
}

/// `M_INCOMPATIBLE_ROOM_VERSION` for a room of `version`, and why.
fn incompatible(version: &RoomVersionId, why: String) -> Error {
    Error::new(
        ErrorKind::IncompatibleRoomVersion(IncompatibleRoomVersionErrorData::new(version.clone())),
        format!("The room is of version {version}: {why}"),
    )
}

/// Whether a stripped state event is `user_id`'s member event.
fn is_member_event_of(event: &RawJsonValue, user_id: &UserId) -> bool {
    serde_json::from_str::<JsonValue>(event.get())
        .is_ok_and(|e| e["type"] == "m.room.member" && e["state_key"] == json!(user_id.as_str()))
}

/// A received event's field as a string.
fn field<'a>(object: &'a CanonicalJsonObject, key: &str) -> Option<&'a str> {
    match object.get(key) {
        Some(CanonicalJsonValue::String(s)) => Some(s.as_str()),
        _ => None,
    }
}

fn raw(value: &impl serde::Serialize) -> Result<Box<RawJsonValue>> {
    serde_json::value::to_raw_value(value).map_err(|e| Error::internal(e.to_string()))
}

/// The stripped form (`type`, `state_key`, `sender`, `content`) of a state event given as
/// a PDU or already stripped; `None` for anything else.
fn stripped(json: &str) -> Option<Box<RawJsonValue>> {
    let value: JsonValue = serde_json::from_str(json).ok()?;
    let kind = value.get("type")?.as_str()?;
    let state_key = value.get("state_key")?.as_str()?;
    let sender = value.get("sender")?.as_str()?;
    let content = value.get("content").filter(|c| c.is_object())?;
    serde_json::value::to_raw_value(
        &json!({"type": kind, "state_key": state_key, "sender": sender, "content": content}),
    )
    .ok()
}

impl RoomFederation {
    // ----- inviting another server's user -----

    /// Invite `template`'s target, a user of another server, into the room `lock` holds:
    /// build and check the invite, have the target's server co-sign it, then accept it
    /// through the room engine. Answers the invite's event ID.
    pub async fn invite_remote(
        &self,
        lock: &RoomLock,
        sender: &UserId,
        template: &EventTemplate,
    ) -> Result<OwnedEventId> {
        let room_id = lock.room_id();
        let target = template
            .state_key
            .as_deref()
            .and_then(|key| UserId::parse(key).ok())
            .ok_or_else(|| Error::internal("an invite template without a target"))?;
        let server = target.server_name().to_owned();
        self.client.check_server(&server)?;
        let (version, pdu) = self.timeline.build_checked(lock, sender, template)?;
        let rules = room_version::rules(&version)
            .ok_or_else(|| Error::internal(format!("room version {version} without rules")))?;
        let object = pdu.to_federation_object(&rules).map_err(Error::internal)?;
        let body = json!({
            "room_version": version,
            "event": object,
            "invite_room_state": self.invite_room_state(room_id, sender)?,
        });
        let path = format!(
            "/_matrix/federation/v2/invite/{}/{}",
            encode(room_id.as_str()),
            encode(pdu.event_id.as_str())
        );
        let answer = match self.client.request(&server, http::Method::PUT, &path, Some(&body), true).await? {
            Ok(answer) => answer,
            // The invitee's server said no (an unknown user, a version it lacks): the
            // inviter hears its words, as Synapse passes them on.
            Err(refusal) if refusal.status == 403 || refusal.status == 400 => {
                let why = refusal.body.get("error").and_then(JsonValue::as_str).unwrap_or("no reason given");
                return Err(Error::forbidden(format!("{server} refused the invite: {why}")));
            }
            Err(refusal) => return Err(refusal_error(&server, &refusal)),
        };
        let event = answer
            .get("event")
            .filter(|e| e.is_object())
            .ok_or_else(|| Error::Upstream(format!("{server} answered the invite without the event")))?;
        let mut keys = VerifyKeys::new();
        let signed = self.checked_pdu(&event.to_string(), &rules, &mut keys).await.map_err(|(_, why)| {
            Error::Upstream(format!("{server} answered an invite that does not check: {why}"))
        })?;
        if signed.event_id != pdu.event_id {
            return Err(Error::Upstream(format!("{server} answered another event than the invite")));
        }
        let cosigned = event
            .get("signatures")
            .and_then(|s| s.get(server.as_str()))
            .is_some_and(|s| s.as_object().is_some_and(|keys| !keys.is_empty()));
        if !cosigned {
            return Err(Error::Upstream(format!("{server} did not sign the invite")));
        }
        let outcome = self.timeline.accept_event(lock, signed).await?;
        if outcome.status != EventStatus::Accepted {
            return Err(Error::forbidden(format!(
                "The invite was not accepted: {}",
                outcome.reason.unwrap_or_else(|| format!("{:?}", outcome.status))
            )));
        }
        Ok(outcome.event.pdu.event_id.clone())
    }

    /// The room's state an invitee's server is sent with an invite: the stripped-state
    /// types and the inviter's member event, as full PDUs (the spec's form since v1.16).
    fn invite_room_state(&self, room_id: &RoomId, sender: &UserId) -> Result<Vec<Box<RawJsonValue>>> {
        let room = self
            .states
            .room(room_id)?
            .ok_or_else(|| Error::not_found(format!("This server does not have room {room_id}")))?;
        let state = self.states.state_of_group(room.state_group)?;
        let mut ids: Vec<OwnedEventId> = STRIPPED_STATE_TYPES
            .iter()
            .filter_map(|kind| state.get(&((*kind).into(), String::new())).cloned())
            .collect();
        ids.extend(state.get(&(ruma::events::StateEventType::RoomMember, sender.to_string())).cloned());
        self.pdus_of(&ids)
    }

    // ----- invited by another server -----

    /// `PUT /v2/invite` from `origin`: check the invite of a local user, co-sign it and
    /// answer it; keep it (through the engine for a room this server has, else with the
    /// stripped state sent) so the user sees it.
    pub async fn receive_invite(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        version: &RoomVersionId,
        event: &RawJsonValue,
        invite_room_state: &[&RawJsonValue],
    ) -> Result<Box<RawJsonValue>> {
        let Some(rules) = room_version::rules(version) else {
            return Err(Error::new(
                ErrorKind::IncompatibleRoomVersion(IncompatibleRoomVersionErrorData::new(version.clone())),
                format!("Room version {version} is not supported by this server"),
            ));
        };
        let mut wire = parse_pdu(event.get(), &rules)
            .map_err(|e| Error::invalid_param(format!("The invite event is malformed: {e}")))?;
        if wire.event_id != event_id || wire.room_id != room_id {
            return Err(Error::invalid_param("The invite event is not the one the path names"));
        }
        // A room this server is in: its server ACL decides whether `origin` may invite.
        if self.states.room(room_id)?.is_some() {
            self.ensure_acl_allows(origin, room_id)?;
        }
        let object = &wire.object;
        let target = field(object, "state_key").and_then(|k| UserId::parse(k).ok());
        let membership = match object.get("content") {
            Some(CanonicalJsonValue::Object(content)) => field(content, "membership").map(str::to_owned),
            _ => None,
        };
        let sender = field(object, "sender").and_then(|s| UserId::parse(s).ok());
        let (Some(target), Some(sender)) = (target, sender) else {
            return Err(Error::invalid_param("The invite names no valid sender and target"));
        };
        if field(object, "type") != Some("m.room.member") || membership.as_deref() != Some("invite") {
            return Err(Error::invalid_param("The event is not an invite"));
        }
        if sender.server_name() != origin {
            return Err(Error::forbidden(format!("{origin} cannot invite on behalf of {sender}")));
        }
        if target.server_name() != self.server_name || !self.users.exists(&target)? {
            return Err(Error::forbidden(format!("{target} is not a user of this server")));
        }
        let mut keys = VerifyKeys::new();
        let servers =
            verify::required_servers(&wire, &rules).map_err(|e| Error::invalid_param(e.to_string()))?;
        self.fetch_keys(&servers, &mut keys).await;
        match verify::check_signatures_and_hash(wire.clone(), &rules, &keys) {
            Verdict::Accepted(_) => {}
            Verdict::Redact(_) => return Err(Error::forbidden("The invite's content hash does not match")),
            Verdict::Reject(why) => {
                return Err(Error::forbidden(format!("The invite does not check: {why}")));
            }
        }
        sign::cosign(&mut wire, &self.server_name, self.server_keys.key_pair(), &rules)
            .map_err(|e| Error::internal(format!("co-signing the invite: {e}")))?;
        let signed = raw(&JsonValue::from(CanonicalJsonValue::Object(wire.object.clone())))?;
        let pdu = wire.into_pdu(&rules).map_err(|e| Error::invalid_param(e.to_string()))?;

        if self.states.room(room_id)?.is_some() {
            // A room this server has: the invite is one of its events.
            let lock = self.timeline.lock_room(room_id).await;
            match self.accept(&lock, origin, &rules, pdu, &mut keys).await {
                Ok(()) if self.members.membership(room_id, &target)?.is_some() => return Ok(signed),
                Ok(()) => {}
                Err(why) => tracing::info!(%room_id, %why, "an invite to a known room was kept aside"),
            }
        }
        let mut state: Vec<Box<RawJsonValue>> =
            invite_room_state.iter().filter_map(|event| stripped(event.get())).collect();
        state.retain(|event| !is_member_event_of(event, &target));
        self.remote_invites.arrived(
            "invite",
            &target,
            room_id,
            version,
            origin,
            event_id,
            signed.clone(),
            state,
        )?;
        tracing::info!(%room_id, %target, %origin, "invited by another server");
        Ok(signed)
    }

    // ----- knocking on a room of another server -----

    /// Knock for `user_id` on a room this server does not have, through the first of `via`
    /// (or the server the room ID names) that lets it: `make_knock`, sign, `send_knock`.
    /// The knock is kept in `RemoteInvites` with the room's state the resident answered,
    /// so the user's sync shows the room under `knock` until an invite arrives, the user
    /// joins, or the knock is retracted through the same server. Answers the knock's ID.
    pub async fn knock_remote(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
        content: &JsonValue,
    ) -> Result<OwnedEventId> {
        let mut last = None;
        for server in self.servers_to_ask(room_id, None, via)? {
            match self.handshake(Handshake::Knock, &server, user_id, room_id, Some(content)).await {
                Ok(done) => {
                    let state: Vec<Box<RawJsonValue>> = done
                        .answer
                        .get("knock_room_state")
                        .and_then(JsonValue::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|event| stripped(&event.to_string()))
                        .filter(|event| !is_member_event_of(event, user_id))
                        .collect();
                    let event_id = done.wire.event_id.clone();
                    self.remote_invites.arrived(
                        "knock",
                        user_id,
                        room_id,
                        &done.version,
                        &server,
                        &event_id,
                        raw(&done.sent)?,
                        state,
                    )?;
                    return Ok(event_id);
                }
                Err(e) => {
                    tracing::info!(%server, %room_id, error = %e, "knocking through a server failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::not_found("No server could be asked")))
    }

    // ----- rejecting an invite through the inviting server -----

    /// Whether `user_id` has a pending invite to, or knock on, `room_id` of another server,
    /// kept aside from the room engine.
    pub fn has_remote_invite(&self, user_id: &UserId, room_id: &RoomId) -> Result<bool> {
        Ok(self.remote_invites.outstanding(user_id, room_id)?.is_some())
    }

    /// Forget a rejected invite to (or retracted knock on) a room of another server (a
    /// pending one stays).
    pub fn forget_remote_invite(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        if self.remote_invites.get(user_id, room_id)?.is_some_and(|r| r.membership == "leave") {
            self.remote_invites.remove(user_id, room_id)?;
        }
        Ok(())
    }

    /// Reject `user_id`'s invite to (or retract their knock on) a room of another server: a
    /// leave made with the server that sent the invite or took the knock (`make_leave`,
    /// sign, `send_leave`). When that server cannot be reached, it is done here only (as
    /// Synapse does), so a server that went away cannot leave an invite or a knock the user
    /// cannot get rid of. Answers the leave's ID.
    pub async fn reject_remote_invite(&self, user_id: &UserId, room_id: &RoomId) -> Result<OwnedEventId> {
        let invite = self
            .remote_invites
            .outstanding(user_id, room_id)?
            .ok_or_else(|| Error::forbidden(format!("{user_id} is not invited to {room_id}")))?;
        let server = <&ServerName>::try_from(invite.via.as_str())
            .map_err(|_| Error::internal("a remote invite without a valid server"))?
            .to_owned();
        let (event_id, event) = match self.leave_through(&server, user_id, room_id).await {
            Ok(done) => done,
            Err(e) => {
                tracing::info!(%room_id, %server, error = %e, "rejecting through the inviting server failed; rejected here only");
                let event_id = EventId::new_v1(&self.server_name);
                let event = raw(&json!({
                    "type": "m.room.member",
                    "state_key": user_id,
                    "sender": user_id,
                    "room_id": room_id,
                    "content": {"membership": "leave"},
                    "origin_server_ts": self.clock.now_ms(),
                    "event_id": event_id,
                }))?;
                (event_id, event)
            }
        };
        self.remote_invites.rejected(user_id, room_id, &event_id, event)?;
        Ok(event_id)
    }

    /// `make_leave`, sign, `send_leave` through `server`: the leave event's ID and JSON.
    pub(super) async fn leave_through(
        &self,
        server: &ServerName,
        user_id: &UserId,
        room_id: &RoomId,
    ) -> Result<(OwnedEventId, Box<RawJsonValue>)> {
        let done = self.handshake(Handshake::Leave, server, user_id, room_id, None).await?;
        Ok((done.wire.event_id.clone(), raw(&done.sent)?))
    }

    /// A membership handshake with `server`, a resident server of the room, for `user_id`:
    /// ask for the template (`make_*`), check that it is this user's event of this kind,
    /// put in `content` (keeping a restricted join's authoriser the resident chose), hash and
    /// sign it, and send it (`send_*`). A refusal is passed on with the resident's error
    /// code, as Synapse passes it on to the client.
    pub(super) async fn handshake(
        &self,
        kind: Handshake,
        server: &ServerName,
        user_id: &UserId,
        room_id: &RoomId,
        content: Option<&JsonValue>,
    ) -> Result<Handshaken> {
        let membership = kind.membership();
        let room = encode(room_id.as_str());
        let mut path =
            format!("/_matrix/federation/v1/make_{membership}/{room}/{}", encode(user_id.as_str()));
        if kind != Handshake::Leave {
            let versions: Vec<String> = room_version::SUPPORTED.iter().map(|v| format!("ver={v}")).collect();
            path = format!("{path}?{}", versions.join("&"));
        }
        let answer = match self.client.request(server, http::Method::GET, &path, None, true).await? {
            Ok(answer) => answer,
            Err(refusal) => return Err(passed_on(server, &refusal)),
        };
        let version = answer
            .get("room_version")
            .and_then(JsonValue::as_str)
            .map_or(Ok(RoomVersionId::V1), RoomVersionId::try_from)
            .map_err(|_| Error::Upstream(format!("{server} answered a bad room version")))?;
        let rules = room_version::rules(&version).ok_or_else(|| {
            Error::Upstream(format!("Room {room_id} is of version {version}, not supported here"))
        })?;
        let mut object: CanonicalJsonObject =
            match answer.get("event").cloned().map(CanonicalJsonValue::try_from) {
                Some(Ok(CanonicalJsonValue::Object(object))) => object,
                _ => return Err(Error::Upstream(format!("{server} answered no {membership} template"))),
            };
        let template_content = match object.get("content") {
            Some(CanonicalJsonValue::Object(content)) => content.clone(),
            _ => CanonicalJsonObject::new(),
        };
        if field(&object, "type") != Some("m.room.member")
            || field(&object, "sender") != Some(user_id.as_str())
            || field(&object, "state_key") != Some(user_id.as_str())
            || field(&object, "room_id") != Some(room_id.as_str())
            || field(&template_content, "membership") != Some(membership)
        {
            return Err(Error::Upstream(format!("{server} answered a template for another event")));
        }
        if let Some(content) = content {
            let mut content = match CanonicalJsonValue::try_from(content.clone()) {
                Ok(CanonicalJsonValue::Object(content)) => content,
                _ => return Err(Error::bad_json("Member event content must be an object")),
            };
            if let Some(authoriser) = template_content.get(JOIN_AUTHORISER) {
                content.insert(JOIN_AUTHORISER.to_owned(), authoriser.clone());
            }
            content.insert("membership".to_owned(), CanonicalJsonValue::String(membership.to_owned()));
            object.insert("content".to_owned(), CanonicalJsonValue::Object(content));
        }
        object.insert(
            "origin_server_ts".to_owned(),
            CanonicalJsonValue::Integer(ms(self.clock.now_ms()).0.into()),
        );
        if object.contains_key("origin") {
            object.insert("origin".to_owned(), CanonicalJsonValue::String(self.server_name.to_string()));
        }
        let wire = sign::hash_and_sign(object, &self.server_name, self.server_keys.key_pair(), &rules)
            .map_err(|e| Error::Upstream(format!("the {membership} could not be signed: {e}")))?;
        let sent = JsonValue::from(CanonicalJsonValue::Object(wire.object.clone()));
        let version_path = if kind == Handshake::Knock { "v1" } else { "v2" };
        // A join asks the resident to leave the members out: the answer comes sooner, and
        // the full state is fetched after the join is answered (`joining`).
        let omit = if kind == Handshake::Join { "?omit_members=true" } else { "" };
        let path = format!(
            "/_matrix/federation/{version_path}/send_{membership}/{room}/{}{omit}",
            encode(wire.event_id.as_str())
        );
        let answer = match self.client.request(server, http::Method::PUT, &path, Some(&sent), true).await? {
            Ok(answer) => answer,
            Err(refusal) => return Err(passed_on(server, &refusal)),
        };
        Ok(Handshaken { version, rules, wire, sent, answer })
    }

    // ----- resident server: joins, knocks and leaves -----

    /// `make_join`, `make_knock`, `make_leave`: the template of the member event `kind`
    /// makes for `user_id` of `origin`, at the room's forward extremities and checked
    /// against its rules, for a server that supports `versions` (joins and knocks). A join
    /// to a restricted room names the local member who authorises it; a knock needs a room
    /// version with knocking and a join rule that lets people knock.
    pub async fn make_membership(
        &self,
        kind: Handshake,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        versions: &[RoomVersionId],
    ) -> Result<(RoomVersionId, Box<RawJsonValue>)> {
        let membership = kind.membership();
        if user_id.server_name() != origin {
            return Err(Error::forbidden(format!("{origin} cannot make a {membership} for {user_id}")));
        }
        let lock = self.timeline.lock_room(room_id).await;
        let (version, rules) = self.rules_of_room(room_id)?;
        self.ensure_acl_allows(origin, room_id)?;
        if kind != Handshake::Leave {
            let accepted = if versions.is_empty() { &[RoomVersionId::V1][..] } else { versions };
            if !accepted.contains(&version) {
                return Err(incompatible(&version, format!("{origin} does not support it")));
            }
        }
        let mut content = json!({"membership": membership});
        match kind {
            Handshake::Knock => self.ensure_knockable(room_id, &version, &rules)?,
            Handshake::Join => {
                if let Some(authoriser) = self.timeline.join_authoriser(room_id, user_id)? {
                    content[JOIN_AUTHORISER] = json!(authoriser);
                }
            }
            Handshake::Leave => {}
        }
        let template = EventTemplate::state(TimelineEventType::RoomMember, user_id.as_str(), content);
        let (version, object) = self.timeline.member_template(&lock, user_id, &template)?;
        Ok((version, raw(&object)?))
    }

    /// A room another server's user may knock on: a room version with knocking (else
    /// `M_INCOMPATIBLE_ROOM_VERSION`) and the join rule `knock`, or `knock_restricted` where
    /// the version has it (else `M_FORBIDDEN`).
    fn ensure_knockable(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        rules: &RoomVersionRules,
    ) -> Result<()> {
        if !rules.authorization.knocking {
            return Err(incompatible(version, "knocking needs a newer room version".to_owned()));
        }
        let join_rule = self
            .timeline
            .state_event(room_id, &StateEventType::RoomJoinRules, "")?
            .and_then(|event| event.pdu.content_as::<RoomJoinRulesEventContent>().ok())
            .map(|content| content.join_rule);
        match join_rule {
            Some(JoinRule::Knock) => Ok(()),
            Some(JoinRule::KnockRestricted(_)) if rules.authorization.knock_restricted_join_rule => Ok(()),
            _ => Err(Error::forbidden(format!("Room {room_id} does not accept knocks"))),
        }
    }

    /// `send_join`, `send_knock`, `send_leave`: the member event of `kind` that `origin`
    /// signed for its user, accepted through the room engine. A join to a restricted room
    /// that names a member of this server as its authoriser is signed by this server first,
    /// when the user still meets the join rule's conditions. Answers the event as accepted,
    /// and the signed copy when this server signed it.
    pub(super) async fn receive_membership(
        &self,
        kind: Handshake,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        pdu: &RawJsonValue,
    ) -> Result<(Arc<StoredEvent>, Option<Box<RawJsonValue>>)> {
        let membership = kind.membership();
        let (version, rules) = self.rules_of_room(room_id)?;
        self.ensure_acl_allows(origin, room_id)?;
        if kind == Handshake::Knock {
            self.ensure_knockable(room_id, &version, &rules)?;
        }
        let authorised = match kind {
            Handshake::Join => self.authorise_join(room_id, pdu, &rules)?,
            _ => None,
        };
        let json = authorised.as_ref().map_or(pdu.get(), |signed| signed.get());
        let mut keys = VerifyKeys::new();
        let pdu: Pdu =
            self.checked_pdu(json, &rules, &mut keys).await.map_err(|(_, why)| Error::invalid_param(why))?;
        super::own_membership(&pdu, origin, room_id, event_id, membership)?;
        let lock = self.timeline.lock_room(room_id).await;
        let outcome = self.timeline.accept_event(&lock, pdu).await?;
        if outcome.status != EventStatus::Accepted {
            return Err(Error::forbidden(format!(
                "The {membership} was not accepted: {}",
                outcome.reason.unwrap_or_else(|| format!("{:?}", outcome.status))
            )));
        }
        Ok((outcome.event, authorised))
    }

    /// A join to a restricted room naming a member of this server as its authoriser: this
    /// server's co-signed copy, once the user is found to meet the join rule's conditions
    /// (the errors of `Timeline::join_authoriser` otherwise). `None` for any other join.
    fn authorise_join(
        &self,
        room_id: &RoomId,
        pdu: &RawJsonValue,
        rules: &RoomVersionRules,
    ) -> Result<Option<Box<RawJsonValue>>> {
        let mut wire = parse_pdu(pdu.get(), rules)
            .map_err(|e| Error::invalid_param(format!("The join event is malformed: {e}")))?;
        let authoriser = match wire.object.get("content") {
            Some(CanonicalJsonValue::Object(content)) => field(content, JOIN_AUTHORISER),
            _ => None,
        };
        let local = authoriser
            .and_then(|user| UserId::parse(user).ok())
            .is_some_and(|user| user.server_name() == self.server_name);
        let joiner = field(&wire.object, "state_key").and_then(|user| UserId::parse(user).ok());
        let (true, Some(joiner)) = (local, joiner) else { return Ok(None) };
        if self.timeline.join_authoriser(room_id, &joiner)?.is_none() {
            return Ok(None);
        }
        sign::cosign(&mut wire, &self.server_name, self.server_keys.key_pair(), rules)
            .map_err(|e| Error::internal(format!("signing the join: {e}")))?;
        Ok(Some(raw(&JsonValue::from(CanonicalJsonValue::Object(wire.object)))?))
    }

    /// `send_knock`: the knock accepted, and the room's state a knocker's server shows its
    /// user (as for an invite: the stripped-state types and the knock, as PDUs).
    pub async fn send_knock(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        pdu: &RawJsonValue,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        let (knock, _) = self.receive_membership(Handshake::Knock, origin, room_id, event_id, pdu).await?;
        self.invite_room_state(room_id, &knock.pdu.sender)
    }

    /// `send_leave` (v2): the leave `origin` signed, accepted through the room engine.
    pub async fn send_leave(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        pdu: &RawJsonValue,
    ) -> Result<()> {
        self.receive_membership(Handshake::Leave, origin, room_id, event_id, pdu).await?;
        Ok(())
    }
}
