//! The deprecated endpoints that old bots and scripts still call and ruma has no types for:
//! the event stream (`/events`, with `room_id` to peek), one event by ID (`/events/{eventId}`),
//! the snapshots (`/initialSync`, `/rooms/{roomId}/initialSync`) and `POST /send` without a
//! transaction ID. Plain axum handlers: `Authenticated` authenticates them exactly as
//! `Ruma<T>` does, the query and path are parsed here into typed values (bad ones answer
//! `M_INVALID_PARAM`), and each calls one service method.

use std::{str::FromStr, time::Duration};

use axum::{
    Json,
    body::Body,
    extract::{Path, RawQuery, State, rejection::PathRejection},
};
use ruma::{EventId, OwnedRoomId, RoomId, api::client::message::send_message_event};
use serde_json::Value as JsonValue;

use super::parse_stream_token;
use crate::{
    Error, Result,
    api::{
        AppState,
        ruma::{Authenticated, RumaResponse, limited_body},
    },
    service::{
        legacy_sync::{self, EventsPage, EventsRequest, InitialSync, RoomSnapshot},
        rate_limits::Limiter,
        rooms::render::{Rendering, Viewer},
    },
};

/// A query string's parameters; the first of repeated ones counts.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Self {
        Self(url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()).into_owned().collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// A number parameter; present but unparseable is `M_INVALID_PARAM`.
    fn number<T: FromStr>(&self, key: &str) -> Result<Option<T>> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| Error::invalid_param(format!("{key} must be a non-negative integer")))
            })
            .transpose()
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| match v {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(Error::invalid_param(format!("{key} must be true or false"))),
            })
            .transpose()
    }

    /// The `limit` of messages or events, defaulting as Synapse does.
    fn limit(&self) -> Result<usize> {
        Ok(self.number("limit")?.unwrap_or(legacy_sync::DEFAULT_LIMIT))
    }
}

/// The path parameters axum matched, percent-decoded.
type PathArgs = std::result::Result<Path<Vec<String>>, PathRejection>;

/// Path parameter `index`; a path that does not decode is `M_INVALID_PARAM`.
fn path_arg(path: &PathArgs, index: usize) -> Result<&str> {
    path.as_ref()
        .ok()
        .and_then(|Path(args)| args.get(index))
        .map(String::as_str)
        .ok_or_else(|| Error::invalid_param("Malformed path"))
}

fn room_id(raw: &str) -> Result<OwnedRoomId> {
    RoomId::parse(raw).map_err(|e| Error::invalid_param(format!("Invalid room ID {raw:?}: {e}")))
}

/// `GET /_matrix/client/v3/events`
pub async fn get_events(
    State(services): State<AppState>,
    auth: Authenticated,
    RawQuery(raw): RawQuery,
) -> Result<Json<EventsPage>> {
    let query = Query::parse(raw.as_deref());
    // "END" meant "from now" in the oldest clients; Synapse still accepts it.
    let from = query.get("from").filter(|f| *f != "END").map(parse_stream_token).transpose()?;
    let timeout = query.number::<u64>("timeout")?.map_or(legacy_sync::DEFAULT_TIMEOUT, Duration::from_millis);
    let room_id = query.get("room_id").map(room_id).transpose()?;
    let request = EventsRequest {
        device_id: auth.identity.device()?.to_owned(),
        user_id: auth.identity.user_id,
        from,
        timeout,
        room_id,
        limit: query.limit()?,
    };
    Ok(Json(services.legacy_sync.events(request).await?))
}

/// `GET /_matrix/client/v3/events/{eventId}`
pub async fn get_event(
    State(services): State<AppState>,
    auth: Authenticated,
    path: PathArgs,
) -> Result<Json<JsonValue>> {
    let raw = path_arg(&path, 0)?;
    let event_id = EventId::parse(raw).map_err(|e| Error::invalid_param(format!("Invalid event ID: {e}")))?;
    let identity = &auth.identity;
    let event = services.room_actions.event_by_id(&identity.user_id, &event_id)?;
    let viewer = Viewer { user_id: &identity.user_id, device_id: identity.device_id.as_deref() };
    Ok(Json(services.renderer.value(viewer, &event, Rendering::LEGACY)?))
}

/// `GET /_matrix/client/v3/initialSync`
pub async fn initial_sync(
    State(services): State<AppState>,
    auth: Authenticated,
    RawQuery(raw): RawQuery,
) -> Result<Json<InitialSync>> {
    let query = Query::parse(raw.as_deref());
    let archived = query.boolean("archived")?.unwrap_or(false);
    let identity = &auth.identity;
    let viewer = Viewer { user_id: &identity.user_id, device_id: identity.device_id.as_deref() };
    Ok(Json(services.legacy_sync.initial_sync(viewer, query.limit()?, archived)?))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/initialSync`
pub async fn room_initial_sync(
    State(services): State<AppState>,
    auth: Authenticated,
    path: PathArgs,
    RawQuery(raw): RawQuery,
) -> Result<Json<RoomSnapshot>> {
    let room_id = room_id(path_arg(&path, 0)?)?;
    let query = Query::parse(raw.as_deref());
    let identity = &auth.identity;
    let viewer = Viewer { user_id: &identity.user_id, device_id: identity.device_id.as_deref() };
    Ok(Json(services.legacy_sync.room_initial_sync(viewer, &room_id, query.limit()?)?))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/send/{eventType}`
pub async fn send_message_event(
    State(services): State<AppState>,
    auth: Authenticated,
    path: PathArgs,
    body: Body,
) -> Result<RumaResponse<send_message_event::v3::Response>> {
    let room_id = room_id(path_arg(&path, 0)?)?;
    let event_type = path_arg(&path, 1)?;
    services.rate_limits.check_user(Limiter::Message, &auth.identity.user_id)?;
    let bytes = limited_body(&services, body).await?;
    // As for the `PUT` form, an empty body is empty content.
    let content: JsonValue = if bytes.is_empty() {
        JsonValue::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(&bytes).map_err(|_| Error::not_json("Content not JSON."))?
    };
    let event_id = services
        .room_actions
        .send_message(&auth.identity.user_id, &room_id, event_type, content, None, None)
        .await?;
    Ok(RumaResponse(send_message_event::v3::Response::new(event_id)))
}
