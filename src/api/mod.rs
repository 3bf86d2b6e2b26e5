//! The HTTP edge, and the only code that knows axum: the router with every route, the tower
//! layers around it, the request extractor and the error mapping.

pub mod admin;
pub mod client;
pub mod content;
pub mod error;
pub mod federation;
pub mod health;
pub mod oauth;
pub mod rate_limit;
pub mod request;
pub mod ruma;
pub mod sso;

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use ::ruma::api::{IncomingRequest, path_builder::PathBuilder};
use axum::{
    Router,
    extract::{MatchedPath, State},
    handler::Handler,
    http::{HeaderName, Method, Request, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{MethodFilter, MethodRouter, any, get, on, post},
};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{Any, CorsLayer},
    trace::TraceLayer,
};

use self::ruma::{FilledResponse, Identify, Ruma, RumaResponse};
use crate::{
    Error, Result,
    config::ListenerResource,
    metrics::{self as prometheus, HttpMethod, Metrics, Route},
    service::Services,
};

/// The shared state every handler receives.
pub type AppState = Arc<Services>;

/// Registering a ruma endpoint: every path its metadata lists (r0, v3, unstable), for its
/// method, with the handler wrapped to serialise the ruma response.
trait RouterExt {
    fn ruma_route<Req, F, Fut>(self, handler: F) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: Identify,
        Req::OutgoingResponse: Send,
        F: Fn(AppState, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Req::OutgoingResponse>> + Send + 'static;

    /// As `ruma_route`, with `fill` completing the JSON body of a successful response.
    fn ruma_route_filled<Req, F, Fut>(self, handler: F, fill: fn(&mut serde_json::Value)) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: Identify,
        Req::OutgoingResponse: Send,
        F: Fn(AppState, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Req::OutgoingResponse>> + Send + 'static;

    /// As `ruma_route`, for a handler that may answer with something other than the
    /// endpoint's ruma response: `PUT /send` and `PUT /state` answer `{"delay_id"}` for a
    /// delayed event (MSC4140 reuses those endpoints with a query parameter).
    fn ruma_route_answering<Req, F, Fut, R>(self, handler: F) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: Identify,
        F: Fn(AppState, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: IntoResponse + Send + 'static;

    /// A client-server endpoint ruma has no type for (the deprecated ones, one kind of push
    /// rules), on its `r0` and
    /// `v3` paths; `path` follows the version, as in `/events`.
    fn client_route(self, path: &str, route: MethodRouter<AppState>) -> Self;
    /// Every path of a ruma endpoint, for a plain axum handler: media endpoints whose request
    /// ruma describes (and `Ruma<Req>` or `RumaStream<Req>` parses) but whose bodies stream.
    fn endpoint_route<Req, H, T>(self, handler: H) -> Self
    where
        Req: IncomingRequest,
        H: Handler<T, AppState>,
        T: 'static;
}

/// Register every path of a ruma endpoint, turning the handler's answer into HTTP with
/// `wrap`.
fn route_all_paths<Req, F, Fut, O, W, R>(router: Router<AppState>, handler: F, wrap: W) -> Router<AppState>
where
    Req: IncomingRequest + Send + 'static,
    Req::Authentication: Identify,
    F: Fn(AppState, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<O>> + Send + 'static,
    W: Fn(O) -> R + Copy + Send + Sync + 'static,
    R: IntoResponse + Send + 'static,
{
    let filter = MethodFilter::try_from(Req::METHOD).expect("ruma endpoints use standard methods");
    let builder = Req::PATH_BUILDER;
    let paths = builder.all_paths().flat_map(|path| {
        // The empty state key: clients send `/state/{type}` or `/state/{type}/`, which a
        // `{state_key}` segment cannot match.
        let short = path.strip_suffix("/{state_key}").map(|p| [p.to_owned(), format!("{p}/")]);
        std::iter::once(path.to_owned()).chain(short.into_iter().flatten())
    });
    paths.fold(router, |router, path| {
        let handler = handler.clone();
        router.route(
            &path,
            on(filter, move |State(services): State<AppState>, req: Ruma<Req>| async move {
                handler(services, req).await.map(wrap)
            }),
        )
    })
}

impl RouterExt for Router<AppState> {
    fn ruma_route<Req, F, Fut>(self, handler: F) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: Identify,
        Req::OutgoingResponse: Send,
        F: Fn(AppState, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Req::OutgoingResponse>> + Send + 'static,
    {
        route_all_paths(self, handler, RumaResponse)
    }

    fn ruma_route_filled<Req, F, Fut>(self, handler: F, fill: fn(&mut serde_json::Value)) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: Identify,
        Req::OutgoingResponse: Send,
        F: Fn(AppState, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Req::OutgoingResponse>> + Send + 'static,
    {
        route_all_paths(self, handler, move |response| FilledResponse { response, fill })
    }

    fn ruma_route_answering<Req, F, Fut, R>(self, handler: F) -> Self
    where
        Req: IncomingRequest + Send + 'static,
        Req::Authentication: Identify,
        F: Fn(AppState, Ruma<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: IntoResponse + Send + 'static,
    {
        route_all_paths(self, handler, |answer: R| answer)
    }

    fn client_route(self, path: &str, route: MethodRouter<AppState>) -> Self {
        ["r0", "v3"].iter().fold(self, |router, version| {
            router.route(&format!("/_matrix/client/{version}{path}"), route.clone())
        })
    }

    fn endpoint_route<Req, H, T>(self, handler: H) -> Self
    where
        Req: IncomingRequest,
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(Req::METHOD).expect("ruma endpoints use standard methods");
        let builder = Req::PATH_BUILDER;
        builder.all_paths().fold(self, |router, path| router.route(path, on(filter, handler.clone())))
    }
}

/// Every route the server answers, with the request metrics kept in `metrics` (which
/// `/metrics` serves).
pub fn router(services: AppState, metrics: Arc<Metrics>) -> Router {
    use ::ruma::api::client::{authenticated_media as authed, media as legacy};
    use client::backup;
    use client::{
        account, admin, alias, appservice, authenticated_media, config, context, dehydrated_device,
        delayed_events, device, directory, discovery, keys, knock, media, membership, message, presence,
        profile, push, read_marker, receipt, redact, relations, reporting, room, rtc, search, session, space,
        state, sync, tag, thirdparty, threads, to_device, typing, user_directory, voip,
    };

    use crate::service::oauth as oauth_paths;

    Router::new()
        // Discovery
        .ruma_route(discovery::get_supported_versions)
        .ruma_route(discovery::discover_homeserver)
        .ruma_route_filled(discovery::get_capabilities, discovery::fill_capabilities)
        .route("/.well-known/matrix/server", get(discovery::well_known_server))
        // Accounts
        .ruma_route_filled(account::register, account::fill_register)
        .ruma_route(account::get_username_availability)
        .ruma_route(account::check_registration_token_validity)
        .ruma_route(account::whoami)
        // Application services
        .ruma_route(appservice::request_ping)
        .ruma_route(appservice::set_room_visibility)
        .ruma_route(account::change_password)
        .ruma_route(account::deactivate)
        .ruma_route(account::request_openid_token)
        // Third-party identifiers: none are supported (see `service::threepids`)
        .ruma_route_filled(account::get_3pids, account::fill_3pids)
        .ruma_route(account::add_3pid)
        .ruma_route(account::bind_3pid)
        .ruma_route(account::delete_3pid)
        .ruma_route(account::unbind_3pid)
        .ruma_route(account::request_3pid_management_token_via_email)
        .ruma_route(account::request_3pid_management_token_via_msisdn)
        .ruma_route(account::request_registration_token_via_email)
        .ruma_route(account::request_registration_token_via_msisdn)
        .ruma_route(account::request_password_change_token_via_email)
        .ruma_route(account::request_password_change_token_via_msisdn)
        // Sessions
        .ruma_route_filled(session::get_login_types, session::fill_login_types)
        .ruma_route(session::login)
        .ruma_route(session::refresh_token)
        .ruma_route(session::logout)
        .ruma_route(session::logout_all)
        // Single sign-on: the redirects (a redirect with a cookie, or a page), login tokens,
        // the provider's callback and back-channel logout, and the `m.login.sso` fallback
        .endpoint_route::<::ruma::api::client::session::sso_login::v3::Request, _, _>(session::sso_login)
        .endpoint_route::<::ruma::api::client::session::sso_login_with_provider::v3::Request, _, _>(
            session::sso_login,
        )
        .route("/_matrix/client/r0/login/sso/redirect/{idp_id}", get(session::sso_login))
        .ruma_route(session::get_login_token)
        .route(crate::service::oidc::CALLBACK_PATH, get(self::sso::callback))
        .route(crate::service::oidc::BACKCHANNEL_LOGOUT_PATH, post(self::sso::backchannel_logout))
        .client_route("/auth/{auth_type}/fallback/web", get(self::sso::ui_auth_fallback))
        // The OAuth 2.0 API: discovery, the authorization server's endpoints, and the pages
        // a browser signs in, consents and manages the account on
        .endpoint_route::<::ruma::api::client::discovery::get_authorization_server_metadata::v1::Request, _, _>(
            self::oauth::auth_metadata,
        )
        .route(oauth_paths::REGISTER_PATH, post(self::oauth::register))
        .route(oauth_paths::TOKEN_PATH, post(self::oauth::token))
        .route(oauth_paths::REVOKE_PATH, post(self::oauth::revoke))
        .route(oauth_paths::AUTHORIZE_PATH, get(self::oauth::authorize))
        .route(oauth_paths::CONSENT_PATH, get(self::oauth::consent).post(self::oauth::decide))
        .route(oauth_paths::SIGN_IN_PATH, get(self::oauth::sign_in).post(self::oauth::sign_in_with_password))
        .route(&format!("{}/idp/{{idp_id}}", oauth_paths::SIGN_IN_PATH), get(self::oauth::sign_in_with_provider))
        .route(oauth_paths::ACCOUNT_PATH, get(self::oauth::account))
        .route(&format!("{}/devices/delete", oauth_paths::ACCOUNT_PATH), post(self::oauth::delete_device))
        .route(
            &format!("{}/cross-signing-reset", oauth_paths::ACCOUNT_PATH),
            post(self::oauth::approve_cross_signing_reset),
        )
        .route(&format!("{}/sign-out", oauth_paths::ACCOUNT_PATH), post(self::oauth::sign_out))
        // Devices
        .ruma_route(device::get_devices)
        .ruma_route(device::get_device)
        .ruma_route_answering(device::update_device)
        .ruma_route(device::delete_device)
        .ruma_route(device::delete_devices)
        // Profiles
        .ruma_route(profile::get_profile)
        .ruma_route(profile::get_display_name)
        .ruma_route(profile::set_display_name)
        .ruma_route(profile::get_avatar_url)
        .ruma_route(profile::set_avatar_url)
        // Rooms
        .ruma_route(room::create_room)
        .ruma_route(room::get_room_event)
        .ruma_route(room::get_room_aliases)
        .ruma_route(room::report_content)
        .ruma_route(room::report_room)
        .ruma_route(room::upgrade_room)
        .ruma_route(space::get_hierarchy)
        .ruma_route_filled(room::get_summary, room::fill_summary)
        .ruma_route(reporting::report_user)
        // Membership
        .ruma_route(membership::join_room_by_id)
        .ruma_route(membership::join_room_by_id_or_alias)
        .ruma_route(membership::invite_user)
        .ruma_route(membership::leave_room)
        .ruma_route(membership::forget_room)
        .ruma_route(membership::kick_user)
        .ruma_route(membership::ban_user)
        .ruma_route(membership::unban_user)
        .ruma_route(membership::joined_rooms)
        .ruma_route(membership::get_member_events)
        .ruma_route_filled(membership::joined_members, membership::fill_joined_members)
        .ruma_route(membership::get_mutual_rooms)
        .ruma_route(membership::get_mutual_rooms_unstable)
        .ruma_route(knock::knock_room)
        // State and messages
        .ruma_route(state::get_state_events)
        .ruma_route(state::get_state_event_for_key)
        .ruma_route_answering(state::send_state_event)
        .ruma_route_answering(message::send_message_event)
        .ruma_route(redact::redact_event)
        // Delayed events (MSC4140): scheduled through `PUT /send` and `PUT /state` above
        .ruma_route_filled(delayed_events::get_all_delayed_events, delayed_events::fill_synapse_fields)
        .ruma_route_filled(delayed_events::get_delayed_event, delayed_events::fill_synapse_fields)
        .ruma_route(delayed_events::update_delayed_event)
        .ruma_route(delayed_events::update_delayed_event_by_path)
        // Sync and history
        .endpoint_route::<::ruma::api::client::sync::sync_events::v3::Request, _, _>(sync::sync_events)
        .ruma_route(sync::sliding_sync)
        .ruma_route(sync::create_filter)
        .ruma_route(sync::get_filter)
        .ruma_route(message::get_message_events)
        .ruma_route(context::get_context)
        .ruma_route(room::get_event_by_timestamp)
        .ruma_route(relations::get_relating_events)
        .ruma_route(relations::get_relating_events_with_rel_type)
        .ruma_route(relations::get_relating_events_with_rel_type_and_event_type)
        .ruma_route(threads::get_threads)
        // Ephemeral and per-user data
        .ruma_route(typing::create_typing_event)
        .ruma_route(receipt::create_receipt)
        .ruma_route(read_marker::set_read_marker)
        .ruma_route(config::get_global_account_data)
        .ruma_route(config::set_global_account_data)
        .ruma_route(config::get_room_account_data)
        .ruma_route(config::set_room_account_data)
        .ruma_route(tag::get_tags)
        .ruma_route(tag::create_tag)
        .ruma_route(tag::delete_tag)
        .ruma_route(presence::get_presence)
        .ruma_route(presence::set_presence)
        // End-to-end encryption
        .ruma_route(keys::upload_keys)
        .ruma_route(keys::get_keys)
        .ruma_route(keys::claim_keys)
        .ruma_route(keys::get_key_changes)
        .ruma_route(keys::upload_signing_keys)
        .ruma_route(keys::upload_signatures)
        .ruma_route(to_device::send_event_to_device)
        .ruma_route(dehydrated_device::put_dehydrated_device)
        .ruma_route(dehydrated_device::get_dehydrated_device)
        .ruma_route(dehydrated_device::delete_dehydrated_device)
        .ruma_route(dehydrated_device::get_events)
        // Push rules and notifications
        .ruma_route(push::get_pushrules_all)
        .ruma_route(push::get_pushrules_global_scope)
        .ruma_route(push::get_pushrule)
        .ruma_route(push::set_pushrule)
        .ruma_route(push::delete_pushrule)
        .ruma_route(push::get_pushrule_enabled)
        .ruma_route(push::set_pushrule_enabled)
        .ruma_route(push::get_pushrule_actions)
        .ruma_route(push::set_pushrule_actions)
        .ruma_route(push::get_pushers)
        .ruma_route(push::set_pusher)
        .ruma_route_filled(push::get_notifications, push::fill_notifications)
        .client_route("/pushrules/global/{kind}/", get(push::get_pushrules_of_kind))
        .client_route("/pushrules/{*rest}", any(push::malformed_pushrule_path))
        .route(
            crate::service::email_notifier::UNSUBSCRIBE_PATH,
            get(push::remove_email_pusher).post(push::remove_email_pusher),
        )
        // Server-side key backups
        .ruma_route(backup::create_backup_version)
        .ruma_route(backup::get_latest_backup_info)
        .ruma_route(backup::get_backup_info)
        .ruma_route(backup::update_backup_version)
        .ruma_route(backup::delete_backup_version)
        .ruma_route(backup::add_backup_keys)
        .ruma_route(backup::add_backup_keys_for_room)
        .ruma_route(backup::add_backup_keys_for_session)
        .ruma_route(backup::get_backup_keys)
        .ruma_route(backup::get_backup_keys_for_room)
        .ruma_route(backup::get_backup_keys_for_session)
        .ruma_route(backup::delete_backup_keys)
        .ruma_route(backup::delete_backup_keys_for_room)
        .ruma_route(backup::delete_backup_keys_for_session)
        // Third-party networks and VoIP
        .ruma_route_answering(thirdparty::get_protocols)
        .ruma_route_answering(thirdparty::get_protocol)
        .ruma_route_answering(thirdparty::get_location_for_protocol)
        .ruma_route_answering(thirdparty::get_location_for_room_alias)
        .ruma_route_answering(thirdparty::get_user_for_protocol)
        .ruma_route_answering(thirdparty::get_user_for_user_id)
        .endpoint_route::<::ruma::api::client::voip::get_turn_server_info::v3::Request, _, _>(
            voip::get_turn_server_info,
        )
        // MatrixRTC (Element Call): the transports, on MSC4143's path and the stable one
        .endpoint_route::<::ruma::api::client::rtc::transports::v1::Request, _, _>(rtc::get_rtc_transports)
        .route(rtc::STABLE_TRANSPORTS_PATH, get(rtc::get_rtc_transports))
        // Federation: only OpenID's userinfo, which call services need even without federation
        .ruma_route(self::federation::openid::get_openid_userinfo)
        // Aliases and the directory
        .ruma_route(alias::create_alias)
        .ruma_route(alias::get_alias)
        .ruma_route(alias::delete_alias)
        .ruma_route(directory::get_room_visibility)
        .ruma_route(directory::set_room_visibility)
        .ruma_route(directory::get_public_rooms)
        .ruma_route(directory::get_public_rooms_filtered)
        // Search
        .ruma_route_filled(search::search_events, search::fill_empty_lists)
        .ruma_route(user_directory::search_users)
        // Media: uploads stream in and downloads stream out, so those are plain axum
        // handlers on the endpoints' paths.
        .endpoint_route::<legacy::create_content::v3::Request, _, _>(media::create_content)
        .endpoint_route::<legacy::create_content_async::v3::Request, _, _>(media::create_content_async)
        .ruma_route(media::create_mxc_uri)
        .ruma_route(media::get_media_config)
        .endpoint_route::<media::GetContentRequest, _, _>(media::get_content)
        .endpoint_route::<media::GetContentAsFilenameRequest, _, _>(media::get_content_as_filename)
        .endpoint_route::<media::GetContentThumbnailRequest, _, _>(media::get_content_thumbnail)
        .ruma_route(media::get_media_preview)
        .ruma_route(authenticated_media::get_media_config)
        .endpoint_route::<authed::get_content::v1::Request, _, _>(authenticated_media::get_content)
        .endpoint_route::<authed::get_content_as_filename::v1::Request, _, _>(
            authenticated_media::get_content_as_filename,
        )
        .endpoint_route::<authed::get_content_thumbnail::v1::Request, _, _>(
            authenticated_media::get_content_thumbnail,
        )
        .ruma_route(authenticated_media::get_media_preview)
        // Synapse's admin API (admins only): users, devices, registration tokens, notices;
        // rooms, media, event reports and background jobs
        .merge(self::admin::user_routes())
        .merge(admin_rooms_media_routes())
        .route(
            "/_synapse/admin/v1/users/{user_id}/override_ratelimit",
            get(self::admin::ratelimit::get_override)
                .post(self::admin::ratelimit::set_override)
                .delete(self::admin::ratelimit::delete_override),
        )
        // Deprecated endpoints that old bots and scripts still call. ruma has types for
        // `whois` only; the others are plain handlers authenticated by `Authenticated`.
        .ruma_route(admin::get_user_info)
        .ruma_route(admin::is_user_locked)
        .ruma_route(admin::lock_user)
        .ruma_route(admin::is_user_suspended)
        .ruma_route(admin::suspend_user)
        .client_route("/events", get(client::legacy::get_events))
        .client_route("/events/{event_id}", get(client::legacy::get_event))
        .client_route("/initialSync", get(client::legacy::initial_sync))
        .client_route("/rooms/{room_id}/initialSync", get(client::legacy::room_initial_sync))
        .client_route("/rooms/{room_id}/send/{event_type}", post(client::legacy::send_message_event))
        // The audit log (admins only)
        .route("/_conduit/admin/v1/audit_log", get(self::admin::audit::audit_log))
        .route("/_conduit/admin/v1/audit_log/verify", get(self::admin::audit::verify))
        // Application services registered without a restart (admins only)
        .route(
            "/_conduit/admin/v1/appservices",
            get(self::admin::appservices::list).post(self::admin::appservices::register),
        )
        .route(
            "/_conduit/admin/v1/appservices/{id}",
            get(self::admin::appservices::get).delete(self::admin::appservices::remove),
        )
        .merge(federation_routes(&services))
        .fallback(unrecognized)
        .method_not_allowed_fallback(method_not_allowed)
        // Inside the routes, so that it sees which route matched.
        .route_layer(axum::middleware::from_fn_with_state(
            services.clone(),
            self::admin::audit::record_admin_calls,
        ))
        .with_state(services.clone())
        // Only on listeners with the `metrics` resource (see `for_listener`).
        .route(METRICS_PATH, get(serve_metrics).with_state(Arc::clone(&metrics)))
        .route(health::HEALTH_PATH, get(health::health))
        .route(health::READY_PATH, get(health::ready).with_state(services.clone()))
        .layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn_with_state((services, metrics), edge))
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(cors())
                .layer(CatchPanicLayer::custom(panic_response)),
        )
}

/// The server-server routes, only with `allow_federation = true` (otherwise their paths
/// answer `404 M_UNRECOGNIZED` like any unknown path).
fn federation_routes(services: &AppState) -> Router<AppState> {
    use ::ruma::api::federation::authenticated_media as federated;

    use self::federation::{
        authorization, backfill, device, directory, discovery, event, keys, media, membership, query, space,
        transactions,
    };
    if !services.config.allow_federation {
        return Router::new();
    }
    Router::new()
        .ruma_route(discovery::get_server_keys)
        .ruma_route(discovery::get_remote_server_keys_batch)
        .ruma_route(discovery::get_remote_server_keys)
        .ruma_route(discovery::get_server_version)
        .ruma_route(query::get_profile_information)
        .ruma_route(query::get_room_information)
        .ruma_route(transactions::send_transaction_message)
        .ruma_route(membership::prepare_join_event)
        .ruma_route(membership::create_join_event)
        .ruma_route(membership::prepare_leave_event)
        .ruma_route(membership::create_leave_event)
        .ruma_route(membership::prepare_knock_event)
        .ruma_route(membership::create_knock_event)
        .ruma_route(membership::create_invite)
        .ruma_route(event::get_event)
        .ruma_route(event::get_room_state_ids)
        .ruma_route(event::get_room_state)
        .ruma_route(event::get_missing_events)
        .ruma_route(authorization::get_event_authorization)
        .ruma_route(backfill::get_backfill)
        .ruma_route(keys::get_keys)
        .ruma_route(keys::claim_keys)
        .ruma_route(device::get_devices)
        .ruma_route(directory::get_public_rooms)
        .ruma_route(directory::get_public_rooms_filtered)
        .ruma_route(space::get_hierarchy)
        .endpoint_route::<federated::get_content::v1::Request, _, _>(media::get_content)
        .endpoint_route::<federated::get_content_thumbnail::v1::Request, _, _>(media::get_content_thumbnail)
}

/// Where Prometheus scrapes.
pub const METRICS_PATH: &str = "/metrics";

/// The router as one listener serves it: requests for a resource it does not serve answer
/// `404 M_UNRECOGNIZED`, as a path that does not exist would.
pub fn for_listener(router: Router, resources: &[ListenerResource]) -> Router {
    let resources: Arc<[ListenerResource]> = resources.into();
    router.layer(middleware::from_fn(move |request: axum::extract::Request, next: Next| {
        let path = request.uri().path();
        let served = health::is_health_path(path)
            || match resource_of(path) {
                ListenerResource::Openid => {
                    resources.contains(&ListenerResource::Openid)
                        || resources.contains(&ListenerResource::Federation)
                }
                ListenerResource::Media => {
                    resources.contains(&ListenerResource::Media)
                        || resources.contains(&ListenerResource::Client)
                }
                resource => resources.contains(&resource),
            };
        async move { if served { next.run(request).await } else { unrecognized().await.into_response() } }
    }))
}

/// Which listener resource a path belongs to.
pub fn resource_of(path: &str) -> ListenerResource {
    if path == METRICS_PATH {
        ListenerResource::Metrics
    } else if path == "/_matrix/federation/v1/openid/userinfo" {
        ListenerResource::Openid
    } else if path.starts_with("/_matrix/media/") || path.starts_with("/_matrix/client/v1/media/") {
        ListenerResource::Media
    } else if path.starts_with("/_matrix/federation/")
        || path.starts_with("/_matrix/key/")
        || path == "/.well-known/matrix/server"
    {
        ListenerResource::Federation
    } else {
        ListenerResource::Client
    }
}

async fn serve_metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], text).into_response(),
        Err(_) => Error::internal("encoding the metrics failed").into_response(),
    }
}

