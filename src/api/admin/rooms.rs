//! Rooms in the admin API: the list and details, members, state, history, blocking, joining
//! users, raising a room admin, forward extremities and deletion. Each handler parses, calls
//! one `RoomAdmin` method and shapes Synapse's answer.

use axum::{
    Json,
    body::Body,
    extract::{Path, RawQuery, State},
};
use ruma::{OwnedEventId, OwnedRoomOrAliasId, OwnedUserId, api::client::filter::RoomEventFilter};
use serde_json::{Value as JsonValue, json};

use super::{AdminCaller, Params, json_body, room_id};
use crate::{
    Error, Result,
    api::AppState,
    service::rooms::{
        admin::{DeleteOptions, RoomListQuery, ShutdownOutcome},
        history::DEFAULT_LIMIT,
        render::Viewer,
    },
    storage::Direction,
};

/// The default page of the room list, as on Synapse.
const ROOM_LIST_LIMIT: usize = 100;

/// `GET /_synapse/admin/v1/rooms`
pub async fn list_rooms(
    State(services): State<AppState>,
    _: AdminCaller,
    query: RawQuery,
) -> Result<Json<JsonValue>> {
    let params = Params::parse(query);
    let (from, limit, backwards) = params.paging(ROOM_LIST_LIMIT)?;
    let query = RoomListQuery {
        from,
        limit,
        order_by: params.str("order_by").map(str::to_owned),
        backwards,
        search_term: params.str("search_term").map(str::to_owned),
        public_rooms: params.bool("public_rooms")?,
        empty_rooms: params.bool("empty_rooms")?,
    };
    let list = services.room_admin.list_rooms(&query)?;
    let mut answer = json!({ "rooms": list.rooms, "offset": list.offset, "total_rooms": list.total });
    if let Some(next) = list.next_batch {
        answer["next_batch"] = json!(next);
    }
    if let Some(prev) = list.prev_batch {
        answer["prev_batch"] = json!(prev);
    }
    Ok(Json(answer))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}`
pub async fn room_details(
    State(services): State<AppState>,
    Path(room): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    Ok(Json(services.room_admin.room_details(&room_id(&room)?)?))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/members`
