//! What the service layer knows about the request it serves, in plain types: the HTTP layer
//! fills a [`RequestContext`] for every request, and services that must tie a decision to
//! the request (user-interactive auth binds its sessions to it) take it as an argument. It
//! carries facts about the request, never the HTTP machinery itself.

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

/// Facts about one request: how it was made and from where.
#[derive(Clone, Debug)]
pub struct RequestContext {
    pub method: Method,
    /// The request path as sent (percent-encoded, without the query string, which may hold
    /// an access token).
    pub path: String,
    /// The peer address the request came from.
    pub client_ip: String,
}
