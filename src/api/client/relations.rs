//! Events relating to an event: edits, thread replies, references, reactions.

use ruma::{
    UInt,
    api::{
        Direction as ApiDirection,
        client::relations::{
            get_relating_events, get_relating_events_with_rel_type,
            get_relating_events_with_rel_type_and_event_type,
        },
    },
    serde::Raw,
};

use super::parse_stream_token;
use crate::{
    Result,
    api::{AppState, ruma::Ruma},
    service::{
        context::Caller,
        rooms::{history::RelationsPage, render::Viewer},
    },
    storage::Direction,
};

/// Default page of `/relations`.
const DEFAULT_LIMIT: usize = 50;

/// The query all three `/relations` forms share.
struct RelationsQuery<'a> {
    room_id: &'a ruma::RoomId,
    event_id: &'a ruma::EventId,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<&'a str>,
    to: Option<&'a str>,
    dir: &'a ApiDirection,
    limit: Option<UInt>,
    recurse: bool,
}

fn page(services: &AppState, identity: &Caller, query: RelationsQuery<'_>) -> Result<RelationsPage> {
    let viewer = Viewer { user_id: &identity.user_id, device_id: identity.device_id.as_deref() };
    let direction = match query.dir {
        ApiDirection::Forward => Direction::Forward,
        _ => Direction::Reverse,
    };
    let limit = query.limit.map_or(DEFAULT_LIMIT, |l| usize::try_from(u64::from(l)).unwrap_or(usize::MAX));
    services.history.relating(
        viewer,
        query.room_id,
        query.event_id,
        query.rel_type.as_deref(),
        query.event_type.as_deref(),
        query.from.map(parse_stream_token).transpose()?,
        query.to.map(parse_stream_token).transpose()?,
        direction,
        limit,
        query.recurse,
    )
}

macro_rules! respond {
    ($module:ident, $page:expr) => {{
        let page = $page;
        let mut response = $module::v1::Response::new(page.chunk.into_iter().map(Raw::from_json).collect());
        response.next_batch = page.next_batch.map(|n| format!("s{n}"));
        response.recursion_depth = page.recursion_depth.map(UInt::new_saturating);
        Ok(response)
    }};
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}`
pub async fn get_relating_events(
    services: AppState,
    req: Ruma<get_relating_events::v1::Request>,
) -> Result<get_relating_events::v1::Response> {
    let b = &req.body;
    let query = RelationsQuery {
        room_id: &b.room_id,
        event_id: &b.event_id,
        rel_type: None,
        event_type: None,
        from: b.from.as_deref(),
        to: b.to.as_deref(),
        dir: &b.dir,
        limit: b.limit,
        recurse: b.recurse,
    };
    respond!(get_relating_events, page(&services, &req.identity, query)?)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}`
pub async fn get_relating_events_with_rel_type(
    services: AppState,
    req: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type::v1::Response> {
    let b = &req.body;
    let query = RelationsQuery {
        room_id: &b.room_id,
        event_id: &b.event_id,
        rel_type: Some(b.rel_type.to_string()),
        event_type: None,
        from: b.from.as_deref(),
        to: b.to.as_deref(),
        dir: &b.dir,
        limit: b.limit,
        recurse: b.recurse,
    };
    respond!(get_relating_events_with_rel_type, page(&services, &req.identity, query)?)
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}`
pub async fn get_relating_events_with_rel_type_and_event_type(
    services: AppState,
    req: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type_and_event_type::v1::Response> {
    let b = &req.body;
    let query = RelationsQuery {
        room_id: &b.room_id,
        event_id: &b.event_id,
        rel_type: Some(b.rel_type.to_string()),
        event_type: Some(b.event_type.to_string()),
        from: b.from.as_deref(),
        to: b.to.as_deref(),
        dir: &b.dir,
        limit: b.limit,
        recurse: b.recurse,
    };
    respond!(get_relating_events_with_rel_type_and_event_type, page(&services, &req.identity, query)?)
}
