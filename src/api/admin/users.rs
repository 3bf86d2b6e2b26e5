//! Users in the admin API: the admin flag.

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
};

fn user_id(raw: &str) -> Result<OwnedUserId> {
    OwnedUserId::try_from(raw).map_err(|e| Error::invalid_param(format!("Invalid user ID: {e}")))
}

/// `GET /_synapse/admin/v1/users/{userId}/admin`. Element asks this for the logged-in user
/// to decide whether to show admin tools; a user who is not an admin gets 403, as on
/// Synapse.
pub async fn get_admin(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    let admin = services.accounts.admin_flag(&user_id(&target)?)?;
    Ok(Json(json!({ "admin": admin })))
}

#[derive(serde::Deserialize)]
pub struct SetAdmin {
    admin: bool,
}

/// `PUT /_synapse/admin/v1/users/{userId}/admin` with `{"admin": bool}`.
pub async fn set_admin(
    State(services): State<AppState>,
    Path(target): Path<String>,
    AdminCaller { caller }: AdminCaller,
    body: axum::body::Body,
) -> Result<Json<JsonValue>> {
    let body = limited_body(&services, body).await?;
    let SetAdmin { admin } = serde_json::from_slice(&body)
        .map_err(|e| Error::bad_json(format!("Expected {{\"admin\": bool}}: {e}")))?;
    services.accounts.set_admin(&caller.context, &user_id(&target)?, admin)?;
    Ok(Json(json!({})))
}
