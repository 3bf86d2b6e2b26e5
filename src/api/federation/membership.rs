//! Membership (`ruma::api::federation::membership`): this server as the resident server of
//! a room another server's user joins, knocks on or leaves (`make_join`, `send_join` v2,
//! `make_knock`, `send_knock`, `make_leave`, `send_leave` v2), and as the server of a user
//! another server invites (`invite` v2).

use ruma::api::federation::membership::{
    RawStrippedState, create_invite, create_join_event, create_knock_event, create_leave_event,
    prepare_join_event, prepare_knock_event, prepare_leave_event,
};
use serde_json::value::RawValue as RawJsonValue;

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
    service::federation::Handshake,
};

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`: a join template.
pub async fn prepare_join_event(
    services: AppState,
    req: Ruma<prepare_join_event::v1::Request>,
) -> Result<prepare_join_event::v1::Response> {
    let body = &req.body;
    let (version, event) = services
        .room_federation
        .make_membership(Handshake::Join, &req.identity.server_name, &body.room_id, &body.user_id, &body.ver)
        .await?;
    let mut response = prepare_join_event::v1::Response::new(event);
    response.room_version = Some(version);
    Ok(response)
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`: the join accepted, and the
/// room's state before it with its auth chain (without most member events when asked to
/// `omit_members`); for a restricted join this server authorised, the join with its
/// signature.
pub async fn create_join_event(
    services: AppState,
    req: Ruma<create_join_event::v2::Request>,
) -> Result<create_join_event::v2::Response> {
    let body = &req.body;
    let answer = services
        .room_federation
        .send_join(&req.identity.server_name, &body.room_id, &body.event_id, &body.pdu, body.omit_members)
        .await?;
    let mut state = create_join_event::v2::RoomState::new();
    state.state = answer.state;
    state.auth_chain = answer.auth_chain;
    state.servers_in_room = Some(answer.servers_in_room);
    state.members_omitted = answer.members_omitted;
    state.event = answer.event;
    Ok(create_join_event::v2::Response::new(state))
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`: a leave template.
pub async fn prepare_leave_event(
    services: AppState,
    req: Ruma<prepare_leave_event::v1::Request>,
) -> Result<prepare_leave_event::v1::Response> {
    let body = &req.body;
    let (version, event) = services
        .room_federation
        .make_membership(Handshake::Leave, &req.identity.server_name, &body.room_id, &body.user_id, &[])
        .await?;
    Ok(prepare_leave_event::v1::Response::new(Some(version), event))
}

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}`: a knock template.
pub async fn prepare_knock_event(
    services: AppState,
    req: Ruma<prepare_knock_event::v1::Request>,
) -> Result<prepare_knock_event::v1::Response> {
    let body = &req.body;
    let (version, event) = services
        .room_federation
        .make_membership(Handshake::Knock, &req.identity.server_name, &body.room_id, &body.user_id, &body.ver)
        .await?;
    Ok(prepare_knock_event::v1::Response::new(version, event))
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`: the knock accepted, and the
/// room's state for the knocker (full PDUs, as the spec asks since v1.16).
pub async fn create_knock_event(
    services: AppState,
    req: Ruma<create_knock_event::v1::Request>,
) -> Result<create_knock_event::v1::Response> {
    let body = &req.body;
    let state = services
        .room_federation
        .send_knock(&req.identity.server_name, &body.room_id, &body.event_id, &body.pdu)
        .await?;
    Ok(create_knock_event::v1::Response::new(state.into_iter().map(RawStrippedState::Pdu).collect()))
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`: the leave accepted.
pub async fn create_leave_event(
    services: AppState,
    req: Ruma<create_leave_event::v2::Request>,
) -> Result<create_leave_event::v2::Response> {
    let body = &req.body;
    services
        .room_federation
        .send_leave(&req.identity.server_name, &body.room_id, &body.event_id, &body.pdu)
        .await?;
    Ok(create_leave_event::v2::Response::new())
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`: a local user invited by another
/// server's user; the invite answered co-signed by this server.
pub async fn create_invite(
    services: AppState,
    req: Ruma<create_invite::v2::Request>,
) -> Result<create_invite::v2::Response> {
    let body = &req.body;
    let state: Vec<&RawJsonValue> = body
        .invite_room_state
        .iter()
        .filter_map(|event| match event {
            RawStrippedState::Pdu(pdu) => Some(pdu.as_ref()),
            #[allow(deprecated)]
            RawStrippedState::Stripped(stripped) => Some(stripped.json()),
            _ => None,
        })
        .collect();
    let event = services
        .room_federation
        .receive_invite(
            &req.identity.server_name,
            &body.room_id,
            &body.event_id,
            &body.room_version,
            &body.event,
            &state,
        )
        .await?;
    Ok(create_invite::v2::Response::new(event))
}
