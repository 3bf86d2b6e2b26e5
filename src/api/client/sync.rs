//! `/sync` and the filters it uses.

use std::{collections::BTreeMap, time::Duration};

use ruma::api::client::{
    filter::{FilterDefinition, create_filter, get_filter},
    sync::sync_events::{self, v3::Filter},
};
use serde_json::value::{RawValue as RawJsonValue, to_raw_value};

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

/// A JSON object whose members stay as they were serialised.
type RawObject = BTreeMap<String, Box<RawJsonValue>>;

/// Ruma leaves `limited` out of a timeline when it is false, but the spec lists it and
/// clients read it (Synapse always sends it): put it back in every joined and left room's
/// timeline. Only the objects on the way to a timeline are parsed; events stay raw, so a
/// large sync is not re-read as a tree.
pub fn fill_limited(body: &[u8]) -> serde_json::Result<Vec<u8>> {
    let mut top: RawObject = serde_json::from_slice(body)?;
    let Some(rooms) = top.get_mut("rooms") else { return Ok(body.to_vec()) };
    let mut sections: BTreeMap<String, BTreeMap<String, RawObject>> = serde_json::from_str(rooms.get())?;
    for section in ["join", "leave"] {
        for room in sections.get_mut(section).into_iter().flat_map(BTreeMap::values_mut) {
            let Some(timeline) = room.get_mut("timeline") else { continue };
            let mut fields: RawObject = serde_json::from_str(timeline.get())?;
            if !fields.contains_key("limited") {
                fields.insert("limited".to_owned(), to_raw_value(&false)?);
                *timeline = to_raw_value(&fields)?;
            }
        }
    }
    *rooms = to_raw_value(&sections)?;
    serde_json::to_vec(&top)
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
