//! Sending message events and reading a room's history.

use ruma::{
    api::{
        Direction as ApiDirection,
        client::message::{get_message_events, send_message_event},
    },
    serde::Raw,
};

use super::{
    delayed_events::{SendAnswer, delay_param},
    json_body, parse_position_token,
};
use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    service::{
        rate_limits::Limiter,
        rooms::{
            delayed::{DelayRequest, Scheduled},
            render::Viewer,
            timeline::Txn,
        },
    },
    storage::Direction,
};

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`; with
/// `?org.matrix.msc4140.delay=<ms>`, schedules a delayed event (MSC4140) and answers its
/// `delay_id`.
pub async fn send_message_event(
    services: AppState,
    req: Ruma<send_message_event::v3::Request>,
) -> Result<SendAnswer<send_message_event::v3::Response>> {
    let body = req.body;
    let content = json_body(body.body.json())?;
    if body.timestamp.is_some() && req.identity.appservice.is_none() {
        return Err(Error::forbidden("Only application services may set the timestamp"));
    }
    // Scheduling a delayed event counts as sending it (as Synapse counts it).
    services.rate_limits.check_user(Limiter::Message, &req.identity.user_id)?;
    let scope = req.identity.txn_scope();
    let txn = Txn { device_id: &scope, txn_id: body.txn_id.as_str(), path: &req.context.path };
    if let Some(delay_ms) = delay_param(req.query.as_deref())? {
        let kind = body.event_type.to_string();
        let request = DelayRequest {
            room_id: &body.room_id,
            kind: &kind,
            state_key: None,
            content,
            delay_ms,
            txn: Some(txn),
        };
        return Ok(match services.delayed_actions.schedule(&req.identity.user_id, &scope, request)? {
            Scheduled::Delayed(delay_id) => SendAnswer::Delayed(delay_id),
            Scheduled::AlreadySent(event_id) => {
                SendAnswer::Sent(send_message_event::v3::Response::new(event_id))
            }
        });
    }
    let event_id = services
        .room_actions
        .send_message(
            &req.identity.user_id,
            &body.room_id,
            &body.event_type.to_string(),
            content,
            Some(txn),
            body.timestamp.map(|ts| ts.get().into()),
        )
        .await?;
    Ok(SendAnswer::Sent(send_message_event::v3::Response::new(event_id)))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`
pub async fn get_message_events(
    services: AppState,
    req: Ruma<get_message_events::v3::Request>,
) -> Result<get_message_events::v3::Response> {
    let body = &req.body;
    let viewer = Viewer { user_id: &req.identity.user_id, device_id: req.identity.device_id.as_deref() };
    let direction = match body.dir {
        ApiDirection::Forward => Direction::Forward,
        _ => Direction::Reverse,
    };
    let from = body.from.as_deref().map(parse_position_token).transpose()?;
    let to = body.to.as_deref().map(parse_position_token).transpose()?;
    let limit = usize::try_from(u64::from(body.limit)).unwrap_or(usize::MAX);
    // History older than this server has is fetched from another server in the room.
    let page = services
        .room_federation
        .messages(viewer, &body.room_id, from, to, direction, limit, &body.filter)
        .await?;
    let mut response = get_message_events::v3::Response::new();
    response.start = format!("s{}", page.start);
    response.end = page.end.map(|e| format!("s{e}"));
    response.chunk = page.chunk.into_iter().map(Raw::from_json).collect();
    response.state = page.state.into_iter().map(Raw::from_json).collect();
    Ok(response)
}