pub async fn room_members(
    State(services): State<AppState>,
    Path(room): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    let members = services.room_admin.members(&room_id(&room)?)?;
    Ok(Json(json!({ "total": members.len(), "members": members })))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/state`
pub async fn room_state(
    State(services): State<AppState>,
    Path(room): Path<String>,
    AdminCaller { caller }: AdminCaller,
) -> Result<Json<JsonValue>> {
    let viewer =
        Viewer { user_id: &caller.identity.user_id, device_id: caller.identity.device_id.as_deref() };
    let state = services.room_admin.state(viewer, &room_id(&room)?)?;
    Ok(Json(json!({ "state": state })))
}

fn filter_param(params: &Params) -> Result<RoomEventFilter> {
    match params.str("filter") {
        None => Ok(RoomEventFilter::default()),
        Some(raw) => serde_json::from_str(raw).map_err(|e| Error::bad_json(format!("Invalid filter: {e}"))),
    }
}

fn token(params: &Params, key: &str) -> Result<Option<i64>> {
    params
        .str(key)
        .map(|t| {
            t.strip_prefix('s')
                .unwrap_or(t)
                .parse()
                .map_err(|_| Error::invalid_param(format!("Invalid stream token {t:?}")))
        })
        .transpose()
}

fn limit(params: &Params) -> Result<usize> {
    Ok(params.u64("limit")?.map_or(DEFAULT_LIMIT, |l| usize::try_from(l).unwrap_or(usize::MAX)))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/messages`: like the client API's, regardless of
/// the admin's membership; backwards by default.
pub async fn room_messages(
    State(services): State<AppState>,
    Path(room): Path<String>,
    AdminCaller { caller }: AdminCaller,
    query: RawQuery,
) -> Result<Json<JsonValue>> {
    let params = Params::parse(query);
    let viewer =
        Viewer { user_id: &caller.identity.user_id, device_id: caller.identity.device_id.as_deref() };
    let direction = if params.backwards()?.unwrap_or(true) { Direction::Reverse } else { Direction::Forward };
    let page = services.room_admin.messages(
        viewer,
        &room_id(&room)?,
        token(&params, "from")?,
        token(&params, "to")?,
        direction,
        limit(&params)?,
        &filter_param(&params)?,
    )?;
    let mut answer = json!({ "chunk": page.chunk, "start": format!("s{}", page.start) });
    if let Some(end) = page.end {
        answer["end"] = json!(format!("s{end}"));
    }
    if !page.state.is_empty() {
        answer["state"] = json!(page.state);
    }
    Ok(Json(answer))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/context/{eventId}`
pub async fn room_context(
    State(services): State<AppState>,
    Path((room, event)): Path<(String, String)>,
    AdminCaller { caller }: AdminCaller,
    query: RawQuery,
) -> Result<Json<JsonValue>> {
    let params = Params::parse(query);
    let viewer =
        Viewer { user_id: &caller.identity.user_id, device_id: caller.identity.device_id.as_deref() };
    let event_id =
        OwnedEventId::try_from(event).map_err(|e| Error::invalid_param(format!("Invalid event ID: {e}")))?;
    let page = services.room_admin.context(
        viewer,
        &room_id(&room)?,
        &event_id,
        limit(&params)?,
        &filter_param(&params)?,
    )?;
    Ok(Json(json!({
        "events_before": page.before,
        "event": page.event,
        "events_after": page.after,
        "state": page.state,
        "start": format!("s{}", page.start),
        "end": format!("s{}", page.end),
    })))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/block`
pub async fn get_block(
    State(services): State<AppState>,
    Path(room): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    Ok(Json(match services.room_admin.block_status(&room_id(&room)?)? {
        Some(user_id) => json!({ "block": true, "user_id": user_id }),
        None => json!({ "block": false }),
    }))
}

#[derive(serde::Deserialize)]
struct Block {
    block: bool,
}

/// `PUT /_synapse/admin/v1/rooms/{roomId}/block` with `{"block": bool}`.
pub async fn set_block(
    State(services): State<AppState>,
    Path(room): Path<String>,
    AdminCaller { caller }: AdminCaller,
    body: Body,
) -> Result<Json<JsonValue>> {
    let bytes = crate::api::ruma::limited_body(&services, body).await?;
    let Block { block } = serde_json::from_slice(&bytes)
        .map_err(|e| Error::bad_json(format!("Expected {{\"block\": bool}}: {e}")))?;
    services.room_admin.set_block(&caller.identity.user_id, &room_id(&room)?, block)?;
    Ok(Json(json!({ "block": block })))
}

#[derive(serde::Deserialize)]
struct UserBody {
    #[serde(default)]
    user_id: Option<OwnedUserId>,
}

/// `POST /_synapse/admin/v1/rooms/{roomId}/make_room_admin` with `{"user_id"}` (the caller
/// by default).
pub async fn make_room_admin(
    State(services): State<AppState>,
    Path(room): Path<String>,
    AdminCaller { caller }: AdminCaller,
    body: Body,
) -> Result<Json<JsonValue>> {
    let UserBody { user_id } = json_body(&services, body).await?;
    let user_id = user_id.unwrap_or_else(|| caller.identity.user_id.clone());
    services.room_admin.make_room_admin(&room_id(&room)?, &user_id).await?;
    Ok(Json(json!({})))
}

/// `POST /_synapse/admin/v1/join/{roomIdOrAlias}` with `{"user_id"}`.
pub async fn join_user(
    State(services): State<AppState>,
    Path(room): Path<String>,
    AdminCaller { caller }: AdminCaller,
    body: Body,
) -> Result<Json<JsonValue>> {
    let UserBody { user_id } = json_body(&services, body).await?;
    let user_id = user_id.ok_or_else(|| Error::missing_param("Missing user_id"))?;
    let room = OwnedRoomOrAliasId::try_from(room)
        .map_err(|e| Error::invalid_param(format!("Invalid room ID or alias: {e}")))?;
    let room_id = services.room_admin.join_user(&caller.identity.user_id, &room, &user_id).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/forward_extremities`
pub async fn get_forward_extremities(
    State(services): State<AppState>,
    Path(room): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    let results = services.room_admin.forward_extremities(&room_id(&room)?)?;
    Ok(Json(json!({ "count": results.len(), "results": results })))
}

/// `DELETE /_synapse/admin/v1/rooms/{roomId}/forward_extremities`
pub async fn delete_forward_extremities(
    State(services): State<AppState>,
    Path(room): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    let deleted = services.room_admin.delete_forward_extremities(&room_id(&room)?)?;
    Ok(Json(json!({ "deleted": deleted })))
}

fn outcome_json(outcome: ShutdownOutcome) -> JsonValue {
    json!({
        "kicked_users": outcome.kicked_users,
        "failed_to_kick_users": outcome.failed_to_kick_users,
        "local_aliases": outcome.local_aliases,
        "new_room_id": outcome.new_room_id,
    })
}

/// `DELETE /_synapse/admin/v1/rooms/{roomId}`: the deletion, done before answering.
pub async fn delete_room_v1(
    State(services): State<AppState>,
    Path(room): Path<String>,
    AdminCaller { caller }: AdminCaller,
    body: Body,
) -> Result<Json<JsonValue>> {
    let options: DeleteOptions = json_body(&services, body).await?;
    let outcome =
        services.room_admin.delete_room(&caller.identity.user_id, &room_id(&room)?, options).await?;
    Ok(Json(outcome_json(outcome)))
}

/// `DELETE /_synapse/admin/v2/rooms/{roomId}`: the deletion, scheduled; answers its ID.
pub async fn delete_room_v2(
    State(services): State<AppState>,
    Path(room): Path<String>,
    AdminCaller { caller }: AdminCaller,
    body: Body,
) -> Result<Json<JsonValue>> {
    let options: DeleteOptions = json_body(&services, body).await?;
    let delete_id =
        services.room_admin.schedule_delete(&caller.identity.user_id, &room_id(&room)?, options)?;
    Ok(Json(json!({ "delete_id": delete_id })))
}

/// `GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`
pub async fn delete_status(
    State(services): State<AppState>,
    Path(delete_id): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    Ok(Json(services.room_admin.delete_status(&delete_id)?))
}

/// `GET /_synapse/admin/v2/rooms/{roomId}/delete_status`
pub async fn room_delete_status(
    State(services): State<AppState>,
    Path(room): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    let results = services.room_admin.delete_statuses(&room_id(&room)?)?;
    Ok(Json(json!({ "results": results })))
}
