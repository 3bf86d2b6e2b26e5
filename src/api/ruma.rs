//! The extractor: one path from an HTTP request to a typed ruma request plus the identity its
//! endpoint's declared auth scheme yields. Body limit, then authentication, then parsing.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{FromRequest, FromRequestParts, Path},
    http::{Method, Request, header, request::Parts},
    response::{IntoResponse, Response},
};
use bytes::{Bytes, BytesMut};
use ruma::api::{
    IncomingRequest, IncomingRequestExt as _, OutgoingResponse, OutgoingResponseExt as _,
    auth_scheme::{
        AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, AuthScheme,
        ExtractTokenError, NoAccessToken, NoAuthentication,
    },
    error::{DeserializationError, FromHttpRequestError},
    federation::authentication::{ServerSignatures, XMatrix, XMatrixExtractError},
};
use ruma::{OwnedDeviceId, UserId};

use crate::{
    Error, Result,
    api::request::context_of,
    matrix::appservice::Registration,
    matrix::limits,
    service::{
        Services,
        context::{Actor, Caller, RemoteServer, RequestContext},
    },
};

/// A parsed request and who sent it.
pub struct Ruma<T: IncomingRequest>
where
    T::Authentication: Identify,
{
    pub body: T,
    pub identity: <T::Authentication as Identify>::Identity,
    /// How the request was made and from where, for services that tie decisions to it.
    pub context: RequestContext,
    /// The JSON body as received, for the few endpoints whose clients send keys ruma's
    /// request type does not keep (Synapse keeps extra content given to `/join`).
    pub raw_body: Bytes,
    /// The query string as received (still percent-encoded), for the query parameters of
    /// unstable extensions to an endpoint ruma's request type does not read (MSC4140's
    /// `org.matrix.msc4140.delay` on `PUT /send`). It may hold an access token: never log it.
    pub query: Option<String>,
}

/// Where a request came from, as a device's last-seen record keeps it, and whom an
/// application service's request names.
pub struct Client {
    /// The peer address.
    pub ip: String,
    /// The `User-Agent` header, if the client sent a readable one.
    pub user_agent: Option<String>,
    /// Whether a locked account may make this request: only logging out (as Synapse).
    pub allow_locked: bool,
    /// The `user_id` query parameter: the user an application service acts as.
    pub masquerade_user: Option<String>,
    /// The `device_id` query parameter: the device of that user an application service acts
    /// through.
    pub masquerade_device: Option<String>,
    /// The same under MSC3202's name, for registrations that ask for MSC3202.
    pub msc3202_device: Option<String>,
    /// The request as an X-Matrix signature covers it (method, path and query, body), for
    /// the server-signature scheme only.
    pub signed: Option<axum::http::Request<Vec<u8>>>,
}

/// What each auth scheme proves about the caller, as a type handlers can rely on.
pub trait Identify: AuthScheme {
    type Identity: Send + 'static;

    /// Turn the token the scheme extracted into an identity, or refuse the request.
    fn identify(
        services: &Services,
        token: std::result::Result<Self::Output, Self::ExtractAuthenticationError>,
        client: &Client,
    ) -> Result<Self::Identity>;

    /// Who the identity says is acting, for the request's context.
    fn actor(identity: &Self::Identity) -> Actor;

    /// Whether the scheme checks a server's signature over the whole request: its
    /// `identify` then needs the request in `Client::signed`, and the origin's keys fetched
    /// first ([`prefetch_origin_keys`]).
    const SERVER_SIGNED: bool = false;
}

/// Server-server requests: the X-Matrix signature, checked against the origin's keys
/// (fetched before by [`prefetch_origin_keys`]), names the calling server.
impl Identify for ServerSignatures {
    type Identity = RemoteServer;
    const SERVER_SIGNED: bool = true;

