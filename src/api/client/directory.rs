//! The public room directory: this server's, and other servers' asked over federation.

use ruma::{
    OwnedServerName,
    api::client::{
        directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
        room::Visibility,
    },
    directory::{Filter, PublicRoomsChunk, RoomNetwork},
};
use serde_json::{Value as JsonValue, json};

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

/// `GET /_matrix/client/v3/publicRooms`: this server's list, or another server's (`server`)
/// asked over federation.
pub async fn get_public_rooms(
    services: AppState,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    let body = req.body;
    let (chunk, next, prev, total) = match remote(&services, body.server.as_ref())? {
        Some(server) => {
            let wanted = page_request(body.limit, body.since.as_deref());
            remote_page(&services, server, wanted).await?
        }
        None => page_parts(services.directory.list(
            Network::Matrix,
            limit(body.limit),
            body.since.as_deref(),
            None,
            None,
        )?)?,
    };
    let mut response = get_public_rooms::v3::Response::new(chunk);
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = total;
    Ok(response)
}

/// `POST /_matrix/client/v3/publicRooms`: with a search filter, and the server's list, one
/// appservice network's (`third_party_instance_id`) or all of them (`include_all_networks`);
/// another server's (`server`) asked over federation with the same filter.
pub async fn get_public_rooms_filtered(
    services: AppState,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response> {
    let body = req.body;
    let (chunk, next, prev, total) = match remote(&services, body.server.as_ref())? {
        Some(server) => {
            let mut wanted = page_request(body.limit, body.since.as_deref());
            if !body.filter.is_empty() {
                wanted["filter"] = serde_json::to_value(&body.filter)
                    .map_err(|e| Error::internal(format!("directory filter: {e}")))?;
            }
            match &body.room_network {
                RoomNetwork::All => wanted["include_all_networks"] = true.into(),
                RoomNetwork::ThirdParty(instance) => {
                    wanted["third_party_instance_id"] = instance.as_str().into()
                }
                _ => {}
            }
            remote_page(&services, server, wanted).await?
        }
        None => local_page(&services, body.limit, body.since.as_deref(), &body.filter, &body.room_network)?,
    };
    let mut response = get_public_rooms_filtered::v3::Response::new();
    response.chunk = chunk;
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = total;
    Ok(response)
}

/// This server's directory page for a filtered listing (also what other servers are
/// answered, `api::federation::directory`).
pub(crate) fn local_page(
    services: &Services,
    page_limit: Option<ruma::UInt>,
    since: Option<&str>,
    filter: &Filter,
    room_network: &RoomNetwork,
) -> Result<PageParts> {
    let network = match room_network {
        RoomNetwork::All => Network::All,
        RoomNetwork::ThirdParty(instance_id) => Network::Instance(instance_id),
        _ => Network::Matrix,
    };
    let room_types: Option<Vec<Option<String>>> = (!filter.room_types.is_empty()).then(|| {
        filter
            .room_types
            .iter()
            .map(|t| serde_json::to_value(t).ok().and_then(|v| v.as_str().map(str::to_owned)))
            .collect()
    });
    let page = services.directory.list(
        network,
        limit(page_limit),
        since,
        filter.generic_search_term.as_deref(),
        room_types.as_deref(),
    )?;
    page_parts(page)
}

/// The server a listing names when it is another one; with federation off that is refused.
fn remote<'a>(
    services: &Services,
    server: Option<&'a OwnedServerName>,
) -> Result<Option<&'a OwnedServerName>> {
    match server {
        Some(server) if *server != services.config.server_name => {
            if !services.config.allow_federation {
                return Err(Error::forbidden(
                    "Federation is disabled: only this server's directory can be listed",
                ));
            }
            Ok(Some(server))
        }
        _ => Ok(None),
    }
}

/// The body of a federation directory request: its page size and token.
fn page_request(page_limit: Option<ruma::UInt>, since: Option<&str>) -> JsonValue {
    let mut wanted = json!({});
    if let Some(page_limit) = page_limit {
        wanted["limit"] = u64::from(page_limit).into();
    }
    if let Some(since) = since {
        wanted["since"] = since.into();
    }
    wanted
}

/// Another server's directory page, asked over federation.
async fn remote_page(services: &Services, server: &OwnedServerName, wanted: JsonValue) -> Result<PageParts> {
    let answer = services.room_federation.public_rooms(server, &wanted).await?;
    let garbled = |e: serde_json::Error| {
        Error::Upstream(format!("{server} answered a directory page that does not parse: {e}"))
    };
    let chunk: Vec<PublicRoomsChunk> = serde_json::from_value(answer["chunk"].clone()).map_err(garbled)?;
    let token = |name: &str| answer[name].as_str().map(str::to_owned);
    let total = answer["total_room_count_estimate"].as_u64().and_then(ruma::UInt::new);
    Ok((chunk, token("next_batch"), token("prev_batch"), total))
}

fn limit(limit: Option<ruma::UInt>) -> Option<usize> {
    limit.map(|l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX))
}

pub(crate) type PageParts = (Vec<PublicRoomsChunk>, Option<String>, Option<String>, Option<ruma::UInt>);

pub(crate) fn page_parts(page: PublicRoomsPage) -> Result<PageParts> {
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
