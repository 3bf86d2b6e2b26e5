//! What the service layer knows about the request it serves, in plain types: the HTTP layer
//! fills a [`RequestContext`] for every request, and services that must tie a decision to
//! the request (user-interactive auth binds its sessions to it) take it as an argument. It
//! carries facts about the request, never the HTTP machinery itself: who made it (the
//! [`Actor`], known once the request is authenticated), from where (the client address, after
//! trusted proxies), with what (the user agent), and the ID its log lines and audit records
//! share.

use std::sync::Arc;

use ruma::{DeviceId, OwnedDeviceId, OwnedServerName, OwnedUserId};

use super::devices::DeviceIdentity;
use crate::{Error, matrix::appservice::Registration};

/// The request method, as far as a service needs to tell requests apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    /// Any other method (the client-server API uses none of them).
    Other,
}

impl Method {
    /// The method's name, for storing alongside what it was used for.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Other => "OTHER",
        }
    }
}

/// Who is acting: the subject of rate limits and the actor of audit records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// A request without credentials (login, registration, public endpoints).
    Anonymous,
    /// A local user: through one of their devices' access tokens, or (without a device) as the
    /// sender of an event whose request is not at hand.
    User { user_id: OwnedUserId, device_id: Option<OwnedDeviceId> },
    /// An application service (its `id`) acting as one of its users, with one of their
    /// devices when it masquerades one.
    Appservice { id: String, user_id: OwnedUserId, device_id: Option<OwnedDeviceId> },
    /// Another Matrix server, by the X-Matrix signature of its request.
    RemoteServer { server_name: OwnedServerName },
    /// An operator command run on the server's host (the `conduit` command line).
    Operator,
    /// The server itself (sweeps, timers, delayed events coming due).
    Server,
}

impl Actor {
    /// The user behind the action, when there is one.
    pub fn user_id(&self) -> Option<&OwnedUserId> {
        match self {
            Actor::User { user_id, .. } | Actor::Appservice { user_id, .. } => Some(user_id),
            _ => None,
        }
    }
}

/// Facts about one request: how it was made, from where, and by whom.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub method: Method,
    /// The request path as sent (percent-encoded, without the query string, which may hold
    /// an access token).
    pub path: String,
    /// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest
    /// untrusted address in its `X-Forwarded-For`.
    pub client_ip: String,
    /// The `User-Agent` header, when readable (cut to a bounded length).
    pub user_agent: Option<String>,
    /// The request's ID, also in its log span and its audit records.
    pub request_id: String,
    /// Who made the request; `Anonymous` until (and unless) it authenticates.
    pub actor: Actor,
}

impl RequestContext {
    /// The context of work no client asked for, done by the server or an operator command.
    pub fn internal(actor: Actor, what: &str) -> Self {
        Self {
            method: Method::Other,
            path: what.to_owned(),
            client_ip: String::new(),
            user_agent: None,
            request_id: String::new(),
            actor,
        }
    }
}

/// Who an authenticated client-server request acts as: a user through one of their devices'
/// tokens, or an application service acting as its sender or one of its users (with a
/// device only when it names one it may use).
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: OwnedUserId,
    pub device_id: Option<OwnedDeviceId>,
    /// The application service behind the request, if it came with an `as_token`.
    pub appservice: Option<Arc<Registration>>,
}

impl Caller {
    /// The device the request came from; endpoints that act on a device (keys, to-device,
    /// sync, logout) refuse an appservice request that names none.
    pub fn device(&self) -> Result<&DeviceId, Error> {
        self.device_id.as_deref().ok_or_else(|| {
            Error::missing_param(
                "This endpoint acts on a device: an application service names one with the device_id query parameter",
            )
        })
    }

    /// The user and device, for flows that act on the calling device (password change,
    /// deactivation, device deletion: each needs the device to keep or re-authenticate).
    pub fn device_identity(&self) -> Result<DeviceIdentity, Error> {
        Ok(DeviceIdentity { user_id: self.user_id.clone(), device_id: self.device()?.to_owned() })
    }

    /// What scopes the request's transaction IDs: its device, or for an appservice request
    /// without one, the appservice. The appservice scope is not a device ID any client is
    /// given; a client that chose exactly this string as its device ID would share
    /// transaction IDs with the appservice, and only for a user the appservice controls.
    pub fn txn_scope(&self) -> OwnedDeviceId {
        match (&self.device_id, &self.appservice) {
            (Some(device_id), _) => device_id.clone(),
            (None, Some(appservice)) => format!("{} (application service)", appservice.id).into(),
            (None, None) => OwnedDeviceId::from(""),
        }
    }

    /// Who acts, for the request's context.
    pub fn actor(&self) -> Actor {
        match &self.appservice {
            Some(appservice) => Actor::Appservice {
                id: appservice.id.clone(),
                user_id: self.user_id.clone(),
                device_id: self.device_id.clone(),
            },
            None => Actor::User { user_id: self.user_id.clone(), device_id: self.device_id.clone() },
        }
    }
}

/// Who an authenticated server-server request comes from: the server whose key signed its
/// X-Matrix `Authorization` header, checked against the request's method, path, body and
/// destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteServer {
    pub server_name: OwnedServerName,
}

impl RemoteServer {
    pub fn actor(&self) -> Actor {
        Actor::RemoteServer { server_name: self.server_name.clone() }
    }
}
