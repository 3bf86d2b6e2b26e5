//! Room state: read all of it, read one entry, send a state event.

use ruma::{
    api::client::state::{get_state_event_for_key, get_state_events, send_state_event},
    events::StateEventType,
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
    if body.event_type == StateEventType::RoomMember {
        // A membership change goes through the membership flow its `membership` names,
        // as on Synapse: joining by writing one's own member event works, and invites,
        // kicks and bans get the same checks as through their endpoints.
        let target = ruma::UserId::parse(&body.state_key).map_err(|e| {
            Error::invalid_param(format!("The state key of a member event is a user ID: {e}"))
        })?;
        let event_id = services
            .membership
            .set_member_state(&req.identity.user_id, &body.room_id, &target, content)
            .await?;
        return Ok(send_state_event::v3::Response::new(event_id));
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
