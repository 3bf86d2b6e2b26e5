//! Room aliases: create, resolve, delete.

use ruma::api::client::alias::{create_alias, delete_alias, get_alias};

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
};

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn create_alias(
    services: AppState,
    req: Ruma<create_alias::v3::Request>,
) -> Result<create_alias::v3::Response> {
    let body = req.body;
    services.appservices.ensure_alias_not_exclusive(&body.room_alias, req.identity.appservice.as_deref())?;
    services.room_actions.create_alias(&req.identity.user_id, &body.room_alias, &body.room_id)?;
    Ok(create_alias::v3::Response::new())
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn get_alias(
    services: AppState,
    req: Ruma<get_alias::v3::Request>,
) -> Result<get_alias::v3::Response> {
    let alias = &req.body.room_alias;
    if alias.server_name() != services.config.server_name && services.federation.enabled() {
        let (room_id, servers) = services.federation.query_directory(alias).await?;
        return Ok(get_alias::v3::Response::new(room_id, servers));
    }
    let room_id = services.membership.resolve_alias(alias).await?;
    Ok(get_alias::v3::Response::new(room_id, vec![services.config.server_name.clone()]))
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn delete_alias(
    services: AppState,
    req: Ruma<delete_alias::v3::Request>,
) -> Result<delete_alias::v3::Response> {
    services.room_actions.delete_alias(&req.identity.user_id, &req.body.room_alias).await?;
    Ok(delete_alias::v3::Response::new())
}
