//! Background work in the admin API: the background update status and the scheduled tasks.

use axum::{
    Json,
    extract::{RawQuery, State},
};
use serde_json::{Value as JsonValue, json};

use super::{AdminCaller, Params};
use crate::{Result, api::AppState, service::rooms::admin::TaskQuery};

/// `GET /_synapse/admin/v1/background_updates/status`. This server's only background
/// update of the database, the search index rebuild, runs at start before anything is
/// served, so while it answers there is none in progress: `current_updates` is empty, and
/// updates are enabled (nothing pauses them).
pub async fn background_updates_status(_: AdminCaller) -> Result<Json<JsonValue>> {
    Ok(Json(json!({ "enabled": true, "current_updates": {} })))
}

/// `GET /_synapse/admin/v1/scheduled_tasks`: the room deletions asked for through the v2
/// API, the only tasks this server schedules.
pub async fn scheduled_tasks(
    State(services): State<AppState>,
    _: AdminCaller,
    query: RawQuery,
) -> Result<Json<JsonValue>> {
    let params = Params::parse(query);
    let query = TaskQuery {
        action_name: params.str("action_name").map(str::to_owned),
        resource_id: params.str("resource_id").map(str::to_owned),
        job_status: params.str("job_status").map(str::to_owned),
        max_timestamp: params.u64("max_timestamp")?,
    };
    Ok(Json(json!({ "scheduled_tasks": services.room_admin.scheduled_tasks(&query)? })))
}
