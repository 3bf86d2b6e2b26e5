//! Reporting users.

use ruma::api::client::reporting::report_user;

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    service::rate_limits::Limiter,
};

/// `POST /_matrix/client/v3/users/{userId}/report`
pub async fn report_user(
    services: AppState,
    req: Ruma<report_user::v3::Request>,
) -> Result<report_user::v3::Response> {
    let body = req.body;
    services.rate_limits.check_user(Limiter::Reports, &req.identity.user_id)?;
    if !services.users.exists(&body.user_id)? {
        return Err(Error::not_found("User not found"));
    }
    services.room_actions.report_user(&req.identity.user_id, &body.user_id, Some(body.reason))?;
    Ok(report_user::v3::Response::new())
}
