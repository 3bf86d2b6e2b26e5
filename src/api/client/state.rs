//! Room state: read all of it, read one entry, send a state event.

use ruma::{
    api::client::state::{get_state_event_for_key, get_state_events, send_state_event},
    events::StateEventType,
    serde::Raw,
};

use super::{
    delayed_events::{SendAnswer, delay_param},
    event_json, json_body,
};
use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    service::{
        rate_limits::Limiter,
        rooms::delayed::{DelayRequest, Scheduled},
    },
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
/// state key); with `?org.matrix.msc4140.delay=<ms>`, schedules a delayed state event
/// (MSC4140) and answers its `delay_id` (every such request schedules one: this endpoint has
/// no transaction ID).
pub async fn send_state_event(
    services: AppState,
    req: Ruma<send_state_event::v3::Request>,
) -> Result<SendAnswer<send_state_event::v3::Response>> {
    let body = req.body;
    let content = json_body(body.body.json())?;
    if body.timestamp.is_some() && req.identity.appservice.is_none() {
        return Err(Error::forbidden("Only application services may set the timestamp"));
    }
    let delay = delay_param(req.query.as_deref())?;
    // State counts as messages do, except membership, which the join and invite limits
    // count (scheduling a delayed event counts as sending it).
    if delay.is_some() || body.event_type != StateEventType::RoomMember {
        services.rate_limits.check_user(Limiter::Message, &req.identity.user_id)?;
    }
    if let Some(delay_ms) = delay {
        let kind = body.event_type.to_string();
        let request = DelayRequest {
            room_id: &body.room_id,
            kind: &kind,
            state_key: Some(&body.state_key),
            content,
            delay_ms,
            txn: None,
        };
        return match services.delayed_actions.schedule(
            &req.identity.user_id,
            &req.identity.txn_scope(),
            request,
        )? {
            Scheduled::Delayed(delay_id) => Ok(SendAnswer::Delayed(delay_id)),
            Scheduled::AlreadySent(_) => Err(Error::internal("a state event has no transaction")),
        };
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
        return Ok(SendAnswer::Sent(send_state_event::v3::Response::new(event_id)));
    }
    let event_id = services
        .room_actions
        .send_state(
            &req.identity.user_id,
            &body.room_id,
            &body.event_type.to_string(),
            &body.state_key,
            content,
            body.timestamp.map(|ts| ts.get().into()),
        )
        .await?;
    Ok(SendAnswer::Sent(send_state_event::v3::Response::new(event_id)))
}
