//! Per-user rate-limit overrides in the admin API, as Synapse serves them
//! (`/_synapse/admin/v1/users/{userId}/override_ratelimit`): Mjolnir's and Draupnir's setup
//! guides have admins exempt their bot this way.

use axum::{
    Json,
    extract::{Path, State},
};
use ruma::OwnedUserId;
use serde_json::{Value as JsonValue, json};

use super::AdminCaller;
use crate::{
    Error, Result,
    api::{AppState, ruma::limited_body},
    service::rate_limits::Override,
};

/// The target of an override: a local account that exists (Synapse's answers).
fn local_user(services: &AppState, raw: &str) -> Result<OwnedUserId> {
    let user_id = super::user_id(raw)?;
    if user_id.server_name() != services.config.server_name {
        return Err(Error::invalid_param("Can only look up local users"));
    }
    if !services.users.exists(&user_id)? {
        return Err(Error::not_found("User does not exist"));
    }
    Ok(user_id)
}

fn answer(over: Override) -> Json<JsonValue> {
    Json(json!({ "messages_per_second": over.messages_per_second, "burst_count": over.burst_count }))
}

/// `GET /_synapse/admin/v1/users/{userId}/override_ratelimit`: the override, or `{}`.
pub async fn get_override(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    let user_id = local_user(&services, &target)?;
    Ok(match services.rate_limits.get_override(&user_id) {
        Some(over) => answer(over),
        None => Json(json!({})),
    })
}

/// `POST /_synapse/admin/v1/users/{userId}/override_ratelimit` with
/// `{"messages_per_second": n, "burst_count": n}`, both optional non-negative integers (0
/// when left out); `messages_per_second` 0 exempts the user from every limit.
pub async fn set_override(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
    body: axum::body::Body,
) -> Result<Json<JsonValue>> {
    let user_id = local_user(&services, &target)?;
    let body = limited_body(&services, body).await?;
    let body: JsonValue = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|_| Error::not_json("Content not JSON."))?
    };
    let JsonValue::Object(fields) = body else {
        return Err(Error::bad_json("Expected a JSON object"));
    };
    let field = |name: &str| -> Result<u64> {
        match fields.get(name) {
            None | Some(JsonValue::Null) => Ok(0),
            Some(value) => value
                .as_u64()
                .ok_or_else(|| Error::invalid_param(format!("{name} must be a positive integer"))),
        }
    };
    let over =
        Override { messages_per_second: field("messages_per_second")?, burst_count: field("burst_count")? };
    services.rate_limits.set_override(&user_id, over)?;
    Ok(answer(over))
}

/// `DELETE /_synapse/admin/v1/users/{userId}/override_ratelimit`: the configured limits
/// apply to the user again.
pub async fn delete_override(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    let user_id = local_user(&services, &target)?;
    services.rate_limits.delete_override(&user_id)?;
    Ok(Json(json!({})))
}
