//! Rooms: create, read one event, list aliases, report events and rooms.

use ruma::{
    MilliSecondsSinceUnixEpoch,
    api::{
        Direction as ApiDirection,
        client::room::{
            aliases, create_room, get_event_by_timestamp, get_room_event, get_summary, report_content,
            report_room, upgrade_room,
        },
    },
    serde::Raw,
};

use super::event_json;
use crate::{
    Error, Result,
    api::{AppState, ruma::Ruma},
    service::rate_limits::Limiter,
};

/// `POST /_matrix/client/v3/createRoom`
pub async fn create_room(
    services: AppState,
    req: Ruma<create_room::v3::Request>,
) -> Result<create_room::v3::Response> {
    services.rate_limits.check_user(Limiter::RoomCreation, &req.identity.user_id)?;
    if let Some(name) = &req.body.room_alias_name
        && let Ok(alias) = ruma::RoomAliasId::parse(format!("#{name}:{}", services.config.server_name))
    {
        services.appservices.ensure_alias_not_exclusive(&alias, req.identity.appservice.as_deref())?;
    }
    let room_id = services.room_creation.create_room(&req.identity.user_id, req.body).await?;
    Ok(create_room::v3::Response::new(room_id))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`
pub async fn get_room_event(
    services: AppState,
    req: Ruma<get_room_event::v3::Request>,
) -> Result<get_room_event::v3::Response> {
    let event = services.room_actions.event(&req.identity.user_id, &req.body.room_id, &req.body.event_id)?;
    Ok(get_room_event::v3::Response::new(Raw::from_json(event_json(&services, &req.identity, &event)?)))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/aliases`
pub async fn get_room_aliases(
    services: AppState,
    req: Ruma<aliases::v3::Request>,
) -> Result<aliases::v3::Response> {
    let aliases = services.room_actions.room_aliases(&req.identity.user_id, &req.body.room_id)?;
    Ok(aliases::v3::Response::new(aliases))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}`
pub async fn report_content(
    services: AppState,
    req: Ruma<report_content::v3::Request>,
) -> Result<report_content::v3::Response> {
    let body = req.body;
    services.rate_limits.check_user(Limiter::Reports, &req.identity.user_id)?;
    services.room_actions.report_event(
        &req.identity.user_id,
        &body.room_id,
        &body.event_id,
        body.reason,
        None,
    )?;
    Ok(report_content::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report`
pub async fn report_room(
    services: AppState,
    req: Ruma<report_room::v3::Request>,
) -> Result<report_room::v3::Response> {
    let body = req.body;
    services.rate_limits.check_user(Limiter::Reports, &req.identity.user_id)?;
    services.room_actions.report_room(&req.identity.user_id, &body.room_id, Some(body.reason))?;
    Ok(report_room::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/upgrade`
pub async fn upgrade_room(
    services: AppState,
    req: Ruma<upgrade_room::v3::Request>,
) -> Result<upgrade_room::v3::Response> {
    let body = req.body;
    let new_room = services
        .upgrades
        .upgrade(&req.identity.user_id, &body.room_id, &body.new_version, body.additional_creators)
        .await?;
    Ok(upgrade_room::v3::Response::new(new_room))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`
pub async fn get_event_by_timestamp(
    services: AppState,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<get_event_by_timestamp::v1::Response> {
    let body = &req.body;
    let direction = match body.dir {
        ApiDirection::Forward => crate::storage::Direction::Forward,
        _ => crate::storage::Direction::Reverse,
    };
    let event = services.history.event_at_timestamp(
        &req.identity.user_id,
        &body.room_id,
        body.ts.get().into(),
        direction,
    )?;
    let ts = MilliSecondsSinceUnixEpoch(event.pdu.origin_server_ts.0);
    Ok(get_event_by_timestamp::v1::Response::new(event.pdu.event_id.clone(), ts))
}

/// `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}`
pub async fn get_summary(
    services: AppState,
    req: Ruma<get_summary::v1::Request>,
) -> Result<get_summary::v1::Response> {
    let room_id = services.membership.resolve(&req.body.room_id_or_alias).await?;
    let viewer = req.identity.as_ref().map(|identity| identity.user_id.as_ref());
    let (summary, membership) = services.hierarchy.room_summary(viewer, &room_id)?;
    let summary =
        serde_json::from_value(summary).map_err(|e| Error::internal(format!("room summary: {e}")))?;
    let mut response = get_summary::v1::Response::new(summary);
    response.membership = membership;
    Ok(response)
}

/// A summary always names its join rule; ruma leaves out `public`, its default.
pub fn fill_summary(json: &mut serde_json::Value) {
    if let Some(object) = json.as_object_mut() {
        object.entry("join_rule").or_insert_with(|| serde_json::json!("public"));
    }
}
