//! Room state: read all of it, read one entry, send a state event.

use ruma::{
    api::client::state::{get_state_event_for_key, get_state_events, send_state_event},
    serde::Raw,
};

use super::{event_json, json_body};
use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
};

/// `GET /_matrix/client/v3/rooms/{roomId}/state`
pub async fn get_state_events(
    services: AppState,
    req: Ruma<get_state_events::v3::Request>,
) -> Result<get_state_events::v3::Response> {
    let events = services.room_actions.state(&req.identity.user_id, &req.body.room_id)?;
    let room_state = events
        .iter()
        .map(|e| event_json(&services, &req.identity, e).map(Raw::from_json))
        .collect::<Result<_>>()?;
    Ok(get_state_events::v3::Response::new(room_state))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}` (also without the
/// state key). `?format=event` answers the whole event instead of its content.
pub async fn get_state_event_for_key(
    services: AppState,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<get_state_event_for_key::v3::Response> {
    let body = req.body;
    let event = services.room_actions.state_event(
        &req.identity.user_id,
        &body.room_id,
        &body.event_type.to_string(),
        &body.state_key,
    )?;
    let whole = matches!(body.format, get_state_event_for_key::v3::StateEventFormat::Event);
    let json = if whole { event_json(&services, &req.identity, &event)? } else { event.pdu.content.clone() };
    Ok(get_state_event_for_key::v3::Response::new(json))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}` (also without the
/// state key).
pub async fn send_state_event(
    services: AppState,
    req: Ruma<send_state_event::v3::Request>,
) -> Result<send_state_event::v3::Response> {
    let body = req.body;
    let content = json_body(body.body.json())?;
    if body.timestamp.is_some() {
        return Err(Error::forbidden("Only application services may set the timestamp"));
    }
    let event_id = services
        .room_actions
        .send_state(
            &req.identity.user_id,
            &body.room_id,
            &body.event_type.to_string(),
            &body.state_key,
            content,
        )
        .await?;
    Ok(send_state_event::v3::Response::new(event_id))
}
