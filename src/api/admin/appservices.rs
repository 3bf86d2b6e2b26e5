//! Application services in the admin API, without a restart: `GET /_conduit/admin/v1/appservices`
//! (every registration, where it comes from, whether it is in force), `GET .../{id}`, `POST`
//! (the body is a registration as a file would hold it, YAML or JSON, checked the same way)
//! and `DELETE .../{id}` (only those added here; a file's registration says which file).
//! Tokens are never shown. Each call is in the audit log (the admin route layer records the
//! request, the service the change); each handler is one call of `AppserviceAdmin`.

use axum::{
    Json,
    extract::{Path, State},
};
use serde_json::{Value as JsonValue, json};

use super::AdminCaller;
use crate::{
    Error, Result,
    api::{AppState, ruma::limited_body},
};

/// `GET /_conduit/admin/v1/appservices`: `{"appservices": [...]}`.
pub async fn list(State(services): State<AppState>, _: AdminCaller) -> Result<Json<JsonValue>> {
    Ok(Json(json!({ "appservices": services.appservice_admin.list() })))
}

/// `GET /_conduit/admin/v1/appservices/{id}`.
pub async fn get(
    State(services): State<AppState>,
    Path(id): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    Ok(Json(services.appservice_admin.get(&id)?))
}

/// `POST /_conduit/admin/v1/appservices` with a registration (YAML or JSON) as the body.
pub async fn register(
    State(services): State<AppState>,
    admin: AdminCaller,
    body: axum::body::Body,
) -> Result<Json<JsonValue>> {
    let bytes = limited_body(&services, body).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| Error::invalid_param("The registration must be UTF-8 text (YAML or JSON)"))?;
    if text.trim().is_empty() {
        return Err(Error::invalid_param(
            "The body must be an application service registration (YAML or JSON)",
        ));
    }
    Ok(Json(services.appservice_admin.register(&admin.caller.context, text)?))
}

/// `DELETE /_conduit/admin/v1/appservices/{id}`.
pub async fn remove(
    State(services): State<AppState>,
    Path(id): Path<String>,
    admin: AdminCaller,
) -> Result<Json<JsonValue>> {
    services.appservice_admin.remove(&admin.caller.context, &id)?;
    Ok(Json(json!({})))
}
