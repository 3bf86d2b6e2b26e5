//! Registration tokens in the admin API: list (`?valid=`), create, read, change, delete.
//! Handlers parse Synapse's bodies and call `RegistrationTokens` once.

use axum::{
    Json,
    extract::{Path, Query, State},
};
use serde_json::{Map as JsonMap, Value as JsonValue, json};

use super::{AdminCaller, bool_param, json_object};
use crate::{
    Error, Result,
    api::{AppState, ruma::limited_body},
    service::registration_tokens::{TokenChange, TokenInfo},
};

fn token_json(info: &TokenInfo) -> JsonValue {
    json!({
        "token": info.token,
        "uses_allowed": info.record.uses_allowed,
        "pending": info.record.pending,
        "completed": info.record.completed,
        "expiry_time": info.record.expiry_time,
    })
}

/// A field that is a non-negative integer or null: absent `None`, null `Some(None)`.
fn nullable_count(body: &JsonMap<String, JsonValue>, key: &str, what: &str) -> Result<Option<Option<u64>>> {
    match body.get(key) {
        None => Ok(None),
        Some(JsonValue::Null) => Ok(Some(None)),
        Some(v) => v
            .as_u64()
            .map(|n| Some(Some(n)))
            .ok_or_else(|| Error::invalid_param(format!("{key} must be {what}"))),
    }
}

/// `GET /_synapse/admin/v1/registration_tokens[?valid=true|false]`.
pub async fn list(
    State(services): State<AppState>,
    _: AdminCaller,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Json<JsonValue>> {
    let valid = query.iter().find(|(k, _)| k == "valid").map(|(_, v)| v.as_str());
    let tokens = services.registration_tokens.list(bool_param(valid, "valid")?)?;
    Ok(Json(json!({ "registration_tokens": tokens.iter().map(token_json).collect::<Vec<_>>() })))
}

/// `POST /_synapse/admin/v1/registration_tokens/new` with `token` or `length`,
/// `uses_allowed` and `expiry_time`.
pub async fn create(
    State(services): State<AppState>,
    _: AdminCaller,
    body: axum::body::Body,
) -> Result<Json<JsonValue>> {
    let body = json_object(&limited_body(&services, body).await?, true)?;
    let token = match body.get("token") {
        None => None,
        Some(JsonValue::String(t)) => Some(t.clone()),
        Some(_) => return Err(Error::invalid_param("token must be a string")),
    };
    let length = match body.get("length") {
        None => 16,
        Some(v) => v.as_u64().ok_or_else(|| Error::invalid_param("length must be an integer"))? as usize,
    };
    let uses_allowed = nullable_count(&body, "uses_allowed", "a non-negative integer or null")?.flatten();
    let expiry_time = nullable_count(&body, "expiry_time", "an integer or null")?.flatten();
    let info = services.registration_tokens.create(token, length, uses_allowed, expiry_time)?;
    Ok(Json(token_json(&info)))
}

/// `GET /_synapse/admin/v1/registration_tokens/{token}`.
pub async fn get(
    State(services): State<AppState>,
    Path(token): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    Ok(Json(token_json(&services.registration_tokens.get(&token)?)))
}

/// `PUT /_synapse/admin/v1/registration_tokens/{token}` with `uses_allowed` and/or
/// `expiry_time` (null removes the limit).
pub async fn update(
    State(services): State<AppState>,
    Path(token): Path<String>,
    _: AdminCaller,
    body: axum::body::Body,
) -> Result<Json<JsonValue>> {
    let body = json_object(&limited_body(&services, body).await?, true)?;
    let change = TokenChange {
        uses_allowed: nullable_count(&body, "uses_allowed", "a non-negative integer or null")?,
        expiry_time: nullable_count(&body, "expiry_time", "an integer or null")?,
    };
    Ok(Json(token_json(&services.registration_tokens.update(&token, change)?)))
}

/// `DELETE /_synapse/admin/v1/registration_tokens/{token}`.
pub async fn delete(
    State(services): State<AppState>,
    Path(token): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    services.registration_tokens.delete(&token)?;
    Ok(Json(json!({})))
}
