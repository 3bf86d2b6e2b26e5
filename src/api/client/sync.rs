//! `/sync` and the filters it uses.

use std::time::Duration;

use ruma::api::client::{
    filter::{FilterDefinition, create_filter, get_filter},
    sync::sync_events::{self, v3::Filter},
};

use super::parse_stream_token;
use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    service::sync::SyncRequest,
};

/// `GET /_matrix/client/v3/sync`
pub async fn sync_events(
    services: AppState,
    req: Ruma<sync_events::v3::Request>,
) -> Result<sync_events::v3::Response> {
    let body = req.body;
    let identity = req.identity;
    let filter = match body.filter {
        None => FilterDefinition::default(),
        Some(Filter::FilterDefinition(definition)) => definition,
        Some(Filter::FilterId(id)) => services
            .filters
            .get(&identity.user_id, &id)?
            .ok_or_else(|| Error::invalid_param(format!("Unknown filter {id}")))?,
        Some(_) => return Err(Error::invalid_param("Unsupported filter")),
    };
    let since = body.since.as_deref().map(parse_stream_token).transpose()?;
    let request = SyncRequest {
        user_id: identity.user_id,
        device_id: identity.device_id,
        since,
        filter,
        full_state: body.full_state,
        timeout: body.timeout.unwrap_or(Duration::ZERO),
        set_presence: body.set_presence,
    };
    services.sync.sync(request).await
}

/// `POST /_matrix/client/v3/user/{userId}/filter`
pub async fn create_filter(
    services: AppState,
    req: Ruma<create_filter::v3::Request>,
) -> Result<create_filter::v3::Response> {
    if req.body.user_id != req.identity.user_id {
        return Err(Error::forbidden("You can only create filters for yourself"));
    }
    let id = services.filters.create(&req.identity.user_id, &req.body.filter)?;
    Ok(create_filter::v3::Response::new(id))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
pub async fn get_filter(
    services: AppState,
    req: Ruma<get_filter::v3::Request>,
) -> Result<get_filter::v3::Response> {
    if req.body.user_id != req.identity.user_id {
        return Err(Error::forbidden("You can only read your own filters"));
    }
    let filter = services
        .filters
        .get(&req.identity.user_id, &req.body.filter_id)?
        .ok_or_else(|| Error::not_found("No such filter"))?;
    Ok(get_filter::v3::Response::new(filter))
}
