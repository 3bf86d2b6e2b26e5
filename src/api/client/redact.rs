//! Redacting events.

use ruma::api::client::redact::redact_event;

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
    service::{rate_limits::Limiter, rooms::timeline::Txn},
};

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`
pub async fn redact_event(
    services: AppState,
    req: Ruma<redact_event::v3::Request>,
) -> Result<redact_event::v3::Response> {
    let body = req.body;
    let user_id = &req.identity.user_id;
    let limiter = if services.room_actions.redacts_others(user_id, &body.event_id)? {
        Limiter::AdminRedaction
    } else {
        Limiter::Message
    };
    services.rate_limits.check_user(limiter, user_id)?;
    let scope = req.identity.txn_scope();
    let txn = Txn { device_id: &scope, txn_id: body.txn_id.as_str(), path: &req.context.path };
    let event_id = services
        .room_actions
        .redact(&req.identity.user_id, &body.room_id, &body.event_id, body.reason.as_deref(), txn)
        .await?;
    Ok(redact_event::v3::Response::new(event_id))
}
