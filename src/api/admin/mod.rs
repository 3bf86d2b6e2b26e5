//! Synapse's admin API (`/_synapse/admin/...`), which admin tools (synapse-admin, Draupnir)
//! and Element speak. Only server admins may call it: `AdminCaller` authenticates like every
//! access-token endpoint and then checks the admin flag, once for every handler here. ruma
//! has no types for these endpoints, so handlers take and answer plain JSON.

pub mod jobs;
pub mod media;
pub mod reports;
pub mod rooms;
pub mod users;

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{FromRequestParts, RawQuery},
    http::request::Parts,
};
use ruma::{OwnedRoomId, OwnedUserId};

use super::ruma::Authenticated;
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

/// A server admin calling the admin API.
pub struct AdminCaller {
    pub caller: Authenticated,
}

impl FromRequestParts<Arc<Services>> for AdminCaller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, services: &Arc<Services>) -> Result<Self> {
        let caller = Authenticated::from_request_parts(parts, services).await?;
        if !services.accounts.is_admin(&caller.identity.user_id)? {
            return Err(Error::forbidden("You are not a server admin"));
        }
        Ok(Self { caller })
    }
}
