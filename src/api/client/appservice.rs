//! The client-server endpoints only application services call: the ping and the
//! application service room directory.

use ruma::api::client::{appservice::request_ping, appservice::set_room_visibility};

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
};

/// `POST /_matrix/client/v1/appservice/{appserviceId}/ping`: the appservice asks the server
/// to ping it, to check that both can reach each other.
pub async fn request_ping(
    services: AppState,
    req: Ruma<request_ping::v1::Request>,
) -> Result<request_ping::v1::Response> {
    if req.identity.id != req.body.appservice_id {
        return Err(Error::forbidden("This is not your application service ID"));
    }
    let duration = services
        .appservices
        .ping(&req.identity, req.body.transaction_id.as_ref().map(|t| t.as_str()))
        .await?;
    Ok(request_ping::v1::Response::new(duration))
}

/// `PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}`: the appservice
/// publishes a room in (or withdraws it from) its own directory for one of its networks.
pub async fn set_room_visibility(
    services: AppState,
    req: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response> {
    let public = super::directory::is_public(&req.body.visibility)?;
    services.directory.publish_for_appservice(
        &req.identity.id,
        &req.body.network_id,
        &req.body.room_id,
        public,
    )?;
    Ok(set_room_visibility::v3::Response::new())
}
