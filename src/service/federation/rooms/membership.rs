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

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId, RoomVersionId, ServerName,
    UserId,
    api::error::{ErrorKind, IncompatibleRoomVersionErrorData},
    events::TimelineEventType,
};
use serde_json::{Value as JsonValue, json, value::RawValue as RawJsonValue};

use super::{RoomFederation, encode, ms};
use crate::{
    Error, Result,
    matrix::{
        federation::{
            format::parse_pdu,
            sign,
            verify::{self, ServerKeys as VerifyKeys, Verdict},
        },
        pdu::{EventTemplate, Pdu},
        room_version,
    },
    service::{
        federation::client::refusal_error,
        rooms::{timeline::RoomLock, view::STRIPPED_STATE_TYPES},
    },
    storage::tables::EventStatus,
};

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
        state.retain(|event| {
            serde_json::from_str::<JsonValue>(event.get())
                .is_ok_and(|e| e["state_key"] != json!(target.as_str()) || e["type"] != "m.room.member")
        });
        self.remote_invites.invited(&target, room_id, version, origin, event_id, signed.clone(), state)?;
        tracing::info!(%room_id, %target, %origin, "invited by another server");
        Ok(signed)
    }

    // ----- rejecting an invite through the inviting server -----

    /// Whether `user_id` has a pending invite to `room_id` from another server, kept aside
    /// from the room engine.
    pub fn has_remote_invite(&self, user_id: &UserId, room_id: &RoomId) -> Result<bool> {
        Ok(self.remote_invites.pending(user_id, room_id)?.is_some())
    }

    /// Forget a rejected invite to a room of another server (a pending one stays).
    pub fn forget_remote_invite(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        if self.remote_invites.get(user_id, room_id)?.is_some_and(|r| r.membership != "invite") {
            self.remote_invites.remove(user_id, room_id)?;
        }
        Ok(())
    }

    /// Reject `user_id`'s invite to a room of another server: a leave made with the
    /// inviting server (`make_leave`, sign, `send_leave`). When that server cannot be
    /// reached, the invite is rejected here only (as Synapse does), so a server that went
    /// away cannot leave an invite the user cannot get rid of. Answers the leave's ID.
    pub async fn reject_remote_invite(&self, user_id: &UserId, room_id: &RoomId) -> Result<OwnedEventId> {
        let invite = self
            .remote_invites
            .pending(user_id, room_id)?
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
    async fn leave_through(
        &self,
        server: &ServerName,
        user_id: &UserId,
        room_id: &RoomId,
    ) -> Result<(OwnedEventId, Box<RawJsonValue>)> {
        let path = format!(
            "/_matrix/federation/v1/make_leave/{}/{}",
            encode(room_id.as_str()),
            encode(user_id.as_str())
        );
        let answer = self.client.get_json(server, &path).await?;
        let version = answer
            .get("room_version")
            .and_then(JsonValue::as_str)
            .map_or(Ok(RoomVersionId::V1), RoomVersionId::try_from)
            .map_err(|_| Error::Upstream(format!("{server} answered a bad room version")))?;
        let rules = room_version::rules(&version)
            .ok_or_else(|| Error::Upstream(format!("Room version {version} is not supported here")))?;
        let mut object: CanonicalJsonObject =
            match answer.get("event").cloned().map(CanonicalJsonValue::try_from) {
                Some(Ok(CanonicalJsonValue::Object(object))) => object,
                _ => return Err(Error::Upstream(format!("{server} answered no leave template"))),
            };
        let membership = match object.get("content") {
            Some(CanonicalJsonValue::Object(content)) => field(content, "membership"),
            _ => None,
        };
        if field(&object, "type") != Some("m.room.member")
            || field(&object, "sender") != Some(user_id.as_str())
            || field(&object, "state_key") != Some(user_id.as_str())
            || field(&object, "room_id") != Some(room_id.as_str())
            || membership != Some("leave")
        {
            return Err(Error::Upstream(format!("{server} answered a template for another event")));
        }
        object.insert(
            "origin_server_ts".to_owned(),
            CanonicalJsonValue::Integer(ms(self.clock.now_ms()).0.into()),
        );
        if object.contains_key("origin") {
            object.insert("origin".to_owned(), CanonicalJsonValue::String(self.server_name.to_string()));
        }
        let wire = sign::hash_and_sign(object, &self.server_name, self.server_keys.key_pair(), &rules)
            .map_err(|e| Error::Upstream(format!("the leave could not be signed: {e}")))?;
        let event_id = wire.event_id.clone();
        let body = JsonValue::from(CanonicalJsonValue::Object(wire.object));
        let path = format!(
            "/_matrix/federation/v2/send_leave/{}/{}",
            encode(room_id.as_str()),
            encode(event_id.as_str())
        );
        match self.client.request(server, http::Method::PUT, &path, Some(&body), true).await? {
            Ok(_) => Ok((event_id, raw(&body)?)),
            Err(refusal) => Err(refusal_error(server, &refusal)),
        }
    }

    // ----- resident server: leaves -----

    /// `make_leave`: the leave template for `user_id` of `origin`.
    pub async fn make_leave(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<(RoomVersionId, Box<RawJsonValue>)> {
        if user_id.server_name() != origin {
            return Err(Error::forbidden(format!("{origin} cannot make a leave for {user_id}")));
        }
        let lock = self.timeline.lock_room(room_id).await;
        self.rules_of_room(room_id)?;
        self.ensure_acl_allows(origin, room_id)?;
        let template = EventTemplate::state(
            TimelineEventType::RoomMember,
            user_id.as_str(),
            json!({"membership": "leave"}),
        );
        let (version, object) = self.timeline.member_template(&lock, user_id, &template)?;
        Ok((version, raw(&object)?))
    }

    /// `send_leave` (v2): the leave `origin` signed, accepted through the room engine.
    pub async fn send_leave(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        pdu: &RawJsonValue,
    ) -> Result<()> {
        let (_, rules) = self.rules_of_room(room_id)?;
        self.ensure_acl_allows(origin, room_id)?;
        let mut keys = VerifyKeys::new();
        let pdu: Pdu = self
            .checked_pdu(pdu.get(), &rules, &mut keys)
            .await
            .map_err(|(_, why)| Error::invalid_param(why))?;
        super::own_membership(&pdu, origin, room_id, event_id, "leave")?;
        let lock = self.timeline.lock_room(room_id).await;
        let outcome = self.timeline.accept_event(&lock, pdu).await?;
        if outcome.status != EventStatus::Accepted {
            return Err(Error::forbidden(format!(
                "The leave was not accepted: {}",
                outcome.reason.unwrap_or_else(|| format!("{:?}", outcome.status))
            )));
        }
        Ok(())
    }
}
