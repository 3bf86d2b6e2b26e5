//! Sessions: login flows, login, token refresh, logout.

use ruma::api::client::session::{
    get_login_types::{
        self,
        v3::{LoginType, PasswordLoginType},
    },
    login::{
        self,
        v3::{DiscoveryInfo, HomeserverInfo},
    },
    logout, logout_all, refresh_token,
};

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
};

/// `GET /_matrix/client/v3/login`
pub async fn get_login_types(
    services: AppState,
    _: Ruma<get_login_types::v3::Request>,
) -> Result<get_login_types::v3::Response> {
    let mut types = Vec::new();
    // Listed first when on, as Synapse lists it.
    if services.jwt.enabled() {
        let jwt = LoginType::new("org.matrix.login.jwt", serde_json::Map::new())
            .map_err(|e| crate::Error::internal(format!("JWT login type: {e}")))?;
        types.push(jwt);
    }
    types.push(LoginType::Password(PasswordLoginType::new()));
    if services.appservices.any() {
        types.push(LoginType::ApplicationService(Default::default()));
    }
    Ok(get_login_types::v3::Response::new(types))
}

/// `POST /_matrix/client/v3/login`. With a client base URL configured the answer carries it as
/// `well_known`, as Synapse's does, so a client that found the server by another name
/// (Element X after typing the server name) reconfigures itself.
pub async fn login(services: AppState, req: Ruma<login::v3::Request>) -> Result<login::v3::Response> {
    let mut response = services.accounts.login(req.body, req.identity.as_ref(), &req.context).await?;
    response.well_known =
        services.config.well_known.client.clone().map(|url| DiscoveryInfo::new(HomeserverInfo::new(url)));
    Ok(response)
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
    services.accounts.logout(&req.context, &req.identity.user_id, req.identity.device()?)?;
    Ok(logout::v3::Response::new())
}

/// `POST /_matrix/client/v3/logout/all`
pub async fn logout_all(
    services: AppState,
    req: Ruma<logout_all::v3::Request>,
) -> Result<logout_all::v3::Response> {
    services.accounts.logout_all(&req.context, &req.identity.user_id)?;
    Ok(logout_all::v3::Response::new())
}
