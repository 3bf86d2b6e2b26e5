//! Authorization (`ruma::api::federation::authorization`): an event's auth chain, for
//! servers in its room.

use ruma::api::federation::authorization::get_event_authorization;

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
};

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`
pub async fn get_event_authorization(
    services: AppState,
    req: Ruma<get_event_authorization::v1::Request>,
) -> Result<get_event_authorization::v1::Response> {
    let chain = services.room_federation.event_auth(
        &req.identity.server_name,
        &req.body.room_id,
        &req.body.event_id,
    )?;
    Ok(get_event_authorization::v1::Response::new(chain))
}
