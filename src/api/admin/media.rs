//! Media in the admin API: users' uploads, a room's media, deletion one by one or in
//! sweeps, quarantine and protection, the remote media cache, statistics. Each handler
//! parses, calls one `MediaAdmin` method and shapes Synapse's answer.

use axum::{
    Json,
    extract::{Path, RawQuery, State},
};
use ruma::OwnedServerName;
use serde_json::{Value as JsonValue, json};

use super::{AdminCaller, Params, room_id, user_id};
use crate::{
    Error, Result,
    api::AppState,
    service::media::admin::{Listing, Page},
};

/// The default page of the media lists, as on Synapse.
const MEDIA_LIST_LIMIT: usize = 100;

fn page(params: &Params) -> Result<Page> {
    let (from, limit, backwards) = params.paging(MEDIA_LIST_LIMIT)?;
    Ok(Page { from, limit, order_by: params.str("order_by").map(str::to_owned), forward: !backwards })
}

fn server_name(raw: &str) -> Result<OwnedServerName> {
    OwnedServerName::try_from(raw).map_err(|e| Error::invalid_param(format!("Invalid server name: {e}")))
}

fn listing(key: &str, listing: Listing) -> JsonValue {
    let mut answer = json!({ key: listing.items, "total": listing.total });
    if let Some(next) = listing.next_token {
        answer["next_token"] = json!(next);
    }
    answer
}

fn deleted(ids: Vec<String>) -> JsonValue {
    json!({ "total": ids.len(), "deleted_media": ids })
}

/// `GET /_synapse/admin/v1/users/{userId}/media`
pub async fn user_media(
    State(services): State<AppState>,
    Path(user): Path<String>,
    _: AdminCaller,
    query: RawQuery,
) -> Result<Json<JsonValue>> {
    let page = page(&Params::parse(query))?;
    Ok(Json(listing("media", services.media_admin.user_media(&user_id(&user)?, &page)?)))
}

/// `DELETE /_synapse/admin/v1/users/{userId}/media`
pub async fn delete_user_media(
    State(services): State<AppState>,
    Path(user): Path<String>,
    _: AdminCaller,
    query: RawQuery,
) -> Result<Json<JsonValue>> {
    let page = page(&Params::parse(query))?;
    Ok(Json(deleted(services.media_admin.delete_user_media(&user_id(&user)?, &page).await?)))
}

/// `GET /_synapse/admin/v1/room/{roomId}/media`
pub async fn room_media(
    State(services): State<AppState>,
    Path(room): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    let (local, remote) = services.media_admin.room_media(&room_id(&room)?)?;
    Ok(Json(json!({ "local": local, "remote": remote })))
}

/// `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`
pub async fn delete_media(
    State(services): State<AppState>,
    Path((server, media_id)): Path<(String, String)>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    Ok(Json(deleted(services.media_admin.delete_one(&server_name(&server)?, &media_id).await?)))
}

async fn sweep(services: &AppState, params: &Params) -> Result<JsonValue> {
    let before_ts = params.u64("before_ts")?.ok_or_else(|| Error::missing_param("Missing before_ts"))?;
    let size_gt = params.u64("size_gt")?.unwrap_or(0);
    let keep_profiles = params.bool("keep_profiles")?.unwrap_or(true);
    Ok(deleted(services.media_admin.delete_old(before_ts, size_gt, keep_profiles).await?))
}

/// `POST /_synapse/admin/v1/media/{serverName}/delete?before_ts&size_gt&keep_profiles`:
/// only this server's media can be deleted.
pub async fn delete_old_media_of(
    State(services): State<AppState>,
    Path(server): Path<String>,
    _: AdminCaller,
    query: RawQuery,
) -> Result<Json<JsonValue>> {
    if server_name(&server)? != services.config.server_name {
        return Err(Error::invalid_param("Can only delete local media"));
    }
    Ok(Json(sweep(&services, &Params::parse(query)).await?))
}

/// `POST /_synapse/admin/v1/media/delete?before_ts&size_gt&keep_profiles`
pub async fn delete_old_media(
    State(services): State<AppState>,
    _: AdminCaller,
    query: RawQuery,
) -> Result<Json<JsonValue>> {
    Ok(Json(sweep(&services, &Params::parse(query)).await?))
}

/// `POST /_synapse/admin/v1/media/protect/{mediaId}`
pub async fn protect(
    State(services): State<AppState>,
    Path(media_id): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    services.media_admin.protect(&media_id, true)?;
    Ok(Json(json!({})))
}

/// `POST /_synapse/admin/v1/media/unprotect/{mediaId}`
pub async fn unprotect(
    State(services): State<AppState>,
    Path(media_id): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    services.media_admin.protect(&media_id, false)?;
    Ok(Json(json!({})))
}

/// `POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}`
pub async fn quarantine(
    State(services): State<AppState>,
    Path((server, media_id)): Path<(String, String)>,
    AdminCaller { caller }: AdminCaller,
) -> Result<Json<JsonValue>> {
    services.media_admin.quarantine_one(&caller.identity.user_id, &server_name(&server)?, &media_id, true)?;
    Ok(Json(json!({})))
}

/// `POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}`
pub async fn unquarantine(
    State(services): State<AppState>,
    Path((server, media_id)): Path<(String, String)>,
    AdminCaller { caller }: AdminCaller,
) -> Result<Json<JsonValue>> {
    services.media_admin.quarantine_one(
        &caller.identity.user_id,
        &server_name(&server)?,
        &media_id,
        false,
    )?;
    Ok(Json(json!({})))
}

/// `POST /_synapse/admin/v1/room/{roomId}/media/quarantine`
pub async fn quarantine_room(
    State(services): State<AppState>,
    Path(room): Path<String>,
    AdminCaller { caller }: AdminCaller,
) -> Result<Json<JsonValue>> {
    let count = services.media_admin.quarantine_room(&caller.identity.user_id, &room_id(&room)?)?;
    Ok(Json(json!({ "num_quarantined": count })))
}

/// `POST /_synapse/admin/v1/user/{userId}/media/quarantine`
pub async fn quarantine_user(
    State(services): State<AppState>,
    Path(user): Path<String>,
    AdminCaller { caller }: AdminCaller,
) -> Result<Json<JsonValue>> {
    let count = services.media_admin.quarantine_user(&caller.identity.user_id, &user_id(&user)?)?;
    Ok(Json(json!({ "num_quarantined": count })))
}

/// `POST /_synapse/admin/v1/purge_media_cache?before_ts`: forget other servers' media
/// fetched before then (fetched again when next asked for).
pub async fn purge_media_cache(
    State(services): State<AppState>,
    _: AdminCaller,
    query: RawQuery,
) -> Result<Json<JsonValue>> {
    let params = Params::parse(query);
    let before = params.u64("before_ts")?.ok_or_else(|| Error::missing_param("Missing before_ts"))?;
    let report = services.media.purge_remote_fetched_before(before).await?;
    Ok(Json(json!({ "deleted": report.media })))
}

/// `GET /_synapse/admin/v1/statistics/users/media`
pub async fn media_statistics(
    State(services): State<AppState>,
    _: AdminCaller,
    query: RawQuery,
) -> Result<Json<JsonValue>> {
    let params = Params::parse(query);
    let page = page(&params)?;
    let listing_ = services.media_admin.statistics(
        &page,
        params.u64("from_ts")?,
        params.u64("until_ts")?,
        params.str("search_term"),
    )?;
    Ok(Json(listing("users", listing_)))
}
