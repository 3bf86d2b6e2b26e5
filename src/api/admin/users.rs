//! Users in the admin API: the admin flag, the user list and details, create-or-modify,
//! deactivation, password reset, whois, "login as", joined rooms, memberships, pushers,
//! account data, name availability, shadow bans, suspension, and devices. Each handler
//! parses the request, makes one call to `Admin` (or `Accounts` for the admin flag) and
//! shapes Synapse's answer.

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
};
use ruma::OwnedDeviceId;
use serde::Deserialize;
use serde_json::{Map as JsonMap, Value as JsonValue, json};

use super::{AdminCaller, bool_param, json_object, user_id};
use crate::{
    Error, Result,
    api::{AppState, ruma::limited_body},
    service::admin::{USER_ORDERS, UserChanges, UserListQuery},
};

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

/// The user list's query string. `not_user_type` may repeat, so the query is read as pairs.
fn list_query(pairs: &[(String, String)], tri_state_deactivated: bool) -> Result<UserListQuery> {
    let one = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let number = |name: &str, default: usize| -> Result<usize> {
        match one(name) {
            None => Ok(default),
            Some(v) => v.parse::<usize>().map_err(|_| {
                Error::invalid_param(format!("Query parameter {name:?} must be a non-negative integer"))
            }),
        }
    };
    let deactivated = bool_param(one("deactivated"), "deactivated")?;
    let order_by = one("order_by").unwrap_or("name").to_owned();
    if !USER_ORDERS.contains(&order_by.as_str()) {
        return Err(Error::invalid_param(format!("Unknown value for order_by: {order_by}")));
    }
    let backwards = match one("dir") {
        None | Some("f") => false,
        Some("b") => true,
        Some(other) => return Err(Error::invalid_param(format!("Unknown value for dir: {other}"))),
    };
    Ok(UserListQuery {
        from: number("from", 0)?,
        limit: number("limit", 100)?,
        user_id: one("user_id").map(str::to_owned),
        name: one("name").map(str::to_owned),
        guests: bool_param(one("guests"), "guests")?.unwrap_or(true),
        admins: bool_param(one("admins"), "admins")?,
        // v2: deactivated accounts are left out unless asked for; v3: true, false or both.
        deactivated: if tri_state_deactivated {
            deactivated
        } else if deactivated == Some(true) {
            None
        } else {
            Some(false)
        },
        locked: bool_param(one("locked"), "locked")?.unwrap_or(false),
        order_by,
        backwards,
        not_user_types: pairs.iter().filter(|(k, _)| k == "not_user_type").map(|(_, v)| v.clone()).collect(),
    })
}

async fn list(services: &AppState, pairs: &[(String, String)], v3: bool) -> Result<Json<JsonValue>> {
    let page = services.admin.list_users(&list_query(pairs, v3)?)?;
    let mut body = json!({ "users": page.users, "total": page.total });
    if let Some(next) = page.next_token {
        body["next_token"] = json!(next);
    }
    Ok(Json(body))
}

