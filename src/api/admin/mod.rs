//! Synapse's admin API (`/_synapse/admin/...`), which admin tools (synapse-admin, Draupnir)
//! and Element speak. Only server admins may call it: `AdminCaller` authenticates like every
//! access-token endpoint and then checks the admin flag, once for every handler here. ruma
//! has no types for these endpoints, so handlers take and answer plain JSON.

pub mod appservices;
pub mod audit;
pub mod jobs;
pub mod media;
pub mod ratelimit;
pub mod registration_tokens;
pub mod reports;
pub mod rooms;
pub mod server_notices;
pub mod users;

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{FromRequestParts, RawQuery},
    http::request::Parts,
    routing::{get, post, put},
};
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Map as JsonMap, Value as JsonValue, json};

use super::{AppState, ruma::Authenticated};
use crate::{Error, Result, service::Services};

/// The query parameters of an admin request, read with Matrix errors for bad values.
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn parse(query: RawQuery) -> Self {
        Self(url::form_urlencoded::parse(query.0.unwrap_or_default().as_bytes()).into_owned().collect())
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn u64(&self, key: &str) -> Result<Option<u64>> {
        self.str(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    Error::invalid_param(format!("Query parameter {key:?} must be a non-negative integer"))
                })
            })
            .transpose()
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.str(key) {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(Error::invalid_param(format!("Query parameter {key:?} must be true or false"))),
        }
    }

    /// `from` (an offset), `limit` (default `default_limit`) and `dir` (`f` or `b`, default
    /// `f`): whether the listing goes backwards.
    pub fn paging(&self, default_limit: usize) -> Result<(usize, usize, bool)> {
        let from = self.offset("from")?.unwrap_or(0);
        let limit = self.offset("limit")?.unwrap_or(default_limit);
        let backwards = self.backwards()?.unwrap_or(false);
        Ok((from, limit, backwards))
    }

    pub fn backwards(&self) -> Result<Option<bool>> {
        match self.str("dir") {
            None => Ok(None),
            Some("f") => Ok(Some(false)),
            Some("b") => Ok(Some(true)),
            Some(_) => Err(Error::invalid_param("Unknown direction: dir must be f or b")),
        }
    }

    fn offset(&self, key: &str) -> Result<Option<usize>> {
        match self.str(key) {
            None => Ok(None),
            Some(v) => v.parse::<usize>().map(Some).map_err(|_| {
                Error::invalid_param(format!("Query parameter {key:?} must be a non-negative integer"))
            }),
        }
    }
}

pub fn user_id(raw: &str) -> Result<OwnedUserId> {
    OwnedUserId::try_from(raw).map_err(|e| Error::invalid_param(format!("Invalid user ID: {e}")))
}

pub fn room_id(raw: &str) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(raw).map_err(|e| Error::invalid_param(format!("Invalid room ID: {e}")))
}

/// A JSON body (or `{}` for an empty one, as Synapse takes it for the endpoints whose
/// fields are all optional).
pub async fn json_body<T: serde::de::DeserializeOwned>(
    services: &Services,
    body: axum::body::Body,
) -> Result<T> {
    let bytes = super::ruma::limited_body(services, body).await?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
    serde_json::from_slice(bytes).map_err(|e| Error::bad_json(format!("Invalid JSON body: {e}")))
}

