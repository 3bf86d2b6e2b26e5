//! The extractor: one path from an HTTP request to a typed ruma request plus the identity its
//! endpoint's declared auth scheme yields. Body limit, then authentication, then parsing.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    body::Body,
    extract::{ConnectInfo, FromRequest, FromRequestParts, Path},
    http::{Method, Request, header, request::Parts},
    response::{IntoResponse, Response},
};
use bytes::BytesMut;
use ruma::api::{
    IncomingRequest, IncomingRequestExt as _, OutgoingResponse, OutgoingResponseExt as _,
    auth_scheme::{
        AccessToken, AccessTokenOptional, AppserviceTokenOptional, AuthScheme, ExtractTokenError,
        NoAccessToken, NoAuthentication,
    },
    error::{DeserializationError, FromHttpRequestError},
};

use crate::{
    Error, Result,
    service::{Services, devices::DeviceIdentity},
};

/// A parsed request and who sent it.
pub struct Ruma<T: IncomingRequest>
where
    T::Authentication: Identify,
{
    pub body: T,
    pub identity: <T::Authentication as Identify>::Identity,
    /// The peer address the request came from.
    pub client_ip: String,
}

/// What each auth scheme proves about the caller, as a type handlers can rely on.
pub trait Identify: AuthScheme {
    type Identity: Send + 'static;

    /// Turn the token the scheme extracted into an identity, or refuse the request.
    fn identify(
        services: &Services,
        token: std::result::Result<Self::Output, Self::ExtractAuthenticationError>,
        client_ip: &str,
    ) -> Result<Self::Identity>;
}

fn token_error(error: ExtractTokenError) -> Error {
    match error {
        ExtractTokenError::MissingAccessToken => Error::missing_token(),
        _ => Error::unknown_token(false, "Invalid access token passed"),
    }
}

fn user_from_token(services: &Services, token: &str, client_ip: &str) -> Result<DeviceIdentity> {
    let identity = services.devices.authenticate(token)?;
    services.devices.touch(&identity, client_ip.to_owned());
    Ok(identity)
}

impl Identify for AccessToken {
    type Identity = DeviceIdentity;

    fn identify(
        services: &Services,
        token: std::result::Result<String, ExtractTokenError>,
        ip: &str,
    ) -> Result<DeviceIdentity> {
        user_from_token(services, &token.map_err(token_error)?, ip)
    }
}

impl Identify for AccessTokenOptional {
    type Identity = Option<DeviceIdentity>;

    /// A token that is present must be valid; only its absence is optional.
    fn identify(
        services: &Services,
        token: std::result::Result<Option<String>, ExtractTokenError>,
        ip: &str,
    ) -> Result<Option<DeviceIdentity>> {
        token.map_err(token_error)?.map(|t| user_from_token(services, &t, ip)).transpose()
    }
}

/// `/register` and `/login`, where a token only matters to application services. None are
/// registered yet, so a token is ignored: clients that still hold an old or expired token
/// (matrix-js-sdk sends it) must still be able to log in again.
impl Identify for AppserviceTokenOptional {
    type Identity = ();

    fn identify(
        _: &Services,
        _: std::result::Result<Option<String>, ExtractTokenError>,
        _: &str,
    ) -> Result<()> {
        Ok(())
    }
}

impl Identify for NoAccessToken {
    type Identity = ();

    fn identify(_: &Services, _: std::result::Result<(), std::convert::Infallible>, _: &str) -> Result<()> {
        Ok(())
    }
}

impl Identify for NoAuthentication {
    type Identity = ();

    fn identify(_: &Services, _: std::result::Result<(), std::convert::Infallible>, _: &str) -> Result<()> {
        Ok(())
    }
}

fn parse_error(error: FromHttpRequestError) -> Error {
    match error {
        FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => {
            if e.is_syntax() || e.is_eof() {
                Error::not_json("Content not JSON.")
            } else {
                Error::bad_json(e.to_string())
            }
        }
        FromHttpRequestError::Deserialization(e) => Error::invalid_param(e.to_string()),
        FromHttpRequestError::MethodMismatch { .. } => Error::MethodNotAllowed,
        _ => Error::bad_json("Malformed request"),
    }
}

impl<T> FromRequest<Arc<Services>> for Ruma<T>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: Identify,
{
    type Rejection = Error;

    async fn from_request(request: Request<Body>, services: &Arc<Services>) -> Result<Self> {
        let (mut parts, body) = request.into_parts();
        let limit = services.config.max_request_size as usize;
        if declared_length(&parts).is_some_and(|len| len > limit as u64) {
            return Err(Error::new(ruma::api::error::ErrorKind::TooLarge, "Request body too large"));
        }
        let (path_args, client_ip) = path_args_and_ip(&mut parts).await;
        let bytes = axum::body::to_bytes(body, limit)
            .await
            .map_err(|_| Error::new(ruma::api::error::ErrorKind::TooLarge, "Request body too large"))?;

        // An empty POST/PUT body reads as `{}`: clients send none where every field is
        // optional (matrix-nio's join), and Synapse accepts that. Endpoints with required
        // fields still answer M_BAD_JSON for the missing field.
        let empty_object: &[u8] = b"{}";
        let body_bytes = if bytes.is_empty() && (parts.method == Method::POST || parts.method == Method::PUT)
        {
            empty_object
        } else {
            bytes.as_ref()
        };
        let (body, identity) =
            authenticate_and_parse::<T>(services, parts, body_bytes, &path_args, &client_ip)?;
        Ok(Self { body, identity, client_ip })
    }
}

