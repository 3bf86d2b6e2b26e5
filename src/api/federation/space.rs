//! Spaces (`ruma::api::federation::space`): one level of a space's hierarchy for another
//! server's users walking it.

use ruma::api::federation::space::get_hierarchy;

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
};

/// `GET /_matrix/federation/v1/hierarchy/{roomId}?suggested_only=`: the room, the children
/// known here that the asking server's users could see, and those they could not (their
/// join rules, or a server ACL banning the asking server).
pub async fn get_hierarchy(
    services: AppState,
    req: Ruma<get_hierarchy::v1::Request>,
) -> Result<get_hierarchy::v1::Response> {
    let (body, origin) = (&req.body, &req.identity.server_name);
    if !services.room_federation.acl_allows(origin, &body.room_id)? {
        return Err(Error::forbidden("The room's server ACL bans your server"));
    }
    let acl_allows = |room: &ruma::RoomId| services.room_federation.acl_allows(origin, room);
    let answer = services.hierarchy.for_server(&body.room_id, body.suggested_only, acl_allows)?;
    let entry = |e: serde_json::Error| Error::internal(format!("hierarchy entry: {e}"));
    let mut response = get_hierarchy::v1::Response::new(serde_json::from_value(answer.room).map_err(entry)?);
    response.children =
        answer.children.into_iter().map(serde_json::from_value).collect::<Result<_, _>>().map_err(entry)?;
    response.inaccessible_children = answer.inaccessible_children;
    Ok(response)
}
