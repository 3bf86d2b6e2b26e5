//! What the HTTP edge learns about a request before any handler runs: its ID and the client's
//! address (through trusted proxies) and user agent. The edge layer works them out once,
//! puts them in the request's extensions for the extractors and the log span, and names the
//! ID in the response's `X-Request-Id` header, so an operator can find a client's complaint in
//! the log and the audit log.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::{ConnectInfo, Request},
    http::{HeaderMap, HeaderValue, header, request::Parts},
    response::Response,
};
use ipnet::IpNet;

use super::AppState;
use crate::service::context::{Actor, Method, RequestContext};

/// The response header naming the request's ID.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest user agent kept; longer ones are cut.
const MAX_USER_AGENT_LEN: usize = 512;

/// A request's ID, client address and user agent, worked out by [`annotate`].
#[derive(Clone, Debug)]
pub struct RequestMeta {
    pub request_id: String,
    pub client_ip: String,
    pub user_agent: Option<String>,
}

/// Works out the request's [`RequestMeta`] and puts it in the request's extensions; answers
/// the ID to name in the response (see [`name_request`]). Part of the edge layer
/// (`api::edge`), which every request passes first.
pub fn annotate(services: &AppState, request: &mut Request) -> Option<HeaderValue> {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip());
    let client_ip = client_address(peer, request.headers(), &services.config.trusted_proxies)
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let meta =
        RequestMeta { request_id: new_request_id(), client_ip, user_agent: user_agent(request.headers()) };
    let id = HeaderValue::from_str(&meta.request_id).ok();
    request.extensions_mut().insert(meta);
    id
}

/// Names the request's ID in the response's `X-Request-Id` header.
pub fn name_request(response: &mut Response, id: Option<HeaderValue>) {
    if let Some(id) = id {
        response.headers_mut().insert(REQUEST_ID_HEADER, id);
    }
}

/// 16 hex digits: unique enough to find one request in a log, short enough to read out.
fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The client's address: the peer's, unless the peer is a trusted proxy, in which case the
/// `X-Forwarded-For` list is walked from the right (the hop nearest to us) past every trusted
/// proxy to the first address that is not one. A header that cannot be read leaves the
/// peer's address.
pub fn client_address(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else { return Some(peer) };
        for hop in text.split(',') {
            match parse_hop(hop.trim()) {
                Some(ip) => hops.push(ip),
                None => return Some(peer),
            }
        }
    }
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: an address, possibly with a port or in brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The `User-Agent` header, cut to a bounded length at a character boundary.
pub fn user_agent(headers: &HeaderMap) -> Option<String> {
    let agent = headers.get(header::USER_AGENT)?.to_str().ok()?;
    let mut end = agent.len().min(MAX_USER_AGENT_LEN);
    while !agent.is_char_boundary(end) {
        end -= 1;
    }
    Some(agent[..end].to_owned()).filter(|a| !a.is_empty())
}

/// The request's context for the services, before authentication: its meta (worked out here
/// if the layer did not run, as in unit tests), method and path.
pub fn context_of(parts: &Parts) -> RequestContext {
    let meta = parts.extensions.get::<RequestMeta>().cloned().unwrap_or_else(|| RequestMeta {
        request_id: new_request_id(),
        client_ip: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string())
            .unwrap_or_default(),
        user_agent: user_agent(&parts.headers),
    });
    RequestContext {
        method: method_of(&parts.method),
        path: parts.uri.path().to_owned(),
        client_ip: meta.client_ip,
        user_agent: meta.user_agent,
        request_id: meta.request_id,
        actor: Actor::Anonymous,
    }
}

fn method_of(method: &axum::http::Method) -> Method {
    use axum::http::Method as M;
    match *method {
        M::GET => Method::Get,
        M::POST => Method::Post,
        M::PUT => Method::Put,
        M::DELETE => Method::Delete,
        _ => Method::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn loopback() -> Vec<IpNet> {
        vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let found = client_address(Some(ip("203.0.113.9")), &headers(&["10.9.9.9"]), &loopback());
        assert_eq!(found, Some(ip("203.0.113.9")));
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        let found = client_address(Some(ip("127.0.0.1")), &headers(&["198.51.100.7"]), &loopback());
        assert_eq!(found, Some(ip("198.51.100.7")));
    }

    #[test]
    fn spoofed_entries_left_of_the_first_untrusted_hop_are_ignored() {
        // The client sent "X-Forwarded-For: 1.2.3.4"; the proxy appended the real address.
        let found = client_address(Some(ip("::1")), &headers(&["1.2.3.4, 198.51.100.7"]), &loopback());
        assert_eq!(found, Some(ip("198.51.100.7")));
    }

    #[test]
    fn chains_of_trusted_proxies_are_walked_across_header_lines() {
        let trusted = vec!["127.0.0.0/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()];
        let found = client_address(Some(ip("127.0.0.1")), &headers(&["198.51.100.7", "10.1.1.1"]), &trusted);
        assert_eq!(found, Some(ip("198.51.100.7")));
    }

    #[test]
    fn ports_and_brackets_are_understood_and_garbage_keeps_the_peer() {
        let found = client_address(Some(ip("127.0.0.1")), &headers(&["[2001:db8::1]"]), &loopback());
        assert_eq!(found, Some(ip("2001:db8::1")));
        let found = client_address(Some(ip("127.0.0.1")), &headers(&["198.51.100.7:5555"]), &loopback());
        assert_eq!(found, Some(ip("198.51.100.7")));
        let found = client_address(Some(ip("127.0.0.1")), &headers(&["not an address"]), &loopback());
        assert_eq!(found, Some(ip("127.0.0.1")));
    }

    #[test]
    fn no_trusted_proxies_believes_no_header() {
        let found = client_address(Some(ip("127.0.0.1")), &headers(&["198.51.100.7"]), &[]);
        assert_eq!(found, Some(ip("127.0.0.1")));
    }
}
