//! Spaces: the room hierarchy under a space.

use ruma::api::client::space::get_hierarchy;

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    service::rooms::hierarchy::RemoteSpaces,
};

/// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy`
pub async fn get_hierarchy(
    services: AppState,
    req: Ruma<get_hierarchy::v1::Request>,
) -> Result<get_hierarchy::v1::Response> {
    let body = req.body;
    let to_usize = |n: Option<ruma::UInt>| n.map(|n| usize::try_from(u64::from(n)).unwrap_or(usize::MAX));
    // Rooms this server does not have are asked of other servers when federation is on.
    let remote: Option<&dyn RemoteSpaces> =
        services.config.allow_federation.then_some(services.room_federation.as_ref() as &dyn RemoteSpaces);
    let page = services
        .hierarchy
        .walk(
            &req.identity.user_id,
            &body.room_id,
            body.from.as_deref(),
            to_usize(body.limit),
            to_usize(body.max_depth),
            body.suggested_only,
            remote,
        )
        .await?;
    let rooms = page
        .rooms
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::internal(format!("hierarchy entry: {e}")))?;
    let mut response = get_hierarchy::v1::Response::new();
    response.rooms = rooms;
    response.next_batch = page.next_batch;
    Ok(response)
}