    fn identify(
        services: &Services,
        token: std::result::Result<XMatrix, XMatrixExtractError>,
        client: &Client,
    ) -> Result<RemoteServer> {
        if !services.federation.enabled() {
            return Err(Error::forbidden("This server does not federate"));
        }
        let x_matrix = token.map_err(|e| {
            Error::new(
                ruma::api::error::ErrorKind::Unauthorized,
                format!("Missing or malformed X-Matrix Authorization header: {e}"),
            )
        })?;
        let signed = client.signed.as_ref().ok_or_else(|| Error::internal("signed request not kept"))?;
        let (parts, body) = (signed.method().clone(), signed.body().as_slice());
        let mut request = Request::new(body);
        *request.method_mut() = parts;
        *request.uri_mut() = signed.uri().clone();
        let server_name = services.remote_keys.verify_request(&x_matrix, &request)?;
        Ok(RemoteServer { server_name })
    }

    fn actor(identity: &RemoteServer) -> Actor {
        identity.actor()
    }
}

/// Before a server-signed request is checked: fetch the keys of the origin its X-Matrix
/// header names, unless held (a header that does not parse is refused by `identify`).
async fn prefetch_origin_keys(services: &Services, parts: &Parts) -> Result<()> {
    let Ok(x_matrix) = XMatrix::extract_from_http_headers(&parts.headers) else { return Ok(()) };
    if !services.federation.enabled() {
        return Ok(());
    }
    services.federation.check_server(&x_matrix.origin)?;
    if let Err(e) = services.remote_keys.keys_of(&x_matrix.origin, Some(x_matrix.key.as_str()), 0).await {
        tracing::info!(origin = %x_matrix.origin, error = %e, "the keys of a requesting server could not be fetched");
    }
    Ok(())
}

fn token_error(error: ExtractTokenError) -> Error {
    match error {
        ExtractTokenError::MissingAccessToken => Error::missing_token(),
        _ => Error::unknown_token(false, "Invalid access token passed"),
    }
}

/// Who a token (an appservice's `as_token`, or a device's access token) acts as.
fn caller_from_token(services: &Services, token: &str, client: &Client) -> Result<Caller> {
    if let Some(appservice) = services.appservices.registry().by_as_token(token).cloned() {
        return appservice_caller(services, appservice, client);
    }
    let identity = services.devices.authenticate(token)?;
    if !client.allow_locked {
        services.users.ensure_not_locked(&identity.user_id)?;
    }
    services.devices.touch(&identity, client.ip.clone(), client.user_agent.clone());
    Ok(Caller { user_id: identity.user_id, device_id: Some(identity.device_id), appservice: None })
}

/// An application service acting as its sender, or as the registered user in its namespace
/// that `user_id` names (through one of that user's devices when `device_id` names one), as
/// Synapse checks them.
fn appservice_caller(services: &Services, appservice: Arc<Registration>, client: &Client) -> Result<Caller> {
    let user_id = match client.masquerade_user.as_deref() {
        None => appservice.sender.clone(),
        Some(raw) => {
            let user_id =
                UserId::parse(raw).map_err(|_| Error::invalid_param("user_id is not a valid user ID"))?;
            if user_id.server_name() != services.config.server_name || !appservice.may_act_as(&user_id) {
                return Err(Error::forbidden("Application service cannot masquerade as this user."));
            }
            if user_id != appservice.sender && !services.users.exists(&user_id)? {
                return Err(Error::forbidden("Application service has not registered this user."));
            }
            user_id
        }
    };
    let named_device = client
        .masquerade_device
        .as_deref()
        .or_else(|| client.msc3202_device.as_deref().filter(|_| appservice.msc3202));
    let device_id = match named_device {
        None => None,
        Some(raw) => {
            let device_id = OwnedDeviceId::from(raw);
            if services.devices.get(&user_id, &device_id)?.is_none() {
                return Err(Error::forbidden("Application service has not registered this device."));
            }
            Some(device_id)
        }
    };
    Ok(Caller { user_id, device_id, appservice: Some(appservice) })
}

impl Identify for AccessToken {
    type Identity = Caller;

    fn identify(
        services: &Services,
        token: std::result::Result<String, ExtractTokenError>,
        client: &Client,
    ) -> Result<Caller> {
        caller_from_token(services, &token.map_err(token_error)?, client)
    }

