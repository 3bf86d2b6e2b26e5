//! Sessions: login flows, login, token refresh, logout.

use ruma::api::client::session::{
    get_login_types::{
        self,
        v3::{LoginType, PasswordLoginType},
    },
    login, logout, logout_all, refresh_token,
};

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
};

/// `GET /_matrix/client/v3/login`
pub async fn get_login_types(
    _: AppState,
    _: Ruma<get_login_types::v3::Request>,
) -> Result<get_login_types::v3::Response> {
    Ok(get_login_types::v3::Response::new(vec![LoginType::Password(PasswordLoginType::new())]))
}

/// `POST /_matrix/client/v3/login`
pub async fn login(services: AppState, req: Ruma<login::v3::Request>) -> Result<login::v3::Response> {
    services.accounts.login(req.body, req.context.client_ip).await
}

/// `POST /_matrix/client/v3/refresh`
pub async fn refresh_token(
    services: AppState,
    req: Ruma<refresh_token::v3::Request>,
) -> Result<refresh_token::v3::Response> {
    let issued = services.devices.refresh(&req.body.refresh_token)?;
    let mut response = refresh_token::v3::Response::new(issued.access_token);
    response.refresh_token = issued.refresh_token;
    response.expires_in_ms = issued.expires_in;
    Ok(response)
}

/// `POST /_matrix/client/v3/logout`
pub async fn logout(services: AppState, req: Ruma<logout::v3::Request>) -> Result<logout::v3::Response> {
    services.accounts.logout(&req.identity.user_id, &req.identity.device_id)?;
    Ok(logout::v3::Response::new())
}

/// `POST /_matrix/client/v3/logout/all`
pub async fn logout_all(
    services: AppState,
    req: Ruma<logout_all::v3::Request>,
) -> Result<logout_all::v3::Response> {
    services.accounts.logout_all(&req.identity.user_id)?;
    Ok(logout_all::v3::Response::new())
}