/// A request whose body is left unread, for uploads that must stream to disk: authenticated
/// and parsed from its head (path, query, headers) exactly as `Ruma<T>` is, with the body
/// handed to the handler as it arrives. The parsed request's body fields are empty.
pub struct RumaStream<T: IncomingRequest>
where
    T::Authentication: Identify,
{
    pub head: T,
    pub identity: <T::Authentication as Identify>::Identity,
    /// The `Content-Length` the client declared, if any.
    pub declared_length: Option<u64>,
    pub body: Body,
}

impl<T> FromRequest<Arc<Services>> for RumaStream<T>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: Identify,
{
    type Rejection = Error;

    async fn from_request(request: Request<Body>, services: &Arc<Services>) -> Result<Self> {
        let (mut parts, body) = request.into_parts();
        let declared_length = declared_length(&parts);
        let (path_args, client_ip) = path_args_and_ip(&mut parts).await;
        let (head, identity) = authenticate_and_parse::<T>(services, parts, &[], &path_args, &client_ip)?;
        Ok(Self { head, identity, declared_length, body })
    }
}

fn declared_length(parts: &Parts) -> Option<u64> {
    parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// Path parameters (percent-decoded by axum; ruma takes them decoded) and the peer address.
async fn path_args_and_ip(parts: &mut Parts) -> (Vec<String>, String) {
    let path_args: Vec<String> = match Path::<Vec<String>>::from_request_parts(parts, &()).await {
        Ok(Path(args)) => args,
        Err(_) => Vec::new(),
    };
    let client_ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip().to_string())
        .unwrap_or_default();
    (path_args, client_ip)
}

/// Authenticate by the endpoint's scheme, then parse the ruma request from the head and
/// `body_bytes`.
fn authenticate_and_parse<T>(
    services: &Services,
    parts: Parts,
    body_bytes: &[u8],
    path_args: &[String],
    client_ip: &str,
) -> Result<(T, <T::Authentication as Identify>::Identity)>
where
    T: IncomingRequest,
    T::Authentication: Identify,
{
    let http_request = Request::from_parts(parts, body_bytes);
    let token = <T::Authentication as AuthScheme>::extract_authentication(&http_request);
    let identity = <T::Authentication as Identify>::identify(services, token, client_ip)?;
    let mut args: Vec<&str> = path_args.iter().map(String::as_str).collect();
    // Routes registered without a trailing empty parameter (`/state/{type}` for the empty
    // state key) hand ruma an empty string for it.
    let builder = T::PATH_BUILDER;
    let expected = ::ruma::api::path_builder::PathBuilder::all_paths(&builder)
        .next()
        .map_or(0, |path| path.matches('{').count());
    while args.len() < expected {
        args.push("");
    }
    // Some of ruma's deserialisers index JSON maps without checking (login's `{}` panics
    // with "no entry found for key"); parsing touches only this request, so a panic
    // there is a malformed body, not a broken server.
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        T::try_from_http_request(http_request, &args)
    }))
    .map_err(|_| Error::bad_json("Malformed request body"))?;
    Ok((parsed.map_err(parse_error)?, identity))
}

/// A ruma response serialised for axum.
pub struct RumaResponse<T>(pub T);

/// A ruma response whose JSON body `fill` completes before it is sent: ruma leaves out empty
/// lists that some endpoints' clients read without checking (`/search`'s `results`).
pub struct FilledResponse<T> {
    pub response: T,
    pub fill: fn(&mut serde_json::Value),
}

impl<T: OutgoingResponse> IntoResponse for FilledResponse<T> {
    fn into_response(self) -> Response {
        let fill = self.fill;
        rewritten(self.response, |body| {
            let mut json = serde_json::from_slice(body)?;
            fill(&mut json);
            serde_json::to_vec(&json)
        })
    }
}

/// A ruma response whose serialised body `rewrite` completes before it is sent, for bodies
/// too large to re-read as a `serde_json::Value` (`/sync`): the rewrite can keep the parts
/// it does not touch as raw JSON.
pub struct RewrittenResponse<T> {
    pub response: T,
    pub rewrite: fn(&[u8]) -> serde_json::Result<Vec<u8>>,
}

impl<T: OutgoingResponse> IntoResponse for RewrittenResponse<T> {
    fn into_response(self) -> Response {
        rewritten(self.response, self.rewrite)
    }
}

/// Serialise a ruma response and pass its body through `rewrite`.
fn rewritten<T: OutgoingResponse>(
    response: T,
    rewrite: impl FnOnce(&[u8]) -> serde_json::Result<Vec<u8>>,
) -> Response {
    let response = match response.try_into_http_response::<Vec<u8>>() {
        Ok(response) => response,
        Err(e) => return Error::internal(format!("serialising response: {e}")).into_response(),
    };
    let (mut parts, body) = response.into_parts();
    match rewrite(&body) {
        Ok(bytes) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(bytes))
        }
        Err(e) => Error::internal(format!("completing response: {e}")).into_response(),
    }
}

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<BytesMut>() {
            Ok(response) => response.map(|b| Body::from(b.freeze())).into_response(),
            Err(e) => Error::internal(format!("serialising response: {e}")).into_response(),
        }
    }
}