/// Count a request in flight while it is answered, then by method, route template and
/// status, with its latency.
/// The layer every request passes first: its ID, client address and user agent for the
/// handlers and the log span (`request::annotate`), and its count and latency for the
/// metrics. One layer rather than one per concern: each layer's future lives as long as the
/// request, and a parked long-poll keeps them all.
async fn edge(
    State((services, metrics)): State<(AppState, Arc<Metrics>)>,
    mut request: axum::extract::Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => Route(Arc::from(path.as_str())),
        None => Route(Arc::from("unmatched")),
    };
    let id = request::annotate(&services, &mut request);
    let in_flight = InFlight::new(&metrics);
    let mut response = next.run(request).await;
    drop(in_flight);
    request::name_request(&mut response, id);
    let status: StatusCode = response.status();
    metrics.http.observe(method, route, status.as_u16(), started.elapsed());
    response
}

/// A request counted in flight while this lives (a client may leave mid-request).
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.http.in_flight.inc();
        Self(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.http.in_flight.dec();
    }
}

fn method_label(method: &Method) -> HttpMethod {
    match *method {
        Method::GET => HttpMethod::GET,
        Method::HEAD => HttpMethod::HEAD,
        Method::POST => HttpMethod::POST,
        Method::PUT => HttpMethod::PUT,
        Method::DELETE => HttpMethod::DELETE,
        Method::OPTIONS => HttpMethod::OPTIONS,
        Method::PATCH => HttpMethod::PATCH,
        _ => HttpMethod::OTHER,
    }
}