/// `GET /_synapse/admin/v2/users`.
pub async fn list_users_v2(
    State(services): State<AppState>,
    _: AdminCaller,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<JsonValue>> {
    list(&services, &pairs, false).await
}

/// `GET /_synapse/admin/v3/users`, where `deactivated` is tri-state.
pub async fn list_users_v3(
    State(services): State<AppState>,
    _: AdminCaller,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Json<JsonValue>> {
    list(&services, &pairs, true).await
}

/// `GET /_synapse/admin/v2/users/{userId}`.
pub async fn get_user(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    Ok(Json(services.admin.user(&user_id(&target)?)?))
}

fn optional_bool(body: &JsonMap<String, JsonValue>, key: &str) -> Result<Option<bool>> {
    match body.get(key) {
        None => Ok(None),
        Some(JsonValue::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(Error::bad_json(format!("'{key}' parameter is not of type boolean"))),
    }
}

/// A nullable string field: absent (`None`), null (`Some(None)`) or a string.
fn nullable_string(body: &JsonMap<String, JsonValue>, key: &str) -> Result<Option<Option<String>>> {
    match body.get(key) {
        None => Ok(None),
        Some(JsonValue::Null) => Ok(Some(None)),
        Some(JsonValue::String(s)) => Ok(Some(Some(s.clone()))),
        Some(_) => Err(Error::bad_json(format!("'{key}' must be a string or null"))),
    }
}

fn user_changes(body: &JsonMap<String, JsonValue>) -> Result<UserChanges> {
    let password = match body.get("password") {
        None | Some(JsonValue::Null) => None,
        Some(JsonValue::String(p)) if p.len() <= 512 => Some(p.clone()),
        Some(_) => return Err(Error::invalid_param("Invalid password")),
    };
    Ok(UserChanges {
        password,
        logout_devices: optional_bool(body, "logout_devices")?.unwrap_or(true),
        displayname: nullable_string(body, "displayname")?,
        avatar_url: nullable_string(body, "avatar_url")?,
        admin: optional_bool(body, "admin")?,
        deactivated: optional_bool(body, "deactivated")?,
        locked: optional_bool(body, "locked")?,
        user_type: nullable_string(body, "user_type")?,
    })
}

/// `PUT /_synapse/admin/v2/users/{userId}`: 201 with the new account, or 200 with the
/// changed one.
pub async fn put_user(
    State(services): State<AppState>,
    Path(target): Path<String>,
    AdminCaller { caller }: AdminCaller,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<JsonValue>)> {
    let body = json_object(&limited_body(&services, body).await?, false)?;
    let changes = user_changes(&body)?;
    let (created, user) =
        services.admin.put_user(&caller.identity.user_id, &user_id(&target)?, changes).await?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(user)))
}

/// `POST /_synapse/admin/v1/deactivate/{userId}` with `{"erase": bool}` (default false).
pub async fn deactivate(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
    body: axum::body::Body,
) -> Result<Json<JsonValue>> {
    let body = json_object(&limited_body(&services, body).await?, true)?;
    let erase = match body.get("erase") {
        None => false,
        Some(JsonValue::Bool(b)) => *b,
        Some(_) => return Err(Error::bad_json("Param 'erase' must be a boolean, if given")),
    };
    services.admin.deactivate(&user_id(&target)?, erase).await?;
    Ok(Json(json!({ "id_server_unbind_result": "success" })))
}

/// `POST /_synapse/admin/v1/reset_password/{userId}` with `new_password` and
/// `logout_devices` (default true).
pub async fn reset_password(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
    body: axum::body::Body,
) -> Result<Json<JsonValue>> {
    let body = json_object(&limited_body(&services, body).await?, false)?;
    let password = match body.get("new_password") {
        Some(JsonValue::String(p)) => p.clone(),
        Some(_) => return Err(Error::bad_json("new_password must be a string")),
        None => return Err(Error::missing_param("Missing params: ['new_password']")),
    };
    let logout_devices = optional_bool(&body, "logout_devices")?.unwrap_or(true);
    services.admin.reset_password(&user_id(&target)?, &password, logout_devices).await?;
    Ok(Json(json!({})))
}

/// `GET /_synapse/admin/v1/whois/{userId}`.
pub async fn whois(
    State(services): State<AppState>,
    Path(target): Path<String>,
    AdminCaller { caller }: AdminCaller,
) -> Result<Json<JsonValue>> {
    let response = services.admin.whois(&caller.identity.user_id, &user_id(&target)?)?;
    let body = serde_json::to_value(json!({ "user_id": response.user_id, "devices": response.devices }))
        .map_err(|e| Error::internal(format!("whois: {e}")))?;
    Ok(Json(body))
}

/// `POST /_synapse/admin/v1/users/{userId}/login` with `valid_until_ms`.
pub async fn login_as(
    State(services): State<AppState>,
    Path(target): Path<String>,
    AdminCaller { caller }: AdminCaller,
    body: axum::body::Body,
) -> Result<Json<JsonValue>> {
    let body = json_object(&limited_body(&services, body).await?, true)?;
    let valid_until_ms = match body.get("valid_until_ms") {
        None | Some(JsonValue::Null) => None,
        Some(v) => Some(
            v.as_u64().ok_or_else(|| Error::invalid_param("'valid_until_ms' parameter must be an int"))?,
        ),
    };
    let token = services.admin.login_as(&caller.identity.user_id, &user_id(&target)?, valid_until_ms)?;
    Ok(Json(json!({ "access_token": token })))
}

/// `GET /_synapse/admin/v1/users/{userId}/joined_rooms`.
pub async fn joined_rooms(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    let rooms = services.admin.joined_rooms(&user_id(&target)?)?;
    Ok(Json(json!({ "total": rooms.len(), "joined_rooms": rooms })))
}

/// `GET /_synapse/admin/v1/users/{userId}/memberships`.
pub async fn memberships(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    Ok(Json(json!({ "memberships": services.admin.memberships(&user_id(&target)?)? })))
}

/// `GET /_synapse/admin/v1/users/{userId}/pushers`.
pub async fn pushers(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    let pushers = services.admin.pushers(&user_id(&target)?)?;
    let pushers: Vec<JsonValue> =
        pushers.iter().map(|raw| serde_json::from_str(raw.get()).unwrap_or(JsonValue::Null)).collect();
    Ok(Json(json!({ "total": pushers.len(), "pushers": pushers })))
}

/// `GET /_synapse/admin/v1/users/{userId}/accountdata`.
pub async fn account_data(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    Ok(Json(services.admin.account_data(&user_id(&target)?)?))
}

#[derive(Deserialize)]
pub struct UsernameQuery {
    username: Option<String>,
}

/// `GET /_synapse/admin/v1/username_available?username=`.
pub async fn username_available(
    State(services): State<AppState>,
    _: AdminCaller,
    Query(query): Query<UsernameQuery>,
) -> Result<Json<JsonValue>> {
    let name =
        query.username.ok_or_else(|| Error::missing_param("Missing string query parameter 'username'"))?;
    services.admin.username_available(&name)?;
    Ok(Json(json!({ "available": true })))
}

/// `POST /_synapse/admin/v1/users/{userId}/shadow_ban`.
pub async fn shadow_ban(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    services.admin.set_shadow_banned(&user_id(&target)?, true)?;
    Ok(Json(json!({})))
}

/// `DELETE /_synapse/admin/v1/users/{userId}/shadow_ban`.
pub async fn unshadow_ban(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    services.admin.set_shadow_banned(&user_id(&target)?, false)?;
    Ok(Json(json!({})))
}

/// `PUT /_synapse/admin/v1/suspend/{userId}` with `{"suspend": bool}`.
pub async fn suspend(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
    body: axum::body::Body,
) -> Result<Json<JsonValue>> {
    let body = json_object(&limited_body(&services, body).await?, false)?;
    let Some(JsonValue::Bool(suspend)) = body.get("suspend") else {
        return Err(Error::bad_json("Expected {\"suspend\": bool}"));
    };
    let target = user_id(&target)?;
    services.admin.set_suspended(&target, *suspend)?;
    let mut answer = JsonMap::new();
    answer.insert(format!("user_{target}_suspended"), JsonValue::Bool(*suspend));
    Ok(Json(JsonValue::Object(answer)))
}

/// `GET /_synapse/admin/v2/users/{userId}/devices`.
pub async fn devices(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    let devices = services.admin.devices(&user_id(&target)?)?;
    Ok(Json(json!({ "total": devices.len(), "devices": devices })))
}

/// `GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}`.
pub async fn get_device(
    State(services): State<AppState>,
    Path((target, device)): Path<(String, String)>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    Ok(Json(services.admin.device(&user_id(&target)?, &OwnedDeviceId::from(device))?))
}

/// `PUT /_synapse/admin/v2/users/{userId}/devices/{deviceId}` with `display_name`.
pub async fn put_device(
    State(services): State<AppState>,
    Path((target, device)): Path<(String, String)>,
    _: AdminCaller,
    body: axum::body::Body,
) -> Result<Json<JsonValue>> {
    let body = json_object(&limited_body(&services, body).await?, true)?;
    let name = match body.get("display_name") {
        None | Some(JsonValue::Null) => None,
        Some(JsonValue::String(s)) => Some(s.clone()),
        Some(_) => return Err(Error::bad_json("display_name must be a string")),
    };
    services.admin.rename_device(&user_id(&target)?, &OwnedDeviceId::from(device), name)?;
    Ok(Json(json!({})))
}

/// `DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}`.
pub async fn delete_device(
    State(services): State<AppState>,
    Path((target, device)): Path<(String, String)>,
    _: AdminCaller,
) -> Result<Json<JsonValue>> {
    services.admin.delete_devices(&user_id(&target)?, &[OwnedDeviceId::from(device)])?;
    Ok(Json(json!({})))
}

/// `POST /_synapse/admin/v2/users/{userId}/delete_devices` with `{"devices": [...]}`.
pub async fn delete_devices(
    State(services): State<AppState>,
    Path(target): Path<String>,
    _: AdminCaller,
    body: axum::body::Body,
) -> Result<Json<JsonValue>> {
    let body = json_object(&limited_body(&services, body).await?, false)?;
    let devices: Vec<OwnedDeviceId> = match body.get("devices") {
        Some(JsonValue::Array(ids)) => ids
            .iter()
            .map(|id| {
                id.as_str().map(OwnedDeviceId::from).ok_or_else(|| Error::bad_json("devices must be strings"))
            })
            .collect::<Result<_>>()?,
        _ => return Err(Error::missing_param("Missing params: ['devices']")),
    };
    services.admin.delete_devices(&user_id(&target)?, &devices)?;
    Ok(Json(json!({})))
}
