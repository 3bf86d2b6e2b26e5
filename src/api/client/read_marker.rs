//! The fully-read marker and read receipts in one call.

use ruma::api::client::read_marker::set_read_marker;

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
    service::rooms::receipts,
};

/// `POST /_matrix/client/v3/rooms/{roomId}/read_markers`
pub async fn set_read_marker(
    services: AppState,
    req: Ruma<set_read_marker::v3::Request>,
) -> Result<set_read_marker::v3::Response> {
    let body = req.body;
    let user_id = &req.identity.user_id;
    if let Some(event_id) = &body.fully_read {
        services.receipts.set_fully_read(user_id, &body.room_id, event_id)?;
    }
    if let Some(event_id) = &body.read_receipt {
        services.notifications.read(user_id, &body.room_id, receipts::READ, event_id, None)?;
    }
    if let Some(event_id) = &body.private_read_receipt {
        services.notifications.read(user_id, &body.room_id, receipts::READ_PRIVATE, event_id, None)?;
    }
    if body.read_receipt.is_some() || body.private_read_receipt.is_some() {
        services.push_gateways.read_moved(user_id)?;
    }
    Ok(set_read_marker::v3::Response::new())
}