    fn actor(identity: &Caller) -> Actor {
        identity.actor()
    }
}

impl Identify for AccessTokenOptional {
    type Identity = Option<Caller>;

    /// A token that is present must be valid; only its absence is optional.
    fn identify(
        services: &Services,
        token: std::result::Result<Option<String>, ExtractTokenError>,
        client: &Client,
    ) -> Result<Option<Caller>> {
        token.map_err(token_error)?.map(|t| caller_from_token(services, &t, client)).transpose()
    }

    fn actor(identity: &Option<Caller>) -> Actor {
        identity.as_ref().map_or(Actor::Anonymous, Caller::actor)
    }
}

/// `/register` and `/login`, where a token only matters to application services: an
/// `as_token` names its appservice; any other token is ignored, since clients that still
/// hold an old or expired token (matrix-js-sdk sends it) must still be able to log in again.
impl Identify for AppserviceTokenOptional {
    type Identity = Option<Arc<Registration>>;

    fn identify(
        services: &Services,
        token: std::result::Result<Option<String>, ExtractTokenError>,
        _: &Client,
    ) -> Result<Option<Arc<Registration>>> {
        let Ok(Some(token)) = token else { return Ok(None) };
        Ok(services.appservices.registry().by_as_token(&token).cloned())
    }

    fn actor(identity: &Option<Arc<Registration>>) -> Actor {
        match identity {
            Some(appservice) => Actor::Appservice {
                id: appservice.id.clone(),
                user_id: appservice.sender.clone(),
                device_id: None,
            },
            None => Actor::Anonymous,
        }
    }
}

/// Endpoints only application services call (the ping, the appservice room directory).
impl Identify for AppserviceToken {
    type Identity = Arc<Registration>;

    fn identify(
        services: &Services,
        token: std::result::Result<String, ExtractTokenError>,
        _: &Client,
    ) -> Result<Arc<Registration>> {
        let token = token.map_err(token_error)?;
        if let Some(appservice) = services.appservices.registry().by_as_token(&token) {
            return Ok(Arc::clone(appservice));
        }
        // A user's valid token is not unknown (clients log out on `M_UNKNOWN_TOKEN`): it is
        // refused, as Synapse refuses it.
        services.devices.authenticate(&token)?;
        Err(Error::forbidden("Only application services may use this endpoint"))
    }

    fn actor(appservice: &Arc<Registration>) -> Actor {
        Actor::Appservice { id: appservice.id.clone(), user_id: appservice.sender.clone(), device_id: None }
    }
}

impl Identify for NoAccessToken {
    type Identity = ();

    fn identify(
        _: &Services,
        _: std::result::Result<(), std::convert::Infallible>,
        _: &Client,
    ) -> Result<()> {
        Ok(())
    }

    fn actor(_: &()) -> Actor {
        Actor::Anonymous
    }
}

impl Identify for NoAuthentication {
    type Identity = ();

    fn identify(
        _: &Services,
        _: std::result::Result<(), std::convert::Infallible>,
        _: &Client,
    ) -> Result<()> {
        Ok(())
    }

    fn actor(_: &()) -> Actor {
        Actor::Anonymous
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
        // Boxed: the extraction's state (the request's head, the body being read) lives in
        // the box while it runs and is freed after, instead of sizing the handler's future,
        // which a long-poll keeps for as long as it is parked.
        Box::pin(Self::extract(request, services)).await
    }
}

