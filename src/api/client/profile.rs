//! Profiles: display name and avatar of local users, and of remote users through their
//! server's profile query when federation is on.

use ruma::{
    UserId,
    api::client::profile::{get_avatar_url, get_display_name, get_profile, set_avatar_url, set_display_name},
    profile::ProfileFieldValue,
};

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    service::Services,
    storage::tables::ProfileRecord,
};

async fn profile_of(services: &Services, user_id: &UserId, field: Option<&str>) -> Result<ProfileRecord> {
    if user_id.server_name() != services.config.server_name {
        if !services.federation.enabled() {
            return Err(Error::on_another_server(user_id));
        }
        let answer = services.federation.query_profile(user_id, field).await?;
        return Ok(ProfileRecord {
            displayname: answer.get("displayname").and_then(|v| v.as_str()).map(str::to_owned),
            avatar_url: answer.get("avatar_url").and_then(|v| v.as_str()).map(Into::into),
        });
    }
    services.users.profile(user_id)?.ok_or_else(|| Error::not_found("Profile was not found"))
}

fn ensure_self(identity: &UserId, target: &UserId) -> Result<()> {
    if identity != target {
        return Err(Error::forbidden("Cannot set another user's profile"));
    }
    Ok(())
}

/// `GET /_matrix/client/v3/profile/{userId}`
pub async fn get_profile(
    services: AppState,
    req: Ruma<get_profile::v3::Request>,
) -> Result<get_profile::v3::Response> {
    let profile = profile_of(&services, &req.body.user_id, None).await?;
    let mut fields = Vec::new();
    if let Some(name) = profile.displayname {
        fields.push(ProfileFieldValue::DisplayName(name));
    }
    if let Some(url) = profile.avatar_url {
        fields.push(ProfileFieldValue::AvatarUrl(url));
    }
    Ok(fields.into_iter().collect())
}

/// `GET /_matrix/client/v3/profile/{userId}/displayname`
pub async fn get_display_name(
    services: AppState,
    req: Ruma<get_display_name::v3::Request>,
) -> Result<get_display_name::v3::Response> {
    Ok(get_display_name::v3::Response::new(
        profile_of(&services, &req.body.user_id, Some("displayname")).await?.displayname,
    ))
}

/// `PUT /_matrix/client/v3/profile/{userId}/displayname`
pub async fn set_display_name(
    services: AppState,
    req: Ruma<set_display_name::v3::Request>,
) -> Result<set_display_name::v3::Response> {
    ensure_self(&req.identity.user_id, &req.body.user_id)?;
    services.users.ensure_not_suspended(&req.identity.user_id, "Updating profile")?;
    services.users.set_displayname(&req.body.user_id, req.body.displayname)?;
    services.membership.profile_changed(&req.body.user_id).await?;
    Ok(set_display_name::v3::Response::new())
}

/// `GET /_matrix/client/v3/profile/{userId}/avatar_url`
pub async fn get_avatar_url(
    services: AppState,
    req: Ruma<get_avatar_url::v3::Request>,
) -> Result<get_avatar_url::v3::Response> {
    Ok(get_avatar_url::v3::Response::new(
        profile_of(&services, &req.body.user_id, Some("avatar_url")).await?.avatar_url,
    ))
}

/// `PUT /_matrix/client/v3/profile/{userId}/avatar_url`
pub async fn set_avatar_url(
    services: AppState,
    req: Ruma<set_avatar_url::v3::Request>,
) -> Result<set_avatar_url::v3::Response> {
    ensure_self(&req.identity.user_id, &req.body.user_id)?;
    services.users.ensure_not_suspended(&req.identity.user_id, "Updating profile")?;
    services.users.set_avatar_url(&req.body.user_id, req.body.avatar_url)?;
    services.membership.profile_changed(&req.body.user_id).await?;
    Ok(set_avatar_url::v3::Response::new())
}
