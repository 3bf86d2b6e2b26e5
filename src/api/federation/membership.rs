//! Membership (`ruma::api::federation::membership`): this server as the resident server of
//! a room another server's user joins (`make_join`, `send_join` v2).

use ruma::api::federation::membership::{create_join_event, prepare_join_event};

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
};

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`: a join template.
pub async fn prepare_join_event(
    services: AppState,
    req: Ruma<prepare_join_event::v1::Request>,
) -> Result<prepare_join_event::v1::Response> {
    let body = &req.body;
    let (version, event) = services
        .room_federation
        .make_join(&req.identity.server_name, &body.room_id, &body.user_id, &body.ver)
        .await?;
    let mut response = prepare_join_event::v1::Response::new(event);
    response.room_version = Some(version);
    Ok(response)
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`: the join accepted, and the
/// room's state before it with its auth chain (`omit_members` is not honoured: the whole
/// state is answered, which the spec allows).
pub async fn create_join_event(
    services: AppState,
    req: Ruma<create_join_event::v2::Request>,
) -> Result<create_join_event::v2::Response> {
    let body = &req.body;
    let answer = services
        .room_federation
        .send_join(&req.identity.server_name, &body.room_id, &body.event_id, &body.pdu)
        .await?;
    let mut state = create_join_event::v2::RoomState::new();
    state.state = answer.state;
    state.auth_chain = answer.auth_chain;
    state.servers_in_room = Some(answer.servers_in_room);
    state.members_omitted = false;
    Ok(create_join_event::v2::Response::new(state))
}
