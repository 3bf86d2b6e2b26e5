//! Knocking on rooms.

use ruma::api::client::knock::knock_room;

use crate::{
    Result,
    api::{AppState, ruma::Ruma},
};

/// `POST /_matrix/client/v3/knock/{roomIdOrAlias}`: a room of another server is knocked on
/// through `via` (or `server_name`), as joins go.
pub async fn knock_room(
    services: AppState,
    req: Ruma<knock_room::v3::Request>,
) -> Result<knock_room::v3::Response> {
    let body = req.body;
    let (room_id, via) = services.membership.resolve_with_servers(&body.room_id_or_alias, &body.via).await?;
    services
        .membership
        .knock(&req.identity.user_id, &room_id, &via, body.reason.as_deref(), Default::default())
        .await?;
    Ok(knock_room::v3::Response::new(room_id))
}
