//! Synapse's admin API (`/_synapse/admin/...`), which admin tools (synapse-admin, Draupnir)
//! and Element speak. Only server admins may call it: `AdminCaller` authenticates like every
//! access-token endpoint and then checks the admin flag, once for every handler here. ruma
//! has no types for these endpoints, so handlers take and answer plain JSON.

pub mod ratelimit;
pub mod users;

use std::sync::Arc;

use axum::{extract::FromRequestParts, http::request::Parts};

use super::ruma::Authenticated;
use crate::{Error, Result, service::Services};

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