impl<T> Ruma<T>
where
    T: IncomingRequest + Send + 'static,
    T::Authentication: Identify,
{
    async fn extract(request: Request<Body>, services: &Arc<Services>) -> Result<Self> {
        let (mut parts, body) = request.into_parts();
        let limit = services.config.max_request_size as usize;
        if declared_length(&parts).is_some_and(|len| len > limit as u64) {
            return Err(Error::new(ruma::api::error::ErrorKind::TooLarge, "Request body too large"));
        }
        let (path_args, mut context) = path_args_and_context(&mut parts).await;
        super::rate_limit::check_before_body::<T>(services, &context.client_ip)?;
        let bytes = limited_body(services, body).await?;
        if <T::Authentication as Identify>::SERVER_SIGNED {
            prefetch_origin_keys(services, &parts).await?;
        }

        // An empty POST/PUT body reads as `{}`: clients send none where every field is
        // optional (matrix-nio's join), and Synapse accepts that. Endpoints with required
        // fields still answer M_BAD_JSON for the missing field.
        let raw_body = if bytes.is_empty() && (parts.method == Method::POST || parts.method == Method::PUT) {
            Bytes::from_static(b"{}")
        } else {
            bytes
        };
        let raw_body = without_empty_auth(raw_body);
        let query = parts.uri.query().map(str::to_owned);
        let (body, identity) = authenticate_and_parse::<T>(services, parts, &raw_body, &path_args, &context)?;
        context.actor = T::Authentication::actor(&identity);
        if !<T::Authentication as Identify>::SERVER_SIGNED {
            catch_up_with_other_processes(services, &context.actor).await?;
        }
        Ok(Self { body, identity, context, raw_body, query })
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
    pub context: RequestContext,
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
        let (path_args, mut context) = path_args_and_context(&mut parts).await;
        let (head, identity) = authenticate_and_parse::<T>(services, parts, &[], &path_args, &context)?;
        context.actor = T::Authentication::actor(&identity);
        catch_up_with_other_processes(services, &context.actor).await?;
        Ok(Self { head, identity, context, declared_length, body })
    }
}

/// How long a client request waits for this process to hear what the other processes on
/// the database wrote before it arrived; past it, the request is served with what is known.
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Before a client's request is served: what the client did through another process (one
/// of several on the database; a no-op for a process alone) is visible here, and so are the
/// rooms the acting user joined through another server that are still being seated
/// (`Timeline::settled_for`).
async fn catch_up_with_other_processes(services: &Services, actor: &Actor) -> Result<()> {
    services.stream.catch_up_with_others(tokio::time::Instant::now() + CATCH_UP_WAIT).await?;
    if let Actor::User { user_id, .. } | Actor::Appservice { user_id, .. } = actor {
        services.timeline.settled_for(user_id).await;
    }
    Ok(())
}

/// A request body read whole, refused past the configured `max_request_size`, and refused
/// when it nests JSON deeper than `MAX_JSON_DEPTH`: before anything parses it, since content
/// nested deeper than the limit would be stored as sent and break every later read of it.
/// Every endpoint that takes a JSON body reads it here, ruma's and the others alike.
pub async fn limited_body(services: &Services, body: Body) -> Result<bytes::Bytes> {
    let limit = services.config.max_request_size as usize;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| body_error(&e))?;
    if limits::json_too_deep(&bytes, limits::MAX_JSON_DEPTH) {
        return Err(Error::bad_json(format!("JSON nested more than {} levels deep", limits::MAX_JSON_DEPTH)));
    }
    Ok(bytes)
}

/// What a failed body read answers: 408 for a body that stalled past the body timeout, else
/// too large (the limit, or a connection cut mid-body, which no one reads the answer to).
pub fn body_error(error: &axum::Error) -> Error {
    if crate::net::is_body_timeout(error) {
        Error::RequestTimeout("The request body stalled; send it again".to_owned())
    } else {
        Error::new(ruma::api::error::ErrorKind::TooLarge, "Request body too large")
    }
}

