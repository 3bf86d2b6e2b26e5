//! Typing notifications.

use ruma::api::client::typing::create_typing_event::{self, v3::Typing};

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
};

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`
pub async fn create_typing_event(
    services: AppState,
    req: Ruma<create_typing_event::v3::Request>,
) -> Result<create_typing_event::v3::Response> {
    let body = req.body;
    if body.user_id != req.identity.user_id {
        return Err(Error::forbidden("You can only set your own typing state"));
    }
    let timeout = match body.state {
        Typing::Yes(info) => Some(info.timeout),
        _ => None,
    };
    services.typing.set(&body.user_id, &body.room_id, timeout)?;
    Ok(create_typing_event::v3::Response::new())
}
