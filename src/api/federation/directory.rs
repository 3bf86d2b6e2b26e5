//! The public room directory for other servers (`ruma::api::federation::directory`): the
//! same listing this server's users get, filtered the same way.

use ruma::api::federation::directory::{get_public_rooms, get_public_rooms_filtered};

use crate::{
    Error, Result,
    api::{AppState, client::directory::local_page, ruma::Ruma},
    service::Services,
};

/// Other servers list the directory only with `allow_public_rooms_over_federation`.
fn ensure_listed(services: &Services) -> Result<()> {
    if services.config.allow_public_rooms_over_federation {
        Ok(())
    } else {
        Err(Error::forbidden("This server does not list its public rooms over federation"))
    }
}

/// `GET /_matrix/federation/v1/publicRooms`
pub async fn get_public_rooms(
    services: AppState,
    req: Ruma<get_public_rooms::v1::Request>,
) -> Result<get_public_rooms::v1::Response> {
    ensure_listed(&services)?;
    let body = req.body;
    let filter = ruma::directory::Filter::new();
    let (chunk, next, prev, total) =
        local_page(&services, body.limit, body.since.as_deref(), &filter, &body.room_network)?;
    let mut response = get_public_rooms::v1::Response::new();
    response.chunk = chunk;
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = total;
    Ok(response)
}

/// `POST /_matrix/federation/v1/publicRooms`
pub async fn get_public_rooms_filtered(
    services: AppState,
    req: Ruma<get_public_rooms_filtered::v1::Request>,
) -> Result<get_public_rooms_filtered::v1::Response> {
    ensure_listed(&services)?;
    let body = req.body;
    let (chunk, next, prev, total) =
        local_page(&services, body.limit, body.since.as_deref(), &body.filter, &body.room_network)?;
    let mut response = get_public_rooms_filtered::v1::Response::new();
    response.chunk = chunk;
    response.next_batch = next;
    response.prev_batch = prev;
    response.total_room_count_estimate = total;
    Ok(response)
}
