//! The public room directory.

use ruma::{
    OwnedServerName,
    api::client::{
        directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
        room::Visibility,
    },
    directory::{PublicRoomsChunk, RoomNetwork},
};

use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    service::{
        Services,
        rooms::directory::{Network, PublicRoomsPage},
    },
};

/// `GET /_matrix/client/v3/directory/list/room/{roomId}`
pub async fn get_room_visibility(
    services: AppState,
    req: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response> {
    let public = services.room_actions.is_published(&req.body.room_id)?;
    Ok(get_room_visibility::v3::Response::new(if public { Visibility::Public } else { Visibility::Private }))
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}`
pub async fn set_room_visibility(
    services: AppState,
    req: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response> {
    let public = is_public(&req.body.visibility)?;
    services.room_actions.set_published(&req.identity.user_id, &req.body.room_id, public)?;
    Ok(set_room_visibility::v3::Response::new())
}

/// `GET /_matrix/client/v3/publicRooms`
pub async fn get_public_rooms(
    services: AppState,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    let body = req.body;
    ensure_local(&services, body.server.as_ref())?;
    let page =
        services.directory.list(Network::Matrix, limit(body.limit), body.since.as_deref(), None, None)?;
    let (chunk, next, prev, total) = page_parts(page)?;
    let mut response = get_public_rooms::v3::Response::new(chunk);
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = total;
    Ok(response)
}

/// `POST /_matrix/client/v3/publicRooms`: with a search filter, and the server's list, one
/// appservice network's (`third_party_instance_id`) or all of them (`include_all_networks`).
pub async fn get_public_rooms_filtered(
    services: AppState,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response> {
    let body = req.body;
    ensure_local(&services, body.server.as_ref())?;
    let network = match &body.room_network {
        RoomNetwork::All => Network::All,
        RoomNetwork::ThirdParty(instance_id) => Network::Instance(instance_id),
        _ => Network::Matrix,
    };
    let room_types: Option<Vec<Option<String>>> = (!body.filter.room_types.is_empty()).then(|| {
        body.filter
            .room_types
            .iter()
            .map(|t| serde_json::to_value(t).ok().and_then(|v| v.as_str().map(str::to_owned)))
            .collect()
    });
    let page = services.directory.list(
        network,
        limit(body.limit),
        body.since.as_deref(),
        body.filter.generic_search_term.as_deref(),
        room_types.as_deref(),
    )?;
    let (chunk, next, prev, total) = page_parts(page)?;
    let mut response = get_public_rooms_filtered::v3::Response::new();
    response.chunk = chunk;
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = total;
    Ok(response)
}

/// Other servers' directories would need federation.
fn ensure_local(services: &Services, server: Option<&OwnedServerName>) -> Result<()> {
    match server {
        Some(server) if *server != services.config.server_name => {
            Err(Error::forbidden("Federation is disabled: only this server's directory can be listed"))
        }
        _ => Ok(()),
    }
}

fn limit(limit: Option<ruma::UInt>) -> Option<usize> {
    limit.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX))
}

type PageParts = (Vec<PublicRoomsChunk>, Option<String>, Option<String>, Option<ruma::UInt>);

fn page_parts(page: PublicRoomsPage) -> Result<PageParts> {
    let chunk = page
        .chunk
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::internal(format!("directory entry: {e}")))?;
    Ok((chunk, page.next_batch, page.prev_batch, ruma::UInt::new(page.total as u64)))
}

/// A directory visibility as whether the room is listed; other values are refused.
pub(super) fn is_public(visibility: &Visibility) -> Result<bool> {
    match visibility {
        Visibility::Public => Ok(true),
        Visibility::Private => Ok(false),
        _ => Err(Error::invalid_param("visibility must be public or private")),
    }
}
