//! Accounts: registration, availability, whoami, password change, deactivation.

use ruma::api::client::account::{
    change_password, check_registration_token_validity, deactivate, get_username_availability, register,
    whoami,
};

use super::required;
use crate::{
    Result,
    api::{AppState, ruma::Ruma},
};

/// `POST /_matrix/client/v3/register`
pub async fn register(
    services: AppState,
    req: Ruma<register::v3::Request>,
) -> Result<register::v3::Response> {
    services.accounts.register(req.body, &req.context).await
}

/// `GET /_matrix/client/v3/register/available`
pub async fn get_username_availability(
    services: AppState,
    req: Ruma<get_username_availability::v3::Request>,
) -> Result<get_username_availability::v3::Response> {
    services.accounts.username_available(&req.body.username)?;
    Ok(get_username_availability::v3::Response::new(true))
}

/// `GET /_matrix/client/v1/register/m.login.registration_token/validity`
pub async fn check_registration_token_validity(
    services: AppState,
    req: Ruma<check_registration_token_validity::v1::Request>,
) -> Result<check_registration_token_validity::v1::Response> {
    let valid = services.accounts.registration_token_valid(&req.body.token)?;
    Ok(check_registration_token_validity::v1::Response::new(valid))
}

/// `GET /_matrix/client/v3/account/whoami`
pub async fn whoami(_: AppState, req: Ruma<whoami::v3::Request>) -> Result<whoami::v3::Response> {
    let mut response = whoami::v3::Response::new(req.identity.user_id, false);
    response.device_id = Some(req.identity.device_id);
    Ok(response)
}

/// `POST /_matrix/client/v3/account/password`
pub async fn change_password(
    services: AppState,
    req: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response> {
    let who = required(req.identity)?;
    services.accounts.change_password(&who, &req.context, req.body).await
}

/// `POST /_matrix/client/v3/account/deactivate`
pub async fn deactivate(
    services: AppState,
    req: Ruma<deactivate::v3::Request>,
) -> Result<deactivate::v3::Response> {
    let who = required(req.identity)?;
    services.accounts.deactivate(&who, &req.context, req.body).await
}
