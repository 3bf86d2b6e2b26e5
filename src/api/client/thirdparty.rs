//! Third-party networks (`ruma::api::client::thirdparty`): the protocols the server's
//! application services bridge, and lookups of their users and portal rooms, each asked of
//! those appservices by `ThirdParty`. The answers are the appservices' JSON, checked and
//! merged but otherwise passed on as they sent it (as Synapse does), so fields ruma's types
//! do not know reach the client.

use axum::Json;
use ruma::api::client::thirdparty::{
    get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols,
    get_user_for_protocol, get_user_for_user_id,
};
use serde_json::Value as JsonValue;

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
    service::thirdparty::Entity,
};

/// `GET /_matrix/client/v3/thirdparty/protocols`
pub async fn get_protocols(
    services: AppState,
    _: Ruma<get_protocols::v3::Request>,
) -> Result<Json<JsonValue>> {
    let protocols = services.thirdparty.protocols().await?;
    Ok(Json(JsonValue::Object(protocols.into_iter().collect())))
}

/// `GET /_matrix/client/v3/thirdparty/protocol/{protocol}`
pub async fn get_protocol(
    services: AppState,
    req: Ruma<get_protocol::v3::Request>,
) -> Result<Json<JsonValue>> {
    Ok(Json(services.thirdparty.protocol(&req.body.protocol).await?))
}

/// `GET /_matrix/client/v3/thirdparty/location/{protocol}`
pub async fn get_location_for_protocol(
    services: AppState,
    req: Ruma<get_location_for_protocol::v3::Request>,
) -> Result<Json<Vec<JsonValue>>> {
    let body = req.body;
    Ok(Json(services.thirdparty.lookup(Entity::Location, &body.protocol, &body.fields).await?))
}

/// `GET /_matrix/client/v3/thirdparty/location?alias=`
pub async fn get_location_for_room_alias(
    services: AppState,
    req: Ruma<get_location_for_room_alias::v3::Request>,
) -> Result<Json<Vec<JsonValue>>> {
    Ok(Json(services.thirdparty.locations_of_alias(&req.body.alias).await?))
}

/// `GET /_matrix/client/v3/thirdparty/user/{protocol}`
pub async fn get_user_for_protocol(
    services: AppState,
    req: Ruma<get_user_for_protocol::v3::Request>,
) -> Result<Json<Vec<JsonValue>>> {
    let body = req.body;
    Ok(Json(services.thirdparty.lookup(Entity::User, &body.protocol, &body.fields).await?))
}

/// `GET /_matrix/client/v3/thirdparty/user?userid=`
pub async fn get_user_for_user_id(
    services: AppState,
    req: Ruma<get_user_for_user_id::v3::Request>,
) -> Result<Json<Vec<JsonValue>>> {
    Ok(Json(services.thirdparty.users_of_user_id(&req.body.userid).await?))
}
