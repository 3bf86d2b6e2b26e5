//! The user directory: searching users by ID or display name.

use ruma::api::client::user_directory::search_users;

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
    service::rate_limits::Limiter,
};

/// `POST /_matrix/client/v3/user_directory/search`
pub async fn search_users(
    services: AppState,
    req: Ruma<search_users::v3::Request>,
) -> Result<search_users::v3::Response> {
    services.rate_limits.check_user(Limiter::UserDirectory, &req.identity.user_id)?;
    let page = services.user_directory.search(
        &req.identity.user_id,
        &req.body.search_term,
        req.body.limit.into(),
    )?;
    Ok(search_users::v3::Response::new(page.users, page.limited))
}
