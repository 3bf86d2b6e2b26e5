//! The client-server endpoints only application services call.

use ruma::api::client::appservice::request_ping;

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
