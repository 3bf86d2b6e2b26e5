//! The deprecated endpoints that old bots and scripts still call and ruma has no types for:
//! one event by ID (`/events/{eventId}`) and `POST /send` without a transaction ID. Plain
//! axum handlers: `Authenticated` authenticates them exactly as `Ruma<T>` does, the path is
//! parsed here into typed values (bad ones answer `M_INVALID_PARAM`), and each calls one
//! service method.

use axum::{
    Json,
    body::Body,
    extract::{Path, State, rejection::PathRejection},
};
use ruma::{EventId, OwnedRoomId, RoomId, api::client::message::send_message_event};
use serde_json::Value as JsonValue;

use crate::{
    Error, Result,
    api::{
        AppState,
        ruma::{Authenticated, RumaResponse, limited_body},
    },
    service::rooms::render::{Rendering, Viewer},
};

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
    let viewer = Viewer { user_id: &identity.user_id, device_id: Some(&identity.device_id) };
    Ok(Json(services.renderer.value(viewer, &event, Rendering::LEGACY)?))
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
    let bytes = limited_body(&services, body).await?;
    // As for the `PUT` form, an empty body is empty content.
    let content: JsonValue = if bytes.is_empty() {
        JsonValue::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(&bytes).map_err(|_| Error::not_json("Content not JSON."))?
    };
    let event_id = services
        .room_actions
        .send_message(&auth.identity.user_id, &room_id, event_type, content, None)
        .await?;
    Ok(RumaResponse(send_message_event::v3::Response::new(event_id)))
}
