//! Events (`ruma::api::federation::event`): an event, the state before one (or its IDs),
//! and the events missing between two points of a room's graph, for servers in the room.

use ruma::{
    MilliSecondsSinceUnixEpoch,
    api::federation::event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
};

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
};

/// `GET /_matrix/federation/v1/event/{eventId}`
pub async fn get_event(
    services: AppState,
    req: Ruma<get_event::v1::Request>,
) -> Result<get_event::v1::Response> {
    let pdu = services.room_federation.event(&req.identity.server_name, &req.body.event_id)?;
    Ok(get_event::v1::Response::new(
        services.config.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        pdu,
    ))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}?event_id=`
pub async fn get_room_state_ids(
    services: AppState,
    req: Ruma<get_room_state_ids::v1::Request>,
) -> Result<get_room_state_ids::v1::Response> {
    let (state, chain) = services.room_federation.state_ids(
        &req.identity.server_name,
        &req.body.room_id,
        &req.body.event_id,
    )?;
    Ok(get_room_state_ids::v1::Response::new(chain, state))
}

/// `GET /_matrix/federation/v1/state/{roomId}?event_id=`
pub async fn get_room_state(
    services: AppState,
    req: Ruma<get_room_state::v1::Request>,
) -> Result<get_room_state::v1::Response> {
    let (state, chain) =
        services.room_federation.state(&req.identity.server_name, &req.body.room_id, &req.body.event_id)?;
    Ok(get_room_state::v1::Response::new(chain, state))
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`
pub async fn get_missing_events(
    services: AppState,
    req: Ruma<get_missing_events::v1::Request>,
) -> Result<get_missing_events::v1::Response> {
    let body = &req.body;
    let events = services.room_federation.missing_events(
        &req.identity.server_name,
        &body.room_id,
        &body.earliest_events,
        &body.latest_events,
        body.limit.into(),
        body.min_depth.into(),
    )?;
    Ok(get_missing_events::v1::Response::new(events))
}
