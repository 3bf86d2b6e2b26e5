//! What the service layer knows about the request it serves, in plain types: the HTTP layer
//! fills a [`RequestContext`] for every request, and services that must tie a decision to
//! the request (user-interactive auth binds its sessions to it) take it as an argument. It
//! carries facts about the request, never the HTTP machinery itself: who made it (the
//! [`Actor`], known once the request is authenticated), from where (the client address, after
//! trusted proxies), with what (the user agent), and the ID its log lines and audit records
//! share.

use ruma::{OwnedDeviceId, OwnedUserId};

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
    /// A local user through one of their devices' access tokens.
    /// A local user: through one of their devices' access tokens, or (without a device) as the
    /// sender of an event whose request is not at hand.
    User { user_id: OwnedUserId, device_id: Option<OwnedDeviceId> },
    /// An operator command run on the server's host (the `conduit` command line).
    Operator,
    /// The server itself (sweeps, timers, delayed events coming due).
    Server,
}

impl Actor {
    /// The user behind the action, when there is one.
    pub fn user_id(&self) -> Option<&OwnedUserId> {
        match self {
            Actor::User { user_id, .. } => Some(user_id),
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
