//! Sending message events.

use ruma::api::client::message::send_message_event;

use super::json_body;
use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    service::rooms::timeline::Txn,
};

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`
pub async fn send_message_event(
    services: AppState,
    req: Ruma<send_message_event::v3::Request>,
) -> Result<send_message_event::v3::Response> {
    let body = req.body;
    let content = json_body(body.body.json())?;
    if body.timestamp.is_some() {
        return Err(Error::forbidden("Only application services may set the timestamp"));
    }
    let txn = Txn { device_id: &req.identity.device_id, txn_id: body.txn_id.as_str() };
    let event_id = services
        .room_actions
        .send_message(&req.identity.user_id, &body.room_id, &body.event_type.to_string(), content, txn)
        .await?;
    Ok(send_message_event::v3::Response::new(event_id))
}