fn declared_length(parts: &Parts) -> Option<u64> {
    parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// Path parameters (percent-decoded by axum; ruma takes them decoded) and the request's
/// context before authentication.
async fn path_args_and_context(parts: &mut Parts) -> (Vec<String>, RequestContext) {
    let path_args: Vec<String> = match Path::<Vec<String>>::from_request_parts(parts, &()).await {
        Ok(Path(args)) => args,
        Err(_) => Vec::new(),
    };
    (path_args, context_of(parts))
}

/// Where a request came from, as the device's last-seen record keeps it, and the users and
/// devices an application service's request names in its query string.
fn client_of(
    context: &RequestContext,
    query: Option<&str>,
    signed: Option<axum::http::Request<Vec<u8>>>,
) -> Client {
    let path = context.path.as_str();
    let allow_locked = path.ends_with("/logout") || path.ends_with("/logout/all");
    let (mut masquerade_user, mut masquerade_device, mut msc3202_device) = (None, None, None);
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "user_id" => masquerade_user = Some(value.into_owned()),
            "device_id" => masquerade_device = Some(value.into_owned()),
            // matrix-bot-sdk adds MSC3202's name to every request of its users; Synapse reads it
            // only where device masquerading is on, so it counts only for registrations
            // asking for MSC3202 (checked where the appservice is known).
            "org.matrix.msc3202.device_id" => msc3202_device = Some(value.into_owned()),
            _ => {}
        }
    }
    Client {
        ip: context.client_ip.clone(),
        user_agent: context.user_agent.clone(),
        allow_locked,
        masquerade_user,
        masquerade_device,
        msc3202_device,
        signed,
    }
}

/// The identity a request proves under auth scheme `S`: the token `S` extracts from the
/// request's head, checked by `S`'s `Identify` impl. Every authenticated request passes here.
fn authenticate<S: Identify, B>(
    services: &Services,
    head: &Request<B>,
    body: &[u8],
    context: &RequestContext,
) -> Result<S::Identity> {
    let signed = S::SERVER_SIGNED.then(|| {
        let mut request = Request::new(body.to_vec());
        *request.method_mut() = head.method().clone();
        *request.uri_mut() = head.uri().clone();
        request
    });
    S::identify(services, S::extract_authentication(head), &client_of(context, head.uri().query(), signed))
}

/// Authenticate by the endpoint's scheme, then parse the ruma request from the head and
/// `body_bytes`.
fn authenticate_and_parse<T>(
    services: &Services,
    parts: Parts,
    body_bytes: &[u8],
    path_args: &[String],
    context: &RequestContext,
) -> Result<(T, <T::Authentication as Identify>::Identity)>
where
    T: IncomingRequest + 'static,
    T::Authentication: Identify,
{
    let http_request = Request::from_parts(parts, body_bytes);
    let identity = authenticate::<T::Authentication, _>(services, &http_request, body_bytes, context)?;
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
    Ok((parse_request::<T>(http_request, &args)?, identity))
}

/// Parse a ruma request. Bodies whose shape would make one of ruma's deserialisers panic are
/// refused first (see [`check_shape`]); the `catch_unwind` stays as a last resort for any
/// such path not yet known, since parsing touches only this request.
fn parse_request<T: IncomingRequest + 'static>(http_request: Request<&[u8]>, args: &[&str]) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse_unguarded::<T>(http_request, args)))
        .unwrap_or_else(|_| {
            tracing::warn!(endpoint = std::any::type_name::<T>(), "request parser panicked");
            Err(Error::bad_json("Malformed request body"))
        })
}

fn parse_unguarded<T: IncomingRequest + 'static>(http_request: Request<&[u8]>, args: &[&str]) -> Result<T> {
    check_shape::<T>(http_request.body())?;
    T::try_from_http_request(http_request, args).map_err(parse_error)
}

/// A body whose `auth` is an empty object, without it: Synapse reads `"auth": {}` as no
/// authentication given (a 401 with the flows, or nothing to do where no UIA is needed), and
/// Element sends it after a token login, hoping no stage is needed (its first cross-signing
/// upload); ruma would refuse it (an auth object must name a type or a session).
fn without_empty_auth(body: Bytes) -> Bytes {
    if !body.windows(6).any(|w| w == b"\"auth\"") {
        return body;
    }
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body) {
        Ok(mut map)
            if map.get("auth").and_then(serde_json::Value::as_object).is_some_and(|a| a.is_empty()) =>
        {
            map.remove("auth");
            serde_json::to_vec(&map).map(Bytes::from).unwrap_or(body)
        }
        _ => body,
    }
}