/// The admin API's rooms, media, event reports and background jobs.
fn admin_rooms_media_routes() -> Router<AppState> {
    use self::admin::{jobs, media, reports, rooms};
    const V1: &str = "/_synapse/admin/v1";
    const V2: &str = "/_synapse/admin/v2";
    Router::new()
        .route(&format!("{V1}/rooms"), get(rooms::list_rooms))
        .route(&format!("{V1}/rooms/{{room_id}}"), get(rooms::room_details).delete(rooms::delete_room_v1))
        .route(&format!("{V1}/rooms/{{room_id}}/members"), get(rooms::room_members))
        .route(&format!("{V1}/rooms/{{room_id}}/state"), get(rooms::room_state))
        .route(&format!("{V1}/rooms/{{room_id}}/messages"), get(rooms::room_messages))
        .route(&format!("{V1}/rooms/{{room_id}}/context/{{event_id}}"), get(rooms::room_context))
        .route(&format!("{V1}/rooms/{{room_id}}/block"), get(rooms::get_block).put(rooms::set_block))
        .route(&format!("{V1}/rooms/{{room_id}}/make_room_admin"), post(rooms::make_room_admin))
        .route(
            &format!("{V1}/rooms/{{room_id}}/forward_extremities"),
            get(rooms::get_forward_extremities).delete(rooms::delete_forward_extremities),
        )
        .route(&format!("{V1}/join/{{room}}"), post(rooms::join_user))
        .route(&format!("{V2}/rooms/{{room_id}}"), axum::routing::delete(rooms::delete_room_v2))
        .route(&format!("{V2}/rooms/{{room_id}}/delete_status"), get(rooms::room_delete_status))
        .route(&format!("{V2}/rooms/delete_status/{{delete_id}}"), get(rooms::delete_status))
        .route(
            &format!("{V1}/users/{{user_id}}/media"),
            get(media::user_media).delete(media::delete_user_media),
        )
        .route(&format!("{V1}/room/{{room_id}}/media"), get(media::room_media))
        .route(&format!("{V1}/room/{{room_id}}/media/quarantine"), post(media::quarantine_room))
        .route(&format!("{V1}/user/{{user_id}}/media/quarantine"), post(media::quarantine_user))
        .route(
            &format!("{V1}/media/{{server_name}}/{{media_id}}"),
            axum::routing::delete(media::delete_media),
        )
        .route(&format!("{V1}/media/{{server_name}}/delete"), post(media::delete_old_media_of))
        .route(&format!("{V1}/media/delete"), post(media::delete_old_media))
        .route(&format!("{V1}/media/protect/{{media_id}}"), post(media::protect))
        .route(&format!("{V1}/media/unprotect/{{media_id}}"), post(media::unprotect))
        .route(&format!("{V1}/media/quarantine/{{server_name}}/{{media_id}}"), post(media::quarantine))
        .route(&format!("{V1}/media/unquarantine/{{server_name}}/{{media_id}}"), post(media::unquarantine))
        .route(&format!("{V1}/purge_media_cache"), post(media::purge_media_cache))
        .route(&format!("{V1}/statistics/users/media"), get(media::media_statistics))
        .route(&format!("{V1}/event_reports"), get(reports::list))
        .route(&format!("{V1}/event_reports/{{report_id}}"), get(reports::get).delete(reports::delete))
        .route(&format!("{V1}/background_updates/status"), get(jobs::background_updates_status))
        .route(&format!("{V1}/scheduled_tasks"), get(jobs::scheduled_tasks))
}

/// CORS as the client-server spec requires for browser clients: any origin, the methods and
/// headers Matrix uses.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            HeaderName::from_static("x-requested-with"),
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            header::DATE,
        ])
        .max_age(Duration::from_secs(86400))
}

/// One span per request: its ID, the client's address, method and path (not the query,
/// which may carry an access token).
fn request_span<B>(request: &Request<B>) -> tracing::Span {
    let meta = request.extensions().get::<request::RequestMeta>();
    tracing::info_span!(
        "request",
        id = meta.map_or("", |m| m.request_id.as_str()),
        client = meta.map_or("", |m| m.client_ip.as_str()),
        method = %request.method(),
        path = %request.uri().path(),
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    Error::internal("handler panicked").into_response()
}

async fn unrecognized() -> Error {
    Error::unrecognized("Unrecognized request")
}

async fn method_not_allowed() -> Error {
    Error::MethodNotAllowed
}
