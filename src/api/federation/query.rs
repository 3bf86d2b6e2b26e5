//! Queries (`ruma::api::federation::query`): a local user's profile and a local room
//! alias, asked by other servers (signed requests only).

use ruma::api::federation::query::{get_profile_information, get_room_information};

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
};

/// `GET /_matrix/federation/v1/query/profile`: a local user's display name and avatar (or
/// the one `field` asks for); `404 M_NOT_FOUND` for users of other servers or none.
pub async fn get_profile_information(
    services: AppState,
    req: Ruma<get_profile_information::v1::Request>,
) -> Result<get_profile_information::v1::Response> {
    let user_id = &req.body.user_id;
    if user_id.server_name() != services.config.server_name {
        return Err(Error::not_found(format!("{user_id} is not a user of this server")));
    }
    let profile =
        services.users.profile(user_id)?.ok_or_else(|| Error::not_found("Profile was not found"))?;
    let field = req.body.field.as_ref().map(|f| f.as_str().to_owned());
    let wants = |name: &str| field.as_deref().is_none_or(|f| f == name);
    let mut response = get_profile_information::v1::Response::new();
    if let Some(name) = profile.displayname.filter(|_| wants("displayname")) {
        response.set("displayname".to_owned(), name.into());
    }
    if let Some(url) = profile.avatar_url.filter(|_| wants("avatar_url")) {
        response.set("avatar_url".to_owned(), url.to_string().into());
    }
    Ok(response)
}

/// `GET /_matrix/federation/v1/query/directory`: the room a local alias names, with this
/// server as the one to join through.
pub async fn get_room_information(
    services: AppState,
    req: Ruma<get_room_information::v1::Request>,
) -> Result<get_room_information::v1::Response> {
    let alias = &req.body.room_alias;
    if alias.server_name() != services.config.server_name {
        return Err(Error::not_found(format!("{alias} is not an alias of this server")));
    }
    let room_id = services.membership.resolve_alias(alias).await?;
    Ok(get_room_information::v1::Response::new(room_id, vec![services.config.server_name.clone()]))
}