/// Refuse bodies that ruma's parser for `T` would panic on rather than reject. Each case is
/// a deserialiser that indexes a JSON map without checking the key is there; found by
/// reading ruma (0.17) for `map["key"]` on client input. Today that is login's
/// `LoginInfo`, which reads `data["type"]`: `{}` panicked with "no entry found for key",
/// and with backtraces on, each such request wrote a 48 kB backtrace to the log.
fn check_shape<T: 'static>(body: &[u8]) -> Result<()> {
    use std::any::TypeId;

    /// Only whether `type` is there; everything else is ruma's to judge.
    #[derive(serde::Deserialize)]
    struct HasType {
        #[serde(rename = "type")]
        kind: Option<serde::de::IgnoredAny>,
    }

    if TypeId::of::<T>() == TypeId::of::<ruma::api::client::session::login::v3::Request>() {
        // A body that is not an object is left to ruma, which rejects it without panicking.
        if let Ok(HasType { kind: None }) = serde_json::from_slice::<HasType>(body) {
            return Err(Error::bad_json("missing field `type`"));
        }
    }
    Ok(())
}

/// The user behind a request to an endpoint ruma has no type for (the deprecated `/events`,
/// `/initialSync` and their kin, Synapse's admin API, one kind of push rules): authenticated exactly as `Ruma<T>` authenticates an
/// `AccessToken` endpoint — the `Authorization` header or the `access_token` query
/// parameter, through the same `Identify` impl, with the same last-seen touch. Handlers read
/// the rest of the request with axum's extractors.
pub struct Authenticated {
    pub identity: Caller,
    pub context: RequestContext,
}

impl FromRequestParts<Arc<Services>> for Authenticated {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, services: &Arc<Services>) -> Result<Self> {
        // The scheme reads only the URI and headers; the body stays with the request.
        let mut head = Request::new(());
        *head.uri_mut() = parts.uri.clone();
        *head.headers_mut() = parts.headers.clone();
        let mut context = context_of(parts);
        let identity = authenticate::<AccessToken, _>(services, &head, &[], &context)?;
        context.actor = identity.actor();
        catch_up_with_other_processes(services, &context.actor).await?;
        Ok(Self { identity, context })
    }
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

/// A key (or any JSON value) as the `Raw` a ruma response carries.
pub fn raw_of<T>(value: &serde_json::Value) -> Result<ruma::serde::Raw<T>> {
    Ok(ruma::serde::Raw::from_json(
        serde_json::value::to_raw_value(value)
            .map_err(|e| Error::internal(format!("serialising key: {e}")))?,
    ))
}

#[cfg(test)]
mod tests {
    use ruma::api::{client::session::login, error::ErrorKind};

    use super::*;

    fn login_request(body: &[u8]) -> Request<&[u8]> {
        Request::builder().method(Method::POST).uri("/_matrix/client/v3/login").body(body).unwrap()
    }

    /// Called without the `catch_unwind`: a panic inside ruma's parser fails this test, as it
    /// did before the shape check (ruma 0.17 indexes `data["type"]`).
    #[test]
    fn login_bodies_without_a_type_are_refused_without_a_panic() {
        for body in [&b"{}"[..], br#"{"identifier":{"type":"m.id.user","user":"a"},"password":"p"}"#] {
            match parse_unguarded::<login::v3::Request>(login_request(body), &[]) {
                Err(Error::Matrix { kind: ErrorKind::BadJson, message }) => {
                    assert_eq!(message, "missing field `type`");
                }
                Err(other) => panic!("unexpected error {other:?}"),
                Ok(_) => panic!("a login without a type parsed"),
            }
        }
    }

    #[test]
    fn other_login_bodies_are_ruma_s_to_judge() {
        let ok =
            br#"{"type":"m.login.password","identifier":{"type":"m.id.user","user":"a"},"password":"p"}"#;
        assert!(parse_unguarded::<login::v3::Request>(login_request(ok), &[]).is_ok());
        // Not an object, or a type that is not a string: ruma's own errors, no panic.
        for body in [&b"[1]"[..], br#"{"type":5}"#, b"{not json"] {
            assert!(parse_unguarded::<login::v3::Request>(login_request(body), &[]).is_err());
        }
    }
}
