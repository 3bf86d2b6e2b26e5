//! Accounts: registration, availability, whoami, password change, deactivation, OpenID tokens.

use ruma::api::client::account::{
    ThirdPartyIdRemovalStatus, add_3pid, bind_3pid, change_password, check_registration_token_validity,
    deactivate, delete_3pid, get_3pids, get_username_availability, register,
    request_3pid_management_token_via_email, request_3pid_management_token_via_msisdn, request_openid_token,
    request_password_change_token_via_email, request_password_change_token_via_msisdn,
    request_registration_token_via_email, request_registration_token_via_msisdn, unbind_3pid, whoami,
};
use ruma::authentication::TokenType;

use super::required;
use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    service::threepids::{Medium, TokenPurpose},
};

/// `POST /_matrix/client/v3/register`
pub async fn register(
    services: AppState,
    req: Ruma<register::v3::Request>,
) -> Result<register::v3::Response> {
    services.accounts.register(req.body, req.identity.as_ref(), &req.context).await
}

/// Without a login (`inhibit_login`) a registration answer has no device: the key is left out,
/// as Synapse leaves it, rather than sent as the `null` ruma writes.
pub fn fill_register(json: &mut serde_json::Value) {
    if let Some(object) = json.as_object_mut()
        && object.get("device_id").is_some_and(serde_json::Value::is_null)
    {
        object.remove("device_id");
    }
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

/// `POST /_matrix/client/v3/user/{userId}/openid/request_token`: a token a third party (Element
/// Call's LiveKit JWT service) exchanges at `/_matrix/federation/v1/openid/userinfo` for the
/// user's ID. Only for oneself.
pub async fn request_openid_token(
    services: AppState,
    req: Ruma<request_openid_token::v3::Request>,
) -> Result<request_openid_token::v3::Response> {
    if req.body.user_id != req.identity.user_id {
        return Err(Error::forbidden("Cannot request OpenID tokens for other users"));
    }
    let issued = services.openid.issue(&req.identity.user_id)?;
    Ok(request_openid_token::v3::Response::new(
        issued.token,
        TokenType::Bearer,
        services.config.server_name.clone(),
        issued.expires_in,
    ))
}

/// `GET /_matrix/client/v3/account/whoami`
pub async fn whoami(_: AppState, req: Ruma<whoami::v3::Request>) -> Result<whoami::v3::Response> {
    let mut response = whoami::v3::Response::new(req.identity.user_id, false);
    response.device_id = req.identity.device_id;
    Ok(response)
}

/// `POST /_matrix/client/v3/account/password`
pub async fn change_password(
    services: AppState,
    req: Ruma<change_password::v3::Request>,
) -> Result<change_password::v3::Response> {
    let who = required(req.identity)?.device_identity()?;
    services.accounts.change_password(&who, &req.context, req.body).await
}

/// `POST /_matrix/client/v3/account/deactivate`
pub async fn deactivate(
    services: AppState,
    req: Ruma<deactivate::v3::Request>,
) -> Result<deactivate::v3::Response> {
    let who = required(req.identity)?.device_identity()?;
    services.accounts.deactivate(&who, &req.context, req.body).await
}

/// `GET /_matrix/client/v3/account/3pid`
pub async fn get_3pids(
    services: AppState,
    req: Ruma<get_3pids::v3::Request>,
) -> Result<get_3pids::v3::Response> {
    Ok(get_3pids::v3::Response::new(services.threepids.list(&req.identity.user_id)?))
}

/// `/account/3pid` always carries its list, empty too (ruma leaves an empty one out); Element
/// reads it without checking.
pub fn fill_3pids(json: &mut serde_json::Value) {
    if let Some(object) = json.as_object_mut() {
        object.entry("threepids").or_insert_with(|| serde_json::json!([]));
    }
}

/// `POST /_matrix/client/v3/account/3pid/add`
pub async fn add_3pid(
    services: AppState,
    req: Ruma<add_3pid::v3::Request>,
) -> Result<add_3pid::v3::Response> {
    services.threepids.add(&req.identity.user_id)?;
    Ok(add_3pid::v3::Response::new())
}

/// `POST /_matrix/client/v3/account/3pid/bind`
pub async fn bind_3pid(
    services: AppState,
    req: Ruma<bind_3pid::v3::Request>,
) -> Result<bind_3pid::v3::Response> {
    services.threepids.bind(&req.identity.user_id)?;
    Ok(bind_3pid::v3::Response::new())
}

fn removal_status(unbound: bool) -> ThirdPartyIdRemovalStatus {
    if unbound { ThirdPartyIdRemovalStatus::Success } else { ThirdPartyIdRemovalStatus::NoSupport }
}

/// `POST /_matrix/client/v3/account/3pid/delete`
pub async fn delete_3pid(
    services: AppState,
    req: Ruma<delete_3pid::v3::Request>,
) -> Result<delete_3pid::v3::Response> {
    let medium = req.body.medium.as_str();
    let unbound = services.threepids.delete(&req.identity.user_id, medium, &req.body.address)?;
    Ok(delete_3pid::v3::Response::new(removal_status(unbound)))
}

/// `POST /_matrix/client/v3/account/3pid/unbind`
pub async fn unbind_3pid(
    services: AppState,
    req: Ruma<unbind_3pid::v3::Request>,
) -> Result<unbind_3pid::v3::Response> {
    let unbound = services.threepids.remove(&req.identity.user_id)?;
    Ok(unbind_3pid::v3::Response::new(removal_status(unbound)))
}

/// `POST /_matrix/client/v3/account/3pid/email/requestToken`
pub async fn request_3pid_management_token_via_email(
    services: AppState,
    _: Ruma<request_3pid_management_token_via_email::v3::Request>,
) -> Result<request_3pid_management_token_via_email::v3::Response> {
    match services.threepids.request_token(Medium::Email, TokenPurpose::AddToAccount)? {}
}

/// `POST /_matrix/client/v3/account/3pid/msisdn/requestToken`
pub async fn request_3pid_management_token_via_msisdn(
    services: AppState,
    _: Ruma<request_3pid_management_token_via_msisdn::v3::Request>,
) -> Result<request_3pid_management_token_via_msisdn::v3::Response> {
    match services.threepids.request_token(Medium::PhoneNumber, TokenPurpose::AddToAccount)? {}
}

/// `POST /_matrix/client/v3/register/email/requestToken`
pub async fn request_registration_token_via_email(
    services: AppState,
    _: Ruma<request_registration_token_via_email::v3::Request>,
) -> Result<request_registration_token_via_email::v3::Response> {
    match services.threepids.request_token(Medium::Email, TokenPurpose::Registration)? {}
}

/// `POST /_matrix/client/v3/register/msisdn/requestToken`
pub async fn request_registration_token_via_msisdn(
    services: AppState,
    _: Ruma<request_registration_token_via_msisdn::v3::Request>,
) -> Result<request_registration_token_via_msisdn::v3::Response> {
    match services.threepids.request_token(Medium::PhoneNumber, TokenPurpose::Registration)? {}
}

/// `POST /_matrix/client/v3/account/password/email/requestToken`
pub async fn request_password_change_token_via_email(
    services: AppState,
    _: Ruma<request_password_change_token_via_email::v3::Request>,
) -> Result<request_password_change_token_via_email::v3::Response> {
    match services.threepids.request_token(Medium::Email, TokenPurpose::PasswordReset)? {}
}

/// `POST /_matrix/client/v3/account/password/msisdn/requestToken`
pub async fn request_password_change_token_via_msisdn(
    services: AppState,
    _: Ruma<request_password_change_token_via_msisdn::v3::Request>,
) -> Result<request_password_change_token_via_msisdn::v3::Response> {
    match services.threepids.request_token(Medium::PhoneNumber, TokenPurpose::PasswordReset)? {}
}