/// The admin API's user, device, registration token and server notice routes.
pub fn user_routes() -> Router<AppState> {
    const V1: &str = "/_synapse/admin/v1";
    const V2: &str = "/_synapse/admin/v2";
    Router::new()
        .route(&format!("{V1}/server_version"), get(server_version))
        .route(&format!("{V1}/users/{{user_id}}/admin"), get(users::get_admin).put(users::set_admin))
        .route(&format!("{V2}/users"), get(users::list_users_v2))
        .route("/_synapse/admin/v3/users", get(users::list_users_v3))
        .route(&format!("{V2}/users/{{user_id}}"), get(users::get_user).put(users::put_user))
        .route(&format!("{V1}/deactivate/{{user_id}}"), post(users::deactivate))
        .route(&format!("{V1}/reset_password/{{user_id}}"), post(users::reset_password))
        .route(&format!("{V1}/whois/{{user_id}}"), get(users::whois))
        .route(&format!("{V1}/users/{{user_id}}/login"), post(users::login_as))
        .route(&format!("{V1}/users/{{user_id}}/joined_rooms"), get(users::joined_rooms))
        .route(&format!("{V1}/users/{{user_id}}/memberships"), get(users::memberships))
        .route(&format!("{V1}/users/{{user_id}}/pushers"), get(users::pushers))
        .route(&format!("{V1}/users/{{user_id}}/accountdata"), get(users::account_data))
        .route(&format!("{V1}/username_available"), get(users::username_available))
        .route(
            &format!("{V1}/users/{{user_id}}/shadow_ban"),
            post(users::shadow_ban).delete(users::unshadow_ban),
        )
        .route(&format!("{V1}/suspend/{{user_id}}"), put(users::suspend))
        .route(&format!("{V2}/users/{{user_id}}/devices"), get(users::devices))
        .route(
            &format!("{V2}/users/{{user_id}}/devices/{{device_id}}"),
            get(users::get_device).put(users::put_device).delete(users::delete_device),
        )
        .route(&format!("{V2}/users/{{user_id}}/delete_devices"), post(users::delete_devices))
        .route(&format!("{V1}/registration_tokens"), get(registration_tokens::list))
        .route(&format!("{V1}/registration_tokens/new"), post(registration_tokens::create))
        .route(
            &format!("{V1}/registration_tokens/{{token}}"),
            get(registration_tokens::get)
                .put(registration_tokens::update)
                .delete(registration_tokens::delete),
        )
        .route(&format!("{V1}/send_server_notice"), post(server_notices::send))
        .route(&format!("{V1}/send_server_notice/{{txn_id}}"), put(server_notices::send_with_txn))
}

/// `GET /_synapse/admin/v1/server_version`: which server this is, for admin tools. Like
/// Synapse's, it needs no authentication (admin tools ask it before logging in).
pub async fn server_version() -> Json<JsonValue> {
    Json(json!({ "server_version": concat!("conduit ", env!("CARGO_PKG_VERSION")) }))
}

/// A request body that must be a JSON object; with `allow_empty`, no body reads as `{}`.
pub fn json_object(body: &[u8], allow_empty: bool) -> Result<JsonMap<String, JsonValue>> {
    if allow_empty && body.is_empty() {
        return Ok(JsonMap::new());
    }
    match serde_json::from_slice(body) {
        Ok(JsonValue::Object(map)) => Ok(map),
        Ok(_) => Err(Error::bad_json("Content must be a JSON object.")),
        Err(_) => Err(Error::not_json("Content not JSON.")),
    }
}

/// A boolean query parameter, `true` or `false`, as Synapse parses them.
pub fn bool_param(value: Option<&str>, name: &str) -> Result<Option<bool>> {
    match value {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(Error::invalid_param(format!(
            "Boolean query parameter {name:?} must be one of ['true', 'false']"
        ))),
    }
}

/// A server admin calling the admin API.
pub struct AdminCaller {
    pub caller: Authenticated,
}

impl FromRequestParts<Arc<Services>> for AdminCaller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, services: &Arc<Services>) -> Result<Self> {
        let caller = Authenticated::from_request_parts(parts, services).await?;
        // The audit layer records the call under this caller, admin or not.
        if let Some(slot) = parts.extensions.get::<audit::CallerSlot>() {
            slot.fill(&caller.context);
        }
        if !services.accounts.is_admin(&caller.identity.user_id)? {
            return Err(Error::forbidden("You are not a server admin"));
        }
        Ok(Self { caller })
    }
}
