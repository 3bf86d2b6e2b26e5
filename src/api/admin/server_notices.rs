//! Server notices in the admin API: `POST /_synapse/admin/v1/send_server_notice` and the
//! idempotent `PUT .../send_server_notice/{txnId}`, each one call to `Admin`.

use axum::{
    Json,
    extract::{Path, State},
};
use serde_json::{Value as JsonValue, json};

use super::{AdminCaller, json_object, user_id};
use crate::{
    Error, Result,
    api::{AppState, ruma::limited_body},
    service::rooms::timeline::Txn,
};

async fn send_notice(
    services: &AppState,
    body: axum::body::Body,
    txn: Option<Txn<'_>>,
) -> Result<Json<JsonValue>> {
    let body = json_object(&limited_body(services, body).await?, false)?;
    let target = match body.get("user_id") {
        Some(JsonValue::String(id)) => user_id(id)?,
        _ => return Err(Error::missing_param("Missing params: ['user_id']")),
    };
    let content = match body.get("content") {
        Some(content @ JsonValue::Object(_)) => content.clone(),
        _ => return Err(Error::missing_param("Missing params: ['content']")),
    };
    if body.get("state_key").is_some() {
        return Err(Error::invalid_param("Server notices cannot be state events"));
    }
    let kind = match body.get("type") {
        None => "m.room.message",
        Some(JsonValue::String(kind)) => kind.as_str(),
        Some(_) => return Err(Error::bad_json("type must be a string")),
    };
    let event_id = services.admin.send_server_notice(&target, kind, content, txn).await?;
    Ok(Json(json!({ "event_id": event_id })))
}

/// `POST /_synapse/admin/v1/send_server_notice` with `user_id` and `content`.
pub async fn send(
    State(services): State<AppState>,
    _: AdminCaller,
    body: axum::body::Body,
) -> Result<Json<JsonValue>> {
    send_notice(&services, body, None).await
}

/// `PUT /_synapse/admin/v1/send_server_notice/{txnId}`: a retransmission answers the
/// event the first request sent.
pub async fn send_with_txn(
    State(services): State<AppState>,
    Path(txn_id): Path<String>,
    AdminCaller { caller }: AdminCaller,
    uri: axum::http::Uri,
    body: axum::body::Body,
) -> Result<Json<JsonValue>> {
    let scope = caller.identity.txn_scope();
    let txn = Txn { device_id: &scope, txn_id: &txn_id, path: uri.path() };
    send_notice(&services, body, Some(txn)).await
}
