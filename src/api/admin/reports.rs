//! Event reports in the admin API: the list, one report with its event, and resolving one.

use axum::{
    Json,
    extract::{Path, RawQuery, State},
};
use serde_json::{Value as JsonValue, json};

use super::{AdminCaller, Params};
use crate::{
    Error, Result,
    api::AppState,
    service::rooms::{admin::ReportQuery, render::Viewer},
};

/// The default page of the report list, as on Synapse.
const REPORT_LIST_LIMIT: usize = 100;

fn report_id(raw: &str) -> Result<u64> {
    raw.parse().map_err(|_| Error::invalid_param("The report ID must be a non-negative integer"))
}

/// `GET /_synapse/admin/v1/event_reports`: newest first unless `dir=f`.
pub async fn list(
    State(services): State<AppState>,
    _: AdminCaller,
    query: RawQuery,
) -> Result<Json<JsonValue>> {
    let params = Params::parse(query);
    let (from, limit, _) = params.paging(REPORT_LIST_LIMIT)?;
    let query = ReportQuery {
        from,
        limit,
        forwards: params.backwards()? == Some(false),
        user_id: params.str("user_id").map(str::to_owned),
        room_id: params.str("room_id").map(str::to_owned),
        event_sender_user_id: params.str("event_sender_user_id").map(str::to_owned),
    };
    let list = services.room_admin.event_reports(&query)?;
    let mut answer = json!({ "event_reports": list.reports, "total": list.total });
    if let Some(next) = list.next_token {
        answer["next_token"] = json!(next);
    }
    Ok(Json(answer))
}

/// `GET /_synapse/admin/v1/event_reports/{reportId}`
pub async fn get(
    State(services): State<AppState>,
    Path(id): Path<String>,
    AdminCaller { caller }: AdminCaller,
) -> Result<Json<JsonValue>> {
    let viewer =
        Viewer { user_id: &caller.identity.user_id, device_id: caller.identity.device_id.as_deref() };
    Ok(Json(services.room_admin.event_report(viewer, report_id(&id)?)?))
}

/// `DELETE /_synapse/admin/v1/event_reports/{reportId}`
pub async fn delete(
    State(services): State<AppState>,
    Path(id): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    services.room_admin.delete_event_report(report_id(&id)?)?;
    Ok(Json(json!({})))
}
