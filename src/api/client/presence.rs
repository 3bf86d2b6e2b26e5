//! Presence.

use std::time::Duration;

use ruma::api::client::presence::{get_presence, set_presence};

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    service::rate_limits::Limiter,
};

/// `GET /_matrix/client/v3/presence/{userId}/status`
pub async fn get_presence(
    services: AppState,
    req: Ruma<get_presence::v3::Request>,
) -> Result<get_presence::v3::Response> {
    let target = &req.body.user_id;
    if *target != req.identity.user_id
        && !services.room_actions.share_a_room(&req.identity.user_id, target)?
    {
        return Err(Error::forbidden("You do not share a room with this user"));
    }
    let Some(view) = services.presence.get(target)? else {
        // Someone who never set a presence (or any user, with presence switched off) is
        // offline, as Synapse answers.
        return Ok(get_presence::v3::Response::new(ruma::presence::PresenceState::Offline));
    };
    let mut response = get_presence::v3::Response::new(view.state);
    response.status_msg = view.status_msg;
    response.currently_active = Some(view.currently_active);
    response.last_active_ago = Some(Duration::from_millis(view.last_active_ago_ms));
    Ok(response)
}

/// `PUT /_matrix/client/v3/presence/{userId}/status`
pub async fn set_presence(
    services: AppState,
    req: Ruma<set_presence::v3::Request>,
) -> Result<set_presence::v3::Response> {
    let body = req.body;
    if body.user_id != req.identity.user_id {
        return Err(Error::forbidden("You can only set your own presence"));
    }
    services.rate_limits.check_user(Limiter::Presence, &body.user_id)?;
    services.presence.set(&body.user_id, &body.presence, body.status_msg)?;
    Ok(set_presence::v3::Response::new())
}
